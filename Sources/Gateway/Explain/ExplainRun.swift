import HTTPWire
import NIOCore
import NIOHTTP1
import Policy
import Redis
import Upstream

/// One `explain` on its event loop: the proxy's phases run over a context of their own, each outcome described
/// as it comes. The limiter is never called: the charge's levels are read, not taken.
final class ExplainRun: PhaseResumer {
    private let setup: Explainer.Setup
    private let eventLoop: EventLoop
    private let loop: LoopState
    private let ctx: RequestContext
    private let phases: RequestPhases
    private let promise: EventLoopPromise<Explanation>
    private var out: Explanation
    /// The bearer token's verification, as the verifier answers it (for the identity checks).
    private var verified: VerifiedToken?
    /// The caller as the authenticate phase resolved it (also when refused for its roles or scopes).
    private var shown = Caller()
    /// The tenant's open tunnels, as read with the charge's levels (nil: not read).
    private var tunnelsOpen: Int?

    private var snapshot: RuntimeSnapshot { setup.snapshot }
    private var config: GatewayConfig { setup.snapshot.config }

    init(_ setup: Explainer.Setup, eventLoop: EventLoop) {
        self.setup = setup
        self.eventLoop = eventLoop
        self.promise = eventLoop.makePromise()
        let request = setup.request
        // A limiter and tunnel registry of its own, in memory, that nothing calls.
        loop = LoopState(
            eventLoop: eventLoop, loopCount: 1, snapshot: setup.snapshot, logger: setup.logger,
            limiterBackend: .memory(MemoryLimits()),
            limits: LimitSettings(keys: setup.keys, fallback: MemoryLimits(), failOpen: true), audit: nil,
            clock: setup.clock, keyRefetch: setup.keyRefetch)
        var head = HTTPRequestHead(version: .http1_1, method: HTTPMethod(rawValue: request.method), uri: request.target)
        for (name, value) in request.headers { head.headers.add(name: name, value: value) }
        // The parser's framing rule, as the proxy's parser applies it to a head.
        let framing = HTTP1Framing.decide(versionMinor: 1, headers: request.headers.map { (name: $0.0, value: $0.1) })
        ctx = RequestContext(requestID: "explain", head: head, parsedFraming: framing, start: .now())
        phases = RequestPhases(loop: loop, clientAddress: request.clientAddress, scheme: request.scheme)
        out = Explanation(
            request: .init(
                method: request.method, target: request.target, host: head.headers.first(name: "host"),
                scheme: request.scheme, headers: request.headers.map(\.0), body: "none"))
        out.notes = setup.notes
    }

    func start() -> EventLoopFuture<Explanation> {
        let validated = phases.validate(ctx)
        note("validate", validated)
        if case .deny(let denial) = validated { return finish(denial) }
        switch ctx.framing {
        case .none: out.request.body = "none"
        case .contentLength(let n): out.request.body = "\(n) bytes"
        case .chunked: out.request.body = "chunked"
        }
        let routed = phases.route(ctx)
        describeRoute(routed)
        note("route", routed, local: ctx.local != nil)
        if case .deny(let denial) = routed { return finish(denial) }
        if ctx.local != nil { return finish(nil) }
        let authenticated = phases.authenticate(ctx, resumer: self)
        if case .await = authenticated { return promise.futureResult }
        return authenticatedThen(authenticated)
    }

    /// The authenticate phase waited for an early key-set refetch and finished (the only phase explain lets
    /// wait).
    func resume(_ ctx: RequestContext, _ outcome: RequestPhases.Outcome) {
        _ = authenticatedThen(outcome)
    }

    private func authenticatedThen(_ authenticated: RequestPhases.Outcome) -> EventLoopFuture<Explanation> {
        describeIdentity(authenticated)
        note("authenticate", authenticated)
        if case .deny(let denial) = authenticated { return finish(denial) }
        let gated = phases.gate(ctx)
        describeGates(gated)
        note("gate", gated)
        if case .deny(let denial) = gated { return finish(denial) }
        readCharge().assumeIsolated().whenComplete { result in
            switch result {
            case .success(let denial?): _ = self.finish(denial)
            case .success(nil): _ = self.afterCharge()
            case .failure(let error): self.promise.fail(error)
            }
        }
        return promise.futureResult
    }

    private func afterCharge() -> EventLoopFuture<Explanation> {
        if let denial = describeTunnel() { return finish(denial) }
        // The audit queue is not reserved (nothing is recorded); the forward phase builds the upstream request
        // and goes no further: a connection is taken only by the proxy handler, which explain has none of.
        let forwarded = phases.forward(ctx)
        note("forward", forwarded)
        if case .deny(let denial) = forwarded { return finish(denial) }
        if let route = ctx.route, let head = ctx.upstreamHead {
            var identity: [String: String] = [:]
            for name in ["X-Tenant-ID", "X-User-ID", "X-Plan", "X-Roles"] {
                if let v = head.headers.first(name: name) { identity[name] = v }
            }
            out.upstream = .init(
                name: route.upstream, targets: config.upstreams[route.upstream]?.targets.map(\.description) ?? [],
                request: "\(head.method.rawValue) \(head.uri)", identityHeaders: identity)
        }
        return finish(nil)
    }

    // MARK: Phases

    private func note(_ phase: String, _ outcome: RequestPhases.Outcome, local: Bool = false) {
        let text: String
        switch outcome {
        case .next: text = local ? "local" : "next"
        case .deny: text = "deny"
        case .await: text = "await"
        }
        out.phases.append(.init(phase: phase, outcome: text))
    }

    /// The method the router matched by: a CORS preflight's is the one it asks about, when a `cors` route takes it.
    private func routedMethod() -> String {
        if let preflight = RequestPhases.preflight(ctx.head), let route = ctx.route, route.cors != nil,
            let i = snapshot.router.match(host: ctx.host, path: ctx.path, method: preflight.method, headers: { ctx.head.headers[$0] }),
            config.routes[i].name == route.name
        {
            return preflight.method
        }
        return ctx.head.method.rawValue
    }

    private func describeRoute(_ outcome: RequestPhases.Outcome) {
        if ctx.local == .billingWebhook {
            out.route = .init(
                name: ctx.routeName, pathPrefix: String(ctx.path), host: nil, methods: ["POST"], upstream: "-",
                auth: "none", why: "billing.webhook_path: the gateway's billing webhook, checked by its signature",
                local: "billing_webhook", checks: [])
            return
        }
        let method = routedMethod()
        out.nearMisses = snapshot.router.nearMisses(host: ctx.host, path: ctx.path, method: method, headers: { ctx.head.headers[$0] }).map {
            .init(route: config.routes[$0.index].name, reason: $0.reason)
        }
        guard let route = ctx.route else { return }
        var why = "path_prefix \(route.pathPrefix)"
        if let host = route.host { why += ", host \(host)" }
        why += ", methods \(route.methods?.joined(separator: ",") ?? "any")"
        if !route.headers.isEmpty { why += ", headers " + route.headers.map { "\($0.name): \($0.value)" }.joined(separator: "; ") }
        var checks: [Explanation.Check] = []
        if method != ctx.head.method.rawValue {
            checks.append(.init("preflight", .info, "matched by the method it asks about, \(method)"))
        }
        if ctx.websocket {
            checks.append(
                route.websocket
                    ? .init("websocket", .ok, "a WebSocket handshake, and the route takes them")
                    : .init("websocket", .failed, "a WebSocket handshake, and the route does not take them (websocket: false)"))
        }
        if route.cors != nil {
            let origin = ctx.head.headers.first(name: "origin")
            if ctx.local == .preflight {
                checks.append(.init("cors", .ok, "preflight from \(origin ?? "-") allowed: answered 204 by the gateway, not forwarded"))
            } else if case .deny(let denial) = outcome, denial.code == "cors_rejected" {
                checks.append(.init("cors", .failed, denial.detail))
            } else if let origin {
                let allowed = ctx.corsHeaders.contains { $0.0.lowercased() == "access-control-allow-origin" }
                checks.append(
                    allowed
                        ? .init("cors", .ok, "origin \(origin) is allowed")
                        : .init("cors", .info, "origin \(origin) is not allowed: responses carry no Access-Control-Allow-Origin"))
            }
        }
        out.route = .init(
            name: route.name, pathPrefix: route.pathPrefix, host: route.host, methods: route.methods,
            headers: route.headers.isEmpty ? nil : route.headers.map { "\($0.name): \($0.value)" },
            upstream: route.upstream, auth: route.auth.rawValue, why: why,
            local: ctx.local == .preflight ? "cors_preflight" : nil, checks: checks)
    }

    private func describeIdentity(_ outcome: RequestPhases.Outcome) {
        guard let route = ctx.route else { return }
        var denial: Denial? = nil
        if case .deny(let d) = outcome { denial = d }
        let identity = snapshot.identity.config
        let headers = ctx.head.headers
        var checks: [Explanation.Check] = []
        var keyOwner: (tenant: String, id: String)? = nil
        if route.auth == .none {
            checks.append(.init("credentials", .skipped, "auth: none: credentials are not looked at"))
        } else {
            let authorization = headers["authorization"]
            let apiKeys = headers[identity.apiKeyHeader]
            if authorization.count > 1 || apiKeys.count > 1 {
                checks.append(.init("credentials", .failed, "several credentials of one kind were sent"))
            } else {
                if let value = authorization.first {
                    if let token = IdentityResolver.bearerToken(value) {
                        checks += tokenChecks(token)
                    } else {
                        checks.append(.init("bearer token", .failed, "Authorization is not a Bearer token"))
                    }
                }
                if let key = apiKeys.first {
                    if key.utf8.count <= IdentityResolver.maxAPIKeyBytes,
                        let owner = snapshot.tenants.apiKeyOwner(sha256Hex: Digest.hex(Digest.sha256(key.utf8)))
                    {
                        keyOwner = (owner.tenant, owner.key.id)
                        var detail = "key \(owner.key.id) of tenant \(owner.tenant)"
                        if !owner.key.scopes.isEmpty { detail += "; scopes \(owner.key.scopes.joined(separator: " "))" }
                        if !owner.key.roles.isEmpty { detail += "; roles \(owner.key.roles.joined(separator: ","))" }
                        checks.append(.init("api key", .ok, detail))
                    } else {
                        checks.append(.init("api key", .failed, "no tenant holds this key (compared by SHA-256; revoked keys never match)"))
                    }
                }
                if authorization.isEmpty && apiKeys.isEmpty {
                    checks.append(
                        route.auth == .required
                            ? .init("credentials", .failed, "none sent; the route requires a bearer token or an API key")
                            : .init("credentials", .info, "none sent: an anonymous caller (auth: optional)"))
                }
            }
        }
        // Refused for its roles or scopes, the phase still resolved who the caller is.
        shown = ctx.caller
        if shown.credential == .token, keyOwner != nil {
            checks.append(
                .init("credential", .info, "the bearer token authenticates: its roles and scopes apply, the API key's do not"))
        }
        if let roles = route.roles {
            let have = shown.roles.isEmpty ? "none" : shown.roles.joined(separator: ",")
            if denial?.code == "forbidden" {
                checks.append(.init("roles", .failed, "needs one of \(roles.joined(separator: ",")); the caller has \(have)"))
            } else if denial == nil || denial?.code == "insufficient_scope" {
                checks.append(.init("roles", .ok, "needs one of \(roles.joined(separator: ",")); the caller has \(have)"))
            } else {
                checks.append(.init("roles", .skipped))
            }
        }
        if let scopes = route.scopes {
            let needs = "needs all of \(scopes.joined(separator: " ")); the caller has "
                + (shown.scopes.isEmpty ? "none" : shown.scopes.joined(separator: " "))
            if denial?.code == "insufficient_scope" {
                let missing = Scopes.missing(scopes, have: shown.scopes)
                checks.append(.init("scopes", .failed, needs + " (missing \(missing.joined(separator: " ")))"))
            } else if denial == nil {
                checks.append(.init("scopes", .ok, needs))
            } else {
                checks.append(.init("scopes", .skipped))
            }
        }
        if let denial, denial.code == "unauthenticated", !checks.contains(where: { $0.result == .failed }) {
            checks.append(.init("credentials", .failed, denial.detail))
        }
        // What was accepted; refused before the caller was resolved, what was presented.
        var credential: String
        switch shown.credential {
        case .none: credential = "none"
        case .token: credential = "token"
        case .apiKey: credential = "api_key"
        }
        if denial != nil && shown.credential == .none && route.auth != .none {
            if headers["authorization"].first.flatMap(IdentityResolver.bearerToken) != nil {
                credential = "token"
            } else if !headers[identity.apiKeyHeader].isEmpty {
                credential = "api_key"
            }
        }
        out.identity = .init(
            auth: route.auth.rawValue, credential: credential, user: shown.user, roles: shown.roles, scopes: shown.scopes,
            checks: checks)
        // Refused credentials name no tenant; every other outcome of the phase went through tenant resolution
        // (a malformed tenant header is its first check).
        if denial?.code != "unauthenticated" { describeTenant(denial, keyOwner: keyOwner) }
    }

    /// The verifier's checks of a bearer token, in its order: passed up to the one that failed.
    private func tokenChecks(_ token: String) -> [Explanation.Check] {
        let now = ctx.wallNow(loop.clock)
        // What the token says of itself (unverified), to name what is checked.
        let parts = token.split(separator: ".", omittingEmptySubsequences: false)
        func object(_ part: Int) -> [String: JSONValue] {
            guard parts.count > part, let bytes = Base64URL.decode(parts[part].utf8), case .object(let o)? = JSONValue.parse(bytes)
            else { return [:] }
            return o
        }
        let header = object(0)
        let claims = object(1)
        let iss = claims["iss"]?.string
        let issuer = config.identity.issuers.first { $0.issuer == iss }
        var checks: [Explanation.Check] = [
            .init(
                "bearer token", .info,
                "alg \(header["alg"]?.string ?? "?"), kid \(header["kid"]?.string ?? "-"), iss \(iss ?? "?")")
        ]
        let result = snapshot.verifier.verify(token, now: now)
        var failed: JWTError? = nil
        switch result {
        case .success(let v): verified = v
        case .failure(let e): failed = e
        }
        let order = JWTError.checks
        let failIndex = failed.flatMap { order.firstIndex(of: $0.check) } ?? order.count
        for (i, name) in order.enumerated() {
            if i == failIndex {
                checks.append(.init(name, .failed, failed?.detail ?? ""))
            } else if i > failIndex || (name == "issuer" && issuer == nil) {
                checks.append(.init(name, .skipped))
            } else {
                checks.append(.init(name, .ok, passDetail(name, issuer: issuer, claims: claims, now: now)))
            }
        }
        return checks
    }

    private func passDetail(_ check: String, issuer: IssuerConfig?, claims: [String: JSONValue], now: Double) -> String {
        guard let issuer else { return "" }
        switch check {
        case "issuer":
            return issuer.issuer
        case "key":
            if issuer.secretEnv != nil { return "HS secret from $\(issuer.secretEnv!)" }
            if issuer.secretFile != nil { return "HS secret from \(issuer.secretFile!)" }
            if let url = issuer.jwksURL { return "key set from \(url), fetched now" }
            if issuer.discovery { return "key set found through \(issuer.issuer).well-known/openid-configuration, fetched now" }
            if let file = issuer.jwksFile { return "key set from \(file)" }
            return issuer.publicKeyFile.map { "key from \($0)" } ?? ""
        case "exp":
            guard let exp = claims["exp"]?.number else { return "" }
            let left = Int((exp - now).rounded(.down))
            return left >= 0 ? "expires in \(left) s" : "expired \(-left) s ago, within the leeway"
        case "aud":
            return issuer.audiences.isEmpty ? "no audience configured" : "one of \(issuer.audiences.joined(separator: ","))"
        default:
            return ""
        }
    }

    private func describeTenant(_ denial: Denial?, keyOwner: (tenant: String, id: String)?) {
        guard let route = ctx.route else { return }
        let identity = snapshot.identity.config
        let named = ctx.head.headers[identity.tenantHeader]
        var checks: [Explanation.Check] = []
        if !named.isEmpty {
            checks.append(
                .init(
                    "tenant header", .info,
                    "\(identity.tenantHeader): \(named.joined(separator: ", ")) (header_tenancy \(identity.headerTenancy.rawValue))"))
        }
        let tokenTenant = verified?.tenant
        let claim = config.identity.issuers.first { $0.issuer == verified?.issuer }?.tenantClaim
        if let denial, ["tenant_required", "tenant_mismatch", "unknown_tenant", "bad_request"].contains(denial.code) {
            var sources: [String] = []
            if let t = tokenTenant { sources.append("the token's \(claim ?? "tenant claim") names \(t)") }
            if let k = keyOwner { sources.append("API key \(k.id) belongs to \(k.tenant)") }
            if !named.isEmpty { sources.append("\(identity.tenantHeader) names \(named.joined(separator: ", "))") }
            if !sources.isEmpty { checks.append(.init("sources", .info, sources.joined(separator: "; "))) }
            let name: String
            switch denial.code {
            case "unknown_tenant": name = "known"
            case "tenant_mismatch": name = "sources agree"
            case "bad_request": name = "tenant header"
            default: name = "resolved"
            }
            checks.append(.init(name, .failed, denial.detail))
            out.tenant = .init(id: nil, source: "not resolved", record: nil, plan: nil, status: nil, checks: checks)
            return
        }
        guard let tenant = shown.tenant else {
            let why =
                route.auth == .none
                ? "a public route (auth: none): only a header names a tenant, with header_tenancy always"
                : (shown.credential == .none ? "an anonymous caller" : "no credential names one")
            out.tenant = .init(id: nil, source: why, record: nil, plan: nil, status: nil, checks: checks)
            return
        }
        let source: String
        if let t = tokenTenant, t == tenant, shown.credential == .token {
            source = "from token claim \(claim ?? "tenant")"
        } else if let k = keyOwner, k.tenant == tenant {
            source = "from API key \(k.id)'s owner"
        } else {
            source = "from header \(identity.tenantHeader), header_tenancy \(identity.headerTenancy.rawValue)"
            checks.removeAll { $0.name == "tenant header" }
        }
        let effective = snapshot.tenants.effective(tenant)
        out.tenant = .init(
            id: tenant, source: source, record: effective?.source.rawValue, plan: effective?.record.plan,
            status: effective?.record.status, checks: checks)
    }

    private func describeGates(_ outcome: RequestPhases.Outcome) {
        guard let route = ctx.route else { return }
        var denial: Denial? = nil
        if case .deny(let d) = outcome { denial = d }
        var checks: [(name: String, detail: String)] = []
        var failedCheck: String? = nil
        let record = ctx.caller.record
        if let record, ctx.caller.tenant != nil {
            checks.append(("subscription", subscriptionDetail(record)))
            let order = config.planOrder
            if let minPlan = route.minPlan {
                checks.append(("min_plan", "needs \(minPlan) or above; the tenant is on \(record.plan)"))
            }
            if let feature = route.feature {
                let features = config.plans[record.plan]?.features ?? []
                checks.append(("feature", "\(feature); plan \(record.plan) has \(features.isEmpty ? "none" : features.joined(separator: ","))"))
            }
            switch denial?.code {
            case "tenant_suspended", "tenant_cancelled", "payment_required": failedCheck = "subscription"
            case "plan_required":
                let below = route.minPlan.map { (order.firstIndex(of: record.plan) ?? -1) < (order.firstIndex(of: $0) ?? Int.max) } ?? false
                failedCheck = below ? "min_plan" : "feature"
            default: break
            }
        } else if route.minPlan != nil || route.feature != nil {
            checks.append(("tenant", "the route is gated by plan (min_plan / feature) and needs a tenant"))
            if denial != nil { failedCheck = "tenant" }
        }
        let limit = ctx.bodyLimit == Int.max ? "none" : "\(ctx.bodyLimit) bytes"
        switch ctx.framing {
        case .none: checks.append(("body", "none; limit \(limit)"))
        case .contentLength(let n): checks.append(("body", "\(n) bytes; limit \(limit)"))
        case .chunked: checks.append(("body", "chunked, counted as it streams; limit \(limit)"))
        }
        if denial?.code == "payload_too_large" { failedCheck = "body" }
        var result: [Explanation.Check] = []
        var past = false
        for check in checks {
            if past {
                result.append(.init(check.name, .skipped))
            } else if check.name == failedCheck {
                result.append(.init(check.name, .failed, denial?.detail ?? check.detail))
                past = true
            } else {
                result.append(.init(check.name, .ok, check.detail))
            }
        }
        for (name, value) in ctx.responseHeaders { result.append(.init("response header", .info, "\(name): \(value)")) }
        out.gates = .init(plan: record?.plan, status: record?.status, checks: result)
    }

    private func subscriptionDetail(_ record: TenantRecord) -> String {
        switch record.status {
        case "trialing": return "trialing until \(record.trialEnds ?? "(no end)")"
        case "past_due":
            let grace = Double(config.billing?.gracePeriod ?? 7 * 86_400_000_000_000) / 1e9
            let since = record.pastDueSinceAt.map { CivilDate.rfc3339(epochSeconds: $0) } ?? "(unknown)"
            return "past_due since \(since); grace \(Int(grace / 86_400)) d"
        default: return record.status
        }
    }

    // MARK: Charge

    /// What the store holds for a charge: bucket states (nil: never charged, full), the quota counter, the
    /// store's clock, the tenant's open tunnels. Nil members could not be read.
    private struct Levels: Sendable {
        var buckets: [TokenBucket?]?
        var quotaUsed: Int?
        var now: Double?
        var tunnels: Int?
        var from: String
    }

    /// Works out the charge and reads its levels; the would-be limiter denial, if any.
    private func readCharge() -> EventLoopFuture<Denial?> {
        let now = ctx.wallNow(loop.clock)
        guard let route = ctx.route, let record = ctx.caller.record,
            let charge = RatePolicy.charge(route: route, caller: ctx.caller, record: record, config: config, now: now)
        else {
            out.phases.append(.init(phase: "charge", outcome: "skipped"))
            out.charge = .init(
                store: setup.storeKind, levels: "not read", buckets: [], quota: nil, verdict: "admit", headers: nil,
                checks: [.init("charge", .skipped, "no tenant: nothing is charged")])
            return eventLoop.makeSucceededFuture(nil)
        }
        ctx.plan = charge.plan
        return readLevels(charge, record: record).assumeIsolated().map { levels in
            let denial = self.describeCharge(charge, record: record, levels, now: now)
            self.out.phases.append(.init(phase: "charge", outcome: denial == nil ? "next" : "deny"))
            return denial
        }.nonisolated()
    }

    private func tunnelLimit(_ record: TenantRecord) -> Int? {
        ctx.websocket ? (record.maxWebsocketsOverride ?? config.plans[record.plan]?.maxWebsockets) : nil
    }

    private func readLevels(_ charge: Charge, record: TenantRecord) -> EventLoopFuture<Levels> {
        let keys = setup.keys
        if let redis = setup.redis {
            var calls: [EventLoopFuture<RedisReply>] = [redis.send(["TIME"])]
            for b in charge.buckets { calls.append(redis.send(["HMGET", keys.bucket(charge.tenant, b.name), "tk", "ts"])) }
            calls.append(redis.send(["GET", keys.quota(charge.tenant, charge.period)]))
            let tunnels = tunnelLimit(record) != nil
            if tunnels { calls.append(redis.send(["ZRANGE", TunnelSlots.key(keys, charge.tenant), "0", "-1", "WITHSCORES"])) }
            let n = charge.buckets.count
            let storeKind = setup.storeKind
            return EventLoopFuture.whenAllComplete(calls, on: eventLoop).map { results in
                let replies = results.map { try? $0.get() }
                guard case .array(let time)? = replies[0], time.count == 2, let s = time[0].string.flatMap(Double.init),
                    let us = time[1].string.flatMap(Double.init)
                else {
                    return Levels(buckets: nil, quotaUsed: nil, now: nil, tunnels: nil, from: "unknown: the store did not answer")
                }
                let storeNow = s + us / 1e6
                var buckets: [TokenBucket?] = []
                var complete = true
                for i in 0..<n {
                    guard case .array(let pair)? = replies[1 + i], pair.count == 2 else {
                        complete = false
                        continue
                    }
                    if let tk = pair[0].string.flatMap(Double.init), let ts = pair[1].string.flatMap(Double.init) {
                        buckets.append(TokenBucket(tokens: tk, updated: ts))
                    } else {
                        buckets.append(nil)  // never charged, or expired when full again: a full bucket
                    }
                }
                var used: Int? = nil
                switch replies[1 + n] {
                case .string(let b)?: used = Int(String(decoding: b, as: UTF8.self))
                case .null?: used = 0
                default: complete = false
                }
                var open: Int? = nil
                if tunnels, case .array(let items)? = replies[2 + n] {
                    // Members scored by the time (ms) they expire at; the expired ones no longer count.
                    let nowMs = storeNow * 1000
                    open = stride(from: 1, to: items.count, by: 2).filter { (items[$0].string.flatMap(Double.init) ?? 0) > nowMs }.count
                }
                return Levels(
                    buckets: complete ? buckets : nil, quotaUsed: used, now: storeNow, tunnels: open,
                    from: complete ? "read from \(storeKind) (no write)" : "partly unknown: the store did not answer every read")
            }
        }
        if setup.storeReachable == false, config.store != nil {
            return eventLoop.makeSucceededFuture(Levels(buckets: nil, quotaUsed: nil, now: nil, tunnels: nil, from: "unknown: the store did not answer"))
        }
        // The embedded store: the serving process holds the levels; its admin API tells the quota counter.
        let periodStart = CivilDate.rfc3339(charge.period.start)
        let unknown = "unknown: the embedded store's buckets live in the serving process"
        guard let admin = setup.admin else {
            return eventLoop.makeSucceededFuture(
                Levels(buckets: nil, quotaUsed: nil, now: nil, tunnels: nil, from: unknown + " (its quota too: reading it needs server.admin_listen and the admin token's variable set here)"))
        }
        return HTTPFetch.get(
            address: admin.address, hostHeader: admin.host, path: "/admin/tenants/\(charge.tenant)/usage", on: eventLoop,
            timeout: .seconds(2), userAgent: "gatehouse-explain", headers: [("Authorization", "Bearer \(admin.token)")]
        ).map { response -> Levels in
            guard response.status == 200, case .object(let doc)? = JSONValue.parse(response.body), let used = doc["used"]?.number else {
                return Levels(buckets: nil, quotaUsed: nil, now: nil, tunnels: nil, from: unknown + " (the admin API answered \(response.status) for the quota)")
            }
            // The serving process counts by its own record, which admin writes may have changed.
            guard doc["period_start"]?.string == periodStart else {
                return Levels(
                    buckets: nil, quotaUsed: nil, now: nil, tunnels: nil,
                    from: unknown + " (the serving process counts the quota over another period: its record differs from the seed)")
            }
            return Levels(buckets: nil, quotaUsed: Int(used), now: nil, tunnels: nil, from: unknown + "; quota from its admin API")
        }.recover { error in
            Levels(buckets: nil, quotaUsed: nil, now: nil, tunnels: nil, from: unknown + " (admin API not reached: \(error))")
        }
    }

    /// The charge's buckets and quota with their levels, and the verdict the limiter's arithmetic gives on a
    /// copy of them.
    private func describeCharge(_ charge: Charge, record: TenantRecord, _ levels: Levels, now: Double) -> Denial? {
        let keys = setup.keys
        let specs = charge.buckets.map(\.spec)
        let storeNow = levels.now ?? now
        var buckets: [Explanation.Bucket] = []
        for (i, b) in charge.buckets.enumerated() {
            var tokens: Double? = nil
            if let states = levels.buckets {
                tokens = (states[i] ?? .full(b.spec, now: storeNow)).refilled(b.spec, now: storeNow).tokens
            }
            buckets.append(
                .init(
                    name: b.name, key: keys.bucket(charge.tenant, b.name), ratePerSecond: b.spec.ratePerSecond,
                    burst: b.spec.burst, tokens: tokens))
        }
        let quotaPer: String
        switch record.quotaOverride ?? config.plans[record.plan]?.quota ?? .unlimited {
        case .limited(_, let per): quotaPer = per.rawValue
        case .unlimited: quotaPer = "month"
        }
        let quota = Explanation.Quota(
            limit: charge.quotaLimit, per: quotaPer, used: levels.quotaUsed, periodStart: CivilDate.rfc3339(charge.period.start),
            periodEnd: CivilDate.rfc3339(charge.period.end), key: keys.quota(charge.tenant, charge.period))
        var checks: [Explanation.Check] = []
        var verdict: String
        var outcome: LimitOutcome? = nil
        if config.store != nil && !setup.storeReachable {
            // What the limiter does when its store fails.
            if config.store?.onFailure == .closed {
                outcome = .storeUnavailable
                verdict = "store_unavailable"
            } else {
                verdict = "admit"
                checks.append(.init("on_failure", .info, "open: admitted through a local bucket, the quota unenforced"))
            }
        } else if levels.buckets != nil || levels.quotaUsed != nil {
            // The limiter's own arithmetic, on a copy: buckets not read count as full.
            var copy = levels.buckets ?? Array(repeating: nil, count: specs.count)
            let r = LimitMath.take(
                buckets: &copy, specs: specs, quotaUsed: levels.quotaUsed ?? 0, quotaLimit: charge.quotaLimit, want: 1,
                now: storeNow)
            let o = LimitOutcome(r, charge, now: now)
            switch o.verdict {
            case .admit: verdict = levels.buckets != nil || charge.buckets.isEmpty ? "admit" : "unknown"
            case .rateLimited: verdict = "rate_limited"
            case .quotaExceeded: verdict = "quota_exceeded"
            case .storeUnavailable: verdict = "store_unavailable"
            }
            if verdict == "unknown" && o.verdict == .admit {
                checks.append(.init("quota", .ok, "within the quota; admitted if the buckets hold a token"))
            } else {
                outcome = o
            }
        } else {
            verdict = charge.buckets.isEmpty && charge.quotaLimit == nil ? "admit" : "unknown"
        }
        if config.store?.rateLimitMode == .leased && setup.redis != nil && !charge.buckets.isEmpty {
            checks.append(
                .init(
                    "leases", .info,
                    "rate_limit_mode leased: up to \(RateLimiter.leaseSize(charge)) units per event loop of each instance may be "
                        + "taken and not yet spent (gone from the levels here)"))
        }
        var headers: [String: Int]? = nil
        if let h = outcome?.headers { headers = ["limit": h.limit, "remaining": h.remaining, "reset": h.reset] }
        out.charge = .init(
            store: setup.storeKind, levels: levels.from, buckets: buckets, quota: quota, verdict: verdict, headers: headers,
            checks: checks)
        tunnelsOpen = levels.tunnels
        return outcome.flatMap { RequestPhases.limitDenial($0) }
    }

    /// A WebSocket handshake's place among the tenant's tunnels (`max_websockets`); the would-be denial.
    private func describeTunnel() -> Denial? {
        guard ctx.websocket, let record = ctx.caller.record, ctx.caller.tenant != nil else { return nil }
        guard let limit = tunnelLimit(record) else {
            out.tunnel = [.init("max_websockets", .info, "none: tunnels are not counted")]
            out.phases.append(.init(phase: "admitTunnel", outcome: "skipped"))
            return nil
        }
        guard let open = tunnelsOpen else {
            out.tunnel = [.init("max_websockets", .info, "\(limit); open tunnels not readable (they live in the serving process or an unreachable store)")]
            out.phases.append(.init(phase: "admitTunnel", outcome: "next"))
            return nil
        }
        let full = open >= limit
        out.tunnel = [.init("max_websockets", full ? .failed : .ok, "\(open) of \(limit) open")]
        out.phases.append(.init(phase: "admitTunnel", outcome: full ? "deny" : "next"))
        return full ? .tooManyConnections(limit: limit) : nil
    }

    // MARK: Decision

    private func finish(_ denial: Denial?) -> EventLoopFuture<Explanation> {
        let method = ctx.head.method.rawValue
        if let audit = setup.config.audit, !audit.sinks.isEmpty {
            if denial != nil {
                out.audit = [.init("record", audit.denials ? .ok : .info, audit.denials ? "a denial, recorded as audit.denials is on" : "a denial, not recorded as audit.denials is off")]
            } else if ctx.local == nil, ctx.websocket || audit.methods.contains(method) {
                out.audit = [.init("record", .ok, ctx.websocket ? "a WebSocket tunnel: recorded when it closes" : "\(method) is in audit.methods: recorded")]
            } else {
                out.audit = [.init("record", .info, "not recorded (\(method) is not in audit.methods)")]
            }
        }
        if let denial {
            out.decision = .init(allow: false, status: denial.status, code: denial.code, detail: denial.detail)
        } else if ctx.local == .preflight {
            out.decision = .init(allow: true, status: 204, code: nil, detail: "the gateway answers the CORS preflight itself")
        } else if ctx.local == .billingWebhook {
            out.decision = .init(
                allow: true, status: 200, code: nil,
                detail: "the gateway's billing webhook handler (its signature check is not explained)")
        } else {
            var detail = "upstream \(ctx.route?.upstream ?? "-")"
            if let verdict = out.charge?.verdict, verdict == "unknown" { detail += " (if the buckets hold a token: levels unknown)" }
            out.decision = .init(allow: true, status: 200, code: nil, detail: detail)
        }
        promise.succeed(out)
        return promise.futureResult
    }
}

@available(*, unavailable)
extension ExplainRun: Sendable {}
