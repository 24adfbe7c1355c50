import Foundation
import Logging
import NIOCore
import NIOEmbedded
import NIOHTTP1
import Policy
import Testing

@testable import Gateway

/// The proxy handler on an `EmbeddedChannel`, in the pipeline `GatewayServer.bindProxy` builds, with a
/// ``LoopState`` from a config parsed from YAML. Only cases that need no upstream connection: the embedded loop
/// cannot open sockets, so every target is either unrouted or marked unhealthy.
@Suite struct ProxyHandlerTests {
    static let yaml = """
        server:
          listen: 127.0.0.1:0
          threads: 1
          max_body_bytes: 1KiB
        upstreams:
          users:
            targets: [127.0.0.1:9]
        routes:
          - name: users
            match: {path_prefix: /api/users}
            upstream: users
            auth: none
        """

    /// One client connection: the channel, its loop state and its handler.
    final class Connection {
        let channel: EmbeddedChannel
        let loop: LoopState
        let handler: ProxyHandler

        init(yaml: String = ProxyHandlerTests.yaml, healthy: Bool = false) throws {
            let config = try ConfigLoader(readFile: { $0 == "gw.yaml" ? yaml : nil }).load(path: "gw.yaml")
            let snapshot = try RuntimeSnapshot(config: config, tenants: TenantDirectory(seeds: config.tenants))
            for (_, upstream) in snapshot.upstreams.upstreams {
                for target in upstream.targets { target.health.set(healthy) }
            }
            channel = EmbeddedChannel()
            let limits = LimitSettings(keys: LimitKeys(prefix: "gh"), fallback: MemoryLimits(), failOpen: true)
            loop = LoopState(
                eventLoop: channel.embeddedEventLoop, loopCount: 1, snapshot: snapshot, logger: Logger(label: "test"),
                limiterBackend: .memory(MemoryLimits()), limits: limits, audit: nil, clock: .fixed(1_800_000_000))
            handler = ProxyHandler(loop: loop)
            // As GatewayServer.bindProxy builds it: the proxy handler alone, parsing its input itself.
            try channel.pipeline.syncOperations.addHandler(handler)
            try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 40_000)).wait()
        }

        func send(_ text: String) throws {
            try channel.writeInbound(ByteBuffer(string: text))
            channel.embeddedEventLoop.run()
        }

        /// Everything written to the client so far.
        func output() throws -> String {
            var text = ""
            while let buffer = try channel.readOutbound(as: ByteBuffer.self) {
                text += String(buffer: buffer)
            }
            return text
        }

        func responses() throws -> [Response] { Response.parse(try output()) }

        var isOpen: Bool { channel.isActive }
    }

    /// One HTTP/1.1 response with a `Content-Length` body, as written to the client.
    struct Response {
        var status: Int
        var headers: [(String, String)]
        var body: String

        func header(_ name: String) -> String? {
            headers.first { $0.0.lowercased() == name.lowercased() }?.1
        }

        var closes: Bool { header("Connection")?.lowercased() == "close" }

        static func parse(_ text: String) -> [Response] {
            var rest = Substring(text)
            var out: [Response] = []
            while let headEnd = rest.range(of: "\r\n\r\n") {
                let lines = rest[..<headEnd.lowerBound].components(separatedBy: "\r\n")
                let statusLine = lines[0].split(separator: " ")
                guard statusLine.count >= 2, let status = Int(statusLine[1]) else { break }
                let headers = lines.dropFirst().map { line -> (String, String) in
                    let colon = line.firstIndex(of: ":")!
                    return (String(line[..<colon]), line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces))
                }
                var response = Response(status: status, headers: headers, body: "")
                rest = rest[headEnd.upperBound...]
                let length = Int(response.header("Content-Length") ?? "0") ?? 0
                response.body = String(rest.prefix(length))
                rest = rest.dropFirst(length)
                out.append(response)
            }
            return out
        }
    }

    // MARK: Answers that need no upstream

    @Test func unknownRouteIs404WithRequestIDAndKeepAlive() throws {
        let c = try Connection()
        try c.send("GET /nope HTTP/1.1\r\nHost: gw.test\r\nX-Request-ID: client-1\r\n\r\n")
        let first = try c.responses()
        #expect(first.count == 1)
        #expect(first.first?.status == 404)
        #expect(first.first?.header("X-Request-ID") == "client-1")
        #expect(first.first?.header("Content-Type") == "application/problem+json")
        #expect(first.first?.body.contains("\"route_not_found\"") == true)
        #expect(first.first?.closes == false)
        #expect(c.isOpen)
        #expect(c.loop.metrics.exchangesInFlight == 0)

        // Keep-alive: the next request on the same connection is answered too, with an id of its own.
        try c.send("GET /also-nope HTTP/1.1\r\nHost: gw.test\r\n\r\n")
        let second = try c.responses()
        #expect(second.first?.status == 404)
        let id = try #require(second.first?.header("X-Request-ID"))
        #expect(!id.isEmpty && id != "client-1")
        #expect(c.isOpen)
        #expect(c.loop.metrics.requests[.init(route: "-", status: 404, decision: "deny", code: "route_not_found")] == 2)
    }

    @Test func malformedRequestIs400AndCloses() throws {
        let c = try Connection()
        try c.send("GET / HTTP/1.1\r\nHost gw.test\r\n\r\n")
        let responses = try c.responses()
        #expect(responses.map(\.status) == [400])
        #expect(responses.first?.closes == true)
        #expect(responses.first?.body.contains("\"bad_request\"") == true)
        #expect(!c.isOpen)
        #expect(c.loop.metrics.exchangesInFlight == 0)
    }

    @Test func routeWithoutHealthyUpstreamIs503() throws {
        let c = try Connection(healthy: false)
        try c.send("GET /api/users/7 HTTP/1.1\r\nHost: gw.test\r\nX-Request-ID: r-503\r\n\r\n")
        let responses = try c.responses()
        #expect(responses.map(\.status) == [503])
        #expect(responses.first?.header("X-Request-ID") == "r-503")
        #expect(responses.first?.body.contains("\"upstream_unavailable\"") == true)
        #expect(responses.first?.closes == false)
        #expect(c.isOpen)
        #expect(c.loop.metrics.exchangesInFlight == 0)
        #expect(c.loop.groups["users"]?.pools.first?.openCount == 0)
    }

    @Test func pipelinedRequestsAreAnsweredInOrder() throws {
        let c = try Connection()
        try c.send(
            "GET /nope HTTP/1.1\r\nHost: gw.test\r\nX-Request-ID: p-1\r\n\r\n"
                + "GET /api/users HTTP/1.1\r\nHost: gw.test\r\nX-Request-ID: p-2\r\n\r\n"
                + "DELETE /nope/too HTTP/1.1\r\nHost: gw.test\r\nX-Request-ID: p-3\r\n\r\n")
        let responses = try c.responses()
        #expect(responses.map(\.status) == [404, 503, 404])
        #expect(responses.map { $0.header("X-Request-ID") } == ["p-1", "p-2", "p-3"])
        #expect(responses.allSatisfy { !$0.closes })
        #expect(c.isOpen)
    }

    /// The penetration case without an upstream: a good request with malformed bytes behind it in the
    /// same write. The good one is answered as it went, under its own id; then the 400 under a new id; then close.
    @Test func malformedBytesBehindAGoodRequestEndOnlyThemselves() throws {
        let c = try Connection()
        try c.send("DELETE /api/orders/42 HTTP/1.1\r\nHost: gw.test\r\nX-Request-ID: good-1\r\n\r\nX\r\n\r\n")
        let responses = try c.responses()
        #expect(responses.map(\.status) == [404, 400])
        #expect(responses.first?.header("X-Request-ID") == "good-1")
        #expect(responses.last?.header("X-Request-ID") != "good-1")
        #expect(responses.last?.closes == true)
        #expect(!c.isOpen)
        #expect(c.loop.metrics.exchangesInFlight == 0)
    }

    @Test func denialBeforeTheBodyClosesTheConnection() throws {
        let c = try Connection()
        try c.send("POST /nope HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 100\r\n\r\nabc")
        let responses = try c.responses()
        #expect(responses.map(\.status) == [404])
        // The body was not read: the connection cannot carry another request.
        #expect(responses.first?.closes == true)
        #expect(c.loop.metrics.exchangesInFlight == 0)
    }

    // MARK: Timeouts (the sweep is called with a deadline; nothing sleeps)

    @Test func dribbledHeadTimesOutWith408() throws {
        let c = try Connection()
        let start = NIODeadline.now()
        for byte in "GET /api/users HTTP/1.1\r\nHost: gw.test\r\n".utf8 {
            try c.channel.writeInbound(ByteBuffer(bytes: [byte]))
        }
        c.handler.checkTimeouts(now: start + .seconds(5))
        #expect(try c.output().isEmpty)
        #expect(c.isOpen)
        c.handler.checkTimeouts(now: start + .seconds(11))  // past the 10 s header timeout from the first byte
        c.channel.embeddedEventLoop.run()
        let responses = try c.responses()
        #expect(responses.map(\.status) == [408])
        #expect(responses.first?.closes == true)
        #expect(responses.first?.body.contains("\"request_timeout\"") == true)
        #expect(!c.isOpen)
        #expect(c.loop.metrics.exchangesInFlight == 0)
    }

    @Test func idleKeepAliveConnectionIsClosedByTheIdleTimeoutOnly() throws {
        let c = try Connection()
        try c.send("GET /nope HTTP/1.1\r\nHost: gw.test\r\n\r\n")
        #expect(try c.responses().count == 1)
        let after = NIODeadline.now()
        c.handler.checkTimeouts(now: after + .seconds(11))  // no request started: no header timeout
        #expect(c.isOpen)
        c.handler.checkTimeouts(now: after + .seconds(61))
        #expect(try c.output().isEmpty)  // closed without a word
        #expect(!c.isOpen)
    }

    @Test func drainClosesAnIdleConnection() throws {
        let c = try Connection()
        #expect(c.loop.openConnections == 1)
        c.loop.beginDrain()
        #expect(!c.isOpen)
        #expect(c.loop.openConnections == 0)
    }

    // MARK: Exchanges held open by a chunked body (the body is held until enough arrives to choose a target)

    static let chunkedHead = "POST /api/users HTTP/1.1\r\nHost: gw.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"

    @Test func heldChunkedBodyThatNeverEndsTimesOutWith408() throws {
        let c = try Connection()
        let start = NIODeadline.now()
        try c.send(Self.chunkedHead)
        #expect(try c.output().isEmpty)
        #expect(c.loop.metrics.exchangesInFlight == 1)
        c.handler.checkTimeouts(now: start + .seconds(29))
        #expect(try c.output().isEmpty)
        c.handler.checkTimeouts(now: start + .seconds(31))  // past the 30 s request timeout
        c.channel.embeddedEventLoop.run()
        let responses = try c.responses()
        #expect(responses.map(\.status) == [408])
        #expect(responses.first?.closes == true)
        #expect(!c.isOpen)
        #expect(c.loop.metrics.exchangesInFlight == 0)
        #expect(c.loop.metrics.requests[.init(route: "users", status: 408, decision: "deny", code: "request_timeout")] == 1)
    }

    /// A client that hangs up in the middle of its body left: 499 `client_closed` (issue 11 item 3), although
    /// the decoder before the proxy fails with `invalidEOFState` on its last call as the channel goes inactive.
    @Test func clientHangingUpDuringTheBodyIsRecordedAs499() throws {
        let c = try Connection()
        try c.send(Self.chunkedHead)
        #expect(c.loop.metrics.exchangesInFlight == 1)
        try c.channel.close().wait()
        c.channel.embeddedEventLoop.run()
        #expect(try c.output().isEmpty)
        #expect(c.loop.metrics.exchangesInFlight == 0)
        #expect(c.loop.metrics.requests[.init(route: "users", status: 499, decision: "allow", code: "client_closed")] == 1)
        #expect(c.loop.metrics.requests[.init(route: "users", status: 400, decision: "deny", code: "bad_request")] == nil)
        #expect(c.loop.openConnections == 0)
    }

    /// The hang-up mid-body ends the exchange once and the connection leaves.
    @Test func clientHangingUpDuringTheBodyEndsTheExchangeOnce() throws {
        let c = try Connection()
        try c.send(Self.chunkedHead)
        try c.channel.close().wait()
        c.channel.embeddedEventLoop.run()
        #expect(c.loop.metrics.exchangesInFlight == 0)
        #expect(c.loop.metrics.requests.values.reduce(0, +) == 1)
        #expect(c.loop.openConnections == 0)
    }

    /// The same path before any head: a client that sends part of a head and leaves had no exchange, and none is
    /// counted.
    @Test func clientHangingUpDuringTheHeadCountsNoExchange() throws {
        let c = try Connection()
        try c.send("GET /api/users HTTP/1.1\r\nHost: gw")
        try c.channel.close().wait()
        c.channel.embeddedEventLoop.run()
        #expect(c.loop.metrics.requests.isEmpty)
        #expect(c.loop.metrics.exchangesInFlight == 0)
    }

    @Test func heldChunkedBodyEndingWithoutAHealthyTargetIs503() throws {
        let c = try Connection()
        try c.send(Self.chunkedHead)
        try c.send("0\r\n\r\n")
        let responses = try c.responses()
        #expect(responses.map(\.status) == [503])
        #expect(responses.first?.closes == false)  // the body was read whole
        #expect(c.isOpen)
        #expect(c.loop.metrics.exchangesInFlight == 0)
    }

    @Test func chunkedBodyOverTheLimitIs413AndCloses() throws {
        let c = try Connection()
        try c.send(Self.chunkedHead)
        let chunk = String(repeating: "a", count: 1100)  // max_body_bytes: 1KiB
        try c.send(String(chunk.utf8.count, radix: 16) + "\r\n" + chunk + "\r\n")
        let responses = try c.responses()
        #expect(responses.map(\.status) == [413])
        #expect(responses.first?.closes == true)
        #expect(!c.isOpen)
        #expect(c.loop.metrics.exchangesInFlight == 0)
    }

    // MARK: A client that reads nothing

    @Test func clientThatAcceptsNoBytesIsClosedAfterTheSendTimeout() throws {
        let c = try Connection()
        try c.send("GET /nope HTTP/1.1\r\nHost: gw.test\r\n\r\n")
        #expect(try c.responses().count == 1)
        let start = NIODeadline.now()
        c.channel.isWritable = false
        c.channel.pipeline.fireChannelWritabilityChanged()
        c.handler.checkTimeouts(now: start + .seconds(59))
        #expect(c.isOpen)
        c.handler.checkTimeouts(now: start + .seconds(61))  // send_timeout defaults to 60 s (the idle timeout too)
        #expect(!c.isOpen)
    }

    @Test func clientReadingAgainIsNotClosedBySendTimeout() throws {
        let c = try Connection(yaml: Self.yaml.replacingOccurrences(of: "  threads: 1", with: "  threads: 1\n  idle_timeout: 300s"))
        try c.send("GET /nope HTTP/1.1\r\nHost: gw.test\r\n\r\n")
        let start = NIODeadline.now()
        c.channel.isWritable = false
        c.channel.pipeline.fireChannelWritabilityChanged()
        c.channel.isWritable = true
        c.channel.pipeline.fireChannelWritabilityChanged()
        c.handler.checkTimeouts(now: start + .seconds(61))
        #expect(c.isOpen)
    }

    // MARK: Upgrade

    /// SPEC: `Upgrade: websocket` on a route without `websocket: true` (none has it yet) is 400 `bad_request`;
    /// nothing after it is parsed, so the connection closes.
    @Test func deniedUpgradeRequestClosesTheConnection() throws {
        let c = try Connection()
        try c.send("GET /nope HTTP/1.1\r\nHost: gw.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nraw bytes")
        let responses = try c.responses()
        #expect(responses.map(\.status) == [400])
        #expect(responses.first?.closes == true)
        #expect(!c.isOpen)
    }

    /// Issue 11 item 4: a chunk whose declared size already exceeds the body limit gets 413 at once.
    @Test func chunkDeclaredOverTheLimitIs413AtOnce() throws {
        let c = try Connection()
        try c.send(
            "POST /api/users HTTP/1.1\r\nHost: gw.test\r\nTransfer-Encoding: chunked\r\n\r\n100000\r\nabc")
        let responses = try c.responses()
        #expect(responses.map(\.status) == [413])
    }
}
