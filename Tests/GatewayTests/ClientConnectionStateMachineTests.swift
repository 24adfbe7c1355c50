import NIOCore
import Policy
import Testing

@testable import Gateway

/// The client connection's machine: events in, actions out, no channel and no clock (every `now` is given).
/// Each test drives one exchange to one of its ends and checks that the ``End`` comes exactly once.
@Suite struct ClientConnectionStateMachineTests {
    typealias Machine = ClientConnectionStateMachine
    typealias End = Machine.End

    static let configuration = Machine.Configuration(
        idleTimeout: .seconds(60), headerTimeout: .seconds(10), requestTimeout: .seconds(30), sendTimeout: .seconds(60),
        maxPipelinedRequests: 3, maxReadAheadBytes: 1000, chunkedHoldBytes: 100, linger: .seconds(2))

    /// `seconds` after an arbitrary origin, at millisecond resolution.
    static func at(_ seconds: Double) -> NIODeadline { .uptimeNanoseconds(UInt64(1_000_000_000 + seconds * 1e9)) }

    static func machine() -> Machine { Machine(configuration: configuration, now: at(0)) }

    /// A request head handled at `now` (its first byte read then).
    static func head(
        _ m: inout Machine, now: Double = 0, keepAlive: Bool = true, hasBody: Bool = false, chunked: Bool = false,
        upgrade: Bool = false
    ) {
        m.bytesArrived(now: at(now))
        #expect(m.inbound(.head) == .process)
        m.startExchange(now: at(now), keepAlive: keepAlive, hasBody: hasBody, chunked: chunked, upgrade: upgrade)
    }

    /// A body-less GET whose end was read, admitted and attached to an upstream connection (end sent).
    static func attachedGET(_ m: inout Machine, now: Double = 0) {
        head(&m, now: now)
        #expect(m.inbound(.end) == .process)
        #expect(m.requestEnd(now: at(now)) == .none)
        #expect(m.admitted() == .connect)
        m.acquiring()
        #expect(m.attached() == true)
    }

    /// A POST with a `Content-Length` body, attached before its body arrives.
    static func attachedPOST(_ m: inout Machine, now: Double = 0) {
        head(&m, now: now, hasBody: true)
        #expect(m.admitted() == .connect)
        m.acquiring()
        #expect(m.attached() == false)
        #expect(m.inbound(.body(10)) == .process)
        #expect(m.requestBody(10) == .forward)
    }

    /// After an end, nothing produces a second one (checked on a copy, so the caller's machine goes on).
    static func expectNothingAfter(_ machine: Machine, now: Double) {
        var m = machine
        #expect(m.exchange == nil)
        #expect(m.responseEnd(now: at(now)) == nil)
        #expect(m.requestEnd(now: at(now)) == .none)
        #expect(m.upstreamFailed(retry: false) == .none)
        #expect(m.denied(status: 500, code: "x", closeConnection: true, now: at(now)) == nil)
        if m.isClosing {
            #expect(m.clientClosed() == nil)
            #expect(m.malformed() == .none)
        }
    }

    // MARK: Complete exchanges

    @Test func keepAliveGETEndsOnceAndTakesTheNextRequest() {
        var m = Self.machine()
        Self.head(&m)
        #expect(m.inbound(.end) == .process)
        #expect(m.requestEnd(now: Self.at(0)) == .none)  // still deciding
        #expect(m.admitted() == .connect)
        m.acquiring()
        #expect(m.exchange?.upstream == .acquiring)
        #expect(m.attached() == true)  // the request ended: send its end too
        #expect(m.responseHead(status: 200, keepAliveAllowed: true) == true)
        let end = m.responseEnd(now: Self.at(1))
        #expect(end == End(status: 200, code: "", denied: false, upstream: .none, next: .nextRequest))
        #expect(m.state == .idle(since: Self.at(1)))
        Self.expectNothingAfter(m, now: 1)
        #expect(m.clientClosed() == nil)  // a hang-up now ends no exchange
        #expect(m.state == .closed)
    }

    @Test func secondRequestOnTheSameConnection() {
        var m = Self.machine()
        Self.attachedGET(&m)
        #expect(m.responseHead(status: 200, keepAliveAllowed: true) == true)
        #expect(m.responseEnd(now: Self.at(1))?.next == .nextRequest)
        Self.attachedGET(&m, now: 2)
        #expect(m.responseHead(status: 201, keepAliveAllowed: true) == true)
        #expect(m.responseEnd(now: Self.at(3)) == End(status: 201, code: "", denied: false, upstream: .none, next: .nextRequest))
    }

    @Test func requestEndAfterAttachSendsTheEnd() {
        var m = Self.machine()
        Self.attachedPOST(&m)
        #expect(m.inbound(.end) == .process)
        #expect(m.requestEnd(now: Self.at(1)) == .sendEnd)
        #expect(m.responseHead(status: 201, keepAliveAllowed: true) == true)
        #expect(m.responseEnd(now: Self.at(2)) == End(status: 201, code: "", denied: false, upstream: .none, next: .nextRequest))
    }

    /// A local endpoint (the billing webhook on the proxy listener): the body is held past the hold size, bounded
    /// by the body limit, and the request's end asks for the answer; the exchange ends with it, holding nothing.
    @Test func localEndpointHoldsTheWholeBodyThenAnswers() {
        var m = Self.machine()
        Self.head(&m, hasBody: true)
        m.setBodyLimit(500)
        #expect(m.admittedLocally() == .waitForBody)
        for _ in 0..<3 {
            #expect(m.inbound(.body(100)) == .process)
            #expect(m.requestBody(100) == .hold(connect: false))
        }
        #expect(m.readingAllowed, "a local endpoint's body is bounded by its limit, not paused at the hold size")
        #expect(m.inbound(.end) == .process)
        #expect(m.requestEnd(now: Self.at(1)) == .answerLocally)
        #expect(m.responseHead(status: 200, keepAliveAllowed: true) == true)
        let end = m.responseEnd(now: Self.at(1))
        #expect(end == End(status: 200, code: "", denied: false, upstream: .none, next: .nextRequest))
        Self.expectNothingAfter(m, now: 1)
    }

    @Test func localEndpointOverItsLimitAndHangUp() {
        var m = Self.machine()
        Self.head(&m, hasBody: true)
        m.setBodyLimit(150)
        #expect(m.admittedLocally() == .waitForBody)
        #expect(m.requestBody(100) == .hold(connect: false))
        #expect(m.requestBody(100) == .tooLarge)
        var hungUp = Self.machine()
        Self.head(&hungUp, hasBody: true)
        #expect(hungUp.admittedLocally() == .waitForBody)
        #expect(hungUp.clientClosed()?.upstream == Machine.UpstreamDisposal.none)
    }

    /// A chunked body held up to the hold size while the phases decided (the audit queue full) pauses reading; a
    /// local admission resumes it, since the body limit bounds it from then on.
    @Test func localAdmissionResumesReadingPausedByHolding() {
        var m = Self.machine()
        Self.head(&m, hasBody: true, chunked: true)
        m.setBodyLimit(500)
        #expect(m.requestBody(100) == .hold(connect: false))
        #expect(!m.readingAllowed)
        #expect(m.admittedLocally() == .waitForBody)
        #expect(m.readingAllowed)
    }

    @Test func localEndpointWithTheRequestAlreadyWholeAnswersAtOnce() {
        var m = Self.machine()
        Self.head(&m)
        #expect(m.inbound(.end) == .process)
        #expect(m.requestEnd(now: Self.at(0)) == .none)
        #expect(m.admittedLocally() == .connect)
        #expect(m.admittedLocally() == .none, "admitted once")
    }

    @Test func responseThatCannotKeepTheConnectionCloses() {
        var m = Self.machine()
        Self.attachedGET(&m)
        #expect(m.responseHead(status: 200, keepAliveAllowed: false) == false)  // close-delimited
        #expect(m.responseEnd(now: Self.at(1)) == End(status: 200, code: "", denied: false, upstream: .none, next: .close))
        #expect(m.state == .closed)
    }

    @Test func clientAskingForCloseIsClosedAfterItsResponse() {
        var m = Self.machine()
        Self.head(&m, keepAlive: false)
        #expect(m.requestEnd(now: Self.at(0)) == .none)
        #expect(m.admitted() == .connect)
        m.acquiring()
        #expect(m.attached() == true)
        #expect(m.responseHead(status: 200, keepAliveAllowed: true) == false)
        #expect(m.responseEnd(now: Self.at(1))?.next == .close)
    }

    // MARK: Denials

    @Test func denialBeforeTheBodyLingers() {
        var m = Self.machine()
        Self.head(&m, hasBody: true)
        let result = m.denied(status: 401, code: "unauthenticated", closeConnection: false, now: Self.at(1))
        #expect(result?.keepAlive == false)  // the body is still coming: the connection cannot be reused
        #expect(result?.end == End(status: 401, code: "unauthenticated", denied: true, upstream: .none, next: .linger))
        #expect(m.state == .closing(lingerUntil: Self.at(3)))
        #expect(m.readingAllowed)  // input is read and dropped
        #expect(m.inbound(.body(10)) == .discard)
        #expect(m.inbound(.end) == .discard)
        Self.expectNothingAfter(m, now: 1)
        #expect(m.sweep(now: Self.at(2.9)) == .none)
        #expect(m.sweep(now: Self.at(3)) == .close)
        #expect(m.state == .closed)
    }

    @Test func denialOfABodylessRequestKeepsTheConnection() {
        var m = Self.machine()
        Self.head(&m)
        // The phases deny before the request's end is read: the end completes the exchange.
        let result = m.denied(status: 404, code: "route_not_found", closeConnection: false, now: Self.at(0))
        #expect(result?.keepAlive == true)
        #expect(result?.end == nil)
        #expect(m.inbound(.end) == .process)
        #expect(
            m.requestEnd(now: Self.at(1))
                == .ended(End(status: 404, code: "route_not_found", denied: true, upstream: .none, next: .nextRequest)))
        Self.expectNothingAfter(m, now: 1)
    }

    @Test func denialAfterTheRequestEndedEndsAtOnce() {
        var m = Self.machine()
        Self.head(&m, hasBody: true)
        #expect(m.requestBody(5) == .hold(connect: false))
        #expect(m.requestEnd(now: Self.at(0)) == .none)
        let result = m.denied(status: 429, code: "rate_limited", closeConnection: false, now: Self.at(1))
        #expect(result?.keepAlive == true)
        #expect(result?.end == End(status: 429, code: "rate_limited", denied: true, upstream: .none, next: .nextRequest))
    }

    @Test func closingDenialAfterTheRequestEndedCloses() {
        var m = Self.machine()
        Self.head(&m)
        #expect(m.requestEnd(now: Self.at(0)) == .none)
        let result = m.denied(status: 400, code: "bad_request", closeConnection: true, now: Self.at(1))
        #expect(result?.keepAlive == false)
        #expect(result?.end == End(status: 400, code: "bad_request", denied: true, upstream: .none, next: .close))
    }

    @Test func denialAfterTheResponseStartedIsNotWritten() {
        var m = Self.machine()
        Self.attachedGET(&m)
        #expect(m.responseHead(status: 200, keepAliveAllowed: true) == true)
        #expect(m.denied(status: 408, code: "request_timeout", closeConnection: true, now: Self.at(1)) == nil)
        #expect(m.responseEnd(now: Self.at(2))?.status == 200)
    }

    // MARK: Client hang-ups

    @Test func hangUpBeforeAnyHeadEndsNoExchange() {
        var idle = Self.machine()
        #expect(idle.clientClosed() == nil)
        #expect(idle.state == .closed)
        #expect(!idle.readingAllowed)

        var reading = Self.machine()
        reading.bytesArrived(now: Self.at(1))
        #expect(reading.state == .readingHead(since: Self.at(1)))
        #expect(reading.clientClosed() == nil)
        #expect(reading.state == .closed)
    }

    @Test func hangUpWhileThePhasesDecide() {
        var m = Self.machine()
        Self.head(&m)
        #expect(m.clientClosed() == End(status: 499, code: "client_closed", denied: false, upstream: .none, next: .close))
        Self.expectNothingAfter(m, now: 1)
        #expect(m.admitted() == .none)  // a phase resuming late finds no exchange
    }

    @Test func hangUpDuringTheBody() {
        var m = Self.machine()
        Self.attachedPOST(&m)
        #expect(m.clientClosed() == End(status: 499, code: "client_closed", denied: false, upstream: .abandon, next: .close))
        Self.expectNothingAfter(m, now: 1)
    }

    @Test func hangUpWhileAcquiringCancelsTheWait() {
        var m = Self.machine()
        Self.head(&m)
        #expect(m.requestEnd(now: Self.at(0)) == .none)
        #expect(m.admitted() == .connect)
        m.acquiring()
        #expect(m.clientClosed() == End(status: 499, code: "client_closed", denied: false, upstream: .cancelWait, next: .close))
        Self.expectNothingAfter(m, now: 1)
        #expect(m.attached() == false)  // a connection handed out late is not taken
    }

    @Test func hangUpWhileAttachedAbandonsTheConnection() {
        var m = Self.machine()
        Self.attachedGET(&m)
        #expect(m.clientClosed() == End(status: 499, code: "client_closed", denied: false, upstream: .abandon, next: .close))
        Self.expectNothingAfter(m, now: 1)
    }

    @Test func hangUpAfterTheResponseHead() {
        var m = Self.machine()
        Self.attachedGET(&m)
        #expect(m.responseHead(status: 200, keepAliveAllowed: true) == true)
        #expect(m.clientClosed() == End(status: 499, code: "client_closed", denied: false, upstream: .abandon, next: .close))
        Self.expectNothingAfter(m, now: 1)
    }

    @Test func hangUpAfterADenialWaitingForTheRequestEnd() {
        var m = Self.machine()
        Self.head(&m)
        _ = m.denied(status: 404, code: "route_not_found", closeConnection: false, now: Self.at(0))
        // The answer was complete: the record keeps it.
        #expect(m.clientClosed() == End(status: 404, code: "route_not_found", denied: true, upstream: .none, next: .close))
    }

    // MARK: Early answers

    /// The upstream answered before the body was read whole: the response is sent, the rest of the body is
    /// read and dropped, and the exchange ends with the request.
    static func answeredEarly(_ m: inout Machine) {
        Self.attachedPOST(&m)
        #expect(m.responseHead(status: 413, keepAliveAllowed: true) == true)
        #expect(m.responseEnd(now: Self.at(1)) == nil)
        #expect(m.exchange?.upstream == .detached)
        #expect(m.requestBody(10) == .discard)
    }

    @Test func earlyAnswerThenRequestEnd() {
        var m = Self.machine()
        Self.answeredEarly(&m)
        #expect(
            m.requestEnd(now: Self.at(2))
                == .ended(End(status: 413, code: "", denied: false, upstream: .none, next: .nextRequest)))
        Self.expectNothingAfter(m, now: 2)
    }

    @Test func earlyAnswerThenHangUpRecordsTheRealStatus() {
        var m = Self.machine()
        Self.answeredEarly(&m)
        #expect(m.clientClosed() == End(status: 413, code: "", denied: false, upstream: .none, next: .close))
        Self.expectNothingAfter(m, now: 2)
    }

    @Test func earlyAnswerThenRequestTimeout() {
        var m = Self.machine()
        Self.answeredEarly(&m)
        #expect(m.sweep(now: Self.at(29.999)) == .none)
        #expect(
            m.sweep(now: Self.at(30))
                == .ended(End(status: 413, code: "request_timeout", denied: false, upstream: .none, next: .close)))
        Self.expectNothingAfter(m, now: 31)
    }

    // MARK: Timeouts

    @Test func headerTimeoutRunsFromTheFirstByte() {
        var m = Self.machine()
        #expect(m.sweep(now: Self.at(59)) == .none)  // idle is not timed by the header timeout
        m.bytesArrived(now: Self.at(5))
        m.bytesArrived(now: Self.at(14))  // more dribbled bytes do not restart it
        #expect(m.sweep(now: Self.at(14.999)) == .none)
        #expect(m.sweep(now: Self.at(15)) == .headTimeout)
        // The handler answers 408 as a new exchange, which lingers (the head never ended).
        m.startExchange(now: Self.at(15), keepAlive: false, hasBody: false, chunked: false, upgrade: false)
        let result = m.denied(status: 408, code: "request_timeout", closeConnection: true, now: Self.at(15))
        #expect(result?.keepAlive == false)
        #expect(result?.end == End(status: 408, code: "request_timeout", denied: true, upstream: .none, next: .linger))
        #expect(m.sweep(now: Self.at(16)) == .none)
        #expect(m.sweep(now: Self.at(17)) == .close)
    }

    @Test func headerTimeoutIsCappedByTheRequestTimeout() {
        var server = ServerConfig()
        server.headerTimeout = 10_000_000_000
        server.requestTimeout = 3_000_000_000
        #expect(LoopState.connectionConfiguration(server).headerTimeout == .seconds(3))
        server.requestTimeout = 30_000_000_000
        #expect(LoopState.connectionConfiguration(server).headerTimeout == .seconds(10))
    }

    @Test func idleTimeout() {
        var m = Self.machine()
        #expect(m.sweep(now: Self.at(59.999)) == .none)
        #expect(m.sweep(now: Self.at(60)) == .close)
        #expect(m.state == .closed)
    }

    @Test func requestTimeoutBeforeTheResponseRunsFromTheFirstByte() {
        var m = Self.machine()
        m.bytesArrived(now: Self.at(0))
        #expect(m.inbound(.head) == .process)
        m.startExchange(now: Self.at(4), keepAlive: true, hasBody: true, chunked: false, upgrade: false)
        #expect(m.admitted() == .connect)
        m.acquiring()
        #expect(m.attached() == false)
        #expect(m.requestBody(10) == .forward)
        #expect(m.sweep(now: Self.at(29.999)) == .none)
        #expect(m.sweep(now: Self.at(30)) == .requestTimeout)
        // The handler denies with 408 (closing): the body never ended, so the connection lingers.
        let result = m.denied(status: 408, code: "request_timeout", closeConnection: true, now: Self.at(30))
        #expect(result?.end == End(status: 408, code: "request_timeout", denied: true, upstream: .abandon, next: .linger))
        Self.expectNothingAfter(m, now: 31)
    }

    @Test func requestTimeoutAfterTheResponseStarted() {
        var m = Self.machine()
        Self.attachedPOST(&m)
        #expect(m.responseHead(status: 200, keepAliveAllowed: true) == true)
        #expect(
            m.sweep(now: Self.at(30))
                == .ended(End(status: 200, code: "request_timeout", denied: false, upstream: .abandon, next: .close)))
        Self.expectNothingAfter(m, now: 31)
    }

    @Test func requestTimeoutDoesNotApplyOnceTheRequestEnded() {
        var m = Self.machine()
        Self.attachedGET(&m)
        #expect(m.sweep(now: Self.at(45)) == .none)  // waiting for the upstream is the response timeout's job
        #expect(m.responseHead(status: 200, keepAliveAllowed: true) == true)
        #expect(m.responseEnd(now: Self.at(46))?.next == .nextRequest)
    }

    @Test func sendTimeout() {
        var m = Self.machine()
        Self.attachedGET(&m)
        #expect(m.responseHead(status: 200, keepAliveAllowed: true) == true)
        m.writabilityChanged(isWritable: false, now: Self.at(5))
        m.writabilityChanged(isWritable: false, now: Self.at(20))  // still the first moment
        #expect(m.sweep(now: Self.at(64.999)) == .none)
        #expect(
            m.sweep(now: Self.at(65))
                == .ended(End(status: 200, code: "send_timeout", denied: false, upstream: .abandon, next: .close)))
        Self.expectNothingAfter(m, now: 66)
    }

    @Test func sendTimeoutResetsWhenTheClientReads() {
        var m = Self.machine()
        Self.attachedGET(&m)
        #expect(m.responseHead(status: 200, keepAliveAllowed: true) == true)
        m.writabilityChanged(isWritable: false, now: Self.at(5))
        m.writabilityChanged(isWritable: true, now: Self.at(50))
        m.writabilityChanged(isWritable: false, now: Self.at(60))
        #expect(m.sweep(now: Self.at(100)) == .none)
        #expect(m.sweep(now: Self.at(120)).isEnded == true)
    }

    @Test func sendTimeoutBeforeAnyResponseRecords499() {
        var m = Self.machine()
        Self.attachedGET(&m)
        m.writabilityChanged(isWritable: false, now: Self.at(0))
        #expect(
            m.sweep(now: Self.at(60))
                == .ended(End(status: 499, code: "send_timeout", denied: false, upstream: .abandon, next: .close)))
    }

    /// Events after the end are no-ops: a sweep after a send timeout closed the connection does nothing more.
    @Test func sweepAfterSendTimeoutIsANoOp() {
        var m = Self.machine()
        Self.attachedGET(&m)
        #expect(m.responseHead(status: 200, keepAliveAllowed: true) == true)
        m.writabilityChanged(isWritable: false, now: Self.at(0))
        #expect(m.sweep(now: Self.at(60)).isEnded == true)
        #expect(m.state == .closed)
        #expect(m.sweep(now: Self.at(61)) == .none)
    }

    // MARK: Upstream failures

    @Test func upstreamFailureRetriesOnAnotherConnection() {
        var m = Self.machine()
        Self.attachedGET(&m)
        #expect(m.upstreamFailed(retry: true) == .retry)
        #expect(m.exchange?.upstream == .admitted)
        m.acquiring()
        #expect(m.attached() == true)
        #expect(m.responseHead(status: 200, keepAliveAllowed: true) == true)
        #expect(m.responseEnd(now: Self.at(1)) == End(status: 200, code: "", denied: false, upstream: .none, next: .nextRequest))
    }

    @Test func upstreamFailureWithoutRetryIsDenied() {
        var m = Self.machine()
        Self.attachedGET(&m)
        #expect(m.upstreamFailed(retry: false) == .deny)
        #expect(m.exchange?.upstream == .detached)
        let result = m.denied(status: 502, code: "bad_gateway", closeConnection: false, now: Self.at(1))
        #expect(result?.keepAlive == true)
        #expect(result?.end == End(status: 502, code: "bad_gateway", denied: true, upstream: .none, next: .nextRequest))
        Self.expectNothingAfter(m, now: 1)
    }

    @Test func poolWaitFailureIsDenied() {
        var m = Self.machine()
        Self.head(&m)
        #expect(m.requestEnd(now: Self.at(0)) == .none)
        #expect(m.admitted() == .connect)
        m.acquiring()
        #expect(m.upstreamFailed(retry: false) == .deny)
        let result = m.denied(status: 503, code: "upstream_unavailable", closeConnection: false, now: Self.at(1))
        #expect(result?.end?.upstream == Machine.UpstreamDisposal.none)
    }

    @Test func upstreamFailureMidResponseCutsTheConnection() {
        var m = Self.machine()
        Self.attachedGET(&m)
        #expect(m.responseHead(status: 200, keepAliveAllowed: true) == true)
        // A retry is never possible once the response started.
        #expect(
            m.upstreamFailed(retry: true)
                == .ended(End(status: 200, code: "upstream_reset", denied: false, upstream: .none, next: .close)))
        Self.expectNothingAfter(m, now: 1)
    }

    // MARK: Malformed input

    @Test func malformedWhileTheExchangeReceivesDeniesIt() {
        var m = Self.machine()
        Self.attachedPOST(&m)
        #expect(m.inbound(.malformed) == .process)
        #expect(m.malformed() == .denyCurrent)
        let result = m.denied(status: 400, code: "bad_request", closeConnection: true, now: Self.at(1))
        #expect(result?.end == End(status: 400, code: "bad_request", denied: true, upstream: .abandon, next: .linger))
        Self.expectNothingAfter(m, now: 1)
    }

    @Test func malformedBodyAfterTheResponseStartedCutsTheExchange() {
        var m = Self.machine()
        Self.attachedPOST(&m)
        #expect(m.responseHead(status: 200, keepAliveAllowed: true) == true)
        #expect(m.malformed() == .ended(End(status: 200, code: "bad_request", denied: false, upstream: .abandon, next: .close)))
        Self.expectNothingAfter(m, now: 1)
    }

    @Test func malformedWhileIdleIsANewExchange() {
        var m = Self.machine()
        #expect(m.inbound(.malformed) == .process)
        #expect(m.malformed() == .denyNew)
    }

    @Test func malformedBehindAnEndedRequestWaitsForTheRealAnswer() {
        var m = Self.machine()
        Self.attachedGET(&m)
        // `DELETE … \r\n\r\nX\r\n\r\n`: the bad bytes come behind a complete request.
        #expect(m.inbound(.malformed) == .enqueue)
        #expect(m.queuedItems == 1)
        #expect(!m.takesQueuedInput)
        #expect(m.responseHead(status: 204, keepAliveAllowed: true) == true)
        // The first exchange ends as it really went.
        #expect(m.responseEnd(now: Self.at(1)) == End(status: 204, code: "", denied: false, upstream: .none, next: .nextRequest))
        // Then the queued malformed input is handled as a request of its own: 400, and the connection closes.
        #expect(m.takesQueuedInput)
        m.dequeued(.malformed)
        #expect(m.queuedItems == 0)
        #expect(m.malformed() == .denyNew)
        m.startExchange(now: Self.at(1), keepAlive: false, hasBody: false, chunked: false, upgrade: false)
        let result = m.denied(status: 400, code: "bad_request", closeConnection: true, now: Self.at(1))
        #expect(result?.end == End(status: 400, code: "bad_request", denied: true, upstream: .none, next: .linger))
    }

    // MARK: Pipelining and read-ahead bounds

    @Test func pipelinedHeadsArePausedAtTheBound() {
        var m = Self.machine()
        Self.attachedGET(&m)
        #expect(m.inbound(.head) == .enqueue)
        #expect(m.inbound(.end) == .enqueue)
        #expect(m.inbound(.head) == .enqueue)
        #expect(m.inbound(.end) == .enqueue)
        #expect(m.readingAllowed)
        #expect(m.inbound(.head) == .enqueue)  // the third queued head
        #expect(m.paused.contains(.pipeline))
        #expect(!m.readingAllowed)
        #expect(m.queuedHeads == 3 && m.queuedItems == 5)
        #expect(m.responseHead(status: 200, keepAliveAllowed: true) == true)
        #expect(m.responseEnd(now: Self.at(1))?.next == .nextRequest)
        #expect(!m.readingAllowed)  // still full until input is taken out
        m.dequeued(.head)
        #expect(!m.paused.contains(.pipeline))
        #expect(m.readingAllowed)
    }

    @Test func queuedInputIsTakenInOrderOnlyByTheNextExchange() {
        var m = Self.machine()
        Self.attachedGET(&m)
        #expect(m.inbound(.head) == .enqueue)
        #expect(m.inbound(.end) == .enqueue)
        #expect(m.inbound(.head) == .enqueue)
        #expect(m.responseHead(status: 200, keepAliveAllowed: true) == true)
        _ = m.responseEnd(now: Self.at(1))
        // What the handler's processQueue does: take while the machine takes.
        #expect(m.takesQueuedInput)
        m.dequeued(.head)
        m.startExchange(now: Self.at(1), keepAlive: true, hasBody: false, chunked: false, upgrade: false)
        #expect(m.takesQueuedInput)
        m.dequeued(.end)
        #expect(m.requestEnd(now: Self.at(1)) == .none)
        #expect(!m.takesQueuedInput)  // the third head waits for this exchange to end
        #expect(m.queuedHeads == 1)
        // New input still queues behind it.
        #expect(m.inbound(.end) == .enqueue)
    }

    @Test func pipelinedBytesArePausedAtTheBound() {
        var m = Self.machine()
        Self.attachedGET(&m)
        #expect(m.inbound(.head) == .enqueue)
        #expect(m.inbound(.body(600)) == .enqueue)
        #expect(m.readingAllowed)
        #expect(m.inbound(.body(400)) == .enqueue)
        #expect(m.queuedBytes == 1000)
        #expect(m.paused.contains(.pipeline))
        #expect(m.responseHead(status: 200, keepAliveAllowed: true) == true)
        _ = m.responseEnd(now: Self.at(1))
        m.dequeued(.head)
        #expect(m.paused.contains(.pipeline))
        m.dequeued(.body(600))
        #expect(!m.paused.contains(.pipeline))
        #expect(m.queuedBytes == 400)
    }

    @Test func closingDropsTheQueue() {
        var m = Self.machine()
        Self.attachedGET(&m)
        for _ in 0..<3 { #expect(m.inbound(.head) == .enqueue) }
        #expect(m.paused.contains(.pipeline))
        #expect(m.clientClosed()?.next == .close)
        #expect(m.queuedItems == 0 && m.queuedHeads == 0 && m.queuedBytes == 0)
        #expect(!m.paused.contains(.pipeline))
        #expect(m.inbound(.head) == .discard)
    }

    // MARK: Bodies: limits and holding

    @Test func chunkThatCannotFitIsRefusedBeforeItsBytes() {
        var m = Self.machine()
        Self.head(&m, hasBody: true, chunked: true)
        m.setBodyLimit(100)
        // The running total of the request's declared chunk sizes is compared (bytes already read are part of it).
        #expect(!m.chunkExceedsLimit(declaredTotal: 100))
        #expect(m.chunkExceedsLimit(declaredTotal: 101))
        #expect(m.requestBody(60) == .hold(connect: false))
        #expect(!m.chunkExceedsLimit(declaredTotal: 100))
        #expect(m.chunkExceedsLimit(declaredTotal: 101))
        let result = m.denied(status: 413, code: "payload_too_large", closeConnection: true, now: Self.at(0))
        #expect(result?.end == End(status: 413, code: "payload_too_large", denied: true, upstream: .none, next: .linger))
        #expect(!m.chunkExceedsLimit(declaredTotal: 1_000_000))  // nothing left to refuse
    }

    @Test func chunkLimitOnlyForChunkedBodies() {
        var m = Self.machine()
        Self.head(&m, hasBody: true, chunked: false)
        m.setBodyLimit(10)
        #expect(!m.chunkExceedsLimit(declaredTotal: 1000))
        #expect(m.requestBody(11) == .tooLarge)
    }

    @Test func chunkedBodyIsHeldUntilEnoughToChooseAConnection() {
        var m = Self.machine()
        Self.head(&m, hasBody: true, chunked: true)
        #expect(m.requestBody(60) == .hold(connect: false))
        #expect(m.admitted() == .waitForBody)
        #expect(m.readingAllowed)
        #expect(m.requestBody(50) == .hold(connect: true))  // 110 held ≥ 100
        #expect(m.paused.contains(.holding))
        #expect(!m.readingAllowed)
        m.acquiring()
        #expect(m.attached() == false)
        #expect(!m.paused.contains(.holding))
        #expect(m.exchange?.heldBytes == 0)
        #expect(m.requestBody(10) == .forward)
        #expect(m.requestEnd(now: Self.at(1)) == .sendEnd)
    }

    @Test func bodyHeldWhileThePhasesDecidePausesReading() {
        var m = Self.machine()
        Self.head(&m, hasBody: true, chunked: false)
        #expect(m.requestBody(100) == .hold(connect: false))
        #expect(m.paused.contains(.holding))
        #expect(m.admitted() == .connect)
        m.acquiring()
        #expect(m.requestBody(0) == .hold(connect: false))
        #expect(m.attached() == false)
        #expect(m.readingAllowed)
    }

    @Test func smallChunkedBodyConnectsAtItsEnd() {
        var m = Self.machine()
        Self.head(&m, hasBody: true, chunked: true)
        #expect(m.admitted() == .waitForBody)
        #expect(m.requestBody(20) == .hold(connect: false))
        #expect(m.requestEnd(now: Self.at(0)) == .connect)
        m.acquiring()
        #expect(m.attached() == true)  // end sent with the held body
    }

    @Test func hangUpWhileHoldingABody() {
        var m = Self.machine()
        Self.head(&m, hasBody: true, chunked: true)
        #expect(m.admitted() == .waitForBody)
        #expect(m.requestBody(20) == .hold(connect: false))
        #expect(m.clientClosed() == End(status: 499, code: "client_closed", denied: false, upstream: .none, next: .close))
    }

    // MARK: Upgrade

    @Test func upgradePausesReadingAtTheRequestEnd() {
        var m = Self.machine()
        Self.head(&m, upgrade: true)
        #expect(m.exchange?.keepAlive == false)
        #expect(m.requestEnd(now: Self.at(0)) == .none)
        #expect(m.paused.contains(.upgrade))
        #expect(!m.readingAllowed)
        #expect(m.admitted() == .connect)
        m.acquiring()
        #expect(m.attached() == true)
        #expect(m.responseHead(status: 200, keepAliveAllowed: true) == false)
        #expect(m.responseEnd(now: Self.at(1)) == End(status: 200, code: "", denied: false, upstream: .none, next: .close))
        #expect(!m.paused.contains(.upgrade))
    }

    /// A WebSocket handshake attached upstream, its request read whole (reading paused for the answer).
    static func handshake(_ m: inout Machine) {
        head(&m, upgrade: true)
        #expect(m.requestEnd(now: at(0)) == .none)
        #expect(m.admitted() == .connect)
        m.acquiring()
        #expect(m.attached() == true)
        #expect(!m.readingAllowed)
    }

    @Test func a101OpensATunnelThatReadsAgainAndIgnoresHTTPEvents() {
        var m = Self.machine()
        Self.handshake(&m)
        #expect(m.tunnelOpened(now: Self.at(1), idleTimeout: .seconds(5)) == true)
        #expect(m.inTunnel && m.readingAllowed)
        #expect(m.tunnelOpened(now: Self.at(1), idleTimeout: .seconds(5)) == false)  // once
        // Nothing of HTTP applies any more: no second end, no queueing, no drain close, no request timeout.
        #expect(m.inbound(.head) == .discard)
        #expect(m.responseEnd(now: Self.at(2)) == nil)
        #expect(m.denied(status: 500, code: "x", closeConnection: true, now: Self.at(2)) == nil)
        #expect(m.upstreamFailed(retry: false) == .none)
        #expect(m.malformed() == .none)
        #expect(m.beginDrain() == false)
        #expect(m.sweep(now: Self.at(5.9)) == .none)
    }

    @Test func aTunnelEndsOnceByEachOfItsEnds() {
        let tunnelEnd = End(status: 101, code: "", denied: false, upstream: .abandon, next: .close)
        // The client hangs up.
        var a = Self.machine()
        Self.handshake(&a)
        #expect(a.tunnelOpened(now: Self.at(1), idleTimeout: .seconds(5)) == true)
        #expect(a.clientClosed() == tunnelEnd)
        #expect(a.clientClosed() == nil)
        #expect(a.tunnelClosedByUpstream() == nil)
        // The upstream closes.
        var b = Self.machine()
        Self.handshake(&b)
        #expect(b.tunnelOpened(now: Self.at(1), idleTimeout: .seconds(5)) == true)
        #expect(b.tunnelClosedByUpstream() == tunnelEnd)
        #expect(b.clientClosed() == nil)
        #expect(b.sweep(now: Self.at(60)) == .none)
        // No byte either way for the idle timeout; activity pushes it back; a client that stops reading does not
        // trip the send timeout (the upstream is paused instead, and the idle timeout ends it).
        var c = Self.machine()
        Self.handshake(&c)
        #expect(c.tunnelOpened(now: Self.at(1), idleTimeout: .seconds(5)) == true)
        c.writabilityChanged(isWritable: false, now: Self.at(1))
        c.tunnelActivity(now: Self.at(4))
        #expect(c.sweep(now: Self.at(8.9)) == .none)
        #expect(c.sweep(now: Self.at(9)) == .ended(End(status: 101, code: "idle_timeout", denied: false, upstream: .abandon, next: .close)))
        #expect(c.sweep(now: Self.at(20)) == .none)
        #expect(c.clientClosed() == nil)
    }

    @Test func noTunnelWithoutAHandshakeOrAfterItsExchangeEnded() {
        var plain = Self.machine()
        Self.attachedGET(&plain)
        #expect(plain.tunnelOpened(now: Self.at(1), idleTimeout: .seconds(5)) == false)
        var gone = Self.machine()
        Self.handshake(&gone)
        _ = gone.clientClosed()
        #expect(gone.tunnelOpened(now: Self.at(1), idleTimeout: .seconds(5)) == false)
        // Back-pressure in the tunnel pauses reading like any upstream back-pressure.
        var m = Self.machine()
        Self.handshake(&m)
        #expect(m.tunnelOpened(now: Self.at(1), idleTimeout: .seconds(5)) == true)
        m.setPaused(.upstreamBackpressure, true)
        #expect(!m.readingAllowed)
        m.setPaused(.upstreamBackpressure, false)
        #expect(m.readingAllowed)
    }

    // MARK: Drain

    @Test func drainWhileIdleClosesAtOnce() {
        var m = Self.machine()
        #expect(m.beginDrain() == true)
        #expect(m.state == .closed)
        #expect(m.inbound(.head) == .discard)
    }

    @Test func drainDuringAnExchangeClosesAfterItsResponse() {
        var m = Self.machine()
        Self.attachedGET(&m)
        #expect(m.inbound(.head) == .enqueue)
        #expect(m.beginDrain() == false)
        #expect(m.queuedItems == 0)  // queued requests are dropped (the handler empties its queue too)
        #expect(m.inbound(.end) == .discard)
        #expect(m.responseHead(status: 200, keepAliveAllowed: true) == false)
        #expect(m.responseEnd(now: Self.at(1)) == End(status: 200, code: "", denied: false, upstream: .none, next: .close))
    }

    @Test func drainWhileTheBodyIsComingLingers() {
        var m = Self.machine()
        Self.attachedPOST(&m)
        #expect(m.beginDrain() == false)
        #expect(m.responseHead(status: 200, keepAliveAllowed: true) == false)
        // Answered early: the response ends the exchange now, and the unread body is dropped while lingering.
        #expect(m.responseEnd(now: Self.at(1)) == End(status: 200, code: "", denied: false, upstream: .none, next: .linger))
    }

    @Test func drainWhileReadingAHeadAnswersThatRequestThenCloses() {
        var m = Self.machine()
        m.bytesArrived(now: Self.at(0))
        #expect(m.beginDrain() == false)
        m.startExchange(now: Self.at(1), keepAlive: true, hasBody: false, chunked: false, upgrade: false)
        #expect(m.exchange?.keepAlive == false)
        #expect(m.requestEnd(now: Self.at(1)) == .none)
        let result = m.denied(status: 404, code: "route_not_found", closeConnection: false, now: Self.at(1))
        #expect(result?.keepAlive == false)
        #expect(result?.end?.next == .close)
    }

    // MARK: The invariant over random sequences

    enum Event: CaseIterable {
        case bytes, head, bodyHead, chunkedHead, body, requestEnd, admit, phaseDeny, attach, responseHead,
            responseHeadClose, responseEnd, upstreamFail, upstreamFailRetry, clientClosed, malformed, pipelined,
            dequeue, unwritable, writable, drain, tick, sweep

        /// The steps of a normal exchange are common, the ways it is cut rarer, so exchanges get far enough to
        /// hold a pool wait or a connection when they are cut.
        var weight: Int {
            switch self {
            case .admit, .attach: 5
            case .head, .body, .requestEnd, .responseHead, .responseEnd: 3
            case .bodyHead, .chunkedHead, .dequeue, .tick, .sweep, .clientClosed: 2
            default: 1
            }
        }
        static let weighted = allCases.flatMap { Array(repeating: $0, count: $0.weight) }
    }

    /// The handler around the machine, reduced to what it holds: the pool wait and the upstream connection.
    /// Every exchange started ends exactly once, its `End` says what it held (an attached connection is
    /// abandoned, a pool wait cancelled), and nothing ends when no exchange runs.
    @Test(arguments: [1, 7, 11, 12345, 8_675_309] as [UInt64])
    func everyExchangeEndsExactlyOnce(seed: UInt64) {
        var rng = SeededRandom(seed: seed)
        var disposals: [Machine.UpstreamDisposal: Int] = [:]
        for _ in 0..<400 {
            var m = Self.machine()
            var now = 0.0
            var started = 0
            var ended = 0
            var holdsConnection = false
            var waitsForPool = false
            var log: [Event] = []

            func check(_ end: End?) {
                guard let end else { return }
                ended += 1
                let expected: Machine.UpstreamDisposal =
                    holdsConnection ? .abandon : waitsForPool ? .cancelWait : .none
                #expect(end.upstream == expected, "disposal \(end.upstream), expected \(expected): \(log)")
                disposals[end.upstream, default: 0] += 1
                holdsConnection = false
                waitsForPool = false
            }
            func start(hasBody: Bool, chunked: Bool, keepAlive: Bool = true) {
                m.startExchange(now: Self.at(now), keepAlive: keepAlive, hasBody: hasBody, chunked: chunked, upgrade: false)
                started += 1
            }
            func deny(_ status: Int, _ code: String, close: Bool) {
                if let result = m.denied(status: status, code: code, closeConnection: close, now: Self.at(now)) {
                    check(result.end)
                }
            }
            func connect() {
                m.acquiring()
                waitsForPool = true
            }
            func denyNew(_ status: Int, _ code: String) {
                start(hasBody: false, chunked: false, keepAlive: false)
                deny(status, code, close: true)
            }

            for _ in 0..<Int.random(in: 1...60, using: &rng) {
                let event = Event.weighted.randomElement(using: &rng)!
                log.append(event)
                let idle: Bool
                switch m.state {
                case .idle, .readingHead: idle = true
                default: idle = false
                }
                switch event {
                case .bytes:
                    m.bytesArrived(now: Self.at(now))
                case .head, .bodyHead, .chunkedHead:
                    guard idle, m.queuedItems == 0 else { continue }
                    #expect(m.inbound(.head) == .process)
                    start(hasBody: event != .head, chunked: event == .chunkedHead)
                case .body:
                    guard m.exchange?.request == .receiving, m.exchange?.hasBody == true else { continue }
                    switch m.requestBody(30) {
                    case .hold(let c): if c { connect() }
                    case .tooLarge: deny(413, "payload_too_large", close: true)
                    case .forward: #expect(holdsConnection, "forwarded without a connection: \(log)")
                    case .discard: break
                    }
                case .requestEnd:
                    guard m.exchange?.request == .receiving else { continue }
                    switch m.requestEnd(now: Self.at(now)) {
                    case .ended(let end): check(end)
                    case .connect: connect()
                    case .sendEnd: #expect(holdsConnection, "sent an end without a connection: \(log)")
                    case .answerLocally: Issue.record("answered locally, never admitted locally: \(log)")
                    case .none: break
                    }
                case .admit:
                    guard m.exchange?.upstream == .deciding else { continue }
                    if m.admitted() == .connect { connect() }
                case .phaseDeny:
                    guard m.exchange?.upstream == .deciding else { continue }
                    deny(403, "forbidden", close: false)
                case .attach:
                    guard waitsForPool else { continue }
                    waitsForPool = false
                    holdsConnection = true
                    _ = m.attached()
                case .responseHead, .responseHeadClose:
                    guard holdsConnection, m.exchange?.response == .pending else { continue }
                    _ = m.responseHead(status: 200, keepAliveAllowed: event == .responseHead)
                case .responseEnd:
                    guard holdsConnection, m.exchange?.response == .streaming else { continue }
                    holdsConnection = false
                    check(m.responseEnd(now: Self.at(now)))
                case .upstreamFail, .upstreamFailRetry:
                    guard holdsConnection || waitsForPool else { continue }
                    holdsConnection = false
                    waitsForPool = false
                    switch m.upstreamFailed(retry: event == .upstreamFailRetry) {
                    case .retry: connect()
                    case .deny: deny(502, "bad_gateway", close: false)
                    case .ended(let end): check(end)
                    case .none: break
                    }
                case .clientClosed:
                    check(m.clientClosed())
                case .malformed:
                    switch m.inbound(.malformed) {
                    case .process:
                        switch m.malformed() {
                        case .denyCurrent: deny(400, "bad_request", close: true)
                        case .ended(let end): check(end)
                        case .denyNew: denyNew(400, "bad_request")
                        case .none: break
                        }
                    case .enqueue, .discard: break
                    }
                case .pipelined:
                    guard m.exchange?.request == .ended else { continue }
                    _ = m.inbound(.head)
                case .dequeue:
                    // Queued heads are taken as the handler does (the exchange they start is counted).
                    guard m.takesQueuedInput, m.queuedHeads > 0, idle else { continue }
                    m.dequeued(.head)
                    start(hasBody: false, chunked: false)
                case .unwritable:
                    m.writabilityChanged(isWritable: false, now: Self.at(now))
                case .writable:
                    m.writabilityChanged(isWritable: true, now: Self.at(now))
                case .drain:
                    _ = m.beginDrain()
                case .tick:
                    now += Double(Int.random(in: 1...25, using: &rng))
                case .sweep:
                    switch m.sweep(now: Self.at(now)) {
                    case .headTimeout: denyNew(408, "request_timeout")
                    case .requestTimeout: deny(408, "request_timeout", close: true)
                    case .ended(let end): check(end)
                    case .none, .close: break
                    }
                }
                #expect(ended <= started, "an exchange ended twice: \(log)")
                #expect((m.exchange != nil) == (started == ended + 1), "running exchanges do not match: \(log)")
                if m.exchange == nil {
                    #expect(!holdsConnection && !waitsForPool, "holds upstream resources without an exchange: \(log)")
                }
                if m.state == .closed {
                    // The next client connection.
                    #expect(started == ended, "exchange never ended: \(log)")
                    m = Self.machine()
                    now = 0
                    started = 0
                    ended = 0
                    log = []
                }
            }
            // Whatever the state, the client leaving ends what runs.
            check(m.clientClosed())
            #expect(started == ended, "exchange never ended: \(log)")
            #expect(m.state == .closed)
        }
        // Every kind of end was reached.
        #expect(disposals[.abandon, default: 0] > 10 && disposals[.cancelWait, default: 0] > 10 && disposals[.none, default: 0] > 10)
    }

    // MARK: Back-pressure from the upstream

    @Test func upstreamBackpressureIsReleasedByTheEnd() {
        var m = Self.machine()
        Self.attachedPOST(&m)
        m.setPaused(.upstreamBackpressure, true)
        #expect(!m.readingAllowed)
        #expect(m.clientClosed() != nil)
        #expect(!m.paused.contains(.upstreamBackpressure))
    }

    // MARK: Review findings

    /// After a malformed request is queued nothing more is served: later input (the decoder reports every read as
    /// another error) is dropped and reading stays paused, so the queue cannot grow.
    @Test func aQueuedMalformedRequestStopsReadingAndDropsWhatFollows() {
        var m = Self.machine()
        Self.attachedGET(&m)
        #expect(m.inbound(.malformed) == .enqueue)
        #expect(m.paused.contains(.pipeline))
        for _ in 0..<100 { #expect(m.inbound(.malformed) == .discard) }
        #expect(m.inbound(.head) == .discard)
        #expect(m.queuedItems == 1)
        #expect(m.responseHead(status: 200, keepAliveAllowed: true) == true)
        #expect(m.responseEnd(now: Self.at(1))?.next == .nextRequest)
        #expect(m.takesQueuedInput)
        m.dequeued(.malformed)
        #expect(m.paused.contains(.pipeline))  // the queued 400 closes the connection; nothing more is read
        #expect(m.malformed() == .denyNew)
    }

    /// An upstream that answers early and closes leaves no back-pressure behind: the rest of the body is read
    /// and dropped instead of stalling until the request timeout.
    @Test func anEarlyAnswerClearsUpstreamBackPressure() {
        var m = Self.machine()
        Self.attachedPOST(&m)
        m.setPaused(.upstreamBackpressure, true)
        #expect(!m.readingAllowed)
        #expect(m.responseHead(status: 201, keepAliveAllowed: true) == true)
        #expect(m.responseEnd(now: Self.at(1)) == nil)  // the body is still coming
        #expect(m.readingAllowed)
        #expect(m.requestBody(10) == .discard)
        #expect(m.requestEnd(now: Self.at(2)) == .ended(End(status: 201, code: "", denied: false, upstream: .none, next: .nextRequest)))
    }

    /// A failed upstream writes nothing more either.
    @Test func anUpstreamFailureClearsUpstreamBackPressure() {
        var m = Self.machine()
        Self.attachedPOST(&m)
        m.setPaused(.upstreamBackpressure, true)
        #expect(m.upstreamFailed(retry: false) == .deny)
        #expect(m.readingAllowed)
    }

    /// The framing is learnt after the head (from validation): a bodyless request keeps its connection on a
    /// denial, an h2c upgrade closes it and pauses reading at its end.
    @Test func framingKnownAfterTheHead() {
        var m = Self.machine()
        Self.head(&m, hasBody: true)
        m.framingKnown(hasBody: false, chunked: false, upgrade: false)
        let denied = m.denied(status: 404, code: "route_not_found", closeConnection: false, now: Self.at(0))
        #expect(denied?.keepAlive == true && denied?.end == nil)
        #expect(m.requestEnd(now: Self.at(0)) == .ended(End(status: 404, code: "route_not_found", denied: true, upstream: .none, next: .nextRequest)))

        var u = Self.machine()
        Self.head(&u, hasBody: true)
        u.framingKnown(hasBody: false, chunked: false, upgrade: true)
        #expect(u.exchange?.keepAlive == false)
        #expect(u.admitted() == .connect)
        u.acquiring()
        _ = u.attached()
        _ = u.requestEnd(now: Self.at(0))
        #expect(u.paused.contains(.upgrade))
    }

}

extension ClientConnectionStateMachine.SweepAction {
    var isEnded: Bool {
        if case .ended = self { return true }
        return false
    }
}
