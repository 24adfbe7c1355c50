/// A refused request: the status, the SPEC's problem `code`, and what the RFC 9457 document says.
///
/// Every denial Gatehouse sends is built here, so codes and titles stay consistent.
public struct Denial: Error, Sendable, CustomStringConvertible {
    private enum Code: String, Sendable {
        case routeNotFound = "route_not_found"
        case badRequest = "bad_request"
        case headersTooLarge = "headers_too_large"
        case requestTimeout = "request_timeout"
        case unauthenticated
        case tenantRequired = "tenant_required"
        case tenantMismatch = "tenant_mismatch"
        case unknownTenant = "unknown_tenant"
        case forbidden
        case insufficientScope = "insufficient_scope"
        case corsRejected = "cors_rejected"
        case planRequired = "plan_required"
        case tenantSuspended = "tenant_suspended"
        case tenantCancelled = "tenant_cancelled"
        case paymentRequired = "payment_required"
        case rateLimited = "rate_limited"
        case quotaExceeded = "quota_exceeded"
        case tooManyConnections = "too_many_connections"
        case payloadTooLarge = "payload_too_large"
        case storeUnavailable = "store_unavailable"
        case upstreamUnavailable = "upstream_unavailable"
        case badGateway = "bad_gateway"
        case upstreamTimeout = "upstream_timeout"
        case serviceUnavailable = "service_unavailable"
        case auditUnavailable = "audit_unavailable"
    }

    private let kind: Code
    /// HTTP status of the response.
    public private(set) var status: Int
    /// Human-readable explanation of this occurrence.
    public var detail: String
    /// Extra string members of the problem document (e.g. `required`, `current`).
    public var extensions: [(String, String)] = []
    /// Extra response headers (e.g. `WWW-Authenticate`, `Retry-After`).
    public var headers: [(String, String)] = []
    /// The connection must be closed after the response (framing errors, timeouts).
    public var closeConnection = false

    private init(_ kind: Code, _ status: Int, _ detail: String) {
        self.kind = kind
        self.status = status
        self.detail = detail
    }

    /// The problem `code` (SPEC status table); also a safe metric label.
    public var code: String { kind.rawValue }

    public var title: String {
        switch kind {
        case .routeNotFound: "Route not found"
        case .badRequest: "Bad request"
        case .headersTooLarge: "Request headers too large"
        case .requestTimeout: "Request timeout"
        case .unauthenticated: "Unauthenticated"
        case .tenantRequired: "Tenant required"
        case .tenantMismatch: "Tenant mismatch"
        case .unknownTenant: "Unknown tenant"
        case .forbidden: "Forbidden"
        case .insufficientScope: "Insufficient scope"
        case .corsRejected: "CORS request rejected"
        case .planRequired: "Plan required"
        case .tenantSuspended: "Tenant suspended"
        case .tenantCancelled: "Tenant cancelled"
        case .paymentRequired: "Payment required"
        case .rateLimited: "Rate limited"
        case .quotaExceeded: "Quota exceeded"
        case .tooManyConnections: "Too many connections"
        case .payloadTooLarge: "Payload too large"
        case .storeUnavailable: "Store unavailable"
        case .upstreamUnavailable: "Upstream unavailable"
        case .badGateway: "Bad gateway"
        case .upstreamTimeout: "Upstream timeout"
        case .serviceUnavailable: "Service unavailable"
        case .auditUnavailable: "Audit log unavailable"
        }
    }

    public var description: String { "\(status) \(code): \(detail)" }

    /// The same problem answered with another status (e.g. the admin API's 404 for an unknown tenant).
    public func with(status: Int) -> Denial {
        var d = self
        d.status = status
        return d
    }

    public static func routeNotFound(_ detail: String = "No route matches this request.") -> Denial {
        Denial(.routeNotFound, 404, detail)
    }
    /// Malformed request or framing; the connection is closed after the response.
    public static func badRequest(_ detail: String) -> Denial {
        var d = Denial(.badRequest, 400, detail)
        d.closeConnection = true
        return d
    }
    public static func headersTooLarge(limit: Int) -> Denial {
        var d = Denial(.headersTooLarge, 431, "The request line and headers exceed \(limit) bytes.")
        d.closeConnection = true
        return d
    }
    public static func requestTimeout(_ detail: String) -> Denial {
        var d = Denial(.requestTimeout, 408, detail)
        d.closeConnection = true
        return d
    }
    /// 401; `tokenSent` picks `Bearer error="invalid_token"` over a bare `Bearer` challenge.
    public static func unauthenticated(_ detail: String, tokenSent: Bool) -> Denial {
        var d = Denial(.unauthenticated, 401, detail)
        d.headers = [("WWW-Authenticate", tokenSent ? "Bearer error=\"invalid_token\"" : "Bearer")]
        return d
    }
    public static func tenantRequired(_ detail: String = "No tenant could be resolved for this request.") -> Denial {
        Denial(.tenantRequired, 400, detail)
    }
    public static func tenantMismatch(_ detail: String) -> Denial { Denial(.tenantMismatch, 403, detail) }
    public static func unknownTenant(_ detail: String) -> Denial { Denial(.unknownTenant, 403, detail) }
    public static func forbidden(_ detail: String) -> Denial { Denial(.forbidden, 403, detail) }
    /// 403 for a caller without every one of the route's scopes, with RFC 6750's challenge naming them all:
    /// `WWW-Authenticate: Bearer error="insufficient_scope", scope="a b"` (and the problem's `scope` member).
    /// `required` are scope-tokens (``Scopes/isScope(_:)``), which need no escaping inside the quotes.
    public static func insufficientScope(required: [String], _ detail: String) -> Denial {
        let scope = required.joined(separator: " ")
        var d = Denial(.insufficientScope, 403, detail)
        d.headers = [("WWW-Authenticate", "Bearer error=\"insufficient_scope\", scope=\"\(scope)\"")]
        d.extensions = [("scope", scope)]
        return d
    }
    /// 403 to a CORS preflight whose origin, method or headers the route's `cors` does not allow.
    public static func corsRejected(_ detail: String) -> Denial { Denial(.corsRejected, 403, detail) }
    public static func planRequired(required: String, current: String, _ detail: String) -> Denial {
        var d = Denial(.planRequired, 403, detail)
        d.extensions = [("required", required), ("current", current)]
        return d
    }
    public static func tenantSuspended(_ detail: String) -> Denial { Denial(.tenantSuspended, 403, detail) }
    public static func tenantCancelled(_ detail: String) -> Denial { Denial(.tenantCancelled, 403, detail) }
    public static func paymentRequired(_ detail: String) -> Denial { Denial(.paymentRequired, 402, detail) }
    public static func rateLimited(retryAfter: Int, _ detail: String) -> Denial {
        var d = Denial(.rateLimited, 429, detail)
        d.headers = [("Retry-After", String(max(1, retryAfter)))]
        return d
    }
    public static func quotaExceeded(retryAfter: Int, _ detail: String) -> Denial {
        var d = Denial(.quotaExceeded, 429, detail)
        d.headers = [("Retry-After", String(max(1, retryAfter)))]
        return d
    }
    /// 429 for a WebSocket handshake while the tenant holds its plan's `max_websockets` tunnels.
    public static func tooManyConnections(limit: Int) -> Denial {
        var d = Denial(
            .tooManyConnections, 429, "The tenant already holds its \(limit) concurrent WebSocket connections.")
        d.extensions = [("limit", String(limit))]
        return d
    }
    /// 413; `close` when unread body bytes remain on the connection.
    public static func payloadTooLarge(limit: Int, close: Bool) -> Denial {
        var d = Denial(.payloadTooLarge, 413, "The request body exceeds \(limit) bytes.")
        d.closeConnection = close
        return d
    }
    public static func storeUnavailable(retryAfter: Int = 1) -> Denial {
        var d = Denial(.storeUnavailable, 503, "The tenant store is unreachable.")
        d.headers = [("Retry-After", String(retryAfter))]
        return d
    }
    public static func upstreamUnavailable(_ detail: String) -> Denial { Denial(.upstreamUnavailable, 503, detail) }
    public static func badGateway(_ detail: String) -> Denial { Denial(.badGateway, 502, detail) }
    public static func upstreamTimeout(_ detail: String) -> Denial { Denial(.upstreamTimeout, 504, detail) }
    /// 503 while the gateway is shutting down or over its own limits.
    /// 503: the audit log's queue stayed full; the write was not forwarded (it could not be recorded).
    public static func auditUnavailable() -> Denial {
        var d = Denial(.auditUnavailable, 503, "The audit log is behind; the request was not forwarded. Retry shortly.")
        d.headers = [("Retry-After", "1")]
        return d
    }

    public static func serviceUnavailable(_ detail: String) -> Denial {
        var d = Denial(.serviceUnavailable, 503, detail)
        d.closeConnection = true
        return d
    }

    /// The RFC 9457 problem document (`application/problem+json`).
    public func document(requestID: String) -> String {
        var json = "{\"type\":\(JSONText.quote("https://gatehouse.dev/problems/" + code))"
        json += ",\"title\":\(JSONText.quote(title)),\"status\":\(status)"
        json += ",\"detail\":\(JSONText.quote(detail)),\"code\":\(JSONText.quote(code))"
        json += ",\"request_id\":\(JSONText.quote(requestID))"
        for (k, v) in extensions { json += ",\(JSONText.quote(k)):\(JSONText.quote(v))" }
        json += "}"
        return json
    }
}
