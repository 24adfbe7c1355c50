/// `Gatehouse-Signature` (SPEC "Signed identity"): lets an upstream check that a request came through the gateway
/// with exactly these identity headers.
///
/// The value is `t=<unix seconds>,v1=<64 hex>`, the HMAC-SHA256 under the `sign_headers` key of the canonical
/// string: `t`, `X-Request-ID`, the method, the forwarded target (path and query), `X-Tenant-ID`, `X-User-ID`,
/// `X-Plan` and `X-Roles`, each followed by a newline, an absent one as an empty line.
public enum IdentitySignature {
    public static func canonical(
        time: Int, requestID: String, method: String, target: String, tenant: String?, user: String?, plan: String?,
        roles: String?
    ) -> String {
        var s = String(time) + "\n" + requestID + "\n" + method + "\n" + target + "\n"
        s += (tenant ?? "") + "\n" + (user ?? "") + "\n" + (plan ?? "") + "\n" + (roles ?? "") + "\n"
        return s
    }

    public static func header(
        key: [UInt8], time: Int, requestID: String, method: String, target: String, tenant: String?, user: String?,
        plan: String?, roles: String?
    ) -> String {
        let text = canonical(
            time: time, requestID: requestID, method: method, target: target, tenant: tenant, user: user, plan: plan,
            roles: roles)
        return "t=" + String(time) + ",v1=" + Digest.hex(Digest.hmacSHA256(key: key, message: Array(text.utf8)))
    }
}
