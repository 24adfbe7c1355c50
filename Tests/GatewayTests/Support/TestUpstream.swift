import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL
import Synchronization

/// What a test upstream received.
struct RecordedRequest: Sendable {
    var method: String
    var uri: String
    var headers: [(String, String)]
    var bodyBytes: Int
    var connection: Int

    func header(_ name: String) -> String? { headers.first { $0.0.lowercased() == name.lowercased() }?.1 }
    func headers(_ name: String) -> [String] { headers.filter { $0.0.lowercased() == name.lowercased() }.map(\.1) }
}

/// A real HTTP/1.1 upstream on a loopback port that records every request and connection.
///
/// Paths (after any prefix): `/health` (200, or 503 when unhealthy), `/download/N` (N bytes, streamed with
/// back-pressure), `/slow/MS` (answers after MS ms), `/hang` (never answers), `/cut` (promises 100000 bytes,
/// sends 10, closes), `/status/N`, `/chunked` (a chunked response), `/early` (answers 201 as soon as the
/// request head arrives, without waiting for the body), `/partial/N` (promises 1000000 bytes, sends N, then
/// stalls), `/hold/NAME` (answers the echo only when the test calls ``release(_:)`` with NAME), `/hints` (a 103 before
/// the echo), `/trailing` (200 `ok` with bytes past its Content-Length), `/events/NAME` (a server-sent-events
/// stream without Content-Length, each event written when the test calls ``emit(_:_:)``), anything
/// else: a JSON echo. Every request head is recorded on arrival in ``heads``; a request is recorded in
/// ``requests`` once its body ended (an `/early` one as soon as its head arrived).
final class TestUpstream: Sendable {
    let group: MultiThreadedEventLoopGroup
    private let channel: Channel
    let port: Int
    private let state = Mutex(State())
    let bytesWritten = Atomic<Int>(0)
    let healthy = Atomic<Bool>(true)
    let healthChecks = Atomic<Int>(0)
    /// What `/jwks.json` serves (503 while nil), and how often it was fetched.
    let jwks = Mutex<String?>(nil)
    let jwksFetches = Atomic<Int>(0)
    /// What `/.well-known/openid-configuration` serves (404 while nil), and how often it was fetched.
    let discovery = Mutex<String?>(nil)
    let discoveryFetches = Atomic<Int>(0)

    struct State {
        var requests: [RecordedRequest] = []
        var heads: [String] = []
        var connections = 0
        var closedConnections = 0
        var open: [Channel] = []
        var held: [String: @Sendable () -> Void] = [:]
        var released: Set<String> = []
        /// Open `/events/NAME` streams: write one event (nil: end the stream).
        var streams: [String: @Sendable (String?) -> Void] = [:]
    }

    /// With `tls`, the upstream speaks HTTPS only .
    init(tls: NIOSSLContext? = nil) throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        self.group = group
        let box = Mutex<TestUpstream?>(nil)
        channel = try ServerBootstrap(group: group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let upstream = box.withLock { $0 }!
                    let id = upstream.state.withLock { s -> Int in
                        s.connections += 1
                        s.open.append(channel)
                        return s.connections
                    }
                    channel.closeFuture.whenComplete { _ in upstream.state.withLock { $0.closedConnections += 1 } }
                    if let tls { try channel.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: tls)) }
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline()
                    try channel.pipeline.syncOperations.addHandler(UpstreamHandler(upstream: upstream, connection: id))
                }
            }
            .bind(host: "127.0.0.1", port: 0).wait()
        port = channel.localAddress!.port!
        box.withLock { $0 = self }
    }

    private let stopped = Atomic<Bool>(false)
    private let closed = Atomic<Bool>(false)

    var requests: [RecordedRequest] { state.withLock { $0.requests.filter { $0.uri != "/health" } } }
    var connections: Int { state.withLock { $0.connections } }
    /// Connections accepted and not yet closed.
    var openConnections: Int { state.withLock { $0.connections - $0.closedConnections } }
    /// The URI of every request head received (health checks excluded), in arrival order, whether or not its
    /// body ever ended.
    var heads: [String] { state.withLock { $0.heads.filter { $0 != "/health" } } }

    func recordHead(_ uri: String) {
        state.withLock { $0.heads.append(uri) }
    }

    /// Parks the response of `/hold/NAME` until ``release(_:)``; answers at once if it was released before.
    func hold(_ name: String, answer: @escaping @Sendable () -> Void) {
        let now = state.withLock { s -> Bool in
            if s.released.contains(name) { return true }
            s.held[name] = answer
            return false
        }
        if now { answer() }
    }

    /// Lets the held request NAME answer (now, or as soon as it arrives).
    func release(_ name: String) {
        let answer = state.withLock { s -> (@Sendable () -> Void)? in
            s.released.insert(name)
            return s.held.removeValue(forKey: name)
        }
        answer?()
    }

    /// Writes `event` (nil: the stream's end) on the open `/events/NAME` stream, flushed at once; false when no
    /// such stream is open yet.
    @discardableResult
    func emit(_ name: String, _ event: String?) -> Bool {
        guard let write = state.withLock({ $0.streams[name] }) else { return false }
        write(event)
        return true
    }

    func openStream(_ name: String, _ write: @escaping @Sendable (String?) -> Void) {
        state.withLock { $0.streams[name] = write }
    }

    func record(_ r: RecordedRequest) {
        if r.uri == "/health" {
            healthChecks.add(1, ordering: .relaxed)
        }
        state.withLock { $0.requests.append(r) }
    }

    /// Stops listening and closes every open connection (the target is down); the upstream can still be stopped.
    func closeAll() {
        guard !closed.exchange(true, ordering: .relaxed) else { return }
        try? channel.close().wait()
        for child in state.withLock({ $0.open }) { try? child.close().wait() }
    }

    /// Closes everything and shuts the event loop down; safe to call twice.
    func stop() {
        closeAll()
        guard !stopped.exchange(true, ordering: .relaxed) else { return }
        try? group.syncShutdownGracefully()
    }
}

private final class UpstreamHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    let upstream: TestUpstream
    let connection: Int
    var head: HTTPRequestHead?
    var bodyBytes = 0
    var pendingDownload = 0
    /// The current request was answered when its head arrived (`/early`): its end only resets this.
    var answeredEarly = false

    init(upstream: TestUpstream, connection: Int) {
        self.upstream = upstream
        self.connection = connection
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let h):
            head = h
            bodyBytes = 0
            upstream.recordHead(h.uri)
            if h.uri.split(separator: "?").first?.split(separator: "/").last == "early" {
                answeredEarly = true
                upstream.record(
                    RecordedRequest(
                        method: h.method.rawValue, uri: h.uri, headers: h.headers.map { ($0.name, $0.value) },
                        bodyBytes: 0, connection: connection))
                send(context, status: .created, body: "early")
            }
        case .body(let b):
            bodyBytes += b.readableBytes
        case .end:
            if answeredEarly {
                answeredEarly = false
                return
            }
            guard let head else { return }
            let recorded = RecordedRequest(
                method: head.method.rawValue, uri: head.uri, headers: head.headers.map { ($0.name, $0.value) },
                bodyBytes: bodyBytes, connection: connection)
            upstream.record(recorded)
            respond(context, head, recorded)
        }
    }

    /// A JSON document the test sets (`otherwise` while it is nil); every fetch is counted.
    private func serveDocument(
        _ context: ChannelHandlerContext, _ document: borrowing Mutex<String?>, counted: borrowing Atomic<Int>, otherwise: HTTPResponseStatus
    ) {
        counted.add(1, ordering: .relaxed)
        if let body = document.withLock({ $0 }) {
            send(context, status: .ok, body: body, contentType: "application/json")
        } else {
            send(context, status: otherwise, body: "none")
        }
    }

    private func respond(_ context: ChannelHandlerContext, _ head: HTTPRequestHead, _ r: RecordedRequest) {
        let path = head.uri.split(separator: "?")[0]
        let parts = path.split(separator: "/")
        switch parts.last.map(String.init) ?? "" {
        case "health":
            send(context, status: upstream.healthy.load(ordering: .relaxed) ? .ok : .serviceUnavailable, body: "ok")
        case "hang":
            return
        case "openid-configuration":
            serveDocument(context, upstream.discovery, counted: upstream.discoveryFetches, otherwise: .notFound)
        case "jwks.json":
            serveDocument(context, upstream.jwks, counted: upstream.jwksFetches, otherwise: .serviceUnavailable)
        case "cut":
            var h = HTTPHeaders()
            h.add(name: "Content-Length", value: "100000")
            context.write(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: .ok, headers: h))), promise: nil)
            context.writeAndFlush(wrapOutboundOut(.body(.byteBuffer(ByteBuffer(string: "0123456789")))), promise: nil)
            context.close(promise: nil)
        case "hints":
            // An interim 103 before the final answer.
            var h = HTTPHeaders()
            h.add(name: "Link", value: "</style.css>; rel=preload")
            context.write(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: HTTPResponseStatus(statusCode: 103), headers: h))), promise: nil)
            echo(context, r)
        case "trailing":
            // Bytes past the announced length: the connection is out of step after this response.
            var h = HTTPHeaders()
            h.add(name: "Content-Length", value: "2")
            context.write(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: .ok, headers: h))), promise: nil)
            context.writeAndFlush(wrapOutboundOut(.body(.byteBuffer(ByteBuffer(string: "okHTTP/1.1 200 OK\r\n\r\n")))), promise: nil)
        case "chunked":
            context.write(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: .ok))), promise: nil)
            context.write(wrapOutboundOut(.body(.byteBuffer(ByteBuffer(string: "hello ")))), promise: nil)
            context.write(wrapOutboundOut(.body(.byteBuffer(ByteBuffer(string: "world")))), promise: nil)
            context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
        default:
            if parts.count >= 2, parts[parts.count - 2] == "status", let code = Int(parts.last!) {
                send(context, status: HTTPResponseStatus(statusCode: code), body: code == 204 || code == 304 ? nil : "status")
            } else if parts.count >= 2, parts[parts.count - 2] == "slow", let ms = Int64(parts.last!) {
                let bound = NIOLoopBound((self, context, r), eventLoop: context.eventLoop)
                context.eventLoop.scheduleTask(in: .milliseconds(ms)) {
                    let (me, ctx, rec) = bound.value
                    me.echo(ctx, rec)
                }
            } else if parts.count >= 2, parts[parts.count - 2] == "events" {
                var h = HTTPHeaders()
                h.add(name: "Content-Type", value: "text/event-stream")
                h.add(name: "Cache-Control", value: "no-cache")
                let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
                let loop = context.eventLoop
                upstream.openStream(String(parts.last!)) { event in
                    loop.execute {
                        let (me, ctx) = bound.value
                        guard ctx.channel.isActive else { return }
                        if let event {
                            ctx.writeAndFlush(me.wrapOutboundOut(.body(.byteBuffer(ByteBuffer(string: event)))), promise: nil)
                        } else {
                            ctx.writeAndFlush(me.wrapOutboundOut(.end(nil)), promise: nil)
                        }
                    }
                }
                // Registered first: once the client has the head, the test can emit.
                context.writeAndFlush(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: .ok, headers: h))), promise: nil)
            } else if parts.count >= 2, parts[parts.count - 2] == "hold" {
                let name = String(parts.last!)
                let bound = NIOLoopBound((self, context, r), eventLoop: context.eventLoop)
                let loop = context.eventLoop
                upstream.hold(name) {
                    loop.execute {
                        let (me, ctx, rec) = bound.value
                        guard ctx.channel.isActive else { return }
                        me.echo(ctx, rec)
                    }
                }
            } else if parts.count >= 2, parts[parts.count - 2] == "partial", let n = Int(parts.last!) {
                var h = HTTPHeaders()
                h.add(name: "Content-Length", value: "1000000")
                context.write(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: .ok, headers: h))), promise: nil)
                if n > 0 {
                    context.write(wrapOutboundOut(.body(.byteBuffer(ByteBuffer(repeating: 0x70, count: min(n, 999_999))))), promise: nil)
                }
                context.flush()
            } else if parts.count >= 2, parts[parts.count - 2] == "download", let n = Int(parts.last!) {
                var h = HTTPHeaders()
                h.add(name: "Content-Length", value: String(n))
                context.write(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: .ok, headers: h))), promise: nil)
                pendingDownload = n
                pump(context)
            } else {
                echo(context, r)
            }
        }
    }

    /// Writes download chunks while the socket is writable; resumes on writability.
    private func pump(_ context: ChannelHandlerContext) {
        let chunk = 64 * 1024
        while pendingDownload > 0 && context.channel.isWritable {
            let n = min(chunk, pendingDownload)
            pendingDownload -= n
            upstream.bytesWritten.add(n, ordering: .relaxed)
            context.write(wrapOutboundOut(.body(.byteBuffer(ByteBuffer(repeating: 0x61, count: n)))), promise: nil)
            if pendingDownload == 0 {
                context.write(wrapOutboundOut(.end(nil)), promise: nil)
            }
            context.flush()
        }
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable && pendingDownload > 0 { pump(context) }
    }

    func echo(_ context: ChannelHandlerContext, _ r: RecordedRequest) {
        let doc: [String: Any] = [
            "method": r.method, "uri": r.uri, "headers": r.headers.map { [$0.0, $0.1] }, "body_bytes": r.bodyBytes,
            "connection": r.connection, "port": upstream.port,
        ]
        let body = String(decoding: try! JSONSerialization.data(withJSONObject: doc), as: UTF8.self)
        send(context, status: .ok, body: body, contentType: "application/json")
    }

    private func send(_ context: ChannelHandlerContext, status: HTTPResponseStatus, body: String?, contentType: String = "text/plain") {
        var h = HTTPHeaders()
        h.add(name: "Content-Type", value: contentType)
        if let body { h.add(name: "Content-Length", value: String(body.utf8.count)) }
        h.add(name: "X-Upstream-Port", value: String(upstream.port))
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: status, headers: h))), promise: nil)
        if let body { context.write(wrapOutboundOut(.body(.byteBuffer(ByteBuffer(string: body)))), promise: nil) }
        context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        context.close(promise: nil)
    }
}

/// An upstream that answers any request with fixed raw bytes (for malformed responses).
final class RawUpstream: Sendable {
    let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
    private let channel: Channel
    let port: Int
    let connections = Atomic<Int>(0)

    /// Answers every read with `reply` (an empty one: a server that accepts and never says anything). With
    /// `tls`, over TLS; `raggedClose`: after the reply the TCP connection is closed without a TLS close_notify.
    init(reply: String, tls: NIOSSLContext? = nil, raggedClose: Bool = false) throws {
        let box = Mutex<RawUpstream?>(nil)
        channel = try ServerBootstrap(group: group)
            .childChannelInitializer { channel in
                box.withLock { $0 }?.connections.add(1, ordering: .relaxed)
                return channel.eventLoop.makeCompletedFuture {
                    if let tls { try channel.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: tls)) }
                    try channel.pipeline.syncOperations.addHandler(RawReply(reply: reply, raggedClose: raggedClose))
                }
            }
            .bind(host: "127.0.0.1", port: 0).wait()
        port = channel.localAddress!.port!
        box.withLock { $0 = self }
    }

    func stop() {
        try? channel.close().wait()
        try? group.syncShutdownGracefully()
    }
}

private final class RawReply: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer
    let reply: String
    let raggedClose: Bool
    init(reply: String, raggedClose: Bool) {
        self.reply = reply
        self.raggedClose = raggedClose
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if reply.isEmpty { return }
        let written = context.writeAndFlush(wrapOutboundOut(ByteBuffer(string: reply)))
        if raggedClose, let tls = try? context.pipeline.syncOperations.context(handlerType: NIOSSLServerHandler.self) {
            // Closing from the TLS handler's context passes it by: the socket closes with no close_notify.
            written.assumeIsolated().whenComplete { _ in tls.close(promise: nil) }
        }
    }
}
