//! `presenced cert`: a certificate for trying HTTPS locally.
//!
//! Writes `ca.pem` (a throwaway certificate authority to trust), `cert.pem` (a certificate for
//! localhost, 127.0.0.1 and ::1, or the given names, signed by it) and `key.pem` (its key,
//! mode 0600). The CA's own key is never written, so the CA can sign nothing else: trusting it
//! trusts this one certificate. Why a CA rather than one self-signed certificate: rustls and
//! other verifiers refuse a self-signed end-entity certificate as a trust anchor, and some
//! clients refuse a CA certificate as a server certificate; the pair works for all of them.
//! ECDSA P-256 with SHA-256.
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
};
use std::path::Path;

pub const DEFAULT_HOSTS: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

pub struct Generated {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

/// A CA and a certificate for `hosts` (names or IP addresses), valid from yesterday for `days`.
pub fn generate(hosts: &[String], days: u32) -> Result<Generated, rcgen::Error> {
    let today = jiff::tz::TimeZone::UTC
        .to_datetime(crate::clock::SystemClock.now())
        .date();
    let ymd = |d: jiff::civil::Date| rcgen::date_time_ymd(d.year().into(), d.month() as u8, d.day() as u8);
    let not_before = ymd(today.yesterday().unwrap_or(today));
    let not_after = ymd(today.saturating_add(jiff::Span::new().days(i64::from(days))));

    let ca_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let mut ca_name = DistinguishedName::new();
    ca_name.push(DnType::OrganizationName, "presenced");
    ca_name.push(
        DnType::CommonName,
        format!("presenced local CA {}", &hex(&ca_key.public_key_raw()[1..9])),
    );
    ca.distinguished_name = ca_name;
    (ca.not_before, ca.not_after) = (not_before, not_after);
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);

    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut leaf = CertificateParams::new(hosts.to_vec())?;
    leaf.is_ca = IsCa::ExplicitNoCa;
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, hosts.first().map_or("localhost", String::as_str));
    leaf.distinguished_name = name;
    leaf.use_authority_key_identifier_extension = true;
    (leaf.not_before, leaf.not_after) = (not_before, not_after);
    let cert = leaf.signed_by(&key, &issuer)?;
    Ok(Generated {
        ca_pem: pem("CERTIFICATE", ca_cert.der()),
        cert_pem: pem("CERTIFICATE", cert.der()),
        key_pem: pem("PRIVATE KEY", &key.serialize_der()),
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn pem(label: &str, der: &[u8]) -> String {
    let text = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in text.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Write `ca.pem`, `cert.pem` and `key.pem` into `dir` (created if missing); existing files
/// are kept unless `force`.
pub fn write(dir: &Path, generated: &Generated, force: bool) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::create_dir_all(dir)?;
    let files = [
        ("ca.pem", &generated.ca_pem, 0o644),
        ("cert.pem", &generated.cert_pem, 0o644),
        ("key.pem", &generated.key_pem, 0o600),
    ];
    if !force {
        if let Some((name, ..)) = files.iter().find(|(name, ..)| dir.join(name).exists()) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!("{} exists (--force replaces it)", dir.join(name).display()),
            ));
        }
    }
    for (name, text, mode) in files {
        let path = dir.join(name);
        // Written beside and renamed, so a server watching the files never reads half of one.
        let tmp = dir.join(format!(".{name}.tmp"));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;

    #[test]
    fn the_certificate_verifies_against_the_ca_for_each_host() {
        let hosts: Vec<String> = DEFAULT_HOSTS.iter().map(|h| h.to_string()).collect();
        let g = generate(&hosts, 30).unwrap();
        let ca = CertificateDer::from_pem_slice(g.ca_pem.as_bytes()).unwrap();
        let cert = CertificateDer::from_pem_slice(g.cert_pem.as_bytes()).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca).unwrap();
        let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(roots.into(), provider)
            .build()
            .unwrap();
        use rustls::client::danger::ServerCertVerifier;
        let now = rustls::pki_types::UnixTime::since_unix_epoch(std::time::Duration::from_secs(
            crate::clock::SystemClock.unix_seconds() as u64,
        ));
        for host in ["localhost", "127.0.0.1", "::1"] {
            let name = rustls::pki_types::ServerName::try_from(host).unwrap();
            verifier
                .verify_server_cert(&cert, &[], &name, &[], now)
                .unwrap_or_else(|e| panic!("{host}: {e}"));
        }
        let other = rustls::pki_types::ServerName::try_from("example.com").unwrap();
        assert!(verifier.verify_server_cert(&cert, &[], &other, &[], now).is_err());
    }

    #[test]
    fn files_are_written_once_unless_forced() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let g = generate(&["localhost".to_owned()], 1).unwrap();
        write(dir.path(), &g, false).unwrap();
        let mode = std::fs::metadata(dir.path().join("key.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(write(dir.path(), &g, false).is_err());
        write(dir.path(), &g, true).unwrap();
    }
}
