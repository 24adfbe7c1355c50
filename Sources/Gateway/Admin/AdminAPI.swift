import Foundation
import NIOCore
import NIOPosix
import Policy

/// The tenant, API key and usage endpoints of the admin API (SPEC "Admin API"), as plain request → response.
struct AdminAPI {
    struct Response {
        var status: Int
        var contentType = "application/json"
        var body: String
    }

    let tenants: TenantDirectory
    let store: any TenantStore
    let config: GatewayConfig
    let eventLoop: EventLoop
    let usage: UsageReader
    let export: UsageExporter
    /// Picks the billing period a usage report covers.
    let clock: WallClock

    /// Handles `/admin/tenants/...` and `/admin/usage`; nil when the path is not one of these endpoints.
    /// `query` is the request target's query string, without the `?`.
    func handle(method: String, path: String, query: Substring = "", body: [UInt8], requestID: String)
        -> EventLoopFuture<Response>?
    {
        let routed =
            method == "GET" && path == "/admin/usage"
            ? usageExport(query: query, requestID: requestID)
            : route(method: method, path: path, body: body, requestID: requestID)
        guard let result = routed else { return nil }
        return result.flatMapErrorThrowing { error in
            // The store failed (Redis unreachable): the write did not happen.
            self.problem(.storeUnavailable(), requestID)
        }
    }

    private func now(_ r: Response) -> EventLoopFuture<Response> { eventLoop.makeSucceededFuture(r) }

    private func route(method: String, path: String, body: [UInt8], requestID: String) -> EventLoopFuture<Response>? {
        let parts = path.split(separator: "/", omittingEmptySubsequences: false).map(String.init)
        // ["", "admin", "tenants", id, ...]
        guard parts.count >= 4, parts[1] == "admin", parts[2] == "tenants" else { return nil }
        let id = parts[3]
        guard TenantID.isValid(id) else {
            return now(problem(.badRequest("Tenant ids are 1-64 characters of A-Z a-z 0-9 . _ -."), requestID))
        }
        switch (method, parts.count) {
        case ("GET", 4):
            guard let (record, source) = tenants.effective(id) else {
                return now(problem(.unknownTenant("Tenant '\(id)' is not known."), requestID, status: 404))
            }
            return now(Response(status: 200, body: Self.document(id, record, source)))
        case ("PUT", 4):
            switch parseRecord(body) {
            case .failure(let denial): return now(problem(denial, requestID))
            case .success(var record):
                // Unless the body gives the date, a move to past_due starts the grace period now.
                if record.status != "past_due" || record.pastDueSinceAt == nil {
                    record.pastDueSinceAt = TenantRecord.pastDueSince(from: tenants.record(id), to: record.status, now: clock.now())
                }
                let written = record
                return store.put(id, written).map { created in
                    let (effective, source) = self.tenants.effective(id) ?? (written, .store)
                    return Response(status: created ? 201 : 200, body: Self.document(id, effective, source))
                }
            }
        case ("DELETE", 4):
            return store.delete(id).map { deleted in
                deleted
                    ? Response(status: 204, body: "")
                    : self.problem(.unknownTenant("Tenant '\(id)' is not known."), requestID, status: 404)
            }
        case ("POST", 5) where parts[4] == "api-keys":
            let request: KeyRequest
            switch Self.parseKeyRequest(body) {
            case .failure(let denial): return now(problem(denial, requestID))
            case .success(let r): request = r
            }
            // The store checks, with the write, that the id is free and the tenant has room.
            let keyID = request.id ?? "key-" + Self.randomToken(bytes: 6)
            let key = "gh_" + Self.randomToken(bytes: 32)
            let record = TenantRecord.APIKey(
                id: keyID, sha256: Digest.hex(Digest.sha256(key.utf8)), scopes: request.scopes, roles: request.roles)
            return store.addKey(id, record).map { result in
                switch result {
                case .added:
                    Response(status: 201, body: "{\"id\":\(JSONText.quote(keyID)),\"key\":\(JSONText.quote(key))}")
                case .idTaken:
                    self.problem(.badRequest("Tenant '\(id)' already has a key '\(keyID)'."), requestID, status: 409)
                case .full:
                    self.problem(
                        .badRequest(
                            "Tenant '\(id)' holds \(TenantRecord.maxAPIKeys) API keys, the most it may; revoke one first."),
                        requestID, status: 409)
                case .unknownTenant:
                    self.problem(.unknownTenant("Tenant '\(id)' is not known."), requestID, status: 404)
                }
            }
        case ("GET", 5) where parts[4] == "usage":
            guard let record = tenants.record(id) else {
                return now(problem(.unknownTenant("Tenant '\(id)' is not known."), requestID, status: 404))
            }
            let quota = record.quotaOverride ?? config.plans[record.plan]?.quota ?? .unlimited
            let per: PlanConfig.QuotaPeriod
            if case .limited(_, let p) = quota { per = p } else { per = .month }
            let at = clock.now()
            let period = BillingPeriod.containing(at, per: per, anchor: record.billingAnchor)
            return usage.read(tenant: id, period: period, now: at, on: eventLoop).map { used, days in
                Response(
                    status: 200,
                    body: UsageReader.document(tenant: id, record: record, quota: quota, period: period, used: used, days: days))
            }
        case ("DELETE", 6) where parts[4] == "api-keys":
            return store.revokeKey(id, id: parts[5]).map { revoked in
                revoked
                    ? Response(status: 204, body: "")
                    : self.problem(.routeNotFound("No key '\(parts[5])' for tenant '\(id)'."), requestID, status: 404)
            }
        default:
            return nil
        }
    }

    /// `GET /admin/usage?from=DATE&to=DATE[&tenant=T]`: per-tenant, per-day request counts (``UsageReport``).
    private func usageExport(query: Substring, requestID: String) -> EventLoopFuture<Response> {
        guard let items = Self.queryItems(query) else {
            return now(problem(.badRequest("The query string is malformed."), requestID))
        }
        var values: [String: String] = [:]
        for (name, value) in items {
            guard ["from", "to", "tenant"].contains(name) else {
                return now(problem(.badRequest("Unknown query parameter '\(name)' (from, to, tenant)."), requestID))
            }
            guard values.updateValue(value, forKey: name) == nil else {
                return now(problem(.badRequest("Query parameter '\(name)' is given twice."), requestID))
            }
        }
        guard let from = values["from"], let to = values["to"] else {
            return now(problem(.badRequest("from and to are required: dates YYYY-MM-DD (UTC), both included."), requestID))
        }
        let range: UsageRange
        switch UsageRange.parse(from: from, to: to) {
        case .failure(let error): return now(problem(.badRequest(error.description + "."), requestID))
        case .success(let r): range = r
        }
        let tenant = values["tenant"]
        if let tenant, !TenantID.isValid(tenant) {
            return now(problem(.badRequest("tenant must be 1-64 characters of A-Z a-z 0-9 . _ -."), requestID))
        }
        let eventLoop = self.eventLoop
        return export.export(range, tenant: tenant, now: clock.now(), on: eventLoop).flatMap { report in
            NIOThreadPool.singleton.runIfActive(eventLoop: eventLoop) { Response(status: 200, body: report.json) }
        }
    }

    /// `name=value` pairs of a query string, percent-decoded (`+` is a space); nil when an escape is malformed.
    static func queryItems(_ query: Substring) -> [(String, String)]? {
        var items: [(String, String)] = []
        for part in query.split(separator: "&", omittingEmptySubsequences: true) {
            let pair = part.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            func decode(_ s: Substring) -> String? { s.replacingOccurrences(of: "+", with: " ").removingPercentEncoding }
            guard let name = decode(pair[0]), let value = decode(pair.count > 1 ? pair[1] : "") else { return nil }
            items.append((name, value))
        }
        return items
    }

    /// A `POST …/api-keys` body: the key's id (else one is made up), and what it grants.
    struct KeyRequest {
        var id: String?
        var scopes: [String] = []
        var roles: [String] = []
    }

    /// Validates a `POST …/api-keys` body (optional): `{"id"?, "scopes"?: [scope, ...], "roles"?: [role, ...]}`;
    /// anything else is a 400 naming the field.
    static func parseKeyRequest(_ body: [UInt8]) -> Result<KeyRequest, Denial> {
        var request = KeyRequest()
        guard !body.isEmpty else { return .success(request) }
        guard let object = (try? JSONSerialization.jsonObject(with: Data(body))) as? [String: Any] else {
            return .failure(.badRequest("The body must be a JSON object."))
        }
        let allowed: Set<String> = ["id", "scopes", "roles"]
        if let unknown = object.keys.sorted().first(where: { !allowed.contains($0) }) {
            return .failure(.badRequest("Unknown field '\(unknown)' (id, scopes, roles)."))
        }
        if let given = object["id"], !(given is NSNull) {
            guard let s = given as? String, TenantID.isValid(s) else {
                return .failure(.badRequest("id must be 1-64 characters of A-Z a-z 0-9 . _ -."))
            }
            request.id = s
        }
        // A list of distinct strings that all pass `valid`, at most `max`.
        func names(_ field: String, max: Int, _ valid: (String) -> Bool, _ rule: String) -> Result<[String], Denial> {
            guard let raw = object[field], !(raw is NSNull) else { return .success([]) }
            let list = raw as? [Any] ?? []
            let strings = list.compactMap { $0 as? String }
            guard raw is [Any], strings.count == list.count, strings.allSatisfy(valid) else {
                return .failure(.badRequest("Field '\(field)' must be an array of \(rule)."))
            }
            var distinct: [String] = []
            var seen: Set<String> = []
            for s in strings where seen.insert(s).inserted {
                distinct.append(s)
                if distinct.count > max { return .failure(.badRequest("Field '\(field)' holds at most \(max) names.")) }
            }
            return .success(distinct)
        }
        switch names("scopes", max: Scopes.maxCount, Scopes.isScope, "scopes (1-\(Scopes.maxBytes) bytes of printable ASCII, no space, \" or \\)") {
        case .failure(let denial): return .failure(denial)
        case .success(let scopes): request.scopes = scopes
        }
        switch names("roles", max: TenantRecord.maxRoles, TenantRecord.isRoleName, "role names (1-64 of A-Z a-z 0-9 . _ : -)") {
        case .failure(let denial): return .failure(denial)
        case .success(let roles): request.roles = roles
        }
        return .success(request)
    }

    /// Validates a PUT body: `{plan, status, trial_ends?, overrides?: {max_body_bytes?, rate?, quota?}}`.
    func parseRecord(_ body: [UInt8]) -> Result<TenantRecord, Denial> {
        guard let object = (try? JSONSerialization.jsonObject(with: Data(body))) as? [String: Any] else {
            return .failure(.badRequest("The body must be a JSON object."))
        }
        let allowed: Set<String> = ["plan", "status", "trial_ends", "past_due_since", "billing_anchor", "overrides"]
        if let unknown = object.keys.sorted().first(where: { !allowed.contains($0) }) {
            return .failure(.badRequest("Unknown field '\(unknown)'."))
        }
        guard let plan = object["plan"] as? String else { return .failure(.badRequest("Field 'plan' is required (a string).")) }
        guard config.plans[plan] != nil else { return .failure(.badRequest("Field 'plan': unknown plan '\(plan)'.")) }
        var record = TenantRecord(plan: plan)
        if let raw = object["status"] {
            guard let status = raw as? String, ConfigLoader.tenantStatuses.contains(status) else {
                return .failure(.badRequest("Field 'status' must be one of \(ConfigLoader.tenantStatuses.joined(separator: ", ")).")) 
            }
            record.status = status
        }
        if let raw = object["trial_ends"], !(raw is NSNull) {
            guard let text = raw as? String, let at = Timestamp.parse(text) else {
                return .failure(.badRequest("Field 'trial_ends' must be an RFC 3339 timestamp."))
            }
            record.trialEnds = text
            record.trialEndsAt = at
        }
        if record.status == "trialing" && record.trialEndsAt == nil {
            return .failure(.badRequest("Field 'trial_ends' is required for a trialing tenant."))
        }
        if let raw = object["past_due_since"], !(raw is NSNull) {
            guard let text = raw as? String, let at = Timestamp.parse(text) else {
                return .failure(.badRequest("Field 'past_due_since' must be an RFC 3339 timestamp."))
            }
            record.pastDueSinceAt = at
        }
        if let raw = object["billing_anchor"] {
            guard let n = raw as? Int, (1...31).contains(n), !OverridesJSON.isBool(raw) else {
                return .failure(.badRequest("Field 'billing_anchor' must be a day of the month, 1-31."))
            }
            record.billingAnchor = n
        }
        if let raw = object["overrides"], !(raw is NSNull), let problem = OverridesJSON.decode(raw, into: &record) {
            return .failure(.badRequest(problem))
        }
        return .success(record)
    }

    static func document(_ id: String, _ r: TenantRecord, _ source: TenantDirectory.Source) -> String {
        var json = "{\"id\":\(JSONText.quote(id)),\"plan\":\(JSONText.quote(r.plan)),\"status\":\(JSONText.quote(r.status))"
        json += ",\"trial_ends\":" + (r.trialEnds.map(JSONText.quote) ?? "null")
        json += ",\"past_due_since\":" + (r.pastDueSinceAt.map { JSONText.quote(CivilDate.rfc3339(epochSeconds: $0)) } ?? "null")
        json += ",\"billing_anchor\":\(r.billingAnchor)"
        let overrides = (try? JSONSerialization.data(withJSONObject: OverridesJSON.encode(r), options: [.sortedKeys])) ?? Data("{}".utf8)
        json += ",\"overrides\":" + String(decoding: overrides, as: UTF8.self)
        // Keys by id, with what they grant; never a hash (nor, kept nowhere, a plaintext).
        json += ",\"api_keys\":[" + r.apiKeys.map(Self.keyDocument).joined(separator: ",") + "]"
        json += ",\"source\":\(JSONText.quote(source.rawValue))}"
        return json
    }

    static func keyDocument(_ key: TenantRecord.APIKey) -> String {
        func list(_ names: [String]) -> String { "[" + names.map(JSONText.quote).joined(separator: ",") + "]" }
        return "{\"id\":\(JSONText.quote(key.id)),\"scopes\":\(list(key.scopes)),\"roles\":\(list(key.roles))}"
    }

    private func problem(_ denial: Denial, _ requestID: String, status: Int? = nil) -> Response {
        let d = status.map { denial.with(status: $0) } ?? denial
        return Response(status: d.status, contentType: "application/problem+json", body: d.document(requestID: requestID))
    }

    static func randomToken(bytes: Int) -> String {
        var rng = SystemRandomNumberGenerator()
        return Base64URL.encode((0..<bytes).map { _ in UInt8.random(in: 0...255, using: &rng) })
    }
}
