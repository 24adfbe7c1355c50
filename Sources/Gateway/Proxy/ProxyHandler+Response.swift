import HTTPWire
import NIOCore
import NIOHTTP1
import Policy
import Upstream

/// The response half of ``ProxyHandler``: upstream responses streamed back, re-framed by the gateway.
extension ProxyHandler: UpstreamResponseDelegate {
    func upstreamResponseHead(_ head: HTTP1ResponseParser.Head) {
        guard let ctx = current, ctx.connection != nil else { return }
        let code = head.status
        // Only a handshake's response can be a 101 (the upstream's parser refuses one to anything else). It is a
        // success once the tunnel accepts it.
        if code == 101 {
            openTunnel(ctx, head)
            return
        }
        reportOutcome(ctx, success: code < 500 || ctx.pool?.circuit?.on5xx != true)
        var buffer = context.channel.allocator.buffer(capacity: 1024)
        writeStatusLine(&buffer, version: ctx.head.version, code: code, reason: head.reason)
        let contentLength = writeUpstreamHeaders(&buffer, head.headers, for: ctx)
        let framing: ResponseFraming
        if ctx.head.method == .HEAD || code < 200 || code == 204 || code == 304 {
            framing = .none
            if let contentLength, code != 204 { writeHeader(&buffer, "Content-Length", String(contentLength)) }
        } else if let contentLength {
            framing = .contentLength
            writeHeader(&buffer, "Content-Length", String(contentLength))
        } else if ctx.head.version.minor >= 1 {
            framing = .chunked
            buffer.writeStaticString("Transfer-Encoding: chunked\r\n")
        } else {
            framing = .closeDelimited
        }
        responseFraming = framing
        let keepAlive = machine.responseHead(status: code, keepAliveAllowed: framing != .closeDelimited)
        for (name, value) in ctx.responseHeaders { writeHeader(&buffer, name, value) }
        for (name, value) in ctx.corsHeaders { writeHeader(&buffer, name, value) }
        writeConnectionHeaders(&buffer, version: ctx.head.version, keepAlive: keepAlive)
        writeHeader(&buffer, "X-Request-ID", ctx.requestID)
        buffer.writeStaticString("\r\n")
        context.write(wrapOutboundOut(buffer), promise: nil)
    }

    func upstreamResponseBody(_ buffer: ByteBuffer) {
        guard let ctx = current, ctx.connection != nil else { return }
        ctx.bytesOut += Int64(buffer.readableBytes)
        switch responseFraming {
        case .none:
            return
        case .chunked:
            ChunkedEncoding.frame(buffer, allocator: context.channel.allocator) {
                context.write(wrapOutboundOut($0), promise: nil)
            }
        case .contentLength, .closeDelimited:
            context.write(wrapOutboundOut(buffer), promise: nil)
        }
        if !context.channel.isWritable {
            // The client is not keeping up: stop reading the upstream until it drains (send_timeout bounds the wait).
            ctx.connection?.setReadPaused(true)
            machine.writabilityChanged(isWritable: false, now: .now())
        }
    }

    func upstreamResponseEnd() {
        guard let ctx = current, ctx.connection != nil else { return }
        if case .chunked = responseFraming {
            context.write(wrapOutboundOut(ChunkedEncoding.lastChunk), promise: nil)
        }
        // The lease is over (the connection goes back to its pool as this returns): forget it, and end the
        // exchange, before the flush (a failing flush re-enters this handler). The upstream's part is done: its
        // max_in_flight place is free even if the client is still sending a body the gateway now drops.
        ctx.connection = nil
        ctx.leaveInFlight()
        if let end = machine.responseEnd(now: .now()) {
            finish(end, ctx)
        } else {
            context.flush()
        }
    }

    func upstreamFailed(_ error: UpstreamError) {
        guard let ctx = current, ctx.connection != nil else { return }
        upstreamFailed(ctx, error)
    }

    func upstreamWritabilityChanged(isWritable: Bool) {
        machine.setPaused(.upstreamBackpressure, !isWritable)
        if isWritable { updateReading() }
    }

    func upstreamReadComplete() {
        context.flush()
    }

    func upstreamTunnelData(_ buffer: ByteBuffer) {
        guard let ctx = current, ctx.connection != nil else { return }
        ctx.tunnelBytesOut += Int64(buffer.readableBytes)
        machine.tunnelActivity(now: .now())
        context.write(wrapOutboundOut(buffer), promise: nil)
        // The client is not keeping up: stop reading the upstream until it drains (the idle timeout bounds it).
        if !context.channel.isWritable { ctx.connection?.setReadPaused(true) }
    }

    func upstreamTunnelClosed() {
        guard let ctx = current else { return }
        ctx.connection = nil
        if let end = machine.tunnelClosedByUpstream() { finish(end, ctx) }
    }

    // MARK: Serialisation

    /// The upstream's end-to-end response headers as the client gets them (``HeaderRewriter``); on a route with
    /// `cors` without the upstream's own `Access-Control-*`, which the gateway's replace (exactly one
    /// Allow-Origin). Returns the upstream's Content-Length.
    func writeUpstreamHeaders(
        _ buffer: inout ByteBuffer, _ headers: [(name: String, value: String)], for ctx: RequestContext
    ) -> Int? {
        let ownsCORS = !ctx.corsHeaders.isEmpty
        return HeaderRewriter.forEachClientResponseHeader(headers) { name, value in
            if ownsCORS && CORSPolicy.isCORSResponseHeader(name) { return }
            writeHeader(&buffer, name, value)
        }
    }

    func writeStatusLine(_ buffer: inout ByteBuffer, version: HTTPVersion, code: Int, reason: String) {
        buffer.writeStaticString(version.minor == 0 ? "HTTP/1.0 " : "HTTP/1.1 ")
        buffer.writeString(String(code))
        buffer.writeStaticString(" ")
        let phrase = reason.isEmpty ? HTTPResponseStatus(statusCode: code).reasonPhrase : reason
        buffer.writeString(phrase.isEmpty ? "Unknown" : phrase)
        buffer.writeStaticString("\r\n")
    }

    func writeHeader(_ buffer: inout ByteBuffer, _ name: String, _ value: String) {
        buffer.writeString(name)
        buffer.writeStaticString(": ")
        buffer.writeString(value)
        buffer.writeStaticString("\r\n")
    }

    func writeConnectionHeaders(_ buffer: inout ByteBuffer, version: HTTPVersion, keepAlive: Bool) {
        if !keepAlive {
            buffer.writeStaticString("Connection: close\r\n")
        } else if version.minor == 0 {
            buffer.writeStaticString("Connection: keep-alive\r\n")
        }
    }

    /// Writes a complete problem-document response (not flushed).
    func writeProblem(_ denial: Denial, for ctx: RequestContext, keepAlive: Bool) {
        writeComplete(
            status: denial.status, contentType: "application/problem+json", headers: denial.headers,
            body: denial.document(requestID: ctx.requestID), for: ctx, keepAlive: keepAlive)
    }

    /// Writes a complete response the gateway makes itself (a problem, a local endpoint's answer), with the
    /// request's CORS headers; not flushed. A 204 gets neither body nor Content-Type nor Content-Length
    /// (RFC 9110 §8.6).
    func writeComplete(
        status: Int, contentType: String?, headers: [(String, String)] = [], body: String, for ctx: RequestContext,
        keepAlive: Bool
    ) {
        let hasBody = status != 204
        var buffer = context.channel.allocator.buffer(capacity: 256 + body.utf8.count)
        writeStatusLine(&buffer, version: ctx.head.version, code: status, reason: "")
        if hasBody {
            if let contentType { writeHeader(&buffer, "Content-Type", contentType) }
            writeHeader(&buffer, "Content-Length", String(body.utf8.count))
        }
        for (name, value) in headers { writeHeader(&buffer, name, value) }
        for (name, value) in ctx.corsHeaders { writeHeader(&buffer, name, value) }
        writeConnectionHeaders(&buffer, version: ctx.head.version, keepAlive: keepAlive)
        writeHeader(&buffer, "X-Request-ID", ctx.requestID)
        buffer.writeStaticString("\r\n")
        if hasBody && ctx.head.method != .HEAD { buffer.writeString(body) }
        context.write(wrapOutboundOut(buffer), promise: nil)
    }
}
