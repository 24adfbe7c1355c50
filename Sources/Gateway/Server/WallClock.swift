import Foundation

/// Wall-clock time in seconds since the epoch, injected where time is policy (token expiry, buckets, quotas,
/// billing periods, audit timestamps), so tests can fix it.
public struct WallClock: Sendable {
    public let now: @Sendable () -> Double

    public init(now: @escaping @Sendable () -> Double) { self.now = now }

    /// The system's real-time clock.
    public static let system = WallClock {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
    }
}
