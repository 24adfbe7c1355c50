import Foundation
import Synchronization

/// Where the Python WebSocket peers live (beside this file).
func peerScript(_ name: String) -> String {
    URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent(name).path
}

/// Starts the Python peer `script` (beside this file) and waits for its `listening PORT` line; its process, port
/// and the lines it prints.
func startPythonPeer(_ script: String, _ arguments: [String], missing: String) throws -> (Process, Int, LineLog) {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    p.arguments = ["python3", peerScript(script)] + arguments
    let out = Pipe()
    p.standardOutput = out
    p.standardError = FileHandle.nullDevice
    let lines = LineLog()
    let started = lines.follow(out.fileHandleForReading) { $0.hasPrefix("listening ") }
    try p.run()
    guard started.wait(timeout: .now() + 20) == .success,
        let line = lines.all.first(where: { $0.hasPrefix("listening ") }), let port = Int(line.dropFirst(10))
    else {
        kill(p.processIdentifier, SIGKILL)
        throw RawClientError(description: missing)
    }
    return (p, port, lines)
}

/// A real WebSocket upstream (`ws_upstream.py`, the Python `websockets` library) on a loopback port, with what
/// it reported: HTTP requests that reached it, tunnels opened and closed, bytes sent while flooding.
final class WebSocketUpstream: Sendable {
    let process: Process
    let port: Int
    private let lines: LineLog

    /// `tls`: certificate and key files; the upstream then speaks TLS only (wss).
    init(tls: (cert: String, key: String)? = nil) throws {
        (process, port, lines) = try startPythonPeer(
            "ws_upstream.py", ["0"] + (tls.map { [$0.cert, $0.key] } ?? []),
            missing: "WebSocket upstream did not start (is python3-websockets installed? `make deps`)")
    }

    var log: [String] { lines.all }
    /// HTTP requests that reached the upstream (WebSocket handshakes or not).
    var requests: Int { log.filter { $0.hasPrefix("request ") }.count }
    var opened: Int { log.filter { $0.hasPrefix("open ") }.count }
    var closed: Int { log.filter { $0.hasPrefix("close ") }.count }
    /// Bytes the flood handler has handed to its connection so far.
    var sent: Int { log.last(where: { $0.hasPrefix("sent ") }).flatMap { Int($0.dropFirst(5)) } ?? 0 }

    /// SIGKILL: the test process may hold SIGTERM blocked, and its children inherit the mask.
    func stop() {
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
        process.waitUntilExit()
    }

    deinit { stop() }
}

/// Runs `ws_client.py` (the Python `websockets` client) against `url`: echoes of text and binary messages up to
/// 1 MiB, then `whoami`. Its JSON report.
func webSocketClient(_ url: String, headers: [String] = []) throws -> [String: Any] {
    let result = try runProcess("/usr/bin/env", ["python3", peerScript("ws_client.py"), url] + headers)
    guard result.status == 0, let object = try? JSONSerialization.jsonObject(with: result.out) as? [String: Any] else {
        throw RawClientError(
            description: "ws_client.py failed (\(result.status)): \(String(decoding: result.err, as: UTF8.self))")
    }
    return object
}

/// A WebSocket opening handshake (RFC 6455 §4.1) written by hand, for the cases a library would not send.
func handshake(path: String, headers: [String] = [], key: String = "dGhlIHNhbXBsZSBub25jZQ==") -> String {
    var text = "GET \(path) HTTP/1.1\r\nHost: gw.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
    text += "Sec-WebSocket-Key: \(key)\r\nSec-WebSocket-Version: 13\r\n"
    for h in headers { text += h + "\r\n" }
    return text + "\r\n"
}

/// Opens a tunnel through the gateway on a raw connection: the handshake's response head (101 or a refusal)
/// and the connection, whose next bytes are WebSocket frames.
func openTunnel(port: Int, path: String, headers: [String] = [], receiveBuffer: Int? = nil) throws -> (RawResponse, RawConnection) {
    let c = try RawConnection(port: port, timeout: 10, receiveBuffer: receiveBuffer)
    try c.send(handshake(path: path, headers: headers))
    guard let head = try c.readHead() else { throw RawClientError(description: "no answer to the handshake") }
    return (head, c)
}

/// One masked client frame (RFC 6455 §5.2): FIN set, `opcode` (1 text, 2 binary, 8 close), payload under 64 KiB.
func clientFrame(_ payload: [UInt8], opcode: UInt8 = 1) -> [UInt8] {
    var out: [UInt8] = [0x80 | opcode]
    if payload.count < 126 {
        out.append(0x80 | UInt8(payload.count))
    } else {
        out += [0x80 | 126, UInt8(payload.count >> 8), UInt8(payload.count & 0xff)]
    }
    let mask: [UInt8] = [0x12, 0x34, 0x56, 0x78]
    out += mask
    for (i, b) in payload.enumerated() { out.append(b ^ mask[i % 4]) }
    return out
}

/// Reads one unmasked server frame's payload (FIN frames under 64 KiB).
func readServerFrame(_ c: RawConnection) throws -> (opcode: UInt8, payload: [UInt8]) {
    var header = [UInt8](repeating: 0, count: 2)
    try readFully(c, &header)
    var length = Int(header[1] & 0x7f)
    if length == 126 {
        var ext = [UInt8](repeating: 0, count: 2)
        try readFully(c, &ext)
        length = Int(ext[0]) << 8 | Int(ext[1])
    }
    var payload = [UInt8](repeating: 0, count: length)
    try readFully(c, &payload)
    return (header[0] & 0x0f, payload)
}

private func readFully(_ c: RawConnection, _ into: inout [UInt8]) throws {
    var filled = 0
    while filled < into.count {
        var part = [UInt8](repeating: 0, count: into.count - filled)
        let n = try c.drainInto(&part)
        if n == 0 { throw RawClientError(description: "connection closed mid-frame") }
        into.replaceSubrange(filled..<filled + n, with: part[0..<n])
        filled += n
    }
}
