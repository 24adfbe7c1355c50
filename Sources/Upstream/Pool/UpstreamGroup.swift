import NIOCore
import Policy

/// One upstream's targets as seen from one event loop: their pools and the balancer's state.
public final class UpstreamGroup {
    public let name: String
    public let config: UpstreamConfig
    public let pools: [TargetPool]
    /// `Host` sent upstream when the client sent none (HTTP/1.0): the first target.
    public let defaultHost: String
    private var next = 0

    init(name: String, config: UpstreamConfig, pools: [TargetPool]) {
        self.name = name
        self.config = config
        self.pools = pools
        self.defaultHost = pools.first?.target.description ?? "localhost"
    }

    /// Picks a healthy target's pool by the configured balance, skipping `excluding` (a failed attempt's
    /// target) when another healthy one exists. Nil when no target is healthy.
    public func pick(excluding: TargetPool? = nil) -> TargetPool? {
        let n = pools.count
        guard n > 0 else { return nil }
        switch config.balance {
        case .roundRobin:
            var fallback: TargetPool? = nil
            for step in 0..<n {
                let pool = pools[(next + step) % n]
                guard pool.health.isHealthy else { continue }
                if pool === excluding {
                    fallback = pool
                    continue
                }
                next = (next + step + 1) % n
                return pool
            }
            return fallback
        case .leastConnections:
            var best: TargetPool? = nil
            for step in 0..<n {
                let pool = pools[(next + step) % n]
                guard pool.health.isHealthy, pool !== excluding else { continue }
                if best == nil || pool.inFlight < best!.inFlight { best = pool }
            }
            next = (next + 1) % n
            if best == nil, let excluding, excluding.health.isHealthy { return excluding }
            return best
        }
    }

    public func sweep(now: NIODeadline) {
        for pool in pools { pool.sweep(now: now) }
    }

    public func close() {
        for pool in pools { pool.close() }
    }

    /// Closed and holding no connection any more.
    public var isDrained: Bool { pools.allSatisfy { $0.openCount == 0 } }
}

@available(*, unavailable)
extension UpstreamGroup: Sendable {}

/// Every upstream of one config, resolved once; shared by all loops. Each loop builds its own pools from it.
public final class UpstreamRegistry: Sendable {
    public struct Target: Sendable {
        public let hostPort: HostPort
        public let address: SocketAddress
        public let health: TargetHealth
    }

    public let upstreams: [String: (config: UpstreamConfig, targets: [Target])]
    /// Each https upstream's TLS client, per target (SNI and verification name may differ by target host).
    let tls: [String: [ClientTLS]]
    /// Upstreams configured with `insecure_skip_verify` (warned about at every load).
    public let insecureUpstreams: [String]

    /// Resolves every target address. Blocking (DNS): call at start-up or reload, never on an event loop.
    public init(upstreams: [String: UpstreamConfig]) throws {
        var result: [String: (config: UpstreamConfig, targets: [Target])] = [:]
        var tls: [String: [ClientTLS]] = [:]
        for (name, upstream) in upstreams {
            var targets: [Target] = []
            for hp in upstream.targets {
                let address = try SocketAddress.makeAddressResolvingHost(hp.host, port: hp.port)
                targets.append(Target(hostPort: hp, address: address, health: TargetHealth()))
            }
            result[name] = (upstream, targets)
            if let config = upstream.tls, let first = upstream.targets.first {
                // One context per upstream (its files read once); each target is verified under its own host
                // unless `server_name` names one for all.
                let base = try ClientTLS(config, host: first.host, what: "upstreams.\(name).tls")
                tls[name] = upstream.targets.map { config.serverName == nil ? base.naming($0.host) : base }
            }
        }
        self.upstreams = result
        self.tls = tls
        self.insecureUpstreams = upstreams.values.filter { $0.tls?.insecureSkipVerify == true }.map(\.name).sorted()
    }

    /// Builds one loop's groups. Each target's connection cap is shared out among `loopCount` loops.
    public func makeGroups(on eventLoop: EventLoop, loopCount: Int) -> [String: UpstreamGroup] {
        var groups: [String: UpstreamGroup] = [:]
        for (name, entry) in upstreams {
            let perLoop = max(1, (entry.config.maxConnectionsPerTarget + loopCount - 1) / loopCount)
            let pools = entry.targets.enumerated().map { i, t in
                TargetPool(
                    target: t.hostPort, address: t.address, health: t.health, eventLoop: eventLoop,
                    maxConnections: perLoop, connectTimeout: .nanoseconds(entry.config.connectTimeout),
                    keepaliveTimeout: .nanoseconds(entry.config.keepaliveTimeout), tls: tls[name]?[i])
            }
            groups[name] = UpstreamGroup(name: name, config: entry.config, pools: pools)
        }
        return groups
    }
}
