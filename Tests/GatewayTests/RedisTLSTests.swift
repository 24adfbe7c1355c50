import Foundation
import Testing

/// Live: a `redis-server` that speaks only TLS and only to an ACL user, as managed Redis services do, used for
/// tenant records and rate limits by two gateway instances.
@Suite(.serialized) struct RedisTLSTests {
    static func certs() throws -> TestCerts {
        let c = try TestCerts()
        try c.makeCA("ca")
        try c.makeCA("otherca")
        try c.makeLeaf("redis", ca: "ca", sans: ["DNS:redis.test"])
        return c
    }

    /// TLS only (no plain port), the default user off, `gatehouse` with password `s3cret`.
    static func server(_ c: TestCerts) throws -> RedisServer {
        try RedisServer(
            tls: (c.path("redis.pem"), c.path("redis.key")),
            arguments: ["--user", "default", "off", "--user", "gatehouse", "on", ">s3cret", "~*", "&*", "+@all"])
    }

    static let env = RateLimitTests.env.merging(["GH_REDIS_USER": "gatehouse", "GH_REDIS_PASS": "s3cret"]) { a, _ in a }

    static func config(upstream: Int, redis: Int, tls: String) -> String {
        RateLimitTests.config(
            upstream: upstream, redis: redis, onFailure: "closed", scheme: "rediss",
            storeExtra: ", tls: \(tls), username_env: GH_REDIS_USER, password_env: GH_REDIS_PASS")
    }

    @Test func tenantsAndLimitsLiveInATLSRedisWithAnACLUser() throws {
        let c = try Self.certs()
        let redis = try Self.server(c)
        defer { redis.stop() }
        let up = try TestUpstream()
        defer { up.stop() }
        let yaml = Self.config(upstream: up.port, redis: redis.port, tls: "{ca_file: \(c.path("ca.pem")), server_name: redis.test}")
        let a = try GatewayProcess(yaml: yaml, environment: Self.env)
        defer { a.stop() }
        let b = try GatewayProcess(yaml: yaml, environment: Self.env)
        defer { b.stop() }

        // One bucket of 50 in Redis, shared by both instances; with on_failure: closed nothing is admitted
        // unless Redis decided it (the plain port is off, so every decision came over TLS).
        let first = try RateLimitTests().burst(port: a.port, count: 30, tenant: "acme")
        let second = try RateLimitTests().burst(port: b.port, count: 30, tenant: "acme")
        let answers = first + second
        #expect(answers.filter { $0.status == 200 }.count == 50, "\(answers.map(\.status))")
        #expect(answers.filter { $0.status == 429 }.count == 10)
        #expect(up.requests.count == 50)

        // A tenant written through one instance is read from Redis by the other.
        let put = try request(
            port: a.adminPort!, "PUT", "/admin/tenants/initech", headers: RateLimitTests.admin, body: #"{"plan": "open"}"#)
        #expect(put.status == 201 && put.json["source"] as? String == "store", "\(put.status) \(put.text)")
        try waitUntil(seconds: 2) {
            (try? request(port: b.adminPort!, "GET", "/admin/tenants/initech", headers: RateLimitTests.admin).status) == 200
        }
        #expect(try request(port: b.port, "GET", "/api/x", headers: [("X-Tenant-ID", "initech")]).status == 200)

        // Redis restarts: each instance reconnects over TLS, logs in again, and decides through Redis again.
        try redis.restart()
        for gw in [a, b] {
            try waitUntil(seconds: 10) {
                (try? request(port: gw.port, "GET", "/api/x", headers: [("X-Tenant-ID", "globex")]).status) == 200
            }
        }
    }

    @Test func anUntrustedServerOrWrongCredentialsAreNeverUsed() throws {
        let c = try Self.certs()
        let redis = try Self.server(c)
        defer { redis.stop() }
        let up = try TestUpstream()
        defer { up.stop() }
        // A CA that did not sign the server's certificate, a name the certificate does not carry, a wrong
        // password: the store is unavailable, and on_failure: closed refuses with 503 store_unavailable.
        let cases: [(tls: String, env: [String: String])] = [
            ("{ca_file: \(c.path("otherca.pem")), server_name: redis.test}", Self.env),
            ("{ca_file: \(c.path("ca.pem")), server_name: other.test}", Self.env),
            ("{ca_file: \(c.path("ca.pem")), server_name: redis.test}", Self.env.merging(["GH_REDIS_PASS": "wrong"]) { _, b in b }),
        ]
        for (tls, env) in cases {
            let gw = try GatewayProcess(yaml: Self.config(upstream: up.port, redis: redis.port, tls: tls), environment: env)
            let r = try request(port: gw.port, "GET", "/api/x", headers: [("X-Tenant-ID", "acme")])
            #expect(r.status == 503, "\(tls)")
            #expect(r.json["code"] as? String == "store_unavailable")
            // Said once at warning level, so the cause is in the log and not only in the answers.
            try waitUntil(seconds: 5) { gw.log.contains { $0.contains("redis connect failed") && $0.contains("\"level\":\"warning\"") } }
            gw.stop()
        }
        #expect(up.requests.isEmpty)

        // A credential variable that is not set stops the gateway at start, naming it.
        let yaml = Self.config(upstream: up.port, redis: redis.port, tls: "{ca_file: \(c.path("ca.pem")), server_name: redis.test}")
        var unset = Self.env
        unset["GH_REDIS_PASS"] = nil
        #expect {
            try GatewayProcess(yaml: yaml, environment: unset)
        } throws: { error in
            "\(error)".contains("store.password_env names GH_REDIS_PASS, which is not set")
        }
        // A CA file that does not exist likewise.
        #expect {
            try GatewayProcess(
                yaml: Self.config(upstream: up.port, redis: redis.port, tls: "{ca_file: \(c.path("missing.pem"))}"),
                environment: Self.env)
        } throws: { error in
            "\(error)".contains("missing.pem")
        }
    }
}
