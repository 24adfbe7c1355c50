import Testing

@testable import HTTPWire

/// Parses `text` (in `chunks` pieces) as the response to one request; events flattened for comparison.
func parseResponse(_ chunks: [[UInt8]], toHead: Bool = false, upgrade: Bool = false, closeAtEnd: Bool = false) -> [String] {
    var parser = HTTP1ResponseParser(maxHeadBytes: 512, maxHeaderFields: 16)
    parser.expectResponse(toHead: toHead, upgrade: upgrade)
    var out: [String] = []
    var body = ""
    func flush() {
        if !body.isEmpty { out.append("body \(body)") }
        body = ""
    }
    for chunk in chunks {
        chunk.withUnsafeBytes { bytes in
            var offset = 0
            while let event = parser.next(bytes, &offset) {
                switch event {
                case .head(let h):
                    flush()
                    out.append("head \(h.status) \(h.reason) 1.\(h.versionMinor) \(h.headers.count) \(h.reusable ? "reusable" : "close")")
                case .body(let r): body += String(decoding: UnsafeRawBufferPointer(rebasing: bytes[r]), as: UTF8.self)
                case .end:
                    flush()
                    out.append("end")
                case .error(let e):
                    flush()
                    out.append("error \(e)")
                case .tunnel(let r):
                    flush()
                    let text = String(decoding: UnsafeRawBufferPointer(rebasing: bytes[r]), as: UTF8.self)
                    if let last = out.last, last.hasPrefix("tunnel ") { out[out.count - 1] = last + text } else { out.append("tunnel " + text) }
                }
            }
            #expect(offset == bytes.count)
        }
    }
    flush()
    if closeAtEnd, parser.closed() != nil { out.append("end at close") }
    return out
}

func parseResponse(_ text: String, toHead: Bool = false, upgrade: Bool = false, closeAtEnd: Bool = false) -> [String] {
    let bytes = Array(text.utf8)
    let whole = parseResponse([bytes], toHead: toHead, upgrade: upgrade, closeAtEnd: closeAtEnd)
    // Any split gives the same events.
    for cut in stride(from: 1, to: bytes.count, by: 1) {
        let split = parseResponse(
            [Array(bytes[..<cut]), Array(bytes[cut...])], toHead: toHead, upgrade: upgrade, closeAtEnd: closeAtEnd)
        #expect(split == whole, "split at \(cut) of \(text.debugDescription)")
    }
    return whole
}

@Suite struct HTTP1ResponseParserTests {
    @Test func framings() {
        #expect(
            parseResponse("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
                == ["head 200 OK 1.1 1 reusable", "body hello", "end"])
        #expect(
            parseResponse("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n2\r\nde\r\n0\r\nT: 1\r\n\r\n")
                == ["head 200 OK 1.1 1 reusable", "body abcde", "end"])
        // Neither framing header: the body runs until the upstream closes; never reused.
        #expect(
            parseResponse("HTTP/1.1 200 OK\r\nX: 1\r\n\r\nstream", closeAtEnd: true)
                == ["head 200 OK 1.1 1 close", "body stream", "end at close"])
        #expect(
            parseResponse("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nzz", closeAtEnd: true)
                == ["head 200 OK 1.1 1 close", "body zz", "end at close"])
        // Equal duplicate lengths are one; TE with CL is read as chunked and the connection is not reused.
        #expect(
            parseResponse("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok")
                == ["head 200 OK 1.1 2 reusable", "body ok", "end"])
        #expect(
            parseResponse("HTTP/1.1 200 OK\r\nContent-Length: 9\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n")
                == ["head 200 OK 1.1 2 close", "body ok", "end"])
        #expect(parseResponse("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n") == ["head 200 OK 1.1 1 reusable", "end"])
    }

    @Test func responsesWithoutABody() {
        #expect(parseResponse("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", toHead: true) == ["head 200 OK 1.1 1 reusable", "end"])
        #expect(parseResponse("HTTP/1.1 204 No Content\r\n\r\n") == ["head 204 No Content 1.1 0 reusable", "end"])
        #expect(parseResponse("HTTP/1.1 304 Not Modified\r\nContent-Length: 7\r\n\r\n") == ["head 304 Not Modified 1.1 1 reusable", "end"])
        // Interim responses are skipped; 101 is refused.
        #expect(
            parseResponse("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx")
                == ["head 200 OK 1.1 1 reusable", "body x", "end"])
        #expect(parseResponse("HTTP/1.1 101 Switching Protocols\r\n\r\n") == ["error malformed(\"unexpected 101 Switching Protocols\")"])
    }

    @Test func switchingProtocolsOpensATunnelOnlyForAnUpgradeRequest() {
        // After the 101, every byte is the new protocol's: nothing is parsed as HTTP, not even a response line.
        #expect(
            parseResponse(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\u{1}\u{2}hiHTTP/1.1 200 OK\r\n",
                upgrade: true)
                == ["head 101 Switching Protocols 1.1 2 close", "tunnel \u{1}\u{2}hiHTTP/1.1 200 OK\r\n"])
        // An upgrade request the upstream declines gets an ordinary response, read as usual.
        #expect(
            parseResponse("HTTP/1.1 403 Forbidden\r\nContent-Length: 2\r\n\r\nno", upgrade: true)
                == ["head 403 Forbidden 1.1 1 reusable", "body no", "end"])
        // A closed tunnel is not a response cut short.
        #expect(parseResponse("HTTP/1.1 101 Switching Protocols\r\n\r\n", upgrade: true, closeAtEnd: true) == ["head 101 Switching Protocols 1.1 0 close"])
    }

    @Test func keepAlive() {
        #expect(parseResponse("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n") == ["head 200 OK 1.1 2 close", "end"])
        #expect(parseResponse("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n") == ["head 200 OK 1.0 1 close", "end"])
        #expect(
            parseResponse("HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 0\r\n\r\n")
                == ["head 200 OK 1.0 2 reusable", "end"])
        #expect(parseResponse("HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n") == ["head 200  1.1 1 reusable", "end"])
    }

    @Test func malformedResponses() {
        let cases = [
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
            "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            "HTTP/1.1 2000 OK\r\n\r\n",
            "HTTP/2.0 200 OK\r\n\r\n",
            "HTTP/1.1 200 OK\nContent-Length: 0\n\n",
            "HTTP/1.1 200 OK\r\nX-Folded: a\r\n b\r\nContent-Length: 0\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nxyz\r\n",
            "ICY 200 OK\r\n\r\n",
        ]
        for text in cases {
            let seen = parseResponse(text)
            #expect(seen.last?.hasPrefix("error") == true, "\(text.debugDescription): \(seen)")
            #expect(!seen.contains("end"), "\(text.debugDescription)")
        }
        // A head over the limit.
        #expect(parseResponse("HTTP/1.1 200 OK\r\nX: " + String(repeating: "a", count: 600) + "\r\n\r\n") == ["error headTooLarge"])
    }

    @Test func bytesNobodyAskedForAreAnError() {
        var parser = HTTP1ResponseParser()
        let seen: [String] = Array("HTTP/1.1 200 OK\r\n\r\n".utf8).withUnsafeBytes { bytes in
            var offset = 0
            var out: [String] = []
            while let e = parser.next(bytes, &offset) { out.append("\(e)") }
            return out
        }
        #expect(seen.count == 1 && seen[0].hasPrefix("error"))
    }
}

@Suite struct ASCIIListTests {
    @Test func listElementsAreThePiecesBetweenCommasTrimmed() {
        func elements(_ v: String) -> [String] {
            var out: [String] = []
            ASCII.forEachListElement(v) { out.append(String($0)) }
            return out
        }
        #expect(elements("keep-alive") == ["keep-alive"])
        #expect(elements(" close , X-Foo,,\tbar\t") == ["close", "X-Foo", "bar"])
        // A piece of only spaces comes out empty (the caller decides); nothing between two commas is no piece.
        #expect(elements("gzip, chunked, ") == ["gzip", "chunked", ""])
        #expect(elements("") == [])
    }
}
