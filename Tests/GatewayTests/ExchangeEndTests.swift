import Foundation
import Testing

/// Live: every exchange ends exactly once, whatever ends it (issue 11). A client hang-up at any point, a
/// timeout, an upstream that answers early, a malformed request behind a valid one: afterwards the upstream
/// connection is back in the pool or closed, the audit record is written and its queue slot freed, the gauges
/// `gatehouse_exchanges_in_flight` and `gatehouse_upstream_connections{state="busy"}` return to 0, and bytes a
/// client sends ahead are bounded. Written against SPEC "HTTP behaviour" and "Metrics", not the internals.
@Suite(.serialized) struct ExchangeEndTests {
    // MARK: Fixtures

    /// A gateway in front of `up` (one route, no auth), with the test config's fast timeouts unless overridden.
    static func gateway(
        _ up: TestUpstream, server: String = "", upstream: String = "", audit: String? = nil,
        connectTimeout: String? = nil, responseTimeout: String? = nil, threads: Int = 1
    ) throws -> GatewayProcess {
        var yaml = testConfig(upstreams: ["app": [up.port]], routes: catchAllRoute, server: server, upstreamExtra: upstream)
        if let connectTimeout {
            yaml = yaml.replacingOccurrences(of: "connect_timeout: 500ms", with: "connect_timeout: \(connectTimeout)")
        }
        if let responseTimeout {
            yaml = yaml.replacingOccurrences(of: "response_timeout: 2s", with: "response_timeout: \(responseTimeout)")
        }
        if threads != 1 { yaml = yaml.replacingOccurrences(of: "threads: 1", with: "threads: \(threads)") }
        if let audit { yaml += "\n" + audit }
        return try GatewayProcess(yaml: yaml)
    }

    /// An audit section writing every write and every denial to the file `log`.
    static func auditSection(log: String, queue: String = "") -> String {
        """
        audit:
          methods: [POST, PUT, PATCH, DELETE]
          denials: true
        \(queue)
          sinks:
            - file: {path: "\(log)", fsync: batch}

        """
    }

    /// A fresh directory for an audit log, removed when the test ends.
    final class AuditLogFile {
        let dir: URL
        let path: String
        init() throws {
            dir = try AuditTests.logDirectory()
            path = dir.appendingPathComponent("audit.jsonl").path
        }
        var records: [[String: Any]] { AuditTests.records(path) }
        func record(id: String) -> [String: Any]? { records.first { $0["request_id"] as? String == id } }
        deinit { try? FileManager.default.removeItem(at: dir) }
    }

    /// Waits (bounded) until `log` holds a record for every id in `ids`; throws naming the missing ones.
    static func waitForRecords(_ log: AuditLogFile, _ ids: [String]) throws {
        do {
            try waitUntil(seconds: 5) { ids.allSatisfy { log.record(id: $0) != nil } }
        } catch {
            let missing = ids.filter { log.record(id: $0) == nil }
            throw RawClientError(description: "no audit record within 5 s for \(missing)")
        }
    }

    /// Hangs up: a FIN (`abrupt` false) or a reset (`abrupt` true).
    static func hangUp(_ c: RawConnection, abrupt: Bool) {
        if abrupt { c.reset() } else { c.close() }
    }

    /// Reads the status line and headers of a response whose body stays unread.
    static func head(_ c: RawConnection, _ what: String) throws -> RawResponse {
        try #require(try c.readHead(), "\(what): the connection closed before a response")
    }

    /// Waits until `sender` has sent everything or made no progress for a while (the gateway stopped reading);
    /// returns the gateway's peak RSS seen meanwhile.
    static func waitForStall(_ sender: RawSender, _ gw: GatewayProcess) throws -> Int {
        var peak = gw.rss
        var last = -1
        var still = 0
        try waitUntil(seconds: 30) {
            peak = max(peak, gw.rss)
            let now = sender.sent
            still = now == last ? still + 1 : 0
            last = now
            return sender.finished || still >= 60
        }
        return max(peak, gw.rss)
    }

    static let mib = 1024 * 1024

    /// A POST to `/early` (answered 201 on its head) with a tenth of its 1 MB body sent; its client has read the
    /// answer and still owes the rest of the body.
    static func earlyAnsweredPost(
        _ gw: GatewayProcess, id: String, sourceLocation: SourceLocation = #_sourceLocation
    ) throws -> RawConnection {
        let c = try RawConnection(port: gw.port, timeout: 5)
        try c.send("POST /early HTTP/1.1\r\nHost: gw\r\nX-Request-ID: \(id)\r\nContent-Length: 1000000\r\n\r\n")
        try c.send([UInt8](repeating: 0x65, count: 100_000))
        let r = try #require(try c.readResponse(), "\(id): no response", sourceLocation: sourceLocation)
        #expect(r.status == 201 && r.header("X-Request-ID") == id, "\(id): \(r.status) \(r.text)", sourceLocation: sourceLocation)
        return c
    }

    /// `requests` plain GETs after whatever the test did must all be answered 200 (`what(i)` names request i in
    /// the failure message).
    static func expectServing(
        _ gw: GatewayProcess, requests: Int, sourceLocation: SourceLocation = #_sourceLocation, _ what: (Int) -> String
    ) throws {
        for i in 0..<requests {
            let r = try request(port: gw.port, "GET", "/after/\(i)")
            #expect(r.status == 200, "\(what(i)): \(r.status) \(r.text)", sourceLocation: sourceLocation)
        }
    }

    // MARK: 1. Pool slots come back after hang-ups

    @Test func downloadsAbortedByTheClientGiveTheirPoolSlotsBack() throws {
        let up = try TestUpstream()
        defer { up.stop() }
        let gw = try Self.gateway(up, upstream: "    max_connections_per_target: 2\n")
        defer { gw.stop() }
        for i in 0..<5 {
            let c = try RawConnection(port: gw.port, timeout: 5)
            try c.send("GET /download/20000000?n=\(i) HTTP/1.1\r\nHost: gw\r\n\r\n")
            let h = try Self.head(c, "download \(i)")
            guard h.status == 200 else {
                Issue.record("download \(i) was answered \(h.status): the aborted ones before it kept their pool slots")
                continue
            }
            #expect(try c.drain(count: 64 * 1024) == 64 * 1024)
            Self.hangUp(c, abrupt: i % 2 == 1)
        }
        try Self.expectServing(gw, requests: 3) { i in "request \(i) after 5 aborted downloads" }
    }

    @Test func uploadsAbortedByTheClientGiveTheirPoolSlotsBack() throws {
        let up = try TestUpstream()
        defer { up.stop() }
        let gw = try Self.gateway(up, server: "  max_body_bytes: 64MiB", upstream: "    max_connections_per_target: 2\n")
        defer { gw.stop() }
        let part = [UInt8](repeating: 0x75, count: 100 * 1024)
        for i in 0..<5 {
            let c = try RawConnection(port: gw.port, timeout: 5)
            try c.send("POST /upload/\(i) HTTP/1.1\r\nHost: gw\r\nContent-Length: 10000000\r\n\r\n")
            try c.send(part)
            // The upload is under way to the upstream when the client leaves (unless the gateway answered first).
            try waitUntil(seconds: 5) { up.heads.contains("/upload/\(i)") || c.waitReadable(timeout: 0) }
            if !up.heads.contains("/upload/\(i)") {
                let r = try c.readResponse()
                let code = r?.json["code"] as? String ?? ""
                Issue.record("upload \(i) was answered \(r?.status ?? 0) \(code) before reaching the upstream: the aborted ones before it kept their pool slots")
                continue
            }
            Self.hangUp(c, abrupt: i % 2 == 0)
        }
        try Self.expectServing(gw, requests: 3) { i in "request \(i) after 5 aborted uploads" }
    }

    // MARK: 2. Hang-up while waiting for a pool slot

    @Test func clientsLeavingWhileWaitingForAPoolSlotAreNotServedAndHoldNothing() throws {
        let up = try TestUpstream()
        defer { up.stop() }
        let gw = try Self.gateway(
            up, upstream: "    max_connections_per_target: 1\n    retries: 0\n", connectTimeout: "5s", responseTimeout: "10s")
        defer { gw.stop() }
        // The only connection is busy with a request the upstream holds.
        let holder = try RawConnection(port: gw.port, timeout: 10)
        try holder.send("GET /hold/first HTTP/1.1\r\nHost: gw\r\n\r\n")
        try waitUntil(seconds: 5) { up.heads.contains("/hold/first") }
        var waiting: [RawConnection] = []
        for i in 0..<3 {
            let c = try RawConnection(port: gw.port, timeout: 10)
            try c.send("GET /waiter/\(i) HTTP/1.1\r\nHost: gw\r\n\r\n")
            waiting.append(c)
        }
        // Four exchanges in flight: three wait for the connection.
        try gw.waitForExchangesInFlight { $0 >= 4 }
        for (i, c) in waiting.enumerated() { Self.hangUp(c, abrupt: i == 1) }
        waiting.removeAll()
        // The waiters' exchanges end when their clients leave, not when a connection frees up.
        try gw.waitForExchangesInFlight { $0 == 1 }
        up.release("first")
        let first = try #require(try holder.readResponse())
        #expect(first.status == 200)
        try Self.expectServing(gw, requests: 3) { i in "request \(i) after the waiters left" }
        #expect(!up.heads.contains { $0.hasPrefix("/waiter/") }, "a request whose client had left was forwarded: \(up.heads)")
        try gw.waitUntilQuiet()
    }

    /// A reload replaces the pools while one exchange holds a connection and another waits for one: the holder
    /// finishes on its old connection (still counted busy, still swept), the waiter is served on the new pools
    /// (not 502), and everything returns to 0.
    @Test func aReloadWhileExchangesHoldAndWaitForConnectionsLosesNeither() throws {
        let up = try TestUpstream()
        defer { up.stop() }
        let yaml = testConfig(upstreams: ["app": [up.port]], routes: catchAllRoute, upstreamExtra: "    max_connections_per_target: 1\n    retries: 0\n")
            .replacingOccurrences(of: "connect_timeout: 500ms", with: "connect_timeout: 5s")
            .replacingOccurrences(of: "response_timeout: 2s", with: "response_timeout: 10s")
        let gw = try GatewayProcess(yaml: yaml, environment: ["GH_TEST_ADMIN_TOKEN": "s3cret"])
        defer { gw.stop() }
        let admin = try #require(gw.adminPort)
        let holder = try RawConnection(port: gw.port, timeout: 10)
        try holder.send("GET /hold/old HTTP/1.1\r\nHost: gw\r\n\r\n")
        try waitUntil(seconds: 5) { up.heads.contains("/hold/old") }
        let waiter = try RawConnection(port: gw.port, timeout: 10)
        try waiter.send("GET /waiter HTTP/1.1\r\nHost: gw\r\n\r\n")
        try gw.waitForExchangesInFlight { $0 >= 2 }
        let reloaded = try request(port: admin, "POST", "/admin/reload", headers: [("Authorization", "Bearer s3cret")])
        #expect(reloaded.status == 200)
        let served = try #require(try waiter.readResponse())
        #expect(served.status == 200, "the waiter got \(served.status) \(served.text)")
        #expect(try gw.metrics().busyConnections("app") == 1, "the old pool's busy connection is no longer counted")
        up.release("old")
        #expect(try holder.readResponse()?.status == 200)
        try gw.waitUntilQuiet()
        #expect(try request(port: gw.port, "GET", "/after").status == 200)
    }

    // MARK: 3. Hang-up at each point of an exchange

    enum HangUpPoint: String, CaseIterable, CustomStringConvertible {
        case duringRequestHead, duringRequestBody, awaitingResponse, afterResponseHead, duringResponseBody,
            duringStalledResponseBody
        var description: String { rawValue }

        /// Starts an exchange on `c` and brings it to this point.
        func reach(_ c: RawConnection, _ up: TestUpstream, round: Int) throws {
            switch self {
            case .duringRequestHead:
                try c.send("GET /never?r=\(round) HTTP/1.1\r\nHost: gw\r\nX-Partial: ab")
            case .duringRequestBody:
                try c.send("POST /upload?r=\(round) HTTP/1.1\r\nHost: gw\r\nContent-Length: 1000000\r\n\r\n")
                try c.send([UInt8](repeating: 0x62, count: 100_000))
                try waitUntil(seconds: 5) { up.heads.contains("/upload?r=\(round)") }
            case .awaitingResponse:
                try c.send("GET /hang?r=\(round) HTTP/1.1\r\nHost: gw\r\n\r\n")
                try waitUntil(seconds: 5) { up.heads.contains("/hang?r=\(round)") }
            case .afterResponseHead:
                try c.send("GET /partial/0?r=\(round) HTTP/1.1\r\nHost: gw\r\n\r\n")
                #expect(try ExchangeEndTests.head(c, "\(self)").status == 200)
            case .duringResponseBody:
                try c.send("GET /download/20000000?r=\(round) HTTP/1.1\r\nHost: gw\r\n\r\n")
                #expect(try ExchangeEndTests.head(c, "\(self)").status == 200)
                #expect(try c.drain(count: 256 * 1024) == 256 * 1024)
            case .duringStalledResponseBody:
                try c.send("GET /partial/5000?r=\(round) HTTP/1.1\r\nHost: gw\r\n\r\n")
                #expect(try ExchangeEndTests.head(c, "\(self)").status == 200)
                #expect(try c.drain(count: 5000) == 5000)
            }
        }
    }

    @Test(arguments: HangUpPoint.allCases)
    func aHangUpEndsTheExchangeAndReturnsTheGaugesToZero(_ point: HangUpPoint) throws {
        let up = try TestUpstream()
        defer { up.stop() }
        let gw = try Self.gateway(up, upstream: "    max_connections_per_target: 2\n", responseTimeout: "10s")
        defer { gw.stop() }
        for (round, abrupt) in [false, true].enumerated() {
            let c = try RawConnection(port: gw.port, timeout: 5)
            try point.reach(c, up, round: round)
            Self.hangUp(c, abrupt: abrupt)
            try gw.waitUntilQuiet()
            let r = try request(port: gw.port, "GET", "/after/\(round)")
            #expect(r.status == 200, "\(point), \(abrupt ? "reset" : "FIN"): next request \(r.status) \(r.text)")
            try gw.waitUntilQuiet()
        }
    }

    // MARK: 4. Audited exchanges answered early

    @Test func anEarlyAnsweredAuditedPostWhoseClientLeavesIsRecordedAndFreesItsQueueSlot() throws {
        let up = try TestUpstream()
        defer { up.stop() }
        let log = try AuditLogFile()
        let gw = try Self.gateway(
            up, audit: Self.auditSection(log: log.path, queue: "  queue_size: 4\n  queue_timeout: 200ms"))
        defer { gw.stop() }
        var ids: [String] = []
        for i in 0..<6 {
            let id = "early-hangup-\(i)"
            ids.append(id)
            let c = try Self.earlyAnsweredPost(gw, id: id)
            Self.hangUp(c, abrupt: i % 2 == 1)
        }
        // More than queue_size such exchanges ended: the queue has room for the next write.
        let normal = try request(port: gw.port, "POST", "/normal", headers: [("X-Request-ID", "normal-after")], body: "{}")
        #expect(normal.status == 200, "\(normal.status) \(normal.text)")
        try Self.waitForRecords(log, ids + ["normal-after"])
        for id in ids {
            let rec = try #require(log.record(id: id))
            #expect(rec["method"] as? String == "POST" && rec["path"] as? String == "/early", "\(rec)")
            #expect([201, 499].contains(rec["status"] as? Int ?? 0), "\(id): \(rec)")
        }
        #expect(log.records.filter { ids.contains($0["request_id"] as? String ?? "") }.count == ids.count, "a record written twice")
    }

    @Test func anEarlyAnsweredAuditedPostThatTimesOutIsRecordedAndFreesItsQueueSlot() throws {
        let up = try TestUpstream()
        defer { up.stop() }
        let log = try AuditLogFile()
        let gw = try Self.gateway(
            up, server: "  request_timeout: 1s",
            audit: Self.auditSection(log: log.path, queue: "  queue_size: 4\n  queue_timeout: 200ms"))
        defer { gw.stop() }
        // queue_size exchanges at once, each answered early and then left without the rest of its body.
        var ids: [String] = []
        var clients: [RawConnection] = []
        for i in 0..<4 {
            let id = "early-timeout-\(i)"
            ids.append(id)
            let c = try Self.earlyAnsweredPost(gw, id: id)
            clients.append(c)
        }
        // The request timeout ends each of them: the gateway closes the connection.
        for (i, c) in clients.enumerated() { #expect(c.waitForClose(), "\(ids[i]): not closed by the request timeout") }
        let normal = try request(port: gw.port, "POST", "/normal", headers: [("X-Request-ID", "normal-after")], body: "{}")
        #expect(normal.status == 200, "\(normal.status) \(normal.text)")
        try Self.waitForRecords(log, ids + ["normal-after"])
        for id in ids {
            let rec = try #require(log.record(id: id))
            #expect(rec["method"] as? String == "POST" && rec["path"] as? String == "/early", "\(rec)")
        }
    }

    // MARK: 5. A client that stops reading

    @Test func aClientThatStopsReadingIsClosedAfterTheSendTimeoutAndItsUpstreamReleased() throws {
        let up = try TestUpstream()
        defer { up.stop() }
        let gw = try Self.gateway(up, server: "  send_timeout: 1s\n  request_timeout: 30s", responseTimeout: "30s")
        defer { gw.stop() }
        let total = 50_000_000
        let c = try RawConnection(port: gw.port, timeout: 10, receiveBuffer: 16 * 1024)
        try c.send("GET /download/\(total) HTTP/1.1\r\nHost: gw\r\n\r\n")
        try waitUntil(seconds: 5) { up.heads.contains("/download/\(total)") }
        // Never reading: once nothing could be written for send_timeout, the exchange ends.
        try gw.waitUntilQuiet(seconds: 10)
        // The half-sent response's upstream connection is closed, not kept.
        try waitUntil(seconds: 5) { up.openConnections == 0 }
        let (received, closed) = c.readToEnd()
        #expect(closed, "the stalled client was not closed")
        #expect(received < total, "the whole response arrived (\(received) bytes): the client was never cut off")
        let r = try request(port: gw.port, "GET", "/after")
        #expect(r.status == 200, "\(r.status) \(r.text)")
    }

    // MARK: 6. A malformed request behind a valid one

    @Test func aMalformedRequestAfterAValidOneInTheSameWriteEndsOnlyItself() throws {
        let up = try TestUpstream()
        defer { up.stop() }
        let log = try AuditLogFile()
        let gw = try Self.gateway(up, audit: Self.auditSection(log: log.path))
        defer { gw.stop() }
        var pairs: [(String, String)] = []
        for i in 0..<5 {
            let c = try RawConnection(port: gw.port, timeout: 5)
            try c.send("DELETE /x/\(i) HTTP/1.1\r\nHost: gw\r\n\r\nX\r\n\r\n")
            let first = try #require(try c.readResponse(), "try \(i): no response")
            #expect(first.status == 200, "try \(i): the valid request got \(first.status) \(first.text)")
            #expect(first.json["method"] as? String == "DELETE" && first.json["uri"] as? String == "/x/\(i)")
            let forwarded = up.requests.filter { $0.uri == "/x/\(i)" }
            #expect(forwarded.count == 1, "try \(i): forwarded \(forwarded.count) times")
            let id1 = try #require(first.header("X-Request-ID"))
            #expect(forwarded.first?.header("X-Request-ID") == id1, "try \(i): the response carries another request's id")
            let second = try #require(try c.readResponse(), "try \(i): no 400 after the real response")
            #expect(second.status == 400 && second.json["code"] as? String == "bad_request", "try \(i): \(second.status) \(second.text)")
            let id2 = try #require(second.json["request_id"] as? String)
            #expect(id2 != id1, "try \(i): the 400 carries the valid request's id")
            #expect(c.waitForClose(), "try \(i): connection left open after the 400")
            pairs.append((id1, id2))
        }
        #expect(up.heads == (0..<5).map { "/x/\($0)" }, "\(up.heads)")
        try Self.waitForRecords(log, pairs.flatMap { [$0.0, $0.1] })
        for (i, (id1, id2)) in pairs.enumerated() {
            let allow = try #require(log.record(id: id1), "try \(i): no record of the DELETE")
            #expect(allow["decision"] as? String == "allow" && allow["status"] as? Int == 200, "try \(i): \(allow)")
            #expect(allow["method"] as? String == "DELETE" && allow["path"] as? String == "/x/\(i)", "try \(i): \(allow)")
            let deny = try #require(log.record(id: id2), "try \(i): no record of the 400")
            #expect(deny["decision"] as? String == "deny" && deny["code"] as? String == "bad_request", "try \(i): \(deny)")
            #expect(log.records.filter { $0["request_id"] as? String == id1 }.count == 1, "try \(i): DELETE recorded twice")
        }
    }

    @Test func aSmuggledRequestBehindASlowOneGetsItsOwn400AfterTheRealResponse() throws {
        let up = try TestUpstream()
        defer { up.stop() }
        let gw = try Self.gateway(up)
        defer { gw.stop() }
        let c = try RawConnection(port: gw.port, timeout: 5)
        try c.send(
            "GET /slow/300 HTTP/1.1\r\nHost: gw\r\n\r\n"
                + "POST /y HTTP/1.1\r\nHost: gw\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
        let first = try #require(try c.readResponse(), "no response")
        #expect(first.status == 200 && first.json["uri"] as? String == "/slow/300", "\(first.status) \(first.text)")
        let id1 = first.header("X-Request-ID")
        let second = try #require(try c.readResponse(), "no 400 after the real response")
        #expect(second.status == 400 && second.json["code"] as? String == "bad_request", "\(second.status) \(second.text)")
        #expect(second.json["request_id"] as? String != id1)
        #expect(c.waitForClose())
        #expect(up.heads == ["/slow/300"], "\(up.heads)")
    }

    // MARK: 7. A chunk larger than the body limit

    @Test func aChunkDeclaredLargerThanTheBodyLimitIs413AtOnce() throws {
        let up = try TestUpstream()
        defer { up.stop() }
        let gw = try Self.gateway(up, server: "  max_body_bytes: 1KiB\n  request_timeout: 30s")
        defer { gw.stop() }
        // A 408 after request_timeout would make this read time out: the 413 must come without more bytes.
        let c = try RawConnection(port: gw.port, timeout: 5)
        try c.send("POST /u HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n100000\r\nabcdef")
        let r = try #require(try c.readResponse())
        #expect(r.status == 413 && r.json["code"] as? String == "payload_too_large", "\(r.status) \(r.text)")
        #expect(up.heads.isEmpty, "forwarded: \(up.heads)")
        #expect(try request(port: gw.port, "GET", "/after").status == 200)
    }

    @Test func aChunkDeclaredTooLargeIs413AtOnceAlsoAfterEarlierRequestsOnTheConnection() throws {
        let up = try TestUpstream()
        defer { up.stop() }
        let gw = try Self.gateway(up, server: "  max_body_bytes: 1KiB\n  request_timeout: 30s")
        defer { gw.stop() }
        let c = try RawConnection(port: gw.port, timeout: 5)
        // A sized body, then a small chunked one, keep-alive: the third request's chunk is over the limit.
        try c.send("POST /sized HTTP/1.1\r\nHost: gw\r\nContent-Length: 5\r\n\r\nhello")
        #expect(try c.readResponse()?.status == 200)
        try c.send("POST /chunked HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
        #expect(try c.readResponse()?.status == 200)
        try c.send("POST /big HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n2000\r\nabcdef")
        let r = try #require(try c.readResponse())
        #expect(r.status == 413 && r.json["code"] as? String == "payload_too_large", "\(r.status) \(r.text)")
        #expect(up.heads == ["/sized", "/chunked"], "forwarded: \(up.heads)")
    }

    // MARK: 8. request_timeout caps the head

    @Test func aDribbledHeadGets408WithinTheRequestTimeout() throws {
        let up = try TestUpstream()
        defer { up.stop() }
        // header_timeout keeps its default (10s); request_timeout must cap it.
        let gw = try Self.gateway(up, server: "  request_timeout: 1s")
        defer { gw.stop() }
        let c = try RawConnection(port: gw.port, timeout: 3)
        let head = Array("GET /dribble HTTP/1.1\r\nHost: gw\r\nX-Pad: \(String(repeating: "a", count: 100))".utf8)
        // One byte every 200 ms for at most 3 s (or until the gateway answers), then a read bounded by 3 s.
        for byte in head.prefix(15) {
            guard (try? c.send([byte])) != nil else { break }
            if c.waitReadable(timeout: 0.2) { break }
        }
        let r = try #require(try c.readResponse(), "closed without a response")
        #expect(r.status == 408 && r.json["code"] as? String == "request_timeout", "\(r.status) \(r.text)")
        #expect(c.waitForClose(), "not closed after the 408")
        #expect(up.heads.isEmpty)
    }

    // MARK: 9. Bytes read ahead are bounded

    @Test func manyPipelinedUploadsBehindAHeldExchangeDoNotGrowTheGateway() throws {
        let up = try TestUpstream()
        defer { up.stop() }
        let gw = try Self.gateway(up, responseTimeout: "30s")
        defer { gw.stop() }
        #expect(try request(port: gw.port, "GET", "/warm").status == 200)
        let baseline = gw.rss
        let c = try RawConnection(port: gw.port, timeout: 20)
        try c.send("GET /hold/first HTTP/1.1\r\nHost: gw\r\n\r\n")
        try waitUntil(seconds: 5) { up.heads.contains("/hold/first") }
        let count = 200
        let size = 256 * 1024
        var payload: [UInt8] = []
        payload.reserveCapacity(count * (size + 80))
        for i in 0..<count {
            payload += Array("POST /p/\(i) HTTP/1.1\r\nHost: gw\r\nContent-Length: \(size)\r\n\r\n".utf8)
            payload += [UInt8](repeating: 0x70, count: size)
        }
        let sender = c.makeSender()
        sender.startSending(payload)
        let peak = try Self.waitForStall(sender, gw)
        let grown = peak - baseline
        print("pipelined uploads: \(sender.sent) of \(payload.count) bytes taken while held; RSS grew \(grown) bytes")
        #expect(grown < 16 * Self.mib, "gateway RSS grew by \(grown) bytes while \(sender.sent) bytes were pipelined")
        up.release("first")
        let first = try #require(try c.readResponse())
        #expect(first.status == 200 && first.json["uri"] as? String == "/hold/first")
        for i in 0..<count {
            let r = try #require(try c.readResponse(), "response \(i) missing")
            guard r.status == 200, r.json["uri"] as? String == "/p/\(i)", r.json["body_bytes"] as? Int == size else {
                Issue.record("response \(i) out of order or wrong: \(r.status) \(r.text.prefix(200))")
                break
            }
        }
    }

    @Test func aLargePipelinedBodyBehindAHeldExchangeDoesNotGrowTheGateway() throws {
        let up = try TestUpstream()
        defer { up.stop() }
        let gw = try Self.gateway(up, server: "  max_body_bytes: 128MiB", responseTimeout: "30s")
        defer { gw.stop() }
        #expect(try request(port: gw.port, "GET", "/warm").status == 200)
        let baseline = gw.rss
        let c = try RawConnection(port: gw.port, timeout: 20)
        try c.send("GET /hold/first HTTP/1.1\r\nHost: gw\r\n\r\n")
        try waitUntil(seconds: 5) { up.heads.contains("/hold/first") }
        let size = 64 * Self.mib
        let sender = c.makeSender()
        sender.startSending(
            Array("POST /big HTTP/1.1\r\nHost: gw\r\nContent-Length: \(size)\r\n\r\n".utf8) + [UInt8](repeating: 0x62, count: size))
        let peak = try Self.waitForStall(sender, gw)
        let grown = peak - baseline
        print("pipelined body: \(sender.sent) bytes taken while held; RSS grew \(grown) bytes")
        #expect(grown < 16 * Self.mib, "gateway RSS grew by \(grown) bytes while \(sender.sent) bytes were pipelined")
        up.release("first")
        let first = try #require(try c.readResponse())
        #expect(first.status == 200 && first.json["uri"] as? String == "/hold/first")
        let big = try #require(try c.readResponse())
        #expect(big.status == 200 && big.json["body_bytes"] as? Int == size, "\(big.status) \(big.text.prefix(200))")
    }

    @Test func bytesAfterAnUpgradeRequestDoNotGrowTheGateway() throws {
        let up = try TestUpstream()
        defer { up.stop() }
        let gw = try Self.gateway(up, responseTimeout: "30s")
        defer { gw.stop() }
        #expect(try request(port: gw.port, "GET", "/warm").status == 200)
        let baseline = gw.rss
        let c = try RawConnection(port: gw.port, timeout: 20)
        let sender = c.makeSender()
        sender.startSending(
            Array("GET /up HTTP/1.1\r\nHost: gw\r\nConnection: Upgrade\r\nUpgrade: foo\r\n\r\n".utf8)
                + [UInt8](repeating: 0x75, count: 64 * Self.mib))
        // The gateway may refuse (400 and close) or forward; either way it must not hold what follows.
        let peak = try Self.waitForStall(sender, gw)
        let grown = peak - baseline
        print("upgrade: \(sender.sent) bytes taken, send failed: \(sender.failed); RSS grew \(grown) bytes")
        #expect(grown < 16 * Self.mib, "gateway RSS grew by \(grown) bytes after an Upgrade request")
        c.reset()
        #expect(try request(port: gw.port, "GET", "/after").status == 200)
    }

    // MARK: 10. Soak

    /// Soak clients run on threads of their own, so they throw instead of recording issues.
    static func soakResponse(_ c: RawConnection) throws -> RawResponse {
        guard let r = try c.readResponse() else { throw RawClientError(description: "closed without a response") }
        return r
    }

    static func soakDownloadHead(_ c: RawConnection) throws {
        guard let h = try c.readHead() else { throw RawClientError(description: "download: closed without a response") }
        guard h.status == 200 else { throw RawClientError(description: "download answered \(h.status)") }
    }

    /// One soak client: with probability 1/3 it hangs up at a random moment, otherwise it completes a normal
    /// request and checks the answer. Throws when a normal request goes wrong.
    static func soakClient(port: Int, rng: inout SeededRandom) throws {
        let c = try RawConnection(port: port, timeout: 10)
        if Int.random(in: 0..<3, using: &rng) == 0 {
            let abrupt = Bool.random(using: &rng)
            switch Int.random(in: 0..<4, using: &rng) {
            case 0:  // before the whole request was sent
                let text = Array("POST /soak/part HTTP/1.1\r\nHost: gw\r\nContent-Length: 100\r\n\r\n".utf8)
                try c.send(Array(text.prefix(Int.random(in: 1..<text.count, using: &rng))))
            case 1:  // mid-body of an upload
                try c.send("POST /soak/upload HTTP/1.1\r\nHost: gw\r\nContent-Length: 1000000\r\n\r\n")
                try c.send([UInt8](repeating: 0x73, count: Int.random(in: 0..<500_000, using: &rng)))
            case 2:  // right after the head of a download
                try c.send("GET /download/5000000 HTTP/1.1\r\nHost: gw\r\n\r\n")
                try soakDownloadHead(c)
            default:  // mid-download
                try c.send("GET /download/5000000 HTTP/1.1\r\nHost: gw\r\n\r\n")
                try soakDownloadHead(c)
                _ = try c.drain(count: Int.random(in: 1..<2_000_000, using: &rng))
            }
            hangUp(c, abrupt: abrupt)
            return
        }
        let r: RawResponse
        let expectedBytes: Int
        switch Int.random(in: 0..<3, using: &rng) {
        case 0:
            try c.send("GET /soak/get HTTP/1.1\r\nHost: gw\r\n\r\n")
            r = try soakResponse(c)
            expectedBytes = r.body.count
        case 1:
            let n = Int.random(in: 0..<256 * 1024, using: &rng)
            try c.send(Array("POST /soak/post HTTP/1.1\r\nHost: gw\r\nContent-Length: \(n)\r\n\r\n".utf8) + [UInt8](repeating: 0x71, count: n))
            r = try soakResponse(c)
            expectedBytes = r.json["body_bytes"] as? Int == n ? r.body.count : -1
        default:
            let n = Int.random(in: 1..<1_000_000, using: &rng)
            try c.send("GET /download/\(n) HTTP/1.1\r\nHost: gw\r\n\r\n")
            r = try soakResponse(c)
            expectedBytes = n
        }
        guard r.status == 200, r.body.count == expectedBytes else {
            throw RawClientError(description: "normal request: \(r.status) \(r.json["code"] ?? ""), \(r.body.count) body bytes")
        }
    }

    @Test func soakWithAThirdOfTheClientsHangingUpLeavesNothingBusy() throws {
        let seed: UInt64 = 0x1_1C0F_FEE
        let up = try TestUpstream()
        defer { up.stop() }
        let gw = try Self.gateway(
            up, server: "  max_body_bytes: 64MiB", upstream: "    max_connections_per_target: 8\n", threads: 2)
        defer { gw.stop() }
        let workers = 6
        let perWorker = 50
        let maxFailures = 20
        let failures = LineLog()
        let finished = DispatchSemaphore(value: 0)
        for w in 0..<workers {
            Thread {
                var rng = SeededRandom(seed: seed &+ UInt64(w))
                for n in 0..<perWorker where failures.all.count < maxFailures {
                    do {
                        try Self.soakClient(port: gw.port, rng: &rng)
                    } catch {
                        failures.append("worker \(w) client \(n): \(error)")
                    }
                }
                finished.signal()
            }.start()
        }
        for _ in 0..<workers {
            #expect(finished.wait(timeout: .now() + 120) == .success, "a soak worker did not finish (seed \(seed))")
        }
        let failed = failures.all
        let firstFailures = failed.prefix(5).joined(separator: "\n")
        #expect(failed.count == 0, "seed \(seed): \(failed.count) clients failed (the workers stop after \(maxFailures)):\n\(firstFailures)")
        try gw.waitUntilQuiet()
        try Self.expectServing(gw, requests: 20) { i in "seed \(seed): request \(i) after the soak" }
        try gw.waitUntilQuiet()
    }
}
