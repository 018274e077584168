//! The store conformance suite: every backend must pass these, so the service can rely on the
//! port's contract rather than on one implementation's accidents.
use super::{Commit, DeliveryKind, LifecycleEvent, NewDelivery, PresenceStore, StoreError};
use crate::notify::subscription::Subscription;
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
    commit_many_checks_each_commit(&store).await;
    deadlines_follow_commits(&store).await;
    outbox_keeps_commit_order(&store).await;
    concurrent_commits_all_land(&store).await;
    subscriptions_fan_out_in_the_commit(&store).await;
    let store = harness.reopen(store);
    everything_survives_reopen(&store).await;
    deliveries_and_subscriptions_survive_reopen(&store).await;
}

fn subscription(id: &str, users: &[&str]) -> Subscription {
    Subscription {
        id: id.to_owned(),
        tenant: TenantId::parse("tenant-a").unwrap(),
        application_id: "app".into(),
        creator_id: None,
        resource: "/communications/presences?$filter=id in ('x')".into(),
        users: users.iter().map(|u| UserId::parse(u).unwrap()).collect(),
        notification_url: format!("https://hooks.example/{id}"),
        lifecycle_notification_url: None,
        client_state: Some("cs".into()),
        expiration: t0() + SignedDuration::from_hours(1),
        renewed_at: t0(),
        include_resource_data: false,
        encryption_certificate: None,
        encryption_certificate_id: None,
        latest_supported_tls_version: None,
        reauthorization_requested: false,
    }
}

async fn subscriptions_fan_out_in_the_commit<S: PresenceStore>(store: &S) {
    let mut feed = store.take_delivery_feed().expect("the feed is available once");
    assert!(store.take_delivery_feed().is_none());
    store
        .put_subscription(subscription("sub-1", &["watched"]))
        .await
        .unwrap();
    store
        .put_subscription(subscription("sub-2", &["watched", "other"]))
        .await
        .unwrap();
    assert_eq!(store.subscription("sub-1").await.unwrap().unwrap().users.len(), 1);
    assert_eq!(
        store
            .subscriptions(Some(&TenantId::parse("tenant-a").unwrap()))
            .await
            .unwrap()
            .len(),
        2
    );
    assert!(store
        .subscriptions(Some(&TenantId::parse("tenant-b").unwrap()))
        .await
        .unwrap()
        .is_empty());

    let (state, event) = busy_state(t0());
    store
        .commit(Commit {
            key: key("watched"),
            expected_version: 0,
            state,
            event,
        })
        .await
        .unwrap();
    let delivered = feed.recv().await.unwrap();
    let subs: Vec<&str> = delivered.iter().map(|d| d.subscription_id.as_str()).collect();
    assert_eq!(
        subs,
        ["sub-1", "sub-2"],
        "one delivery per subscription, in the same commit"
    );
    assert!(matches!(
        &delivered[0].kind,
        DeliveryKind::Change {
            availability: Availability::Busy,
            ..
        }
    ));
    assert_eq!(delivered[0].url, "https://hooks.example/sub-1");

    // A change that is not an availability/activity change owes nothing.
    let loaded = store.load(&key("watched")).await.unwrap();
    let mut quiet = (*loaded.state).clone();
    let message = presence_core::StatusMessageInput::new("hi".into(), None).unwrap();
    let out = quiet
        .apply(Command::SetStatusMessage(Some(message)), t0(), &Timing::default())
        .unwrap();
    store
        .commit(Commit {
            key: key("watched"),
            expected_version: loaded.version,
            state: quiet,
            event: out.change,
        })
        .await
        .unwrap();
    assert!(feed.try_recv().is_err());

    // After deleting sub-1 only sub-2 is owed.
    store.delete_subscription("sub-1").await.unwrap().expect("it existed");
    assert!(store.delete_subscription("sub-1").await.unwrap().is_none());
    let loaded = store.load(&key("watched")).await.unwrap();
    let mut clear = (*loaded.state).clone();
    let out = clear
        .apply(
            Command::ClearPresence {
                session: SessionId::parse("app").unwrap(),
            },
            t0(),
            &Timing::default(),
        )
        .unwrap();
    store
        .commit(Commit {
            key: key("watched"),
            expected_version: loaded.version,
            state: clear,
            event: out.change,
        })
        .await
        .unwrap();
    let second = feed.recv().await.unwrap();
    assert_eq!(second.len(), 1);
    assert_eq!(second[0].subscription_id, "sub-2");
    assert!(second[0].id > delivered[1].id);

    // Lifecycle deliveries are enqueued durably too; delivered ones can be finished.
    let lifecycle = NewDelivery {
        url: "https://hooks.example/life".into(),
        subscription_id: "sub-2".into(),
        created_at: t0(),
        kind: DeliveryKind::Lifecycle {
            event: LifecycleEvent::ReauthorizationRequired,
            tenant: TenantId::parse("tenant-a").unwrap(),
            client_state: None,
            subscription_expiration: t0(),
        },
    };
    let queued = store.enqueue(vec![lifecycle]).await.unwrap();
    assert_eq!(feed.recv().await.unwrap(), queued);
    store.finish(vec![delivered[0].id]).await.unwrap();
    let pending: Vec<u64> = store.pending_deliveries().await.unwrap().iter().map(|d| d.id).collect();
    assert_eq!(pending, vec![delivered[1].id, second[0].id, queued[0].id]);
}

async fn deliveries_and_subscriptions_survive_reopen<S: PresenceStore>(store: &S) {
    assert!(store.subscription("sub-1").await.unwrap().is_none());
    assert_eq!(
        store
            .subscription("sub-2")
            .await
            .unwrap()
            .unwrap()
            .client_state
            .as_deref(),
        Some("cs")
    );
    let pending = store.pending_deliveries().await.unwrap();
    assert_eq!(pending.len(), 3, "{pending:?}");
    // New deliveries continue the id sequence rather than reusing ids.
    let mut feed = store.take_delivery_feed().unwrap();
    let loaded = store.load(&key("watched")).await.unwrap();
    let (state, event) = busy_state(t0());
    store
        .commit(Commit {
            key: key("watched"),
            expected_version: loaded.version,
            state,
            event,
        })
        .await
        .unwrap();
    let fresh = feed.recv().await.unwrap();
    assert!(fresh[0].id > pending.last().unwrap().id);
}

async fn unknown_user_is_version_zero<S: PresenceStore>(store: &S) {
    let loaded = store.load(&key("nobody")).await.unwrap();
    assert_eq!(loaded.version, 0);
    assert_eq!(*loaded.state, UserPresence::default());
}

async fn commit_many_checks_each_commit<S: PresenceStore>(store: &S) {
    let (state, event) = busy_state(t0());
    let commit = |user: &str, expected_version: u64| Commit {
        key: key(user),
        expected_version,
        state: state.clone(),
        event: event.clone(),
    };
    store.commit(commit("many-b", 0)).await.unwrap();
    // "many-b" exists, so expecting version 0 is stale; the others still land.
    let outcomes = store
        .commit_many(vec![commit("many-a", 0), commit("many-b", 0), commit("many-c", 0)])
        .await;
    assert_eq!(outcomes.len(), 3);
    assert!(outcomes[0].is_ok(), "{outcomes:?}");
    assert_eq!(outcomes[1], Err(StoreError::Conflict));
    assert!(outcomes[2].is_ok(), "{outcomes:?}");
    for user in ["many-a", "many-c"] {
        let loaded = store.load(&key(user)).await.unwrap();
        assert_eq!(*loaded.state, state, "{user}");
        assert!(loaded.version > 0);
    }
    // Two commits of one user in one call: the second expects the first's version.
    let v = store.load(&key("many-a")).await.unwrap().version;
    let outcomes = store.commit_many(vec![commit("many-a", v), commit("many-a", v)]).await;
    assert!(outcomes[0].is_ok());
    assert_eq!(outcomes[1], Err(StoreError::Conflict));
    assert!(store.commit_many(Vec::new()).await.is_empty());
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
