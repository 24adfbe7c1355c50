import NIOCore

/// The Redis circuit breaker (pure: events in, decisions out; the clock is passed in).
///
/// Closed: calls go through; `failureThreshold` consecutive failures (timeouts, lost connections) open it.
/// Open: calls fail at once, costing microseconds instead of the timeout, until `openFor` has passed.
/// Half-open: one probe call goes through; its success closes the circuit, its failure opens it again.
struct RedisCircuit: Equatable {
    private enum State: Equatable {
        case closed(failures: Int)
        case open(until: NIODeadline)
        case halfOpen(probing: Bool)
    }

    private var state: State = .closed(failures: 0)
    let failureThreshold: Int
    let openFor: TimeAmount

    init(failureThreshold: Int = 3, openFor: TimeAmount = .milliseconds(500)) {
        self.failureThreshold = max(1, failureThreshold)
        self.openFor = openFor
    }

    var isOpen: Bool {
        if case .open = state { return true }
        return false
    }

    /// May a call go out now?
    mutating func allow(now: NIODeadline) -> Bool {
        switch state {
        case .closed:
            return true
        case .open(let until):
            guard now >= until else { return false }
            state = .halfOpen(probing: true)
            return true
        case .halfOpen(let probing):
            if probing { return false }
            state = .halfOpen(probing: true)
            return true
        }
    }

    mutating func succeeded() {
        state = .closed(failures: 0)
    }

    mutating func failed(now: NIODeadline) {
        switch state {
        case .closed(let failures):
            state = failures + 1 >= failureThreshold ? .open(until: now + openFor) : .closed(failures: failures + 1)
        case .open, .halfOpen:
            state = .open(until: now + openFor)
        }
    }
}
