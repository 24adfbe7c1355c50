import Foundation
import Synchronization

/// Why a token was refused. Every case becomes 401 `unauthenticated`; the detail says which check failed.
public struct JWTError: Error, Sendable, Equatable, CustomStringConvertible {
    private enum Code: String, Sendable {
        case malformed, tooLarge = "too_large", algorithm, unknownIssuer = "unknown_issuer", unknownKey = "unknown_key"
        case signature, expired, notYetValid = "not_yet_valid", issuedInFuture = "issued_in_future"
        case missingExpiry = "missing_exp", audience, badClaim = "bad_claim"
    }
    private let code: Code
    public let detail: String
    /// For `unknown_key`: the (configured) issuer whose key set has no key for the token, so a remote key set
    /// can be fetched again at once.
    public let keyMissingFor: String?
    private init(_ code: Code, _ detail: String, issuer: String? = nil) {
        self.code = code
        self.detail = detail
        self.keyMissingFor = issuer
    }
    public var name: String { code.rawValue }
    public var description: String { "\(code.rawValue): \(detail)" }

    /// The verifier's checks, in the order ``JWTVerifier/verify(_:now:)`` makes them (the header's own `alg` and
    /// `crit` are read with the format, before the issuer).
    public static let checks = ["size", "format", "issuer", "alg", "key", "signature", "exp", "nbf", "iat", "aud", "claims"]

    /// The check (one of ``checks``) that refused the token.
    public var check: String {
        switch code {
        case .tooLarge: "size"
        case .malformed: "format"
        case .unknownIssuer: "issuer"
        case .algorithm: "alg"
        case .unknownKey: "key"
        case .signature: "signature"
        case .expired, .missingExpiry: "exp"
        case .notYetValid: "nbf"
        case .issuedInFuture: "iat"
        case .audience: "aud"
        case .badClaim: "claims"
        }
    }

    static func malformed(_ d: String) -> Self { .init(.malformed, d) }
    static let tooLarge = Self(.tooLarge, "the token is larger than \(JWTVerifier.maxTokenBytes) bytes")
    static func algorithm(_ d: String) -> Self { .init(.algorithm, d) }
    static let unknownIssuer = Self(.unknownIssuer, "the token's issuer is not trusted")
    static let unknownKey = Self(.unknownKey, "no key of this issuer matches the token's kid and algorithm")
    static func unknownKey(issuer: String) -> Self {
        .init(.unknownKey, "no key of this issuer matches the token's kid and algorithm", issuer: issuer)
    }
    static let signature = Self(.signature, "the signature does not verify")
    static let expired = Self(.expired, "the token has expired")
    static let notYetValid = Self(.notYetValid, "the token is not valid yet (nbf)")
    static let issuedInFuture = Self(.issuedInFuture, "the token was issued in the future (iat)")
    static let missingExpiry = Self(.missingExpiry, "the token has no numeric exp")
    static let audience = Self(.audience, "the token is not meant for this audience")
    static func badClaim(_ d: String) -> Self { .init(.badClaim, d) }
}

/// What a verified token says about its caller.
public struct VerifiedToken: Sendable, Equatable {
    public var issuer: String
    public var user: String?
    public var tenant: String?
    public var roles: [String]
    /// `exp`, in seconds since the epoch.
    public var expiresAt: Double
    /// The scopes it grants (``Scopes/granted(claims:path:)``: bounded, never a reason to refuse the token).
    public var scopes: [String] = []
}

/// Verifies JWTs against the configured issuers: pinned algorithms, per-issuer keys, claims checked here.
///
/// Every decision is made here, in order: the size cap, strict base64url, the header's `alg` against the
/// issuer's pinned list (exact, case-sensitive; `none` is never supported), a non-empty key of the right type
/// for that algorithm (an HS secret, or a parsed RSA/EC key chosen by `kid`), then the signature with OpenSSL
/// on the key parsed when the key set loaded (``PublicKey``; HMAC compared in constant time; ECDSA's JWS form
/// converted to DER), then `exp`, `nbf`, `iat`, `iss` and `aud` against an injected clock; then the identity
/// claims (user, tenant, roles, scopes). `jku`, `x5u` and embedded `jwk` headers are ignored: keys come from
/// config only.
public final class JWTVerifier: Sendable {
    public static let maxTokenBytes = 8192
    public static let supported: Set<String> = ["HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "ES256", "ES384", "ES512"]

    final class IssuerKeys: Sendable {
        let config: IssuerConfig
        /// The HS* secret, keyed once.
        let secret: HMACKey?
        let keys: Mutex<JWKSet>

        init(config: IssuerConfig, secret: HMACKey?, keys: JWKSet) {
            self.config = config
            self.secret = secret
            self.keys = Mutex(keys)
        }
    }

    let issuers: [String: IssuerKeys]

    /// Loads every issuer's key material. Reads files and the environment: call off the event loops.
    public init(
        config: IdentityConfig, environment: [String: String] = ProcessInfo.processInfo.environment,
        baseDirectory: String = ""
    ) throws(ConfigError) {
        var issuers: [String: IssuerKeys] = [:]
        var problems: [ConfigProblem] = []
        func fail(_ message: String) {
            problems.append(ConfigProblem(file: "identity", line: 0, column: 0, message: message))
        }
        func resolve(_ path: String) -> String {
            path.hasPrefix("/") || baseDirectory.isEmpty ? path : baseDirectory + "/" + path
        }
        for issuer in config.issuers {
            var secret: [UInt8]? = nil
            var keys = JWKSet(keys: [])
            if let env = issuer.secretEnv {
                if let value = environment[env], !value.isEmpty {
                    secret = Array(value.utf8)
                } else {
                    fail("issuer \(issuer.issuer): environment variable \(env) is not set or empty")
                }
            }
            if let file = issuer.secretFile {
                if let data = FileManager.default.contents(atPath: resolve(file)) {
                    var bytes = [UInt8](data)
                    while let last = bytes.last, last == 10 || last == 13 { bytes.removeLast() }
                    if bytes.isEmpty { fail("issuer \(issuer.issuer): secret file \(file) is empty") } else { secret = bytes }
                } else {
                    fail("issuer \(issuer.issuer): cannot read secret file \(file)")
                }
            }
            if let secret, secret.count < 32 {
                fail("issuer \(issuer.issuer): an HS secret must be at least 32 bytes (got \(secret.count))")
            }
            if let file = issuer.jwksFile {
                do {
                    guard let data = FileManager.default.contents(atPath: resolve(file)) else {
                        throw JWKError("cannot read \(file)")
                    }
                    keys = try JWKSet.parse(jwks: data)
                } catch {
                    fail("issuer \(issuer.issuer): jwks_file: \(error)")
                }
            }
            if let file = issuer.publicKeyFile {
                do {
                    guard let data = FileManager.default.contents(atPath: resolve(file)) else {
                        throw JWKError("cannot read \(file)")
                    }
                    keys.keys += try JWKSet.parse(pemFile: String(decoding: data, as: UTF8.self)).keys
                } catch {
                    fail("issuer \(issuer.issuer): public_key_file: \(error)")
                }
            }
            if issuers[issuer.issuer] != nil { fail("issuer \(issuer.issuer) is configured twice") }
            var hmac: HMACKey? = nil
            if let secret {
                hmac = HMACKey(secret: secret)
                if hmac == nil { fail("issuer \(issuer.issuer): OpenSSL could not key HMAC with the secret") }
            }
            issuers[issuer.issuer] = IssuerKeys(config: issuer, secret: hmac, keys: keys)
        }
        if !problems.isEmpty { throw ConfigError(problems: problems) }
        self.issuers = issuers
    }

    /// An issuer's current key set.
    public func keys(issuer: String) -> JWKSet? {
        issuers[issuer]?.keys.withLock { $0 }
    }

    /// Replaces an issuer's key set (a refreshed `jwks_url`).
    public func updateKeys(issuer: String, _ keys: JWKSet) {
        issuers[issuer]?.keys.withLock { $0 = keys }
    }

    /// Verifies `token` at time `now` (seconds since the epoch).
    public func verify(_ token: String, now: Double) -> Result<VerifiedToken, JWTError> {
        let bytes = Array(token.utf8)
        guard bytes.count <= Self.maxTokenBytes else { return .failure(.tooLarge) }
        let parts = bytes.split(separator: UInt8(ascii: "."), omittingEmptySubsequences: false)
        guard parts.count == 3, !parts[0].isEmpty, !parts[1].isEmpty else {
            return .failure(.malformed("a JWS has three dot-separated parts"))
        }
        guard let headerBytes = Base64URL.decode(parts[0]), let payloadBytes = Base64URL.decode(parts[1]),
            let signature = Base64URL.decode(parts[2])
        else { return .failure(.malformed("invalid base64url")) }
        guard case .object(let header)? = JSONValue.parse(headerBytes), case .object(let claims)? = JSONValue.parse(payloadBytes)
        else {
            return .failure(.malformed("header and payload must be JSON objects"))
        }
        guard let alg = header["alg"]?.string else { return .failure(.algorithm("the header has no alg")) }
        if header["crit"] != nil { return .failure(.algorithm("critical header extensions are not supported")) }
        guard let iss = claims["iss"]?.string, let issuer = issuers[iss] else { return .failure(.unknownIssuer) }
        let config = issuer.config
        guard config.algorithms.contains(alg) else {
            return .failure(.algorithm("algorithm '\(alg)' is not accepted for this issuer"))
        }
        guard !signature.isEmpty, let hash = JWSHash(algorithm: alg) else { return .failure(.signature) }
        // The signing input: the token up to its second dot.
        let signingInput = parts[0].count + 1 + parts[1].count
        let verified: Bool
        if alg.hasPrefix("HS") {
            guard let secret = issuer.secret else { return .failure(.unknownKey) }
            verified = bytes.withUnsafeBytes { all in
                JWSSignature.verifyHMAC(
                    UnsafeRawBufferPointer(rebasing: all[0..<signingInput]), signature: signature, key: secret, hash: hash)
            }
        } else {
            let kid = header["kid"]?.string
            if header["kid"] != nil && kid == nil { return .failure(.malformed("kid must be a string")) }
            guard let key = issuer.keys.withLock({ $0.key(kid: kid, algorithm: alg) }) else {
                return .failure(.unknownKey(issuer: iss))
            }
            var sig = signature
            if let width = JWSSignature.ecdsaWidth(alg) {
                guard let der = JWSSignature.ecdsaDER(signature, width: width) else { return .failure(.signature) }
                sig = der
            }
            verified = bytes.withUnsafeBytes { all in
                key.publicKey.verify(UnsafeRawBufferPointer(rebasing: all[0..<signingInput]), signature: sig, hash: hash)
            }
        }
        guard verified else { return .failure(.signature) }

        // Claims, against the injected clock.
        let leeway = Double(config.leeway) / 1e9
        guard let exp = claims["exp"]?.number else { return .failure(.missingExpiry) }
        if now > exp + leeway { return .failure(.expired) }
        if let raw = claims["nbf"] {
            guard let nbf = raw.number else { return .failure(.badClaim("nbf must be a number")) }
            if now + leeway < nbf { return .failure(.notYetValid) }
        }
        if let raw = claims["iat"] {
            guard let iat = raw.number else { return .failure(.badClaim("iat must be a number")) }
            if iat > now + leeway { return .failure(.issuedInFuture) }
        }
        if !config.audiences.isEmpty {
            let aud: [String]
            if let one = claims["aud"]?.string {
                aud = [one]
            } else if case .array(let many)? = claims["aud"] {
                aud = many.compactMap(\.string)
            } else {
                return .failure(.audience)
            }
            guard aud.contains(where: config.audiences.contains) else { return .failure(.audience) }
        }

        // Identity claims: what would become header values must be valid header values.
        var result = VerifiedToken(issuer: iss, user: nil, tenant: nil, roles: [], expiresAt: exp)
        if let raw = Self.claim(claims, path: config.userClaim) {
            guard let user = raw.string, Self.isHeaderSafe(user, max: 256) else {
                return .failure(.badClaim("\(config.userClaim) must be a printable string of at most 256 characters"))
            }
            result.user = user
        }
        if let raw = Self.claim(claims, path: config.tenantClaim) {
            guard let tenant = raw.string, TenantID.isValid(tenant) else {
                return .failure(.badClaim("\(config.tenantClaim) is not a valid tenant id"))
            }
            result.tenant = tenant
        }
        if let raw = Self.claim(claims, path: config.rolesClaim) {
            let roles: [String]
            if case .array(let list) = raw {
                roles = list.compactMap(\.string)
                if roles.count != list.count { return .failure(.badClaim("roles must be strings")) }
            } else if let text = raw.string {
                roles = text.split(separator: " ").map(String.init)
            } else {
                return .failure(.badClaim("roles must be an array or a space-separated string"))
            }
            guard roles.count <= TenantRecord.maxRoles, roles.allSatisfy(TenantRecord.isRoleName)
            else { return .failure(.badClaim("roles must be at most 64 names of A-Z a-z 0-9 . _ - :")) }
            result.roles = roles
        }
        // Scopes of an unexpected shape grant nothing rather than refuse the token: a route that needs a scope
        // answers 403 `insufficient_scope`, every other route is unaffected.
        result.scopes = Scopes.granted(claims: claims, path: config.scopesClaim)
        return .success(result)
    }

    // MARK: Helpers

    /// A claim by exact name, else by dotted path into nested objects.
    static func claim(_ claims: [String: JSONValue], path: String) -> JSONValue? {
        if let direct = claims[path] { return direct }
        var current: JSONValue? = .object(claims)
        for part in path.split(separator: ".") {
            guard case .object(let object)? = current else { return nil }
            current = object[String(part)]
        }
        return current == .null ? nil : current
    }

    /// Printable ASCII without control characters, 1...max bytes.
    public static func isHeaderSafe(_ value: String, max: Int) -> Bool {
        let u = value.utf8
        return !u.isEmpty && u.count <= max && u.allSatisfy { $0 >= 0x20 && $0 < 0x7F }
    }
}
