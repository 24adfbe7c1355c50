import Testing

@testable import Policy

/// The billing feed's pure parts: dates, ranges, the JSON and CSV documents.
@Suite struct UsageReportTests {
    static let nov24 = CivilDate.days(year: 2026, month: 11, day: 24) * 86_400

    @Test func datesAreStrictYearMonthDay() {
        #expect(CivilDate.parseISODate("2026-11-24") == Self.nov24)
        #expect(CivilDate.parseISODate("1970-01-01") == 0)
        #expect(CivilDate.parseISODate("2024-02-29") == CivilDate.days(year: 2024, month: 2, day: 29) * 86_400)
        for bad in [
            "2023-02-29", "2026-13-01", "2026-00-10", "2026-11-31", "2026-11-00", "2026-1-24", "26-11-24", "20261124",
            " 2026-11-24", "2026-11-24 ", "2026-11-24T00:00:00Z", "2026/11/24", "２026-11-24", "", "0000-01-01",
        ] {
            #expect(CivilDate.parseISODate(bad) == nil, Comment(rawValue: bad))
        }
    }

    @Test func rangesAreInclusiveOrderedAndAtMostAYear() throws {
        let one = try UsageRange.parse(from: "2026-11-24", to: "2026-11-24").get()
        #expect(one.dayCount == 1 && one.days == [Self.nov24])
        #expect(one.contains(day: Self.nov24) && !one.contains(day: Self.nov24 + 86_400) && !one.contains(day: Self.nov24 + 1))
        // 2024 is a leap year: 366 days from 1 January to 31 December.
        #expect(try UsageRange.parse(from: "2024-01-01", to: "2024-12-31").get().dayCount == 366)
        func error(_ from: String, _ to: String) -> String? {
            if case .failure(let e) = UsageRange.parse(from: from, to: to) { return e.description }
            return nil
        }
        #expect(error("2024-01-01", "2025-01-01")?.contains("367 days") == true)
        #expect(error("2026-11-25", "2026-11-24")?.contains("after") == true)
        #expect(error("2026-11-31", "2026-12-01")?.hasPrefix("from must be a date") == true)
        #expect(error("2026-11-01", "tomorrow")?.hasPrefix("to must be a date") == true)
    }

    @Test func rowsWithACountOnlySortedByTenantThenDate() {
        let day = Self.nov24
        let report = UsageReport(
            range: UsageRange(from: day - 86_400, to: day),
            rows: [
                .init(tenant: "globex", day: day, requests: 3), .init(tenant: "acme", day: day, requests: 12),
                .init(tenant: "acme", day: day - 86_400, requests: 5), .init(tenant: "initech", day: day, requests: 0),
                .init(tenant: "Zeta", day: day, requests: 1),
            ])
        // Byte order: upper case sorts before lower case.
        #expect(report.rows.map(\.tenant) == ["Zeta", "acme", "acme", "globex"])
        #expect(
            report.json
                == #"{"from":"2026-11-23","to":"2026-11-24","usage":[{"tenant":"Zeta","date":"2026-11-24","requests":1},"#
                + #"{"tenant":"acme","date":"2026-11-23","requests":5},{"tenant":"acme","date":"2026-11-24","requests":12},"#
                + #"{"tenant":"globex","date":"2026-11-24","requests":3}]}"#)
        #expect(
            report.csv
                == "tenant,date,requests\nZeta,2026-11-24,1\nacme,2026-11-23,5\nacme,2026-11-24,12\nglobex,2026-11-24,3\n")
        #expect(UsageReport.parse(json: Array(report.json.utf8)) == report)
        let empty = UsageReport(range: UsageRange(from: day, to: day), rows: [])
        #expect(empty.json == #"{"from":"2026-11-24","to":"2026-11-24","usage":[]}"#)
        #expect(empty.csv == "tenant,date,requests\n")
        #expect(UsageReport.parse(json: Array(#"{"from":"2026-11-24","usage":[]}"#.utf8)) == nil)
        #expect(UsageReport.parse(json: Array("not json".utf8)) == nil)
    }

    @Test func csvQuotesOnlyWhatRFC4180Needs() {
        #expect(UsageReport.csvField("acme.eu-1_x") == "acme.eu-1_x")
        #expect(UsageReport.csvField("a,b") == #""a,b""#)
        #expect(UsageReport.csvField(#"say "hi""#) == #""say ""hi""""#)
        #expect(UsageReport.csvField("two\nlines") == "\"two\nlines\"")
        #expect(UsageReport.csvField("cr\rhere") == "\"cr\rhere\"")
        #expect(UsageReport.csvField("") == "")
    }
}
