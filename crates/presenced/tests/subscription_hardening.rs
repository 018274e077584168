//! Subscriptions against a hostile or careless caller, with the real binary: they belong to the
//! user who made them, their limits hold under a concurrent burst, and a failing endpoint costs
//! bounded queues and tells its subscribers what they missed.
mod common;

use common::receiver::Receiver;
use common::*;
use serde_json::{json, Value};
use std::process::Command;
use std::time::Duration;

const WEBHOOK_FLAGS: [&str; 3] = ["--webhook-allow-http", "--webhook-allow-network", "127.0.0.0/8"];
const ALICE: &str = "aaaaaaaa-0000-0000-0000-00000000000a";
const BOB: &str = "bbbbbbbb-0000-0000-0000-00000000000b";

fn server_with(extra: &[&str]) -> Server {
    let mut args: Vec<&str> = WEBHOOK_FLAGS.to_vec();
    args.extend_from_slice(&["--rate-limit", "off"]);
    args.extend_from_slice(extra);
    Server::start(&args)
}

/// A delegated token of `user` in application `app`.
fn token(server: &Server, user: &str, app: &str, scopes: &[&str]) -> String {
    let mut cmd = Command::new(BIN);
    cmd.args(["token", "--data-dir"])
        .arg(&server.data_dir)
        .args(["--tenant", TENANT, "--app", app, "--user", user]);
    for s in scopes {
        cmd.args(["--scope", s]);
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn body(url: &str, lifecycle: Option<&str>, users: &[&str]) -> Value {
    let list = users.iter().map(|u| format!("'{u}'")).collect::<Vec<_>>().join(",");
    #[allow(clippy::disallowed_methods)]
    let expires = jiff::Timestamp::now() + jiff::SignedDuration::from_mins(50);
    let mut b = json!({
        "changeType": "updated",
        "notificationUrl": url,
        "resource": format!("/communications/presences?$filter=id in ({list})"),
        "expirationDateTime": expires.to_string(),
        "clientState": "secret-state",
    });
    if let Some(l) = lifecycle {
        b["lifecycleNotificationUrl"] = json!(l);
    }
    b
}

#[tokio::test]
async fn a_subscription_belongs_to_the_user_who_made_it() {
    let server = server_with(&[]);
    let receiver = Receiver::start().await;
    let alice = token(&server, ALICE, "app-1", &["Presence.Read.All"]);
    let bob = token(&server, BOB, "app-1", &["Presence.Read.All"]);
    let alice_elsewhere = token(&server, ALICE, "app-2", &["Presence.Read.All"]);
    let no_presence = token(&server, ALICE, "app-1", &["User.Read"]);
    let r = post(
        &server.url("/v1.0/subscriptions"),
        &alice,
        body(&receiver.url, None, &["u1"]),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let id = r.json()["id"].as_str().unwrap().to_owned();
    let one = server.url(&format!("/v1.0/subscriptions/{id}"));
    let list = server.url("/v1.0/subscriptions");
    let patch = json!({ "notificationUrl": receiver.url });
    for (who, t) in [("bob, same app", &bob), ("alice, another app", &alice_elsewhere)] {
        get(&one, t).await.assert_error(404, "ResourceNotFound");
        call(reqwest::Method::PATCH, &one, Some(t), Some(patch.clone()))
            .await
            .assert_error(404, "ResourceNotFound");
        call(reqwest::Method::DELETE, &one, Some(t), None)
            .await
            .assert_error(404, "ResourceNotFound");
        post(&format!("{one}/reauthorize"), t, json!({}))
            .await
            .assert_error(404, "ResourceNotFound");
        let listed = get(&list, t).await.json();
        assert_eq!(listed["value"].as_array().unwrap().len(), 0, "{who} lists none");
    }
    // Without the subscribe permission, nothing at all.
    get(&one, &no_presence).await.assert_error(403, "Forbidden");
    get(&list, &no_presence).await.assert_error(403, "Forbidden");
    call(reqwest::Method::DELETE, &one, Some(&no_presence), None)
        .await
        .assert_error(403, "Forbidden");
    // Still there, and its owner sees it.
    let mine = get(&one, &alice).await.json();
    assert_eq!(
        (mine["id"].as_str(), mine["clientState"].as_str()),
        (Some(id.as_str()), Some("secret-state"))
    );
    assert_eq!(get(&list, &alice).await.json()["value"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn the_per_user_limit_holds_under_a_concurrent_burst_and_locks_no_colleague_out() {
    let server = server_with(&["--subscriptions-max-per-user", "5"]);
    let receiver = Receiver::start().await;
    let alice = token(&server, ALICE, "app-1", &["Presence.Read.All"]);
    let url = server.url("/v1.0/subscriptions");
    let attempts: Vec<_> = (0..20)
        .map(|_| {
            let (url, alice, body) = (url.clone(), alice.clone(), body(&receiver.url, None, &["u1"]));
            tokio::spawn(async move { post(&url, &alice, body).await })
        })
        .collect();
    let mut created = 0;
    for a in attempts {
        let r = a.await.unwrap();
        match r.status.as_u16() {
            201 => created += 1,
            403 => assert!(r.text.contains("5 subscriptions"), "{}", r.text),
            other => panic!("{other}: {}", r.text),
        }
    }
    assert_eq!(created, 5);
    assert_eq!(get(&url, &alice).await.json()["value"].as_array().unwrap().len(), 5);
    // Refused creations cost no handshake: one per stored subscription.
    assert_eq!(receiver.inner.validations.load(std::sync::atomic::Ordering::SeqCst), 5);
    let bob = token(&server, BOB, "app-1", &["Presence.Read.All"]);
    assert_eq!(post(&url, &bob, body(&receiver.url, None, &["u1"])).await.status, 201);
}

#[tokio::test]
async fn a_failed_handshake_tells_one_generic_reason() {
    let server = server_with(&[]);
    let alice = token(&server, ALICE, "app-1", &["Presence.Read.All"]);
    let url = server.url("/v1.0/subscriptions");
    // Nothing listens there: the caller learns the handshake failed, not why.
    let r = post(&url, &alice, body("http://127.0.0.1:9/hook", None, &["u1"])).await;
    r.assert_error(400, "BadRequest");
    assert!(r.text.contains("validation request failed"), "{}", r.text);
    for detail in ["refused", "connect", "timed out", "dns", "status"] {
        assert!(!r.text.to_lowercase().contains(detail), "{detail}: {}", r.text);
    }
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no {name}"))
        .parse()
        .unwrap()
}

#[tokio::test]
async fn a_failing_endpoint_costs_bounded_queues_is_suspended_and_tells_its_subscribers_missed() {
    let server = server_with(&[
        "--webhook-queue-per-subscription",
        "10",
        "--webhook-queue-per-endpoint",
        "50",
        "--webhook-suspend-after",
        "3s",
        "--webhook-probe-every",
        "1s",
    ]);
    let failing = Receiver::start().await;
    let lifecycle = Receiver::start().await;
    let alice = token(&server, ALICE, "app-1", &["Presence.Read.All"]);
    let app = server.app_token(&["Presence.ReadWrite.All"]);
    let mut ids = Vec::new();
    for _ in 0..8 {
        let r = post(
            &server.url("/v1.0/subscriptions"),
            &alice,
            body(&failing.url, Some(&lifecycle.url), &["target"]),
        )
        .await;
        assert_eq!(r.status, 201, "{}", r.text);
        ids.push(r.json()["id"].as_str().unwrap().to_owned());
    }
    failing.set_status(503);
    let mut deepest = 0.0f64;
    for i in 0..200 {
        let (a, b) = if i % 2 == 0 {
            ("Busy", "InACall")
        } else {
            ("Away", "Away")
        };
        let set = json!({ "sessionId": "s", "availability": a, "activity": b, "expirationDuration": "PT1H" });
        let r = post(&server.url("/v1.0/users/target/presence/setPresence"), &app, set).await;
        assert_eq!(r.status, 200);
        if i % 20 == 0 {
            let m = get(&server.url("/metrics"), &app).await.text;
            deepest = deepest.max(metric(&m, "presenced_notification_queue_depth"));
        }
    }
    // 8 subscriptions x 200 changes were owed; at most 50 (the endpoint's bound) wait, plus the
    // batch in flight.
    assert!(deepest <= 50.0 + 100.0, "queue depth {deepest}");
    // Every subscription is told it missed notifications.
    let missed = lifecycle
        .wait_for("a missed notice per subscription", Duration::from_secs(20), |items| {
            ids.iter().all(|id| {
                items
                    .iter()
                    .any(|i| i["subscriptionId"] == json!(id) && i["lifecycleEvent"] == "missed")
            })
        })
        .await;
    assert!(missed.iter().all(|i| i["clientState"] == "secret-state"));
    // Once suspended (after 3 s of failures), one change per subscription waits.
    let mut depth = f64::MAX;
    for _ in 0..300 {
        let m = get(&server.url("/metrics"), &app).await.text;
        depth = metric(&m, "presenced_notification_queue_depth");
        if depth <= 8.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(depth <= 8.0, "still {depth} queued: the endpoint was not suspended");
    // The endpoint comes back: the newest change reaches every subscription.
    let newest = get(&server.url("/v1.0/users/target/presence"), &app).await.json()["sequenceNumber"].clone();
    failing.set_status(200);
    failing
        .wait_for(
            "the newest change for each subscription",
            Duration::from_secs(20),
            |items| {
                ids.iter().all(|id| {
                    items
                        .iter()
                        .any(|i| i["subscriptionId"] == json!(id) && i["resourceData"]["sequenceNumber"] == newest)
                })
            },
        )
        .await;
}

#[tokio::test]
async fn an_allowed_network_can_be_limited_to_ports() {
    let allowed = Receiver::start().await;
    let other = Receiver::start().await;
    let port = |url: &str| url.rsplit(':').next().unwrap().trim_end_matches("/hook").to_owned();
    let allowance = format!("127.0.0.0/8:{}", port(&allowed.url));
    let server = Server::start(&[
        "--webhook-allow-http",
        "--webhook-allow-network",
        &allowance,
        "--rate-limit",
        "off",
    ]);
    let alice = token(&server, ALICE, "app-1", &["Presence.Read.All"]);
    // By name, so the address is judged by the resolver with the URL's port, not only as a literal.
    let by_name = |url: &str| url.replace("127.0.0.1", "localhost");
    let r = post(
        &server.url("/v1.0/subscriptions"),
        &alice,
        body(&by_name(&allowed.url), None, &[BOB]),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text);
    for refused in [by_name(&other.url), other.url.clone()] {
        let r = post(&server.url("/v1.0/subscriptions"), &alice, body(&refused, None, &[BOB])).await;
        assert_eq!(r.status, 400, "{refused}: {}", r.text);
    }
    assert_eq!(
        other.post_count(),
        0,
        "nothing reached the port the allowance does not name"
    );
}
