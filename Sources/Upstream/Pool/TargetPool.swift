import NIOCore
import NIOHTTP1
import NIOPosix
import Policy

/// The keep-alive connections of one event loop to one upstream target: the executor of a
/// ``TargetPoolStateMachine``.
///
/// Lives on its loop and is used only there, so a proxied request never hops threads. Holds at most
/// `maxConnections` open connections; requests beyond that wait (bounded by the connect timeout) for one to be
/// released, and can leave the queue (``cancel(_:)``) when their client goes away.
public final class TargetPool {
    public typealias Acquired = (Result<UpstreamConnection, UpstreamError>) -> Void

    /// The answer to ``acquire(_:)``.
    public enum Acquisition {
        /// An idle connection, handed out synchronously (the callback is not called).
        case ready(UpstreamConnection)
        /// Queued: the callback is called once, unless ``cancel(_:)`` comes first.
        case waiting(TargetPoolStateMachine.WaiterID)
        case failed(UpstreamError)
    }

    public let target: HostPort
    public let health: TargetHealth
    /// The target's circuit breaker, shared by every loop; nil when the upstream has none.
    public let circuit: TargetCircuit?
    let address: SocketAddress
    let eventLoop: EventLoop
    let connectTimeout: TimeAmount
    /// HTTPS to this target: each connection is ready once its handshake (within the connect timeout) is done.
    let tls: ClientTLS?
    private var machine: TargetPoolStateMachine
    private var connections: [TargetPoolStateMachine.ConnectionID: UpstreamConnection] = [:]
    private var waiters: [TargetPoolStateMachine.WaiterID: Acquired] = [:]
    private var nextID = 0

    init(
        target: HostPort, address: SocketAddress, health: TargetHealth, circuit: TargetCircuit? = nil,
        eventLoop: EventLoop, maxConnections: Int,
        connectTimeout: TimeAmount, keepaliveTimeout: TimeAmount, tls: ClientTLS? = nil
    ) {
        self.tls = tls
        self.target = target
        self.address = address
        self.health = health
        self.circuit = circuit
        self.eventLoop = eventLoop
        self.connectTimeout = connectTimeout
        self.machine = TargetPoolStateMachine(maxConnections: maxConnections, keepalive: keepaliveTimeout)
    }

    /// Connections open or opening.
    public var openCount: Int { machine.openCount }
    public var idleCount: Int { machine.idleCount }
    public var busyCount: Int { machine.busyCount }
    /// Exchanges using or waiting for this target (for least-connections balancing).
    public var inFlight: Int { machine.load }

    /// A connection for one exchange: an idle one at once, or the next one opened or released.
    public func acquire(_ makeCallback: () -> Acquired) -> Acquisition {
        nextID += 1
        let waiter = nextID
        switch machine.request(waiter, deadline: .now() + connectTimeout) {
        case .use(let id):
            guard let conn = connections[id] else {
                run(machine.release(id, reusable: false, now: .now()))
                return .failed(.unusableConnection("pool lost a connection"))
            }
            return .ready(conn)
        case .wait(let connect):
            waiters[waiter] = makeCallback()
            // Started on the next tick: a connect that fails at once (no descriptors) must not call back before
            // this returns the waiter's id.
            if connect { eventLoop.assumeIsolated().execute { [self] in self.connect() } }
            return .waiting(waiter)
        case .fail(let error):
            return .failed(error)
        }
    }

    /// The waiter leaves the queue; its callback will not be called.
    public func cancel(_ waiter: TargetPoolStateMachine.WaiterID) {
        guard waiters.removeValue(forKey: waiter) != nil else { return }
        machine.cancel(waiter)
    }

    /// A connection handed out but never used (its exchange was gone): back to idle, or to the next waiter.
    public func giveBack(_ conn: UpstreamConnection) {
        release(conn, reusable: conn.isOpen)
    }

    /// A lease ended (called by the connection): back to idle (or to a waiter), or off the books.
    func release(_ conn: UpstreamConnection, reusable: Bool) {
        if !reusable { connections.removeValue(forKey: conn.id) }
        run(machine.release(conn.id, reusable: reusable, now: .now()))
    }

    private func connect() {
        let target = self.target
        let tls = self.tls
        nextID += 1
        let id = nextID
        let started = NIODeadline.now()
        let handshake = eventLoop.makePromise(of: Void.self)
        let future = ClientBootstrap(group: eventLoop)
            .connectTimeout(connectTimeout)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let sync = channel.pipeline.syncOperations
                    try tls?.addHandlers(to: sync, handshake: handshake)
                    // One handler: it writes requests and parses responses itself (HTTPWire).
                    try sync.addHandler(UpstreamConnection(id: id))
                }
            }
            .connect(to: address)
        // With TLS the connection is usable once its handshake is done; the connect timeout covers both.
        let ready = ClientTLS.handshaken(future, tls: tls, handshake: handshake, started: started, timeout: connectTimeout)
        ready.assumeIsolated().whenComplete { [weak self] result in
            switch result {
            case .success(let channel):
                guard let self, let conn = try? channel.pipeline.syncOperations.handler(type: UpstreamConnection.self)
                else {
                    channel.close(promise: nil)
                    return
                }
                conn.pool = self
                self.connections[id] = conn
                self.run(self.machine.connected(id, now: .now()))
            case .failure(let error):
                guard let self else { return }
                let message = "\(target): \(error)"
                let failure: UpstreamError
                if let e = error as? ChannelError, case .connectTimeout = e {
                    failure = .connectTimeout(message)
                } else if tls != nil, !(error is ChannelError) {
                    failure = .connectFailed("\(target): TLS handshake failed: \(error)")
                } else {
                    failure = .connectFailed(message)
                }
                self.run(self.machine.connectFailed(failure))
            }
        }
    }

    /// Expires waiters, closes connections idle too long and times out overdue responses.
    public func sweep(now: NIODeadline) {
        run(machine.sweep(now: now))
        for conn in Array(connections.values) { conn.checkTimeout(now: now) }
    }

    /// Closes every idle connection and refuses new work (shutdown); busy connections close when released.
    public func close() {
        run(machine.close())
    }

    private func run(_ actions: [TargetPoolStateMachine.Action]) {
        for action in actions {
            switch action {
            case .handOut(let id, let waiter):
                let callback = waiters.removeValue(forKey: waiter)
                switch (connections[id], callback) {
                case (let conn?, let callback?): callback(.success(conn))
                case (nil, let callback?):
                    run(machine.release(id, reusable: false, now: .now()))
                    callback(.failure(.unusableConnection("pool lost a connection")))
                case (_?, nil): run(machine.release(id, reusable: true, now: .now()))  // nobody left to use it
                case (nil, nil): run(machine.release(id, reusable: false, now: .now()))
                }
            case .connect:
                connect()
            case .fail(let waiter, let error):
                waiters.removeValue(forKey: waiter)?(.failure(error))
            case .close(let id):
                connections.removeValue(forKey: id)?.closeIdle()
            }
        }
    }
}

@available(*, unavailable)
extension TargetPool: Sendable {}
