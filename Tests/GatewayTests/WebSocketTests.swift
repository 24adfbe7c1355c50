import Foundation
import Testing

@testable import Gateway

/// Live: WebSocket tunnels through the real gateway to a real WebSocket upstream (Python `websockets`), with a
/// real client: the whole policy on the handshake, byte tunnels with back-pressure, every way a tunnel ends, the
/// per-tenant limit (per instance, and fleet-wide on a shared Redis), the tunnel's audit record.
@Suite(.serialized) struct WebSocketTests {
    static let env = ["GH_TEST_ADMIN_TOKEN": "adm", "GH_TEST_HS_SECRET": TestKeys.hsSecret]

    static func config(
        upstream: Int, redis: Int? = nil, idle: String = "5m", server: String = "", audit: String? = nil,
        upstreamTLS: String? = nil
    ) -> String {
        var yaml = """
            server: {listen: 127.0.0.1:0, admin_listen: 127.0.0.1:0, admin_token_env: GH_TEST_ADMIN_TOKEN, threads: 1\(server)}
            identity:
              jwt:
                issuers:
                  - {issuer: "https://hs.test/", audiences: [api], algorithms: [HS256], secret_env: GH_TEST_HS_SECRET, tenant_claim: org_id}
            plans:
              pro: {rate: {requests: 100, per: 1s, burst: 100}, quota: unlimited, max_websockets: 2}
            tenants:
              acme: {plan: pro}
              initech: {plan: pro, overrides: {max_websockets: 1}}
            upstreams:
              ws: {targets: [127.0.0.1:\(upstream)]\(upstreamTLS.map { ", tls: \($0)" } ?? "")}
            routes:
              - {name: live, match: {path_prefix: /live}, upstream: ws, websocket: true, websocket_idle_timeout: \(idle)}
              - {name: plain, match: {path_prefix: /plain}, upstream: ws}

            """
        if let redis {
            yaml += "store: {redis: \"redis://127.0.0.1:\(redis)/0\", timeout: 500ms, on_failure: closed, key_prefix: ghws}\n"
        }
        if let audit {
            yaml += "audit:\n  queue_size: 2\n  queue_timeout: 100ms\n  sinks:\n    - file: {path: \"\(audit)\", fsync: batch}\n"
        }
        return yaml
    }

    static func bearer(_ tenant: String, sub: String = "user-1") -> String {
        "Authorization: Bearer " + Tok.hs256(Tok.claims(tenant: tenant, sub: sub))
    }

    static func auditPath() throws -> String {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("gh-ws-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        return dir.appendingPathComponent("audit.jsonl").path
    }

    static func records(_ path: String) -> [[String: Any]] {
        let text = (try? String(contentsOfFile: path, encoding: .utf8)) ?? ""
        return text.split(separator: "\n").compactMap {
            try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any]
        }
    }

    /// Waits until the gateway holds no tunnel and no exchange.
    static func waitUntilNoTunnel(_ gw: GatewayProcess) throws {
        try waitUntil {
            let m = try? gw.metrics()
            return m?.value("gatehouse_websockets_open") == 0 && m?.exchangesInFlight == 0
        }
    }

    @Test func messagesUpTo1MiBEchoIntactWithTheVerifiedIdentity() throws {
        let up = try WebSocketUpstream()
        let audit = try Self.auditPath()
        let gw = try GatewayProcess(yaml: Self.config(upstream: up.port, audit: audit), environment: Self.env)
        defer { gw.stop() }
        let report = try webSocketClient(
            "ws://127.0.0.1:\(gw.port)/live/echo",
            headers: [Self.bearer("acme"), "X-User-ID: mallory", "X-Roles: admin", "X-Plan: enterprise"])
        #expect(report["status"] as? Int == 101)
        #expect(report["echoed"] as? Int == 7, "\(report)")
        #expect((report["mismatches"] as? [Any])?.isEmpty == true)
        let seen = try #require(report["seen"] as? [String: String])
        #expect(seen["X-Tenant-ID"] == "acme")
        #expect(seen["X-User-ID"] == "user-1")
        #expect(seen["X-Plan"] == "pro")
        #expect(seen["X-Roles"] == nil)
        #expect(seen["Upgrade"]?.lowercased() == "websocket")
        #expect(seen["Connection"]?.lowercased() == "upgrade")
        #expect(seen["Sec-WebSocket-Key"] != nil)
        try Self.waitUntilNoTunnel(gw)
        // One record when the tunnel closed: 101 and the bytes each way (over 2 MiB of messages, both ways).
        try waitUntil { Self.records(audit).contains { $0["status"] as? Int == 101 } }
        let record = try #require(Self.records(audit).first { $0["status"] as? Int == 101 })
        #expect(record["tenant"] as? String == "acme")
        #expect(record["route"] as? String == "live")
        #expect(record["decision"] as? String == "allow")
        #expect((record["bytes_in"] as? Int ?? 0) > 2 << 20)
        #expect((record["bytes_out"] as? Int ?? 0) > 2 << 20)
        #expect(record["duration_ms"] is Int)
        #expect(try runGatehouse(["audit", "verify", audit]).status == 0)
    }

    @Test func aTunnelToAnHTTPSUpstreamCarriesMessagesBothWays() throws {
        let certs = try TestCerts()
        try certs.makeCA("internal")
        try certs.makeLeaf("backend", ca: "internal", sans: ["DNS:backend.internal"])
        let up = try WebSocketUpstream(tls: (certs.path("backend.pem"), certs.path("backend.key")))
        let gw = try GatewayProcess(
            yaml: Self.config(
                upstream: up.port, upstreamTLS: "{ca_file: \(certs.path("internal.pem")), server_name: backend.internal}"),
            environment: Self.env)
        defer { gw.stop() }
        let report = try webSocketClient("ws://127.0.0.1:\(gw.port)/live/echo", headers: [Self.bearer("acme")])
        #expect(report["status"] as? Int == 101)
        #expect(report["echoed"] as? Int == 7, "\(report)")
        #expect((report["seen"] as? [String: String])?["X-Tenant-ID"] == "acme")
        try Self.waitUntilNoTunnel(gw)
        try waitUntil { up.closed == 1 }
    }

    @Test func refusedHandshakesNeverReachTheUpstream() throws {
        let up = try WebSocketUpstream()
        let gw = try GatewayProcess(yaml: Self.config(upstream: up.port), environment: Self.env)
        defer { gw.stop() }
        let auth = Self.bearer("acme")
        // What follows a refused handshake on the connection is never read as a request.
        let smuggled = "GET /plain/x HTTP/1.1\r\nHost: gw.test\r\n\(auth)\r\n\r\n"
        let cases: [(String, Int, String)] = [
            (handshake(path: "/live/echo") + smuggled, 401, "unauthenticated"),
            (handshake(path: "/plain/echo", headers: [auth]) + smuggled, 400, "bad_request"),
            (handshake(path: "/live/echo", headers: [auth]).replacingOccurrences(of: "Upgrade: websocket", with: "Upgrade: irc"), 400, "bad_request"),
            (handshake(path: "/live/echo", headers: [auth]).replacingOccurrences(of: "Sec-WebSocket-Version: 13", with: "Sec-WebSocket-Version: 8"), 400, "bad_request"),
            (handshake(path: "/live/echo", headers: [auth]).replacingOccurrences(of: "Connection: Upgrade\r\n", with: ""), 400, "bad_request"),
            (handshake(path: "/live/echo", headers: [auth, "Sec-WebSocket-Key: second"]), 400, "bad_request"),
            (handshake(path: "/live/echo", headers: [auth]).replacingOccurrences(of: "GET ", with: "POST "), 400, "bad_request"),
            (handshake(path: "/live/echo", headers: [auth, "Content-Length: 4"]) + "abcd", 400, "bad_request"),
            (handshake(path: "/live/echo", headers: [auth, "Upgrade: h2c"]), 400, "bad_request"),
        ]
        for (text, status, code) in cases {
            let c = try RawConnection(port: gw.port)
            try c.send(text)
            let r = try #require(try c.readResponse(), Comment(rawValue: text))
            #expect(r.status == status, "\(text)")
            #expect(r.json["code"] as? String == code, "\(text)")
            #expect(r.header("Content-Type") == "application/problem+json")
            #expect(c.waitForClose(), "the connection stays open after a refused handshake: \(text)")
        }
        #expect(up.requests == 0, "a refused handshake reached the upstream: \(up.log)")
        // `Upgrade: h2c` is ignored: served over HTTP/1.1, the header not forwarded, the connection kept.
        let c = try RawConnection(port: gw.port)
        try c.send("GET /plain/x HTTP/1.1\r\nHost: gw.test\r\n\(auth)\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n")
        let r = try #require(try c.readResponse())
        #expect(r.status != 101 && r.header("X-Request-ID") != nil)
        try waitUntil { up.requests == 1 }
        let line = try #require(up.log.first { $0.hasPrefix("request /plain/x ") })
        #expect(!line.lowercased().contains("h2c") && !line.contains("HTTP2-Settings"), Comment(rawValue: line))
    }

    @Test func bytesSentBeforeThe101ArriveAfterIt() throws {
        let up = try WebSocketUpstream()
        let gw = try GatewayProcess(yaml: Self.config(upstream: up.port), environment: Self.env)
        defer { gw.stop() }
        let c = try RawConnection(port: gw.port)
        // The handshake and a first frame in one write: the frame waits in the gateway for the tunnel.
        try c.send(Array(handshake(path: "/live/echo", headers: [Self.bearer("acme")]).utf8) + clientFrame(Array("early".utf8)))
        let head = try #require(try c.readHead())
        #expect(head.status == 101)
        #expect(head.header("Upgrade")?.lowercased() == "websocket")
        #expect(head.header("Sec-WebSocket-Accept") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
        #expect(head.header("RateLimit-Remaining") != nil)
        #expect(try readServerFrame(c).payload == Array("early".utf8))
        try c.send(clientFrame(Array("later".utf8)))
        #expect(try readServerFrame(c).payload == Array("later".utf8))
        #expect(try gw.metrics().value("gatehouse_websockets_open") == 1)
        // The client hangs up mid-tunnel: the upstream side is closed, and nothing stays counted.
        c.close()
        try waitUntil { up.closed == 1 }
        try Self.waitUntilNoTunnel(gw)
    }

    @Test func anUpstreamThatAnswersWronglyGets502AndNothingStaysOpen() throws {
        // A 101 switching to something else: the connection (already out of the pool) is closed, no retry.
        let bad = try RawUpstream(reply: "HTTP/1.1 101 Switching Protocols\r\nUpgrade: irc\r\nConnection: Upgrade\r\n\r\n")
        defer { bad.stop() }
        let gw = try GatewayProcess(yaml: Self.config(upstream: bad.port), environment: Self.env)
        defer { gw.stop() }
        let (r, c) = try openTunnel(port: gw.port, path: "/live/echo", headers: [Self.bearer("acme")])
        #expect(r.status == 502)
        #expect(c.waitForClose())
        #expect(bad.connections.load(ordering: .relaxed) == 1)
        try Self.waitUntilNoTunnel(gw)
        // An upstream that declines the handshake: its answer is relayed, and the connection closes after it.
        let refusing = try RawUpstream(reply: "HTTP/1.1 403 Forbidden\r\nContent-Length: 2\r\n\r\nno")
        defer { refusing.stop() }
        let gw2 = try GatewayProcess(yaml: Self.config(upstream: refusing.port), environment: Self.env)
        defer { gw2.stop() }
        let (r2, c2) = try openTunnel(port: gw2.port, path: "/live/echo", headers: [Self.bearer("acme")])
        #expect(r2.status == 403)
        #expect(c2.waitForClose())
        try Self.waitUntilNoTunnel(gw2)
    }

    @Test func openTunnelsHoldNoAuditQueuePlace() throws {
        let up = try WebSocketUpstream()
        let audit = try Self.auditPath()
        // The audit queue has two places: three tunnels open, and an audited request still goes through.
        let gw = try GatewayProcess(yaml: Self.config(upstream: up.port, audit: audit), environment: Self.env)
        defer { gw.stop() }
        var open: [RawConnection] = []
        for tenant in ["acme", "acme", "initech"] {
            let (r, c) = try openTunnel(port: gw.port, path: "/live/hold", headers: [Self.bearer(tenant)])
            #expect(r.status == 101, "\(tenant)")
            open.append(c)
        }
        let post = try RawConnection(port: gw.port)
        try post.send("POST /plain/x HTTP/1.1\r\nHost: gw.test\r\n\(Self.bearer("acme"))\r\nContent-Length: 0\r\n\r\n")
        #expect(try post.readResponse()?.status != 503)
        for c in open { c.close() }
        try waitUntil { Self.records(audit).filter { $0["status"] as? Int == 101 }.count == 3 }
    }

    @Test func theTenantLimitGives429AndFreesOnClose() throws {
        let up = try WebSocketUpstream()
        let gw = try GatewayProcess(yaml: Self.config(upstream: up.port), environment: Self.env)
        defer { gw.stop() }
        // initech's override: one tunnel.
        let (first, held) = try openTunnel(port: gw.port, path: "/live/hold", headers: [Self.bearer("initech")])
        #expect(first.status == 101)
        let c = try RawConnection(port: gw.port)
        try c.send(handshake(path: "/live/hold", headers: [Self.bearer("initech")]))
        let refused = try #require(try c.readResponse())
        #expect(refused.status == 429)
        #expect(refused.json["code"] as? String == "too_many_connections")
        // acme's plan: two; another tenant's tunnels do not count.
        let (a1, t1) = try openTunnel(port: gw.port, path: "/live/hold", headers: [Self.bearer("acme")])
        let (a2, t2) = try openTunnel(port: gw.port, path: "/live/hold", headers: [Self.bearer("acme")])
        #expect(a1.status == 101 && a2.status == 101)
        #expect(try openTunnel(port: gw.port, path: "/live/hold", headers: [Self.bearer("acme")]).0.status == 429)
        // Closing frees the place.
        held.close()
        try waitUntil { (try? openTunnel(port: gw.port, path: "/live/hold", headers: [Self.bearer("initech")]).0.status) == 101 }
        _ = (t1, t2)
    }

    @Test func theLimitIsFleetWideOnASharedRedis() throws {
        let redis = try RedisServer()
        defer { redis.stop() }
        let up = try WebSocketUpstream()
        let a = try GatewayProcess(yaml: Self.config(upstream: up.port, redis: redis.port), environment: Self.env)
        defer { a.stop() }
        let b = try GatewayProcess(yaml: Self.config(upstream: up.port, redis: redis.port), environment: Self.env)
        defer { b.stop() }
        let auth = [Self.bearer("acme")]
        let (r1, onA) = try openTunnel(port: a.port, path: "/live/hold", headers: auth)
        let (r2, onB) = try openTunnel(port: b.port, path: "/live/hold", headers: auth)
        #expect(r1.status == 101 && r2.status == 101)
        // Two open across the fleet: a third is refused on either instance.
        for gw in [a, b] {
            let (r, _) = try openTunnel(port: gw.port, path: "/live/hold", headers: auth)
            #expect(r.status == 429, "instance \(gw.port)")
        }
        // Closed on one instance, the place is free on the other.
        onB.close()
        try waitUntil { (try? openTunnel(port: a.port, path: "/live/hold", headers: auth).0.status) == 101 }
        _ = onA
    }

    /// The registry's scripts on a real Redis: the tunnels of a crashed instance (never renewed, never removed)
    /// stop counting once their expiry passes; a renewal re-adds what the store lost.
    @Test func unrenewedTunnelsExpireAndRenewalsRestoreLostOnes() throws {
        let redis = try RedisServer()
        defer { redis.stop() }
        let r = RateLimitTests()
        let key = "{ghws:acme}:ws"
        func acquire(_ member: String, ttl: Int) throws -> String {
            try r.redisCommand(redis, ["EVAL", TunnelSlots.acquireScript, "1", key, member, "2", String(ttl)])
        }
        #expect(try acquire("crashed", ttl: 200) == ":1")
        #expect(try acquire("alive", ttl: 60_000) == ":1")
        #expect(try acquire("third", ttl: 60_000) == ":0")  // the limit is 2
        try waitUntil { (try? acquire("third", ttl: 60_000)) == ":1" }
        _ = try r.redisCommand(redis, ["DEL", key])
        _ = try r.redisCommand(redis, ["EVAL", TunnelSlots.renewScript, "1", key, "60000", "alive", "third"])
        #expect(try r.redisCommand(redis, ["ZCARD", key]) == ":2")
        #expect(try r.redisCommand(redis, ["PTTL", key]).dropFirst().count >= 4)
    }

    @Test func anIdleTunnelIsClosedAndAudited() throws {
        let up = try WebSocketUpstream()
        let audit = try Self.auditPath()
        let gw = try GatewayProcess(yaml: Self.config(upstream: up.port, idle: "300ms", audit: audit), environment: Self.env)
        defer { gw.stop() }
        let (head, c) = try openTunnel(port: gw.port, path: "/live/echo", headers: [Self.bearer("acme")])
        #expect(head.status == 101)
        try c.send(clientFrame(Array("ping".utf8)))
        #expect(try readServerFrame(c).payload == Array("ping".utf8))
        // Then nothing either way: the gateway closes both sides.
        #expect(c.waitForClose())
        try waitUntil { up.closed == 1 }
        try waitUntil { Self.records(audit).contains { $0["status"] as? Int == 101 } }
        let record = try #require(Self.records(audit).first { $0["status"] as? Int == 101 })
        #expect(record["code"] as? String == "idle_timeout")
        #expect(record["bytes_in"] as? Int == 10)  // one masked 4-byte frame
        #expect(record["bytes_out"] as? Int == 6)
        #expect((record["duration_ms"] as? Int ?? 0) >= 300)
    }

    @Test func theUpstreamClosingEndsTheTunnel() throws {
        let up = try WebSocketUpstream()
        let gw = try GatewayProcess(yaml: Self.config(upstream: up.port), environment: Self.env)
        defer { gw.stop() }
        let (head, c) = try openTunnel(port: gw.port, path: "/live/close", headers: [Self.bearer("acme")])
        #expect(head.status == 101)
        #expect(try readServerFrame(c).opcode == 8)  // the upstream's close frame, relayed
        try c.send(clientFrame([0x03, 0xe8], opcode: 8))
        #expect(c.waitForClose())
        try Self.waitUntilNoTunnel(gw)
    }

    @Test func drainKeepsTunnelsUntilDrainTimeoutThenClosesThem() throws {
        let up = try WebSocketUpstream()
        let audit = try Self.auditPath()
        let gw = try GatewayProcess(
            yaml: Self.config(upstream: up.port, server: ", drain_timeout: 1s", audit: audit), environment: Self.env)
        let (head, c) = try openTunnel(port: gw.port, path: "/live/echo", headers: [Self.bearer("acme")])
        #expect(head.status == 101)
        kill(gw.pid, SIGTERM)
        // Draining: the tunnel still carries messages (new connections are no longer accepted).
        try waitUntil { (try? RawConnection(port: gw.port, timeout: 1)) == nil }
        try c.send(clientFrame(Array("still".utf8)))
        #expect(try readServerFrame(c).payload == Array("still".utf8))
        // At the end of drain_timeout it is closed, its record written, and the gateway exits cleanly.
        #expect(c.waitForClose())
        #expect(gw.stop() == 0)
        let record = try #require(Self.records(audit).first { $0["status"] as? Int == 101 })
        #expect(record["bytes_in"] as? Int == 11)
        #expect(try runGatehouse(["audit", "verify", audit]).status == 0)
    }

    @Test func aClientThatStopsReadingPausesTheUpstreamAndMemoryStaysFlat() throws {
        let up = try WebSocketUpstream()
        let gw = try GatewayProcess(yaml: Self.config(upstream: up.port), environment: Self.env)
        defer { gw.stop() }
        let baseline = gw.rss
        let (head, c) = try openTunnel(
            port: gw.port, path: "/live/flood", headers: [Self.bearer("acme")], receiveBuffer: 64 * 1024)
        #expect(head.status == 101)
        #expect(try c.drain(count: 1 << 20) == 1 << 20)
        // The client reads nothing more: the upstream must stop producing, blocked through the gateway.
        var last = -1
        var stable = 0
        try waitUntil(seconds: 20) {
            let now = up.sent
            stable = now == last ? stable + 1 : 0
            last = now
            return stable >= 40 && now > 0
        }
        let produced = up.sent
        let grown = gw.rss - baseline
        print("stalled WebSocket reader: upstream sent \(produced) bytes, gateway RSS grew \(grown) bytes")
        #expect(produced < 32 << 20, "the upstream sent \(produced) bytes to a client that reads nothing")
        #expect(grown < 8 << 20, "gateway RSS grew by \(grown) bytes")
        // Reading again, the flood resumes.
        #expect(try c.drain(count: 8 << 20) == 8 << 20)
        try waitUntil { up.sent > produced }
    }
}
