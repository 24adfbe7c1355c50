/// `match.headers`: API versioning (or any other split) by request header.
extension RouteConfig {
    /// One `match.headers` entry: the request must carry the header `name` (any case) exactly once, with
    /// exactly `value`.
    ///
    /// The value is compared byte for byte with the request's, which the parser has already trimmed of the
    /// whitespace around it; a list such as `1, 2` is one value, not two. A header sent twice matches no
    /// route that names it: ambiguous input never selects a route.
    public struct HeaderMatch: Sendable, Hashable {
        /// As configured (messages show it); matched without regard to case.
        public var name: String
        public var value: String

        public init(name: String, value: String) {
            self.name = name
            self.value = value
        }
    }

    /// The route's `match.headers` as a set with lower-cased names: two routes with equal sets cannot be told
    /// apart by their headers.
    var headerSet: Set<HeaderMatch> {
        Set(headers.map { HeaderMatch(name: $0.name.lowercased(), value: $0.value) })
    }
}
