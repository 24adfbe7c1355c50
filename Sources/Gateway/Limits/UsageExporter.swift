import Foundation
import Logging
import NIOCore
import NIOPosix
import Policy
import Redis
import Upstream

/// Reads the per-day usage counters (``LimitKeys/day(_:_:)``) of every tenant, or of one, over a range of days:
/// the metered-billing feed of `GET /admin/usage` and `gatehouse usage export`. They are the counters the rate
/// limiter adds every admitted request (every leased unit) to, so they agree with the quota and with
/// `GET /admin/tenants/{id}/usage`.
///
/// - Embedded store: the day counters in ``MemoryLimits``.
/// - Redis, one tenant: one MGET of its day keys (one Cluster slot).
/// - Redis, every tenant: `SCAN … MATCH {<prefix>:*}:d:*` on every master (tenants deleted since included), the
///   keys of days in range kept, then one MGET per tenant (its keys share a slot; different tenants' may not),
///   ``batch`` tenants at a time.
public struct UsageExporter: Sendable {
    let memory: MemoryLimits?
    let client: RedisClient?
    let keys: LimitKeys
    /// Each Redis call's bound (bulk reads, off the request path).
    var timeout: TimeAmount = .seconds(5)
    /// Tenants whose counters are read at once.
    static let batch = 256

    init(memory: MemoryLimits?, client: RedisClient?, keys: LimitKeys) {
        self.memory = memory
        self.client = client
        self.keys = keys
    }

    func export(_ range: UsageRange, tenant: String?, now: Double, on eventLoop: EventLoop) -> EventLoopFuture<UsageReport> {
        // Gathering, sorting and (by the caller) rendering a fleet's report are not event-loop work: they run on
        // the blocking pool.
        if let memory {
            return NIOThreadPool.singleton.runIfActive(eventLoop: eventLoop) {
                UsageReport(range: range, rows: memory.dayCounts(range, tenant: tenant, now: now))
            }
        }
        guard let client else { return eventLoop.makeFailedFuture(RedisError.unavailable("no store")) }
        if let tenant {
            return read(client, [(tenant, range.days)]).map { UsageReport(range: range, rows: $0) }
        }
        let keys = self.keys
        return client.scan(match: keys.dayPattern, count: 1000, timeout: timeout).flatMap { found in
            // SCAN may return a key twice; a sibling prefix's keys and days out of range are dropped.
            var days: [String: Set<Int>] = [:]
            for key in found {
                guard let (tenant, day) = keys.parseDay(key), range.contains(day: day) else { continue }
                days[tenant, default: []].insert(day)
            }
            let wanted = days.keys.sorted().map { ($0, days[$0]!.sorted()) }
            // The batches' rows are kept apart and joined once (appending each batch to one growing array would
            // copy it at every batch).
            var chain = client.eventLoop.makeSucceededFuture([[UsageReport.Row]]())
            for start in stride(from: 0, to: wanted.count, by: Self.batch) {
                let part = Array(wanted[start..<min(wanted.count, start + Self.batch)])
                chain = chain.flatMap { parts in self.read(client, part).map { parts + [$0] } }
            }
            return chain.flatMap { parts in
                NIOThreadPool.singleton.runIfActive(eventLoop: client.eventLoop) {
                    UsageReport(range: range, rows: parts.flatMap { $0 })
                }
            }
        }
    }

    /// One MGET per tenant, all sent at once (pipelined); a key that expired meanwhile reads as 0.
    private func read(_ client: RedisClient, _ tenants: [(String, [Int])]) -> EventLoopFuture<[UsageReport.Row]> {
        let keys = self.keys
        let reads = tenants.map { tenant, days in
            client.send(["MGET"] + days.map { keys.day(tenant, $0) }, timeout: timeout).flatMapThrowing { reply in
                guard case .array(let items) = reply, items.count == days.count else {
                    throw RedisError.protocolError("unexpected MGET reply")
                }
                return zip(days, items).map { day, item in
                    UsageReport.Row(tenant: tenant, day: day, requests: item.string.flatMap { Int($0) } ?? 0)
                }
            }
        }
        return EventLoopFuture.whenAllSucceed(reads, on: client.eventLoop).map { $0.flatMap { $0 } }
    }
}

// MARK: The command line

extension UsageExporter {
    /// A reason the command line could not export, said for the operator.
    public struct Failure: Error, CustomStringConvertible, Sendable {
        public let description: String
        init(_ description: String) { self.description = description }
    }

    /// Reads the counters from the Redis `store` directly (`gatehouse usage export` with a store): a client
    /// built as the gateway builds its own (credentials from `environment`, TLS, Cluster or Sentinel), on an
    /// event loop of its own; awaited, never waited on.
    public static func readStore(
        _ store: StoreConfig, environment: [String: String], range: UsageRange, tenant: String?, connectWithin: Double = 5
    ) async throws -> UsageReport {
        var configuration: RedisClient.Configuration
        do {
            configuration = try RedisClient.Configuration(store: store, environment: environment)
            try configuration.resolve()
        } catch {
            throw Failure("store: \(error)")
        }
        // Bulk reads: the request path's store.timeout (50 ms by default) is too tight for SCAN and MGET.
        configuration.timeout = .seconds(5)
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        var logger = Logger(label: "gatehouse-usage-export")
        logger.logLevel = .critical
        let client = RedisClient(configuration: configuration, eventLoop: group.next(), logger: logger)
        client.start()
        let result: Result<UsageReport, Error>
        do {
            guard await client.available(within: connectWithin) else {
                throw Failure("cannot reach the store's Redis within \(connectWithin) s")
            }
            let exporter = UsageExporter(memory: nil, client: client, keys: LimitKeys(prefix: store.keyPrefix))
            result = .success(try await exporter.export(range, tenant: tenant, now: Date().timeIntervalSince1970, on: client.eventLoop).get())
        } catch let error as Failure {
            result = .failure(error)
        } catch {
            result = .failure(Failure("reading the usage counters from Redis: \(error)"))
        }
        try? await client.close().get()
        try? await group.shutdownGracefully()
        return try result.get()
    }

    /// Asks a running gateway's `GET /admin/usage` on `admin` (`gatehouse usage export` without a store: the
    /// counters live in that gateway's memory). A wildcard listen address is reached on loopback.
    public static func askGateway(
        admin: HostPort, token: String, range: UsageRange, tenant: String?, timeout: Double = 30
    ) async throws -> UsageReport {
        let target = admin.reachable
        let address: SocketAddress
        do {
            address = try SocketAddress.makeAddressResolvingHost(target.host, port: target.port)
        } catch {
            throw Failure("server.admin_listen: cannot resolve \(target.host): \(error)")
        }
        var path = "/admin/usage?from=\(CivilDate.isoDate(range.from))&to=\(CivilDate.isoDate(range.to))"
        if let tenant { path += "&tenant=" + tenant }
        let hostHeader = target.description
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let result: Result<HTTPFetch.Response, Error>
        do {
            result = .success(
                try await HTTPFetch.get(
                    address: address, hostHeader: hostHeader, path: path, on: group.next(),
                    timeout: .milliseconds(Int64(timeout * 1000)), maxBytes: 1 << 30, userAgent: "gatehouse usage export",
                    headers: [("Authorization", "Bearer " + token)]
                ).get())
        } catch {
            result = .failure(error)
        }
        try? await group.shutdownGracefully()
        let response: HTTPFetch.Response
        do {
            response = try result.get()
        } catch {
            throw Failure("asking the gateway at \(hostHeader) (server.admin_listen): \(error)")
        }
        guard response.status == 200 else {
            let body = String(decoding: response.body.prefix(2048), as: UTF8.self)
            let detail = ((try? JSONSerialization.jsonObject(with: Data(response.body))) as? [String: Any])?["detail"] as? String
            throw Failure("the gateway at \(hostHeader) answered \(response.status): \(detail ?? body)")
        }
        guard let report = UsageReport.parse(json: response.body) else {
            throw Failure("the gateway at \(hostHeader) answered with a document that is not a usage report")
        }
        return report
    }
}
