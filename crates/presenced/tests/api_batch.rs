//! JSON batching: steps served as requests of their own (auth, permissions, rate limit, errors),
//! dependsOn ordering, and Graph's 400 for batches that are not well formed.
mod common;

use base64::Engine as _;
use common::*;
use reqwest::Method;
use serde_json::{json, Value};

const ALICE: &str = "aaaaaaaa-0000-0000-0000-00000000000a";
const BOB: &str = "bbbbbbbb-0000-0000-0000-00000000000b";

fn by_id<'a>(responses: &'a Value, id: &str) -> &'a Value {
    responses["responses"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == id)
        .unwrap_or_else(|| panic!("no response {id} in {responses}"))
}

#[tokio::test]
async fn a_batch_of_mixed_presence_calls_each_answered_as_if_alone() {
    let server = Server::start(&[]);
    let alice = server.user_token(ALICE, &["Presence.ReadWrite", "Presence.Read.All"]);
    let location = base64::engine::general_purpose::STANDARD.encode(r#"{"workLocationType":"office","placeId":"b4"}"#);
    let batch = json!({ "requests": [
        // Runs after "set", which it depends on, although it comes first.
        { "id": "read", "method": "GET", "url": "/me/presence?$select=availability,activity,workLocation",
          "dependsOn": ["set", "where"] },
        { "id": "set", "method": "POST", "url": format!("/v1.0/users/{ALICE}/presence/setPresence"),
          "headers": { "Content-Type": "application/json" },
          "body": { "sessionId": "app-1", "availability": "Busy", "activity": "InACall", "expirationDuration": "PT1H" } },
        // Kiota's form: base64 body and no content type.
        { "id": "where", "method": "POST", "url": "me/presence/setManualLocation", "body": location },
        { "id": "bulk", "method": "POST", "url": "/communications/getPresencesByUserId",
          "headers": { "content-type": "application/json" }, "body": { "ids": [BOB] } },
        { "id": "gone", "method": "POST", "url": "/me/presence/clearPresence",
          "headers": { "content-type": "application/json", "client-request-id": "step-gone" },
          "body": { "sessionId": "never-set" } },
        { "id": "after-gone", "method": "GET", "url": "/me/presence", "dependsOn": ["gone"] },
        { "id": "not-mine", "method": "POST", "url": format!("/users/{BOB}/presence/setManualLocation"),
          "body": { "workLocationType": "remote" } },
        { "id": "nowhere", "method": "GET", "url": "/me/presents" },
    ]});
    let r = post(&server.url("/v1.0/$batch"), &alice, batch).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let v = r.json();
    assert_eq!(v["responses"].as_array().unwrap().len(), 8);

    let set = by_id(&v, "set");
    assert_eq!(set["status"], 200);
    assert!(set.get("body").is_none(), "actions answer with no body: {set}");
    assert!(set["headers"]["request-id"].is_string());

    let read = by_id(&v, "read");
    assert_eq!(read["status"], 200, "{read}");
    assert_eq!(read["headers"]["Content-Type"], "application/json");
    assert_eq!(read["body"]["availability"], "Busy");
    assert_eq!(read["body"]["activity"], "InACall");
    assert_eq!(read["body"]["workLocation"]["placeId"], "b4");
    assert_eq!(read["body"]["id"], ALICE);
    assert!(read["body"].get("statusMessage").is_none());

    assert_eq!(by_id(&v, "where")["status"], 200);
    assert_eq!(by_id(&v, "bulk")["body"]["value"][0]["id"], BOB);

    let gone = by_id(&v, "gone");
    assert_eq!(gone["status"], 404);
    assert_eq!(gone["body"]["error"]["code"], "NotFound");
    assert_eq!(gone["body"]["error"]["innerError"]["client-request-id"], "step-gone");
    assert_eq!(gone["headers"]["client-request-id"], "step-gone");
    let after = by_id(&v, "after-gone");
    assert_eq!(after["status"], 424);
    assert_eq!(after["body"]["error"]["code"], "FailedDependency");

    let not_mine = by_id(&v, "not-mine");
    assert_eq!(not_mine["status"], 403);
    assert_eq!(not_mine["body"]["error"]["code"], "Forbidden");
    assert_eq!(by_id(&v, "nowhere")["status"], 404);

    // The writes really happened.
    assert_eq!(presence_of(&server, &alice, ALICE).await, pair("Busy", "InACall"));
}

#[tokio::test]
async fn beta_batches_and_step_urls_with_a_version_or_a_host() {
    let server = Server::start(&[]);
    let app = server.app_token(&["Presence.ReadWrite.All"]);
    let batch = json!({ "requests": [
        { "id": "1", "method": "POST", "url": format!("/v1.0/users/{ALICE}/presence/setPresence"),
          "headers": { "content-type": "application/json" },
          "body": { "sessionId": "s", "availability": "Away", "activity": "Away" } },
        { "id": "2", "method": "GET", "url": format!("{}/beta/communications/presences/{ALICE}", server.base),
          "depends_on": ["1"] },
    ]});
    let v = post(&server.url("/beta/$batch"), &app, batch).await.json();
    assert_eq!(by_id(&v, "1")["status"], 200, "{v}");
    let read = by_id(&v, "2");
    assert_eq!(read["body"]["availability"], "Away");
    assert!(read["body"]["@odata.context"]
        .as_str()
        .unwrap()
        .ends_with("/beta/$metadata#communications/presences/$entity"));
}

#[tokio::test]
async fn each_step_is_rate_limited_and_authorised_as_if_sent_alone() {
    let server = Server::start(&["--rate-limit", "3/60s"]);
    let app = server.app_token(&["Presence.Read.All"]);
    // The outer request's token applies to every step; a token in a step's headers is ignored.
    // (This step counts against the budget too: 1 of 3.)
    let write = json!({ "requests": [{ "id": "w", "method": "POST", "url": format!("/users/{ALICE}/presence/setPresence"),
        "headers": { "Authorization": format!("Bearer {}", server.app_token(&["Presence.ReadWrite.All"])) },
        "body": { "sessionId": "s", "availability": "Away", "activity": "Away" } }] });
    let v = post(&server.url("/v1.0/$batch"), &app, write).await.json();
    assert_eq!(by_id(&v, "w")["status"], 403, "{v}");
    let requests: Vec<Value> = (0..4)
        .map(|i| json!({ "id": i.to_string(), "method": "GET", "url": format!("/users/{ALICE}/presence") }))
        .collect();
    let v = post(&server.url("/v1.0/$batch"), &app, json!({ "requests": requests }))
        .await
        .json();
    let statuses: Vec<u64> = (0..4)
        .map(|i| by_id(&v, &i.to_string())["status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, [200, 200, 429, 429]);
    assert!(by_id(&v, "3")["headers"]["Retry-After"].is_string());
    assert_eq!(by_id(&v, "3")["body"]["error"]["code"], "TooManyRequests");
    // No token at all: the batch itself is refused.
    call(
        Method::POST,
        &server.url("/v1.0/$batch"),
        None,
        Some(json!({ "requests": [] })),
    )
    .await
    .assert_error(401, "InvalidAuthenticationToken");
}

#[tokio::test]
async fn malformed_batches_are_graph_400s() {
    let server = Server::start(&[]);
    let app = server.app_token(&["Presence.ReadWrite.All"]);
    let get = |id: &str| json!({ "id": id, "method": "GET", "url": format!("/users/{ALICE}/presence") });
    let cases = [
        json!({ "requests": (0..21).map(|i| get(&i.to_string())).collect::<Vec<_>>() }),
        json!({ "requests": [] }),
        json!({}),
        json!({ "requests": [get("1"), get("1")] }),
        json!({ "requests": [get("a"), get("A")] }),
        json!({ "requests": [
            { "id": "1", "method": "GET", "url": "/me/presence", "dependsOn": ["2"] },
            { "id": "2", "method": "GET", "url": "/me/presence", "dependsOn": ["1"] } ] }),
        json!({ "requests": [{ "id": "1", "method": "GET", "url": "/me/presence", "dependsOn": ["1"] }] }),
        json!({ "requests": [{ "id": "1", "method": "GET", "url": "/me/presence", "dependsOn": ["9"] }] }),
        json!({ "requests": [{ "id": "1", "method": "POST", "url": "/$batch", "body": { "requests": [] } }] }),
        json!({ "requests": [{ "id": "1", "method": "POST", "url": "/v1.0/$batch" }] }),
        json!({ "requests": [{ "id": "1", "url": "/me/presence" }] }),
        json!({ "requests": [{ "id": "", "method": "GET", "url": "/me/presence" }] }),
        json!({ "requests": [{ "id": 1, "method": "GET", "url": "/me/presence" }] }),
        json!({ "requests": "all of them" }),
    ];
    for body in cases {
        let r = post(&server.url("/v1.0/$batch"), &app, body.clone()).await;
        r.assert_error(400, "BadRequest");
        assert!(!r.text.contains("responses"), "{body}: {}", r.text);
    }
    // Over the batch's body limit (4 MiB): refused on the declared length, before it is read.
    let head = format!(
        "POST /v1.0/$batch HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {app}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        5 * 1024 * 1024
    );
    let answer = raw_http(&server, head.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("RequestEntityTooLarge"), "{answer}");
    call(Method::GET, &server.url("/v1.0/$batch"), Some(&app), None)
        .await
        .assert_error(405, "MethodNotAllowed");
}
