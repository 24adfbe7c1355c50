import Foundation
import Testing

/// PROXY protocol headers, as an L4 balancer sends them.
enum ProxyHeader {
    static func v1(_ source: String, port: Int = 40000) -> [UInt8] {
        Array("PROXY TCP4 \(source) 127.0.0.1 \(port) 443\r\n".utf8)
    }

    /// A v2 PROXY header for an IPv4 client; `tls`: with `PP2_TYPE_SSL` saying the client came over TLS.
    static func v2(_ source: [UInt8], port: Int = 40000, tls: Bool = false) -> [UInt8] {
        let signature: [UInt8] = [0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A]
        var payload = source + [127, 0, 0, 1, UInt8(port >> 8), UInt8(port & 0xFF), 0x01, 0xBB]
        if tls { payload += [0x20, 0x00, 0x05, 0x01, 0, 0, 0, 0] }
        return signature + [0x21, 0x11, 0x00, UInt8(payload.count)] + payload
    }

    /// v2 LOCAL: the balancer's own connection (a health check).
    static let v2Local: [UInt8] = [0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A, 0x20, 0x00, 0x00, 0x00]
}

/// Live: `server.proxy_protocol` behind a (simulated) L4 balancer on 127.0.0.1; 127.0.0.2 is a peer that is not one.
@Suite(.serialized) struct ProxyProtocolLiveTests {
    static let server = """
          trusted_proxies: [127.0.0.1/32]
          proxy_protocol: true
          header_timeout: 300ms
        """

    @Test func theHeaderNamesTheClientForHeadersAuditAndTheUpstream() throws {
        let up = try TestUpstream()
        defer { up.stop() }
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("gh-pp-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        let log = dir.appendingPathComponent("audit.jsonl").path
        let yaml =
            testConfig(upstreams: ["app": [up.port]], routes: catchAllRoute, server: Self.server)
            + "\naudit:\n  methods: [GET]\n  sinks:\n    - file: {path: \"\(log)\", fsync: batch}\n"
        let gw = try GatewayProcess(yaml: yaml)

        // v1, then two requests on the kept-alive connection: both are the named client's.
        let one = try RawConnection(port: gw.port)
        try one.send(ProxyHeader.v1("198.51.100.7") + Array("GET /v1 HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n".utf8))
        #expect(try one.readResponse()?.status == 200)
        try one.send("GET /v1-again HTTP/1.1\r\nHost: a\r\n\r\n")
        #expect(try one.readResponse()?.status == 200)
        // v2 split across writes, with the TLS TLV: the balancer terminated TLS, so the scheme is https.
        let two = try RawConnection(port: gw.port)
        let header = ProxyHeader.v2([203, 0, 113, 9], tls: true)
        try two.send(Array(header[0..<7]))
        try two.send(Array(header[7...]) + Array("GET /v2 HTTP/1.1\r\nHost: a\r\n\r\n".utf8))
        #expect(try two.readResponse()?.status == 200)
        // v2 LOCAL (the balancer's health check) and v1 UNKNOWN: the balancer itself stands for the client, and
        // the forwarding headers on such a connection are the client's own, not the trusted balancer's.
        let spoof = "X-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Proto: https\r\nX-Real-IP: 6.6.6.6\r\n"
        let local = try RawConnection(port: gw.port)
        try local.send(ProxyHeader.v2Local + Array("GET /local HTTP/1.1\r\nHost: a\r\n\(spoof)\r\n".utf8))
        #expect(try local.readResponse()?.status == 200)
        let unknown = try RawConnection(port: gw.port)
        try unknown.send("PROXY UNKNOWN\r\nGET /unknown HTTP/1.1\r\nHost: a\r\n\(spoof)\r\n")
        #expect(try unknown.readResponse()?.status == 200)

        let seen = Dictionary(up.requests.map { ($0.uri, $0) }, uniquingKeysWith: { a, _ in a })
        // The client's own X-Forwarded-For is not believed: 198.51.100.7 is not a trusted proxy.
        #expect(seen["/v1"]?.headers("X-Forwarded-For") == ["198.51.100.7"])
        #expect(seen["/v1"]?.header("X-Real-IP") == "198.51.100.7")
        #expect(seen["/v1"]?.header("X-Forwarded-Proto") == "http")
        #expect(seen["/v1-again"]?.header("X-Real-IP") == "198.51.100.7")
        #expect(seen["/v2"]?.header("X-Real-IP") == "203.0.113.9")
        #expect(seen["/v2"]?.header("X-Forwarded-Proto") == "https")
        for path in ["/local", "/unknown"] {
            #expect(seen[path]?.header("X-Real-IP") == "127.0.0.1", "\(path)")
            #expect(seen[path]?.headers("X-Forwarded-For") == ["127.0.0.1"], "\(path)")
            #expect(seen[path]?.header("X-Forwarded-Proto") == "http", "\(path)")
        }
        #expect(gw.stop() == 0)
        let clients = Dictionary(
            AuditTests.records(log).compactMap { r in (r["path"] as? String).map { ($0, r["client_ip"] as? String) } },
            uniquingKeysWith: { a, _ in a })
        #expect(clients["/v1"] == "198.51.100.7" && clients["/v2"] == "203.0.113.9", "\(clients)")
    }

    @Test func connectionsWithoutAValidHeaderOrFromOtherPeersAreRefused() throws {
        let up = try TestUpstream()
        defer { up.stop() }
        let gw = try GatewayProcess(yaml: testConfig(upstreams: ["app": [up.port]], routes: catchAllRoute, server: Self.server))
        defer { gw.stop() }

        // A plain request with no header: closed at its first byte, nothing answered or forwarded.
        let bare = try RawConnection(port: gw.port)
        try bare.send("GET /bare HTTP/1.1\r\nHost: a\r\n\r\n")
        #expect(bare.waitForClose())
        // A malformed header.
        let bad = try RawConnection(port: gw.port)
        try bad.send("PROXY TCP4 198.51.100.7 127.0.0.1 99999 443\r\nGET /bad HTTP/1.1\r\nHost: a\r\n\r\n")
        #expect(bad.waitForClose())
        // A header that never ends: closed at header_timeout.
        let slow = try RawConnection(port: gw.port)
        try slow.send("PROXY TCP4 198.51.100.7 ")
        #expect(slow.waitForClose())
        // Silence: closed at header_timeout too, though idle_timeout is longer.
        let silent = try RawConnection(port: gw.port)
        #expect(silent.waitForClose())
        // A well-formed header from a peer that is not a trusted balancer.
        let stranger = try RawConnection(port: gw.port, source: "127.0.0.2")
        try? stranger.send(ProxyHeader.v1("198.51.100.7") + Array("GET /stranger HTTP/1.1\r\nHost: a\r\n\r\n".utf8))
        #expect(stranger.waitForClose())

        #expect(up.requests.isEmpty, "\(up.requests.map(\.uri))")
        let m = try gw.metrics()
        #expect(m.value("gatehouse_connections_refused_total", ["reason": "proxy_protocol"]) == 2)
        #expect(m.value("gatehouse_connections_refused_total", ["reason": "untrusted_peer"]) == 1)
        // The listener still serves a proper connection.
        let good = try RawConnection(port: gw.port)
        try good.send(ProxyHeader.v1("198.51.100.8") + Array("GET /good HTTP/1.1\r\nHost: a\r\n\r\n".utf8))
        #expect(try good.readResponse()?.status == 200)
        #expect(up.requests.map(\.uri) == ["/good"])
    }

    @Test func theHeaderPrecedesTLS() throws {
        let c = try TLSListenerTests.certs()
        let up = try TestUpstream()
        defer { up.stop() }
        let gw = try GatewayProcess(
            yaml: testConfig(
                upstreams: ["app": [up.port]], routes: catchAllRoute, server: Self.server + "\n" + TLSListenerTests.tlsServer(c)))
        defer { gw.stop() }
        let trust = try c.certificates("ca")
        let client = try TLSClient(port: gw.port, .init(serverName: "api.test", trust: trust, prelude: ProxyHeader.v2([192, 0, 2, 44])))
        #expect(try client.get("/tls").status == 200)
        #expect(try client.get("/tls-again").status == 200)
        #expect(up.requests.map { $0.header("X-Real-IP") } == ["192.0.2.44", "192.0.2.44"])
        #expect(up.requests.allSatisfy { $0.header("X-Forwarded-Proto") == "https" })
        // TLS without the header first: refused.
        #expect(throws: (any Error).self) { try TLSClient(port: gw.port, .init(serverName: "api.test", trust: trust)) }
        #expect(up.requests.count == 2)
    }
}
