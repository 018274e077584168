//! The fixed routes: liveness, readiness, metrics, the API description, the validation-token
//! keys (`keys`) and the presence board's files (`board`). No authentication, so orchestrators,
//! scrapers, notification receivers and browsers can reach them; none holds user data.
use super::error::ApiError;
use super::AppState;
use crate::store::PresenceState;
use axum::extract::Request;
use axum::http::{header, Method, StatusCode};
use axum::response::{IntoResponse, Response};

/// Answer a fixed route (the caller matched the path): its metric name and response.
pub async fn fixed(state: &AppState, request: Request) -> (&'static str, Response) {
    let path = request.uri().path();
    let route = super::routes::route_name(request.method(), path);
    if !matches!(*request.method(), Method::GET | Method::HEAD) {
        let e = ApiError::method_not_allowed(format!(
            "The HTTP method '{}' is not allowed for this resource; use GET.",
            request.method()
        ));
        return (route, e.into_response());
    }
    let response = match path {
        "/healthz" => healthz(),
        "/readyz" => readyz(state),
        "/metrics" => metrics(state).await,
        "/openapi.json" => openapi(),
        _ => match (super::keys::parse(path), super::board::asset(path)) {
            (Some(key_path), _) => super::keys::serve(state, key_path, request.headers()),
            (None, Some(asset)) => super::board::serve(asset, request.headers()),
            (None, None) => ApiError::not_found("Resource not found.").into_response(),
        },
    };
    (route, response)
}

fn status_json(status: StatusCode, text: &str) -> Response {
    super::json_response(status, &serde_json::json!({ "status": text }), 32)
}

/// Alive as long as the process answers HTTP.
fn healthz() -> Response {
    status_json(StatusCode::OK, "ok")
}

/// Ready when the store accepts writes (loaded, writer running).
fn readyz(state: &AppState) -> Response {
    if state.store.is_ready() {
        status_json(StatusCode::OK, "ready")
    } else {
        status_json(StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}

/// Prometheus text exposition: counts and latencies only, no ids as labels.
async fn metrics(state: &AppState) -> Response {
    let gauges = &state.metrics.state;
    let counts = state.store.counts().await;
    gauges.users.set(counts.users as i64);
    gauges.sessions.set(counts.sessions);
    gauges.deadlines_pending.set(counts.deadlines as i64);
    gauges.subscriptions.set(counts.subscriptions as i64);
    gauges.change_log_retained.set(counts.log_retained as i64);
    gauges.lifecycle_queued.set(counts.lifecycle_queued as i64);
    gauges.streams_open.set(state.streams.open_count() as i64);
    gauges.streams_lagged.set(state.streams.hub.lagged_total() as i64);
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        state.metrics.encode(),
    )
        .into_response()
}

/// The OpenAPI document of the whole API; public, like any API description.
fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        super::openapi::document_text(),
    )
        .into_response()
}
