//! The public key of the rich-notification `validationTokens`, unauthenticated like Microsoft's,
//! at the paths Microsoft's identity platform uses under `login.microsoftonline.com`, so that a
//! receiver written for Graph changes only the host it fetches keys from:
//!
//! - `/{tenant}/discovery/keys`, `/{tenant}/discovery/v2.0/keys`: the JWKS (`{tenant}` is any
//!   tenant id or `common`; there is one key for all);
//! - `/{tenant}/.well-known/openid-configuration`, `/{tenant}/v2.0/.well-known/openid-configuration`:
//!   the OpenID metadata a validator reads the `jwks_uri` and `issuer` from.
use super::AppState;
use crate::notify::validation_token;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use presence_core::TenantId;

/// What a key path asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyPath<'a> {
    Jwks,
    OpenIdConfiguration { tenant: &'a str, v2: bool },
}

/// `Some` if `path` is one of the key paths. Cheap enough for every request's check.
pub fn parse(path: &str) -> Option<KeyPath<'_>> {
    let rest = path.strip_prefix('/')?;
    let (tenant, rest) = rest.split_once('/')?;
    let tenant_ok = tenant == "common" || TenantId::parse(tenant).is_ok();
    if !tenant_ok {
        return None;
    }
    match rest {
        "discovery/keys" | "discovery/v2.0/keys" => Some(KeyPath::Jwks),
        ".well-known/openid-configuration" => Some(KeyPath::OpenIdConfiguration { tenant, v2: false }),
        "v2.0/.well-known/openid-configuration" => Some(KeyPath::OpenIdConfiguration { tenant, v2: true }),
        _ => None,
    }
}

/// The metric name of a key path.
pub fn route_name(path: &KeyPath<'_>) -> &'static str {
    match path {
        KeyPath::Jwks => "validation_keys",
        KeyPath::OpenIdConfiguration { .. } => "openid_configuration",
    }
}

pub fn serve(state: &AppState, path: KeyPath<'_>, headers: &HeaderMap) -> Response {
    let body = match path {
        KeyPath::Jwks => state.validation_tokens.jwks().to_owned(),
        KeyPath::OpenIdConfiguration { tenant, v2 } => {
            let host = headers
                .get(header::HOST)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("localhost");
            let keys = if v2 { "discovery/v2.0/keys" } else { "discovery/keys" };
            // Graph's tokens name the tenant they were issued for; the metadata of `common`
            // says so with Microsoft's placeholder.
            let issuer = match TenantId::parse(tenant) {
                Ok(t) if tenant != "common" => validation_token::issuer(&t),
                _ => "https://sts.windows.net/{tenantid}/".to_owned(),
            };
            serde_json::json!({
                "issuer": issuer,
                "jwks_uri": format!("http://{host}/{tenant}/{keys}"),
                "id_token_signing_alg_values_supported": ["RS256"],
                "token_endpoint_auth_signing_alg_values_supported": ["RS256"],
            })
            .to_string()
        }
    };
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static("application/json")),
            // Receivers cache keys; the key only changes if the operator deletes it.
            (header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=3600")),
        ],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_paths() {
        assert_eq!(parse("/common/discovery/v2.0/keys"), Some(KeyPath::Jwks));
        assert_eq!(
            parse("/11111111-1111-1111-1111-111111111111/discovery/keys"),
            Some(KeyPath::Jwks)
        );
        assert_eq!(
            parse("/common/v2.0/.well-known/openid-configuration"),
            Some(KeyPath::OpenIdConfiguration {
                tenant: "common",
                v2: true
            })
        );
        for other in [
            "/v1.0/me/presence",
            "/common/discovery",
            "/common/discovery/keys/extra",
            "/a b/discovery/keys",
            "//discovery/keys",
            "/healthz",
        ] {
            assert_eq!(parse(other), None, "{other}");
        }
    }
}
