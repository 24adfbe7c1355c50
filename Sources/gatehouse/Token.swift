import ArgumentParser
import Foundation
import Policy

/// `gatehouse token`: prints a signed JWT for development and load tests.
struct Token: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Print a signed JWT for development and load tests.")

    @Option(help: "The tenant the token names.") var tenant: String
    @Option(help: "The subject (user id).") var sub: String = "dev-user"
    @Option(help: "Comma-separated roles.") var roles: String = ""
    @Option(
        help: "Space-separated scopes, e.g. \"orders:read orders:write\": a string in the issuer's scopes_claim (default: scope).")
    var scope: String?
    @Option(help: "Lifetime: 30s, 15m, 1h, 7d.") var ttl: String = "1h"
    @Option(name: .customLong("secret-env"), help: "Environment variable holding the HS256 secret.") var secretEnv: String?
    @Option(help: "PEM private key file (RSA -> RS256, EC -> ES256).") var key: String?
    @Option(help: "Signing algorithm; default HS256 with --secret-env, RS256/ES256 from the key type.") var alg: String?
    @Option(help: "iss claim; default: the config's only issuer, else 'gatehouse'.") var issuer: String?
    @Option(help: "aud claim; default: the issuer's first audience, if any.") var audience: String?
    @Option(help: "kid header.") var kid: String?
    @Option(help: "Claim that carries the tenant (dotted path allowed); default: the issuer's tenant_claim.")
    var tenantClaim: String?
    @Option(help: "A config to read the issuer's claim names and audience from.") var config: String?

    func validate() throws {
        guard (secretEnv == nil) != (key == nil) else {
            throw ValidationError("give exactly one of --secret-env or --key")
        }
        guard TenantID.isValid(tenant) else { throw ValidationError("--tenant must be 1-64 of A-Z a-z 0-9 . _ -") }
        guard Units.parseDuration(ttl) != nil else { throw ValidationError("--ttl must be a duration like 1h") }
        if let scope, !scope.split(separator: " ").allSatisfy({ Scopes.isScope(String($0)) }) {
            throw ValidationError("--scope: each scope is 1-\(Scopes.maxBytes) bytes of printable ASCII, no \" or \\")
        }
    }

    func run() throws {
        // Claim names and audience: from the issuer in --config when given.
        var issuerConfig: IssuerConfig? = nil
        if let path = config ?? (FileManager.default.fileExists(atPath: "config/gateway.yaml") ? "config/gateway.yaml" : nil),
            let loaded = try? ConfigLoader().load(path: path)
        {
            let issuers = loaded.identity.issuers
            issuerConfig = issuers.first { $0.issuer == issuer } ?? (issuer == nil && issuers.count == 1 ? issuers[0] : nil)
        }
        let iss = issuer ?? issuerConfig?.issuer ?? "gatehouse"
        let now = Int(Date().timeIntervalSince1970)
        var claims: [String: Any] = ["iss": iss, "sub": sub, "iat": now, "exp": now + Int(Units.parseDuration(ttl)! / 1_000_000_000)]
        if let aud = audience ?? issuerConfig?.audiences.first { claims["aud"] = aud }
        let tenantPaths = tenantClaim.map { [$0] } ?? issuerConfig.map { [$0.tenantClaim] } ?? ["tenant", "org_id"]
        for path in tenantPaths { set(&claims, path: path, tenant) }
        let roleList = roles.split(separator: ",").map(String.init)
        if !roleList.isEmpty { claims[issuerConfig?.rolesClaim ?? "roles"] = roleList }
        if let scope { set(&claims, path: issuerConfig?.scopesClaim ?? "scope", scope) }

        let keyBytes: [UInt8]
        let algorithm: String
        if let env = secretEnv {
            guard let secret = ProcessInfo.processInfo.environment[env], !secret.isEmpty else {
                throw ValidationError("environment variable \(env) is not set")
            }
            keyBytes = Array(secret.utf8)
            algorithm = alg ?? "HS256"
        } else {
            guard let data = FileManager.default.contents(atPath: key!) else { throw ValidationError("cannot read \(key!)") }
            keyBytes = [UInt8](data)
            let pem = String(decoding: data, as: UTF8.self)
            algorithm = alg ?? (pem.contains("EC PRIVATE KEY") || pem.contains("BEGIN PRIVATE KEY") && Self.isEC(pem) ? "ES256" : "RS256")
        }
        print(try JWTSigner.sign(claims: claims, algorithm: algorithm, key: keyBytes, kid: kid))
    }

    /// A PKCS#8 key holds the id-ecPublicKey OID when it is an EC key.
    static func isEC(_ pem: String) -> Bool {
        let body = pem.split(separator: "\n").filter { !$0.hasPrefix("-----") }.joined()
        guard let der = Data(base64Encoded: body) else { return false }
        let oid: [UInt8] = [0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x02, 0x01]
        let bytes = [UInt8](der)
        return bytes.count >= oid.count && (0...(bytes.count - oid.count)).contains { bytes[$0..<$0 + oid.count].elementsEqual(oid) }
    }

    private func set(_ claims: inout [String: Any], path: String, _ value: String) {
        let parts = path.split(separator: ".").map(String.init)
        guard parts.count > 1 else {
            claims[path] = value
            return
        }
        var nested = claims[parts[0]] as? [String: Any] ?? [:]
        set(&nested, path: parts.dropFirst().joined(separator: "."), value)
        claims[parts[0]] = nested
    }
}
