//! Several `presenced` nodes on one Redis, end to end with the real binary: each test starts its
//! own Redis (a three-master Cluster with replicas, or a standalone server) on free loopback
//! ports, and two nodes that share an HS256 secret file.
mod common;

#[path = "../src/store/redis/test_servers.rs"]
mod test_servers;

use common::receiver::Receiver;
use common::relay::Relay;
use common::sse::SseStream;
use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use test_servers::{start_node, start_node_with, Cluster};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

const STREAM: &str = "/v1.0/communications/presences/$stream";
const U1: &str = "aaaaaaaa-0000-0000-0000-000000000001";
const U2: &str = "aaaaaaaa-0000-0000-0000-000000000002";
const U3: &str = "aaaaaaaa-0000-0000-0000-000000000003";

/// The HS256 secret file both nodes read, and the temporary directory holding it beside the
/// validation-token key they both sign with (`validation_key`).
fn shared_secret() -> (tempfile::TempDir, PathBuf) {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwt-secret");
    let mut bytes = [0u8; 32];
    for (i, b) in bytes.iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(37).wrapping_add(std::process::id() as u8);
    }
    use base64::Engine;
    let text = base64::engine::general_purpose::STANDARD.encode(bytes);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .unwrap();
    std::io::Write::write_all(&mut file, text.as_bytes()).unwrap();
    write_validation_key(&validation_key(&path));
    (dir, path)
}

/// Where [`shared_secret`] put the validation-token key, beside `secret`.
fn validation_key(secret: &Path) -> PathBuf {
    secret.with_file_name("validation-token-key")
}

/// An RSA key in PKCS#8 PEM, mode 0600, as `openssl genpkey -algorithm RSA` writes one.
fn write_validation_key(path: &Path) {
    use aws_lc_rs::encoding::AsDer;
    use base64::Engine;
    use std::os::unix::fs::OpenOptionsExt;
    let key = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
    let der: aws_lc_rs::encoding::Pkcs8V1Der = key.as_der().unwrap();
    let body = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
    let lines: Vec<&str> = body
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    let pem = format!(
        "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
        lines.join("\n")
    );
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .unwrap();
    std::io::Write::write_all(&mut file, pem.as_bytes()).unwrap();
}

/// A token signed with the shared secret.
fn token(secret: &Path, user: Option<&str>, scopes: &[&str], roles: &[&str]) -> String {
    mint(("--jwt-secret-file", secret), TENANT, user, scopes, roles)
}

fn node(store: &str, secret: &Path, extra: &[&str]) -> Server {
    let key = validation_key(secret);
    let mut args = vec![
        "--store",
        store,
        "--jwt-secret-file",
        secret.to_str().unwrap(),
        "--validation-token-key-file",
        key.to_str().unwrap(),
        "--rate-limit",
        "off",
        "--webhook-allow-http",
        "--webhook-allow-network",
        "127.0.0.0/8",
    ];
    args.extend_from_slice(extra);
    Server::start(&args)
}

async fn set(server: &Server, app: &str, user: &str, availability: &str, activity: &str) -> Reply {
    let body =
        json!({ "sessionId": "s", "availability": availability, "activity": activity, "expirationDuration": "PT1H" });
    post(
        &server.url(&format!("/v1.0/users/{user}/presence/setPresence")),
        app,
        body,
    )
    .await
}

async fn availability(server: &Server, app: &str, user: &str) -> String {
    let r = get(&server.url(&format!("/v1.0/users/{user}/presence")), app).await;
    assert_eq!(r.status, 200, "{}", r.text);
    r.json()["availability"].as_str().unwrap().to_owned()
}

/// Poll `user`'s availability on `server` until it is `want` (or `within` passes).
async fn wait_availability(server: &Server, app: &str, user: &str, want: &str, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if availability(server, app, user).await == want {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

async fn open_stream(server: &Server, token: &str, users: &[&str], resume: Option<&str>) -> SseStream {
    let mut request = stream_client()
        .post(server.url(STREAM))
        .bearer_auth(token)
        .header("accept", "text/event-stream")
        .json(&json!({ "ids": users }));
    if let Some(r) = resume {
        request = request.header("last-event-id", r);
    }
    SseStream::new(request.send().await.unwrap())
}

/// The next presence event: (user, availability, resume token).
async fn next_presence(stream: &mut SseStream) -> (String, String, String) {
    loop {
        let e = stream.next().await;
        if e.event == "presence" {
            return (
                e.data["id"].as_str().unwrap().to_owned(),
                e.data["availability"].as_str().unwrap().to_owned(),
                e.id.unwrap(),
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_on_a_cluster_share_presence_streams_and_subscriptions() {
    let cluster = Cluster::start();
    let (_dir, secret) = shared_secret();
    let a = node(&cluster.url(), &secret, &[]);
    let b = node(&cluster.url(), &secret, &[]);
    let app = token(&secret, None, &[], &["Presence.ReadWrite.All"]);

    // Both sign rich notifications' validationTokens with one key, and publish it.
    let keys = |n: &Server| n.url("/common/discovery/v2.0/keys");
    let (on_a, on_b) = (
        call(reqwest::Method::GET, &keys(&a), None, None).await,
        call(reqwest::Method::GET, &keys(&b), None, None).await,
    );
    assert_eq!(on_a.status, 200);
    assert_eq!(
        on_a.json(),
        on_b.json(),
        "both nodes publish the same validation-token key"
    );

    // A write through A is read through B.
    assert_eq!(set(&a, &app, U1, "Busy", "InACall").await.status, 200);
    assert_eq!(availability(&b, &app, U1).await, "Busy");

    // A node writes from its last known copy of a user; a copy another node made stale costs a
    // conflict or a fresh read, never a lost, skipped or refused write. A knows U3 without
    // session "x"...
    let none = json!({ "sessionId": "x" });
    let clear = |n: &Server| n.url(&format!("/v1.0/users/{U3}/presence/clearPresence"));
    assert_eq!(post(&clear(&a), &app, none.clone()).await.status, 404);
    // ...B sets it...
    let busy = json!({ "sessionId": "x", "availability": "Busy", "activity": "InACall", "expirationDuration": "PT1H" });
    let r = post(&b.url(&format!("/v1.0/users/{U3}/presence/setPresence")), &app, busy).await;
    assert_eq!(r.status, 200, "{}", r.text);
    // ...and A's clear, a no-op by A's copy, still clears it.
    assert_eq!(post(&clear(&a), &app, none).await.status, 200);
    assert_eq!(availability(&b, &app, U3).await, "Offline", "A's clear was applied");

    // 650 ids in one bulk read through B, the written one among them.
    let mut ids: Vec<String> = (0..649).map(|i| format!("bulk-{i}")).collect();
    ids.push(U1.to_owned());
    let r = post(
        &b.url("/v1.0/communications/getPresencesByUserId"),
        &app,
        json!({ "ids": ids }),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let values = r.json()["value"].as_array().unwrap().clone();
    assert_eq!(values.len(), 650);
    assert!(values.iter().any(|v| v["id"] == U1 && v["availability"] == "Busy"));

    // A stream on B sees changes made through A...
    let mut on_b = open_stream(&b, &app, &[U1, U2], None).await;
    let snapshot = on_b.next().await;
    assert_eq!(snapshot.event, "snapshot", "{snapshot:?}");
    assert_eq!(set(&a, &app, U2, "Away", "Away").await.status, 200);
    let (user, av, resume) = next_presence(&mut on_b).await;
    assert_eq!((user.as_str(), av.as_str()), (U2, "Away"));
    assert!(resume.starts_with("2."), "a partitioned position: {resume}");
    drop(on_b);
    // ...and its resume token works on A: exactly what was missed, then what follows.
    assert_eq!(set(&b, &app, U1, "Available", "Available").await.status, 200);
    let mut on_a = open_stream(&a, &app, &[U1, U2], Some(&resume)).await;
    let (user, av, _) = next_presence(&mut on_a).await;
    assert_eq!(
        (user.as_str(), av.as_str()),
        (U1, "Available"),
        "the missed change first"
    );
    assert_eq!(set(&b, &app, U2, "Busy", "InACall").await.status, 200);
    let (user, av, _) = next_presence(&mut on_a).await;
    assert_eq!((user.as_str(), av.as_str()), (U2, "Busy"));

    // A subscription created on A gets changes made on B, once each.
    let receiver = Receiver::start().await;
    let subscriber = token(
        &secret,
        Some("cccccccc-0000-0000-0000-00000000000c"),
        &["Presence.Read.All"],
        &[],
    );
    subscribe(&a, &subscriber, &receiver.url, U3).await;
    for (av, ac) in [("Busy", "InACall"), ("Away", "Away"), ("Available", "Available")] {
        assert_eq!(set(&b, &app, U3, av, ac).await.status, 200);
    }
    let items = receiver
        .wait_for("three notifications", Duration::from_secs(15), |i| i.len() >= 3)
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let items_after = receiver.items();
    assert_eq!(items.len(), 3);
    assert_eq!(items_after.len(), 3, "once each, whichever node sends: {items_after:?}");
    assert!(items_after.iter().all(|i| i["resourceData"]["id"] == U3));
}

/// A subscription through `server` to `user`'s presence, notified at `url`, for 50 minutes.
async fn subscribe(server: &Server, token: &str, url: &str, user: &str) {
    #[allow(clippy::disallowed_methods)]
    let expiry = (jiff::Timestamp::now() + jiff::SignedDuration::from_mins(50)).to_string();
    let r = post(
        &server.url("/v1.0/subscriptions"),
        token,
        json!({
            "changeType": "updated",
            "notificationUrl": url,
            "resource": format!("/communications/presences?$filter=id in ('{user}')"),
            "expirationDateTime": expiry,
            "clientState": "s",
        }),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text);
}

/// A client-session socket on `server` for `user`, said hello as Available.
async fn client_session(server: &Server, token: &str) -> impl Sized {
    let url = server.url("/v1.0/me/presence/$session").replacen("http://", "ws://", 1);
    let mut request = url.into_client_request().unwrap();
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    let hello = json!({ "type": "hello", "device": "desktop", "availability": "Available", "activity": "Available" });
    ws.send(Message::Text(hello.to_string().into())).await.unwrap();
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await.unwrap() {
            Some(Ok(Message::Text(t))) => {
                let v: Value = serde_json::from_str(t.as_str()).unwrap();
                assert_eq!(v["type"], "welcome", "{v}");
                break;
            }
            Some(Ok(_)) => continue,
            other => panic!("no welcome: {other:?}"),
        }
    }
    ws
}

/// A session set through `node` for `user` that expires after `expiry` (an ISO 8601 duration).
async fn set_fading(node: &Server, app: &str, user: &str, expiry: &str) {
    let body =
        json!({ "sessionId": "fading", "availability": "Busy", "activity": "InACall", "expirationDuration": expiry });
    let r = post(
        &node.url(&format!("/v1.0/users/{user}/presence/setPresence")),
        app,
        body,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
}

/// Once a node is lost at `lost` (killed, or cut off from Redis): `b` applies the expiry that
/// node set for `fading`, and the client session it held for `client` lasts `kept` past the loss
/// at least, then ends.
async fn the_other_node_takes_over(b: &Server, app: &str, fading: &str, client: &str, lost: Instant, kept: Duration) {
    assert!(
        wait_availability(b, app, fading, "Offline", Duration::from_secs(10)).await,
        "B applies the expiry the lost node set"
    );
    while lost.elapsed() < kept {
        assert_ne!(
            availability(b, app, client).await,
            "Offline",
            "the client session ended {:?} after its node was lost, before lease and grace",
            lost.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        wait_availability(b, app, client, "Offline", Duration::from_secs(20)).await,
        "the lost node's client session ends after its lease and the grace"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_nodes_client_sessions_end_after_the_grace_and_its_fades_still_happen() {
    let cluster = Cluster::start();
    let (_dir, secret) = shared_secret();
    let timing = [
        "--redis-node-lease",
        "2s",
        "--client-grace",
        "4s",
        "--fade-after",
        "1s",
        "--session-expiration-min",
        "1s",
    ];
    let mut a = node(&cluster.url(), &secret, &timing);
    let b = node(&cluster.url(), &secret, &timing);
    let app = token(&secret, None, &[], &["Presence.ReadWrite.All"]);
    let user = token(&secret, Some(U1), &["Presence.ReadWrite"], &[]);

    let _socket = client_session(&a, &user).await;
    assert_ne!(availability(&b, &app, U1).await, "Offline");
    // A session set through A that fades: it expires 1 s from now.
    set_fading(&a, &app, U2, "PT1S").await;
    a.kill();
    let killed = Instant::now();
    // The client session outlives A by the lease and the grace, not less.
    the_other_node_takes_over(&b, &app, U2, U1, killed, Duration::from_millis(3500)).await;
    assert!(killed.elapsed() >= Duration::from_secs(4));
}

async fn metric_of(server: &Server, name: &str) -> f64 {
    let r = call(reqwest::Method::GET, &server.url("/metrics"), None, None).await;
    metric(&r.text, name)
}

/// Wait until each node has seen the other's lease: the 16 partitions are split between them.
async fn wait_until_they_share_the_partitions(a: &Server, b: &Server) {
    const LED: &str = "presenced_store_partitions_led";
    let settled = Instant::now() + Duration::from_secs(15);
    while metric_of(a, LED).await + metric_of(b, LED).await != 16.0 {
        assert!(Instant::now() < settled, "the nodes never saw each other");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_partitions_timers_have_one_leader_and_every_expiry_is_applied_once() {
    let redis = start_node(false);
    let (_dir, secret) = shared_secret();
    let timing = ["--redis-node-lease", "2s", "--session-expiration-min", "1s"];
    let a = node(&redis.url(), &secret, &timing);
    let b = node(&redis.url(), &secret, &timing);
    let app = token(&secret, None, &[], &["Presence.ReadWrite.All"]);
    const SWEPT: &str = "presenced_sweeper_transitions_total";
    wait_until_they_share_the_partitions(&a, &b).await;
    // 32 users (spread over the partitions) with a session set through A expiring in 1 s.
    let users: Vec<String> = (0..32).map(|i| format!("bbbbbbbb-0000-0000-0000-{i:012}")).collect();
    for user in &users {
        let body =
            json!({ "sessionId": "s", "availability": "Busy", "activity": "InACall", "expirationDuration": "PT1S" });
        let r = post(&a.url(&format!("/v1.0/users/{user}/presence/setPresence")), &app, body).await;
        assert_eq!(r.status, 200, "{}", r.text);
    }
    // Nobody reads them meanwhile (a read applies what is due, too): the sweepers do it all.
    let deadline = Instant::now() + Duration::from_secs(20);
    let swept = loop {
        let swept = (metric_of(&a, SWEPT).await, metric_of(&b, SWEPT).await);
        if swept.0 + swept.1 >= 32.0 || Instant::now() > deadline {
            break swept;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // A second node trying the same expiry loses the compare-and-set: still one commit each.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let again = (metric_of(&a, SWEPT).await, metric_of(&b, SWEPT).await);
    assert_eq!(again, swept, "an expiry was applied twice");
    assert_eq!(swept.0 + swept.1, 32.0, "every expiry applied once: {swept:?}");
    // B applied those of the partitions it leads, though it never saw their writes.
    assert!(swept.0 > 0.0 && swept.1 > 0.0, "the work was not shared: {swept:?}");
    for user in &users {
        assert_eq!(availability(&b, &app, user).await, "Offline");
    }
}

/// Two nodes on a standalone Redis, sharing its partitions, and `n` users (ids starting with
/// `prefix`) each watched by a subscription of its own, all created through A, to one receiver.
struct Subscribed {
    _redis: test_servers::Node,
    _dir: tempfile::TempDir,
    a: Server,
    b: Server,
    /// An application token that writes presence.
    app: String,
    receiver: Receiver,
    users: Vec<String>,
}

async fn two_nodes_with_subscriptions(lease: &str, prefix: &str, n: usize) -> Subscribed {
    let redis = start_node(false);
    let (dir, secret) = shared_secret();
    let a = node(&redis.url(), &secret, &["--redis-node-lease", lease]);
    let b = node(&redis.url(), &secret, &["--redis-node-lease", lease]);
    let app = token(&secret, None, &[], &["Presence.ReadWrite.All"]);
    let subscriber = token(
        &secret,
        Some("cccccccc-0000-0000-0000-00000000000c"),
        &["Presence.Read.All"],
        &[],
    );
    wait_until_they_share_the_partitions(&a, &b).await;
    let receiver = Receiver::start().await;
    let users: Vec<String> = (0..n).map(|i| format!("{prefix}-0000-0000-0000-{i:012}")).collect();
    for user in &users {
        subscribe(&a, &subscriber, &receiver.url, user).await;
    }
    Subscribed {
        _redis: redis,
        _dir: dir,
        a,
        b,
        app,
        receiver,
        users,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_work_is_shared_between_nodes_and_each_change_is_notified_once() {
    let Subscribed {
        _redis,
        _dir,
        a,
        b,
        app,
        receiver,
        users,
    } = two_nodes_with_subscriptions("2s", "dddddddd", 24).await;
    // One change per user, half through each node.
    for (i, user) in users.iter().enumerate() {
        let through = if i % 2 == 0 { &a } else { &b };
        assert_eq!(set(through, &app, user, "Busy", "InACall").await.status, 200);
    }
    receiver
        .wait_for("24 notifications", Duration::from_secs(30), |i| i.len() >= 24)
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let items = receiver.items();
    let mut notified: Vec<&str> = items.iter().filter_map(|i| i["resourceData"]["id"].as_str()).collect();
    notified.sort_unstable();
    let mut expected: Vec<&str> = users.iter().map(String::as_str).collect();
    expected.sort_unstable();
    assert_eq!(notified, expected, "each change notified once");
    // Each node sent the notifications of the subscriptions it leads.
    let delivered = r#"presenced_notification_deliveries_total{outcome="delivered"}"#;
    let sent = (metric_of(&a, delivered).await, metric_of(&b, delivered).await);
    assert!(sent.0 > 0.0 && sent.1 > 0.0, "one node sent everything: {sent:?}");
    // Both nodes' gauges count the shared keyspace.
    assert_eq!(metric_of(&b, "presenced_subscriptions").await, 24.0);
    assert_eq!(metric_of(&b, "presenced_users").await, 24.0);
    assert_eq!(metric_of(&a, "presenced_sessions").await, 24.0);
}

/// A node stopped cleanly (SIGTERM, as in a rolling restart) hands its work over at once: the other
/// node leads every partition and sends every subscription straight away. The leases here outlast
/// the test, so nothing it shows can come from a lapse.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_stopped_cleanly_hands_its_work_over_at_once() {
    let Subscribed {
        _redis,
        _dir,
        mut a,
        b,
        app,
        receiver,
        users,
    } = two_nodes_with_subscriptions("300s", "eeeeeeee", 16).await;
    for user in &users {
        assert_eq!(set(&b, &app, user, "Busy", "InACall").await.status, 200);
    }
    receiver
        .wait_for("16 notifications", Duration::from_secs(30), |i| i.len() >= 16)
        .await;
    let delivered = r#"presenced_notification_deliveries_total{outcome="delivered"}"#;
    assert!(metric_of(&a, delivered).await > 0.0, "A sends some subscriptions");

    assert!(a.terminate().success(), "A stops cleanly");
    let stopped = Instant::now();
    // B leads every partition now, not when A's lease would have lapsed (5 minutes)...
    while metric_of(&b, "presenced_store_partitions_led").await != 16.0 {
        assert!(
            stopped.elapsed() < Duration::from_secs(10),
            "B never led A's partitions"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // ...and sends A's subscriptions now, not when their claims would have lapsed (30 s, or 15 s
    // for one nobody claims).
    for user in &users {
        assert_eq!(set(&b, &app, user, "Away", "Away").await.status, 200);
    }
    receiver
        .wait_for("the second 16 notifications", Duration::from_secs(10), |i| {
            i.len() >= 32
        })
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let items = receiver.items();
    for user in &users {
        let notified = items
            .iter()
            .filter(|i| i["resourceData"]["id"] == user.as_str())
            .count();
        assert_eq!(
            notified, 2,
            "{user}: each change notified once, before and after the handover"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_paused_past_its_lease_cannot_write() {
    let cluster = Cluster::start();
    let (_dir, secret) = shared_secret();
    let mut a = node(&cluster.url(), &secret, &["--redis-node-lease", "1s"]);
    let b = node(&cluster.url(), &secret, &["--redis-node-lease", "1s"]);
    let app = token(&secret, None, &[], &["Presence.ReadWrite.All"]);
    assert_eq!(set(&a, &app, U1, "Busy", "InACall").await.status, 200);

    let pid = a.pid().to_string();
    Command::new("kill").args(["-STOP", &pid]).status().unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    Command::new("kill").args(["-CONT", &pid]).status().unwrap();
    // Whatever A answers now (503 while it stops, or no answer), the write does not land.
    let r = client()
        .post(a.url(&format!("/v1.0/users/{U1}/presence/setPresence")))
        .bearer_auth(&app)
        .json(&json!({ "sessionId": "s", "availability": "Away", "activity": "Away", "expirationDuration": "PT1H" }))
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    if let Ok(r) = r {
        assert_ne!(r.status().as_u16(), 200, "a fenced node acknowledged a write");
    }
    assert_eq!(
        availability(&b, &app, U1).await,
        "Busy",
        "B sees no write from the fenced node"
    );
    let status = a.terminate_or_exit();
    assert!(!status.success(), "the fenced node stops with an error");
    assert!(a.stderr().contains("lease"), "{}", a.stderr());
}

/// A write through `server` with its own client time-out: the status, or None with no answer.
async fn try_set(server: &Server, app: &str, user: &str, availability: &str) -> Option<reqwest::Response> {
    client()
        .post(server.url(&format!("/v1.0/users/{user}/presence/setPresence")))
        .bearer_auth(app)
        .json(&json!({ "sessionId": "s", "availability": availability, "activity": availability, "expirationDuration": "PT1H" }))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .ok()
}

async fn ready(server: &Server) -> bool {
    client().get(server.url("/readyz")).send().await.unwrap().status() == 200
}

/// A network partition between one node and Redis (silence, not a reset: commands meet their
/// time-outs). A cut shorter than the node's lease: it answers 503 with `Retry-After`, says not
/// ready, and resumes by itself with nothing lost. A cut longer than its lease: the other node
/// applies its fades on time and ends its client sessions after lease and grace, not before; and
/// the cut-off node, on reaching Redis again, writes nothing and stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_from_redis_answers_503_and_past_its_lease_is_fenced() {
    let redis = start_node(false);
    let relay = Relay::start(([127, 0, 0, 1], redis.port).into()).await;
    let (_dir, secret) = shared_secret();
    let timing = [
        "--redis-node-lease",
        "6s",
        "--client-grace",
        "2s",
        "--fade-after",
        "1s",
        "--session-expiration-min",
        "1s",
    ];
    let mut a = node(&format!("redis://127.0.0.1:{}", relay.port), &secret, &timing);
    let b = node(&redis.url(), &secret, &timing);
    wait_until_they_share_the_partitions(&a, &b).await;
    let app = token(&secret, None, &[], &["Presence.ReadWrite.All"]);
    assert_eq!(set(&a, &app, U1, "Busy", "InACall").await.status, 200);

    // A short cut.
    relay.cut();
    let refused = try_set(&a, &app, U1, "Away")
        .await
        .expect("A answers within its command time-out");
    assert_eq!(refused.status().as_u16(), 503);
    assert!(
        refused.headers().get("retry-after").is_some(),
        "503 carries Retry-After"
    );
    let deadline = Instant::now() + Duration::from_secs(8);
    while ready(&a).await {
        assert!(Instant::now() < deadline, "/readyz never said not ready while cut off");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    relay.heal();
    let deadline = Instant::now() + Duration::from_secs(15);
    while set(&a, &app, U1, "Away", "Away").await.status != 200 {
        assert!(Instant::now() < deadline, "A did not resume after the cut healed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(availability(&b, &app, U1).await, "Away");
    while !ready(&a).await {
        assert!(Instant::now() < deadline, "A never said ready again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A long cut: a client session held on A, and a session set through A that expires during it.
    let user = token(&secret, Some(U3), &["Presence.ReadWrite"], &[]);
    let _socket = client_session(&a, &user).await;
    set_fading(&a, &app, U2, "PT2S").await;
    relay.cut();
    let cut = Instant::now();
    // A's lease was last renewed about a third of it before the cut at the earliest: its client
    // session lasts about two thirds of the lease plus the grace (6 s), then ends.
    the_other_node_takes_over(&b, &app, U2, U3, cut, Duration::from_secs(5)).await;

    // Healed, A finds its lease lapsed: it writes nothing and stops.
    relay.heal();
    let deadline = Instant::now() + Duration::from_secs(20);
    while let Some(r) = try_set(&a, &app, U1, "Busy").await {
        assert_ne!(r.status().as_u16(), 200, "a node past its lease acknowledged a write");
        if Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let status = a.terminate_or_exit();
    assert!(!status.success(), "the fenced node stops with an error");
    assert!(a.stderr().contains("lease"), "{}", a.stderr());
    assert_eq!(
        availability(&b, &app, U1).await,
        "Away",
        "B sees no write from the fenced node"
    );
    assert!(ready(&b).await);
}

/// Writers flipping users through a node, keeping per user the last acknowledged availability and
/// those written since without an answer (a write cut off mid-way may or may not be in).
struct WriteLoad {
    users: Vec<String>,
    known: Arc<Mutex<HashMap<String, Known>>>,
    statuses: Arc<Mutex<HashMap<u16, usize>>>,
    stop: Arc<AtomicBool>,
    writers: Vec<tokio::task::JoinHandle<()>>,
}

#[derive(Default)]
struct Known {
    acked: Option<String>,
    unsure: Vec<String>,
}

impl WriteLoad {
    /// Four writers over 20 users named `<prefix>-<n>`.
    fn start(server: &Arc<Server>, app: &str, prefix: &str) -> WriteLoad {
        let users: Vec<String> = (0..20).map(|i| format!("{prefix}-{i}")).collect();
        let known: Arc<Mutex<HashMap<String, Known>>> = Arc::default();
        let statuses: Arc<Mutex<HashMap<u16, usize>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let writers = users
            .chunks(5)
            .map(|chunk| {
                let (server, app, known, statuses, stop) = (
                    server.clone(),
                    app.to_owned(),
                    known.clone(),
                    statuses.clone(),
                    stop.clone(),
                );
                let chunk = chunk.to_vec();
                tokio::spawn(async move {
                    let mut i = 0usize;
                    while !stop.load(Ordering::Acquire) {
                        let (user, av, ac) = nth_write(&chunk, i);
                        let r = set(&server, &app, user, av, ac).await;
                        *statuses.lock().unwrap().entry(r.status.as_u16()).or_default() += 1;
                        {
                            let mut known = known.lock().unwrap();
                            let k = known.entry(user.clone()).or_default();
                            if r.status == 200 {
                                k.acked = Some(av.to_owned());
                                k.unsure.clear();
                            } else {
                                k.unsure.push(av.to_owned());
                            }
                        }
                        if r.status != 200 {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        i += 1;
                    }
                })
            })
            .collect();
        WriteLoad {
            users,
            known,
            statuses,
            stop,
            writers,
        }
    }

    /// How many answers of each status so far.
    fn statuses(&self) -> HashMap<u16, usize> {
        self.statuses.lock().unwrap().clone()
    }

    /// Stop the writers; every answer was a 200 or a 503, and each user reads through `server`
    /// as its last acknowledged write or one written after it without an answer: nothing
    /// acknowledged lost, nothing corrupt. Returns the statuses.
    async fn stop_and_check(self, server: &Server, app: &str) -> HashMap<u16, usize> {
        self.stop.store(true, Ordering::Release);
        for w in self.writers {
            w.await.unwrap();
        }
        let statuses = self.statuses.lock().unwrap().clone();
        assert!(
            statuses.keys().all(|s| *s == 200 || *s == 503),
            "only 200s and 503s, no other error: {statuses:?}"
        );
        let known = std::mem::take(&mut *self.known.lock().unwrap());
        for user in &self.users {
            let k = &known[user];
            let got = availability(server, app, user).await;
            let allowed: Vec<&String> = k.acked.iter().chain(&k.unsure).collect();
            assert!(
                allowed.iter().any(|w| **w == got),
                "{user} reads {got}; acknowledged {:?}, unanswered since {:?}",
                k.acked,
                k.unsure
            );
        }
        statuses
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stopped_and_restarted_under_load_gives_503_then_service_resumes_with_nothing_lost() {
    let mut redis = start_node(false);
    let (_dir, secret) = shared_secret();
    let a = Arc::new(node(&redis.url(), &secret, &[]));
    let app = token(&secret, None, &[], &["Presence.ReadWrite.All"]);
    let load = WriteLoad::start(&a, &app, "outage");
    tokio::time::sleep(Duration::from_secs(1)).await;

    redis.kill();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut not_ready = false;
    while !not_ready && Instant::now() < deadline {
        not_ready = client().get(a.url("/readyz")).send().await.unwrap().status().as_u16() == 503;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(not_ready, "/readyz says not ready while Redis is down");
    let raw = client()
        .post(a.url(&format!("/v1.0/users/{U2}/presence/setPresence")))
        .bearer_auth(&app)
        .json(&json!({ "sessionId": "s", "availability": "Away", "activity": "Away", "expirationDuration": "PT1H" }))
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status().as_u16(), 503);
    assert!(raw.headers().get("retry-after").is_some(), "503 carries Retry-After");
    let refused_during = load.statuses().get(&503).copied().unwrap_or(0);

    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(15);
    while set(&a, &app, U2, "Away", "Away").await.status != 200 {
        assert!(Instant::now() < deadline, "service did not resume after Redis returned");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The load runs on past the recovery, then stops.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let statuses = load.stop_and_check(&a, &app).await;
    assert!(refused_during > 0, "the writers met the outage: {statuses:?}");
}

/// An operator moves a third of the Cluster's slots (and so of the partitions) to another master
/// while a node takes writes: the writes go on, nothing acknowledged is lost, the other node reads
/// the same, and a stream on the other node still hears changes in the moved partitions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_resharded_under_load_loses_nothing() {
    let cluster = Cluster::start();
    let (_dir, secret) = shared_secret();
    let a = Arc::new(node(&cluster.url(), &secret, &[]));
    let b = node(&cluster.url(), &secret, &[]);
    let app = token(&secret, None, &[], &["Presence.ReadWrite.All"]);
    let load = WriteLoad::start(&a, &app, "reshard");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let cluster = tokio::task::spawn_blocking(move || {
        cluster.move_slots_holding("{p0}");
        cluster
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let users = load.users.clone();
    let statuses = load.stop_and_check(&a, &app).await;
    eprintln!("answers while resharding: {statuses:?}");
    assert!(statuses.get(&200).copied().unwrap_or(0) > 0);
    for user in &users {
        assert_eq!(availability(&b, &app, user).await, availability(&a, &app, user).await);
    }

    // Every user, in moved partitions or not, is still heard on B after writes through A.
    let ids: Vec<&str> = users.iter().map(String::as_str).collect();
    let mut stream = open_stream(&b, &app, &ids, None).await;
    let mut waiting: std::collections::HashSet<&str> = ids.iter().copied().collect();
    for user in &users {
        assert_eq!(set(&a, &app, user, "DoNotDisturb", "Presenting").await.status, 200);
    }
    while !waiting.is_empty() {
        let (user, availability, _) = tokio::time::timeout(Duration::from_secs(10), next_presence(&mut stream))
            .await
            .unwrap_or_else(|_| panic!("B's stream never told of {waiting:?}"));
        if availability == "DoNotDisturb" {
            waiting.remove(user.as_str());
        }
    }
    drop(cluster);
}

/// Writers flip users through a node; a master is killed under that load and, once its replica
/// took over, every user is read back; then the old master returns as a replica and every user
/// is written again. Returns how many users' last acknowledged write the failover lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_out_of_memory_refuses_writes_with_503_and_loses_nothing() {
    // A small memory limit with noeviction: Redis refuses writes when full, and drops nothing.
    let redis = start_node_with(false, &["--maxmemory", "3mb", "--maxmemory-policy", "noeviction"]);
    let (_dir, secret) = shared_secret();
    let a = node(&redis.url(), &secret, &[]);
    let app = token(&secret, None, &[], &["Presence.ReadWrite.All"]);
    let mut acked = Vec::new();
    let refused = loop {
        let user = format!("memory-{}", acked.len());
        let r = set(&a, &app, &user, "Busy", "InACall").await;
        match r.status.as_u16() {
            200 => acked.push(user),
            503 => break r,
            other => panic!("writing into a full Redis answered {other}: {}", r.text),
        }
        assert!(acked.len() < 20_000, "3 MB never filled");
    };
    refused.assert_error(503, "ServiceNotAvailable");
    // Reads still work, and every acknowledged write is there.
    for user in [&acked[0], &acked[acked.len() / 2], &acked[acked.len() - 1]] {
        assert_eq!(availability(&a, &app, user).await, "Busy");
    }
    // Given memory again, writes resume by themselves.
    let raised = Command::new("redis-cli")
        .args(["-p", &redis.port.to_string(), "config", "set", "maxmemory", "0"])
        .output()
        .unwrap();
    assert!(raised.status.success());
    assert_eq!(set(&a, &app, "memory-after", "Away", "Away").await.status, 200);
    assert_eq!(availability(&a, &app, &acked[0]).await, "Busy");
}

/// A writer's `i`th write: its users in turn, each flipped between Busy and Away every round.
fn nth_write(users: &[String], i: usize) -> (&String, &'static str, &'static str) {
    let (av, ac) = if (i / users.len()).is_multiple_of(2) {
        ("Busy", "InACall")
    } else {
        ("Away", "Away")
    };
    (&users[i % users.len()], av, ac)
}

async fn failover_under_load(extra: &[&str]) -> usize {
    let mut cluster = Cluster::start();
    let (_dir, secret) = shared_secret();
    let a = Arc::new(node(&cluster.url(), &secret, extra));
    let app = token(&secret, None, &[], &["Presence.ReadWrite.All"]);
    let users: Vec<String> = (0..24).map(|i| format!("failover-{i}")).collect();
    let acked: Arc<Mutex<std::collections::HashMap<String, String>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = users
        .chunks(6)
        .map(|chunk| {
            let (a, app, acked, stop) = (a.clone(), app.clone(), acked.clone(), stop.clone());
            let chunk = chunk.to_vec();
            tokio::spawn(async move {
                let mut i = 0usize;
                while !stop.load(Ordering::Acquire) {
                    let (user, av, ac) = nth_write(&chunk, i);
                    if set(&a, &app, user, av, ac).await.status == 200 {
                        acked.lock().unwrap().insert(user.clone(), av.to_owned());
                    }
                    i += 1;
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let master = cluster.a_master();
    cluster.nodes[master].kill();
    stop.store(true, Ordering::Release);
    for w in writers {
        w.await.unwrap();
    }
    // Service resumes for every user once the replica took over.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut lost = 0;
    for user in &users {
        let want = acked.lock().unwrap().get(user).cloned();
        let got = loop {
            let r = get(&a.url(&format!("/v1.0/users/{user}/presence")), &app).await;
            if r.status == 200 {
                break r.json()["availability"].as_str().unwrap().to_owned();
            }
            if Instant::now() > deadline {
                let alive = cluster
                    .nodes
                    .iter()
                    .find(|n| n.port != cluster.nodes[master].port)
                    .unwrap();
                let nodes = Command::new("redis-cli")
                    .args(["-p", &alive.port.to_string(), "cluster", "nodes"])
                    .output()
                    .unwrap();
                panic!(
                    "reads did not resume after the failover: {} {}\ncluster: {}\nnode log: {}",
                    r.status,
                    r.text,
                    String::from_utf8_lossy(&nodes.stdout),
                    a.stderr()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        if want.is_some_and(|w| w != got) {
            lost += 1;
        }
    }
    // The old master comes back as the new one's replica (what an operator does; with WAIT the
    // promoted master has no replica to confirm writes until then).
    cluster.nodes[master].restart();
    for user in &users {
        loop {
            if set(&a, &app, user, "Available", "Available").await.status == 200 {
                break;
            }
            assert!(Instant::now() < deadline, "writes did not resume after the failover");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    eprintln!(
        "failover with {extra:?}: {lost} of {} users lost their last acknowledged write",
        users.len()
    );
    lost
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_failover_is_survived() {
    // Replication is asynchronous: what the old master acknowledged in its last moments may be
    // lost (counted and printed, not asserted); service resumes either way.
    failover_under_load(&[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_wait_for_a_replica_a_master_failover_loses_no_acknowledged_write() {
    assert_eq!(failover_under_load(&["--redis-wait-replicas", "1"]).await, 0);
}
