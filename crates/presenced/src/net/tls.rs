//! HTTPS: rustls with the aws-lc-rs provider (the one crypto backend in the tree), a PEM
//! certificate chain and key, reloaded without a restart.
//!
//! The pair is read again on SIGHUP and whenever either file changes (checked every
//! [`POLL_EVERY`]: size, modification time and inode, so a rename into place counts). A new
//! pair is used for connections that start after it is read; connections already open keep
//! theirs. A pair that cannot be read, or whose key does not match the certificate (say, the
//! certificate was replaced and the key not yet), is logged and the previous pair kept; the
//! next change or SIGHUP tries again.
use super::config::TlsFiles;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

pub const POLL_EVERY: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path} holds no PEM certificate")]
    NoCertificate { path: String },
    #[error("{path}: {message}")]
    Pem { path: String, message: String },
    #[error("the key in {key} does not fit the certificate in {cert}: {message}")]
    Key { cert: String, key: String, message: String },
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// When and what the files were, to notice a change.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp(Vec<Option<(u64, std::time::SystemTime, u64)>>);

fn stamp(files: &TlsFiles) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    Stamp(
        [&files.cert, &files.key]
            .iter()
            .map(|p| {
                let m = std::fs::metadata(p).ok()?;
                Some((m.len(), m.modified().ok()?, m.ino()))
            })
            .collect(),
    )
}

/// The current certificate and key, and how to read them again.
#[derive(Debug)]
pub struct Certificates {
    files: TlsFiles,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
    /// The files as last read (or last failed to read, so a bad pair is reported once).
    seen: Mutex<Stamp>,
}

impl Certificates {
    /// Read the pair; an error stops the server at start.
    pub fn load(files: &TlsFiles) -> Result<Arc<Certificates>, TlsError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let seen = stamp(files);
        let key = read_pair(files, &provider)?;
        Ok(Arc::new(Certificates {
            files: files.clone(),
            provider,
            current: RwLock::new(Arc::new(key)),
            seen: Mutex::new(seen),
        }))
    }

    /// A rustls server configuration that always uses the current pair; HTTP/1.1 only.
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<ServerConfig>, TlsError> {
        let mut config = ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    /// Read the pair again; on failure the current one stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let now = stamp(&self.files);
        *self.seen.lock().unwrap_or_else(|p| p.into_inner()) = now;
        let key = read_pair(&self.files, &self.provider)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(key);
        Ok(())
    }

    /// Whether either file changed since it was last read.
    pub fn changed(&self) -> bool {
        stamp(&self.files) != *self.seen.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn reload_logged(&self, trigger: &str) {
        match self.reload() {
            Ok(()) => tracing::info!(cert = %self.files.cert.display(), trigger, "TLS certificate reloaded"),
            Err(e) => tracing::error!(error = %e, trigger, "TLS certificate not reloaded; keeping the previous one"),
        }
    }

    /// Reload on SIGHUP and on file changes until `stop` turns true.
    pub async fn watch(
        self: Arc<Self>,
        mut hangup: tokio::signal::unix::Signal,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut poll = tokio::time::interval(POLL_EVERY);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = stop.changed() => return,
                _ = hangup.recv() => self.reload_logged("SIGHUP"),
                _ = poll.tick() => if self.changed() {
                    self.reload_logged("file change");
                },
            }
        }
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().unwrap_or_else(|p| p.into_inner()).clone())
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.display().to_string(),
        source,
    })
}

fn read_pair(files: &TlsFiles, provider: &CryptoProvider) -> Result<CertifiedKey, TlsError> {
    let shown = |p: &Path| p.display().to_string();
    let cert_pem = read(&files.cert)?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            path: shown(&files.cert),
            message: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: shown(&files.cert),
        });
    }
    let key_pem = read(&files.key)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::Pem {
        path: shown(&files.key),
        message: e.to_string(),
    })?;
    CertifiedKey::from_der(chain, key, provider).map_err(|e| TlsError::Key {
        cert: shown(&files.cert),
        key: shown(&files.key),
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_pair(dir: &Path, host: &str) -> TlsFiles {
        let generated = super::super::cert::generate(&[host.to_owned()], 30).unwrap();
        std::fs::write(dir.join("cert.pem"), &generated.cert_pem).unwrap();
        std::fs::write(dir.join("key.pem"), &generated.key_pem).unwrap();
        TlsFiles {
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
        }
    }

    fn current_der(c: &Certificates) -> Vec<u8> {
        c.current.read().unwrap().cert[0].to_vec()
    }

    #[test]
    fn a_replaced_pair_is_noticed_and_a_mismatched_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let files = write_pair(dir.path(), "one.localhost");
        let certs = Certificates::load(&files).unwrap();
        certs.server_config().unwrap();
        assert!(!certs.changed());
        let first = current_der(&certs);
        // A new certificate with the old key: refused, the old pair stays.
        let other = super::super::cert::generate(&["two.localhost".to_owned()], 30).unwrap();
        std::fs::write(&files.cert, &other.cert_pem).unwrap();
        assert!(certs.changed());
        assert!(matches!(certs.reload(), Err(TlsError::Key { .. })));
        assert_eq!(current_der(&certs), first);
        assert!(!certs.changed(), "a failed pair is reported once");
        // Its key arrives: the pair is taken.
        std::fs::write(&files.key, &other.key_pem).unwrap();
        assert!(certs.changed());
        certs.reload().unwrap();
        assert_ne!(current_der(&certs), first);
    }

    #[test]
    fn unreadable_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let files = TlsFiles {
            cert: dir.path().join("missing.pem"),
            key: dir.path().join("key.pem"),
        };
        let e = Certificates::load(&files).unwrap_err().to_string();
        assert!(e.contains("missing.pem"), "{e}");
        std::fs::write(&files.cert, "not pem").unwrap();
        std::fs::write(&files.key, "not pem").unwrap();
        assert!(matches!(
            Certificates::load(&files),
            Err(TlsError::NoCertificate { .. })
        ));
    }
}
