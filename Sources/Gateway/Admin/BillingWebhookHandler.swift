import Foundation
import NIOCore
import Policy

/// `POST /webhooks/billing` (on the admin listener, and at `billing.webhook_path` on the proxy listener):
/// Stripe-format events, signature-checked, replays ignored by event id, events older than the last one applied
/// to the tenant ignored, changes applied to tenant records through the store (so every instance sees them).
struct BillingWebhookHandler: Sendable {
    /// The answer: a JSON acknowledgement, or a refusal (a problem document).
    enum Answer {
        case acknowledged(String)
        case refused(Denial)
    }

    let tenants: TenantDirectory
    let store: any TenantStore
    /// Checks the signature's timestamp tolerance and dates a move to `past_due`.
    let clock: WallClock

    /// Events are at most this large (Stripe's are a few KiB).
    static let maxBody = 64 * 1024

    func handle(signature: String?, body: [UInt8], config: GatewayConfig, on eventLoop: EventLoop) -> EventLoopFuture<Answer> {
        @Sendable func acknowledge(_ extra: String = "") -> EventLoopFuture<Answer> {
            eventLoop.makeSucceededFuture(.acknowledged("{\"received\":true\(extra)}"))
        }
        func refuse(_ denial: Denial) -> EventLoopFuture<Answer> { eventLoop.makeSucceededFuture(.refused(denial)) }
        guard let env = config.billing?.webhookSecretEnv, let secret = ProcessInfo.processInfo.environment[env], !secret.isEmpty
        else { return refuse(.serviceUnavailable("The billing webhook is not configured (billing.webhook_secret_env).")) }
        let now = clock.now()
        guard let signature, BillingWebhook.verify(header: signature, body: body, secret: Array(secret.utf8), now: now) else {
            return refuse(.badRequest("Missing or invalid Stripe-Signature (or a timestamp outside the 5-minute tolerance)."))
        }
        let change: BillingWebhook.Change
        switch BillingWebhook.parse(body, prices: config.billing?.prices ?? [:]) {
        case .invalid(let why): return refuse(.badRequest(why))
        case .ignored(_, let why): return acknowledge(",\"ignored\":\(JSONText.quote(why))")
        case .change(let c): change = c
        }
        let tenants = self.tenants
        let store = self.store
        return store.remember(eventID: change.eventID).flatMap { first -> EventLoopFuture<Answer> in
            guard first else { return acknowledge(",\"duplicate\":true") }
            let existing = tenants.record(change.tenant)
            if let at = change.created, let last = existing?.billingEventAt, at < last {
                return acknowledge(",\"ignored\":\"older than the last event applied to this tenant\"")
            }
            guard var record = existing ?? change.plan.map({ TenantRecord(plan: $0) }) else {
                return acknowledge(",\"ignored\":\"unknown tenant and no known price\"")
            }
            Self.apply(change, to: &record, now: now)
            return store.put(change.tenant, record).map { write -> Answer in
                write == .stale
                    ? .acknowledged("{\"received\":true,\"ignored\":\"older than the last event applied to this tenant\"}")
                    : .acknowledged("{\"received\":true}")
            }.flatMapErrorThrowing { error in
                store.forget(eventID: change.eventID)
                throw error
            }
        }.flatMapErrorThrowing { _ in .refused(.storeUnavailable()) }
    }

    /// The change on a record: plan, status (a move to `past_due` starts the grace period), trial end, and the
    /// event's time (the order later events are checked against).
    static func apply(_ change: BillingWebhook.Change, to record: inout TenantRecord, now: Double) {
        if let plan = change.plan { record.plan = plan }
        if let status = change.status {
            if status == "past_due" && record.status != "past_due" { record.pastDueSinceAt = now }
            if status != "past_due" { record.pastDueSinceAt = nil }
            record.status = status
        }
        if let end = change.trialEnds {
            record.trialEndsAt = end
            record.trialEnds = CivilDate.rfc3339(milliseconds: Int64((end * 1000).rounded(.down)))
        }
        if let created = change.created { record.billingEventAt = created }
    }
}
