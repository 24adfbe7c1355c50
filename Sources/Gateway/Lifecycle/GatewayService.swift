import Logging
import Policy
import ServiceLifecycle
import UnixSignals

/// Runs a ``GatewayServer`` as a `Service`: serves until graceful shutdown (SIGTERM/SIGINT through the
/// `ServiceGroup`), reloads the config on SIGHUP, then drains and stops.
public struct GatewayService: Service {
    public let server: GatewayServer

    public init(server: GatewayServer) {
        self.server = server
    }

    public func run() async throws {
        try await server.start()
        await withTaskGroup(of: Void.self) { tasks in
            tasks.addTask {
                let hangups = await UnixSignalsSequence(trapping: .sighup)
                for await _ in hangups.cancelOnGracefulShutdown() {
                    _ = await server.reload()
                }
            }
            tasks.addTask {
                try? await gracefulShutdown()
            }
            await tasks.next()
            tasks.cancelAll()
        }
        await server.shutdown()
    }

    /// Runs the gateway until SIGTERM or SIGINT.
    public static func serve(configPath: String, config: GatewayConfig, logger: Logger) async throws {
        let server = try GatewayServer(configPath: configPath, config: config, logger: logger)
        // Shut down in reverse order: the gateway drains first, then the writers put out what it handed them.
        let services = server.telemetryServices.map { ServiceGroupConfiguration.ServiceConfiguration(service: $0) }
        let group = ServiceGroup(
            configuration: .init(
                services: services + [.init(service: GatewayService(server: server))],
                gracefulShutdownSignals: [.sigterm, .sigint],
                logger: logger))
        try await group.run()
    }
}
