internal import CJWT

/// An HS* secret keyed once per digest, when the issuer loads: the inner and outer digest states after the
/// padded key (RFC 2104) are kept, and each verification copies them, hashing only the signing input. A one-shot
/// `HMAC()` looks the MAC and digest up by name and keys them again every time, four times the cost here.
final class HMACKey: @unchecked Sendable {
    // @unchecked: the keyed states are only copied from after init (a read).
    private struct Keyed {
        let inner: OpaquePointer  // EVP_MD_CTX
        let outer: OpaquePointer
    }
    private let keyed: [JWSHash: Keyed]

    init?(secret: [UInt8]) {
        guard !secret.isEmpty else { return nil }
        var keyed: [JWSHash: Keyed] = [:]
        defer {
            if keyed.count < 3 { for k in keyed.values { Self.free(k) } }
        }
        for hash in [JWSHash.sha256, .sha384, .sha512] {
            guard let md = hash.md else { return nil }
            let block = Int(EVP_MD_get_block_size(md))
            // A key longer than the block is hashed first; then it is zero-padded to the block.
            var key = secret.count > block ? Self.digest(secret, md) : secret
            key += [UInt8](repeating: 0, count: block - key.count)
            guard let inner = Self.state(md, key.map { $0 ^ 0x36 }) else { return nil }
            guard let outer = Self.state(md, key.map { $0 ^ 0x5C }) else {
                EVP_MD_CTX_free(inner)
                return nil
            }
            keyed[hash] = Keyed(inner: inner, outer: outer)
        }
        self.keyed = keyed
    }

    deinit {
        for k in keyed.values { Self.free(k) }
    }

    private static func free(_ k: Keyed) {
        EVP_MD_CTX_free(k.inner)
        EVP_MD_CTX_free(k.outer)
    }

    private static func state(_ md: OpaquePointer, _ pad: [UInt8]) -> OpaquePointer? {
        guard let ctx = EVP_MD_CTX_new() else { return nil }
        guard EVP_DigestInit_ex(ctx, md, nil) == 1, EVP_DigestUpdate(ctx, pad, pad.count) == 1 else {
            EVP_MD_CTX_free(ctx)
            return nil
        }
        return ctx
    }

    private static func digest(_ bytes: [UInt8], _ md: OpaquePointer) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: Int(EVP_MD_get_size(md)))
        var length: UInt32 = 0
        _ = EVP_Digest(bytes, bytes.count, &out, &length, md, nil)
        return out
    }

    /// The MAC of `message` under this secret with `hash`.
    func mac(_ message: UnsafeRawBufferPointer, hash: JWSHash) -> [UInt8]? {
        guard let k = keyed[hash], let ctx = EVP_MD_CTX_new() else { return nil }
        defer { EVP_MD_CTX_free(ctx) }
        var inner = [UInt8](repeating: 0, count: hash.size)
        var out = [UInt8](repeating: 0, count: hash.size)
        var length: UInt32 = 0
        guard EVP_MD_CTX_copy_ex(ctx, k.inner) == 1, EVP_DigestUpdate(ctx, message.baseAddress, message.count) == 1,
            EVP_DigestFinal_ex(ctx, &inner, &length) == 1, EVP_MD_CTX_copy_ex(ctx, k.outer) == 1,
            EVP_DigestUpdate(ctx, inner, inner.count) == 1, EVP_DigestFinal_ex(ctx, &out, &length) == 1,
            Int(length) == hash.size
        else { return nil }
        return out
    }
}
