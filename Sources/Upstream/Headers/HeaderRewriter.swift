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
        public var clientAddress: String
        public var proto: String
        public var host: String?
        public var requestID: String

        public init(clientAddress: String, proto: String = "http", host: String?, requestID: String) {
            self.clientAddress = clientAddress
            self.proto = proto
            self.host = host
            self.requestID = requestID
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
    /// `Expect` is dropped too: the gateway answers `100-continue` itself.
    public func upstreamRequestHeaders(
        _ client: HTTPHeaders, forwarding: Forwarding, framing: BodyFraming, defaultHost: String
    ) -> HTTPHeaders {
        let listed = HopByHop.connectionListed(client)
        var out = HTTPHeaders()
        out.reserveCapacity(client.count + 5)
        var priorXFF: String? = nil
        var sawHost = false
        for (name, value) in client {
            if HopByHop.isHopByHop(name) { continue }
            if HopByHop.equalsLower(name.utf8, "content-length") || HopByHop.equalsLower(name.utf8, "expect") {
                continue
            }
            if HopByHop.equalsLower(name.utf8, "x-forwarded-for") {
                priorXFF = priorXFF.map { $0 + ", " + value } ?? value
                continue
            }
            if HopByHop.equalsLower(name.utf8, "x-forwarded-proto") || HopByHop.equalsLower(name.utf8, "x-forwarded-host")
                || HopByHop.equalsLower(name.utf8, "x-request-id")
            {
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
        out.add(name: "X-Forwarded-For", value: priorXFF.map { $0 + ", " + forwarding.clientAddress } ?? forwarding.clientAddress)
        out.add(name: "X-Forwarded-Proto", value: forwarding.proto)
        if let host = forwarding.host { out.add(name: "X-Forwarded-Host", value: host) }
        out.add(name: "X-Request-ID", value: forwarding.requestID)
        return out
    }

    /// Walks the upstream response headers that go to the client: hop-by-hop and Connection-listed headers
    /// and the framing headers are skipped (the caller re-frames), as is `X-Request-ID` (the caller sets it).
    /// Returns the upstream's Content-Length, if it sent exactly one valid one.
    public static func forEachClientResponseHeader(
        _ upstream: HTTPHeaders, _ body: (String, String) -> Void
    ) -> Int? {
        let listed = HopByHop.connectionListed(upstream)
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
