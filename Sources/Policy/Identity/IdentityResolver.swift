/// Who is calling and for which tenant: the result of authentication and tenant resolution.
public struct Caller: Sendable, Equatable {
    public enum Credential: Sendable, Equatable { case none, token, apiKey(id: String) }
    public var credential: Credential = .none
    public var tenant: String?
    public var user: String?
    public var roles: [String] = []
    /// The scopes the authenticating credential grants: the token's scope claim, or the API key's own.
    public var scopes: [String] = []
    public var plan: String?
    /// The tenant's effective record, as resolved (so later phases need not look it up again).
    public var record: TenantRecord?

    public init() {}

    public static func == (a: Caller, b: Caller) -> Bool {
        a.credential == b.credential && a.tenant == b.tenant && a.user == b.user && a.roles == b.roles
            && a.scopes == b.scopes && a.plan == b.plan
    }
}

/// Where tenant records and API key owners are looked up (YAML seeds, the admin API's store, or both).
public protocol TenantRecords: Sendable {
    /// The effective record of `tenant`, or nil when it is unknown.
    func record(_ tenant: String) -> TenantRecord?
    /// The owner of an API key and the key's record (id, scopes, roles), by the lowercase hex SHA-256 of the key.
    func apiKeyOwner(sha256Hex: String) -> (tenant: String, key: TenantRecord.APIKey)?
}

/// Tenant records fixed at construction (the YAML seeds).
public struct StaticTenantRecords: TenantRecords {
    public let tenants: [String: TenantRecord]
    private let owners: [String: (tenant: String, key: TenantRecord.APIKey)]

    public init(_ tenants: [String: TenantRecord]) {
        self.tenants = tenants
        var owners: [String: (tenant: String, key: TenantRecord.APIKey)] = [:]
        for (tenant, seed) in tenants {
            for key in seed.apiKeys { owners[key.sha256] = (tenant, key) }
        }
        self.owners = owners
    }

    public func record(_ tenant: String) -> TenantRecord? { tenants[tenant] }
    public func apiKeyOwner(sha256Hex: String) -> (tenant: String, key: TenantRecord.APIKey)? { owners[sha256Hex] }
}

/// Authenticates a request and resolves its tenant, then checks the route's roles and scopes (pure: the token
/// check is passed in).
///
/// Sources of the tenant: the JWT's tenant claim, the API key's owner, and the tenant header, which alone
/// names a tenant only as `header_tenancy` allows. Any two sources that disagree → 403 `tenant_mismatch`.
///
/// The authenticating credential gives the caller's user, roles and scopes: the token when one is sent (an API
/// key sent with it must name the same tenant, and lends it nothing), else the API key (its own roles and
/// scopes, given when it was created). Then the route's `roles` (any of → else 403 `forbidden`), then its
/// `scopes` (all of → else 403 `insufficient_scope`).
public struct IdentityResolver: Sendable {
    public let config: IdentityConfig
    public let tenants: any TenantRecords
    /// Longest API key accepted before hashing.
    public static let maxAPIKeyBytes = 256

    public init(config: IdentityConfig, tenants: any TenantRecords) {
        self.config = config
        self.tenants = tenants
    }

    /// What the resolver reads from a request.
    public struct Input {
        public var authorization: [String]
        public var apiKey: [String]
        public var tenantHeader: [String]
        public init(authorization: [String], apiKey: [String], tenantHeader: [String]) {
            self.authorization = authorization
            self.apiKey = apiKey
            self.tenantHeader = tenantHeader
        }
    }

    /// The caller (``authenticate(_:route:verify:)``), allowed by the route's roles and scopes
    /// (``authorize(route:caller:)``).
    public func resolve(
        _ input: Input, route: RouteConfig, verify: (String) -> Result<VerifiedToken, JWTError>
    ) -> Result<Caller, Denial> {
        authenticate(input, route: route, verify: verify).flatMap { caller in
            Self.authorize(route: route, caller: caller).map { .failure($0) } ?? .success(caller)
        }
    }

    /// Credentials and tenant: who is calling, for which tenant, with which roles and scopes; the route's roles
    /// and scopes are not looked at (the proxy keeps the caller of a request it refuses for them, for the audit
    /// record).
    public func authenticate(
        _ input: Input, route: RouteConfig, verify: (String) -> Result<VerifiedToken, JWTError>
    ) -> Result<Caller, Denial> {
        var caller = Caller()

        // The tenant header: at most one, and a well-formed id.
        guard input.tenantHeader.count <= 1 else {
            return .failure(.badRequest("Several \(config.tenantHeader) headers."))
        }
        let headerTenant = input.tenantHeader.first
        if let h = headerTenant, !TenantID.isValid(h) {
            return .failure(.badRequest("\(config.tenantHeader) must be 1-64 characters of A-Z a-z 0-9 . _ -."))
        }
        if route.auth == .none {
            // Public route: credentials are not looked at; a header names the tenant only when always trusted.
            if let h = headerTenant, config.headerTenancy == .always {
                return known(h, caller)
            }
            return .success(caller)
        }

        // Credentials.
        guard input.authorization.count <= 1, input.apiKey.count <= 1 else {
            return .failure(.unauthenticated("Several credentials of one kind were sent.", tokenSent: true))
        }
        var tokenTenant: String? = nil
        var keyTenant: String? = nil
        if let auth = input.authorization.first, let token = Self.bearerToken(auth) {
            switch verify(token) {
            case .failure(let error):
                return .failure(.unauthenticated("The bearer token was rejected (\(error.detail)).", tokenSent: true))
            case .success(let verified):
                caller.credential = .token
                caller.user = verified.user
                caller.roles = verified.roles
                caller.scopes = verified.scopes
                tokenTenant = verified.tenant
            }
        }
        if let key = input.apiKey.first {
            guard key.utf8.count <= Self.maxAPIKeyBytes,
                let owner = tenants.apiKeyOwner(sha256Hex: Digest.hex(Digest.sha256(key.utf8)))
            else {
                return .failure(.unauthenticated("The API key was rejected.", tokenSent: true))
            }
            if case .token = caller.credential {} else {
                caller.credential = .apiKey(id: owner.key.id)
                caller.user = "api-key:" + owner.key.id
                caller.roles = owner.key.roles
                caller.scopes = owner.key.scopes
            }
            keyTenant = owner.tenant
        }
        if caller.credential == .none {
            if route.auth == .required {
                let sent = !input.authorization.isEmpty
                return .failure(
                    .unauthenticated(
                        sent ? "Only Bearer tokens are accepted." : "This route requires a bearer token or an API key.",
                        tokenSent: sent))
            }
            // auth: optional, anonymous caller.
            if let h = headerTenant, config.headerTenancy == .always { return known(h, caller) }
            return .success(caller)
        }

        // Tenant: every source that names one must agree. A token and an API key together must name the same
        // tenant: a token without a tenant claim would otherwise lend its roles to the key's tenant.
        if caller.credential == .token, let k = keyTenant, tokenTenant != k {
            return .failure(.tenantMismatch("The token and the API key belong to different tenants."))
        }
        let credentialTenant = tokenTenant ?? keyTenant
        var tenant = credentialTenant
        if let h = headerTenant {
            if let c = credentialTenant {
                if h != c {
                    return .failure(.tenantMismatch("\(config.tenantHeader) names another tenant than the credentials."))
                }
            } else if config.headerTenancy == .always || (config.headerTenancy == .apiKeyOnly && keyTenant != nil) {
                tenant = h
            }
        }
        guard let tenant else { return .failure(.tenantRequired()) }
        return known(tenant, caller)
    }

    /// The route's `roles` (any of → else 403 `forbidden`), then its `scopes` (every one → else 403
    /// `insufficient_scope`, with RFC 6750's challenge naming them); nil when the caller may pass.
    public static func authorize(route: RouteConfig, caller: Caller) -> Denial? {
        if let roles = route.roles, !roles.contains(where: caller.roles.contains) {
            return .forbidden("This route needs one of the roles: \(roles.joined(separator: ", ")).")
        }
        guard let required = route.scopes, !required.isEmpty else { return nil }
        let missing = Scopes.missing(required, have: caller.scopes)
        guard !missing.isEmpty else { return nil }
        return .insufficientScope(
            required: required,
            "Route '\(route.name)' needs the scopes \(required.joined(separator: " ")); the credentials lack \(missing.joined(separator: " ")).")
    }

    private func known(_ tenant: String, _ caller: Caller) -> Result<Caller, Denial> {
        guard let record = tenants.record(tenant) else { return .failure(.unknownTenant("Tenant '\(tenant)' is not known.")) }
        var c = caller
        c.tenant = tenant
        c.plan = record.plan
        c.record = record
        return .success(c)
    }

    /// The token of an `Authorization: Bearer <token>` value (scheme case-insensitive); nil for other schemes.
    public static func bearerToken(_ value: String) -> String? {
        let u = value.utf8
        guard u.count > 7 else { return nil }
        let scheme = u.prefix(7)
        let lower = scheme.map { ($0 >= 65 && $0 <= 90) ? $0 | 0x20 : $0 }
        guard lower.elementsEqual("bearer ".utf8) else { return nil }
        var token = Substring(value).dropFirst(7)
        while token.first == " " { token = token.dropFirst() }
        while token.last == " " { token = token.dropLast() }
        return token.isEmpty ? nil : String(token)
    }
}
