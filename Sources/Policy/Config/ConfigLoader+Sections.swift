/// One parser per config section. Each records problems in the reader and returns nil when the section
/// cannot be used at all.
extension ConfigLoader {
    static let jwtAlgorithms = ["HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "ES256", "ES384", "ES512"]
    static let rateLimitKinds = ["tenant", "tenant_route", "user", "api_key"]
    public static let tenantStatuses = ["active", "trialing", "past_due", "suspended", "cancelled"]

    enum UnderscoreHeaders: String { case drop, allow }

    func parseServer(_ at: Located, _ r: YAMLReader) -> ServerConfig? {
        guard
            let f = r.fields(
                at, "server",
                allowed: [
                    "listen", "threads", "admin_listen", "admin_token_env", "max_header_bytes", "max_body_bytes",
                    "idle_timeout", "header_timeout", "request_timeout", "send_timeout", "drain_timeout",
                    "max_connections", "max_pipelined_requests", "max_read_ahead_bytes", "underscores_in_headers",
                    "trusted_proxies", "proxy_protocol", "admin_max_connections", "tls",
                ])
        else { return nil }
        var s = ServerConfig()
        if let v = f["listen"], let hp = r.hostPort(v, "server.listen") { s.listen = hp }
        if let v = f["threads"] { s.threads = r.int(v, "server.threads", min: 1, max: 256) }
        if let v = f["admin_listen"], let hp = r.hostPort(v, "server.admin_listen") { s.adminListen = hp }
        if let v = f["admin_token_env"] { s.adminTokenEnv = r.nonEmptyString(v, "server.admin_token_env") }
        if let v = f["max_header_bytes"], let n = r.size(v, "server.max_header_bytes") {
            if n < 1024 || n > 80 * 1024 {
                r.problem(v, "server.max_header_bytes must be between 1KiB and 80KiB")
            } else {
                s.maxHeaderBytes = n
            }
        }
        if let v = f["max_body_bytes"], let n = r.size(v, "server.max_body_bytes") { s.maxBodyBytes = n }
        if let v = f["idle_timeout"], let d = r.duration(v, "server.idle_timeout") { s.idleTimeout = d }
        if let v = f["header_timeout"], let d = r.duration(v, "server.header_timeout") { s.headerTimeout = d }
        if let v = f["request_timeout"], let d = r.duration(v, "server.request_timeout") { s.requestTimeout = d }
        if let v = f["send_timeout"], let d = r.duration(v, "server.send_timeout") { s.sendTimeout = d }
        if let v = f["drain_timeout"], let d = r.duration(v, "server.drain_timeout") { s.drainTimeout = d }
        if let v = f["max_connections"], let n = r.int(v, "server.max_connections", min: 1, max: 1_000_000) {
            s.maxConnections = n
        }
        if let v = f["admin_max_connections"], let n = r.int(v, "server.admin_max_connections", min: 1, max: 100_000) {
            s.adminMaxConnections = n
        }
        if let v = f["max_pipelined_requests"], let n = r.int(v, "server.max_pipelined_requests", min: 1, max: 1024) {
            s.maxPipelinedRequests = n
        }
        if let v = f["max_read_ahead_bytes"], let n = r.size(v, "server.max_read_ahead_bytes") {
            if n < 1024 {
                r.problem(v, "server.max_read_ahead_bytes must be at least 1KiB")
            } else {
                s.maxReadAheadBytes = n
            }
        }
        if let v = f["underscores_in_headers"], let mode = r.oneOf(v, "server.underscores_in_headers", UnderscoreHeaders.self, [.drop, .allow]) {
            s.dropUnderscoreHeaders = mode == .drop
        }
        if let v = f["trusted_proxies"], let list = r.locatedStringList(v, "server.trusted_proxies") {
            for entry in list {
                if let cidr = CIDR(entry.value) {
                    s.trustedProxies.append(cidr)
                } else {
                    r.problem(entry.at, "server.trusted_proxies: '\(entry.value)' is not an address or CIDR")
                }
            }
        }
        if let v = f["proxy_protocol"], let on = r.bool(v, "server.proxy_protocol") {
            s.proxyProtocol = on
            if on && s.trustedProxies.isEmpty {
                r.problem(v, "server.proxy_protocol needs server.trusted_proxies: the balancers allowed to send the header")
            }
        }
        if let v = f["tls"] { s.tls = parseServerTLS(v, r) }
        if let admin = s.adminListen, admin == s.listen, admin.port != 0 {
            r.problem(f["admin_listen"]!, "server.admin_listen must differ from server.listen")
        }
        return s
    }

    /// `server.tls`: PEM certificate chains and keys (the first is the default, the others chosen by SNI),
    /// `min_version`, `client_ca_file`. The files are read and parsed when the listener is built.
    func parseServerTLS(_ at: Located, _ r: YAMLReader) -> ServerTLSConfig? {
        guard let f = r.fields(at, "server.tls", allowed: ["certificates", "min_version", "client_ca_file"]) else {
            return nil
        }
        var certificates: [ServerTLSConfig.Certificate] = []
        var seen: Set<String> = []
        for (index, item) in (f["certificates"].flatMap({ r.sequence($0, "server.tls.certificates") }) ?? []).enumerated() {
            guard let c = r.fields(item, "server.tls.certificates entry", allowed: ["cert_file", "key_file", "server_names"])
            else { continue }
            guard let certAt = c["cert_file"], let cert = r.nonEmptyString(certAt, "cert_file"),
                let keyAt = c["key_file"], let key = r.nonEmptyString(keyAt, "key_file")
            else {
                if c["cert_file"] == nil || c["key_file"] == nil {
                    r.problem(item, "a server.tls certificate needs cert_file and key_file")
                }
                continue
            }
            var entry = ServerTLSConfig.Certificate(certFile: cert, keyFile: key)
            r.tlsFile(certAt, cert, .certificates, "server.tls.certificates[\(index)].cert_file")
            r.tlsFile(keyAt, key, .privateKey, "server.tls.certificates[\(index)].key_file")
            for name in c["server_names"].flatMap({ r.locatedStringList($0, "server_names") }) ?? [] {
                let lower = name.value.lowercased()
                let bare = lower.hasPrefix("*.") ? String(lower.dropFirst(2)) : lower
                let valid = !bare.isEmpty && !bare.hasPrefix(".") && !bare.hasSuffix(".") && !bare.contains("..")
                    && bare.utf8.allSatisfy { ($0 >= 97 && $0 <= 122) || ($0 >= 48 && $0 <= 57) || $0 == 45 || $0 == 46 }
                if !valid {
                    r.problem(name.at, "server_names: '\(name.value)' is not a host name or a *. wildcard")
                } else if !seen.insert(lower).inserted {
                    r.problem(name.at, "server_names: '\(name.value)' is served by two certificates")
                } else {
                    entry.serverNames.append(name.value)
                }
            }
            certificates.append(entry)
        }
        if certificates.isEmpty {
            r.problem(f["certificates"] ?? at, "server.tls needs at least one certificate")
            return nil
        }
        var tls = ServerTLSConfig(certificates: certificates)
        if let v = f["min_version"], let m = r.oneOf(v, "server.tls.min_version", ServerTLSConfig.MinVersion.self, [.v12, .v13]) {
            tls.minVersion = m
        }
        if let v = f["client_ca_file"] {
            tls.clientCAFile = r.nonEmptyString(v, "server.tls.client_ca_file")
            r.tlsFile(v, tls.clientCAFile, .certificates, "server.tls.client_ca_file")
        }
        return tls
    }

    /// The client side of TLS (`upstreams.*.tls`): `ca_file`, `server_name`, `cert_file` with `key_file`,
    /// `insecure_skip_verify`.
    func parseClientTLS(_ at: Located, _ what: String, _ r: YAMLReader) -> ClientTLSConfig? {
        guard let f = r.fields(at, what, allowed: ["ca_file", "server_name", "cert_file", "key_file", "insecure_skip_verify"])
        else { return nil }
        var t = ClientTLSConfig()
        if let v = f["ca_file"] {
            t.caFile = r.nonEmptyString(v, "\(what).ca_file")
            r.tlsFile(v, t.caFile, .certificates, "\(what).ca_file")
        }
        if let v = f["server_name"], let name = r.nonEmptyString(v, "\(what).server_name") {
            // An IPv4 literal is digits and dots; an IPv6 one has colons.
            if name.contains(":") || name.utf8.allSatisfy({ ($0 >= 48 && $0 <= 57) || $0 == 46 }) {
                r.problem(v, "\(what).server_name: '\(name)' is an IP address (SNI carries names only; leave server_name out to verify the IP)")
            } else if name.utf8.allSatisfy({ TenantID.isIDByte($0) }) {
                t.serverName = name
            } else {
                r.problem(v, "\(what).server_name: '\(name)' is not a host name")
            }
        }
        if let v = f["cert_file"] {
            t.certFile = r.nonEmptyString(v, "\(what).cert_file")
            r.tlsFile(v, t.certFile, .certificates, "\(what).cert_file")
        }
        if let v = f["key_file"] {
            t.keyFile = r.nonEmptyString(v, "\(what).key_file")
            r.tlsFile(v, t.keyFile, .privateKey, "\(what).key_file")
        }
        if (f["cert_file"] == nil) != (f["key_file"] == nil) {
            r.problem(at, "\(what): cert_file and key_file go together (a client certificate)")
        }
        if let v = f["insecure_skip_verify"], let b = r.bool(v, "\(what).insecure_skip_verify") {
            t.insecureSkipVerify = b
            if b && t.caFile != nil { r.problem(v, "\(what): insecure_skip_verify and ca_file contradict each other") }
        }
        return t
    }

    /// `host:port` as targets are written, with a port to connect to (not 0).
    static func isHostPort(_ text: String) -> Bool {
        HostPort.parse(text).map { $0.port != 0 } ?? false
    }

    func parseStore(_ at: Located, _ r: YAMLReader) -> StoreConfig? {
        guard
            let f = r.fields(
                at, "store",
                allowed: [
                    "redis", "cluster", "sentinel", "timeout", "on_failure", "key_prefix", "rate_limit_mode",
                    "tenant_cache_ttl", "tls", "username_env", "password_env",
                ])
        else { return nil }
        let named = ["redis", "cluster", "sentinel"].filter { f[$0] != nil }
        guard named.count == 1 else {
            r.problem(
                at,
                named.isEmpty
                    ? "store needs one of redis, cluster or sentinel (omit the store section for the embedded in-memory store)"
                    : "store names \(named.joined(separator: " and ")): exactly one of redis, cluster or sentinel")
            return nil
        }
        var s: StoreConfig
        var url = ""
        if let urlAt = f["redis"] {
            guard let text = r.nonEmptyString(urlAt, "store.redis") else { return nil }
            url = text
            let scheme = StoreConfig.isTLSURL(url) ? "rediss://" : "redis://"
            if !(url.hasPrefix(scheme) && url.count > scheme.count) {
                r.problem(urlAt, "store.redis must be a redis:// or rediss:// URL")
            }
            s = StoreConfig(topology: .standalone(url: url))
            if let v = f["tls"] {
                s.tls = parseClientTLS(v, "store.tls", r)
                if !StoreConfig.isTLSURL(url) { r.problem(v, "store.tls needs a rediss:// URL in store.redis") }
            } else if StoreConfig.isTLSURL(url) {
                s.tls = ClientTLSConfig()
            }
        } else if let at = f["cluster"] {
            guard let seeds = r.stringList(at, "store.cluster") else { return nil }
            if seeds.isEmpty { r.problem(at, "store.cluster lists no seed node") }
            for seed in seeds where !Self.isHostPort(seed) {
                r.problem(at, "store.cluster: '\(seed)' is not host:port")
            }
            s = StoreConfig(topology: .cluster(seeds: seeds))
            if let v = f["tls"] { s.tls = parseClientTLS(v, "store.tls", r) }
        } else {
            let at = f["sentinel"]!
            guard let g = r.fields(at, "store.sentinel", allowed: ["master", "nodes"]) else { return nil }
            guard let masterAt = g["master"], let master = r.nonEmptyString(masterAt, "store.sentinel.master") else {
                r.problem(at, "store.sentinel.master is required (the name the sentinels monitor)")
                return nil
            }
            guard let nodesAt = g["nodes"], let nodes = r.stringList(nodesAt, "store.sentinel.nodes") else {
                r.problem(at, "store.sentinel.nodes is required (the sentinels, host:port)")
                return nil
            }
            if nodes.isEmpty { r.problem(nodesAt, "store.sentinel.nodes lists no sentinel") }
            for node in nodes where !Self.isHostPort(node) {
                r.problem(nodesAt, "store.sentinel.nodes: '\(node)' is not host:port")
            }
            s = StoreConfig(topology: .sentinel(master: master, nodes: nodes))
            if let v = f["tls"] { s.tls = parseClientTLS(v, "store.tls", r) }
        }
        if let v = f["username_env"] { s.usernameEnv = r.nonEmptyString(v, "store.username_env") }
        if let v = f["password_env"] { s.passwordEnv = r.nonEmptyString(v, "store.password_env") }
        if s.usernameEnv != nil && s.passwordEnv == nil {
            r.problem(f["username_env"]!, "store.username_env needs store.password_env (an ACL user logs in with both)")
        }
        if s.passwordEnv != nil, !url.isEmpty, let rest = url.split(separator: "/", maxSplits: 3).dropFirst().first, rest.contains("@") {
            r.problem(f["password_env"]!, "store.password_env and credentials in the store.redis URL contradict each other")
        }
        if let v = f["timeout"], let d = r.duration(v, "store.timeout") { s.timeout = d }
        if let v = f["on_failure"], let m = r.oneOf(v, "store.on_failure", StoreConfig.FailureMode.self, [.open, .closed]) {
            s.onFailure = m
        }
        if let v = f["key_prefix"], let p = r.nonEmptyString(v, "store.key_prefix") { s.keyPrefix = p }
        if let v = f["rate_limit_mode"],
            let m = r.oneOf(v, "store.rate_limit_mode", StoreConfig.RateLimitMode.self, [.exact, .leased])
        {
            s.rateLimitMode = m
        }
        if let v = f["tenant_cache_ttl"], let d = r.duration(v, "store.tenant_cache_ttl") { s.tenantCacheTTL = d }
        return s
    }

    func parseIdentity(_ at: Located, _ r: YAMLReader) -> IdentityConfig? {
        guard let f = r.fields(at, "identity", allowed: ["tenant_header", "header_tenancy", "jwt", "api_keys", "sign_headers"])
        else {
            return nil
        }
        var id = IdentityConfig()
        if let v = f["tenant_header"], let h = headerName(v, "identity.tenant_header", r) { id.tenantHeader = h }
        if let v = f["header_tenancy"],
            let t = r.oneOf(v, "identity.header_tenancy", IdentityConfig.HeaderTenancy.self, [.never, .apiKeyOnly, .always])
        {
            id.headerTenancy = t
        }
        if let v = f["api_keys"], let k = r.fields(v, "identity.api_keys", allowed: ["header"]),
            let h = k["header"], let name = headerName(h, "identity.api_keys.header", r)
        {
            id.apiKeyHeader = name
        }
        if let v = f["sign_headers"], let g = r.fields(v, "identity.sign_headers", allowed: ["key_env", "header"]) {
            if let e = g["key_env"], let env = r.nonEmptyString(e, "identity.sign_headers.key_env") {
                var sign = SignHeadersConfig(keyEnv: env)
                sign.keyEnvAt = (e.file, e.line, e.column)
                if let h = g["header"], let name = headerName(h, "identity.sign_headers.header", r) { sign.header = name }
                id.signHeaders = sign
            } else if g["key_env"] == nil {
                r.problem(v, "identity.sign_headers needs key_env (the environment variable holding the HMAC key)")
            }
        }
        if let v = f["jwt"], let j = r.fields(v, "identity.jwt", allowed: ["issuers"]), let list = j["issuers"] {
            for item in r.sequence(list, "identity.jwt.issuers") ?? [] {
                if let issuer = parseIssuer(item, r) { id.issuers.append(issuer) }
            }
        }
        return id
    }

    private func headerName(_ at: Located, _ what: String, _ r: YAMLReader) -> String? {
        guard let name = r.nonEmptyString(at, what) else { return nil }
        let token = name.utf8.allSatisfy { b in
            TenantID.isIDByte(b) || "!#$%&'*+^`|~".utf8.contains(b)
        }
        guard token else {
            r.problem(at, "\(what): invalid header name '\(name)'")
            return nil
        }
        return name
    }

    private func parseIssuer(_ at: Located, _ r: YAMLReader) -> IssuerConfig? {
        guard
            let f = r.fields(
                at, "identity.jwt.issuers entry",
                allowed: [
                    "issuer", "audiences", "algorithms", "jwks_file", "jwks_url", "secret_env", "secret_file",
                    "public_key_file", "tenant_claim", "user_claim", "roles_claim", "leeway", "jwks_refresh",
                    "discovery", "ca_file", "jwks_refetch_cooldown", "scopes_claim",
                ])
        else { return nil }
        guard let issAt = f["issuer"], let iss = r.nonEmptyString(issAt, "issuer") else {
            if f["issuer"] == nil { r.problem(at, "issuer is required") }
            return nil
        }
        var c = IssuerConfig(issuer: iss)
        if let v = f["audiences"] { c.audiences = r.stringList(v, "audiences") ?? [] }
        guard let algAt = f["algorithms"] else {
            r.problem(at, "algorithms is required (the accepted algorithms are pinned per issuer)")
            return nil
        }
        let located = r.locatedStringList(algAt, "algorithms") ?? []
        c.algorithms = located.map(\.value)
        for alg in located where !Self.jwtAlgorithms.contains(alg.value) {
            r.problem(alg.at, "unsupported algorithm '\(alg.value)' (one of \(Self.jwtAlgorithms.joined(separator: ", ")))")
        }
        if c.algorithms.isEmpty { r.problem(algAt, "algorithms must not be empty") }
        let hmac = c.algorithms.contains { $0.hasPrefix("HS") }
        let asymmetric = c.algorithms.contains { !$0.hasPrefix("HS") }
        if hmac && asymmetric {
            r.problem(algAt, "an issuer may not mix HS* with RS*/ES* algorithms (algorithm confusion)")
        }
        c.jwksFile = f["jwks_file"].flatMap { r.nonEmptyString($0, "jwks_file") }
        c.jwksURL = f["jwks_url"].flatMap { r.nonEmptyString($0, "jwks_url") }
        if let url = c.jwksURL, let at = f["jwks_url"], JWKSURL.parse(url) == nil {
            r.problem(at, "jwks_url must be an http:// or https:// URL")
        }
        if let v = f["discovery"], let b = r.bool(v, "discovery") {
            c.discovery = b
            if b && c.jwksURL != nil { r.problem(v, "discovery and jwks_url exclude each other (discovery finds the URL)") }
            if b && JWKSURL.discovery(issuer: iss) == nil {
                r.problem(v, "discovery needs an issuer that is an http:// or https:// URL")
            }
        }
        if let v = f["ca_file"] {
            c.caFile = r.nonEmptyString(v, "ca_file")
            r.tlsFile(v, c.caFile, .certificates, "issuer \(iss) ca_file")
        }
        if let v = f["jwks_refetch_cooldown"], let d = r.duration(v, "jwks_refetch_cooldown") {
            if d < 1_000_000_000 { r.problem(v, "jwks_refetch_cooldown must be at least 1s") } else { c.jwksRefetchCooldown = d }
        }
        if let v = f["jwks_refresh"], let d = r.duration(v, "jwks_refresh") {
            if d < 1_000_000_000 { r.problem(v, "jwks_refresh must be at least 1s") } else { c.jwksRefresh = d }
        }
        c.secretEnv = f["secret_env"].flatMap { r.nonEmptyString($0, "secret_env") }
        c.secretFile = f["secret_file"].flatMap { r.nonEmptyString($0, "secret_file") }
        c.publicKeyFile = f["public_key_file"].flatMap { r.nonEmptyString($0, "public_key_file") }
        let secretSources = [c.secretEnv, c.secretFile].compactMap { $0 }.count
        let keySources = [c.jwksFile, c.jwksURL, c.publicKeyFile, c.discovery ? "discovery" : nil].compactMap { $0 }.count
        if hmac && (secretSources != 1 || keySources != 0) {
            r.problem(at, "HS* algorithms need exactly one of secret_env or secret_file")
        }
        if asymmetric && (keySources == 0 || secretSources != 0) {
            r.problem(at, "RS*/ES* algorithms need jwks_file, jwks_url, discovery or public_key_file, and no secret")
        }
        if let v = f["tenant_claim"], let s = r.nonEmptyString(v, "tenant_claim") { c.tenantClaim = s }
        if let v = f["user_claim"], let s = r.nonEmptyString(v, "user_claim") { c.userClaim = s }
        if let v = f["roles_claim"], let s = r.nonEmptyString(v, "roles_claim") { c.rolesClaim = s }
        if let v = f["scopes_claim"], let s = r.nonEmptyString(v, "scopes_claim") { c.scopesClaim = s }
        if let v = f["leeway"], let d = r.duration(v, "leeway", allowZero: true) {
            if d > 300_000_000_000 { r.problem(v, "leeway must be at most 5m") } else { c.leeway = d }
        }
        return c
    }

    func parsePlan(_ at: Located, name: String, _ r: YAMLReader) -> PlanConfig? {
        guard let f = r.fields(at, "plan '\(name)'", allowed: ["rate", "quota", "features", "max_body_bytes", "max_websockets"])
        else {
            return nil
        }
        var p = PlanConfig()
        if let v = f["rate"] { p.rate = parseRate(v, "plans.\(name).rate", r) }
        if let v = f["quota"] {
            if case .scalar = v.node {
                if r.string(v, "quota") != "unlimited" { r.problem(v, "quota must be 'unlimited' or {requests, per}") }
            } else if let q = parseQuota(v, "plans.\(name).quota", r) {
                p.quota = q
            }
        }
        if let v = f["features"] { p.features = r.stringList(v, "plans.\(name).features") ?? [] }
        if let v = f["max_body_bytes"] { p.maxBodyBytes = r.size(v, "plans.\(name).max_body_bytes") }
        if let v = f["max_websockets"] { p.maxWebsockets = r.int(v, "plans.\(name).max_websockets", min: 0, max: 1_000_000) }
        return p
    }

    func parseRate(_ at: Located, _ what: String, _ r: YAMLReader) -> PlanConfig.Rate? {
        guard let f = r.fields(at, what, allowed: ["requests", "per", "burst"]) else { return nil }
        guard let reqAt = f["requests"], let perAt = f["per"] else {
            r.problem(at, "\(what) needs requests and per")
            return nil
        }
        guard let requests = r.int(reqAt, "\(what).requests", min: 1, max: 1_000_000_000),
            let per = r.duration(perAt, "\(what).per")
        else { return nil }
        var burst = requests
        if let b = f["burst"] {
            guard let value = r.int(b, "\(what).burst", min: 1, max: 1_000_000_000) else { return nil }
            burst = value
        }
        return PlanConfig.Rate(requests: requests, per: per, burst: burst)
    }

    func parseQuota(_ at: Located, _ what: String, _ r: YAMLReader) -> PlanConfig.Quota? {
        guard let f = r.fields(at, what, allowed: ["requests", "per"]) else { return nil }
        guard let reqAt = f["requests"], let perAt = f["per"] else {
            r.problem(at, "\(what) needs requests and per")
            return nil
        }
        guard let requests = r.int(reqAt, "\(what).requests", min: 1, max: Int(Int32.max)),
            let per = r.oneOf(perAt, "\(what).per", PlanConfig.QuotaPeriod.self, [.day, .month])
        else { return nil }
        return .limited(requests: requests, per: per)
    }

    /// - Parameter keyOwners: each seed API key's hash, with the tenant and id it was first given to (a key
    ///   seeded twice, in one tenant or two, is a problem: which copy authenticates would be arbitrary).
    func parseTenant(
        _ at: Located, id tenant: String, plans: [String: PlanConfig], keyOwners: inout [String: String],
        _ r: YAMLReader
    ) -> TenantRecord? {
        guard
            let f = r.fields(
                at, "tenant",
                allowed: ["plan", "status", "trial_ends", "billing_anchor", "past_due_since", "api_keys", "overrides"])
        else { return nil }
        guard let planAt = f["plan"], let plan = r.nonEmptyString(planAt, "plan") else {
            if f["plan"] == nil { r.problem(at, "tenant needs a plan") }
            return nil
        }
        if plans[plan] == nil { r.problem(planAt, "unknown plan '\(plan)'") }
        var t = TenantRecord(plan: plan)
        if let v = f["status"], let s = r.string(v, "status") {
            if Self.tenantStatuses.contains(s) {
                t.status = s
            } else {
                r.problem(v, "status must be one of \(Self.tenantStatuses.joined(separator: ", ")) (got '\(s)')")
            }
        }
        if let v = f["trial_ends"], let s = r.string(v, "trial_ends") {
            t.trialEnds = s
            t.trialEndsAt = Timestamp.parse(s)
            if t.trialEndsAt == nil { r.problem(v, "trial_ends must be an RFC 3339 timestamp such as 2026-12-31T00:00:00Z") }
        }
        if let v = f["billing_anchor"], let n = r.int(v, "billing_anchor", min: 1, max: 31) { t.billingAnchor = n }
        if let v = f["past_due_since"], let s = r.string(v, "past_due_since") {
            t.pastDueSinceAt = Timestamp.parse(s)
            if t.pastDueSinceAt == nil { r.problem(v, "past_due_since must be an RFC 3339 timestamp") }
        }
        if t.status == "trialing" && t.trialEnds == nil, let v = f["status"] {
            r.problem(v, "a trialing tenant needs trial_ends")
        }
        if let v = f["overrides"],
            let o = r.fields(v, "overrides", allowed: ["rate", "quota", "max_body_bytes", "max_websockets", "features"])
        {
            if let x = o["features"], let list = r.locatedStringList(x, "overrides.features") {
                for item in list where !TenantRecord.isFeatureName(item.value) {
                    r.problem(item.at, "overrides.features: '\(item.value)' is not a feature name (1-64 of A-Z a-z 0-9 . _ : -)")
                }
                t.featureOverrides = list.map(\.value).filter(TenantRecord.isFeatureName)
            }
            if let x = o["max_websockets"] { t.maxWebsocketsOverride = r.int(x, "overrides.max_websockets", min: 0, max: 1_000_000) }
            if let x = o["rate"] { t.rateOverride = parseRate(x, "overrides.rate", r) }
            if let x = o["quota"] {
                if case .scalar = x.node {
                    if r.string(x, "quota") == "unlimited" {
                        t.quotaOverride = .unlimited
                    } else {
                        r.problem(x, "quota must be 'unlimited' or {requests, per}")
                    }
                } else {
                    t.quotaOverride = parseQuota(x, "overrides.quota", r)
                }
            }
            if let x = o["max_body_bytes"] { t.maxBodyBytes = r.size(x, "overrides.max_body_bytes") }
        }
        if let v = f["api_keys"] {
            for item in r.sequence(v, "api_keys") ?? [] {
                guard let k = r.fields(item, "api key", allowed: ["id", "sha256", "scopes", "roles"]) else { continue }
                guard let idAt = k["id"], let shaAt = k["sha256"], let id = r.nonEmptyString(idAt, "id"),
                    let sha = r.nonEmptyString(shaAt, "sha256")
                else {
                    if k["id"] == nil || k["sha256"] == nil { r.problem(item, "an api key needs id and sha256") }
                    continue
                }
                let hex = sha.lowercased()
                guard hex.utf8.count == 64, hex.utf8.allSatisfy({ ($0 >= 48 && $0 <= 57) || ($0 >= 97 && $0 <= 102) })
                else {
                    r.problem(shaAt, "sha256 must be 64 hex digits")
                    continue
                }
                if t.apiKeys.contains(where: { $0.id == id }) {
                    r.problem(idAt, "tenant '\(tenant)' has two api keys with id '\(id)'")
                    continue
                }
                if let first = keyOwners[hex] {
                    r.problem(shaAt, "this sha256 is already the key of \(first): a key belongs to one tenant, once")
                    continue
                }
                keyOwners[hex] = "tenant '\(tenant)' (id '\(id)')"
                var key = TenantRecord.APIKey(id: id, sha256: hex)
                if let x = k["scopes"] { key.scopes = scopeList(x, "api key '\(id)' scopes", r) ?? [] }
                if let x = k["roles"], let list = r.locatedStringList(x, "api key '\(id)' roles") {
                    for item in list where !TenantRecord.isRoleName(item.value) {
                        r.problem(item.at, "'\(item.value)' is not a role name (1-64 of A-Z a-z 0-9 . _ : -)")
                    }
                    if list.count > TenantRecord.maxRoles {
                        r.problem(x, "an api key has at most \(TenantRecord.maxRoles) roles")
                    }
                    key.roles = list.map(\.value).filter(TenantRecord.isRoleName)
                }
                t.apiKeys.append(key)
            }
            if t.apiKeys.count > TenantRecord.maxAPIKeys {
                r.problem(v, "tenant '\(tenant)' has \(t.apiKeys.count) api keys; at most \(TenantRecord.maxAPIKeys)")
            }
        }
        return t
    }

    func parseBilling(_ at: Located, plans: [String: PlanConfig], _ r: YAMLReader) -> BillingConfig? {
        guard let f = r.fields(at, "billing", allowed: ["webhook_secret_env", "grace_period", "prices", "webhook_path"]) else {
            return nil
        }
        var b = BillingConfig()
        b.webhookSecretEnv = f["webhook_secret_env"].flatMap { r.nonEmptyString($0, "billing.webhook_secret_env") }
        if let v = f["grace_period"], let d = r.duration(v, "billing.grace_period", allowZero: true) { b.gracePeriod = d }
        if let v = f["webhook_path"], let path = r.nonEmptyString(v, "billing.webhook_path") {
            if RequestTarget.split(path).map({ String($0.path) == path && $0.query.isEmpty }) == true {
                b.webhookPath = path
            } else {
                r.problem(v, "billing.webhook_path must be a normalized absolute path such as /webhooks/billing (no query)")
            }
        }
        if let v = f["prices"] {
            for entry in r.mapping(v, "billing.prices", allowed: nil) ?? [] {
                guard let plan = r.nonEmptyString(entry.value, "billing.prices.\(entry.key)") else { continue }
                if plans[plan] == nil { r.problem(entry.value, "unknown plan '\(plan)'") }
                b.prices[entry.key] = plan
            }
        }
        return b
    }

    func parseUpstream(_ at: Located, name: String, _ r: YAMLReader) -> UpstreamConfig? {
        guard
            let f = r.fields(
                at, "upstream '\(name)'",
                allowed: [
                    "targets", "balance", "health_check", "connect_timeout", "response_timeout", "retries",
                    "max_connections_per_target", "keepalive_timeout", "tls", "circuit_breaker", "max_in_flight",
                ])
        else { return nil }
        guard let targetsAt = f["targets"] else {
            r.problem(at, "upstream '\(name)' needs targets")
            return nil
        }
        var targets: [HostPort] = []
        for item in r.sequence(targetsAt, "targets") ?? [] {
            if let hp = r.hostPort(item, "target") {
                if hp.port == 0 { r.problem(item, "target port must not be 0") } else { targets.append(hp) }
            }
        }
        if case .sequence(let seq) = targetsAt.node, seq.isEmpty {
            r.problem(targetsAt, "upstream '\(name)' has no targets")
        }
        var u = UpstreamConfig(name: name, targets: targets)
        if let v = f["balance"],
            let b = r.oneOf(v, "balance", UpstreamConfig.Balance.self, [.roundRobin, .leastConnections])
        {
            u.balance = b
        }
        if let v = f["health_check"],
            let h = r.fields(v, "health_check", allowed: ["path", "interval", "timeout", "unhealthy_after", "healthy_after"])
        {
            var hc = UpstreamConfig.HealthCheck()
            if let x = h["path"], let p = r.nonEmptyString(x, "health_check.path") {
                if p.hasPrefix("/") { hc.path = p } else { r.problem(x, "health_check.path must start with /") }
            }
            if let x = h["interval"], let d = r.duration(x, "health_check.interval") { hc.interval = d }
            if let x = h["timeout"], let d = r.duration(x, "health_check.timeout") { hc.timeout = d }
            if let x = h["unhealthy_after"], let n = r.int(x, "health_check.unhealthy_after", min: 1, max: 100) {
                hc.unhealthyAfter = n
            }
            if let x = h["healthy_after"], let n = r.int(x, "health_check.healthy_after", min: 1, max: 100) {
                hc.healthyAfter = n
            }
            u.healthCheck = hc
        }
        if let v = f["connect_timeout"], let d = r.duration(v, "connect_timeout") { u.connectTimeout = d }
        if let v = f["response_timeout"], let d = r.duration(v, "response_timeout") { u.responseTimeout = d }
        if let v = f["retries"], let n = r.int(v, "retries", min: 0, max: 10) { u.retries = n }
        if let v = f["max_connections_per_target"], let n = r.int(v, "max_connections_per_target", min: 1, max: 100_000) {
            u.maxConnectionsPerTarget = n
        }
        if let v = f["keepalive_timeout"], let d = r.duration(v, "keepalive_timeout") { u.keepaliveTimeout = d }
        if let v = f["tls"] { u.tls = parseClientTLS(v, "upstreams.\(name).tls", r) }
        if let v = f["circuit_breaker"],
            let c = r.fields(v, "circuit_breaker", allowed: ["consecutive_failures", "open_for", "on_5xx"])
        {
            var cb = UpstreamConfig.CircuitBreaker()
            if let x = c["consecutive_failures"], let n = r.int(x, "circuit_breaker.consecutive_failures", min: 1, max: 1000) {
                cb.consecutiveFailures = n
            }
            if let x = c["open_for"], let d = r.duration(x, "circuit_breaker.open_for") {
                if d < 1_000_000 || d > 3_600_000_000_000 {
                    r.problem(x, "circuit_breaker.open_for must be between 1ms and 1h")
                } else {
                    cb.openFor = d
                }
            }
            if let x = c["on_5xx"], let b = r.bool(x, "circuit_breaker.on_5xx") { cb.on5xx = b }
            u.circuitBreaker = cb
        }
        if let v = f["max_in_flight"], let n = r.int(v, "max_in_flight", min: 1, max: 10_000_000) { u.maxInFlight = n }
        return u
    }

    func parseRoute(
        _ at: Located, upstreams: Set<String>, plans: [String: PlanConfig], _ r: YAMLReader
    ) -> RouteConfig? {
        guard
            let f = r.fields(
                at, "route",
                allowed: [
                    "cors",
                    "scopes",
                    "name", "match", "upstream", "strip_prefix", "auth", "min_plan", "feature", "roles", "rate_limits",
                    "allow_method_override", "websocket", "websocket_idle_timeout",
                ])
        else { return nil }
        guard let nameAt = f["name"], let name = r.nonEmptyString(nameAt, "route name") else {
            if f["name"] == nil { r.problem(at, "route needs a name") }
            return nil
        }
        guard let matchAt = f["match"], let m = r.fields(matchAt, "route.match", allowed: ["path_prefix", "methods", "host", "headers"])
        else {
            if f["match"] == nil { r.problem(at, "route '\(name)' needs match") }
            return nil
        }
        guard let prefixAt = m["path_prefix"], let prefix = r.nonEmptyString(prefixAt, "match.path_prefix") else {
            if m["path_prefix"] == nil { r.problem(matchAt, "route '\(name)' needs match.path_prefix") }
            return nil
        }
        var ok = true
        if !prefix.hasPrefix("/") || prefix.contains(where: { $0 == "?" || $0 == "#" || $0.isWhitespace }) {
            r.problem(prefixAt, "match.path_prefix must start with / and hold no ?, # or spaces")
            ok = false
        }
        guard let upAt = f["upstream"], let upstream = r.nonEmptyString(upAt, "route.upstream") else {
            if f["upstream"] == nil { r.problem(at, "route '\(name)' needs an upstream") }
            return nil
        }
        if !upstreams.contains(upstream) {
            r.problem(upAt, "route '\(name)' names unknown upstream '\(upstream)'")
            ok = false
        }
        var route = RouteConfig(name: name, pathPrefix: prefix, upstream: upstream)
        if let v = m["methods"], let methods = r.locatedStringList(v, "match.methods") {
            if methods.isEmpty {
                r.problem(v, "match.methods must list at least one method (leave it out to match any)")
                ok = false
            }
            for method in methods where !method.value.utf8.allSatisfy({ $0 >= 65 && $0 <= 90 }) {
                r.problem(method.at, "invalid method '\(method.value)' (uppercase letters only)")
                ok = false
            }
            route.methods = methods.map(\.value)
        }
        if let v = m["host"], let host = r.nonEmptyString(v, "match.host") { route.host = host.lowercased() }
        if let v = m["headers"] {
            if let headers = parseMatchHeaders(v, route: name, r) { route.headers = headers } else { ok = false }
        }
        if let v = f["strip_prefix"], let strip = r.nonEmptyString(v, "strip_prefix") {
            if !strip.hasPrefix("/") || !Router.segmentPrefix(strip, of: prefix) {
                r.problem(v, "strip_prefix '\(strip)' must be a path-segment prefix of path_prefix '\(prefix)'")
                ok = false
            }
            route.stripPrefix = strip
        }
        if let v = f["auth"], let a = r.oneOf(v, "auth", RouteConfig.Auth.self, [.required, .optional, .none]) {
            route.auth = a
        }
        if let v = f["min_plan"], let p = r.nonEmptyString(v, "min_plan") {
            if plans[p] == nil { r.problem(v, "min_plan names unknown plan '\(p)'") }
            route.minPlan = p
        }
        if let v = f["feature"] { route.feature = r.nonEmptyString(v, "feature") }
        if let v = f["cors"] {
            route.cors = parseCORS(v, route: route, r)
            if route.cors == nil { ok = false }
        }
        if let v = f["roles"] {
            route.roles = r.stringList(v, "roles")
            // Anonymous callers have no roles to check: roles need authentication.
            if route.auth != .required {
                r.problem(v, "route '\(name)': roles need auth: required (auth is \(route.auth.rawValue))")
                ok = false
            }
        }
        if let v = f["scopes"] {
            route.scopes = scopeList(v, "route '\(name)' scopes", r)
            if route.scopes?.isEmpty == true {
                r.problem(v, "route '\(name)': scopes must list at least one scope (leave it out for none)")
                ok = false
            }
            // As with roles: an anonymous caller has no scopes, and `auth: none` never looks at credentials.
            if route.auth != .required {
                r.problem(v, "route '\(name)': scopes need auth: required (auth is \(route.auth.rawValue))")
                ok = false
            }
        }
        if let v = f["allow_method_override"], let allow = r.bool(v, "allow_method_override") {
            route.allowMethodOverride = allow
        }
        if let v = f["websocket"], let on = r.bool(v, "websocket") { route.websocket = on }
        if let v = f["websocket_idle_timeout"], let d = r.duration(v, "websocket_idle_timeout") {
            route.websocketIdleTimeout = d
            if !route.websocket { r.problem(v, "route '\(name)': websocket_idle_timeout needs websocket: true") }
        }
        if let v = f["rate_limits"], let kinds = r.locatedStringList(v, "rate_limits") {
            for k in kinds where !Self.rateLimitKinds.contains(k.value) {
                r.problem(k.at, "unknown rate limit '\(k.value)' (one of \(Self.rateLimitKinds.joined(separator: ", ")))")
            }
            route.rateLimits = kinds.map(\.value)
        }
        return ok ? route : nil
    }

    /// A list of scopes (a route's, an API key's): each an RFC 6749 scope-token (``Scopes/isScope(_:)``), at
    /// most ``Scopes/maxCount``, duplicates kept once. Problems are reported; nil when it is not a list.
    func scopeList(_ at: Located, _ what: String, _ r: YAMLReader) -> [String]? {
        guard let list = r.locatedStringList(at, what) else { return nil }
        var scopes: [String] = []
        for item in list {
            if !Scopes.isScope(item.value) {
                r.problem(
                    item.at,
                    "\(what): '\(item.value)' is not a scope (1-\(Scopes.maxBytes) bytes of printable ASCII, no space, \" or \\)")
            } else if !scopes.contains(item.value) {
                scopes.append(item.value)
            }
        }
        if scopes.count > Scopes.maxCount { r.problem(at, "\(what): at most \(Scopes.maxCount) scopes") }
        return scopes
    }

    /// `metrics`: `tenant_series` (default 20; 0 folds every tenant into `other`).
    func parseMetrics(_ at: Located, _ r: YAMLReader) -> MetricsConfig? {
        guard let f = r.fields(at, "metrics", allowed: ["tenant_series"]) else { return nil }
        var m = MetricsConfig()
        if let v = f["tenant_series"], let n = r.int(v, "metrics.tenant_series", min: 0, max: 10_000) { m.tenantSeries = n }
        return m
    }

    func parseAudit(_ at: Located, _ r: YAMLReader) -> AuditConfig? {
        guard
            let f = r.fields(
                at, "audit",
                allowed: ["methods", "denials", "sinks", "queue_size", "queue_timeout", "hmac_key_env", "max_denials_per_second"])
        else {
            return nil
        }
        var a = AuditConfig()
        if let v = f["hmac_key_env"], let env = r.nonEmptyString(v, "audit.hmac_key_env") {
            a.hmacKeyEnv = env
            a.hmacKeyEnvAt = (v.file, v.line, v.column)
        }
        if let v = f["max_denials_per_second"], let n = r.int(v, "audit.max_denials_per_second", min: 1, max: 1_000_000) {
            a.maxDenialsPerSecond = n
        }
        if let v = f["queue_size"], let n = r.int(v, "audit.queue_size", min: 1, max: 10_000_000) { a.queueSize = n }
        if let v = f["queue_timeout"], let d = r.duration(v, "audit.queue_timeout") { a.queueTimeout = d }
        if let v = f["methods"], let m = r.stringList(v, "audit.methods") { a.methods = m }
        if let v = f["denials"], let b = r.bool(v, "audit.denials") { a.denials = b }
        if let v = f["sinks"] {
            for item in r.sequence(v, "audit.sinks") ?? [] {
                guard let entries = r.mapping(item, "audit sink", allowed: ["file", "redis_stream", "stdout"]) else {
                    continue
                }
                guard entries.count == 1, let entry = entries.first else {
                    r.problem(item, "an audit sink names exactly one kind: file, redis_stream or stdout")
                    continue
                }
                switch entry.key {
                case "file":
                    guard let s = r.fields(entry.value, "file sink", allowed: ["path", "rotate_bytes", "fsync"]) else {
                        continue
                    }
                    guard let p = s["path"].flatMap({ r.nonEmptyString($0, "path") }) else {
                        if s["path"] == nil { r.problem(entry.value, "file sink needs a path") }
                        continue
                    }
                    let rotate = s["rotate_bytes"].flatMap { r.size($0, "rotate_bytes") } ?? 100 * 1024 * 1024
                    var fsync = "batch"
                    if let x = s["fsync"], let mode = r.string(x, "fsync") {
                        if ["always", "batch", "never"].contains(mode) {
                            fsync = mode
                        } else {
                            r.problem(x, "fsync must be one of always, batch, never")
                        }
                    }
                    a.sinks.append(.file(path: p, rotateBytes: rotate, fsync: fsync))
                case "redis_stream":
                    guard let s = r.fields(entry.value, "redis_stream sink", allowed: ["stream", "maxlen"]) else {
                        continue
                    }
                    let stream = s["stream"].flatMap { r.nonEmptyString($0, "stream") } ?? "gh:audit"
                    let maxlen = s["maxlen"].flatMap { r.int($0, "maxlen", min: 1) } ?? 1_000_000
                    a.sinks.append(.redisStream(stream: stream, maxlen: maxlen))
                default:
                    if !r.isNull(entry.value) { _ = r.fields(entry.value, "stdout sink", allowed: []) }
                    a.sinks.append(.stdout)
                }
            }
        }
        return a
    }
}

extension ConfigLoader {
    func parseAccessLog(_ at: Located, _ r: YAMLReader) -> AccessLogConfig? {
        guard let f = r.fields(at, "access_log", allowed: ["path", "sample"]) else { return nil }
        guard let p = f["path"] else {
            r.problem(at, "access_log needs a path (a file, or stdout)")
            return nil
        }
        guard let path = r.nonEmptyString(p, "access_log.path") else { return nil }
        var log = AccessLogConfig(destination: path == "stdout" ? .stdout : .file(path))
        if let v = f["sample"], let x = r.fraction(v, "access_log.sample") { log.sample = x }
        return log
    }

    func parseTracing(_ at: Located, _ r: YAMLReader) -> TracingConfig? {
        guard let f = r.fields(at, "tracing", allowed: ["otlp_endpoint", "service_name", "sample_ratio"]) else {
            return nil
        }
        guard let e = f["otlp_endpoint"] else {
            r.problem(at, "tracing needs otlp_endpoint (the collector's OTLP/HTTP URL, e.g. http://127.0.0.1:4318)")
            return nil
        }
        guard let text = r.nonEmptyString(e, "tracing.otlp_endpoint") else { return nil }
        guard let url = TracingConfig.tracesURL(text) else {
            r.problem(e, "tracing.otlp_endpoint must be an http:// or https:// URL")
            return nil
        }
        var t = TracingConfig(endpoint: url)
        if let v = f["service_name"], let name = r.nonEmptyString(v, "tracing.service_name") { t.serviceName = name }
        if let v = f["sample_ratio"], let x = r.fraction(v, "tracing.sample_ratio") { t.sampleRatio = x }
        return t
    }
}
