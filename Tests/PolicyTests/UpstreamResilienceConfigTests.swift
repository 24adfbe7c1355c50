import Testing

@testable import Policy

/// `circuit_breaker` and `max_in_flight` on an upstream: defaults, values and refusals.
@Suite struct UpstreamResilienceConfigTests {
    static func config(_ upstreamExtra: String) -> [String: String] {
        [
            "gw.yaml": """
            upstreams:
              users:
                targets: [127.0.0.1:9001]
            \(upstreamExtra)
            routes:
              - name: users
                match: {path_prefix: /api/users}
                upstream: users
            """
        ]
    }

    @Test func absentMeansNoBreakerAndNoBound() throws {
        let c = try load(Self.config("")).get()
        #expect(c.upstreams["users"]?.circuitBreaker == nil)
        #expect(c.upstreams["users"]?.maxInFlight == nil)
    }

    @Test func anEmptySectionTakesTheDefaults() throws {
        let c = try load(Self.config("    circuit_breaker: {}")).get()
        let cb = try #require(c.upstreams["users"]?.circuitBreaker)
        #expect(cb.consecutiveFailures == 5)
        #expect(cb.openFor == 10_000_000_000)
        #expect(cb.on5xx == false)
    }

    @Test func valuesAreRead() throws {
        let c = try load(
            Self.config(
                """
                    circuit_breaker: {consecutive_failures: 3, open_for: 250ms, on_5xx: true}
                    max_in_flight: 1000
                """)
        ).get()
        let u = try #require(c.upstreams["users"])
        #expect(u.circuitBreaker?.consecutiveFailures == 3)
        #expect(u.circuitBreaker?.openFor == 250_000_000)
        #expect(u.circuitBreaker?.on5xx == true)
        #expect(u.maxInFlight == 1000)
    }

    @Test(arguments: [
        ("    circuit_breaker: {consecutive_failures: 0}", "consecutive_failures"),
        ("    circuit_breaker: {open_for: 0s}", "open_for"),
        ("    circuit_breaker: {open_for: 2h}", "open_for"),
        ("    circuit_breaker: {on_5xx: maybe}", "on_5xx"),
        ("    circuit_breaker: {failures: 3}", "failures"),
        ("    circuit_breaker: true", "circuit_breaker"),
        ("    max_in_flight: 0", "max_in_flight"),
        ("    max_in_flight: -5", "max_in_flight"),
        ("    max_in_flight: lots", "max_in_flight"),
    ])
    func refusals(yaml: String, naming: String) {
        let found = problems(Self.config(yaml))
        #expect(!found.isEmpty, Comment(rawValue: "accepted: \(yaml)"))
        #expect(found.contains { $0.contains(naming) }, Comment(rawValue: "\(found)"))
    }
}
