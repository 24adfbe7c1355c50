import NIOCore

/// One command and the promise its reply completes.
struct RedisCommand {
    var args: [[UInt8]]
    var promise: EventLoopPromise<RedisReply>
}

/// The Redis connection's handler: encodes commands (hiredis), keeps a FIFO of promises for pipelining,
/// decodes replies (a hiredis reader fed from the channel) and completes the promises in order. Every
/// outstanding promise fails when the channel goes inactive. In subscriber mode, messages nobody asked for
/// go to `onPush`.
final class RedisCommandHandler: ChannelDuplexHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = RedisCommand
    typealias OutboundOut = ByteBuffer

    private let reader = RESPReader()
    private var pending = CircularBuffer<EventLoopPromise<RedisReply>>()
    private let onPush: ((RedisReply) -> Void)?

    init(onPush: ((RedisReply) -> Void)? = nil) {
        self.onPush = onPush
    }

    /// The channel went inactive (or the handler left it): a command written now could never be answered.
    private var closed = false

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        let command = unwrapOutboundIn(data)
        if closed {
            command.promise.fail(RedisError.connectionClosed("the connection to Redis is closing"))
            promise?.fail(ChannelError.ioOnClosedChannel)
            return
        }
        var buffer = context.channel.allocator.buffer(capacity: 64)
        RESPEncoder.encode(command.args, into: &buffer)
        pending.append(command.promise)
        context.write(wrapOutboundOut(buffer), promise: promise)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        do {
            try reader.feed(unwrapInboundIn(data))
            while let reply = try reader.next() {
                if let onPush, Self.isPush(reply) {
                    onPush(reply)
                    continue
                }
                guard let promise = pending.popFirst() else {
                    // A reply nobody asked for: the stream can no longer be trusted.
                    context.close(promise: nil)
                    return
                }
                if case .error(let message) = reply {
                    promise.fail(RedisError.server(message))
                } else {
                    promise.succeed(reply)
                }
            }
        } catch {
            failAll(error)
            context.close(promise: nil)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        closed = true
        failAll(RedisError.connectionClosed("the connection to Redis closed"))
        context.fireChannelInactive()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        closed = true
        failAll(RedisError.connectionClosed("the connection to Redis closed"))
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        closed = true
        failAll(RedisError.connectionClosed("\(error)"))
        context.close(promise: nil)
    }

    private func failAll(_ error: Error) {
        while let p = pending.popFirst() { p.fail(error) }
    }

    /// `message`/`pmessage` arrays from a subscription.
    static func isPush(_ reply: RedisReply) -> Bool {
        guard case .array(let items) = reply, let kind = items.first?.string else { return false }
        return kind == "message" || kind == "pmessage"
    }

}

@available(*, unavailable)
extension RedisCommandHandler: Sendable {}
