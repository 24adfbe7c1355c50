import HTTPWire
import NIOCore

/// What a PROXY protocol header said about the connection, passed down the pipeline as a user event before the
/// first byte of the client's own stream.
struct ProxyOrigin: Sendable {
    var header: ProxyProtocol.Header
}

/// First in the proxy listener's pipeline when `server.proxy_protocol` is on (in front of TLS, which the
/// header precedes): reads the PROXY v1 or v2 header, announces it as a ``ProxyOrigin`` event, passes on the
/// bytes after it and leaves the pipeline. Bytes that are not a header close the connection at once, silently;
/// a header that does not arrive is ended by the ``ProxyHandler``'s prelude deadline (`header_timeout`).
/// Peers outside `trusted_proxies` never get here: the listener closes them on accept.
final class ProxyProtocolHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer

    private let metrics: LoopMetrics
    private var buffered: ByteBuffer?
    private var done = false

    init(metrics: LoopMetrics) {
        self.metrics = metrics
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if done {
            context.fireChannelRead(data)
            return
        }
        var input = unwrapInboundIn(data)
        if var held = buffered {
            held.writeBuffer(&input)
            input = held
        }
        let outcome = input.withUnsafeReadableBytes { ProxyProtocol.parse($0) }
        switch outcome {
        case .needMore:
            buffered = input
        case .invalid:
            buffered = nil
            done = true
            metrics.connectionsRefused[ProxyProtocolHandler.refusedHeader, default: 0] += 1
            context.close(promise: nil)
        case .header(let header, let consumed):
            buffered = nil
            done = true
            input.moveReaderIndex(forwardBy: consumed)
            context.fireUserInboundEventTriggered(ProxyOrigin(header: header))
            if input.readableBytes > 0 { context.fireChannelRead(wrapInboundOut(input)) }
            context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        if done { context.fireChannelReadComplete() }
    }

    /// `gatehouse_connections_refused_total` reasons.
    static let refusedHeader = "proxy_protocol"
    static let refusedPeer = "untrusted_peer"
}
