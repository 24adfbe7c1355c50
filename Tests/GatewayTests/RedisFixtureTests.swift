import Foundation
import Testing

/// Live: the Redis Cluster and Sentinel fixtures themselves, against real redis-server processes, so a later
/// failure in a gateway test is about the gateway, not about its fixture.
@Suite(.serialized) struct RedisFixtureTests {
    /// What `body` threw (its description), or "no error".
    func failure(_ body: () throws -> Any) -> String {
        do {
            _ = try body()
            return "no error"
        } catch {
            return "\(error)"
        }
    }

    @Test func aClusterOfThreeMastersItsSlotsTenantsAndAMigration() throws {
        let cluster = try RedisCluster(masters: 3, replicasPerMaster: 1)
        defer { cluster.stop() }
        #expect(cluster.ports.count == 6)
        let masters = try cluster.masters()
        #expect(masters.count == 3)
        for port in masters {
            let me = try #require(try cluster.view(asking: port).first { $0.flags.contains("myself") })
            #expect(me.isMaster && !me.slots.isEmpty)
        }

        // The slot rule agrees with the server's, hash tags included (and CRC16-XMODEM's check value).
        #expect(RedisCluster.slot("123456789") == 0x31C3)
        for key in [
            "foo", "user:1000", "{user1000}.following", "{user1000}.followers", "foo{}{bar}", "foo{{bar}}zap",
            "foo{bar}{zap}", "{rl:acme}:minute", "tenant-é-😀",
        ] {
            #expect(RedisCluster.slot(key) == Int(try cluster.cli(masters[0], "CLUSTER", "KEYSLOT", key)), "\(key)")
        }

        // Tenants on every master, each where its hash tag's slot lives.
        let tenants = try cluster.tenants(prefix: "rl", perMaster: 2)
        #expect(Set(tenants.keys) == Set(masters))
        for (port, ids) in tenants {
            #expect(ids.count == 2)
            for id in ids { #expect(try cluster.master(ofSlot: RedisCluster.slot("{rl:\(id)}")) == port) }
        }

        // One slot with a key in it moves, in steps: served by the source, then ASK, then owned by the target.
        let key = "{mig}:k"
        let slot = RedisCluster.slot(key)
        let source = try cluster.master(ofSlot: slot)
        let target = try #require(masters.first { $0 != source })
        try cluster.cli(source, "SET", key, "v")
        try cluster.beginMigration(slot: slot, from: source, to: target)
        #expect(try cluster.cli(source, "GET", key) == "v")
        #expect(try cluster.moveKeys(slot: slot, from: source, to: target) == 1)
        #expect(failure { try cluster.cli(source, "GET", key) }.contains("ASK \(slot) 127.0.0.1:\(target)"))
        try cluster.finishMigration(slot: slot, to: target)
        #expect(try cluster.master(ofSlot: slot) == target)
        #expect(try cluster.cli(target, "GET", key) == "v")
        #expect(failure { try cluster.cli(source, "GET", key) }.contains("MOVED \(slot) 127.0.0.1:\(target)"))
    }

    @Test func aKilledClusterMastersSlotGetsANewMasterAndTheOldOneRejoinsAsAReplica() throws {
        let cluster = try RedisCluster()
        defer { cluster.stop() }
        let old = try cluster.master(ofSlot: 0)
        cluster.kill(old)
        let new = try cluster.waitForNewMaster(ofSlot: 0, other: old, seconds: 10)
        #expect(new != old)
        let masters = try cluster.masters()
        #expect(masters.count == 3 && masters.contains(new) && !masters.contains(old))
        try cluster.restart(old)
        try waitUntil { (try? cluster.cli(old, "ROLE"))?.hasPrefix("slave\n127.0.0.1\n\(new)\n") == true }
    }

    @Test func theSentinelSetFailsOverToTheReplica() throws {
        let set = try RedisSentinelSet()
        defer { set.stop() }
        #expect(set.name == "gh-main" && set.sentinelPorts.count == 3)
        let first = try set.masterPort()
        #expect(first == set.dataPorts[0])
        try set.cli(first, "SET", "k", "v")
        #expect(try set.cli(first, "WAIT", "1", "5000") == "1")
        let killed = try set.killMaster()
        #expect(killed == first)
        let new = try set.waitForFailover(from: killed, seconds: 15)
        #expect(new == set.dataPorts[1])
        #expect(try set.cli(new, "GET", "k") == "v")
        try set.restart(killed)
        #expect(set.isAlive(killed))
    }
}
