/// OAuth scopes: what a token's claim or an API key grants, and the check of a route's `scopes` against them.
///
/// A scope is an RFC 6749 (§3.3) scope-token: 1-128 bytes of printable ASCII other than space, `"` and `\`, so a
/// route's scopes can be quoted as they are in `WWW-Authenticate: Bearer error="insufficient_scope", scope="…"`.
public enum Scopes {
    /// Scopes kept from one token (or given to one API key) at most: a token's scope claim can never grow the
    /// token cache past this many names per entry. Beyond it, the rest are dropped (a route needing one of
    /// them answers 403, never more access).
    public static let maxCount = 64
    /// The longest scope kept, in bytes.
    public static let maxBytes = 128

    /// An RFC 6749 scope-token of at most ``maxBytes`` bytes: `%x21 / %x23-5B / %x5D-7E`.
    public static func isScope(_ name: String) -> Bool {
        let u = name.utf8
        return !u.isEmpty && u.count <= maxBytes
            && u.allSatisfy { $0 == 0x21 || ($0 >= 0x23 && $0 <= 0x5B) || ($0 >= 0x5D && $0 <= 0x7E) }
    }

    /// The scopes a claim grants: a space-separated string (`scope`) or an array of strings (`scp`). Any other
    /// value (a number, an object, an array holding anything but strings) grants none; names that are not
    /// scope-tokens are ignored; duplicates are kept once; at most ``maxCount`` are kept, in claim order.
    public static func granted(by claim: JSONValue?) -> [String] {
        let names: [Substring]
        switch claim {
        case .string(let text)?:
            names = text.split(separator: " ")
        case .array(let list)?:
            let strings = list.compactMap(\.string)
            guard strings.count == list.count else { return [] }
            names = strings.map { Substring($0) }
        default:
            return []
        }
        var kept: [String] = []
        var seen: Set<Substring> = []
        for name in names where kept.count < maxCount {
            guard isScope(String(name)), seen.insert(name).inserted else { continue }
            kept.append(String(name))
        }
        return kept
    }

    /// The scopes of `claims`: at `path` (an exact claim name, else a dotted path) when the issuer names its
    /// `scopes_claim`; otherwise `scope` when the token has it, else `scp`.
    public static func granted(claims: [String: JSONValue], path: String?) -> [String] {
        if let path { return granted(by: JWTVerifier.claim(claims, path: path)) }
        if let scope = claims["scope"], scope != .null { return granted(by: scope) }
        return granted(by: claims["scp"])
    }

    /// The route's scopes the caller lacks (every one of the route's must be among the caller's), in the
    /// route's order; empty when the caller has them all.
    public static func missing(_ required: [String], have: [String]) -> [String] {
        required.filter { !have.contains($0) }
    }
}
