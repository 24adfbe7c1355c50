import Foundation
import Policy
import Testing

/// Live: every forged, expired, misdirected or spoofed identity is refused and never reaches the upstream.
@Suite(.serialized) struct IdentityTests {
    static let keys = try! TestKeys()
    static let acmeKey = "gh_test_key_acme_0123456789"

    static func config(upstream: Int, extraIdentity: String = "") -> String {
        let keySHA = Digest.hex(Digest.sha256(acmeKey.utf8))
        return """
            server:
              listen: 127.0.0.1:0
              threads: 1
              max_header_bytes: 48KiB
            identity:
              tenant_header: X-Tenant-ID
              header_tenancy: api_key_only
              jwt:
                issuers:
                  - issuer: https://hs.test/
                    audiences: [api]
                    algorithms: [HS256]
                    secret_env: GH_TEST_HS_SECRET
                    tenant_claim: org_id
                    leeway: 30s
                  - issuer: https://rs.test/
                    audiences: [api, other]
                    algorithms: [RS256, ES256]
                    jwks_file: jwks.json
                    tenant_claim: org_id
            \(extraIdentity)
            plans:
              free: {features: [core]}
              pro: {features: [core, analytics]}
            tenants:
              acme: {plan: pro, api_keys: [{id: ci-bot, sha256: \(keySHA)}]}
              globex: {plan: free}
            upstreams:
              app: {targets: [127.0.0.1:\(upstream)]}
            routes:
              - {name: api, match: {path_prefix: /api}, upstream: app, auth: required}
              - {name: admin, match: {path_prefix: /admin}, upstream: app, auth: required, roles: [admin, owner]}
              - {name: opt, match: {path_prefix: /opt}, upstream: app, auth: optional}
              - {name: pub, match: {path_prefix: /pub}, upstream: app, auth: none}
            """
    }

    static func gateway(_ up: TestUpstream) throws -> GatewayProcess {
        try GatewayProcess(
            yaml: config(upstream: up.port), files: ["jwks.json": keys.jwks],
            environment: ["GH_TEST_HS_SECRET": TestKeys.hsSecret])
    }

    func get(_ gw: GatewayProcess, _ path: String = "/api/x", token: String? = nil, headers: [(String, String)] = [])
        throws -> RawResponse
    {
        var h = headers
        if let token { h.append(("Authorization", "Bearer \(token)")) }
        return try request(port: gw.port, "GET", path, headers: h)
    }

    @Test func validTokensOfEveryAlgorithmPassWithVerifiedIdentity() throws {
        let up = try TestUpstream()
        defer { up.stop() }
        let gw = try Self.gateway(up)
        defer { gw.stop() }
        let hs = Tok.hs256(Tok.claims(roles: ["admin", "dev"]))
        let rs = Tok.signed(Tok.claims(iss: "https://rs.test/"), alg: "RS256", pem: Self.keys.rsaPrivate, kid: "rsa-1")
        let es = Tok.signed(Tok.claims(iss: "https://rs.test/", aud: ["x", "other"]), alg: "ES256", pem: Self.keys.ecPrivate, kid: "ec-1")
        for token in [hs, rs, es] {
            let r = try get(gw, token: token)
            #expect(r.status == 200, "\(r.text)")
        }
        #expect(up.requests.count == 3)
        let first = try #require(up.requests.first)
        #expect(first.headers("x-tenant-id") == ["acme"])
        #expect(first.headers("x-user-id") == ["user-1"])
        #expect(first.headers("x-plan") == ["pro"])
        #expect(first.headers("x-roles") == ["admin,dev"])
        // Repeated tokens are served from the cache and still checked per request.
        #expect(try get(gw, token: hs).status == 200)
    }

    @Test func everyForgedOrInvalidTokenIsRefusedAndNeverForwarded() throws {
        let up = try TestUpstream()
        defer { up.stop() }
        let gw = try Self.gateway(up)
        defer { gw.stop() }
        let now = Tok.now
        let good = Tok.claims()
        let tampered: String = {
            let parts = Tok.hs256(good).split(separator: ".")
            return Tok.b64(["alg": "HS256", "typ": "JWT"]) + "." + Tok.b64(Tok.claims(tenant: "globex")) + "." + parts[2]
        }()
        let nonCanonical: String = {
            var t = Array(Tok.hs256(good).utf8)
            // Flip unused low bits of the last signature character: the same bytes, another encoding.
            let table = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_".utf8)
            let idx = table.firstIndex(of: t.last!)!
            t[t.count - 1] = table[idx | 1]
            return String(decoding: t, as: UTF8.self)
        }()
        let cases: [(String, String)] = [
            ("alg none", Tok.unsigned(good, alg: "none")),
            ("alg None", Tok.unsigned(good, alg: "None")),
            ("alg NONE", Tok.unsigned(good, alg: "NONE")),
            ("alg none with signature", Tok.unsigned(good, alg: "none") + "c2ln"),
            ("alg hs256 lowercase", Tok.hs256(good, header: ["alg": "hs256"])),
            ("HS256 signed with the RSA public key (algorithm confusion)",
             Tok.hs256(Tok.claims(iss: "https://rs.test/"), key: Array(Self.keys.rsaPublic.utf8), header: ["alg": "HS256", "kid": "rsa-1"])),
            ("empty HMAC key", Tok.hs256(good, key: [])),
            ("wrong secret", Tok.hs256(good, key: Array("another-secret-0123456789abcdef0123".utf8))),
            ("tampered payload", tampered),
            ("non-canonical signature", nonCanonical),
            ("expired", Tok.hs256(Tok.claims(exp: now - 120))),
            ("expired beyond leeway", Tok.hs256(Tok.claims(exp: now - 45))),
            ("nbf beyond leeway", Tok.hs256(Tok.claims(extra: ["nbf": now + 60]))),
            ("iat in the future", Tok.hs256(Tok.claims(extra: ["iat": now + 3600]))),
            ("missing exp", Tok.hs256(Tok.claims(exp: nil))),
            ("string exp", Tok.hs256(Tok.claims(exp: "\(now + 600)"))),
            ("boolean exp", Tok.hs256(Tok.claims(exp: true))),
            ("wrong iss", Tok.hs256(Tok.claims(iss: "https://evil.test/"))),
            ("wrong aud", Tok.hs256(Tok.claims(aud: "web"))),
            ("aud array without the audience", Tok.hs256(Tok.claims(aud: ["web", "mobile"]))),
            ("missing aud", Tok.hs256(Tok.claims(aud: nil))),
            ("unknown kid", Tok.signed(Tok.claims(iss: "https://rs.test/"), alg: "RS256", pem: Self.keys.rsaPrivate, kid: "rsa-9")),
            ("key not in the set", Tok.signed(Tok.claims(iss: "https://rs.test/"), alg: "RS256", pem: Self.keys.otherRSAPrivate, kid: "rsa-1")),
            ("RS token for the HS issuer", Tok.signed(good, alg: "RS256", pem: Self.keys.rsaPrivate, kid: "rsa-1")),
            ("EC key id with RS algorithm", Tok.signed(Tok.claims(iss: "https://rs.test/"), alg: "RS256", pem: Self.keys.rsaPrivate, kid: "ec-1")),
            ("jku header pointing elsewhere", Tok.hs256(good, key: Array("attacker".utf8), header: ["alg": "HS256", "jku": "http://127.0.0.1:1/jwks"])),
            ("20 KB token", Tok.hs256(Tok.claims(extra: ["pad": String(repeating: "p", count: 20_000)]))),
            ("two parts", "abc.def"),
            ("garbage", "not-a-token"),
            ("numeric tenant claim", Tok.hs256(Tok.claims(tenant: 42))),
            ("tenant claim with CRLF", Tok.hs256(Tok.claims(tenant: "acme\r\nX-Evil: 1"))),
            ("user claim with control characters", Tok.hs256(Tok.claims(sub: "root\u{7}"))),
        ]
        for (name, token) in cases {
            let r = try get(gw, token: token)
            #expect(r.status == 401, "\(name): \(r.status) \(r.text)")
            #expect(r.json["code"] as? String == "unauthenticated", "\(name)")
            #expect(r.header("WWW-Authenticate") == "Bearer error=\"invalid_token\"", "\(name)")
        }
        #expect(up.requests.isEmpty, "forwarded: \(up.requests.map(\.uri))")
        // No credentials at all: a bare challenge.
        let none = try get(gw)
        #expect(none.status == 401)
        #expect(none.header("WWW-Authenticate") == "Bearer")
        #expect(up.requests.isEmpty)
    }

    @Test func leewayAppliesOnBothSides() throws {
        let up = try TestUpstream()
        defer { up.stop() }
        let gw = try Self.gateway(up)
        defer { gw.stop() }
        let now = Tok.now
        #expect(try get(gw, token: Tok.hs256(Tok.claims(exp: now - 10))).status == 200)  // expired 10 s ago, leeway 30 s
        #expect(try get(gw, token: Tok.hs256(Tok.claims(extra: ["nbf": now + 10]))).status == 200)
        #expect(try get(gw, token: Tok.hs256(Tok.claims(exp: now - 60))).status == 401)
        #expect(try get(gw, token: Tok.hs256(Tok.claims(extra: ["nbf": now + 60]))).status == 401)
        #expect(up.requests.count == 2)
    }

    @Test func tenantResolutionAndRoles() throws {
        let up = try TestUpstream()
        defer { up.stop() }
        let gw = try Self.gateway(up)
        defer { gw.stop() }
        let acme = Tok.hs256(Tok.claims())
        let mismatch = try get(gw, token: acme, headers: [("X-Tenant-ID", "globex")])
        #expect(mismatch.status == 403)
        #expect(mismatch.json["code"] as? String == "tenant_mismatch")
        let noTenant = try get(gw, token: Tok.hs256(Tok.claims(tenant: nil)))
        #expect(noTenant.status == 400)
        #expect(noTenant.json["code"] as? String == "tenant_required")
        let unknown = try get(gw, token: Tok.hs256(Tok.claims(tenant: "initech")))
        #expect(unknown.status == 403)
        #expect(unknown.json["code"] as? String == "unknown_tenant")
        for hostile in ["../etc", "a b", String(repeating: "t", count: 65), "acme,globex", "ac%0Ame"] {
            let r = try get(gw, token: acme, headers: [("X-Tenant-ID", hostile)])
            #expect(r.status == 400, "\(hostile): \(r.status)")
        }
        let twoHeaders = try get(gw, token: acme, headers: [("X-Tenant-ID", "acme"), ("x-tenant-id", "acme")])
        #expect(twoHeaders.status == 400)
        // A header alone names no tenant for a token caller (header_tenancy: api_key_only).
        let headerOnly = try get(gw, token: Tok.hs256(Tok.claims(tenant: nil)), headers: [("X-Tenant-ID", "acme")])
        #expect(headerOnly.json["code"] as? String == "tenant_required")
        // Roles: any of the route's.
        let forbidden = try get(gw, "/admin/x", token: Tok.hs256(Tok.claims(roles: ["dev"])))
        #expect(forbidden.status == 403)
        #expect(forbidden.json["code"] as? String == "forbidden")
        #expect(try get(gw, "/admin/x", token: Tok.hs256(Tok.claims(roles: "dev owner"))).status == 200)
        #expect(up.requests.count == 1)
        // The gateway keeps serving.
        #expect(try get(gw, token: acme).status == 200)
    }

    @Test func spoofedIdentityHeadersNeverReachTheUpstream() throws {
        let up = try TestUpstream()
        defer { up.stop() }
        let gw = try Self.gateway(up)
        defer { gw.stop() }
        let token = Tok.hs256(Tok.claims(roles: ["dev"]))
        let c = try RawConnection(port: gw.port)
        try c.send(
            "GET /api/x HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer \(token)\r\nX-Tenant-ID: acme\r\n"
                + "Connection: keep-alive, X-Tenant-ID, X-User-ID\r\nx-user-id: root\r\nX-USER-ID: admin\r\n"
                + "X-Plan: enterprise\r\nx-roles: admin\r\nX-Roles: owner\r\n\r\n")
        #expect(try c.readResponse()?.status == 200)
        let seen = try #require(up.requests.first)
        #expect(seen.headers("x-tenant-id") == ["acme"])
        #expect(seen.headers("x-user-id") == ["user-1"])
        #expect(seen.headers("x-plan") == ["pro"])
        #expect(seen.headers("x-roles") == ["dev"])
        // On public routes the spoofed copies are stripped too, and nothing is injected.
        _ = try get(gw, "/pub/x", headers: [("X-Tenant-ID", "acme"), ("X-User-ID", "root"), ("X-Plan", "enterprise"), ("X-Roles", "admin")])
        let pub = try #require(up.requests.last)
        for h in ["x-tenant-id", "x-user-id", "x-plan", "x-roles"] { #expect(pub.headers(h).isEmpty, "\(h)") }
    }

    @Test func apiKeys() throws {
        let up = try TestUpstream()
        defer { up.stop() }
        let gw = try Self.gateway(up)
        defer { gw.stop() }
        let ok = try get(gw, headers: [("X-API-Key", Self.acmeKey)])
        #expect(ok.status == 200)
        #expect(up.requests.last?.headers("x-tenant-id") == ["acme"])
        #expect(up.requests.last?.headers("x-user-id") == ["api-key:ci-bot"])
        #expect(try get(gw, headers: [("X-API-Key", Self.acmeKey), ("X-Tenant-ID", "acme")]).status == 200)
        let wrong = try get(gw, headers: [("X-API-Key", "gh_test_key_nope")])
        #expect(wrong.status == 401)
        let mismatch = try get(gw, headers: [("X-API-Key", Self.acmeKey), ("X-Tenant-ID", "globex")])
        #expect(mismatch.json["code"] as? String == "tenant_mismatch")
        let both = try get(gw, token: Tok.hs256(Tok.claims(tenant: "globex")), headers: [("X-API-Key", Self.acmeKey)])
        #expect(both.json["code"] as? String == "tenant_mismatch")
        // A token with no tenant claim does not lend its roles to the key's tenant.
        let tenantless = try get(
            gw, token: Tok.hs256(Tok.claims(tenant: nil, roles: ["admin"])), headers: [("X-API-Key", Self.acmeKey)])
        #expect(tenantless.status == 403 && tenantless.json["code"] as? String == "tenant_mismatch", "\(tenantless.status) \(tenantless.text)")
        // The same tenant through both is fine.
        #expect(try get(gw, token: Tok.hs256(Tok.claims(tenant: "acme")), headers: [("X-API-Key", Self.acmeKey)]).status == 200)
        #expect(up.requests.count == 3)
    }

    @Test func optionalAndPublicRoutes() throws {
        let up = try TestUpstream()
        defer { up.stop() }
        let gw = try Self.gateway(up)
        defer { gw.stop() }
        #expect(try get(gw, "/opt/x").status == 200)
        #expect(try get(gw, "/opt/x", token: "bad.token.here").status == 401)
        #expect(try get(gw, "/opt/x", token: Tok.hs256(Tok.claims())).status == 200)
        #expect(up.requests.last?.headers("x-tenant-id") == ["acme"])
        #expect(try get(gw, "/pub/x", token: "ignored").status == 200)
    }

    @Test func tokenCommandMintsVerifiableTokens() throws {
        let up = try TestUpstream()
        defer { up.stop() }
        let gw = try Self.gateway(up)
        defer { gw.stop() }
        let p = Process()
        p.executableURL = URL(fileURLWithPath: GatewayProcess.binary)
        p.arguments = [
            "token", "--tenant", "acme", "--sub", "cli", "--roles", "admin,dev", "--ttl", "5m", "--secret-env",
            "GH_TEST_HS_SECRET", "--issuer", "https://hs.test/", "--audience", "api",
        ]
        p.environment = ["GH_TEST_HS_SECRET": TestKeys.hsSecret]
        let out = Pipe()
        p.standardOutput = out
        try p.run()
        let token = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            .trimmingCharacters(in: .whitespacesAndNewlines)
        p.waitUntilExit()
        #expect(p.terminationStatus == 0)
        let r = try get(gw, "/admin/x", token: token)
        #expect(r.status == 200, "\(r.text)")
        #expect(up.requests.last?.headers("x-user-id") == ["cli"])
    }

    @Test func jwksURLIsFetchedRefreshedAndKeptOnFailure() throws {
        let up = try TestUpstream()
        defer { up.stop() }
        up.jwks.withLock { $0 = Self.keys.jwks }
        let yaml = Self.config(upstream: up.port).replacingOccurrences(
            of: "jwks_file: jwks.json", with: "jwks_url: http://127.0.0.1:\(up.port)/keys/jwks.json\n        jwks_refresh: 1s")
        let gw = try GatewayProcess(yaml: yaml, environment: ["GH_TEST_HS_SECRET": TestKeys.hsSecret])
        defer { gw.stop() }
        let rs = Tok.signed(Tok.claims(iss: "https://rs.test/"), alg: "RS256", pem: Self.keys.rsaPrivate, kid: "rsa-1")
        let es = Tok.signed(Tok.claims(iss: "https://rs.test/"), alg: "ES256", pem: Self.keys.ecPrivate, kid: "ec-1")
        #expect(try get(gw, token: rs).status == 200)
        // The key server fails: the last good key set keeps working.
        up.jwks.withLock { $0 = nil }
        let before = up.jwksFetches.load(ordering: .relaxed)
        try waitUntil { up.jwksFetches.load(ordering: .relaxed) >= before + 1 }
        #expect(try get(gw, token: rs).status == 200)
        // Rotation: the RSA key is withdrawn; tokens signed with it stop working, the EC key still works.
        let object = try JSONSerialization.jsonObject(with: Data(Self.keys.jwks.utf8)) as! [String: Any]
        let ecOnly = (object["keys"] as! [[String: Any]]).filter { $0["kty"] as? String == "EC" }
        up.jwks.withLock { $0 = String(decoding: try! JSONSerialization.data(withJSONObject: ["keys": ecOnly]), as: UTF8.self) }
        try waitUntil { gw.log.contains { $0.contains("jwks refreshed") && $0.contains("\"gh-keys\":\"1\"") } }
        #expect(try get(gw, token: rs).status == 401)
        #expect(try get(gw, token: es).status == 200)
    }
}
