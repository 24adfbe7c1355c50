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
        func str(_ s: String?) -> String { s.map(JSONText.quote) ?? "null" }
        var out = "{\"ts\":\"" + Self.timestamp(timeMillis) + "\",\"seq\":" + String(seq)
        out += ",\"request_id\":" + JSONText.quote(requestID)
        out += ",\"tenant\":" + str(tenant) + ",\"user\":" + str(user)
        out += ",\"method\":" + JSONText.quote(method) + ",\"path\":" + JSONText.quote(path)
        out += ",\"route\":" + str(route) + ",\"status\":" + String(status)
        out += ",\"decision\":" + JSONText.quote(decision) + ",\"code\":" + str(code)
        let frac = latencyMicros % 1000
        out += ",\"latency_ms\":" + String(latencyMicros / 1000) + "." + (frac < 10 ? "00" : frac < 100 ? "0" : "") + String(frac)
        out += ",\"client_ip\":" + JSONText.quote(clientIP) + ",\"upstream\":" + str(upstream)
        if failOpen { out += ",\"rate_limit\":\"fail_open\"" }
        out += ",\"prev_hash\":\"" + prevHash + "\"}"
        return out
    }

    /// RFC 3339 UTC with milliseconds.
    static func timestamp(_ ms: Int64) -> String {
        let seconds = Int(ms >= 0 ? ms / 1000 : (ms - 999) / 1000)
        let millis = Int(ms - Int64(seconds) * 1000)
        let base = CivilDate.rfc3339(seconds)  // …:SSZ
        return String(base.dropLast()) + "." + CivilDate.pad(millis, 3) + "Z"
    }
}

/// The hash chain: each record's `prev_hash` is the previous record's `hash`; the first record's is 64 zeros.
public struct AuditChain: Sendable {
    public static let genesis = String(repeating: "0", count: 64)
    public private(set) var seq: UInt64
    public private(set) var lastHash: String

    public init(seq: UInt64 = 0, lastHash: String = AuditChain.genesis) {
        self.seq = seq
        self.lastHash = lastHash
    }

    /// Numbers and hashes `record`; returns its line (without the newline).
    public mutating func seal(_ record: AuditRecord) -> String {
        seq += 1
        let body = record.canonical(seq: seq, prevHash: lastHash)
        let hash = Digest.hex(Digest.sha256(body.utf8))
        lastHash = hash
        return String(body.dropLast()) + ",\"hash\":\"" + hash + "\"}"
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
