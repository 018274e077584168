//! Graph change-notification subscriptions end to end, with a real webhook receiver on loopback.
mod common;

use common::receiver::Receiver;
use common::*;
use reqwest::Method;
use serde_json::{json, Value};
use std::time::Duration;

const WEBHOOK_FLAGS: [&str; 3] = ["--webhook-allow-http", "--webhook-allow-network", "127.0.0.0/8"];
const U1: &str = "aaaaaaaa-0000-0000-0000-000000000001";
const U2: &str = "aaaaaaaa-0000-0000-0000-000000000002";
const WAIT: Duration = Duration::from_secs(10);

fn server_with(extra: &[&str]) -> Server {
    let mut args: Vec<&str> = WEBHOOK_FLAGS.to_vec();
    args.extend_from_slice(extra);
    Server::start(&args)
}

fn subscriber(server: &Server) -> String {
    server.user_token("cccccccc-0000-0000-0000-00000000000c", &["Presence.Read.All"])
}

fn expiry_in(minutes: i64) -> String {
    #[allow(clippy::disallowed_methods)]
    let t = jiff::Timestamp::now() + jiff::SignedDuration::from_mins(minutes);
    t.to_string()
}

fn subscription_body(url: &str, users: &[&str]) -> Value {
    let list = users.iter().map(|u| format!("'{u}'")).collect::<Vec<_>>().join(",");
    json!({
        "changeType": "updated",
        "notificationUrl": url,
        "resource": format!("/communications/presences?$filter=id in ({list})"),
        "expirationDateTime": expiry_in(50),
        "clientState": "secret-state",
    })
}

async fn subscribe(server: &Server, token: &str, body: Value) -> Value {
    let r = post(&server.url("/v1.0/subscriptions"), token, body).await;
    assert_eq!(r.status, 201, "{}", r.text);
    r.json()
}

async fn set(server: &Server, app: &str, user: &str, av: &str, ac: &str, d: &str) {
    let body = json!({ "sessionId": "s", "availability": av, "activity": ac, "expirationDuration": d });
    let r = post(
        &server.url(&format!("/v1.0/users/{user}/presence/setPresence")),
        app,
        body,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
}

fn seq(item: &Value) -> String {
    item["resourceData"]["sequenceNumber"].as_str().unwrap().to_owned()
}

fn for_user<'a>(items: &'a [Value], user: &str) -> Vec<&'a Value> {
    items.iter().filter(|i| i["resourceData"]["id"] == user).collect()
}

#[tokio::test]
async fn handshake_and_delivery_of_api_writes() {
    let server = server_with(&[]);
    let receiver = Receiver::start().await;
    let token = subscriber(&server);
    let app = server.app_token(&["Presence.ReadWrite.All"]);
    let sub = subscribe(&server, &token, subscription_body(&receiver.url, &[U1, U2])).await;
    assert_eq!(receiver.inner.validations.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(sub["changeType"], "updated");
    assert_eq!(sub["clientState"], "secret-state");
    assert_eq!(sub["applicationId"], "test-app");

    set(&server, &app, U1, "Busy", "InACall", "PT1H").await;
    let items = receiver.wait_for("U1's change", WAIT, |i| !i.is_empty()).await;
    let item = &items[0];
    assert_eq!(item["subscriptionId"], sub["id"]);
    assert_eq!(item["clientState"], "secret-state");
    assert_eq!(item["changeType"], "updated");
    assert_eq!(item["tenantId"], TENANT);
    assert_eq!(item["resource"], format!("communications/presences/{U1}"));
    assert_eq!(item["resourceData"]["@odata.type"], "#microsoft.graph.presence");
    assert_eq!(item["resourceData"]["id"], U1);
    assert!(item["subscriptionExpirationDateTime"].is_string());
    let read = get(&server.url(&format!("/v1.0/users/{U1}/presence")), &app)
        .await
        .json();
    assert_eq!(
        seq(item),
        read["sequenceNumber"].as_str().unwrap(),
        "the notification carries the new sequenceNumber"
    );

    // A status message alone is not an availability/activity change: no notification.
    let msg = json!({ "statusMessage": { "message": { "content": "quiet" } } });
    post(
        &server.url(&format!("/v1.0/users/{U1}/presence/setStatusMessage")),
        &app,
        msg,
    )
    .await;
    // A user outside the subscription: no notification.
    set(&server, &app, "someone-else", "Busy", "InACall", "PT1H").await;
    set(&server, &app, U2, "Away", "Away", "PT1H").await;
    let items = receiver
        .wait_for("U2's change", WAIT, |i| for_user(i, U2).len() == 1)
        .await;
    assert_eq!(
        items.len(),
        2,
        "exactly one notification per availability/activity change: {items:?}"
    );
}

#[tokio::test]
async fn failed_handshakes_fail_the_create() {
    let server = server_with(&[]);
    let token = subscriber(&server);
    let receiver = Receiver::start().await;
    *receiver.inner.wrong_token.lock().unwrap() = Some("not-the-token".into());
    let r = post(
        &server.url("/v1.0/subscriptions"),
        &token,
        subscription_body(&receiver.url, &[U1]),
    )
    .await;
    r.assert_error(400, "BadRequest");
    assert!(r.text.contains("validation"), "{}", r.text);
    // Nobody listening.
    let dead = "http://127.0.0.1:9/hook";
    post(
        &server.url("/v1.0/subscriptions"),
        &token,
        subscription_body(dead, &[U1]),
    )
    .await
    .assert_error(400, "BadRequest");
    // A good notificationUrl but a failing lifecycleNotificationUrl.
    let good = Receiver::start().await;
    let mut body = subscription_body(&good.url, &[U1]);
    body["lifecycleNotificationUrl"] = json!(receiver.url);
    post(&server.url("/v1.0/subscriptions"), &token, body)
        .await
        .assert_error(400, "BadRequest");
    let list = get(&server.url("/v1.0/subscriptions"), &token).await.json();
    assert_eq!(list["value"].as_array().unwrap().len(), 0, "nothing was created");
}

#[tokio::test]
async fn fades_and_expiries_are_notified_without_any_read() {
    let server = server_with(&["--fade-after", "1s", "--session-expiration-min", "1s"]);
    let receiver = Receiver::start().await;
    let token = subscriber(&server);
    let app = server.app_token(&["Presence.ReadWrite.All"]);
    subscribe(&server, &token, subscription_body(&receiver.url, &[U1])).await;
    set(&server, &app, U1, "Available", "Available", "PT3S").await;
    // set, fade to idle (1 s), away (2 s), expiry (3 s): four changes, nobody reads meanwhile.
    let items = receiver.wait_for("four changes", WAIT, |i| i.len() >= 4).await;
    let seqs: Vec<String> = items.iter().map(seq).collect();
    let mut sorted = seqs.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(seqs, sorted, "in order, no duplicates");
    assert_eq!(items.len(), 4, "{items:?}");
    let read = get(&server.url(&format!("/v1.0/users/{U1}/presence")), &app)
        .await
        .json();
    assert_eq!(read["availability"], "Offline");
    assert_eq!(&seqs[3], read["sequenceNumber"].as_str().unwrap());
}

#[tokio::test]
async fn retries_until_the_receiver_is_back() {
    let server = server_with(&[]);
    let receiver = Receiver::start().await;
    let token = subscriber(&server);
    let app = server.app_token(&["Presence.ReadWrite.All"]);
    subscribe(&server, &token, subscription_body(&receiver.url, &[U1])).await;
    receiver.set_status(503);
    set(&server, &app, U1, "Busy", "InACall", "PT1H").await;
    set(&server, &app, U1, "Away", "Away", "PT1H").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(receiver.post_count(), 0);
    receiver.set_status(200);
    let items = receiver
        .wait_for("both changes after recovery", Duration::from_secs(20), |i| i.len() >= 2)
        .await;
    assert!(seq(&items[0]) < seq(&items[1]), "order kept across retries");
}

#[tokio::test]
async fn pending_deliveries_survive_sigkill_and_keep_per_user_order() {
    let mut server = server_with(&[]);
    let receiver = Receiver::start().await;
    let token = subscriber(&server);
    let app = server.app_token(&["Presence.ReadWrite.All"]);
    subscribe(&server, &token, subscription_body(&receiver.url, &[U1, U2])).await;
    receiver.set_status(500);
    let pairs = [
        ("Busy", "InACall"),
        ("Away", "Away"),
        ("DoNotDisturb", "Presenting"),
        ("Available", "Available"),
    ];
    for (av, ac) in pairs {
        set(&server, &app, U1, av, ac, "PT1H").await;
        set(&server, &app, U2, av, ac, "PT1H").await;
    }
    server.crash_and_restart();
    receiver.set_status(200);
    let items = receiver
        .wait_for("all 8 owed notifications", Duration::from_secs(30), |i| {
            for_user(i, U1).len() >= 4 && for_user(i, U2).len() >= 4
        })
        .await;
    assert!(
        receiver.post_count() < items.len(),
        "queued notifications are batched into fewer POSTs"
    );
    for user in [U1, U2] {
        let mut seqs: Vec<String> = for_user(&items, user).iter().map(|i| seq(i)).collect();
        let arrival = seqs.clone();
        seqs.sort();
        assert_eq!(arrival, seqs, "per-user order holds for {user}");
        seqs.dedup();
        assert_eq!(seqs.len(), 4, "every change notified for {user}");
    }
}

#[tokio::test]
async fn a_dead_endpoint_does_not_delay_a_healthy_one() {
    let server = server_with(&[]);
    let healthy = Receiver::start().await;
    let dead = Receiver::start().await;
    let token = subscriber(&server);
    let app = server.app_token(&["Presence.ReadWrite.All"]);
    subscribe(&server, &token, subscription_body(&dead.url, &[U1])).await;
    subscribe(&server, &token, subscription_body(&healthy.url, &[U1])).await;
    dead.set_delay(Duration::from_secs(30));
    for (av, ac) in [("Busy", "InACall"), ("Away", "Away"), ("Busy", "InAConferenceCall")] {
        set(&server, &app, U1, av, ac, "PT1H").await;
    }
    healthy
        .wait_for("all three at the healthy endpoint", Duration::from_secs(20), |i| {
            i.len() >= 3
        })
        .await;
    // The dead endpoint's first attempt hangs until the server's 3 s timeout. Had the healthy
    // endpoint been made to wait for it, its later notifications would arrive after that timeout.
    let mut dead_started = dead.first_attempt();
    for _ in 0..500 {
        if dead_started.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        dead_started = dead.first_attempt();
    }
    let dead_started = dead_started.expect("the dead endpoint was tried");
    let last_healthy = *healthy.arrivals().last().unwrap();
    assert!(
        last_healthy < dead_started + Duration::from_secs(3),
        "the healthy endpoint waited for the dead one: {:?} after its first attempt began",
        last_healthy.saturating_duration_since(dead_started)
    );
    assert_eq!(dead.post_count(), 0);
}

#[tokio::test]
async fn subscription_crud_and_ownership() {
    let server = server_with(&[
        "--subscription-lifetime-min",
        "1m",
        "--subscription-lifetime-max",
        "60m",
    ]);
    let receiver = Receiver::start().await;
    let token = subscriber(&server);
    let sub = subscribe(&server, &token, subscription_body(&receiver.url, &[U1])).await;
    let id = sub["id"].as_str().unwrap();
    for version in ["v1.0", "beta"] {
        let one = get(&server.url(&format!("/{version}/subscriptions/{id}")), &token).await;
        assert_eq!(one.status, 200);
        assert_eq!(one.json()["notificationUrl"], receiver.url);
    }
    let list = get(&server.url("/v1.0/subscriptions"), &token).await.json();
    assert_eq!(list["value"].as_array().unwrap().len(), 1);

    // Renew: a far-future expiry is clamped to the maximum lifetime.
    let r = call(
        Method::PATCH,
        &server.url(&format!("/v1.0/subscriptions/{id}")),
        Some(&token),
        Some(json!({ "expirationDateTime": expiry_in(600) })),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let renewed: jiff::Timestamp = r.json()["expirationDateTime"].as_str().unwrap().parse().unwrap();
    #[allow(clippy::disallowed_methods)]
    let left = renewed.duration_since(jiff::Timestamp::now());
    assert!(
        left <= jiff::SignedDuration::from_mins(60) && left > jiff::SignedDuration::from_mins(59),
        "{left:?}"
    );
    let r = call(
        Method::POST,
        &server.url(&format!("/v1.0/subscriptions/{id}/reauthorize")),
        Some(&token),
        None,
    )
    .await;
    assert_eq!(r.status, 204, "{}", r.text);

    // Another application in the same tenant cannot see or touch it.
    let other_app = {
        let mut cmd = std::process::Command::new(BIN);
        cmd.args(["token", "--data-dir"]).arg(&server.data_dir);
        cmd.args([
            "--tenant",
            TENANT,
            "--app",
            "other-app",
            "--user",
            U2,
            "--scope",
            "Presence.Read.All",
        ]);
        String::from_utf8(cmd.output().unwrap().stdout)
            .unwrap()
            .trim()
            .to_owned()
    };
    get(&server.url(&format!("/v1.0/subscriptions/{id}")), &other_app)
        .await
        .assert_error(404, "ResourceNotFound");
    let r = call(
        Method::DELETE,
        &server.url(&format!("/v1.0/subscriptions/{id}")),
        Some(&other_app),
        None,
    )
    .await;
    r.assert_error(404, "ResourceNotFound");
    assert_eq!(
        get(&server.url("/v1.0/subscriptions"), &other_app).await.json()["value"]
            .as_array()
            .unwrap()
            .len(),
        0
    );

    let r = call(
        Method::DELETE,
        &server.url(&format!("/v1.0/subscriptions/{id}")),
        Some(&token),
        None,
    )
    .await;
    assert_eq!(r.status, 204);
    get(&server.url(&format!("/v1.0/subscriptions/{id}")), &token)
        .await
        .assert_error(404, "ResourceNotFound");
}

#[tokio::test]
async fn application_tokens_need_the_switch() {
    let receiver = Receiver::start().await;
    let strict = server_with(&[]);
    let app = strict.app_token(&["Presence.Read.All"]);
    post(
        &strict.url("/v1.0/subscriptions"),
        &app,
        subscription_body(&receiver.url, &[U1]),
    )
    .await
    .assert_error(403, "Forbidden");
    let read_only = strict.user_token(U2, &["Presence.Read"]);
    post(
        &strict.url("/v1.0/subscriptions"),
        &read_only,
        subscription_body(&receiver.url, &[U1]),
    )
    .await
    .assert_error(403, "Forbidden");
    let relaxed = server_with(&["--subscriptions-allow-app-tokens"]);
    let app = relaxed.app_token(&["Presence.Read.All"]);
    subscribe(&relaxed, &app, subscription_body(&receiver.url, &[U1])).await;
}

#[tokio::test]
async fn lifecycle_reauthorization_then_removal() {
    // Reauthorization is due min(4 s, lifetime / 4) = 2 s before expiry: two lifecycle ticks wide,
    // so a loaded machine cannot skip it.
    let server = server_with(&[
        "--subscription-lifetime-min",
        "1s",
        "--subscription-lifetime-max",
        "8s",
        "--subscription-reauthorize-before",
        "4s",
    ]);
    let notifications = Receiver::start().await;
    let lifecycle = Receiver::start().await;
    let token = subscriber(&server);
    let mut body = subscription_body(&notifications.url, &[U1]);
    body["lifecycleNotificationUrl"] = json!(lifecycle.url);
    let sub = subscribe(&server, &token, body).await;
    let items = lifecycle
        .wait_for("reauthorizationRequired then subscriptionRemoved", WAIT, |i| {
            i.len() >= 2
        })
        .await;
    assert_eq!(items[0]["lifecycleEvent"], "reauthorizationRequired");
    assert_eq!(items[1]["lifecycleEvent"], "subscriptionRemoved");
    for item in &items {
        assert_eq!(item["subscriptionId"], sub["id"]);
        assert_eq!(item["clientState"], "secret-state");
        assert_eq!(item["tenantId"], TENANT);
    }
    let id = sub["id"].as_str().unwrap();
    get(&server.url(&format!("/v1.0/subscriptions/{id}")), &token)
        .await
        .assert_error(404, "ResourceNotFound");
}

#[tokio::test]
async fn bad_subscription_requests_are_graph_400s() {
    let server = server_with(&[]);
    let receiver = Receiver::start().await;
    let token = subscriber(&server);
    let url = server.url("/v1.0/subscriptions");
    let base = || subscription_body(&receiver.url, &[U1]);
    let with = |f: &dyn Fn(&mut Value)| {
        let mut b = base();
        f(&mut b);
        b
    };
    let many: Vec<String> = (0..651).map(|i| format!("'u{i}'")).collect();
    let cases: Vec<(&str, Value)> = vec![
        (
            "unquoted ids",
            with(&|b| b["resource"] = json!("/communications/presences?$filter=id in (a,b)")),
        ),
        (
            "bad filter",
            with(&|b| b["resource"] = json!("/communications/presences?$filter=id eq 'a'")),
        ),
        (
            "too many ids",
            with(&|b| b["resource"] = json!(format!("/communications/presences?$filter=id in ({})", many.join(",")))),
        ),
        ("other resource", with(&|b| b["resource"] = json!("/users/a/messages"))),
        (
            "no resource",
            with(&|b| drop(b.as_object_mut().unwrap().remove("resource"))),
        ),
        ("changeType created", with(&|b| b["changeType"] = json!("created"))),
        ("not a URL", with(&|b| b["notificationUrl"] = json!("not a url"))),
        ("ftp URL", with(&|b| b["notificationUrl"] = json!("ftp://127.0.0.1/x"))),
        (
            "private address",
            with(&|b| b["notificationUrl"] = json!("http://10.0.0.1/hook")),
        ),
        (
            "metadata address",
            with(&|b| b["notificationUrl"] = json!("http://169.254.169.254/latest")),
        ),
        (
            "userinfo",
            with(&|b| b["notificationUrl"] = json!(receiver.url.replace("http://", "http://user:pw@"))),
        ),
        (
            "oversized clientState",
            with(&|b| b["clientState"] = json!("x".repeat(129))),
        ),
        (
            "expired date",
            with(&|b| b["expirationDateTime"] = json!("2001-01-01T00:00:00Z")),
        ),
        (
            "no date",
            with(&|b| drop(b.as_object_mut().unwrap().remove("expirationDateTime"))),
        ),
        ("garbage date", with(&|b| b["expirationDateTime"] = json!("soon"))),
        (
            "rich without certificate",
            with(&|b| b["includeResourceData"] = json!(true)),
        ),
        (
            "rich with a bad certificate",
            with(&|b| {
                b["includeResourceData"] = json!(true);
                b["encryptionCertificate"] = json!("bm90IGEgY2VydA==");
                b["encryptionCertificateId"] = json!("c1");
            }),
        ),
        (
            "bad TLS version",
            with(&|b| b["latestSupportedTlsVersion"] = json!("v9")),
        ),
    ];
    for (why, body) in cases {
        let r = post(&url, &token, body).await;
        assert_eq!(r.status, 400, "{why}: {}", r.text);
        r.assert_error(400, "BadRequest");
    }
    // https is required without --webhook-allow-http.
    let strict = Server::start(&["--webhook-allow-network", "127.0.0.0/8"]);
    let r = post(&strict.url("/v1.0/subscriptions"), &subscriber(&strict), base()).await;
    r.assert_error(400, "BadRequest");
    assert!(r.text.contains("https"), "{}", r.text);
    // Loopback is refused unless allow-listed.
    let closed = Server::start(&["--webhook-allow-http"]);
    let r = post(&closed.url("/v1.0/subscriptions"), &subscriber(&closed), base()).await;
    r.assert_error(400, "BadRequest");
    assert_eq!(
        receiver.inner.validations.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "no request reached a refused address"
    );
}

#[tokio::test]
async fn giving_up_after_the_retry_window_sends_missed() {
    let server = server_with(&["--webhook-retry-for", "1s"]);
    let notifications = Receiver::start().await;
    let lifecycle = Receiver::start().await;
    let token = subscriber(&server);
    let app = server.app_token(&["Presence.ReadWrite.All"]);
    let mut body = subscription_body(&notifications.url, &[U1]);
    body["lifecycleNotificationUrl"] = json!(lifecycle.url);
    let sub = subscribe(&server, &token, body).await;
    notifications.set_status(500);
    set(&server, &app, U1, "Busy", "InACall", "PT1H").await;
    let items = lifecycle
        .wait_for("a missed lifecycle event", Duration::from_secs(15), |i| !i.is_empty())
        .await;
    assert_eq!(items[0]["lifecycleEvent"], "missed");
    assert_eq!(items[0]["subscriptionId"], sub["id"]);
    // The dropped notification is gone for good: a recovered endpoint gets only new changes.
    notifications.set_status(200);
    set(&server, &app, U1, "Away", "Away", "PT1H").await;
    let got = notifications.wait_for("the next change", WAIT, |i| !i.is_empty()).await;
    assert_eq!(got.len(), 1);
}
