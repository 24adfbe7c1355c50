import Foundation
import Policy
import Synchronization
import Testing

/// Live: the audit log of the real binary — what is recorded, the hash chain, rotation, restarts, graceful
/// stop and back-pressure.
@Suite(.serialized) struct AuditTests {
    static func config(upstream: Int, log: String, rotate: String = "100MiB", fsync: String = "batch", extra: String = "", store: String = "") -> String {
        """
        server: {listen: 127.0.0.1:0, admin_listen: 127.0.0.1:0, admin_token_env: GH_TEST_ADMIN_TOKEN, threads: 2}
        \(store)
        identity:
          header_tenancy: api_key_only
          jwt:
            issuers:
              - {issuer: "https://hs.test/", audiences: [api], algorithms: [HS256], secret_env: GH_TEST_HS_SECRET, tenant_claim: org_id}
        plans: {free: {features: [core]}}
        tenants:
          acme: {plan: free, api_keys: [{id: ci, sha256: \(Digest.hex(Digest.sha256("gh_audit_test_key".utf8)))}]}
        upstreams:
          app: {targets: [127.0.0.1:\(upstream)]}
        routes:
          - {name: api, match: {path_prefix: /api}, upstream: app, auth: required}
        audit:
          methods: [POST, PUT, PATCH, DELETE]
          denials: true
        \(extra)
          sinks:
            - file: {path: "\(log)", rotate_bytes: \(rotate), fsync: \(fsync)}
        """
    }

    static let env = ["GH_TEST_ADMIN_TOKEN": "adm", "GH_TEST_HS_SECRET": TestKeys.hsSecret]

    /// A log directory and an upstream for one test, removed and stopped when the test ends.
    final class Setup {
        let dir: URL
        let log: String
        let up: TestUpstream

        init() throws {
            dir = try AuditTests.logDirectory()
            log = dir.appendingPathComponent("audit.jsonl").path
            up = try TestUpstream()
        }

        func gateway(
            rotate: String = "100MiB", extra: String = "", store: String = "", sinks: String = "",
            environment: [String: String] = [:]
        ) throws -> GatewayProcess {
            try GatewayProcess(
                yaml: AuditTests.config(upstream: up.port, log: log, rotate: rotate, extra: extra, store: store) + sinks,
                environment: AuditTests.env.merging(environment) { _, new in new })
        }

        deinit {
            up.stop()
            try? FileManager.default.removeItem(at: dir)
        }
    }

    static func logDirectory() throws -> URL {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("gh-audit-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        return dir
    }

    /// The log's files, oldest first (rotated ones, then the current one).
    static func files(_ log: String) -> [String] {
        let dir = (log as NSString).deletingLastPathComponent
        let base = (log as NSString).lastPathComponent
        let rotated = ((try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? [])
            .filter { $0.hasPrefix(base + ".") }.sorted().map { dir + "/" + $0 }
        return rotated + [log]
    }

    static func records(_ log: String) -> [[String: Any]] {
        files(log).flatMap { path -> [[String: Any]] in
            let text = (try? String(contentsOfFile: path, encoding: .utf8)) ?? ""
            return text.split(separator: "\n").compactMap {
                (try? JSONSerialization.jsonObject(with: Data($0.utf8))) as? [String: Any]
            }
        }
    }

    /// Runs `gatehouse audit verify` on `paths` (then `options`): exit status and output.
    static func verify(
        _ paths: [String], _ options: [String] = [], environment: [String: String] = [:]
    ) throws -> (status: Int32, output: String) {
        try run(GatewayProcess.binary, ["audit", "verify"] + paths + options, environment: environment)
    }

    /// Runs `script` with python3 on `arguments`: exit status and output.
    static func python(
        _ script: String, _ arguments: [String], environment: [String: String] = [:]
    ) throws -> (status: Int32, output: String) {
        try run("/usr/bin/python3", ["-c", script] + arguments, environment: environment)
    }

    /// Runs a program to its end with `environment` added to this process's: exit status, stdout and stderr.
    static func run(_ program: String, _ arguments: [String], environment: [String: String]) throws -> (status: Int32, output: String) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: program)
        p.arguments = arguments
        p.environment = ProcessInfo.processInfo.environment.merging(environment) { _, new in new }
        let out = Pipe()
        p.standardOutput = out
        p.standardError = out
        try p.run()
        let data = out.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return (p.terminationStatus, String(decoding: data, as: UTF8.self))
    }

    @Test func writesAndDenialsAreRecordedWithIdentityAndNoSecrets() throws {
        let setup = try Setup()
        defer { withExtendedLifetime(setup) {} }
        let log = setup.log
        let gw = try setup.gateway()
        defer { gw.stop() }
        let token = Tok.hs256(Tok.claims(tenant: "acme", sub: "alice"))
        let bearer = [("Authorization", "Bearer " + token)]
        var ids: [String: String] = [:]
        for method in ["POST", "PUT", "PATCH", "DELETE", "GET"] {
            let r = try request(port: gw.port, method, "/api/items?secret=shh", headers: bearer, body: method == "GET" ? nil : "{}")
            #expect(r.status == 200)
            ids[method] = r.header("X-Request-ID")
        }
        let keyed = try request(port: gw.port, "POST", "/api/keyed", headers: [("X-API-Key", "gh_audit_test_key")], body: "{}")
        #expect(keyed.status == 200)
        let denied = try request(port: gw.port, "GET", "/api/items", headers: [("Authorization", "Bearer " + token + "x")])
        #expect(denied.status == 401)
        let framing = try RawConnection(port: gw.port)
        try framing.send("POST /api/x HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n")
        #expect(try framing.readResponse()?.status == 400)
        try waitUntil { Self.records(log).count == 7 }
        let records = Self.records(log)
        let byID = Dictionary(records.map { ($0["request_id"] as? String ?? "", $0) }, uniquingKeysWith: { a, _ in a })
        for method in ["POST", "PUT", "PATCH", "DELETE"] {
            let r = try #require(byID[ids[method]!], "\(method) has a record")
            #expect(r["method"] as? String == method)
            #expect(r["tenant"] as? String == "acme" && r["user"] as? String == "alice")
            #expect(r["status"] as? Int == 200 && r["decision"] as? String == "allow")
            #expect(r["route"] as? String == "api" && r["upstream"] as? String == "app")
            #expect(r["path"] as? String == "/api/items")  // the query is not recorded
            #expect((r["latency_ms"] as? Double ?? -1) >= 0)
            #expect(r["client_ip"] as? String == "127.0.0.1")
            #expect((r["ts"] as? String)?.hasSuffix("Z") == true)
        }
        #expect(byID[ids["GET"]!] == nil)  // reads are not audited
        let deny = try #require(records.first { $0["request_id"] as? String == denied.header("X-Request-ID") })
        #expect(deny["code"] as? String == "unauthenticated" && deny["decision"] as? String == "deny" && deny["status"] as? Int == 401)
        #expect(records.contains { $0["code"] as? String == "bad_request" && $0["status"] as? Int == 400 })
        #expect(records.contains { $0["path"] as? String == "/api/keyed" && $0["tenant"] as? String == "acme" })
        let text = Self.files(log).map { (try? String(contentsOfFile: $0, encoding: .utf8)) ?? "" }.joined()
        #expect(!text.contains(token.split(separator: ".")[2]))
        #expect(!text.contains("gh_audit_test_key") && !text.contains("shh") && !text.contains("Bearer"))
        let metrics = try request(port: gw.adminPort!, "GET", "/metrics").text
        #expect(metrics.contains("gatehouse_audit_queue_depth 0"))
        #expect(metrics.contains("gatehouse_audit_records_total 7"))
    }

    @Test func verifyPassesOnARealLogAndNamesTheFirstBadRecord() throws {
        let setup = try Setup()
        defer { withExtendedLifetime(setup) {} }
        let log = setup.log
        let gw = try setup.gateway()
        let bearer = [("Authorization", "Bearer " + Tok.hs256(Tok.claims(tenant: "acme", sub: "bob")))]
        for i in 0..<20 {
            #expect(try request(port: gw.port, "POST", "/api/n/\(i)", headers: bearer, body: "\(i)").status == 200)
        }
        #expect(gw.stop() == 0)
        let ok = try Self.verify([log])
        #expect(ok.status == 0 && ok.output.contains("ok: 20 records"))
        // The README's few lines of Python agree.
        let py = try Self.python(Self.pythonVerifier, [log])
        #expect(py.status == 0 && py.output.contains("ok 20"), "\(py.output)")

        let original = try String(contentsOfFile: log, encoding: .utf8)
        var lines = original.split(separator: "\n").map(String.init)
        // One field of one record edited: that record is named.
        var edited = lines
        edited[7] = edited[7].replacingOccurrences(of: "\"status\":200", with: "\"status\":201")
        try (edited.joined(separator: "\n") + "\n").write(toFile: log, atomically: true, encoding: .utf8)
        let bad = try Self.verify([log])
        #expect(bad.status == 1 && bad.output.contains(":8: record (seq 8): hash does not match"), "\(bad.output)")
        // A record removed: the next one's link is wrong.
        lines.remove(at: 12)
        try (lines.joined(separator: "\n") + "\n").write(toFile: log, atomically: true, encoding: .utf8)
        let gap = try Self.verify([log])
        #expect(gap.status == 1 && gap.output.contains(":13: record (seq 14): prev_hash does not match"), "\(gap.output)")
    }

    /// The canonical-form check from the README, verbatim (the key, for a keyed log, from `AUDIT_HMAC_KEY`).
    static let pythonVerifier = """
        import hashlib, hmac, json, os, sys
        key = os.environ.get("AUDIT_HMAC_KEY", "").encode()
        prev = None
        for path in sys.argv[1:]:
            for n, line in enumerate(open(path, encoding="utf-8"), 1):
                line = line.rstrip("\\n")
                i = line.rindex(',"hash":"')
                body, digest = (line[:i] + "}").encode(), line[i + 9:-2]
                rec = json.loads(line)
                mac = hmac.new(key, body, hashlib.sha256) if key else hashlib.sha256(body)
                assert mac.hexdigest() == digest == rec["hash"], (path, n)
                assert prev is None or (rec["prev_hash"] == prev["hash"] and rec["seq"] == prev["seq"] + 1), (path, n)
                prev = rec
        print("ok", prev["seq"] if prev else 0)
        """

    @Test func theChainContinuesAcrossRotationAndRestarts() throws {
        let setup = try Setup()
        defer { withExtendedLifetime(setup) {} }
        let log = setup.log
        let bearer = [("Authorization", "Bearer " + Tok.hs256(Tok.claims(tenant: "acme", sub: "carol")))]
        for round in 0..<2 {
            let gw = try setup.gateway(rotate: "2KiB")
            for i in 0..<15 {
                #expect(try request(port: gw.port, "DELETE", "/api/r\(round)/\(i)", headers: bearer).status == 200)
            }
            #expect(gw.stop() == 0)
        }
        let files = Self.files(log)
        #expect(files.count >= 4)
        let all = try Self.verify(files)
        #expect(all.status == 0 && all.output.contains("ok: 30 records (seq 1..30)"), "\(all.output)")
        // Files out of order break the chain.
        let swapped = try Self.verify([files[1], files[0]] + files.dropFirst(2))
        #expect(swapped.status == 1)
    }

    @Test func aGracefulStopWritesTheRecordOfEveryAnsweredWrite() throws {
        let setup = try Setup()
        defer { withExtendedLifetime(setup) {} }
        let log = setup.log
        let gw = try setup.gateway()
        let token = Tok.hs256(Tok.claims(tenant: "acme", sub: "dave"))
        let answered = Mutex<[String]>([])
        let total = Atomic<Int>(0)
        let threads = (0..<8).map { w in
            Thread {
                guard let c = try? RawConnection(port: gw.port) else { return }
                var n = 0
                while true {
                    n += 1
                    let req = "POST /api/w\(w)/\(n) HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer \(token)\r\nContent-Length: 2\r\n\r\nhi"
                    guard (try? c.send(req)) != nil, let r = try? c.readResponse() else { return }
                    if let id = r.header("X-Request-ID"), r.status == 200 { answered.withLock { $0.append(id) } }
                    total.add(1, ordering: .relaxed)
                    if r.header("Connection")?.lowercased() == "close" { return }
                }
            }
        }
        for t in threads { t.start() }
        // Stop once the writers have had plenty answered, while they are still sending.
        try waitUntil(seconds: 30) { total.load(ordering: .relaxed) >= 4000 }
        #expect(gw.stop() == 0)
        let ids = Set(answered.withLock { $0 })
        #expect(ids.count >= 4000)
        let recorded = Set(Self.records(log).compactMap { $0["request_id"] as? String })
        let missing = ids.subtracting(recorded)
        #expect(missing.isEmpty, "\(missing.count) answered writes have no record")
        #expect(try Self.verify([log]).status == 0)
    }

    @Test func aStuckSinkIsBackPressureNotLoss() throws {
        let redis = try RedisServer()
        defer { redis.stop() }
        let setup = try Setup()
        defer { withExtendedLifetime(setup) {} }
        let log = setup.log
        let up = setup.up
        let store = "store: {redis: \"redis://127.0.0.1:\(redis.port)/0\", timeout: 100ms, key_prefix: ghaudit, rate_limit_mode: exact}"
        let gw = try setup.gateway(
            extra: "  queue_size: 2\n  queue_timeout: 200ms", store: store,
            sinks: "\n    - redis_stream: {stream: \"ghaudit:log\", maxlen: 1000}\n")
        defer { gw.stop() }
        let bearer = [("Authorization", "Bearer " + Tok.hs256(Tok.claims(tenant: "acme", sub: "erin")))]
        #expect(try request(port: gw.port, "POST", "/api/before", headers: bearer, body: "1").status == 200)
        let raw = try RawConnection(port: redis.port)
        func streamLength() -> String {
            guard (try? raw.send("XLEN ghaudit:log\r\n")) != nil else { return "" }
            return String(decoding: (try? raw.readChunk()) ?? [], as: UTF8.self)
        }
        // Both sinks have the first record before Redis freezes.
        try waitUntil { Self.records(log).count == 1 && streamLength() == ":1\r\n" }
        redis.pause()
        var resumed = false
        defer { if !resumed { redis.resume() } }
        // The stream sink cannot take records: the writer holds them; two writes fill the queue's places.
        #expect(try request(port: gw.port, "POST", "/api/a", headers: bearer, body: "1").status == 200)
        let b = try request(port: gw.port, "POST", "/api/b", headers: bearer, body: "1")
        #expect(b.status == 200, "\(b.text)")
        let refused = try request(port: gw.port, "POST", "/api/c", headers: bearer, body: "1")
        #expect(refused.status == 503 && refused.json["code"] as? String == "audit_unavailable")
        #expect(refused.header("Retry-After") == "1")
        #expect(up.requests.filter { $0.uri == "/api/c" }.isEmpty)
        let depth = try request(port: gw.adminPort!, "GET", "/metrics").text
        #expect(!depth.contains("gatehouse_audit_queue_depth 0\n"))
        redis.resume()
        resumed = true
        // Nothing lost: both writes and the refusal reach the file and the stream, once each.
        try waitUntil(seconds: 10) { Self.records(log).count == 4 }
        let paths = Self.records(log).compactMap { $0["path"] as? String }
        #expect(paths == ["/api/before", "/api/a", "/api/b", "/api/c"])
        try waitUntil(seconds: 5) { streamLength() == ":4\r\n" }
        #expect(try request(port: gw.port, "POST", "/api/after", headers: bearer, body: "1").status == 200)
    }

    // MARK: Issue 12: a keyed chain, a checked tail, capped paths, a bounded denial flood

    static let auditKey = "gh-audit-test-key-0123456789abcdef"

    /// What someone with write access but no key can do: edit the third record and re-chain every hash with
    /// plain SHA-256.
    static let plainRechain = """
        import hashlib, sys
        out, prev = [], "0" * 64
        for line in open(sys.argv[1], encoding="utf-8"):
            line = line.rstrip("\\n")
            body = line[:line.rindex(',"hash":"')] + "}"
            body = body[:body.rindex(',"prev_hash":"')] + ',"prev_hash":"' + prev + '"}'
            if len(out) == 2:
                body = body.replace('"user":"frank"', '"user":"mallory"')
            prev = hashlib.sha256(body.encode()).hexdigest()
            out.append(body[:-1] + ',"hash":"' + prev + '"}')
        open(sys.argv[1], "w", encoding="utf-8").write("\\n".join(out) + "\\n")
        """

    @Test func aKeyedLogVerifiesOnlyWithItsKey() throws {
        let setup = try Setup()
        defer { withExtendedLifetime(setup) {} }
        let log = setup.log
        let keyed = "  hmac_key_env: GH_TEST_AUDIT_KEY"
        // The variable named but not set: the gateway does not start, and says why.
        #expect {
            try setup.gateway(extra: keyed)
        } throws: { error in
            "\(error)".contains("audit.hmac_key_env: environment variable GH_TEST_AUDIT_KEY is not set or empty")
        }
        let gw = try setup.gateway(extra: keyed, environment: ["GH_TEST_AUDIT_KEY": Self.auditKey])
        let bearer = [("Authorization", "Bearer " + Tok.hs256(Tok.claims(tenant: "acme", sub: "frank")))]
        for i in 0..<8 {
            #expect(try request(port: gw.port, "PUT", "/api/k/\(i)", headers: bearer, body: "\(i)").status == 200)
        }
        #expect(try request(port: gw.port, "GET", "/api/k").status == 401)
        // A reload naming a variable that is not there is refused; the running log keeps its key.
        let configPath = gw.directory.appendingPathComponent("gateway.yaml").path
        let yaml = try String(contentsOfFile: configPath, encoding: .utf8)
        try yaml.replacingOccurrences(of: "GH_TEST_AUDIT_KEY", with: "GH_TEST_AUDIT_KEY_GONE")
            .write(toFile: configPath, atomically: true, encoding: .utf8)
        let reload = try request(port: gw.adminPort!, "POST", "/admin/reload", headers: [("Authorization", "Bearer adm")])
        #expect(reload.status == 422 && reload.text.contains("GH_TEST_AUDIT_KEY_GONE is not set or empty"), "\(reload.text)")
        #expect(try request(port: gw.port, "PUT", "/api/k/after", headers: bearer, body: "x").status == 200)
        #expect(gw.stop() == 0)

        let key = ["GH_TEST_AUDIT_KEY": Self.auditKey]
        let ok = try Self.verify([log], ["--key-env", "GH_TEST_AUDIT_KEY"], environment: key)
        #expect(ok.status == 0 && ok.output.contains("ok: 10 records (seq 1..10)"), "\(ok.output)")
        let unkeyed = try Self.verify([log])
        #expect(unkeyed.status == 1 && unkeyed.output.contains(":1: record (seq 1): hash does not match"), "\(unkeyed.output)")
        let wrong = try Self.verify([log], ["--key-env", "GH_TEST_WRONG_KEY"], environment: ["GH_TEST_WRONG_KEY": "not-the-key"])
        #expect(wrong.status == 1 && wrong.output.contains(":1: record (seq 1): hash does not match"), "\(wrong.output)")
        let unset = try Self.verify([log], ["--key-env", "GH_TEST_UNSET_KEY"])
        #expect(unset.status != 0 && unset.output.contains("GH_TEST_UNSET_KEY is not set or empty"), "\(unset.output)")
        // The README's Python, given the key.
        let py = try Self.python(Self.pythonVerifier, [log], environment: ["AUDIT_HMAC_KEY": Self.auditKey])
        #expect(py.status == 0 && py.output.contains("ok 10"), "\(py.output)")

        // A forgery re-chained with plain SHA-256 is a valid plain chain (what the key is for), and fails under
        // the key at its first record.
        let forge = try Self.python(Self.plainRechain, [log])
        #expect(forge.status == 0, "\(forge.output)")
        #expect(try String(contentsOfFile: log, encoding: .utf8).contains("mallory"))
        #expect(try Self.verify([log]).status == 0)
        let forged = try Self.verify([log], ["--key-env", "GH_TEST_AUDIT_KEY"], environment: key)
        #expect(forged.status == 1 && forged.output.contains(":1: record (seq 1): hash does not match"), "\(forged.output)")
        // A gateway keyed again refuses to go on from the (now plain) newest record: the chain would mix two modes
        // and no single verify would accept it.
        #expect {
            try setup.gateway(extra: keyed, environment: key)
        } throws: { error in
            "\(error)".contains("not sealed under the configured key")
        }
        #expect(try Self.verify([log]).status == 0, "the refused start wrote nothing")
    }

    @Test func verifyWithTheStreamFindsACutTail() throws {
        let redis = try RedisServer()
        defer { redis.stop() }
        let setup = try Setup()
        defer { withExtendedLifetime(setup) {} }
        let log = setup.log
        let store = "store: {redis: \"redis://127.0.0.1:\(redis.port)/0\", key_prefix: ghtail, rate_limit_mode: exact}"
        let gw = try setup.gateway(store: store, sinks: "\n    - redis_stream: {stream: \"ghtail:audit\", maxlen: 1000}\n")
        let bearer = [("Authorization", "Bearer " + Tok.hs256(Tok.claims(tenant: "acme", sub: "grace")))]
        for i in 0..<12 {
            #expect(try request(port: gw.port, "PATCH", "/api/s/\(i)", headers: bearer, body: "\(i)").status == 200)
        }
        #expect(gw.stop() == 0)
        let stream = ["--stream", "redis://127.0.0.1:\(redis.port)/0", "ghtail:audit"]
        let whole = try Self.verify([log], stream)
        #expect(whole.status == 0 && whole.output.contains("ok: 12 records (seq 1..12)"), "\(whole.output)")
        #expect(whole.output.contains("stream ghtail:audit ends at the same record (seq 12)"), "\(whole.output)")

        // The newest two records deleted: the chain alone still verifies (the gap this closes)...
        let lines = try String(contentsOfFile: log, encoding: .utf8).split(separator: "\n")
        try (lines.dropLast(2).joined(separator: "\n") + "\n").write(toFile: log, atomically: true, encoding: .utf8)
        let plain = try Self.verify([log])
        #expect(plain.status == 0 && plain.output.contains("ok: 10 records"), "\(plain.output)")
        // ... the stream does not.
        let cut = try Self.verify([log], stream)
        #expect(cut.status == 1, "\(cut.output)")
        #expect(
            cut.output.contains(":10: record (seq 10): the files end at seq 10 but stream ghtail:audit goes on to seq 12"),
            "\(cut.output)")
        // A stream that does not exist cannot vouch for anything.
        let missing = try Self.verify([log], ["--stream", "redis://127.0.0.1:\(redis.port)/0", "ghtail:nothing"])
        #expect(missing.status == 1 && missing.output.contains("stream ghtail:nothing holds no audit record"), "\(missing.output)")
    }

    @Test func aHugePathIsCutAndMarkedInItsRecord() throws {
        let setup = try Setup()
        defer { withExtendedLifetime(setup) {} }
        let log = setup.log
        let gw = try setup.gateway()
        let path = "/api/" + String(repeating: "p", count: 12 * 1024)
        let denied = try request(port: gw.port, "GET", path)
        #expect(denied.status == 401 && denied.json["code"] as? String == "unauthenticated")
        try waitUntil { Self.records(log).count == 1 }
        #expect(gw.stop() == 0)
        let record = try #require(Self.records(log).first)
        let recorded = try #require(record["path"] as? String)
        #expect(recorded.utf8.count == AuditRecord.maxPathBytes && path.hasPrefix(recorded))
        #expect(record["path_truncated"] as? Bool == true)
        #expect(try String(contentsOfFile: log, encoding: .utf8).utf8.count < 2 * 1024)
        #expect(try Self.verify([log]).status == 0)
    }

    @Test func aDenialFloodIsSummedUpAndWritesAreNeverLimited() throws {
        let setup = try Setup()
        defer { withExtendedLifetime(setup) {} }
        let log = setup.log
        let gw = try setup.gateway(extra: "  max_denials_per_second: 5")
        let bearer = [("Authorization", "Bearer " + Tok.hs256(Tok.claims(tenant: "acme", sub: "heidi")))]
        let up = setup.up

        /// Denial records written one by one, the summaries' `suppressed`, and the summaries.
        func counts() -> (individual: Int, suppressed: Int, summaries: [[String: Any]]) {
            let records = Self.records(log)
            let summaries = records.filter { $0["type"] as? String == "denial_summary" }
            let individual = records.filter { $0["code"] as? String == "unauthenticated" }.count
            return (individual, summaries.reduce(0) { $0 + ($1["suppressed"] as? Int ?? 0) }, summaries)
        }
        /// `count` unauthenticated requests and `writes` allowed PUTs, interleaved; each checked by status and code.
        func flood(_ count: Int, writes: Int, round: Int) throws {
            for i in 0..<count {
                let r = try request(port: gw.port, "POST", "/api/flood/\(round)/\(i)", body: "x")
                #expect(r.status == 401 && r.json["code"] as? String == "unauthenticated")
                if i % (count / writes) == 0 {
                    #expect(try request(port: gw.port, "PUT", "/api/kept/\(round)/\(i)", headers: bearer, body: "1").status == 200)
                }
            }
        }

        // Round 1: the summary comes from the writer's tick once the second is over, with no further denial.
        var start = Date().timeIntervalSince1970
        try flood(40, writes: 10, round: 1)
        try waitUntil { counts().individual + counts().suppressed == 40 }
        var end = Date().timeIntervalSince1970
        var c = counts()
        #expect(c.individual <= 5 * (Int(end) - Int(start) + 1), "\(c.individual) denials written one by one")
        #expect(c.suppressed > 0 && !c.summaries.isEmpty)
        for summary in c.summaries {
            #expect(summary["decision"] as? String == "deny")
            #expect((summary["codes"] as? [String: Int])?["unauthenticated"] == summary["suppressed"] as? Int)
            #expect((summary["from"] as? String)?.hasSuffix(".000Z") == true && (summary["to"] as? String)?.hasSuffix(".000Z") == true)
        }

        // Round 2: a graceful stop right after the flood writes the current second's summary.
        start = Date().timeIntervalSince1970
        let before = c
        try flood(40, writes: 10, round: 2)
        #expect(gw.stop() == 0)
        end = Date().timeIntervalSince1970
        c = counts()
        #expect(c.individual + c.suppressed == 80)
        #expect(c.individual - before.individual <= 5 * (Int(end) - Int(start) + 1))
        // Not one allowed write was limited or lost; none of the denials was forwarded.
        let kept = Self.records(log).filter { ($0["path"] as? String)?.hasPrefix("/api/kept/") == true }
        #expect(kept.count == 20 && kept.allSatisfy { $0["status"] as? Int == 200 })
        #expect(up.requests.filter { $0.uri.hasPrefix("/api/flood/") }.isEmpty)
        let verified = try Self.verify([log])
        #expect(verified.status == 0, "\(verified.output)")
    }
}
