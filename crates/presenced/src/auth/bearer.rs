//! Extracting the bearer token from an `Authorization` header value (RFC 6750 §2.1).

use super::error::AuthError;

/// Returns the token of a `Bearer <token>` header. The scheme name is case-insensitive (RFC 9110
/// §11.1); the token's own shape is checked later by the JWS parser.
pub(crate) fn bearer_token(header: Option<&str>) -> Result<&str, AuthError> {
    let value = header.map(str::trim).unwrap_or_default();
    // An empty header carries no credentials at all; answer as if it were absent.
    if value.is_empty() {
        return Err(AuthError::MissingHeader);
    }
    let (scheme, rest) = value.split_once([' ', '\t']).unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("Bearer") {
        return Err(AuthError::NotBearer);
    }
    let token = rest.trim();
    if token.is_empty() {
        return Err(AuthError::Malformed);
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extracts_the_token() {
        assert_eq!(bearer_token(Some("Bearer a.b.c")), Ok("a.b.c"));
        assert_eq!(bearer_token(Some("bearer a.b.c")), Ok("a.b.c"));
        assert_eq!(bearer_token(Some("BEARER   a.b.c  ")), Ok("a.b.c"));
        assert_eq!(bearer_token(Some("Bearer\ta.b.c")), Ok("a.b.c"));
    }

    #[test]
    fn rejects_missing_other_schemes_and_empty_tokens() {
        assert_eq!(bearer_token(None), Err(AuthError::MissingHeader));
        assert_eq!(bearer_token(Some("")), Err(AuthError::MissingHeader));
        assert_eq!(bearer_token(Some("   ")), Err(AuthError::MissingHeader));
        assert_eq!(bearer_token(Some("Basic dXNlcjpwYXNz")), Err(AuthError::NotBearer));
        assert_eq!(bearer_token(Some("Bearerx a.b.c")), Err(AuthError::NotBearer));
        assert_eq!(bearer_token(Some("a.b.c")), Err(AuthError::NotBearer));
        assert_eq!(bearer_token(Some("Bearer")), Err(AuthError::Malformed));
        assert_eq!(bearer_token(Some("Bearer    ")), Err(AuthError::Malformed));
    }
}
