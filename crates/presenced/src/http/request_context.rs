//! Per-request identifiers and the final rendering of Graph error bodies.
//!
//! Every response carries `request-id` (ours) and echoes `client-request-id` (the caller's), as
//! Graph does, so a support ticket can quote either.
use super::error::{ErrorBody, ErrorDetail, ErrorPayload, InnerError};
use crate::metrics::{Metrics, RequestLabels, RouteLabels};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use std::sync::Arc;

/// Client ids longer than this are not echoed: a header we reflect must stay small.
const MAX_CLIENT_REQUEST_ID: usize = 128;

#[derive(Debug, Clone)]
pub struct RequestContext {
    pub request_id: String,
    pub client_request_id: Option<String>,
}

pub async fn request_context(State(metrics): State<Arc<Metrics>>, mut request: Request, next: Next) -> Response {
    let started = std::time::Instant::now();
    let request_id = next_request_id();
    let client_request_id = request
        .headers()
        .get("client-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= MAX_CLIENT_REQUEST_ID && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_owned);
    let context = RequestContext {
        request_id,
        client_request_id,
    };
    request.extensions_mut().insert(context.clone());
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let route = super::routes::route_name(&method, &path);
    let span = tracing::info_span!("request", request_id = %context.request_id, route);
    let mut response = tracing::Instrument::instrument(next.run(request), span).await;
    metrics
        .request_seconds
        .get_or_create(&RouteLabels { route })
        .observe(started.elapsed().as_secs_f64());
    let labels = RequestLabels {
        route,
        method: method_label(&method),
        status: response.status().as_u16(),
    };
    metrics.requests.get_or_create(&labels).inc();
    if let Some(payload) = response.extensions_mut().remove::<ErrorPayload>() {
        tracing::info!(request_id = %context.request_id, %method, %path, status = response.status().as_u16(), code = payload.code, "request failed");
        render_error(&mut response, &payload, &context);
    }
    let headers = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&context.request_id) {
        headers.insert("request-id", v);
    }
    if let Some(v) = context
        .client_request_id
        .as_deref()
        .and_then(|v| HeaderValue::from_str(v).ok())
    {
        headers.insert("client-request-id", v);
    }
    response
}

fn render_error(response: &mut Response, payload: &ErrorPayload, context: &RequestContext) {
    let body = ErrorBody {
        error: ErrorDetail {
            code: payload.code.to_owned(),
            message: payload.message.clone(),
            inner_error: InnerError {
                date: crate::clock::SystemClock
                    .now()
                    .strftime("%Y-%m-%dT%H:%M:%S")
                    .to_string(),
                request_id: context.request_id.clone(),
                client_request_id: context.client_request_id.clone(),
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
fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
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

/// A unique GUID-shaped request id without a random-number syscall per request: a random
/// per-process prefix plus a counter. Unique is all a request id needs to be.
fn next_request_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    static PREFIX: OnceLock<u64> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let prefix = *PREFIX.get_or_init(|| uuid::Uuid::new_v4().as_u64_pair().0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    uuid::Uuid::from_u64_pair(prefix, n).hyphenated().to_string()
}
