import Logging
import Policy
import ServiceLifecycle
import UnixSignals

/// Runs a ``GatewayServer``'s listeners as a `Service`: serves until graceful shutdown (SIGTERM/SIGINT through
/// the `ServiceGroup`), reloads the config on SIGHUP, then drains. It is the group's last service, so the first
/// to stop: the writers and the rest (``GatewayServer/backgroundServices``) stop after the drain.
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

    /// Runs the gateway until SIGTERM or SIGINT: one `ServiceGroup` of the background services and the listeners.
    public static func serve(configPath: String, config: GatewayConfig, logger: Logger) async throws {
        let server = try await GatewayServer(configPath: configPath, config: config, logger: logger)
        // Shut down in reverse order: the listeners drain first, then the rest put out what they were handed.
        let services = server.backgroundServices.map { ServiceGroupConfiguration.ServiceConfiguration(service: $0) }
        let group = ServiceGroup(
            configuration: .init(
                services: services + [.init(service: GatewayService(server: server))],
                gracefulShutdownSignals: [.sigterm, .sigint],
                logger: logger))
        do {
            try await group.run()
        } catch {
            await server.close()
            throw error
        }
        await server.close()
    }
}
