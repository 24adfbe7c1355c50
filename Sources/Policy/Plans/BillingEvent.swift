import Foundation

/// Stripe-compatible billing webhooks: signature check and event → tenant change (pure; the clock is passed in).
public enum BillingWebhook {
    public static let tolerance: Double = 300

    /// Checks a `Stripe-Signature` header (`t=…,v1=…[,v1=…]`): HMAC-SHA256(secret, "t.body") against any v1,
    /// in constant time, with `t` within five minutes of `now`.
    public static func verify(header: String, body: [UInt8], secret: [UInt8], now: Double) -> Bool {
        var timestamp: String? = nil
        var signatures: [[UInt8]] = []
        for part in header.split(separator: ",") {
            let kv = part.split(separator: "=", maxSplits: 1).map { $0.trimmingCharacters(in: .whitespaces) }
            guard kv.count == 2 else { continue }
            if kv[0] == "t" { timestamp = kv[1] }
            if kv[0] == "v1", let bytes = hexBytes(kv[1]) { signatures.append(bytes) }
        }
        guard let timestamp, let t = Double(timestamp), abs(now - t) <= tolerance, !signatures.isEmpty, !secret.isEmpty
        else { return false }
        let expected = Digest.hmacSHA256(key: secret, message: Array(timestamp.utf8) + [UInt8(ascii: ".")] + body)
        var ok = false
        for s in signatures where Digest.constantTimeEqual(s, expected) { ok = true }
        return ok
    }

    static func hexBytes(_ s: String) -> [UInt8]? {
        let u = Array(s.utf8)
        guard u.count % 2 == 0, u.count <= 128 else { return nil }
        var out: [UInt8] = []
        var i = 0
        while i < u.count {
            guard let hi = Digest.hexDigit(u[i]), let lo = Digest.hexDigit(u[i + 1]) else { return nil }
            out.append(hi << 4 | lo)
            i += 2
        }
        return out
    }

    /// What an event asks of a tenant record.
    public struct Change: Sendable, Equatable {
        public var eventID: String
        public var tenant: String
        public var plan: String?
        public var status: String?
        public var trialEnds: Double?
        /// The event's `created` (seconds since the epoch): a change older than the last one applied to the
        /// tenant is ignored.
        public var created: Double?

        public init(
            eventID: String, tenant: String, plan: String? = nil, status: String? = nil, trialEnds: Double? = nil,
            created: Double? = nil
        ) {
            self.eventID = eventID
            self.tenant = tenant
            self.plan = plan
            self.status = status
            self.trialEnds = trialEnds
            self.created = created
        }
    }

    public enum Parsed: Sendable, Equatable {
        case change(Change)
        /// Acknowledged and ignored (unknown type, or nothing to apply).
        case ignored(eventID: String, reason: String)
        case invalid(String)
    }

    /// Maps an event (SPEC): subscription created/updated set plan (by price id) and status; deleted cancels;
    /// invoice.payment_failed marks past_due; invoice.paid marks active. Tenant: data.object.metadata.tenant_id.
    /// An `incomplete` subscription changes nothing (no paid plan before the first payment); `incomplete_expired`
    /// cancels, `paused` suspends, and `trialing` takes `trial_end` (a trial without an end is not applied: it
    /// would never expire).
    public static func parse(_ body: [UInt8], prices: [String: String]) -> Parsed {
        guard let event = (try? JSONSerialization.jsonObject(with: Data(body))) as? [String: Any],
            let id = event["id"] as? String, let type = event["type"] as? String,
            let object = (event["data"] as? [String: Any])?["object"] as? [String: Any]
        else { return .invalid("not a billing event (id, type and data.object are required)") }
        let metadata =
            object["metadata"] as? [String: Any]
            ?? (object["subscription_details"] as? [String: Any])?["metadata"] as? [String: Any]
        guard let tenant = metadata?["tenant_id"] as? String else {
            return .ignored(eventID: id, reason: "no data.object.metadata.tenant_id")
        }
        guard TenantID.isValid(tenant) else { return .invalid("metadata.tenant_id is not a valid tenant id") }
        var change = Change(eventID: id, tenant: tenant, created: (event["created"] as? NSNumber)?.doubleValue)
        switch type {
        case "customer.subscription.created", "customer.subscription.updated":
            let items = ((object["items"] as? [String: Any])?["data"] as? [[String: Any]]) ?? []
            let priceID =
                (items.first?["price"] as? [String: Any])?["id"] as? String
                ?? (object["plan"] as? [String: Any])?["id"] as? String
            let status = object["status"] as? String
            if status == "incomplete" {
                return .ignored(eventID: id, reason: "the subscription is incomplete: nothing changes before the first payment")
            }
            if let priceID { change.plan = prices[priceID] }
            switch status {
            case "trialing":
                guard let end = object["trial_end"] as? NSNumber, !(object["trial_end"] is Bool) else {
                    return .ignored(eventID: id, reason: "a trialing subscription without trial_end")
                }
                change.status = "trialing"
                change.trialEnds = end.doubleValue
            case "active": change.status = "active"
            case "past_due": change.status = "past_due"
            case "canceled", "incomplete_expired": change.status = "cancelled"
            case "unpaid", "paused": change.status = "suspended"
            default: break
            }
            if change.plan == nil && change.status == nil {
                return .ignored(eventID: id, reason: "no known price or status")
            }
        case "customer.subscription.deleted":
            change.status = "cancelled"
        case "invoice.payment_failed":
            change.status = "past_due"
        case "invoice.paid":
            change.status = "active"
        default:
            return .ignored(eventID: id, reason: "event type \(type) is not handled")
        }
        return .change(change)
    }
}

extension TenantRecord {
    /// A billing change on this record: plan, status (a move to `past_due` starts the grace period at `now`;
    /// leaving it clears the date), trial end, and the event's time (the order later events are checked against).
    /// The Redis store applies the same rules inside its edit script (``RedisTenantStore``).
    public mutating func apply(_ change: BillingWebhook.Change, now: Double) {
        if let plan = change.plan { self.plan = plan }
        if let status = change.status {
            pastDueSinceAt = Self.pastDueSince(from: self, to: status, now: now)
            self.status = status
        }
        if let end = change.trialEnds {
            trialEndsAt = end
            trialEnds = CivilDate.rfc3339(epochSeconds: end)
        }
        if let created = change.created { billingEventAt = created }
    }

    /// When a tenant moving from `old` to `status` went past due: `now` for a move into `past_due`, the date it
    /// already had when it stays there, none otherwise (the admin API and billing events share this rule).
    public static func pastDueSince(from old: TenantRecord?, to status: String, now: Double) -> Double? {
        guard status == "past_due" else { return nil }
        guard let old, old.status == "past_due" else { return now }
        return old.pastDueSinceAt ?? now
    }
}
