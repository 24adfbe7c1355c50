/// What one request charges: the buckets its route lists, for its tenant, and the tenant's quota.
public struct Charge: Sendable {
    public struct Bucket: Sendable, Hashable {
        /// Distinguishes the bucket within the tenant: `t`, `r:<route>`, `u:<user>`, `k:<key id>`.
        public var name: String
        public var spec: BucketSpec
    }

    public var tenant: String
    public var plan: String
    public var buckets: [Bucket]
    /// The quota's limit in the current period; nil when unlimited (usage is still counted).
    public var quotaLimit: Int?
    public var period: BillingPeriod

    /// Names this combination of tenant, buckets, limits and period (leases are kept per key, so a changed
    /// plan or a new period starts afresh).
    public struct Key: Hashable, Sendable {
        let tenant: String
        let periodStart: Int
        let quotaLimit: Int?
        let buckets: [Bucket]
    }

    public var key: Key { Key(tenant: tenant, periodStart: period.start, quotaLimit: quotaLimit, buckets: buckets) }
}

/// Works out the ``Charge`` of a request from the route, the caller and the plan (pure).
public enum RatePolicy {
    /// Nil for a request without a tenant. Every tenant request is counted toward usage, even on an
    /// unlimited plan; buckets apply when the plan (or the tenant's override) has a rate.
    public static func charge(
        route: RouteConfig, caller: Caller, record: TenantRecord, config: GatewayConfig, now: Double
    ) -> Charge? {
        guard let tenant = caller.tenant else { return nil }
        let plan = config.plans[record.plan]
        var buckets: [Charge.Bucket] = []
        if let rate = record.rateOverride ?? plan?.rate {
            let spec = BucketSpec(rate)
            for kind in route.rateLimits {
                switch kind {
                case "tenant": buckets.append(.init(name: "t", spec: spec))
                case "tenant_route": buckets.append(.init(name: "r:" + route.name, spec: spec))
                case "user": if let user = caller.user { buckets.append(.init(name: "u:" + user, spec: spec)) }
                case "api_key":
                    if case .apiKey(let id) = caller.credential { buckets.append(.init(name: "k:" + id, spec: spec)) }
                default: break
                }
            }
        }
        let quota = record.quotaOverride ?? plan?.quota ?? .unlimited
        let limit: Int?
        let per: PlanConfig.QuotaPeriod
        switch quota {
        case .unlimited: (limit, per) = (nil, .month)
        case .limited(let requests, let p): (limit, per) = (requests, p)
        }
        let period = BillingPeriod.containing(now, per: per, anchor: record.billingAnchor)
        return Charge(tenant: tenant, plan: record.plan, buckets: buckets, quotaLimit: limit, period: period)
    }
}
