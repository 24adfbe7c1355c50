import Testing

@testable import Policy

@Suite struct RouterTests {
    func route(
        _ name: String, _ prefix: String, host: String? = nil, methods: [String]? = nil, headers: [(String, String)] = []
    ) -> RouteConfig {
        var r = RouteConfig(name: name, pathPrefix: prefix, upstream: "u")
        r.host = host
        r.methods = methods
        r.headers = headers.map { RouteConfig.HeaderMatch(name: $0.0, value: $0.1) }
        return r
    }

    /// A request without headers.
    func noHeaders(_ name: String) -> [String] { [] }

    /// A request's header lookup over `pairs`, names any case, as NIO's `HTTPHeaders` answers it.
    func sent(_ pairs: [(String, String)]) -> (String) -> [String] {
        { name in pairs.filter { $0.0.lowercased() == name.lowercased() }.map(\.1) }
    }

    @Test func segmentAwarePrefix() {
        #expect(Router.segmentPrefix("/api/users", of: "/api/users"))
        #expect(Router.segmentPrefix("/api/users", of: "/api/users/7"))
        #expect(!Router.segmentPrefix("/api/users", of: "/api/usersX"))
        #expect(!Router.segmentPrefix("/api/users", of: "/api/user"))
        #expect(Router.segmentPrefix("/", of: "/anything"))
        #expect(Router.segmentPrefix("/api/", of: "/api/x"))
    }

    @Test func mostSpecificWins() {
        let routes = [
            route("root", "/"), route("api", "/api"), route("users", "/api/users"),
            route("users-get", "/api/users", methods: ["GET"]), route("host", "/api", host: "admin.example.com"),
            route("wild", "/api", host: "*.tenants.example.com"),
        ]
        let r = Router(routes: routes)
        func name(_ host: String?, _ path: String, _ method: String = "GET") -> String? {
            r.match(host: host, path: Substring(path), method: method, headers: noHeaders).map { routes[$0].name }
        }
        #expect(name("x", "/api/users/7") == "users-get")
        #expect(name("x", "/api/users/7", "POST") == "users")
        #expect(name("x", "/api/usersX") == "api")
        #expect(name("x", "/other") == "root")
        #expect(name("Admin.Example.COM:8080", "/api/users") == "host")
        #expect(name("acme.tenants.example.com", "/api/x") == "wild")
        #expect(name("tenants.example.com", "/api/x") == "api")
        #expect(Router(routes: [route("a", "/a")]).match(host: nil, path: "/b", method: "GET", headers: noHeaders) == nil)
    }

    @Test func nearMissesSayWhyARouteDidNotTakeTheRequest() {
        let routes = [
            route("echo", "/api/echo"), route("admin", "/api/admin"), route("writes", "/api/echo", methods: ["POST", "PUT"]),
            route("eu-writes", "/api/echo", host: "eu.example.com", methods: ["POST"]),
            route("tenant-host", "/api/echo", host: "eu.example.com"), route("wild", "/api/echo", host: "*.tenants.example.com"),
            route("root", "/"), route("other", "/other"), route("hosted-other", "/status", host: "api.example.com"),
        ]
        let r = Router(routes: routes)
        func misses(_ host: String?, _ path: String, _ method: String = "GET", limit: Int = 10) -> [(String, Router.NearMiss.Kind, String)] {
            r.nearMisses(host: host, path: Substring(path), method: method, headers: noHeaders, limit: limit).map { (routes[$0.index].name, $0.kind, $0.reason) }
        }
        // `echo` takes it; `root` matches too (outranked); the prefix matches for `writes` and the host routes (one
        // failure before two, then the router's own order); `admin` shares the `/api` segment; `hosted-other` names
        // this very host; `other` shares nothing and is left out, as is the chosen route.
        #expect(r.match(host: "api.example.com:8080", path: "/api/echo/x", method: "GET", headers: noHeaders).map { routes[$0].name } == "echo")
        let m = misses("api.example.com:8080", "/api/echo/x")
        #expect(m.map(\.0) == ["root", "tenant-host", "wild", "writes", "eu-writes", "hosted-other", "admin"])
        #expect(m[0] == ("root", .outranked, "matches too, but a more specific route was chosen"))
        #expect(m[1] == ("tenant-host", .hostOrMethod, "host 'api.example.com' is not eu.example.com"))
        #expect(m[2].2 == "host 'api.example.com' is not under *.tenants.example.com")
        #expect(m[3] == ("writes", .hostOrMethod, "method GET is not among POST, PUT"))
        #expect(m[4].2 == "host 'api.example.com' is not eu.example.com; method GET is not among POST")
        #expect(m[5] == ("hosted-other", .pathPrefix, "path_prefix /status does not match /api/echo/x"))
        #expect(m[6] == ("admin", .pathPrefix, "path_prefix /api/admin does not match /api/echo/x"))
        // The limit cuts the tail; without a Host header, host routes say so.
        #expect(misses(nil, "/api/echo", "DELETE", limit: 2).map(\.0) == ["root", "tenant-host"])
        #expect(misses(nil, "/api/echo", "DELETE").first { $0.0 == "tenant-host" }?.2 == "host (none) is not eu.example.com")
        // No route matches: the near misses are all there is to show.
        let lonely = Router(routes: [route("users", "/api/users", methods: ["GET"]), route("billing", "/billing")])
        #expect(lonely.match(host: nil, path: "/api/users/7", method: "PATCH", headers: noHeaders) == nil)
        #expect(lonely.nearMisses(host: nil, path: "/api/users/7", method: "PATCH", headers: noHeaders).map(\.reason) == ["method PATCH is not among GET"])
        #expect(lonely.nearMisses(host: nil, path: "/api/usersX", method: "GET", headers: noHeaders).map(\.reason) == [
            "path_prefix /api/users does not match /api/usersX"
        ])
        #expect(lonely.nearMisses(host: nil, path: "/elsewhere", method: "GET", headers: noHeaders).isEmpty)
    }

    @Test func headerMatchesSplitOnePrefixByVersion() {
        let routes = [
            route("orders", "/api/orders"),
            route("orders-v2", "/api/orders", headers: [("Accept-Version", "2")]),
            route("orders-v3", "/api/orders", headers: [("Accept-Version", "3")]),
            route("orders-v2-beta", "/api/orders", headers: [("accept-version", "2"), ("X-Beta", "yes")]),
            route("orders-get", "/api/orders", methods: ["GET"]),
        ]
        let r = Router(routes: routes)
        func name(_ headers: [(String, String)], _ method: String = "GET", path: String = "/api/orders/7") -> String? {
            r.match(host: "gw", path: Substring(path), method: method, headers: sent(headers)).map { routes[$0].name }
        }
        // No version, or one no route names: the header-less routes (methods listed first).
        #expect(name([]) == "orders-get")
        #expect(name([], "POST") == "orders")
        #expect(name([("Accept-Version", "1")], "POST") == "orders")
        // A header match outranks a listed method; names are any case, values exact.
        #expect(name([("Accept-Version", "2")]) == "orders-v2")
        #expect(name([("ACCEPT-VERSION", "3")], "DELETE") == "orders-v3")
        #expect(name([("accept-version", "2")], path: "/api/orders") == "orders-v2")
        #expect(name([("Accept-Version", "V2")]) == "orders-get")
        #expect(name([("Accept-Version", "2 ")]) == "orders-get")
        // More header matches win; a header that is no route's is ignored.
        #expect(name([("X-Beta", "yes"), ("Accept-Version", "2"), ("X-Other", "1")]) == "orders-v2-beta")
        #expect(name([("X-Beta", "yes")]) == "orders-get")
        // Sent twice (even twice the same), or as one list: ambiguous, so no versioned route takes it.
        #expect(name([("Accept-Version", "2"), ("Accept-Version", "2")]) == "orders-get")
        #expect(name([("Accept-Version", "2"), ("accept-version", "3")], "POST") == "orders")
        #expect(name([("Accept-Version", "2, 3")], "POST") == "orders")
        #expect(name([("Accept-Version", "2"), ("X-Beta", "yes"), ("X-Beta", "yes")]) == "orders-v2")
        // Outside the prefix, headers change nothing.
        #expect(name([("Accept-Version", "2")], path: "/api/ordersX") == nil)
    }

    @Test func headerMatchesRankAfterHostAndPrefix() {
        let routes = [
            route("v2", "/api", headers: [("Accept-Version", "2")]),
            route("hosted", "/api", host: "eu.example.com"),
            route("longer", "/api/orders"),
            route("versioned-only", "/v2-only", headers: [("Accept-Version", "2")]),
        ]
        let r = Router(routes: routes)
        func name(_ host: String, _ path: String, _ headers: [(String, String)]) -> String? {
            r.match(host: host, path: Substring(path), method: "GET", headers: sent(headers)).map { routes[$0].name }
        }
        let v2 = [("Accept-Version", "2")]
        #expect(name("eu.example.com", "/api/x", v2) == "hosted")
        #expect(name("us.example.com", "/api/x", v2) == "v2")
        #expect(name("us.example.com", "/api/orders/1", v2) == "longer")
        // A route that needs a header, with no fallback beside it: without the header nothing matches.
        #expect(name("us.example.com", "/v2-only", v2) == "versioned-only")
        #expect(name("us.example.com", "/v2-only", []) == nil)
    }

    @Test func headersAreLookedAtOnlyForRoutesThatNameThem() {
        var asked: [String] = []
        func match(_ r: Router, _ host: String?, _ path: String) -> Int? {
            r.match(host: host, path: Substring(path), method: "GET") { name in
                asked.append(name)
                return []
            }
        }
        let plain = Router(routes: [route("a", "/a"), route("b", "/b", host: "x.example.com", methods: ["GET"])])
        let hosted = match(plain, "x.example.com", "/b")
        let none = match(plain, nil, "/zzz")
        #expect(hosted == 1)
        #expect(none == nil)
        #expect(asked.isEmpty)
        let mixed = Router(routes: [route("a", "/a"), route("v", "/v", headers: [("Accept-Version", "2"), ("X-Beta", "1")])])
        let other = match(mixed, nil, "/a/1")
        #expect(other == 0)
        #expect(asked.isEmpty)
        // The first header that fails ends the route's check.
        let versioned = match(mixed, nil, "/v")
        #expect(versioned == nil)
        #expect(asked == ["Accept-Version"])
    }

    @Test func nearMissesNameTheHeaderThatDidNotMatch() {
        let routes = [
            route("orders", "/api/orders", methods: ["GET"]),
            route("orders-v2", "/api/orders", headers: [("Accept-Version", "2")]),
            route("beta", "/api/orders", methods: ["POST"], headers: [("X-Beta", "yes"), ("Accept-Version", "2")]),
        ]
        let r = Router(routes: routes)
        func misses(_ method: String, _ headers: [(String, String)]) -> [(String, Router.NearMiss.Kind, String)] {
            r.nearMisses(host: nil, path: "/api/orders", method: method, headers: sent(headers), limit: 10)
                .map { (routes[$0.index].name, $0.kind, $0.reason) }
        }
        let one = misses("GET", [("accept-version", "1")])
        #expect(one.count == 2)
        #expect(one[0] == ("orders-v2", .hostOrMethod, "header Accept-Version is \"1\", not \"2\""))
        #expect(
            one[1] == (
                "beta", .hostOrMethod,
                "method GET is not among POST; header X-Beta is missing; header Accept-Version is \"1\", not \"2\""
            ))
        #expect(misses("GET", []).first?.2 == "header Accept-Version is missing")
        #expect(misses("GET", [("Accept-Version", "2"), ("Accept-Version", "2")]).first?.2 == "header Accept-Version is sent 2 times, not once")
        // The versioned route taken, the header-less one is outranked.
        let two = misses("GET", [("Accept-Version", "2")])
        #expect(two.map(\.0) == ["orders", "beta"])
        #expect(two[0] == ("orders", .outranked, "matches too, but a more specific route was chosen"))
        // A long value is clipped.
        let long = String(repeating: "9", count: 100)
        #expect(misses("GET", [("Accept-Version", long)]).first?.2 == "header Accept-Version is \"\(long.prefix(64))…\", not \"2\"")
    }

    @Test func stripPrefix() {
        #expect(Router.strip(prefix: "/api", from: "/api/users/7") == "/users/7")
        #expect(Router.strip(prefix: "/api", from: "/api") == "/")
        #expect(Router.strip(prefix: "/api/", from: "/api/users") == "/users")
        #expect(Router.strip(prefix: "/api", from: "/apix") == "/apix")
    }

    @Test func requestTargets() {
        #expect(RequestTarget.split("/a/b?x=1")! == ("/a/b", "?x=1"))
        #expect(RequestTarget.split("/a/b")! == ("/a/b", ""))
        for bad in ["a/b", "http://x/a", "*", "/a/../b", "/a/./b", "/a/%2e%2E/b", "/a/%2E", "/..", "/a%2fb", "/a#frag"] {
            #expect(RequestTarget.split(bad) == nil, "\(bad)")
        }
        #expect(RequestTarget.split("/a/..b/c.d") != nil)
        #expect(RequestTarget.isValidRequestID("abc-123_x.y"))
        #expect(!RequestTarget.isValidRequestID(""))
        #expect(!RequestTarget.isValidRequestID("a b"))
        #expect(!RequestTarget.isValidRequestID(String(repeating: "a", count: 129)))
        #expect(RequestTarget.isValidRequestID(String(repeating: "a", count: 128)))
    }
}
