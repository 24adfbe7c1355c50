import ArgumentParser
import Foundation
import Policy

struct Audit: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Work with audit logs.", subcommands: [Verify.self])

    struct Verify: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Verify the hash chain of audit log files, given oldest first (e.g. var/audit.jsonl.* var/audit.jsonl).",
            discussion: "Exit 0 and the record count when every record's hash and link are right; exit 1 naming the first record that is not.")

        @Argument(help: "Audit log files (JSON lines), oldest first.")
        var paths: [String]

        func run() throws {
            var lines: [Substring] = []
            var origins: [(path: String, line: Int)] = []
            for path in paths {
                guard let data = FileManager.default.contents(atPath: path) else {
                    FileHandle.standardError.write(Data("\(path): cannot read\n".utf8))
                    throw ExitCode(1)
                }
                let text = String(decoding: data, as: UTF8.self)
                for (i, line) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() where !line.isEmpty {
                    lines.append(line)
                    origins.append((path, i + 1))
                }
            }
            switch AuditChain.verify(lines: lines) {
            case .ok(let count, let first, let last):
                print(count == 0 ? "ok: 0 records" : "ok: \(count) records (seq \(first)..\(last))")
            case .broken(let index, let reason):
                let o = origins[index]
                let seq = AuditChain.resuming(after: lines[index]).map { " (seq \($0.seq))" } ?? ""
                FileHandle.standardError.write(Data("\(o.path):\(o.line): record\(seq): \(reason)\n".utf8))
                throw ExitCode(1)
            }
        }
    }
}
