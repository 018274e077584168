//! Work location: the four actions through every addressing, the layering a read shows, and who
//! may call them.
mod common;

use common::*;
use reqwest::Method;
use serde_json::{json, Value};

const ALICE: &str = "aaaaaaaa-0000-0000-0000-00000000000a";
const BOB: &str = "bbbbbbbb-0000-0000-0000-00000000000b";

fn location(v: &Value) -> (String, String, Value) {
    let w = &v["workLocation"];
    (
        w["workLocationType"].as_str().unwrap_or_default().to_owned(),
        w["source"].as_str().unwrap_or_default().to_owned(),
        w["placeId"].clone(),
    )
}

fn loc(kind: &str, source: &str, place: Value) -> (String, String, Value) {
    (kind.to_owned(), source.to_owned(), place)
}

#[tokio::test]
async fn layers_through_every_addressing_and_version() {
    let server = Server::start(&[]);
    let alice = server.user_token(ALICE, &["Presence.ReadWrite", "Presence.Read.All"]);
    let read = || async { get(&server.url("/v1.0/me/presence"), &alice).await.json() };
    assert_eq!(location(&read().await), loc("unspecified", "none", Value::Null));

    let prefixes = [
        "/v1.0/me/presence".to_owned(),
        "/beta/me/presence".to_owned(),
        format!("/v1.0/users/{ALICE}/presence"),
        format!("/beta/users/{ALICE}/presence"),
        format!("/v1.0/communications/presences/{ALICE}"),
        format!("/beta/communications/presences/{ALICE}"),
    ];
    for prefix in &prefixes {
        let r = post(
            &server.url(&format!("{prefix}/setAutomaticLocation")),
            &alice,
            json!({ "workLocationType": "office", "placeId": "building-4" }),
        )
        .await;
        assert_eq!((r.status.as_u16(), r.text.as_str()), (200, ""), "{prefix}");
        assert_eq!(location(&read().await), loc("office", "automatic", json!("building-4")));

        // The body the Python SDK sends (keys in its order), enum value in another case.
        let r = post(
            &server.url(&format!("{prefix}/setManualLocation")),
            &alice,
            json!({ "placeId": null, "workLocationType": "REMOTE" }),
        )
        .await;
        assert_eq!(r.status, 200, "{prefix}: {}", r.text);
        assert_eq!(location(&read().await), loc("remote", "manual", Value::Null));

        // Clearing the automatic layer leaves the manual one; clearing it with the manual one
        // gone falls back to nothing.
        let r = call(
            Method::POST,
            &server.url(&format!("{prefix}/clearAutomaticLocation")),
            Some(&alice),
            None,
        )
        .await;
        assert_eq!(r.status, 200, "{prefix}: {}", r.text);
        assert_eq!(location(&read().await), loc("remote", "manual", Value::Null));
        post(
            &server.url(&format!("{prefix}/setAutomaticLocation")),
            &alice,
            json!({ "workLocationType": "timeOff" }),
        )
        .await;
        // clearLocation as the Python SDK sends it: no body, no content type.
        let r = call(
            Method::POST,
            &server.url(&format!("{prefix}/clearLocation")),
            Some(&alice),
            None,
        )
        .await;
        assert_eq!(r.status, 200, "{prefix}: {}", r.text);
        assert_eq!(location(&read().await), loc("unspecified", "none", Value::Null));
    }
}

#[tokio::test]
async fn every_reader_sees_the_location_and_a_change_bumps_the_sequence() {
    let server = Server::start(&[]);
    let alice = server.user_token(ALICE, &["Presence.ReadWrite"]);
    let app = server.app_token(&["Presence.Read.All"]);
    let before = get(&server.url(&format!("/v1.0/users/{ALICE}/presence")), &app)
        .await
        .json();
    let r = post(
        &server.url("/v1.0/me/presence/setManualLocation"),
        &alice,
        json!({ "workLocationType": "office", "placeId": "eb706f15-137e-4722-b4d1-b601481d9251" }),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let after = get(&server.url(&format!("/v1.0/users/{ALICE}/presence")), &app)
        .await
        .json();
    assert_eq!(
        location(&after),
        loc("office", "manual", json!("eb706f15-137e-4722-b4d1-b601481d9251"))
    );
    assert!(after["sequenceNumber"].as_str() > before["sequenceNumber"].as_str());
    // The bulk read carries it too.
    let bulk = post(
        &server.url("/v1.0/communications/getPresencesByUserId"),
        &app,
        json!({ "ids": [ALICE, BOB] }),
    )
    .await
    .json();
    assert_eq!(location(&bulk["value"][0]), location(&after));
    assert_eq!(location(&bulk["value"][1]), loc("unspecified", "none", Value::Null));
    // Setting the same location again changes nothing visible.
    post(
        &server.url("/v1.0/me/presence/setManualLocation"),
        &alice,
        json!({ "workLocationType": "office", "placeId": "eb706f15-137e-4722-b4d1-b601481d9251" }),
    )
    .await;
    let again = get(&server.url(&format!("/v1.0/users/{ALICE}/presence")), &app)
        .await
        .json();
    assert_eq!(again["sequenceNumber"], after["sequenceNumber"]);
}

#[tokio::test]
async fn only_the_signed_in_user_with_presence_readwrite_may_set_it() {
    let server = Server::start(&[]);
    let body = json!({ "workLocationType": "office" });
    let writer_app = server.app_token(&["Presence.ReadWrite.All"]);
    let r = post(
        &server.url(&format!("/v1.0/users/{ALICE}/presence/setManualLocation")),
        &writer_app,
        body.clone(),
    )
    .await;
    r.assert_error(403, "Forbidden");
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("application permissions"));
    let r = post(&server.url("/v1.0/me/presence/clearLocation"), &writer_app, json!({})).await;
    r.assert_error(400, "BadRequest");
    let reader = server.user_token(ALICE, &["Presence.Read", "Presence.Read.All"]);
    post(
        &server.url("/v1.0/me/presence/setManualLocation"),
        &reader,
        body.clone(),
    )
    .await
    .assert_error(403, "Forbidden");
    let alice = server.user_token(ALICE, &["Presence.ReadWrite"]);
    post(
        &server.url(&format!("/v1.0/users/{BOB}/presence/setAutomaticLocation")),
        &alice,
        body.clone(),
    )
    .await
    .assert_error(403, "Forbidden");
    post(
        &server.url(&format!("/v1.0/communications/presences/{BOB}/clearLocation")),
        &alice,
        json!({}),
    )
    .await
    .assert_error(403, "Forbidden");
}

#[tokio::test]
async fn bad_bodies_and_zones_are_graph_400s() {
    let server = Server::start(&[]);
    let alice = server.user_token(ALICE, &["Presence.ReadWrite"]);
    let url = server.url("/v1.0/me/presence/setManualLocation");
    for (body, code) in [
        (json!({}), "InvalidArgument"),
        (json!({ "placeId": "p" }), "InvalidArgument"),
        (json!({ "workLocationType": "unknownFutureValue" }), "InvalidArgument"),
        (json!({ "workLocationType": "home" }), "InvalidArgument"),
        (
            json!({ "workLocationType": "office", "placeId": "" }),
            "InvalidArgument",
        ),
        (
            json!({ "workLocationType": "office", "placeId": "x".repeat(257) }),
            "InvalidArgument",
        ),
        (json!({ "workLocationType": ["office"] }), "BadRequest"),
        (json!({ "workLocationType": "office", "placeId": 7 }), "BadRequest"),
    ] {
        post(&url, &alice, body.clone()).await.assert_error(400, code);
    }
    let r = reply(
        client()
            .post(&url)
            .bearer_auth(&alice)
            .header("Prefer", "outlook.timezone=\"Atlantis Standard Time\"")
            .json(&json!({ "workLocationType": "office" }))
            .send()
            .await
            .unwrap(),
    )
    .await;
    r.assert_error(400, "InvalidArgument");
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("outlook.timezone"));
    // A known zone, Windows or IANA, is accepted.
    for zone in ["\"Pacific Standard Time\"", "Asia/Kolkata"] {
        let r = reply(
            client()
                .post(&url)
                .bearer_auth(&alice)
                .header("Prefer", format!("return=minimal, outlook.timezone={zone}"))
                .json(&json!({ "workLocationType": "office" }))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(r.status, 200, "{zone}: {}", r.text);
    }
}
