//! HTTPS served directly (issue 15): `presenced cert`, `--tls-cert`/`--tls-key`, reloading the
//! certificate, and absolute URLs (`@odata.context`) with the scheme and host the client used or
//! `--public-url`.
mod common;

use common::*;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const USER: &str = "aaaaaaaa-0000-0000-0000-00000000000a";

/// `presenced cert --out dir`; returns the paths of ca.pem, cert.pem and key.pem.
fn make_cert(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let out = Command::new(BIN).args(["cert", "--out"]).arg(dir).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("ca.pem") && said.contains("--tls-cert"), "{said}");
    (dir.join("ca.pem"), dir.join("cert.pem"), dir.join("key.pem"))
}

/// A client trusting only `ca` (a fresh one per call, so every request opens a new connection).
fn client_trusting(ca: &Path) -> reqwest::Client {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let ca = reqwest::Certificate::from_pem(&std::fs::read(ca).unwrap()).unwrap();
    reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(ca)
        .tls_info(true)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

fn der(pem_file: &Path) -> Vec<u8> {
    CertificateDer::from_pem_file(pem_file).unwrap().to_vec()
}

/// The certificate the server presented on this response's connection.
fn presented(response: &reqwest::Response) -> Vec<u8> {
    response
        .extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|i| i.peer_certificate())
        .expect("TLS info")
        .to_vec()
}

/// Move `from` over `to` the way deployment tools do (a rename, never a half-written file).
fn replace(from: &Path, to: &Path) {
    let tmp = to.with_extension("new");
    std::fs::copy(from, &tmp).unwrap();
    std::fs::rename(&tmp, to).unwrap();
}

#[tokio::test]
async fn https_with_a_generated_certificate_serves_graph_with_https_urls() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = make_cert(dir.path());
    let server = Server::start(&["--tls-cert", cert.to_str().unwrap(), "--tls-key", key.to_str().unwrap()]);
    assert!(server.base.starts_with("https://127.0.0.1:"), "{}", server.base);
    let port = server.base.rsplit(':').next().unwrap().to_owned();
    let client = client_trusting(&ca);
    let app = server.app_token(&["Presence.ReadWrite.All"]);
    for base in [server.base.clone(), format!("https://localhost:{port}")] {
        let r = client
            .get(format!("{base}/v1.0/users/{USER}/presence"))
            .bearer_auth(&app)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(presented(&r), der(&cert));
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(
            body["@odata.context"],
            format!("{base}/v1.0/$metadata#users('{USER}')/presence/$entity")
        );
    }
    let reader = server.user_token(USER, &["Presence.Read.All"]);
    let list: serde_json::Value = client
        .get(server.url("/v1.0/subscriptions"))
        .bearer_auth(&reader)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        list["@odata.context"],
        format!("{}/v1.0/$metadata#subscriptions", server.base)
    );
    // Not a CA the client trusts: refused by the client; plain HTTP: refused by the server.
    let other = tempfile::tempdir().unwrap();
    let (other_ca, ..) = make_cert(other.path());
    assert!(client_trusting(&other_ca)
        .get(server.url("/healthz"))
        .send()
        .await
        .is_err());
    let plain = format!("http://127.0.0.1:{port}/healthz");
    let answered = client_trusting(&ca).get(plain).send().await;
    assert!(answered.is_err(), "plain HTTP on the TLS port: {answered:?}");
    assert_eq!(
        client.get(server.url("/healthz")).send().await.unwrap().status(),
        200,
        "still serving"
    );
}

#[tokio::test]
async fn the_certificate_is_reloaded_on_sighup_and_on_file_change() {
    let serving = tempfile::tempdir().unwrap();
    let (a, b, c) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let (ca_a, cert_a, key_a) = make_cert(a.path());
    let (ca_b, cert_b, key_b) = make_cert(b.path());
    let (ca_c, cert_c, key_c) = make_cert(c.path());
    let (cert, key) = (serving.path().join("cert.pem"), serving.path().join("key.pem"));
    replace(&cert_a, &cert);
    replace(&key_a, &key);
    let mut server = Server::start(&["--tls-cert", cert.to_str().unwrap(), "--tls-key", key.to_str().unwrap()]);
    let url = server.url("/healthz");
    let r = client_trusting(&ca_a).get(&url).send().await.unwrap();
    assert_eq!(presented(&r), der(&cert_a));

    // Waits until a new connection is served with `expected`, trusting `ca`.
    async fn until_served_with(url: &str, ca: &Path, expected: &Path, within: Duration) -> Duration {
        let started = Instant::now();
        loop {
            if let Ok(r) = client_trusting(ca).get(url).send().await {
                if presented(&r) == der(expected) {
                    return started.elapsed();
                }
            }
            assert!(
                started.elapsed() < within,
                "not served with {} within {within:?}",
                expected.display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    // SIGHUP: at once (well before the file check would notice).
    replace(&cert_b, &cert);
    replace(&key_b, &key);
    let pid = server_pid(&server);
    assert!(Command::new("kill").args(["-HUP", &pid]).status().unwrap().success());
    let took = until_served_with(&url, &ca_b, &cert_b, Duration::from_secs(3)).await;
    println!("reloaded {took:?} after SIGHUP");

    // A certificate whose key is not there yet: refused, the previous pair stays.
    replace(&cert_c, &cert);
    assert!(Command::new("kill").args(["-HUP", &pid]).status().unwrap().success());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = client_trusting(&ca_b).get(&url).send().await.unwrap();
    assert_eq!(presented(&r), der(&cert_b), "a mismatched pair is not taken");

    // The key arrives; no signal: the file check picks the pair up.
    replace(&key_c, &key);
    let took = until_served_with(&url, &ca_c, &cert_c, Duration::from_secs(12)).await;
    println!("reloaded {took:?} after the files changed");
    let stderr = server.stderr();
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(server.terminate().success());
}

fn server_pid(server: &Server) -> String {
    server.pid().to_string()
}

#[tokio::test]
async fn odata_context_follows_the_host_the_client_used_or_the_public_url() {
    let server = Server::start(&[]);
    let app = server.app_token(&["Presence.ReadWrite.All"]);
    let reader = server.user_token(USER, &["Presence.Read.All"]);
    let presence = |base: &str| format!("{base}/v1.0/$metadata#users('{USER}')/presence/$entity");
    let r = get(&server.url(&format!("/v1.0/users/{USER}/presence")), &app).await;
    assert_eq!(r.json()["@odata.context"], presence(&server.base));
    // The Host the client sent, whatever the address it reached.
    let raw = |host: &str| {
        format!(
            "GET /v1.0/users/{USER}/presence HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {app}\r\nConnection: close\r\n\r\n"
        )
    };
    let text = raw_http(&server, raw("presence.test:8443").as_bytes()).await;
    assert!(text.contains(&presence("http://presence.test:8443")), "{text}");
    // A Host that is not a plain host[:port] is not echoed.
    let text = raw_http(&server, raw("a\"b/c").as_bytes()).await;
    assert!(
        text.starts_with("HTTP/1.1 200") && !text.contains("@odata.context"),
        "{text}"
    );
    let list = get(&server.url("/v1.0/subscriptions"), &reader).await.json();
    assert_eq!(
        list["@odata.context"],
        format!("{}/v1.0/$metadata#subscriptions", server.base)
    );

    // Behind a proxy: --public-url, whatever the Host.
    let proxied = Server::start(&["--public-url", "https://presence.example.com/graph/"]);
    let app = proxied.app_token(&["Presence.ReadWrite.All"]);
    let reader = proxied.user_token(USER, &["Presence.Read.All"]);
    let public = "https://presence.example.com/graph";
    let r = get(&proxied.url(&format!("/v1.0/users/{USER}/presence")), &app).await;
    assert_eq!(r.json()["@odata.context"], presence(public));
    let list = get(&proxied.url("/beta/subscriptions"), &reader).await.json();
    assert_eq!(list["@odata.context"], format!("{public}/beta/$metadata#subscriptions"));
}
