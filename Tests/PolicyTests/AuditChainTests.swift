import Testing

@testable import Policy

/// The audit record's canonical form and the hash chain (pure).
@Suite struct AuditChainTests {
    func record(_ path: String, status: Int = 200, code: String? = nil) -> AuditRecord {
        AuditRecord(
            timeMillis: 1_795_000_000_123, requestID: "req-1", tenant: "acme", user: "u\"1", method: "POST", path: path,
            route: "api", status: status, decision: code == nil ? "allow" : "deny", code: code, latencyMicros: 1_234,
            clientIP: "127.0.0.1", upstream: code == nil ? "app" : nil)
    }

    @Test func canonicalFormIsFixed() {
        var chain = AuditChain()
        var r = record("/a\u{1}b\nc")
        r.traceID = "4bf92f3577b34da6a3ce929d0e0e4736"
        let line = chain.seal(r)
        #expect(line.hasPrefix(#"{"ts":"2026-11-18T"#))
        #expect(line.contains(#","seq":1,"request_id":"req-1","tenant":"acme","user":"u\"1","method":"POST","path":"/a\u0001b\nc","route":"api","status":200,"decision":"allow","code":null,"latency_ms":1.234,"client_ip":"127.0.0.1","upstream":"app","trace_id":"4bf92f3577b34da6a3ce929d0e0e4736","prev_hash":"0000"#))
        #expect(!line.contains("\n") && !line.contains("\u{1}"))
        let (body, hash) = AuditChain.split(line[...])!
        #expect(Digest.hex(Digest.sha256(body.utf8)) == hash)
        #expect(AuditChain.links(body)! == (1, AuditChain.genesis))
        #expect(CivilDate.rfc3339(milliseconds: 1_795_000_000_123).hasSuffix(".123Z"))
    }

    @Test func aCappedValueIsCutBeforeACharacterNeverInsideOne() {
        func capped(_ s: String, _ n: Int) -> String {
            var out: [UInt8] = []
            JSONText.appendQuoted(s[...], maxBytes: n, to: &out)
            return String(decoding: out, as: UTF8.self)
        }
        #expect(capped("abcdef", 3) == "\"abc\"")
        #expect(capped("ab€cd", 3) == "\"ab\"")  // € is 3 bytes: cutting at 3 or 4 would split it
        #expect(capped("ab€cd", 4) == "\"ab\"")
        #expect(capped("ab€cd", 5) == "\"ab€\"")
        #expect(capped("a\"b", 10) == "\"a\\\"b\"")
        #expect(capped("short", 1024) == JSONText.quote("short"))
    }

    @Test func byteEscapingMatchesTheStringEscaper() {
        for text in ["plain", "", "q\"b\\s", "\u{0}\u{1f}\u{7f}", "é€😀", "a\u{2028}b\u{2029}c\u{2027}", "\r\n\t", "\u{E2}x"] {
            var out: [UInt8] = []
            JSONText.appendQuoted(text, to: &out)
            #expect(String(decoding: out, as: UTF8.self) == JSONText.quote(text), "\(text.debugDescription)")
        }
    }

    @Test func verifyFindsEditsRemovalsAndReordering() {
        var chain = AuditChain()
        let lines = (0..<6).map { chain.seal(record("/r/\($0)", status: $0 == 3 ? 403 : 200, code: $0 == 3 ? "forbidden" : nil)) }
        #expect(AuditChain.verify(lines: lines.map { $0[...] }) == .ok(count: 6, first: 1, last: 6))
        var edited = lines
        edited[2] = edited[2].replacingOccurrences(of: #""tenant":"acme""#, with: #""tenant":"evil""#)
        #expect(AuditChain.verify(lines: edited.map { $0[...] }) == .broken(index: 2, reason: "hash does not match the record's content"))
        var removed = lines
        removed.remove(at: 4)
        guard case .broken(4, let why) = AuditChain.verify(lines: removed.map { $0[...] }) else {
            Issue.record("removal not found")
            return
        }
        #expect(why.contains("prev_hash"))
        #expect(AuditChain.verify(lines: [lines[1], lines[0]].map { $0[...] }) != .ok(count: 2, first: 2, last: 1))
        // A set starting later in the chain (older files removed) verifies from its first record on.
        #expect(AuditChain.verify(lines: lines.dropFirst(2).map { $0[...] }) == .ok(count: 4, first: 3, last: 6))
        // A record re-hashed after an edit still breaks the next link.
        var forged = AuditChain(seq: 2, lastHash: AuditChain.split(lines[1][...])!.hash)
        var tampered = lines
        tampered[2] = forged.seal(record("/forged"))
        #expect(AuditChain.verify(lines: tampered.map { $0[...] }) == .broken(index: 3, reason: "prev_hash does not match the hash of seq 3"))
        #expect(AuditChain.verify(lines: ["{}"[...]]) == .broken(index: 0, reason: "no hash member"))
    }

    @Test func theChainResumesFromARecoveredPosition() {
        var a = AuditChain()
        let first = (0..<3).map { a.seal(record("/x\($0)")) }
        var b = AuditChain(seq: a.seq, lastHash: a.lastHash)
        let more = (0..<2).map { b.seal(record("/y\($0)")) }
        #expect(AuditChain.verify(lines: (first + more).map { $0[...] }) == .ok(count: 5, first: 1, last: 5))
    }

    @Test func aKeyedChainVerifiesOnlyUnderItsKey() {
        let key = Array("audit-key-0123456789".utf8)
        var chain = AuditChain(key: key)
        let lines = (0..<4).map { chain.seal(record("/k/\($0)")) }
        let (body, hash) = AuditChain.split(lines[0][...])!
        #expect(Digest.hex(Digest.hmacSHA256(key: key, message: Array(body.utf8))) == hash)
        #expect(AuditChain.verify(lines: lines.map { $0[...] }, key: key) == .ok(count: 4, first: 1, last: 4))
        let mismatch = AuditChain.Verdict.broken(index: 0, reason: "hash does not match the record's content")
        #expect(AuditChain.verify(lines: lines.map { $0[...] }) == mismatch)
        #expect(AuditChain.verify(lines: lines.map { $0[...] }, key: Array("another-key".utf8)) == mismatch)
        // A forger without the key re-chains an edited log with plain SHA-256: it verifies as a plain log,
        // never under the key.
        var forger = AuditChain()
        let forged = (0..<4).map { forger.seal(record($0 == 2 ? "/forged" : "/k/\($0)")) }
        #expect(AuditChain.verify(lines: forged.map { $0[...] }) == .ok(count: 4, first: 1, last: 4))
        #expect(AuditChain.verify(lines: forged.map { $0[...] }, key: key) == mismatch)
        // A keyed chain resumes keyed from a recovered position.
        var resumed = AuditChain.resuming(after: lines[3][...])!.keyed(key)
        let more = resumed.seal(record("/k/4"))
        #expect(AuditChain.verify(lines: (lines + [more]).map { $0[...] }, key: key) == .ok(count: 5, first: 1, last: 5))
    }

    @Test func longPathsAreCutAtACharacterBoundaryAndMarked() {
        let exact = String(repeating: "a", count: AuditRecord.maxPathBytes)
        #expect(record(exact).path == exact && !record(exact).pathTruncated)
        var chain = AuditChain()
        #expect(!chain.seal(record(exact)).contains("path_truncated"))
        // "é" is two bytes: 1,023 of "a" then "é" would end one byte past the cap.
        let straddling = String(repeating: "a", count: 1023) + "é" + String(repeating: "b", count: 10_000)
        let r = record(straddling)
        #expect(r.pathTruncated && r.path == String(repeating: "a", count: 1023))
        let emoji = String(repeating: "😀", count: 4000)  // four bytes each
        #expect(record(emoji).path == String(repeating: "😀", count: 256))
        let line = chain.seal(record(straddling))
        #expect(line.contains(#""path":"\#(String(repeating: "a", count: 1023))","path_truncated":true,"route":"api""#))
        #expect(AuditChain.verify(lines: [chain.seal(record(emoji))[...]]) == .ok(count: 1, first: 3, last: 3))
    }

    @Test func theStreamTailShowsACutEndOfTheFiles() {
        var chain = AuditChain()
        let lines = (0..<6).map { chain.seal(record("/t/\($0)"))[...] }
        #expect(AuditChain.compareTail(lines: lines, streamLine: lines[5]) == .matches(seq: 6))
        #expect(AuditChain.compareTail(lines: lines, streamLine: lines[4]) == .behind(streamSeq: 5, filesLast: 6))
        #expect(AuditChain.compareTail(lines: Array(lines.prefix(4)), streamLine: lines[5]) == .ahead(streamSeq: 6, filesLast: 4))
        #expect(AuditChain.compareTail(lines: [], streamLine: lines[0]) == .ahead(streamSeq: 1, filesLast: 0))
        #expect(AuditChain.compareTail(lines: Array(lines.suffix(3)), streamLine: lines[1]) == .before(streamSeq: 2, filesFirst: 4))
        #expect(AuditChain.compareTail(lines: lines, streamLine: nil) == .empty)
        #expect(AuditChain.compareTail(lines: lines, streamLine: "not a record") == .empty)
        // The same seq with another content (another chain, or a record rewritten in the files).
        var other = AuditChain()
        let elsewhere = (0..<6).map { other.seal(record("/other/\($0)"))[...] }
        #expect(AuditChain.compareTail(lines: lines, streamLine: elsewhere[5]) == .differs(seq: 6))
        #expect(!AuditChain.StreamTail.differs(seq: 6).passes && AuditChain.StreamTail.behind(streamSeq: 5, filesLast: 6).passes)
    }

    @Test func resumingChecksTheNewestRecordsKey() throws {
        var plain = AuditChain()
        let line = plain.seal(record("/"))
        #expect(try AuditChain.resuming(after: line[...], key: nil)?.seq == 1)
        #expect(throws: AuditKeyMismatch.self) { try AuditChain.resuming(after: line[...], key: Array("k".utf8)) }
        var keyed = AuditChain().keyed(Array("k".utf8))
        let keyedLine = keyed.seal(record("/"))
        #expect(try AuditChain.resuming(after: keyedLine[...], key: Array("k".utf8))?.seq == 1)
        #expect(throws: AuditKeyMismatch.self) { try AuditChain.resuming(after: keyedLine[...], key: nil) }
        #expect(throws: AuditKeyMismatch.self) { try AuditChain.resuming(after: keyedLine[...], key: Array("other".utf8)) }
    }
}
