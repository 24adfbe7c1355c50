import Testing

@testable import Redis

/// Pure parts of the Cluster client: the slot of a key, the key a command is routed by, the slot map's reply.
@Suite struct RedisSlotsTests {
    @Test func slotsFollowTheHashTagRule() {
        // Reference values from the Redis Cluster specification and CLUSTER KEYSLOT.
        #expect(RedisSlots.slot("123456789") == 12739)
        #expect(RedisSlots.slot("foo") == 12182)
        #expect(RedisSlots.slot("{user1000}.following") == RedisSlots.slot("{user1000}.followers"))
        #expect(RedisSlots.slot("{user1000}.following") == RedisSlots.slot("user1000"))
        // An empty tag hashes the whole key; only the first `{...}` counts.
        #expect(RedisSlots.slot("foo{}{bar}") == RedisSlots.slot(Array("foo{}{bar}".utf8)))
        #expect(RedisSlots.slot("foo{{bar}}zap") == RedisSlots.slot("{bar"))
        #expect(RedisSlots.slot("foo{bar}{zap}") == RedisSlots.slot("bar"))
        // Every key of a tenant shares one slot.
        #expect(RedisSlots.slot("{gh:acme}:tenant") == RedisSlots.slot("{gh:acme}:b:rate"))
        #expect(RedisSlots.slot("{gh:acme}:q:1700000000") == RedisSlots.slot("gh:acme"))
    }

    @Test func commandsAreRoutedByTheirFirstKey() {
        func key(_ args: String...) -> String? {
            RedisSlots.routingKey(args.map { Array($0.utf8) }).map { String(decoding: $0, as: UTF8.self) }
        }
        #expect(key("GET", "{gh:a}:tenant") == "{gh:a}:tenant")
        #expect(key("evalsha", "abc", "2", "{gh:a}:b:x", "{gh:a}:q:1", "7") == "{gh:a}:b:x")
        #expect(key("EVAL", "return 1", "0") == nil)
        #expect(key("PING") == nil)
        #expect(key("PUBLISH", "gh:tenants:invalidate", "acme") == nil)
        #expect(key("SCAN", "0", "MATCH", "x") == nil)
        #expect(key("ZADD", "gh:instances", "1", "i") == "gh:instances")
    }

    @Test func theSlotMapIsReadFromClusterSlots() throws {
        let reply = RedisReply.array([
            .array([.integer(0), .integer(5460), .array([.string(Array("127.0.0.1".utf8)), .integer(7000), .string(Array("id1".utf8))]),
                    .array([.string(Array("127.0.0.1".utf8)), .integer(7003)])]),
            .array([.integer(5461), .integer(16383), .array([.string(Array("::1".utf8)), .integer(7001)])]),
        ])
        let map = try #require(ClusterRouter.parseSlots(reply))
        #expect(map.count == 2)
        #expect(map[0].start == 0 && map[0].end == 5460 && map[0].master == "127.0.0.1:7000")
        #expect(map[1].master == "[::1]:7001")
        #expect(ClusterRouter.parseSlots(.array([.array([.integer(5), .integer(2), .array([])])])) == nil)
        #expect(ClusterRouter.parseSlots(.status("OK")) == nil)
    }

    @Test func endpointsParse() {
        typealias E = RedisClient.Configuration.Endpoint
        #expect(E(parsing: "10.0.0.1:7000", defaultPort: 6379) == E(host: "10.0.0.1", port: 7000))
        #expect(E(parsing: "redis.internal", defaultPort: 26379) == E(host: "redis.internal", port: 26379))
        #expect(E(parsing: "[::1]:7001", defaultPort: 6379) == E(host: "::1", port: 7001))
        #expect(E(parsing: "x:0", defaultPort: 6379) == nil)
        #expect(E(parsing: ":6379", defaultPort: 6379) == nil)
    }
}
