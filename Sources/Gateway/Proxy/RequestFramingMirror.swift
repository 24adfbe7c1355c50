#if canImport(Glibc)
import Glibc
#endif
import Policy
import Upstream

/// Follows the framing of a client's byte stream alongside the HTTP decoder, to learn what the decoder does not
/// tell: the size a chunk declares before its bytes arrive. A chunk whose declared size already exceeds the body
/// limit is refused with 413 at once, instead of waiting for bytes that would only be dropped.
///
/// It finds each request head's end, reads its `Content-Length`, `Transfer-Encoding` and `Upgrade` headers,
/// skips a sized body, and walks chunk-size lines. It never decides what is forwarded: the decoder and
/// ``RequestValidation`` stay the authority, and anything this mirror does not follow exactly (malformed
/// framing, an upgrade, an over-long line) makes it stop for the rest of the connection rather than guess.
/// Pure: bytes in, reports out.
struct RequestFramingMirror {
    private enum State {
        /// Reading head lines (`sawRequestLine` once the request line passed).
        case head
        case sizedBody(remaining: Int)
        case chunkSize(value: Int, digits: Int, inExtension: Bool)
        case chunkData(remaining: Int)
        /// The CRLF after a chunk's data; `sawCR` once the CR passed.
        case chunkDataEnd(sawCR: Bool)
        /// Trailer lines after the last chunk, until an empty line.
        case trailers
        /// Not following any more.
        case lost
    }

    /// Requests whose head has been seen so far (the index of the one being read is `requests - 1`).
    private(set) var requests = 0
    private var state: State = .head
    private var sawRequestLine = false
    /// The current line's first bytes (as sent), its full length, and the head's framing so far.
    private var line: [UInt8] = []
    private var lineLength = 0
    private var keepLine = false
    private var lineFirst: UInt8 = 0
    private var contentLength: Int?
    private var chunked = false
    private var upgrade = false
    /// Chunk sizes declared so far by the current request.
    private var declaredTotal = 0

    static let keptLineBytes = 48
    static let maxLineBytes = 64 * 1024

    var isLost: Bool {
        if case .lost = state { return true }
        return false
    }

    /// Scans `bytes`; `declared(request, total)` is called each time a chunk of request number `request`
    /// (0-based) is announced, with the sum of its chunks' declared sizes so far.
    mutating func scan(_ bytes: UnsafeRawBufferPointer, declared: (Int, Int) -> Void) {
        var i = 0
        let n = bytes.count
        while i < n {
            switch state {
            case .lost:
                return
            case .head, .trailers:
                // A line at a time: find its end with memchr, keep only what can matter (the first bytes of a
                // line that may be Content-Length, Transfer-Encoding or Upgrade).
                let base = bytes.baseAddress! + i
                let newline = memchr(base, 0x0A, n - i)
                let end = newline.map { UnsafeRawPointer($0) - UnsafeRawPointer(bytes.baseAddress!) } ?? n
                appendToLine(UnsafeRawBufferPointer(start: base, count: end - i))
                i = end
                if newline != nil {
                    i += 1
                    endOfLine()
                }
            case .sizedBody(let remaining):
                let take = min(remaining, n - i)
                i += take
                if remaining == take {
                    startNextRequest()
                } else {
                    state = .sizedBody(remaining: remaining - take)
                }
            case .chunkSize(var value, var digits, var inExtension):
                let b = bytes[i]
                i += 1
                if b == UInt8(ascii: "\n") {
                    guard digits > 0 else {
                        state = .lost
                        break
                    }
                    declaredTotal += value
                    declared(requests - 1, declaredTotal)
                    state = value == 0 ? .trailers : .chunkData(remaining: value)
                    break
                }
                if b == UInt8(ascii: "\r") || inExtension {
                    // Extensions (`;name=value`) and the CR are skipped.
                } else if b == UInt8(ascii: ";") || b == UInt8(ascii: " ") || b == UInt8(ascii: "\t") {
                    inExtension = true
                } else if let d = Digest.hexDigit(b), digits < 15 {
                    value = value * 16 + Int(d)
                    digits += 1
                } else {
                    state = .lost
                    break
                }
                state = .chunkSize(value: value, digits: digits, inExtension: inExtension)
            case .chunkData(let remaining):
                let take = min(remaining, n - i)
                i += take
                state = remaining - take == 0 ? .chunkDataEnd(sawCR: false) : .chunkData(remaining: remaining - take)
            case .chunkDataEnd(let sawCR):
                let b = bytes[i]
                i += 1
                if b == UInt8(ascii: "\r") && !sawCR {
                    state = .chunkDataEnd(sawCR: true)
                } else if b == UInt8(ascii: "\n") {
                    state = .chunkSize(value: 0, digits: 0, inExtension: false)
                } else {
                    state = .lost
                }
            }
        }
    }

    /// Adds bytes of the current line (without its LF).
    private mutating func appendToLine(_ part: UnsafeRawBufferPointer) {
        guard !part.isEmpty else { return }
        if lineLength == 0 {
            lineFirst = part[0]
            let first = part[0] | 0x20
            keepLine = first == UInt8(ascii: "c") || first == UInt8(ascii: "t") || first == UInt8(ascii: "u")
        }
        lineLength += part.count
        if lineLength > Self.maxLineBytes {
            state = .lost
            return
        }
        guard keepLine, line.count < Self.keptLineBytes else { return }
        for b in part.prefix(Self.keptLineBytes - line.count) where b != UInt8(ascii: "\r") {
            line.append(b)
        }
    }

    private mutating func endOfLine() {
        defer {
            line.removeAll(keepingCapacity: true)
            lineLength = 0
        }
        let empty = lineLength == 0 || (lineLength == 1 && lineFirst == UInt8(ascii: "\r"))
        if case .trailers = state {
            if empty { startNextRequest() }
            return
        }
        if !sawRequestLine {
            // Empty lines before a request line are skipped, as the decoder does.
            if !empty {
                sawRequestLine = true
                requests += 1
                declaredTotal = 0
            }
            return
        }
        if !empty {
            header()
            return
        }
        // The end of a head.
        if upgrade {
            state = .lost  // the decoder parses nothing after an upgrade request
        } else if chunked {
            state = .chunkSize(value: 0, digits: 0, inExtension: false)
        } else if let length = contentLength, length > 0 {
            state = .sizedBody(remaining: length)
        } else {
            startNextRequest()
        }
    }

    private mutating func header() {
        if Self.starts(line, "content-length:") {
            guard lineLength <= Self.keptLineBytes, let n = Self.decimal(line.dropFirst(15)), contentLength == nil else {
                state = .lost  // several or odd lengths: the request is refused; stop following
                return
            }
            contentLength = n
        } else if Self.starts(line, "transfer-encoding:") {
            chunked = true
        } else if Self.starts(line, "upgrade:") {
            upgrade = true
        }
    }

    private mutating func startNextRequest() {
        state = .head
        sawRequestLine = false
        contentLength = nil
        chunked = false
        upgrade = false
    }

    /// Whether the kept line starts with `prefix` (any case).
    private static func starts(_ line: [UInt8], _ prefix: StaticString) -> Bool {
        line.count >= prefix.utf8CodeUnitCount && HopByHop.equalsLower(line.prefix(prefix.utf8CodeUnitCount), prefix)
    }

    private static func decimal(_ bytes: ArraySlice<UInt8>) -> Int? {
        var value = 0
        var digits = 0
        for b in bytes {
            if b == UInt8(ascii: " ") || b == UInt8(ascii: "\t") { continue }
            guard b >= 48 && b <= 57, digits < 18 else { return nil }
            value = value * 10 + Int(b - 48)
            digits += 1
        }
        return digits > 0 ? value : nil
    }

}
