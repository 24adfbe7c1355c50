import Foundation
import Testing

/// Live: request smuggling and malformed framing are refused with 400, the connection is closed, and the
/// upstream never sees the request.
@Suite(.serialized) struct FramingTests {
    static let routes = catchAllRoute

    static let attacks: [(String, String)] = [
        ("CL and TE", "POST / HTTP/1.1\r\nHost: gw\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        ("TE and CL", "POST / HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n"),
        ("differing CLs", "POST / HTTP/1.1\r\nHost: gw\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde"),
        ("duplicate CLs", "POST / HTTP/1.1\r\nHost: gw\r\nContent-Length: 4\r\nContent-Length: 4\r\n\r\nabcd"),
        ("CL list", "POST / HTTP/1.1\r\nHost: gw\r\nContent-Length: 4, 4\r\n\r\nabcd"),
        ("signed CL", "POST / HTTP/1.1\r\nHost: gw\r\nContent-Length: +4\r\n\r\nabcd"),
        ("unknown TE", "POST / HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: gzip\r\n\r\nabcd"),
        ("TE list", "POST / HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n"),
        ("double TE", "POST / HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        ("TE with space", "POST / HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n"),
        ("obfuscated TE", "POST / HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n"),
        ("HTTP/1.0 with TE", "POST / HTTP/1.0\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        ("missing Host", "GET / HTTP/1.1\r\nAccept: */*\r\n\r\n"),
        ("duplicate Host", "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
        ("bad Host", "GET / HTTP/1.1\r\nHost: a b\r\n\r\n"),
        ("obs-fold", "GET / HTTP/1.1\r\nHost: gw\r\nX-Folded: a\r\n b\r\n\r\n"),
        ("bare LF in header", "GET / HTTP/1.1\r\nHost: gw\r\nX-A: a\nX-B: b\r\n\r\n"),
        ("NUL in header", "GET / HTTP/1.1\r\nHost: gw\r\nX-A: a\u{0}b\r\n\r\n"),
        ("bad chunk size", "POST / HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n"),
        ("absolute form", "GET http://evil.example/ HTTP/1.1\r\nHost: gw\r\n\r\n"),
        ("dot segments", "GET /a/../admin HTTP/1.1\r\nHost: gw\r\n\r\n"),
        ("encoded dot segments", "GET /a/%2e%2e/admin HTTP/1.1\r\nHost: gw\r\n\r\n"),
        ("HTTP/2 version", "GET / HTTP/2.0\r\nHost: gw\r\n\r\n"),
        ("garbage", "\u{1}\u{2}\u{3} nonsense\r\n\r\n"),
        ("TRACE with a body", "TRACE / HTTP/1.1\r\nHost: gw\r\nContent-Length: 35\r\n\r\nGET /victim HTTP/1.1\r\nHost: gw\r\n\r\n"),
        ("CONNECT", "CONNECT /x HTTP/1.1\r\nHost: gw\r\nContent-Length: 5\r\n\r\nhello"),
        ("lower-case method", "delete /x HTTP/1.1\r\nHost: gw\r\n\r\n"),
        ("non-ASCII target", "GET /a\u{C0}\u{AF} HTTP/1.1\r\nHost: gw\r\n\r\n"),
        ("space in header name", "GET / HTTP/1.1\r\nHost: gw\r\nX Bad: 1\r\n\r\n"),
    ]

    @Test func everyFramingAttackIsRefusedAndNeverForwarded() throws {
        let up = try TestUpstream()
        defer { up.stop() }
        let gw = try GatewayProcess(yaml: testConfig(upstreams: ["app": [up.port]], routes: Self.routes))
        defer { gw.stop() }
        for (name, bytes) in Self.attacks {
            let c = try RawConnection(port: gw.port)
            try c.send(bytes)
            let r = try c.readResponse()
            #expect(r?.status == 400, "\(name): expected 400, got \(r?.status ?? -1)")
            if let r {
                #expect(r.json["code"] as? String == "bad_request", "\(name)")
                #expect(r.header("Connection") == "close", "\(name)")
            }
            #expect(c.waitForClose(), "\(name): connection left open")
        }
        #expect(up.requests.isEmpty, "smuggled: \(up.requests.map(\.uri))")
        // The gateway keeps serving.
        #expect(try request(port: gw.port, "GET", "/fine").status == 200)
    }

    @Test func smuggledSecondRequestNeverReachesTheUpstream() throws {
        let up = try TestUpstream()
        defer { up.stop() }
        let gw = try GatewayProcess(yaml: testConfig(upstreams: ["app": [up.port]], routes: Self.routes))
        defer { gw.stop() }
        let c = try RawConnection(port: gw.port)
        try c.send(
            "POST /first HTTP/1.1\r\nHost: gw\r\nContent-Length: 44\r\nTransfer-Encoding: chunked\r\n\r\n"
                + "0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: gw\r\n\r\n")
        #expect(try c.readResponse()?.status == 400)
        #expect(c.waitForClose())
        #expect(up.requests.isEmpty)
    }

    @Test func validChunkedUploadStreamsToTheUpstream() throws {
        let up = try TestUpstream()
        defer { up.stop() }
        let gw = try GatewayProcess(yaml: testConfig(upstreams: ["app": [up.port]], routes: Self.routes))
        defer { gw.stop() }
        let c = try RawConnection(port: gw.port)
        try c.send("POST /upload HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n")
        let chunk = String(repeating: "x", count: 100_000)
        var sent = 0
        for _ in 0..<30 {
            try c.send(String(chunk.utf8.count, radix: 16) + "\r\n" + chunk + "\r\n")
            sent += chunk.utf8.count
        }
        try c.send("0\r\n\r\n")
        let r = try #require(try c.readResponse())
        #expect(r.status == 200)
        #expect(r.json["body_bytes"] as? Int == sent)
        #expect(up.requests.first?.header("transfer-encoding") == "chunked")
    }
}
