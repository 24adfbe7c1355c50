import Foundation
import Yams

/// A YAML node together with the file it came from, so every problem can name its location.
struct Located {
    var node: Node
    var file: String

    var line: Int { node.mark?.line ?? 1 }
    var column: Int { node.mark?.column ?? 1 }
}

/// The raw layer of config loading: typed reads over YAML nodes that record located problems.
///
/// Every read returns nil after recording a problem, so one pass reports every problem in a file.
final class YAMLReader {
    private(set) var problems: [ConfigProblem] = []

    func problem(_ at: Located, _ message: String) {
        problems.append(ConfigProblem(file: at.file, line: at.line, column: at.column, message: message))
    }

    /// Certificate, key and CA files named so far (opened later, by the module that can parse PEM).
    private(set) var tlsFiles: [TLSFileReference] = []

    func tlsFile(_ at: Located, _ path: String?, _ kind: TLSFileReference.Kind, _ what: String) {
        guard let path else { return }
        tlsFiles.append(TLSFileReference(path: path, kind: kind, what: what, file: at.file, line: at.line, column: at.column))
    }

    func problem(file: String, line: Int, column: Int, _ message: String) {
        problems.append(ConfigProblem(file: file, line: line, column: column, message: message))
    }

    /// Reads a mapping whose keys must come from `allowed`; unknown and duplicate keys are problems.
    /// Returns the entries in file order.
    func mapping(_ at: Located, _ what: String, allowed: [String]?) -> [(key: String, keyAt: Located, value: Located)]? {
        guard case .mapping(let mapping) = at.node else {
            problem(at, "\(what) must be a mapping")
            return nil
        }
        var seen = Set<String>()
        var entries: [(key: String, keyAt: Located, value: Located)] = []
        for (keyNode, valueNode) in mapping {
            let keyAt = Located(node: keyNode, file: at.file)
            guard let key = keyNode.scalar?.string else {
                problem(keyAt, "\(what) keys must be scalars")
                continue
            }
            if let allowed, !allowed.contains(key) {
                problem(keyAt, "unknown key '\(key)' in \(what)")
                continue
            }
            guard seen.insert(key).inserted else {
                problem(keyAt, "duplicate key '\(key)' in \(what)")
                continue
            }
            entries.append((key, keyAt, Located(node: valueNode, file: at.file)))
        }
        return entries
    }

    /// A mapping with fixed keys, returned as a dictionary.
    func fields(_ at: Located, _ what: String, allowed: [String]) -> [String: Located]? {
        guard let entries = mapping(at, what, allowed: allowed) else { return nil }
        var result: [String: Located] = [:]
        for entry in entries { result[entry.key] = entry.value }
        return result
    }

    func isNull(_ at: Located) -> Bool {
        if case .scalar(let s) = at.node, s.style == .plain, ["", "~", "null", "Null", "NULL"].contains(s.string) {
            return true
        }
        return false
    }

    func string(_ at: Located, _ what: String) -> String? {
        guard case .scalar(let scalar) = at.node, !isNull(at) else {
            problem(at, "\(what) must be a string")
            return nil
        }
        return scalar.string
    }

    func nonEmptyString(_ at: Located, _ what: String) -> String? {
        guard let s = string(at, what) else { return nil }
        guard !s.isEmpty else {
            problem(at, "\(what) must not be empty")
            return nil
        }
        return s
    }

    func int(_ at: Located, _ what: String, min: Int = Int.min, max: Int = Int.max) -> Int? {
        guard case .scalar(let scalar) = at.node, scalar.style == .plain, let value = Int(scalar.string) else {
            problem(at, "\(what) must be an integer")
            return nil
        }
        guard value >= min, value <= max else {
            problem(at, "\(what) must be between \(min) and \(max)")
            return nil
        }
        return value
    }

    /// A number from 0 to 1 (`0`, `1`, `0.25`).
    func fraction(_ at: Located, _ what: String) -> Double? {
        guard case .scalar(let scalar) = at.node, scalar.style == .plain, let value = Double(scalar.string),
            value.isFinite, value >= 0, value <= 1
        else {
            problem(at, "\(what) must be a number from 0 to 1")
            return nil
        }
        return value
    }

    func bool(_ at: Located, _ what: String) -> Bool? {
        guard case .scalar(let scalar) = at.node, scalar.style == .plain else {
            problem(at, "\(what) must be true or false")
            return nil
        }
        switch scalar.string {
        case "true", "True", "TRUE", "yes", "on": return true
        case "false", "False", "FALSE", "no", "off": return false
        default:
            problem(at, "\(what) must be true or false")
            return nil
        }
    }

    /// A duration literal (`250ms`, `30s`, `5m`, `1h`, `7d`) in nanoseconds; must be positive.
    func duration(_ at: Located, _ what: String, allowZero: Bool = false) -> Int64? {
        guard let text = string(at, what) else { return nil }
        guard let ns = Units.parseDuration(text) else {
            problem(at, "\(what): invalid duration '\(text)' (expected e.g. 250ms, 30s, 5m, 1h, 7d)")
            return nil
        }
        guard ns > 0 || (allowZero && ns == 0) else {
            problem(at, "\(what) must be greater than zero")
            return nil
        }
        return ns
    }

    /// A size literal (`512`, `64KiB`, `10MiB`) in bytes; must be positive.
    func size(_ at: Located, _ what: String) -> Int? {
        guard case .scalar(let scalar) = at.node, !isNull(at) else {
            problem(at, "\(what) must be a size")
            return nil
        }
        guard let bytes = Units.parseSize(scalar.string) else {
            problem(at, "\(what): invalid size '\(scalar.string)' (expected e.g. 512, 64KiB, 10MiB)")
            return nil
        }
        guard bytes > 0 else {
            problem(at, "\(what) must be greater than zero")
            return nil
        }
        return bytes
    }

    func sequence(_ at: Located, _ what: String) -> [Located]? {
        guard case .sequence(let seq) = at.node else {
            problem(at, "\(what) must be a list")
            return nil
        }
        return seq.map { Located(node: $0, file: at.file) }
    }

    func stringList(_ at: Located, _ what: String) -> [String]? {
        locatedStringList(at, what)?.map(\.value)
    }

    /// A list of non-empty strings, each with its location (for per-entry problems).
    func locatedStringList(_ at: Located, _ what: String) -> [(value: String, at: Located)]? {
        guard let items = sequence(at, what) else { return nil }
        var result: [(value: String, at: Located)] = []
        for item in items {
            guard let s = nonEmptyString(item, "each entry of \(what)") else { return nil }
            result.append((s, item))
        }
        return result
    }

    func oneOf<T: RawRepresentable>(_ at: Located, _ what: String, _: T.Type, _ choices: [T]) -> T?
    where T.RawValue == String {
        guard let text = string(at, what) else { return nil }
        guard let value = T(rawValue: text), choices.contains(where: { $0.rawValue == text }) else {
            problem(at, "\(what) must be one of \(choices.map(\.rawValue).joined(separator: ", ")) (got '\(text)')")
            return nil
        }
        return value
    }

    func hostPort(_ at: Located, _ what: String) -> HostPort? {
        guard let text = string(at, what) else { return nil }
        guard let hp = HostPort.parse(text) else {
            problem(at, "\(what): invalid address '\(text)' (expected host:port)")
            return nil
        }
        return hp
    }
}
