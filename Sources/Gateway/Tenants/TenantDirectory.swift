import Policy
import Synchronization

/// The tenant records the gateway enforces: YAML seeds, overridden by records written through the admin API.
///
/// This is the embedded in-memory store (one instance, used when no `store` is configured): lookups on the
/// request path take an uncontended lock for a dictionary read; writes rebuild the API key index.
public final class TenantDirectory: TenantRecords {
    public enum Source: String, Sendable { case seed, store }

    private struct State {
        var seeds: [String: TenantRecord]
        var stored: [String: TenantRecord] = [:]
        var owners: [String: (tenant: String, id: String)] = [:]

        mutating func reindex() {
            owners = [:]
            for tenant in Set(seeds.keys).union(stored.keys) {
                for key in (stored[tenant] ?? seeds[tenant])?.apiKeys ?? [] { owners[key.sha256] = (tenant, key.id) }
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
        state.withLock { $0.stored[tenant] ?? $0.seeds[tenant] }
    }

    public func apiKeyOwner(sha256Hex: String) -> (tenant: String, id: String)? {
        state.withLock { $0.owners[sha256Hex] }
    }

    /// The effective record and where it comes from.
    public func effective(_ tenant: String) -> (record: TenantRecord, source: Source)? {
        state.withLock { s in
            if let r = s.stored[tenant] { return (r, .store) }
            if let r = s.seeds[tenant] { return (r, .seed) }
            return nil
        }
    }

    /// Creates or replaces the store's record; the tenant's API keys are kept. True when the tenant was unknown.
    @discardableResult
    public func put(_ tenant: String, _ record: TenantRecord) -> Bool {
        state.withLock { s in
            var r = record
            r.apiKeys = (s.stored[tenant] ?? s.seeds[tenant])?.apiKeys ?? []
            let created = s.stored[tenant] == nil && s.seeds[tenant] == nil
            s.stored[tenant] = r
            s.reindex()
            return created
        }
    }

    /// Removes the store's record (a seed, if any, applies again). False when there was none.
    public func delete(_ tenant: String) -> Bool {
        state.withLock { s in
            guard s.stored.removeValue(forKey: tenant) != nil else { return false }
            s.reindex()
            return true
        }
    }

    /// Adds an API key (by hash) to the tenant, copying a seed into the store first. False for an unknown tenant.
    public func addKey(_ tenant: String, id: String, sha256: String) -> Bool {
        state.withLock { s in
            guard var r = s.stored[tenant] ?? s.seeds[tenant] else { return false }
            r.apiKeys.append(.init(id: id, sha256: sha256))
            s.stored[tenant] = r
            s.reindex()
            return true
        }
    }

    /// Revokes an API key by id. False when the tenant or key is unknown.
    public func revokeKey(_ tenant: String, id: String) -> Bool {
        state.withLock { s in
            guard var r = s.stored[tenant] ?? s.seeds[tenant], r.apiKeys.contains(where: { $0.id == id }) else {
                return false
            }
            r.apiKeys.removeAll { $0.id == id }
            s.stored[tenant] = r
            s.reindex()
            return true
        }
    }

    /// Replaces every stored record (a full load from the shared store).
    public func replaceStored(_ records: [String: TenantRecord]) {
        state.withLock { s in
            s.stored = records
            s.reindex()
        }
    }

    /// Sets or clears one stored record (an invalidation from another instance).
    public func setStored(_ tenant: String, _ record: TenantRecord?) {
        state.withLock { s in
            s.stored[tenant] = record
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
