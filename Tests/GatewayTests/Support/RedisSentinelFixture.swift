import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// A real Redis Sentinel set on loopback for one test: a master, one replica, and three sentinels (quorum 2,
/// `down-after-milliseconds` 1000, `failover-timeout` 3000) watching it under ``name``. Sentinels are
/// `redis-server <conf> --sentinel`, each with a conf file of its own that it rewrites as it learns.
///
/// Every reply of ``cli(_:_:)`` is redis-cli's raw form (one line per element, see ``RedisCluster``); an error
/// reply throws. Each helper polls the nodes with a deadline and throws a ``RawClientError`` with what it last saw.
final class RedisSentinelSet: @unchecked Sendable {
    let name: String
    /// The data nodes: the first master, then its replica (roles change after a failover; ask ``masterPort()``).
    let dataPorts: [Int]
    let sentinelPorts: [Int]
    private let root: URL
    private let nodes = RedisProcessGroup()

    init(name: String = "gh-main") throws {
        try RedisProcessGroup.requireBinaries()
        self.name = name
        let all = try RedisProcessGroup.freePorts(5)
        dataPorts = Array(all[0..<2])
        sentinelPorts = Array(all[2..<5])
        root = FileManager.default.temporaryDirectory.appendingPathComponent("gh-sentinel-\(UUID().uuidString)")
        do {
            let master = dataPorts[0]
            for port in dataPorts {
                let dir = try directory(port)
                try nodes.start(port: port, directory: dir, arguments: [
                    "--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", dir.path,
                    // By default a master waits 5 s before each diskless full resync, a new replica's first one included.
                    "--repl-diskless-sync-delay", "0",
                ] + (port == master ? [] : ["--replicaof", "127.0.0.1", String(master)]))
            }
            try pollUntil("the replica's link to the master", seconds: 10) { () throws -> Polled<Void> in
                let link = RedisCLI.fields(try cli(dataPorts[1], "INFO", "replication"))["master_link_status"]
                return link == "up" ? .done(()) : .waiting("master_link_status:\(link ?? "?")")
            }
            for port in sentinelPorts {
                let dir = try directory(port)
                let conf = dir.appendingPathComponent("sentinel.conf")
                try """
                port \(port)
                bind 127.0.0.1
                dir \(dir.path)
                sentinel resolve-hostnames no
                sentinel monitor \(name) 127.0.0.1 \(master) 2
                sentinel down-after-milliseconds \(name) 1000
                sentinel failover-timeout \(name) 3000
                sentinel parallel-syncs \(name) 1

                """.write(to: conf, atomically: true, encoding: .utf8)
                try nodes.start(port: port, directory: dir, arguments: [conf.path, "--sentinel"])
            }
            try waitUntilWatching(seconds: 20)
        } catch {
            stop()
            throw error
        }
    }

    private func directory(_ port: Int) throws -> URL {
        let dir = root.appendingPathComponent(String(port))
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        return dir
    }

    /// Waits until every sentinel reports the master up and knows its replica and the two other sentinels.
    private func waitUntilWatching(seconds: Double) throws {
        try pollUntil("the sentinels to watch \(name)", seconds: seconds) { () throws -> Polled<Void> in
            for port in sentinelPorts {
                let master = RedisCLI.pairs(try cli(port, "SENTINEL", "MASTER", name))
                guard master["flags"] == "master", master["num-slaves"] == "1", master["num-other-sentinels"] == "2" else {
                    return .waiting("sentinel \(port): flags \(master["flags"] ?? "?"), num-slaves "
                        + "\(master["num-slaves"] ?? "?"), num-other-sentinels \(master["num-other-sentinels"] ?? "?")")
                }
            }
            return .done(())
        }
    }

    /// Runs `redis-cli -p port args...` (a data node or a sentinel): the raw reply; an error reply throws.
    @discardableResult
    func cli(_ port: Int, _ args: String...) throws -> String { try RedisCLI.command(port: port, args) }

    /// The first line of `ROLE` on `port`: `master`, `slave` or `sentinel`.
    func role(_ port: Int) throws -> String {
        String(try cli(port, "ROLE").split(separator: "\n").first ?? "")
    }

    /// The master's port as the first live sentinel that answers reports it (`SENTINEL get-master-addr-by-name`).
    func masterPort() throws -> Int {
        var last: Error = RawClientError(description: "no sentinel is running")
        for port in sentinelPorts where nodes.isAlive(port) {
            do { return try masterPort(askingSentinel: port) } catch { last = error }
        }
        throw last
    }

    private func masterPort(askingSentinel port: Int) throws -> Int {
        let reply = try cli(port, "SENTINEL", "get-master-addr-by-name", name)
        let lines = reply.split(separator: "\n")
        guard lines.count == 2, let master = Int(lines[1]) else {
            throw RawClientError(description: "sentinel \(port) get-master-addr-by-name \(name): \(reply)")
        }
        return master
    }

    /// SIGKILL to the current master (as the sentinels report it); its port.
    @discardableResult
    func killMaster() throws -> Int {
        let port = try masterPort()
        kill(port)
        return port
    }

    /// Polls until every live sentinel reports the same master other than `old` and that node's `ROLE` says
    /// `master`; its port.
    func waitForFailover(from old: Int, seconds: Double = 15) throws -> Int {
        try pollUntil("a failover of \(name) from \(old)", seconds: seconds) { () throws -> Polled<Int> in
            let reports = try sentinelPorts.filter { nodes.isAlive($0) }.map { try masterPort(askingSentinel: $0) }
            guard let new = reports.first, new != old, reports.allSatisfy({ $0 == new }) else {
                return .waiting("the sentinels report \(reports)")
            }
            let role = try role(new)
            return role == "master" ? .done(new) : .waiting("\(new) reports role \(role)")
        }
    }

    /// SIGKILL to the data node or sentinel on `port`; its directory stays for ``restart(_:)``.
    func kill(_ port: Int) { nodes.kill(port) }

    /// Starts the node on `port` again with its arguments and directory; returns once it answers PING. A killed
    /// master comes back as a master with no data until the sentinels reconfigure it as a replica of the new
    /// master (Sentinel lets an instance that reports the wrong role be for 8 s before it converts it).
    func restart(_ port: Int) throws { try nodes.restart(port) }

    func isAlive(_ port: Int) -> Bool { nodes.isAlive(port) }

    /// Kills every data node and sentinel and removes their directories.
    func stop() {
        nodes.killAll()
        try? FileManager.default.removeItem(at: root)
    }
}
