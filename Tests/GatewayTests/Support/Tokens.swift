import Foundation
import Policy

/// Keys and token builders for the identity tests: real RSA and EC keys made with the openssl CLI, a JWKS
/// built from them, and tokens signed correctly or crafted to attack.
final class TestKeys: Sendable {
    let dir: URL
    let rsaPrivate: String
    let rsaPublic: String
    let ecPrivate: String
    let otherRSAPrivate: String
    let jwks: String
    static let hsSecret = "test-hs-secret-0123456789abcdef0123456789"

    init() throws {
        dir = FileManager.default.temporaryDirectory.appendingPathComponent("gh-keys-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        let openssl = runOpenSSL
        let rsa = dir.appendingPathComponent("rsa.pem").path
        let other = dir.appendingPathComponent("other.pem").path
        let ec = dir.appendingPathComponent("ec.pem").path
        _ = try openssl(["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", rsa])
        _ = try openssl(["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", other])
        _ = try openssl(["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", ec])
        rsaPrivate = try String(contentsOfFile: rsa, encoding: .utf8)
        otherRSAPrivate = try String(contentsOfFile: other, encoding: .utf8)
        ecPrivate = try String(contentsOfFile: ec, encoding: .utf8)
        rsaPublic = String(decoding: try openssl(["pkey", "-in", rsa, "-pubout"]), as: UTF8.self)
        let modulusLine = String(decoding: try openssl(["rsa", "-in", rsa, "-noout", "-modulus"]), as: UTF8.self)
        let hex = modulusLine.split(separator: "=")[1].trimmingCharacters(in: .whitespacesAndNewlines)
        var n = [UInt8]()
        var i = hex.startIndex
        while i < hex.endIndex {
            let j = hex.index(i, offsetBy: 2)
            n.append(UInt8(hex[i..<j], radix: 16)!)
            i = j
        }
        let ecDER = [UInt8](try openssl(["pkey", "-in", ec, "-pubout", "-outform", "DER"]))
        let point = Array(ecDER.suffix(64))
        let jwksObject: [String: Any] = [
            "keys": [
                ["kty": "RSA", "kid": "rsa-1", "use": "sig", "n": Base64URL.encode(n), "e": "AQAB"],
                ["kty": "EC", "kid": "ec-1", "crv": "P-256", "x": Base64URL.encode(Array(point[0..<32])),
                 "y": Base64URL.encode(Array(point[32..<64]))],
            ]
        ]
        jwks = String(decoding: try JSONSerialization.data(withJSONObject: jwksObject), as: UTF8.self)
    }

    deinit { try? FileManager.default.removeItem(at: dir) }
}

/// Builds compact JWS strings, honest or hostile.
enum Tok {
    static func b64(_ object: [String: Any]) -> String {
        Base64URL.encode([UInt8](try! JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])))
    }

    static var now: Int { Int(Date().timeIntervalSince1970) }

    static func claims(
        iss: String = "https://hs.test/", tenant: Any? = "acme", sub: String = "user-1", roles: Any? = nil,
        aud: Any? = "api", exp: Any? = Tok.now + 600, extra: [String: Any] = [:]
    ) -> [String: Any] {
        var c: [String: Any] = ["iss": iss, "sub": sub, "iat": now]
        if let tenant { c["org_id"] = tenant }
        if let roles { c["roles"] = roles }
        if let aud { c["aud"] = aud }
        if let exp { c["exp"] = exp }
        for (k, v) in extra { c[k] = v }
        return c
    }

    /// HMAC-SHA256 over `header.payload` with `key`.
    static func hs256(_ claims: [String: Any], key: [UInt8] = Array(TestKeys.hsSecret.utf8), header: [String: Any] = ["alg": "HS256", "typ": "JWT"]) -> String {
        let input = b64(header) + "." + b64(claims)
        return input + "." + Base64URL.encode(Digest.hmacSHA256(key: key, message: Array(input.utf8)))
    }

    /// Signed by libjwt with a PEM private key.
    static func signed(_ claims: [String: Any], alg: String, pem: String, kid: String?) -> String {
        try! JWTSigner.sign(claims: claims, algorithm: alg, key: Array(pem.utf8), kid: kid)
    }

    static func unsigned(_ claims: [String: Any], alg: String) -> String {
        b64(["alg": alg, "typ": "JWT"]) + "." + b64(claims) + "."
    }
}
