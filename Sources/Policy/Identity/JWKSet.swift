import Foundation

/// Public keys for RS*/ES* tokens, by `kid`, parsed once into OpenSSL keys (``PublicKey``).
///
/// Built from a JWKS document (RSA `n`/`e`, EC `crv`/`x`/`y`, converted to a DER SubjectPublicKeyInfo here)
/// or from one PEM file (a key without `kid`). RSA keys under 2048 bits are refused.
public struct JWKSet: Sendable {
    public enum KeyType: Sendable, Equatable { case rsa, ec(curve: String) }

    public struct Key: Sendable {
        public var kid: String?
        public var type: KeyType
        public var publicKey: PublicKey

        /// Parses `spki` (DER) into a key of `type`.
        init(kid: String?, type: KeyType, spki: [UInt8]) throws {
            guard let key = PublicKey(spki: spki) else { throw JWKError("key \(kid ?? "?") is not a valid public key") }
            if type == .rsa && key.bits < 2048 {
                throw JWKError("RSA key \(kid ?? "?") has \(key.bits) bits; at least 2048 are required")
            }
            self.kid = kid
            self.type = type
            self.publicKey = key
        }
    }

    public var keys: [Key]

    public init(keys: [Key]) { self.keys = keys }

    /// A key for an algorithm: by `kid` when the token names one, else the only key of the set.
    public func key(kid: String?, algorithm: String) -> Key? {
        let wanted: KeyType
        switch algorithm {
        case "RS256", "RS384", "RS512": wanted = .rsa
        case "ES256": wanted = .ec(curve: "P-256")
        case "ES384": wanted = .ec(curve: "P-384")
        case "ES512": wanted = .ec(curve: "P-521")
        default: return nil
        }
        let candidates: [Key]
        if let kid {
            candidates = keys.filter { $0.kid == kid }
        } else {
            candidates = keys.count == 1 ? keys : []
        }
        guard candidates.count == 1, let key = candidates.first, key.type == wanted else { return nil }
        return key
    }

    /// Parses a JWKS document; keys that are not public RSA/EC signature keys are skipped.
    public static func parse(jwks data: Data) throws -> JWKSet {
        guard let root = try JSONSerialization.jsonObject(with: data) as? [String: Any],
            let list = root["keys"] as? [[String: Any]]
        else { throw JWKError("a JWKS document is an object with a 'keys' array") }
        var keys: [Key] = []
        for jwk in list {
            if let use = jwk["use"] as? String, use != "sig" { continue }
            if jwk["d"] != nil { throw JWKError("the JWKS holds a private key; publish public keys only") }
            let kid = jwk["kid"] as? String
            switch jwk["kty"] as? String {
            case "RSA":
                guard let n = (jwk["n"] as? String).flatMap({ Base64URL.decode($0.utf8) }),
                    let e = (jwk["e"] as? String).flatMap({ Base64URL.decode($0.utf8) }), n.count >= 256
                else { throw JWKError("RSA key \(kid ?? "?") needs n (>= 2048 bits) and e") }
                keys.append(try Key(kid: kid, type: .rsa, spki: rsaSPKI(n: n, e: e)))
            case "EC":
                guard let crv = jwk["crv"] as? String, let oid = curveOIDs[crv],
                    let x = (jwk["x"] as? String).flatMap({ Base64URL.decode($0.utf8) }),
                    let y = (jwk["y"] as? String).flatMap({ Base64URL.decode($0.utf8) }),
                    x.count == curveSizes[crv], y.count == curveSizes[crv]
                else { throw JWKError("EC key \(kid ?? "?") needs crv P-256/P-384/P-521, x and y") }
                keys.append(try Key(kid: kid, type: .ec(curve: crv), spki: ecSPKI(curveOID: oid, x: x, y: y)))
            default:
                continue
            }
        }
        return JWKSet(keys: keys)
    }

    /// One PEM public key (no `kid`); its type is read from the DER algorithm identifier.
    public static func parse(pemFile text: String) throws -> JWKSet {
        let body = text.split(separator: "\n").filter { !$0.hasPrefix("-----") }.joined()
        guard text.contains("-----BEGIN PUBLIC KEY-----"), let der = Data(base64Encoded: body) else {
            throw JWKError("expected a PEM 'PUBLIC KEY' (SubjectPublicKeyInfo)")
        }
        let bytes = [UInt8](der)
        let type: KeyType
        if bytes.contains(subsequence: rsaOID) {
            type = .rsa
        } else if let (crv, _) = curveOIDs.first(where: { bytes.contains(subsequence: $0.value) }) {
            type = .ec(curve: crv)
        } else {
            throw JWKError("unsupported public key type (RSA or EC P-256/P-384/P-521)")
        }
        return JWKSet(keys: [try Key(kid: nil, type: type, spki: bytes)])
    }

    // MARK: DER

    static let rsaOID: [UInt8] = [0x06, 0x09, 0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x01, 0x01]
    static let ecOID: [UInt8] = [0x06, 0x07, 0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x02, 0x01]
    static let curveOIDs: [String: [UInt8]] = [
        "P-256": [0x06, 0x08, 0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x03, 0x01, 0x07],
        "P-384": [0x06, 0x05, 0x2B, 0x81, 0x04, 0x00, 0x22],
        "P-521": [0x06, 0x05, 0x2B, 0x81, 0x04, 0x00, 0x23],
    ]
    static let curveSizes: [String: Int] = ["P-256": 32, "P-384": 48, "P-521": 66]

    static func tlv(_ tag: UInt8, _ content: [UInt8]) -> [UInt8] {
        var out = [tag]
        let n = content.count
        if n < 0x80 {
            out.append(UInt8(n))
        } else {
            var len: [UInt8] = []
            var v = n
            while v > 0 {
                len.insert(UInt8(v & 0xFF), at: 0)
                v >>= 8
            }
            out.append(0x80 | UInt8(len.count))
            out += len
        }
        return out + content
    }

    static func integer(_ magnitude: [UInt8]) -> [UInt8] {
        var m = Array(magnitude.drop { $0 == 0 })
        if m.isEmpty { m = [0] }
        if m[0] & 0x80 != 0 { m.insert(0, at: 0) }
        return tlv(0x02, m)
    }

    static func rsaSPKI(n: [UInt8], e: [UInt8]) -> [UInt8] {
        let algorithm = tlv(0x30, rsaOID + [0x05, 0x00])
        let key = tlv(0x30, integer(n) + integer(e))
        return tlv(0x30, algorithm + tlv(0x03, [0x00] + key))
    }

    static func ecSPKI(curveOID: [UInt8], x: [UInt8], y: [UInt8]) -> [UInt8] {
        let algorithm = tlv(0x30, ecOID + curveOID)
        return tlv(0x30, algorithm + tlv(0x03, [0x00, 0x04] + x + y))
    }

}

public struct JWKError: Error, CustomStringConvertible {
    public var description: String
    init(_ d: String) { description = d }
}

extension Array where Element == UInt8 {
    func contains(subsequence: [UInt8]) -> Bool {
        guard subsequence.count <= count else { return false }
        for i in 0...(count - subsequence.count) where self[i..<(i + subsequence.count)].elementsEqual(subsequence) {
            return true
        }
        return false
    }
}
