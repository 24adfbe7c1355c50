import Logging
import NIOCore
import NIOPosix
import Upstream

/// One connection to one Redis node, owned by one event loop (every method runs on it): NIO owns the socket,
/// hiredis does the protocol.
///
/// Every call is bounded by its timeout. Calls made while the connection is being set up wait for it (still
/// within their timeout); while it is down and backing off they fail at once. A lost connection is set up again
/// with backoff, asking ``locate`` for the address each time (a Sentinel's current master, the next seed). A
/// circuit breaker makes a dead or frozen node cost microseconds per call instead of the timeout; it is this
/// node's alone, so one sick Cluster shard never slows calls to the others.
final class RedisConnection {
    struct Options {
        /// AUTH with the configured credentials and SELECT the database (false for sentinels).
        var authenticate = true
        /// After connecting, `ROLE` must say `master` (Sentinel: a demoted node is left and the master asked again).
        var requireMaster = false
        /// Channels to SUBSCRIBE to on every (re)connect; `onPush` gets each message as `(channel, payload)`.
        var subscribe: [String] = []
        var onPush: (@Sendable (String, [UInt8]) -> Void)? = nil
        /// Called after every successful (re)connect.
        var onReady: (() -> Void)? = nil
        /// Called when the connection is lost or a connect attempt fails (a Cluster router refreshes its map).
        var onLost: (() -> Void)? = nil
        /// Calls are never refused by the circuit (a subscriber, whose one "call" is the subscription).
        var withoutCircuit = false
    }

    private enum State {
        case idle
        case connecting
        case ready(Channel)
        case waiting  // backing off before the next connect
        case shutdown
    }

    /// A call queued while the connection is being set up.
    private struct Queued {
        var args: [[UInt8]]
        var promise: EventLoopPromise<RedisReply>
        /// Set when the caller has had its answer (its timeout fired): the call is never sent.
        var done: NIOLoopBoundBox<Bool>
    }

    let configuration: RedisClient.Configuration
    let eventLoop: EventLoop
    let logger: Logger
    /// Where to connect, asked before every attempt.
    let locate: () -> EventLoopFuture<SocketAddress>
    /// For logs: the node or role this connection serves.
    let label: String
    private let options: Options
    private var state: State = .idle
    private var circuit: RedisCircuit
    private var backoff: TimeAmount = .milliseconds(50)
    private var queued: [Queued] = []
    /// The last connect attempt failed (its failure was logged at warning level).
    private var connectFailing = false
    /// Where the current (or last) connection went.
    private(set) var address: SocketAddress?

    static let maxQueued = 4096

    init(
        configuration: RedisClient.Configuration, eventLoop: EventLoop, logger: Logger, label: String,
        options: Options = Options(), locate: @escaping () -> EventLoopFuture<SocketAddress>
    ) {
        self.configuration = configuration
        self.eventLoop = eventLoop
        self.logger = logger
        self.label = label
        self.options = options
        self.locate = locate
        self.circuit = RedisCircuit(failureThreshold: configuration.failureThreshold, openFor: configuration.openFor)
    }

    /// A ``locate`` that hands out `endpoints` in turn, one per connect attempt (a lost node is followed by the
    /// next).
    static func inTurn(
        _ endpoints: [RedisClient.Configuration.Endpoint], eventLoop: EventLoop
    ) -> () -> EventLoopFuture<SocketAddress> {
        let addresses = endpoints.compactMap { $0.socketAddress() }
        var next = 0
        return {
            guard !addresses.isEmpty else { return eventLoop.makeFailedFuture(RedisError.unavailable("no address to connect to")) }
            defer { next += 1 }
            return eventLoop.makeSucceededFuture(addresses[next % addresses.count])
        }
    }

    /// Connected and the circuit not open.
    var available: Bool {
        if case .ready = state { return options.withoutCircuit || !circuit.isOpen }
        return false
    }

    var isShutdown: Bool {
        if case .shutdown = state { return true }
        return false
    }

    /// Sends one command; fails with a ``RedisError`` on timeout, a lost connection, an open circuit or an
    /// error reply.
    ///
    /// - Parameter asking: `ASKING` goes first, in the same write (a Cluster's ASK redirection); only on a
    ///   connection that is up, so nothing can come between the two.
    func send(_ args: [[UInt8]], timeout: TimeAmount? = nil, asking: Bool = false) -> EventLoopFuture<RedisReply> {
        let timeout = timeout ?? configuration.timeout
        if asking, case .ready = state {} else if asking {
            return eventLoop.makeFailedFuture(RedisError.unavailable("not connected to the importing node (\(label))"))
        }
        switch state {
        case .ready, .connecting, .idle: break
        case .waiting: return eventLoop.makeFailedFuture(RedisError.unavailable("not connected to Redis (\(label))"))
        case .shutdown: return eventLoop.makeFailedFuture(RedisError.unavailable("the Redis connection is closed"))
        }
        if !options.withoutCircuit, case .ready = state, !circuit.allow(now: .now()) {
            return eventLoop.makeFailedFuture(RedisError.unavailable("circuit open after repeated failures (\(label))"))
        }
        let inner = eventLoop.makePromise(of: RedisReply.self)
        let outer = eventLoop.makePromise(of: RedisReply.self)
        let done = NIOLoopBoundBox(false, eventLoop: eventLoop)
        let timer = eventLoop.assumeIsolated().scheduleTask(in: timeout) { [self] in
            guard !done.value else { return }
            done.value = true
            circuit.failed(now: .now())
            outer.fail(RedisError.timeout("no reply within \(timeout) (\(label))"))
            // Still queued (the connection is being set up): taken out, so it never runs after its caller gave up.
            if let i = queued.firstIndex(where: { $0.done === done }) {
                queued.remove(at: i).promise.fail(QueuedDropped())
            }
        }
        inner.futureResult.assumeIsolated().whenComplete { [self] result in
            timer.cancel()
            guard !done.value else { return }
            done.value = true
            switch result {
            case .success(let reply):
                circuit.succeeded()
                outer.succeed(reply)
            case .failure(let error):
                if let e = error as? RedisError, e.name == "server" {
                    circuit.succeeded()  // the node answered: it is alive
                    if options.requireMaster, e.detail.contains("READONLY") {
                        // A master demoted under us (Sentinel failover): leave it and ask again.
                        logger.warning("redis node is no longer the master; reconnecting", metadata: ["gh-redis": "\(label)"])
                        drop()
                    }
                } else if !(error is QueuedDropped) {
                    circuit.failed(now: .now())
                }
                outer.fail(error is QueuedDropped ? RedisError.unavailable("could not connect to Redis (\(label))") : error)
            }
        }
        switch state {
        case .ready(let channel):
            if asking {
                let ignored = eventLoop.makePromise(of: RedisReply.self)
                ignored.futureResult.whenFailure { _ in }
                channel.write(RedisCommand(args: [Array("ASKING".utf8)], promise: ignored), promise: nil)
            }
            channel.writeAndFlush(RedisCommand(args: args, promise: inner), promise: nil)
        case .idle, .connecting:
            if queued.count >= Self.maxQueued {
                inner.fail(QueuedDropped())
            } else {
                queued.append(Queued(args: args, promise: inner, done: done))
                connect()
            }
        case .waiting, .shutdown:
            inner.fail(QueuedDropped())
        }
        return outer.futureResult
    }

    /// A queued call whose connection could not be set up.
    private struct QueuedDropped: Error {}

    /// Starts connecting (and reconnecting whenever the connection is lost).
    func connect() {
        switch state {
        case .idle, .waiting: break
        default: return
        }
        state = .connecting
        let config = configuration
        if config.wantsTLS && config.tls == nil {
            logger.error("TLS required without a TLS context: not connecting in the clear", metadata: ["gh-redis": "\(label)"])
            connectFailed(RedisError.unavailable("no TLS context"))
            return
        }
        let started = NIODeadline.now()
        locate().hop(to: eventLoop).assumeIsolated().flatMap { address -> EventLoopFuture<Channel> in
            self.address = address
            return RedisConnection.open(
                address, configuration: config, eventLoop: self.eventLoop, options: self.options, started: started)
        }.whenComplete { [self] result in
            if case .shutdown = state {
                if case .success(let channel) = result { channel.close(promise: nil) }
                return
            }
            switch result {
            case .success(let channel):
                state = .ready(channel)
                backoff = .milliseconds(50)
                circuit.succeeded()
                connectFailing = false
                logger.info("connected to redis", metadata: ["gh-redis": "\(label)", "gh-address": "\(address.map { "\($0)" } ?? "")"])
                let waiting = queued
                queued = []
                for q in waiting where !q.done.value { channel.write(RedisCommand(args: q.args, promise: q.promise), promise: nil) }
                for q in waiting where q.done.value { q.promise.fail(QueuedDropped()) }
                if !waiting.isEmpty { channel.flush() }
                options.onReady?()
                if dropWhenReady {
                    dropWhenReady = false
                    channel.close(promise: nil)
                }
                channel.closeFuture.assumeIsolated().whenComplete { [self] _ in
                    if case .ready(let c) = state, c === channel {
                        logger.warning("redis connection lost", metadata: ["gh-redis": "\(label)"])
                        scheduleReconnect()
                        options.onLost?()
                    }
                }
            case .failure(let error):
                connectFailed(error)
            }
        }
    }

    private func connectFailed(_ error: Error) {
        // Once per outage at warning level (a wrong CA, name or password shows in the log, not only as
        // store_unavailable answers); each retry after that at debug.
        dropWhenReady = false  // the next attempt asks where to go anyway
        let metadata: Logger.Metadata = ["gh-redis": "\(label)", "gh-error": "\(error)"]
        if connectFailing {
            logger.debug("redis connect failed", metadata: metadata)
        } else {
            logger.warning("redis connect failed (retrying with backoff)", metadata: metadata)
            connectFailing = true
        }
        let waiting = queued
        queued = []
        for q in waiting { q.promise.fail(QueuedDropped()) }
        scheduleReconnect()
        options.onLost?()
    }

    /// Connects to `address`, completes TLS, then AUTH, SELECT, ROLE and SUBSCRIBE as configured, all within the
    /// connect timeout of `started` (a server that accepts, or finishes TLS, then says nothing is closed).
    static func open(
        _ address: SocketAddress, configuration config: RedisClient.Configuration, eventLoop: EventLoop, options: Options,
        started: NIODeadline
    ) -> EventLoopFuture<Channel> {
        let onPush = options.onPush
        let tls = config.tls
        let tlsHandshake = eventLoop.makePromise(of: Void.self)
        let connected = ClientBootstrap(group: eventLoop)
            .connectTimeout(config.connectTimeout)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let push: ((RedisReply) -> Void)? = onPush.map { callback in
                        { reply in
                            // ["message", channel, payload]
                            if case .array(let items) = reply, items.count == 3, let name = items[1].string,
                                case .string(let payload) = items[2]
                            {
                                callback(name, payload)
                            }
                        }
                    }
                    try tls?.addHandlers(to: channel.pipeline.syncOperations, handshake: tlsHandshake)
                    try channel.pipeline.syncOperations.addHandler(RedisCommandHandler(onPush: push))
                }
            }
            .connect(to: address)
        return ClientTLS.handshaken(connected, tls: tls, handshake: tlsHandshake, started: started, timeout: config.connectTimeout)
            .flatMap { channel in
                setUp(channel, configuration: config, options: options, deadline: started + config.connectTimeout)
                    .map { channel }
            }
    }

    private static func setUp(
        _ channel: Channel, configuration: RedisClient.Configuration, options: Options, deadline: NIODeadline
    ) -> EventLoopFuture<Void> {
        var steps: [[String]] = []
        if options.authenticate {
            if let password = configuration.password {
                steps.append(configuration.username.map { ["AUTH", $0, password] } ?? ["AUTH", password])
            }
            if configuration.database != 0 { steps.append(["SELECT", String(configuration.database)]) }
        }
        if options.requireMaster { steps.append(["ROLE"]) }
        if !options.subscribe.isEmpty { steps.append(["SUBSCRIBE"] + options.subscribe) }
        let eventLoop = channel.eventLoop
        if steps.isEmpty { return eventLoop.makeSucceededVoidFuture() }
        let timer = eventLoop.scheduleTask(deadline: deadline) { channel.close(promise: nil) }
        var future = eventLoop.makeSucceededVoidFuture()
        for step in steps {
            future = future.flatMap {
                let promise = eventLoop.makePromise(of: RedisReply.self)
                channel.writeAndFlush(RedisCommand(args: step.map { Array($0.utf8) }, promise: promise), promise: nil)
                return promise.futureResult.flatMapThrowing { reply in
                    if step[0] == "ROLE" {
                        guard case .array(let items) = reply, items.first?.string == "master" else {
                            throw RedisError.unavailable("the node is not a master (ROLE: \(reply))")
                        }
                    }
                }
            }
        }
        return future.map { timer.cancel() }.flatMapErrorThrowing { error in
            timer.cancel()
            channel.close(promise: nil)
            throw error
        }
    }

    private func scheduleReconnect() {
        state = .waiting
        let delay = backoff
        backoff = min(backoff * 2, .seconds(2))
        eventLoop.assumeIsolated().scheduleTask(in: delay) { [self] in
            if case .waiting = state { connect() }
        }
    }

    /// Closes the current connection so the next one asks ``locate`` again (a Sentinel failover); while backing
    /// off, connects now instead of at the end of the backoff.
    func drop() {
        switch state {
        case .ready(let channel):
            channel.close(promise: nil)
        case .waiting:
            backoff = .milliseconds(50)
            connect()
        case .connecting:
            dropWhenReady = true
        case .idle, .shutdown:
            break
        }
    }

    /// A drop asked for while connecting (to an address that may already be stale): done once connected.
    private var dropWhenReady = false

    func shutdown() {
        let previous = state
        state = .shutdown
        for q in queued { q.promise.fail(QueuedDropped()) }
        queued = []
        if case .ready(let channel) = previous { channel.close(promise: nil) }
    }
}

@available(*, unavailable)
extension RedisConnection: Sendable {}
