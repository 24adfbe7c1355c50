import Foundation
import Policy
import Redis
import Upstream

extension RedisClient.Configuration {
    /// The settings of `store`: its server, Cluster seeds or sentinels, ACL credentials from the environment
    /// variables it names, its TLS (files read here), and the call timeout. Throws a message for the operator.
    init(store: StoreConfig, environment: [String: String]) throws {
        var tlsHost: String
        switch store.topology {
        case .standalone(let url):
            guard let parsed = RedisClient.Configuration(url: url) else {
                throw RedisSettingsError("store.redis is not a redis:// or rediss:// URL")
            }
            self = parsed
            tlsHost = host
        case .cluster(let seeds):
            let endpoints = try Self.endpoints(seeds, defaultPort: 6379, "store.cluster")
            self.init(topology: .cluster(seeds: endpoints))
            wantsTLS = store.tls != nil
            tlsHost = endpoints.first?.host ?? ""
        case .sentinel(let master, let nodes):
            let endpoints = try Self.endpoints(nodes, defaultPort: 26379, "store.sentinel.nodes")
            self.init(topology: .sentinel(master: master, sentinels: endpoints))
            wantsTLS = store.tls != nil
            tlsHost = endpoints.first?.host ?? ""
        }
        timeout = .nanoseconds(store.timeout)
        if let name = store.passwordEnv {
            guard let value = environment[name], !value.isEmpty else {
                throw RedisSettingsError("store.password_env names \(name), which is not set")
            }
            password = value
        }
        if let name = store.usernameEnv {
            guard let value = environment[name], !value.isEmpty else {
                throw RedisSettingsError("store.username_env names \(name), which is not set")
            }
            username = value
        }
        if wantsTLS {
            do {
                tls = try ClientTLS(store.tls ?? ClientTLSConfig(), host: tlsHost, what: "store.tls")
            } catch {
                throw RedisSettingsError("\(error)")
            }
        }
    }

    private static func endpoints(_ texts: [String], defaultPort: Int, _ what: String) throws -> [Endpoint] {
        try texts.map { text in
            guard let e = Endpoint(parsing: text, defaultPort: defaultPort) else {
                throw RedisSettingsError("\(what): '\(text)' is not host:port")
            }
            return e
        }
    }
}
