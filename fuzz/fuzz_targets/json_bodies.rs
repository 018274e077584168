//! Request bodies: arbitrary bytes through `serde_json::from_slice` into every request DTO, and
//! through the server's own body decoder (`http::body::json`: content type, empty body, objects
//! only, then serde), then every public conversion the handlers run on them.
//! Never panics; accepted durations are non-negative; the decoder accepts only JSON objects.
#![no_main]

use axum::body::Bytes;
use axum::http::{header, HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use presence_core::UserId;
use presenced::http::body;
use presenced::http::dto::{
    duration, session_id, ClearPresenceBody, GetPresencesBody, SetOutOfOfficeBody, SetPreferredBody, SetPresenceBody,
    SetStatusMessageBody,
};
use presenced::http::subscriptions::{CreateBody, UpdateBody};

fn check_duration(raw: Option<&str>) {
    if let Ok(Some(d)) = duration(raw) {
        assert!(!d.is_negative(), "duration({raw:?}) = {d:?}");
    }
}

fn set_presence(b: SetPresenceBody) {
    let _ = b.session_state();
    let _ = session_id(b.session_id.as_deref());
    check_duration(b.expiration_duration.as_deref());
}

fn clear_presence(b: ClearPresenceBody) {
    let _ = session_id(b.session_id.as_deref());
}

fn set_preferred(b: SetPreferredBody) {
    let _ = b.preferred_state();
    check_duration(b.expiration_duration.as_deref());
}

fn set_status_message(b: SetStatusMessageBody) {
    let _ = b.into_input();
}

fn set_out_of_office(b: SetOutOfOfficeBody) {
    let _ = b.into_settings();
}

/// What `presence::get_many` does with the ids before touching the store.
fn get_presences(b: GetPresencesBody) {
    for raw in b.ids.iter().flatten() {
        let _ = UserId::parse(raw);
    }
}

fn decode_all(data: &[u8]) {
    if let Ok(b) = serde_json::from_slice::<SetPresenceBody>(data) {
        set_presence(b);
    }
    if let Ok(b) = serde_json::from_slice::<ClearPresenceBody>(data) {
        clear_presence(b);
    }
    if let Ok(b) = serde_json::from_slice::<SetPreferredBody>(data) {
        set_preferred(b);
    }
    if let Ok(b) = serde_json::from_slice::<SetStatusMessageBody>(data) {
        set_status_message(b);
    }
    if let Ok(b) = serde_json::from_slice::<SetOutOfOfficeBody>(data) {
        set_out_of_office(b);
    }
    if let Ok(b) = serde_json::from_slice::<GetPresencesBody>(data) {
        get_presences(b);
    }
    let _ = serde_json::from_slice::<CreateBody>(data);
    let _ = serde_json::from_slice::<UpdateBody>(data);
}

/// The handlers' path: content-type check, whitespace-only body, then JSON.
fn through_body_decoder(data: &[u8]) {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    let bytes = Bytes::copy_from_slice(data);
    if let Ok(Some(b)) = body::json::<SetPresenceBody>(&headers, &bytes) {
        assert_object(data);
        set_presence(b);
    }
    if let Ok(Some(b)) = body::json::<ClearPresenceBody>(&headers, &bytes) {
        assert_object(data);
        clear_presence(b);
    }
    if let Ok(Some(b)) = body::json::<SetPreferredBody>(&headers, &bytes) {
        assert_object(data);
        set_preferred(b);
    }
    if let Ok(Some(b)) = body::json::<SetStatusMessageBody>(&headers, &bytes) {
        set_status_message(b);
    }
    let _ = body::json::<CreateBody>(&headers, &bytes);
    let _ = body::required(body::json::<GetPresencesBody>(&headers, &bytes).ok().flatten());
}

/// serde's derived structs also read a JSON array in field order; the decoder must not.
fn assert_object(data: &[u8]) {
    let first = data.iter().find(|b| !b.is_ascii_whitespace());
    assert_eq!(first, Some(&b'{'), "a body that is not a JSON object was accepted");
}

fuzz_target!(|data: &[u8]| {
    decode_all(data);
    through_body_decoder(data);
});
