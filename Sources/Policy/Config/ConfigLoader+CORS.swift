/// The `cors` section of a route.
extension ConfigLoader {
    /// `cors:` on route `route` (its `match.methods` already read: they are `allow_methods`' default). Problems:
    /// unknown keys, no or an empty `allow_origins`, an entry that is not an origin, `"*"` beside others or
    /// with `allow_credentials: true`, methods that are not upper-case tokens, header names that are not
    /// tokens.
    func parseCORS(_ at: Located, route: RouteConfig, _ r: YAMLReader) -> CORSConfig? {
        let what = "route '\(route.name)' cors"
        guard
            let f = r.fields(
                at, what,
                allowed: ["allow_origins", "allow_methods", "allow_headers", "expose_headers", "allow_credentials", "max_age"])
        else { return nil }
        guard let originsAt = f["allow_origins"] else {
            r.problem(at, "\(what) needs allow_origins (the origins that may call, or [\"*\"])")
            return nil
        }
        guard let entries = r.locatedStringList(originsAt, "cors.allow_origins") else { return nil }
        var ok = true
        var patterns: [CORSConfig.OriginPattern] = []
        var wildcard = false
        for entry in entries {
            if entry.value == "*" {
                wildcard = true
            } else if let pattern = CORSConfig.OriginPattern.parse(entry.value) {
                patterns.append(pattern)
            } else {
                r.problem(
                    entry.at,
                    "cors.allow_origins: '\(entry.value)' is not an origin (scheme://host[:port], no path; a \"*.\" "
                        + "wildcard only as the leftmost label of a domain such as https://*.example.com)")
                ok = false
            }
        }
        if entries.isEmpty {
            r.problem(originsAt, "cors.allow_origins must name at least one origin (or \"*\" for any)")
            ok = false
        } else if wildcard && entries.count > 1 {
            r.problem(originsAt, "cors.allow_origins: \"*\" allows any origin and must be the only entry")
            ok = false
        }
        var cors = CORSConfig(allowOrigins: wildcard ? .any : .listed(patterns))
        if let v = f["allow_credentials"], let b = r.bool(v, "cors.allow_credentials") {
            cors.allowCredentials = b
            if b && wildcard {
                r.problem(
                    v,
                    "cors.allow_credentials cannot be combined with allow_origins \"*\" (browsers refuse credentials "
                        + "for a wildcard origin): list the origins")
                ok = false
            }
        }
        if let v = f["allow_methods"] {
            let methods = r.locatedStringList(v, "cors.allow_methods") ?? []
            for method in methods where !method.value.utf8.allSatisfy({ $0 >= 65 && $0 <= 90 }) {
                r.problem(method.at, "cors.allow_methods: invalid method '\(method.value)' (uppercase letters only)")
                ok = false
            }
            cors.allowMethods = methods.map(\.value)
        } else if let methods = route.methods {
            cors.allowMethods = methods
        }
        if let v = f["allow_headers"] { cors.allowHeaders = headerNames(v, "cors.allow_headers", r, &ok) }
        if let v = f["expose_headers"] { cors.exposeHeaders = headerNames(v, "cors.expose_headers", r, &ok) }
        if let v = f["max_age"], let ns = r.duration(v, "cors.max_age", allowZero: true) {
            cors.maxAge = Int(ns / 1_000_000_000)
        }
        return ok ? cors : nil
    }

    /// A list of header names (HTTP tokens); `*` is refused (it would mean "any" to a browser only without
    /// credentials, and never covers `Authorization`): list the names.
    private func headerNames(_ at: Located, _ what: String, _ r: YAMLReader, _ ok: inout Bool) -> [String] {
        guard let list = r.locatedStringList(at, what) else {
            ok = false
            return []
        }
        var names: [String] = []
        for entry in list {
            let token = entry.value.utf8.allSatisfy { b in
                TenantID.isIDByte(b) || "!#$%&'+^`|~".utf8.contains(b)
            }
            if entry.value == "*" {
                r.problem(entry.at, "\(what): \"*\" is not supported; list the header names")
                ok = false
            } else if !token {
                r.problem(entry.at, "\(what): invalid header name '\(entry.value)'")
                ok = false
            } else {
                names.append(entry.value)
            }
        }
        return names
    }
}
