import Testing

@testable import Upstream

@Suite struct HealthStateMachineTests {
    @Test func flipsAfterConsecutiveResults() {
        var m = HealthStateMachine(unhealthyAfter: 3, healthyAfter: 2)
        #expect(m.isHealthy)
        #expect(m.probeFailed() == .none)
        #expect(m.probeFailed() == .none)
        #expect(m.probeSucceeded() == .none)  // resets the failure run
        #expect(m.probeFailed() == .none)
        #expect(m.probeFailed() == .none)
        #expect(m.probeFailed() == .markUnhealthy)
        #expect(!m.isHealthy)
        #expect(m.probeFailed() == .none)
        #expect(m.probeSucceeded() == .none)
        #expect(m.probeFailed() == .none)  // resets the success run
        #expect(m.probeSucceeded() == .none)
        #expect(m.probeSucceeded() == .markHealthy)
        #expect(m.isHealthy)
    }

    @Test func thresholdOfOne() {
        var m = HealthStateMachine(unhealthyAfter: 1, healthyAfter: 1)
        #expect(m.probeFailed() == .markUnhealthy)
        #expect(m.probeSucceeded() == .markHealthy)
    }
}
