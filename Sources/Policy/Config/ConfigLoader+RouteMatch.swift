/// Route matching beyond path, host and methods: `match.headers`.
extension ConfigLoader {
    /// Most `match.headers` entries on one route.
    static let maxMatchHeaders = 16
    /// Longest header name and value `match.headers` takes, in bytes.
    static let maxMatchHeaderName = 128
    static let maxMatchHeaderValue = 1024

    /// `match.headers` of route `route`: a mapping of header name to value. A plain scalar such as `2` is the
    /// string `"2"`. Problems: not a mapping, empty, more than ``maxMatchHeaders`` entries, a name that is not
    /// an HTTP token (or is `Host`: that is `match.host`'s job), one name twice in any case, an empty value, a
    /// value with control characters or with whitespace at either end (the request's never has: it is trimmed).
    func parseMatchHeaders(_ at: Located, route: String, _ r: YAMLReader) -> [RouteConfig.HeaderMatch]? {
        let what = "route '\(route)' match.headers"
        guard let entries = r.mapping(at, what, allowed: nil) else { return nil }
        guard !entries.isEmpty else {
            r.problem(at, "\(what) must name at least one header (leave it out to match any headers)")
            return nil
        }
        guard entries.count <= Self.maxMatchHeaders else {
            r.problem(at, "\(what) names \(entries.count) headers; at most \(Self.maxMatchHeaders)")
            return nil
        }
        var ok = true
        var seen: [String: String] = [:]
        var headers: [RouteConfig.HeaderMatch] = []
        for entry in entries {
            let name = entry.key
            let lower = name.lowercased()
            if name.isEmpty || name.utf8.count > Self.maxMatchHeaderName || !name.utf8.allSatisfy(Self.isTokenByte) {
                r.problem(entry.keyAt, "\(what): invalid header name '\(name)' (an HTTP token of at most \(Self.maxMatchHeaderName) bytes)")
                ok = false
                continue
            }
            if lower == "host" {
                r.problem(entry.keyAt, "\(what): match on the host with match.host, not a Host header")
                ok = false
                continue
            }
            if let first = seen[lower] {
                r.problem(entry.keyAt, "\(what) names header '\(name)' twice (also as '\(first)'; names are case-insensitive)")
                ok = false
                continue
            }
            seen[lower] = name
            guard let value = r.string(entry.value, "\(what).\(name)") else {
                ok = false
                continue
            }
            let bytes = value.utf8
            if bytes.isEmpty {
                r.problem(entry.value, "\(what).\(name) must not be empty")
                ok = false
            } else if bytes.count > Self.maxMatchHeaderValue {
                r.problem(entry.value, "\(what).\(name) is longer than \(Self.maxMatchHeaderValue) bytes")
                ok = false
            } else if !bytes.allSatisfy({ $0 == 0x09 || ($0 >= 0x20 && $0 != 0x7F) }) {
                r.problem(entry.value, "\(what).\(name) holds control characters")
                ok = false
            } else if Self.isBlank(bytes.first!) || Self.isBlank(bytes.last!) {
                r.problem(entry.value, "\(what).\(name) starts or ends with whitespace, which a request's value never does")
                ok = false
            } else {
                headers.append(RouteConfig.HeaderMatch(name: name, value: value))
            }
        }
        return ok ? headers : nil
    }

    /// RFC 9110 `tchar`: the bytes of a header name.
    static func isTokenByte(_ b: UInt8) -> Bool {
        switch b {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"):
            return true
        default:
            return "!#$%&'*+-.^_`|~".utf8.contains(b)
        }
    }

    private static func isBlank(_ b: UInt8) -> Bool { b == 0x20 || b == 0x09 }
}
