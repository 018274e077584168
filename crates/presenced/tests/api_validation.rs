//! Bad input never hurts: every malformed request gets a Graph-style 4xx, nothing changes, and
//! the server keeps serving.
mod common;

use common::*;
use reqwest::Method;
use serde_json::json;

const USER: &str = "cccccccc-0000-0000-0000-00000000000c";

fn action(server: &Server, name: &str) -> String {
    server.url(&format!("/v1.0/users/{USER}/presence/{name}"))
}

async fn raw(
    server: &Server,
    method: Method,
    path_or_url: &str,
    token: &str,
    content_type: Option<&str>,
    body: impl Into<reqwest::Body>,
) -> Reply {
    let url = if path_or_url.starts_with("http") {
        path_or_url.to_owned()
    } else {
        server.url(path_or_url)
    };
    let mut request = client().request(method, url).bearer_auth(token).body(body);
    if let Some(ct) = content_type {
        request = request.header("content-type", ct);
    }
    reply(request.send().await.unwrap()).await
}

#[tokio::test]
async fn set_presence_validation() {
    let server = Server::start(&[]);
    let app = server.app_token(&["Presence.ReadWrite.All"]);
    let url = action(&server, "setPresence");
    let cases = [
        (
            json!({ "availability": "Busy", "activity": "InACall" }),
            "missing sessionId",
        ),
        (
            json!({ "sessionId": "", "availability": "Busy", "activity": "InACall" }),
            "empty sessionId",
        ),
        (
            json!({ "sessionId": "x".repeat(129), "availability": "Busy", "activity": "InACall" }),
            "over-long sessionId",
        ),
        (
            json!({ "sessionId": "a b", "availability": "Busy", "activity": "InACall" }),
            "bad characters",
        ),
        (
            json!({ "sessionId": "s", "activity": "InACall" }),
            "missing availability",
        ),
        (json!({ "sessionId": "s", "availability": "Busy" }), "missing activity"),
        (
            json!({ "sessionId": "s", "availability": "Sleeping", "activity": "InACall" }),
            "unknown availability",
        ),
        (
            json!({ "sessionId": "s", "availability": "Busy", "activity": "Napping" }),
            "unknown activity",
        ),
        (
            json!({ "sessionId": "s", "availability": "Busy", "activity": "Busy" }),
            "pair not allowed for setPresence",
        ),
        (
            json!({ "sessionId": "s", "availability": "Offline", "activity": "OffWork" }),
            "preferred-only pair",
        ),
        (
            json!({ "sessionId": "s", "availability": "Available", "activity": "Available", "expirationDuration": "PT4M" }),
            "below 5 minutes",
        ),
        (
            json!({ "sessionId": "s", "availability": "Available", "activity": "Available", "expirationDuration": "PT4H1M" }),
            "above 4 hours",
        ),
        (
            json!({ "sessionId": "s", "availability": "Available", "activity": "Available", "expirationDuration": "-PT10M" }),
            "negative",
        ),
        (
            json!({ "sessionId": "s", "availability": "Available", "activity": "Available", "expirationDuration": "P1M" }),
            "calendar month",
        ),
        (
            json!({ "sessionId": "s", "availability": "Available", "activity": "Available", "expirationDuration": "P1Y" }),
            "calendar year",
        ),
        (
            json!({ "sessionId": "s", "availability": "Available", "activity": "Available", "expirationDuration": "soon" }),
            "malformed",
        ),
        (
            json!({ "sessionId": "s", "availability": "Available", "activity": "Available", "expirationDuration": "-1 day, 23:55:00" }),
            "negative python timedelta",
        ),
    ];
    for (body, why) in cases {
        let r = post(&url, &app, body).await;
        r.assert_error(400, "InvalidArgument");
        assert!(!r.text.is_empty(), "{why}");
    }
    for (body, why) in [
        (
            json!({ "sessionId": 5, "availability": "Busy", "activity": "InACall" }),
            "number for a string",
        ),
        (
            json!({ "sessionId": "s", "availability": ["Busy"], "activity": "InACall" }),
            "array for a string",
        ),
        (json!([1, 2, 3]), "not an object"),
        (
            json!(["s1", "Busy", "InACall", "PT1H"]),
            "an array in field order is not an object",
        ),
        (json!("setPresence"), "a bare string"),
    ] {
        let r = post(&url, &app, body).await;
        assert_eq!(r.status, 400, "{why}: {}", r.text);
        r.assert_error(400, "BadRequest");
    }
    // Nothing was stored by any of the rejected calls.
    assert_eq!(presence_of(&server, &app, USER).await, pair("Offline", "Offline"));
}

#[tokio::test]
async fn durations_in_every_sdk_form_are_accepted() {
    let server = Server::start(&[]);
    let app = server.app_token(&["Presence.ReadWrite.All"]);
    let url = action(&server, "setPresence");
    for d in [
        "PT5M",
        "PT1H",
        "PT1H30M15S",
        "PT300.5S",
        "PT3H59M59.999S",
        "P0DT2H",
        "0:05:00",
        "1:00:00",
        "3:59:59.500000",
        "01:00:00",
        "0.02:00:00",
        "P0Y0M0DT1H0M0S",
        "PT240M",
    ] {
        let r = post(
            &url,
            &app,
            json!({ "sessionId": "s", "availability": "Busy", "activity": "InACall", "expirationDuration": d }),
        )
        .await;
        assert_eq!(r.status, 200, "{d}: {}", r.text);
    }
    let preferred = action(&server, "setUserPreferredPresence");
    for d in [
        "P1DT2H",
        "1 day, 2:00:00",
        "2 days, 0:00:00",
        "1.02:00:00",
        "P0Y0M1DT0H5M0S",
        "8:00:00",
    ] {
        let r = post(
            &preferred,
            &app,
            json!({ "availability": "Busy", "activity": "Busy", "expirationDuration": d }),
        )
        .await;
        assert_eq!(r.status, 200, "{d}: {}", r.text);
    }
    for (av, ac) in [("Busy", "InACall"), ("Available", "Available"), ("Offline", "Offline")] {
        let r = post(&preferred, &app, json!({ "availability": av, "activity": ac })).await;
        if (av, ac) == ("Available", "Available") {
            assert_eq!(r.status, 200);
        } else {
            r.assert_error(400, "InvalidArgument");
        }
    }
}

/// Write bodies borrow their strings from the request where they can; a value with JSON escapes
/// is decoded instead, and means the same as the unescaped text.
#[tokio::test]
async fn escaped_strings_in_write_bodies_mean_what_they_decode_to() {
    let server = Server::start(&[]);
    let app = server.app_token(&["Presence.ReadWrite.All"]);
    let body = r#"{"sessionId":"s\u0031","availability":"B\u0075sy","activity":"InA\u0043all","expirationDuration":"PT\u0035M"}"#;
    let r = raw(
        &server,
        Method::POST,
        &action(&server, "setPresence"),
        &app,
        Some("application/json"),
        body,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let presence = get(&server.url(&format!("/v1.0/users/{USER}/presence")), &app).await;
    assert_eq!(presence.json()["availability"], "Busy", "{}", presence.text);
    assert_eq!(presence.json()["activity"], "InACall");
    let cleared = post(&action(&server, "clearPresence"), &app, json!({ "sessionId": "s1" })).await;
    assert_eq!(cleared.status, 200, "the escaped id named session s1: {}", cleared.text);
    let body = r#"{"availability":"Do\u004eotDisturb","activity":"DoNotDisturb","expirationDuration":"PT1H"}"#;
    let url = action(&server, "setUserPreferredPresence");
    let r = raw(&server, Method::POST, &url, &app, Some("application/json"), body).await;
    assert_eq!(r.status, 200, "{}", r.text);
}

#[tokio::test]
async fn status_message_validation() {
    let server = Server::start(&[]);
    let app = server.app_token(&["Presence.ReadWrite.All"]);
    let url = action(&server, "setStatusMessage");
    let cases = [
        json!({}),
        json!({ "statusMessage": { "message": { "content": "x".repeat(281) } } }),
        json!({ "statusMessage": { "message": { "content": "<b>hi</b>", "contentType": "html" } } }),
        json!({ "statusMessage": { "message": { "content": "hi" }, "expiryDateTime": { "dateTime": "2099-01-01T00:00:00", "timeZone": "Mars/Olympus" } } }),
        json!({ "statusMessage": { "message": { "content": "hi" }, "expiryDateTime": { "dateTime": "2099-01-01T00:00:00+25:00", "timeZone": "UTC" } } }),
        json!({ "statusMessage": { "message": { "content": "hi" }, "expiryDateTime": { "dateTime": "2001-01-01T00:00:00.000Z", "timeZone": "UTC" } } }),
        json!({ "statusMessage": { "message": { "content": "hi" }, "expiryDateTime": { "dateTime": "tomorrow", "timeZone": "UTC" } } }),
        json!({ "statusMessage": { "message": { "content": "hi" }, "expiryDateTime": { "timeZone": "UTC" } } }),
        json!({ "statusMessage": { "message": { "content": "hi" }, "expiryDateTime": { "dateTime": "2001-01-01T00:00:00", "timeZone": "UTC" } } }),
    ];
    for body in cases {
        let r = post(&url, &app, body.clone()).await;
        r.assert_error(400, "InvalidArgument");
    }
    let ok = post(
        &url,
        &app,
        json!({ "statusMessage": { "message": { "content": "ü".repeat(280) } } }),
    )
    .await;
    assert_eq!(ok.status, 200, "280 characters (not bytes) fit: {}", ok.text);
}

#[tokio::test]
async fn malformed_bodies_content_types_and_sizes() {
    let server = Server::start(&[]);
    let app = server.app_token(&["Presence.ReadWrite.All"]);
    let url = action(&server, "setPresence");
    raw(
        &server,
        Method::POST,
        &url,
        &app,
        Some("application/json"),
        "{\"sessionId\": ",
    )
    .await
    .assert_error(400, "BadRequest");
    raw(
        &server,
        Method::POST,
        &url,
        &app,
        Some("application/json"),
        vec![0xff, 0xfe, 0x7b],
    )
    .await
    .assert_error(400, "BadRequest");
    raw(&server, Method::POST, &url, &app, Some("text/plain"), "{}")
        .await
        .assert_error(415, "UnsupportedMediaType");
    raw(&server, Method::POST, &url, &app, None, "{\"sessionId\":\"s\"}")
        .await
        .assert_error(415, "UnsupportedMediaType");
    raw(&server, Method::POST, &url, &app, Some("application/json"), "")
        .await
        .assert_error(400, "BadRequest");
    let ok = raw(
        &server,
        Method::POST,
        &url,
        &app,
        Some("application/json; charset=utf-8"),
        r#"{"sessionId":"s","availability":"Busy","activity":"InACall"}"#,
    )
    .await;
    assert_eq!(ok.status, 200, "charset parameter is fine: {}", ok.text);
    let huge = format!("{{\"sessionId\":\"{}\"}}", "a".repeat(300 * 1024));
    raw(&server, Method::POST, &url, &app, Some("application/json"), huge)
        .await
        .assert_error(413, "RequestEntityTooLarge");
    // Chunked, no declared length: still capped.
    let mut chunked = format!(
        "POST /v1.0/users/{USER}/presence/setPresence HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {app}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    .into_bytes();
    for _ in 0..40 {
        chunked.extend_from_slice(format!("{:x}\r\n", 8 * 1024).as_bytes());
        chunked.extend_from_slice(&[b' '; 8 * 1024]);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let response = raw_http(&server, &chunked).await;
    assert!(response.starts_with("HTTP/1.1 413"), "{response}");
    // clearUserPreferredPresence takes no body, or an empty object, but not garbage.
    let clear = action(&server, "clearUserPreferredPresence");
    raw(&server, Method::POST, &clear, &app, Some("application/json"), "[1]")
        .await
        .assert_error(400, "BadRequest");
    assert_eq!(presence_of(&server, &app, USER).await, pair("Busy", "InACall"));
}

#[tokio::test]
async fn bad_paths_methods_and_ids() {
    let server = Server::start(&[]);
    let app = server.app_token(&["Presence.ReadWrite.All"]);
    let long_id = "u".repeat(129);
    let not_found = [
        "/v1.0/users",
        "/v2.0/me/presence",
        "/v1.0/users/x/presence/fly",
        "/v1.0/users/x/mailbox",
        "/",
        "/v1.0",
        "/v1.0/communications/presences",
    ];
    for path in not_found {
        raw(&server, Method::GET, path, &app, None, "")
            .await
            .assert_error(404, "NotFound");
    }
    raw(&server, Method::POST, "/v1.0/users/x/presence", &app, None, "")
        .await
        .assert_error(405, "MethodNotAllowed");
    raw(&server, Method::DELETE, "/v1.0/users/x/presence", &app, None, "")
        .await
        .assert_error(405, "MethodNotAllowed");
    raw(
        &server,
        Method::GET,
        "/v1.0/users/x/presence/setPresence",
        &app,
        None,
        "",
    )
    .await
    .assert_error(405, "MethodNotAllowed");
    raw(
        &server,
        Method::PUT,
        "/v1.0/communications/getPresencesByUserId",
        &app,
        None,
        "",
    )
    .await
    .assert_error(405, "MethodNotAllowed");
    for bad in [long_id.as_str(), "a%20b", "%ff%fe", "a%2Fb", "quote'd"] {
        raw(
            &server,
            Method::GET,
            &format!("/v1.0/users/{bad}/presence"),
            &app,
            None,
            "",
        )
        .await
        .assert_error(400, "InvalidArgument");
    }
    let bulk = server.url("/v1.0/communications/getPresencesByUserId");
    post(&bulk, &app, json!({ "ids": ["ok", ""] }))
        .await
        .assert_error(400, "InvalidArgument");
    post(&bulk, &app, json!({ "ids": ["ok", long_id] }))
        .await
        .assert_error(400, "InvalidArgument");
    post(&bulk, &app, json!({ "ids": "ok" }))
        .await
        .assert_error(400, "BadRequest");
    post(&bulk, &app, json!({})).await.assert_error(400, "InvalidArgument");
    // Still healthy after all of that.
    assert_eq!(call(Method::GET, &server.url("/healthz"), None, None).await.status, 200);
}

#[tokio::test]
async fn throttling_per_application_per_tenant() {
    let server = Server::start(&["--rate-limit", "5/30s"]);
    let app = server.app_token(&["Presence.ReadWrite.All"]);
    let other_app = server.token_for(TENANT, None, &[], &["Presence.ReadWrite.All"]);
    let url = server.url(&format!("/v1.0/users/{USER}/presence"));
    for _ in 0..5 {
        assert_eq!(get(&url, &app).await.status, 200);
    }
    let throttled = get(&url, &app).await;
    throttled.assert_error(429, "TooManyRequests");
    let retry_after: u64 = throttled.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=30).contains(&retry_after), "{retry_after}");
    // Writes share the budget; health checks and other tenants do not.
    let body = json!({ "sessionId": "s", "availability": "Busy", "activity": "InACall" });
    post(&action(&server, "setPresence"), &app, body)
        .await
        .assert_error(429, "TooManyRequests");
    assert_eq!(call(Method::GET, &server.url("/healthz"), None, None).await.status, 200);
    let other_tenant = server.token_for(
        "33333333-3333-3333-3333-333333333333",
        None,
        &[],
        &["Presence.Read.All"],
    );
    assert_eq!(get(&url, &other_tenant).await.status, 200);
    // Same app id ("test-app") in the same tenant shares the budget, whatever the token.
    get(&url, &other_app).await.assert_error(429, "TooManyRequests");
}
