/// Why an upstream exchange failed.
public struct UpstreamError: Error, Sendable, CustomStringConvertible, Equatable {
    private enum Code: String, Sendable {
        case connectFailed = "connect_failed"
        case connectTimeout = "connect_timeout"
        case poolExhausted = "pool_exhausted"
        case connectionClosed = "connection_closed"
        case reusedConnectionLost = "reused_connection_lost"
        case unusableConnection = "unusable_connection"
        case malformedResponse = "malformed_response"
        case responseTimeout = "response_timeout"
        case noHealthyTarget = "no_healthy_target"
        case poolClosed = "pool_closed"
        case cancelled
    }

    private let code: Code
    public let detail: String

    private init(_ code: Code, _ detail: String) {
        self.code = code
        self.detail = detail
    }

    /// A short label-safe name.
    public var name: String { code.rawValue }
    public var description: String { "\(code.rawValue): \(detail)" }

    public static func connectFailed(_ d: String) -> Self { .init(.connectFailed, d) }
    public static func connectTimeout(_ d: String) -> Self { .init(.connectTimeout, d) }
    public static func poolExhausted(_ d: String) -> Self { .init(.poolExhausted, d) }
    public static func connectionClosed(_ d: String) -> Self { .init(.connectionClosed, d) }
    /// A connection taken from the idle list closed or reset before any response: like ``connectionClosed(_:)``
    /// for the client, but most often the keep-alive race, so not held against the target.
    public static func reusedConnectionLost(_ d: String) -> Self { .init(.reusedConnectionLost, d) }
    /// The gateway's own books went wrong (a pool entry gone, a connection not idle): nothing was sent.
    public static func unusableConnection(_ d: String) -> Self { .init(.unusableConnection, d) }
    public static func malformedResponse(_ d: String) -> Self { .init(.malformedResponse, d) }
    public static func responseTimeout(_ d: String) -> Self { .init(.responseTimeout, d) }
    public static func noHealthyTarget(_ d: String) -> Self { .init(.noHealthyTarget, d) }
    /// The pool takes no new work: replaced by a reload, or the gateway is stopping.
    public static func poolClosed(_ d: String) -> Self { .init(.poolClosed, d) }
    public static let cancelled = Self(.cancelled, "exchange cancelled")

    /// Nothing reached the upstream: safe to retry for any method.
    public var nothingSent: Bool {
        code == .connectFailed || code == .connectTimeout || code == .poolExhausted || code == .poolClosed
            || code == .unusableConnection
    }
    /// A failure of the target itself (connect error, reset, timeout, malformed answer), which its circuit breaker
    /// counts; the gateway's own limits, books, shutdowns and cancellations are not, and neither is a reused
    /// connection lost before any response (the keep-alive race).
    public var isTargetFailure: Bool {
        switch code {
        case .connectFailed, .connectTimeout, .connectionClosed, .malformedResponse, .responseTimeout: true
        case .reusedConnectionLost, .unusableConnection, .poolExhausted, .noHealthyTarget, .poolClosed, .cancelled: false
        }
    }
    public var isPoolClosed: Bool { code == .poolClosed }
    public var isTimeout: Bool { code == .responseTimeout }
    public var isUnavailable: Bool { code == .poolExhausted || code == .noHealthyTarget || code == .poolClosed }
}
