import Foundation
import Logging
import NIOCore
import NIOPosix
import Redis
import Policy
import ServiceLifecycle
import Synchronization

/// The audit log: records are queued by the event loops and sealed into the hash chain and written to every
/// sink by this `Service`'s task, the blocking writes on NIO's blocking-I/O thread pool, so no event loop waits
/// on a disk or on Redis.
///
/// Back-pressure, not loss: an audited request reserves its place in the queue before it is forwarded
/// (``tryReserve()``); when `queue_size` places are taken the request waits (up to `queue_timeout`, then
/// 503 `audit_unavailable`). Denial records are always accepted, up to `max_denials_per_second` a second;
/// beyond that a denial only counts into its second's summary record (``DenialBudget``): it takes no place
/// and never waits. A sink that fails is retried until it takes the batch, so a stuck sink stalls the writer
/// and the queue, never the record. On graceful shutdown (after the gateway has drained: it runs later in the
/// `ServiceGroup`) everything queued is written, synced and the sinks closed.
final class AuditLog: Service, Sendable {
    /// What the queue holds: a request's record, or the summary of a second's suppressed denials.
    enum Entry: AuditEntry {
        case request(AuditRecord)
        case summary(DenialSummary)

        func appendCanonical(seq: UInt64, prevHash: [UInt8], to out: inout [UInt8]) {
            switch self {
            case .request(let r): r.appendCanonical(seq: seq, prevHash: prevHash, to: &out)
            case .summary(let s): s.appendCanonical(seq: seq, prevHash: prevHash, to: &out)
            }
        }
    }

    private struct Queue {
        var entries: [Entry] = []
        /// Which denials are written one by one (touched under the queue's lock only).
        var denials: DenialBudget
    }

    /// The chain and the sinks: used by one batch write at a time (the service's loop awaits each one), under
    /// this lock so the blocking pool's thread may touch them.
    private struct Writer {
        var chain: AuditChain
        let sinks: [AuditSink]
    }

    let methods: Set<String>
    let denials: Bool
    let capacity: Int
    /// Queue length at which the writer does not wait for its collect interval to end.
    private let wakeAt: Int
    let waitLimit: TimeAmount
    private let queue: Mutex<Queue>
    /// The time denials are counted by (their wall-clock second).
    private let clock: WallClock
    /// Places taken: reserved by requests in flight plus records queued or being written.
    private let outstanding = Atomic<Int>(0)
    /// Records queued and not yet written (`gatehouse_audit_queue_depth`).
    private let depth = Atomic<Int>(0)
    private let written = Atomic<Int>(0)
    private let logger: Logger
    private let writer: Mutex<Writer>
    /// The writer's own thread for blocking sink calls (a disk or Redis that stalls holds only this one; DNS
    /// lookups and the access log use other pools), and the loop its futures complete on.
    private let pool: NIOThreadPool
    private let eventLoop: EventLoop
    /// When the sinks were last asked to sync.
    private let lastSync = Mutex(ContinuousClock.now)
    /// How long the writer collects records before writing a batch.
    static let collectInterval = Duration.milliseconds(5)

    private init(
        config: AuditConfig, chain: AuditChain, sinks: sending [AuditSink], clock: WallClock, logger: Logger,
        eventLoop: EventLoop
    ) {
        self.eventLoop = eventLoop
        self.pool = NIOThreadPool(numberOfThreads: 1)
        pool.start()
        self.queue = Mutex(Queue(denials: DenialBudget(limit: config.maxDenialsPerSecond)))
        self.clock = clock
        self.methods = Set(config.methods.map { $0.uppercased() })
        self.denials = config.denials
        self.capacity = config.queueSize
        self.wakeAt = max(1, config.queueSize / 2)
        self.waitLimit = .nanoseconds(config.queueTimeout)
        self.logger = logger
        self.writer = Mutex(Writer(chain: chain, sinks: sinks))
    }

    /// Opens the sinks and recovers the chain from the newest record (file sinks first, then a Redis
    /// stream). Reads the HMAC key from the environment (a missing one throws ``ConfigError``). Before serving.
    static func open(
        config: AuditConfig, redis: RedisClient.Configuration?, eventLoop: EventLoop, logger: Logger,
        clock: WallClock = .system, environment: [String: String] = ProcessInfo.processInfo.environment
    ) async throws -> AuditLog {
        let key = try config.hmacKey(environment: environment)
        var sinks: [AuditSink] = []
        var chain: AuditChain?
        for sink in config.sinks {
            switch sink {
            case .file(let path, let rotateBytes, let fsync):
                if chain == nil { chain = try FileAuditSink.recover(path: path, key: key) }
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
            // Wait briefly for the connection.
            _ = await s.client.available(within: 2)
            // A stream that cannot be read starts a new segment; one sealed under another key refuses to start.
            do {
                chain = try await s.recover(key: key)
            } catch let error as AuditSinkError {
                throw error
            } catch {
                chain = nil
            }
        }
        if let c = chain {
            logger.info("audit chain recovered", metadata: ["gh-seq": "\(c.seq)", "gh-keyed": "\(key != nil)"])
        }
        return AuditLog(
            config: config, chain: (chain ?? AuditChain()).keyed(key), sinks: sinks, clock: clock, logger: logger,
            eventLoop: eventLoop)
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

    /// Gives back a place taken by ``tryReserve()`` whose record will be appended unreserved (a WebSocket tunnel's,
    /// written when it closes, perhaps hours later).
    func unreserve() {
        outstanding.subtract(1, ordering: .relaxed)
    }

    /// Queues a record; `reserved` when its place was taken by ``tryReserve()``. A denial without a place
    /// (one that was never about to be forwarded) passes the per-second denial budget first: beyond it, it is
    /// only counted. The writer is not woken for each record (it collects every few milliseconds), only when
    /// the queue is half full.
    func append(_ record: AuditRecord, reserved: Bool) {
        let limited = !reserved && record.decision == "deny"
        queue.withLock { q in
            if limited {
                let (verdict, ended) = q.denials.admit(code: record.code ?? "-", nowMillis: nowMillis())
                if let ended { enqueue(.summary(ended), in: &q) }
                if verdict == .write { enqueue(.request(record), in: &q) }
            } else {
                enqueue(.request(record), in: &q, placeTaken: reserved)
            }
        }
    }

    /// Adds `entry` to the queue and counts its place unless ``tryReserve()`` took it (under the queue's lock,
    /// so the writer, which releases the places of what it wrote, never sees an entry not yet counted).
    private func enqueue(_ entry: Entry, in q: inout Queue, placeTaken: Bool = false) {
        if !placeTaken { outstanding.add(1, ordering: .relaxed) }
        depth.add(1, ordering: .relaxed)
        q.entries.append(entry)
    }

    private func nowMillis() -> Int64 { Int64(clock.now() * 1000) }

    /// Collects for a few milliseconds (unless the queue is half full), then writes everything queued as one
    /// batch; on graceful shutdown, writes what is left (and the current second's denial summary), syncs and
    /// closes the sinks.
    func run() async throws {
        while !Task.isShuttingDownGracefully && !Task.isCancelled {
            if queue.withLock({ $0.entries.count }) < wakeAt {
                try? await cancelWhenGracefulShutdown { try await Task.sleep(for: Self.collectInterval) }
            }
            await writeQueued(final: false)
        }
        await writeQueued(final: true)
        _ = try? await blocking {
            $0.withLock { w in
                for s in w.sinks {
                    do { try s.sync(final: true) } catch { self.logger.error("audit sync failed", metadata: ["gh-error": "\(error)"]) }
                    s.close()
                }
            }
        }
        try? await pool.shutdownGracefully()
    }

    /// Runs `body` on the writer's thread (sinks block on disks and on Redis). Through a future, so a cancelled
    /// task (a service group cancelled at stop) still gets its records written.
    private func blocking<T: Sendable>(_ body: @escaping @Sendable (borrowing Mutex<Writer>) throws -> T) async throws -> T {
        try await pool.runIfActive(eventLoop: eventLoop) { try body(self.writer) }.get()
    }

    private func writeQueued(final: Bool) async {
        let batch = queue.withLock { q -> [Entry] in
            // A second that suppressed denials is summed up once it is over, even when no denial follows;
            // at stop, whatever the current second suppressed.
            let now = nowMillis()
            if let s = final ? q.denials.finish(nowMillis: now) : q.denials.expire(nowMillis: now) {
                enqueue(.summary(s), in: &q)
            }
            let b = q.entries
            q.entries.removeAll(keepingCapacity: true)
            return b
        }
        if !batch.isEmpty { await writeBatch(batch, final: final) }
        // Each sink syncs as its fsync policy says; it is asked after a batch, and at least every 100 ms (a batch
        // whose sync was not yet due), not on every idle 5 ms turn.
        let now = ContinuousClock.now
        let due = lastSync.withLock { last -> Bool in
            guard !batch.isEmpty || now - last >= .milliseconds(100) else { return false }
            last = now
            return true
        }
        if due { _ = try? await blocking { $0.withLock { w in for s in w.sinks { try? s.sync(final: false) } } } }
    }

    private func writeBatch(_ batch: [Entry], final: Bool) async {
        // One buffer for the whole batch, and where each record ends in it.
        let lines = writer.withLock { w -> AuditBatch in
            var bytes: [UInt8] = []
            bytes.reserveCapacity(batch.count * 480)
            var records: [AuditBatch.Record] = []
            records.reserveCapacity(batch.count)
            for r in batch {
                w.chain.seal(r, into: &bytes)
                records.append(.init(seq: w.chain.seq, end: bytes.count))
            }
            return AuditBatch(bytes: bytes, records: records)
        }
        let sinkCount = writer.withLock { $0.sinks.count }
        for index in 0..<sinkCount {
            var attempt = 0
            while true {
                do {
                    try await blocking { try $0.withLock { w in try w.sinks[index].write(lines) } }
                    break
                } catch {
                    attempt += 1
                    if attempt >= 10 && (final || Task.isShuttingDownGracefully || Task.isCancelled) {
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
                    try? await Task.sleep(for: .milliseconds(min(1000, 20 * attempt)))
                }
            }
        }
        written.add(batch.count, ordering: .relaxed)
        depth.subtract(batch.count, ordering: .relaxed)
        outstanding.subtract(batch.count, ordering: .relaxed)
    }
}
