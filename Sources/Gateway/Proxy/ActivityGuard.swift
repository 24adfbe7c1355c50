import NIOCore

/// Sits before the HTTP decoder and tells the ``ProxyHandler`` when bytes of a new request start arriving,
/// so a slow request head is timed from its first byte (slowloris) while an idle keep-alive connection is not.
final class ActivityGuard: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    unowned let proxy: ProxyHandler

    init(proxy: ProxyHandler) { self.proxy = proxy }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        proxy.bytesArrived()
        context.fireChannelRead(data)
    }
}

@available(*, unavailable)
extension ActivityGuard: Sendable {}
