import Foundation

/// A real OTLP/HTTP trace receiver (`otlp_receiver.py`, decoding with the official `opentelemetry-proto` package)
/// on a loopback port; the spans it received, one JSON object each.
final class OTLPReceiver: Sendable {
    enum Mode: String { case normal, blackhole, refuse }

    let process: Process
    let port: Int
    let output: String

    init(mode: Mode = .normal) throws {
        output = FileManager.default.temporaryDirectory.appendingPathComponent("otlp-\(UUID().uuidString).jsonl").path
        FileManager.default.createFile(atPath: output, contents: nil)
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = ["python3", peerScript("otlp_receiver.py"), output, mode.rawValue]
        let out = Pipe()
        p.standardOutput = out
        p.standardError = FileHandle.nullDevice
        let lines = LineLog()
        let started = lines.follow(out.fileHandleForReading) { $0.hasPrefix("listening ") }
        try p.run()
        process = p
        guard started.wait(timeout: .now() + 20) == .success,
            let line = lines.all.first(where: { $0.hasPrefix("listening ") }), let port = Int(line.dropFirst(10))
        else {
            kill(p.processIdentifier, SIGKILL)
            throw RawClientError(description: "OTLP receiver did not start (is opentelemetry-proto installed? `make deps`)")
        }
        self.port = port
    }

    var endpoint: String { "http://127.0.0.1:\(port)" }

    /// Every span received so far.
    var spans: [[String: Any]] {
        let text = (try? String(contentsOfFile: output, encoding: .utf8)) ?? ""
        return text.split(separator: "\n").compactMap {
            try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any]
        }
    }

    /// Spans of one trace.
    func spans(trace: String) -> [[String: Any]] { spans.filter { $0["trace_id"] as? String == trace } }

    /// SIGKILL: the test process may hold SIGTERM blocked, and its children inherit the mask.
    func stop() {
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
        process.waitUntilExit()
        try? FileManager.default.removeItem(atPath: output)
    }

    deinit { stop() }
}
