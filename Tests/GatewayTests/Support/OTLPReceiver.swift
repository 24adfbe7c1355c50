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
        (process, port, _) = try startPythonPeer(
            "otlp_receiver.py", [output, mode.rawValue],
            missing: "OTLP receiver did not start (is opentelemetry-proto installed? `make deps`)")
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
