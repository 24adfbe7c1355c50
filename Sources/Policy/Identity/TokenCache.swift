/// A bounded cache of verified tokens, keyed by the SHA-256 of the token, so repeated tokens skip signature
/// checks. An entry lives until the token's `exp` (plus the issuer's leeway). One cache per event loop:
/// not thread-safe by design.
public final class TokenCache {
    struct Key: Hashable {
        var a: UInt64, b: UInt64, c: UInt64, d: UInt64
        init(_ digest: [UInt8]) {
            func word(_ i: Int) -> UInt64 { digest[i..<i + 8].reduce(0) { $0 << 8 | UInt64($1) } }
            a = word(0)
            b = word(8)
            c = word(16)
            d = word(24)
        }
    }

    private var entries: [Key: (token: VerifiedToken, validUntil: Double)] = [:]
    public let capacity: Int

    public init(capacity: Int = 10_000) {
        self.capacity = capacity
    }

    public var count: Int { entries.count }

    /// Forgets everything (keys or issuers changed).
    public func clear() { entries.removeAll() }

    /// The verified token for `token` at `now`, verifying (and caching) it on a miss.
    public func verify(
        _ token: String, now: Double, leeway: (String) -> Double,
        verifier: (String) -> Result<VerifiedToken, JWTError>
    ) -> Result<VerifiedToken, JWTError> {
        let key = Key(Digest.sha256(token.utf8))
        if let entry = entries[key] {
            if now <= entry.validUntil {
                return .success(entry.token)
            }
            entries.removeValue(forKey: key)
        }
        let result = verifier(token)
        if case .success(let verified) = result {
            if entries.count >= capacity { evict(now: now) }
            entries[key] = (verified, verified.expiresAt + leeway(verified.issuer))
        }
        return result
    }

    /// Drops expired entries; if the cache is still full, drops everything (bounded memory beats LRU here).
    private func evict(now: Double) {
        entries = entries.filter { $0.value.validUntil >= now }
        if entries.count >= capacity { entries.removeAll(keepingCapacity: true) }
    }
}

@available(*, unavailable)
extension TokenCache: Sendable {}
