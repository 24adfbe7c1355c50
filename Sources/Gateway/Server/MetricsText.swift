import NIOCore
import Policy
import Upstream

/// Renders merged metrics in the Prometheus text exposition format.
enum MetricsText {
    /// - Parameter tenants: the per-tenant series as rendered (``TenantSeries``).
    static func render(_ m: MetricsSnapshot, registry: UpstreamRegistry, tenants: [(tenant: String, requests: Int)]) -> String {
        var out = ""
        out += "# HELP gatehouse_requests_total Requests answered, by route, status, decision and problem code.\n"
        out += "# TYPE gatehouse_requests_total counter\n"
        for (k, v) in m.requests.sorted(by: { "\($0.key)" < "\($1.key)" }) {
            out += "gatehouse_requests_total{route=\(label(k.route)),status=\"\(k.status)\",decision=\(label(k.decision)),code=\(label(k.code))} \(v)\n"
        }
        out += "# HELP gatehouse_tenant_requests_total Requests by tenant (known tenants only): the top tenants by requests, the rest summed as tenant=\"other\".\n"
        out += "# TYPE gatehouse_tenant_requests_total counter\n"
        for (tenant, n) in tenants {
            out += "gatehouse_tenant_requests_total{tenant=\(label(tenant))} \(n)\n"
        }
        out += histogram("gatehouse_request_duration_seconds", "Time from request head to response end, by route.", "route", m.durations)
        out += histogram("gatehouse_upstream_duration_seconds", "Time spent on the upstream, by upstream.", "upstream", m.upstreamDurations)
        out += "# HELP gatehouse_ratelimit_denied_total Requests refused by a token bucket or quota, by plan.\n"
        out += "# TYPE gatehouse_ratelimit_denied_total counter\n"
        for (plan, n) in m.ratelimitDenied.sorted(by: { $0.key < $1.key }) {
            out += "gatehouse_ratelimit_denied_total{plan=\(label(plan))} \(n)\n"
        }
        out += single("gatehouse_store_errors_total", "counter", "Rate-limit store calls that failed (timeout, connection, open circuit).", m.storeErrors)
        out += histogram("gatehouse_store_duration_seconds", "Duration of rate-limit store calls.", nil, ["": m.storeDurations])
        out += single("gatehouse_ratelimit_fail_open_total", "counter", "Requests admitted by the local fallback bucket while the store failed.", m.failOpenAdmitted)
        out += single("gatehouse_ratelimit_lease_tokens", "gauge", "Units leased from Redis and not yet spent (this instance's share of the overshoot bound).", m.leaseUnits)
        out += single("gatehouse_live_instances", "gauge", "Gateway instances sharing the store, as last counted in Redis.", m.liveInstances)
        out += single("gatehouse_audit_queue_depth", "gauge", "Audit records queued and not yet written.", m.auditQueueDepth)
        out += single("gatehouse_audit_records_total", "counter", "Audit records written to every sink.", m.auditWritten)
        if let n = m.spansExported {
            out += single("gatehouse_trace_spans_exported_total", "counter", "Spans the OTLP collector accepted.", n)
            out += single("gatehouse_trace_spans_dropped_total", "counter", "Spans dropped: the export queue was full or the collector did not take them.", m.spansDropped ?? 0)
            out += single("gatehouse_trace_spans_queued", "gauge", "Spans waiting for export.", m.spansQueued ?? 0)
        }
        if let n = m.accessLogWritten {
            out += single("gatehouse_access_log_lines_total", "counter", "Access-log lines written.", n)
            out += single("gatehouse_access_log_dropped_total", "counter", "Access-log lines dropped (the writer fell behind or the file refused them).", m.accessLogDropped ?? 0)
        }
        out += single("gatehouse_exchanges_in_flight", "gauge", "Client exchanges started and not yet ended.", m.exchangesInFlight)
        out += single("gatehouse_websockets_open", "gauge", "WebSocket tunnels open (upstream answered 101, neither side closed yet).", m.websocketsOpen)
        out += "# HELP gatehouse_connections_refused_total Client connections closed before a request: a peer outside trusted_proxies, or no valid PROXY header, on a proxy_protocol listener.\n"
        out += "# TYPE gatehouse_connections_refused_total counter\n"
        for reason in [ProxyProtocolHandler.refusedPeer, ProxyProtocolHandler.refusedHeader] {
            out += "gatehouse_connections_refused_total{reason=\"\(reason)\"} \(m.connectionsRefused[reason] ?? 0)\n"
        }
        out += "# HELP gatehouse_upstream_connections Open upstream connections, idle in the pool or busy with an exchange.\n"
        out += "# TYPE gatehouse_upstream_connections gauge\n"
        for name in Set(m.idleConnections.keys).union(m.busyConnections.keys).sorted() {
            out += "gatehouse_upstream_connections{upstream=\(label(name)),state=\"idle\"} \(m.idleConnections[name] ?? 0)\n"
            out += "gatehouse_upstream_connections{upstream=\(label(name)),state=\"busy\"} \(m.busyConnections[name] ?? 0)\n"
        }
        out += "# HELP gatehouse_upstream_healthy 1 when the target passes its health checks.\n"
        out += "# TYPE gatehouse_upstream_healthy gauge\n"
        for (name, entry) in registry.upstreams.sorted(by: { $0.key < $1.key }) {
            for t in entry.targets {
                out += "gatehouse_upstream_healthy{upstream=\(label(name)),target=\(label(t.hostPort.description))} \(t.health.isHealthy ? 1 : 0)\n"
            }
        }
        let upstreams = registry.upstreams.sorted(by: { $0.key < $1.key })
        let now = NIODeadline.now()
        out += "# HELP gatehouse_upstream_circuit_state 1 for the state each target's circuit breaker is in (upstreams with circuit_breaker).\n"
        out += "# TYPE gatehouse_upstream_circuit_state gauge\n"
        for (name, entry) in upstreams {
            for t in entry.targets {
                guard let phase = t.circuit?.phase(now: now) else { continue }
                for state in CircuitBreakerStateMachine.Phase.allCases {
                    out += "gatehouse_upstream_circuit_state{upstream=\(label(name)),target=\(label(t.hostPort.description)),state=\"\(state.rawValue)\"} \(state == phase ? 1 : 0)\n"
                }
            }
        }
        out += "# HELP gatehouse_upstream_circuit_opened_total Times a target's circuit breaker opened (re-openings after a failed probe included).\n"
        out += "# TYPE gatehouse_upstream_circuit_opened_total counter\n"
        for (name, entry) in upstreams {
            for t in entry.targets {
                guard let circuit = t.circuit else { continue }
                out += "gatehouse_upstream_circuit_opened_total{upstream=\(label(name)),target=\(label(t.hostPort.description))} \(circuit.openedCount)\n"
            }
        }
        let limits = registry.inFlightLimits.sorted(by: { $0.key < $1.key })
        out += "# HELP gatehouse_upstream_in_flight Requests in flight to the upstream from this instance (upstreams with max_in_flight).\n"
        out += "# TYPE gatehouse_upstream_in_flight gauge\n"
        for (name, limit) in limits {
            out += "gatehouse_upstream_in_flight{upstream=\(label(name))} \(limit.current)\n"
        }
        out += "# HELP gatehouse_upstream_shed_total Requests answered 503 because the upstream had max_in_flight requests in flight.\n"
        out += "# TYPE gatehouse_upstream_shed_total counter\n"
        for (name, limit) in limits {
            out += "gatehouse_upstream_shed_total{upstream=\(label(name))} \(limit.shedCount)\n"
        }
        return out
    }

    /// The label value that sums every tenant without a series of its own.
    static let otherTenants = "other"


    /// One unlabelled series with its HELP and TYPE lines.
    private static func single(_ name: String, _ type: String, _ help: String, _ value: Int) -> String {
        "# HELP \(name) \(help)\n# TYPE \(name) \(type)\n\(name) \(value)\n"
    }

    /// A histogram per label value; `labelName` nil renders one unlabelled histogram.
    private static func histogram(_ name: String, _ help: String, _ labelName: String?, _ hs: [String: LoopMetrics.Histogram]) -> String {
        var out = "# HELP \(name) \(help)\n# TYPE \(name) histogram\n"
        for (key, h) in hs.sorted(by: { $0.key < $1.key }) {
            let own = labelName.map { "\($0)=\(label(key))," } ?? ""
            let only = labelName.map { "{\($0)=\(label(key))}" } ?? ""
            var cumulative = 0
            for (i, bound) in LoopMetrics.bounds.enumerated() {
                cumulative += h.buckets[i]
                out += "\(name)_bucket{\(own)le=\"\(bound)\"} \(cumulative)\n"
            }
            out += "\(name)_bucket{\(own)le=\"+Inf\"} \(h.count)\n"
            out += "\(name)_sum\(only) \(h.sum)\n"
            out += "\(name)_count\(only) \(h.count)\n"
        }
        return out
    }

    /// A quoted label value as the text format wants it: only backslash, double quote and line feed are escaped
    /// (JSON's `\t` and `\u00XX` escapes are not part of the format and make a scrape fail).
    static func label(_ v: String) -> String {
        var out = "\""
        out.reserveCapacity(v.utf8.count + 2)
        for c in v.unicodeScalars {
            switch c {
            case "\\": out += "\\\\"
            case "\"": out += "\\\""
            case "\n": out += "\\n"
            default: out.unicodeScalars.append(c)
            }
        }
        return out + "\""
    }
}

/// Which tenants have a `gatehouse_tenant_requests_total` series of their own, kept from scrape to scrape so every
/// series is a counter that only grows (Prometheus `rate()` and `increase()` stay right).
///
/// At a scrape, free places (up to `top`) go to the tenants with the most requests, most first (ties by id, byte
/// order); a tenant that has a place keeps it for the life of the process. A tenant's requests already shown
/// inside `other` stay there when it gets a place (its own series starts from what came after), so `other` never
/// goes down; when `top` is lowered by a reload, the members with the smallest series give their places up and
/// their requests join `other`. The series always sum to the requests counted, exactly. A tenant whose id is
/// `other` is always counted in `other` (its own series would be the same series).
struct TenantSeries: Sendable {
    /// Members and the part of their count that was shown in `other` before they got a place.
    private var members: [String: Int] = [:]
    /// Each non-member's count as last shown inside `other`.
    private var shownInOther: [String: Int] = [:]

    mutating func render(_ counts: [String: Int], top: Int) -> [(tenant: String, requests: Int)] {
        let top = max(0, top)
        if members.count > top {
            let smallest = members.sorted { a, b in
                let x = (counts[a.key] ?? 0) - a.value
                let y = (counts[b.key] ?? 0) - b.value
                return x != y ? x < y : b.key.utf8.lexicographicallyPrecedes(a.key.utf8)
            }
            for (tenant, _) in smallest.prefix(members.count - top) { members.removeValue(forKey: tenant) }
        }
        if members.count < top {
            let candidates = counts.filter { $0.key != MetricsText.otherTenants && members[$0.key] == nil }.sorted { a, b in
                a.value != b.value ? a.value > b.value : a.key.utf8.lexicographicallyPrecedes(b.key.utf8)
            }
            for (tenant, _) in candidates.prefix(top - members.count) {
                members[tenant] = shownInOther.removeValue(forKey: tenant) ?? 0
            }
        }
        var series: [(tenant: String, requests: Int)] = []
        var other = 0
        var folded = false
        for (tenant, n) in counts {
            if let base = members[tenant] {
                series.append((tenant, n - base))
                other += base
                if base > 0 { folded = true }
            } else {
                other += n
                folded = true
                shownInOther[tenant] = n
            }
        }
        series.sort { a, b in a.requests != b.requests ? a.requests > b.requests : a.tenant.utf8.lexicographicallyPrecedes(b.tenant.utf8) }
        if folded { series.append((MetricsText.otherTenants, other)) }
        return series
    }
}
