/// Parsing of the config's duration and size literals.
///
/// Durations are an integer and a unit: `250ms`, `30s`, `5m`, `1h`, `7d`. Sizes are a plain byte count
/// (`512`) or an integer with a binary (`KiB`, `MiB`, `GiB`) or decimal (`KB`, `MB`, `GB`) unit.
public enum Units {
    /// Parses a duration literal into nanoseconds; nil when malformed or out of range.
    public static func parseDuration(_ text: String) -> Int64? {
        let units: [(String, Int64)] = [
            ("ms", 1_000_000), ("us", 1_000), ("ns", 1), ("s", 1_000_000_000), ("m", 60_000_000_000),
            ("h", 3_600_000_000_000), ("d", 86_400_000_000_000),
        ]
        for (suffix, scale) in units where text.hasSuffix(suffix) {
            let digits = text.dropLast(suffix.count)
            guard !digits.isEmpty, digits.allSatisfy({ $0.isASCII && $0.isNumber }),
                let value = Int64(digits)
            else { return nil }
            let (product, overflow) = value.multipliedReportingOverflow(by: scale)
            return overflow ? nil : product
        }
        return nil
    }

    /// Parses a size literal into bytes; nil when malformed or out of range.
    public static func parseSize(_ text: String) -> Int? {
        let units: [(String, Int)] = [
            ("KiB", 1 << 10), ("MiB", 1 << 20), ("GiB", 1 << 30),
            ("KB", 1_000), ("MB", 1_000_000), ("GB", 1_000_000_000), ("B", 1),
        ]
        var digits = Substring(text)
        var scale = 1
        for (suffix, s) in units where text.hasSuffix(suffix) {
            digits = text.dropLast(suffix.count)
            scale = s
            break
        }
        guard !digits.isEmpty, digits.allSatisfy({ $0.isASCII && $0.isNumber }), let value = Int(digits) else {
            return nil
        }
        let (product, overflow) = value.multipliedReportingOverflow(by: scale)
        return overflow ? nil : product
    }
}
