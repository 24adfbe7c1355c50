/// Picks the route for a request: by optional host, segment-aware path prefix, method and optional headers.
///
/// The most specific route wins: an exact host before a `*.` wildcard host before no host, then the longest
/// path prefix, then the route with more `match.headers`, then a route that lists methods before one that takes
/// any, then config order.
///
/// A route with `match.headers` takes a request only when each header it names is sent exactly once with exactly
/// the configured value (names any case). A header sent twice takes no route that names it, even when one of the
/// copies has the value: which copy counts is for nobody to guess, so ambiguous input never selects a route.
public struct Router: Sendable {
    /// All values the request carries for a header name (any case), in order; empty when it is absent. Called
    /// only for names some route's `match.headers` lists.
    public typealias HeaderValues = (_ name: String) -> [String]

    private struct Entry: Sendable {
        var index: Int
        var host: String?
        var wildcardSuffix: String?
        var prefix: String
        var methods: [String]?
        var headers: [RouteConfig.HeaderMatch]
    }

    private let entries: [Entry]
    /// Some route matches on host; otherwise the Host header is not looked at.
    private let usesHost: Bool
    /// Some route matches on headers; otherwise no header is looked at.
    private let usesHeaders: Bool

    public init(routes: [RouteConfig]) {
        var entries: [Entry] = []
        for (i, r) in routes.enumerated() {
            var e = Entry(
                index: i, host: r.host, wildcardSuffix: nil, prefix: r.pathPrefix, methods: r.methods, headers: r.headers)
            if let h = r.host, h.hasPrefix("*.") {
                e.host = nil
                e.wildcardSuffix = String(h.dropFirst(1))  // ".example.com"
            }
            entries.append(e)
        }
        self.usesHost = entries.contains { $0.host != nil || $0.wildcardSuffix != nil }
        self.usesHeaders = entries.contains { !$0.headers.isEmpty }
        func hostRank(_ e: Entry) -> Int { e.host != nil ? 0 : (e.wildcardSuffix != nil ? 1 : 2) }
        self.entries = entries.sorted { a, b in
            if hostRank(a) != hostRank(b) { return hostRank(a) < hostRank(b) }
            if a.prefix.utf8.count != b.prefix.utf8.count { return a.prefix.utf8.count > b.prefix.utf8.count }
            if a.headers.count != b.headers.count { return a.headers.count > b.headers.count }
            if (a.methods != nil) != (b.methods != nil) { return a.methods != nil }
            return a.index < b.index
        }
    }

    /// The index (into the config's routes) of the best match, or nil.
    /// - Parameters:
    ///   - host: the request's Host header, any case, port allowed; nil when absent.
    ///   - path: the request path without the query.
    ///   - headers: the request's values of a header; called only when some route has `match.headers`, and then
    ///     only for the names of routes whose host, path prefix and method match.
    public func match(host: String?, path: Substring, method: String, headers: HeaderValues) -> Int? {
        let bareHost = usesHost ? host.map(Self.normalizeHost) : nil
        for e in entries {
            if let h = e.host {
                guard bareHost == h else { continue }
            } else if let suffix = e.wildcardSuffix {
                guard let bh = bareHost, bh.hasSuffix(suffix), bh.utf8.count > suffix.utf8.count else { continue }
            }
            guard Self.segmentPrefix(e.prefix, of: path) else { continue }
            if let methods = e.methods, !methods.contains(method) { continue }
            if usesHeaders, !e.headers.isEmpty, !e.headers.allSatisfy({ Self.satisfied($0, headers($0.name)) }) {
                continue
            }
            return e.index
        }
        return nil
    }

    /// True when `values` (the request's, for `wanted.name`) are exactly one, equal to `wanted.value` byte for byte.
    private static func satisfied(_ wanted: RouteConfig.HeaderMatch, _ values: [String]) -> Bool {
        values.count == 1 && values[0].utf8.elementsEqual(wanted.value.utf8)
    }

    /// Why `values` do not satisfy `wanted` (``satisfied(_:_:)``), for people; nil when they do.
    private static func mismatch(_ wanted: RouteConfig.HeaderMatch, _ values: [String]) -> String? {
        if satisfied(wanted, values) { return nil }
        switch values.count {
        case 0: return "header \(wanted.name) is missing"
        case 1: return "header \(wanted.name) is \"\(clip(values[0]))\", not \"\(wanted.value)\""
        default: return "header \(wanted.name) is sent \(values.count) times, not once"
        }
    }

    /// A request's value as a reason shows it: at most 64 characters.
    private static func clip(_ value: String) -> String { value.count <= 64 ? value : String(value.prefix(64)) + "…" }

    /// A route that did not take a request, and why (``nearMisses(host:path:method:headers:limit:)``).
    public struct NearMiss: Sendable, Equatable {
        public enum Kind: Sendable, Equatable {
            /// It matches too, but the chosen route is more specific.
            case outranked
            /// Its path prefix matches; its host, methods or headers do not.
            case hostOrMethod
            /// Its path prefix does not match, though it shares a leading segment with the path (or its host
            /// names this request's host).
            case pathPrefix
        }
        /// The route's index in the config's routes.
        public var index: Int
        public var kind: Kind
        /// What did not match, for people: `method DELETE is not among GET, POST`.
        public var reason: String
    }

    /// The routes that came closest to taking a request without taking it, closest first, at most `limit`: those
    /// that match too but rank below the chosen one, then those whose path prefix matches but whose host,
    /// methods or headers do not, then those whose prefix does not match but shares a leading segment with the
    /// path (or whose host is this request's). The chosen route (``match(host:path:method:headers:)``) is never
    /// among them.
    public func nearMisses(host: String?, path: Substring, method: String, headers: HeaderValues, limit: Int = 5) -> [NearMiss] {
        let chosen = match(host: host, path: path, method: method, headers: headers)
        let bareHost = usesHost ? host.map(Self.normalizeHost) : nil
        var found: [(miss: NearMiss, failures: Int)] = []
        for e in entries where e.index != chosen {
            var failures: [String] = []
            var hostNamed = false
            if let h = e.host {
                if bareHost == h { hostNamed = true } else { failures.append("host \(Self.describe(bareHost)) is not \(h)") }
            } else if let suffix = e.wildcardSuffix {
                if let bh = bareHost, bh.hasSuffix(suffix), bh.utf8.count > suffix.utf8.count {
                    hostNamed = true
                } else {
                    failures.append("host \(Self.describe(bareHost)) is not under *\(suffix)")
                }
            }
            let prefixMatches = Self.segmentPrefix(e.prefix, of: path)
            if !prefixMatches {
                failures.append("path_prefix \(e.prefix) does not match \(path)")
            }
            if let methods = e.methods, !methods.contains(method) {
                failures.append("method \(method) is not among \(methods.joined(separator: ", "))")
            }
            for wanted in e.headers {
                if let why = Self.mismatch(wanted, headers(wanted.name)) { failures.append(why) }
            }
            let kind: NearMiss.Kind
            if failures.isEmpty {
                kind = .outranked
                failures.append("matches too, but a more specific route was chosen")
            } else if prefixMatches {
                kind = .hostOrMethod
            } else if failures.count == 1 && (hostNamed || Self.sharedSegments(e.prefix, path) > 0) {
                kind = .pathPrefix
            } else {
                continue
            }
            found.append((NearMiss(index: e.index, kind: kind, reason: failures.joined(separator: "; ")), failures.count))
        }
        func closeness(_ m: NearMiss.Kind) -> Int {
            switch m {
            case .outranked: 0
            case .hostOrMethod: 1
            case .pathPrefix: 2
            }
        }
        // A stable sort keeps the router's own order (most specific first) among equals.
        let ordered = found.enumerated().sorted { a, b in
            let (ka, kb) = (closeness(a.element.miss.kind), closeness(b.element.miss.kind))
            if ka != kb { return ka < kb }
            if a.element.failures != b.element.failures { return a.element.failures < b.element.failures }
            return a.offset < b.offset
        }
        return ordered.prefix(max(0, limit)).map(\.element.miss)
    }

    private static func describe(_ host: String?) -> String { host.map { "'\($0)'" } ?? "(none)" }

    /// How many whole non-empty leading segments `prefix` and `path` share (`/api/admin` and `/api/echo/x`: 1).
    static func sharedSegments<S: StringProtocol>(_ prefix: String, _ path: S) -> Int {
        let a = prefix.split(separator: "/", omittingEmptySubsequences: true)
        let b = path.split(separator: "/", omittingEmptySubsequences: true)
        var n = 0
        while n < a.count, n < b.count, a[n] == b[n] { n += 1 }
        return n
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
