import ArgumentParser
import Foundation
import Gateway
import Policy

struct Audit: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Work with audit logs.", subcommands: [Verify.self])

    struct Verify: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Verify the hash chain of audit log files, given oldest first (e.g. var/audit.jsonl.* var/audit.jsonl).",
            discussion: """
                Exit 0 and the record count when every record's hash and link are right; exit 1 naming the first \
                record that is not. With --stream, the files must also end where the Redis stream sink ends (a cut \
                tail fails).
                """)

        @Argument(help: "Audit log files (JSON lines), oldest first.")
        var paths: [String]

        @Option(
            name: .customLong("key-env"),
            help: "Environment variable holding the HMAC key the log was written with (audit.hmac_key_env).")
        var keyEnv: String?

        @Option(
            name: .customLong("stream"), parsing: .upToNextOption,
            help: ArgumentHelp(
                "Also check the files' end against the newest entry of this redis_stream sink.",
                valueName: "redis-url> <stream"))
        var stream: [String] = []

        func validate() throws {
            guard stream.isEmpty || stream.count == 2 else {
                throw ValidationError("--stream takes two values: REDIS_URL STREAM")
            }
        }

        func run() throws {
            var key: [UInt8]? = nil
            if let env = keyEnv {
                guard let value = ProcessInfo.processInfo.environment[env], !value.isEmpty else {
                    throw ValidationError("--key-env: environment variable \(env) is not set or empty")
                }
                key = Array(value.utf8)
            }
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
            /// `PATH:LINE: record (seq N): reason` on stderr, exit 1.
            func fail(_ index: Int, _ reason: String) -> ExitCode {
                let o = origins[index]
                let seq = AuditChain.resuming(after: lines[index]).map { " (seq \($0.seq))" } ?? ""
                FileHandle.standardError.write(Data("\(o.path):\(o.line): record\(seq): \(reason)\n".utf8))
                return ExitCode(1)
            }
            let summary: String
            switch AuditChain.verify(lines: lines, key: key) {
            case .ok(let count, let first, let last):
                summary = count == 0 ? "ok: 0 records" : "ok: \(count) records (seq \(first)..\(last))"
            case .broken(let index, var reason):
                if index == 0 && reason.hasPrefix("hash does not match") {
                    reason += key == nil
                        ? " (a log written with audit.hmac_key_env verifies only with --key-env)"
                        : " (or the log was not written under this key)"
                }
                throw fail(index, reason)
            }
            guard stream.count == 2 else {
                print(summary)
                return
            }
            let (url, name) = (stream[0], stream[1])
            let newest: String?
            do {
                newest = try AuditStreamReader.newestRecord(url: url, stream: name)
            } catch {
                FileHandle.standardError.write(Data("--stream: \(error)\n".utf8))
                throw ExitCode(1)
            }
            let last = lines.count - 1
            switch AuditChain.compareTail(lines: lines, streamLine: newest?[...]) {
            case .matches(let seq):
                print(summary + "; stream \(name) ends at the same record (seq \(seq))")
            case .behind(let streamSeq, let filesLast):
                print(summary + "; stream \(name) ends at seq \(streamSeq), \(filesLast - streamSeq) records behind the files (not yet sent to it)")
            case .ahead(let streamSeq, let filesLast):
                let reason = "the files end at seq \(filesLast) but stream \(name) goes on to seq \(streamSeq): the records after seq \(filesLast) are missing from the files"
                if lines.isEmpty {
                    FileHandle.standardError.write(Data("\(paths.joined(separator: " ")): \(reason)\n".utf8))
                    throw ExitCode(1)
                }
                throw fail(last, reason)
            case .differs(let seq):
                let index = lines.firstIndex { AuditChain.resuming(after: $0)?.seq == seq } ?? last
                throw fail(index, "its hash differs from the record with seq \(seq) in stream \(name)")
            case .before(let streamSeq, let filesFirst):
                throw fail(0, "stream \(name) ends at seq \(streamSeq), before the files begin (seq \(filesFirst)): it cannot vouch for their end")
            case .empty:
                FileHandle.standardError.write(Data("--stream: stream \(name) holds no audit record (empty or missing)\n".utf8))
                throw ExitCode(1)
            }
        }
    }
}
