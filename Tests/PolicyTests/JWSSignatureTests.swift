import Foundation
import Testing

@testable import Policy

/// Signature checks on keys parsed once: ECDSA's JWS form and its DER conversion, HMAC lengths, key sizes, and
/// tokens whose signature is cut, padded or in the wrong encoding. Keys are made by the openssl CLI.
@Suite struct JWSSignatureTests {
    static func openssl(_ args: [String]) throws {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/openssl")
        p.arguments = args
        p.standardError = FileHandle.nullDevice
        p.standardOutput = FileHandle.nullDevice
        try p.run()
        p.waitUntilExit()
        guard p.terminationStatus == 0 else { throw JWKError("openssl \(args) failed") }
    }

    /// A fresh key pair: (private PEM, path of the public PEM).
    static func keyPair(_ genpkey: [String]) throws -> (String, String) {
        let dir = NSTemporaryDirectory() + "jws-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        try openssl(["genpkey"] + genpkey + ["-out", dir + "/key.pem"])
        try openssl(["pkey", "-in", dir + "/key.pem", "-pubout", "-out", dir + "/pub.pem"])
        return (try String(contentsOfFile: dir + "/key.pem", encoding: .utf8), dir + "/pub.pem")
    }

    static func verifier(algorithms: [String], publicKeyFile: String) throws -> JWTVerifier {
        var identity = IdentityConfig()
        var issuer = IssuerConfig(issuer: "https://es.test/")
        issuer.algorithms = algorithms
        issuer.publicKeyFile = publicKeyFile
        identity.issuers = [issuer]
        return try JWTVerifier(config: identity, environment: [:])
    }

    static let now = 1_800_000_000.0
    static var claims: [String: Any] { ["iss": "https://es.test/", "sub": "u", "exp": 1_800_000_600] }

    /// The token with its signature part replaced by `signature`.
    static func resigned(_ token: String, _ signature: [UInt8]) -> String {
        let parts = token.split(separator: ".")
        return parts[0] + "." + parts[1] + "." + Base64URL.encode(signature)
    }

    @Test func ecdsaSignaturesBecomeMinimalDER() {
        // r with its high bit set gains a zero byte; s with leading zeros loses them.
        let r = [0x80] + [UInt8](repeating: 1, count: 31)
        let s = [0, 0] + [UInt8](repeating: 2, count: 30)
        let der = JWSSignature.ecdsaDER(r + s, width: 32)
        #expect(der == [0x30, 0x43, 0x02, 0x21, 0x00] + r + [0x02, 0x1E] + Array(s.dropFirst(2)))
        #expect(JWSSignature.ecdsaDER(r + s.dropLast(), width: 32) == nil, "one byte short")
        #expect(JWSSignature.ecdsaDER([], width: 32) == nil)
    }

    @Test func es256VerifiesOnlyTheExactJWSForm() throws {
        let (key, pub) = try Self.keyPair(["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"])
        let verifier = try Self.verifier(algorithms: ["ES256"], publicKeyFile: pub)
        let token = try JWTSigner.sign(claims: Self.claims, algorithm: "ES256", key: Array(key.utf8))
        #expect((try? verifier.verify(token, now: Self.now).get())?.user == "u")
        let raw = Base64URL.decode(token.split(separator: ".")[2].utf8)!
        #expect(raw.count == 64)
        for (why, signature) in [
            ("cut", Array(raw.dropLast())), ("padded", raw + [0]), ("DER instead of r||s", JWSSignature.ecdsaDER(raw, width: 32)!),
            ("r and s swapped", Array(raw[32...] + raw[..<32])), ("zero", [UInt8](repeating: 0, count: 64)),
        ] {
            #expect(verifier.verify(Self.resigned(token, signature), now: Self.now).failureName == "signature", "\(why)")
        }
    }

    @Test func rsaKeysUnder2048BitsAreRefusedAtLoad() throws {
        let (_, weak) = try Self.keyPair(["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:1024"])
        #expect(throws: ConfigError.self) { try Self.verifier(algorithms: ["RS256"], publicKeyFile: weak) }
        let (key, pub) = try Self.keyPair(["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"])
        let verifier = try Self.verifier(algorithms: ["RS256"], publicKeyFile: pub)
        let token = try JWTSigner.sign(claims: Self.claims, algorithm: "RS256", key: Array(key.utf8))
        #expect((try? verifier.verify(token, now: Self.now).get()) != nil)
        let raw = Base64URL.decode(token.split(separator: ".")[2].utf8)!
        #expect(verifier.verify(Self.resigned(token, Array(raw.dropLast())), now: Self.now).failureName == "signature")
        // The RS key's PEM as an HMAC secret (algorithm confusion): the issuer has no secret, so no key.
        let confused = try JWTSigner.sign(
            claims: Self.claims, algorithm: "HS256", key: Array(try String(contentsOfFile: pub, encoding: .utf8).utf8))
        #expect(verifier.verify(confused, now: Self.now).failureName == "algorithm")
    }

    @Test func hmacNeedsTheDigestsLength() throws {
        let message = Array("header.payload".utf8)
        let secret = [UInt8](repeating: 7, count: 32)
        let key = try #require(HMACKey(secret: secret))
        #expect(HMACKey(secret: []) == nil)
        let mac = Digest.hmacSHA256(key: secret, message: message)
        message.withUnsafeBytes { m in
            #expect(key.mac(m, hash: .sha256) == mac, "the keyed template gives the one-shot HMAC")
            #expect(JWSSignature.verifyHMAC(m, signature: mac, key: key, hash: .sha256))
            #expect(!JWSSignature.verifyHMAC(m, signature: Array(mac.dropLast()), key: key, hash: .sha256))
            #expect(!JWSSignature.verifyHMAC(m, signature: mac + [0], key: key, hash: .sha256))
            #expect(!JWSSignature.verifyHMAC(m, signature: mac, key: key, hash: .sha384))
            #expect(key.mac(m, hash: .sha512)?.count == 64)
        }
        // Each use copies the keyed state: the same input gives the same MAC every time.
        #expect(message.withUnsafeBytes { key.mac($0, hash: .sha256) } == mac)
    }

    /// RFC 4231 test cases 2 (a short key) and 6 (a key longer than the block, hashed first).
    @Test func hmacMatchesRFC4231() throws {
        func hex(_ key: [UInt8], _ data: String, _ hash: JWSHash) throws -> String? {
            let k = try #require(HMACKey(secret: key))
            return Array(data.utf8).withUnsafeBytes { k.mac($0, hash: hash) }.map(Digest.hex)
        }
        let jefe = Array("Jefe".utf8)
        let question = "what do ya want for nothing?"
        #expect(try hex(jefe, question, .sha256) == "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")
        #expect(try hex(jefe, question, .sha384) == "af45d2e376484031617f78d2b58a6b1b9c7ef464f5a01b47e42ec3736322445e8e2240ca5e69e2c78b3239ecfab21649")
        #expect(try hex(jefe, question, .sha512) == "164b7a7bfcf819e2e395fbe73b56e0a387bd64222e831fd610270cd7ea2505549758bf75c05a994a6d034f65f8f0e6fdcaeab1a34d4a6b4b636e070a38bce737")
        let long = [UInt8](repeating: 0xAA, count: 131)
        let text = "Test Using Larger Than Block-Size Key - Hash Key First"
        #expect(try hex(long, text, .sha256) == "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54")
        #expect(try hex(long, text, .sha512) == "80b24263c7c1a3ebb71493c1dd7be8b49b46d1f41b4aeec1121b013783f8f3526b56d037e05f2598bd0fd2215d6a1e5295e64f73f63f0aec8b915a985d786598")
    }
}

extension Result where Failure == JWTError {
    var failureName: String? {
        if case .failure(let e) = self { return e.name }
        return nil
    }
}
