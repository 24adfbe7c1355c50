import NIOCore
import Synchronization

/// The circuit breaker of one upstream target, shared by every event loop: the executor of a
/// ``CircuitBreakerStateMachine``.
///
/// A closed circuit with no failure counted is read without the lock (one relaxed atomic load per request and per
/// success); failures and everything after them take the lock.
public final class TargetCircuit: Sendable {
    public let on5xx: Bool
    private let machine: Mutex<CircuitBreakerStateMachine>
    /// Mirrors `machine.isClear`, written under the lock after every change.
    private let clear = Atomic<Bool>(true)
    private let openings = Atomic<Int>(0)

    public init(_ config: CircuitBreakerStateMachine, on5xx: Bool) {
        self.machine = Mutex(config)
        self.on5xx = on5xx
    }

    /// How many times the circuit has opened (re-openings after a failed probe included).
    public var openedCount: Int { openings.load(ordering: .relaxed) }

    public func phase(now: NIODeadline) -> CircuitBreakerStateMachine.Phase {
        if clear.load(ordering: .relaxed) { return .closed }
        return machine.withLock { $0.phase(now: now) }
    }

    /// `now` is read only when the circuit is not clear.
    public func wouldAdmit(now: @autoclosure () -> NIODeadline) -> Bool {
        if clear.load(ordering: .relaxed) { return true }
        let t = now()
        return machine.withLock { $0.wouldAdmit(now: t) }
    }

    /// `now` is read only when the circuit is not clear.
    public func admit(now: @autoclosure () -> NIODeadline) -> CircuitBreakerStateMachine.Admission {
        if clear.load(ordering: .relaxed) { return .allow }
        let t = now()
        return change { $0.admit(now: t) }
    }

    /// Reports one request's outcome; returns the transition it caused (for the caller's log).
    public func record(
        success: Bool, probe: CircuitBreakerStateMachine.ProbeID?, now: @autoclosure () -> NIODeadline
    ) -> CircuitBreakerStateMachine.Transition {
        if success && probe == nil && clear.load(ordering: .relaxed) { return .none }
        let t = now()
        let transition = change { success ? $0.succeeded(probe: probe) : $0.failed(probe: probe, now: t) }
        if transition == .opened { openings.wrappingAdd(1, ordering: .relaxed) }
        return transition
    }

    public func probeAbandoned(_ probe: CircuitBreakerStateMachine.ProbeID) {
        change { $0.probeAbandoned(probe) }
    }

    @discardableResult
    private func change<T>(_ body: (inout CircuitBreakerStateMachine) -> T) -> T {
        machine.withLock { m in
            let result = body(&m)
            clear.store(m.isClear, ordering: .relaxed)
            return result
        }
    }
}

/// The bound on one upstream's requests in flight from this gateway instance (`max_in_flight`), shared by every
/// event loop.
public final class InFlightLimit: Sendable {
    private let bound: Atomic<Int>
    private let count = Atomic<Int>(0)
    private let shed = Atomic<Int>(0)

    public init(max: Int) {
        self.bound = Atomic(max)
    }

    public var max: Int { bound.load(ordering: .relaxed) }

    /// A reload's new bound (places already taken stay taken).
    public func setMax(_ max: Int) { bound.store(max, ordering: .relaxed) }

    public var current: Int { count.load(ordering: .relaxed) }
    /// Requests refused because the bound was reached.
    public var shedCount: Int { shed.load(ordering: .relaxed) }

    /// Takes a place; false (and counted as shed) when all `max` are taken.
    public func tryAcquire() -> Bool {
        let max = self.max
        var seen = count.load(ordering: .relaxed)
        while seen < max {
            let (exchanged, original) = count.weakCompareExchange(
                expected: seen, desired: seen + 1, successOrdering: .relaxed, failureOrdering: .relaxed)
            if exchanged { return true }
            seen = original
        }
        shed.wrappingAdd(1, ordering: .relaxed)
        return false
    }

    public func release() {
        count.wrappingSubtract(1, ordering: .relaxed)
    }
}
