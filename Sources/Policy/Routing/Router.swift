/// Picks the route for a request: by optional host, segment-aware path prefix and method.
///
/// The most specific route wins: an exact host before a `*.` wildcard host before no host, then the longest
/// path prefix, then a route that lists methods before one that takes any.
public struct Router: Sendable {
    private struct Entry: Sendable {
        var index: Int
        var host: String?
        var wildcardSuffix: String?
        var prefix: String
        var methods: [String]?
    }

    private let entries: [Entry]
    /// Some route matches on host; otherwise the Host header is not looked at.
    private let usesHost: Bool

    public init(routes: [RouteConfig]) {
        var entries: [Entry] = []
        for (i, r) in routes.enumerated() {
            var e = Entry(index: i, host: r.host, wildcardSuffix: nil, prefix: r.pathPrefix, methods: r.methods)
            if let h = r.host, h.hasPrefix("*.") {
                e.host = nil
                e.wildcardSuffix = String(h.dropFirst(1))  // ".example.com"
            }
            entries.append(e)
        }
        self.usesHost = entries.contains { $0.host != nil || $0.wildcardSuffix != nil }
        func hostRank(_ e: Entry) -> Int { e.host != nil ? 0 : (e.wildcardSuffix != nil ? 1 : 2) }
        self.entries = entries.sorted { a, b in
            if hostRank(a) != hostRank(b) { return hostRank(a) < hostRank(b) }
            if a.prefix.utf8.count != b.prefix.utf8.count { return a.prefix.utf8.count > b.prefix.utf8.count }
            if (a.methods != nil) != (b.methods != nil) { return a.methods != nil }
            return a.index < b.index
        }
    }

    /// The index (into the config's routes) of the best match, or nil.
    /// - Parameters:
    ///   - host: the request's Host header, any case, port allowed; nil when absent.
    ///   - path: the request path without the query.
    public func match(host: String?, path: Substring, method: String) -> Int? {
        let bareHost = usesHost ? host.map(Self.normalizeHost) : nil
        for e in entries {
            if let h = e.host {
                guard bareHost == h else { continue }
            } else if let suffix = e.wildcardSuffix {
                guard let bh = bareHost, bh.hasSuffix(suffix), bh.utf8.count > suffix.utf8.count else { continue }
            }
            guard Self.segmentPrefix(e.prefix, of: path) else { continue }
            if let methods = e.methods, !methods.contains(method) { continue }
            return e.index
        }
        return nil
    }

    /// Lowercases a Host value and removes its port and a trailing dot (`API.example.com.:443` is
    /// `api.example.com`).
    public static func normalizeHost(_ host: String) -> String {
        var h = Substring(host)
        if h.hasPrefix("[") {
            if let close = h.firstIndex(of: "]") { h = h[...close] }
        } else if let colon = h.lastIndex(of: ":") {
            h = h[..<colon]
        }
        if h.last == "." { h = h.dropLast() }
        return h.lowercased()
    }

    /// True when `prefix` matches `path` on a segment boundary: `/api/users` matches `/api/users` and
    /// `/api/users/7`, not `/api/usersX`. A prefix ending in `/` matches everything below it.
    public static func segmentPrefix<S: StringProtocol>(_ prefix: String, of path: S) -> Bool {
        let p = prefix.utf8
        let s = path.utf8
        guard s.count >= p.count, s.starts(with: p) else { return false }
        if s.count == p.count || p.last == UInt8(ascii: "/") { return true }
        return s[s.index(s.startIndex, offsetBy: p.count)] == UInt8(ascii: "/")
    }

    /// Removes `prefix` from the front of `path` (segment-aware); the result always starts with `/`.
    public static func strip<S: StringProtocol>(prefix: String, from path: S) -> String {
        guard segmentPrefix(prefix, of: path) else { return String(path) }
        var rest = path.dropFirst(prefix.count)
        if prefix.hasSuffix("/") && prefix.count > 1 { return "/" + rest }
        if rest.isEmpty { rest = "/" }
        return String(rest)
    }
}
