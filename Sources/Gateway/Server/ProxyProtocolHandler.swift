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
    private enum State {
        /// Bytes of an unfinished header, held until it completes.
        case reading(ByteBuffer?)
        /// Not a header: the connection is closing, and nothing more is passed on.
        case refused
        /// The header was read; what follows is the client's stream (the handler is leaving the pipeline).
        case passing
    }
    private var state = State.reading(nil)

    init(metrics: LoopMetrics) {
        self.metrics = metrics
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var input = unwrapInboundIn(data)
        switch state {
        case .passing:
            context.fireChannelRead(data)
            return
        case .refused:
            return
        case .reading(var held?):
            held.writeBuffer(&input)
            input = held
        case .reading(nil):
            break
        }
        switch input.withUnsafeReadableBytes({ ProxyProtocol.parse($0) }) {
        case .needMore:
            state = .reading(input)
        case .invalid:
            state = .refused
            metrics.connectionsRefused[ProxyProtocolHandler.refusedHeader, default: 0] += 1
            context.close(promise: nil)
        case .header(let header, let consumed):
            state = .passing
            input.moveReaderIndex(forwardBy: consumed)
            context.fireUserInboundEventTriggered(ProxyOrigin(header: header))
            if input.readableBytes > 0 { context.fireChannelRead(wrapInboundOut(input)) }
            context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        if case .passing = state { context.fireChannelReadComplete() }
    }

    /// `gatehouse_connections_refused_total` reasons.
    static let refusedHeader = "proxy_protocol"
    static let refusedPeer = "untrusted_peer"
}
