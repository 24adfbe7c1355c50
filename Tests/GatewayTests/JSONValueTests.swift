import Foundation
import Policy
import Testing

/// The token JSON parser: what RFC 8259 allows and refuses, and a differential run against Foundation's parser
/// on mutated documents (a value we accept, Foundation accepts with the same meaning).
@Suite struct JSONValueTests {
    static func parse(_ text: String) -> JSONValue? { JSONValue.parse(Array(text.utf8)) }

    @Test func validDocuments() {
        #expect(Self.parse(#" {"a": [1, -2.5e3, true, false, null], "b": {"c": "d"}} "#)
            == .object(["a": .array([.number(1), .number(-2500), .bool(true), .bool(false), .null]), "b": .object(["c": .string("d")])]))
        #expect(Self.parse(#""\"\\\/\b\f\n\r\t\u00e9\ud83d\ude00""#) == .string("\"\\/\u{8}\u{c}\n\r\té😀"))
        #expect(Self.parse("0") == .number(0))
        #expect(Self.parse("[]") == .array([]))
        #expect(Self.parse("{}") == .object([:]))
        #expect(Self.parse(#""é""#) == .string("é"))
    }

    @Test func invalidDocuments() {
        let depth = JSONValue.maxDepth
        for text in [
            "", " ", "{", "}", "[1,]", "{\"a\":1,}", "01", "-", "1.", "1e", "1e+", ".5", "+1", "NaN", "Infinity", "1e999",
            "tru", "nul", "\"abc", "\"\u{1}\"", "\"\\x\"", "\"\\u12\"", "\"\\ud83d\"", "\"\\ude00\"", "\"\\ud83d\\u0041\"",
            "{\"a\":1,\"a\":2}", "{\"a\" 1}", "{a:1}", "[1 2]", "1 2", "{}x",
            String(repeating: "[", count: depth + 1) + String(repeating: "]", count: depth + 1),
        ] {
            #expect(Self.parse(text) == nil, "\(text.debugDescription)")
        }
        #expect(Self.parse(String(repeating: "[", count: depth) + String(repeating: "]", count: depth)) != nil)
        #expect(JSONValue.parse([0x22, 0xFF, 0x22]) == nil, "invalid UTF-8")
    }

    /// Foundation's value as a JSONValue (numbers as Double; NSNumber booleans as bools).
    static func bridge(_ any: Any) -> JSONValue? {
        switch any {
        case is NSNull: return .null
        case let s as String: return .string(s)
        case let n as NSNumber:
            let type = String(cString: n.objCType)
            return type == "c" || type == "B" ? .bool(n.boolValue) : .number(n.doubleValue)
        case let a as [Any]:
            let items = a.compactMap(bridge)
            return items.count == a.count ? .array(items) : nil
        case let o as [String: Any]:
            var members: [String: JSONValue] = [:]
            for (k, v) in o {
                guard let b = bridge(v) else { return nil }
                members[k] = b
            }
            return .object(members)
        default: return nil
        }
    }

    @Test func mutatedDocumentsAgreeWithFoundation() {
        var rng = SeededRandom(seed: 0x5EED_0017)
        let seeds = [
            #"{"iss":"https://idp.test/","sub":"user-1","exp":1800000000,"aud":["a","b"],"roles":"admin ops","n":{"t":"acme"}}"#,
            #"{"alg":"RS256","kid":"k-1","typ":"JWT"}"#,
            #"[1,2.5,-3e2,true,false,null,"\u00e9\n",{"x":[]}]"#,
        ].map { Array($0.utf8) }
        let alphabet = Array(#"{}[]",:.-+eE0123456789 tfnrul\"#.utf8) + [0x00, 0x1F, 0x7F, 0xC3, 0xA9, 0xFF]
        var accepted = 0
        for _ in 0..<4000 {
            var doc = seeds[Int.random(in: 0..<seeds.count, using: &rng)]
            for _ in 0..<Int.random(in: 1...3, using: &rng) {
                let at = Int.random(in: 0..<doc.count, using: &rng)
                switch Int.random(in: 0..<3, using: &rng) {
                case 0: doc[at] = alphabet.randomElement(using: &rng)!
                case 1: doc.remove(at: at)
                default: doc.insert(alphabet.randomElement(using: &rng)!, at: at)
                }
                if doc.isEmpty { break }
            }
            guard let ours = JSONValue.parse(doc) else { continue }
            accepted += 1
            let theirs = (try? JSONSerialization.jsonObject(with: Data(doc), options: [.fragmentsAllowed])).flatMap(Self.bridge)
            #expect(theirs == ours, "\(String(decoding: doc, as: UTF8.self).debugDescription)")
        }
        #expect(accepted > 100, "the mutations should leave some documents valid")
    }
}
