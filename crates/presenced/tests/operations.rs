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

#[tokio::test]
async fn validation_token_keys_are_published_unauthenticated_and_kept_across_restarts() {
    let mut server = Server::start(&[]);
    let keys = |server: &Server| {
        let url = server.url("/common/discovery/v2.0/keys");
        async move {
            let r = reply(client().get(url).send().await.unwrap()).await;
            assert_eq!(r.status, 200, "{}", r.text);
            r.json()
        }
    };
    let jwks = keys(&server).await;
    let key = &jwks["keys"][0];
    assert_eq!(
        (key["kty"].as_str(), key["alg"].as_str(), key["use"].as_str()),
        (Some("RSA"), Some("RS256"), Some("sig"))
    );
    assert!(key["kid"].is_string() && key["n"].is_string() && key["e"].is_string());
    for path in [
        "/common/discovery/keys".to_owned(),
        format!("/{TENANT}/discovery/keys"),
        format!("/{TENANT}/discovery/v2.0/keys"),
    ] {
        let other = reply(client().get(server.url(&path)).send().await.unwrap()).await;
        assert_eq!(other.json(), jwks, "{path}");
    }
    let config = reply(
        client()
            .get(server.url(&format!("/{TENANT}/.well-known/openid-configuration")))
            .send()
            .await
            .unwrap(),
    )
    .await
    .json();
    assert_eq!(config["issuer"], format!("https://sts.windows.net/{TENANT}/"));
    let jwks_uri = config["jwks_uri"].as_str().unwrap();
    assert_eq!(jwks_uri, server.url(&format!("/{TENANT}/discovery/keys")));
    // The key file is private, and the same key is served after a restart.
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(server.data_dir.join("validation-token-key"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    server.crash_and_restart();
    assert_eq!(keys(&server).await, jwks);
}
