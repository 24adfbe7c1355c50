import NIOCore

/// The life of one upstream connection (STYLE 4): idle in its pool, carrying one exchange, a tunnel, or closed.
///
/// A lease is the time between ``begin(deadline:)`` and the end of that exchange. Every lease ends exactly
/// once, in one of two transitions, and each returns the action that tells the pool: `.active → .idle`
/// (the response ended cleanly on a keep-alive connection whose request was sent whole: `release(.reusable)`)
/// or `.active → .closed` (anything else: `release(.closed)`). A connection that dies while idle leaves the pool
/// the same way. Events after `.closed` (the `channelInactive` that follows our own close, a late timer) are
/// no-ops, so nothing is released twice. No I/O and no clock reads: deadlines come in as values.
///
/// A `101 Switching Protocols` to a request that asked for it ends the lease too, in a third way: `.active →
/// .tunnel`, released as closed (the pool forgets the connection and its slot) while the channel stays open as a
/// byte tunnel owned by the delegate, until either side closes it (`.tunnel → .closed`).
public struct UpstreamConnectionStateMachine: Sendable {
    /// How a lease ends for the pool.
    public enum Release: Equatable, Sendable {
        /// Back to the pool's idle list.
        case reusable
        /// Closed: the pool forgets it.
        case closed
    }

    enum State: Equatable {
        case idle
        case active(Lease)
        /// After a 101: bytes pass both ways; the pool no longer counts the connection.
        case tunnel
        case closed
    }

    struct Lease: Equatable {
        /// The request's end was written.
        var requestSent = false
        /// A response head arrived.
        var headSeen = false
        /// The response allows another exchange on this connection.
        var keepAlive = true
        /// How long the upstream may take to answer once the request is sent.
        var responseTimeout: TimeAmount
        /// When the response head must have arrived: set when the request's end is sent (an upload's own time
        /// does not count), nil once the head arrived.
        var deadline: NIODeadline?
        /// The connection carried an exchange before this one (it came from the pool's idle list).
        var reused = false
    }

    public enum Action: Equatable, Sendable {
        case none
        /// Write the request head.
        case writeHead
        /// Hand the response head / a body part to the delegate.
        case forwardHead
        case forwardBody
        /// The response ended: release the lease as given (closing the channel when `.closed`), then tell the
        /// delegate.
        case forwardEnd(Release)
        /// The exchange failed: close the channel, release the lease as closed, tell the delegate.
        case failExchange(UpstreamError)
        /// The delegate gave up on the exchange: close the channel and release the lease as closed; the delegate
        /// is not called back.
        case abandon
        /// Closed while idle: close the channel (if open) and leave the pool.
        case closeIdle
        /// The connection is not idle: the delegate's `begin` is refused.
        case refuseBegin
        /// A 101 answered the request: release the lease as closed without closing the channel, hand the head
        /// to the delegate; the bytes that follow are the tunnel's.
        case openTunnel
        /// Tunnel bytes from the upstream: hand them to the delegate.
        case forwardTunnel
        /// The tunnel ended at the upstream's side (closed, reset, error): close the channel, tell the delegate.
        case endTunnel
        /// The delegate closes its tunnel: close the channel; the delegate is not called back.
        case abandonTunnel
    }

    private(set) var state: State = .idle
    /// Leases begun on this connection.
    private var leases = 0

    public init() {}

    public var isIdle: Bool { state == .idle }
    public var isClosed: Bool { state == .closed }
    public var isTunnel: Bool { state == .tunnel }

    /// Starts a lease; the response head is due `responseTimeout` after the request's end is sent.
    public mutating func begin(responseTimeout: TimeAmount) -> Action {
        guard case .idle = state else { return .refuseBegin }
        var lease = Lease(responseTimeout: responseTimeout)
        lease.reused = leases > 0
        leases += 1
        state = .active(lease)
        return .writeHead
    }

    /// The request's end was written upstream at `now`: the response timeout starts.
    public mutating func requestEndSent(now: NIODeadline) {
        guard case .active(var lease) = state else { return }
        lease.requestSent = true
        if !lease.headSeen { lease.deadline = now + lease.responseTimeout }
        state = .active(lease)
    }

    /// A response head arrived; `switching`: it is a 101 to a request that asked to switch protocols.
    public mutating func responseHead(keepAlive: Bool, switching: Bool = false) -> Action {
        switch state {
        case .active(var lease):
            if switching {
                state = .tunnel
                return .openTunnel
            }
            lease.headSeen = true
            lease.keepAlive = keepAlive
            lease.deadline = nil
            state = .active(lease)
            return .forwardHead
        case .idle:
            // A response nobody asked for: the connection's framing can no longer be trusted.
            state = .closed
            return .closeIdle
        case .tunnel, .closed:
            return .none
        }
    }

    /// Bytes arrived after the 101.
    public mutating func tunnelData() -> Action {
        state == .tunnel ? .forwardTunnel : .none
    }

    public mutating func responseBody() -> Action {
        switch state {
        case .active: return .forwardBody
        case .idle:
            state = .closed
            return .closeIdle
        case .tunnel, .closed: return .none
        }
    }

    public mutating func responseEnd(trailingBytes: Bool = false) -> Action {
        switch state {
        case .active(let lease):
            // An upstream that answered before the request was sent whole may still be reading it, and one that
            // sent bytes after its response is out of step: never reuse.
            if lease.keepAlive && lease.requestSent && !trailingBytes {
                state = .idle
                return .forwardEnd(.reusable)
            }
            state = .closed
            return .forwardEnd(.closed)
        case .idle:
            state = .closed
            return .closeIdle
        case .tunnel, .closed:
            return .none
        }
    }

    /// The channel closed (peer, reset, or our own close).
    public mutating func channelInactive() -> Action {
        switch state {
        case .active(let lease):
            state = .closed
            if lease.reused && !lease.headSeen {
                // Most often the keep-alive race (the upstream closed the idle connection as it was reused), not
                // a sick target.
                return .failExchange(.reusedConnectionLost("upstream closed a reused connection before responding"))
            }
            return .failExchange(
                .connectionClosed(lease.headSeen ? "upstream closed mid-response" : "upstream closed before responding"))
        case .idle:
            state = .closed
            return .closeIdle
        case .tunnel:
            state = .closed
            return .endTunnel
        case .closed:
            return .none
        }
    }

    /// A decoding error, or (`io`) an error of the channel itself, such as a reset.
    public mutating func errorCaught(_ description: String, io: Bool = false) -> Action {
        switch state {
        case .active(let lease):
            state = .closed
            if io && lease.reused && !lease.headSeen {
                return .failExchange(.reusedConnectionLost(description))
            }
            return .failExchange(.malformedResponse(description))
        case .idle:
            state = .closed
            return .closeIdle
        case .tunnel:
            state = .closed
            return .endTunnel
        case .closed:
            return .none
        }
    }

    /// The response head is overdue at `now`.
    public mutating func checkTimeout(now: NIODeadline) -> Action {
        guard case .active(let lease) = state, let deadline = lease.deadline, now >= deadline else { return .none }
        state = .closed
        return .failExchange(.responseTimeout("no response within the response timeout"))
    }

    /// The delegate leaves (client gone, exchange denied mid-way).
    public mutating func abandon() -> Action {
        switch state {
        case .active:
            state = .closed
            return .abandon
        case .tunnel:
            state = .closed
            return .abandonTunnel
        case .idle, .closed:
            return .none
        }
    }

    /// The pool closes an idle connection (kept too long, or the pool is closing).
    public mutating func closeIdle() -> Action {
        guard case .idle = state else { return .none }
        state = .closed
        return .closeIdle
    }
}
