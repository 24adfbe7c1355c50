import Foundation
import NIOSSL
import Synchronization

/// Certificates made for one test by the `openssl` command line: certificate authorities, and leaf certificates
/// they sign (server and client use, with the subject alternative names a test asks for). P-256 keys, valid
/// for two days. Everything lives in one temporary directory.
final class TestCerts {
    let directory: URL

    init() throws {
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("gatehouse-certs-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
    }

    deinit { try? FileManager.default.removeItem(at: directory) }

    func path(_ name: String) -> String { directory.appendingPathComponent(name).path }

    /// A self-signed CA: `NAME.pem` and `NAME.key`.
    @discardableResult
    func makeCA(_ name: String) throws -> String {
        try openssl([
            "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", path("\(name).key"), "-out", path("\(name).pem"), "-days", "2", "-subj", "/CN=\(name)",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        ])
        return path("\(name).pem")
    }

    /// A leaf certificate signed by CA `ca`: `NAME.pem` (the leaf only) and `NAME.key`. `sans` are
    /// `DNS:...`/`IP:...` entries.
    func makeLeaf(_ name: String, ca: String, sans: [String]) throws {
        let ext = path("\(name).ext")
        try """
        basicConstraints=CA:FALSE
        keyUsage=critical,digitalSignature
        extendedKeyUsage=serverAuth,clientAuth
        subjectAltName=\(sans.joined(separator: ","))

        """.write(toFile: ext, atomically: true, encoding: .utf8)
        try openssl([
            "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", path("\(name).key"),
            "-out", path("\(name).csr"), "-subj", "/CN=\(name)",
        ])
        try openssl([
            "x509", "-req", "-in", path("\(name).csr"), "-CA", path("\(ca).pem"), "-CAkey", path("\(ca).key"),
            "-CAcreateserial", "-out", path("\(name).pem"), "-days", "2", "-extfile", ext,
        ])
    }

    func certificates(_ name: String) throws -> [NIOSSLCertificate] { try NIOSSLCertificate.fromPEMFile(path("\(name).pem")) }
    func key(_ name: String) throws -> NIOSSLPrivateKey { try NIOSSLPrivateKey(file: path("\(name).key"), format: .pem) }

    /// A server context for a test upstream: certificate `name`; with `clientCA`, client certificates signed by
    /// it are required.
    func serverContext(_ name: String, clientCA: String? = nil) throws -> NIOSSLContext {
        var tls = TLSConfiguration.makeServerConfiguration(
            certificateChain: try certificates(name).map { .certificate($0) }, privateKey: .privateKey(try key(name)))
        if let clientCA {
            tls.trustRoots = .certificates(try certificates(clientCA))
            tls.certificateVerification = .noHostnameVerification
        }
        return try NIOSSLContext(configuration: tls)
    }

    private func openssl(_ arguments: [String]) throws {
        _ = try runOpenSSL(arguments)
    }
}

/// Runs `executable` with `arguments` to its end: exit status, standard output and standard error (both drained
/// while it runs, so a full pipe cannot block it). `environment` is added to the test's own.
func runProcess(
    _ executable: String, _ arguments: [String], environment: [String: String] = [:]
) throws -> (status: Int32, out: Data, err: Data) {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: executable)
    p.arguments = arguments
    if !environment.isEmpty {
        var env = ProcessInfo.processInfo.environment
        for (k, v) in environment { env[k] = v }
        p.environment = env
    }
    let out = Pipe()
    let err = Pipe()
    p.standardOutput = out
    p.standardError = err
    try p.run()
    let errors = Mutex(Data())
    let drained = DispatchGroup()
    DispatchQueue.global().async(group: drained) { errors.withLock { $0 = err.fileHandleForReading.readDataToEndOfFile() } }
    let output = out.fileHandleForReading.readDataToEndOfFile()
    p.waitUntilExit()
    drained.wait()
    return (p.terminationStatus, output, errors.withLock { $0 })
}

/// Runs the `openssl` command line; its standard output, or an error carrying what it wrote to standard error.
func runOpenSSL(_ arguments: [String]) throws -> Data {
    let result = try runProcess("/usr/bin/openssl", arguments)
    guard result.status == 0 else {
        let message = String(decoding: result.err, as: UTF8.self)
        throw RawClientError(description: "openssl \(arguments.prefix(2).joined(separator: " ")) failed: \(message)")
    }
    return result.out
}
