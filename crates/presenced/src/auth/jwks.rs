//! Public keys for RS256 and ES256 tokens, loaded from a JWKS document (RFC 7517), and the rule that
//! picks the key for a token.
//!
//! Each key is bound to exactly one algorithm when it is loaded (RSA → RS256, EC P-256 → ES256), and
//! a token's `alg` must equal it. That binding is what defeats algorithm confusion: no token header
//! can make an RSA key act as an HMAC secret or as any other algorithm.
//!
//! Keys this server cannot use (encryption keys, other curves, `oct`, `OKP`, PS256, …) are skipped so
//! an IdP's full JWKS can be used as is; keys of a usable type that are broken are an error, because
//! silently dropping them would only surface later as unexplained 401s. The document and its keys
//! are read by jsonwebtoken (`JwkSet`, `DecodingKey::from_jwk`); the rules above are ours.

use std::fmt;
use std::io::Read as _;
use std::path::Path;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm, KeyOperations, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, DecodingKeyKind};

use super::error::{AuthError, AuthSetupError};

/// A JWKS is a few KiB; the bound keeps a mistaken path (a log file, a device) from being slurped.
const MAX_JWKS_BYTES: u64 = 1024 * 1024;

/// RS256 verification in aws-lc accepts 2048..=8192-bit moduli; reject others when loading so the
/// operator hears about it at start-up rather than through failing requests.
const RSA_MIN_BITS: usize = 2048;
const RSA_MAX_BITS: usize = 8192;

/// The usable verification keys of a JWKS document.
#[derive(Clone)]
pub struct JwkSetKeys {
    keys: Vec<VerificationKey>,
}

#[derive(Clone)]
struct VerificationKey {
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
}

impl fmt::Debug for JwkSetKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Public keys are not secret, but a list of (kid, alg) is all that is useful in logs.
        f.debug_list()
            .entries(self.keys.iter().map(|k| (k.kid.as_deref(), k.alg)))
            .finish()
    }
}

impl JwkSetKeys {
    /// Parses a JWKS JSON document (jsonwebtoken's `JwkSet`). `origin` names it in error messages
    /// (a path, or "document").
    pub fn from_json(json: &str, origin: &str) -> Result<Self, AuthSetupError> {
        let invalid = |reason: String| AuthSetupError::InvalidJwks {
            origin: origin.to_owned(),
            reason,
        };
        let set: JwkSet = serde_json::from_str(json).map_err(|e| invalid(format!("not a JWK set ({e})")))?;
        let mut keys: Vec<VerificationKey> = Vec::new();
        for (index, jwk) in set.keys.iter().enumerate() {
            let Some(key) = usable_key(jwk).map_err(|reason| invalid(format!("key #{index}: {reason}")))? else {
                continue;
            };
            // Two usable keys under one kid would make the choice depend on file order.
            if let Some(kid) = &key.kid {
                if keys.iter().any(|k| k.kid.as_ref() == Some(kid)) {
                    return Err(invalid(format!("key id {kid:?} appears more than once")));
                }
            }
            keys.push(key);
        }
        if keys.is_empty() {
            return Err(invalid(
                "no usable RS256 (RSA) or ES256 (EC P-256) signing key".to_owned(),
            ));
        }
        Ok(Self { keys })
    }

    /// Number of usable keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Always false for a successfully loaded set; present for API symmetry with `len`.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The key for a token with `alg` and optional `kid`.
    ///
    /// With a `kid` only that key is considered, and it must be bound to `alg`. Without one, the
    /// token is accepted only if exactly one key fits `alg`; guessing among several would let the
    /// token choose.
    pub(crate) fn select(&self, alg: Algorithm, kid: Option<&str>) -> Result<&DecodingKey, AuthError> {
        let chosen = match kid {
            Some(kid) => self.keys.iter().find(|k| k.kid.as_deref() == Some(kid) && k.alg == alg),
            None => {
                let mut fitting = self.keys.iter().filter(|k| k.alg == alg);
                match (fitting.next(), fitting.next()) {
                    (Some(only), None) => Some(only),
                    _ => None,
                }
            }
        };
        chosen.map(|k| &k.key).ok_or(AuthError::UnknownKey)
    }
}

/// Reads and parses a JWKS file.
pub fn load_jwks_file(path: &Path) -> Result<JwkSetKeys, AuthSetupError> {
    let io_error = |source| AuthSetupError::Io {
        action: "read the JWKS file",
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io_error)?;
    let mut json = String::new();
    file.take(MAX_JWKS_BYTES + 1)
        .read_to_string(&mut json)
        .map_err(io_error)?;
    let origin = path.display().to_string();
    if json.len() as u64 > MAX_JWKS_BYTES {
        return Err(AuthSetupError::InvalidJwks {
            origin,
            reason: "larger than 1 MiB".to_owned(),
        });
    }
    JwkSetKeys::from_json(&json, &origin)
}

/// `Ok(None)` for a key of a kind this server does not verify with; `Err` for a broken usable key.
fn usable_key(jwk: &Jwk) -> Result<Option<VerificationKey>, String> {
    let common = &jwk.common;
    if common
        .public_key_use
        .as_ref()
        .is_some_and(|u| *u != PublicKeyUse::Signature)
    {
        return Ok(None);
    }
    if common
        .key_operations
        .as_ref()
        .is_some_and(|ops| !ops.contains(&KeyOperations::Verify))
    {
        return Ok(None);
    }
    let declared = common.key_algorithm;
    let label = common
        .key_id
        .as_deref()
        .map(|k| format!("key {k:?}"))
        .unwrap_or_else(|| "key".to_owned());
    let alg = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) if declared.is_none_or(|a| a == KeyAlgorithm::RS256) => Algorithm::RS256,
        AlgorithmParameters::EllipticCurve(p)
            if p.curve == EllipticCurve::P256 && declared.is_none_or(|a| a == KeyAlgorithm::ES256) =>
        {
            Algorithm::ES256
        }
        // A key of a usable type that jsonwebtoken could not read as one (a missing or mistyped
        // member) is broken, not foreign: dropping it would only surface later as 401s.
        AlgorithmParameters::Other(other) => {
            let member = |name: &str| other.fields.get(name).and_then(|v| v.as_str());
            let (kty, crv) = (member("kty"), member("crv"));
            if kty == Some("RSA") || (kty == Some("EC") && crv == Some("P-256")) {
                return Err(format!(
                    "{label}: kty {:?} with missing or mistyped members",
                    kty.unwrap_or_default()
                ));
            }
            return Ok(None);
        }
        _ => return Ok(None),
    };
    let jwk = unpadded(jwk);
    let key = DecodingKey::from_jwk(&jwk).map_err(|e| format!("{label}: not base64url ({e})"))?;
    let key = match (&jwk.algorithm, key.kind()) {
        (AlgorithmParameters::RSA(_), DecodingKeyKind::RsaModulusExponent { n, e }) => {
            let (n, e) = (strip_leading_zeros(n), strip_leading_zeros(e));
            let bits = bit_length(n);
            if !(RSA_MIN_BITS..=RSA_MAX_BITS).contains(&bits) {
                return Err(format!(
                    "{label}: RSA modulus is {bits} bits, expected {RSA_MIN_BITS} to {RSA_MAX_BITS}"
                ));
            }
            if e.is_empty() {
                return Err(format!("{label}: RSA exponent is zero"));
            }
            DecodingKey::from_rsa_raw_components(n, e)
        }
        // 32 bytes are 43 characters of unpadded base64url.
        (AlgorithmParameters::EllipticCurve(p), _) if p.x.len() != 43 || p.y.len() != 43 => {
            return Err(format!("{label}: P-256 coordinates must be 32 bytes each"))
        }
        _ => key,
    };
    Ok(Some(VerificationKey {
        kid: jwk.common.key_id.clone(),
        alg,
        key,
    }))
}

/// RFC 7518 says unpadded base64url; some producers pad anyway, which is harmless to accept.
fn unpadded(jwk: &Jwk) -> Jwk {
    let mut jwk = jwk.clone();
    let trim = |s: &mut String| s.truncate(s.trim_end_matches('=').len());
    match &mut jwk.algorithm {
        AlgorithmParameters::RSA(p) => {
            trim(&mut p.n);
            trim(&mut p.e);
        }
        AlgorithmParameters::EllipticCurve(p) => {
            trim(&mut p.x);
            trim(&mut p.y);
        }
        _ => {}
    }
    jwk
}

fn strip_leading_zeros(bytes: &[u8]) -> &[u8] {
    let first = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    &bytes[first..]
}

fn bit_length(be: &[u8]) -> usize {
    match be.first() {
        None => 0,
        Some(top) => (be.len() - 1) * 8 + (8 - top.leading_zeros() as usize),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::test_support::{ec_key, rsa_key, second_rsa_key};
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    use serde_json::{json, Value};

    fn jwks(keys: Vec<Value>) -> Result<JwkSetKeys, AuthSetupError> {
        JwkSetKeys::from_json(&json!({ "keys": keys }).to_string(), "test")
    }

    fn reason(r: Result<JwkSetKeys, AuthSetupError>) -> String {
        match r {
            Err(AuthSetupError::InvalidJwks { reason, .. }) => reason,
            other => panic!("expected InvalidJwks, got {other:?}"),
        }
    }

    #[test]
    fn loads_rsa_and_ec_keys_and_binds_each_to_one_algorithm() {
        let set = jwks(vec![rsa_key().jwk("r1"), ec_key().jwk("e1")]).unwrap();
        assert_eq!(set.len(), 2);
        assert!(set.select(Algorithm::RS256, Some("r1")).is_ok());
        assert!(set.select(Algorithm::ES256, Some("e1")).is_ok());
        // A kid only ever yields its key for that key's own algorithm.
        assert_eq!(
            set.select(Algorithm::ES256, Some("r1")).err(),
            Some(AuthError::UnknownKey)
        );
        assert_eq!(
            set.select(Algorithm::RS256, Some("e1")).err(),
            Some(AuthError::UnknownKey)
        );
        assert_eq!(
            set.select(Algorithm::HS256, Some("r1")).err(),
            Some(AuthError::UnknownKey)
        );
        assert_eq!(
            set.select(Algorithm::RS256, Some("nope")).err(),
            Some(AuthError::UnknownKey)
        );
    }

    #[test]
    fn without_kid_only_a_single_fitting_key_is_used() {
        let set = jwks(vec![rsa_key().jwk("r1"), ec_key().jwk("e1")]).unwrap();
        assert!(set.select(Algorithm::RS256, None).is_ok());
        assert!(set.select(Algorithm::ES256, None).is_ok());
        let two_rsa = jwks(vec![rsa_key().jwk("r1"), second_rsa_key().jwk("r2")]).unwrap();
        assert_eq!(
            two_rsa.select(Algorithm::RS256, None).err(),
            Some(AuthError::UnknownKey)
        );
        assert!(two_rsa.select(Algorithm::RS256, Some("r2")).is_ok());
    }

    #[test]
    fn skips_keys_it_cannot_use() {
        let mut enc = rsa_key().jwk("enc");
        enc["use"] = json!("enc");
        let mut pss = rsa_key().jwk("pss");
        pss["alg"] = json!("PS256");
        let mut wrap_only = rsa_key().jwk("wrap");
        wrap_only["key_ops"] = json!(["wrapKey"]);
        let mut p384 = ec_key().jwk("p384");
        p384["crv"] = json!("P-384");
        let oct = json!({"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"});
        let okp = json!({"kty": "OKP", "crv": "Ed25519", "x": "AAAA", "kid": "ed"});
        let set = jwks(vec![enc, pss, wrap_only, p384, oct, okp, ec_key().jwk("e1")]).unwrap();
        assert_eq!(set.len(), 1);
        assert_eq!(
            set.select(Algorithm::RS256, Some("enc")).err(),
            Some(AuthError::UnknownKey)
        );
        assert!(set.select(Algorithm::ES256, Some("e1")).is_ok());
    }

    #[test]
    fn rejects_documents_without_usable_keys() {
        assert!(reason(jwks(vec![])).contains("no usable"));
        let oct = json!({"kty": "oct", "k": "c2VjcmV0"});
        assert!(reason(jwks(vec![oct])).contains("no usable"));
        for bad in ["", "[]", "{}", r#"{"keys": {}}"#, "not json"] {
            assert!(JwkSetKeys::from_json(bad, "test").is_err(), "{bad:?}");
        }
    }

    #[test]
    fn rejects_broken_usable_keys() {
        let mut short = rsa_key().jwk("short");
        short["n"] = json!(URL_SAFE_NO_PAD.encode([0xFFu8; 128])); // 1024 bits
        assert!(reason(jwks(vec![short])).contains("1024 bits"));
        let mut no_e = rsa_key().jwk("no-e");
        no_e.as_object_mut().unwrap().remove("e");
        assert!(reason(jwks(vec![no_e])).contains("kty \"RSA\" with missing or mistyped members"));
        let mut bad_x = ec_key().jwk("bad-x");
        bad_x["x"] = json!("!!!");
        assert!(reason(jwks(vec![bad_x])).contains("base64url"));
        let mut short_y = ec_key().jwk("short-y");
        short_y["y"] = json!(URL_SAFE_NO_PAD.encode([1u8; 31]));
        assert!(reason(jwks(vec![short_y])).contains("32 bytes"));
        let mut kid_number = ec_key().jwk("x");
        kid_number["kid"] = json!(5);
        assert!(reason(jwks(vec![kid_number])).contains("not a JWK set"));
        let mut ec_without_y = ec_key().jwk("no-y");
        ec_without_y.as_object_mut().unwrap().remove("y");
        assert!(reason(jwks(vec![ec_without_y, rsa_key().jwk("r1")])).contains("kty \"EC\" with missing"));
    }

    #[test]
    fn rejects_duplicate_key_ids() {
        let r = jwks(vec![rsa_key().jwk("same"), second_rsa_key().jwk("same")]);
        assert!(reason(r).contains("more than once"));
    }

    #[test]
    fn accepts_padded_base64() {
        let mut padded = ec_key().jwk("p");
        let x = padded["x"].as_str().unwrap().to_owned() + "=";
        padded["x"] = json!(x);
        assert!(jwks(vec![padded]).is_ok());
    }

    #[test]
    fn loads_from_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwks.json");
        std::fs::write(&path, json!({"keys": [rsa_key().jwk("r1")]}).to_string()).unwrap();
        assert_eq!(load_jwks_file(&path).unwrap().len(), 1);
        let missing = dir.path().join("missing.json");
        assert!(matches!(load_jwks_file(&missing), Err(AuthSetupError::Io { .. })));
        std::fs::write(&path, " ".repeat(MAX_JWKS_BYTES as usize + 1)).unwrap();
        assert!(reason(load_jwks_file(&path)).contains("1 MiB"));
    }
}
