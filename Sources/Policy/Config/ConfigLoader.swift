import Foundation
import Yams

/// Loads YAML config files (with `include:`) into a validated ``GatewayConfig``.
///
/// Two layers: YAML nodes are read with their marks by ``YAMLReader``; the values are then checked
/// across sections (routes naming upstreams, plans naming features, ...). Every problem found is reported,
/// each as `PATH:LINE:COLUMN: message`.
public struct ConfigLoader {
    /// Reads a file's text; injectable for tests.
    public typealias FileReader = @Sendable (String) -> String?

    static let topLevelKeys = [
        "include", "server", "store", "identity", "plans", "plan_order", "tenants", "billing", "upstreams",
        "routes", "audit", "access_log", "tracing", "metrics",
    ]
    /// Sections that name entries; several files may each contribute entries.
    static let mergedMaps: Set<String> = ["plans", "tenants", "upstreams"]
    /// Sections that are lists; several files' lists are concatenated.
    static let mergedLists: Set<String> = ["routes"]
    /// Most files one config may include, to bound include chains.
    static let maxFiles = 64

    private let readFile: FileReader

    public init(readFile: @escaping FileReader = ConfigLoader.readFromDisk) {
        self.readFile = readFile
    }

    @Sendable public static func readFromDisk(_ path: String) -> String? {
        guard let data = FileManager.default.contents(atPath: path) else { return nil }
        return String(decoding: data, as: UTF8.self)
    }

    /// Loads and validates the config at `path`.
    public func load(path: String) throws(ConfigError) -> GatewayConfig {
        let reader = YAMLReader()
        var sections: [String: [(keyAt: Located, value: Located)]] = [:]
        var files: [String] = []
        collect(path: path, includedFrom: nil, reader: reader, sections: &sections, files: &files)
        let config = build(sections: sections, files: files, reader: reader)
        if !reader.problems.isEmpty || config == nil {
            // Report in file order, then line and column, whatever order the sections were checked in.
            var problems = reader.problems.enumerated().sorted { a, b in
                let fa = files.firstIndex(of: a.element.file) ?? Int.max
                let fb = files.firstIndex(of: b.element.file) ?? Int.max
                if fa != fb { return fa < fb }
                if a.element.line != b.element.line { return a.element.line < b.element.line }
                if a.element.column != b.element.column { return a.element.column < b.element.column }
                return a.offset < b.offset
            }.map(\.element)
            if problems.isEmpty {
                problems.append(ConfigProblem(file: path, line: 1, column: 1, message: "invalid config"))
            }
            throw ConfigError(problems: problems)
        }
        var loaded = config!
        loaded.tlsFiles = reader.tlsFiles
        return loaded
    }

    /// Reads one file and, depth first, the files it includes; gathers each top-level section's occurrences.
    private func collect(
        path: String, includedFrom: Located?, reader: YAMLReader,
        sections: inout [String: [(keyAt: Located, value: Located)]], files: inout [String]
    ) {
        if files.contains(path) {
            if let includedFrom { reader.problem(includedFrom, "'\(path)' is included more than once") }
            return
        }
        guard files.count < Self.maxFiles else {
            if let includedFrom { reader.problem(includedFrom, "more than \(Self.maxFiles) config files") }
            return
        }
        guard let text = readFile(path) else {
            if let includedFrom {
                reader.problem(includedFrom, "cannot read included file '\(path)'")
            } else {
                reader.problem(file: path, line: 1, column: 1, "cannot read config file")
            }
            return
        }
        files.append(path)
        let root: Node?
        do {
            root = try Yams.compose(yaml: text)
        } catch let error as YamlError {
            let (line, column, message) = Self.describe(error)
            reader.problem(file: path, line: line, column: column, "YAML syntax error: \(message)")
            return
        } catch {
            reader.problem(file: path, line: 1, column: 1, "YAML syntax error: \(error)")
            return
        }
        guard let root else { return }  // an empty file contributes nothing
        let at = Located(node: root, file: path)
        guard let entries = reader.mapping(at, "the config file", allowed: Self.topLevelKeys) else { return }
        for entry in entries where entry.key != "include" {
            sections[entry.key, default: []].append((entry.keyAt, entry.value))
        }
        if let include = entries.first(where: { $0.key == "include" }) {
            let items: [Located]
            if case .sequence = include.value.node {
                items = reader.sequence(include.value, "include") ?? []
            } else {
                items = [include.value]
            }
            let base = (path as NSString).deletingLastPathComponent
            for item in items {
                guard let rel = reader.nonEmptyString(item, "include") else { continue }
                let full = rel.hasPrefix("/") ? rel : (base.isEmpty ? rel : base + "/" + rel)
                collect(path: full, includedFrom: item, reader: reader, sections: &sections, files: &files)
            }
        }
    }

    private static func describe(_ error: YamlError) -> (Int, Int, String) {
        switch error {
        case .scanner(_, let problem, let mark, _), .parser(_, let problem, let mark, _),
            .composer(_, let problem, let mark, _):
            return (mark.line, mark.column, problem)
        case .duplicatedKeysInMapping(let duplicates, let context):
            return (context.mark.line, context.mark.column, "duplicate keys \(duplicates.joined(separator: ", "))")
        default:
            return (1, 1, "\(error)")
        }
    }

    /// Merges the sections gathered from every file and builds the snapshot.
    private func build(
        sections: [String: [(keyAt: Located, value: Located)]], files: [String], reader: YAMLReader
    ) -> GatewayConfig? {
        // A section that is not a named map or a list may appear in one file only.
        var single: [String: Located] = [:]
        for (key, occurrences) in sections where !Self.mergedMaps.contains(key) && !Self.mergedLists.contains(key) {
            for extra in occurrences.dropFirst() {
                reader.problem(extra.keyAt, "section '\(key)' is already defined in \(occurrences[0].keyAt.file)")
            }
            single[key] = occurrences[0].value
        }
        func mapEntries(_ key: String, _ what: String) -> [(key: String, keyAt: Located, value: Located)] {
            var all: [(key: String, keyAt: Located, value: Located)] = []
            var seen: [String: Located] = [:]
            for occurrence in sections[key] ?? [] {
                if reader.isNull(occurrence.value) { continue }
                for entry in reader.mapping(occurrence.value, key, allowed: nil) ?? [] {
                    if let first = seen[entry.key] {
                        reader.problem(entry.keyAt, "duplicate \(what) '\(entry.key)' (first at \(first.file):\(first.line))")
                        continue
                    }
                    seen[entry.key] = entry.keyAt
                    all.append(entry)
                }
            }
            return all
        }
        let server = single["server"].flatMap { parseServer($0, reader) } ?? ServerConfig()
        let store = single["store"].flatMap { parseStore($0, reader) }
        let identity = single["identity"].flatMap { parseIdentity($0, reader) } ?? IdentityConfig()
        let planEntries = mapEntries("plans", "plan")
        var plans: [String: PlanConfig] = [:]
        for entry in planEntries {
            if let plan = parsePlan(entry.value, name: entry.key, reader) { plans[entry.key] = plan }
        }
        var planOrder = planEntries.map(\.key)
        if let orderAt = single["plan_order"], let order = reader.stringList(orderAt, "plan_order") {
            for name in order where plans[name] == nil {
                reader.problem(orderAt, "plan_order names unknown plan '\(name)'")
            }
            for name in plans.keys where !order.contains(name) {
                reader.problem(orderAt, "plan_order does not list plan '\(name)'")
            }
            if Set(order).count != order.count { reader.problem(orderAt, "plan_order lists a plan twice") }
            planOrder = order
        }
        var tenants: [String: TenantRecord] = [:]
        var keyOwners: [String: String] = [:]
        for entry in mapEntries("tenants", "tenant") {
            if !TenantID.isValid(entry.key) {
                reader.problem(entry.keyAt, "invalid tenant id '\(entry.key)' (1-64 of A-Z a-z 0-9 . _ -)")
                continue
            }
            if let t = parseTenant(entry.value, id: entry.key, plans: plans, keyOwners: &keyOwners, reader) {
                tenants[entry.key] = t
            }
        }
        let billing = single["billing"].flatMap { parseBilling($0, plans: plans, reader) }
        var upstreams: [String: UpstreamConfig] = [:]
        for entry in mapEntries("upstreams", "upstream") {
            if let u = parseUpstream(entry.value, name: entry.key, reader) { upstreams[entry.key] = u }
        }
        let upstreamNames = Set(mapEntries("upstreams", "upstream").map(\.key))
        var routes: [RouteConfig] = []
        var routeNames: [String: Located] = [:]
        for occurrence in sections["routes"] ?? [] {
            for item in reader.sequence(occurrence.value, "routes") ?? [] {
                guard
                    let route = parseRoute(
                        item, upstreams: upstreamNames, plans: plans, reader)
                else { continue }
                if let first = routeNames[route.name] {
                    reader.problem(item, "duplicate route name '\(route.name)' (first at \(first.file):\(first.line))")
                    continue
                }
                routeNames[route.name] = item
                routes.append(route)
            }
        }
        checkRouteMatches(
            routes, located: routes.map { routeNames[$0.name]! }, server: server, identity: identity, reader)
        let audit = single["audit"].flatMap { parseAudit($0, reader) }
        if let audit, store == nil, let at = single["audit"],
            audit.sinks.contains(where: { if case .redisStream = $0 { return true } else { return false } })
        {
            reader.problem(at, "the redis_stream audit sink needs a store with redis")
        }
        let metrics = single["metrics"].flatMap { parseMetrics($0, reader) } ?? MetricsConfig()
        var config = GatewayConfig(
            server: server, store: store, identity: identity, plans: plans, planOrder: planOrder, tenants: tenants,
            billing: billing, upstreams: upstreams, routes: routes, audit: audit, metrics: metrics, files: files)
        config.accessLog = single["access_log"].flatMap { parseAccessLog($0, reader) }
        config.tracing = single["tracing"].flatMap { parseTracing($0, reader) }
        return config
    }
}
