import ArgumentParser
import Foundation
import Gateway
import Logging
import Policy

@main
struct Gatehouse: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "gatehouse",
        abstract: "A multi-tenant API gateway: identity, plans, rate limits and audit in front of your services.",
        subcommands: [Serve.self, Validate.self, Token.self, Audit.self, Usage.self, Explain.self])
}

struct ConfigOption: ParsableArguments {
    @Option(name: .long, help: "The config file.")
    var config: String = "config/gateway.yaml"
}

struct Serve: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Run the gateway.")

    @OptionGroup var options: ConfigOption

    @Option(name: .long, help: "Log level: trace, debug, info, notice, warning, error, critical.")
    var logLevel: String = "info"

    func run() async throws {
        let level = Logger.Level(rawValue: logLevel) ?? .info
        LoggingSystem.bootstrap { label in JSONLogHandler(label: label, level: level) }
        let logger = Logger(label: "gatehouse")
        let config: GatewayConfig
        do {
            config = try ConfigLoader().load(path: options.config)
        } catch {
            for problem in error.problems {
                logger.error("invalid config", metadata: ["gh-problem": "\(problem)"])
                FileHandle.standardError.write(Data("\(problem)\n".utf8))
            }
            throw ExitCode(1)
        }
        let fileProblems = TLSFileCheck.problems(config)
        if !fileProblems.isEmpty {
            for problem in fileProblems {
                logger.error("invalid config", metadata: ["gh-problem": "\(problem)"])
                FileHandle.standardError.write(Data("\(problem)\n".utf8))
            }
            throw ExitCode(1)
        }
        do {
            try await GatewayService.serve(configPath: options.config, config: config, logger: logger)
        } catch {
            logger.critical("gatehouse failed", metadata: ["gh-error": "\(error)"])
            throw ExitCode(1)
        }
    }
}

struct Validate: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Check a config without serving: prints ok, or one PATH:LINE:COLUMN: message line per problem.")

    @OptionGroup var options: ConfigOption

    func run() throws {
        let problems: [ConfigProblem]
        do {
            // The config, then the certificate, key and CA files it names.
            problems = TLSFileCheck.problems(try ConfigLoader().load(path: options.config))
        } catch {
            problems = error.problems
        }
        guard problems.isEmpty else {
            for problem in problems {
                FileHandle.standardError.write(Data("\(problem)\n".utf8))
            }
            throw ExitCode(1)
        }
        print("ok")
    }
}
