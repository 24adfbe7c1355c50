/// The parts of HTTP/1.x message parsing that requests and responses share (RFC 9112): gathering a head that may
/// span reads, the header-field grammar, and reading a body by its framing. Strict where leniency lets two parsers
/// disagree on where a message ends: every line ends in CRLF (a bare LF or CR is an error), no obs-fold, no
/// whitespace between a field name and its colon, no control characters in values, chunk sizes of at most 15 hex
/// digits followed by CRLF or an extension, the CRLF after each chunk's data.
public enum HTTP1ParseError: Error, Equatable, Sendable {
    /// A start line, header section, trailer section or field count over its limit.
    case headTooLarge
    case malformed(String)
}

/// Gathers one message head (start line through the empty line), where it lies in a read when it is whole there,
/// else copied across reads and scanned only where it grew. At most `limit` bytes: the scan stops there, so where
/// the input is split cannot change the outcome.
/// After a protocol switch the rest of each read is the new protocol's: its range, unparsed (nil when the read is
/// used up). Shared by both parsers' tunnel states.
func passThrough(_ bytes: UnsafeRawBufferPointer, _ offset: inout Int) -> Range<Int>? {
    guard offset < bytes.count else { return nil }
    defer { offset = bytes.count }
    return offset..<bytes.count
}

struct HeadGatherer: Sendable {
    private var pending: [UInt8] = []

    mutating func reset() { pending = [] }

    enum Outcome {
        /// The head is complete; `parse` ran on its bytes.
        case complete
        case needMore
        case failed(HTTP1ParseError)
    }

    /// Scans `bytes` from `offset` for the head's end; once found, calls `parse` with the whole head.
    mutating func gather(
        _ bytes: UnsafeRawBufferPointer, _ offset: inout Int, limit: Int, parse: (UnsafeRawBufferPointer) -> Void
    ) -> Outcome {
        let n = bytes.count
        if pending.isEmpty {
            switch Self.scan(bytes, headStart: offset, from: offset, limit: limit) {
            case .found(let end):
                let start = offset
                offset = end
                parse(UnsafeRawBufferPointer(rebasing: bytes[start..<end]))
                return .complete
            case .incomplete:
                pending.reserveCapacity(1024)
                pending.append(contentsOf: UnsafeRawBufferPointer(rebasing: bytes[offset..<n]))
                offset = n
                return .needMore
            case .failed(let e):
                return .failed(e)
            }
        }
        let before = pending.count
        let take = min(n - offset, limit + 1 - before)
        pending.append(contentsOf: UnsafeRawBufferPointer(rebasing: bytes[offset..<(offset + take)]))
        switch pending.withUnsafeBytes({ Self.scan($0, headStart: 0, from: before, limit: limit) }) {
        case .found(let end):
            offset += end - before
            pending.withUnsafeBytes { parse(UnsafeRawBufferPointer(rebasing: $0[0..<end])) }
            pending = []
            return .complete
        case .incomplete:
            offset += take
            return .needMore
        case .failed(let e):
            pending = []
            return .failed(e)
        }
    }

    private enum Scan {
        case found(end: Int)
        case incomplete
        case failed(HTTP1ParseError)
    }

    /// Looks for the empty line ending a head that starts at `headStart`, from `from` on (the bytes before `from`
    /// were checked already). Every LF must follow a CR and every CR precede an LF.
    private static func scan(_ b: UnsafeRawBufferPointer, headStart: Int, from: Int, limit: Int) -> Scan {
        var i = from
        let n = min(b.count, headStart + limit)
        while i < n {
            let c = b[i]
            if c == 10 {
                guard i > headStart, b[i - 1] == 13 else { return .failed(.malformed("bare LF")) }
                if i - 2 >= headStart && b[i - 2] == 10 { return .found(end: i + 1) }
            } else if i > headStart && b[i - 1] == 13 {
                return .failed(.malformed("bare CR"))
            }
            i += 1
        }
        return b.count > n ? .failed(.headTooLarge) : .incomplete
    }
}

enum HeaderFields {
    /// Parses the header fields of a complete head from `i` (just after the start line) to the empty line:
    /// `name ":" OWS value OWS CRLF`, values trimmed. At most `maxBytes` bytes and `maxFields` fields.
    static func parse(
        _ b: UnsafeRawBufferPointer, from start: Int, maxBytes: Int, maxFields: Int
    ) -> Result<[(name: String, value: String)], HTTP1ParseError> {
        var i = start
        let n = b.count
        if n - i > maxBytes + 2 { return .failure(.headTooLarge) }
        var headers: [(name: String, value: String)] = []
        headers.reserveCapacity(8)
        while true {
            guard i + 1 < n else { return .failure(.malformed("truncated head")) }
            if b[i] == 13 && b[i + 1] == 10 { break }
            let nameStart = i
            while i < n, ASCII.isTokenByte(b[i]) { i += 1 }
            guard i > nameStart, i < n, b[i] == 58 else {
                return .failure(.malformed(nameStart == i && (b[i] == 32 || b[i] == 9) ? "obs-fold" : "invalid header name"))
            }
            let nameEnd = i
            i += 1
            while i < n, b[i] == 32 || b[i] == 9 { i += 1 }
            let valueStart = i
            var valueEnd = i
            while i < n {
                let c = b[i]
                if c == 13 { break }
                guard c >= 32 || c == 9, c != 127 else { return .failure(.malformed("invalid character in header value")) }
                i += 1
                if c != 32 && c != 9 { valueEnd = i }
            }
            guard i + 1 < n, b[i + 1] == 10 else { return .failure(.malformed("bare CR")) }
            i += 2
            if headers.count == maxFields { return .failure(.headTooLarge) }
            headers.append((
                String(decoding: UnsafeRawBufferPointer(rebasing: b[nameStart..<nameEnd]), as: UTF8.self),
                String(decoding: UnsafeRawBufferPointer(rebasing: b[valueStart..<valueEnd]), as: UTF8.self)
            ))
        }
        return .success(headers)
    }

    /// `HTTP/` DIGIT `.` DIGIT at `i`, as (major, minor).
    static func version(_ b: UnsafeRawBufferPointer, at i: Int) -> (Int, Int)? {
        guard b.count - i >= 8, b[i] == 72, b[i + 1] == 84, b[i + 2] == 84, b[i + 3] == 80, b[i + 4] == 47,
            b[i + 5] >= 48, b[i + 5] <= 57, b[i + 6] == 46, b[i + 7] >= 48, b[i + 7] <= 57
        else { return nil }
        return (Int(b[i + 5] - 48), Int(b[i + 7] - 48))
    }
}

/// Reads one message body by its framing: a length, chunks (with trailers, read and dropped), or everything until
/// the connection closes.
struct HTTP1BodyReader: Sendable {
    enum Framing: Sendable {
        case length(Int)
        case chunked
        case untilClose
    }

    enum Event {
        case body(Range<Int>)
        /// A chunk was announced; `total` is the sum of the sizes declared so far.
        case chunkDeclared(total: Int)
        case end
        case error(HTTP1ParseError)
    }

    private enum State: Sendable {
        case sized(remaining: Int)
        case chunkSize
        case chunkData(remaining: Int)
        case chunkDataEnd(sawCR: Bool)
        case trailers
        case untilClose
        case done
    }

    private var state: State
    private var line: [UInt8] = []
    private var declaredTotal = 0
    private var trailerBytes = 0
    private let maxTrailerBytes: Int

    init(_ framing: Framing, maxTrailerBytes: Int) {
        switch framing {
        case .length(let n): state = n == 0 ? .done : .sized(remaining: n)
        case .chunked: state = .chunkSize
        case .untilClose: state = .untilClose
        }
        self.maxTrailerBytes = maxTrailerBytes
    }

    /// The next event; nil when `bytes` is used up.
    mutating func next(_ bytes: UnsafeRawBufferPointer, _ offset: inout Int) -> Event? {
        while true {
            switch state {
            case .done:
                return nil
            case .sized(let remaining):
                guard offset < bytes.count else { return nil }
                let n = min(remaining, bytes.count - offset)
                offset += n
                state = remaining == n ? .done : .sized(remaining: remaining - n)
                return .body((offset - n)..<offset)
            case .untilClose:
                guard offset < bytes.count else { return nil }
                let start = offset
                offset = bytes.count
                return .body(start..<offset)
            case .chunkSize:
                switch readLine(bytes, &offset, limit: 1024) {
                case .needMore: return nil
                case .malformed: return fail(.malformed("chunk size line not ended by CRLF"))
                case .tooLong: return fail(.malformed("chunk size line too long"))
                case .line(let line):
                    guard let size = Self.chunkSize(line) else { return fail(.malformed("invalid chunk size line")) }
                    if size == 0 {
                        state = .trailers
                        continue
                    }
                    declaredTotal = min(declaredTotal &+ size, Int.max / 2)
                    state = .chunkData(remaining: size)
                    return .chunkDeclared(total: declaredTotal)
                }
            case .chunkData(let remaining):
                guard offset < bytes.count else { return nil }
                let n = min(remaining, bytes.count - offset)
                offset += n
                state = remaining == n ? .chunkDataEnd(sawCR: false) : .chunkData(remaining: remaining - n)
                return .body((offset - n)..<offset)
            case .chunkDataEnd(let sawCR):
                guard offset < bytes.count else { return nil }
                let b = bytes[offset]
                offset += 1
                guard b == (sawCR ? 10 : 13) else { return fail(.malformed("chunk data not followed by CRLF")) }
                state = sawCR ? .chunkSize : .chunkDataEnd(sawCR: true)
            case .trailers:
                // Trailer fields are read (bounded, CRLF-terminated, no control characters) and dropped.
                switch readLine(bytes, &offset, limit: maxTrailerBytes - trailerBytes) {
                case .needMore: return nil
                case .malformed: return fail(.malformed("trailer field not ended by CRLF"))
                case .tooLong: return fail(.headTooLarge)
                case .line(let line):
                    if line.isEmpty {
                        state = .done
                        return .end
                    }
                    trailerBytes += line.count + 2
                    guard line.first != 32 && line.first != 9, line.allSatisfy({ $0 == 9 || ($0 >= 32 && $0 != 127) })
                    else { return fail(.malformed("invalid trailer field")) }
                }
            }
        }
    }

    var isDone: Bool {
        if case .done = state { return true }
        return false
    }

    var readsUntilClose: Bool {
        if case .untilClose = state { return true }
        return false
    }

    private mutating func fail(_ error: HTTP1ParseError) -> Event {
        state = .done
        line = []
        return .error(error)
    }

    private enum Line {
        case line([UInt8])
        case needMore
        case malformed
        case tooLong
    }

    /// One CRLF-terminated line (without the CRLF) of at most `limit` bytes, gathered across reads.
    private mutating func readLine(_ bytes: UnsafeRawBufferPointer, _ offset: inout Int, limit: Int) -> Line {
        var i = offset
        let n = bytes.count
        while i < n {
            let b = bytes[i]
            let afterCR = i > offset ? bytes[i - 1] == 13 : line.last == 13
            if b == 10 {
                guard afterCR else { return .malformed }
                line.append(contentsOf: UnsafeRawBufferPointer(rebasing: bytes[offset..<i]))
                offset = i + 1
                line.removeLast()
                defer { line = [] }
                return .line(line)
            }
            if afterCR { return .malformed }
            i += 1
            if line.count + (i - offset) > limit { return .tooLong }
        }
        line.append(contentsOf: UnsafeRawBufferPointer(rebasing: bytes[offset..<n]))
        offset = n
        return .needMore
    }

    /// The size of a chunk-size line (`1*15HEXDIG [";" extension]`), or nil.
    static func chunkSize(_ line: [UInt8]) -> Int? {
        var size = 0
        var digits = 0
        var i = 0
        while i < line.count {
            let b = line[i]
            let v: Int
            switch b {
            case 48...57: v = Int(b) - 48
            case 65...70: v = Int(b) - 55
            case 97...102: v = Int(b) - 87
            default: v = -1
            }
            if v < 0 { break }
            digits += 1
            if digits > 15 { return nil }
            size = size * 16 + v
            i += 1
        }
        guard digits > 0 else { return nil }
        if i < line.count {
            guard line[i] == 59 else { return nil }
            // A chunk extension: ignored, but no control characters.
            for b in line[(i + 1)...] where (b < 32 && b != 9) || b == 127 { _ = b; return nil }
        }
        return size
    }
}
