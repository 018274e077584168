//! The presence endpoints: one handler per operation, each converting its DTO to a core command
//! first (so every rejection is a Graph 400) and only then touching state.
use super::body;
use super::dto::{
    self, ClearPresenceBody, GetPresencesBody, PresenceDto, SetOutOfOfficeBody, SetPreferredBody, SetPresenceBody,
    SetStatusMessageBody,
};
use super::error::ApiError;
use super::routes::{Addressing, ApiVersion, PresenceAction, Target};
use super::select::{self, Selection};
use super::work_location;
use super::AppState;
use crate::auth::{Action, Denied, Principal};
use crate::service::ServiceError;
use crate::store::StoreError;
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use presence_core::{Command, CommandError, LocationLayer, UserId, UserKey};

/// Graph's documented maximum for one `getPresencesByUserId` call.
pub const MAX_BULK_IDS: usize = 650;

/// Resolve `/me` to the signed-in user; application tokens have none.
pub fn resolve(principal: &Principal, target: Target) -> Result<UserId, ApiError> {
    match target {
        Target::User(id) => Ok(id),
        Target::Me => principal
            .user
            .as_deref()
            .and_then(|u| UserId::parse(u).ok())
            .filter(|_| principal.is_delegated())
            .ok_or_else(|| ApiError::bad_request("/me request is only valid with delegated authentication flow.")),
    }
}

pub fn denied(d: Denied) -> ApiError {
    match d {
        Denied::NeedsUser => ApiError::bad_request("/me request is only valid with delegated authentication flow."),
        Denied::Forbidden(message) => ApiError::forbidden(message),
    }
}

fn tenant_of(principal: &Principal) -> Result<presence_core::TenantId, ApiError> {
    presence_core::TenantId::parse(&principal.tenant)
        .map_err(|e| ApiError::unauthorized(format!("The token's tenant is invalid: {e}.")))
}

pub fn user_key(principal: &Principal, user: UserId) -> Result<UserKey, ApiError> {
    Ok(UserKey::new(tenant_of(principal)?, user))
}

pub fn store_error(e: StoreError) -> ApiError {
    tracing::error!(error = %e, "store error");
    ApiError::unavailable("The presence store is temporarily unavailable; the change was not applied. Retry later.")
}

fn service_error(e: ServiceError) -> ApiError {
    match e {
        ServiceError::Command(CommandError::SessionNotFound(s)) => {
            ApiError::not_found(format!("The presence session '{s}' does not exist."))
        }
        ServiceError::Command(other) => ApiError::invalid_argument(other.to_string()),
        ServiceError::Store(e) => store_error(e),
    }
}

/// What a read's document looks like: its `@odata.context` (from the version, the addressing,
/// the host the caller used) and the `$select` projection, if any.
pub struct ReadShape<'a> {
    pub version: ApiVersion,
    pub addressing: Addressing,
    pub host: Option<&'a str>,
    pub select: Option<&'a Selection>,
}

impl ReadShape<'_> {
    /// Graph's context for one presence: `…/$metadata#users('{id}')/presence/$entity`, or
    /// `…/$metadata#communications/presences/$entity` when addressed that way; a `$select`
    /// names its properties (`presence(availability,activity)`).
    fn entity_context(&self, user: &UserId) -> Option<String> {
        // Concatenated rather than `format!`ed: this is built for every read.
        let (prefix, host) = super::base_url::for_host(self.host)?;
        let projection = self.select.map(Selection::context_suffix).unwrap_or_default();
        let parts: [&str; 8] = match self.addressing {
            Addressing::Communications => [
                &*prefix,
                host,
                "/",
                self.version.as_str(),
                "/$metadata#communications/presences",
                &projection,
                "/$entity",
                "",
            ],
            _ => [
                &*prefix,
                host,
                "/",
                self.version.as_str(),
                "/$metadata#users('",
                user.as_str(),
                "')/presence",
                &projection,
            ],
        };
        let mut context = String::with_capacity(parts.iter().map(|p| p.len()).sum::<usize>() + 8);
        parts.iter().for_each(|p| context.push_str(p));
        if self.addressing != Addressing::Communications {
            context.push_str("/$entity");
        }
        Some(context)
    }

    /// `getPresencesByUserId` answers a collection of presences.
    fn collection_context(&self) -> Option<String> {
        super::base_url::for_host(self.host).map(|(prefix, host)| {
            format!(
                "{}{host}/{}/$metadata#Collection(microsoft.graph.presence)",
                &*prefix,
                self.version.as_str()
            )
        })
    }
}

/// Only a delegated caller reading their own presence sees their status message's dates.
fn is_self(principal: &Principal, user: &UserId) -> bool {
    principal.is_delegated() && principal.user.as_deref() == Some(user.as_str())
}

pub async fn get(
    state: &AppState,
    principal: &Principal,
    shape: ReadShape<'_>,
    target: Target,
) -> Result<Response, ApiError> {
    let user = resolve(principal, target)?;
    principal
        .can(Action::ReadPresence, Some(user.as_str()))
        .map_err(denied)?;
    let view = state
        .service
        .read(&user_key(principal, user.clone())?)
        .await
        .map_err(store_error)?;
    let context = shape.entity_context(&user);
    let dto = PresenceDto::from_view(&user, view, is_self(principal, &user), context);
    Ok(super::written_json_response(StatusCode::OK, 512, |out| {
        match shape.select {
            None => dto.write_json(out),
            Some(selection) => select::write(&dto, selection, out),
        }
    }))
}

pub async fn get_many(
    state: &AppState,
    principal: &Principal,
    shape: ReadShape<'_>,
    headers: &HeaderMap,
    bytes: &Bytes,
) -> Result<Response, ApiError> {
    principal.can(Action::ReadPresenceBulk, None).map_err(denied)?;
    let request: GetPresencesBody = body::required(body::json(headers, bytes)?)?;
    let ids = request
        .ids
        .ok_or_else(|| ApiError::invalid_argument("[Ids]: The Ids field is required."))?;
    if ids.is_empty() || ids.len() > MAX_BULK_IDS {
        return Err(ApiError::invalid_argument(format!(
            "[Ids]: between 1 and {MAX_BULK_IDS} user ids are supported per request (got {}).",
            ids.len()
        )));
    }
    let mut users: Vec<UserId> = Vec::with_capacity(ids.len());
    let mut seen = std::collections::HashSet::with_capacity(ids.len());
    for (i, raw) in ids.iter().enumerate() {
        let id = UserId::parse(raw).map_err(|e| ApiError::invalid_argument(format!("[Ids][{i}]: {e}.")))?;
        // Duplicates are answered once, in first-seen order: one presence per user. A set, not a
        // scan of `users`, keeps 650 ids linear.
        if seen.insert(id.clone()) {
            users.push(id);
        }
    }
    let tenant = tenant_of(principal)?;
    let keys: Vec<UserKey> = users.iter().map(|u| UserKey::new(tenant.clone(), u.clone())).collect();
    // One store call: on Redis, one round trip per partition touched rather than one per id.
    let views = state.service.read_many(&keys).await.map_err(store_error)?;
    let value: Vec<PresenceDto> = users
        .iter()
        .zip(views)
        .map(|(user, view)| PresenceDto::from_view(user, view, is_self(principal, user), None))
        .collect();
    // Written straight from the DTOs: building a `serde_json::Value` tree first doubled the cost.
    let hint = 300 * value.len() + 96;
    let context = shape.collection_context();
    Ok(super::written_json_response(StatusCode::OK, hint, |out| {
        dto::write_presence_list(context.as_deref(), &value, shape.select, out)
    }))
}

pub async fn action(
    state: &AppState,
    principal: &Principal,
    target: Target,
    action: PresenceAction,
    headers: &HeaderMap,
    bytes: &Bytes,
) -> Result<Response, ApiError> {
    let user = resolve(principal, target)?;
    if action.is_work_location() {
        principal
            .can(Action::WriteWorkLocation, Some(user.as_str()))
            .map_err(denied)?;
    } else {
        principal
            .can_write(Some(user.as_str()), state.delegated_writes_to_others)
            .map_err(denied)?;
    }
    let command = command(state, action, headers, bytes, principal.app.as_deref())?;
    state
        .service
        .execute(&user_key(principal, user)?, command)
        .await
        .map_err(service_error)?;
    Ok(StatusCode::OK.into_response())
}

fn command(
    state: &AppState,
    action: PresenceAction,
    headers: &HeaderMap,
    bytes: &Bytes,
    application: Option<&str>,
) -> Result<Command, ApiError> {
    let timing = state.service.timing();
    let range = |e: presence_core::TimingError| ApiError::invalid_argument(e.to_string());
    Ok(match action {
        PresenceAction::SetPresence => {
            let b: SetPresenceBody = body::required(body::json(headers, bytes)?)?;
            let session = dto::session_id(b.session_id.as_deref())?;
            let state = b.session_state()?;
            let expiration = timing
                .session_expiration(dto::duration(b.expiration_duration.as_deref())?)
                .map_err(range)?;
            Command::SetPresence {
                session,
                state,
                expiration,
                application: application.map(str::to_owned),
            }
        }
        PresenceAction::ClearPresence => {
            let b: ClearPresenceBody = body::required(body::json(headers, bytes)?)?;
            Command::ClearPresence {
                session: dto::session_id(b.session_id.as_deref())?,
            }
        }
        PresenceAction::SetUserPreferredPresence => {
            let b: SetPreferredBody = body::required(body::json(headers, bytes)?)?;
            let state = b.preferred_state()?;
            let expiration = timing
                .preferred_expiration(state, dto::duration(b.expiration_duration.as_deref())?)
                .map_err(range)?;
            Command::SetPreferred { state, expiration }
        }
        PresenceAction::ClearUserPreferredPresence => {
            // Graph documents an empty object and its example sends no body; accept both.
            let _: Option<serde_json::Map<String, serde_json::Value>> = body::json(headers, bytes)?;
            Command::ClearPreferred
        }
        PresenceAction::SetStatusMessage => {
            let b: SetStatusMessageBody = body::required(body::json(headers, bytes)?)?;
            Command::SetStatusMessage(b.into_input()?)
        }
        PresenceAction::SetOutOfOfficeSettings => {
            let b: SetOutOfOfficeBody = body::required(body::json(headers, bytes)?)?;
            Command::SetOutOfOffice(b.into_settings()?)
        }
        PresenceAction::SetManualLocation => {
            work_location::set(LocationLayer::Manual, headers, bytes, &timing.work_location_zone)?
        }
        PresenceAction::SetAutomaticLocation => {
            work_location::set(LocationLayer::Automatic, headers, bytes, &timing.work_location_zone)?
        }
        PresenceAction::ClearAutomaticLocation => work_location::clear(false, headers, bytes)?,
        PresenceAction::ClearLocation => work_location::clear(true, headers, bytes)?,
    })
}
