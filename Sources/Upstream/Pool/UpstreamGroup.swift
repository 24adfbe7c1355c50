import NIOCore
import Policy

/// One upstream's targets as seen from one event loop: their pools and the balancer's state.
public final class UpstreamGroup {
    public let name: String
    public let config: UpstreamConfig
    public let pools: [TargetPool]
    /// `Host` sent upstream when the client sent none (HTTP/1.0): the first target.
    public let defaultHost: String
    /// `max_in_flight`, shared with the other loops' groups of this upstream; nil: unbounded.
    public let inFlightLimit: InFlightLimit?
    private var next = 0

    init(name: String, config: UpstreamConfig, pools: [TargetPool], inFlightLimit: InFlightLimit?) {
        self.name = name
        self.config = config
        self.pools = pools
        self.inFlightLimit = inFlightLimit
        self.defaultHost = pools.first?.target.description ?? "localhost"
    }

    /// A target chosen for one attempt.
    public struct Pick {
        public let pool: TargetPool
        /// The attempt is its target's half-open circuit's probe: its outcome must be reported with this id, or
        /// the probe abandoned.
        public let probe: CircuitBreakerStateMachine.ProbeID?
    }

    /// Picks an available target's pool by the configured balance: healthy (active checks) and admitted by its
    /// circuit breaker. `excluding` (a failed attempt's target) is skipped when another one is available. Nil
    /// when none is.
    public func pick(excluding: TargetPool? = nil) -> Pick? {
        // A circuit that looked half-open may have had its probe taken by another loop meanwhile: choose again.
        for _ in 0...pools.count {
            guard let pool = choose(excluding: excluding) else { return nil }
            guard let circuit = pool.circuit else { return Pick(pool: pool, probe: nil) }
            switch circuit.admit(now: .now()) {
            case .allow: return Pick(pool: pool, probe: nil)
            case .probe(let id): return Pick(pool: pool, probe: id)
            case .reject: continue
            }
        }
        return nil
    }

    private func available(_ pool: TargetPool) -> Bool {
        pool.health.isHealthy && (pool.circuit?.wouldAdmit(now: .now()) ?? true)
    }

    private func choose(excluding: TargetPool?) -> TargetPool? {
        let n = pools.count
        guard n > 0 else { return nil }
        switch config.balance {
        case .roundRobin:
            var fallback: TargetPool? = nil
            for step in 0..<n {
                let pool = pools[(next + step) % n]
                guard available(pool) else { continue }
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
                guard pool !== excluding, available(pool) else { continue }
                if best == nil || pool.inFlight < best!.inFlight { best = pool }
            }
            next = (next + 1) % n
            if best == nil, let excluding, available(excluding) { return excluding }
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
        /// Passive health (`circuit_breaker`); nil when the upstream has none.
        public let circuit: TargetCircuit?
    }

    public let upstreams: [String: (config: UpstreamConfig, targets: [Target])]
    /// Each https upstream's TLS client, per target (SNI and verification name may differ by target host).
    let tls: [String: [ClientTLS]]
    /// Upstreams configured with `insecure_skip_verify` (warned about at every load).
    public let insecureUpstreams: [String]
    /// Each upstream's `max_in_flight` bound, for the whole instance.
    public let inFlightLimits: [String: InFlightLimit]

    /// Resolves every target address. Blocking (DNS): call at start-up or reload, never on an event loop.
    ///
    /// `previous`: the registry a reload replaces. Its circuit breakers carry over for each target still in the
    /// same upstream with the same `circuit_breaker` settings, and its `max_in_flight` counters for each upstream
    /// that still has one (with the new bound), so requests still running on the old pools keep counting and an
    /// ejected target stays ejected.
    public init(upstreams: [String: UpstreamConfig], previous: UpstreamRegistry? = nil) throws {
        var result: [String: (config: UpstreamConfig, targets: [Target])] = [:]
        var tls: [String: [ClientTLS]] = [:]
        for (name, upstream) in upstreams {
            var targets: [Target] = []
            let before = previous?.upstreams[name]
            let keepCircuits = before != nil && before?.config.circuitBreaker == upstream.circuitBreaker
            for hp in upstream.targets {
                let address = try SocketAddress.makeAddressResolvingHost(hp.host, port: hp.port)
                let kept = keepCircuits ? before?.targets.first(where: { $0.hostPort == hp })?.circuit : nil
                let circuit = kept ?? upstream.circuitBreaker.map {
                    TargetCircuit(
                        CircuitBreakerStateMachine(
                            consecutiveFailures: $0.consecutiveFailures, openFor: .nanoseconds($0.openFor)),
                        on5xx: $0.on5xx)
                }
                targets.append(Target(hostPort: hp, address: address, health: TargetHealth(), circuit: circuit))
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
        var limits: [String: InFlightLimit] = [:]
        for (name, upstream) in upstreams {
            guard let max = upstream.maxInFlight else { continue }
            if let kept = previous?.inFlightLimits[name] {
                kept.setMax(max)
                limits[name] = kept
            } else {
                limits[name] = InFlightLimit(max: max)
            }
        }
        self.inFlightLimits = limits
        self.insecureUpstreams = upstreams.values.filter { $0.tls?.insecureSkipVerify == true }.map(\.name).sorted()
    }

    /// Builds one loop's groups. Each target's connection cap is shared out among `loopCount` loops.
    public func makeGroups(on eventLoop: EventLoop, loopCount: Int) -> [String: UpstreamGroup] {
        var groups: [String: UpstreamGroup] = [:]
        for (name, entry) in upstreams {
            let perLoop = max(1, (entry.config.maxConnectionsPerTarget + loopCount - 1) / loopCount)
            let pools = entry.targets.enumerated().map { i, t in
                TargetPool(
                    target: t.hostPort, address: t.address, health: t.health, circuit: t.circuit, eventLoop: eventLoop,
                    maxConnections: perLoop, connectTimeout: .nanoseconds(entry.config.connectTimeout),
                    keepaliveTimeout: .nanoseconds(entry.config.keepaliveTimeout), tls: tls[name]?[i])
            }
            groups[name] = UpstreamGroup(
                name: name, config: entry.config, pools: pools, inFlightLimit: inFlightLimits[name])
        }
        return groups
    }
}
