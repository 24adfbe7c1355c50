import ArgumentParser
import Foundation
import Gateway
import Logging
import Policy

/// `gatehouse explain`: the decision the gateway would take for one request, without forwarding or charging it.
struct Explain: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Explain the decision the gateway would take for a request, without forwarding or charging it.",
        discussion: """
            Runs the proxy's own phases (validate, route, authenticate, gate) on the request described, then works \
            out its charge and reads the buckets' and quota's current levels from the store (nothing is written). \
            Exit 0 when the request would be allowed, 1 when it would be denied; a usage error exits 64, a config \
            or store that cannot be used 2.
            """)

    @OptionGroup var options: ConfigOption

    @Argument(help: "The request method (upper case: GET, POST, ...).")
    var method: String

    @Argument(help: "An absolute URL (http://host:port/path?query: its host is the Host header) or a path (/path?query).")
    var url: String

    @Option(name: [.customShort("H"), .customLong("header")], help: ArgumentHelp("A request header.", valueName: "Name: value"))
    var headers: [String] = []

    @Flag(help: "Print one JSON document instead of text.")
    var json = false

    @Option(name: .customLong("client-ip"), help: "The peer address the request comes from (for trusted_proxies).")
    var clientIP = "127.0.0.1"

    func validate() throws {
        do {
            _ = try ExplainRequest.parse(method: method, url: url, headers: headers, defaultHost: "localhost", defaultScheme: "http")
        } catch {
            throw ValidationError(error.description)
        }
    }

    func run() async throws {
        // Key-set fetches and store trouble are logged to stderr (warnings and worse); stdout is the explanation.
        LoggingSystem.bootstrap { label in JSONLogHandler(label: label, level: .warning) }
        let logger = Logger(label: "gatehouse-explain")
        let config: GatewayConfig
        do {
            config = try ConfigLoader().load(path: options.config)
        } catch {
            for problem in error.problems { FileHandle.standardError.write(Data("\(problem)\n".utf8)) }
            throw ExitCode(2)
        }
        var request: ExplainRequest
        do {
            request = try ExplainRequest.parse(
                method: method, url: url, headers: headers, defaultHost: config.server.listen.description,
                defaultScheme: config.server.tls == nil ? "http" : "https")
        } catch {
            throw ValidationError(error.description)
        }
        request.clientAddress = clientIP
        let explanation: Explanation
        do {
            explanation = try await Explainer(config: config, logger: logger).explain(request)
        } catch {
            FileHandle.standardError.write(Data("explain: \((error as? ConfigError)?.problems.map(\.description).joined(separator: "; ") ?? "\(error)")\n".utf8))
            throw ExitCode(2)
        }
        print(json ? explanation.json : explanation.text, terminator: json ? "\n" : "")
        if !explanation.decision.allow { throw ExitCode(1) }
    }
}
