import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// A real Redis Cluster on loopback for one test: `masters` × (1 + `replicasPerMaster`) `redis-server` processes
/// joined by `redis-cli --cluster create`, with a short node timeout (1 s) so a killed master fails over in about
/// two seconds. Every helper asks the nodes themselves (CLUSTER NODES, CLUSTER INFO, ROLE) and polls with a
/// deadline; a step that fails throws a ``RawClientError`` carrying the node's own output.
///
/// Every reply of ``cli(_:_:)`` is redis-cli's raw form (what it prints when its output is not a terminal): one
/// line per element, nested arrays flattened, no quoting, no `1)` numbering; the final newline is dropped. An error
/// reply (MOVED, ASK, ERR ...) throws, with the reply in the error's description.
final class RedisCluster: @unchecked Sendable {
    /// Every node's client port, in the order given to `redis-cli --cluster create`.
    let ports: [Int]
    private let busPorts: [Int: Int]
    private let root: URL
    private let nodes = RedisProcessGroup()

    init(masters: Int = 3, replicasPerMaster: Int = 1) throws {
        guard masters >= 3, replicasPerMaster >= 0 else {
            throw RawClientError(description: "redis-cli --cluster create needs at least 3 masters (asked for \(masters))")
        }
        try RedisProcessGroup.requireBinaries()
        let count = masters * (1 + replicasPerMaster)
        let all = try RedisProcessGroup.freePorts(2 * count)
        ports = Array(all[0..<count])
        busPorts = Dictionary(uniqueKeysWithValues: zip(ports, all[count...]))
        root = FileManager.default.temporaryDirectory.appendingPathComponent("gh-cluster-\(UUID().uuidString)")
        do {
            for port in ports {
                let dir = root.appendingPathComponent(String(port))
                try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
                try nodes.start(port: port, directory: dir, arguments: [
                    "--port", String(port), "--bind", "127.0.0.1",
                    "--cluster-enabled", "yes", "--cluster-config-file", dir.appendingPathComponent("nodes.conf").path,
                    "--cluster-node-timeout", "1000", "--cluster-require-full-coverage", "no",
                    "--cluster-port", String(busPorts[port]!),
                    "--save", "", "--appendonly", "no", "--dir", dir.path,
                    // By default a master waits 5 s before each diskless full resync, a new replica's first one included.
                    "--repl-diskless-sync-delay", "0",
                ])
            }
            let create = try RedisCLI.run(
                ["--cluster", "create"] + ports.map { "127.0.0.1:\($0)" }
                    + ["--cluster-replicas", String(replicasPerMaster), "--cluster-yes"],
                timeout: 60)
            guard create.status == 0 else {
                throw RawClientError(description: "redis-cli --cluster create failed (\(create.status)):\n\(create.output)")
            }
            try waitUntilFormed(masters: masters, replicas: masters * replicasPerMaster, seconds: 20)
        } catch {
            stop()
            throw error
        }
    }

    /// Waits until every node reports `cluster_state:ok`, all 16384 slots assigned and every node known, `masters`
    /// nodes own slots, and each of the `replicas` replicas has its replication link up.
    private func waitUntilFormed(masters: Int, replicas: Int, seconds: Double) throws {
        try pollUntil("the cluster to form", seconds: seconds) { () throws -> Polled<Void> in
            var replicasUp = 0
            for port in ports {
                let info = RedisCLI.fields(try cli(port, "CLUSTER", "INFO"))
                guard info["cluster_state"] == "ok", info["cluster_slots_assigned"] == "16384",
                    info["cluster_known_nodes"] == String(ports.count)
                else {
                    return .waiting("node \(port): state \(info["cluster_state"] ?? "?"), slots assigned "
                        + "\(info["cluster_slots_assigned"] ?? "?"), known nodes \(info["cluster_known_nodes"] ?? "?")")
                }
                let replication = RedisCLI.fields(try cli(port, "INFO", "replication"))
                if replication["role"] == "slave" {
                    guard replication["master_link_status"] == "up" else {
                        return .waiting("replica \(port): master_link_status \(replication["master_link_status"] ?? "?")")
                    }
                    replicasUp += 1
                }
            }
            let owners = try view(asking: ports[0]).filter { !$0.slots.isEmpty }.count
            guard replicasUp == replicas, owners == masters else {
                return .waiting("\(replicasUp) of \(replicas) replicas up, \(owners) of \(masters) masters own slots")
            }
            return .done(())
        }
    }

    /// Runs `redis-cli -p port args...`: the reply in raw form (see the type's comment); an error reply throws.
    @discardableResult
    func cli(_ port: Int, _ args: String...) throws -> String { try cli(port, args) }

    @discardableResult
    func cli(_ port: Int, _ args: [String]) throws -> String { try RedisCLI.command(port: port, args) }

    /// `CLUSTER MYID` of the node on `port`.
    func nodeID(_ port: Int) throws -> String { try cli(port, "CLUSTER", "MYID") }

    // MARK: The cluster's view

    /// One line of `CLUSTER NODES`.
    struct Node {
        var id: String
        var port: Int
        /// `myself`, `master`, `slave`, `fail?`, `fail`, `handshake`, `noaddr`, `nofailover`.
        var flags: Set<String>
        /// The master's id, for a replica.
        var masterID: String?
        var connected: Bool
        /// Slots served (open migrations, `[slot->-id]`, are left out).
        var slots: [ClosedRange<Int>]

        var isMaster: Bool { flags.contains("master") }
        func owns(_ slot: Int) -> Bool { slots.contains { $0.contains(slot) } }
    }

    /// The cluster as the node on `port` sees it (`CLUSTER NODES`).
    func view(asking port: Int) throws -> [Node] {
        try cli(port, "CLUSTER", "NODES").split(whereSeparator: \.isNewline).compactMap { line in
            let f = line.split(separator: " ").map(String.init)
            guard f.count >= 8 else { return nil }
            // 127.0.0.1:7000@17000[,hostname]
            let address = f[1].split(separator: "@")[0]
            guard let colon = address.lastIndex(of: ":"), let nodePort = Int(address[address.index(after: colon)...])
            else { return nil }
            let slots: [ClosedRange<Int>] = f.dropFirst(8).compactMap { entry in
                if entry.hasPrefix("[") { return nil }
                let bounds = entry.split(separator: "-").compactMap { Int($0) }
                guard let low = bounds.first, let high = bounds.last else { return nil }
                return low...high
            }
            return Node(
                id: f[0], port: nodePort, flags: Set(f[2].split(separator: ",").map(String.init)),
                masterID: f[3] == "-" ? nil : f[3], connected: f[7] == "connected", slots: slots)
        }
    }

    /// Asks live nodes in turn, longest-running first (a node just restarted may briefly hold the slot map it had
    /// when it was killed); the first answer.
    private func ask<T>(_ question: (Int) throws -> T) throws -> T {
        var last: Error = RawClientError(description: "no node of the cluster is running")
        for port in nodes.alive {
            do { return try question(port) } catch { last = error }
        }
        throw last
    }

    /// Ports of the masters that own slots, sorted, as a live node sees them (a master the cluster has marked
    /// `fail` is left out; one only suspected, `fail?`, is still listed).
    func masters() throws -> [Int] {
        try ask { port in
            try view(asking: port).filter { $0.isMaster && !$0.flags.contains("fail") && !$0.slots.isEmpty }
                .map(\.port).sorted()
        }
    }

    /// The port of the master that owns `slot`, as a live node sees it.
    func master(ofSlot slot: Int) throws -> Int {
        try ask { port in
            guard let owner = try view(asking: port).first(where: { $0.isMaster && $0.owns(slot) }) else {
                throw RawClientError(description: "node \(port) knows no owner of slot \(slot)")
            }
            return owner.port
        }
    }

    /// Polls until a live node other than `old` owns `slot` in a live node's view, says so itself (`myself,master`
    /// owning the slot), and reports `cluster_state:ok`; its port.
    func waitForNewMaster(ofSlot slot: Int, other old: Int, seconds: Double = 10) throws -> Int {
        try pollUntil("a new master of slot \(slot) (other than \(old))", seconds: seconds) { () throws -> Polled<Int> in
            let owner = try master(ofSlot: slot)
            guard owner != old, nodes.isAlive(owner) else { return .waiting("slot \(slot) is still on \(owner)") }
            guard let me = try view(asking: owner).first(where: { $0.flags.contains("myself") }),
                me.isMaster, me.owns(slot)
            else { return .waiting("\(owner) does not yet see itself as the master of slot \(slot)") }
            let state = RedisCLI.fields(try cli(owner, "CLUSTER", "INFO"))["cluster_state"]
            guard state == "ok" else { return .waiting("\(owner) reports cluster_state:\(state ?? "?")") }
            return .done(owner)
        }
    }

    // MARK: Keys and slots

    /// The hash slot of `key`: CRC16-XMODEM of the key (or of its hash tag, the bytes between the first `{` and
    /// the next `}` when there is at least one) modulo 16384, as Redis Cluster computes it.
    static func slot(_ key: String) -> Int {
        let bytes = Array(key.utf8)
        var hashed = bytes[...]
        if let open = bytes.firstIndex(of: UInt8(ascii: "{")),
            let close = bytes[(open + 1)...].firstIndex(of: UInt8(ascii: "}")), close > open + 1
        {
            hashed = bytes[(open + 1)..<close]
        }
        var crc: UInt16 = 0
        for byte in hashed {
            crc ^= UInt16(byte) << 8
            for _ in 0..<8 { crc = crc & 0x8000 != 0 ? (crc << 1) ^ 0x1021 : crc << 1 }
        }
        return Int(crc & 16383)
    }

    /// Tenant ids `t0`, `t1`, ... grouped by the master that owns the slot of `{<prefix>:<tenant>}` (the hash tag
    /// of the gateway's keys for that tenant): `perMaster` for each master with slots, in the current slot map.
    func tenants(prefix: String, perMaster: Int) throws -> [Int: [String]] {
        let owners = try ask { port in try view(asking: port).filter { $0.isMaster && !$0.flags.contains("fail") } }
        var groups: [Int: [String]] = [:]
        for owner in owners where !owner.slots.isEmpty { groups[owner.port] = [] }
        guard !groups.isEmpty else { throw RawClientError(description: "no master owns slots") }
        var i = 0
        while groups.values.contains(where: { $0.count < perMaster }) {
            guard i < 1_000_000 else { throw RawClientError(description: "no \(perMaster) tenants for every master") }
            let tenant = "t\(i)"
            let slot = Self.slot("{\(prefix):\(tenant)}")
            if let owner = owners.first(where: { $0.owns(slot) }), let group = groups[owner.port], group.count < perMaster {
                groups[owner.port] = group + [tenant]
            }
            i += 1
        }
        return groups
    }

    // MARK: Slot migration, in steps (a test runs traffic between them to see ASK, then MOVED)

    /// Opens the migration of `slot` from the master on `source` to the one on `target`: IMPORTING on the target,
    /// then MIGRATING on the source. Keys still on the source are served there; a missing one gets `-ASK`.
    func beginMigration(slot: Int, from source: Int, to target: Int) throws {
        let sourceID = try nodeID(source)
        let targetID = try nodeID(target)
        try expectOK(target, "CLUSTER", "SETSLOT", String(slot), "IMPORTING", sourceID)
        try expectOK(source, "CLUSTER", "SETSLOT", String(slot), "MIGRATING", targetID)
    }

    /// Moves every key of `slot` from `source` to `target` (CLUSTER GETKEYSINSLOT in batches of 100, then MIGRATE
    /// ... KEYS on the source); how many it moved. Keys must not contain a newline (the replies are read by line).
    @discardableResult
    func moveKeys(slot: Int, from source: Int, to target: Int) throws -> Int {
        var moved = 0
        while true {
            let keys = try cli(source, "CLUSTER", "GETKEYSINSLOT", String(slot), "100")
                .split(separator: "\n", omittingEmptySubsequences: true).map(String.init)
            if keys.isEmpty { return moved }
            let reply = try cli(source, ["MIGRATE", "127.0.0.1", String(target), "", "0", "5000", "KEYS"] + keys)
            guard reply == "OK" || reply == "NOKEY" else {
                throw RawClientError(description: "MIGRATE of slot \(slot) from \(source) to \(target): \(reply)")
            }
            moved += keys.count
        }
    }

    /// Closes the migration of `slot` to `target`: CLUSTER SETSLOT slot NODE <target> on the target, then on every
    /// other master with slots (the source among them). It first throws if another master still holds keys of the
    /// slot: once the source hears from the target that the slot is no longer its own, it drops them silently.
    func finishMigration(slot: Int, to target: Int) throws {
        let others = try masters().filter { $0 != target }
        for port in others {
            let left = try cli(port, "CLUSTER", "COUNTKEYSINSLOT", String(slot))
            guard left == "0" else {
                throw RawClientError(description: "\(port) still holds \(left) keys of slot \(slot): moveKeys first")
            }
        }
        let targetID = try nodeID(target)
        for port in [target] + others {
            try expectOK(port, "CLUSTER", "SETSLOT", String(slot), "NODE", targetID)
        }
    }

    private func expectOK(_ port: Int, _ args: String...) throws {
        let reply = try cli(port, args)
        guard reply == "OK" else {
            throw RawClientError(description: "\(args.joined(separator: " ")) on \(port): \(reply)")
        }
    }

    // MARK: Processes

    /// SIGKILL to the node on `port`; its directory (and nodes.conf) stays for ``restart(_:)``.
    func kill(_ port: Int) { nodes.kill(port) }

    /// Freezes a node (SIGSTOP: its sockets stay open, nothing answers) or lets it go on.
    func pause(_ port: Int) { nodes.signal(port, SIGSTOP) }
    func resume(_ port: Int) { nodes.signal(port, SIGCONT) }

    /// Starts the node on `port` again with the same arguments and directory (its nodes.conf rejoins it to the
    /// cluster, where a newer master of its old slots makes it a replica); returns once it answers PING.
    func restart(_ port: Int) throws { try nodes.restart(port) }

    func isAlive(_ port: Int) -> Bool { nodes.isAlive(port) }

    /// Kills every node and removes their directories.
    func stop() {
        nodes.killAll()
        try? FileManager.default.removeItem(at: root)
    }
}

// MARK: - Shared by the Redis fixtures (cluster and sentinel)

/// One poll's outcome: the condition holds (with a value), not yet (and why), or never will (stop now).
enum Polled<T> {
    case done(T)
    case waiting(String)
    case failed(String)
}

/// Calls `attempt` every 50 ms until it is done or fails, or `seconds` pass; a thrown error counts as "not yet".
/// Past the deadline it throws, naming what it waited for and the last reason it was not there yet.
func pollUntil<T>(_ what: String, seconds: Double, _ attempt: () throws -> Polled<T>) throws -> T {
    let deadline = Date().addingTimeInterval(seconds)
    var reason = "never checked"
    while true {
        let outcome: Polled<T>
        do { outcome = try attempt() } catch { outcome = .waiting("\(error)") }
        switch outcome {
        case .done(let value): return value
        case .waiting(let why): reason = why
        case .failed(let why): throw RawClientError(description: "waiting for \(what): \(why)")
        }
        if Date() > deadline {
            throw RawClientError(description: "timed out after \(seconds)s waiting for \(what); last seen: \(reason)")
        }
        usleep(50_000)
    }
}

/// The `redis-cli` command line.
enum RedisCLI {
    static var binary: String {
        for path in ["/usr/bin/redis-cli", "/usr/local/bin/redis-cli"]
        where FileManager.default.isExecutableFile(atPath: path) {
            return path
        }
        return "/usr/bin/redis-cli"
    }

    /// Runs redis-cli with `arguments`, killing it after `timeout` seconds (a node that accepts but never answers
    /// must not hang a test): its exit status, what it wrote (standard output, then standard error, colour codes
    /// removed), and its standard output alone.
    ///
    /// It waits for the exit through `terminationHandler`, not `waitUntilExit()`: while any other child process is
    /// alive (the nodes), `waitUntilExit()` returns about 50 ms late, and the fixtures call redis-cli a lot. Standard
    /// error is read after standard output: redis-cli writes a line or two there at most.
    static func run(_ arguments: [String], timeout: Double = 10) throws
        -> (status: Int32, output: String, stdout: String)
    {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: binary)
        p.arguments = arguments
        let out = Pipe()
        let err = Pipe()
        p.standardOutput = out
        p.standardError = err
        p.standardInput = FileHandle.nullDevice
        let exited = DispatchSemaphore(value: 0)
        p.terminationHandler = { _ in exited.signal() }
        try p.run()
        let pid = p.processIdentifier
        let watchdog = DispatchWorkItem { _ = Glibc.kill(pid, SIGKILL) }
        DispatchQueue.global().asyncAfter(deadline: .now() + timeout, execute: watchdog)
        let stdout = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        let stderr = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        exited.wait()
        watchdog.cancel()
        let text = (stdout + stderr)
            .replacingOccurrences(of: "\u{1B}\\[[0-9;]*m", with: "", options: .regularExpression)
        if p.terminationReason == .uncaughtSignal {
            throw RawClientError(
                description: "redis-cli \(arguments.joined(separator: " ")) killed after \(timeout)s: \(text)")
        }
        return (p.terminationStatus, text, stdout)
    }

    /// `redis-cli -e -p port args...`: the reply in raw form without its final newline; an error reply, or no
    /// connection, throws with what redis-cli printed.
    static func command(port: Int, _ args: [String]) throws -> String {
        let result = try run(["-e", "-p", String(port)] + args)
        guard result.status == 0 else {
            throw RawClientError(
                description: "redis-cli -p \(port) \(args.joined(separator: " ")): "
                    + result.output.trimmingCharacters(in: .whitespacesAndNewlines))
        }
        var reply = result.stdout
        if reply.hasSuffix("\n") { reply.removeLast() }
        return reply
    }

    /// `key:value` lines of an INFO-style reply (CLUSTER INFO, INFO replication).
    static func fields(_ info: String) -> [String: String] {
        var fields: [String: String] = [:]
        for line in info.split(whereSeparator: \.isNewline) {
            guard let colon = line.firstIndex(of: ":") else { continue }
            fields[String(line[..<colon])] = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
        }
        return fields
    }

    /// Alternating field and value lines (the raw form of SENTINEL MASTER, a flat map).
    static func pairs(_ reply: String) -> [String: String] {
        let lines = reply.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        var map: [String: String] = [:]
        for i in stride(from: 0, to: lines.count - 1, by: 2) { map[lines[i]] = lines[i + 1] }
        return map
    }
}

/// The `redis-server` processes of one fixture, by port: each keeps its arguments and directory, so a restart
/// brings back the same node. Stopped with SIGKILL (a test node needs no graceful shutdown).
final class RedisProcessGroup: @unchecked Sendable {
    private let lock = NSLock()
    private var processes: [Int: Process] = [:]
    private var arguments: [Int: [String]] = [:]
    private var directories: [Int: URL] = [:]
    private var started: [Int: Date] = [:]

    static func requireBinaries() throws {
        guard FileManager.default.isExecutableFile(atPath: RedisServer.binary),
            FileManager.default.isExecutableFile(atPath: RedisCLI.binary)
        else {
            throw RawClientError(description: "redis-server or redis-cli is not installed: run `make test` (it installs them)")
        }
    }

    /// `count` distinct free loopback ports.
    static func freePorts(_ count: Int) throws -> [Int] {
        var ports: [Int] = []
        var attempts = 0
        while ports.count < count {
            attempts += 1
            guard attempts < count * 20 else { throw RawClientError(description: "no \(count) distinct free ports") }
            let port = try RedisServer.freePort()
            if !ports.contains(port) { ports.append(port) }
        }
        return ports
    }

    /// Starts `redis-server arguments...` (its log in `directory`) and waits until it answers PING on `port`.
    func start(port: Int, directory: URL, arguments: [String]) throws {
        lock.withLock {
            self.arguments[port] = arguments
            directories[port] = directory
        }
        try launch(port)
    }

    private func launch(_ port: Int) throws {
        let (args, dir) = lock.withLock { (arguments[port]!, directories[port]!) }
        let stderrPath = dir.appendingPathComponent("stderr.log").path
        if !FileManager.default.fileExists(atPath: stderrPath) {
            _ = FileManager.default.createFile(atPath: stderrPath, contents: nil)
        }
        let stderr = FileHandle(forWritingAtPath: stderrPath)
        _ = try? stderr?.seekToEnd()
        defer { try? stderr?.close() }
        let p = Process()
        p.executableURL = URL(fileURLWithPath: RedisServer.binary)
        p.arguments = args + ["--logfile", dir.appendingPathComponent("redis.log").path]
        p.standardInput = FileHandle.nullDevice
        p.standardOutput = FileHandle.nullDevice
        p.standardError = stderr ?? FileHandle.nullDevice
        try p.run()
        lock.withLock {
            processes[port] = p
            started[port] = Date()
        }
        try pollUntil("redis-server on \(port) to answer PING", seconds: 10) { () throws -> Polled<Void> in
            guard p.isRunning else { return .failed("it exited (\(p.terminationStatus)):\n\(log(port))") }
            let reply = try RedisCLI.command(port: port, ["PING"])
            return reply == "PONG" ? .done(()) : .waiting("PING: \(reply)")
        }
    }

    /// The last lines the node on `port` wrote to its log and standard error.
    func log(_ port: Int, lines: Int = 20) -> String {
        guard let dir = lock.withLock({ directories[port] }) else { return "" }
        return ["stderr.log", "redis.log"].compactMap { name -> String? in
            guard let text = try? String(contentsOf: dir.appendingPathComponent(name), encoding: .utf8), !text.isEmpty
            else { return nil }
            return text.split(separator: "\n").suffix(lines).joined(separator: "\n")
        }.joined(separator: "\n")
    }

    func restart(_ port: Int) throws {
        guard lock.withLock({ arguments[port] }) != nil else { throw RawClientError(description: "no node on \(port)") }
        kill(port)
        try launch(port)
    }

    func kill(_ port: Int) {
        guard let p = lock.withLock({ processes[port] }) else { return }
        if p.isRunning { _ = Glibc.kill(p.processIdentifier, SIGKILL) }
        // Not `waitUntilExit()`, which lags by about 50 ms while other children are alive (see `RedisCLI.run`).
        let deadline = Date().addingTimeInterval(5)
        while p.isRunning && Date() < deadline { usleep(1_000) }
    }

    func isAlive(_ port: Int) -> Bool { lock.withLock { processes[port]?.isRunning ?? false } }

    func signal(_ port: Int, _ signal: Int32) {
        guard let p = lock.withLock({ processes[port] }) else { return }
        Foundation.kill(p.processIdentifier, signal)
    }

    /// Ports of the running nodes, longest-running first.
    var alive: [Int] {
        lock.withLock {
            processes.filter { $0.value.isRunning }.keys.sorted { started[$0]! < started[$1]! }
        }
    }

    func killAll() {
        for port in lock.withLock({ Array(processes.keys) }) { kill(port) }
    }
}
