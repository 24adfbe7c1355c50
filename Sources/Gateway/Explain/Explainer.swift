import Foundation
import Logging
import NIOCore
import NIOPosix
import Policy
import Redis
import Upstream

/// `gatehouse explain`: the decision the gateway would take for one request described on the command line,
/// found by running the proxy's own phases (``RequestPhases``: validate, route, authenticate, gate, forward) on
/// a ``RequestContext`` over a ``LoopState`` of its own, with the config's tenant records and key sets, but
/// without forwarding, charging or auditing anything.
///
/// - Tenant records: with a store, every record stored in Redis (read with SCAN and GET, as each instance loads
///   them), over the YAML seeds; without one, the seeds (admin writes live in the serving process).
/// - Keys: remote key sets (`jwks_url`, discovery) are fetched once, and an unknown `kid` asks for the same
///   early refetch the proxy would.
/// - Charge: the ``Charge`` is ``RatePolicy/charge(route:caller:record:config:now:)``'s, and the would-be
///   verdict ``LimitMath``'s, run on a copy of the levels read from Redis (`HMGET tk ts` of each bucket, `GET`
///   of the quota counter, `TIME`): nothing is written. The embedded store's levels live in the serving
///   process: the quota is read from its admin API (`GET /admin/tenants/{id}/usage`) when `admin_listen` and
///   the admin token are at hand, the buckets are unknown.
public struct Explainer: Sendable {
    public let config: GatewayConfig
    public let logger: Logger
    public let clock: WallClock
    public let environment: [String: String]

    public init(
        config: GatewayConfig, logger: Logger, clock: WallClock = .system,
        environment: [String: String] = ProcessInfo.processInfo.environment
    ) {
        self.config = config
        self.logger = logger
        self.clock = clock
        self.environment = environment
    }

    /// What `explain` reads and how (Sendable: handed to the event loop the phases run on).
    struct Setup: Sendable {
        var request: ExplainRequest
        /// The config as loaded (the snapshot's leaves out what explain does not use: audit, listener TLS).
        var config: GatewayConfig
        var snapshot: RuntimeSnapshot
        var keyRefetch: KeyRefetch
        var clock: WallClock
        var logger: Logger
        var keys: LimitKeys
        /// The store's client, when a store is configured and answered.
        var redis: RedisClient?
        var storeKind: String
        var storeReachable: Bool
        /// The embedded store's admin API, for the quota counter.
        var admin: (address: SocketAddress, host: String, token: String)?
        var notes: [String]
    }

    /// Explains `request`. Throws for what keeps explain from running at all (a store setting that cannot be
    /// used, key material that cannot be read); a request the gateway would refuse is an explanation.
    public func explain(_ request: ExplainRequest) async throws -> Explanation {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let loop = group.next()
        var redis: RedisClient? = nil
        var jwks: JWKSRefresher? = nil
        let keyRefetch = KeyRefetch()
        func cleanUp() async {
            jwks?.stop()
            keyRefetch.install(nil)
            if let redis { try? await redis.close().get() }
            try? await group.shutdownGracefully()
        }
        do {
            var served = config
            // Explain serves and records nothing: the listener's certificates and the audit key are not needed.
            served.audit = nil
            served.server.tls = nil
            let tenants = TenantDirectory(seeds: served.tenants)
            let keys = LimitKeys(prefix: served.store?.keyPrefix ?? "gh")
            var notes: [String] = []
            var storeKind = "embedded"
            var reachable = false
            if let store = served.store {
                switch store.topology {
                case .standalone: storeKind = "redis"
                case .cluster: storeKind = "cluster"
                case .sentinel: storeKind = "sentinel"
                }
                var settings = try RedisClient.Configuration(store: store, environment: environment)
                try settings.resolve()
                // Off any request path: bulk reads may take longer than `store.timeout`.
                settings.timeout = max(settings.timeout, .seconds(2))
                let client = RedisClient(configuration: settings, eventLoop: loop, logger: logger)
                redis = client
                client.start()
                reachable = await client.available(within: 3)
                if reachable {
                    do {
                        tenants.replaceStored(try await RedisTenantStore.readRecords(client, keys: keys).get())
                    } catch {
                        reachable = false
                        notes.append("the store's tenant records could not be read (\(error)): YAML seeds only")
                    }
                } else {
                    notes.append(
                        "the store did not answer: tenant records are the YAML seeds, limit levels are unknown, and the "
                            + "gateway would follow store.on_failure (\(store.onFailure.rawValue))")
                }
            } else {
                notes.append("no store: tenant records are the YAML seeds (admin API changes live in the serving process)")
            }
            let snapshot = try RuntimeSnapshot(config: served, tenants: tenants)
            let refresher = try JWKSRefresher(
                config: served.identity, verifier: snapshot.verifier, eventLoop: loop, logger: logger, onUpdate: {})
            jwks = refresher
            await refresher.start()
            keyRefetch.install(refresher)
            let setup = Setup(
                request: request, config: config, snapshot: snapshot, keyRefetch: keyRefetch, clock: clock, logger: logger,
                keys: keys, redis: reachable ? redis : nil, storeKind: storeKind, storeReachable: reachable,
                admin: served.store == nil ? adminAPI() : nil, notes: notes)
            let explanation = try await loop.flatSubmit { ExplainRun(setup, eventLoop: loop).start() }.get()
            await cleanUp()
            return explanation
        } catch {
            await cleanUp()
            throw error
        }
    }

    /// The embedded store's admin API, when its address and token are known here.
    private func adminAPI() -> (address: SocketAddress, host: String, token: String)? {
        guard let listen = config.server.adminListen, listen.port != 0, let env = config.server.adminTokenEnv,
            let token = environment[env], !token.isEmpty
        else { return nil }
        let target = listen.reachable
        guard let address = try? SocketAddress.makeAddressResolvingHost(target.host, port: target.port) else { return nil }
        return (address, target.description, token)
    }
}
