/// The record that stands for the denials of one wall-clock second beyond `audit.max_denials_per_second`:
/// how many were not written one by one, by problem `code`, and the second they fell in.
///
/// Canonical form (sealed like any record: ``AuditChain`` adds `hash`):
/// `{"ts":…,"seq":…,"type":"denial_summary","decision":"deny","suppressed":K,"codes":{"<code>":n,…},
/// "from":…,"to":…,"prev_hash":…}`, codes in byte order, `from` the second's start and `to` its end (exclusive).
public struct DenialSummary: AuditEntry, Sendable, Equatable {
    /// When the summary was made, milliseconds since the epoch.
    public var timeMillis: Int64
    /// The second the suppressed denials fell in, seconds since the epoch.
    public var second: Int64
    /// Suppressed denials by problem code.
    public var codes: [String: Int]

    public init(timeMillis: Int64, second: Int64, codes: [String: Int]) {
        self.timeMillis = timeMillis
        self.second = second
        self.codes = codes
    }

    /// How many denials it stands for.
    public var suppressed: Int { codes.values.reduce(0, +) }

    public func appendCanonical(seq: UInt64, prevHash: [UInt8], to out: inout [UInt8]) {
        func raw(_ s: StaticString) {
            s.withUTF8Buffer { out.append(contentsOf: $0) }
        }
        raw("{\"ts\":\"")
        CivilDate.appendRFC3339(milliseconds: timeMillis, to: &out)
        raw("\",\"seq\":")
        AuditRecord.appendDecimal(Int64(seq), to: &out)
        raw(",\"type\":\"denial_summary\",\"decision\":\"deny\",\"suppressed\":")
        AuditRecord.appendDecimal(Int64(suppressed), to: &out)
        raw(",\"codes\":{")
        for (i, code) in codes.keys.sorted(by: { $0.utf8.lexicographicallyPrecedes($1.utf8) }).enumerated() {
            if i > 0 { out.append(UInt8(ascii: ",")) }
            JSONText.appendQuoted(code, to: &out)
            out.append(UInt8(ascii: ":"))
            AuditRecord.appendDecimal(Int64(codes[code]!), to: &out)
        }
        raw("},\"from\":\"")
        CivilDate.appendRFC3339(milliseconds: second * 1000, to: &out)
        raw("\",\"to\":\"")
        CivilDate.appendRFC3339(milliseconds: (second + 1) * 1000, to: &out)
        raw("\",\"prev_hash\":\"")
        out.append(contentsOf: prevHash)
        raw("\"}")
    }
}
