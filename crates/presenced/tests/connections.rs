//! Connection exhaustion against the real binary, in the hostile catalogue's manner: raw TCP,
//! every exchange bounded, every problem collected and reported at the end with what was sent.
//!
//! The attack (issue 14): an unauthenticated client opens far more connections than the server
//! has descriptors and trickles one header byte every second on each, reconnecting whenever the
//! server closes one. The server runs with its descriptor limit lowered to 256
//! (`--open-files 256`) so the attack outnumbers it. Meanwhile a normal client, from another
//! loopback address, reads and writes (the writes make the store start new log segments, which
//! need descriptors), and every one of its requests must be answered promptly.
mod common;

use common::*;
use serde_json::json;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const ATTACKER: &str = "127.0.0.2";
const ATTACK_CONNECTIONS: usize = 400;
const ATTACK_FOR: Duration = Duration::from_secs(8);
/// The longest a normal request may take during the attack.
const ANSWER_WITHIN: Duration = Duration::from_secs(2);

async fn connect_from(source: &str, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source.parse().unwrap(), 0))?;
    socket.connect(to).await
}

/// One request over a fresh connection (`Connection: close`): the status, or why there is none.
async fn exchange(to: SocketAddr, request: &[u8]) -> Result<(u16, String), String> {
    let attempt = async {
        let mut s = connect_from("127.0.0.1", to)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        s.write_all(request).await.map_err(|e| format!("write: {e}"))?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.map_err(|e| format!("read: {e}"))?;
        let text = String::from_utf8_lossy(&out).into_owned();
        let status = text
            .get(9..12)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("no status line in {text:?}"))?;
        Ok((status, text))
    };
    tokio::time::timeout(ANSWER_WITHIN, attempt)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {ANSWER_WITHIN:?}")))
}

/// One attacking connection, kept up until `stop`: a request head trickled a byte a second,
/// reconnecting whenever the server closes it. Counts connections made and closed by the server.
async fn slow_client(to: SocketAddr, stop: Arc<AtomicBool>, made: Arc<AtomicUsize>, cut: Arc<AtomicUsize>) {
    let head =
        b"GET /v1.0/users/x/presence HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    while !stop.load(Ordering::Relaxed) {
        let Ok(mut s) = connect_from(ATTACKER, to).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        made.fetch_add(1, Ordering::Relaxed);
        for byte in head.iter().cycle() {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            if s.write_all(&[*byte]).await.is_err() {
                break;
            }
            // A closed connection shows as a read of 0 (or an error) within the pause.
            let mut buf = [0u8; 512];
            match tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await {
                Err(_) => {}
                Ok(_) => break,
            }
        }
        cut.fetch_add(1, Ordering::Relaxed);
        // Reconnect a second later, not at once: this is a slow-client attack, not a connect
        // flood (which would test the machine's CPU more than the server's limits).
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_at_a_low_descriptor_limit_do_not_stop_normal_clients() {
    let server = Server::start(&[
        "--open-files",
        "256",
        "--header-read-timeout",
        "3s",
        "--rate-limit",
        "off",
    ]);
    let addr: SocketAddr = server.base.trim_start_matches("http://").parse().unwrap();
    let app = server.app_token(&["Presence.ReadWrite.All"]);
    let before = call(reqwest::Method::GET, &server.url("/metrics"), None, None)
        .await
        .text;
    let cap = metric(&before, "presenced_connections_max");
    assert!(cap > 50.0 && cap < 256.0, "the cap fits under 256 descriptors: {cap}");

    let stop = Arc::new(AtomicBool::new(false));
    let (made, cut) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let attackers: Vec<_> = (0..ATTACK_CONNECTIONS)
        .map(|_| tokio::spawn(slow_client(addr, stop.clone(), made.clone(), cut.clone())))
        .collect();
    // Let the attack fill the server first.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let mut problems: Vec<String> = Vec::new();
    let mut tally: BTreeMap<&str, usize> = BTreeMap::new();
    let mut slowest = Duration::ZERO;
    let started = Instant::now();
    let mut n = 0;
    while started.elapsed() < ATTACK_FOR {
        n += 1;
        let user = format!("normal-{}", n % 10);
        let body =
            json!({"sessionId": "s", "availability": "Busy", "activity": "InACall", "expirationDuration": "PT1H"})
                .to_string();
        let requests = [
            (
                "setPresence",
                format!(
                    "POST /v1.0/users/{user}/presence/setPresence HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {app}\r\n\
                     Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                ),
            ),
            (
                "GET presence",
                format!(
                    "GET /v1.0/users/{user}/presence HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {app}\r\nConnection: close\r\n\r\n"
                ),
            ),
            ("healthz", "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_owned()),
        ];
        for (name, request) in requests {
            let t = Instant::now();
            let result = exchange(addr, request.as_bytes()).await;
            slowest = slowest.max(t.elapsed());
            match result {
                Ok((200, _)) => *tally.entry(name).or_default() += 1,
                Ok((status, text)) => problems.push(format!("{name} during the attack: {status}: {text}")),
                Err(e) => problems.push(format!("{name} during the attack: {e}")),
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let during = call(reqwest::Method::GET, &server.url("/metrics"), None, None)
        .await
        .text;
    stop.store(true, Ordering::Relaxed);
    for a in attackers {
        let _ = a.await;
    }
    println!(
        "attack: {} slow connections made, {} closed by the server; normal requests: {tally:?}, slowest {slowest:?}",
        made.load(Ordering::Relaxed),
        cut.load(Ordering::Relaxed)
    );
    let open = metric(&during, "presenced_connections_open");
    let evicted = metric(
        &during,
        "presenced_connections_closed_by_server_total{outcome=\"evicted\"}",
    );
    let timed_out = metric(
        &during,
        "presenced_connections_closed_by_server_total{outcome=\"header_timeout\"}",
    );
    let refused = metric(&during, "presenced_connections_refused_total");
    println!("server: cap {cap}, open {open}, evicted {evicted}, header timeouts {timed_out}, refused {refused}");
    if open > cap {
        problems.push(format!("{open} connections open over the cap {cap}"));
    }
    if made.load(Ordering::Relaxed) < ATTACK_CONNECTIONS {
        problems.push("the attack did not get its connections made".into());
    }
    if evicted < 1.0 || timed_out < 1.0 || refused < 1.0 {
        problems.push(format!(
            "expected evictions, header timeouts and refusals under the attack: {evicted}, {timed_out}, {refused}"
        ));
    }
    if tally.get("setPresence").copied().unwrap_or(0) < 20 {
        problems.push(format!("too few normal writes ran: {tally:?}"));
    }
    // The store kept working: it started new log segments during the attack and still commits.
    let set = post(
        &server.url("/v1.0/users/after/presence/setPresence"),
        &app,
        json!({"sessionId": "s", "availability": "Away", "activity": "Away", "expirationDuration": "PT1H"}),
    )
    .await;
    if set.status != 200 {
        problems.push(format!("a write after the attack: {} {}", set.status, set.text));
    }
    let stderr = server.stderr();
    for sign in ["Too many open files", "EMFILE", "panicked"] {
        if stderr.contains(sign) {
            problems.push(format!("the server log shows {sign:?}:\n{stderr}"));
        }
    }
    assert!(
        problems.is_empty(),
        "{} problems:\n{}",
        problems.len(),
        problems.join("\n")
    );
}

#[tokio::test]
async fn a_body_that_stops_arriving_is_answered_408() {
    let server = Server::start(&["--body-read-timeout", "1s"]);
    let addr: SocketAddr = server.base.trim_start_matches("http://").parse().unwrap();
    let app = server.app_token(&["Presence.ReadWrite.All"]);
    let mut s = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /v1.0/users/u/presence/setPresence HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {app}\r\n\
         Content-Type: application/json\r\nContent-Length: 200\r\n\r\n{{\"sessionId\":\"s\","
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .expect("answered and closed")
        .unwrap();
    let text = String::from_utf8_lossy(&out);
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(
        text.contains("\"code\":\"RequestTimeout\"") && text.contains("request-id"),
        "{text}"
    );
}

/// Start the binary with `args` and return it with every stdout line it printed up to its
/// listening line (the shared harness keeps only that line).
fn start_reading_stdout(data_dir: &std::path::Path, args: &[&str]) -> (std::process::Child, Vec<String>) {
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .args(args)
        .env("PRESENCED_LOG_LEVEL", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = Vec::new();
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        let done = line.starts_with("metrics on ");
        lines.push(line);
        if done {
            break;
        }
    }
    (child, lines)
}

#[tokio::test]
async fn metrics_can_be_served_on_their_own_address_only() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, lines) = start_reading_stdout(dir.path(), &["--metrics-listen", "127.0.0.1:0"]);
    let api = lines
        .iter()
        .find_map(|l| l.strip_prefix("listening on "))
        .expect("listening line")
        .to_owned();
    let metrics = lines
        .iter()
        .find_map(|l| l.strip_prefix("metrics on "))
        .expect("metrics line")
        .to_owned();
    assert!(
        metrics.starts_with("http://127.0.0.1:") && metrics.ends_with("/metrics"),
        "{metrics}"
    );
    let there = call(reqwest::Method::GET, &metrics, None, None).await;
    assert_eq!(there.status, 200);
    assert!(there.text.contains("presenced_connections_open"), "{}", there.text);
    // Not on the API address: Graph's 404, like any unknown path.
    call(reqwest::Method::GET, &format!("{api}/metrics"), None, None)
        .await
        .assert_error(404, "NotFound");
    assert_eq!(
        call(reqwest::Method::GET, &format!("{api}/healthz"), None, None)
            .await
            .status,
        200
    );
    // And nothing but /metrics on the metrics address.
    let base = metrics.trim_end_matches("/metrics");
    for path in ["/healthz", "/v1.0/me/presence", "/openapi.json"] {
        let r = call(reqwest::Method::GET, &format!("{base}{path}"), None, None).await;
        assert_eq!(r.status, 404, "{path}: {}", r.text);
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// A watch stream outlives the idle and header-read timeouts (a streaming response keeps its
/// connection busy) and is counted as long-lived while it is open.
#[tokio::test]
async fn a_stream_outlives_the_connection_timeouts_and_counts_as_long_lived() {
    let server = Server::start(&["--idle-timeout", "1s", "--header-read-timeout", "1s"]);
    let app = server.app_token(&["Presence.ReadWrite.All"]);
    let long_lived = || async {
        let text = call(reqwest::Method::GET, &server.url("/metrics"), None, None)
            .await
            .text;
        metric(&text, "presenced_connections_long_lived")
    };
    let response = client()
        .post(server.url("/v1.0/communications/presences/$stream"))
        .bearer_auth(&app)
        .header("accept", "text/event-stream")
        .json(&json!({ "ids": ["streamed"] }))
        .send()
        .await
        .unwrap();
    let mut stream = common::sse::SseStream::new(response);
    assert_eq!(stream.next().await.event, "snapshot");
    assert_eq!(long_lived().await, 1.0);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let set = post(
        &server.url("/v1.0/users/streamed/presence/setPresence"),
        &app,
        json!({"sessionId": "s", "availability": "Busy", "activity": "InACall", "expirationDuration": "PT1H"}),
    )
    .await;
    assert_eq!(set.status, 200);
    let event = stream.next().await;
    assert_eq!(
        (event.event.as_str(), &event.data["availability"]),
        ("presence", &json!("Busy"))
    );
    drop(stream);
    let started = Instant::now();
    while long_lived().await != 0.0 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the closed stream is still counted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
