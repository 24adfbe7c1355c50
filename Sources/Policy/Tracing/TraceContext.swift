/// A request's W3C trace context (Trace Context Level 1): the trace it belongs to, the caller's span (when a valid
/// `traceparent` came in), this gateway's span, whether the trace is sampled, and the vendors' `tracestate`.
///
/// A valid incoming `traceparent` is continued (its trace id and sampled flag kept, its span the parent); an
/// absent or invalid one starts a new trace, sampled by ``TraceSampler``'s ratio. The upstream receives a
/// `traceparent` naming this gateway's span as its parent.
public struct TraceContext: Sendable, Equatable {
    public var traceHigh: UInt64 = 0
    public var traceLow: UInt64 = 0
    /// The incoming parent span; 0 when this gateway started the trace.
    public var parentSpan: UInt64 = 0
    /// The gateway's (server) span.
    public var span: UInt64 = 0
    public var sampled = false
    /// The incoming `tracestate`, passed on unchanged when valid.
    public var traceState: String? = nil

    public init() {}

    public var isContinued: Bool { parentSpan != 0 }

    /// The parsed `traceparent`: trace id, parent span id, flags.
    public struct Parent: Sendable, Equatable {
        public var traceHigh: UInt64
        public var traceLow: UInt64
        public var span: UInt64
        public var flags: UInt8
        public var sampled: Bool { flags & 1 == 1 }
    }

    /// Parses a `traceparent` value: `version-traceid-parentid-flags`, lowercase hex. Version `00` is exactly 55
    /// characters; a later version may be longer, its first 55 characters read the same way, followed by `-`.
    /// Version `ff`, an all-zero trace or span id, upper-case hex or anything else malformed is refused.
    public static func parse(traceparent value: String) -> Parent? {
        var value = value
        return value.withUTF8 { u -> Parent? in
            guard u.count >= 55 else { return nil }
            guard let version = hex(u, 0, 2), version != 0xff else { return nil }
            if version == 0 ? u.count != 55 : (u.count > 55 && u[55] != UInt8(ascii: "-")) { return nil }
            guard u[2] == UInt8(ascii: "-"), u[35] == UInt8(ascii: "-"), u[52] == UInt8(ascii: "-"),
                let high = hex(u, 3, 16), let low = hex(u, 19, 16), let span = hex(u, 36, 16),
                let flags = hex(u, 53, 2)
            else { return nil }
            guard high | low != 0, span != 0 else { return nil }
            return Parent(traceHigh: high, traceLow: low, span: span, flags: UInt8(flags))
        }
    }

    /// `count` lowercase hex digits at `offset` as a number; nil on any other byte.
    private static func hex(_ u: UnsafeBufferPointer<UInt8>, _ offset: Int, _ count: Int) -> UInt64? {
        var v: UInt64 = 0
        for i in offset..<(offset + count) {
            let c = u[i]
            let d: UInt8
            switch c {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): d = c &- UInt8(ascii: "0")
            case UInt8(ascii: "a")...UInt8(ascii: "f"): d = c &- UInt8(ascii: "a") &+ 10
            default: return nil
            }
            v = v << 4 | UInt64(d)
        }
        return v
    }

    /// The combined `tracestate` header(s) when well formed (W3C Trace Context Level 1: at most 32 list members,
    /// each `key=value`, no key twice; a key is `lcalpha 0*255(lcalpha / DIGIT / "_" / "-" / "*" / "/")`, or
    /// `tenant@system` with a tenant of 1 to 241 such characters starting with a letter or digit and a system of 1 to
    /// 14 starting with a letter; a value is 1 to 256 printable ASCII characters without `,` and `=`, not ending in a
    /// space; at most 512 bytes in all); nil otherwise, so a malformed one is dropped rather than passed on.
    public static func validTraceState(_ values: [String]) -> String? {
        guard !values.isEmpty else { return nil }
        let joined = values.count == 1 ? values[0] : values.joined(separator: ",")
        guard joined.utf8.count <= 512 else { return nil }
        var keys = Set<Substring>()
        for raw in joined.split(separator: ",", omittingEmptySubsequences: true) {
            var member = raw
            while let f = member.first, f == " " || f == "\t" { member = member.dropFirst() }
            while let l = member.last, l == " " || l == "\t" { member = member.dropLast() }
            if member.isEmpty { continue }
            guard keys.count < 32, let eq = member.firstIndex(of: "=") else { return nil }
            let key = member[..<eq]
            let value = member[member.index(after: eq)...].utf8
            guard validKey(key.utf8), keys.insert(key).inserted, !value.isEmpty, value.count <= 256,
                value.last != UInt8(ascii: " "),
                value.allSatisfy({ $0 >= 0x20 && $0 <= 0x7e && $0 != UInt8(ascii: ",") && $0 != UInt8(ascii: "=") })
            else { return nil }
        }
        return keys.isEmpty ? nil : joined
    }

    private static func validKey(_ key: Substring.UTF8View) -> Bool {
        func isLower(_ c: UInt8) -> Bool { c >= UInt8(ascii: "a") && c <= UInt8(ascii: "z") }
        func isDigit(_ c: UInt8) -> Bool { c >= UInt8(ascii: "0") && c <= UInt8(ascii: "9") }
        func isKeyChar(_ c: UInt8) -> Bool {
            isLower(c) || isDigit(c) || c == UInt8(ascii: "_") || c == UInt8(ascii: "-") || c == UInt8(ascii: "*")
                || c == UInt8(ascii: "/")
        }
        guard let first = key.first else { return false }
        if let at = key.firstIndex(of: UInt8(ascii: "@")) {
            let tenant = key[..<at]
            let system = key[key.index(after: at)...]
            guard let s = system.first, (1...241).contains(tenant.count), (1...14).contains(system.count),
                isLower(first) || isDigit(first), isLower(s)
            else { return false }
            return tenant.allSatisfy(isKeyChar) && system.allSatisfy(isKeyChar)
        }
        return isLower(first) && key.count <= 256 && key.allSatisfy(isKeyChar)
    }

    /// The trace id as 32 lowercase hex digits.
    public var traceID: String { Self.hex(traceHigh, traceLow) }
    /// The gateway's span id as 16 lowercase hex digits.
    public var spanID: String { Self.hex(span) }

    /// The `traceparent` sent upstream: this trace, the gateway's span as parent, the sampled flag.
    public var traceparent: String {
        var out = [UInt8](repeating: UInt8(ascii: "-"), count: 55)
        out[0] = UInt8(ascii: "0")
        out[1] = UInt8(ascii: "0")
        Self.writeHex(traceHigh, into: &out, at: 3)
        Self.writeHex(traceLow, into: &out, at: 19)
        Self.writeHex(span, into: &out, at: 36)
        out[53] = UInt8(ascii: "0")
        out[54] = sampled ? UInt8(ascii: "1") : UInt8(ascii: "0")
        return String(decoding: out, as: UTF8.self)
    }

    private static let digits = Array("0123456789abcdef".utf8)

    /// Appends `v` as 16 lowercase hex digits.
    public static func appendHex(_ v: UInt64, to out: inout [UInt8]) {
        for i in 0..<16 { out.append(digits[Int((v >> UInt64(60 - 4 * i)) & 0xf)]) }
    }

    static func writeHex(_ v: UInt64, into out: inout [UInt8], at offset: Int) {
        for i in 0..<16 { out[offset + i] = digits[Int((v >> UInt64(60 - 4 * i)) & 0xf)] }
    }

    public static func hex(_ values: UInt64...) -> String {
        var out = [UInt8](repeating: 0, count: 16 * values.count)
        for (i, v) in values.enumerated() { writeHex(v, into: &out, at: 16 * i) }
        return String(decoding: out, as: UTF8.self)
    }
}

/// Decides the trace context of each request (one per event loop: its random source is not shared).
public struct TraceSampler: Sendable {
    /// Fraction of new traces sampled; 0 when no spans are exported.
    public let ratio: Double
    private var random: FastRandom

    public init(ratio: Double, seed: UInt64) {
        self.ratio = ratio
        self.random = FastRandom(seed: seed)
    }

    /// Continues a valid `traceparent` (its sampled flag decides) or starts a new trace (sampled when the trace
    /// id's low 56 bits fall under `ratio`, so every instance decides alike for one trace id).
    public mutating func begin(traceparent: String?, tracestate: [String]) -> TraceContext {
        var ctx = TraceContext()
        if let text = traceparent, let parent = TraceContext.parse(traceparent: text) {
            ctx.traceHigh = parent.traceHigh
            ctx.traceLow = parent.traceLow
            ctx.parentSpan = parent.span
            ctx.sampled = parent.sampled
            ctx.traceState = TraceContext.validTraceState(tracestate)
        } else {
            repeat {
                ctx.traceHigh = random.next()
                ctx.traceLow = random.next()
            } while ctx.traceHigh | ctx.traceLow == 0
            ctx.sampled = Self.sampled(traceLow: ctx.traceLow, ratio: ratio)
        }
        repeat { ctx.span = random.next() } while ctx.span == 0
        return ctx
    }

    /// A new span id (the upstream call's).
    public mutating func nextSpanID() -> UInt64 {
        var id: UInt64
        repeat { id = random.next() } while id == 0
        return id
    }

    public static func sampled(traceLow: UInt64, ratio: Double) -> Bool {
        if ratio >= 1 { return true }
        if ratio <= 0 { return false }
        return Double(traceLow & 0x00FF_FFFF_FFFF_FFFF) < ratio * 72_057_594_037_927_936.0
    }
}

/// A fast, non-cryptographic generator (SplitMix64) for identifiers that must be unique, not secret: trace and
/// span ids. `SystemRandomNumberGenerator` costs a system call per number on Linux.
public struct FastRandom: RandomNumberGenerator, Sendable {
    private var state: UInt64

    public init(seed: UInt64) { state = seed }

    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
