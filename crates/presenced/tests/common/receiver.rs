//! A real webhook receiver on loopback, started by the test: answers Graph's validation
//! handshake and records every notification POST.
#![allow(dead_code)]

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Default)]
pub struct Inner {
    /// Each notification POST body, with when it arrived.
    pub posts: Mutex<Vec<(Instant, Value)>>,
    pub validations: AtomicU64,
    /// 0 = answer 200 (202 for lifecycle-looking bodies is not needed); otherwise this status.
    pub status: AtomicU16,
    /// Delay before answering notification POSTs, in milliseconds.
    pub delay_ms: AtomicU64,
    /// When set, the handshake echoes this instead of the token (to fail it).
    pub wrong_token: Mutex<Option<String>>,
    /// When each notification request arrived, delivered or not (before any delay or error status).
    pub attempts: Mutex<Vec<Instant>>,
}

#[derive(Clone)]
pub struct Receiver {
    pub url: String,
    pub inner: Arc<Inner>,
}

impl Receiver {
    pub async fn start() -> Receiver {
        let inner = Arc::new(Inner::default());
        let app = Router::new().fallback(handle).with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Receiver { url, inner }
    }

    pub fn set_status(&self, status: u16) {
        self.inner.status.store(status, Ordering::SeqCst);
    }

    pub fn set_delay(&self, delay: Duration) {
        self.inner.delay_ms.store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    /// All notification items received so far (flattened `value[]`), in arrival order.
    pub fn items(&self) -> Vec<Value> {
        let posts = self.inner.posts.lock().unwrap();
        posts
            .iter()
            .flat_map(|(_, body)| body["value"].as_array().cloned().unwrap_or_default())
            .collect()
    }

    pub fn first_attempt(&self) -> Option<Instant> {
        self.inner.attempts.lock().unwrap().first().copied()
    }

    /// Arrival times of the accepted notification POSTs.
    pub fn arrivals(&self) -> Vec<Instant> {
        self.inner.posts.lock().unwrap().iter().map(|(at, _)| *at).collect()
    }

    pub fn post_count(&self) -> usize {
        self.inner.posts.lock().unwrap().len()
    }

    /// Wait (bounded) until `pred` holds for the items received.
    pub async fn wait_for(&self, what: &str, timeout: Duration, pred: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let end = Instant::now() + timeout;
        loop {
            let items = self.items();
            if pred(&items) {
                return items;
            }
            if Instant::now() > end {
                panic!(
                    "timed out waiting for {what}; received: {}",
                    serde_json::to_string_pretty(&items).unwrap()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn handle(
    State(inner): State<Arc<Inner>>,
    Query(query): Query<HashMap<String, String>>,
    body: Bytes,
) -> Response {
    if let Some(token) = query.get("validationToken") {
        inner.validations.fetch_add(1, Ordering::SeqCst);
        let answer = inner
            .wrong_token
            .lock()
            .unwrap()
            .clone()
            .unwrap_or_else(|| token.clone());
        return ([(header::CONTENT_TYPE, "text/plain")], answer).into_response();
    }
    inner.attempts.lock().unwrap().push(Instant::now());
    let delay = inner.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let status = inner.status.load(Ordering::SeqCst);
    if status != 0 && status != 200 {
        return StatusCode::from_u16(status).unwrap().into_response();
    }
    let value: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    inner.posts.lock().unwrap().push((Instant::now(), value));
    StatusCode::ACCEPTED.into_response()
}
