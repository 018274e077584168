//! Reading request bodies: size limit, content type, and JSON decoding into Graph-style 4xx errors.
use super::error::ApiError;
use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::Deserialize;

/// The largest legitimate body is `getPresencesByUserId` with 650 ids of up to 128 characters
/// (~90 KB); 256 KiB leaves room for whitespace and future fields while capping what one
/// request can make the server buffer.
pub const MAX_BODY_BYTES: usize = 256 * 1024;

/// Read the whole body, refusing early on a declared length over the limit. A body that arrives
/// in one piece (every SDK request) is returned as that piece: no collecting buffer, no copy.
pub async fn read(headers: &HeaderMap, body: Body) -> Result<Bytes, ApiError> {
    read_at_most(headers, body, MAX_BODY_BYTES).await
}

/// [`read`] with another limit (a `$batch` carries up to twenty bodies).
pub async fn read_at_most(headers: &HeaderMap, body: Body, limit: usize) -> Result<Bytes, ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::payload_too_large(limit));
    }
    let mut body = Limited::new(body, limit);
    let mut first = Bytes::new();
    let mut joined: Option<Vec<u8>> = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            if e.is::<LengthLimitError>() {
                ApiError::payload_too_large(limit)
            } else if crate::net::is_body_timeout(&*e) {
                ApiError::new(
                    axum::http::StatusCode::REQUEST_TIMEOUT,
                    "RequestTimeout",
                    "The request body was not received in time.",
                )
            } else {
                ApiError::bad_request("The request body could not be read.")
            }
        })?;
        // Trailers carry nothing a Graph request uses.
        let Ok(data) = frame.into_data() else { continue };
        match &mut joined {
            Some(all) => all.extend_from_slice(&data),
            None if first.is_empty() => first = data,
            None => joined = Some([&first[..], &data[..]].concat()),
        }
    }
    Ok(joined.map_or(first, Bytes::from))
}

/// Decode a JSON body. `None` for an empty body lets actions that take no parameters accept
/// the SDKs' body-less POST; others turn it into "body required".
pub fn json<'a, T: Deserialize<'a>>(headers: &HeaderMap, bytes: &'a Bytes) -> Result<Option<T>, ApiError> {
    object(headers, bytes)?.map(decode).transpose()
}

/// serde's reading of a checked object, its error as Graph's 400.
fn decode<'a, T: Deserialize<'a>>(object: &'a [u8]) -> Result<T, ApiError> {
    serde_json::from_slice(object).map_err(|e| ApiError::bad_request(format!("The request body is not valid: {e}.")))
}

/// The body, checked to be a JSON object sent as JSON (not yet parsed); `None` if it is empty.
fn object<'a>(headers: &HeaderMap, bytes: &'a Bytes) -> Result<Option<&'a [u8]>, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = content_type.split(';').next().unwrap_or("").trim();
    if !essence.eq_ignore_ascii_case("application/json") {
        return Err(ApiError::unsupported_media_type(format!(
            "The request body must be application/json (got '{}').",
            essence.chars().take(64).collect::<String>()
        )));
    }
    // serde's derived structs also accept a JSON array in field order; Graph bodies are objects,
    // and `["s1","Busy","InACall"]` must not be read as a setPresence.
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::bad_request("The request body must be a JSON object."));
    }
    Ok(Some(bytes))
}

pub fn required<T>(value: Option<T>) -> Result<T, ApiError> {
    value.ok_or_else(|| ApiError::bad_request("A JSON request body is required."))
}
