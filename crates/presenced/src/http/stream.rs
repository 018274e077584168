//! `…/communications/presences/$stream`: watch streams over Server-Sent Events and WebSocket.
//!
//! Which users: `POST` with `{"ids":[…]}` (1 to 650, as `getPresencesByUserId`) or
//! `{"scope":"tenant"}` (application permission), or `GET` with `?ids=a,b` / `?scope=tenant`.
//! The token travels in `Authorization` (never in a URL); a WebSocket may instead send it in its
//! first message, since browsers cannot set headers on one. Resume with `Last-Event-ID` (SSE) or
//! `"resume"` in the first message (WebSocket). The protocol is described in `docs/streams.md`.
use super::dto::PresenceDto;
use super::error::ApiError;
use super::presence::{denied, store_error};
use super::AppState;
use crate::auth::{Action, Principal};
use crate::store::Store;
use crate::stream::hub::Scope;
use crate::stream::watch::{Event, Watch};
use crate::stream::{Admission, Streams};
use axum::body::{Body, Bytes};
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use jiff::Timestamp;
use presence_core::{TenantId, UserId, UserKey};
use serde::Deserialize;
use serde_json::json;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

/// Most users one stream watches (Graph's limit for `getPresencesByUserId`).
pub const MAX_WATCHED: usize = 650;
/// Largest first message a WebSocket may send (650 ids of 128 characters fit easily).
const MAX_FIRST_MESSAGE: usize = 128 * 1024;
/// How long a WebSocket may take to send its first message.
pub(super) const FIRST_MESSAGE_WITHIN: Duration = Duration::from_secs(10);
/// A WebSocket's read buffer. tungstenite's default (128 KiB) is zero-filled at the first read
/// and stays resident for the socket's life; our clients send small messages (a larger frame
/// still arrives whole: the buffer grows to the frame's length), so 4 KiB keeps an idle socket
/// small. Measured: 151 KiB of server RSS per idle client session with the default (BENCHMARKS.md).
const WEBSOCKET_READ_BUFFER: usize = 4 * 1024;

/// What a stream request names.
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WatchRequest {
    pub ids: Option<Vec<String>>,
    pub scope: Option<String>,
    /// WebSocket only: the bearer token (when no `Authorization` header came with the upgrade).
    pub token: Option<String>,
    /// WebSocket only: the resume token of the last event received.
    pub resume: Option<String>,
    /// WebSocket only: must be `"watch"` when given.
    #[serde(rename = "type")]
    pub kind: Option<String>,
}

/// Why a stream ends.
#[derive(Debug, Clone, Copy)]
enum End {
    TokenExpired,
    Shutdown,
    Unavailable,
}

impl End {
    fn reason(self) -> &'static str {
        match self {
            End::TokenExpired => "tokenExpired",
            End::Shutdown => "shutdown",
            End::Unavailable => "serviceUnavailable",
        }
    }
}

fn tenant_of(principal: &Principal) -> Result<TenantId, ApiError> {
    TenantId::parse(&principal.tenant)
        .map_err(|e| ApiError::unauthorized(format!("The token's tenant is invalid: {e}.")))
}

/// The watch scope a request names, checked against the caller's permissions.
pub fn scope(principal: &Principal, request: &WatchRequest) -> Result<Scope, ApiError> {
    let tenant = tenant_of(principal)?;
    match (&request.ids, request.scope.as_deref()) {
        (None, Some(s)) if s.eq_ignore_ascii_case("tenant") => {
            if principal.is_delegated() {
                return Err(ApiError::forbidden(
                    "A tenant-wide stream needs an application permission (Presence.Read.All).",
                ));
            }
            principal.can(Action::ReadPresenceBulk, None).map_err(denied)?;
            Ok(Scope::Tenant(tenant))
        }
        (Some(ids), None) => {
            if ids.is_empty() || ids.len() > MAX_WATCHED {
                return Err(ApiError::invalid_argument(format!(
                    "[Ids]: between 1 and {MAX_WATCHED} user ids are supported per stream (got {}).",
                    ids.len()
                )));
            }
            let mut keys: Vec<UserKey> = Vec::with_capacity(ids.len());
            for (i, raw) in ids.iter().enumerate() {
                let id = UserId::parse(raw).map_err(|e| ApiError::invalid_argument(format!("[Ids][{i}]: {e}.")))?;
                let key = UserKey::new(tenant.clone(), id);
                if !keys.contains(&key) {
                    keys.push(key);
                }
            }
            let only_self = keys.len() == 1 && principal.user.as_deref() == Some(keys[0].user.as_str());
            if only_self {
                principal.can(Action::ReadPresence, Some(keys[0].user.as_str()))
            } else {
                principal.can(Action::ReadPresenceBulk, None)
            }
            .map_err(denied)?;
            Ok(Scope::Users(keys))
        }
        (Some(_), Some(_)) => Err(ApiError::invalid_argument("Give either ids or scope, not both.")),
        (None, _) => Err(ApiError::invalid_argument(
            "Name the users to watch: ids (1 to 650) or scope=tenant.",
        )),
    }
}

/// The watch request of a `GET` (query) or `POST` (JSON body).
fn request_of(parts: &Parts, bytes: &Bytes) -> Result<WatchRequest, ApiError> {
    if parts.method == Method::POST {
        return super::body::required(super::body::json(&parts.headers, bytes)?);
    }
    let mut request = WatchRequest::default();
    for pair in parts.uri.query().unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = percent_encoding::percent_decode_str(value).decode_utf8_lossy();
        match name {
            "ids" => request.ids = Some(value.split(',').map(|s| s.trim().to_owned()).collect()),
            "scope" => request.scope = Some(value.into_owned()),
            other => {
                return Err(ApiError::invalid_argument(format!(
                "Unknown query option '{}' (a stream takes ids or scope; the token goes in the Authorization header).",
                other.chars().take(64).collect::<String>()
            )))
            }
        }
    }
    Ok(request)
}

fn admit(streams: &Arc<Streams>, principal: &Principal) -> Result<Admission, ApiError> {
    let app = principal.app.as_deref().unwrap_or("");
    streams.admit(&principal.tenant, app).map_err(|e| {
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "TooManyRequests",
            format!("{e}; close one first."),
        )
    })
}

/// A stream over Server-Sent Events.
pub async fn sse(
    state: &AppState,
    principal: &Principal,
    parts: &Parts,
    bytes: &Bytes,
    expires_at: Option<Timestamp>,
) -> Result<Response, ApiError> {
    let request = request_of(parts, bytes)?;
    let scope = scope(principal, &request)?;
    let admission = admit(&state.streams, principal)?;
    let resume = parts
        .headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let watch = Watch::open(state.store.clone(), state.streams.hub.clone(), scope, resume.as_deref())
        .await
        .map_err(store_error)?;
    let frames = SseFrames::new(watch, &state.streams, expires_at, admission);
    let body = Body::from_stream(futures_util::stream::unfold(frames, |mut frames| async move {
        let frame = frames.next().await?;
        Some((Ok::<Bytes, std::convert::Infallible>(frame), frames))
    }));
    let mut response = (StatusCode::OK, body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Proxies that buffer responses (nginx) would hold events back.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

pub(super) type Deadline = Pin<Box<tokio::time::Sleep>>;

/// The deadline of a token that expires at `at` (none: never).
pub(super) fn expiry(at: Option<Timestamp>, now: Timestamp) -> Option<Deadline> {
    at.map(|at| {
        let left = Duration::try_from(at.duration_since(now)).unwrap_or(Duration::ZERO);
        Box::pin(tokio::time::sleep(left))
    })
}

pub(super) async fn expired(deadline: &mut Option<Deadline>) {
    match deadline {
        Some(d) => d.as_mut().await,
        None => std::future::pending().await,
    }
}

/// The frames of one SSE stream, produced as the client reads them.
struct SseFrames {
    watch: Watch<Store>,
    keep_alive: tokio::time::Interval,
    expiry: Option<Deadline>,
    shutdown: tokio::sync::watch::Receiver<bool>,
    started: bool,
    done: bool,
    _admission: Admission,
    /// Counts the connection as long-lived while the stream lasts (net::ConnHandle).
    _long_lived: Option<crate::net::LongLived>,
}

impl SseFrames {
    fn new(watch: Watch<Store>, streams: &Streams, expires_at: Option<Timestamp>, admission: Admission) -> Self {
        let period = streams.config.keep_alive;
        let now = crate::clock::SystemClock.now();
        Self {
            watch,
            keep_alive: tokio::time::interval_at(tokio::time::Instant::now() + period, period),
            expiry: expiry(expires_at, now),
            shutdown: streams.shutdown_signal(),
            started: false,
            done: false,
            _admission: admission,
            _long_lived: crate::net::ConnHandle::current().map(|c| c.long_lived()),
        }
    }

    async fn next(&mut self) -> Option<Bytes> {
        if self.done {
            return None;
        }
        if !self.started {
            self.started = true;
            // Reconnect quickly after a dropped connection (EventSource-style clients).
            return Some(Bytes::from_static(b"retry: 2000\n\n"));
        }
        if *self.shutdown.borrow() {
            return Some(self.end(End::Shutdown));
        }
        let frame = tokio::select! {
            biased;
            _ = self.shutdown.changed() => self.end(End::Shutdown),
            _ = expired(&mut self.expiry) => self.end(End::TokenExpired),
            event = self.watch.next() => match event {
                Ok(event) => sse_event(&event),
                Err(e) => {
                    tracing::warn!(error = %e, "a stream could not read the change log; ending it");
                    self.end(End::Unavailable)
                }
            },
            _ = self.keep_alive.tick() => Bytes::from_static(b": keep-alive\n\n"),
        };
        Some(frame)
    }

    fn end(&mut self, why: End) -> Bytes {
        self.done = true;
        let data = json!({ "reason": why.reason() }).to_string();
        Bytes::from(format!("event: end\ndata: {data}\n\n"))
    }
}

/// One presence as readers other than its user see it (no status-message dates).
fn presence_json(key: &UserKey, view: &presence_core::PresenceView, out: &mut Vec<u8>) {
    let dto = PresenceDto::from_view(&key.user, view.clone(), false, None);
    // Our own DTO always serialises.
    let _ = dto.write_json(out);
}

/// The JSON of an event: its name, its resume token (if it has one) and its data.
fn event_json(event: &Event) -> (&'static str, Option<String>, Vec<u8>) {
    let mut out = Vec::with_capacity(512);
    match event {
        Event::Snapshot {
            reset,
            last,
            resume,
            presences,
        } => {
            out.extend_from_slice(format!("{{\"reset\":{reset},\"more\":{},\"value\":[", !last).as_bytes());
            for (i, (key, view)) in presences.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                presence_json(key, view, &mut out);
            }
            out.extend_from_slice(b"]}");
            ("snapshot", resume.as_ref().map(|r| r.to_text()), out)
        }
        Event::Presence { resume, key, view } => {
            presence_json(key, view, &mut out);
            ("presence", Some(resume.to_text()), out)
        }
    }
}

fn sse_event(event: &Event) -> Bytes {
    let (name, id, data) = event_json(event);
    let mut frame = Vec::with_capacity(data.len() + 64);
    frame.extend_from_slice(b"event: ");
    frame.extend_from_slice(name.as_bytes());
    frame.push(b'\n');
    if let Some(id) = id {
        frame.extend_from_slice(b"id: ");
        frame.extend_from_slice(id.as_bytes());
        frame.push(b'\n');
    }
    // The JSON has no raw newlines (serde escapes them), so one data line holds it.
    frame.extend_from_slice(b"data: ");
    frame.extend_from_slice(&data);
    frame.extend_from_slice(b"\n\n");
    Bytes::from(frame)
}

/// The WebSocket message of an event: `{"type":…, "resume":…, …}`.
fn ws_event(event: &Event) -> String {
    let (name, resume, data) = event_json(event);
    let data = String::from_utf8_lossy(&data);
    let resume = resume.map_or("null".to_owned(), |r| format!("\"{r}\""));
    match event {
        Event::Snapshot { .. } => {
            // `data` is `{"reset":…,"more":…,"value":[…]}`: add the type and resume token in front.
            format!("{{\"type\":\"{name}\",\"resume\":{resume},{}", &data[1..])
        }
        Event::Presence { .. } => format!("{{\"type\":\"{name}\",\"resume\":{resume},\"presence\":{data}}}"),
    }
}

/// Whether a request asks to upgrade to a WebSocket.
pub fn is_upgrade(parts: &Parts) -> bool {
    parts
        .headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

/// Upgrade to a WebSocket served by `serve` on a task of its own. The connection goes along, to
/// count as long-lived and to be closed when the server evicts it (net::ConnHandle).
pub(super) async fn upgrade<F, Fut>(mut parts: Parts, max_message: usize, serve: F) -> Response
where
    F: FnOnce(WebSocket) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let upgrade = match WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
        Ok(u) => u,
        Err(rejection) => return rejection.into_response(),
    };
    let conn = crate::net::ConnHandle::current();
    upgrade
        .max_message_size(max_message)
        .read_buffer_size(WEBSOCKET_READ_BUFFER)
        .on_upgrade(move |socket| async move {
            let Some(conn) = conn else {
                return serve(socket).await;
            };
            let _long_lived = conn.long_lived();
            tokio::select! {
                () = serve(socket) => {}
                () = conn.closing() => {}
            }
        })
}

/// Refuse a socket's opening message: the error, then a policy-violation close.
pub(super) async fn refuse(socket: &mut WebSocket, e: ApiError) {
    let body = json!({ "type": "error", "error": { "code": e.code, "message": e.message } });
    let _ = socket.send(Message::Text(body.to_string().into())).await;
    let _ = socket
        .send(Message::Close(Some(CloseFrame {
            code: 1008,
            reason: "refused".into(),
        })))
        .await;
}

/// Accept a WebSocket stream. `principal` is the caller if the upgrade carried `Authorization`;
/// otherwise the first message must carry the token.
pub async fn websocket(state: &AppState, principal: Option<Arc<Principal>>, parts: Parts) -> Response {
    let state = state.clone();
    upgrade(parts, MAX_FIRST_MESSAGE, move |socket| {
        serve_socket(socket, state, principal)
    })
    .await
}

async fn serve_socket(mut socket: WebSocket, state: AppState, principal: Option<Arc<Principal>>) {
    match open_socket_watch(&mut socket, &state, principal).await {
        Ok(opened) => run_socket(socket, &state.streams, opened).await,
        Err(e) => refuse(&mut socket, e).await,
    }
}

struct OpenedWatch {
    watch: Watch<Store>,
    expires_at: Option<Timestamp>,
    _admission: Admission,
}

/// Read the first message, authenticate, check, admit and open the watch.
async fn open_socket_watch(
    socket: &mut WebSocket,
    state: &AppState,
    principal: Option<Arc<Principal>>,
) -> Result<OpenedWatch, ApiError> {
    let first = match tokio::time::timeout(FIRST_MESSAGE_WITHIN, socket.recv()).await {
        Ok(Some(Ok(Message::Text(text)))) => text,
        Ok(_) => return Err(ApiError::bad_request("The first message must be a JSON text message.")),
        Err(_) => return Err(ApiError::bad_request("No first message within 10 seconds.")),
    };
    let request: WatchRequest = serde_json::from_str(first.as_str())
        .map_err(|e| ApiError::bad_request(format!("The first message is not a watch request: {e}.")))?;
    if request.kind.as_deref().is_some_and(|k| k != "watch") {
        return Err(ApiError::bad_request("The first message's type must be \"watch\"."));
    }
    let principal = first_message_caller(state, principal, request.token.as_deref())?;
    let scope = scope(&principal, &request)?;
    let admission = admit(&state.streams, &principal)?;
    let watch = Watch::open(
        state.store.clone(),
        state.streams.hub.clone(),
        scope,
        request.resume.as_deref(),
    )
    .await
    .map_err(store_error)?;
    Ok(OpenedWatch {
        watch,
        expires_at: super::token_expiry(&principal),
        _admission: admission,
    })
}

/// The caller of a socket: from the upgrade's `Authorization` (admitted against the rate limit
/// with the upgrade), or from the token in its first message (browsers cannot set headers on a
/// WebSocket; admitted here), never both.
pub(super) fn first_message_caller(
    state: &AppState,
    principal: Option<Arc<Principal>>,
    token: Option<&str>,
) -> Result<Arc<Principal>, ApiError> {
    match (principal, token) {
        (Some(p), None) => Ok(p),
        (None, Some(token)) => {
            let header = format!("Bearer {token}");
            let principal = state
                .verifier
                .verify_cached(Some(&header), state.clock.unix_seconds())
                .map_err(|e| ApiError::unauthorized(e.to_string()))?;
            super::admit_presence_call(state, &principal)?;
            Ok(principal)
        }
        (Some(_), Some(_)) => Err(ApiError::bad_request(
            "Give the token once: in the Authorization header or in the first message.",
        )),
        (None, None) => Err(ApiError::unauthorized("The first message carries no token.")),
    }
}

/// Send events until the stream ends; ping to keep it open and to notice a dead peer.
async fn run_socket(mut socket: WebSocket, streams: &Streams, opened: OpenedWatch) {
    let OpenedWatch {
        mut watch,
        expires_at,
        _admission,
    } = opened;
    let period = streams.config.keep_alive;
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    let mut unanswered = 0u32;
    let mut shutdown = streams.shutdown_signal();
    let mut deadline = expiry(expires_at, crate::clock::SystemClock.now());
    enum Step {
        Event(Result<Event, crate::store::StoreError>),
        Incoming(Option<Result<Message, axum::Error>>),
        Ping,
        End(End),
    }
    loop {
        if *shutdown.borrow() {
            end_socket(&mut socket, End::Shutdown).await;
            return;
        }
        let step = tokio::select! {
            biased;
            _ = shutdown.changed() => Step::End(End::Shutdown),
            _ = expired(&mut deadline) => Step::End(End::TokenExpired),
            incoming = socket.recv() => Step::Incoming(incoming),
            event = watch.next() => Step::Event(event),
            _ = ping.tick() => Step::Ping,
        };
        match step {
            Step::Event(Ok(event)) => {
                if socket.send(Message::Text(ws_event(&event).into())).await.is_err() {
                    return;
                }
            }
            Step::Event(Err(e)) => {
                tracing::warn!(error = %e, "a stream could not read the change log; ending it");
                end_socket(&mut socket, End::Unavailable).await;
                return;
            }
            Step::Incoming(Some(Ok(Message::Pong(_)))) => unanswered = 0,
            Step::Incoming(Some(Ok(Message::Close(_)))) | Step::Incoming(None) | Step::Incoming(Some(Err(_))) => return,
            // Anything else from the client means nothing on a watch stream.
            Step::Incoming(Some(Ok(_))) => {}
            Step::Ping => {
                // Two pings without a pong: the peer is gone (or a proxy dropped it).
                if unanswered >= 2 {
                    return;
                }
                unanswered += 1;
                if socket
                    .send(Message::Ping(Bytes::from_static(b"presenced")))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            Step::End(why) => {
                end_socket(&mut socket, why).await;
                return;
            }
        }
    }
}

async fn end_socket(socket: &mut WebSocket, why: End) {
    end_with(socket, why.reason()).await;
}

/// End a socket the server closes: a final `end` message saying why, then a going-away close.
pub(super) async fn end_with(socket: &mut WebSocket, reason: &'static str) {
    let body = json!({ "type": "end", "reason": reason });
    let _ = socket.send(Message::Text(body.to_string().into())).await;
    let _ = socket
        .send(Message::Close(Some(CloseFrame {
            code: 1001,
            reason: reason.into(),
        })))
        .await;
}
