import NIOCore
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
        #expect(m.failed(probe: false, now: at(openedAt)) == .none)
        #expect(m.failed(probe: false, now: at(openedAt)) == .none)
        #expect(m.failed(probe: false, now: at(openedAt)) == .opened)
        return m
    }

    @Test func closedAdmitsEverythingAndIsClear() {
        var m = Self.machine()
        #expect(m.isClear)
        #expect(m.phase(now: Self.at(0)) == .closed)
        for i in 0..<100 { #expect(m.admit(now: Self.at(Int64(i))) == .allow) }
        #expect(m.succeeded(probe: false) == .none)
        #expect(m.isClear)
    }

    @Test func opensAfterConsecutiveFailuresOnly() {
        var m = Self.machine()
        #expect(m.failed(probe: false, now: Self.at(0)) == .none)
        #expect(!m.isClear)
        #expect(m.failed(probe: false, now: Self.at(1)) == .none)
        #expect(m.succeeded(probe: false) == .none)  // the run is broken
        #expect(m.isClear)
        #expect(m.failed(probe: false, now: Self.at(2)) == .none)
        #expect(m.failed(probe: false, now: Self.at(3)) == .none)
        #expect(m.admit(now: Self.at(3)) == .allow)
        #expect(m.failed(probe: false, now: Self.at(4)) == .opened)
        #expect(m.phase(now: Self.at(4)) == .open)
        #expect(m.admit(now: Self.at(5)) == .reject)
        #expect(!m.wouldAdmit(now: Self.at(5)))
    }

    @Test func thresholdOfOneOpensOnTheFirstFailure() {
        var m = Machine(consecutiveFailures: 1, openFor: .milliseconds(100))
        #expect(m.failed(probe: false, now: Self.at(0)) == .opened)
        #expect(m.admit(now: Self.at(99)) == .reject)
        #expect(m.admit(now: Self.at(100)) == .probe)
    }

    @Test func openRejectsUntilOpenForThenAdmitsExactlyOneProbe() {
        var m = Self.opened(at: 0)
        #expect(m.admit(now: Self.at(9_999)) == .reject)
        #expect(m.phase(now: Self.at(9_999)) == .open)
        #expect(m.phase(now: Self.at(10_000)) == .halfOpen)
        #expect(m.wouldAdmit(now: Self.at(10_000)))
        #expect(m.admit(now: Self.at(10_000)) == .probe)
        // While the probe is out, nobody else goes.
        #expect(!m.wouldAdmit(now: Self.at(10_001)))
        #expect(m.admit(now: Self.at(10_001)) == .reject)
        #expect(m.admit(now: Self.at(15_000)) == .reject)
        #expect(m.phase(now: Self.at(15_000)) == .halfOpen)
    }

    @Test func probeSuccessCloses() {
        var m = Self.opened()
        #expect(m.admit(now: Self.at(10_000)) == .probe)
        #expect(m.succeeded(probe: true) == .closed)
        #expect(m.isClear)
        #expect(m.admit(now: Self.at(10_001)) == .allow)
        // Counting starts afresh.
        #expect(m.failed(probe: false, now: Self.at(10_002)) == .none)
        #expect(m.failed(probe: false, now: Self.at(10_003)) == .none)
        #expect(m.failed(probe: false, now: Self.at(10_004)) == .opened)
    }

    @Test func probeFailureReopensForAnotherOpenFor() {
        var m = Self.opened()
        #expect(m.admit(now: Self.at(10_000)) == .probe)
        #expect(m.failed(probe: true, now: Self.at(10_500)) == .opened)
        #expect(m.phase(now: Self.at(10_500)) == .open)
        #expect(m.admit(now: Self.at(20_499)) == .reject)
        #expect(m.admit(now: Self.at(20_500)) == .probe)
    }

    @Test func stragglersDoNotSpeakForAnEjectedTarget() {
        // Requests admitted before the circuit opened report late: neither closes nor re-opens it.
        var m = Self.opened()
        #expect(m.succeeded(probe: false) == .none)
        #expect(m.failed(probe: false, now: Self.at(1)) == .none)
        #expect(m.phase(now: Self.at(1)) == .open)
        #expect(m.admit(now: Self.at(10_000)) == .probe)
        #expect(m.succeeded(probe: false) == .none)
        #expect(m.failed(probe: false, now: Self.at(10_001)) == .none)
        #expect(m.phase(now: Self.at(10_001)) == .halfOpen)
        #expect(m.admit(now: Self.at(10_002)) == .reject)
    }

    @Test func abandonedProbeLetsTheNextRequestProbe() {
        var m = Self.opened()
        #expect(m.admit(now: Self.at(10_000)) == .probe)
        m.probeAbandoned()
        #expect(m.wouldAdmit(now: Self.at(10_001)))
        #expect(m.admit(now: Self.at(10_001)) == .probe)
        #expect(m.admit(now: Self.at(10_002)) == .reject)
        #expect(m.succeeded(probe: true) == .closed)
    }

    @Test func abandoningWhenNotHalfOpenChangesNothing() {
        var closed = Self.machine()
        closed.probeAbandoned()
        #expect(closed.isClear)
        var open = Self.opened()
        open.probeAbandoned()
        #expect(open.admit(now: Self.at(1)) == .reject)
    }

    @Test func aProbeThatNeverReportsCannotHoldTheTargetOutForGood() {
        var m = Self.opened()
        #expect(m.admit(now: Self.at(10_000)) == .probe)
        #expect(m.admit(now: Self.at(19_999)) == .reject)
        // A whole open_for without an outcome: another probe goes.
        #expect(m.admit(now: Self.at(20_000)) == .probe)
        #expect(m.admit(now: Self.at(20_001)) == .reject)
        #expect(m.failed(probe: true, now: Self.at(20_002)) == .opened)
        #expect(m.admit(now: Self.at(30_001)) == .reject)
        #expect(m.admit(now: Self.at(30_002)) == .probe)
    }

    @Test func wouldAdmitNeverTakesTheProbe() {
        let m = Self.opened()
        for _ in 0..<3 { #expect(m.wouldAdmit(now: Self.at(10_000))) }
        var copy = m
        #expect(copy.admit(now: Self.at(10_000)) == .probe)
    }

    @Test func executorKeepsTheFastPathInStep() {
        let circuit = TargetCircuit(Self.machine(), on5xx: false)
        #expect(circuit.admit(now: Self.at(0)) == .allow)
        #expect(circuit.record(success: false, probe: false, now: Self.at(0)) == .none)
        #expect(circuit.record(success: false, probe: false, now: Self.at(0)) == .none)
        // A success after failures must reach the machine (the fast path is only for a clear circuit).
        #expect(circuit.record(success: true, probe: false, now: Self.at(0)) == .none)
        for _ in 0..<2 { #expect(circuit.record(success: false, probe: false, now: Self.at(1)) == .none) }
        #expect(circuit.record(success: false, probe: false, now: Self.at(1)) == .opened)
        #expect(circuit.openedCount == 1)
        #expect(circuit.phase(now: Self.at(2)) == .open)
        #expect(!circuit.wouldAdmit(now: Self.at(2)))
        #expect(circuit.admit(now: Self.at(10_001)) == .probe)
        #expect(circuit.record(success: true, probe: true, now: Self.at(10_002)) == .closed)
        #expect(circuit.phase(now: Self.at(10_003)) == .closed)
        #expect(circuit.openedCount == 1)
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
    }
}
