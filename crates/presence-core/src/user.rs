//! `UserPresence`: one user's sessions, preference, status message and out-of-office settings.
//!
//! The state stores absolute instants (when each session fades, goes away, expires), never
//! durations, so a restart or a change of policy cannot shift a deadline that was already promised.
//! Fade stages are stored explicitly and moved only by [`UserPresence::advance`], which makes the
//! folded view a function of the state alone: between two deadlines nothing can change.
use crate::command::{Command, CommandError, MAX_OUT_OF_OFFICE_MESSAGE_CHARS, MAX_SESSIONS_PER_USER};
use crate::ids::SessionId;
use crate::origin::{ClientLink, Origin};
use crate::state::{Activity, Availability, PreferredState, SessionState};
use crate::timing::Timing;
use crate::view::{ChangeEvent, MessageExpiry, OutOfOfficeSettings, PresenceView, SequenceNumber, StatusMessageView};
use crate::work_location::WorkLocation;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// How far an Available session has faded for lack of keep-alive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FadeStage {
    Active,
    Idle,
    Away,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    pub id: SessionId,
    pub state: SessionState,
    pub stage: FadeStage,
    pub set_at: Timestamp,
    /// Only Available sessions fade; for others these are `None`.
    pub idle_at: Option<Timestamp>,
    pub away_at: Option<Timestamp>,
    /// When the session ends; not while it is a connected client's.
    pub expires_at: Timestamp,
    /// Where it comes from, when the id does not say it (an app session whose id is its
    /// application's records nothing). Boxed and left out of records while unset: millions of
    /// sessions are held in memory, and records of older builds read back unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<Box<Origin>>,
}

impl Session {
    /// The connection of a client session.
    pub fn client(&self) -> Option<&ClientLink> {
        match self.origin.as_deref() {
            Some(Origin::Client(link)) => Some(link),
            _ => None,
        }
    }

    fn client_mut(&mut self) -> Option<&mut ClientLink> {
        match self.origin.as_deref_mut() {
            Some(Origin::Client(link)) => Some(link),
            _ => None,
        }
    }

    /// When it expires: never while a client's connection holds it.
    pub fn expires(&self) -> Option<Timestamp> {
        match self.client() {
            Some(link) if link.connected => None,
            _ => Some(self.expires_at),
        }
    }

    /// Restart the fade from `now` (a keep-alive or a client's activity): only Available fades.
    fn restart_fade(&mut self, now: Timestamp, timing: &Timing) {
        let fades = self.state.availability == Availability::Available;
        self.stage = FadeStage::Active;
        self.idle_at = fades.then(|| now + timing.fade_after);
        self.away_at = fades.then(|| now + timing.fade_after * 2);
    }

    /// What this session contributes to the fold at its current stage.
    pub fn effective(&self) -> (Availability, Activity) {
        match self.stage {
            FadeStage::Active => (self.state.availability, self.state.activity),
            FadeStage::Idle => (Availability::AvailableIdle, Activity::Inactive),
            FadeStage::Away => (Availability::Away, Activity::Away),
        }
    }

    fn next_deadline(&self) -> Option<Timestamp> {
        let fade = match self.stage {
            FadeStage::Active => self.idle_at,
            FadeStage::Idle => self.away_at,
            FadeStage::Away => None,
        };
        fade.into_iter().chain(self.expires()).min()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Preferred {
    pub state: PreferredState,
    pub expires_at: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusMessage {
    pub content: String,
    pub expiry: Option<MessageExpiry>,
    pub published_at: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct UserPresence {
    sessions: Vec<Session>,
    preferred: Option<Preferred>,
    // Boxed: most users have no status message, and millions of states are held in memory; inline
    // it made every state ~100 bytes larger (BENCHMARKS.md §5). Serialised the same either way.
    status_message: Option<Box<StatusMessage>>,
    #[serde(default)]
    out_of_office: OutOfOfficeSettings,
    sequence: SequenceNumber,
    // Boxed and left out of the record while unset, like the status message: most users never
    // set one, and records written before work locations existed read back unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    work_location: Option<Box<WorkLocation>>,
}

/// Which rule decided a user's folded presence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rule {
    /// No session: the user is offline (a preference, if any, waits for a session).
    NoSession,
    /// The user's preferred presence overrides every session.
    Preferred,
    /// The one session decides.
    OnlySession(SessionId),
    /// The session with the highest availability decides (the most recently set among equals,
    /// then the lowest id).
    HighestSession(SessionId),
}

/// The folded presence and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fold {
    pub availability: Availability,
    pub activity: Activity,
    pub rule: Rule,
}

/// Why a user shows what they show: the view, the rule that produced it, and its inputs.
#[derive(Debug, Clone, PartialEq)]
pub struct Explanation<'a> {
    pub view: PresenceView,
    pub rule: Rule,
    pub sessions: &'a [Session],
    pub preferred: Option<&'a Preferred>,
}

/// The result of a successful command: the change event, if the visible presence changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub change: Option<ChangeEvent>,
}

impl UserPresence {
    pub fn sessions(&self) -> &[Session] {
        &self.sessions
    }

    pub fn preferred(&self) -> Option<&Preferred> {
        self.preferred.as_ref()
    }

    pub fn status_message(&self) -> Option<&StatusMessage> {
        self.status_message.as_deref()
    }

    pub fn out_of_office(&self) -> &OutOfOfficeSettings {
        &self.out_of_office
    }

    pub fn sequence(&self) -> SequenceNumber {
        self.sequence
    }

    pub fn work_location(&self) -> Option<&WorkLocation> {
        self.work_location.as_deref()
    }

    /// Apply a command at `now`. Transitions already due are applied first, so a session that
    /// expired a moment ago is gone (and clearing it is `SessionNotFound`). On error `self` is unchanged.
    pub fn apply(&mut self, command: Command, now: Timestamp, timing: &Timing) -> Result<Outcome, CommandError> {
        let (next, outcome) = self.applied(&command, now, timing)?;
        *self = next;
        Ok(outcome)
    }

    /// What [`apply`](Self::apply) would make of this state, leaving it as it is. A server holds
    /// the current state shared with its readers until the new one is committed, so it wants the
    /// new state beside the old, made with one copy. The command is borrowed, so a caller that
    /// retries (a lost compare-and-set) keeps it without copying it per attempt.
    pub fn applied(
        &self,
        command: &Command,
        now: Timestamp,
        timing: &Timing,
    ) -> Result<(UserPresence, Outcome), CommandError> {
        let before = self.view();
        let mut next = self.clone();
        next.apply_due(now);
        next.execute(command, now, timing)?;
        let change = next.finish_change(&before, now);
        // A user typically has one or two sessions; the first push reserves four. Millions of
        // users are held in memory, so keep exactly what is used.
        next.sessions.shrink_to_fit();
        Ok((next, Outcome { change }))
    }

    /// Apply every transition due at or before `now`. The change, if any, is stamped with the
    /// latest deadline applied rather than `now`, so the result does not depend on how late the
    /// sweeper ran.
    pub fn advance(&mut self, now: Timestamp) -> Option<ChangeEvent> {
        let before = self.view();
        let at = self.apply_due(now)?;
        self.sessions.shrink_to_fit();
        self.finish_change(&before, at)
    }

    /// The earliest instant at which `advance` would change anything; `None` if nothing is pending.
    pub fn next_deadline(&self) -> Option<Timestamp> {
        let sessions = self.sessions.iter().filter_map(Session::next_deadline);
        let preferred = self.preferred.as_ref().map(|p| p.expires_at);
        let message = self
            .status_message
            .as_ref()
            .and_then(|m| m.expiry.as_ref())
            .map(|e| e.at);
        let location = self.work_location.as_ref().and_then(|w| w.next_deadline());
        sessions.chain(preferred).chain(message).chain(location).min()
    }

    /// The view as of `now` without mutating: readers call this so they never show a state the
    /// sweeper has not committed yet as if it were still current.
    pub fn view_at(&self, now: Timestamp) -> PresenceView {
        match self.next_deadline() {
            Some(d) if d <= now => {
                let mut ahead = self.clone();
                ahead.advance(now);
                ahead.view()
            }
            _ => self.view(),
        }
    }

    /// The folded presence from the stored stages (see the module comment for why no `now`).
    pub fn view(&self) -> PresenceView {
        let Fold {
            availability, activity, ..
        } = self.fold();
        PresenceView {
            availability,
            activity,
            status_message: self.status_message.as_ref().map(|m| StatusMessageView {
                content: m.content.clone(),
                expiry: m.expiry.clone(),
                published_at: m.published_at,
            }),
            out_of_office: self.out_of_office.clone(),
            sequence: self.sequence,
            work_location: self.work_location.as_ref().map(|w| w.view()).unwrap_or_default(),
        }
    }

    /// The folded presence and the rule that decided it: what the view shows and what an
    /// explanation says come from this one function.
    pub fn fold(&self) -> Fold {
        // Preferred presence only counts while some session exists: with none the user is offline.
        let winner = self.sessions.iter().max_by(|a, b| {
            let (rank_a, rank_b) = (a.effective().0.rank(), b.effective().0.rank());
            rank_a
                .cmp(&rank_b)
                .then(a.set_at.cmp(&b.set_at))
                .then_with(|| a.id.cmp(&b.id))
        });
        match (winner, &self.preferred) {
            (None, _) => Fold {
                availability: Availability::Offline,
                activity: Activity::Offline,
                rule: Rule::NoSession,
            },
            (Some(_), Some(p)) => Fold {
                availability: p.state.availability,
                activity: p.state.activity,
                rule: Rule::Preferred,
            },
            (Some(s), None) => {
                let (availability, activity) = s.effective();
                let rule = if self.sessions.len() == 1 {
                    Rule::OnlySession(s.id.clone())
                } else {
                    Rule::HighestSession(s.id.clone())
                };
                Fold {
                    availability,
                    activity,
                    rule,
                }
            }
        }
    }

    /// Returns the latest deadline applied, or `None` if nothing was due.
    fn apply_due(&mut self, now: Timestamp) -> Option<Timestamp> {
        let mut latest: Option<Timestamp> = None;
        let mut note = |t: Timestamp| latest = Some(latest.map_or(t, |l| l.max(t)));
        self.sessions.retain(|s| match s.expires() {
            Some(at) if at <= now => {
                note(at);
                false
            }
            _ => true,
        });
        for s in &mut self.sessions {
            if let Some(away) = s.away_at.filter(|t| *t <= now && s.stage != FadeStage::Away) {
                s.stage = FadeStage::Away;
                note(away);
            } else if let Some(idle) = s.idle_at.filter(|t| *t <= now && s.stage == FadeStage::Active) {
                s.stage = FadeStage::Idle;
                note(idle);
            }
        }
        if let Some(p) = self.preferred.take_if(|p| p.expires_at <= now) {
            note(p.expires_at);
        }
        let expired = |m: &mut Box<StatusMessage>| m.expiry.as_ref().is_some_and(|e| e.at <= now);
        if let Some(m) = self.status_message.take_if(expired) {
            note(m.expiry.map_or(now, |e| e.at));
        }
        if let Some(w) = &mut self.work_location {
            if let Some(ended) = w.apply_due(now) {
                note(ended);
            }
        }
        self.work_location.take_if(|w| w.is_empty());
        latest
    }

    fn execute(&mut self, command: &Command, now: Timestamp, timing: &Timing) -> Result<(), CommandError> {
        match command {
            Command::SetPresence {
                session,
                state,
                expiration,
                application,
            } => {
                let origin = application
                    .as_ref()
                    .filter(|a| a.as_str() != session.as_str())
                    .map(|a| {
                        Box::new(Origin::App {
                            application_id: a.clone(),
                        })
                    });
                let s = self.session_for(session, *state, now, false)?;
                s.state = *state;
                s.set_at = now;
                s.restart_fade(now, timing);
                s.expires_at = now + *expiration;
                s.origin = origin;
            }
            Command::ClearPresence { session } => {
                // REST clears app sessions only; a client's ends with its connection.
                let index = self
                    .sessions
                    .iter()
                    .position(|s| s.id == *session && s.client().is_none());
                match index {
                    Some(i) => drop(self.sessions.remove(i)),
                    None => return Err(CommandError::SessionNotFound(session.clone())),
                }
            }
            Command::ConnectClient {
                session,
                device,
                epoch,
                state,
            } => {
                let fresh = !self.sessions.iter().any(|s| s.id == *session);
                let s = self.session_for(session, *state, now, true)?;
                if fresh || s.state != *state {
                    s.state = *state;
                    s.set_at = now;
                }
                s.restart_fade(now, timing);
                s.origin = Some(Box::new(Origin::Client(ClientLink {
                    device: device.clone(),
                    epoch: epoch.clone(),
                    connected: true,
                })));
            }
            Command::SetClientState { session, state } => {
                let s = self.client_session(session)?;
                s.state = *state;
                s.set_at = now;
                s.restart_fade(now, timing);
            }
            Command::ClientActivity { session } => self.client_session(session)?.restart_fade(now, timing),
            Command::DisconnectClient { session, grace } => {
                let s = self.client_session(session)?;
                if let Some(link) = s.client_mut() {
                    link.connected = false;
                }
                s.expires_at = now + *grace;
            }
            Command::OrphanClients { live, grace } => {
                for s in &mut self.sessions {
                    let orphan = s
                        .client()
                        .is_some_and(|l| l.connected && !live.iter().any(|e| *e == *l.epoch));
                    if let (true, Some(link)) = (orphan, s.client_mut()) {
                        link.connected = false;
                        s.expires_at = now + *grace;
                    }
                }
            }
            Command::SetPreferred { state, expiration } => {
                self.preferred = Some(Preferred {
                    state: *state,
                    expires_at: now + *expiration,
                });
            }
            Command::ClearPreferred => self.preferred = None,
            Command::SetStatusMessage(None) => self.status_message = None,
            Command::SetStatusMessage(Some(input)) => {
                let (content, expiry) = input.clone().into_parts();
                if let Some(e) = expiry.as_ref().filter(|e| e.at <= now) {
                    return Err(CommandError::ExpiryInPast(e.at));
                }
                self.status_message = Some(Box::new(StatusMessage {
                    content,
                    expiry,
                    published_at: now,
                }));
            }
            Command::SetOutOfOffice(settings) => {
                let too_long = settings
                    .message
                    .as_ref()
                    .is_some_and(|m| m.chars().count() > MAX_OUT_OF_OFFICE_MESSAGE_CHARS);
                if too_long {
                    return Err(CommandError::OutOfOfficeTooLong {
                        max: MAX_OUT_OF_OFFICE_MESSAGE_CHARS,
                    });
                }
                self.out_of_office = settings.clone();
            }
            Command::SetWorkLocation { layer, location, day } => {
                let until = day.end_of_day(now);
                self.work_location.get_or_insert_default().set(*layer, location, until);
            }
            Command::ClearAutomaticLocation => {
                if let Some(w) = &mut self.work_location {
                    w.automatic = None;
                }
                self.work_location.take_if(|w| w.is_empty());
            }
            Command::ClearLocation => self.work_location = None,
        }
        Ok(())
    }

    /// The session `id` to set, created if missing (within the per-user limit). An app's
    /// `setPresence` may not take over a client's session, nor a client an app's.
    fn session_for(
        &mut self,
        id: &SessionId,
        state: SessionState,
        now: Timestamp,
        client: bool,
    ) -> Result<&mut Session, CommandError> {
        let count = self.sessions.len();
        let index = match self.sessions.iter().position(|s| s.id == *id) {
            Some(i) if self.sessions[i].client().is_some() != client => {
                return Err(CommandError::SessionKind(id.clone()));
            }
            Some(i) => i,
            None if count >= MAX_SESSIONS_PER_USER => {
                return Err(CommandError::TooManySessions {
                    max: MAX_SESSIONS_PER_USER,
                })
            }
            None => {
                self.sessions.push(Session {
                    id: id.clone(),
                    state,
                    stage: FadeStage::Active,
                    set_at: now,
                    idle_at: None,
                    away_at: None,
                    expires_at: now,
                    origin: None,
                });
                count
            }
        };
        Ok(&mut self.sessions[index])
    }

    /// An existing client session.
    fn client_session(&mut self, id: &SessionId) -> Result<&mut Session, CommandError> {
        self.sessions
            .iter_mut()
            .find(|s| s.id == *id && s.client().is_some())
            .ok_or_else(|| CommandError::SessionNotFound(id.clone()))
    }

    /// The fold, with every session and the preference as they stand: why the user shows what
    /// they show. The view it explains is [`view`](Self::view)'s.
    pub fn explain(&self) -> Explanation<'_> {
        Explanation {
            view: self.view(),
            rule: self.fold().rule,
            sessions: &self.sessions,
            preferred: self.preferred.as_ref(),
        }
    }

    /// Bump the sequence and build the event if the visible presence differs from `before`.
    fn finish_change(&mut self, before: &PresenceView, at: Timestamp) -> Option<ChangeEvent> {
        if self.view().same_content(before) {
            return None;
        }
        // Time-based floor: even if a user's record were ever rebuilt from nothing, its next
        // sequence number still sorts after every one it had before (clocks permitting).
        let micros = u64::try_from(at.as_microsecond()).unwrap_or(0);
        self.sequence = SequenceNumber(self.sequence.0.saturating_add(1).max(micros));
        Some(ChangeEvent {
            at,
            previous_availability: before.availability,
            previous_activity: before.activity,
            view: self.view(),
        })
    }
}

#[cfg(test)]
mod size_tests {
    use super::*;

    /// Every user's state is held in memory behind an `Arc`: 96 bytes keeps the allocation in the
    /// 112-byte size class instead of the 128-byte one (BENCHMARKS.md §5).
    #[test]
    fn a_users_state_stays_within_its_size_class() {
        assert!(
            std::mem::size_of::<UserPresence>() <= 96,
            "{}",
            std::mem::size_of::<UserPresence>()
        );
    }
}
