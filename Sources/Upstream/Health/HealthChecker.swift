import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import Policy
import Synchronization

/// Actively probes every target of every upstream that has a `health_check`, and flips the shared
/// ``TargetHealth`` flags through each target's ``HealthStateMachine``.
public final class HealthChecker: Sendable {
    private let registry: UpstreamRegistry
    private let eventLoop: EventLoop
    private let logger: Logger
    private let tasks = Mutex<[RepeatedTask]>([])
    private let onChange: @Sendable (String, HostPort, Bool) -> Void

    public init(
        registry: UpstreamRegistry, eventLoop: EventLoop, logger: Logger,
        onChange: @escaping @Sendable (String, HostPort, Bool) -> Void = { _, _, _ in }
    ) {
        self.registry = registry
        self.eventLoop = eventLoop
        self.logger = logger
        self.onChange = onChange
    }

    public func start() {
        var started: [RepeatedTask] = []
        for (name, entry) in registry.upstreams {
            guard let hc = entry.config.healthCheck else { continue }
            for (i, target) in entry.targets.enumerated() {
                let tls = registry.tls[name]?[i]
                let machine = Mutex(HealthStateMachine(unhealthyAfter: hc.unhealthyAfter, healthyAfter: hc.healthyAfter))
                let task = eventLoop.scheduleRepeatedAsyncTask(
                    initialDelay: .zero, delay: .nanoseconds(hc.interval)
                ) { [logger, onChange] _ in
                    Self.probe(target: target, check: hc, tls: tls, on: self.eventLoop).map { ok in
                        let action = machine.withLock { ok ? $0.probeSucceeded() : $0.probeFailed() }
                        switch action {
                        case .none: break
                        case .markHealthy, .markUnhealthy:
                            let healthy = action == .markHealthy
                            target.health.set(healthy)
                            logger.notice(
                                "upstream target health changed",
                                metadata: [
                                    "gh-upstream": "\(name)", "gh-target": "\(target.hostPort)",
                                    "gh-healthy": "\(healthy)",
                                ])
                            onChange(name, target.hostPort, healthy)
                        }
                    }
                }
                started.append(task)
            }
        }
        tasks.withLock { $0 = started }
    }

    public func stop() {
        tasks.withLock { tasks in
            for t in tasks { t.cancel() }
            tasks.removeAll()
        }
    }

    /// One GET of the health path; true for a 2xx or 3xx status within the timeout.
    /// Uses the upstream's TLS settings when it is https.
    static func probe(
        target: UpstreamRegistry.Target, check: UpstreamConfig.HealthCheck, tls: ClientTLS?, on loop: EventLoop
    ) -> EventLoopFuture<Bool> {
        HTTPFetch.get(
            address: target.address, hostHeader: target.hostPort.description, path: check.path, on: loop,
            timeout: .nanoseconds(check.timeout), maxBytes: 64 * 1024, userAgent: "gatehouse-health-check", tls: tls
        )
        .map { (200..<400).contains($0.status) }
        .recover { _ in false }
    }
}
