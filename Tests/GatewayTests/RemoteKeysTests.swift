import Foundation
import Logging
import NIOCore
import NIOPosix
import Policy
import Testing

@testable import Gateway

/// Key sets over HTTPS: `jwks_url` and OpenID discovery from an identity provider behind TLS (the test upstream
/// with a certificate from a test CA), and the early refetch for an unknown `kid`.
@Suite(.serialized) struct RemoteKeysTests {
    static let keys = IdentityTests.keys

    static func keySet(_ kinds: Set<String>) -> String {
        let object = try! JSONSerialization.jsonObject(with: Data(keys.jwks.utf8)) as! [String: Any]
        let kept = (object["keys"] as! [[String: Any]]).filter { kinds.contains($0["kty"] as! String) }
        return String(decoding: try! JSONSerialization.data(withJSONObject: ["keys": kept]), as: UTF8.self)
    }

    /// An identity provider on HTTPS (127.0.0.1, certificate from CA `idp`), and the config trusting it.
    static func provider() throws -> (certs: TestCerts, idp: TestUpstream, issuer: String) {
        let certs = try TestCerts()
        try certs.makeCA("idp")
        try certs.makeLeaf("idp-server", ca: "idp", sans: ["IP:127.0.0.1"])
        let idp = try TestUpstream(tls: try certs.serverContext("idp-server"))
        return (certs, idp, "https://127.0.0.1:\(idp.port)/")
    }

    static func config(app: Int, issuer: String, keys: String) -> String {
        """
        server: {listen: 127.0.0.1:0, threads: 1}
        identity:
          jwt:
            issuers:
              - {issuer: "\(issuer)", audiences: [api], algorithms: [RS256, ES256], tenant_claim: org_id, \(keys)}
        tenants:
          acme: {plan: free}
        plans:
          free: {features: [core]}
        upstreams:
          app: {targets: [127.0.0.1:\(app)]}
        routes:
          - {name: api, match: {path_prefix: /api}, upstream: app, auth: required}
        """
    }

    func get(_ gw: GatewayProcess, _ token: String) throws -> RawResponse {
        try request(port: gw.port, "GET", "/api/x", headers: [("Authorization", "Bearer \(token)")])
    }

    @Test func discoveryOverHTTPSFindsTheKeySet() throws {
        let (certs, idp, issuer) = try Self.provider()
        defer { idp.stop() }
        let app = try TestUpstream()
        defer { app.stop() }
        idp.discovery.withLock { $0 = #"{"issuer":"\#(issuer)","jwks_uri":"\#(issuer)keys/jwks.json"}"# }
        idp.jwks.withLock { $0 = Self.keys.jwks }
        let gw = try GatewayProcess(
            yaml: Self.config(app: app.port, issuer: issuer, keys: "discovery: true, ca_file: \(certs.path("idp.pem"))"))
        defer { gw.stop() }
        let token = Tok.signed(Tok.claims(iss: issuer), alg: "RS256", pem: Self.keys.rsaPrivate, kid: "rsa-1")
        #expect(try get(gw, token).status == 200)
        #expect(idp.discoveryFetches.load(ordering: .relaxed) == 1)
        #expect(idp.jwksFetches.load(ordering: .relaxed) == 1)
        #expect(app.requests.count == 1)
    }

    @Test func aDiscoveryDocumentForAnotherIssuerOrPointingToPlainHTTPIsRefused() throws {
        let (certs, idp, issuer) = try Self.provider()
        defer { idp.stop() }
        let app = try TestUpstream()
        defer { app.stop() }
        idp.jwks.withLock { $0 = Self.keys.jwks }
        let plainKeys = "http://127.0.0.1:\(app.port)/jwks.json"
        app.jwks.withLock { $0 = Self.keys.jwks }
        let token = Tok.signed(Tok.claims(iss: issuer), alg: "RS256", pem: Self.keys.rsaPrivate, kid: "rsa-1")
        for document in [
            #"{"issuer":"https://evil.test/","jwks_uri":"\#(issuer)jwks.json"}"#,
            #"{"issuer":"\#(issuer)","jwks_uri":"\#(plainKeys)"}"#,
        ] {
            idp.discovery.withLock { $0 = document }
            let gw = try GatewayProcess(
                yaml: Self.config(app: app.port, issuer: issuer, keys: "discovery: true, ca_file: \(certs.path("idp.pem"))"))
            #expect(gw.log.contains { $0.contains("jwks fetch failed") })
            #expect(try get(gw, token).status == 401)
            gw.stop()
        }
        #expect(idp.jwksFetches.load(ordering: .relaxed) == 0)
        #expect(app.jwksFetches.load(ordering: .relaxed) == 0)
        #expect(app.requests.isEmpty)
    }

    @Test func anUntrustedProviderCertificateYieldsNoKeys() throws {
        let (_, idp, issuer) = try Self.provider()
        defer { idp.stop() }
        let app = try TestUpstream()
        defer { app.stop() }
        idp.jwks.withLock { $0 = Self.keys.jwks }
        // No ca_file: the system's trust store, which does not know the test CA.
        let gw = try GatewayProcess(yaml: Self.config(app: app.port, issuer: issuer, keys: "jwks_url: \"\(issuer)jwks.json\""))
        defer { gw.stop() }
        #expect(gw.log.contains { $0.contains("jwks fetch failed") })
        let token = Tok.signed(Tok.claims(iss: issuer), alg: "RS256", pem: Self.keys.rsaPrivate, kid: "rsa-1")
        let r = try get(gw, token)
        #expect(r.status == 401 && r.json["code"] as? String == "unauthenticated")
        #expect(idp.jwksFetches.load(ordering: .relaxed) == 0)  // never got past the handshake
        #expect(app.requests.isEmpty)
    }

    @Test func aRotatedKeyIsPickedUpAtOnceAndRandomKidsCostOneFetchPerCooldown() throws {
        let (certs, idp, issuer) = try Self.provider()
        defer { idp.stop() }
        let app = try TestUpstream()
        defer { app.stop() }
        idp.jwks.withLock { $0 = Self.keySet(["EC"]) }
        let keys = "jwks_url: \"\(issuer)jwks.json\", ca_file: \(certs.path("idp.pem")), jwks_refresh: 1h, jwks_refetch_cooldown: 1h"
        let gw = try GatewayProcess(yaml: Self.config(app: app.port, issuer: issuer, keys: keys))
        defer { gw.stop() }
        #expect(idp.jwksFetches.load(ordering: .relaxed) == 1)
        let es = Tok.signed(Tok.claims(iss: issuer), alg: "ES256", pem: Self.keys.ecPrivate, kid: "ec-1")
        #expect(try get(gw, es).status == 200)

        // The provider rotates in a new key; the first token signed with it waits for one refetch and passes.
        idp.jwks.withLock { $0 = Self.keys.jwks }
        let rs = Tok.signed(Tok.claims(iss: issuer), alg: "RS256", pem: Self.keys.rsaPrivate, kid: "rsa-1")
        #expect(try get(gw, rs).status == 200)
        #expect(idp.jwksFetches.load(ordering: .relaxed) == 2)

        // A flood of made-up kids within the cooldown: each refused at once, no further fetch.
        for i in 0..<20 {
            let forged = Tok.signed(Tok.claims(iss: issuer), alg: "RS256", pem: Self.keys.otherRSAPrivate, kid: "random-\(i)")
            let r = try get(gw, forged)
            #expect(r.status == 401)
        }
        #expect(idp.jwksFetches.load(ordering: .relaxed) == 2)
        #expect(try get(gw, rs).status == 200)
        #expect(app.requests.count == 3)
    }

    /// The cooldown, with time passed in: one refetch at a time (later askers wait for it), none within the
    /// cooldown after it, one again once it has passed.
    @Test func refetchCooldownWithAnInjectedClock() async throws {
        let idp = try TestUpstream()
        defer { idp.stop() }
        idp.jwks.withLock { $0 = Self.keys.jwks }
        var issuer = IssuerConfig(issuer: "https://cool.test/")
        issuer.algorithms = ["RS256"]
        issuer.jwksURL = "http://127.0.0.1:\(idp.port)/jwks.json"
        issuer.jwksRefetchCooldown = 30_000_000_000
        var identity = IdentityConfig()
        identity.issuers = [issuer]
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let refresher = try JWKSRefresher(
            config: identity, verifier: try JWTVerifier(config: identity), eventLoop: group.next(),
            logger: Logger(label: "test"), onUpdate: {})
        let t0 = NIODeadline.uptimeNanoseconds(1_000_000_000_000)
        let done = AsyncStream<Bool>.makeStream()
        #expect(refresher.keyMissing(issuer: "https://cool.test/", now: t0) { done.continuation.yield($0) })
        // Asked again while the first is running: waits for the same fetch.
        #expect(refresher.keyMissing(issuer: "https://cool.test/", now: t0) { done.continuation.yield($0) })
        var answers: [Bool] = []
        for await updated in done.stream {
            answers.append(updated)
            if answers.count == 2 { break }
        }
        #expect(answers == [true, true])
        #expect(idp.jwksFetches.load(ordering: .relaxed) == 1)
        #expect(!refresher.keyMissing(issuer: "https://cool.test/", now: t0 + .seconds(29)) { _ in })
        #expect(!refresher.keyMissing(issuer: "https://other.test/", now: t0) { _ in })
        #expect(refresher.keyMissing(issuer: "https://cool.test/", now: t0 + .seconds(30)) { done.continuation.yield($0) })
        for await _ in done.stream { break }
        #expect(idp.jwksFetches.load(ordering: .relaxed) == 2)
        try await group.shutdownGracefully()
    }
}
