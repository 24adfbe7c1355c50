/// `cors:` on a route: which browser origins may call it, and what their scripts may send and read.
///
/// The gateway answers the route's preflights itself and adds the CORS headers to every other response on the
/// route, denials included (``CORSPolicy``). Validated by the config loader: `"*"` stands alone and never with
/// `allow_credentials`; every other entry is `scheme://host[:port]`, `*.` allowed only as the leftmost label.
public struct CORSConfig: Sendable {
    /// Who may call: any origin (`["*"]`), or the listed ones.
    public enum AllowedOrigins: Sendable, Equatable {
        case any
        case listed([OriginPattern])
    }

    public var allowOrigins: AllowedOrigins
    /// Methods a preflight may ask for (`Access-Control-Allow-Methods`). Default: the route's `match.methods`,
    /// or GET, HEAD, POST for a route that takes any method. GET, HEAD and POST are always allowed (browsers
    /// never need a preflight's permission for them).
    public var allowMethods: [String] = ["GET", "HEAD", "POST"]
    /// Request headers a preflight may ask for (`Access-Control-Allow-Headers`), as written; matched
    /// case-insensitively. Accept, Accept-Language and Content-Language are always allowed.
    public var allowHeaders: [String] = []
    /// Response headers a script may read (`Access-Control-Expose-Headers`), e.g. the RateLimit headers.
    public var exposeHeaders: [String] = []
    /// Browsers may send cookies and `Authorization` and let scripts read the answer
    /// (`Access-Control-Allow-Credentials: true`).
    public var allowCredentials = false
    /// How long a browser may cache a preflight's answer, in whole seconds (`Access-Control-Max-Age`); nil:
    /// the header is not sent (browsers then cache for 5 s).
    public var maxAge: Int? = nil

    public init(allowOrigins: AllowedOrigins) {
        self.allowOrigins = allowOrigins
    }

    /// A serialized origin (RFC 6454 §6.2), `scheme://host[:port]`: scheme and host lowercased, a scheme's
    /// default port (80 for http, 443 for https) the same as none.
    public struct Origin: Sendable, Hashable {
        public var scheme: String
        public var host: String
        public var port: Int?

        public init(scheme: String, host: String, port: Int?) {
            self.scheme = scheme
            self.host = host
            self.port = port
        }

        /// Parses an `Origin` header value or a configured origin; nil for anything else (a path, a query,
        /// user info, `null`, a `*`).
        public static func parse(_ value: String) -> Origin? {
            let text = Substring(value)
            guard let sep = text.range(of: "://") else { return nil }
            let scheme = text[..<sep.lowerBound].lowercased()
            guard let first = scheme.utf8.first, Self.isLetter(first),
                scheme.utf8.allSatisfy({ Self.isLetter($0) || Self.isDigit($0) || $0 == 43 || $0 == 45 || $0 == 46 })
            else { return nil }
            let authority = text[sep.upperBound...]
            var host: Substring
            var portText: Substring? = nil
            if authority.hasPrefix("[") {
                // An IPv6 literal.
                guard let close = authority.firstIndex(of: "]") else { return nil }
                host = authority[...close]
                let rest = authority[authority.index(after: close)...]
                if !rest.isEmpty {
                    guard rest.hasPrefix(":") else { return nil }
                    portText = rest.dropFirst()
                }
                let inner = host.dropFirst().dropLast()
                guard !inner.isEmpty, inner.utf8.allSatisfy({ Self.isHexDigit($0) || $0 == 58 || $0 == 46 }) else { return nil }
            } else {
                if let colon = authority.lastIndex(of: ":") {
                    host = authority[..<colon]
                    portText = authority[authority.index(after: colon)...]
                } else {
                    host = Substring(authority)
                }
                guard Self.isHostName(host) else { return nil }
            }
            var port: Int? = nil
            if let portText {
                guard !portText.isEmpty, portText.utf8.count <= 5, portText.utf8.allSatisfy(Self.isDigit),
                    let n = Int(portText), n <= 65535
                else { return nil }
                port = n
            }
            if (scheme == "http" && port == 80) || (scheme == "https" && port == 443) { port = nil }
            return Origin(scheme: scheme, host: host.lowercased(), port: port)
        }

        /// Letters, digits, `-` and `.` labels: no empty label, no leading or trailing dot.
        static func isHostName(_ host: Substring) -> Bool {
            guard !host.isEmpty, host.first != ".", host.last != ".", !host.contains("..") else { return false }
            return host.utf8.allSatisfy { Self.isLetter($0) || Self.isDigit($0) || $0 == 45 || $0 == 46 }
        }

        static func isLetter(_ b: UInt8) -> Bool { (b >= 65 && b <= 90) || (b >= 97 && b <= 122) }
        static func isDigit(_ b: UInt8) -> Bool { b >= 48 && b <= 57 }
        static func isHexDigit(_ b: UInt8) -> Bool { isDigit(b) || (b >= 65 && b <= 70) || (b >= 97 && b <= 102) }
    }

    /// One `allow_origins` entry.
    public enum OriginPattern: Sendable, Hashable {
        /// Exactly this origin.
        case exact(Origin)
        /// `scheme://*.domain[:port]`: any host below `domain` (one label or more), never `domain` itself, with
        /// the same scheme and port.
        case subdomains(of: Origin)
        /// The literal `null` (sandboxed frames, `file:` pages): only when listed, never through `"*"`.
        case opaque

        /// Parses a configured origin: `null`, `scheme://host[:port]`, or `scheme://*.domain[:port]` where the
        /// domain has at least two labels (`https://*.com` is refused).
        public static func parse(_ text: String) -> OriginPattern? {
            if text == "null" { return .opaque }
            guard let sep = text.range(of: "://") else { return nil }
            let afterScheme = text[sep.upperBound...]
            if afterScheme.hasPrefix("*.") {
                let rest = String(text[..<sep.upperBound] + afterScheme.dropFirst(2))
                guard let domain = Origin.parse(rest), !domain.host.hasPrefix("["), domain.host.contains(".") else {
                    return nil
                }
                return .subdomains(of: domain)
            }
            return Origin.parse(text).map { .exact($0) }
        }

        /// Whether `origin` (parsed from a request) is covered.
        public func matches(_ origin: Origin) -> Bool {
            switch self {
            case .exact(let o):
                return o == origin
            case .subdomains(let domain):
                guard origin.scheme == domain.scheme, origin.port == domain.port else { return false }
                let host = origin.host.utf8
                let suffix = domain.host.utf8
                guard host.count > suffix.count + 1 else { return false }
                let cut = host.index(host.endIndex, offsetBy: -suffix.count)
                return host[cut...].elementsEqual(suffix) && host[host.index(before: cut)] == UInt8(ascii: ".")
            case .opaque:
                return false
            }
        }
    }
}
