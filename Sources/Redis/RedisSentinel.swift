import Logging
import NIOCore

/// Asks the sentinels, in turn, where the master named `master` is (`SENTINEL get-master-addr-by-name`). Each
/// question is a short connection of its own; the first sentinel that answers wins.
struct SentinelQuery {
    let configuration: RedisClient.Configuration
    let master: String
    let sentinels: [RedisClient.Configuration.Endpoint]
    let eventLoop: EventLoop

    func masterAddress() -> EventLoopFuture<SocketAddress> {
        ask(0, lastError: RedisError.unavailable("no sentinel configured"))
    }

    private func ask(_ index: Int, lastError: Error) -> EventLoopFuture<SocketAddress> {
        guard index < sentinels.count else {
            return eventLoop.makeFailedFuture(RedisError.unavailable("no sentinel named the master \(master): \(lastError)"))
        }
        guard let address = sentinels[index].socketAddress() else {
            return ask(index + 1, lastError: RedisError.unavailable("sentinel \(sentinels[index]) was not resolved"))
        }
        var options = RedisConnection.Options()
        options.authenticate = false
        let master = self.master
        return RedisConnection.open(address, configuration: configuration, eventLoop: eventLoop, options: options, started: .now())
            .flatMap { channel -> EventLoopFuture<SocketAddress> in
                let promise = channel.eventLoop.makePromise(of: RedisReply.self)
                let args = ["SENTINEL", "get-master-addr-by-name", master].map { Array($0.utf8) }
                channel.writeAndFlush(RedisCommand(args: args, promise: promise), promise: nil)
                let timer = channel.eventLoop.scheduleTask(in: configuration.connectTimeout) {
                    promise.fail(RedisError.timeout("sentinel \(address) did not answer"))
                }
                return promise.futureResult.flatMapThrowing { reply -> SocketAddress in
                    guard case .array(let items) = reply, items.count == 2, let host = items[0].string,
                        let port = items[1].string.flatMap({ Int($0) })
                    else {
                        throw RedisError.unavailable("sentinel \(address) does not know the master \(master) (\(reply))")
                    }
                    // Sentinels report addresses; a name would need DNS, which never runs on an event loop.
                    return try SocketAddress(ipAddress: host, port: port)
                }.always { _ in
                    timer.cancel()
                    channel.close(promise: nil)
                }
            }
            .flatMapError { error in ask(index + 1, lastError: error) }
    }
}

/// Listens to the sentinels' `+switch-master` announcements (one subscriber connection, moving to the next
/// sentinel when one is lost) and reports the new address of `master`.
final class SentinelWatch {
    private let connection: RedisConnection

    init(
        configuration: RedisClient.Configuration, master: String, sentinels: [RedisClient.Configuration.Endpoint],
        eventLoop: EventLoop, logger: Logger, switched: @escaping (SocketAddress) -> Void
    ) {
        let callback = NIOLoopBound(switched, eventLoop: eventLoop)
        var options = RedisConnection.Options()
        options.authenticate = false
        options.withoutCircuit = true
        options.subscribe = ["+switch-master"]
        options.onPush = { _, payload in
            // "<name> <old ip> <old port> <new ip> <new port>"
            let parts = String(decoding: payload, as: UTF8.self).split(separator: " ")
            guard parts.count == 5, parts[0] == master, let port = Int(parts[4]),
                let address = try? SocketAddress(ipAddress: String(parts[3]), port: port)
            else { return }
            callback.value(address)
        }
        connection = RedisConnection(
            configuration: configuration, eventLoop: eventLoop, logger: logger, label: "sentinels of \(master)", options: options,
            locate: RedisConnection.inTurn(sentinels, eventLoop: eventLoop))
    }

    func start() { connection.connect() }
    func shutdown() { connection.shutdown() }
}

@available(*, unavailable)
extension SentinelWatch: Sendable {}
