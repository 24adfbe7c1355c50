import Foundation
import Testing

/// Live: the CLI, the admin listener, reload and graceful stop.
@Suite(.serialized) struct LifecycleTests {
    static let routes = catchAllRoute

    func run(_ args: [String]) throws -> (status: Int32, out: String, err: String) { try runGatehouse(args) }

    @Test func validateCommand() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("gh-validate-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let good = dir.appendingPathComponent("good.yaml").path
        try testConfig(upstreams: ["app": [9]], routes: Self.routes).write(toFile: good, atomically: true, encoding: .utf8)
        let ok = try run(["validate", "--config", good])
        #expect(ok.status == 0)
        #expect(ok.out == "ok\n")
        let bad = dir.appendingPathComponent("bad.yaml").path
        try "server:\n  listen: nowhere\n  bogus: 1\nroutes: []\n".write(toFile: bad, atomically: true, encoding: .utf8)
        let r = try run(["validate", "--config", bad])
        #expect(r.status == 1)
        #expect(r.out.isEmpty)
        let lines = r.err.split(separator: "\n").map(String.init)
        #expect(lines.count == 2)
        #expect(lines[0].hasPrefix("\(bad):2:11: server.listen: invalid address 'nowhere'"))
        #expect(lines[1] == "\(bad):3:3: unknown key 'bogus' in server")
        // The shipped example policy validates.
        let root = URL(fileURLWithPath: GatewayProcess.binary).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent()
        let example = try run(["validate", "--config", root.appendingPathComponent("config/gateway.yaml").path])
        #expect(example.status == 0, "\(example.err)")
    }

    @Test func sigtermDrainsInFlightRequestsThenExitsZero() throws {
        let up = try TestUpstream()
        defer { up.stop() }
        let gw = try GatewayProcess(
            yaml: testConfig(upstreams: ["app": [up.port]], routes: Self.routes, server: "  drain_timeout: 5s"))
        let idle = try RawConnection(port: gw.port)
        try idle.send("GET /first HTTP/1.1\r\nHost: gw\r\n\r\n")
        #expect(try idle.readResponse()?.status == 200)
        let busy = try RawConnection(port: gw.port)
        try busy.send("GET /slow/400 HTTP/1.1\r\nHost: gw\r\n\r\n")
        try waitUntil { up.requests.contains { $0.uri == "/slow/400" } }
        kill(gw.pid, SIGTERM)
        let r = try #require(try busy.readResponse())
        #expect(r.status == 200)
        #expect(r.header("Connection") == "close")
        #expect(idle.waitForClose())
        #expect(gw.stop() == 0)
        #expect(gw.log.contains { $0.contains("gatehouse stopped") })
        #expect(throws: (any Error).self) { _ = try RawConnection(port: gw.port, timeout: 1) }
    }

    @Test func adminEndpointsAndReload() throws {
        let up = try TestUpstream()
        defer { up.stop() }
        let yaml = testConfig(upstreams: ["app": [up.port]], routes: Self.routes)
        let gw = try GatewayProcess(yaml: yaml, environment: ["GH_TEST_ADMIN_TOKEN": "s3cret"])
        defer { gw.stop() }
        let admin = try #require(gw.adminPort)
        let health = try request(port: admin, "GET", "/healthz")
        #expect(health.status == 200)
        #expect(health.header("X-Request-ID") != nil)
        #expect(try request(port: admin, "GET", "/readyz").status == 200)
        _ = try request(port: gw.port, "GET", "/counted")
        let metrics = try request(port: admin, "GET", "/metrics").text
        #expect(metrics.contains("gatehouse_requests_total{route=\"all\",status=\"200\",decision=\"allow\",code=\"\"}"))
        #expect(metrics.contains("gatehouse_request_duration_seconds_bucket{route=\"all\""))
        let denied = try request(port: admin, "POST", "/admin/reload")
        #expect(denied.status == 401)
        #expect(try request(port: admin, "POST", "/admin/reload", headers: [("Authorization", "Bearer wrong")]).status == 401)

        // A reload to a config without the route: new requests see it.
        let configPath = gw.directory.appendingPathComponent("gateway.yaml").path
        try yaml.replacingOccurrences(of: "path_prefix: /", with: "path_prefix: /only")
            .write(toFile: configPath, atomically: true, encoding: .utf8)
        let reloaded = try request(port: admin, "POST", "/admin/reload", headers: [("Authorization", "Bearer s3cret")])
        #expect(reloaded.status == 200)
        #expect(try request(port: gw.port, "GET", "/counted").status == 404)
        #expect(try request(port: gw.port, "GET", "/only/x").status == 200)

        // A broken config is rejected and the old one keeps serving, through SIGHUP as through the API.
        try "routes: [oops".write(toFile: configPath, atomically: true, encoding: .utf8)
        let rejected = try request(port: admin, "POST", "/admin/reload", headers: [("Authorization", "Bearer s3cret")])
        #expect(rejected.status == 422)
        kill(gw.pid, SIGHUP)
        try waitUntil { gw.log.filter { $0.contains("config reload rejected") }.count >= 2 }
        #expect(try request(port: gw.port, "GET", "/only/y").status == 200)
    }
}
