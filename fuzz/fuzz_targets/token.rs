//! Bearer tokens: `auth::Verifier::verify` against a verifier holding an HS256 secret and a JWKS
//! with one RS256 key (generated at start-up, so no private key is checked in).
//!
//! Input layout: the first byte picks a mode (modulo 5).
//! - 0 `raw`: the rest, as text, is the whole `Authorization` value and also follows `Bearer `.
//! - Otherwise bytes 1..9 are `now` (little-endian i64) and the rest is split on NUL bytes into
//!   `header JSON \0 payload JSON [\0 signature bytes]`, each part base64url-encoded.
//!   - 1 `forged`: the signature is the fuzzer's own bytes.
//!   - 2 `hs256`: the harness signs with the real secret, so the claim checks are reached.
//!   - 3 `rs256`: the harness signs with the JWKS key's private half (RSASSA-PKCS1-v1_5 SHA-256).
//!   - 4 `confused`: HMAC-SHA256 keyed with the RSA *public* key (DER), the classic
//!     algorithm-confusion attack.
//!
//! Invariants: never panics; modes 0, 1 and 4 never verify (the fuzzer cannot produce a valid
//! signature, so any `Ok` is an authentication bypass); a token that verifies in modes 2 and 3
//! names the algorithm it was really signed with, and its principal is consistent (normalised
//! ids, a user exactly when there are delegated scopes).
#![no_main]

use std::sync::OnceLock;

use aws_lc_rs::encoding::AsDer as _;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::{KeyPair, KeySize};
use aws_lc_rs::signature::{KeyPair as _, RSA_PKCS1_SHA256};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use libfuzzer_sys::fuzz_target;
use presenced::auth::{normalize_id, AuthConfig, JwkSetKeys, Principal, Verifier};
use serde_json::{json, Value};

const SECRET: &[u8] = b"fuzz-secret-fuzz-secret-fuzz-secret!";
const NOW: i64 = 1_700_000_000;
const RSA_KID: &str = "rsa-1";

struct Fixture {
    verifier: Verifier,
    rsa: KeyPair,
    rsa_public_der: Vec<u8>,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let rsa = KeyPair::generate(KeySize::Rsa2048).expect("RSA key generation");
        let public = rsa.public_key();
        let jwk = json!({
            "kty": "RSA",
            "use": "sig",
            "alg": "RS256",
            "kid": RSA_KID,
            "n": URL_SAFE_NO_PAD.encode(public.modulus().big_endian_without_leading_zero()),
            "e": URL_SAFE_NO_PAD.encode(public.exponent().big_endian_without_leading_zero()),
        });
        let rsa_public_der = public.as_der().expect("public key DER").as_ref().to_vec();
        let jwks = JwkSetKeys::from_json(&json!({ "keys": [jwk] }).to_string(), "fuzz").expect("JWKS");
        let verifier = Verifier::new(AuthConfig {
            hs256_secret: Some(SECRET.to_vec()),
            jwks: Some(jwks),
            ..AuthConfig::default()
        })
        .expect("verifier");
        Fixture {
            verifier,
            rsa,
            rsa_public_der,
        }
    })
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn hmac(key: &[u8], msg: &[u8]) -> Vec<u8> {
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, key);
    aws_lc_rs::hmac::sign(&key, msg).as_ref().to_vec()
}

fn must_not_verify(what: &str, header: &str, now: i64) {
    if let Ok(p) = fixture().verifier.verify(Some(header), now) {
        panic!("{what}: a token without a valid signature verified: {header:?} at {now} -> {p:?}");
    }
}

/// The JSON object a base64url part decodes to, as the verifier reads it.
fn object(json: &[u8]) -> Option<serde_json::Map<String, Value>> {
    match serde_json::from_slice::<Value>(json) {
        Ok(Value::Object(map)) => Some(map),
        _ => None,
    }
}

fn check_principal(p: &Principal, header_json: &[u8], expected_alg: &str, token: &str) {
    let header = object(header_json).unwrap_or_else(|| panic!("verified with a non-object header: {token:?}"));
    assert_eq!(
        header.get("alg"),
        Some(&Value::String(expected_alg.to_owned())),
        "verified a token whose header names another algorithm than its signature: {token:?}"
    );
    assert!(!header.contains_key("crit"), "verified a token with `crit`: {token:?}");
    assert_eq!(normalize_id(&p.tenant).as_deref(), Some(p.tenant.as_str()), "{p:?}");
    for id in p.user.iter().chain(p.app.iter()) {
        assert_eq!(normalize_id(id).as_deref(), Some(id.as_str()), "{p:?}");
    }
    assert_eq!(
        p.user.is_some(),
        !p.scopes.is_empty(),
        "user iff delegated scopes: {p:?}"
    );
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let fixture = fixture();
    if mode % 5 == 0 {
        let text = String::from_utf8_lossy(rest);
        must_not_verify("raw", &text, NOW);
        must_not_verify("raw", &format!("Bearer {text}"), NOW);
        return;
    }

    let Some((now, rest)) = rest.split_at_checked(8) else {
        return;
    };
    let now = i64::from_le_bytes(now.try_into().unwrap());
    let mut parts = rest.splitn(3, |b| *b == 0);
    let header_json = parts.next().unwrap_or_default();
    let payload_json = parts.next().unwrap_or_default();
    let signature = parts.next().unwrap_or_default();
    let signing_input = format!("{}.{}", b64(header_json), b64(payload_json));

    match mode % 5 {
        1 => {
            let token = format!("{signing_input}.{}", b64(signature));
            must_not_verify("forged", &format!("Bearer {token}"), now);
        }
        2 => {
            let token = format!("{signing_input}.{}", b64(&hmac(SECRET, signing_input.as_bytes())));
            if let Ok(p) = fixture.verifier.verify(Some(&format!("Bearer {token}")), now) {
                check_principal(&p, header_json, "HS256", &token);
            }
        }
        3 => {
            let mut sig = vec![0; fixture.rsa.public_modulus_len()];
            fixture
                .rsa
                .sign(
                    &RSA_PKCS1_SHA256,
                    &SystemRandom::new(),
                    signing_input.as_bytes(),
                    &mut sig,
                )
                .expect("RSA signing");
            let token = format!("{signing_input}.{}", b64(&sig));
            if let Ok(p) = fixture.verifier.verify(Some(&format!("Bearer {token}")), now) {
                check_principal(&p, header_json, "RS256", &token);
                let header = object(header_json).unwrap();
                if let Some(kid) = header.get("kid") {
                    assert_eq!(kid, RSA_KID, "verified with a kid naming no key: {token:?}");
                }
            }
        }
        _ => {
            let sig = hmac(&fixture.rsa_public_der, signing_input.as_bytes());
            let token = format!("{signing_input}.{}", b64(&sig));
            must_not_verify("confused", &format!("Bearer {token}"), now);
        }
    }
});
