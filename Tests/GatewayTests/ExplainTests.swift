import Foundation
import Policy
import Testing

/// Live: `gatehouse explain` (the real binary) beside a running gateway on a real Redis: the decision, the
/// reasons and the current levels, with nothing forwarded, charged or written.
@Suite(.serialized) struct ExplainTests {
    static let env = ["GH_TEST_ADMIN_TOKEN": "adm", "GH_TEST_HS_SECRET": TestKeys.hsSecret]
    static let admin = [("Authorization", "Bearer adm")]

    static func config(upstream: Int, redis: Int?, extra: String = "", adminListen: String = "127.0.0.1:0") -> String {
        let store = redis.map { "store: {redis: \"redis://127.0.0.1:\($0)/0\", timeout: 250ms, key_prefix: ghtest, rate_limit_mode: exact}" } ?? ""
        return """
            server: {listen: 127.0.0.1:0, admin_listen: \(adminListen), admin_token_env: GH_TEST_ADMIN_TOKEN, threads: 1}
            \(store)
            identity:
              jwt:
                issuers:
                  - {issuer: "https://hs.test/", audiences: [api], algorithms: [HS256], secret_env: GH_TEST_HS_SECRET, tenant_claim: org_id}
            \(extra)
            plans:
              free: {rate: {requests: 1, per: 1h, burst: 5}, quota: {requests: 3, per: day}, features: [core]}
              pro: {rate: {requests: 1, per: 1h, burst: 5}, quota: unlimited, features: [core, analytics]}
            plan_order: [free, pro]
            tenants:
              acme: {plan: pro}
              freeco: {plan: free}
            upstreams:
              app: {targets: [127.0.0.1:\(upstream)]}
            routes:
              - {name: admin, match: {path_prefix: /api/admin}, upstream: app, auth: required, roles: [admin]}
              - {name: api, match: {path_prefix: /api}, upstream: app, auth: required, strip_prefix: /api}
              - {name: analytics, match: {path_prefix: /analytics}, upstream: app, auth: required, min_plan: pro, feature: analytics}
            """
    }

    /// A gateway and its config file, which explain reads too.
    struct Setup {
        let redis: RedisServer?
        let up: TestUpstream
        let gw: GatewayProcess
        var configPath: String { gw.directory.appendingPathComponent("gateway.yaml").path }

        func stop() {
            gw.stop()
            up.stop()
            redis?.stop()
        }
    }

    static func start(redis withRedis: Bool = true, extra: String = "", adminListen: String = "127.0.0.1:0") throws -> Setup {
        let redis = withRedis ? try RedisServer() : nil
        let up = try TestUpstream()
        let gw = try GatewayProcess(
            yaml: config(upstream: up.port, redis: redis?.port, extra: extra, adminListen: adminListen), environment: env)
        return Setup(redis: redis, up: up, gw: gw)
    }

    static func token(_ tenant: String, roles: [String]? = nil, exp: Int = Tok.now + 600) -> String {
        Tok.hs256(Tok.claims(tenant: tenant, sub: "alice", roles: roles, exp: exp))
    }

    /// `gatehouse explain` against the setup's config: exit status, stdout, stderr.
    func explain(_ s: Setup, _ method: String, _ url: String, _ headers: [String] = [], json: Bool = false) throws -> (status: Int32, out: String, err: String) {
        var args = ["explain", "--config", s.configPath, method, url]
        for h in headers { args += ["-H", h] }
        if json { args.append("--json") }
        return try runGatehouse(args, environment: Self.env)
    }

    func document(_ text: String) throws -> [String: Any] {
        try #require(try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any])
    }

    /// The bucket hash and quota counter of a tenant as Redis holds them (raw), to compare before and after.
    func state(_ redis: RedisServer, _ tenant: String, quotaStart: Int? = nil) throws -> String {
        var out = String(decoding: try runProcess("/usr/bin/redis-cli", ["-p", String(redis.port), "HGETALL", "{ghtest:\(tenant)}:b:t"]).out, as: UTF8.self)
        let keys = String(decoding: try runProcess("/usr/bin/redis-cli", ["-p", String(redis.port), "--scan", "--pattern", "{ghtest:\(tenant)}:*"]).out, as: UTF8.self)
        for key in keys.split(separator: "\n").sorted() where key.contains(":q:") || key.contains(":d:") {
            out += key + "=" + String(decoding: try runProcess("/usr/bin/redis-cli", ["-p", String(redis.port), "GET", String(key)]).out, as: UTF8.self)
        }
        return out
    }

    /// Write commands Redis has run (INFO commandstats), but the gateway's heartbeat (ZADD, ZREMRANGEBYSCORE).
    func writes(_ redis: RedisServer) throws -> [String: Int] {
        let text = String(decoding: try runProcess("/usr/bin/redis-cli", ["-p", String(redis.port), "INFO", "commandstats"]).out, as: UTF8.self)
        var calls: [String: Int] = [:]
        for line in text.split(whereSeparator: \.isNewline) where line.hasPrefix("cmdstat_") {
            let name = line.dropFirst(8).prefix { $0 != ":" }
            guard ["evalsha", "eval", "eval_ro", "hset", "set", "incrby", "del", "expire", "pexpire", "expireat", "rename", "zrem", "publish"].contains(String(name)),
                let calls1 = line.split(separator: ",").first?.split(separator: "=").last, let n = Int(calls1)
            else { continue }
            calls[String(name)] = n
        }
        return calls
    }

    func get(_ s: Setup, _ path: String, _ headers: [(String, String)]) throws -> RawResponse {
        try request(port: s.gw.port, "GET", path, headers: headers)
    }

    // MARK: Allowed, with the levels read from Redis

    @Test func anAllowedRequestShowsRouteTenantAndLevelsAndChargesNothing() throws {
        let s = try Self.start()
        defer { s.stop() }
        let redis = try #require(s.redis)
        let auth = [("Authorization", "Bearer \(Self.token("acme"))")]
        // Two real requests take two of the five tokens.
        #expect(try get(s, "/api/x", auth).status == 200)
        #expect(try get(s, "/api/x", auth).status == 200)
        let forwarded = s.up.requests.count
        let connections = s.up.connections
        let before = try state(redis, "acme")
        let writesBefore = try writes(redis)
        #expect(before.contains("tk") && before.contains(":q:"))
        #expect((writesBefore["evalsha"] ?? 0) + (writesBefore["eval"] ?? 0) >= 2)

        let text = try explain(s, "GET", "http://api.example.com/api/echo/x?q=1", ["Authorization: Bearer \(Self.token("acme"))"])
        #expect(text.status == 0, Comment(rawValue: text.out + text.err))
        #expect(text.out.contains("request   GET /api/echo/x?q=1  (host api.example.com, http)"))
        #expect(text.out.contains("route     api  (path_prefix /api, methods any)   upstream app"))
        #expect(text.out.contains("not: admin (path_prefix /api/admin does not match /api/echo/x)"))
        #expect(text.out.contains("signature ok"))
        #expect(text.out.contains("tenant    acme (from token claim org_id); record from the YAML seed: plan pro, status active"))
        #expect(text.out.contains("bucket t: 3.0 of 5 tokens"))
        #expect(text.out.contains("would be: admit"))
        #expect(text.out.contains("upstream  app: GET /echo/x?q=1"))
        #expect(text.out.contains("decision  allow 200 → upstream app"))

        let json = try explain(s, "GET", "/api/echo/x", ["Authorization: Bearer \(Self.token("acme"))"], json: true)
        #expect(json.status == 0)
        let doc = try document(json.out)
        let decision = try #require(doc["decision"] as? [String: Any])
        #expect(decision["allow"] as? Bool == true)
        #expect(decision["status"] as? Int == 200)
        #expect((doc["route"] as? [String: Any])?["name"] as? String == "api")
        #expect((doc["tenant"] as? [String: Any])?["id"] as? String == "acme")
        let charge = try #require(doc["charge"] as? [String: Any])
        #expect(charge["store"] as? String == "redis")
        #expect(charge["verdict"] as? String == "admit")
        let bucket = try #require((charge["buckets"] as? [[String: Any]])?.first)
        let tokens = try #require(bucket["tokens"] as? Double)
        #expect(tokens >= 3 && tokens < 3.5)
        #expect(bucket["key"] as? String == "{ghtest:acme}:b:t")
        #expect(((charge["quota"] as? [String: Any])?["used"] as? Int) == 2)
        #expect((doc["near_misses"] as? [[String: Any]])?.first?["route"] as? String == "admin")

        // Nothing reached the upstream, nothing was charged or written.
        #expect(s.up.requests.count == forwarded)
        #expect(s.up.connections == connections)
        #expect(try state(redis, "acme") == before)
        #expect(try writes(redis) == writesBefore)
        // The next real request finds the bucket as the two before it left it.
        let next = try get(s, "/api/x", auth)
        #expect(next.status == 200)
        #expect(next.header("RateLimit-Remaining") == "2")
    }

    // MARK: Denials

    @Test func aRateLimitedTenantIsExplainedAsA429() throws {
        let s = try Self.start()
        defer { s.stop() }
        let redis = try #require(s.redis)
        let auth = [("Authorization", "Bearer \(Self.token("acme"))")]
        for _ in 0..<5 { #expect(try get(s, "/api/x", auth).status == 200) }
        #expect(try get(s, "/api/x", auth).json["code"] as? String == "rate_limited")
        let forwarded = s.up.requests.count
        let before = try state(redis, "acme")
        let writesBefore = try writes(redis)

        let text = try explain(s, "GET", "/api/x", ["Authorization: Bearer \(Self.token("acme"))"])
        #expect(text.status == 1, Comment(rawValue: text.out + text.err))
        #expect(text.out.contains("would be: rate_limited"))
        #expect(text.out.contains("decision  deny 429 rate_limited: The tenant's request rate limit is exhausted"))
        let doc = try document(try explain(s, "GET", "/api/x", ["Authorization: Bearer \(Self.token("acme"))"], json: true).out)
        let decision = try #require(doc["decision"] as? [String: Any])
        #expect(decision["allow"] as? Bool == false)
        #expect(decision["status"] as? Int == 429)
        #expect(decision["code"] as? String == "rate_limited")
        let headers = try #require((doc["charge"] as? [String: Any])?["headers"] as? [String: Int])
        #expect(headers["remaining"] == 0 && headers["limit"] == 5)
        #expect(doc["upstream"] == nil)

        #expect(s.up.requests.count == forwarded)
        #expect(try state(redis, "acme") == before)
        #expect(try writes(redis) == writesBefore)
        // Another tenant's bucket is untouched: freeco's first request still finds it full.
        let other = try get(s, "/api/x", [("Authorization", "Bearer \(Self.token("freeco"))")])
        #expect(other.header("RateLimit-Remaining") == "4")
    }

    @Test func missingAndBadTokensAre401sNamingTheFailedCheck() throws {
        let s = try Self.start()
        defer { s.stop() }
        let none = try explain(s, "GET", "/api/x")
        #expect(none.status == 1)
        #expect(none.out.contains("credentials FAILED: none sent; the route requires a bearer token or an API key"))
        #expect(none.out.contains("decision  deny 401 unauthenticated"))
        // A token signed with another key: every check before the signature passed, none after it was made.
        let forged = Tok.hs256(Tok.claims(tenant: "acme"), key: Array("another-secret-0123456789abcdef0123456789".utf8))
        let bad = try explain(s, "GET", "/api/x", ["Authorization: Bearer \(forged)"], json: true)
        #expect(bad.status == 1)
        let doc = try document(bad.out)
        #expect((doc["decision"] as? [String: Any])?["code"] as? String == "unauthenticated")
        let checks = try #require((doc["identity"] as? [String: Any])?["checks"] as? [[String: Any]])
        func result(_ name: String) -> String? { checks.first { $0["name"] as? String == name }?["result"] as? String }
        #expect(result("issuer") == "ok" && result("alg") == "ok" && result("key") == "ok")
        #expect(result("signature") == "failed")
        #expect(result("exp") == "skipped")
        #expect(doc["tenant"] == nil && doc["charge"] == nil)
        let expired = try explain(s, "GET", "/api/x", ["Authorization: Bearer \(Self.token("acme", exp: Tok.now - 600))"])
        #expect(expired.status == 1)
        #expect(expired.out.contains("exp FAILED: the token has expired"))
        #expect(s.up.requests.isEmpty && s.up.connections == 0)
    }

    @Test func aPlanGateIsA403PlanRequiredUntilTheStoreSaysOtherwise() throws {
        let s = try Self.start()
        defer { s.stop() }
        let freeco = "Authorization: Bearer \(Self.token("freeco"))"
        let denied = try explain(s, "GET", "/analytics/report", [freeco])
        #expect(denied.status == 1, Comment(rawValue: denied.out + denied.err))
        #expect(denied.out.contains("gates     plan free (status active): subscription ok (active)"))
        #expect(denied.out.contains("min_plan FAILED: Route 'analytics' needs plan 'pro' or above; tenant 'freeco' is on 'free'."))
        #expect(denied.out.contains("decision  deny 403 plan_required"))
        // Roles are checked with the credentials: the admin route needs `admin`.
        let roles = try explain(s, "GET", "/api/admin/x", ["Authorization: Bearer \(Self.token("acme", roles: ["viewer"]))"])
        #expect(roles.status == 1)
        #expect(roles.out.contains("roles FAILED: needs one of admin; the caller has viewer"))
        #expect(roles.out.contains("decision  deny 403 forbidden"))
        // An upgrade through the admin API is in Redis: explain reads the records from there.
        let put = try request(port: s.gw.adminPort!, "PUT", "/admin/tenants/freeco", headers: Self.admin, body: #"{"plan": "pro"}"#)
        #expect(put.status == 200)
        let allowed = try explain(s, "GET", "/analytics/report", [freeco])
        #expect(allowed.status == 0, Comment(rawValue: allowed.out + allowed.err))
        #expect(allowed.out.contains("record from the store: plan pro"))
        #expect(s.up.requests.isEmpty && s.up.connections == 0)
    }

    // MARK: Keys, the embedded store, usage errors

    @Test func remoteKeysAreFetchedAndTheAppIsNeverContacted() throws {
        let idp = try TestUpstream()
        defer { idp.stop() }
        idp.jwks.withLock { $0 = IdentityTests.keys.jwks }
        let issuer = "http://127.0.0.1:\(idp.port)/"
        let extra = """
            identity:
              jwt:
                issuers:
                  - {issuer: "\(issuer)", audiences: [api], algorithms: [RS256], jwks_url: "\(issuer)jwks.json", tenant_claim: org_id}
            """
        let up = try TestUpstream()
        defer { up.stop() }
        // Only the identity section differs from the usual config: it is replaced whole.
        var yaml = Self.config(upstream: up.port, redis: nil)
        let start = try #require(yaml.range(of: "identity:"))
        let end = try #require(yaml.range(of: "plans:"))
        yaml.replaceSubrange(start.lowerBound..<end.lowerBound, with: extra + "\n")
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("gh-explain-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let path = dir.appendingPathComponent("gateway.yaml").path
        try yaml.write(toFile: path, atomically: true, encoding: .utf8)
        let token = Tok.signed(Tok.claims(iss: issuer, tenant: "acme"), alg: "RS256", pem: IdentityTests.keys.rsaPrivate, kid: "rsa-1")
        let result = try runGatehouse(["explain", "--config", path, "GET", "/api/x", "-H", "Authorization: Bearer \(token)"], environment: Self.env)
        #expect(result.status == 0, Comment(rawValue: result.out + result.err))
        #expect(result.out.contains("key ok (key set from \(issuer)jwks.json, fetched now)"))
        #expect(idp.jwksFetches.load(ordering: .relaxed) >= 1)
        #expect(up.requests.isEmpty && up.connections == 0)
        // Without a store the levels live in the serving process (none runs here): unknown, and said so.
        #expect(result.out.contains("bucket t: ? of 5 tokens"))
        #expect(result.out.contains("decision  allow 200 → upstream app (if the buckets hold a token: levels unknown)"))
        // A `kid` the key set lacks: the authenticate phase waits for one early refetch, as in the proxy, then refuses.
        let fetches = idp.jwksFetches.load(ordering: .relaxed)
        let unknown = Tok.signed(Tok.claims(iss: issuer, tenant: "acme"), alg: "RS256", pem: IdentityTests.keys.rsaPrivate, kid: "rotated")
        let refused = try runGatehouse(["explain", "--config", path, "GET", "/api/x", "-H", "Authorization: Bearer \(unknown)"], environment: Self.env)
        #expect(refused.status == 1, Comment(rawValue: refused.out + refused.err))
        #expect(refused.out.contains("key FAILED: no key of this issuer matches the token's kid and algorithm"))
        #expect(idp.jwksFetches.load(ordering: .relaxed) == fetches + 2)
        #expect(up.requests.isEmpty && up.connections == 0)
    }

    @Test func withTheEmbeddedStoreTheQuotaIsReadFromTheAdminAPI() throws {
        let adminPort = try RedisServer.freePort()
        let s = try Self.start(redis: false, adminListen: "127.0.0.1:\(adminPort)")
        defer { s.stop() }
        // freeco may make 3 requests a day.
        let auth = [("Authorization", "Bearer \(Self.token("freeco"))")]
        let header = "Authorization: Bearer \(Self.token("freeco"))"
        #expect(try get(s, "/api/x", auth).status == 200)
        let within = try explain(s, "GET", "/api/x", [header], json: true)
        #expect(within.status == 0, Comment(rawValue: within.out + within.err))
        var charge = try #require(try document(within.out)["charge"] as? [String: Any])
        #expect((charge["quota"] as? [String: Any])?["used"] as? Int == 1)
        #expect((charge["levels"] as? String)?.contains("quota from its admin API") == true)
        // The buckets live in the serving process: not known, so admitted only if they hold a token.
        #expect(charge["verdict"] as? String == "unknown")
        #expect((charge["buckets"] as? [[String: Any]])?.first?["tokens"] == nil)
        for _ in 0..<2 { #expect(try get(s, "/api/x", auth).status == 200) }
        let used = try explain(s, "GET", "/api/x", [header], json: true)
        #expect(used.status == 1, Comment(rawValue: used.out + used.err))
        let doc = try document(used.out)
        charge = try #require(doc["charge"] as? [String: Any])
        #expect(charge["verdict"] as? String == "quota_exceeded")
        #expect((doc["decision"] as? [String: Any])?["code"] as? String == "quota_exceeded")
        // The gateway agrees, and saw only the real requests.
        #expect(try get(s, "/api/x", auth).json["code"] as? String == "quota_exceeded")
        #expect(s.up.requests.count == 3)
    }

    @Test func usageErrorsAreNotDenials() throws {
        let s = try Self.start(redis: false)
        defer { s.stop() }
        for args in [["get", "/x"], ["GET", "x"], ["GET", "/x", "-H", "no colon"], ["GET", "/x y"], ["GET"]] {
            let result = try runGatehouse(["explain", "--config", s.configPath] + args, environment: Self.env)
            #expect(result.status != 0 && result.status != 1, Comment(rawValue: "\(args): \(result.status) \(result.err)"))
        }
        let missing = try runGatehouse(["explain", "--config", "/nonexistent/gateway.yaml", "GET", "/x"], environment: Self.env)
        #expect(missing.status != 0 && missing.status != 1)
        // What the gateway itself refuses is a denial, explained.
        let dots = try explain(s, "GET", "/api/../admin")
        #expect(dots.status == 1)
        #expect(dots.out.contains("decision  deny 400 bad_request"))
        let nowhere = try explain(s, "GET", "/nowhere")
        #expect(nowhere.status == 1)
        #expect(nowhere.out.contains("route     none matches"))
        #expect(nowhere.out.contains("decision  deny 404 route_not_found"))
    }
}
