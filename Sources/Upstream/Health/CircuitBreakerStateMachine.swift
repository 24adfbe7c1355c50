import NIOCore

/// The passive health of one upstream target, driven by the outcomes of real requests (pure: no I/O; time is
/// passed in).
///
/// Closed, it admits every request and counts failures in a row; `consecutiveFailures` of them open it. Open, it
/// admits nothing until `openFor` has passed; then it is half-open and admits exactly one request, the probe.
/// The probe's success closes the circuit, its failure opens it again for another `openFor`. A probe abandoned
/// before it was sent lets the next request probe; a probe without an outcome for `openFor` (sent, then its client
/// went away; or never heard of again) lets the next request after that probe, so nothing holds the target out
/// for good.
///
/// Outcomes of requests admitted before the circuit opened, reported while it is open or half-open, change
/// nothing, and neither do those of earlier probes: only the current probe speaks for a target that was ejected.
public struct CircuitBreakerStateMachine: Sendable, Equatable {
    /// One probe of a half-open circuit; a probe's outcome counts only while it is the circuit's current probe.
    public typealias ProbeID = UInt64

    private struct Probe: Sendable, Equatable {
        var id: ProbeID
        /// When it was admitted: after `openFor` without an outcome another probe may go.
        var since: NIODeadline
    }

    private enum State: Sendable, Equatable {
        case closed(failures: Int)
        case open(until: NIODeadline)
        /// `probe`: the probe in flight; nil: the next request probes.
        case halfOpen(probe: Probe?)
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
        /// Allowed as the half-open circuit's single probe: its outcome must be reported with this id, or
        /// ``probeAbandoned(_:)`` called.
        case probe(ProbeID)
        case reject
    }

    /// A change operators should hear about; the caller logs it and updates its gauges.
    public enum Transition: Sendable, Equatable {
        case none
        case opened
        case closed
    }

    private var state: State = .closed(failures: 0)
    private var probes: ProbeID = 0
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
        case .halfOpen(let probe): probe.map { now - $0.since >= openFor } ?? true
        }
    }

    public mutating func admit(now: NIODeadline) -> Admission {
        switch state {
        case .closed:
            return .allow
        case .open(let until):
            guard now >= until else { return .reject }
        case .halfOpen(let probe):
            if let probe, now - probe.since < openFor { return .reject }
        }
        probes += 1
        state = .halfOpen(probe: Probe(id: probes, since: now))
        return .probe(probes)
    }

    /// The target answered (a 5xx counts as an answer unless the caller reports it as a failure). `probe`: the
    /// request was admitted as that probe; nil: as an ordinary request.
    public mutating func succeeded(probe: ProbeID?) -> Transition {
        switch state {
        case .closed:
            state = .closed(failures: 0)
            return .none
        case .halfOpen(let current?) where probe == current.id:
            state = .closed(failures: 0)
            return .closed
        case .halfOpen, .open:
            return .none
        }
    }

    /// The target failed a request: a connect error, a reset, a timeout (or a 5xx, when those count).
    public mutating func failed(probe: ProbeID?, now: NIODeadline) -> Transition {
        switch state {
        case .closed(let failures):
            if failures + 1 >= threshold {
                state = .open(until: now + openFor)
                return .opened
            }
            state = .closed(failures: failures + 1)
            return .none
        case .halfOpen(let current?) where probe == current.id:
            state = .open(until: now + openFor)
            return .opened
        case .halfOpen, .open:
            return .none
        }
    }

    /// The probe ended before anything reached the target (its client went away while it waited for a
    /// connection): the next request probes. A probe that was sent and then lost its client is not abandoned: the
    /// target may be hanging, and the next probe goes `openFor` after it.
    public mutating func probeAbandoned(_ probe: ProbeID) {
        if case .halfOpen(let current?) = state, current.id == probe { state = .halfOpen(probe: nil) }
    }
}
