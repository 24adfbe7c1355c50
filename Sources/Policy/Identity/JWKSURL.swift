/// A parsed `jwks_url` (or an OpenID discovery URL): `http://` or `https://`, host, optional port, path.
public struct JWKSURL: Sendable, Equatable, CustomStringConvertible {
    public var tls: Bool
    public var host: String
    public var port: Int
    public var path: String

    public init(tls: Bool, host: String, port: Int, path: String) {
        self.tls = tls
        self.host = host
        self.port = port
        self.path = path
    }

    public static func parse(_ url: String) -> JWKSURL? {
        let tls: Bool
        let rest: Substring
        if url.hasPrefix("https://") {
            tls = true
            rest = url.dropFirst("https://".count)
        } else if url.hasPrefix("http://") {
            tls = false
            rest = url.dropFirst("http://".count)
        } else {
            return nil
        }
        let slash = rest.firstIndex(of: "/") ?? rest.endIndex
        let authority = String(rest[..<slash])
        let path = slash == rest.endIndex ? "/" : String(rest[slash...])
        guard !authority.isEmpty, !path.utf8.contains(where: { $0 <= 0x20 || $0 >= 0x7F }), !path.contains("#")
        else { return nil }
        if let hp = HostPort.parse(authority), hp.port > 0 {
            return JWKSURL(tls: tls, host: hp.host, port: hp.port, path: path)
        }
        guard !authority.contains(":"), authority.utf8.allSatisfy({ TenantID.isIDByte($0) }) else { return nil }
        return JWKSURL(tls: tls, host: authority, port: tls ? 443 : 80, path: path)
    }

    /// The OpenID Connect discovery document of `issuer`: `{issuer}/.well-known/openid-configuration`.
    public static func discovery(issuer: String) -> JWKSURL? {
        let base = issuer.hasSuffix("/") ? issuer : issuer + "/"
        return parse(base + ".well-known/openid-configuration")
    }

    /// The Host header: the port only when it is not the scheme's default.
    public var hostHeader: String {
        let name = host.contains(":") ? "[\(host)]" : host
        return port == (tls ? 443 : 80) ? name : "\(name):\(port)"
    }

    public var description: String { "\(tls ? "https" : "http")://\(hostHeader)\(path)" }
}
