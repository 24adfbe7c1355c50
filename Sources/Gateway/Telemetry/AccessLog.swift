import Foundation
import Logging
import NIOCore
import NIOPosix
import Policy
import ServiceLifecycle
import Synchronization

/// The access log: one JSON line per request (`access_log`), to a file or stdout, written off the event loops.
///
/// Each event loop appends its lines to its own buffer (a lock no other loop takes); this service swaps the
/// buffers out every ``interval`` and writes them on NIO's blocking-I/O thread pool. A buffer holds at most
/// ``maxBufferedBytes``: past that (a disk that stopped taking writes) lines are dropped and counted
/// (`gatehouse_access_log_dropped_total`), never waited for: unlike the audit log, the access log does not hold
/// requests back. On graceful stop everything buffered is written.
///
/// Lines: `{"ts","request_id","trace_id","span_id","client_ip","method","path","route","status","decision","code",
/// "tenant","user","plan","upstream","latency_ms","upstream_ms","bytes_in","bytes_out","user_agent"}`; the path
/// without its query, no credentials.
final class AccessLog: Service, Sendable {
    struct Line {
        var timeMillis: Int64
        var requestID: String
        var trace: TraceContext
        var clientIP: String
        var method: String
        var path: Substring
        var route: String?
        var status: Int
        var denied: Bool
        var code: String?
        var tenant: String?
        var user: String?
        var plan: String?
        var upstream: String?
        var latencyMicros: Int64
        var upstreamMicros: Int64?
        var bytesIn: Int64
        var bytesOut: Int64
        var userAgent: String?
    }

    let config: AccessLogConfig
    static let interval = Duration.milliseconds(100)
    static let maxBufferedBytes = 8 << 20
    /// The longest path and user agent kept (bytes).
    static let maxPathBytes = 1024
    static let maxUserAgentBytes = 256

    /// One loop's buffer: lines not yet written, and how many.
    private final class Buffer: Sendable {
        struct Lines {
            var bytes: [UInt8] = []
            var count = 0
        }
        let lines = Mutex(Lines())
    }
    private let buffers: [Buffer]
    private let droppedCount = Atomic<Int>(0)
    private let writtenLines = Atomic<Int>(0)
    private let fd: Int32
    private let logger: Logger
    /// The writer's own thread (a stalled disk holds only this one) and the loop its futures complete on.
    private let pool = NIOThreadPool(numberOfThreads: 1)
    private let eventLoop: EventLoop

    /// Opens (creates) the file; `shards` is the number of event loops.
    init(config: AccessLogConfig, shards: Int, eventLoop: EventLoop, logger: Logger) throws {
        self.config = config
        self.eventLoop = eventLoop
        self.logger = logger
        self.buffers = (0..<max(1, shards)).map { _ in Buffer() }
        pool.start()
        switch config.destination {
        case .stdout:
            fd = STDOUT_FILENO
        case .file(let path):
            let dir = (path as NSString).deletingLastPathComponent
            if !dir.isEmpty { try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true) }
            let opened = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o640)
            guard opened >= 0 else {
                throw AuditSinkError.errno("cannot open the access log \(path)")
            }
            fd = opened
        }
    }

    var dropped: Int { droppedCount.load(ordering: .relaxed) }
    var written: Int { writtenLines.load(ordering: .relaxed) }

    /// Whether an exchange that ended so is logged: always for denials and 5xx, else with the sampling fraction.
    func logs(denied: Bool, status: Int, random: inout FastRandom) -> Bool {
        if denied || status >= 500 || config.sample >= 1 { return true }
        if config.sample <= 0 { return false }
        return Double(random.next() >> 11) * 0x1p-53 < config.sample
    }

    /// Appends one line to loop `shard`'s buffer (encoded in place; never waits on I/O: only the writer, every
    /// ``interval``, takes this lock as well).
    func append(_ line: Line, shard: Int) {
        let kept = buffers[shard % buffers.count].lines.withLock { buffer -> Bool in
            guard buffer.bytes.count < Self.maxBufferedBytes else { return false }
            Self.encode(line, into: &buffer.bytes)
            buffer.count += 1
            return true
        }
        if !kept { droppedCount.add(1, ordering: .relaxed) }
    }

    static func encode(_ l: Line, into out: inout [UInt8]) {
        func raw(_ s: StaticString) { s.withUTF8Buffer { out.append(contentsOf: $0) } }
        func str(_ s: String?) {
            if let s { JSONText.appendQuoted(s, to: &out) } else { raw("null") }
        }
        func millis(_ micros: Int64) { AuditRecord.appendMillis(micros: micros, to: &out) }
        raw("{\"ts\":\"")
        CivilDate.appendRFC3339(milliseconds: l.timeMillis, to: &out)
        raw("\",\"request_id\":")
        str(l.requestID)
        raw(",\"trace_id\":\"")
        TraceContext.appendHex(l.trace.traceHigh, to: &out)
        TraceContext.appendHex(l.trace.traceLow, to: &out)
        raw("\",\"span_id\":\"")
        TraceContext.appendHex(l.trace.span, to: &out)
        raw("\",\"client_ip\":")
        str(l.clientIP)
        raw(",\"method\":")
        str(l.method)
        raw(",\"path\":")
        JSONText.appendQuoted(l.path, maxBytes: maxPathBytes, to: &out)
        raw(",\"route\":")
        str(l.route)
        raw(",\"status\":")
        AuditRecord.appendDecimal(Int64(l.status), to: &out)
        raw(l.denied ? ",\"decision\":\"deny\"" : ",\"decision\":\"allow\"")
        raw(",\"code\":")
        str(l.code)
        raw(",\"tenant\":")
        str(l.tenant)
        raw(",\"user\":")
        str(l.user)
        raw(",\"plan\":")
        str(l.plan)
        raw(",\"upstream\":")
        str(l.upstream)
        raw(",\"latency_ms\":")
        millis(l.latencyMicros)
        raw(",\"upstream_ms\":")
        if let u = l.upstreamMicros { millis(u) } else { raw("null") }
        raw(",\"bytes_in\":")
        AuditRecord.appendDecimal(l.bytesIn, to: &out)
        raw(",\"bytes_out\":")
        AuditRecord.appendDecimal(l.bytesOut, to: &out)
        raw(",\"user_agent\":")
        if let ua = l.userAgent { JSONText.appendQuoted(ua[...], maxBytes: maxUserAgentBytes, to: &out) } else { raw("null") }
        raw("}\n")
    }

    func run() async throws {
        while !Task.isShuttingDownGracefully && !Task.isCancelled {
            try? await cancelWhenGracefulShutdown { try await Task.sleep(for: Self.interval) }
            await flush()
        }
        await flush()
        if fd != STDOUT_FILENO { close(fd) }
        try? await pool.shutdownGracefully()
    }

    /// Writes what every loop has buffered, on the blocking-I/O pool.
    func flush() async {
        var taken: [UInt8] = []
        var lines = 0
        for b in buffers {
            b.lines.withLock { buffer in
                lines += buffer.count
                buffer.count = 0
                if taken.isEmpty {
                    swap(&taken, &buffer.bytes)
                    buffer.bytes.reserveCapacity(taken.count)
                } else {
                    taken.append(contentsOf: buffer.bytes)
                    buffer.bytes.removeAll(keepingCapacity: true)
                }
            }
        }
        guard !taken.isEmpty else { return }
        let batch = taken
        let fd = self.fd
        do {
            try await pool.runIfActive(eventLoop: eventLoop) {
                var offset = 0
                while offset < batch.count {
                    let n = batch[offset...].withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
                    if n < 0 {
                        if errno == EINTR { continue }
                        throw AuditSinkError.errno("write to the access log failed")
                    }
                    offset += n
                }
            }.get()
            writtenLines.add(lines, ordering: .relaxed)
        } catch {
            droppedCount.add(lines, ordering: .relaxed)
            logger.error("access log write failed; lines dropped", metadata: ["gh-error": "\(error)", "gh-lines": "\(lines)"])
        }
    }
}

