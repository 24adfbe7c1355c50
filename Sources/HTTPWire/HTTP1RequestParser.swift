/// An HTTP/1.x request parser that works on the bytes of each read as they are, for the gateway's client side.
///
/// The grammar is strict (``HTTP1Message``); framing follows ``HTTP1Framing``. A request whose framing is refused
/// is handed out (its head is answered with 400) and nothing after it is parsed; after an error nothing is parsed
/// either. Every size a client controls is bounded: the request line and the header section (``Limits``), the
/// number of header fields, a chunk-size line and the trailer section. Bytes arrive in any split.
///
/// A request that asks to switch protocols (``switchesProtocol(_:)``: an `Upgrade` other than `h2c`) is the last
/// one parsed: whatever follows its end belongs to the new protocol (or to nobody, when the switch is refused and
/// the connection closed) and is handed out as ``Event/tunnel(_:)`` ranges, never read as HTTP.
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

    public typealias ParseError = HTTP1ParseError

    public enum Event: Sendable {
        /// A request head, with its framing or why that framing is refused (then the parser stops).
        case head(Head, HTTP1Framing.Decision)
        /// Body bytes: a range of the bytes passed to ``next(_:_:)``.
        case body(Range<Int>)
        /// A chunk was announced; `total` is the sum of the sizes the request's chunks declared so far.
        case chunkDeclared(total: Int)
        /// The request is complete.
        case end
        /// The input is not HTTP/1.x as accepted here; the parser stops.
        case error(ParseError)
        /// Bytes after the end of a request that switches protocols: a range of the bytes passed in.
        case tunnel(Range<Int>)
    }

    private enum State: Sendable {
        /// Before a request line (empty lines before it are skipped).
        case start
        case head
        case body
        /// Stopped: after an error or a refused framing nothing more is parsed.
        case stopped
        /// After a request that switches protocols: bytes are passed through unparsed.
        case tunnel
    }

    public let limits: Limits
    private var state: State = .start
    private var gatherer = HeadGatherer()
    private var body = HTTP1BodyReader(.length(0), maxTrailerBytes: 0)
    private var endDue = false
    private var skippedEmptyLines = 0
    /// The request being read switches protocols: its end starts the tunnel.
    private var tunnelAfterEnd = false

    public init(limits: Limits) {
        self.limits = limits
    }

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
            case .tunnel:
                return passThrough(bytes, &offset).map(Event.tunnel)
            case .start:
                // Empty lines before a request line are skipped (RFC 9112 §2.2), a bounded number of them.
                while offset < bytes.count, bytes[offset] == 13 || bytes[offset] == 10 {
                    offset += 1
                    skippedEmptyLines += 1
                    if skippedEmptyLines > limits.maxHeaderBytes { return fail(.headTooLarge) }
                }
                guard offset < bytes.count else { return nil }
                // Not a method's first byte (TLS on the plain port, binary junk): refused at once.
                guard Self.isMethodByte(bytes[offset]) else { return fail(.malformed("invalid method")) }
                skippedEmptyLines = 0
                state = .head
            case .head:
                var parsed: Result<Head, ParseError> = .failure(.malformed("no head"))
                let limits = self.limits
                switch gatherer.gather(bytes, &offset, limit: 2 * limits.maxHeaderBytes + 4, parse: { parsed = Self.parseHead($0, limits: limits) }) {
                case .needMore: return nil
                case .failed(let e): return fail(e)
                case .complete: return finishHead(parsed)
                }
            case .body:
                switch body.next(bytes, &offset) {
                case nil: return nil
                case .body(let r):
                    if body.isDone { endAfterBody() }
                    return .body(r)
                case .chunkDeclared(let total): return .chunkDeclared(total: total)
                case .end:
                    state = tunnelAfterEnd ? .tunnel : .start
                    return .end
                case .error(let e): return fail(e)
                }
            }
        }
    }

    /// A sized body was handed out whole: the next call returns `.end`.
    private mutating func endAfterBody() {
        state = tunnelAfterEnd ? .tunnel : .start
        endDue = true
    }

    private mutating func fail(_ error: ParseError) -> Event {
        state = .stopped
        gatherer.reset()
        endDue = false
        return .error(error)
    }

    private mutating func finishHead(_ parsed: Result<Head, ParseError>) -> Event {
        switch parsed {
        case .failure(let error):
            return fail(error)
        case .success(let head):
            let framing = HTTP1Framing.decide(versionMinor: head.versionMinor, headers: head.headers)
            tunnelAfterEnd = Self.switchesProtocol(head.headers)
            switch framing {
            case .failure:
                state = .stopped
            case .success(.none):
                state = tunnelAfterEnd ? .tunnel : .start
                endDue = true
            case .success(.length(let n)):
                state = .body
                body = HTTP1BodyReader(.length(n), maxTrailerBytes: limits.maxHeaderBytes)
            case .success(.chunked):
                state = .body
                body = HTTP1BodyReader(.chunked, maxTrailerBytes: limits.maxHeaderBytes)
            }
            return .head(head, framing)
        }
    }

    static let maxMethodBytes = 24

    /// True when a request with these headers asks to switch protocols: an `Upgrade` field with any value but
    /// `h2c` (which the gateway ignores, RFC 9110 §7.8: it serves the request over HTTP/1.1). Nothing after such
    /// a request is parsed as HTTP, whether or not the switch is accepted.
    public static func switchesProtocol(_ headers: [(name: String, value: String)]) -> Bool {
        headers.contains { $0.name.utf8.count == 7 && ASCII.equalsLower($0.name.utf8, "upgrade") && switches(to: $0.value) }
    }

    /// Whether one `Upgrade` value asks for a switch (anything but `h2c`): the rule ``switchesProtocol(_:)`` and the
    /// gateway's handshake checks share.
    public static func switches(to upgradeValue: String) -> Bool {
        !ASCII.equalsLower(ASCII.trimmed(Substring(upgradeValue)).utf8, "h2c")
    }

    /// `A`-`Z`, `-` and `_`: the bytes of registered methods (`M-SEARCH`, `BASELINE-CONTROL`).
    static func isMethodByte(_ b: UInt8) -> Bool {
        (b >= 65 && b <= 90) || b == 45 || b == 95
    }

    /// Parses a complete head (from its request line through the empty line).
    static func parseHead(_ b: UnsafeRawBufferPointer, limits: Limits) -> Result<Head, ParseError> {
        var i = 0
        let n = b.count
        // Request line: method SP request-target SP HTTP-version CRLF. Methods are case-sensitive: only upper-case
        // ones (every registered method) are taken, so `delete` can never pass for DELETE anywhere downstream.
        while i < n, i <= maxMethodBytes, isMethodByte(b[i]) { i += 1 }
        guard i > 0, i <= maxMethodBytes, i < n, b[i] == 32 else { return .failure(.malformed("invalid method")) }
        let methodEnd = i
        i += 1
        // The target in visible ASCII: nothing a string conversion could alter on the way upstream.
        let targetStart = i
        while i < n, b[i] > 32, b[i] < 127 { i += 1 }
        guard i > targetStart, i < n, b[i] == 32 else { return .failure(.malformed("invalid request target")) }
        let targetEnd = i
        if targetEnd - targetStart > limits.maxHeaderBytes { return .failure(.headTooLarge) }
        i += 1
        guard let (major, minor) = HeaderFields.version(b, at: i), n - i >= 10, b[i + 8] == 13, b[i + 9] == 10 else {
            return .failure(.malformed("invalid HTTP version"))
        }
        i += 10
        switch HeaderFields.parse(b, from: i, maxBytes: limits.maxHeaderBytes, maxFields: limits.maxHeaderFields) {
        case .failure(let e):
            return .failure(e)
        case .success(let headers):
            return .success(Head(
                method: String(decoding: UnsafeRawBufferPointer(rebasing: b[0..<methodEnd]), as: UTF8.self),
                target: String(decoding: UnsafeRawBufferPointer(rebasing: b[targetStart..<targetEnd]), as: UTF8.self),
                versionMajor: major, versionMinor: minor, headers: headers))
        }
    }
}
