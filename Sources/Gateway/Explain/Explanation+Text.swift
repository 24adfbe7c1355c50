import Foundation

extension Explanation {
    /// The explanation for people: one section per phase, a label in the first ten columns.
    public var text: String {
        var out: [String] = []
        func section(_ label: String, _ lines: [String]) {
            for (i, line) in lines.enumerated() where !line.isEmpty {
                let head = i == 0 ? label : ""
                out.append(head.padding(toLength: 10, withPad: " ", startingAt: 0) + line)
            }
        }
        let r = request
        var requestLine = "\(r.method) \(r.target)  (host \(r.host ?? "none"), \(r.scheme)"
        if r.body != "none" { requestLine += ", body \(r.body)" }
        section("request", [requestLine + ")"])
        if let route {
            var first = "\(route.name)  (\(route.why))"
            if route.local == nil { first += "   upstream \(route.upstream)" }
            section("route", [first] + Self.checkLines(route.checks) + nearMisses.map { "not: \($0.route) (\($0.reason))" })
        } else if phases.contains(where: { $0.phase == "route" }) {
            let misses = nearMisses.map { "not: \($0.route) (\($0.reason))" }
            section("route", ["none matches"] + (misses.isEmpty ? ["(no route comes close)"] : misses))
        }
        if let identity {
            var lines: [String] = []
            var who = "auth \(identity.auth), credential \(identity.credential.replacingOccurrences(of: "_", with: " "))"
            if let user = identity.user { who += "; user \(user)" }
            if !identity.roles.isEmpty { who += ", roles \(identity.roles.joined(separator: ","))" }
            if !identity.scopes.isEmpty { who += ", scopes \(identity.scopes.joined(separator: " "))" }
            lines.append(who)
            lines += Self.checkLines(identity.checks)
            section("identity", lines)
        }
        if let tenant {
            var first = tenant.id.map { "\($0) (\(tenant.source))" } ?? "none (\(tenant.source))"
            if let record = tenant.record {
                first += "; record from the \(record == "store" ? "store" : "YAML seed")"
                if let plan = tenant.plan { first += ": plan \(plan)" }
                if let status = tenant.status { first += ", status \(status)" }
            }
            section("tenant", [first] + Self.checkLines(tenant.checks))
        }
        if let gates {
            var first = ""
            if let plan = gates.plan { first = "plan \(plan) (status \(gates.status ?? "-")): " }
            let lines = Self.checkLines(gates.checks)
            section("gates", [first + (lines.first ?? "none")] + lines.dropFirst())
        }
        if let charge {
            var parts: [String] = []
            for b in charge.buckets {
                let level = b.tokens.map { String(format: "%.1f", $0) } ?? "?"
                parts.append("bucket \(b.name): \(level) of \(b.burst) tokens (\(Self.number(b.ratePerSecond))/s)")
            }
            if let q = charge.quota {
                let used = q.used.map(String.init) ?? "?"
                let period = q.per == "day" ? "today" : "this \(q.per)"
                let limit = q.limit.map { "of \($0)" } ?? "(unlimited)"
                parts.append("quota \(used) \(limit) \(period) (resets \(q.periodEnd))")
            }
            var lines = [parts.isEmpty ? "nothing charged" : parts.joined(separator: "; ")]
            var verdict = "would be: \(charge.verdict)"
            if let h = charge.headers, let limit = h["limit"], let remaining = h["remaining"], let reset = h["reset"] {
                verdict += "  (RateLimit-Limit \(limit), RateLimit-Remaining \(remaining), RateLimit-Reset \(reset))"
            }
            lines.append(verdict + "; levels \(charge.levels)")
            lines += Self.checkLines(charge.checks)
            section("charge", lines)
        }
        if let tunnel { section("tunnel", Self.checkLines(tunnel)) }
        if let audit { section("audit", Self.checkLines(audit)) }
        if let upstream {
            var first = "\(upstream.name): \(upstream.request)"
            let ids = upstream.identityHeaders.sorted { $0.key < $1.key }.map { "\($0.key): \($0.value)" }
            if !ids.isEmpty { first += "  " + ids.joined(separator: ", ") }
            section("upstream", [first, "targets \(upstream.targets.joined(separator: ", ")) (not contacted)"])
        }
        let d = decision
        var verdict = d.allow ? "allow \(d.status)" : "deny \(d.status) \(d.code ?? "")"
        verdict += d.allow ? " → \(d.detail)" : ": \(d.detail)"
        section("decision", [verdict])
        section("note", notes)
        return out.joined(separator: "\n") + "\n"
    }

    /// Checks as lines: passes run together (`size ok, exp ok (expires in 60 s)`, wrapped), a failure or a fact
    /// on a line of its own, the checks not made gathered at the end.
    static func checkLines(_ checks: [Check], width: Int = 100) -> [String] {
        var lines: [String] = []
        var current = ""
        var skipped: [String] = []
        func flush() {
            if !current.isEmpty { lines.append(current) }
            current = ""
        }
        for c in checks {
            switch c.result {
            case .ok:
                let item = c.detail.isEmpty ? "\(c.name) ok" : "\(c.name) ok (\(c.detail))"
                if current.isEmpty {
                    current = item
                } else if current.count + 2 + item.count > width {
                    flush()
                    current = item
                } else {
                    current += ", " + item
                }
            case .failed:
                flush()
                lines.append("\(c.name) FAILED: \(c.detail)")
            case .info:
                flush()
                lines.append(c.detail.isEmpty ? c.name : "\(c.name): \(c.detail)")
            case .skipped:
                skipped.append(c.detail.isEmpty ? c.name : "\(c.name) (\(c.detail))")
            }
        }
        flush()
        if !skipped.isEmpty { lines.append("not checked: " + skipped.joined(separator: ", ")) }
        return lines
    }

    static func number(_ x: Double) -> String {
        x == x.rounded() && abs(x) < 1e15 ? String(Int(x)) : String(format: "%.3g", x)
    }
}
