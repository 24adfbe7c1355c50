/// An HTTP/1.x request parser that works on the bytes of each read as they are, for the gateway's client side.
///
/// Strict where leniency lets two parsers disagree on where a request ends (RFC 9112): every line ends in CRLF
/// (a bare LF or CR is an error), no obs-fold, no whitespace between a header name and its colon, no control
/// characters in values, one `chunked` or one plain-digit Content-Length (``HTTP1Framing``), chunk sizes of at most
/// 15 hex digits followed by a CRLF or an extension, and the CRLF after each chunk's data. A request whose framing
/// is refused is handed out (its head is answered with 400) and nothing after it is parsed; after an error
/// nothing is parsed either.
///
/// Every size a client controls is bounded: the request line and the header section (``Limits``), the number
/// of header fields, a chunk-size line and the trailer section. Bytes arrive in any split; a head within one
/// read (the usual case) is parsed where it lies, a head split across reads is gathered first.
///
/// Pure: bytes in, events out, no I/O. Use: `while let event = parser.next(bytes, &offset) { ... }` for each read,
/// with `offset` starting at 0; body events are ranges of that read's bytes.
public struct HTTP1RequestParser: Sendable {
    public struct Limits: Sendable {
        /// Bytes of the request line, and separately of the header section (and of the trailer section).
        public var maxHeaderBytes: Int
        public var maxHeaderFields: Int
        public init(maxHeaderBytes: Int, maxHeaderFields: Int = 256) {
            self.maxHeaderBytes = maxHeaderBytes
            self.maxHeaderFields = maxHeaderFields
        }
    }

    public struct Head: Sendable {
        public var method: String
        public var target: String
        public var versionMajor: Int
        public var versionMinor: Int
        public var headers: [(name: String, value: String)]
    }

    public enum Event: Sendable {
        /// A request head, with its framing or why that framing is refused (then the parser stops).
        case head(Head, Result<HTTP1Framing, HTTP1Framing.Refusal>)
        /// Body bytes: a range of the bytes passed to ``next(_:_:)``.
        case body(Range<Int>)
        /// A chunk was announced; `total` is the sum of the sizes the request's chunks declared so far.
        case chunkDeclared(total: Int)
        /// The request is complete.
        case end
        /// The input is not HTTP/1.x as accepted here; the parser stops.
        case error(ParseError)
    }

    public enum ParseError: Error, Equatable, Sendable {
        /// The request line, the header section, the trailer section or the field count is over its limit.
        case headTooLarge
        case malformed(String)
    }

    private enum State: Sendable {
        /// Before a request line (empty lines before it are skipped).
        case start
        /// Reading a head; its bytes so far are in `pending` when it spans reads.
        case head
        case sizedBody(remaining: Int)
        case chunkSize
        case chunkData(remaining: Int)
        /// The CRLF after a chunk's data: `sawCR` once the CR passed.
        case chunkDataEnd(sawCR: Bool)
        case trailers
        /// Stopped: after an error or a refused framing nothing more is parsed.
        case stopped
    }

    public let limits: Limits
    private var state: State = .start
    /// The head (or chunk-size line, or trailer section) gathered across reads.
    private var pending: [UInt8] = []
    /// Chunk sizes declared so far by the current request.
    private var declaredTotal = 0
    private var skippedEmptyLines = 0

    public init(limits: Limits) {
        self.limits = limits
    }

    /// Whether the parser has stopped (after an error or a refused framing).
    public var isStopped: Bool {
        if case .stopped = state { return true }
        return false
    }

    /// Whether the parser is between requests (no part of a request read yet).
    public var isIdle: Bool {
        if case .start = state { return pending.isEmpty }
        return false
    }

    private var maxHeadBytes: Int { 2 * limits.maxHeaderBytes + 4 }

    /// The next event from `bytes`, starting at `offset` (advanced past what was used); nil when `bytes` is used
    /// up and more input is needed (or the parser stopped).
    public mutating func next(_ bytes: UnsafeRawBufferPointer, _ offset: inout Int) -> Event? {
        while true {
            if endDue {
                endDue = false
                return .end
            }
            switch state {
            case .stopped:
                offset = bytes.count
                return nil
            case .start:
                // Empty lines before a request line are skipped (RFC 9112 §2.2), a bounded number of them.
                while offset < bytes.count, bytes[offset] == 13 || bytes[offset] == 10 {
                    offset += 1
                    skippedEmptyLines += 1
                    if skippedEmptyLines > limits.maxHeaderBytes { return fail(.headTooLarge) }
                }
                guard offset < bytes.count else { return nil }
                skippedEmptyLines = 0
                state = .head
            case .head:
                return readHead(bytes, &offset)
            case .sizedBody(let remaining):
                guard offset < bytes.count else { return nil }
                let n = min(remaining, bytes.count - offset)
                let range = offset..<(offset + n)
                offset += n
                if remaining == n {
                    state = .start
                    endDue = true
                } else {
                    state = .sizedBody(remaining: remaining - n)
                }
                return .body(range)
            case .chunkSize:
                switch readLine(bytes, &offset, limit: 1024) {
                case .needMore: return nil
                case .malformed: return fail(.malformed("chunk size line not ended by CRLF"))
                case .tooLong: return fail(.malformed("chunk size line too long"))
                case .line(let line):
                    guard let size = Self.chunkSize(line) else { return fail(.malformed("invalid chunk size line")) }
                    if size == 0 {
                        state = .trailers
                        trailerBytes = 0
                        continue
                    }
                    declaredTotal = min(declaredTotal &+ size, Int.max / 2)
                    state = .chunkData(remaining: size)
                    return .chunkDeclared(total: declaredTotal)
                }
            case .chunkData(let remaining):
                guard offset < bytes.count else { return nil }
                let n = min(remaining, bytes.count - offset)
                let range = offset..<(offset + n)
                offset += n
                state = remaining == n ? .chunkDataEnd(sawCR: false) : .chunkData(remaining: remaining - n)
                return .body(range)
            case .chunkDataEnd(let sawCR):
                guard offset < bytes.count else { return nil }
                let b = bytes[offset]
                offset += 1
                guard b == (sawCR ? 10 : 13) else { return fail(.malformed("chunk data not followed by CRLF")) }
                state = sawCR ? .chunkSize : .chunkDataEnd(sawCR: true)
            case .trailers:
                // Trailer fields are read (bounded, CRLF-terminated, no control characters) and dropped.
                switch readLine(bytes, &offset, limit: limits.maxHeaderBytes - trailerBytes) {
                case .needMore: return nil
                case .malformed: return fail(.malformed("trailer field not ended by CRLF"))
                case .tooLong: return fail(.headTooLarge)
                case .line(let line):
                    if line.isEmpty {
                        state = .start
                        declaredTotal = 0
                        return .end
                    }
                    trailerBytes += line.count + 2
                    guard line.first != 32 && line.first != 9, line.allSatisfy({ $0 == 9 || ($0 >= 32 && $0 != 127) })
                    else { return fail(.malformed("invalid trailer field")) }
                }
            }
        }
    }

    /// A request without a body, or whose sized body was handed out: the next call returns `.end`.
    private var endDue = false
    private var trailerBytes = 0

    private mutating func fail(_ error: ParseError) -> Event {
        state = .stopped
        pending = []
        endDue = false
        return .error(error)
    }

    // MARK: Heads

    private enum Scan {
        case found(end: Int)
        case incomplete
        case tooLarge
        case bareLF, bareCR
    }

    /// Looks for the empty line ending a head that starts at `headStart`, from `from` on. Every LF must follow a
    /// CR and every CR precede an LF (the bytes before `from` were checked already). A head is at most `limit`
    /// bytes: the scan stops there, so where the input is split cannot change the outcome.
    private static func scanHead(_ b: UnsafeRawBufferPointer, headStart: Int, from: Int, limit: Int) -> Scan {
        var i = from
        let n = min(b.count, headStart + limit)
        while i < n {
            let c = b[i]
            if c == 10 {
                guard i > headStart, b[i - 1] == 13 else { return .bareLF }
                if i - 2 >= headStart && b[i - 2] == 10 { return .found(end: i + 1) }
            } else if i > headStart && b[i - 1] == 13 {
                return .bareCR
            }
            i += 1
        }
        return b.count > n ? .tooLarge : .incomplete
    }

    private mutating func readHead(_ bytes: UnsafeRawBufferPointer, _ offset: inout Int) -> Event? {
        let n = bytes.count
        if pending.isEmpty {
            // The usual case: the whole head in this read, parsed where it lies.
            switch Self.scanHead(bytes, headStart: offset, from: offset, limit: maxHeadBytes) {
            case .found(let end):
                let start = offset
                offset = end
                return finishHead(Self.parseHead(UnsafeRawBufferPointer(rebasing: bytes[start..<end]), limits: limits))
            case .bareLF: return fail(.malformed("bare LF"))
            case .bareCR: return fail(.malformed("bare CR"))
            case .tooLarge: return fail(.headTooLarge)
            case .incomplete:
                pending.reserveCapacity(1024)
                pending.append(contentsOf: UnsafeRawBufferPointer(rebasing: bytes[offset..<n]))
                offset = n
                return nil
            }
        }
        // A head split across reads: gathered, and scanned only where it grew.
        let before = pending.count
        let take = min(n - offset, maxHeadBytes + 1 - before)
        pending.append(contentsOf: UnsafeRawBufferPointer(rebasing: bytes[offset..<(offset + take)]))
        let scan = pending.withUnsafeBytes { Self.scanHead($0, headStart: 0, from: before, limit: maxHeadBytes) }
        switch scan {
        case .found(let end):
            offset += end - before
            let head = pending.withUnsafeBytes { Self.parseHead(UnsafeRawBufferPointer(rebasing: $0[0..<end]), limits: limits) }
            pending.removeAll(keepingCapacity: false)
            return finishHead(head)
        case .bareLF: return fail(.malformed("bare LF"))
        case .bareCR: return fail(.malformed("bare CR"))
        case .tooLarge: return fail(.headTooLarge)
        case .incomplete:
            offset += take
            return nil
        }
    }

    private mutating func finishHead(_ parsed: Result<Head, ParseError>) -> Event {
        switch parsed {
        case .failure(let error):
            return fail(error)
        case .success(let head):
            let framing = HTTP1Framing.decide(versionMinor: head.versionMinor, headers: head.headers)
            declaredTotal = 0
            switch framing {
            case .failure:
                state = .stopped
            case .success(.none):
                state = .start
                endDue = true
            case .success(.length(let n)):
                state = .sizedBody(remaining: n)
            case .success(.chunked):
                state = .chunkSize
            }
            return .head(head, framing)
        }
    }

    /// Parses a complete head (from its request line through the empty line).
    static func parseHead(_ b: UnsafeRawBufferPointer, limits: Limits) -> Result<Head, ParseError> {
        var i = 0
        let n = b.count
        // Request line: method SP request-target SP HTTP-version CRLF.
        let methodStart = i
        while i < n, ASCII.isTokenByte(b[i]) { i += 1 }
        guard i > methodStart, i < n, b[i] == 32 else { return .failure(.malformed("invalid method")) }
        let methodEnd = i
        i += 1
        let targetStart = i
        while i < n, b[i] > 32, b[i] != 127 { i += 1 }
        guard i > targetStart, i < n, b[i] == 32 else { return .failure(.malformed("invalid request target")) }
        let targetEnd = i
        if targetEnd - targetStart > limits.maxHeaderBytes { return .failure(.headTooLarge) }
        i += 1
        guard n - i >= 10, b[i] == 72, b[i + 1] == 84, b[i + 2] == 84, b[i + 3] == 80, b[i + 4] == 47,
            b[i + 5] >= 48, b[i + 5] <= 57, b[i + 6] == 46, b[i + 7] >= 48, b[i + 7] <= 57, b[i + 8] == 13,
            b[i + 9] == 10
        else { return .failure(.malformed("invalid HTTP version")) }
        let major = Int(b[i + 5] - 48)
        let minor = Int(b[i + 7] - 48)
        i += 10
        let method = String(decoding: UnsafeRawBufferPointer(rebasing: b[methodStart..<methodEnd]), as: UTF8.self)
        let target = String(decoding: UnsafeRawBufferPointer(rebasing: b[targetStart..<targetEnd]), as: UTF8.self)
        // Header fields: name ":" OWS value OWS CRLF, until the empty line.
        if n - i > limits.maxHeaderBytes + 2 { return .failure(.headTooLarge) }
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
            if headers.count == limits.maxHeaderFields { return .failure(.headTooLarge) }
            headers.append((
                String(decoding: UnsafeRawBufferPointer(rebasing: b[nameStart..<nameEnd]), as: UTF8.self),
                String(decoding: UnsafeRawBufferPointer(rebasing: b[valueStart..<valueEnd]), as: UTF8.self)
            ))
        }
        return .success(Head(method: method, target: target, versionMajor: major, versionMinor: minor, headers: headers))
    }

    // MARK: Lines (chunk sizes, trailers)

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
            let afterCR = i > offset ? bytes[i - 1] == 13 : pending.last == 13
            if b == 10 {
                guard afterCR else { return .malformed }
                pending.append(contentsOf: UnsafeRawBufferPointer(rebasing: bytes[offset..<i]))
                offset = i + 1
                pending.removeLast()
                let line = pending
                pending = []
                return .line(line)
            }
            if afterCR { return .malformed }
            i += 1
            if pending.count + (i - offset) > limit { return .tooLong }
        }
        pending.append(contentsOf: UnsafeRawBufferPointer(rebasing: bytes[offset..<n]))
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
