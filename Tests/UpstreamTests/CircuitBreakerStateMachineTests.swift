import NIOCore
import NIOPosix
import Testing

@testable import Upstream

/// The circuit breaker as a pure machine: admissions and outcomes in, admissions and transitions out, on an
/// injected clock.
@Suite struct CircuitBreakerStateMachineTests {
    typealias Machine = CircuitBreakerStateMachine

    static func at(_ ms: Int64) -> NIODeadline { .uptimeNanoseconds(UInt64(1_000_000_000 + ms * 1_000_000)) }

    /// Three failures in a row open it for 10 s.
    static func machine() -> Machine { Machine(consecutiveFailures: 3, openFor: .seconds(10)) }

    /// A machine opened at `openedAt` ms.
    static func opened(at openedAt: Int64 = 0) -> Machine {
        var m = machine()
        #expect(m.failed(probe: nil, now: at(openedAt)) == .none)
        #expect(m.failed(probe: nil, now: at(openedAt)) == .none)
        #expect(m.failed(probe: nil, now: at(openedAt)) == .opened)
        return m
    }

    /// Admits a probe at `ms`, failing the test when the machine does not.
    static func probe(_ m: inout Machine, at ms: Int64) -> Machine.ProbeID {
        guard case .probe(let id) = m.admit(now: at(ms)) else {
            Issue.record("no probe admitted at \(ms) ms")
            return 0
        }
        return id
    }

    @Test func closedAdmitsEverythingAndIsClear() {
        var m = Self.machine()
        #expect(m.isClear)
        #expect(m.phase(now: Self.at(0)) == .closed)
        for i in 0..<100 { #expect(m.admit(now: Self.at(Int64(i))) == .allow) }
        #expect(m.succeeded(probe: nil) == .none)
        #expect(m.isClear)
    }

    @Test func opensAfterConsecutiveFailuresOnly() {
        var m = Self.machine()
        #expect(m.failed(probe: nil, now: Self.at(0)) == .none)
        #expect(!m.isClear)
        #expect(m.failed(probe: nil, now: Self.at(1)) == .none)
        #expect(m.succeeded(probe: nil) == .none)  // the run is broken
        #expect(m.isClear)
        #expect(m.failed(probe: nil, now: Self.at(2)) == .none)
        #expect(m.failed(probe: nil, now: Self.at(3)) == .none)
        #expect(m.admit(now: Self.at(3)) == .allow)
        #expect(m.failed(probe: nil, now: Self.at(4)) == .opened)
        #expect(m.phase(now: Self.at(4)) == .open)
        #expect(m.admit(now: Self.at(5)) == .reject)
        #expect(!m.wouldAdmit(now: Self.at(5)))
    }

    @Test func thresholdOfOneOpensOnTheFirstFailure() {
        var m = Machine(consecutiveFailures: 1, openFor: .milliseconds(100))
        #expect(m.failed(probe: nil, now: Self.at(0)) == .opened)
        #expect(m.admit(now: Self.at(99)) == .reject)
        #expect(m.admit(now: Self.at(100)) == .probe(1))
    }

    @Test func openRejectsUntilOpenForThenAdmitsExactlyOneProbe() {
        var m = Self.opened(at: 0)
        #expect(m.admit(now: Self.at(9_999)) == .reject)
        #expect(m.phase(now: Self.at(9_999)) == .open)
        #expect(m.phase(now: Self.at(10_000)) == .halfOpen)
        #expect(m.wouldAdmit(now: Self.at(10_000)))
        _ = Self.probe(&m, at: 10_000)
        // While the probe is out, nobody else goes.
        #expect(!m.wouldAdmit(now: Self.at(10_001)))
        #expect(m.admit(now: Self.at(10_001)) == .reject)
        #expect(m.admit(now: Self.at(15_000)) == .reject)
        #expect(m.phase(now: Self.at(15_000)) == .halfOpen)
    }

    @Test func probeSuccessCloses() {
        var m = Self.opened()
        let p = Self.probe(&m, at: 10_000)
        #expect(m.succeeded(probe: p) == .closed)
        #expect(m.isClear)
        #expect(m.admit(now: Self.at(10_001)) == .allow)
        // Counting starts afresh.
        #expect(m.failed(probe: nil, now: Self.at(10_002)) == .none)
        #expect(m.failed(probe: nil, now: Self.at(10_003)) == .none)
        #expect(m.failed(probe: nil, now: Self.at(10_004)) == .opened)
    }

    @Test func probeFailureReopensForAnotherOpenFor() {
        var m = Self.opened()
        let p = Self.probe(&m, at: 10_000)
        #expect(m.failed(probe: p, now: Self.at(10_500)) == .opened)
        #expect(m.phase(now: Self.at(10_500)) == .open)
        #expect(m.admit(now: Self.at(20_499)) == .reject)
        #expect(Self.probe(&m, at: 20_500) != p)
    }

    @Test func stragglersDoNotSpeakForAnEjectedTarget() {
        // Requests admitted before the circuit opened report late: neither closes nor re-opens it.
        var m = Self.opened()
        #expect(m.succeeded(probe: nil) == .none)
        #expect(m.failed(probe: nil, now: Self.at(1)) == .none)
        #expect(m.phase(now: Self.at(1)) == .open)
        _ = Self.probe(&m, at: 10_000)
        #expect(m.succeeded(probe: nil) == .none)
        #expect(m.failed(probe: nil, now: Self.at(10_001)) == .none)
        #expect(m.phase(now: Self.at(10_001)) == .halfOpen)
        #expect(m.admit(now: Self.at(10_002)) == .reject)
    }

    @Test func abandonedProbeLetsTheNextRequestProbe() {
        var m = Self.opened()
        let first = Self.probe(&m, at: 10_000)
        m.probeAbandoned(first)
        #expect(m.wouldAdmit(now: Self.at(10_001)))
        let second = Self.probe(&m, at: 10_001)
        #expect(second != first)
        #expect(m.admit(now: Self.at(10_002)) == .reject)
        #expect(m.succeeded(probe: second) == .closed)
    }

    @Test func abandoningWhenNotHalfOpenChangesNothing() {
        var closed = Self.machine()
        closed.probeAbandoned(1)
        #expect(closed.isClear)
        var open = Self.opened()
        open.probeAbandoned(1)
        #expect(open.admit(now: Self.at(1)) == .reject)
    }

    @Test func aProbeThatNeverReportsCannotHoldTheTargetOutForGood() {
        var m = Self.opened()
        _ = Self.probe(&m, at: 10_000)
        #expect(m.admit(now: Self.at(19_999)) == .reject)
        // A whole open_for without an outcome: another probe goes.
        let second = Self.probe(&m, at: 20_000)
        #expect(m.admit(now: Self.at(20_001)) == .reject)
        #expect(m.failed(probe: second, now: Self.at(20_002)) == .opened)
        #expect(m.admit(now: Self.at(30_001)) == .reject)
        _ = Self.probe(&m, at: 30_002)
    }

    @Test func anEarlierProbeCannotSpeakForTheCurrentOne() {
        var m = Self.opened()
        let stale = Self.probe(&m, at: 10_000)
        let current = Self.probe(&m, at: 20_000)  // the first went silent for open_for
        // The stale probe's late outcomes and abandonment change nothing.
        m.probeAbandoned(stale)
        #expect(m.admit(now: Self.at(20_001)) == .reject)
        #expect(m.succeeded(probe: stale) == .none)
        #expect(m.failed(probe: stale, now: Self.at(20_002)) == .none)
        #expect(m.phase(now: Self.at(20_003)) == .halfOpen)
        #expect(m.succeeded(probe: current) == .closed)
    }

    @Test func wouldAdmitNeverTakesTheProbe() {
        let m = Self.opened()
        for _ in 0..<3 { #expect(m.wouldAdmit(now: Self.at(10_000))) }
        var copy = m
        #expect(copy.admit(now: Self.at(10_000)) == .probe(1))
    }

    @Test func executorKeepsTheFastPathInStep() {
        let circuit = TargetCircuit(Self.machine(), on5xx: false)
        #expect(circuit.admit(now: Self.at(0)) == .allow)
        #expect(circuit.record(success: false, probe: nil, now: Self.at(0)) == .none)
        #expect(circuit.record(success: false, probe: nil, now: Self.at(0)) == .none)
        // A success after failures must reach the machine (the fast path is only for a clear circuit).
        #expect(circuit.record(success: true, probe: nil, now: Self.at(0)) == .none)
        for _ in 0..<2 { #expect(circuit.record(success: false, probe: nil, now: Self.at(1)) == .none) }
        #expect(circuit.record(success: false, probe: nil, now: Self.at(1)) == .opened)
        #expect(circuit.openedCount == 1)
        #expect(circuit.phase(now: Self.at(2)) == .open)
        #expect(!circuit.wouldAdmit(now: Self.at(2)))
        guard case .probe(let p) = circuit.admit(now: Self.at(10_001)) else {
            Issue.record("no probe")
            return
        }
        #expect(circuit.record(success: true, probe: p, now: Self.at(10_002)) == .closed)
        #expect(circuit.phase(now: Self.at(10_003)) == .closed)
        #expect(circuit.openedCount == 1)
    }

    @Test func concurrentAdmissionsTakeOneProbe() async {
        // Many tasks race for a half-open circuit: exactly one gets the probe.
        let circuit = TargetCircuit(Machine(consecutiveFailures: 1, openFor: .milliseconds(1)), on5xx: false)
        #expect(circuit.record(success: false, probe: nil, now: Self.at(0)) == .opened)
        let probes = await withTaskGroup(of: Int.self) { group in
            for _ in 0..<8 {
                group.addTask {
                    var n = 0
                    for _ in 0..<1_000 { if case .probe = circuit.admit(now: Self.at(5)) { n += 1 } }
                    return n
                }
            }
            return await group.reduce(0, +)
        }
        #expect(probes == 1)
    }

    @Test func inFlightLimitShedsBeyondItsBound() {
        let limit = InFlightLimit(max: 2)
        #expect(limit.tryAcquire())
        #expect(limit.tryAcquire())
        #expect(!limit.tryAcquire())
        #expect(limit.current == 2 && limit.shedCount == 1)
        limit.release()
        #expect(limit.tryAcquire())
        #expect(!limit.tryAcquire())
        #expect(limit.shedCount == 2)
        limit.release()
        limit.release()
        #expect(limit.current == 0)
        limit.setMax(1)
        #expect(limit.tryAcquire())
        #expect(!limit.tryAcquire())
        limit.release()
    }

    @Test func inFlightLimitNeverOvershootsUnderContention() async {
        let limit = InFlightLimit(max: 4)
        let peak = await withTaskGroup(of: Int.self) { group in
            for _ in 0..<8 {
                group.addTask {
                    var highest = 0
                    for _ in 0..<5_000 where limit.tryAcquire() {
                        highest = max(highest, limit.current)
                        limit.release()
                    }
                    return highest
                }
            }
            return await group.reduce(0) { max($0, $1) }
        }
        #expect(peak <= 4)
        #expect(limit.current == 0)
    }
}
