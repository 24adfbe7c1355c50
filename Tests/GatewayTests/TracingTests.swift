import Foundation
import Policy
import Testing

/// Live: W3C trace context through the real binary (continued, replaced, started, followed when unsampled),
/// spans exported over OTLP/HTTP to a real receiver decoding them with the official protobuf definitions, a dead
/// or black-holing collector, and `trace_id` in the audit log and the access log.
@Suite(.serialized) struct TracingTests {
    static let apiKey = "gh_trace_test_key"
    static let env = ["GH_TEST_ADMIN_TOKEN": "adm"]

    static func config(upstream: Int, tracing: String, extra: String = "") -> String {
        """
        server: {listen: 127.0.0.1:0, admin_listen: 127.0.0.1:0, admin_token_env: GH_TEST_ADMIN_TOKEN, threads: 2}
        identity: {header_tenancy: api_key_only}
        plans: {free: {features: [core]}}
        tenants:
          acme: {plan: free, api_keys: [{id: ci, sha256: \(Digest.hex(Digest.sha256(apiKey.utf8)))}]}
        upstreams:
          app: {targets: [127.0.0.1:\(upstream)], connect_timeout: 500ms}
          gone: {targets: [127.0.0.1:1], connect_timeout: 500ms}
        routes:
          - {name: api, match: {path_prefix: /api}, upstream: app, auth: required, rate_limits: []}
          - {name: gone, match: {path_prefix: /gone}, upstream: gone, auth: none}
        \(tracing)
        \(extra)
        """
    }

    static func tracing(_ endpoint: String, ratio: String = "1.0") -> String {
        "tracing: {otlp_endpoint: \"\(endpoint)\", service_name: gh-test, sample_ratio: \(ratio)}"
    }

    static let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

    /// An upstream, a receiver and a gateway exporting to it (`ratio`), stopped when the test ends.
    final class Traced {
        let up: TestUpstream
        let rx: OTLPReceiver
        let gw: GatewayProcess
        init(mode: OTLPReceiver.Mode = .normal, ratio: String = "1.0") throws {
            up = try TestUpstream()
            rx = try OTLPReceiver(mode: mode)
            gw = try GatewayProcess(
                yaml: TracingTests.config(upstream: up.port, tracing: TracingTests.tracing(rx.endpoint, ratio: ratio)),
                environment: TracingTests.env)
        }
        deinit {
            _ = gw.stop()
            rx.stop()
            up.stop()
        }
    }

    /// The traceparent the upstream received for the request whose path is `path`.
    static func upstreamParent(_ up: TestUpstream, _ path: String) throws -> TraceContext.Parent {
        guard let r = up.requests.last(where: { $0.uri == path }) else {
            throw RawClientError(description: "\(path) did not reach the upstream")
        }
        let values = r.headers("traceparent")
        guard values.count == 1, let parent = TraceContext.parse(traceparent: values[0]) else {
            throw RawClientError(description: "the upstream got traceparent \(values)")
        }
        return parent
    }

    static func waitForSpans(_ rx: OTLPReceiver, trace: String, count: Int) throws -> [[String: Any]] {
        try pollUntil("\(count) spans of trace \(trace)", seconds: 10) {
            let spans = rx.spans(trace: trace)
            return spans.count >= count ? .done(spans) : .waiting("\(spans.count) spans")
        }
    }

    @Test func aValidTraceparentIsContinuedAndTheUpstreamsParentIsTheGatewaysSpan() throws {
        let t = try Traced()
        defer { withExtendedLifetime(t) {} }  // stopped at the end of the test, not after its last use
        let (up, rx, gw) = (t.up, t.rx, t.gw)

        let r = try request(
            port: gw.port, "GET", "/api/continued?x=1",
            headers: [("X-API-Key", Self.apiKey), ("traceparent", Self.incoming), ("tracestate", "vendor=abc,other=1")])
        #expect(r.status == 200)
        let sent = try Self.upstreamParent(up, "/api/continued?x=1")
        #expect(TraceContext.hex(sent.traceHigh, sent.traceLow) == "4bf92f3577b34da6a3ce929d0e0e4736")
        #expect(TraceContext.hex(sent.span) != "00f067aa0ba902b7")
        #expect(sent.sampled)
        #expect(up.requests.last?.headers("tracestate") == ["vendor=abc,other=1"])

        let spans = try Self.waitForSpans(rx, trace: "4bf92f3577b34da6a3ce929d0e0e4736", count: 2)
        #expect(spans.count == 2)
        let server = try #require(spans.first { $0["kind"] as? Int == 2 })
        let client = try #require(spans.first { $0["kind"] as? Int == 3 })
        // The upstream's parent is the gateway's (server) span, whose parent is the caller's span.
        #expect(server["span_id"] as? String == TraceContext.hex(sent.span))
        #expect(server["parent_span_id"] as? String == "00f067aa0ba902b7")
        #expect(client["parent_span_id"] as? String == server["span_id"] as? String)
        #expect(server["trace_state"] as? String == "vendor=abc,other=1")
        let a = try #require(server["attributes"] as? [String: Any])
        #expect(a["http.request.method"] as? String == "GET")
        #expect(a["http.route"] as? String == "api")
        #expect(a["http.response.status_code"] as? Int == 200)
        #expect(a["gatehouse.tenant"] as? String == "acme")
        #expect(a["gatehouse.plan"] as? String == "free")
        #expect(a["gatehouse.decision"] as? String == "allow")
        #expect(a["gatehouse.code"] as? String == "")
        #expect(server["service_name"] as? String == "gh-test")
        #expect(server["path"] as? String == "/v1/traces")
        #expect(server["content_type"] as? String == "application/x-protobuf")
        let ca = try #require(client["attributes"] as? [String: Any])
        #expect(ca["gatehouse.upstream"] as? String == "app")
        #expect(ca["server.port"] as? Int == up.port)
        // The upstream call lies within the gateway's span.
        let (ss, se) = (server["start"] as? Int ?? 0, server["end"] as? Int ?? 0)
        let (cs, ce) = (client["start"] as? Int ?? 0, client["end"] as? Int ?? 0)
        #expect(ss > 0 && ss <= cs && cs <= ce && ce <= se)
    }

    @Test func anInvalidTraceparentIsReplacedAndItsTracestateDropped() throws {
        let t = try Traced()
        defer { withExtendedLifetime(t) {} }  // stopped at the end of the test, not after its last use
        let (up, rx, gw) = (t.up, t.rx, t.gw)
        let invalid = [
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01",  // upper case
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  // version ff
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  // zero trace id
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  // zero span id
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",  // v00 with more
            "garbage",
        ]
        for (i, value) in invalid.enumerated() {
            let path = "/api/invalid-\(i)"
            let r = try request(
                port: gw.port, "GET", path,
                headers: [("X-API-Key", Self.apiKey), ("traceparent", value), ("tracestate", "vendor=abc")])
            #expect(r.status == 200)
            let sent = try Self.upstreamParent(up, path)
            let trace = TraceContext.hex(sent.traceHigh, sent.traceLow)
            #expect(trace != "4bf92f3577b34da6a3ce929d0e0e4736", Comment(rawValue: value))
            #expect(up.requests.last?.headers("tracestate") == [], Comment(rawValue: value))
            // A new root: the gateway's span has no parent.
            let spans = try Self.waitForSpans(rx, trace: trace, count: 2)
            let server = try #require(spans.first { $0["kind"] as? Int == 2 })
            #expect(server["parent_span_id"] as? String == "", Comment(rawValue: value))
        }
        // Two traceparent headers are not one trace context either.
        let r = try request(
            port: gw.port, "GET", "/api/two",
            headers: [("X-API-Key", Self.apiKey), ("traceparent", Self.incoming), ("traceparent", Self.incoming)])
        #expect(r.status == 200)
        let sent = try Self.upstreamParent(up, "/api/two")
        #expect(TraceContext.hex(sent.traceHigh, sent.traceLow) != "4bf92f3577b34da6a3ce929d0e0e4736")
        // A later version's longer value is read by its version-00 fields.
        let later = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-future"
        _ = try request(port: gw.port, "GET", "/api/later", headers: [("X-API-Key", Self.apiKey), ("traceparent", later)])
        let continued = try Self.upstreamParent(up, "/api/later")
        #expect(TraceContext.hex(continued.traceHigh, continued.traceLow) == "4bf92f3577b34da6a3ce929d0e0e4736")
    }

    @Test func aTraceIsStartedWhenNoneCameAndAnUnsampledParentIsFollowed() throws {
        let t = try Traced()
        defer { withExtendedLifetime(t) {} }  // stopped at the end of the test, not after its last use
        let (up, rx, gw) = (t.up, t.rx, t.gw)

        let unsampled = "00-11111111111111111111111111111111-2222222222222222-00"
        _ = try request(port: gw.port, "GET", "/api/unsampled", headers: [("X-API-Key", Self.apiKey), ("traceparent", unsampled)])
        let followed = try Self.upstreamParent(up, "/api/unsampled")
        #expect(!followed.sampled)
        #expect(TraceContext.hex(followed.traceHigh, followed.traceLow) == "11111111111111111111111111111111")

        let r = try request(port: gw.port, "GET", "/api/fresh", headers: [("X-API-Key", Self.apiKey)])
        #expect(r.status == 200)
        let started = try Self.upstreamParent(up, "/api/fresh")
        #expect(started.sampled)  // sample_ratio 1.0
        let trace = TraceContext.hex(started.traceHigh, started.traceLow)
        let spans = try Self.waitForSpans(rx, trace: trace, count: 2)
        #expect(spans.first { $0["kind"] as? Int == 2 }?["parent_span_id"] as? String == "")
        // The unsampled request was queued before the sampled one: it would have been exported by now.
        #expect(rx.spans(trace: "11111111111111111111111111111111").isEmpty)

        // A denial is a span too, with its code, and no upstream call.
        let denied = try request(port: gw.port, "GET", "/api/nokey", headers: [("traceparent", Self.incoming)])
        #expect(denied.status == 401)
        let deniedSpans = try Self.waitForSpans(rx, trace: "4bf92f3577b34da6a3ce929d0e0e4736", count: 1)
        let a = try #require(deniedSpans.first?["attributes"] as? [String: Any])
        #expect(a["gatehouse.decision"] as? String == "deny")
        #expect(a["gatehouse.code"] as? String == "unauthenticated")
        #expect(a["http.response.status_code"] as? Int == 401)
        // A 502: the span's status is an error.
        let bad = try request(port: gw.port, "GET", "/gone/x", headers: [("traceparent", "00-33333333333333333333333333333333-4444444444444444-01")])
        #expect(bad.status == 502 || bad.status == 503)
        let badSpans = try Self.waitForSpans(rx, trace: "33333333333333333333333333333333", count: 1)
        #expect(badSpans.first { $0["kind"] as? Int == 2 }?["status_code"] as? Int == 2)
    }

    @Test func sampleRatioZeroExportsNothingNewButStillPropagates() throws {
        let t = try Traced(ratio: "0")
        defer { withExtendedLifetime(t) {} }  // stopped at the end of the test, not after its last use
        let (up, rx, gw) = (t.up, t.rx, t.gw)
        for i in 0..<20 {
            let r = try request(port: gw.port, "GET", "/api/r\(i)", headers: [("X-API-Key", Self.apiKey)])
            #expect(r.status == 200)
            #expect(try Self.upstreamParent(up, "/api/r\(i)").sampled == false)
        }
        // A sampled parent is still followed; once its spans are in, none of the others came.
        _ = try request(port: gw.port, "GET", "/api/parent", headers: [("X-API-Key", Self.apiKey), ("traceparent", Self.incoming)])
        _ = try Self.waitForSpans(rx, trace: "4bf92f3577b34da6a3ce929d0e0e4736", count: 2)
        #expect(rx.spans.count == 2)
    }

    @Test func withoutTracingTheTraceparentIsStillPropagated() throws {
        let up = try TestUpstream()
        defer { up.stop() }
        let gw = try GatewayProcess(yaml: Self.config(upstream: up.port, tracing: ""), environment: Self.env)
        defer { _ = gw.stop() }
        _ = try request(port: gw.port, "GET", "/api/p", headers: [("X-API-Key", Self.apiKey), ("traceparent", Self.incoming)])
        let sent = try Self.upstreamParent(up, "/api/p")
        #expect(TraceContext.hex(sent.traceHigh, sent.traceLow) == "4bf92f3577b34da6a3ce929d0e0e4736")
        #expect(sent.sampled)
        #expect(TraceContext.hex(sent.span) != "00f067aa0ba902b7")
        _ = try request(port: gw.port, "GET", "/api/q", headers: [("X-API-Key", Self.apiKey)])
        #expect(try Self.upstreamParent(up, "/api/q").sampled == false)
        #expect(try gw.metrics().value("gatehouse_trace_spans_dropped_total") == nil)
    }

    /// A collector that refuses connections, answers 503 or takes the request and never answers: requests are
    /// answered all the same (the export runs off the request path), and the lost spans are counted.
    @Test(arguments: [OTLPReceiver.Mode.refuse, .blackhole])
    func aSickCollectorNeverHoldsRequestsUpAndItsSpansAreCounted(mode: OTLPReceiver.Mode) throws {
        let t = try Traced(mode: mode)
        defer { withExtendedLifetime(t) {} }  // stopped at the end of the test, not after its last use
        let gw = t.gw
        for i in 0..<50 {
            let r = try request(port: gw.port, "GET", "/api/s\(i)", headers: [("X-API-Key", Self.apiKey)])
            #expect(r.status == 200)
        }
        // A black hole costs each batch the 5 s export timeout; 50 requests may span a few batches.
        let dropped = try pollUntil("spans counted as dropped", seconds: 40) { () -> Polled<Double> in
            let n = try gw.metrics().value("gatehouse_trace_spans_dropped_total") ?? 0
            return n >= 100 ? .done(n) : .waiting("\(n) dropped")
        }
        #expect(dropped == 100)
        #expect(try gw.metrics().value("gatehouse_trace_spans_exported_total") == 0)
    }

    @Test func aClosedCollectorPortDropsSpansAndRequestsGoOn() throws {
        let up = try TestUpstream()
        defer { up.stop() }
        let gw = try GatewayProcess(
            yaml: Self.config(upstream: up.port, tracing: Self.tracing("http://127.0.0.1:1")), environment: Self.env)
        defer { _ = gw.stop() }
        for i in 0..<10 {
            #expect(try request(port: gw.port, "GET", "/api/c\(i)", headers: [("X-API-Key", Self.apiKey)]).status == 200)
        }
        _ = try pollUntil("spans counted as dropped", seconds: 10) { () -> Polled<Double> in
            let n = try gw.metrics().value("gatehouse_trace_spans_dropped_total") ?? 0
            return n >= 20 ? .done(n) : .waiting("\(n) dropped")
        }
    }

    @Test func auditRecordsCarryTheTraceID() throws {
        let up = try TestUpstream()
        defer { up.stop() }
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("gh-trace-audit-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let log = dir.appendingPathComponent("audit.jsonl").path
        let audit = """
            audit:
              methods: [POST]
              sinks:
                - file: {path: "\(log)"}
            """
        let gw = try GatewayProcess(yaml: Self.config(upstream: up.port, tracing: "", extra: audit), environment: Self.env)
        defer { _ = gw.stop() }
        _ = try request(
            port: gw.port, "POST", "/api/w", headers: [("X-API-Key", Self.apiKey), ("traceparent", Self.incoming)], body: "{}")
        _ = try request(port: gw.port, "GET", "/api/denied")  // 401: audited as a denial, a new trace
        let sent = try Self.upstreamParent(up, "/api/w")
        let records = try pollUntil("2 audit records", seconds: 10) { () -> Polled<[[String: Any]]> in
            let text = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
            let lines = text.split(separator: "\n").compactMap {
                try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any]
            }
            return lines.count >= 2 ? .done(lines) : .waiting("\(lines.count) records")
        }
        // Two loops: the records may be queued in either order.
        let write = try #require(records.first { $0["method"] as? String == "POST" })
        let denial = try #require(records.first { $0["status"] as? Int == 401 })
        #expect(write["trace_id"] as? String == "4bf92f3577b34da6a3ce929d0e0e4736")
        #expect(write["trace_id"] as? String == TraceContext.hex(sent.traceHigh, sent.traceLow))
        let other = try #require(denial["trace_id"] as? String)
        #expect(other.count == 32 && other != "4bf92f3577b34da6a3ce929d0e0e4736")
        // The chain still verifies with the new member.
        let verify = try runGatehouse(["audit", "verify", log])
        #expect(verify.status == 0, Comment(rawValue: verify.err))
    }
}
