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
            var fresh = TenantSeries()
            return fresh.render(counts, top: top).map { "\($0.tenant)=\($0.requests)" }
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
            var fresh = TenantSeries()
            let series = fresh.render(many, top: top)
            #expect(series.reduce(0) { $0 + $1.requests } == many.values.reduce(0, +))
            #expect(series.count == min(top, 500) + (top < 500 ? 1 : 0))
        }
    }

    /// Across scrapes every series only grows: a place once given is kept, and what `other` showed stays there.
    @Test func tenantSeriesAreCountersAcrossScrapes() {
        var state = TenantSeries()
        func scrape(_ counts: [String: Int], _ top: Int) -> [String: Int] {
            Dictionary(uniqueKeysWithValues: state.render(counts, top: top).map { ($0.tenant, $0.requests) })
        }
        #expect(scrape(["a": 5, "b": 3, "c": 1], 2) == ["a": 5, "b": 3, "other": 1])
        // c overtakes both: a and b keep their places, c's requests keep counting in other.
        #expect(scrape(["a": 6, "b": 3, "c": 50], 2) == ["a": 6, "b": 3, "other": 50])
        // More places (a reload): c gets one; the 50 already shown in other stay there, its series starts after.
        #expect(scrape(["a": 6, "b": 3, "c": 60], 3) == ["a": 6, "b": 3, "c": 10, "other": 50])
        // Fewer places: the smallest series (b) gives its place up, its requests join other; nothing goes down.
        #expect(scrape(["a": 7, "b": 4, "c": 61], 2) == ["a": 7, "c": 11, "other": 54])
        var previous: [String: Int] = [:]
        var counts = ["a": 7, "b": 4, "c": 61, "d": 0]
        for round in 0..<50 {
            for k in counts.keys { counts[k]! += (round * 7 + Int(k.utf8.first!)) % 5 }
            let now = scrape(counts, round % 4)
            #expect(now.values.reduce(0, +) == counts.values.reduce(0, +), "sums stay exact")
            for (k, v) in now where previous[k] != nil { #expect(v >= previous[k]!, "\(k) went down") }
            previous = now
        }
    }
}
