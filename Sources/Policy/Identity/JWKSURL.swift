/// A parsed `jwks_url`: plain HTTP only (keys are public; pin them with a file when the network is hostile).
public struct JWKSURL: Sendable, Equatable {
    public var host: String
    public var port: Int
    public var path: String

    public static func parse(_ url: String) -> JWKSURL? {
        guard url.hasPrefix("http://") else { return nil }
        let rest = url.dropFirst("http://".count)
        let slash = rest.firstIndex(of: "/") ?? rest.endIndex
        let authority = String(rest[..<slash])
        let path = slash == rest.endIndex ? "/" : String(rest[slash...])
        guard !authority.isEmpty, !path.contains(" ") else { return nil }
        if let hp = HostPort.parse(authority), hp.port > 0 { return JWKSURL(host: hp.host, port: hp.port, path: path) }
        guard !authority.contains(":"), authority.utf8.allSatisfy({ TenantID.isIDByte($0) }) else { return nil }
        return JWKSURL(host: authority, port: 80, path: path)
    }
}
