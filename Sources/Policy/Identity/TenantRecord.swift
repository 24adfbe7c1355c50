/// A tenant's record: its plan, billing state, API keys (by hash) and limit overrides.
///
/// The one shape of every tenant record: the `tenants:` seeds read from YAML, the records written through the
/// admin API or the billing webhook (kept in the store), and the effective record that requests are gated
/// and charged by (a stored record wins over the seed of the same tenant).
public struct TenantRecord: Sendable {
    /// An API key, by the lowercase hex SHA-256 of its plaintext, with what it grants: a caller that
    /// authenticates with it has these scopes and roles (none for a key made without them).
    public struct APIKey: Sendable, Equatable {
        public var id: String
        public var sha256: String
        /// ``Scopes/isScope(_:)`` names, at most ``Scopes/maxCount``.
        public var scopes: [String]
        /// ``TenantRecord/isRoleName(_:)`` names, at most ``TenantRecord/maxRoles``.
        public var roles: [String]
        public init(id: String, sha256: String, scopes: [String] = [], roles: [String] = []) {
            self.id = id
            self.sha256 = sha256
            self.scopes = scopes
            self.roles = roles
        }
    }
    public var plan: String
    public var status: String = "active"
    /// `trial_ends` as written, and as seconds since the epoch.
    public var trialEnds: String? = nil
    public var trialEndsAt: Double? = nil
    /// When the tenant went `past_due`, seconds since the epoch (the grace period counts from here).
    public var pastDueSinceAt: Double? = nil
    public var billingAnchor: Int = 1
    public var apiKeys: [APIKey] = []
    /// Overrides of the plan's limits.
    public var maxBodyBytes: Int? = nil
    public var rateOverride: PlanConfig.Rate? = nil
    public var quotaOverride: PlanConfig.Quota? = nil
    /// Concurrent WebSocket tunnels, instead of the plan's `max_websockets`.
    public var maxWebsocketsOverride: Int? = nil
    /// Features this tenant has beside its plan's (`overrides.features`: a beta for one tenant).
    public var featureOverrides: [String] = []
    /// `created` of the newest billing event applied (seconds since the epoch): an older event is ignored.
    public var billingEventAt: Double? = nil
    /// SHA-256 hashes of API keys revoked from this tenant: they never authenticate again, even when a YAML
    /// seed still lists them (kept by the store's record, and by its tombstone).
    public var revokedKeys: Set<String> = []
    /// A stored tombstone: `DELETE /admin/tenants/{id}` leaves the tenant unknown, its seed included, until
    /// the next PUT. Never true for a record that requests are gated by.
    public var deleted = false

    /// A feature name a tenant may be given: 1-64 characters of `A-Z a-z 0-9 . _ : -`.
    public static func isFeatureName(_ name: String) -> Bool {
        let u = name.utf8
        return (1...64).contains(u.count) && u.allSatisfy { TenantID.isIDByte($0) || $0 == UInt8(ascii: ":") }
    }

    /// Roles an API key may carry, and a token's roles claim may hold, at most.
    public static let maxRoles = 64
    /// API keys one tenant may hold (each carries its grants in the record, re-encoded on every write).
    public static let maxAPIKeys = 1000

    /// A role name, of an API key or in a token's roles claim: 1-64 characters of `A-Z a-z 0-9 . _ : -` (so
    /// `X-Roles` stays a plain comma-separated list).
    public static func isRoleName(_ name: String) -> Bool { isFeatureName(name) }

    public init(plan: String) {
        self.plan = plan
    }
}
