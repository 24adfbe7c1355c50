/// The health of one upstream target, driven by probe results (pure: no I/O, no clock).
///
/// A target starts healthy. `unhealthyAfter` consecutive failures mark it unhealthy; `healthyAfter`
/// consecutive successes mark it healthy again.
public struct HealthStateMachine: Sendable, Equatable {
    private enum State: Sendable, Equatable {
        case healthy(failures: Int)
        case unhealthy(successes: Int)
    }

    /// What the caller must do after an event.
    public enum Action: Sendable, Equatable {
        case none
        case markHealthy
        case markUnhealthy
    }

    private var state: State = .healthy(failures: 0)
    private let unhealthyAfter: Int
    private let healthyAfter: Int

    public init(unhealthyAfter: Int, healthyAfter: Int) {
        self.unhealthyAfter = max(1, unhealthyAfter)
        self.healthyAfter = max(1, healthyAfter)
    }

    public var isHealthy: Bool {
        if case .healthy = state { return true }
        return false
    }

    public mutating func probeSucceeded() -> Action {
        switch state {
        case .healthy:
            state = .healthy(failures: 0)
            return .none
        case .unhealthy(let successes):
            if successes + 1 >= healthyAfter {
                state = .healthy(failures: 0)
                return .markHealthy
            }
            state = .unhealthy(successes: successes + 1)
            return .none
        }
    }

    public mutating func probeFailed() -> Action {
        switch state {
        case .healthy(let failures):
            if failures + 1 >= unhealthyAfter {
                state = .unhealthy(successes: 0)
                return .markUnhealthy
            }
            state = .healthy(failures: failures + 1)
            return .none
        case .unhealthy:
            state = .unhealthy(successes: 0)
            return .none
        }
    }
}
