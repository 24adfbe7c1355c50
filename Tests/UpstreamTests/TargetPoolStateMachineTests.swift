import NIOCore
import Testing

@testable import Upstream

/// The pool's books as a pure machine: requests, waiters, connects and releases in, actions out.
@Suite struct TargetPoolStateMachineTests {
    typealias Machine = TargetPoolStateMachine

    static func at(_ seconds: Int64) -> NIODeadline { .uptimeNanoseconds(UInt64(seconds) * 1_000_000_000) }
    static let exhausted = UpstreamError.poolExhausted("no free connection within the connect timeout")

    /// A pool holding connection 1 idle (opened for waiter 100, which released it at 1 s).
    static func withIdle(max: Int = 2, keepalive: TimeAmount = .seconds(30)) -> Machine {
        var m = Machine(maxConnections: max, keepalive: keepalive)
        #expect(m.request(100, deadline: at(5)) == .wait(connect: true))
        #expect(m.connected(1, now: at(0)) == [.handOut(1, to: 100)])
        #expect(m.release(1, reusable: true, now: at(1)) == [])
        #expect(m.idleCount == 1 && m.busyCount == 0 && m.openCount == 1)
        return m
    }

    // MARK: Requests

    @Test func requestWithAnIdleConnectionUsesIt() {
        var m = Self.withIdle()
        #expect(m.request(1, deadline: Self.at(10)) == .use(1))
        #expect(m.idleCount == 0 && m.busyCount == 1 && m.openCount == 1)
        #expect(m.waiterCount == 0)
        #expect(m.load == 1)
    }

    @Test func requestsWithoutIdleConnectUpToTheMaximumThenWait() {
        var m = Machine(maxConnections: 2, keepalive: .seconds(30))
        #expect(m.request(1, deadline: Self.at(5)) == .wait(connect: true))
        #expect(m.request(2, deadline: Self.at(5)) == .wait(connect: true))
        #expect(m.request(3, deadline: Self.at(5)) == .wait(connect: false))
        #expect(m.request(4, deadline: Self.at(5)) == .wait(connect: false))
        #expect(m.connecting == 2)
        #expect(m.openCount == 2)
        #expect(m.waiterCount == 4)
        #expect(m.load == 4)
    }

    @Test func maximumBelowOneMeansOne() {
        var m = Machine(maxConnections: 0, keepalive: .seconds(30))
        #expect(m.maxConnections == 1)
        #expect(m.request(1, deadline: Self.at(5)) == .wait(connect: true))
        #expect(m.request(2, deadline: Self.at(5)) == .wait(connect: false))
    }

    @Test func connectedHandsToTheOldestWaiter() {
        var m = Machine(maxConnections: 2, keepalive: .seconds(30))
        _ = m.request(1, deadline: Self.at(5))
        _ = m.request(2, deadline: Self.at(5))
        _ = m.request(3, deadline: Self.at(5))
        #expect(m.connected(10, now: Self.at(1)) == [.handOut(10, to: 1)])
        #expect(m.connected(11, now: Self.at(1)) == [.handOut(11, to: 2)])
        #expect(m.connecting == 0 && m.busyCount == 2 && m.waiterCount == 1)
    }

    @Test func connectedWithNobodyWaitingGoesIdle() {
        var m = Machine(maxConnections: 2, keepalive: .seconds(30))
        _ = m.request(1, deadline: Self.at(5))
        m.cancel(1)
        #expect(m.connected(10, now: Self.at(1)) == [])
        #expect(m.idleCount == 1 && m.openCount == 1)
        #expect(m.request(2, deadline: Self.at(5)) == .use(10))
    }

    // MARK: Releases

    @Test func reusableReleaseHandsToAWaiter() {
        var m = Machine(maxConnections: 1, keepalive: .seconds(30))
        _ = m.request(1, deadline: Self.at(5))
        #expect(m.connected(10, now: Self.at(1)) == [.handOut(10, to: 1)])
        #expect(m.request(2, deadline: Self.at(6)) == .wait(connect: false))
        #expect(m.release(10, reusable: true, now: Self.at(2)) == [.handOut(10, to: 2)])
        #expect(m.busyCount == 1 && m.idleCount == 0 && m.waiterCount == 0)
    }

    @Test func reusableReleaseWithoutWaitersGoesIdle() {
        var m = Machine(maxConnections: 1, keepalive: .seconds(30))
        _ = m.request(1, deadline: Self.at(5))
        _ = m.connected(10, now: Self.at(1))
        #expect(m.release(10, reusable: true, now: Self.at(2)) == [])
        #expect(m.busyCount == 0 && m.idleCount == 1 && m.openCount == 1)
    }

    @Test func closedReleaseFreesRoomAndConnectsForRemainingWaiters() {
        var m = Machine(maxConnections: 1, keepalive: .seconds(30))
        _ = m.request(1, deadline: Self.at(5))
        _ = m.connected(10, now: Self.at(1))
        #expect(m.request(2, deadline: Self.at(6)) == .wait(connect: false))
        #expect(m.release(10, reusable: false, now: Self.at(2)) == [.connect])
        #expect(m.openCount == 1 && m.connecting == 1 && m.busyCount == 0)
        #expect(m.connected(11, now: Self.at(3)) == [.handOut(11, to: 2)])
    }

    @Test func closedReleaseWithoutWaitersOnlyFreesRoom() {
        var m = Machine(maxConnections: 1, keepalive: .seconds(30))
        _ = m.request(1, deadline: Self.at(5))
        _ = m.connected(10, now: Self.at(1))
        #expect(m.release(10, reusable: false, now: Self.at(2)) == [])
        #expect(m.openCount == 0)
        #expect(m.request(2, deadline: Self.at(6)) == .wait(connect: true))
    }

    @Test func idleConnectionThatDiesLeavesTheBooks() {
        var m = Self.withIdle()
        #expect(m.release(1, reusable: false, now: Self.at(2)) == [])
        #expect(m.openCount == 0 && m.idleCount == 0)
        #expect(m.request(1, deadline: Self.at(10)) == .wait(connect: true))
    }

    @Test func duplicateReleaseAndUnknownIDsAreIgnored() {
        var m = Machine(maxConnections: 2, keepalive: .seconds(30))
        _ = m.request(1, deadline: Self.at(5))
        _ = m.connected(10, now: Self.at(1))
        #expect(m.release(10, reusable: false, now: Self.at(2)) == [])
        #expect(m.request(2, deadline: Self.at(6)) == .wait(connect: true))
        let before = (m.openCount, m.connecting, m.busyCount, m.idleCount, m.waiterCount)
        // The channelInactive that follows the close reports the same id again, and ids never seen.
        #expect(m.release(10, reusable: false, now: Self.at(3)) == [])
        #expect(m.release(10, reusable: true, now: Self.at(3)) == [])
        #expect(m.release(99, reusable: true, now: Self.at(3)) == [])
        #expect(m.release(98, reusable: false, now: Self.at(3)) == [])
        #expect((m.openCount, m.connecting, m.busyCount, m.idleCount, m.waiterCount) == before)
    }

    // MARK: Failed connects, cancellation

    @Test func connectFailedFailsTheOldestWaiterAndRetriesForTheRest() {
        var m = Machine(maxConnections: 1, keepalive: .seconds(30))
        #expect(m.request(1, deadline: Self.at(5)) == .wait(connect: true))
        #expect(m.request(2, deadline: Self.at(5)) == .wait(connect: false))
        let refused = UpstreamError.connectFailed("refused")
        #expect(m.connectFailed(refused) == [.fail(1, refused), .connect])
        #expect(m.connecting == 1 && m.waiterCount == 1)
        #expect(m.connectFailed(refused) == [.fail(2, refused)])
        #expect(m.openCount == 0 && m.waiterCount == 0)
    }

    @Test func cancelledWaiterIsNeverServed() {
        var m = Machine(maxConnections: 2, keepalive: .seconds(30))
        _ = m.request(1, deadline: Self.at(5))
        _ = m.request(2, deadline: Self.at(5))
        m.cancel(1)
        #expect(m.waiterCount == 1)
        #expect(m.connected(10, now: Self.at(1)) == [.handOut(10, to: 2)])
        // Nobody waits any more: the second connection goes idle, not to the cancelled waiter.
        #expect(m.connected(11, now: Self.at(1)) == [])
        #expect(m.idleCount == 1)
        // Cancelling twice or an unknown waiter changes nothing.
        m.cancel(1)
        m.cancel(77)
        #expect(m.openCount == 2 && m.busyCount == 1)
    }

    @Test func connectFailedAfterTheWaiterLeftFailsNobody() {
        var m = Machine(maxConnections: 1, keepalive: .seconds(30))
        _ = m.request(1, deadline: Self.at(5))
        m.cancel(1)
        #expect(m.connectFailed(.connectFailed("refused")) == [])
        #expect(m.openCount == 0)
    }

    // MARK: Sweep

    @Test func sweepExpiresWaitersAtTheirDeadline() {
        var m = Machine(maxConnections: 1, keepalive: .seconds(30))
        _ = m.request(1, deadline: Self.at(5))
        _ = m.request(2, deadline: Self.at(6))
        #expect(m.sweep(now: .uptimeNanoseconds(5_000_000_000 - 1)) == [])
        #expect(m.sweep(now: Self.at(5)) == [.fail(1, Self.exhausted)])
        #expect(m.waiterCount == 1)
        #expect(m.sweep(now: Self.at(7)) == [.fail(2, Self.exhausted)])
        #expect(m.sweep(now: Self.at(8)) == [])
        // The connect still in flight ends idle: nobody is left to take it.
        #expect(m.connecting == 1)
        #expect(m.connected(10, now: Self.at(9)) == [])
        #expect(m.idleCount == 1)
    }

    @Test func sweepClosesConnectionsIdleLongerThanKeepalive() {
        var m = Self.withIdle(keepalive: .seconds(30))  // idle since 1 s
        #expect(m.sweep(now: .uptimeNanoseconds(31_000_000_000 - 1)) == [])
        #expect(m.sweep(now: Self.at(31)) == [.close(1)])
        #expect(m.openCount == 0)
        // The closed connection's own report afterwards is ignored.
        #expect(m.release(1, reusable: false, now: Self.at(32)) == [])
        #expect(m.openCount == 0)
    }

    @Test func sweepKeepsBusyConnections() {
        var m = Self.withIdle()
        #expect(m.request(1, deadline: Self.at(10)) == .use(1))
        #expect(m.sweep(now: Self.at(1_000)) == [])
        #expect(m.busyCount == 1)
    }

    // MARK: Close

    @Test func closeFailsWaitersAndClosesIdleConnections() {
        var m = Self.withIdle(max: 3)
        #expect(m.request(1, deadline: Self.at(10)) == .use(1))
        #expect(m.release(1, reusable: true, now: Self.at(2)) == [])
        _ = m.request(2, deadline: Self.at(10))  // takes 1
        _ = m.request(3, deadline: Self.at(10))  // waits, connects
        _ = m.request(4, deadline: Self.at(10))  // waits, connects
        let shutdown = UpstreamError.poolClosed("the pool was replaced by a reload or the gateway is stopping")
        #expect(m.close() == [.fail(3, shutdown), .fail(4, shutdown)])
        #expect(m.isClosed)
        #expect(m.request(5, deadline: Self.at(10)) == .fail(.poolClosed("the target's pool takes no new work")))
        // Connects that finish after the close are closed at once.
        #expect(m.connected(20, now: Self.at(3)) == [.close(20)])
        #expect(m.connectFailed(.connectFailed("refused")) == [])
        #expect(m.connecting == 0)
        // The busy connection released closed leaves the books and starts nothing.
        #expect(m.release(1, reusable: false, now: Self.at(4)) == [])
        #expect(m.openCount == 0)
    }

    @Test func closeClosesIdleConnections() {
        var m = Self.withIdle()
        #expect(m.close() == [.close(1)])
        #expect(m.openCount == 0)
        #expect(m.release(1, reusable: false, now: Self.at(2)) == [])
    }

    /// `close()` says busy connections "close when released". A busy connection whose response ends cleanly
    /// afterwards is released reusable (its own machine is idle again): the pool must close it, or the socket
    /// would stay open off the books (every reload used to leak one per busy connection).
    @Test func busyConnectionReleasedReusableAfterCloseIsClosed() {
        var m = Self.withIdle()
        #expect(m.request(1, deadline: Self.at(10)) == .use(1))
        #expect(m.close() == [])
        #expect(m.release(1, reusable: true, now: Self.at(2)) == [.close(1)])
        #expect(m.openCount == 0)
    }

    // MARK: With the connection's machine, glued as TargetPool and UpstreamConnection glue them

    /// The production leak of issue 11: with two connections per target, a few clients hanging up mid-download
    /// left every slot busy. Each abandoned lease now releases its slot once (the channelInactive after our close
    /// releases nothing), so the pool keeps serving and nothing stays busy.
    @Test func abortedDownloadsDoNotExhaustThePool() {
        var pool = Machine(maxConnections: 2, keepalive: .seconds(30))
        var connections: [Int: UpstreamConnectionStateMachine] = [:]
        var nextID = 0

        /// What UpstreamConnection.run does with a lease-ending action: release it to the pool.
        func report(_ id: Int, _ action: UpstreamConnectionStateMachine.Action) -> [Machine.Action] {
            switch action {
            case .forwardEnd(let release): return pool.release(id, reusable: release == .reusable, now: Self.at(1))
            case .failExchange, .abandon, .closeIdle: return pool.release(id, reusable: false, now: Self.at(1))
            default: return []
            }
        }

        for download in 1...10 {
            let id: Int
            switch pool.request(download, deadline: Self.at(5)) {
            case .use(let idle):
                id = idle
            case .wait(connect: true):
                nextID += 1
                connections[nextID] = UpstreamConnectionStateMachine()
                #expect(pool.connected(nextID, now: Self.at(0)) == [.handOut(nextID, to: download)])
                id = nextID
            case let other:
                Issue.record("download \(download) got \(other)")
                return
            }
            #expect(connections[id]!.begin(responseTimeout: .seconds(10)) == .writeHead)
            connections[id]!.requestEndSent(now: Self.at(0))
            #expect(connections[id]!.responseHead(keepAlive: true) == .forwardHead)
            #expect(connections[id]!.responseBody() == .forwardBody)
            // The client hangs up: the exchange abandons the connection, which we close.
            #expect(report(id, connections[id]!.abandon()) == [])
            #expect(report(id, connections[id]!.channelInactive()) == [])
            #expect(pool.busyCount == 0 && pool.openCount == 0)
        }
        // A normal request still gets a connection.
        #expect(pool.request(99, deadline: Self.at(5)) == .wait(connect: true))
    }

    // MARK: The invariant over random sequences

    /// What the executor knows, kept by the test to check each action against.
    struct Books {
        var connects = 0
        var idle: Set<Int> = []
        var busy: Set<Int> = []
        var waiting: [Int] = []
        var served: [Int: Int] = [:]
        var cancelled: Set<Int> = []
        var nextConnection = 1000
        var nextWaiter = 1
        var handOuts = 0

        mutating func serve(_ waiter: Int, _ context: @autoclosure () -> String) {
            #expect(!cancelled.contains(waiter), "served a cancelled waiter: \(context())")
            #expect(waiting.contains(waiter), "served a waiter not waiting: \(context())")
            waiting.removeAll { $0 == waiter }
            served[waiter, default: 0] += 1
        }

        mutating func run(_ actions: [Machine.Action], _ context: @autoclosure () -> String) {
            for action in actions {
                switch action {
                case .handOut(let id, let waiter):
                    #expect(!busy.contains(id), "handed out a busy connection: \(context())")
                    idle.remove(id)
                    busy.insert(id)
                    handOuts += 1
                    serve(waiter, context())
                case .connect:
                    connects += 1
                case .fail(let waiter, _):
                    serve(waiter, context())
                case .close(let id):
                    #expect(idle.contains(id), "closed a connection that was not idle: \(context())")
                    idle.remove(id)
                }
            }
        }
    }

    enum Event: CaseIterable {
        case request, cancel, connected, connectFailed, releaseReusable, releaseClosed, idleDies, duplicate, sweep, tick
    }

    @Test(arguments: [(1, 1), (2, 2), (3, 3), (4, 1), (5, 4), (99, 2)])
    func booksStayBalanced(seed: UInt64, max: Int) {
        var rng = SeededRandom(seed: seed)
        var handedOut = 0
        for _ in 0..<200 {
            var m = Machine(maxConnections: max, keepalive: .seconds(30))
            var b = Books()
            var now: Int64 = 0
            var log: [String] = []
            for _ in 0..<Int.random(in: 1...40, using: &rng) {
                let event = Event.allCases.randomElement(using: &rng)!
                log.append("\(event)")
                let context = "max \(max) seed \(seed): \(log)"
                switch event {
                case .request:
                    let w = b.nextWaiter
                    b.nextWaiter += 1
                    switch m.request(w, deadline: Self.at(now + 5)) {
                    case .use(let id):
                        #expect(b.idle.contains(id), "used a connection that was not idle: \(context)")
                        b.idle.remove(id)
                        b.busy.insert(id)
                        b.served[w, default: 0] += 1
                    case .wait(let connect):
                        b.waiting.append(w)
                        if connect { b.connects += 1 }
                    case .fail:
                        Issue.record("request failed on an open pool: \(context)")
                    }
                case .cancel:
                    guard let w = b.waiting.randomElement(using: &rng) else { continue }
                    m.cancel(w)
                    b.waiting.removeAll { $0 == w }
                    b.cancelled.insert(w)
                case .connected:
                    guard b.connects > 0 else { continue }
                    b.connects -= 1
                    let id = b.nextConnection
                    b.nextConnection += 1
                    b.idle.insert(id)  // placed: handOut moves it to busy
                    let actions = m.connected(id, now: Self.at(now))
                    if actions.isEmpty == false, case .handOut(let h, _) = actions[0] {
                        #expect(h == id, "\(context)")
                    }
                    b.run(actions, "\(context)")
                case .connectFailed:
                    guard b.connects > 0 else { continue }
                    b.connects -= 1
                    b.run(m.connectFailed(.connectFailed("refused")), "\(context)")
                case .releaseReusable:
                    guard let id = b.busy.randomElement(using: &rng) else { continue }
                    b.busy.remove(id)
                    b.idle.insert(id)  // placed: handOut moves it back to busy
                    b.run(m.release(id, reusable: true, now: Self.at(now)), "\(context)")
                case .releaseClosed:
                    guard let id = b.busy.randomElement(using: &rng) else { continue }
                    b.busy.remove(id)
                    b.run(m.release(id, reusable: false, now: Self.at(now)), "\(context)")
                case .idleDies:
                    guard let id = b.idle.randomElement(using: &rng) else { continue }
                    b.idle.remove(id)
                    b.run(m.release(id, reusable: false, now: Self.at(now)), "\(context)")
                case .duplicate:
                    // A closed connection reporting again, or an id the pool never had.
                    let id = Int.random(in: 0..<b.nextConnection, using: &rng)
                    guard !b.idle.contains(id), !b.busy.contains(id) else { continue }
                    #expect(m.release(id, reusable: false, now: Self.at(now)) == [], "\(context)")
                case .sweep:
                    b.run(m.sweep(now: Self.at(now)), "\(context)")
                case .tick:
                    now += Int64.random(in: 1...20, using: &rng)
                }
                #expect(m.connecting == b.connects, "connecting: \(context)")
                #expect(m.idleCount == b.idle.count, "idle: \(context)")
                #expect(m.busyCount == b.busy.count, "busy: \(context)")
                #expect(m.waiterCount == b.waiting.count, "waiters: \(context)")
                #expect(m.openCount == m.connecting + m.idleCount + m.busyCount, "\(context)")
                #expect(m.openCount <= max, "over the maximum: \(context)")
                if m.waiterCount > 0 {
                    // Nobody waits while a connection idles, and waiters always have a connect coming or a full pool.
                    #expect(m.idleCount == 0, "waiter beside an idle connection: \(context)")
                    #expect(m.connecting > 0 || m.openCount == max, "waiters stranded: \(context)")
                }
            }
            // Closing ends every wait: each waiter got exactly one answer unless it left.
            b.run(m.close(), "close after \(log)")
            #expect(b.waiting.isEmpty)
            for w in 1..<b.nextWaiter {
                let answers = b.served[w] ?? 0
                if b.cancelled.contains(w) {
                    #expect(answers == 0, "cancelled waiter \(w) was served: \(log)")
                } else {
                    #expect(answers == 1, "waiter \(w) answered \(answers) times: \(log)")
                }
            }
            handedOut += b.handOuts
        }
        #expect(handedOut > 100, "the sequences hardly handed out a connection")
    }
}
