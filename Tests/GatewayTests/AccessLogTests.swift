import Foundation
import Policy
import Testing

/// Live: the access log of the real binary: one JSON line per request with the documented fields, no query string
/// and no credentials, sampling of allowed requests (denials and 5xx always logged), and nothing lost on a
/// graceful stop.
@Suite(.serialized) struct AccessLogTests {
    static func config(upstream: Int, log: String, sample: String = "1.0", threads: Int = 1) -> String {
        TracingTests.config(upstream: upstream, tracing: "access_log: {path: \"\(log)\", sample: \(sample)}")
            .replacingOccurrences(of: "threads: 2", with: "threads: \(threads)")
    }

    final class Setup {
        let dir: URL
        let log: String
        let up: TestUpstream
        init() throws {
            dir = FileManager.default.temporaryDirectory.appendingPathComponent("gh-access-\(UUID().uuidString)")
            try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
            log = dir.appendingPathComponent("access.jsonl").path
            up = try TestUpstream()
        }
        var lines: [[String: Any]] {
            let text = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
            return text.split(separator: "\n").compactMap {
                try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any]
            }
        }
        var text: String { (try? String(contentsOfFile: log, encoding: .utf8)) ?? "" }
        func waitForLines(_ n: Int) throws -> [[String: Any]] {
            try pollUntil("\(n) access-log lines", seconds: 10) {
                let l = lines
                return l.count >= n ? .done(l) : .waiting("\(l.count) lines")
            }
        }
        deinit {
            up.stop()
            try? FileManager.default.removeItem(at: dir)
        }
    }

    @Test func everyRequestIsOneLineWithItsFieldsAndNoSecrets() throws {
        let s = try Setup()
        let gw = try GatewayProcess(yaml: Self.config(upstream: s.up.port, log: s.log), environment: TracingTests.env)
        defer { _ = gw.stop() }
        let ok = try request(
            port: gw.port, "POST", "/api/items?token=secret-query",
            headers: [("X-API-Key", TracingTests.apiKey), ("User-Agent", "tester/1.0"), ("traceparent", TracingTests.incoming)],
            body: "{\"a\":1}")
        #expect(ok.status == 200)
        let denied = try request(port: gw.port, "GET", "/api/x", headers: [("Authorization", "Bearer not-a-token")])
        #expect(denied.status == 401)
        let missing = try request(port: gw.port, "GET", "/nowhere")
        #expect(missing.status == 404)
        let lines = try s.waitForLines(3)
        #expect(lines.count == 3)

        let a = lines[0]
        #expect(a["request_id"] as? String == ok.header("X-Request-ID"))
        #expect(a["trace_id"] as? String == "4bf92f3577b34da6a3ce929d0e0e4736")
        let sent = try TracingTests.upstreamParent(s.up, "/api/items?token=secret-query")
        #expect(a["span_id"] as? String == TraceContext.hex(sent.span))
        #expect(a["method"] as? String == "POST")
        #expect(a["path"] as? String == "/api/items")
        #expect(a["route"] as? String == "api")
        #expect(a["status"] as? Int == 200)
        #expect(a["decision"] as? String == "allow")
        #expect(a["code"] is NSNull)
        #expect(a["tenant"] as? String == "acme")
        #expect(a["plan"] as? String == "free")
        #expect(a["upstream"] as? String == "app")
        #expect(a["client_ip"] as? String == "127.0.0.1")
        #expect(a["bytes_in"] as? Int == 7)
        #expect(a["bytes_out"] as? Int == ok.body.count)
        #expect(a["user_agent"] as? String == "tester/1.0")
        #expect((a["latency_ms"] as? Double ?? -1) >= 0)
        #expect((a["upstream_ms"] as? Double ?? -1) >= 0)
        #expect((a["ts"] as? String)?.hasSuffix("Z") == true)

        let d = lines[1]
        #expect(d["status"] as? Int == 401)
        #expect(d["decision"] as? String == "deny")
        #expect(d["code"] as? String == "unauthenticated")
        #expect(d["upstream"] is NSNull)
        #expect(d["upstream_ms"] is NSNull)
        #expect((d["trace_id"] as? String)?.count == 32)
        #expect(lines[2]["code"] as? String == "route_not_found")
        // No query string, no credentials.
        #expect(!s.text.contains("secret-query"))
        #expect(!s.text.contains(TracingTests.apiKey))
        #expect(!s.text.contains("not-a-token"))
        // The counter moves once the write has returned: poll it.
        _ = try pollUntil("3 lines counted", seconds: 10) { () -> Polled<Double> in
            let n = try gw.metrics().value("gatehouse_access_log_lines_total") ?? 0
            return n == 3 ? .done(n) : .waiting("\(n) counted")
        }
    }

    @Test func sampleZeroStillLogsEveryDenialAndEvery5xx() throws {
        let s = try Setup()
        let gw = try GatewayProcess(yaml: Self.config(upstream: s.up.port, log: s.log, sample: "0"), environment: TracingTests.env)
        defer { _ = gw.stop() }
        for i in 0..<10 {
            #expect(try request(port: gw.port, "GET", "/api/ok\(i)", headers: [("X-API-Key", TracingTests.apiKey)]).status == 200)
        }
        #expect(try request(port: gw.port, "GET", "/api/nokey").status == 401)
        let bad = try request(port: gw.port, "GET", "/gone/x")
        #expect(bad.status >= 500)
        for i in 0..<10 {
            #expect(try request(port: gw.port, "GET", "/api/more\(i)", headers: [("X-API-Key", TracingTests.apiKey)]).status == 200)
        }
        #expect(try request(port: gw.port, "GET", "/nowhere").status == 404)
        // One loop, one buffer in order: once the last denial is written, every line before it would be too.
        let lines = try s.waitForLines(3)
        #expect(lines.map { $0["status"] as? Int } == [401, bad.status, 404])
    }

    @Test func aFractionOfAllowedRequestsIsLogged() throws {
        let s = try Setup()
        let gw = try GatewayProcess(yaml: Self.config(upstream: s.up.port, log: s.log, sample: "0.5"), environment: TracingTests.env)
        defer { _ = gw.stop() }
        let c = try RawConnection(port: gw.port)
        for i in 0..<400 {
            try c.send("GET /api/s\(i) HTTP/1.1\r\nHost: t\r\nX-API-Key: \(TracingTests.apiKey)\r\n\r\n")
            #expect(try c.readResponse(forHEAD: false)?.status == 200)
        }
        #expect(try request(port: gw.port, "GET", "/nowhere").status == 404)
        let lines = try pollUntil("the 404's line", seconds: 10) { () -> Polled<[[String: Any]]> in
            let l = s.lines
            return l.last?["status"] as? Int == 404 ? .done(l) : .waiting("\(l.count) lines")
        }
        let allowed = lines.count - 1
        // Binomial(400, 0.5): 200 ± 60 is beyond 6 standard deviations.
        #expect((140...260).contains(allowed), Comment(rawValue: "\(allowed) of 400 logged"))
    }

    @Test func aGracefulStopWritesEveryLine() throws {
        let s = try Setup()
        let gw = try GatewayProcess(yaml: Self.config(upstream: s.up.port, log: s.log, threads: 2), environment: TracingTests.env)
        for i in 0..<100 {
            #expect(try request(port: gw.port, "GET", "/api/g\(i)", headers: [("X-API-Key", TracingTests.apiKey)]).status == 200)
        }
        #expect(gw.stop() == 0)
        #expect(s.lines.count == 100)
        #expect(Set(s.lines.compactMap { $0["path"] as? String }).count == 100)
    }
}
