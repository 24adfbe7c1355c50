import NIOCore
import Redis
import Policy

/// Reads a tenant's quota counter and per-day counts for `GET /admin/tenants/{id}/usage`, from the embedded
/// store or from Redis (one MGET).
struct UsageReader: Sendable {
    let memory: MemoryLimits?
    let client: RedisClient?
    let keys: LimitKeys

    func read(tenant: String, period: BillingPeriod, now: Double, on eventLoop: EventLoop)
        -> EventLoopFuture<(used: Int, days: [Int: Int])>
    {
        if let memory { return eventLoop.makeSucceededFuture(memory.usage(tenant: tenant, period: period, now: now)) }
        guard let client else { return eventLoop.makeFailedFuture(RedisError.unavailable("no store")) }
        let days = period.days(through: now)
        let args = ["MGET", keys.quota(tenant, period)] + days.map { keys.day(tenant, $0) }
        return client.send(args, timeout: .seconds(1)).flatMapThrowing { reply in
            guard case .array(let items) = reply, items.count == days.count + 1 else {
                throw RedisError.protocolError("unexpected MGET reply")
            }
            let values = items.map { $0.string.flatMap { Int($0) } ?? 0 }
            var perDay: [Int: Int] = [:]
            for (i, d) in days.enumerated() { perDay[d] = values[i + 1] }
            return (values[0], perDay)
        }
    }

    /// The usage document: plan, quota, period, used, remaining and the per-day counts.
    static func document(tenant: String, record: TenantRecord, quota: PlanConfig.Quota, period: BillingPeriod, used: Int, days: [Int: Int]) -> String {
        var json = "{\"tenant\":\(JSONText.quote(tenant)),\"plan\":\(JSONText.quote(record.plan))"
        switch quota {
        case .unlimited:
            json += ",\"quota\":\"unlimited\""
        case .limited(let requests, let per):
            json += ",\"quota\":{\"requests\":\(requests),\"per\":\"\(per.rawValue)\"}"
        }
        json += ",\"period_start\":\"\(CivilDate.rfc3339(period.start))\",\"period_end\":\"\(CivilDate.rfc3339(period.end))\""
        json += ",\"used\":\(used)"
        if case .limited(let requests, _) = quota {
            json += ",\"remaining\":\(max(0, requests - used))"
        } else {
            json += ",\"remaining\":null"
        }
        json += ",\"days\":[" + days.keys.sorted().map { "{\"date\":\"\(CivilDate.isoDate($0))\",\"requests\":\(days[$0]!)}" }
            .joined(separator: ",") + "]}"
        return json
    }
}
