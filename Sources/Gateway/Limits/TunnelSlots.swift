import Logging
import NIOCore
import Redis
import Synchronization

/// A tenant's place among its open WebSocket tunnels, held from the handshake's admission to the tunnel's close.
struct TunnelSlot: Equatable {
    var tenant: String
    /// The tunnel's member in the tenant's set (Redis), unique to this instance, loop and tunnel.
    var member: String
    /// Registered in the store (false: admitted by `on_failure: open` while the store failed, or embedded).
    var registered: Bool
}

/// The embedded store's tunnel counts: one per instance, shared by its loops.
final class TunnelCounts: Sendable {
    private let counts = Mutex<[String: Int]>([:])

    /// Takes a place for `tenant` unless it holds `limit` already.
    func take(_ tenant: String, limit: Int) -> Bool {
        counts.withLock { c in
            let n = c[tenant] ?? 0
            guard n < limit else { return false }
            c[tenant] = n + 1
            return true
        }
    }

    func give(_ tenant: String) {
        counts.withLock { c in
            let n = (c[tenant] ?? 1) - 1
            c[tenant] = n > 0 ? n : nil
        }
    }

    func count(_ tenant: String) -> Int { counts.withLock { $0[tenant] ?? 0 } }
}

/// Counts open WebSocket tunnels per tenant against `max_websockets`, on one event loop.
///
/// - Embedded store: ``TunnelCounts``, per instance.
/// - Redis: fleet-wide. Each tunnel is a member of the sorted set `{<prefix>:<tenant>}:ws`, scored by the server
///   time (ms) it expires at, ``ttl`` ahead. A script drops expired members, counts the rest and adds the new
///   one only under the limit, atomically. Every loop re-scores its open tunnels each ``renewEvery``, so the
///   tunnels of a crashed instance drop out within ``ttl``; a closed tunnel is removed at once. A store failure
///   follows `on_failure`: `open` admits the tunnel unregistered, `closed` refuses it (503).
///
/// Accuracy: with Redis the limit holds fleet-wide except for tunnels admitted while the store failed, and
/// for a crashed instance's tunnels, which count until they expire (at most ``ttl``).
final class TunnelSlots {
    enum Backend {
        case memory(TunnelCounts)
        case redis(RedisClient, keys: LimitKeys, failOpen: Bool)
    }

    enum Verdict: Equatable {
        case granted(TunnelSlot)
        /// The tenant holds its limit.
        case full
        /// The store failed and `on_failure` is `closed`.
        case storeUnavailable
    }

    static let ttl: Int64 = 30_000
    static let renewEvery = TimeAmount.seconds(10)

    let backend: Backend
    let logger: Logger
    /// This instance and loop, the prefix of every member this registry adds.
    private let memberPrefix: String
    private var counter: UInt64 = 0
    /// Registered tunnels of this loop, by tenant, for renewal.
    private var open: [String: Set<String>] = [:]
    private var lastRenewal = NIODeadline.now()

    init(backend: Backend, memberPrefix: String, logger: Logger) {
        self.backend = backend
        self.memberPrefix = memberPrefix
        self.logger = logger
    }

    static let acquireScript = """
        local t = redis.call('TIME')
        local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
        redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
        if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
        redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
        redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]))
        return 1
        """

    /// Re-scores the members given (re-adding any the store lost, e.g. after a restart).
    static let renewScript = """
        local t = redis.call('TIME')
        local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
        local ttl = tonumber(ARGV[1])
        for i = 2, #ARGV do redis.call('ZADD', KEYS[1], now + ttl, ARGV[i]) end
        redis.call('PEXPIRE', KEYS[1], ttl)
        return 1
        """

    static func key(_ keys: LimitKeys, _ tenant: String) -> String { keys.tag(tenant) + "ws" }

    /// Asks for a place for `tenant` under `limit`; `done` runs on this loop (at once with the embedded store).
    func acquire(tenant: String, limit: Int, requestID: String, _ done: @escaping (Verdict) -> Void) {
        counter &+= 1
        let member = memberPrefix + "-" + String(counter, radix: 36)
        switch backend {
        case .memory(let counts):
            done(counts.take(tenant, limit: limit) ? .granted(TunnelSlot(tenant: tenant, member: member, registered: false)) : .full)
        case .redis(let client, let keys, let failOpen):
            let args = ["EVAL", Self.acquireScript, "1", Self.key(keys, tenant), member, String(limit), String(Self.ttl)]
            client.send(args).assumeIsolated().whenComplete { [self] result in
                switch result {
                case .success(let reply) where reply.integer == 1:
                    open[tenant, default: []].insert(member)
                    done(.granted(TunnelSlot(tenant: tenant, member: member, registered: true)))
                case .success(let reply) where reply.integer == 0:
                    done(.full)
                case .success(let reply):
                    logger.error(
                        "unexpected tunnel-count script reply", metadata: ["gh-request-id": "\(requestID)", "gh-reply": "\(reply)"])
                    done(storeFailed(client, keys, tenant, member, failOpen: failOpen))
                case .failure(let error):
                    logger.warning(
                        "tunnel-count store call failed", metadata: ["gh-request-id": "\(requestID)", "gh-error": "\(error)"])
                    done(storeFailed(client, keys, tenant, member, failOpen: failOpen))
                }
            }
        }
    }

    /// The store did not answer the acquire: `on_failure` decides. A timed-out call may still have added the
    /// member, so it is taken out again (the ZREM follows the script on the same connection) rather than count
    /// against the tenant until it expires.
    private func storeFailed(
        _ client: RedisClient, _ keys: LimitKeys, _ tenant: String, _ member: String, failOpen: Bool
    ) -> Verdict {
        _ = client.send(["ZREM", Self.key(keys, tenant), member])
        return failOpen ? .granted(TunnelSlot(tenant: tenant, member: member, registered: false)) : .storeUnavailable
    }

    /// The tunnel closed (or never opened): its place is given back.
    func release(_ slot: TunnelSlot) {
        switch backend {
        case .memory(let counts):
            counts.give(slot.tenant)
        case .redis(let client, let keys, _):
            guard slot.registered else { return }
            open[slot.tenant]?.remove(slot.member)
            if open[slot.tenant]?.isEmpty == true { open[slot.tenant] = nil }
            let key = Self.key(keys, slot.tenant)
            client.send(["ZREM", key, slot.member]).whenFailure { [logger] error in
                // It expires within the ttl anyway.
                logger.warning("tunnel-count release failed", metadata: ["gh-error": "\(error)", "gh-tunnel": "\(slot.member)"])
            }
        }
    }

    /// Called by the loop's sweeper: re-scores this loop's tunnels every ``renewEvery``.
    func sweep(now: NIODeadline) {
        guard case .redis(let client, let keys, _) = backend, !open.isEmpty, now - lastRenewal >= Self.renewEvery else {
            return
        }
        lastRenewal = now
        for (tenant, members) in open {
            let args = ["EVAL", Self.renewScript, "1", Self.key(keys, tenant), String(Self.ttl)] + members.sorted()
            _ = client.send(args)
        }
    }

    /// Tunnels this loop holds in the store.
    var registeredCount: Int { open.values.reduce(0) { $0 + $1.count } }
}

@available(*, unavailable)
extension TunnelSlots: Sendable {}
