import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import Policy
import Synchronization

/// Actively probes every target of every upstream that has a `health_check`, and flips the shared
/// ``TargetHealth`` flags through each target's ``HealthStateMachine``.
public final class HealthChecker: Sendable {
    private let registry: UpstreamRegistry
    private let eventLoop: EventLoop
    private let logger: Logger
    private let tasks = Mutex<[RepeatedTask]>([])
    private let onChange: @Sendable (String, HostPort, Bool) -> Void

    public init(
        registry: UpstreamRegistry, eventLoop: EventLoop, logger: Logger,
        onChange: @escaping @Sendable (String, HostPort, Bool) -> Void = { _, _, _ in }
    ) {
        self.registry = registry
        self.eventLoop = eventLoop
        self.logger = logger
        self.onChange = onChange
    }

    public func start() {
        var started: [RepeatedTask] = []
        for (name, entry) in registry.upstreams {
            guard let hc = entry.config.healthCheck else { continue }
            for target in entry.targets {
                let machine = Mutex(HealthStateMachine(unhealthyAfter: hc.unhealthyAfter, healthyAfter: hc.healthyAfter))
                let task = eventLoop.scheduleRepeatedAsyncTask(
                    initialDelay: .zero, delay: .nanoseconds(hc.interval)
                ) { [logger, onChange] _ in
                    Self.probe(target: target, check: hc, on: self.eventLoop).map { ok in
                        let action = machine.withLock { ok ? $0.probeSucceeded() : $0.probeFailed() }
                        switch action {
                        case .none: break
                        case .markHealthy, .markUnhealthy:
                            let healthy = action == .markHealthy
                            target.health.set(healthy)
                            logger.notice(
                                "upstream target health changed",
                                metadata: [
                                    "gh-upstream": "\(name)", "gh-target": "\(target.hostPort)",
                                    "gh-healthy": "\(healthy)",
                                ])
                            onChange(name, target.hostPort, healthy)
                        }
                    }
                }
                started.append(task)
            }
        }
        tasks.withLock { $0 = started }
    }

    public func stop() {
        tasks.withLock { tasks in
            for t in tasks { t.cancel() }
            tasks.removeAll()
        }
    }

    /// One GET of the health path with `Connection: close`; true for a 2xx or 3xx status within the timeout.
    static func probe(target: UpstreamRegistry.Target, check: UpstreamConfig.HealthCheck, on loop: EventLoop)
        -> EventLoopFuture<Bool>
    {
        let promise = loop.makePromise(of: Bool.self)
        let timeout = loop.scheduleTask(in: .nanoseconds(check.timeout)) { promise.succeed(false) }
        promise.futureResult.whenComplete { _ in timeout.cancel() }
        ClientBootstrap(group: loop)
            .connectTimeout(.nanoseconds(check.timeout))
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHTTPClientHandlers()
                    try channel.pipeline.syncOperations.addHandler(ProbeHandler(promise: promise))
                }
            }
            .connect(to: target.address)
            .whenComplete { result in
                switch result {
                case .failure:
                    promise.succeed(false)
                case .success(let channel):
                    var head = HTTPRequestHead(version: .http1_1, method: .GET, uri: check.path)
                    head.headers.add(name: "Host", value: target.hostPort.description)
                    head.headers.add(name: "Connection", value: "close")
                    head.headers.add(name: "User-Agent", value: "gatehouse-health-check")
                    channel.write(HTTPClientRequestPart.head(head), promise: nil)
                    channel.writeAndFlush(HTTPClientRequestPart.end(nil), promise: nil)
                    promise.futureResult.whenComplete { _ in channel.close(promise: nil) }
                }
            }
        return promise.futureResult
    }
}

private final class ProbeHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPClientResponsePart
    private let promise: EventLoopPromise<Bool>

    init(promise: EventLoopPromise<Bool>) { self.promise = promise }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if case .head(let head) = unwrapInboundIn(data) {
            promise.succeed((200..<400).contains(Int(head.status.code)))
            context.close(promise: nil)
        }
    }

    func channelInactive(context: ChannelHandlerContext) { promise.succeed(false) }
    func errorCaught(context: ChannelHandlerContext, error: Error) {
        promise.succeed(false)
        context.close(promise: nil)
    }
}

@available(*, unavailable)
extension ProbeHandler: Sendable {}
