//! `bench-streams`: watch streams (`…/communications/presences/$stream`, Server-Sent Events over
//! HTTP/1) and client sessions (`/me/presence/$session`, WebSocket) against a real `presenced`
//! on loopback, started here on a fresh data directory (one server per measurement, so one's
//! peak working set, which the server keeps mapped, cannot distort the next).
//!
//! - `latency`: `--streams` streams each watching `--watch` of `--users` users (stream i watches
//!   users i·watch … i·watch+watch−1, mod users), so every change reaches streams·watch/users
//!   streams (the fan-out). `setPresence` writes go round-robin over the users at `--rate` per
//!   second (open loop: sent on time whatever earlier ones took), each to a pair of
//!   availability/activity different from the user's last, and never two to one user at once. A
//!   user's n-th write is therefore its n-th change, and the n-th `presence` event a stream gets
//!   for that user; latency = the event's arrival at the stream client − the instant just
//!   before that write was sent. Writes sent in the `--seconds` after `--warmup` are measured.
//!   Beside it: the write's own latency (sent → 200), the stream's share (200 → event), and
//!   where the server's time went (group commits and setPresence from its histograms, and per
//!   thread the seconds on a CPU and waiting for one).
//! - `memory`: server RSS (`VmRSS`) with no stream, then with each of `--steps` idle streams
//!   open (each watching `--watch` users); per stream = the growth / streams. A second server
//!   gives the same count of idle keep-alive HTTP connections (one `GET /healthz` each), the
//!   part of a stream's cost that any connection has.
//! - `writes`: `setPresence` with no stream open against `--streams` streams open (each reading
//!   and discarding its events), in interleaved rounds (ABBA): at a fixed `--rate` (latency) and
//!   closed loop on `--connections` connections (writes/s and latency); plus the server's CPU
//!   time per write.
//! - `sessions`: server RSS with no client session, then with each of `--steps` sessions open,
//!   one user each (a delegated token per user), each having sent `hello` and read `welcome`.
//!
//! The load generator (this process) and the server share the machine's CPUs; each result gives
//! both processes' CPU time. Output: one JSON object per line, then a markdown table. See
//! `bench/streams.sh`.
use anyhow::{bail, ensure, Context, Result};
use clap::{Parser, Subcommand};
use futures_util::{SinkExt, StreamExt};
use presenced_bench::{
    cpu_seconds, machine, percentile, proc_status_bytes, thread_times, token, Histogram, Minter, Server,
};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

const TENANT: &str = "bench-tenant";
const STREAM: &str = "/v1.0/communications/presences/$stream";
const SESSION: &str = "/v1.0/me/presence/$session";
/// Legal `setPresence` pairs; consecutive ones differ, so each write of a user is a change.
const PAIRS: [(&str, &str); 5] = [
    ("Available", "Available"),
    ("Busy", "InACall"),
    ("Away", "Away"),
    ("DoNotDisturb", "Presenting"),
    ("Busy", "InAConferenceCall"),
];
/// The issue's target for change-to-stream latency.
const TARGET_P99_MS: f64 = 10.0;
/// Streams (or sessions) being opened at once.
const OPENING: usize = 64;

#[derive(Debug, Parser)]
#[command(name = "bench-streams", about = "Watch streams and client sessions under load")]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Debug, Subcommand)]
enum Mode {
    /// Change-to-stream latency with many streams open while writes run at a fixed rate.
    Latency(LatencyArgs),
    /// Server RSS per idle open stream.
    Memory(MemoryArgs),
    /// setPresence with no stream open against many streams open, interleaved.
    Writes(WritesArgs),
    /// Server RSS per open client session (WebSocket `/me/presence/$session`).
    Sessions(SessionsArgs),
}

#[derive(Debug, Clone, clap::Args)]
struct Common {
    /// The presenced binary to start.
    #[arg(long, default_value = "target/release/presenced")]
    presenced: PathBuf,
    /// Parent of the temporary data directory. [default: the system temp dir]
    #[arg(long)]
    data_parent: Option<PathBuf>,
}

#[derive(Debug, Clone, clap::Args)]
struct Watching {
    /// Streams open.
    #[arg(long, default_value_t = 1000)]
    streams: usize,
    /// Users each stream watches.
    #[arg(long, default_value_t = 3)]
    watch: usize,
    /// Users written to (and watched): each is watched by streams·watch/users streams.
    #[arg(long, default_value_t = 1000)]
    users: usize,
}

#[derive(Debug, clap::Args)]
struct LatencyArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    watching: Watching,
    /// setPresence writes per second.
    #[arg(long, default_value_t = 5000)]
    rate: u64,
    /// Seconds of writes before the measured ones. The default fills the change log's retained
    /// window (100,000 changes) at 5,000/s, so the measured writes meet a server in its steady
    /// state rather than one still growing its memory.
    #[arg(long, default_value_t = 25.0)]
    warmup: f64,
    /// Seconds of measured writes.
    #[arg(long, default_value_t = 20.0)]
    seconds: f64,
    /// Writes in flight at most; a write due beyond it is not sent (counted as shed).
    #[arg(long, default_value_t = 4096)]
    max_in_flight: usize,
    /// Also write every write's send time and latency (ms, CSV) to this file, for a time series.
    #[arg(long)]
    writes_csv: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
struct MemoryArgs {
    #[command(flatten)]
    common: Common,
    /// Open streams at which RSS is read (ascending).
    #[arg(long, value_delimiter = ',', default_value = "1000,5000")]
    steps: Vec<usize>,
    /// Users each stream watches.
    #[arg(long, default_value_t = 3)]
    watch: usize,
    /// Users (each given a presence first, so snapshots carry data).
    #[arg(long, default_value_t = 1000)]
    users: usize,
    /// Seconds to wait before each reading.
    #[arg(long, default_value_t = 3.0)]
    settle: f64,
}

#[derive(Debug, clap::Args)]
struct WritesArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    watching: Watching,
    /// Rounds; each runs both conditions, in the order AB, BA, AB, …
    #[arg(long, default_value_t = 6)]
    rounds: usize,
    /// Seconds per measurement (each condition has two: fixed rate, then closed loop).
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Writes per second of the fixed-rate measurement.
    #[arg(long, default_value_t = 5000)]
    rate: u64,
    /// Connections of the closed-loop measurement (each one write in flight).
    #[arg(long, default_value_t = 64)]
    connections: usize,
}

#[derive(Debug, clap::Args)]
struct SessionsArgs {
    #[command(flatten)]
    common: Common,
    /// Open sessions at which RSS is read (ascending).
    #[arg(long, value_delimiter = ',', default_value = "1000,5000")]
    steps: Vec<usize>,
    /// Seconds to wait before each reading.
    #[arg(long, default_value_t = 3.0)]
    settle: f64,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        match cli.mode {
            Mode::Latency(args) => latency(args).await,
            Mode::Memory(args) => memory(args).await,
            Mode::Writes(args) => writes(args).await,
            Mode::Sessions(args) => sessions(args).await,
        }
    })
}

// ---------------------------------------------------------------------------------------------
// The server, users and tokens
// ---------------------------------------------------------------------------------------------

fn start(common: &Common, name: &str) -> Result<Server> {
    let parent = common.data_parent.clone().unwrap_or_else(std::env::temp_dir);
    Server::start(
        &common.presenced,
        parent.join(format!("bench-streams-{name}-{}", std::process::id())),
        // One application opens every stream: lift the per-application cap (500) and the
        // request rate limit (1,500 per 30 s), both meant for real clients.
        &["--rate-limit", "off", "--streams-max-per-app", "1000000"],
    )
}

fn user_id(i: usize) -> String {
    format!("watched-{i:06}")
}

fn user_index(id: &str) -> Option<usize> {
    id.strip_prefix("watched-")?.parse().ok()
}

/// The users stream `i` watches.
fn watch_set(i: usize, watch: usize, users: usize) -> Vec<usize> {
    (0..watch).map(|j| (i * watch + j) % users).collect()
}

fn client(idle_per_host: usize) -> Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .pool_max_idle_per_host(idle_per_host)
        .tcp_nodelay(true)
        .build()?)
}

struct Tokens {
    /// Application token (`Presence.ReadWrite.All`) of the writer.
    writer: String,
    /// Application token (`Presence.Read.All`) the streams open with.
    reader: String,
}

fn tokens(common: &Common, server: &Server) -> Result<Tokens> {
    Ok(Tokens {
        writer: token(&common.presenced, &server.dir, TENANT, &["--app", "bench-writer"])?,
        reader: token(
            &common.presenced,
            &server.dir,
            TENANT,
            &["--app", "bench-streams", "--role", "Presence.Read.All"],
        )?,
    })
}

async fn scrape(client: &reqwest::Client, base: &str) -> Result<String> {
    Ok(client
        .get(format!("{base}/metrics"))
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

/// The value of an unlabelled series of `/metrics`.
async fn metric(client: &reqwest::Client, base: &str, name: &str) -> Result<f64> {
    let text = scrape(client, base).await?;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .with_context(|| format!("no {name} in /metrics"))
}

/// A server histogram between two scrapes: how many, their mean, the buckets of their p50
/// and p99, and how many took over 20 and 100 ms.
fn histogram_summary(before: &str, after: &str, name: &str, label: Option<(&str, &str)>) -> Value {
    let h = Histogram::parse(after, name, label).minus(&Histogram::parse(before, name, label));
    let bucket_ms = |p| {
        h.quantile_bounds(p).map(|(lo, hi)| {
            if hi.is_finite() {
                json!(hi * 1e3)
            } else {
                json!(format!("> {}", lo * 1e3))
            }
        })
    };
    json!({
        "count": h.count,
        "mean_ms": round2(h.sum / h.count.max(1) as f64 * 1e3),
        "p50_bucket_le_ms": bucket_ms(0.5), "p99_bucket_le_ms": bucket_ms(0.99),
        "over_20ms": h.above(0.02), "over_100ms": h.above(0.1),
    })
}

/// Group commits (append + fsync on the store's writer thread) between two scrapes.
fn commit_summary(before: &str, after: &str) -> Value {
    histogram_summary(before, after, "presenced_store_commit_duration_seconds", None)
}

/// setPresence as the server timed it (from routing to the response) between two scrapes.
fn server_write_summary(before: &str, after: &str) -> Value {
    histogram_summary(
        before,
        after,
        "presenced_http_request_duration_seconds",
        Some(("route", "setPresence")),
    )
}

fn rss(server: &Server) -> Result<u64> {
    proc_status_bytes(server.pid(), "VmRSS")
}

fn mib(bytes: f64) -> f64 {
    (bytes / 1024.0 / 1024.0 * 10.0).round() / 10.0
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

async fn settle(seconds: f64) {
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
}

// ---------------------------------------------------------------------------------------------
// Writes
// ---------------------------------------------------------------------------------------------

/// When each user's writes were sent: nanoseconds after `epoch` plus one (0: not sent).
struct Sends {
    epoch: Instant,
    per_user: Vec<Box<[AtomicU64]>>,
}

impl Sends {
    fn new(epoch: Instant, users: usize, per_user: usize) -> Self {
        Sends {
            epoch,
            per_user: (0..users)
                .map(|_| (0..per_user).map(|_| AtomicU64::new(0)).collect())
                .collect(),
        }
    }

    fn ns(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.epoch).as_nanos() as u64 + 1
    }

    fn set(&self, user: usize, k: usize, at: Instant) {
        if let Some(slot) = self.per_user[user].get(k) {
            slot.store(self.ns(at), Ordering::Release);
        }
    }

    fn get(&self, user: usize, k: usize) -> u64 {
        self.per_user[user].get(k).map_or(0, |s| s.load(Ordering::Acquire))
    }
}

/// What writes share: the client, the users' URLs and, per user, the index of its next write
/// (its lock is held for the write, so a user has one write in flight and they commit in order).
struct Writer {
    client: reqwest::Client,
    token: String,
    urls: Vec<String>,
    next: Vec<tokio::sync::Mutex<usize>>,
    sends: Sends,
    /// When each write's 200 was read, as `sends`.
    acks: Sends,
}

#[derive(Debug, Clone, Copy)]
struct WriteSample {
    /// `Sends::ns` of the send.
    sent: u64,
    latency_ns: u64,
    ok: bool,
}

impl Writer {
    fn new(client: reqwest::Client, base: &str, token: String, users: usize, sends: Sends) -> Self {
        Writer {
            client,
            token,
            urls: (0..users)
                .map(|i| format!("{base}/v1.0/users/{}/presence/setPresence", user_id(i)))
                .collect(),
            next: (0..users).map(|_| tokio::sync::Mutex::new(0)).collect(),
            acks: Sends::new(sends.epoch, users, sends.per_user.first().map_or(0, |s| s.len())),
            sends,
        }
    }

    /// Write number `n` (to user n mod users): the user's next pair.
    async fn write(&self, n: u64) -> WriteSample {
        let user = (n % self.urls.len() as u64) as usize;
        let mut next = self.next[user].lock().await;
        let k = *next;
        *next += 1;
        let (availability, activity) = PAIRS[k % PAIRS.len()];
        let body = format!(
            r#"{{"sessionId":"bench","availability":"{availability}","activity":"{activity}","expirationDuration":"PT1H"}}"#
        );
        let request = self
            .client
            .post(&self.urls[user])
            .bearer_auth(&self.token)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        let sent = Instant::now();
        self.sends.set(user, k, sent);
        let ok = match request.send().await {
            Ok(r) => r.status() == 200 && r.bytes().await.is_ok(),
            Err(_) => false,
        };
        let latency = sent.elapsed();
        if ok {
            self.acks.set(user, k, sent + latency);
        }
        drop(next);
        WriteSample {
            sent: self.sends.ns(sent),
            latency_ns: latency.as_nanos() as u64,
            ok,
        }
    }
}

#[derive(Debug, Default)]
struct LoadResult {
    samples: Vec<WriteSample>,
    shed: u64,
    /// From the first write sent to the last answered.
    elapsed: Duration,
    /// From the first write sent to the last (open loop: how long sending at the rate took).
    sending: Duration,
}

impl LoadResult {
    /// Writes answered 200 per second: over the sending time at a fixed rate (the achieved
    /// rate), over the whole time in a closed loop (the throughput).
    fn rate(&self) -> f64 {
        let ok = self.samples.iter().filter(|s| s.ok).count() as f64;
        let over = if self.sending.is_zero() {
            self.elapsed
        } else {
            self.sending
        };
        ok / over.as_secs_f64()
    }
}

/// `rate` writes per second for `seconds`, open loop: each sent when due (1 ms ticks), whatever
/// earlier ones took, unless `max_in_flight` are outstanding (then it is shed, not queued).
async fn open_loop(writer: &Arc<Writer>, first: u64, rate: u64, seconds: f64, max_in_flight: usize) -> LoadResult {
    let total = (rate as f64 * seconds) as u64;
    let in_flight = Arc::new(AtomicUsize::new(0));
    let mut tasks = JoinSet::new();
    let mut result = LoadResult::default();
    let mut ticker = tokio::time::interval(Duration::from_millis(1));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let started = Instant::now();
    let mut due_sent = 0u64;
    while due_sent < total {
        ticker.tick().await;
        let due = ((started.elapsed().as_secs_f64() * rate as f64) as u64).min(total);
        while due_sent < due {
            if in_flight.load(Ordering::Relaxed) >= max_in_flight {
                result.shed += 1;
            } else {
                in_flight.fetch_add(1, Ordering::Relaxed);
                let (writer, in_flight) = (writer.clone(), in_flight.clone());
                let n = first + due_sent;
                tasks.spawn(async move {
                    let sample = writer.write(n).await;
                    in_flight.fetch_sub(1, Ordering::Relaxed);
                    sample
                });
            }
            due_sent += 1;
        }
        while let Some(done) = tasks.try_join_next() {
            result.samples.push(done.expect("write task"));
        }
    }
    result.sending = started.elapsed();
    while let Some(done) = tasks.join_next().await {
        result.samples.push(done.expect("write task"));
    }
    result.elapsed = started.elapsed();
    result
}

/// `connections` writers, each sending its next write when the last is answered, for `seconds`.
async fn closed_loop(writer: &Arc<Writer>, first: u64, connections: usize, seconds: f64) -> LoadResult {
    let counter = Arc::new(AtomicU64::new(first));
    let until = Instant::now() + Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for _ in 0..connections {
        let (writer, counter) = (writer.clone(), counter.clone());
        tasks.spawn(async move {
            let mut samples = Vec::new();
            while Instant::now() < until {
                samples.push(writer.write(counter.fetch_add(1, Ordering::Relaxed)).await);
            }
            samples
        });
    }
    let mut result = LoadResult::default();
    while let Some(done) = tasks.join_next().await {
        result.samples.extend(done.expect("write task"));
    }
    result.elapsed = started.elapsed();
    result
}

/// Give every user a presence (so snapshots carry data), 32 writes at a time.
async fn populate(writer: &Arc<Writer>, users: usize) -> Result<()> {
    let result = closed_loop_count(writer, users as u64, 32).await;
    ensure!(result.iter().all(|s| s.ok), "populating the users failed");
    Ok(())
}

/// Exactly `count` writes (numbers 0..count) on `connections` connections.
async fn closed_loop_count(writer: &Arc<Writer>, count: u64, connections: usize) -> Vec<WriteSample> {
    let counter = Arc::new(AtomicU64::new(0));
    let mut tasks = JoinSet::new();
    for _ in 0..connections {
        let (writer, counter) = (writer.clone(), counter.clone());
        tasks.spawn(async move {
            let mut samples = Vec::new();
            loop {
                let n = counter.fetch_add(1, Ordering::Relaxed);
                if n >= count {
                    return samples;
                }
                samples.push(writer.write(n).await);
            }
        });
    }
    let mut out = Vec::new();
    while let Some(done) = tasks.join_next().await {
        out.extend(done.expect("write task"));
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Server-Sent Events clients
// ---------------------------------------------------------------------------------------------

/// One open SSE stream: the response being read and what has arrived of the next frame.
struct Sse {
    response: reqwest::Response,
    buf: Vec<u8>,
}

impl Sse {
    async fn open(client: &reqwest::Client, base: &str, token: &str, ids: &[String]) -> Result<Sse> {
        let response = client
            .post(format!("{base}{STREAM}"))
            .bearer_auth(token)
            .header(reqwest::header::ACCEPT, "text/event-stream")
            .json(&json!({ "ids": ids }))
            .send()
            .await?;
        let status = response.status();
        if status != 200 {
            bail!(
                "opening a stream: {status}: {}",
                response.text().await.unwrap_or_default()
            );
        }
        let mut sse = Sse {
            response,
            buf: Vec::new(),
        };
        // Open once the snapshot is in.
        let mut snapshot = false;
        while !snapshot {
            ensure!(
                tokio::time::timeout(Duration::from_secs(30), sse.fill())
                    .await??
                    .is_some(),
                "the stream ended before its snapshot"
            );
            sse.frames(|event, _| snapshot |= event == b"snapshot");
        }
        Ok(sse)
    }

    /// Read the next chunk; returns when it arrived (`None`: the stream ended).
    async fn fill(&mut self) -> Result<Option<Instant>> {
        match self.response.chunk().await? {
            Some(bytes) => {
                let at = Instant::now();
                self.buf.extend_from_slice(&bytes);
                Ok(Some(at))
            }
            None => Ok(None),
        }
    }

    /// Hand each complete frame's event name and data to `f` and drop it from the buffer.
    fn frames(&mut self, mut f: impl FnMut(&[u8], &[u8])) {
        let mut start = 0;
        while let Some(end) = self.buf[start..].windows(2).position(|w| w == b"\n\n") {
            let frame = &self.buf[start..start + end];
            let (mut event, mut data): (&[u8], &[u8]) = (b"", b"");
            for line in frame.split(|b| *b == b'\n') {
                if let Some(v) = line.strip_prefix(b"event: ") {
                    event = v;
                } else if let Some(v) = line.strip_prefix(b"data: ") {
                    data = v;
                }
            }
            if !event.is_empty() {
                f(event, data);
            }
            start += end + 2;
        }
        self.buf.drain(..start);
    }
}

/// Open `count` streams, stream i (from `first`) watching `watch_set(i)`; `OPENING` at a time.
async fn open_streams(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    first: usize,
    count: usize,
    watch: usize,
    users: usize,
) -> Result<Vec<(usize, Sse)>> {
    let gate = Arc::new(Semaphore::new(OPENING));
    let mut tasks = JoinSet::new();
    for i in first..first + count {
        let ids: Vec<String> = watch_set(i, watch, users).into_iter().map(user_id).collect();
        let (client, base, token, gate) = (client.clone(), base.to_owned(), token.to_owned(), gate.clone());
        tasks.spawn(async move {
            let _permit = gate.acquire_owned().await?;
            Ok::<_, anyhow::Error>((i, Sse::open(&client, &base, &token, &ids).await?))
        });
    }
    let mut out = Vec::with_capacity(count);
    while let Some(done) = tasks.join_next().await {
        out.push(done??);
    }
    out.sort_by_key(|(i, _)| *i);
    Ok(out)
}

#[derive(Deserialize)]
struct PresenceData<'a> {
    id: &'a str,
    availability: &'a str,
    activity: &'a str,
}

#[derive(Debug, Default)]
struct ClientResult {
    /// (user, index of the user's write, `Sends::ns` of the event's arrival).
    samples: Vec<(u32, u32, u64)>,
    /// Events whose pair is not the one the matched write set (the matching would be wrong).
    mismatched: u64,
    /// Events that could not be read, or for a user the stream does not watch.
    unexpected: u64,
    /// Events with no recorded send.
    unmatched: u64,
    ended: bool,
}

/// Read a stream until `stop`, timing each `presence` event against the write it reports.
async fn latency_client(
    mut sse: Sse,
    watched: Vec<usize>,
    writer: Arc<Writer>,
    delivered: Arc<AtomicU64>,
    mut stop: watch::Receiver<bool>,
) -> ClientResult {
    let mut counts = vec![0usize; watched.len()];
    let mut out = ClientResult::default();
    loop {
        let at = tokio::select! {
            biased;
            _ = stop.changed() => break,
            r = sse.fill() => match r {
                Ok(Some(at)) => writer.sends.ns(at),
                _ => { out.ended = true; break }
            },
        };
        sse.frames(|event, data| {
            if event != b"presence" {
                return;
            }
            let Ok(p) = serde_json::from_slice::<PresenceData>(data) else {
                out.unexpected += 1;
                return;
            };
            let Some(slot) = user_index(p.id).and_then(|u| watched.iter().position(|w| *w == u)) else {
                out.unexpected += 1;
                return;
            };
            let k = counts[slot];
            counts[slot] += 1;
            delivered.fetch_add(1, Ordering::Relaxed);
            if PAIRS[k % PAIRS.len()] != (p.availability, p.activity) {
                out.mismatched += 1;
            }
            match writer.sends.get(watched[slot], k) {
                0 => out.unmatched += 1,
                _ => out.samples.push((watched[slot] as u32, k as u32, at)),
            }
        });
    }
    out
}

/// Read a stream until `stop`, counting its `presence` events and nothing more.
async fn drain_client(mut sse: Sse, delivered: Arc<AtomicU64>, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            biased;
            _ = stop.changed() => return,
            r = sse.fill() => if !matches!(r, Ok(Some(_))) { return },
        }
        let mut n = 0;
        sse.frames(|event, _| n += u64::from(event == b"presence"));
        delivered.fetch_add(n, Ordering::Relaxed);
    }
}

// ---------------------------------------------------------------------------------------------
// Statistics
// ---------------------------------------------------------------------------------------------

/// p50/p90/p99/p99.9/max in ms of nanosecond samples.
fn latency_summary(mut ns: Vec<u64>) -> Value {
    ns.sort_unstable();
    let ms: Vec<f64> = ns.iter().map(|n| *n as f64 / 1e6).collect();
    let r3 = |x: f64| (x * 1000.0).round() / 1000.0;
    json!({
        "count": ms.len(),
        "p50_ms": r3(percentile(&ms, 0.50)), "p90_ms": r3(percentile(&ms, 0.90)),
        "p99_ms": r3(percentile(&ms, 0.99)), "p999_ms": r3(percentile(&ms, 0.999)),
        "max_ms": r3(ms.last().copied().unwrap_or(f64::NAN)),
    })
}

fn f(v: &Value, key: &str) -> f64 {
    v[key].as_f64().unwrap_or(f64::NAN)
}

/// Per thread name, [seconds on a CPU, seconds waiting for one] between two readings.
fn thread_delta(before: &BTreeMap<String, (f64, f64)>, after: &BTreeMap<String, (f64, f64)>) -> Value {
    let delta: serde_json::Map<String, Value> = after
        .iter()
        .map(|(name, (run, wait))| {
            let (run0, wait0) = before.get(name).copied().unwrap_or_default();
            (name.clone(), json!([round2(run - run0), round2(wait - wait0)]))
        })
        .collect();
    Value::Object(delta)
}

fn describe_threads(threads: &Value) -> String {
    threads
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(_, v)| v[0].as_f64().unwrap_or(0.0) >= 0.01)
                .map(|(name, v)| format!("{name} {} / {}", v[0], v[1]))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

/// CPU seconds of the server and of this process, read together.
fn cpu_pair(server: &Server) -> Result<(f64, f64)> {
    Ok((cpu_seconds(server.pid())?, cpu_seconds(0)?))
}

// ---------------------------------------------------------------------------------------------
// latency
// ---------------------------------------------------------------------------------------------

async fn latency(args: LatencyArgs) -> Result<()> {
    let w = &args.watching;
    ensure!(w.watch >= 1 && w.watch <= w.users, "--watch must be 1..=--users");
    ensure!(
        args.rate > 0 && args.seconds > 0.0,
        "--rate and --seconds must be positive"
    );
    let server = start(&args.common, "latency")?;
    let base = server.base.clone();
    let tokens = tokens(&args.common, &server)?;
    let client = client(1024)?;
    let writes_total = (args.rate as f64 * (args.warmup + args.seconds)) as usize;
    let epoch = Instant::now();
    let writer = Arc::new(Writer::new(
        client.clone(),
        &base,
        tokens.writer.clone(),
        w.users,
        Sends::new(epoch, w.users, writes_total / w.users + 2),
    ));

    eprintln!(
        "opening {} streams, each watching {} of {} users",
        w.streams, w.watch, w.users
    );
    let opened = Instant::now();
    let streams = open_streams(&client, &base, &tokens.reader, 0, w.streams, w.watch, w.users).await?;
    let open_s = opened.elapsed().as_secs_f64();
    let mut watchers = vec![0u64; w.users];
    let delivered = Arc::new(AtomicU64::new(0));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut clients = JoinSet::new();
    for (i, sse) in streams {
        let watched = watch_set(i, w.watch, w.users);
        for u in &watched {
            watchers[*u] += 1;
        }
        clients.spawn(latency_client(
            sse,
            watched,
            writer.clone(),
            delivered.clone(),
            stop_rx.clone(),
        ));
    }
    let fan_out = w.streams as f64 * w.watch as f64 / w.users as f64;

    eprintln!(
        "writing at {}/s: {} s warm-up, {} s measured (fan-out {fan_out})",
        args.rate, args.warmup, args.seconds
    );
    let (lagged_before, rss_before) = (
        metric(&client, &base, "presenced_streams_fell_behind").await?,
        rss(&server)?,
    );
    // The measured window starts `warmup` seconds into the load: read the CPU counters then.
    let window_start = Instant::now() + Duration::from_secs_f64(args.warmup);
    let at_start = {
        let (server_pid, client, base) = (server.pid(), client.clone(), base.clone());
        tokio::spawn(async move {
            tokio::time::sleep_until(window_start.into()).await;
            let cpu = (cpu_seconds(server_pid), cpu_seconds(0), Instant::now());
            let threads = thread_times(server_pid);
            (cpu, threads, scrape(&client, &base).await)
        })
    };
    let load = open_loop(&writer, 0, args.rate, args.warmup + args.seconds, args.max_in_flight).await;
    let (server_cpu_end, bench_cpu_end) = cpu_pair(&server)?;
    let threads_end = thread_times(server.pid())?;
    let window_end = Instant::now();
    let metrics_end = scrape(&client, &base).await?;
    let ((server_cpu_start, bench_cpu_start, cpu_from), threads_start, metrics_start) = at_start.await?;
    let server_threads = thread_delta(&threads_start?, &threads_end);
    let (server_cpu_start, bench_cpu_start) = (server_cpu_start?, bench_cpu_start?);
    let cpu_window = window_end.duration_since(cpu_from).as_secs_f64();
    let metrics_start = metrics_start?;
    let commits = commit_summary(&metrics_start, &metrics_end);
    let server_writes = server_write_summary(&metrics_start, &metrics_end);

    // Every acknowledged write reaches each of its user's watchers; wait (bounded) for them.
    let expected = writer_expected(&writer, &watchers);
    let drain_until = Instant::now() + Duration::from_secs(15);
    while delivered.load(Ordering::Relaxed) < expected && Instant::now() < drain_until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let lagged = metric(&client, &base, "presenced_streams_fell_behind").await? - lagged_before;
    let rss_after = rss(&server)?;
    stop_tx.send_replace(true);
    let mut result = ClientResult::default();
    let mut ended = 0;
    while let Some(done) = clients.join_next().await {
        let r = done?;
        result.samples.extend(r.samples);
        result.mismatched += r.mismatched;
        result.unexpected += r.unexpected;
        result.unmatched += r.unmatched;
        ended += usize::from(r.ended);
    }

    // The measured window, by send time.
    let (from, to) = (writer.sends.ns(window_start), writer.sends.ns(window_end));
    let in_window = |sent: u64| sent >= from && sent < to;
    let window_writes: Vec<&WriteSample> = load.samples.iter().filter(|s| in_window(s.sent)).collect();
    let ok_writes = window_writes.iter().filter(|s| s.ok).count();
    let errors = load.samples.iter().filter(|s| !s.ok).count();
    let window_s = args.seconds;
    // Per user, its writes sent in the window times its watchers.
    let expected_in_window: u64 = writer
        .sends
        .per_user
        .iter()
        .zip(&watchers)
        .map(|(slots, w)| slots.iter().filter(|s| in_window(s.load(Ordering::Relaxed))).count() as u64 * w)
        .sum();
    // Per event of a write sent in the window: from the send, and from the write's 200 (what
    // the stream adds to the durable write; 0 when the event came first).
    let (mut from_send, mut from_ack) = (Vec::new(), Vec::new());
    for &(user, k, arrived) in &result.samples {
        let (user, k) = (user as usize, k as usize);
        let sent = writer.sends.get(user, k);
        if in_window(sent) {
            from_send.push(arrived.saturating_sub(sent));
            match writer.acks.get(user, k) {
                0 => {}
                acked => from_ack.push(arrived.saturating_sub(acked)),
            }
        }
    }
    let received_in_window = from_send.len() as u64;
    let events = latency_summary(from_send);
    let after_ack = latency_summary(from_ack);
    let write_latency = latency_summary(window_writes.iter().filter(|s| s.ok).map(|s| s.latency_ns).collect());

    if let Some(path) = &args.writes_csv {
        let mut csv = String::from("sent_ms,write_ms,ok\n");
        for s in &load.samples {
            csv.push_str(&format!(
                "{:.3},{:.3},{}\n",
                s.sent as f64 / 1e6,
                s.latency_ns as f64 / 1e6,
                s.ok
            ));
        }
        std::fs::write(path, csv).with_context(|| format!("write {}", path.display()))?;
    }
    let run = json!({
        "run": "bench-streams latency", "machine": machine(),
        "streams": w.streams, "watch_per_stream": w.watch, "users": w.users, "fan_out": fan_out,
        "streams_open_s": round2(open_s),
        "rate_target": args.rate, "warmup_s": args.warmup, "measured_s": window_s,
        "achieved_write_rate": round2(ok_writes as f64 / window_s),
        "writes_in_window": window_writes.len(), "write_errors": errors, "writes_shed": load.shed,
        "events_expected_in_window": expected_in_window, "events_received_in_window": received_in_window,
        "event_rate": round2(received_in_window as f64 / window_s),
        "events_mismatched": result.mismatched, "events_unexpected": result.unexpected,
        "events_unmatched": result.unmatched, "streams_ended_early": ended,
        "streams_fell_behind": lagged,
        "server_cpu_cores": round2((server_cpu_end - server_cpu_start) / cpu_window),
        "bench_cpu_cores": round2((bench_cpu_end - bench_cpu_start) / cpu_window),
        "server_rss_mib_before_after": [mib(rss_before as f64), mib(rss_after as f64)],
        "server_threads_run_wait_s": server_threads,
    });
    println!("{run}");
    println!(
        "{}",
        json!({ "series": "write sent -> stream event arrived", "latency": events })
    );
    println!(
        "{}",
        json!({ "series": "write sent -> 200 (durable)", "latency": write_latency })
    );
    println!(
        "{}",
        json!({ "series": "write's 200 -> stream event arrived", "latency": after_ack })
    );
    println!(
        "{}",
        json!({ "series": "group commits (server histogram)", "commits": commits })
    );
    println!(
        "{}",
        json!({ "series": "setPresence (server histogram)", "latency": server_writes })
    );
    if w.streams > 0 {
        let met = f(&events, "p99_ms") <= TARGET_P99_MS;
        println!("{}", json!({ "target_p99_ms": TARGET_P99_MS, "target_met": met }));
    }
    println!();
    println!(
        "{} SSE streams × {} users each over {} users (fan-out {fan_out}); setPresence at {}/s target, \
         {} achieved over {window_s} s after {} s warm-up; {} events/s delivered:",
        w.streams, w.watch, w.users, args.rate, run["achieved_write_rate"], args.warmup, run["event_rate"],
    );
    println!();
    println!("| series | count | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    for (name, s) in [
        ("write sent → event at stream client", &events),
        ("write sent → 200 (durable)", &write_latency),
        ("write's 200 → event at stream client (0 if before)", &after_ack),
    ] {
        println!(
            "| {name} | {} | {} | {} | {} | {} | {} |",
            s["count"], s["p50_ms"], s["p90_ms"], s["p99_ms"], s["p999_ms"], s["max_ms"]
        );
    }
    println!();
    println!(
        "Group commits in the window: {} (mean {} ms, p99 ≤ {} ms; {} over 20 ms, {} over 100 ms).",
        commits["count"], commits["mean_ms"], commits["p99_bucket_le_ms"], commits["over_20ms"], commits["over_100ms"]
    );
    println!(
        "setPresence as the server timed it: mean {} ms, p99 ≤ {} ms; {} over 20 ms, {} over 100 ms.",
        server_writes["mean_ms"],
        server_writes["p99_bucket_le_ms"],
        server_writes["over_20ms"],
        server_writes["over_100ms"]
    );
    println!(
        "CPU over the window: server {} cores, load generator {} cores (the two share {} CPUs).",
        run["server_cpu_cores"], run["bench_cpu_cores"], run["machine"]["nproc"]
    );
    println!(
        "Server threads, seconds on a CPU / runnable but waiting for one, over the {window_s} s: {}.",
        describe_threads(&server_threads)
    );
    Ok(())
}

/// Events owed for every write sent so far: each write of a user reaches its watchers.
fn writer_expected(writer: &Writer, watchers: &[u64]) -> u64 {
    writer
        .sends
        .per_user
        .iter()
        .zip(watchers)
        .map(|(slots, w)| slots.iter().filter(|s| s.load(Ordering::Relaxed) != 0).count() as u64 * w)
        .sum()
}

// ---------------------------------------------------------------------------------------------
// memory
// ---------------------------------------------------------------------------------------------

async fn memory(args: MemoryArgs) -> Result<()> {
    ensure!(!args.steps.is_empty(), "--steps needs at least one count");
    ensure!(args.steps.windows(2).all(|w| w[0] < w[1]), "--steps must ascend");
    let server = start(&args.common, "memory")?;
    let base = server.base.clone();
    let tokens = tokens(&args.common, &server)?;
    let client = client(64)?;
    let writer = Arc::new(Writer::new(
        client.clone(),
        &base,
        tokens.writer.clone(),
        args.users,
        Sends::new(Instant::now(), args.users, 0),
    ));
    populate(&writer, args.users).await?;
    settle(args.settle).await;
    let rss0 = rss(&server)?;
    println!(
        "{}",
        json!({ "run": "bench-streams memory", "machine": machine(), "watch_per_stream": args.watch,
                "users": args.users, "streams": 0, "rss_bytes": rss0 })
    );
    let mut rows = Vec::new();
    let mut open: Vec<(usize, Sse)> = Vec::new();
    let mut last = (0usize, rss0);
    for &n in &args.steps {
        let more = open_streams(
            &client,
            &base,
            &tokens.reader,
            open.len(),
            n - open.len(),
            args.watch,
            args.users,
        )
        .await?;
        open.extend(more);
        settle(args.settle).await;
        let now = rss(&server)?;
        let gauge = metric(&client, &base, "presenced_streams_open").await?;
        ensure!(
            gauge as usize == n,
            "the server counts {gauge} open streams, expected {n}"
        );
        let per = (now as f64 - rss0 as f64) / n as f64;
        let marginal = (now as f64 - last.1 as f64) / (n - last.0) as f64;
        let row = json!({ "streams": n, "rss_bytes": now, "per_stream_bytes": per.round(),
                          "marginal_per_stream_bytes": marginal.round() });
        println!("{row}");
        rows.push(row);
        last = (n, now);
    }
    drop(open);
    drop(server);

    // The same count of idle keep-alive connections, each after one GET /healthz.
    let top = *args.steps.last().unwrap_or(&0);
    let server = start(&args.common, "memory-connections")?;
    let addr = server.base.trim_start_matches("http://").to_owned();
    settle(args.settle).await;
    let conn0 = rss(&server)?;
    let connections = idle_connections(&addr, top).await?;
    settle(args.settle).await;
    let conn1 = rss(&server)?;
    let per_connection = (conn1 as f64 - conn0 as f64) / top as f64;
    println!(
        "{}",
        json!({ "idle_http_connections": top, "rss_bytes_before": conn0, "rss_bytes": conn1,
                "per_connection_bytes": per_connection.round() })
    );
    drop(connections);

    println!();
    println!(
        "Server RSS with idle SSE streams (each watching {} users, snapshot sent; baseline {} MiB after {} users were written):",
        args.watch,
        mib(rss0 as f64),
        args.users
    );
    println!();
    println!("| streams open | RSS MiB | per stream (from 0) KiB | per stream (from previous step) KiB |");
    println!("| ---: | ---: | ---: | ---: |");
    println!("| 0 | {} | – | – |", mib(rss0 as f64));
    for row in &rows {
        println!(
            "| {} | {} | {:.1} | {:.1} |",
            row["streams"],
            mib(f(row, "rss_bytes")),
            f(row, "per_stream_bytes") / 1024.0,
            f(row, "marginal_per_stream_bytes") / 1024.0
        );
    }
    println!(
        "| {top} idle HTTP connections (no stream), another server | {} | {:.1} | – |",
        mib(conn1 as f64),
        per_connection / 1024.0
    );
    Ok(())
}

/// `n` plain keep-alive connections, each having had one `GET /healthz` answered.
async fn idle_connections(addr: &str, n: usize) -> Result<Vec<tokio::net::TcpStream>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
            .await?;
        let mut buf = vec![0u8; 4096];
        let got = s.read(&mut buf).await?;
        ensure!(
            buf[..got].starts_with(b"HTTP/1.1 200"),
            "GET /healthz did not answer 200"
        );
        out.push(s);
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// writes
// ---------------------------------------------------------------------------------------------

async fn writes(args: WritesArgs) -> Result<()> {
    let w = &args.watching;
    let server = start(&args.common, "writes")?;
    let base = server.base.clone();
    let tokens = tokens(&args.common, &server)?;
    let client = client(1024)?;
    let writer = Arc::new(Writer::new(
        client.clone(),
        &base,
        tokens.writer.clone(),
        w.users,
        Sends::new(Instant::now(), w.users, 0),
    ));
    populate(&writer, w.users).await?;
    let fan_out = w.streams as f64 * w.watch as f64 / w.users as f64;
    println!(
        "{}",
        json!({ "run": "bench-streams writes", "machine": machine(), "streams": w.streams,
                "watch_per_stream": w.watch, "users": w.users, "fan_out": fan_out, "rounds": args.rounds,
                "seconds": args.seconds, "rate": args.rate, "connections": args.connections })
    );
    let mut next = w.users as u64;
    let mut rows: Vec<Value> = Vec::new();
    for round in 0..args.rounds {
        let order = if round % 2 == 0 { [false, true] } else { [true, false] };
        for with_streams in order {
            // Streams, if any, opened afresh for each condition and closed after it.
            let delivered = Arc::new(AtomicU64::new(0));
            let (stop_tx, stop_rx) = watch::channel(false);
            let mut clients = JoinSet::new();
            if with_streams {
                for (_, sse) in open_streams(&client, &base, &tokens.reader, 0, w.streams, w.watch, w.users).await? {
                    clients.spawn(drain_client(sse, delivered.clone(), stop_rx.clone()));
                }
            }
            settle(1.0).await;
            let condition = if with_streams {
                format!("{} streams", w.streams)
            } else {
                "no stream".to_owned()
            };
            for kind in ["fixed rate", "closed loop"] {
                let metrics0 = scrape(&client, &base).await?;
                let threads0 = thread_times(server.pid())?;
                let (server_cpu0, bench_cpu0) = cpu_pair(&server)?;
                let delivered0 = delivered.load(Ordering::Relaxed);
                let load = if kind == "fixed rate" {
                    open_loop(&writer, next, args.rate, args.seconds, 4096).await
                } else {
                    closed_loop(&writer, next, args.connections, args.seconds).await
                };
                next += load.samples.len() as u64 + load.shed;
                let (server_cpu1, bench_cpu1) = cpu_pair(&server)?;
                let threads = thread_delta(&threads0, &thread_times(server.pid())?);
                let metrics1 = scrape(&client, &base).await?;
                let commits = commit_summary(&metrics0, &metrics1);
                let server_writes = server_write_summary(&metrics0, &metrics1);
                let secs = load.elapsed.as_secs_f64();
                let ok: Vec<u64> = load.samples.iter().filter(|s| s.ok).map(|s| s.latency_ns).collect();
                let count = ok.len();
                let lat = latency_summary(ok);
                let row = json!({
                    "round": round + 1, "condition": condition, "load": kind,
                    "writes_per_s": round2(load.rate()),
                    "errors": load.samples.len() - count, "shed": load.shed,
                    "p50_ms": lat["p50_ms"], "p99_ms": lat["p99_ms"], "max_ms": lat["max_ms"],
                    "server_cpu_us_per_write": round2((server_cpu1 - server_cpu0) / count.max(1) as f64 * 1e6),
                    "server_cpu_cores": round2((server_cpu1 - server_cpu0) / secs),
                    "bench_cpu_cores": round2((bench_cpu1 - bench_cpu0) / secs),
                    "events_per_s": round2((delivered.load(Ordering::Relaxed) - delivered0) as f64 / secs),
                    "commits": commits, "server_setPresence": server_writes,
                    "server_threads_run_wait_s": threads,
                });
                println!("{row}");
                rows.push(row);
            }
            stop_tx.send_replace(true);
            while clients.join_next().await.is_some() {}
            // Closed connections end their streams; wait for the server to see it.
            let until = Instant::now() + Duration::from_secs(30);
            loop {
                let open = metric(&client, &base, "presenced_streams_open").await?;
                if open == 0.0 {
                    break;
                }
                ensure!(
                    Instant::now() < until,
                    "{open} streams still open 30 s after closing them"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    println!();
    println!(
        "setPresence with no stream open and with {} streams open (fan-out {fan_out}), {} rounds of {} s per \
         measurement, interleaved; medians over rounds:",
        w.streams, args.rounds, args.seconds
    );
    println!();
    println!("| load | condition | writes/s | p50 ms | p99 ms | server CPU µs/write | events/s | p99 per round ms |");
    println!("| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |");
    for kind in [
        format!("fixed rate {}/s", args.rate),
        format!("closed loop, {} connections", args.connections),
    ] {
        for condition in ["no stream".to_owned(), format!("{} streams", w.streams)] {
            let mine: Vec<&Value> = rows
                .iter()
                .filter(|r| r["condition"] == condition.as_str() && kind.starts_with(r["load"].as_str().unwrap_or("?")))
                .collect();
            let median = |key: &str| {
                let mut v: Vec<f64> = mine.iter().map(|r| f(r, key)).collect();
                v.sort_by(f64::total_cmp);
                percentile(&v, 0.5)
            };
            let p99s: Vec<String> = mine.iter().map(|r| r["p99_ms"].to_string()).collect();
            println!(
                "| {kind} | {condition} | {:.0} | {:.3} | {:.3} | {:.1} | {:.0} | {} |",
                median("writes_per_s"),
                median("p50_ms"),
                median("p99_ms"),
                median("server_cpu_us_per_write"),
                median("events_per_s"),
                p99s.join(", ")
            );
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// sessions
// ---------------------------------------------------------------------------------------------

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Connect a client session for the token's user: upgrade, `hello`, `welcome`.
async fn open_session(ws_url: &str, token: &str) -> Result<(Socket, Value)> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::Message;
    let mut request = ws_url.into_client_request()?;
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    let (mut socket, _) = match tokio_tungstenite::connect_async(request).await {
        Ok(ok) => ok,
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => bail!(
            "the server refused the session upgrade with {} (is {SESSION} on this build?)",
            response.status()
        ),
        Err(e) => return Err(e.into()),
    };
    let hello = json!({ "type": "hello", "device": "desktop", "availability": "Available", "activity": "Available" });
    socket.send(Message::Text(hello.to_string().into())).await?;
    let welcome = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(message) = socket.next().await {
            if let Message::Text(text) = message? {
                return Ok::<Value, anyhow::Error>(serde_json::from_str(text.as_str())?);
            }
        }
        bail!("the session closed before its welcome")
    })
    .await
    .context("no welcome within 30 s")??;
    ensure!(welcome["type"] == "welcome", "expected a welcome, got {welcome}");
    Ok((socket, welcome))
}

/// Keep a session open (reading answers the server's pings) until `stop`; then close it.
/// Counts it in `closed_by_server` if the server closed it first.
async fn hold_session(mut socket: Socket, mut stop: watch::Receiver<bool>, closed_by_server: Arc<AtomicUsize>) {
    loop {
        tokio::select! {
            _ = stop.changed() => {
                let _ = socket.close(None).await;
                return;
            }
            message = socket.next() => match message {
                Some(Ok(_)) => {}
                _ => {
                    closed_by_server.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            },
        }
    }
}

async fn sessions(args: SessionsArgs) -> Result<()> {
    ensure!(!args.steps.is_empty(), "--steps needs at least one count");
    ensure!(args.steps.windows(2).all(|w| w[0] < w[1]), "--steps must ascend");
    let server = start(&args.common, "sessions")?;
    let ws_url = format!("{}{SESSION}", server.base.replacen("http://", "ws://", 1));
    let top = *args.steps.last().unwrap_or(&0);
    let minter = Minter::new(&server.dir, TENANT)?;
    let tokens: Vec<String> = (0..top)
        .map(|i| minter.user(&format!("session-{i:06}"), "bench-sessions"))
        .collect::<Result<_>>()?;
    // One session first (a user of its own): checks the endpoint and warms the server's paths.
    let (probe, welcome) = open_session(&ws_url, &minter.user("session-probe", "bench-sessions")?).await?;
    drop(probe);
    settle(args.settle).await;
    let rss0 = rss(&server)?;
    println!(
        "{}",
        json!({ "run": "bench-streams sessions", "machine": machine(), "sessions": 0, "rss_bytes": rss0,
                "welcome": welcome })
    );
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut holders = JoinSet::new();
    let gate = Arc::new(Semaphore::new(OPENING));
    let closed_by_server = Arc::new(AtomicUsize::new(0));
    let mut rows = Vec::new();
    let mut last = (0usize, rss0);
    let mut done = 0usize;
    for &n in &args.steps {
        let mut opening = JoinSet::new();
        for token in &tokens[done..n] {
            let (ws_url, token, gate) = (ws_url.clone(), token.clone(), gate.clone());
            opening.spawn(async move {
                let _permit = gate.acquire_owned().await?;
                let (socket, _) = open_session(&ws_url, &token).await?;
                Ok::<_, anyhow::Error>(socket)
            });
        }
        while let Some(socket) = opening.join_next().await {
            holders.spawn(hold_session(socket??, stop_rx.clone(), closed_by_server.clone()));
        }
        done = n;
        settle(args.settle).await;
        let now = rss(&server)?;
        let per = (now as f64 - rss0 as f64) / n as f64;
        let marginal = (now as f64 - last.1 as f64) / (n - last.0) as f64;
        let row = json!({ "sessions": n, "rss_bytes": now, "per_session_bytes": per.round(),
                          "marginal_per_session_bytes": marginal.round(),
                          "closed_by_server_so_far": closed_by_server.load(Ordering::Relaxed) });
        println!("{row}");
        rows.push(row);
        last = (n, now);
    }
    stop_tx.send_replace(true);
    while holders.join_next().await.is_some() {}
    let closed_by_server = closed_by_server.load(Ordering::Relaxed);
    println!(
        "{}",
        json!({ "sessions_closed_by_the_server_meanwhile": closed_by_server })
    );
    ensure!(
        closed_by_server == 0,
        "{closed_by_server} sessions were closed by the server while held"
    );
    println!();
    println!(
        "Server RSS with open client sessions (one user each, hello/welcome done; baseline {} MiB):",
        mib(rss0 as f64)
    );
    println!();
    println!("| sessions open | RSS MiB | per session (from 0) KiB | per session (from previous step) KiB |");
    println!("| ---: | ---: | ---: | ---: |");
    println!("| 0 | {} | – | – |", mib(rss0 as f64));
    for row in &rows {
        println!(
            "| {} | {} | {:.1} | {:.1} |",
            row["sessions"],
            mib(f(row, "rss_bytes")),
            f(row, "per_session_bytes") / 1024.0,
            f(row, "marginal_per_session_bytes") / 1024.0
        );
    }
    Ok(())
}
