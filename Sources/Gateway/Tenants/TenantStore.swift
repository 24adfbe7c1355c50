import Logging
import NIOCore
import Policy
import Synchronization

/// Where admin writes go: the embedded in-memory store, or Redis shared by every gateway instance.
/// Reads on the request path always come from the in-process ``TenantDirectory``.
protocol TenantStore: Sendable {
    /// Creates or replaces a tenant's record (API keys kept); true when the tenant was unknown.
    func put(_ tenant: String, _ record: TenantSeed) -> EventLoopFuture<Bool>
    /// Removes the store's record; false when there was none.
    func delete(_ tenant: String) -> EventLoopFuture<Bool>
    /// Adds an API key by hash; false for an unknown tenant.
    func addKey(_ tenant: String, id: String, sha256: String) -> EventLoopFuture<Bool>
    /// Revokes an API key; false when the tenant or key is unknown.
    func revokeKey(_ tenant: String, id: String) -> EventLoopFuture<Bool>
    /// True when the store can take writes (readiness).
    var isReachable: EventLoopFuture<Bool> { get }
    /// Remembers a webhook event id for a day; true the first time, false for a replay.
    func remember(eventID: String) -> EventLoopFuture<Bool>
    /// Forgets an event id whose change could not be applied, so the sender's retry is not taken for a replay.
    func forget(eventID: String)
}

/// Webhook event ids seen by this instance (the embedded store's replay memory), bounded.
final class SeenEvents: Sendable {
    private let seen = Mutex<[String: Double]>([:])
    static let ttl: Double = 86_400
    static let capacity = 100_000

    func firstTime(_ id: String, now: Double) -> Bool {
        seen.withLock { seen in
            if let at = seen[id], now - at < Self.ttl { return false }
            if seen.count >= Self.capacity { seen = seen.filter { now - $0.value < Self.ttl } }
            if seen.count >= Self.capacity { seen.removeAll() }
            seen[id] = now
            return true
        }
    }

    func forget(_ id: String) {
        _ = seen.withLock { $0.removeValue(forKey: id) }
    }
}

/// The embedded store: the directory itself (one instance only).
struct MemoryTenantStore: TenantStore {
    let directory: TenantDirectory
    let eventLoop: EventLoop
    let events = SeenEvents()

    func remember(eventID: String) -> EventLoopFuture<Bool> {
        eventLoop.makeSucceededFuture(events.firstTime(eventID, now: ProxyHandler.wallClock()))
    }

    func forget(eventID: String) { events.forget(eventID) }

    func put(_ tenant: String, _ record: TenantSeed) -> EventLoopFuture<Bool> {
        eventLoop.makeSucceededFuture(directory.put(tenant, record))
    }
    func delete(_ tenant: String) -> EventLoopFuture<Bool> { eventLoop.makeSucceededFuture(directory.delete(tenant)) }
    func addKey(_ tenant: String, id: String, sha256: String) -> EventLoopFuture<Bool> {
        eventLoop.makeSucceededFuture(directory.addKey(tenant, id: id, sha256: sha256))
    }
    func revokeKey(_ tenant: String, id: String) -> EventLoopFuture<Bool> {
        eventLoop.makeSucceededFuture(directory.revokeKey(tenant, id: id))
    }
    var isReachable: EventLoopFuture<Bool> { eventLoop.makeSucceededFuture(true) }
}

/// Tenant records in Redis, shared by every instance: one hash `<prefix>:tenants` (tenant → JSON record);
/// a write publishes the tenant id on `<prefix>:tenants:invalidate` and every instance reloads that record,
/// so a change made through any instance is enforced by all within about a round trip. Each instance also
/// reloads the whole hash at connect and every `tenant_cache_ttl`; while Redis is unreachable the records
/// already loaded keep serving. YAML seeds stay local to each instance and lose to a stored record.
final class RedisTenantStore: TenantStore {
    let client: RedisClient
    let subscriber: RedisClient
    let directory: TenantDirectory
    let hashKey: String
    let channel: String
    /// The resolved connection settings (the rate limiter's per-loop clients use them too).
    let redisConfiguration: RedisClient.Configuration
    private let logger: Logger
    private let refreshTask: LockedBox<RepeatedTask?>

    init(config: StoreConfig, directory: TenantDirectory, eventLoop: EventLoop, logger: Logger) throws {
        guard var redis = RedisClient.Configuration(url: config.redisURL) else {
            throw RedisError.protocolError("invalid store.redis URL")
        }
        redis.timeout = .nanoseconds(config.timeout)
        try redis.resolve()  // off the event loops: the server is built before it serves
        self.redisConfiguration = redis
        self.directory = directory
        self.hashKey = config.keyPrefix + ":tenants"
        self.channel = config.keyPrefix + ":tenants:invalidate"
        self.logger = logger
        self.refreshTask = LockedBox(nil)
        let box = LockedBox<RedisTenantStore?>(nil)
        self.client = RedisClient(configuration: redis, eventLoop: eventLoop, logger: logger, onReady: {
            _ = box.value?.reloadAll()
        })
        var subscriberConfig = redis
        subscriberConfig.failureThreshold = Int.max
        self.subscriber = RedisClient(
            configuration: subscriberConfig, eventLoop: eventLoop, logger: logger, subscribe: [channel],
            onPush: { _, payload in
                _ = box.value?.reload(String(decoding: payload, as: UTF8.self))
            },
            onReady: { _ = box.value?.reloadAll() })
        box.value = self
        let interval = TimeAmount.nanoseconds(config.tenantCacheTTL)
        refreshTask.value = eventLoop.scheduleRepeatedAsyncTask(initialDelay: interval, delay: interval) { _ in
            box.value?.reloadAll().map { _ in } ?? eventLoop.makeSucceededVoidFuture()
        }
    }

    func start() {
        client.start()
        subscriber.start()
    }

    func stop() {
        refreshTask.value?.cancel()
        _ = client.close()
        _ = subscriber.close()
    }

    /// A PING answered within `store.timeout` (a frozen server keeps its socket open, so the connection
    /// alone proves nothing).
    var isReachable: EventLoopFuture<Bool> {
        client.send(["PING"]).map { $0 == .status("PONG") }.recover { _ in false }
    }

    func remember(eventID: String) -> EventLoopFuture<Bool> {
        client.send(["SET", hashKey + ":webhook-event:" + eventID, "1", "NX", "EX", String(Int(SeenEvents.ttl))])
            .map { $0 != .null }
    }

    func forget(eventID: String) {
        _ = client.send(["DEL", hashKey + ":webhook-event:" + eventID])
    }

    /// Loads every stored record (HGETALL) into the directory.
    @discardableResult
    func reloadAll() -> EventLoopFuture<Bool> {
        // A bulk read off the request path: it may take longer than one per-request call.
        client.send(["HGETALL", hashKey], timeout: .seconds(10)).map { reply in
            guard case .array(let items) = reply else { return false }
            var records: [String: TenantSeed] = [:]
            var i = 0
            while i + 1 < items.count {
                if let id = items[i].string, case .string(let json) = items[i + 1], let r = TenantRecordCodec.decode(json) {
                    records[id] = r
                }
                i += 2
            }
            self.directory.replaceStored(records)
            return true
        }.recover { error in
            self.logger.warning("tenant reload failed; cached records keep serving", metadata: ["gh-error": "\(error)"])
            return false
        }
    }

    /// Reloads one tenant (HGET) after an invalidation; a failed read is retried a few times (50 ms apart)
    /// before the periodic full reload is left to catch up.
    @discardableResult
    func reload(_ tenant: String, attempt: Int = 1) -> EventLoopFuture<Void> {
        client.send(["HGET", hashKey, tenant]).map { reply in
            if case .string(let json) = reply, let r = TenantRecordCodec.decode(json) {
                self.directory.setStored(tenant, r)
            } else {
                self.directory.setStored(tenant, nil)
            }
        }.flatMapError { error in
            guard attempt < 5 else {
                self.logger.warning(
                    "tenant invalidation reload failed", metadata: ["gh-tenant": "\(tenant)", "gh-error": "\(error)"])
                return self.client.eventLoop.makeSucceededVoidFuture()
            }
            return self.client.eventLoop.flatScheduleTask(in: .milliseconds(50)) {
                self.reload(tenant, attempt: attempt + 1)
            }.futureResult
        }
    }

    private func write(_ tenant: String, _ record: TenantSeed) -> EventLoopFuture<Void> {
        client.send(["HSET", hashKey, tenant, TenantRecordCodec.encode(record)])
            .flatMap { _ in self.client.send(["PUBLISH", self.channel, tenant]) }
            .map { _ in self.directory.setStored(tenant, record) }
    }

    func put(_ tenant: String, _ record: TenantSeed) -> EventLoopFuture<Bool> {
        var r = record
        let existing = directory.record(tenant)
        r.apiKeys = existing?.apiKeys ?? []
        return write(tenant, r).map { existing == nil }
    }

    func delete(_ tenant: String) -> EventLoopFuture<Bool> {
        client.send(["HDEL", hashKey, tenant]).flatMap { reply in
            guard reply.integer == 1 else { return self.client.eventLoop.makeSucceededFuture(false) }
            return self.client.send(["PUBLISH", self.channel, tenant]).map { _ in
                self.directory.setStored(tenant, nil)
                return true
            }
        }
    }

    func addKey(_ tenant: String, id: String, sha256: String) -> EventLoopFuture<Bool> {
        guard var r = directory.record(tenant) else { return client.eventLoop.makeSucceededFuture(false) }
        r.apiKeys.append(.init(id: id, sha256: sha256))
        return write(tenant, r).map { true }
    }

    func revokeKey(_ tenant: String, id: String) -> EventLoopFuture<Bool> {
        guard var r = directory.record(tenant), r.apiKeys.contains(where: { $0.id == id }) else {
            return client.eventLoop.makeSucceededFuture(false)
        }
        r.apiKeys.removeAll { $0.id == id }
        return write(tenant, r).map { true }
    }
}

/// A lock-protected optional reference, for wiring callbacks to an object built after them.
final class LockedBox<Value: Sendable>: Sendable {
    private let storage: Mutex<Value>
    init(_ value: Value) { storage = Mutex(value) }
    var value: Value {
        get { storage.withLock { $0 } }
        set { storage.withLock { $0 = newValue } }
    }
}
