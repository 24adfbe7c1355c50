import HTTPWire
import NIOCore
import NIOSSL
import NIOHTTP1

/// Receives one exchange's response from an ``UpstreamConnection``; all calls arrive on the connection's loop.
public protocol UpstreamResponseDelegate: AnyObject {
    func upstreamResponseHead(_ head: HTTP1ResponseParser.Head)
    func upstreamResponseBody(_ buffer: ByteBuffer)
    /// The response is complete. The delegate's lease has ended (the connection goes back to its pool, or is
    /// closed, right after this returns): the delegate must not touch the connection any more.
    func upstreamResponseEnd()
    /// The exchange failed; the connection is closed and gone from the pool.
    func upstreamFailed(_ error: UpstreamError)
    /// The upstream socket's writability changed (request body back-pressure).
    func upstreamWritabilityChanged(isWritable: Bool)
    /// A burst of reads is over: the delegate flushes what it wrote to the client.
    func upstreamReadComplete()
    /// After a 101 (``upstreamResponseHead(_:)`` with status 101): bytes from the upstream's side of the tunnel.
    func upstreamTunnelData(_ buffer: ByteBuffer)
    /// The upstream closed the tunnel (or it failed); the connection is closed.
    func upstreamTunnelClosed()
}

/// One keep-alive HTTP/1.1 connection to an upstream target, the only handler of its pipeline: the executor
/// of an ``UpstreamConnectionStateMachine``. It writes requests as bytes and parses responses with
/// ``HTTP1ResponseParser``.
///
/// Carries one exchange at a time. Every lease ends exactly once, and its end is reported to the pool then:
/// reusable after a clean keep-alive response, closed otherwise (failure, timeout, abandonment, early answer).
/// A 101 to a request that asked to switch protocols ends the lease (the pool forgets the connection) and
/// turns the connection into a byte tunnel for the delegate, until either side closes it.
/// Reading can be paused by the delegate for response back-pressure.
public final class UpstreamConnection: ChannelDuplexHandler {
    public typealias InboundIn = ByteBuffer
    public typealias OutboundIn = ByteBuffer
    public typealias OutboundOut = ByteBuffer

    private var machine = UpstreamConnectionStateMachine()
    private var delegate: UpstreamResponseDelegate?
    private var context: ChannelHandlerContext?
    /// The pool's name for this connection.
    let id: Int
    weak var pool: TargetPool?
    private var readPaused = false
    private var readPending = false
    private var parser = HTTP1ResponseParser()
    /// The current request's body is sent chunked.
    private var chunked = false

    init(id: Int) { self.id = id }

    public var isOpen: Bool { !machine.isClosed && (context?.channel.isActive ?? false) }
    public var isWritable: Bool { context?.channel.isWritable ?? false }

    public func handlerAdded(context: ChannelHandlerContext) { self.context = context }

    // MARK: Exchange API (called by the delegate, on this loop)

    /// Starts an exchange by writing the request head; false when the connection cannot take it (the delegate
    /// is not called back then).
    /// `upgrade`: the request asks to switch protocols (a 101 then opens a tunnel).
    public func begin(
        head: HTTPRequestHead, delegate: UpstreamResponseDelegate, responseTimeout: TimeAmount, upgrade: Bool = false
    ) -> Bool {
        guard let context, machine.begin(responseTimeout: responseTimeout) == .writeHead else { return false }
        self.delegate = delegate
        parser.expectResponse(toHead: head.method == .HEAD, upgrade: upgrade)
        // Room for a typical head with the forwarding and identity headers, so it is written without a regrowth.
        var buffer = context.channel.allocator.buffer(capacity: 1024)
        chunked = Self.write(head, to: &buffer)
        context.write(wrapOutboundOut(buffer), promise: nil)
        return true
    }

    /// Serialises a request head; true when it announces a chunked body.
    static func write(_ head: HTTPRequestHead, to buffer: inout ByteBuffer) -> Bool {
        buffer.writeString(head.method.rawValue)
        buffer.writeStaticString(" ")
        buffer.writeString(head.uri)
        buffer.writeStaticString(head.version.minor == 0 ? " HTTP/1.0\r\n" : " HTTP/1.1\r\n")
        var chunked = false
        for (name, value) in head.headers {
            if name.utf8.count == 17 && HopByHop.equalsLower(name.utf8, "transfer-encoding") { chunked = true }
            buffer.writeString(name)
            buffer.writeStaticString(": ")
            buffer.writeString(value)
            buffer.writeStaticString("\r\n")
        }
        buffer.writeStaticString("\r\n")
        return chunked
    }

    public func sendBody(_ buffer: ByteBuffer) {
        guard let context, delegate != nil, buffer.readableBytes > 0 else { return }
        if chunked {
            ChunkedEncoding.frame(buffer, allocator: context.channel.allocator) {
                context.write(wrapOutboundOut($0), promise: nil)
            }
        } else {
            context.write(wrapOutboundOut(buffer), promise: nil)
        }
    }

    /// Tunnel bytes towards the upstream (after the 101), written as they are.
    public func sendTunnel(_ buffer: ByteBuffer) {
        guard let context, delegate != nil else { return }
        context.write(wrapOutboundOut(buffer), promise: nil)
    }

    public func sendEnd() {
        guard let context, delegate != nil else { return }
        machine.requestEndSent(now: .now())
        if chunked { context.write(wrapOutboundOut(ChunkedEncoding.lastChunk), promise: nil) }
        context.flush()
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

    /// Abandons `delegate`'s exchange (the client went away, or it was denied mid-way): the connection is
    /// closed, never reused, and its lease is released as closed. A delegate whose lease already ended cannot
    /// end the next holder's.
    public func abandon(by delegate: UpstreamResponseDelegate) {
        guard self.delegate === delegate else { return }
        run(machine.abandon())
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
        let buffer = unwrapInboundIn(data)
        buffer.withUnsafeReadableBytes { bytes in
            var offset = 0
            while let event = parser.next(bytes, &offset) {
                switch event {
                case .head(let parsed):
                    switch machine.responseHead(keepAlive: parsed.reusable, switching: parsed.status == 101) {
                    case .forwardHead:
                        delegate?.upstreamResponseHead(parsed)
                    case .openTunnel:
                        // Off the pool's books first: the tunnel lives as long as its delegate keeps it.
                        let pool = self.pool
                        self.pool = nil
                        pool?.release(self, reusable: false)
                        delegate?.upstreamResponseHead(parsed)
                    case let other: run(other)
                    }
                case .tunnel(let range):
                    if machine.tunnelData() == .forwardTunnel {
                        delegate?.upstreamTunnelData(
                            buffer.getSlice(at: buffer.readerIndex + range.lowerBound, length: range.count)!)
                    }
                case .body(let range):
                    switch machine.responseBody() {
                    case .forwardBody:
                        delegate?.upstreamResponseBody(
                            buffer.getSlice(at: buffer.readerIndex + range.lowerBound, length: range.count)!)
                    case let other: run(other)
                    }
                case .end:
                    run(machine.responseEnd(trailingBytes: offset < bytes.count))
                case .error(let error):
                    run(machine.errorCaught("\(error)"))
                }
            }
        }
    }

    public func channelReadComplete(context: ChannelHandlerContext) {
        delegate?.upstreamReadComplete()
    }

    public func channelWritabilityChanged(context: ChannelHandlerContext) {
        delegate?.upstreamWritabilityChanged(isWritable: context.channel.isWritable)
        context.fireChannelWritabilityChanged()
    }

    public func errorCaught(context: ChannelHandlerContext, error: Error) {
        // A TLS peer that closes without close_notify: an end of input like any other (channelInactive follows
        // and decides whether the response was whole), not a broken response.
        if let tls = error as? NIOSSLError, case .uncleanShutdown = tls { return }
        run(machine.errorCaught("\(error)", io: true))
    }

    public func channelInactive(context: ChannelHandlerContext) {
        // A body read until the upstream closes ends here.
        if parser.closed() != nil { run(machine.responseEnd()) }
        run(machine.channelInactive())
        context.fireChannelInactive()
    }

    /// Closes a connection the pool no longer keeps (idle too long, or the pool is closing).
    func closeIdle() {
        run(machine.closeIdle())
    }

    /// Called by the pool's sweep: fails the exchange if the response head is overdue.
    func checkTimeout(now: NIODeadline) {
        run(machine.checkTimeout(now: now))
    }

    private func run(_ action: UpstreamConnectionStateMachine.Action) {
        switch action {
        case .none, .writeHead, .forwardHead, .forwardBody, .refuseBegin, .openTunnel, .forwardTunnel:
            break
        case .endTunnel:
            let d = delegate
            delegate = nil
            context?.close(promise: nil)
            d?.upstreamTunnelClosed()
        case .abandonTunnel:
            // The client's last bytes (its close frame among them) reach the upstream before the close, bounded.
            delegate = nil
            context?.closeWhenFlushed(within: .seconds(2))
        case .forwardEnd(let release):
            // The delegate hears of the end before the pool may hand the connection to the next exchange.
            let d = delegate
            delegate = nil
            d?.upstreamResponseEnd()
            if release == .closed {
                context?.close(promise: nil)
            } else {
                setReadPaused(false)
            }
            pool?.release(self, reusable: release == .reusable)
        case .failExchange(let error):
            let d = delegate
            delegate = nil
            context?.close(promise: nil)
            pool?.release(self, reusable: false)
            d?.upstreamFailed(error)
        case .abandon, .closeIdle:
            // Nobody is told: the delegate left (abandon), or there was none (idle).
            delegate = nil
            context?.close(promise: nil)
            pool?.release(self, reusable: false)
        }
    }
}

@available(*, unavailable)
extension UpstreamConnection: Sendable {}

extension ChannelHandlerContext {
    /// Closes the channel once what was written before is on the wire, or after `cutoff` when the peer reads
    /// nothing: a plain close would drop pending writes (a tunnel's last bytes, its close frame among them).
    public func closeWhenFlushed(within cutoff: TimeAmount) {
        let channel = self.channel
        let flushed = eventLoop.makePromise(of: Void.self)
        writeAndFlush(NIOAny(channel.allocator.buffer(capacity: 0)), promise: flushed)
        let timer = eventLoop.assumeIsolated().scheduleTask(in: cutoff) { channel.close(promise: nil) }
        flushed.futureResult.assumeIsolated().whenComplete { _ in
            timer.cancel()
            channel.close(promise: nil)
        }
    }
}
