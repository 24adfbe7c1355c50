import NIOCore

/// The accounting of one loop's connections to one target (STYLE 4), as a pure state machine.
///
/// Each connection is in exactly one of three places: `connecting`, `idle` or `busy`, and
/// `open = connecting + idle + busy` never exceeds `maxConnections`. Requests that find no idle connection
/// wait in FIFO order (until their deadline); a connection that finishes connecting, or is released reusable,
/// goes to the oldest waiter, else to the idle list. A connection leaves the books once: the first of its
/// release as closed, its death while idle, or the pool closing it; later reports of the same id are ignored.
/// Waiters that leave (their client hung up) are cancelled, so no connection is handed to a dead exchange.
/// No I/O and no clock reads: `now` is passed in.
public struct TargetPoolStateMachine: Sendable {
    public typealias ConnectionID = Int
    public typealias WaiterID = Int

    /// What a request for a connection gets.
    public enum RequestAction: Equatable, Sendable {
        /// An idle connection, now busy: use it at once.
        case use(ConnectionID)
        /// Queued; when `connect` is set, open one more connection.
        case wait(connect: Bool)
        case fail(UpstreamError)
    }

    public enum Action: Equatable, Sendable {
        /// The connection is now busy with that waiter's exchange.
        case handOut(ConnectionID, to: WaiterID)
        /// Open one more connection.
        case connect
        case fail(WaiterID, UpstreamError)
        /// Close this idle connection (it has left the books).
        case close(ConnectionID)
    }

    private struct Idle: Sendable {
        var id: ConnectionID
        var since: NIODeadline
    }

    private struct Waiter: Sendable {
        var id: WaiterID
        var deadline: NIODeadline
    }

    public let maxConnections: Int
    public let keepalive: TimeAmount
    private var idle: [Idle] = []
    private var busy: Set<ConnectionID> = []
    public private(set) var connecting = 0
    private var waiters = CircularBuffer<Waiter>()
    public private(set) var isClosed = false

    public init(maxConnections: Int, keepalive: TimeAmount) {
        self.maxConnections = max(1, maxConnections)
        self.keepalive = keepalive
    }

    public var idleCount: Int { idle.count }
    public var busyCount: Int { busy.count }
    public var waiterCount: Int { waiters.count }
    public var openCount: Int { connecting + idle.count + busy.count }
    /// Exchanges using or waiting for this target (least-connections balancing).
    public var load: Int { busy.count + waiters.count }

    /// A request for a connection; `deadline` bounds its wait.
    public mutating func request(_ waiter: WaiterID, deadline: NIODeadline) -> RequestAction {
        if isClosed { return .fail(.poolClosed("the target's pool takes no new work")) }
        if let conn = idle.popLast() {
            busy.insert(conn.id)
            return .use(conn.id)
        }
        waiters.append(Waiter(id: waiter, deadline: deadline))
        if connecting < waiters.count && openCount < maxConnections {
            connecting += 1
            return .wait(connect: true)
        }
        return .wait(connect: false)
    }

    /// A waiter leaves before it was served.
    public mutating func cancel(_ waiter: WaiterID) {
        if let i = waiters.firstIndex(where: { $0.id == waiter }) { waiters.remove(at: i) }
    }

    /// A connection opened.
    public mutating func connected(_ id: ConnectionID, now: NIODeadline) -> [Action] {
        connecting -= 1
        if isClosed { return [.close(id)] }
        return [place(id, now: now)].compactMap { $0 }
    }

    /// Opening a connection failed: the oldest waiter gets the error.
    public mutating func connectFailed(_ error: UpstreamError) -> [Action] {
        connecting -= 1
        var actions: [Action] = []
        if let w = waiters.popFirst() { actions.append(.fail(w.id, error)) }
        if let more = connectIfNeeded() { actions.append(more) }
        return actions
    }

    /// A busy connection's exchange ended (`reusable`), or the connection closed, idle or busy.
    public mutating func release(_ id: ConnectionID, reusable: Bool, now: NIODeadline) -> [Action] {
        if busy.remove(id) != nil {
            if reusable {
                // A pool closed by a reload keeps nothing: the still-open connection is closed.
                if isClosed { return [.close(id)] }
                return [place(id, now: now)].compactMap { $0 }
            }
        } else if let i = idle.firstIndex(where: { $0.id == id }) {
            idle.remove(at: i)
        } else {
            return []  // already off the books
        }
        return [connectIfNeeded()].compactMap { $0 }
    }

    /// Expires waiters and connections idle longer than the keep-alive timeout.
    public mutating func sweep(now: NIODeadline) -> [Action] {
        var actions: [Action] = []
        while let first = waiters.first, now >= first.deadline {
            _ = waiters.popFirst()
            actions.append(.fail(first.id, .poolExhausted("no free connection within the connect timeout")))
        }
        idle.removeAll { conn in
            guard now - conn.since >= keepalive else { return false }
            actions.append(.close(conn.id))
            return true
        }
        return actions
    }

    /// Refuses new work, fails every waiter and closes every idle connection; busy ones close when released.
    public mutating func close() -> [Action] {
        isClosed = true
        var actions = idle.map { Action.close($0.id) }
        idle.removeAll()
        while let w = waiters.popFirst() {
            actions.append(.fail(w.id, .poolClosed("the pool was replaced by a reload or the gateway is stopping")))
        }
        return actions
    }

    /// An open, unused connection: to the oldest waiter, else idle.
    private mutating func place(_ id: ConnectionID, now: NIODeadline) -> Action? {
        if let w = waiters.popFirst() {
            busy.insert(id)
            return .handOut(id, to: w.id)
        }
        idle.append(Idle(id: id, since: now))
        return nil
    }

    /// Waiters outnumber the connections being opened and there is room: open one more.
    private mutating func connectIfNeeded() -> Action? {
        guard !isClosed, connecting < waiters.count, openCount < maxConnections else { return nil }
        connecting += 1
        return .connect
    }
}
