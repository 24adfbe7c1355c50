import NIOHTTP1
import Policy
import Testing

@testable import Gateway

/// A seed key's grants follow the YAML, also after a store write copied the key into the stored record; and a
/// header listed in `Connection` is not routed on.
@Suite struct TenantDirectoryGrantTests {
    static let seedHash = String(repeating: "ab", count: 32)
    static let madeHash = String(repeating: "cd", count: 32)

    static func seeds(roles: [String], scopes: [String]) -> [String: TenantRecord] {
        var acme = TenantRecord(plan: "pro")
        acme.apiKeys = [TenantRecord.APIKey(id: "ci", sha256: seedHash, scopes: scopes, roles: roles)]
        return ["acme": acme]
    }

    @Test func narrowingASeedKeyTakesEffectAfterStoreWrites() throws {
        let directory = TenantDirectory(seeds: Self.seeds(roles: ["admin"], scopes: ["orders:write"]))
        // A key made through the admin API: the seed's key is copied into the stored record with it.
        #expect(directory.addKey("acme", TenantRecord.APIKey(id: "made", sha256: Self.madeHash, scopes: ["x"], roles: ["r"])) == .added)
        #expect(directory.addKey("acme", TenantRecord.APIKey(id: "made", sha256: Self.seedHash)) == .idTaken)
        #expect(directory.addKey("nobody", TenantRecord.APIKey(id: "k", sha256: Self.madeHash)) == .unknownTenant)
        #expect(directory.effective("acme")?.source == .store)
        #expect(directory.apiKeyOwner(sha256Hex: Self.seedHash)?.key.roles == ["admin"])
        // The operator narrows the seed key and reloads.
        directory.reseed(Self.seeds(roles: [], scopes: ["orders:read"]))
        let owner = try #require(directory.apiKeyOwner(sha256Hex: Self.seedHash))
        #expect(owner.tenant == "acme")
        #expect(owner.key.roles.isEmpty)
        #expect(owner.key.scopes == ["orders:read"])
        #expect(directory.record("acme")?.apiKeys.first { $0.id == "ci" }?.roles.isEmpty == true)
        // The admin-made key keeps what it was made with.
        #expect(directory.apiKeyOwner(sha256Hex: Self.madeHash)?.key.roles == ["r"])
        // A record loaded from the shared store (written by an instance with the old YAML) is read the same way.
        var stale = TenantRecord(plan: "pro")
        stale.apiKeys = [TenantRecord.APIKey(id: "ci", sha256: Self.seedHash, scopes: ["orders:write"], roles: ["admin"])]
        directory.setStored("acme", stale)
        #expect(directory.apiKeyOwner(sha256Hex: Self.seedHash)?.key.roles.isEmpty == true)
        // A revoked seed key stays revoked.
        #expect(directory.revokeKey("acme", id: "ci"))
        directory.reseed(Self.seeds(roles: ["admin"], scopes: []))
        #expect(directory.apiKeyOwner(sha256Hex: Self.seedHash) == nil)
    }

    @Test func aHeaderListedInConnectionIsNotRoutedOn() {
        var h = HTTPHeaders()
        h.add(name: "Accept-Version", value: "2")
        #expect(RequestPhases.routingValues(h, "accept-version") == ["2"])
        h.add(name: "Connection", value: "keep-alive, ACCEPT-version ")
        #expect(RequestPhases.routingValues(h, "Accept-Version").isEmpty)
        var other = HTTPHeaders()
        other.add(name: "Accept-Version", value: "2")
        other.add(name: "Connection", value: "close")
        other.add(name: "Connection", value: "x-accept-version")
        #expect(RequestPhases.routingValues(other, "Accept-Version") == ["2"])
    }
}
