import Policy
import Upstream

/// Renders merged metrics in the Prometheus text exposition format.
enum MetricsText {
    static func render(_ m: MetricsSnapshot, registry: UpstreamRegistry) -> String {
        var out = ""
        out += "# HELP gatehouse_requests_total Requests answered, by route, status, decision and problem code.\n"
        out += "# TYPE gatehouse_requests_total counter\n"
        for (k, v) in m.requests.sorted(by: { "\($0.key)" < "\($1.key)" }) {
            out += "gatehouse_requests_total{route=\(label(k.route)),status=\"\(k.status)\",decision=\(label(k.decision)),code=\(label(k.code))} \(v)\n"
        }
        out += histogram("gatehouse_request_duration_seconds", "Time from request head to response end, by route.", "route", m.durations)
        out += histogram("gatehouse_upstream_duration_seconds", "Time spent on the upstream, by upstream.", "upstream", m.upstreamDurations)
        out += "# HELP gatehouse_upstream_healthy 1 when the target passes its health checks.\n"
        out += "# TYPE gatehouse_upstream_healthy gauge\n"
        for (name, entry) in registry.upstreams.sorted(by: { $0.key < $1.key }) {
            for t in entry.targets {
                out += "gatehouse_upstream_healthy{upstream=\(label(name)),target=\(label(t.hostPort.description))} \(t.health.isHealthy ? 1 : 0)\n"
            }
        }
        return out
    }

    private static func histogram(_ name: String, _ help: String, _ labelName: String, _ hs: [String: LoopMetrics.Histogram]) -> String {
        var out = "# HELP \(name) \(help)\n# TYPE \(name) histogram\n"
        for (key, h) in hs.sorted(by: { $0.key < $1.key }) {
            var cumulative = 0
            for (i, bound) in LoopMetrics.bounds.enumerated() {
                cumulative += h.buckets[i]
                out += "\(name)_bucket{\(labelName)=\(label(key)),le=\"\(bound)\"} \(cumulative)\n"
            }
            out += "\(name)_bucket{\(labelName)=\(label(key)),le=\"+Inf\"} \(h.count)\n"
            out += "\(name)_sum{\(labelName)=\(label(key))} \(h.sum)\n"
            out += "\(name)_count{\(labelName)=\(label(key))} \(h.count)\n"
        }
        return out
    }

    private static func label(_ v: String) -> String {
        JSONText.quote(v)
    }
}
