/// A token bucket's shape: it refills at `ratePerSecond` up to `burst` tokens.
public struct BucketSpec: Sendable, Hashable {
    public var ratePerSecond: Double
    public var burst: Int

    public init(ratePerSecond: Double, burst: Int) {
        self.ratePerSecond = ratePerSecond
        self.burst = burst
    }

    /// `requests` per `per` (nanoseconds), `burst` capacity.
    public init(_ rate: PlanConfig.Rate) {
        self.init(ratePerSecond: Double(rate.requests) / (Double(rate.per) / 1e9), burst: rate.burst)
    }
}

/// A bucket's state: tokens held at a time (seconds). Absent state means a full bucket.
public struct TokenBucket: Sendable, Equatable {
    public var tokens: Double
    public var updated: Double

    public init(tokens: Double, updated: Double) {
        self.tokens = tokens
        self.updated = updated
    }

    public static func full(_ spec: BucketSpec, now: Double) -> TokenBucket {
        TokenBucket(tokens: Double(spec.burst), updated: now)
    }

    /// The state at `now`: refilled for the time elapsed (a clock that went back refills nothing), capped at
    /// the burst (so a lowered burst applies at once).
    public func refilled(_ spec: BucketSpec, now: Double) -> TokenBucket {
        let elapsed = max(0, now - updated)
        return TokenBucket(tokens: min(Double(spec.burst), tokens + elapsed * spec.ratePerSecond), updated: max(now, updated))
    }
}

/// One decision over the buckets a request charges and the tenant's quota: the arithmetic of the in-memory
/// store, mirrored line by line by the Redis script (``LimitScript``).
///
/// Up to `want` units are granted, limited by the whole tokens of every bucket and by what is left of the
/// quota; a grant takes the same number from every bucket and adds it to the quota counter. Nothing is
/// taken when the grant is 0, so a rejected request consumes nothing.
public enum LimitMath {
    public struct Result: Sendable, Equatable {
        /// Units granted (0: denied).
        public var granted: Int
        /// Whole tokens left in the emptiest bucket after the grant (Int.max without buckets).
        public var remaining: Int
        /// The burst of that bucket (RateLimit-Limit).
        public var limit: Int
        /// Seconds until the emptiest bucket holds one token again (denials), or 0.
        public var retryAfter: Double
        /// Seconds until every bucket is full again.
        public var resetAfter: Double
        /// The quota counter after the grant.
        public var quotaUsed: Int
        /// True when the quota, not a bucket, denied.
        public var quotaExhausted: Bool

        public init(
            granted: Int, remaining: Int, limit: Int, retryAfter: Double, resetAfter: Double, quotaUsed: Int,
            quotaExhausted: Bool
        ) {
            self.granted = granted
            self.remaining = remaining
            self.limit = limit
            self.retryAfter = retryAfter
            self.resetAfter = resetAfter
            self.quotaUsed = quotaUsed
            self.quotaExhausted = quotaExhausted
        }
    }

    /// Decides and, on a grant, updates `buckets` (nil entries are full buckets) in place.
    /// - Parameters:
    ///   - quotaUsed: the period's counter before this decision.
    ///   - quotaLimit: the period's limit; nil for an unlimited quota (usage is still counted).
    public static func take(
        buckets: inout [TokenBucket?], specs: [BucketSpec], quotaUsed: Int, quotaLimit: Int?, want: Int, now: Double
    ) -> Result {
        var grant = max(1, want)
        var refilled: [TokenBucket] = []
        refilled.reserveCapacity(specs.count)
        var retry = 0.0
        for (i, spec) in specs.enumerated() {
            let b = (buckets[i] ?? .full(spec, now: now)).refilled(spec, now: now)
            refilled.append(b)
            let whole = Int(b.tokens.rounded(.down))
            if whole < grant { grant = whole }
            if whole < 1 { retry = max(retry, (1 - b.tokens) / spec.ratePerSecond) }
        }
        var quotaExhausted = false
        if let limit = quotaLimit {
            let left = limit - quotaUsed
            if left < 1 {
                quotaExhausted = true
                grant = 0
            } else if left < grant {
                grant = left
            }
        }
        grant = max(0, grant)
        if grant > 0 {
            for i in refilled.indices {
                refilled[i].tokens -= Double(grant)
                buckets[i] = refilled[i]
            }
        }
        var remaining = Int.max
        var limit = 0
        var reset = 0.0
        for (i, spec) in specs.enumerated() {
            let whole = Int(refilled[i].tokens.rounded(.down))
            if whole < remaining {
                remaining = whole
                limit = spec.burst
            }
            reset = max(reset, (Double(spec.burst) - refilled[i].tokens) / spec.ratePerSecond)
        }
        return Result(
            granted: grant, remaining: remaining, limit: limit, retryAfter: grant > 0 ? 0 : retry, resetAfter: reset,
            quotaUsed: quotaUsed + grant, quotaExhausted: quotaExhausted)
    }
}
