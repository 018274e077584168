//! The compact JWS structure (`header.payload.signature`) and its protected header, parsed before
//! any cryptography so that the algorithm and key can be chosen by *our* rules, not the token's.
//!
//! The header is parsed here exactly once; the signature is then checked over the very bytes this
//! parse saw, so there is no second, possibly different, reading of the header by a library.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::{Map, Value};

use super::error::AuthError;

/// Bound on the token length: real access tokens are 1–3 KiB, and every later step (base64, JSON,
/// signature) is linear in this, so an attacker cannot make one request expensive.
pub(crate) const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// A compact JWS split into its parts, with the protected header decoded.
#[derive(Debug)]
pub(crate) struct CompactJws<'a> {
    /// `base64url(header) "." base64url(payload)`: the bytes the signature covers.
    pub signing_input: &'a str,
    pub payload_b64: &'a str,
    pub signature_b64: &'a str,
    pub header: JoseHeader,
}

/// The protected-header fields that matter for verification.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct JoseHeader {
    /// Kept as the raw string so unknown algorithms (`none`, `HS384`, …) can be named and refused.
    pub alg: String,
    pub kid: Option<String>,
}

pub(crate) fn parse(token: &str) -> Result<CompactJws<'_>, AuthError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(AuthError::Malformed);
    }
    let base64url_or_dot = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.');
    if !token.bytes().all(base64url_or_dot) {
        return Err(AuthError::Malformed);
    }
    let mut parts = token.split('.');
    let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthError::Malformed);
    };
    // An empty signature is left to the algorithm check and then the signature check, so an
    // unsigned `alg: none` token is reported as the refused algorithm it is.
    if header_b64.is_empty() || payload_b64.is_empty() {
        return Err(AuthError::Malformed);
    }
    let header = parse_header(header_b64)?;
    let signing_input = &token[..header_b64.len() + 1 + payload_b64.len()];
    Ok(CompactJws {
        signing_input,
        payload_b64,
        signature_b64,
        header,
    })
}

/// Decodes one base64url part (no padding, canonical trailing bits) into a JSON object.
pub(crate) fn decode_json_object(part_b64: &str) -> Result<Map<String, Value>, AuthError> {
    let bytes = URL_SAFE_NO_PAD.decode(part_b64).map_err(|_| AuthError::Malformed)?;
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(AuthError::Malformed),
    }
}

fn parse_header(header_b64: &str) -> Result<JoseHeader, AuthError> {
    let map = decode_json_object(header_b64)?;
    // RFC 7515 §4.1.11: a `crit` header lists extensions the recipient must understand, and we
    // understand none, so such a token must be rejected rather than half-understood.
    if map.contains_key("crit") {
        return Err(AuthError::Malformed);
    }
    let alg = match map.get("alg") {
        Some(Value::String(alg)) => alg.clone(),
        _ => return Err(AuthError::Malformed),
    };
    let kid = match map.get("kid") {
        None => None,
        Some(Value::String(kid)) => Some(kid.clone()),
        Some(_) => return Err(AuthError::Malformed),
    };
    Ok(JoseHeader { alg, kid })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(json: &str) -> String {
        URL_SAFE_NO_PAD.encode(json)
    }

    #[test]
    fn splits_a_well_formed_token() {
        let h = b64(r#"{"alg":"RS256","kid":"k1","typ":"JWT"}"#);
        let p = b64(r#"{"tid":"t"}"#);
        let token = format!("{h}.{p}.c2ln");
        let jws = parse(&token).unwrap();
        assert_eq!(
            jws.header,
            JoseHeader {
                alg: "RS256".into(),
                kid: Some("k1".into())
            }
        );
        assert_eq!(jws.signing_input, format!("{h}.{p}"));
        assert_eq!(jws.payload_b64, p);
        assert_eq!(jws.signature_b64, "c2ln");
    }

    #[test]
    fn an_unsigned_token_still_parses_so_its_algorithm_can_be_refused() {
        let token = format!("{}.{}.", b64(r#"{"alg":"none"}"#), b64("{}"));
        assert_eq!(parse(&token).unwrap().header.alg, "none");
    }

    #[test]
    fn rejects_bad_shapes() {
        let h = b64(r#"{"alg":"HS256"}"#);
        let p = b64("{}");
        let bad = [
            String::new(),
            "abc".into(),
            format!("{h}.{p}"),
            format!("{h}.{p}.s.extra"),
            format!(".{p}.s"),
            format!("{h}..s"),
            format!("{h}.{p}.s ig"),
            format!("{h}.{p}.s+g"),
            format!("{h}=.{p}.s"),
            format!("{h}.{p}.sé"),
            format!("{}.{p}.s", b64("[1,2]")),
            format!("{}.{p}.s", b64("not json")),
            format!("{}.{p}.s", b64(r#"{"alg":5}"#)),
            format!("{}.{p}.s", b64(r#"{"typ":"JWT"}"#)),
            format!("{}.{p}.s", b64(r#"{"alg":"HS256","kid":7}"#)),
            format!("{}.{p}.s", b64(r#"{"alg":"HS256","crit":["exp"]}"#)),
            // Invalid base64url: a single leftover character cannot encode a byte.
            format!("a{h}.{p}.s"),
        ];
        for token in bad {
            assert_eq!(parse(&token).err(), Some(AuthError::Malformed), "{token:?}");
        }
    }

    #[test]
    fn rejects_oversized_tokens() {
        let h = b64(r#"{"alg":"HS256"}"#);
        let fill = "A".repeat(MAX_TOKEN_BYTES);
        assert_eq!(parse(&format!("{h}.{fill}.s")).err(), Some(AuthError::Malformed));
    }

    #[test]
    fn payload_must_be_a_json_object() {
        assert!(decode_json_object(&b64(r#"{"a":1}"#)).is_ok());
        for bad in ["[]", "1", "\"s\"", "null", "{", ""] {
            assert_eq!(
                decode_json_object(&b64(bad)).err(),
                Some(AuthError::Malformed),
                "{bad:?}"
            );
        }
    }
}
