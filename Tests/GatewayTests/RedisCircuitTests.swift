import NIOCore
import Testing

@testable import Gateway

/// The circuit breaker as a pure state machine on an injected clock.
@Suite struct RedisCircuitTests {
    @Test func opensAfterConsecutiveFailuresAndProbesWhenHalfOpen() {
        var c = RedisCircuit(failureThreshold: 3, openFor: .milliseconds(500))
        let t0 = NIODeadline.uptimeNanoseconds(1_000_000_000)
        #expect(c.allow(now: t0))
        c.failed(now: t0)
        c.failed(now: t0)
        c.succeeded()  // a success resets the run
        c.failed(now: t0)
        c.failed(now: t0)
        #expect(!c.isOpen)
        c.failed(now: t0)
        #expect(c.isOpen)
        #expect(!c.allow(now: t0 + .milliseconds(499)))
        #expect(c.allow(now: t0 + .milliseconds(500)))  // half-open: one probe
        #expect(!c.allow(now: t0 + .milliseconds(501)))  // no second probe while the first is out
        c.failed(now: t0 + .milliseconds(600))
        #expect(c.isOpen)
        #expect(c.allow(now: t0 + .milliseconds(1100)))
        c.succeeded()
        #expect(c.allow(now: t0 + .milliseconds(1101)))
        #expect(c.allow(now: t0 + .milliseconds(1102)))
    }
}
