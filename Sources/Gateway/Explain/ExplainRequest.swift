import HTTPWire

/// The request `gatehouse explain` is asked about, as the command line describes it.
public struct ExplainRequest: Sendable {
    public var method: String
    /// Origin-form: path and query.
    public var target: String
    /// In order, `Host` included (from the URL, unless given with `-H`).
    public var headers: [(String, String)]
    /// `http` or `https` (the listener it would arrive on).
    public var scheme: String
    /// The peer's address (for `trusted_proxies` and `X-Forwarded-For`).
    public var clientAddress: String

    public init(method: String, target: String, headers: [(String, String)], scheme: String, clientAddress: String = "127.0.0.1") {
        self.method = method
        self.target = target
        self.headers = headers
        self.scheme = scheme
        self.clientAddress = clientAddress
    }

    /// A command line that does not describe a request (a usage error, not a denial).
    public struct UsageError: Error, CustomStringConvertible, Sendable {
        public var description: String
    }

    /// Reads `METHOD URL [-H 'Name: value']...`. The URL is absolute (`http://host:port/path?q`: its authority
    /// becomes the `Host` header) or a path (`/path?q`: `Host` is `defaultHost`); a `Host` given with `-H` wins
    /// either way. What the gateway itself would refuse (dot segments, TRACE, a bad `Host`) is not a usage
    /// error: explain says why it is refused.
    public static func parse(
        method: String, url: String, headers: [String], defaultHost: String, defaultScheme: String
    ) throws(UsageError) -> ExplainRequest {
        guard !method.isEmpty, method.utf8.count <= 32,
            method.utf8.allSatisfy({ ($0 >= 65 && $0 <= 90) || $0 == UInt8(ascii: "-") || $0 == UInt8(ascii: "_") })
        else {
            throw UsageError(description: "METHOD must be an upper-case HTTP method such as GET or POST, not '\(method)'")
        }
        guard !url.isEmpty, url.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7F }) else {
            throw UsageError(description: "URL must be printable ASCII without spaces (percent-encode the rest): '\(url)'")
        }
        var scheme = defaultScheme
        var authority: String? = nil
        var target: Substring
        let lower = url.lowercased()
        if lower.hasPrefix("http://") || lower.hasPrefix("https://") {
            scheme = lower.hasPrefix("https://") ? "https" : "http"
            let rest = url.dropFirst(scheme.count + 3)
            let end = rest.firstIndex { $0 == "/" || $0 == "?" || $0 == "#" } ?? rest.endIndex
            let host = rest[..<end]
            guard !host.isEmpty, !host.contains("@") else {
                throw UsageError(description: "URL '\(url)' has no host (or has user information, which is not supported)")
            }
            authority = String(host)
            target = rest[end...]
            if !target.hasPrefix("/") { target = "/" + target }
        } else if url.hasPrefix("/") {
            target = Substring(url)
        } else {
            throw UsageError(description: "URL must be absolute (http://host/path) or a path (/path), not '\(url)'")
        }
        // A fragment never goes on the wire.
        if let hash = target.firstIndex(of: "#") { target = target[..<hash] }
        var parsed: [(String, String)] = []
        for line in headers {
            guard let colon = line.firstIndex(of: ":") else {
                throw UsageError(description: "-H takes 'Name: value', not '\(line)'")
            }
            let name = String(line[..<colon])
            guard !name.isEmpty, name.utf8.allSatisfy(ASCII.isTokenByte) else {
                throw UsageError(description: "-H '\(line)': '\(name)' is not a header name")
            }
            let value = line[line.index(after: colon)...].trimmingSpaces
            guard value.utf8.allSatisfy({ $0 == 0x09 || ($0 >= 0x20 && $0 != 0x7F) }) else {
                throw UsageError(description: "-H '\(name)': the value holds control characters")
            }
            parsed.append((name, String(value)))
        }
        if !parsed.contains(where: { $0.0.lowercased() == "host" }) {
            parsed.insert(("Host", authority ?? defaultHost), at: 0)
        }
        return ExplainRequest(method: method, target: String(target), headers: parsed, scheme: scheme)
    }
}

extension Substring {
    fileprivate var trimmingSpaces: Substring {
        var s = self
        while s.first == " " || s.first == "\t" { s = s.dropFirst() }
        while s.last == " " || s.last == "\t" { s = s.dropLast() }
        return s
    }
}
