import HTTPWire
import NIOCore
import NIOHTTP1
import Policy
import Upstream

/// What the phases of one request read and write: the request, what each phase decided, and the upstream it
/// was given. Lifecycle (what has been sent and answered, how it ends) is not here: it is the
/// ``ClientConnectionStateMachine``'s.
final class RequestContext {
    /// The phases, in the order the request walks them (``RequestPhases``).
    enum Phase: Int {
        case validate, route, authenticate, gate, charge, admitTunnel, reserveAudit, forward
    }

    let requestID: String
    let start: NIODeadline
    let head: HTTPRequestHead
    /// How the parser framed the body (or why it refused to); `validate` turns it into ``framing`` or a 400.
    let parsedFraming: HTTP1Framing.Decision
    /// Its place among the connection's requests (0-based); -1 for input that never became a request.
    var ordinal = -1
    var phase: Phase = .validate
    /// Set by `validate`.
    var framing: HeaderRewriter.BodyFraming = .none
    var host: String?
    var path: Substring = ""
    var query: Substring = ""
    var expectContinue = false
    /// The client's address (through trusted proxies; nil until validated: the peer's then) and whether the
    /// peer is a trusted proxy.
    var clientAddress: String?
    var peerTrusted = false
    /// The token named a `kid` its issuer's key set lacked, and the set was fetched again for it (once).
    var keysRefetched = false
    /// A WebSocket handshake (set by `validate`): nothing after it is parsed, so the connection ends with it,
    /// as a tunnel or with its refusal.
    var websocket = false
    /// Set by `admitTunnel`: the tenant's place among its open tunnels (`max_websockets`), given back at the end.
    var tunnelSlot: TunnelSlot?
    /// When the upstream's 101 opened the tunnel, and the bytes it carried each way.
    var tunnelOpened: NIODeadline?
    var tunnelBytesIn: Int64 = 0
    var tunnelBytesOut: Int64 = 0
    /// Endpoints the gateway answers itself on the proxy listener.
    enum LocalEndpoint {
        case billingWebhook
        /// A CORS preflight on a route with `cors`: answered 204 with ``corsHeaders``, whatever its credentials.
        case preflight
    }
    /// Set by `route`: the gateway's own endpoint (no route, identity, gate or charge: it has its own checks),
    /// or the route.
    var local: LocalEndpoint?
    var route: RouteConfig?
    /// Set by `route` on a route with `cors`: the CORS headers of every response to this request (a preflight's
    /// 204, the upstream's answer, any denial); empty otherwise. The upstream's own `Access-Control-*` headers
    /// are dropped when this is not empty.
    var corsHeaders: [(String, String)] = []
    var routeName = "-"
    var upstreamName = "-"
    /// Set by `authenticate`.
    var caller = Caller()
    /// Set by `gate`: headers added to the client's response (e.g. `Gatehouse-Billing: past_due`) and the body
    /// limit (the server's, or the plan's when lower).
    var responseHeaders: [(String, String)] = []
    var bodyLimit = Int.max
    /// Set by `charge`: the tenant's plan (for metrics) and whether the local fallback bucket admitted it; while
    /// the limiter (or the tunnel count) is called, whether its answer came at once, and that answer.
    var plan = "-"
    var failOpen = false
    var charging = false
    var answeredInline: RequestPhases.Outcome?
    /// Set by `reserveAudit`: a place in the audit queue is held for this request's record.
    var auditReserved = false
    /// Set by `forward`: the upstream, the request for it, the pool and connection in use.
    var group: UpstreamGroup?
    var upstreamHead: HTTPRequestHead?
    var pool: TargetPool?
    var connection: UpstreamConnection?
    var waiter: TargetPoolStateMachine.WaiterID?
    var upstreamStart: NIODeadline?
    var attempts = 0
    /// The current attempt is its target's half-open circuit's probe, this one.
    var probe: CircuitBreakerStateMachine.ProbeID?
    /// The current attempt's outcome went to its target's circuit breaker (once per attempt).
    var outcomeReported = false
    /// What a failed attempt would have been answered with, for a retry that finds no target left.
    var failedAttempt: Denial?
    /// The place held in the upstream's `max_in_flight` bound, released when the exchange ends (or becomes a
    /// tunnel).
    private(set) var inFlightPlace: InFlightLimit?

    /// Takes a place in `limit` (once per exchange: retries keep it); false when the upstream has none free.
    func takeInFlightPlace(in limit: InFlightLimit) -> Bool {
        if inFlightPlace != nil { return true }
        guard limit.tryAcquire() else { return false }
        inFlightPlace = limit
        return true
    }

    /// Gives the `max_in_flight` place back, if one is held (at most once).
    func leaveInFlight() {
        inFlightPlace?.release()
        inFlightPlace = nil
    }
    /// The W3C trace context (continued from the client's `traceparent`, or started here) and the upstream
    /// call's span.
    var trace = TraceContext()
    var upstreamSpan: UInt64 = 0
    /// Request body bytes received from the client, and response body bytes relayed to it (access log).
    var bytesIn: Int64 = 0
    var bytesOut: Int64 = 0
    /// Body parts held until a connection is attached.
    var held: [ByteBuffer] = []
    /// The exchange has ended: a phase that was waiting (Redis, the audit queue) drops its late result and takes
    /// nothing more (an audit place reserved now would never be released).
    var ended = false

    /// Wall-clock time of the request's policy decisions, read once (token expiry, gates, periods).
    private(set) var wallClockReading: Double?

    func wallNow(_ clock: WallClock) -> Double {
        if let t = wallClockReading { return t }
        let t = clock.now()
        wallClockReading = t
        return t
    }

    init(requestID: String, head: HTTPRequestHead, parsedFraming: HTTP1Framing.Decision, start: NIODeadline) {
        self.requestID = requestID
        self.head = head
        self.parsedFraming = parsedFraming
        self.start = start
    }

    /// Retrying is safe when nothing reached the upstream, or the method is idempotent and has no body.
    func mayRetry(after error: UpstreamError, retries: Int) -> Bool {
        guard attempts <= retries else { return false }
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
extension RequestContext: Sendable {}
