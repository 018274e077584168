//! Test fixtures: RSA and EC key pairs generated once per test run, and hand-built tokens.
//!
//! Keys are generated rather than checked in so no private key ever sits in the repository, and
//! hand-built tokens let tests produce exactly the malicious shapes a library would refuse to make.

use std::sync::OnceLock;

use aws_lc_rs::encoding::AsDer as _;
use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair as _, ECDSA_P256_SHA256_FIXED_SIGNING};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::Value;

/// A generated key pair with everything the tests need from it.
pub(crate) struct TestKey {
    pub alg: Algorithm,
    pub encoding: EncodingKey,
    /// SubjectPublicKeyInfo DER of the public key: what an attacker would feed to HMAC.
    pub public_der: Vec<u8>,
    /// The same, PEM-armoured.
    pub public_pem: String,
    jwk: Value,
}

impl TestKey {
    /// The public key as a JWK with the given `kid` (and `alg`, as IdPs publish it).
    pub fn jwk(&self, kid: &str) -> Value {
        let mut jwk = self.jwk.clone();
        jwk["kid"] = Value::String(kid.to_owned());
        jwk
    }

    /// Signs `claims` with this key through jsonwebtoken, with an optional `kid` header.
    pub fn sign(&self, claims: &Value, kid: Option<&str>) -> String {
        let mut header = Header::new(self.alg);
        header.kid = kid.map(str::to_owned);
        jsonwebtoken::encode(&header, claims, &self.encoding).expect("signing with a test key")
    }
}

pub(crate) fn rsa_key() -> &'static TestKey {
    static KEY: OnceLock<TestKey> = OnceLock::new();
    KEY.get_or_init(generate_rsa)
}

pub(crate) fn second_rsa_key() -> &'static TestKey {
    static KEY: OnceLock<TestKey> = OnceLock::new();
    KEY.get_or_init(generate_rsa)
}

pub(crate) fn ec_key() -> &'static TestKey {
    static KEY: OnceLock<TestKey> = OnceLock::new();
    KEY.get_or_init(generate_ec)
}

pub(crate) fn second_ec_key() -> &'static TestKey {
    static KEY: OnceLock<TestKey> = OnceLock::new();
    KEY.get_or_init(generate_ec)
}

fn generate_rsa() -> TestKey {
    let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
    let pkcs8 = pair.as_der().unwrap();
    // jsonwebtoken's RSA signer wants PKCS#1; its PEM reader unwraps PKCS#8 into that for us.
    let encoding = EncodingKey::from_rsa_pem(pem("PRIVATE KEY", pkcs8.as_ref()).as_bytes()).unwrap();
    let public_der = pair.public_key().as_der().unwrap().as_ref().to_vec();
    finish(Algorithm::RS256, encoding, public_der)
}

fn generate_ec() -> TestKey {
    let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap();
    let pkcs8 = pair.to_pkcs8v1().unwrap();
    let encoding = EncodingKey::from_ec_der(pkcs8.as_ref());
    let public_der = pair.public_key().as_der().unwrap().as_ref().to_vec();
    finish(Algorithm::ES256, encoding, public_der)
}

fn finish(alg: Algorithm, encoding: EncodingKey, public_der: Vec<u8>) -> TestKey {
    let jwk = Jwk::from_encoding_key(&encoding, alg).unwrap();
    let jwk = serde_json::to_value(jwk).unwrap();
    let public_pem = pem("PUBLIC KEY", &public_der);
    TestKey {
        alg,
        encoding,
        public_der,
        public_pem,
        jwk,
    }
}

fn pem(label: &str, der: &[u8]) -> String {
    let body = STANDARD.encode(der);
    let lines: Vec<&str> = body
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!("-----BEGIN {label}-----\n{}\n-----END {label}-----\n", lines.join("\n"))
}

pub(crate) fn b64(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Builds `header.payload.` and signs it with HMAC-SHA256 over arbitrary key bytes, whatever the
/// header claims: the tool for algorithm-confusion and tampering tests.
pub(crate) fn hand_token(header: &Value, claims: &Value, sign: impl FnOnce(&[u8]) -> Vec<u8>) -> String {
    let input = format!("{}.{}", b64(header.to_string()), b64(claims.to_string()));
    let signature = sign(input.as_bytes());
    format!("{input}.{}", b64(signature))
}

/// HMAC with the given hash over `key`, as a token signer for `hand_token`.
pub(crate) fn hmac(alg: aws_lc_rs::hmac::Algorithm, key: &[u8]) -> impl FnOnce(&[u8]) -> Vec<u8> {
    let key = aws_lc_rs::hmac::Key::new(alg, key);
    move |msg| aws_lc_rs::hmac::sign(&key, msg).as_ref().to_vec()
}
