import Foundation
import Testing

@testable import Policy

/// Pure identity logic with an injected clock: no sockets, no sleeping.
@Suite struct IdentityUnitTests {
    static let secret = "unit-test-secret-0123456789abcdef0123456789"
    static let t0 = 1_800_000_000.0

    static func verifier(leeway: String = "30s") throws -> JWTVerifier {
        var identity = IdentityConfig()
        var issuer = IssuerConfig(issuer: "https://unit/")
        issuer.algorithms = ["HS256"]
        issuer.audiences = ["api"]
        issuer.secretEnv = "UNIT_SECRET"
        issuer.tenantClaim = "org.id"
        issuer.leeway = Units.parseDuration(leeway)!
        identity.issuers = [issuer]
        return try JWTVerifier(config: identity, environment: ["UNIT_SECRET": secret])
    }

    static func token(_ claims: [String: Any]) -> String {
        try! JWTSigner.sign(claims: claims, algorithm: "HS256", key: Array(secret.utf8))
    }

    static func claims(exp: Double = t0 + 60, extra: [String: Any] = [:]) -> [String: Any] {
        var c: [String: Any] = ["iss": "https://unit/", "aud": ["x", "api"], "sub": "u", "exp": exp, "org": ["id": "acme"]]
        for (k, v) in extra { c[k] = v }
        return c
    }

    @Test func expiryAndNotBeforeWithLeewayOnAnInjectedClock() throws {
        let v = try Self.verifier()
        let t = Self.token(Self.claims(exp: Self.t0, extra: ["nbf": Self.t0 - 100]))
        #expect(try v.verify(t, now: Self.t0).get().tenant == "acme")  // dotted tenant claim
        #expect((try? v.verify(t, now: Self.t0 + 29).get()) != nil)
        #expect(throws: JWTError.self) { try v.verify(t, now: Self.t0 + 31).get() }
        let early = Self.token(Self.claims(extra: ["nbf": Self.t0 + 40]))
        #expect(throws: JWTError.self) { try v.verify(early, now: Self.t0).get() }
        #expect((try? v.verify(early, now: Self.t0 + 11).get()) != nil)
        let fractional = Self.token(Self.claims(exp: Self.t0 + 0.5))
        #expect((try? v.verify(fractional, now: Self.t0).get()) != nil)
    }

    @Test func base64urlIsStrict() {
        #expect(Base64URL.decode("AQAB".utf8) == [1, 0, 1])
        #expect(Base64URL.decode("AQ".utf8) == [1])
        #expect(Base64URL.decode("AR".utf8) == nil)  // non-canonical: unused bits set
        #expect(Base64URL.decode("AQ==".utf8) == nil)  // padding
        #expect(Base64URL.decode("A+/B".utf8) == nil)  // standard alphabet
        #expect(Base64URL.decode("A".utf8) == nil)
        #expect(Base64URL.encode([0xfb, 0xff]) == "-_8")
    }

    @Test func constantTimeEqualNeedsTheSameLengthAndBytes() {
        let secret = Array("s3cret-token".utf8)
        #expect(Digest.constantTimeEqual(secret, Array("s3cret-token".utf8)))
        #expect(!Digest.constantTimeEqual(secret, Array("s3cret-tokeN".utf8)))
        #expect(!Digest.constantTimeEqual(secret, Array("s3cret".utf8)))  // a prefix
        #expect(!Digest.constantTimeEqual(secret, secret + [0]))  // the secret and a NUL
        #expect(!Digest.constantTimeEqual(secret, []))
        #expect(Digest.constantTimeEqual([], []))
    }

    @Test func tokenCacheHonoursExpiryOnTheInjectedClock() throws {
        let v = try Self.verifier(leeway: "0s")
        let cache = TokenCache(capacity: 2)
        let t = Self.token(Self.claims(exp: Self.t0 + 10))
        var calls = 0
        func check(_ now: Double) -> Bool {
            (try? cache.verify(t, now: now, leeway: { _ in 0 }) {
                calls += 1
                return v.verify($0, now: now)
            }.get()) != nil
        }
        #expect(check(Self.t0))
        #expect(check(Self.t0 + 5))
        #expect(calls == 1)
        #expect(!check(Self.t0 + 11))  // the cached entry expired with the token
        #expect(calls == 2)
        for i in 0..<5 { _ = cache.verify(Self.token(Self.claims(extra: ["n": i])), now: Self.t0, leeway: { _ in 0 }) { v.verify($0, now: Self.t0) } }
        #expect(cache.count <= 2)
    }

    @Test func resolverRules() throws {
        var identity = IdentityConfig()
        identity.headerTenancy = .always
        let tenants = ["acme": TenantRecord(plan: "pro"), "globex": TenantRecord(plan: "free")]
        let resolver = IdentityResolver(config: identity, tenants: StaticTenantRecords(tenants))
        var route = RouteConfig(name: "r", pathPrefix: "/", upstream: "u")
        route.auth = .optional
        let anonymousHeader = IdentityResolver.Input(authorization: [], apiKey: [], tenantHeader: ["globex"])
        let ok = try resolver.resolve(anonymousHeader, route: route) { _ in .failure(.signature) }.get()
        #expect(ok.tenant == "globex")
        #expect(ok.plan == "free")
        let token = VerifiedToken(issuer: "i", user: "u", tenant: "acme", roles: ["r"], expiresAt: 0)
        let withToken = IdentityResolver.Input(authorization: ["bearer  abc "], apiKey: [], tenantHeader: [])
        var seen = ""
        let c = try resolver.resolve(withToken, route: route) { seen = $0; return .success(token) }.get()
        #expect(seen == "abc")
        #expect(c.tenant == "acme")
        #expect(IdentityResolver.bearerToken("Basic abc") == nil)
    }
}
