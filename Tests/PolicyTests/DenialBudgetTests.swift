import Testing

@testable import Policy

/// `audit.max_denials_per_second` (pure, with the time passed in) and the summary record it produces.
@Suite struct DenialBudgetTests {
    /// Milliseconds at second `s` plus `ms`.
    func at(_ s: Int64, _ ms: Int64 = 0) -> Int64 { 1_795_000_000_000 + s * 1000 + ms }

    @Test func atMostTheLimitAreWrittenPerSecondAndTheRestSummedOnceTheSecondIsOver() {
        var budget = DenialBudget(limit: 3)
        var verdicts: [DenialBudget.Verdict] = []
        for i in 0..<10 {
            let (verdict, ended) = budget.admit(code: i % 2 == 0 ? "unauthenticated" : "forbidden", nowMillis: at(0, Int64(i * 90)))
            #expect(ended == nil)
            verdicts.append(verdict)
        }
        #expect(verdicts == Array(repeating: .write, count: 3) + Array(repeating: .suppress, count: 7))
        // Not before its second is over.
        #expect(budget.expire(nowMillis: at(0, 999)) == nil)
        let summary = budget.expire(nowMillis: at(1, 4))
        #expect(summary == DenialSummary(timeMillis: at(1, 4), second: at(0) / 1000, codes: ["unauthenticated": 3, "forbidden": 4]))
        #expect(summary?.suppressed == 7)
        // Summed once: a later tick finds nothing, and the new second has its own budget.
        #expect(budget.expire(nowMillis: at(1, 500)) == nil)
        #expect(budget.admit(code: "forbidden", nowMillis: at(1, 600)).verdict == .write)
    }

    @Test func theFirstDenialOfALaterSecondBringsTheEndedSecondsSummary() {
        var budget = DenialBudget(limit: 1)
        #expect(budget.admit(code: "a", nowMillis: at(0)).verdict == .write)
        #expect(budget.admit(code: "a", nowMillis: at(0, 1)).verdict == .suppress)
        let (verdict, ended) = budget.admit(code: "b", nowMillis: at(5))
        #expect(verdict == .write)
        #expect(ended == DenialSummary(timeMillis: at(5), second: at(0) / 1000, codes: ["a": 1]))
        // A second that suppressed nothing has no summary.
        #expect(budget.admit(code: "b", nowMillis: at(6)).ended == nil)
        // At stop, the current second's count is summed whatever the time.
        #expect(budget.admit(code: "c", nowMillis: at(6, 2)).verdict == .suppress)
        #expect(budget.finish(nowMillis: at(6, 3)) == DenialSummary(timeMillis: at(6, 3), second: at(6) / 1000, codes: ["c": 1]))
        #expect(budget.finish(nowMillis: at(6, 4)) == nil)
    }

    @Test func totalsStayExactWhateverTheTiming() {
        var budget = DenialBudget(limit: 4)
        var written = 0
        var summed = 0
        var writtenBySecond: [Int64: Int] = [:]
        var now = at(0)
        // Uneven gaps (0-40 ms, now and then a few seconds' silence) and ticks at odd moments.
        for i in 0..<5_000 {
            now += Int64(i * 37 % 41) + (i % 997 == 0 ? 3_000 : 0)
            let (verdict, ended) = budget.admit(code: "c\(i % 3)", nowMillis: now)
            summed += ended?.suppressed ?? 0
            if verdict == .write {
                written += 1
                writtenBySecond[now / 1000, default: 0] += 1
            }
            if i % 7 == 0 {
                now += Int64(i * 13 % 1500)
                summed += budget.expire(nowMillis: now)?.suppressed ?? 0
            }
        }
        summed += budget.finish(nowMillis: now)?.suppressed ?? 0
        #expect(written + summed == 5_000)
        #expect(writtenBySecond.values.allSatisfy { $0 <= 4 })
    }

    @Test func theSummaryRecordIsChainedLikeAnyRecord() {
        let summary = DenialSummary(
            timeMillis: 1_795_000_001_004, second: 1_795_000_000, codes: ["unauthenticated": 3, "forbidden": 4, "bad_request": 1])
        var chain = AuditChain()
        let line = chain.seal(summary)
        #expect(line.hasPrefix(#"{"ts":"2026-11-18T"#))
        #expect(line.contains(#".004Z","seq":1,"type":"denial_summary","decision":"deny","suppressed":8,"codes":{"bad_request":1,"forbidden":4,"unauthenticated":3},"from":"2026-11-18T"#))
        #expect(line.contains(#":40.000Z","to":"2026-11-18T"#) && line.contains(#":41.000Z","prev_hash":"0000"#))
        let request = AuditRecord(
            timeMillis: 1_795_000_000_500, requestID: "r", tenant: nil, user: nil, method: "GET", path: "/", route: nil,
            status: 401, decision: "deny", code: "unauthenticated", latencyMicros: 10, clientIP: "127.0.0.1", upstream: nil)
        let next = chain.seal(request)
        #expect(AuditChain.verify(lines: [line[...], next[...]]) == .ok(count: 2, first: 1, last: 2))
    }
}
