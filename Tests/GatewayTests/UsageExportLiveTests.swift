import Foundation
import Policy
import Testing

/// Live: `GET /admin/usage` and `gatehouse usage export` against the real gateway, with a real Redis and with the
/// embedded store; both must report what the quota charged, as `GET /admin/tenants/{id}/usage` does.
@Suite(.serialized) struct UsageExportLiveTests {
    static let env = ["GH_TEST_ADMIN_TOKEN": "adm"]
    static let admin = [("Authorization", "Bearer adm")]

    static func config(upstream: Int, redis: Int?, mode: String = "exact", adminPort: Int = 0, threads: Int = 2) -> String {
        let store =
            redis.map { "store: {redis: \"redis://127.0.0.1:\($0)/0\", timeout: 250ms, key_prefix: ghtest, rate_limit_mode: \(mode)}" } ?? ""
        return """
            server: {listen: 127.0.0.1:0, admin_listen: 127.0.0.1:\(adminPort), admin_token_env: GH_TEST_ADMIN_TOKEN, threads: \(threads)}
            \(store)
            identity: {header_tenancy: always}
            plans:
              metered: {rate: {requests: 100, per: 1s, burst: 200}, quota: {requests: 100000, per: month}}
              open: {quota: unlimited}
            tenants:
              acme: {plan: metered}
              globex: {plan: open}
              initech: {plan: metered}
            upstreams:
              app: {targets: [127.0.0.1:\(upstream)]}
            routes:
              - {name: api, match: {path_prefix: /api}, upstream: app, auth: optional}
            """
    }

    /// Yesterday to tomorrow (UTC): today's counts, whichever side of midnight the test ends on.
    static var around: (from: String, to: String) {
        let now = Int(Date().timeIntervalSince1970)
        return (CivilDate.isoDate(now - 86_400), CivilDate.isoDate(now + 86_400))
    }

    func send(_ gw: GatewayProcess, tenant: String, count: Int) throws {
        for _ in 0..<count {
            #expect(try request(port: gw.port, "GET", "/api/x", headers: [("X-Tenant-ID", tenant)]).status == 200)
        }
    }

    func adminUsage(_ gw: GatewayProcess, _ query: String) throws -> RawResponse {
        try request(port: gw.adminPort!, "GET", "/admin/usage?" + query, headers: Self.admin)
    }

    /// The rows of a usage document as `tenant date requests` lines.
    func rows(_ json: [String: Any]) -> [String] {
        ((json["usage"] as? [[String: Any]]) ?? []).map { row in
            "\(row["tenant"] as? String ?? "?") \(row["date"] as? String ?? "?") \(row["requests"] as? Int ?? -1)"
        }
    }

    func rows(csv: String) -> [String] {
        csv.split(separator: "\n").dropFirst().map { $0.split(separator: ",").joined(separator: " ") }
    }

    /// Requests per tenant, summed over the rows' days.
    func totals(_ rows: [String]) -> [String: Int] {
        var out: [String: Int] = [:]
        for row in rows {
            let parts = row.split(separator: " ")
            out[String(parts[0]), default: 0] += Int(parts[2]) ?? 0
        }
        return out
    }

    /// Each export row's count is the day count `GET /admin/tenants/{id}/usage` gives for that date.
    func expectAgreesWithTheTenantUsage(_ gw: GatewayProcess, _ rows: [String]) throws {
        for row in rows {
            let parts = row.split(separator: " ").map(String.init)
            let usage = try request(port: gw.adminPort!, "GET", "/admin/tenants/\(parts[0])/usage", headers: Self.admin)
            let days = (usage.json["days"] as? [[String: Any]]) ?? []
            guard let day = days.first(where: { $0["date"] as? String == parts[1] }) else {
                Issue.record(Comment(rawValue: "\(row): no such day in \(usage.text)"))
                continue
            }
            #expect(day["requests"] as? Int == Int(parts[2]), Comment(rawValue: "\(row) vs \(usage.text)"))
        }
    }

    func export(_ gw: GatewayProcess, _ extra: [String], environment: [String: String] = [:]) throws -> (
        status: Int32, out: String, err: String
    ) {
        let (from, to) = Self.around
        return try runGatehouse(
            ["usage", "export", "--config", gw.configPath, "--from", from, "--to", to] + extra, environment: environment)
    }

    @Test func redisCountsThroughTheAdminAPIAndTheCommandLine() throws {
        let redis = try RedisServer()
        defer { redis.stop() }
        let up = try TestUpstream()
        defer { up.stop() }
        let gw = try GatewayProcess(yaml: Self.config(upstream: up.port, redis: redis.port), environment: Self.env)
        defer { gw.stop() }
        try send(gw, tenant: "acme", count: 7)
        try send(gw, tenant: "globex", count: 4)
        // Counters of another prefix sharing the Redis (gh:eu beside gh): not this gateway's.
        let today = Int(Date().timeIntervalSince1970) / 86_400 * 86_400
        _ = try RateLimitTests().redisCommand(redis, ["SET", "{ghtest:eu:acme}:d:\(today)", "99"])
        _ = try RateLimitTests().redisCommand(redis, ["SET", "{other:acme}:d:\(today)", "99"])

        let (from, to) = Self.around
        let all = try adminUsage(gw, "from=\(from)&to=\(to)")
        #expect(all.status == 200)
        #expect(all.json["from"] as? String == from && all.json["to"] as? String == to)
        let allRows = rows(all.json)
        #expect(totals(allRows) == ["acme": 7, "globex": 4], Comment(rawValue: all.text))
        try expectAgreesWithTheTenantUsage(gw, allRows)
        let one = try adminUsage(gw, "from=\(from)&to=\(to)&tenant=acme")
        #expect(totals(rows(one.json)) == ["acme": 7])
        #expect(rows(try adminUsage(gw, "from=\(from)&to=\(to)&tenant=initech").json).isEmpty)

        // The command line reads Redis itself and prints the same document.
        let json = try export(gw, ["--format", "json"])
        #expect(json.status == 0, Comment(rawValue: json.err))
        #expect(json.out == all.text + "\n")
        let csv = try export(gw, ["--format", "csv"])
        #expect(csv.status == 0, Comment(rawValue: csv.err))
        #expect(csv.out.hasPrefix("tenant,date,requests\n"))
        #expect(rows(csv: csv.out) == allRows)
        let csvDefault = try export(gw, [])
        #expect(csvDefault.out == csv.out)
        let oneJSON = try export(gw, ["--format", "json", "--tenant", "acme"])
        #expect(oneJSON.out == one.text + "\n")
        let oneCSV = try export(gw, ["--tenant", "globex"])
        #expect(totals(rows(csv: oneCSV.out)) == ["globex": 4])

        // Kept for billing: 62 days from the day's start.
        let ttl = Int(try RateLimitTests().redisCommand(redis, ["TTL", "{ghtest:acme}:d:\(today)"]).dropFirst()) ?? 0
        #expect(ttl > 61 * 86_400 && ttl <= 62 * 86_400, Comment(rawValue: "TTL \(ttl)"))

        // A tenant deleted since is still billed for the days it used.
        #expect(try request(port: gw.adminPort!, "DELETE", "/admin/tenants/globex", headers: Self.admin).status == 204)
        #expect(totals(rows(try adminUsage(gw, "from=\(from)&to=\(to)").json)) == ["acme": 7, "globex": 4])

        // Refusals: bad dates, a reversed or too long range, no admin token.
        for query in ["from=\(to)&to=\(from)", "from=2026-02-30&to=2026-03-01", "from=2025-01-01&to=2026-01-02", "to=\(to)"] {
            let r = try adminUsage(gw, query)
            #expect(r.status == 400, Comment(rawValue: query))
            #expect(r.json["code"] as? String == "bad_request")
        }
        let anonymous = try request(port: gw.adminPort!, "GET", "/admin/usage?from=\(from)&to=\(to)")
        #expect(anonymous.status == 401)
        #expect(anonymous.json["code"] as? String == "unauthenticated")
        let reversed = try runGatehouse(["usage", "export", "--config", gw.configPath, "--from", to, "--to", from])
        #expect(reversed.status != 0 && reversed.err.contains("after"), Comment(rawValue: reversed.err))
        let malformed = try runGatehouse(["usage", "export", "--config", gw.configPath, "--from", "2026-11", "--to", to])
        #expect(malformed.status != 0 && malformed.err.contains("YYYY-MM-DD"), Comment(rawValue: malformed.err))
        #expect(malformed.out.isEmpty)
    }

    /// Leased mode counts the units a loop takes from Redis while the lease is held: the day's count is the
    /// admitted requests plus the units still leased (`gatehouse_ratelimit_lease_tokens`). Unspent units are
    /// given back when a lease is dropped (after 10 s) and at a graceful stop, so the count settles on the
    /// requests admitted.
    @Test func leasedModeCountsLeasedUnitsUntilTheLeaseIsGivenBack() throws {
        let redis = try RedisServer()
        defer { redis.stop() }
        let up = try TestUpstream()
        defer { up.stop() }
        let yaml = Self.config(upstream: up.port, redis: redis.port, mode: "leased", threads: 1)
        let gw = try GatewayProcess(yaml: yaml, environment: Self.env)
        try send(gw, tenant: "acme", count: 5)
        let (from, to) = Self.around
        let counted = totals(rows(try adminUsage(gw, "from=\(from)&to=\(to)&tenant=acme").json))["acme"] ?? 0
        let leased = Int(try gw.metrics().value("gatehouse_ratelimit_lease_tokens") ?? -1)
        // A lease is 0.1 s of 100/s, at most a tenth of the burst of 200: 10 units; 5 spent, 5 still held.
        #expect(up.requests.count == 5)
        #expect(counted == 5 + leased, Comment(rawValue: "counted \(counted), leased \(leased)"))
        #expect(counted == 10)
        // Without a rate and a quota the lease is 1,000 units: one request holds 1,000 while the lease lives.
        try send(gw, tenant: "globex", count: 1)
        let open = totals(rows(try adminUsage(gw, "from=\(from)&to=\(to)&tenant=globex").json))["globex"] ?? 0
        #expect(open == 1000)
        #expect(Int(try gw.metrics().value("gatehouse_ratelimit_lease_tokens") ?? -1) == leased + 999)
        // A graceful stop gives every unspent unit back: the counts are the requests admitted.
        #expect(gw.stop() == 0)
        let after = try GatewayProcess(yaml: yaml, environment: Self.env)
        defer { after.stop() }
        let settled = totals(rows(try adminUsage(after, "from=\(from)&to=\(to)").json))
        #expect(settled["acme"] == 5)
        #expect(settled["globex"] == 1)
    }

    @Test func theEmbeddedStoreThroughTheAdminAPIAndTheCommandLine() throws {
        let up = try TestUpstream()
        defer { up.stop() }
        // The command line finds the gateway at server.admin_listen: a fixed port.
        let gw = try GatewayProcess(
            yaml: Self.config(upstream: up.port, redis: nil, adminPort: try RedisServer.freePort()), environment: Self.env)
        defer { gw.stop() }
        try send(gw, tenant: "acme", count: 3)
        try send(gw, tenant: "globex", count: 6)
        #expect(try request(port: gw.port, "GET", "/api/x", headers: [("X-Tenant-ID", "nobody")]).status == 403)
        let (from, to) = Self.around
        let all = try adminUsage(gw, "from=\(from)&to=\(to)")
        #expect(all.status == 200)
        let allRows = rows(all.json)
        #expect(totals(allRows) == ["acme": 3, "globex": 6], Comment(rawValue: all.text))
        try expectAgreesWithTheTenantUsage(gw, allRows)

        // Without a store the command line asks the running gateway, with the admin token from the environment.
        let json = try export(gw, ["--format", "json"], environment: Self.env)
        #expect(json.status == 0, Comment(rawValue: json.err))
        #expect(json.out == all.text + "\n")
        let csv = try export(gw, ["--format", "csv"], environment: Self.env)
        #expect(rows(csv: csv.out) == allRows)
        let one = try export(gw, ["--format", "csv", "--tenant", "globex"], environment: Self.env)
        #expect(totals(rows(csv: one.out)) == ["globex": 6])
        let noToken = try export(gw, [], environment: ["GH_TEST_ADMIN_TOKEN": ""])
        #expect(noToken.status != 0)
        #expect(noToken.err.contains("GH_TEST_ADMIN_TOKEN"), Comment(rawValue: noToken.err))
        let wrongToken = try export(gw, [], environment: ["GH_TEST_ADMIN_TOKEN": "nope"])
        #expect(wrongToken.status != 0)
        #expect(wrongToken.err.contains("401"), Comment(rawValue: wrongToken.err))
    }
}

/// Live, on the shared Redis Cluster (in its serialized suite: other tests there kill masters): the export finds
/// the counters of tenants on every master, through the admin API and through the command line's own client.
extension ClusterStoreTests {
    @Test func usageExportReadsTheCountersOnEveryMaster() throws {
        let cluster = try SharedFixtures.cluster.get()
        let up = try TestUpstream()
        defer { up.stop() }
        let tenants = try Self.tenantPerMaster(cluster, prefix: "ghu")
        let yaml = Self.config(
            upstream: up.port, cluster: cluster, prefix: "ghu", tenants: tenants.map(\.tenant),
            rate: "{requests: 100, per: 1s, burst: 100}")
        let gw = try GatewayProcess(yaml: yaml, environment: Self.env)
        defer { gw.stop() }
        var expected: [String: Int] = [:]
        for (i, (_, tenant)) in tenants.enumerated() {
            expected[tenant] = i + 2
            for _ in 0..<(i + 2) {
                #expect(try request(port: gw.port, "GET", "/api/x", headers: [("X-Tenant-ID", tenant)]).status == 200)
            }
        }
        let live = UsageExportLiveTests()
        let (from, to) = UsageExportLiveTests.around
        let all = try live.adminUsage(gw, "from=\(from)&to=\(to)")
        #expect(all.status == 200)
        #expect(live.totals(live.rows(all.json)) == expected, Comment(rawValue: all.text))
        let json = try live.export(gw, ["--format", "json"])
        #expect(json.status == 0, Comment(rawValue: json.err))
        #expect(json.out == all.text + "\n")
        let last = tenants[2].tenant
        let one = try live.export(gw, ["--tenant", last])
        #expect(live.totals(live.rows(csv: one.out)) == [last: 4], Comment(rawValue: one.err))
    }
}

extension GatewayProcess {
    /// The config file the gateway was started with.
    var configPath: String { directory.appendingPathComponent("gateway.yaml").path }
}
