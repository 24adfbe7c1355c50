import NIOHTTP1

/// Rewrites request headers towards an upstream and response headers towards the client.
///
/// Hop-by-hop headers and every header named in `Connection` are dropped; framing headers are re-created
/// by the proxy; headers the gateway reserves (for example verified identity headers) are removed before the
/// gateway injects its own values, so no client-sent copy survives in any case variant.
public struct HeaderRewriter: Sendable {
    /// Lowercased names of headers that clients may not send upstream (the gateway sets them).
    public let reserved: [String]

    public init(reserved: Set<String> = []) {
        self.reserved = reserved.map { $0.lowercased() }.sorted()
    }

    /// What the proxy knows about the client side of a request.
    public struct Forwarding: Sendable {
        /// The client, as resolved through trusted proxies (`X-Real-IP`).
        public var clientAddress: String
        /// The connection's peer (appended to `X-Forwarded-For`).
        public var peerAddress: String
        /// The peer is a trusted proxy: its `X-Forwarded-For` is extended and its `X-Forwarded-Proto` kept;
        /// otherwise both are replaced.
        public var peerTrusted: Bool
        public var proto: String
        public var host: String?
        public var requestID: String

        public init(
            clientAddress: String, peerAddress: String? = nil, peerTrusted: Bool = false, proto: String = "http",
            host: String?, requestID: String
        ) {
            self.clientAddress = clientAddress
            self.peerAddress = peerAddress ?? clientAddress
            self.peerTrusted = peerTrusted
            self.proto = proto
            self.host = host
            self.requestID = requestID
        }
    }

    /// Which client headers a route lets through.
    public struct Policy: Sendable {
        /// Drop headers whose names contain `_` (`server.underscores_in_headers: drop`).
        public var dropUnderscores = true
        /// Keep `X-HTTP-Method-Override`, `X-HTTP-Method`, `X-Method-Override` (a route's `allow_method_override`).
        public var allowMethodOverride = false

        public init(dropUnderscores: Bool = true, allowMethodOverride: Bool = false) {
            self.dropUnderscores = dropUnderscores
            self.allowMethodOverride = allowMethodOverride
        }
    }

    /// How the request body is framed towards the upstream.
    public enum BodyFraming: Sendable, Equatable {
        case none
        case contentLength(Int)
        case chunked
    }

    /// Builds the upstream request headers from the client's.
    ///
    /// `Expect` is dropped too: the gateway answers `100-continue` itself. So are, always, the client's
    /// `Forwarded`, `X-Real-IP`, `True-Client-IP` (the gateway says who the client is), `X-Original-URL` and
    /// `X-Rewrite-URL` (path overrides some servers honour), and, unless `policy` allows them, the method
    /// overrides and any name with `_`.
    public func upstreamRequestHeaders(
        _ client: HTTPHeaders, forwarding: Forwarding, framing: BodyFraming, defaultHost: String,
        policy: Policy = Policy()
    ) -> HTTPHeaders {
        let listed = HopByHop.connectionListed(client)
        var out = HTTPHeaders()
        out.reserveCapacity(client.count + 5)
        var priorXFF: String? = nil
        var priorProto: String? = nil
        var sawHost = false
        for (name, value) in client {
            if HopByHop.isHopByHop(name) { continue }
            if policy.dropUnderscores && name.utf8.contains(UInt8(ascii: "_")) { continue }
            if Self.neverForwarded(name, allowMethodOverride: policy.allowMethodOverride) { continue }
            if HopByHop.equalsLower(name.utf8, "content-length") || HopByHop.equalsLower(name.utf8, "expect") {
                continue
            }
            if HopByHop.equalsLower(name.utf8, "x-forwarded-for") {
                priorXFF = priorXFF.map { $0 + ", " + value } ?? value
                continue
            }
            if HopByHop.equalsLower(name.utf8, "x-forwarded-proto") {
                if priorProto == nil { priorProto = value }
                continue
            }
            if HopByHop.equalsLower(name.utf8, "x-forwarded-host") || HopByHop.equalsLower(name.utf8, "x-request-id") {
                continue
            }
            if HopByHop.containsLower(reserved, name) || HopByHop.containsLower(listed, name) { continue }
            if HopByHop.equalsLower(name.utf8, "host") { sawHost = true }
            out.add(name: name, value: value)
        }
        if !sawHost { out.add(name: "Host", value: defaultHost) }
        switch framing {
        case .none: break
        case .contentLength(let n): out.add(name: "Content-Length", value: String(n))
        case .chunked: out.add(name: "Transfer-Encoding", value: "chunked")
        }
        // A trusted proxy's chain is extended; anyone else's is replaced by what the gateway saw.
        let peer = forwarding.peerAddress
        if forwarding.peerTrusted, let prior = priorXFF {
            out.add(name: "X-Forwarded-For", value: prior + ", " + peer)
        } else {
            out.add(name: "X-Forwarded-For", value: peer)
        }
        out.add(name: "X-Forwarded-Proto", value: forwarding.peerTrusted ? (priorProto ?? forwarding.proto) : forwarding.proto)
        out.add(name: "X-Real-IP", value: forwarding.clientAddress)
        if let host = forwarding.host { out.add(name: "X-Forwarded-Host", value: host) }
        out.add(name: "X-Request-ID", value: forwarding.requestID)
        return out
    }

    /// Client headers the gateway never passes on (names of any case).
    static func neverForwarded(_ name: String, allowMethodOverride: Bool) -> Bool {
        let u = name.utf8
        switch u.count {
        case 9: return HopByHop.equalsLower(u, "forwarded") || HopByHop.equalsLower(u, "x-real-ip")
        case 14: return HopByHop.equalsLower(u, "true-client-ip") || HopByHop.equalsLower(u, "x-original-url")
        case 13: return HopByHop.equalsLower(u, "x-rewrite-url") || (!allowMethodOverride && HopByHop.equalsLower(u, "x-http-method"))
        case 17: return !allowMethodOverride && HopByHop.equalsLower(u, "x-method-override")
        case 22: return !allowMethodOverride && HopByHop.equalsLower(u, "x-http-method-override")
        default: return false
        }
    }

    /// Walks the upstream response headers that go to the client: hop-by-hop and Connection-listed headers
    /// and the framing headers are skipped (the caller re-frames), as is `X-Request-ID` (the caller sets it).
    /// Returns the upstream's Content-Length, if it sent exactly one valid one.
    public static func forEachClientResponseHeader(
        _ upstream: HTTPHeaders, _ body: (String, String) -> Void
    ) -> Int? {
        forEach(clientResponseHeaderOf: upstream, listed: HopByHop.connectionListed(upstream), body)
    }

    public static func forEachClientResponseHeader(
        _ upstream: [(name: String, value: String)], _ body: (String, String) -> Void
    ) -> Int? {
        forEach(clientResponseHeaderOf: upstream, listed: HopByHop.connectionListed(upstream), body)
    }

    private static func forEach<S: Sequence>(
        clientResponseHeaderOf upstream: S, listed: [String], _ body: (String, String) -> Void
    ) -> Int? where S.Element == (name: String, value: String) {
        var contentLength: Int? = nil
        var lengths = 0
        for (name, value) in upstream {
            if HopByHop.isHopByHop(name) { continue }
            if HopByHop.equalsLower(name.utf8, "content-length") {
                lengths += 1
                contentLength = Int(value)
                continue
            }
            if HopByHop.equalsLower(name.utf8, "x-request-id") { continue }
            if !listed.isEmpty && HopByHop.containsLower(listed, name) { continue }
            body(name, value)
        }
        return lengths == 1 ? contentLength : nil
    }

}
