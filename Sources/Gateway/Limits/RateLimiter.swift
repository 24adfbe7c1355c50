import Logging
import NIOCore
import Redis
import Policy

/// Charges requests against their buckets and quota, on one event loop.
///
/// - Embedded store: ``MemoryLimits``, decided synchronously.
/// - Redis, `exact`: one script call per request.
/// - Redis, `leased`: the loop takes a batch of units from Redis with the same script (the same atomic
///   arithmetic, `want` > 1) and spends them locally; concurrent requests for one tenant share one call in
///   flight. A denial is remembered until a whole lease has refilled, so a throttled client does not reach
///   Redis on every request.
/// - Redis failing (timeout, lost connection, open circuit): `on_failure: open` admits through a local
///   bucket with the same limits (``MemoryLimits``); `closed` answers 503 `store_unavailable`.
///
/// Lease bound: at most one lease per loop and charge key (``Charge/Key``) is outstanding, of
/// ``leaseSize(_:)`` units (≤ 10% of the smallest burst and ≤ 0.1 s of its rate), and unspent units
/// are dropped after ``leaseMaxAge``. Over any window the fleet admits at most what the Redis bucket
/// allows plus instances × loops × lease size; `gatehouse_ratelimit_lease_tokens` exports what is
/// outstanding on this instance.
final class RateLimiter {
    enum Backend {
        case memory(MemoryLimits)
        case redis(RedisClient, leased: Bool)
    }

    private struct Lease {
        var left = 0
        var result: LimitMath.Result?
        var fetchedAt = 0.0
        /// A denial is remembered until then (leased mode).
        var denied: LimitMath.Result?
        var deniedUntil = 0.0
        var inFlight = false
        var waiters: [(LimitOutcome) -> Void] = []
        /// The quota and day counters the lease's units were counted in when it was taken: unspent units are
        /// given back to them when the lease is dropped, so usage and quota count requests, not leases.
        var counted: [String] = []
    }

    typealias Completion = (LimitOutcome) -> Void

    let backend: Backend
    let settings: LimitSettings
    let script: LimitScript
    let metrics: LoopMetrics
    let logger: Logger
    /// Reads the time a lease arrives at (the request's `now` is the time it was asked for).
    let clock: WallClock
    private var leases: [Charge.Key: Lease] = [:]
    /// Leased units older than this are dropped.
    static let leaseMaxAge = 10.0

    init(backend: Backend, settings: LimitSettings, metrics: LoopMetrics, logger: Logger, clock: WallClock) {
        self.backend = backend
        self.clock = clock
        self.settings = settings
        self.script = LimitScript(keys: settings.keys)
        self.metrics = metrics
        self.logger = logger
    }

    /// Units taken per lease: 0.1 s of the slowest bucket's rate, at most a tenth of its burst, at most a
    /// hundredth of a limited quota, between 1 and 1,000.
    static func leaseSize(_ c: Charge) -> Int {
        var size = 1000
        for b in c.buckets {
            size = min(size, Int(b.spec.ratePerSecond * 0.1), b.spec.burst / 10)
        }
        if let q = c.quotaLimit { size = min(size, q / 100) }
        return max(1, size)
    }

    /// Decides `charge`; `done` runs on this loop, synchronously when no Redis call is needed.
    func charge(_ c: Charge, now: Double, requestID: String, _ done: @escaping Completion) {
        switch backend {
        case .memory(let memory):
            done(LimitOutcome(memory.take(c, want: 1, now: now), c, now: now))
        case .redis(let client, leased: false):
            call(client, c, want: 1, now: now, requestID: requestID) { [self] result in
                switch result {
                case .success(let r): done(LimitOutcome(r, c, now: now))
                case .failure: done(self.failed(c, now: now))
                }
            }
        case .redis(let client, leased: true):
            chargeLeased(client, c, now: now, requestID: requestID, done)
        }
    }

    private func chargeLeased(_ client: RedisClient, _ c: Charge, now: Double, requestID: String, _ done: @escaping Completion) {
        let key = c.key
        var lease = leases[key] ?? Lease()
        if lease.left > 0, now - lease.fetchedAt < Self.leaseMaxAge, let r = lease.result, lease.waiters.isEmpty {
            lease.left -= 1
            leases[key] = lease
            done(LimitOutcome(spent(r, left: lease.left), c, now: now))
            return
        }
        if let denied = lease.denied, now < lease.deniedUntil {
            var d = denied
            d.retryAfter = max(0.001, lease.deniedUntil - now)
            done(LimitOutcome(d, c, now: now))
            return
        }
        if now - lease.fetchedAt >= Self.leaseMaxAge {
            giveBack(lease)
            lease.left = 0
        }
        lease.waiters.append(done)
        let start = !lease.inFlight
        lease.inFlight = true
        leases[key] = lease
        if start { fetchLease(client, c, key: key, now: now, requestID: requestID) }
    }

    /// What a request spending one leased unit is told: the remaining count as of the lease, plus what the
    /// loop still holds.
    private func spent(_ r: LimitMath.Result, left: Int) -> LimitMath.Result {
        var out = r
        out.granted = 1
        if out.remaining != Int.max { out.remaining = r.remaining + left }
        return out
    }

    private func fetchLease(_ client: RedisClient, _ c: Charge, key: Charge.Key, now: Double, requestID: String) {
        let want = Self.leaseSize(c)
        call(client, c, want: want, now: now, requestID: requestID) { [self] result in
            guard var lease = self.leases[key] else { return }
            lease.inFlight = false
            var waiters = lease.waiters
            lease.waiters = []
            let at = self.clock.now()
            switch result {
            case .failure:
                self.leases[key] = lease
                for w in waiters { w(self.failed(c, now: at)) }
                return
            case .success(let r):
                if r.granted == 0 {
                    lease.denied = r
                    // Asked again once a whole lease has refilled (at most 0.1 s after the first token,
                    // by the lease size), so a bucket held at its limit is not drained one token per call.
                    let slowest = c.buckets.map(\.spec.ratePerSecond).min() ?? 1
                    lease.deniedUntil =
                        at + (r.quotaExhausted ? Double(c.period.end) - at : r.retryAfter + Double(want - 1) / slowest)
                    lease.left = 0
                    self.leases[key] = lease
                    for w in waiters { w(LimitOutcome(r, c, now: at)) }
                    return
                }
                lease.denied = nil
                lease.left = r.granted
                lease.result = r
                lease.fetchedAt = at
                lease.counted = [
                    self.script.keys.quota(c.tenant, c.period), self.script.keys.day(c.tenant, LimitKeys.dayStart(now)),
                ]
                let served = waiters.prefix(lease.left)
                waiters.removeFirst(served.count)
                lease.left -= served.count
                let left = lease.left
                lease.waiters = waiters
                self.leases[key] = lease
                for w in served { w(LimitOutcome(self.spent(r, left: left), c, now: at)) }
                if !waiters.isEmpty {
                    self.leases[key]?.inFlight = true
                    self.fetchLease(client, c, key: key, now: at, requestID: requestID)
                }
            }
        }
    }

    /// One script call; NOSCRIPT (a restarted or flushed Redis) is answered by sending the script itself.
    private func call(
        _ client: RedisClient, _ c: Charge, want: Int, now: Double, requestID: String,
        _ done: @escaping (Result<LimitMath.Result, RedisError>) -> Void
    ) {
        let args = script.arguments(c, want: want, now: now)
        let started = NIODeadline.now()
        let metrics = self.metrics
        let logger = self.logger
        func finish(_ result: Result<RedisReply, Error>) {
            metrics.storeDurations.observe(Double((NIODeadline.now() - started).nanoseconds) / 1e9)
            switch result {
            case .success(let reply):
                if let r = LimitScript.result(reply) {
                    done(.success(r))
                } else {
                    metrics.storeErrors += 1
                    logger.error("unexpected rate-limit script reply", metadata: ["gh-request-id": "\(requestID)"])
                    done(.failure(.protocolError("unexpected script reply")))
                }
            case .failure(let error):
                metrics.storeErrors += 1
                let e = error as? RedisError ?? .protocolError("\(error)")
                logger.warning(
                    "rate-limit store call failed", metadata: ["gh-request-id": "\(requestID)", "gh-error": "\(e)"])
                done(.failure(e))
            }
        }
        // The client lives on this loop, so its futures complete here.
        client.send(["EVALSHA", LimitScript.sha] + args).assumeIsolated().whenComplete { result in
            if case .failure(let error) = result, let e = error as? RedisError, e.name == "server",
                e.detail.hasPrefix("NOSCRIPT")
            {
                client.send(["EVAL", LimitScript.source] + args).assumeIsolated().whenComplete(finish)
                return
            }
            finish(result)
        }
    }

    /// The store failed: a local bucket decides (`open`), or 503 (`closed`). The local bucket has this
    /// instance's share of the limits (divided by the live instances last counted in Redis); the quota is
    /// left to Redis (a local counter could not know the period's usage).
    private func failed(_ c: Charge, now: Double) -> LimitOutcome {
        guard settings.failOpen else { return .storeUnavailable }
        let share = max(1, settings.liveInstances.load(ordering: .relaxed))
        var local = c
        local.quotaLimit = nil
        if share > 1 {
            for i in local.buckets.indices {
                local.buckets[i].spec.ratePerSecond /= Double(share)
                local.buckets[i].spec.burst = max(1, local.buckets[i].spec.burst / share)
            }
        }
        var outcome = LimitOutcome(settings.fallback.take(local, want: 1, now: now), local, now: now)
        if outcome.verdict == .admit {
            outcome.failOpen = true
            metrics.failOpenAdmitted += 1
        }
        return outcome
    }

    /// Units leased and not yet spent on this loop.
    var outstandingLeaseUnits: Int { leases.values.reduce(0) { $0 + $1.left } }

    /// Forgets leases that expired (giving their unspent units back) and denials that ran out (called by the
    /// loop's sweeper).
    func sweep(now: Double) {
        guard leases.count > 0 else { return }
        leases = leases.filter { _, l in
            let keep =
                l.inFlight || !l.waiters.isEmpty || (l.left > 0 && now - l.fetchedAt < Self.leaseMaxAge) || now < l.deniedUntil
            if !keep { giveBack(l) }
            return keep
        }
    }

    /// Gives back every lease's unspent units (graceful stop); the calls' futures, to wait for before the
    /// connection closes.
    func giveBackAll() -> [EventLoopFuture<RedisReply>] {
        let all = leases.values.compactMap { giveBack($0) }
        for key in leases.keys { leases[key]?.left = 0 }
        return all
    }

    /// Takes a dropped lease's unspent units off the quota and day counters they were counted in (never below
    /// zero, never creating a key that expired). The tokens are not returned: buckets refill by themselves.
    @discardableResult
    private func giveBack(_ lease: Lease) -> EventLoopFuture<RedisReply>? {
        guard lease.left > 0, !lease.counted.isEmpty, case .redis(let client, leased: true) = backend else { return nil }
        let future = client.send(["EVAL", Self.giveBackSource, String(lease.counted.count)] + lease.counted + [String(lease.left)])
        let logger = self.logger
        future.whenFailure { error in
            logger.warning("unspent leased units could not be given back", metadata: ["gh-error": "\(error)"])
        }
        return future
    }

    static let giveBackSource = """
        local n = tonumber(ARGV[1])
        for i = 1, #KEYS do
          local v = tonumber(redis.call('GET', KEYS[i]) or '0')
          if v > 0 then redis.call('DECRBY', KEYS[i], math.min(n, v)) end
        end
        return 1
        """
}

@available(*, unavailable)
extension RateLimiter: Sendable {}
