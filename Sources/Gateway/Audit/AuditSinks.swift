import Foundation
import Logging
import NIOCore
import Redis
import Policy

/// Sealed records: their lines (each ending with a newline) in one buffer, and where each one ends.
struct AuditBatch {
    struct Record {
        var seq: UInt64
        /// Offset just past the record's newline.
        var end: Int
    }
    var bytes: [UInt8]
    var records: [Record]

    /// Each record's seq and its line (with the newline).
    func lines() -> [(seq: UInt64, line: ArraySlice<UInt8>)] {
        var start = 0
        return records.map { r in
            defer { start = r.end }
            return (r.seq, bytes[start..<r.end])
        }
    }
}

/// Where sealed audit lines go. Sinks are driven by the audit writer's thread only (never an event loop),
/// so they may block on I/O.
protocol AuditSink: AnyObject {
    /// Writes one batch. Throws when it could not be stored (the writer retries the same batch).
    func write(_ batch: AuditBatch) throws
    /// Makes everything written so far durable as the sink's policy says (called between batches).
    func sync(final: Bool) throws
    func close()
}

struct AuditSinkError: Error, CustomStringConvertible {
    let description: String

    /// `what` failed, with the reason from `errno`.
    static func errno(_ what: String) -> AuditSinkError {
        AuditSinkError(description: "\(what): \(String(cString: strerror(Foundation.errno)))")
    }
}

/// Writes all of `bytes` to `fd`, retrying short writes and interruptions.
private func writeAll(_ fd: Int32, _ bytes: ArraySlice<UInt8>, what: String) throws {
    var offset = bytes.startIndex
    while offset < bytes.endIndex {
        let n = bytes[offset...].withUnsafeBytes { Foundation.write(fd, $0.baseAddress, $0.count) }
        if n < 0 {
            if errno == EINTR { continue }
            throw AuditSinkError.errno("write to \(what) failed")
        }
        offset += n
    }
}

/// JSON lines in a file, rotated by size: the current file is `path`; a full one is renamed to
/// `path.000001`, `path.000002`, … (oldest first), so `audit verify path.* path` checks the whole chain.
///
/// `fsync`: `always` syncs after every batch; `batch` at most every 100 ms (and at stop); `never` leaves it to
/// the OS. A process crash loses nothing that was written; a machine crash loses the records written since
/// the last sync (none with `always`, up to 100 ms with `batch`, the OS's dirty-page window with `never`).
final class FileAuditSink: AuditSink {
    let path: String
    let rotateBytes: Int
    let fsyncMode: String
    private var fd: Int32 = -1
    private var size = 0
    private var nextIndex = 1
    private var dirty = false
    private var lastSync = Date()
    /// The seq of the last record written.
    private var lastSeq: UInt64 = 0
    static let batchSyncInterval = 0.1

    init(path: String, rotateBytes: Int, fsync: String) throws {
        self.path = path
        self.rotateBytes = rotateBytes
        self.fsyncMode = fsync
        let dir = (path as NSString).deletingLastPathComponent
        if !dir.isEmpty { try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true) }
        nextIndex = (Self.rotatedIndexes(of: path).max() ?? 0) + 1
        try open()
    }

    private func open() throws {
        fd = Foundation.open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o640)
        guard fd >= 0 else { throw AuditSinkError.errno("cannot open \(path)") }
        var st = stat()
        fstat(fd, &st)
        size = Int(st.st_size)
    }

    /// Indexes of `path.NNNNNN` files next to `path`.
    static func rotatedIndexes(of path: String) -> [Int] {
        let dir = (path as NSString).deletingLastPathComponent
        let base = (path as NSString).lastPathComponent + "."
        let names = (try? FileManager.default.contentsOfDirectory(atPath: dir.isEmpty ? "." : dir)) ?? []
        return names.compactMap { $0.hasPrefix(base) ? Int($0.dropFirst(base.count)) : nil }
    }

    static func rotatedName(_ path: String, _ index: Int) -> String {
        let n = String(index)
        return path + "." + String(repeating: "0", count: max(0, 6 - n.count)) + n
    }

    /// The chain's position from the newest record on disk: the last complete line of `path`, or of the
    /// newest rotated file when `path` is empty. A torn last line (a crash mid-write) is cut off first.
    static func recover(path: String, key: [UInt8]?) throws -> AuditChain? {
        var candidates = [path]
        candidates += rotatedIndexes(of: path).sorted(by: >).map { rotatedName(path, $0) }
        for file in candidates where FileManager.default.fileExists(atPath: file) {
            guard let handle = FileHandle(forUpdatingAtPath: file) else { continue }
            defer { try? handle.close() }
            let end = handle.seekToEndOfFile()
            guard end > 0 else { continue }
            let window = min(end, 1 << 20)
            handle.seek(toFileOffset: end - window)
            let tail = handle.readData(ofLength: Int(window))
            var bytes = [UInt8](tail)
            if bytes.last != UInt8(ascii: "\n") {
                // Cut the torn line so the next record starts on a line of its own.
                let keep = bytes.lastIndex(of: UInt8(ascii: "\n")).map { $0 + 1 } ?? 0
                handle.truncateFile(atOffset: end - window + UInt64(keep))
                bytes = Array(bytes[..<keep])
            }
            guard let lastLine = bytes.split(separator: UInt8(ascii: "\n")).last else { continue }
            do {
                guard let chain = try AuditChain.resuming(after: String(decoding: lastLine, as: UTF8.self)[...], key: key) else {
                    throw AuditSinkError(description: "the last record of \(file) is not an audit record; refusing to continue its chain")
                }
                return chain
            } catch let mismatch as AuditKeyMismatch {
                throw AuditSinkError(description: "\(file): \(mismatch)")
            }
        }
        return nil
    }

    func write(_ batch: AuditBatch) throws {
        // A retried batch skips what an earlier attempt wrote; a failed write is cut back to a line boundary.
        guard let last = batch.records.last, last.seq > lastSeq else { return }
        if batch.records[0].seq > lastSeq && size + batch.bytes.count <= rotateBytes {
            try append(batch.bytes[...])
        } else {
            // Rotate between records, at a line boundary, so the chain continues in the next file.
            for (seq, line) in batch.lines() where seq > lastSeq {
                if size > 0 && size + line.count > rotateBytes { try rotate() }
                try append(line)
                lastSeq = seq
            }
        }
        lastSeq = last.seq
        dirty = true
        if fsyncMode == "always" { try sync(final: false) }
    }

    private func append(_ bytes: ArraySlice<UInt8>) throws {
        let before = size
        do {
            try writeAll(fd, bytes, what: path)
            size += bytes.count
        } catch {
            _ = ftruncate(fd, off_t(before))
            size = before
            throw error
        }
    }

    private func rotate() throws {
        if fsyncMode != "never" { fsync(fd) }
        Foundation.close(fd)
        let target = Self.rotatedName(path, nextIndex)
        guard rename(path, target) == 0 else {
            throw AuditSinkError.errno("cannot rotate \(path)")
        }
        nextIndex += 1
        try open()
    }

    func sync(final: Bool) throws {
        guard dirty else { return }
        switch fsyncMode {
        case "never": if !final { return }
        case "batch": if !final && Date().timeIntervalSince(lastSync) < Self.batchSyncInterval { return }
        default: break
        }
        if fsync(fd) != 0 { throw AuditSinkError.errno("fsync of \(path) failed") }
        dirty = false
        lastSync = Date()
    }

    func close() {
        try? sync(final: true)
        if fd >= 0 { Foundation.close(fd) }
        fd = -1
    }
}

/// JSON lines on standard output (logs go to standard error).
final class StdoutAuditSink: AuditSink {
    func write(_ batch: AuditBatch) throws {
        try writeAll(1, batch.bytes[...], what: "stdout")
    }
    func sync(final: Bool) throws {}
    func close() {}
}

/// Each record as one stream entry, its id taken from the record's seq (`XADD <stream> MAXLEN ~ <maxlen>
/// <seq>-0 record <line>`), pipelined per batch. A retried batch cannot duplicate entries: Redis refuses an
/// id that is not above the stream's last, and that refusal means the entry is already there.
final class RedisStreamAuditSink: AuditSink {
    let client: RedisClient
    let stream: String
    let maxlen: String

    init(client: RedisClient, stream: String, maxlen: Int) {
        self.client = client
        self.stream = stream
        self.maxlen = String(maxlen)
    }

    func write(_ batch: AuditBatch) throws {
        let sends = batch.lines().map { seq, line in
            client.send(
                bytes: [
                    Array("XADD".utf8), Array(stream.utf8), Array("MAXLEN".utf8), [UInt8(ascii: "~")], Array(maxlen.utf8),
                    Array((String(seq) + "-0").utf8), Array("record".utf8), Array(line.dropLast()),
                ], timeout: .seconds(2))
        }
        for f in sends {
            do {
                _ = try f.wait()
            } catch let e as RedisError where e.name == "server" && e.detail.contains("equal or smaller") {
                continue  // stored by an earlier attempt
            }
        }
    }

    /// The newest entry's chain position (used when no file sink holds the chain).
    func recover(key: [UInt8]?) async throws -> AuditChain? {
        let reply = try await client.send(Self.newestCommand(stream), timeout: .seconds(2)).get()
        guard let line = Self.newestLine(reply) else { return nil }
        do {
            return try AuditChain.resuming(after: line[...], key: key)
        } catch {
            throw AuditSinkError(description: "stream \(stream): \(error)")
        }
    }

    /// `XREVRANGE <stream> + - COUNT 1`: the newest entry.
    static func newestCommand(_ stream: String) -> [String] { ["XREVRANGE", stream, "+", "-", "COUNT", "1"] }

    /// The record line of the entry in a reply to ``newestCommand(_:)``; nil when the stream is empty.
    static func newestLine(_ reply: RedisReply) -> String? {
        guard case .array(let entries) = reply, let entry = entries.first, case .array(let parts) = entry, parts.count == 2,
            case .array(let fields) = parts[1], fields.count >= 2
        else { return nil }
        return fields[1].string
    }

    func sync(final: Bool) throws {}
    func close() { _ = client.close() }
}
