//! Test harness: runs the compiled `presenced` binary on port 0 with a temporary data dir and
//! talks to it over loopback, exactly as a user would.
#![allow(dead_code)]

pub mod receiver;
pub mod relay;
pub mod sse;

use reqwest::{Client, Method, Response, StatusCode};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub const BIN: &str = env!("CARGO_BIN_EXE_presenced");
pub const TENANT: &str = "11111111-1111-1111-1111-111111111111";

pub struct Server {
    child: Child,
    pub base: String,
    pub data_dir: PathBuf,
    // Keeps the temporary directory alive for as long as the server (and its restarts) need it.
    _temp: Option<tempfile::TempDir>,
    extra_args: Vec<String>,
    stderr_log: PathBuf,
}

impl Server {
    pub fn start(extra_args: &[&str]) -> Server {
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path().join("data");
        let mut server = Server::start_in(&dir, extra_args);
        server._temp = Some(temp);
        server
    }

    pub fn start_in(data_dir: &Path, extra_args: &[&str]) -> Server {
        let extra_args: Vec<String> = extra_args.iter().map(|s| s.to_string()).collect();
        // Outside the data dir's file system, so a test that fills that disk still gets its log.
        static SERVERS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = SERVERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let stderr_log = std::env::temp_dir().join(format!("presenced-test-{}-{n}.log", std::process::id()));
        let (child, base) = spawn(data_dir, &extra_args, &stderr_log).unwrap_or_else(|e| panic!("{e}"));
        Server {
            child,
            base,
            data_dir: data_dir.to_owned(),
            _temp: None,
            extra_args,
            stderr_log,
        }
    }

    /// SIGKILL, then start again on the same data dir (a new port).
    pub fn crash_and_restart(&mut self) {
        self.kill();
        let (child, base) = spawn(&self.data_dir, &self.extra_args, &self.stderr_log).unwrap_or_else(|e| panic!("{e}"));
        self.child = child;
        self.base = base;
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait for the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        wait_timeout(&mut self.child, Duration::from_secs(20)).expect("server did not exit after SIGTERM")
    }

    /// The exit status if the server stops by itself within a few seconds, else after SIGTERM.
    pub fn terminate_or_exit(&mut self) -> ExitStatus {
        if let Some(status) = wait_timeout(&mut self.child, Duration::from_secs(5)) {
            return status;
        }
        self.terminate()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// A delegated token for `user` with the given scopes.
    pub fn user_token(&self, user: &str, scopes: &[&str]) -> String {
        self.token_for(TENANT, Some(user), scopes, &[])
    }

    /// An application token with the given roles.
    pub fn app_token(&self, roles: &[&str]) -> String {
        self.token_for(TENANT, None, &[], roles)
    }

    pub fn token_for(&self, tenant: &str, user: Option<&str>, scopes: &[&str], roles: &[&str]) -> String {
        mint(("--data-dir", &self.data_dir), tenant, user, scopes, roles)
    }

    /// An application token for `tenant` that expires `ttl` from now (e.g. "3s").
    pub fn app_token_in(&self, tenant: &str, roles: &[&str], ttl: &str) -> String {
        let mut cmd = Command::new(BIN);
        cmd.args(["token", "--data-dir"])
            .arg(&self.data_dir)
            .args(["--tenant", tenant, "--app", "test-app", "--ttl", ttl]);
        for r in roles {
            cmd.args(["--role", r]);
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_log).unwrap_or_default()
    }

    /// The server's process id (to send it signals).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

fn spawn(data_dir: &Path, extra_args: &[String], stderr_log: &Path) -> Result<(Child, String), String> {
    let stderr = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(stderr_log)
        .map_err(|e| e.to_string())?;
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .args(extra_args)
        .env("PRESENCED_LOG_LEVEL", "warn")
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .map_err(|e| format!("cannot start {BIN}: {e}"))?;
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("listening on ").nth(1) {
                let _ = tx.send(rest.trim().to_owned());
            }
        }
    });
    match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(base) => Ok((child, base)),
        Err(_) => {
            let _ = child.kill();
            let log = std::fs::read_to_string(stderr_log).unwrap_or_default();
            Err(format!(
                "server did not print its listening line within 30 s; stderr:\n{log}"
            ))
        }
    }
}

/// Start a server expected to fail; returns (exit status, stderr).
/// A token from `presenced token` for application `test-app`, signed with the secret `source`
/// names: `("--data-dir", dir)` or `("--jwt-secret-file", file)`.
pub fn mint(source: (&str, &Path), tenant: &str, user: Option<&str>, scopes: &[&str], roles: &[&str]) -> String {
    let mut cmd = Command::new(BIN);
    cmd.args(["token", source.0])
        .arg(source.1)
        .args(["--tenant", tenant, "--app", "test-app"]);
    if let Some(u) = user {
        cmd.args(["--user", u]);
    }
    for s in scopes {
        cmd.args(["--scope", s]);
    }
    for r in roles {
        cmd.args(["--role", r]);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "token failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

pub fn start_expecting_failure(data_dir: &Path) -> (ExitStatus, String) {
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_timeout(&mut child, Duration::from_secs(30)).expect("server should have refused to start");
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    (status, err)
}

pub fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    None
}

/// A client for long-lived streams: each read must come within 30 s, but the whole stream may
/// last longer (`client()`'s 30 s covers a whole response, and a stream test on a loaded machine
/// ran past it).
pub fn stream_client() -> Client {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    Client::builder()
        .connect_timeout(Duration::from_secs(30))
        .read_timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

pub fn client() -> Client {
    // reqwest's rustls backend (enabled for the server's webhooks) needs a process-wide provider.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    Client::builder().timeout(Duration::from_secs(30)).build().unwrap()
}

/// A response read whole, for assertions.
pub struct Reply {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub text: String,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.text))
    }

    /// Asserts a Graph error body with this status and code.
    pub fn assert_error(&self, status: u16, code: &str) {
        assert_eq!(self.status.as_u16(), status, "body: {}", self.text);
        let body = self.json();
        assert_eq!(body["error"]["code"], code, "body: {}", self.text);
        assert!(
            body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()),
            "message: {}",
            self.text
        );
        assert!(
            body["error"]["innerError"]["request-id"].is_string(),
            "innerError: {}",
            self.text
        );
        assert!(
            body["error"]["innerError"]["date"].is_string(),
            "innerError: {}",
            self.text
        );
    }
}

pub async fn reply(response: Response) -> Reply {
    let status = response.status();
    let headers = response.headers().clone();
    let text = response.text().await.unwrap();
    Reply { status, headers, text }
}

pub async fn call(method: Method, url: &str, token: Option<&str>, body: Option<Value>) -> Reply {
    let mut request = client().request(method, url);
    if let Some(t) = token {
        request = request.bearer_auth(t);
    }
    if let Some(b) = body {
        request = request.json(&b);
    }
    reply(request.send().await.unwrap()).await
}

pub async fn get(url: &str, token: &str) -> Reply {
    call(Method::GET, url, Some(token), None).await
}

pub async fn post(url: &str, token: &str, body: Value) -> Reply {
    call(Method::POST, url, Some(token), Some(body)).await
}

/// GET a user's presence and return (availability, activity).
/// One sample's value from a Prometheus exposition (0 if absent).
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

pub async fn presence_of(server: &Server, token: &str, user: &str) -> (String, String) {
    let r = get(&server.url(&format!("/v1.0/users/{user}/presence")), token).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let v = r.json();
    (
        v["availability"].as_str().unwrap().to_owned(),
        v["activity"].as_str().unwrap().to_owned(),
    )
}

pub fn pair(a: &str, b: &str) -> (String, String) {
    (a.to_owned(), b.to_owned())
}

/// Send raw bytes over TCP and return everything the server answers (until it closes, or 10 s).
pub async fn raw_http(server: &Server, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = server.base.trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    // The server may answer (and close) before reading everything; a write error then is fine.
    let _ = stream.write_all(request).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}
