import NIOCore
import NIOHTTP1

/// Receives one exchange's response from an ``UpstreamConnection``; all calls arrive on the connection's loop.
public protocol UpstreamResponseDelegate: AnyObject {
    func upstreamResponseHead(_ head: HTTPResponseHead)
    func upstreamResponseBody(_ buffer: ByteBuffer)
    /// The response is complete. The connection has already been returned to its pool or closed.
    func upstreamResponseEnd()
    /// The exchange failed; the connection is closed and gone from the pool.
    func upstreamFailed(_ error: UpstreamError)
    /// The upstream socket's writability changed (request body back-pressure).
    func upstreamWritabilityChanged(isWritable: Bool)
    /// A burst of reads is over: the delegate flushes what it wrote to the client.
    func upstreamReadComplete()
}

/// One keep-alive HTTP/1.1 connection to an upstream target, the last handler of its pipeline.
///
/// Carries one exchange at a time. A connection whose response was malformed, cut short or timed out is
/// closed and never reused. Reading can be paused by the delegate for response back-pressure.
public final class UpstreamConnection: ChannelDuplexHandler {
    public typealias InboundIn = HTTPClientResponsePart
    public typealias OutboundIn = HTTPClientRequestPart
    public typealias OutboundOut = HTTPClientRequestPart

    private enum State {
        case idle
        case active(UpstreamResponseDelegate)
        case closed
    }

    private var state: State = .idle
    private var context: ChannelHandlerContext?
    weak var pool: TargetPool?
    /// Set while a request is outstanding: when the response head must have arrived.
    var responseDeadline: NIODeadline?
    /// Set while idle in the pool: when the connection is closed for disuse.
    var idleSince: NIODeadline?
    private var requestComplete = false
    private var responseHeadSeen = false
    private var responseKeepAlive = true
    private var readPaused = false
    private var readPending = false
    /// Bytes of the request have been written (retries of non-idempotent requests are unsafe).
    public private(set) var requestBytesSent = false

    public init() {}

    public var isOpen: Bool {
        if case .closed = state { return false }
        return context?.channel.isActive ?? false
    }

    public var isWritable: Bool { context?.channel.isWritable ?? false }

    public func handlerAdded(context: ChannelHandlerContext) { self.context = context }

    // MARK: Exchange API (called by the delegate, on this loop)

    /// Starts an exchange: writes the request head. `requestComplete` is set by ``sendEnd()``.
    public func begin(head: HTTPRequestHead, delegate: UpstreamResponseDelegate, responseTimeout: TimeAmount) {
        guard let context, case .idle = state else {
            delegate.upstreamFailed(.connectionClosed("upstream connection is not idle"))
            return
        }
        state = .active(delegate)
        idleSince = nil
        requestComplete = false
        responseHeadSeen = false
        responseKeepAlive = true
        requestBytesSent = true
        responseDeadline = .now() + responseTimeout
        context.write(wrapOutboundOut(.head(head)), promise: nil)
    }

    public func sendBody(_ buffer: ByteBuffer) {
        guard let context, case .active = state else { return }
        context.write(wrapOutboundOut(.body(.byteBuffer(buffer))), promise: nil)
    }

    public func sendEnd() {
        guard let context, case .active = state else { return }
        requestComplete = true
        context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
    }

    public func flush() { context?.flush() }

    /// Pauses or resumes reading the upstream socket (the client is not keeping up).
    public func setReadPaused(_ paused: Bool) {
        readPaused = paused
        if !paused && readPending {
            readPending = false
            context?.read()
        }
    }

    /// Abandons the current exchange (the client went away): the connection is closed, never reused.
    public func abandon() {
        guard case .active = state else { return }
        state = .closed
        context?.close(promise: nil)
    }

    // MARK: Channel events

    public func read(context: ChannelHandlerContext) {
        if readPaused {
            readPending = true
        } else {
            context.read()
        }
    }

    public func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard case .active(let delegate) = state else {
            // A response nobody asked for: the connection's framing can no longer be trusted.
            state = .closed
            context.close(promise: nil)
            return
        }
        switch unwrapInboundIn(data) {
        case .head(let head):
            responseHeadSeen = true
            responseDeadline = nil
            responseKeepAlive = head.isKeepAlive
            delegate.upstreamResponseHead(head)
        case .body(let buffer):
            delegate.upstreamResponseBody(buffer)
        case .end:
            let reusable = responseKeepAlive && requestComplete
            responseDeadline = nil
            if reusable {
                state = .idle
                requestBytesSent = false
                setReadPaused(false)
            } else {
                state = .closed
                context.close(promise: nil)
            }
            pool?.release(self, reusable: reusable)
            delegate.upstreamResponseEnd()
        }
    }

    public func channelReadComplete(context: ChannelHandlerContext) {
        if case .active(let delegate) = state { delegate.upstreamReadComplete() }
    }

    public func channelWritabilityChanged(context: ChannelHandlerContext) {
        if case .active(let delegate) = state { delegate.upstreamWritabilityChanged(isWritable: context.channel.isWritable) }
        context.fireChannelWritabilityChanged()
    }

    public func errorCaught(context: ChannelHandlerContext, error: Error) {
        fail(.malformedResponse("\(error)"))
        context.close(promise: nil)
    }

    public func channelInactive(context: ChannelHandlerContext) {
        fail(.connectionClosed(responseHeadSeen ? "upstream closed mid-response" : "upstream closed before responding"))
        context.fireChannelInactive()
    }

    /// Closes a connection the pool no longer keeps (idle too long, or the pool is closing).
    func closeIdle() {
        state = .closed
        context?.close(promise: nil)
    }

    /// Called by the pool's sweep: fails the exchange if the response head is overdue.
    func checkTimeout(now: NIODeadline) {
        if let deadline = responseDeadline, now >= deadline {
            fail(.responseTimeout("no response within the response timeout"))
        }
    }

    private func fail(_ error: UpstreamError) {
        let previous = state
        state = .closed
        responseDeadline = nil
        switch previous {
        case .active(let delegate):
            pool?.release(self, reusable: false)
            context?.close(promise: nil)
            delegate.upstreamFailed(error)
        case .idle:
            pool?.release(self, reusable: false)
            context?.close(promise: nil)
        case .closed:
            break
        }
    }
}

@available(*, unavailable)
extension UpstreamConnection: Sendable {}
