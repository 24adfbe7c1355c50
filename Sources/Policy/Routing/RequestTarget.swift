/// Checks on the request target and request ids that keep ambiguous input away from upstreams.
public enum RequestTarget {
    /// Splits an origin-form target into path and query (query includes its `?`); nil when the target is not
    /// origin-form or its path holds a dot segment (`.`/`..`, plain or percent-encoded), which upstreams
    /// could resolve to a path the router never saw.
    public static func split(_ uri: String) -> (path: Substring, query: Substring)? {
        let utf8 = uri.utf8
        guard utf8.first == UInt8(ascii: "/") else { return nil }
        let q = uri.firstIndex(of: "?") ?? uri.endIndex
        let path = uri[..<q]
        let hash = path.utf8.contains(UInt8(ascii: "#"))
        if hash { return nil }
        if path.utf8.contains(UInt8(ascii: ".")) || path.utf8.contains(UInt8(ascii: "%")) {
            for segment in path.split(separator: "/", omittingEmptySubsequences: false) {
                let decoded = segment.replacingOccurrences(of: "%2e", with: ".").replacingOccurrences(of: "%2E", with: ".")
                if decoded == "." || decoded == ".." { return nil }
                if segment.contains("%2f") || segment.contains("%2F") || segment.contains("%5c") || segment.contains("%5C") {
                    return nil
                }
            }
        }
        return (path, uri[q...])
    }

    /// A client's `X-Request-ID` is kept only when it is 1-128 characters of `A-Z a-z 0-9 . _ -`.
    public static func isValidRequestID(_ id: String) -> Bool {
        let utf8 = id.utf8
        return !utf8.isEmpty && utf8.count <= 128 && utf8.allSatisfy(TenantID.isIDByte)
    }
}
