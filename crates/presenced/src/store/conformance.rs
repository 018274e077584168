//! The store conformance suite: every backend must pass these, so the service can rely on the
//! port's contract rather than on one implementation's accidents.
use super::{Commit, PresenceStore, StoreError};
use jiff::{SignedDuration, Timestamp};
use presence_core::{
    Activity, Availability, Command, SessionId, SessionState, TenantId, Timing, UserId, UserKey, UserPresence,
};

/// How a suite run gets a fresh store and a reopened one (same data, new process image).
pub trait Harness {
    type Store: PresenceStore;
    fn open(&mut self) -> Self::Store;
    fn reopen(&mut self, store: Self::Store) -> Self::Store;
}

fn key(user: &str) -> UserKey {
    UserKey::new(TenantId::parse("tenant-a").unwrap(), UserId::parse(user).unwrap())
}

fn t0() -> Timestamp {
    "2026-11-27T09:00:00Z".parse().unwrap()
}

/// A state with one Busy session expiring at t0 + 10 min, and the event that created it.
fn busy_state(at: Timestamp) -> (UserPresence, Option<presence_core::ChangeEvent>) {
    let mut state = UserPresence::default();
    let command = Command::SetPresence {
        session: SessionId::parse("app").unwrap(),
        state: SessionState::new(Availability::Busy, Activity::InACall).unwrap(),
        expiration: SignedDuration::from_mins(10),
    };
    let outcome = state.apply(command, at, &Timing::default()).unwrap();
    (state, outcome.change)
}

pub async fn run_all<H: Harness>(mut harness: H) {
    let store = harness.open();
    unknown_user_is_version_zero(&store).await;
    compare_and_set(&store).await;
    deadlines_follow_commits(&store).await;
    outbox_keeps_commit_order(&store).await;
    concurrent_commits_all_land(&store).await;
    let store = harness.reopen(store);
    everything_survives_reopen(&store).await;
}

async fn unknown_user_is_version_zero<S: PresenceStore>(store: &S) {
    let loaded = store.load(&key("nobody")).await.unwrap();
    assert_eq!(loaded.version, 0);
    assert_eq!(*loaded.state, UserPresence::default());
}

async fn compare_and_set<S: PresenceStore>(store: &S) {
    let (state, event) = busy_state(t0());
    let v1 = store
        .commit(Commit {
            key: key("cas"),
            expected_version: 0,
            state: state.clone(),
            event,
        })
        .await
        .unwrap();
    let loaded = store.load(&key("cas")).await.unwrap();
    assert_eq!(loaded.version, v1);
    assert_eq!(*loaded.state, state);
    let stale = store
        .commit(Commit {
            key: key("cas"),
            expected_version: 0,
            state: state.clone(),
            event: None,
        })
        .await;
    assert_eq!(stale, Err(StoreError::Conflict));
    let v2 = store
        .commit(Commit {
            key: key("cas"),
            expected_version: v1,
            state,
            event: None,
        })
        .await
        .unwrap();
    assert!(v2 != v1);
}

async fn deadlines_follow_commits<S: PresenceStore>(store: &S) {
    let (state, event) = busy_state(t0());
    let deadline = state.next_deadline().unwrap();
    let k = key("deadline");
    store
        .commit(Commit {
            key: k.clone(),
            expected_version: 0,
            state: state.clone(),
            event,
        })
        .await
        .unwrap();
    let before = store.due(deadline - SignedDuration::from_millis(1), 100).await.unwrap();
    assert!(!before.contains(&k));
    assert!(store.due(deadline, 100).await.unwrap().contains(&k));
    assert!(store.next_deadline().await.unwrap() <= deadline);
    // Advancing past the deadline and committing clears the user's entry.
    let mut advanced = state;
    advanced.advance(deadline);
    let version = store.load(&k).await.unwrap().version;
    store
        .commit(Commit {
            key: k.clone(),
            expected_version: version,
            state: advanced,
            event: None,
        })
        .await
        .unwrap();
    assert!(!store
        .due(deadline + SignedDuration::from_hours(1), 10_000)
        .await
        .unwrap()
        .contains(&k));
}

async fn outbox_keeps_commit_order<S: PresenceStore>(store: &S) {
    let start = store
        .outbox_after(0, usize::MAX)
        .await
        .unwrap()
        .last()
        .map_or(0, |e| e.id);
    for i in 0..5 {
        let (state, event) = busy_state(t0() + SignedDuration::from_secs(i));
        store
            .commit(Commit {
                key: key(&format!("outbox-{i}")),
                expected_version: 0,
                state,
                event,
            })
            .await
            .unwrap();
    }
    let entries = store.outbox_after(start, 100).await.unwrap();
    let users: Vec<String> = entries.iter().map(|e| e.key.user.to_string()).collect();
    assert_eq!(users, (0..5).map(|i| format!("outbox-{i}")).collect::<Vec<_>>());
    assert!(entries.windows(2).all(|w| w[0].id < w[1].id));
    assert_eq!(entries[0].event.view.availability, Availability::Busy);
}

async fn concurrent_commits_all_land<S: PresenceStore>(store: &S) {
    let futures = (0..200).map(|i| {
        let (state, event) = busy_state(t0());
        store.commit(Commit {
            key: key(&format!("burst-{i}")),
            expected_version: 0,
            state,
            event,
        })
    });
    for result in futures_join_all(futures).await {
        result.unwrap();
    }
    for i in 0..200 {
        assert_eq!(
            store
                .load(&key(&format!("burst-{i}")))
                .await
                .unwrap()
                .state
                .sessions()
                .len(),
            1
        );
    }
}

async fn everything_survives_reopen<S: PresenceStore>(store: &S) {
    for i in 0..200 {
        assert_eq!(
            store
                .load(&key(&format!("burst-{i}")))
                .await
                .unwrap()
                .state
                .sessions()
                .len(),
            1
        );
    }
    assert!(store.load(&key("cas")).await.unwrap().version > 0);
    let entries = store.outbox_after(0, usize::MAX).await.unwrap();
    assert!(entries.iter().any(|e| e.key.user.as_str() == "outbox-4"));
    assert!(store
        .due(t0() + SignedDuration::from_hours(1), 10_000)
        .await
        .unwrap()
        .contains(&key("burst-7")));
}

/// Polls all futures concurrently on the current task, so commits really do queue together.
async fn futures_join_all<F: std::future::Future>(futures: impl Iterator<Item = F>) -> Vec<F::Output> {
    let mut set = Vec::new();
    for f in futures {
        set.push(Box::pin(f));
    }
    let mut out: Vec<Option<F::Output>> = set.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in set.iter_mut().enumerate() {
            if out[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => out[i] = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().map(|o| o.expect("every future completed")).collect()
}

mod embedded {
    use super::*;
    use crate::store::embedded::EmbeddedStore;

    struct EmbeddedHarness(tempfile::TempDir);

    impl Harness for EmbeddedHarness {
        type Store = EmbeddedStore;
        fn open(&mut self) -> EmbeddedStore {
            EmbeddedStore::open(self.0.path()).unwrap().0
        }
        fn reopen(&mut self, store: EmbeddedStore) -> EmbeddedStore {
            store.close();
            self.open()
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn embedded_store_conforms() {
        run_all(EmbeddedHarness(tempfile::tempdir().unwrap())).await;
    }
}
