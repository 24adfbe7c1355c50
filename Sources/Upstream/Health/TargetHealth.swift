import Synchronization

/// The shared, lock-free health flag of one target, read by every event loop on the request path and
/// written by the health checker.
public final class TargetHealth: Sendable {
    private let healthy = Atomic<Bool>(true)

    public init() {}

    public var isHealthy: Bool { healthy.load(ordering: .relaxed) }

    public func set(_ value: Bool) { healthy.store(value, ordering: .relaxed) }
}
