import HTTPWire
import Logging
import NIOCore
import NIOExtras
import NIOTLS
import NIOHTTP1
import Policy
import Upstream

/// The client side of one proxied connection: the executor of its ``ClientConnectionStateMachine``.
///
/// Decoded input goes to the machine, which says whether to handle it now, queue it behind the running
/// exchange, or drop it. A request head starts an exchange, whose ``RequestContext`` walks the
/// ``RequestPhases``; once admitted it is forwarded on a pooled ``UpstreamConnection`` and the response is
/// streamed back (`ProxyHandler+Response.swift`). However the exchange ends, the machine returns its ``End``
/// once and ``finish(_:)`` acts on it: the upstream connection is closed or the pool wait cancelled, the record
/// is written and counted, and the connection takes the next request, lingers or closes.
final class ProxyHandler: ChannelDuplexHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    /// Input held behind the running exchange, in arrival order.
    enum Queued {
        /// A head, with the framing the parser read its body by (``RequestValidation`` refuses a refused one).
        case head(HTTPRequestHead, HTTP1Framing.Decision)
        case body(ByteBuffer)
        case end
        case malformed(Denial)

        var input: ClientConnectionStateMachine.Input {
            switch self {
            case .head: .head
            case .body(let b): .body(b.readableBytes)
            case .end: .end
            case .malformed: .malformed
            }
        }
    }

    let loop: LoopState
    var context: ChannelHandlerContext!
    var clientAddress = "unknown"
    var machine: ClientConnectionStateMachine
    /// The running exchange's context.
    var current: RequestContext?
    /// How the current response's body is framed towards the client.
    var responseFraming: ResponseFraming = .none
    private var queue = CircularBuffer<Queued>()
    private var readPending = false
    /// Request heads handled so far on this connection (they arrive, and are handled, in order).
    private var requestsStarted = 0
    /// Chunk totals announced by requests still queued, by request number; and the one of the request being
    /// started, checked once its body limit is known.
    private var declaredAhead: [Int: Int] = [:]
    private var pendingChunkTotal: Int?
    /// The client's bytes, parsed where they lie in each read (`HTTPWire`).
    private var parser: HTTP1RequestParser
    /// Request heads parsed so far (the number of the one being read is `headsParsed - 1`).
    private var headsParsed = 0
    /// Client bytes after a WebSocket handshake (the parser reads nothing after one), before its tunnel opened:
    /// sent upstream when it does, dropped with the connection otherwise. At most `max_read_ahead_bytes`.
    private var tunnelAhead: [ByteBuffer] = []
    private var tunnelAheadBytes = 0

    enum ResponseFraming {
        case none, contentLength, chunked, closeDelimited
    }

    /// What must happen before the client's first request: the PROXY header (`server.proxy_protocol`), then
    /// the TLS handshake. Both within `header_timeout` of accept, else the connection is closed, silently:
    /// nothing was asked yet.
    private var awaitingProxyHeader: Bool
    private var awaitingHandshake: Bool
    private var preludeDeadline: NIODeadline?
    /// `https` on the TLS listener, or when a PROXY v2 header says the balancer received the client over TLS.
    private var scheme: String
    /// A PROXY header that named no client (v1 `UNKNOWN`, v2 `LOCAL` or a non-IP family): the balancer stands
    /// in for the client, but the forwarding headers on the connection are the client's own, not the
    /// balancer's, and are not believed.
    private var forwardingUntrusted = false

    init(loop: LoopState, tls: Bool = false, proxyProtocol: Bool = false) {
        self.loop = loop
        self.awaitingProxyHeader = proxyProtocol
        self.awaitingHandshake = tls
        self.scheme = tls ? "https" : "http"
        self.machine = ClientConnectionStateMachine(configuration: loop.connectionConfiguration, now: .now())
        self.parser = HTTP1RequestParser(limits: .init(maxHeaderBytes: loop.snapshot.config.server.maxHeaderBytes))
    }

    /// The request phases, bound to this connection's loop and client (made at the first request, after the
    /// prelude named the client).
    private(set) lazy var phases = RequestPhases(
        loop: loop, clientAddress: clientAddress, scheme: scheme, forwardingUntrusted: forwardingUntrusted)

    // MARK: Channel events

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        if let ip = context.channel.remoteAddress?.ipAddress { clientAddress = ip }
        if awaitingProxyHeader || awaitingHandshake {
            preludeDeadline = .now() + loop.connectionConfiguration.headerTimeout
        }
        loop.register(self)
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is ChannelShouldQuiesceEvent {
            // The gateway is stopping (NIO's quiescing helper tells every connection): idle ones close now, busy
            // ones after their response, tunnels at the end of drain_timeout.
            beginDrain()
            return
        }
        if let tls = event as? TLSUserEvent, case .handshakeCompleted = tls {
            awaitingHandshake = false
        } else if let origin = event as? ProxyOrigin {
            // The balancer's word for who the client is (the peer itself when the header names no one).
            awaitingProxyHeader = false
            if let source = origin.header.source {
                clientAddress = source.ip
            } else {
                forwardingUntrusted = true
            }
            if origin.header.clientTLS { scheme = "https" }
        }
        if !awaitingProxyHeader && !awaitingHandshake { preludeDeadline = nil }
        context.fireUserInboundEventTriggered(event)
    }

    func channelInactive(context: ChannelHandlerContext) {
        if let end = machine.clientClosed(), let ctx = current { finish(end, ctx) }
        queue.removeAll()
        loop.unregister(self)
        context.fireChannelInactive()
    }

    func read(context: ChannelHandlerContext) {
        if machine.readingAllowed {
            context.read()
        } else {
            readPending = true
        }
    }

    /// Asks for more input if reading was held back and the machine allows it again.
    func updateReading() {
        if readPending && machine.readingAllowed {
            readPending = false
            context.read()
        }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        // Closing (lingering after the last response): input is read and dropped.
        if machine.isClosing { return }
        let buffer = unwrapInboundIn(data)
        if machine.inTunnel {
            tunnelInput(buffer)
            return
        }
        machine.bytesArrived(now: .now())
        buffer.withUnsafeReadableBytes { bytes in
            var offset = 0
            while let event = parser.next(bytes, &offset) {
                switch event {
                case .head(let parsed, let framing):
                    headsParsed += 1
                    let head = HTTPRequestHead(
                        version: HTTPVersion(major: parsed.versionMajor, minor: parsed.versionMinor),
                        method: HTTPMethod(rawValue: parsed.method), uri: parsed.target,
                        headers: HTTPHeaders(parsed.headers.map { ($0.name, $0.value) }))
                    route(.head(head, framing))
                case .body(let range):
                    route(.body(buffer.getSlice(at: buffer.readerIndex + range.lowerBound, length: range.count)!))
                case .chunkDeclared(let total):
                    chunkDeclared(request: headsParsed - 1, total: total)
                case .end:
                    route(.end)
                case .error(.headTooLarge):
                    route(.malformed(.headersTooLarge(limit: loop.snapshot.config.server.maxHeaderBytes)))
                case .error(.malformed(let why)):
                    route(.malformed(.badRequest("Malformed HTTP request (\(why)).")))
                case .tunnel(let range):
                    tunnelInput(buffer.getSlice(at: buffer.readerIndex + range.lowerBound, length: range.count)!)
                }
            }
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        current?.connection?.flush()
        context.flush()
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        let writable = context.channel.isWritable
        machine.writabilityChanged(isWritable: writable, now: .now())
        if writable { current?.connection?.setReadPaused(false) }
        context.fireChannelWritabilityChanged()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        // I/O errors (reset by peer and the like): nothing to answer; channelInactive ends the exchange.
        context.close(promise: nil)
    }

    /// Handles, queues or drops one input as the machine says.
    private func route(_ item: Queued) {
        switch machine.inbound(item.input) {
        case .process: handle(item)
        case .enqueue: queue.append(item)
        case .discard: break
        }
        updateReading()
    }

    private func handle(_ item: Queued) {
        switch item {
        case .head(let head, let framing): startRequest(head, framing)
        case .body(let buffer): receiveBody(buffer)
        case .end: receiveEnd()
        case .malformed(let denial): malformed(denial)
        }
    }

    /// After an exchange ended on a keep-alive connection: the queued input, in order, as far as the next
    /// exchange takes it.
    private func processQueue() {
        while machine.takesQueuedInput, let item = queue.popFirst() {
            machine.dequeued(item.input)
            handle(item)
        }
        current?.connection?.flush()
        context.flush()
        updateReading()
    }

    // MARK: Timeouts, drain

    /// Called by the loop's sweeper.
    func checkTimeouts(now: NIODeadline) {
        if let deadline = preludeDeadline, now >= deadline {
            preludeDeadline = nil
            context.close(promise: nil)
            return
        }
        switch machine.sweep(now: now) {
        case .none:
            break
        case .close:
            context.close(promise: nil)
        case .headTimeout:
            denyNew(.requestTimeout("The request headers were not received in time."))
        case .requestTimeout:
            if let ctx = current { deny(ctx, .requestTimeout("The request body was not received in time.")) }
        case .ended(let end):
            if let ctx = current { finish(end, ctx) }
        }
    }

    func beginDrain() {
        queue.removeAll()
        if machine.beginDrain() { context.close(promise: nil) }
    }

    func forceClose() {
        context.close(promise: nil)
    }

    // MARK: Requests

    private func startRequest(_ head: HTTPRequestHead, _ framing: HTTP1Framing.Decision) {
        let now = NIODeadline.now()
        let clientID = head.headers.first(name: "x-request-id")
        let requestID = clientID.flatMap { RequestTarget.isValidRequestID($0) ? $0 : nil } ?? loop.nextRequestID()
        let ctx = RequestContext(requestID: requestID, head: head, parsedFraming: framing, start: now)
        // A single well-formed traceparent is continued (with its tracestate); none, several or a malformed one
        // start a new trace.
        let parents = head.headers["traceparent"]
        ctx.trace = loop.tracer.begin(
            traceparent: parents.count == 1 ? parents[0] : nil,
            tracestate: parents.count == 1 ? head.headers["tracestate"] : [])
        ctx.ordinal = requestsStarted
        requestsStarted += 1
        current = ctx
        // Until `validate` has read the framing, assume a body: a denial before then closes the connection.
        machine.startExchange(now: now, keepAlive: head.isKeepAlive, hasBody: true, chunked: false, upgrade: false)
        loop.metrics.exchangesInFlight += 1
        advance(ctx)
    }

    /// Runs the phases from `ctx.phase` until one denies or awaits; past the last one the request is admitted.
    private func advance(_ ctx: RequestContext) {
        let phases = self.phases
        while current === ctx {
            let outcome = phases.run(ctx, resumer: self)
            switch outcome {
            case .next:
                switch ctx.phase {
                case .validate:
                    machine.framingKnown(hasBody: ctx.framing != .none, chunked: ctx.framing == .chunked, upgrade: ctx.websocket)
                    machine.setBodyLimit(ctx.bodyLimit)
                    if !declaredAhead.isEmpty, let total = declaredAhead.removeValue(forKey: ctx.ordinal) {
                        pendingChunkTotal = total
                    }
                case .gate:
                    machine.setBodyLimit(ctx.bodyLimit)
                    if let total = pendingChunkTotal {
                        pendingChunkTotal = nil
                        if machine.chunkExceedsLimit(declaredTotal: total) {
                            deny(ctx, .payloadTooLarge(limit: ctx.bodyLimit, close: true))
                            return
                        }
                    }
                default:
                    break
                }
                guard let next = RequestContext.Phase(rawValue: ctx.phase.rawValue + 1) else {
                    admitted(ctx)
                    return
                }
                ctx.phase = next
            case .deny(let denial):
                deny(ctx, denial)
                return
            case .await:
                return
            }
        }
    }

    /// A phase that awaited finished; ignored when the exchange has ended meanwhile.
    func resume(_ ctx: RequestContext, _ outcome: RequestPhases.Outcome) {
        guard !ctx.ended, current === ctx, machine.exchange?.response == .pending else { return }
        switch outcome {
        case .next:
            guard let next = RequestContext.Phase(rawValue: ctx.phase.rawValue + 1) else {
                admitted(ctx)
                return
            }
            ctx.phase = next
            advance(ctx)
        case .deny(let denial):
            deny(ctx, denial)
        case .await:
            break
        }
    }

    /// Every phase passed: answer `Expect: 100-continue`, and connect once enough of the request is here.
    private func admitted(_ ctx: RequestContext) {
        let action = ctx.local == nil ? machine.admitted() : machine.admittedLocally()
        guard action != .none else { return }
        if ctx.local == .preflight {
            // Answered at once; a body (a browser's preflight has none) is read and dropped.
            respondLocally(ctx, status: 204, contentType: nil, body: "")
            return
        }
        // (Not on a WebSocket handshake, which has no body: a client would take the 100 for its answer.)
        if ctx.expectContinue && !ctx.websocket {
            var buffer = context.channel.allocator.buffer(capacity: 32)
            buffer.writeStaticString("HTTP/1.1 100 Continue\r\n\r\n")
            context.writeAndFlush(wrapOutboundOut(buffer), promise: nil)
        }
        // The flush may have failed and closed the connection, ending the exchange.
        guard action == .connect && !ctx.ended else { return }
        if ctx.local != nil { answerLocally(ctx) } else { connect(ctx, excluding: nil) }
    }

    private func receiveBody(_ buffer: ByteBuffer) {
        guard let ctx = current else { return }
        ctx.bytesIn += Int64(buffer.readableBytes)
        switch machine.requestBody(buffer.readableBytes) {
        case .forward:
            guard let conn = ctx.connection else { return }
            conn.sendBody(buffer)
            if !conn.isWritable {
                // Pause first: the flush below (needed when a queued body is handled outside a read cycle, where
                // nothing else would flush) may drain the socket at once and report writability before it returns.
                machine.setPaused(.upstreamBackpressure, true)
                conn.flush()
            }
        case .hold(let connect):
            ctx.held.append(buffer)
            if connect { self.connect(ctx, excluding: nil) }
        case .discard:
            break
        case .tooLarge:
            deny(ctx, .payloadTooLarge(limit: ctx.bodyLimit, close: true))
        }
    }

    private func receiveEnd() {
        switch machine.requestEnd(now: .now()) {
        case .none: break
        case .sendEnd: current?.connection?.sendEnd()
        case .connect: if let ctx = current { connect(ctx, excluding: nil) }
        case .answerLocally: if let ctx = current { answerLocally(ctx) }
        case .ended(let end): if let ctx = current { finish(end, ctx) }
        }
    }

    /// The gateway's own endpoint on this listener (the billing webhook), with the whole request held.
    private func answerLocally(_ ctx: RequestContext) {
        guard ctx.local == .billingWebhook, let webhook = loop.billingWebhook else {
            deny(ctx, .routeNotFound())
            return
        }
        var body: [UInt8] = []
        for part in ctx.held { body += part.readableBytesView }
        ctx.held.removeAll()
        let eventLoop = context.eventLoop
        webhook.handle(
            signature: ctx.head.headers.first(name: "stripe-signature"), body: body, config: loop.snapshot.config,
            on: eventLoop
        ).hop(to: eventLoop).assumeIsolated().whenComplete { [self] result in
            guard current === ctx, !ctx.ended else { return }
            switch result {
            case .success(.refused(let denial)): deny(ctx, denial)
            case .success(.acknowledged(let json)): respondLocally(ctx, status: 200, contentType: "application/json", body: json)
            case .failure(let error):
                loop.logger.error(
                    "billing webhook failed", metadata: ["gh-request-id": "\(ctx.requestID)", "gh-error": "\(error)"])
                deny(ctx, .storeUnavailable())
            }
        }
    }

    /// A complete response from the gateway itself (the webhook's 200 JSON, a preflight's 204).
    private func respondLocally(_ ctx: RequestContext, status: Int, contentType: String?, body: String) {
        let keepAlive = machine.responseHead(status: status, keepAliveAllowed: true)
        writeComplete(status: status, contentType: contentType, body: body, for: ctx, keepAlive: keepAlive)
        if let end = machine.responseEnd(now: .now()) {
            finish(end, ctx)
        } else {
            context.flush()
        }
    }

    /// Request number `request` (0-based, in arrival order) has announced chunks of `total` bytes so far: refused
    /// at once when that cannot fit the body limit.
    func chunkDeclared(request: Int, total: Int) {
        guard let ctx = current, ctx.ordinal == request else {
            // A request still queued behind the current one: checked when it starts (bounded by the queue's bounds).
            if request >= requestsStarted { declaredAhead[request] = total }
            return
        }
        guard machine.chunkExceedsLimit(declaredTotal: total) else { return }
        deny(ctx, .payloadTooLarge(limit: ctx.bodyLimit, close: true))
        updateReading()
    }

    private func malformed(_ denial: Denial) {
        switch machine.malformed() {
        case .denyCurrent: if let ctx = current { deny(ctx, denial) }
        case .ended(let end): if let ctx = current { finish(end, ctx) }
        case .denyNew: denyNew(denial)
        case .none: break
        }
    }

    /// A denial for input that never became a request (no head could be read): method and path are "-".
    private func denyNew(_ denial: Denial) {
        let head = HTTPRequestHead(version: .http1_1, method: .RAW(value: "-"), uri: "-")
        let ctx = RequestContext(requestID: loop.nextRequestID(), head: head, parsedFraming: .success(.none), start: .now())
        ctx.trace = loop.tracer.begin(traceparent: nil, tracestate: [])
        current = ctx
        machine.startExchange(now: .now(), keepAlive: false, hasBody: false, chunked: false, upgrade: false)
        loop.metrics.exchangesInFlight += 1
        deny(ctx, denial)
    }

    // MARK: Upstream

    /// Takes a connection from a healthy target's pool and sends the request (and any body held so far).
    private func connect(_ ctx: RequestContext, excluding: TargetPool?) {
        guard !ctx.ended else { return }
        // After a reload the upstream's pools are new ones: pick from those (the old ones take no new work).
        if let fresh = loop.groups[ctx.upstreamName] { ctx.group = fresh }
        guard let group = ctx.group else {
            deny(ctx, .upstreamUnavailable("Upstream '\(ctx.upstreamName)' is not available."))
            return
        }
        if let limit = group.inFlightLimit, !ctx.takeInFlightPlace(in: limit) {
            deny(
                ctx,
                .upstreamUnavailable(
                    "Upstream '\(ctx.upstreamName)' already has \(limit.max) requests in flight (max_in_flight)."))
            return
        }
        // A previous attempt that probed and ended without an outcome (nothing held against the target): the probe
        // is given up before picking, so this attempt may take it again.
        if let probe = ctx.probe, !ctx.outcomeReported { ctx.pool?.circuit?.probeAbandoned(probe) }
        ctx.probe = nil
        guard let picked = group.pick(excluding: excluding) else {
            // A retry with no target left answers as the failed attempt would have.
            deny(
                ctx,
                ctx.failedAttempt
                    ?? .upstreamUnavailable(
                        "No target of upstream '\(ctx.upstreamName)' is available (unhealthy or circuit open)."))
            return
        }
        let pool = picked.pool
        ctx.pool = pool
        ctx.probe = picked.probe
        ctx.outcomeReported = false
        ctx.attempts += 1
        machine.acquiring()
        switch pool.acquire({ { [self] result in self.acquired(ctx, pool, result) } }) {
        case .ready(let conn): attach(ctx, conn)
        case .waiting(let waiter): ctx.waiter = waiter
        case .failed(let error): upstreamFailed(ctx, error)
        }
    }

    private func acquired(_ ctx: RequestContext, _ pool: TargetPool, _ result: Result<UpstreamConnection, UpstreamError>) {
        ctx.waiter = nil
        switch result {
        case .success(let conn):
            guard current === ctx, !ctx.ended else {
                // A finished exchange cancels its wait, so this should not happen; never strand the connection.
                pool.giveBack(conn)
                return
            }
            attach(ctx, conn)
        case .failure(let error):
            guard current === ctx else { return }
            upstreamFailed(ctx, error)
        }
    }

    private func attach(_ ctx: RequestContext, _ conn: UpstreamConnection) {
        guard let head = ctx.upstreamHead, current === ctx, !ctx.ended else {
            ctx.pool?.giveBack(conn)
            return
        }
        let timeout = TimeAmount.nanoseconds(ctx.group?.config.responseTimeout ?? 30_000_000_000)
        guard conn.begin(head: head, delegate: self, responseTimeout: timeout, upgrade: ctx.websocket) else {
            ctx.pool?.giveBack(conn)
            upstreamFailed(ctx, .unusableConnection("upstream connection is not idle"))
            return
        }
        ctx.connection = conn
        if ctx.upstreamStart == nil {
            ctx.upstreamStart = .now()
            if ctx.trace.sampled && loop.telemetry.spans != nil { ctx.upstreamSpan = loop.tracer.nextSpanID() }
        }
        let sendEnd = machine.attached()
        for buffer in ctx.held { conn.sendBody(buffer) }
        ctx.held.removeAll()
        if sendEnd {
            conn.sendEnd()
        } else {
            conn.flush()
            if !conn.isWritable { machine.setPaused(.upstreamBackpressure, true) }
        }
        updateReading()
    }

    func upstreamFailed(_ ctx: RequestContext, _ error: UpstreamError, mayRetry: Bool = true) {
        ctx.connection = nil
        if error.isTargetFailure { reportOutcome(ctx, success: false) }
        var retry = mayRetry && ctx.mayRetry(after: error, retries: ctx.group?.config.retries ?? 0)
        if error.isPoolClosed {
            // A reload replaced the pools while this waited: once more on the new ones, not counted as an attempt.
            retry = loop.groups[ctx.upstreamName].map { $0 !== ctx.group } ?? false
            if retry { ctx.attempts -= 1 }
        }
        let metadata: Logger.Metadata = [
            "gh-request-id": "\(ctx.requestID)", "gh-upstream": "\(ctx.upstreamName)", "gh-error": "\(error)",
        ]
        let denial: Denial
        if error.isTimeout {
            denial = .upstreamTimeout("Upstream '\(ctx.upstreamName)' did not answer in time.")
        } else if error.isUnavailable {
            denial = .upstreamUnavailable("No connection to upstream '\(ctx.upstreamName)' is available.")
        } else {
            denial = .badGateway("Upstream '\(ctx.upstreamName)' refused or reset the connection.")
        }
        switch machine.upstreamFailed(retry: retry) {
        case .retry:
            loop.logger.debug("retrying upstream request", metadata: metadata)
            ctx.failedAttempt = denial
            connect(ctx, excluding: ctx.pool)
        case .deny:
            loop.logger.warning("upstream request failed", metadata: metadata)
            deny(ctx, denial)
        case .ended(let end):
            // Mid-response: the client's response cannot be completed; the cut is made visible by closing.
            loop.logger.warning("upstream failed mid-response", metadata: metadata)
            finish(end, ctx)
        case .none:
            break
        }
    }

    /// The current attempt's outcome, to its target's circuit breaker (once per attempt; a no-op without one).
    func reportOutcome(_ ctx: RequestContext, success: Bool) {
        guard !ctx.outcomeReported, let pool = ctx.pool else { return }
        ctx.outcomeReported = true
        guard let circuit = pool.circuit else { return }
        switch circuit.record(success: success, probe: ctx.probe, now: .now()) {
        case .none:
            break
        case .opened:
            loop.logger.warning(
                "upstream target circuit opened",
                metadata: [
                    "gh-request-id": "\(ctx.requestID)", "gh-upstream": "\(ctx.upstreamName)",
                    "gh-target": "\(pool.target)", "gh-probe": "\(ctx.probe != nil)",
                ])
        case .closed:
            loop.logger.notice(
                "upstream target circuit closed",
                metadata: [
                    "gh-request-id": "\(ctx.requestID)", "gh-upstream": "\(ctx.upstreamName)",
                    "gh-target": "\(pool.target)",
                ])
        }
    }

    // MARK: WebSocket tunnel

    /// Client bytes after a WebSocket handshake: into the tunnel, or held until the upstream's 101 opens it
    /// (bounded: reading is paused from the handshake's end, so at most what one read brought is held).
    /// (The handshake may still be queued behind a pipelined request: the bytes wait for it all the same.)
    private func tunnelInput(_ buffer: ByteBuffer) {
        guard machine.inTunnel, let ctx = current, let conn = ctx.connection else {
            tunnelAheadBytes += buffer.readableBytes
            if tunnelAheadBytes > loop.connectionConfiguration.maxReadAheadBytes {
                tunnelAhead.removeAll()
                context.close(promise: nil)
            } else {
                tunnelAhead.append(buffer)
            }
            return
        }
        ctx.tunnelBytesIn += Int64(buffer.readableBytes)
        machine.tunnelActivity(now: .now())
        conn.sendTunnel(buffer)
        if !conn.isWritable {
            // The upstream is not keeping up: stop reading the client until it drains.
            machine.setPaused(.upstreamBackpressure, true)
            conn.flush()
        }
    }

    /// The upstream answered the handshake with 101: the 101 goes to the client and the exchange becomes a tunnel.
    func openTunnel(_ ctx: RequestContext, _ head: HTTP1ResponseParser.Head) {
        var upgrade: String? = nil
        for (name, value) in head.headers where name.utf8.count == 7 && HopByHop.equalsLower(name.utf8, "upgrade") {
            upgrade = value
        }
        let idle = TimeAmount.nanoseconds(ctx.route?.websocketIdleTimeout ?? 300_000_000_000)
        guard let upgrade, HopByHop.equalsLower(ASCII.trimmed(Substring(upgrade)).utf8, "websocket"),
            machine.tunnelOpened(now: .now(), idleTimeout: idle), let conn = ctx.connection
        else {
            // The connection already left its pool as a tunnel: close it (it must not talk to this exchange
            // again), and answer 502 without a retry (the upstream did answer, wrongly).
            ctx.connection?.abandon(by: self)
            upstreamFailed(
                ctx, .malformedResponse("101 to a WebSocket handshake without Upgrade: websocket"), mayRetry: false)
            return
        }
        reportOutcome(ctx, success: true)
        ctx.tunnelOpened = .now()
        loop.metrics.websocketsOpen += 1
        // A tunnel is no longer a request in flight (`max_websockets` bounds tunnels).
        ctx.leaveInFlight()
        // The audit place was held for the handshake (back-pressure); the record written at the close does not
        // need one, and a long-lived tunnel must not hold a place in the queue.
        if ctx.auditReserved, let audit = loop.audit {
            audit.unreserve()
            ctx.auditReserved = false
        }
        var buffer = context.channel.allocator.buffer(capacity: 512)
        writeStatusLine(&buffer, version: ctx.head.version, code: 101, reason: head.reason)
        _ = writeUpstreamHeaders(&buffer, head.headers, for: ctx)
        buffer.writeStaticString("Connection: Upgrade\r\nUpgrade: websocket\r\n")
        for (name, value) in ctx.responseHeaders { writeHeader(&buffer, name, value) }
        for (name, value) in ctx.corsHeaders { writeHeader(&buffer, name, value) }
        writeHeader(&buffer, "X-Request-ID", ctx.requestID)
        buffer.writeStaticString("\r\n")
        context.writeAndFlush(wrapOutboundOut(buffer), promise: nil)
        // What the client sent ahead of the 101 goes first.
        let ahead = tunnelAhead
        tunnelAhead.removeAll()
        tunnelAheadBytes = 0
        for part in ahead {
            ctx.tunnelBytesIn += Int64(part.readableBytes)
            conn.sendTunnel(part)
        }
        conn.flush()
        if !conn.isWritable { machine.setPaused(.upstreamBackpressure, true) }
        updateReading()
    }

    // MARK: Ending exchanges

    /// Answers `ctx` with a problem document (when nothing was answered yet).
    func deny(_ ctx: RequestContext, _ denial: Denial) {
        guard current === ctx, !ctx.ended,
            let (keepAlive, end) = machine.denied(
                status: denial.status, code: denial.code, closeConnection: denial.closeConnection, now: .now())
        else { return }
        writeProblem(denial, for: ctx, keepAlive: keepAlive)
        if let end {
            finish(end, ctx)  // flushes
        } else {
            context.flush()
        }
    }

    /// The one place an exchange's end is acted on (the machine returns each ``End`` once). The exchange is
    /// marked ended and its upstream released before any client I/O (a flush that fails closes the channel and
    /// re-enters this handler); the record is written after the response is flushed.
    func finish(_ end: ClientConnectionStateMachine.End, _ ctx: RequestContext) {
        guard !ctx.ended else { return }
        ctx.ended = true
        if current === ctx { current = nil }
        loop.metrics.exchangesInFlight -= 1
        switch end.upstream {
        case .abandon:
            ctx.connection?.abandon(by: self)
        case .cancelWait:
            if let waiter = ctx.waiter { ctx.pool?.cancel(waiter) }
        case .none:
            assert(ctx.connection == nil && ctx.waiter == nil, "an exchange ended holding what its End did not name")
        }
        if let probe = ctx.probe, !ctx.outcomeReported {
            ctx.outcomeReported = true
            // Given up before it reached the target: the next request probes. Sent, then cut (the client went
            // away): no verdict; the next probe goes open_for after this one.
            if ctx.connection == nil { ctx.pool?.circuit?.probeAbandoned(probe) }
        }
        ctx.connection = nil
        ctx.waiter = nil
        ctx.held.removeAll()
        pendingChunkTotal = nil
        ctx.leaveInFlight()
        if let slot = ctx.tunnelSlot {
            ctx.tunnelSlot = nil
            loop.tunnels.release(slot)
        }
        if ctx.tunnelOpened != nil { loop.metrics.websocketsOpen -= 1 }
        // The response goes out first; the record (audit, metrics) touches only this exchange, whatever the flush
        // sets off.
        defer { record(ctx, end) }
        switch end.next {
        case .nextRequest:
            context.flush()
            updateReading()
            if !queue.isEmpty {
                context.eventLoop.assumeIsolated().execute { [self] in self.processQueue() }
            }
        case .close where ctx.tunnelOpened != nil:
            // A tunnel's last bytes (the upstream's close frame among them) reach a slow client before the close.
            context.closeWhenFlushed(within: loop.connectionConfiguration.linger)
        case .close:
            queue.removeAll()
            context.flush()
            context.close(promise: nil)
        case .linger:
            // Shut our side and read and drop input for a moment, so the client sees the response, not a reset.
            queue.removeAll()
            context.flush()
            let channel = context.channel
            let promise = context.eventLoop.makePromise(of: Void.self)
            context.close(mode: .output, promise: promise)
            promise.futureResult.whenFailure { _ in channel.close(promise: nil) }
            updateReading()
        }
    }

    /// The record phase: the audit record (audited methods, and denials when configured), the metrics, the
    /// access-log line and the spans.
    private func record(_ ctx: RequestContext, _ end: ClientConnectionStateMachine.End) {
        // A tunnel's request lasted until its 101 (its life is the record's duration_ms, not a latency).
        let now = NIODeadline.now()
        let elapsed = ((ctx.tunnelOpened ?? now) - ctx.start).nanoseconds
        let decision = end.denied ? "deny" : "allow"
        let status = end.status == 0 ? 499 : end.status
        let upstream = !end.denied && ctx.upstreamStart != nil ? ctx.upstreamName : nil
        let route = ctx.routeName == "-" ? nil : ctx.routeName
        let telemetry = loop.telemetry
        let logLine = telemetry.accessLog.map { $0.logs(denied: end.denied, status: status, random: &loop.random) } ?? false
        let traced = ctx.trace.sampled && telemetry.spans != nil
        // The request's start: the wall-clock reading its phases took, else now less its duration.
        var startMillis: Int64 = 0
        if loop.audit != nil || logLine || traced {
            startMillis =
                ctx.wallClockReading.map { Int64($0 * 1000) } ?? (Int64(loop.clock.now() * 1000) - elapsed / 1_000_000)
        }
        // The path without the query; a target not in origin form (absolute, perhaps with user:password@) is
        // recorded by the path validation read from it, or as "-".
        let uri = ctx.head.uri
        let path: Substring =
            uri.hasPrefix("/") || uri == "-" || uri == "*"
            ? (uri.firstIndex(of: "?").map { uri[..<$0] } ?? uri[...]) : (ctx.path.isEmpty ? "-" : ctx.path)
        if let audit = loop.audit {
            let method = ctx.head.method.rawValue
            if ctx.auditReserved || ctx.tunnelOpened != nil || audit.audits(method: method) || (audit.denials && end.denied) {
                var r = AuditRecord(
                    timeMillis: startMillis, requestID: ctx.requestID, tenant: ctx.caller.tenant, user: ctx.caller.user,
                    method: method, path: String(path), route: route, status: status,
                    decision: decision, code: end.code.isEmpty ? nil : end.code, latencyMicros: elapsed / 1000,
                    clientIP: ctx.clientAddress ?? clientAddress, upstream: upstream)
                r.traceID = ctx.trace.traceID
                r.failOpen = ctx.failOpen
                if let opened = ctx.tunnelOpened {
                    r.tunnel = AuditRecord.Tunnel(
                        bytesIn: ctx.tunnelBytesIn, bytesOut: ctx.tunnelBytesOut,
                        durationMillis: (now - opened).nanoseconds / 1_000_000)
                }
                audit.append(r, reserved: ctx.auditReserved)
                ctx.auditReserved = false
            }
        }
        loop.metrics.record(route: ctx.routeName, status: status, decision: decision, code: end.code, seconds: Double(elapsed) / 1e9)
        // A tenant with a record only: a tenant id a client merely sent never becomes a label.
        if let tenant = ctx.caller.tenant, ctx.caller.record != nil { loop.metrics.tenantRequests[tenant, default: 0] += 1 }
        var upstreamNanos: Int64? = nil
        if let up = ctx.upstreamStart, !end.denied {
            upstreamNanos = ((ctx.tunnelOpened ?? now) - up).nanoseconds
            loop.metrics.recordUpstream(ctx.upstreamName, seconds: Double(upstreamNanos!) / 1e9)
        }
        if logLine, let accessLog = telemetry.accessLog {
            let tunnel = ctx.tunnelOpened != nil
            accessLog.append(
                AccessLog.Line(
                    timeMillis: startMillis, requestID: ctx.requestID, trace: ctx.trace,
                    clientIP: ctx.clientAddress ?? clientAddress, method: ctx.head.method.rawValue, path: path,
                    route: route, status: status, denied: end.denied,
                    code: end.code.isEmpty ? nil : end.code, tenant: ctx.caller.tenant, user: ctx.caller.user,
                    plan: ctx.caller.plan, upstream: upstream, latencyMicros: elapsed / 1000,
                    upstreamMicros: upstreamNanos.map { $0 / 1000 },
                    bytesIn: tunnel ? ctx.tunnelBytesIn : ctx.bytesIn, bytesOut: tunnel ? ctx.tunnelBytesOut : ctx.bytesOut,
                    userAgent: ctx.head.headers.first(name: "user-agent")),
                shard: loop.shard)
        }
        if traced, let spans = telemetry.spans {
            recordSpans(
                ctx, spans, route: route ?? "", decision: decision, status: status, end: end, startMillis: startMillis,
                elapsed: elapsed, upstreamNanos: upstreamNanos)
        }
    }

    /// The gateway's server span and, when the request reached an upstream, the upstream call's client span.
    private func recordSpans(
        _ ctx: RequestContext, _ spans: SpanExporter, route: String, decision: String, status: Int,
        end: ClientConnectionStateMachine.End, startMillis: Int64, elapsed: Int64, upstreamNanos: Int64?
    ) {
        let method = ctx.head.method.rawValue
        let start = UInt64(max(0, startMillis)) * 1_000_000
        let error = status >= 500 ? (end.code.isEmpty ? "HTTP \(status)" : end.code) : nil
        let trace = ctx.trace
        let server = SpanData(
            traceHigh: trace.traceHigh, traceLow: trace.traceLow, spanID: trace.span, parentSpanID: trace.parentSpan,
            traceState: trace.traceState, name: route.isEmpty ? method : method + " " + route, kind: .server,
            startNanos: start, endNanos: start + UInt64(max(0, elapsed)),
            attributes: [
                .init("http.request.method", .string(method)),
                .init("http.route", .string(route)),
                .init("http.response.status_code", .int(Int64(status))),
                .init("gatehouse.tenant", .string(ctx.caller.tenant ?? "")),
                .init("gatehouse.plan", .string(ctx.caller.plan ?? "")),
                .init("gatehouse.decision", .string(decision)),
                .init("gatehouse.code", .string(end.code)),
                .init("gatehouse.request_id", .string(ctx.requestID)),
                .init("url.path", .string(String(ctx.path.isEmpty ? "-" : ctx.path))),
                .init("client.address", .string(ctx.clientAddress ?? clientAddress)),
            ],
            errorMessage: error)
        guard ctx.upstreamSpan != 0, let up = ctx.upstreamStart, let upstreamNanos else {
            spans.enqueue(server)
            return
        }
        let upStart = start + UInt64(max(0, (up - ctx.start).nanoseconds))
        var attributes: [SpanData.Attribute] = [
            .init("http.request.method", .string(method)),
            .init("http.route", .string(route)),
            .init("http.response.status_code", .int(Int64(status))),
            .init("gatehouse.upstream", .string(ctx.upstreamName)),
            .init("gatehouse.tenant", .string(ctx.caller.tenant ?? "")),
            .init("gatehouse.plan", .string(ctx.caller.plan ?? "")),
            .init("gatehouse.decision", .string(decision)),
            .init("gatehouse.code", .string(end.code)),
        ]
        if let target = ctx.pool?.target {
            attributes.append(.init("server.address", .string(target.host)))
            attributes.append(.init("server.port", .int(Int64(target.port))))
        }
        let client = SpanData(
            traceHigh: trace.traceHigh, traceLow: trace.traceLow, spanID: ctx.upstreamSpan, parentSpanID: trace.span,
            traceState: trace.traceState, name: method + " " + ctx.upstreamName, kind: .client, startNanos: upStart,
            endNanos: upStart + UInt64(max(0, upstreamNanos)), attributes: attributes, errorMessage: error)
        spans.enqueue(server, client)
    }
}

extension ProxyHandler: PhaseResumer {}

@available(*, unavailable)
extension ProxyHandler: Sendable {}
