import Foundation

/// A range of whole UTC days, both ends included: what `gatehouse usage export --from --to` and
/// `GET /admin/usage?from=&to=` cover.
public struct UsageRange: Sendable, Equatable {
    /// UTC midnight of the first day, seconds since the epoch.
    public var from: Int
    /// UTC midnight of the last day (included).
    public var to: Int

    /// Longest range, in days (a leap year).
    public static let maxDays = 366

    public init(from: Int, to: Int) {
        self.from = from
        self.to = to
    }

    /// `YYYY-MM-DD` dates, `from` not after `to`, at most ``maxDays`` days; the error says what is wrong.
    public static func parse(from: String, to: String) -> Result<UsageRange, UsageRangeError> {
        guard let start = CivilDate.parseISODate(from) else {
            return .failure(UsageRangeError("from must be a date YYYY-MM-DD (UTC), got '\(from)'"))
        }
        guard let end = CivilDate.parseISODate(to) else {
            return .failure(UsageRangeError("to must be a date YYYY-MM-DD (UTC), got '\(to)'"))
        }
        guard start <= end else { return .failure(UsageRangeError("from (\(from)) is after to (\(to))")) }
        let range = UsageRange(from: start, to: end)
        guard range.dayCount <= maxDays else {
            return .failure(UsageRangeError("the range covers \(range.dayCount) days; at most \(maxDays)"))
        }
        return .success(range)
    }

    public var dayCount: Int { (to - from) / 86_400 + 1 }

    /// Each day's UTC midnight, in order.
    public var days: [Int] { Array(stride(from: from, through: to, by: 86_400)) }

    public func contains(day: Int) -> Bool { day >= from && day <= to && day % 86_400 == 0 }
}

/// A usage range that cannot be used (malformed date, reversed or too long), said for the operator.
public struct UsageRangeError: Error, Sendable, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// Per-tenant, per-day request counts over a ``UsageRange``: the metered-billing feed. One row per tenant and
/// day with a non-zero count, sorted by tenant, then day. The same document comes from the store directly
/// (`gatehouse usage export`) and from a running gateway (`GET /admin/usage`).
public struct UsageReport: Sendable, Equatable {
    public struct Row: Sendable, Equatable {
        public var tenant: String
        /// The day's UTC midnight, seconds since the epoch.
        public var day: Int
        public var requests: Int

        public init(tenant: String, day: Int, requests: Int) {
            self.tenant = tenant
            self.day = day
            self.requests = requests
        }
    }

    public var range: UsageRange
    public private(set) var rows: [Row]

    /// Keeps the rows with a count, in tenant then day order (tenant ids compare byte by byte).
    public init(range: UsageRange, rows: [Row]) {
        self.range = range
        self.rows = rows.filter { $0.requests != 0 }.sorted { a, b in
            a.tenant != b.tenant ? a.tenant.utf8.lexicographicallyPrecedes(b.tenant.utf8) : a.day < b.day
        }
    }

    /// `{"from":"2026-11-01","to":"2026-11-25","usage":[{"tenant":"acme","date":"2026-11-24","requests":12},...]}`
    public var json: String {
        var out = "{\"from\":\"\(CivilDate.isoDate(range.from))\",\"to\":\"\(CivilDate.isoDate(range.to))\",\"usage\":["
        for (i, r) in rows.enumerated() {
            if i > 0 { out += "," }
            out += "{\"tenant\":\(JSONText.quote(r.tenant)),\"date\":\"\(CivilDate.isoDate(r.day))\",\"requests\":\(r.requests)}"
        }
        return out + "]}"
    }

    /// `tenant,date,requests`, then one line per row; each line ends with a line feed.
    public var csv: String {
        var out = "tenant,date,requests\n"
        for r in rows { out += "\(Self.csvField(r.tenant)),\(CivilDate.isoDate(r.day)),\(r.requests)\n" }
        return out
    }

    /// A CSV field as RFC 4180 wants it: quoted, with quotes doubled, when it holds a comma, a quote or a line
    /// break; as is otherwise.
    public static func csvField(_ value: String) -> String {
        guard value.utf8.contains(where: { $0 == UInt8(ascii: ",") || $0 == UInt8(ascii: "\"") || $0 == 10 || $0 == 13 })
        else { return value }
        return "\"" + value.replacingOccurrences(of: "\"", with: "\"\"") + "\""
    }

    /// Reads ``json`` back (what the CLI gets from a running gateway); nil when it is not such a document.
    public static func parse(json: [UInt8]) -> UsageReport? {
        guard let object = (try? JSONSerialization.jsonObject(with: Data(json))) as? [String: Any],
            let fromText = object["from"] as? String, let toText = object["to"] as? String,
            case .success(let range) = UsageRange.parse(from: fromText, to: toText),
            let items = object["usage"] as? [[String: Any]]
        else { return nil }
        var rows: [Row] = []
        for item in items {
            guard let tenant = item["tenant"] as? String, let date = item["date"] as? String,
                let day = CivilDate.parseISODate(date), let requests = item["requests"] as? Int
            else { return nil }
            rows.append(Row(tenant: tenant, day: day, requests: requests))
        }
        return UsageReport(range: range, rows: rows)
    }
}

extension CivilDate {
    /// The UTC midnight (seconds since the epoch) of a `YYYY-MM-DD` date; nil unless it is exactly that form
    /// and a real day.
    public static func parseISODate(_ text: String) -> Int? {
        let b = Array(text.utf8)
        guard b.count == 10, b[4] == UInt8(ascii: "-"), b[7] == UInt8(ascii: "-") else { return nil }
        func number(_ range: Range<Int>) -> Int? {
            var n = 0
            for i in range {
                guard b[i] >= UInt8(ascii: "0"), b[i] <= UInt8(ascii: "9") else { return nil }
                n = n * 10 + Int(b[i] - UInt8(ascii: "0"))
            }
            return n
        }
        guard let year = number(0..<4), let month = number(5..<7), let day = number(8..<10), year >= 1,
            (1...12).contains(month), day >= 1, day <= daysIn(year: year, month: month)
        else { return nil }
        return days(year: year, month: month, day: day) * 86_400
    }
}
