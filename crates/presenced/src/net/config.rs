//! The network settings of `serve`: connection limits and timeouts, the descriptor limit, TLS,
//! the public URL and the metrics address. Flags are flattened into `serve`'s; the file keys are
//! `public_url`, `metrics_listen` and the `[connections]` and `[tls]` tables. Precedence as for
//! every setting: flag, environment, file, default.
use crate::config::ConfigError;
use clap::Args;
use presence_core::duration::parse_config_duration;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Defaults, chosen for a public deployment (docs/decisions.md, "Connections").
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(75);
pub const DEFAULT_BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Args, Default)]
pub struct NetArgs {
    /// Most connections held at once (fewer if the descriptor limit is lower); when full, an
    /// address holding fewer than the busiest one takes one of that address's connections. [default: 10000]
    #[arg(long, env = "PRESENCED_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// A new connection, or a request after an idle one, must send its whole request head within this. [default: 10s]
    #[arg(long, env = "PRESENCED_HEADER_READ_TIMEOUT")]
    pub header_read_timeout: Option<String>,
    /// Close a keep-alive connection after this long without a request. [default: 75s]
    #[arg(long, env = "PRESENCED_IDLE_TIMEOUT")]
    pub idle_timeout: Option<String>,
    /// A request body must arrive whole within this (then 408). [default: 30s]
    #[arg(long, env = "PRESENCED_BODY_READ_TIMEOUT")]
    pub body_read_timeout: Option<String>,
    /// The soft open-files limit (RLIMIT_NOFILE) to run with: `max` raises it to the hard limit. [default: max]
    #[arg(long, env = "PRESENCED_OPEN_FILES")]
    pub open_files: Option<String>,
    /// On SIGTERM, wait this long for in-flight requests, then close what is left. [default: 30s]
    #[arg(long, env = "PRESENCED_SHUTDOWN_TIMEOUT")]
    pub shutdown_timeout: Option<String>,
    /// Serve HTTPS with this PEM certificate chain (with --tls-key); reloaded on SIGHUP and when the files change.
    #[arg(long, env = "PRESENCED_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, env = "PRESENCED_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// The URL clients reach this server at (behind a proxy), e.g. https://presence.example.com;
    /// used in @odata.context and links. [default: the scheme and Host of each request]
    #[arg(long, env = "PRESENCED_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Serve /metrics on this address only (plain HTTP), e.g. 127.0.0.1:9100. [default: on --listen]
    #[arg(long, env = "PRESENCED_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,
}

/// `presenced cert`.
#[derive(Debug, Args)]
pub struct CertArgs {
    /// Directory to write ca.pem, cert.pem and key.pem into (created if missing).
    #[arg(long)]
    pub out: PathBuf,
    /// Host name or IP address the certificate is for (repeatable). [default: localhost 127.0.0.1 ::1]
    #[arg(long = "host")]
    pub hosts: Vec<String>,
    /// Days the certificate is valid.
    #[arg(long, default_value_t = 365)]
    pub days: u32,
    /// Replace existing files.
    #[arg(long)]
    pub force: bool,
}

/// `[connections]` in the file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConnections {
    pub max: Option<usize>,
    pub header_read_timeout: Option<String>,
    pub idle_timeout: Option<String>,
    pub body_read_timeout: Option<String>,
    pub open_files: Option<String>,
    pub shutdown_timeout: Option<String>,
}

/// `[tls]` in the file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileTls {
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

/// What the file holds for the network settings (its top-level keys and tables).
pub struct FileNet {
    pub public_url: Option<String>,
    pub metrics_listen: Option<String>,
    pub connections: FileConnections,
    pub tls: FileTls,
}

/// The soft descriptor limit to run with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenFiles {
    /// Raise the soft limit to the hard one.
    Max,
    /// Set the soft limit to this (at most the hard one).
    Limit(u64),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConfig {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub body_read_timeout: Duration,
    pub open_files: OpenFiles,
    pub shutdown_timeout: Duration,
    pub tls: Option<TlsFiles>,
    /// Scheme, host and optional path prefix, without a trailing `/`.
    pub public_url: Option<String>,
    pub metrics_listen: Option<SocketAddr>,
}

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            body_read_timeout: DEFAULT_BODY_READ_TIMEOUT,
            open_files: OpenFiles::Max,
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
            tls: None,
            public_url: None,
            metrics_listen: None,
        }
    }
}

impl NetArgs {
    pub fn resolve(self, file: FileNet) -> Result<NetConfig, ConfigError> {
        let d = NetConfig::default();
        let c = file.connections;
        let max_connections = self.max_connections.or(c.max).unwrap_or(d.max_connections);
        if max_connections == 0 {
            return Err(value("max-connections", "must be at least 1"));
        }
        let open_files = match self.open_files.or(c.open_files) {
            None => d.open_files,
            Some(text) if text.eq_ignore_ascii_case("max") => OpenFiles::Max,
            Some(text) => match text.parse::<u64>() {
                Ok(n) if n >= 64 => OpenFiles::Limit(n),
                _ => {
                    return Err(value(
                        "open-files",
                        format!("{text:?} is not `max` or a number of at least 64"),
                    ))
                }
            },
        };
        let tls = match (self.tls_cert.or(file.tls.cert), self.tls_key.or(file.tls.key)) {
            (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
            (None, None) => None,
            _ => return Err(value("tls", "--tls-cert and --tls-key go together")),
        };
        let public_url = self
            .public_url
            .or(file.public_url)
            .map(|u| public_url(&u))
            .transpose()?;
        let metrics_listen = self
            .metrics_listen
            .or(file.metrics_listen)
            .map(|a| {
                a.parse().map_err(|e| {
                    value(
                        "metrics-listen",
                        format!("{a:?} is not HOST:PORT with a numeric IP ({e})"),
                    )
                })
            })
            .transpose()?;
        Ok(NetConfig {
            max_connections,
            header_read_timeout: timeout(
                "header-read-timeout",
                self.header_read_timeout.or(c.header_read_timeout),
                d.header_read_timeout,
            )?,
            idle_timeout: timeout("idle-timeout", self.idle_timeout.or(c.idle_timeout), d.idle_timeout)?,
            body_read_timeout: timeout(
                "body-read-timeout",
                self.body_read_timeout.or(c.body_read_timeout),
                d.body_read_timeout,
            )?,
            open_files,
            shutdown_timeout: timeout(
                "shutdown-timeout",
                self.shutdown_timeout.or(c.shutdown_timeout),
                d.shutdown_timeout,
            )?,
            tls,
            public_url,
            metrics_listen,
        })
    }
}

fn value(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Value {
        key,
        message: message.into(),
    }
}

fn timeout(key: &'static str, text: Option<String>, default: Duration) -> Result<Duration, ConfigError> {
    let Some(text) = text else { return Ok(default) };
    let parsed = parse_config_duration(&text).map_err(|e| value(key, format!("{text:?}: {e}")))?;
    match Duration::try_from(parsed) {
        Ok(d) if d >= Duration::from_millis(100) => Ok(d),
        _ => Err(value(key, format!("{text:?} must be at least 100 ms"))),
    }
}

/// `https://host[:port][/prefix]`: an absolute http(s) URL without userinfo, query or fragment;
/// returned without its trailing `/`.
fn public_url(text: &str) -> Result<String, ConfigError> {
    let bad = |why: &str| value("public-url", format!("{text:?} {why}"));
    let uri: axum::http::Uri = text.parse().map_err(|_| bad("is not a URL"))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return Err(bad("must start with https:// or http://"));
    }
    let Some(authority) = uri.authority() else {
        return Err(bad("has no host"));
    };
    if authority.as_str().contains('@') {
        return Err(bad("must not hold a user name or password"));
    }
    if uri.query().is_some() || text.contains('#') {
        return Err(bad("must not have a query or fragment"));
    }
    Ok(text.trim_end_matches('/').to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn none() -> FileNet {
        FileNet {
            public_url: None,
            metrics_listen: None,
            connections: FileConnections::default(),
            tls: FileTls::default(),
        }
    }

    #[test]
    fn defaults_and_overrides() {
        assert_eq!(NetArgs::default().resolve(none()).unwrap(), NetConfig::default());
        let file = FileNet {
            connections: FileConnections {
                max: Some(50),
                idle_timeout: Some("5s".into()),
                ..Default::default()
            },
            ..none()
        };
        let args = NetArgs {
            idle_timeout: Some("2s".into()),
            open_files: Some("4096".into()),
            public_url: Some("https://presence.example.com/".into()),
            metrics_listen: Some("127.0.0.1:9100".into()),
            ..Default::default()
        };
        let c = args.resolve(file).unwrap();
        assert_eq!(c.max_connections, 50);
        assert_eq!(c.idle_timeout, Duration::from_secs(2));
        assert_eq!(c.open_files, OpenFiles::Limit(4096));
        assert_eq!(c.public_url.as_deref(), Some("https://presence.example.com"));
        assert_eq!(c.metrics_listen, Some("127.0.0.1:9100".parse().unwrap()));
    }

    #[test]
    fn bad_values_are_errors() {
        let bad = [
            NetArgs {
                max_connections: Some(0),
                ..Default::default()
            },
            NetArgs {
                header_read_timeout: Some("0s".into()),
                ..Default::default()
            },
            NetArgs {
                open_files: Some("lots".into()),
                ..Default::default()
            },
            NetArgs {
                tls_cert: Some("cert.pem".into()),
                ..Default::default()
            },
            NetArgs {
                public_url: Some("ftp://x".into()),
                ..Default::default()
            },
            NetArgs {
                public_url: Some("https://u:p@x".into()),
                ..Default::default()
            },
            NetArgs {
                public_url: Some("https://x/?a=b".into()),
                ..Default::default()
            },
            NetArgs {
                metrics_listen: Some("localhost:9100".into()),
                ..Default::default()
            },
        ];
        for args in bad {
            let shown = format!("{args:?}");
            assert!(args.resolve(none()).is_err(), "{shown}");
        }
    }
}
