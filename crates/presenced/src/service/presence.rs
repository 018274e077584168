//! The presence service: load a user, apply a command with the core, commit; and reads.
//!
//! Writers to the same user are serialised by a striped async lock, so within one process a
//! compare-and-set conflict cannot happen; the retry loop exists for backends shared by several
//! processes, where another node may commit in between. A conflict hands back the state that
//! won, so a retry costs no second read.
use crate::clock::Clock;
use crate::store::{Commit, CommitError, PresenceState, Store, StoreError, Versioned};
use presence_core::{Command, CommandError, PresenceView, Timing, UserKey};
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use tokio::sync::{Mutex, MutexGuard};

/// Lock stripes: enough that unrelated users rarely share one while a commit waits for fsync,
/// few enough to cost nothing in memory.
const STRIPES: usize = 4096;
/// Conflicts are only possible with a shared backend and are rare there; a handful of retries
/// separates "busy user" from "something is wrong".
const MAX_CONFLICT_RETRIES: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Command(#[from] CommandError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub struct PresenceService<S = Store> {
    store: S,
    timing: Timing,
    clock: Clock,
    hasher: RandomState,
    stripes: Box<[Mutex<()>]>,
}

impl<S: PresenceState> PresenceService<S> {
    pub fn new(store: S, timing: Timing, clock: Clock) -> Self {
        Self {
            store,
            timing,
            clock,
            hasher: RandomState::new(),
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
        }
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    pub fn into_store(self) -> S {
        self.store
    }

    pub fn timing(&self) -> &Timing {
        &self.timing
    }

    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    async fn lock(&self, key: &UserKey) -> MutexGuard<'_, ()> {
        let stripe = self.hasher.hash_one(key) as usize % STRIPES;
        self.stripes[stripe].lock().await
    }

    /// Apply a write. Returns once the new state (and its change event) is durable.
    pub async fn execute(&self, key: &UserKey, command: Command) -> Result<(), ServiceError> {
        let _guard = self.lock(key).await;
        let (mut loaded, mut fresh) = self.store.load_to_write(key).await?;
        for _ in 0..MAX_CONFLICT_RETRIES {
            // One copy of the state, made by the core; the loaded one stays shared with readers.
            let applied = loaded.state.applied(&command, self.clock.now(), &self.timing);
            // Nothing to do, or refused, by a remembered copy: judge by the stored state.
            if !fresh && applied.as_ref().ok().is_none_or(|(s, _)| *s == *loaded.state) {
                (loaded, fresh) = (self.store.load(key).await?, true);
                continue;
            }
            let (state, outcome) = applied?;
            if state == *loaded.state {
                return Ok(());
            }
            let commit = Commit {
                key: key.clone(),
                expected_version: loaded.version,
                state,
                event: outcome.change,
            };
            match self.store.commit(commit).await {
                Err(CommitError::Conflict(current)) => (loaded, fresh) = (current, true),
                Err(CommitError::Store(e)) => return Err(e.into()),
                Ok(_) => return Ok(()),
            }
        }
        Err(StoreError::Unavailable("too many concurrent updates of one user".into()).into())
    }

    /// Apply the transitions due by now for many users in one store round trip: the sweeper's
    /// step. It takes no per-user lock: a commit that races an API write to the same user loses
    /// the compare-and-set and is left for the next tick (by then the API write has applied what
    /// was due, or the deadline is still pending). Returns how many users were committed; an
    /// error only if every commit failed for a reason other than a conflict.
    pub async fn advance_many(&self, keys: &[UserKey]) -> Result<usize, StoreError> {
        let now = self.clock.now();
        let mut commits = Vec::with_capacity(keys.len());
        for (key, loaded) in keys.iter().zip(self.store.load_many(keys).await?) {
            let mut state = (*loaded.state).clone();
            let event = state.advance(now);
            if state != *loaded.state {
                commits.push(Commit {
                    key: key.clone(),
                    expected_version: loaded.version,
                    state,
                    event,
                });
            }
        }
        if commits.is_empty() {
            return Ok(0);
        }
        let outcomes = self.store.commit_many(commits).await;
        let committed = outcomes.iter().filter(|o| o.is_ok()).count();
        let failure = outcomes.into_iter().find_map(|o| match o {
            Err(CommitError::Store(e)) => Some(e),
            _ => None,
        });
        match failure {
            Some(e) if committed == 0 => Err(e),
            _ => Ok(committed),
        }
    }

    /// Apply every transition due for `key` by now (one user; see `advance_many`). Returns whether anything
    /// was committed.
    pub async fn advance(&self, key: &UserKey) -> Result<bool, StoreError> {
        let _guard = self.lock(key).await;
        let mut loaded: Versioned = self.store.load(key).await?;
        for _ in 0..MAX_CONFLICT_RETRIES {
            let mut state = (*loaded.state).clone();
            let event = state.advance(self.clock.now());
            if state == *loaded.state {
                return Ok(false);
            }
            let commit = Commit {
                key: key.clone(),
                expected_version: loaded.version,
                state,
                event,
            };
            match self.store.commit(commit).await {
                Err(CommitError::Conflict(current)) => loaded = current,
                Err(CommitError::Store(e)) => return Err(e),
                Ok(_) => return Ok(true),
            }
        }
        Err(StoreError::Unavailable(
            "too many concurrent updates of one user".into(),
        ))
    }

    /// The presence as of now. Transitions the sweeper has not committed yet are applied to a
    /// copy, so a read never shows a session that has already faded or expired.
    pub async fn read(&self, key: &UserKey) -> Result<PresenceView, StoreError> {
        self.store.view(key, self.clock.now()).await
    }

    /// The user's whole state as of now, with transitions the sweeper has not committed yet
    /// applied to the copy (as [`read`](Self::read) does): what `explain` shows.
    pub async fn state_now(&self, key: &UserKey) -> Result<presence_core::UserPresence, StoreError> {
        let mut state = Arc::unwrap_or_clone(self.store.load(key).await?.state);
        state.advance(self.clock.now());
        Ok(state)
    }

    /// [`read`](Self::read) for many users in one store call, in the order given.
    pub async fn read_many(&self, keys: &[UserKey]) -> Result<Vec<PresenceView>, StoreError> {
        self.store.view_many(keys, self.clock.now()).await
    }
}
