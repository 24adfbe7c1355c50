/// Checks on the request target and request ids that keep ambiguous input away from upstreams.
public enum RequestTarget {
    /// Splits an origin-form target into its normalized path and its query (the query keeps its `?`); nil when
    /// the target is not origin-form or its path stays ambiguous after normalization.
    ///
    /// The SPEC's normalization, so the router sees what a normalizing upstream (Tomcat, Spring, IIS) would:
    /// percent-encoded unreserved characters (`A-Z a-z 0-9 - . _ ~`) are decoded and `//` runs merged; the
    /// result is what is routed and what is forwarded. Refused as ambiguous: a `.` or `..` segment in any
    /// spelling (`%2e`, and `..;`/`.;` path parameters, also with an encoded `;`), an encoded `/` or `\`, a raw
    /// `\`, a `#`, and a `%` not followed by two hex digits. Other percent-encodings are kept as sent.
    public static func split(_ uri: String) -> (path: Substring, query: Substring)? {
        let utf8 = uri.utf8
        guard utf8.first == UInt8(ascii: "/") else { return nil }
        let q = uri.firstIndex(of: "?") ?? uri.endIndex
        let raw = uri[..<q]
        guard let path = normalize(raw) else { return nil }
        return (path, uri[q...])
    }

    /// The normalized path (see ``split(_:)``), or nil when ambiguous. Returns `path` itself, without copying,
    /// when there is nothing to normalize (the usual case).
    public static func normalize(_ path: Substring) -> Substring? {
        var needsWork = false
        var previousSlash = false
        var dotted = false
        for b in path.utf8 {
            switch b {
            case UInt8(ascii: "%"): needsWork = true
            case UInt8(ascii: "\\"), UInt8(ascii: "#"): return nil
            case UInt8(ascii: "/"):
                if previousSlash { needsWork = true }
            case UInt8(ascii: "."), UInt8(ascii: ";"): dotted = true
            default: break
            }
            previousSlash = b == UInt8(ascii: "/")
        }
        if !needsWork {
            if dotted && hasDotSegment(path.utf8) { return nil }
            return path
        }
        // Decode unreserved escapes and merge slashes, into a new buffer.
        var out: [UInt8] = []
        out.reserveCapacity(path.utf8.count)
        var bytes = path.utf8.makeIterator()
        while let b = bytes.next() {
            if b == UInt8(ascii: "%") {
                guard let h = bytes.next(), let l = bytes.next(), let hi = Digest.hexDigit(h), let lo = Digest.hexDigit(l) else {
                    return nil
                }
                let decoded = hi << 4 | lo
                if decoded == UInt8(ascii: "/") || decoded == UInt8(ascii: "\\") { return nil }
                if isUnreserved(decoded) {
                    out.append(decoded)
                } else {
                    out.append(contentsOf: [b, h, l])
                }
                continue
            }
            if b == UInt8(ascii: "/"), out.last == UInt8(ascii: "/") { continue }
            out.append(b)
        }
        if hasDotSegment(out) { return nil }
        return Substring(decoding: out, as: UTF8.self)
    }

    /// A `.` or `..` segment, also with path parameters (`..;x`, `.;`, `..%3b`).
    static func hasDotSegment<C: Collection>(_ path: C) -> Bool where C.Element == UInt8 {
        var start = path.startIndex
        while start != path.endIndex {
            let end = path[start...].firstIndex(of: UInt8(ascii: "/")) ?? path.endIndex
            var segment = path[start..<end]
            if let semicolon = segment.firstIndex(of: UInt8(ascii: ";")) { segment = segment[..<semicolon] }
            if let percent = segment.firstIndex(of: UInt8(ascii: "%")) {
                let rest = segment[percent...]
                if rest.count >= 3, rest.dropFirst().prefix(2).elementsEqual("3b".utf8, by: { $0 | 0x20 == $1 }) {
                    segment = segment[..<percent]
                }
            }
            if segment.elementsEqual(".".utf8) || segment.elementsEqual("..".utf8) { return true }
            start = end == path.endIndex ? end : path.index(after: end)
        }
        return false
    }

    static func isUnreserved(_ b: UInt8) -> Bool {
        (b >= 0x41 && b <= 0x5A) || (b >= 0x61 && b <= 0x7A) || (b >= 0x30 && b <= 0x39) || b == UInt8(ascii: "-")
            || b == UInt8(ascii: ".") || b == UInt8(ascii: "_") || b == UInt8(ascii: "~")
    }


    /// A client's `X-Request-ID` is kept only when it is 1-128 characters of `A-Z a-z 0-9 . _ -`.
    public static func isValidRequestID(_ id: String) -> Bool {
        let utf8 = id.utf8
        return !utf8.isEmpty && utf8.count <= 128 && utf8.allSatisfy(TenantID.isIDByte)
    }
}
