import NIOCore

/// The life of one client connection and of the exchange it is carrying (STYLE 4, "The lifecycle invariant").
///
/// The connection is idle, reading a request head, carrying an exchange, tunnelling (a WebSocket after the
/// upstream's 101), closing (lingering so the client reads its last response), or closed. Input that arrives while an exchange's request is complete (pipelined
/// requests, a malformed request behind a good one) is queued in order and counted; reading pauses when the
/// queue holds `maxPipelinedRequests` heads or `maxReadAheadBytes` bytes, so a client cannot grow our memory.
///
/// An exchange ends exactly once. Every way it can end (response complete with the request read, denial,
/// upstream failure mid-response, client hang-up, request or send timeout, a malformed request) goes through
/// one private `end` that moves the connection out of `.exchange` and returns an ``End``: what to do with the
/// upstream connection or pool wait, the status and code to record, and what the connection does next. Events
/// that arrive after that are no-ops. No I/O and no clock reads inside: the handler passes `now`.
struct ClientConnectionStateMachine {
    struct Configuration {
        var idleTimeout: TimeAmount
        /// Time to receive a request head from its first byte: the header timeout, capped by the request timeout.
        var headerTimeout: TimeAmount
        /// Time to receive a whole request (head and body) from its first byte.
        var requestTimeout: TimeAmount
        /// How long the client may accept no bytes while we have some to write.
        var sendTimeout: TimeAmount
        var maxPipelinedRequests: Int
        var maxReadAheadBytes: Int
        /// Body bytes held before the upstream is chosen (chunked requests), so a small over-limit body is refused
        /// before anything is sent upstream.
        var chunkedHoldBytes: Int
        /// After the last response on a connection whose request was not read whole: how long input is read and
        /// dropped, so the client sees the response and not a reset.
        var linger: TimeAmount
    }

    /// Why reading from the client is paused (any reason pauses).
    struct PauseReasons: OptionSet {
        let rawValue: UInt8
        /// The pipelined queue is full.
        static let pipeline = PauseReasons(rawValue: 1)
        /// The upstream socket is not writable.
        static let upstreamBackpressure = PauseReasons(rawValue: 2)
        /// A chunked body is held (up to `chunkedHoldBytes`) until the upstream connection is ready.
        static let holding = PauseReasons(rawValue: 4)
        /// A WebSocket handshake ended: the parser reads nothing after it, so reading waits for the tunnel (or
        /// the refusal, which closes the connection).
        static let upgrade = PauseReasons(rawValue: 8)
    }

    /// Input as the queue counts it.
    enum Input: Equatable {
        case head
        case body(Int)
        case end
        /// The decoder failed: a malformed request (or one over a limit).
        case malformed
    }

    enum InboundAction: Equatable {
        /// Handle it now.
        case process
        /// Keep it, in order, until the current exchange ends.
        case enqueue
        /// Drop it (closing, draining).
        case discard
    }

    /// What becomes of the exchange's upstream side when it ends.
    enum UpstreamDisposal: Equatable {
        /// Nothing held: never connected, or the connection already went back to its pool or closed.
        case none
        /// A connection carries an unfinished exchange: close it (its pool slot is released as closed).
        case abandon
        /// Waiting for a pool connection: leave the queue.
        case cancelWait
    }

    /// What the connection does after an exchange ended.
    enum Next: Equatable {
        /// Keep-alive: take the next (possibly queued) request.
        case nextRequest
        /// Close now (the request was read whole, or the client is gone).
        case close
        /// Shut our output and read-and-drop input until the linger deadline, then close.
        case linger
    }

    /// One exchange's end, returned once.
    struct End: Equatable {
        var status: Int
        /// The problem code of a denial, or why the exchange was cut (`client_closed`, `send_timeout`, …); empty
        /// for a complete allowed exchange.
        var code: String
        var denied: Bool
        var upstream: UpstreamDisposal
        var next: Next
    }

    /// The exchange in progress.
    struct Exchange: Equatable {
        enum Request: Equatable { case receiving, ended }
        enum Upstream: Equatable {
            /// Phases, rate limiter or audit queue still deciding; nothing sent.
            case deciding
            /// Allowed: waiting for enough body (chunked) to choose a connection.
            case admitted
            /// Waiting for a pool connection.
            case acquiring
            /// A connection carries the request.
            case attached
            /// The gateway answers the request itself (an endpoint such as the billing webhook): the body is kept,
            /// within the body limit, until the request has ended.
            case local
            /// The connection was released (response end, failure) or never used.
            case detached
        }
        enum Response: Equatable { case pending, streaming, complete }

        var request: Request = .receiving
        var upstream: Upstream = .deciding
        var response: Response = .pending
        var keepAlive: Bool
        let firstByte: NIODeadline
        var hasBody: Bool
        var chunked: Bool
        var bodyLimit = Int.max
        var bodyBytes = 0
        var heldBytes = 0
        var denied = false
        var status = 0
        /// Why it ended, when not simply complete (a plain value, so the state copies without reference counting;
        /// a denial's code is kept beside the state).
        var reason: EndReason = .none
    }

    /// The `code` an ``End`` records, short of a denial's own.
    enum EndReason: Equatable {
        case none, denied, clientClosed, sendTimeout, requestTimeout, upstreamReset, badRequest, idleTimeout

        var code: String {
            switch self {
            case .none, .denied: ""
            case .clientClosed: "client_closed"
            case .sendTimeout: "send_timeout"
            case .requestTimeout: "request_timeout"
            case .upstreamReset: "upstream_reset"
            case .badRequest: "bad_request"
            case .idleTimeout: "idle_timeout"
            }
        }
    }

    /// A WebSocket tunnel: bytes pass both ways, with back-pressure, until either side closes or none moves for
    /// `idleTimeout`. The send timeout does not apply: a client that stops reading pauses the upstream, and the
    /// idle timeout ends that.
    struct Tunnel: Equatable {
        var lastActivity: NIODeadline
        let idleTimeout: TimeAmount
    }

    enum State: Equatable {
        case idle(since: NIODeadline)
        case readingHead(since: NIODeadline)
        case exchange(Exchange)
        case tunnel(Tunnel)
        /// The last response is written; `lingerUntil` is set while input is read and dropped.
        case closing(lingerUntil: NIODeadline?)
        case closed
    }

    let configuration: Configuration
    private(set) var state: State
    private(set) var paused: PauseReasons = []
    private(set) var queuedHeads = 0
    private(set) var queuedBytes = 0
    private(set) var queuedItems = 0
    /// No further requests are taken (drain).
    private(set) var noMoreRequests = false
    /// A malformed request waits in the queue.
    private var malformedQueued = false
    /// The current exchange's denial code (beside the state, which stays a plain value).
    private var deniedCode = ""
    private var unwritableSince: NIODeadline?

    init(configuration: Configuration, now: NIODeadline) {
        self.configuration = configuration
        self.state = .idle(since: now)
    }

    var readingAllowed: Bool {
        if case .closed = state { return false }
        return paused.isEmpty
    }

    var exchange: Exchange? {
        if case .exchange(let ex) = state { return ex }
        return nil
    }

    var isClosing: Bool {
        switch state {
        case .closing, .closed: return true
        default: return false
        }
    }

    var inTunnel: Bool {
        if case .tunnel = state { return true }
        return false
    }

    // MARK: Input

    /// Bytes of a request head are arriving: an idle connection starts its header timer.
    mutating func bytesArrived(now: NIODeadline) {
        if case .idle = state { state = .readingHead(since: now) }
    }

    /// Where one decoded input goes.
    mutating func inbound(_ input: Input) -> InboundAction {
        switch state {
        case .closing, .closed, .tunnel:
            return .discard
        case .exchange(let ex) where ex.request == .ended:
            return enqueue(input)
        case .idle, .readingHead, .exchange:
            return queuedItems > 0 ? enqueue(input) : .process
        }
    }

    private mutating func enqueue(_ input: Input) -> InboundAction {
        // Nothing after a malformed request is ever served (and the decoder reports every later read as another
        // error): keep the first, drop the rest, stop reading.
        if noMoreRequests || malformedQueued { return .discard }
        if input == .malformed {
            malformedQueued = true
            paused.insert(.pipeline)
        }
        queuedItems += 1
        switch input {
        case .head: queuedHeads += 1
        case .body(let n): queuedBytes += n
        case .end, .malformed: break
        }
        if queuedHeads >= configuration.maxPipelinedRequests || queuedBytes >= configuration.maxReadAheadBytes {
            paused.insert(.pipeline)
        }
        return .enqueue
    }

    /// Whether queued input may be handled now (no exchange, or one still reading its request).
    var takesQueuedInput: Bool {
        switch state {
        case .idle, .readingHead: return true
        case .exchange(let ex): return ex.request == .receiving
        case .tunnel, .closing, .closed: return false
        }
    }

    /// One queued input is taken out to be handled.
    mutating func dequeued(_ input: Input) {
        queuedItems -= 1
        switch input {
        case .head: queuedHeads -= 1
        case .body(let n): queuedBytes -= n
        case .end, .malformed: break
        }
        if queuedHeads < configuration.maxPipelinedRequests && queuedBytes < configuration.maxReadAheadBytes
            && !malformedQueued
        {
            paused.remove(.pipeline)
        }
    }

    mutating func setPaused(_ reason: PauseReasons, _ on: Bool) {
        if on { paused.insert(reason) } else { paused.remove(reason) }
    }

    // MARK: The exchange

    /// A request head is being handled: the exchange starts. Its request timer runs from the head's first byte.
    mutating func startExchange(now: NIODeadline, keepAlive: Bool, hasBody: Bool, chunked: Bool, upgrade: Bool) {
        let firstByte: NIODeadline
        if case .readingHead(let since) = state { firstByte = since } else { firstByte = now }
        let ex = Exchange(
            keepAlive: keepAlive && !noMoreRequests && !upgrade, firstByte: firstByte, hasBody: hasBody, chunked: chunked)
        state = .exchange(ex)
        upgradePending = upgrade
    }

    /// Set while an `Upgrade` request is being read: reading pauses at its end.
    private var upgradePending = false

    /// The request's framing, once validated (until then a body is assumed, so an early denial closes).
    mutating func framingKnown(hasBody: Bool, chunked: Bool, upgrade: Bool) {
        modify {
            $0.hasBody = hasBody
            $0.chunked = chunked
            if upgrade { $0.keepAlive = false }
        }
        if upgrade { upgradePending = true }
    }

    mutating func setBodyLimit(_ limit: Int) {
        modify { $0.bodyLimit = limit }
    }

    enum BodyAction: Equatable {
        /// Write it to the upstream connection.
        case forward
        /// Keep it until a connection is attached; `connect` when enough is held to choose one now.
        case hold(connect: Bool)
        /// Read and dropped (the response was already decided).
        case discard
        /// Over the body limit: deny with 413.
        case tooLarge
    }

    mutating func requestBody(_ bytes: Int) -> BodyAction {
        guard case .exchange(var ex) = state, ex.request == .receiving else { return .discard }
        ex.bodyBytes += bytes
        defer { state = .exchange(ex) }
        guard ex.response == .pending else { return .discard }
        if ex.bodyBytes > ex.bodyLimit { return .tooLarge }
        switch ex.upstream {
        case .attached:
            return .forward
        case .deciding, .admitted, .acquiring:
            ex.heldBytes += bytes
            let full = ex.heldBytes >= configuration.chunkedHoldBytes
            if full { paused.insert(.holding) }
            return .hold(connect: full && ex.upstream == .admitted)
        case .local:
            ex.heldBytes += bytes
            return .hold(connect: false)
        case .detached:
            return .discard
        }
    }

    /// The request's chunks have announced `declaredTotal` bytes: true when that cannot fit in the body limit
    /// (413 at once, before the bytes arrive).
    func chunkExceedsLimit(declaredTotal: Int) -> Bool {
        guard case .exchange(let ex) = state, ex.chunked, ex.request == .receiving, ex.response == .pending else {
            return false
        }
        return declaredTotal > ex.bodyLimit
    }

    enum RequestEndAction: Equatable {
        case none
        /// Write the request's end upstream.
        case sendEnd
        /// Allowed and the whole body is held: choose a connection now.
        case connect
        /// The whole request of a local endpoint is here: answer it.
        case answerLocally
        /// The exchange is over.
        case ended(End)
    }

    mutating func requestEnd(now: NIODeadline) -> RequestEndAction {
        guard case .exchange(var ex) = state, ex.request == .receiving else { return .none }
        ex.request = .ended
        state = .exchange(ex)
        paused.remove(.holding)
        if upgradePending { paused.insert(.upgrade) }
        switch ex.response {
        case .complete:
            return .ended(end(ex, now: now))
        case .streaming:
            return .none
        case .pending:
            switch ex.upstream {
            case .attached: return .sendEnd
            case .admitted: return .connect
            case .local: return .answerLocally
            default: return .none
            }
        }
    }

    enum AdmitAction: Equatable {
        /// Choose a connection now.
        case connect
        /// Hold the (chunked) body until enough of it is here.
        case waitForBody
        /// The exchange ended meanwhile.
        case none
    }

    /// Every phase before forwarding passed.
    mutating func admitted() -> AdmitAction {
        guard case .exchange(var ex) = state, ex.response == .pending, ex.upstream == .deciding else { return .none }
        ex.upstream = .admitted
        state = .exchange(ex)
        if !ex.chunked || ex.request == .ended || ex.heldBytes >= configuration.chunkedHoldBytes { return .connect }
        return .waitForBody
    }

    /// Every phase passed for a request the gateway answers itself: `connect` means the whole request is here
    /// (answer now), `waitForBody` that ``requestEnd(now:)`` will say `answerLocally`.
    mutating func admittedLocally() -> AdmitAction {
        guard case .exchange(var ex) = state, ex.response == .pending, ex.upstream == .deciding else { return .none }
        ex.upstream = .local
        state = .exchange(ex)
        // Held while the phases decided, the body may have reached the hold size: it is bounded by the body
        // limit from now on, so reading resumes.
        paused.remove(.holding)
        return ex.request == .ended ? .connect : .waitForBody
    }

    /// A pool wait started (the connection arrives through ``attached()`` or the wait fails).
    mutating func acquiring() {
        modify { if $0.upstream == .admitted { $0.upstream = .acquiring } }
    }

    /// A connection now carries the request; true when the request's end must be sent too.
    mutating func attached() -> Bool {
        guard case .exchange(var ex) = state else { return false }
        ex.upstream = .attached
        ex.heldBytes = 0
        state = .exchange(ex)
        paused.remove(.holding)
        return ex.request == .ended
    }

    enum UpstreamFailureAction: Equatable {
        /// Try another target (the handler decided a retry is safe).
        case retry
        /// Nothing was answered yet: deny with the error's status.
        case deny
        /// The response had started: cut the client connection.
        case ended(End)
        case none
    }

    mutating func upstreamFailed(retry: Bool) -> UpstreamFailureAction {
        guard case .exchange(var ex) = state else { return .none }
        ex.upstream = .detached
        paused.remove(.upstreamBackpressure)  // nothing is written upstream any more
        switch ex.response {
        case .pending:
            if retry {
                ex.upstream = .admitted
                state = .exchange(ex)
                return .retry
            }
            state = .exchange(ex)
            return .deny
        case .streaming:
            ex.reason = .upstreamReset
            return .ended(end(ex, now: nil, next: .close))
        case .complete:
            state = .exchange(ex)
            return .none
        }
    }

    /// The upstream's response head is being written; returns whether the connection stays open after it.
    mutating func responseHead(status: Int, keepAliveAllowed: Bool) -> Bool {
        guard case .exchange(var ex) = state, ex.response == .pending else { return false }
        ex.response = .streaming
        ex.status = status
        if !keepAliveAllowed || noMoreRequests { ex.keepAlive = false }
        state = .exchange(ex)
        return ex.keepAlive
    }

    /// The upstream's response is complete (its connection went back to the pool or closed).
    mutating func responseEnd(now: NIODeadline) -> End? {
        guard case .exchange(var ex) = state, ex.response == .streaming else { return nil }
        ex.response = .complete
        ex.upstream = .detached
        state = .exchange(ex)
        // An early answer: the rest of the body is read and dropped, whatever the upstream socket's state.
        paused.remove(.upstreamBackpressure)
        return endIfDone(ex, now: now)
    }

    /// The gateway answers with a denial, which the handler writes. Returns whether the connection stays open
    /// after it and the exchange's end if that is now; nil when a response was already under way (nothing is
    /// written then).
    mutating func denied(status: Int, code: String, closeConnection: Bool, now: NIODeadline) -> (keepAlive: Bool, end: End?)? {
        guard case .exchange(var ex) = state, ex.response == .pending else { return nil }
        ex.response = .complete
        ex.denied = true
        ex.status = status
        ex.reason = .denied
        deniedCode = code
        paused.remove(.upstreamBackpressure)
        let bodyPending = ex.request == .receiving && ex.hasBody
        if bodyPending || closeConnection || noMoreRequests { ex.keepAlive = false }
        state = .exchange(ex)
        let keepAlive = ex.keepAlive
        return (keepAlive, endIfDone(ex, now: now))
    }

    /// The response is complete: the exchange ends when its request was read whole or the connection closes
    /// anyway; otherwise (answered early) the body is read and dropped until it ends.
    private mutating func endIfDone(_ ex: Exchange, now: NIODeadline) -> End? {
        guard ex.response == .complete, ex.request == .ended || !ex.keepAlive else { return nil }
        return end(ex, now: now)
    }

    // MARK: Tunnel

    /// The upstream answered a WebSocket handshake with 101: the exchange becomes a tunnel. False when this is not
    /// the handshake's exchange, or it ended meanwhile (the caller then closes what it holds).
    mutating func tunnelOpened(now: NIODeadline, idleTimeout: TimeAmount) -> Bool {
        guard case .exchange(let ex) = state, upgradePending, ex.request == .ended, ex.response == .pending,
            ex.upstream == .attached
        else { return false }
        upgradePending = false
        state = .tunnel(Tunnel(lastActivity: now, idleTimeout: idleTimeout))
        paused.remove(.upgrade)
        paused.remove(.holding)
        paused.remove(.upstreamBackpressure)
        unwritableSince = nil
        return true
    }

    /// Bytes moved through the tunnel, either way.
    mutating func tunnelActivity(now: NIODeadline) {
        guard case .tunnel(var t) = state else { return }
        t.lastActivity = now
        state = .tunnel(t)
    }

    /// The upstream side of the tunnel closed: the tunnel ends, and the client connection with it.
    mutating func tunnelClosedByUpstream() -> End? {
        guard case .tunnel = state else { return nil }
        return endTunnel(.none)
    }

    private mutating func endTunnel(_ reason: EndReason) -> End {
        state = .closed
        paused = []
        clearQueue()
        return End(status: 101, code: reason.code, denied: false, upstream: .abandon, next: .close)
    }

    // MARK: Ends

    /// The client connection closed.
    mutating func clientClosed() -> End? {
        if case .tunnel = state { return endTunnel(.none) }
        guard case .exchange(var ex) = state else {
            state = .closed
            return nil
        }
        if ex.response != .complete {
            ex.status = 499
            ex.reason = .clientClosed
        }
        return end(ex, now: nil, next: .close)
    }

    /// A malformed request was decoded (or the decoder gave up). Tells the handler which exchange it ends.
    enum MalformedAction: Equatable {
        /// The current exchange is the malformed one and nothing was answered yet: deny it (400, close).
        case denyCurrent
        /// The current exchange is the malformed one but its response had started: cut it.
        case ended(End)
        /// No exchange: answer it as a new one (400, close).
        case denyNew
        case none
    }

    mutating func malformed() -> MalformedAction {
        switch state {
        case .exchange(var ex):
            if ex.response == .pending { return .denyCurrent }
            if ex.reason == .none { ex.reason = .badRequest }
            return .ended(end(ex, now: nil, next: .close))
        case .idle, .readingHead:
            return .denyNew
        case .tunnel, .closing, .closed:
            return .none
        }
    }

    enum SweepAction: Equatable {
        case none
        /// Close the connection (idle too long, linger over, draining while idle).
        case close
        /// A request head did not arrive in time: answer 408 as a new exchange and close.
        case headTimeout
        /// The current request did not arrive in time and nothing was answered: deny it with 408 (close).
        case requestTimeout
        /// The exchange ended by a timeout after its response started (or the client stopped reading).
        case ended(End)
    }

    /// Checks every deadline at `now`.
    mutating func sweep(now: NIODeadline) -> SweepAction {
        if case .closed = state { return .none }
        if case .tunnel(let t) = state {
            return now - t.lastActivity >= t.idleTimeout ? .ended(endTunnel(.idleTimeout)) : .none
        }
        if let since = unwritableSince, now - since >= configuration.sendTimeout {
            // The client accepts nothing: close it and whatever it holds.
            if case .exchange(var ex) = state {
                if ex.response == .pending { ex.status = 499 }
                ex.reason = .sendTimeout
                return .ended(end(ex, now: now, next: .close))
            }
            state = .closed
            return .close
        }
        switch state {
        case .idle(let since):
            if noMoreRequests || now - since >= configuration.idleTimeout {
                state = .closed
                return .close
            }
        case .readingHead(let since):
            if now - since >= configuration.headerTimeout { return .headTimeout }
        case .exchange(var ex):
            guard ex.request == .receiving, now - ex.firstByte >= configuration.requestTimeout else { return .none }
            if ex.response == .pending { return .requestTimeout }
            // Answered (early) but the body never finished.
            if ex.reason == .none { ex.reason = .requestTimeout }
            return .ended(end(ex, now: now, next: .close))
        case .closing(let until):
            if let until, now >= until {
                state = .closed
                return .close
            }
        case .tunnel, .closed:
            break
        }
        return .none
    }

    mutating func writabilityChanged(isWritable: Bool, now: NIODeadline) {
        if isWritable {
            unwritableSince = nil
        } else if unwritableSince == nil {
            unwritableSince = now
        }
    }

    /// Stops taking requests (SIGTERM): queued input is dropped; returns true when the connection can close now.
    mutating func beginDrain() -> Bool {
        noMoreRequests = true
        clearQueue()
        if case .exchange(var ex) = state {
            ex.keepAlive = ex.response == .complete ? ex.keepAlive : false
            state = .exchange(ex)
        }
        if case .idle = state {
            state = .closed
            return true
        }
        return false
    }


    // MARK: Private

    /// The single way out of `.exchange`. `now` stamps the idle or linger state that follows (nil when the
    /// connection closes).
    private mutating func end(_ ex: Exchange, now: NIODeadline?, next forced: Next? = nil) -> End {
        let disposal: UpstreamDisposal
        switch ex.upstream {
        case .attached: disposal = .abandon
        case .acquiring: disposal = .cancelWait
        case .deciding, .admitted, .local, .detached: disposal = .none
        }
        let next: Next
        if let forced {
            next = forced
        } else if !ex.keepAlive || noMoreRequests {
            next = ex.request == .ended ? .close : .linger
        } else {
            next = .nextRequest
        }
        upgradePending = false
        paused.remove(.upstreamBackpressure)
        paused.remove(.holding)
        paused.remove(.upgrade)
        switch (next, now) {
        case (.nextRequest, let now?):
            state = .idle(since: now)
        case (.linger, let now?):
            // Input is read and dropped until the deadline.
            state = .closing(lingerUntil: now + configuration.linger)
            paused = []
            clearQueue()
        default:
            state = .closed
            clearQueue()
        }
        let code = ex.reason == .denied ? deniedCode : ex.reason.code
        return End(status: ex.status, code: code, denied: ex.denied, upstream: disposal, next: next)
    }

    private mutating func clearQueue() {
        malformedQueued = false
        queuedItems = 0
        queuedHeads = 0
        queuedBytes = 0
        paused.remove(.pipeline)
    }

    private mutating func modify(_ body: (inout Exchange) -> Void) {
        guard case .exchange(var ex) = state else { return }
        body(&ex)
        state = .exchange(ex)
    }
}
