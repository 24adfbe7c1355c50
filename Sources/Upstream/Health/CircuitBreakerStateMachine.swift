import NIOCore

/// The passive health of one upstream target, driven by the outcomes of real requests (pure: no I/O; time is
/// passed in).
///
/// Closed, it admits every request and counts failures in a row; `consecutiveFailures` of them open it. Open, it
/// admits nothing until `openFor` has passed; then it is half-open and admits exactly one request, the probe.
/// The probe's success closes the circuit, its failure opens it again for another `openFor`. A probe that ends
/// without an outcome (its client went away before the upstream answered) lets the next request probe; so does
/// a probe that has not reported within `openFor` (it cannot hold the target out for good).
///
/// Outcomes of requests admitted before the circuit opened, reported while it is open or half-open, change
/// nothing: only the probe speaks for a target that was ejected.
public struct CircuitBreakerStateMachine: Sendable, Equatable {
    private enum State: Sendable, Equatable {
        case closed(failures: Int)
        case open(until: NIODeadline)
        /// `probeSince`: when the probe in flight was admitted; nil: the next request probes.
        case halfOpen(probeSince: NIODeadline?)
    }

    /// The state as operators see it (metrics, logs).
    public enum Phase: String, Sendable, Equatable, CaseIterable {
        case closed
        case open
        case halfOpen = "half_open"
    }

    /// Whether a request may go to the target.
    public enum Admission: Sendable, Equatable {
        case allow
        /// Allowed as the half-open circuit's single probe: its outcome must be reported with `probe: true`,
        /// or ``probeAbandoned()`` called.
        case probe
        case reject
    }

    /// A change operators should hear about; the caller logs it and updates its gauges.
    public enum Transition: Sendable, Equatable {
        case none
        case opened
        case closed
    }

    private var state: State = .closed(failures: 0)
    private let threshold: Int
    private let openFor: TimeAmount

    public init(consecutiveFailures: Int, openFor: TimeAmount) {
        self.threshold = max(1, consecutiveFailures)
        self.openFor = max(.nanoseconds(1), openFor)
    }

    /// True while the circuit is closed with no failure counted: nothing to do for a success, and every request
    /// is admitted (the executor's lock-free fast path).
    public var isClear: Bool { state == .closed(failures: 0) }

    public func phase(now: NIODeadline) -> Phase {
        switch state {
        case .closed: .closed
        case .open(let until): now < until ? .open : .halfOpen
        case .halfOpen: .halfOpen
        }
    }

    /// What ``admit(now:)`` would answer, without taking the probe (for balancing's look over the targets).
    public func wouldAdmit(now: NIODeadline) -> Bool {
        switch state {
        case .closed: true
        case .open(let until): now >= until
        case .halfOpen(let since): since.map { now - $0 >= openFor } ?? true
        }
    }

    public mutating func admit(now: NIODeadline) -> Admission {
        switch state {
        case .closed:
            return .allow
        case .open(let until):
            guard now >= until else { return .reject }
            state = .halfOpen(probeSince: now)
            return .probe
        case .halfOpen(let since):
            if let since, now - since < openFor { return .reject }
            state = .halfOpen(probeSince: now)
            return .probe
        }
    }

    /// The target answered (a 5xx counts as an answer unless the caller reports it as a failure).
    public mutating func succeeded(probe: Bool) -> Transition {
        switch state {
        case .closed:
            state = .closed(failures: 0)
            return .none
        case .halfOpen where probe:
            state = .closed(failures: 0)
            return .closed
        case .halfOpen, .open:
            return .none
        }
    }

    /// The target failed a request: a connect error, a reset, a timeout (or a 5xx, when those count).
    public mutating func failed(probe: Bool, now: NIODeadline) -> Transition {
        switch state {
        case .closed(let failures):
            if failures + 1 >= threshold {
                state = .open(until: now + openFor)
                return .opened
            }
            state = .closed(failures: failures + 1)
            return .none
        case .halfOpen where probe:
            state = .open(until: now + openFor)
            return .opened
        case .halfOpen, .open:
            return .none
        }
    }

    /// The probe ended without an outcome: the next request probes.
    public mutating func probeAbandoned() {
        if case .halfOpen = state { state = .halfOpen(probeSince: nil) }
    }
}
