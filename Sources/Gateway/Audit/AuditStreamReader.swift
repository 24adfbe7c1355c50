import Foundation
import Logging
import NIOCore
import Redis
import NIOPosix
import Policy
import Upstream

/// Reads the newest record of a `redis_stream` audit sink for `gatehouse audit verify --stream`. Blocking,
/// on an event loop of its own: for the command line, never for the gateway.
public enum AuditStreamReader {
    public struct Failure: Error, CustomStringConvertible {
        public let description: String
    }

    /// The newest entry's record line (`XREVRANGE <stream> + - COUNT 1`), nil when the stream is empty or
    /// missing. `url` is `redis://[user:pass@]host:port/db` (or `rediss://`), as `store.redis`.
    public static func newestRecord(url: String, stream: String, timeout: Double = 5) throws -> String? {
        guard var configuration = RedisClient.Configuration(url: url) else {
            throw Failure(description: "not a redis:// or rediss:// URL: \(url)")
        }
        configuration.timeout = .milliseconds(Int64(timeout * 1000))
        if configuration.wantsTLS {
            // rediss://: verified against the system's trust store.
            do {
                configuration.tls = try ClientTLS(ClientTLSConfig(), host: configuration.host, what: "rediss")
            } catch {
                throw Failure(description: "\(error)")
            }
        }
        do {
            try configuration.resolve()
        } catch {
            throw Failure(description: "cannot resolve \(configuration.host): \(error)")
        }
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        defer { try? group.syncShutdownGracefully() }
        var logger = Logger(label: "gatehouse-audit-verify")
        logger.logLevel = .critical
        let client = RedisClient(configuration: configuration, eventLoop: group.next(), logger: logger)
        defer { _ = try? client.close().wait() }
        client.start()
        guard client.waitUntilAvailable(seconds: timeout) else {
            throw Failure(description: "cannot connect to Redis at \(configuration.host):\(configuration.port)")
        }
        do {
            let reply = try client.send(RedisStreamAuditSink.newestCommand(stream), timeout: configuration.timeout).wait()
            return RedisStreamAuditSink.newestLine(reply)
        } catch {
            throw Failure(description: "cannot read stream \(stream): \(error)")
        }
    }
}
