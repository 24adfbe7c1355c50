import Testing

@testable import Policy

@Suite struct TLSConfigTests {
    @Test func serverTLSUpstreamTLSAndIssuerKeysAreRead() throws {
        let yaml = """
            server:
              listen: 127.0.0.1:8443
              tls:
                certificates:
                  - {cert_file: certs/api.pem, key_file: certs/api.key}
                  - {cert_file: certs/eu.pem, key_file: certs/eu.key, server_names: [eu.example.com, "*.eu.example.com"]}
                min_version: "1.3"
                client_ca_file: certs/clients.pem
            identity:
              jwt:
                issuers:
                  - {issuer: "https://idp.example.com/", algorithms: [RS256], discovery: true, ca_file: certs/idp.pem, jwks_refetch_cooldown: 10s}
                  - {issuer: other, algorithms: [ES256], jwks_url: "https://keys.example.com:8443/jwks.json"}
            upstreams:
              billing:
                targets: [10.0.0.7:443]
                tls: {ca_file: certs/internal-ca.pem, server_name: billing.internal, cert_file: certs/gw.pem, key_file: certs/gw.key}
              loose:
                targets: [10.0.0.8:443]
                tls: {insecure_skip_verify: true}
            routes:
              - {name: b, match: {path_prefix: /b}, upstream: billing}
              - {name: l, match: {path_prefix: /l}, upstream: loose}
            """
        let config = try load(["gw.yaml": yaml]).get()
        let tls = try #require(config.server.tls)
        #expect(tls.certificates.map(\.certFile) == ["certs/api.pem", "certs/eu.pem"])
        #expect(tls.certificates[1].serverNames == ["eu.example.com", "*.eu.example.com"])
        #expect(tls.minVersion == .v13)
        #expect(tls.clientCAFile == "certs/clients.pem")
        let billing = try #require(config.upstreams["billing"]?.tls)
        #expect(billing.caFile == "certs/internal-ca.pem" && billing.serverName == "billing.internal")
        #expect(billing.certFile == "certs/gw.pem" && billing.keyFile == "certs/gw.key" && !billing.insecureSkipVerify)
        #expect(config.upstreams["loose"]?.tls?.insecureSkipVerify == true)
        let idp = config.identity.issuers[0]
        #expect(idp.discovery && idp.caFile == "certs/idp.pem" && idp.jwksRefetchCooldown == 10_000_000_000)
        #expect(config.identity.issuers[1].jwksRefetchCooldown == 30_000_000_000)
        #expect(JWKSURL.parse(config.identity.issuers[1].jwksURL!) == JWKSURL(tls: true, host: "keys.example.com", port: 8443, path: "/jwks.json"))
    }

    @Test func badTLSSettingsAreReportedWhereTheyAre() {
        let yaml = """
            server:
              tls:
                certificates:
                  - {cert_file: a.pem}
                  - {cert_file: b.pem, key_file: b.key, server_names: ["bad name", "*.x.com", "*.X.com"]}
                min_version: "1.1"
            upstreams:
              u:
                targets: [127.0.0.1:1]
                tls: {cert_file: c.pem, insecure_skip_verify: true, ca_file: ca.pem}
              v:
                targets: [127.0.0.1:2]
                tls: {server_name: 10.0.0.7}
              w:
                targets: [127.0.0.1:3]
                tls: {server_name: "::1"}
            identity:
              jwt:
                issuers:
                  - {issuer: "https://i/", algorithms: [RS256], discovery: true, jwks_url: "https://i/k"}
                  - {issuer: plain-name, algorithms: [RS256], discovery: true}
                  - {issuer: x, algorithms: [RS256], jwks_url: "ftp://i/k"}
            routes: []
            """
        let found = problems(["gw.yaml": yaml])
        for expected in [
            "a server.tls certificate needs cert_file and key_file",
            "server_names: 'bad name' is not a host name or a *. wildcard",
            "server_names: '*.X.com' is served by two certificates",
            "server.tls.min_version",
            "upstreams.u.tls: cert_file and key_file go together",
            "upstreams.u.tls: insecure_skip_verify and ca_file contradict each other",
            "upstreams.v.tls.server_name: '10.0.0.7' is an IP address",
            "upstreams.w.tls.server_name: '::1' is an IP address",
            "discovery and jwks_url exclude each other",
            "discovery needs an issuer that is an http:// or https:// URL",
            "jwks_url must be an http:// or https:// URL",
        ] {
            #expect(found.contains { $0.contains(expected) }, "missing: \(expected) in \(found)")
        }
        #expect(problems(["gw.yaml": "server:\n  tls: {certificates: []}\n" + minimal]).contains { $0.contains("at least one certificate") })
    }

    @Test func storeTLSAndCredentials() throws {
        func store(_ body: String) -> String { "store: {\(body)}\n" + minimal }
        let tls = try load(["gw.yaml": store("redis: \"rediss://redis.internal:6380/0\", tls: {ca_file: ca.pem}, username_env: U, password_env: P")]).get()
        #expect(tls.store?.tls == ClientTLSConfig(caFile: "ca.pem"))
        #expect(tls.store?.usernameEnv == "U" && tls.store?.passwordEnv == "P")
        // rediss:// alone: TLS with the system's trust store.
        #expect(try load(["gw.yaml": store("redis: \"rediss://r:6380\"")]).get().store?.tls == ClientTLSConfig())
        #expect(try load(["gw.yaml": store("redis: \"redis://r:6379\"")]).get().store?.tls == nil)
        for (body, expected) in [
            ("redis: \"redis://r:6379\", tls: {ca_file: ca.pem}", "store.tls needs a rediss:// URL"),
            ("redis: \"http://r:6379\"", "store.redis must be a redis:// or rediss:// URL"),
            ("redis: \"rediss://\"", "store.redis must be a redis:// or rediss:// URL"),
            ("redis: \"redis://r:6379\", username_env: U", "store.username_env needs store.password_env"),
            ("redis: \"redis://u:p@r:6379\", password_env: P", "contradict each other"),
            ("redis: \"rediss://r:6379\", tls: {server_name: 10.1.1.1}", "store.tls.server_name: '10.1.1.1' is an IP address"),
        ] {
            #expect(problems(["gw.yaml": store(body)]).contains { $0.contains(expected) }, "\(body): \(problems(["gw.yaml": store(body)]))")
        }
    }

    @Test func storeTopologies() throws {
        func store(_ body: String) -> String { "store: {\(body)}\n" + minimal }
        let cluster = try load(["gw.yaml": store("cluster: [10.0.0.1:6379, \"redis-b.internal:7000\"], tls: {ca_file: ca.pem}")]).get()
        #expect(cluster.store?.topology == .cluster(seeds: ["10.0.0.1:6379", "redis-b.internal:7000"]))
        #expect(cluster.store?.tls == ClientTLSConfig(caFile: "ca.pem"))
        #expect(cluster.store?.redisURL == "")
        let sentinel = try load(["gw.yaml": store("sentinel: {master: gh-main, nodes: [10.0.0.5:26379, 10.0.0.6:26379]}")]).get()
        #expect(sentinel.store?.topology == .sentinel(master: "gh-main", nodes: ["10.0.0.5:26379", "10.0.0.6:26379"]))
        #expect(sentinel.store?.tls == nil)
        #expect(try load(["gw.yaml": store("redis: \"redis://r:6379\"")]).get().store?.topology == .standalone(url: "redis://r:6379"))
        for (body, expected) in [
            ("redis: \"redis://r:6379\", cluster: [10.0.0.1:6379]", "store names redis and cluster: exactly one of"),
            ("timeout: 50ms", "store needs one of redis, cluster or sentinel"),
            ("cluster: []", "store.cluster lists no seed node"),
            ("cluster: [10.0.0.1]", "store.cluster: '10.0.0.1' is not host:port"),
            ("sentinel: {nodes: [10.0.0.5:26379]}", "store.sentinel.master is required"),
            ("sentinel: {master: m}", "store.sentinel.nodes is required"),
            ("sentinel: {master: m, nodes: [x:0]}", "is not host:port"),
            ("sentinel: {master: m, nodes: [10.0.0.5:26379], port: 1}", "port"),
        ] {
            #expect(problems(["gw.yaml": store(body)]).contains { $0.contains(expected) }, "\(body): \(problems(["gw.yaml": store(body)]))")
        }
    }

    @Test func proxyProtocolNeedsTrustedBalancers() throws {
        #expect(
            problems(["gw.yaml": "server:\n  proxy_protocol: true\n" + minimal]).contains {
                $0.contains("server.proxy_protocol needs server.trusted_proxies")
            })
        #expect(problems(["gw.yaml": "server:\n  proxy_protocol: yes please\n" + minimal]).contains { $0.contains("server.proxy_protocol") })
        let config = try load(["gw.yaml": "server:\n  trusted_proxies: [10.0.0.0/8]\n  proxy_protocol: true\n" + minimal]).get()
        #expect(config.server.proxyProtocol)
        #expect(try !load(["gw.yaml": minimal]).get().server.proxyProtocol)
    }

    @Test func certificateChoiceBySNI() {
        var tls = ServerTLSConfig(certificates: [
            .init(certFile: "default", keyFile: "k"),
            .init(certFile: "eu", keyFile: "k", serverNames: ["eu.example.com", "*.eu.example.com"]),
            .init(certFile: "shop", keyFile: "k", serverNames: ["shop.eu.example.com"]),
        ])
        #expect(tls.certificateIndex(serverName: nil) == 0)
        #expect(tls.certificateIndex(serverName: "") == 0)
        #expect(tls.certificateIndex(serverName: "api.example.com") == 0)
        #expect(tls.certificateIndex(serverName: "eu.example.com") == 1)
        #expect(tls.certificateIndex(serverName: "EU.Example.COM") == 1)
        #expect(tls.certificateIndex(serverName: "x.eu.example.com") == 1)
        // An exact name beats a wildcard; a wildcard covers one label.
        #expect(tls.certificateIndex(serverName: "shop.eu.example.com") == 2)
        #expect(tls.certificateIndex(serverName: "a.b.eu.example.com") == 0)
        #expect(tls.certificateIndex(serverName: "eu.example.com.evil") == 0)
        // The default certificate's own names count like any other's.
        tls.certificates[0].serverNames = ["*.example.com"]
        tls.certificates[1].serverNames = ["eu.example.com"]
        #expect(tls.certificateIndex(serverName: "eu.example.com") == 1)
        #expect(tls.certificateIndex(serverName: "x.eu.example.com") == 0)
    }

    @Test func discoveryURLs() {
        #expect(JWKSURL.discovery(issuer: "https://idp.example.com/")?.description == "https://idp.example.com/.well-known/openid-configuration")
        #expect(JWKSURL.discovery(issuer: "https://idp.example.com/tenant1")?.path == "/tenant1/.well-known/openid-configuration")
        #expect(JWKSURL.discovery(issuer: "http://127.0.0.1:8080")?.hostHeader == "127.0.0.1:8080")
        #expect(JWKSURL.discovery(issuer: "acme") == nil)
        #expect(JWKSURL.parse("https://k.example.com/j")?.port == 443)
        #expect(JWKSURL.parse("http://k.example.com/j")?.port == 80)
        #expect(JWKSURL.parse("https://k.example.com/a b") == nil)
    }
}
