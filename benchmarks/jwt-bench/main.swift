// Micro-benchmark: the cost of verifying a JWT with and without the per-loop verified-token cache,
// for HS256 and RS256, and of sealing one audit record, on this machine. Prints one JSON object. Run by benchmarks/run.
import Foundation
import Policy

func measure(_ label: String, iterations: Int, _ body: () -> Void) -> Double {
    for _ in 0..<min(1000, iterations / 10) { body() }  // warm-up
    let start = DispatchTime.now().uptimeNanoseconds
    for _ in 0..<iterations { body() }
    let ns = Double(DispatchTime.now().uptimeNanoseconds - start) / Double(iterations)
    return ns / 1000
}

let secret = "bench-secret-0123456789abcdef0123456789abcdef"
let keyPath = CommandLine.arguments.count > 1 ? CommandLine.arguments[1] : nil
guard let keyPath, let rsaPrivate = FileManager.default.contents(atPath: keyPath),
    let rsaPublic = FileManager.default.contents(atPath: keyPath + ".pub")
else {
    FileHandle.standardError.write(Data("usage: jwt-bench RSA_PRIVATE_PEM (with RSA_PRIVATE_PEM.pub beside it)\n".utf8))
    exit(2)
}
try rsaPublic.write(to: URL(fileURLWithPath: NSTemporaryDirectory() + "jwt-bench-rsa.pub"))
var identity = IdentityConfig()
var hs = IssuerConfig(issuer: "https://hs/")
hs.algorithms = ["HS256"]
hs.secretEnv = "JWT_BENCH_SECRET"
var rs = IssuerConfig(issuer: "https://rs/")
rs.algorithms = ["RS256"]
rs.publicKeyFile = NSTemporaryDirectory() + "jwt-bench-rsa.pub"
identity.issuers = [hs, rs]
let verifier = try JWTVerifier(config: identity, environment: ["JWT_BENCH_SECRET": secret])
let now = Date().timeIntervalSince1970
func claims(_ iss: String) -> [String: Any] {
    ["iss": iss, "sub": "u", "tenant": "acme", "roles": ["a"], "exp": Int(now) + 3600, "iat": Int(now)]
}
let hsToken = try JWTSigner.sign(claims: claims("https://hs/"), algorithm: "HS256", key: Array(secret.utf8))
let rsToken = try JWTSigner.sign(claims: claims("https://rs/"), algorithm: "RS256", key: [UInt8](rsaPrivate))
precondition((try? verifier.verify(hsToken, now: now).get()) != nil)
precondition((try? verifier.verify(rsToken, now: now).get()) != nil)

let cache = TokenCache()
var result: [String: Double] = [:]
result["hs256_uncached_us"] = measure("hs", iterations: 20_000) { _ = verifier.verify(hsToken, now: now) }
result["rs256_uncached_us"] = measure("rs", iterations: 5_000) { _ = verifier.verify(rsToken, now: now) }
result["hs256_cached_us"] = measure("hsc", iterations: 200_000) {
    _ = cache.verify(hsToken, now: now, leeway: { _ in 0 }) { verifier.verify($0, now: now) }
}
result["rs256_cached_us"] = measure("rsc", iterations: 200_000) {
    _ = cache.verify(rsToken, now: now, leeway: { _ in 0 }) { verifier.verify($0, now: now) }
}
// Sealing one audit record into the hash chain (canonical form + SHA-256), as the audit writer does.
var chain = AuditChain()
var sealed: [UInt8] = []
sealed.reserveCapacity(1 << 20)
let record = AuditRecord(
    timeMillis: Int64(now * 1000), requestID: "k3j2h4g5f6d7-1a2b", tenant: "t0042", user: "user42", method: "POST",
    path: "/api/items/42", route: "jwt", status: 200, decision: "allow", code: nil, latencyMicros: 1234,
    clientIP: "127.0.0.1", upstream: "origin")
result["audit_seal_us"] = measure("seal", iterations: 200_000) {
    if sealed.count > 900_000 { sealed.removeAll(keepingCapacity: true) }
    chain.seal(record, into: &sealed)
}
let json = try JSONSerialization.data(withJSONObject: result.mapValues { ($0 * 100).rounded() / 100 }, options: [.sortedKeys])
print(String(decoding: json, as: UTF8.self))
