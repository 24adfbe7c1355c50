import Testing

@testable import Policy

/// The `audit` keys of issue 12: `hmac_key_env` and `max_denials_per_second`.
@Suite struct AuditConfigTests {
    let sinks = """

        audit:
          sinks:
            - file: {path: var/audit.jsonl}

        """

    @Test func defaultsAreUnkeyedAnd500DenialsASecond() throws {
        let audit = try #require(try load(["gw.yaml": minimal + sinks]).get().audit)
        #expect(audit.hmacKeyEnv == nil && audit.maxDenialsPerSecond == 500)
        #expect(try audit.hmacKey(environment: [:]) == nil)
    }

    @Test func theKeyComesFromTheNamedVariableAndAMissingOneIsAnError() throws {
        let yaml = minimal + sinks + "  hmac_key_env: GH_AUDIT_KEY\n  max_denials_per_second: 5\n"
        let audit = try #require(try load(["gw.yaml": yaml]).get().audit)
        #expect(audit.maxDenialsPerSecond == 5)
        #expect(try audit.hmacKey(environment: ["GH_AUDIT_KEY": "k3y"]) == Array("k3y".utf8))
        for environment in [[:], ["GH_AUDIT_KEY": ""]] {
            #expect {
                try audit.hmacKey(environment: environment)
            } throws: { error in
                (error as? ConfigError)?.problems.map(\.description) == [
                    "gw.yaml:11:17: audit.hmac_key_env: environment variable GH_AUDIT_KEY is not set or empty"
                ]
            }
        }
    }

    @Test func badValuesAreReportedWhereTheyAre() {
        let yaml = minimal + sinks + "  hmac_key_env: \"\"\n  max_denials_per_second: 0\n"
        #expect(
            problems(["gw.yaml": yaml]) == [
                "gw.yaml:11:17: audit.hmac_key_env must not be empty",
                "gw.yaml:12:27: audit.max_denials_per_second must be between 1 and 1000000",
            ])
    }
}
