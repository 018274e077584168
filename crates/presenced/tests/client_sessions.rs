//! Connection-bound client sessions and `explain`, end to end with the real binary over loopback:
//! a client session folds with app sessions, outlives a killed socket by its grace and no more,
//! is kept by a reconnect without a visible change, is orphaned after a crash (reconnecting
//! clients keep theirs), ends at once on `bye`, and SIGTERM ends the sockets with a final message.
mod common;

use common::sse::SseStream;
use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

const SESSION: &str = "/v1.0/me/presence/$session";
const READ_WRITE: &[&str] = &["Presence.ReadWrite"];

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A client-session socket with `token` in its upgrade's Authorization header.
async fn connect(server: &Server, token: &str) -> Ws {
    let url = server.url(SESSION).replacen("http://", "ws://", 1);
    let mut request = url.into_client_request().unwrap();
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    tokio_tungstenite::connect_async(request).await.unwrap().0
}

async fn send(ws: &mut Ws, message: Value) {
    ws.send(Message::Text(message.to_string().into())).await.unwrap();
}

/// The next JSON message (`{"type":"closed"}` once the server closed the socket).
async fn next(ws: &mut Ws) -> Value {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a message in time");
        match message {
            Some(Ok(Message::Text(text))) => return serde_json::from_str(text.as_str()).unwrap(),
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return json!({ "type": "closed" }),
            Some(Ok(_)) => continue,
        }
    }
}

/// Say hello as `device`, Available; returns the welcome.
async fn hello(ws: &mut Ws, device: &str, session_id: Option<&str>) -> Value {
    let mut hello = json!({ "type": "hello", "device": device, "availability": "Available", "activity": "Available" });
    if let Some(id) = session_id {
        hello["sessionId"] = json!(id);
    }
    send(ws, hello).await;
    let welcome = next(ws).await;
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    welcome
}

/// The next `presence` message's availability.
async fn next_availability(ws: &mut Ws) -> String {
    let m = next(ws).await;
    assert_eq!(m["type"], "presence", "{m}");
    m["presence"]["availability"].as_str().unwrap().to_owned()
}

async fn explain(server: &Server, token: &str, path: &str) -> Value {
    let r = get(&server.url(path), token).await;
    assert_eq!(r.status, 200, "{}", r.text);
    r.json()
}

async fn set_app_session(
    server: &Server,
    app: &str,
    user: &str,
    session: &str,
    availability: &str,
    activity: &str,
) -> Reply {
    let body = json!({ "sessionId": session, "availability": availability, "activity": activity, "expirationDuration": "PT1H" });
    post(
        &server.url(&format!("/v1.0/users/{user}/presence/setPresence")),
        app,
        body,
    )
    .await
}

/// Poll `user`'s availability until it is `want`; panics after `within`.
async fn wait_for_availability(server: &Server, token: &str, user: &str, want: &str, within: Duration) -> Instant {
    let started = Instant::now();
    loop {
        let (availability, _) = presence_of(server, token, user).await;
        if availability == want {
            return Instant::now();
        }
        assert!(started.elapsed() < within, "{user} still {availability}, not {want}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_client_session_folds_with_app_sessions_and_explain_says_why() {
    let server = Server::start(&["--rate-limit", "off"]);
    let alice = server.user_token("alice", READ_WRITE);
    let app = server.app_token(&["Presence.ReadWrite.All"]);
    let mut ws = connect(&server, &alice).await;
    let welcome = hello(&mut ws, "desktop", None).await;
    let client_id = welcome["sessionId"].as_str().unwrap().to_owned();
    assert_eq!(welcome["graceSeconds"], 30);
    assert_eq!(welcome["presence"]["availability"], "Available");
    assert_eq!(welcome["presence"]["id"], "alice");

    // An app session that is Busy wins over the Available client...
    let r = set_app_session(&server, &app, "alice", "app-session", "Busy", "InACall").await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(next_availability(&mut ws).await, "Busy");
    let why = explain(&server, &alice, "/v1.0/me/presence/explain").await;
    assert_eq!(
        (why["availability"].as_str(), why["rule"].as_str()),
        (Some("Busy"), Some("highestSession"))
    );
    assert_eq!(why["decidingSessionId"], "app-session");
    let sessions = why["sessions"].as_array().unwrap();
    assert_eq!(sessions.len(), 2, "{why}");
    let client = sessions.iter().find(|s| s["kind"] == "client").unwrap();
    assert_eq!(
        (client["id"].as_str(), client["device"].as_str()),
        (Some(client_id.as_str()), Some("desktop"))
    );
    assert_eq!(
        (client["connected"].as_bool(), client["expiresAt"].is_null()),
        (Some(true), true)
    );
    let app_session = sessions.iter().find(|s| s["kind"] == "application").unwrap();
    // Set by the app `test-app` under a session id of its own choosing.
    assert_eq!(app_session["applicationId"], "test-app");
    assert!(app_session["expiresAt"].is_string());

    // ...until the client sets DoNotDisturb over its socket.
    send(
        &mut ws,
        json!({ "type": "set", "availability": "DoNotDisturb", "activity": "Presenting" }),
    )
    .await;
    assert_eq!(next_availability(&mut ws).await, "DoNotDisturb");
    let why = explain(&server, &app, "/v1.0/users/alice/presence/explain").await;
    assert_eq!(why["decidingSessionId"].as_str(), Some(client_id.as_str()));
    let same = explain(&server, &app, "/beta/communications/presences/alice/explain").await;
    assert_eq!(
        (same["rule"].clone(), same["availability"].clone()),
        (why["rule"].clone(), why["availability"].clone())
    );

    // REST acts on app sessions only.
    let r = set_app_session(&server, &app, "alice", &client_id, "Away", "Away").await;
    r.assert_error(400, "InvalidArgument");
    let r = post(
        &server.url("/v1.0/users/alice/presence/clearPresence"),
        &app,
        json!({ "sessionId": client_id }),
    )
    .await;
    assert_eq!(r.status, 404, "{}", r.text);

    // Explain is read like the presence: another user's delegated Presence.Read may not.
    let bob = server.user_token("bob", &["Presence.Read"]);
    let r = get(&server.url("/v1.0/users/alice/presence/explain"), &bob).await;
    assert_eq!(r.status, 403, "{}", r.text);

    // A bad message is answered and the session goes on.
    send(
        &mut ws,
        json!({ "type": "set", "availability": "Sleepy", "activity": "Away" }),
    )
    .await;
    let error = next(&mut ws).await;
    assert_eq!(
        (error["type"].as_str(), error["error"]["code"].as_str()),
        (Some("error"), Some("InvalidArgument")),
        "{error}"
    );
    send(
        &mut ws,
        json!({ "type": "set", "availability": "Away", "activity": "Away" }),
    )
    .await;
    assert_eq!(next_availability(&mut ws).await, "Busy");
}

#[tokio::test]
async fn a_hello_is_checked_and_the_token_may_come_in_it() {
    let server = Server::start(&["--rate-limit", "off"]);
    let app = server.app_token(&["Presence.ReadWrite.All"]);
    // An application token has no user to be present as.
    let mut ws = connect(&server, &app).await;
    send(
        &mut ws,
        json!({ "type": "hello", "device": "desktop", "availability": "Available", "activity": "Available" }),
    )
    .await;
    let error = next(&mut ws).await;
    assert_eq!(error["type"], "error", "{error}");
    assert_eq!(next(&mut ws).await["type"], "closed");

    let alice = server.user_token("alice", READ_WRITE);
    for bad in [
        json!({ "type": "hello", "availability": "Available", "activity": "Available" }),
        json!({ "type": "hello", "device": "desktop", "availability": "Available", "activity": "Sleeping" }),
        json!({ "type": "set", "device": "desktop", "availability": "Available", "activity": "Available" }),
    ] {
        let mut ws = connect(&server, &alice).await;
        send(&mut ws, bad.clone()).await;
        let error = next(&mut ws).await;
        assert_eq!(error["type"], "error", "{bad} -> {error}");
        assert_eq!(next(&mut ws).await["type"], "closed");
    }

    // A browser cannot set Authorization on a WebSocket: the token may come in the hello.
    let url = server.url(SESSION).replacen("http://", "ws://", 1);
    let mut ws = tokio_tungstenite::connect_async(url).await.unwrap().0;
    send(
        &mut ws,
        json!({ "type": "hello", "token": alice, "device": "web", "availability": "Busy", "activity": "InACall" }),
    )
    .await;
    let welcome = next(&mut ws).await;
    assert_eq!(
        (welcome["type"].as_str(), welcome["presence"]["availability"].as_str()),
        (Some("welcome"), Some("Busy")),
        "{welcome}"
    );
    // A plain GET is not a socket.
    get(&server.url(SESSION), &alice).await.assert_error(400, "BadRequest");
}

#[tokio::test]
async fn a_client_session_outlives_a_killed_socket_by_its_grace_and_no_more() {
    let server = Server::start(&["--rate-limit", "off", "--client-grace", "3s"]);
    let alice = server.user_token("alice", READ_WRITE);
    let mut ws = connect(&server, &alice).await;
    hello(&mut ws, "mobile", None).await;
    // The socket dies without a close frame, as a crashed laptop's would.
    drop(ws);
    // The disconnect is noticed at once and starts the grace: the session is still there.
    let started = Instant::now();
    let why = loop {
        let why = explain(&server, &alice, "/v1.0/me/presence/explain").await;
        if why["sessions"][0]["connected"] == false {
            break why;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{why}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(why["availability"], "Available");
    let expires: jiff::Timestamp = why["sessions"][0]["expiresAt"].as_str().unwrap().parse().unwrap();
    let evaluated: jiff::Timestamp = why["evaluatedAt"].as_str().unwrap().parse().unwrap();
    assert!(expires > evaluated, "{why}");
    // Then it goes, and not before its expiry.
    wait_for_availability(&server, &alice, "alice", "Offline", Duration::from_secs(20)).await;
    let why = explain(&server, &alice, "/v1.0/me/presence/explain").await;
    let now: jiff::Timestamp = why["evaluatedAt"].as_str().unwrap().parse().unwrap();
    assert!(now >= expires, "gone at {now}, before its expiry {expires}");
    assert_eq!(
        (why["rule"].as_str(), why["sessions"].as_array().map(Vec::len)),
        (Some("noSession"), Some(0))
    );
}

#[tokio::test]
async fn a_reconnect_within_the_grace_keeps_the_session_without_a_visible_change() {
    let server = Server::start(&["--rate-limit", "off", "--client-grace", "60s"]);
    let alice = server.user_token("alice", READ_WRITE);
    let app = server.app_token(&["Presence.ReadWrite.All"]);
    let mut ws = connect(&server, &alice).await;
    let id = hello(&mut ws, "desktop", None).await["sessionId"]
        .as_str()
        .unwrap()
        .to_owned();
    let response = client()
        .post(server.url("/v1.0/communications/presences/$stream"))
        .bearer_auth(&app)
        .json(&json!({ "ids": ["alice"] }))
        .send()
        .await
        .unwrap();
    let mut stream = SseStream::new(response);
    assert_eq!(stream.next().await.event, "snapshot");

    ws.close(None).await.unwrap();
    let mut again = connect(&server, &alice).await;
    let welcome = hello(&mut again, "desktop", Some(&id)).await;
    assert_eq!(welcome["sessionId"].as_str(), Some(id.as_str()));
    // A marker change: the first event the stream sees after the reconnect is this one.
    let r = set_app_session(&server, &app, "alice", "marker", "Busy", "InACall").await;
    assert_eq!(r.status, 200, "{}", r.text);
    let event = stream.next().await;
    assert_eq!(
        (event.event.as_str(), event.data["availability"].as_str()),
        ("presence", Some("Busy")),
        "{event:?}"
    );
    let why = explain(&server, &alice, "/v1.0/me/presence/explain").await;
    let client = why["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["kind"] == "client")
        .unwrap()
        .clone();
    assert_eq!(
        (client["id"].as_str(), client["connected"].as_bool()),
        (Some(id.as_str()), Some(true)),
        "{why}"
    );

    // A second socket taking the session over tells the first one, which then changes nothing.
    let mut third = connect(&server, &alice).await;
    hello(&mut third, "desktop", Some(&id)).await;
    let mut last = next(&mut again).await;
    while last["type"] == "presence" {
        last = next(&mut again).await;
    }
    assert_eq!(last, json!({ "type": "end", "reason": "replaced" }));
    let why = explain(&server, &alice, "/v1.0/me/presence/explain").await;
    let client = why["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["kind"] == "client")
        .unwrap()
        .clone();
    assert_eq!(client["connected"], true, "{why}");
}

#[tokio::test]
async fn after_a_crash_the_earlier_process_sessions_get_the_grace_and_reconnecting_clients_keep_theirs() {
    let mut server = Server::start(&["--rate-limit", "off", "--client-grace", "4s"]);
    let alice = server.user_token("alice", READ_WRITE);
    let bob = server.user_token("bob", READ_WRITE);
    let mut a = connect(&server, &alice).await;
    let alice_id = hello(&mut a, "desktop", None).await["sessionId"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut b = connect(&server, &bob).await;
    hello(&mut b, "mobile", None).await;

    server.crash_and_restart();
    // Alice's client reconnects; Bob's never comes back.
    let mut a = connect(&server, &alice).await;
    let welcome = hello(&mut a, "desktop", Some(&alice_id)).await;
    assert_eq!(welcome["presence"]["availability"], "Available");
    wait_for_availability(&server, &bob, "bob", "Offline", Duration::from_secs(30)).await;
    let why = explain(&server, &alice, "/v1.0/me/presence/explain").await;
    assert_eq!(why["availability"], "Available", "{why}");
    assert_eq!(why["sessions"][0]["connected"], true, "{why}");
    drop(b);
}

#[tokio::test]
async fn bye_ends_the_session_at_once() {
    let server = Server::start(&["--rate-limit", "off", "--client-grace", "1h"]);
    let alice = server.user_token("alice", READ_WRITE);
    let mut ws = connect(&server, &alice).await;
    hello(&mut ws, "web", None).await;
    send(&mut ws, json!({ "type": "bye" })).await;
    wait_for_availability(&server, &alice, "alice", "Offline", Duration::from_secs(10)).await;
}

#[tokio::test]
async fn activity_restarts_the_fade_of_a_client_session() {
    let server = Server::start(&["--rate-limit", "off", "--fade-after", "2s"]);
    let alice = server.user_token("alice", READ_WRITE);
    let mut ws = connect(&server, &alice).await;
    hello(&mut ws, "desktop", None).await;
    // Without activity an Available client fades, as an app session does...
    assert_eq!(next_availability(&mut ws).await, "AvailableIdle");
    // ...and activity brings it back.
    send(&mut ws, json!({ "type": "activity" })).await;
    assert_eq!(next_availability(&mut ws).await, "Available");
}

#[tokio::test]
async fn sigterm_ends_client_sockets_with_a_final_message_and_exits_cleanly() {
    let mut server = Server::start(&["--rate-limit", "off"]);
    let alice = server.user_token("alice", READ_WRITE);
    let mut ws = connect(&server, &alice).await;
    hello(&mut ws, "desktop", None).await;
    let status = server.terminate();
    assert!(status.success(), "{status:?}");
    assert_eq!(next(&mut ws).await, json!({ "type": "end", "reason": "shutdown" }));
    let restarted = Server::start_in(&server.data_dir, &[]);
    assert!(!restarted.stderr().contains("replayed"), "{}", restarted.stderr());
}
