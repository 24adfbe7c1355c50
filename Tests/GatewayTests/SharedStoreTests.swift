import Foundation
import Synchronization
import Policy
import Testing

/// Live: two gateway instances share tenant records through a real Redis.
@Suite(.serialized) struct SharedStoreTests {
    static func config(upstream: Int, redis: Int, onFailure: String = "open") -> String {
        """
        server: {listen: 127.0.0.1:0, admin_listen: 127.0.0.1:0, admin_token_env: GH_TEST_ADMIN_TOKEN, threads: 1}
        store: {redis: "redis://127.0.0.1:\(redis)/0", timeout: 250ms, on_failure: \(onFailure), key_prefix: ghtest, tenant_cache_ttl: 30s}
        identity: {header_tenancy: always}
        billing: {webhook_secret_env: GH_TEST_WEBHOOK_SECRET, prices: {price_pro: pro}}
        plans: {free: {features: [core]}, pro: {features: [core, analytics]}}
        plan_order: [free, pro]
        tenants:
          acme: {plan: free}
          globex: {plan: free}
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
        let env = ["GH_TEST_ADMIN_TOKEN": "adm", "GH_TEST_WEBHOOK_SECRET": "whsec_shared"]
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
        // Instance b enforces it within a second (it learns of it through pub/sub).
        try waitUntil(seconds: 1) { (try? analytics(b)) == 200 }
        // A suspension likewise.
        #expect(try request(port: a.adminPort!, "PUT", "/admin/tenants/acme", headers: auth, body: #"{"plan": "pro", "status": "suspended"}"#).status == 200)
        try waitUntil(seconds: 1) {
            (try? request(port: b.port, "GET", "/analytics/x", headers: [("X-Tenant-ID", "acme")]).json["code"] as? String) == "tenant_suspended"
        }
        // Once suspended, nothing more reaches the upstream.
        let forwarded = up.requests.filter { $0.uri == "/analytics/x" }.count
        #expect(try analytics(b) == 403)
        #expect(up.requests.filter { $0.uri == "/analytics/x" }.count == forwarded)
        #expect(try request(port: a.adminPort!, "PUT", "/admin/tenants/acme", headers: auth, body: #"{"plan": "pro"}"#).status == 200)
        try waitUntil(seconds: 1) { (try? analytics(b)) == 200 }
        #expect(try request(port: b.adminPort!, "GET", "/admin/tenants/acme", headers: auth).json["source"] as? String == "store")
        // An API key created on b works on a.
        let made = try request(port: b.adminPort!, "POST", "/admin/tenants/acme/api-keys", headers: auth)
        let key = try #require(made.json["key"] as? String)
        try waitUntil(seconds: 1) { (try? request(port: a.port, "GET", "/api/x", headers: [("X-API-Key", key)]).status) == 200 }
        let mismatch = try request(port: a.port, "GET", "/api/x", headers: [("X-API-Key", key), ("X-Tenant-ID", "globex")])
        #expect(mismatch.json["code"] as? String == "tenant_mismatch")
        // Redis holds the key's hash, never the key.
        let raw = try RawConnection(port: redis.port)
        try raw.send("GET {ghtest:acme}:tenant\r\n")
        var dump = ""
        while !dump.contains("api_keys") { dump += String(decoding: try raw.readChunk(), as: UTF8.self) }
        #expect(!dump.contains(key))
        #expect(dump.contains(Digest.hex(Digest.sha256(key.utf8))))
        // Revoked on a, refused on b.
        let keyID = try #require(made.json["id"] as? String)
        #expect(try request(port: a.adminPort!, "DELETE", "/admin/tenants/acme/api-keys/\(keyID)", headers: auth).status == 204)
        try waitUntil(seconds: 1) { (try? request(port: b.port, "GET", "/api/x", headers: [("X-API-Key", key)]).status) == 401 }
        // A webhook delivered to a applies everywhere; its replay to b is recognised through Redis.
        let event = #"{"id":"evt_shared","type":"customer.subscription.updated","data":{"object":{"status":"past_due","metadata":{"tenant_id":"acme"}}}}"#
        let t = Int(Date().timeIntervalSince1970)
        let mac = Digest.hex(Digest.hmacSHA256(key: Array("whsec_shared".utf8), message: Array("\(t).\(event)".utf8)))
        let signed = [("Stripe-Signature", "t=\(t),v1=\(mac)")]
        #expect(try request(port: a.adminPort!, "POST", "/webhooks/billing", headers: signed, body: event).status == 200)
        try waitUntil(seconds: 1) {
            (try? request(port: b.port, "GET", "/analytics/x", headers: [("X-Tenant-ID", "acme")]).header("Gatehouse-Billing")) == "past_due"
        }
        #expect(try request(port: b.adminPort!, "POST", "/webhooks/billing", headers: signed, body: event).json["duplicate"] as? Bool == true)
        // A new instance loads the stored records at start.
        let c = try GatewayProcess(yaml: Self.config(upstream: up.port, redis: redis.port), environment: env)
        defer { c.stop() }
        #expect(try analytics(c) == 200)
        // Deleting the tenant leaves it unknown everywhere, though each instance's YAML seeds it.
        #expect(try request(port: a.adminPort!, "DELETE", "/admin/tenants/acme", headers: auth).status == 204)
        func code(_ gw: GatewayProcess) -> String? {
            try? request(port: gw.port, "GET", "/analytics/x", headers: [("X-Tenant-ID", "acme")]).json["code"] as? String
        }
        try waitUntil(seconds: 5) { code(b) == "unknown_tenant" && code(c) == "unknown_tenant" }
    }

    @Test func deletionsAndRevocationsHoldOnEveryInstanceAndAcrossRestarts() throws {
        let redis = try RedisServer()
        defer { redis.stop() }
        let up = try TestUpstream()
        defer { up.stop() }
        let seedKey = "gh_shared_seed_key"
        let yaml = Self.config(upstream: up.port, redis: redis.port).replacingOccurrences(
            of: "globex: {plan: free}",
            with: "globex: {plan: free, api_keys: [{id: ci-bot, sha256: \(Digest.hex(Digest.sha256(seedKey.utf8)))}]}")
        let env = ["GH_TEST_ADMIN_TOKEN": "adm"]
        let a = try GatewayProcess(yaml: yaml, environment: env)
        defer { a.stop() }
        let b = try GatewayProcess(yaml: yaml, environment: env)
        defer { b.stop() }
        let auth = [("Authorization", "Bearer adm")]
        func withKey(_ gw: GatewayProcess) -> Int? {
            try? request(port: gw.port, "GET", "/api/x", headers: [("X-API-Key", seedKey)]).status
        }
        func tenantCode(_ gw: GatewayProcess) -> String? {
            try? request(port: gw.port, "GET", "/analytics/x", headers: [("X-Tenant-ID", "globex")]).json["code"] as? String
        }
        #expect(withKey(a) == 200 && withKey(b) == 200)
        #expect(try request(port: a.adminPort!, "DELETE", "/admin/tenants/globex/api-keys/ci-bot", headers: auth).status == 204)
        try waitUntil(seconds: 2) { withKey(b) == 401 }
        #expect(try request(port: b.adminPort!, "DELETE", "/admin/tenants/globex", headers: auth).status == 204)
        try waitUntil(seconds: 2) { tenantCode(a) == "unknown_tenant" }
        #expect(try request(port: a.adminPort!, "GET", "/admin/tenants/globex", headers: auth).status == 404)
        // A new instance loads the tombstone at start.
        let c = try GatewayProcess(yaml: yaml, environment: env)
        defer { c.stop() }
        #expect(tenantCode(c) == "unknown_tenant")
        // Brought back by a PUT, the tenant is known everywhere again, without the revoked key.
        #expect(try request(port: c.adminPort!, "PUT", "/admin/tenants/globex", headers: auth, body: #"{"plan": "free"}"#).status == 201)
        try waitUntil(seconds: 2) { tenantCode(a) == "plan_required" && tenantCode(b) == "plan_required" }
        let forwarded = up.requests.count
        #expect(withKey(a) == 401 && withKey(b) == 401 && withKey(c) == 401)
        #expect(up.requests.count == forwarded)
    }

    /// A billing change is applied by Redis to the stored record, not to this instance's cached copy: a record
    /// written by another instance whose invalidation has not arrived yet keeps its own changes. A tenant deleted
    /// through the admin API is not brought back by a later event.
    @Test func billingChangesApplyToTheStoredRecordAndNeverThroughADeletion() throws {
        let redis = try RedisServer()
        defer { redis.stop() }
        let up = try TestUpstream()
        defer { up.stop() }
        let env = ["GH_TEST_ADMIN_TOKEN": "adm", "GH_TEST_WEBHOOK_SECRET": "whsec_shared"]
        let a = try GatewayProcess(yaml: Self.config(upstream: up.port, redis: redis.port), environment: env)
        defer { a.stop() }
        let auth = [("Authorization", "Bearer adm")]
        func send(_ event: String) throws -> RawResponse {
            try request(port: a.adminPort!, "POST", "/webhooks/billing", headers: [BillingWebhookLiveTests.signature(event, secret: "whsec_shared")], body: event)
        }
        // Another instance wrote acme on plan pro and its PUBLISH is still on its way: only Redis knows.
        let raw = try RawConnection(port: redis.port)
        let stored = #"{"plan":"pro","status":"active","billing_anchor":1,"api_keys":[]}"#
        let command = ["SET", "{ghtest:acme}:tenant", stored]
        try raw.send("*\(command.count)\r\n" + command.map { "$\($0.utf8.count)\r\n\($0)\r\n" }.joined())
        #expect(String(decoding: try raw.readChunk(), as: UTF8.self).hasPrefix("+OK"))
        let failed = #"{"id":"evt_r1","created":1900000000,"type":"invoice.payment_failed","data":{"object":{"metadata":{"tenant_id":"acme"}}}}"#
        #expect(try send(failed).status == 200)
        let record = try request(port: a.adminPort!, "GET", "/admin/tenants/acme", headers: auth)
        #expect(record.json["plan"] as? String == "pro", "the change was applied to a stale cached record: \(record.text)")
        #expect(record.json["status"] as? String == "past_due")
        // Older than the last applied: ignored.
        let older = #"{"id":"evt_r2","created":1899999999,"type":"invoice.paid","data":{"object":{"metadata":{"tenant_id":"acme"}}}}"#
        #expect(try send(older).json["ignored"] is String)
        #expect(try request(port: a.adminPort!, "GET", "/admin/tenants/acme", headers: auth).json["status"] as? String == "past_due")
        // Deleted, then a subscription event with a known price: still deleted.
        #expect(try request(port: a.adminPort!, "DELETE", "/admin/tenants/acme", headers: auth).status == 204)
        let revived = BillingWebhookLiveTests.subscription("evt_r3", created: 1_900_000_100, status: "active")
            .replacingOccurrences(of: "price_pro_monthly", with: "price_pro")
        #expect(try send(revived).json["ignored"] is String)
        #expect(try request(port: a.adminPort!, "GET", "/admin/tenants/acme", headers: auth).status == 404)
    }

    @Test func concurrentKeyChangesOnTwoInstancesAreNotLost() throws {
        let redis = try RedisServer()
        defer { redis.stop() }
        let up = try TestUpstream()
        defer { up.stop() }
        let env = ["GH_TEST_ADMIN_TOKEN": "adm"]
        let a = try GatewayProcess(yaml: Self.config(upstream: up.port, redis: redis.port), environment: env)
        defer { a.stop() }
        let b = try GatewayProcess(yaml: Self.config(upstream: up.port, redis: redis.port), environment: env)
        defer { b.stop() }
        let auth = [("Authorization", "Bearer adm")]
        // acme is only a seed so far: the first edits start from the seed.
        let keys = Mutex<[String: String]>([:])
        let done = DispatchGroup()
        for t in 0..<8 {
            done.enter()
            Thread {
                for i in 0..<5 {
                    let port = (t + i) % 2 == 0 ? a.adminPort! : b.adminPort!
                    let id = "k\(t)-\(i)"
                    if let r = try? request(port: port, "POST", "/admin/tenants/acme/api-keys", headers: auth, body: #"{"id": "\#(id)"}"#),
                        r.status == 201, let key = r.json["key"] as? String
                    {
                        keys.withLock { $0[id] = key }
                    }
                }
                done.leave()
            }.start()
        }
        done.wait()
        let made = keys.withLock { $0 }
        #expect(made.count == 40)
        // Every key is in the stored record and works on both instances.
        let record = try request(port: a.adminPort!, "GET", "/admin/tenants/acme", headers: auth)
        #expect((record.json["api_keys"] as? [[String: Any]])?.count == 40)
        try waitUntil(seconds: 2) {
            made.values.allSatisfy { key in
                (try? request(port: b.port, "GET", "/api/x", headers: [("X-API-Key", key)]).status) == 200
            }
        }
        // Revocations racing on both instances: each key is removed exactly once.
        let ids = Array(made.keys)
        let revoked = Mutex(0)
        let group = DispatchGroup()
        for (n, id) in ids.enumerated() {
            group.enter()
            Thread {
                let port = n % 2 == 0 ? a.adminPort! : b.adminPort!
                if (try? request(port: port, "DELETE", "/admin/tenants/acme/api-keys/\(id)", headers: auth).status) == 204 {
                    revoked.withLock { $0 += 1 }
                }
                group.leave()
            }.start()
        }
        group.wait()
        #expect(revoked.withLock { $0 } == 40)
        let after = try request(port: b.adminPort!, "GET", "/admin/tenants/acme", headers: auth)
        #expect((after.json["api_keys"] as? [[String: Any]])?.isEmpty == true)
    }

    @Test func cachedRecordsKeepServingWhileRedisIsDown() throws {
        let redis = try RedisServer()
        defer { redis.stop() }
        let up = try TestUpstream()
        defer { up.stop() }
        let env = ["GH_TEST_ADMIN_TOKEN": "adm"]
        // on_failure: open, so the request path keeps serving (rate limits fall back to local buckets).
        let a = try GatewayProcess(yaml: Self.config(upstream: up.port, redis: redis.port, onFailure: "open"), environment: env)
        defer { a.stop() }
        let auth = [("Authorization", "Bearer adm")]
        #expect(try request(port: a.adminPort!, "PUT", "/admin/tenants/acme", headers: auth, body: #"{"plan": "pro"}"#).status == 200)
        redis.pause()
        #expect(try request(port: a.port, "GET", "/analytics/x", headers: [("X-Tenant-ID", "acme")]).status == 200)
        let write = try request(port: a.adminPort!, "PUT", "/admin/tenants/acme", headers: auth, body: #"{"plan": "free"}"#)
        #expect(write.status == 503)
        #expect(write.json["code"] as? String == "store_unavailable")
        redis.resume()
        try waitUntil(seconds: 10) {
            (try? request(port: a.adminPort!, "PUT", "/admin/tenants/acme", headers: auth, body: #"{"plan": "free"}"#).status) == 200
        }
        #expect(try request(port: a.port, "GET", "/analytics/x", headers: [("X-Tenant-ID", "acme")]).status == 403)
    }

    /// A store written by a version with one hash of every tenant (`<prefix>:tenants`) is moved to per-tenant
    /// keys at start-up: every record is served, a per-tenant record already written wins, the hash is gone.
    @Test func theOldOneHashLayoutIsMigratedToPerTenantKeys() throws {
        let redis = try RedisServer()
        defer { redis.stop() }
        let up = try TestUpstream()
        defer { up.stop() }
        let raw = try RawConnection(port: redis.port)
        func command(_ args: String...) throws -> String {
            try raw.send("*\(args.count)\r\n" + args.map { "$\($0.utf8.count)\r\n\($0)\r\n" }.joined())
            return String(decoding: try raw.readChunk(), as: UTF8.self)
        }
        let key = "gh_live_migrated_key_0123456789"
        let keyHash = Digest.hex(Digest.sha256(key.utf8))
        let acme = #"{"plan":"pro","status":"active","billing_anchor":1,"api_keys":[{"id":"k1","sha256":"\#(keyHash)"}]}"#
        let oldGlobex = #"{"plan":"pro","status":"active","billing_anchor":1,"api_keys":[]}"#
        let newGlobex = #"{"plan":"free","status":"suspended","billing_anchor":1,"api_keys":[]}"#
        #expect(try command("HSET", "ghtest:tenants", "acme", acme, "globex", oldGlobex).hasPrefix(":2"))
        #expect(try command("SET", "{ghtest:globex}:tenant", newGlobex).hasPrefix("+OK"))
        let a = try GatewayProcess(yaml: Self.config(upstream: up.port, redis: redis.port), environment: ["GH_TEST_ADMIN_TOKEN": "adm"])
        defer { a.stop() }
        try waitUntil(seconds: 5) { (try? command("EXISTS", "ghtest:tenants")) == ":0\r\n" }
        #expect(try command("EXISTS", "{ghtest:acme}:tenant") == ":1\r\n")
        try waitUntil(seconds: 5) {
            (try? request(port: a.port, "GET", "/analytics/x", headers: [("X-Tenant-ID", "acme")]).status) == 200
        }
        #expect(try request(port: a.port, "GET", "/api/x", headers: [("X-API-Key", key)]).status == 200)
        let globex = try request(port: a.port, "GET", "/analytics/x", headers: [("X-Tenant-ID", "globex")])
        #expect(globex.json["code"] as? String == "tenant_suspended", "the newer per-tenant record must win: \(globex.text)")
    }
}
