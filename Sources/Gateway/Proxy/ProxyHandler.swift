import Foundation
import Logging
import NIOCore
import NIOHTTP1
import Policy
import Upstream

/// The client side of one proxied connection: reads requests, walks each through the phases
/// (validate → route → gate → forward) and streams the upstream's response back.
///
/// HTTP/1.1 keep-alive and pipelining: one exchange at a time; requests pipelined behind it are queued
/// (reading pauses after `max_pipelined_requests`) and answered in order. Reading is never toggled for
/// the ordinary one-request-at-a-time client, which keeps epoll quiet on the hot path.
final class ProxyHandler: ChannelDuplexHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    /// Why reading from the client is paused (any set bit pauses).
    struct PauseReasons: OptionSet {
        let rawValue: UInt8
        static let pipeline = PauseReasons(rawValue: 1)
        static let upstreamBackpressure = PauseReasons(rawValue: 2)
        static let buffering = PauseReasons(rawValue: 4)
    }

    enum Phase {
        /// Between requests, since the given time.
        case idle(NIODeadline)
        /// Bytes of a request head arrived at the given time; the head is not complete yet.
        case readingHead(NIODeadline)
        /// An exchange is in progress.
        case exchange
        /// Closing: the response that ends the connection is written; remaining input is discarded.
        case closing
    }

    /// Bytes of a chunked body held before the upstream is chosen, so a small over-limit body is refused
    /// before anything reaches an upstream; past this the body streams.
    static let chunkedHoldBytes = 64 * 1024

    let loop: LoopState
    var context: ChannelHandlerContext!
    var clientAddress = "unknown"
    var phase: Phase = .idle(.now())
    var exchange: Exchange?
    private var queue = CircularBuffer<HTTPServerRequestPart>()
    private var queuedHeads = 0
    private var paused: PauseReasons = []
    private var readPending = false
    /// No further requests are taken on this connection (drain, `Connection: close`, framing error).
    var noMoreRequests = false
    var lingerDeadline: NIODeadline?

    init(loop: LoopState) {
        self.loop = loop
    }

    var server: ServerConfig { loop.snapshot.config.server }

    // MARK: Channel events

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        if let ip = context.channel.remoteAddress?.ipAddress { clientAddress = ip }
        loop.register(self)
    }

    func channelInactive(context: ChannelHandlerContext) {
        if let ex = exchange {
            if let conn = ex.connection {
                ex.connection = nil
                conn.abandon()
            }
            if !ex.responseDone {
                ex.code = ex.code.isEmpty ? "client_closed" : ex.code
                record(ex, status: ex.status == 0 ? 499 : ex.status)
            }
            exchange = nil
        }
        queue.removeAll()
        loop.unregister(self)
        context.fireChannelInactive()
    }

    func read(context: ChannelHandlerContext) {
        if paused.isEmpty {
            context.read()
        } else {
            readPending = true
        }
    }

    func pause(_ reason: PauseReasons) {
        paused.insert(reason)
    }

    func resume(_ reason: PauseReasons) {
        paused.remove(reason)
        if paused.isEmpty && readPending {
            readPending = false
            context.read()
        }
    }

    /// Called by ``ActivityGuard`` for every read.
    func bytesArrived() {
        if case .idle = phase { phase = .readingHead(.now()) }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let part = unwrapInboundIn(data)
        if case .closing = phase { return }
        if !queue.isEmpty || (exchange?.requestEnded ?? false) {
            enqueue(part)
            return
        }
        handle(part)
    }

    private func enqueue(_ part: HTTPServerRequestPart) {
        if noMoreRequests { return }
        queue.append(part)
        if case .head = part {
            queuedHeads += 1
            if queuedHeads >= server.maxPipelinedRequests { pause(.pipeline) }
        }
    }

    private func handle(_ part: HTTPServerRequestPart) {
        switch part {
        case .head(let head):
            startRequest(head)
        case .body(let buffer):
            if let ex = exchange { receiveBody(ex, buffer) }
        case .end:
            if let ex = exchange { receiveEnd(ex) }
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        exchange?.connection?.flush()
        context.flush()
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable, let conn = exchange?.connection {
            conn.setReadPaused(false)
        }
        context.fireChannelWritabilityChanged()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        if let parserError = error as? HTTPParserError {
            let denial: Denial =
                parserError == .headerOverflow
                ? .headersTooLarge(limit: server.maxHeaderBytes)
                : .badRequest("Malformed HTTP request (\(parserError)).")
            failConnection(with: denial)
            return
        }
        if error is NIOTooManyBytesError || error is ByteToMessageDecoderError {
            failConnection(with: .badRequest("Malformed HTTP request."))
            return
        }
        // I/O errors (reset by peer and the like): nothing to answer.
        context.close(promise: nil)
    }

    /// A framing error: nothing more can be read reliably, so answer (if no response started) and close.
    private func failConnection(with denial: Denial) {
        noMoreRequests = true
        queue.removeAll()
        if let ex = exchange {
            if let conn = ex.connection {
                ex.connection = nil
                conn.abandon()
            }
            if ex.responseStarted {
                context.close(promise: nil)
                return
            }
            deny(ex, denial)
        } else {
            // No request head could be read: the record shows method and path as "-".
            let ex = Exchange(
                requestID: loop.nextRequestID(), head: HTTPRequestHead(version: .http1_1, method: .RAW(value: "-"), uri: "-"),
                start: .now())
            exchange = ex
            deny(ex, denial)
        }
    }

    // MARK: Timeouts, drain

    /// Called by the loop's sweeper.
    func checkTimeouts(now: NIODeadline) {
        switch phase {
        case .idle(let since):
            if now - since >= .nanoseconds(server.idleTimeout) || noMoreRequests {
                context.close(promise: nil)
            }
        case .readingHead(let since):
            if now - since >= .nanoseconds(server.headerTimeout) {
                failConnection(with: .requestTimeout("The request headers were not received in time."))
            }
        case .exchange:
            guard let ex = exchange, !ex.requestEnded else { return }
            if now - ex.start >= .nanoseconds(server.requestTimeout) {
                failConnection(with: .requestTimeout("The request body was not received in time."))
            }
        case .closing:
            if let deadline = lingerDeadline, now >= deadline { context.close(promise: nil) }
        }
    }

    func beginDrain() {
        noMoreRequests = true
        queue.removeAll()
        if case .idle = phase { context.close(promise: nil) }
    }

    func forceClose() {
        context.close(promise: nil)
    }

    // MARK: Phases

    private func startRequest(_ head: HTTPRequestHead) {
        phase = .exchange
        let now = NIODeadline.now()
        let clientID = head.headers.first(name: "x-request-id")
        let requestID = clientID.flatMap { RequestTarget.isValidRequestID($0) ? $0 : nil } ?? loop.nextRequestID()
        let ex = Exchange(requestID: requestID, head: head, start: now)
        exchange = ex
        if noMoreRequests { ex.keepAlive = false }

        // Validate framing and the request line.
        let checked: RequestValidation.Checked
        switch RequestValidation.check(head, maxHeaderBytes: server.maxHeaderBytes) {
        case .success(let c): checked = c
        case .failure(let denial):
            deny(ex, denial)
            return
        }
        ex.framing = checked.framing

        // Route.
        let snapshot = loop.snapshot
        guard let routeIndex = snapshot.router.match(host: checked.host, path: checked.path, method: head.method.rawValue)
        else {
            deny(ex, .routeNotFound())
            return
        }
        let route = snapshot.config.routes[routeIndex]
        ex.routeName = route.name
        ex.upstreamName = route.upstream

        // Authenticate and resolve the tenant.
        let identity = snapshot.identity
        let input = IdentityResolver.Input(
            authorization: head.headers["authorization"], apiKey: head.headers[identity.config.apiKeyHeader],
            tenantHeader: head.headers[identity.config.tenantHeader])
        let cache = loop.tokenCache
        let wallNow = Self.wallClock()
        let caller: Caller
        switch identity.resolve(input, route: route, verify: { token in
            cache.verify(token, now: wallNow, leeway: { snapshot.leeways[$0] ?? 0 }) {
                snapshot.verifier.verify($0, now: wallNow)
            }
        }) {
        case .success(let c): caller = c
        case .failure(let denial):
            deny(ex, denial)
            return
        }
        ex.caller = caller

        // Gate by subscription state, plan and feature.
        var bodyLimit = server.maxBodyBytes
        if let tenant = caller.tenant, let record = caller.record {
            switch Gate.check(route: route, tenant: tenant, record: record, config: snapshot.config, now: wallNow) {
            case .failure(let denial):
                deny(ex, denial)
                return
            case .success(let outcome):
                ex.responseHeaders = outcome.responseHeaders
                if let cap = outcome.maxBodyBytes { bodyLimit = min(bodyLimit, cap) }
            }
        } else if route.minPlan != nil || route.feature != nil {
            deny(ex, .tenantRequired("Route '\(route.name)' is gated by plan and needs a tenant."))
            return
        }

        // Body limit: the server's, or the plan's when lower.
        ex.bodyLimit = bodyLimit
        if case .contentLength(let n) = checked.framing, n > ex.bodyLimit {
            deny(ex, .payloadTooLarge(limit: ex.bodyLimit, close: true))
            return
        }

        // Choose the upstream and build the request for it.
        guard let group = loop.groups[route.upstream] else {
            deny(ex, .upstreamUnavailable("Upstream '\(route.upstream)' is not available."))
            return
        }
        ex.group = group
        var path = String(checked.path)
        if let strip = route.stripPrefix { path = Router.strip(prefix: strip, from: checked.path) }
        var upstreamHead = HTTPRequestHead(version: .http1_1, method: head.method, uri: path + checked.query)
        let forwarding = HeaderRewriter.Forwarding(
            clientAddress: clientAddress, host: checked.host, requestID: requestID)
        upstreamHead.headers = snapshot.rewriter.upstreamRequestHeaders(
            head.headers, forwarding: forwarding, framing: checked.framing,
            defaultHost: group.defaultHost)
        // Verified identity, after every client-sent copy was removed above.
        if let tenant = caller.tenant { upstreamHead.headers.add(name: "X-Tenant-ID", value: tenant) }
        if let user = caller.user { upstreamHead.headers.add(name: "X-User-ID", value: user) }
        if let plan = caller.plan { upstreamHead.headers.add(name: "X-Plan", value: plan) }
        if !caller.roles.isEmpty { upstreamHead.headers.add(name: "X-Roles", value: caller.roles.joined(separator: ",")) }
        ex.upstreamHead = upstreamHead

        ex.expectContinue = checked.expectContinue && head.version.minor == 1

        // Charge the buckets and quota (may wait for Redis; the body is held meanwhile).
        if let record = caller.record,
            let charge = RatePolicy.charge(route: route, caller: caller, record: record, config: snapshot.config, now: wallNow)
        {
            ex.awaitingAdmission = true
            ex.plan = charge.plan
            loop.limiter.charge(charge, now: wallNow, requestID: requestID) { [self] outcome in
                self.admission(ex, outcome)
            }
            return
        }
        forward(ex)
    }

    /// The limiter's answer for `ex` (synchronous, or later when Redis answers).
    private func admission(_ ex: Exchange, _ outcome: LimitOutcome) {
        ex.awaitingAdmission = false
        guard exchange === ex, !ex.responseStarted else { return }
        var rateHeaders: [(String, String)] = []
        if let h = outcome.headers {
            rateHeaders = [
                ("RateLimit-Limit", String(h.limit)), ("RateLimit-Remaining", String(h.remaining)),
                ("RateLimit-Reset", String(h.reset)),
            ]
        }
        switch outcome.verdict {
        case .admit:
            ex.responseHeaders += rateHeaders
            ex.failOpen = outcome.failOpen
            forward(ex)
        case .rateLimited, .quotaExceeded:
            loop.metrics.ratelimitDenied[ex.plan, default: 0] += 1
            var denial =
                outcome.verdict == .rateLimited
                ? Denial.rateLimited(
                    retryAfter: outcome.retryAfter,
                    "The tenant's request rate limit is exhausted; retry after \(outcome.retryAfter) s.")
                : Denial.quotaExceeded(retryAfter: outcome.retryAfter, "The tenant's request quota for this period is used up.")
            denial.headers += rateHeaders
            deny(ex, denial)
        case .storeUnavailable:
            deny(ex, .storeUnavailable(retryAfter: outcome.retryAfter))
        }
    }

    /// Admitted: reserve the audit record's place (waiting while the audit queue is full), answer
    /// `Expect: 100-continue` and connect once enough of the request is here.
    private func forward(_ ex: Exchange) {
        if let audit = loop.audit, !ex.auditReserved, audit.audits(method: ex.head.method.rawValue) {
            if audit.tryReserve() {
                ex.auditReserved = true
            } else {
                waitForAudit(ex, audit, until: .now() + audit.waitLimit)
                return
            }
        }
        if ex.expectContinue {
            var buffer = context.channel.allocator.buffer(capacity: 32)
            buffer.writeStaticString("HTTP/1.1 100 Continue\r\n\r\n")
            context.writeAndFlush(wrapOutboundOut(buffer), promise: nil)
        }
        if ex.framing != .chunked || ex.requestEnded || ex.bufferedBytes >= Self.chunkedHoldBytes {
            connectUpstream(ex, excluding: nil)
        }
    }

    /// Back-pressure from the audit writer: retry every 5 ms until a place frees up or the wait limit passes.
    private func waitForAudit(_ ex: Exchange, _ audit: AuditLog, until deadline: NIODeadline) {
        ex.awaitingAdmission = true
        context.eventLoop.assumeIsolated().scheduleTask(in: .milliseconds(5)) { [self] in
            ex.awaitingAdmission = false
            guard self.exchange === ex, !ex.responseStarted else { return }
            if audit.tryReserve() {
                ex.auditReserved = true
                self.forward(ex)
            } else if NIODeadline.now() >= deadline {
                self.deny(ex, .auditUnavailable())
            } else {
                self.waitForAudit(ex, audit, until: deadline)
            }
        }
    }

    private func receiveBody(_ ex: Exchange, _ buffer: ByteBuffer) {
        ex.bodyBytes += buffer.readableBytes
        if ex.responseStarted {
            return  // denied or answered early: the rest of the body is read and dropped
        }
        if ex.bodyBytes > ex.bodyLimit {
            if let conn = ex.connection {
                ex.connection = nil
                conn.abandon()
            }
            deny(ex, .payloadTooLarge(limit: ex.bodyLimit, close: true))
            return
        }
        if let conn = ex.connection {
            conn.sendBody(buffer)
            if !conn.isWritable { pause(.upstreamBackpressure) }
        } else {
            ex.buffered.append(buffer)
            ex.bufferedBytes += buffer.readableBytes
            if ex.bufferedBytes >= Self.chunkedHoldBytes {
                pause(.buffering)
                if !ex.connecting && !ex.awaitingAdmission { connectUpstream(ex, excluding: nil) }
            }
        }
    }

    private func receiveEnd(_ ex: Exchange) {
        ex.requestEnded = true
        if ex.responseDone {
            finishExchange(ex)
            return
        }
        if ex.responseStarted { return }
        if let conn = ex.connection {
            conn.sendEnd()
        } else if !ex.connecting && !ex.awaitingAdmission {
            connectUpstream(ex, excluding: nil)
        }
    }

    /// Takes a connection from a healthy target's pool and sends the request (and any body held so far).
    private func connectUpstream(_ ex: Exchange, excluding: TargetPool?) {
        guard let group = ex.group else { return }
        guard let pool = group.pick(excluding: excluding) else {
            deny(ex, .upstreamUnavailable("No healthy target for upstream '\(ex.upstreamName)'."))
            return
        }
        ex.pool = pool
        ex.attempts += 1
        if let conn = pool.takeIdle() {
            send(ex, on: conn)
            return
        }
        ex.connecting = true
        pool.acquire { [self] result in
            ex.connecting = false
            guard self.exchange === ex, !ex.responseStarted else {
                if case .success(let conn) = result { pool.release(conn, reusable: conn.isOpen) }
                return
            }
            switch result {
            case .success(let conn):
                self.send(ex, on: conn)
            case .failure(let error):
                self.upstreamFailedForExchange(ex, error)
            }
        }
    }

    private func send(_ ex: Exchange, on conn: UpstreamConnection) {
        ex.connection = conn
        if ex.upstreamStart == nil { ex.upstreamStart = .now() }
        let timeout = TimeAmount.nanoseconds(ex.group?.config.responseTimeout ?? 30_000_000_000)
        conn.begin(head: ex.upstreamHead!, delegate: self, responseTimeout: timeout)
        if !ex.buffered.isEmpty {
            for b in ex.buffered { conn.sendBody(b) }
            ex.buffered.removeAll()
            ex.bufferedBytes = 0
            resume(.buffering)
        }
        if ex.requestEnded {
            conn.sendEnd()
        } else {
            conn.flush()
            if !conn.isWritable { pause(.upstreamBackpressure) }
        }
    }

    func upstreamFailedForExchange(_ ex: Exchange, _ error: UpstreamError) {
        ex.connection = nil
        let retries = ex.group?.config.retries ?? 0
        if ex.mayRetry(after: error, retries: retries) && (ex.buffered.isEmpty || error.nothingSent) {
            loop.logger.debug(
                "retrying upstream request",
                metadata: ["gh-request-id": "\(ex.requestID)", "gh-error": "\(error)"])
            connectUpstream(ex, excluding: ex.pool)
            return
        }
        if ex.responseStarted {
            // Mid-response: the client's response cannot be completed; close it so the cut is visible.
            loop.logger.warning(
                "upstream failed mid-response",
                metadata: ["gh-request-id": "\(ex.requestID)", "gh-upstream": "\(ex.upstreamName)", "gh-error": "\(error)"])
            ex.code = "upstream_reset"
            record(ex, status: ex.status)
            exchange = nil
            phase = .closing
            context.close(promise: nil)
            return
        }
        loop.logger.warning(
            "upstream request failed",
            metadata: ["gh-request-id": "\(ex.requestID)", "gh-upstream": "\(ex.upstreamName)", "gh-error": "\(error)"])
        let denial: Denial
        if error.isTimeout {
            denial = .upstreamTimeout("Upstream '\(ex.upstreamName)' did not answer in time.")
        } else if error.isUnavailable {
            denial = .upstreamUnavailable("No connection to upstream '\(ex.upstreamName)' is available.")
        } else {
            denial = .badGateway("Upstream '\(ex.upstreamName)' refused or reset the connection.")
        }
        deny(ex, denial)
    }

    // MARK: Ending exchanges

    /// Writes a problem document for `ex`; closes the connection when the denial demands it or the request
    /// body was not read completely.
    func deny(_ ex: Exchange, _ denial: Denial) {
        ex.decision = "deny"
        ex.code = denial.code
        let bodyPending = !ex.requestEnded && ex.framing != .none
        if bodyPending || denial.closeConnection { ex.keepAlive = false }
        if ex.head.version.minor == 0 && ex.head.headers.first(name: "connection")?.lowercased() != "keep-alive" {
            ex.keepAlive = false
        }
        writeProblem(denial, for: ex)
        ex.response = .done
        context.flush()
        if ex.requestEnded || !ex.keepAlive {
            finishExchange(ex)
        }
    }

    /// The exchange is complete on both sides (or the connection is ending): record it and move on.
    func finishExchange(_ ex: Exchange) {
        record(ex, status: ex.status)
        exchange = nil
        if !ex.keepAlive || noMoreRequests {
            closeGracefully(requestFullyRead: ex.requestEnded)
            return
        }
        phase = .idle(.now())
        resume(.upstreamBackpressure)
        resume(.buffering)
        if !queue.isEmpty {
            context.eventLoop.assumeIsolated().execute { [self] in self.processQueue() }
        }
    }

    private func processQueue() {
        while exchange == nil || !(exchange!.requestEnded), let part = queue.popFirst() {
            if case .head = part {
                queuedHeads -= 1
                bytesArrived()
            }
            handle(part)
            if case .closing = phase { return }
        }
        if queuedHeads < server.maxPipelinedRequests { resume(.pipeline) }
    }

    /// Closes after the last response: at once when the request was read whole, otherwise by shutting the
    /// output and discarding input for a moment, so the client sees the response rather than a reset.
    private func closeGracefully(requestFullyRead: Bool) {
        phase = .closing
        queue.removeAll()
        let channel = context.channel
        if requestFullyRead {
            context.close(promise: nil)
            return
        }
        lingerDeadline = .now() + .seconds(2)
        paused = []
        let promise = context.eventLoop.makePromise(of: Void.self)
        context.close(mode: .output, promise: promise)
        promise.futureResult.whenFailure { _ in channel.close(promise: nil) }
        if readPending {
            readPending = false
            context.read()
        }
    }

    /// Seconds since the epoch, for token expiry.
    static func wallClock() -> Double { WallClock.system.now() }

    func record(_ ex: Exchange, status: Int) {
        let elapsed = (NIODeadline.now() - ex.start).nanoseconds
        let seconds = Double(elapsed) / 1e9
        if let audit = loop.audit, !ex.audited {
            let method = ex.head.method.rawValue
            if ex.auditReserved || audit.audits(method: method) || (audit.denials && ex.decision == "deny") {
                ex.audited = true
                let uri = ex.head.uri
                let path = uri.firstIndex(of: "?").map { String(uri[..<$0]) } ?? uri
                let startMillis = Int64(Self.wallClock() * 1000) - elapsed / 1_000_000
                var r = AuditRecord(
                    timeMillis: startMillis, requestID: ex.requestID, tenant: ex.caller.tenant, user: ex.caller.user,
                    method: method, path: path, route: ex.routeName == "-" ? nil : ex.routeName, status: status,
                    decision: ex.decision, code: ex.code.isEmpty ? nil : ex.code, latencyMicros: elapsed / 1000,
                    clientIP: clientAddress, upstream: ex.decision == "allow" && ex.upstreamName != "-" ? ex.upstreamName : nil)
                r.failOpen = ex.failOpen
                audit.append(r, reserved: ex.auditReserved)
                ex.auditReserved = false
            }
        }
        loop.metrics.record(route: ex.routeName, status: status, decision: ex.decision, code: ex.code, seconds: seconds)
        if let up = ex.upstreamStart, ex.decision == "allow" {
            loop.metrics.recordUpstream(ex.upstreamName, seconds: Double((NIODeadline.now() - up).nanoseconds) / 1e9)
        }
    }
}

@available(*, unavailable)
extension ProxyHandler: Sendable {}
