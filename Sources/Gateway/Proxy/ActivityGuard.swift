import NIOCore

/// Sits before the HTTP decoder and sees the raw bytes: tells the ``ProxyHandler`` when bytes of a new request
/// start arriving (a slow request head is timed from its first byte, an idle keep-alive connection is not),
/// drops input once the connection is closing, and
/// runs the ``RequestFramingMirror`` so a chunk that declares more than the body limit is refused at once.
final class ActivityGuard: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    unowned let proxy: ProxyHandler
    private var mirror = RequestFramingMirror()

    init(proxy: ProxyHandler) { self.proxy = proxy }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        // Closing (lingering after the last response): input is dropped here, before the decoder, which would
        // otherwise keep it (it parses nothing after an upgrade request or a framing error).
        if proxy.machine.isClosing { return }
        proxy.bytesArrived()
        // Scan first (no reference kept while the decoder works on the buffer); report once the decoder has
        // delivered this read's request heads, so the report finds its exchange.
        var declared: [(request: Int, total: Int)] = []
        if !mirror.isLost {
            unwrapInboundIn(data).withUnsafeReadableBytes { bytes in
                mirror.scan(bytes) { declared.append(($0, $1)) }
            }
        }
        context.fireChannelRead(data)
        for d in declared { proxy.chunkDeclared(request: d.request, total: d.total) }
    }
}

@available(*, unavailable)
extension ActivityGuard: Sendable {}
