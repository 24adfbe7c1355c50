import Foundation
import Testing

/// Live: plan, feature and subscription gating from the tenant records; denials never reach the upstream.
@Suite(.serialized) struct GatingTests {
    static func config(upstream: Int) -> String {
        """
        server: {listen: 127.0.0.1:0, threads: 1}
        identity: {header_tenancy: always}
        plans:
          free: {features: [core], max_body_bytes: 64}
          pro: {features: [core, analytics]}
        plan_order: [free, pro]
        billing: {grace_period: 7d}
        tenants:
          freeco: {plan: free}
          proco: {plan: pro}
          trialco: {plan: pro, status: trialing, trial_ends: 2020-01-01T00:00:00Z}
          lateco: {plan: pro, status: past_due, past_due_since: 2999-01-01T00:00:00Z}
          overdue: {plan: pro, status: past_due, past_due_since: 2020-01-01T00:00:00Z}
          susco: {plan: pro, status: suspended}
          goneco: {plan: pro, status: cancelled}
        upstreams:
          app: {targets: [127.0.0.1:\(upstream)]}
        routes:
          - {name: analytics, match: {path_prefix: /analytics}, upstream: app, auth: none, min_plan: pro, feature: analytics}
          - {name: core, match: {path_prefix: /core}, upstream: app, auth: none}
        """
    }

    @Test func gatingDecisions() throws {
        let up = try TestUpstream()
        defer { up.stop() }
        let gw = try GatewayProcess(yaml: Self.config(upstream: up.port))
        defer { gw.stop() }
        func call(_ tenant: String, _ path: String = "/analytics/x", body: String? = nil) throws -> RawResponse {
            try request(port: gw.port, body == nil ? "GET" : "POST", path, headers: [("X-Tenant-ID", tenant)], body: body)
        }
        let free = try call("freeco")
        #expect(free.status == 403)
        #expect(free.json["code"] as? String == "plan_required")
        #expect(free.json["required"] as? String == "pro")
        #expect(free.json["current"] as? String == "free")
        #expect(try call("susco").json["code"] as? String == "tenant_suspended")
        #expect(try call("goneco").json["code"] as? String == "tenant_cancelled")
        let trial = try call("trialco")
        #expect(trial.status == 402)
        #expect(trial.json["code"] as? String == "payment_required")
        #expect(try call("overdue").status == 402)
        #expect(up.requests.isEmpty)
        let late = try call("lateco")
        #expect(late.status == 200)
        #expect(late.header("Gatehouse-Billing") == "past_due")
        let pro = try call("proco")
        #expect(pro.status == 200)
        #expect(pro.header("Gatehouse-Billing") == nil)
        #expect(up.requests.last?.headers("x-plan") == ["pro"])
        // The plan's body cap is lower than the server's.
        let big = try call("freeco", "/core/x", body: String(repeating: "b", count: 100))
        #expect(big.status == 413)
        #expect(try call("freeco", "/core/x", body: String(repeating: "b", count: 64)).status == 200)
        // A gated route with no tenant at all.
        let anonymous = try request(port: gw.port, "GET", "/analytics/x")
        #expect(anonymous.json["code"] as? String == "tenant_required")
    }
}
