import NIOCore
import Redis
import Policy

/// The Redis side of limits: one Lua script per decision, run with EVALSHA (EVAL once after a NOSCRIPT),
/// doing in one atomic step what ``LimitMath`` does in memory, on Redis server time (`TIME`), so every
/// instance reads the same clock.
///
/// KEYS: the buckets (n), the quota counter, the day counter.
/// ARGV: n, want, quota limit (-1: unlimited), quota counter expiry (unix s: a day after the period), day
/// counter expiry (unix s: ``LimitKeys/dayRetention`` after the day's start),
/// then rate (tokens/s) and burst of each bucket.
/// Reply: granted, remaining (-1: no buckets), limit, retry (ms), reset (ms), quota used after, quota exhausted (0/1).
struct LimitScript: Sendable {
    static let source = """
        local n = tonumber(ARGV[1])
        local grant = tonumber(ARGV[2])
        local qlimit = tonumber(ARGV[3])
        local t = redis.call('TIME')
        local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
        if grant < 1 then grant = 1 end
        local tokens = {}
        local retry = 0
        for i = 1, n do
          local rate = tonumber(ARGV[4 + 2 * i])
          local burst = tonumber(ARGV[5 + 2 * i])
          local s = redis.call('HMGET', KEYS[i], 'tk', 'ts')
          local tk = tonumber(s[1])
          local ts = tonumber(s[2])
          if tk == nil or ts == nil then tk = burst; ts = now end
          if now > ts then tk = tk + (now - ts) * rate end
          if tk > burst then tk = burst end
          tokens[i] = tk
          local whole = math.floor(tk)
          if whole < grant then grant = whole end
          if whole < 1 then
            local w = (1 - tk) / rate
            if w > retry then retry = w end
          end
        end
        local used = tonumber(redis.call('GET', KEYS[n + 1]) or '0')
        local qout = 0
        if qlimit >= 0 then
          local left = qlimit - used
          if left < 1 then qout = 1; grant = 0 elseif left < grant then grant = left end
        end
        if grant < 0 then grant = 0 end
        local remaining = -1
        local limit = 0
        local reset = 0
        for i = 1, n do
          local rate = tonumber(ARGV[4 + 2 * i])
          local burst = tonumber(ARGV[5 + 2 * i])
          local tk = tokens[i]
          if grant > 0 then
            tk = tk - grant
            redis.call('HSET', KEYS[i], 'tk', string.format('%.6f', tk), 'ts', string.format('%.6f', now))
            redis.call('PEXPIRE', KEYS[i], math.ceil((burst - tk) / rate * 1000) + 1000)
          end
          local whole = math.floor(tk)
          if remaining < 0 or whole < remaining then remaining = whole; limit = burst end
          local r = (burst - tk) / rate
          if r > reset then reset = r end
        end
        if grant > 0 then
          used = redis.call('INCRBY', KEYS[n + 1], grant)
          if used == grant then redis.call('EXPIREAT', KEYS[n + 1], ARGV[4]) end
          local d = redis.call('INCRBY', KEYS[n + 2], grant)
          if d == grant then redis.call('EXPIREAT', KEYS[n + 2], ARGV[5]) end
        end
        return {grant, remaining, limit, math.ceil(retry * 1000), math.ceil(reset * 1000), used, qout}
        """
    static let sha = Digest.hex(Digest.sha1(Array(source.utf8)))

    let keys: LimitKeys

    /// The arguments of one decision, after the command name and script (or its sha).
    func arguments(_ charge: Charge, want: Int, now: Double) -> [String] {
        let n = charge.buckets.count
        var args: [String] = []
        args.reserveCapacity(3 + n * 3 + 5)
        args.append(String(n + 2))
        for b in charge.buckets { args.append(keys.bucket(charge.tenant, b.name)) }
        args.append(keys.quota(charge.tenant, charge.period))
        let day = LimitKeys.dayStart(now)
        args.append(keys.day(charge.tenant, day))
        args.append(String(n))
        args.append(String(want))
        args.append(String(charge.quotaLimit ?? -1))
        args.append(String(charge.period.end + 86_400))
        args.append(String(day + LimitKeys.dayRetention))
        for b in charge.buckets {
            args.append(String(b.spec.ratePerSecond))
            args.append(String(b.spec.burst))
        }
        return args
    }

    /// Reads the script's reply as a ``LimitMath/Result``.
    static func result(_ reply: RedisReply) -> LimitMath.Result? {
        guard case .array(let items) = reply, items.count == 7 else { return nil }
        let v = items.map { $0.integer }
        guard let granted = v[0], let remaining = v[1], let limit = v[2], let retryMs = v[3], let resetMs = v[4],
            let used = v[5], let exhausted = v[6]
        else { return nil }
        return LimitMath.Result(
            granted: Int(granted), remaining: remaining < 0 ? Int.max : Int(remaining), limit: Int(limit),
            retryAfter: Double(retryMs) / 1000, resetAfter: Double(resetMs) / 1000, quotaUsed: Int(used),
            quotaExhausted: exhausted == 1)
    }
}
