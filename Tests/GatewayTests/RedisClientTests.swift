import Foundation
import Logging
import NIOCore
import NIOPosix
import Testing

@testable import Gateway
@testable import Redis

/// Live: the hiredis-on-NIO Redis client against a real redis-server.
@Suite(.serialized) struct RedisClientTests {
    static let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)

    func client(_ redis: RedisServer, timeout: TimeAmount = .milliseconds(200)) throws -> RedisClient {
        var config = try #require(RedisClient.Configuration(url: "redis://127.0.0.1:\(redis.port)/2"))
        config.timeout = timeout
        let c = RedisClient(configuration: config, eventLoop: Self.group.next(), logger: Logger(label: "test"))
        c.start()
        try waitUntil { (try? c.isAvailable.wait()) == true }
        return c
    }

    @Test func urlParsing() throws {
        let c = try #require(RedisClient.Configuration(url: "redis://user:p%40ss:word@10.0.0.1:6380/3"))
        #expect(c.host == "10.0.0.1")
        #expect(c.port == 6380)
        #expect(c.username == "user")
        #expect(c.password == "p%40ss:word")
        #expect(c.database == 3)
        #expect(RedisClient.Configuration(url: "redis://localhost")?.port == 6379)
        #expect(RedisClient.Configuration(url: "http://x:1") == nil)
        #expect(RedisClient.Configuration(url: "redis://x:99999") == nil)
    }

    @Test func repliesOfEveryTypeInPipelinedOrder() throws {
        let redis = try RedisServer()
        defer { redis.stop() }
        // A generous timeout: this is about order, and the suites run side by side on two cores.
        let c = try client(redis, timeout: .seconds(5))
        defer { try? c.close().wait() }
        #expect(try c.send(["SET", "k", "v\u{0}binary"]).wait() == .status("OK"))
        #expect(try c.send(["GET", "k"]).wait().string == "v\u{0}binary")
        #expect(try c.send(["GET", "missing"]).wait() == .null)
        #expect(try c.send(["RPUSH", "l", "a", "b"]).wait() == .integer(2))
        #expect(try c.send(["LRANGE", "l", "0", "-1"]).wait() == .array([.string(Array("a".utf8)), .string(Array("b".utf8))]))
        #expect(throws: RedisError.self) { try c.send(["NOSUCHCOMMAND"]).wait() }
        // 2,000 commands in flight at once: every reply reaches its own caller, in order.
        let futures = (1...2000).map { _ in c.send(["INCR", "counter"]) }
        let values = try futures.map { try $0.wait().integer ?? -1 }
        #expect(values == Array(1...2000).map(Int64.init))
        // The database from the URL was selected.
        #expect(try c.send(["CLIENT", "INFO"]).wait().string?.contains("db=2") == true)
    }

    @Test func aStoppedRedisFailsCallsWithinTheTimeoutThenFast() throws {
        let redis = try RedisServer()
        defer { redis.stop() }
        let c = try client(redis, timeout: .milliseconds(100))
        defer { try? c.close().wait() }
        redis.pause()
        for _ in 0..<3 {
            let start = DispatchTime.now()
            do {
                _ = try c.send(["PING"]).wait()
                Issue.record("PING answered while Redis was stopped")
            } catch let error as RedisError {
                #expect(error.isTimeout, "\(error)")
            }
            let ms = Double(DispatchTime.now().uptimeNanoseconds - start.uptimeNanoseconds) / 1e6
            #expect(ms < 2000, "a call took \(ms) ms against a 100 ms timeout")
        }
        // The circuit is open: calls fail without waiting for the timeout.
        do {
            _ = try c.send(["PING"]).wait()
            Issue.record("a call went through while Redis was stopped")
        } catch let error as RedisError {
            #expect(error.isUnavailable, "\(error)")
        }
        redis.resume()
        try waitUntil { (try? c.send(["PING"]).wait()) == .status("PONG") }
    }

    @Test func reconnectsAfterARestart() throws {
        let redis = try RedisServer()
        defer { redis.stop() }
        let c = try client(redis)
        defer { try? c.close().wait() }
        #expect(try c.send(["SET", "a", "1"]).wait() == .status("OK"))
        try redis.restart()
        try waitUntil { (try? c.send(["PING"]).wait()) == .status("PONG") }
        #expect(try c.send(["GET", "a"]).wait() == .null)  // a new server, a new dataset
    }
}
