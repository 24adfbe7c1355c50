import Testing

@testable import Policy

/// `access_log` and `tracing`: values, defaults and the problems reported at their location.
struct TelemetryConfigTests {
    @Test func theSpecExampleLoads() throws {
        let yaml = minimal + """

            access_log:
              path: var/access.jsonl
              sample: 0.25
            tracing:
              otlp_endpoint: http://127.0.0.1:4318
              service_name: edge
              sample_ratio: 0.1
            """
        let config = try load(["gw.yaml": yaml]).get()
        #expect(config.accessLog == AccessLogConfig(destination: .file("var/access.jsonl"), sample: 0.25))
        #expect(config.tracing?.endpoint.description == "http://127.0.0.1:4318/v1/traces")
        #expect(config.tracing?.serviceName == "edge")
        #expect(config.tracing?.sampleRatio == 0.1)
    }

    @Test func defaultsAndStdout() throws {
        let yaml = minimal + "\naccess_log: {path: stdout}\ntracing: {otlp_endpoint: \"https://otel.example.com/v1/traces\"}\n"
        let config = try load(["gw.yaml": yaml]).get()
        #expect(config.accessLog == AccessLogConfig(destination: .stdout, sample: 1))
        #expect(config.tracing?.endpoint.description == "https://otel.example.com/v1/traces")
        #expect(config.tracing?.serviceName == "gatehouse")
        #expect(config.tracing?.sampleRatio == 0.1)
        let none = try load(["gw.yaml": minimal]).get()
        #expect(none.accessLog == nil && none.tracing == nil)
    }

    @Test func endpointPaths() {
        #expect(TracingConfig.tracesURL("http://c:4318")?.path == "/v1/traces")
        #expect(TracingConfig.tracesURL("http://c:4318/")?.path == "/v1/traces")
        #expect(TracingConfig.tracesURL("http://c:4318/otlp")?.path == "/otlp/v1/traces")
        #expect(TracingConfig.tracesURL("http://c:4318/otlp/v1/traces")?.path == "/otlp/v1/traces")
        #expect(TracingConfig.tracesURL("grpc://c:4317") == nil)
    }

    @Test func problemsAreReportedWhereTheyAre() {
        let yaml = minimal + """

            access_log: {sample: 2, rotate: yes}
            tracing:
              otlp_endpoint: localhost:4318
              sample_ratio: half
            """
        #expect(
            problems(["gw.yaml": yaml]) == [
                "gw.yaml:8:13: access_log needs a path (a file, or stdout)",
                "gw.yaml:8:25: unknown key 'rotate' in access_log",
                "gw.yaml:10:18: tracing.otlp_endpoint must be an http:// or https:// URL",
            ])
        let missing = minimal + "\naccess_log: {sample: 0.5}\ntracing: {sample_ratio: 1}\n"
        let found = problems(["gw.yaml": missing])
        #expect(found.contains { $0.contains("access_log needs a path") })
        #expect(found.contains { $0.contains("tracing needs otlp_endpoint") })
        let range = minimal + "\naccess_log: {path: x, sample: 1.5}\ntracing: {otlp_endpoint: \"http://c\", sample_ratio: -1}\n"
        let out = problems(["gw.yaml": range])
        #expect(out.contains { $0.contains("access_log.sample must be a number from 0 to 1") })
        #expect(out.contains { $0.contains("tracing.sample_ratio must be a number from 0 to 1") })
    }
}

/// `identity.sign_headers`: parsed, defaulted, and its key checked where the config names it.
struct SignHeadersConfigTests {
    @Test func parsedWithItsDefaultHeader() throws {
        let yaml = minimal + "\nidentity:\n  sign_headers: {key_env: SIGN_KEY}\n"
        let config = try load(["gw.yaml": yaml]).get()
        #expect(config.identity.signHeaders?.keyEnv == "SIGN_KEY")
        #expect(config.identity.signHeaders?.header == "Gatehouse-Signature")
        let key = String(repeating: "k", count: 32)
        #expect(try config.identity.signHeaders?.key(environment: ["SIGN_KEY": key]) == Array(key.utf8))
        #expect(throws: ConfigError.self) { try config.identity.signHeaders?.key(environment: ["SIGN_KEY": "short"]) }
        #expect(throws: ConfigError.self) { try config.identity.signHeaders?.key(environment: [:]) }
    }

    @Test func problemsAreReported() {
        let yaml = minimal + "\nidentity:\n  sign_headers: {header: X-Sig, algo: sha1}\n"
        #expect(
            problems(["gw.yaml": yaml]) == [
                "gw.yaml:9:17: identity.sign_headers needs key_env (the environment variable holding the HMAC key)",
                "gw.yaml:9:33: unknown key 'algo' in identity.sign_headers",
            ])
    }
}
