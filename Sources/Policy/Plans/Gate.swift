/// Plan, feature and subscription gating of a route for a resolved tenant (pure; the clock is passed in).
///
/// Subscription state first: `suspended` → 403 `tenant_suspended`, `cancelled` → 403 `tenant_cancelled`,
/// a trial past `trial_ends` or `past_due` beyond the grace period → 402 `payment_required` (within grace the
/// request passes, marked `Gatehouse-Billing: past_due`). Then the plan: below the route's `min_plan` (by
/// `plan_order`), or without the route's `feature` (`"*"` grants all) → 403 `plan_required` naming the
/// required and the current plan.
public enum Gate {
    public struct Outcome: Sendable, Equatable {
        /// Response headers to add (e.g. `Gatehouse-Billing: past_due`).
        public var responseHeaders: [(String, String)] = []
        /// The plan's body cap, when it is lower than the server's.
        public var maxBodyBytes: Int?

        public static func == (a: Outcome, b: Outcome) -> Bool {
            a.maxBodyBytes == b.maxBodyBytes && a.responseHeaders.elementsEqual(b.responseHeaders, by: { $0 == $1 })
        }
    }

    public static func check(
        route: RouteConfig, tenant: String, record: TenantRecord, config: GatewayConfig, now: Double
    ) -> Result<Outcome, Denial> {
        var outcome = Outcome()
        switch record.status {
        case "suspended":
            return .failure(.tenantSuspended("Tenant '\(tenant)' is suspended."))
        case "cancelled":
            return .failure(.tenantCancelled("Tenant '\(tenant)' has cancelled its subscription."))
        case "trialing":
            if let ends = record.trialEndsAt, now >= ends {
                return .failure(.paymentRequired("The trial of tenant '\(tenant)' has ended."))
            }
        case "past_due":
            let grace = Double(config.billing?.gracePeriod ?? 7 * 86_400_000_000_000) / 1e9
            if let since = record.pastDueSinceAt, now >= since + grace {
                return .failure(.paymentRequired("Tenant '\(tenant)' is past due beyond the grace period."))
            }
            outcome.responseHeaders.append(("Gatehouse-Billing", "past_due"))
        default:
            break
        }
        let plan = config.plans[record.plan]
        if let minPlan = route.minPlan {
            let have = config.planOrder.firstIndex(of: record.plan) ?? -1
            let need = config.planOrder.firstIndex(of: minPlan) ?? Int.max
            if have < need {
                return .failure(
                    .planRequired(
                        required: minPlan, current: record.plan,
                        "Route '\(route.name)' needs plan '\(minPlan)' or above; tenant '\(tenant)' is on '\(record.plan)'."))
            }
        }
        if let feature = route.feature {
            let features = plan?.features ?? []
            // The tenant's own features (`overrides.features`) add to the plan's.
            if !features.contains(feature) && !features.contains("*") && !record.featureOverrides.contains(feature) {
                let required =
                    config.planOrder.first { name in
                        let f = config.plans[name]?.features ?? []
                        return f.contains(feature) || f.contains("*")
                    } ?? feature
                return .failure(
                    .planRequired(
                        required: required, current: record.plan,
                        "Feature '\(feature)' is not in plan '\(record.plan)'."))
            }
        }
        if let cap = record.maxBodyBytes ?? plan?.maxBodyBytes { outcome.maxBodyBytes = cap }
        return .success(outcome)
    }
}
