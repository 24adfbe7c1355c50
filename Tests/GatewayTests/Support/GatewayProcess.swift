import Foundation
import Synchronization

/// The real `gatehouse` binary, started on loopback ports with a config written for one test.
final class GatewayProcess: Sendable {
    let process: Process
    let port: Int
    let adminPort: Int?
    let directory: URL
    private let lines: LineLog

    static var binary: String {
        if let path = ProcessInfo.processInfo.environment["GATEHOUSE_BIN"] { return path }
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().deletingLastPathComponent()
        return root.appendingPathComponent(".build/debug/gatehouse").path
    }

    /// Writes `yaml` (and `files`) to a fresh directory and starts `gatehouse serve` on it; returns once the
    /// gateway logs that it is listening.
    init(yaml: String, files: [String: String] = [:], environment: [String: String] = [:]) throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("gatehouse-test-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        directory = dir
        try yaml.write(to: dir.appendingPathComponent("gateway.yaml"), atomically: true, encoding: .utf8)
        for (name, text) in files {
            try text.write(to: dir.appendingPathComponent(name), atomically: true, encoding: .utf8)
        }
        guard FileManager.default.isExecutableFile(atPath: Self.binary) else {
            throw RawClientError(description: "gatehouse binary not found at \(Self.binary): run `swift build` first")
        }
        let p = Process()
        p.executableURL = URL(fileURLWithPath: Self.binary)
        p.arguments = ["serve", "--config", dir.appendingPathComponent("gateway.yaml").path]
        p.currentDirectoryURL = dir
        var env = ProcessInfo.processInfo.environment
        for (k, v) in environment { env[k] = v }
        p.environment = env
        let err = Pipe()
        p.standardError = err
        p.standardOutput = FileHandle.nullDevice
        let lines = LineLog()
        self.lines = lines
        let listening = lines.follow(err.fileHandleForReading) { $0.contains("gatehouse listening") }
        try p.run()
        process = p
        guard listening.wait(timeout: .now() + 30) == .success,
            let line = lines.all.first(where: { $0.contains("gatehouse listening") }),
            let object = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any],
            let listen = object["gh-listen"] as? String, let port = Int(listen.split(separator: ":").last ?? "")
        else {
            p.terminate()
            throw RawClientError(description: "gateway did not start: \(lines.all.joined(separator: "\n"))")
        }
        self.port = port
        if let admin = object["gh-admin"] as? String, let ap = Int(admin.split(separator: ":").last ?? "") {
            adminPort = ap
        } else {
            adminPort = nil
        }
    }

    var pid: Int32 { process.processIdentifier }
    var log: [String] { lines.all }

    /// Resident set size in bytes, from /proc.
    var rss: Int {
        let status = (try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)) ?? ""
        for line in status.split(separator: "\n") where line.hasPrefix("VmRSS:") {
            let kb = line.split(separator: " ", omittingEmptySubsequences: true)[1]
            return (Int(kb) ?? 0) * 1024
        }
        return 0
    }

    /// Sends `signal` and waits for the process to exit; returns its exit status.
    @discardableResult
    func stop(signal: Int32 = SIGTERM) -> Int32 {
        if process.isRunning { kill(pid, signal) }
        process.waitUntilExit()
        try? FileManager.default.removeItem(at: directory)
        return process.terminationStatus
    }

    deinit {
        if process.isRunning {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }
    }
}

/// Runs the `gatehouse` command line to its end: exit status, standard output and standard error.
func runGatehouse(_ arguments: [String], environment: [String: String] = [:]) throws -> (status: Int32, out: String, err: String) {
    let result = try runProcess(GatewayProcess.binary, arguments, environment: environment)
    return (result.status, String(decoding: result.out, as: UTF8.self), String(decoding: result.err, as: UTF8.self))
}

/// One route sending every path to upstream `app`, without authentication.
let catchAllRoute = """
      - name: all
        match: {path_prefix: /}
        upstream: app
        auth: none
    """

/// A gateway config for tests: loopback, port 0, small limits and fast timeouts unless overridden.
func testConfig(
    upstreams: [String: [Int]], routes: String, server: String = "", upstreamExtra: String = ""
) -> String {
    var yaml = """
        server:
          listen: 127.0.0.1:0
          admin_listen: 127.0.0.1:0
          admin_token_env: GH_TEST_ADMIN_TOKEN
          threads: 1
        \(server)
        upstreams:

        """
    for (name, ports) in upstreams.sorted(by: { $0.key < $1.key }) {
        yaml += "  \(name):\n    targets: [\(ports.map { "127.0.0.1:\($0)" }.joined(separator: ", "))]\n"
        yaml += "    connect_timeout: 500ms\n    response_timeout: 2s\n"
        if !upstreamExtra.isEmpty { yaml += upstreamExtra }
    }
    yaml += "routes:\n" + routes
    return yaml
}

/// Lines a child process wrote, collected by a reader thread.
final class LineLog: Sendable {
    private let lines = Mutex<[String]>([])
    func append(_ line: String) { lines.withLock { $0.append(line) } }
    var all: [String] { lines.withLock { $0 } }

    /// Collects the lines of `handle` on a thread of its own until it ends; the semaphore is signalled at the first
    /// line that is `ready`, or at the end.
    func follow(_ handle: FileHandle, ready: @escaping @Sendable (String) -> Bool) -> DispatchSemaphore {
        let signal = DispatchSemaphore(value: 0)
        Thread { [self] in
            var pending = Data()
            while true {
                let chunk = handle.availableData
                if chunk.isEmpty { break }
                pending.append(chunk)
                while let nl = pending.firstIndex(of: 10) {
                    let line = String(decoding: pending[pending.startIndex..<nl], as: UTF8.self)
                    pending.removeSubrange(pending.startIndex...nl)
                    append(line)
                    if ready(line) { signal.signal() }
                }
            }
            signal.signal()
        }.start()
        return signal
    }
}
