//! What the measuring programs share: starting `presenced serve` on a loopback port with a fresh
//! data directory, minting tokens as `presenced token` does, and reading a process's memory and
//! CPU time from `/proc`.
use anyhow::{ensure, Context};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// A `presenced serve` process, killed and its data directory removed on drop.
pub struct Server {
    child: Child,
    pub dir: PathBuf,
    /// `http://127.0.0.1:PORT`, as the server printed it.
    pub base: String,
}

impl Server {
    /// Start `bin serve` on `127.0.0.1:0` with `dir` as its data directory (created if need be),
    /// logging at `warn`, with `extra` flags after those; returns once it listens.
    pub fn start(bin: &Path, dir: PathBuf, extra: &[&str]) -> anyhow::Result<Server> {
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        let mut child = Command::new(bin)
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(&dir)
            .args(["--log-level", "warn"])
            .args(extra)
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("start {}", bin.display()))?;
        let stdout = child.stdout.take().context("presenced stdout")?;
        let mut server = Server {
            child,
            dir,
            base: String::new(),
        };
        let mut lines = BufReader::new(stdout).lines();
        let line = lines.next().context("presenced exited before listening")??;
        server.base = line
            .strip_prefix("listening on ")
            .with_context(|| format!("unexpected first line from presenced: {line}"))?
            .trim()
            .to_owned();
        // Keep draining stdout so the server can never block on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        Ok(server)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A token from `bin token --data-dir dir --tenant tenant --ttl 4h` plus `extra` flags (an
/// application token with `Presence.ReadWrite.All` when `extra` names no user, scope or role).
pub fn token(bin: &Path, dir: &Path, tenant: &str, extra: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(bin)
        .args(["token", "--data-dir"])
        .arg(dir)
        .args(["--tenant", tenant, "--ttl", "4h"])
        .args(extra)
        .output()
        .context("presenced token")?;
    ensure!(
        out.status.success(),
        "presenced token: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?.trim().to_owned())
}

/// Tokens signed in this process with the data directory's secret, by the function
/// `presenced token` calls: for when thousands are needed (one process per token takes seconds).
pub struct Minter {
    secret: Vec<u8>,
    tenant: String,
}

impl Minter {
    /// The server must have started on `dir` first (it creates the secret).
    pub fn new(dir: &Path, tenant: &str) -> anyhow::Result<Minter> {
        Ok(Minter {
            secret: presenced::auth::load_or_create_secret(dir)?,
            tenant: tenant.to_owned(),
        })
    }

    /// A delegated token for `user` with `Presence.Read.All Presence.ReadWrite` (what
    /// `presenced token --user` gives), valid for 4 hours.
    pub fn user(&self, user: &str, app: &str) -> anyhow::Result<String> {
        let request = presenced::auth::MintRequest {
            tenant: self.tenant.clone(),
            user: Some(user.to_owned()),
            app: Some(app.to_owned()),
            scopes: vec!["Presence.Read.All".to_owned(), "Presence.ReadWrite".to_owned()],
            roles: vec![],
            ttl_seconds: 4 * 3600,
            issuer: presenced::auth::DEFAULT_ISSUER.to_owned(),
            audience: presenced::auth::DEFAULT_AUDIENCE.to_owned(),
            now_unix: presenced::clock::SystemClock.unix_seconds(),
        };
        Ok(presenced::auth::mint_hs256(&self.secret, &request)?)
    }
}

/// A field of `/proc/PID/status` in bytes (`VmRSS`, `VmHWM`, …).
pub fn proc_status_bytes(pid: u32, field: &str) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .with_context(|| format!("no {field} in {path}"))?;
    Ok(kib * 1024)
}

/// User + system CPU seconds a process has used (`/proc/PID/stat` fields 14 and 15, in the
/// kernel's USER_HZ = 100 ticks per second). `pid` 0 reads this process.
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let path = if pid == 0 {
        "/proc/self/stat".to_owned()
    } else {
        format!("/proc/{pid}/stat")
    };
    let stat = std::fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
    // The command name (field 2) may hold spaces; the fields after it follow its closing ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).context("odd stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> anyhow::Result<f64> { Ok(fields.get(i).context("short stat")?.parse::<f64>()?) };
    // After ')': field 3 (state) is index 0, so utime (14) is 11 and stime (15) is 12.
    Ok((ticks(11)? + ticks(12)?) / 100.0)
}

/// A Prometheus histogram read from a `/metrics` text: cumulative counts by upper bound, sum, count.
#[derive(Debug, Default, Clone)]
pub struct Histogram {
    /// Keyed by the bound's bits: positive floats order like their bit patterns.
    pub buckets: BTreeMap<u64, (f64, u64)>,
    pub sum: f64,
    pub count: u64,
}

/// `name{a="x",b="y"} value` -> (name, labels, value); `None` for comments and odd lines.
fn sample(line: &str) -> Option<(&str, BTreeMap<&str, &str>, &str)> {
    if line.starts_with('#') {
        return None;
    }
    let (head, value) = line.rsplit_once(' ')?;
    let (name, labels) = match head.split_once('{') {
        Some((name, rest)) => (name, rest.strip_suffix('}')?),
        None => (head, ""),
    };
    let labels = labels
        .split(',')
        .filter(|l| !l.is_empty())
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k, v.trim_matches('"')))
        .collect();
    Some((name, labels, value))
}

impl Histogram {
    /// The histogram `name` (its `_bucket`, `_sum` and `_count` series), only the series with
    /// the label `label` if one is given.
    pub fn parse(metrics: &str, name: &str, label: Option<(&str, &str)>) -> Histogram {
        let mut h = Histogram::default();
        for (series, labels, value) in metrics.lines().filter_map(sample) {
            if label.is_some_and(|(k, v)| labels.get(k) != Some(&v)) {
                continue;
            }
            match series.strip_prefix(name) {
                Some("_bucket") => {
                    let le = match labels.get("le") {
                        Some(&"+Inf") => f64::INFINITY,
                        Some(le) => le.parse().unwrap_or(f64::NAN),
                        None => continue,
                    };
                    h.buckets.insert(le.to_bits(), (le, value.parse().unwrap_or(0)));
                }
                Some("_sum") => h.sum = value.parse().unwrap_or(0.0),
                Some("_count") => h.count = value.parse().unwrap_or(0),
                _ => {}
            }
        }
        h
    }

    /// What was observed between `before` and this reading.
    pub fn minus(&self, before: &Histogram) -> Histogram {
        let buckets = self
            .buckets
            .iter()
            .map(|(k, (le, n))| {
                let was = before.buckets.get(k).map_or(0, |b| b.1);
                (*k, (*le, n.saturating_sub(was)))
            })
            .collect();
        Histogram {
            buckets,
            sum: self.sum - before.sum,
            count: self.count.saturating_sub(before.count),
        }
    }

    /// The bucket holding the `p` quantile as (lower bound, upper bound].
    pub fn quantile_bounds(&self, p: f64) -> Option<(f64, f64)> {
        let rank = ((self.count as f64) * p).ceil().max(1.0) as u64;
        let mut lower = 0.0;
        for (le, cumulative) in self.buckets.values() {
            if *cumulative >= rank {
                return Some((lower, *le));
            }
            lower = *le;
        }
        None
    }

    /// Observations above `bound` (a bucket bound).
    pub fn above(&self, bound: f64) -> u64 {
        let at_or_below = self
            .buckets
            .values()
            .filter(|(le, _)| *le <= bound)
            .map(|(_, n)| *n)
            .max()
            .unwrap_or(0);
        self.count.saturating_sub(at_or_below)
    }
}

/// Per thread name (`comm`, truncated to 15 bytes by the kernel): seconds on a CPU and seconds
/// runnable but waiting for one, summed over the process's threads of that name, from
/// `/proc/PID/task/*/schedstat`. The waiting time is what other work on the machine costs it.
pub fn thread_times(pid: u32) -> anyhow::Result<BTreeMap<String, (f64, f64)>> {
    let mut out: BTreeMap<String, (f64, f64)> = BTreeMap::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let path = task?.path();
        let (Ok(comm), Ok(stat)) = (
            std::fs::read_to_string(path.join("comm")),
            std::fs::read_to_string(path.join("schedstat")),
        ) else {
            continue; // the thread has exited meanwhile
        };
        let mut fields = stat.split_whitespace().map(|f| f.parse::<f64>().unwrap_or(0.0) / 1e9);
        let (run, wait) = (fields.next().unwrap_or(0.0), fields.next().unwrap_or(0.0));
        let entry = out.entry(comm.trim().to_owned()).or_default();
        entry.0 += run;
        entry.1 += wait;
    }
    Ok(out)
}

/// The nearest-rank `p` quantile of sorted values (NaN when empty).
pub fn percentile<T: Copy + Into<f64>>(sorted: &[T], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((sorted.len() as f64) * p).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1].into()
}

/// The CPU's model name, from `/proc/cpuinfo` (empty where it says none).
pub fn cpu_model() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")?
                .split_once(':')
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_default()
}

/// The machine line every result carries: CPUs, model and load average.
pub fn machine() -> serde_json::Value {
    let model = cpu_model();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    serde_json::json!({
        "nproc": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "cpu": model,
        "loadavg": load.split_whitespace().take(3).collect::<Vec<_>>().join(" "),
    })
}
