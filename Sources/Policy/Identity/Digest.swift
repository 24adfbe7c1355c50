internal import CJWT

/// SHA-256, HMAC-SHA256 and constant-time comparison, on OpenSSL's libcrypto.
public enum Digest {
    /// SHA-256 of `bytes`.
    public static func sha256<C: Collection>(_ bytes: C) -> [UInt8] where C.Element == UInt8 {
        // Hash in place when the bytes are contiguous (a native String's UTF-8 is); copy only otherwise.
        if let out = bytes.withContiguousStorageIfAvailable({ sha256(UnsafeRawBufferPointer($0)) }) { return out }
        return Array(bytes).withUnsafeBytes { sha256($0) }
    }

    private static func sha256(_ input: UnsafeRawBufferPointer) -> [UInt8] { digest(input, EVP_sha256(), size: 32) }

    /// SHA-1 of `bytes` (only where a protocol names it, such as Redis script ids; never for security).
    public static func sha1(_ bytes: [UInt8]) -> [UInt8] {
        bytes.withUnsafeBytes { digest($0, EVP_sha1(), size: 20) }
    }

    private static func digest(_ input: UnsafeRawBufferPointer, _ md: OpaquePointer?, size: Int) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: size)
        var length: UInt32 = 0
        out.withUnsafeMutableBytes { outPtr in
            _ = EVP_Digest(
                input.baseAddress, input.count, outPtr.baseAddress!.assumingMemoryBound(to: UInt8.self), &length, md, nil)
        }
        return out
    }

    /// HMAC-SHA256 of `message` under `key`.
    public static func hmacSHA256<C: Collection>(key: [UInt8], message: C) -> [UInt8] where C.Element == UInt8 {
        // In place when the bytes are contiguous (the audit writer's buffer is); copy only otherwise.
        if let out = message.withContiguousStorageIfAvailable({ hmacSHA256(key: key, UnsafeRawBufferPointer($0)) }) {
            return out
        }
        return Array(message).withUnsafeBytes { hmacSHA256(key: key, $0) }
    }

    private static func hmacSHA256(key: [UInt8], _ message: UnsafeRawBufferPointer) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: 32)
        var length: UInt32 = 32
        key.withUnsafeBytes { k in
            out.withUnsafeMutableBytes { o in
                _ = HMAC(
                    EVP_sha256(), k.baseAddress, Int32(k.count), message.baseAddress?.assumingMemoryBound(to: UInt8.self),
                    message.count, o.baseAddress!.assumingMemoryBound(to: UInt8.self), &length)
            }
        }
        return out
    }

    /// The value of one hex digit (`0-9`, `a-f`, `A-F`), or nil.
    public static func hexDigit(_ c: UInt8) -> UInt8? {
        switch c {
        case 48...57: c - 48
        case 97...102: c - 87
        case 65...70: c - 55
        default: nil
        }
    }

    /// Lowercase hex of `bytes`.
    public static func hex(_ bytes: [UInt8]) -> String {
        let digits = Array("0123456789abcdef".utf8)
        var out = [UInt8]()
        out.reserveCapacity(bytes.count * 2)
        for b in bytes {
            out.append(digits[Int(b >> 4)])
            out.append(digits[Int(b & 15)])
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// Compares in time that depends only on the lengths.
    public static func constantTimeEqual(_ a: [UInt8], _ b: [UInt8]) -> Bool {
        var diff = UInt8(a.count == b.count ? 0 : 1)
        for i in 0..<max(a.count, b.count) {
            diff |= (i < a.count ? a[i] : 0) ^ (i < b.count ? b[i] : 0)
        }
        return diff == 0
    }
}
