import Foundation
import Logging
import NIOCore
import NIOExtras
import Redis
import NIOHTTP1
import NIOPosix
import NIOSSL
import Policy
import ServiceLifecycle
import Synchronization
import Upstream

/// The running gateway: event loops, the proxy and admin listeners, health checks, reload and drain.
public final class GatewayServer: Sendable {
    private struct Listeners: Sendable {
        var proxy: Channel?
        var admin: Channel?
        var healthChecker: HealthChecker?
        var healthChecksStopped = false
        var jwks: JWKSRefresher?
        var keySetsStopped = false
    }

    public let configPath: String
    public let group: MultiThreadedEventLoopGroup
    let logger: Logger
    private let loops: [ObjectIdentifier: NIOLoopBound<LoopState>]
    private let listeners = Mutex(Listeners())
    private let current: Mutex<RuntimeSnapshot>
    private let proxyConnections = ConnectionCount()
    private let adminConnections = ConnectionCount()
    private let ready = Atomic<Bool>(false)
    private let adminToken: String?
    /// Tenant records: seeds plus admin writes, kept across reloads.
    public let tenants: TenantDirectory
    /// Where admin writes go (in memory, or Redis shared by the fleet).
    let store: any TenantStore
    private let redisStore: RedisTenantStore?
    let limits: LimitSettings
    /// The embedded store's buckets and counters (nil with Redis).
    let memoryLimits: MemoryLimits?
    /// One Redis connection per loop for rate-limit decisions.
    let limitClients: [RedisClient]
    /// The audit log (configured sinks; `audit` changes apply at restart).
    let audit: AuditLog?
    /// The access log's writer (`access_log`; changes apply at restart).
    let accessLog: AccessLog?
    /// The span exporter (`tracing`; changes apply at restart).
    let spanExporter: SpanExporter?
    /// The billing webhook (admin listener, and `billing.webhook_path` on the proxy listener).
    let billingWebhook: BillingWebhookHandler
    private let instanceID = UUID().uuidString
    /// Wall-clock time for the admin API, the billing webhook, the rate limiters and the heartbeat.
    public let clock: WallClock
    /// Succeeded once the key-set service has fetched the remote key sets the first time (or failed: no serving).
    private let keySetsReady: EventLoopPromise<Void>
    /// Which tenants have a metric series of their own (kept across scrapes).
    private let tenantSeries = Mutex(TenantSeries())
    /// Tells every proxy connection to finish and close, and reports when the last one has (the drain).
    private let quiesce: ServerQuiescingHelper
    /// The running key-set fetcher, as the request phases see it (for early refetches).
    let keyRefetch: KeyRefetch
    /// The last reload asked for (reloads run one after another).
    private let reloads = Mutex<Task<[String], Never>?>(nil)

    /// Builds the gateway from a loaded config. Resolves upstream addresses (blocking): call off the loops.
    public init(configPath: String, config: GatewayConfig, logger: Logger, clock: WallClock = .system) async throws {
        self.configPath = configPath
        let keyRefetch = KeyRefetch()
        self.keyRefetch = keyRefetch
        self.logger = logger
        self.clock = clock
        let tenants = TenantDirectory(seeds: config.tenants)
        self.tenants = tenants
        let snapshot = try RuntimeSnapshot(config: config, tenants: tenants)
        Self.warnInsecure(snapshot, logger)
        self.current = Mutex(snapshot)
        let threads = config.server.threads ?? System.coreCount
        self.group = MultiThreadedEventLoopGroup(numberOfThreads: threads)
        self.quiesce = ServerQuiescingHelper(group: group)
        let keys = LimitKeys(prefix: config.store?.keyPrefix ?? "gh")
        let limits = LimitSettings(
            keys: keys, fallback: MemoryLimits(), failOpen: (config.store?.onFailure ?? .open) == .open)
        self.limits = limits
        let redisStore: RedisTenantStore?
        if let storeConfig = config.store {
            let redis = try RedisTenantStore(config: storeConfig, directory: tenants, eventLoop: group.next(), logger: logger)
            redisStore = redis
            self.store = redis
        } else {
            redisStore = nil
            self.store = MemoryTenantStore(directory: tenants, eventLoop: group.next(), clock: clock)
        }
        self.redisStore = redisStore
        let billingWebhook = BillingWebhookHandler(store: store, clock: clock)
        self.billingWebhook = billingWebhook
        if let auditConfig = config.audit, !auditConfig.sinks.isEmpty {
            self.audit = try await AuditLog.open(
                config: auditConfig, redis: redisStore?.redisConfiguration, eventLoop: group.next(), logger: logger,
                clock: clock)
        } else {
            self.audit = nil
        }
        let audit = self.audit
        let instanceID = self.instanceID
        let logLoop = group.next()
        let accessLog = try config.accessLog.map { try AccessLog(config: $0, shards: threads, eventLoop: logLoop, logger: logger) }
        self.accessLog = accessLog
        let exportLoop = group.next()
        let spanExporter = try config.tracing.map {
            try SpanExporter(config: $0, eventLoop: exportLoop, instanceID: instanceID, logger: logger)
        }
        self.spanExporter = spanExporter
        let telemetry = Telemetry(accessLog: accessLog, spans: spanExporter)
        // The embedded store's limits live in this process; with Redis each loop has its own connection.
        let memoryLimits = MemoryLimits()
        self.memoryLimits = redisStore == nil ? memoryLimits : nil
        var loops: [ObjectIdentifier: NIOLoopBound<LoopState>] = [:]
        var limitClients: [RedisClient] = []
        let tunnelCounts = TunnelCounts()
        var shard = 0
        for loop in group.makeIterator() {
            let backend: RateLimiter.Backend
            let tunnels: TunnelSlots.Backend
            if let redisStore, let storeConfig = config.store {
                let client = RedisClient(configuration: redisStore.redisConfiguration, eventLoop: loop, logger: logger)
                limitClients.append(client)
                backend = .redis(client, leased: storeConfig.rateLimitMode == .leased)
                tunnels = .redis(client, keys: keys, failOpen: limits.failOpen)
            } else {
                backend = .memory(memoryLimits)
                tunnels = .memory(tunnelCounts)
            }
            let state = try await loop.submit {
                NIOLoopBound(
                    LoopState(
                        eventLoop: loop, loopCount: threads, snapshot: snapshot, logger: logger, limiterBackend: backend,
                        limits: limits, audit: audit, billingWebhook: billingWebhook, clock: clock,
                        keyRefetch: keyRefetch, tunnels: tunnels, instanceID: instanceID, telemetry: telemetry,
                        shard: shard), eventLoop: loop)
            }.get()
            shard += 1
            loops[ObjectIdentifier(loop)] = state
        }
        self.loops = loops
        self.limitClients = limitClients
        if let env = config.server.adminTokenEnv, let token = ProcessInfo.processInfo.environment[env], !token.isEmpty {
            self.adminToken = token
        } else {
            self.adminToken = nil
        }
        // Last, after everything that can throw: a promise dropped unfulfilled is a leak NIO traps on.
        self.keySetsReady = group.next().makePromise(of: Void.self)
    }

    public var snapshot: RuntimeSnapshot { current.withLock { $0 } }

    /// The long-lived parts that run beside the listeners, each a `Service` of the process's one
    /// `ServiceGroup`, in start order. The group stops them in reverse, after the gateway has drained: health
    /// the audit log (everything queued written and synced), health checks and the tenant subscriber, the
    /// heartbeat (which leaves the instance set), then the span exporter and the access log, which put out what
    /// the drained requests handed them.
    public var backgroundServices: [any Service] {
        var services: [any Service] = []
        if let accessLog { services.append(accessLog) }
        if let spanExporter { services.append(spanExporter) }
        if let client = limitClients.first {
            services.append(
                InstanceHeartbeat(client: client, key: limits.keys.instances, id: instanceID, settings: limits, clock: clock))
        }
        if let redisStore {
            services.append(ClosureService(name: "tenant-store", start: { redisStore.start() }, stop: { redisStore.stop() }))
        }
        services.append(
            ClosureService(name: "health-checks", start: { self.startHealthChecks() }, stop: { self.stopHealthChecks() }))
        services.append(KeySetService(server: self))
        // Last: the first to stop after the drain, so its final sync never waits behind a slow collector.
        if let audit { services.append(audit) }
        return services
    }

    var usageReader: UsageReader { UsageReader(memory: memoryLimits, client: limitClients.first, keys: limits.keys) }
    var usageExporter: UsageExporter { UsageExporter(memory: memoryLimits, client: limitClients.first, keys: limits.keys) }

    /// Ready: listening with a config, and the store reachable unless `on_failure: open`.
    func readiness() -> EventLoopFuture<Bool> {
        let listening = isReady
        if !listening || limits.failOpen { return group.next().makeSucceededFuture(listening) }
        return store.isReachable
    }
    public var isReady: Bool { ready.load(ordering: .relaxed) }

    /// Binds the listeners and starts the sweepers and health checks.
    public func start() async throws {
        let config = snapshot.config
        for loop in group.makeIterator() {
            try await loop.submit { self.loops[ObjectIdentifier(loop)]!.value.startSweeper() }.get()
        }
        let proxy = try await bindProxy(config.server)
        var admin: Channel? = nil
        if let adminAddress = config.server.adminListen {
            admin = try await bindAdmin(adminAddress, config.server)
        }
        for client in limitClients { client.start() }
        if let redisStore {
            // (Its subscriber is a service of its own, started beside this one.) Serve once the records are
            // loaded, or after a bounded wait (cached seeds serve meanwhile).
            let deadline = NIODeadline.now() + .seconds(2)
            while NIODeadline.now() < deadline, (try? await redisStore.isReachable.get()) != true {
                try? await Task.sleep(for: .milliseconds(20))
            }
            _ = try? await redisStore.reloadAll().get()
        }
        // The key sets are a service of their own; their first fetch gates serving.
        try await keySetsReady.futureResult.get()
        listeners.withLock {
            $0.proxy = proxy
            $0.admin = admin
        }
        ready.store(true, ordering: .relaxed)
        logger.info(
            "gatehouse listening",
            metadata: [
                "gh-listen": "\(Self.describe(proxy.localAddress))",
                "gh-admin": "\(admin == nil ? "off" : Self.describe(admin?.localAddress))",
                "gh-threads": "\(loops.count)",
            ])
    }

    /// `host:port` of a bound address, for logs.
    static func describe(_ address: SocketAddress?) -> String {
        guard let address, let ip = address.ipAddress, let port = address.port else { return "?" }
        return ip.contains(":") ? "[\(ip)]:\(port)" : "\(ip):\(port)"
    }

    public var proxyAddress: SocketAddress? { listeners.withLock { $0.proxy?.localAddress } }
    public var adminAddress: SocketAddress? { listeners.withLock { $0.admin?.localAddress } }

    private func bindProxy(_ server: ServerConfig) async throws -> Channel {
        let maxConnections = server.maxConnections
        let loops = self.loops
        let tls = server.tls != nil
        let quiesce = self.quiesce
        return try await ServerBootstrap(group: group)
            .serverChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(quiesce.makeServerChannelHandler(channel: channel))
                }
            }
            .serverChannelOption(.backlog, value: 1024)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .childChannelOption(.maxMessagesPerRead, value: 16)
            .childChannelInitializer { [self] channel in
                guard self.proxyConnections.admit(channel, limit: maxConnections) else { return channel.close() }
                return channel.eventLoop.makeCompletedFuture {
                    let state = loops[ObjectIdentifier(channel.eventLoop)]!.value
                    let sync = channel.pipeline.syncOperations
                    // Behind an L4 balancer: only the balancers may connect, and each connection must begin with
                    // a PROXY header naming the client (read before TLS, which it precedes).
                    let server = state.snapshot.config.server
                    let proxyProtocol = server.proxyProtocol
                    if proxyProtocol {
                        let peer = channel.remoteAddress?.ipAddress ?? ""
                        guard ClientAddress.isTrusted(peer, server.trustedProxies) else {
                            state.metrics.connectionsRefused[ProxyProtocolHandler.refusedPeer, default: 0] += 1
                            throw ChannelError.inappropriateOperationForState
                        }
                        try sync.addHandler(ProxyProtocolHandler(metrics: state.metrics))
                    }
                    if tls {
                        // The certificates of the config loaded last: a reload changes them for new connections only.
                        guard let context = state.snapshot.serverTLS else { throw ChannelError.inappropriateOperationForState }
                        try sync.addHandler(NIOSSLServerHandler(context: context))
                    }
                    try sync.addHandler(ProxyHandler(loop: state, tls: tls, proxyProtocol: proxyProtocol))
                }
            }
            .bind(host: server.listen.host, port: server.listen.port)
            .get()
    }

    /// The admin listener: its own connection cap (a flood there cannot use up the descriptors the proxy needs)
    /// and the proxy listener's idle and header timeouts.
    private func bindAdmin(_ address: HostPort, _ server: ServerConfig) async throws -> Channel {
        let maxConnections = server.adminMaxConnections
        let idle = TimeAmount.nanoseconds(server.idleTimeout)
        let request = TimeAmount.nanoseconds(server.headDeadline)
        return try await ServerBootstrap(group: group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { [self] channel in
                guard self.adminConnections.admit(channel, limit: maxConnections) else { return channel.close() }
                return channel.eventLoop.makeCompletedFuture {
                    let sync = channel.pipeline.syncOperations
                    try sync.addHandler(AdminConnectionGuard(idleTimeout: idle, requestTimeout: request))
                    try sync.configureHTTPServerPipeline(withErrorHandling: true)
                    try sync.addHandler(AdminHandler(server: self))
                }
            }
            .bind(host: address.host, port: address.port)
            .get()
    }

    /// Constant-time check of an `Authorization: Bearer <token>` value against the admin token.
    func isAdminAuthorized(_ header: String?) -> Bool {
        guard let adminToken, let header, header.hasPrefix("Bearer ") else { return false }
        return Digest.constantTimeEqual(Array(header.utf8.dropFirst(7)), Array(adminToken.utf8))
    }

    private func makeRefresher(for snapshot: RuntimeSnapshot) throws -> JWKSRefresher {
        try JWKSRefresher(
            config: snapshot.config.identity, verifier: snapshot.verifier, eventLoop: group.next(), logger: logger,
            onUpdate: { [self] in self.clearTokenCaches() })
    }

    /// Forgets every loop's verified tokens (a key set changed).
    func clearTokenCaches() {
        for loop in group.makeIterator() {
            let state = loops[ObjectIdentifier(loop)]!
            loop.execute { state.value.tokenCache.clear() }
        }
    }

    // MARK: Reload

    /// Re-reads the config file; a config that fails validation is rejected and the old one keeps serving.
    /// Returns the problems (empty on success).
    public func reload() async -> [String] {
        // One at a time: a reload runs after the one before it has swapped everything in (SIGHUP and the admin
        // API may ask at once).
        let next = reloads.withLock { last -> Task<[String], Never> in
            let previous = last
            let task = Task { [self] in
                _ = await previous?.value
                return await self.reloadNow()
            }
            last = task
            return task
        }
        return await next.value
    }

    private func reloadNow() async -> [String] {
        let path = configPath
        let tenants = self.tenants
        let running = snapshot.config
        let runningUpstreams = snapshot.upstreams
        let result: Result<(RuntimeSnapshot, JWKSRefresher), Error> = await Task.detached { [self] in
            do {
                let config = try ConfigLoader().load(path: path)
                if (config.server.tls == nil) != (running.server.tls == nil) {
                    throw TLSFileError(
                        "server.tls: TLS on the proxy listener is turned on or off only by a restart (certificates reload)")
                }
                let snapshot = try RuntimeSnapshot(config: config, tenants: tenants, previous: runningUpstreams)
                // Built before anything is swapped: an unreadable issuer ca_file refuses the reload.
                let jwks = try self.makeRefresher(for: snapshot)
                tenants.reseed(config.tenants)
                return .success((snapshot, jwks))
            } catch {
                return .failure(error)
            }
        }.value
        switch result {
        case .failure(let error):
            let problems = (error as? ConfigError)?.problems.map(\.description) ?? ["\(error)"]
            logger.error("config reload rejected", metadata: ["gh-problems": "\(problems.joined(separator: "; "))"])
            return problems
        case .success(let (snapshot, jwks)):
            Self.warnInsecure(snapshot, logger)
            // Remote key sets: the last good set of an issuer whose source did not change, then a fetch, both
            // before the new config serves (a failed fetch keeps the last good keys across a reload too).
            let old = self.snapshot
            for issuer in snapshot.config.identity.issuers where issuer.jwksURL != nil || issuer.discovery {
                guard let was = old.config.identity.issuers.first(where: { $0.issuer == issuer.issuer }),
                    was.jwksURL == issuer.jwksURL, was.discovery == issuer.discovery, was.caFile == issuer.caFile,
                    let keys = old.verifier.keys(issuer: issuer.issuer)
                else { continue }
                snapshot.verifier.updateKeys(issuer: issuer.issuer, keys)
            }
            await jwks.start()
            current.withLock { $0 = snapshot }
            for loop in group.makeIterator() {
                let state = loops[ObjectIdentifier(loop)]!
                try? await loop.submit { state.value.install(snapshot) }.get()
            }
            installKeySets(jwks)
            startHealthChecks()
            logger.info("config reloaded", metadata: ["gh-routes": "\(snapshot.config.routes.count)"])
            return []
        }
    }

    /// `insecure_skip_verify` is allowed, and said out loud at every load.
    static func warnInsecure(_ snapshot: RuntimeSnapshot, _ logger: Logger) {
        for name in snapshot.upstreams.insecureUpstreams {
            logger.warning(
                "upstream TLS certificates are not verified (insecure_skip_verify)", metadata: ["gh-upstream": "\(name)"])
        }
        if snapshot.config.store?.tls?.insecureSkipVerify == true {
            logger.warning("Redis TLS certificates are not verified (store.tls.insecure_skip_verify)")
        }
    }

    func reloadFuture() -> EventLoopFuture<[String]> {
        let promise = group.next().makePromise(of: [String].self)
        promise.completeWithTask { await self.reload() }
        return promise.futureResult
    }

    // MARK: Drain and stop

    /// The remote key sets (JWKS URLs, OpenID discovery) of the current snapshot, fetched once before the
    /// listeners serve; a reload replaces the refresher with the config.
    func startKeySets() async {
        do {
            let jwks = try makeRefresher(for: snapshot)
            await jwks.start()
            installKeySets(jwks)
            keySetsReady.succeed(())
        } catch {
            logger.error("key sets cannot be fetched", metadata: ["gh-error": "\(error)"])
            keySetsReady.fail(error)
        }
    }

    /// Makes `jwks` the running refresher (the one early refetches ask), stopping the one it replaces; once the
    /// key sets have stopped (shutdown), `jwks` is stopped instead.
    private func installKeySets(_ jwks: JWKSRefresher) {
        let replaced = listeners.withLock { l -> JWKSRefresher? in
            guard !l.keySetsStopped else { return jwks }
            keyRefetch.install(jwks)
            defer { l.jwks = jwks }
            return l.jwks
        }
        replaced?.stop()
    }

    func stopKeySets() {
        listeners.withLock { l -> JWKSRefresher? in
            l.keySetsStopped = true
            keyRefetch.install(nil)
            defer { l.jwks = nil }
            return l.jwks
        }?.stop()
    }

    /// Health checks of the current snapshot's upstreams (replacing the running ones, after a reload); none once
    /// stopped.
    func startHealthChecks() {
        let checker = HealthChecker(registry: snapshot.upstreams, eventLoop: group.next(), logger: logger)
        let old = listeners.withLock { l -> HealthChecker? in
            guard !l.healthChecksStopped else { return checker }
            let old = l.healthChecker
            l.healthChecker = checker
            return old
        }
        if old !== checker { checker.start() }
        old?.stop()
    }

    func stopHealthChecks() {
        listeners.withLock { l -> HealthChecker? in
            l.healthChecksStopped = true
            defer { l.healthChecker = nil }
            return l.healthChecker
        }?.stop()
    }

    /// Stops accepting and lets in-flight requests finish: NIO's quiescing helper closes the proxy listener and
    /// tells every connection to drain (idle ones close, busy ones after their response), and reports when the
    /// last one has closed; at `drain_timeout` whatever is still open is closed. Then the admin listener.
    /// What runs beside (writers, heartbeat, ...) stops after this, in the service group's order; the event
    /// loops stop in ``close()``.
    public func shutdown() async {
        ready.store(false, ordering: .relaxed)
        let admin = listeners.withLock { $0.admin }
        // The listener closes first (the helper), so no connection is accepted after the loops begin draining.
        let drained = group.next().makePromise(of: Void.self)
        quiesce.initiateShutdown(promise: drained)
        for loop in group.makeIterator() {
            let state = loops[ObjectIdentifier(loop)]!
            try? await loop.submit { state.value.beginDrain() }.get()
        }
        let loops = self.loops
        let group = self.group
        let cut = group.next().scheduleTask(in: .nanoseconds(snapshot.config.server.drainTimeout)) {
            for loop in group.makeIterator() {
                let state = loops[ObjectIdentifier(loop)]!
                loop.execute { state.value.forceClose() }
            }
        }
        try? await drained.futureResult.get()
        cut.cancel()
        for loop in group.makeIterator() {
            let state = loops[ObjectIdentifier(loop)]!
            try? await loop.submit { state.value.forceClose() }.get()
        }
        try? await admin?.close()
        // Leased units no request will spend go back to the quota and day counters (usage counts requests).
        for loop in group.makeIterator() {
            let state = loops[ObjectIdentifier(loop)]!
            let calls = try? await loop.submit { state.value.limiter.giveBackAll() }.get()
            for call in calls ?? [] { _ = try? await call.get() }
        }
        logger.info("gatehouse drained")
    }

    /// After every service has stopped: the store connections, then the event loops.
    public func close() async {
        for client in limitClients { _ = client.close() }
        logger.info("gatehouse stopped")
        try? await group.shutdownGracefully()
    }

    // MARK: Live instances

    // MARK: Metrics

    func metricsText() -> EventLoopFuture<String> {
        let futures = group.makeIterator().map { loop in
            let state = loops[ObjectIdentifier(loop)]!
            return loop.submit {
                state.value.metrics.snapshot(
                    leaseUnits: state.value.limiter.outstandingLeaseUnits, connections: state.value.connectionCounts())
            }
        }
        let snapshot = self.snapshot
        return EventLoopFuture.whenAllSucceed(futures, on: group.next()).map { parts in
            var merged = MetricsSnapshot()
            for p in parts { merged.merge(p) }
            merged.liveInstances = self.limits.liveInstances.load(ordering: .relaxed)
            merged.auditQueueDepth = self.audit?.queueDepth ?? 0
            merged.auditWritten = self.audit?.writtenCount ?? 0
            if let spans = self.spanExporter {
                merged.spansExported = spans.exported
                merged.spansDropped = spans.dropped
                merged.spansQueued = spans.queued
            }
            if let log = self.accessLog {
                merged.accessLogWritten = log.written
                merged.accessLogDropped = log.dropped
            }
            let tenants = self.tenantSeries.withLock {
                $0.render(merged.tenantRequests, top: snapshot.config.metrics.tenantSeries)
            }
            return MetricsText.render(merged, registry: snapshot.upstreams, tenants: tenants)
        }
    }
}

/// One listener's open connections, counted from accept to close.
final class ConnectionCount: Sendable {
    private let open = Atomic<Int>(0)

    /// Counts `channel` until it closes; false when that puts the listener over `limit` (close it at once).
    func admit(_ channel: Channel, limit: Int) -> Bool {
        let now = open.add(1, ordering: .relaxed).newValue
        channel.closeFuture.whenComplete { _ in self.open.subtract(1, ordering: .relaxed) }
        return now <= limit
    }
}
