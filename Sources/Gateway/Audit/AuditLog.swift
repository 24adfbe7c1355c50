import Foundation
import Logging
import NIOCore
import Policy
import Synchronization

/// The audit log: records are queued by the event loops and sealed into the hash chain and written to every
/// sink by one writer thread, so no event loop waits on a disk or on Redis.
///
/// Back-pressure, not loss: an audited request reserves its place in the queue before it is forwarded
/// (``tryReserve()``); when `queue_size` places are taken the request waits (up to `queue_timeout`, then
/// 503 `audit_unavailable`). Denial records are always accepted. A sink that fails is retried until it
/// takes the batch, so a stuck sink stalls the writer and the queue, never the record.
final class AuditLog: Sendable {
    private struct Queue {
        var records: [AuditRecord] = []
        var closing = false
        /// Resumed by the writer once everything is written (set with `closing`).
        var closed: CheckedContinuation<Void, Never>?
    }

    let methods: Set<String>
    let denials: Bool
    let capacity: Int
    /// Queue length at which the writer is woken before its collect interval ends.
    private let wakeAt: Int
    let waitLimit: TimeAmount
    private let queue = Mutex(Queue())
    private let wake = NSCondition()
    /// Places taken: reserved by requests in flight plus records queued or being written.
    private let outstanding = Atomic<Int>(0)
    /// Records queued and not yet written (`gatehouse_audit_queue_depth`).
    private let depth = Atomic<Int>(0)
    private let written = Atomic<Int>(0)
    private let logger: Logger
    private let writer: Writer
    /// How long the writer collects records before writing a batch.
    static let collectInterval = 0.005

    /// The writer's state, touched only by its thread.
    private final class Writer: @unchecked Sendable {
        var chain: AuditChain
        let sinks: [AuditSink]
        init(chain: AuditChain, sinks: [AuditSink]) {
            self.chain = chain
            self.sinks = sinks
        }
    }

    /// Opens the sinks and recovers the chain from the newest record (file sinks first, then a Redis
    /// stream). Blocking: call before serving.
    init(config: AuditConfig, redis: RedisClient.Configuration?, eventLoop: EventLoop, logger: Logger) throws {
        self.methods = Set(config.methods.map { $0.uppercased() })
        self.denials = config.denials
        self.capacity = config.queueSize
        self.wakeAt = max(1, config.queueSize / 2)
        self.waitLimit = .nanoseconds(config.queueTimeout)
        self.logger = logger
        var sinks: [AuditSink] = []
        var chain: AuditChain?
        for sink in config.sinks {
            switch sink {
            case .file(let path, let rotateBytes, let fsync):
                if chain == nil { chain = try FileAuditSink.recover(path: path) }
                sinks.append(try FileAuditSink(path: path, rotateBytes: rotateBytes, fsync: fsync))
            case .stdout:
                sinks.append(StdoutAuditSink())
            case .redisStream(let stream, let maxlen):
                guard let redis else {
                    throw AuditSinkError(description: "the redis_stream audit sink needs store.redis")
                }
                let client = RedisClient(configuration: redis, eventLoop: eventLoop, logger: logger)
                client.start()
                let s = RedisStreamAuditSink(client: client, stream: stream, maxlen: maxlen)
                sinks.append(s)
            }
        }
        if chain == nil, let s = sinks.compactMap({ $0 as? RedisStreamAuditSink }).first {
            // Wait briefly for the connection; a stream that cannot be read starts a new chain segment.
            let deadline = Date().addingTimeInterval(2)
            while Date() < deadline, (try? s.client.isAvailable.wait()) != true {
                Thread.sleep(forTimeInterval: 0.05)
            }
            chain = try? s.recover()
        }
        self.writer = Writer(chain: chain ?? AuditChain(), sinks: sinks)
        if let c = chain {
            logger.info("audit chain recovered", metadata: ["gh-seq": "\(c.seq)"])
        }
    }

    /// Starts the writer thread.
    func start() {
        let thread = Thread { [self] in self.run() }
        thread.name = "gatehouse-audit"
        thread.start()
    }

    var queueDepth: Int { depth.load(ordering: .relaxed) }
    var writtenCount: Int { written.load(ordering: .relaxed) }

    func audits(method: String) -> Bool { methods.contains(method) }

    /// Takes a place in the queue for a request about to be forwarded; false when the queue is full.
    func tryReserve() -> Bool {
        var current = outstanding.load(ordering: .relaxed)
        while current < capacity {
            let (exchanged, original) = outstanding.compareExchange(
                expected: current, desired: current + 1, ordering: .relaxed)
            if exchanged { return true }
            current = original
        }
        return false
    }

    /// Queues a record; `reserved` when its place was taken by ``tryReserve()``. The writer is not woken for
    /// each record (it collects every few milliseconds), only when the queue is half full.
    func append(_ record: AuditRecord, reserved: Bool) {
        if !reserved { outstanding.add(1, ordering: .relaxed) }
        depth.add(1, ordering: .relaxed)
        let count = queue.withLock { q -> Int in
            q.records.append(record)
            return q.records.count
        }
        if count == wakeAt {
            wake.lock()
            wake.signal()
            wake.unlock()
        }
    }

    /// Writes what is queued, syncs, closes the sinks and stops the writer (graceful stop).
    func close() async {
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            queue.withLock {
                $0.closing = true
                $0.closed = c
            }
            wake.lock()
            wake.signal()
            wake.unlock()
        }
    }

    private func run() {
        let w = writer
        while true {
            // Collect for a few milliseconds (or until the queue is half full, or the log closes), then write
            // everything queued as one batch.
            wake.lock()
            if !queue.withLock({ $0.closing || $0.records.count >= wakeAt }) {
                _ = wake.wait(until: Date().addingTimeInterval(Self.collectInterval))
            }
            wake.unlock()
            let (batch, closing) = queue.withLock { q -> ([AuditRecord], Bool) in
                let b = q.records
                q.records.removeAll(keepingCapacity: true)
                return (b, q.closing)
            }
            if !batch.isEmpty { writeBatch(batch, w) }
            for s in w.sinks { try? s.sync(final: false) }
            if closing && queue.withLock({ $0.records.isEmpty }) { break }
        }
        for s in w.sinks {
            do { try s.sync(final: true) } catch { logger.error("audit sync failed", metadata: ["gh-error": "\(error)"]) }
            s.close()
        }
        queue.withLock { $0.closed }?.resume()
    }

    private func writeBatch(_ batch: [AuditRecord], _ w: Writer) {
        // One buffer for the whole batch, and where each record ends in it.
        var bytes: [UInt8] = []
        bytes.reserveCapacity(batch.count * 480)
        var records: [AuditBatch.Record] = []
        records.reserveCapacity(batch.count)
        for r in batch {
            w.chain.seal(r, into: &bytes)
            records.append(.init(seq: w.chain.seq, end: bytes.count))
        }
        let lines = AuditBatch(bytes: bytes, records: records)
        for sink in w.sinks {
            var attempt = 0
            while true {
                do {
                    try sink.write(lines)
                    break
                } catch {
                    attempt += 1
                    if attempt >= 10 && queue.withLock({ $0.closing }) {
                        logger.error(
                            "audit sink failed at stop; records not delivered to it",
                            metadata: ["gh-error": "\(error)", "gh-records": "\(batch.count)"])
                        break
                    }
                    if attempt == 1 || attempt % 50 == 0 {
                        logger.error(
                            "audit sink failed; retrying (records are held, requests feel back-pressure)",
                            metadata: ["gh-error": "\(error)", "gh-attempt": "\(attempt)"])
                    }
                    Thread.sleep(forTimeInterval: min(1, 0.02 * Double(attempt)))
                }
            }
        }
        written.add(batch.count, ordering: .relaxed)
        depth.subtract(batch.count, ordering: .relaxed)
        outstanding.subtract(batch.count, ordering: .relaxed)
    }
}
