/// One finished span, as the exporter queues it.
struct SpanData: Sendable {
    enum Kind: UInt64, Sendable {
        case server = 2
        case client = 3
    }

    enum Value: Sendable, Equatable {
        case string(String)
        case int(Int64)
        case bool(Bool)
    }

    struct Attribute: Sendable {
        var key: String
        var value: Value
        init(_ key: String, _ value: Value) {
            self.key = key
            self.value = value
        }
    }

    var traceHigh: UInt64
    var traceLow: UInt64
    var spanID: UInt64
    /// 0: a root span.
    var parentSpanID: UInt64
    var traceState: String?
    var name: String
    var kind: Kind
    var startNanos: UInt64
    var endNanos: UInt64
    var attributes: [Attribute]
    /// Status ERROR (a 5xx answer or a failed upstream call), with its message.
    var errorMessage: String?
}

/// Encodes spans as an OTLP `ExportTraceServiceRequest` in protobuf (the OTLP/HTTP default,
/// `application/x-protobuf`), by hand: the handful of messages involved do not warrant a protobuf runtime and
/// its code generator in the build.
///
/// Field numbers from opentelemetry-proto (trace/v1/trace.proto, common/v1/common.proto,
/// resource/v1/resource.proto, collector/trace/v1/trace_service.proto).
enum OTLPTraces {
    static func exportRequest(_ spans: [SpanData], serviceName: String, instanceID: String, version: String) -> [UInt8] {
        var resource = ProtoWriter()
        resource.message(1) { keyValue(&$0, "service.name", .string(serviceName)) }
        resource.message(1) { keyValue(&$0, "service.instance.id", .string(instanceID)) }
        resource.message(1) { keyValue(&$0, "telemetry.sdk.name", .string("gatehouse")) }
        var scopeSpans = ProtoWriter()
        scopeSpans.message(1) { scope in
            scope.string(1, "gatehouse")
            scope.string(2, version)
        }
        for span in spans { scopeSpans.message(2) { encode(span, into: &$0) } }
        var resourceSpans = ProtoWriter()
        resourceSpans.bytes(1, resource.bytes)
        resourceSpans.bytes(2, scopeSpans.bytes)
        var request = ProtoWriter()
        request.bytes(1, resourceSpans.bytes)
        return request.bytes
    }

    static func encode(_ span: SpanData, into w: inout ProtoWriter) {
        var traceID = [UInt8]()
        traceID.reserveCapacity(16)
        appendBigEndian(span.traceHigh, to: &traceID)
        appendBigEndian(span.traceLow, to: &traceID)
        w.bytes(1, traceID)
        var spanID = [UInt8]()
        appendBigEndian(span.spanID, to: &spanID)
        w.bytes(2, spanID)
        if let state = span.traceState { w.string(3, state) }
        if span.parentSpanID != 0 {
            var parent = [UInt8]()
            appendBigEndian(span.parentSpanID, to: &parent)
            w.bytes(4, parent)
        }
        w.string(5, span.name)
        w.varintField(6, span.kind.rawValue)
        w.fixed64(7, span.startNanos)
        w.fixed64(8, span.endNanos)
        for a in span.attributes { w.message(9) { keyValue(&$0, a.key, a.value) } }
        if let message = span.errorMessage {
            w.message(15) { status in
                status.string(2, message)
                status.varintField(3, 2)  // STATUS_CODE_ERROR
            }
        }
        // W3C flags (sampled: every exported span is) in the low byte.
        w.fixed32(16, 1)
    }

    static func keyValue(_ w: inout ProtoWriter, _ key: String, _ value: SpanData.Value) {
        w.string(1, key)
        w.message(2) { any in
            switch value {
            case .string(let s): any.string(1, s)
            case .bool(let b): any.varintField(2, b ? 1 : 0)
            case .int(let n): any.varintField(3, UInt64(bitPattern: n))
            }
        }
    }

    static func appendBigEndian(_ v: UInt64, to out: inout [UInt8]) {
        for i in stride(from: 56, through: 0, by: -8) { out.append(UInt8(truncatingIfNeeded: v >> UInt64(i))) }
    }
}

/// Protobuf wire format: tags, varints, fixed-width and length-delimited fields.
struct ProtoWriter {
    var bytes: [UInt8] = []

    mutating func varint(_ v: UInt64) {
        var v = v
        while v >= 0x80 {
            bytes.append(UInt8(truncatingIfNeeded: v) | 0x80)
            v >>= 7
        }
        bytes.append(UInt8(v))
    }

    mutating func tag(_ field: Int, _ wire: UInt64) { varint(UInt64(field) << 3 | wire) }

    mutating func varintField(_ field: Int, _ v: UInt64) {
        tag(field, 0)
        varint(v)
    }

    mutating func fixed64(_ field: Int, _ v: UInt64) {
        tag(field, 1)
        for i in 0..<8 { bytes.append(UInt8(truncatingIfNeeded: v >> UInt64(8 * i))) }
    }

    mutating func fixed32(_ field: Int, _ v: UInt32) {
        tag(field, 5)
        for i in 0..<4 { bytes.append(UInt8(truncatingIfNeeded: v >> UInt32(8 * i))) }
    }

    mutating func bytes(_ field: Int, _ value: [UInt8]) {
        tag(field, 2)
        varint(UInt64(value.count))
        bytes.append(contentsOf: value)
    }

    mutating func string(_ field: Int, _ value: String) { bytes(field, Array(value.utf8)) }

    /// A nested message, written by `body`.
    mutating func message(_ field: Int, _ body: (inout ProtoWriter) -> Void) {
        var inner = ProtoWriter()
        body(&inner)
        bytes(field, inner.bytes)
    }
}
