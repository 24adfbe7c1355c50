import Foundation

/// One read of the admin listener's `GET /metrics` (Prometheus text).
struct MetricsSample {
    let text: String

    /// The sum of the samples named `name` whose label set includes every `label="value"` given (other labels,
    /// such as a target, may be present too); nil when no sample matches.
    func value(_ name: String, _ labels: [String: String] = [:]) -> Double? {
        var sum: Double?
        for line in text.split(separator: "\n") where line.hasPrefix(name) && !line.hasPrefix("#") {
            let rest = line.dropFirst(name.count)
            var labelText: Substring = ""
            var valueText: Substring
            if rest.first == "{" {
                guard let close = rest.lastIndex(of: "}") else { continue }
                labelText = rest[rest.startIndex..<close]
                valueText = rest[rest.index(after: close)...]
            } else if rest.first == " " {
                valueText = rest
            } else {
                continue  // a longer name with this prefix
            }
            guard labels.allSatisfy({ labelText.contains("\($0.key)=\"\($0.value)\"") }) else { continue }
            guard let field = valueText.split(separator: " ").first, let v = Double(field) else { continue }
            sum = (sum ?? 0) + v
        }
        return sum
    }

    /// `gatehouse_exchanges_in_flight`.
    var exchangesInFlight: Double? { value("gatehouse_exchanges_in_flight") }

    /// `gatehouse_upstream_connections{upstream=…,state="busy"}`, summed over targets.
    func busyConnections(_ upstream: String) -> Double? {
        value("gatehouse_upstream_connections", ["upstream": upstream, "state": "busy"])
    }
}

extension GatewayProcess {
    /// Reads `GET /metrics` from the admin listener.
    func metrics() throws -> MetricsSample {
        guard let admin = adminPort else { throw RawClientError(description: "the gateway has no admin listener") }
        let r = try request(port: admin, "GET", "/metrics")
        guard r.status == 200 else { throw RawClientError(description: "GET /metrics answered \(r.status)") }
        return MetricsSample(text: r.text)
    }

    /// Waits (polling, bounded by `seconds`) until no exchange is in flight and no connection to `upstream` is
    /// busy: every exchange that began has ended and given its connection back. Throws, naming the last values
    /// seen, when that does not happen in time or when the gauges are missing from `/metrics`.
    func waitUntilQuiet(upstream: String = "app", seconds: Double = 5) throws {
        let deadline = Date().addingTimeInterval(seconds)
        while true {
            let m = try metrics()
            guard let inFlight = m.exchangesInFlight, let busy = m.busyConnections(upstream) else {
                throw RawClientError(
                    description: "metrics lack gatehouse_exchanges_in_flight or "
                        + "gatehouse_upstream_connections{upstream=\"\(upstream)\",state=\"busy\"}")
            }
            if inFlight == 0 && busy == 0 { return }
            if Date() > deadline {
                throw RawClientError(
                    description: "not quiet within \(seconds)s: exchanges in flight \(inFlight), busy connections \(busy)")
            }
            usleep(20_000)
        }
    }

    /// Waits (polling, bounded) until `gatehouse_exchanges_in_flight` satisfies `condition`.
    func waitForExchangesInFlight(seconds: Double = 5, _ condition: (Double) -> Bool) throws {
        let deadline = Date().addingTimeInterval(seconds)
        var last: Double?
        while true {
            last = try metrics().exchangesInFlight
            guard let value = last else {
                throw RawClientError(description: "metrics lack gatehouse_exchanges_in_flight")
            }
            if condition(value) { return }
            if Date() > deadline {
                throw RawClientError(description: "gatehouse_exchanges_in_flight stayed \(value) for \(seconds)s")
            }
            usleep(10_000)
        }
    }
}

