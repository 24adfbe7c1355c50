/// An HTTP/1.x response parser for the gateway's upstream connections, on the bytes of each read as they are.
///
/// Each response is read for the request that asked for it (``expectResponse(toHead:)``): a response to HEAD,
/// and 204 and 304, have no body; interim 1xx responses (100, 103) are read and skipped, since the gateway
/// answers `Expect` itself; 101 ends HTTP on the connection when the request asked to switch protocols (the bytes
/// after it come out as ``Event/tunnel(_:)``) and is refused otherwise. The body is framed as RFC 9112
/// §6.3 says: Transfer-Encoding ending in `chunked` wins (and the connection is not reused), another
/// Transfer-Encoding or no framing at all reads until the upstream closes, else one Content-Length (equal
/// duplicates are one); differing Content-Lengths are an error. The grammar is the request parser's, as strict.
public struct HTTP1ResponseParser: Sendable {
    public struct Head: Sendable {
        public var status: Int
        public var reason: String
        public var versionMinor: Int
        public var headers: [(name: String, value: String)]
        /// The connection may carry another exchange after this response (keep-alive and self-delimited).
        public var reusable: Bool
    }

    public enum Event: Sendable {
        case head(Head)
        case body(Range<Int>)
        case end
        case error(HTTP1ParseError)
        /// Bytes after a `101 Switching Protocols`: a range of the bytes passed in.
        case tunnel(Range<Int>)
    }

    private enum State: Sendable {
        /// No response expected: any byte is an error.
        case idle
        case head
        case body
        case stopped
        /// After a 101: bytes are passed through unparsed.
        case tunnel
    }

    public let maxHeadBytes: Int
    public let maxHeaderFields: Int
    private var state: State = .idle
    private var headRequest = false
    private var upgradeRequest = false
    private var gatherer = HeadGatherer()
    private var body = HTTP1BodyReader(.length(0), maxTrailerBytes: 0)
    private var endDue = false

    public init(maxHeadBytes: Int = 64 * 1024, maxHeaderFields: Int = 256) {
        self.maxHeadBytes = maxHeadBytes
        self.maxHeaderFields = maxHeaderFields
    }

    /// A request was sent: its response comes next. `upgrade`: the request asked to switch protocols, so a 101
    /// may answer it.
    public mutating func expectResponse(toHead: Bool, upgrade: Bool = false) {
        state = .head
        headRequest = toHead
        upgradeRequest = upgrade
        endDue = false
        gatherer.reset()
    }

    /// The body runs until the connection closes: the close ends it.
    public var endsAtClose: Bool { state == .body && body.readsUntilClose }

    public mutating func next(_ bytes: UnsafeRawBufferPointer, _ offset: inout Int) -> Event? {
        while true {
            if endDue {
                endDue = false
                state = .idle
                return .end
            }
            switch state {
            case .stopped:
                offset = bytes.count
                return nil
            case .tunnel:
                return passThrough(bytes, &offset).map(Event.tunnel)
            case .idle:
                guard offset < bytes.count else { return nil }
                return fail(.malformed("bytes from the upstream when no response was expected"))
            case .head:
                guard offset < bytes.count else { return nil }
                var parsed: Result<Head, HTTP1ParseError> = .failure(.malformed("no head"))
                let (limit, fields) = (maxHeadBytes, maxHeaderFields)
                switch gatherer.gather(bytes, &offset, limit: limit, parse: { parsed = Self.parseHead($0, maxBytes: limit, maxFields: fields) }) {
                case .needMore: return nil
                case .failed(let e): return fail(e)
                case .complete: break
                }
                switch parsed {
                case .failure(let e):
                    return fail(e)
                case .success(var head):
                    if head.status == 101 {
                        guard upgradeRequest else { return fail(.malformed("unexpected 101 Switching Protocols")) }
                        head.reusable = false
                        state = .tunnel
                        return .head(head)
                    }
                    // Interim responses are dropped; the final one follows.
                    if head.status < 200 { continue }
                    switch framing(head) {
                    case .failure(let e):
                        return fail(e)
                    case .success(let (framing, ambiguous)):
                        // Transfer-Encoding with Content-Length: read as chunked, then never reused (RFC 9112 §6.3).
                        if ambiguous { head.reusable = false }
                        switch framing {
                        case nil:
                            endDue = true
                        case .untilClose?:
                            head.reusable = false
                            state = .body
                            body = HTTP1BodyReader(.untilClose, maxTrailerBytes: 0)
                        case let f?:
                            state = .body
                            body = HTTP1BodyReader(f, maxTrailerBytes: maxHeadBytes)
                            if body.isDone { endDue = true }
                        }
                        return .head(head)
                    }
                }
            case .body:
                switch body.next(bytes, &offset) {
                case nil: return nil
                case .body(let r):
                    if body.isDone { endDue = true }
                    return .body(r)
                case .chunkDeclared: continue
                case .end:
                    state = .idle
                    return .end
                case .error(let e): return fail(e)
                }
            }
        }
    }

    /// The connection closed: the end of a body read until close (nil when nothing was pending).
    public mutating func closed() -> Event? {
        guard endsAtClose else { return nil }
        state = .idle
        return .end
    }

    private mutating func fail(_ error: HTTP1ParseError) -> Event {
        state = .stopped
        gatherer.reset()
        endDue = false
        return .error(error)
    }

    /// The body's framing; nil for a response without one.
    private func framing(_ head: Head) -> Result<(HTTP1BodyReader.Framing?, ambiguous: Bool), HTTP1ParseError> {
        if headRequest || head.status == 204 || head.status == 304 { return .success((nil, false)) }
        var transferEncoding: String?
        var length: Int?
        for (name, value) in head.headers {
            switch name.utf8.count {
            case 17 where ASCII.equalsLower(name.utf8, "transfer-encoding"):
                // Codings accumulate across fields; only the last one matters for framing.
                transferEncoding = value
            case 14 where ASCII.equalsLower(name.utf8, "content-length"):
                let digits = ASCII.trimmed(Substring(value))
                guard !digits.isEmpty, digits.utf8.count <= 18, digits.utf8.allSatisfy({ $0 >= 48 && $0 <= 57 }),
                    let n = Int(digits)
                else { return .failure(.malformed("invalid Content-Length")) }
                if let l = length, l != n { return .failure(.malformed("differing Content-Lengths")) }
                length = n
            default:
                break
            }
        }
        if let te = transferEncoding {
            var last: Substring = ""
            ASCII.forEachListElement(te) { last = $0 }
            return .success((ASCII.equalsLower(last.utf8, "chunked") ? .chunked : .untilClose, length != nil))
        }
        if let length { return .success((.length(length), false)) }
        return .success((.untilClose, false))
    }

    /// Parses a complete response head: `HTTP/1.x SP 3DIGIT SP reason CRLF` and the header fields.
    static func parseHead(_ b: UnsafeRawBufferPointer, maxBytes: Int, maxFields: Int) -> Result<Head, HTTP1ParseError> {
        guard let (major, minor) = HeaderFields.version(b, at: 0), major == 1, b.count > 13, b[8] == 32,
            b[9] >= 49, b[9] <= 57, b[10] >= 48, b[10] <= 57, b[11] >= 48, b[11] <= 57
        else { return .failure(.malformed("invalid status line")) }
        let status = Int(b[9] - 48) * 100 + Int(b[10] - 48) * 10 + Int(b[11] - 48)
        var i = 12
        var reason = ""
        if b[i] == 32 {
            i += 1
            let start = i
            while i < b.count, b[i] != 13 {
                guard b[i] >= 32 || b[i] == 9, b[i] != 127 else { return .failure(.malformed("invalid reason phrase")) }
                i += 1
            }
            reason = String(decoding: UnsafeRawBufferPointer(rebasing: b[start..<i]), as: UTF8.self)
        }
        guard i + 1 < b.count, b[i] == 13, b[i + 1] == 10 else { return .failure(.malformed("invalid status line")) }
        i += 2
        switch HeaderFields.parse(b, from: i, maxBytes: maxBytes, maxFields: maxFields) {
        case .failure(let e):
            return .failure(e)
        case .success(let headers):
            var close = minor == 0
            for (name, value) in headers where name.utf8.count == 10 && ASCII.equalsLower(name.utf8, "connection") {
                ASCII.forEachListElement(value) { t in
                    if ASCII.equalsLower(t.utf8, "close") { close = true }
                    if minor == 0 && ASCII.equalsLower(t.utf8, "keep-alive") { close = false }
                }
            }
            return .success(Head(status: status, reason: reason, versionMinor: minor, headers: headers, reusable: !close))
        }
    }
}
