import Testing

@testable import Policy

@Suite struct UnitsTests {
    @Test func durations() {
        #expect(Units.parseDuration("250ms") == 250_000_000)
        #expect(Units.parseDuration("30s") == 30_000_000_000)
        #expect(Units.parseDuration("5m") == 300_000_000_000)
        #expect(Units.parseDuration("1h") == 3_600_000_000_000)
        #expect(Units.parseDuration("7d") == Int64(604_800_000_000_000))
        for bad in ["", "s", "10", "1.5s", "-1s", "10x", "ms", " 1s", "1 s", "99999999999999999999d"] {
            #expect(Units.parseDuration(bad) == nil, "\(bad)")
        }
    }

    @Test func sizes() {
        #expect(Units.parseSize("512") == 512)
        #expect(Units.parseSize("64KiB") == 65536)
        #expect(Units.parseSize("10MiB") == 10 * 1024 * 1024)
        #expect(Units.parseSize("1GiB") == 1 << 30)
        #expect(Units.parseSize("2KB") == 2000)
        for bad in ["", "KiB", "1.5MiB", "-1", "10 MiB", "10mib", "1TiB"] {
            #expect(Units.parseSize(bad) == nil, "\(bad)")
        }
    }

    @Test func hostPort() {
        #expect(HostPort.parse("127.0.0.1:8080") == HostPort(host: "127.0.0.1", port: 8080))
        #expect(HostPort.parse("[::1]:9000") == HostPort(host: "::1", port: 9000))
        #expect(HostPort.parse("localhost:0") == HostPort(host: "localhost", port: 0))
        for bad in ["127.0.0.1", ":80", "host:", "host:99999", "::1:80", "a b:80", "host:8o"] {
            #expect(HostPort.parse(bad) == nil, "\(bad)")
        }
    }
}
