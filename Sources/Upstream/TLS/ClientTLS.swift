import Foundation
import NIOCore
import NIOSSL
import NIOTLS
import Policy

/// The client side of a TLS connection the gateway opens (an https upstream, its health checks, a key-set or
/// discovery URL): one `NIOSSLContext`, built when a config is loaded (it reads files) and shared by every
/// event loop, and the name to send as SNI and to verify.
public struct ClientTLS: Sendable {
    public let context: NIOSSLContext
    /// Sent as SNI and checked against the certificate; nil for an IP address target without `server_name`
    /// (the certificate must then name the IP address).
    public let serverName: String?
    public let insecure: Bool

    /// Builds the context: `ca_file` (else the system's trust store), the client certificate, verification
    /// (full, unless `insecure_skip_verify`). Throws a message naming the file that could not be used.
    public init(_ config: ClientTLSConfig, host: String, what: String) throws {
        var tls = TLSConfiguration.makeClientConfiguration()
        tls.minimumTLSVersion = .tlsv12
        if config.insecureSkipVerify {
            tls.certificateVerification = .none
        } else if let ca = config.caFile {
            tls.trustRoots = .certificates(try Self.certificates(ca, "\(what).ca_file"))
        } else if let bundle = Self.systemBundle {
            // The system's roots, read now: the library's default adds the certificate directory, which it
            // would search file by file during a handshake, on the event loop.
            tls.trustRoots = .file(bundle)
        }
        if let cert = config.certFile, let key = config.keyFile {
            tls.certificateChain = try Self.certificates(cert, "\(what).cert_file").map { .certificate($0) }
            tls.privateKey = .privateKey(try Self.privateKey(key, "\(what).key_file"))
        }
        do {
            context = try NIOSSLContext(configuration: tls)
        } catch {
            throw TLSFileError("\(what): the TLS settings were refused: \(error)")
        }
        insecure = config.insecureSkipVerify
        if let name = config.serverName {
            serverName = name
        } else {
            serverName = Self.isIPAddress(host) ? nil : host
        }
    }

    private init(context: NIOSSLContext, serverName: String?, insecure: Bool) {
        self.context = context
        self.serverName = serverName
        self.insecure = insecure
    }

    /// The same trust and client certificate, verifying `host` instead (a key-set URL on another host).
    public func naming(_ host: String) -> ClientTLS {
        ClientTLS(context: context, serverName: Self.isIPAddress(host) ? nil : host, insecure: insecure)
    }

    /// A handler for a new connection (one per connection: it holds the connection's TLS state).
    public func makeHandler() throws -> NIOSSLClientHandler {
        try NIOSSLClientHandler(context: context, serverHostname: serverName)
    }

    /// Adds a new connection's TLS handler and a ``TLSHandshakeWaiter`` that completes `handshake`.
    public func addHandlers(to sync: ChannelPipeline.SynchronousOperations, handshake: EventLoopPromise<Void>) throws {
        try sync.addHandler(try makeHandler())
        try sync.addHandler(TLSHandshakeWaiter(promise: handshake))
    }

    /// `connected`'s channel once its handshake is done, both within `timeout` of `started` (the connect
    /// timeout covers the handshake); otherwise the channel is closed and the future fails. Without `tls` the
    /// connection is ready once connected (and `handshake`, unused, is completed).
    public static func handshaken(
        _ connected: EventLoopFuture<Channel>, tls: ClientTLS?, handshake: EventLoopPromise<Void>, started: NIODeadline,
        timeout: TimeAmount
    ) -> EventLoopFuture<Channel> {
        guard tls != nil else {
            handshake.succeed(())
            return connected
        }
        // The promise must end on every path: a connect that fails before or in the initializer too.
        connected.whenFailure { handshake.fail($0) }
        return connected.flatMap { channel in
            let timer = channel.eventLoop.scheduleTask(deadline: started + timeout) {
                handshake.fail(ChannelError.connectTimeout(timeout))
            }
            return handshake.futureResult.map { _ -> Channel in
                timer.cancel()
                return channel
            }.flatMapErrorThrowing { error in
                timer.cancel()
                channel.close(promise: nil)
                throw error
            }
        }
    }

    /// The system's CA bundle (Debian/Ubuntu/Alpine, Fedora/RHEL, SUSE), if there is one.
    static let systemBundle: String? = [
        "/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt", "/etc/ssl/ca-bundle.pem",
        "/etc/ssl/cert.pem",
    ].first { FileManager.default.isReadableFile(atPath: $0) }

    static func isIPAddress(_ host: String) -> Bool {
        (try? SocketAddress(ipAddress: host, port: 0)) != nil
    }

    /// Every certificate of a PEM file (a chain, or a CA bundle).
    public static func certificates(_ path: String, _ what: String) throws -> [NIOSSLCertificate] {
        let certs: [NIOSSLCertificate]
        do {
            certs = try NIOSSLCertificate.fromPEMFile(path)
        } catch {
            throw TLSFileError("\(what): cannot read PEM certificates from \(path): \(error)")
        }
        if certs.isEmpty { throw TLSFileError("\(what): \(path) holds no PEM certificate") }
        return certs
    }

    public static func privateKey(_ path: String, _ what: String) throws -> NIOSSLPrivateKey {
        do {
            return try NIOSSLPrivateKey(file: path, format: .pem)
        } catch {
            throw TLSFileError("\(what): cannot read a PEM private key from \(path): \(error)")
        }
    }
}

/// A certificate, key or CA file that could not be used; the config that names it is refused.
public struct TLSFileError: Error, CustomStringConvertible, Sendable {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// Completes a promise when the TLS handshake of its channel has finished (or fails it when the channel errs or
/// closes first), then leaves the pipeline. Sits right after the TLS handler.
public final class TLSHandshakeWaiter: ChannelInboundHandler, RemovableChannelHandler {
    public typealias InboundIn = ByteBuffer
    private let promise: EventLoopPromise<Void>

    public init(promise: EventLoopPromise<Void>) {
        self.promise = promise
    }

    public func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let tls = event as? TLSUserEvent, case .handshakeCompleted = tls {
            promise.succeed(())
            context.fireUserInboundEventTriggered(event)
            context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    public func errorCaught(context: ChannelHandlerContext, error: Error) {
        promise.fail(error)
        context.fireErrorCaught(error)
    }

    public func channelInactive(context: ChannelHandlerContext) {
        promise.fail(ChannelError.ioOnClosedChannel)
        context.fireChannelInactive()
    }

    public func handlerRemoved(context: ChannelHandlerContext) {
        promise.fail(ChannelError.ioOnClosedChannel)  // no-op once completed
    }
}
