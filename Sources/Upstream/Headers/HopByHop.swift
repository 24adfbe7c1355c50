import HTTPWire
import NIOHTTP1

/// Hop-by-hop header handling (RFC 9110 §7.6.1), shared by both directions of the proxy.
public enum HopByHop {
    /// True for headers that never cross the proxy: Connection, Keep-Alive, Proxy-*, TE, Trailer,
    /// Transfer-Encoding, Upgrade. (Framing headers are re-created by the proxy itself.)
    @inlinable
    public static func isHopByHop(_ name: String) -> Bool {
        let u = name.utf8
        switch u.count {
        case 2: return equalsLower(u, "te")
        case 7: return equalsLower(u, "trailer") || equalsLower(u, "upgrade")
        case 10: return equalsLower(u, "connection") || equalsLower(u, "keep-alive")
        case 17: return equalsLower(u, "transfer-encoding")
        default:
            return u.count > 6 && equalsLower(u.prefix(6), "proxy-")
        }
    }

    /// ASCII case-insensitive comparison against a lowercase literal (``ASCII/equalsLower(_:_:)``).
    @inlinable
    public static func equalsLower<C: Collection>(_ bytes: C, _ lower: StaticString) -> Bool where C.Element == UInt8 {
        ASCII.equalsLower(bytes, lower)
    }

    /// The lowercased header names listed in every `Connection` header (they are hop-by-hop too).
    /// `close` and `keep-alive` are left out (they name no header that could otherwise pass), so the
    /// common case allocates nothing.
    public static func connectionListed(_ headers: HTTPHeaders) -> [String] {
        listed(in: headers)
    }

    public static func connectionListed(_ headers: [(name: String, value: String)]) -> [String] {
        listed(in: headers)
    }

    private static func listed<S: Sequence>(in headers: S) -> [String] where S.Element == (name: String, value: String) {
        var names: [String] = []
        for (name, value) in headers where name.utf8.count == 10 && equalsLower(name.utf8, "connection") {
            ASCII.forEachListElement(value) { t in
                if !t.isEmpty && !equalsLower(t.utf8, "close") && !equalsLower(t.utf8, "keep-alive") {
                    names.append(String(decoding: t.utf8.map { ($0 >= 65 && $0 <= 90) ? $0 | 0x20 : $0 }, as: UTF8.self))
                }
            }
        }
        return names
    }

    /// ASCII case-insensitive membership of `name` in a list of lowercase names, without allocating.
    @inlinable
    public static func containsLower(_ lowercaseNames: [String], _ name: String) -> Bool {
        let n = name.utf8
        for candidate in lowercaseNames where candidate.utf8.count == n.count {
            var equal = true
            for (a, b) in zip(candidate.utf8, n) where a != ((b >= 65 && b <= 90) ? b | 0x20 : b) {
                equal = false
                break
            }
            if equal { return true }
        }
        return false
    }
}
