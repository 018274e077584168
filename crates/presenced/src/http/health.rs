//! Liveness and readiness, without authentication so orchestrators can probe them.
use super::AppState;
use crate::store::PresenceStore;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};

/// Alive as long as the process answers HTTP.
pub async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// Ready when the store accepts writes (loaded, writer running).
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    if state.service.store().is_ready() {
        (StatusCode::OK, Json(json!({ "status": "ready" })))
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, Json(json!({ "status": "not ready" })))
    }
}

/// Prometheus text exposition. Unauthenticated like the probes: it holds no user data (no ids
/// as labels), only counts and latencies.
pub async fn metrics(State(state): State<AppState>) -> impl axum::response::IntoResponse {
    let store = state.service.store();
    let gauges = &state.metrics.state;
    gauges.users.set(store.user_count() as i64);
    gauges.sessions.set(store.session_count());
    gauges.deadlines_pending.set(store.pending_deadlines() as i64);
    gauges.subscriptions.set(store.subscription_count() as i64);
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.encode(),
    )
}

/// The OpenAPI document of the whole API; public, like any API description.
pub async fn openapi() -> impl axum::response::IntoResponse {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        super::openapi::document_text(),
    )
}
