import Logging
import NIOCore
import Policy
import Upstream

/// The state one event loop owns: the current snapshot, its upstream pools, its open client connections,
/// its metrics and request-id sequence. Touched only on its loop; reached from elsewhere through
/// `eventLoop.execute`.
final class LoopState {
    let eventLoop: EventLoop
    let loopCount: Int
    let logger: Logger
    /// Wall-clock time for policy (token expiry, buckets, periods, audit timestamps).
    let clock: WallClock
    private(set) var snapshot: RuntimeSnapshot
    /// Client connection limits and timeouts, from the snapshot's `server` section.
    private(set) var connectionConfiguration: ClientConnectionStateMachine.Configuration
    private(set) var groups: [String: UpstreamGroup]
    /// Groups replaced by a reload: closed to new work, still swept (response timeouts, idle closes) and counted
    /// until their last connection is gone.
    private var retired: [UpstreamGroup] = []
    private var connections: [ObjectIdentifier: ProxyHandler] = [:]
    let metrics = LoopMetrics()
    /// Verified tokens, so repeated tokens skip signature checks (per loop: no lock).
    let tokenCache = TokenCache()
    /// Early key-set refetches for tokens with an unknown `kid` (shared by every loop).
    let keyRefetch: KeyRefetch
    /// The audit log (shared by every loop), when configured.
    let audit: AuditLog?
    /// Serves `billing.webhook_path` on the proxy listener.
    let billingWebhook: BillingWebhookHandler?
    /// Buckets and quotas (leases are per loop).
    private(set) var limiter: RateLimiter!
    /// Open WebSocket tunnels per tenant (`max_websockets`).
    let tunnels: TunnelSlots
    /// The access log and span exporter (shared by every loop), and this loop's place among the loops (its
    /// access-log buffer).
    let telemetry: Telemetry
    let shard: Int
    /// Trace contexts and sampling, and a fast random source for access-log sampling (per loop: no lock).
    var tracer: TraceSampler
    var random: FastRandom
    private var lastLimiterSweep = NIODeadline.now()
    private let idPrefix: String
    private var counter: UInt64 = 0
    private var sweepTask: RepeatedTask?
    private(set) var draining = false

    init(
        eventLoop: EventLoop, loopCount: Int, snapshot: RuntimeSnapshot, logger: Logger,
        limiterBackend: RateLimiter.Backend, limits: LimitSettings, audit: AuditLog?,
        billingWebhook: BillingWebhookHandler? = nil, clock: WallClock, keyRefetch: KeyRefetch = KeyRefetch(),
        tunnels: TunnelSlots.Backend = .memory(TunnelCounts()), instanceID: String = "local",
        telemetry: Telemetry = Telemetry(), shard: Int = 0
    ) {
        self.telemetry = telemetry
        self.shard = shard
        var seeder = SystemRandomNumberGenerator()
        self.tracer = TraceSampler(ratio: telemetry.spans?.config.sampleRatio ?? 0, seed: seeder.next())
        self.random = FastRandom(seed: seeder.next())
        self.keyRefetch = keyRefetch
        self.eventLoop = eventLoop
        self.clock = clock
        self.connectionConfiguration = Self.connectionConfiguration(snapshot.config.server)
        self.audit = audit
        self.billingWebhook = billingWebhook
        self.loopCount = loopCount
        self.logger = logger
        self.snapshot = snapshot
        self.groups = snapshot.upstreams.makeGroups(on: eventLoop, loopCount: loopCount)
        let alphabet = Array("abcdefghijklmnopqrstuvwxyz0123456789".utf8)
        var rng = SystemRandomNumberGenerator()
        self.idPrefix = String(decoding: (0..<12).map { _ in alphabet.randomElement(using: &rng)! }, as: UTF8.self)
        self.tunnels = TunnelSlots(backend: tunnels, memberPrefix: instanceID + "-" + idPrefix, logger: logger)
        self.limiter = RateLimiter(backend: limiterBackend, settings: limits, metrics: metrics, logger: logger, clock: clock)
    }

    /// A request id unique to this process run (random per-loop prefix, then a counter).
    func nextRequestID() -> String {
        counter &+= 1
        return idPrefix + "-" + String(counter, radix: 36)
    }

    func register(_ handler: ProxyHandler) {
        connections[ObjectIdentifier(handler)] = handler
        if draining { handler.beginDrain() }
    }

    func unregister(_ handler: ProxyHandler) {
        connections.removeValue(forKey: ObjectIdentifier(handler))
    }

    var openConnections: Int { connections.count }

    /// Installs a new snapshot: new requests use it; exchanges in flight finish on the old pools, which are
    /// retired (swept and counted until empty).
    func install(_ newSnapshot: RuntimeSnapshot) {
        let old = groups
        snapshot = newSnapshot
        connectionConfiguration = Self.connectionConfiguration(newSnapshot.config.server)
        tokenCache.clear()
        groups = newSnapshot.upstreams.makeGroups(on: eventLoop, loopCount: loopCount)
        for g in old.values {
            g.close()
            retired.append(g)
        }
    }

    static func connectionConfiguration(_ s: ServerConfig) -> ClientConnectionStateMachine.Configuration {
        ClientConnectionStateMachine.Configuration(
            idleTimeout: .nanoseconds(s.idleTimeout), headerTimeout: .nanoseconds(s.headDeadline),
            requestTimeout: .nanoseconds(s.requestTimeout), sendTimeout: .nanoseconds(s.sendTimeout),
            maxPipelinedRequests: s.maxPipelinedRequests, maxReadAheadBytes: s.maxReadAheadBytes,
            chunkedHoldBytes: 64 * 1024, linger: .seconds(2))
    }

    /// Upstream connections by upstream: (idle, busy).
    func connectionCounts() -> [String: (idle: Int, busy: Int)] {
        var counts: [String: (idle: Int, busy: Int)] = [:]
        for group in Array(groups.values) + retired {
            for pool in group.pools {
                let c = counts[group.name] ?? (0, 0)
                counts[group.name] = (c.idle + pool.idleCount, c.busy + pool.busyCount)
            }
        }
        return counts
    }

    /// Starts the periodic check of every connection's deadlines (idle, header, request, upstream response).
    func startSweeper() {
        let s = snapshot.config.server
        let shortest = min(s.idleTimeout, s.headerTimeout, s.requestTimeout, s.sendTimeout)
        let tick = max(20_000_000, min(500_000_000, shortest / 5))
        let bound = NIOLoopBound(self, eventLoop: eventLoop)
        sweepTask = eventLoop.scheduleRepeatedTask(
            initialDelay: .nanoseconds(tick), delay: .nanoseconds(tick)
        ) { _ in
            bound.value.sweep(now: .now())
        }
    }

    func sweep(now: NIODeadline) {
        for handler in Array(connections.values) { handler.checkTimeouts(now: now) }
        for group in groups.values { group.sweep(now: now) }
        for group in retired { group.sweep(now: now) }
        retired.removeAll { $0.isDrained }
        tunnels.sweep(now: now)
        if now - lastLimiterSweep >= .seconds(1) {
            lastLimiterSweep = now
            limiter.sweep(now: clock.now())
        }
    }

    /// Stops taking new requests: idle connections close, busy ones close after their response.
    func beginDrain() {
        draining = true
        for handler in Array(connections.values) { handler.beginDrain() }
    }

    /// Closes everything still open (drain timeout reached) and the pools.
    func forceClose() {
        for handler in Array(connections.values) { handler.forceClose() }
        for g in groups.values { g.close() }
        sweepTask?.cancel()
        retired.removeAll()
    }
}

@available(*, unavailable)
extension LoopState: Sendable {}
