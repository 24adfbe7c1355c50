import Foundation
import NIOSSL
import Testing

/// Live: upstreams behind HTTPS (the test upstream with swift-nio-ssl), verified by CA file and name, with and
/// without a client certificate.
@Suite(.serialized) struct HTTPSUpstreamTests {
    static func certs() throws -> TestCerts {
        let c = try TestCerts()
        try c.makeCA("internal")
        try c.makeCA("other")
        try c.makeCA("gwca")
        try c.makeLeaf("backend", ca: "internal", sans: ["DNS:backend.internal"])
        try c.makeLeaf("byip", ca: "internal", sans: ["IP:127.0.0.1"])
        try c.makeLeaf("gw", ca: "gwca", sans: ["DNS:gateway.internal"])
        return c
    }

    static func gateway(_ up: TestUpstream, tls: String, health: Bool = false) throws -> GatewayProcess {
        var extra = "    tls: \(tls)\n"
        if health { extra += "    health_check: {path: /health, interval: 200ms, timeout: 500ms}\n" }
        return try GatewayProcess(yaml: testConfig(upstreams: ["app": [up.port]], routes: catchAllRoute, upstreamExtra: extra))
    }

    @Test func verifiedByCAFileAndServerNameAndPooled() throws {
        let c = try Self.certs()
        let up = try TestUpstream(tls: try c.serverContext("backend"))
        defer { up.stop() }
        let gw = try Self.gateway(up, tls: "{ca_file: \(c.path("internal.pem")), server_name: backend.internal}", health: true)
        defer { gw.stop() }
        let conn = try RawConnection(port: gw.port)
        for i in 0..<3 {
            try conn.send("GET /x/\(i) HTTP/1.1\r\nHost: gateway.test\r\n\r\n")
            #expect(try conn.readResponse()?.status == 200)
        }
        #expect(up.requests.map(\.uri) == ["/x/0", "/x/1", "/x/2"])
        // Health probes speak TLS with the same settings: they reach /health as requests, not as handshake errors.
        let deadline = Date().addingTimeInterval(10)
        while up.healthChecks.load(ordering: .relaxed) == 0 && Date() < deadline { usleep(10_000) }
        #expect(up.healthChecks.load(ordering: .relaxed) > 0)
        // The requests shared one kept-alive TLS connection (health probes use their own).
        #expect(Set(up.requests.map(\.connection)).count == 1)
    }

    @Test func anIPAddressTargetIsVerifiedAgainstTheAddressInItsCertificate() throws {
        let c = try Self.certs()
        let up = try TestUpstream(tls: try c.serverContext("byip"))
        defer { up.stop() }
        let gw = try Self.gateway(up, tls: "{ca_file: \(c.path("internal.pem"))}")
        defer { gw.stop() }
        #expect(try request(port: gw.port, "GET", "/ip").status == 200)
        // The same CA, but a certificate that does not name 127.0.0.1.
        let named = try TestUpstream(tls: try c.serverContext("backend"))
        defer { named.stop() }
        let gw2 = try Self.gateway(named, tls: "{ca_file: \(c.path("internal.pem"))}")
        defer { gw2.stop() }
        let r = try request(port: gw2.port, "GET", "/ip")
        #expect(r.status == 502 && r.json["code"] as? String == "bad_gateway", "\(r.text)")
        #expect(named.requests.isEmpty)
    }

    @Test func verificationFailuresAre502AndNothingIsSent() throws {
        let c = try Self.certs()
        let up = try TestUpstream(tls: try c.serverContext("backend"))
        defer { up.stop() }
        for tls in [
            "{ca_file: \(c.path("other.pem")), server_name: backend.internal}",  // a CA that did not sign it
            "{ca_file: \(c.path("internal.pem")), server_name: billing.internal}",  // a name it does not carry
            "{server_name: backend.internal}",  // the system's trust store does not know the test CA
        ] {
            let gw = try Self.gateway(up, tls: tls)
            let r = try request(port: gw.port, "GET", "/secret")
            #expect(r.status == 502, "\(tls): \(r.status)")
            #expect(r.json["code"] as? String == "bad_gateway")
            gw.stop()
        }
        #expect(up.requests.isEmpty)
        // A plain-HTTP upstream configured as https fails the same way.
        let plain = try TestUpstream()
        defer { plain.stop() }
        let gw = try Self.gateway(plain, tls: "{ca_file: \(c.path("internal.pem")), server_name: backend.internal}")
        defer { gw.stop() }
        #expect(try request(port: gw.port, "GET", "/p").status == 502)
        #expect(plain.requests.isEmpty)
    }

    @Test func insecureSkipVerifyIsAllowedAndWarnedAbout() throws {
        let c = try Self.certs()
        let up = try TestUpstream(tls: try c.serverContext("backend"))
        defer { up.stop() }
        let gw = try Self.gateway(up, tls: "{insecure_skip_verify: true}")
        defer { gw.stop() }
        #expect(try request(port: gw.port, "GET", "/any").status == 200)
        #expect(gw.log.contains { $0.contains("insecure_skip_verify") && $0.contains("\"gh-upstream\":\"app\"") })
    }

    @Test func anUpstreamThatNeverAnswersTheHandshakeIsAConnectTimeout() throws {
        let c = try Self.certs()
        let silent = try RawUpstream(reply: "")  // accepts, reads the ClientHello, never answers
        defer { silent.stop() }
        let extra = "    tls: {ca_file: \(c.path("internal.pem")), server_name: backend.internal}\n"
        let gw = try GatewayProcess(
            yaml: testConfig(upstreams: ["app": [silent.port]], routes: catchAllRoute, upstreamExtra: extra))
        defer { gw.stop() }
        for path in ["/1", "/2"] {
            let r = try request(port: gw.port, "GET", path)
            #expect(r.status == 502 && r.json["code"] as? String == "bad_gateway", "\(r.status) \(r.text)")
        }
        #expect(silent.connections.load(ordering: .relaxed) >= 2)
        // Nothing is left busy, and no half-made connection waits in the pool.
        try gw.waitUntilQuiet()
        #expect(try gw.metrics().value("gatehouse_upstream_connections", ["upstream": "app", "state": "idle"]) == 0)
    }

    @Test func aCloseDelimitedResponseEndedWithoutCloseNotifyIsDelivered() throws {
        // Many servers end a connection without a TLS close_notify; for a response delimited by the close that
        // is its normal end (as nginx and curl take it), not an error.
        let c = try Self.certs()
        let up = try RawUpstream(
            reply: "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nthe whole body", tls: try c.serverContext("backend"),
            raggedClose: true)
        defer { up.stop() }
        let extra = "    tls: {ca_file: \(c.path("internal.pem")), server_name: backend.internal}\n"
        let gw = try GatewayProcess(yaml: testConfig(upstreams: ["app": [up.port]], routes: catchAllRoute, upstreamExtra: extra))
        defer { gw.stop() }
        for path in ["/a", "/b"] {
            let r = try request(port: gw.port, "GET", path)
            #expect(r.status == 200 && r.text == "the whole body", "\(r.status) \(r.text)")
        }
        // A Content-Length response cut short the same way is not passed off as whole.
        let cut = try RawUpstream(
            reply: "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part", tls: try c.serverContext("backend"), raggedClose: true)
        defer { cut.stop() }
        let gw2 = try GatewayProcess(yaml: testConfig(upstreams: ["app": [cut.port]], routes: catchAllRoute, upstreamExtra: extra))
        defer { gw2.stop() }
        let conn = try RawConnection(port: gw2.port)
        try conn.send("GET /cut HTTP/1.1\r\nHost: gateway.test\r\n\r\n")
        let head = try conn.readHead()
        #expect(head?.status == 200)
        let rest = conn.readToEnd()
        #expect(rest.closed && rest.bytes < 100, "\(rest)")
        try gw.waitUntilQuiet()
        try gw2.waitUntilQuiet()
    }

    @Test func clientCertificateForAnUpstreamThatRequiresOne() throws {
        let c = try Self.certs()
        let up = try TestUpstream(tls: try c.serverContext("backend", clientCA: "gwca"))
        defer { up.stop() }
        let without = try Self.gateway(up, tls: "{ca_file: \(c.path("internal.pem")), server_name: backend.internal}")
        #expect(try request(port: without.port, "GET", "/no-cert").status == 502)
        without.stop()
        #expect(up.requests.isEmpty)
        let with = try Self.gateway(
            up,
            tls: "{ca_file: \(c.path("internal.pem")), server_name: backend.internal, cert_file: \(c.path("gw.pem")), key_file: \(c.path("gw.key"))}")
        defer { with.stop() }
        #expect(try request(port: with.port, "GET", "/with-cert").status == 200)
        #expect(up.requests.map(\.uri) == ["/with-cert"])
    }
}
