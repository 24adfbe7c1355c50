import NIOHTTP1
import Testing

@testable import Upstream

@Suite struct HeaderRewriterTests {
    let forwarding = HeaderRewriter.Forwarding(clientAddress: "10.1.2.3", host: "api.example.com", requestID: "rid-1")

    @Test func removesHopByHopAndConnectionListedHeaders() {
        let client = HTTPHeaders([
            ("Host", "api.example.com"), ("Connection", "keep-alive, X-Secret"), ("Keep-Alive", "timeout=5"),
            ("Proxy-Authorization", "Basic x"), ("Proxy-Connection", "keep-alive"), ("TE", "trailers"),
            ("Trailer", "X-T"), ("Upgrade", "websocket"), ("Transfer-Encoding", "chunked"), ("x-secret", "1"),
            ("Accept", "*/*"), ("Expect", "100-continue"), ("Content-Length", "5"),
        ])
        let out = HeaderRewriter().upstreamRequestHeaders(
            client, forwarding: forwarding, framing: .contentLength(5), defaultHost: "t:1")
        let names = Set(out.map { $0.name.lowercased() })
        for gone in ["connection", "keep-alive", "proxy-authorization", "proxy-connection", "te", "trailer", "upgrade",
            "transfer-encoding", "x-secret", "expect"]
        {
            #expect(!names.contains(gone), "\(gone) must not be forwarded")
        }
        #expect(out["accept"] == ["*/*"])
        #expect(out["content-length"] == ["5"])
        #expect(out["host"] == ["api.example.com"])
    }

    @Test func reservedIdentityHeadersCannotBeSpoofedInAnyCase() {
        let client = HTTPHeaders([
            ("Host", "h"), ("X-Tenant-ID", "evil"), ("x-tenant-id", "evil2"), ("X-USER-ID", "root"), ("x-Plan", "ent"),
            ("X-Roles", "admin"), ("Connection", "close, X-Tenant-ID"),
        ])
        let rewriter = HeaderRewriter(reserved: ["X-Tenant-ID", "x-user-id", "x-plan", "x-roles"])
        let out = rewriter.upstreamRequestHeaders(client, forwarding: forwarding, framing: .none, defaultHost: "t:1")
        #expect(out["x-tenant-id"].isEmpty)
        #expect(out["x-user-id"].isEmpty)
        #expect(out["x-plan"].isEmpty)
        #expect(out["x-roles"].isEmpty)
    }

    @Test func forwardingHeaders() {
        let client = HTTPHeaders([
            ("Host", "h"), ("X-Forwarded-For", "1.1.1.1"), ("X-Forwarded-Proto", "https"), ("X-Forwarded-Host", "evil"),
            ("X-Request-ID", "client-id"),
        ])
        let out = HeaderRewriter().upstreamRequestHeaders(client, forwarding: forwarding, framing: .chunked, defaultHost: "t:1")
        // An untrusted peer's forwarding claims are replaced by what the gateway saw.
        #expect(out["x-forwarded-for"] == ["10.1.2.3"])
        #expect(out["x-forwarded-proto"] == ["http"])
        #expect(out["x-real-ip"] == ["10.1.2.3"])
        // A trusted proxy's chain is extended and its protocol kept; X-Real-IP is the resolved client.
        var trusted = forwarding
        trusted.peerTrusted = true
        trusted.clientAddress = "1.1.1.1"
        let viaProxy = HeaderRewriter().upstreamRequestHeaders(client, forwarding: trusted, framing: .none, defaultHost: "t:1")
        #expect(viaProxy["x-forwarded-for"] == ["1.1.1.1, 10.1.2.3"])
        #expect(viaProxy["x-forwarded-proto"] == ["https"])
        #expect(viaProxy["x-real-ip"] == ["1.1.1.1"])
        #expect(out["x-forwarded-host"] == ["api.example.com"])
        #expect(out["x-request-id"] == ["rid-1"])
        #expect(out["transfer-encoding"] == ["chunked"])
    }

    @Test func missingHostGetsTheTarget() {
        let out = HeaderRewriter().upstreamRequestHeaders(
            HTTPHeaders(), forwarding: forwarding, framing: .none, defaultHost: "127.0.0.1:9001")
        #expect(out["host"] == ["127.0.0.1:9001"])
    }

    @Test func responseHeaders() {
        let upstream = HTTPHeaders([
            ("Content-Length", "10"), ("Connection", "close, X-Internal"), ("X-Internal", "1"), ("Keep-Alive", "x"),
            ("Transfer-Encoding", "chunked"), ("Set-Cookie", "a=1"), ("X-Request-ID", "upstream-id"),
        ])
        var names: [String] = []
        let cl = HeaderRewriter.forEachClientResponseHeader(upstream) { name, _ in names.append(name) }
        #expect(cl == 10)
        #expect(names == ["Set-Cookie"])
        let twice = HeaderRewriter.forEachClientResponseHeader(HTTPHeaders([("Content-Length", "1"), ("Content-Length", "1")])) { _, _ in }
        #expect(twice == nil)
    }

    @Test func hopByHopClassification() {
        for name in ["Connection", "keep-alive", "TE", "Trailer", "UPGRADE", "Transfer-Encoding", "Proxy-Foo"] {
            #expect(HopByHop.isHopByHop(name), "\(name)")
        }
        for name in ["Accept", "Proxy", "Content-Length", "Trailers", "te-x"] {
            #expect(!HopByHop.isHopByHop(name), "\(name)")
        }
    }
}
