//! Authentication and authorisation: from an `Authorization` header to a `Principal`, and from a
//! principal plus an `Action` to allowed or `Denied`.
//!
//! Tokens are Microsoft-identity-style JWTs (`tid`, `oid`, `scp`, `roles`, `appid`/`azp`), so tokens
//! that Entra ID issues for Graph can be verified against its JWKS, and a stand-alone deployment can
//! mint its own HS256 tokens from a secret kept in the data directory.
//!
//! Module map:
//! - `verifier`: `AuthConfig` and `Verifier::verify` — the one entry point for requests.
//! - `bearer`: extracting the token from the `Authorization` header.
//! - `jwks`: loading a JWKS file into RS256/ES256 verification keys and selecting one by `kid`.
//! - `claims`: validating the claims (time, audience, issuer, tenant, user) into a `Principal`.
//! - `ids`: the identifier rule shared by `tid`, `oid` and app ids.
//! - `principal`: who is calling, and whether as a user (delegated) or as an application.
//! - `permissions`: the Graph presence permission matrix.
//! - `secret`: the HS256 secret file in the data directory, created on first start.
//! - `mint`: issuing HS256 tokens (for the CLI and tests).
//! - `error`: `AuthError` (401 material) and `AuthSetupError` (start-up and minting failures).
//!
//! The compact token, its header, JWK sets and the signatures are read and checked by
//! jsonwebtoken; the rules (which algorithms, which key, which claims) are ours.
//!
//! Time is always an argument (`now_unix`): nothing in here reads a clock.

mod bearer;
mod claims;
mod error;
mod ids;
mod jwks;
mod mint;
mod permissions;
mod principal;
mod secret;
mod verifier;

#[cfg(test)]
mod test_support;

pub use error::{AuthError, AuthSetupError};
pub use ids::normalize_id;
pub use jwks::{load_jwks_file, JwkSetKeys};
pub use mint::{mint_hs256, MintRequest};
pub use permissions::{Action, Denied};
pub use principal::Principal;
pub use secret::{load_or_create_secret, load_secret_file};
pub use verifier::{AuthConfig, Verifier};

/// Issuer of the tokens this server mints, and the issuer accepted when none is configured.
pub const DEFAULT_ISSUER: &str = "presenced";

/// Graph's own audience, so tokens minted for presenced also read naturally as "for Graph".
pub const DEFAULT_AUDIENCE: &str = "https://graph.microsoft.com";

/// Clock-skew allowance for `exp` and `nbf`; one minute matches common IdP and library defaults.
pub const DEFAULT_LEEWAY_SECONDS: u64 = 60;
/// Longest token lifetime accepted by default: a day (Entra ID's access tokens last 60-90 minutes).
pub const DEFAULT_MAX_LIFETIME_SECONDS: u64 = 86_400;

/// HS256 secrets shorter than the HMAC-SHA256 output are brute-forceable (RFC 7518 §3.2).
pub const MIN_HS256_SECRET_BYTES: usize = 32;
