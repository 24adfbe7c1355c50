import Foundation
import Policy
import Testing

/// Live: signed Stripe-format events change tenants' plans and states; forged, stale and replayed ones do not.
@Suite(.serialized) struct BillingWebhookLiveTests {
    static let secret = "whsec_live_test_secret"

    static func config(upstream: Int) -> String {
        """
        server: {listen: 127.0.0.1:0, admin_listen: 127.0.0.1:0, admin_token_env: GH_TEST_ADMIN_TOKEN, threads: 1}
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

    static func signature(_ event: String, t: Int = Int(Date().timeIntervalSince1970), secret: String = Self.secret) -> (String, String) {
        let mac = Digest.hex(Digest.hmacSHA256(key: Array(secret.utf8), message: Array("\(t).\(event)".utf8)))
        return ("Stripe-Signature", "t=\(t),v1=\(mac)")
    }

    func send(_ gw: GatewayProcess, _ event: String, t: Int = Int(Date().timeIntervalSince1970), secret: String = Self.secret) throws -> RawResponse {
        try request(port: gw.adminPort!, "POST", "/webhooks/billing", headers: [Self.signature(event, t: t, secret: secret)], body: event)
    }

    static func subscription(
        _ id: String, _ type: String = "customer.subscription.updated", created: Int, status: String, tenant: String = "acme",
        extra: String = ""
    ) -> String {
        #"{"id":"\#(id)","created":\#(created),"type":"\#(type)","data":{"object":{"status":"\#(status)","metadata":{"tenant_id":"\#(tenant)"},"items":{"data":[{"price":{"id":"price_pro_monthly"}}]}\#(extra)}}}"#
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

    @Test func subscriptionStatesFollowTheSpecAndOlderEventsAreIgnored() throws {
        let up = try TestUpstream()
        defer { up.stop() }
        let gw = try GatewayProcess(
            yaml: Self.config(upstream: up.port), environment: ["GH_TEST_WEBHOOK_SECRET": Self.secret, "GH_TEST_ADMIN_TOKEN": "adm"])
        defer { gw.stop() }
        func analytics(_ tenant: String = "acme") throws -> RawResponse {
            try request(port: gw.port, "GET", "/analytics/x", headers: [("X-Tenant-ID", tenant)])
        }
        func record(_ tenant: String) throws -> RawResponse {
            try request(port: gw.adminPort!, "GET", "/admin/tenants/\(tenant)", headers: [("Authorization", "Bearer adm")])
        }
        let t0 = 1_900_000_000
        // No paid plan before the first payment: an incomplete subscription with a paid price changes nothing.
        let incomplete = try send(gw, Self.subscription("evt_a", "customer.subscription.created", created: t0, status: "incomplete"))
        #expect(incomplete.status == 200)
        #expect(incomplete.json["ignored"] is String)
        #expect(try analytics().json["code"] as? String == "plan_required")
        #expect(try send(gw, Self.subscription("evt_b", created: t0 + 10, status: "active")).status == 200)
        #expect(try analytics().status == 200)
        // Events arrive out of order: an older one is acknowledged and ignored.
        let older = #"{"id":"evt_c","created":\#(t0 + 5),"type":"invoice.payment_failed","data":{"object":{"metadata":{"tenant_id":"acme"}}}}"#
        let stale = try send(gw, older)
        #expect(stale.status == 200)
        #expect(stale.json["ignored"] is String)
        let still = try analytics()
        #expect(still.status == 200)
        #expect(still.header("Gatehouse-Billing") == nil)
        // paused suspends; incomplete_expired cancels.
        #expect(try send(gw, Self.subscription("evt_d", created: t0 + 20, status: "paused")).status == 200)
        #expect(try analytics().json["code"] as? String == "tenant_suspended")
        #expect(try send(gw, Self.subscription("evt_e", created: t0 + 30, status: "incomplete_expired")).status == 200)
        #expect(try analytics().json["code"] as? String == "tenant_cancelled")
        // trialing takes trial_ends from trial_end.
        let trialEnd = Int(Date().timeIntervalSince1970) + 86_400
        let trial = Self.subscription("evt_f", created: t0 + 40, status: "trialing", extra: #","trial_end":\#(trialEnd)"#)
        #expect(try send(gw, trial).status == 200)
        #expect(try analytics().status == 200)
        let trialing = try record("acme")
        #expect(trialing.json["status"] as? String == "trialing")
        #expect((trialing.json["trial_ends"] as? String).flatMap(Timestamp.parse) == Double(trialEnd))
        #expect(up.requests.filter { $0.uri == "/analytics/x" }.count == 3)
        // A deleted tenant is not brought back by an event (only a PUT does that).
        let auth = [("Authorization", "Bearer adm")]
        #expect(try request(port: gw.adminPort!, "DELETE", "/admin/tenants/acme", headers: auth).status == 204)
        let revive = try send(gw, Self.subscription("evt_g", created: t0 + 50, status: "active"))
        #expect(revive.json["ignored"] is String)
        #expect(try record("acme").status == 404)
        #expect(try analytics().json["code"] as? String == "unknown_tenant")
    }

    /// `billing.webhook_path` serves the webhook on the proxy listener (no admin listener at all here); it is
    /// answered by the gateway, never forwarded, and keeps its own limits.
    @Test func theWebhookOnTheProxyListener() throws {
        let up = try TestUpstream()
        defer { up.stop() }
        let yaml = """
            server: {listen: 127.0.0.1:0, threads: 1}
            identity: {header_tenancy: always}
            plans: {free: {features: [core]}, pro: {features: [core, analytics]}}
            plan_order: [free, pro]
            billing: {webhook_secret_env: GH_TEST_WEBHOOK_SECRET, webhook_path: /hooks/billing, prices: {price_pro_monthly: pro}}
            tenants:
              acme: {plan: free}
            upstreams:
              app: {targets: [127.0.0.1:\(up.port)]}
            routes:
              - {name: analytics, match: {path_prefix: /analytics}, upstream: app, auth: none, min_plan: pro}
              - {name: all, match: {path_prefix: /}, upstream: app, auth: none}
            """
        let gw = try GatewayProcess(yaml: yaml, environment: ["GH_TEST_WEBHOOK_SECRET": Self.secret])
        defer { gw.stop() }
        #expect(gw.adminPort == nil)
        let event = Self.subscription("evt_p1", created: 1_900_000_000, status: "active")
        let forged = try request(port: gw.port, "POST", "/hooks/billing", headers: [Self.signature(event, secret: "wrong")], body: event)
        #expect(forged.status == 400)
        #expect(forged.json["code"] as? String == "bad_request")
        let tooLarge = try request(
            port: gw.port, "POST", "/hooks/billing", headers: [Self.signature(event)], body: String(repeating: " ", count: 70_000))
        #expect(tooLarge.status == 413)
        #expect(tooLarge.json["code"] as? String == "payload_too_large")
        // Keep-alive: the answer leaves the connection open for the next request.
        let conn = try RawConnection(port: gw.port)
        let (name, value) = Self.signature(event)
        try conn.send("POST /hooks/billing HTTP/1.1\r\nHost: x\r\n\(name): \(value)\r\nContent-Length: \(event.utf8.count)\r\n\r\n\(event)")
        let applied = try #require(try conn.readResponse())
        #expect(applied.status == 200)
        #expect(applied.json["received"] as? Bool == true)
        #expect(applied.header("X-Request-ID") != nil)
        try conn.send("GET /analytics/x HTTP/1.1\r\nHost: x\r\nX-Tenant-ID: acme\r\n\r\n")
        #expect(try conn.readResponse()?.status == 200)
        // Chunked, the same event is a replay.
        let chunked = "\(String(event.utf8.count, radix: 16))\r\n\(event)\r\n0\r\n\r\n"
        try conn.send("POST /hooks/billing HTTP/1.1\r\nHost: x\r\n\(name): \(value)\r\nTransfer-Encoding: chunked\r\n\r\n\(chunked)")
        #expect(try conn.readResponse()?.json["duplicate"] as? Bool == true)
        // Only the analytics request reached the upstream; other methods on the path are routed as usual.
        #expect(up.requests.map(\.uri) == ["/analytics/x"])
        #expect(try request(port: gw.port, "GET", "/hooks/billing").status == 200)
        #expect(up.requests.last?.uri == "/hooks/billing")
    }
}
