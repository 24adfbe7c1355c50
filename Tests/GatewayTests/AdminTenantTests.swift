import Foundation
import Policy
import Testing

/// Live: the admin API's tenant and API key endpoints, on the embedded store; changes apply to the next request.
@Suite(.serialized) struct AdminTenantTests {
    static func config(upstream: Int, tenants: String = "acme: {plan: pro}", extra: String = "") -> String {
        """
        server: {listen: 127.0.0.1:0, admin_listen: 127.0.0.1:0, admin_token_env: GH_TEST_ADMIN_TOKEN, threads: 1}
        identity: {header_tenancy: always}
        plans: {free: {features: [core]}, pro: {features: [core, analytics]}}
        \(extra)
        tenants:
          \(tenants)
        upstreams:
          app: {targets: [127.0.0.1:\(upstream)]}
        routes:
          - {name: api, match: {path_prefix: /api}, upstream: app, auth: required}
          - {name: pub, match: {path_prefix: /pub}, upstream: app, auth: none}
        """
    }

    @Test(arguments: [false, true]) func aTenantHoldsAtMostMaxAPIKeys(onRedis: Bool) throws {
        let up = try TestUpstream()
        defer { up.stop() }
        // The embedded store, or Redis (whose edit script checks the bound with the write).
        let redis = onRedis ? try RedisServer() : nil
        defer { redis?.stop() }
        let store = redis.map { "store: {redis: \"redis://127.0.0.1:\($0.port)/0\", timeout: 500ms, key_prefix: ghcap}" } ?? ""
        // A seed already at the bound (distinct hashes), and one a place short.
        func keys(_ prefix: String, _ n: Int) -> String {
            (0..<n).map { i in
                "{id: \(prefix)\(i), sha256: \(Digest.hex(Digest.sha256("\(prefix)-\(i)".utf8)))}"
            }.joined(separator: ", ")
        }
        let full = TenantRecord.maxAPIKeys
        let tenants = "full: {plan: pro, api_keys: [\(keys("f", full))]}\n  roomy: {plan: pro, api_keys: [\(keys("r", full - 1))]}"
        let gw = try GatewayProcess(
            yaml: Self.config(upstream: up.port, tenants: tenants, extra: store), environment: ["GH_TEST_ADMIN_TOKEN": "adm"])
        defer { gw.stop() }
        let admin = try #require(gw.adminPort)
        let auth = [("Authorization", "Bearer adm")]
        let refused = try request(port: admin, "POST", "/admin/tenants/full/api-keys", headers: auth)
        #expect(refused.status == 409)
        #expect(refused.json["code"] as? String == "bad_request")
        #expect(try request(port: admin, "POST", "/admin/tenants/roomy/api-keys", headers: auth).status == 201)
        #expect(try request(port: admin, "POST", "/admin/tenants/roomy/api-keys", headers: auth).status == 409)
        // Revoking one makes room again.
        #expect(try request(port: admin, "DELETE", "/admin/tenants/full/api-keys/f7", headers: auth).status == 204)
        #expect(try request(port: admin, "POST", "/admin/tenants/full/api-keys", headers: auth).status == 201)
    }

    @Test func tenantsAndKeysThroughTheAdminAPI() throws {
        let up = try TestUpstream()
        defer { up.stop() }
        let gw = try GatewayProcess(yaml: Self.config(upstream: up.port), environment: ["GH_TEST_ADMIN_TOKEN": "adm"])
        defer { gw.stop() }
        let admin = try #require(gw.adminPort)
        let auth = [("Authorization", "Bearer adm")]
        func call(_ method: String, _ path: String, _ body: String? = nil) throws -> RawResponse {
            try request(port: admin, method, path, headers: auth, body: body)
        }
        #expect(try request(port: admin, "GET", "/admin/tenants/acme").status == 401)
        let seed = try call("GET", "/admin/tenants/acme")
        #expect(seed.status == 200)
        #expect(seed.json["source"] as? String == "seed")
        #expect(seed.json["plan"] as? String == "pro")
        #expect(try call("GET", "/admin/tenants/nobody").status == 404)

        // A new tenant takes effect at once.
        #expect(try request(port: gw.port, "GET", "/pub/x", headers: [("X-Tenant-ID", "newco")]).status == 403)
        let created = try call("PUT", "/admin/tenants/newco", #"{"plan": "free", "status": "active"}"#)
        #expect(created.status == 201)
        #expect(try request(port: gw.port, "GET", "/pub/x", headers: [("X-Tenant-ID", "newco")]).status == 200)
        #expect(up.requests.last?.headers("x-plan") == ["free"])

        // Suspending, then deleting: the tenant is unknown, though YAML seeds it, until a PUT.
        #expect(try call("PUT", "/admin/tenants/acme", #"{"plan": "pro", "status": "suspended"}"#).status == 200)
        let suspended = try request(port: gw.port, "GET", "/pub/x", headers: [("X-Tenant-ID", "acme")])
        #expect(suspended.json["code"] as? String == "tenant_suspended")
        #expect(try call("DELETE", "/admin/tenants/acme").status == 204)
        #expect(try call("GET", "/admin/tenants/acme").status == 404)
        #expect(try request(port: gw.port, "GET", "/pub/x", headers: [("X-Tenant-ID", "acme")]).json["code"] as? String == "unknown_tenant")
        #expect(try call("DELETE", "/admin/tenants/acme").status == 404)
        #expect(try call("PUT", "/admin/tenants/acme", #"{"plan": "pro"}"#).status == 201)
        #expect(try call("GET", "/admin/tenants/acme").json["source"] as? String == "store")

        // API keys: the plaintext is returned once and works; revoked, it does not.
        let made = try call("POST", "/admin/tenants/acme/api-keys", #"{"id": "deploy"}"#)
        #expect(made.status == 201)
        let key = try #require(made.json["key"] as? String)
        #expect(made.json["id"] as? String == "deploy")
        #expect(!(try call("GET", "/admin/tenants/acme").text.contains(key)))
        #expect(try request(port: gw.port, "GET", "/api/x", headers: [("X-API-Key", key)]).status == 200)
        #expect(up.requests.last?.headers("x-tenant-id") == ["acme"])
        #expect(try call("POST", "/admin/tenants/acme/api-keys", #"{"id": "deploy"}"#).status == 409)
        #expect(try call("DELETE", "/admin/tenants/acme/api-keys/deploy").status == 204)
        #expect(try request(port: gw.port, "GET", "/api/x", headers: [("X-API-Key", key)]).status == 401)
        #expect(try call("POST", "/admin/tenants/ghost/api-keys").status == 404)

        // Bad bodies are 400 problems naming the field.
        for (body, field) in [
            (#"{"plan": "gold"}"#, "plan"), (#"{"status": "active"}"#, "plan"),
            (#"{"plan": "pro", "status": "sleeping"}"#, "status"), (#"{"plan": "pro", "colour": "red"}"#, "colour"),
            (#"{"plan": "pro", "status": "trialing"}"#, "trial_ends"), ("not json", "JSON"),
        ] {
            let r = try call("PUT", "/admin/tenants/acme", body)
            #expect(r.status == 400, "\(body)")
            #expect(r.json["code"] as? String == "bad_request")
            #expect((r.json["detail"] as? String)?.contains(field) == true, "\(body): \(r.text)")
        }
        #expect(try call("PUT", "/admin/tenants/bad%20id", #"{"plan": "pro"}"#).status == 400)
    }
}

/// Live: what a DELETE and a revocation leave behind, on the embedded store (the Redis store has the same test in
/// ``SharedStoreTests``), and the admin API's billing-state rules.
@Suite(.serialized) struct TenantLifecycleTests {
    static let seedKey = "gh_seed_key_for_tests"

    static func config(upstream: Int) -> String {
        AdminTenantTests.config(
            upstream: upstream,
            tenants: "globex: {plan: free, api_keys: [{id: ci-bot, sha256: \(Digest.hex(Digest.sha256(seedKey.utf8)))}]}",
            extra: "billing: {grace_period: 0s}")
    }

    /// A gateway with this suite's config, its upstream, and a caller of its admin API.
    struct Fixture {
        let up: TestUpstream
        let gw: GatewayProcess

        init() throws {
            up = try TestUpstream()
            gw = try GatewayProcess(yaml: TenantLifecycleTests.config(upstream: up.port), environment: ["GH_TEST_ADMIN_TOKEN": "adm"])
        }

        func call(_ method: String, _ path: String, _ body: String? = nil) throws -> RawResponse {
            try request(port: gw.adminPort!, method, path, headers: [("Authorization", "Bearer adm")], body: body)
        }

        func stop() {
            gw.stop()
            up.stop()
        }
    }

    @Test func aDeletedSeedStaysUnknownAndRevokedKeysNeverReturn() throws {
        let f = try Fixture()
        defer { f.stop() }
        let (up, gw) = (f.up, f.gw)
        func call(_ method: String, _ path: String, _ body: String? = nil) throws -> RawResponse { try f.call(method, path, body) }
        func withKey() throws -> RawResponse {
            try request(port: gw.port, "GET", "/api/x", headers: [("X-API-Key", Self.seedKey)])
        }
        #expect(try withKey().status == 200)
        #expect(try call("DELETE", "/admin/tenants/globex/api-keys/ci-bot").status == 204)
        #expect(try withKey().status == 401)

        // The seed is hidden by the DELETE, also across a reload that brings the seed again.
        #expect(try call("DELETE", "/admin/tenants/globex").status == 204)
        #expect(try call("GET", "/admin/tenants/globex").status == 404)
        #expect(try call("POST", "/admin/tenants/globex/api-keys").status == 404)
        #expect(try call("POST", "/admin/reload").status == 200)
        let unknown = try request(port: gw.port, "GET", "/pub/x", headers: [("X-Tenant-ID", "globex")])
        #expect(unknown.status == 403)
        #expect(unknown.json["code"] as? String == "unknown_tenant")

        // A PUT brings the tenant back; the revoked seed key stays revoked, a new key works.
        let forwarded = up.requests.count
        #expect(try call("PUT", "/admin/tenants/globex", #"{"plan": "pro"}"#).status == 201)
        #expect(try withKey().status == 401)
        #expect(up.requests.count == forwarded, "a refused request reached the upstream")
        let made = try call("POST", "/admin/tenants/globex/api-keys")
        let key = try #require(made.json["key"] as? String)
        #expect(try request(port: gw.port, "GET", "/api/x", headers: [("X-API-Key", key)]).status == 200)
        #expect(up.requests.last?.headers("x-tenant-id") == ["globex"])
    }

    @Test func aMoveToPastDueStartsTheGracePeriod() throws {
        let f = try Fixture()
        defer { f.stop() }
        let (up, gw) = (f.up, f.gw)
        func call(_ method: String, _ path: String, _ body: String? = nil) throws -> RawResponse { try f.call(method, path, body) }
        #expect(try call("GET", "/admin/tenants/globex").json["past_due_since"] is NSNull)
        let moved = try call("PUT", "/admin/tenants/globex", #"{"plan": "free", "status": "past_due"}"#)
        let since = try #require(moved.json["past_due_since"] as? String)
        #expect(Timestamp.parse(since) != nil)
        // grace_period 0s: the stamped date is already past the grace period.
        let denied = try request(port: gw.port, "GET", "/pub/x", headers: [("X-Tenant-ID", "globex")])
        #expect(denied.status == 402)
        #expect(denied.json["code"] as? String == "payment_required")
        // Staying past_due keeps the date; leaving it clears it.
        #expect(try call("PUT", "/admin/tenants/globex", #"{"plan": "pro", "status": "past_due"}"#).json["past_due_since"] as? String == since)
        #expect(try call("PUT", "/admin/tenants/globex", #"{"plan": "pro", "status": "active"}"#).json["past_due_since"] is NSNull)
        #expect(try request(port: gw.port, "GET", "/pub/x", headers: [("X-Tenant-ID", "globex")]).status == 200)
        // A trial needs its end.
        let trial = try call("PUT", "/admin/tenants/globex", #"{"plan": "pro", "status": "trialing"}"#)
        #expect(trial.status == 400)
        #expect(trial.json["code"] as? String == "bad_request")
    }
}

/// Live: the admin listener has its own connection cap and the proxy listener's timeouts, so idle sockets to it
/// cannot use up the descriptors the proxy needs.
@Suite(.serialized) struct AdminListenerLimitTests {
    @Test func connectionCapAndTimeouts() throws {
        let up = try TestUpstream()
        defer { up.stop() }
        let yaml = testConfig(
            upstreams: ["app": [up.port]], routes: catchAllRoute,
            server: "  admin_max_connections: 3\n  idle_timeout: 300ms\n  header_timeout: 300ms")
        let gw = try GatewayProcess(yaml: yaml)
        defer { gw.stop() }
        let admin = try #require(gw.adminPort)
        // Three connections are served; a fourth is closed at once, and the proxy listener is unaffected.
        let held = try (0..<3).map { _ in try RawConnection(port: admin) }
        for conn in held {
            try conn.send("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            #expect(try conn.readResponse()?.status == 200)
        }
        let refused = try RawConnection(port: admin)
        #expect(try refused.readResponse() == nil, "over admin_max_connections: closed without an answer")
        #expect(try request(port: gw.port, "GET", "/x").status == 200)
        // Idle ones are closed after idle_timeout; the slots are free again.
        for conn in held { #expect(try conn.readResponse() == nil) }
        var slow: RawConnection? = nil
        try waitUntil(seconds: 5) {
            guard let conn = try? RawConnection(port: admin), (try? conn.send("GET /heal")) != nil else { return false }
            slow = conn
            return true
        }
        // A head that does not arrive in time: 408 request_timeout, then close.
        let timedOut = try #require(try slow?.readResponse())
        #expect(timedOut.status == 408)
        #expect(timedOut.json["code"] as? String == "request_timeout")
        #expect(try slow?.readResponse() == nil)
        #expect(try request(port: admin, "GET", "/healthz").status == 200)
    }
}
