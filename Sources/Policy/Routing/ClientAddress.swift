#if canImport(Glibc)
import Glibc
#endif

/// An IPv4 or IPv6 network (`10.0.0.0/8`, `::1/128`; a bare address is a single-host network).
public struct CIDR: Sendable, Hashable, CustomStringConvertible {
    /// The network's address bytes (4 or 16), host bits cleared.
    let network: [UInt8]
    let prefix: Int

    public init?(_ text: String) {
        let parts = text.split(separator: "/", maxSplits: 1, omittingEmptySubsequences: false)
        guard let bytes = Self.address(String(parts[0])) else { return nil }
        let bits = bytes.count * 8
        var prefix = bits
        if parts.count == 2 {
            guard let p = Int(parts[1]), p >= 0, p <= bits, parts[1].utf8.allSatisfy({ $0 >= 48 && $0 <= 57 }) else {
                return nil
            }
            prefix = p
        }
        self.prefix = prefix
        self.network = Self.masked(bytes, prefix)
    }

    public var description: String { "\(network.map(String.init).joined(separator: network.count == 4 ? "." : ":"))/\(prefix)" }

    /// Whether `address` (text, IPv4 or IPv6; an IPv4-mapped IPv6 address counts as its IPv4 address) is in
    /// this network. Not an address: false.
    public func contains(_ address: String) -> Bool {
        guard var bytes = Self.address(address) else { return false }
        if bytes.count == 16 && network.count == 4 && bytes[0..<10].allSatisfy({ $0 == 0 }) && bytes[10] == 0xFF
            && bytes[11] == 0xFF
        {
            bytes = Array(bytes[12...])
        }
        guard bytes.count == network.count else { return false }
        return Self.masked(bytes, prefix) == network
    }

    /// The bytes of an IPv4 or IPv6 address in text form, or nil.
    static func address(_ text: String) -> [UInt8]? {
        var v4 = in_addr()
        if inet_pton(AF_INET, text, &v4) == 1 {
            return withUnsafeBytes(of: &v4) { Array($0) }
        }
        var v6 = in6_addr()
        if inet_pton(AF_INET6, text, &v6) == 1 {
            return withUnsafeBytes(of: &v6) { Array($0) }
        }
        return nil
    }

    private static func masked(_ bytes: [UInt8], _ prefix: Int) -> [UInt8] {
        var out = bytes
        for i in out.indices {
            let keep = max(0, min(8, prefix - i * 8))
            out[i] &= keep == 8 ? 0xFF : ~(UInt8(0xFF) >> keep)
        }
        return out
    }
}

/// Who the client is, from the connection's peer and, when the peer is a trusted proxy, its `X-Forwarded-For`.
public enum ClientAddress {
    /// Whether `address` lies in one of the `trusted` networks.
    public static func isTrusted(_ address: String, _ trusted: [CIDR]) -> Bool {
        trusted.contains { $0.contains(address) }
    }

    /// The client address: the peer itself unless it is in `trusted`; otherwise the rightmost
    /// `X-Forwarded-For` entry that is not in `trusted` (entries that are not addresses end the walk there),
    /// or the leftmost entry when every one is trusted. `peerTrusted` says whether the peer's forwarding
    /// headers are believed.
    public static func resolve(peer: String, forwardedFor: [String], trusted: [CIDR]) -> (client: String, peerTrusted: Bool) {
        guard isTrusted(peer, trusted) else { return (peer, false) }
        let entries = forwardedFor.flatMap { $0.split(separator: ",") }
        var client = peer
        for entry in entries.reversed() {
            var item = entry
            while item.first == " " || item.first == "\t" { item = item.dropFirst() }
            while item.last == " " || item.last == "\t" { item = item.dropLast() }
            let address = String(item)
            guard CIDR.address(address) != nil else { break }
            client = address
            if !isTrusted(address, trusted) { break }
        }
        return (client, true)
    }
}
