import Testing

@testable import Policy

@Suite struct RouterTests {
    func route(_ name: String, _ prefix: String, host: String? = nil, methods: [String]? = nil) -> RouteConfig {
        var r = RouteConfig(name: name, pathPrefix: prefix, upstream: "u")
        r.host = host
        r.methods = methods
        return r
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
            r.match(host: host, path: Substring(path), method: method).map { routes[$0].name }
        }
        #expect(name("x", "/api/users/7") == "users-get")
        #expect(name("x", "/api/users/7", "POST") == "users")
        #expect(name("x", "/api/usersX") == "api")
        #expect(name("x", "/other") == "root")
        #expect(name("Admin.Example.COM:8080", "/api/users") == "host")
        #expect(name("acme.tenants.example.com", "/api/x") == "wild")
        #expect(name("tenants.example.com", "/api/x") == "api")
        #expect(Router(routes: [route("a", "/a")]).match(host: nil, path: "/b", method: "GET") == nil)
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
            r.nearMisses(host: host, path: Substring(path), method: method, limit: limit).map { (routes[$0.index].name, $0.kind, $0.reason) }
        }
        // `echo` takes it; `root` matches too (outranked); the prefix matches for `writes` and the host routes (one
        // failure before two, then the router's own order); `admin` shares the `/api` segment; `hosted-other` names
        // this very host; `other` shares nothing and is left out, as is the chosen route.
        #expect(r.match(host: "api.example.com:8080", path: "/api/echo/x", method: "GET").map { routes[$0].name } == "echo")
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
        #expect(lonely.match(host: nil, path: "/api/users/7", method: "PATCH") == nil)
        #expect(lonely.nearMisses(host: nil, path: "/api/users/7", method: "PATCH").map(\.reason) == ["method PATCH is not among GET"])
        #expect(lonely.nearMisses(host: nil, path: "/api/usersX", method: "GET").map(\.reason) == [
            "path_prefix /api/users does not match /api/usersX"
        ])
        #expect(lonely.nearMisses(host: nil, path: "/elsewhere", method: "GET").isEmpty)
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
