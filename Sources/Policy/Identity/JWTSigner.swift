internal import CJWT
import Foundation

/// Signs JWTs with libjwt, for `gatehouse token` (development and load tests) and the test suites.
public enum JWTSigner {
    public struct Failure: Error, CustomStringConvertible {
        public var description: String
    }

    /// Signs `claims` (a JSON object) with `algorithm` (HS*, RS*, ES*) and `key` (the HMAC secret, or a PEM
    /// private key).
    public static func sign(claims: [String: Any], algorithm: String, key: [UInt8], kid: String? = nil) throws -> String {
        guard JWTVerifier.supported.contains(algorithm) else { throw Failure(description: "unsupported algorithm \(algorithm)") }
        guard !key.isEmpty else { throw Failure(description: "an empty key signs nothing") }
        let json = String(decoding: try JSONSerialization.data(withJSONObject: claims, options: [.sortedKeys]), as: UTF8.self)
        var jwt: OpaquePointer? = nil
        guard jwt_new(&jwt) == 0, let jwt else { throw Failure(description: "jwt_new failed") }
        defer { jwt_free(jwt) }
        guard jwt_add_grants_json(jwt, json) == 0 else { throw Failure(description: "claims rejected by libjwt") }
        if let kid, jwt_add_header(jwt, "kid", kid) != 0 { throw Failure(description: "kid rejected by libjwt") }
        let rc = key.withUnsafeBufferPointer { jwt_set_alg(jwt, jwt_str_alg(algorithm), $0.baseAddress, Int32($0.count)) }
        guard rc == 0 else { throw Failure(description: "libjwt refused the key for \(algorithm)") }
        guard let out = jwt_encode_str(jwt) else { throw Failure(description: "signing failed (is the key a \(algorithm) private key?)") }
        defer { free(out) }  // libjwt 1.10 allocates with malloc and has no jwt_free_str
        return String(cString: out)
    }
}
