import Foundation
import Testing

/// Live: two gateway instances share tenant records through a real Redis.
@Suite(.serialized) struct SharedStoreTests {
    static func config(upstream: Int, redis: Int, onFailure: String = "open") -> String {
        """
        server: {listen: 127.0.0.1:0, admin_listen: 127.0.0.1:0, admin_token_env: GH_TEST_ADMIN_TOKEN, threads: 1}
        store: {redis: "redis://127.0.0.1:\(redis)/0", timeout: 100ms, on_failure: \(onFailure), key_prefix: ghtest, tenant_cache_ttl: 30s}
        identity: {header_tenancy: always}
        plans: {free: {features: [core]}, pro: {features: [core, analytics]}}
        plan_order: [free, pro]
        tenants:
          acme: {plan: free}
        upstreams:
          app: {targets: [127.0.0.1:\(upstream)]}
        routes:
          - {name: analytics, match: {path_prefix: /analytics}, upstream: app, auth: none, min_plan: pro}
          - {name: api, match: {path_prefix: /api}, upstream: app, auth: required}
        """
    }

    @Test func aChangeThroughOneInstanceIsEnforcedByAnother() throws {
        let redis = try RedisServer()
        defer { redis.stop() }
        let up = try TestUpstream()
        defer { up.stop() }
        let env = ["GH_TEST_ADMIN_TOKEN": "adm"]
        let a = try GatewayProcess(yaml: Self.config(upstream: up.port, redis: redis.port), environment: env)
        defer { a.stop() }
        let b = try GatewayProcess(yaml: Self.config(upstream: up.port, redis: redis.port), environment: env)
        defer { b.stop() }
        func analytics(_ gw: GatewayProcess) throws -> Int {
            try request(port: gw.port, "GET", "/analytics/x", headers: [("X-Tenant-ID", "acme")]).status
        }
        #expect(try analytics(a) == 403)
        #expect(try analytics(b) == 403)
        let auth = [("Authorization", "Bearer adm")]
        let put = try request(port: a.adminPort!, "PUT", "/admin/tenants/acme", headers: auth, body: #"{"plan": "pro"}"#)
        #expect(put.status == 200)
        #expect(put.json["source"] as? String == "store")
        // Instance b learns of it through pub/sub (bounded wait for the event, well under a second in practice).
        try waitUntil(seconds: 5) { (try? analytics(b)) == 200 }
        #expect(try request(port: b.adminPort!, "GET", "/admin/tenants/acme", headers: auth).json["source"] as? String == "store")
        // An API key created on b works on a.
        let made = try request(port: b.adminPort!, "POST", "/admin/tenants/acme/api-keys", headers: auth)
        let key = try #require(made.json["key"] as? String)
        try waitUntil(seconds: 5) { (try? request(port: a.port, "GET", "/api/x", headers: [("X-API-Key", key)]).status) == 200 }
        // A new instance loads the stored records at start.
        let c = try GatewayProcess(yaml: Self.config(upstream: up.port, redis: redis.port), environment: env)
        defer { c.stop() }
        #expect(try analytics(c) == 200)
        // Deleting the store's record brings the seed (free) back everywhere.
        #expect(try request(port: a.adminPort!, "DELETE", "/admin/tenants/acme", headers: auth).status == 204)
        try waitUntil(seconds: 5) { (try? analytics(b)) == 403 && (try? analytics(c)) == 403 }
    }

    @Test func cachedRecordsKeepServingWhileRedisIsDown() throws {
        let redis = try RedisServer()
        defer { redis.stop() }
        let up = try TestUpstream()
        defer { up.stop() }
        let env = ["GH_TEST_ADMIN_TOKEN": "adm"]
        let a = try GatewayProcess(yaml: Self.config(upstream: up.port, redis: redis.port, onFailure: "closed"), environment: env)
        defer { a.stop() }
        let auth = [("Authorization", "Bearer adm")]
        #expect(try request(port: a.adminPort!, "PUT", "/admin/tenants/acme", headers: auth, body: #"{"plan": "pro"}"#).status == 200)
        #expect(try request(port: a.adminPort!, "GET", "/readyz").status == 200)
        redis.pause()
        #expect(try request(port: a.port, "GET", "/analytics/x", headers: [("X-Tenant-ID", "acme")]).status == 200)
        let write = try request(port: a.adminPort!, "PUT", "/admin/tenants/acme", headers: auth, body: #"{"plan": "free"}"#)
        #expect(write.status == 503)
        #expect(write.json["code"] as? String == "store_unavailable")
        redis.resume()
        try waitUntil(seconds: 10) { (try? request(port: a.adminPort!, "GET", "/readyz").status) == 200 }
    }
}
