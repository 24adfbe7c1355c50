/// Minimal JSON string escaping, for the documents Gatehouse writes itself.
public enum JSONText {
    /// Returns `value` as a quoted JSON string; control characters, quotes and backslashes are escaped.
    public static func quote(_ value: String) -> String {
        var out = "\""
        out.reserveCapacity(value.utf8.count + 2)
        for scalar in value.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case _ where scalar.value < 0x20 || scalar.value == 0x7F || scalar.value == 0x2028 || scalar.value == 0x2029:
                let hex = String(scalar.value, radix: 16)
                out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
            default:
                out.unicodeScalars.append(scalar)
            }
        }
        out += "\""
        return out
    }

    /// Appends `value` as a quoted JSON string to `out`, escaping exactly as ``quote(_:)`` does, byte by byte
    /// (the audit writer's hot path: no intermediate strings).
    public static func appendQuoted(_ value: String, to out: inout [UInt8]) {
        var value = value
        value.withUTF8 { appendQuoted(utf8: $0, to: &out) }
    }

    /// As ``appendQuoted(_:to:)``, for at most the first `maxBytes` bytes of `value` (cut before a character, never
    /// inside one).
    public static func appendQuoted(_ value: Substring, maxBytes: Int, to out: inout [UInt8]) {
        var value = value
        value.withUTF8 { bytes in
            guard bytes.count > maxBytes else { return appendQuoted(utf8: bytes, to: &out) }
            var end = maxBytes
            while end > 0, bytes[end] & 0xC0 == 0x80 { end -= 1 }
            appendQuoted(utf8: UnsafeBufferPointer(rebasing: bytes[..<end]), to: &out)
        }
    }

    /// Appends UTF-8 `bytes` as a quoted JSON string.
    public static func appendQuoted(utf8 bytes: UnsafeBufferPointer<UInt8>, to out: inout [UInt8]) {
        out.append(UInt8(ascii: "\""))
        do {
            // Runs of bytes that need no escaping are copied in one go.
            var i = 0
            var run = 0
            let n = bytes.count
            while i < n {
                let b = bytes[i]
                let plain = b >= 0x20 && b != UInt8(ascii: "\"") && b != UInt8(ascii: "\\") && b != 0x7F && b != 0xE2
                if plain {
                    i += 1
                    continue
                }
                if b == 0xE2 && !(i + 2 < n && bytes[i + 1] == 0x80 && (bytes[i + 2] == 0xA8 || bytes[i + 2] == 0xA9)) {
                    i += 1  // another character starting with E2: plain
                    continue
                }
                out.append(contentsOf: UnsafeBufferPointer(rebasing: bytes[run..<i]))
                switch b {
                case UInt8(ascii: "\""), UInt8(ascii: "\\"): out.append(UInt8(ascii: "\\")); out.append(b)
                case UInt8(ascii: "\n"): out.append(UInt8(ascii: "\\")); out.append(UInt8(ascii: "n"))
                case UInt8(ascii: "\r"): out.append(UInt8(ascii: "\\")); out.append(UInt8(ascii: "r"))
                case UInt8(ascii: "\t"): out.append(UInt8(ascii: "\\")); out.append(UInt8(ascii: "t"))
                case 0xE2:
                    appendEscape(bytes[i + 2] == 0xA8 ? 0x2028 : 0x2029, to: &out)
                    i += 2
                default: appendEscape(UInt32(b), to: &out)
                }
                i += 1
                run = i
            }
            out.append(contentsOf: UnsafeBufferPointer(rebasing: bytes[run..<n]))
        }
        out.append(UInt8(ascii: "\""))
    }

    private static func appendEscape(_ scalar: UInt32, to out: inout [UInt8]) {
        let hex = Array("0123456789abcdef".utf8)
        out.append(UInt8(ascii: "\\"))
        out.append(UInt8(ascii: "u"))
        for shift in [12, 8, 4, 0] { out.append(hex[Int((scalar >> UInt32(shift)) & 15)]) }
    }
}

