import Foundation
import Policy
import Testing

/// Live: per-tenant feature flags (`overrides.features`), seeded in YAML and set through the admin API on one
/// instance, enforced by another within a second (a shared Redis).
@Suite(.serialized) struct FeatureFlagTests {
    static func config(upstream: Int, redis: Int) -> String {
        """
        server: {listen: 127.0.0.1:0, admin_listen: 127.0.0.1:0, admin_token_env: GH_TEST_ADMIN_TOKEN, threads: 1}
        store: {redis: "redis://127.0.0.1:\(redis)/0", timeout: 250ms, key_prefix: ghflags, tenant_cache_ttl: 30s}
        identity: {header_tenancy: always}
        plans: {free: {features: [core]}, pro: {features: [core, analytics]}}
        plan_order: [free, pro]
        tenants:
          acme: {plan: free}
          initech: {plan: free, overrides: {features: [beta-search]}}
        upstreams:
          app: {targets: [127.0.0.1:\(upstream)]}
        routes:
          - {name: analytics, match: {path_prefix: /analytics}, upstream: app, auth: none, feature: analytics, rate_limits: []}
          - {name: search, match: {path_prefix: /search}, upstream: app, auth: none, feature: beta-search, rate_limits: []}
        """
    }

    @Test func aFeatureGivenToOneTenantIsEnforcedFleetWide() throws {
        let redis = try RedisServer()
        defer { redis.stop() }
        let up = try TestUpstream()
        defer { up.stop() }
        let env = ["GH_TEST_ADMIN_TOKEN": "adm"]
        let a = try GatewayProcess(yaml: Self.config(upstream: up.port, redis: redis.port), environment: env)
        defer { a.stop() }
        let b = try GatewayProcess(yaml: Self.config(upstream: up.port, redis: redis.port), environment: env)
        defer { b.stop() }
        func get(_ gw: GatewayProcess, _ path: String, _ tenant: String) throws -> RawResponse {
            try request(port: gw.port, "GET", path, headers: [("X-Tenant-ID", tenant)])
        }
        // The YAML seed's feature; the plan alone does not have it.
        #expect(try get(b, "/search/q", "initech").status == 200)
        let refused = try get(b, "/search/q", "acme")
        #expect(refused.status == 403 && refused.json["code"] as? String == "plan_required")
        let before = up.requests.count
        #expect(try get(b, "/analytics/x", "acme").status == 403)
        #expect(up.requests.count == before)

        // Through the admin API on a: acme gets analytics while staying on free.
        let auth = [("Authorization", "Bearer adm")]
        let put = try request(
            port: a.adminPort!, "PUT", "/admin/tenants/acme", headers: auth,
            body: #"{"plan": "free", "overrides": {"features": ["analytics"]}}"#)
        #expect(put.status == 200 || put.status == 201)
        #expect((put.json["overrides"] as? [String: Any])?["features"] as? [String] == ["analytics"])
        try waitUntil(seconds: 1) { (try? get(b, "/analytics/x", "acme").status) == 200 }
        #expect(try get(b, "/search/q", "acme").status == 403)  // only what was given
        #expect(try request(port: b.adminPort!, "GET", "/admin/tenants/acme", headers: auth).json["plan"] as? String == "free")
        // Taken away again.
        #expect(try request(port: a.adminPort!, "PUT", "/admin/tenants/acme", headers: auth, body: #"{"plan": "free"}"#).status == 200)
        try waitUntil(seconds: 1) { (try? get(b, "/analytics/x", "acme").status) == 403 }
        // A bad list is a 400 naming the field.
        let bad = try request(
            port: a.adminPort!, "PUT", "/admin/tenants/acme", headers: auth,
            body: #"{"plan": "free", "overrides": {"features": ["no spaces"]}}"#)
        #expect(bad.status == 400 && (bad.json["detail"] as? String)?.contains("overrides.features") == true)
    }
}
