import Foundation
import Testing

/// Live: every client-controlled size and duration has a limit with the SPEC's status.
@Suite(.serialized) struct LimitsTests {
    static let routes = catchAllRoute

    static func gateway(_ up: TestUpstream, server: String) throws -> GatewayProcess {
        try GatewayProcess(yaml: testConfig(upstreams: ["app": [up.port]], routes: routes, server: server))
    }

    @Test func oversizedHeadersGet431() throws {
        let up = try TestUpstream()
        defer { up.stop() }
        let gw = try Self.gateway(up, server: "  max_header_bytes: 4KiB")
        defer { gw.stop() }
        let big = String(repeating: "a", count: 5000)
        for attack in [
            "GET / HTTP/1.1\r\nHost: gw\r\nX-Big: \(big)\r\n\r\n",
            "GET /\(big) HTTP/1.1\r\nHost: gw\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: gw\r\n" + (0..<100).map { "X-H\($0): \(String(repeating: "b", count: 60))\r\n" }.joined() + "\r\n",
        ] {
            let c = try RawConnection(port: gw.port)
            try c.send(attack)
            let r = try #require(try c.readResponse())
            #expect(r.status == 431)
            #expect(r.json["code"] as? String == "headers_too_large")
        }
        #expect(up.requests.isEmpty)
        #expect(try request(port: gw.port, "GET", "/ok", headers: [("X-Small", "1")]).status == 200)
    }

    @Test func oversizedBodiesGet413AndAreNeverForwarded() throws {
        let up = try TestUpstream()
        defer { up.stop() }
        let gw = try Self.gateway(up, server: "  max_body_bytes: 1KiB")
        defer { gw.stop() }
        // Declared too large: refused before the body is read.
        let c1 = try RawConnection(port: gw.port)
        try c1.send("POST /x HTTP/1.1\r\nHost: gw\r\nContent-Length: 2000\r\n\r\n" + String(repeating: "z", count: 2000))
        let r1 = try #require(try c1.readResponse())
        #expect(r1.status == 413)
        #expect(r1.json["code"] as? String == "payload_too_large")
        #expect(c1.waitForClose())
        // Chunked: refused once the running total passes the limit.
        let c2 = try RawConnection(port: gw.port)
        try c2.send("POST /x HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in 0..<3 { try c2.send("200\r\n" + String(repeating: "y", count: 512) + "\r\n") }
        try c2.send("0\r\n\r\n")
        let r2 = try #require(try c2.readResponse())
        #expect(r2.status == 413)
        #expect(up.requests.isEmpty)
        // At the limit: forwarded.
        let ok = try request(port: gw.port, "POST", "/x", body: String(repeating: "k", count: 1024))
        #expect(ok.status == 200)
        #expect(ok.json["body_bytes"] as? Int == 1024)
    }

    @Test func slowHeadersGet408AndClose() throws {
        let up = try TestUpstream()
        defer { up.stop() }
        let gw = try Self.gateway(up, server: "  header_timeout: 300ms\n  idle_timeout: 30s")
        defer { gw.stop() }
        let c = try RawConnection(port: gw.port)
        try c.send("GET / HTTP/1.1\r\nHost: gw\r\nX-Slow: ")
        // The gateway answers on its own once the header timeout passes; the read waits for that event.
        let r = try #require(try c.readResponse())
        #expect(r.status == 408)
        #expect(r.json["code"] as? String == "request_timeout")
        #expect(c.waitForClose())
        #expect(up.requests.isEmpty)
    }

    @Test func slowBodyGets408() throws {
        let up = try TestUpstream()
        defer { up.stop() }
        let gw = try Self.gateway(up, server: "  request_timeout: 400ms")
        defer { gw.stop() }
        let c = try RawConnection(port: gw.port)
        try c.send("POST / HTTP/1.1\r\nHost: gw\r\nContent-Length: 100\r\n\r\nonly-part")
        let r = try #require(try c.readResponse())
        #expect(r.status == 408)
        #expect(c.waitForClose())
    }

    @Test func idleKeepAliveConnectionsAreClosed() throws {
        let up = try TestUpstream()
        defer { up.stop() }
        let gw = try Self.gateway(up, server: "  idle_timeout: 300ms")
        defer { gw.stop() }
        let c = try RawConnection(port: gw.port)
        try c.send("GET / HTTP/1.1\r\nHost: gw\r\n\r\n")
        #expect(try c.readResponse()?.status == 200)
        // No response is owed: the connection just closes after the idle timeout.
        #expect(c.waitForClose())
    }

    @Test func connectionCapClosesExtraConnections() throws {
        let up = try TestUpstream()
        defer { up.stop() }
        let gw = try Self.gateway(up, server: "  max_connections: 2")
        defer { gw.stop() }
        let a = try RawConnection(port: gw.port)
        let b = try RawConnection(port: gw.port)
        try a.send("GET /a HTTP/1.1\r\nHost: gw\r\n\r\n")
        try b.send("GET /b HTTP/1.1\r\nHost: gw\r\n\r\n")
        #expect(try a.readResponse()?.status == 200)
        #expect(try b.readResponse()?.status == 200)
        let extra = try RawConnection(port: gw.port)
        try? extra.send("GET /c HTTP/1.1\r\nHost: gw\r\n\r\n")
        #expect(extra.waitForClose())
        #expect(!up.requests.contains { $0.uri == "/c" })
        a.close()
        b.close()
    }
}
