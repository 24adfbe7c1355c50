import NIOCore
import NIOHTTP1
import Policy

/// The admin listener: `/healthz`, `/readyz`, `/metrics`, and `/admin/*` behind the bearer admin token.
final class AdminHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private let server: GatewayServer
    private var head: HTTPRequestHead?
    private var body: [UInt8] = []
    private var tooLarge = false
    private var requestID = "admin"
    /// Admin request bodies are small JSON documents.
    static let maxBody = 64 * 1024

    init(server: GatewayServer) { self.server = server }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let h):
            head = h
            body = []
            tooLarge = false
            requestID = h.headers.first(name: "x-request-id").flatMap { RequestTarget.isValidRequestID($0) ? $0 : nil }
                ?? "admin-" + AdminAPI.randomToken(bytes: 6)
        case .body(let b):
            if body.count + b.readableBytes > Self.maxBody {
                tooLarge = true
            } else {
                body += b.readableBytesView
            }
        case .end:
            guard let head else { return }
            self.head = nil
            context.triggerUserOutboundEvent(AdminExchangeEvent.requestRead, promise: nil)
            if tooLarge {
                respondProblem(context, .payloadTooLarge(limit: Self.maxBody, close: true), head)
                return
            }
            route(context, head)
        }
    }

    private func route(_ context: ChannelHandlerContext, _ head: HTTPRequestHead) {
        let path = head.uri.split(separator: "?", maxSplits: 1).first.map(String.init) ?? head.uri
        let query = head.uri.firstIndex(of: "?").map { head.uri[head.uri.index(after: $0)...] } ?? ""
        switch (head.method, path) {
        case (.GET, "/healthz"):
            respond(context, head, status: .ok, contentType: "application/json", body: "{\"status\":\"ok\"}")
        case (.GET, "/readyz"):
            server.readiness().hop(to: context.eventLoop).assumeIsolated().whenSuccess { ready in
                self.respond(
                    context, head, status: ready ? .ok : .serviceUnavailable, contentType: "application/json",
                    body: ready ? "{\"status\":\"ready\"}" : "{\"status\":\"not_ready\"}")
            }
        case (.POST, "/webhooks/billing"):
            server.billingWebhook.handle(
                signature: head.headers.first(name: "stripe-signature"), body: body, config: server.snapshot.config,
                on: context.eventLoop
            ).hop(to: context.eventLoop).assumeIsolated().whenSuccess { answer in
                switch answer {
                case .acknowledged(let json):
                    self.respond(context, head, status: .ok, contentType: "application/json", body: json)
                case .refused(let denial):
                    self.respondProblem(context, denial, head)
                }
            }
        case (.GET, "/metrics"):
            let loop = context.eventLoop
            server.metricsText().hop(to: loop).assumeIsolated().whenSuccess { text in
                self.respond(context, head, status: .ok, contentType: "text/plain; version=0.0.4", body: text)
            }
        default:
            if path.hasPrefix("/admin/") || path == "/admin" {
                guard server.isAdminAuthorized(head.headers.first(name: "authorization")) else {
                    respondProblem(context, .unauthenticated("A valid admin token is required.", tokenSent: head.headers.contains(name: "authorization")), head)
                    return
                }
                let api = AdminAPI(
                    tenants: server.tenants, store: server.store, config: server.snapshot.config, eventLoop: context.eventLoop,
                    usage: server.usageReader, export: server.usageExporter, clock: server.clock)
                if let future = api.handle(
                    method: head.method.rawValue, path: path, query: query, body: body, requestID: requestID)
                {
                    future.hop(to: context.eventLoop).assumeIsolated().whenSuccess { r in
                        self.respond(
                            context, head, status: HTTPResponseStatus(statusCode: r.status), contentType: r.contentType,
                            body: r.body)
                    }
                    return
                }
                if head.method == .POST && path == "/admin/reload" {
                    let loop = context.eventLoop
                    server.reloadFuture().hop(to: loop).assumeIsolated().whenSuccess { problems in
                        if problems.isEmpty {
                            self.respond(context, head, status: .ok, contentType: "application/json", body: "{\"status\":\"reloaded\"}")
                        } else {
                            let list = problems.map { JSONText.quote($0) }.joined(separator: ",")
                            self.respond(
                                context, head, status: .unprocessableEntity, contentType: "application/json",
                                body: "{\"status\":\"rejected\",\"problems\":[\(list)]}")
                        }
                    }
                    return
                }
            }
            respondProblem(context, .routeNotFound("No admin endpoint at this path."), head)
        }
    }

    private func respondProblem(_ context: ChannelHandlerContext, _ denial: Denial, _ head: HTTPRequestHead) {
        respond(
            context, head, status: HTTPResponseStatus(statusCode: denial.status), contentType: "application/problem+json",
            body: denial.document(requestID: requestID), extraHeaders: denial.headers)
    }

    private func respond(
        _ context: ChannelHandlerContext, _ head: HTTPRequestHead, status: HTTPResponseStatus, contentType: String,
        body: String, extraHeaders: [(String, String)] = []
    ) {
        var headers = HTTPHeaders()
        if status != .noContent {
            headers.add(name: "Content-Type", value: contentType)
            headers.add(name: "Content-Length", value: String(body.utf8.count))
        }
        for (n, v) in extraHeaders { headers.add(name: n, value: v) }
        headers.add(name: "X-Request-ID", value: requestID)
        if !head.isKeepAlive { headers.add(name: "Connection", value: "close") }
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: head.version, status: status, headers: headers))), promise: nil)
        if head.method != .HEAD && status != .noContent {
            context.write(wrapOutboundOut(.body(.byteBuffer(ByteBuffer(string: body)))), promise: nil)
        }
        // Before the end is written: writing it hands the next pipelined request (if any) to this handler at once,
        // and that request's `requestRead` must find the guard past this one.
        context.triggerUserOutboundEvent(AdminExchangeEvent.responded, promise: nil)
        let done = context.writeAndFlush(wrapOutboundOut(.end(nil)))
        if !head.isKeepAlive { done.assumeIsolated().whenComplete { _ in context.close(promise: nil) } }
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        context.close(promise: nil)
    }
}

@available(*, unavailable)
extension AdminHandler: Sendable {}
