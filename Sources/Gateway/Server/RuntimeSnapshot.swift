import NIOSSL
import Policy
import Upstream

/// Everything a request reads from one loaded config: the config, the compiled router, the header rules and
/// the resolved upstreams. Immutable; a reload builds a new one and swaps it in on every loop.
public final class RuntimeSnapshot: Sendable {
    public let config: GatewayConfig
    public let router: Router
    public let rewriter: HeaderRewriter
    public let upstreams: UpstreamRegistry
    public let identity: IdentityResolver
    /// Effective tenant records (seeds and admin writes); shared by every snapshot of one server.
    public let tenants: TenantDirectory
    public let verifier: JWTVerifier
    /// Each issuer's leeway in seconds, for the token cache.
    public let leeways: [String: Double]
    /// The proxy listener's TLS context (certificates loaded from this config); nil for plain HTTP.
    public let serverTLS: NIOSSLContext?
    /// Identity headers only the gateway may set; client-sent copies are removed before forwarding (the
    /// signature header too, whether or not this gateway signs).
    public static let identityHeaders: Set<String> = ["x-tenant-id", "x-user-id", "x-plan", "x-roles", "gatehouse-signature"]
    /// Trace context the gateway sets from its own span (a client's copies are read, then replaced).
    static let traceHeaders: Set<String> = ["traceparent", "tracestate"]
    /// `identity.sign_headers`: the header name and key the forwarded identity is signed with.
    let signing: (header: String, key: [UInt8])?

    /// Builds a snapshot; resolves upstream addresses and loads key material (blocking: never call on an event
    /// loop).
    /// `previous`: the upstreams of the snapshot a reload replaces (circuit breakers and `max_in_flight` counts
    /// carry over).
    public init(config: GatewayConfig, tenants: TenantDirectory, previous: UpstreamRegistry? = nil) throws {
        self.config = config
        self.router = Router(routes: config.routes)
        var reserved = Self.identityHeaders.union(Self.traceHeaders)
        reserved.insert(config.identity.tenantHeader.lowercased())
        if let sign = config.identity.signHeaders {
            reserved.insert(sign.header.lowercased())
            self.signing = (sign.header, try sign.key())
        } else {
            self.signing = nil
        }
        self.rewriter = HeaderRewriter(reserved: reserved)
        self.upstreams = try UpstreamRegistry(upstreams: config.upstreams, previous: previous)
        self.identity = IdentityResolver(config: config.identity, tenants: tenants)
        self.tenants = tenants
        self.verifier = try JWTVerifier(config: config.identity)
        // The audit log reads its key at start; a reload that names a variable that is not there is refused
        // like any other config error, rather than accepted and then failing at the next start.
        _ = try config.audit?.hmacKey()
        self.serverTLS = try config.server.tls.map { try ListenerTLS.makeContext($0) }
        self.leeways = Dictionary(
            config.identity.issuers.map { ($0.issuer, Double($0.leeway) / 1e9) }, uniquingKeysWith: { a, _ in a })
    }
}
