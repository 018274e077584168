//! `GET /me/presence/$session`: a connection-bound client session over WebSocket.
//!
//! The client says hello (device, availability, activity; the session id of an earlier
//! connection to take it back within its grace), gets a welcome with its session id, and then
//! sets its state and reports activity over the socket while it receives its user's folded
//! presence whenever it changes. When the socket closes or stops answering pings, the session
//! ends after the grace unless the client comes back. The protocol is in
//! `docs/client-sessions.md`.
use super::dto::{pair, PresenceDto};
use super::error::ApiError;
use super::presence::{denied, resolve, store_error, user_key};
use super::routes::Target;
use super::stream::{end_with, expired, expiry, first_message_caller, refuse, upgrade, Deadline, FIRST_MESSAGE_WITHIN};
use super::AppState;
use crate::auth::{Action, Principal};
use crate::client_session::Hold;
use crate::service::ServiceError;
use crate::store::Store;
use crate::stream::hub::Scope;
use crate::stream::watch::{Event, Watch};
use crate::stream::Admission;
use axum::body::Bytes;
use axum::extract::ws::{Message, WebSocket};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::Response;
use jiff::SignedDuration;
use presence_core::{Command, CommandError, Device, SessionId, SessionState, UserKey};
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Largest message a client may send (a hello with a token is the largest).
const MAX_MESSAGE: usize = 16 * 1024;

/// A client's message; `type` says which.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ClientMessage {
    #[serde(rename = "type")]
    kind: String,
    token: Option<String>,
    device: Option<String>,
    session_id: Option<String>,
    availability: Option<String>,
    activity: Option<String>,
}

fn message(text: &str) -> Result<ClientMessage, ApiError> {
    serde_json::from_str(text)
        .map_err(|e| ApiError::bad_request(format!("The message is not a client-session message: {e}.")))
}

/// Accept a client-session socket. `principal` is the caller if the upgrade carried
/// `Authorization`; otherwise the hello must carry the token.
pub async fn websocket(state: &AppState, principal: Option<Arc<Principal>>, parts: Parts) -> Response {
    let state = state.clone();
    upgrade(parts, MAX_MESSAGE, move |socket| serve(socket, state, principal)).await
}

/// A session this socket holds, with what it needs to write for it.
struct Connected {
    key: UserKey,
    hold: Hold,
    state: SessionState,
    device: Device,
    watch: Watch<Store>,
    expires_at: Option<jiff::Timestamp>,
    _tracked: Admission,
}

async fn serve(mut socket: WebSocket, state: AppState, principal: Option<Arc<Principal>>) {
    let connected = match hello(&mut socket, &state, principal).await {
        Ok(c) => c,
        Err(e) => return refuse(&mut socket, e).await,
    };
    let key = connected.key.clone();
    let hold_outcome = run(&mut socket, &state, connected).await;
    if let Some(hold) = hold_outcome {
        let grace = SignedDuration::try_from(state.clients.config.grace).unwrap_or(SignedDuration::from_secs(30));
        let session = hold.session().clone();
        let disconnect = state
            .service
            .execute(&key, Command::DisconnectClient { session, grace });
        if let Some(Err(e)) = hold.release(disconnect).await {
            // The session then ends when its grace would have, after the next restart at worst.
            tracing::warn!(error = %e, "a client session's disconnect could not be written");
        }
    }
}

/// Read the hello, authenticate, check, connect the session and send the welcome.
async fn hello(
    socket: &mut WebSocket,
    state: &AppState,
    principal: Option<Arc<Principal>>,
) -> Result<Connected, ApiError> {
    let first = match tokio::time::timeout(FIRST_MESSAGE_WITHIN, socket.recv()).await {
        Ok(Some(Ok(Message::Text(text)))) => text,
        Ok(_) => return Err(ApiError::bad_request("The first message must be a JSON text message.")),
        Err(_) => return Err(ApiError::bad_request("No hello within 10 seconds.")),
    };
    let hello = message(first.as_str())?;
    if hello.kind != "hello" {
        return Err(ApiError::bad_request("The first message's type must be \"hello\"."));
    }
    let principal = first_message_caller(state, principal, hello.token.as_deref())?;
    // A client session is the signed-in user's own: delegated tokens only.
    let user = resolve(&principal, Target::Me)?;
    principal
        .can(Action::WritePresence, Some(user.as_str()))
        .map_err(denied)?;
    let key = user_key(&principal, user)?;
    let device = Device::parse(hello.device.as_deref().unwrap_or(""))
        .map_err(|e| ApiError::invalid_argument(format!("[Device]: {e}.")))?;
    let (availability, activity) = pair(hello.availability.as_deref(), hello.activity.as_deref())?;
    let session_state =
        SessionState::new(availability, activity).map_err(|e| ApiError::invalid_argument(e.to_string()))?;
    let session = match hello.session_id.as_deref() {
        Some(raw) => SessionId::parse(raw).map_err(|e| ApiError::invalid_argument(format!("[SessionId]: {e}.")))?,
        None => SessionId::parse(&uuid::Uuid::new_v4().to_string())
            .map_err(|e| ApiError::invalid_argument(format!("[SessionId]: {e}.")))?,
    };
    let hold = state.clients.hold(&key, &session).map_err(|e| {
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "TooManyRequests",
            format!("{e}; close one first."),
        )
    })?;
    let connect = Command::ConnectClient {
        session: session.clone(),
        device: device.clone(),
        epoch: state.clients.epoch.clone(),
        state: session_state,
    };
    hold.connect(state.service.execute(&key, connect))
        .await
        .map_err(command_error)?;
    let mut watch = Watch::open(
        state.store.clone(),
        state.streams.hub.clone(),
        Scope::Users(vec![key.clone()]),
        None,
    )
    .await
    .map_err(store_error)?;
    // The watch opens with the user's presence as it is now, the connect included.
    let presence = presence_json(watch.next().await.map_err(store_error)?);
    let welcome = format!(
        "{{\"type\":\"welcome\",\"sessionId\":{},\"graceSeconds\":{},\"presence\":{presence}}}",
        json!(session.as_str()),
        state.clients.config.grace.as_secs(),
    );
    socket
        .send(Message::Text(welcome.into()))
        .await
        .map_err(|_| ApiError::bad_request("The socket closed during the hello."))?;
    Ok(Connected {
        key,
        hold,
        state: session_state,
        device,
        watch,
        expires_at: super::token_expiry(&principal),
        _tracked: state.streams.track(),
    })
}

fn command_error(e: ServiceError) -> ApiError {
    match e {
        ServiceError::Command(c) => ApiError::invalid_argument(c.to_string()),
        ServiceError::Store(e) => store_error(e),
    }
}

/// The JSON of the user's own presence in a watch event, as `GET /me/presence` shows it
/// (`null` for an empty snapshot), written once straight into the message.
fn presence_json(event: Event) -> String {
    let (key, view) = match event {
        Event::Snapshot { presences, .. } => match presences.into_iter().next() {
            Some(p) => p,
            None => return "null".to_owned(),
        },
        Event::Presence { key, view, .. } => (key, view),
    };
    let mut out = Vec::with_capacity(512);
    // Our own DTO always serialises, and to UTF-8.
    let _ = PresenceDto::from_view(&key.user, view, true, None).write_json(&mut out);
    String::from_utf8(out).unwrap_or_else(|_| "null".to_owned())
}

/// What the socket owes the store: the latest state set and whether activity was reported,
/// written at most once per their intervals.
#[derive(Default)]
struct Pending {
    state: Option<SessionState>,
    activity: bool,
    last_set: Option<Instant>,
    last_write: Option<Instant>,
}

impl Pending {
    /// When the owed writes may go (`None`: nothing owed).
    fn due(&self, set_every: Duration, activity_every: Duration) -> Option<Instant> {
        let after = |last: Option<Instant>, every: Duration| last.map_or_else(Instant::now, |t| t + every);
        let set = self.state.map(|_| after(self.last_set, set_every));
        let activity = self.activity.then(|| after(self.last_write, activity_every));
        set.into_iter().chain(activity).min()
    }
}

enum Why {
    Shutdown,
    TokenExpired,
    Replaced,
    Unavailable,
    Bye,
    Gone,
}

impl Why {
    fn reason(&self) -> Option<&'static str> {
        match self {
            Why::Shutdown => Some("shutdown"),
            Why::TokenExpired => Some("tokenExpired"),
            Why::Replaced => Some("replaced"),
            Why::Unavailable => Some("serviceUnavailable"),
            Why::Bye | Why::Gone => None,
        }
    }
}

/// Serve the session until the socket ends; returns the hold if this socket should start the
/// session's grace (not when another socket took it over, nor after `bye`, which ended it).
async fn run(socket: &mut WebSocket, state: &AppState, mut c: Connected) -> Option<Hold> {
    let config = &state.clients.config;
    let activity_every = config
        .activity_every
        .min(Duration::try_from(state.service.timing().fade_after / 4).unwrap_or(config.activity_every));
    let period = state.streams.config.keep_alive;
    let mut ping = tokio::time::interval_at(Instant::now() + period, period);
    let mut unanswered = 0u32;
    let mut shutdown = state.streams.shutdown_signal();
    let mut deadline = expiry(c.expires_at, crate::clock::SystemClock.now());
    let mut pending = Pending {
        last_set: Some(Instant::now()),
        last_write: Some(Instant::now()),
        ..Pending::default()
    };
    let replaced = c.hold.replaced.clone();
    let why = loop {
        let mut flush: Option<Deadline> = pending
            .due(config.set_every, activity_every)
            .map(|at| Box::pin(tokio::time::sleep_until(at)));
        if *shutdown.borrow() {
            break Why::Shutdown;
        }
        tokio::select! {
            biased;
            _ = shutdown.changed() => break Why::Shutdown,
            () = replaced.notified() => break Why::Replaced,
            () = expired(&mut deadline) => break Why::TokenExpired,
            () = expired(&mut flush) => {
                if let Err(why) = write_pending(state, &mut c, &mut pending).await {
                    break why;
                }
            }
            incoming = socket.recv() => {
                let text = match incoming {
                    Some(Ok(Message::Text(text))) => text,
                    Some(Ok(Message::Pong(_))) => {
                        unanswered = 0;
                        continue;
                    }
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break Why::Gone,
                    Some(Ok(_)) => continue,
                };
                match on_message(text.as_str(), &mut pending, &c) {
                    Ok(Some(Why::Bye)) => break Why::Bye,
                    Ok(_) => {}
                    Err(e) => {
                        let body = json!({ "type": "error", "error": { "code": e.code, "message": e.message } });
                        if socket.send(Message::Text(body.to_string().into())).await.is_err() {
                            break Why::Gone;
                        }
                    }
                }
            }
            event = c.watch.next() => {
                let presence = match event {
                    Ok(event) => presence_json(event),
                    Err(e) => {
                        tracing::warn!(error = %e, "a client session could not read the change log; ending its socket");
                        break Why::Unavailable;
                    }
                };
                let body = format!("{{\"type\":\"presence\",\"presence\":{presence}}}");
                if socket.send(Message::Text(body.into())).await.is_err() {
                    break Why::Gone;
                }
            }
            _ = ping.tick() => {
                // Two pings without a pong: the peer is gone (or a proxy dropped it).
                if unanswered >= 2 {
                    break Why::Gone;
                }
                unanswered += 1;
                if socket.send(Message::Ping(Bytes::from_static(b"presenced"))).await.is_err() {
                    break Why::Gone;
                }
            }
        }
    };
    // What was set last still counts: it is written before the grace starts.
    if !matches!(why, Why::Replaced) && pending.state.is_some() {
        let _ = write_pending(state, &mut c, &mut pending).await;
    }
    if let Some(reason) = why.reason() {
        end_with(socket, reason).await;
    }
    match why {
        Why::Replaced => None,
        Why::Bye => {
            // `bye` ends the session at once: a grace of zero.
            let session = c.hold.session().clone();
            let end = state.service.execute(
                &c.key,
                Command::DisconnectClient {
                    session,
                    grace: SignedDuration::ZERO,
                },
            );
            if let Some(Err(e)) = c.hold.release(end).await {
                tracing::warn!(error = %e, "a client session's bye could not be written");
            }
            let _ = socket.send(Message::Close(None)).await;
            None
        }
        _ => Some(c.hold),
    }
}

/// Note what a message asks; writes happen when [`Pending::due`] says.
fn on_message(text: &str, pending: &mut Pending, c: &Connected) -> Result<Option<Why>, ApiError> {
    let m = message(text)?;
    match m.kind.as_str() {
        "set" => {
            let (availability, activity) = pair(m.availability.as_deref(), m.activity.as_deref())?;
            let state =
                SessionState::new(availability, activity).map_err(|e| ApiError::invalid_argument(e.to_string()))?;
            // The state already stored, with nothing else owed, is activity: it only restarts
            // the fade, so it waits for the activity interval instead of the set interval.
            if state == c.state && pending.state.is_none() {
                pending.activity = true;
            } else {
                pending.state = Some(state);
            }
            Ok(None)
        }
        "activity" => {
            pending.activity = true;
            Ok(None)
        }
        "bye" => Ok(Some(Why::Bye)),
        other => Err(ApiError::bad_request(format!(
            "Unknown message type '{}' (a client session takes set, activity and bye).",
            other.chars().take(32).collect::<String>()
        ))),
    }
}

/// Write what is owed: the latest state set, else an activity report.
async fn write_pending(state: &AppState, c: &mut Connected, pending: &mut Pending) -> Result<(), Why> {
    let session = c.hold.session().clone();
    let now = Instant::now();
    let command = match pending.state.take() {
        Some(s) => {
            pending.last_set = Some(now);
            c.state = s;
            Command::SetClientState { session, state: s }
        }
        None => Command::ClientActivity { session },
    };
    pending.activity = false;
    pending.last_write = Some(now);
    match state.service.execute(&c.key, command).await {
        Ok(()) => Ok(()),
        // The session was ended behind this socket's back (a `bye` of a socket that held it
        // before): connect it again as it stands.
        Err(ServiceError::Command(CommandError::SessionNotFound(_))) => {
            let connect = Command::ConnectClient {
                session: c.hold.session().clone(),
                device: c.device.clone(),
                epoch: state.clients.epoch.clone(),
                state: c.state,
            };
            c.hold
                .connect(state.service.execute(&c.key, connect))
                .await
                .map_err(|_| Why::Unavailable)
        }
        Err(ServiceError::Command(e)) => {
            tracing::warn!(error = %e, "a client session's write was refused");
            Ok(())
        }
        Err(ServiceError::Store(e)) => {
            tracing::warn!(error = %e, "a client session's write failed; ending its socket");
            Err(Why::Unavailable)
        }
    }
}
