import Foundation
import Logging
import NIOCore
import Policy
import Synchronization
import Upstream

/// Fetches each issuer's `jwks_url` at start and every `jwks_refresh`; a failed fetch keeps the last good
/// key set. Keys are only ever taken from the configured URL, never from a token.
final class JWKSRefresher: Sendable {
    struct Source: Sendable {
        var issuer: String
        var url: JWKSURL
        var address: SocketAddress
        var interval: Int64
    }

    private let sources: [Source]
    private let verifier: JWTVerifier
    private let eventLoop: EventLoop
    private let logger: Logger
    private let onUpdate: @Sendable () -> Void
    private let tasks = Mutex<[RepeatedTask]>([])

    /// Resolves the URLs' hosts (blocking DNS: call off the event loops).
    init(
        config: IdentityConfig, verifier: JWTVerifier, eventLoop: EventLoop, logger: Logger,
        onUpdate: @escaping @Sendable () -> Void
    ) throws {
        var sources: [Source] = []
        for issuer in config.issuers {
            guard let text = issuer.jwksURL, let url = JWKSURL.parse(text) else { continue }
            let address = try SocketAddress.makeAddressResolvingHost(url.host, port: url.port)
            sources.append(Source(issuer: issuer.issuer, url: url, address: address, interval: issuer.jwksRefresh))
        }
        self.sources = sources
        self.verifier = verifier
        self.eventLoop = eventLoop
        self.logger = logger
        self.onUpdate = onUpdate
    }

    /// Fetches every key set once (waiting for the answers), then keeps refreshing in the background.
    func start() async {
        for source in sources { _ = try? await fetch(source).get() }
        let started = sources.map { source in
            eventLoop.scheduleRepeatedAsyncTask(
                initialDelay: .nanoseconds(source.interval), delay: .nanoseconds(source.interval)
            ) { _ in
                self.fetch(source).map { _ in }.recover { _ in }
            }
        }
        tasks.withLock { $0 = started }
    }

    func stop() {
        tasks.withLock { tasks in
            for t in tasks { t.cancel() }
            tasks.removeAll()
        }
    }

    private func fetch(_ source: Source) -> EventLoopFuture<Bool> {
        let hostHeader = source.url.port == 80 ? source.url.host : "\(source.url.host):\(source.url.port)"
        return HTTPFetch.get(
            address: source.address, hostHeader: hostHeader, path: source.url.path, on: eventLoop, timeout: .seconds(5)
        ).flatMapThrowing { response -> Bool in
            guard response.status == 200 else { throw HTTPFetch.Failure(description: "status \(response.status)") }
            let keys = try JWKSet.parse(jwks: Data(response.body))
            guard !keys.keys.isEmpty else { throw HTTPFetch.Failure(description: "no usable keys") }
            self.verifier.updateKeys(issuer: source.issuer, keys)
            self.onUpdate()
            self.logger.info("jwks refreshed", metadata: ["gh-issuer": "\(source.issuer)", "gh-keys": "\(keys.keys.count)"])
            return true
        }.recover { error in
            self.logger.warning(
                "jwks fetch failed; keeping the last good key set",
                metadata: ["gh-issuer": "\(source.issuer)", "gh-error": "\(error)"])
            return false
        }
    }
}
