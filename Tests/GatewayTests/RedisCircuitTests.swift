import NIOCore
import Testing

@testable import Gateway
@testable import Redis

/// The circuit breaker as a pure state machine on an injected clock.
@Suite struct RedisCircuitTests {
    func allow(_ c: inout RedisCircuit, _ now: NIODeadline) -> Bool { c.allow(now: now) }

    @Test func opensAfterConsecutiveFailuresAndProbesWhenHalfOpen() {
        var c = RedisCircuit(failureThreshold: 3, openFor: .milliseconds(500))
        let t0 = NIODeadline.uptimeNanoseconds(1_000_000_000)
        #expect(allow(&c, t0))
        c.failed(now: t0)
        c.failed(now: t0)
        c.succeeded()  // a success resets the run
        c.failed(now: t0)
        c.failed(now: t0)
        #expect(!c.isOpen)
        c.failed(now: t0)
        #expect(c.isOpen)
        #expect(!allow(&c, t0 + .milliseconds(499)))
        #expect(allow(&c, t0 + .milliseconds(500)))  // half-open: one probe
        #expect(!allow(&c, t0 + .milliseconds(501)))  // no second probe while the first is out
        c.failed(now: t0 + .milliseconds(600))
        #expect(c.isOpen)
        #expect(allow(&c, t0 + .milliseconds(1100)))
        c.succeeded()
        #expect(allow(&c, t0 + .milliseconds(1101)))
        #expect(allow(&c, t0 + .milliseconds(1102)))
    }
}
