import Foundation
import Logging
import NIOCore
import Policy
import Synchronization
import Upstream

/// Fetches each issuer's remote key set (`jwks_url`, or the `jwks_uri` of its OpenID discovery document) over
/// HTTP or HTTPS, at start and every `jwks_refresh`; a failed fetch keeps the last good key set. A token whose
/// `kid` the set lacks asks for one early refetch (``keyMissing(issuer:then:)``), at most once per
/// `jwks_refetch_cooldown` per issuer, so a key rotation is picked up at once and a flood of random `kid`s costs
/// one fetch per cooldown. Keys are only ever taken from the configured URLs, never from a token.
final class JWKSRefresher: Sendable {
    enum Location: Sendable {
        case keys(JWKSURL)
        case discovery(JWKSURL)
    }

    struct Source: Sendable {
        var issuer: String
        var location: Location
        /// Trust for https URLs (`ca_file`, else the system's store); nil when nothing is fetched over TLS.
        var tls: ClientTLS?
        var interval: Int64
        var cooldown: Int64
    }

    /// One issuer's early refetches: when the last one started, and who waits for the one running.
    private struct Refetch {
        var lastStarted: NIODeadline? = nil
        var waiting: [@Sendable (Bool) -> Void] = []
        var running = false
    }

    static let fetchTimeout = TimeAmount.seconds(5)
    private let sources: [String: Source]
    private let verifier: JWTVerifier
    private let eventLoop: EventLoop
    private let logger: Logger
    private let onUpdate: @Sendable () -> Void
    private let tasks = Mutex<[RepeatedTask]>([])
    private let refetches = Mutex<[String: Refetch]>([:])

    /// Reads the issuers' `ca_file`s (blocking: call off the event loops).
    init(
        config: IdentityConfig, verifier: JWTVerifier, eventLoop: EventLoop, logger: Logger,
        onUpdate: @escaping @Sendable () -> Void
    ) throws {
        var sources: [String: Source] = [:]
        for issuer in config.issuers {
            let location: Location
            let url: JWKSURL
            if issuer.discovery, let u = JWKSURL.discovery(issuer: issuer.issuer) {
                (location, url) = (.discovery(u), u)
            } else if let text = issuer.jwksURL, let u = JWKSURL.parse(text) {
                (location, url) = (.keys(u), u)
            } else {
                continue
            }
            // Discovery may name an https key set even for an http issuer: keep trust ready for it.
            var tls: ClientTLS? = nil
            if url.tls || issuer.discovery {
                tls = try ClientTLS(ClientTLSConfig(caFile: issuer.caFile), host: url.host, what: "issuer \(issuer.issuer)")
            }
            sources[issuer.issuer] = Source(
                issuer: issuer.issuer, location: location, tls: tls, interval: issuer.jwksRefresh,
                cooldown: issuer.jwksRefetchCooldown)
        }
        self.sources = sources
        self.verifier = verifier
        self.eventLoop = eventLoop
        self.logger = logger
        self.onUpdate = onUpdate
    }

    /// Fetches every key set once (waiting for the answers), then keeps refreshing in the background.
    func start() async {
        for source in sources.values { _ = try? await fetch(source).get() }
        let started = sources.values.map { source in
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

    /// A token of `issuer` names a key its set lacks. Returns false when no refetch will come (the issuer's keys
    /// are not remote, or its cooldown has not passed since the last early refetch): refuse the token now.
    /// Otherwise `then` is called once the refetch (started now, or already running) ends, with whether the
    /// key set changed; verify again then.
    func keyMissing(issuer: String, now: NIODeadline = .now(), then: @escaping @Sendable (Bool) -> Void) -> Bool {
        guard let source = sources[issuer] else { return false }
        let start = refetches.withLock { all -> Bool? in
            var r = all[issuer] ?? Refetch()
            defer { all[issuer] = r }
            if r.running {
                r.waiting.append(then)
                return false
            }
            if let last = r.lastStarted, now - last < .nanoseconds(source.cooldown) { return nil }
            r.lastStarted = now
            r.running = true
            r.waiting.append(then)
            return true
        }
        switch start {
        case nil: return false
        case false?: return true
        case true?:
            logger.info("jwks refetch for an unknown kid", metadata: ["gh-issuer": "\(issuer)"])
            fetch(source).whenComplete { result in
                let updated = (try? result.get()) ?? false
                let waiting = self.refetches.withLock { all -> [@Sendable (Bool) -> Void] in
                    let w = all[issuer]?.waiting ?? []
                    all[issuer]?.waiting = []
                    all[issuer]?.running = false
                    return w
                }
                for callback in waiting { callback(updated) }
            }
            return true
        }
    }

    /// One fetch of `source`'s key set, DNS and discovery included, bounded as a whole by twice the per-GET
    /// limit; true when the key set was replaced.
    private func fetch(_ source: Source) -> EventLoopFuture<Bool> {
        let promise = eventLoop.makePromise(of: Bool.self)
        let timer = eventLoop.scheduleTask(in: Self.fetchTimeout + Self.fetchTimeout) {
            self.logger.warning("jwks fetch timed out; keeping the last good key set", metadata: ["gh-issuer": "\(source.issuer)"])
            promise.succeed(false)
        }
        fetchOnce(source).whenComplete { result in
            timer.cancel()
            promise.completeWith(result)
        }
        return promise.futureResult
    }

    private func fetchOnce(_ source: Source) -> EventLoopFuture<Bool> {
        let keysURL: EventLoopFuture<JWKSURL>
        switch source.location {
        case .keys(let url):
            keysURL = eventLoop.makeSucceededFuture(url)
        case .discovery(let url):
            keysURL = get(url, source).flatMapThrowing { body in
                guard case .object(let doc)? = JSONValue.parse(body), let text = doc["jwks_uri"]?.string else {
                    throw HTTPFetch.Failure(description: "\(url): no jwks_uri in the discovery document")
                }
                // OpenID Connect Discovery 1.0, 4.3: the document must name the issuer it was fetched for.
                guard doc["issuer"]?.string == source.issuer else {
                    throw HTTPFetch.Failure(description: "\(url): the document's issuer is not \(source.issuer)")
                }
                guard let keys = JWKSURL.parse(text) else {
                    throw HTTPFetch.Failure(description: "\(url): jwks_uri '\(text)' is not an http(s) URL")
                }
                // A document fetched over TLS may not send the keys' fetch to plain HTTP.
                if url.tls && !keys.tls {
                    throw HTTPFetch.Failure(description: "\(url): jwks_uri '\(text)' is not https")
                }
                return keys
            }
        }
        return keysURL.flatMap { url in self.get(url, source) }.flatMapThrowing { body -> Bool in
            let keys = try JWKSet.parse(jwks: Data(body))
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

    /// The body of a 200 answer to a GET of `url`, bounded in size and time.
    private func get(_ url: JWKSURL, _ source: Source) -> EventLoopFuture<[UInt8]> {
        HTTPFetch.get(url: url, tls: source.tls, on: eventLoop, timeout: Self.fetchTimeout).flatMapThrowing { response in
            guard response.status == 200 else { throw HTTPFetch.Failure(description: "\(url): status \(response.status)") }
            return response.body
        }
    }
}

/// The running key-set fetcher, for the request phases: replaced on reload, asked for early refetches.
final class KeyRefetch: Sendable {
    private let current = Mutex<JWKSRefresher?>(nil)

    func install(_ refresher: JWKSRefresher?) { current.withLock { $0 = refresher } }

    func keyMissing(issuer: String, then: @escaping @Sendable (Bool) -> Void) -> Bool {
        guard let refresher = current.withLock({ $0 }) else { return false }
        return refresher.keyMissing(issuer: issuer, then: then)
    }
}
