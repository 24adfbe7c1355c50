import Foundation
import Testing

/// Live: `cors` on a route. Preflights are answered by the gateway (never forwarded, no credentials, not
/// charged, audited only when refused); every other response on the route carries the CORS headers, denials
/// included, and exactly one `Access-Control-Allow-Origin`.
@Suite(.serialized) struct CORSLiveTests {
    static func config(upstream: Int, raw: Int, audit: String = "") -> String {
        """
        server: {listen: 127.0.0.1:0, threads: 1}
        identity:
          jwt:
            issuers:
              - {issuer: "https://hs.test/", audiences: [api], algorithms: [HS256], secret_env: GH_TEST_HS_SECRET, tenant_claim: org_id}
        plans:
          tiny: {rate: {requests: 1, per: 1h, burst: 2}}
        tenants:
          acme: {plan: tiny}
        upstreams:
          app: {targets: [127.0.0.1:\(upstream)]}
          raw: {targets: [127.0.0.1:\(raw)]}
        routes:
          - name: web
            match: {path_prefix: /api, methods: [GET, POST, PATCH]}
            upstream: app
            cors:
              allow_origins: [https://app.example.com, "https://*.example.com"]
              allow_headers: [Authorization, Content-Type]
              expose_headers: [RateLimit-Limit, RateLimit-Remaining, RateLimit-Reset, Retry-After, X-Request-ID]
              allow_credentials: true
              max_age: 10m
          - name: open
            match: {path_prefix: /open}
            upstream: app
            auth: none
            cors: {allow_origins: ["*"]}
          - name: own
            match: {path_prefix: /own}
            upstream: raw
            auth: none
            cors: {allow_origins: [https://app.example.com]}
          - name: plain
            match: {path_prefix: /plain}
            upstream: app
            auth: none
        \(audit)
        """
    }

    static let env = ["GH_TEST_HS_SECRET": TestKeys.hsSecret]
    /// An upstream that sets CORS headers of its own, which the gateway must replace on a `cors` route.
    static let ownCORSReply =
        "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nAccess-Control-Allow-Origin: *\r\n"
        + "Access-Control-Allow-Credentials: true\r\nAccess-Control-Expose-Headers: X-Secret\r\nX-Own: 1\r\n\r\nok"

    /// A test's upstreams and gateway, stopped when it ends.
    final class Setup {
        let up: TestUpstream
        let raw: RawUpstream
        let gw: GatewayProcess

        init(audit: String = "") throws {
            up = try TestUpstream()
            raw = try RawUpstream(reply: CORSLiveTests.ownCORSReply)
            gw = try GatewayProcess(yaml: CORSLiveTests.config(upstream: up.port, raw: raw.port, audit: audit), environment: CORSLiveTests.env)
        }

        deinit {
            gw.stop()
            up.stop()
            raw.stop()
        }
    }

    static func preflight(origin: String, method: String, headers: String? = nil) -> [(String, String)] {
        var h = [("Origin", origin), ("Access-Control-Request-Method", method)]
        if let headers { h.append(("Access-Control-Request-Headers", headers)) }
        return h
    }

    static let bearer = ("Authorization", "Bearer " + Tok.hs256(Tok.claims(tenant: "acme")))

    func expectRejected(_ r: RawResponse, _ detail: String, sourceLocation: SourceLocation = #_sourceLocation) {
        #expect(r.status == 403, sourceLocation: sourceLocation)
        #expect(r.header("Content-Type") == "application/problem+json", sourceLocation: sourceLocation)
        #expect(r.json["code"] as? String == "cors_rejected", sourceLocation: sourceLocation)
        #expect((r.json["detail"] as? String)?.contains(detail) == true, sourceLocation: sourceLocation)
        #expect(r.headers("Vary").contains { $0.contains("Origin") }, sourceLocation: sourceLocation)
    }

    @Test func preflightIsAnsweredByTheGatewayWithoutCredentialsOrCharge() throws {
        let s = try Setup()
        let origin = "https://app.example.com"
        // Keep-alive: the 204 must be framed so that the next response on the connection reads cleanly.
        let c = try RawConnection(port: s.gw.port)
        for _ in 0..<5 {
            try c.send(
                "OPTIONS /api/items HTTP/1.1\r\nHost: gw\r\nOrigin: \(origin)\r\nAccess-Control-Request-Method: PATCH\r\n"
                    + "Access-Control-Request-Headers: content-type, authorization\r\n\r\n")
            let r = try #require(try c.readResponse())
            #expect(r.status == 204)
            #expect(r.header("Access-Control-Allow-Origin") == origin)
            #expect(r.header("Access-Control-Allow-Credentials") == "true")
            // The route lists its methods, and allow_methods defaults to them.
            #expect(r.header("Access-Control-Allow-Methods") == "GET, POST, PATCH")
            #expect(r.header("Access-Control-Allow-Headers") == "Authorization, Content-Type")
            #expect(r.header("Access-Control-Max-Age") == "600")
            #expect(r.header("Vary") == "Origin, Access-Control-Request-Method, Access-Control-Request-Headers")
            #expect(r.header("Content-Length") == nil)
            #expect(r.header("Content-Type") == nil)
            #expect(r.header("X-Request-ID") != nil)
            #expect(r.headers("Access-Control-Allow-Origin").count == 1)
        }
        try c.send("GET /api/items HTTP/1.1\r\nHost: gw\r\nOrigin: \(origin)\r\nAuthorization: \(Self.bearer.1)\r\n\r\n")
        let first = try #require(try c.readResponse())
        #expect(first.status == 200)
        #expect(s.up.heads == ["/api/items"])
        // Five preflights took nothing from the bucket of 2: two requests pass, the third is limited.
        #expect(first.header("RateLimit-Remaining") == "1")
        let second = try request(port: s.gw.port, "POST", "/api/items", headers: [("Origin", origin), Self.bearer], body: "{}")
        #expect(second.status == 200)
        #expect(second.header("Access-Control-Allow-Origin") == origin)
        #expect(second.header("Access-Control-Allow-Credentials") == "true")
        #expect(second.header("Access-Control-Expose-Headers") == "RateLimit-Limit, RateLimit-Remaining, RateLimit-Reset, Retry-After, X-Request-ID")
        #expect(second.header("Vary") == "Origin")
        #expect(second.header("RateLimit-Remaining") == "0")
        // The Origin still reaches the upstream (it may log or check it).
        #expect(s.up.requests.last?.header("origin") == origin)
        // The 429 can be read by the page: it carries the CORS headers, and its rate headers are exposed.
        let limited = try request(port: s.gw.port, "GET", "/api/items", headers: [("Origin", origin), Self.bearer])
        #expect(limited.status == 429)
        #expect(limited.json["code"] as? String == "rate_limited")
        #expect(limited.header("Access-Control-Allow-Origin") == origin)
        #expect(limited.header("Access-Control-Allow-Credentials") == "true")
        #expect(limited.header("Access-Control-Expose-Headers")?.contains("Retry-After") == true)
        #expect(limited.header("Vary") == "Origin")
        #expect(limited.header("Retry-After") != nil)
        #expect(s.up.heads.count == 2)
    }

    @Test func refusedPreflightsAre403AndNeverForwarded() throws {
        let s = try Setup()
        expectRejected(
            try request(port: s.gw.port, "OPTIONS", "/api/items", headers: Self.preflight(origin: "https://evil.test", method: "GET")),
            "https://evil.test")
        expectRejected(
            try request(
                port: s.gw.port, "OPTIONS", "/api/items",
                headers: Self.preflight(origin: "https://app.example.com", method: "POST", headers: "Content-Type, X-Debug")),
            "X-Debug")
        // A method outside allow_methods (here the default GET, HEAD, POST on a route taking any method).
        let method = try request(
            port: s.gw.port, "OPTIONS", "/open/x", headers: Self.preflight(origin: "https://any.test", method: "DELETE"))
        expectRejected(method, "DELETE")
        // The origin is allowed: the refusal itself is readable, as every response on the route.
        #expect(method.header("Access-Control-Allow-Origin") == "*")
        // Wildcard subdomains: neither the bare domain nor a look-alike, nor another scheme.
        for origin in ["https://example.com", "https://evil-example.com", "http://a.example.com", "null"] {
            let r = try request(port: s.gw.port, "OPTIONS", "/api/items", headers: Self.preflight(origin: origin, method: "GET"))
            expectRejected(r, origin)
            #expect(r.header("Access-Control-Allow-Origin") == nil)
        }
        #expect(s.up.heads.isEmpty)
        // A preflight needs no credentials even from a subdomain two labels deep.
        let deep = try request(port: s.gw.port, "OPTIONS", "/api/items", headers: Self.preflight(origin: "https://a.b.example.com", method: "POST"))
        #expect(deep.status == 204)
        #expect(deep.header("Access-Control-Allow-Origin") == "https://a.b.example.com")
        #expect(s.up.heads.isEmpty)
    }

    @Test func denialsOnACORSRouteAreReadable() throws {
        let s = try Setup()
        let origin = "https://shop.example.com"
        let r = try request(port: s.gw.port, "GET", "/api/items", headers: [("Origin", origin)])
        #expect(r.status == 401)
        #expect(r.json["code"] as? String == "unauthenticated")
        #expect(r.header("WWW-Authenticate") == "Bearer")
        #expect(r.header("Access-Control-Allow-Origin") == origin)
        #expect(r.header("Access-Control-Allow-Credentials") == "true")
        #expect(r.header("Access-Control-Expose-Headers")?.hasPrefix("RateLimit-Limit") == true)
        #expect(r.header("Vary") == "Origin")
        // A denial before routing knows no route, so no CORS headers.
        let lost = try request(port: s.gw.port, "GET", "/nowhere", headers: [("Origin", origin)])
        #expect(lost.status == 404)
        #expect(lost.header("Access-Control-Allow-Origin") == nil)
        #expect(lost.header("Vary") == nil)
        #expect(s.up.heads.isEmpty)
    }

    @Test func theGatewaysCORSHeadersReplaceTheUpstreams() throws {
        let s = try Setup()
        let r = try request(port: s.gw.port, "GET", "/own/x", headers: [("Origin", "https://app.example.com")])
        #expect(r.status == 200)
        #expect(r.text == "ok")
        #expect(r.header("X-Own") == "1")
        #expect(r.headers("Access-Control-Allow-Origin") == ["https://app.example.com"])
        // The route allows no credentials and exposes nothing: the upstream's say-so does not count.
        #expect(r.header("Access-Control-Allow-Credentials") == nil)
        #expect(r.header("Access-Control-Expose-Headers") == nil)
        #expect(r.header("Vary") == "Origin")
        // An origin the route does not allow gets no Allow-Origin at all, not the upstream's `*`.
        let other = try request(port: s.gw.port, "GET", "/own/x", headers: [("Origin", "https://evil.test")])
        #expect(other.status == 200)
        #expect(other.headers("Access-Control-Allow-Origin").isEmpty)
        #expect(other.header("Vary") == "Origin")
        #expect(s.raw.connections.load(ordering: .relaxed) >= 1)
    }

    @Test func disallowedOrMissingOriginsGetOnlyVary() throws {
        let s = try Setup()
        for headers in [[("Origin", "https://evil.test"), Self.bearer], [Self.bearer]] {
            let r = try request(port: s.gw.port, "GET", "/api/items", headers: headers)
            #expect(r.status == 200)
            #expect(r.header("Access-Control-Allow-Origin") == nil)
            #expect(r.header("Access-Control-Allow-Credentials") == nil)
            #expect(r.header("Access-Control-Expose-Headers") == nil)
            #expect(r.header("Vary") == "Origin")
        }
        // Any origin: `*`, never credentials.
        let any = try request(port: s.gw.port, "GET", "/open/x", headers: [("Origin", "https://whoever.test")])
        #expect(any.header("Access-Control-Allow-Origin") == "*")
        #expect(any.header("Access-Control-Allow-Credentials") == nil)
        let anyPreflight = try request(port: s.gw.port, "OPTIONS", "/open/x", headers: Self.preflight(origin: "https://whoever.test", method: "POST"))
        #expect(anyPreflight.status == 204)
        #expect(anyPreflight.header("Access-Control-Allow-Origin") == "*")
        #expect(anyPreflight.header("Access-Control-Allow-Methods") == "GET, HEAD, POST")
        #expect(s.up.heads == ["/api/items", "/api/items", "/open/x"])
    }

    @Test func onlyRealPreflightsAreAnswered() throws {
        let s = try Setup()
        // OPTIONS without Access-Control-Request-Method is an ordinary request: forwarded, with CORS headers.
        let options = try request(port: s.gw.port, "OPTIONS", "/open/x", headers: [("Origin", "https://a.test")])
        #expect(options.status == 200)
        #expect(options.header("Access-Control-Allow-Origin") == "*")
        #expect(s.up.requests.map(\.method) == ["OPTIONS"])
        // A route without `cors` leaves CORS to the upstream: its preflights are forwarded.
        let plain = try request(port: s.gw.port, "OPTIONS", "/plain/x", headers: Self.preflight(origin: "https://a.test", method: "PUT"))
        #expect(plain.status == 200)
        #expect(plain.header("Access-Control-Allow-Origin") == nil)
        #expect(plain.header("Vary") == nil)
        #expect(s.up.requests.map(\.uri) == ["/open/x", "/plain/x"])
    }

    @Test func refusedPreflightsAreAuditedAnsweredOnesAreNot() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("gh-cors-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let log = dir.appendingPathComponent("audit.jsonl").path
        let s = try Setup(audit: "audit: {denials: true, sinks: [{file: {path: \"\(log)\"}}]}")
        let ok = try request(port: s.gw.port, "OPTIONS", "/api/x", headers: Self.preflight(origin: "https://app.example.com", method: "POST"))
        #expect(ok.status == 204)
        let refused = try request(port: s.gw.port, "OPTIONS", "/api/x", headers: Self.preflight(origin: "https://evil.test", method: "POST"))
        #expect(refused.status == 403)
        s.gw.stop()
        let records = AuditTests.records(log)
        #expect(records.count == 1)
        #expect(records.first?["code"] as? String == "cors_rejected")
        #expect(records.first?["route"] as? String == "web")
        #expect(records.first?["method"] as? String == "OPTIONS")
        #expect(records.first?["request_id"] as? String == refused.header("X-Request-ID"))
    }

    @Test func credentialsWithAnyOriginFailValidation() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("gh-cors-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let path = dir.appendingPathComponent("gateway.yaml").path
        let yaml = """
            upstreams:
              app: {targets: [127.0.0.1:9]}
            routes:
              - name: web
                match: {path_prefix: /}
                upstream: app
                cors: {allow_origins: ["*"], allow_credentials: true}
            """
        try yaml.write(toFile: path, atomically: true, encoding: .utf8)
        let result = try runGatehouse(["validate", "--config", path])
        #expect(result.status == 1)
        #expect(result.err.contains("\(path):7:53: cors.allow_credentials cannot be combined with allow_origins \"*\""))
    }
}
