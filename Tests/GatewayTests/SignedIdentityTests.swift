import Foundation
import Policy
import Testing

/// Live: `identity.sign_headers`: the upstream's `Gatehouse-Signature` recomputed by the test from the SPEC's
/// canonical string; a client-sent one never reaches an upstream, signed or not; a missing or short key refuses to
/// start.
@Suite(.serialized) struct SignedIdentityTests {
    static let apiKey = "gh_signed_identity_key"
    static let signingKey = "0123456789abcdef0123456789abcdef-signing"

    static func config(upstream: Int, sign: Bool) -> String {
        """
        server: {listen: 127.0.0.1:0, admin_listen: 127.0.0.1:0, admin_token_env: GH_TEST_ADMIN_TOKEN, threads: 1}
        identity:
          header_tenancy: api_key_only
        \(sign ? "  sign_headers: {key_env: GH_TEST_SIGN_KEY}" : "")
        plans: {pro: {features: [core]}}
        tenants:
          acme: {plan: pro, api_keys: [{id: k1, sha256: \(Digest.hex(Digest.sha256(apiKey.utf8)))}]}
        upstreams:
          app: {targets: [127.0.0.1:\(upstream)]}
        routes:
          - {name: api, match: {path_prefix: /api}, upstream: app, auth: required, strip_prefix: /api, rate_limits: []}
          - {name: open, match: {path_prefix: /open}, upstream: app, auth: none}
        """
    }

    @Test func theUpstreamCanRecomputeTheSignatureFromTheCanonicalString() throws {
        let up = try TestUpstream()
        defer { up.stop() }
        let gw = try GatewayProcess(
            yaml: Self.config(upstream: up.port, sign: true),
            environment: ["GH_TEST_ADMIN_TOKEN": "adm", "GH_TEST_SIGN_KEY": Self.signingKey])
        defer { _ = gw.stop() }
        let before = Int(Date().timeIntervalSince1970)
        let r = try request(
            port: gw.port, "POST", "/api/items/7?expand=owner&x=1",
            headers: [("X-API-Key", Self.apiKey), ("gatehouse-signature", "t=1,v1=forged"), ("X-Roles", "admin")],
            body: "{}")
        #expect(r.status == 200)
        let after = Int(Date().timeIntervalSince1970)
        let got = try #require(up.requests.last)
        let signatures = got.headers("Gatehouse-Signature")
        #expect(signatures.count == 1)
        let value = try #require(signatures.first)
        #expect(!value.contains("forged"))
        // t=<unix seconds>,v1=<hex>, recomputed from what the upstream itself received.
        let parts = Dictionary(uniqueKeysWithValues: value.split(separator: ",").map {
            let kv = $0.split(separator: "=", maxSplits: 1)
            return (String(kv[0]), String(kv.count > 1 ? kv[1] : ""))
        })
        let t = try #require(parts["t"].flatMap { Int($0) })
        #expect(t >= before && t <= after)
        let canonical =
            "\(t)\n\(got.header("X-Request-ID") ?? "")\nPOST\n/items/7?expand=owner&x=1\n\(got.header("X-Tenant-ID") ?? "")\n"
            + "\(got.header("X-User-ID") ?? "")\n\(got.header("X-Plan") ?? "")\n\(got.header("X-Roles") ?? "")\n"
        let expected = Digest.hex(Digest.hmacSHA256(key: Array(Self.signingKey.utf8), message: Array(canonical.utf8)))
        #expect(parts["v1"] == expected)
        #expect(got.uri == "/items/7?expand=owner&x=1")
        #expect(got.header("X-Tenant-ID") == "acme" && got.header("X-Plan") == "pro")
        #expect(got.header("X-Roles") == nil)  // absent: an empty line in the canonical string
        #expect(got.header("X-Request-ID") == r.header("X-Request-ID"))
        // The same string in the library form the README's verifiers follow.
        #expect(
            IdentitySignature.canonical(
                time: t, requestID: got.header("X-Request-ID") ?? "", method: "POST", target: got.uri, tenant: "acme",
                user: got.header("X-User-ID"), plan: "pro", roles: nil) == canonical)
        // The README's Python verifier, run as written on what the upstream received.
        #expect(try Self.readmeVerifier(got.headers, method: "POST", target: got.uri) == "True")
        #expect(try Self.readmeVerifier(got.headers, method: "POST", target: "/items/8?expand=owner&x=1") == "False")
        // A request without identity is signed too (its identity lines empty), so an upstream can insist on one.
        #expect(try request(port: gw.port, "GET", "/open/x").status == 200)
        let open = try #require(up.requests.last)
        let v = try #require(open.header("Gatehouse-Signature"))
        let t2 = try #require(v.split(separator: ",").first.flatMap { Int($0.dropFirst(2)) })
        let c2 = "\(t2)\n\(open.header("X-Request-ID") ?? "")\nGET\n/open/x\n\n\n\n\n"
        #expect(v == "t=\(t2),v1=" + Digest.hex(Digest.hmacSHA256(key: Array(Self.signingKey.utf8), message: Array(c2.utf8))))
    }

    /// Runs the README's Python `verify` (the code block that starts `import hashlib, hmac, time`) on `headers`.
    static func readmeVerifier(_ headers: [(String, String)], method: String, target: String) throws -> String {
        let readme = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("README.md")
        let text = try String(contentsOf: readme, encoding: .utf8)
        guard let start = text.range(of: "```python\nimport hashlib, hmac, time\n"),
            let end = text.range(of: "```", range: start.upperBound..<text.endIndex)
        else { throw RawClientError(description: "the README's Python verifier was not found") }
        let code = String(text[start.upperBound..<end.lowerBound])
        let values = Dictionary(headers.map { ($0.0, $0.1) }, uniquingKeysWith: { a, _ in a })
        let json = String(decoding: try JSONSerialization.data(withJSONObject: values), as: UTF8.self)
        let script = "import hashlib, hmac, time\n" + code + "\nimport json, sys\nprint(verify(json.loads(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4].encode()))\n"
        let result = try runProcess("/usr/bin/env", ["python3", "-c", script, json, method, target, signingKey])
        return String(decoding: result.out, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
    }

    @Test func aClientSentSignatureIsRemovedEvenWhenTheGatewayDoesNotSign() throws {
        let up = try TestUpstream()
        defer { up.stop() }
        let gw = try GatewayProcess(yaml: Self.config(upstream: up.port, sign: false), environment: ["GH_TEST_ADMIN_TOKEN": "adm"])
        defer { _ = gw.stop() }
        for name in ["Gatehouse-Signature", "GATEHOUSE-SIGNATURE", "gatehouse-signature"] {
            #expect(try request(port: gw.port, "GET", "/open/s", headers: [(name, "t=1,v1=abc")]).status == 200)
            #expect(up.requests.last?.headers("gatehouse-signature") == [])
        }
    }

    @Test(arguments: [nil, "too-short"])
    func aMissingOrShortKeyRefusesToStart(key: String?) throws {
        let up = try TestUpstream()
        defer { up.stop() }
        var env = ["GH_TEST_ADMIN_TOKEN": "adm"]
        if let key { env["GH_TEST_SIGN_KEY"] = key }
        do {
            let gw = try GatewayProcess(yaml: Self.config(upstream: up.port, sign: true), environment: env)
            _ = gw.stop()
            Issue.record("the gateway started without a usable signing key")
        } catch {
            #expect("\(error)".contains("GH_TEST_SIGN_KEY must hold at least 32 bytes"), Comment(rawValue: "\(error)"))
        }
    }
}
