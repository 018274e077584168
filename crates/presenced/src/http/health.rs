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
