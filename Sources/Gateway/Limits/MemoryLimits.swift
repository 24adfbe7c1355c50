import Policy
import Synchronization

/// Limit state in process memory: the embedded store's buckets and counters, and the local fallback
/// buckets used while Redis is unreachable (`on_failure: open`). One instance serves every event loop, so
/// one process enforces one limit; the lock is held for the arithmetic only.
final class MemoryLimits: Sendable {
    /// Keys are values, not strings: nothing is formatted on the request path.
    private struct BucketKey: Hashable {
        let tenant: String
        let name: String
    }

    private struct CounterKey: Hashable {
        let tenant: String
        /// The period's start (quota) or the day's start (per-day count).
        let start: Int
        let isDay: Bool
    }

    private struct State {
        var buckets: [BucketKey: (bucket: TokenBucket, spec: BucketSpec)] = [:]
        /// Counters with the time (seconds) they expire.
        var counters: [CounterKey: (value: Int, expires: Int)] = [:]
        var writes = 0

        /// A counter's value, 0 once it has expired.
        func count(_ key: CounterKey, at nowSeconds: Int) -> Int {
            counters[key].flatMap { $0.expires > nowSeconds ? $0.value : nil } ?? 0
        }
    }

    private let state = Mutex(State())
    /// Entries examined for cleanup after this many writes.
    static let sweepEvery = 8192

    /// Decides `charge` for up to `want` units (see ``LimitMath``).
    func take(_ charge: Charge, want: Int, now: Double) -> LimitMath.Result {
        let bucketKeys = charge.buckets.map { BucketKey(tenant: charge.tenant, name: $0.name) }
        let specs = charge.buckets.map(\.spec)
        let quotaKey = CounterKey(tenant: charge.tenant, start: charge.period.start, isDay: false)
        let day = LimitKeys.dayStart(now)
        let dayKey = CounterKey(tenant: charge.tenant, start: day, isDay: true)
        let expires = charge.period.end + 86_400
        let dayExpires = day + LimitKeys.dayRetention
        let nowSeconds = Int(now)
        return state.withLock { s in
            var buckets = bucketKeys.map { s.buckets[$0]?.bucket }
            let used = s.count(quotaKey, at: nowSeconds)
            let r = LimitMath.take(
                buckets: &buckets, specs: specs, quotaUsed: used, quotaLimit: charge.quotaLimit, want: want, now: now)
            guard r.granted > 0 else { return r }
            for (i, key) in bucketKeys.enumerated() { s.buckets[key] = (buckets[i]!, specs[i]) }
            s.counters[quotaKey] = (r.quotaUsed, expires)
            s.counters[dayKey] = (s.count(dayKey, at: nowSeconds) + r.granted, dayExpires)
            s.writes += 1
            if s.writes % Self.sweepEvery == 0 { Self.sweep(&s, now: now) }
            return r
        }
    }

    /// Drops buckets that have refilled (a full bucket is the same as none) and expired counters.
    private static func sweep(_ s: inout State, now: Double) {
        s.buckets = s.buckets.filter { $0.value.bucket.refilled($0.value.spec, now: now).tokens < Double($0.value.spec.burst) }
        let nowSeconds = Int(now)
        s.counters = s.counters.filter { $0.value.expires > nowSeconds }
    }

    /// The quota counter and the per-day counts of `period`.
    func usage(tenant: String, period: BillingPeriod, now: Double) -> (used: Int, days: [Int: Int]) {
        let quotaKey = CounterKey(tenant: tenant, start: period.start, isDay: false)
        let days = period.days(through: now)
        let nowSeconds = Int(now)
        return state.withLock { s in
            var perDay: [Int: Int] = [:]
            for d in days { perDay[d] = s.count(CounterKey(tenant: tenant, start: d, isDay: true), at: nowSeconds) }
            return (s.count(quotaKey, at: nowSeconds), perDay)
        }
    }

    /// Every day counter of `range` (of `tenant` only, when given) that has not expired, for the usage export.
    func dayCounts(_ range: UsageRange, tenant: String?, now: Double) -> [UsageReport.Row] {
        let nowSeconds = Int(now)
        return state.withLock { s in
            var rows: [UsageReport.Row] = []
            for (key, counter) in s.counters where key.isDay && counter.expires > nowSeconds && counter.value > 0 {
                guard range.contains(day: key.start), tenant == nil || key.tenant == tenant else { continue }
                rows.append(UsageReport.Row(tenant: key.tenant, day: key.start, requests: counter.value))
            }
            return rows
        }
    }
}

/// What every loop's ``RateLimiter`` shares: key names, the local fallback buckets, the failure mode and
/// the number of live instances last seen in Redis (the fallback buckets take that share of each limit).
final class LimitSettings: Sendable {
    let keys: LimitKeys
    let fallback: MemoryLimits
    let failOpen: Bool
    let liveInstances = Atomic<Int>(1)

    init(keys: LimitKeys, fallback: MemoryLimits, failOpen: Bool) {
        self.keys = keys
        self.fallback = fallback
        self.failOpen = failOpen
    }
}
