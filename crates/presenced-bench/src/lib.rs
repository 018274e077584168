//! What the measuring programs share: starting `presenced serve` on a loopback port with a fresh
//! data directory and minting tokens with `presenced token`.
use anyhow::{ensure, Context};
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

/// The nearest-rank `p` quantile of sorted values (NaN when empty).
pub fn percentile<T: Copy + Into<f64>>(sorted: &[T], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((sorted.len() as f64) * p).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1].into()
}
