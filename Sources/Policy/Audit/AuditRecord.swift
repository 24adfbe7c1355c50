import Foundation

/// One audit record (SPEC "Audit records"), before it is chained.
///
/// The canonical form, which the hash covers, is the record's JSON exactly as written, members in this
/// order, without whitespace, and without the final `hash` member:
/// `{"ts":…,"seq":…,"request_id":…,"tenant":…,"user":…,"method":…,"path":…[,"path_truncated":true],
/// "route":…,"status":…,"decision":…,"code":…,"latency_ms":…,"client_ip":…,"upstream":…,"trace_id":…
/// [,"bytes_in":…,"bytes_out":…,"duration_ms":…][,"rate_limit":"fail_open"],"prev_hash":…}` (the three
/// counts on a WebSocket tunnel's record, written when it closes).
/// The line in the log is that text with `,"hash":"<64 hex>"` inserted before the closing brace, so
/// anyone can re-verify with a few lines of code (see ``AuditChain/verify(lines:key:)``, and the README's Python).
public struct AuditRecord: AuditEntry, Sendable, Equatable {
    /// The most bytes (UTF-8) of a path a record keeps; a longer one is cut at a character boundary and the
    /// record marked `"path_truncated":true`, so a flood of 16 KiB paths cannot fill the disk 16 KiB at a time.
    public static let maxPathBytes = 1024

    /// Request start, milliseconds since the epoch.
    public var timeMillis: Int64
    public var requestID: String
    public var tenant: String?
    public var user: String?
    public var method: String
    /// At most ``maxPathBytes`` (cut by `init`).
    public private(set) var path: String
    /// The request's path was longer than ``maxPathBytes`` and `path` holds its start.
    public private(set) var pathTruncated: Bool
    public var route: String?
    public var status: Int
    public var decision: String
    public var code: String?
    /// Microseconds (written as milliseconds with three decimals).
    public var latencyMicros: Int64
    public var clientIP: String
    public var upstream: String?
    /// The W3C trace the request belongs to (32 hex digits); null for records that belong to no request.
    public var traceID: String? = nil
    /// Admitted by a local bucket while the rate-limit store failed (`on_failure: open`).
    public var failOpen = false
    /// A WebSocket tunnel's traffic, on the record written when it closes.
    public struct Tunnel: Sendable, Equatable {
        /// Bytes from the client towards the upstream, and back, after the handshake.
        public var bytesIn: Int64
        public var bytesOut: Int64
        /// From the upstream's 101 to the close.
        public var durationMillis: Int64
        public init(bytesIn: Int64, bytesOut: Int64, durationMillis: Int64) {
            self.bytesIn = bytesIn
            self.bytesOut = bytesOut
            self.durationMillis = durationMillis
        }
    }
    public var tunnel: Tunnel? = nil

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
        (self.path, self.pathTruncated) = Self.capped(path)
        self.route = route
        self.status = status
        self.decision = decision
        self.code = code
        self.latencyMicros = latencyMicros
        self.clientIP = clientIP
        self.upstream = upstream
    }

    /// `path` cut to at most ``maxPathBytes`` bytes, never inside a character; and whether it was cut.
    public static func capped(_ path: String, max: Int = maxPathBytes) -> (String, Bool) {
        let utf8 = path.utf8
        guard utf8.count > max else { return (path, false) }
        var end = utf8.index(utf8.startIndex, offsetBy: max)
        // Back up over continuation bytes (10xxxxxx): the cut falls before the character they belong to.
        while end > utf8.startIndex, utf8[end] & 0xC0 == 0x80 { end = utf8.index(before: end) }
        return (String(decoding: utf8[..<end], as: UTF8.self), true)
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
        if pathTruncated { raw(",\"path_truncated\":true") }
        raw(",\"route\":")
        str(route)
        raw(",\"status\":")
        int(status)
        raw(",\"decision\":")
        str(decision)
        raw(",\"code\":")
        str(code)
        raw(",\"latency_ms\":")
        Self.appendMillis(micros: latencyMicros, to: &out)
        raw(",\"client_ip\":")
        str(clientIP)
        raw(",\"upstream\":")
        str(upstream)
        raw(",\"trace_id\":")
        str(traceID)
        if let tunnel {
            raw(",\"bytes_in\":")
            int(tunnel.bytesIn)
            raw(",\"bytes_out\":")
            int(tunnel.bytesOut)
            raw(",\"duration_ms\":")
            int(tunnel.durationMillis)
        }
        if failOpen { raw(",\"rate_limit\":\"fail_open\"") }
        raw(",\"prev_hash\":\"")
        out.append(contentsOf: prevHash)
        raw("\"}")
    }

    /// Microseconds as milliseconds with three decimals (`1.234`).
    public static func appendMillis(micros: Int64, to out: inout [UInt8]) {
        appendDecimal(micros / 1000, to: &out)
        out.append(UInt8(ascii: "."))
        let frac = Int(micros % 1000)
        out.append(UInt8(48 + frac / 100))
        out.append(UInt8(48 + frac / 10 % 10))
        out.append(UInt8(48 + frac % 10))
    }

    /// Decimal digits of `n`, without a String in between.
    public static func appendDecimal(_ n: Int64, to out: inout [UInt8]) {
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
