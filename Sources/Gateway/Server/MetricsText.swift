import Policy
import Upstream

/// Renders merged metrics in the Prometheus text exposition format.
enum MetricsText {
    /// - Parameter tenantSeries: `metrics.tenant_series`, the tenants that get a series of their own.
    static func render(_ m: MetricsSnapshot, registry: UpstreamRegistry, tenantSeries: Int) -> String {
        var out = ""
        out += "# HELP gatehouse_requests_total Requests answered, by route, status, decision and problem code.\n"
        out += "# TYPE gatehouse_requests_total counter\n"
        for (k, v) in m.requests.sorted(by: { "\($0.key)" < "\($1.key)" }) {
            out += "gatehouse_requests_total{route=\(label(k.route)),status=\"\(k.status)\",decision=\(label(k.decision)),code=\(label(k.code))} \(v)\n"
        }
        out += "# HELP gatehouse_tenant_requests_total Requests by tenant (known tenants only): the top tenants by requests, the rest summed as tenant=\"other\".\n"
        out += "# TYPE gatehouse_tenant_requests_total counter\n"
        for (tenant, n) in Self.tenantSeries(m.tenantRequests, top: tenantSeries) {
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
        return out
    }

    /// The label value that sums every tenant without a series of its own.
    static let otherTenants = "other"

    /// Folds per-tenant counts into at most `top` series and `other`: tenants by count, most first (ties by id,
    /// byte order); the first `top` keep their own, the rest are summed into `other`, which appears whenever
    /// something is folded into it. A tenant whose id is `other` is always counted there (its own series would
    /// be the same series). The counts' sum is kept exactly.
    static func tenantSeries(_ counts: [String: Int], top: Int) -> [(tenant: String, requests: Int)] {
        var other = counts[otherTenants]
        let ranked = counts.filter { $0.key != otherTenants }.sorted { a, b in
            a.value != b.value ? a.value > b.value : a.key.utf8.lexicographicallyPrecedes(b.key.utf8)
        }
        var series = ranked.prefix(max(0, top)).map { (tenant: $0.key, requests: $0.value) }
        for (_, n) in ranked.dropFirst(max(0, top)) { other = (other ?? 0) + n }
        if let other { series.append((otherTenants, other)) }
        return series
    }

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
