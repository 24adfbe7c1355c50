import Testing

@testable import HTTPWire

/// Builds PROXY v2 headers: signature, version/command, family/transport, length, payload.
enum V2 {
    static let signature: [UInt8] = [0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A]

    static func header(command: UInt8 = 1, version: UInt8 = 2, family: UInt8, payload: [UInt8]) -> [UInt8] {
        signature + [version << 4 | command, family, UInt8(payload.count >> 8), UInt8(payload.count & 0xFF)] + payload
    }

    static func tcp4(_ source: [UInt8], _ sourcePort: Int, tlvs: [UInt8] = []) -> [UInt8] {
        header(
            family: 0x11,
            payload: source + [10, 0, 0, 1] + [UInt8(sourcePort >> 8), UInt8(sourcePort & 0xFF), 0x01, 0xBB] + tlvs)
    }

    static func tlv(_ type: UInt8, _ value: [UInt8]) -> [UInt8] {
        [type, UInt8(value.count >> 8), UInt8(value.count & 0xFF)] + value
    }
}

func proxyParse(_ bytes: [UInt8]) -> ProxyProtocol.Outcome {
    bytes.withUnsafeBytes { ProxyProtocol.parse($0) }
}

func proxyParse(_ text: String) -> ProxyProtocol.Outcome { proxyParse(Array(text.utf8)) }

/// The outcome is a refusal.
func refused(_ outcome: ProxyProtocol.Outcome) -> Bool {
    if case .invalid = outcome { return true }
    return false
}

@Suite struct ProxyProtocolV1Tests {
    @Test func tcp4LineGivesTheClientAndWhereItEnds() {
        let line = "PROXY TCP4 192.0.2.7 198.51.100.2 56324 443\r\n"
        let outcome = proxyParse(line + "GET / HTTP/1.1\r\n")
        #expect(
            outcome
                == .header(
                    .init(
                        source: .init(ip: "192.0.2.7", port: 56324), destination: .init(ip: "198.51.100.2", port: 443),
                        version: 1),
                    consumed: line.utf8.count))
    }

    @Test func tcp6AddressesAreCanonical() {
        let outcome = proxyParse("PROXY TCP6 2001:DB8:0:0:0:0:0:1 ::1 1 65535\r\n")
        guard case .header(let header, _) = outcome else {
            Issue.record("not parsed: \(outcome)")
            return
        }
        #expect(header.source == .init(ip: "2001:db8::1", port: 1))
        #expect(header.destination == .init(ip: "::1", port: 65535))
    }

    @Test func unknownNamesNoClient() {
        #expect(proxyParse("PROXY UNKNOWN\r\n") == .header(.init(source: nil, destination: nil, version: 1), consumed: 15))
        #expect(
            proxyParse("PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n")
                == .header(.init(source: nil, destination: nil, version: 1), consumed: 35))
    }

    @Test func everyPrefixWaitsForMore() {
        let line = Array("PROXY TCP4 192.0.2.7 198.51.100.2 56324 443\r\n".utf8)
        for n in 0..<line.count {
            #expect(proxyParse(Array(line[0..<n])) == .needMore, "prefix of \(n) bytes")
        }
    }

    @Test(arguments: [
        "GET / HTTP/1.1\r\n",  // no header at all
        "PROXYTCP4 1.2.3.4 5.6.7.8 1 2\r\n",
        "proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
        "PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",  // bare LF
        "PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n",  // trailing space: six fields
        "PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n",  // double space
        "PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
        "PROXY TCP4 ::1 5.6.7.8 1 2\r\n",  // family mismatch
        "PROXY TCP6 1.2.3.4 ::1 1 2\r\n",
        "PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n",
        "PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n",
        "PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",  // leading zero
        "PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n",
        "PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n",
        "PROXY TCP4 1.2.3.4 5.6.7.8 1 2\u{7F}\r\n",
    ])
    func malformedLinesAreRefused(_ text: String) {
        #expect(refused(proxyParse(text)), "\(text.debugDescription)")
    }

    @Test func aLineWithoutEndIsRefusedAt107Bytes() {
        let long = "PROXY UNKNOWN " + String(repeating: "a", count: 200)
        #expect(proxyParse(String(long.prefix(106))) == .needMore)
        #expect(refused(proxyParse(String(long.prefix(107)))))
        #expect(refused(proxyParse(long)))
    }
}

@Suite struct ProxyProtocolV2Tests {
    @Test func tcp4GivesTheClient() {
        let bytes = V2.tcp4([203, 0, 113, 9], 40000)
        #expect(
            proxyParse(bytes + Array("GET".utf8))
                == .header(
                    .init(
                        source: .init(ip: "203.0.113.9", port: 40000), destination: .init(ip: "10.0.0.1", port: 443),
                        version: 2),
                    consumed: bytes.count))
    }

    @Test func tcp6GivesTheClient() {
        let source: [UInt8] = [0x20, 0x01, 0x0d, 0xb8] + [UInt8](repeating: 0, count: 11) + [5]
        let destination = [UInt8](repeating: 0, count: 15) + [1]
        let bytes = V2.header(family: 0x21, payload: source + destination + [0x12, 0x34, 0x00, 0x50])
        guard case .header(let header, let consumed) = proxyParse(bytes) else {
            Issue.record("not parsed")
            return
        }
        #expect(consumed == 16 + 36)
        #expect(header.source == .init(ip: "2001:db8::5", port: 0x1234))
        #expect(header.destination == .init(ip: "::1", port: 80))
    }

    @Test func sslTLVReportsATLSClient() {
        // PP2_TYPE_SSL: client = PP2_CLIENT_SSL, verify = 0, then a PP2_SUBTYPE_SSL_VERSION sub-TLV.
        let ssl = V2.tlv(0x20, [0x01, 0, 0, 0, 0] + V2.tlv(0x21, Array("TLSv1.3".utf8)))
        let authority = V2.tlv(0x02, Array("api.example.com".utf8))
        guard case .header(let header, _) = proxyParse(V2.tcp4([192, 0, 2, 1], 1, tlvs: authority + ssl)) else {
            Issue.record("not parsed")
            return
        }
        #expect(header.clientTLS)
        guard case .header(let plain, _) = proxyParse(V2.tcp4([192, 0, 2, 1], 1, tlvs: authority)) else {
            Issue.record("not parsed")
            return
        }
        #expect(!plain.clientTLS)
    }

    @Test func localAndUnspecNameNoClient() {
        let local = V2.header(command: 0, family: 0x11, payload: [UInt8](repeating: 7, count: 12))
        #expect(proxyParse(local) == .header(.init(source: nil, destination: nil, version: 2), consumed: 28))
        let unspec = V2.header(family: 0x00, payload: [])
        #expect(proxyParse(unspec) == .header(.init(source: nil, destination: nil, version: 2), consumed: 16))
        let unix = V2.header(family: 0x31, payload: [UInt8](repeating: 0, count: 216))
        #expect(proxyParse(unix) == .header(.init(source: nil, destination: nil, version: 2), consumed: 232))
    }

    @Test func everyPrefixWaitsForMore() {
        let bytes = V2.tcp4([203, 0, 113, 9], 40000, tlvs: V2.tlv(0x04, [1, 2, 3]))
        for n in 0..<bytes.count {
            #expect(proxyParse(Array(bytes[0..<n])) == .needMore, "prefix of \(n) bytes")
        }
    }

    @Test func malformedHeadersAreRefused() {
        let good = V2.tcp4([203, 0, 113, 9], 40000)
        var badSignature = good
        badSignature[11] = 0x0B
        #expect(refused(proxyParse(badSignature)))
        #expect(refused(proxyParse(Array(badSignature[0..<12]))), "a wrong signature is refused before its end")
        #expect(refused(proxyParse(V2.header(version: 1, family: 0x11, payload: Array(good[16...])))))
        #expect(refused(proxyParse(V2.header(command: 2, family: 0x11, payload: Array(good[16...])))))
        #expect(refused(proxyParse(V2.header(family: 0x12, payload: Array(good[16...])))), "UDP")
        #expect(refused(proxyParse(V2.header(family: 0x11, payload: [1, 2, 3]))), "addresses cut short")
        #expect(refused(proxyParse(V2.header(family: 0x21, payload: Array(good[16...])))), "IPv4 bytes as IPv6")
        #expect(refused(proxyParse(V2.tcp4([1, 2, 3, 4], 1, tlvs: [0x04, 0x00]))), "TLV cut short")
        #expect(refused(proxyParse(V2.tcp4([1, 2, 3, 4], 1, tlvs: [0x04, 0x00, 0x09, 1]))), "TLV overruns")
        #expect(refused(proxyParse(V2.tcp4([1, 2, 3, 4], 1, tlvs: V2.tlv(0x20, [1])))), "SSL TLV too short")
    }

    @Test func anOversizedLengthIsRefusedFromThePreamble() {
        let preamble = V2.signature + [0x21, 0x11, 0x08, 0x01]  // 2049 bytes announced
        #expect(refused(proxyParse(preamble)))
        let fits = V2.signature + [0x21, 0x11, 0x08, 0x00]
        #expect(proxyParse(fits) == .needMore)
    }
}
