import Foundation
import Policy
import Testing

/// Live: signed Stripe-format events change tenants' plans and states; forged, stale and replayed ones do not.
@Suite(.serialized) struct BillingWebhookLiveTests {
    static let secret = "whsec_live_test_secret"

    static func config(upstream: Int) -> String {
        """
        server: {listen: 127.0.0.1:0, admin_listen: 127.0.0.1:0, threads: 1}
        identity: {header_tenancy: always}
        plans: {free: {features: [core]}, pro: {features: [core, analytics]}}
        plan_order: [free, pro]
        billing: {webhook_secret_env: GH_TEST_WEBHOOK_SECRET, grace_period: 7d, prices: {price_pro_monthly: pro}}
        tenants:
          acme: {plan: free}
        upstreams:
          app: {targets: [127.0.0.1:\(upstream)]}
        routes:
          - {name: analytics, match: {path_prefix: /analytics}, upstream: app, auth: none, min_plan: pro}
        """
    }

    func send(_ gw: GatewayProcess, _ event: String, t: Int = Int(Date().timeIntervalSince1970), secret: String = Self.secret) throws -> RawResponse {
        let mac = Digest.hex(Digest.hmacSHA256(key: Array(secret.utf8), message: Array("\(t).\(event)".utf8)))
        return try request(port: gw.adminPort!, "POST", "/webhooks/billing", headers: [("Stripe-Signature", "t=\(t),v1=\(mac)")], body: event)
    }

    @Test func eventsDriveTenantState() throws {
        let up = try TestUpstream()
        defer { up.stop() }
        let gw = try GatewayProcess(yaml: Self.config(upstream: up.port), environment: ["GH_TEST_WEBHOOK_SECRET": Self.secret])
        defer { gw.stop() }
        func analytics(_ tenant: String = "acme") throws -> RawResponse {
            try request(port: gw.port, "GET", "/analytics/x", headers: [("X-Tenant-ID", tenant)])
        }
        #expect(try analytics().status == 403)
        let upgrade = #"{"id":"evt_1","type":"customer.subscription.updated","data":{"object":{"status":"active","metadata":{"tenant_id":"acme"},"items":{"data":[{"price":{"id":"price_pro_monthly"}}]}}}}"#
        #expect(try send(gw, upgrade, secret: "wrong").status == 400)
        #expect(try send(gw, upgrade, t: Int(Date().timeIntervalSince1970) - 600).status == 400)
        #expect(try analytics().status == 403)
        #expect(try send(gw, upgrade).status == 200)
        #expect(try analytics().status == 200)
        let failed = #"{"id":"evt_2","type":"invoice.payment_failed","data":{"object":{"metadata":{"tenant_id":"acme"}}}}"#
        #expect(try send(gw, failed).status == 200)
        let late = try analytics()
        #expect(late.status == 200)
        #expect(late.header("Gatehouse-Billing") == "past_due")
        let paid = #"{"id":"evt_3","type":"invoice.paid","data":{"object":{"metadata":{"tenant_id":"acme"}}}}"#
        #expect(try send(gw, paid).status == 200)
        #expect(try analytics().header("Gatehouse-Billing") == nil)
        // A replayed event is acknowledged and ignored: evt_2 does not make the tenant past_due again.
        let replay = try send(gw, failed)
        #expect(replay.status == 200)
        #expect(replay.json["duplicate"] as? Bool == true)
        #expect(try analytics().header("Gatehouse-Billing") == nil)
        let deleted = #"{"id":"evt_4","type":"customer.subscription.deleted","data":{"object":{"metadata":{"tenant_id":"acme"}}}}"#
        #expect(try send(gw, deleted).status == 200)
        #expect(try analytics().json["code"] as? String == "tenant_cancelled")
        #expect(try send(gw, #"{"id":"evt_5","type":"charge.refunded","data":{"object":{}}}"#).status == 200)
        // A new customer's subscription creates its tenant; an ended trial needs payment.
        let trial = #"{"id":"evt_6","type":"customer.subscription.created","data":{"object":{"status":"trialing","trial_end":1600000000,"metadata":{"tenant_id":"newco"},"items":{"data":[{"price":{"id":"price_pro_monthly"}}]}}}}"#
        #expect(try send(gw, trial).status == 200)
        #expect(try analytics("newco").status == 402)
    }
}
