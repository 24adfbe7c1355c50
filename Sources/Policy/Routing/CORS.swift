/// CORS decisions for a route with `cors` (the Fetch standard's CORS protocol, server side): the answer to a
/// preflight, and the headers every other response on the route carries.
///
/// Pure: it sees header values, never a socket. The gateway owns CORS on such a route: the upstream's own
/// `Access-Control-*` response headers are dropped (``isCORSResponseHeader(_:)``), so a response carries exactly
/// one `Access-Control-Allow-Origin`.
public enum CORSPolicy {
    /// Methods a browser sends without asking (CORS-safelisted): a preflight for one is never refused on its
    /// method, whatever `allow_methods` lists, because the browser would not hold the listed ones against it.
    public static let safelistedMethods: Set<String> = ["GET", "HEAD", "POST"]
    /// Request headers a preflight may always name (lowercased): CORS-safelisted ones, which a browser lists
    /// only when their value is unusual. `Content-Type` is not among them: a browser names it for a type other
    /// than form or text ones (`application/json`), which the route must allow.
    public static let safelistedHeaders: Set<String> = ["accept", "accept-language", "content-language"]

    static let preflightVary = "Origin, Access-Control-Request-Method, Access-Control-Request-Headers"

    /// Decides a preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`): the 204's headers, or
    /// the 403 `cors_rejected` naming the first thing not allowed.
    /// - Parameters:
    ///   - origin: the `Origin` header as sent.
    ///   - method: `Access-Control-Request-Method`, compared exactly (browsers upper-case the standard methods).
    ///   - requestHeaders: `Access-Control-Request-Headers` (several fields joined with `,`); nil when absent.
    public static func preflight(
        _ cors: CORSConfig, origin: String, method: String, requestHeaders: String?
    ) -> Result<[(String, String)], Denial> {
        guard let allowOrigin = allowOrigin(cors, origin: origin) else {
            return .failure(.corsRejected("The origin '\(origin)' may not call this route."))
        }
        if !safelistedMethods.contains(method) && !cors.allowMethods.contains(method) {
            return .failure(
                .corsRejected(
                    "The method '\(method)' is not allowed cross-origin on this route (allowed: \(methodList(cors)))."))
        }
        if let requestHeaders {
            var allowed: Set<String>? = nil
            for name in requestHeaders.split(separator: ",") {
                let trimmed = name.trimmingOWS()
                if trimmed.isEmpty { continue }
                let lower = trimmed.lowercased()
                if safelistedHeaders.contains(lower) { continue }
                if allowed == nil { allowed = Set(cors.allowHeaders.map { $0.lowercased() }) }
                if !allowed!.contains(lower) {
                    return .failure(.corsRejected("The request header '\(trimmed)' is not allowed cross-origin on this route."))
                }
            }
        }
        var headers = [("Access-Control-Allow-Origin", allowOrigin)]
        if cors.allowCredentials { headers.append(("Access-Control-Allow-Credentials", "true")) }
        headers.append(("Access-Control-Allow-Methods", methodList(cors)))
        if !cors.allowHeaders.isEmpty {
            headers.append(("Access-Control-Allow-Headers", cors.allowHeaders.joined(separator: ", ")))
        }
        if let maxAge = cors.maxAge { headers.append(("Access-Control-Max-Age", String(maxAge))) }
        headers.append(("Vary", preflightVary))
        return .success(headers)
    }

    /// The headers for any other response on the route (upstream answers and denials alike): for an allowed
    /// origin, `Access-Control-Allow-Origin`, `Access-Control-Allow-Credentials` when set and
    /// `Access-Control-Expose-Headers` when any; always `Vary: Origin` (the answer depends on it, so a cache
    /// must not hand one origin's answer to another). No `Origin` or a refused one: `Vary: Origin` alone.
    public static func responseHeaders(_ cors: CORSConfig, origin: String?) -> [(String, String)] {
        guard let origin, let allowOrigin = allowOrigin(cors, origin: origin) else { return [("Vary", "Origin")] }
        var headers = [("Access-Control-Allow-Origin", allowOrigin)]
        if cors.allowCredentials { headers.append(("Access-Control-Allow-Credentials", "true")) }
        if !cors.exposeHeaders.isEmpty {
            headers.append(("Access-Control-Expose-Headers", cors.exposeHeaders.joined(separator: ", ")))
        }
        headers.append(("Vary", "Origin"))
        return headers
    }

    /// The `Access-Control-Allow-Origin` value for `origin`: `*` for `["*"]` without credentials, else the
    /// origin exactly as the browser sent it (it compares byte for byte); nil when it may not call.
    public static func allowOrigin(_ cors: CORSConfig, origin: String) -> String? {
        switch cors.allowOrigins {
        case .any:
            // An opaque origin is never let in by the wildcard: only by listing `null`.
            guard origin != "null", CORSConfig.Origin.parse(origin) != nil else { return nil }
            return cors.allowCredentials ? origin : "*"
        case .listed(let patterns):
            if origin == "null" { return patterns.contains(.opaque) ? origin : nil }
            guard let parsed = CORSConfig.Origin.parse(origin) else { return nil }
            return patterns.contains(where: { $0.matches(parsed) }) ? origin : nil
        }
    }

    /// `Access-Control-*` response headers, which the gateway sets on a CORS route and drops from the upstream's
    /// response (case-insensitive).
    public static func isCORSResponseHeader(_ name: String) -> Bool {
        let prefix = "access-control-".utf8
        let n = name.utf8
        guard n.count > prefix.count else { return false }
        return zip(n, prefix).allSatisfy { a, b in a == b || (a >= 65 && a <= 90 && a + 32 == b) }
    }

    private static func methodList(_ cors: CORSConfig) -> String { cors.allowMethods.joined(separator: ", ") }
}

extension Substring {
    /// Without leading and trailing spaces and tabs (HTTP's optional whitespace).
    fileprivate func trimmingOWS() -> Substring {
        var s = self
        while let f = s.first, f == " " || f == "\t" { s = s.dropFirst() }
        while let l = s.last, l == " " || l == "\t" { s = s.dropLast() }
        return s
    }
}
