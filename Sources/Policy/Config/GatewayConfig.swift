import Foundation

/// The validated, immutable runtime snapshot of a Gatehouse config.
///
/// Built by ``ConfigLoader`` from the YAML files; requests read one snapshot and a reload swaps it whole.
public struct GatewayConfig: Sendable {
    public var server: ServerConfig
    public var store: StoreConfig?
    public var identity: IdentityConfig
    public var plans: [String: PlanConfig]
    public var planOrder: [String]
    /// The `tenants:` seeds (records written through the admin API or the billing webhook win over them).
    public var tenants: [String: TenantRecord]
    public var billing: BillingConfig?
    public var upstreams: [String: UpstreamConfig]
    public var routes: [RouteConfig]
    public var audit: AuditConfig?
    public var metrics = MetricsConfig()
    /// `access_log`: one JSON line per request; nil: none.
    public var accessLog: AccessLogConfig? = nil
    /// `tracing`: OpenTelemetry spans exported over OTLP/HTTP; nil: none exported (`traceparent` still propagated).
    public var tracing: TracingConfig? = nil
    /// The files the config was read from, main file first.
    public var files: [String]
    /// Every certificate, key and CA file the config names, with where it names it.
    public var tlsFiles: [TLSFileReference] = []
}

/// A certificate, key or CA file named by the config: `validate` and `serve` open each one and report those
/// that cannot be used at the line that names them.
public struct TLSFileReference: Sendable, Hashable {
    public enum Kind: Sendable, Hashable { case certificates, privateKey }
    public var path: String
    public var kind: Kind
    /// The setting, e.g. `server.tls.certificates[0].key_file`.
    public var what: String
    public var file: String
    public var line: Int
    public var column: Int
}

/// A `host:port` listen or target address.
public struct HostPort: Sendable, Hashable, CustomStringConvertible {
    public var host: String
    public var port: Int

    public init(host: String, port: Int) {
        self.host = host
        self.port = port
    }

    /// Where a client on this machine reaches a listener bound here: a wildcard address (`0.0.0.0`, `::`) is
    /// reached on loopback.
    public var reachable: HostPort {
        switch host {
        case "0.0.0.0": return HostPort(host: "127.0.0.1", port: port)
        case "::": return HostPort(host: "::1", port: port)
        default: return self
        }
    }

    /// Parses `host:port`, `[v6]:port`; host may be an IPv4/IPv6 literal or a DNS name.
    public static func parse(_ text: String) -> HostPort? {
        var host: Substring
        let portText: Substring
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]") else { return nil }
            host = text[text.index(after: text.startIndex)..<close]
            let rest = text[text.index(after: close)...]
            guard rest.hasPrefix(":") else { return nil }
            portText = rest.dropFirst()
            guard host.contains(":") else { return nil }
        } else {
            guard let colon = text.lastIndex(of: ":") else { return nil }
            host = text[..<colon]
            portText = text[text.index(after: colon)...]
            guard !host.contains(":") else { return nil }
            let allowed = host.allSatisfy { c in
                c.isASCII && (c.isLetter || c.isNumber || c == "." || c == "-" || c == "_" || c == "*")
            }
            guard allowed else { return nil }
            if host == "*" { host = "0.0.0.0" }
        }
        guard !host.isEmpty, !portText.isEmpty, portText.allSatisfy({ $0.isASCII && $0.isNumber }),
            let port = Int(portText), port >= 0, port <= 65535
        else { return nil }
        return HostPort(host: String(host), port: port)
    }

    public var description: String { host.utf8.contains(UInt8(ascii: ":")) ? "[\(host)]:\(port)" : "\(host):\(port)" }
}

/// `server:`: the proxy listener, admin listener and every client-facing limit.
public struct ServerConfig: Sendable {
    /// The proxy listener.
    public var listen = HostPort(host: "127.0.0.1", port: 8080)
    /// Event loops; nil means one per core.
    public var threads: Int? = nil
    /// Health, metrics and admin API listener; nil disables it.
    public var adminListen: HostPort? = nil
    /// The environment variable holding the admin API's bearer token.
    public var adminTokenEnv: String? = nil
    /// Request line plus headers, in bytes; larger requests get 431.
    public var maxHeaderBytes = 16 * 1024
    /// Request body cap in bytes; larger bodies get 413. A plan may set a lower one.
    public var maxBodyBytes = 10 * 1024 * 1024
    /// A keep-alive connection with no request in progress is closed after this long (ns).
    public var idleTimeout: Int64 = 60_000_000_000
    /// A request's headers must arrive within this long of its first byte (ns); else 408 and close.
    public var headerTimeout: Int64 = 10_000_000_000
    /// A request's headers and body must arrive within this long of its first byte (ns); else 408 and close.
    public var requestTimeout: Int64 = 30_000_000_000
    /// How long a request head may take from its first byte: `header_timeout`, capped by `request_timeout`.
    public var headDeadline: Int64 { min(headerTimeout, requestTimeout) }
    /// A client that accepts no byte of a pending response for this long is closed, with its upstream
    /// connection (ns).
    public var sendTimeout: Int64 = 60_000_000_000
    /// On SIGTERM, in-flight requests get this long to finish (ns).
    public var drainTimeout: Int64 = 10_000_000_000
    /// Open client connections at most; further connections are closed at accept.
    public var maxConnections = 10_000
    /// Open connections to the admin listener (its own cap: a flood there cannot take the proxy's descriptors).
    public var adminMaxConnections = 256
    /// Requests a client may pipeline ahead of the one being answered before reading pauses.
    public var maxPipelinedRequests = 16
    /// Bytes of pipelined input held behind the running exchange before reading pauses.
    public var maxReadAheadBytes = 256 * 1024
    /// Client headers whose names contain `_` are dropped (nginx's default), so `X_Tenant_ID` cannot reach a
    /// WSGI/Rack/CGI upstream that would merge it with `X-Tenant-ID`.
    public var dropUnderscoreHeaders = true
    /// Peers whose `X-Forwarded-For` and `X-Forwarded-Proto` are believed.
    public var trustedProxies: [CIDR] = []
    /// Every connection to the proxy listener starts with a PROXY protocol header (v1 or v2) that names the
    /// client; only peers in `trustedProxies` may connect.
    public var proxyProtocol = false
    /// TLS on the proxy listener; nil: plain HTTP.
    public var tls: ServerTLSConfig? = nil

    public init() {}
}

/// `server.tls`: the proxy listener's certificates (PEM files), chosen by SNI.
public struct ServerTLSConfig: Sendable {
    public struct Certificate: Sendable {
        public var certFile: String
        public var keyFile: String
        /// Exact names and `*.` wildcards (one label deep) this certificate serves; the first certificate also
        /// serves every name no certificate lists, and clients that send no SNI.
        public var serverNames: [String] = []

        public init(certFile: String, keyFile: String, serverNames: [String] = []) {
            self.certFile = certFile
            self.keyFile = keyFile
            self.serverNames = serverNames
        }
    }
    public enum MinVersion: String, Sendable { case v12 = "1.2", v13 = "1.3" }
    public var certificates: [Certificate]
    public var minVersion: MinVersion = .v12
    /// Client certificates are required and verified against these CAs (mTLS); nil: none asked for.
    public var clientCAFile: String? = nil

    public init(certificates: [Certificate]) {
        self.certificates = certificates
    }

    /// The certificate for an SNI name: an exact name first, then a `*.` wildcard for its parent domain, else the
    /// first certificate. Names compare case-insensitively; a wildcard covers exactly one label.
    public func certificateIndex(serverName: String?) -> Int {
        guard let raw = serverName, !raw.isEmpty else { return 0 }
        let name = raw.lowercased()
        for (i, c) in certificates.enumerated() where c.serverNames.contains(where: { $0.lowercased() == name }) {
            return i
        }
        guard let dot = name.firstIndex(of: ".") else { return 0 }
        let parent = name[name.index(after: dot)...]
        for (i, c) in certificates.enumerated()
        where c.serverNames.contains(where: { $0.hasPrefix("*.") && $0.dropFirst(2).lowercased() == parent }) {
            return i
        }
        return 0
    }
}

/// The client side of a TLS connection the gateway opens: an https upstream or key-set URL.
public struct ClientTLSConfig: Sendable, Equatable {
    /// PEM CA certificates to trust; nil: the system's trust store.
    public var caFile: String? = nil
    /// The name sent as SNI and verified in the certificate; nil: the host the gateway connects to.
    public var serverName: String? = nil
    /// A client certificate and key (mTLS).
    public var certFile: String? = nil
    public var keyFile: String? = nil
    /// No verification at all (logged as a warning at every load).
    public var insecureSkipVerify = false

    public init(caFile: String? = nil) {
        self.caFile = caFile
    }
}

/// `store:`: where tenant records and counters live.
public struct StoreConfig: Sendable {
    public enum FailureMode: String, Sendable { case open, closed }
    public enum RateLimitMode: String, Sendable { case exact, leased }
    /// Which Redis deployment holds the store (`redis`, `cluster` or `sentinel`: exactly one).
    public enum Topology: Sendable, Equatable {
        /// One server: `redis://` or `rediss://`.
        case standalone(url: String)
        /// Redis Cluster: seed nodes as `host:port`; the slot map is discovered from them.
        case cluster(seeds: [String])
        /// The master named `master`, found through the sentinels at `nodes` (`host:port`).
        case sentinel(master: String, nodes: [String])
    }
    public var topology: Topology
    /// The standalone URL ("" for a Cluster or Sentinel).
    public var redisURL: String {
        if case .standalone(let url) = topology { return url }
        return ""
    }
    public var timeout: Int64 = 50_000_000
    public var onFailure: FailureMode = .open
    public var keyPrefix = "gh"
    public var rateLimitMode: RateLimitMode = .leased
    public var tenantCacheTTL: Int64 = 30_000_000_000
    /// TLS to Redis: set for a `rediss://` URL (an empty config: the system's trust store, the URL's host
    /// verified), from `store.tls`; with a Cluster or Sentinel, `store.tls` turns TLS on for every node.
    public var tls: ClientTLSConfig? = nil
    /// Environment variables holding the ACL user name and password (never in YAML).
    public var usernameEnv: String? = nil
    public var passwordEnv: String? = nil

    /// Whether the URL asks for TLS (`rediss://`).
    public static func isTLSURL(_ url: String) -> Bool { url.hasPrefix("rediss://") }

    public init(topology: Topology) { self.topology = topology }
}

/// `identity:`: how callers and tenants are recognised.
public struct IdentityConfig: Sendable {
    public enum HeaderTenancy: String, Sendable { case never, apiKeyOnly = "api_key_only", always }
    public var tenantHeader = "X-Tenant-ID"
    public var headerTenancy: HeaderTenancy = .apiKeyOnly
    public var issuers: [IssuerConfig] = []
    public var apiKeyHeader = "X-API-Key"
    /// `sign_headers`: the upstream receives an HMAC over the identity it is given; nil: not signed.
    public var signHeaders: SignHeadersConfig? = nil

    public init() {}
}

/// `identity.sign_headers`: the key (from the environment) and the header the signature goes in.
public struct SignHeadersConfig: Sendable {
    public var keyEnv: String
    public var header = "Gatehouse-Signature"
    /// Where the config names `key_env`, for the error when the variable is missing or short.
    var keyEnvAt = (file: "identity.sign_headers", line: 0, column: 0)
    /// The shortest key accepted (bytes).
    public static let minKeyBytes = 32

    public init(keyEnv: String, header: String = "Gatehouse-Signature") {
        self.keyEnv = keyEnv
        self.header = header
    }

    /// The key: the bytes of `key_env`'s value, at least ``minKeyBytes``; otherwise a config error (at start and
    /// on reload).
    public func key(environment: [String: String] = ProcessInfo.processInfo.environment) throws(ConfigError) -> [UInt8] {
        try ConfigError.secret(
            keyEnv, setting: "identity.sign_headers.key_env", at: keyEnvAt, minBytes: Self.minKeyBytes,
            environment: environment)
    }
}

/// One trusted JWT issuer.
public struct IssuerConfig: Sendable {
    public var issuer: String
    public var audiences: [String] = []
    public var algorithms: [String] = []
    public var jwksFile: String? = nil
    public var jwksURL: String? = nil
    /// How often a `jwks_url` is fetched again; on failure the last good key set stays.
    public var jwksRefresh: Int64 = 300_000_000_000
    /// `jwks_url` is found through `{issuer}.well-known/openid-configuration` (its `jwks_uri`).
    public var discovery = false
    /// PEM CAs trusted for https key-set and discovery URLs; nil: the system's trust store.
    public var caFile: String? = nil
    /// A token with an unknown `kid` fetches the key set again at most once per this long (ns).
    public var jwksRefetchCooldown: Int64 = 30_000_000_000
    public var secretEnv: String? = nil
    public var secretFile: String? = nil
    public var publicKeyFile: String? = nil
    public var tenantClaim = "tenant"
    public var userClaim = "sub"
    public var rolesClaim = "roles"
    /// The claim (dotted path allowed) holding the caller's scopes: a space-separated string or an array of
    /// strings. nil: `scope` when the token has it, else `scp`.
    public var scopesClaim: String? = nil
    public var leeway: Int64 = 0

    public init(issuer: String) {
        self.issuer = issuer
    }
}

/// A plan: rate, quota, features and body cap.
public struct PlanConfig: Sendable {
    public struct Rate: Sendable, Equatable {
        public var requests: Int
        public var per: Int64
        public var burst: Int
        public init(requests: Int, per: Int64, burst: Int) {
            self.requests = requests
            self.per = per
            self.burst = burst
        }
    }
    public enum QuotaPeriod: String, Sendable { case day, month }
    public enum Quota: Sendable, Equatable { case unlimited, limited(requests: Int, per: QuotaPeriod) }
    public var rate: Rate? = nil
    public var quota: Quota = .unlimited
    public var features: [String] = []
    public var maxBodyBytes: Int? = nil
    /// Concurrent WebSocket tunnels per tenant (fleet-wide with a shared store); nil: no limit.
    public var maxWebsockets: Int? = nil
}

/// RFC 3339 timestamps (`2026-12-31T00:00:00Z`, offsets and fractions allowed) as seconds since the epoch.
public enum Timestamp {
    public static func parse(_ text: String) -> Double? {
        let u = Array(text.utf8)
        func num(_ from: Int, _ len: Int) -> Int? {
            guard from + len <= u.count else { return nil }
            var v = 0
            for b in u[from..<from + len] {
                guard b >= 48 && b <= 57 else { return nil }
                v = v * 10 + Int(b - 48)
            }
            return v
        }
        guard u.count >= 20, let y = num(0, 4), u[4] == 45, let mo = num(5, 2), u[7] == 45, let d = num(8, 2),
            u[10] == 84 || u[10] == 116 || u[10] == 32, let h = num(11, 2), u[13] == 58, let mi = num(14, 2), u[16] == 58,
            let s = num(17, 2), (1...12).contains(mo), (1...31).contains(d), h < 24, mi < 60, s < 61
        else { return nil }
        var i = 19
        var fraction = 0.0
        if i < u.count, u[i] == 46 {
            i += 1
            var scale = 0.1
            while i < u.count, u[i] >= 48 && u[i] <= 57 {
                fraction += Double(u[i] - 48) * scale
                scale /= 10
                i += 1
            }
        }
        guard i < u.count else { return nil }
        var offset = 0
        if u[i] == 90 || u[i] == 122 {
            i += 1
        } else if u[i] == 43 || u[i] == 45, let oh = num(i + 1, 2), u.count > i + 3, u[i + 3] == 58, let om = num(i + 4, 2) {
            offset = (oh * 60 + om) * 60 * (u[i] == 43 ? 1 : -1)
            i += 6
        } else {
            return nil
        }
        guard i == u.count else { return nil }
        // Days from civil (Howard Hinnant's algorithm).
        let yy = mo <= 2 ? y - 1 : y
        let era = (yy >= 0 ? yy : yy - 399) / 400
        let yoe = yy - era * 400
        let doy = (153 * (mo + (mo > 2 ? -3 : 9)) + 2) / 5 + d - 1
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy
        let days = era * 146097 + doe - 719468
        return Double(days * 86400 + h * 3600 + mi * 60 + s - offset) + fraction
    }
}

/// `billing:`: the subscription webhook.
public struct BillingConfig: Sendable {
    public var webhookSecretEnv: String? = nil
    public var gracePeriod: Int64 = 7 * 86_400_000_000_000
    public var prices: [String: String] = [:]
    /// Also serves the webhook on the proxy listener at this path (so the admin listener can stay private).
    public var webhookPath: String? = nil
}

/// One named upstream service and how to reach it.
public struct UpstreamConfig: Sendable {
    public enum Balance: String, Sendable { case roundRobin = "round_robin", leastConnections = "least_connections" }
    public struct HealthCheck: Sendable {
        public var path = "/health"
        public var interval: Int64 = 5_000_000_000
        public var timeout: Int64 = 1_000_000_000
        public var unhealthyAfter = 3
        public var healthyAfter = 2
    }
    /// `circuit_breaker:`: passive health, per target, from the outcomes of real requests.
    public struct CircuitBreaker: Sendable, Equatable {
        /// Connect errors, resets and timeouts (and 5xx answers with `on5xx`) in a row that open the circuit.
        public var consecutiveFailures = 5
        /// How long an open circuit keeps its target out of balancing before one request probes it (ns).
        public var openFor: Int64 = 10_000_000_000
        /// A 5xx answer counts as a failure too (default: only transport failures do).
        public var on5xx = false
        public init() {}
    }
    public var name: String
    public var targets: [HostPort]
    public var balance: Balance = .roundRobin
    public var healthCheck: HealthCheck? = nil
    public var connectTimeout: Int64 = 1_000_000_000
    public var responseTimeout: Int64 = 30_000_000_000
    public var retries = 1
    /// Open connections per target, for the whole process (shared out among event loops).
    public var maxConnectionsPerTarget = 256
    /// An idle pooled upstream connection is closed after this long (ns).
    public var keepaliveTimeout: Int64 = 30_000_000_000
    /// HTTPS to the targets (requests and health checks); nil: plain HTTP.
    public var tls: ClientTLSConfig? = nil
    /// Passive health per target; nil (no `circuit_breaker` section): failures do not eject a target.
    public var circuitBreaker: CircuitBreaker? = nil
    /// Requests in flight to this upstream per gateway instance; beyond it new ones get 503
    /// `upstream_unavailable` at once. nil: no bound besides the connection pools' own.
    public var maxInFlight: Int? = nil
}

/// One route: what it matches, where it goes and what it demands.
public struct RouteConfig: Sendable {
    public enum Auth: String, Sendable { case required, optional, none }
    public var name: String
    public var host: String? = nil
    public var pathPrefix: String
    public var methods: [String]? = nil
    /// `match.headers`: each must be sent once with exactly its value (``HeaderMatch``); empty: headers are not
    /// looked at.
    public var headers: [HeaderMatch] = []
    public var upstream: String
    public var stripPrefix: String? = nil
    public var auth: Auth = .required
    public var minPlan: String? = nil
    public var feature: String? = nil
    public var roles: [String]? = nil
    /// Every one of these must be among the caller's scopes (a token's, or the API key's); else 403
    /// `insufficient_scope`. Only with `auth: required`.
    public var scopes: [String]? = nil
    public var rateLimits: [String] = ["tenant"]
    /// `cors:`: the gateway answers the route's CORS preflights and puts CORS headers on its other responses;
    /// nil: CORS is left to the upstream (preflights are routed and forwarded like any request).
    public var cors: CORSConfig? = nil
    /// `X-HTTP-Method-Override`, `X-HTTP-Method` and `X-Method-Override` reach the upstream (default: removed).
    public var allowMethodOverride = false
    /// `Upgrade: websocket` is carried (default: refused with 400).
    public var websocket = false
    /// A tunnel with no byte either way for this long is closed (ns).
    public var websocketIdleTimeout: Int64 = 300_000_000_000
}

/// `metrics:`: what `GET /metrics` exports beyond the fixed series.
public struct MetricsConfig: Sendable {
    /// `gatehouse_tenant_requests_total`: the tenants with the most requests get a series each, this many at most;
    /// the rest are summed into `tenant="other"` (0: every tenant is "other").
    public var tenantSeries = 20

    public init() {}
}

/// `audit:`: which requests are recorded and where.
/// `access_log`: where request lines go and which allowed requests are logged.
public struct AccessLogConfig: Sendable, Equatable {
    public enum Destination: Sendable, Equatable {
        case file(String)
        case stdout
    }
    public var destination: Destination
    /// Fraction of allowed requests logged (0...1); denials and 5xx answers are always logged.
    public var sample: Double = 1.0

    public init(destination: Destination, sample: Double = 1.0) {
        self.destination = destination
        self.sample = sample
    }
}

/// `tracing`: the OTLP/HTTP collector, the service's name and the head-sampling ratio for new traces.
public struct TracingConfig: Sendable, Equatable {
    /// The collector's traces URL (`otlp_endpoint`, with `/v1/traces` added to a bare base URL).
    public var endpoint: JWKSURL
    public var serviceName = "gatehouse"
    /// Fraction of traces started here that are sampled; an incoming `traceparent`'s decision is followed.
    public var sampleRatio: Double = 0.1

    public init(endpoint: JWKSURL, serviceName: String = "gatehouse", sampleRatio: Double = 0.1) {
        self.endpoint = endpoint
        self.serviceName = serviceName
        self.sampleRatio = sampleRatio
    }

    /// `otlp_endpoint` as the URL spans are posted to: a base URL (no path) gets `/v1/traces`, as OpenTelemetry's
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` does; a path that already ends in `/v1/traces` is kept.
    public static func tracesURL(_ text: String) -> JWKSURL? {
        guard var url = JWKSURL.parse(text) else { return nil }
        if url.path.contains("?") { return nil }
        if !url.path.hasSuffix("/v1/traces") {
            url.path = (url.path.hasSuffix("/") ? String(url.path.dropLast()) : url.path) + "/v1/traces"
        }
        return url
    }
}

public struct AuditConfig: Sendable {
    public enum Sink: Sendable {
        case file(path: String, rotateBytes: Int, fsync: String)
        case redisStream(stream: String, maxlen: Int)
        case stdout
    }
    public var methods: [String] = ["POST", "PUT", "PATCH", "DELETE"]
    public var denials = true
    public var sinks: [Sink] = []
    /// Records queued or reserved before audited requests wait (back-pressure).
    public var queueSize = 10_000
    /// How long an audited request waits for queue space before 503 `audit_unavailable` (nanoseconds).
    public var queueTimeout: Int64 = 1_000_000_000
    /// The environment variable holding the chain's HMAC key (`hmac_key_env`); nil: plain SHA-256.
    public var hmacKeyEnv: String? = nil
    /// Where the config names `hmac_key_env`, for the error when the variable is missing.
    var hmacKeyEnvAt = (file: "audit", line: 0, column: 0)
    /// Denial records written one by one per wall-clock second, per instance; the rest are counted in one
    /// summary record per second. Allowed writes are never limited.
    public var maxDenialsPerSecond = 500

    public init() {}

    /// The HMAC key: the bytes of `hmac_key_env`'s value; nil without `hmac_key_env`. A variable that is
    /// named but unset or empty is an error (at start, and on reload), never a silently unkeyed chain.
    public func hmacKey(environment: [String: String] = ProcessInfo.processInfo.environment) throws(ConfigError) -> [UInt8]? {
        guard let env = hmacKeyEnv else { return nil }
        return try ConfigError.secret(env, setting: "audit.hmac_key_env", at: hmacKeyEnvAt, environment: environment)
    }
}
