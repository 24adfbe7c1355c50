import Foundation
import NIOCore
import Policy

/// `POST /webhooks/billing`: Stripe-format events, signature-checked, replays ignored by event id, applied to
/// tenant records through the store (so every instance sees them).
struct BillingWebhookHandler {
    let tenants: TenantDirectory
    let store: any TenantStore
    let config: GatewayConfig
    let eventLoop: EventLoop
    /// Checks the signature's timestamp tolerance and dates a move to `past_due`.
    let clock: WallClock

    func handle(signature: String?, body: [UInt8], requestID: String) -> EventLoopFuture<AdminAPI.Response> {
        let eventLoop = self.eventLoop
        @Sendable func answer(_ status: Int, _ body: String) -> EventLoopFuture<AdminAPI.Response> {
            eventLoop.makeSucceededFuture(AdminAPI.Response(status: status, body: body))
        }
        func refuse(_ denial: Denial) -> EventLoopFuture<AdminAPI.Response> {
            eventLoop.makeSucceededFuture(
                AdminAPI.Response(status: denial.status, contentType: "application/problem+json", body: denial.document(requestID: requestID)))
        }
        guard let env = config.billing?.webhookSecretEnv, let secret = ProcessInfo.processInfo.environment[env], !secret.isEmpty
        else { return refuse(.serviceUnavailable("The billing webhook is not configured (billing.webhook_secret_env).")) }
        let now = clock.now()
        guard let signature, BillingWebhook.verify(header: signature, body: body, secret: Array(secret.utf8), now: now) else {
            return refuse(.badRequest("Missing or invalid Stripe-Signature (or a timestamp outside the 5-minute tolerance)."))
        }
        let change: BillingWebhook.Change
        switch BillingWebhook.parse(body, prices: config.billing?.prices ?? [:]) {
        case .invalid(let why): return refuse(.badRequest(why))
        case .ignored(_, let why): return answer(200, "{\"received\":true,\"ignored\":\(JSONText.quote(why))}")
        case .change(let c): change = c
        }
        return store.remember(eventID: change.eventID).flatMap { first in
            guard first else { return answer(200, "{\"received\":true,\"duplicate\":true}") }
            let existing = tenants.record(change.tenant)
            guard var record = existing ?? change.plan.map({ TenantRecord(plan: $0) }) else {
                return answer(200, "{\"received\":true,\"ignored\":\"unknown tenant and no known price\"}")
            }
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
            return store.put(change.tenant, record).map { _ in
                AdminAPI.Response(status: 200, body: "{\"received\":true}")
            }.flatMapErrorThrowing { error in
                store.forget(eventID: change.eventID)
                throw error
            }
        }.flatMapErrorThrowing { _ in
            AdminAPI.Response(
                status: 503, contentType: "application/problem+json",
                body: Denial.storeUnavailable().document(requestID: requestID))
        }
    }
}
