import Testing

@testable import Gateway

/// Prometheus label values: only backslash, double quote and line feed are escaped (the text format's rules).
@Suite struct MetricsTextTests {
    @Test func labelValuesUseTheTextFormatsEscapes() {
        #expect(MetricsText.label("api") == #""api""#)
        #expect(MetricsText.label("a\"b\\c\nd") == #""a\"b\\c\nd""#)
        #expect(MetricsText.label("tab\there") == "\"tab\there\"", "a tab is written as is, not as \\t")
        #expect(MetricsText.label("\u{1}é😀") == "\"\u{1}é😀\"", "no \\u escapes")
        #expect(MetricsText.label("") == #""""#)
    }

    /// `gatehouse_tenant_requests_total`: the top N tenants by requests (ties by id), the rest summed as `other`.
    @Test func tenantSeriesFoldTheRestIntoOther() {
        func fold(_ counts: [String: Int], _ top: Int) -> [String] {
            MetricsText.tenantSeries(counts, top: top).map { "\($0.tenant)=\($0.requests)" }
        }
        let counts = ["acme": 5, "globex": 3, "initech": 3, "umbrella": 1, "hooli": 7]
        #expect(fold(counts, 2) == ["hooli=7", "acme=5", "other=7"])
        // A tie at the cut is broken by id, so the same counts always give the same series.
        #expect(fold(counts, 3) == ["hooli=7", "acme=5", "globex=3", "other=4"])
        #expect(fold(counts, 5) == ["hooli=7", "acme=5", "globex=3", "initech=3", "umbrella=1"], "nothing to fold: no other")
        #expect(fold(counts, 50) == fold(counts, 5))
        #expect(fold(counts, 0) == ["other=19"])
        #expect(fold([:], 2) == [])
        // A tenant whose id is `other` cannot have a series apart from the fold: it is counted there.
        #expect(fold(["other": 9, "acme": 1], 2) == ["acme=1", "other=9"])
        #expect(fold(["other": 9, "acme": 1, "b": 2], 1) == ["b=2", "other=10"])
        // Sums are exact whatever N is.
        let many = Dictionary(uniqueKeysWithValues: (0..<500).map { ("t\($0)", $0 % 17 + 1) })
        for top in [0, 1, 20, 499, 500, 501] {
            let series = MetricsText.tenantSeries(many, top: top)
            #expect(series.reduce(0) { $0 + $1.requests } == many.values.reduce(0, +))
            #expect(series.count == min(top, 500) + (top < 500 ? 1 : 0))
        }
    }
}
