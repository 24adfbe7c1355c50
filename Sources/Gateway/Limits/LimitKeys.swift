import Policy

/// Where a tenant's limit state lives. Every key of one tenant shares the hash tag `{<prefix>:<tenant>}`, so
/// one script touching a tenant's buckets and counters stays on one Redis Cluster slot.
///
/// - `{gh:acme}:b:<bucket>`: a token bucket, hash `tk` (tokens) and `ts` (seconds, server time)
/// - `{gh:acme}:q:<period start>`: units counted in the quota period (expires a day after its end)
/// - `{gh:acme}:d:<day start>`: requests counted on that UTC day, the billing feed (expires
///   ``dayRetention`` after the day's start)
struct LimitKeys {
    let prefix: String

    /// How long a day counter is kept after its day starts: 62 days, so every day of the previous month can
    /// still be exported on the last day of the current one (and a monthly period's days outlive it by a month).
    static let dayRetention = 62 * 86_400

    func tag(_ tenant: String) -> String { "{" + prefix + ":" + tenant + "}:" }
    func bucket(_ tenant: String, _ name: String) -> String { tag(tenant) + "b:" + name }
    func quota(_ tenant: String, _ period: BillingPeriod) -> String { tag(tenant) + "q:" + String(period.start) }
    func day(_ tenant: String, _ dayStart: Int) -> String { tag(tenant) + "d:" + String(dayStart) }
    static func dayStart(_ now: Double) -> Int { CivilDate.dayStart(Int(now.rounded(.down))) }

    /// `SCAN … MATCH` pattern of every tenant's day counters under this prefix (the prefix's glob characters
    /// escaped). A sibling prefix (`gh:eu` beside `gh`) matches too: ``parseDay(_:)`` tells them apart.
    var dayPattern: String { "{" + Self.globEscaped(prefix) + ":*}:d:*" }

    /// The tenant and day start of a day counter's key under this prefix; nil for any other key (a sibling
    /// prefix's, whose "tenant" holds a `:` and is no valid tenant id).
    func parseDay(_ key: String) -> (tenant: String, day: Int)? {
        let head = "{" + prefix + ":"
        guard key.hasPrefix(head) else { return nil }
        let rest = key.utf8.dropFirst(head.utf8.count)
        guard let close = rest.firstIndex(of: UInt8(ascii: "}")) else { return nil }
        let tenant = String(Substring(rest[rest.startIndex..<close]))
        let tail = rest[rest.index(after: close)...]
        guard TenantID.isValid(tenant), tail.starts(with: ":d:".utf8) else { return nil }
        let digits = tail.dropFirst(3)
        guard !digits.isEmpty, digits.count <= 12, digits.allSatisfy({ $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }),
            let day = Int(String(Substring(digits))), day % 86_400 == 0
        else { return nil }
        return (tenant, day)
    }

    /// `text` with the glob characters of `SCAN … MATCH` (`* ? [ ] \`) escaped.
    static func globEscaped(_ text: String) -> String {
        var escaped = ""
        for c in text {
            if "*?[]\\".contains(c) { escaped.append("\\") }
            escaped.append(c)
        }
        return escaped
    }

    /// The sorted set of live instances (heartbeats scored by time).
    var instances: String { prefix + ":instances" }

    /// A tenant's record (JSON), beside its limit keys in one Cluster slot.
    func tenantRecord(_ tenant: String) -> String { tag(tenant) + "tenant" }

    /// The SCAN pattern of every record key (the prefix's glob characters escaped).
    var tenantRecordPattern: String { "{" + Self.globEscaped(prefix) + ":*}:tenant" }

    /// The tenant a record key names (nil for a key of another shape).
    func tenant(ofRecordKey key: String) -> String? {
        let head = "{" + prefix + ":"
        let tail = "}:tenant"
        guard key.hasPrefix(head), key.hasSuffix(tail), key.count > head.count + tail.count else { return nil }
        return String(key.dropFirst(head.count).dropLast(tail.count))
    }
}

/// The outcome of charging a request, with what its response says about the limits.
struct LimitOutcome {
    enum Verdict: Equatable {
        case admit
        case rateLimited
        case quotaExceeded
        case storeUnavailable
    }

    struct Headers: Equatable {
        var limit: Int
        var remaining: Int
        /// Seconds.
        var reset: Int
    }

    var verdict: Verdict
    var headers: Headers?
    /// Whole seconds, at least 1, for denials.
    var retryAfter = 0
    /// Admitted by the local fallback bucket because the store failed (`on_failure: open`).
    var failOpen = false

    static let storeUnavailable = LimitOutcome(verdict: .storeUnavailable, headers: nil, retryAfter: 1)

    /// Reads one decision of ``LimitMath`` (from memory or from the script) for `charge`.
    init(_ r: LimitMath.Result, _ charge: Charge, now: Double) {
        let untilPeriodEnd = max(1, Int((Double(charge.period.end) - now).rounded(.up)))
        if r.granted == 0 && r.quotaExhausted {
            verdict = .quotaExceeded
            retryAfter = untilPeriodEnd
            headers = Headers(limit: charge.quotaLimit ?? 0, remaining: 0, reset: untilPeriodEnd)
            return
        }
        if r.granted == 0 {
            verdict = .rateLimited
            retryAfter = max(1, Int(r.retryAfter.rounded(.up)))
            headers = Headers(limit: r.limit, remaining: 0, reset: retryAfter)
            return
        }
        verdict = .admit
        if !charge.buckets.isEmpty {
            headers = Headers(limit: r.limit, remaining: max(0, r.remaining), reset: Int(r.resetAfter.rounded(.up)))
        } else if let limit = charge.quotaLimit {
            headers = Headers(limit: limit, remaining: max(0, limit - r.quotaUsed), reset: untilPeriodEnd)
        } else {
            headers = nil
        }
    }

    init(verdict: Verdict, headers: Headers?, retryAfter: Int) {
        self.verdict = verdict
        self.headers = headers
        self.retryAfter = retryAfter
    }
}
