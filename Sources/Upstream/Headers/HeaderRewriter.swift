import NIOHTTP1

/// Rewrites request headers towards an upstream and response headers towards the client.
///
/// Hop-by-hop headers and every header named in `Connection` are dropped; framing headers are re-created
/// by the proxy; headers the gateway reserves (for example verified identity headers) are removed before the
/// gateway injects its own values, so no client-sent copy survives in any case variant.
public struct HeaderRewriter: Sendable {
    /// Lowercased names of headers that clients may not send upstream (the gateway sets them).
    public var reserved: Set<String>

    public init(reserved: Set<String> = []) {
        self.reserved = Set(reserved.map { $0.lowercased() })
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
            if !reserved.isEmpty || !listed.isEmpty {
                let lower = name.lowercased()
                if reserved.contains(lower) || listed.contains(lower) { continue }
            }
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

    /// Copies upstream response headers for the client: hop-by-hop and Connection-listed headers and the
    /// framing headers go (the caller re-frames); `X-Request-ID` is set by the caller.
    /// Returns the headers and the upstream's Content-Length, if it sent a single valid one.
    public static func clientResponseHeaders(_ upstream: HTTPHeaders) -> (headers: HTTPHeaders, contentLength: Int?) {
        let listed = HopByHop.connectionListed(upstream)
        var out = HTTPHeaders()
        out.reserveCapacity(upstream.count + 2)
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
            if !listed.isEmpty && listed.contains(name.lowercased()) { continue }
            out.add(name: name, value: value)
        }
        if lengths != 1 { contentLength = nil }
        return (out, contentLength)
    }
}
