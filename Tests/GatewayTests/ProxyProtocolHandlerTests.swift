import NIOCore
import NIOEmbedded
import Testing

@testable import Gateway

/// The PROXY header reader on an `EmbeddedChannel`: what it passes on, and when it closes.
@Suite struct ProxyProtocolHandlerTests {
    /// Records the events and bytes that pass the handler.
    final class Recorder: ChannelInboundHandler {
        typealias InboundIn = ByteBuffer
        var origins: [ProxyOrigin] = []
        var bytes = ""
        var eventBeforeBytes = true

        func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
            if let origin = event as? ProxyOrigin {
                if !bytes.isEmpty { eventBeforeBytes = false }
                origins.append(origin)
            }
        }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            bytes += String(buffer: unwrapInboundIn(data))
        }
    }

    static func channel() throws -> (EmbeddedChannel, Recorder, LoopMetrics) {
        let metrics = LoopMetrics()
        let recorder = Recorder()
        let channel = EmbeddedChannel()
        try channel.pipeline.syncOperations.addHandler(ProxyProtocolHandler(metrics: metrics))
        try channel.pipeline.syncOperations.addHandler(recorder)
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
        return (channel, recorder, metrics)
    }

    @Test func aHeaderInPiecesIsAnnouncedThenTheRestPassesAndTheHandlerLeaves() throws {
        let (channel, recorder, metrics) = try Self.channel()
        let text = "PROXY TCP4 198.51.100.7 10.0.0.1 5555 443\r\nGET / HTTP/1.1\r\n"
        for piece in [text.prefix(3), text.dropFirst(3).prefix(20), text.dropFirst(23).prefix(22), text.dropFirst(45)] {
            try channel.writeInbound(ByteBuffer(string: String(piece)))
        }
        #expect(recorder.origins.map(\.header.source?.ip) == ["198.51.100.7"])
        #expect(recorder.eventBeforeBytes)
        #expect(recorder.bytes == "GET / HTTP/1.1\r\n")
        #expect(throws: (any Error).self) { try channel.pipeline.syncOperations.handler(type: ProxyProtocolHandler.self) }
        // Later bytes that look like a header are the client's, not the balancer's.
        try channel.writeInbound(ByteBuffer(string: "PROXY TCP4 1.2.3.4 1.2.3.4 1 1\r\n"))
        #expect(recorder.origins.count == 1)
        #expect(recorder.bytes.hasSuffix("PROXY TCP4 1.2.3.4 1.2.3.4 1 1\r\n"))
        #expect(channel.isActive)
        #expect(metrics.connectionsRefused.isEmpty)
    }

    @Test func aHeaderAloneLeavesNothingToPass() throws {
        let (channel, recorder, _) = try Self.channel()
        try channel.writeInbound(ByteBuffer(string: "PROXY UNKNOWN\r\n"))
        #expect(recorder.origins.count == 1 && recorder.origins[0].header.source == nil)
        #expect(recorder.bytes.isEmpty)
    }

    @Test func otherBytesCloseTheConnectionUnanswered() throws {
        for text in ["GET / HTTP/1.1\r\n", "PROXY TCP4 bad\r\n", "\u{16}\u{03}\u{01}"] {
            let (channel, recorder, metrics) = try Self.channel()
            _ = try? channel.writeInbound(ByteBuffer(string: text))
            #expect(!channel.isActive, "\(text.debugDescription)")
            #expect(recorder.origins.isEmpty && recorder.bytes.isEmpty)
            #expect(try channel.readOutbound(as: ByteBuffer.self) == nil)
            #expect(metrics.connectionsRefused[ProxyProtocolHandler.refusedHeader] == 1)
        }
    }
}
