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
    private let clock: WallClock

    public init(label: String, level: Logger.Level = .info, clock: WallClock = .system) {
        self.label = label
        self.logLevel = level
        self.clock = clock
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        let ts = CivilDate.rfc3339(epochSeconds: clock.now())
        var line = "{\"ts\":\(JSONText.quote(ts))"
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
}
