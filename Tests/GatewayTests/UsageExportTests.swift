import Foundation
import NIOCore
import NIOPosix
import Testing

@testable import Gateway
@testable import Policy

/// The usage export's parts without a network: day-counter keys, the embedded store's counters over days of an
/// injected clock, and the admin endpoint's query checks.
@Suite struct UsageExportTests {
    static let nov24 = CivilDate.days(year: 2026, month: 11, day: 24) * 86_400

    @Test func dayKeysAreParsedUnderTheirPrefixOnly() {
        let keys = LimitKeys(prefix: "gh")
        let key = keys.day("acme.eu-1", Self.nov24)
        #expect(key == "{gh:acme.eu-1}:d:\(Self.nov24)")
        #expect(keys.parseDay(key)! == ("acme.eu-1", Self.nov24))
        // A sibling prefix (gh:eu), other key kinds, malformed days and invalid tenant ids are not ours.
        for other in [
            "{gh:eu:acme}:d:\(Self.nov24)", "{gh:acme}:q:\(Self.nov24)", "{gh:acme}:b:t", "{gh:acme}:tenant",
            "{gh:acme}:d:", "{gh:acme}:d:12x", "{gh:acme}:d:\(Self.nov24 + 1)", "{gh:acme}:d:-86400", "{gh:}:d:0",
            "{gh:a b}:d:0", "{ghx:acme}:d:0", "gh:acme:d:0", "{gh:acme}:d:\(Self.nov24):x",
            "{gh:\(String(repeating: "a", count: 65))}:d:0",
        ] {
            #expect(keys.parseDay(other) == nil, Comment(rawValue: other))
        }
        #expect(keys.dayPattern == "{gh:*}:d:*")
        #expect(LimitKeys(prefix: "g*h[1]?\\").dayPattern == "{g\\*h\\[1\\]\\?\\\\:*}:d:*")
        #expect(LimitKeys(prefix: "g*h").parseDay("{g*h:acme}:d:0")! == ("acme", 0))
    }

    /// A charge of `tenant` with a monthly quota and no bucket.
    func charge(_ tenant: String, at now: Double) -> Charge {
        Charge(
            tenant: tenant, plan: "p", buckets: [], quotaLimit: 1000,
            period: BillingPeriod.containing(now, per: .month, anchor: 1))
    }

    @Test func theEmbeddedStoreCountsEachUTCDayAndKeepsItSixtyTwoDays() throws {
        let memory = MemoryLimits()
        let day = Double(Self.nov24)
        // acme: 3 on 23 November (the last one a second before midnight), 2 on the 24th; globex: 1 on the 24th.
        for t in [day - 3600, day - 60, day - 1, day, day + 86_399] {
            #expect(memory.take(charge("acme", at: t), want: 1, now: t).granted == 1)
        }
        #expect(memory.take(charge("globex", at: day + 10), want: 1, now: day + 10).granted == 1)
        let both = UsageRange(from: Self.nov24 - 86_400, to: Self.nov24)
        func rows(_ range: UsageRange, _ tenant: String? = nil, now: Double) -> [String] {
            UsageReport(range: range, rows: memory.dayCounts(range, tenant: tenant, now: now)).rows.map {
                "\($0.tenant) \(CivilDate.isoDate($0.day)) \($0.requests)"
            }
        }
        let now = day + 86_400
        #expect(rows(both, now: now) == ["acme 2026-11-23 3", "acme 2026-11-24 2", "globex 2026-11-24 1"])
        #expect(rows(both, "globex", now: now) == ["globex 2026-11-24 1"])
        #expect(rows(UsageRange(from: Self.nov24, to: Self.nov24), now: now) == ["acme 2026-11-24 2", "globex 2026-11-24 1"])
        #expect(rows(UsageRange(from: Self.nov24 + 86_400, to: Self.nov24 + 86_400), now: now).isEmpty)
        // The per-day counts of the usage endpoint are the same counters.
        let period = BillingPeriod.containing(day, per: .month, anchor: 1)
        let usage = memory.usage(tenant: "acme", period: period, now: now)
        #expect(usage.days[Self.nov24 - 86_400] == 3 && usage.days[Self.nov24] == 2 && usage.used == 5)
        // A day is kept 62 days from its start, well past its month (a day after the period's end before).
        let keptUntil = Double(Self.nov24 + LimitKeys.dayRetention)
        #expect(rows(both, now: keptUntil - 86_400 - 1) == ["acme 2026-11-23 3", "acme 2026-11-24 2", "globex 2026-11-24 1"])
        #expect(rows(both, now: keptUntil - 1) == ["acme 2026-11-24 2", "globex 2026-11-24 1"])
        #expect(rows(both, now: keptUntil).isEmpty)
    }

    @Test func theAdminEndpointChecksItsQuery() throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        defer { try? group.syncShutdownGracefully() }
        let config = try ConfigLoader(readFile: { _ in "upstreams: {u: {targets: [127.0.0.1:1]}}\nroutes: []\n" }).load(path: "gw.yaml")
        let tenants = TenantDirectory(seeds: config.tenants)
        let clock = WallClock.fixed(Double(Self.nov24) + 3600)
        let memory = MemoryLimits()
        let at = Double(Self.nov24) + 60
        _ = memory.take(charge("acme", at: at), want: 1, now: at)
        _ = memory.take(charge("acme", at: at), want: 1, now: at)
        let keys = LimitKeys(prefix: "gh")
        let api = AdminAPI(
            tenants: tenants, store: MemoryTenantStore(directory: tenants, eventLoop: group.next(), clock: clock),
            config: config, eventLoop: group.next(), usage: UsageReader(memory: memory, client: nil, keys: keys),
            export: UsageExporter(memory: memory, client: nil, keys: keys), clock: clock)
        func get(_ query: String) throws -> AdminAPI.Response {
            try #require(api.handle(method: "GET", path: "/admin/usage", query: query[...], body: [], requestID: "r1")).wait()
        }
        let ok = try get("from=2026-11-01&to=2026-11-30")
        #expect(ok.status == 200 && ok.contentType == "application/json")
        #expect(ok.body == #"{"from":"2026-11-01","to":"2026-11-30","usage":[{"tenant":"acme","date":"2026-11-24","requests":2}]}"#)
        #expect(try get("to=2026-11-24&from=2026-11-24&tenant=acme").body.contains(#""requests":2"#))
        #expect(try get("from=2026-11-24&to=2026-11-24&tenant=globex").body.hasSuffix(#""usage":[]}"#))
        #expect(try get("from=2026%2D11%2D24&to=2026-11-24").status == 200, "percent-decoded")
        for (query, says) in [
            ("", "required"), ("from=2026-11-24", "required"), ("from=2026-11-25&to=2026-11-24", "after"),
            ("from=2026-11-31&to=2026-12-01", "from must be a date"), ("from=2026-11-01&to=yesterday", "to must be a date"),
            ("from=2025-01-01&to=2026-01-02", "367 days"), ("from=2026-11-24&to=2026-11-24&tenant=a%20b", "tenant"),
            ("from=2026-11-24&to=2026-11-24&colour=red", "colour"), ("from=2026-11-24&from=2026-11-24&to=2026-11-24", "twice"),
            ("from=%zz&to=2026-11-24", "malformed"),
        ] {
            let r = try get(query)
            #expect(r.status == 400, Comment(rawValue: query))
            #expect(r.contentType == "application/problem+json")
            #expect(r.body.contains(#""code":"bad_request""#), Comment(rawValue: query))
            #expect(r.body.contains(says), Comment(rawValue: "\(query): \(r.body)"))
        }
        // Only GET is the export.
        #expect(api.handle(method: "POST", path: "/admin/usage", body: [], requestID: "r1") == nil)
    }
}
