/// `audit.max_denials_per_second`: which denial records are written one by one, and which are only counted
/// into the ``DenialSummary`` of their wall-clock second, so a flood of denials cannot fill the disk while the
/// totals stay exact (denials written + the summaries' `suppressed` = denials).
///
/// A pure window over wall-clock seconds: the caller passes the time (STYLE 6) and runs it under its lock.
/// The window moves when a denial or a tick (``expire(nowMillis:)``) sees a later second; the second it
/// leaves yields its summary then, if it suppressed anything. A clock stepped back also moves the window
/// (to the earlier second): counts stay exact, only that second's budget starts over.
public struct DenialBudget: Sendable {
    public enum Verdict: Equatable, Sendable {
        /// Write this denial's record.
        case write
        /// Counted in its second's summary; no record of its own.
        case suppress
    }

    /// Denial records written per second.
    public let limit: Int
    /// The current window, seconds since the epoch.
    private var second: Int64 = .min
    private var written = 0
    private var suppressed: [String: Int] = [:]

    public init(limit: Int) {
        self.limit = max(1, limit)
    }

    /// A denial with problem `code` at `nowMillis`, and the summary of the second the window left to get to
    /// `nowMillis` (nil when it moved within the same second or that second suppressed nothing), which goes
    /// into the log before this denial.
    public mutating func admit(code: String, nowMillis: Int64) -> (verdict: Verdict, ended: DenialSummary?) {
        let ended = move(to: Self.second(of: nowMillis), nowMillis: nowMillis)
        if written < limit {
            written += 1
            return (.write, ended)
        }
        suppressed[code, default: 0] += 1
        return (.suppress, ended)
    }

    /// The current second's summary once `nowMillis` is past it (the writer's tick, so a summary is written
    /// even when no later denial comes), else nil.
    public mutating func expire(nowMillis: Int64) -> DenialSummary? {
        move(to: Self.second(of: nowMillis), nowMillis: nowMillis)
    }

    /// The current second's summary whatever the time (graceful stop); nil when it suppressed nothing.
    public mutating func finish(nowMillis: Int64) -> DenialSummary? {
        defer { suppressed = [:] }
        return suppressed.isEmpty ? nil : DenialSummary(timeMillis: nowMillis, second: second, codes: suppressed)
    }

    private mutating func move(to now: Int64, nowMillis: Int64) -> DenialSummary? {
        guard now != second else { return nil }
        let ended = finish(nowMillis: nowMillis)
        second = now
        written = 0
        return ended
    }

    static func second(of millis: Int64) -> Int64 {
        millis >= 0 ? millis / 1000 : (millis - 999) / 1000
    }
}
