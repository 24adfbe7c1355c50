import Foundation
import Testing

/// Live: upstream circuit breakers (passive health per target) and `max_in_flight` shedding, on the real binary
/// against real upstreams. Time passing (`open_for`) is waited for as an event: the circuit's gauge turning
/// `half_open` on `/metrics`.
@Suite(.serialized) struct CircuitBreakerLiveTests {
    static let routes = catchAllRoute

    static func breaker(failures: Int, openFor: String, on5xx: Bool = false, extra: String = "") -> String {
        "    circuit_breaker: {consecutive_failures: \(failures), open_for: \(openFor), on_5xx: \(on5xx)}\n" + extra
    }

    static func circuit(_ gw: GatewayProcess, _ port: Int, _ state: String) throws -> Double? {
        try gw.metrics().value(
            "gatehouse_upstream_circuit_state", ["upstream": "app", "target": "127.0.0.1:\(port)", "state": state])
    }

    /// Waits (polling `/metrics`, bounded) until the target's circuit is in `state`.
    static func waitForCircuit(_ gw: GatewayProcess, _ port: Int, _ state: String) throws {
        try waitUntil { (try? circuit(gw, port, state)) == 1 }
    }

    @Test func aFailingTargetIsEjectedAfterTheConfiguredFailuresAndProbedOnceAfterOpenFor() throws {
        let good = try TestUpstream()
        // Answers every request with garbage: each attempt is a target failure (a malformed answer).
        let bad = try RawUpstream(reply: "HTTP/1.1 ABC Broken\r\nContent-Length: 2\r\n\r\nhi")
        defer {
            good.stop()
            bad.stop()
        }
        let gw = try GatewayProcess(
            yaml: testConfig(
                upstreams: ["app": [good.port, bad.port]], routes: Self.routes,
                upstreamExtra: "    retries: 1\n" + Self.breaker(failures: 3, openFor: "2s")))
        defer { gw.stop() }
        #expect(try Self.circuit(gw, bad.port, "closed") == 1)
        // Round robin sends every other request to the bad target; each is retried on the good one.
        for i in 0..<20 where bad.connections.load(ordering: .relaxed) < 3 {
            let r = try request(port: gw.port, "GET", "/warm\(i)")
            #expect(r.status == 200, "request \(i) answered \(r.status)")
        }
        let afterThird = bad.connections.load(ordering: .relaxed)
        #expect(afterThird == 3)
        #expect(try Self.circuit(gw, bad.port, "open") == 1)
        #expect(try Self.circuit(gw, good.port, "closed") == 1)
        // Ejected: nothing goes to it while open, and nobody sees an error.
        let servedBefore = good.requests.count
        for j in 0..<20 { #expect(try request(port: gw.port, "GET", "/ejected\(j)").status == 200) }
        #expect(bad.connections.load(ordering: .relaxed) == 3, "an open circuit's target was tried")
        #expect(good.requests.count == servedBefore + 20)
        let m = try gw.metrics()
        #expect(m.value("gatehouse_upstream_circuit_opened_total", ["target": "127.0.0.1:\(bad.port)"]) == 1)
        // After open_for, exactly one request probes it; the probe fails (retried on the good target) and the
        // circuit opens again.
        try Self.waitForCircuit(gw, bad.port, "half_open")
        for j in 0..<10 { #expect(try request(port: gw.port, "GET", "/probe\(j)").status == 200) }
        #expect(bad.connections.load(ordering: .relaxed) == 4, "not exactly one probe")
        #expect(try Self.circuit(gw, bad.port, "open") == 1)
        #expect(try gw.metrics().value("gatehouse_upstream_circuit_opened_total", ["target": "127.0.0.1:\(bad.port)"]) == 2)
        try gw.waitUntilQuiet()
    }

    @Test func aRefusingTargetIsEjectedAndItsProbeFailsBackToOpen() throws {
        let good = try TestUpstream()
        let dead = try TestUpstream()
        let deadPort = dead.port
        dead.stop()  // refused from now on
        defer { good.stop() }
        let gw = try GatewayProcess(
            yaml: testConfig(
                upstreams: ["app": [good.port, deadPort]], routes: Self.routes,
                upstreamExtra: "    retries: 1\n" + Self.breaker(failures: 3, openFor: "2s")))
        defer { gw.stop() }
        // Every refused attempt is retried on the good target; after the third the circuit is open.
        var sent = 0
        while try Self.circuit(gw, deadPort, "open") != 1 && sent < 20 {
            #expect(try request(port: gw.port, "POST", "/warm\(sent)", body: "x").status == 200)
            sent += 1
        }
        #expect(try Self.circuit(gw, deadPort, "open") == 1)
        // Three refusals take at least three requests (each request tries the dead target at most once here).
        #expect((3...6).contains(sent), Comment(rawValue: "opened after \(sent) requests"))
        let opened = ["upstream": "app", "target": "127.0.0.1:\(deadPort)"]
        #expect(try gw.metrics().value("gatehouse_upstream_circuit_opened_total", opened) == 1)
        for j in 0..<20 { #expect(try request(port: gw.port, "POST", "/ejected\(j)", body: "x").status == 200) }
        #expect(good.requests.count == sent + 20)
        #expect(try Self.circuit(gw, deadPort, "open") == 1)
        // After open_for one request probes it: refused again (and retried), open again for another open_for.
        try Self.waitForCircuit(gw, deadPort, "half_open")
        for j in 0..<10 { #expect(try request(port: gw.port, "POST", "/probe\(j)", body: "x").status == 200) }
        #expect(try gw.metrics().value("gatehouse_upstream_circuit_opened_total", opened) == 2)
        #expect(try Self.circuit(gw, deadPort, "open") == 1)
        #expect(good.requests.count == sent + 30)
    }

    @Test func allTargetsOpenIsAFast503AndASuccessfulProbeClosesTheCircuit() throws {
        let up = try TestUpstream()
        defer { up.stop() }
        let gw = try GatewayProcess(
            yaml: testConfig(
                upstreams: ["app": [up.port]], routes: Self.routes,
                upstreamExtra: "    retries: 0\n" + Self.breaker(failures: 3, openFor: "1500ms", on5xx: true)))
        defer { gw.stop() }
        // 5xx answers count with on_5xx; they still reach the client as they are.
        for j in 0..<3 { #expect(try request(port: gw.port, "GET", "/status/500?\(j)").status == 500) }
        #expect(try Self.circuit(gw, up.port, "open") == 1)
        let seen = up.requests.count
        let connections = up.connections
        #expect(seen == 3)
        // The only target is ejected: 503 upstream_unavailable without trying it.
        for j in 0..<5 {
            let r = try request(port: gw.port, "GET", "/fast\(j)")
            #expect(r.status == 503)
            #expect(r.json["code"] as? String == "upstream_unavailable")
            #expect(r.header("Content-Type") == "application/problem+json")
        }
        #expect(up.requests.count == seen, "an open circuit's target got a request")
        #expect(up.connections == connections, "an open circuit's target got a connection")
        // The probe succeeds: closed again, and traffic flows.
        try Self.waitForCircuit(gw, up.port, "half_open")
        #expect(try request(port: gw.port, "GET", "/probe").status == 200)
        #expect(try Self.circuit(gw, up.port, "closed") == 1)
        for j in 0..<5 { #expect(try request(port: gw.port, "GET", "/after\(j)").status == 200) }
        #expect(up.requests.map(\.uri).suffix(6) == ["/probe", "/after0", "/after1", "/after2", "/after3", "/after4"])
        // Two failures are not three in a row once a success broke the run.
        for _ in 0..<2 { _ = try request(port: gw.port, "GET", "/status/502") }
        #expect(try request(port: gw.port, "GET", "/ok").status == 200)
        for _ in 0..<2 { _ = try request(port: gw.port, "GET", "/status/503") }
        #expect(try Self.circuit(gw, up.port, "closed") == 1)
        let m = try gw.metrics()
        #expect(
            m.value("gatehouse_requests_total", ["code": "upstream_unavailable", "status": "503"]) == 5)
    }

    @Test func withoutOn5xxAnswersOfAnyStatusKeepTheCircuitClosed() throws {
        let up = try TestUpstream()
        defer { up.stop() }
        let gw = try GatewayProcess(
            yaml: testConfig(
                upstreams: ["app": [up.port]], routes: Self.routes,
                upstreamExtra: Self.breaker(failures: 1, openFor: "10s")))
        defer { gw.stop() }
        for j in 0..<5 { #expect(try request(port: gw.port, "GET", "/status/503?\(j)").status == 503) }
        #expect(try Self.circuit(gw, up.port, "closed") == 1)
        #expect(up.requests.count == 5)
    }

    @Test func theFailureThatOpensTheLastCircuitIsAnsweredAsItHappened() throws {
        let dead = try TestUpstream()
        let port = dead.port
        dead.stop()  // refused from now on
        let gw = try GatewayProcess(
            yaml: testConfig(
                upstreams: ["app": [port]], routes: Self.routes,
                upstreamExtra: "    retries: 1\n" + Self.breaker(failures: 1, openFor: "1h")))
        defer { gw.stop() }
        // The refused connect opens the circuit; the retry finds no target and the client hears the refusal.
        let first = try request(port: gw.port, "GET", "/x")
        #expect(first.status == 502)
        #expect(first.json["code"] as? String == "bad_gateway")
        let next = try request(port: gw.port, "GET", "/y")
        #expect(next.status == 503)
        #expect(next.json["code"] as? String == "upstream_unavailable")
        #expect(try Self.circuit(gw, port, "open") == 1)
    }

    @Test func aProbeCutByItsClientIsNoVerdictAndTheNextProbeComesOpenForLater() throws {
        let up = try TestUpstream()
        defer { up.stop() }
        let gw = try GatewayProcess(
            yaml: testConfig(
                upstreams: ["app": [up.port]], routes: Self.routes,
                upstreamExtra: "    retries: 0\n" + Self.breaker(failures: 2, openFor: "2s", on5xx: true)))
        defer { gw.stop() }
        for _ in 0..<2 { _ = try request(port: gw.port, "GET", "/status/500") }
        try Self.waitForCircuit(gw, up.port, "half_open")
        // The probe reaches the upstream, which does not answer; its client goes away.
        let c = try RawConnection(port: gw.port)
        try c.send("GET /hold/probe HTTP/1.1\r\nHost: gw\r\n\r\n")
        try waitUntil { up.heads.contains("/hold/probe") }
        // Meanwhile the circuit admits nobody else.
        let during = try request(port: gw.port, "GET", "/during")
        #expect(during.status == 503)
        #expect(during.json["code"] as? String == "upstream_unavailable")
        c.close()
        try gw.waitForExchangesInFlight { $0 == 0 }
        // A probe sent and then cut says nothing of the target (it may hang): no new probe at once...
        let after = try request(port: gw.port, "GET", "/after-cut")
        #expect(after.status == 503)
        #expect(!up.heads.contains("/after-cut"))
        // ...but open_for after the cut probe, one goes; it succeeds and closes the circuit.
        try waitUntil { (try? request(port: gw.port, "GET", "/next").status) == 200 }
        #expect(try Self.circuit(gw, up.port, "closed") == 1)
        #expect(up.heads.filter { $0 == "/next" }.count == 1)
        up.release("probe")
    }

    @Test func aWebSocketHandshakeIsJudgedByItsAnswerAndATunnelHoldsNoInFlightPlace() throws {
        let up = try WebSocketUpstream()
        defer { up.stop() }
        func config(_ port: Int) -> String {
            WebSocketTests.config(upstream: port).replacingOccurrences(
                of: "ws: {targets: [127.0.0.1:\(port)]}",
                with: "ws: {targets: [127.0.0.1:\(port)], max_in_flight: 1, circuit_breaker: {consecutive_failures: 1, open_for: 1h}}")
        }
        let gw = try GatewayProcess(yaml: config(up.port), environment: WebSocketTests.env)
        defer { gw.stop() }
        // Two tunnels through an upstream bounded to one request in flight: a tunnel is not a request in flight.
        let (r1, t1) = try openTunnel(port: gw.port, path: "/live/hold", headers: [WebSocketTests.bearer("acme")])
        let (r2, t2) = try openTunnel(port: gw.port, path: "/live/hold", headers: [WebSocketTests.bearer("acme")])
        #expect(r1.status == 101 && r2.status == 101)
        let m = try gw.metrics()
        #expect(m.value("gatehouse_upstream_in_flight", ["upstream": "ws"]) == 0)
        #expect(m.value("gatehouse_upstream_shed_total", ["upstream": "ws"]) == 0)
        #expect(m.value("gatehouse_upstream_circuit_state", ["upstream": "ws", "state": "closed"]) == 1)
        t1.close()
        t2.close()
        try WebSocketTests.waitUntilNoTunnel(gw)

        // A 101 that does not switch to websocket is a malformed answer: a failure (here the one that opens the
        // circuit), its place given back once.
        let bad = try RawUpstream(reply: "HTTP/1.1 101 Switching Protocols\r\nUpgrade: irc\r\nConnection: Upgrade\r\n\r\n")
        defer { bad.stop() }
        let gw2 = try GatewayProcess(yaml: config(bad.port), environment: WebSocketTests.env)
        defer { gw2.stop() }
        let (wrong, c) = try openTunnel(port: gw2.port, path: "/live/echo", headers: [WebSocketTests.bearer("acme")])
        #expect(wrong.status == 502)
        #expect(c.waitForClose())
        try WebSocketTests.waitUntilNoTunnel(gw2)
        let m2 = try gw2.metrics()
        #expect(m2.value("gatehouse_upstream_in_flight", ["upstream": "ws"]) == 0)
        #expect(m2.value("gatehouse_upstream_circuit_state", ["upstream": "ws", "state": "open"]) == 1)
        let (next, _) = try openTunnel(port: gw2.port, path: "/live/echo", headers: [WebSocketTests.bearer("acme")])
        #expect(next.status == 503)
        #expect(bad.connections.load(ordering: .relaxed) == 1)
    }

    @Test func aReloadKeepsCircuitsAndInFlightCounts() throws {
        let up = try TestUpstream()
        defer { up.stop() }
        let yaml = testConfig(
            upstreams: ["app": [up.port]], routes: Self.routes,
            upstreamExtra: "    retries: 0\n    max_in_flight: 2\n" + Self.breaker(failures: 2, openFor: "1h", on5xx: true))
        let gw = try GatewayProcess(yaml: yaml, environment: ["GH_TEST_ADMIN_TOKEN": "adm"])
        defer { gw.stop() }
        func reload(_ text: String) throws -> Int {
            try text.write(
                toFile: gw.directory.appendingPathComponent("gateway.yaml").path, atomically: true, encoding: .utf8)
            return try request(port: gw.adminPort!, "POST", "/admin/reload", headers: [("Authorization", "Bearer adm")])
                .status
        }
        // One request in flight across the reload, and an open circuit.
        let held = try RawConnection(port: gw.port)
        try held.send("GET /hold/h HTTP/1.1\r\nHost: gw\r\n\r\n")
        try waitUntil { up.heads.contains("/hold/h") }
        for _ in 0..<2 { _ = try request(port: gw.port, "GET", "/status/500") }
        #expect(try Self.circuit(gw, up.port, "open") == 1)
        // The same upstream with a lower bound is reloaded.
        #expect(try reload(yaml.replacingOccurrences(of: "max_in_flight: 2", with: "max_in_flight: 1")) == 200)
        // Still open (not reset), and the request still running holds the one place.
        #expect(try Self.circuit(gw, up.port, "open") == 1)
        let m = try gw.metrics()
        #expect(m.value("gatehouse_upstream_in_flight", ["upstream": "app"]) == 1)
        #expect(m.value("gatehouse_upstream_circuit_opened_total", ["upstream": "app"]) == 1)
        up.release("h")
        #expect(try held.readResponse()?.status == 200)
        try waitUntil { (try? gw.metrics().value("gatehouse_upstream_in_flight", ["upstream": "app"])) == 0 }
        // New circuit_breaker settings start a fresh circuit.
        #expect(try reload(yaml.replacingOccurrences(of: "consecutive_failures: 2", with: "consecutive_failures: 3")) == 200)
        #expect(try Self.circuit(gw, up.port, "closed") == 1)
        #expect(try request(port: gw.port, "GET", "/fresh").status == 200)
    }

    @Test func aRequestWaitingForAPoolConnectionGivesItsPlaceBackWhenItsClientLeaves() throws {
        let up = try TestUpstream()
        defer { up.stop() }
        // One connection to the target: a second request waits in the pool's queue (for up to 5 s).
        let gw = try GatewayProcess(
            yaml: testConfig(
                upstreams: ["app": [up.port]], routes: Self.routes,
                upstreamExtra: "    max_in_flight: 2\n    max_connections_per_target: 1\n"
            ).replacingOccurrences(of: "connect_timeout: 500ms", with: "connect_timeout: 5s"))
        defer { gw.stop() }
        let inFlight = { try? gw.metrics().value("gatehouse_upstream_in_flight", ["upstream": "app"]) }
        let a = try RawConnection(port: gw.port)
        try a.send("GET /hold/a HTTP/1.1\r\nHost: gw\r\n\r\n")
        try waitUntil { up.heads.contains("/hold/a") }
        let b = try RawConnection(port: gw.port)
        try b.send("GET /queued HTTP/1.1\r\nHost: gw\r\n\r\n")
        try waitUntil { inFlight() == 2 }
        #expect(try request(port: gw.port, "GET", "/third").status == 503)
        // The queued request's client leaves: its place comes back well before the pool wait would have ended.
        b.close()
        try waitUntil(seconds: 3) { inFlight() == 1 }
        up.release("a")
        #expect(try a.readResponse()?.status == 200)
        #expect(!up.heads.contains("/queued"))
        #expect(try request(port: gw.port, "GET", "/after").status == 200)
        try gw.waitUntilQuiet()
        #expect(inFlight() == 0)
    }

    @Test func maxInFlightShedsWith503AndEveryPlaceComesBack() throws {
        let up = try TestUpstream()
        defer { up.stop() }
        let gw = try GatewayProcess(
            yaml: testConfig(
                upstreams: ["app": [up.port]], routes: Self.routes, upstreamExtra: "    max_in_flight: 2\n"))
        defer { gw.stop() }
        let a = try RawConnection(port: gw.port)
        let b = try RawConnection(port: gw.port)
        try a.send("GET /hold/a HTTP/1.1\r\nHost: gw\r\n\r\n")
        try b.send("GET /hold/b HTTP/1.1\r\nHost: gw\r\n\r\n")
        try waitUntil { up.heads.contains("/hold/a") && up.heads.contains("/hold/b") }
        #expect(try gw.metrics().value("gatehouse_upstream_in_flight", ["upstream": "app"]) == 2)
        // A third request is shed at once, never sent.
        let shed = try request(port: gw.port, "POST", "/third", body: "{}")
        #expect(shed.status == 503)
        #expect(shed.json["code"] as? String == "upstream_unavailable")
        #expect(!up.heads.contains("/third"))
        #expect(try gw.metrics().value("gatehouse_upstream_shed_total", ["upstream": "app"]) == 1)
        // An answered request gives its place back.
        up.release("a")
        #expect(try a.readResponse()?.status == 200)
        #expect(try request(port: gw.port, "GET", "/fourth").status == 200)
        // So does one whose client hangs up while it waits.
        b.close()
        try waitUntil { (try? gw.metrics().value("gatehouse_upstream_in_flight", ["upstream": "app"])) == 0 }
        let c = try RawConnection(port: gw.port)
        let d = try RawConnection(port: gw.port)
        try c.send("GET /hold/c HTTP/1.1\r\nHost: gw\r\n\r\n")
        try d.send("GET /hold/d HTTP/1.1\r\nHost: gw\r\n\r\n")
        try waitUntil { up.heads.contains("/hold/c") && up.heads.contains("/hold/d") }
        #expect(try request(port: gw.port, "GET", "/fifth").status == 503)
        up.release("c")
        up.release("d")
        #expect(try c.readResponse()?.status == 200)
        #expect(try d.readResponse()?.status == 200)
        up.release("b")
        try gw.waitUntilQuiet()
        let m = try gw.metrics()
        #expect(m.value("gatehouse_upstream_in_flight", ["upstream": "app"]) == 0)
        #expect(m.value("gatehouse_upstream_shed_total", ["upstream": "app"]) == 2)
    }
}
