#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The PROXY protocol header (versions 1 and 2, haproxy.org's proxy-protocol.txt) that an L4 load balancer
/// sends before the client's bytes: who the client is, and (version 2) whether the balancer terminated TLS.
///
/// `parse` is pure: it looks at the bytes received so far and says whether they are a whole header (and how
/// many bytes it took), a prefix of one, or not a header. Anything that is not exactly a header is refused
/// rather than guessed, and the wait is bounded: a version 1 line is at most 107 bytes, a version 2 header at
/// most `maxV2Length` bytes after its 16-byte preamble.
public enum ProxyProtocol {
    /// The largest version 2 payload (addresses and TLVs) accepted. Balancers send tens of bytes (AWS adds a
    /// VPC endpoint id, HAProxy the TLS version and cipher); the format allows 65,535.
    public static let maxV2Length = 2048
    /// A version 1 line, "PROXY" to CRLF included (the specification's own limit).
    public static let maxV1Length = 107

    /// What a header says.
    public struct Header: Equatable, Sendable {
        /// The client's address and port; nil when the header names none (v1 `UNKNOWN`, v2 `LOCAL` such as a
        /// balancer's own health check, or an address family other than IPv4/IPv6): the connection's peer
        /// stands for the client then.
        public var source: Address?
        /// The address the client connected to, when given.
        public var destination: Address?
        /// Version 2 only: the balancer received the client over TLS (`PP2_TYPE_SSL` with `PP2_CLIENT_SSL`).
        public var clientTLS: Bool
        public var version: Int

        public init(source: Address?, destination: Address?, clientTLS: Bool = false, version: Int) {
            self.source = source
            self.destination = destination
            self.clientTLS = clientTLS
            self.version = version
        }
    }

    public struct Address: Equatable, Sendable {
        /// Canonical text (dotted IPv4; RFC 5952 IPv6, as `inet_ntop` writes it).
        public var ip: String
        public var port: Int
        public init(ip: String, port: Int) {
            self.ip = ip
            self.port = port
        }
    }

    public enum Outcome: Equatable, Sendable {
        /// The bytes so far are a prefix of a header: wait for more.
        case needMore
        /// A whole header, `consumed` bytes long; what follows is the client's stream.
        case header(Header, consumed: Int)
        /// Not a PROXY header (or a malformed or oversized one): close the connection.
        case invalid(String)
    }

    static let v1Prefix: [UInt8] = Array("PROXY ".utf8)
    static let v2Signature: [UInt8] = [0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A]

    /// Reads a header from the start of `bytes`.
    public static func parse(_ bytes: UnsafeRawBufferPointer) -> Outcome {
        if bytes.isEmpty { return .needMore }
        if bytes[0] == v1Prefix[0] { return parseV1(bytes) }
        if bytes[0] == v2Signature[0] { return parseV2(bytes) }
        return .invalid("not a PROXY protocol header")
    }

    /// Whether `bytes` start like `literal` for as far as either goes.
    private static func startsLike(_ bytes: UnsafeRawBufferPointer, _ literal: [UInt8]) -> Bool {
        let n = min(bytes.count, literal.count)
        for i in 0..<n where bytes[i] != literal[i] { return false }
        return true
    }

    // MARK: Version 1: "PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n"

    private static func parseV1(_ bytes: UnsafeRawBufferPointer) -> Outcome {
        guard startsLike(bytes, v1Prefix) else { return .invalid("not a PROXY protocol header") }
        var end: Int? = nil
        for i in 0..<min(bytes.count, maxV1Length) where bytes[i] == 0x0A {
            end = i
            break
        }
        guard let lf = end else {
            return bytes.count >= maxV1Length ? .invalid("PROXY v1 line longer than 107 bytes") : .needMore
        }
        guard lf >= 1, bytes[lf - 1] == 0x0D else { return .invalid("PROXY v1 line not ended by CRLF") }
        // Printable ASCII only between "PROXY " and CRLF.
        for i in v1Prefix.count..<(lf - 1) where bytes[i] < 0x20 || bytes[i] > 0x7E {
            return .invalid("PROXY v1 line has a control or non-ASCII byte")
        }
        let line = String(decoding: UnsafeRawBufferPointer(rebasing: bytes[v1Prefix.count..<(lf - 1)]), as: UTF8.self)
        let fields = line.split(separator: " ", omittingEmptySubsequences: false)
        if fields.first == "UNKNOWN" {
            // The rest of the line is to be ignored (the balancer could not tell).
            return .header(Header(source: nil, destination: nil, version: 1), consumed: lf + 1)
        }
        guard fields.count == 5 else { return .invalid("PROXY v1 line does not have five fields") }
        let family: Int32
        switch fields[0] {
        case "TCP4": family = AF_INET
        case "TCP6": family = AF_INET6
        default: return .invalid("PROXY v1 protocol is not TCP4, TCP6 or UNKNOWN")
        }
        guard let sourceIP = canonical(String(fields[1]), family: family),
            let destinationIP = canonical(String(fields[2]), family: family)
        else { return .invalid("PROXY v1 address does not match its protocol") }
        guard let sourcePort = port(fields[3]), let destinationPort = port(fields[4]) else {
            return .invalid("PROXY v1 port is not a number from 0 to 65535")
        }
        return .header(
            Header(
                source: Address(ip: sourceIP, port: sourcePort),
                destination: Address(ip: destinationIP, port: destinationPort), version: 1),
            consumed: lf + 1)
    }

    /// A decimal port without sign or leading zeros.
    private static func port(_ text: Substring) -> Int? {
        let digits = text.utf8
        guard !digits.isEmpty, digits.count <= 5, digits.allSatisfy({ $0 >= 48 && $0 <= 57 }) else { return nil }
        if digits.count > 1 && digits.first == 48 { return nil }
        guard let value = Int(text), value <= 65535 else { return nil }
        return value
    }

    /// The address in canonical form, if `text` is one of `family`.
    private static func canonical(_ text: String, family: Int32) -> String? {
        if family == AF_INET {
            var address = in_addr()
            guard inet_pton(AF_INET, text, &address) == 1 else { return nil }
            return withUnsafeBytes(of: &address) { format(UnsafeRawBufferPointer($0), family: AF_INET) }
        }
        var address = in6_addr()
        guard inet_pton(AF_INET6, text, &address) == 1 else { return nil }
        return withUnsafeBytes(of: &address) { format(UnsafeRawBufferPointer($0), family: AF_INET6) }
    }

    /// Text of a 4- or 16-byte address.
    private static func format(_ raw: UnsafeRawBufferPointer, family: Int32) -> String {
        var out = [CChar](repeating: 0, count: 64)
        guard inet_ntop(family, raw.baseAddress, &out, socklen_t(out.count)) != nil else { return "" }
        return String(cString: out)
    }

    // MARK: Version 2: 12-byte signature, version/command, family/transport, length, addresses, TLVs

    private static func parseV2(_ bytes: UnsafeRawBufferPointer) -> Outcome {
        guard startsLike(bytes, v2Signature) else { return .invalid("not a PROXY protocol header") }
        if bytes.count < 16 { return .needMore }
        let versionCommand = bytes[12]
        guard versionCommand >> 4 == 2 else { return .invalid("PROXY v2 header has version \(versionCommand >> 4)") }
        let command = versionCommand & 0x0F
        guard command <= 1 else { return .invalid("PROXY v2 command \(command) is neither LOCAL nor PROXY") }
        let familyTransport = bytes[13]
        let length = Int(bytes[14]) << 8 | Int(bytes[15])
        guard length <= maxV2Length else { return .invalid("PROXY v2 header longer than \(maxV2Length) bytes") }
        if bytes.count < 16 + length { return .needMore }
        let payload = UnsafeRawBufferPointer(rebasing: bytes[16..<(16 + length)])
        let consumed = 16 + length
        if command == 0 {
            // LOCAL: the balancer's own connection (a health check); the addresses, if any, are ignored.
            return .header(Header(source: nil, destination: nil, version: 2), consumed: consumed)
        }
        let transport = familyTransport & 0x0F
        let family = familyTransport >> 4
        guard transport <= 1 else { return .invalid("PROXY v2 transport is not a stream") }
        let addressLength: Int
        var source: Address? = nil
        var destination: Address? = nil
        switch family {
        case 1 where transport == 1:  // TCP over IPv4
            addressLength = 12
            guard length >= addressLength else { return .invalid("PROXY v2 IPv4 addresses truncated") }
            source = address(payload, at: 0, size: 4, portAt: 8, family: AF_INET)
            destination = address(payload, at: 4, size: 4, portAt: 10, family: AF_INET)
        case 2 where transport == 1:  // TCP over IPv6
            addressLength = 36
            guard length >= addressLength else { return .invalid("PROXY v2 IPv6 addresses truncated") }
            source = address(payload, at: 0, size: 16, portAt: 32, family: AF_INET6)
            destination = address(payload, at: 16, size: 16, portAt: 34, family: AF_INET6)
        case 0 where transport == 0:  // UNSPEC: nothing known of the client
            addressLength = 0
        case 3 where transport == 1:  // a UNIX socket: no address to report
            addressLength = 216
            guard length >= addressLength else { return .invalid("PROXY v2 UNIX addresses truncated") }
        default:
            return .invalid("PROXY v2 family and transport 0x\(String(familyTransport, radix: 16)) not supported")
        }
        guard let clientTLS = clientTLS(UnsafeRawBufferPointer(rebasing: payload[addressLength...])) else {
            return .invalid("PROXY v2 TLVs malformed")
        }
        return .header(
            Header(source: source, destination: destination, clientTLS: clientTLS, version: 2),
            consumed: consumed)
    }

    private static func address(
        _ payload: UnsafeRawBufferPointer, at offset: Int, size: Int, portAt: Int, family: Int32
    ) -> Address {
        let ip = format(UnsafeRawBufferPointer(rebasing: payload[offset..<(offset + size)]), family: family)
        return Address(ip: ip, port: Int(payload[portAt]) << 8 | Int(payload[portAt + 1]))
    }

    /// Walks the TLVs (type, 16-bit length, value), which must fill the rest exactly, and says whether
    /// `PP2_TYPE_SSL` reports a TLS client; nil if they are malformed.
    private static func clientTLS(_ bytes: UnsafeRawBufferPointer) -> Bool? {
        var offset = 0
        var clientTLS = false
        while offset < bytes.count {
            guard bytes.count - offset >= 3 else { return nil }
            let type = bytes[offset]
            let length = Int(bytes[offset + 1]) << 8 | Int(bytes[offset + 2])
            let value = offset + 3
            guard bytes.count - value >= length else { return nil }
            if type == 0x20 {  // PP2_TYPE_SSL: client flags (1 byte), verify (4 bytes), sub-TLVs
                guard length >= 5 else { return nil }
                clientTLS = bytes[value] & 0x01 != 0
            }
            offset = value + length
        }
        return clientTLS
    }
}
