import Foundation
import NIOCore
import NIOEmbedded
import Testing

@testable import Gateway

/// The admin listener's timeouts on an `EmbeddedChannel` (its clock advanced by hand): idle connections close,
/// a request that does not arrive whole in time gets 408, and a request being handled has no timer.
@Suite struct AdminConnectionGuardTests {
    static func channel() throws -> EmbeddedChannel {
        let channel = EmbeddedChannel()
        try channel.pipeline.syncOperations.addHandler(
            AdminConnectionGuard(idleTimeout: .seconds(60), requestTimeout: .seconds(10)))
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
        return channel
    }

    static func bytes(_ text: String) -> ByteBuffer { ByteBuffer(string: text) }

    static func written(_ channel: EmbeddedChannel) throws -> String {
        var text = ""
        while let out = try channel.readOutbound(as: IOData.self) {
            if case .byteBuffer(let b) = out { text += String(buffer: b) }
        }
        return text
    }

    @Test func anIdleConnectionIsClosedAfterTheIdleTimeout() throws {
        let channel = try Self.channel()
        channel.embeddedEventLoop.advanceTime(by: .seconds(59))
        #expect(channel.isActive)
        channel.embeddedEventLoop.advanceTime(by: .seconds(1))
        #expect(!channel.isActive)
        #expect(try Self.written(channel).isEmpty)
    }

    @Test func aSlowRequestGets408FromItsFirstByte() throws {
        let channel = try Self.channel()
        channel.embeddedEventLoop.advanceTime(by: .seconds(50))
        try channel.writeInbound(Self.bytes("GET /healthz HTTP/1.1\r\n"))
        #expect(try channel.readInbound(as: ByteBuffer.self) != nil, "bytes pass through")
        channel.embeddedEventLoop.advanceTime(by: .seconds(9))
        try channel.writeInbound(Self.bytes("Host: x\r\n"))
        #expect(channel.isActive, "the idle timer stopped at the first byte")
        channel.embeddedEventLoop.advanceTime(by: .seconds(1))
        let response = try Self.written(channel)
        #expect(response.hasPrefix("HTTP/1.1 408 "))
        #expect(response.contains("\"code\":\"request_timeout\""))
        #expect(response.contains("Connection: close"))
        #expect(!channel.isActive)
    }

    @Test func aRequestBeingHandledHasNoTimerAndTheNextStartsIdle() throws {
        let channel = try Self.channel()
        try channel.writeInbound(Self.bytes("POST /admin/reload HTTP/1.1\r\nHost: x\r\n\r\n"))
        channel.pipeline.triggerUserOutboundEvent(AdminExchangeEvent.requestRead, promise: nil)
        channel.embeddedEventLoop.advanceTime(by: .seconds(120))
        #expect(channel.isActive, "a slow handler (a reload) is not the client's fault")
        channel.pipeline.triggerUserOutboundEvent(AdminExchangeEvent.responded, promise: nil)
        channel.embeddedEventLoop.advanceTime(by: .seconds(59))
        #expect(channel.isActive)
        channel.embeddedEventLoop.advanceTime(by: .seconds(1))
        #expect(!channel.isActive)
    }

    @Test func bytesOfTheNextRequestDuringHandlingStartItsTimerAtTheResponse() throws {
        let channel = try Self.channel()
        try channel.writeInbound(Self.bytes("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"))
        channel.pipeline.triggerUserOutboundEvent(AdminExchangeEvent.requestRead, promise: nil)
        try channel.writeInbound(Self.bytes("GET /hea"))
        channel.embeddedEventLoop.advanceTime(by: .seconds(30))
        channel.pipeline.triggerUserOutboundEvent(AdminExchangeEvent.responded, promise: nil)
        channel.embeddedEventLoop.advanceTime(by: .seconds(10))
        #expect(try Self.written(channel).hasPrefix("HTTP/1.1 408 "))
        #expect(!channel.isActive)
    }

    /// Bytes of a pipelined request read with the one before cannot be told apart without parsing: that
    /// request is bounded by the idle timeout instead (closed without a 408).
    @Test func aPipelinedPartialRequestIsBoundedByTheIdleTimeout() throws {
        let channel = try Self.channel()
        try channel.writeInbound(Self.bytes("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\nGET /hea"))
        channel.pipeline.triggerUserOutboundEvent(AdminExchangeEvent.requestRead, promise: nil)
        channel.pipeline.triggerUserOutboundEvent(AdminExchangeEvent.responded, promise: nil)
        channel.embeddedEventLoop.advanceTime(by: .seconds(60))
        #expect(!channel.isActive)
    }

    /// NIO's pipelining hands the next buffered request over while the previous end is written, so that
    /// request's `requestRead` follows the `responded` at once: it is handled with no timer, then the
    /// connection is idle.
    @Test func aPipelinedRequestHandedOverAtTheResponseIsHandledWithoutATimer() throws {
        let channel = try Self.channel()
        try channel.writeInbound(Self.bytes("GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n"))
        channel.pipeline.triggerUserOutboundEvent(AdminExchangeEvent.requestRead, promise: nil)
        try channel.writeInbound(Self.bytes("GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n"))
        channel.pipeline.triggerUserOutboundEvent(AdminExchangeEvent.responded, promise: nil)
        channel.pipeline.triggerUserOutboundEvent(AdminExchangeEvent.requestRead, promise: nil)
        channel.embeddedEventLoop.advanceTime(by: .seconds(120))
        #expect(channel.isActive, "the second request is being handled: no 408")
        #expect(try Self.written(channel).isEmpty)
        channel.pipeline.triggerUserOutboundEvent(AdminExchangeEvent.responded, promise: nil)
        channel.embeddedEventLoop.advanceTime(by: .seconds(60))
        #expect(!channel.isActive)
        #expect(try Self.written(channel).isEmpty, "closed for idleness, without a 408")
    }

    @Test func nothingIsReadAfterA408() throws {
        let channel = try Self.channel()
        try channel.writeInbound(Self.bytes("GET /"))
        _ = try channel.readInbound(as: ByteBuffer.self)
        channel.embeddedEventLoop.advanceTime(by: .seconds(10))
        #expect(try Self.written(channel).hasPrefix("HTTP/1.1 408 "))
        try? channel.writeInbound(Self.bytes("healthz HTTP/1.1\r\n\r\n"))
        #expect(try channel.readInbound(as: ByteBuffer.self) == nil)
    }
}
