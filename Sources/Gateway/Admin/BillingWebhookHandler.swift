import Foundation
import NIOCore
import Policy

/// `POST /webhooks/billing` (on the admin listener, and at `billing.webhook_path` on the proxy listener):
/// Stripe-format events, signature-checked, replays ignored by event id, each change applied by the store in one
/// atomic step (so every instance sees it and concurrent events cannot undo each other); an event older than the
/// last one applied to the tenant, or for a deleted tenant, is acknowledged and ignored.
struct BillingWebhookHandler: Sendable {
    /// The answer: a JSON acknowledgement, or a refusal (a problem document).
    enum Answer {
        case acknowledged(String)
        case refused(Denial)
    }

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
        let store = self.store
        return store.remember(eventID: change.eventID).flatMap { first -> EventLoopFuture<Answer> in
            guard first else { return acknowledge(",\"duplicate\":true") }
            return store.applyBilling(change.tenant, change, now: now).map { write -> Answer in
                switch write {
                case .applied: .acknowledged("{\"received\":true}")
                case .stale: .acknowledged("{\"received\":true,\"ignored\":\"older than the last event applied to this tenant\"}")
                case .deleted: .acknowledged("{\"received\":true,\"ignored\":\"the tenant was deleted (a PUT brings it back)\"}")
                case .unknown: .acknowledged("{\"received\":true,\"ignored\":\"unknown tenant and no known price\"}")
                }
            }.flatMapErrorThrowing { error in
                store.forget(eventID: change.eventID)
                throw error
            }
        }.flatMapErrorThrowing { _ in .refused(.storeUnavailable()) }
    }
}
