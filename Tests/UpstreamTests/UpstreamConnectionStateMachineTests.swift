import NIOCore
import Testing

@testable import Upstream

/// The upstream connection's machine: events in, actions out, no channel. Every lease (a `begin` answered
/// `.writeHead`) must end in exactly one of `forwardEnd`, `failExchange` or `abandon`, and a connection leaves
/// its pool once.
@Suite struct UpstreamConnectionStateMachineTests {
    typealias Machine = UpstreamConnectionStateMachine

    static func at(_ seconds: Int64) -> NIODeadline { .uptimeNanoseconds(UInt64(seconds) * 1_000_000_000) }

    /// A machine carrying one lease whose request was sent whole; the response head is due at 10 s.
    static func leased(requestSent: Bool = true) -> Machine {
        var m = Machine()
        #expect(m.begin(responseTimeout: .seconds(10)) == .writeHead)
        if requestSent { m.requestEndSent(now: Self.at(0)) }
        return m
    }

    // MARK: Clean ends

    @Test func keepAliveExchangeGoesIdleAndTheNextLeaseWorks() {
        var m = Self.leased()
        #expect(m.responseHead(keepAlive: true) == .forwardHead)
        #expect(m.responseBody() == .forwardBody)
        #expect(m.responseBody() == .forwardBody)
        #expect(m.responseEnd() == .forwardEnd(.reusable))
        #expect(m.isIdle)
        #expect(!m.isClosed)

        #expect(m.begin(responseTimeout: .seconds(10)) == .writeHead)
        m.requestEndSent(now: Self.at(0))
        #expect(m.responseHead(keepAlive: true) == .forwardHead)
        #expect(m.responseEnd() == .forwardEnd(.reusable))
        #expect(m.isIdle)
    }

    // MARK: Tunnels

    @Test func a101EndsTheLeaseAndOpensATunnelThatEndsOnce() {
        var m = Self.leased()
        #expect(m.responseHead(keepAlive: false, switching: true) == .openTunnel)
        #expect(m.isTunnel && !m.isIdle && !m.isClosed)
        #expect(m.tunnelData() == .forwardTunnel)
        // No HTTP event, timer or pool action touches a tunnel.
        #expect(m.responseBody() == .none)
        #expect(m.responseEnd() == .none)
        #expect(m.checkTimeout(now: Self.at(100)) == .none)
        #expect(m.closeIdle() == .none)
        #expect(m.begin(responseTimeout: .seconds(1)) == .refuseBegin)
        #expect(m.channelInactive() == .endTunnel)
        #expect(m.isClosed)
        #expect(m.abandon() == .none)
        #expect(m.tunnelData() == .none)
    }

    @Test func aTunnelClosedByItsDelegateIsNotReportedBack() {
        var m = Self.leased()
        #expect(m.responseHead(keepAlive: false, switching: true) == .openTunnel)
        #expect(m.abandon() == .abandonTunnel)
        #expect(m.channelInactive() == .none)
        var e = Self.leased()
        #expect(e.responseHead(keepAlive: false, switching: true) == .openTunnel)
        #expect(e.errorCaught("reset") == .endTunnel)
        #expect(e.channelInactive() == .none)
    }

    @Test func connectionCloseResponseClosesTheConnection() {
        var m = Self.leased()
        #expect(m.responseHead(keepAlive: false) == .forwardHead)
        #expect(m.responseBody() == .forwardBody)
        #expect(m.responseEnd() == .forwardEnd(.closed))
        #expect(m.isClosed)
        // The close we make is followed by channelInactive: nothing is released again.
        #expect(m.channelInactive() == .none)
        #expect(m.begin(responseTimeout: .seconds(10)) == .refuseBegin)
    }

    @Test func earlyAnswerIsNeverReused() {
        // The upstream answered (keep-alive even) before the request's end was written.
        var m = Self.leased(requestSent: false)
        #expect(m.responseHead(keepAlive: true) == .forwardHead)
        #expect(m.responseEnd() == .forwardEnd(.closed))
        #expect(m.isClosed)
        // The request end written afterwards changes nothing.
        m.requestEndSent(now: Self.at(0))
        #expect(m.isClosed)
        #expect(m.channelInactive() == .none)
        #expect(m.begin(responseTimeout: .seconds(10)) == .refuseBegin)
    }

    @Test func requestEndSentAfterTheHeadStillAllowsReuse() {
        // The head arrived while the body was still going up; the end was sent before the response ended.
        var m = Self.leased(requestSent: false)
        #expect(m.responseHead(keepAlive: true) == .forwardHead)
        m.requestEndSent(now: Self.at(0))
        #expect(m.responseEnd() == .forwardEnd(.reusable))
        #expect(m.isIdle)
    }

    // MARK: Failures

    @Test func channelInactiveBeforeTheResponseHeadFailsTheExchange() {
        var m = Self.leased()
        #expect(m.channelInactive() == .failExchange(.connectionClosed("upstream closed before responding")))
        #expect(m.isClosed)
        #expect(m.channelInactive() == .none)
        #expect(m.responseEnd() == .none)
    }

    @Test func channelInactiveMidResponseFailsTheExchange() {
        var m = Self.leased()
        #expect(m.responseHead(keepAlive: true) == .forwardHead)
        #expect(m.responseBody() == .forwardBody)
        #expect(m.channelInactive() == .failExchange(.connectionClosed("upstream closed mid-response")))
        #expect(m.isClosed)
        #expect(m.responseBody() == .none)
        #expect(m.responseEnd() == .none)
        #expect(m.errorCaught("late") == .none)
    }

    @Test func errorCaughtFailsTheExchangeOnce() {
        var m = Self.leased()
        #expect(m.responseHead(keepAlive: true) == .forwardHead)
        #expect(m.errorCaught("bad chunk") == .failExchange(.malformedResponse("bad chunk")))
        #expect(m.isClosed)
        // Our close is followed by channelInactive.
        #expect(m.channelInactive() == .none)
        #expect(m.errorCaught("again") == .none)
    }

    /// A machine whose first exchange ended cleanly and whose second lease (on the reused connection) is sent.
    static func reusedLease() -> Machine {
        var m = Self.leased()
        #expect(m.responseHead(keepAlive: true) == .forwardHead)
        #expect(m.responseEnd() == .forwardEnd(.reusable))
        #expect(m.begin(responseTimeout: .seconds(10)) == .writeHead)
        m.requestEndSent(now: Self.at(1))
        return m
    }

    @Test func aReusedConnectionLostBeforeAnyResponseIsTheKeepAliveRace() {
        // The upstream closed (or reset) its idle side as the gateway reused it: not held against the target.
        var closed = Self.reusedLease()
        let lost = closed.channelInactive()
        #expect(lost == .failExchange(.reusedConnectionLost("upstream closed a reused connection before responding")))
        if case .failExchange(let e) = lost { #expect(!e.isTargetFailure && !e.nothingSent) }
        var reset = Self.reusedLease()
        #expect(reset.errorCaught("connection reset by peer", io: true) == .failExchange(.reusedConnectionLost("connection reset by peer")))
        // A garbled answer on a reused connection is still the target's fault.
        var garbled = Self.reusedLease()
        #expect(garbled.errorCaught("bad status line") == .failExchange(.malformedResponse("bad status line")))
        // So is a reset on a fresh connection, and a cut after the head on a reused one.
        var fresh = Self.leased()
        #expect(fresh.errorCaught("connection reset by peer", io: true) == .failExchange(.malformedResponse("connection reset by peer")))
        var midway = Self.reusedLease()
        #expect(midway.responseHead(keepAlive: true) == .forwardHead)
        #expect(midway.channelInactive() == .failExchange(.connectionClosed("upstream closed mid-response")))
        #expect(UpstreamError.connectionClosed("x").isTargetFailure)
        #expect(UpstreamError.malformedResponse("x").isTargetFailure)
    }

    @Test func errorWhileIdleLeavesThePool() {
        var m = Machine()
        #expect(m.errorCaught("reset") == .closeIdle)
        #expect(m.channelInactive() == .none)
    }

    @Test func responseTimeoutFiresAtTheDeadlineNotBefore() {
        var m = Self.leased()
        #expect(m.checkTimeout(now: Self.at(0)) == .none)
        #expect(m.checkTimeout(now: .uptimeNanoseconds(10_000_000_000 - 1)) == .none)
        #expect(m.checkTimeout(now: Self.at(10)) == .failExchange(.responseTimeout("no response within the response timeout")))
        #expect(m.isClosed)
        #expect(m.checkTimeout(now: Self.at(11)) == .none)
        #expect(m.channelInactive() == .none)
    }

    @Test func responseTimeoutAfterTheDeadline() {
        var m = Self.leased()
        #expect(m.checkTimeout(now: Self.at(60)) == .failExchange(.responseTimeout("no response within the response timeout")))
        #expect(m.isClosed)
    }

    @Test func responseTimeoutStopsOnceTheHeadArrived() {
        var m = Self.leased()
        #expect(m.responseHead(keepAlive: true) == .forwardHead)
        #expect(m.checkTimeout(now: Self.at(60)) == .none)
        #expect(m.responseEnd() == .forwardEnd(.reusable))
    }

    /// README: `response_timeout` is "request sent -> response head received": an upload that takes longer than
    /// the timeout is not cut as a response timeout; the clock starts when the request's end is sent.
    @Test func responseTimeoutWaitsForTheRequestToBeSent() {
        var m = Self.leased(requestSent: false)
        #expect(m.checkTimeout(now: Self.at(10)) == .none)
        #expect(m.checkTimeout(now: Self.at(60)) == .none)
        m.requestEndSent(now: Self.at(60))
        #expect(m.checkTimeout(now: Self.at(69)) == .none)
        #expect(m.checkTimeout(now: Self.at(70)) == .failExchange(.responseTimeout("no response within the response timeout")))
    }

    @Test func idleConnectionHasNoResponseTimeout() {
        var m = Machine()
        #expect(m.checkTimeout(now: Self.at(1_000)) == .none)
        #expect(m.isIdle)
    }

    // MARK: Abandon (the production leak)

    @Test func abandonWhileActiveThenChannelInactiveReleasesOnce() {
        var m = Self.leased()
        #expect(m.responseHead(keepAlive: true) == .forwardHead)
        #expect(m.abandon() == .abandon)
        #expect(m.isClosed)
        // The channelInactive that follows our close must not release the lease a second time.
        #expect(m.channelInactive() == .none)
        #expect(m.abandon() == .none)
        #expect(m.closeIdle() == .none)
    }

    @Test func abandonBeforeTheResponseHead() {
        var m = Self.leased(requestSent: false)
        #expect(m.abandon() == .abandon)
        #expect(m.checkTimeout(now: Self.at(60)) == .none)
        #expect(m.channelInactive() == .none)
    }

    @Test func abandonWhenIdleIsANoOp() {
        var m = Machine()
        #expect(m.abandon() == .none)
        #expect(m.isIdle)
        var used = Self.leased()
        #expect(used.responseHead(keepAlive: true) == .forwardHead)
        #expect(used.responseEnd() == .forwardEnd(.reusable))
        // A delegate that abandons after its response ended must not close a connection back in the pool.
        #expect(used.abandon() == .none)
        #expect(used.isIdle)
    }

    // MARK: Idle

    @Test func closeIdleThenInactiveReleasesOnce() {
        var m = Machine()
        #expect(m.closeIdle() == .closeIdle)
        #expect(m.isClosed)
        #expect(m.channelInactive() == .none)
        #expect(m.closeIdle() == .none)
    }

    @Test func closeIdleIsRefusedWhileActive() {
        var m = Self.leased()
        #expect(m.closeIdle() == .none)
        #expect(m.responseHead(keepAlive: true) == .forwardHead)
        #expect(m.responseEnd() == .forwardEnd(.reusable))
    }

    @Test func idleConnectionClosedByThePeerLeavesThePool() {
        var m = Machine()
        #expect(m.channelInactive() == .closeIdle)
        #expect(m.closeIdle() == .none)
        #expect(m.begin(responseTimeout: .seconds(10)) == .refuseBegin)
    }

    @Test func unsolicitedResponseWhileIdleClosesTheConnection() {
        var head = Machine()
        #expect(head.responseHead(keepAlive: true) == .closeIdle)
        #expect(head.isClosed)
        #expect(head.responseEnd() == .none)
        #expect(head.channelInactive() == .none)

        var body = Machine()
        #expect(body.responseBody() == .closeIdle)
        #expect(body.channelInactive() == .none)

        var end = Machine()
        #expect(end.responseEnd() == .closeIdle)
        #expect(end.channelInactive() == .none)
    }

    @Test func beginWhenNotIdleIsRefused() {
        var m = Self.leased()
        #expect(m.begin(responseTimeout: .seconds(10)) == .refuseBegin)
        // The running lease is untouched.
        #expect(m.responseHead(keepAlive: true) == .forwardHead)
        #expect(m.responseEnd() == .forwardEnd(.reusable))

        var closed = Machine()
        #expect(closed.closeIdle() == .closeIdle)
        #expect(closed.begin(responseTimeout: .seconds(10)) == .refuseBegin)
    }

    // MARK: The invariant over random sequences

    enum Event: CaseIterable {
        case begin, requestEndSent, responseHead, responseHeadClose, responseBody, responseEnd, channelInactive,
            errorCaught, checkTimeoutEarly, checkTimeoutLate, abandon, closeIdle, responseHeadSwitching, tunnelData

        /// Exchanges are common, the ways a connection dies (and unsolicited responses) rarer, so connections
        /// live long enough to be reused.
        func weight(idle: Bool) -> Int {
            switch (self, idle) {
            case (.begin, true): 12
            case (.requestEndSent, false): 12
            case (.responseHead, false), (.responseEnd, false): 6
            case (.responseBody, false): 3
            default: 1
            }
        }
        static let whenIdle = allCases.flatMap { Array(repeating: $0, count: $0.weight(idle: true)) }
        static let whenActive = allCases.flatMap { Array(repeating: $0, count: $0.weight(idle: false)) }
    }

    /// Every lease is released exactly once (never more, never less once the connection is idle or closed), a
    /// connection leaves its pool at most once, and nothing happens after it left. A sequence runs over several
    /// connections: when one closes, the next opens.
    @Test(arguments: [1, 2, 3, 42, 2024] as [UInt64])
    func everyLeaseIsReleasedExactlyOnce(seed: UInt64) {
        var rng = SeededRandom(seed: seed)
        var totalLeases = 0
        var reused = 0
        for _ in 0..<300 {
            var sequence: [String] = []
            var m = Machine()
            var leases = 0
            var releases = 0
            var leftPool = 0
            for _ in 0..<Int.random(in: 1...60, using: &rng) {
                let event = (m.isIdle ? Event.whenIdle : Event.whenActive).randomElement(using: &rng)!
                sequence.append("\(event)")
                let wasClosed = m.isClosed
                let wasTunnel = m.isTunnel
                let action: Machine.Action
                switch event {
                case .begin: action = m.begin(responseTimeout: .seconds(10))
                case .requestEndSent:
                    m.requestEndSent(now: Self.at(0))
                    action = .none
                case .responseHead: action = m.responseHead(keepAlive: true)
                case .responseHeadClose: action = m.responseHead(keepAlive: false)
                case .responseBody: action = m.responseBody()
                case .responseEnd: action = m.responseEnd()
                case .channelInactive: action = m.channelInactive()
                case .errorCaught: action = m.errorCaught("e")
                case .checkTimeoutEarly: action = m.checkTimeout(now: Self.at(9))
                case .checkTimeoutLate: action = m.checkTimeout(now: Self.at(10))
                case .abandon: action = m.abandon()
                case .closeIdle: action = m.closeIdle()
                case .responseHeadSwitching: action = m.responseHead(keepAlive: false, switching: true)
                case .tunnelData: action = m.tunnelData()
                }
                switch action {
                case .writeHead:
                    leases += 1
                    if leases > 1 { reused += 1 }
                case .forwardEnd(.reusable): releases += 1
                case .forwardEnd(.closed), .failExchange, .abandon:
                    releases += 1
                    leftPool += 1
                case .closeIdle:
                    #expect(releases == leases, "closeIdle with a lease outstanding: \(sequence)")
                    leftPool += 1
                case .openTunnel:
                    // The lease ends and the pool forgets the connection, which lives on as a tunnel.
                    releases += 1
                    leftPool += 1
                case .forwardTunnel, .endTunnel, .abandonTunnel:
                    #expect(wasTunnel, "tunnel action outside a tunnel: \(sequence)")
                case .none, .forwardHead, .forwardBody, .refuseBegin: break
                }
                if wasClosed {
                    #expect(action == .none || action == .refuseBegin, "acted after close: \(sequence)")
                }
                #expect(releases <= leases, "released more than leased: \(sequence)")
                #expect(leftPool <= 1, "left the pool twice: \(sequence)")
                if m.isIdle || m.isClosed || m.isTunnel {
                    #expect(releases == leases, "lease not released: \(sequence)")
                } else {
                    #expect(releases == leases - 1, "active without exactly one open lease: \(sequence)")
                }
                #expect((m.isClosed || m.isTunnel) == (leftPool == 1), "closed without leaving the pool: \(sequence)")
                if m.isClosed {
                    // The pool opens the next connection (late events for the old one were checked above).
                    totalLeases += leases
                    m = Machine()
                    leases = 0
                    releases = 0
                    leftPool = 0
                    sequence.append("|next connection|")
                }
            }
            totalLeases += leases
        }
        #expect(totalLeases > 1000, "the sequences hardly exercised a lease")
        // (Tunnels, which end a connection's reuse, take a share of the sequences.)
        #expect(reused > 150, "the sequences hardly reused a connection")
    }
}

/// A small deterministic generator (SplitMix64), so random sequences replay from their seed.
struct SeededRandom: RandomNumberGenerator {
    private var state: UInt64

    init(seed: UInt64) { state = seed }

    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
