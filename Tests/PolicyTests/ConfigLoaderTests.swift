import Testing

@testable import Policy

/// Loads configs from an in-memory file map, so every problem's location can be asserted exactly.
func load(_ files: [String: String], main: String = "gw.yaml") -> Result<GatewayConfig, ConfigError> {
    let loader = ConfigLoader(readFile: { files[$0] })
    do {
        return .success(try loader.load(path: main))
    } catch {
        return .failure(error)
    }
}

func problems(_ files: [String: String], main: String = "gw.yaml") -> [String] {
    switch load(files, main: main) {
    case .success: return []
    case .failure(let e): return e.problems.map(\.description)
    }
}

let minimal = """
    upstreams:
      users:
        targets: [127.0.0.1:9001]
    routes:
      - name: users
        match: {path_prefix: /api/users}
        upstream: users
    """

@Suite struct ConfigLoaderTests {
    @Test func loadsTheSpecExample() throws {
        let yaml = """
            server:
              listen: 127.0.0.1:8080
              threads: 2
              admin_listen: 127.0.0.1:9901
              admin_token_env: GATEHOUSE_ADMIN_TOKEN
              max_header_bytes: 16KiB
              max_body_bytes: 10MiB
              idle_timeout: 60s
              request_timeout: 30s
              drain_timeout: 10s
            store:
              redis: redis://127.0.0.1:6379/0
              timeout: 50ms
              on_failure: open
              key_prefix: gh
              rate_limit_mode: leased
              tenant_cache_ttl: 30s
            identity:
              tenant_header: X-Tenant-ID
              header_tenancy: api_key_only
              jwt:
                issuers:
                  - issuer: https://auth.example.com/
                    audiences: [api]
                    algorithms: [RS256, ES256]
                    jwks_file: config/keys/jwks.json
                    tenant_claim: org_id
                    user_claim: sub
                    roles_claim: roles
                    leeway: 30s
              api_keys:
                header: X-API-Key
            plans:
              free:
                rate: {requests: 10, per: 1s, burst: 20}
                quota: {requests: 1000, per: month}
                features: [core]
                max_body_bytes: 1MiB
              pro:
                rate: {requests: 100, per: 1s, burst: 200}
                quota: {requests: 50000, per: month}
                features: [core, analytics, webhooks]
              enterprise:
                rate: {requests: 1000, per: 1s, burst: 2000}
                quota: unlimited
                features: ["*"]
            plan_order: [free, pro, enterprise]
            tenants:
              acme:   {plan: pro, status: active, billing_anchor: 15}
              globex: {plan: free, status: trialing, trial_ends: 2026-12-31T00:00:00Z,
                       api_keys: [{id: ci-bot, sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08}]}
            billing:
              webhook_secret_env: BILLING_WEBHOOK_SECRET
              grace_period: 7d
              prices: {price_pro_monthly: pro, price_ent_yearly: enterprise}
            upstreams:
              users:
                targets: [127.0.0.1:9001, 127.0.0.1:9002]
                balance: round_robin
                health_check: {path: /health, interval: 5s, unhealthy_after: 3, healthy_after: 2}
                connect_timeout: 1s
                response_timeout: 30s
                retries: 1
                max_connections_per_target: 256
              analytics:
                targets: [127.0.0.1:9003]
            routes:
              - name: users
                match: {path_prefix: /api/users, methods: [GET, POST, PATCH, DELETE]}
                upstream: users
                strip_prefix: /api
                auth: required
              - name: analytics
                match: {path_prefix: /api/analytics}
                upstream: analytics
                min_plan: pro
                feature: analytics
                roles: [admin, analyst]
                rate_limits: [tenant, tenant_route]
            audit:
              methods: [POST, PUT, PATCH, DELETE]
              denials: true
              sinks:
                - file: {path: var/audit.jsonl, rotate_bytes: 100MiB, fsync: batch}
                - redis_stream: {stream: gh:audit, maxlen: 1000000}
            """
        let config = try load(["gw.yaml": yaml]).get()
        #expect(config.server.listen == HostPort(host: "127.0.0.1", port: 8080))
        #expect(config.server.maxHeaderBytes == 16 * 1024)
        #expect(config.server.maxBodyBytes == 10 * 1024 * 1024)
        #expect(config.server.idleTimeout == 60_000_000_000)
        #expect(config.upstreams["users"]?.targets.count == 2)
        #expect(config.upstreams["users"]?.healthCheck?.unhealthyAfter == 3)
        #expect(config.routes.map(\.name) == ["users", "analytics"])
        #expect(config.routes[0].stripPrefix == "/api")
        #expect(config.routes[0].methods == ["GET", "POST", "PATCH", "DELETE"])
        #expect(config.routes[1].rateLimits == ["tenant", "tenant_route"])
        #expect(config.planOrder == ["free", "pro", "enterprise"])
        #expect(config.tenants["globex"]?.apiKeys.first?.id == "ci-bot")
        #expect(config.tenants["acme"]?.billingAnchor == 15)
        #expect(config.store?.onFailure == .open)
        #expect(config.identity.issuers.first?.leeway == 30_000_000_000)
        #expect(config.audit?.sinks.count == 2)
    }

    @Test func auditAndLimitKeys() throws {
        let yaml = minimal + """

            audit:
              queue_size: 0
              queue_timeout: soon
              sinks:
                - redis_stream: {stream: gh:audit}
            tenants:
              a: {plan: p, billing_anchor: 32, overrides: {quota: lots, rate: {requests: 5}}}
            plans:
              p: {quota: {requests: 5, per: week}}
            """
        #expect(
            problems(["gw.yaml": yaml]) == [
                "gw.yaml:9:3: the redis_stream audit sink needs a store with redis",
                "gw.yaml:9:15: audit.queue_size must be between 1 and 10000000",
                "gw.yaml:10:18: audit.queue_timeout: invalid duration 'soon' (expected e.g. 250ms, 30s, 5m, 1h, 7d)",
                "gw.yaml:14:32: billing_anchor must be between 1 and 31",
                "gw.yaml:14:55: quota must be 'unlimited' or {requests, per}",
                "gw.yaml:14:67: overrides.rate needs requests and per",
                "gw.yaml:16:33: plans.p.quota.per must be one of day, month (got 'week')",
            ])
    }

    @Test func defaults() throws {
        let config = try load(["gw.yaml": minimal]).get()
        #expect(config.server.listen == HostPort(host: "127.0.0.1", port: 8080))
        #expect(config.server.maxHeaderBytes == 16 * 1024)
        #expect(config.routes[0].auth == .required)
        #expect(config.routes[0].rateLimits == ["tenant"])
        #expect(config.upstreams["users"]?.retries == 1)
        #expect(config.store == nil)
    }

    @Test func metricsTenantSeries() throws {
        #expect(try load(["gw.yaml": minimal]).get().metrics.tenantSeries == 20)
        #expect(try load(["gw.yaml": minimal + "\nmetrics:\n  tenant_series: 0\n"]).get().metrics.tenantSeries == 0)
        #expect(try load(["gw.yaml": minimal + "\nmetrics: {tenant_series: 2}\n"]).get().metrics.tenantSeries == 2)
        #expect(
            problems(["gw.yaml": minimal + "\nmetrics:\n  tenant_series: -1\n"]) == [
                "gw.yaml:9:18: metrics.tenant_series must be between 0 and 10000"
            ])
        #expect(
            problems(["gw.yaml": minimal + "\nmetrics:\n  tenant_series: lots\n"]) == [
                "gw.yaml:9:18: metrics.tenant_series must be an integer"
            ])
        #expect(
            problems(["gw.yaml": minimal + "\nmetrics:\n  tenant_serie: 5\n"]) == [
                "gw.yaml:9:3: unknown key 'tenant_serie' in metrics"
            ])
    }

    @Test func unknownKeyIsReportedAtItsLocation() {
        let yaml = """
            server:
              listen: 127.0.0.1:8080
              listn: 127.0.0.1:8081
            """ + "\n" + minimal
        #expect(problems(["gw.yaml": yaml]) == ["gw.yaml:3:3: unknown key 'listn' in server"])
    }

    @Test func unknownTopLevelAndNestedKeys() {
        let yaml = minimal + "\nfrobnicate: 1\n"
        #expect(problems(["gw.yaml": yaml]) == ["gw.yaml:8:1: unknown key 'frobnicate' in the config file"])
        let nested = """
            upstreams:
              users:
                targets: [127.0.0.1:9001]
                health_check: {path: /health, intervl: 5s}
            routes: []
            """
        #expect(problems(["gw.yaml": nested]) == ["gw.yaml:4:35: unknown key 'intervl' in health_check"])
    }

    @Test func badDurationAndSize() {
        let yaml = """
            server:
              idle_timeout: 10 seconds
              max_body_bytes: 10 MB
            """ + "\n" + minimal
        let p = problems(["gw.yaml": yaml])
        #expect(p.count == 2)
        #expect(p[0].hasPrefix("gw.yaml:2:17: server.idle_timeout: invalid duration '10 seconds'"))
        #expect(p[1].hasPrefix("gw.yaml:3:19: server.max_body_bytes: invalid size '10 MB'"))
    }

    @Test func routeNamingMissingUpstream() {
        let yaml = """
            upstreams:
              users: {targets: [127.0.0.1:9001]}
            routes:
              - name: users
                match: {path_prefix: /api/users}
                upstream: userz
            """
        #expect(problems(["gw.yaml": yaml]) == ["gw.yaml:6:15: route 'users' names unknown upstream 'userz'"])
    }

    @Test func duplicateRouteNames() {
        let yaml = minimal + """

              - name: users
                match: {path_prefix: /api/other}
                upstream: users
            """
        #expect(problems(["gw.yaml": yaml]) == ["gw.yaml:8:5: duplicate route name 'users' (first at gw.yaml:5)"])
    }

    @Test func badListenAddress() {
        let yaml = "server:\n  listen: 127.0.0.1\n" + minimal
        #expect(problems(["gw.yaml": yaml]).first?.hasPrefix("gw.yaml:2:11: server.listen: invalid address '127.0.0.1'") == true)
        let port = "server:\n  listen: 127.0.0.1:70000\n" + minimal
        #expect(problems(["gw.yaml": port]).first?.hasPrefix("gw.yaml:2:11: server.listen: invalid address") == true)
    }

    @Test func emptyTargets() {
        let yaml = """
            upstreams:
              users: {targets: []}
            routes: []
            """
        #expect(problems(["gw.yaml": yaml]) == ["gw.yaml:2:20: upstream 'users' has no targets"])
    }

    @Test func includePullsInMoreFilesAndReportsTheirLocations() throws {
        let main = """
            include: [parts/upstreams.yaml, parts/routes.yaml]
            server: {listen: 127.0.0.1:8080}
            """
        let ups = "upstreams:\n  users: {targets: [127.0.0.1:9001]}\n"
        let routes = "routes:\n  - name: users\n    match: {path_prefix: /api/users}\n    upstream: users\n"
        let config = try load(["gw.yaml": main, "parts/upstreams.yaml": ups, "parts/routes.yaml": routes]).get()
        #expect(config.routes.first?.upstream == "users")
        #expect(config.files == ["gw.yaml", "parts/upstreams.yaml", "parts/routes.yaml"])

        let badRoutes = "routes:\n  - name: users\n    match: {path_prefix: /api/users}\n    upstream: nope\n"
        #expect(
            problems(["gw.yaml": main, "parts/upstreams.yaml": ups, "parts/routes.yaml": badRoutes])
                == ["parts/routes.yaml:4:15: route 'users' names unknown upstream 'nope'"])
        #expect(
            problems(["gw.yaml": main, "parts/upstreams.yaml": ups])
                == ["gw.yaml:1:33: cannot read included file 'parts/routes.yaml'"])
    }

    @Test func includeCyclesAndDuplicateSections() {
        let a = "include: b.yaml\nserver: {listen: 127.0.0.1:1}\n" + minimal
        let b = "include: gw.yaml\nserver: {listen: 127.0.0.1:2}\n"
        let p = problems(["gw.yaml": a, "b.yaml": b])
        #expect(p.contains("b.yaml:1:10: 'gw.yaml' is included more than once"))
        #expect(p.contains("b.yaml:2:1: section 'server' is already defined in gw.yaml"))
    }

    @Test func yamlSyntaxError() {
        let p = problems(["gw.yaml": "server:\n  listen: [oops\n"])
        #expect(p.count == 1)
        #expect(p[0].hasPrefix("gw.yaml:3:1: YAML syntax error") || p[0].hasPrefix("gw.yaml:"))
    }

    @Test func missingFile() {
        #expect(problems([:]) == ["gw.yaml:1:1: cannot read config file"])
    }

    @Test func routeChecks() {
        let yaml = """
            upstreams:
              users: {targets: [127.0.0.1:9001]}
            routes:
              - name: a
                match: {path_prefix: api, methods: [get]}
                upstream: users
                strip_prefix: /other
                auth: maybe
                min_plan: gold
                rate_limits: [tenant, galaxy]
            """
        let p = problems(["gw.yaml": yaml])
        #expect(p.contains { $0.hasPrefix("gw.yaml:5:26: match.path_prefix must start with /") })
        #expect(p.contains("gw.yaml:5:41: invalid method 'get' (uppercase letters only)"))
        #expect(p.contains { $0.hasPrefix("gw.yaml:7:19: strip_prefix '/other' must be a path-segment prefix") })
        #expect(p.contains { $0.hasPrefix("gw.yaml:8:11: auth must be one of required, optional, none") })
        #expect(p.contains("gw.yaml:9:15: min_plan names unknown plan 'gold'"))
        #expect(p.contains { $0.hasPrefix("gw.yaml:10:27: unknown rate limit 'galaxy'") })
    }

    @Test func routeMatchHeadersAreReadAsStrings() throws {
        let yaml = """
            upstreams:
              users: {targets: [127.0.0.1:9001]}
            routes:
              - name: v2
                match: {path_prefix: /api/orders, headers: {Accept-Version: 2, X-Beta: "yes", X-Flag: true, X-Ver: 2.10}}
                upstream: users
              - name: orders
                match: {path_prefix: /api/orders}
                upstream: users
            """
        let config = try load(["gw.yaml": yaml]).get()
        // Plain scalars keep their text: `2` is "2", `2.10` is "2.10" (not the number 2.1).
        #expect(
            config.routes[0].headers == [
                .init(name: "Accept-Version", value: "2"), .init(name: "X-Beta", value: "yes"),
                .init(name: "X-Flag", value: "true"), .init(name: "X-Ver", value: "2.10"),
            ])
        #expect(config.routes[1].headers.isEmpty)
    }

    @Test func routeMatchHeadersCannotNameWhatTheGatewayDoesNotPassOn() {
        for name in ["Connection", "Transfer-Encoding", "X-Roles", "x-user-id", "Traceparent", "X-Forwarded-For",
            "X-Real-IP", "X-HTTP-Method-Override", "X-Org", "X-Sig"]
        {
            let yaml = """
                identity: {tenant_header: X-Org, sign_headers: {key_env: GH_SIGN, header: X-Sig}}
                upstreams:
                  users: {targets: [127.0.0.1:9001]}
                routes:
                  - {name: v, match: {path_prefix: /a, headers: {\(name): "2"}}, upstream: users}
                """
            let found = problems(["gw.yaml": yaml])
            #expect(
                found.contains { $0.contains("match.headers cannot name '\(name)'") },
                Comment(rawValue: "\(name): \(found)"))
        }
        let fine = """
            upstreams:
              users: {targets: [127.0.0.1:9001]}
            routes:
              - {name: v, match: {path_prefix: /a, headers: {Accept-Version: "2", X-Client: web}}, upstream: users}
              - {name: m, match: {path_prefix: /b, methods: [GET]}, upstream: users}
            """
        #expect(problems(["gw.yaml": fine]).isEmpty)
        let noMethods = """
            upstreams:
              users: {targets: [127.0.0.1:9001]}
            routes:
              - {name: m, match: {path_prefix: /b, methods: []}, upstream: users}
            """
        #expect(problems(["gw.yaml": noMethods]).contains { $0.contains("match.methods must list at least one method") })
    }

    @Test func routeMatchHeaderProblems() {
        let yaml = """
            upstreams:
              users: {targets: [127.0.0.1:9001]}
            routes:
              - name: empty
                match: {path_prefix: /a, headers: {}}
                upstream: users
              - name: bad
                match:
                  path_prefix: /b
                  headers:
                    Host: api.example.com
                    Bad Name: x
                    X-Version: ""
                    X-List: [1]
                    X-Null: ~
                    X-Space: " 2"
                    X-Ctl: "a\\u0001b"
                    x-version: 3
                upstream: users
              - name: typo
                match: {path_prefix: /c, header: {X-Version: 1}}
                upstream: users
              - name: listed
                match: {path_prefix: /e, headers: [X-Version]}
                upstream: users
            """
        #expect(
            problems(["gw.yaml": yaml]) == [
                "gw.yaml:5:39: route 'empty' match.headers must name at least one header (leave it out to match any headers)",
                "gw.yaml:11:9: route 'bad' match.headers: match on the host with match.host, not a Host header",
                "gw.yaml:12:9: route 'bad' match.headers: invalid header name 'Bad Name' (an HTTP token of at most 128 bytes)",
                "gw.yaml:13:20: route 'bad' match.headers.X-Version must not be empty",
                "gw.yaml:14:17: route 'bad' match.headers.X-List must be a string",
                "gw.yaml:15:17: route 'bad' match.headers.X-Null must be a string",
                "gw.yaml:16:18: route 'bad' match.headers.X-Space starts or ends with whitespace, which a request's value never does",
                "gw.yaml:17:16: route 'bad' match.headers.X-Ctl holds control or non-ASCII characters",
                "gw.yaml:18:9: route 'bad' match.headers names header 'x-version' twice (also as 'X-Version'; names are case-insensitive)",
                "gw.yaml:21:30: unknown key 'header' in route.match",
                "gw.yaml:24:39: route 'listed' match.headers must be a mapping",
            ])
    }

    @Test func routeMatchHeaderLimits() {
        func config(_ headers: String) -> String {
            "upstreams:\n  users: {targets: [127.0.0.1:9001]}\nroutes:\n"
                + "  - {name: r, upstream: users, match: {path_prefix: /r, headers: {\(headers)}}}\n"
        }
        let sixteen = (1...16).map { "X-H\($0): v" }.joined(separator: ", ")
        #expect(problems(["gw.yaml": config(sixteen)]).isEmpty)
        #expect(problems(["gw.yaml": config(sixteen + ", X-H17: v")]) == ["gw.yaml:4:66: route 'r' match.headers names 17 headers; at most 16"])
        let name = String(repeating: "n", count: 128)
        let value = String(repeating: "v", count: 1024)
        #expect(problems(["gw.yaml": config("\(name): \(value)")]).isEmpty)
        #expect(problems(["gw.yaml": config("\(name)n: v")]).first?.contains("invalid header name") == true)
        #expect(problems(["gw.yaml": config("X-V: \(value)v")]).first?.hasSuffix("match.headers.X-V is longer than 1024 bytes") == true)
    }

    @Test func routeMatchHeadersWithUnderscoresNeedThemAllowed() {
        let routes = """
            upstreams:
              users: {targets: [127.0.0.1:9001]}
            routes:
              - name: v2
                match: {path_prefix: /api, headers: {X_Version: 2}}
                upstream: users
            """
        #expect(
            problems(["gw.yaml": routes]) == [
                "gw.yaml:4:5: route 'v2': match.headers names 'X_Version', but headers with _ in the name are dropped "
                    + "(server.underscores_in_headers: drop); rename it or set underscores_in_headers: allow"
            ])
        #expect(problems(["gw.yaml": "server: {underscores_in_headers: allow}\n" + routes]).isEmpty)
    }

    @Test func routesThatCanNeverBeChosenAreReported() {
        let yaml = """
            upstreams:
              users: {targets: [127.0.0.1:9001]}
            routes:
              - {name: a, match: {path_prefix: /api/orders}, upstream: users}
              - {name: b, match: {path_prefix: /api/orders}, upstream: users}
              - {name: v2, match: {path_prefix: /api/orders, headers: {Accept-Version: "2"}}, upstream: users}
              - {name: v2-again, match: {path_prefix: /api/orders, headers: {accept-version: 2}}, upstream: users}
              - {name: v3, match: {path_prefix: /api/orders, headers: {Accept-Version: 3}}, upstream: users}
              - {name: get, match: {path_prefix: /api/items, methods: [GET]}, upstream: users}
              - {name: post, match: {path_prefix: /api/items, methods: [POST]}, upstream: users}
              - {name: both, match: {path_prefix: /api/items, methods: [POST, GET]}, upstream: users}
              - {name: any, match: {path_prefix: /api/items}, upstream: users}
              - {name: some, match: {path_prefix: /api/items, methods: [GET, PUT]}, upstream: users}
              - {name: eu, match: {path_prefix: /api/items, host: eu.example.com}, upstream: users}
              - {name: eu-get, match: {path_prefix: /api/items, host: EU.example.com, methods: [GET]}, upstream: users}
              - {name: things, match: {path_prefix: /api/things, methods: [GET, HEAD]}, upstream: users}
              - {name: things-head, match: {path_prefix: /api/things, methods: [HEAD]}, upstream: users}
              - {name: things-any, match: {path_prefix: /api/things/}, upstream: users}
            """
        // Told apart: other header values, methods the earlier routes lack, another host or prefix, and a route
        // listing methods after one that takes any (it ranks first).
        #expect(
            problems(["gw.yaml": yaml]) == [
                "gw.yaml:5:5: route 'b' can never be chosen: route 'a' (gw.yaml:4) matches the same host, path_prefix "
                    + "and headers and takes any method first",
                "gw.yaml:7:5: route 'v2-again' can never be chosen: route 'v2' (gw.yaml:6) matches the same host, "
                    + "path_prefix and headers and takes any method first",
                "gw.yaml:11:5: route 'both' can never be chosen: routes 'get' (gw.yaml:9), 'post' (gw.yaml:10) match "
                    + "the same host, path_prefix and headers and take all of its methods first",
                "gw.yaml:17:5: route 'things-head' can never be chosen: route 'things' (gw.yaml:16) matches the same "
                    + "host, path_prefix and headers and takes all of its methods first",
            ])
    }

    @Test func jwtIssuerGuardsAgainstAlgorithmConfusion() {
        let yaml = """
            identity:
              jwt:
                issuers:
                  - issuer: https://a/
                    algorithms: [HS256, RS256]
                    secret_env: S
                  - issuer: https://b/
                    algorithms: [none]
                    secret_env: S
            """ + "\n" + minimal
        let p = problems(["gw.yaml": yaml])
        #expect(p.contains("gw.yaml:5:21: an issuer may not mix HS* with RS*/ES* algorithms (algorithm confusion)"))
        #expect(p.contains { $0.hasPrefix("gw.yaml:8:22: unsupported algorithm 'none'") })
    }
}
