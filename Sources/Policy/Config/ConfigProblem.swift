/// One problem found in a config file, located by file, line and column.
public struct ConfigProblem: Sendable, Hashable, CustomStringConvertible {
    public var file: String
    public var line: Int
    public var column: Int
    public var message: String

    public init(file: String, line: Int, column: Int, message: String) {
        self.file = file
        self.line = line
        self.column = column
        self.message = message
    }

    /// `PATH:LINE:COLUMN: message`, the form `gatehouse validate` prints.
    public var description: String { "\(file):\(line):\(column): \(message)" }
}

/// Thrown when a config cannot be loaded; carries every problem found, in file order.
public struct ConfigError: Error, Sendable, CustomStringConvertible {
    public var problems: [ConfigProblem]

    public init(problems: [ConfigProblem]) {
        self.problems = problems
    }

    public var description: String { problems.map(\.description).joined(separator: "\n") }
}

extension ConfigError {
    /// The bytes of the environment variable `name`, which the config names as `setting` at `at` (a `*_env`
    /// secret): a config error there when it is unset, empty, or shorter than `minBytes`.
    static func secret(
        _ name: String, setting: String, at: (file: String, line: Int, column: Int), minBytes: Int = 1,
        environment: [String: String]
    ) throws(ConfigError) -> [UInt8] {
        guard let value = environment[name], !value.isEmpty, value.utf8.count >= minBytes else {
            let why = minBytes > 1 ? "must hold at least \(minBytes) bytes" : "is not set or empty"
            throw ConfigError(problems: [
                ConfigProblem(
                    file: at.file, line: at.line, column: at.column,
                    message: "\(setting): environment variable \(name) \(why)")
            ])
        }
        return Array(value.utf8)
    }
}
