import Foundation
import Testing

/// Live: API versioning by header (`match.headers`). The real gateway picks between two real upstreams by
/// `Accept-Version`; `gatehouse explain` and `gatehouse validate` say what the router does with such routes.
@Suite(.serialized) struct VersionRoutingLiveTests {
    static func routes() -> String {
        """
          - name: orders
            match: {path_prefix: /api/orders}
            upstream: v1
            auth: none
          - name: orders-v2
            match: {path_prefix: /api/orders, headers: {Accept-Version: 2}}
            upstream: v2
            auth: none
          - name: reports-v2
            match: {path_prefix: /api/reports, headers: {Accept-Version: "2"}}
            upstream: v2
            auth: none
        """
    }

    /// Upstream A (`v1`, the header-less fallback), upstream B (`v2`) and the gateway, stopped when it ends.
    final class Setup {
        let v1: TestUpstream
        let v2: TestUpstream
        let gw: GatewayProcess
        var configPath: String { gw.directory.appendingPathComponent("gateway.yaml").path }

        init() throws {
            v1 = try TestUpstream()
            v2 = try TestUpstream()
            gw = try GatewayProcess(yaml: testConfig(upstreams: ["v1": [v1.port], "v2": [v2.port]], routes: VersionRoutingLiveTests.routes()))
        }

        deinit {
            gw.stop()
            v1.stop()
            v2.stop()
        }
    }

    /// Which upstream took `path` with `headers`: "v1", "v2", or the status when neither did.
    func destination(_ s: Setup, _ path: String, _ headers: [(String, String)], method: String = "GET") throws -> String {
        let (before1, before2) = (s.v1.requests.count, s.v2.requests.count)
        let r = try request(port: s.gw.port, method, path, headers: headers, body: method == "POST" ? "{}" : nil)
        let (after1, after2) = (s.v1.requests.count, s.v2.requests.count)
        switch (after1 - before1, after2 - before2, r.status) {
        case (1, 0, 200): return "v1"
        case (0, 1, 200): return "v2"
        default: return "\(r.status) \(r.json["code"] as? String ?? "-") (v1 +\(after1 - before1), v2 +\(after2 - before2))"
        }
    }

    @Test func acceptVersionPicksTheUpstream() throws {
        let s = try Setup()
        defer { withExtendedLifetime(s) {} }
        #expect(try destination(s, "/api/orders/7", []) == "v1")
        #expect(try destination(s, "/api/orders/7", [("Accept-Version", "1")]) == "v1")
        #expect(try destination(s, "/api/orders/7", [("Accept-Version", "2")]) == "v2")
        #expect(try destination(s, "/api/orders", [("Accept-Version", "2")], method: "POST") == "v2")
        // Names in any case; the value exactly, after the whitespace around it is trimmed.
        #expect(try destination(s, "/api/orders/7", [("accept-version", "2")]) == "v2")
        #expect(try destination(s, "/api/orders/7", [("ACCEPT-VERSION", "2")]) == "v2")
        #expect(try destination(s, "/api/orders/7", [("Accept-Version", "  2\t")]) == "v2")
        #expect(try destination(s, "/api/orders/7", [("Accept-Version", "v2")]) == "v1")
        #expect(try destination(s, "/api/orders/7", [("Accept-Version", "2, 3")]) == "v1")
        // Ambiguous: sent twice, even with the same value, it selects no versioned route.
        #expect(try destination(s, "/api/orders/7", [("Accept-Version", "2"), ("Accept-Version", "2")]) == "v1")
        #expect(try destination(s, "/api/orders/7", [("Accept-Version", "1"), ("accept-version", "2")]) == "v1")
        // The header is the client's: it reaches the upstream unchanged.
        #expect(s.v2.requests.last?.headers("accept-version") == ["2"])
        #expect(s.v1.requests.last?.headers("accept-version") == ["1", "2"])
    }

    @Test func eachRequestOnAKeptAliveConnectionIsRoutedByItsOwnHeaders() throws {
        let s = try Setup()
        defer { withExtendedLifetime(s) {} }
        let c = try RawConnection(port: s.gw.port)
        let versions: [String?] = ["2", nil, "2", "1", nil, "2"]
        for (i, version) in versions.enumerated() {
            let header = version.map { "Accept-Version: \($0)\r\n" } ?? ""
            try c.send("GET /api/orders/\(i) HTTP/1.1\r\nHost: gw\r\n\(header)\r\n")
            #expect(try c.readResponse()?.status == 200)
        }
        #expect(s.v2.requests.map(\.uri) == ["/api/orders/0", "/api/orders/2", "/api/orders/5"])
        #expect(s.v1.requests.map(\.uri) == ["/api/orders/1", "/api/orders/3", "/api/orders/4"])
    }

    @Test func aRouteThatNeedsTheHeaderHasNoFallback() throws {
        let s = try Setup()
        defer { withExtendedLifetime(s) {} }
        #expect(try destination(s, "/api/reports/q1", [("Accept-Version", "2")]) == "v2")
        let denied: [[(String, String)]] = [[], [("Accept-Version", "1")], [("Accept-Version", "2"), ("Accept-Version", "2")]]
        for headers in denied {
            let r = try request(port: s.gw.port, "GET", "/api/reports/q1", headers: headers)
            #expect(r.status == 404)
            #expect(r.header("Content-Type") == "application/problem+json")
            #expect(r.json["code"] as? String == "route_not_found")
        }
        #expect(s.v1.requests.isEmpty)
        #expect(s.v2.requests.count == 1)
    }

    @Test func explainShowsTheHeaderThatDidNotMatch() throws {
        let s = try Setup()
        defer { withExtendedLifetime(s) {} }
        let missing = try runGatehouse(["explain", "--config", s.configPath, "GET", "/api/reports/q1"])
        #expect(missing.status == 1, Comment(rawValue: missing.out + missing.err))
        #expect(missing.out.contains("not: reports-v2 (header Accept-Version is missing)"), Comment(rawValue: missing.out))
        #expect(missing.out.contains("route_not_found"), Comment(rawValue: missing.out))
        let wrong = try runGatehouse(["explain", "--config", s.configPath, "GET", "/api/orders/1", "-H", "Accept-Version: 1"])
        #expect(wrong.status == 0, Comment(rawValue: wrong.out + wrong.err))
        #expect(wrong.out.contains("route     orders  (path_prefix /api/orders, methods any)   upstream v1"), Comment(rawValue: wrong.out))
        #expect(wrong.out.contains("not: orders-v2 (header Accept-Version is \"1\", not \"2\")"), Comment(rawValue: wrong.out))
        let twice = try runGatehouse(
            ["explain", "--config", s.configPath, "GET", "/api/orders/1", "-H", "Accept-Version: 2", "-H", "accept-version: 2"])
        #expect(twice.out.contains("not: orders-v2 (header Accept-Version is sent 2 times, not once)"), Comment(rawValue: twice.out))
        let v2 = try runGatehouse(["explain", "--config", s.configPath, "GET", "/api/orders/1", "-H", "accept-version: 2", "--json"])
        #expect(v2.status == 0, Comment(rawValue: v2.out + v2.err))
        let doc = try #require(try JSONSerialization.jsonObject(with: Data(v2.out.utf8)) as? [String: Any])
        let route = try #require(doc["route"] as? [String: Any])
        #expect(route["name"] as? String == "orders-v2")
        #expect(route["headers"] as? [String] == ["Accept-Version: 2"])
        #expect((route["why"] as? String)?.hasSuffix("headers Accept-Version: 2") == true)
        let misses = doc["near_misses"] as? [[String: Any]] ?? []
        #expect(misses.first?["route"] as? String == "orders")
        #expect(misses.first?["reason"] as? String == "matches too, but a more specific route was chosen")
        // Explain forwards nothing.
        #expect(s.v1.requests.isEmpty && s.v2.requests.isEmpty)
    }

    @Test func validateRefusesRoutesThatCanNeverBeToldApart() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("gh-versions-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let path = dir.appendingPathComponent("gateway.yaml").path
        let shadowed = Self.routes() + """

              - name: orders-v2-copy
                match: {path_prefix: /api/orders, headers: {accept-version: "2"}, methods: [GET]}
                upstream: v1
                auth: none
              - name: orders-v2-again
                match: {path_prefix: /api/orders, headers: {ACCEPT-VERSION: "2"}}
                upstream: v1
                auth: none
            """
        try testConfig(upstreams: ["v1": [9], "v2": [10]], routes: shadowed).write(toFile: path, atomically: true, encoding: .utf8)
        let r = try runGatehouse(["validate", "--config", path])
        #expect(r.status == 1)
        // The GET-only copy ranks first (it lists methods) and is fine; the any-method copy is never chosen.
        let lines = r.err.split(separator: "\n").map(String.init)
        #expect(
            lines == [
                "\(path):33:5: route 'orders-v2-again' can never be chosen: route 'orders-v2' (\(path):21) matches the "
                    + "same host, path_prefix and headers and takes any method first"
            ], Comment(rawValue: r.err))
        try testConfig(upstreams: ["v1": [9], "v2": [10]], routes: Self.routes()).write(toFile: path, atomically: true, encoding: .utf8)
        let ok = try runGatehouse(["validate", "--config", path])
        #expect(ok.status == 0, Comment(rawValue: ok.err))
    }
}
