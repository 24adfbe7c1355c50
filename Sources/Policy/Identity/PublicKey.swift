internal import CJWT

/// A public signature key parsed once (an OpenSSL `EVP_PKEY`), when its key set is loaded, and shared by every
/// event loop: verifying a token costs the signature check only, never a key parse.
public final class PublicKey: @unchecked Sendable {
    // @unchecked: the EVP_PKEY is never modified after init; OpenSSL allows concurrent verifications with it.
    private let pkey: OpaquePointer
    /// The key size in bits (RSA modulus, EC field).
    public let bits: Int

    /// Parses a DER SubjectPublicKeyInfo; nil when OpenSSL cannot.
    init?(spki der: [UInt8]) {
        let parsed: OpaquePointer? = der.withUnsafeBufferPointer { buffer in
            var cursor: UnsafePointer<UInt8>? = buffer.baseAddress
            return d2i_PUBKEY(nil, &cursor, buffer.count)
        }
        guard let parsed else { return nil }
        pkey = parsed
        bits = Int(EVP_PKEY_get_bits(parsed))
    }

    deinit { EVP_PKEY_free(pkey) }

    /// Verifies an RSA PKCS#1 v1.5 or ECDSA (DER) signature of `message` with digest `hash`.
    func verify(_ message: UnsafeRawBufferPointer, signature: [UInt8], hash: JWSHash) -> Bool {
        guard let ctx = EVP_MD_CTX_new() else { return false }
        defer { EVP_MD_CTX_free(ctx) }
        guard EVP_DigestVerifyInit(ctx, nil, hash.md, nil, pkey) == 1 else { return false }
        return signature.withUnsafeBufferPointer { sig in
            EVP_DigestVerify(
                ctx, sig.baseAddress, sig.count, message.baseAddress?.assumingMemoryBound(to: UInt8.self), message.count) == 1
        }
    }
}

/// The digest a JWS algorithm names.
enum JWSHash {
    case sha256, sha384, sha512

    init?(algorithm: String) {
        if algorithm.hasSuffix("256") {
            self = .sha256
        } else if algorithm.hasSuffix("384") {
            self = .sha384
        } else if algorithm.hasSuffix("512") {
            self = .sha512
        } else {
            return nil
        }
    }

    var md: OpaquePointer? {
        switch self {
        case .sha256: EVP_sha256()
        case .sha384: EVP_sha384()
        case .sha512: EVP_sha512()
        }
    }

    /// OpenSSL's name of the digest.
    var name: String {
        switch self {
        case .sha256: "SHA256"
        case .sha384: "SHA384"
        case .sha512: "SHA512"
        }
    }

    var size: Int {
        switch self {
        case .sha256: 32
        case .sha384: 48
        case .sha512: 64
        }
    }
}

/// JWS signature checks on parsed keys (RFC 7518): HMAC with the issuer's secret, RSA PKCS#1 v1.5, and ECDSA
/// whose JWS form (`r || s`, fixed width) is turned into the DER OpenSSL expects.
enum JWSSignature {
    /// HS256/384/512: HMAC of the signing input under the issuer's keyed secret, compared in constant time.
    static func verifyHMAC(_ message: UnsafeRawBufferPointer, signature: [UInt8], key: HMACKey, hash: JWSHash) -> Bool {
        guard signature.count == hash.size, let mac = key.mac(message, hash: hash) else { return false }
        return Digest.constantTimeEqual(mac, signature)
    }

    /// The DER `ECDSA-Sig-Value` of a JWS ECDSA signature, or nil when it is not exactly `2 × width` bytes.
    static func ecdsaDER(_ raw: [UInt8], width: Int) -> [UInt8]? {
        guard raw.count == 2 * width, width > 0 else { return nil }
        let r = JWKSet.integer(Array(raw[0..<width]))
        let s = JWKSet.integer(Array(raw[width...]))
        return JWKSet.tlv(0x30, r + s)
    }

    /// The width of each of `r` and `s` for an ES algorithm.
    static func ecdsaWidth(_ algorithm: String) -> Int? {
        switch algorithm {
        case "ES256": 32
        case "ES384": 48
        case "ES512": 66
        default: nil
        }
    }
}
