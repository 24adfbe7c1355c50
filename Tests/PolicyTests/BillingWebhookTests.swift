import Foundation
import Testing

@testable import Policy

@Suite struct BillingWebhookTests {
    static let secret = Array("whsec_test".utf8)
    static let body = Array(#"{"id":"evt_1","type":"invoice.paid","data":{"object":{"metadata":{"tenant_id":"acme"}}}}"#.utf8)

    static func header(t: Int, body: [UInt8] = body, secret: [UInt8] = secret) -> String {
        let mac = Digest.hmacSHA256(key: secret, message: Array("\(t).".utf8) + body)
        return "t=\(t),v1=\(Digest.hex(mac))"
    }

    @Test func signatures() {
        let t = 1_800_000_000
        let now = Double(t)
        #expect(BillingWebhook.verify(header: Self.header(t: t), body: Self.body, secret: Self.secret, now: now))
        #expect(BillingWebhook.verify(header: "t=\(t),v1=00,v1=" + Self.header(t: t).split(separator: "=").last!, body: Self.body, secret: Self.secret, now: now))
        #expect(BillingWebhook.verify(header: Self.header(t: t), body: Self.body, secret: Self.secret, now: now + 300))
        #expect(!BillingWebhook.verify(header: Self.header(t: t), body: Self.body, secret: Self.secret, now: now + 301))
        #expect(!BillingWebhook.verify(header: Self.header(t: t), body: Self.body + [32], secret: Self.secret, now: now))
        #expect(!BillingWebhook.verify(header: Self.header(t: t, secret: Array("other".utf8)), body: Self.body, secret: Self.secret, now: now))
        #expect(!BillingWebhook.verify(header: "v1=abcd", body: Self.body, secret: Self.secret, now: now))
        #expect(!BillingWebhook.verify(header: Self.header(t: t), body: Self.body, secret: [], now: now))
    }

    @Test func mapping() {
        let prices = ["price_pro": "pro"]
        func parse(_ type: String, _ object: String) -> BillingWebhook.Parsed {
            BillingWebhook.parse(Array(#"{"id":"e","type":"\#(type)","data":{"object":\#(object)}}"#.utf8), prices: prices)
        }
        let meta = #""metadata":{"tenant_id":"acme"}"#
        #expect(parse("customer.subscription.updated", #"{\#(meta),"status":"active","items":{"data":[{"price":{"id":"price_pro"}}]}}"#)
            == .change(.init(eventID: "e", tenant: "acme", plan: "pro", status: "active", trialEnds: nil)))
        #expect(parse("customer.subscription.updated", #"{\#(meta),"status":"canceled"}"#)
            == .change(.init(eventID: "e", tenant: "acme", plan: nil, status: "cancelled", trialEnds: nil)))
        #expect(parse("customer.subscription.created", #"{\#(meta),"status":"unpaid"}"#)
            == .change(.init(eventID: "e", tenant: "acme", plan: nil, status: "suspended", trialEnds: nil)))
        #expect(parse("customer.subscription.created", #"{\#(meta),"status":"trialing","trial_end":1800000000}"#)
            == .change(.init(eventID: "e", tenant: "acme", plan: nil, status: "trialing", trialEnds: 1_800_000_000)))
        #expect(parse("customer.subscription.deleted", "{\(meta)}") == .change(.init(eventID: "e", tenant: "acme", status: "cancelled")))
        #expect(parse("invoice.payment_failed", "{\(meta)}") == .change(.init(eventID: "e", tenant: "acme", status: "past_due")))
        #expect(parse("invoice.paid", "{\(meta)}") == .change(.init(eventID: "e", tenant: "acme", status: "active")))
        // No paid plan before the first payment: an incomplete subscription changes nothing, its price included.
        if case .ignored = parse("customer.subscription.created", #"{\#(meta),"status":"incomplete","items":{"data":[{"price":{"id":"price_pro"}}]}}"#) {
        } else { Issue.record("an incomplete subscription must change nothing") }
        #expect(parse("customer.subscription.updated", #"{\#(meta),"status":"incomplete_expired"}"#)
            == .change(.init(eventID: "e", tenant: "acme", status: "cancelled")))
        #expect(parse("customer.subscription.updated", #"{\#(meta),"status":"paused"}"#)
            == .change(.init(eventID: "e", tenant: "acme", status: "suspended")))
        // A trial without an end would never expire: not applied.
        if case .ignored = parse("customer.subscription.created", #"{\#(meta),"status":"trialing"}"#) {
        } else { Issue.record("a trial without trial_end must not be applied") }
        if case .ignored = parse("charge.refunded", "{\(meta)}") {} else { Issue.record("unknown types are ignored") }
        if case .invalid = parse("invoice.paid", #"{"metadata":{"tenant_id":"a b"}}"#) {} else { Issue.record("bad tenant id") }
    }

    @Test func eventTimeIsCarriedForOrdering() {
        let body = #"{"id":"e","created":1800000123,"type":"invoice.paid","data":{"object":{"metadata":{"tenant_id":"acme"}}}}"#
        #expect(BillingWebhook.parse(Array(body.utf8), prices: [:])
            == .change(.init(eventID: "e", tenant: "acme", status: "active", created: 1_800_000_123)))
    }

    /// One rule for the admin API and billing events: a move into past_due starts the grace period now, staying
    /// keeps the date (or starts it, when there was none: a past_due seed without past_due_since), leaving clears it.
    @Test func pastDueSinceRule() {
        var active = TenantRecord(plan: "pro")
        #expect(TenantRecord.pastDueSince(from: nil, to: "past_due", now: 100) == 100)
        #expect(TenantRecord.pastDueSince(from: active, to: "past_due", now: 100) == 100)
        var late = active
        late.status = "past_due"
        #expect(TenantRecord.pastDueSince(from: late, to: "past_due", now: 100) == 100, "no date yet: it starts now")
        late.pastDueSinceAt = 40
        #expect(TenantRecord.pastDueSince(from: late, to: "past_due", now: 100) == 40)
        #expect(TenantRecord.pastDueSince(from: late, to: "active", now: 100) == nil)
        late.apply(.init(eventID: "e", tenant: "t", status: "past_due"), now: 100)
        #expect(late.pastDueSinceAt == 40)
        active.apply(.init(eventID: "e", tenant: "t", status: "past_due", created: 7), now: 100)
        #expect(active.pastDueSinceAt == 100 && active.status == "past_due" && active.billingEventAt == 7)
    }
}
