import HTTPWire
import NIOHTTP1
import Policy
import Upstream

/// Framing and request-line checks made on every request head before anything else looks at it.
///
/// Anything ambiguous between the gateway and an upstream (request smuggling) is refused here with 400 and
/// the connection is closed: CL with TE, several Content-Lengths, a Transfer-Encoding other than a single
/// `chunked`, TE on HTTP/1.0, a missing or repeated Host, a request target that is not origin-form or holds dot
/// segments. (Control characters in header values are the parser's to refuse: such a head never gets here.)
enum RequestValidation {
    struct Checked {
        var framing: HeaderRewriter.BodyFraming
        var host: String?
        var path: Substring
        var query: Substring
        var expectContinue: Bool
        /// A WebSocket opening handshake (RFC 6455 §4.1), which only a `websocket: true` route takes. Every other
        /// `Upgrade` is refused here, but `h2c`, which is ignored (served over HTTP/1.1, not forwarded).
        var websocket: Bool
    }

    /// `framing` is the parser's decision for this head (``HTTP1Framing/decide(versionMinor:headers:)``): the
    /// body was read by it, so it is the one taken, never decided a second time.
    static func check(_ head: HTTPRequestHead, framing parsed: HTTP1Framing.Decision, maxHeaderBytes: Int) -> Result<Checked, Denial> {
        guard head.version.major == 1, head.version.minor <= 1 else {
            return .failure(.badRequest("Unsupported HTTP version."))
        }
        // TRACE reflects the request (credentials included) and CONNECT opens a tunnel: neither is proxied.
        if head.method == .TRACE || head.method == .CONNECT {
            return .failure(.badRequest("Method \(head.method.rawValue) is not supported by the gateway."))
        }
        if head.uri.utf8.count > maxHeaderBytes {
            return .failure(.headersTooLarge(limit: maxHeaderBytes))
        }
        var hosts = 0
        var host: String? = nil
        var expectContinue = false
        var upgrades: [String] = []
        var connectionUpgrade = false
        var websocketKeys = 0
        var websocketVersion: String? = nil
        var headerBytes = head.uri.utf8.count + 16
        // Control characters in values (NUL, CR, LF among them) never get here: the parser refuses them
        // (`HeaderFields.parse`), and it is the only source of request heads.
        for (name, value) in head.headers {
            headerBytes += name.utf8.count + value.utf8.count + 4
            switch name.utf8.count {
            case 4 where HopByHop.equalsLower(name.utf8, "host"):
                hosts += 1
                host = value
            case 7 where HopByHop.equalsLower(name.utf8, "upgrade"):
                upgrades.append(value)
            case 10 where HopByHop.equalsLower(name.utf8, "connection"):
                ASCII.forEachListElement(value) { if HopByHop.equalsLower($0.utf8, "upgrade") { connectionUpgrade = true } }
            case 17 where HopByHop.equalsLower(name.utf8, "sec-websocket-key"):
                websocketKeys += ASCII.trimmed(Substring(value)).isEmpty ? 2 : 1
            case 21 where HopByHop.equalsLower(name.utf8, "sec-websocket-version"):
                websocketVersion = value
            case 6 where HopByHop.equalsLower(name.utf8, "expect"):
                if HopByHop.equalsLower(ASCII.trimmed(Substring(value)).utf8, "100-continue") {
                    expectContinue = true
                } else {
                    return .failure(.badRequest("Unsupported Expect header."))
                }
            default:
                break
            }
        }
        if headerBytes > maxHeaderBytes {
            return .failure(.headersTooLarge(limit: maxHeaderBytes))
        }
        if hosts > 1 { return .failure(.badRequest("Several Host headers.")) }
        if hosts == 0 && head.version.minor == 1 { return .failure(.badRequest("Missing Host header.")) }
        if let h = host, h.isEmpty || !h.utf8.allSatisfy(isHostByte) {
            return .failure(.badRequest("Invalid Host header."))
        }
        // A refusal is the 400 for a head the parser stopped after.
        let framing: HeaderRewriter.BodyFraming
        switch parsed {
        case .failure(let refusal): return .failure(.badRequest(refusal.detail))
        case .success(.none): framing = .none
        case .success(.length(let n)): framing = .contentLength(n)
        case .success(.chunked): framing = .chunked
        }
        guard let (path, query) = RequestTarget.split(head.uri) else {
            return .failure(.badRequest("The request target must be an origin-form path without dot segments."))
        }
        var websocket = false
        // `h2c` alone is ignored (the parser reads on after it; the header is hop-by-hop, not forwarded). After
        // any other upgrade the parser reads nothing more (the same rule decides): it is one WebSocket handshake
        // or it is refused.
        if upgrades.contains(where: HTTP1RequestParser.switches(to:)) {
            guard upgrades.count == 1, HopByHop.equalsLower(ASCII.trimmed(Substring(upgrades[0])).utf8, "websocket")
            else {
                return .failure(.badRequest("Upgrade to '\(upgrades.joined(separator: ", "))' is not supported."))
            }
            guard head.method == .GET, head.version.minor == 1, framing == .none, connectionUpgrade,
                websocketKeys == 1, websocketVersion.map({ ASCII.trimmed(Substring($0)) == "13" }) == true
            else {
                return .failure(.badRequest(
                    "Invalid WebSocket handshake (GET over HTTP/1.1 without a body, Connection: Upgrade, one "
                        + "Sec-WebSocket-Key and Sec-WebSocket-Version: 13)."))
            }
            websocket = true
        }
        return .success(Checked(
                framing: framing, host: host, path: path, query: query, expectContinue: expectContinue,
                websocket: websocket))
    }

    /// Host header bytes: the reg-name, IPv4, `[IPv6]` and `:port` alphabet.
    private static func isHostByte(_ b: UInt8) -> Bool {
        TenantID.isIDByte(b) || b == UInt8(ascii: ":") || b == UInt8(ascii: "[") || b == UInt8(ascii: "]")
            || b == UInt8(ascii: "~") || b == UInt8(ascii: "%")
    }
}
