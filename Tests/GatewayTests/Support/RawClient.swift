import Foundation
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// A parsed HTTP/1.x response as a client saw it on the wire.
struct RawResponse {
    var status: Int
    var headers: [(String, String)]
    var body: [UInt8]

    func header(_ name: String) -> String? {
        headers.first { $0.0.lowercased() == name.lowercased() }?.1
    }

    func headers(_ name: String) -> [String] {
        headers.filter { $0.0.lowercased() == name.lowercased() }.map(\.1)
    }

    var text: String { String(decoding: body, as: UTF8.self) }

    var json: [String: Any] {
        (try? JSONSerialization.jsonObject(with: Data(body))) as? [String: Any] ?? [:]
    }
}

struct RawClientError: Error, CustomStringConvertible {
    var description: String
}

/// A blocking TCP client on loopback, for sending exact bytes (framing attacks, pipelining) and reading
/// exact responses. Every read is bounded by a receive timeout, so a test waits for an event, never for time.
final class RawConnection {
    private let fd: Int32
    private var buffer: [UInt8] = []
    private(set) var peerClosed = false

    /// `source`: a loopback address to connect from (127.0.0.2 is a peer other than 127.0.0.1).
    init(port: Int, timeout: TimeInterval = 10, receiveBuffer: Int? = nil, source: String? = nil) throws {
        fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw RawClientError(description: "socket failed") }
        if let source {
            var local = sockaddr_in()
            local.sin_family = sa_family_t(AF_INET)
            local.sin_addr.s_addr = inet_addr(source)
            let bound = withUnsafePointer(to: &local) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
            guard bound == 0 else { throw RawClientError(description: "bind to \(source) failed: errno \(errno)") }
        }
        if let size = receiveBuffer {
            var s = Int32(size)
            setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &s, socklen_t(MemoryLayout<Int32>.size))
        }
        var tv = timeval(tv_sec: Int(timeout), tv_usec: Int((timeout - floor(timeout)) * 1_000_000))
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = in_port_t(UInt16(port).bigEndian)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        // No close here: a class whose stored properties are all set runs `deinit` when its init throws, and a
        // second close could close a descriptor another thread has just been given.
        guard rc == 0 else { throw RawClientError(description: "connect to \(port) failed: errno \(errno)") }
    }

    /// Set once ``reset()`` closed the descriptor, so `deinit` does not close it (or a reused number) again.
    private var released = false

    deinit { if !released { Glibc.close(fd) } }

    func close() { shutdown(fd, Int32(SHUT_RDWR)) }

    /// Hangs up abruptly: closes the socket with a zero linger, so the peer gets a reset instead of a FIN.
    func reset() {
        guard !released else { return }
        var l = linger(l_onoff: 1, l_linger: 0)
        setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, socklen_t(MemoryLayout<linger>.size))
        Glibc.close(fd)
        released = true
    }

    /// True when bytes (or an EOF or error) can be read now or arrive within `timeout`.
    func waitReadable(timeout: TimeInterval) -> Bool {
        if !buffer.isEmpty { return true }
        var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        return poll(&p, 1, Int32(timeout * 1000)) > 0
    }

    /// A sender for this connection's socket that another thread can own (for a send that blocks while the
    /// gateway stops reading); it holds its own descriptor for the same socket.
    func makeSender() -> RawSender { RawSender(fd: dup(fd)) }

    func send(_ text: String) throws { try send(Array(text.utf8)) }

    func send(_ bytes: [UInt8]) throws {
        var offset = 0
        while offset < bytes.count {
            let n = bytes[offset...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            guard n > 0 else { throw RawClientError(description: "send failed: errno \(errno)") }
            offset += n
        }
    }

    /// Reads more bytes into the buffer; false on EOF; throws on timeout or error.
    @discardableResult
    private func fill(max: Int = 65536) throws -> Bool {
        var chunk = [UInt8](repeating: 0, count: max)
        let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, max, 0) }
        if n == 0 {
            peerClosed = true
            return false
        }
        if n < 0 {
            if errno == ECONNRESET {
                peerClosed = true
                return false
            }
            throw RawClientError(description: "recv failed or timed out: errno \(errno)")
        }
        buffer.append(contentsOf: chunk[0..<n])
        return true
    }

    private func readLine() throws -> String? {
        while true {
            if let i = buffer.firstIndex(of: 10) {
                var line = Array(buffer[0..<i])
                buffer.removeFirst(i + 1)
                if line.last == 13 { line.removeLast() }
                return String(decoding: line, as: UTF8.self)
            }
            if try !fill() { return nil }
        }
    }

    private func readExactly(_ n: Int) throws -> [UInt8] {
        while buffer.count < n {
            if try !fill() { throw RawClientError(description: "EOF after \(buffer.count) of \(n) body bytes") }
        }
        let out = Array(buffer[0..<n])
        buffer.removeFirst(n)
        return out
    }

    /// Reads one response's status line and headers, leaving its body unread (for ``drain(count:)``); nil when
    /// the connection closed before a status line.
    func readHead() throws -> RawResponse? {
        guard let statusLine = try readLine() else { return nil }
        let parts = statusLine.split(separator: " ", maxSplits: 2)
        guard parts.count >= 2, let status = Int(parts[1]) else {
            throw RawClientError(description: "bad status line: \(statusLine)")
        }
        var headers: [(String, String)] = []
        while let line = try readLine(), !line.isEmpty {
            guard let colon = line.firstIndex(of: ":") else { throw RawClientError(description: "bad header: \(line)") }
            headers.append((String(line[..<colon]), line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)))
        }
        return RawResponse(status: status, headers: headers, body: [])
    }

    /// Reads one response; nil when the connection closed before a status line. Interim 1xx responses are
    /// returned like any other.
    func readResponse(forHEAD: Bool = false) throws -> RawResponse? {
        guard var response = try readHead() else { return nil }
        let status = response.status
        if forHEAD || status < 200 || status == 204 || status == 304 { return response }
        if let te = response.header("transfer-encoding"), te.lowercased() == "chunked" {
            while let sizeLine = try readLine() {
                let size = Int(sizeLine.split(separator: ";")[0], radix: 16) ?? 0
                if size == 0 {
                    while let t = try readLine(), !t.isEmpty {}
                    break
                }
                response.body += try readExactly(size)
                _ = try readLine()
            }
        } else if let cl = response.header("content-length"), let n = Int(cl) {
            response.body = try readExactly(n)
        } else {
            while try fill() {}
            response.body = buffer
            buffer.removeAll()
        }
        return response
    }

    /// Reads the next chunk of a chunked body (after ``readHead()``): its data, empty for the last chunk.
    func readChunkData() throws -> [UInt8] {
        guard let sizeLine = try readLine(), let size = Int(sizeLine.split(separator: ";")[0], radix: 16) else {
            throw RawClientError(description: "no chunk size line")
        }
        if size == 0 {
            while let t = try readLine(), !t.isEmpty {}
            return []
        }
        let data = try readExactly(size)
        _ = try readLine()
        return data
    }

    /// Reads a body of `count` bytes as a stream, `chunk` bytes per read, discarding it; returns bytes read.
    func drain(count: Int) throws -> Int {
        var total = min(buffer.count, count)
        buffer.removeFirst(total)
        var chunk = [UInt8](repeating: 0, count: 65536)
        while total < count {
            let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, min(65536, count - total), 0) }
            if n <= 0 { break }
            total += n
        }
        return total
    }

    /// Whatever bytes are buffered or arrive next.
    func readChunk() throws -> [UInt8] {
        if buffer.isEmpty { try fill() }
        defer { buffer.removeAll() }
        return buffer
    }

    /// Reads up to `into.count` bytes (buffered first); returns how many.
    func drainInto(_ into: inout [UInt8]) throws -> Int {
        if buffer.isEmpty { try fill() }
        let n = min(into.count, buffer.count)
        for i in 0..<n { into[i] = buffer[i] }
        buffer.removeFirst(n)
        return n
    }

    /// Reads and discards everything until the peer closes (true, with the bytes read) or a read times out or
    /// fails otherwise (false).
    func readToEnd() -> (bytes: Int, closed: Bool) {
        var total = buffer.count
        buffer.removeAll()
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, 65536, 0) }
            if n > 0 {
                total += n
            } else if n == 0 || errno == ECONNRESET {
                peerClosed = true
                return (total, true)
            } else {
                return (total, false)
            }
        }
    }

    /// Waits for the peer to close the connection (reading and discarding anything else).
    func waitForClose() -> Bool {
        while true {
            do {
                if try !fill() { return true }
            } catch {
                return false
            }
        }
    }
}

/// Writes to a socket shared with a ``RawConnection`` from another thread, counting what the kernel took.
final class RawSender: Sendable {
    private let fd: Int32
    private let sentBytes = Atomic<Int>(0)

    private let state = Atomic<Int>(0)

    /// Takes a descriptor of its own; a send blocked for 30 s fails (so no thread outlives its test for long).
    init(fd: Int32) {
        self.fd = fd
        var tv = timeval(tv_sec: 30, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    }

    /// The background send of ``startSending(_:)`` returned.
    var finished: Bool { state.load(ordering: .relaxed) != 0 }
    /// It returned because a send failed (the peer closed or reset the connection, or it stayed blocked).
    var failed: Bool { state.load(ordering: .relaxed) == 2 }

    /// Sends `bytes` from a thread of its own.
    func startSending(_ bytes: [UInt8]) {
        Thread { [self] in
            let ok = self.send(bytes)
            self.state.store(ok ? 1 : 2, ordering: .relaxed)
        }.start()
    }

    deinit { Glibc.close(fd) }

    /// Bytes the kernel accepted so far.
    var sent: Int { sentBytes.load(ordering: .relaxed) }

    /// Sends everything, 64 KiB per call so ``sent`` shows progress; false once a send fails (the peer closed or
    /// reset the connection).
    @discardableResult
    func send(_ bytes: [UInt8]) -> Bool {
        var offset = 0
        while offset < bytes.count {
            let end = min(bytes.count, offset + 65536)
            let n = bytes[offset..<end].withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            guard n > 0 else { return false }
            offset += n
            sentBytes.add(n, ordering: .relaxed)
        }
        return true
    }
}

/// One request on a fresh connection.
func request(
    port: Int, _ method: String, _ path: String, headers: [(String, String)] = [], body: String? = nil
) throws -> RawResponse {
    let c = try RawConnection(port: port)
    var text = "\(method) \(path) HTTP/1.1\r\nHost: gateway.test\r\n"
    for (n, v) in headers { text += "\(n): \(v)\r\n" }
    if let body { text += "Content-Length: \(body.utf8.count)\r\n" }
    text += "Connection: close\r\n\r\n" + (body ?? "")
    try c.send(text)
    guard let r = try c.readResponse(forHEAD: method == "HEAD") else {
        throw RawClientError(description: "connection closed without a response")
    }
    return r
}
