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
        for i in 0..<3 {
            let r = try request(port: gw.port, "GET", "/after/\(i)")
            #expect(r.status == 200, "request \(i) after 5 aborted downloads: \(r.status) \(r.text)")
        }
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
        for i in 0..<3 {
            let r = try request(port: gw.port, "GET", "/after/\(i)")
            #expect(r.status == 200, "request \(i) after 5 aborted uploads: \(r.status) \(r.text)")
        }
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
        for i in 0..<3 {
            let r = try request(port: gw.port, "GET", "/after/\(i)")
            #expect(r.status == 200, "request \(i) after the waiters left: \(r.status) \(r.text)")
        }
        #expect(!up.heads.contains { $0.hasPrefix("/waiter/") }, "a request whose client had left was forwarded: \(up.heads)")
        try gw.waitUntilQuiet()
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
            let c = try RawConnection(port: gw.port, timeout: 5)
            try c.send("POST /early HTTP/1.1\r\nHost: gw\r\nX-Request-ID: \(id)\r\nContent-Length: 1000000\r\n\r\n")
            try c.send([UInt8](repeating: 0x65, count: 100_000))
            let r = try #require(try c.readResponse(), "\(id): no response")
            #expect(r.status == 201 && r.header("X-Request-ID") == id, "\(id): \(r.status) \(r.text)")
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
            let c = try RawConnection(port: gw.port, timeout: 5)
            try c.send("POST /early HTTP/1.1\r\nHost: gw\r\nX-Request-ID: \(id)\r\nContent-Length: 1000000\r\n\r\n")
            try c.send([UInt8](repeating: 0x65, count: 100_000))
            let r = try #require(try c.readResponse(), "\(id): no response")
            #expect(r.status == 201 && r.header("X-Request-ID") == id, "\(id): \(r.status) \(r.text)")
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
}
