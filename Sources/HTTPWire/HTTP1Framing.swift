/// How a request's body is delimited, decided once from its head (RFC 9112 §6) by the one rule the parser and
/// the request checks share, so the gateway and its upstreams cannot disagree on where a request ends.
///
/// Anything ambiguous is refused instead of guessed (request smuggling): Content-Length together with
/// Transfer-Encoding, several Content-Lengths (even equal ones), a Content-Length that is not plain digits, a
/// Transfer-Encoding other than one `chunked`, and Transfer-Encoding on HTTP/1.0.
public enum HTTP1Framing: Equatable, Sendable {
    case none
    case length(Int)
    case chunked

    /// A head's framing, or why it is refused.
    public typealias Decision = Result<HTTP1Framing, Refusal>

    /// The framing of a request with these headers, or why it is refused.
    public static func decide(versionMinor: Int, headers: [(name: String, value: String)]) -> Decision {
        var contentLength: Substring?
        var contentLengths = 0
        var transferEncodings = 0
        var chunked = false
        for (name, value) in headers {
            switch name.utf8.count {
            case 14 where ASCII.equalsLower(name.utf8, "content-length"):
                contentLengths += 1
                contentLength = Substring(value)
            case 17 where ASCII.equalsLower(name.utf8, "transfer-encoding"):
                transferEncodings += 1
                chunked = ASCII.equalsLower(ASCII.trimmed(Substring(value)).utf8, "chunked")
            default:
                break
            }
        }
        if transferEncodings > 0 {
            if versionMinor == 0 { return .failure(Refusal("Transfer-Encoding on HTTP/1.0.")) }
            if contentLengths > 0 { return .failure(Refusal("Both Content-Length and Transfer-Encoding.")) }
            guard transferEncodings == 1, chunked else {
                return .failure(Refusal("Unsupported Transfer-Encoding (only a single 'chunked')."))
            }
            return .success(.chunked)
        }
        if contentLengths > 1 { return .failure(Refusal("Several Content-Length headers.")) }
        guard let cl = contentLength else { return .success(.none) }
        let digits = ASCII.trimmed(cl)
        guard !digits.isEmpty, digits.utf8.count <= 18, digits.utf8.allSatisfy({ $0 >= 48 && $0 <= 57 }),
            let n = Int(digits)
        else { return .failure(Refusal("Invalid Content-Length.")) }
        return .success(n == 0 ? .none : .length(n))
    }

    /// Why a head's framing was refused (a 400's detail).
    public struct Refusal: Error, Equatable, Sendable {
        public var detail: String
        public init(_ detail: String) { self.detail = detail }
    }
}

/// Byte-level helpers for ASCII protocol text.
public enum ASCII {
    /// Case-insensitive comparison of `bytes` with a lower-case ASCII `literal`.
    @inlinable
    public static func equalsLower<C: Collection>(_ bytes: C, _ literal: StaticString) -> Bool where C.Element == UInt8 {
        guard bytes.count == literal.utf8CodeUnitCount else { return false }
        return literal.withUTF8Buffer { lit in
            var i = 0
            for b in bytes {
                let lower = b >= 65 && b <= 90 ? b | 0x20 : b
                if lower != lit[i] { return false }
                i += 1
            }
            return true
        }
    }

    /// `s` without leading and trailing spaces and tabs.
    public static func trimmed(_ s: Substring) -> Substring {
        var s = s
        while let f = s.utf8.first, f == 32 || f == 9 { s = s.dropFirst() }
        while let l = s.utf8.last, l == 32 || l == 9 { s = s.dropLast() }
        return s
    }

    /// Calls `body` with each piece of a comma-separated list (RFC 9110 §5.6.1) that is not empty between its
    /// commas, trimmed (so one of only spaces comes out empty); walked in place, without an array of pieces
    /// (field values like `Connection: keep-alive` come with every response).
    public static func forEachListElement(_ value: String, _ body: (Substring) -> Void) {
        var rest = Substring(value)
        while !rest.isEmpty {
            let comma = rest.utf8.firstIndex(of: UInt8(ascii: ",")) ?? rest.endIndex
            if comma > rest.startIndex { body(trimmed(rest[..<comma])) }
            rest = comma < rest.endIndex ? rest[rest.utf8.index(after: comma)...] : rest[rest.endIndex...]
        }
    }

    /// RFC 9110 `tchar`: the bytes of a method or a header name.
    @inlinable
    public static func isTokenByte(_ b: UInt8) -> Bool {
        switch b {
        case 0x30...0x39, 0x41...0x5A, 0x61...0x7A: return true
        case UInt8(ascii: "!"), UInt8(ascii: "#"), UInt8(ascii: "$"), UInt8(ascii: "%"), UInt8(ascii: "&"),
            UInt8(ascii: "'"), UInt8(ascii: "*"), UInt8(ascii: "+"), UInt8(ascii: "-"), UInt8(ascii: "."),
            UInt8(ascii: "^"), UInt8(ascii: "_"), UInt8(ascii: "`"), UInt8(ascii: "|"), UInt8(ascii: "~"):
            return true
        default: return false
        }
    }
}
