import NIOCore
import Policy

/// What ``AdminHandler`` tells the guard in front of the admin pipeline (outbound user events).
enum AdminExchangeEvent {
    /// A whole request was read: its timer stops while it is handled.
    case requestRead
    /// Its response was written: the connection is idle again (or the next request is already arriving).
    case responded
}

/// The admin listener's client timeouts, the proxy listener's rules: an idle connection is closed after
/// `idle_timeout`, and a request must arrive whole within the header timeout (capped by `request_timeout`)
/// from its first byte, else 408 `request_timeout` and close. Sits before the HTTP codec, on raw bytes.
final class AdminConnectionGuard: ChannelDuplexHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    typealias OutboundIn = IOData
    typealias OutboundOut = IOData

    private enum State {
        /// Between requests.
        case idle
        /// A request is arriving.
        case reading
        /// A request is being handled; `more` when bytes of the next one arrived meanwhile.
        case handling(more: Bool)
        case closed
    }

    private let idleTimeout: TimeAmount
    private let requestTimeout: TimeAmount
    private var state = State.idle
    private var timer: Scheduled<Void>?

    init(idleTimeout: TimeAmount, requestTimeout: TimeAmount) {
        self.idleTimeout = idleTimeout
        self.requestTimeout = requestTimeout
    }

    func channelActive(context: ChannelHandlerContext) {
        arm(context, idleTimeout)
        context.fireChannelActive()
    }

    func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive { arm(context, idleTimeout) }
    }

    func channelInactive(context: ChannelHandlerContext) {
        state = .closed
        timer?.cancel()
        timer = nil
        context.fireChannelInactive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch state {
        case .idle:
            state = .reading
            arm(context, requestTimeout)
        case .handling:
            state = .handling(more: true)
        case .reading:
            break
        case .closed:
            return  // after a 408 nothing more is read
        }
        context.fireChannelRead(data)
    }

    func triggerUserOutboundEvent(context: ChannelHandlerContext, event: Any, promise: EventLoopPromise<Void>?) {
        guard let event = event as? AdminExchangeEvent else {
            context.triggerUserOutboundEvent(event, promise: promise)
            return
        }
        promise?.succeed()
        switch (event, state) {
        case (.requestRead, .reading), (.requestRead, .idle):
            state = .handling(more: false)
            timer?.cancel()
            timer = nil
        case (.responded, .handling(let more)):
            // Bytes of the next request already here start its timer now; otherwise the connection is idle.
            state = more ? .reading : .idle
            arm(context, more ? requestTimeout : idleTimeout)
        default:
            break
        }
    }

    private func arm(_ context: ChannelHandlerContext, _ after: TimeAmount) {
        timer?.cancel()
        let loop = context.eventLoop.assumeIsolated()
        timer = loop.scheduleTask(in: after) { [self] in
            self.timer = nil
            self.expired(context)
        }
    }

    private func expired(_ context: ChannelHandlerContext) {
        switch state {
        case .idle:
            state = .closed
            context.close(promise: nil)
        case .reading:
            state = .closed
            let denial = Denial.requestTimeout("The request did not arrive in time.")
            let body = denial.document(requestID: "admin-" + AdminAPI.randomToken(bytes: 6))
            var buffer = context.channel.allocator.buffer(capacity: 160 + body.utf8.count)
            buffer.writeString(
                "HTTP/1.1 408 Request Timeout\r\nContent-Type: application/problem+json\r\nContent-Length: \(body.utf8.count)\r\nConnection: close\r\n\r\n"
            )
            buffer.writeString(body)
            context.writeAndFlush(wrapOutboundOut(.byteBuffer(buffer))).assumeIsolated().whenComplete { _ in
                context.close(promise: nil)
            }
        case .handling, .closed:
            break
        }
    }
}

@available(*, unavailable)
extension AdminConnectionGuard: Sendable {}
