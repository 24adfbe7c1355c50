import Foundation
import Policy
import Testing

/// Live: a route's `scopes` against the real binary. Scopes come from a token's `scope` string or `scp` array,
/// from an issuer's own `scopes_claim`, or from an API key made with them; a caller short of any gets 403
/// `insufficient_scope` with RFC 6750's challenge, is audited, and nothing reaches the upstream.
@Suite(.serialized) struct ScopeLiveTests {
    static let env = ["GH_TEST_ADMIN_TOKEN": "adm", "GH_TEST_HS_SECRET": TestKeys.hsSecret]
    static let admin = [("Authorization", "Bearer adm")]
    static let challenge = #"Bearer error="insufficient_scope", scope="orders:read orders:write""#

    static func config(upstream: Int, store: String = "", audit: String? = nil, tenants: String = "acme: {plan: pro}") -> String {
        var yaml = """
            server: {listen: 127.0.0.1:0, admin_listen: 127.0.0.1:0, admin_token_env: GH_TEST_ADMIN_TOKEN, threads: 1}
            \(store)
            identity:
              jwt:
                issuers:
                  - {issuer: "https://hs.test/", audiences: [api], algorithms: [HS256], secret_env: GH_TEST_HS_SECRET, tenant_claim: org_id}
                  - {issuer: "https://custom.test/", audiences: [api], algorithms: [HS256], secret_env: GH_TEST_HS_SECRET,
                     tenant_claim: org_id, scopes_claim: ext.permissions}
            plans: {pro: {features: [core]}}
            tenants:
              \(tenants)
            upstreams:
              app: {targets: [127.0.0.1:\(upstream)]}
            routes:
              - {name: deploy, match: {path_prefix: /deploy}, upstream: app, roles: [deployer], scopes: [deploy]}
              - {name: orders, match: {path_prefix: /orders}, upstream: app, scopes: [orders:read, orders:write]}
              - {name: api, match: {path_prefix: /api}, upstream: app}
            """
        if let audit {
            yaml += "\naudit:\n  methods: [POST]\n  denials: true\n  sinks:\n    - file: {path: \"\(audit)\"}\n"
        }
        return yaml
    }

    static func token(iss: String = "https://hs.test/", _ extra: [String: Any]) -> String {
        Tok.hs256(Tok.claims(iss: iss, extra: extra))
    }

    static func get(_ gw: GatewayProcess, _ path: String, token: String? = nil, key: String? = nil) throws -> RawResponse {
        var headers: [(String, String)] = []
        if let token { headers.append(("Authorization", "Bearer \(token)")) }
        if let key { headers.append(("X-API-Key", key)) }
        return try request(port: gw.port, "GET", path, headers: headers)
    }

    /// The 403 `insufficient_scope` of the `orders` route, exactly.
    static func expectInsufficientScope(
        _ r: RawResponse, _ what: String, challenge: String = challenge, sourceLocation: SourceLocation = #_sourceLocation
    ) {
        #expect(r.status == 403, Comment(rawValue: "\(what): \(r.status) \(r.text)"), sourceLocation: sourceLocation)
        #expect(r.json["code"] as? String == "insufficient_scope", Comment(rawValue: what), sourceLocation: sourceLocation)
        #expect(r.header("WWW-Authenticate") == challenge, Comment(rawValue: what), sourceLocation: sourceLocation)
        #expect(r.header("Content-Type") == "application/problem+json", Comment(rawValue: what), sourceLocation: sourceLocation)
    }

    @Test func tokenScopesFromBothClaimShapesAndAnIssuersOwnClaim() throws {
        let dir = try AuditTests.logDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let log = dir.appendingPathComponent("audit.jsonl").path
        let up = try TestUpstream()
        defer { up.stop() }
        let gw = try GatewayProcess(yaml: Self.config(upstream: up.port, audit: log), environment: Self.env)
        defer { gw.stop() }

        let allowed: [(String, String)] = [
            ("scope string", Self.token(["scope": "orders:write profile orders:read"])),
            ("scp array", Self.token(["scp": ["orders:read", "orders:write"]])),
            ("custom claim", Self.token(iss: "https://custom.test/", ["ext": ["permissions": ["orders:read", "orders:write"]]])),
        ]
        for (what, token) in allowed {
            let r = try Self.get(gw, "/orders/1", token: token)
            #expect(r.status == 200, Comment(rawValue: "\(what): \(r.status) \(r.text)"))
        }
        #expect(up.requests.count == 3)

        let denied: [(String, String)] = [
            ("no scopes", Self.token([:])),
            ("one of two", Self.token(["scope": "orders:read"])),
            ("one of two as scp", Self.token(["scp": ["orders:write"]])),
            ("both in one array entry", Self.token(["scp": ["orders:read orders:write"]])),
            ("case differs", Self.token(["scope": "Orders:Read Orders:Write"])),
            ("numeric scope", Self.token(["scope": 42])),
            ("object scope", Self.token(["scope": ["orders:read": true, "orders:write": true]])),
            ("`scope` for an issuer with its own claim", Self.token(iss: "https://custom.test/", ["scope": "orders:read orders:write"])),
            ("custom claim one short", Self.token(iss: "https://custom.test/", ["ext": ["permissions": "orders:read"]])),
        ]
        for (what, token) in denied {
            Self.expectInsufficientScope(try Self.get(gw, "/orders/1", token: token), what)
        }
        // A POST short of a scope: its body never goes upstream.
        let post = try request(
            port: gw.port, "POST", "/orders", headers: [("Authorization", "Bearer \(Self.token(["scope": "orders:read"]))")],
            body: #"{"qty": 1}"#)
        Self.expectInsufficientScope(post, "POST")
        #expect(up.requests.count == 3, Comment(rawValue: "forwarded: \(up.requests.map(\.uri))"))
        // A route that lists no scopes takes a token with none; a bad token is still a 401, not a 403.
        #expect(try Self.get(gw, "/api/x", token: Self.token(["scope": 42])).status == 200)
        let forged = try Self.get(gw, "/orders/1", token: Self.token(["scope": "orders:read orders:write"]) + "x")
        #expect(forged.status == 401 && forged.header("WWW-Authenticate") == #"Bearer error="invalid_token""#)

        // Audited as a denial like the others.
        try waitUntil { AuditTests.records(log).contains { $0["request_id"] as? String == post.header("X-Request-ID") } }
        let record = try #require(AuditTests.records(log).first { $0["request_id"] as? String == post.header("X-Request-ID") })
        #expect(record["decision"] as? String == "deny")
        #expect(record["code"] as? String == "insufficient_scope")
        #expect(record["status"] as? Int == 403)
        // Refused after authentication: recorded as the caller it is.
        #expect(record["tenant"] as? String == "acme" && record["user"] as? String == "user-1")
        #expect(record["route"] as? String == "orders")
        let metrics = try request(port: try #require(gw.adminPort), "GET", "/metrics").text
        #expect(metrics.contains(#"route="orders",status="403",decision="deny",code="insufficient_scope""#))
    }

    @Test func tokenCommandMintsScopes() throws {
        let up = try TestUpstream()
        defer { up.stop() }
        let gw = try GatewayProcess(yaml: Self.config(upstream: up.port), environment: Self.env)
        defer { gw.stop() }
        let config = gw.directory.appendingPathComponent("gateway.yaml").path
        func mint(_ issuer: String, _ scope: String) throws -> String {
            let r = try runGatehouse(
                ["token", "--tenant", "acme", "--scope", scope, "--secret-env", "GH_TEST_HS_SECRET", "--issuer", issuer, "--config", config],
                environment: Self.env)
            #expect(r.status == 0, Comment(rawValue: r.err))
            return r.out.trimmingCharacters(in: .whitespacesAndNewlines)
        }
        // Into `scope`, or into the issuer's own claim (a dotted path).
        #expect(try Self.get(gw, "/orders/1", token: try mint("https://hs.test/", "orders:read orders:write")).status == 200)
        #expect(try Self.get(gw, "/orders/1", token: try mint("https://custom.test/", "orders:read orders:write")).status == 200)
        Self.expectInsufficientScope(try Self.get(gw, "/orders/1", token: try mint("https://custom.test/", "orders:read")), "minted one")
        let bad = try runGatehouse(["token", "--tenant", "acme", "--scope", "a\"b", "--secret-env", "GH_TEST_HS_SECRET"], environment: Self.env)
        #expect(bad.status != 0)
        #expect(up.requests.count == 2)
    }

    @Test func apiKeysMadeThroughTheAdminAPICarryScopesAndRoles() throws {
        let up = try TestUpstream()
        defer { up.stop() }
        let gw = try GatewayProcess(yaml: Self.config(upstream: up.port), environment: Self.env)
        defer { gw.stop() }
        let admin = try #require(gw.adminPort)
        func post(_ body: String?) throws -> RawResponse {
            try request(port: admin, "POST", "/admin/tenants/acme/api-keys", headers: Self.admin, body: body)
        }
        let full = try post(#"{"id": "ci", "scopes": ["orders:read", "orders:write", "deploy"], "roles": ["deployer"]}"#)
        #expect(full.status == 201, Comment(rawValue: full.text))
        let fullKey = try #require(full.json["key"] as? String)
        let readOnly = try post(#"{"scopes": ["orders:read"]}"#)
        let readKey = try #require(readOnly.json["key"] as? String)
        let scopesOnly = try post(#"{"id": "nodeploy", "scopes": ["deploy"]}"#)
        let scopesOnlyKey = try #require(scopesOnly.json["key"] as? String)
        let bare = try post(nil)
        let bareKey = try #require(bare.json["key"] as? String)

        #expect(try Self.get(gw, "/orders/1", key: fullKey).status == 200)
        #expect(try Self.get(gw, "/deploy/now", key: fullKey).status == 200)
        // The key's roles reach the upstream as verified identity.
        #expect(up.requests.last?.headers("x-roles") == ["deployer"])
        #expect(up.requests.last?.headers("x-user-id") == ["api-key:ci"])
        Self.expectInsufficientScope(try Self.get(gw, "/orders/1", key: readKey), "read-only key")
        Self.expectInsufficientScope(try Self.get(gw, "/orders/1", key: bareKey), "key without scopes")
        // The role check comes first, then the scopes.
        #expect(try Self.get(gw, "/deploy/now", key: scopesOnlyKey).json["code"] as? String == "forbidden")
        let noScope = try Self.get(gw, "/deploy/now", key: try #require(
            try post(#"{"id": "roleonly", "roles": ["deployer"]}"#).json["key"] as? String))
        Self.expectInsufficientScope(noScope, "role without scope", challenge: #"Bearer error="insufficient_scope", scope="deploy""#)
        #expect(try Self.get(gw, "/api/x", key: bareKey).status == 200)
        #expect(up.requests.count == 3)

        // A token sent with a key: the token authenticates, and the key lends it no scopes.
        let both = try request(
            port: gw.port, "GET", "/orders/1",
            headers: [("Authorization", "Bearer \(Self.token(["scope": "orders:read"]))"), ("X-API-Key", fullKey)])
        Self.expectInsufficientScope(both, "token with a key")
        #expect(up.requests.count == 3)

        // The tenant lists each key's scopes and roles, never a hash or a plaintext.
        let record = try request(port: admin, "GET", "/admin/tenants/acme", headers: Self.admin)
        let keys = try #require(record.json["api_keys"] as? [[String: Any]])
        let ci = try #require(keys.first { $0["id"] as? String == "ci" })
        #expect(ci["scopes"] as? [String] == ["orders:read", "orders:write", "deploy"])
        #expect(ci["roles"] as? [String] == ["deployer"])
        #expect(Set(ci.keys) == ["id", "scopes", "roles"])
        for key in [fullKey, readKey, bareKey] {
            #expect(!record.text.contains(key))
            #expect(!record.text.contains(Digest.hex(Digest.sha256(key.utf8))))
        }

        // Bad bodies are 400 problems naming the field; nothing is created.
        for (body, field) in [
            (#"{"scopes": "orders:read"}"#, "scopes"), (#"{"scopes": ["a b"]}"#, "scopes"), (#"{"scopes": [1]}"#, "scopes"),
            (#"{"scopes": ["q\"x"]}"#, "scopes"), (#"{"roles": ["a,b"]}"#, "roles"), (#"{"roles": {"admin": true}}"#, "roles"),
            (#"{"scope": ["a"]}"#, "scope"), ("[]", "JSON object"), ("nope", "JSON object"),
            ("{\"scopes\": [" + (0...Scopes.maxCount).map { "\"s\($0)\"" }.joined(separator: ",") + "]}", "scopes"),
        ] {
            let r = try post(body)
            #expect(r.status == 400, Comment(rawValue: "\(body): \(r.status)"))
            #expect(r.json["code"] as? String == "bad_request")
            #expect((r.json["detail"] as? String)?.contains(field) == true, Comment(rawValue: "\(body): \(r.text)"))
        }
        let after = try request(port: admin, "GET", "/admin/tenants/acme", headers: Self.admin)
        #expect((after.json["api_keys"] as? [[String: Any]])?.count == 5)
    }

    /// Keys in YAML seeds and in the shared store: a record stored before keys had scopes still authenticates
    /// (with none); keys made through the admin API keep their scopes in Redis across edits of the record.
    @Test func storedKeysOldAndNew() throws {
        let redis = try RedisServer()
        defer { redis.stop() }
        let up = try TestUpstream()
        defer { up.stop() }
        let seeded = "gh_seeded_scoped_key_0123456789"
        let tenants = """
            acme: {plan: pro}
              seedco: {plan: pro, api_keys: [{id: seeded, sha256: \(Digest.hex(Digest.sha256(seeded.utf8))), scopes: [orders:read, orders:write]}]}
            """
        let store = "store: {redis: \"redis://127.0.0.1:\(redis.port)/0\", timeout: 250ms, key_prefix: ghtest}"
        let raw = try RawConnection(port: redis.port)
        func command(_ args: String...) throws -> String {
            try raw.send("*\(args.count)\r\n" + args.map { "$\($0.utf8.count)\r\n\($0)\r\n" }.joined())
            return String(decoding: try raw.readChunk(), as: UTF8.self)
        }
        let old = "gh_live_old_format_key_0123456789"
        let oldRecord = #"{"plan":"pro","status":"active","billing_anchor":1,"api_keys":[{"id":"legacy","sha256":"\#(Digest.hex(Digest.sha256(old.utf8)))"}]}"#
        #expect(try command("SET", "{ghtest:oldco}:tenant", oldRecord).hasPrefix("+OK"))
        let gw = try GatewayProcess(
            yaml: Self.config(upstream: up.port, store: store, tenants: tenants), environment: Self.env)
        defer { gw.stop() }
        let admin = try #require(gw.adminPort)

        try waitUntil(seconds: 5) { (try? Self.get(gw, "/api/x", key: old).status) == 200 }
        #expect(up.requests.last?.headers("x-tenant-id") == ["oldco"])
        Self.expectInsufficientScope(try Self.get(gw, "/orders/1", key: old), "old-format key")
        #expect(try Self.get(gw, "/orders/1", key: seeded).status == 200)

        // Made through the admin API: stored in Redis with its scopes and roles (by hash only).
        let made = try request(
            port: admin, "POST", "/admin/tenants/acme/api-keys", headers: Self.admin,
            body: #"{"id": "ci", "scopes": ["orders:read", "orders:write"], "roles": ["deployer"]}"#)
        #expect(made.status == 201, Comment(rawValue: made.text))
        let key = try #require(made.json["key"] as? String)
        let stored = try command("GET", "{ghtest:acme}:tenant")
        #expect(stored.contains(#""scopes":["orders:read","orders:write"]"#), Comment(rawValue: stored))
        #expect(stored.contains(#""roles":["deployer"]"#))
        #expect(!stored.contains(key))
        #expect(try Self.get(gw, "/orders/1", key: key).status == 200)
        // Replacing the record (the store's script re-encodes it) keeps what the key grants.
        #expect(try request(port: admin, "PUT", "/admin/tenants/acme", headers: Self.admin, body: #"{"plan": "pro"}"#).status == 200)
        #expect(try Self.get(gw, "/orders/1", key: key).status == 200)
        #expect(try Self.get(gw, "/orders/1", key: seeded).status == 200)
        // A key made with none, then a PUT: it still grants nothing.
        let bare = try #require(
            try request(port: admin, "POST", "/admin/tenants/acme/api-keys", headers: Self.admin).json["key"] as? String)
        #expect(try request(port: admin, "PUT", "/admin/tenants/acme", headers: Self.admin, body: #"{"plan": "pro"}"#).status == 200)
        Self.expectInsufficientScope(try Self.get(gw, "/orders/1", key: bare), "bare key after a PUT")
        #expect(try Self.get(gw, "/api/x", key: bare).status == 200)
        #expect(up.requests.count == 6)
    }

    @Test func explainShowsTheScopeCheck() throws {
        let up = try TestUpstream()
        defer { up.stop() }
        let gw = try GatewayProcess(yaml: Self.config(upstream: up.port), environment: Self.env)
        defer { gw.stop() }
        let config = gw.directory.appendingPathComponent("gateway.yaml").path
        func explain(_ token: String, _ path: String = "/orders/1") throws -> (status: Int32, doc: [String: Any], text: String) {
            let args = ["explain", "--config", config, "GET", path, "-H", "Authorization: Bearer \(token)"]
            let json = try runGatehouse(args + ["--json"], environment: Self.env)
            let doc = try #require(try JSONSerialization.jsonObject(with: Data(json.out.utf8)) as? [String: Any], Comment(rawValue: json.err))
            return (json.status, doc, try runGatehouse(args, environment: Self.env).out)
        }
        func scopeCheck(_ doc: [String: Any]) -> [String: Any]? {
            let identity = doc["identity"] as? [String: Any]
            return (identity?["checks"] as? [[String: Any]])?.first { $0["name"] as? String == "scopes" }
        }
        let short = try explain(Self.token(["scope": "orders:read profile"]))
        #expect(short.status == 1)
        let failed = try #require(scopeCheck(short.doc))
        #expect(failed["result"] as? String == "failed")
        #expect(failed["detail"] as? String == "needs all of orders:read orders:write; the caller has orders:read profile (missing orders:write)")
        #expect((short.doc["identity"] as? [String: Any])?["scopes"] as? [String] == ["orders:read", "profile"])
        let decision = short.doc["decision"] as? [String: Any]
        #expect(decision?["status"] as? Int == 403 && decision?["code"] as? String == "insufficient_scope")
        #expect(short.text.contains("scopes FAILED: needs all of orders:read orders:write"), Comment(rawValue: short.text))
        #expect(short.text.contains("scopes orders:read profile"))

        let enough = try explain(Self.token(["scp": ["orders:write", "orders:read"]]))
        #expect(enough.status == 0)
        #expect(scopeCheck(enough.doc)?["result"] as? String == "ok")
        // The roles pass, then the scopes fail.
        let scopeless = try explain(Self.token(["roles": ["deployer"], "scope": "orders:read"]), "/deploy/x")
        let checks = (scopeless.doc["identity"] as? [String: Any])?["checks"] as? [[String: Any]] ?? []
        #expect(checks.first { $0["name"] as? String == "roles" }?["result"] as? String == "ok")
        #expect(scopeCheck(scopeless.doc)?["detail"] as? String == "needs all of deploy; the caller has orders:read (missing deploy)")
        #expect((scopeless.doc["decision"] as? [String: Any])?["code"] as? String == "insufficient_scope")
        // Refused for its roles first: the scope check is not made.
        let roleless = try explain(Self.token(["scope": "deploy"]), "/deploy/x")
        #expect((roleless.doc["decision"] as? [String: Any])?["code"] as? String == "forbidden")
        #expect(scopeCheck(roleless.doc)?["result"] as? String == "skipped")
        #expect(up.requests.isEmpty)
    }
}
