import Foundation

/// What `gatehouse explain` found for one request: each phase's findings, as a list of named checks so that a
/// new check (a route's scopes, say) is one more entry, and the decision the gateway would take.
///
/// Sections after the phase that denied are nil (not reached). ``json`` and ``text`` carry the same content.
public struct Explanation: Sendable, Encodable {
    /// One named check of a phase and how it went.
    public struct Check: Sendable, Encodable {
        public enum Result: String, Sendable, Encodable {
            case ok
            case failed
            /// Not made: an earlier check failed, or the check does not apply.
            case skipped
            /// A fact, not a pass or fail.
            case info
        }
        public var name: String
        public var result: Result
        public var detail: String

        public init(_ name: String, _ result: Result, _ detail: String = "") {
            self.name = name
            self.result = result
            self.detail = detail
        }
    }

    public struct Request: Sendable, Encodable {
        public var method: String
        public var target: String
        public var host: String?
        public var scheme: String
        /// Header names as given (values are not repeated: they may be credentials).
        public var headers: [String]
        public var body: String
    }

    public struct Route: Sendable, Encodable {
        public var name: String
        public var pathPrefix: String
        public var host: String?
        /// nil: any method.
        public var methods: [String]?
        /// `match.headers` as `Name: value` (the name as configured); nil: none.
        public var headers: [String]? = nil
        public var upstream: String
        public var auth: String
        /// Why it was chosen.
        public var why: String
        /// The gateway's own endpoint that answers the request (`billing_webhook`, `cors_preflight`), if any.
        public var local: String?
        public var checks: [Check]
    }

    public struct NearMiss: Sendable, Encodable {
        public var route: String
        public var reason: String
    }

    public struct Identity: Sendable, Encodable {
        /// `required`, `optional` or `none` (the route's).
        public var auth: String
        /// `token`, `api_key` or `none`.
        public var credential: String
        public var user: String?
        public var roles: [String]
        /// The scopes the credential grants (the token's claim, or the API key's).
        public var scopes: [String]
        public var checks: [Check]
    }

    public struct Tenant: Sendable, Encodable {
        public var id: String?
        /// Where the tenant came from: the token's claim, the API key's owner, the tenant header, or none.
        public var source: String
        /// Where its record came from: `seed` (YAML) or `store`.
        public var record: String?
        public var plan: String?
        public var status: String?
        public var checks: [Check]
    }

    public struct Gates: Sendable, Encodable {
        public var plan: String?
        public var status: String?
        public var checks: [Check]
    }

    public struct Bucket: Sendable, Encodable {
        /// `t`, `r:<route>`, `u:<user>` or `k:<key id>`.
        public var name: String
        public var key: String
        public var ratePerSecond: Double
        public var burst: Int
        /// Tokens now (refilled to the store's clock); nil when the level could not be read.
        public var tokens: Double?
    }

    public struct Quota: Sendable, Encodable {
        /// nil: unlimited (requests are still counted).
        public var limit: Int?
        public var per: String
        public var used: Int?
        public var periodStart: String
        public var periodEnd: String
        public var key: String
    }

    public struct Charge: Sendable, Encodable {
        /// `redis`, `cluster`, `sentinel` or `embedded`.
        public var store: String
        /// Where the levels come from, or why they are unknown.
        public var levels: String
        public var buckets: [Bucket]
        public var quota: Quota?
        /// `admit`, `rate_limited`, `quota_exceeded`, `store_unavailable`, or `unknown` (levels not readable:
        /// admitted if the buckets hold tokens).
        public var verdict: String
        /// The `RateLimit-*` headers the response would carry.
        public var headers: [String: Int]?
        public var checks: [Check]
    }

    public struct Upstream: Sendable, Encodable {
        public var name: String
        public var targets: [String]
        /// The request line the upstream would receive.
        public var request: String
        /// The identity headers the gateway would set.
        public var identityHeaders: [String: String]
    }

    public struct Decision: Sendable, Encodable {
        public var allow: Bool
        public var status: Int
        public var code: String?
        public var detail: String
    }

    public struct Phase: Sendable, Encodable {
        public var phase: String
        /// `next`, `deny`, `local` (answered by the gateway), or `skipped`.
        public var outcome: String
    }

    public var request: Request
    public var route: Route?
    public var nearMisses: [NearMiss] = []
    public var identity: Identity?
    public var tenant: Tenant?
    public var gates: Gates?
    public var charge: Charge?
    /// A WebSocket handshake's place among the tenant's open tunnels.
    public var tunnel: [Check]?
    public var audit: [Check]?
    public var upstream: Upstream?
    public var decision: Decision
    public var phases: [Phase] = []
    /// What explain could not see (levels of the embedded store, an unreachable Redis, ...).
    public var notes: [String] = []

    public init(request: Request) {
        self.request = request
        self.decision = Decision(allow: false, status: 0, code: nil, detail: "not decided")
    }

    /// The explanation as one JSON document (keys in snake case, sorted).
    public var json: String {
        let encoder = JSONEncoder()
        encoder.keyEncodingStrategy = .convertToSnakeCase
        encoder.outputFormatting = [.sortedKeys, .prettyPrinted, .withoutEscapingSlashes]
        let data = (try? encoder.encode(self)) ?? Data("{}".utf8)
        return String(decoding: data, as: UTF8.self)
    }
}
