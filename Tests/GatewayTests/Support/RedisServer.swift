import Foundation

/// A real `redis-server` on a free loopback port, started for one test. A test that needs Redis fails loudly
/// when redis-server is missing (`make test` installs it); it never skips itself.
final class RedisServer: @unchecked Sendable {
    let port: Int
    private(set) var process: Process
    private let dir: URL

    static var binary: String {
        for path in ["/usr/bin/redis-server", "/usr/local/bin/redis-server"] where FileManager.default.isExecutableFile(atPath: path) {
            return path
        }
        return "/usr/bin/redis-server"
    }

    /// Extra `redis-server` options (`--user ...`, `--requirepass ...`).
    private let extra: [String]
    /// `tls`: the server speaks TLS only (its plain port is off), with this certificate and key.
    let tls: (cert: String, key: String)?

    init(tls: (cert: String, key: String)? = nil, arguments: [String] = []) throws {
        self.tls = tls
        self.extra = arguments
        guard FileManager.default.isExecutableFile(atPath: Self.binary) else {
            throw RawClientError(description: "redis-server is not installed: run `make test` (it installs it)")
        }
        dir = FileManager.default.temporaryDirectory.appendingPathComponent("gh-redis-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        port = try Self.freePort()
        process = Process()
        try start()
    }

    private func start() throws {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: Self.binary)
        var listen = ["--port", String(port)]
        if let tls {
            listen = [
                "--port", "0", "--tls-port", String(port), "--tls-cert-file", tls.cert, "--tls-key-file", tls.key,
                "--tls-auth-clients", "no",
            ]
        }
        p.arguments = listen + ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", dir.path] + extra
        p.standardOutput = FileHandle.nullDevice
        p.standardError = FileHandle.nullDevice
        try p.run()
        process = p
        try waitUntil { (try? RawConnection(port: self.port, timeout: 1)) != nil }
    }

    /// Freezes the server (SIGSTOP): connections stay open, nothing answers.
    func pause() { kill(process.processIdentifier, SIGSTOP) }
    func resume() { kill(process.processIdentifier, SIGCONT) }

    /// Kills the server and starts a new one on the same port.
    func restart() throws {
        stopProcess()
        try start()
    }

    private func stopProcess() {
        // SIGKILL: a test server needs no graceful shutdown (and SIGTERM is not always honoured here).
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
    }

    func stop() {
        stopProcess()
        try? FileManager.default.removeItem(at: dir)
    }

    static func freePort() throws -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        addr.sin_port = 0
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        let ok = withUnsafeMutablePointer(to: &addr) { ptr in
            ptr.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, len) == 0 && getsockname(fd, $0, &len) == 0 }
        }
        guard ok else { throw RawClientError(description: "no free port") }
        return Int(UInt16(bigEndian: addr.sin_port))
    }
}
