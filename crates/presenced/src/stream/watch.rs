//! One watch stream's events, whatever carries them (SSE or WebSocket): a snapshot of the watched
//! users at one change-log position, then every change of their presence after it, in log order.
//!
//! A stream is *live* while it reads the hub's queue. When it falls behind (its queue overflowed,
//! or it resumes from an older position) it *catches up* by reading the log itself from its last
//! position, at its own pace and a chunk at a time; back at the head it goes live again. Only when
//! the log's window no longer holds its position does it start over with a snapshot marked as a
//! reset. Nothing is missed or repeated at either switch: it registers with the hub before it
//! reads the log, and it drops anything at or before the last position it handed out.
use super::hub::{Hub, Registration, Scope};
use super::resume::{Fingerprint, ResumeToken};
use crate::store::{Change, ChangeLog, LogError, Position, StoreError};
use presence_core::{PresenceView, UserKey};
use std::collections::{HashSet, VecDeque};
use std::sync::Arc;

/// Changes read from the log per catch-up step.
const CATCH_UP_BATCH: usize = 256;
/// Presences per snapshot event: a tenant-wide snapshot goes out in parts of this size.
pub const SNAPSHOT_PART: usize = 1000;

/// What a stream sends.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The watched users' presence at one position. A long snapshot comes in several parts; only
    /// the last (`last: true`) carries the resume token, since only after it is the state whole.
    Snapshot {
        reset: bool,
        last: bool,
        resume: Option<ResumeToken>,
        presences: Vec<(UserKey, PresenceView)>,
    },
    /// One change of one watched user's presence.
    Presence {
        resume: ResumeToken,
        key: UserKey,
        view: PresenceView,
    },
}

/// The state of one open stream.
pub struct Watch<L> {
    log: L,
    hub: Hub,
    scope: Scope,
    users: HashSet<UserKey>,
    fingerprint: Fingerprint,
    registration: Registration,
    /// The position of the last event handed out (snapshot or change).
    last: Position,
    catching_up: bool,
    pending: VecDeque<Event>,
}

impl<L: ChangeLog + Clone> Watch<L> {
    /// Open a stream on `scope`, resuming after `resume` when it is for the same watch set and
    /// the log still holds what followed it; otherwise starting with a snapshot (marked as a
    /// reset if a resume was asked for and cannot be honoured).
    pub async fn open(log: L, hub: Hub, scope: Scope, resume: Option<&str>) -> Result<Self, StoreError> {
        let fingerprint = Fingerprint::of(&scope);
        let users = match &scope {
            Scope::Users(keys) => keys.iter().cloned().collect(),
            Scope::Tenant(_) => HashSet::new(),
        };
        let registration = hub.register(scope.clone());
        let mut watch = Watch {
            log,
            hub,
            scope,
            users,
            fingerprint,
            registration,
            last: Position::ZERO,
            catching_up: false,
            pending: VecDeque::new(),
        };
        match resume.map(ResumeToken::parse) {
            Some(Some(token)) if token.fingerprint == fingerprint => {
                watch.last = token.position;
                watch.catching_up = true;
            }
            Some(_) => watch.snapshot(true).await?,
            None => watch.snapshot(false).await?,
        }
        Ok(watch)
    }

    /// The next event, waiting for one if need be. Cancel-safe: an event is either returned or
    /// still pending.
    pub async fn next(&mut self) -> Result<Event, StoreError> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Ok(event);
            }
            if self.catching_up {
                self.catch_up().await?;
                continue;
            }
            if self.registration.lagged() {
                self.fall_behind();
                continue;
            }
            match self.registration.changes.recv().await {
                Some(change) => self.offer(&change),
                // Dropped by the hub for lagging (or the hub is gone): read the log instead.
                None => self.fall_behind(),
            }
        }
    }

    fn resume(&self) -> ResumeToken {
        ResumeToken {
            position: self.last.clone(),
            fingerprint: self.fingerprint,
        }
    }

    fn wants(&self, change: &Change) -> bool {
        match &self.scope {
            Scope::Users(_) => self.users.contains(&change.key),
            Scope::Tenant(tenant) => change.key.tenant == *tenant,
        }
    }

    /// Queue `change` as an event if it is wanted and new to this stream.
    fn offer(&mut self, change: &Arc<Change>) {
        if change.position <= self.last {
            return;
        }
        self.last = self.last.join(&change.position);
        if self.wants(change) {
            self.pending.push_back(Event::Presence {
                resume: self.resume(),
                key: change.key.clone(),
                view: change.event.view.clone(),
            });
        }
    }

    /// Stop reading the hub's queue; read the log from the last position instead, registered
    /// afresh so that the changes routed meanwhile are queued again.
    fn fall_behind(&mut self) {
        self.registration = self.hub.register(self.scope.clone());
        self.catching_up = true;
    }

    async fn catch_up(&mut self) -> Result<(), StoreError> {
        match self.log.changes_after(&self.last, CATCH_UP_BATCH).await {
            Ok(changes) if changes.is_empty() => {
                // At the head. Anything committed since is in the queue (registered before
                // this read), unless the queue overflowed meanwhile: then catch up again.
                if self.registration.lagged() {
                    self.registration = self.hub.register(self.scope.clone());
                } else {
                    self.catching_up = false;
                }
                Ok(())
            }
            Ok(changes) => {
                for change in &changes {
                    self.offer(change);
                }
                Ok(())
            }
            Err(LogError::Expired { .. }) => {
                // Registered before the snapshot, so nothing after it is missed; the state
                // changes only once the snapshot is in hand (a cancelled call changes nothing).
                let registration = self.hub.register(self.scope.clone());
                let (position, events) = self.snapshot_events(true).await?;
                self.registration = registration;
                self.catching_up = false;
                self.last = position;
                self.pending.extend(events);
                Ok(())
            }
            Err(LogError::Store(e)) => Err(e),
        }
    }

    /// Queue the snapshot events (registered already, so nothing after it is missed).
    async fn snapshot(&mut self, reset: bool) -> Result<(), StoreError> {
        let (position, events) = self.snapshot_events(reset).await?;
        self.last = position;
        self.pending.extend(events);
        Ok(())
    }

    /// The snapshot of the watched users as events, and its position.
    async fn snapshot_events(&self, reset: bool) -> Result<(Position, Vec<Event>), StoreError> {
        let (position, presences) = match &self.scope {
            Scope::Users(keys) => {
                let snapshot = self.log.snapshot(keys).await?;
                (
                    snapshot.position,
                    keys.iter().cloned().zip(snapshot.views).collect::<Vec<_>>(),
                )
            }
            Scope::Tenant(tenant) => {
                let snapshot = self.log.snapshot_tenant(tenant).await?;
                (snapshot.position, snapshot.presences)
            }
        };
        let resume = ResumeToken {
            position: position.clone(),
            fingerprint: self.fingerprint,
        };
        let mut parts: Vec<Vec<(UserKey, PresenceView)>> = Vec::new();
        let mut rest = presences.into_iter().peekable();
        while rest.peek().is_some() {
            parts.push(rest.by_ref().take(SNAPSHOT_PART).collect());
        }
        if parts.is_empty() {
            parts.push(Vec::new());
        }
        let count = parts.len();
        let events = parts
            .into_iter()
            .enumerate()
            .map(|(i, presences)| {
                let last = i + 1 == count;
                Event::Snapshot {
                    reset,
                    last,
                    resume: last.then(|| resume.clone()),
                    presences,
                }
            })
            .collect();
        Ok((position, events))
    }
}
