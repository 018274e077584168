//! `GET …/presence/explain`: why a user shows what they show. Every live session (kind, where it
//! came from, state, stage, deadlines), the preferred presence, and the rule that decided. The
//! folded result comes from the same core function as every read's (`UserPresence::explain`).
use super::error::ApiError;
use super::presence::{denied, resolve, store_error, user_key};
use super::routes::Target;
use super::AppState;
use crate::auth::{Action, Principal};
use crate::graph_time;
use axum::http::StatusCode;
use axum::response::Response;
use jiff::Timestamp;
use presence_core::origin::Origin;
use presence_core::{FadeStage, Rule, Session, UserId, UserPresence};
use schemars::JsonSchema;
use serde::Serialize;

#[derive(Debug, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExplanationDto {
    pub id: String,
    pub availability: &'static str,
    pub activity: &'static str,
    /// Which rule decided: `noSession`, `preferred`, `onlySession` or `highestSession`.
    pub rule: &'static str,
    /// The session that decided, for the two session rules.
    pub deciding_session_id: Option<String>,
    /// The rule in a sentence, for people.
    pub reason: String,
    pub preferred: Option<PreferredDto>,
    pub sessions: Vec<SessionDto>,
    /// The instant the explanation describes.
    pub evaluated_at: String,
}

#[derive(Debug, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PreferredDto {
    pub availability: &'static str,
    pub activity: &'static str,
    pub expires_at: String,
}

#[derive(Debug, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SessionDto {
    pub id: String,
    /// `application` (set by `setPresence`) or `client` (a connected client's session).
    pub kind: &'static str,
    /// The application that set it (an application session).
    pub application_id: Option<String>,
    /// What the client said it is (a client session).
    pub device: Option<String>,
    /// Whether the client's connection holds the session (a client session).
    pub connected: Option<bool>,
    /// As set.
    pub availability: &'static str,
    pub activity: &'static str,
    /// `active`, or how far it has faded for lack of keep-alive or activity: `idle`, `away`.
    pub stage: &'static str,
    /// What it contributes to the fold at its stage.
    pub effective_availability: &'static str,
    pub effective_activity: &'static str,
    pub set_at: String,
    pub idle_at: Option<String>,
    pub away_at: Option<String>,
    /// When it ends (none while a client's connection holds it).
    pub expires_at: Option<String>,
}

fn stage_name(stage: FadeStage) -> &'static str {
    match stage {
        FadeStage::Active => "active",
        FadeStage::Idle => "idle",
        FadeStage::Away => "away",
    }
}

fn session_dto(session: &Session) -> SessionDto {
    let (kind, application_id, device, connected) = match session.origin.as_deref() {
        Some(Origin::Client(link)) => (
            "client",
            None,
            Some(link.device.as_str().to_owned()),
            Some(link.connected),
        ),
        Some(Origin::App { application_id }) => ("application", Some(application_id.clone()), None, None),
        // Graph asks apps to use their application id as the session id; nothing else is recorded.
        None => ("application", Some(session.id.as_str().to_owned()), None, None),
    };
    let (effective_availability, effective_activity) = session.effective();
    SessionDto {
        id: session.id.as_str().to_owned(),
        kind,
        application_id,
        device,
        connected,
        availability: session.state.availability.as_str(),
        activity: session.state.activity.as_str(),
        stage: stage_name(session.stage),
        effective_availability: effective_availability.as_str(),
        effective_activity: effective_activity.as_str(),
        set_at: graph_time::format(session.set_at),
        idle_at: session.idle_at.map(graph_time::format),
        away_at: session.away_at.map(graph_time::format),
        expires_at: session.expires().map(graph_time::format),
    }
}

/// The explanation of `state` for `user`, as of `now`.
pub fn explanation(user: &UserId, state: &UserPresence, now: Timestamp) -> ExplanationDto {
    let explained = state.explain();
    let (rule, deciding, reason) = match &explained.rule {
        Rule::NoSession => ("noSession", None, "No live session: the user is offline.".to_owned()),
        Rule::Preferred => (
            "preferred",
            None,
            "The user's preferred presence overrides every session.".to_owned(),
        ),
        Rule::OnlySession(id) => (
            "onlySession",
            Some(id.as_str().to_owned()),
            format!("The only live session, '{}', decides.", id.as_str()),
        ),
        Rule::HighestSession(id) => (
            "highestSession",
            Some(id.as_str().to_owned()),
            format!(
                "Of {} live sessions, '{}' has the highest availability \
                 (DoNotDisturb > Busy > Available > Away; the most recently set among equals).",
                explained.sessions.len(),
                id.as_str()
            ),
        ),
    };
    ExplanationDto {
        id: user.as_str().to_owned(),
        availability: explained.view.availability.as_str(),
        activity: explained.view.activity.as_str(),
        rule,
        deciding_session_id: deciding,
        reason,
        preferred: explained.preferred.map(|p| PreferredDto {
            availability: p.state.availability.as_str(),
            activity: p.state.activity.as_str(),
            expires_at: graph_time::format(p.expires_at),
        }),
        sessions: explained.sessions.iter().map(session_dto).collect(),
        evaluated_at: graph_time::format(now),
    }
}

/// Readable by whoever may read the user's presence.
pub async fn get(state: &AppState, principal: &Principal, target: Target) -> Result<Response, ApiError> {
    let user = resolve(principal, target)?;
    principal
        .can(Action::ReadPresence, Some(user.as_str()))
        .map_err(denied)?;
    let key = user_key(principal, user.clone())?;
    let now = state.clock.now();
    let presence = state.service.state_now(&key).await.map_err(store_error)?;
    Ok(super::json_response(
        StatusCode::OK,
        &explanation(&user, &presence, now),
        1024,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use presence_core::{Activity, Availability, Command, SessionId, SessionState, Timing, UserPresence};

    fn set(user: &mut UserPresence, session: &str, availability: Availability, activity: Activity, now: Timestamp) {
        let command = Command::SetPresence {
            session: SessionId::parse(session).unwrap(),
            state: SessionState::new(availability, activity).unwrap(),
            expiration: jiff::SignedDuration::from_mins(30),
            application: None,
        };
        user.apply(command, now, &Timing::default()).unwrap();
    }

    #[test]
    fn the_explanation_names_the_deciding_session_and_agrees_with_the_read() {
        let now: Timestamp = "2026-12-05T10:00:00Z".parse().unwrap();
        let mut user = UserPresence::default();
        set(
            &mut user,
            "11111111-1111-1111-1111-111111111111",
            Availability::Available,
            Activity::Available,
            now,
        );
        set(
            &mut user,
            "22222222-2222-2222-2222-222222222222",
            Availability::Busy,
            Activity::InACall,
            now,
        );
        let id = UserId::parse("u1").unwrap();
        let dto = explanation(&id, &user, now);
        assert_eq!(dto.rule, "highestSession");
        assert_eq!(
            dto.deciding_session_id.as_deref(),
            Some("22222222-2222-2222-2222-222222222222")
        );
        assert_eq!((dto.availability, dto.activity), ("Busy", "InACall"));
        let view = user.view();
        assert_eq!(dto.availability, view.availability.as_str());
        assert_eq!(dto.sessions.len(), 2);
        assert!(dto
            .sessions
            .iter()
            .all(|s| s.kind == "application" && s.expires_at.is_some()));
    }

    #[test]
    fn nobody_there_is_no_session() {
        let now: Timestamp = "2026-12-05T10:00:00Z".parse().unwrap();
        let dto = explanation(&UserId::parse("u1").unwrap(), &UserPresence::default(), now);
        assert_eq!((dto.rule, dto.availability), ("noSession", "Offline"));
        assert!(dto.sessions.is_empty() && dto.preferred.is_none());
    }
}
