import Foundation
import Testing

/// Live: token buckets and quotas with a real Redis (exact and leased) and with the embedded store.
@Suite(.serialized) struct RateLimitTests {
    static func config(
        upstream: Int, redis: Int?, mode: String = "exact", onFailure: String = "open", timeout: String = "250ms",
        rate: String = "{requests: 1, per: 60s, burst: 50}", quota: String = "unlimited",
        routeLimits: String = "[tenant]", threads: Int = 1, scheme: String = "redis", storeExtra: String = ""
    ) -> String {
        let store =
            redis.map {
                "store: {redis: \"\(scheme)://127.0.0.1:\($0)/0\", timeout: \(timeout), on_failure: \(onFailure), key_prefix: ghtest, rate_limit_mode: \(mode)\(storeExtra)}"
            } ?? ""
        return """
            server: {listen: 127.0.0.1:0, admin_listen: 127.0.0.1:0, admin_token_env: GH_TEST_ADMIN_TOKEN, threads: \(threads)}
            \(store)
            identity:
              header_tenancy: always
              jwt:
                issuers:
                  - {issuer: "https://hs.test/", audiences: [api], algorithms: [HS256], secret_env: GH_TEST_HS_SECRET, tenant_claim: org_id}
            plans:
              metered: {rate: \(rate), quota: \(quota)}
              open: {quota: unlimited}
            tenants:
              acme: {plan: metered}
              globex: {plan: metered}
              free: {plan: open}
            upstreams:
              app: {targets: [127.0.0.1:\(upstream)]}
            routes:
              - {name: api, match: {path_prefix: /api}, upstream: app, auth: optional, rate_limits: \(routeLimits)}
              - {name: public, match: {path_prefix: /public}, upstream: app, auth: none}
            """
    }

    static let env = ["GH_TEST_ADMIN_TOKEN": "adm", "GH_TEST_HS_SECRET": TestKeys.hsSecret]
    static let admin = [("Authorization", "Bearer adm")]

    /// Sends `count` requests at once, each on its own connection (spread over `ports` in turn), then reads
    /// every answer.
    func burst(ports: [Int], count: Int, tenant: String, path: String = "/api/x") throws -> [RawResponse] {
        var connections: [RawConnection] = []
        for i in 0..<count { connections.append(try RawConnection(port: ports[i % ports.count])) }
        let head = "GET \(path) HTTP/1.1\r\nHost: gateway.test\r\nX-Tenant-ID: \(tenant)\r\nConnection: close\r\n\r\n"
        for c in connections { try c.send(head) }
        return try connections.map { c in
            guard let r = try c.readResponse() else { throw RawClientError(description: "no response") }
            return r
        }
    }

    func burst(port: Int, count: Int, tenant: String) throws -> [RawResponse] {
        try burst(ports: [port], count: count, tenant: tenant)
    }

    func count(_ responses: [RawResponse], _ status: Int) -> Int { responses.filter { $0.status == status }.count }

    /// `cmdstat_<name>` calls from INFO commandstats.
    func commandCalls(_ redis: RedisServer, _ name: String) throws -> Int {
        let text = try redisCommand(redis, ["INFO", "commandstats"])
        guard let line = text.split(separator: "\r\n").first(where: { $0.hasPrefix("cmdstat_\(name):") }),
            let calls = line.split(separator: ",").first?.split(separator: "=").last
        else { return 0 }
        return Int(calls) ?? 0
    }

    /// One command on a fresh connection; the reply's text (a bulk string's payload, or the whole line).
    func redisCommand(_ redis: RedisServer, _ args: [String]) throws -> String {
        let raw = try RawConnection(port: redis.port)
        var text = "*\(args.count)\r\n"
        for a in args { text += "$\(a.utf8.count)\r\n\(a)\r\n" }
        try raw.send(text)
        var reply: [UInt8] = []
        while true {
            reply += try raw.readChunk()
            guard let end = reply.firstIndex(of: UInt8(ascii: "\n")) else { continue }
            let first = String(decoding: reply[..<end], as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
            guard first.hasPrefix("$"), let length = Int(first.dropFirst()) else { return first }
            if length < 0 { return "" }
            if reply.count >= end + 1 + length + 2 {
                return String(decoding: reply[(end + 1)..<(end + 1 + length)], as: UTF8.self)
            }
        }
    }

    // MARK: Exact mode

    @Test func exactModeAdmitsExactlyTheBurstUnderConcurrency() throws {
        let redis = try RedisServer()
        defer { redis.stop() }
        let up = try TestUpstream()
        defer { up.stop() }
        let gw = try GatewayProcess(yaml: Self.config(upstream: up.port, redis: redis.port, threads: 2), environment: Self.env)
        defer { gw.stop() }
        let answers = try burst(port: gw.port, count: 300, tenant: "acme")
        #expect(count(answers, 200) == 50)
        #expect(count(answers, 429) == 250)
        #expect(up.requests.count == 50)
        let denied = try #require(answers.first { $0.status == 429 })
        #expect(denied.json["code"] as? String == "rate_limited")
        #expect(Int(denied.header("Retry-After") ?? "") ?? 0 >= 1)
        #expect(denied.header("RateLimit-Limit") == "50")
        #expect(denied.header("RateLimit-Remaining") == "0")
        let admitted = answers.filter { $0.status == 200 }
        #expect(Set(admitted.compactMap { $0.header("RateLimit-Remaining") }) == Set((0..<50).map(String.init)))
        #expect(admitted.allSatisfy { $0.header("RateLimit-Limit") == "50" && $0.header("RateLimit-Reset") != nil })
        // Another tenant has its own bucket; a tenant-less route has none.
        let other = try burst(port: gw.port, count: 60, tenant: "globex")
        #expect(count(other, 200) == 50)
        let open = try request(port: gw.port, "GET", "/public/x")
        #expect(open.status == 200 && open.header("RateLimit-Limit") == nil)
        // A flushed script cache (a restarted Redis) is recovered from: NOSCRIPT, then EVAL.
        _ = try redisCommand(redis, ["SCRIPT", "FLUSH"])
        #expect(try request(port: gw.port, "GET", "/api/x", headers: [("X-Tenant-ID", "acme")]).status == 429)
        #expect(try commandCalls(redis, "eval") >= 1)
        let metrics = try request(port: gw.adminPort!, "GET", "/metrics").text
        #expect(metrics.contains("gatehouse_ratelimit_denied_total{plan=\"metered\"} 261"))
        #expect(metrics.contains("gatehouse_store_errors_total 0"))
    }

    @Test func rejectedRequestsConsumeNothing() throws {
        let redis = try RedisServer()
        defer { redis.stop() }
        let up = try TestUpstream()
        defer { up.stop() }
        let yaml = Self.config(
            upstream: up.port, redis: redis.port, rate: "{requests: 1, per: 60s, burst: 5}", routeLimits: "[tenant, user]")
        let gw = try GatewayProcess(yaml: yaml, environment: Self.env)
        defer { gw.stop() }
        func bearer(_ user: String) -> [(String, String)] { [("Authorization", "Bearer " + Tok.hs256(Tok.claims(sub: user)))] }
        func call(_ user: String) throws -> Int { try request(port: gw.port, "GET", "/api/x", headers: bearer(user)).status }
        // Tenant bucket 5: u1 takes 3, u2 takes 2; then u1 is refused by the tenant bucket.
        for _ in 0..<3 { #expect(try call("u1") == 200) }
        for _ in 0..<2 { #expect(try call("u2") == 200) }
        func tokens(_ bucket: String) throws -> Double {
            Double(try redisCommand(redis, ["HGET", "{ghtest:acme}:b:" + bucket, "tk"])) ?? -1
        }
        let before = try tokens("u:u1")
        #expect(before >= 2 && before < 2.1)
        for _ in 0..<10 { #expect(try call("u1") == 429) }
        // The refusals took nothing from u1's own bucket (nor anything at all: it was not even rewritten).
        #expect(try tokens("u:u1") == before)
        #expect(up.requests.count == 5)
        #expect(up.requests.allSatisfy { $0.header("x-tenant-id") == "acme" })
    }

    // MARK: Leased mode

    @Test func twoLeasedInstancesStayWithinTheBurstPlusTheLeaseBound() throws {
        let redis = try RedisServer()
        defer { redis.stop() }
        let up = try TestUpstream()
        defer { up.stop() }
        // 100/s with burst 50: a lease is min(0.1 s of rate, burst/10) = 5 units.
        let yaml = Self.config(upstream: up.port, redis: redis.port, mode: "leased", rate: "{requests: 100, per: 1s, burst: 50}")
        let a = try GatewayProcess(yaml: yaml, environment: Self.env)
        defer { a.stop() }
        let b = try GatewayProcess(yaml: yaml, environment: Self.env)
        defer { b.stop() }
        let calls0 = try commandCalls(redis, "evalsha")
        let started = Date()
        let answers = try burst(ports: [a.port, b.port], count: 300, tenant: "acme")
        let elapsed = Date().timeIntervalSince(started)
        let admitted = count(answers, 200)
        let refill = Int((100 * elapsed).rounded(.up))
        let leaseBound = 2 * 1 * 5  // instances x loops x lease size
        #expect(admitted <= 50 + refill + leaseBound, "admitted \(admitted) in \(elapsed) s")
        #expect(admitted >= 50 - leaseBound)
        #expect(count(answers, 200) + count(answers, 429) == 300)
        #expect(up.requests.count == admitted)
        // Far fewer Redis decisions than requests: one per lease (plus remembered denials).
        let calls = try commandCalls(redis, "evalsha") - calls0
        print("leased: \(admitted) admitted, \(calls) script calls, \(elapsed) s")
        #expect(calls > 0 && calls < admitted / 2, "\(calls) script calls for \(admitted) admitted")
        let metrics = try request(port: a.adminPort!, "GET", "/metrics").text
        #expect(metrics.contains("gatehouse_ratelimit_lease_tokens "))
    }

    // MARK: A sick Redis

    @Test func failOpenAnswersWithinTheTimeoutThroughALocalBucketAndRecovers() throws {
        let redis = try RedisServer()
        defer { redis.stop() }
        let up = try TestUpstream()
        defer { up.stop() }
        let yaml = Self.config(
            upstream: up.port, redis: redis.port, mode: "exact", onFailure: "open", timeout: "100ms",
            rate: "{requests: 1, per: 60s, burst: 5}")
        let gw = try GatewayProcess(yaml: yaml, environment: Self.env)
        defer { gw.stop() }
        #expect(try request(port: gw.port, "GET", "/api/x", headers: [("X-Tenant-ID", "acme")]).status == 200)
        redis.pause()
        var resumed = false
        defer { if !resumed { redis.resume() } }
        // The first calls wait for the timeout; then the circuit opens and calls fail at once.
        var statuses: [Int] = []
        for _ in 0..<8 {
            let started = Date()
            let r = try request(port: gw.port, "GET", "/api/x", headers: [("X-Tenant-ID", "acme")])
            let ms = Date().timeIntervalSince(started) * 1000
            #expect(ms < 100 + 20, "answered after \(ms) ms")
            statuses.append(r.status)
        }
        // The local bucket has the plan's limits: 5, then 429 (never 401/403, never 5xx).
        #expect(statuses == [200, 200, 200, 200, 200, 429, 429, 429])
        let metrics = try request(port: gw.adminPort!, "GET", "/metrics").text
        #expect(metrics.contains("gatehouse_ratelimit_fail_open_total 5"))
        #expect(!metrics.contains("gatehouse_store_errors_total 0\n"))
        // Readiness holds while failing open.
        #expect(try request(port: gw.adminPort!, "GET", "/readyz").status == 200)
        redis.resume()
        resumed = true
        // Recovery: Redis decides again. (Calls that timed out may still be applied once Redis wakes, so the
        // local decisions never leave a bucket fuller than it should be.) A decision made by Redis leaves
        // globex's bucket in Redis and does not count as fail-open.
        func failOpenCount() throws -> String {
            let text = try request(port: gw.adminPort!, "GET", "/metrics").text
            return text.split(separator: "\n").first { $0.hasPrefix("gatehouse_ratelimit_fail_open_total ") }.map(String.init) ?? ""
        }
        try waitUntil(seconds: 5) {
            guard let before = try? failOpenCount(),
                (try? request(port: gw.port, "GET", "/api/x", headers: [("X-Tenant-ID", "globex")]).status) == 200
            else { return false }
            return (try? failOpenCount()) == before
        }
        #expect(try redisCommand(redis, ["EXISTS", "{ghtest:globex}:b:t"]) == ":1")
        let r = try request(port: gw.port, "GET", "/api/x", headers: [("X-Tenant-ID", "globex")])
        #expect(r.header("RateLimit-Limit") == "5")
    }

    @Test func failOpenBucketsTakeThisInstancesShareOfTheLimit() throws {
        let redis = try RedisServer()
        defer { redis.stop() }
        let up = try TestUpstream()
        defer { up.stop() }
        let yaml = Self.config(upstream: up.port, redis: redis.port, mode: "exact", timeout: "100ms")
        let a = try GatewayProcess(yaml: yaml, environment: Self.env)
        defer { a.stop() }
        let b = try GatewayProcess(yaml: yaml, environment: Self.env)
        defer { b.stop() }
        try waitUntil(seconds: 5) {
            (try? request(port: a.adminPort!, "GET", "/metrics").text.contains("gatehouse_live_instances 2\n")) == true
        }
        redis.pause()
        defer { redis.resume() }
        // Burst 50 shared by two instances: a's local bucket holds 25.
        let answers = try burst(port: a.port, count: 60, tenant: "acme")
        #expect(count(answers, 200) == 25)
        #expect(count(answers, 429) == 35)
    }

    @Test func failClosedAnswers503AndRecoversAfterARestart() throws {
        let redis = try RedisServer()
        defer { redis.stop() }
        let up = try TestUpstream()
        defer { up.stop() }
        let yaml = Self.config(upstream: up.port, redis: redis.port, mode: "leased", onFailure: "closed", timeout: "100ms")
        let gw = try GatewayProcess(yaml: yaml, environment: Self.env)
        defer { gw.stop() }
        #expect(try request(port: gw.port, "GET", "/api/x", headers: [("X-Tenant-ID", "acme")]).status == 200)
        redis.pause()
        for tenant in ["globex", "globex", "globex", "globex"] {
            let started = Date()
            let r = try request(port: gw.port, "GET", "/api/x", headers: [("X-Tenant-ID", tenant)])
            #expect(Date().timeIntervalSince(started) < 0.12)
            #expect(r.status == 503)
            #expect(r.json["code"] as? String == "store_unavailable")
            #expect(Int(r.header("Retry-After") ?? "") ?? 0 >= 1)
        }
        #expect(try request(port: gw.adminPort!, "GET", "/readyz").status == 503)
        // A new Redis (state lost, script cache empty) on the same port: service comes back by itself.
        try redis.restart()
        try waitUntil(seconds: 5) {
            (try? request(port: gw.port, "GET", "/api/x", headers: [("X-Tenant-ID", "globex")]).status) == 200
        }
        #expect(up.requests.filter { $0.header("x-tenant-id") == "globex" }.count >= 1)
    }

    @Test func quotaAdmitsExactlyItsLimitAndUsageShowsIt() throws {
        let redis = try RedisServer()
        defer { redis.stop() }
        try checkQuota(redis: redis)
    }

    @Test func embeddedStoreGivesTheSameResults() throws {
        let up = try TestUpstream()
        defer { up.stop() }
        let gw = try GatewayProcess(yaml: Self.config(upstream: up.port, redis: nil, threads: 2), environment: Self.env)
        defer { gw.stop() }
        let answers = try burst(port: gw.port, count: 300, tenant: "acme")
        #expect(count(answers, 200) == 50)
        #expect(count(answers, 429) == 250)
        #expect(count(try burst(port: gw.port, count: 60, tenant: "globex"), 200) == 50)
        #expect(up.requests.count == 100)
        try checkQuota(redis: nil)
    }

    @Test func tenantOverridesReplaceThePlansLimits() throws {
        let up = try TestUpstream()
        defer { up.stop() }
        let gw = try GatewayProcess(yaml: Self.config(upstream: up.port, redis: nil), environment: Self.env)
        defer { gw.stop() }
        let body = #"{"plan": "metered", "overrides": {"rate": {"requests": 1, "per": "60s", "burst": 3}, "quota": {"requests": 2, "per": "month"}}}"#
        let put = try request(port: gw.adminPort!, "PUT", "/admin/tenants/acme", headers: Self.admin, body: body)
        #expect(put.status == 200)
        let overrides = try #require(put.json["overrides"] as? [String: Any])
        #expect((overrides["rate"] as? [String: Any])?["burst"] as? Int == 3)
        #expect((overrides["quota"] as? [String: Any])?["per"] as? String == "month")
        let first = try request(port: gw.port, "GET", "/api/x", headers: [("X-Tenant-ID", "acme")])
        #expect(first.status == 200 && first.header("RateLimit-Limit") == "3" && first.header("RateLimit-Remaining") == "2")
        #expect(try request(port: gw.port, "GET", "/api/x", headers: [("X-Tenant-ID", "acme")]).status == 200)
        let third = try request(port: gw.port, "GET", "/api/x", headers: [("X-Tenant-ID", "acme")])
        #expect(third.status == 429 && third.json["code"] as? String == "quota_exceeded")
        let usage = try request(port: gw.adminPort!, "GET", "/admin/tenants/acme/usage", headers: Self.admin)
        #expect(usage.json["used"] as? Int == 2 && usage.json["remaining"] as? Int == 0)
        for bad in [
            #"{"plan": "metered", "overrides": {"rate": {"requests": 0, "per": "1s"}}}"#,
            #"{"plan": "metered", "overrides": {"rate": {"requests": 5, "per": "soon"}}}"#,
            #"{"plan": "metered", "overrides": {"quota": {"requests": 5, "per": "week"}}}"#,
            #"{"plan": "metered", "overrides": {"quota": "lots"}}"#,
        ] {
            let r = try request(port: gw.adminPort!, "PUT", "/admin/tenants/acme", headers: Self.admin, body: bad)
            #expect(r.status == 400 && (r.json["detail"] as? String)?.contains("overrides.") == true, "\(bad)")
        }
        // JSON true is not a number (Foundation on Linux would cast it to 1).
        #expect(try request(port: gw.adminPort!, "PUT", "/admin/tenants/acme", headers: Self.admin, body: #"{"plan": "metered", "billing_anchor": true}"#).status == 400)
        #expect(try request(port: gw.adminPort!, "PUT", "/admin/tenants/acme", headers: Self.admin, body: #"{"plan": "metered", "billing_anchor": 1}"#).status == 200)
    }

    /// A quota of 30 a day: exactly 30 admitted, then 429 quota_exceeded until midnight UTC; the usage endpoint
    /// shows the count.
    func checkQuota(redis: RedisServer?) throws {
        let up = try TestUpstream()
        defer { up.stop() }
        let yaml = Self.config(
            upstream: up.port, redis: redis?.port, mode: "leased", rate: "{requests: 1000, per: 1s, burst: 1000}",
            quota: "{requests: 30, per: day}")
        let gw = try GatewayProcess(yaml: yaml, environment: Self.env)
        defer { gw.stop() }
        var statuses: [Int] = []
        var last: RawResponse?
        for _ in 0..<40 {
            let r = try request(port: gw.port, "GET", "/api/x", headers: [("X-Tenant-ID", "acme")])
            statuses.append(r.status)
            last = r
        }
        #expect(statuses.prefix(30).allSatisfy { $0 == 200 })
        #expect(statuses.suffix(10).allSatisfy { $0 == 429 })
        #expect(up.requests.count == 30)
        let denied = try #require(last)
        #expect(denied.json["code"] as? String == "quota_exceeded")
        let now = Int(Date().timeIntervalSince1970)
        let untilMidnight = 86_400 - now % 86_400
        let retry = try #require(Int(denied.header("Retry-After") ?? ""))
        #expect(abs(retry - untilMidnight) <= 2)
        #expect(denied.header("RateLimit-Limit") == "30" || denied.header("RateLimit-Limit") == "1000")
        let usage = try request(port: gw.adminPort!, "GET", "/admin/tenants/acme/usage", headers: Self.admin)
        #expect(usage.status == 200)
        #expect(usage.json["used"] as? Int == 30)
        #expect(usage.json["remaining"] as? Int == 0)
        let quota = try #require(usage.json["quota"] as? [String: Any])
        #expect(quota["requests"] as? Int == 30 && quota["per"] as? String == "day")
        let days = try #require(usage.json["days"] as? [[String: Any]])
        #expect(days.count == 1 && days[0]["requests"] as? Int == 30)
        #expect((usage.json["period_start"] as? String)?.hasSuffix("T00:00:00Z") == true)
        // Unknown tenant; no admin token.
        #expect(try request(port: gw.adminPort!, "GET", "/admin/tenants/nobody/usage", headers: Self.admin).status == 404)
        #expect(try request(port: gw.adminPort!, "GET", "/admin/tenants/acme/usage").status == 401)
    }
}
