//! `bench-scale`: how the embedded store holds up at scale, measured in-process.
//!
//! - `memory --sessions N`: resident memory per held session. N users with one Busy/InACall
//!   session each (expiring in 1 h, so nothing fades) are committed through the store with many
//!   commits in flight (group commit batches them). The baseline is the same process with the
//!   store open and empty; the result is (RSS after − RSS before) / N, plus the size of the
//!   files, the load rate, and the restart: close, reopen in the same process (skipped when it
//!   would not fit: glibc keeps freed memory) and in a fresh process, which is what a restarted
//!   server looks like. Each step runs in its own process (this binary, hidden subcommands), so
//!   one step's freed-but-kept memory cannot distort the next; one of them builds the in-memory
//!   structures alone (no redb), to split the total into "our maps" and "the rest" (redb's
//!   cache, the log's pending changes), and the `size_of` of the types involved is printed.
//! - `storm --sessions N`: N sessions expiring at the same instant T; after T the sweeper's
//!   `tick` is called (in a runtime task, as in the server) until it returns `(0, 0)`, timing the
//!   whole storm, while another task reads random users at a fixed rate, recording read latency
//!   during the storm against the same reads before it. Then it times the parts a transition
//!   costs alone: core step, JSON encoding, write-ahead-log append + fdatasync, redb transactions
//!   (group-commit and checkpoint sized) on the storm's own file.
//!
//! Output: one JSON object per line on stdout, then a markdown table. Progress goes to stderr.
//! See `bench/scale.sh`.
use anyhow::{bail, Context, Result};

// The server's allocator (see main.rs): memory per session depends on it.
#[path = "../../../presenced/src/allocator.rs"]
mod allocator;
#[global_allocator]
static ALLOCATOR: allocator::MiMalloc = allocator::MiMalloc;

use clap::{Parser, Subcommand};
use jiff::{SignedDuration, Timestamp};
use presence_core::user::{Preferred, Session, StatusMessage};
use presence_core::{
    Activity, Availability, ChangeEvent, Command, OutOfOfficeSettings, SequenceNumber, SessionId, SessionState,
    TenantId, Timing, UserId, UserKey, UserPresence,
};
use presenced::clock::SystemClock;
use presenced::service::PresenceService;
use presenced::store::embedded::deadlines::DeadlineIndex;
use presenced::store::embedded::disk::FILE_NAME;
use presenced::store::embedded::memory::{Entry, Memory};
use presenced::store::embedded::wal;
use presenced::store::embedded::EmbeddedStore;
use presenced::store::{Commit, PresenceState};
use presenced::sweeper::Sweeper;
use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::hint::black_box;
use std::mem::size_of;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinSet;

/// Microsoft Teams' application id: what real clients send as the session id.
const APP_ID: &str = "1fec8e78-bce4-4aaf-ab1b-5451cc387264";
const GIB: f64 = 1024.0 * 1024.0 * 1024.0;
/// Same definitions as the store's `disk` module, for the redb micro-benchmark on the closed file.
const USERS: TableDefinition<&str, &[u8]> = TableDefinition::new("users");
const OUTBOX: TableDefinition<u64, &[u8]> = TableDefinition::new("outbox");

#[derive(Debug, Parser)]
#[command(
    name = "bench-scale",
    about = "Memory per session and timer storm on the embedded store"
)]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Debug, Subcommand)]
enum Mode {
    /// Resident memory per held session, disk size, load rate and restart time.
    Memory(MemoryArgs),
    /// N sessions expiring at the same instant: time to apply them all, read latency meanwhile.
    Storm(StormArgs),
    /// (helper, run in a fresh process) the in-memory structures alone, without redb.
    #[command(hide = true)]
    Structures(StructuresArgs),
    /// (helper, run in a fresh process) load N users into a new store, close, reopen.
    #[command(hide = true)]
    Fill(FillArgs),
    /// (helper, run in a fresh process) open an existing data directory like a restarted server.
    #[command(hide = true)]
    Reopen(ReopenArgs),
}

#[derive(Debug, clap::Args)]
struct Common {
    /// Users to create, one session each.
    #[arg(long, default_value_t = 1_000_000)]
    sessions: u64,
    /// Distinct tenants the users are spread over (ids are GUID-shaped, like Entra ids).
    #[arg(long, default_value_t = 100)]
    tenants: u64,
    /// Commits in flight while loading (group commit batches up to 4096 of them).
    #[arg(long, default_value_t = 2048)]
    inflight: usize,
    /// Directory in which the temporary data directory is made (must be on a real disk).
    #[arg(long, env = "DATA_PARENT")]
    data_parent: Option<PathBuf>,
    /// Keep the data directory instead of deleting it.
    #[arg(long)]
    keep: bool,
    /// User ids that sort in creation order (still 36-character GUIDs), so redb appends instead
    /// of inserting at random: a much faster load, the same memory. Default: random GUIDs.
    #[arg(long)]
    sequential_keys: bool,
}

#[derive(Debug, clap::Args)]
struct MemoryArgs {
    #[command(flatten)]
    common: Common,
    /// Stop loading when RSS exceeds this, or when the linear extrapolation to all sessions
    /// exceeds it by 15% (from 25% loaded on); the report then gives the extrapolation.
    #[arg(long, default_value_t = 18.0)]
    rss_limit_gib: f64,
    /// Skip the fresh-process helpers (structures-only build and fresh-process reopen).
    #[arg(long)]
    no_helpers: bool,
}

#[derive(Debug, clap::Args)]
struct StormArgs {
    #[command(flatten)]
    common: Common,
    /// Reads issued per millisecond by the reader task (open loop, 1 ms ticks).
    #[arg(long, default_value_t = 10)]
    reads_per_ms: usize,
    /// Shortest baseline read phase, in seconds, before the storm.
    #[arg(long, default_value_t = 5.0)]
    baseline_secs: f64,
    /// Users (not due during the run) committed first to measure the load rate, from which the
    /// common deadline T is chosen to fall just after the storm users are loaded.
    #[arg(long, default_value_t = 20_000)]
    calibration: u64,
    /// Seconds from the end of calibration to T, instead of the estimate from the rate.
    #[arg(long)]
    lead_secs: Option<f64>,
}

#[derive(Debug, clap::Args)]
struct StructuresArgs {
    #[arg(long)]
    sessions: u64,
    #[arg(long, default_value_t = 100)]
    tenants: u64,
    #[arg(long)]
    sequential_keys: bool,
}

#[derive(Debug, clap::Args)]
struct FillArgs {
    #[arg(long)]
    data_dir: PathBuf,
    #[arg(long)]
    sessions: u64,
    #[arg(long, default_value_t = 100)]
    tenants: u64,
    #[arg(long, default_value_t = 2048)]
    inflight: usize,
    #[arg(long, default_value_t = 18.0)]
    rss_limit_gib: f64,
    #[arg(long)]
    sequential_keys: bool,
}

#[derive(Debug, clap::Args)]
struct ReopenArgs {
    #[arg(long)]
    data_dir: PathBuf,
}

fn main() -> Result<()> {
    // As the server runs: memory per session is measured as its RSS shows it.
    allocator::keep_freed_memory();
    match Cli::parse().mode {
        Mode::Memory(args) => memory(args),
        Mode::Storm(args) => storm(args),
        Mode::Structures(args) => structures(args),
        Mode::Fill(args) => fill(args),
        Mode::Reopen(args) => reopen(args),
    }
}

// ---------------------------------------------------------------------------------------------
// Shared helpers
// ---------------------------------------------------------------------------------------------

fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A lower-case GUID (36 characters) unique per `tail`.
fn guid(seed: u64, tail: u64) -> String {
    let h = splitmix(seed);
    format!(
        "{:08x}-{:04x}-4{:03x}-a{:03x}-{:012x}",
        h >> 32,
        (h >> 16) & 0xffff,
        h & 0xfff,
        (h >> 52) & 0xfff,
        tail & 0xffff_ffff_ffff
    )
}

/// User `i` is a GUID user in tenant `i % tenants`. Each key owns its strings, as keys built
/// from requests do (nothing is interned today).
struct Ids {
    tenants: Vec<TenantId>,
    sequential: bool,
}

impl Ids {
    fn new(tenants: u64, sequential: bool) -> Self {
        let tenants = (0..tenants.max(1))
            .map(|t| TenantId::parse(&guid(t ^ 0x007e_4a17, t)).expect("a GUID is a valid tenant id"))
            .collect();
        Self { tenants, sequential }
    }

    fn key(&self, i: u64) -> UserKey {
        let tenant = self.tenants[(i % self.tenants.len() as u64) as usize].clone();
        let user = if self.sequential {
            format!("00000000-0000-4000-a000-{:012x}", i & 0xffff_ffff_ffff)
        } else {
            guid(i, i)
        };
        UserKey::new(tenant, UserId::parse(&user).expect("a GUID is a valid user id"))
    }
}

/// A fresh user's state after one `setPresence` Busy/InACall at `now`, built exactly as the
/// service builds it (so the session vector has the capacity a real first session gets).
fn busy(now: Timestamp, expiration: SignedDuration, timing: &Timing) -> (UserPresence, Option<ChangeEvent>) {
    let mut state = UserPresence::default();
    let command = Command::SetPresence {
        session: SessionId::parse(APP_ID).expect("valid session id"),
        state: SessionState::new(Availability::Busy, Activity::InACall).expect("Busy/InACall is a session pair"),
        expiration,
        application: None,
    };
    let change = state
        .apply(command, now, timing)
        .expect("a fresh user accepts a session")
        .change;
    (state, change)
}

/// A field of /proc/self/status in bytes (VmRSS, VmHWM, ...).
fn proc_status(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn rss() -> u64 {
    proc_status("VmRSS")
}

/// CPU seconds (user + system) per thread name, from /proc/self/task/*/stat (USER_HZ = 100).
fn thread_cpu() -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    for task in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let name = stat[open + 1..close].to_owned();
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        let ticks: u64 = [11, 12]
            .iter()
            .filter_map(|&i| fields.get(i).and_then(|f| f.parse::<u64>().ok()))
            .sum();
        *out.entry(name).or_insert(0.0) += ticks as f64 / 100.0;
    }
    out
}

fn cpu_delta(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>) -> Value {
    let mut out = serde_json::Map::new();
    for (name, secs) in after {
        let d = secs - before.get(name).copied().unwrap_or(0.0);
        if d > 0.0 {
            out.insert(name.clone(), json!(round3(d)));
        }
    }
    Value::Object(out)
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn mib(bytes: u64) -> f64 {
    round3(bytes as f64 / 1024.0 / 1024.0)
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

fn machine() -> Value {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let model = presenced_bench::cpu_model();
    let mem_total = read("/proc/meminfo")
        .lines()
        .find_map(|l| {
            l.strip_prefix("MemTotal:")?
                .split_whitespace()
                .next()?
                .parse::<u64>()
                .ok()
        })
        .unwrap_or(0);
    json!({
        "cpus": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "cpu_model": model,
        "mem_total_gib": round3(mem_total as f64 / 1024.0 / 1024.0),
        "loadavg": read("/proc/loadavg").split_whitespace().take(3).collect::<Vec<_>>().join(" "),
        "kernel": read("/proc/sys/kernel/osrelease").trim(),
    })
}

/// Prints one JSON line and keeps the rows for the markdown table.
struct Report {
    mode: &'static str,
    rows: Vec<(String, String)>,
}

impl Report {
    fn new(mode: &'static str) -> Self {
        Self { mode, rows: Vec::new() }
    }

    fn line(&self, phase: &str, mut value: Value) {
        if let Value::Object(map) = &mut value {
            map.insert("bench".into(), json!("scale"));
            map.insert("mode".into(), json!(self.mode));
            map.insert("phase".into(), json!(phase));
        }
        println!("{value}");
    }

    fn row(&mut self, name: impl Into<String>, value: impl Into<String>) {
        self.rows.push((name.into(), value.into()));
    }

    fn table(&self) {
        println!();
        println!("| {} | value |", self.mode);
        println!("|---|---|");
        for (name, value) in &self.rows {
            println!("| {name} | {value} |");
        }
    }
}

/// The temporary data directory, removed on drop unless kept.
struct DataDir {
    path: PathBuf,
    keep: bool,
}

impl DataDir {
    fn new(common: &Common, mode: &str) -> Result<Self> {
        let parent = common.data_parent.clone().unwrap_or_else(std::env::temp_dir);
        let path = parent.join(format!("presenced-bench-scale-{mode}-{}", std::process::id()));
        if path.exists() {
            std::fs::remove_dir_all(&path)?;
        }
        std::fs::create_dir_all(&path).with_context(|| format!("cannot create {}", path.display()))?;
        Ok(Self {
            path,
            keep: common.keep,
        })
    }
}

impl Drop for DataDir {
    fn drop(&mut self) {
        if self.keep {
            eprintln!("[bench-scale] kept {}", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

type Build = Arc<dyn Fn() -> (UserPresence, Option<ChangeEvent>) + Send + Sync>;

struct LoadOutcome {
    loaded: u64,
    secs: f64,
    batches: u64,
    stopped_early: bool,
    projected_rss: Option<u64>,
    cpu: Value,
}

/// Commit users `range` through the store, `inflight` commits at a time (worker `w` takes every
/// `inflight`-th user). With `rss_guard = (baseline, limit)` loading stops early when memory
/// would exceed the limit.
async fn load(
    store: &EmbeddedStore,
    ids: &Arc<Ids>,
    range: Range<u64>,
    inflight: usize,
    build: Build,
    rss_guard: Option<(u64, u64)>,
) -> Result<LoadOutcome> {
    let total = range.end - range.start;
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let batches_before = store.commit_count();
    let cpu_before = thread_cpu();
    let started = Instant::now();
    let mut workers = JoinSet::new();
    let step = inflight.max(1) as u64;
    for w in 0..step.min(total) {
        let (store, ids, build, done, stop) = (store.clone(), ids.clone(), build.clone(), done.clone(), stop.clone());
        let end = range.end;
        workers.spawn(async move {
            let mut i = range.start + w;
            while i < end && !stop.load(Ordering::Relaxed) {
                let (state, event) = build();
                let commit = Commit {
                    key: ids.key(i),
                    expected_version: 0,
                    state,
                    event,
                };
                store
                    .commit(commit)
                    .await
                    .with_context(|| format!("commit of user {i}"))?;
                done.fetch_add(1, Ordering::Relaxed);
                i += step;
            }
            anyhow::Ok(())
        });
    }
    let mut projected_rss = None;
    let mut stopped_early = false;
    let mut last_log = Instant::now();
    let mut check = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            joined = workers.join_next() => match joined {
                None => break,
                Some(result) => result??,
            },
            _ = check.tick() => {
                let d = done.load(Ordering::Relaxed);
                if let Some((base, limit)) = rss_guard {
                    let now_rss = rss();
                    if d >= total / 4 && d > 0 {
                        let p = base + (now_rss.saturating_sub(base) as f64 * total as f64 / d as f64) as u64;
                        projected_rss = Some(p);
                        if p as f64 > limit as f64 * 1.15 && !stopped_early {
                            eprintln!("[bench-scale] projected RSS {:.1} GiB > limit: stopping at {d}", p as f64 / GIB);
                            stopped_early = true;
                        }
                    }
                    if now_rss > limit && !stopped_early {
                        eprintln!("[bench-scale] RSS {:.1} GiB > limit: stopping at {d}", now_rss as f64 / GIB);
                        stopped_early = true;
                    }
                    if stopped_early {
                        stop.store(true, Ordering::Relaxed);
                    }
                }
                if last_log.elapsed() >= Duration::from_secs(5) {
                    last_log = Instant::now();
                    let secs = started.elapsed().as_secs_f64();
                    eprintln!(
                        "[bench-scale] loaded {d}/{total} in {secs:.1} s ({:.0}/s), RSS {:.2} GiB",
                        d as f64 / secs,
                        rss() as f64 / GIB
                    );
                }
            }
        }
    }
    Ok(LoadOutcome {
        loaded: done.load(Ordering::Relaxed),
        secs: started.elapsed().as_secs_f64(),
        batches: store.commit_count() - batches_before,
        stopped_early,
        projected_rss,
        cpu: cpu_delta(&cpu_before, &thread_cpu()),
    })
}

/// Runs this binary again with `args` and returns the JSON lines it printed.
fn helper(args: &[String]) -> Result<Vec<Value>> {
    let exe = std::env::current_exe()?;
    let output = std::process::Command::new(exe)
        .args(args)
        .stderr(std::process::Stdio::inherit())
        .output()?;
    if !output.status.success() {
        bail!("helper {args:?} failed: {}", output.status);
    }
    let lines: Vec<Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .collect();
    if lines.is_empty() {
        bail!("helper {args:?} printed no JSON");
    }
    Ok(lines)
}

fn percentiles(mut v: Vec<u64>) -> Value {
    if v.is_empty() {
        return json!({"n": 0});
    }
    v.sort_unstable();
    let at = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize] as f64 / 1000.0;
    json!({
        "n": v.len(),
        "p50_us": round3(at(0.50)),
        "p99_us": round3(at(0.99)),
        "p999_us": round3(at(0.999)),
        "max_us": round3(at(1.0)),
    })
}

// ---------------------------------------------------------------------------------------------
// memory
// ---------------------------------------------------------------------------------------------

/// glibc malloc: a request of `n` bytes takes a chunk of `n + 8` rounded up to 16, at least 32.
fn chunk(n: usize) -> usize {
    if n == 0 {
        0
    } else {
        ((n + 8 + 15) & !15).max(32)
    }
}

/// hashbrown: buckets after inserting `n` items one by one (grows past 7/8 full, powers of two).
fn buckets(n: u64) -> u64 {
    if n == 0 {
        return 0;
    }
    let mut b: u64 = 4;
    while (if b < 8 { b - 1 } else { b / 8 * 7 }) < n {
        b *= 2;
    }
    b
}

/// Bytes per user of a hash table holding `n` items of `elem` bytes, split over `shards` tables.
fn table_bytes_per_user(n: u64, shards: u64, elem: usize) -> f64 {
    let per_shard = n.div_ceil(shards);
    let b = buckets(per_shard);
    (shards * (b * (elem as u64 + 1) + 16)) as f64 / n as f64
}

// The layouts of the store's private table entries (memory::Memory, deadlines::DeadlineIndex).
type MapSlot = (u64, UserKey, Entry);
type DeadlineSlot = (u64, std::sync::Arc<UserKey>, i64, i64);
type ByTimeElement = ((i64, usize), (u64, std::sync::Arc<UserKey>));

/// The `size_of`-and-allocation model of one user with one session, for the breakdown.
fn model(n: u64) -> (Value, Vec<(String, f64)>) {
    let (state, _) = busy(SystemClock.now(), SignedDuration::from_hours(1), &Timing::default());
    let ids = Ids::new(1, false);
    let key = ids.key(1);
    let tenant_len = key.tenant.as_str().len();
    let user_len = key.user.as_str().len();
    let key_heap = chunk(tenant_len) + chunk(user_len);
    // Commands keep the sessions vector exactly as long as it is (UserPresence::apply).
    let sessions_cap = state.sessions().len();
    let sizes = json!({
        "UserKey": size_of::<UserKey>(),
        "TenantId/UserId/SessionId (String)": size_of::<TenantId>(),
        "Timestamp": size_of::<Timestamp>(),
        "Option<Timestamp>": size_of::<Option<Timestamp>>(),
        "SessionState": size_of::<SessionState>(),
        "Session": size_of::<Session>(),
        "UserPresence": size_of::<UserPresence>(),
        "Option<Preferred>": size_of::<Option<Preferred>>(),
        "Option<StatusMessage>": size_of::<Option<StatusMessage>>(),
        "OutOfOfficeSettings": size_of::<OutOfOfficeSettings>(),
        "SequenceNumber": size_of::<SequenceNumber>(),
        "memory::Entry": size_of::<Entry>(),
        "ArcInner<UserPresence>": 16 + size_of::<UserPresence>(),
        "(hash, UserKey, Entry) map slot": size_of::<MapSlot>(),
        "deadline slot (hash, Arc<UserKey>, due, filed)": size_of::<DeadlineSlot>(),
        "((filed, address), (hash, Arc<UserKey>)) by_time element": size_of::<ByTimeElement>(),
        "ChangeEvent": size_of::<ChangeEvent>(),
        "tenant id chars": tenant_len,
        "user id chars": user_len,
        "session id chars": APP_ID.len(),
    });
    // BTreeSet leaf: parent pointer, parent index, length, 11 elements. Deadlines arrive in time
    // order, so nodes split at the right end and stay ~6 of 11 full; one internal node per ~7 leaves.
    let elem = size_of::<ByTimeElement>();
    let leaf = 16 + 11 * elem;
    let internal = leaf + 12 * 8;
    let btree_per_key = chunk(leaf) as f64 / 6.0 + chunk(internal) as f64 / 42.0;
    let rows = vec![
        (
            "memory map slot (hash 8 + UserKey 48 + Entry 16 + ctrl; 64 hashbrown shards, power-of-two slack)".to_owned(),
            table_bytes_per_user(n, 64, size_of::<MapSlot>()),
        ),
        (
            format!("memory map key strings (tenant {tenant_len} + user {user_len} chars, malloc chunks)"),
            key_heap as f64,
        ),
        (
            format!(
                "Arc<UserPresence> (16 + {} bytes, malloc chunk)",
                size_of::<UserPresence>()
            ),
            chunk(16 + size_of::<UserPresence>()) as f64,
        ),
        (
            format!(
                "Vec<Session> buffer (capacity {sessions_cap} x {} bytes)",
                size_of::<Session>()
            ),
            chunk(std::mem::size_of_val(state.sessions())) as f64,
        ),
        (
            format!("SessionId string ({} chars)", APP_ID.len()),
            chunk(APP_ID.len()) as f64,
        ),
        (
            "deadline slot (hash 8 + Arc<UserKey> 8 + due 8 + filed 8 + ctrl; one table)".to_owned(),
            table_bytes_per_user(n, 1, size_of::<DeadlineSlot>()),
        ),
        (
            "deadline index: one shared key (Arc header 16 + UserKey 48, and its strings)".to_owned(),
            (chunk(16 + size_of::<UserKey>()) + key_heap) as f64,
        ),
        (
            format!("deadline by_time BTreeMap<(filed, address), (hash, Arc<UserKey>)> nodes ({elem}-byte elements, ~6/11 full)"),
            btree_per_key,
        ),
    ];
    (sizes, rows)
}

fn memory(args: MemoryArgs) -> Result<()> {
    let common = &args.common;
    let n = common.sessions;
    let mut report = Report::new("memory");
    report.line("machine", machine());
    let dir = DataDir::new(common, "memory")?;

    let (sizes, model_rows) = model(n);
    let model_total: f64 = model_rows.iter().map(|(_, b)| b).sum();
    report.line(
        "model",
        json!({
            "sessions": n,
            "size_of": sizes,
            "per_user_bytes": model_rows.iter().map(|(k, v)| json!({"part": k, "bytes": round3(*v)})).collect::<Vec<_>>(),
            "per_user_total_bytes": round3(model_total),
        }),
    );

    // Each step in its own process: freed memory is not given back to the system by glibc, so
    // in one process the steps would distort each other's RSS (and at 10M, add up past RAM).
    let mut seq = Vec::new();
    if common.sequential_keys {
        seq.push("--sequential-keys".to_owned());
    }
    let structures = if args.no_helpers {
        None
    } else {
        eprintln!("[bench-scale] structures only (fresh process), {n} users");
        let mut a = vec!["structures".into(), "--sessions".into(), n.to_string()];
        a.extend(["--tenants".into(), common.tenants.to_string()]);
        a.extend(seq.iter().cloned());
        let v = helper(&a)?.pop().context("no output")?;
        report.line("structures", v.clone());
        Some(v)
    };
    eprintln!("[bench-scale] load (fresh process), {n} users");
    let mut a = vec!["fill".into(), "--data-dir".into(), dir.path.display().to_string()];
    a.extend([
        "--sessions".into(),
        n.to_string(),
        "--tenants".into(),
        common.tenants.to_string(),
    ]);
    a.extend(["--inflight".into(), common.inflight.to_string()]);
    a.extend(["--rss-limit-gib".into(), args.rss_limit_gib.to_string()]);
    a.extend(seq);
    let lines = helper(&a)?;
    let phase = |name: &str| {
        lines
            .iter()
            .find(|v| v["phase"] == name)
            .cloned()
            .with_context(|| format!("no {name} line"))
    };
    let load = phase("load")?;
    report.line("load", load.clone());
    let in_process = phase("reopen_in_process")?;
    report.line("reopen_in_process", in_process.clone());
    let fresh = if args.no_helpers {
        None
    } else {
        eprintln!("[bench-scale] reopen (fresh process)");
        let v = helper(&["reopen".into(), "--data-dir".into(), dir.path.display().to_string()])?
            .pop()
            .context("no output")?;
        report.line("reopen_fresh_process", v.clone());
        Some(v)
    };

    // The table.
    let u = |v: &Value, k: &str| v[k].as_u64().unwrap_or(0);
    let f = |v: &Value, k: &str| v[k].as_f64().unwrap_or(0.0);
    let gib = |b: u64| format!("{:.2} GiB", b as f64 / GIB);
    let loaded = u(&load, "sessions_loaded");
    let base = u(&load, "rss_baseline_bytes");
    let per_session = f(&load, "bytes_per_session");
    report.row("sessions held", format!("{loaded} of {n}"));
    if load["stopped_early"] == true {
        let p = u(&load, "projected_rss_at_target_bytes");
        report.row(
            "stopped early: projected RSS at target",
            format!("{} ({:.0} B/session)", gib(p), p.saturating_sub(base) as f64 / n as f64),
        );
    }
    report.row(
        "RSS empty store (baseline) → loaded",
        format!("{} → {}", gib(base), gib(u(&load, "rss_loaded_bytes"))),
    );
    report.row(
        "**bytes per session (loaded, write path warm)**",
        format!("**{per_session:.0}**"),
    );
    report.row("peak RSS (VmHWM) during load", gib(u(&load, "vm_hwm_bytes")));
    if let Some(s) = &structures {
        report.row(
            "of which our structures (fresh process, no redb): memory map + deadline index",
            format!(
                "{:.0} = {:.0} + {:.0} B/session",
                f(s, "bytes_per_user_total"),
                f(s, "bytes_per_user_memory_map"),
                f(s, "bytes_per_user_deadline_index")
            ),
        );
        report.row(
            "rest (redb page cache and write buffers, allocator)",
            format!("{:.0} B/session", per_session - f(s, "bytes_per_user_total")),
        );
    }
    report.row(
        "model (size_of + malloc chunks) per user",
        format!("{model_total:.0} B"),
    );
    let disk = u(&load, "disk_bytes");
    report.row(
        "presence.redb after load (+ presence.wal)",
        format!(
            "{:.1} MiB ({:.0} B/session) + {:.1} MiB",
            mib(disk),
            disk as f64 / loaded as f64,
            mib(u(&load, "wal_bytes"))
        ),
    );
    let closed = u(&in_process, "disk_bytes_after_close");
    report.row(
        "presence.redb after clean close",
        format!(
            "{:.1} MiB ({:.0} B/session)",
            mib(closed),
            closed as f64 / loaded as f64
        ),
    );
    report.row(
        "load (commit) rate",
        format!(
            "{:.0} commits/s ({:.1} s, {} group commits, mean batch {:.0})",
            f(&load, "commits_per_sec"),
            f(&load, "load_secs"),
            u(&load, "group_commits"),
            f(&load, "mean_batch")
        ),
    );
    if in_process["skipped"].is_string() {
        report.row(
            "in-process restart",
            format!("skipped: {}", in_process["skipped"].as_str().unwrap_or("")),
        );
    } else {
        report.row(
            "in-process restart: close / reopen (load)",
            format!(
                "{:.2} s / {:.2} s",
                f(&in_process, "close_secs"),
                f(&in_process, "open_secs")
            ),
        );
        report.row(
            "in-process: RSS after close → after reopen",
            format!(
                "{} → {}",
                gib(u(&in_process, "rss_after_close_bytes")),
                gib(u(&in_process, "rss_after_reopen_bytes"))
            ),
        );
    }
    if let Some(v) = &fresh {
        report.row(
            "**fresh-process restart: open time**",
            format!("**{:.2} s**", f(v, "open_secs")),
        );
        report.row(
            "fresh process: RSS before open → after open (peak)",
            format!(
                "{} → {} ({})",
                gib(u(v, "rss_before_open_bytes")),
                gib(u(v, "rss_after_open_bytes")),
                gib(u(v, "vm_hwm_bytes"))
            ),
        );
        report.row(
            "**bytes per session after restart (fresh process)**",
            format!("**{:.0}**", f(v, "bytes_per_session")),
        );
        report.row(
            "redb integrity check alone (part of open; file in page cache)",
            format!("{:.2} s", f(v, "integrity_check_secs_warm")),
        );
    }
    for (part, bytes) in &model_rows {
        report.row(format!("model: {part}"), format!("{bytes:.0}"));
    }
    report.row(
        "load average at start",
        machine()["loadavg"].as_str().unwrap_or("").to_owned(),
    );
    report.table();
    Ok(())
}

/// Helper: open an empty store, load N users, close, and reopen in the same process.
fn fill(args: FillArgs) -> Result<()> {
    let n = args.sessions;
    let limit = (args.rss_limit_gib * GIB) as u64;
    let rt = runtime()?;
    let rss_before_open = rss();
    let (store, _) = EmbeddedStore::open(&args.data_dir, Default::default())?;
    let base = rss();
    let ids = Arc::new(Ids::new(args.tenants, args.sequential_keys));
    let timing = Timing::default();
    // Each user's session is set at the real time of its commit, as the service would; 1 h
    // expiry means nothing fades or expires during the run.
    let build: Build = Arc::new(move || busy(SystemClock.now(), SignedDuration::from_hours(1), &timing));
    eprintln!("[bench-scale] loading {n} users ({} in flight)", args.inflight);
    let outcome = rt.block_on(load(&store, &ids, 0..n, args.inflight, build, Some((base, limit))))?;
    let loaded_rss = rss();
    let hwm = proc_status("VmHWM");
    let loaded = outcome.loaded;
    let per_session = loaded_rss.saturating_sub(base) as f64 / loaded as f64;
    let size = |name: &str| std::fs::metadata(args.data_dir.join(name)).map_or(0, |m| m.len());
    let disk = size(FILE_NAME);
    let wal_bytes = wal::total_size(&args.data_dir);
    let (users, sessions, deadlines) = (store.user_count(), store.session_count(), store.pending_deadlines());
    if users as u64 != loaded || deadlines as u64 != loaded {
        bail!("store holds {users} users and {deadlines} deadlines, expected {loaded}");
    }
    println!(
        "{}",
        json!({
            "phase": "load",
            "sessions_target": n,
            "sessions_loaded": loaded,
            "stopped_early": outcome.stopped_early,
            "projected_rss_at_target_bytes": outcome.projected_rss,
            "rss_before_open_bytes": rss_before_open,
            "rss_baseline_bytes": base,
            "rss_loaded_bytes": loaded_rss,
            "vm_hwm_bytes": hwm,
            "bytes_per_session": round3(per_session),
            "disk_bytes": disk,
            "disk_bytes_per_session": round3(disk as f64 / loaded as f64),
            "wal_bytes": wal_bytes,
            "load_secs": round3(outcome.secs),
            "commits_per_sec": round3(loaded as f64 / outcome.secs),
            "group_commits": outcome.batches,
            "mean_batch": round3(loaded as f64 / outcome.batches.max(1) as f64),
            "sessions_in_store": sessions,
            "sequential_keys": args.sequential_keys,
            "thread_cpu_secs": outcome.cpu,
        })
    );

    // Restart, in this process: close, measure, reopen (if the freed memory, which glibc keeps,
    // plus a second copy still fits under the limit).
    let close_started = Instant::now();
    store.close();
    let close_secs = close_started.elapsed().as_secs_f64();
    let after_close = rss();
    let disk_after_close = size(FILE_NAME);
    let need = after_close + loaded_rss.saturating_sub(base) * 5 / 4;
    if need > limit {
        println!(
            "{}",
            json!({
                "phase": "reopen_in_process",
                "close_secs": round3(close_secs),
                "disk_bytes_after_close": disk_after_close,
                "rss_after_close_bytes": after_close,
                "skipped": format!("would need ~{:.1} GiB", need as f64 / GIB),
            })
        );
        return Ok(());
    }
    let reopen_started = Instant::now();
    let (store, open_report) = EmbeddedStore::open(&args.data_dir, Default::default())?;
    let reopen_secs = reopen_started.elapsed().as_secs_f64();
    let after_reopen = rss();
    let hwm_reopen = proc_status("VmHWM");
    if open_report.users as u64 != loaded {
        bail!("reopen found {} users, expected {loaded}", open_report.users);
    }
    store.close();
    println!(
        "{}",
        json!({
            "phase": "reopen_in_process",
            "close_secs": round3(close_secs),
            "disk_bytes_after_close": disk_after_close,
            "rss_after_close_bytes": after_close,
            "open_secs": round3(reopen_secs),
            "users_per_sec": round3(loaded as f64 / reopen_secs),
            "rss_after_reopen_bytes": after_reopen,
            "bytes_per_session_vs_after_close": round3(after_reopen.saturating_sub(after_close) as f64 / loaded as f64),
            "bytes_per_session_vs_empty_baseline": round3(after_reopen.saturating_sub(base) as f64 / loaded as f64),
            "vm_hwm_bytes": hwm_reopen,
        })
    );
    Ok(())
}

/// Helper: build the store's in-memory structures for N users without redb, layer by layer.
fn structures(args: StructuresArgs) -> Result<()> {
    let n = args.sessions;
    let ids = Ids::new(args.tenants, args.sequential_keys);
    let timing = Timing::default();
    let start = SystemClock.now();
    let base = rss();
    let started = Instant::now();
    let memory = Memory::default();
    for i in 0..n {
        // Real time advances between commits; a microsecond per user stands in for it.
        let now = start + SignedDuration::from_micros(i as i64);
        let (state, _event) = busy(now, SignedDuration::from_hours(1), &timing);
        memory.put(
            ids.key(i),
            Entry {
                version: 1,
                state: Arc::new(state),
            },
        );
    }
    let after_memory = rss();
    let deadlines = DeadlineIndex::default();
    for i in 0..n {
        let at = start + SignedDuration::from_micros(i as i64) + SignedDuration::from_hours(1);
        let key = ids.key(i);
        deadlines.set(memory.hash(&key), &key, Some(at));
    }
    let after_deadlines = rss();
    let secs = started.elapsed().as_secs_f64();
    if memory.len() as u64 != n || deadlines.len() as u64 != n {
        bail!("structures hold {} users / {} deadlines", memory.len(), deadlines.len());
    }
    let per = |b: u64| round3(b as f64 / n as f64);
    println!(
        "{}",
        json!({
            "users": n,
            "rss_baseline_bytes": base,
            "rss_after_memory_map_bytes": after_memory,
            "rss_after_deadline_index_bytes": after_deadlines,
            "bytes_per_user_memory_map": per(after_memory.saturating_sub(base)),
            "bytes_per_user_deadline_index": per(after_deadlines.saturating_sub(after_memory)),
            "bytes_per_user_total": per(after_deadlines.saturating_sub(base)),
            "build_secs": round3(secs),
        })
    );
    black_box((memory, deadlines));
    Ok(())
}

/// Helper: open an existing data directory in a fresh process, as a restarted server does.
/// Afterwards (store closed) times redb's integrity check alone, which `open` includes: the
/// file's pages are then in the OS page cache, so that is its CPU cost rather than its I/O.
fn reopen(args: ReopenArgs) -> Result<()> {
    let before = rss();
    let started = Instant::now();
    let (store, report) = EmbeddedStore::open(&args.data_dir, Default::default())?;
    let secs = started.elapsed().as_secs_f64();
    let after = rss();
    let hwm = proc_status("VmHWM");
    let users = report.users;
    store.close();
    let started = Instant::now();
    let mut db = redb::Database::create(args.data_dir.join(FILE_NAME))?;
    let intact = db.check_integrity()?;
    let integrity_secs = started.elapsed().as_secs_f64();
    drop(db);
    println!(
        "{}",
        json!({
            "users": users,
            "pending_deadlines": report.pending_deadlines,
            "open_secs": round3(secs),
            "users_per_sec": round3(users as f64 / secs),
            "rss_before_open_bytes": before,
            "rss_after_open_bytes": after,
            "vm_hwm_bytes": hwm,
            "bytes_per_session": round3(after.saturating_sub(before) as f64 / users.max(1) as f64),
            "integrity_check_secs_warm": round3(integrity_secs),
            "integrity_ok": intact,
        })
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// storm
// ---------------------------------------------------------------------------------------------

const PHASE_BEFORE: u8 = 0;
const PHASE_STORM: u8 = 1;
const PHASE_AFTER: u8 = 2;
const PHASES: [&str; 3] = ["before", "during", "after"];

struct Sample {
    phase: u8,
    /// The `service.read` call alone.
    service_ns: u64,
    /// From the instant the read was due (its 1 ms tick) to its answer: includes waiting for a
    /// worker thread, so a starved runtime shows here even if the read itself is fast.
    response_ns: u64,
    busy: bool,
}

/// Reads random storm users, `per_ms` every millisecond (open loop: late ticks fire in a burst,
/// each measured from when it was due), until `stop`.
async fn reader(
    service: Arc<PresenceService<EmbeddedStore>>,
    ids: Arc<Ids>,
    users: u64,
    per_ms: usize,
    phase: Arc<AtomicU8>,
    stop: Arc<AtomicBool>,
) -> (Vec<Sample>, u64) {
    let mut interval = tokio::time::interval(Duration::from_millis(1));
    let mut rng = 0x5eed_u64;
    let mut samples = Vec::with_capacity(1 << 20);
    let mut errors = 0;
    let mut keys = Vec::with_capacity(per_ms);
    loop {
        let due = interval.tick().await.into_std();
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let phase = phase.load(Ordering::Relaxed);
        keys.clear();
        for _ in 0..per_ms {
            rng = splitmix(rng);
            keys.push(ids.key(rng % users));
        }
        for key in &keys {
            let started = Instant::now();
            let result = service.read(key).await;
            let done = Instant::now();
            match result {
                Ok(view) => samples.push(Sample {
                    phase,
                    service_ns: (done - started).as_nanos() as u64,
                    response_ns: done.saturating_duration_since(due).as_nanos() as u64,
                    busy: view.availability == Availability::Busy,
                }),
                Err(_) => errors += 1,
            }
        }
    }
    (samples, errors)
}

/// A histogram's sum and cumulative bucket counts `(upper bound, count)`, read through the
/// Prometheus text encoding (the last bucket is +Inf, i.e. the total count).
fn histogram_snapshot(h: &prometheus_client::metrics::histogram::Histogram) -> (f64, Vec<(f64, f64)>) {
    let mut registry = prometheus_client::registry::Registry::default();
    registry.register("h", "h", h.clone());
    let mut text = String::new();
    let _ = prometheus_client::encoding::text::encode(&mut text, &registry);
    let sum = text
        .lines()
        .find_map(|l| l.strip_prefix("h_sum ")?.trim().parse::<f64>().ok())
        .unwrap_or(0.0);
    let buckets = text
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("h_bucket{le=\"")?;
            let (le, count) = rest.split_once("\"}")?;
            let le = if le == "+Inf" { f64::INFINITY } else { le.parse().ok()? };
            Some((le, count.trim().parse::<f64>().ok()?))
        })
        .collect();
    (sum, buckets)
}

/// Between two snapshots: (sum of seconds, count, how many took longer than each of `over`).
fn histogram_delta(
    before: &(f64, Vec<(f64, f64)>),
    after: &(f64, Vec<(f64, f64)>),
    over: &[f64],
) -> (f64, f64, Vec<(f64, f64)>) {
    let cum = |snap: &(f64, Vec<(f64, f64)>), le: f64| {
        snap.1
            .iter()
            .find(|(b, _)| (b.is_infinite() && le.is_infinite()) || (*b - le).abs() < 1e-12)
            .map_or(0.0, |(_, c)| *c)
    };
    let total = cum(after, f64::INFINITY) - cum(before, f64::INFINITY);
    let above = over
        .iter()
        .map(|&le| (le, total - (cum(after, le) - cum(before, le))))
        .collect();
    (after.0 - before.0, total, above)
}

/// What the async part of the storm hands back for reporting.
struct StormRun {
    cal_n: u64,
    cal_rate: f64,
    loaded: LoadOutcome,
    due: Timestamp,
    loaded_at: Timestamp,
    rss_loaded: u64,
    baseline_clean: bool,
    storm_started_at: Timestamp,
    storm_secs: f64,
    /// Per tick: (keys due, keys committed, seconds).
    ticks: Vec<(usize, usize, f64)>,
    committed: usize,
    batches: u64,
    writer_commit_secs: f64,
    writer_commits: f64,
    /// How many write_batch calls (log append + fdatasync, and the checkpoint when one falls due)
    /// took longer than each bound.
    writer_commits_over: Vec<(f64, f64)>,
    cpu: Value,
    remaining: (i64, usize),
    samples: Vec<Sample>,
    read_errors: u64,
}

fn storm(args: StormArgs) -> Result<()> {
    let common = &args.common;
    let n = common.sessions;
    let mut report = Report::new("storm");
    report.line("machine", machine());
    let dir = DataDir::new(common, "storm")?;
    let rt = runtime()?;
    let (store, _) = EmbeddedStore::open(&dir.path, Default::default())?;
    let timing = Timing::default();
    let expiration = timing.session_expiration_min;
    let service = Arc::new(PresenceService::new(store.clone(), timing.clone(), Default::default()));
    let ids = Arc::new(Ids::new(common.tenants, common.sequential_keys));
    let clock = SystemClock;

    let result = rt.block_on(async {
        // Calibration users (ids n..): expire in 1 h, never due here; they only measure the rate.
        let cal = args.calibration.max(1);
        let t = timing.clone();
        let build: Build = Arc::new(move || busy(clock.now(), SignedDuration::from_hours(1), &t));
        let c = load(&store, &ids, n..n + cal, common.inflight, build, None).await?;
        let rate = c.loaded as f64 / c.secs;
        // T: when the storm users are expected to be loaded, with margin, plus the baseline phase.
        // The rate falls as the file outgrows redb's cache (random keys: ~3x slower at 1M),
        // hence the factor; `--lead-secs` overrides.
        let lead = args
            .lead_secs
            .unwrap_or(n as f64 / rate * 4.0 + args.baseline_secs + 2.0);
        let due = clock.now() + SignedDuration::from_secs_f64(lead);
        let built_at = due - expiration;
        eprintln!("[bench-scale] calibration: {rate:.0} commits/s; all {n} sessions expire at {due} (in {lead:.1} s)");
        let t = timing.clone();
        let build: Build = Arc::new(move || busy(built_at, expiration, &t));
        let l = load(&store, &ids, 0..n, common.inflight, build, None).await?;
        let loaded_at = clock.now();
        if store.pending_deadlines() as u64 != n + cal || store.session_count() as u64 != n + cal {
            bail!(
                "after loading: {} deadlines, {} sessions",
                store.pending_deadlines(),
                store.session_count()
            );
        }
        let rss_loaded = rss();
        eprintln!(
            "[bench-scale] loaded {n} in {:.1} s ({:.0}/s)",
            l.secs,
            n as f64 / l.secs
        );

        // Baseline reads until T (at least `baseline_secs`; if T comes first, that is flagged).
        let phase = Arc::new(AtomicU8::new(PHASE_BEFORE));
        let stop = Arc::new(AtomicBool::new(false));
        let reads = tokio::spawn(reader(
            service.clone(),
            ids.clone(),
            n,
            args.reads_per_ms,
            phase.clone(),
            stop.clone(),
        ));
        let until_due = Duration::try_from(due.duration_since(clock.now())).unwrap_or(Duration::ZERO);
        let baseline_clean = until_due.as_secs_f64() >= args.baseline_secs;
        let wait = until_due.max(Duration::from_secs_f64(args.baseline_secs));
        tokio::time::sleep(wait).await;
        // `advance` reads the real clock: make sure it is past T.
        while clock.now() <= due {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }

        // The storm: what `Sweeper::run` does when it wakes at T, driven by hand.
        let metrics = store.metrics();
        let commit_hist0 = histogram_snapshot(&metrics.commit_seconds);
        let batches0 = store.commit_count();
        let cpu0 = thread_cpu();
        phase.store(PHASE_STORM, Ordering::Relaxed);
        let storm_started = Instant::now();
        let storm_started_at = clock.now();
        let tick_now = due + SignedDuration::from_secs(1);
        // A task on the runtime, as `Sweeper::run` is in the server (not on this main thread).
        let sweeper = Sweeper::new(service.clone());
        let storm_task = tokio::spawn(async move {
            let mut ticks: Vec<(usize, usize, f64)> = Vec::new();
            let mut committed_total = 0;
            loop {
                let t0 = Instant::now();
                let (seen, committed) = sweeper.tick(tick_now).await;
                ticks.push((seen, committed, t0.elapsed().as_secs_f64()));
                committed_total += committed;
                if (seen, committed) == (0, 0) {
                    break;
                }
                if seen > 0 && committed == 0 && ticks.len() > 10 {
                    bail!("the sweeper stalls: {seen} due, nothing committed");
                }
            }
            Ok((ticks, committed_total))
        });
        let (ticks, committed_total) = storm_task.await??;
        let storm_secs = storm_started.elapsed().as_secs_f64();
        phase.store(PHASE_AFTER, Ordering::Relaxed);
        let cpu = cpu_delta(&cpu0, &thread_cpu());
        let batches = store.commit_count() - batches0;
        let (writer_commit_secs, writer_commits, writer_commits_over) = histogram_delta(
            &commit_hist0,
            &histogram_snapshot(&metrics.commit_seconds),
            &[0.02, 0.1, 0.25, 1.0],
        );
        let remaining_sessions = store.session_count();
        let remaining_deadlines = store.pending_deadlines();
        tokio::time::sleep(Duration::from_secs(2)).await;
        stop.store(true, Ordering::Relaxed);
        let (samples, read_errors) = reads.await?;
        Ok(StormRun {
            cal_n: c.loaded,
            cal_rate: rate,
            loaded: l,
            due,
            loaded_at,
            rss_loaded,
            baseline_clean,
            storm_started_at,
            storm_secs,
            ticks,
            committed: committed_total,
            batches,
            writer_commit_secs,
            writer_commits,
            writer_commits_over,
            cpu,
            remaining: (remaining_sessions, remaining_deadlines),
            samples,
            read_errors,
        })
    });
    let StormRun {
        cal_n,
        cal_rate,
        loaded,
        due,
        loaded_at,
        rss_loaded,
        baseline_clean,
        storm_started_at,
        storm_secs,
        ticks,
        committed,
        batches,
        writer_commit_secs,
        writer_commits,
        writer_commits_over,
        cpu,
        remaining: (remaining_sessions, remaining_deadlines),
        samples,
        read_errors,
    } = result?;
    if remaining_sessions as u64 != cal_n || remaining_deadlines as u64 != cal_n {
        bail!("after the storm: {remaining_sessions} sessions and {remaining_deadlines} deadlines remain, expected {cal_n}");
    }

    report.line(
        "load",
        json!({
            "sessions": n,
            "calibration_users": cal_n,
            "calibration_commits_per_sec": round3(cal_rate),
            "load_secs": round3(loaded.secs),
            "commits_per_sec": round3(n as f64 / loaded.secs),
            "group_commits": loaded.batches,
            "rss_loaded_bytes": rss_loaded,
            "due_at": due.to_string(),
            "loaded_at": loaded_at.to_string(),
            "thread_cpu_secs": loaded.cpu,
        }),
    );
    let full: Vec<f64> = ticks.iter().filter(|t| t.0 == 4096).map(|t| t.2).collect();
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let max = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
    let min = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);
    let within_target = storm_secs <= 2.0;
    report.line(
        "storm",
        json!({
            "sessions": n,
            "storm_secs": round3(storm_secs),
            "started_after_due_ms": round3(storm_started_at.duration_since(due).as_secs_f64() * 1000.0),
            "transitions": committed,
            "transitions_per_sec": round3(committed as f64 / storm_secs),
            "within_2s_target": within_target,
            "ticks": ticks.len(),
            "full_tick_4096_ms": {
                "n": full.len(),
                "mean": round3(mean(&full) * 1000.0),
                "min": round3(min(&full) * 1000.0),
                "max": round3(max(&full) * 1000.0),
            },
            "group_commits": batches,
            "mean_batch": round3(committed as f64 / batches.max(1) as f64),
            "writer_write_batch_secs": round3(writer_commit_secs),
            "writer_write_batch_count": writer_commits,
            "writer_write_batch_mean_ms": round3(writer_commit_secs / writer_commits.max(1.0) * 1000.0),
            "writer_write_batch_over_secs": writer_commits_over.iter().map(|(le, n)| json!({"over": le, "count": n})).collect::<Vec<_>>(),
            "thread_cpu_secs": cpu,
            "baseline_clean": baseline_clean,
        }),
    );

    let mut read_rows = Vec::new();
    for (p, name) in PHASES.iter().enumerate() {
        let phase_samples: Vec<&Sample> = samples.iter().filter(|s| s.phase == p as u8).collect();
        let service_ns = phase_samples.iter().map(|s| s.service_ns).collect();
        let response_ns = phase_samples.iter().map(|s| s.response_ns).collect();
        let busy = phase_samples.iter().filter(|s| s.busy).count();
        let v = json!({
            "reads": phase_samples.len(),
            "busy_answers": busy,
            "service": percentiles(service_ns),
            "response": percentiles(response_ns),
        });
        report.line(&format!("reads_{name}"), v.clone());
        read_rows.push((name, v));
    }

    // Where the time goes: the parts of one transition, timed alone.
    drop(service);
    store.close();
    let mean_batch = (committed as f64 / batches.max(1) as f64).round() as usize;
    let micro = micro(&ids, n, due, expiration, &timing, &dir, mean_batch)?;
    report.line("micro", micro.clone());

    let ms = |v: &Value| v.as_f64().unwrap_or(0.0);
    report.row("sessions expiring at the same instant T", n.to_string());
    report.row(
        "load (commit) rate",
        format!(
            "{:.0} commits/s ({:.1} s, {} group commits)",
            n as f64 / loaded.secs,
            loaded.secs,
            loaded.batches
        ),
    );
    report.row(
        "**storm: all transitions applied in**",
        format!(
            "**{storm_secs:.2} s** ({:.0}/s); target ≤ 2 s: {}",
            committed as f64 / storm_secs,
            if within_target { "met" } else { "**missed**" }
        ),
    );
    report.row(
        "sweeper ticks / full 4096-key tick mean (min–max)",
        format!(
            "{} / {:.0} ms ({:.0}–{:.0} ms)",
            ticks.len(),
            mean(&full) * 1000.0,
            min(&full) * 1000.0,
            max(&full) * 1000.0
        ),
    );
    report.row(
        "group commits during the storm / mean batch",
        format!("{batches} / {:.0}", committed as f64 / batches.max(1) as f64),
    );
    report.row(
        "writer: time in write_batch (log append + fdatasync; checkpoints when due)",
        format!(
            "{writer_commit_secs:.2} s of {storm_secs:.2} s ({:.2} ms per group commit); longer than 20 ms / 100 ms / 250 ms / 1 s: {}",
            writer_commit_secs / writer_commits.max(1.0) * 1000.0,
            writer_commits_over
                .iter()
                .map(|(_, n)| format!("{n:.0}"))
                .collect::<Vec<_>>()
                .join(" / ")
        ),
    );
    report.row("thread CPU during the storm (s)", cpu.to_string());
    for (name, v) in &read_rows {
        report.row(
            format!("reads {name}: n / service p50, p99, max (µs)"),
            format!(
                "{} / {:.1}, {:.1}, {:.0}",
                v["reads"],
                ms(&v["service"]["p50_us"]),
                ms(&v["service"]["p99_us"]),
                ms(&v["service"]["max_us"])
            ),
        );
        report.row(
            format!("reads {name}: response from due tick p50, p99, max (µs)"),
            format!(
                "{:.1}, {:.1}, {:.0}",
                ms(&v["response"]["p50_us"]),
                ms(&v["response"]["p99_us"]),
                ms(&v["response"]["max_us"])
            ),
        );
    }
    report.row("read errors", read_errors.to_string());
    if !baseline_clean {
        report.row(
            "note",
            "T came before the baseline phase ended: part of 'before' read post-T state",
        );
    }
    let m = |k: &str| ms(&micro[k]);
    report.row(
        "micro: core clone + advance, per user (µs)",
        format!("{:.2}", m("core_advance_us")),
    );
    report.row(
        "micro: JSON encode state + outbox event, per user (µs)",
        format!(
            "{:.2} ({} + {} bytes)",
            m("json_encode_us"),
            micro["state_json_bytes"],
            micro["outbox_json_bytes"]
        ),
    );
    for (k, label) in [
        (
            "redb_ordered_512_nosync_ms",
            "micro: redb txn, 512 key-adjacent users + outbox, no fsync (ms)",
        ),
        (
            "redb_ordered_512_fsync_ms",
            "micro: redb txn, 512 key-adjacent users + outbox, fsync (ms)",
        ),
        (
            "redb_random_512_nosync_ms",
            "micro: redb txn, 512 random users + outbox, no fsync (ms)",
        ),
        (
            "redb_random_512_fsync_ms",
            "micro: redb txn, 512 random users + outbox, fsync (ms)",
        ),
        (
            "redb_ordered_4096_nosync_ms",
            "micro: redb txn, 4096 key-adjacent users + outbox, no fsync (ms)",
        ),
        (
            "redb_ordered_4096_fsync_ms",
            "micro: redb txn, 4096 key-adjacent users + outbox, fsync (ms)",
        ),
        ("redb_1_fsync_ms", "micro: redb txn of 1 user, fsync (ms)"),
        (
            "redb_checkpoint_ms",
            "micro: checkpoint-sized redb txn, 32768 key-adjacent users + outbox, fsync (ms)",
        ),
        ("wal_append_fdatasync_4k_ms", "micro: append 4 KiB + fdatasync (ms)"),
        (
            "wal_append_fdatasync_batch_ms",
            "micro: append one WAL frame of a mean storm batch + fdatasync (ms)",
        ),
    ] {
        report.row(label, format!("{:.2}", m(k)));
    }
    report.row(
        "load average at start",
        machine()["loadavg"].as_str().unwrap_or("").to_owned(),
    );
    report.table();
    Ok(())
}

/// The parts of one expiry, each timed alone: the core step, the JSON encoding, and redb
/// transactions of the storm's batch sizes on the storm's own file (closed by the store).
fn micro(
    ids: &Ids,
    n: u64,
    due: Timestamp,
    expiration: SignedDuration,
    timing: &Timing,
    dir: &DataDir,
    frame_records: usize,
) -> Result<Value> {
    let sample: u64 = 100_000.min(n);
    let built_at = due - expiration;
    let states: Vec<(UserKey, UserPresence)> = (0..sample)
        .map(|i| (ids.key(i), busy(built_at, expiration, timing).0))
        .collect();
    let after = due + SignedDuration::from_secs(1);
    let started = Instant::now();
    let mut advanced = Vec::with_capacity(states.len());
    for (key, state) in &states {
        let mut next = state.clone();
        let event = next.advance(after);
        advanced.push((key, next, event));
    }
    let core_us = started.elapsed().as_secs_f64() * 1e6 / sample as f64;
    let started = Instant::now();
    let mut bytes = (0, 0);
    for (key, state, event) in &advanced {
        let a = serde_json::to_vec(state)?;
        let b = serde_json::to_vec(&(key, event))?;
        bytes = (a.len(), b.len());
        black_box((a, b));
    }
    let json_us = started.elapsed().as_secs_f64() * 1e6 / sample as f64;
    let (_, state, event) = &advanced[0];
    let state_json = serde_json::to_vec(state)?;
    let outbox_json = serde_json::to_vec(&(advanced[0].0, event))?;
    drop(advanced);
    drop(states);

    let db = redb::Database::create(dir.path.join(FILE_NAME))?;
    let mut next_id = {
        let read = db.begin_read()?;
        let outbox = read.open_table(OUTBOX)?;
        let last = outbox.last()?.map_or(0, |(k, _)| k.value());
        last + 1
    };
    let mut rng = 0xb0b_u64;
    // `ordered`: `size` users adjacent in key order, as the storm commits them (the sweeper takes
    // due keys in (deadline, key) order); otherwise users at random, as independent writes are.
    let mut txn_ms = |size: usize, durable: bool, reps: usize, ordered: bool| -> Result<f64> {
        let mut total = 0.0;
        for _ in 0..reps {
            rng = splitmix(rng);
            let keys: Vec<String> = if ordered {
                let from = ids.key(rng % n).storage_key();
                let read = db.begin_read()?;
                let users = read.open_table(USERS)?;
                let mut keys = Vec::with_capacity(size);
                for row in users.range(from.as_str()..)?.take(size) {
                    keys.push(row?.0.value().to_owned());
                }
                keys
            } else {
                (0..size)
                    .map(|_| {
                        rng = splitmix(rng);
                        ids.key(rng % n).storage_key()
                    })
                    .collect()
            };
            let started = Instant::now();
            let mut txn = db.begin_write()?;
            if !durable {
                txn.set_durability(redb::Durability::None)?;
            }
            {
                let mut users = txn.open_table(USERS)?;
                let mut outbox = txn.open_table(OUTBOX)?;
                for key in &keys {
                    users.insert(key.as_str(), state_json.as_slice())?;
                    outbox.insert(next_id, outbox_json.as_slice())?;
                    next_id += 1;
                }
            }
            txn.commit()?;
            total += started.elapsed().as_secs_f64();
        }
        Ok(total / reps as f64 * 1000.0)
    };
    txn_ms(512, false, 3, false)?; // warm redb's cache after the reopen
    let ordered_512_nosync = txn_ms(512, false, 10, true)?;
    let random_512_nosync = txn_ms(512, false, 10, false)?;
    let ordered_4096_nosync = txn_ms(4096, false, 5, true)?;
    txn_ms(1, true, 1, false)?; // flush the non-durable ones before timing durable commits
    let ordered_512_fsync = txn_ms(512, true, 10, true)?;
    let random_512_fsync = txn_ms(512, true, 10, false)?;
    let ordered_4096_fsync = txn_ms(4096, true, 5, true)?;
    let one_fsync = txn_ms(1, true, 20, false)?;
    // A checkpoint: the store writes everything logged in the last 2 s as one durable redb
    // transaction (here ~2 s of the storm's rate, key-adjacent).
    let checkpoint_records = 32_768;
    let checkpoint_ms = txn_ms(checkpoint_records, true, 1, true)?;
    drop(db);

    // The durable path: one write-ahead-log frame per group commit, appended and fdatasync'd.
    // Per user a frame holds tag, lengths, storage key, state JSON, outbox id and event JSON.
    let record_frame_bytes = 1 + 4 + 73 + 4 + bytes.0 + 1 + 8 + 4 + bytes.1;
    let append_ms = |frame_bytes: usize, reps: usize| -> Result<f64> {
        use std::io::Write;
        let path = dir.path.join("append-probe");
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&path)?;
        let frame = vec![0x5au8; frame_bytes];
        let started = Instant::now();
        for _ in 0..reps {
            f.write_all(&frame)?;
            f.sync_data()?;
        }
        let ms = started.elapsed().as_secs_f64() * 1000.0 / reps as f64;
        drop(f);
        std::fs::remove_file(&path)?;
        Ok(ms)
    };
    let append_4k = append_ms(4096, 20)?;
    let frame_records = frame_records.max(1);
    let append_batch = append_ms(frame_records * record_frame_bytes, 20)?;
    Ok(json!({
        "sample_users": sample,
        "core_advance_us": round3(core_us),
        "json_encode_us": round3(json_us),
        "state_json_bytes": bytes.0,
        "outbox_json_bytes": bytes.1,
        "wal_record_bytes": record_frame_bytes,
        "wal_append_fdatasync_4k_ms": round3(append_4k),
        "wal_append_fdatasync_batch_records": frame_records,
        "wal_append_fdatasync_batch_ms": round3(append_batch),
        "redb_ordered_512_nosync_ms": round3(ordered_512_nosync),
        "redb_ordered_512_fsync_ms": round3(ordered_512_fsync),
        "redb_random_512_nosync_ms": round3(random_512_nosync),
        "redb_random_512_fsync_ms": round3(random_512_fsync),
        "redb_ordered_4096_nosync_ms": round3(ordered_4096_nosync),
        "redb_ordered_4096_fsync_ms": round3(ordered_4096_fsync),
        "redb_1_fsync_ms": round3(one_fsync),
        "redb_checkpoint_records": checkpoint_records,
        "redb_checkpoint_ms": round3(checkpoint_ms),
        "file": path_str(&dir.path.join(FILE_NAME)),
    }))
}

fn path_str(p: &Path) -> String {
    p.display().to_string()
}
