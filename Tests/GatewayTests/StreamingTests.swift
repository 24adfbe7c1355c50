import Foundation
import Testing

/// Live: bodies stream both ways with back-pressure instead of being held in the gateway's memory.
@Suite(.serialized) struct StreamingTests {
    static let routes = catchAllRoute

    @Test func largeDownloadToAStalledReaderDoesNotGrowTheGateway() throws {
        let up = try TestUpstream()
        defer { up.stop() }
        let gw = try GatewayProcess(
            yaml: testConfig(upstreams: ["app": [up.port]], routes: Self.routes, server: "  request_timeout: 60s"))
        defer { gw.stop() }
        _ = try request(port: gw.port, "GET", "/warm")
        let baseline = gw.rss
        let total = 200 * 1024 * 1024
        let c = try RawConnection(port: gw.port, timeout: 30, receiveBuffer: 64 * 1024)
        try c.send("GET /download/\(total) HTTP/1.1\r\nHost: gw\r\n\r\n")
        // Read the head and the first MiB, then stop reading until the upstream stops producing.
        var head = [UInt8]()
        var byte = [UInt8](repeating: 0, count: 1)
        while !head.suffix(4).elementsEqual([13, 10, 13, 10]) {
            #expect(try c.drainInto(&byte) == 1)
            head += byte
        }
        #expect(String(decoding: head, as: UTF8.self).hasPrefix("HTTP/1.1 200"))
        #expect(try c.drain(count: 1024 * 1024) == 1024 * 1024)
        var last = -1
        var stable = 0
        try waitUntil(seconds: 20) {
            let now = up.bytesWritten.load(ordering: .relaxed)
            stable = now == last ? stable + 1 : 0
            last = now
            return stable >= 40  // unchanged for 40 polls: the upstream is blocked by back-pressure
        }
        let produced = up.bytesWritten.load(ordering: .relaxed)
        let grown = gw.rss - baseline
        print("stalled reader: upstream produced \(produced) bytes, gateway RSS grew \(grown) bytes")
        #expect(produced < total / 4, "upstream produced \(produced) bytes while the client was stalled")
        #expect(grown < 8 * 1024 * 1024, "gateway RSS grew by \(grown) bytes")
        // Resume: every byte arrives.
        #expect(try c.drain(count: total - 1024 * 1024) == total - 1024 * 1024)
    }

    /// A response without Content-Length (server-sent events) is relayed as each event is written: every event
    /// is read before the next is written, so one held behind a buffer or a timer would time the read out.
    @Test func serverSentEventsReachTheClientAsTheUpstreamWritesThem() throws {
        let up = try TestUpstream()
        defer { up.stop() }
        let gw = try GatewayProcess(
            yaml: testConfig(upstreams: ["app": [up.port]], routes: Self.routes, server: "  request_timeout: 60s"))
        defer { gw.stop() }
        let c = try RawConnection(port: gw.port, timeout: 10)
        try c.send("GET /events/feed HTTP/1.1\r\nHost: gw\r\nAccept: text/event-stream\r\n\r\n")
        let head = try #require(try c.readHead())
        #expect(head.status == 200)
        #expect(head.header("Content-Type") == "text/event-stream")
        #expect(head.header("Transfer-Encoding") == "chunked")
        var latencies: [Double] = []
        for i in 1...20 {
            let event = "id: \(i)\ndata: tick \(i)\n\n"
            let written = Date()
            #expect(up.emit("feed", event))
            var received: [UInt8] = []
            while received.count < event.utf8.count { received += try c.readChunkData() }
            latencies.append(Date().timeIntervalSince(written) * 1000)
            #expect(String(decoding: received, as: UTF8.self) == event)
        }
        up.emit("feed", nil)
        #expect(try c.readChunkData().isEmpty)
        let sorted = latencies.sorted()
        print("SSE event latency through the gateway (ms): median \(sorted[sorted.count / 2]), max \(sorted.last!)")
        // Within tens of milliseconds (the median, so one scheduling hiccup on a busy machine does not decide it).
        #expect(sorted[sorted.count / 2] < 50)
    }

    @Test func largeUploadStreamsWithBackPressure() throws {
        let up = try TestUpstream()
        defer { up.stop() }
        let gw = try GatewayProcess(
            yaml: testConfig(upstreams: ["app": [up.port]], routes: Self.routes, server: "  max_body_bytes: 64MiB"))
        defer { gw.stop() }
        let size = 48 * 1024 * 1024
        let c = try RawConnection(port: gw.port, timeout: 30)
        try c.send("POST /up HTTP/1.1\r\nHost: gw\r\nContent-Length: \(size)\r\n\r\n")
        let chunk = [UInt8](repeating: 0x62, count: 1024 * 1024)
        for _ in 0..<48 { try c.send(chunk) }
        let r = try #require(try c.readResponse())
        #expect(r.status == 200)
        #expect(r.json["body_bytes"] as? Int == size)
        #expect(gw.rss < 64 * 1024 * 1024, "gateway RSS \(gw.rss) after a 48 MiB upload")
    }
}
