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

    /// One certificate's chain and key, read and checked to belong together (refused now, not at a client's
    /// handshake).
    static func load(_ c: ServerTLSConfig.Certificate, index: Int) throws -> Loaded {
        let what = "server.tls.certificates[\(index)]"
        let chain = try ClientTLS.certificates(c.certFile, "\(what).cert_file")
        let key = try ClientTLS.privateKey(c.keyFile, "\(what).key_file")
        var probe = TLSConfiguration.makeServerConfiguration(
            certificateChain: chain.map { .certificate($0) }, privateKey: .privateKey(key))
        probe.minimumTLSVersion = .tlsv12
        do {
            _ = try NIOSSLContext(configuration: probe)
        } catch {
            throw TLSFileError("\(what): \(c.keyFile) is not the key of \(c.certFile): \(error)")
        }
        return Loaded(chain: chain, key: key)
    }

    static func makeContext(_ config: ServerTLSConfig) throws -> NIOSSLContext {
        let loaded = try config.certificates.enumerated().map { try load($1, index: $0) }
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

/// Opens every certificate, key and CA file a config names (for `validate`, and for `serve` before it binds), so
/// a file that is missing, is not PEM, or is a key that does not fit its certificate is reported at the line
/// that names it.
public enum TLSFileCheck {
    public static func problems(_ config: GatewayConfig) -> [ConfigProblem] {
        func located(_ ref: TLSFileReference, _ error: Error) -> ConfigProblem {
            ConfigProblem(file: ref.file, line: ref.line, column: ref.column, message: "\(error)")
        }
        var problems: [ConfigProblem] = []
        var unusable = Set<String>()
        for ref in config.tlsFiles {
            do {
                switch ref.kind {
                case .certificates: _ = try ClientTLS.certificates(ref.path, ref.what)
                case .privateKey: _ = try ClientTLS.privateKey(ref.path, ref.what)
                }
            } catch {
                unusable.insert(ref.what)
                problems.append(located(ref, error))
            }
        }
        for (index, certificate) in (config.server.tls?.certificates ?? []).enumerated() {
            let what = "server.tls.certificates[\(index)]"
            guard !unusable.contains("\(what).cert_file"), !unusable.contains("\(what).key_file"),
                let keyRef = config.tlsFiles.first(where: { $0.what == "\(what).key_file" })
            else { continue }
            do {
                _ = try ListenerTLS.load(certificate, index: index)
            } catch {
                problems.append(located(keyRef, error))
            }
        }
        return problems
    }
}
