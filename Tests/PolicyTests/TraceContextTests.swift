import Policy
import Testing

/// W3C Trace Context parsing, formatting and head sampling (pure).
struct TraceContextTests {
    @Test func aVersion00TraceparentIsParsed() throws {
        let p = try #require(TraceContext.parse(traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"))
        #expect(p.traceHigh == 0x4bf9_2f35_77b3_4da6)
        #expect(p.traceLow == 0xa3ce_929d_0e0e_4736)
        #expect(p.span == 0x00f0_67aa_0ba9_02b7)
        #expect(p.sampled)
        #expect(TraceContext.parse(traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00")?.sampled == false)
    }

    @Test(arguments: [
        "",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",  // short
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",  // v00 must be exactly 55
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01",  // upper case
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  // forbidden version
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
        "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
        "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",  // a later version's extra part needs a dash
    ])
    func malformedTraceparentsAreRefused(value: String) {
        #expect(TraceContext.parse(traceparent: value) == nil)
    }

    @Test func aLaterVersionIsReadByItsVersion00Fields() {
        #expect(TraceContext.parse(traceparent: "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01") != nil)
        #expect(TraceContext.parse(traceparent: "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-ever") != nil)
    }

    @Test func theOutgoingTraceparentNamesTheGatewaysSpan() {
        var sampler = TraceSampler(ratio: 0, seed: 7)
        let ctx = sampler.begin(traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", tracestate: ["a=1", "b=2"])
        #expect(ctx.isContinued)
        #expect(ctx.sampled)  // the parent's decision, whatever the ratio
        #expect(ctx.traceState == "a=1,b=2")
        let out = ctx.traceparent
        #expect(out.hasPrefix("00-4bf92f3577b34da6a3ce929d0e0e4736-"))
        #expect(out.hasSuffix("-01"))
        let parsed = TraceContext.parse(traceparent: out)
        #expect(parsed?.span == ctx.span)
        #expect(ctx.span != 0x00f0_67aa_0ba9_02b7)
        #expect(ctx.spanID.count == 16 && ctx.traceID == "4bf92f3577b34da6a3ce929d0e0e4736")
    }

    @Test func newTracesAreSampledByTheRatio() {
        var all = TraceSampler(ratio: 1, seed: 1)
        var none = TraceSampler(ratio: 0, seed: 1)
        var tenth = TraceSampler(ratio: 0.1, seed: 1)
        var sampled = 0
        var ids = Set<String>()
        for _ in 0..<10_000 {
            #expect(all.begin(traceparent: nil, tracestate: []).sampled)
            #expect(!none.begin(traceparent: nil, tracestate: ["a=1"]).sampled)
            let t = tenth.begin(traceparent: nil, tracestate: [])
            if t.sampled { sampled += 1 }
            #expect(!t.isContinued && t.traceState == nil)
            ids.insert(t.traceID)
        }
        #expect(ids.count == 10_000)
        #expect((800...1200).contains(sampled))
        // Decided by the trace id alone, so every instance agrees.
        #expect(TraceSampler.sampled(traceLow: 0, ratio: 0.01))
        #expect(!TraceSampler.sampled(traceLow: 0x00FF_FFFF_FFFF_FFFF, ratio: 0.99))
    }

    @Test func tracestateIsKeptOnlyWhenWellFormed() {
        #expect(TraceContext.validTraceState(["rojo=00f067aa0ba902b7, congo=t61rcWkgMzE"]) == "rojo=00f067aa0ba902b7, congo=t61rcWkgMzE")
        #expect(TraceContext.validTraceState(["tenant@vendor=x"]) == "tenant@vendor=x")
        #expect(TraceContext.validTraceState([]) == nil)
        #expect(TraceContext.validTraceState(["novalue"]) == nil)
        #expect(TraceContext.validTraceState(["UPPER=x"]) == nil)
        #expect(TraceContext.validTraceState(["a=b=c"]) == nil)
        #expect(TraceContext.validTraceState([String(repeating: "k=v,", count: 33)]) == nil)
        #expect(TraceContext.validTraceState(["a=" + String(repeating: "x", count: 600)]) == nil)
        #expect(TraceContext.validTraceState(["1abc=x"]) == nil)  // a plain key starts with a letter
        #expect(TraceContext.validTraceState(["1abc@sys=x"]) == "1abc@sys=x")  // a tenant key may start with a digit
        #expect(TraceContext.validTraceState(["a@b@c=x"]) == nil)
        #expect(TraceContext.validTraceState(["t@" + String(repeating: "s", count: 15) + "=x"]) == nil)
        #expect(TraceContext.validTraceState(["t@1sys=x"]) == nil)
        #expect(TraceContext.validTraceState(["a=1,b=2,a=3"]) == nil)  // a key twice
        #expect(TraceContext.validTraceState(["a=1", "b=2"]) == "a=1,b=2")
        #expect(TraceContext.validTraceState(["a=x "]) == "a=x ")  // the list's whitespace is trimmed, not the value's
        #expect(TraceContext.validTraceState([(0..<32).map { "k\($0)=v" }.joined(separator: ",")]) != nil)
        #expect(TraceContext.validTraceState([(0..<33).map { "k\($0)=v" }.joined(separator: ",")]) == nil)
    }
}
