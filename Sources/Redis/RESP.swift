internal import CHiredis
import NIOCore

/// A Redis reply, copied out of hiredis into Swift values.
public enum RedisReply: Sendable, Equatable {
    case string([UInt8])
    case status(String)
    case error(String)
    case integer(Int64)
    case array([RedisReply])
    case null

    public var string: String? {
        switch self {
        case .string(let b): String(decoding: b, as: UTF8.self)
        case .status(let s): s
        default: nil
        }
    }

    public var integer: Int64? {
        if case .integer(let i) = self { return i }
        return nil
    }
}

/// Why a Redis call failed.
public struct RedisError: Error, Sendable, Equatable, CustomStringConvertible {
    private enum Code: String, Sendable {
        case timeout, connectionClosed = "connection_closed", unavailable, server, protocolError = "protocol"
    }
    private let code: Code
    public let detail: String
    private init(_ code: Code, _ detail: String) {
        self.code = code
        self.detail = detail
    }
    public var name: String { code.rawValue }
    public var description: String { "redis \(code.rawValue): \(detail)" }

    public static func timeout(_ d: String) -> Self { .init(.timeout, d) }
    public static func connectionClosed(_ d: String) -> Self { .init(.connectionClosed, d) }
    /// Not connected, or the circuit is open: failed without touching the network.
    public static func unavailable(_ d: String) -> Self { .init(.unavailable, d) }
    public static func server(_ d: String) -> Self { .init(.server, d) }
    public static func protocolError(_ d: String) -> Self { .init(.protocolError, d) }

    public var isTimeout: Bool { code == .timeout }
    public var isUnavailable: Bool { code == .unavailable }
}

/// Encodes commands with `redisFormatCommandArgv`.
enum RESPEncoder {
    static func encode(_ args: [[UInt8]], into buffer: inout ByteBuffer) {
        // One contiguous copy of the arguments; hiredis reads them by pointer and length.
        var joined: [UInt8] = []
        joined.reserveCapacity(args.reduce(0) { $0 + $1.count } + 1)
        var offsets: [Int] = []
        for arg in args {
            offsets.append(joined.count)
            joined += arg
        }
        joined.append(0)
        var lengths = args.map(\.count)
        var target: UnsafeMutablePointer<CChar>? = nil
        let n = joined.withUnsafeBufferPointer { base -> Int32 in
            let start = UnsafeRawPointer(base.baseAddress!).assumingMemoryBound(to: CChar.self)
            var pointers: [UnsafePointer<CChar>?] = offsets.map { start + $0 }
            return redisFormatCommandArgv(&target, Int32(args.count), &pointers, &lengths)
        }
        guard n > 0, let target else { return }
        defer { redisFreeCommand(target) }
        buffer.writeBytes(UnsafeRawBufferPointer(start: target, count: Int(n)))
    }
}

/// The one owner of a hiredis `redisReader`: bytes from the channel go in, Swift replies come out.
final class RESPReader {
    private let reader: UnsafeMutablePointer<redisReader>

    init() {
        reader = redisReaderCreate()
    }

    deinit { redisReaderFree(reader) }

    func feed(_ buffer: ByteBuffer) throws(RedisError) {
        let rc = buffer.withUnsafeReadableBytes { raw in
            redisReaderFeed(reader, raw.baseAddress?.assumingMemoryBound(to: CChar.self), raw.count)
        }
        if rc != REDIS_OK { throw .protocolError(errorText()) }
    }

    /// The next complete reply, or nil when more bytes are needed.
    func next() throws(RedisError) -> RedisReply? {
        var raw: UnsafeMutableRawPointer? = nil
        guard redisReaderGetReply(reader, &raw) == REDIS_OK else { throw .protocolError(errorText()) }
        guard let raw else { return nil }
        defer { freeReplyObject(raw) }
        return Self.convert(raw.assumingMemoryBound(to: redisReply.self))
    }

    private func errorText() -> String {
        withUnsafeBytes(of: reader.pointee.errstr) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
    }

    private static func convert(_ r: UnsafeMutablePointer<redisReply>) -> RedisReply {
        let reply = r.pointee
        func bytes() -> [UInt8] {
            guard let str = reply.str else { return [] }
            return Array(UnsafeRawBufferPointer(start: str, count: reply.len))
        }
        switch reply.type {
        case REDIS_REPLY_STRING: return .string(bytes())
        case REDIS_REPLY_STATUS: return .status(String(decoding: bytes(), as: UTF8.self))
        case REDIS_REPLY_ERROR: return .error(String(decoding: bytes(), as: UTF8.self))
        case REDIS_REPLY_INTEGER: return .integer(reply.integer)
        case REDIS_REPLY_ARRAY:
            return .array((0..<reply.elements).map { convert(reply.element[$0]!) })
        default: return .null
        }
    }
}

@available(*, unavailable)
extension RESPReader: Sendable {}
