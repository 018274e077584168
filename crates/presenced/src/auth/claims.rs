//! Turning the claims of a token whose signature already checked out into a `Principal`: time
//! window, audience, issuer, then identity and permissions.
//!
//! Claims are read from a JSON map rather than a derived struct so each failure can be reported as
//! "missing" or "invalid" for the exact claim, and so a claim of an unexpected type is an error
//! instead of being silently read as absent.

use serde_json::{Map, Value};

use super::error::AuthError;
use super::ids::normalize_id;
use super::principal::Principal;

/// What the claims are checked against; borrowed from the verifier's configuration.
pub(crate) struct ClaimRules<'a> {
    pub audiences: &'a [String],
    pub issuers: &'a [String],
    pub leeway_seconds: i64,
    pub now_unix: i64,
    /// Longest `exp` minus `iat` (or `nbf`, or now) accepted: a leaked long-lived token is
    /// refused even before it expires.
    pub max_lifetime_seconds: i64,
}

pub(crate) fn principal_from_claims(
    claims: &Map<String, Value>,
    rules: &ClaimRules<'_>,
) -> Result<Principal, AuthError> {
    check_time_window(claims, rules)?;
    check_issuer(claims, rules.issuers)?;
    check_audience(claims, rules.audiences)?;

    let tenant = id_claim(claims, "tid")?.ok_or(AuthError::MissingClaim("tid"))?;
    let scopes = scopes(claims)?;
    let roles = roles(claims)?;
    // Only a delegated token speaks for a user. An app-only token's `oid` is the app's service
    // principal; taking it as a user would let the app act as "/me".
    let user = if scopes.is_empty() {
        None
    } else {
        Some(id_claim(claims, "oid")?.ok_or(AuthError::DelegatedWithoutUser)?)
    };
    let app = match id_claim(claims, "appid")? {
        Some(app) => Some(app),
        None => id_claim(claims, "azp")?,
    };
    let (exp, _) = validity(claims)?;
    Ok(Principal {
        tenant,
        user,
        app,
        scopes,
        roles,
        expires_at: Some(exp),
    })
}

/// `exp` and `nbf` of claims that already passed `principal_from_claims`, for the verified-token
/// cache, which must re-check the time window on every hit.
pub(crate) fn validity(claims: &Map<String, Value>) -> Result<(i64, Option<i64>), AuthError> {
    let exp = numeric_date(claims, "exp")?.ok_or(AuthError::MissingClaim("exp"))?;
    Ok((exp, numeric_date(claims, "nbf")?))
}

/// The time-window rule, shared by fresh verification and cache hits.
pub(crate) fn within_window(exp: i64, nbf: Option<i64>, rules: &ClaimRules<'_>) -> Result<(), AuthError> {
    // RFC 7519 §4.1.4: the token must not be accepted on or after `exp` (plus the skew allowance).
    if rules.now_unix >= exp.saturating_add(rules.leeway_seconds) {
        return Err(AuthError::Expired);
    }
    if nbf.is_some_and(|nbf| rules.now_unix.saturating_add(rules.leeway_seconds) < nbf) {
        return Err(AuthError::NotYetValid);
    }
    Ok(())
}

fn check_time_window(claims: &Map<String, Value>, rules: &ClaimRules<'_>) -> Result<(), AuthError> {
    // A token without `exp` would be valid forever once leaked; Entra ID always sets it.
    let (exp, nbf) = validity(claims)?;
    within_window(exp, nbf, rules)?;
    let start = numeric_date(claims, "iat")?.or(nbf).unwrap_or(rules.now_unix);
    if exp.saturating_sub(start) > rules.max_lifetime_seconds {
        return Err(AuthError::LifetimeTooLong(rules.max_lifetime_seconds));
    }
    Ok(())
}

fn check_issuer(claims: &Map<String, Value>, issuers: &[String]) -> Result<(), AuthError> {
    match claims.get("iss") {
        None => Err(AuthError::MissingClaim("iss")),
        Some(Value::String(iss)) if issuers.iter().any(|ok| ok == iss) => Ok(()),
        Some(Value::String(_)) => Err(AuthError::WrongIssuer),
        Some(_) => Err(AuthError::InvalidClaim("iss")),
    }
}

fn check_audience(claims: &Map<String, Value>, audiences: &[String]) -> Result<(), AuthError> {
    // RFC 7519 §4.1.3: `aud` is a string or an array of strings; one match is enough.
    let accepted = |aud: &str| audiences.iter().any(|ok| ok == aud);
    match claims.get("aud") {
        None => Err(AuthError::MissingClaim("aud")),
        Some(Value::String(aud)) if accepted(aud) => Ok(()),
        Some(Value::String(_)) => Err(AuthError::WrongAudience),
        Some(Value::Array(items)) => {
            let mut found = false;
            for item in items {
                match item {
                    Value::String(aud) => found |= accepted(aud),
                    _ => return Err(AuthError::InvalidClaim("aud")),
                }
            }
            if found {
                Ok(())
            } else {
                Err(AuthError::WrongAudience)
            }
        }
        Some(_) => Err(AuthError::InvalidClaim("aud")),
    }
}

/// A NumericDate (RFC 7519 §2): seconds since the epoch, possibly fractional. Fractions are
/// truncated towards the past, which only ever shortens validity by less than a second.
fn numeric_date(claims: &Map<String, Value>, name: &'static str) -> Result<Option<i64>, AuthError> {
    let Some(value) = claims.get(name) else {
        return Ok(None);
    };
    let Value::Number(n) = value else {
        return Err(AuthError::InvalidClaim(name));
    };
    if let Some(i) = n.as_i64() {
        return Ok(Some(i));
    }
    if n.as_u64().is_some() {
        // Beyond i64::MAX seconds: effectively "never", and saturating keeps the arithmetic sound.
        return Ok(Some(i64::MAX));
    }
    match n.as_f64() {
        // `as` saturates for out-of-range floats, which is the intended clamp.
        Some(f) if f.is_finite() => Ok(Some(f.floor() as i64)),
        _ => Err(AuthError::InvalidClaim(name)),
    }
}

/// An identifier claim: absent is `None`; present but not a valid identifier is an error, never
/// silently dropped, so a typo'd tenant cannot fall through to some default.
fn id_claim(claims: &Map<String, Value>, name: &'static str) -> Result<Option<String>, AuthError> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::String(raw)) => normalize_id(raw).map(Some).ok_or(AuthError::InvalidClaim(name)),
        Some(_) => Err(AuthError::InvalidClaim(name)),
    }
}

fn scopes(claims: &Map<String, Value>) -> Result<Vec<String>, AuthError> {
    match claims.get("scp") {
        None => Ok(Vec::new()),
        Some(Value::String(scp)) => Ok(scp.split_whitespace().map(str::to_owned).collect()),
        Some(_) => Err(AuthError::InvalidClaim("scp")),
    }
}

fn roles(claims: &Map<String, Value>) -> Result<Vec<String>, AuthError> {
    match claims.get("roles") {
        None => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| match item {
                Value::String(role) => Ok(role.clone()),
                _ => Err(AuthError::InvalidClaim("roles")),
            })
            .collect(),
        Some(_) => Err(AuthError::InvalidClaim("roles")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NOW: i64 = 1_700_000_000;

    fn rules<'a>(aud: &'a [String], iss: &'a [String]) -> ClaimRules<'a> {
        ClaimRules {
            audiences: aud,
            issuers: iss,
            leeway_seconds: 60,
            max_lifetime_seconds: 86_400,
            now_unix: NOW,
        }
    }

    fn check(claims: Value) -> Result<Principal, AuthError> {
        let aud = vec!["api://presence".to_owned(), "https://graph.microsoft.com".to_owned()];
        let iss = vec!["https://issuer".to_owned()];
        let Value::Object(map) = claims else {
            panic!("claims must be an object")
        };
        principal_from_claims(&map, &rules(&aud, &iss))
    }

    fn base() -> Value {
        json!({
            "iss": "https://issuer",
            "aud": "api://presence",
            "exp": NOW + 3600,
            "tid": "tenant-1",
            "oid": "user-1",
            "scp": "Presence.Read",
        })
    }

    fn with(mut v: Value, key: &str, value: Value) -> Value {
        v[key] = value;
        v
    }

    fn without(mut v: Value, key: &str) -> Value {
        v.as_object_mut().unwrap().remove(key);
        v
    }

    #[test]
    fn delegated_claims_become_a_user_principal() {
        let p = check(with(base(), "scp", json!("Presence.Read  Presence.ReadWrite "))).unwrap();
        assert_eq!(p.tenant, "tenant-1");
        assert_eq!(p.user.as_deref(), Some("user-1"));
        assert_eq!(p.scopes, ["Presence.Read", "Presence.ReadWrite"]);
        assert!(p.is_delegated());
    }

    #[test]
    fn application_claims_ignore_oid() {
        let v = with(without(base(), "scp"), "roles", json!(["Presence.Read.All"]));
        let p = check(with(v, "oid", json!("service-principal"))).unwrap();
        assert_eq!(p.user, None);
        assert_eq!(p.roles, ["Presence.Read.All"]);
        assert!(!p.is_delegated());
        // An empty `scp` is no scope at all: still an application token, no `oid` needed.
        let p = check(without(with(base(), "scp", json!("  ")), "oid")).unwrap();
        assert!(!p.is_delegated());
    }

    #[test]
    fn app_id_prefers_appid_over_azp() {
        let p = check(with(with(base(), "appid", json!("A")), "azp", json!("B"))).unwrap();
        assert_eq!(p.app.as_deref(), Some("A"));
        let p = check(with(base(), "azp", json!("B"))).unwrap();
        assert_eq!(p.app.as_deref(), Some("B"));
        assert_eq!(check(base()).unwrap().app, None);
        assert_eq!(
            check(with(base(), "appid", json!("a b"))),
            Err(AuthError::InvalidClaim("appid"))
        );
    }

    #[test]
    fn guids_are_lower_cased() {
        let v = with(base(), "tid", json!("72F988BF-86F1-41AF-91AB-2D7CD011DB47"));
        let p = check(with(v, "oid", json!("FA8BF3DC-ECA7-46B7-BAD1-DB199B62AFC3"))).unwrap();
        assert_eq!(p.tenant, "72f988bf-86f1-41af-91ab-2d7cd011db47");
        assert_eq!(p.user.as_deref(), Some("fa8bf3dc-eca7-46b7-bad1-db199b62afc3"));
    }

    #[test]
    fn time_window_with_leeway() {
        // `exp` is exclusive, and the 60 s leeway extends it.
        assert!(check(with(base(), "exp", json!(NOW - 59))).is_ok());
        assert_eq!(check(with(base(), "exp", json!(NOW - 60))), Err(AuthError::Expired));
        assert_eq!(check(with(base(), "exp", json!(NOW - 86_400))), Err(AuthError::Expired));
        assert!(check(with(base(), "exp", json!(NOW as f64 + 0.5))).is_ok());
        // A far `exp` saturates instead of overflowing, and is then a lifetime over the maximum.
        assert_eq!(
            check(with(base(), "exp", json!(u64::MAX))),
            Err(AuthError::LifetimeTooLong(86_400))
        );
        assert_eq!(check(with(base(), "exp", json!(i64::MIN))), Err(AuthError::Expired));
        assert!(check(with(base(), "nbf", json!(NOW + 60))).is_ok());
        assert_eq!(check(with(base(), "nbf", json!(NOW + 61))), Err(AuthError::NotYetValid));
        assert!(check(with(base(), "nbf", json!(NOW - 10))).is_ok());
    }

    #[test]
    fn missing_or_mistyped_claims() {
        assert_eq!(check(without(base(), "exp")), Err(AuthError::MissingClaim("exp")));
        assert_eq!(
            check(with(base(), "exp", json!("soon"))),
            Err(AuthError::InvalidClaim("exp"))
        );
        assert_eq!(
            check(with(base(), "nbf", json!(null))),
            Err(AuthError::InvalidClaim("nbf"))
        );
        assert_eq!(check(without(base(), "iss")), Err(AuthError::MissingClaim("iss")));
        assert_eq!(
            check(with(base(), "iss", json!(["https://issuer"]))),
            Err(AuthError::InvalidClaim("iss"))
        );
        assert_eq!(check(without(base(), "aud")), Err(AuthError::MissingClaim("aud")));
        assert_eq!(
            check(with(base(), "aud", json!(7))),
            Err(AuthError::InvalidClaim("aud"))
        );
        assert_eq!(
            check(with(base(), "aud", json!(["api://presence", 7]))),
            Err(AuthError::InvalidClaim("aud"))
        );
        assert_eq!(check(without(base(), "tid")), Err(AuthError::MissingClaim("tid")));
        assert_eq!(
            check(with(base(), "tid", json!(42))),
            Err(AuthError::InvalidClaim("tid"))
        );
        assert_eq!(
            check(with(base(), "tid", json!("a/b"))),
            Err(AuthError::InvalidClaim("tid"))
        );
        assert_eq!(
            check(with(base(), "tid", json!(""))),
            Err(AuthError::InvalidClaim("tid"))
        );
        assert_eq!(
            check(with(base(), "tid", json!("t".repeat(129)))),
            Err(AuthError::InvalidClaim("tid"))
        );
        assert_eq!(check(without(base(), "oid")), Err(AuthError::DelegatedWithoutUser));
        assert_eq!(
            check(with(base(), "oid", json!("x y"))),
            Err(AuthError::InvalidClaim("oid"))
        );
        assert_eq!(
            check(with(base(), "scp", json!(["Presence.Read"]))),
            Err(AuthError::InvalidClaim("scp"))
        );
        assert_eq!(
            check(with(base(), "roles", json!("Presence.Read.All"))),
            Err(AuthError::InvalidClaim("roles"))
        );
        assert_eq!(
            check(with(base(), "roles", json!([1]))),
            Err(AuthError::InvalidClaim("roles"))
        );
    }

    #[test]
    fn audience_and_issuer_must_match_exactly() {
        assert!(check(with(base(), "aud", json!("https://graph.microsoft.com"))).is_ok());
        assert!(check(with(base(), "aud", json!(["other", "api://presence"]))).is_ok());
        assert_eq!(
            check(with(base(), "aud", json!("api://presence/"))),
            Err(AuthError::WrongAudience)
        );
        assert_eq!(
            check(with(base(), "aud", json!("API://PRESENCE"))),
            Err(AuthError::WrongAudience)
        );
        assert_eq!(check(with(base(), "aud", json!([]))), Err(AuthError::WrongAudience));
        assert_eq!(
            check(with(base(), "aud", json!(["other"]))),
            Err(AuthError::WrongAudience)
        );
        assert_eq!(
            check(with(base(), "iss", json!("https://issuer/"))),
            Err(AuthError::WrongIssuer)
        );
    }
}
