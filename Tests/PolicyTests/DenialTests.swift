import Foundation
import Testing

@testable import Policy

@Suite struct DenialTests {
    @Test func problemDocumentHasTheRequiredMembers() throws {
        let d = Denial.planRequired(required: "pro", current: "free", "Needs \"pro\".\n")
        let json = try JSONSerialization.jsonObject(with: Data(d.document(requestID: "r-1").utf8)) as! [String: Any]
        #expect(json["type"] as? String == "https://gatehouse.dev/problems/plan_required")
        #expect(json["title"] as? String == "Plan required")
        #expect(json["status"] as? Int == 403)
        #expect(json["detail"] as? String == "Needs \"pro\".\n")
        #expect(json["code"] as? String == "plan_required")
        #expect(json["request_id"] as? String == "r-1")
        #expect(json["required"] as? String == "pro")
        #expect(json["current"] as? String == "free")
    }

    @Test func statusesAndHeaders() {
        #expect(Denial.routeNotFound().status == 404)
        #expect(Denial.badRequest("x").closeConnection)
        #expect(Denial.headersTooLarge(limit: 1).status == 431)
        #expect(Denial.unauthenticated("x", tokenSent: false).headers.first?.1 == "Bearer")
        #expect(Denial.unauthenticated("x", tokenSent: true).headers.first?.1 == "Bearer error=\"invalid_token\"")
        #expect(Denial.rateLimited(retryAfter: 0, "x").headers.first?.1 == "1")
        #expect(Denial.upstreamTimeout("x").status == 504)
        #expect(Denial.badGateway("x").code == "bad_gateway")
    }

    @Test func jsonEscaping() {
        #expect(JSONText.quote("a\u{0}b\u{1f}\"\\") == "\"a\\u0000b\\u001f\\\"\\\\\"")
    }
}
