import NIOCore
import NIOHTTP1
import Policy
import Upstream

/// The response half of ``ProxyHandler``: upstream responses streamed back, re-framed by the gateway.
extension ProxyHandler: UpstreamResponseDelegate {
    func upstreamResponseHead(_ head: HTTPResponseHead) {
        guard let ex = exchange, !ex.responseStarted else { return }
        var buffer = context.channel.allocator.buffer(capacity: 512)
        writeStatusLine(&buffer, version: ex.head.version, status: head.status)
        let contentLength = HeaderRewriter.forEachClientResponseHeader(head.headers) { name, value in
            writeHeader(&buffer, name, value)
        }
        let code = Int(head.status.code)
        ex.status = code
        let framing: Exchange.Framing
        var extra: [(String, String)] = []
        if ex.head.method == .HEAD || code < 200 || code == 204 || code == 304 {
            framing = .none
            if let contentLength, code != 204 { extra.append(("Content-Length", String(contentLength))) }
        } else if let contentLength {
            framing = .contentLength
            extra.append(("Content-Length", String(contentLength)))
        } else if ex.head.version.minor >= 1 {
            framing = .chunked
            extra.append(("Transfer-Encoding", "chunked"))
        } else {
            framing = .closeDelimited
            ex.keepAlive = false
        }
        if noMoreRequests { ex.keepAlive = false }
        ex.response = .streaming(framing)
        for (name, value) in extra { writeHeader(&buffer, name, value) }
        for (name, value) in ex.responseHeaders { writeHeader(&buffer, name, value) }
        writeConnectionHeaders(&buffer, ex)
        writeHeader(&buffer, "X-Request-ID", ex.requestID)
        buffer.writeStaticString("\r\n")
        context.write(wrapOutboundOut(buffer), promise: nil)
    }

    func upstreamResponseBody(_ buffer: ByteBuffer) {
        guard let ex = exchange, case .streaming(let framing) = ex.response else { return }
        switch framing {
        case .none:
            return
        case .chunked:
            guard buffer.readableBytes > 0 else { return }
            var prefix = context.channel.allocator.buffer(capacity: 12)
            prefix.writeString(String(buffer.readableBytes, radix: 16))
            prefix.writeStaticString("\r\n")
            context.write(wrapOutboundOut(prefix), promise: nil)
            context.write(wrapOutboundOut(buffer), promise: nil)
            context.write(wrapOutboundOut(Self.crlf), promise: nil)
        case .contentLength, .closeDelimited:
            context.write(wrapOutboundOut(buffer), promise: nil)
        }
        if !context.channel.isWritable { ex.connection?.setReadPaused(true) }
    }

    func upstreamResponseEnd() {
        guard let ex = exchange, case .streaming(let framing) = ex.response else { return }
        if case .chunked = framing {
            context.write(wrapOutboundOut(Self.lastChunk), promise: nil)
        }
        context.flush()
        ex.connection = nil
        ex.response = .done
        if ex.requestEnded || !ex.keepAlive {
            finishExchange(ex)
        }
    }

    func upstreamFailed(_ error: UpstreamError) {
        guard let ex = exchange else { return }
        ex.connection = nil
        upstreamFailedForExchange(ex, error)
    }

    func upstreamWritabilityChanged(isWritable: Bool) {
        if isWritable { resume(.upstreamBackpressure) } else { pause(.upstreamBackpressure) }
    }

    func upstreamReadComplete() {
        context.flush()
    }

    // MARK: Serialisation

    static let crlf: ByteBuffer = ByteBuffer(staticString: "\r\n")
    static let lastChunk: ByteBuffer = ByteBuffer(staticString: "0\r\n\r\n")

    func writeStatusLine(_ buffer: inout ByteBuffer, version: HTTPVersion, status: HTTPResponseStatus) {
        buffer.writeStaticString(version.minor == 0 ? "HTTP/1.0 " : "HTTP/1.1 ")
        buffer.writeString(String(status.code))
        buffer.writeStaticString(" ")
        buffer.writeString(status.reasonPhrase.isEmpty ? "Unknown" : status.reasonPhrase)
        buffer.writeStaticString("\r\n")
    }

    func writeHeader(_ buffer: inout ByteBuffer, _ name: String, _ value: String) {
        buffer.writeString(name)
        buffer.writeStaticString(": ")
        buffer.writeString(value)
        buffer.writeStaticString("\r\n")
    }

    func writeConnectionHeaders(_ buffer: inout ByteBuffer, _ ex: Exchange) {
        if !ex.keepAlive {
            buffer.writeStaticString("Connection: close\r\n")
        } else if ex.head.version.minor == 0 {
            buffer.writeStaticString("Connection: keep-alive\r\n")
        }
    }

    /// Writes a complete problem-document response (not flushed).
    func writeProblem(_ denial: Denial, for ex: Exchange) {
        ex.status = denial.status
        let body = denial.document(requestID: ex.requestID)
        var buffer = context.channel.allocator.buffer(capacity: 256 + body.utf8.count)
        writeStatusLine(&buffer, version: ex.head.version, status: HTTPResponseStatus(statusCode: denial.status))
        writeHeader(&buffer, "Content-Type", "application/problem+json")
        writeHeader(&buffer, "Content-Length", String(body.utf8.count))
        for (name, value) in denial.headers { writeHeader(&buffer, name, value) }
        writeConnectionHeaders(&buffer, ex)
        writeHeader(&buffer, "X-Request-ID", ex.requestID)
        buffer.writeStaticString("\r\n")
        if ex.head.method != .HEAD { buffer.writeString(body) }
        context.write(wrapOutboundOut(buffer), promise: nil)
    }
}
