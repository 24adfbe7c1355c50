import Foundation
import Policy

/// A tenant's `overrides` object, as the admin API accepts and shows it and as the store keeps it:
/// `{"rate": {"requests": 100, "per": "1s", "burst": 200}, "quota": {"requests": 5000, "per": "month"} | "unlimited",
/// "max_body_bytes": 1048576, "max_websockets": 10, "features": ["beta"]}`.
enum OverridesJSON {
    static func encode(_ r: TenantRecord) -> [String: Any] {
        var o: [String: Any] = [:]
        if let m = r.maxBodyBytes { o["max_body_bytes"] = m }
        if let w = r.maxWebsocketsOverride { o["max_websockets"] = w }
        if !r.featureOverrides.isEmpty { o["features"] = r.featureOverrides }
        if let rate = r.rateOverride {
            o["rate"] = ["requests": rate.requests, "per": Self.duration(rate.per), "burst": rate.burst]
        }
        switch r.quotaOverride {
        case nil: break
        case .unlimited: o["quota"] = "unlimited"
        case .limited(let requests, let per): o["quota"] = ["requests": requests, "per": per.rawValue]
        }
        return o
    }

    /// Applies a decoded `overrides` object to `record`; the error names the bad field.
    static func decode(_ raw: Any, into record: inout TenantRecord) -> String? {
        guard let o = raw as? [String: Any] else { return "Field 'overrides' must be an object." }
        if let unknown = o.keys.sorted().first(where: {
            !["rate", "quota", "max_body_bytes", "max_websockets", "features"].contains($0)
        }) {
            return "Unknown field 'overrides.\(unknown)'."
        }
        if let raw = o["features"], !(raw is NSNull) {
            guard let list = raw as? [Any], list.count <= 256,
                let names = list.map({ $0 as? String }) as? [String], names.allSatisfy(TenantRecord.isFeatureName)
            else {
                return "Field 'overrides.features' must be a list of feature names (1-64 of A-Z a-z 0-9 . _ : -)."
            }
            record.featureOverrides = Array(Set(names)).sorted()
        }
        if let raw = o["max_websockets"], !(raw is NSNull) {
            guard !isBool(raw), let n = raw as? Int, n >= 0, n <= 1_000_000 else {
                return "Field 'overrides.max_websockets' must be an integer from 0 to 1000000."
            }
            record.maxWebsocketsOverride = n
        }
        if let size = o["max_body_bytes"], !(size is NSNull) {
            let bytes: Int? = (size as? Int).flatMap { $0 > 0 && !isBool(size) ? $0 : nil } ?? (size as? String).flatMap(Units.parseSize)
            guard let bytes, bytes > 0 else { return "Field 'overrides.max_body_bytes' must be a positive size." }
            record.maxBodyBytes = bytes
        }
        if let raw = o["rate"], !(raw is NSNull) {
            guard let rate = raw as? [String: Any], let requests = positive(rate["requests"]),
                let per = (rate["per"] as? String).flatMap(Units.parseDuration) ?? positive(rate["per"]).map({ Int64($0) * 1_000_000_000 }),
                per > 0, rate.keys.allSatisfy({ ["requests", "per", "burst"].contains($0) })
            else {
                return "Field 'overrides.rate' must be {requests, per, burst?} with a positive count and duration."
            }
            var burst = requests
            if let b = rate["burst"] {
                guard let n = positive(b) else { return "Field 'overrides.rate.burst' must be a positive integer." }
                burst = n
            }
            record.rateOverride = PlanConfig.Rate(requests: requests, per: per, burst: burst)
        }
        if let raw = o["quota"], !(raw is NSNull) {
            if let text = raw as? String, text == "unlimited" {
                record.quotaOverride = .unlimited
            } else if let q = raw as? [String: Any], let requests = positive(q["requests"]),
                let per = (q["per"] as? String).flatMap(PlanConfig.QuotaPeriod.init(rawValue:)), q.count == 2
            {
                record.quotaOverride = .limited(requests: requests, per: per)
            } else {
                return "Field 'overrides.quota' must be \"unlimited\" or {requests, per: day|month}."
            }
        }
        return nil
    }

    private static func positive(_ v: Any?) -> Int? {
        guard let v, !isBool(v), let n = v as? Int, n > 0, n <= 1_000_000_000 else { return nil }
        return n
    }

    /// True for a JSON `true`/`false`. (`is Bool` cannot tell: on Linux an NSNumber holding 0 or 1 casts
    /// to Bool too.)
    static func isBool(_ v: Any) -> Bool {
        type(of: v) == Bool.self || String(describing: type(of: v)).hasSuffix("Boolean")
    }

    /// Nanoseconds as the shortest whole unit (`1s`, `500ms`, `1m`).
    static func duration(_ ns: Int64) -> String {
        for (unit, size) in [("h", Int64(3_600_000_000_000)), ("m", 60_000_000_000), ("s", 1_000_000_000), ("ms", 1_000_000)]
        where ns % size == 0 {
            return "\(ns / size)\(unit)"
        }
        return "\(ns / 1_000_000)ms"
    }
}
