/// Redis Cluster's key → slot rule and which argument of a command is its key.
public enum RedisSlots {
    public static let count = 16384

    /// The slot of `key`: CRC16 (XMODEM) of its hash tag, the part between the first `{` and the next `}` when
    /// that part is not empty, else of the whole key; modulo 16384.
    public static func slot<C: Collection>(_ key: C) -> Int where C.Element == UInt8, C.Index == Int {
        var start = key.startIndex
        var end = key.endIndex
        if let open = key.firstIndex(of: UInt8(ascii: "{")) {
            if let close = key[(open + 1)...].firstIndex(of: UInt8(ascii: "}")), close > open + 1 {
                start = open + 1
                end = close
            }
        }
        var crc: UInt16 = 0
        for i in start..<end {
            crc = (crc << 8) ^ table[Int(UInt8(truncatingIfNeeded: crc >> 8) ^ key[i])]
        }
        return Int(crc) & (count - 1)
    }

    public static func slot(_ key: String) -> Int { slot(Array(key.utf8)) }

    private static let table: [UInt16] = (0..<256).map { byte -> UInt16 in
        var crc = UInt16(byte) << 8
        for _ in 0..<8 { crc = crc & 0x8000 != 0 ? (crc << 1) ^ 0x1021 : crc << 1 }
        return crc
    }

    /// The argument a Cluster routes `args` by: the first key of a script call, the first argument of a keyed
    /// command, nil for commands without a key (PING, PUBLISH, SCAN, TIME, …), which any master can answer.
    public static func routingKey(_ args: [[UInt8]]) -> [UInt8]? {
        guard args.count >= 2 else { return nil }
        // Per call on a Cluster's hot path: names are compared as bytes (upper-cased only when they are not).
        let name = args[0].contains(where: { $0 >= 97 && $0 <= 122 }) ? args[0].map { $0 >= 97 && $0 <= 122 ? $0 - 32 : $0 } : args[0]
        if scriptCalls.contains(name) {
            guard args.count >= 4, let n = Int(String(decoding: args[2], as: UTF8.self)), n > 0 else { return nil }
            return args[3]
        }
        return keyless.contains(name) ? nil : args[1]
    }

    private static let scriptCalls = Set(["EVAL", "EVALSHA", "EVAL_RO", "EVALSHA_RO", "FCALL", "FCALL_RO"].map { Array($0.utf8) })
    private static let keyless = Set(
        [
            "PING", "PUBLISH", "SCAN", "TIME", "INFO", "CLUSTER", "ROLE", "ASKING", "SCRIPT", "DBSIZE", "SUBSCRIBE",
            "AUTH", "SELECT", "SENTINEL", "WAIT", "ECHO", "COMMAND", "CONFIG", "FUNCTION", "FLUSHALL", "FLUSHDB",
        ].map { Array($0.utf8) })
}
