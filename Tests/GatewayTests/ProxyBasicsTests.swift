import Foundation
import Testing

/// Live: the real gateway binary between raw sockets and real upstream servers.
@Suite(.serialized) struct ProxyBasicsTests {
    static let routes = """
          - name: users
            match: {path_prefix: /api/users}
            upstream: users
            strip_prefix: /api
            auth: none
          - name: users-write
            match: {path_prefix: /api/users, methods: [POST]}
            upstream: users
            auth: none
          - name: locked
            match: {path_prefix: /locked}
            upstream: users
        """

    @Test func forwardsWithRewrittenHeaders() throws {
        let up = try TestUpstream()
        defer { up.stop() }
        let gw = try GatewayProcess(yaml: testConfig(upstreams: ["users": [up.port]], routes: Self.routes))
        defer { gw.stop() }

        let r = try request(
            port: gw.port, "GET", "/api/users/7?x=1",
            headers: [
                ("X-Tenant-ID", "evil"), ("x-user-id", "root"), ("X-Plan", "enterprise"), ("X-Roles", "admin"),
                ("Connection", "X-Tenant-ID, X-Secret"), ("X-Secret", "s"), ("Keep-Alive", "timeout=1"),
                ("X-Forwarded-For", "6.6.6.6"), ("X-Request-ID", "client-id.1"),
            ])
        #expect(r.status == 200)
        #expect(r.header("X-Request-ID") == "client-id.1")
        let seen = try #require(up.requests.first)
        #expect(seen.uri == "/users/7?x=1")
        // The peer is no trusted proxy: its own X-Forwarded-For is replaced, not extended (SPEC, client addresses).
        #expect(seen.header("x-forwarded-for") == "127.0.0.1")
        #expect(seen.header("x-real-ip") == "127.0.0.1")
        #expect(seen.header("x-forwarded-proto") == "http")
        #expect(seen.header("x-forwarded-host") == "gateway.test")
        #expect(seen.header("x-request-id") == "client-id.1")
        #expect(seen.header("host") == "gateway.test")
        for spoofed in ["x-tenant-id", "x-user-id", "x-plan", "x-roles", "x-secret", "keep-alive", "connection"] {
            #expect(seen.headers(spoofed).isEmpty, "\(spoofed) reached the upstream")
        }
    }

    @Test func requestIDIsGeneratedWhenMissingOrMalformed() throws {
        let up = try TestUpstream()
        defer { up.stop() }
        let gw = try GatewayProcess(yaml: testConfig(upstreams: ["users": [up.port]], routes: Self.routes))
        defer { gw.stop() }
        let bad = try request(port: gw.port, "GET", "/api/users", headers: [("X-Request-ID", "has space")])
        let none = try request(port: gw.port, "GET", "/api/users")
        let badID = try #require(bad.header("X-Request-ID"))
        let noneID = try #require(none.header("X-Request-ID"))
        #expect(badID != "has space" && !badID.isEmpty)
        #expect(noneID != badID)
        #expect(up.requests.map { $0.header("x-request-id") } == [badID, noneID])
        let long = String(repeating: "a", count: 129)
        #expect(try request(port: gw.port, "GET", "/api/users", headers: [("X-Request-ID", long)]).header("X-Request-ID") != long)
    }

    @Test func unknownRouteIsA404ProblemAndNeverForwarded() throws {
        let up = try TestUpstream()
        defer { up.stop() }
        let gw = try GatewayProcess(yaml: testConfig(upstreams: ["users": [up.port]], routes: Self.routes))
        defer { gw.stop() }
        for path in ["/nope", "/api/usersX", "/api"] {
            let r = try request(port: gw.port, "GET", path)
            #expect(r.status == 404)
            #expect(r.header("Content-Type") == "application/problem+json")
            let doc = r.json
            #expect(doc["code"] as? String == "route_not_found")
            #expect(doc["status"] as? Int == 404)
            #expect(doc["type"] != nil && doc["title"] != nil && doc["detail"] != nil)
            #expect(doc["request_id"] as? String == r.header("X-Request-ID"))
        }
        #expect(up.requests.isEmpty)
    }

    @Test func methodSpecificRouteWinsAndAuthRequiredFailsClosed() throws {
        let up = try TestUpstream()
        defer { up.stop() }
        let gw = try GatewayProcess(yaml: testConfig(upstreams: ["users": [up.port]], routes: Self.routes))
        defer { gw.stop() }
        let post = try request(port: gw.port, "POST", "/api/users", body: "{}")
        #expect(post.status == 200)
        #expect(up.requests.last?.uri == "/api/users")  // users-write has no strip_prefix
        let locked = try request(port: gw.port, "GET", "/locked")
        #expect(locked.status == 401)
        #expect(locked.header("WWW-Authenticate") == "Bearer")
        #expect(locked.json["code"] as? String == "unauthenticated")
        let withToken = try request(port: gw.port, "GET", "/locked", headers: [("Authorization", "Bearer x.y.z")])
        #expect(withToken.header("WWW-Authenticate") == "Bearer error=\"invalid_token\"")
        #expect(up.requests.count == 1)
    }

    @Test func keepAliveReusesUpstreamConnections() throws {
        let up = try TestUpstream()
        defer { up.stop() }
        let gw = try GatewayProcess(yaml: testConfig(upstreams: ["users": [up.port]], routes: Self.routes))
        defer { gw.stop() }
        for _ in 0..<4 {
            let c = try RawConnection(port: gw.port)
            for i in 0..<50 {
                try c.send("GET /api/users/\(i) HTTP/1.1\r\nHost: gw\r\n\r\n")
                let r = try #require(try c.readResponse())
                #expect(r.status == 200)
            }
        }
        #expect(up.requests.count == 200)
        #expect(up.connections <= 2, "200 sequential requests used \(up.connections) upstream connections")
    }

    @Test func pipelinedRequestsAreAnsweredInOrder() throws {
        let up = try TestUpstream()
        defer { up.stop() }
        let gw = try GatewayProcess(yaml: testConfig(upstreams: ["users": [up.port]], routes: Self.routes))
        defer { gw.stop() }
        let c = try RawConnection(port: gw.port)
        var burst = ""
        for i in 0..<40 {
            // Odd requests are slow upstream, so a reordering gateway would answer them late.
            let path = i % 2 == 0 ? "/api/users/\(i)" : "/api/users/slow/30?i=\(i)"
            burst += "GET \(path) HTTP/1.1\r\nHost: gw\r\nX-Request-ID: req-\(i)\r\n\r\n"
        }
        burst += "GET /nope HTTP/1.1\r\nHost: gw\r\nX-Request-ID: req-40\r\n\r\n"
        try c.send(burst)
        for i in 0...40 {
            let r = try #require(try c.readResponse())
            #expect(r.header("X-Request-ID") == "req-\(i)")
            #expect(r.status == (i == 40 ? 404 : 200))
        }
    }

    @Test func headNoContentAndChunkedResponses() throws {
        let up = try TestUpstream()
        defer { up.stop() }
        let gw = try GatewayProcess(yaml: testConfig(upstreams: ["users": [up.port]], routes: Self.routes))
        defer { gw.stop() }
        let c = try RawConnection(port: gw.port)
        try c.send("HEAD /api/users/1 HTTP/1.1\r\nHost: gw\r\n\r\n")
        let head = try #require(try c.readResponse(forHEAD: true))
        #expect(head.status == 200)
        #expect(head.body.isEmpty)
        try c.send("GET /api/users/status/204 HTTP/1.1\r\nHost: gw\r\n\r\n")
        let noContent = try #require(try c.readResponse())
        #expect(noContent.status == 204)
        #expect(noContent.header("Transfer-Encoding") == nil)
        try c.send("GET /api/users/chunked HTTP/1.1\r\nHost: gw\r\n\r\n")
        let chunked = try #require(try c.readResponse())
        #expect(chunked.text == "hello world")
        #expect(chunked.header("Transfer-Encoding") == "chunked")
        // HTTP/1.0 client: the unframed body is delimited by close.
        let old = try RawConnection(port: gw.port)
        try old.send("GET /api/users/chunked HTTP/1.0\r\n\r\n")
        let r10 = try #require(try old.readResponse())
        #expect(r10.text == "hello world")
        #expect(old.peerClosed)
    }

    @Test func expectContinueIsAnsweredByTheGateway() throws {
        let up = try TestUpstream()
        defer { up.stop() }
        let gw = try GatewayProcess(yaml: testConfig(upstreams: ["users": [up.port]], routes: Self.routes))
        defer { gw.stop() }
        let c = try RawConnection(port: gw.port)
        try c.send("POST /api/users HTTP/1.1\r\nHost: gw\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        let interim = try #require(try c.readResponse())
        #expect(interim.status == 100)
        try c.send("hello")
        let r = try #require(try c.readResponse())
        #expect(r.status == 200)
        #expect(r.json["body_bytes"] as? Int == 5)
        #expect(up.requests.last?.header("expect") == nil)
    }
}
