/// Rules for tenant identifiers: 1-64 characters of `A-Z a-z 0-9 . _ -`.
public enum TenantID {
    public static let maxLength = 64

    public static func isValid(_ id: String) -> Bool {
        let utf8 = id.utf8
        guard !utf8.isEmpty, utf8.count <= maxLength else { return false }
        return utf8.allSatisfy(isIDByte)
    }

    /// `A-Z a-z 0-9 . _ -`: the alphabet of tenant ids and request ids.
    @inlinable
    public static func isIDByte(_ b: UInt8) -> Bool {
        switch b {
        case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "a")...UInt8(ascii: "z"),
            UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "."), UInt8(ascii: "_"), UInt8(ascii: "-"):
            return true
        default:
            return false
        }
    }
}
