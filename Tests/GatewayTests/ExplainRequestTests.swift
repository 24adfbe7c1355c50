import Gateway
import Testing

/// The request `gatehouse explain` reads from its command line.
@Suite struct ExplainRequestTests {
    func parse(_ method: String, _ url: String, _ headers: [String] = []) throws -> ExplainRequest {
        try ExplainRequest.parse(method: method, url: url, headers: headers, defaultHost: "127.0.0.1:8080", defaultScheme: "http")
    }

    func host(_ r: ExplainRequest) -> [String] { r.headers.filter { $0.0.lowercased() == "host" }.map(\.1) }

    @Test func anAbsoluteURLNamesTheHostAndAPathTakesTheListener() throws {
        let absolute = try parse("GET", "https://API.example.com:8443/api/x?q=1#frag")
        #expect(absolute.target == "/api/x?q=1")
        #expect(absolute.scheme == "https")
        #expect(host(absolute) == ["API.example.com:8443"])
        #expect(try parse("GET", "http://example.com").target == "/")
        #expect(try parse("GET", "http://example.com?x=1").target == "/?x=1")
        let path = try parse("POST", "/api/x", ["Content-Type:  application/json ", "X-Tenant-ID: acme"])
        #expect(host(path) == ["127.0.0.1:8080"])
        #expect(path.scheme == "http")
        #expect(path.headers.map(\.0) == ["Host", "Content-Type", "X-Tenant-ID"])
        #expect(path.headers[1].1 == "application/json")
        // A Host given with -H wins over the URL's.
        #expect(host(try parse("GET", "http://a.example/x", ["host: b.example"])) == ["b.example"])
        // What the gateway refuses is for explain to explain, not a usage error.
        #expect(try parse("TRACE", "/a/../b").method == "TRACE")
    }

    @Test func whatDescribesNoRequestIsAUsageError() {
        for (method, url, headers) in [
            ("get", "/x", []), ("", "/x", []), ("G ET", "/x", []), ("GET", "x", []), ("GET", "ftp://h/x", []),
            ("GET", "/x y", []), ("GET", "http:///x", []), ("GET", "http://user@h/x", []), ("GET", "/x", ["no colon"]),
            ("GET", "/x", ["Bad Name: v"]), ("GET", "/x", [": v"]), ("GET", "/x", ["X-A: a\u{1}b"]),
        ] as [(String, String, [String])] {
            #expect(throws: ExplainRequest.UsageError.self, Comment(rawValue: "\(method) \(url) \(headers)")) {
                try parse(method, url, headers)
            }
        }
    }
}
