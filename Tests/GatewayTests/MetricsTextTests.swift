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
}
