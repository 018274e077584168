//! The two error types of authentication: per-request failures (`AuthError`, rendered into a 401)
//! and configuration/start-up failures (`AuthSetupError`, shown to the operator).
//!
//! `AuthError` messages go to whoever sent the request, so they name what was wrong with the token
//! but never echo key material, configured issuers/audiences or library internals.

use std::io;
use std::path::PathBuf;

/// Why a request could not be authenticated. Every variant maps to HTTP 401.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("the request has no Authorization header")]
    MissingHeader,
    #[error("the Authorization header must use the Bearer scheme")]
    NotBearer,
    #[error("the bearer token is malformed")]
    Malformed,
    #[error("the token's signing algorithm is not accepted")]
    UnsupportedAlgorithm,
    #[error("the token's signing key is not recognised")]
    UnknownKey,
    #[error("the token's signature is invalid")]
    BadSignature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not yet valid")]
    NotYetValid,
    #[error("the token's lifetime is longer than this server accepts ({0} seconds)")]
    LifetimeTooLong(i64),
    #[error("the token's audience is not accepted")]
    WrongAudience,
    #[error("the token's issuer is not accepted")]
    WrongIssuer,
    #[error("the token has no `{0}` claim")]
    MissingClaim(&'static str),
    #[error("the token's `{0}` claim is invalid")]
    InvalidClaim(&'static str),
    #[error("a delegated token (with `scp`) must carry the user's `oid` claim")]
    DelegatedWithoutUser,
}

impl AuthError {
    /// The `WWW-Authenticate` response header value for this failure (RFC 6750 §3).
    ///
    /// Without any credentials the challenge carries no error code (§3.1 says it SHOULD NOT), so a
    /// client that simply forgot the header is not told its (absent) token was invalid.
    pub fn www_authenticate(&self) -> String {
        match self {
            AuthError::MissingHeader | AuthError::NotBearer => "Bearer".to_owned(),
            // Messages are fixed strings with no `"` or `\`, so they are safe in a quoted-string.
            other => format!("Bearer error=\"invalid_token\", error_description=\"{other}\""),
        }
    }
}

/// Why authentication could not be set up, or a token could not be minted.
#[derive(Debug, thiserror::Error)]
pub enum AuthSetupError {
    #[error("no token verification key is configured: set an HS256 secret or a JWKS file")]
    NoKeys,
    #[error(
        "the HS256 secret must be at least {} bytes long",
        crate::auth::MIN_HS256_SECRET_BYTES
    )]
    SecretTooShort,
    #[error("at least one accepted token audience must be configured")]
    NoAudience,
    #[error("at least one accepted token issuer must be configured")]
    NoIssuer,
    #[error(transparent)]
    DataDir(crate::data_dir::UnsafeDataDir),
    #[error("cannot {action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("invalid JWKS {origin}: {reason}")]
    InvalidJwks { origin: String, reason: String },
    #[error(
        "the JWT secret file {} is accessible by group or others (mode {mode:03o}); run `chmod 600 {}`",
        path.display(),
        path.display()
    )]
    SecretPermissions { path: PathBuf, mode: u32 },
    #[error(
        "the JWT secret file {} is unusable ({reason}); fix it or delete it to generate a new secret \
         (it is never overwritten automatically)",
        path.display()
    )]
    SecretCorrupt { path: PathBuf, reason: &'static str },
    #[error("cannot generate a random JWT secret: {0}")]
    Random(getrandom::Error),
    #[error("cannot mint a token: {0}")]
    Mint(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenge_has_no_error_code_without_credentials() {
        assert_eq!(AuthError::MissingHeader.www_authenticate(), "Bearer");
        assert_eq!(AuthError::NotBearer.www_authenticate(), "Bearer");
    }

    #[test]
    fn challenge_names_invalid_token_and_stays_a_valid_quoted_string() {
        let all = [
            AuthError::Malformed,
            AuthError::UnsupportedAlgorithm,
            AuthError::UnknownKey,
            AuthError::BadSignature,
            AuthError::Expired,
            AuthError::NotYetValid,
            AuthError::WrongAudience,
            AuthError::WrongIssuer,
            AuthError::MissingClaim("tid"),
            AuthError::InvalidClaim("oid"),
            AuthError::DelegatedWithoutUser,
        ];
        for e in all {
            let h = e.www_authenticate();
            assert!(
                h.starts_with("Bearer error=\"invalid_token\", error_description=\""),
                "{h}"
            );
            let description = &h["Bearer error=\"invalid_token\", error_description=\"".len()..];
            let description = description.strip_suffix('"').expect("closing quote");
            assert!(!description.contains(['"', '\\']), "{h}");
            assert_eq!(description, e.to_string());
        }
    }

    #[test]
    fn secret_permission_message_tells_the_fix() {
        let e = AuthSetupError::SecretPermissions {
            path: "/d/jwt-secret".into(),
            mode: 0o644,
        };
        let msg = e.to_string();
        assert!(msg.contains("chmod 600 /d/jwt-secret"), "{msg}");
        assert!(msg.contains("644"), "{msg}");
    }
}
