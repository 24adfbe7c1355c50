import Foundation
import Logging
import NIOCore
import Redis
import Policy
import Synchronization

/// The audit log: records are queued by the event loops and sealed into the hash chain and written to every
/// sink by one writer thread, so no event loop waits on a disk or on Redis.
///
/// Back-pressure, not loss: an audited request reserves its place in the queue before it is forwarded
/// (``tryReserve()``); when `queue_size` places are taken the request waits (up to `queue_timeout`, then
/// 503 `audit_unavailable`). Denial records are always accepted, up to `max_denials_per_second` a second;
/// beyond that a denial only counts into its second's summary record (``DenialBudget``): it takes no place
/// and never waits. A sink that fails is retried until it takes the batch, so a stuck sink stalls the writer
/// and the queue, never the record.
final class AuditLog: Sendable {
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
    private let queue: Mutex<Queue>
    /// The time denials are counted by (their wall-clock second).
    private let clock: WallClock
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
    /// stream). Reads the HMAC key from the environment (a missing one throws ``ConfigError``). Blocking: call
    /// before serving.
    init(
        config: AuditConfig, redis: RedisClient.Configuration?, eventLoop: EventLoop, logger: Logger,
        clock: WallClock = .system, environment: [String: String] = ProcessInfo.processInfo.environment
    ) throws {
        let key = try config.hmacKey(environment: environment)
        self.queue = Mutex(Queue(denials: DenialBudget(limit: config.maxDenialsPerSecond)))
        self.clock = clock
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
            _ = s.client.waitUntilAvailable(seconds: 2)
            // A stream that cannot be read starts a new segment; one sealed under another key refuses to start.
            do {
                chain = try s.recover(key: key)
            } catch let error as AuditSinkError {
                throw error
            } catch {
                chain = nil
            }
        }
        self.writer = Writer(chain: (chain ?? AuditChain()).keyed(key), sinks: sinks)
        if let c = chain {
            logger.info("audit chain recovered", metadata: ["gh-seq": "\(c.seq)", "gh-keyed": "\(key != nil)"])
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

    /// Gives back a place taken by ``tryReserve()`` whose record will be appended unreserved (a WebSocket tunnel's,
    /// written when it closes, perhaps hours later).
    func unreserve() {
        outstanding.subtract(1, ordering: .relaxed)
    }

    /// Queues a record; `reserved` when its place was taken by ``tryReserve()``. A denial without a place
    /// (one that was never about to be forwarded) passes the per-second denial budget first: beyond it, it is
    /// only counted. The writer is not woken for each record (it collects every few milliseconds), only when
    /// the queue reaches half full.
    func append(_ record: AuditRecord, reserved: Bool) {
        let limited = !reserved && record.decision == "deny"
        let wakeWriter = queue.withLock { q -> Bool in
            let before = q.entries.count
            if limited {
                let (verdict, ended) = q.denials.admit(code: record.code ?? "-", nowMillis: nowMillis())
                if let ended { enqueue(.summary(ended), in: &q) }
                if verdict == .write { enqueue(.request(record), in: &q) }
            } else {
                enqueue(.request(record), in: &q, placeTaken: reserved)
            }
            return before < wakeAt && q.entries.count >= wakeAt
        }
        if wakeWriter {
            wake.lock()
            wake.signal()
            wake.unlock()
        }
    }

    /// Adds `entry` to the queue and counts its place unless ``tryReserve()`` took it (under the queue's lock,
    /// so the writer, which releases the places of what it wrote, never sees an entry not yet counted).
    private func enqueue(_ entry: Entry, in q: inout Queue, placeTaken: Bool = false) {
        if !placeTaken { outstanding.add(1, ordering: .relaxed) }
        depth.add(1, ordering: .relaxed)
        q.entries.append(entry)
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

    private func nowMillis() -> Int64 { Int64(clock.now() * 1000) }

    private func run() {
        let w = writer
        while true {
            // Collect for a few milliseconds (or until the queue is half full, or the log closes), then write
            // everything queued as one batch.
            wake.lock()
            if !queue.withLock({ $0.closing || $0.entries.count >= wakeAt }) {
                _ = wake.wait(until: Date().addingTimeInterval(Self.collectInterval))
            }
            wake.unlock()
            let (batch, closing) = queue.withLock { q -> ([Entry], Bool) in
                // A second that suppressed denials is summed up once it is over, even when no denial follows;
                // at stop, whatever the current second suppressed.
                let now = nowMillis()
                if let s = q.closing ? q.denials.finish(nowMillis: now) : q.denials.expire(nowMillis: now) {
                    enqueue(.summary(s), in: &q)
                }
                let b = q.entries
                q.entries.removeAll(keepingCapacity: true)
                return (b, q.closing)
            }
            if !batch.isEmpty { writeBatch(batch, w) }
            for s in w.sinks { try? s.sync(final: false) }
            if closing && queue.withLock({ $0.entries.isEmpty }) { break }
        }
        for s in w.sinks {
            do { try s.sync(final: true) } catch { logger.error("audit sync failed", metadata: ["gh-error": "\(error)"]) }
            s.close()
        }
        queue.withLock { $0.closed }?.resume()
    }

    private func writeBatch(_ batch: [Entry], _ w: Writer) {
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
