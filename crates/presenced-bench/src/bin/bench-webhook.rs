//! Webhook latency benchmark: time from the `200` of a `setPresence` to the webhook's receipt of
//! the notification, at a fixed open-loop request rate, against a loopback receiver.
//!
//! The baseline measured in the same run is a plain JSON POST from this process to the same
//! receiver: the cost of one HTTP hop, which no notification can beat.
//!
//! Usage: `bench-webhook --presenced target/release/presenced [--rate 2000] [--seconds 10] [--users 1000]`
//! (see `bench/webhook.sh`). Loopback only; bounded in time.
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::IntoResponse;
use axum::Router;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const TENANT: &str = "bench-tenant";

/// Per user: (request sent, 200 received), in order.
type Acks = HashMap<String, Vec<(Instant, Instant)>>;

#[derive(Default)]
struct Arrivals {
    by_user: Mutex<HashMap<String, Vec<Instant>>>,
    baseline: Mutex<Vec<Instant>>,
}

struct Args {
    presenced: String,
    rate: u64,
    seconds: u64,
    users: usize,
}

fn args() -> Args {
    let mut a = Args {
        presenced: "target/release/presenced".into(),
        rate: 2000,
        seconds: 10,
        users: 1000,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    for pair in argv.chunks(2) {
        let value = pair.get(1).cloned().unwrap_or_default();
        match pair[0].as_str() {
            "--presenced" => a.presenced = value,
            "--rate" => a.rate = value.parse().expect("--rate takes a number"),
            "--seconds" => a.seconds = value.parse().expect("--seconds takes a number"),
            "--users" => a.users = value.parse().expect("--users takes a number"),
            other => panic!("unknown argument {other}"),
        }
    }
    a
}

async fn receive(
    State(arrivals): State<Arc<Arrivals>>,
    Query(q): Query<HashMap<String, String>>,
    body: Bytes,
) -> axum::response::Response {
    let now = Instant::now();
    if let Some(token) = q.get("validationToken") {
        return ([(header::CONTENT_TYPE, "text/plain")], token.clone()).into_response();
    }
    let value: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    if value.get("baseline").is_some() {
        arrivals.baseline.lock().unwrap().push(now);
    } else {
        let mut by_user = arrivals.by_user.lock().unwrap();
        for item in value["value"].as_array().into_iter().flatten() {
            if let Some(user) = item["resourceData"]["id"].as_str() {
                by_user.entry(user.to_owned()).or_default().push(now);
            }
        }
    }
    axum::http::StatusCode::ACCEPTED.into_response()
}

fn token(bin: &str, dir: &std::path::Path, extra: &[&str]) -> String {
    let out = Command::new(bin)
        .args(["token", "--data-dir"])
        .arg(dir)
        .args(["--tenant", TENANT, "--app", "bench"])
        .args(extra)
        .output()
        .expect("presenced token");
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn summary(name: &str, mut ms: Vec<f64>) -> Value {
    ms.sort_by(|a, b| a.total_cmp(b));
    let s = json!({
        "name": name, "count": ms.len(),
        "p50_ms": percentile(&ms, 0.50), "p90_ms": percentile(&ms, 0.90),
        "p99_ms": percentile(&ms, 0.99), "max_ms": ms.last().copied().unwrap_or(f64::NAN),
    });
    println!("{s}");
    s
}

#[tokio::main]
async fn main() {
    let args = args();
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let dir = std::env::temp_dir().join(format!("bench-webhook-{}", std::process::id()));
    let mut server = Command::new(&args.presenced)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&dir)
        .args([
            "--webhook-allow-http",
            "--webhook-allow-network",
            "127.0.0.0/8",
            "--log-level",
            "warn",
            "--rate-limit",
            "off",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start presenced");
    let mut line = String::new();
    BufReader::new(server.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let base = line.trim().rsplit(' ').next().unwrap().to_owned();

    let arrivals = Arc::new(Arrivals::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = format!("http://{}/hook", listener.local_addr().unwrap());
    let app = Router::new().fallback(receive).with_state(arrivals.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let client = reqwest::Client::builder().pool_max_idle_per_host(512).build().unwrap();
    let writer = token(&args.presenced, &dir, &[]);
    let subscriber = token(
        &args.presenced,
        &dir,
        &["--user", "bench-watcher", "--scope", "Presence.Read.All"],
    );
    let users: Vec<String> = (0..args.users).map(|i| format!("bench-user-{i}")).collect();
    for chunk in users.chunks(650) {
        let list = chunk.iter().map(|u| format!("'{u}'")).collect::<Vec<_>>().join(",");
        #[allow(clippy::disallowed_methods)]
        let expiry = (jiff::Timestamp::now() + jiff::SignedDuration::from_mins(50)).to_string();
        let body = json!({ "changeType": "updated", "notificationUrl": hook, "expirationDateTime": expiry,
            "resource": format!("/communications/presences?$filter=id in ({list})") });
        let r = client
            .post(format!("{base}/v1.0/subscriptions"))
            .bearer_auth(&subscriber)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "subscription: {}", r.text().await.unwrap());
    }

    // Open loop: one request every 1/rate seconds, whatever the latency of earlier ones.
    // Per user: (request sent, 200 received), in order.
    let acks: Arc<Mutex<Acks>> = Arc::default();
    let errors = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let total = args.rate * args.seconds;
    let mut ticker = tokio::time::interval(Duration::from_nanos(1_000_000_000 / args.rate));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..total {
        ticker.tick().await;
        let user = users[(n as usize) % users.len()].clone();
        let round = n as usize / users.len();
        let (av, ac) = if round.is_multiple_of(2) {
            ("Busy", "InACall")
        } else {
            ("Away", "Away")
        };
        let (client, writer, base, acks, errors) = (
            client.clone(),
            writer.clone(),
            base.clone(),
            acks.clone(),
            errors.clone(),
        );
        tasks.spawn(async move {
            let body =
                json!({ "sessionId": "bench", "availability": av, "activity": ac, "expirationDuration": "PT1H" });
            let url = format!("{base}/v1.0/users/{user}/presence/setPresence");
            let sent = Instant::now();
            match client.post(url).bearer_auth(&writer).json(&body).send().await {
                Ok(r) if r.status() == 200 => acks
                    .lock()
                    .unwrap()
                    .entry(user)
                    .or_default()
                    .push((sent, Instant::now())),
                _ => drop(errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed)),
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let elapsed = started.elapsed();
    // Wait (bounded) for the notifications to drain.
    let expected: usize = acks.lock().unwrap().values().map(Vec::len).sum();
    let drain_until = Instant::now() + Duration::from_secs(30);
    while Instant::now() < drain_until {
        let got: usize = arrivals.by_user.lock().unwrap().values().map(Vec::len).sum();
        if got >= expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let mut latencies = Vec::new();
    let mut from_send = Vec::new();
    let mut write_latencies = Vec::new();
    let acks = std::mem::take(&mut *acks.lock().unwrap());
    let arrived = std::mem::take(&mut *arrivals.by_user.lock().unwrap());
    let mut missing = 0usize;
    for (user, sent) in acks.iter() {
        let got = arrived.get(user).map(Vec::as_slice).unwrap_or(&[]);
        missing += sent.len().saturating_sub(got.len());
        for ((send, ack), arrival) in sent.iter().zip(got) {
            // A notification can land before the client has read its 200: count that as 0.
            latencies.push(arrival.saturating_duration_since(*ack).as_secs_f64() * 1000.0);
            from_send.push(arrival.saturating_duration_since(*send).as_secs_f64() * 1000.0);
            write_latencies.push(ack.duration_since(*send).as_secs_f64() * 1000.0);
        }
    }

    // Baseline: the same receiver, one plain POST per request, at the same rate for 2 s.
    let mut base_lat = Vec::new();
    let mut ticker = tokio::time::interval(Duration::from_nanos(1_000_000_000 / args.rate));
    for _ in 0..(args.rate * 2).min(total) {
        ticker.tick().await;
        let sent = Instant::now();
        if client
            .post(&hook)
            .json(&json!({ "baseline": true }))
            .send()
            .await
            .is_ok()
        {
            base_lat.push(sent.elapsed().as_secs_f64() * 1000.0);
        }
    }
    let _ = server.kill();
    let _ = server.wait();
    let _ = std::fs::remove_dir_all(&dir);

    println!(
        "{}",
        json!({ "rate_target": args.rate, "achieved_rate": expected as f64 / elapsed.as_secs_f64(), "changes_acked": expected,
            "errors": errors.load(std::sync::atomic::Ordering::Relaxed), "notifications_missing": missing, "users": args.users })
    );
    let presenced = summary("setPresence 200 -> webhook receipt", latencies);
    summary("setPresence sent -> webhook receipt", from_send);
    summary("setPresence sent -> 200 (durable write)", write_latencies);
    let baseline = summary("baseline: direct POST round trip to the receiver", base_lat);
    println!(
        "{}",
        json!({ "p50_ratio": presenced["p50_ms"].as_f64().unwrap() / baseline["p50_ms"].as_f64().unwrap(),
                "p99_ratio": presenced["p99_ms"].as_f64().unwrap() / baseline["p99_ms"].as_f64().unwrap() })
    );
}
