import Foundation
import NIOCore
import NIOPosix
import NIOSSL
import NIOTLS
import Synchronization

/// A TLS client on loopback (swift-nio-ssl): connects, finishes the handshake (or throws why it failed), then
/// sends request text and reads responses with a Content-Length, on one kept-alive connection.
final class TLSClient {
    struct Options {
        var serverName: String? = nil
        var trust: [NIOSSLCertificate] = []
        var verify = true
        var clientCertificate: (chain: [NIOSSLCertificate], key: NIOSSLPrivateKey)? = nil
        var maxVersion: TLSVersion? = nil
        /// Bytes sent in the clear before the handshake (a PROXY protocol header).
        var prelude: [UInt8] = []
    }

    let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
    private let channel: Channel
    private let inbox: Inbox

    init(port: Int, _ options: Options) throws {
        var tls = TLSConfiguration.makeClientConfiguration()
        tls.trustRoots = .certificates(options.trust)
        tls.certificateVerification = options.verify ? .fullVerification : .none
        if let v = options.maxVersion { tls.maximumTLSVersion = v }
        if let cert = options.clientCertificate {
            tls.certificateChain = cert.chain.map { .certificate($0) }
            tls.privateKey = .privateKey(cert.key)
        }
        let context = try NIOSSLContext(configuration: tls)
        let inbox = Inbox()
        self.inbox = inbox
        let handshake = group.next().makePromise(of: Void.self)
        do {
            let prelude = options.prelude
            channel = try ClientBootstrap(group: group)
                .channelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        if prelude.isEmpty {
                            try channel.pipeline.syncOperations.addHandler(
                                NIOSSLClientHandler(context: context, serverHostname: options.serverName))
                        }
                        try channel.pipeline.syncOperations.addHandler(Collector(inbox: inbox, handshake: handshake))
                    }
                }
                .connect(host: "127.0.0.1", port: port).wait()
            if !prelude.isEmpty {
                // The prelude in the clear, then TLS: the handler starts its handshake as it joins the pipeline.
                try channel.writeAndFlush(ByteBuffer(bytes: prelude)).wait()
                try channel.pipeline.addHandler(
                    try NIOSSLClientHandler(context: context, serverHostname: options.serverName), position: .first
                ).wait()
            }
            try handshake.futureResult.wait()
        } catch {
            try? group.syncShutdownGracefully()
            throw error
        }
    }

    deinit { try? group.syncShutdownGracefully() }

    func close() { try? channel.close().wait() }

    /// Sends `GET path` and waits for the whole response.
    func get(_ path: String, host: String = "gateway.test", headers: [(String, String)] = []) throws -> RawResponse {
        var text = "GET \(path) HTTP/1.1\r\nHost: \(host)\r\n"
        for (n, v) in headers { text += "\(n): \(v)\r\n" }
        text += "\r\n"
        try channel.writeAndFlush(ByteBuffer(string: text)).wait()
        return try inbox.nextResponse(timeout: 10)
    }

    final class Inbox: Sendable {
        private let state = Mutex<(bytes: [UInt8], closed: Bool)>(([], false))
        private let signal = DispatchSemaphore(value: 0)

        func append(_ bytes: [UInt8]) {
            state.withLock { $0.bytes += bytes }
            signal.signal()
        }

        func closed() {
            state.withLock { $0.closed = true }
            signal.signal()
        }

        /// One response with a Content-Length (or none: an empty body), taken off the front of what arrived.
        func nextResponse(timeout: TimeInterval) throws -> RawResponse {
            let deadline = Date().addingTimeInterval(timeout)
            while true {
                let taken = state.withLock { s -> (RawResponse?, Bool) in
                    guard let end = Self.find(s.bytes, Array("\r\n\r\n".utf8)) else { return (nil, s.closed) }
                    let head = String(decoding: s.bytes[..<end], as: UTF8.self).components(separatedBy: "\r\n")
                    let status = Int(head[0].split(separator: " ")[1]) ?? 0
                    var headers: [(String, String)] = []
                    for line in head.dropFirst() {
                        guard let colon = line.firstIndex(of: ":") else { continue }
                        headers.append((String(line[..<colon]), line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)))
                    }
                    let length = Int(headers.first { $0.0.lowercased() == "content-length" }?.1 ?? "0") ?? 0
                    guard s.bytes.count >= end + 4 + length else { return (nil, s.closed) }
                    let body = Array(s.bytes[(end + 4)..<(end + 4 + length)])
                    s.bytes.removeFirst(end + 4 + length)
                    return (RawResponse(status: status, headers: headers, body: body), false)
                }
                if let response = taken.0 { return response }
                if taken.1 { throw RawClientError(description: "connection closed before a whole response") }
                if signal.wait(timeout: .now() + max(0, deadline.timeIntervalSinceNow)) == .timedOut {
                    throw RawClientError(description: "no whole response within \(timeout)s")
                }
            }
        }

        private static func find(_ bytes: [UInt8], _ needle: [UInt8]) -> Int? {
            guard bytes.count >= needle.count else { return nil }
            for i in 0...(bytes.count - needle.count) where bytes[i..<(i + needle.count)].elementsEqual(needle) { return i }
            return nil
        }
    }

    private final class Collector: ChannelInboundHandler {
        typealias InboundIn = ByteBuffer
        let inbox: Inbox
        let handshake: EventLoopPromise<Void>

        init(inbox: Inbox, handshake: EventLoopPromise<Void>) {
            self.inbox = inbox
            self.handshake = handshake
        }

        func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
            if let e = event as? TLSUserEvent, case .handshakeCompleted = e { handshake.succeed(()) }
        }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            inbox.append(Array(unwrapInboundIn(data).readableBytesView))
        }

        func errorCaught(context: ChannelHandlerContext, error: Error) {
            handshake.fail(error)
            context.close(promise: nil)
        }

        func channelInactive(context: ChannelHandlerContext) {
            handshake.fail(RawClientError(description: "closed during the handshake"))
            inbox.closed()
        }
    }
}
