import Foundation

/// One audit record (SPEC "Audit records"), before it is chained.
///
/// The canonical form, which the hash covers, is the record's JSON exactly as written, members in this
/// order, without whitespace, and without the final `hash` member:
/// `{"ts":…,"seq":…,"request_id":…,"tenant":…,"user":…,"method":…,"path":…,"route":…,"status":…,
/// "decision":…,"code":…,"latency_ms":…,"client_ip":…,"upstream":…[,"rate_limit":"fail_open"],"prev_hash":…}`.
/// The line in the log is that text with `,"hash":"<64 hex>"` inserted before the closing brace, so
/// anyone can re-verify with a few lines of code (see ``AuditChain/verify(lines:)``, and the README's Python).
public struct AuditRecord: Sendable, Equatable {
    /// Request start, milliseconds since the epoch.
    public var timeMillis: Int64
    public var requestID: String
    public var tenant: String?
    public var user: String?
    public var method: String
    public var path: String
    public var route: String?
    public var status: Int
    public var decision: String
    public var code: String?
    /// Microseconds (written as milliseconds with three decimals).
    public var latencyMicros: Int64
    public var clientIP: String
    public var upstream: String?
    /// Admitted by a local bucket while the rate-limit store failed (`on_failure: open`).
    public var failOpen = false

    public init(
        timeMillis: Int64, requestID: String, tenant: String?, user: String?, method: String, path: String,
        route: String?, status: Int, decision: String, code: String?, latencyMicros: Int64, clientIP: String,
        upstream: String?
    ) {
        self.timeMillis = timeMillis
        self.requestID = requestID
        self.tenant = tenant
        self.user = user
        self.method = method
        self.path = path
        self.route = route
        self.status = status
        self.decision = decision
        self.code = code
        self.latencyMicros = latencyMicros
        self.clientIP = clientIP
        self.upstream = upstream
    }

    /// The canonical text (no `hash`).
    public func canonical(seq: UInt64, prevHash: String) -> String {
        var out: [UInt8] = []
        appendCanonical(seq: seq, prevHash: Array(prevHash.utf8), to: &out)
        return String(decoding: out, as: UTF8.self)
    }

    /// Appends the canonical text to `out` (bytes, no intermediate strings: the writer's hot path).
    public func appendCanonical(seq: UInt64, prevHash: [UInt8], to out: inout [UInt8]) {
        func raw(_ s: StaticString) {
            s.withUTF8Buffer { out.append(contentsOf: $0) }
        }
        func str(_ s: String?) {
            if let s { JSONText.appendQuoted(s, to: &out) } else { raw("null") }
        }
        func int<I: BinaryInteger>(_ n: I) { Self.appendDecimal(Int64(n), to: &out) }
        raw("{\"ts\":\"")
        CivilDate.appendRFC3339(milliseconds: timeMillis, to: &out)
        raw("\",\"seq\":")
        int(seq)
        raw(",\"request_id\":")
        str(requestID)
        raw(",\"tenant\":")
        str(tenant)
        raw(",\"user\":")
        str(user)
        raw(",\"method\":")
        str(method)
        raw(",\"path\":")
        str(path)
        raw(",\"route\":")
        str(route)
        raw(",\"status\":")
        int(status)
        raw(",\"decision\":")
        str(decision)
        raw(",\"code\":")
        str(code)
        raw(",\"latency_ms\":")
        int(latencyMicros / 1000)
        out.append(UInt8(ascii: "."))
        let frac = Int(latencyMicros % 1000)
        out.append(UInt8(48 + frac / 100))
        out.append(UInt8(48 + frac / 10 % 10))
        out.append(UInt8(48 + frac % 10))
        raw(",\"client_ip\":")
        str(clientIP)
        raw(",\"upstream\":")
        str(upstream)
        if failOpen { raw(",\"rate_limit\":\"fail_open\"") }
        raw(",\"prev_hash\":\"")
        out.append(contentsOf: prevHash)
        raw("\"}")
    }

    /// Decimal digits of `n`, without a String in between.
    static func appendDecimal(_ n: Int64, to out: inout [UInt8]) {
        if n < 0 { out.append(UInt8(ascii: "-")) }
        var v = n.magnitude
        let start = out.count
        repeat {
            out.append(UInt8(48 + v % 10))
            v /= 10
        } while v > 0
        out[start...].reverse()
    }
}

/// The hash chain: each record's `prev_hash` is the previous record's `hash`; the first record's is 64 zeros.
public struct AuditChain: Sendable {
    public static let genesis = String(repeating: "0", count: 64)
    static let hexDigits = Array("0123456789abcdef".utf8)
    public private(set) var seq: UInt64
    private var lastHashBytes: [UInt8]
    public var lastHash: String { String(decoding: lastHashBytes, as: UTF8.self) }

    public init(seq: UInt64 = 0, lastHash: String = AuditChain.genesis) {
        self.seq = seq
        self.lastHashBytes = Array(lastHash.utf8)
    }

    /// Numbers and hashes `record`; returns its line (without the newline).
    public mutating func seal(_ record: AuditRecord) -> String {
        var out: [UInt8] = []
        seal(record, into: &out)
        out.removeLast()
        return String(decoding: out, as: UTF8.self)
    }

    /// Numbers and hashes `record` and appends its line, with a newline, to `out`.
    public mutating func seal(_ record: AuditRecord, into out: inout [UInt8]) {
        seq += 1
        let start = out.count
        record.appendCanonical(seq: seq, prevHash: lastHashBytes, to: &out)
        let digest = out.withUnsafeBufferPointer { Digest.sha256(UnsafeBufferPointer(rebasing: $0[start...])) }
        var hex = [UInt8]()
        hex.reserveCapacity(64)
        for b in digest {
            hex.append(Self.hexDigits[Int(b >> 4)])
            hex.append(Self.hexDigits[Int(b & 15)])
        }
        lastHashBytes = hex
        out.removeLast()  // the closing brace: the hash member goes before it
        for b in ",\"hash\":\"".utf8 { out.append(b) }
        out.append(contentsOf: hex)
        out.append(UInt8(ascii: "\""))
        out.append(UInt8(ascii: "}"))
        out.append(UInt8(ascii: "\n"))
    }

    /// Splits a written line into its canonical text and its hash; nil when it has no trailing hash member.
    public static func split(_ line: Substring) -> (body: String, hash: String)? {
        let marker = ",\"hash\":\""
        guard line.hasSuffix("\"}"), line.count > marker.count + 66,
            let range = line.range(of: marker, options: .backwards)
        else { return nil }
        let hash = line[range.upperBound...].dropLast(2)
        guard hash.count == 64, hash.utf8.allSatisfy({ (48...57).contains($0) || (97...102).contains($0) }) else {
            return nil
        }
        return (String(line[..<range.lowerBound]) + "}", String(hash))
    }

    /// The chain's position after the record on `line` (to resume after a restart); nil when `line` is not
    /// a sealed record.
    public static func resuming(after line: Substring) -> AuditChain? {
        guard let (body, hash) = split(line), let links = links(body) else { return nil }
        return AuditChain(seq: links.seq, lastHash: hash)
    }

    /// The `seq` and `prev_hash` members of a canonical text (they are written by ``seal(_:)``, so plain
    /// text search finds them: `seq` right after `ts`, `prev_hash` last).
    public static func links(_ body: String) -> (seq: UInt64, prevHash: String)? {
        guard let s = body.range(of: ",\"seq\":"), let comma = body[s.upperBound...].firstIndex(of: ","),
            let seq = UInt64(body[s.upperBound..<comma]),
            let p = body.range(of: ",\"prev_hash\":\"", options: .backwards)
        else { return nil }
        let prev = body[p.upperBound...].dropLast(2)
        guard prev.count == 64 else { return nil }
        return (seq, String(prev))
    }

    public enum Verdict: Equatable, Sendable {
        /// Every record verified: how many, and the first and last seq.
        case ok(count: Int, first: UInt64, last: UInt64)
        /// The first bad record: its position (0-based over all lines given) and why.
        case broken(index: Int, reason: String)
    }

    /// Verifies lines in order: each hash over its canonical text, each `prev_hash` equal to the previous
    /// record's hash and each `seq` one more than the previous. The first record's `prev_hash` is taken as
    /// given (the set may start after older files were removed); it must be the genesis when its seq is 1.
    public static func verify<S: Sequence>(lines: S) -> Verdict where S.Element == Substring {
        var count = 0
        var first: UInt64 = 0
        var previous: (seq: UInt64, hash: String)?
        for (index, line) in lines.enumerated() {
            guard let (body, hash) = split(line) else { return .broken(index: index, reason: "no hash member") }
            guard Digest.hex(Digest.sha256(body.utf8)) == hash else {
                return .broken(index: index, reason: "hash does not match the record's content")
            }
            guard let links = links(body) else { return .broken(index: index, reason: "no seq or prev_hash") }
            if let p = previous {
                guard links.prevHash == p.hash else {
                    return .broken(index: index, reason: "prev_hash does not match the hash of seq \(p.seq)")
                }
                guard links.seq == p.seq + 1 else {
                    return .broken(index: index, reason: "seq \(links.seq) follows seq \(p.seq)")
                }
            } else {
                first = links.seq
                if links.seq == 1 && links.prevHash != genesis {
                    return .broken(index: index, reason: "the first record's prev_hash is not the genesis")
                }
            }
            previous = (links.seq, hash)
            count += 1
        }
        guard let last = previous else { return .ok(count: 0, first: 0, last: 0) }
        return .ok(count: count, first: first, last: last.seq)
    }
}
