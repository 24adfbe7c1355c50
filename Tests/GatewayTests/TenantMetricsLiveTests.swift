import Foundation
import Testing

/// Live: `gatehouse_tenant_requests_total` gives the busiest tenants a series each and sums the rest as `other`.
@Suite(.serialized) struct TenantMetricsLiveTests {
    @Test func topTenantsAndOther() throws {
        let up = try TestUpstream()
        defer { up.stop() }
        let yaml = """
            server: {listen: 127.0.0.1:0, admin_listen: 127.0.0.1:0, threads: 2}
            identity: {header_tenancy: always}
            plans: {basic: {}}
            tenants: {alpha: {plan: basic}, bravo: {plan: basic}, charlie: {plan: basic}, delta: {plan: basic}}
            upstreams:
              app: {targets: [127.0.0.1:\(up.port)]}
            routes:
              - {name: api, match: {path_prefix: /api}, upstream: app, auth: optional}
            metrics: {tenant_series: 2}
            """
        let gw = try GatewayProcess(yaml: yaml)
        defer { gw.stop() }
        for (tenant, count) in [("alpha", 5), ("bravo", 3), ("charlie", 2), ("delta", 1)] {
            for _ in 0..<count {
                #expect(try request(port: gw.port, "GET", "/api/x", headers: [("X-Tenant-ID", tenant)]).status == 200)
            }
        }
        // Unknown tenants and requests without one are no tenant's.
        for tenant in ["nobody", "x-\(UUID().uuidString)"] {
            #expect(try request(port: gw.port, "GET", "/api/x", headers: [("X-Tenant-ID", tenant)]).status == 403)
        }
        #expect(try request(port: gw.port, "GET", "/api/x").status == 200)
        try gw.waitUntilQuiet()
        let m = try gw.metrics()
        let series = m.text.split(separator: "\n").filter { $0.hasPrefix("gatehouse_tenant_requests_total") }
        #expect(
            series == [
                #"gatehouse_tenant_requests_total{tenant="alpha"} 5"#, #"gatehouse_tenant_requests_total{tenant="bravo"} 3"#,
                #"gatehouse_tenant_requests_total{tenant="other"} 3"#,
            ], Comment(rawValue: series.joined(separator: "\n")))
        #expect(m.value("gatehouse_tenant_requests_total") == 11)
        #expect(m.value("gatehouse_tenant_requests_total", ["tenant": "other"]) == 3)
        #expect(m.text.contains("# TYPE gatehouse_tenant_requests_total counter\n"))
        for line in m.text.split(separator: "\n") {
            #expect(PrometheusText.isValid(line), Comment(rawValue: String(line)))
        }
    }
}

/// One line of the Prometheus text format (0.0.4): a `# HELP` or `# TYPE` comment, or a sample with an optional
/// label set whose values use only the `\\`, `\"` and `\n` escapes.
enum PrometheusText {
    static let name = #"[a-zA-Z_:][a-zA-Z0-9_:]*"#
    static let labelValue = #""(?:[^"\\\n]|\\[\\"n])*""#
    static let label = #"[a-zA-Z_][a-zA-Z0-9_]*="# + labelValue
    static let sample = try! NSRegularExpression(
        pattern: "^" + name + #"(\{"# + label + "(," + label + #")*\})? (-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?|[-+]Inf|NaN)$"#)
    static let comment = try! NSRegularExpression(
        pattern: "^# (HELP " + name + " .*|TYPE " + name + " (counter|gauge|histogram|summary|untyped))$")

    static func isValid(_ line: Substring) -> Bool {
        let text = String(line)
        let range = NSRange(text.startIndex..., in: text)
        return sample.firstMatch(in: text, range: range) != nil || comment.firstMatch(in: text, range: range) != nil
    }
}
