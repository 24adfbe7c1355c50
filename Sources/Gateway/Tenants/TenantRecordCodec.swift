import Foundation
import Policy

/// Tenant records as the JSON kept in the store (one field per tenant in the `<prefix>:tenants` hash).
enum TenantRecordCodec {
    static func encode(_ r: TenantRecord) -> String {
        var object: [String: Any] = ["plan": r.plan, "status": r.status, "billing_anchor": r.billingAnchor]
        if let t = r.trialEnds { object["trial_ends"] = t }
        if let p = r.pastDueSinceAt { object["past_due_since_epoch"] = p }
        let overrides = OverridesJSON.encode(r)
        if !overrides.isEmpty { object["overrides"] = overrides }
        object["api_keys"] = r.apiKeys.map(keyObject)
        if !r.revokedKeys.isEmpty { object["revoked_keys"] = r.revokedKeys.sorted() }
        if let at = r.billingEventAt { object["billing_event_at"] = at }
        if r.deleted { object["deleted"] = true }
        let data = (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])) ?? Data("{}".utf8)
        return String(decoding: data, as: UTF8.self)
    }

    /// An API key as stored: `{id, sha256}`, with `scopes` and `roles` when it has any (a key stored before keys
    /// had them reads back with none).
    static func keyObject(_ key: TenantRecord.APIKey) -> [String: Any] {
        var object: [String: Any] = ["id": key.id, "sha256": key.sha256]
        if !key.scopes.isEmpty { object["scopes"] = key.scopes }
        if !key.roles.isEmpty { object["roles"] = key.roles }
        return object
    }

    /// One API key's JSON (the store's edit script adds it as it is).
    static func encode(_ key: TenantRecord.APIKey) -> String {
        let data = (try? JSONSerialization.data(withJSONObject: keyObject(key), options: [.sortedKeys])) ?? Data("{}".utf8)
        return String(decoding: data, as: UTF8.self)
    }

    /// A billing change for the store's edit script: absent members are left out (cjson would read a JSON null
    /// as a value, not as nil).
    static func encode(_ change: BillingWebhook.Change, now: Double) -> String {
        var object: [String: Any] = ["now": now]
        if let plan = change.plan { object["plan"] = plan }
        if let status = change.status { object["status"] = status }
        if let end = change.trialEnds { object["trial_ends"] = CivilDate.rfc3339(epochSeconds: end) }
        if let created = change.created { object["created"] = created }
        let data = (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])) ?? Data("{}".utf8)
        return String(decoding: data, as: UTF8.self)
    }

    static func decode(_ bytes: [UInt8]) -> TenantRecord? {
        guard let o = (try? JSONSerialization.jsonObject(with: Data(bytes))) as? [String: Any], let plan = o["plan"] as? String
        else { return nil }
        var r = TenantRecord(plan: plan)
        r.status = o["status"] as? String ?? "active"
        if let t = o["trial_ends"] as? String {
            r.trialEnds = t
            r.trialEndsAt = Timestamp.parse(t)
        }
        r.pastDueSinceAt = (o["past_due_since_epoch"] as? NSNumber)?.doubleValue
        r.billingAnchor = o["billing_anchor"] as? Int ?? 1
        if let overrides = o["overrides"] { _ = OverridesJSON.decode(overrides, into: &r) }
        r.apiKeys = (o["api_keys"] as? [[String: Any]] ?? []).compactMap { k in
            guard let id = k["id"] as? String, let sha = k["sha256"] as? String else { return nil }
            // Lua's cjson writes an empty list as `{}`; a name that is not valid (a record written by hand) grants
            // nothing, and no key carries more than it could have been given.
            let scopes = (k["scopes"] as? [Any] ?? []).compactMap { $0 as? String }.filter(Scopes.isScope)
            let roles = (k["roles"] as? [Any] ?? []).compactMap { $0 as? String }.filter(TenantRecord.isRoleName)
            return TenantRecord.APIKey(
                id: id, sha256: sha, scopes: Array(scopes.prefix(Scopes.maxCount)), roles: Array(roles.prefix(TenantRecord.maxRoles)))
        }
        // Lua's cjson writes an empty list as `{}`: anything but a list of strings is no revocation.
        r.revokedKeys = Set(o["revoked_keys"] as? [String] ?? [])
        r.billingEventAt = (o["billing_event_at"] as? NSNumber)?.doubleValue
        r.deleted = o["deleted"] as? Bool ?? false
        return r
    }
}
