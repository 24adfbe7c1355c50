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
