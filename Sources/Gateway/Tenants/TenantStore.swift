import Foundation
import Logging
import NIOCore
import Redis
import Policy
import Synchronization

/// Where admin writes go: the embedded in-memory store, or Redis shared by every gateway instance.
/// Reads on the request path always come from the in-process ``TenantDirectory``.
protocol TenantStore: Sendable {
    /// Creates or replaces a tenant's record (API keys and revocations kept; see ``TenantDirectory/put(_:_:)``);
    /// true when the tenant was unknown.
    func put(_ tenant: String, _ record: TenantRecord) -> EventLoopFuture<Bool>
    /// Applies a billing change to the live record in one atomic step; see ``TenantDirectory/applyBilling(_:_:now:)``.
    func applyBilling(_ tenant: String, _ change: BillingWebhook.Change, now: Double) -> EventLoopFuture<TenantDirectory.BillingWrite>
    /// Leaves the tenant unknown (a tombstone hides its seed) until the next put; false when it was not known.
    func delete(_ tenant: String) -> EventLoopFuture<Bool>
    /// Adds an API key by hash, with its scopes and roles; false for an unknown tenant.
    func addKey(_ tenant: String, _ key: TenantRecord.APIKey) -> EventLoopFuture<AddKeyResult>
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
    /// Times the webhook event ids it remembers.
    let clock: WallClock
    let events = SeenEvents()

    func remember(eventID: String) -> EventLoopFuture<Bool> {
        eventLoop.makeSucceededFuture(events.firstTime(eventID, now: clock.now()))
    }

    func forget(eventID: String) { events.forget(eventID) }

    func put(_ tenant: String, _ record: TenantRecord) -> EventLoopFuture<Bool> {
        eventLoop.makeSucceededFuture(directory.put(tenant, record))
    }
    func applyBilling(_ tenant: String, _ change: BillingWebhook.Change, now: Double) -> EventLoopFuture<TenantDirectory.BillingWrite> {
        eventLoop.makeSucceededFuture(directory.applyBilling(tenant, change, now: now))
    }
    func delete(_ tenant: String) -> EventLoopFuture<Bool> { eventLoop.makeSucceededFuture(directory.delete(tenant)) }
    func addKey(_ tenant: String, _ key: TenantRecord.APIKey) -> EventLoopFuture<AddKeyResult> {
        eventLoop.makeSucceededFuture(directory.addKey(tenant, key))
    }
    func revokeKey(_ tenant: String, id: String) -> EventLoopFuture<Bool> {
        eventLoop.makeSucceededFuture(directory.revokeKey(tenant, id: id))
    }
    var isReachable: EventLoopFuture<Bool> { eventLoop.makeSucceededFuture(true) }
}

/// Tenant records in Redis, shared by every instance: one key per tenant, `{<prefix>:<tenant>}:tenant` (its JSON
/// record, beside the tenant's limit keys in one Cluster slot); a write publishes the tenant id on
/// `<prefix>:tenants:invalidate` and every instance reloads that record, so a change made through any instance is
/// enforced by all within about a round trip (a Cluster broadcasts PUBLISH to every node). Each instance also
/// reloads every record at connect and every `tenant_cache_ttl`, reading the keys incrementally with SCAN on
/// each master; while Redis is unreachable the records already loaded keep serving. YAML seeds stay local to each
/// instance and lose to a stored record.
///
/// The layout before per-tenant keys was one hash, `<prefix>:tenants` (tenant → JSON). Before each full reload
/// an instance moves whatever that hash holds into per-tenant keys (never over a newer record) and deletes it.
final class RedisTenantStore: TenantStore {
    let client: RedisClient
    let subscriber: RedisClient
    let directory: TenantDirectory
    let keys: LimitKeys
    /// The old layout's hash, migrated when found.
    let legacyHashKey: String
    let channel: String
    /// The resolved connection settings (the rate limiter's per-loop clients use them too).
    let redisConfiguration: RedisClient.Configuration
    private let logger: Logger
    private let refreshTask: LockedBox<RepeatedTask?>
    /// The first full load (after any migration of the old layout) has completed.
    private let migrated = Atomic<Bool>(false)

    init(config: StoreConfig, directory: TenantDirectory, eventLoop: EventLoop, logger: Logger) throws {
        var redis = try RedisClient.Configuration(store: config, environment: ProcessInfo.processInfo.environment)
        try redis.resolve()  // off the event loops: the server is built before it serves
        self.redisConfiguration = redis
        self.directory = directory
        self.keys = LimitKeys(prefix: config.keyPrefix)
        self.legacyHashKey = config.keyPrefix + ":tenants"
        self.channel = config.keyPrefix + ":tenants:invalidate"
        self.logger = logger
        self.refreshTask = LockedBox(nil)
        let box = LockedBox<RedisTenantStore?>(nil)
        self.client = RedisClient(configuration: redis, eventLoop: eventLoop, logger: logger, onReady: {
            _ = box.value?.reloadAll()
        })
        // A subscriber's connection has no circuit (the client sees to it): its one call is the subscription.
        self.subscriber = RedisClient(
            configuration: redis, eventLoop: eventLoop, logger: logger, subscribe: [channel],
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

    /// A tenant's record key.
    func recordKey(_ tenant: String) -> String { keys.tenantRecord(tenant) }

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
        client.send(["SET", legacyHashKey + ":webhook-event:" + eventID, "1", "NX", "EX", String(Int(SeenEvents.ttl))])
            .map { $0 != .null }
    }

    func forget(eventID: String) {
        _ = client.send(["DEL", legacyHashKey + ":webhook-event:" + eventID])
    }

    /// Loads every stored record into the directory: the record keys found by SCAN on every master, then read
    /// in batches (off the request path: bulk calls may take longer than one per-request call).
    @discardableResult
    func reloadAll() -> EventLoopFuture<Bool> {
        let mark = directory.writeMark
        return migrateLegacyLayout().flatMap {
            Self.readRecords(self.client, keys: self.keys)
        }.map { records in
            self.directory.replaceStored(records, since: mark)
            self.migrated.store(true, ordering: .relaxed)
            return true
        }.recover { error in
            self.logger.warning("tenant reload failed; cached records keep serving", metadata: ["gh-error": "\(error)"])
            return false
        }
    }

    /// Every stored record (tombstones included), read with SCAN on every master and GETs in batches; nothing
    /// is written (``gatehouse explain`` reads the fleet's records this way too).
    static func readRecords(_ client: RedisClient, keys: LimitKeys) -> EventLoopFuture<[String: TenantRecord]> {
        let eventLoop = client.eventLoop
        return client.scan(match: keys.tenantRecordPattern, count: 1000, timeout: .seconds(5)).flatMap { found in
            // A sibling prefix (`gh:eu` beside `gh`) matches the pattern too: only valid tenant ids are ours.
            let ids = found.compactMap { keys.tenant(ofRecordKey: $0) }.filter(TenantID.isValid)
            var records: [String: TenantRecord] = [:]
            var chain = eventLoop.makeSucceededVoidFuture()
            for start in stride(from: 0, to: ids.count, by: 500) {
                let batch = Array(ids[start..<min(ids.count, start + 500)])
                chain = chain.flatMap {
                    let reads = batch.map { id in
                        client.send(["GET", keys.tenantRecord(id)], timeout: .seconds(5)).map { reply -> (String, TenantRecord?) in
                            if case .string(let json) = reply { return (id, TenantRecordCodec.decode(json)) }
                            return (id, nil)
                        }
                    }
                    return EventLoopFuture.whenAllSucceed(reads, on: eventLoop).map { pairs in
                        for (id, record) in pairs { if let record { records[id] = record } }
                    }
                }
            }
            return chain.map { records }
        }
    }

    /// Moves the old layout's records (one hash of every tenant) into per-tenant keys: each is written only
    /// where no per-tenant record exists yet (a newer write wins), then the hash is deleted. Idempotent, so
    /// instances that do it at once do no harm.
    func migrateLegacyLayout() -> EventLoopFuture<Void> {
        let eventLoop = client.eventLoop
        return client.send(["HGETALL", legacyHashKey], timeout: .seconds(10)).flatMap { reply -> EventLoopFuture<Void> in
            guard case .array(let items) = reply, !items.isEmpty else { return eventLoop.makeSucceededVoidFuture() }
            var writes: [EventLoopFuture<RedisReply>] = []
            var i = 0
            while i + 1 < items.count {
                if let id = items[i].string, TenantID.isValid(id), case .string(let json) = items[i + 1] {
                    writes.append(self.client.send(bytes: [Array("SET".utf8), Array(self.recordKey(id).utf8), json, Array("NX".utf8)], timeout: .seconds(5)))
                }
                i += 2
            }
            let moved = writes.count
            return EventLoopFuture.whenAllSucceed(writes, on: eventLoop).flatMap { _ in
                // Kept under another name for a while (a week), in case a rollback needs it; where the two
                // names cannot share a node (a Cluster), deleted.
                self.client.send(["RENAME", self.legacyHashKey, self.legacyHashKey + ":migrated"], timeout: .seconds(5))
                    .flatMap { _ in
                        self.client.send(["EXPIRE", self.legacyHashKey + ":migrated", "604800"], timeout: .seconds(5))
                    }
                    .flatMapError { _ in self.client.send(["DEL", self.legacyHashKey], timeout: .seconds(5)) }
            }.map { _ in
                self.logger.notice(
                    "tenant records moved to per-tenant keys",
                    metadata: ["gh-count": "\(moved)", "gh-from": "\(self.legacyHashKey)"])
            }
        }
    }

    /// Reloads one tenant (HGET) after an invalidation; a failed read is retried a few times (50 ms apart)
    /// before the periodic full reload is left to catch up.
    @discardableResult
    func reload(_ tenant: String, attempt: Int = 1) -> EventLoopFuture<Void> {
        client.send(["GET", recordKey(tenant)]).map { reply in
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

    /// Edits a tenant's stored record in one atomic step in Redis (so two instances editing one tenant at
    /// once cannot lose each other's change) and publishes the invalidation; the same rules as
    /// ``TenantDirectory`` (the embedded store):
    /// - `put`: replaces the record, keeping the API keys already stored (or the seed's, when the store has no
    ///   record or a tombstone), less revoked ones; revocations and the last billing event's time are kept.
    /// - `billing`: applies a billing change (ARGV[3]: `{plan?, status?, trial_ends?, created?, now}`) to the live
    ///   record, as ``TenantRecord/apply(_:now:)`` does; never through a tombstone, never older than the last.
    /// - `delete`: writes a tombstone (the tenant is unknown, its seed included, until the next put).
    /// - `add` / `revoke`: adds or removes one API key of the live record (stored, else the seed); a revoked
    ///   key's hash is remembered. `add`'s ARGV[3] is the key's JSON (`{id, sha256, scopes?, roles?}`).
    /// KEYS: the tenant's record key. ARGV: op, tenant, record (or change, or key) JSON, seed JSON (or ''), key id, key hash,
    /// the invalidation channel (not a key: a Cluster script touches only its slot's keys), the most keys a tenant
    /// holds. Replies `{status, record}`: put 1 created, 0 replaced; billing 1 applied, -3 stale, -4 deleted, -5
    /// unknown tenant and no plan; delete 1 done, 0 unknown; add/revoke 1 done, 0 key not found, -1 unknown tenant,
    /// -2 key id taken, -6 the tenant holds the most keys.
    static let editScript = """
        local cur = redis.call('GET', KEYS[1])
        local op = ARGV[1]
        local old = cur and cjson.decode(cur) or nil
        local seed = ARGV[4] ~= '' and cjson.decode(ARGV[4]) or nil
        local live = seed
        if old then live = (not old.deleted) and old or nil end
        local revoked = (old and type(old.revoked_keys) == 'table') and old.revoked_keys or {}
        local function is_revoked(h)
          for _, r in ipairs(revoked) do if r == h then return true end end
          return false
        end
        local function live_keys(r)
          local out = {}
          if r and type(r.api_keys) == 'table' then
            for _, k in ipairs(r.api_keys) do if not is_revoked(k.sha256) then table.insert(out, k) end end
          end
          return out
        end
        local rec
        local status = 1
        if op == 'put' then
          rec = cjson.decode(ARGV[3])
          if not rec.billing_event_at and old then rec.billing_event_at = old.billing_event_at end
          rec.api_keys = live_keys(live or seed)
          rec.revoked_keys = revoked
          rec.deleted = nil
          if live then status = 0 end
        elseif op == 'billing' then
          local ch = cjson.decode(ARGV[3])
          if old and old.deleted then return {-4, ''} end
          local last = old and old.billing_event_at or nil
          if ch.created and last and ch.created < last then return {-3, ''} end
          rec = live
          if not rec then
            if not ch.plan then return {-5, ''} end
            rec = {plan = ch.plan, status = 'active', billing_anchor = 1}
          end
          if ch.plan then rec.plan = ch.plan end
          if ch.status then
            if ch.status ~= 'past_due' then
              rec.past_due_since_epoch = nil
            elseif rec.status ~= 'past_due' or not rec.past_due_since_epoch then
              rec.past_due_since_epoch = ch.now
            end
            rec.status = ch.status
          end
          if ch.trial_ends then rec.trial_ends = ch.trial_ends end
          if ch.created then rec.billing_event_at = ch.created end
          rec.api_keys = live_keys(rec)
          rec.revoked_keys = revoked
        elseif op == 'delete' then
          if not live then return {0, ''} end
          rec = {plan = live.plan, deleted = true, revoked_keys = revoked, billing_event_at = old and old.billing_event_at or nil}
        else
          if not live then return {-1, ''} end
          rec = live
          local keys = live_keys(live)
          if op == 'add' then
            for _, k in ipairs(keys) do if k.id == ARGV[5] then return {-2, ''} end end
            if #keys >= tonumber(ARGV[8]) then return {-6, ''} end
            local key = cjson.decode(ARGV[3])
            key.id = ARGV[5]
            key.sha256 = ARGV[6]
            table.insert(keys, key)
            local kept = {}
            for _, h in ipairs(revoked) do if h ~= ARGV[6] then table.insert(kept, h) end end
            revoked = kept
          else
            local kept, found = {}, false
            for _, k in ipairs(keys) do
              if k.id == ARGV[5] then found = true; table.insert(revoked, k.sha256) else table.insert(kept, k) end
            end
            if not found then return {0, ''} end
            keys = kept
          end
          rec.api_keys = keys
          rec.revoked_keys = revoked
        end
        local out = cjson.encode(rec)
        redis.call('SET', KEYS[1], out)
        redis.call('PUBLISH', ARGV[7], ARGV[2])
        return {status, out}
        """

    private func edit(
        _ op: String, _ tenant: String, record: TenantRecord? = nil, json: String? = nil, keyID: String = "", sha256: String = ""
    ) -> EventLoopFuture<Int64> {
        // Until the first full load (and with it the move of an old-layout hash), an edit could start from a
        // seed instead of the record still in the old hash: refused (503; a webhook sender retries).
        guard migrated.load(ordering: .relaxed) else {
            return client.eventLoop.makeFailedFuture(RedisError.unavailable("tenant records not loaded yet"))
        }
        // This instance's seed is the base while the store has no live record of the tenant.
        let seed = directory.seed(tenant)
        let args = [
            "EVAL", Self.editScript, "1", recordKey(tenant), op, tenant, json ?? record.map(TenantRecordCodec.encode) ?? "",
            seed.map(TenantRecordCodec.encode) ?? "", keyID, sha256, channel, String(TenantRecord.maxAPIKeys),
        ]
        return client.send(args).flatMapThrowing { reply in
            guard case .array(let items) = reply, items.count == 2, let status = items[0].integer else {
                throw RedisError.protocolError("unexpected reply to the tenant edit script")
            }
            if case .string(let json) = items[1], let stored = TenantRecordCodec.decode(json) {
                self.directory.setStored(tenant, stored)
            }
            return status
        }
    }

    func put(_ tenant: String, _ record: TenantRecord) -> EventLoopFuture<Bool> {
        edit("put", tenant, record: record).map { $0 == 1 }
    }

    func applyBilling(_ tenant: String, _ change: BillingWebhook.Change, now: Double) -> EventLoopFuture<TenantDirectory.BillingWrite> {
        edit("billing", tenant, json: TenantRecordCodec.encode(change, now: now)).map { status in
            switch status {
            case 1: .applied
            case -3: .stale
            case -4: .deleted
            default: .unknown
            }
        }
    }

    func delete(_ tenant: String) -> EventLoopFuture<Bool> {
        edit("delete", tenant).map { $0 == 1 }
    }

    func addKey(_ tenant: String, _ key: TenantRecord.APIKey) -> EventLoopFuture<AddKeyResult> {
        edit("add", tenant, json: TenantRecordCodec.encode(key), keyID: key.id, sha256: key.sha256).map {
            switch $0 {
            case 1: .added
            case -2: .idTaken
            case -6: .full
            default: .unknownTenant
            }
        }
    }

    func revokeKey(_ tenant: String, id: String) -> EventLoopFuture<Bool> {
        edit("revoke", tenant, keyID: id).map { $0 == 1 }
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
