import Testing

@testable import Policy

/// Plan and subscription gating with an injected clock.
@Suite struct GateTests {
    static let yaml = """
        plans:
          free: {features: [core], max_body_bytes: 1KiB}
          pro: {features: [core, analytics]}
          enterprise: {features: ["*"]}
        plan_order: [free, pro, enterprise]
        billing: {grace_period: 7d}
        tenants:
          f: {plan: free}
          p: {plan: pro}
          e: {plan: enterprise}
          trial: {plan: pro, status: trialing, trial_ends: 2026-12-31T00:00:00Z}
          late: {plan: pro, status: past_due, past_due_since: 2026-12-01T00:00:00Z}
          sus: {plan: pro, status: suspended}
          gone: {plan: pro, status: cancelled}
        upstreams: {u: {targets: [127.0.0.1:1]}}
        routes:
          - {name: analytics, match: {path_prefix: /a}, upstream: u, min_plan: pro, feature: analytics}
          - {name: open, match: {path_prefix: /o}, upstream: u}
        """

    static let config = try! load(["gw.yaml": yaml]).get()
    static let dec1 = Timestamp.parse("2026-12-01T00:00:00Z")!

    func check(_ tenant: String, route: Int = 0, now: Double = GateTests.dec1) -> Result<Gate.Outcome, Denial> {
        Gate.check(route: Self.config.routes[route], tenant: tenant, record: Self.config.tenants[tenant]!, config: Self.config, now: now)
    }

    func code(_ r: Result<Gate.Outcome, Denial>) -> String? {
        if case .failure(let d) = r { return d.code }
        return nil
    }

    @Test func plansAndFeatures() throws {
        let denial = try #require(check("f").failureValue)
        #expect(denial.code == "plan_required")
        #expect(denial.status == 403)
        #expect(denial.extensions.first { $0.0 == "required" }?.1 == "pro")
        #expect(denial.extensions.first { $0.0 == "current" }?.1 == "free")
        #expect(code(check("p")) == nil)
        #expect(code(check("e")) == nil)  // "*" grants every feature
        #expect(try check("f", route: 1).get().maxBodyBytes == 1024)
    }

    @Test func subscriptionStates() throws {
        #expect(code(check("sus")) == "tenant_suspended")
        #expect(code(check("gone")) == "tenant_cancelled")
        let trialEnd = Timestamp.parse("2026-12-31T00:00:00Z")!
        #expect(code(check("trial", now: trialEnd - 1)) == nil)
        #expect(code(check("trial", now: trialEnd)) == "payment_required")
        let within = try check("late", now: Self.dec1 + 6 * 86400).get()
        #expect(within.responseHeaders.first?.0 == "Gatehouse-Billing")
        #expect(within.responseHeaders.first?.1 == "past_due")
        #expect(code(check("late", now: Self.dec1 + 7 * 86400)) == "payment_required")
        #expect(try #require(check("late", now: Self.dec1 + 8 * 86400).failureValue).status == 402)
    }

    @Test func timestamps() {
        #expect(Timestamp.parse("1970-01-01T00:00:00Z") == 0)
        #expect(Timestamp.parse("2000-03-01T00:00:00Z") == 951_868_800)
        #expect(Timestamp.parse("2024-02-29T12:30:15.5Z") == 1_709_209_815.5)
        #expect(Timestamp.parse("2026-12-31T01:00:00+01:00") == Timestamp.parse("2026-12-31T00:00:00Z"))
        for bad in ["2026-12-31", "2026-13-01T00:00:00Z", "2026-12-31T00:00:00", "2026-12-31T00:00:00Zjunk", "x"] {
            #expect(Timestamp.parse(bad) == nil, "\(bad)")
        }
    }

    @Test func badTimestampsAreConfigErrors() {
        let yaml = "plans: {free: {}}\ntenants:\n  t: {plan: free, status: trialing, trial_ends: soon}\nroutes: []\n"
        #expect(problems(["gw.yaml": yaml]).first?.hasPrefix("gw.yaml:3:49: trial_ends must be an RFC 3339 timestamp") == true)
    }
}

extension Result {
    var failureValue: Failure? {
        if case .failure(let f) = self { return f }
        return nil
    }
}
