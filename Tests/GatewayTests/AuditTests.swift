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

        func gateway(rotate: String = "100MiB", extra: String = "", store: String = "", sinks: String = "") throws -> GatewayProcess {
            try GatewayProcess(
                yaml: AuditTests.config(upstream: up.port, log: log, rotate: rotate, extra: extra, store: store) + sinks,
                environment: AuditTests.env)
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

    /// Runs `gatehouse audit verify` on `paths`: exit status and output.
    static func verify(_ paths: [String]) throws -> (status: Int32, output: String) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: GatewayProcess.binary)
        p.arguments = ["audit", "verify"] + paths
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
        let py = Process()
        py.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
        py.arguments = ["-c", Self.pythonVerifier, log]
        let out = Pipe()
        py.standardOutput = out
        try py.run()
        let pyText = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        py.waitUntilExit()
        #expect(py.terminationStatus == 0 && pyText.contains("ok 20"))

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

    /// The canonical-form check from the README, verbatim.
    static let pythonVerifier = """
        import hashlib, json, sys
        prev = None
        for path in sys.argv[1:]:
            for n, line in enumerate(open(path, encoding="utf-8"), 1):
                line = line.rstrip("\\n")
                i = line.rindex(',"hash":"')
                body, digest = line[:i] + "}", line[i + 9:-2]
                rec = json.loads(line)
                assert hashlib.sha256(body.encode()).hexdigest() == digest == rec["hash"], (path, n)
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
}
