//! Outbound webhook HTTP: the validation handshake (spec §4.3) and notification delivery POSTs (§4.6).
//!
//! Every request goes through one [`reqwest::Client`] configured so that the endpoint policy
//! ([`EndpointPolicy`]) cannot be sidestepped:
//!
//! - DNS goes through [`GuardedResolver`], which drops every resolved address the policy forbids and fails
//!   when none remains. The addresses it returns are the ones the connector dials, so a hostname that
//!   resolves to a public address at subscription time and to `127.0.0.1` later (DNS rebinding) is still
//!   refused. IP-literal hosts bypass the resolver, so [`EndpointPolicy::check_url`] runs before every send.
//! - Redirects are never followed: a 3xx would otherwise point the request at an unchecked URL, and Graph
//!   does not follow them either. A 3xx is reported as a failure.
//! - No proxies (environment proxy variables would route around the address checks), bounded timeouts, and
//!   response bodies are read only up to [`MAX_RESPONSE_BODY`] bytes.
//! - Errors never quote response bodies or headers other than the content type: they end up in API
//!   responses, and echoing what an arbitrary URL answered would turn the handshake into a way to read it.
//!
//! TLS is rustls with the aws-lc-rs provider (already in the tree through jsonwebtoken) and the Mozilla root
//! set from webpki-roots, so behaviour does not depend on the host's certificate store.

use std::error::Error as _;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC};
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::header::{HeaderValue, CONTENT_TYPE};
use reqwest::{StatusCode, Url};

use super::endpoint::{EndpointError, EndpointPolicy};

/// Graph: the endpoint must answer the validation request "within 10 seconds".
pub const VALIDATION_TIMEOUT: Duration = Duration::from_secs(10);
/// Graph's delivery timeout for a first attempt ("2xx within 3 seconds").
pub const FIRST_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(3);
/// Graph's delivery timeout for retried notifications.
pub const RETRY_TIMEOUT: Duration = Duration::from_secs(10);
/// TCP connect (and TLS handshake) budget, below every request timeout so that an unreachable host is
/// reported as a connect failure rather than a generic timeout.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Most bytes of a response body we ever read. A validation token is a few dozen bytes; anything larger is
/// wrong, and reading it unbounded would let an endpoint make us buffer arbitrary amounts.
pub const MAX_RESPONSE_BODY: usize = 64 * 1024;

const USER_AGENT: &str = concat!("presenced/", env!("CARGO_PKG_VERSION"), " (webhook)");

/// RFC 3986 unreserved characters stay as they are; everything else in the token is percent-encoded. Spaces
/// become `%20` rather than form-style `+`, which decodes identically with both strict percent-decoders and
/// form decoders.
const TOKEN_ENCODE_SET: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// Sends validation handshakes and notification POSTs to subscribers' endpoints. Cheap to clone; clones
/// share the connection pool.
#[derive(Clone)]
pub struct WebhookClient {
    inner: Arc<Inner>,
}

struct Inner {
    /// The client for URLs on ports no port-limited allowance admits (all of them, when there
    /// are none).
    http: reqwest::Client,
    policy: Arc<EndpointPolicy>,
    tls: rustls::ClientConfig,
    /// Clients for the other ports, one per set of port-limited allowances a port admits (a few:
    /// n ranges split the ports into at most 2n + 1 classes).
    by_port_class: std::sync::Mutex<std::collections::HashMap<Vec<bool>, reqwest::Client>>,
}

impl fmt::Debug for WebhookClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookClient")
            .field("policy", &self.inner.policy)
            .finish_non_exhaustive()
    }
}

/// The webhook HTTP client could not be constructed (TLS or client setup).
#[derive(Debug, thiserror::Error)]
#[error("could not build the webhook HTTP client: {0}")]
pub struct ClientBuildError(String);

/// Why a handshake or delivery failed. [`Display`](fmt::Display) is written for the subscriber (a failed
/// handshake becomes the 400 body of the subscription request) and for operator logs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    /// The URL itself is unacceptable under the current policy (scheme, credentials, an IP literal in a
    /// forbidden range, ...). Nothing was sent.
    #[error("{0}")]
    Refused(EndpointError),
    /// The hostname resolved only to forbidden addresses. Nothing was sent.
    #[error("{0}")]
    ForbiddenResolution(EndpointError),
    #[error("could not resolve the webhook host: {0}")]
    Resolve(String),
    #[error("connecting to the webhook endpoint timed out after {}s", .0.as_secs_f32())]
    ConnectTimeout(Duration),
    #[error("could not connect to the webhook endpoint: {0}")]
    Connect(String),
    #[error("the webhook endpoint did not answer within {} ms", .0.as_millis())]
    Timeout(Duration),
    #[error("the webhook endpoint answered with a redirect (HTTP {0}); redirects are not followed, use the final URL")]
    Redirect(StatusCode),
    #[error("the webhook endpoint answered HTTP {status}; expected {expected}")]
    Status { status: StatusCode, expected: &'static str },
    /// Validation only: the 200 response was not `text/plain`. Holds the content type received, if any
    /// (sanitised and truncated).
    #[error("the validation response has content type {}; it must be text/plain", .0.as_deref().unwrap_or("(none)"))]
    ContentType(Option<String>),
    /// Validation only: the body was not the decoded token.
    #[error("{0}")]
    TokenMismatch(TokenMismatch),
    /// Any other transport failure (request could not be written, response broken off, ...).
    #[error("the webhook request failed: {0}")]
    Transport(String),
}

/// How a validation response body differed from the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenMismatch {
    Empty,
    TooLarge,
    /// The body is the token still percent-encoded; Graph fails this case explicitly ("If the client returns
    /// an encoded validation token, the validation fails").
    PercentEncoded,
    Different,
}

impl fmt::Display for TokenMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Empty => "the validation response body is empty; it must be the validationToken query parameter",
            Self::TooLarge => "the validation response body is too large; it must be just the validation token",
            Self::PercentEncoded => {
                "the validation response body is the percent-encoded token; URL-decode the validationToken query \
                 parameter and return the decoded value"
            }
            Self::Different => {
                "the validation response body is not the validation token; return the URL-decoded validationToken \
                 query parameter as text/plain"
            }
        })
    }
}

impl WebhookError {
    /// Whether a later attempt could succeed. Graph keeps retrying every failed delivery (timeouts, 5xx, and
    /// 4xx alike) for up to 4 hours, so everything is retryable except a URL the current policy refuses
    /// outright, which no amount of waiting changes. A hostname that resolves to a forbidden address is
    /// retryable: its DNS may be fixed.
    pub fn is_retryable(&self) -> bool {
        !matches!(self, Self::Refused(_))
    }

    /// The HTTP status the endpoint answered with, if it answered.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            Self::Redirect(status) | Self::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

impl WebhookClient {
    pub fn new(policy: EndpointPolicy) -> Result<Self, ClientBuildError> {
        let policy = Arc::new(policy);
        // Exactly one crypto provider, passed explicitly: nothing depends on a process-wide default being
        // installed, and ring never enters the build.
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| ClientBuildError(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        // reqwest is built without HTTP/2; advertising only http/1.1 keeps a server from choosing h2.
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];

        let http = http_client(Arc::new(policy.for_port(0)), tls.clone())?;
        Ok(Self {
            inner: Arc::new(Inner {
                http,
                policy,
                tls,
                by_port_class: Default::default(),
            }),
        })
    }

    /// The client whose resolver admits what `url`'s port may reach.
    fn http_for(&self, url: &Url) -> reqwest::Client {
        let policy = &self.inner.policy;
        let port = url.port_or_known_default().unwrap_or(443);
        let class = policy.port_class(port);
        if !class.contains(&true) {
            return self.inner.http.clone();
        }
        let mut clients = self.inner.by_port_class.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(client) = clients.get(&class) {
            return client.clone();
        }
        match http_client(Arc::new(policy.for_port(port)), self.inner.tls.clone()) {
            Ok(client) => {
                clients.insert(class, client.clone());
                client
            }
            // It was built once with the same settings; should it fail now, the base client
            // refuses what the port-limited allowances would have admitted, and nothing more.
            Err(e) => {
                tracing::error!(error = %e.0, "could not build a webhook client for a port-limited allowance");
                self.inner.http.clone()
            }
        }
    }

    pub fn policy(&self) -> &EndpointPolicy {
        &self.inner.policy
    }

    /// Graph's validation handshake: `POST {url}?validationToken={token}` (appended with `&` when the URL
    /// already has a query, which is preserved as given), `Content-Type: text/plain; charset=utf-8`, empty
    /// body, [`VALIDATION_TIMEOUT`]. Passes only on `200` with a `text/plain` content type and a body equal
    /// to the decoded token (one trailing newline tolerated).
    pub async fn validate(&self, url: &Url) -> Result<(), WebhookError> {
        self.inner
            .policy
            .check_url(url.as_str())
            .map_err(WebhookError::Refused)?;
        let token = new_validation_token();
        let target = with_validation_token(url, &token);
        let mut response = self
            .http_for(url)
            .post(target)
            .header(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"))
            .body("")
            .timeout(VALIDATION_TIMEOUT)
            .send()
            .await
            .map_err(|e| send_error(e, VALIDATION_TIMEOUT))?;

        let status = response.status();
        if status.is_redirection() {
            return Err(WebhookError::Redirect(status));
        }
        if status != StatusCode::OK {
            return Err(WebhookError::Status {
                status,
                expected: "200 OK with the validation token",
            });
        }
        let content_type = response.headers().get(CONTENT_TYPE);
        if !content_type.is_some_and(is_text_plain) {
            return Err(WebhookError::ContentType(content_type.map(sanitise_header)));
        }
        let (body, truncated) = read_bounded(&mut response, MAX_RESPONSE_BODY)
            .await
            .map_err(|e| send_error(e, VALIDATION_TIMEOUT))?;
        if truncated {
            return Err(WebhookError::TokenMismatch(TokenMismatch::TooLarge));
        }
        compare_token(&body, &token).map_err(WebhookError::TokenMismatch)
    }

    /// Deliver one JSON body (a `changeNotificationCollection`) with the given total `timeout`
    /// ([`FIRST_ATTEMPT_TIMEOUT`] for first attempts, [`RETRY_TIMEOUT`] for retries). `Ok` only on 2xx.
    pub async fn deliver(&self, url: &Url, body: &serde_json::Value, timeout: Duration) -> Result<(), WebhookError> {
        self.inner
            .policy
            .check_url(url.as_str())
            .map_err(WebhookError::Refused)?;
        let mut response = self
            .http_for(url)
            .post(url.clone())
            .json(body)
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| send_error(e, timeout))?;
        let status = response.status();
        if status.is_success() {
            // The notification counts as delivered once the status is in. Reading the (normally empty) body
            // lets the connection go back to the pool; its errors don't change the outcome.
            let _ = read_bounded(&mut response, MAX_RESPONSE_BODY).await;
            return Ok(());
        }
        if status.is_redirection() {
            return Err(WebhookError::Redirect(status));
        }
        Err(WebhookError::Status {
            status,
            expected: "a 2xx status",
        })
    }
}

/// DNS resolution that only ever hands the connector addresses the policy allows.
fn http_client(policy: Arc<EndpointPolicy>, tls: rustls::ClientConfig) -> Result<reqwest::Client, ClientBuildError> {
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .https_only(!policy.allow_http)
        .dns_resolver(Arc::new(GuardedResolver { policy }))
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .user_agent(USER_AGENT)
        .connect_timeout(CONNECT_TIMEOUT)
        // Subscribers usually receive a steady trickle; keeping a few idle connections per host saves
        // TLS handshakes without holding many sockets open.
        .pool_max_idle_per_host(4)
        .pool_idle_timeout(Duration::from_secs(60))
        .build()
        .map_err(|e| ClientBuildError(error_chain(&e)))
}

struct GuardedResolver {
    policy: Arc<EndpointPolicy>,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = Arc::clone(&self.policy);
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let resolved: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await
                .map_err(|e| ResolveError(format!("{host}: {e}")))?
                .collect();
            let mut first_refusal = None;
            let allowed: Vec<SocketAddr> = resolved
                .into_iter()
                .filter(|addr| match policy.check_ip(addr.ip()) {
                    Ok(()) => true,
                    Err(refusal) => {
                        first_refusal.get_or_insert(refusal);
                        false
                    }
                })
                .collect();
            if allowed.is_empty() {
                // The refusal itself travels up through hyper and reqwest as the error's source, where
                // `send_error` finds it again and reports it as what it is.
                return Err(match first_refusal {
                    Some(refusal) => Box::new(refusal) as Box<dyn std::error::Error + Send + Sync>,
                    None => Box::new(ResolveError(format!("{host}: no addresses"))),
                });
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

/// A lookup failure, marked so that [`send_error`] can tell it from a connect failure.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct ResolveError(String);

/// Maps a reqwest send/body error onto [`WebhookError`]; `timeout` is the request's total budget.
fn send_error(err: reqwest::Error, timeout: Duration) -> WebhookError {
    if let Some(refusal) = find_source::<EndpointError>(&err) {
        return WebhookError::ForbiddenResolution(refusal.clone());
    }
    if let Some(lookup) = find_source::<ResolveError>(&err) {
        return WebhookError::Resolve(lookup.0.clone());
    }
    // without_url: the URL may carry secrets in its query (and the validation token); callers know it anyway.
    let err = err.without_url();
    match (err.is_timeout(), err.is_connect()) {
        (true, true) => WebhookError::ConnectTimeout(CONNECT_TIMEOUT.min(timeout)),
        (true, false) => WebhookError::Timeout(timeout),
        (false, true) => WebhookError::Connect(error_chain(&err)),
        (false, false) => WebhookError::Transport(error_chain(&err)),
    }
}

fn find_source<T: std::error::Error + 'static>(err: &reqwest::Error) -> Option<&T> {
    let mut source = err.source();
    while let Some(e) = source {
        if let Some(found) = e.downcast_ref::<T>() {
            return Some(found);
        }
        source = e.source();
    }
    None
}

/// "outer: inner: innermost", skipping repeats (hyper and reqwest often restate their source).
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        let text = e.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = e.source();
    }
    out
}

/// A fresh, unguessable token. Shaped like Graph's (which contains spaces and colons) so that endpoints that
/// forget to URL-decode it fail here just as they would against Graph.
fn new_validation_token() -> String {
    format!(
        "Validation: Testing client application reachability for subscription Request-Id: {}",
        uuid::Uuid::new_v4()
    )
}

fn with_validation_token(url: &Url, token: &str) -> Url {
    let encoded = percent_encoding::utf8_percent_encode(token, TOKEN_ENCODE_SET);
    let query = match url.query() {
        Some(existing) if !existing.is_empty() => format!("{existing}&validationToken={encoded}"),
        _ => format!("validationToken={encoded}"),
    };
    let mut target = url.clone();
    target.set_query(Some(&query));
    target
}

fn is_text_plain(value: &HeaderValue) -> bool {
    let Ok(value) = value.to_str() else { return false };
    let media_type = value.split(';').next().unwrap_or_default().trim();
    media_type.eq_ignore_ascii_case("text/plain")
}

/// A header value fit to quote in an error: visible ASCII only, at most 100 characters.
fn sanitise_header(value: &HeaderValue) -> String {
    let text: String = String::from_utf8_lossy(value.as_bytes())
        .chars()
        .map(|c| if c.is_ascii_graphic() || c == ' ' { c } else { '?' })
        .take(100)
        .collect();
    format!("'{text}'")
}

/// Reads at most `limit` bytes of the body; `true` when there was more.
async fn read_bounded(response: &mut reqwest::Response, limit: usize) -> Result<(Vec<u8>, bool), reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        let room = limit - body.len();
        if chunk.len() > room {
            body.extend_from_slice(&chunk[..room]);
            return Ok((body, true));
        }
        body.extend_from_slice(&chunk);
    }
    Ok((body, false))
}

fn compare_token(body: &[u8], token: &str) -> Result<(), TokenMismatch> {
    // Many frameworks append a newline when writing a string; accept exactly one.
    let body = body
        .strip_suffix(b"\r\n")
        .or_else(|| body.strip_suffix(b"\n"))
        .unwrap_or(body);
    if body == token.as_bytes() {
        return Ok(());
    }
    if body.is_empty() {
        return Err(TokenMismatch::Empty);
    }
    // Form-style '+' for space as well as %XX, to recognise whichever encoding the endpoint echoed.
    let plus_as_space: Vec<u8> = body.iter().map(|&b| if b == b'+' { b' ' } else { b }).collect();
    let decoded: Vec<u8> = percent_encoding::percent_decode(&plus_as_space).collect();
    if decoded == token.as_bytes() {
        return Err(TokenMismatch::PercentEncoded);
    }
    Err(TokenMismatch::Different)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Mutex;

    use axum::body::Bytes;
    use axum::extract::{Request, State};
    use axum::http::{header, StatusCode as AxumStatus};
    use axum::response::{IntoResponse, Response};
    use serde_json::json;

    use super::*;
    use crate::notify::endpoint::parse_network;

    /// One request as the test receiver saw it.
    #[derive(Debug, Clone)]
    struct Seen {
        path: String,
        query: Option<String>,
        content_type: Option<String>,
        user_agent: Option<String>,
        body: Bytes,
    }

    #[derive(Clone, Default)]
    struct Receiver {
        seen: Arc<Mutex<Vec<Seen>>>,
    }

    impl Receiver {
        fn seen(&self) -> Vec<Seen> {
            self.seen.lock().unwrap().clone()
        }
    }

    fn decoded_token(query: Option<&str>) -> String {
        let pairs: HashMap<String, String> = query.map(form_decode).unwrap_or_default().into_iter().collect();
        pairs.get("validationToken").cloned().unwrap_or_default()
    }

    /// Form-style query decoding (what ASP.NET, Express and axum's `Query` do), without pulling in a crate.
    fn form_decode(query: &str) -> Vec<(String, String)> {
        query
            .split('&')
            .filter_map(|pair| pair.split_once('='))
            .map(|(k, v)| {
                let decode = |s: &str| {
                    let s = s.replace('+', " ");
                    percent_encoding::percent_decode_str(&s)
                        .decode_utf8_lossy()
                        .into_owned()
                };
                (decode(k), decode(v))
            })
            .collect()
    }

    fn raw_token(query: Option<&str>) -> String {
        query
            .unwrap_or_default()
            .split('&')
            .find_map(|pair| pair.strip_prefix("validationToken="))
            .unwrap_or_default()
            .to_owned()
    }

    fn text(status: AxumStatus, content_type: &'static str, body: String) -> Response {
        (status, [(header::CONTENT_TYPE, content_type)], body).into_response()
    }

    /// Every behaviour the tests need, chosen by path; every request is recorded first.
    async fn receive(State(receiver): State<Receiver>, request: Request) -> Response {
        let (parts, body) = request.into_parts();
        let body = axum::body::to_bytes(body, 1 << 20).await.unwrap_or_default();
        let header_text = |name| {
            parts
                .headers
                .get(name)
                .and_then(|v: &HeaderValue| v.to_str().ok())
                .map(str::to_owned)
        };
        let seen = Seen {
            path: parts.uri.path().to_owned(),
            query: parts.uri.query().map(str::to_owned),
            content_type: header_text(header::CONTENT_TYPE),
            user_agent: header_text(header::USER_AGENT),
            body,
        };
        receiver.seen.lock().unwrap().push(seen.clone());
        let query = seen.query.as_deref();
        match seen.path.as_str() {
            "/echo" => text(AxumStatus::OK, "text/plain; charset=utf-8", decoded_token(query)),
            "/echo-newline" => text(AxumStatus::OK, "text/plain", format!("{}\n", decoded_token(query))),
            "/wrong-token" => text(AxumStatus::OK, "text/plain", "not-the-token".into()),
            "/empty" => text(AxumStatus::OK, "text/plain", String::new()),
            "/encoded" => text(AxumStatus::OK, "text/plain", raw_token(query)),
            "/json-type" => text(AxumStatus::OK, "application/json", decoded_token(query)),
            "/no-type" => Response::new(axum::body::Body::from(decoded_token(query))),
            "/huge" => text(AxumStatus::OK, "text/plain", "x".repeat(MAX_RESPONSE_BODY + 10)),
            "/error" => text(AxumStatus::INTERNAL_SERVER_ERROR, "text/plain", decoded_token(query)),
            "/redirect" => (AxumStatus::FOUND, [(header::LOCATION, "/echo")]).into_response(),
            "/slow" => {
                tokio::time::sleep(Duration::from_secs(2)).await;
                AxumStatus::OK.into_response()
            }
            "/hook" => {
                let is_json = seen
                    .content_type
                    .as_deref()
                    .is_some_and(|ct| ct.starts_with("application/json"));
                match serde_json::from_slice::<serde_json::Value>(&seen.body) {
                    Ok(_) if is_json => AxumStatus::ACCEPTED.into_response(),
                    _ => AxumStatus::UNSUPPORTED_MEDIA_TYPE.into_response(),
                }
            }
            path => match path.strip_prefix("/status/").and_then(|s| s.parse::<u16>().ok()) {
                Some(code) => AxumStatus::from_u16(code).unwrap().into_response(),
                None => AxumStatus::NOT_FOUND.into_response(),
            },
        }
    }

    /// A receiver on 127.0.0.1:<ephemeral>; returns its base URL (`http://127.0.0.1:port`).
    async fn start_receiver() -> (Receiver, u16) {
        let receiver = Receiver::default();
        let app = axum::Router::new().fallback(receive).with_state(receiver.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (receiver, port)
    }

    fn loopback_client() -> WebhookClient {
        WebhookClient::new(EndpointPolicy {
            allow_http: true,
            allowed_networks: vec![parse_network("127.0.0.0/8").unwrap()],
            allowed_on_ports: vec![],
        })
        .unwrap()
    }

    fn url(port: u16, path: &str) -> Url {
        Url::parse(&format!("http://127.0.0.1:{port}{path}")).unwrap()
    }

    #[tokio::test]
    async fn handshake_succeeds_when_the_decoded_token_is_echoed() {
        let (receiver, port) = start_receiver().await;
        let client = loopback_client();
        client.validate(&url(port, "/echo")).await.unwrap();
        client.validate(&url(port, "/echo-newline")).await.unwrap();

        let seen = receiver.seen();
        assert_eq!(seen.len(), 2);
        let first = &seen[0];
        assert_eq!(first.content_type.as_deref(), Some("text/plain; charset=utf-8"));
        assert!(first.body.is_empty());
        assert_eq!(first.user_agent.as_deref(), Some(USER_AGENT));
        let token = decoded_token(first.query.as_deref());
        assert!(token.starts_with("Validation: "), "{token}");
        // The wire form is percent-encoded (no raw spaces or colons), and each handshake gets a fresh token.
        let raw = raw_token(first.query.as_deref());
        assert!(raw.contains("%20") && raw.contains("%3A"), "{raw}");
        assert_ne!(token, decoded_token(seen[1].query.as_deref()));
    }

    #[tokio::test]
    async fn handshake_keeps_an_existing_query_string() {
        let (receiver, port) = start_receiver().await;
        let client = loopback_client();
        client.validate(&url(port, "/echo?tenant=a%20b&x=1")).await.unwrap();
        let query = receiver.seen()[0].query.clone().unwrap();
        assert!(query.starts_with("tenant=a%20b&x=1&validationToken="), "{query}");
    }

    #[tokio::test]
    async fn handshake_failures_are_reported() {
        let (receiver, port) = start_receiver().await;
        let client = loopback_client();
        let check = |path: &'static str| {
            let client = client.clone();
            async move { client.validate(&url(port, path)).await.unwrap_err() }
        };
        assert_eq!(
            check("/wrong-token").await,
            WebhookError::TokenMismatch(TokenMismatch::Different)
        );
        assert_eq!(
            check("/encoded").await,
            WebhookError::TokenMismatch(TokenMismatch::PercentEncoded)
        );
        assert_eq!(check("/empty").await, WebhookError::TokenMismatch(TokenMismatch::Empty));
        assert_eq!(
            check("/huge").await,
            WebhookError::TokenMismatch(TokenMismatch::TooLarge)
        );
        assert_eq!(
            check("/json-type").await,
            WebhookError::ContentType(Some("'application/json'".into()))
        );
        assert_eq!(check("/no-type").await, WebhookError::ContentType(None));
        let err = check("/error").await;
        assert_eq!(err.status(), Some(StatusCode::INTERNAL_SERVER_ERROR));
        assert!(err.to_string().contains("500"), "{err}");
        let err = check("/status/204").await;
        assert_eq!(
            err.status(),
            Some(StatusCode::NO_CONTENT),
            "only 200 passes the handshake"
        );

        // A redirect to a perfectly good endpoint still fails, and is not followed.
        let before = receiver.seen().len();
        assert_eq!(check("/redirect").await, WebhookError::Redirect(StatusCode::FOUND));
        let after = receiver.seen();
        assert_eq!(after.len(), before + 1);
        assert_eq!(after.last().unwrap().path, "/redirect");

        // Messages say what to fix.
        assert!(
            WebhookError::TokenMismatch(TokenMismatch::PercentEncoded)
                .to_string()
                .contains("URL-decode"),
            "encoded-token hint"
        );
    }

    #[tokio::test]
    async fn connect_failure_is_reported() {
        // Bind then drop, so the port is (almost certainly) closed.
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let err = loopback_client().validate(&url(port, "/echo")).await.unwrap_err();
        assert!(matches!(err, WebhookError::Connect(_)), "{err:?}");
        assert!(err.is_retryable());
    }

    #[tokio::test]
    async fn delivery_posts_json_and_accepts_2xx() {
        let (receiver, port) = start_receiver().await;
        let client = loopback_client();
        let body = json!({"value": [{"subscriptionId": "s1", "changeType": "updated"}]});
        client
            .deliver(&url(port, "/hook"), &body, FIRST_ATTEMPT_TIMEOUT)
            .await
            .unwrap();
        client
            .deliver(&url(port, "/status/200"), &body, FIRST_ATTEMPT_TIMEOUT)
            .await
            .unwrap();
        client
            .deliver(&url(port, "/status/204"), &body, FIRST_ATTEMPT_TIMEOUT)
            .await
            .unwrap();

        let seen = receiver.seen();
        assert_eq!(seen.len(), 3);
        assert_eq!(seen[0].content_type.as_deref(), Some("application/json"));
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&seen[0].body).unwrap(),
            body
        );
        assert_eq!(seen[0].query, None, "delivery does not add a query");
    }

    #[tokio::test]
    async fn delivery_failures_report_status_and_are_retryable() {
        let (_receiver, port) = start_receiver().await;
        let client = loopback_client();
        let body = json!({"value": []});
        for code in [400_u16, 404, 408, 410, 429, 500, 503] {
            let err = client
                .deliver(&url(port, &format!("/status/{code}")), &body, RETRY_TIMEOUT)
                .await
                .unwrap_err();
            assert_eq!(err.status().map(|s| s.as_u16()), Some(code));
            assert!(err.is_retryable(), "{code}");
        }
        let err = client
            .deliver(&url(port, "/redirect"), &body, RETRY_TIMEOUT)
            .await
            .unwrap_err();
        assert_eq!(err, WebhookError::Redirect(StatusCode::FOUND));
    }

    #[tokio::test]
    async fn delivery_times_out() {
        let (_receiver, port) = start_receiver().await;
        let client = loopback_client();
        let started = tokio::time::Instant::now();
        let timeout = Duration::from_millis(300);
        let err = client
            .deliver(&url(port, "/slow"), &json!({"value": []}), timeout)
            .await
            .unwrap_err();
        assert_eq!(err, WebhookError::Timeout(timeout));
        assert!(err.is_retryable());
        // Well before the handler's 2 s sleep ends.
        assert!(
            started.elapsed() < Duration::from_millis(1500),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn forbidden_addresses_are_refused_without_sending() {
        let (receiver, port) = start_receiver().await;
        // http allowed, but no network exemptions: loopback is off limits.
        let client = WebhookClient::new(EndpointPolicy {
            allow_http: true,
            allowed_networks: vec![],
            allowed_on_ports: vec![],
        })
        .unwrap();
        let body = json!({"value": []});

        // IP literal: refused by the static check before any connection.
        let err = client.validate(&url(port, "/echo")).await.unwrap_err();
        assert!(
            matches!(&err, WebhookError::Refused(EndpointError::ForbiddenAddress { .. })),
            "{err:?}"
        );
        assert!(!err.is_retryable());
        let err = client
            .deliver(&url(port, "/hook"), &body, FIRST_ATTEMPT_TIMEOUT)
            .await
            .unwrap_err();
        assert!(matches!(&err, WebhookError::Refused(_)), "{err:?}");

        // Hostname: refused by the resolver, which is consulted at connect time.
        let by_name = Url::parse(&format!("http://localhost:{port}/echo")).unwrap();
        let err = client.validate(&by_name).await.unwrap_err();
        assert!(
            matches!(
                &err,
                WebhookError::ForbiddenResolution(EndpointError::ForbiddenAddress { .. })
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains("a loopback address"), "{err}");
        let by_name = Url::parse(&format!("http://localhost:{port}/hook")).unwrap();
        let err = client
            .deliver(&by_name, &body, FIRST_ATTEMPT_TIMEOUT)
            .await
            .unwrap_err();
        assert!(matches!(&err, WebhookError::ForbiddenResolution(_)), "{err:?}");
        assert!(err.is_retryable(), "DNS may change");

        assert!(
            receiver.seen().is_empty(),
            "nothing may reach the receiver: {:?}",
            receiver.seen()
        );
    }

    #[tokio::test]
    async fn resolver_passes_allowed_addresses() {
        // localhost resolves to 127.0.0.1 (and usually ::1, which 127.0.0.0/8 does not allow and the resolver
        // drops); the receiver only listens on 127.0.0.1, so success shows the filtered list was used.
        let (receiver, port) = start_receiver().await;
        let by_name = Url::parse(&format!("http://localhost:{port}/echo")).unwrap();
        loopback_client().validate(&by_name).await.unwrap();
        assert_eq!(receiver.seen().len(), 1);
    }

    #[tokio::test]
    async fn http_is_refused_unless_allowed() {
        let (receiver, port) = start_receiver().await;
        let client = WebhookClient::new(EndpointPolicy {
            allow_http: false,
            allowed_networks: vec![parse_network("127.0.0.0/8").unwrap()],
            allowed_on_ports: vec![],
        })
        .unwrap();
        let err = client.validate(&url(port, "/echo")).await.unwrap_err();
        assert_eq!(err, WebhookError::Refused(EndpointError::HttpNotAllowed));
        assert!(receiver.seen().is_empty());
    }

    #[test]
    fn token_comparison() {
        let token = "Validation: a b";
        assert_eq!(compare_token(b"Validation: a b", token), Ok(()));
        assert_eq!(compare_token(b"Validation: a b\n", token), Ok(()));
        assert_eq!(compare_token(b"Validation: a b\r\n", token), Ok(()));
        assert_eq!(
            compare_token(b"Validation: a b\n\n", token),
            Err(TokenMismatch::Different)
        );
        assert_eq!(compare_token(b" Validation: a b", token), Err(TokenMismatch::Different));
        assert_eq!(
            compare_token(b"Validation%3A%20a%20b", token),
            Err(TokenMismatch::PercentEncoded)
        );
        assert_eq!(
            compare_token(b"Validation%3a+a+b", token),
            Err(TokenMismatch::PercentEncoded)
        );
        assert_eq!(compare_token(b"", token), Err(TokenMismatch::Empty));
    }

    #[test]
    fn validation_token_is_appended_to_the_query() {
        let token = "Validation: x/y";
        let plain = with_validation_token(&Url::parse("https://h.example/p").unwrap(), token);
        assert_eq!(
            plain.as_str(),
            "https://h.example/p?validationToken=Validation%3A%20x%2Fy"
        );
        let with_query = with_validation_token(&Url::parse("https://h.example/p?a=1").unwrap(), token);
        assert_eq!(
            with_query.as_str(),
            "https://h.example/p?a=1&validationToken=Validation%3A%20x%2Fy"
        );
        let empty_query = with_validation_token(&Url::parse("https://h.example/p?").unwrap(), token);
        assert_eq!(
            empty_query.as_str(),
            "https://h.example/p?validationToken=Validation%3A%20x%2Fy"
        );
    }
}
