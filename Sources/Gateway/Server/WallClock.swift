import Foundation

/// Wall-clock time, seconds since the Unix epoch: the one clock of the parts that decide by date (rate-limit
/// leases, billing periods and usage, webhook signature tolerance and replay memory, instance heartbeats).
///
/// Injected (STYLE 6) so a test can pass a fixed or stepped clock instead of sleeping. Intervals and
/// deadlines on an event loop use `NIODeadline` (monotonic), not this.
public struct WallClock: Sendable {
    /// Now, in seconds since 1970-01-01T00:00:00Z.
    public let now: @Sendable () -> Double

    public init(now: @escaping @Sendable () -> Double) {
        self.now = now
    }

    /// The system's real-time clock (`CLOCK_REALTIME`).
    public static let system = WallClock {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
    }

    /// A clock that always reads `seconds`.
    public static func fixed(_ seconds: Double) -> WallClock {
        WallClock { seconds }
    }
}
