import Foundation
import Testing

/// Live: a gateway on a Sentinel-managed Redis (1 master, 1 replica, 3 sentinels) follows a failover.
@Suite(.serialized) struct SentinelStoreTests {
    @Test func aFailoverIsFollowedWithoutARestartAndTheBucketContinues() throws {
        let set = try RedisSentinelSet()
        defer { set.stop() }
        let up = try TestUpstream()
        defer { up.stop() }
        let nodes = set.sentinelPorts.map { "\"127.0.0.1:\($0)\"" }.joined(separator: ", ")
        let yaml = """
            server: {listen: 127.0.0.1:0, admin_listen: 127.0.0.1:0, admin_token_env: GH_TEST_ADMIN_TOKEN, threads: 2}
            store: {sentinel: {master: \(set.name), nodes: [\(nodes)]}, timeout: 100ms, on_failure: closed, key_prefix: ghs, rate_limit_mode: exact}
            identity: {header_tenancy: always}
            plans:
              metered: {rate: {requests: 1, per: 1h, burst: 10}, features: [core]}
              pro: {rate: {requests: 1, per: 1h, burst: 10}, features: [core, analytics]}
            plan_order: [metered, pro]
            tenants:
              acme: {plan: metered}
            upstreams:
              app: {targets: [127.0.0.1:\(up.port)]}
            routes:
              - {name: analytics, match: {path_prefix: /analytics}, upstream: app, auth: none, min_plan: pro, rate_limits: []}
              - {name: api, match: {path_prefix: /api}, upstream: app, auth: optional, rate_limits: [tenant]}
            """
        let env = ["GH_TEST_ADMIN_TOKEN": "adm"]
        let a = try GatewayProcess(yaml: yaml, environment: env)
        defer { a.stop() }
        let b = try GatewayProcess(yaml: yaml, environment: env)
        defer { b.stop() }
        let auth = [("Authorization", "Bearer adm")]
        let spent = ClusterStoreTests.statuses(try RateLimitTests().burst(ports: [a.port, b.port], count: 4, tenant: "acme"))
        #expect(spent[200] == 4)
        #expect(try request(port: a.adminPort!, "PUT", "/admin/tenants/acme", headers: auth, body: #"{"plan": "pro"}"#).status == 200)
        try waitUntil(seconds: 1) { (try? request(port: b.port, "GET", "/analytics/x", headers: [("X-Tenant-ID", "acme")]).status) == 200 }
        let oldMaster = try set.masterPort()
        // The replica has every write before the master goes.
        let raw = try RawConnection(port: oldMaster)
        try raw.send("WAIT 1 2000\r\n")
        #expect(String(decoding: try raw.readChunk(), as: UTF8.self) == ":1\r\n")
        let killed = try set.killMaster()
        #expect(killed == oldMaster)
        // While there is no master: on_failure (closed) within the timeout.
        let r = try request(port: a.port, "GET", "/api/x", headers: [("X-Tenant-ID", "acme")])
        #expect(r.status == 503 && r.json["code"] as? String == "store_unavailable", "\(r.status) \(r.text)")
        let newMaster = try set.waitForFailover(from: oldMaster, seconds: 30)
        #expect(newMaster != oldMaster)
        // Both instances reach the new master without a restart (every event loop of each); 6 units are left of
        // the 10, and a 503 spends none.
        var admitted = 0
        var seen: [Int: Int] = [:]
        try waitUntil(seconds: 10) {
            guard let answers = try? RateLimitTests().burst(ports: [a.port, b.port], count: 4, tenant: "acme") else { return false }
            let counts = ClusterStoreTests.statuses(answers)
            admitted += counts[200] ?? 0
            for (status, n) in counts { seen[status, default: 0] += n }
            return counts[429] == 4
        }
        #expect(admitted == 6, "the bucket must continue after the failover: \(admitted) admitted (\(seen))")
        // Writes go to the new master and reach the other instance.
        #expect(try request(port: b.adminPort!, "PUT", "/admin/tenants/acme", headers: auth, body: #"{"plan": "metered"}"#).status == 200)
        do {
            try waitUntil(seconds: 1) { (try? request(port: a.port, "GET", "/analytics/x", headers: [("X-Tenant-ID", "acme")]).status) == 403 }
        } catch {
            Issue.record(Comment(rawValue: "a did not hear of b's change: \(a.log.suffix(30).joined(separator: "\n"))"))
        }
        // The old master comes back as a replica; the gateways stay on the new master.
        try set.restart(oldMaster)
        #expect(try request(port: a.adminPort!, "PUT", "/admin/tenants/acme", headers: auth, body: #"{"plan": "pro"}"#).status == 200)
        try waitUntil(seconds: 1) { (try? request(port: b.port, "GET", "/analytics/x", headers: [("X-Tenant-ID", "acme")]).status) == 200 }
    }
}
