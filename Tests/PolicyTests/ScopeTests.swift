import Foundation
import Testing

@testable import Policy

/// Scopes: what a token's claim (either shape, or the issuer's own) and an API key grant, the config rules for a
/// route's `scopes`, and the all-of check with its RFC 6750 challenge. Injected clock, no sockets.
@Suite struct ScopeTests {
    static let secret = "scope-test-secret-0123456789abcdef0123456789"
    static let t0 = 1_800_000_000.0

    static func verifier(scopesClaim: String? = nil) throws -> JWTVerifier {
        var identity = IdentityConfig()
        var issuer = IssuerConfig(issuer: "https://unit/")
        issuer.algorithms = ["HS256"]
        issuer.secretEnv = "UNIT_SECRET"
        issuer.scopesClaim = scopesClaim
        identity.issuers = [issuer]
        return try JWTVerifier(config: identity, environment: ["UNIT_SECRET": secret])
    }

    /// The scopes a verified token grants, for these extra claims.
    static func scopes(_ extra: [String: Any], claim: String? = nil) throws -> [String] {
        var claims: [String: Any] = ["iss": "https://unit/", "sub": "u", "exp": t0 + 60, "tenant": "acme"]
        for (k, v) in extra { claims[k] = v }
        let token = try JWTSigner.sign(claims: claims, algorithm: "HS256", key: Array(secret.utf8))
        return try verifier(scopesClaim: claim).verify(token, now: t0).get().scopes
    }

    @Test func bothStandardClaimShapes() throws {
        #expect(try Self.scopes(["scope": "orders:read  orders:write"]) == ["orders:read", "orders:write"])
        #expect(try Self.scopes(["scp": ["orders:read", "orders:write"]]) == ["orders:read", "orders:write"])
        // Either claim in either shape.
        #expect(try Self.scopes(["scope": ["a", "b"]]) == ["a", "b"])
        #expect(try Self.scopes(["scp": "a b"]) == ["a", "b"])
        // `scope` first; `scp` only when the token has no `scope` (a null one counts as absent).
        #expect(try Self.scopes(["scope": "a", "scp": ["b"]]) == ["a"])
        #expect(try Self.scopes(["scope": NSNull(), "scp": ["b"]]) == ["b"])
        #expect(try Self.scopes([:]).isEmpty)
    }

    @Test func theIssuersOwnClaimByNameOrDottedPath() throws {
        #expect(try Self.scopes(["permissions": ["x:read"]], claim: "permissions") == ["x:read"])
        #expect(try Self.scopes(["ext": ["perms": "x:read x:write"]], claim: "ext.perms") == ["x:read", "x:write"])
        // A claim literally named with a dot wins over the path.
        #expect(try Self.scopes(["ext.perms": "lit", "ext": ["perms": "nested"]], claim: "ext.perms") == ["lit"])
        // With a claim configured, `scope` and `scp` grant nothing.
        #expect(try Self.scopes(["scope": "a", "scp": ["b"]], claim: "permissions").isEmpty)
    }

    @Test func wrongTypesGrantNothingAndDoNotRefuseTheToken() throws {
        for value: Any in [42, true, ["a": "b"], ["a", 1], [["a"]], NSNull()] {
            #expect(try Self.scopes(["scope": value]).isEmpty, Comment(rawValue: "\(value)"))
            #expect(try Self.scopes(["perms": value], claim: "perms").isEmpty, Comment(rawValue: "\(value)"))
        }
        #expect(try Self.scopes(["scp": 7]).isEmpty)
    }

    @Test func whatATokenGrantsIsBounded() throws {
        let many = (0..<200).map { "s\($0)" }
        let kept = try Self.scopes(["scope": many.joined(separator: " ")])
        #expect(kept == Array(many.prefix(Scopes.maxCount)))
        let long = String(repeating: "x", count: Scopes.maxBytes + 1)
        let justRight = String(repeating: "y", count: Scopes.maxBytes)
        #expect(try Self.scopes(["scp": [long, justRight]]) == [justRight])
        // Names that are not scope-tokens (quote, backslash, control, non-ASCII) are ignored; duplicates kept once.
        #expect(try Self.scopes(["scp": ["a\"b", "a\\b", "a\tb", "caf\u{e9}", "ok", "ok", "a b"]]) == ["ok"])
        #expect(try Self.scopes(["scope": "ok ok\r\nX-Evil: 1 fine"]) == ["ok", "1", "fine"])
    }

    @Test func theTokenCacheKeepsScopes() throws {
        let v = try Self.verifier()
        let cache = TokenCache(capacity: 4)
        let claims: [String: Any] = ["iss": "https://unit/", "exp": Self.t0 + 60, "scope": "a b"]
        let token = try JWTSigner.sign(claims: claims, algorithm: "HS256", key: Array(Self.secret.utf8))
        var calls = 0
        for _ in 0..<2 {
            let verified = try cache.verify(token, now: Self.t0, leeway: { _ in 0 }) {
                calls += 1
                return v.verify($0, now: Self.t0)
            }.get()
            #expect(verified.scopes == ["a", "b"])
        }
        #expect(calls == 1)
    }

    // MARK: The check

    static let keyPlain = "gh_unit_key"
    static func resolver(keyScopes: [String] = [], keyRoles: [String] = []) -> IdentityResolver {
        var acme = TenantRecord(plan: "pro")
        acme.apiKeys = [
            .init(id: "bot", sha256: Digest.hex(Digest.sha256(keyPlain.utf8)), scopes: keyScopes, roles: keyRoles)
        ]
        return IdentityResolver(config: IdentityConfig(), tenants: StaticTenantRecords(["acme": acme]))
    }

    static func route(scopes: [String]? = nil, roles: [String]? = nil) -> RouteConfig {
        var r = RouteConfig(name: "orders", pathPrefix: "/orders", upstream: "u")
        r.scopes = scopes
        r.roles = roles
        return r
    }

    static func token(scopes: [String], roles: [String] = [], tenant: String? = "acme") -> (String) -> Result<VerifiedToken, JWTError> {
        { _ in .success(VerifiedToken(issuer: "i", user: "u", tenant: tenant, roles: roles, expiresAt: 0, scopes: scopes)) }
    }

    static var bearer: IdentityResolver.Input { IdentityResolver.Input(authorization: ["Bearer t"], apiKey: [], tenantHeader: []) }
    static var apiKey: IdentityResolver.Input { IdentityResolver.Input(authorization: [], apiKey: [keyPlain], tenantHeader: []) }

    @Test func everyScopeOfTheRouteIsNeeded() throws {
        let resolver = Self.resolver()
        let route = Self.route(scopes: ["orders:read", "orders:write"])
        let ok = try resolver.resolve(Self.bearer, route: route, verify: Self.token(scopes: ["x", "orders:write", "orders:read"])).get()
        #expect(ok.scopes == ["x", "orders:write", "orders:read"])
        for have in [[], ["orders:read"], ["orders:write"], ["orders:read orders:write"], ["ORDERS:READ", "ORDERS:WRITE"]] {
            let result = resolver.resolve(Self.bearer, route: route, verify: Self.token(scopes: have))
            guard case .failure(let denial) = result else {
                Issue.record(Comment(rawValue: "\(have) was let through"))
                continue
            }
            #expect(denial.status == 403)
            #expect(denial.code == "insufficient_scope")
            #expect(denial.headers.count == 1)
            #expect(denial.headers.first?.0 == "WWW-Authenticate")
            #expect(denial.headers.first?.1 == #"Bearer error="insufficient_scope", scope="orders:read orders:write""#)
        }
        // A route without scopes asks for none.
        #expect((try? resolver.resolve(Self.bearer, route: Self.route(), verify: Self.token(scopes: [])).get()) != nil)
    }

    @Test func rolesAreCheckedBeforeScopes() throws {
        let resolver = Self.resolver()
        let route = Self.route(scopes: ["s"], roles: ["admin"])
        let neither = resolver.resolve(Self.bearer, route: route, verify: Self.token(scopes: [], roles: []))
        #expect(neither.failureCode == "forbidden")
        let roleOnly = resolver.resolve(Self.bearer, route: route, verify: Self.token(scopes: [], roles: ["admin"]))
        #expect(roleOnly.failureCode == "insufficient_scope")
        #expect((try? resolver.resolve(Self.bearer, route: route, verify: Self.token(scopes: ["s"], roles: ["admin"])).get()) != nil)
    }

    @Test func anAPIKeyGrantsTheScopesAndRolesItWasMadeWith() throws {
        let route = Self.route(scopes: ["orders:write"], roles: ["deployer"])
        let none = Self.resolver()
        #expect(none.resolve(Self.apiKey, route: Self.route(roles: ["deployer"]), verify: Self.token(scopes: [])).failureCode == "forbidden")
        #expect(none.resolve(Self.apiKey, route: Self.route(scopes: ["orders:write"]), verify: Self.token(scopes: [])).failureCode == "insufficient_scope")
        let granted = Self.resolver(keyScopes: ["orders:write"], keyRoles: ["deployer"])
        let caller = try granted.resolve(Self.apiKey, route: route, verify: Self.token(scopes: [])).get()
        #expect(caller.credential == .apiKey(id: "bot"))
        #expect(caller.roles == ["deployer"])
        #expect(caller.scopes == ["orders:write"])
        let scopeOnly = Self.resolver(keyScopes: ["orders:write"])
        #expect(scopeOnly.resolve(Self.apiKey, route: route, verify: Self.token(scopes: [])).failureCode == "forbidden")
    }

    @Test func withATokenAndAKeyTheTokensScopesApply() throws {
        let resolver = Self.resolver(keyScopes: ["orders:write"], keyRoles: ["deployer"])
        let both = IdentityResolver.Input(authorization: ["Bearer t"], apiKey: [Self.keyPlain], tenantHeader: [])
        let route = Self.route(scopes: ["orders:write"])
        // The key does not lend its scopes (nor roles) to the token.
        #expect(resolver.resolve(both, route: route, verify: Self.token(scopes: ["orders:read"])).failureCode == "insufficient_scope")
        #expect(resolver.resolve(both, route: Self.route(roles: ["deployer"]), verify: Self.token(scopes: [])).failureCode == "forbidden")
        let caller = try resolver.resolve(both, route: route, verify: Self.token(scopes: ["orders:write"])).get()
        #expect(caller.credential == .token)
        #expect(caller.scopes == ["orders:write"])
    }

    @Test func theDenialsProblemDocumentNamesTheScopes() throws {
        let d = Denial.insufficientScope(required: ["a:b", "c"], "Needs a:b c.")
        #expect(d.status == 403)
        #expect(d.title == "Insufficient scope")
        #expect(!d.closeConnection)
        let json = try JSONSerialization.jsonObject(with: Data(d.document(requestID: "r-1").utf8)) as! [String: Any]
        #expect(json["code"] as? String == "insufficient_scope")
        #expect(json["type"] as? String == "https://gatehouse.dev/problems/insufficient_scope")
        #expect(json["scope"] as? String == "a:b c")
        #expect(d.headers.first?.1 == #"Bearer error="insufficient_scope", scope="a:b c""#)
    }

    // MARK: Config

    static let configBase = """
        identity:
          jwt:
            issuers:
              - {issuer: https://a/, algorithms: [HS256], secret_env: S, scopes_claim: ext.perms}
              - {issuer: https://b/, algorithms: [HS256], secret_env: S}
        plans: {pro: {}}
        upstreams:
          u: {targets: [127.0.0.1:9001]}
        """

    @Test func configReadsScopesClaimsRouteScopesAndKeyGrants() throws {
        let sha = String(repeating: "ab", count: 32)
        let yaml = Self.configBase + """

            tenants:
              acme: {plan: pro, api_keys: [{id: bot, sha256: \(sha), scopes: [orders:write, orders:write, x], roles: [deployer]}, {id: old, sha256: \(String(repeating: "CD", count: 32))}]}
            routes:
              - {name: w, match: {path_prefix: /w}, upstream: u, scopes: [orders:write, "https://api/x"]}
              - {name: r, match: {path_prefix: /r}, upstream: u, roles: [a], scopes: [orders:read]}
            """
        let config = try load(["gw.yaml": yaml]).get()
        #expect(config.identity.issuers[0].scopesClaim == "ext.perms")
        #expect(config.identity.issuers[1].scopesClaim == nil)
        #expect(config.routes[0].scopes == ["orders:write", "https://api/x"])
        #expect(config.routes[1].scopes == ["orders:read"])
        let keys = try #require(config.tenants["acme"]?.apiKeys)
        #expect(keys[0] == TenantRecord.APIKey(id: "bot", sha256: sha, scopes: ["orders:write", "x"], roles: ["deployer"]))
        #expect(keys[1].scopes.isEmpty && keys[1].roles.isEmpty)
    }

    @Test func aSeedKeyBelongsToOneTenantOnce() {
        // The same key twice (any case of its hex), in one tenant or two, or two keys with one id: which copy would
        // authenticate, with which grants, would be arbitrary.
        let sha = String(repeating: "ab", count: 32)
        let yaml = Self.configBase + """

            tenants:
              acme: {plan: pro, api_keys: [{id: bot, sha256: \(sha), scopes: [a]}, {id: bot2, sha256: \(sha.uppercased())}]}
              beta: {plan: pro, api_keys: [{id: k, sha256: \(sha), roles: [admin]}, {id: k, sha256: \(String(repeating: "0", count: 64))}, {id: k, sha256: \(String(repeating: "1", count: 64))}]}
            routes:
              - {name: w, match: {path_prefix: /w}, upstream: u}
            """
        let found = problems(["gw.yaml": yaml])
        #expect(found.filter { $0.contains("already the key of tenant 'acme' (id 'bot')") }.count == 2, Comment(rawValue: "\(found)"))
        #expect(found.contains { $0.contains("tenant 'beta' has two api keys with id 'k'") }, Comment(rawValue: "\(found)"))
        let many = (0...TenantRecord.maxAPIKeys).map { i in
            "{id: k\(i), sha256: \(String(repeating: "0", count: 60) + String(format: "%04x", i))}"
        }.joined(separator: ", ")
        let crowded = Self.configBase + """

            tenants:
              acme: {plan: pro, api_keys: [\(many)]}
            routes:
              - {name: w, match: {path_prefix: /w}, upstream: u}
            """
        #expect(problems(["gw.yaml": crowded]).contains { $0.contains("has 1001 api keys; at most 1000") })
    }

    @Test func configRefusesScopesThatCouldNeverBeChecked() {
        let sha = String(repeating: "ab", count: 32)
        let yaml = Self.configBase + """

            tenants:
              acme: {plan: pro, api_keys: [{id: bot, sha256: \(sha), scopes: ["a b"], roles: ["r,s"], colour: red}]}
            routes:
              - {name: opt, match: {path_prefix: /o}, upstream: u, auth: optional, scopes: [s]}
              - {name: pub, match: {path_prefix: /p}, upstream: u, auth: none, scopes: [s]}
              - {name: empty, match: {path_prefix: /e}, upstream: u, scopes: []}
              - {name: spaced, match: {path_prefix: /s}, upstream: u, scopes: ["a b", "q\\"x"]}
              - {name: scalar, match: {path_prefix: /c}, upstream: u, scopes: s}
            """
        let p = problems(["gw.yaml": yaml])
        #expect(p.contains { $0.contains("route 'opt': scopes need auth: required (auth is optional)") }, Comment(rawValue: "\(p)"))
        #expect(p.contains { $0.contains("route 'pub': scopes need auth: required (auth is none)") })
        #expect(p.contains { $0.contains("route 'empty': scopes must list at least one scope") })
        #expect(p.contains { $0.contains("route 'spaced' scopes: 'a b' is not a scope") })
        #expect(p.contains { $0.contains("route 'spaced' scopes: 'q\"x' is not a scope") })
        #expect(p.contains { $0.contains("route 'scalar' scopes") })
        #expect(p.contains { $0.contains("api key 'bot' scopes: 'a b' is not a scope") })
        #expect(p.contains { $0.contains("'r,s' is not a role name") })
        #expect(p.contains { $0.contains("colour") })
        let tooMany = Self.configBase + """

            routes:
              - {name: many, match: {path_prefix: /m}, upstream: u, scopes: [\((0...Scopes.maxCount).map { "s\($0)" }.joined(separator: ", "))]}
            """
        #expect(problems(["gw.yaml": tooMany]).contains { $0.contains("at most \(Scopes.maxCount) scopes") })
        let badClaim = Self.configBase.replacingOccurrences(of: "scopes_claim: ext.perms", with: "scopes_claim: \"\"") + """

            routes: []
            """
        #expect(problems(["gw.yaml": badClaim]).contains { $0.contains("scopes_claim") })
    }

    @Test func scopeTokens() {
        for good in ["a", "orders:write", "https://api.example.com/read", "!#[]~", String(repeating: "z", count: 128)] {
            #expect(Scopes.isScope(good), Comment(rawValue: good))
        }
        for bad in ["", "a b", "a\"b", "a\\b", "\u{7f}", "é", "a\tb", String(repeating: "z", count: 129)] {
            #expect(!Scopes.isScope(bad), Comment(rawValue: bad))
        }
    }
}

extension Result where Failure == Denial {
    /// The denial's code, or nil when it succeeded.
    var failureCode: String? {
        if case .failure(let d) = self { return d.code }
        return nil
    }
}
