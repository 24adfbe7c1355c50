import Foundation
import Synchronization
import Testing

/// The fixtures every live test of one class shares (a Cluster takes seconds to form): started on first use,
/// killed when the test process exits.
enum SharedFixtures {
    private static let started = Mutex<[@Sendable () -> Void]>([])
    private static let registered = Mutex(false)

    static func onExit(_ stop: @escaping @Sendable () -> Void) {
        started.withLock { $0.append(stop) }
        let first = registered.withLock { done in
            defer { done = true }
            return !done
        }
        if first { atexit { SharedFixtures.stopAll() } }
    }

    static func stopAll() {
        for stop in started.withLock({ list in defer { list = [] }; return list }) { stop() }
    }

    /// A Redis Cluster of 3 masters and 3 replicas for the cluster tests.
    static let cluster: Result<RedisCluster, Error> = Result {
        let c = try RedisCluster(masters: 3, replicasPerMaster: 1)
        onExit { c.stop() }
        return c
    }
}

/// Live: gateway instances on a real Redis Cluster (3 masters, 3 replicas, `cluster-require-full-coverage no`).
/// Each test uses its own key prefix, so the tests share one cluster without sharing state.
@Suite(.serialized) struct ClusterStoreTests {
    static func config(
        upstream: Int, cluster: RedisCluster, prefix: String, tenants: [String], mode: String = "exact",
        onFailure: String = "closed", timeout: String = "100ms", rate: String = "{requests: 1, per: 1h, burst: 10}",
        threads: Int = 1
    ) -> String {
        let seeds = cluster.ports.prefix(2).map { "\"127.0.0.1:\($0)\"" }.joined(separator: ", ")
        return """
            server: {listen: 127.0.0.1:0, admin_listen: 127.0.0.1:0, admin_token_env: GH_TEST_ADMIN_TOKEN, threads: \(threads)}
            store: {cluster: [\(seeds)], timeout: \(timeout), on_failure: \(onFailure), key_prefix: \(prefix), rate_limit_mode: \(mode), tenant_cache_ttl: 30s}
            identity: {header_tenancy: always}
            plans:
              metered: {rate: \(rate), features: [core]}
              pro: {rate: \(rate), features: [core, analytics]}
            plan_order: [metered, pro]
            tenants:
            \(tenants.map { "  \($0): {plan: metered}" }.joined(separator: "\n"))
            upstreams:
              app: {targets: [127.0.0.1:\(upstream)]}
            routes:
              - {name: analytics, match: {path_prefix: /analytics}, upstream: app, auth: none, min_plan: pro}
              - {name: api, match: {path_prefix: /api}, upstream: app, auth: optional, rate_limits: [tenant]}
            """
    }

    static let env = ["GH_TEST_ADMIN_TOKEN": "adm"]
    static let admin = [("Authorization", "Bearer adm")]

    /// One tenant on each master.
    static func tenantPerMaster(_ cluster: RedisCluster, prefix: String) throws -> [(master: Int, tenant: String)] {
        let grouped = try cluster.tenants(prefix: prefix, perMaster: 1)
        #expect(grouped.count == 3, "tenants on \(grouped.count) masters")
        return grouped.keys.sorted().map { ($0, grouped[$0]![0]) }
    }

    static func statuses(_ responses: [RawResponse]) -> [Int: Int] {
        responses.reduce(into: [:]) { $0[$1.status, default: 0] += 1 }
    }

    @Test func exactModeAdmitsExactlyTheBurstForTenantsOnEveryShard() throws {
        let cluster = try SharedFixtures.cluster.get()
        let up = try TestUpstream()
        defer { up.stop() }
        let tenants = try Self.tenantPerMaster(cluster, prefix: "ghx")
        let yaml = Self.config(upstream: up.port, cluster: cluster, prefix: "ghx", tenants: tenants.map(\.tenant))
        let gateways = try (0..<3).map { i in
            try GatewayProcess(yaml: i == 2 ? yaml.replacingOccurrences(of: "threads: 1", with: "threads: 2") : yaml, environment: Self.env)
        }
        defer { for g in gateways { g.stop() } }
        for (master, tenant) in tenants {
            let answers = try RateLimitTests().burst(ports: gateways.map(\.port), count: 30, tenant: tenant)
            let counts = Self.statuses(answers)
            #expect(counts[200] == 10 && counts[429] == 20, "tenant \(tenant) on master \(master): \(counts)")
        }
        #expect(up.requests.count == 30)
    }

    @Test func leasedModeStaysWithinTheStatedBound() throws {
        let cluster = try SharedFixtures.cluster.get()
        let up = try TestUpstream()
        defer { up.stop() }
        let tenants = try Self.tenantPerMaster(cluster, prefix: "ghl")
        // Lease size: 0.1 s of 100/s, at most a tenth of the burst: 10 units.
        let yaml = Self.config(
            upstream: up.port, cluster: cluster, prefix: "ghl", tenants: tenants.map(\.tenant), mode: "leased",
            rate: "{requests: 100, per: 1s, burst: 100}")
        let gateways = try (0..<3).map { _ in try GatewayProcess(yaml: yaml, environment: Self.env) }
        defer { for g in gateways { g.stop() } }
        let lease = 10
        let slack = gateways.count * 1 * lease  // instances × event loops × lease size
        for (master, tenant) in tenants {
            let started = Date()
            var admitted = 0
            for _ in 0..<3 {
                let counts = Self.statuses(try RateLimitTests().burst(ports: gateways.map(\.port), count: 90, tenant: tenant))
                #expect(Set(counts.keys).isSubset(of: [200, 429]), "\(counts)")
                admitted += counts[200] ?? 0
            }
            let elapsed = Date().timeIntervalSince(started)
            // What an exact bucket could admit over the window, plus the leases.
            let exact = 100 + Int((100 * elapsed).rounded(.up))
            #expect(admitted <= exact + slack, "tenant \(tenant) on \(master): \(admitted) admitted in \(elapsed)s")
            #expect(admitted >= 100 - slack, "tenant \(tenant) on \(master): only \(admitted) admitted")
        }
    }

    @Test func plansAndKeysMadeOnOneInstanceAreEnforcedOnTheOthers() throws {
        let cluster = try SharedFixtures.cluster.get()
        let up = try TestUpstream()
        defer { up.stop() }
        let tenants = try Self.tenantPerMaster(cluster, prefix: "ghp")
        let yaml = Self.config(upstream: up.port, cluster: cluster, prefix: "ghp", tenants: tenants.map(\.tenant))
        let gateways = try (0..<3).map { _ in try GatewayProcess(yaml: yaml, environment: Self.env) }
        defer { for g in gateways { g.stop() } }
        for (i, (_, tenant)) in tenants.enumerated() {
            let writer = gateways[i % 3]
            let others = gateways.indices.filter { $0 != i % 3 }.map { gateways[$0] }
            for g in gateways {
                #expect(try request(port: g.port, "GET", "/analytics/x", headers: [("X-Tenant-ID", tenant)]).status == 403)
            }
            let put = try request(port: writer.adminPort!, "PUT", "/admin/tenants/\(tenant)", headers: Self.admin, body: #"{"plan": "pro"}"#)
            #expect(put.status == 200)
            let changed = Date()
            for g in others {
                try waitUntil(seconds: 1) {
                    (try? request(port: g.port, "GET", "/analytics/x", headers: [("X-Tenant-ID", tenant)]).status) == 200
                }
            }
            #expect(Date().timeIntervalSince(changed) < 1.5)
            let made = try request(port: others[0].adminPort!, "POST", "/admin/tenants/\(tenant)/api-keys", headers: Self.admin)
            let key = try #require(made.json["key"] as? String)
            try waitUntil(seconds: 1) {
                (try? request(port: writer.port, "GET", "/api/x", headers: [("X-API-Key", key)]).status) == 200
            }
            let id = try #require(made.json["id"] as? String)
            #expect(try request(port: writer.adminPort!, "DELETE", "/admin/tenants/\(tenant)/api-keys/\(id)", headers: Self.admin).status == 204)
            for g in others {
                try waitUntil(seconds: 1) { (try? request(port: g.port, "GET", "/api/x", headers: [("X-API-Key", key)]).status) == 401 }
            }
        }
        // A new instance reads every tenant's record from every shard (SCAN on each master).
        let late = try GatewayProcess(yaml: yaml, environment: Self.env)
        defer { late.stop() }
        for (_, tenant) in tenants {
            try waitUntil(seconds: 2) {
                (try? request(port: late.port, "GET", "/analytics/x", headers: [("X-Tenant-ID", tenant)]).status) == 200
            }
        }
    }

    @Test func aSlotMigratedUnderTrafficMakesNoWrongDecisions() throws {
        let cluster = try SharedFixtures.cluster.get()
        let up = try TestUpstream()
        defer { up.stop() }
        let tenants = try Self.tenantPerMaster(cluster, prefix: "ghm")
        let (source, tenant) = tenants[0]
        let target = tenants[1].master
        let slot = RedisCluster.slot("{ghm:\(tenant)}")
        let yaml = Self.config(
            upstream: up.port, cluster: cluster, prefix: "ghm", tenants: [tenant], rate: "{requests: 1, per: 1h, burst: 40}")
        let gateways = try (0..<2).map { _ in try GatewayProcess(yaml: yaml, environment: Self.env) }
        defer { for g in gateways { g.stop() } }
        let counts = Mutex<[Int: Int]>([:])
        func send(_ n: Int) throws {
            let answers = try RateLimitTests().burst(ports: gateways.map(\.port), count: n, tenant: tenant)
            counts.withLock { c in for a in answers { c[a.status, default: 0] += 1 } }
        }
        // Every key the script touches exists before the slot starts moving.
        try send(4)
        try cluster.beginMigration(slot: slot, from: source, to: target)
        try send(8)  // served by the source, which still has the keys
        _ = try cluster.moveKeys(slot: slot, from: source, to: target)
        try send(8)  // the source answers ASK: the target serves them after ASKING
        try cluster.finishMigration(slot: slot, to: target)
        try send(8)  // the old owner answers MOVED: the map is updated
        try send(32)
        #expect(try cluster.master(ofSlot: slot) == target)
        let final = counts.withLock { $0 }
        #expect(final[200] == 40 && final[429] == 20, "\(final)")
    }

    /// A master killed: its tenants get `on_failure` (here closed: 503) within the timeout, the other shards'
    /// tenants are served as before; after its replica is promoted service resumes without a restart and the
    /// bucket continues where it was (no burst reset).
    @Test func aKilledMasterFailsOnlyItsTenantsThenServiceResumesAfterPromotion() throws {
        let cluster = try SharedFixtures.cluster.get()
        let up = try TestUpstream()
        defer { up.stop() }
        let grouped = try cluster.tenants(prefix: "ghk", perMaster: 2)
        let tenants = grouped.keys.sorted().map { (master: $0, tenant: grouped[$0]![0]) }
        let frozen = grouped[tenants[0].master]![1]  // on the same master as the doomed one
        let yaml = Self.config(
            upstream: up.port, cluster: cluster, prefix: "ghk", tenants: tenants.map(\.tenant) + [frozen])
        let gateways = try (0..<2).map { _ in try GatewayProcess(yaml: yaml, environment: Self.env) }
        defer { for g in gateways { g.stop() } }
        for (i, (_, tenant)) in tenants.enumerated() {
            let n = i == 0 ? 7 : 2
            #expect(Self.statuses(try RateLimitTests().burst(ports: gateways.map(\.port), count: n, tenant: tenant))[200] == n)
        }
        let (victim, doomed) = tenants[0]
        let slot = RedisCluster.slot("{ghk:\(doomed)}")
        // A frozen master (shorter than the cluster's node timeout, so no failover): its tenant's calls time out
        // after store.timeout (100 ms), then its circuit opens; the other shards do not notice.
        cluster.pause(victim)
        for _ in 0..<3 {
            let started = Date()
            let r = try request(port: gateways[0].port, "GET", "/api/x", headers: [("X-Tenant-ID", frozen)])
            #expect(r.status == 503 && r.json["code"] as? String == "store_unavailable", "\(r.status) \(r.text)")
            #expect(Date().timeIntervalSince(started) < 0.6, "bounded by store.timeout")
            for (_, tenant) in tenants.dropFirst() {
                let other = try request(port: gateways[0].port, "GET", "/api/x", headers: [("X-Tenant-ID", tenant)])
                #expect(other.status == 200, "a healthy shard beside a frozen one: \(other.status)")
            }
        }
        cluster.resume(victim)
        _ = try cluster.cli(victim, "WAIT", "1", "2000")  // the replica has the bucket
        cluster.kill(victim)
        var restarted = false
        defer { if !restarted { try? cluster.restart(victim) } }
        for _ in 0..<5 {
            let started = Date()
            let r = try request(port: gateways[0].port, "GET", "/api/x", headers: [("X-Tenant-ID", doomed)])
            #expect(r.status == 503 && r.json["code"] as? String == "store_unavailable", "\(r.status) \(r.text)")
            #expect(Date().timeIntervalSince(started) < 1.0, "a dead shard must cost at most store.timeout, not a connect")
        }
        for (_, tenant) in tenants.dropFirst() {
            let r = try request(port: gateways[1].port, "GET", "/api/x", headers: [("X-Tenant-ID", tenant)])
            #expect(r.status == 200, "a tenant on a healthy shard: \(r.status) \(r.text)")
        }
        let promoted = try cluster.waitForNewMaster(ofSlot: slot, other: victim, seconds: 20)
        #expect(promoted != victim)
        // Service resumes without a restart; 3 of the 10 units are left.
        var admitted = 0
        var denied = 0
        try waitUntil(seconds: 10) {
            guard let r = try? request(port: gateways[0].port, "GET", "/api/x", headers: [("X-Tenant-ID", doomed)]) else { return false }
            if r.status == 200 { admitted += 1 }
            if r.status == 429 { denied += 1 }
            return r.status != 503
        }
        let rest = Self.statuses(try RateLimitTests().burst(ports: gateways.map(\.port), count: 6, tenant: doomed))
        admitted += rest[200] ?? 0
        #expect(admitted == 3, "the bucket must continue after the failover: \(admitted) admitted, then \(rest)")
        // The restarted node rejoins as a replica (the cluster keeps 3 masters for the other tests).
        try cluster.restart(victim)
        restarted = true
    }
}
