import Testing

@testable import Policy

/// The SPEC's path normalization and the client-address rules, on their own.
@Suite struct RequestTargetTests {
    static func normalized(_ path: String) -> String? { RequestTarget.normalize(Substring(path)).map(String.init) }

    @Test func unreservedEscapesAreDecodedAndSlashRunsMerged() {
        #expect(Self.normalized("/api/%61dmin/x") == "/api/admin/x")
        #expect(Self.normalized("/api/%41%5a%30%2D%2e%5F%7e") == "/api/AZ0-._~")
        #expect(Self.normalized("//public///x//") == "/public/x/")
        #expect(Self.normalized("/a%20b/%3Fq/%25") == "/a%20b/%3Fq/%25")  // reserved or other escapes stay as sent
        #expect(Self.normalized("/plain/path.json") == "/plain/path.json")
        #expect(Self.normalized("/a;v=1/b") == "/a;v=1/b")
    }

    @Test func whatStaysAmbiguousIsRefused() {
        for path in [
            "/public/../api", "/public/./x", "/public/..", "/public/.", "/public/%2e%2e/api", "/public/%2E./api",
            "/public/.%2e", "/public/..;/api/admin/x", "/public/.;/x", "/public/..;jsessionid=1/x", "/public/..%3B/x",
            "/public/..%3b/x", "/a%2fb", "/a%2Fb", "/a%5cb", "/a%5Cb", "/public\\..\\api", "/a\\b", "/a#b", "/a%zz",
            "/a%4", "/a%",
        ] {
            #expect(Self.normalized(path) == nil, "\(path) should be refused")
        }
        // Dots inside names are not dot segments.
        #expect(Self.normalized("/a/..b/c.") == "/a/..b/c.")
        #expect(Self.normalized("/a/...") == "/a/...")
    }

    @Test func splitKeepsTheQueryAsSent() {
        let r = RequestTarget.split("/api//%61/x?next=/../%2f")
        #expect(r.map { String($0.path) } == "/api/a/x")
        #expect(r.map { String($0.query) } == "?next=/../%2f")
        #expect(RequestTarget.split("http://evil/") == nil)
    }

    @Test func cidrs() throws {
        let net = try #require(CIDR("10.0.0.0/8"))
        #expect(net.contains("10.1.2.3"))
        #expect(!net.contains("11.0.0.1"))
        #expect(net.contains("::ffff:10.9.9.9"))
        #expect(!net.contains("not-an-ip"))
        #expect(try #require(CIDR("127.0.0.1")).contains("127.0.0.1"))
        #expect(!(try #require(CIDR("127.0.0.1"))).contains("127.0.0.2"))
        #expect(try #require(CIDR("2001:db8::/32")).contains("2001:db8:1::5"))
        #expect(try #require(CIDR("0.0.0.0/0")).contains("8.8.8.8"))
        #expect(CIDR("10.0.0.0/33") == nil)
        #expect(CIDR("10.0.0/8") == nil)
        #expect(CIDR("10.0.0.0/x") == nil)
    }

    @Test func clientAddressThroughTrustedProxies() throws {
        let trusted = [try #require(CIDR("127.0.0.1")), try #require(CIDR("10.0.0.0/8"))]
        // An untrusted peer: its own claims are ignored.
        #expect(ClientAddress.resolve(peer: "192.0.2.9", forwardedFor: ["1.2.3.4"], trusted: trusted) == ("192.0.2.9", false))
        // A trusted peer: the rightmost address that is not a trusted proxy.
        #expect(
            ClientAddress.resolve(peer: "127.0.0.1", forwardedFor: ["1.1.1.1, 203.0.113.7", "10.0.0.2"], trusted: trusted)
                == ("203.0.113.7", true))
        // Every hop trusted: the leftmost.
        #expect(ClientAddress.resolve(peer: "127.0.0.1", forwardedFor: ["10.0.0.3, 10.0.0.2"], trusted: trusted) == ("10.0.0.3", true))
        // No header: the peer. Garbage ends the walk.
        #expect(ClientAddress.resolve(peer: "127.0.0.1", forwardedFor: [], trusted: trusted) == ("127.0.0.1", true))
        #expect(ClientAddress.resolve(peer: "127.0.0.1", forwardedFor: ["evil, 10.0.0.2"], trusted: trusted) == ("10.0.0.2", true))
        // No trusted proxies configured: always the peer.
        #expect(ClientAddress.resolve(peer: "127.0.0.1", forwardedFor: ["1.2.3.4"], trusted: []) == ("127.0.0.1", false))
    }
}
