import HTTPWire

/// Route matching beyond one route's own keys: `match.headers`, and routes that can never be told apart.
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
            if name.isEmpty || name.utf8.count > Self.maxMatchHeaderName || !name.utf8.allSatisfy(ASCII.isTokenByte) {
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
            } else if !bytes.allSatisfy({ $0 == 0x09 || ($0 >= 0x20 && $0 < 0x7F) }) {
                // Visible ASCII only: the parser hands on other bytes as U+FFFD, which would match many inputs.
                r.problem(entry.value, "\(what).\(name) holds control or non-ASCII characters")
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

    /// Problems of the route list as a whole, each at the route it is about (`located[i]` is `routes[i]`'s
    /// entry):
    /// - a route that can never be chosen: another with the same host, path prefix and `match.headers` ranks
    ///   before it and takes every method it takes (``Router``'s order: a route listing methods before one that
    ///   takes any, then config order), or several such routes do between them;
    /// - `match.headers` naming a header with `_` while `server.underscores_in_headers: drop`: the gateway
    ///   treats such headers as not sent;
    /// - `match.headers` naming a header the gateway does not pass on as the client sent it (hop-by-hop and
    ///   framing headers, the identity, forwarding and trace headers it sets itself, the overrides it removes):
    ///   routing on it would be routing on what the upstream never sees, or on a client's claim the gateway
    ///   exists to replace.
    func checkRouteMatches(
        _ routes: [RouteConfig], located: [Located], server: ServerConfig, identity: IdentityConfig, _ r: YAMLReader
    ) {
        var notPassedOn = Self.headersNotPassedOn
        notPassedOn.insert(identity.tenantHeader.lowercased())
        if let sign = identity.signHeaders { notPassedOn.insert(sign.header.lowercased()) }
        struct Key: Hashable {
            var host: String?
            var prefix: String
            var headers: Set<RouteConfig.HeaderMatch>
        }
        // Routes by what they match apart from methods, each group in config order.
        var groups: [Key: [Int]] = [:]
        for (i, route) in routes.enumerated() {
            groups[Key(host: route.host, prefix: route.pathPrefix, headers: route.headerSet), default: []].append(i)
            if let named = route.headers.first(where: { notPassedOn.contains($0.name.lowercased()) }) {
                r.problem(
                    located[i],
                    "route '\(route.name)': match.headers cannot name '\(named.name)': the gateway does not pass it "
                        + "on as the client sent it (hop-by-hop, framing, or a header the gateway sets or removes)")
            }
            if server.dropUnderscoreHeaders,
                let named = route.headers.first(where: { $0.name.utf8.contains(UInt8(ascii: "_")) })
            {
                r.problem(
                    located[i],
                    "route '\(route.name)': match.headers names '\(named.name)', but headers with _ in the name are "
                        + "dropped (server.underscores_in_headers: drop); rename it or set underscores_in_headers: allow")
            }
        }
        for group in groups.values where group.count > 1 {
            for (position, i) in group.enumerated() {
                let before = group[..<position]
                let route = routes[i]
                let coveredBy: [Int]
                if let methods = route.methods {
                    // Outranked only by earlier routes that list methods; it is lost when they list all of its own.
                    let earlier = before.filter { routes[$0].methods != nil }
                    let taken = Set(earlier.flatMap { routes[$0].methods! })
                    guard Set(methods).isSubset(of: taken) else { continue }
                    coveredBy = earlier.filter { !Set(routes[$0].methods!).isDisjoint(with: methods) }
                } else {
                    // Any-method routes rank below every route listing methods, so only an earlier one shadows it.
                    guard let first = before.first(where: { routes[$0].methods == nil }) else { continue }
                    coveredBy = [first]
                }
                let names = coveredBy.map { j in "'\(routes[j].name)' (\(located[j].file):\(located[j].line))" }
                let subject = names.count == 1 ? "route \(names[0]) matches" : "routes \(names.joined(separator: ", ")) match"
                r.problem(
                    located[i],
                    "route '\(route.name)' can never be chosen: \(subject) the same host, path_prefix and headers "
                        + "and take\(names.count == 1 ? "s" : "") \(route.methods == nil ? "any method" : "all of its methods") first")
            }
        }
    }

    /// Headers (lower-cased) that never reach an upstream as the client sent them; besides these, the configured
    /// tenant and signature headers.
    static let headersNotPassedOn: Set<String> = [
        "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection", "te", "trailer",
        "transfer-encoding", "upgrade", "content-length", "expect",
        "x-tenant-id", "x-user-id", "x-plan", "x-roles", "gatehouse-signature", "traceparent", "tracestate",
        "forwarded", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "x-real-ip", "true-client-ip",
        "x-original-url", "x-rewrite-url", "x-http-method-override", "x-http-method", "x-method-override",
    ]

    private static func isBlank(_ b: UInt8) -> Bool { b == 0x20 || b == 0x09 }
}
