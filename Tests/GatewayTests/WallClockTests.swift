import Foundation
import NIOCore
import NIOPosix
import Policy
import Testing

@testable import Gateway

/// The admin API and the embedded store read the injected clock, so dates are tested without sleeping.
@Suite struct WallClockTests {
    static let yaml = """
        plans: {pro: {quota: {requests: 1000, per: month}}}
        tenants:
          acme: {plan: pro, billing_anchor: 15}
        upstreams: {u: {targets: [127.0.0.1:1]}}
        routes: []
        """

    @Test func usageReportsThePeriodOfTheInjectedTime() throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        defer { try? group.syncShutdownGracefully() }
        let config = try ConfigLoader(readFile: { $0 == "gw.yaml" ? Self.yaml : nil }).load(path: "gw.yaml")
        let tenants = TenantDirectory(seeds: config.tenants)
        let clock = WallClock.fixed(Timestamp.parse("2026-11-17T05:00:00Z")!)
        let api = AdminAPI(
            tenants: tenants, store: MemoryTenantStore(directory: tenants, eventLoop: group.next(), clock: clock),
            config: config, eventLoop: group.next(), usage: UsageReader(memory: MemoryLimits(), client: nil, keys: LimitKeys(prefix: "gh")),
            export: UsageExporter(memory: MemoryLimits(), client: nil, keys: LimitKeys(prefix: "gh")), clock: clock)
        let response = try #require(api.handle(method: "GET", path: "/admin/tenants/acme/usage", body: [], requestID: "r1")).wait()
        #expect(response.status == 200)
        #expect(response.body.contains(#""period_start":"2026-11-15T00:00:00Z","period_end":"2026-12-15T00:00:00Z""#))
    }

    @Test func webhookEventIdsAreRememberedForADayOfTheInjectedClock() throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        defer { try? group.syncShutdownGracefully() }
        let now = LockedBox(1_800_000_000.0)
        let store = MemoryTenantStore(
            directory: TenantDirectory(seeds: [:]), eventLoop: group.next(), clock: WallClock { now.value })
        #expect(try store.remember(eventID: "evt_1").wait())
        now.value += SeenEvents.ttl - 1
        #expect(try !store.remember(eventID: "evt_1").wait())
        now.value += 2
        #expect(try store.remember(eventID: "evt_1").wait())
    }
}
