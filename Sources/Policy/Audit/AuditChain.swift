import Foundation

/// What the chain seals: a record that writes its canonical text (its line without `hash`).
public protocol AuditEntry {
    /// Appends the canonical text, numbered `seq` and linked to `prevHash`, to `out`.
    func appendCanonical(seq: UInt64, prevHash: [UInt8], to out: inout [UInt8])
}

/// The hash chain: each record's `prev_hash` is the previous record's `hash`; the first record's is 64 zeros.
///
/// Without a key, `hash` is the SHA-256 of the record's canonical text, which anyone who can write the file
/// can recompute for a forged record. With a key (`audit.hmac_key_env`) it is HMAC-SHA256 under that key, so a
/// forged or re-chained record needs the key.
public struct AuditChain: Sendable {
    public static let genesis = String(repeating: "0", count: 64)
    static let hexDigits = Array("0123456789abcdef".utf8)
    public private(set) var seq: UInt64
    private var lastHashBytes: [UInt8]
    /// The HMAC key; nil: plain SHA-256.
    private let key: [UInt8]?
    public var lastHash: String { String(decoding: lastHashBytes, as: UTF8.self) }

    public init(seq: UInt64 = 0, lastHash: String = AuditChain.genesis, key: [UInt8]? = nil) {
        self.seq = seq
        self.lastHashBytes = Array(lastHash.utf8)
        self.key = key
    }

    /// The same position, sealing under `key` from now on.
    public func keyed(_ key: [UInt8]?) -> AuditChain {
        AuditChain(seq: seq, lastHash: lastHash, key: key)
    }

    /// A record's `hash`: SHA-256 of its canonical text, or HMAC-SHA256 under `key`.
    static func digest<C: Collection>(_ body: C, key: [UInt8]?) -> [UInt8] where C.Element == UInt8 {
        guard let key else { return Digest.sha256(body) }
        return Digest.hmacSHA256(key: key, message: body)
    }

    /// Numbers and hashes `record`; returns its line (without the newline).
    public mutating func seal(_ record: some AuditEntry) -> String {
        var out: [UInt8] = []
        seal(record, into: &out)
        out.removeLast()
        return String(decoding: out, as: UTF8.self)
    }

    /// Numbers and hashes `record` and appends its line, with a newline, to `out`.
    public mutating func seal(_ record: some AuditEntry, into out: inout [UInt8]) {
        seq += 1
        let start = out.count
        record.appendCanonical(seq: seq, prevHash: lastHashBytes, to: &out)
        let digest = out.withUnsafeBufferPointer { Self.digest(UnsafeBufferPointer(rebasing: $0[start...]), key: key) }
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

    /// The chain's position after the record on `line`, to go on sealing under `key`; fails when that record was
    /// not sealed under `key` (the log was written without a key, or with another one: continuing would give a
    /// chain no single `audit verify` accepts). Nil when `line` is not a sealed record.
    public static func resuming(after line: Substring, key: [UInt8]?) throws(AuditKeyMismatch) -> AuditChain? {
        guard let (body, hash) = split(line), let links = links(body) else { return nil }
        guard Digest.hex(digest(Array(body.utf8), key: key)) == hash else { throw AuditKeyMismatch(seq: links.seq) }
        return AuditChain(seq: links.seq, lastHash: hash, key: key)
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

    /// Verifies lines in order: each hash over its canonical text (HMAC-SHA256 under `key` when given), each
    /// `prev_hash` equal to the previous record's hash and each `seq` one more than the previous. The first
    /// record's `prev_hash` is taken as given (the set may start after older files were removed); it must be
    /// the genesis when its seq is 1.
    public static func verify<S: Sequence>(lines: S, key: [UInt8]? = nil) -> Verdict where S.Element == Substring {
        var count = 0
        var first: UInt64 = 0
        var previous: (seq: UInt64, hash: String)?
        for (index, line) in lines.enumerated() {
            guard let (body, hash) = split(line) else { return .broken(index: index, reason: "no hash member") }
            guard Digest.hex(digest(body.utf8, key: key)) == hash else {
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

    /// Where the end of verified files stands against the newest record of a Redis stream sink, which is
    /// written the same records by the same writer: a stream that goes further shows that the files' newest
    /// records were removed, which the chain alone cannot show.
    public enum StreamTail: Equatable, Sendable {
        /// The stream's newest record is the files' last (same seq, same hash).
        case matches(seq: UInt64)
        /// The stream trails the files (the writer had not yet sent their newest records to it); its newest
        /// record is in the files, with the same hash.
        case behind(streamSeq: UInt64, filesLast: UInt64)
        /// The stream goes further than the files: records after `filesLast` are missing from them.
        case ahead(streamSeq: UInt64, filesLast: UInt64)
        /// The stream's newest record and the files' record with the same seq have different hashes.
        case differs(seq: UInt64)
        /// The stream ends before the files begin, so it cannot vouch for their end.
        case before(streamSeq: UInt64, filesFirst: UInt64)
        /// The stream holds no sealed record.
        case empty

        /// The files end where the stream does, or the stream trails them on the same chain.
        public var passes: Bool {
            switch self {
            case .matches, .behind: true
            default: false
            }
        }
    }

    /// Compares `lines`, which ``verify(lines:key:)`` found whole (so their seqs run without a gap), with
    /// `streamLine`, the stream's newest record.
    public static func compareTail(lines: [Substring], streamLine: Substring?) -> StreamTail {
        guard let streamLine, let (streamBody, streamHash) = split(streamLine), let stream = links(streamBody) else {
            return .empty
        }
        guard let firstLine = lines.first, let lastLine = lines.last,
            let first = split(firstLine).flatMap({ links($0.body) })?.seq,
            let last = split(lastLine).flatMap({ links($0.body) })?.seq
        else { return .ahead(streamSeq: stream.seq, filesLast: 0) }
        if stream.seq > last { return .ahead(streamSeq: stream.seq, filesLast: last) }
        if stream.seq < first { return .before(streamSeq: stream.seq, filesFirst: first) }
        let index = Int(stream.seq - first)
        guard index < lines.count, let (_, hash) = split(lines[index]), hash == streamHash else {
            return .differs(seq: stream.seq)
        }
        return stream.seq == last ? .matches(seq: last) : .behind(streamSeq: stream.seq, filesLast: last)
    }
}

/// The newest record of a log was not sealed under the configured key.
public struct AuditKeyMismatch: Error, Sendable, CustomStringConvertible {
    public let seq: UInt64
    public var description: String {
        "the newest audit record (seq \(seq)) was not sealed under the configured key (audit.hmac_key_env: the log was "
            + "written without a key or with another one); move the log aside to start a new chain, or restore the key"
    }
}
