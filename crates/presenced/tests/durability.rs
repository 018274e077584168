//! A `200` means durable: SIGKILL at any moment loses no acknowledged write, restarts restore
//! everything, and a damaged data dir stops the server instead of being wiped.
mod common;

use common::*;
use serde_json::json;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const WRITERS: usize = 32;
const USERS_PER_WRITER: usize = 4;

#[derive(Default, Clone, Copy, Debug)]
struct Progress {
    acked: Option<u64>,
    in_flight: Option<u64>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_a_write_burst_loses_no_acknowledged_write() {
    // The burst is far above Graph's default throttle for one application.
    let mut server = Server::start(&["--rate-limit", "off"]);
    let app = server.app_token(&["Presence.ReadWrite.All"]);
    let progress: Arc<Mutex<HashMap<String, Progress>>> = Arc::default();
    let base = server.base.clone();
    let mut workers = Vec::new();
    for w in 0..WRITERS {
        let (progress, app, base) = (progress.clone(), app.clone(), base.clone());
        workers.push(tokio::spawn(async move {
            let _ = common::client(); // installs the TLS provider reqwest needs
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap();
            for n in 1u64.. {
                for u in 0..USERS_PER_WRITER {
                    let user = format!("burst-{w}-{u}");
                    progress.lock().unwrap().entry(user.clone()).or_default().in_flight = Some(n);
                    let url = format!("{base}/v1.0/users/{user}/presence/setStatusMessage");
                    let body = json!({ "statusMessage": { "message": { "content": n.to_string() } } });
                    match client.post(url).bearer_auth(&app).json(&body).send().await {
                        Ok(r) if r.status() == 200 => {
                            progress.lock().unwrap().get_mut(&user).unwrap().acked = Some(n);
                        }
                        // The server died mid-request: this write may or may not have landed.
                        _ => return,
                    }
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    server.kill();
    for w in workers {
        w.await.unwrap();
    }
    server.crash_and_restart();

    let snapshot = progress.lock().unwrap().clone();
    let acked_total: u64 = snapshot.values().filter_map(|p| p.acked).sum();
    assert!(
        acked_total > 100,
        "the burst should have acknowledged plenty of writes, got {acked_total}"
    );
    for (user, p) in snapshot {
        let v = get(&server.url(&format!("/v1.0/users/{user}/presence")), &app)
            .await
            .json();
        let found = v["statusMessage"]["message"]["content"]
            .as_str()
            .and_then(|s| s.parse::<u64>().ok());
        let allowed = [p.acked, p.in_flight];
        assert!(
            allowed.contains(&found),
            "{user}: found {found:?}, acknowledged {:?}, in flight {:?}",
            p.acked,
            p.in_flight
        );
        assert!(
            found >= p.acked,
            "{user}: lost acknowledged write {:?} (found {found:?})",
            p.acked
        );
    }
}

#[tokio::test]
async fn restart_restores_sessions_preferences_messages_and_sequence() {
    let mut server = Server::start(&[]);
    let app = server.app_token(&["Presence.ReadWrite.All"]);
    let url = |s: &Server, a: &str| s.url(&format!("/v1.0/users/keeper/presence/{a}"));
    post(
        &url(&server, "setPresence"),
        &app,
        json!({ "sessionId": "a", "availability": "Busy", "activity": "InACall", "expirationDuration": "PT1H" }),
    )
    .await;
    post(
        &url(&server, "setUserPreferredPresence"),
        &app,
        json!({ "availability": "BeRightBack", "activity": "BeRightBack" }),
    )
    .await;
    post(
        &url(&server, "setStatusMessage"),
        &app,
        json!({ "statusMessage": { "message": { "content": "persisted" } } }),
    )
    .await;
    let mut before = get(&server.url("/v1.0/users/keeper/presence"), &app).await.json();
    // The context names the host and port, which change with the restart.
    before.as_object_mut().unwrap().remove("@odata.context");

    assert!(server.terminate().success());
    server.crash_and_restart();
    let mut after = get(&server.url("/v1.0/users/keeper/presence"), &app).await.json();
    after.as_object_mut().unwrap().remove("@odata.context");
    assert_eq!(after, before);
    // The preference hides the Busy session; clearing it shows the restored session.
    post(&url(&server, "clearUserPreferredPresence"), &app, json!({})).await;
    assert_eq!(presence_of(&server, &app, "keeper").await, pair("Busy", "InACall"));
    let later = get(&server.url("/v1.0/users/keeper/presence"), &app).await.json();
    assert!(later["sequenceNumber"].as_str() > before["sequenceNumber"].as_str());
}

#[tokio::test]
async fn transitions_due_while_down_are_applied_on_start() {
    let args = ["--fade-after", "1s", "--session-expiration-min", "1s"];
    let mut server = Server::start(&args);
    let app = server.app_token(&["Presence.ReadWrite.All"]);
    let set = |user: &str, av: &str, ac: &str, d: &str| {
        (
            server.url(&format!("/v1.0/users/{user}/presence/setPresence")),
            json!({ "sessionId": "s", "availability": av, "activity": ac, "expirationDuration": d }),
        )
    };
    let (u1, b1) = set("fader", "Available", "Available", "PT1H");
    let (u2, b2) = set("expirer", "Busy", "InACall", "PT2S");
    assert_eq!(post(&u1, &app, b1).await.status, 200);
    assert_eq!(post(&u2, &app, b2).await.status, 200);
    server.kill();
    std::thread::sleep(Duration::from_millis(2500));
    server.crash_and_restart();
    assert_eq!(presence_of(&server, &app, "fader").await, pair("Away", "Away"));
    assert_eq!(presence_of(&server, &app, "expirer").await, pair("Offline", "Offline"));
    let r = post(
        &server.url("/v1.0/users/expirer/presence/clearPresence"),
        &app,
        json!({ "sessionId": "s" }),
    )
    .await;
    r.assert_error(404, "NotFound");
}

#[test]
fn a_corrupt_database_stops_the_server_and_is_left_untouched() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("data");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("presence.redb");
    let garbage: Vec<u8> = (0..64 * 1024).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&file, &garbage).unwrap();
    let (status, stderr) = start_expecting_failure(&dir);
    assert!(!status.success());
    assert!(stderr.contains("presence.redb"), "the message names the file: {stderr}");
    assert!(
        stderr.contains("untouched"),
        "the message says nothing was wiped: {stderr}"
    );
    assert_eq!(std::fs::read(&file).unwrap(), garbage, "the file was not modified");
}

#[test]
fn a_data_dir_that_is_a_file_stops_the_server() {
    let temp = tempfile::tempdir().unwrap();
    let not_a_dir = temp.path().join("data");
    std::fs::write(&not_a_dir, b"I am a file").unwrap();
    let (status, stderr) = start_expecting_failure(&not_a_dir);
    assert!(!status.success());
    assert!(stderr.contains("data"), "{stderr}");
    assert_eq!(std::fs::read(&not_a_dir).unwrap(), b"I am a file");
}
