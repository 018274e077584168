//! Graph paths parsed into a typed `Endpoint`, so handlers never look at strings again.
//!
//! Graph routes one operation through several addressings (`/me/presence`, `/users/{id}/presence`,
//! `/communications/presences/{id}`) under `/v1.0` and `/beta`; parsing them here, segment by
//! segment, gives every malformed path the same clear 404/405 instead of a router's bare default.
use super::error::ApiError;
use axum::http::Method;
use percent_encoding::percent_decode_str;
use presence_core::UserId;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiVersion {
    V1,
    Beta,
}

impl ApiVersion {
    pub fn as_str(self) -> &'static str {
        match self {
            ApiVersion::V1 => "v1.0",
            ApiVersion::Beta => "beta",
        }
    }
}

/// Whose presence a request addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Me,
    User(UserId),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PresenceAction {
    SetPresence,
    ClearPresence,
    SetUserPreferredPresence,
    ClearUserPreferredPresence,
    SetStatusMessage,
    /// presenced extension: Graph derives out-of-office from mailboxes, which we do not have.
    SetOutOfOfficeSettings,
    SetManualLocation,
    SetAutomaticLocation,
    ClearAutomaticLocation,
    ClearLocation,
}

impl PresenceAction {
    const ALL: [PresenceAction; 10] = [
        PresenceAction::SetPresence,
        PresenceAction::ClearPresence,
        PresenceAction::SetUserPreferredPresence,
        PresenceAction::ClearUserPreferredPresence,
        PresenceAction::SetStatusMessage,
        PresenceAction::SetOutOfOfficeSettings,
        PresenceAction::SetManualLocation,
        PresenceAction::SetAutomaticLocation,
        PresenceAction::ClearAutomaticLocation,
        PresenceAction::ClearLocation,
    ];

    pub fn all() -> [PresenceAction; 10] {
        Self::ALL
    }

    /// The work-location actions, which Graph allows only to a signed-in user.
    pub fn is_work_location(self) -> bool {
        matches!(
            self,
            PresenceAction::SetManualLocation
                | PresenceAction::SetAutomaticLocation
                | PresenceAction::ClearAutomaticLocation
                | PresenceAction::ClearLocation
        )
    }

    pub fn name(self) -> &'static str {
        match self {
            PresenceAction::SetPresence => "setPresence",
            PresenceAction::ClearPresence => "clearPresence",
            PresenceAction::SetUserPreferredPresence => "setUserPreferredPresence",
            PresenceAction::ClearUserPreferredPresence => "clearUserPreferredPresence",
            PresenceAction::SetStatusMessage => "setStatusMessage",
            PresenceAction::SetOutOfOfficeSettings => "setOutOfOfficeSettings",
            PresenceAction::SetManualLocation => "setManualLocation",
            PresenceAction::SetAutomaticLocation => "setAutomaticLocation",
            PresenceAction::ClearAutomaticLocation => "clearAutomaticLocation",
            PresenceAction::ClearLocation => "clearLocation",
        }
    }

    fn parse(segment: &str) -> Option<Self> {
        // Graph treats path segments case-insensitively; so do SDKs that lower-case them.
        Self::ALL.into_iter().find(|a| a.name().eq_ignore_ascii_case(segment))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    GetPresence(Target),
    Action(Target, PresenceAction),
    GetPresencesByUserId,
    /// `GET` lists, `POST` creates.
    Subscriptions,
    /// `GET`, `PATCH`, `DELETE` one subscription.
    Subscription(String),
    Reauthorize(String),
    /// `…/communications/presences/$stream`: a watch stream (SSE, or WebSocket on `GET`). No
    /// user id can be `$stream` (ids cannot hold `$`), so the path cannot collide with one.
    Stream,
    /// `POST /$batch`: JSON batching.
    Batch,
    /// `GET …/presence/explain`: every live session, the preference and the rule that decided.
    Explain(Target),
    /// `GET /me/presence/$session`: a connection-bound client session (WebSocket).
    ClientSession,
}

impl Endpoint {
    /// A fixed, low-cardinality name for metrics: the endpoint kind, never a path with ids in it.
    pub fn name(&self) -> &'static str {
        match self {
            Endpoint::GetPresence(_) => "get_presence",
            Endpoint::Action(_, action) => action.name(),
            Endpoint::GetPresencesByUserId => "getPresencesByUserId",
            Endpoint::Subscriptions => "subscriptions",
            Endpoint::Subscription(_) => "subscription",
            Endpoint::Reauthorize(_) => "reauthorize",
            Endpoint::Stream => "stream",
            Endpoint::Batch => "batch",
            Endpoint::Explain(_) => "explain",
            Endpoint::ClientSession => "client_session",
        }
    }

    fn methods(&self) -> &'static [Method] {
        const GET: &[Method] = &[Method::GET];
        const POST: &[Method] = &[Method::POST];
        const LIST: &[Method] = &[Method::GET, Method::POST];
        const ONE: &[Method] = &[Method::GET, Method::PATCH, Method::DELETE];
        match self {
            Endpoint::GetPresence(_) | Endpoint::Explain(_) | Endpoint::ClientSession => GET,
            Endpoint::Action(..) | Endpoint::GetPresencesByUserId | Endpoint::Reauthorize(_) | Endpoint::Batch => POST,
            Endpoint::Subscriptions | Endpoint::Stream => LIST,
            Endpoint::Subscription(_) => ONE,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub version: ApiVersion,
    pub endpoint: Endpoint,
    /// The path form a presence was addressed by; a read's `@odata.context` follows it.
    pub addressing: Addressing,
}

/// How a request named the presence it reads or writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Addressing {
    /// `/me/presence` and `/users/{id}/presence`: Graph's context is `users('{id}')/presence`.
    Users,
    /// `/communications/presences/{id}`: Graph's context is `communications/presences`.
    Communications,
    /// Not a single presence (bulk reads, subscriptions).
    Other,
}

/// Parse a request line. Unknown paths are 404; known paths with the wrong method are 405;
/// a path id that is not a valid user id is 400.
pub fn parse(method: &Method, path: &str) -> Result<Route, ApiError> {
    let not_found = || ApiError::not_found(format!("Resource not found for the segment path '{}'.", truncate(path)));
    let trimmed = path.strip_suffix('/').unwrap_or(path);
    let mut segments = trimmed.strip_prefix('/').ok_or_else(not_found)?.split('/');
    let version = match segments.next() {
        Some(v) if v.eq_ignore_ascii_case("v1.0") => ApiVersion::V1,
        Some(v) if v.eq_ignore_ascii_case("beta") => ApiVersion::Beta,
        _ => return Err(not_found()),
    };
    // At most four segments after the version; more is no endpoint. (No Vec: this runs per request.)
    let mut rest = [""; 4];
    let mut count = 0;
    for segment in segments {
        if count == rest.len() {
            return Err(not_found());
        }
        rest[count] = segment;
        count += 1;
    }
    let is = |s: &str, lit: &str| s.eq_ignore_ascii_case(lit);
    let addressing = match rest[0] {
        first if is(first, "me") || is(first, "users") => Addressing::Users,
        first if is(first, "communications") && count >= 3 => Addressing::Communications,
        _ => Addressing::Other,
    };
    let endpoint = match &rest[..count] {
        [me, presence] if is(me, "me") && is(presence, "presence") => Endpoint::GetPresence(Target::Me),
        [me, presence, session] if is(me, "me") && is(presence, "presence") && is(session, "$session") => {
            Endpoint::ClientSession
        }
        [me, presence, explain] if is(me, "me") && is(presence, "presence") && is(explain, "explain") => {
            Endpoint::Explain(Target::Me)
        }
        [me, presence, action] if is(me, "me") && is(presence, "presence") => {
            Endpoint::Action(Target::Me, PresenceAction::parse(action).ok_or_else(not_found)?)
        }
        [users, id, presence] if is(users, "users") && is(presence, "presence") => {
            Endpoint::GetPresence(Target::User(user_id(id)?))
        }
        [users, id, presence, explain] if is(users, "users") && is(presence, "presence") && is(explain, "explain") => {
            Endpoint::Explain(Target::User(user_id(id)?))
        }
        [users, id, presence, action] if is(users, "users") && is(presence, "presence") => {
            let action = PresenceAction::parse(action).ok_or_else(not_found)?;
            Endpoint::Action(Target::User(user_id(id)?), action)
        }
        [comms, presences, stream]
            if is(comms, "communications") && is(presences, "presences") && is(stream, "$stream") =>
        {
            Endpoint::Stream
        }
        [comms, presences, id] if is(comms, "communications") && is(presences, "presences") => {
            Endpoint::GetPresence(Target::User(user_id(id)?))
        }
        [comms, presences, id, explain]
            if is(comms, "communications") && is(presences, "presences") && is(explain, "explain") =>
        {
            Endpoint::Explain(Target::User(user_id(id)?))
        }
        [comms, presences, id, action] if is(comms, "communications") && is(presences, "presences") => {
            let action = PresenceAction::parse(action).ok_or_else(not_found)?;
            Endpoint::Action(Target::User(user_id(id)?), action)
        }
        [comms, bulk] if is(comms, "communications") && is(bulk, "getPresencesByUserId") => {
            Endpoint::GetPresencesByUserId
        }
        [batch] if is(batch, "$batch") || is(batch, "%24batch") => Endpoint::Batch,
        [subs] if is(subs, "subscriptions") => Endpoint::Subscriptions,
        [subs, id] if is(subs, "subscriptions") => Endpoint::Subscription(subscription_id(id).ok_or_else(not_found)?),
        [subs, id, re] if is(subs, "subscriptions") && is(re, "reauthorize") => {
            Endpoint::Reauthorize(subscription_id(id).ok_or_else(not_found)?)
        }
        _ => return Err(not_found()),
    };
    let allowed = endpoint.methods();
    let head_as_get = *method == Method::HEAD && allowed.contains(&Method::GET);
    if !allowed.contains(method) && !head_as_get {
        let names: Vec<&str> = allowed.iter().map(Method::as_str).collect();
        return Err(ApiError::method_not_allowed(format!(
            "The HTTP method '{method}' is not allowed for this resource; use {}.",
            names.join(" or ")
        )));
    }
    Ok(Route {
        version,
        endpoint,
        addressing,
    })
}

fn user_id(raw: &str) -> Result<UserId, ApiError> {
    let decoded = percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| ApiError::invalid_argument("The user id in the path is not valid UTF-8."))?;
    UserId::parse(&decoded).map_err(|e| ApiError::invalid_argument(format!("Invalid user id in the path: {e}.")))
}

/// The metric name of a path that is no endpoint.
pub const UNMATCHED: &str = "unmatched";

/// The metric name a request gets (see [`Endpoint::name`]; the fixed routes are named here).
pub fn route_name(method: &Method, path: &str) -> &'static str {
    match path {
        "/healthz" => "healthz",
        "/readyz" => "readyz",
        "/metrics" => "metrics",
        "/openapi.json" => "openapi",
        _ => match super::keys::parse(path) {
            Some(key_path) => super::keys::route_name(&key_path),
            None if super::board::asset(path).is_some() => "board",
            None => parse(method, path).map_or(UNMATCHED, |r| r.endpoint.name()),
        },
    }
}

/// Subscription ids are ours (UUIDs); anything else cannot name one, so it is simply not found.
fn subscription_id(raw: &str) -> Option<String> {
    (!raw.is_empty() && raw.len() <= 64 && raw.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
        .then(|| raw.to_ascii_lowercase())
}

/// Paths are echoed in messages; keep them short so an error never reflects a huge input.
fn truncate(path: &str) -> String {
    path.chars().take(200).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(method: Method, path: &str) -> Endpoint {
        parse(&method, path).unwrap().endpoint
    }

    #[test]
    fn all_addressings_reach_the_same_endpoints() {
        let u = || Target::User(UserId::parse("u1").unwrap());
        assert_eq!(ok(Method::GET, "/v1.0/me/presence"), Endpoint::GetPresence(Target::Me));
        assert_eq!(ok(Method::GET, "/beta/users/u1/presence"), Endpoint::GetPresence(u()));
        assert_eq!(
            ok(Method::GET, "/v1.0/communications/presences/u1"),
            Endpoint::GetPresence(u())
        );
        assert_eq!(
            ok(Method::POST, "/v1.0/communications/presences/u1/setPresence"),
            Endpoint::Action(u(), PresenceAction::SetPresence)
        );
        assert_eq!(
            ok(Method::POST, "/V1.0/Users/u1/Presence/clearpresence"),
            Endpoint::Action(u(), PresenceAction::ClearPresence)
        );
        assert_eq!(
            ok(Method::POST, "/beta/communications/getPresencesByUserId"),
            Endpoint::GetPresencesByUserId
        );
    }

    #[test]
    fn explain_has_every_addressing_and_the_client_session_is_me_only() {
        let u = || Target::User(UserId::parse("u1").unwrap());
        assert_eq!(
            ok(Method::GET, "/v1.0/me/presence/explain"),
            Endpoint::Explain(Target::Me)
        );
        assert_eq!(
            ok(Method::GET, "/beta/users/u1/presence/Explain"),
            Endpoint::Explain(u())
        );
        assert_eq!(
            ok(Method::GET, "/v1.0/communications/presences/u1/explain"),
            Endpoint::Explain(u())
        );
        assert_eq!(
            parse(&Method::POST, "/v1.0/me/presence/explain").unwrap_err().status,
            405
        );
        assert_eq!(ok(Method::GET, "/v1.0/me/presence/$session"), Endpoint::ClientSession);
        assert_eq!(
            parse(&Method::GET, "/v1.0/users/u1/presence/$session")
                .unwrap_err()
                .status,
            404
        );
    }

    #[test]
    fn path_ids_are_percent_decoded_and_validated() {
        assert_eq!(
            ok(Method::GET, "/v1.0/users/alice%40contoso.com/presence"),
            Endpoint::GetPresence(Target::User(UserId::parse("alice@contoso.com").unwrap()))
        );
        assert_eq!(
            parse(&Method::GET, "/v1.0/users/a%2Fb/presence").unwrap_err().status,
            400
        );
        assert_eq!(parse(&Method::GET, "/v1.0/users/%FF/presence").unwrap_err().status, 400);
    }

    #[test]
    fn wrong_paths_and_methods() {
        assert_eq!(parse(&Method::GET, "/v2.0/me/presence").unwrap_err().status, 404);
        assert_eq!(
            parse(&Method::GET, "/v1.0/me/presence/extra/deep").unwrap_err().status,
            404
        );
        assert_eq!(
            parse(&Method::POST, "/v1.0/me/presence/explode").unwrap_err().status,
            404
        );
        assert_eq!(parse(&Method::POST, "/v1.0/me/presence").unwrap_err().status, 405);
        assert_eq!(
            parse(&Method::GET, "/v1.0/me/presence/setPresence").unwrap_err().status,
            405
        );
        assert_eq!(
            parse(&Method::DELETE, "/v1.0/communications/getPresencesByUserId")
                .unwrap_err()
                .status,
            405
        );
    }
}
