//! `bench-bulk`: latency of `POST /v1.0/communications/getPresencesByUserId` with 650 ids (Graph's
//! maximum), against `GET /healthz` measured in the same run as the baseline.
//!
//! It starts `presenced serve` on a loopback port with a fresh data directory, mints an application
//! token with `presenced token`, gives every user a presence session (every `--message-every`-th
//! one also a status message), then sends `--requests` sequential bulk reads interleaved with as
//! many `GET /healthz` (one connection, one request in flight: latency, not throughput).
//!
//! Two views of the server's time for the bulk read:
//! - client side: bulk latency minus `/healthz` latency, the cheapest route on the same HTTP stack,
//!   connection and client (the difference is the route's own work: auth, parsing, 650 reads and
//!   the JSON response);
//! - server side: the delta of presenced's own histogram
//!   `presenced_http_request_duration_seconds{route="getPresencesByUserId"}` between scrapes of
//!   `/metrics` taken just before and just after the measured requests. Its buckets double from
//!   50 µs, so percentiles are bucket bounds ("p99 ≤ X"); its `_sum`/`_count` give the exact mean.
//!
//! Output: JSON lines, then a markdown table. Usage (see `bench/bulk.sh`):
//! `bench-bulk [--presenced target/release/presenced] [--requests 2000] [--ids 650] [--message-every 3]`
use anyhow::{bail, ensure, Context};
use clap::Parser;
use presenced_bench::{percentile, token, Histogram, Server};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::{Duration, Instant};

const TENANT: &str = "t";
const ROUTE: &str = "getPresencesByUserId";
const BASELINE_ROUTE: &str = "healthz";
/// The target for the 650-id read.
const TARGET_P99_S: f64 = 0.002;

#[derive(Debug, Parser)]
#[command(name = "bench-bulk", about = "getPresencesByUserId latency against GET /healthz")]
struct Args {
    /// The presenced binary to start.
    #[arg(long, default_value = "target/release/presenced")]
    presenced: PathBuf,
    /// Measured requests per series (bulk reads, and as many /healthz).
    #[arg(long, default_value_t = 2000)]
    requests: usize,
    /// Unmeasured requests per series first (connection, allocator and caches warm).
    #[arg(long, default_value_t = 200)]
    warmup: usize,
    /// Distinct user ids per bulk read (1..=650); this many users are populated.
    #[arg(long, default_value_t = 650)]
    ids: usize,
    /// Every n-th user also gets a status message (with an expiry); 0 = none.
    #[arg(long, default_value_t = 3)]
    message_every: usize,
    /// Parent of the temporary data directory. [default: the system temp dir]
    #[arg(long)]
    data_parent: Option<PathBuf>,
}

/// GUID-shaped user ids, lower case (as presenced normalises them).
fn user_id(i: usize) -> String {
    let scramble = (i as u64).wrapping_mul(2_654_435_761) as u32;
    format!("{scramble:08x}-1b2c-4d5e-8f90-{i:012x}")
}

async fn populate(client: &reqwest::Client, base: &str, token: &str, args: &Args) -> anyhow::Result<()> {
    let pairs = [
        ("Available", "Available"),
        ("Busy", "InACall"),
        ("Away", "Away"),
        ("DoNotDisturb", "Presenting"),
    ];
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..args.ids {
        let (client, base, token) = (client.clone(), base.to_owned(), token.to_owned());
        let (availability, activity) = pairs[i % pairs.len()];
        let message = args.message_every > 0 && i % args.message_every == 0;
        tasks.spawn(async move {
            let user = user_id(i);
            let presence = json!({ "sessionId": "0b8f5c1e-3a2d-4c6b-9e7f-1d2c3b4a5f60", "availability": availability,
                "activity": activity, "expirationDuration": "PT4H" });
            let mut writes = vec![("setPresence", presence)];
            if message {
                let content = format!("Workshop in building {i} until 5pm, reachable on chat. Back tomorrow.");
                writes.push((
                    "setStatusMessage",
                    json!({ "statusMessage": {
                        "message": { "content": content, "contentType": "text" },
                        "expiryDateTime": { "dateTime": "2099-12-31T17:00:00", "timeZone": "Pacific Standard Time" } } }),
                ));
            }
            for (action, body) in writes {
                let url = format!("{base}/v1.0/users/{user}/presence/{action}");
                let r = client.post(url).bearer_auth(&token).json(&body).send().await?;
                let status = r.status();
                ensure!(status == 200, "{action} for {user}: {status}: {}", r.text().await?);
            }
            Ok::<(), anyhow::Error>(())
        });
        if tasks.len() >= 32 {
            tasks.join_next().await.context("task")???;
        }
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(())
}

/// One route's `http_request_duration_seconds` histogram in a `/metrics` text.
fn histogram(metrics: &str, route: &str) -> Histogram {
    Histogram::parse(
        metrics,
        "presenced_http_request_duration_seconds",
        Some(("route", route)),
    )
}

/// The server's view of one route's latency: count, mean, the buckets of p50 and p99.
fn summary(h: &Histogram, route: &str) -> Value {
    let bounds = |p| {
        h.quantile_bounds(p)
            .map(|(lo, hi)| json!([lo, if hi.is_finite() { json!(hi) } else { json!("+Inf") }]))
    };
    json!({
        "series": format!("server histogram {route}"),
        "count": h.count,
        "mean_us": if h.count > 0 { h.sum / h.count as f64 * 1e6 } else { f64::NAN },
        "p50_bucket_s": bounds(0.50),
        "p99_bucket_s": bounds(0.99),
    })
}

struct Stats {
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
    mean: f64,
}

fn stats(mut us: Vec<f64>) -> Stats {
    us.sort_by(f64::total_cmp);
    Stats {
        p50: percentile(&us, 0.50),
        p90: percentile(&us, 0.90),
        p99: percentile(&us, 0.99),
        max: us.last().copied().unwrap_or(f64::NAN),
        mean: us.iter().sum::<f64>() / us.len().max(1) as f64,
    }
}

async fn scrape(client: &reqwest::Client, base: &str) -> anyhow::Result<String> {
    let r = client.get(format!("{base}/metrics")).send().await?;
    ensure!(r.status() == 200, "/metrics: {}", r.status());
    Ok(r.text().await?)
}

/// Send one request and read the whole response body; returns (latency, body length).
async fn timed(request: reqwest::RequestBuilder) -> anyhow::Result<(Duration, usize)> {
    let started = Instant::now();
    let r = request.send().await?;
    let status = r.status();
    let body = r.bytes().await?;
    let elapsed = started.elapsed();
    if status != 200 {
        bail!("status {status}: {}", String::from_utf8_lossy(&body));
    }
    Ok((elapsed, body.len()))
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn ms(us: f64) -> String {
    format!("{:.3}", us / 1000.0)
}

fn bound_ms(b: Option<(f64, f64)>) -> String {
    match b {
        Some((_, hi)) if hi.is_finite() => format!("≤ {:.2}", hi * 1000.0),
        Some((lo, _)) => format!("> {:.2}", lo * 1000.0),
        None => "–".to_owned(),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ensure!((1..=650).contains(&args.ids), "--ids must be between 1 and 650");
    ensure!(args.requests > 0, "--requests must be positive");
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();

    let parent = args.data_parent.clone().unwrap_or_else(std::env::temp_dir);
    let server = Server::start(
        &args.presenced,
        parent.join(format!("bench-bulk-{}", std::process::id())),
        &["--rate-limit", "off"],
    )?;
    let base = server.base.clone();
    let token = token(&args.presenced, &server.dir, TENANT, &[])?;
    let client = reqwest::Client::builder().pool_max_idle_per_host(64).build()?;

    populate(&client, &base, &token, &args).await?;
    let ids: Vec<String> = (0..args.ids).map(user_id).collect();
    let body = serde_json::to_vec(&json!({ "ids": ids }))?;
    let bulk = || {
        client
            .post(format!("{base}/v1.0/communications/getPresencesByUserId"))
            .bearer_auth(&token)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.clone())
    };
    let health = || client.get(format!("{base}/healthz"));

    // Check the answer once: every id, in order, with state and the expected status messages.
    let answer: Value = bulk().send().await?.error_for_status()?.json().await?;
    let values = answer["value"].as_array().context("no value array")?;
    ensure!(
        values.len() == args.ids,
        "{} presences for {} ids",
        values.len(),
        args.ids
    );
    let with_message = values.iter().filter(|v| v["statusMessage"].is_object()).count();
    let expected_messages = if args.message_every == 0 {
        0
    } else {
        args.ids.div_ceil(args.message_every)
    };
    ensure!(
        with_message == expected_messages,
        "{with_message} status messages, expected {expected_messages}"
    );

    for _ in 0..args.warmup {
        timed(bulk()).await?;
        timed(health()).await?;
    }

    // Measured: interleaved, so drift (other load, thermal) hits both series alike.
    let before = scrape(&client, &base).await?;
    let (mut bulk_us, mut health_us) = (Vec::with_capacity(args.requests), Vec::with_capacity(args.requests));
    let (mut bulk_bytes, mut health_bytes) = (0, 0);
    let started = Instant::now();
    for _ in 0..args.requests {
        let (d, n) = timed(bulk()).await?;
        bulk_us.push(us(d));
        bulk_bytes = n;
        let (d, n) = timed(health()).await?;
        health_us.push(us(d));
        health_bytes = n;
    }
    let elapsed = started.elapsed();
    let after = scrape(&client, &base).await?;

    let server_bulk = histogram(&after, ROUTE).minus(&histogram(&before, ROUTE));
    let server_health = histogram(&after, BASELINE_ROUTE).minus(&histogram(&before, BASELINE_ROUTE));
    ensure!(
        server_bulk.count == args.requests as u64 && server_health.count == args.requests as u64,
        "the server histogram counted {} bulk and {} /healthz requests, expected {} each (is the metric named differently?)",
        server_bulk.count,
        server_health.count,
        args.requests
    );
    let (b, h) = (stats(bulk_us), stats(health_us));
    let run = json!({
        "run": "bench-bulk", "ids": args.ids, "users_with_status_message": expected_messages,
        "requests_per_series": args.requests, "warmup_per_series": args.warmup, "elapsed_s": elapsed.as_secs_f64(),
        "response_bytes": bulk_bytes, "healthz_response_bytes": health_bytes,
        "machine": { "nproc": std::thread::available_parallelism().map_or(0, |n| n.get()) },
    });
    println!("{run}");
    for (name, s) in [(ROUTE, &b), ("healthz", &h)] {
        println!(
            "{}",
            json!({ "series": format!("client {name}"), "p50_us": s.p50, "p90_us": s.p90, "p99_us": s.p99,
                    "max_us": s.max, "mean_us": s.mean })
        );
    }
    println!("{}", summary(&server_bulk, ROUTE));
    println!("{}", summary(&server_health, BASELINE_ROUTE));
    let server_p99 = server_bulk.quantile_bounds(0.99);
    let server_mean_us = server_bulk.sum / server_bulk.count as f64 * 1e6;
    let health_mean_us = server_health.sum / server_health.count as f64 * 1e6;
    println!(
        "{}",
        json!({
            "series": "difference (bulk - healthz), client side",
            "p50_us": b.p50 - h.p50, "p99_us": b.p99 - h.p99, "mean_us": b.mean - h.mean,
            "p50_ratio": b.p50 / h.p50, "p99_ratio": b.p99 / h.p99,
            "target_p99_ms": TARGET_P99_S * 1000.0,
            // Met if the server's own p99 bucket ends at or below 2 ms; the client-side p99 (which adds the
            // HTTP round trip and reading ~the response) is the stricter check.
            "target_met_server_histogram": server_p99.is_some_and(|(_, hi)| hi <= TARGET_P99_S),
            "target_met_client_p99": b.p99 <= TARGET_P99_S * 1e6,
        })
    );

    println!();
    println!(
        "getPresencesByUserId, {} ids ({} with a status message), {} sequential requests per series \
         (interleaved with GET /healthz), response {} bytes:",
        args.ids, expected_messages, args.requests, bulk_bytes
    );
    println!();
    println!("| series | p50 ms | p90 ms | p99 ms | max ms | mean ms |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    for (name, s) in [
        (format!("client: getPresencesByUserId ({} ids)", args.ids), &b),
        ("client: GET /healthz (baseline)".to_owned(), &h),
    ] {
        println!(
            "| {name} | {} | {} | {} | {} | {} |",
            ms(s.p50),
            ms(s.p90),
            ms(s.p99),
            ms(s.max),
            ms(s.mean)
        );
    }
    println!(
        "| client: difference (≈ server work) | {} | – | {} | – | {} |",
        ms(b.p50 - h.p50),
        ms(b.p99 - h.p99),
        ms(b.mean - h.mean)
    );
    println!(
        "| client: ratio bulk / healthz | {:.1}× | – | {:.1}× | – | {:.1}× |",
        b.p50 / h.p50,
        b.p99 / h.p99,
        b.mean / h.mean
    );
    for (name, hist, mean) in [
        (ROUTE, &server_bulk, server_mean_us),
        ("healthz", &server_health, health_mean_us),
    ] {
        println!(
            "| server histogram: {name} | {} | – | {} | – | {} |",
            bound_ms(hist.quantile_bounds(0.50)),
            bound_ms(hist.quantile_bounds(0.99)),
            ms(mean)
        );
    }
    Ok(())
}
