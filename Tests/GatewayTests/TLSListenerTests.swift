import Foundation
import NIOSSL
import Testing

/// Live: the gateway binary with `server.tls`, reached by a swift-nio-ssl client, certificates made by openssl.
@Suite(.serialized) struct TLSListenerTests {
    /// `api` (the default: api.test and 127.0.0.1) from `ca`, `eu` (eu.test, *.eu.test) from `euca`, so a client
    /// trusting one CA only tells which certificate it was served; `client` from `clientca`, `stranger` from
    /// `otherca`.
    static func certs() throws -> TestCerts {
        let c = try TestCerts()
        try c.makeCA("ca")
        try c.makeCA("euca")
        try c.makeCA("clientca")
        try c.makeCA("otherca")
        try c.makeLeaf("api", ca: "ca", sans: ["DNS:api.test", "IP:127.0.0.1"])
        try c.makeLeaf("eu", ca: "euca", sans: ["DNS:eu.test", "DNS:*.eu.test"])
        try c.makeLeaf("client", ca: "clientca", sans: ["DNS:client.test"])
        try c.makeLeaf("stranger", ca: "otherca", sans: ["DNS:client.test"])
        return c
    }

    static func tlsServer(_ c: TestCerts, extra: String = "") -> String {
        """
          tls:
            certificates:
              - {cert_file: \(c.path("api.pem")), key_file: \(c.path("api.key"))}
              - {cert_file: \(c.path("eu.pem")), key_file: \(c.path("eu.key")), server_names: [eu.test, "*.eu.test"]}
        \(extra)
        """
    }

    @Test func servesHTTPSAndPicksTheCertificateBySNI() throws {
        let c = try Self.certs()
        let up = try TestUpstream()
        defer { up.stop() }
        let gw = try GatewayProcess(yaml: testConfig(upstreams: ["app": [up.port]], routes: catchAllRoute, server: Self.tlsServer(c)))
        defer { gw.stop() }
        let trust = try c.certificates("ca")

        // No SNI: the default certificate, verified against the IP address it names.
        let plain = try TLSClient(port: gw.port, .init(serverName: nil, trust: trust))
        let r = try plain.get("/a", headers: [("X-Forwarded-Proto", "http")])
        #expect(r.status == 200)
        #expect(try plain.get("/b").status == 200)  // kept alive over TLS
        let seen = up.requests
        #expect(seen.count == 2)
        // A client's own X-Forwarded-Proto is replaced: the gateway says how the client reached it.
        #expect(seen.allSatisfy { $0.header("x-forwarded-proto") == "https" })
        plain.close()

        // SNI names pick their certificate: a client trusting only eu's CA succeeds only if eu's was served.
        let euTrust = try c.certificates("euca")
        #expect(try TLSClient(port: gw.port, .init(serverName: "api.test", trust: trust)).get("/c").status == 200)
        #expect(throws: (any Error).self) { try TLSClient(port: gw.port, .init(serverName: "api.test", trust: euTrust)) }
        #expect(try TLSClient(port: gw.port, .init(serverName: "eu.test", trust: euTrust)).get("/d").status == 200)
        #expect(try TLSClient(port: gw.port, .init(serverName: "Shop.EU.test", trust: euTrust)).get("/e").status == 200)
        // A wildcard covers one label only, and unknown names get the default certificate (which names 127.0.0.1,
        // so a client trusting its CA accepts it on this address).
        for name in ["a.b.eu.test", "other.test", "eu.test.evil"] {
            #expect(throws: (any Error).self) { try TLSClient(port: gw.port, .init(serverName: name, trust: euTrust)) }
            #expect(try TLSClient(port: gw.port, .init(serverName: name, trust: trust)).get("/f").status == 200)
        }
        // A certificate from a CA the client does not trust: refused by the client, nothing forwarded.
        let before = up.requests.count
        #expect(throws: (any Error).self) { try TLSClient(port: gw.port, .init(serverName: "api.test", trust: try c.certificates("otherca"))) }
        #expect(up.requests.count == before)
        // Plain HTTP on the TLS listener is not served.
        let raw = try RawConnection(port: gw.port)
        try raw.send("GET /plain HTTP/1.1\r\nHost: x\r\n\r\n")
        #expect(raw.waitForClose())
        #expect(up.requests.count == before)
    }

    @Test func minimumVersionAndClientCertificates() throws {
        let c = try Self.certs()
        let up = try TestUpstream()
        defer { up.stop() }
        let server = Self.tlsServer(c, extra: """
                min_version: "1.3"
                client_ca_file: \(c.path("clientca.pem"))
            """)
        let gw = try GatewayProcess(yaml: testConfig(upstreams: ["app": [up.port]], routes: catchAllRoute, server: server))
        defer { gw.stop() }
        let trust = try c.certificates("ca")
        let client = (chain: try c.certificates("client"), key: try c.key("client"))
        let stranger = (chain: try c.certificates("stranger"), key: try c.key("stranger"))

        #expect(try TLSClient(port: gw.port, .init(serverName: "api.test", trust: trust, clientCertificate: client)).get("/ok").status == 200)
        // TLS 1.2 is below min_version.
        #expect(throws: (any Error).self) {
            let old = try TLSClient(port: gw.port, .init(serverName: "api.test", trust: trust, clientCertificate: client, maxVersion: .tlsv12))
            _ = try old.get("/old")
        }
        // No client certificate, or one from a CA not in client_ca_file: no request is served.
        for cert in [nil, stranger] {
            #expect(throws: (any Error).self) {
                let t = try TLSClient(port: gw.port, .init(serverName: "api.test", trust: trust, clientCertificate: cert))
                _ = try t.get("/refused")
            }
        }
        #expect(up.requests.map(\.uri) == ["/ok"])
    }

    @Test func certificatesReloadWithoutDroppingConnectionsAndABrokenOneIsRefused() throws {
        let c = try Self.certs()
        try c.makeCA("newca")
        try c.makeLeaf("api2", ca: "newca", sans: ["DNS:api.test", "IP:127.0.0.1"])
        let up = try TestUpstream()
        defer { up.stop() }
        // The config names files that are replaced in place, as a certificate renewal does.
        try FileManager.default.copyItem(atPath: c.path("api.pem"), toPath: c.path("live.pem"))
        try FileManager.default.copyItem(atPath: c.path("api.key"), toPath: c.path("live.key"))
        let server = """
              tls:
                certificates:
                  - {cert_file: \(c.path("live.pem")), key_file: \(c.path("live.key"))}
            """
        let gw = try GatewayProcess(
            yaml: testConfig(upstreams: ["app": [up.port]], routes: catchAllRoute, server: server),
            environment: ["GH_TEST_ADMIN_TOKEN": "adm"])
        defer { gw.stop() }
        let old = try TLSClient(port: gw.port, .init(serverName: "api.test", trust: try c.certificates("ca")))
        #expect(try old.get("/1").status == 200)

        func replace(_ name: String) throws {
            for ext in ["pem", "key"] {
                try? FileManager.default.removeItem(atPath: c.path("live.\(ext)"))
                try FileManager.default.copyItem(atPath: c.path("\(name).\(ext)"), toPath: c.path("live.\(ext)"))
            }
        }
        func reload() throws -> RawResponse {
            try request(port: gw.adminPort!, "POST", "/admin/reload", headers: [("Authorization", "Bearer adm")])
        }
        try replace("api2")
        #expect(try reload().status == 200)
        // New connections get the new certificate; the connection made before the reload keeps serving.
        #expect(try TLSClient(port: gw.port, .init(serverName: "api.test", trust: try c.certificates("newca"))).get("/2").status == 200)
        #expect(throws: (any Error).self) { try TLSClient(port: gw.port, .init(serverName: "api.test", trust: try c.certificates("ca"))) }
        #expect(try old.get("/3").status == 200)

        // A key that is not the certificate's: the reload is refused, naming the files; the last good one serves.
        try FileManager.default.removeItem(atPath: c.path("live.key"))
        try FileManager.default.copyItem(atPath: c.path("eu.key"), toPath: c.path("live.key"))
        let refused = try reload()
        #expect(refused.status == 422 && refused.text.contains("is not the key of"), "\(refused.text)")
        // Garbage where the certificate was: refused too.
        try "not a certificate".write(toFile: c.path("live.pem"), atomically: true, encoding: .utf8)
        let garbage = try reload()
        #expect(garbage.status == 422 && garbage.text.contains("cert_file"), "\(garbage.text)")
        #expect(try TLSClient(port: gw.port, .init(serverName: "api.test", trust: try c.certificates("newca"))).get("/4").status == 200)
        #expect(try old.get("/5").status == 200)
        #expect(up.requests.map(\.uri) == ["/1", "/2", "/3", "/4", "/5"])
    }

    @Test func aStalledHandshakeIsClosedByTheHeaderTimeoutAndAnIdleOneIsNot() throws {
        let c = try Self.certs()
        let up = try TestUpstream()
        defer { up.stop() }
        let server = Self.tlsServer(c) + "\n  header_timeout: 300ms\n  idle_timeout: 60s"
        let gw = try GatewayProcess(
            yaml: testConfig(upstreams: ["app": [up.port]], routes: catchAllRoute, server: server),
            environment: ["GH_TEST_ADMIN_TOKEN": "adm"])
        defer { gw.stop() }
        // A client that finished its handshake and has not asked anything yet is idle (idle_timeout), not late.
        let idle = try TLSClient(port: gw.port, .init(serverName: "api.test", trust: try c.certificates("ca")))
        // A client that connects and never finishes a ClientHello is cut by header_timeout, not idle_timeout.
        // (The read timeout, 20 s, is far below idle_timeout: only header_timeout can close it in time.)
        let stalled = try RawConnection(port: gw.port, timeout: 20)
        try stalled.send([0x16, 0x03, 0x01, 0x00, 0x40])  // a record header, then nothing
        #expect(stalled.waitForClose())
        let silent = try RawConnection(port: gw.port, timeout: 20)
        #expect(silent.waitForClose())
        // Both were closed after header_timeout had passed for the idle client too: it is still served.
        #expect(try idle.get("/after").status == 200)
        #expect(up.requests.map(\.uri) == ["/after"])
        // Closing a handshake that never finished answers nothing and records no denial.
        let metrics = try request(port: gw.adminPort!, "GET", "/metrics").text
        #expect(!metrics.contains("request_timeout"), "\(metrics)")
    }

    @Test func startRefusesUnusableCertificates() throws {
        let c = try Self.certs()
        let up = try TestUpstream()
        defer { up.stop() }
        let missing = """
              tls:
                certificates:
                  - {cert_file: \(c.path("nope.pem")), key_file: \(c.path("api.key"))}
            """
        #expect {
            _ = try GatewayProcess(yaml: testConfig(upstreams: ["app": [up.port]], routes: catchAllRoute, server: missing))
        } throws: { error in
            "\(error)".contains("nope.pem")
        }
    }

    @Test func validateOpensEveryCertificateKeyAndCAFileAndSaysWhere() throws {
        let c = try Self.certs()
        try "not a certificate\n".write(toFile: c.path("junk.pem"), atomically: true, encoding: .utf8)
        let good = testConfig(upstreams: ["app": [9]], routes: catchAllRoute, server: Self.tlsServer(c))
        try good.write(toFile: c.path("good.yaml"), atomically: true, encoding: .utf8)
        let ok = try runGatehouse(["validate", "--config", c.path("good.yaml")])
        #expect(ok.status == 0 && ok.out == "ok\n", "\(ok)")

        // A key that is not its certificate's, a CA file that is not PEM, an upstream CA file that is missing.
        let server = """
              tls:
                certificates:
                  - {cert_file: \(c.path("api.pem")), key_file: \(c.path("eu.key"))}
                client_ca_file: \(c.path("junk.pem"))
            """
        let bad = testConfig(
            upstreams: ["app": [9]], routes: catchAllRoute, server: server,
            upstreamExtra: "    tls: {ca_file: \(c.path("missing.pem"))}\n")
        try bad.write(toFile: c.path("bad.yaml"), atomically: true, encoding: .utf8)
        let lines = bad.split(separator: "\n", omittingEmptySubsequences: false)
        func line(_ needle: String) -> Int { (lines.firstIndex { $0.contains(needle) } ?? -1) + 1 }
        let result = try runGatehouse(["validate", "--config", c.path("bad.yaml")])
        #expect(result.status == 1 && result.out.isEmpty)
        let reported = result.err.split(separator: "\n").map(String.init)
        #expect(reported.count == 3, "\(result.err)")
        for (needle, message) in [
            ("eu.key", "is not the key of"), ("junk.pem", "server.tls.client_ca_file"), ("missing.pem", "upstreams.app.tls.ca_file"),
        ] {
            #expect(
                reported.contains { $0.hasPrefix("\(c.path("bad.yaml")):\(line(needle)):") && $0.contains(message) },
                "\(needle): \(reported)")
        }
        // serve refuses the same config with the same lines, before it listens.
        let serve = try runGatehouse(["serve", "--config", c.path("bad.yaml")])
        #expect(serve.status == 1 && serve.err.contains("is not the key of") && !serve.err.contains("gatehouse listening"))
    }
}
