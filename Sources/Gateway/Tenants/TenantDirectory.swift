import Policy
import Synchronization

/// The tenant records the gateway enforces: YAML seeds, overridden by records written through the admin API.
///
/// This is the embedded in-memory store (one instance, used when no `store` is configured): lookups on the
/// request path take an uncontended lock for a dictionary read; writes rebuild the API key index.
/// What adding an API key did.
public enum AddKeyResult: Sendable, Equatable {
    case added
    case unknownTenant
    /// The tenant already has a key with that id.
    case idTaken
    /// The tenant holds ``TenantRecord/maxAPIKeys`` keys.
    case full
}

public final class TenantDirectory: TenantRecords {
    public enum Source: String, Sendable { case seed, store }

    /// What a billing change did.
    public enum BillingWrite: Sendable, Equatable {
        case applied
        /// Older than the last change applied to the tenant: nothing was written.
        case stale
        /// The tenant was deleted (only a PUT brings it back): nothing was written.
        case deleted
        /// An unknown tenant and no plan to create it with: nothing was written.
        case unknown
    }

    private struct State {
        var seeds: [String: TenantRecord]
        var stored: [String: TenantRecord] = [:]
        var owners: [String: (tenant: String, key: TenantRecord.APIKey)] = [:]
        /// Counts single-record writes (``setStored(_:_:)``); `writtenAt` is each tenant's last.
        var writes = 0
        var writtenAt: [String: Int] = [:]

        /// The record requests see: the stored one (none behind a tombstone), else the seed.
        func visible(_ tenant: String) -> TenantRecord? {
            if let r = stored[tenant] { return r.deleted ? nil : r }
            return seeds[tenant]
        }

        mutating func reindex() {
            seedGrants()
            owners = [:]
            for tenant in Set(seeds.keys).union(stored.keys) {
                guard let r = visible(tenant) else { continue }
                for key in r.apiKeys where !r.revokedKeys.contains(key.sha256) { owners[key.sha256] = (tenant, key) }
            }
        }

        /// A seed key's grants (scopes, roles) are the current YAML's, also once a store write has copied the key
        /// into the tenant's stored record: narrowing a seed key and reloading takes effect everywhere. (A key
        /// made through the admin API keeps the grants it was made with.)
        mutating func seedGrants() {
            for (tenant, seed) in seeds where !seed.apiKeys.isEmpty {
                guard var r = stored[tenant], !r.deleted else { continue }
                var changed = false
                for i in r.apiKeys.indices {
                    guard let s = seed.apiKeys.first(where: { $0.sha256 == r.apiKeys[i].sha256 }),
                        s.scopes != r.apiKeys[i].scopes || s.roles != r.apiKeys[i].roles
                    else { continue }
                    r.apiKeys[i].scopes = s.scopes
                    r.apiKeys[i].roles = s.roles
                    changed = true
                }
                if changed { stored[tenant] = r }
            }
        }
    }

    private let state: Mutex<State>

    public init(seeds: [String: TenantRecord]) {
        var s = State(seeds: seeds)
        s.reindex()
        state = Mutex(s)
    }

    public func record(_ tenant: String) -> TenantRecord? {
        state.withLock { $0.visible(tenant) }
    }

    public func apiKeyOwner(sha256Hex: String) -> (tenant: String, key: TenantRecord.APIKey)? {
        state.withLock { $0.owners[sha256Hex] }
    }

    /// The effective record and where it comes from; nil for an unknown or deleted tenant.
    public func effective(_ tenant: String) -> (record: TenantRecord, source: Source)? {
        state.withLock { s in s.visible(tenant).map { ($0, s.stored[tenant] == nil ? .seed : .store) } }
    }

    /// The YAML seed of a tenant, whatever the store holds.
    public func seed(_ tenant: String) -> TenantRecord? {
        state.withLock { $0.seeds[tenant] }
    }

    /// Creates or replaces the store's record; true when the tenant was unknown. The API keys are kept: the
    /// stored record's, or the seed's when the store has none (or a tombstone), less every revoked one; so are
    /// the revocations and the newest billing event's time.
    @discardableResult
    public func put(_ tenant: String, _ record: TenantRecord) -> Bool {
        state.withLock { s in
            let old = s.stored[tenant]
            let live = s.visible(tenant)
            var r = record
            r.deleted = false
            r.revokedKeys = old?.revokedKeys ?? []
            r.billingEventAt = record.billingEventAt ?? old?.billingEventAt
            r.apiKeys = ((live ?? s.seeds[tenant])?.apiKeys ?? []).filter { !r.revokedKeys.contains($0.sha256) }
            s.stored[tenant] = r
            s.reindex()
            return live == nil
        }
    }

    /// Applies a billing change to the live record in one step (a new tenant when the change names a plan), so
    /// concurrent changes cannot undo each other. A deleted tenant stays deleted; an older change is ignored.
    public func applyBilling(_ tenant: String, _ change: BillingWebhook.Change, now: Double) -> BillingWrite {
        state.withLock { s in
            let old = s.stored[tenant]
            if old?.deleted == true { return .deleted }
            if let at = change.created, let last = old?.billingEventAt, at < last { return .stale }
            guard var r = s.visible(tenant) ?? change.plan.map({ TenantRecord(plan: $0) }) else { return .unknown }
            r.apply(change, now: now)
            r.apiKeys.removeAll { r.revokedKeys.contains($0.sha256) }
            s.stored[tenant] = r
            s.reindex()
            return .applied
        }
    }

    /// Leaves a tombstone, so the tenant is unknown (its seed included) until the next PUT; revocations and the
    /// last billing event's time are kept. False when the tenant was not known.
    public func delete(_ tenant: String) -> Bool {
        state.withLock { s in
            guard let live = s.visible(tenant) else { return false }
            s.stored[tenant] = Self.tombstone(of: live, stored: s.stored[tenant])
            s.reindex()
            return true
        }
    }

    static func tombstone(of live: TenantRecord, stored: TenantRecord?) -> TenantRecord {
        var t = TenantRecord(plan: live.plan)
        t.deleted = true
        t.revokedKeys = stored?.revokedKeys ?? []
        t.billingEventAt = stored?.billingEventAt
        return t
    }

    /// Adds an API key (by hash, with its scopes and roles) to the tenant, copying a seed into the store first;
    /// in one step with the checks that its id is free and the tenant has room for it.
    public func addKey(_ tenant: String, _ key: TenantRecord.APIKey) -> AddKeyResult {
        state.withLock { s in
            guard var r = s.visible(tenant) else { return .unknownTenant }
            if r.apiKeys.contains(where: { $0.id == key.id }) { return .idTaken }
            if r.apiKeys.count >= TenantRecord.maxAPIKeys { return .full }
            r.apiKeys.append(key)
            r.revokedKeys.remove(key.sha256)
            s.stored[tenant] = r
            s.reindex()
            return .added
        }
    }

    /// Revokes an API key by id, for good: its hash is remembered, so a seed cannot bring it back. False when the
    /// tenant or key is unknown.
    public func revokeKey(_ tenant: String, id: String) -> Bool {
        state.withLock { s in
            guard var r = s.visible(tenant), let key = r.apiKeys.first(where: { $0.id == id }) else { return false }
            r.apiKeys.removeAll { $0.id == id }
            r.revokedKeys.insert(key.sha256)
            s.stored[tenant] = r
            s.reindex()
            return true
        }
    }

    /// Where single-record writes stand: pass it, taken before a full load starts, to ``replaceStored(_:since:)``.
    public var writeMark: Int { state.withLock { $0.writes } }

    /// Replaces every stored record (a full load from the shared store). A tenant written one by one after
    /// `since` (an invalidation or an edit that landed while the load was reading) keeps that newer record.
    public func replaceStored(_ records: [String: TenantRecord], since: Int? = nil) {
        state.withLock { s in
            var next = records
            if let since {
                for (tenant, at) in s.writtenAt where at > since { next[tenant] = s.stored[tenant] }
            }
            s.stored = next  // `writtenAt` stays (one entry per tenant): another load may have started earlier
            s.reindex()
        }
    }

    /// Sets or clears one stored record (an invalidation from another instance).
    public func setStored(_ tenant: String, _ record: TenantRecord?) {
        state.withLock { s in
            s.stored[tenant] = record
            s.writes += 1
            s.writtenAt[tenant] = s.writes
            s.reindex()
        }
    }

    /// A reload brings new seeds; records written through the admin API stay.
    public func reseed(_ seeds: [String: TenantRecord]) {
        state.withLock { s in
            s.seeds = seeds
            s.reindex()
        }
    }
}
