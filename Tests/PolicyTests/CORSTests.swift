import Testing

@testable import Policy

/// CORS decisions (``CORSPolicy``) and the `cors` section's validation.
@Suite struct CORSTests {
    static func config(
        _ origins: [String], methods: [String] = ["GET", "POST", "PATCH"], headers: [String] = ["Authorization", "Content-Type", "X-API-Key"],
        expose: [String] = ["RateLimit-Remaining", "X-Request-ID"], credentials: Bool = false, maxAge: Int? = nil
    ) -> CORSConfig {
        let any = origins == ["*"]
        var c = CORSConfig(allowOrigins: any ? .any : .listed(origins.map { CORSConfig.OriginPattern.parse($0)! }))
        c.allowMethods = methods
        c.allowHeaders = headers
        c.exposeHeaders = expose
        c.allowCredentials = credentials
        c.maxAge = maxAge
        return c
    }

    static let site = config(["https://app.example.com", "https://*.example.com", "http://localhost:3000"], credentials: true, maxAge: 600)

    func allowed(_ c: CORSConfig, _ origin: String) -> Bool { CORSPolicy.allowOrigin(c, origin: origin) != nil }

    func value(_ headers: [(String, String)], _ name: String) -> String? {
        headers.first { $0.0.lowercased() == name.lowercased() }?.1
    }

    func rejection(_ r: Result<[(String, String)], Denial>) -> Denial? {
        if case .failure(let d) = r { return d }
        return nil
    }

    func headers(_ r: Result<[(String, String)], Denial>) -> [(String, String)]? {
        if case .success(let h) = r { return h }
        return nil
    }

    @Test func originsParseCaseInsensitivelyWithDefaultPortsDropped() {
        let o = CORSConfig.Origin.parse("HTTPS://App.Example.COM:443")
        #expect(o == CORSConfig.Origin(scheme: "https", host: "app.example.com", port: nil))
        #expect(CORSConfig.Origin.parse("http://localhost:80")?.port == nil)
        #expect(CORSConfig.Origin.parse("http://localhost:443")?.port == 443)
        #expect(CORSConfig.Origin.parse("http://[::1]:8080") == CORSConfig.Origin(scheme: "http", host: "[::1]", port: 8080))
        for bad in [
            "app.example.com", "https://", "https://app.example.com/", "https://app.example.com/path", "https://u@app.example.com",
            "https://app.example.com:", "https://app.example.com:99999", "https://app..example.com", "https://app.example.com?x",
            "https://*.example.com", "null", "1http://x.com", "https://a b.com",
        ] {
            #expect(CORSConfig.Origin.parse(bad) == nil, "\(bad)")
        }
    }

    @Test func exactOriginsMatchCaseInsensitivelyAndAreEchoedAsSent() {
        #expect(CORSPolicy.allowOrigin(Self.site, origin: "https://app.example.com") == "https://app.example.com")
        #expect(CORSPolicy.allowOrigin(Self.site, origin: "HTTPS://APP.example.com") == "HTTPS://APP.example.com")
        #expect(allowed(Self.site, "https://app.example.com:443"))
        #expect(allowed(Self.site, "http://localhost:3000"))
        #expect(!allowed(Self.site, "http://localhost:3001"))
        #expect(!allowed(Self.site, "http://localhost"))
        #expect(!allowed(Self.site, "https://localhost:3000"))
        #expect(!allowed(Self.site, "http://app.example.com"))
        #expect(!allowed(Self.site, ""))
        #expect(!allowed(Self.site, "garbage"))
    }

    @Test func wildcardCoversSubdomainsOnly() {
        let c = Self.config(["https://*.example.com"])
        #expect(allowed(c, "https://a.example.com"))
        #expect(allowed(c, "https://a.b.example.com"))
        #expect(allowed(c, "https://A.Example.COM"))
        #expect(!allowed(c, "https://example.com"))
        #expect(!allowed(c, "https://evil-example.com"))
        #expect(!allowed(c, "https://.example.com"))
        #expect(!allowed(c, "http://a.example.com"))
        #expect(!allowed(c, "https://a.example.com:8443"))
        #expect(!allowed(c, "https://a.example.com.evil.com"))
        #expect(!allowed(c, "https://aexample.com"))
        let ported = Self.config(["http://*.dev.test:8080"])
        #expect(allowed(ported, "http://x.dev.test:8080"))
        #expect(!allowed(ported, "http://x.dev.test"))
    }

    @Test func configuredPatterns() {
        #expect(CORSConfig.OriginPattern.parse("https://*.example.com") != nil)
        #expect(CORSConfig.OriginPattern.parse("null") == .opaque)
        for bad in ["https://*.com", "https://a.*.example.com", "https://*example.com", "*.example.com", "https://*.*.example.com", "*"] {
            #expect(CORSConfig.OriginPattern.parse(bad) == nil, "\(bad)")
        }
    }

    @Test func nullOriginOnlyWhenListed() {
        #expect(!allowed(Self.site, "null"))
        #expect(!allowed(Self.config(["*"]), "null"))
        #expect(CORSPolicy.allowOrigin(Self.config(["null", "https://a.test"]), origin: "null") == "null")
    }

    @Test func anyOriginAnswersWithTheWildcard() {
        let c = Self.config(["*"])
        #expect(CORSPolicy.allowOrigin(c, origin: "https://whoever.test") == "*")
        let h = CORSPolicy.responseHeaders(c, origin: "https://whoever.test")
        #expect(value(h, "Access-Control-Allow-Origin") == "*")
        #expect(value(h, "Access-Control-Allow-Credentials") == nil)
        let p = headers(CORSPolicy.preflight(c, origin: "https://whoever.test", method: "PATCH", requestHeaders: nil))
        #expect(p.map { value($0, "Access-Control-Allow-Origin") } == "*")
    }

    @Test func preflightAllowedCarriesEveryHeader() throws {
        let h = try #require(
            headers(
                CORSPolicy.preflight(
                    Self.site, origin: "https://a.example.com", method: "PATCH", requestHeaders: "content-type, x-api-key")))
        #expect(value(h, "Access-Control-Allow-Origin") == "https://a.example.com")
        #expect(value(h, "Access-Control-Allow-Credentials") == "true")
        #expect(value(h, "Access-Control-Allow-Methods") == "GET, POST, PATCH")
        #expect(value(h, "Access-Control-Allow-Headers") == "Authorization, Content-Type, X-API-Key")
        #expect(value(h, "Access-Control-Max-Age") == "600")
        #expect(value(h, "Vary") == "Origin, Access-Control-Request-Method, Access-Control-Request-Headers")
        #expect(value(h, "Access-Control-Expose-Headers") == nil)
        // No credentials, no max age, no headers configured: those headers are left out.
        let bare = try #require(
            headers(CORSPolicy.preflight(Self.config(["https://a.test"], headers: []), origin: "https://a.test", method: "GET", requestHeaders: nil)))
        #expect(value(bare, "Access-Control-Allow-Credentials") == nil)
        #expect(value(bare, "Access-Control-Max-Age") == nil)
        #expect(value(bare, "Access-Control-Allow-Headers") == nil)
    }

    @Test func preflightRejectsOriginMethodAndHeader() throws {
        let origin = try #require(
            rejection(CORSPolicy.preflight(Self.site, origin: "https://evil.test", method: "GET", requestHeaders: nil)))
        #expect(origin.status == 403)
        #expect(origin.code == "cors_rejected")
        #expect(origin.detail.contains("https://evil.test"))
        let method = try #require(
            rejection(CORSPolicy.preflight(Self.site, origin: "https://app.example.com", method: "DELETE", requestHeaders: nil)))
        #expect(method.code == "cors_rejected")
        #expect(method.detail.contains("DELETE"))
        // Methods compare exactly: browsers upper-case only the standard ones, and `patch` is not `PATCH`.
        #expect(rejection(CORSPolicy.preflight(Self.site, origin: "https://app.example.com", method: "patch", requestHeaders: nil)) != nil)
        let header = try #require(
            rejection(
                CORSPolicy.preflight(
                    Self.site, origin: "https://app.example.com", method: "POST", requestHeaders: "content-type,x-debug")))
        #expect(header.code == "cors_rejected")
        #expect(header.detail.contains("x-debug"))
    }

    @Test func safelistedMethodsAreAlwaysAllowed() {
        let c = Self.config(["https://a.test"], methods: ["PUT"])
        for m in ["GET", "HEAD", "POST", "PUT"] {
            #expect(headers(CORSPolicy.preflight(c, origin: "https://a.test", method: m, requestHeaders: nil)) != nil, "\(m)")
        }
        #expect(rejection(CORSPolicy.preflight(c, origin: "https://a.test", method: "DELETE", requestHeaders: nil)) != nil)
        #expect(rejection(CORSPolicy.preflight(c, origin: "https://a.test", method: "", requestHeaders: nil)) != nil)
    }

    @Test func requestHeaderListsAreTrimmedCaseInsensitiveAndSkipEmptyElements() {
        let c = Self.site
        for list in [
            "", " ", ",", " , ,AUTHORIZATION ,, \tx-api-key\t", "Content-Type", "accept, accept-language, content-language",
        ] {
            #expect(headers(CORSPolicy.preflight(c, origin: "https://app.example.com", method: "POST", requestHeaders: list)) != nil, "\(list)")
        }
        // Content-Type is safelisted only for form and text values, which a browser never names: it must be listed.
        let noTypes = Self.config(["https://a.test"], headers: [])
        #expect(rejection(CORSPolicy.preflight(noTypes, origin: "https://a.test", method: "POST", requestHeaders: "content-type")) != nil)
        #expect(rejection(CORSPolicy.preflight(c, origin: "https://app.example.com", method: "POST", requestHeaders: "x-api-key x")) != nil)
    }

    @Test func actualResponseHeaders() {
        let h = CORSPolicy.responseHeaders(Self.site, origin: "https://a.example.com")
        #expect(value(h, "Access-Control-Allow-Origin") == "https://a.example.com")
        #expect(value(h, "Access-Control-Allow-Credentials") == "true")
        #expect(value(h, "Access-Control-Expose-Headers") == "RateLimit-Remaining, X-Request-ID")
        #expect(value(h, "Vary") == "Origin")
        #expect(value(h, "Access-Control-Allow-Methods") == nil)
        // No Origin, or one not allowed: only Vary (a cache must still keep them apart).
        for origin in [nil, "https://evil.test", "null"] {
            let none = CORSPolicy.responseHeaders(Self.site, origin: origin)
            #expect(none.count == 1)
            #expect(value(none, "Vary") == "Origin")
        }
        let plain = CORSPolicy.responseHeaders(Self.config(["https://a.test"], expose: []), origin: "https://a.test")
        #expect(plain.map(\.0) == ["Access-Control-Allow-Origin", "Vary"])
    }

    @Test func upstreamCORSHeadersAreRecognised() {
        #expect(CORSPolicy.isCORSResponseHeader("Access-Control-Allow-Origin"))
        #expect(CORSPolicy.isCORSResponseHeader("access-control-expose-headers"))
        #expect(CORSPolicy.isCORSResponseHeader("ACCESS-CONTROL-ALLOW-CREDENTIALS"))
        #expect(!CORSPolicy.isCORSResponseHeader("Access-Control-"))
        #expect(!CORSPolicy.isCORSResponseHeader("Vary"))
        #expect(!CORSPolicy.isCORSResponseHeader("X-Access-Control-Allow-Origin"))
    }

    @Test func deniesWithTheSpecCode() {
        let d = Denial.corsRejected("x")
        #expect(d.status == 403)
        #expect(d.code == "cors_rejected")
        #expect(d.title == "CORS request rejected")
    }

    // MARK: Config

    static func route(_ cors: String, methods: String = "") -> String {
        """
        upstreams:
          app: {targets: [127.0.0.1:9001]}
        routes:
          - name: web
            match: {path_prefix: /api\(methods)}
            upstream: app
            cors:
        \(cors)
        """
    }

    @Test func loadsTheSpecExample() throws {
        let yaml = Self.route(
            """
                  allow_origins: [https://app.example.com, "https://*.example.com"]
                  allow_methods: [GET, POST]
                  allow_headers: [Authorization, Content-Type, X-API-Key]
                  expose_headers: [RateLimit-Limit, RateLimit-Remaining, RateLimit-Reset, X-Request-ID]
                  allow_credentials: true
                  max_age: 10m
            """)
        let cors = try #require(try load(["gw.yaml": yaml]).get().routes[0].cors)
        #expect(
            cors.allowOrigins
                == .listed([
                    .exact(.init(scheme: "https", host: "app.example.com", port: nil)),
                    .subdomains(of: .init(scheme: "https", host: "example.com", port: nil)),
                ]))
        #expect(cors.allowMethods == ["GET", "POST"])
        #expect(cors.allowHeaders == ["Authorization", "Content-Type", "X-API-Key"])
        #expect(cors.exposeHeaders == ["RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset", "X-Request-ID"])
        #expect(cors.allowCredentials)
        #expect(cors.maxAge == 600)
    }

    @Test func defaults() throws {
        let plain = try #require(try load(["gw.yaml": Self.route("      allow_origins: [\"*\"]")]).get().routes[0].cors)
        #expect(plain.allowOrigins == .any)
        #expect(plain.allowMethods == ["GET", "HEAD", "POST"])
        #expect(plain.allowHeaders.isEmpty)
        #expect(plain.exposeHeaders.isEmpty)
        #expect(!plain.allowCredentials)
        #expect(plain.maxAge == nil)
        // A route that lists its methods allows those cross-origin.
        let listed = try #require(
            try load(["gw.yaml": Self.route("      allow_origins: [\"*\"]", methods: ", methods: [GET, PATCH]")]).get().routes[0].cors)
        #expect(listed.allowMethods == ["GET", "PATCH"])
        #expect(try load(["gw.yaml": minimal]).get().routes[0].cors == nil)
    }

    @Test func credentialsWithTheWildcardIsAnError() {
        let yaml = Self.route("      allow_origins: [\"*\"]\n      allow_credentials: true")
        #expect(
            problems(["gw.yaml": yaml]) == [
                "gw.yaml:9:26: cors.allow_credentials cannot be combined with allow_origins \"*\" (browsers refuse "
                    + "credentials for a wildcard origin): list the origins"
            ])
    }

    @Test func originErrorsAreReportedAtTheirEntry() {
        let yaml = Self.route(
            """
                  allow_origins:
                    - https://app.example.com/
                    - app.example.com
                    - https://a.*.example.com
                    - https://*.com
                    - https://ok.example.com
            """)
        let p = problems(["gw.yaml": yaml])
        #expect(p.count == 4)
        #expect(p[0].hasPrefix("gw.yaml:9:11: cors.allow_origins: 'https://app.example.com/' is not an origin"))
        #expect(p[1].hasPrefix("gw.yaml:10:11: cors.allow_origins: 'app.example.com' is not an origin"))
        #expect(p[2].hasPrefix("gw.yaml:11:11: cors.allow_origins: 'https://a.*.example.com' is not an origin"))
        #expect(p[3].hasPrefix("gw.yaml:12:11: cors.allow_origins: 'https://*.com' is not an origin"))
    }

    @Test func otherConfigErrors() {
        #expect(
            problems(["gw.yaml": Self.route("      allow_origins: []")])
                == ["gw.yaml:8:22: cors.allow_origins must name at least one origin (or \"*\" for any)"])
        #expect(
            problems(["gw.yaml": Self.route("      allow_origins: [\"*\", https://a.test]")])
                == ["gw.yaml:8:22: cors.allow_origins: \"*\" allows any origin and must be the only entry"])
        #expect(
            problems(["gw.yaml": Self.route("      allow_methods: [GET]")])
                == ["gw.yaml:8:7: route 'web' cors needs allow_origins (the origins that may call, or [\"*\"])"])
        #expect(
            problems(["gw.yaml": Self.route("      allow_origins: [\"*\"]\n      allow_origin: [x]")])
                == ["gw.yaml:9:7: unknown key 'allow_origin' in route 'web' cors"])
        let p = problems([
            "gw.yaml": Self.route(
                """
                      allow_origins: [https://a.test]
                      allow_methods: [get]
                      allow_headers: ["*", "X Bad"]
                      expose_headers: [X-Ok]
                      max_age: soon
                """)
        ])
        #expect(
            p == [
                "gw.yaml:9:23: cors.allow_methods: invalid method 'get' (uppercase letters only)",
                "gw.yaml:10:23: cors.allow_headers: \"*\" is not supported; list the header names",
                "gw.yaml:10:28: cors.allow_headers: invalid header name 'X Bad'",
                "gw.yaml:12:16: cors.max_age: invalid duration 'soon' (expected e.g. 250ms, 30s, 5m, 1h, 7d)",
            ])
    }
}
