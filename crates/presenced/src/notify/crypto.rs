//! Encryption of rich change notifications, exactly as Microsoft Graph does it, so that receivers'
//! existing Graph decryption code (the .NET, Java and JavaScript samples in Graph's documentation)
//! works unchanged.
//!
//! Graph's documented algorithm ("Set up change notifications that include resource data",
//! <https://learn.microsoft.com/en-us/graph/change-notifications-with-resource-data>, and the
//! `changeNotificationEncryptedContent` resource; digest in `graph-presence-spec.md` §4.5):
//!
//! 1. A fresh symmetric key per notification item ("assume the symmetric key is different for each
//!    item"). The JavaScript sample decrypts with `aes-256-cbc`, so the key is 32 bytes.
//! 2. `data` = Base64(AES-CBC with PKCS#7 padding (`AES/CBC/PKCS5PADDING`) of the resource JSON), with
//!    the initialisation vector equal to the first 16 bytes of the symmetric key.
//! 3. `dataKey` = Base64(RSA-OAEP encryption of the symmetric key with SHA-1 and MGF1-SHA-1
//!    (`RSA/ECB/OAEPWithSHA1AndMGF1Padding`, .NET `RSAEncryptionPadding.OaepSHA1`)) under the public
//!    key of the subscriber's `encryptionCertificate`.
//! 4. `dataSignature` = Base64(HMAC-SHA256 keyed with the symmetric key over the encrypted `data`
//!    bytes); receivers verify it before decrypting.
//! 5. `encryptionCertificateId` echoes the subscriber's id; `encryptionCertificateThumbprint` is the
//!    certificate's SHA-1 thumbprint in upper-case hex, as .NET's `X509Certificate2.Thumbprint`
//!    prints it.
//!
//! The IV-from-key, SHA-1 OAEP and CBC-then-MAC choices are Graph's wire contract, not ours: changing
//! any of them would break every receiver.
//!
//! Certificates are checked once, when a subscription is created ([`EncryptionCertificate::parse`]):
//! Graph requires an RSA key of 2,048 to 4,096 bits and does not verify the issuer (self-signed
//! certificates are the norm), so only the structure and the public key are examined — not the
//! signature or validity dates. The certificate is parsed by rustls-webpki (already in the tree
//! for webhook TLS), which takes X.509 v3 certificates as every current tool makes them, and
//! refuses extensions marked critical that it does not know; the key is judged by aws-lc.

use std::fmt;
use std::sync::Arc;

use aws_lc_rs::cipher::{EncryptionContext, PaddedBlockEncryptingKey, UnboundCipherKey, AES_256};
use aws_lc_rs::iv::FixedLength;
use aws_lc_rs::rsa::{OaepPublicEncryptingKey, PublicEncryptingKey, OAEP_SHA1_MGF1SHA1};
use aws_lc_rs::signature::{self, ParsedPublicKey, VerificationAlgorithm};
use aws_lc_rs::{digest, hmac, rand};
use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use rustls::pki_types::CertificateDer;
use serde::Serialize;

/// Smallest RSA modulus Graph accepts for an encryption certificate.
pub const MIN_RSA_BITS: usize = 2048;
/// Largest RSA modulus Graph accepts for an encryption certificate.
pub const MAX_RSA_BITS: usize = 4096;
/// Real encryption certificates are 1–2 KiB of base64; the cap bounds the work an unauthenticated-ish
/// request body can make us do while leaving room for certificates with many extensions.
pub const MAX_ENCODED_CERTIFICATE_LEN: usize = 64 * 1024;

/// 32 bytes because Graph's receivers decrypt with AES-256 (`aes-256-cbc` in the JavaScript sample).
const SYMMETRIC_KEY_LEN: usize = 32;
const AES_BLOCK_LEN: usize = 16;

const PEM_BEGIN: &str = "-----BEGIN CERTIFICATE-----";
const PEM_END: &str = "-----END CERTIFICATE-----";

/// Subscribers paste certificates from many tools; some drop the `=` padding, and the padding carries
/// no information, so it is not worth a 400.
const LENIENT_BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Why a subscription's `encryptionCertificate` was refused. The messages are written to be returned
/// to the subscriber as the body of a `400 Bad Request`, and never echo the submitted bytes.
#[derive(Debug, thiserror::Error)]
pub enum CertificateError {
    #[error("encryptionCertificate is empty; it must be the Base64-encoded X.509 certificate")]
    Empty,
    #[error("encryptionCertificate is {len} characters long; the limit is {MAX_ENCODED_CERTIFICATE_LEN}")]
    TooLarge { len: usize },
    #[error("encryptionCertificate is not valid Base64 (whitespace ignored): {0}")]
    Base64(#[source] base64::DecodeError),
    #[error("encryptionCertificate PEM text is malformed: {0}")]
    Pem(&'static str),
    #[error("encryptionCertificate is not a DER-encoded X.509 v3 certificate ({0})")]
    Malformed(webpki::Error),
    #[error("encryptionCertificate must contain an RSA public key (rsaEncryption); it contains {algorithm}")]
    NotRsa { algorithm: &'static str },
    #[error(
        "encryptionCertificate has a {bits}-bit RSA key; Microsoft Graph requires {MIN_RSA_BITS} to {MAX_RSA_BITS} bits"
    )]
    KeySize { bits: usize },
    #[error("encryptionCertificate RSA public key was rejected: {0}")]
    InvalidRsaKey(String),
}

/// A failure while encrypting a notification. None of these depend on the input once the certificate
/// has been accepted; they mean the crypto library or the system random source failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    #[error("the system random number generator failed to produce a symmetric key")]
    Random,
    #[error("AES-256-CBC encryption of the notification content failed")]
    Aes,
    #[error("RSA-OAEP encryption of the symmetric key failed")]
    Rsa,
}

/// A subscriber's encryption certificate, parsed and checked once when the subscription is created.
///
/// Cheap to clone (shared), so delivery tasks can each hold one.
#[derive(Clone)]
pub struct EncryptionCertificate(Arc<Inner>);

struct Inner {
    der: Vec<u8>,
    key: OaepPublicEncryptingKey,
    key_bits: usize,
    thumbprint: String,
}

impl fmt::Debug for EncryptionCertificate {
    // The DER would flood logs; the thumbprint identifies the certificate just as well.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EncryptionCertificate")
            .field("thumbprint", &self.0.thumbprint)
            .field("key_bits", &self.0.key_bits)
            .finish_non_exhaustive()
    }
}

impl EncryptionCertificate {
    /// `encoded`: the subscription's `encryptionCertificate`: Base64 of the X.509 DER (whitespace and
    /// line breaks anywhere are ignored, `=` padding is optional), or one PEM
    /// `-----BEGIN CERTIFICATE-----` block (text around the block is ignored).
    ///
    /// The key must be RSA with a modulus of [`MIN_RSA_BITS`]`..=`[`MAX_RSA_BITS`] bits. Never panics.
    pub fn parse(encoded: &str) -> Result<Self, CertificateError> {
        if encoded.len() > MAX_ENCODED_CERTIFICATE_LEN {
            return Err(CertificateError::TooLarge { len: encoded.len() });
        }
        let base64_text: Vec<u8> = certificate_body(encoded)?
            .bytes()
            .filter(|b| !b.is_ascii_whitespace())
            .collect();
        if base64_text.is_empty() {
            return Err(CertificateError::Empty);
        }
        let der = LENIENT_BASE64.decode(&base64_text).map_err(CertificateError::Base64)?;
        Self::from_der(der)
    }

    fn from_der(der: Vec<u8>) -> Result<Self, CertificateError> {
        let certificate = CertificateDer::from(der.as_slice());
        let parsed = webpki::EndEntityCert::try_from(&certificate).map_err(CertificateError::Malformed)?;
        let spki = parsed.subject_public_key_info();
        let (public, key_bits) = rsa_public_key(spki.as_ref())?;
        let key = OaepPublicEncryptingKey::new(public)
            .map_err(|_| CertificateError::InvalidRsaKey("not usable for RSA-OAEP encryption".to_owned()))?;
        // What every notification will do with it, once now, so a key aws-lc parses but cannot
        // encrypt to (an RSASSA-PSS key, say) is a 400 here rather than a failed delivery later.
        let mut wrapped = vec![0u8; key.ciphertext_size()];
        key.encrypt(&OAEP_SHA1_MGF1SHA1, &[0u8; SYMMETRIC_KEY_LEN], &mut wrapped, None)
            .map_err(|_| CertificateError::InvalidRsaKey("not usable for RSA-OAEP encryption".to_owned()))?;
        let thumbprint = sha1_upper_hex(&der);
        Ok(Self(Arc::new(Inner {
            der,
            key,
            key_bits,
            thumbprint,
        })))
    }

    /// Upper-case hex SHA-1 of the certificate DER (what Graph sends as
    /// `encryptionCertificateThumbprint`).
    pub fn thumbprint(&self) -> &str {
        &self.0.thumbprint
    }

    /// Size of the RSA modulus in bits.
    pub fn key_bits(&self) -> usize {
        self.0.key_bits
    }

    /// The certificate as DER.
    pub fn der(&self) -> &[u8] {
        &self.0.der
    }
}

/// One notification item's `encryptedContent`, field for field as Graph sends it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EncryptedContent {
    pub data: String,
    pub data_signature: String,
    pub data_key: String,
    pub encryption_certificate_id: String,
    pub encryption_certificate_thumbprint: String,
}

/// Encrypt one notification item's resource JSON: fresh random 32-byte symmetric key per call;
/// data = base64(AES-256-CBC-PKCS7(key, iv = key[0..16], plaintext)); dataKey =
/// base64(RSA-OAEP(SHA-1, MGF1-SHA-1)(public key, key)); dataSignature = base64(HMAC-SHA256(key =
/// symmetric key, message = the ciphertext bytes)).
pub fn encrypt(
    cert: &EncryptionCertificate,
    certificate_id: &str,
    plaintext: &[u8],
) -> Result<EncryptedContent, CryptoError> {
    let mut key = [0u8; SYMMETRIC_KEY_LEN];
    rand::fill(&mut key).map_err(|_| CryptoError::Random)?;
    let (ciphertext, signature) = seal(&key, plaintext)?;

    let oaep = &cert.0.key;
    let mut wrapped = vec![0u8; oaep.ciphertext_size()];
    let wrapped = oaep
        .encrypt(&OAEP_SHA1_MGF1SHA1, &key, &mut wrapped, None)
        .map_err(|_| CryptoError::Rsa)?;

    Ok(EncryptedContent {
        data: STANDARD.encode(&ciphertext),
        data_signature: STANDARD.encode(signature),
        data_key: STANDARD.encode(wrapped),
        encryption_certificate_id: certificate_id.to_owned(),
        encryption_certificate_thumbprint: cert.0.thumbprint.clone(),
    })
}

/// The symmetric half of [`encrypt`], split out so it can be checked against known answers.
/// Returns the ciphertext and the HMAC-SHA256 over it.
fn seal(key: &[u8; SYMMETRIC_KEY_LEN], plaintext: &[u8]) -> Result<(Vec<u8>, hmac::Tag), CryptoError> {
    // Graph derives the IV from the key instead of sending one; safe only because every key is
    // single-use, which `encrypt` guarantees by drawing a fresh key per call.
    let mut iv = [0u8; AES_BLOCK_LEN];
    iv.copy_from_slice(&key[..AES_BLOCK_LEN]);
    let cipher = UnboundCipherKey::new(&AES_256, key)
        .and_then(PaddedBlockEncryptingKey::cbc_pkcs7)
        .map_err(|_| CryptoError::Aes)?;
    let mut ciphertext = Vec::with_capacity(plaintext.len() + AES_BLOCK_LEN);
    ciphertext.extend_from_slice(plaintext);
    // `less_safe_` only because the IV is caller-chosen; see above for why that is Graph's contract.
    cipher
        .less_safe_encrypt(&mut ciphertext, EncryptionContext::Iv128(FixedLength::from(iv)))
        .map_err(|_| CryptoError::Aes)?;
    let signature = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), &ciphertext);
    Ok((ciphertext, signature))
}

fn sha1_upper_hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let digest = digest::digest(&digest::SHA1_FOR_LEGACY_USE_ONLY, bytes);
    let mut out = String::with_capacity(digest.as_ref().len() * 2);
    for &b in digest.as_ref() {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0x0f)]));
    }
    out
}

/// The Base64 text of the certificate: the input itself, or the body of its one PEM certificate block.
fn certificate_body(encoded: &str) -> Result<&str, CertificateError> {
    let Some((_, after_begin)) = encoded.split_once(PEM_BEGIN) else {
        if encoded.contains("-----BEGIN ") {
            // Most likely a public or private key pasted instead of the certificate.
            return Err(CertificateError::Pem(
                "found a PEM block that is not a CERTIFICATE; send the X.509 certificate",
            ));
        }
        return Ok(encoded);
    };
    let (body, after_end) = after_begin.split_once(PEM_END).ok_or(CertificateError::Pem(
        "the CERTIFICATE block has no -----END CERTIFICATE----- line",
    ))?;
    if after_end.contains(PEM_BEGIN) {
        // A chain: we could guess the leaf comes first, but Graph takes exactly one certificate.
        return Err(CertificateError::Pem(
            "more than one CERTIFICATE block; send only the encryption certificate",
        ));
    }
    Ok(body)
}

/// The RSA public key of a SubjectPublicKeyInfo and its modulus size, or why Graph would refuse it.
fn rsa_public_key(spki: &[u8]) -> Result<(PublicEncryptingKey, usize), CertificateError> {
    // Parsed once without aws-lc's own size limits (2,048 to 8,192 bits for encryption), so a
    // key outside Graph's range is reported with its size.
    let measured = aws_lc_rs::rsa::PublicKey::from_der(spki).map_err(|e| match e.description_() {
        "WrongAlgorithm" => CertificateError::NotRsa {
            algorithm: describe_key(spki),
        },
        other => CertificateError::InvalidRsaKey(other.to_owned()),
    })?;
    let modulus = measured.modulus();
    let modulus = modulus.big_endian_without_leading_zero();
    let bits = modulus.first().map_or(0, |top| {
        (modulus.len() - 1) * 8 + 8 - usize::try_from(top.leading_zeros()).unwrap_or(8)
    });
    if !(MIN_RSA_BITS..=MAX_RSA_BITS).contains(&bits) {
        return Err(CertificateError::KeySize { bits });
    }
    let public = PublicEncryptingKey::from_der(spki).map_err(|e| CertificateError::InvalidRsaKey(e.to_string()))?;
    Ok((public, bits))
}

/// Names the key types people try instead of RSA, so the 400 tells them what to change.
fn describe_key(spki: &[u8]) -> &'static str {
    let is = |algorithm: &'static dyn VerificationAlgorithm| ParsedPublicKey::new(algorithm, spki).is_ok();
    if is(&signature::ECDSA_P256_SHA256_ASN1)
        || is(&signature::ECDSA_P384_SHA384_ASN1)
        || is(&signature::ECDSA_P521_SHA512_ASN1)
    {
        "an elliptic-curve key"
    } else if is(&signature::ED25519) {
        "an Ed25519 key"
    } else {
        "a key of another algorithm"
    }
}

#[cfg(test)]
pub(crate) mod test_cert {
    //! Hand-assembled X.509 certificates around freshly generated keys, and a receiver-side decryptor
    //! written from Graph's documentation, for tests anywhere in the crate.
    //!
    //! Keys are generated rather than checked in so no private key ever sits in the repository, and
    //! assembling the DER by hand lets tests make shapes (tiny or huge RSA moduli, EC keys) that
    //! aws-lc-rs will not generate.

    use aws_lc_rs::cipher::{DecryptionContext, PaddedBlockDecryptingKey, UnboundCipherKey, AES_256};
    use aws_lc_rs::encoding::AsDer as _;
    use aws_lc_rs::iv::FixedLength;
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::rsa::{KeySize, OaepPrivateDecryptingKey, PrivateDecryptingKey, OAEP_SHA1_MGF1SHA1};
    use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair as _, ECDSA_P256_SHA256_ASN1_SIGNING, RSA_PKCS1_SHA256};
    use aws_lc_rs::{hmac, rsa};
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine as _;

    use super::EncryptedContent;

    /// 1.2.840.113549.1.1.11 sha256WithRSAEncryption, NULL parameters.
    pub(crate) const SHA256_WITH_RSA: &[u8] = &[
        0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b, 0x05, 0x00,
    ];
    /// 1.2.840.10045.4.3.2 ecdsa-with-SHA256, no parameters.
    const ECDSA_WITH_SHA256: &[u8] = &[0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02];

    /// DER tag-length-value.
    pub(crate) fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        let len = content.len();
        if len < 0x80 {
            out.push(u8::try_from(len).unwrap());
        } else {
            let bytes = len.to_be_bytes();
            let skip = bytes.iter().take_while(|&&b| b == 0).count();
            out.push(0x80 | u8::try_from(bytes.len() - skip).unwrap());
            out.extend_from_slice(&bytes[skip..]);
        }
        out.extend_from_slice(content);
        out
    }

    fn seq(parts: &[&[u8]]) -> Vec<u8> {
        tlv(0x30, &parts.concat())
    }

    fn name(common_name: &str) -> Vec<u8> {
        // 2.5.4.3 commonName, UTF8String.
        let attribute = seq(&[&[0x06, 0x03, 0x55, 0x04, 0x03], &tlv(0x0c, common_name.as_bytes())]);
        seq(&[&tlv(0x31, &attribute)])
    }

    /// An X.509 v3 certificate for `spki`, named `CN=presenced test`, valid 2025–2035, with a critical
    /// basicConstraints CA:FALSE extension, signed by `sign` under the algorithm `signature_algorithm`.
    pub(crate) fn certificate(spki: &[u8], signature_algorithm: &[u8], sign: impl FnOnce(&[u8]) -> Vec<u8>) -> Vec<u8> {
        let version = tlv(0xa0, &tlv(0x02, &[2]));
        let serial = tlv(0x02, &[0x3c, 0x5a, 0x01, 0x7e, 0x22, 0x90, 0x0b, 0x41]);
        let subject = name("presenced test");
        let validity = seq(&[&tlv(0x17, b"250101000000Z"), &tlv(0x17, b"350101000000Z")]);
        // 2.5.29.19 basicConstraints, critical, SEQUENCE {}.
        let basic_constraints = seq(&[
            &[0x06, 0x03, 0x55, 0x1d, 0x13],
            &[0x01, 0x01, 0xff],
            &tlv(0x04, &seq(&[])),
        ]);
        let extensions = tlv(0xa3, &seq(&[&basic_constraints]));
        let tbs = seq(&[
            &version,
            &serial,
            signature_algorithm,
            &subject,
            &validity,
            &subject,
            spki,
            &extensions,
        ]);
        let signature = sign(&tbs);
        let signature_value = tlv(0x03, &[&[0u8][..], &signature].concat());
        seq(&[&tbs, signature_algorithm, &signature_value])
    }

    /// A self-signed RSA certificate of `bits` (2048, 3072, 4096 or 8192: what aws-lc-rs generates).
    /// Returns the certificate DER and the private key as PKCS#8 DER.
    pub(crate) fn self_signed_rsa(bits: usize) -> (Vec<u8>, Vec<u8>) {
        let size = match bits {
            2048 => KeySize::Rsa2048,
            3072 => KeySize::Rsa3072,
            4096 => KeySize::Rsa4096,
            8192 => KeySize::Rsa8192,
            _ => panic!("aws-lc-rs generates only 2048/3072/4096/8192-bit RSA keys, not {bits}"),
        };
        let pair = rsa::KeyPair::generate(size).unwrap();
        let spki = pair.public_key().as_der().unwrap();
        let der = certificate(spki.as_ref(), SHA256_WITH_RSA, |tbs| rsa_sign(&pair, tbs));
        let pkcs8 = pair.as_der().unwrap().as_ref().to_vec();
        (der, pkcs8)
    }

    pub(crate) fn rsa_sign(pair: &rsa::KeyPair, message: &[u8]) -> Vec<u8> {
        let mut signature = vec![0; pair.public_modulus_len()];
        pair.sign(&RSA_PKCS1_SHA256, &SystemRandom::new(), message, &mut signature)
            .unwrap();
        signature
    }

    /// A self-signed certificate for a P-256 key, which Graph refuses for encryption.
    pub(crate) fn self_signed_ec_p256() -> Vec<u8> {
        let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_ASN1_SIGNING).unwrap();
        let spki = pair.public_key().as_der().unwrap();
        certificate(spki.as_ref(), ECDSA_WITH_SHA256, |tbs| {
            pair.sign(&SystemRandom::new(), tbs).unwrap().as_ref().to_vec()
        })
    }

    /// An rsaEncryption SubjectPublicKeyInfo with an odd modulus of exactly `bits` bits and the given
    /// public exponent (big-endian DER INTEGER content). Not a product of two primes: only for testing
    /// the checks made on the public key.
    pub(crate) fn synthetic_rsa_spki(bits: usize, exponent: &[u8]) -> Vec<u8> {
        let len = bits.div_ceil(8);
        let mut modulus = vec![0x5a; len];
        modulus[0] = 1 << ((bits - 1) % 8);
        modulus[len - 1] |= 1;
        if modulus[0] & 0x80 != 0 {
            modulus.insert(0, 0);
        }
        let rsa_public_key = seq(&[&tlv(0x02, &modulus), &tlv(0x02, exponent)]);
        let algorithm = seq(&[
            &[0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01],
            &[0x05, 0x00],
        ]);
        seq(&[&algorithm, &tlv(0x03, &[&[0u8][..], &rsa_public_key].concat())])
    }

    /// A certificate around `spki`, signed by a throwaway RSA key (Graph never checks the issuer).
    pub(crate) fn certificate_for_spki(spki: &[u8]) -> Vec<u8> {
        let signer = rsa::KeyPair::generate(KeySize::Rsa2048).unwrap();
        certificate(spki, SHA256_WITH_RSA, |tbs| rsa_sign(&signer, tbs))
    }

    /// An X.509 v1 certificate around `spki` (no version field, no extensions), signed by a
    /// throwaway RSA key.
    pub(crate) fn certificate_v1(spki: &[u8]) -> Vec<u8> {
        let signer = rsa::KeyPair::generate(KeySize::Rsa2048).unwrap();
        let subject = name("presenced test");
        let validity = seq(&[&tlv(0x17, b"250101000000Z"), &tlv(0x17, b"350101000000Z")]);
        let tbs = seq(&[
            &tlv(0x02, &[0x01]),
            SHA256_WITH_RSA,
            &subject,
            &validity,
            &subject,
            spki,
        ]);
        let signature = rsa_sign(&signer, &tbs);
        seq(&[&tbs, SHA256_WITH_RSA, &tlv(0x03, &[&[0u8][..], &signature].concat())])
    }

    /// PEM armour, 64 columns, as OpenSSL writes it.
    pub(crate) fn pem(der: &[u8]) -> String {
        let body = STANDARD.encode(der);
        let lines: Vec<&str> = body
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect();
        format!(
            "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
            lines.join("\n")
        )
    }

    /// What a Graph receiver does with `encryptedContent` (the documented steps: unwrap the key with
    /// RSA-OAEP-SHA1, verify the HMAC-SHA256 over the Base64-decoded data, then AES-CBC-decrypt with
    /// IV = the first 16 key bytes). Returns the plaintext, or which step refused.
    pub(crate) fn decrypt(content: &EncryptedContent, private_key_pkcs8: &[u8]) -> Result<Vec<u8>, &'static str> {
        let private = PrivateDecryptingKey::from_pkcs8(private_key_pkcs8).map_err(|_| "private key")?;
        let private = OaepPrivateDecryptingKey::new(private).map_err(|_| "private key")?;
        let wrapped = STANDARD.decode(&content.data_key).map_err(|_| "dataKey base64")?;
        let mut key = vec![0; private.min_output_size()];
        let key = private
            .decrypt(&OAEP_SHA1_MGF1SHA1, &wrapped, &mut key, None)
            .map_err(|_| "dataKey RSA-OAEP")?;
        let ciphertext = STANDARD.decode(&content.data).map_err(|_| "data base64")?;
        let signature = STANDARD
            .decode(&content.data_signature)
            .map_err(|_| "dataSignature base64")?;
        hmac::verify(&hmac::Key::new(hmac::HMAC_SHA256, key), &ciphertext, &signature)
            .map_err(|_| "dataSignature HMAC")?;
        let iv: [u8; 16] = key.get(..16).ok_or("key length")?.try_into().unwrap();
        let cipher = UnboundCipherKey::new(&AES_256, key)
            .and_then(PaddedBlockDecryptingKey::cbc_pkcs7)
            .map_err(|_| "AES-256 key")?;
        let mut in_out = ciphertext;
        let plaintext = cipher
            .decrypt(&mut in_out, DecryptionContext::Iv128(FixedLength::from(iv)))
            .map_err(|_| "AES-CBC")?;
        Ok(plaintext.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::OnceLock;

    use aws_lc_rs::rsa::{OaepPrivateDecryptingKey, PrivateDecryptingKey, OAEP_SHA1_MGF1SHA1};
    use aws_lc_rs::signature::{UnparsedPublicKey, RSA_PKCS1_2048_8192_SHA256};
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine as _;
    use proptest::prelude::*;

    use super::test_cert::{self, decrypt};
    use super::*;
    use aws_lc_rs::encoding::AsDer as _;
    use aws_lc_rs::signature::KeyPair as _;

    /// One 2048-bit certificate shared by most tests: key generation dominates test time.
    fn rsa_2048() -> &'static (Vec<u8>, Vec<u8>) {
        static CERT: OnceLock<(Vec<u8>, Vec<u8>)> = OnceLock::new();
        CERT.get_or_init(|| test_cert::self_signed_rsa(2048))
    }

    fn parse_der(der: &[u8]) -> Result<EncryptionCertificate, CertificateError> {
        EncryptionCertificate::parse(&STANDARD.encode(der))
    }

    const PRESENCE: &[u8] = br##"{"@odata.type":"#microsoft.graph.presence","id":"x","availability":"Busy"}"##;

    #[test]
    fn test_certificate_is_really_self_signed() {
        // Guards the fixture: a builder bug would otherwise make every other test meaningless.
        let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
        let spki = pair.public_key().as_der().unwrap();
        let mut signed = None;
        let der = test_cert::certificate(spki.as_ref(), test_cert::SHA256_WITH_RSA, |tbs| {
            let signature = test_cert::rsa_sign(&pair, tbs);
            signed = Some((tbs.to_vec(), signature.clone()));
            signature
        });
        let (tbs, signature) = signed.unwrap();
        UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, pair.public_key().as_ref())
            .verify(&tbs, &signature)
            .expect("the test certificate's signature verifies under its own key");
        let certificate = CertificateDer::from(der.as_slice());
        let parsed = webpki::EndEntityCert::try_from(&certificate).unwrap();
        assert_eq!(parsed.subject_public_key_info().as_ref(), spki.as_ref());
    }

    #[test]
    fn parse_reads_key_and_thumbprint() {
        let (der, _) = rsa_2048();
        let cert = parse_der(der).unwrap();
        assert_eq!(cert.key_bits(), 2048);
        assert_eq!(cert.der(), der.as_slice());
        let expected: String = digest::digest(&digest::SHA1_FOR_LEGACY_USE_ONLY, der)
            .as_ref()
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect();
        assert_eq!(cert.thumbprint(), expected);
        assert_eq!(cert.thumbprint().len(), 40);
        assert!(format!("{cert:?}").contains(&expected));
    }

    #[test]
    fn thumbprint_is_upper_case_sha1_hex() {
        // FIPS 180 test vector: SHA-1("abc").
        assert_eq!(sha1_upper_hex(b"abc"), "A9993E364706816ABA3E25717850C26C9CD0D89D");
    }

    #[test]
    fn parse_tolerates_whitespace_missing_padding_and_pem() {
        let (der, _) = rsa_2048();
        let expected = parse_der(der).unwrap().thumbprint().to_owned();
        let b64 = STANDARD.encode(der);
        let wrapped: String = b64
            .as_bytes()
            .chunks(76)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect::<Vec<_>>()
            .join("\r\n");
        let pem = test_cert::pem(der);
        let inputs = [
            format!("  \n{b64}\n\t "),
            wrapped,
            b64.trim_end_matches('=').to_owned(),
            pem.clone(),
            format!("subject=CN = presenced test\r\n{}", pem.replace('\n', "\r\n")),
        ];
        for input in inputs {
            let cert = EncryptionCertificate::parse(&input).unwrap_or_else(|e| panic!("{e}: {input:?}"));
            assert_eq!(cert.thumbprint(), expected);
        }
    }

    #[test]
    fn encrypt_round_trips_through_a_graph_receiver() {
        let (der, pkcs8) = rsa_2048();
        let cert = parse_der(der).unwrap();
        let content = encrypt(&cert, "my-cert-id", PRESENCE).unwrap();
        assert_eq!(content.encryption_certificate_id, "my-cert-id");
        assert_eq!(content.encryption_certificate_thumbprint, cert.thumbprint());
        assert_eq!(STANDARD.decode(&content.data_key).unwrap().len(), 256);
        assert_eq!(STANDARD.decode(&content.data_signature).unwrap().len(), 32);
        assert_eq!(
            STANDARD.decode(&content.data).unwrap().len(),
            PRESENCE.len().next_multiple_of(16)
        );
        assert_eq!(decrypt(&content, pkcs8).unwrap(), PRESENCE);
    }

    #[test]
    fn encrypt_works_with_a_4096_bit_key() {
        let (der, pkcs8) = test_cert::self_signed_rsa(4096);
        let cert = parse_der(&der).unwrap();
        assert_eq!(cert.key_bits(), 4096);
        let content = encrypt(&cert, "id", PRESENCE).unwrap();
        assert_eq!(STANDARD.decode(&content.data_key).unwrap().len(), 512);
        assert_eq!(decrypt(&content, &pkcs8).unwrap(), PRESENCE);
    }

    #[test]
    fn each_call_uses_a_fresh_key() {
        let (der, pkcs8) = rsa_2048();
        let cert = parse_der(der).unwrap();
        let unwrap_key = |content: &EncryptedContent| {
            let private = PrivateDecryptingKey::from_pkcs8(pkcs8).unwrap();
            let private = OaepPrivateDecryptingKey::new(private).unwrap();
            let wrapped = STANDARD.decode(&content.data_key).unwrap();
            let mut out = vec![0; private.min_output_size()];
            private
                .decrypt(&OAEP_SHA1_MGF1SHA1, &wrapped, &mut out, None)
                .unwrap()
                .to_vec()
        };
        let a = encrypt(&cert, "id", PRESENCE).unwrap();
        let b = encrypt(&cert, "id", PRESENCE).unwrap();
        let (key_a, key_b) = (unwrap_key(&a), unwrap_key(&b));
        assert_eq!(key_a.len(), 32);
        assert_ne!(key_a, key_b);
        assert_ne!(a.data, b.data);
        assert_ne!(a.data_signature, b.data_signature);
        assert_eq!(decrypt(&a, pkcs8).unwrap(), decrypt(&b, pkcs8).unwrap());
    }

    #[test]
    fn seal_matches_openssl_known_answer() {
        // Computed independently with OpenSSL 3.0:
        //   openssl enc -aes-256-cbc -K 0001…1f -iv 0001…0f < PRESENCE | base64
        //   openssl dgst -sha256 -mac HMAC -macopt hexkey:0001…1f -binary < ciphertext | base64
        // which pins IV = key[0..16], PKCS#7 padding and the HMAC input being the raw ciphertext.
        let key: [u8; 32] = std::array::from_fn(|i| u8::try_from(i).unwrap());
        let (ciphertext, signature) = seal(&key, PRESENCE).unwrap();
        assert_eq!(
            STANDARD.encode(&ciphertext),
            "6qYyi6sfwX/0xv3ZSeeB3PuGaHu6q8FZsQpOIWJzb/gtm8J59vFkzrGr7Yed40C6h9PNaVL7lNeHjquH0bW8HuUzjk1USJseDJ52HPJ3/5k="
        );
        assert_eq!(
            STANDARD.encode(signature),
            "DYMcxVO2ZsugCaj/nqGiqPSeo+FHIeTm+ctyxFS8nAs="
        );
    }

    #[test]
    fn tampering_is_detected() {
        let (der, pkcs8) = rsa_2048();
        let cert = parse_der(der).unwrap();
        let content = encrypt(&cert, "id", PRESENCE).unwrap();

        let mut data = STANDARD.decode(&content.data).unwrap();
        data[5] ^= 0x01;
        let tampered = EncryptedContent {
            data: STANDARD.encode(&data),
            ..content.clone()
        };
        assert_eq!(decrypt(&tampered, pkcs8), Err("dataSignature HMAC"));

        let mut signature = STANDARD.decode(&content.data_signature).unwrap();
        signature[0] ^= 0x80;
        let tampered = EncryptedContent {
            data_signature: STANDARD.encode(&signature),
            ..content.clone()
        };
        assert_eq!(decrypt(&tampered, pkcs8), Err("dataSignature HMAC"));

        let mut data_key = STANDARD.decode(&content.data_key).unwrap();
        data_key[100] ^= 0x01;
        let tampered = EncryptedContent {
            data_key: STANDARD.encode(&data_key),
            ..content
        };
        assert_eq!(decrypt(&tampered, pkcs8), Err("dataKey RSA-OAEP"));
    }

    #[test]
    fn wrong_private_key_cannot_decrypt() {
        let (der, _) = rsa_2048();
        let (_, other_pkcs8) = test_cert::self_signed_rsa(2048);
        let content = encrypt(&parse_der(der).unwrap(), "id", PRESENCE).unwrap();
        assert_eq!(decrypt(&content, &other_pkcs8), Err("dataKey RSA-OAEP"));
    }

    #[test]
    fn serializes_with_graph_field_names() {
        let content = EncryptedContent {
            data: "d".into(),
            data_signature: "s".into(),
            data_key: "k".into(),
            encryption_certificate_id: "i".into(),
            encryption_certificate_thumbprint: "t".into(),
        };
        assert_eq!(
            serde_json::to_value(&content).unwrap(),
            serde_json::json!({
                "data": "d",
                "dataSignature": "s",
                "dataKey": "k",
                "encryptionCertificateId": "i",
                "encryptionCertificateThumbprint": "t",
            })
        );
    }

    #[test]
    fn ec_certificate_is_rejected() {
        let err = parse_der(&test_cert::self_signed_ec_p256()).unwrap_err();
        assert!(matches!(err, CertificateError::NotRsa { .. }), "{err:?}");
        assert!(err.to_string().contains("elliptic-curve"), "{err}");
    }

    #[test]
    fn key_size_limits_are_graphs() {
        // aws-lc-rs cannot generate 1024-bit keys, so the small and large cases use synthetic moduli.
        for (bits, accepted) in [
            (1024, false),
            (2047, false),
            (2048, true),
            (4096, true),
            (4097, false),
            (8192, false),
        ] {
            let der = test_cert::certificate_for_spki(&test_cert::synthetic_rsa_spki(bits, &[1, 0, 1]));
            match parse_der(&der) {
                Ok(cert) => {
                    assert!(accepted, "{bits} bits accepted");
                    assert_eq!(cert.key_bits(), bits);
                }
                Err(CertificateError::KeySize { bits: reported }) => {
                    assert!(!accepted, "{bits} bits rejected");
                    assert_eq!(reported, bits);
                }
                Err(e) => panic!("{bits} bits: unexpected error {e}"),
            }
        }
        let message = CertificateError::KeySize { bits: 1024 }.to_string();
        assert!(
            message.contains("1024-bit") && message.contains("2048 to 4096"),
            "{message}"
        );
    }

    #[test]
    fn unusable_rsa_keys_are_rejected_by_aws_lc() {
        // The walker only measures the modulus; an even public exponent is for aws-lc to refuse.
        let der = test_cert::certificate_for_spki(&test_cert::synthetic_rsa_spki(2048, &[2]));
        let err = parse_der(&der).unwrap_err();
        assert!(matches!(err, CertificateError::InvalidRsaKey(_)), "{err:?}");
    }

    #[test]
    fn garbage_is_rejected_with_clear_errors() {
        let (der, _) = rsa_2048();
        assert!(matches!(EncryptionCertificate::parse(""), Err(CertificateError::Empty)));
        assert!(matches!(
            EncryptionCertificate::parse(" \r\n\t"),
            Err(CertificateError::Empty)
        ));
        assert!(matches!(
            EncryptionCertificate::parse("not base64!"),
            Err(CertificateError::Base64(_))
        ));
        assert!(matches!(
            EncryptionCertificate::parse(&"A".repeat(MAX_ENCODED_CERTIFICATE_LEN + 1)),
            Err(CertificateError::TooLarge { .. })
        ));
        assert!(matches!(
            EncryptionCertificate::parse("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----"),
            Err(CertificateError::Pem(_))
        ));
        assert!(matches!(
            EncryptionCertificate::parse("-----BEGIN CERTIFICATE-----\nAAAA\n"),
            Err(CertificateError::Pem(_))
        ));
        let two = format!("{}{}", test_cert::pem(der), test_cert::pem(der));
        assert!(matches!(
            EncryptionCertificate::parse(&two),
            Err(CertificateError::Pem(_))
        ));
        // Truncated Base64 text.
        let b64 = STANDARD.encode(der);
        assert!(EncryptionCertificate::parse(&b64[..b64.len() / 2 + 1]).is_err());
        // Valid DER but not a certificate: the bare SubjectPublicKeyInfo.
        let certificate = CertificateDer::from(der.as_slice());
        let spki = webpki::EndEntityCert::try_from(&certificate)
            .unwrap()
            .subject_public_key_info();
        assert!(matches!(parse_der(spki.as_ref()), Err(CertificateError::Malformed(_))));
        // Trailing bytes after the certificate.
        let trailing = [der.as_slice(), &[0]].concat();
        let err = parse_der(&trailing).unwrap_err();
        assert!(err.to_string().contains("TrailingData"), "{err}");
    }

    #[test]
    fn non_der_lengths_are_rejected() {
        // A SEQUENCE of length 3 written in long form (valid BER, not DER), an indefinite length,
        // an over-long length field.
        for der in [
            &[0x30, 0x81, 0x03, 0x02, 0x01, 0x00][..],
            &[0x30, 0x80, 0x00, 0x00],
            &[0x30, 0x85, 0x01, 0x00, 0x00, 0x00, 0x00],
        ] {
            assert!(matches!(parse_der(der), Err(CertificateError::Malformed(_))), "{der:?}");
        }
    }

    #[test]
    fn every_truncation_is_rejected() {
        let (der, _) = rsa_2048();
        for len in 0..der.len() {
            assert!(parse_der(&der[..len]).is_err(), "prefix of {len} bytes accepted");
        }
    }

    #[test]
    fn other_key_types_are_named() {
        let ed25519 = aws_lc_rs::signature::Ed25519KeyPair::generate().unwrap();
        let spki = ed25519.public_key().as_der().unwrap();
        let err = parse_der(&test_cert::certificate_for_spki(spki.as_ref())).unwrap_err();
        assert!(
            matches!(
                err,
                CertificateError::NotRsa {
                    algorithm: "an Ed25519 key"
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn rsassa_pss_keys_are_refused() {
        // An RSA key restricted to PSS signatures (id-RSASSA-PSS, no parameters): aws-lc reads it
        // as RSA, but it cannot be encrypted to.
        let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
        let algorithm = test_cert::tlv(
            0x30,
            &[0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0a],
        );
        let key = test_cert::tlv(0x03, &[&[0u8][..], pair.public_key().as_ref()].concat());
        let spki = test_cert::tlv(0x30, &[algorithm, key].concat());
        assert!(parse_der(&test_cert::certificate_for_spki(&spki)).is_err());
    }

    #[test]
    fn x509_v1_certificates_are_refused() {
        // webpki reads v3 only; every current tool (OpenSSL `req -x509`, .NET, Key Vault, Python's
        // cryptography) writes v3.
        let (der, _) = rsa_2048();
        let certificate = CertificateDer::from(der.as_slice());
        let spki = webpki::EndEntityCert::try_from(&certificate)
            .unwrap()
            .subject_public_key_info();
        let v1 = test_cert::certificate_v1(spki.as_ref());
        let err = parse_der(&v1).unwrap_err();
        assert!(err.to_string().contains("UnsupportedCertVersion"), "{err}");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn parse_never_panics_on_random_bytes(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
            let _ = parse_der(&bytes);
        }

        #[test]
        fn parse_never_panics_on_random_text(text in ".{0,400}") {
            let _ = EncryptionCertificate::parse(&text);
            let _ = EncryptionCertificate::parse(&format!("-----BEGIN CERTIFICATE-----{text}-----END CERTIFICATE-----"));
        }

        #[test]
        fn parse_never_panics_on_corrupted_certificates(
            edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
            cut in any::<prop::sample::Index>(),
        ) {
            let (der, _) = rsa_2048();
            let mut bytes = der.clone();
            for (at, value) in edits {
                let at = at.index(bytes.len());
                bytes[at] = value;
            }
            let _ = parse_der(&bytes);
            let _ = parse_der(&bytes[..cut.index(bytes.len())]);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        #[test]
        fn round_trips_any_plaintext(plaintext in prop::collection::vec(any::<u8>(), 0..100)) {
            let (der, pkcs8) = rsa_2048();
            let content = encrypt(&parse_der(der).unwrap(), "id", &plaintext).unwrap();
            prop_assert_eq!(decrypt(&content, pkcs8).unwrap(), plaintext);
        }
    }
}
