import Foundation
import Logging
import NIOCore
import NIOPosix
import Upstream

/// Redis as one event loop sees it, whatever the deployment: a standalone server, a Sentinel-managed master,
/// or a Cluster whose commands are routed by their key's slot. It knows nothing of tenants; callers send
/// commands and get replies.
///
/// Every call is bounded by the configured timeout and fails with a ``RedisError`` (timeout, lost connection,
/// open circuit, error reply). Calls may come from any thread; they hop to the client's loop.
public final class RedisClient: Sendable {
    public struct Configuration: Sendable {
        /// A server the client talks to (a Cluster seed, a sentinel, or the standalone server).
        public struct Endpoint: Sendable, Hashable, CustomStringConvertible {
            public var host: String
            public var port: Int
            /// Resolved off the event loops by ``Configuration/resolve()``.
            public var address: SocketAddress?

            public init(host: String, port: Int) {
                self.host = host
                self.port = port
            }

            /// `host:port` (port 6379, or 26379 for a sentinel, when absent); nil when malformed.
            public init?(parsing text: String, defaultPort: Int) {
                var host = Substring(text)
                var port = defaultPort
                if host.hasPrefix("[") {  // [v6]:port
                    guard let close = host.firstIndex(of: "]") else { return nil }
                    let rest = host[host.index(after: close)...]
                    host = host[host.index(after: host.startIndex)..<close]
                    if !rest.isEmpty {
                        guard rest.hasPrefix(":"), let p = Int(rest.dropFirst()) else { return nil }
                        port = p
                    }
                } else if let colon = host.lastIndex(of: ":") {
                    guard let p = Int(host[host.index(after: colon)...]) else { return nil }
                    port = p
                    host = host[..<colon]
                }
                guard !host.isEmpty, port > 0, port < 65536 else { return nil }
                self.init(host: String(host), port: port)
            }

            public var description: String { "\(host):\(port)" }

            func socketAddress() -> SocketAddress? {
                address ?? (try? SocketAddress(ipAddress: host, port: port))
            }
        }

        public enum Topology: Sendable {
            case standalone
            /// Redis Cluster: the slot map is discovered from these seeds.
            case cluster(seeds: [Endpoint])
            /// The master named `master`, as the sentinels report it.
            case sentinel(master: String, sentinels: [Endpoint])
        }

        public var topology: Topology = .standalone
        public var host: String = ""
        public var port: Int = 6379
        public var username: String?
        public var password: String?
        public var database: Int = 0
        /// Every call fails with a timeout error after this long.
        public var timeout: TimeAmount = .milliseconds(50)
        public var connectTimeout: TimeAmount = .seconds(1)
        public var failureThreshold = 3
        public var openFor: TimeAmount = .milliseconds(500)
        /// The standalone server's address, resolved off the event loop (``resolve()``); without it the host
        /// must be an IP literal, so connecting never waits on DNS on the loop.
        public var address: SocketAddress?
        /// TLS is required (a `rediss://` URL, or `store.tls` with a Cluster or Sentinel).
        public var wantsTLS = false
        /// The TLS context and verified name; every connection completes its handshake, within
        /// `connectTimeout`, before AUTH.
        public var tls: ClientTLS?

        public init(topology: Topology) {
            self.topology = topology
        }

        /// Resolves every host named (blocking DNS: call off the event loops).
        public mutating func resolve() throws {
            switch topology {
            case .standalone:
                address = try SocketAddress.makeAddressResolvingHost(host, port: port)
            case .cluster(let seeds):
                topology = .cluster(seeds: try seeds.map(Self.resolved))
            case .sentinel(let master, let sentinels):
                topology = .sentinel(master: master, sentinels: try sentinels.map(Self.resolved))
            }
        }

        private static func resolved(_ e: Endpoint) throws -> Endpoint {
            var e = e
            e.address = try SocketAddress.makeAddressResolvingHost(e.host, port: e.port)
            return e
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
    }

    public let eventLoop: EventLoop
    public let configuration: Configuration
    private let router: NIOLoopBoundBox<RedisRouter?>

    /// - Parameters:
    ///   - subscribe: channels to SUBSCRIBE to on every (re)connect; the client is then a subscriber (one
    ///     connection: to the server, the Sentinel's master, or any Cluster node, since a Cluster broadcasts
    ///     PUBLISH to every node) and `onPush` receives each message as `(channel, payload)`.
    ///   - onReady: called after every successful (re)connect (for example to reload what may have been missed).
    public init(
        configuration: Configuration, eventLoop: EventLoop, logger: Logger, subscribe: [String] = [],
        onPush: (@Sendable (String, [UInt8]) -> Void)? = nil, onReady: (@Sendable () -> Void)? = nil
    ) {
        self.eventLoop = eventLoop
        self.configuration = configuration
        self.router = NIOLoopBoundBox.makeBoxSendingValue(nil, eventLoop: eventLoop)
        let router = self.router
        let make: @Sendable () -> RedisRouter = {
            switch configuration.topology {
            case .cluster(let seeds) where subscribe.isEmpty:
                return ClusterRouter(configuration: configuration, seeds: seeds, eventLoop: eventLoop, logger: logger, onReady: onReady)
            case .standalone, .sentinel, .cluster:
                return SingleRouter(
                    configuration: configuration, eventLoop: eventLoop, logger: logger, subscribe: subscribe, onPush: onPush,
                    onReady: onReady)
            }
        }
        if eventLoop.inEventLoop {
            router.value = make()
        } else {
            eventLoop.execute { router.value = make() }
        }
    }

    /// Starts connecting (and reconnecting whenever a connection is lost).
    public func start() {
        eventLoop.execute { self.router.value?.start() }
    }

    /// Closes every connection and stops reconnecting.
    public func close() -> EventLoopFuture<Void> {
        eventLoop.submit { self.router.value?.shutdown() }
    }

    /// Sends one command (routed by its key on a Cluster).
    public func send(_ args: [String]) -> EventLoopFuture<RedisReply> {
        send(bytes: args.map { Array($0.utf8) })
    }

    /// - Parameter timeout: overrides the configured timeout for this call (bulk reads off the request path).
    public func send(bytes args: [[UInt8]], timeout: TimeAmount? = nil) -> EventLoopFuture<RedisReply> {
        if eventLoop.inEventLoop { return route(args, timeout: timeout) }
        return eventLoop.flatSubmit { self.route(args, timeout: timeout) }
    }

    public func send(_ args: [String], timeout: TimeAmount) -> EventLoopFuture<RedisReply> {
        send(bytes: args.map { Array($0.utf8) }, timeout: timeout)
    }

    private func route(_ args: [[UInt8]], timeout: TimeAmount?) -> EventLoopFuture<RedisReply> {
        guard let router = router.value else {
            return eventLoop.makeFailedFuture(RedisError.unavailable("the Redis client is not set up"))
        }
        return router.send(args, timeout: timeout ?? configuration.timeout)
    }

    /// Every key matching `pattern`, read incrementally (`SCAN … MATCH … COUNT`) from every master (one
    /// server, or each Cluster master in turn). Fails when a master cannot be read in full.
    public func scan(match pattern: String, count: Int = 500, timeout: TimeAmount = .seconds(2)) -> EventLoopFuture<[String]> {
        eventLoop.flatSubmit {
            guard let router = self.router.value else {
                return self.eventLoop.makeFailedFuture(RedisError.unavailable("the Redis client is not set up"))
            }
            let nodes = router.masters()
            if nodes.isEmpty { return self.eventLoop.makeFailedFuture(RedisError.unavailable("no Redis master known")) }
            var keys: [String] = []
            var chain = self.eventLoop.makeSucceededVoidFuture()
            for node in nodes {
                chain = chain.assumeIsolated().flatMap {
                    Self.scan(node, cursor: "0", pattern: pattern, count: count, timeout: timeout, into: keys)
                        .assumeIsolated().map { keys = $0 }.nonisolated()
                }.nonisolated()
            }
            return chain.assumeIsolated().map { keys }.nonisolated()
        }
    }

    /// Pages through one master's keys from `cursor`, adding each page to `found`.
    private static func scan(
        _ node: RedisConnection, cursor: String, pattern: String, count: Int, timeout: TimeAmount, into found: [String]
    ) -> EventLoopFuture<[String]> {
        let args = ["SCAN", cursor, "MATCH", pattern, "COUNT", String(count)].map { Array($0.utf8) }
        return node.send(args, timeout: timeout).assumeIsolated().flatMap { reply in
            guard case .array(let parts) = reply, parts.count == 2, let next = parts[0].string, case .array(let items) = parts[1]
            else {
                return node.eventLoop.makeFailedFuture(RedisError.protocolError("unexpected SCAN reply"))
            }
            var found = found
            found.append(contentsOf: items.compactMap(\.string))
            if next == "0" { return node.eventLoop.makeSucceededFuture(found) }
            return scan(node, cursor: next, pattern: pattern, count: count, timeout: timeout, into: found)
        }.nonisolated()
    }

    /// True while calls can go out (a connection is up and its circuit closed; on a Cluster, to some master).
    public var isAvailable: EventLoopFuture<Bool> {
        eventLoop.submit { self.router.value?.available ?? false }
    }

    /// Waits (checking every 20 ms) until calls can go out or `seconds` pass; false then.
    public func available(within seconds: Double) async -> Bool {
        let deadline = ContinuousClock.now + .milliseconds(Int64(seconds * 1000))
        while (try? await isAvailable.get()) != true {
            guard ContinuousClock.now < deadline else { return false }
            try? await Task.sleep(for: .milliseconds(20))
        }
        return true
    }

    /// Blocks (polling every 20 ms) until calls can go out or `seconds` pass; false then. For the command line
    /// only: never on an event loop.
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
    public init(_ description: String) { self.description = description }
}

/// How one client reaches its servers (lives on the client's loop).
protocol RedisRouter: AnyObject {
    func start()
    func shutdown()
    func send(_ args: [[UInt8]], timeout: TimeAmount) -> EventLoopFuture<RedisReply>
    /// One connection per master, for commands every master must answer (SCAN).
    func masters() -> [RedisConnection]
    var available: Bool { get }
}

/// One connection: a standalone server, or the master the sentinels name (asked again after every loss, and
/// left when a `+switch-master` names another).
final class SingleRouter: RedisRouter {
    let connection: RedisConnection
    private let watch: SentinelWatch?

    init(
        configuration: RedisClient.Configuration, eventLoop: EventLoop, logger: Logger, subscribe: [String],
        onPush: (@Sendable (String, [UInt8]) -> Void)?, onReady: (@Sendable () -> Void)?
    ) {
        var options = RedisConnection.Options()
        options.subscribe = subscribe
        options.onPush = onPush
        options.onReady = onReady
        options.withoutCircuit = !subscribe.isEmpty
        switch configuration.topology {
        case .standalone:
            let target = configuration.address ?? (try? SocketAddress(ipAddress: configuration.host, port: configuration.port))
            let label = "\(configuration.host):\(configuration.port)"
            connection = RedisConnection(
                configuration: configuration, eventLoop: eventLoop, logger: logger, label: label, options: options
            ) {
                // Never resolve DNS on the event loop: an unresolved name is a configuration error.
                guard let target else {
                    return eventLoop.makeFailedFuture(RedisError.unavailable("redis host \(label) was not resolved"))
                }
                return eventLoop.makeSucceededFuture(target)
            }
            watch = nil
        case .sentinel(let master, let sentinels):
            options.requireMaster = true
            let query = SentinelQuery(configuration: configuration, master: master, sentinels: sentinels, eventLoop: eventLoop)
            connection = RedisConnection(
                configuration: configuration, eventLoop: eventLoop, logger: logger, label: "sentinel master \(master)",
                options: options, locate: query.masterAddress)
            let conn = connection
            watch = SentinelWatch(
                configuration: configuration, master: master, sentinels: sentinels, eventLoop: eventLoop, logger: logger
            ) { address in
                // A failover: leave the old master unless already on the new one.
                if conn.address != address {
                    logger.info("sentinel switched the master", metadata: ["gh-redis": "\(master)", "gh-address": "\(address)"])
                    conn.drop()
                }
            }
        case .cluster(let seeds):
            // A Cluster subscriber: any node hears every PUBLISH; the seeds are tried in turn.
            connection = RedisConnection(
                configuration: configuration, eventLoop: eventLoop, logger: logger, label: "cluster subscriber", options: options,
                locate: RedisConnection.inTurn(seeds, eventLoop: eventLoop))
            watch = nil
        }
    }

    func start() {
        connection.connect()
        watch?.start()
    }

    func shutdown() {
        connection.shutdown()
        watch?.shutdown()
    }

    func send(_ args: [[UInt8]], timeout: TimeAmount) -> EventLoopFuture<RedisReply> {
        connection.send(args, timeout: timeout)
    }

    func masters() -> [RedisConnection] { [connection] }
    var available: Bool { connection.available }
}
