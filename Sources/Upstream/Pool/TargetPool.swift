import NIOCore
import NIOHTTP1
import NIOPosix
import Policy

/// The keep-alive connections of one event loop to one upstream target.
///
/// Lives on its loop and is used only there, so a proxied request never hops threads. Holds at most
/// `maxConnections` open connections; requests beyond that wait (bounded by the connect timeout) for one
/// to be released.
public final class TargetPool {
    public typealias Acquired = (Result<UpstreamConnection, UpstreamError>) -> Void

    private struct Waiter {
        var deadline: NIODeadline
        var callback: Acquired
    }

    public let target: HostPort
    public let health: TargetHealth
    let address: SocketAddress
    let eventLoop: EventLoop
    let maxConnections: Int
    let connectTimeout: TimeAmount
    let keepaliveTimeout: TimeAmount
    private var idle: [UpstreamConnection] = []
    private var busy: [ObjectIdentifier: UpstreamConnection] = [:]
    private var waiters = CircularBuffer<Waiter>()
    /// Connections open or opening (idle + busy + connecting).
    public private(set) var openCount = 0
    /// Exchanges in progress through this pool (for least-connections balancing).
    public private(set) var inFlight = 0
    private var closed = false

    init(
        target: HostPort, address: SocketAddress, health: TargetHealth, eventLoop: EventLoop, maxConnections: Int,
        connectTimeout: TimeAmount, keepaliveTimeout: TimeAmount
    ) {
        self.target = target
        self.address = address
        self.health = health
        self.eventLoop = eventLoop
        self.maxConnections = max(1, maxConnections)
        self.connectTimeout = connectTimeout
        self.keepaliveTimeout = keepaliveTimeout
    }

    /// The fast path: an idle keep-alive connection, handed out synchronously (no callback), or nil.
    public func takeIdle() -> UpstreamConnection? {
        guard !closed else { return nil }
        while let conn = idle.popLast() {
            if conn.isOpen {
                conn.idleSince = nil
                busy[ObjectIdentifier(conn)] = conn
                inFlight += 1
                return conn
            }
            openCount -= 1
        }
        return nil
    }

    /// Hands out a connection: an idle one, a new one, or the next one released.
    public func acquire(_ callback: @escaping Acquired) {
        inFlight += 1
        let counted: Acquired = { [unowned self] result in
            if case .failure = result { self.inFlight -= 1 }
            callback(result)
        }
        guard !closed else {
            counted(.failure(.connectFailed("pool closed")))
            return
        }
        while let conn = idle.popLast() {
            if conn.isOpen {
                conn.idleSince = nil
                busy[ObjectIdentifier(conn)] = conn
                counted(.success(conn))
                return
            }
            openCount -= 1
        }
        if openCount < maxConnections {
            connect(counted)
        } else {
            waiters.append(Waiter(deadline: .now() + connectTimeout, callback: counted))
        }
    }

    /// The exchange ended (or failed): the connection's way back. Called by the connection itself.
    public func release(_ conn: UpstreamConnection, reusable: Bool) {
        let id = ObjectIdentifier(conn)
        if busy.removeValue(forKey: id) != nil {
            inFlight -= 1
        } else if let i = idle.firstIndex(where: { $0 === conn }) {
            idle.remove(at: i)
        } else {
            return
        }
        if reusable && !closed {
            if let waiter = waiters.popFirst() {
                busy[id] = conn
                waiter.callback(.success(conn))
            } else {
                conn.idleSince = .now()
                idle.append(conn)
            }
            return
        }
        openCount -= 1
        if let waiter = waiters.popFirst(), !closed {
            connect(waiter.callback)
        }
    }

    private func connect(_ callback: @escaping Acquired) {
        openCount += 1
        let target = self.target
        let future = ClientBootstrap(group: eventLoop)
            .connectTimeout(connectTimeout)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let sync = channel.pipeline.syncOperations
                    try sync.addHandler(HTTPRequestEncoder())
                    try sync.addHandler(ByteToMessageHandler(HTTPResponseDecoder(leftOverBytesStrategy: .dropBytes)))
                    try sync.addHandler(UpstreamConnection())
                }
            }
            .connect(to: address)
        future.assumeIsolated().whenComplete { [weak self] result in
            switch result {
            case .success(let channel):
                guard let self, let conn = try? channel.pipeline.syncOperations.handler(type: UpstreamConnection.self)
                else {
                    channel.close(promise: nil)
                    callback(.failure(.connectFailed("pool gone")))
                    return
                }
                conn.pool = self
                self.busy[ObjectIdentifier(conn)] = conn
                callback(.success(conn))
            case .failure(let error):
                self?.openCount -= 1
                let message = "\(target): \(error)"
                if error is ChannelError, case .connectTimeout = error as! ChannelError {
                    callback(.failure(.connectTimeout(message)))
                } else {
                    callback(.failure(.connectFailed(message)))
                }
            }
        }
    }

    /// Expires waiters, closes connections idle too long and times out overdue responses.
    public func sweep(now: NIODeadline) {
        while let first = waiters.first, now >= first.deadline {
            _ = waiters.popFirst()
            first.callback(.failure(.poolExhausted("no free connection to \(target) within the connect timeout")))
        }
        var i = 0
        while i < idle.count {
            if let since = idle[i].idleSince, now - since >= keepaliveTimeout {
                let conn = idle.remove(at: i)
                openCount -= 1
                conn.pool = nil
                conn.closeIdle()
            } else {
                i += 1
            }
        }
        for conn in busy.values { conn.checkTimeout(now: now) }
    }

    /// Closes every idle connection and refuses new work (shutdown).
    public func close() {
        closed = true
        for conn in idle {
            conn.pool = nil
            conn.closeIdle()
        }
        openCount -= idle.count
        idle.removeAll()
        while let w = waiters.popFirst() { w.callback(.failure(.connectFailed("gateway shutting down"))) }
    }
}

@available(*, unavailable)
extension TargetPool: Sendable {}
