import Testing

@testable import Gateway

/// The framing mirror on bytes alone: chunk sizes are reported for the right request with running totals,
/// whatever the split of the stream into reads, and anything it cannot follow exactly stops it.
@Suite struct RequestFramingMirrorTests {
    /// Feeds `text` in pieces of the given sizes (cycled) and collects the reports.
    static func reports(_ text: String, splits: [Int] = [Int.max]) -> (reports: [[Int]], lost: Bool) {
        var mirror = RequestFramingMirror()
        var out: [[Int]] = []
        let bytes = Array(text.utf8)
        var i = 0
        var k = 0
        while i < bytes.count {
            let n = min(splits[k % splits.count], bytes.count - i)
            bytes[i..<(i + n)].withUnsafeBytes { raw in
                mirror.scan(raw) { out.append([$0, $1]) }
            }
            i += n
            k += 1
        }
        return (out, mirror.isLost)
    }

    static let pipeline =
        "GET /a HTTP/1.1\r\nHost: gw\r\n\r\n"
        + "POST /b HTTP/1.1\r\nHost: gw\r\nContent-Length: 11\r\n\r\nhello\r\n\r\nxy"
        + "POST /c HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n"
        + "5\r\nhello\r\n1a;ext=1\r\n" + String(repeating: "z", count: 26) + "\r\n0\r\nX-Trailer: t\r\n\r\n"
        + "POST /d HTTP/1.1\r\nHost: gw\r\ntransfer-encoding: CHUNKED\r\n\r\n"
        + "FFFFF\r\n"

    @Test func chunkSizesAreReportedForTheirRequestWithRunningTotals() {
        let (reports, lost) = Self.reports(Self.pipeline)
        #expect(reports == [[2, 5], [2, 31], [2, 31], [3, 0xFFFFF]])
        #expect(!lost)
    }

    @Test func theSplitOfTheStreamIntoReadsDoesNotMatter() {
        let whole = Self.reports(Self.pipeline)
        for splits in [[1], [2], [3], [7], [1, 13], [64], [5, 1, 2]] {
            let split = Self.reports(Self.pipeline, splits: splits)
            #expect(split.reports == whole.reports, "splits \(splits)")
            #expect(split.lost == whole.lost, "splits \(splits)")
        }
    }

    @Test func aSizedBodyThatLooksLikeChunkedFramingIsSkipped() {
        // The body of /a holds text that would be a chunked request if the mirror read it as a head.
        let body = "POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nFFFF\r\n"
        let text = "POST /a HTTP/1.1\r\nHost: gw\r\nContent-Length: \(body.utf8.count)\r\n\r\n" + body
            + "POST /b HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n10\r\n"
        #expect(Self.reports(text).reports == [[1, 16]])
    }

    @Test func emptyLinesBeforeARequestLineAreSkipped() {
        let text = "\r\n\r\nPOST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n"
        #expect(Self.reports(text).reports == [[0, 4]])
    }

    @Test func whatItCannotFollowStopsIt() {
        let cases = [
            "POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",  // not hex
            "POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n\r\n",  // no digits
            "POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1234567890abcdef0\r\n",  // over 15 hex digits
            "POST /a HTTP/1.1\r\nContent-Length: 4\r\nContent-Length: 4\r\n\r\nabcd",  // two lengths
            "POST /a HTTP/1.1\r\nContent-Length: +4\r\n\r\nabcd",  // not a plain number
            "GET /a HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",  // nothing is parsed after it
            "POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabX\r\n",  // data not followed by CRLF
        ]
        for text in cases {
            let (reports, lost) = Self.reports(text + "POST /b HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n9\r\n")
            #expect(lost, "\(text.debugDescription) should stop the mirror")
            #expect(!reports.contains([1, 9]), "\(text.debugDescription): reported past what it could follow")
        }
    }

    @Test func anOverlongLineStopsIt() {
        let text = "GET /a HTTP/1.1\r\nX-Long: " + String(repeating: "a", count: RequestFramingMirror.maxLineBytes) + "\r\n\r\n"
        #expect(Self.reports(text).lost)
    }

    /// Random valid pipelines (bodyless, sized, chunked with extensions and trailers; bodies full of CRLFs and
    /// request-like text), cut into random reads: the reports are exactly what the model expects.
    @Test func randomPipelinesMatchTheModel() {
        for seed in UInt64(1)...200 {
            var rng = SeededRandom(seed: seed)
            var text = ""
            var expected: [[Int]] = []
            let filler = ["a", "\r\n", "\r\n\r\n", "0\r\n\r\n", "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"]
            func body(_ n: Int) -> String {
                var b = ""
                while b.utf8.count < n { b += filler.randomElement(using: &rng)! }
                return String(b.utf8.prefix(n))!
            }
            for request in 0..<Int.random(in: 1...6, using: &rng) {
                if Bool.random(using: &rng) { text += "\r\n" }
                switch Int.random(in: 0..<3, using: &rng) {
                case 0:
                    text += "GET /r\(request) HTTP/1.1\r\nHost: gw\r\nX-Pad: \(String(repeating: "p", count: Int.random(in: 0..<40, using: &rng)))\r\n\r\n"
                case 1:
                    let n = Int.random(in: 0..<300, using: &rng)
                    text += "POST /r\(request) HTTP/1.1\r\nHost: gw\r\ncontent-LENGTH: \(n)\r\n\r\n" + body(n)
                default:
                    text += "POST /r\(request) HTTP/1.1\r\nTransfer-Encoding: chunked\r\nHost: gw\r\n\r\n"
                    var total = 0
                    for _ in 0..<Int.random(in: 0...4, using: &rng) {
                        let n = Int.random(in: 1..<200, using: &rng)
                        total += n
                        let ext = Bool.random(using: &rng) ? ";name=value" : ""
                        text += String(n, radix: 16, uppercase: Bool.random(using: &rng)) + ext + "\r\n" + body(n) + "\r\n"
                        expected.append([request, total])
                    }
                    text += "0\r\n" + (Bool.random(using: &rng) ? "X-Trailer: 1\r\n" : "") + "\r\n"
                    expected.append([request, total])
                }
            }
            let splits = (0..<5).map { _ in Int.random(in: 1...97, using: &rng) }
            let (reports, lost) = Self.reports(text, splits: splits)
            #expect(!lost, "seed \(seed)")
            #expect(reports == expected, "seed \(seed)")
            if reports != expected { return }
        }
    }
}
