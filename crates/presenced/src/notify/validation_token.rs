//! `validationTokens` for rich notifications: JWTs that let a receiver check a notification came
//! from this server, as Graph's let it check one came from Microsoft Graph.
//!
//! Graph puts one token per (application, tenant) of the notifications in a POST whose items
//! carry resource data. Receivers that follow Microsoft's guidance check the RS256 signature
//! against the issuer's published keys, `aud` (their application id), `iss`
//! (`https://sts.windows.net/{tenantId}/` for v1 tokens), the expiry, and that `appid` (or `azp`)
//! is Graph's change-tracking application. The tokens here have exactly that shape; only the keys
//! are presenced's own, published unauthenticated at the paths Microsoft's identity platform uses
//! (`/common/discovery/v2.0/keys` and friends, see `http::keys`), so such a receiver works after
//! pointing its key URL at this server instead of `login.microsoftonline.com`. No token signed
//! here verifies against Microsoft's keys, or the other way round.
//!
//! The signing key is an RSA-2048 key generated on first start in `<data-dir>/validation-token-key`
//! (PKCS#8 PEM, mode 0600 from creation, like `jwt-secret`), read on every later start and never
//! replaced: receivers cache the published keys. Several nodes sign with one key from
//! `--validation-token-key-file`, as they share one HS256 secret.
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use jiff::{SignedDuration, Timestamp};
use presence_core::TenantId;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rsa::{KeyPair, KeySize};
use aws_lc_rs::signature::{KeyPair as _, RSA_PKCS1_SHA256};

/// The key file inside the data directory.
pub const KEY_FILE_NAME: &str = "validation-token-key";
/// Microsoft Graph Change Tracking: the application Graph's tokens name as their caller
/// (`appid` in v1 tokens, `azp` in v2), which receivers are told to check.
pub const CHANGE_TRACKING_APP_ID: &str = "0bf30f3b-4a52-48df-9a82-234910c4a086";
/// A PEM private key is under 2 KiB; the bound keeps a wrong path from being read whole.
const MAX_KEY_FILE_BYTES: u64 = 16 * 1024;
const PEM_BEGIN: &str = "-----BEGIN PRIVATE KEY-----";
const PEM_END: &str = "-----END PRIVATE KEY-----";

#[derive(Debug, thiserror::Error)]
pub enum ValidationKeyError {
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "the validation-token key {} is accessible by group or others (mode {mode:03o}); run `chmod 600 {}`",
        path.display(),
        path.display()
    )]
    Permissions { path: PathBuf, mode: u32 },
    #[error(
        "the validation-token key {} is unusable ({reason}); fix it or delete it to generate a new key \
         (receivers that cached the old public key then need to fetch the keys again)",
        path.display()
    )]
    Corrupt { path: PathBuf, reason: &'static str },
    #[error(
        "the validation-token key file {} does not exist; make one with `openssl genpkey -algorithm RSA \
         -pkeyopt rsa_keygen_bits:2048 -out {}` and `chmod 600` it, or copy a node's <data-dir>/validation-token-key",
        path.display(),
        path.display()
    )]
    Missing { path: PathBuf },
    #[error("cannot generate the validation-token key")]
    Generate,
    #[error(transparent)]
    DataDir(crate::data_dir::UnsafeDataDir),
}

/// Signs validation tokens and publishes the public key.
pub struct ValidationTokenSigner {
    key: KeyPair,
    kid: String,
    /// `{"keys":[…]}`, made once.
    jwks: String,
}

impl fmt::Debug for ValidationTokenSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ValidationTokenSigner")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl ValidationTokenSigner {
    /// The key in `<data_dir>/validation-token-key`, created (0600) if there is none.
    pub fn load_or_create(data_dir: &Path) -> Result<Self, ValidationKeyError> {
        crate::data_dir::prepare(data_dir).map_err(|e| key_error(e.into(), data_dir))?;
        let path = data_dir.join(KEY_FILE_NAME);
        if crate::data_dir::read_private(&path, MAX_KEY_FILE_BYTES)
            .map_err(|e| key_error(e, &path))?
            .is_none()
        {
            let key = KeyPair::generate(KeySize::Rsa2048).map_err(|_| ValidationKeyError::Generate)?;
            let der: aws_lc_rs::encoding::Pkcs8V1Der = key.as_der().map_err(|_| ValidationKeyError::Generate)?;
            crate::data_dir::create_private(data_dir, &path, pem(der.as_ref()).as_bytes(), MAX_KEY_FILE_BYTES)
                .map_err(|e| key_error(e, &path))?;
        }
        Self::load_file(&path)
    }

    /// The key in `path`, which must exist (`--validation-token-key-file`: one key every node of
    /// a deployment signs with, so a receiver verifies a token from any node against the keys
    /// any node publishes).
    pub fn load_file(path: &Path) -> Result<Self, ValidationKeyError> {
        let raw = crate::data_dir::read_private(path, MAX_KEY_FILE_BYTES)
            .map_err(|e| key_error(e, path))?
            .ok_or_else(|| ValidationKeyError::Missing { path: path.to_owned() })?;
        let der = der_of_pem(&raw, path)?;
        let key = KeyPair::from_pkcs8(&der).map_err(|_| corrupt(path, "not an RSA private key in PKCS#8"))?;
        Ok(Self::from_key(key))
    }

    fn from_key(key: KeyPair) -> Self {
        let public = key.public_key();
        let n = URL_SAFE_NO_PAD.encode(public.modulus().big_endian_without_leading_zero());
        let e = URL_SAFE_NO_PAD.encode(public.exponent().big_endian_without_leading_zero());
        // RFC 7638 thumbprint: SHA-256 of the required members in lexicographic order.
        let canonical = format!(r#"{{"e":"{e}","kty":"RSA","n":"{n}"}}"#);
        let kid = URL_SAFE_NO_PAD.encode(aws_lc_rs::digest::digest(
            &aws_lc_rs::digest::SHA256,
            canonical.as_bytes(),
        ));
        let jwks = serde_json::json!({
            "keys": [{ "kty": "RSA", "use": "sig", "alg": "RS256", "kid": kid, "n": n, "e": e }]
        })
        .to_string();
        Self { key, kid, jwks }
    }

    /// The public key as a JWKS document (`{"keys":[…]}`).
    pub fn jwks(&self) -> &str {
        &self.jwks
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// A token for notifications of `app_id`'s subscriptions in `tenant`, valid from `now` for
    /// `lifetime`.
    pub fn sign(&self, app_id: &str, tenant: &TenantId, now: Timestamp, lifetime: SignedDuration) -> Option<String> {
        let issued = now.as_second();
        let expires = (now + lifetime).as_second();
        let header = serde_json::json!({ "typ": "JWT", "alg": "RS256", "kid": self.kid });
        let claims = serde_json::json!({
            "aud": app_id,
            "iss": issuer(tenant),
            "iat": issued,
            "nbf": issued,
            "exp": expires,
            "appid": CHANGE_TRACKING_APP_ID,
            "azp": CHANGE_TRACKING_APP_ID,
            "tid": tenant.as_str(),
            "ver": "1.0",
        });
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let mut signature = vec![0u8; self.key.public_modulus_len()];
        let rng = aws_lc_rs::rand::SystemRandom::new();
        self.key
            .sign(&RSA_PKCS1_SHA256, &rng, signing_input.as_bytes(), &mut signature)
            .ok()?;
        Some(format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature)))
    }
}

/// What Graph's v1 validation tokens carry as `iss`, and what Microsoft's samples check.
pub fn issuer(tenant: &TenantId) -> String {
    format!("https://sts.windows.net/{}/", tenant.as_str())
}

/// The DER inside a PEM `PRIVATE KEY` block.
fn der_of_pem(raw: &[u8], path: &Path) -> Result<Vec<u8>, ValidationKeyError> {
    let text = std::str::from_utf8(raw).map_err(|_| corrupt(path, "not PEM text"))?;
    let body = text
        .trim()
        .strip_prefix(PEM_BEGIN)
        .and_then(|t| t.strip_suffix(PEM_END))
        .ok_or_else(|| corrupt(path, "not a PEM PRIVATE KEY block"))?;
    let compact: String = body.split_whitespace().collect();
    STANDARD
        .decode(compact)
        .map_err(|_| corrupt(path, "not base64 inside the PEM block"))
}

fn key_error(e: crate::data_dir::PrivateFileError, path: &Path) -> ValidationKeyError {
    use crate::data_dir::PrivateFileError as E;
    match e {
        E::Permissions { path, mode } => ValidationKeyError::Permissions { path, mode },
        E::NotAFile { .. } => corrupt(path, "not a regular file"),
        E::TooLarge { .. } => corrupt(path, "larger than 16 KiB"),
        E::Io { action, path, source } => ValidationKeyError::Io { action, path, source },
        E::Unsafe(e) => ValidationKeyError::DataDir(e),
    }
}

fn pem(der: &[u8]) -> String {
    let encoded = STANDARD.encode(der);
    let mut out = String::with_capacity(encoded.len() + 80);
    out.push_str(PEM_BEGIN);
    out.push('\n');
    for line in encoded.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(PEM_END);
    out.push('\n');
    out
}

fn corrupt(path: &Path, reason: &'static str) -> ValidationKeyError {
    ValidationKeyError::Corrupt {
        path: path.to_owned(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{decode, decode_header, Algorithm, DecodingKey, Validation};
    use std::fs;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn a_key_is_made_once_privately_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let first = ValidationTokenSigner::load_or_create(&data).unwrap();
        let path = data.join(KEY_FILE_NAME);
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(fs::read_to_string(&path).unwrap().starts_with(PEM_BEGIN));
        let again = ValidationTokenSigner::load_or_create(&data).unwrap();
        assert_eq!((again.kid(), again.jwks()), (first.kid(), first.jwks()));
        let names: Vec<_> = fs::read_dir(&data).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, [KEY_FILE_NAME]);

        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            ValidationTokenSigner::load_or_create(&data),
            Err(ValidationKeyError::Permissions { .. })
        ));
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        fs::write(&path, "not a key").unwrap();
        assert!(matches!(
            ValidationTokenSigner::load_or_create(&data),
            Err(ValidationKeyError::Corrupt { .. })
        ));
    }

    #[test]
    fn a_key_file_given_must_exist_and_signs_as_the_data_directorys_copy_would() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let made = ValidationTokenSigner::load_or_create(&data).unwrap();
        // The operator copies one node's key for every node to read.
        let shared = dir.path().join("shared-key");
        fs::copy(data.join(KEY_FILE_NAME), &shared).unwrap();
        fs::set_permissions(&shared, fs::Permissions::from_mode(0o600)).unwrap();
        let read = ValidationTokenSigner::load_file(&shared).unwrap();
        assert_eq!((read.kid(), read.jwks()), (made.kid(), made.jwks()));
        // Never made up: a missing file is an error, not a new key.
        let missing = dir.path().join("missing");
        assert!(matches!(
            ValidationTokenSigner::load_file(&missing),
            Err(ValidationKeyError::Missing { .. })
        ));
        assert!(!missing.exists());
        fs::set_permissions(&shared, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            ValidationTokenSigner::load_file(&shared),
            Err(ValidationKeyError::Permissions { .. })
        ));
    }

    #[test]
    fn tokens_verify_against_the_published_key_with_graphs_claims() {
        let dir = tempfile::tempdir().unwrap();
        let signer = ValidationTokenSigner::load_or_create(dir.path()).unwrap();
        let tenant = TenantId::parse("11111111-1111-1111-1111-111111111111").unwrap();
        let now = Timestamp::new(1_800_000_000, 0).unwrap();
        let token = signer
            .sign("my-app", &tenant, now, SignedDuration::from_hours(5))
            .unwrap();

        let header = decode_header(&token).unwrap();
        assert_eq!(
            (header.alg, header.kid.as_deref()),
            (Algorithm::RS256, Some(signer.kid()))
        );
        let jwks: serde_json::Value = serde_json::from_str(signer.jwks()).unwrap();
        let jwk = &jwks["keys"][0];
        let key = DecodingKey::from_rsa_components(jwk["n"].as_str().unwrap(), jwk["e"].as_str().unwrap()).unwrap();
        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_audience(&["my-app"]);
        validation.set_issuer(&["https://sts.windows.net/11111111-1111-1111-1111-111111111111/"]);
        // The fixed `now` is in 2027; check the signature and claims, not the wall clock.
        validation.validate_exp = false;
        let claims = decode::<serde_json::Value>(&token, &key, &validation).unwrap().claims;
        assert_eq!(claims["appid"], CHANGE_TRACKING_APP_ID);
        assert_eq!(claims["azp"], CHANGE_TRACKING_APP_ID);
        assert_eq!(
            claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
            5 * 3600
        );

        validation.set_audience(&["another-app"]);
        assert!(decode::<serde_json::Value>(&token, &key, &validation).is_err());
        // Another data directory's key does not verify it.
        let other = ValidationTokenSigner::load_or_create(&dir.path().join("other")).unwrap();
        let jwks: serde_json::Value = serde_json::from_str(other.jwks()).unwrap();
        let jwk = &jwks["keys"][0];
        let wrong = DecodingKey::from_rsa_components(jwk["n"].as_str().unwrap(), jwk["e"].as_str().unwrap()).unwrap();
        validation.set_audience(&["my-app"]);
        assert!(decode::<serde_json::Value>(&token, &wrong, &validation).is_err());
    }
}
