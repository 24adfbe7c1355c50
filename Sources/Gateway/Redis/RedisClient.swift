import Foundation
import Logging
import NIOCore
import NIOPosix
import Policy
import Upstream

/// A Redis connection owned by one event loop: NIO owns the socket, hiredis does the protocol.
///
/// Every call is bounded by the configured timeout; a lost connection is re-established with backoff; a
/// circuit breaker makes a dead or stopped Redis cost microseconds per call instead of the timeout. Calls may
/// come from any thread; they hop to the client's loop.
public final class RedisClient: Sendable {
    public struct Configuration: Sendable {
        public var host: String
        public var port: Int
        public var username: String?
        public var password: String?
        public var database: Int = 0
        /// Every call fails with a timeout error after this long.
        public var timeout: TimeAmount = .milliseconds(50)
        public var connectTimeout: TimeAmount = .seconds(1)
        public var failureThreshold = 3
        public var openFor: TimeAmount = .milliseconds(500)
        /// The server's address, resolved off the event loop (``resolve()``); without it the host must be an
        /// IP literal, so connecting never waits on DNS on the loop.
        public var address: SocketAddress?
        /// The URL is `rediss://`: TLS is required (``tls`` is built from `store.tls` before connecting).
        public var wantsTLS = false
        /// The TLS context and verified name; every connection completes its handshake, within
        /// `connectTimeout`, before AUTH.
        public var tls: ClientTLS?

        /// Resolves `host` (blocking DNS: call off the event loops).
        public mutating func resolve() throws {
            address = try SocketAddress.makeAddressResolvingHost(host, port: port)
        }

        /// Parses `redis://[user:pass@]host:port/db` (or `rediss://` for TLS).
        public init?(url: String) {
            let scheme = url.hasPrefix("rediss://") ? "rediss://" : "redis://"
            guard url.hasPrefix(scheme) else { return nil }
            wantsTLS = scheme == "rediss://"
            var rest = Substring(url.dropFirst(scheme.count))
            if let at = rest.lastIndex(of: "@") {
                let credentials = rest[..<at]
                rest = rest[rest.index(after: at)...]
                if let colon = credentials.firstIndex(of: ":") {
                    let user = credentials[..<colon]
                    username = user.isEmpty ? nil : String(user)
                    password = String(credentials[credentials.index(after: colon)...])
                } else {
                    password = String(credentials)
                }
            }
            var db = 0
            if let slash = rest.firstIndex(of: "/") {
                let dbText = rest[rest.index(after: slash)...]
                if !dbText.isEmpty {
                    guard let n = Int(dbText), n >= 0 else { return nil }
                    db = n
                }
                rest = rest[..<slash]
            }
            let hostPort = rest.contains(":") ? String(rest) : String(rest) + ":6379"
            guard let colon = hostPort.lastIndex(of: ":"), let port = Int(hostPort[hostPort.index(after: colon)...]),
                port > 0, port < 65536
            else { return nil }
            host = String(hostPort[..<colon])
            self.port = port
            database = db
            guard !host.isEmpty else { return nil }
        }

        /// The settings of `store`: its URL, ACL credentials from the environment variables it names, its
        /// TLS (files read here), and the call timeout. Throws a message for the operator.
        public init(store: StoreConfig, environment: [String: String]) throws {
            guard let parsed = Configuration(url: store.redisURL) else {
                throw RedisSettingsError("store.redis is not a redis:// or rediss:// URL")
            }
            self = parsed
            timeout = .nanoseconds(store.timeout)
            if let name = store.passwordEnv {
                guard let value = environment[name], !value.isEmpty else {
                    throw RedisSettingsError("store.password_env names \(name), which is not set")
                }
                password = value
            }
            if let name = store.usernameEnv {
                guard let value = environment[name], !value.isEmpty else {
                    throw RedisSettingsError("store.username_env names \(name), which is not set")
                }
                username = value
            }
            if wantsTLS {
                do {
                    tls = try ClientTLS(store.tls ?? ClientTLSConfig(), host: host, what: "store.tls")
                } catch {
                    throw RedisSettingsError("\(error)")
                }
            }
        }
    }

    public let eventLoop: EventLoop
    public let configuration: Configuration
    private let core: NIOLoopBoundBox<Core>

    /// - Parameters:
    ///   - subscribe: channels to SUBSCRIBE to on every (re)connect; the connection is then a subscriber and
    ///     `onPush` receives each message as `(channel, payload)`.
    ///   - onReady: called after every successful (re)connect (for example to reload what may have been missed).
    public init(
        configuration: Configuration, eventLoop: EventLoop, logger: Logger, subscribe: [String] = [],
        onPush: (@Sendable (String, [UInt8]) -> Void)? = nil, onReady: (@Sendable () -> Void)? = nil
    ) {
        self.eventLoop = eventLoop
        self.configuration = configuration
        self.core = NIOLoopBoundBox.makeBoxSendingValue(
            Core(
                configuration: configuration, eventLoop: eventLoop, logger: logger, subscribe: subscribe, onPush: onPush,
                onReady: onReady), eventLoop: eventLoop)
    }

    /// Starts connecting (and reconnecting whenever the connection is lost).
    public func start() {
        eventLoop.execute { self.core.value.connect() }
    }

    /// Closes the connection and stops reconnecting.
    public func close() -> EventLoopFuture<Void> {
        eventLoop.submit { self.core.value.shutdown() }
    }

    /// Sends one command; the future fails with a ``RedisError`` on timeout, a lost connection, an open circuit
    /// or an error reply.
    public func send(_ args: [String]) -> EventLoopFuture<RedisReply> {
        send(bytes: args.map { Array($0.utf8) })
    }

    /// - Parameter timeout: overrides the configured timeout for this call (bulk reads off the request path).
    public func send(bytes args: [[UInt8]], timeout: TimeAmount? = nil) -> EventLoopFuture<RedisReply> {
        if eventLoop.inEventLoop { return core.value.send(args, timeout: timeout) }
        return eventLoop.flatSubmit { self.core.value.send(args, timeout: timeout) }
    }

    public func send(_ args: [String], timeout: TimeAmount) -> EventLoopFuture<RedisReply> {
        send(bytes: args.map { Array($0.utf8) }, timeout: timeout)
    }

    /// True while calls can go out (connected and the circuit not open).
    public var isAvailable: EventLoopFuture<Bool> {
        eventLoop.submit { self.core.value.available }
    }

    /// Blocks (polling every 20 ms) until calls can go out or `seconds` pass; false then. For start-up and the
    /// command line only: never on an event loop.
    public func waitUntilAvailable(seconds: Double) -> Bool {
        let deadline = Date().addingTimeInterval(seconds)
        while (try? isAvailable.wait()) != true {
            guard Date() < deadline else { return false }
            Thread.sleep(forTimeInterval: 0.02)
        }
        return true
    }
}

/// Redis settings that cannot be used (a credential variable not set, a TLS file that cannot be read).
public struct RedisSettingsError: Error, CustomStringConvertible, Sendable {
    public let description: String
    init(_ description: String) { self.description = description }
}

/// The loop-bound state behind a ``RedisClient``.
private final class Core {
    enum State {
        case idle
        case connecting
        case ready(Channel)
        case waiting  // backing off before the next connect
        case shutdown
    }

    let configuration: RedisClient.Configuration
    let eventLoop: EventLoop
    let logger: Logger
    var state: State = .idle
    var circuit: RedisCircuit
    var backoff: TimeAmount = .milliseconds(50)
    /// The last connect attempt failed (its failure was logged at warning level).
    var connectFailing = false

    let subscribe: [String]
    let onPush: (@Sendable (String, [UInt8]) -> Void)?
    let onReady: (@Sendable () -> Void)?

    init(
        configuration: RedisClient.Configuration, eventLoop: EventLoop, logger: Logger, subscribe: [String],
        onPush: (@Sendable (String, [UInt8]) -> Void)?, onReady: (@Sendable () -> Void)?
    ) {
        self.configuration = configuration
        self.eventLoop = eventLoop
        self.logger = logger
        self.subscribe = subscribe
        self.onPush = onPush
        self.onReady = onReady
        self.circuit = RedisCircuit(failureThreshold: configuration.failureThreshold, openFor: configuration.openFor)
    }

    var available: Bool {
        if case .ready = state { return !circuit.isOpen }
        return false
    }

    func send(_ args: [[UInt8]], timeout: TimeAmount?) -> EventLoopFuture<RedisReply> {
        let timeout = timeout ?? configuration.timeout
        guard case .ready(let channel) = state else {
            if case .idle = state { connect() }
            return eventLoop.makeFailedFuture(RedisError.unavailable("not connected to Redis"))
        }
        let now = NIODeadline.now()
        guard circuit.allow(now: now) else {
            return eventLoop.makeFailedFuture(RedisError.unavailable("circuit open after repeated Redis failures"))
        }
        let inner = eventLoop.makePromise(of: RedisReply.self)
        let outer = eventLoop.makePromise(of: RedisReply.self)
        let done = NIOLoopBoundBox(false, eventLoop: eventLoop)
        let timer = eventLoop.assumeIsolated().scheduleTask(in: timeout) { [self] in
            guard !done.value else { return }
            done.value = true
            circuit.failed(now: .now())
            outer.fail(RedisError.timeout("no reply within \(timeout)"))
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
                    circuit.succeeded()  // Redis answered: it is alive
                } else {
                    circuit.failed(now: .now())
                }
                outer.fail(error)
            }
        }
        channel.writeAndFlush(RedisCommand(args: args, promise: inner), promise: nil)
        return outer.futureResult
    }

    func connect() {
        switch state {
        case .idle, .waiting: break
        default: return
        }
        let config = configuration
        guard let target = config.address ?? (try? SocketAddress(ipAddress: config.host, port: config.port)) else {
            // Never resolve DNS on the event loop: an unresolved name is a configuration error.
            logger.error("redis host was not resolved before connecting", metadata: ["gh-redis": "\(config.host)"])
            scheduleReconnect()
            return
        }
        if config.wantsTLS && config.tls == nil {
            logger.error("rediss:// without a TLS context: not connecting in the clear", metadata: ["gh-redis": "\(config.host)"])
            scheduleReconnect()
            return
        }
        state = .connecting
        let onPush = self.onPush
        let tls = config.tls
        let started = NIODeadline.now()
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
            .connect(to: target)
        ClientTLS.handshaken(connected, tls: tls, handshake: tlsHandshake, started: started, timeout: config.connectTimeout)
            .assumeIsolated()
            .flatMap { channel in self.handshake(channel, deadline: started + config.connectTimeout).map { channel } }
            .whenComplete { [self] result in
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
                    logger.info("connected to redis", metadata: ["gh-redis": "\(config.host):\(config.port)"])
                    onReady?()
                    channel.closeFuture.assumeIsolated().whenComplete { [self] _ in
                        if case .ready(let c) = state, c === channel {
                            logger.warning("redis connection lost", metadata: ["gh-redis": "\(config.host):\(config.port)"])
                            scheduleReconnect()
                        }
                    }
                case .failure(let error):
                    // Once per outage at warning level (a wrong CA, name or password shows in the log, not
                    // only as store_unavailable answers); each retry after that at debug.
                    let metadata: Logger.Metadata = ["gh-redis": "\(config.host):\(config.port)", "gh-error": "\(error)"]
                    if connectFailing {
                        logger.debug("redis connect failed", metadata: metadata)
                    } else {
                        logger.warning("redis connect failed (retrying with backoff)", metadata: metadata)
                        connectFailing = true
                    }
                    scheduleReconnect()
                }
            }
    }

    /// AUTH, SELECT and SUBSCRIBE, straight on the new channel, all by `deadline` (the connect timeout covers
    /// the whole setup: a server that accepts, or finishes TLS, then says nothing is closed and retried).
    private func handshake(_ channel: Channel, deadline: NIODeadline) -> EventLoopFuture<Void> {
        var steps: [[String]] = []
        if let password = configuration.password {
            steps.append(configuration.username.map { ["AUTH", $0, password] } ?? ["AUTH", password])
        }
        if configuration.database != 0 { steps.append(["SELECT", String(configuration.database)]) }
        if !subscribe.isEmpty { steps.append(["SUBSCRIBE"] + subscribe) }
        if steps.isEmpty { return eventLoop.makeSucceededVoidFuture() }
        let timer = channel.eventLoop.scheduleTask(deadline: deadline) { channel.close(promise: nil) }
        var future = eventLoop.makeSucceededVoidFuture()
        for step in steps {
            future = future.flatMap {
                let promise = channel.eventLoop.makePromise(of: RedisReply.self)
                channel.writeAndFlush(RedisCommand(args: step.map { Array($0.utf8) }, promise: promise), promise: nil)
                return promise.futureResult.map { _ in }
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

    func shutdown() {
        let previous = state
        state = .shutdown
        if case .ready(let channel) = previous { channel.close(promise: nil) }
    }
}

