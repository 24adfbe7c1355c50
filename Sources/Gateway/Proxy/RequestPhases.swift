import HTTPWire
import NIOCore
import NIOHTTP1
import Policy
import Upstream

/// The request path before forwarding, as ordered steps over one ``RequestContext`` (the shape of pingora's
/// proxy phases): validate → route → authenticate (credentials and tenant) → gate → charge → reserve the
/// audit record's place → forward. Each returns `next`, `deny` or `await` (it calls `resume` later, on the
/// loop). The remaining steps, respond and record, are the ``ProxyHandler``'s: they follow the upstream's
/// response and the exchange's end.
/// Where a phase that awaited hands its outcome (the ``ProxyHandler``, which ignores it once the exchange ended).
protocol PhaseResumer: AnyObject {
    func resume(_ ctx: RequestContext, _ outcome: RequestPhases.Outcome)
}

struct RequestPhases {
    enum Outcome {
        case next
        case deny(Denial)
        /// The phase finishes later through its `resume` callback.
        case await
    }

    let loop: LoopState
    let clientAddress: String
    /// `http`, or `https` on the TLS listener (`X-Forwarded-Proto`).
    let scheme: String
    /// The peer is a trusted balancer whose PROXY header named no client: its connection's `X-Forwarded-*`
    /// headers came from the client through an L4 hop and are replaced, not believed.
    var forwardingUntrusted = false

    /// Runs `ctx.phase`; a phase that awaits finishes through `resumer` (on the loop).
    func run(_ ctx: RequestContext, resumer: some PhaseResumer) -> Outcome {
        switch ctx.phase {
        case .validate: return validate(ctx)
        case .route: return route(ctx)
        case .authenticate: return ctx.local == nil ? authenticate(ctx, resumer: resumer) : .next
        case .gate: return ctx.local == nil ? gate(ctx) : bodyFits(ctx)
        case .charge: return ctx.local == nil ? charge(ctx, resumer: resumer) : .next
        case .admitTunnel: return ctx.websocket ? admitTunnel(ctx, resumer: resumer) : .next
        case .reserveAudit: return reserveAudit(ctx, resumer: resumer)
        case .forward: return ctx.local == nil ? forward(ctx) : .next
        }
    }

    /// Framing and request line (smuggling defences), then the body limit's first check.
    func validate(_ ctx: RequestContext) -> Outcome {
        let snapshot = loop.snapshot
        switch RequestValidation.check(ctx.head, framing: ctx.parsedFraming, maxHeaderBytes: snapshot.config.server.maxHeaderBytes) {
        case .failure(let denial):
            return .deny(denial)
        case .success(let checked):
            ctx.framing = checked.framing
            ctx.host = checked.host
            ctx.path = checked.path
            ctx.query = checked.query
            ctx.expectContinue = checked.expectContinue && ctx.head.version.minor == 1
            ctx.websocket = checked.websocket
            ctx.bodyLimit = snapshot.config.server.maxBodyBytes
            // Who the client is: the peer, or through trusted proxies the rightmost untrusted forwarded address.
            if !snapshot.config.server.trustedProxies.isEmpty && !forwardingUntrusted {
                let resolved = ClientAddress.resolve(
                    peer: clientAddress, forwardedFor: ctx.head.headers["x-forwarded-for"],
                    trusted: snapshot.config.server.trustedProxies)
                ctx.clientAddress = resolved.client
                ctx.peerTrusted = resolved.peerTrusted
            }
            return .next
        }
    }

    /// The route; on a route with `cors`, also the CORS headers of every response to the request and, for a
    /// preflight, the gateway's own answer (``CORSPolicy``).
    func route(_ ctx: RequestContext) -> Outcome {
        let matched = matchRoute(ctx)
        guard case .next = matched, let cors = ctx.route?.cors else { return matched }
        let headers = ctx.head.headers
        // From here on every response to this request carries the route's CORS headers, denials included.
        ctx.corsHeaders = CORSPolicy.responseHeaders(cors, origin: headers.first(name: "origin"))
        guard let preflight = Self.preflight(ctx.head) else { return .next }
        let requested = headers["access-control-request-headers"]
        switch CORSPolicy.preflight(
            cors, origin: preflight.origin, method: preflight.method,
            requestHeaders: requested.isEmpty ? nil : requested.joined(separator: ","))
        {
        case .failure(let denial):
            return .deny(denial)
        case .success(let allowed):
            // Answered by the gateway: no credentials asked for, nothing charged, never forwarded.
            ctx.local = .preflight
            ctx.corsHeaders = allowed
            return .next
        }
    }

    /// A CORS preflight's origin and the method it asks about: `OPTIONS` with `Origin` and
    /// `Access-Control-Request-Method`.
    static func preflight(_ head: HTTPRequestHead) -> (origin: String, method: String)? {
        guard head.method == .OPTIONS, let origin = head.headers.first(name: "origin"),
            let method = head.headers.first(name: "access-control-request-method")
        else { return nil }
        return (origin, method)
    }

    /// A request's values of header `name` as routing sees them: none when the client lists the header in
    /// `Connection` (it is hop-by-hop then, and removed before the upstream: the route would be chosen on a header
    /// the upstream never gets).
    static func routingValues(_ headers: HTTPHeaders, _ name: String) -> [String] {
        let values = headers[name]
        guard !values.isEmpty else { return values }
        let lower = name.lowercased()
        for connection in headers["connection"] {
            for token in connection.split(separator: ",") where ASCII.trimmed(token).lowercased() == lower {
                return []
            }
        }
        return values
    }

    /// The gateway's own endpoint, or the route by host, path prefix and method (a preflight's by the method it
    /// asks about).
    func matchRoute(_ ctx: RequestContext) -> Outcome {
        let snapshot = loop.snapshot
        if let hook = snapshot.config.billing?.webhookPath, ctx.head.method == .POST, ctx.path == hook[...] {
            ctx.local = .billingWebhook
            ctx.routeName = "billing_webhook"
            ctx.bodyLimit = min(ctx.bodyLimit, BillingWebhookHandler.maxBody)
            return .next
        }
        // Headers are read only when some route has `match.headers` (and then only the names it lists).
        var matched = snapshot.router.match(
            host: ctx.host, path: ctx.path, method: ctx.head.method.rawValue,
            headers: { Self.routingValues(ctx.head.headers, $0) })
        // A CORS preflight asks about the request to come, so it is matched by the method it names (a route that
        // lists its methods seldom lists OPTIONS); when no route with `cors` takes that method, by OPTIONS. A
        // browser's preflight carries none of the request's own headers, so it takes the route without
        // `match.headers` of that prefix.
        if let preflight = Self.preflight(ctx.head),
            let i = snapshot.router.match(
                host: ctx.host, path: ctx.path, method: preflight.method,
                headers: { Self.routingValues(ctx.head.headers, $0) }),
            snapshot.config.routes[i].cors != nil
        {
            matched = i
        }
        guard let index = matched else { return .deny(.routeNotFound()) }
        let route = snapshot.config.routes[index]
        ctx.route = route
        ctx.routeName = route.name
        ctx.upstreamName = route.upstream
        if ctx.websocket && !route.websocket {
            return .deny(.badRequest("Route '\(route.name)' does not accept WebSocket connections."))
        }
        return .next
    }

    /// Credentials (bearer token or API key), then the tenant they name, then the route's roles and scopes.
    func authenticate(_ ctx: RequestContext, resumer: some PhaseResumer) -> Outcome {
        guard let route = ctx.route else { return .deny(.routeNotFound()) }
        let snapshot = loop.snapshot
        let identity = snapshot.identity
        let headers = ctx.head.headers
        let input = IdentityResolver.Input(
            authorization: headers["authorization"], apiKey: headers[identity.config.apiKeyHeader],
            tenantHeader: headers[identity.config.tenantHeader])
        let cache = loop.tokenCache
        let now = ctx.wallNow(loop.clock)
        var keyMissingFor: String? = nil
        let result = identity.authenticate(input, route: route) { token in
            let verified = cache.verify(token, now: now, leeway: { snapshot.leeways[$0] ?? 0 }) {
                snapshot.verifier.verify($0, now: now)
            }
            if case .failure(let error) = verified { keyMissingFor = error.keyMissingFor }
            return verified
        }
        switch result {
        case .failure(let denial):
            // A `kid` the issuer's remote key set lacks: wait for one early refetch (or the one running), then
            // verify again, once. Within the issuer's cooldown the token is refused at once.
            if let issuer = keyMissingFor, !ctx.keysRefetched {
                ctx.keysRefetched = true
                let eventLoop = loop.eventLoop
                let bound = NIOLoopBound((ctx, resumer, self), eventLoop: eventLoop)
                let waiting = loop.keyRefetch.keyMissing(issuer: issuer) { _ in
                    eventLoop.execute {
                        let (ctx, resumer, phases) = bound.value
                        resumer.resume(ctx, phases.authenticate(ctx, resumer: resumer))
                    }
                }
                if waiting { return .await }
            }
            return .deny(denial)
        case .success(let caller):
            // Refused for the route's roles or scopes, the caller is still who the request is recorded as.
            ctx.caller = caller
            if let denial = IdentityResolver.authorize(route: route, caller: caller) { return .deny(denial) }
            return .next
        }
    }

    /// Subscription state, plan and feature; the plan's body limit.
    func gate(_ ctx: RequestContext) -> Outcome {
        guard let route = ctx.route else { return .deny(.routeNotFound()) }
        if let tenant = ctx.caller.tenant, let record = ctx.caller.record {
            switch Gate.check(route: route, tenant: tenant, record: record, config: loop.snapshot.config, now: ctx.wallNow(loop.clock)) {
            case .failure(let denial):
                return .deny(denial)
            case .success(let outcome):
                ctx.responseHeaders = outcome.responseHeaders
                if let cap = outcome.maxBodyBytes { ctx.bodyLimit = min(ctx.bodyLimit, cap) }
            }
        } else if route.minPlan != nil || route.feature != nil {
            return .deny(.tenantRequired("Route '\(route.name)' is gated by plan and needs a tenant."))
        }
        return bodyFits(ctx)
    }

    /// A declared length over the body limit is refused before any of the body is read.
    func bodyFits(_ ctx: RequestContext) -> Outcome {
        if case .contentLength(let n) = ctx.framing, n > ctx.bodyLimit {
            return .deny(.payloadTooLarge(limit: ctx.bodyLimit, close: true))
        }
        return .next
    }

    /// Buckets and quota (may wait for Redis; body parts are held meanwhile).
    func charge(_ ctx: RequestContext, resumer: some PhaseResumer) -> Outcome {
        guard let route = ctx.route, let record = ctx.caller.record else { return .next }
        let now = ctx.wallNow(loop.clock)
        guard let charge = RatePolicy.charge(route: route, caller: ctx.caller, record: record, config: loop.snapshot.config, now: now)
        else { return .next }
        ctx.plan = charge.plan
        // The limiter answers at once (memory, a lease) or later (Redis); a synchronous answer is handed back
        // through the context rather than through captured variables.
        ctx.answeredInline = nil
        ctx.charging = true
        loop.limiter.charge(charge, now: now, requestID: ctx.requestID) { [loop] limit in
            let result = Self.admission(ctx, limit, metrics: loop.metrics)
            if ctx.charging { ctx.answeredInline = result } else { resumer.resume(ctx, result) }
        }
        ctx.charging = false
        if let outcome = ctx.answeredInline {
            ctx.answeredInline = nil
            return outcome
        }
        return .await
    }

    /// The limiter's verdict as a phase outcome; rate headers go on the response either way.
    private static func admission(_ ctx: RequestContext, _ outcome: LimitOutcome, metrics: LoopMetrics) -> Outcome {
        var rateHeaders: [(String, String)] = []
        if let h = outcome.headers {
            rateHeaders = [
                ("RateLimit-Limit", String(h.limit)), ("RateLimit-Remaining", String(h.remaining)),
                ("RateLimit-Reset", String(h.reset)),
            ]
        }
        guard var denial = limitDenial(outcome) else {
            ctx.responseHeaders += rateHeaders
            ctx.failOpen = outcome.failOpen
            return .next
        }
        if outcome.verdict != .storeUnavailable {
            metrics.ratelimitDenied[ctx.plan, default: 0] += 1
            denial.headers += rateHeaders
        }
        return .deny(denial)
    }

    /// The denial of a limiter verdict (nil: admitted), without its rate headers (``gatehouse explain`` says
    /// the same).
    static func limitDenial(_ outcome: LimitOutcome) -> Denial? {
        switch outcome.verdict {
        case .admit:
            return nil
        case .rateLimited:
            return .rateLimited(
                retryAfter: outcome.retryAfter, "The tenant's request rate limit is exhausted; retry after \(outcome.retryAfter) s.")
        case .quotaExceeded:
            return .quotaExceeded(retryAfter: outcome.retryAfter, "The tenant's request quota for this period is used up.")
        case .storeUnavailable:
            return .storeUnavailable(retryAfter: outcome.retryAfter)
        }
    }

    /// A WebSocket handshake takes a place among its tenant's open tunnels (plan `max_websockets`, or the
    /// tenant's override), given back when the tunnel closes or does not open; the tenant at its limit gets 429.
    func admitTunnel(_ ctx: RequestContext, resumer: some PhaseResumer) -> Outcome {
        guard let tenant = ctx.caller.tenant, let record = ctx.caller.record else { return .next }
        guard let limit = record.maxWebsocketsOverride ?? loop.snapshot.config.plans[record.plan]?.maxWebsockets else {
            return .next
        }
        ctx.answeredInline = nil
        ctx.charging = true
        loop.tunnels.acquire(tenant: tenant, limit: limit, requestID: ctx.requestID) { [loop] verdict in
            let outcome: Outcome
            switch verdict {
            case .granted(let slot):
                if ctx.ended {
                    // The exchange ended while the store answered: nothing will give the place back but this.
                    loop.tunnels.release(slot)
                    return
                }
                ctx.tunnelSlot = slot
                outcome = .next
            case .full: outcome = .deny(.tooManyConnections(limit: limit))
            case .storeUnavailable: outcome = .deny(.storeUnavailable())
            }
            if ctx.charging { ctx.answeredInline = outcome } else { resumer.resume(ctx, outcome) }
        }
        ctx.charging = false
        if let outcome = ctx.answeredInline {
            ctx.answeredInline = nil
            return outcome
        }
        return .await
    }

    /// An audited request holds its record's place before anything goes upstream, waiting (every 5 ms, up to
    /// `audit.queue_timeout`) while the queue is full: back-pressure, never a lost record. A WebSocket tunnel
    /// is always audited (one record when it closes).
    func reserveAudit(_ ctx: RequestContext, resumer: some PhaseResumer) -> Outcome {
        guard let audit = loop.audit, ctx.websocket || audit.audits(method: ctx.head.method.rawValue) else { return .next }
        if audit.tryReserve() {
            ctx.auditReserved = true
            return .next
        }
        retryReservation(ctx, audit, until: .now() + audit.waitLimit, resumer: resumer)
        return .await
    }

    private func retryReservation(
        _ ctx: RequestContext, _ audit: AuditLog, until deadline: NIODeadline, resumer: some PhaseResumer
    ) {
        loop.eventLoop.assumeIsolated().scheduleTask(in: .milliseconds(5)) { [self] in
            if ctx.ended { return }
            if audit.tryReserve() {
                ctx.auditReserved = true
                resumer.resume(ctx, .next)
            } else if NIODeadline.now() >= deadline {
                resumer.resume(ctx, .deny(.auditUnavailable()))
            } else {
                self.retryReservation(ctx, audit, until: deadline, resumer: resumer)
            }
        }
    }

    /// The upstream group and the request for it: path rewritten, forwarding and verified identity headers set
    /// (every client-sent copy removed first).
    func forward(_ ctx: RequestContext) -> Outcome {
        guard let route = ctx.route else { return .deny(.routeNotFound()) }
        guard let group = loop.groups[route.upstream] else {
            return .deny(.upstreamUnavailable("Upstream '\(route.upstream)' is not available."))
        }
        ctx.group = group
        var path = String(ctx.path)
        if let strip = route.stripPrefix { path = Router.strip(prefix: strip, from: ctx.path) }
        var head = HTTPRequestHead(version: .http1_1, method: ctx.head.method, uri: path + ctx.query)
        let forwarding = HeaderRewriter.Forwarding(
            clientAddress: ctx.clientAddress ?? clientAddress, peerAddress: clientAddress, peerTrusted: ctx.peerTrusted,
            proto: scheme, host: ctx.host, requestID: ctx.requestID)
        let policy = HeaderRewriter.Policy(
            dropUnderscores: loop.snapshot.config.server.dropUnderscoreHeaders,
            allowMethodOverride: route.allowMethodOverride)
        head.headers = loop.snapshot.rewriter.upstreamRequestHeaders(
            ctx.head.headers, forwarding: forwarding, framing: ctx.framing, defaultHost: group.defaultHost, policy: policy)
        // A bodyless POST, PUT or PATCH says so (some servers refuse one without a length: 411).
        if ctx.framing == .none, [.POST, .PUT, .PATCH].contains(ctx.head.method) {
            head.headers.add(name: "Content-Length", value: "0")
        }
        // The trace goes on with this gateway's span as the upstream's parent (the client's copies were dropped
        // by the rewriter: reserved headers).
        head.headers.add(name: "traceparent", value: ctx.trace.traceparent)
        if let state = ctx.trace.traceState { head.headers.add(name: "tracestate", value: state) }
        let caller = ctx.caller
        if let tenant = caller.tenant { head.headers.add(name: "X-Tenant-ID", value: tenant) }
        if let user = caller.user { head.headers.add(name: "X-User-ID", value: user) }
        if let plan = caller.plan { head.headers.add(name: "X-Plan", value: plan) }
        let roles = caller.roles.isEmpty ? nil : caller.roles.joined(separator: ",")
        if let roles { head.headers.add(name: "X-Roles", value: roles) }
        if let signing = loop.snapshot.signing {
            let t = Int(ctx.wallNow(loop.clock))
            head.headers.add(
                name: signing.header,
                value: IdentitySignature.header(
                    key: signing.key, time: t, requestID: ctx.requestID, method: head.method.rawValue, target: head.uri,
                    tenant: caller.tenant, user: caller.user, plan: caller.plan, roles: roles))
        }
        if ctx.websocket {
            // Hop-by-hop, so dropped above: the handshake asks the upstream for the switch itself.
            head.headers.add(name: "Connection", value: "Upgrade")
            head.headers.add(name: "Upgrade", value: "websocket")
        }
        ctx.upstreamHead = head
        return .next
    }
}
