import NIOCore

/// Writing a body in chunked transfer coding (RFC 9112 §7.1): each piece as size line, data, CRLF; then the last
/// chunk. Used towards upstreams (a chunked request body) and towards clients (a response re-framed as chunked).
public enum ChunkedEncoding {
    public static let crlf = ByteBuffer(staticString: "\r\n")
    public static let lastChunk = ByteBuffer(staticString: "0\r\n\r\n")

    /// Calls `write` with the three buffers that carry `piece` as one chunk (nothing for an empty piece, which
    /// would read as the last chunk).
    @inlinable
    public static func frame(_ piece: ByteBuffer, allocator: ByteBufferAllocator, _ write: (ByteBuffer) -> Void) {
        guard piece.readableBytes > 0 else { return }
        var size = allocator.buffer(capacity: 20)
        size.writeString(String(piece.readableBytes, radix: 16))
        size.writeStaticString("\r\n")
        write(size)
        write(piece)
        write(crlf)
    }
}
