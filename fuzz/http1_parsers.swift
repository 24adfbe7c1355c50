// libFuzzer target for HTTPWire's parsers (`make fuzz`; `make test` runs it for a bounded time).
// Built with the parsers' sources alone: swiftc -parse-as-library -sanitize=fuzzer,address Sources/HTTPWire/*.swift this
//
// The first input byte picks the parser (request, or response to a GET or a HEAD), a split point and a header limit;
// the rest is the byte stream. Checked on every input: no trap (bounds, overflow), every call uses the input up,
// body ranges lie inside it, and feeding the stream in one read, in two reads and one byte per read gives the same
// events. The same bytes also go to the PROXY protocol parser, which must wait on every proper prefix of a header
// it accepts, accept that prefix alone the same way, and never accept what a prefix of it refused.

struct Trace: Equatable {
    var events: [String] = []
    var body: [UInt8] = []

    mutating func flushBody() {
        if !body.isEmpty {
            events.append("body \(body)")
            body = []
        }
    }
}

/// What either parser reports, as one kind of record; `body` is a range of the read.
enum Seen {
    case body(Range<Int>)
    case event(String)
}

/// Feeds each chunk as one read, checking that every call uses the input up and body ranges lie inside it.
func feed(_ chunks: [ArraySlice<UInt8>], _ next: (UnsafeRawBufferPointer, inout Int) -> Seen?) -> Trace {
    var trace = Trace()
    for chunk in chunks {
        Array(chunk).withUnsafeBytes { bytes in
            var offset = 0
            while let seen = next(bytes, &offset) {
                precondition(offset <= bytes.count)
                switch seen {
                case .body(let r):
                    precondition(!r.isEmpty && r.lowerBound >= 0 && r.upperBound <= bytes.count)
                    trace.body += bytes[r]
                case .event(let text):
                    trace.flushBody()
                    trace.events.append(text)
                }
            }
            precondition(offset == bytes.count, "input left unused")
        }
    }
    trace.flushBody()
    return trace
}

func run(_ chunks: [ArraySlice<UInt8>], maxHeaderBytes: Int, response: Int) -> Trace {
    if response > 0 {
        return runResponse(chunks, maxHeadBytes: maxHeaderBytes, toHead: response == 2, upgrade: response == 3)
    }
    var parser = HTTP1RequestParser(limits: .init(maxHeaderBytes: maxHeaderBytes, maxHeaderFields: 16))
    return feed(chunks) { bytes, offset in
        switch parser.next(bytes, &offset) {
        case nil: return nil
        case .body(let r): return .body(r)
        case .head(let h, let f):
            return .event("head \(h.method) \(h.target) \(h.versionMinor) \(h.headers.map { "\($0.name)=\($0.value)" }) \(f)")
        case .chunkDeclared(let t):
            precondition(t > 0)
            return .event("declared \(t)")
        case .end: return .event("end")
        case .error(let e): return .event("error \(e)")
        // After a request that switches protocols: joined like body bytes (it follows the request's end).
        case .tunnel(let r): return .body(r)
        }
    }
}

func runResponse(_ chunks: [ArraySlice<UInt8>], maxHeadBytes: Int, toHead: Bool, upgrade: Bool) -> Trace {
    var parser = HTTP1ResponseParser(maxHeadBytes: maxHeadBytes, maxHeaderFields: 16)
    parser.expectResponse(toHead: toHead, upgrade: upgrade)
    var trace = feed(chunks) { bytes, offset in
        switch parser.next(bytes, &offset) {
        case nil: return nil
        case .body(let r): return .body(r)
        case .head(let h):
            return .event("head \(h.status) \(h.reason) \(h.versionMinor) \(h.headers.map { "\($0.name)=\($0.value)" }) \(h.reusable)")
        case .end:
            // The next response, as for a following request on the same connection.
            parser.expectResponse(toHead: toHead, upgrade: upgrade)
            return .event("end")
        case .error(let e): return .event("error \(e)")
        case .tunnel(let r): return .body(r)
        }
    }
    if parser.closed() != nil { trace.events.append("end at close") }
    return trace
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    guard size > 1 else { return 0 }
    let control = Int(data[0])
    let input = Array(UnsafeBufferPointer(start: data + 1, count: size - 1))
    let limit = 32 + (control & 0x0f) * 64
    let response = (control >> 4) % 4
    let whole = run([input[...]], maxHeaderBytes: limit, response: response)
    let cut = (control * 7919) % (input.count + 1)
    let two = run([input[..<cut], input[cut...]], maxHeaderBytes: limit, response: response)
    precondition(whole == two, "split at \(cut) changed the events")
    checkProxyHeader(input)
    if input.count <= 512 {
        let dribbled = run(input.indices.map { input[$0...$0] }, maxHeaderBytes: limit, response: response)
        precondition(whole == dribbled, "one byte per read changed the events")
    }
    return 0
}

/// The PROXY protocol parser's outcome does not depend on how much of the stream has arrived.
func checkProxyHeader(_ input: [UInt8]) {
    let whole = input.withUnsafeBytes { ProxyProtocol.parse($0) }
    switch whole {
    case .header(_, let consumed):
        precondition(consumed > 0 && consumed <= input.count)
        for n in stride(from: 0, to: consumed, by: max(1, consumed / 64)) {
            let prefix = Array(input[..<n]).withUnsafeBytes { ProxyProtocol.parse($0) }
            precondition(prefix == .needMore, "a proper prefix of \(n) bytes was not left waiting")
        }
        let exact = Array(input[..<consumed]).withUnsafeBytes { ProxyProtocol.parse($0) }
        precondition(exact == whole, "the header alone parsed differently")
    case .needMore:
        precondition(input.count < 16 + ProxyProtocol.maxV2Length, "waited past the largest header")
    case .invalid:
        break
    }
}
