import Logging
import NIOCore
import Policy
import ServiceLifecycle
import Synchronization
import Upstream

/// Exports finished spans to an OTLP/HTTP collector (`tracing.otlp_endpoint`), in batches, off the event loops.
///
/// The loops only append to a bounded queue (``capacity`` spans); when it is full a span is dropped and counted
/// (`gatehouse_trace_spans_dropped_total`), as is every span of a batch the collector did not take. A collector
/// that is slow, down or black-holing costs requests nothing: the export runs in this service's task, one batch at a
/// time, each bounded by ``exportTimeout``. A batch is sent every ``interval`` or as soon as ``batchSize`` spans
/// are queued; on graceful stop what is queued is sent once more.
final class SpanExporter: Service, Sendable {
    let config: TracingConfig
    let capacity: Int
    static let batchSize = 512
    static let interval = Duration.seconds(1)
    static let exportTimeout = TimeAmount.seconds(5)

    private let queue = Mutex<[SpanData]>([])
    private let droppedCount = Atomic<Int>(0)
    private let exportedCount = Atomic<Int>(0)
    private let wake: AsyncStream<Void>.Continuation
    private let wakes: AsyncStream<Void>
    private let eventLoop: EventLoop
    private let tls: ClientTLS?
    private let logger: Logger
    private let instanceID: String
    private let lastFailureLog = Mutex<ContinuousClock.Instant?>(nil)

    init(config: TracingConfig, eventLoop: EventLoop, instanceID: String, logger: Logger, capacity: Int = 8192) throws {
        self.config = config
        self.capacity = capacity
        self.eventLoop = eventLoop
        self.instanceID = instanceID
        self.logger = logger
        self.tls = config.endpoint.tls
            ? try ClientTLS(ClientTLSConfig(), host: config.endpoint.host, what: "tracing.otlp_endpoint") : nil
        (wakes, wake) = AsyncStream<Void>.makeStream(bufferingPolicy: .bufferingNewest(1))
    }

    var dropped: Int { droppedCount.load(ordering: .relaxed) }
    var exported: Int { exportedCount.load(ordering: .relaxed) }
    var queued: Int { queue.withLock { $0.count } }

    /// Queues finished spans (from an event loop: never waits).
    func enqueue(_ spans: SpanData...) {
        let (taken, wakeNow) = queue.withLock { q -> (Int, Bool) in
            let room = max(0, capacity - q.count)
            let taken = min(room, spans.count)
            q.append(contentsOf: spans.prefix(taken))
            return (taken, q.count >= Self.batchSize && q.count - taken < Self.batchSize)
        }
        if taken < spans.count { droppedCount.add(spans.count - taken, ordering: .relaxed) }
        if wakeNow { wake.yield() }
    }

    func run() async throws {
        await withTaskGroup(of: Void.self) { tasks in
            let wake = self.wake
            tasks.addTask {
                while !Task.isCancelled {
                    try? await Task.sleep(for: Self.interval)
                    wake.yield()
                }
            }
            for await _ in wakes.cancelOnGracefulShutdown() {
                await exportQueued()
            }
            tasks.cancelAll()
        }
        // At stop, one last batch (one attempt, bounded by the export timeout); what does not fit is dropped and
        // counted, so a dead collector delays the exit by at most one timeout.
        let last = queue.withLock { q -> [SpanData] in
            defer { q.removeAll() }
            return q
        }
        let kept = Array(last.prefix(Self.batchSize * 4))
        if last.count > kept.count { droppedCount.add(last.count - kept.count, ordering: .relaxed) }
        if !kept.isEmpty { await export(kept) }
    }

    /// Sends what is queued, a batch at a time.
    func exportQueued() async {
        while true {
            let batch = queue.withLock { q -> [SpanData] in
                let n = min(q.count, Self.batchSize * 4)
                let b = Array(q.prefix(n))
                q.removeFirst(n)
                return b
            }
            if batch.isEmpty { return }
            await export(batch)
        }
    }

    private func export(_ batch: [SpanData]) async {
        let body = OTLPTraces.exportRequest(
            batch, serviceName: config.serviceName, instanceID: instanceID, version: GatewayVersion.current)
        do {
            let response = try await HTTPFetch.send(
                url: config.endpoint, tls: tls, on: eventLoop, timeout: Self.exportTimeout, maxBytes: 64 * 1024,
                body: ("application/x-protobuf", body)
            ).get()
            guard (200..<300).contains(response.status) else {
                throw HTTPFetch.Failure(description: "the collector answered \(response.status)")
            }
            exportedCount.add(batch.count, ordering: .relaxed)
        } catch {
            droppedCount.add(batch.count, ordering: .relaxed)
            // One line per 30 s at most: a dead collector must not flood the log either.
            let now = ContinuousClock.now
            let log = lastFailureLog.withLock { last -> Bool in
                if let l = last, now - l < .seconds(30) { return false }
                last = now
                return true
            }
            if log {
                logger.warning(
                    "span export failed; spans dropped",
                    metadata: ["gh-error": "\(error)", "gh-spans": "\(batch.count)", "gh-endpoint": "\(config.endpoint)"])
            }
        }
    }
}

/// The version reported to collectors.
enum GatewayVersion {
    static let current = "0.1.0"
}
