/// What the event loops hand finished requests to besides the audit log: the access log and the span exporter.
struct Telemetry: Sendable {
    var accessLog: AccessLog? = nil
    var spans: SpanExporter? = nil
}
