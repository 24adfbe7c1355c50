/// One event loop's request counters and latency histograms; merged across loops when scraped.
///
/// Kept per loop so the request path never takes a lock or touches a shared cache line.
final class LoopMetrics {
    struct RequestKey: Hashable {
        var route: String
        var status: Int
        var decision: String
        var code: String
    }

    static let bounds: [Double] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10]

    struct Histogram {
        var buckets = [Int](repeating: 0, count: LoopMetrics.bounds.count)
        var count = 0
        var sum = 0.0

        mutating func observe(_ seconds: Double) {
            count += 1
            sum += seconds
            for (i, b) in LoopMetrics.bounds.enumerated() where seconds <= b {
                buckets[i] += 1
                break
            }
        }

        mutating func merge(_ other: Histogram) {
            count += other.count
            sum += other.sum
            for i in buckets.indices { buckets[i] += other.buckets[i] }
        }
    }

    var requests: [RequestKey: Int] = [:]
    var durations: [String: Histogram] = [:]
    var upstreamDurations: [String: Histogram] = [:]
    /// Rate-limit and quota denials by plan.
    var ratelimitDenied: [String: Int] = [:]
    /// Rate-limit store calls: failures and durations.
    var storeErrors = 0
    var storeDurations = Histogram()
    /// Requests admitted by the local fallback bucket while the store failed (`on_failure: open`).
    var failOpenAdmitted = 0
    /// Exchanges started and not yet ended (`gatehouse_exchanges_in_flight`).
    var exchangesInFlight = 0
    /// Connections closed before any request, by reason (`gatehouse_connections_refused_total`).
    var connectionsRefused: [String: Int] = [:]
    /// WebSocket tunnels open (`gatehouse_websockets_open`).
    var websocketsOpen = 0
    /// Requests by known tenant (`gatehouse_tenant_requests_total`, folded to the top tenants when scraped). Only
    /// tenants with a record are counted, so the keys are bounded by the tenants that exist, never by what
    /// clients send.
    var tenantRequests: [String: Int] = [:]

    func record(route: String, status: Int, decision: String, code: String, seconds: Double) {
        requests[RequestKey(route: route, status: status, decision: decision, code: code), default: 0] += 1
        durations[route, default: Histogram()].observe(seconds)
    }

    func recordUpstream(_ upstream: String, seconds: Double) {
        upstreamDurations[upstream, default: Histogram()].observe(seconds)
    }

    /// A copy of the current values (taken on the loop, merged elsewhere).
    func snapshot(leaseUnits: Int, connections: [String: (idle: Int, busy: Int)]) -> MetricsSnapshot {
        var s = MetricsSnapshot(
            requests: requests, durations: durations, upstreamDurations: upstreamDurations,
            ratelimitDenied: ratelimitDenied, storeErrors: storeErrors, storeDurations: storeDurations,
            failOpenAdmitted: failOpenAdmitted, leaseUnits: leaseUnits)
        s.exchangesInFlight = exchangesInFlight
        s.websocketsOpen = websocketsOpen
        s.connectionsRefused = connectionsRefused
        s.tenantRequests = tenantRequests
        for (key, c) in connections {
            s.idleConnections[key] = c.idle
            s.busyConnections[key] = c.busy
        }
        return s
    }
}


/// Plain values of one or more loops' metrics.
struct MetricsSnapshot: Sendable {
    var requests: [LoopMetrics.RequestKey: Int] = [:]
    var durations: [String: LoopMetrics.Histogram] = [:]
    var upstreamDurations: [String: LoopMetrics.Histogram] = [:]
    var ratelimitDenied: [String: Int] = [:]
    var storeErrors = 0
    var storeDurations = LoopMetrics.Histogram()
    var failOpenAdmitted = 0
    var leaseUnits = 0
    /// Gateway instances seen in Redis in the last 6 s (1 without Redis).
    var liveInstances = 1
    var auditQueueDepth = 0
    var auditWritten = 0
    /// Tracing and access-log writers (nil: not configured).
    var spansExported: Int? = nil
    var spansDropped: Int? = nil
    var spansQueued: Int? = nil
    var accessLogWritten: Int? = nil
    var accessLogDropped: Int? = nil
    var exchangesInFlight = 0
    var websocketsOpen = 0
    var connectionsRefused: [String: Int] = [:]
    var tenantRequests: [String: Int] = [:]
    /// Upstream connections by upstream name.
    var idleConnections: [String: Int] = [:]
    var busyConnections: [String: Int] = [:]

    mutating func merge(_ other: MetricsSnapshot) {
        requests.merge(other.requests, uniquingKeysWith: +)
        ratelimitDenied.merge(other.ratelimitDenied, uniquingKeysWith: +)
        storeErrors += other.storeErrors
        storeDurations.merge(other.storeDurations)
        failOpenAdmitted += other.failOpenAdmitted
        leaseUnits += other.leaseUnits
        exchangesInFlight += other.exchangesInFlight
        websocketsOpen += other.websocketsOpen
        connectionsRefused.merge(other.connectionsRefused, uniquingKeysWith: +)
        tenantRequests.merge(other.tenantRequests, uniquingKeysWith: +)
        idleConnections.merge(other.idleConnections, uniquingKeysWith: +)
        busyConnections.merge(other.busyConnections, uniquingKeysWith: +)
        for (k, v) in other.durations { durations[k, default: .init()].merge(v) }
        for (k, v) in other.upstreamDurations { upstreamDurations[k, default: .init()].merge(v) }
    }
}

extension LoopMetrics.RequestKey: Sendable {}
extension LoopMetrics.Histogram: Sendable {}

@available(*, unavailable)
extension LoopMetrics: Sendable {}
