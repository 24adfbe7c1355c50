import Testing

@testable import HTTPWire

/// What the parser reports, flattened to compare event streams (body bytes joined per request).
enum Seen: Equatable {
    case head(String, String, Int, [String], String)  // method, target, minor, "name: value" lines, framing
    case body(String)
    case declared(Int)
    case end
    case error(HTTP1RequestParser.ParseError)
    case tunnel(String)
}

/// Feeds `chunks` in order and collects the events, merging consecutive body pieces.
func parse(_ chunks: [[UInt8]], maxHeaderBytes: Int = 1024, maxFields: Int = 256) -> [Seen] {
    var parser = HTTP1RequestParser(limits: .init(maxHeaderBytes: maxHeaderBytes, maxHeaderFields: maxFields))
    var seen: [Seen] = []
    for chunk in chunks {
        chunk.withUnsafeBytes { bytes in
            var offset = 0
            while let event = parser.next(bytes, &offset) {
                switch event {
                case .head(let h, let framing):
                    let f: String
                    switch framing {
                    case .success(.none): f = "none"
                    case .success(.length(let n)): f = "length \(n)"
                    case .success(.chunked): f = "chunked"
                    case .failure(let r): f = "refused: \(r.detail)"
                    }
                    seen.append(.head(h.method, h.target, h.versionMinor, h.headers.map { "\($0.name): \($0.value)" }, f))
                case .body(let r):
                    let text = String(decoding: UnsafeRawBufferPointer(rebasing: bytes[r]), as: UTF8.self)
                    #expect(!r.isEmpty, "an empty body event")
                    if case .body(let before) = seen.last {
                        seen[seen.count - 1] = .body(before + text)
                    } else {
                        seen.append(.body(text))
                    }
                case .chunkDeclared(let total): seen.append(.declared(total))
                case .end: seen.append(.end)
                case .error(let e): seen.append(.error(e))
                case .tunnel(let r):
                    let text = String(decoding: UnsafeRawBufferPointer(rebasing: bytes[r]), as: UTF8.self)
                    if case .tunnel(let before) = seen.last {
                        seen[seen.count - 1] = .tunnel(before + text)
                    } else {
                        seen.append(.tunnel(text))
                    }
                }
            }
            #expect(offset == bytes.count, "input left unused")
        }
    }
    return seen
}

func parse(_ text: String, maxHeaderBytes: Int = 1024, maxFields: Int = 256) -> [Seen] {
    parse([Array(text.utf8)], maxHeaderBytes: maxHeaderBytes, maxFields: maxFields)
}

/// Body pieces around chunk declarations are compared after merging, so every split must give the same stream.
func merged(_ events: [Seen]) -> [Seen] {
    var out: [Seen] = []
    for e in events {
        if case .body(let t) = e, case .body(let before) = out.last {
            out[out.count - 1] = .body(before + t)
        } else {
            out.append(e)
        }
    }
    return out
}

@Suite struct HTTP1RequestParserTests {
    static let pipelined =
        "\r\nGET /a?x=1 HTTP/1.1\r\nHost: gw\r\nX-Pad:   spaced value \t\r\n\r\n"
        + "POST /b HTTP/1.1\r\nHost: gw\r\nContent-Length: 5\r\n\r\nhello"
        + "POST /c HTTP/1.1\r\nhost: gw\r\nTransfer-Encoding: chunked\r\n\r\n"
        + "3;ext=1\r\nabc\r\nA\r\n0123456789\r\n0\r\nTrailer: t\r\n\r\n"
        + "GET /d HTTP/1.0\r\n\r\n"

    static let expected: [Seen] = [
        .head("GET", "/a?x=1", 1, ["Host: gw", "X-Pad: spaced value"], "none"), .end,
        .head("POST", "/b", 1, ["Host: gw", "Content-Length: 5"], "length 5"), .body("hello"), .end,
        .head("POST", "/c", 1, ["host: gw", "Transfer-Encoding: chunked"], "chunked"),
        .declared(3), .body("abc"), .declared(13), .body("0123456789"), .end,
        .head("GET", "/d", 0, [], "none"), .end,
    ]

    @Test func pipelinedRequestsOfEveryFraming() {
        #expect(parse(Self.pipelined) == Self.expected)
    }

    @Test func everySplitGivesTheSameEvents() {
        let bytes = Array(Self.pipelined.utf8)
        for cut in 1..<bytes.count {
            let seen = merged(parse([Array(bytes[..<cut]), Array(bytes[cut...])]))
            #expect(seen == Self.expected, "split at \(cut)")
        }
        // One byte per read: a dribbled head is gathered, not lost.
        #expect(merged(parse(bytes.map { [$0] })) == Self.expected)
    }

    @Test func malformedInputStopsTheParser() {
        let cases: [(String, HTTP1RequestParser.ParseError)] = [
            ("GET / HTTP/1.1\r\nHost: gw\r\nX-A: a\nX-B: b\r\n\r\n", .malformed("bare LF")),
            ("GET / HTTP/1.1\nHost: gw\n\n", .malformed("bare LF")),
            ("GET / HTTP/1.1\r\nHost: g\rw\r\n\r\n", .malformed("bare CR")),
            ("GET / HTTP/1.1\r\nHost: gw\r\nX-F: a\r\n b\r\n\r\n", .malformed("obs-fold")),
            ("GET / HTTP/1.1\r\nHost : gw\r\n\r\n", .malformed("invalid header name")),
            ("GET / HTTP/1.1\r\nX Bad: 1\r\n\r\n", .malformed("invalid header name")),
            ("GET / HTTP/1.1\r\nHost: g\u{0}w\r\n\r\n", .malformed("invalid character in header value")),
            ("GET / HTTP/1.1\r\nHost: g\u{7f}w\r\n\r\n", .malformed("invalid character in header value")),
            ("GET  / HTTP/1.1\r\nHost: gw\r\n\r\n", .malformed("invalid request target")),
            ("GET / HTTP/1.1 \r\nHost: gw\r\n\r\n", .malformed("invalid HTTP version")),
            ("GET / HTTP/11\r\nHost: gw\r\n\r\n", .malformed("invalid HTTP version")),
            ("G(T / HTTP/1.1\r\nHost: gw\r\n\r\n", .malformed("invalid method")),
            ("\u{1}\u{2}\u{3} nonsense\r\n\r\n", .malformed("invalid method")),
            ("delete /x HTTP/1.1\r\nHost: gw\r\n\r\n", .malformed("invalid method")),
            ("Post /x HTTP/1.1\r\nHost: gw\r\n\r\n", .malformed("invalid method")),
            (String(repeating: "A", count: 25) + " / HTTP/1.1\r\nHost: gw\r\n\r\n", .malformed("invalid method")),
            ("GET /a\u{C0}\u{AF} HTTP/1.1\r\nHost: gw\r\n\r\n", .malformed("invalid request target")),
        ]
        for (text, error) in cases {
            let seen = parse(text + "GET /next HTTP/1.1\r\nHost: gw\r\n\r\n")
            #expect(seen == [.error(error)], "\(text.debugDescription)")
        }
    }

    @Test func junkIsRefusedAtItsFirstByte() {
        // A TLS ClientHello on the plain port: no CRLF will ever come, the first byte is enough.
        #expect(parse([[0x16, 0x03, 0x01, 0x02, 0x00]]) == [.error(.malformed("invalid method"))])
        #expect(parse("M-SEARCH * HTTP/1.1\r\n\r\n") == [.head("M-SEARCH", "*", 1, [], "none"), .end])
    }

    @Test func chunkFramingErrors() {
        let head = "POST / HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n"
        let start: Seen = .head("POST", "/", 1, ["Host: gw", "Transfer-Encoding: chunked"], "chunked")
        #expect(parse(head + "zz\r\nabc\r\n0\r\n\r\n") == [start, .error(.malformed("invalid chunk size line"))])
        #expect(parse(head + " 3\r\nabc\r\n0\r\n\r\n") == [start, .error(.malformed("invalid chunk size line"))])
        #expect(parse(head + "3 \r\nabc\r\n0\r\n\r\n") == [start, .error(.malformed("invalid chunk size line"))])
        #expect(parse(head + "1000000000000000\r\n") == [start, .error(.malformed("invalid chunk size line"))])
        #expect(parse(head + "3\nabc\r\n0\r\n\r\n") == [start, .error(.malformed("chunk size line not ended by CRLF"))])
        #expect(
            parse(head + "3\r\nabcX\r\n0\r\n\r\n")
                == [start, .declared(3), .body("abc"), .error(.malformed("chunk data not followed by CRLF"))])
        #expect(
            parse(head + "1;" + String(repeating: "e", count: 2000) + "\r\n")
                == [start, .error(.malformed("chunk size line too long"))])
        // The largest 15-digit size is declared (the body limit refuses it, not the parser).
        #expect(parse(head + "fffffffffffffff\r\n") == [start, .declared(0xfff_ffff_ffff_ffff)])
        #expect(
            parse(head + "0\r\n" + String(repeating: "T: x\r\n", count: 400) + "\r\n", maxHeaderBytes: 1024)
                == [start, .error(.headTooLarge)])
    }

    @Test func refusedFramingIsHandedOutAndNothingAfterItIsParsed() {
        let cases = [
            ("Content-Length: 4\r\nTransfer-Encoding: chunked", "Both Content-Length and Transfer-Encoding."),
            ("Content-Length: 4\r\nContent-Length: 4", "Several Content-Length headers."),
            ("Content-Length: 4, 4", "Invalid Content-Length."),
            ("Content-Length: +4", "Invalid Content-Length."),
            ("Content-Length: 1234567890123456789", "Invalid Content-Length."),
            ("Transfer-Encoding: gzip, chunked", "Unsupported Transfer-Encoding (only a single 'chunked')."),
            ("Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked", "Unsupported Transfer-Encoding (only a single 'chunked')."),
        ]
        for (headers, why) in cases {
            let seen = parse("POST / HTTP/1.1\r\n\(headers)\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: gw\r\n\r\n")
            #expect(seen.count == 1, "\(headers)")
            if case .head(_, _, _, _, let framing) = seen.first {
                #expect(framing == "refused: \(why)", "\(headers)")
            } else {
                Issue.record("no head for \(headers)")
            }
        }
        let tenOn10 = parse("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
        #expect(tenOn10.count == 1)
    }

    @Test func sizeLimits() {
        // The request line and the header section are bounded separately; so is the number of fields.
        let longTarget = "GET /" + String(repeating: "a", count: 1100) + " HTTP/1.1\r\nHost: gw\r\n\r\n"
        #expect(parse(longTarget) == [.error(.headTooLarge)])
        let bigHeaders = "GET / HTTP/1.1\r\nHost: gw\r\nX-Big: " + String(repeating: "b", count: 1100) + "\r\n\r\n"
        #expect(parse(bigHeaders) == [.error(.headTooLarge)])
        // A head that never ends is refused once it is over the limit, not kept growing.
        let endless = "GET / HTTP/1.1\r\nX: " + String(repeating: "c", count: 3000)
        #expect(parse(endless) == [.error(.headTooLarge)])
        #expect(parse(Array(endless.utf8).map { [$0] }) == [.error(.headTooLarge)])
        let fields = "GET / HTTP/1.1\r\n" + String(repeating: "A: 1\r\n", count: 11) + "\r\n"
        #expect(parse(fields, maxFields: 10) == [.error(.headTooLarge)])
        #expect(parse(String(repeating: "\r\n", count: 2000)) == [.error(.headTooLarge)])
    }

    @Test func anIncompleteBodyWaitsForMore() {
        #expect(
            parse("POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc")
                == [.head("POST", "/", 1, ["Content-Length: 10"], "length 10"), .body("abc")])
        #expect(
            parse("POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
                == [.head("POST", "/", 1, ["Content-Length: 0"], "none"), .end])
    }

    @Test func nothingAfterARequestThatSwitchesProtocolsIsParsed() {
        let handshake = "GET /live HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
        let lines = ["Host: a", "Connection: Upgrade", "Upgrade: websocket"]
        // What follows is the tunnel's, even when it looks like a request (a smuggling attempt stays opaque).
        let after = "GET /admin HTTP/1.1\r\nHost: a\r\n\r\n\u{1}\u{2}"
        let expected: [Seen] = [.head("GET", "/live", 1, lines, "none"), .end, .tunnel(after)]
        let bytes = Array((handshake + after).utf8)
        #expect(parse([bytes]) == expected)
        for cut in 1..<bytes.count {
            #expect(parse([Array(bytes[..<cut]), Array(bytes[cut...])]) == expected, "split at \(cut)")
        }
        // Any upgrade but h2c switches, whatever the parser's caller decides about it later.
        #expect(HTTP1RequestParser.switchesProtocol([("upgrade", " IRC/6.9 ")]))
        #expect(HTTP1RequestParser.switchesProtocol([("Upgrade", "h2c, websocket")]))
        #expect(!HTTP1RequestParser.switchesProtocol([("Upgrade", " H2C ")]))
        #expect(!HTTP1RequestParser.switchesProtocol([("Connection", "Upgrade")]))
    }

    @Test func h2cIsIgnoredAndTheConnectionReadOn() {
        let first = "GET /a HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n"
        let second = "GET /b HTTP/1.1\r\nHost: a\r\n\r\n"
        let seen = parse([Array((first + second).utf8)])
        #expect(seen.count == 4)
        #expect(seen.last == .end)
        if case .head(_, let target, _, _, _) = seen[2] { #expect(target == "/b") } else { Issue.record("no second head: \(seen)") }
    }

    @Test func aSwitchingRequestWithABodyTunnelsAfterTheBody() {
        let text = "POST /x HTTP/1.1\r\nHost: a\r\nUpgrade: foo\r\nContent-Length: 2\r\n\r\nokrest"
        #expect(parse([Array(text.utf8)]) == [
            .head("POST", "/x", 1, ["Host: a", "Upgrade: foo", "Content-Length: 2"], "length 2"), .body("ok"), .end, .tunnel("rest"),
        ])
    }
}
