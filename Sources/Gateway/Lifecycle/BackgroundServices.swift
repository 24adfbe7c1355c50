import Logging
import Redis
import ServiceLifecycle

/// A part started when its service runs and stopped when the group shuts it down (the tenant store's
/// subscriber, the health checks): what it does in between happens on the event loops.
struct ClosureService: Service, CustomStringConvertible {
    let name: String
    let start: @Sendable () -> Void
    let stop: @Sendable () -> Void

    var description: String { name }

    func run() async throws {
        start()
        try? await gracefulShutdown()
        stop()
    }
}

/// Every 2 s, this instance's heartbeat in the sorted set `<prefix>:instances` (scored by time), entries older
/// than 6 s dropped, and the live count kept for the fail-open buckets; on shutdown the instance leaves the set.
struct InstanceHeartbeat: Service {
    let client: RedisClient
    let key: String
    let id: String
    let settings: LimitSettings
    let clock: WallClock

    func run() async throws {
        while !Task.isShuttingDownGracefully && !Task.isCancelled {
            let now = clock.now()
            _ = client.send(["ZADD", key, String(now), id])
            _ = client.send(["ZREMRANGEBYSCORE", key, "-inf", String(now - 6)])
            if let n = try? await client.send(["ZCARD", key]).get().integer {
                settings.liveInstances.store(max(1, Int(n)), ordering: .relaxed)
            }
            try? await cancelWhenGracefulShutdown { try await Task.sleep(for: .seconds(2)) }
        }
        _ = try? await client.send(["ZREM", key, id]).get()
    }
}

/// The key-set refresher (remote JWKS and OpenID discovery): fetches before the listeners serve (they wait for
/// it), refreshes until shutdown, and stops after the drain (requests still draining may ask for a refetch).
struct KeySetService: Service {
    let server: GatewayServer

    func run() async throws {
        await server.startKeySets()
        try? await gracefulShutdown()
        server.stopKeySets()
    }
}
