import Testing

@testable import Policy

/// The WebSocket keys: route `websocket` and `websocket_idle_timeout`, plan `max_websockets`, the tenant override,
/// and the tunnel's audit record members.
@Suite struct WebSocketConfigTests {
    static func config(route: String, plan: String = "{max_websockets: 3}", tenant: String = "{plan: pro}") -> String {
        """
        plans:
          pro: \(plan)
        tenants:
          acme: \(tenant)
        upstreams:
          users: {targets: [127.0.0.1:9001]}
        routes:
          - {name: live, match: {path_prefix: /live}, upstream: users\(route)}
        """
    }

    @Test func keysAreReadWithTheirDefaults() throws {
        let on = try load(["gw.yaml": Self.config(route: ", websocket: true, websocket_idle_timeout: 90s")]).get()
        #expect(on.routes[0].websocket)
        #expect(on.routes[0].websocketIdleTimeout == 90_000_000_000)
        #expect(on.plans["pro"]?.maxWebsockets == 3)
        let off = try load(["gw.yaml": Self.config(route: "", plan: "{}", tenant: "{plan: pro, overrides: {max_websockets: 0}}")]).get()
        #expect(!off.routes[0].websocket)
        #expect(off.routes[0].websocketIdleTimeout == 300_000_000_000)
        #expect(off.plans["pro"]?.maxWebsockets == nil)
        #expect(off.tenants["acme"]?.maxWebsocketsOverride == 0)
    }

    @Test func mistakesAreReportedWhereTheyAre() {
        #expect(problems(["gw.yaml": Self.config(route: ", websocket_idle_timeout: 1m")]) == [
            "gw.yaml:8:88: route 'live': websocket_idle_timeout needs websocket: true"
        ])
        #expect(problems(["gw.yaml": Self.config(route: ", websocket: yes please")]).count == 1)
        #expect(problems(["gw.yaml": Self.config(route: "", plan: "{max_websockets: -1}")]).count == 1)
        #expect(problems(["gw.yaml": Self.config(route: "", tenant: "{plan: pro, overrides: {max_websockets: many}}")]).count == 1)
    }

    @Test func aTunnelRecordCarriesItsTrafficInTheHashedText() {
        var r = AuditRecord(
            timeMillis: 0, requestID: "r1", tenant: "acme", user: nil, method: "GET", path: "/live", route: "live",
            status: 101, decision: "allow", code: nil, latencyMicros: 1500, clientIP: "127.0.0.1", upstream: "users")
        r.tunnel = AuditRecord.Tunnel(bytesIn: 10, bytesOut: 6, durationMillis: 300)
        let text = r.canonical(seq: 1, prevHash: String(repeating: "0", count: 64))
        #expect(text.contains(#""upstream":"users","trace_id":null,"bytes_in":10,"bytes_out":6,"duration_ms":300,"prev_hash""#))
    }
}
