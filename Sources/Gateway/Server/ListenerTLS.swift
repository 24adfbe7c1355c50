import NIOCore
import NIOSSL
import Policy
import Upstream

/// The proxy listener's TLS: one `NIOSSLContext` per loaded config (certificates read and checked at load, so a
/// broken file is refused like any bad config and the previous context keeps serving). The first certificate
/// is the default; during each handshake the SNI name picks another one (``ServerTLSConfig/certificateIndex(serverName:)``).
enum ListenerTLS {
    struct Loaded: Sendable {
        var chain: [NIOSSLCertificate]
        var key: NIOSSLPrivateKey
    }

    static func makeContext(_ config: ServerTLSConfig) throws -> NIOSSLContext {
        var loaded: [Loaded] = []
        for (i, c) in config.certificates.enumerated() {
            let what = "server.tls.certificates[\(i)]"
            let chain = try ClientTLS.certificates(c.certFile, "\(what).cert_file")
            let key = try ClientTLS.privateKey(c.keyFile, "\(what).key_file")
            // A key that does not match its certificate is refused now, not at a client's handshake.
            var probe = TLSConfiguration.makeServerConfiguration(
                certificateChain: chain.map { .certificate($0) }, privateKey: .privateKey(key))
            probe.minimumTLSVersion = .tlsv12
            do {
                _ = try NIOSSLContext(configuration: probe)
            } catch {
                throw TLSFileError("\(what): \(c.keyFile) is not the key of \(c.certFile): \(error)")
            }
            loaded.append(Loaded(chain: chain, key: key))
        }
        let first = loaded[0]
        var tls = TLSConfiguration.makeServerConfiguration(
            certificateChain: first.chain.map { .certificate($0) }, privateKey: .privateKey(first.key))
        tls.minimumTLSVersion = config.minVersion == .v13 ? .tlsv13 : .tlsv12
        // After close_notify, wait at most this long for the peer's (a stalled handshake holds nothing longer).
        tls.shutdownTimeout = .seconds(1)
        if let ca = config.clientCAFile {
            tls.trustRoots = .certificates(try ClientTLS.certificates(ca, "server.tls.client_ca_file"))
            tls.certificateVerification = .noHostnameVerification
            tls.sendCANameList = true
        }
        if loaded.count > 1 {
            let certificates = loaded
            tls.sslContextCallback = { values, promise in
                let index = config.certificateIndex(serverName: values.serverHostname)
                guard index > 0 else { return promise.succeed(.noChanges) }
                var override = NIOSSLContextConfigurationOverride()
                override.certificateChain = certificates[index].chain.map { .certificate($0) }
                override.privateKey = .privateKey(certificates[index].key)
                promise.succeed(override)
            }
        }
        do {
            return try NIOSSLContext(configuration: tls)
        } catch {
            throw TLSFileError("server.tls: the TLS settings were refused: \(error)")
        }
    }
}
