import Foundation
import Testing

/// Live: upstream faults map to 502/503/504, broken connections are never reused, balancing and health.
@Suite(.serialized) struct UpstreamFailureTests {
    static let routes = catchAllRoute

    @Test func refusedConnectionIs502() throws {
        let dead = try TestUpstream()
        let port = dead.port
        dead.stop()  // nothing listens there now
        let gw = try GatewayProcess(yaml: testConfig(upstreams: ["app": [port]], routes: Self.routes))
        defer { gw.stop() }
        let r = try request(port: gw.port, "GET", "/x")
        #expect(r.status == 502)
        #expect(r.json["code"] as? String == "bad_gateway")
    }

    @Test func slowUpstreamIs504() throws {
        let up = try TestUpstream()
        defer { up.stop() }
        let gw = try GatewayProcess(
            yaml: testConfig(upstreams: ["app": [up.port]], routes: Self.routes, upstreamExtra: "    retries: 0\n")
                .replacingOccurrences(of: "response_timeout: 2s", with: "response_timeout: 300ms"))
        defer { gw.stop() }
        let r = try request(port: gw.port, "GET", "/hang")
        #expect(r.status == 504)
        #expect(r.json["code"] as? String == "upstream_timeout")
        #expect(up.requests.count == 1)
        // The timed-out connection is not reused: the next request gets a fresh one.
        #expect(try request(port: gw.port, "GET", "/after").status == 200)
        #expect(up.requests.last?.connection != up.requests.first?.connection)
    }

    @Test func responseCutMidwayClosesTheClientAndTheConnectionIsNotReused() throws {
        let up = try TestUpstream()
        defer { up.stop() }
        let gw = try GatewayProcess(yaml: testConfig(upstreams: ["app": [up.port]], routes: Self.routes))
        defer { gw.stop() }
        let c = try RawConnection(port: gw.port)
        try c.send("GET /cut HTTP/1.1\r\nHost: gw\r\n\r\n")
        #expect(throws: (any Error).self) { _ = try c.readResponse() }  // promised 100000, got 10, then EOF
        #expect(c.peerClosed)
        let r = try request(port: gw.port, "GET", "/next")
        #expect(r.status == 200)
        #expect(up.requests.map(\.connection) == [1, 2])
    }

    @Test func interimResponsesAreSkippedAndTheConnectionKept() throws {
        let up = try TestUpstream()
        defer { up.stop() }
        let gw = try GatewayProcess(yaml: testConfig(upstreams: ["app": [up.port]], routes: Self.routes))
        defer { gw.stop() }
        let c = try RawConnection(port: gw.port)
        try c.send("GET /hints HTTP/1.1\r\nHost: gw\r\n\r\n")
        let r = try #require(try c.readResponse())
        #expect(r.status == 200)
        #expect(r.json["uri"] as? String == "/hints")
        try c.send("GET /next HTTP/1.1\r\nHost: gw\r\n\r\n")
        #expect(try c.readResponse()?.status == 200)
        #expect(up.requests.count == 2)
        #expect(up.requests.first?.connection == up.requests.last?.connection)
    }

    @Test func bytesPastAResponseAreNeverReadAsTheNextOne() throws {
        let up = try TestUpstream()
        defer { up.stop() }
        let gw = try GatewayProcess(yaml: testConfig(upstreams: ["app": [up.port]], routes: Self.routes))
        defer { gw.stop() }
        let c = try RawConnection(port: gw.port)
        try c.send("GET /trailing HTTP/1.1\r\nHost: gw\r\n\r\n")
        let r = try #require(try c.readResponse())
        #expect(r.status == 200)
        #expect(String(decoding: r.body, as: UTF8.self) == "ok")
        // The next request gets its own answer from a fresh connection, not the stray bytes.
        try c.send("GET /next HTTP/1.1\r\nHost: gw\r\n\r\n")
        let next = try #require(try c.readResponse())
        #expect(next.status == 200)
        #expect(next.json["uri"] as? String == "/next")
        #expect(up.requests.last?.connection != up.requests.first?.connection)
    }

    @Test func malformedUpstreamResponseIs502() throws {
        let raw = try RawUpstream(reply: "HTTP/1.1 ABC Broken\r\nContent-Length: 2\r\n\r\nhi")
        defer { raw.stop() }
        let gw = try GatewayProcess(
            yaml: testConfig(upstreams: ["app": [raw.port]], routes: Self.routes, upstreamExtra: "    retries: 0\n"))
        defer { gw.stop() }
        let r = try request(port: gw.port, "POST", "/x", body: "{}")
        #expect(r.status == 502)
        #expect(r.json["code"] as? String == "bad_gateway")
        #expect(try request(port: gw.port, "POST", "/y", body: "{}").status == 502)
        #expect(raw.connections.load(ordering: .relaxed) == 2, "a broken connection was reused")
    }

    @Test func roundRobinAndRetryOnRefusedTarget() throws {
        let a = try TestUpstream()
        let b = try TestUpstream()
        defer {
            a.stop()
            b.stop()
        }
        let gw = try GatewayProcess(yaml: testConfig(upstreams: ["app": [a.port, b.port]], routes: Self.routes))
        defer { gw.stop() }
        for i in 0..<10 { #expect(try request(port: gw.port, "GET", "/\(i)").status == 200) }
        #expect(a.requests.count == 5)
        #expect(b.requests.count == 5)
        b.closeAll()
        // With one target down, the connect failure is retried on the other: no client sees an error.
        for i in 0..<6 { #expect(try request(port: gw.port, "POST", "/r\(i)", body: "x").status == 200) }
        #expect(a.requests.count == 11)
    }

    @Test func healthChecksRemoveAndRestoreTargets() throws {
        let a = try TestUpstream()
        let b = try TestUpstream()
        defer {
            a.stop()
            b.stop()
        }
        let extra = "    health_check: {path: /health, interval: 50ms, timeout: 200ms, unhealthy_after: 1, healthy_after: 1}\n"
        let gw = try GatewayProcess(
            yaml: testConfig(upstreams: ["app": [a.port, b.port]], routes: Self.routes, upstreamExtra: extra))
        defer { gw.stop() }
        b.healthy.store(false, ordering: .relaxed)
        let seen = b.healthChecks.load(ordering: .relaxed)
        // Wait (bounded) until the gateway has probed b again after it turned unhealthy.
        try waitUntil { b.healthChecks.load(ordering: .relaxed) >= seen + 2 }
        let before = b.requests.count
        for i in 0..<6 { #expect(try request(port: gw.port, "GET", "/h\(i)").status == 200) }
        #expect(b.requests.count == before)
        a.healthy.store(false, ordering: .relaxed)
        let seenA = a.healthChecks.load(ordering: .relaxed)
        try waitUntil { a.healthChecks.load(ordering: .relaxed) >= seenA + 2 }
        let none = try request(port: gw.port, "GET", "/none")
        #expect(none.status == 503)
        #expect(none.json["code"] as? String == "upstream_unavailable")
        b.healthy.store(true, ordering: .relaxed)
        let seenB = b.healthChecks.load(ordering: .relaxed)
        try waitUntil { b.healthChecks.load(ordering: .relaxed) >= seenB + 2 }
        #expect(try request(port: gw.port, "GET", "/back").status == 200)
        let metrics = try RawConnection(port: gw.adminPort!)
        try metrics.send("GET /metrics HTTP/1.1\r\nHost: a\r\n\r\n")
        let text = try #require(try metrics.readResponse()).text
        #expect(text.contains("gatehouse_upstream_healthy{upstream=\"app\",target=\"127.0.0.1:\(a.port)\"} 0"))
        #expect(text.contains("gatehouse_upstream_healthy{upstream=\"app\",target=\"127.0.0.1:\(b.port)\"} 1"))
    }
}

/// Polls `condition` until it holds, for at most `seconds`; an event wait, not a sleep for time to pass.
func waitUntil(seconds: Double = 10, _ condition: () -> Bool) throws {
    let deadline = Date().addingTimeInterval(seconds)
    while !condition() {
        if Date() > deadline { throw RawClientError(description: "condition not met within \(seconds)s") }
        usleep(5_000)
    }
}
