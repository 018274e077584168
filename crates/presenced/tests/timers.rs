//! Fades and expiries happen on time on a running server (timings shrunk to seconds by flags).
mod common;

use common::*;
use serde_json::json;
use std::time::{Duration, Instant};

/// Poll a user's presence until `deadline`, returning each distinct (availability, activity) seen.
async fn observe(server: &Server, token: &str, user: &str, for_how_long: Duration) -> Vec<(String, String)> {
    let mut seen: Vec<(String, String)> = Vec::new();
    let end = Instant::now() + for_how_long;
    while Instant::now() < end {
        let now = presence_of(server, token, user).await;
        if seen.last() != Some(&now) {
            seen.push(now);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    seen
}

const FAST: [&str; 4] = ["--fade-after", "1s", "--session-expiration-min", "1s"];

#[tokio::test]
async fn available_fades_to_idle_then_away_then_expires() {
    let server = Server::start(&FAST);
    let app = server.app_token(&["Presence.ReadWrite.All"]);
    let body =
        json!({ "sessionId": "s", "availability": "Available", "activity": "Available", "expirationDuration": "PT3S" });
    assert_eq!(
        post(&server.url("/v1.0/users/u/presence/setPresence"), &app, body)
            .await
            .status,
        200
    );
    let seen = observe(&server, &app, "u", Duration::from_millis(4500)).await;
    assert_eq!(
        seen,
        vec![
            pair("Available", "Available"),
            pair("AvailableIdle", "Inactive"),
            pair("Away", "Away"),
            pair("Offline", "Offline")
        ]
    );
}

#[tokio::test]
async fn keep_alive_holds_available() {
    let server = Server::start(&FAST);
    let app = server.app_token(&["Presence.ReadWrite.All"]);
    let body = json!({ "sessionId": "s", "availability": "Available", "activity": "Available", "expirationDuration": "PT10S" });
    let url = server.url("/v1.0/users/k/presence/setPresence");
    for _ in 0..8 {
        assert_eq!(post(&url, &app, body.clone()).await.status, 200);
        assert_eq!(presence_of(&server, &app, "k").await, pair("Available", "Available"));
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test]
async fn preferred_presence_and_status_message_expire() {
    let server = Server::start(&FAST);
    let app = server.app_token(&["Presence.ReadWrite.All"]);
    let url = |a: &str| server.url(&format!("/v1.0/users/p/presence/{a}"));
    post(
        &url("setPresence"),
        &app,
        json!({ "sessionId": "s", "availability": "Busy", "activity": "InACall", "expirationDuration": "PT1H" }),
    )
    .await;
    let r = post(
        &url("setUserPreferredPresence"),
        &app,
        json!({ "availability": "Away", "activity": "Away", "expirationDuration": "PT1S" }),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    #[allow(clippy::disallowed_methods)]
    let soon = jiff::Timestamp::now() + jiff::SignedDuration::from_millis(1500);
    let wall = jiff::tz::TimeZone::get("Europe/Berlin")
        .unwrap()
        .to_datetime(soon)
        .to_string();
    let r = post(
        &url("setStatusMessage"),
        &app,
        json!({ "statusMessage": { "message": { "content": "brb" },
        "expiryDateTime": { "dateTime": wall, "timeZone": "W. Europe Standard Time" } } }),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let first = get(&server.url("/v1.0/users/p/presence"), &app).await.json();
    assert_eq!(first["availability"], "Away");
    assert_eq!(first["statusMessage"]["message"]["content"], "brb");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let later = get(&server.url("/v1.0/users/p/presence"), &app).await.json();
    assert_eq!(
        (later["availability"].as_str(), later["activity"].as_str()),
        (Some("Busy"), Some("InACall"))
    );
    assert!(later["statusMessage"].is_null(), "{later}");
}
