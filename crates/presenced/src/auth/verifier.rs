//! `Verifier`: from an `Authorization` header and the current time to a `Principal`, or the reason
//! for a 401.
//!
//! Order of checks: header → size → protected header (jsonwebtoken's `decode_header`) → algorithm
//! allow-list → key (bound to the algorithm) → signature (jsonwebtoken's `decode`) → claims. Nothing
//! from the payload is looked at before the signature has checked out.
//!
//! Only HS256, RS256 and ES256 are accepted, each with its own key source: HS256 only ever verifies
//! against the configured secret, RS256/ES256 only against JWKS keys of the matching type. The token
//! header chooses among those keys by `kid` but can never turn one kind of key into another.
//!
//! jsonwebtoken checks the signature only; the claims are checked by `claims`, because its
//! `Validation` reads the system clock for `exp`/`nbf` (time is an argument here, and the token
//! cache re-checks the window on every hit) and takes an array as `iss`.

use std::fmt;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

use super::bearer::bearer_token;
use super::claims::{principal_from_claims, validity, within_window, ClaimRules};
use super::error::{AuthError, AuthSetupError};
use super::jwks::JwkSetKeys;
use super::principal::Principal;
use super::{
    DEFAULT_AUDIENCE, DEFAULT_ISSUER, DEFAULT_LEEWAY_SECONDS, DEFAULT_MAX_LIFETIME_SECONDS, MIN_HS256_SECRET_BYTES,
};

/// Bound on the token length: real access tokens are 1–3 KiB, and every later step (base64, JSON,
/// signature) is linear in this, so an attacker cannot make one request expensive.
const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// How tokens are verified.
#[derive(Clone)]
pub struct AuthConfig {
    /// Secret for HS256 tokens; `None` refuses every HS256 token.
    pub hs256_secret: Option<Vec<u8>>,
    /// Keys for RS256/ES256 tokens; `None` refuses every RS256 and ES256 token.
    pub jwks: Option<JwkSetKeys>,
    /// A token's `aud` (string or array) must contain one of these, compared exactly.
    pub audiences: Vec<String>,
    /// A token's `iss` must equal one of these, compared exactly.
    pub issuers: Vec<String>,
    /// Clock-skew allowance for `exp` and `nbf`.
    pub leeway_seconds: u64,
    /// Tokens valid for longer than this (`exp` − `iat`) are refused.
    pub max_lifetime_seconds: u64,
}

impl Default for AuthConfig {
    /// No keys (so `Verifier::new` refuses it until one is set), and the audience and issuer of the
    /// tokens this server mints itself.
    fn default() -> Self {
        Self {
            hs256_secret: None,
            jwks: None,
            audiences: vec![DEFAULT_AUDIENCE.to_owned()],
            issuers: vec![DEFAULT_ISSUER.to_owned()],
            leeway_seconds: DEFAULT_LEEWAY_SECONDS,
            max_lifetime_seconds: DEFAULT_MAX_LIFETIME_SECONDS,
        }
    }
}

impl fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthConfig")
            .field("hs256_secret", &self.hs256_secret.as_ref().map(|_| "[redacted]"))
            .field("jwks", &self.jwks)
            .field("audiences", &self.audiences)
            .field("issuers", &self.issuers)
            .field("leeway_seconds", &self.leeway_seconds)
            .finish()
    }
}

/// Verifies bearer tokens. Cheap to share: build once at start-up and keep it behind an `Arc`.
#[derive(Clone)]
pub struct Verifier {
    // Held as a DecodingKey (zeroized on drop) rather than the config's plain Vec.
    hs256: Option<DecodingKey>,
    jwks: Option<JwkSetKeys>,
    audiences: Vec<String>,
    issuers: Vec<String>,
    leeway_seconds: i64,
    max_lifetime_seconds: i64,
    // Verified tokens, so a client reusing its token (all of them do) costs a map lookup
    // instead of a signature check per request.
    cache: std::sync::Arc<VerifiedTokens>,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("hs256", &self.hs256.as_ref().map(|_| "[redacted]"))
            .field("jwks", &self.jwks)
            .field("audiences", &self.audiences)
            .field("issuers", &self.issuers)
            .field("leeway_seconds", &self.leeway_seconds)
            .finish()
    }
}

impl Verifier {
    /// Checks the configuration once, so a request can never be the first to find it unusable.
    pub fn new(config: AuthConfig) -> Result<Self, AuthSetupError> {
        if config.hs256_secret.is_none() && config.jwks.is_none() {
            return Err(AuthSetupError::NoKeys);
        }
        if let Some(secret) = &config.hs256_secret {
            if secret.len() < MIN_HS256_SECRET_BYTES {
                return Err(AuthSetupError::SecretTooShort);
            }
        }
        // An empty entry would only match an empty claim; treat it as the mistake it is.
        let audiences: Vec<String> = config.audiences.into_iter().filter(|a| !a.is_empty()).collect();
        let issuers: Vec<String> = config.issuers.into_iter().filter(|i| !i.is_empty()).collect();
        if audiences.is_empty() {
            return Err(AuthSetupError::NoAudience);
        }
        if issuers.is_empty() {
            return Err(AuthSetupError::NoIssuer);
        }
        Ok(Self {
            hs256: config.hs256_secret.as_deref().map(DecodingKey::from_secret),
            jwks: config.jwks,
            audiences,
            issuers,
            leeway_seconds: i64::try_from(config.leeway_seconds).unwrap_or(i64::MAX),
            max_lifetime_seconds: i64::try_from(config.max_lifetime_seconds).unwrap_or(i64::MAX),
            cache: std::sync::Arc::default(),
        })
    }

    /// `verify`, remembering tokens that passed: a hit re-checks only the time window, which is
    /// all that can change for a token whose signature, issuer and audience already checked out.
    /// Only verified tokens are stored, so invalid tokens cannot fill the cache.
    pub fn verify_cached(
        &self,
        authorization_header: Option<&str>,
        now_unix: i64,
    ) -> Result<std::sync::Arc<Principal>, AuthError> {
        let token = bearer_token(authorization_header)?;
        let rules = self.rules(now_unix);
        if let Some((principal, exp, nbf)) = self.cache.get(token) {
            within_window(exp, nbf, &rules)?;
            return Ok(principal);
        }
        let (principal, exp, nbf) = self.verify_token(token, &rules)?;
        let principal = std::sync::Arc::new(principal);
        self.cache.put(token, principal.clone(), exp, nbf);
        Ok(principal)
    }

    fn rules(&self, now_unix: i64) -> ClaimRules<'_> {
        ClaimRules {
            audiences: &self.audiences,
            issuers: &self.issuers,
            leeway_seconds: self.leeway_seconds,
            now_unix,
            max_lifetime_seconds: self.max_lifetime_seconds,
        }
    }

    /// Authenticates a request. `authorization_header` is the raw `Authorization` value (if any);
    /// `now_unix` is the current time in seconds since the Unix epoch, supplied by the caller.
    pub fn verify(&self, authorization_header: Option<&str>, now_unix: i64) -> Result<Principal, AuthError> {
        let token = bearer_token(authorization_header)?;
        self.verify_token(token, &self.rules(now_unix))
            .map(|(principal, _, _)| principal)
    }

    /// The full check of one compact token: returns the principal with its `exp` and `nbf`.
    fn verify_token(&self, token: &str, rules: &ClaimRules<'_>) -> Result<(Principal, i64, Option<i64>), AuthError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::Malformed);
        }
        // An `alg` jsonwebtoken has no name for (`none`, `hs256`, …) fails here, as a malformed
        // header. RFC 7515 §4.1.11: a `crit` header lists extensions the recipient must understand,
        // and we understand none, so such a token is refused rather than half-understood.
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Malformed)?;
        if header.crit.is_some() {
            return Err(AuthError::Malformed);
        }
        let alg = accepted_algorithm(header.alg)?;
        let key = self.key_for(alg, header.kid.as_deref())?;
        // Defence in depth: the key sources above already guarantee this.
        if key.family() != alg.family() {
            return Err(AuthError::UnsupportedAlgorithm);
        }
        let claims = jsonwebtoken::decode::<Map<String, Value>>(token, key, &signature_only(alg))
            .map_err(|e| match e.kind() {
                // The payload is read only after the signature checked out.
                ErrorKind::Json(_) | ErrorKind::Utf8(_) => AuthError::Malformed,
                // An undecodable signature is as bad as a wrong one; the caller needs no finer detail.
                _ => AuthError::BadSignature,
            })?
            .claims;
        let principal = principal_from_claims(&claims, rules)?;
        let (exp, nbf) = validity(&claims)?;
        Ok((principal, exp, nbf))
    }

    fn key_for(&self, alg: Algorithm, kid: Option<&str>) -> Result<&DecodingKey, AuthError> {
        match alg {
            // `kid` is deliberately ignored: there is one secret, and no header may redirect HS256
            // to any other key material.
            Algorithm::HS256 => self.hs256.as_ref().ok_or(AuthError::UnsupportedAlgorithm),
            Algorithm::RS256 | Algorithm::ES256 => self
                .jwks
                .as_ref()
                .ok_or(AuthError::UnsupportedAlgorithm)?
                .select(alg, kid),
            _ => Err(AuthError::UnsupportedAlgorithm),
        }
    }
}

/// Tokens that passed verification, with their validity window. Bounded: when full it is
/// emptied, which costs one signature check per active token and keeps memory fixed.
struct VerifiedTokens {
    /// Tells apart the caches of several verifiers in one process (tests build many).
    id: u64,
    entries: std::sync::Mutex<TokenTable>,
}

type CachedToken = (std::sync::Arc<Principal>, i64, Option<i64>);

/// About 4 MB of tokens at most; far more than the distinct live tokens a deployment sees.
const MAX_CACHED_TOKENS: usize = 10_000;
/// Per thread, in front of the shared map.
const MAX_THREAD_CACHED_TOKENS: usize = 1_000;
/// How much of a token's end is hashed (see `TokenTable`).
const HASHED_TAIL: usize = 32;

/// Verified tokens by their full text, hashed by their last bytes only. A compact token ends
/// in its signature (43+ base64url characters for every accepted algorithm), which differs
/// between any two tokens, so its tail spreads them as well as the whole would; hashing all
/// ~300+ bytes was ~1,300 instructions of every request. Equality is still the whole token, and
/// only tokens that verified are ever inserted, so a caller cannot choose colliding entries.
#[derive(Default)]
struct TokenTable {
    hasher: std::hash::RandomState,
    table: hashbrown::HashTable<(Box<str>, CachedToken)>,
}

/// The hash a `TokenTable` files `token` under: that of its last `HASHED_TAIL` bytes.
fn tail_hash(hasher: &std::hash::RandomState, token: &str) -> u64 {
    let bytes = token.as_bytes();
    std::hash::BuildHasher::hash_one(hasher, &bytes[bytes.len().saturating_sub(HASHED_TAIL)..])
}

impl TokenTable {
    fn get(&self, token: &str) -> Option<&CachedToken> {
        self.table
            .find(tail_hash(&self.hasher, token), |(key, _)| **key == *token)
            .map(|(_, cached)| cached)
    }

    /// Insert, first emptying the table if it holds `limit` tokens.
    fn put(&mut self, token: &str, cached: CachedToken, limit: usize) {
        if self.table.len() >= limit {
            self.table.clear();
        }
        let hasher = &self.hasher;
        let rehash = |(key, _): &(Box<str>, CachedToken)| tail_hash(hasher, key);
        match self
            .table
            .entry(tail_hash(hasher, token), |(key, _)| **key == *token, rehash)
        {
            hashbrown::hash_table::Entry::Occupied(mut slot) => slot.get_mut().1 = cached,
            hashbrown::hash_table::Entry::Vacant(slot) => drop(slot.insert((token.into(), cached))),
        }
    }
}

thread_local! {
    /// Each worker thread's own copy of the hits it has seen, principal included: a hit then
    /// touches no lock and no reference count shared with the other threads (the shared mutex and
    /// `Arc` bounced a cache line between cores on every request). One table per verifier (a
    /// process has one; tests have many), found by the verifier's id.
    static THREAD_TOKENS: std::cell::RefCell<Vec<(u64, TokenTable)>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// This thread's table for verifier `id`.
fn thread_table<T>(id: u64, f: impl FnOnce(&mut TokenTable) -> T) -> T {
    THREAD_TOKENS.with(|t| {
        let mut tables = t.borrow_mut();
        let index = match tables.iter().position(|(owner, _)| *owner == id) {
            Some(index) => index,
            None => {
                tables.push((id, TokenTable::default()));
                tables.len() - 1
            }
        };
        f(&mut tables[index].1)
    })
}

impl Default for VerifiedTokens {
    fn default() -> Self {
        static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        Self {
            id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            entries: Default::default(),
        }
    }
}

impl VerifiedTokens {
    fn get(&self, token: &str) -> Option<CachedToken> {
        let local = thread_table(self.id, |mine| mine.get(token).cloned());
        if local.is_some() {
            return local;
        }
        let (principal, exp, nbf) = self
            .entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(token)
            .cloned()?;
        let own = (std::sync::Arc::new((*principal).clone()), exp, nbf);
        thread_table(self.id, |mine| mine.put(token, own.clone(), MAX_THREAD_CACHED_TOKENS));
        Some(own)
    }

    fn put(&self, token: &str, principal: std::sync::Arc<Principal>, exp: i64, nbf: Option<i64>) {
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).put(
            token,
            (principal.clone(), exp, nbf),
            MAX_CACHED_TOKENS,
        );
        // This thread made the principal, so it is already this thread's own copy.
        thread_table(self.id, |mine| {
            mine.put(token, (principal, exp, nbf), MAX_THREAD_CACHED_TOKENS)
        });
    }
}

/// The allow-list: HS384/HS512, RS384/RS512, PS*, ES384 and EdDSA are refused (jsonwebtoken's
/// header cannot even name `none` or a misspelling).
fn accepted_algorithm(alg: Algorithm) -> Result<Algorithm, AuthError> {
    match alg {
        Algorithm::HS256 | Algorithm::RS256 | Algorithm::ES256 => Ok(alg),
        _ => Err(AuthError::UnsupportedAlgorithm),
    }
}

/// jsonwebtoken's checks narrowed to the signature under `alg`: no claim is required or checked
/// there (see the module documentation).
fn signature_only(alg: Algorithm) -> Validation {
    let mut validation = Validation::new(alg);
    validation.required_spec_claims.clear();
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::mint::{mint_hs256, MintRequest};
    use crate::auth::test_support::{b64, ec_key, hand_token, hmac, rsa_key, second_ec_key, second_rsa_key, TestKey};
    use aws_lc_rs::hmac::{HMAC_SHA256, HMAC_SHA384};
    use serde_json::{json, Value};

    const NOW: i64 = 1_700_000_000;
    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
    const TENANT: &str = "72F988BF-86F1-41AF-91AB-2D7CD011DB47";
    const USER: &str = "FA8BF3DC-ECA7-46B7-BAD1-DB199B62AFC3";

    fn config() -> AuthConfig {
        AuthConfig {
            hs256_secret: Some(SECRET.to_vec()),
            ..AuthConfig::default()
        }
    }

    fn verifier() -> Verifier {
        Verifier::new(config()).unwrap()
    }

    fn jwks_verifier(keys: Vec<Value>, with_secret: bool) -> Verifier {
        let jwks = JwkSetKeys::from_json(&json!({ "keys": keys }).to_string(), "test").unwrap();
        let hs256_secret = with_secret.then(|| SECRET.to_vec());
        Verifier::new(AuthConfig {
            hs256_secret,
            jwks: Some(jwks),
            ..AuthConfig::default()
        })
        .unwrap()
    }

    fn request() -> MintRequest {
        MintRequest {
            tenant: TENANT.into(),
            user: Some(USER.into()),
            app: Some("presence-cli".into()),
            scopes: vec!["Presence.Read".into(), "Presence.ReadWrite".into()],
            roles: vec![],
            ttl_seconds: 3600,
            issuer: DEFAULT_ISSUER.into(),
            audience: DEFAULT_AUDIENCE.into(),
            now_unix: NOW,
        }
    }

    /// Valid delegated claims, for hand-built and JWKS-signed tokens.
    fn claims() -> Value {
        json!({
            "iss": DEFAULT_ISSUER,
            "aud": DEFAULT_AUDIENCE,
            "iat": NOW,
            "nbf": NOW,
            "exp": NOW + 3600,
            "tid": TENANT,
            "oid": USER,
            "scp": "Presence.Read",
        })
    }

    fn bearer(token: &str) -> String {
        format!("Bearer {token}")
    }

    fn verify_with(v: &Verifier, token: &str) -> Result<Principal, AuthError> {
        v.verify(Some(&bearer(token)), NOW)
    }

    fn hs256_token(claims: &Value) -> String {
        hand_token(
            &json!({"alg": "HS256", "typ": "JWT"}),
            claims,
            hmac(HMAC_SHA256, SECRET),
        )
    }

    #[test]
    fn other_threads_hit_the_cache_with_the_same_principal_and_window() {
        let v = std::sync::Arc::new(verifier());
        let token = mint_hs256(SECRET, &request()).unwrap();
        let header = format!("Bearer {token}");
        let first = v.verify_cached(Some(&header), NOW).unwrap();
        let ttl = request().ttl_seconds;
        let (v2, h2) = (v.clone(), header.clone());
        let (hit, expired) = std::thread::spawn(move || {
            let hit = v2.verify_cached(Some(&h2), NOW + 1).unwrap();
            let expired = v2.verify_cached(Some(&h2), NOW + ttl + DEFAULT_LEEWAY_SECONDS as i64 + 1);
            (hit, expired)
        })
        .join()
        .unwrap();
        assert_eq!(*hit, *first);
        assert_eq!(
            expired,
            Err(AuthError::Expired),
            "a thread's own copy re-checks exp too"
        );
        // A second verifier (another key) shares nothing with the first one's caches.
        let other = Verifier::new(AuthConfig {
            hs256_secret: Some(b"another-secret-another-secret-xx".to_vec()),
            ..config()
        })
        .unwrap();
        assert_eq!(other.verify_cached(Some(&header), NOW), Err(AuthError::BadSignature));
    }

    #[test]
    fn cached_tokens_still_expire_and_bad_tokens_are_never_cached() {
        let v = verifier();
        let token = mint_hs256(SECRET, &request()).unwrap();
        let header = format!("Bearer {token}");
        let first = v.verify_cached(Some(&header), NOW).unwrap();
        let again = v.verify_cached(Some(&header), NOW + 1).unwrap();
        assert!(
            std::sync::Arc::ptr_eq(&first, &again),
            "the second check is a cache hit"
        );
        assert_eq!(*first, v.verify(Some(&header), NOW).unwrap());
        let ttl = request().ttl_seconds;
        let expired = v.verify_cached(Some(&header), NOW + ttl + DEFAULT_LEEWAY_SECONDS as i64 + 1);
        assert_eq!(expired, Err(AuthError::Expired), "a cache hit re-checks exp");
        let tampered = format!("Bearer {}x", token);
        assert_eq!(v.verify_cached(Some(&tampered), NOW), Err(AuthError::BadSignature));
        assert_eq!(
            v.verify_cached(Some(&tampered), NOW),
            Err(AuthError::BadSignature),
            "failures are not cached"
        );
    }

    #[test]
    fn minted_token_roundtrips_with_lower_cased_guids() {
        let token = mint_hs256(SECRET, &request()).unwrap();
        let p = verify_with(&verifier(), &token).unwrap();
        assert_eq!(
            p,
            Principal {
                tenant: TENANT.to_ascii_lowercase(),
                user: Some(USER.to_ascii_lowercase()),
                app: Some("presence-cli".into()),
                scopes: vec!["Presence.Read".into(), "Presence.ReadWrite".into()],
                roles: vec![],
                expires_at: p.expires_at,
            }
        );
        assert!(p.is_delegated());
    }

    #[test]
    fn minted_application_token_roundtrips() {
        let req = MintRequest {
            user: None,
            scopes: vec![],
            roles: vec!["Presence.ReadWrite.All".into()],
            ..request()
        };
        let p = verify_with(&verifier(), &mint_hs256(SECRET, &req).unwrap()).unwrap();
        assert_eq!(p.user, None);
        assert_eq!(p.roles, ["Presence.ReadWrite.All"]);
        assert!(!p.is_delegated());
    }

    #[test]
    fn hand_built_hs256_token_verifies() {
        // Proves the hand-built helpers produce tokens that *would* pass, so the negative tests
        // below fail for the reason they claim.
        assert!(verify_with(&verifier(), &hs256_token(&claims())).is_ok());
    }

    /// jsonwebtoken's header has no `none` algorithm, so such a header is refused as malformed,
    /// before any key is looked up.
    #[test]
    fn unsigned_alg_none_tokens_are_refused() {
        for alg in ["none", "None", "NONE", "nOnE"] {
            let header = b64(json!({"alg": alg, "typ": "JWT"}).to_string());
            let payload = b64(claims().to_string());
            for token in [format!("{header}.{payload}."), format!("{header}.{payload}.c2ln")] {
                assert_eq!(verify_with(&verifier(), &token), Err(AuthError::Malformed), "{alg}");
            }
        }
        // Even against a verifier with JWKS keys only.
        let v = jwks_verifier(vec![rsa_key().jwk("r1")], false);
        let token = format!("{}.{}.", b64(r#"{"alg":"none"}"#), b64(claims().to_string()));
        assert_eq!(verify_with(&v, &token), Err(AuthError::Malformed));
    }

    #[test]
    fn other_algorithms_are_refused_even_when_correctly_signed() {
        let hs384 = hand_token(&json!({"alg": "HS384"}), &claims(), hmac(HMAC_SHA384, SECRET));
        assert_eq!(verify_with(&verifier(), &hs384), Err(AuthError::UnsupportedAlgorithm));
        for alg in ["HS512", "RS384", "RS512", "PS256", "ES384", "EdDSA"] {
            let token = hand_token(&json!({ "alg": alg }), &claims(), hmac(HMAC_SHA256, SECRET));
            assert_eq!(
                verify_with(&verifier(), &token),
                Err(AuthError::UnsupportedAlgorithm),
                "{alg:?}"
            );
        }
        // Names no algorithm has: the header itself is refused.
        for alg in ["hs256", "HS256 ", "", "RSA-OAEP"] {
            let token = hand_token(&json!({ "alg": alg }), &claims(), hmac(HMAC_SHA256, SECRET));
            assert_eq!(verify_with(&verifier(), &token), Err(AuthError::Malformed), "{alg:?}");
        }
    }

    #[test]
    fn a_crit_header_is_refused_even_when_correctly_signed() {
        let header = json!({"alg": "HS256", "typ": "JWT", "crit": ["exp"]});
        let token = hand_token(&header, &claims(), hmac(HMAC_SHA256, SECRET));
        assert_eq!(verify_with(&verifier(), &token), Err(AuthError::Malformed));
    }

    #[test]
    fn hs256_is_refused_without_a_configured_secret() {
        let v = jwks_verifier(vec![rsa_key().jwk("r1")], false);
        assert_eq!(
            verify_with(&v, &hs256_token(&claims())),
            Err(AuthError::UnsupportedAlgorithm)
        );
    }

    #[test]
    fn rs256_and_es256_are_refused_without_a_jwks() {
        for key in [rsa_key(), ec_key()] {
            let token = key.sign(&claims(), Some("k"));
            assert_eq!(verify_with(&verifier(), &token), Err(AuthError::UnsupportedAlgorithm));
        }
    }

    #[test]
    fn tampered_payload_fails_the_signature() {
        let token = mint_hs256(SECRET, &request()).unwrap();
        let parts: Vec<&str> = token.split('.').collect();
        let mut evil = claims();
        evil["scp"] = json!("Presence.Read.All Presence.ReadWrite");
        let forged = format!("{}.{}.{}", parts[0], b64(evil.to_string()), parts[2]);
        assert_eq!(verify_with(&verifier(), &forged), Err(AuthError::BadSignature));
        // Swapping the header for another algorithm's breaks the signature too.
        let header = b64(json!({"alg": "HS256", "typ": "JWT", "kid": "x"}).to_string());
        let reheaded = format!("{header}.{}.{}", parts[1], parts[2]);
        assert_eq!(verify_with(&verifier(), &reheaded), Err(AuthError::BadSignature));
        // A damaged signature.
        let truncated = &token[..token.len() - 2];
        assert_eq!(verify_with(&verifier(), truncated), Err(AuthError::BadSignature));
        let unsigned = format!("{}.{}.", parts[0], parts[1]);
        assert_eq!(verify_with(&verifier(), &unsigned), Err(AuthError::BadSignature));
    }

    #[test]
    fn wrong_secret_fails_the_signature() {
        let token = mint_hs256(b"another-secret-that-is-32-bytes!", &request()).unwrap();
        assert_eq!(verify_with(&verifier(), &token), Err(AuthError::BadSignature));
    }

    #[test]
    fn time_window_is_enforced_with_leeway() {
        let v = verifier();
        let token = mint_hs256(
            SECRET,
            &MintRequest {
                ttl_seconds: 600,
                ..request()
            },
        )
        .unwrap();
        assert!(v.verify(Some(&bearer(&token)), NOW + 600 + 59).is_ok());
        assert_eq!(v.verify(Some(&bearer(&token)), NOW + 600 + 60), Err(AuthError::Expired));
        assert_eq!(v.verify(Some(&bearer(&token)), NOW + 86_400), Err(AuthError::Expired));
        // nbf = NOW: a caller whose clock is ahead of ours by more than the leeway is refused.
        assert!(v.verify(Some(&bearer(&token)), NOW - 60).is_ok());
        assert_eq!(v.verify(Some(&bearer(&token)), NOW - 61), Err(AuthError::NotYetValid));
        let mut future = claims();
        future["nbf"] = json!(NOW + 3600);
        future["exp"] = json!(NOW + 7200);
        assert_eq!(verify_with(&v, &hs256_token(&future)), Err(AuthError::NotYetValid));
    }

    #[test]
    fn tokens_living_longer_than_the_maximum_are_refused() {
        let v = Verifier::new(AuthConfig {
            max_lifetime_seconds: 3600,
            ..config()
        })
        .unwrap();
        let mut c = claims();
        c["iat"] = json!(NOW);
        c["exp"] = json!(NOW + 3600);
        assert!(verify_with(&v, &hs256_token(&c)).is_ok());
        c["exp"] = json!(NOW + 3601);
        assert_eq!(verify_with(&v, &hs256_token(&c)), Err(AuthError::LifetimeTooLong(3600)));
        // Without iat or nbf the lifetime counts from now.
        let mut c = claims();
        c.as_object_mut().unwrap().remove("iat");
        c.as_object_mut().unwrap().remove("nbf");
        c["exp"] = json!(NOW + 7200);
        assert_eq!(verify_with(&v, &hs256_token(&c)), Err(AuthError::LifetimeTooLong(3600)));
    }

    #[test]
    fn leeway_is_configurable() {
        let v = Verifier::new(AuthConfig {
            leeway_seconds: 0,
            ..config()
        })
        .unwrap();
        let mut c = claims();
        c["exp"] = json!(NOW);
        assert_eq!(verify_with(&v, &hs256_token(&c)), Err(AuthError::Expired));
        c["exp"] = json!(NOW + 1);
        assert!(verify_with(&v, &hs256_token(&c)).is_ok());
        // A huge leeway saturates instead of overflowing.
        let v = Verifier::new(AuthConfig {
            leeway_seconds: u64::MAX,
            ..config()
        })
        .unwrap();
        assert!(verify_with(&v, &hs256_token(&c)).is_ok());
    }

    #[test]
    fn audience_and_issuer_are_checked() {
        let v = verifier();
        let wrong_aud = mint_hs256(
            SECRET,
            &MintRequest {
                audience: "api://else".into(),
                ..request()
            },
        )
        .unwrap();
        assert_eq!(verify_with(&v, &wrong_aud), Err(AuthError::WrongAudience));
        let wrong_iss = mint_hs256(
            SECRET,
            &MintRequest {
                issuer: "someone-else".into(),
                ..request()
            },
        )
        .unwrap();
        assert_eq!(verify_with(&v, &wrong_iss), Err(AuthError::WrongIssuer));
        let mut c = claims();
        c["aud"] = json!(["api://else", DEFAULT_AUDIENCE]);
        assert!(verify_with(&v, &hs256_token(&c)).is_ok());
        let custom = Verifier::new(AuthConfig {
            audiences: vec!["api://presence".into()],
            issuers: vec!["https://login.example/t/v2.0".into(), DEFAULT_ISSUER.into()],
            ..config()
        })
        .unwrap();
        assert_eq!(
            verify_with(&custom, &hs256_token(&claims())),
            Err(AuthError::WrongAudience)
        );
        c["aud"] = json!("api://presence");
        assert!(verify_with(&custom, &hs256_token(&c)).is_ok());
    }

    #[test]
    fn identity_claims_are_required() {
        let mut c = claims();
        c.as_object_mut().unwrap().remove("tid");
        assert_eq!(
            verify_with(&verifier(), &hs256_token(&c)),
            Err(AuthError::MissingClaim("tid"))
        );
        c["tid"] = json!("bad tenant");
        assert_eq!(
            verify_with(&verifier(), &hs256_token(&c)),
            Err(AuthError::InvalidClaim("tid"))
        );
        let mut c = claims();
        c.as_object_mut().unwrap().remove("oid");
        assert_eq!(
            verify_with(&verifier(), &hs256_token(&c)),
            Err(AuthError::DelegatedWithoutUser)
        );
        let mut c = claims();
        c.as_object_mut().unwrap().remove("exp");
        assert_eq!(
            verify_with(&verifier(), &hs256_token(&c)),
            Err(AuthError::MissingClaim("exp"))
        );
    }

    #[test]
    fn header_problems() {
        let v = verifier();
        assert_eq!(v.verify(None, NOW), Err(AuthError::MissingHeader));
        assert_eq!(v.verify(Some(""), NOW), Err(AuthError::MissingHeader));
        assert_eq!(v.verify(Some("Basic dXNlcjpwYXNz"), NOW), Err(AuthError::NotBearer));
        assert_eq!(v.verify(Some("Basic xxx"), NOW), Err(AuthError::NotBearer));
        let token = mint_hs256(SECRET, &request()).unwrap();
        assert_eq!(v.verify(Some(&token), NOW), Err(AuthError::NotBearer));
        assert!(v.verify(Some(&format!("bearer {token}")), NOW).is_ok());
        for garbage in [
            "Bearer",
            "Bearer garbage",
            "Bearer a.b",
            "Bearer a.b.c",
            "Bearer ....",
            "Bearer 🦀.🦀.🦀",
        ] {
            assert_eq!(v.verify(Some(garbage), NOW), Err(AuthError::Malformed), "{garbage:?}");
        }
    }

    #[test]
    fn oversized_tokens_are_malformed_before_any_crypto() {
        let mut c = claims();
        c["padding"] = json!("x".repeat(9000));
        assert_eq!(verify_with(&verifier(), &hs256_token(&c)), Err(AuthError::Malformed));
    }

    #[test]
    fn payload_that_is_not_a_json_object_is_malformed_even_if_signed() {
        let input = format!("{}.{}", b64(r#"{"alg":"HS256"}"#), b64("[1,2,3]"));
        let sig = hmac(HMAC_SHA256, SECRET)(input.as_bytes());
        let token = format!("{input}.{}", b64(sig));
        assert_eq!(verify_with(&verifier(), &token), Err(AuthError::Malformed));
    }

    fn check_jwks_roundtrip(key: &TestKey, other: &TestKey) {
        let v = jwks_verifier(
            vec![key.jwk("k1"), ec_key().jwk("ec-extra"), rsa_key().jwk("rsa-extra")],
            false,
        );
        let p = verify_with(&v, &key.sign(&claims(), Some("k1"))).unwrap();
        assert_eq!(p.tenant, TENANT.to_ascii_lowercase());
        assert_eq!(p.user.as_deref(), Some(USER.to_ascii_lowercase().as_str()));
        // Signed by a key that is not in the set, under the set's kid: bad signature.
        assert_eq!(
            verify_with(&v, &other.sign(&claims(), Some("k1"))),
            Err(AuthError::BadSignature)
        );
        // Unknown kid.
        assert_eq!(
            verify_with(&v, &key.sign(&claims(), Some("nope"))),
            Err(AuthError::UnknownKey)
        );
        // Tampered payload.
        let token = key.sign(&claims(), Some("k1"));
        let parts: Vec<&str> = token.split('.').collect();
        let mut evil = claims();
        evil["tid"] = json!("other-tenant");
        let forged = format!("{}.{}.{}", parts[0], b64(evil.to_string()), parts[2]);
        assert_eq!(verify_with(&v, &forged), Err(AuthError::BadSignature));
        // Claims are still checked after a good signature.
        let mut expired = claims();
        expired["exp"] = json!(NOW - 3600);
        assert_eq!(
            verify_with(&v, &key.sign(&expired, Some("k1"))),
            Err(AuthError::Expired)
        );
    }

    #[test]
    fn rs256_via_jwks() {
        check_jwks_roundtrip(rsa_key(), second_rsa_key());
    }

    #[test]
    fn es256_via_jwks() {
        check_jwks_roundtrip(ec_key(), second_ec_key());
    }

    #[test]
    fn token_without_kid_uses_the_only_fitting_key() {
        let v = jwks_verifier(vec![rsa_key().jwk("r1"), ec_key().jwk("e1")], false);
        assert!(verify_with(&v, &rsa_key().sign(&claims(), None)).is_ok());
        assert!(verify_with(&v, &ec_key().sign(&claims(), None)).is_ok());
        let v = jwks_verifier(vec![rsa_key().jwk("r1"), second_rsa_key().jwk("r2")], false);
        assert_eq!(
            verify_with(&v, &rsa_key().sign(&claims(), None)),
            Err(AuthError::UnknownKey)
        );
    }

    #[test]
    fn a_kid_cannot_move_a_key_to_another_algorithm() {
        let v = jwks_verifier(vec![rsa_key().jwk("r1"), ec_key().jwk("e1")], false);
        // ES256 token pointing at the RSA key's kid (and vice versa).
        assert_eq!(
            verify_with(&v, &ec_key().sign(&claims(), Some("r1"))),
            Err(AuthError::UnknownKey)
        );
        assert_eq!(
            verify_with(&v, &rsa_key().sign(&claims(), Some("e1"))),
            Err(AuthError::UnknownKey)
        );
    }

    #[test]
    fn algorithm_confusion_hs256_signed_with_the_public_key_fails() {
        for key in [rsa_key(), ec_key()] {
            let jwk = key.jwk("k1");
            // Every byte form an attacker might try as the "HMAC secret": DER, PEM, and the JWK text.
            let forms: Vec<Vec<u8>> = vec![
                key.public_der.clone(),
                key.public_pem.clone().into_bytes(),
                key.public_pem.trim_end().as_bytes().to_vec(),
                jwk.to_string().into_bytes(),
            ];
            for with_secret in [false, true] {
                let v = jwks_verifier(vec![jwk.clone()], with_secret);
                // The real key still works, so the failures below are about the forgery alone.
                assert!(verify_with(&v, &key.sign(&claims(), Some("k1"))).is_ok());
                for secret in &forms {
                    for kid in [None, Some("k1")] {
                        let mut header = json!({"alg": "HS256", "typ": "JWT"});
                        if let Some(kid) = kid {
                            header["kid"] = json!(kid);
                        }
                        let forged = hand_token(&header, &claims(), hmac(HMAC_SHA256, secret));
                        let want = if with_secret {
                            AuthError::BadSignature
                        } else {
                            AuthError::UnsupportedAlgorithm
                        };
                        assert_eq!(verify_with(&v, &forged), Err(want), "secret configured: {with_secret}");
                    }
                }
            }
        }
    }

    #[test]
    fn setup_errors() {
        assert!(matches!(
            Verifier::new(AuthConfig::default()),
            Err(AuthSetupError::NoKeys)
        ));
        let short = AuthConfig {
            hs256_secret: Some(vec![1; 31]),
            ..AuthConfig::default()
        };
        assert!(matches!(Verifier::new(short), Err(AuthSetupError::SecretTooShort)));
        let no_aud = AuthConfig {
            audiences: vec![String::new()],
            ..config()
        };
        assert!(matches!(Verifier::new(no_aud), Err(AuthSetupError::NoAudience)));
        let no_iss = AuthConfig {
            issuers: vec![],
            ..config()
        };
        assert!(matches!(Verifier::new(no_iss), Err(AuthSetupError::NoIssuer)));
    }

    #[test]
    fn debug_output_never_shows_the_secret() {
        let secret_text = String::from_utf8(SECRET.to_vec()).unwrap();
        let rendered = format!("{:?} {:?}", config(), verifier());
        assert!(!rendered.contains(&secret_text), "{rendered}");
        assert!(!rendered.contains("48, 49, 50"), "{rendered}");
        assert!(rendered.contains("[redacted]"));
    }

    #[test]
    fn no_input_panics_and_every_prefix_of_a_token_is_refused() {
        let v = jwks_verifier(vec![rsa_key().jwk("r1"), ec_key().jwk("e1")], true);
        let tokens = [
            mint_hs256(SECRET, &request()).unwrap(),
            rsa_key().sign(&claims(), Some("r1")),
            ec_key().sign(&claims(), Some("e1")),
        ];
        for token in &tokens {
            assert!(verify_with(&v, token).is_ok());
            for end in 0..token.len() {
                assert!(
                    verify_with(&v, &token[..end]).is_err(),
                    "prefix of length {end} accepted"
                );
            }
            // Change every character to another base64url character. Decoding is canonical (no
            // padding, no stray trailing bits), so each change alters the decoded bytes and must fail.
            for i in 0..token.len() {
                let mut bytes = token.clone().into_bytes();
                if bytes[i] == b'.' {
                    continue;
                }
                bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
                let mutated = String::from_utf8(bytes).unwrap();
                assert!(verify_with(&v, &mutated).is_err(), "mutation at {i} accepted");
            }
        }
        // Deterministic pseudo-random junk.
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..2000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let len = (seed % 120) as usize;
            let junk: String = (0..len)
                .map(|i| {
                    let alphabet = b"AZaz09-_.=+/ {}\"e\xc3";
                    alphabet[((seed >> (i % 56)) as usize + i) % alphabet.len()] as char
                })
                .collect();
            assert!(v.verify(Some(&format!("Bearer {junk}")), NOW).is_err());
            assert!(v.verify(Some(&junk), NOW).is_err());
        }
    }
}
