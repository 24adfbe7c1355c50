import Testing

@testable import Policy

/// `overrides.features`: parsed from a seed, validated, and added to the plan's features by the gate (pure).
struct FeatureOverrideTests {
    let yaml = """
        plans: {free: {features: [core]}, pro: {features: [core, analytics]}}
        plan_order: [free, pro]
        tenants:
          acme: {plan: free, overrides: {features: [analytics, "beta:search"]}}
          globex: {plan: free}
        upstreams: {app: {targets: [127.0.0.1:9001]}}
        routes:
          - {name: a, match: {path_prefix: /a}, upstream: app, feature: analytics}
        """

    @Test func aTenantsFeaturesAddToItsPlans() throws {
        let config = try load(["gw.yaml": yaml]).get()
        #expect(config.tenants["acme"]?.featureOverrides == ["analytics", "beta:search"])
        let route = config.routes[0]
        let now = 1_800_000_000.0
        #expect((try? Gate.check(route: route, tenant: "acme", record: config.tenants["acme"]!, config: config, now: now).get()) != nil)
        guard case .failure(let denial) = Gate.check(route: route, tenant: "globex", record: config.tenants["globex"]!, config: config, now: now)
        else {
            Issue.record("globex has no analytics")
            return
        }
        #expect(denial.code == "plan_required")
    }

    @Test func aBadFeatureNameIsReportedWhereItIs() {
        let bad = yaml.replacingOccurrences(of: #""beta:search""#, with: #""beta search""#)
        #expect(problems(["gw.yaml": bad]).contains { $0.contains("'beta search' is not a feature name") })
    }
}
