import NIOCore
import NIOHTTP1
import Policy
import Upstream

/// One request/response exchange on a client connection: the per-request context every phase reads and
/// writes (route, upstream choice, body progress, response framing).
final class Exchange {
    enum ResponseState {
        /// Nothing written to the client yet.
        case pending
        /// A response head went out; the body is framed as given.
        case streaming(Framing)
        /// The response is complete.
        case done
    }

    enum Framing {
        case none, contentLength, chunked, closeDelimited
    }

    let requestID: String
    let start: NIODeadline
    let head: HTTPRequestHead
    var keepAlive: Bool
    var caller = Caller()
    /// Headers the gateway adds to the client's response (e.g. `Gatehouse-Billing: past_due`).
    var responseHeaders: [(String, String)] = []
    var routeName = "-"
    var upstreamName = "-"
    var framing: HeaderRewriter.BodyFraming = .none
    var bodyLimit = Int.max
    var bodyBytes = 0

    var group: UpstreamGroup?
    var pool: TargetPool?
    var connection: UpstreamConnection?
    var upstreamHead: HTTPRequestHead?
    var upstreamStart: NIODeadline?
    var connecting = false
    /// Waiting for the rate limiter's decision (nothing is sent upstream meanwhile).
    var awaitingAdmission = false
    var expectContinue = false
    /// The tenant's plan, for metrics; and whether the local fallback bucket admitted the request.
    var plan = "-"
    var failOpen = false
    /// A place in the audit queue is held for this request's record; the record was written.
    var auditReserved = false
    var audited = false
    var attempts = 0
    var buffered: [ByteBuffer] = []
    var bufferedBytes = 0

    /// The client's request (head, body and end) has been read completely.
    var requestEnded = false
    var response: ResponseState = .pending
    var status = 0
    var decision = "allow"
    var code = ""

    init(requestID: String, head: HTTPRequestHead, start: NIODeadline) {
        self.requestID = requestID
        self.head = head
        self.start = start
        self.keepAlive = head.isKeepAlive
    }

    var responseStarted: Bool {
        if case .pending = response { return false }
        return true
    }

    var responseDone: Bool {
        if case .done = response { return true }
        return false
    }

    /// Retrying is safe when nothing reached the upstream, or the method is idempotent and has no body.
    func mayRetry(after error: UpstreamError, retries: Int) -> Bool {
        guard attempts <= retries, !responseStarted else { return false }
        if error.nothingSent { return true }
        let idempotent: Bool
        switch head.method {
        case .GET, .HEAD, .OPTIONS, .PUT, .DELETE, .TRACE: idempotent = true
        default: idempotent = false
        }
        return idempotent && framing == .none && !error.isTimeout
    }
}

@available(*, unavailable)
extension Exchange: Sendable {}
