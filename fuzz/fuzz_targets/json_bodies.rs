//! Request bodies: arbitrary bytes through `serde_json::from_slice` into every request DTO, and
//! through the server's own body decoders (`http::body::json`, and `http::body::flat_json` with its
//! fast path for flat objects of strings), then every public conversion the handlers run on them.
//! Never panics; accepted durations are non-negative; whatever the fast path reads, serde reads
//! the same.
#![no_main]

use axum::body::Bytes;
use axum::http::{header, HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use presence_core::UserId;
use presenced::http::body::{self, FlatBody};
use presenced::http::flat_json;
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
    if let Ok(Some(b)) = body::flat_json::<SetPresenceBody>(&headers, &bytes) {
        set_presence(b);
    }
    if let Ok(Some(b)) = body::flat_json::<ClearPresenceBody>(&headers, &bytes) {
        clear_presence(b);
    }
    if let Ok(Some(b)) = body::flat_json::<SetPreferredBody>(&headers, &bytes) {
        set_preferred(b);
    }
    if let Ok(Some(b)) = body::json::<SetStatusMessageBody>(&headers, &bytes) {
        set_status_message(b);
    }
    let _ = body::json::<CreateBody>(&headers, &bytes);
    let _ = body::required(body::json::<GetPresencesBody>(&headers, &bytes).ok().flatten());
}

/// The write bodies' fast path never reads a body differently from serde.
fn fast_path_agrees_with_serde<'a, T: FlatBody<'a> + std::fmt::Debug + PartialEq>(data: &'a [u8]) {
    let Some(fast) = flat_json::string_members(data).and_then(|members| T::from_members(&members)) else {
        return;
    };
    let slow: T = serde_json::from_slice(data).expect("serde reads what the fast path read");
    assert_eq!(fast, slow);
}

fuzz_target!(|data: &[u8]| {
    decode_all(data);
    through_body_decoder(data);
    fast_path_agrees_with_serde::<SetPresenceBody>(data);
    fast_path_agrees_with_serde::<ClearPresenceBody>(data);
    fast_path_agrees_with_serde::<SetPreferredBody>(data);
});
