//! Minting HS256 tokens with the server's own secret, shaped like Entra ID access tokens so the
//! same verifier path and permission checks apply to them as to real Graph tokens.
//!
//! Requests are validated so that a minted token always verifies into what the request describes:
//! a token that the verifier would refuse, or read differently, is an error here instead.

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;

use super::error::AuthSetupError;
use super::ids::normalize_id;
use super::MIN_HS256_SECRET_BYTES;

/// What to put into a minted token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MintRequest {
    /// `tid`.
    pub tenant: String,
    /// `oid`; required with `scopes` (a delegated token), forbidden without.
    pub user: Option<String>,
    /// Written as both `appid` and `azp`, as Entra ID v1 and v2 tokens name it differently.
    pub app: Option<String>,
    /// Delegated permissions (`scp`, space-joined).
    pub scopes: Vec<String>,
    /// Application permissions (`roles`).
    pub roles: Vec<String>,
    /// Lifetime; `exp = now_unix + ttl_seconds`.
    pub ttl_seconds: i64,
    pub issuer: String,
    pub audience: String,
    /// Issue time (`iat` and `nbf`), supplied by the caller like every time in this module.
    pub now_unix: i64,
}

#[derive(Serialize)]
struct MintedClaims<'a> {
    iss: &'a str,
    aud: &'a str,
    iat: i64,
    nbf: i64,
    exp: i64,
    tid: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    oid: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    appid: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    azp: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    scp: Option<String>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    roles: &'a [String],
}

/// Signs a token for `req` with `secret`.
///
/// Ids are written as given (after validation); the verifier normalises them on the way in, as it
/// does for every issuer's tokens.
pub fn mint_hs256(secret: &[u8], req: &MintRequest) -> Result<String, AuthSetupError> {
    let invalid = |msg: &str| Err(AuthSetupError::Mint(msg.to_owned()));
    if secret.len() < MIN_HS256_SECRET_BYTES {
        return Err(AuthSetupError::SecretTooShort);
    }
    if normalize_id(&req.tenant).is_none() {
        return invalid("the tenant id must be 1 to 128 characters of letters, digits and . _ @ -");
    }
    if req.user.as_deref().is_some_and(|u| normalize_id(u).is_none()) {
        return invalid("the user id must be 1 to 128 characters of letters, digits and . _ @ -");
    }
    if req.app.as_deref().is_some_and(|a| normalize_id(a).is_none()) {
        return invalid("the app id must be 1 to 128 characters of letters, digits and . _ @ -");
    }
    // A permission name with whitespace would split into several scopes once space-joined.
    let well_formed = |p: &String| !p.is_empty() && !p.contains(char::is_whitespace);
    if !req.scopes.iter().all(well_formed) || !req.roles.iter().all(well_formed) {
        return invalid("permission names must be non-empty and contain no whitespace");
    }
    match (req.user.is_some(), req.scopes.is_empty()) {
        (true, true) => return invalid("a user token needs at least one scope (delegated permission)"),
        (false, false) => return invalid("scopes (delegated permissions) need a user"),
        _ => {}
    }
    // The verifier judges delegated tokens by scopes only; roles beside them would be ignored.
    if !req.scopes.is_empty() && !req.roles.is_empty() {
        return invalid("give scopes (delegated) or roles (application), not both");
    }
    if req.ttl_seconds <= 0 {
        return invalid("the lifetime must be positive");
    }
    let Some(exp) = req.now_unix.checked_add(req.ttl_seconds) else {
        return invalid("the lifetime is too long");
    };
    if req.issuer.is_empty() || req.audience.is_empty() {
        return invalid("the issuer and the audience must not be empty");
    }

    let claims = MintedClaims {
        iss: &req.issuer,
        aud: &req.audience,
        iat: req.now_unix,
        nbf: req.now_unix,
        exp,
        tid: &req.tenant,
        oid: req.user.as_deref(),
        appid: req.app.as_deref(),
        azp: req.app.as_deref(),
        scp: (!req.scopes.is_empty()).then(|| req.scopes.join(" ")),
        roles: &req.roles,
    };
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret),
    )
    .map_err(|e| AuthSetupError::Mint(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    use serde_json::{json, Value};

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn request() -> MintRequest {
        MintRequest {
            tenant: "contoso".into(),
            user: Some("alice".into()),
            app: Some("cli".into()),
            scopes: vec!["Presence.Read".into(), "Presence.ReadWrite".into()],
            roles: vec![],
            ttl_seconds: 600,
            issuer: "presenced".into(),
            audience: "https://graph.microsoft.com".into(),
            now_unix: 1_000,
        }
    }

    fn parts(token: &str) -> (Value, Value) {
        let mut it = token.split('.');
        let mut part = || serde_json::from_slice(&URL_SAFE_NO_PAD.decode(it.next().unwrap()).unwrap()).unwrap();
        let (header, claims): (Value, Value) = (part(), part());
        (header, claims)
    }

    #[test]
    fn writes_entra_style_claims() {
        let (header, claims) = parts(&mint_hs256(SECRET, &request()).unwrap());
        assert_eq!(header, json!({"alg": "HS256", "typ": "JWT"}));
        assert_eq!(
            claims,
            json!({
                "iss": "presenced",
                "aud": "https://graph.microsoft.com",
                "iat": 1_000,
                "nbf": 1_000,
                "exp": 1_600,
                "tid": "contoso",
                "oid": "alice",
                "appid": "cli",
                "azp": "cli",
                "scp": "Presence.Read Presence.ReadWrite",
            })
        );
    }

    #[test]
    fn application_tokens_carry_roles_and_no_scp_or_oid() {
        let req = MintRequest {
            user: None,
            app: None,
            scopes: vec![],
            roles: vec!["Presence.Read.All".into()],
            ..request()
        };
        let (_, claims) = parts(&mint_hs256(SECRET, &req).unwrap());
        assert_eq!(claims["roles"], json!(["Presence.Read.All"]));
        for absent in ["scp", "oid", "appid", "azp"] {
            assert!(claims.get(absent).is_none(), "{absent}");
        }
        // No permissions at all is allowed (useful to exercise 403s); the claim is then omitted.
        let bare = MintRequest { roles: vec![], ..req };
        let (_, claims) = parts(&mint_hs256(SECRET, &bare).unwrap());
        assert!(claims.get("roles").is_none());
    }

    #[test]
    fn refuses_requests_the_verifier_would_refuse_or_misread() {
        let bad = [
            MintRequest {
                tenant: "".into(),
                ..request()
            },
            MintRequest {
                tenant: "a/b".into(),
                ..request()
            },
            MintRequest {
                user: Some("a b".into()),
                ..request()
            },
            MintRequest {
                app: Some("".into()),
                ..request()
            },
            MintRequest {
                scopes: vec!["Presence.Read Presence.Read.All".into()],
                ..request()
            },
            MintRequest {
                scopes: vec![String::new()],
                ..request()
            },
            MintRequest {
                scopes: vec![],
                ..request()
            },
            MintRequest {
                user: None,
                ..request()
            },
            MintRequest {
                roles: vec!["Presence.ReadWrite.All".into()],
                ..request()
            },
            MintRequest {
                ttl_seconds: 0,
                ..request()
            },
            MintRequest {
                ttl_seconds: -5,
                ..request()
            },
            MintRequest {
                ttl_seconds: i64::MAX,
                ..request()
            },
            MintRequest {
                issuer: "".into(),
                ..request()
            },
            MintRequest {
                audience: "".into(),
                ..request()
            },
        ];
        for req in bad {
            assert!(
                matches!(mint_hs256(SECRET, &req), Err(AuthSetupError::Mint(_))),
                "{req:?}"
            );
        }
        assert!(matches!(
            mint_hs256(&SECRET[..31], &request()),
            Err(AuthSetupError::SecretTooShort)
        ));
    }
}
