//! The sweeper: applies fades and expiries when they fall due, whether or not anyone reads.
//!
//! One task sleeps until the earliest deadline in the store's index (or until a commit moves
//! that deadline earlier), then applies every due transition. `tick` is the whole step, so tests
//! and benchmarks can drive it directly.
use crate::service::PresenceService;
use crate::store::{Deadlines, PresenceState};
use jiff::Timestamp;
use prometheus_client::metrics::counter::Counter;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// Keys taken per tick: bounds the memory of one pass; a storm is worked off in consecutive ticks.
const BATCH: usize = 4096;
/// Users per store round trip: each chunk is one writer request and one log frame, so a storm
/// costs a few hundred group commits per million transitions, not one request per user.
const CHUNK: usize = 1024;
/// Even with no deadline pending, re-check this often: a cheap guard against a missed wake-up.
const IDLE_RECHECK: Duration = Duration::from_secs(1);
/// Pause after a tick that made no progress, so a store error cannot turn into a hot loop.
const ERROR_BACKOFF: Duration = Duration::from_millis(100);

pub struct Sweeper<S> {
    service: Arc<PresenceService<S>>,
    /// Users whose fade or expiry this sweeper committed.
    applied: Counter,
}

impl<S: PresenceState + Deadlines> Sweeper<S> {
    pub fn new(service: Arc<PresenceService<S>>) -> Self {
        Self {
            service,
            applied: Counter::default(),
        }
    }

    /// Count the users this sweeper moves on in `applied` (a metric).
    pub fn counting(mut self, applied: Counter) -> Self {
        self.applied = applied;
        self
    }

    /// Apply all transitions due at `now`, up to one batch. Returns (due keys seen, keys committed).
    pub async fn tick(&self, now: Timestamp) -> (usize, usize) {
        let due = match self.service.store().due(now, BATCH).await {
            Ok(keys) => keys,
            Err(e) => {
                tracing::warn!(error = %e, "sweeper could not read the deadline index");
                return (0, 0);
            }
        };
        let seen = due.len();
        let mut committed = 0;
        // The chunks run concurrently, so the next one is prepared while one is being fsynced.
        let mut tasks = JoinSet::new();
        for chunk in due.chunks(CHUNK) {
            let service = self.service.clone();
            let chunk = chunk.to_vec();
            tasks.spawn(async move { service.advance_many(&chunk).await });
        }
        while let Some(result) = tasks.join_next().await {
            match result {
                Ok(Ok(n)) => {
                    committed += n;
                    self.applied.inc_by(n as u64);
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "sweeper could not apply transitions; will retry"),
                Err(e) => tracing::warn!(error = %e, "sweeper task failed; will retry"),
            }
        }
        (seen, committed)
    }

    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let clock = self.service.clock().clone();
        loop {
            let (seen, committed) = self.tick(clock.now()).await;
            if seen == BATCH && committed > 0 {
                continue;
            }
            let store = self.service.store();
            let wait = match store.next_deadline().await {
                Some(at) => {
                    let until = at.duration_since(clock.now());
                    Duration::try_from(until).unwrap_or(Duration::ZERO).min(IDLE_RECHECK)
                }
                None => IDLE_RECHECK,
            };
            // Stalled: due work exists but nothing could be committed (e.g. disk full).
            let wait = if seen > 0 && committed == 0 {
                wait.max(ERROR_BACKOFF)
            } else {
                wait
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = store.deadline_moved() => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Clock;
    use crate::store::embedded::{EmbeddedStore, Options};
    use crate::store::{ChangeLog, Commit, Position};
    use jiff::SignedDuration;
    use presence_core::{
        Activity, Availability, Command, SessionId, SessionState, TenantId, Timing, UserId, UserKey, UserPresence,
    };

    #[tokio::test]
    async fn tick_applies_overdue_transitions_and_records_the_change() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = EmbeddedStore::open(dir.path(), Options::default()).unwrap();
        let key = UserKey::new(TenantId::parse("t").unwrap(), UserId::parse("u").unwrap());
        let now = crate::clock::SystemClock.now();
        // A session set 12 minutes ago: both fade deadlines are overdue, expiry is not.
        let mut state = UserPresence::default();
        let set = Command::SetPresence {
            session: SessionId::parse("s").unwrap(),
            state: SessionState::new(Availability::Available, Activity::Available).unwrap(),
            expiration: SignedDuration::from_hours(1),
            application: None,
        };
        let event = state
            .apply(set, now - SignedDuration::from_mins(12), &Timing::default())
            .unwrap()
            .change;
        store
            .commit(Commit {
                key: key.clone(),
                expected_version: 0,
                state,
                event,
            })
            .await
            .unwrap();
        let log_before = store.changes_after(&Position::ZERO, 100).await.unwrap().len();

        let service = PresenceService::new(store.clone(), Timing::default(), Clock::manual(now));
        let sweeper = Sweeper::new(Arc::new(service));
        assert_eq!(sweeper.tick(now).await, (1, 1));
        let view = store.load(&key).await.unwrap().state.view();
        assert_eq!((view.availability, view.activity), (Availability::Away, Activity::Away));
        let log = store.changes_after(&Position::ZERO, 100).await.unwrap();
        assert_eq!(log.len(), log_before + 1, "the fade produced exactly one change");
        assert_eq!(log.last().unwrap().event.view.availability, Availability::Away);
        assert_eq!(sweeper.tick(now).await, (0, 0), "nothing is due twice");
        assert!(store.next_deadline().await.unwrap() > now);
    }
}

/// Timers driven by a manual clock: no sleeping, every step exactly on its deadline.
#[cfg(test)]
mod manual_clock {
    use super::*;
    use crate::clock::Clock;
    use crate::store::{ChangeLog, Deadlines, Position};
    use jiff::SignedDuration;
    use presence_core::{Activity, Availability, Command, SessionId, SessionState, TenantId, Timing, UserId, UserKey};

    #[tokio::test]
    async fn an_available_session_fades_then_goes_away_then_expires_on_a_stepped_clock() {
        let start: Timestamp = "2026-12-04T09:00:00Z".parse().unwrap();
        let clock = Clock::manual(start);
        let (_dir, store) = crate::store::embedded::temporary(clock.clone());
        let service = Arc::new(PresenceService::new(store.clone(), Timing::default(), clock.clone()));
        let sweeper = Sweeper::new(service.clone());
        let key = UserKey::new(TenantId::parse("t").unwrap(), UserId::parse("u").unwrap());
        let set = Command::SetPresence {
            session: SessionId::parse("s").unwrap(),
            state: SessionState::new(Availability::Available, Activity::Available).unwrap(),
            expiration: SignedDuration::from_mins(30),
            application: None,
        };
        service.execute(&key, set).await.unwrap();
        let fade = Timing::default().fade_after;
        let read = || async { service.read(&key).await.unwrap() };

        clock.advance(fade - SignedDuration::from_secs(1));
        assert_eq!(sweeper.tick(clock.now()).await, (0, 0), "nothing is due a second early");
        assert_eq!(read().await.availability, Availability::Available);

        clock.advance(SignedDuration::from_secs(1));
        assert_eq!(sweeper.tick(clock.now()).await, (1, 1));
        assert_eq!(read().await.availability, Availability::AvailableIdle);

        clock.advance(fade);
        sweeper.tick(clock.now()).await;
        assert_eq!(read().await.availability, Availability::Away);

        clock.set(start + SignedDuration::from_mins(30));
        sweeper.tick(clock.now()).await;
        assert_eq!(read().await.availability, Availability::Offline);
        assert_eq!(store.next_deadline().await, None);

        // Each transition is one change in the log, stamped with its deadline.
        let changes = store.changes_after(&Position::ZERO, 10).await.unwrap();
        let stamps: Vec<Timestamp> = changes.iter().map(|c| c.event.at).collect();
        assert_eq!(
            stamps,
            [
                start,
                start + fade,
                start + fade * 2,
                start + SignedDuration::from_mins(30)
            ]
        );
    }
}
