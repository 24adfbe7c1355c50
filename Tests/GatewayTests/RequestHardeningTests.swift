import Foundation
import Testing

/// Live (issue 12, requests): what an attacker sends to reach an upstream by another road than the router's
/// is normalized or refused and never forwarded; header spellings and client-address claims are cleaned; a
/// host route matches without port or trailing dot.
@Suite(.serialized) struct RequestHardeningTests {
    static let routes = """
          - name: admin
            match: {path_prefix: /api/admin}
            upstream: app
            auth: required
          - name: api
            match: {path_prefix: /api}
            upstream: app
            auth: none
          - name: override
            match: {path_prefix: /override}
            upstream: app
            auth: none
            allow_method_override: true
          - name: hosted
            match: {path_prefix: /, host: api.example.com}
            upstream: app
            auth: none
          - name: public
            match: {path_prefix: /public}
            upstream: app
            auth: none
          - name: other
            match: {path_prefix: /}
            upstream: other
            auth: none
        """

    /// The gateway with `routes`: `app` behind every route but the catch-all, `other` behind the catch-all.
    struct Fixture {
        let up: TestUpstream
        let other: TestUpstream
        let gw: GatewayProcess

        init() throws {
            up = try TestUpstream()
            other = try TestUpstream()
            do {
                gw = try GatewayProcess(
                    yaml: testConfig(upstreams: ["app": [up.port], "other": [other.port]], routes: RequestHardeningTests.routes))
            } catch {
                up.stop()
                other.stop()
                throw error
            }
        }

        func stop() {
            gw.stop()
            up.stop()
            other.stop()
        }
    }

    @Test func ambiguousPathsAreNormalizedOrRefusedAndNeverForwarded() throws {
        let f = try Fixture()
        defer { f.stop() }
        let (up, other, gw) = (f.up, f.other, f.gw)
        // An encoded letter no longer slips past the admin route's authentication.
        let escaped = try request(port: gw.port, "GET", "/api/%61dmin/x")
        #expect(escaped.status == 401 && escaped.json["code"] as? String == "unauthenticated", "\(escaped.status) \(escaped.text)")
        for path in [
            "/public/..;/api/admin/x", "/public/.;/api/admin/x", "/public/..%3B/api/admin/x", "/public/%2e%2e/api/admin/x",
            "/public/%2E%2e/api/admin/x", "/public\\..\\api\\admin\\x", "/public/a%2Fb", "/public/a%5cb", "/public/%zz",
        ] {
            let r = try request(port: gw.port, "GET", path)
            #expect(r.status == 400 && r.json["code"] as? String == "bad_request", "\(path): \(r.status) \(r.text)")
        }
        #expect(up.requests.isEmpty && other.requests.isEmpty, "forwarded: \(up.requests.map(\.uri)) \(other.requests.map(\.uri))")
        // What is routed is what is forwarded: decoded unreserved characters, merged slashes, other escapes kept.
        #expect(try request(port: gw.port, "GET", "//public//%7Euser/a%20b?x=%2F").status == 200)
        #expect(up.requests.last?.uri == "/public/~user/a%20b?x=%2F")
    }

    @Test func headerSpellingsAndOverridesAreRemoved() throws {
        let f = try Fixture()
        defer { f.stop() }
        let (up, other, gw) = (f.up, f.other, f.gw)
        let sent: [(String, String)] = [
            ("X_Tenant_ID", "evil"), ("X_Roles", "admin"), ("x_user_id", "root"), ("X-HTTP-Method-Override", "DELETE"),
            ("X-HTTP-Method", "DELETE"), ("X-Method-Override", "DELETE"), ("X-Original-URL", "/api/admin"),
            ("X-Rewrite-URL", "/api/admin"), ("X-Kept", "yes"),
        ]
        #expect(try request(port: gw.port, "POST", "/api/x", headers: sent, body: "{}").status == 200)
        let seen = try #require(up.requests.last)
        for (name, _) in sent where name != "X-Kept" {
            #expect(seen.header(name) == nil, "\(name) reached the upstream")
        }
        #expect(seen.header("X-Kept") == "yes")
        #expect(seen.method == "POST")
        // A route that allows method overrides passes them on (the other removals still apply).
        #expect(try request(port: gw.port, "POST", "/override/x", headers: sent, body: "{}").status == 200)
        let overridden = try #require(up.requests.last)
        #expect(overridden.header("X-HTTP-Method-Override") == "DELETE")
        #expect(overridden.header("X-Original-URL") == nil && overridden.header("X_Tenant_ID") == nil)
    }

    @Test func underscoresCanBeAllowed() throws {
        let up = try TestUpstream()
        defer { up.stop() }
        let gw = try GatewayProcess(
            yaml: testConfig(upstreams: ["app": [up.port]], routes: catchAllRoute, server: "  underscores_in_headers: allow"))
        defer { gw.stop() }
        #expect(try request(port: gw.port, "GET", "/x", headers: [("X_Custom", "1")]).status == 200)
        #expect(up.requests.last?.header("X_Custom") == "1")
    }

    @Test func clientAddressClaimsAreReplacedUnlessThePeerIsTrusted() throws {
        let up = try TestUpstream()
        defer { up.stop() }
        let claims: [(String, String)] = [
            ("X-Forwarded-For", "203.0.113.7, 10.0.0.2"), ("Forwarded", "for=1.2.3.4"), ("X-Real-IP", "1.2.3.4"),
            ("True-Client-IP", "1.2.3.4"), ("X-Forwarded-Proto", "https"),
        ]
        do {
            let gw = try GatewayProcess(yaml: testConfig(upstreams: ["app": [up.port]], routes: catchAllRoute))
            defer { gw.stop() }
            #expect(try request(port: gw.port, "GET", "/untrusted", headers: claims).status == 200)
            let seen = try #require(up.requests.last)
            #expect(seen.headers("X-Forwarded-For") == ["127.0.0.1"])
            #expect(seen.header("X-Real-IP") == "127.0.0.1")
            #expect(seen.header("X-Forwarded-Proto") == "http")
            #expect(seen.header("Forwarded") == nil && seen.header("True-Client-IP") == nil)
        }
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("gh-audit-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let log = dir.appendingPathComponent("audit.jsonl").path
        let yaml =
            testConfig(
                upstreams: ["app": [up.port]], routes: catchAllRoute, server: "  trusted_proxies: [127.0.0.1, 10.0.0.0/8]")
            + "\naudit:\n  methods: [POST]\n  sinks:\n    - file: {path: \"\(log)\", fsync: batch}\n"
        let gw = try GatewayProcess(yaml: yaml)
        #expect(try request(port: gw.port, "POST", "/trusted", headers: claims, body: "{}").status == 200)
        let seen = try #require(up.requests.last)
        #expect(seen.headers("X-Forwarded-For") == ["203.0.113.7, 10.0.0.2, 127.0.0.1"])
        #expect(seen.header("X-Real-IP") == "203.0.113.7")
        #expect(seen.header("X-Forwarded-Proto") == "https")
        #expect(seen.header("Forwarded") == nil && seen.header("True-Client-IP") == nil)
        #expect(gw.stop() == 0)
        let records = AuditTests.records(log)
        #expect(records.last?["client_ip"] as? String == "203.0.113.7", "\(records)")
    }

    @Test func hostRoutesMatchWithoutPortOrTrailingDot() throws {
        let f = try Fixture()
        defer { f.stop() }
        let (up, other, gw) = (f.up, f.other, f.gw)
        for host in ["api.example.com", "API.example.com.", "api.example.com.:8443", "api.example.com:8443"] {
            let c = try RawConnection(port: gw.port)
            try c.send("GET /h HTTP/1.1\r\nHost: \(host)\r\nConnection: close\r\n\r\n")
            #expect(try c.readResponse()?.status == 200)
        }
        #expect(up.requests.filter { $0.uri == "/h" }.count == 4, "host route missed: other got \(other.requests.map(\.uri))")
        #expect(other.requests.isEmpty)
    }

    @Test func rolesOnARouteWithoutRequiredAuthIsAConfigError() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("gh-validate-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let path = dir.appendingPathComponent("gateway.yaml").path
        try testConfig(
            upstreams: ["app": [9]],
            routes: "  - name: r\n    match: {path_prefix: /}\n    upstream: app\n    auth: optional\n    roles: [admin]\n"
        ).write(toFile: path, atomically: true, encoding: .utf8)
        let p = Process()
        p.executableURL = URL(fileURLWithPath: GatewayProcess.binary)
        p.arguments = ["validate", "--config", path]
        let err = Pipe()
        p.standardError = err
        p.standardOutput = FileHandle.nullDevice
        try p.run()
        p.waitUntilExit()
        let text = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        #expect(p.terminationStatus == 1)
        #expect(text.contains("roles need auth: required"), "\(text)")
    }
}
