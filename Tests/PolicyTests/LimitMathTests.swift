import Testing

@testable import Policy

/// Token-bucket and quota arithmetic, and billing periods, on an injected clock.
@Suite struct LimitMathTests {
    let spec = BucketSpec(ratePerSecond: 10, burst: 20)

    func take(_ buckets: inout [TokenBucket?], specs: [BucketSpec], used: Int = 0, limit: Int? = nil, want: Int = 1, at now: Double)
        -> LimitMath.Result
    {
        LimitMath.take(buckets: &buckets, specs: specs, quotaUsed: used, quotaLimit: limit, want: want, now: now)
    }

    @Test func burstThenRefill() {
        var b: [TokenBucket?] = [nil]
        var admitted = 0
        for _ in 0..<50 where take(&b, specs: [spec], at: 100).granted == 1 { admitted += 1 }
        #expect(admitted == 20)
        let denied = take(&b, specs: [spec], at: 100)
        #expect(denied.granted == 0)
        #expect(abs(denied.retryAfter - 0.1) < 1e-9)
        #expect(denied.remaining == 0 && denied.limit == 20)
        // 0.35 s later: 3.5 tokens, so 3 whole requests.
        var later = 0
        for _ in 0..<10 where take(&b, specs: [spec], at: 100.35).granted == 1 { later += 1 }
        #expect(later == 3)
        // Never more than the burst, however long the pause.
        let full = take(&b, specs: [spec], at: 10_000)
        #expect(full.granted == 1 && full.remaining == 19)
        #expect(abs(full.resetAfter - 0.1) < 1e-9)
    }

    @Test func rejectedRequestsConsumeNothing() {
        let tight = BucketSpec(ratePerSecond: 1, burst: 1)
        var b: [TokenBucket?] = [nil, nil]
        // The second bucket is empty after one request; the first must not lose tokens on the denials.
        #expect(take(&b, specs: [spec, tight], at: 0).granted == 1)
        for _ in 0..<5 { #expect(take(&b, specs: [spec, tight], at: 0).granted == 0) }
        #expect(b[0]!.tokens == 19)
        let r = take(&b, specs: [spec, tight], at: 1)
        #expect(r.granted == 1 && r.remaining == 0 && r.limit == 1)
    }

    @Test func clockGoingBackRefillsNothing() {
        var b: [TokenBucket?] = [TokenBucket(tokens: 0, updated: 50)]
        #expect(take(&b, specs: [spec], at: 40).granted == 0)
        #expect(take(&b, specs: [spec], at: 50.1).granted == 1)
    }

    @Test func lowerBurstAppliesAtOnce() {
        var b: [TokenBucket?] = [TokenBucket(tokens: 20, updated: 0)]
        let r = take(&b, specs: [BucketSpec(ratePerSecond: 1, burst: 5)], at: 0)
        #expect(r.granted == 1 && r.remaining == 4)
    }

    @Test func leasesAreCappedByTokensAndQuota() {
        var b: [TokenBucket?] = [nil]
        #expect(take(&b, specs: [spec], want: 8, at: 0).granted == 8)
        #expect(take(&b, specs: [spec], want: 50, at: 0).granted == 12)
        var q: [TokenBucket?] = [nil]
        let r = take(&q, specs: [spec], used: 27, limit: 30, want: 10, at: 0)
        #expect(r.granted == 3 && r.quotaUsed == 30)
    }

    @Test func quotaExhaustionIsReportedAsQuota() {
        var b: [TokenBucket?] = [nil]
        let r = take(&b, specs: [spec], used: 30, limit: 30, at: 0)
        #expect(r.granted == 0 && r.quotaExhausted)
        #expect(b[0] == nil)  // the bucket was not charged
        var none: [TokenBucket?] = []
        #expect(take(&none, specs: [], used: 5, limit: nil, at: 0).quotaUsed == 6)
    }

    @Test func ratePerDuration() {
        let s = BucketSpec(PlanConfig.Rate(requests: 100, per: 60_000_000_000, burst: 5))
        #expect(abs(s.ratePerSecond - 100.0 / 60) < 1e-12)
        #expect(s.burst == 5)
    }

    // MARK: Billing periods

    func period(_ text: String, _ per: PlanConfig.QuotaPeriod, anchor: Int = 1) -> (String, String) {
        let p = BillingPeriod.containing(Timestamp.parse(text)!, per: per, anchor: anchor)
        return (CivilDate.rfc3339(p.start), CivilDate.rfc3339(p.end))
    }

    @Test func dailyPeriods() {
        #expect(period("2026-11-23T13:14:15Z", .day) == ("2026-11-23T00:00:00Z", "2026-11-24T00:00:00Z"))
        #expect(period("2026-12-31T23:59:59Z", .day) == ("2026-12-31T00:00:00Z", "2027-01-01T00:00:00Z"))
    }

    @Test func monthlyPeriodsFollowTheAnchor() {
        #expect(period("2026-11-23T10:00:00Z", .month) == ("2026-11-01T00:00:00Z", "2026-12-01T00:00:00Z"))
        #expect(period("2026-11-23T10:00:00Z", .month, anchor: 15) == ("2026-11-15T00:00:00Z", "2026-12-15T00:00:00Z"))
        #expect(period("2026-11-14T23:59:59Z", .month, anchor: 15) == ("2026-10-15T00:00:00Z", "2026-11-15T00:00:00Z"))
        #expect(period("2026-12-20T00:00:00Z", .month, anchor: 15) == ("2026-12-15T00:00:00Z", "2027-01-15T00:00:00Z"))
        #expect(period("2027-01-03T00:00:00Z", .month, anchor: 15) == ("2026-12-15T00:00:00Z", "2027-01-15T00:00:00Z"))
    }

    @Test func anchorsClampAtMonthEnd() {
        // Anchor 31: February's period starts on its last day; March's on the 31st.
        #expect(period("2027-02-10T00:00:00Z", .month, anchor: 31) == ("2027-01-31T00:00:00Z", "2027-02-28T00:00:00Z"))
        #expect(period("2027-02-28T00:00:00Z", .month, anchor: 31) == ("2027-02-28T00:00:00Z", "2027-03-31T00:00:00Z"))
        #expect(period("2027-03-30T12:00:00Z", .month, anchor: 31) == ("2027-02-28T00:00:00Z", "2027-03-31T00:00:00Z"))
        #expect(period("2027-04-30T00:00:00Z", .month, anchor: 31) == ("2027-04-30T00:00:00Z", "2027-05-31T00:00:00Z"))
        #expect(period("2026-11-30T00:00:00Z", .month, anchor: 30) == ("2026-11-30T00:00:00Z", "2026-12-30T00:00:00Z"))
    }

    @Test func leapYears() {
        #expect(period("2028-02-29T08:00:00Z", .month, anchor: 31) == ("2028-02-29T00:00:00Z", "2028-03-31T00:00:00Z"))
        #expect(period("2028-02-28T08:00:00Z", .month, anchor: 30) == ("2028-01-30T00:00:00Z", "2028-02-29T00:00:00Z"))
        #expect(period("2028-02-29T08:00:00Z", .month, anchor: 29) == ("2028-02-29T00:00:00Z", "2028-03-29T00:00:00Z"))
        #expect(period("2100-02-28T08:00:00Z", .month, anchor: 29) == ("2100-02-28T00:00:00Z", "2100-03-29T00:00:00Z"))
        #expect(period("2000-02-29T08:00:00Z", .day) == ("2000-02-29T00:00:00Z", "2000-03-01T00:00:00Z"))
        #expect(CivilDate.isLeap(2000) && !CivilDate.isLeap(2100) && CivilDate.isLeap(2028) && !CivilDate.isLeap(2027))
    }

    @Test func civilDatesRoundTrip() {
        for day in stride(from: -800_000, through: 800_000, by: 997) {
            let (y, m, d) = CivilDate.fromDays(day)
            #expect(CivilDate.days(year: y, month: m, day: d) == day)
        }
        #expect(CivilDate.rfc3339(0) == "1970-01-01T00:00:00Z")
        #expect(CivilDate.rfc3339(milliseconds: 86_400_250) == "1970-01-02T00:00:00.250Z")
        #expect(CivilDate.rfc3339(milliseconds: -1) == "1969-12-31T23:59:59.999Z")
    }

    @Test func periodDays() {
        let p = BillingPeriod.containing(Timestamp.parse("2026-11-17T05:00:00Z")!, per: .month, anchor: 15)
        let days = p.days(through: Timestamp.parse("2026-11-17T05:00:00Z")!).map(CivilDate.isoDate)
        #expect(days == ["2026-11-15", "2026-11-16", "2026-11-17"])
    }

    // MARK: What a request charges

    static let yaml = """
        plans:
          free: {rate: {requests: 10, per: 1s, burst: 20}, quota: {requests: 1000, per: month}}
          ent: {quota: unlimited}
        tenants:
          acme: {plan: free, billing_anchor: 15}
          big: {plan: free, overrides: {rate: {requests: 5, per: 1s}, quota: unlimited}}
          e: {plan: ent}
        upstreams: {u: {targets: [127.0.0.1:1]}}
        routes:
          - {name: a, match: {path_prefix: /a}, upstream: u, rate_limits: [tenant, tenant_route, user, api_key]}
          - {name: b, match: {path_prefix: /b}, upstream: u}
        """

    @Test func chargesFollowRouteAndPlan() throws {
        let config = try load(["gw.yaml": Self.yaml]).get()
        var caller = Caller()
        caller.tenant = "acme"
        caller.user = "u1"
        let now = Timestamp.parse("2026-11-23T00:00:00Z")!
        let a = RatePolicy.charge(route: config.routes[0], caller: caller, record: config.tenants["acme"]!, config: config, now: now)!
        #expect(a.buckets.map(\.name) == ["t", "r:a", "u:u1"])  // no API key: no key bucket
        #expect(a.quotaLimit == 1000)
        #expect(CivilDate.rfc3339(a.period.start) == "2026-11-15T00:00:00Z")
        caller.credential = .apiKey(id: "k1")
        let withKey = RatePolicy.charge(route: config.routes[0], caller: caller, record: config.tenants["acme"]!, config: config, now: now)!
        #expect(withKey.buckets.map(\.name) == ["t", "r:a", "u:u1", "k:k1"])
        #expect(withKey.key != a.key)

        caller.tenant = "big"
        let big = RatePolicy.charge(route: config.routes[1], caller: caller, record: config.tenants["big"]!, config: config, now: now)!
        #expect(big.buckets.map(\.name) == ["t"])
        #expect(big.buckets[0].spec == BucketSpec(ratePerSecond: 5, burst: 5))
        #expect(big.quotaLimit == nil)

        caller.tenant = "e"
        let e = RatePolicy.charge(route: config.routes[1], caller: caller, record: config.tenants["e"]!, config: config, now: now)!
        #expect(e.buckets.isEmpty && e.quotaLimit == nil)
        #expect(RatePolicy.charge(route: config.routes[1], caller: Caller(), record: config.tenants["e"]!, config: config, now: now) == nil)
    }
}
