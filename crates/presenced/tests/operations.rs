//! Operating presenced: Prometheus metrics and structured logs.
mod common;

use common::*;
use reqwest::Method;
use serde_json::json;

#[tokio::test]
async fn metrics_count_requests_state_and_commits_without_ids() {
    let server = Server::start(&[]);
    let app = server.app_token(&["Presence.ReadWrite.All"]);
    for user in ["metric-user-1", "metric-user-2"] {
        let body =
            json!({ "sessionId": "s", "availability": "Busy", "activity": "InACall", "expirationDuration": "PT1H" });
        assert_eq!(
            post(
                &server.url(&format!("/v1.0/users/{user}/presence/setPresence")),
                &app,
                body
            )
            .await
            .status,
            200
        );
        assert_eq!(
            get(&server.url(&format!("/v1.0/users/{user}/presence")), &app)
                .await
                .status,
            200
        );
    }
    call(Method::GET, &server.url("/v1.0/me/presence"), None, None).await; // a 401
    let r = call(Method::GET, &server.url("/metrics"), None, None).await;
    assert_eq!(r.status, 200);
    assert!(r.headers["content-type"].to_str().unwrap().starts_with("text/plain"));
    let text = r.text;
    let has = |needle: &str| text.lines().any(|l| l.starts_with(needle));
    assert!(
        has(r#"presenced_http_requests_total{route="setPresence",method="POST",status="200"} 2"#),
        "{text}"
    );
    assert!(
        has(r#"presenced_http_requests_total{route="get_presence",method="GET",status="200"} 2"#),
        "{text}"
    );
    assert!(
        has(r#"presenced_http_requests_total{route="get_presence",method="GET",status="401"} 1"#),
        "{text}"
    );
    assert!(has("presenced_http_request_duration_seconds_bucket{"), "{text}");
    assert!(has("presenced_sessions 2"), "{text}");
    assert!(has("presenced_users 2"), "{text}");
    assert!(has("presenced_deadlines_pending 2"), "{text}");
    assert!(has("presenced_store_commit_duration_seconds_count"), "{text}");
    assert!(has("presenced_notification_queue_depth 0"), "{text}");
    assert!(!text.contains("metric-user"), "no user ids in metrics");
    assert!(!text.contains(TENANT), "no tenant ids in metrics");
}

#[tokio::test]
async fn json_logs_carry_the_request_id() {
    let server = Server::start(&["--log-format", "json", "--log-level", "info"]);
    let app = server.app_token(&["Presence.ReadWrite.All"]);
    let r = post(
        &server.url("/v1.0/users/u/presence/setPresence"),
        &app,
        json!({ "availability": "Busy" }),
    )
    .await;
    assert_eq!(r.status, 400);
    let request_id = r.headers["request-id"].to_str().unwrap().to_owned();
    // The log line is written before the response completes; give the file a moment.
    let mut found = None;
    for _ in 0..50 {
        found = server
            .stderr()
            .lines()
            .find(|l| l.contains(&request_id))
            .map(str::to_owned);
        if found.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let line = found.expect("a log line with the request id");
    let entry: serde_json::Value = serde_json::from_str(&line).expect("logs are JSON lines");
    assert_eq!(entry["level"], "INFO");
    assert_eq!(entry["fields"]["code"], "InvalidArgument");
    assert!(line.contains(&request_id));
}
