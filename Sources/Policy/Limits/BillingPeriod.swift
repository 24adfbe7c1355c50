/// A quota period in UTC: `[start, end)` in seconds since the epoch.
///
/// Daily periods run midnight to midnight. Monthly periods start on the tenant's billing anchor day, clamped
/// to the month's last day (anchor 31 → 30 April, 28 or 29 February), so every month has one period start.
public struct BillingPeriod: Sendable, Equatable {
    public var start: Int
    public var end: Int

    public init(start: Int, end: Int) {
        self.start = start
        self.end = end
    }

    /// The period containing `now`.
    public static func containing(_ now: Double, per: PlanConfig.QuotaPeriod, anchor: Int) -> BillingPeriod {
        let day = CivilDate.day(of: Int(now.rounded(.down)))
        switch per {
        case .day:
            return BillingPeriod(start: day * 86_400, end: (day + 1) * 86_400)
        case .month:
            let (y, m, d) = CivilDate.fromDays(day)
            let anchorThisMonth = CivilDate.clamp(anchor: anchor, year: y, month: m)
            var (sy, sm) = (y, m)
            if d < anchorThisMonth { (sy, sm) = CivilDate.previous(year: y, month: m) }
            let (ey, em) = CivilDate.next(year: sy, month: sm)
            let start = CivilDate.days(year: sy, month: sm, day: CivilDate.clamp(anchor: anchor, year: sy, month: sm))
            let end = CivilDate.days(year: ey, month: em, day: CivilDate.clamp(anchor: anchor, year: ey, month: em))
            return BillingPeriod(start: start * 86_400, end: end * 86_400)
        }
    }

    /// The UTC days of the period (seconds of each midnight), up to and including the day of `through`.
    public func days(through: Double) -> [Int] {
        let last = min(end - 1, Int(through.rounded(.down)))
        guard last >= start else { return [] }
        return Array(stride(from: start, through: CivilDate.dayStart(last), by: 86_400))
    }
}

/// Proleptic Gregorian dates from and to days since 1970-01-01 (Howard Hinnant's civil-date algorithms).
public enum CivilDate {
    public static func days(year: Int, month: Int, day: Int) -> Int {
        let y = month <= 2 ? year - 1 : year
        let era = (y >= 0 ? y : y - 399) / 400
        let yoe = y - era * 400
        let mp = (month + 9) % 12
        let doy = (153 * mp + 2) / 5 + day - 1
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy
        return era * 146_097 + doe - 719_468
    }

    public static func fromDays(_ z0: Int) -> (year: Int, month: Int, day: Int) {
        let z = z0 + 719_468
        let era = (z >= 0 ? z : z - 146_096) / 146_097
        let doe = z - era * 146_097
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100)
        let mp = (5 * doy + 2) / 153
        let d = doy - (153 * mp + 2) / 5 + 1
        let m = mp < 10 ? mp + 3 : mp - 9
        return (yoe + era * 400 + (m <= 2 ? 1 : 0), m, d)
    }

    public static func isLeap(_ y: Int) -> Bool { (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 }

    public static func daysIn(year: Int, month: Int) -> Int {
        switch month {
        case 2: return isLeap(year) ? 29 : 28
        case 4, 6, 9, 11: return 30
        default: return 31
        }
    }

    static func clamp(anchor: Int, year: Int, month: Int) -> Int { min(max(1, anchor), daysIn(year: year, month: month)) }
    static func previous(year: Int, month: Int) -> (Int, Int) { month == 1 ? (year - 1, 12) : (year, month - 1) }
    static func next(year: Int, month: Int) -> (Int, Int) { month == 12 ? (year + 1, 1) : (year, month + 1) }

    /// Days since 1970-01-01 of a time (seconds since the epoch), rounding down also before 1970.
    public static func day(of seconds: Int) -> Int { seconds >= 0 ? seconds / 86_400 : (seconds - 86_399) / 86_400 }

    /// The UTC midnight (seconds since the epoch) of the day containing `seconds`.
    public static func dayStart(_ seconds: Int) -> Int { day(of: seconds) * 86_400 }

    /// `YYYY-MM-DD` of the day containing `seconds`.
    public static func isoDate(_ seconds: Int) -> String { String(rfc3339(seconds).prefix(10)) }

    /// RFC 3339 UTC timestamp of whole seconds.
    public static func rfc3339(_ seconds: Int) -> String {
        var out: [UInt8] = []
        appendRFC3339(seconds, to: &out)
        return String(decoding: out, as: UTF8.self)
    }

    /// RFC 3339 UTC timestamp with milliseconds of a time in milliseconds since the epoch.
    public static func rfc3339(milliseconds ms: Int64) -> String {
        var out: [UInt8] = []
        appendRFC3339(milliseconds: ms, to: &out)
        return String(decoding: out, as: UTF8.self)
    }

    /// RFC 3339 UTC timestamp with milliseconds of a time in seconds since the epoch (milliseconds rounded down).
    public static func rfc3339(epochSeconds seconds: Double) -> String {
        rfc3339(milliseconds: Int64((seconds * 1000).rounded(.down)))
    }

    /// Appends `YYYY-MM-DDTHH:MM:SS.mmmZ` of a time in milliseconds since the epoch (rounding down also before
    /// 1970).
    public static func appendRFC3339(milliseconds ms: Int64, to out: inout [UInt8]) {
        let seconds = Int(ms >= 0 ? ms / 1000 : (ms - 999) / 1000)
        appendRFC3339(seconds, millis: Int(ms - Int64(seconds) * 1000), to: &out)
    }

    /// Appends `YYYY-MM-DDTHH:MM:SS[.mmm]Z` as bytes (no intermediate strings: the audit writer's hot path).
    public static func appendRFC3339(_ seconds: Int, millis: Int? = nil, to out: inout [UInt8]) {
        let day = day(of: seconds)
        let rest = seconds - day * 86_400
        let (y, m, d) = fromDays(day)
        func digits(_ n: Int, _ width: Int) {
            var div = 1
            for _ in 1..<width { div *= 10 }
            while div > 0 {
                out.append(UInt8(48 + (n / div) % 10))
                div /= 10
            }
        }
        digits(y, 4)
        out.append(UInt8(ascii: "-"))
        digits(m, 2)
        out.append(UInt8(ascii: "-"))
        digits(d, 2)
        out.append(UInt8(ascii: "T"))
        digits(rest / 3600, 2)
        out.append(UInt8(ascii: ":"))
        digits(rest / 60 % 60, 2)
        out.append(UInt8(ascii: ":"))
        digits(rest % 60, 2)
        if let millis {
            out.append(UInt8(ascii: "."))
            digits(millis, 3)
        }
        out.append(UInt8(ascii: "Z"))
    }
}
