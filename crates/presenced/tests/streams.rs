//! Watch streams end to end, with the real binary over loopback: snapshot then changes, resume
//! after a dropped connection and after SIGKILL, reset past the window or for another watch set,
//! slow consumers, tenant isolation, token expiry, WebSocket, and SIGTERM.
mod common;

use common::sse::{SseEvent, SseStream};
use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

const STREAM: &str = "/v1.0/communications/presences/$stream";

async fn open(server: &Server, token: &str, body: Value, resume: Option<&str>) -> SseStream {
    let mut request = stream_client()
        .post(server.url(STREAM))
        .bearer_auth(token)
        .header("accept", "text/event-stream")
        .json(&body);
    if let Some(r) = resume {
        request = request.header("last-event-id", r);
    }
    SseStream::new(request.send().await.unwrap())
}

async fn set(server: &Server, token: &str, user: &str, availability: &str, activity: &str) {
    let body =
        json!({ "sessionId": "s", "availability": availability, "activity": activity, "expirationDuration": "PT1H" });
    let r = post(
        &server.url(&format!("/v1.0/users/{user}/presence/setPresence")),
        token,
        body,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
}

/// Flip `user` between Busy and Away `n` times; returns the availabilities set, in order.
async fn flips(server: &Server, token: &str, user: &str, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    for i in 0..n {
        let (a, b) = if i % 2 == 0 {
            ("Busy", "InACall")
        } else {
            ("Away", "Away")
        };
        set(server, token, user, a, b).await;
        out.push(a.to_owned());
    }
    out
}

fn presence(event: &SseEvent) -> (String, String) {
    assert_eq!(event.event, "presence", "{event:?}");
    (
        event.data["id"].as_str().unwrap().to_owned(),
        event.data["availability"].as_str().unwrap().to_owned(),
    )
}

/// Read `n` presence events; returns them and the last resume token.
async fn presences(stream: &mut SseStream, n: usize) -> (Vec<(String, String)>, String) {
    let mut out = Vec::new();
    let mut last = String::new();
    while out.len() < n {
        let e = stream.next().await;
        out.push(presence(&e));
        last = e.id.unwrap();
    }
    (out, last)
}

#[tokio::test]
async fn a_stream_opens_with_a_snapshot_then_sends_every_change_in_order() {
    let server = Server::start(&["--rate-limit", "off"]);
    let app = server.app_token(&["Presence.ReadWrite.All"]);
    set(&server, &app, "alice", "Away", "Away").await;
    let mut stream = open(&server, &app, json!({ "ids": ["alice", "bob"] }), None).await;
    let snapshot = stream.next().await;
    assert_eq!(snapshot.event, "snapshot");
    assert_eq!(snapshot.data["reset"], false);
    let value = snapshot.data["value"].as_array().unwrap();
    assert_eq!(value.len(), 2);
    assert_eq!(
        (value[0]["id"].as_str(), value[0]["availability"].as_str()),
        (Some("alice"), Some("Away"))
    );
    assert_eq!(
        (value[1]["id"].as_str(), value[1]["availability"].as_str()),
        (Some("bob"), Some("Offline"))
    );
    assert!(snapshot.id.is_some());
    set(&server, &app, "carol", "Busy", "InACall").await; // not watched
    let mut expected = Vec::new();
    for (user, n) in [("bob", 3), ("alice", 2)] {
        for a in flips(&server, &app, user, n).await {
            expected.push((user.to_owned(), a));
        }
    }
    let (got, _) = presences(&mut stream, expected.len()).await;
    assert_eq!(got, expected);
}

#[tokio::test]
async fn a_resumed_stream_gets_exactly_what_it_missed_also_after_sigkill() {
    let mut server = Server::start(&["--rate-limit", "off"]);
    let app = server.app_token(&["Presence.ReadWrite.All"]);
    let watch = json!({ "ids": ["u1", "u2"] });
    let mut stream = open(&server, &app, watch.clone(), None).await;
    stream.next().await;
    flips(&server, &app, "u1", 2).await;
    let (_, token) = presences(&mut stream, 2).await;
    drop(stream);
    // Missed while disconnected: three changes.
    flips(&server, &app, "u2", 3).await;
    let mut resumed = open(&server, &app, watch.clone(), Some(&token)).await;
    let (got, token) = presences(&mut resumed, 3).await;
    assert_eq!(
        got,
        [("u2", "Busy"), ("u2", "Away"), ("u2", "Busy")].map(|(u, a)| (u.to_owned(), a.to_owned()))
    );
    drop(resumed);
    // Missed across a crash: two more, then SIGKILL and restart.
    flips(&server, &app, "u1", 2).await;
    server.crash_and_restart();
    let mut resumed = open(&server, &app, watch, Some(&token)).await;
    let (got, _) = presences(&mut resumed, 2).await;
    assert_eq!(
        got,
        [("u1", "Busy"), ("u1", "Away")].map(|(u, a)| (u.to_owned(), a.to_owned()))
    );
    set(&server, &app, "u2", "Away", "Away").await;
    let (got, _) = presences(&mut resumed, 1).await;
    assert_eq!(
        got,
        [("u2".to_owned(), "Away".to_owned())],
        "then live again, nothing repeated"
    );
}

#[tokio::test]
async fn an_old_token_for_another_watch_set_or_past_the_window_resets() {
    // The smallest window the server keeps (it never holds fewer than 10,000 changes).
    let server = Server::start(&["--rate-limit", "off", "--change-log-retain", "1"]);
    let app = server.app_token(&["Presence.ReadWrite.All"]);
    let mut stream = open(&server, &app, json!({ "ids": ["a"] }), None).await;
    let token = stream.next().await.id.unwrap();
    drop(stream);
    set(&server, &app, "b", "Busy", "InACall").await;
    let mut other = open(&server, &app, json!({ "ids": ["b"] }), Some(&token)).await;
    let snapshot = other.next().await;
    assert_eq!(
        (snapshot.event.as_str(), &snapshot.data["reset"]),
        ("snapshot", &json!(true))
    );
    assert_eq!(snapshot.data["value"][0]["availability"], "Busy");
    let mut garbage = open(&server, &app, json!({ "ids": ["a"] }), Some("not-a-token")).await;
    assert_eq!(garbage.next().await.data["reset"], true);
    // A position the window no longer holds: the log keeps at least 10,000 changes, so pass it.
    let writers: Vec<_> = (0..16)
        .map(|w| {
            let (base, app) = (server.base.clone(), app.clone());
            tokio::spawn(async move {
                for i in 0..700 {
                    let body = json!({ "sessionId": "s", "availability": "Busy", "activity": "InACall", "expirationDuration": "PT1H" });
                    let r = post(&format!("{base}/v1.0/users/w{w}-{i}/presence/setPresence"), &app, body).await;
                    assert_eq!(r.status, 200);
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    let mut late = open(&server, &app, json!({ "ids": ["a"] }), Some(&token)).await;
    let snapshot = late.next().await;
    assert_eq!(
        (snapshot.event.as_str(), &snapshot.data["reset"]),
        ("snapshot", &json!(true))
    );
}

#[tokio::test]
async fn a_slow_consumer_is_resynchronised_while_a_fast_one_keeps_receiving() {
    let server = Server::start(&["--rate-limit", "off"]);
    let app = server.app_token(&["Presence.ReadWrite.All"]);
    let users: Vec<String> = (0..4).map(|i| format!("busy-{i}")).collect();
    // Large events (a long out-of-office message rides along with every change), so that what
    // the slow reader leaves unread overflows the socket buffers and then its queue.
    let long = "x".repeat(4000);
    for u in &users {
        let body = json!({ "outOfOfficeSettings": { "isOutOfOffice": true, "message": long } });
        let r = post(
            &server.url(&format!("/v1.0/users/{u}/presence/setOutOfOfficeSettings")),
            &app,
            body,
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text);
    }
    let watch = json!({ "ids": users });
    let mut fast = open(&server, &app, watch.clone(), None).await;
    let mut slow = open(&server, &app, watch, None).await;
    fast.next().await;
    slow.next().await;
    let per_user = 1000;
    let writers: Vec<_> = users
        .iter()
        .map(|u| {
            let (base, app, u) = (server.base.clone(), app.clone(), u.clone());
            tokio::spawn(async move {
                for i in 0..per_user {
                    let (a, b) = if i % 2 == 0 {
                        ("Busy", "InACall")
                    } else {
                        ("Away", "Away")
                    };
                    let body =
                        json!({ "sessionId": "s", "availability": a, "activity": b, "expirationDuration": "PT1H" });
                    let r = post(&format!("{base}/v1.0/users/{u}/presence/setPresence"), &app, body).await;
                    assert_eq!(r.status, 200);
                }
            })
        })
        .collect();
    let total = per_user * users.len();
    let (got, _) = presences(&mut fast, total).await;
    for w in writers {
        w.await.unwrap();
    }
    assert_eq!(got.len(), total);
    let metrics = client()
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let fell_behind: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("presenced_streams_fell_behind "))
        .expect("the metric is exported")
        .parse()
        .unwrap();
    assert!(
        fell_behind >= 1.0,
        "the slow stream fell behind its queue: {fell_behind}"
    );
    // Then it reads: every change of every user, in order, none missing or repeated (caught up
    // from the log, since the window still holds its position).
    let mut last: std::collections::HashMap<String, String> = Default::default();
    for _ in 0..total {
        let e = slow.next().await;
        assert_eq!(e.event, "presence", "no reset: the window still held its position");
        let user = e.data["id"].as_str().unwrap().to_owned();
        let seq = e.data["sequenceNumber"].as_str().unwrap().to_owned();
        if let Some(previous) = last.insert(user.clone(), seq.clone()) {
            assert!(previous < seq, "{user}: {previous} then {seq}");
        }
    }
}

#[tokio::test]
async fn a_tenant_stream_sees_its_tenant_only() {
    let server = Server::start(&["--rate-limit", "off"]);
    let other_tenant = "22222222-2222-2222-2222-222222222222";
    let app = server.app_token(&["Presence.ReadWrite.All"]);
    let other = server.app_token_in(other_tenant, &["Presence.ReadWrite.All"], "1h");
    set(&server, &app, "mine", "Busy", "InACall").await;
    set(&server, &other, "theirs", "Busy", "InACall").await;
    let mut stream = open(&server, &app, json!({ "scope": "tenant" }), None).await;
    let snapshot = stream.next().await;
    let ids: Vec<&str> = snapshot.data["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["mine"]);
    set(&server, &other, "theirs", "Away", "Away").await;
    set(&server, &app, "mine", "Away", "Away").await;
    let (got, _) = presences(&mut stream, 1).await;
    assert_eq!(got, [("mine".to_owned(), "Away".to_owned())]);
    // Delegated tokens cannot watch a tenant.
    let user = server.user_token("alice", &["Presence.Read.All"]);
    let r = client()
        .post(server.url(STREAM))
        .bearer_auth(&user)
        .json(&json!({ "scope": "tenant" }))
        .send()
        .await
        .unwrap();
    reply(r).await.assert_error(403, "Forbidden");
}

#[tokio::test]
async fn a_stream_ends_when_its_token_expires() {
    let server = Server::start(&["--rate-limit", "off"]);
    let short = server.app_token_in(TENANT, &["Presence.Read.All"], "2s");
    let mut stream = open(&server, &short, json!({ "ids": ["x"] }), None).await;
    assert_eq!(stream.next().await.event, "snapshot");
    let end = stream
        .next_within(Duration::from_secs(10))
        .await
        .expect("a final event");
    assert_eq!(
        (end.event.as_str(), &end.data["reason"]),
        ("end", &json!("tokenExpired"))
    );
    assert!(
        stream.next_within(Duration::from_secs(5)).await.is_none(),
        "then the stream closes"
    );
}

#[tokio::test]
async fn bad_stream_requests_are_graph_errors() {
    let server = Server::start(&["--rate-limit", "off"]);
    let app = server.app_token(&["Presence.ReadWrite.All"]);
    let user = server.user_token("alice", &["Presence.Read"]);
    let post_stream = |token: String, body: Value| {
        let url = server.url(STREAM);
        async move { reply(client().post(url).bearer_auth(token).json(&body).send().await.unwrap()).await }
    };
    post_stream(app.clone(), json!({ "ids": [] }))
        .await
        .assert_error(400, "InvalidArgument");
    post_stream(app.clone(), json!({ "ids": ["a b"] }))
        .await
        .assert_error(400, "InvalidArgument");
    let many: Vec<String> = (0..651).map(|i| format!("u{i}")).collect();
    post_stream(app.clone(), json!({ "ids": many }))
        .await
        .assert_error(400, "InvalidArgument");
    post_stream(app.clone(), json!({}))
        .await
        .assert_error(400, "InvalidArgument");
    // Presence.Read may watch only its own user.
    post_stream(user.clone(), json!({ "ids": ["bob"] }))
        .await
        .assert_error(403, "Forbidden");
    let own = client()
        .post(server.url(STREAM))
        .bearer_auth(&user)
        .json(&json!({ "ids": ["alice"] }))
        .send()
        .await
        .unwrap();
    assert_eq!(own.status(), 200);
    // No token: 401; a token in the query string is not a way in.
    let r = client()
        .get(server.url(&format!("{STREAM}?ids=a&access_token={app}")))
        .send()
        .await
        .unwrap();
    reply(r).await.assert_error(401, "InvalidAuthenticationToken");
    let r = client()
        .get(server.url(&format!("{STREAM}?ids=a&access_token=x")))
        .bearer_auth(&app)
        .send()
        .await
        .unwrap();
    reply(r).await.assert_error(400, "InvalidArgument");
    // GET with ids works for server-side clients.
    let r = client()
        .get(server.url(&format!("{STREAM}?ids=a,b")))
        .bearer_auth(&app)
        .send()
        .await
        .unwrap();
    let mut stream = SseStream::new(r);
    assert_eq!(stream.next().await.data["value"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn open_streams_are_capped_per_application() {
    let server = Server::start(&["--rate-limit", "off", "--streams-max-per-app", "2"]);
    let app = server.app_token(&["Presence.ReadWrite.All"]);
    let a = open(&server, &app, json!({ "ids": ["x"] }), None).await;
    let _b = open(&server, &app, json!({ "ids": ["x"] }), None).await;
    let r = client()
        .post(server.url(STREAM))
        .bearer_auth(&app)
        .json(&json!({ "ids": ["x"] }))
        .send()
        .await
        .unwrap();
    reply(r).await.assert_error(429, "TooManyRequests");
    drop(a);
    // The closed stream's place comes back (once the server notices the disconnect).
    let mut reopened = None;
    for _ in 0..50 {
        let r = client()
            .post(server.url(STREAM))
            .bearer_auth(&app)
            .json(&json!({ "ids": ["x"] }))
            .send()
            .await
            .unwrap();
        if r.status() == 200 {
            reopened = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(reopened.is_some(), "a closed stream frees its place");
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn ws_open(server: &Server) -> Ws {
    let url = server.url(STREAM).replacen("http://", "ws://", 1);
    tokio_tungstenite::connect_async(url).await.unwrap().0
}

async fn ws_next(ws: &mut Ws) -> Value {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a message in time")
            .expect("the socket is open")
            .unwrap();
        match message {
            Message::Text(text) => return serde_json::from_str(text.as_str()).unwrap(),
            Message::Close(_) => return json!({ "type": "closed" }),
            _ => continue,
        }
    }
}

#[tokio::test]
async fn a_websocket_stream_takes_its_token_in_the_first_message_and_resumes() {
    let server = Server::start(&["--rate-limit", "off"]);
    let app = server.app_token(&["Presence.ReadWrite.All"]);
    let mut ws = ws_open(&server).await;
    ws.send(Message::Text(
        json!({ "type": "watch", "token": app, "ids": ["w1"] })
            .to_string()
            .into(),
    ))
    .await
    .unwrap();
    let snapshot = ws_next(&mut ws).await;
    assert_eq!(snapshot["type"], "snapshot");
    assert_eq!(snapshot["value"][0]["id"], "w1");
    set(&server, &app, "w1", "Busy", "InACall").await;
    let change = ws_next(&mut ws).await;
    assert_eq!(
        (change["type"].as_str(), change["presence"]["availability"].as_str()),
        (Some("presence"), Some("Busy"))
    );
    let resume = change["resume"].as_str().unwrap().to_owned();
    drop(ws);
    set(&server, &app, "w1", "Away", "Away").await;
    let mut ws = ws_open(&server).await;
    ws.send(Message::Text(
        json!({ "type": "watch", "token": app, "ids": ["w1"], "resume": resume })
            .to_string()
            .into(),
    ))
    .await
    .unwrap();
    let missed = ws_next(&mut ws).await;
    assert_eq!(
        (missed["type"].as_str(), missed["presence"]["availability"].as_str()),
        (Some("presence"), Some("Away"))
    );
    // A bad token in the first message: an error, then the socket closes.
    let mut bad = ws_open(&server).await;
    bad.send(Message::Text(
        json!({ "token": "nope", "ids": ["w1"] }).to_string().into(),
    ))
    .await
    .unwrap();
    let error = ws_next(&mut bad).await;
    assert_eq!(error["type"], "error");
    assert_eq!(ws_next(&mut bad).await["type"], "closed");
}

#[tokio::test]
async fn a_websocket_first_message_larger_than_the_read_buffer_arrives_whole() {
    // 650 ids of 120 characters: ~80 KiB in one frame, many times the socket's 4 KiB read buffer.
    let server = Server::start(&["--rate-limit", "off"]);
    let app = server.app_token(&["Presence.ReadWrite.All"]);
    let ids: Vec<String> = (0..650).map(|i| format!("{i:03}-{}", "u".repeat(116))).collect();
    let mut ws = ws_open(&server).await;
    ws.send(Message::Text(
        json!({ "type": "watch", "token": app, "ids": ids }).to_string().into(),
    ))
    .await
    .unwrap();
    let snapshot = ws_next(&mut ws).await;
    assert_eq!(snapshot["type"], "snapshot", "{snapshot}");
    let value = snapshot["value"].as_array().unwrap();
    assert_eq!(value.len(), 650);
    assert_eq!(value[649]["id"], ids[649].as_str());
}

#[tokio::test]
async fn sigterm_ends_streams_and_sockets_with_a_final_message_and_exits_cleanly() {
    let mut server = Server::start(&["--rate-limit", "off"]);
    let app = server.app_token(&["Presence.ReadWrite.All"]);
    let mut sse = open(&server, &app, json!({ "ids": ["t"] }), None).await;
    sse.next().await;
    let mut ws = ws_open(&server).await;
    ws.send(Message::Text(json!({ "token": app, "ids": ["t"] }).to_string().into()))
        .await
        .unwrap();
    assert_eq!(ws_next(&mut ws).await["type"], "snapshot");
    let started = std::time::Instant::now();
    let status = server.terminate();
    assert!(status.success(), "{status:?}");
    assert!(started.elapsed() < Duration::from_secs(15), "within the drain time");
    let end = sse.next_within(Duration::from_secs(5)).await.expect("a final event");
    assert_eq!((end.event.as_str(), &end.data["reason"]), ("end", &json!("shutdown")));
    assert_eq!(ws_next(&mut ws).await, json!({ "type": "end", "reason": "shutdown" }));
    // A clean stop: the next start has nothing to replay.
    let restarted = Server::start_in(&server.data_dir, &[]);
    assert!(!restarted.stderr().contains("replayed"), "{}", restarted.stderr());
}
