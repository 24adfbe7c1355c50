import ArgumentParser
import Foundation
import Gateway
import Policy

/// `gatehouse usage export`: per-tenant, per-day request counts for metered billing.
struct Usage: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Usage counters for billing.", subcommands: [Export.self])

    struct Export: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Print per-tenant, per-day request counts (UTC days, both dates included), as GET /admin/usage.",
            discussion: """
                With a store in the config, the counters are read from its Redis. Without one they live in the \
                running gateway's memory: its admin API is asked, on server.admin_listen with the token in the \
                variable server.admin_token_env names.
                """)

        enum Format: String, ExpressibleByArgument, CaseIterable {
            case csv, json
        }

        @OptionGroup var options: ConfigOption

        @Option(help: "First day, YYYY-MM-DD (UTC).") var from: String
        @Option(help: "Last day, YYYY-MM-DD (UTC), included.") var to: String
        @Option(help: "csv (tenant,date,requests) or json.") var format: Format = .csv
        @Option(help: "Only this tenant.") var tenant: String?

        func validate() throws {
            if case .failure(let error) = UsageRange.parse(from: from, to: to) { throw ValidationError(error.description) }
            if let tenant, !TenantID.isValid(tenant) {
                throw ValidationError("--tenant must be 1-64 characters of A-Z a-z 0-9 . _ -")
            }
        }

        func run() async throws {
            guard case .success(let range) = UsageRange.parse(from: from, to: to) else { throw ExitCode(64) }
            let config: GatewayConfig
            do {
                config = try ConfigLoader().load(path: options.config)
            } catch {
                for problem in error.problems { fail("\(problem)") }
                throw ExitCode(1)
            }
            let environment = ProcessInfo.processInfo.environment
            let report: UsageReport
            do {
                if let store = config.store {
                    report = try await UsageExporter.readStore(store, environment: environment, range: range, tenant: tenant)
                } else {
                    guard let admin = config.server.adminListen, admin.port != 0 else {
                        fail(
                            "usage export: without a store the counters live in the running gateway's memory, and "
                                + "\(options.config) gives no server.admin_listen (with a port) to ask it on")
                        throw ExitCode(1)
                    }
                    guard let name = config.server.adminTokenEnv, let token = environment[name], !token.isEmpty else {
                        let which = config.server.adminTokenEnv.map { "the variable \($0) (server.admin_token_env) is not set" }
                            ?? "\(options.config) names no server.admin_token_env"
                        fail("usage export: without a store the running gateway's admin API is asked, but \(which)")
                        throw ExitCode(1)
                    }
                    report = try await UsageExporter.askGateway(admin: admin, token: token, range: range, tenant: tenant)
                }
            } catch let error as UsageExporter.Failure {
                fail("usage export: \(error)")
                throw ExitCode(1)
            }
            switch format {
            case .csv: print(report.csv, terminator: "")
            case .json: print(report.json)
            }
        }

        private func fail(_ line: String) {
            FileHandle.standardError.write(Data((line + "\n").utf8))
        }
    }
}
