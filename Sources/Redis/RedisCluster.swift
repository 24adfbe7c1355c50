import Logging
import NIOCore

/// One Redis Cluster seen from one event loop: the slot map, learnt from the seeds (`CLUSTER SLOTS`), and one
/// connection per master. Each command goes to the master of its key's slot; `MOVED` updates the map (and a
/// refresh follows), `ASK` is followed once with `ASKING`, `TRYAGAIN` (a slot mid-migration) is retried
/// shortly, all within the call's timeout. A lost connection, a failed connect or `CLUSTERDOWN` refreshes the
/// map (at most every ``refreshGap``), so a promoted replica is found without a restart; the map is also
/// refreshed every ``refreshEvery``. Each node has its own connection, timeout and circuit breaker: a dead
/// shard fails its own calls and no others.
final class ClusterRouter: RedisRouter {
    /// A master and its connection.
    final class Node {
        let key: String
        let connection: RedisConnection
        init(key: String, connection: RedisConnection) {
            self.key = key
            self.connection = connection
        }
    }

    static let refreshGap: TimeAmount = .milliseconds(100)
    static let refreshEvery: TimeAmount = .seconds(5)
    static let refreshTimeout: TimeAmount = .seconds(1)

    let configuration: RedisClient.Configuration
    let seeds: [RedisClient.Configuration.Endpoint]
    let eventLoop: EventLoop
    let logger: Logger
    private let onReady: (@Sendable () -> Void)?
    /// Slot → master (nil until known).
    private var slots: [Node?] = Array(repeating: nil, count: RedisSlots.count)
    /// Every node with a connection, by `ip:port`.
    private var nodes: [String: Node] = [:]
    private var refreshing = false
    private var refreshAgain = false
    private var lastRefresh: NIODeadline = .distantPast
    private var periodic: Scheduled<Void>?
    private var everMapped = false
    private var stopped = false

    init(
        configuration: RedisClient.Configuration, seeds: [RedisClient.Configuration.Endpoint], eventLoop: EventLoop,
        logger: Logger, onReady: (@Sendable () -> Void)?
    ) {
        self.configuration = configuration
        self.seeds = seeds
        self.eventLoop = eventLoop
        self.logger = logger
        self.onReady = onReady
    }

    func start() {
        refresh()
        schedulePeriodic()
    }

    private func schedulePeriodic() {
        periodic = eventLoop.assumeIsolated().scheduleTask(in: Self.refreshEvery) { [self] in
            guard !stopped else { return }
            refresh()
            schedulePeriodic()
        }
    }

    func shutdown() {
        stopped = true
        periodic?.cancel()
        for node in nodes.values { node.connection.shutdown() }
        nodes = [:]
        slots = Array(repeating: nil, count: RedisSlots.count)
    }

    /// The slot map is known and some master can be reached.
    var available: Bool { everMapped && masterNodes().contains { $0.connection.available } }

    func masters() -> [RedisConnection] { masterNodes().map(\.connection) }

    // MARK: Sending

    func send(_ args: [[UInt8]], timeout: TimeAmount) -> EventLoopFuture<RedisReply> {
        let deadline = NIODeadline.now() + timeout
        let node: Node?
        if let key = RedisSlots.routingKey(args) {
            node = slots[RedisSlots.slot(key)]
        } else {
            // Any master answers a command without a key; prefer one whose connection is up.
            let masters = masterNodes()
            node = masters.first { $0.connection.available } ?? masters.first
        }
        guard let node else {
            refresh()
            return eventLoop.makeFailedFuture(RedisError.unavailable("the cluster's slot map is not known yet"))
        }
        return attempt(args, on: node, asking: false, deadline: deadline, redirects: 0)
    }

    private func masterNodes() -> [Node] {
        var seen = Set<ObjectIdentifier>()
        var out: [Node] = []
        for case let node? in slots where seen.insert(ObjectIdentifier(node)).inserted { out.append(node) }
        return out
    }

    private func attempt(
        _ args: [[UInt8]], on node: Node, asking: Bool, deadline: NIODeadline, redirects: Int
    ) -> EventLoopFuture<RedisReply> {
        let left = deadline - .now()
        guard left > .zero else { return eventLoop.makeFailedFuture(RedisError.timeout("no reply before the deadline")) }
        return node.connection.send(args, timeout: left, asking: asking).assumeIsolated().flatMapError { [self] error in
            guard let e = error as? RedisError else { return eventLoop.makeFailedFuture(error) }
            guard e.name == "server" else {
                // The node is unreachable, timed out or its circuit is open: perhaps failed over.
                refresh()
                return eventLoop.makeFailedFuture(e)
            }
            guard redirects < 3 else { return eventLoop.makeFailedFuture(e) }
            let detail = e.detail
            if detail.hasPrefix("MOVED ") || detail.hasPrefix("ASK ") {
                let parts = detail.split(separator: " ")
                guard parts.count == 3, let slot = Int(parts[1]), slot >= 0, slot < RedisSlots.count,
                    let target = self.node(String(parts[2]))
                else { return eventLoop.makeFailedFuture(e) }
                if detail.hasPrefix("MOVED ") {
                    slots[slot] = target
                    refresh()
                    return attempt(args, on: target, asking: false, deadline: deadline, redirects: redirects + 1)
                }
                // ASK: this one command, on the importing node, right after ASKING.
                return attempt(args, on: target, asking: true, deadline: deadline, redirects: redirects + 1)
            }
            if detail.hasPrefix("TRYAGAIN") {
                // A multi-key call on a slot whose keys are split mid-migration: retried shortly (the same node,
                // asking again if it was the importing one).
                let promise = eventLoop.makePromise(of: RedisReply.self)
                eventLoop.assumeIsolated().scheduleTask(in: .milliseconds(5)) { [self] in
                    attempt(args, on: node, asking: asking, deadline: deadline, redirects: redirects + 1).cascade(to: promise)
                }.futureResult.whenFailure { promise.fail($0) }  // the loop shut down first
                return promise.futureResult
            }
            if detail.hasPrefix("CLUSTERDOWN") { refresh() }
            return eventLoop.makeFailedFuture(e)
        }.nonisolated()
    }

    /// The node at `ip:port` (a connection is opened for a new one).
    private func node(_ key: String) -> Node? {
        if let node = nodes[key] { return node }
        guard let endpoint = RedisClient.Configuration.Endpoint(parsing: key, defaultPort: 6379),
            let address = endpoint.socketAddress()
        else {
            logger.error("cluster node address is not an IP address and port", metadata: ["gh-redis": "\(key)"])
            return nil
        }
        let eventLoop = self.eventLoop
        var options = RedisConnection.Options()
        options.onLost = { [weak self] in self?.refresh() }
        let connection = RedisConnection(
            configuration: configuration, eventLoop: eventLoop, logger: logger, label: "cluster node \(key)", options: options
        ) { eventLoop.makeSucceededFuture(address) }
        let node = Node(key: key, connection: connection)
        nodes[key] = node
        connection.connect()
        return node
    }

    // MARK: The slot map

    /// Asks for the slot map (unless a refresh ran within ``refreshGap``; then one follows when it is over).
    func refresh() {
        guard !stopped else { return }
        if refreshing {
            refreshAgain = true
            return
        }
        let now = NIODeadline.now()
        if now - lastRefresh < Self.refreshGap {
            refreshing = true
            eventLoop.assumeIsolated().scheduleTask(deadline: lastRefresh + Self.refreshGap) { [self] in
                refreshing = false
                refresh()
            }
            return
        }
        refreshing = true
        lastRefresh = now
        // Known masters first (they are up to date), then the seeds.
        let masters = masterNodes()
        var candidates = masters.filter { $0.connection.available }.map(\.key)
        for key in seeds.compactMap({ $0.socketAddress().flatMap(Self.key) }) + masters.map(\.key)
        where !candidates.contains(key) {
            candidates.append(key)
        }
        ask(candidates, 0)
    }

    private func ask(_ candidates: [String], _ index: Int) {
        guard !stopped else { return }
        guard index < candidates.count, let node = node(candidates[index]) else {
            logger.warning("no cluster node answered CLUSTER SLOTS", metadata: ["gh-redis": "\(candidates)"])
            refreshDone()
            return
        }
        node.connection.send([Array("CLUSTER".utf8), Array("SLOTS".utf8)], timeout: Self.refreshTimeout)
            .assumeIsolated().whenComplete { [self] result in
                guard case .success(let reply) = result, let map = Self.parseSlots(reply), !map.isEmpty else {
                    ask(candidates, index + 1)
                    return
                }
                apply(map)
                refreshDone()
            }
    }

    private func refreshDone() {
        refreshing = false
        if refreshAgain {
            refreshAgain = false
            refresh()
        }
    }

    /// Installs a new map: slots point at their masters; connections to nodes that no longer own a slot and are
    /// not seeds are closed.
    private func apply(_ map: [(start: Int, end: Int, master: String)]) {
        var fresh: [Node?] = Array(repeating: nil, count: RedisSlots.count)
        for range in map {
            guard let node = node(range.master) else { continue }
            for slot in range.start...range.end { fresh[slot] = node }
        }
        var changed = false
        for slot in 0..<RedisSlots.count where fresh[slot] !== slots[slot] { changed = true; break }
        slots = fresh
        let owners = Set(masterNodes().map(\.key))
        let seedKeys = Set(seeds.compactMap { $0.socketAddress().flatMap(Self.key) })
        for (key, node) in nodes where !owners.contains(key) && !seedKeys.contains(key) {
            node.connection.shutdown()
            nodes[key] = nil
        }
        if changed {
            logger.info(
                "cluster slot map updated", metadata: ["gh-masters": "\(owners.sorted().joined(separator: ","))"])
        }
        if !everMapped {
            everMapped = true
            onReady?()
        }
    }

    static func key(_ address: SocketAddress) -> String? {
        guard let ip = address.ipAddress, let port = address.port else { return nil }
        return address.protocol == .inet6 ? "[\(ip)]:\(port)" : "\(ip):\(port)"
    }

    /// `CLUSTER SLOTS`: `[[start, end, [ip, port, id, …], replicas…], …]` → ranges and their master's `ip:port`.
    static func parseSlots(_ reply: RedisReply) -> [(start: Int, end: Int, master: String)]? {
        guard case .array(let ranges) = reply else { return nil }
        var out: [(start: Int, end: Int, master: String)] = []
        for range in ranges {
            guard case .array(let parts) = range, parts.count >= 3, let start = parts[0].integer, let end = parts[1].integer,
                start >= 0, end >= start, end < RedisSlots.count, case .array(let master) = parts[2], master.count >= 2,
                let ip = master[0].string, !ip.isEmpty, let port = master[1].integer
            else { return nil }
            let host = ip.contains(":") ? "[\(ip)]" : ip
            out.append((Int(start), Int(end), "\(host):\(port)"))
        }
        return out
    }
}

@available(*, unavailable)
extension ClusterRouter: Sendable {}
