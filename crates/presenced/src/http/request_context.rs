//! The one entry point of every request: request ids, routing, metrics and Graph error bodies.
//!
//! Every response carries `request-id` (ours) and echoes `client-request-id` (the caller's), as
//! Graph does, so a support ticket can quote either. This is a plain function around the
//! handlers, not a middleware layer: on a 2-core machine the layer's boxing, the request
//! extensions map, a second route parse and a tracing span per request cost ~3 µs of the ~18 µs
//! a read takes (BENCHMARKS.md §1).
use super::error::{ErrorBody, ErrorDetail, ErrorPayload, InnerError};
use super::AppState;
use crate::metrics::Metrics;
use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::Response;
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

/// Client ids longer than this are not echoed: a header we reflect must stay small.
const MAX_CLIENT_REQUEST_ID: usize = 128;

/// Every request, whatever its path. Never fails: errors are responses (the `Result` is the
/// service's, so the future is boxed as it is, without a wrapper holding it twice).
// Not an `async fn`, for the reason given at `graph`: what is needed of the request is taken
// before the future is made, so the request is not held in it twice.
pub fn entry(
    state: Arc<AppState>,
    request: Request,
) -> impl Future<Output = Result<Response, std::convert::Infallible>> + Send {
    let started = Instant::now();
    let seen = Seen::of(&request);
    let path = seen.uri.path();
    let fixed = matches!(path, "/healthz" | "/readyz" | "/openapi.json")
        || (path == "/metrics" && crate::net::serves_metrics_here())
        || super::keys::parse(path).is_some()
        || super::board::asset(path).is_some();
    async move {
        let state = &*state;
        let (route, response) = if fixed {
            super::health::fixed(state, request).await
        } else {
            super::graph(state, request).await
        };
        Ok(finish(state, route, seen, started, response))
    }
}

/// One step of a JSON batch (`http::batch`), served exactly as if it had come alone: the same
/// routing, authentication, permission checks and rate limit (`graph`), and the same metrics,
/// request id and error body as `entry` gives a request. Only the fixed routes are not reachable.
pub fn step(state: &AppState, request: Request) -> impl Future<Output = Response> + Send + '_ {
    let started = Instant::now();
    let seen = Seen::of(&request);
    async move {
        let (route, response) = super::graph(state, request).await;
        finish(state, route, seen, started, response)
    }
}

/// What `finish` needs of a request after the handler has consumed it.
struct Seen {
    client_request_id: Option<HeaderValue>,
    method: Method,
    // Cheap: the path is reference-counted; kept only to name it in the log of a failed request.
    uri: axum::http::Uri,
}

impl Seen {
    fn of(request: &Request) -> Self {
        let client_request_id = request
            .headers()
            .get("client-request-id")
            .filter(|v| {
                let b = v.as_bytes();
                !b.is_empty() && b.len() <= MAX_CLIENT_REQUEST_ID && b.iter().all(u8::is_ascii_graphic)
            })
            .cloned();
        Self {
            client_request_id,
            method: request.method().clone(),
            uri: request.uri().clone(),
        }
    }
}

/// Record the request, give it a request id, and render its error (if any) as Graph's JSON.
fn finish(state: &AppState, route: &'static str, seen: Seen, started: Instant, mut response: Response) -> Response {
    let Seen {
        client_request_id,
        method,
        uri,
    } = seen;
    record(&state.metrics, route, &method, response.status(), started);
    let mut id_text = [0u8; uuid::fmt::Hyphenated::LENGTH];
    let request_id: &str = next_request_id().encode_lower(&mut id_text);
    if let Some(payload) = response.extensions_mut().remove::<ErrorPayload>() {
        let status = response.status().as_u16();
        let path = uri.path();
        if response.status().is_server_error() {
            tracing::error!(%request_id, %method, path, status, code = payload.code, message = %payload.message, "request failed");
        } else {
            tracing::info!(%request_id, %method, path, status, code = payload.code, "request failed");
        }
        render_error(&mut response, &payload, request_id, client_request_id.as_ref());
    }
    let headers = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(request_id) {
        headers.insert(REQUEST_ID, v);
    }
    if let Some(v) = client_request_id {
        headers.insert(CLIENT_REQUEST_ID, v);
    }
    response
}

fn record(metrics: &Metrics, route: &'static str, method: &Method, status: StatusCode, started: Instant) {
    metrics.record_request(
        route,
        method_label(method),
        status.as_u16(),
        started.elapsed().as_secs_f64(),
    );
}

fn render_error(response: &mut Response, payload: &ErrorPayload, request_id: &str, client: Option<&HeaderValue>) {
    let body = ErrorBody {
        error: ErrorDetail {
            code: payload.code.to_owned(),
            message: payload.message.clone(),
            inner_error: InnerError {
                date: crate::clock::SystemClock
                    .now()
                    .strftime("%Y-%m-%dT%H:%M:%S")
                    .to_string(),
                request_id: request_id.to_owned(),
                client_request_id: client.and_then(|v| v.to_str().ok()).map(str::to_owned),
            },
        },
    };
    *response.body_mut() = Body::from(serde_json::to_string(&body).unwrap_or_default());
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response.headers_mut().remove(header::CONTENT_LENGTH);
}

/// Standard methods by name; anything else shares one label so clients cannot grow the metric set.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::PUT => "PUT",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

// Names made once: a name given as a string is copied into a new buffer on every insert.
const REQUEST_ID: HeaderName = HeaderName::from_static("request-id");
const CLIENT_REQUEST_ID: HeaderName = HeaderName::from_static("client-request-id");

/// A unique GUID-shaped request id without a random-number syscall per request: a random
/// per-process prefix plus a counter. Unique is all a request id needs to be. Written into the
/// caller's buffer, not a `String` grown through the formatter.
fn next_request_id() -> uuid::fmt::Hyphenated {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    static PREFIX: OnceLock<u64> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let prefix = *PREFIX.get_or_init(|| uuid::Uuid::new_v4().as_u64_pair().0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    uuid::Uuid::from_u64_pair(prefix, n).hyphenated()
}
