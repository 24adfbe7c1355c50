import Foundation
import Logging
import Policy

/// A swift-log handler that writes one JSON object per line to stderr.
///
/// Fields: `ts` (RFC 3339, ms), `level`, `msg`, `logger`, then the metadata keys (prefixed `gh-`).
public struct JSONLogHandler: LogHandler {
    public var metadata: Logger.Metadata = [:]
    public var logLevel: Logger.Level = .info
    private let label: String

    public init(label: String, level: Logger.Level = .info) {
        self.label = label
        self.logLevel = level
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        var line = "{\"ts\":\(JSONText.quote(Self.timestamp()))"
        line += ",\"level\":\(JSONText.quote(event.level.rawValue))"
        line += ",\"msg\":\(JSONText.quote("\(event.message)"))"
        line += ",\"logger\":\(JSONText.quote(label))"
        var merged = metadata
        if let extra = event.metadata { merged.merge(extra) { _, new in new } }
        for (key, value) in merged.sorted(by: { $0.key < $1.key }) {
            line += ",\(JSONText.quote(key)):\(JSONText.quote("\(value)"))"
        }
        line += "}\n"
        FileHandle.standardError.write(Data(line.utf8))
    }

    /// Now as RFC 3339 UTC with milliseconds.
    public static func timestamp(_ date: Date = Date()) -> String {
        var t = time_t(date.timeIntervalSince1970)
        var tm = tm()
        gmtime_r(&t, &tm)
        let ms = Int(date.timeIntervalSince1970 * 1000) % 1000
        func pad(_ v: Int32, _ n: Int) -> String {
            let s = String(v)
            return String(repeating: "0", count: max(0, n - s.count)) + s
        }
        return "\(pad(tm.tm_year + 1900, 4))-\(pad(tm.tm_mon + 1, 2))-\(pad(tm.tm_mday, 2))T"
            + "\(pad(tm.tm_hour, 2)):\(pad(tm.tm_min, 2)):\(pad(tm.tm_sec, 2)).\(pad(Int32(ms), 3))Z"
    }
}
