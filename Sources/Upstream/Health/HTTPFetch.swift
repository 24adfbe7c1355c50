import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL
import Policy

/// A one-shot HTTP/1.1 GET with `Connection: close`, bounded in time and size: health probes and key-set
/// fetches. Never on the request path.
public enum HTTPFetch {
    public struct Response: Sendable {
        public var status: Int
        public var body: [UInt8]
    }

    public struct Failure: Error, CustomStringConvertible {
        public var description: String
        public init(description: String) { self.description = description }
    }

    /// A GET of `url`: its host is resolved on NIO's thread pool (never on an event loop); an https URL needs
    /// `tls` (whose context verifies the server as `url`'s host).
    public static func get(
        url: JWKSURL, tls: ClientTLS?, on loop: EventLoop, timeout: TimeAmount, maxBytes: Int = 1 << 20,
        userAgent: String = "gatehouse"
    ) -> EventLoopFuture<Response> {
        if url.tls && tls == nil { return loop.makeFailedFuture(Failure(description: "\(url): no TLS settings")) }
        return NIOThreadPool.singleton.runIfActive(eventLoop: loop) {
            try SocketAddress.makeAddressResolvingHost(url.host, port: url.port)
        }.flatMap { address in
            get(
                address: address, hostHeader: url.hostHeader, path: url.path, on: loop, timeout: timeout,
                maxBytes: maxBytes, userAgent: userAgent, tls: url.tls ? tls?.naming(url.host) : nil)
        }
    }

    /// With `tls`, the GET goes over TLS (verified as `tls` says); the timeout covers the handshake too.
    /// `headers` are added to the request (e.g. `Authorization`).
    public static func get(
        address: SocketAddress, hostHeader: String, path: String, on loop: EventLoop, timeout: TimeAmount,
        maxBytes: Int = 1 << 20, userAgent: String = "gatehouse", tls: ClientTLS? = nil, headers: [(String, String)] = []
    ) -> EventLoopFuture<Response> {
        let promise = loop.makePromise(of: Response.self)
        let timer = loop.scheduleTask(in: timeout) { promise.fail(Failure(description: "timed out after \(timeout)")) }
        promise.futureResult.whenComplete { _ in timer.cancel() }
        ClientBootstrap(group: loop)
            .connectTimeout(timeout)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    if let tls { try channel.pipeline.syncOperations.addHandler(try tls.makeHandler()) }
                    try channel.pipeline.syncOperations.addHTTPClientHandlers()
                    try channel.pipeline.syncOperations.addHandler(FetchHandler(promise: promise, maxBytes: maxBytes))
                }
            }
            .connect(to: address)
            .whenComplete { result in
                switch result {
                case .failure(let error):
                    promise.fail(Failure(description: "connect: \(error)"))
                case .success(let channel):
                    var head = HTTPRequestHead(version: .http1_1, method: .GET, uri: path)
                    head.headers.add(name: "Host", value: hostHeader)
                    head.headers.add(name: "Connection", value: "close")
                    head.headers.add(name: "User-Agent", value: userAgent)
                    for (name, value) in headers { head.headers.add(name: name, value: value) }
                    channel.write(HTTPClientRequestPart.head(head), promise: nil)
                    channel.writeAndFlush(HTTPClientRequestPart.end(nil), promise: nil)
                    promise.futureResult.whenComplete { _ in channel.close(promise: nil) }
                }
            }
        return promise.futureResult
    }
}

private final class FetchHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPClientResponsePart
    private let promise: EventLoopPromise<HTTPFetch.Response>
    private let maxBytes: Int
    private var status = 0
    private var body: [UInt8] = []

    init(promise: EventLoopPromise<HTTPFetch.Response>, maxBytes: Int) {
        self.promise = promise
        self.maxBytes = maxBytes
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            status = Int(head.status.code)
        case .body(let buffer):
            body += buffer.readableBytesView
            if body.count > maxBytes {
                promise.fail(HTTPFetch.Failure(description: "response larger than \(maxBytes) bytes"))
                context.close(promise: nil)
            }
        case .end:
            promise.succeed(HTTPFetch.Response(status: status, body: body))
            context.close(promise: nil)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        promise.fail(HTTPFetch.Failure(description: "connection closed before the response ended"))
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        // No close_notify before the close: the decoder ends a body read to the close, or channelInactive fails.
        if let tls = error as? NIOSSLError, case .uncleanShutdown = tls { return }
        promise.fail(HTTPFetch.Failure(description: "\(error)"))
        context.close(promise: nil)
    }
}

@available(*, unavailable)
extension FetchHandler: Sendable {}
