//! The HTTP edge: request context, routing, authentication, and the Graph handlers.
//!
//! [`EntryService`] hands every request to [`request_context::entry`] (request ids, metrics, error
//! bodies), which sends the fixed routes to [`health`] (the board's files among them, [`board`])
//! and everything else to [`graph`]: that parses
//! the path into a typed [`routes::Endpoint`], authenticates, reads the body within limits and
//! dispatches to one handler per operation. Errors of every layer become one [`error::ApiError`],
//! rendered as Graph's JSON.
pub mod base_url;
pub mod batch;
pub mod board;
pub mod body;
pub mod client_session;
pub mod dto;
pub mod error;
pub mod explain;
pub mod health;
pub mod keys;
pub mod openapi;
pub mod presence;
pub mod rate_limit;
pub mod request_context;
pub mod routes;
pub mod select;
pub mod stream;
pub mod subscriptions;
pub mod work_location;

use crate::auth::{Principal, Verifier};
use crate::clock::SystemClock;
use crate::service::{PresenceService, SubscriptionService};
use crate::store::Store;
use crate::stream::Streams;
use axum::extract::Request;
use axum::http::{header, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use error::ApiError;
use routes::Endpoint;
use std::future::Future;
use std::sync::Arc;

#[derive(Clone)]
pub struct AppState {
    pub service: Arc<PresenceService>,
    pub subscriptions: Arc<SubscriptionService>,
    /// The store, for readiness and the gauges `/metrics` reads; requests go through the services.
    pub store: Store,
    pub verifier: Arc<Verifier>,
    pub clock: SystemClock,
    /// `None` when throttling is off.
    pub rate_limiter: Option<Arc<rate_limit::RateLimiter>>,
    /// Watch streams: the hub, their limits and their shutdown.
    pub streams: Arc<Streams>,
    /// The client sessions this process's sockets hold.
    pub clients: Arc<crate::client_session::ClientSessions>,
    /// The operator's switch letting delegated `Presence.ReadWrite` tokens change other users'
    /// presence (off: they change their own only).
    pub delegated_writes_to_others: bool,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Signs rich notifications' `validationTokens`; its public key is served by `keys`.
    pub validation_tokens: Arc<crate::notify::validation_token::ValidationTokenSigner>,
}

/// The service `axum::serve` runs: every request goes to `request_context::entry`, which routes
/// by itself. A plain service rather than an axum `Router` with one fallback: the router's
/// per-request work (route table walk, URL-parameter map, handler clone, state clone) measured
/// ~4% of a read's CPU for nothing we use.
#[derive(Clone)]
pub struct EntryService(Arc<AppState>);

pub fn service(state: AppState) -> EntryService {
    EntryService(Arc::new(state))
}

impl tower_service::Service<Request> for EntryService {
    type Response = Response;
    type Error = std::convert::Infallible;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request) -> Self::Future {
        Box::pin(request_context::entry(self.0.clone(), request))
    }
}

/// A Graph request: the endpoint's metric name and its response.
// Not an `async fn`: that keeps its arguments twice in its future (as arguments and as locals),
// and every request's future is allocated and copied per request; the request is taken apart first.
fn graph(state: &AppState, request: Request) -> impl Future<Output = (&'static str, Response)> + Send + '_ {
    let (parts, body) = request.into_parts();
    let route = routes::parse(&parts.method, parts.uri.path());
    async move {
        let route = match route {
            Ok(route) => route,
            Err(e) => return (routes::UNMATCHED, e.into_response()),
        };
        let name = route.endpoint.name();
        let response = match dispatch(state, route, parts, body).await {
            Ok(response) => response,
            Err(e) => e.into_response(),
        };
        (name, response)
    }
}

/// Serialise a response body into one buffer sized up front: axum's `Json` starts at 128 bytes
/// and regrows, which showed in read profiles.
pub fn json_response<T: serde::Serialize>(status: StatusCode, value: &T, size_hint: usize) -> Response {
    written_json_response(status, size_hint, |buf| serde_json::to_writer(buf, value))
}

/// A JSON response whose body `write` appends to a buffer of `size_hint` bytes.
pub fn written_json_response(
    status: StatusCode,
    size_hint: usize,
    write: impl FnOnce(&mut Vec<u8>) -> Result<(), serde_json::Error>,
) -> Response {
    let mut buf = Vec::with_capacity(size_hint);
    match write(&mut buf) {
        Ok(()) => (status, [(header::CONTENT_TYPE, "application/json")], buf).into_response(),
        Err(e) => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalServerError",
            format!("The response could not be encoded: {e}"),
        )
        .into_response(),
    }
}

async fn dispatch(
    state: &AppState,
    route: routes::Route,
    parts: axum::http::request::Parts,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    // Two Authorization headers would let a proxy and the server disagree about who is calling.
    if parts.headers.get_all(header::AUTHORIZATION).iter().count() > 1 {
        return Err(ApiError::unauthorized(
            "The request has more than one Authorization header.",
        ));
    }
    let authorization = parts.headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    // A browser cannot set headers on a WebSocket: a stream socket may bring its token in its
    // first message instead, and is authenticated then (`stream::websocket`).
    if authorization.is_none() && stream::is_upgrade(&parts) {
        match route.endpoint {
            Endpoint::Stream => return Ok(Box::pin(stream::websocket(state, None, parts)).await),
            Endpoint::ClientSession => return Ok(Box::pin(client_session::websocket(state, None, parts)).await),
            _ => {}
        }
    }
    let principal = state
        .verifier
        .verify_cached(authorization, state.clock.unix_seconds())
        .map_err(|e| ApiError::unauthorized(e.to_string()))?;
    // Every API call counts against the application's budget; subscription calls too, since a
    // creation sends a validation handshake out. A `$batch` itself does not: each of its steps
    // is admitted as the request of its own it stands for.
    if route.endpoint != Endpoint::Batch {
        admit_presence_call(state, &principal)?;
    }
    match route.endpoint {
        Endpoint::GetPresence(target) => {
            get_presence(state, &principal, (route.version, route.addressing), target, &parts).await
        }
        // Every other endpoint's future is boxed: a request's future is as large as its largest
        // branch, and writes (which await the store) and subscription handlers (which await a
        // webhook handshake) made every request's future ~4.7 KB, allocated and copied per
        // request, reads included.
        _ => Box::pin(dispatch_endpoint(state, route, principal, parts, body)).await,
    }
}

/// A presence read: `dispatch`'s unboxed hot path, and `dispatch_endpoint`'s arm for the same.
async fn get_presence(
    state: &AppState,
    principal: &Principal,
    (version, addressing): (routes::ApiVersion, routes::Addressing),
    target: routes::Target,
    parts: &axum::http::request::Parts,
) -> Result<Response, ApiError> {
    let host = parts.headers.get(header::HOST).and_then(|v| v.to_str().ok());
    let select = select::parse(parts.uri.query())?;
    let shape = presence::ReadShape {
        version,
        addressing,
        host,
        select: select.as_ref(),
    };
    presence::get(state, principal, shape, target).await
}

/// Serve an authenticated, admitted request (`dispatch` short-cuts presence reads, whose future is
/// small, past the box this one's future is put in).
async fn dispatch_endpoint(
    state: &AppState,
    route: routes::Route,
    principal: Arc<Principal>,
    parts: axum::http::request::Parts,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    match route.endpoint {
        Endpoint::GetPresence(target) => {
            get_presence(state, &principal, (route.version, route.addressing), target, &parts).await
        }
        Endpoint::Action(target, action) => {
            let bytes = body::read(&parts.headers, body).await?;
            presence::action(state, &principal, target, action, &parts.headers, &bytes).await
        }
        Endpoint::GetPresencesByUserId => {
            let bytes = body::read(&parts.headers, body).await?;
            let host = parts.headers.get(header::HOST).and_then(|v| v.to_str().ok());
            let select = select::parse(parts.uri.query())?;
            let shape = presence::ReadShape {
                version: route.version,
                addressing: route.addressing,
                host,
                select: select.as_ref(),
            };
            presence::get_many(state, &principal, shape, &parts.headers, &bytes).await
        }
        Endpoint::Subscriptions if parts.method == Method::POST => {
            let bytes = body::read(&parts.headers, body).await?;
            subscriptions::create(state, &principal, route.version, &parts.headers, &bytes).await
        }
        Endpoint::Subscriptions => subscriptions::list(state, &principal, route.version, parts.uri.query()).await,
        Endpoint::Subscription(id) if parts.method == Method::PATCH => {
            let bytes = body::read(&parts.headers, body).await?;
            subscriptions::update(state, &principal, route.version, &id, &parts.headers, &bytes).await
        }
        Endpoint::Subscription(id) if parts.method == Method::DELETE => {
            subscriptions::delete(state, &principal, &id).await
        }
        Endpoint::Subscription(id) => subscriptions::get(state, &principal, route.version, &id).await,
        Endpoint::Reauthorize(id) => subscriptions::reauthorize(state, &principal, &id).await,
        Endpoint::Stream if stream::is_upgrade(&parts) => Ok(stream::websocket(state, Some(principal), parts).await),
        Endpoint::Stream => {
            let bytes = if parts.method == Method::POST {
                body::read(&parts.headers, body).await?
            } else {
                axum::body::Bytes::new()
            };
            let expires = token_expiry(&principal);
            stream::sse(state, &principal, &parts, &bytes, expires).await
        }
        Endpoint::Batch => batch::handle(state, route.version, &parts.headers, body).await,
        Endpoint::Explain(target) => explain::get(state, &principal, target).await,
        Endpoint::ClientSession if stream::is_upgrade(&parts) => {
            Ok(client_session::websocket(state, Some(principal), parts).await)
        }
        Endpoint::ClientSession => Err(ApiError::bad_request(
            "A client session is a WebSocket: send the upgrade (see docs/client-sessions.md).",
        )),
    }
}

/// Count a call against the application's rate limit (presence reads, writes, bulk reads,
/// subscription calls and opening a stream share one budget).
pub fn admit_presence_call(state: &AppState, principal: &Principal) -> Result<(), ApiError> {
    if let Some(limiter) = &state.rate_limiter {
        let app = principal.app.as_deref().unwrap_or("");
        limiter
            .check(&principal.tenant, app, state.clock.now())
            .map_err(ApiError::too_many_requests)?;
    }
    Ok(())
}

/// When the caller's token expires: a stream ends then, with a final message.
pub fn token_expiry(principal: &Principal) -> Option<jiff::Timestamp> {
    principal.expires_at.and_then(|s| jiff::Timestamp::from_second(s).ok())
}
