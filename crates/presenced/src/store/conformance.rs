//! The store conformance suite: one test per behaviour of the ports' contracts, generated for
//! every backend by [`conformance_tests!`], so the services rely on the contracts rather than on
//! one implementation's accidents.
//!
//! A backend provides a [`Harness`]: a fresh store, a reopen on the same data as after a clean
//! stop, a crash (stop without any clean-up; acknowledged writes must survive it), and a second
//! handle on the same data, which is what another node would see.
use super::{
    Backend, ChangeLog, Commit, CommitError, CreateError, Deadlines, Deliveries, LifecycleEvent, Limit, Limits,
    LogError, NewLifecycle, Owner, Position, PresenceState, Stored, SubscriptionWrite, Subscriptions, WriteError,
};
use crate::clock::Clock;
use crate::subscription::Subscription;
use jiff::{SignedDuration, Timestamp};
use presence_core::{
    Activity, Availability, ChangeEvent, Command, SessionId, SessionState, TenantId, Timing, UserId, UserKey,
    UserPresence,
};
use std::sync::Arc;

/// What a suite run may ask of a backend's store.
#[derive(Debug, Clone)]
pub struct Settings {
    pub clock: Clock,
    /// How many changes the log keeps (the backend's floor may be higher).
    pub retain: usize,
    pub retain_for: SignedDuration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            clock: Clock::manual(t0()),
            retain: 200_000,
            retain_for: SignedDuration::from_hours(4),
        }
    }
}

pub trait Harness: Sized {
    type Store: Backend;
    fn open(settings: Settings) -> Self;
    fn store(&self) -> &Self::Store;
    /// Stop cleanly and open the same data again.
    fn reopen(&mut self);
    /// Stop as a crash would (no clean-up) and open the same data again.
    fn crash(&mut self);
    /// Another handle on the same data.
    fn second(&self) -> Self::Store;
    /// Stop what the harness shares between behaviours (servers it started), once the last one
    /// ran: a process-wide static is never dropped, so its servers would outlive the tests.
    fn finish() {}
}

/// One `#[tokio::test]` per behaviour, for the harness given.
#[macro_export]
macro_rules! conformance_tests {
    ($harness:ty) => {
        $crate::conformance_behaviours!(conformance_tests, @each $harness);
    };
    (@each $harness:ty; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                $crate::store::conformance::$name::<$harness>().await;
            }
        )*
    };
}

/// Every behaviour in one test, one after another: for a harness whose server is costly to start
/// (a Redis Cluster), where one process per behaviour would start one per behaviour.
#[macro_export]
macro_rules! conformance_sequence {
    ($test:ident, $harness:ty) => {
        $crate::conformance_behaviours!(conformance_sequence, @run $test, $harness);
    };
    (@run $test:ident, $harness:ty; $($name:ident),* $(,)?) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $test() {
            // Dropped when the sequence ends, passed or failed.
            struct Finish;
            impl Drop for Finish {
                fn drop(&mut self) {
                    <$harness as $crate::store::conformance::Harness>::finish();
                }
            }
            let _finish = Finish;
            $(
                eprintln!("{}: {}", stringify!($test), stringify!($name));
                $crate::store::conformance::$name::<$harness>().await;
            )*
        }
    };
}

/// The behaviours, handed to `$callback`.
#[macro_export]
macro_rules! conformance_behaviours {
    ($callback:ident, $($args:tt)*) => {
        $crate::$callback!($($args)*;
            unknown_user_reads_version_zero,
            commit_is_compare_and_set_and_a_conflict_returns_the_current_state,
            commit_many_checks_each_commit,
            load_many_and_view_many_answer_in_the_order_asked,
            concurrent_commits_to_one_user_all_land,
            acknowledged_states_survive_a_crash,
            connected_client_sessions_are_found_after_a_crash,
            a_second_handle_sees_commits_and_conflicts_with_them,
            deadlines_follow_commits,
            deadlines_survive_a_reopen,
            positions_grow_in_commit_order,
            a_commit_without_a_change_adds_nothing_to_the_log,
            a_follower_sees_every_later_change,
            changes_after_a_position_are_exact,
            a_snapshot_during_concurrent_commits_equals_the_state_at_its_position,
            a_tenant_snapshot_holds_that_tenant_only_at_its_position,
            the_window_survives_a_crash,
            the_window_is_bounded_and_an_expired_position_says_so,
            the_window_drops_changes_older_than_its_age,
            creation_respects_the_limit_under_a_concurrent_burst,
            every_limit_is_checked_at_creation,
            subscription_writes_are_versioned,
            the_lifecycle_index_orders_by_deadline,
            pages_list_one_application_in_id_order,
            a_removal_and_its_lifecycle_notice_are_one_write,
            a_new_subscription_is_owed_what_follows_its_creation,
            acknowledgements_only_move_forward_and_survive_a_reopen,
            a_skip_and_its_missed_notice_are_one_write,
            claims_are_exclusive_until_the_lease_lapses,
            lifecycle_notices_are_claimed_and_finished,
                );
    };
}

fn t0() -> Timestamp {
    "2026-11-27T09:00:00Z".parse().unwrap()
}

fn tenant() -> TenantId {
    TenantId::parse("tenant-a").unwrap()
}

fn key(user: &str) -> UserKey {
    UserKey::new(tenant(), UserId::parse(user).unwrap())
}

/// `state` after a setPresence of session "app" at `at`, and the change it made.
fn set(
    state: &UserPresence,
    availability: Availability,
    activity: Activity,
    at: Timestamp,
) -> (UserPresence, Option<ChangeEvent>) {
    let mut next = state.clone();
    let command = Command::SetPresence {
        session: SessionId::parse("app").unwrap(),
        state: SessionState::new(availability, activity).unwrap(),
        expiration: SignedDuration::from_mins(10),
        application: None,
    };
    let outcome = next.apply(command, at, &Timing::default()).unwrap();
    (next, outcome.change)
}

fn busy(at: Timestamp) -> (UserPresence, Option<ChangeEvent>) {
    set(&UserPresence::default(), Availability::Busy, Activity::InACall, at)
}

/// Load `user`, flip them between Busy and Away, commit; returns the new version.
pub(crate) async fn flip<S: PresenceState>(store: &S, user: &str, at: Timestamp) -> u64 {
    let k = key(user);
    for _ in 0..10_000 {
        let loaded = store.load(&k).await.unwrap();
        let (availability, activity) = if loaded.state.view().availability == Availability::Busy {
            (Availability::Away, Activity::Away)
        } else {
            (Availability::Busy, Activity::InACall)
        };
        let (state, event) = set(&loaded.state, availability, activity, at);
        let commit = Commit {
            key: k.clone(),
            expected_version: loaded.version,
            state,
            event,
        };
        match store.commit(commit).await {
            Ok(v) => return v,
            Err(CommitError::Conflict(_)) => continue,
            Err(e) => panic!("{e}"),
        }
    }
    panic!("too many conflicts flipping {user}");
}

fn subscription(id: &str, app: &str, users: &[&str], lifecycle_at: Timestamp) -> Subscription {
    Subscription {
        id: id.to_owned(),
        tenant: tenant(),
        application_id: app.into(),
        creator_id: None,
        resource: "/communications/presences?$filter=id in ('x')".into(),
        users: users.iter().map(|u| UserId::parse(u).unwrap()).collect(),
        notification_url: format!("https://hooks.example/{id}"),
        lifecycle_notification_url: Some(format!("https://hooks.example/{id}/lifecycle")),
        client_state: Some("cs".into()),
        expiration: t0() + SignedDuration::from_hours(1),
        renewed_at: t0(),
        include_resource_data: false,
        encryption_certificate: None,
        encryption_certificate_id: None,
        latest_supported_tls_version: None,
        reauthorization_requested: false,
        lifecycle_at: Some(lifecycle_at),
    }
}

fn limits(n: usize) -> Limits {
    Limits {
        per_owner: n,
        per_application: n,
        per_watched_user: n,
    }
}

fn owner(app: &str) -> Owner {
    Owner {
        tenant: tenant(),
        application_id: app.into(),
        user: None,
    }
}

fn notice(id: &str, event: LifecycleEvent) -> NewLifecycle {
    NewLifecycle {
        subscription_id: id.to_owned(),
        url: format!("https://hooks.example/{id}/lifecycle"),
        event,
        tenant: tenant(),
        client_state: Some("cs".into()),
        subscription_expiration: t0() + SignedDuration::from_hours(1),
        created_at: t0(),
    }
}

async fn all_changes<L: ChangeLog>(log: &L) -> Vec<Arc<super::Change>> {
    let mut out = Vec::new();
    let mut at = Position::ZERO;
    loop {
        let page = log.changes_after(&at, 1000).await.unwrap();
        if page.is_empty() {
            return out;
        }
        at = join_all(at, &page);
        out.extend(page);
    }
}

/// `at` moved past every change of `changes`.
fn join_all(at: Position, changes: &[Arc<super::Change>]) -> Position {
    changes.iter().fold(at, |p, c| p.join(&c.position))
}

/// Each user's changes in the order their commits landed: the order a log must keep. (Changes
/// of different users may sit in different partitions, whose positions do not compare.)
fn in_order_per_user(changes: &[Arc<super::Change>]) -> bool {
    let mut last: std::collections::HashMap<&UserKey, &Position> = std::collections::HashMap::new();
    changes.iter().all(|c| {
        let ok = last.get(&c.key).is_none_or(|p| **p < c.position);
        last.insert(&c.key, &c.position);
        ok
    })
}

// ---- presence state ----

pub async fn unknown_user_reads_version_zero<H: Harness>() {
    let h = H::open(Settings::default());
    let loaded = h.store().load(&key("nobody")).await.unwrap();
    assert_eq!(loaded.version, 0);
    assert_eq!(*loaded.state, UserPresence::default());
}

pub async fn commit_is_compare_and_set_and_a_conflict_returns_the_current_state<H: Harness>() {
    let h = H::open(Settings::default());
    let store = h.store();
    let (state, event) = busy(t0());
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
    assert_eq!((loaded.version, &*loaded.state), (v1, &state));
    let stale = store
        .commit(Commit {
            key: key("cas"),
            expected_version: 0,
            state: UserPresence::default(),
            event: None,
        })
        .await;
    match stale {
        Err(CommitError::Conflict(current)) => assert_eq!(current, loaded, "the conflict carries what is stored"),
        other => panic!("expected a conflict, got {other:?}"),
    }
    let v2 = store
        .commit(Commit {
            key: key("cas"),
            expected_version: v1,
            state,
            event: None,
        })
        .await
        .unwrap();
    assert!(v2 > v1);
}

pub async fn commit_many_checks_each_commit<H: Harness>() {
    let h = H::open(Settings::default());
    let store = h.store();
    let (state, event) = busy(t0());
    let commit = |user: &str, expected_version: u64| Commit {
        key: key(user),
        expected_version,
        state: state.clone(),
        event: event.clone(),
    };
    store.commit(commit("many-b", 0)).await.unwrap();
    let outcomes = store
        .commit_many(vec![commit("many-a", 0), commit("many-b", 0), commit("many-c", 0)])
        .await;
    assert!(outcomes[0].is_ok() && outcomes[2].is_ok(), "{outcomes:?}");
    assert!(matches!(outcomes[1], Err(CommitError::Conflict(_))), "{outcomes:?}");
    // Two commits of one user in one call: the second expects the first's version.
    let v = store.load(&key("many-a")).await.unwrap().version;
    let outcomes = store.commit_many(vec![commit("many-a", v), commit("many-a", v)]).await;
    assert!(outcomes[0].is_ok());
    assert!(matches!(outcomes[1], Err(CommitError::Conflict(_))));
    assert!(store.commit_many(Vec::new()).await.is_empty());
}

pub async fn load_many_and_view_many_answer_in_the_order_asked<H: Harness>() {
    let h = H::open(Settings::default());
    let store = h.store();
    let users: Vec<String> = (0..650).map(|i| format!("bulk-{i}")).collect();
    for u in users.iter().step_by(2) {
        flip(store, u, t0()).await;
    }
    let keys: Vec<UserKey> = users.iter().rev().map(|u| key(u)).collect();
    let loaded = store.load_many(&keys).await.unwrap();
    let views = store.view_many(&keys, t0()).await.unwrap();
    assert_eq!((loaded.len(), views.len()), (650, 650));
    for (i, k) in keys.iter().enumerate() {
        let set = k.user.as_str().trim_start_matches("bulk-").parse::<usize>().unwrap() % 2 == 0;
        assert_eq!(loaded[i].version > 0, set, "{k:?}");
        let expected = if set { Availability::Busy } else { Availability::Offline };
        assert_eq!(views[i].availability, expected, "{k:?}");
    }
}

pub async fn concurrent_commits_to_one_user_all_land<H: Harness>() {
    let h = H::open(Settings::default());
    let store = h.store().clone();
    let tasks: Vec<_> = (0..32)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { flip(&store, "hot", t0()).await })
        })
        .collect();
    let mut versions = Vec::new();
    for t in tasks {
        versions.push(t.await.unwrap());
    }
    versions.sort_unstable();
    versions.dedup();
    assert_eq!(versions.len(), 32, "each commit got its own version");
    assert_eq!(
        store.load(&key("hot")).await.unwrap().version,
        *versions.last().unwrap()
    );
}

pub async fn acknowledged_states_survive_a_crash<H: Harness>() {
    let mut h = H::open(Settings::default());
    let mut expected = Vec::new();
    for i in 0..20 {
        let user = format!("durable-{i}");
        flip(h.store(), &user, t0()).await;
        expected.push((user.clone(), h.store().load(&key(&user)).await.unwrap().state));
    }
    h.crash();
    for (user, state) in expected {
        assert_eq!(h.store().load(&key(&user)).await.unwrap().state, state, "{user}");
    }
    // The versions go on: a commit expecting the reloaded version lands.
    flip(h.store(), "durable-0", t0()).await;
}

/// Commit `command` to `user` (fresh load, no conflict expected in a test).
async fn apply<S: PresenceState>(store: &S, user: &str, command: Command, at: Timestamp) {
    let loaded = store.load(&key(user)).await.unwrap();
    let mut next = (*loaded.state).clone();
    let outcome = next.apply(command, at, &Timing::default()).unwrap();
    let commit = Commit {
        key: key(user),
        expected_version: loaded.version,
        state: next,
        event: outcome.change,
    };
    store.commit(commit).await.unwrap();
}

pub async fn connected_client_sessions_are_found_after_a_crash<H: Harness>() {
    let mut h = H::open(Settings::default());
    let connect = |session: &str| Command::ConnectClient {
        session: SessionId::parse(session).unwrap(),
        device: presence_core::Device::parse("desktop").unwrap(),
        epoch: "earlier-process".into(),
        state: SessionState::new(Availability::Available, Activity::Available).unwrap(),
    };
    apply(h.store(), "with-client", connect("c1"), t0()).await;
    apply(h.store(), "gone-client", connect("c2"), t0()).await;
    let disconnect = Command::DisconnectClient {
        session: SessionId::parse("c2").unwrap(),
        grace: SignedDuration::from_secs(30),
    };
    apply(h.store(), "gone-client", disconnect, t0()).await;
    flip(h.store(), "app-only", t0()).await;
    h.crash();
    assert_eq!(
        h.store().users_with_connected_clients().await.unwrap(),
        vec![key("with-client")]
    );
    assert_eq!(
        h.second().users_with_connected_clients().await.unwrap(),
        vec![key("with-client")]
    );
}

pub async fn a_second_handle_sees_commits_and_conflicts_with_them<H: Harness>() {
    let h = H::open(Settings::default());
    let other = h.second();
    flip(h.store(), "shared", t0()).await;
    let seen = other.load(&key("shared")).await.unwrap();
    assert_eq!(seen.state.view().availability, Availability::Busy);
    flip(&other, "shared", t0()).await;
    let stale = h
        .store()
        .commit(Commit {
            key: key("shared"),
            expected_version: seen.version,
            state: UserPresence::default(),
            event: None,
        })
        .await;
    assert!(matches!(stale, Err(CommitError::Conflict(c)) if c.state.view().availability == Availability::Away));
}

// ---- deadlines ----

pub async fn deadlines_follow_commits<H: Harness>() {
    let h = H::open(Settings::default());
    let store = h.store();
    let (state, event) = busy(t0());
    let deadline = state.next_deadline().unwrap();
    let k = key("deadline");
    let v = store
        .commit(Commit {
            key: k.clone(),
            expected_version: 0,
            state: state.clone(),
            event,
        })
        .await
        .unwrap();
    assert!(!store
        .due(deadline - SignedDuration::from_millis(1), 100)
        .await
        .unwrap()
        .contains(&k));
    assert!(store.due(deadline, 100).await.unwrap().contains(&k));
    assert!(store.next_deadline().await.unwrap() <= deadline);
    let mut advanced = state;
    let event = advanced.advance(deadline);
    store
        .commit(Commit {
            key: k.clone(),
            expected_version: v,
            state: advanced,
            event,
        })
        .await
        .unwrap();
    let later = deadline + SignedDuration::from_hours(1);
    assert!(
        !store.due(later, 10_000).await.unwrap().contains(&k),
        "no deadline left"
    );
}

pub async fn deadlines_survive_a_reopen<H: Harness>() {
    let mut h = H::open(Settings::default());
    flip(h.store(), "timer", t0()).await;
    let deadline = h
        .store()
        .load(&key("timer"))
        .await
        .unwrap()
        .state
        .next_deadline()
        .unwrap();
    h.reopen();
    assert!(h.store().due(deadline, 100).await.unwrap().contains(&key("timer")));
    h.crash();
    assert!(h.store().due(deadline, 100).await.unwrap().contains(&key("timer")));
}

// ---- change log ----

pub async fn positions_grow_in_commit_order<H: Harness>() {
    let h = H::open(Settings::default());
    let store = h.store();
    let start = store.head();
    for user in ["p1", "p2", "p1", "p3"] {
        flip(store, user, t0()).await;
    }
    let changes = store.changes_after(&start, 100).await.unwrap();
    let mut users: Vec<&str> = changes.iter().map(|c| c.key.user.as_str()).collect();
    users.sort_unstable();
    assert_eq!(users, ["p1", "p1", "p2", "p3"]);
    assert!(in_order_per_user(&changes));
    assert!(changes.iter().all(|c| !start.includes(&c.position)));
    assert_eq!(store.head(), join_all(start, &changes));
    let p1: Vec<_> = changes.iter().filter(|c| c.key.user.as_str() == "p1").collect();
    assert!(p1[0].event.view.sequence < p1[1].event.view.sequence);
    assert_eq!(p1[1].event.view.availability, Availability::Away);
}

pub async fn a_commit_without_a_change_adds_nothing_to_the_log<H: Harness>() {
    let h = H::open(Settings::default());
    let store = h.store();
    let v = flip(store, "quiet", t0()).await;
    let head = store.head();
    let loaded = store.load(&key("quiet")).await.unwrap();
    store
        .commit(Commit {
            key: key("quiet"),
            expected_version: v,
            state: (*loaded.state).clone(),
            event: None,
        })
        .await
        .unwrap();
    assert_eq!(store.head(), head);
    assert!(store.changes_after(&head, 10).await.unwrap().is_empty());
}

pub async fn a_follower_sees_every_later_change<H: Harness>() {
    let h = H::open(Settings::default());
    let store = h.store().clone();
    flip(&store, "before", t0()).await;
    let mut follower = super::change_log::Follower::from_now(h.second(), 7);
    let writer = tokio::spawn(async move {
        for i in 0..100 {
            flip(&store, &format!("f{}", i % 10), t0()).await;
        }
    });
    let mut seen = Vec::new();
    while seen.len() < 100 {
        seen.extend(follower.next().await.unwrap());
    }
    writer.await.unwrap();
    assert_eq!(seen.len(), 100, "nothing from before, nothing twice");
    assert!(seen.iter().all(|c| c.key.user.as_str() != "before"));
    assert!(in_order_per_user(&seen));
    assert_eq!(follower.position(), join_all(follower.position(), &seen));
    assert_eq!(follower.position(), h.store().head());
}

pub async fn changes_after_a_position_are_exact<H: Harness>() {
    let h = H::open(Settings::default());
    let store = h.store();
    for i in 0..30 {
        flip(store, &format!("e{}", i % 4), t0()).await;
    }
    let all = all_changes(store).await;
    assert_eq!(all.len(), 30);
    assert!(in_order_per_user(&all));
    // After the cut holding the first i changes read, exactly the rest follow, each once.
    for i in 0..all.len() {
        let cut = join_all(Position::ZERO, &all[..=i]);
        let first = store.changes_after(&cut, 5).await.unwrap();
        assert_eq!(first.len(), 5.min(all.len() - i - 1));
        let mut rest: Vec<String> = Vec::new();
        let mut at = cut.clone();
        loop {
            let page = store.changes_after(&at, 5).await.unwrap();
            if page.is_empty() {
                break;
            }
            assert!(
                page.iter().all(|c| !at.includes(&c.position)),
                "nothing at or before the cut"
            );
            at = join_all(at, &page);
            rest.extend(page.iter().map(|c| c.position.to_text()));
        }
        let mut expected: Vec<String> = all[i + 1..].iter().map(|c| c.position.to_text()).collect();
        rest.sort_unstable();
        expected.sort_unstable();
        assert_eq!(rest, expected);
    }
    assert!(store.changes_after(&store.head(), 5).await.unwrap().is_empty());
}

pub async fn a_snapshot_during_concurrent_commits_equals_the_state_at_its_position<H: Harness>() {
    let h = H::open(Settings::default());
    let store = h.store().clone();
    let users: Vec<String> = (0..20).map(|i| format!("snap-{i}")).collect();
    let keys: Vec<UserKey> = users.iter().map(|u| key(u)).collect();
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let store = store.clone();
            let users = users.clone();
            tokio::spawn(async move {
                for i in 0..200 {
                    flip(&store, &users[(i * 7 + w) % users.len()], t0()).await;
                }
            })
        })
        .collect();
    let mut snapshots = Vec::new();
    for _ in 0..40 {
        snapshots.push(h.second().snapshot(&keys).await.unwrap());
        tokio::task::yield_now().await;
    }
    for w in writers {
        w.await.unwrap();
    }
    let all = all_changes(&store).await;
    for snapshot in snapshots {
        // Replay the log up to the snapshot's position: the views must be exactly those.
        let mut expected: Vec<_> = keys.iter().map(|_| UserPresence::default().view()).collect();
        for c in all.iter().filter(|c| c.position <= snapshot.position) {
            if let Some(i) = keys.iter().position(|k| *k == c.key) {
                expected[i] = c.event.view.clone();
            }
        }
        assert_eq!(snapshot.views, expected, "snapshot at {}", snapshot.position);
    }
}

pub async fn a_tenant_snapshot_holds_that_tenant_only_at_its_position<H: Harness>() {
    let h = H::open(Settings::default());
    let store = h.store();
    for user in ["t1", "t2", "t3"] {
        flip(store, user, t0()).await;
    }
    let other = UserKey::new(TenantId::parse("tenant-b").unwrap(), UserId::parse("t1").unwrap());
    let (state, event) = busy(t0());
    store
        .commit(Commit {
            key: other,
            expected_version: 0,
            state,
            event,
        })
        .await
        .unwrap();
    flip(store, "t2", t0()).await;
    let snapshot = store.snapshot_tenant(&tenant()).await.unwrap();
    assert_eq!(snapshot.position, store.head());
    let mut got: Vec<(String, Availability)> = snapshot
        .presences
        .iter()
        .map(|(k, v)| {
            assert_eq!(k.tenant, tenant());
            (k.user.as_str().to_owned(), v.availability)
        })
        .collect();
    got.sort_by(|a, b| a.0.cmp(&b.0));
    let expected = [
        ("t1", Availability::Busy),
        ("t2", Availability::Away),
        ("t3", Availability::Busy),
    ]
    .map(|(u, a)| (u.to_owned(), a));
    assert_eq!(got, expected);
}

pub async fn the_window_survives_a_crash<H: Harness>() {
    let mut h = H::open(Settings::default());
    for i in 0..25 {
        flip(h.store(), &format!("w{}", i % 5), t0()).await;
    }
    let before = all_changes(h.store()).await;
    let head = h.store().head();
    h.crash();
    assert_eq!(h.store().head(), head);
    assert_eq!(all_changes(h.store()).await, before);
    flip(h.store(), "w0", t0()).await;
    assert!(h.store().head() > head, "positions go on growing after a restart");
}

pub async fn the_window_is_bounded_and_an_expired_position_says_so<H: Harness>() {
    let mut h = H::open(Settings {
        retain: 1,
        ..Settings::default()
    });
    // Past any backend's floor: every commit_many of 1,000 distinct users is 1,000 changes.
    let (state, event) = busy(t0());
    let mut total = 0;
    while total < 25_000 {
        let commits = (0..1000)
            .map(|i| Commit {
                key: key(&format!("bound-{}", total + i)),
                expected_version: 0,
                state: state.clone(),
                event: event.clone(),
            })
            .collect();
        assert!(h.store().commit_many(commits).await.iter().all(Result::is_ok));
        total += 1000;
    }
    let oldest = match h.store().changes_after(&Position::ZERO, 10).await {
        Err(LogError::Expired { oldest }) => oldest,
        other => panic!("expected Expired, got {:?}", other.map(|c| c.len())),
    };
    let kept = all_after(h.store(), oldest.clone()).await;
    assert!(kept < 25_000, "the window dropped old changes ({kept} kept)");
    h.reopen();
    assert!(matches!(
        h.store().changes_after(&Position::ZERO, 10).await,
        Err(LogError::Expired { .. })
    ));
    assert!(all_after(h.store(), oldest).await >= kept.min(1));
}

async fn all_after<L: ChangeLog>(log: &L, mut at: Position) -> usize {
    let mut n = 0;
    loop {
        let page = log.changes_after(&at, 1000).await.unwrap();
        if page.is_empty() {
            return n;
        }
        at = join_all(at, &page);
        n += page.len();
    }
}

pub async fn the_window_drops_changes_older_than_its_age<H: Harness>() {
    let settings = Settings {
        retain_for: SignedDuration::from_mins(10),
        ..Settings::default()
    };
    let clock = settings.clock.clone();
    let h = H::open(settings);
    let (state, event) = busy(t0());
    let commits = |from: usize, at: Timestamp| -> Vec<Commit> {
        (from..from + 1000)
            .map(|i| {
                let mut event = event.clone();
                if let Some(e) = event.as_mut() {
                    e.at = at;
                }
                Commit {
                    key: key(&format!("aged-{i}")),
                    expected_version: 0,
                    state: state.clone(),
                    event,
                }
            })
            .collect()
    };
    // Enough old changes that the backend's floor does not keep them all.
    for chunk in 0..30 {
        h.store().commit_many(commits(chunk * 1000, t0())).await;
    }
    clock.advance(SignedDuration::from_mins(30));
    let later = t0() + SignedDuration::from_mins(30);
    h.store().commit_many(commits(1_000_000, later)).await;
    let oldest = match h.store().changes_after(&Position::ZERO, 1).await {
        Err(LogError::Expired { oldest }) => oldest,
        other => panic!("expected Expired, got {:?}", other.map(|c| c.len())),
    };
    assert!(all_after(h.store(), oldest).await < 31_000);
}

// ---- subscriptions ----

pub async fn creation_respects_the_limit_under_a_concurrent_burst<H: Harness>() {
    let h = H::open(Settings::default());
    let tasks: Vec<_> = (0..40)
        .map(|i| {
            let store = if i % 2 == 0 { h.store().clone() } else { h.second() };
            tokio::spawn(async move {
                store
                    .create(subscription(&format!("burst-{i}"), "app", &["u"], t0()), limits(25))
                    .await
            })
        })
        .collect();
    let mut created = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(stored) => {
                assert_eq!(stored.version, 1);
                created += 1;
            }
            Err(CreateError::LimitReached(Limit::Owner(25))) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(created, 25);
    assert_eq!(h.store().count(&owner("app")).await.unwrap(), (25, 25));
    assert_eq!(h.store().count(&owner("other")).await.unwrap(), (0, 0));
    h.store()
        .create(subscription("other-app", "other", &["v"], t0()), limits(25))
        .await
        .unwrap();
}

pub async fn every_limit_is_checked_at_creation<H: Harness>() {
    let h = H::open(Settings::default());
    let store = h.store();
    let limits = Limits {
        per_owner: 2,
        per_application: 3,
        per_watched_user: 2,
    };
    let by = |id: &str, user: &str, watched: &[&str]| {
        let mut s = subscription(id, "app", watched, t0());
        s.creator_id = Some(user.into());
        s
    };
    store.create(by("a1", "alice", &["hot"]), limits).await.unwrap();
    store.create(by("a2", "alice", &["cold"]), limits).await.unwrap();
    assert_eq!(
        store.create(by("a3", "alice", &["x"]), limits).await,
        Err(CreateError::LimitReached(Limit::Owner(2)))
    );
    store.create(by("b1", "bob", &["hot"]), limits).await.unwrap();
    assert_eq!(
        store.create(by("c1", "carol", &["y"]), limits).await,
        Err(CreateError::LimitReached(Limit::Application(3)))
    );
    let other_app = || {
        let mut s = subscription("d1", "other", &["z", "hot"], t0());
        s.creator_id = Some("dave".into());
        s
    };
    assert_eq!(
        store.create(other_app(), limits).await,
        Err(CreateError::LimitReached(Limit::WatchedUser(
            UserId::parse("hot").unwrap(),
            2
        )))
    );
    // A removal gives its places back.
    let a1 = store.subscription("a1").await.unwrap().unwrap();
    store
        .write(SubscriptionWrite::Remove {
            id: "a1".into(),
            expected_version: a1.version,
            lifecycle: None,
        })
        .await
        .unwrap();
    store.create(other_app(), limits).await.unwrap();
    let alice = Owner {
        user: Some("alice".into()),
        ..owner("app")
    };
    assert_eq!(store.count(&alice).await.unwrap(), (1, 2));
}

pub async fn subscription_writes_are_versioned<H: Harness>() {
    let mut h = H::open(Settings::default());
    let store = h.store();
    let created = store
        .create(subscription("v", "app", &["u"], t0()), limits(10))
        .await
        .unwrap();
    let mut renewed = (*created.subscription).clone();
    renewed.expiration = t0() + SignedDuration::from_hours(2);
    let write = |expected_version| SubscriptionWrite::Replace {
        subscription: Box::new(renewed.clone()),
        expected_version,
        lifecycle: None,
    };
    let v2 = store.write(write(1)).await.unwrap().unwrap();
    assert_eq!(v2.version, 2);
    match store.write(write(1)).await {
        Err(WriteError::Conflict(Some(current))) => assert_eq!(current, v2),
        other => panic!("expected a conflict, got {other:?}"),
    }
    h.reopen();
    let stored = h.store().subscription("v").await.unwrap().unwrap();
    assert_eq!(stored.subscription.expiration, renewed.expiration);
    let removed = h
        .store()
        .write(SubscriptionWrite::Remove {
            id: "v".into(),
            expected_version: stored.version,
            lifecycle: None,
        })
        .await
        .unwrap();
    assert!(removed.is_none());
    assert!(h.store().subscription("v").await.unwrap().is_none());
    assert!(matches!(
        h.store()
            .write(SubscriptionWrite::Remove {
                id: "v".into(),
                expected_version: stored.version,
                lifecycle: None,
            })
            .await,
        Err(WriteError::Conflict(None))
    ));
}

pub async fn the_lifecycle_index_orders_by_deadline<H: Harness>() {
    let h = H::open(Settings::default());
    let store = h.store();
    for (id, mins) in [("late", 50), ("early", 10), ("middle", 30)] {
        store
            .create(
                subscription(id, "app", &["u"], t0() + SignedDuration::from_mins(mins)),
                limits(10),
            )
            .await
            .unwrap();
    }
    assert_eq!(
        store.next_lifecycle_deadline().await,
        Some(t0() + SignedDuration::from_mins(10))
    );
    let due = store
        .lifecycle_due(t0() + SignedDuration::from_mins(30), 10)
        .await
        .unwrap();
    let ids: Vec<&str> = due.iter().map(|s| s.subscription.id.as_str()).collect();
    assert_eq!(ids, ["early", "middle"]);
    // Moving a deadline refiles it.
    let early = store.subscription("early").await.unwrap().unwrap();
    let mut moved = (*early.subscription).clone();
    moved.lifecycle_at = Some(t0() + SignedDuration::from_mins(55));
    store
        .write(SubscriptionWrite::Replace {
            subscription: Box::new(moved),
            expected_version: early.version,
            lifecycle: None,
        })
        .await
        .unwrap();
    assert_eq!(
        store.next_lifecycle_deadline().await,
        Some(t0() + SignedDuration::from_mins(30))
    );
}

pub async fn pages_list_one_application_in_id_order<H: Harness>() {
    let h = H::open(Settings::default());
    let store = h.store();
    for i in [3, 1, 4, 0, 2] {
        store
            .create(subscription(&format!("page-{i}"), "app", &["u"], t0()), limits(10))
            .await
            .unwrap();
    }
    store
        .create(subscription("page-x", "other", &["u"], t0()), limits(10))
        .await
        .unwrap();
    let ids = |page: Vec<Stored>| page.into_iter().map(|s| s.subscription.id.clone()).collect::<Vec<_>>();
    assert_eq!(
        ids(store.page(&owner("app"), None, 2).await.unwrap()),
        ["page-0", "page-1"]
    );
    assert_eq!(
        ids(store.page(&owner("app"), Some("page-1"), 10).await.unwrap()),
        ["page-2", "page-3", "page-4"]
    );
    let elsewhere = Owner {
        tenant: TenantId::parse("tenant-b").unwrap(),
        ..owner("app")
    };
    assert!(store.page(&elsewhere, None, 10).await.unwrap().is_empty());
    let a_user = Owner {
        user: Some("alice".into()),
        ..owner("app")
    };
    assert!(
        store.page(&a_user, None, 10).await.unwrap().is_empty(),
        "owners are per user too"
    );
}

pub async fn a_removal_and_its_lifecycle_notice_are_one_write<H: Harness>() {
    let mut h = H::open(Settings::default());
    let created = h
        .store()
        .create(subscription("gone", "app", &["u"], t0()), limits(10))
        .await
        .unwrap();
    h.store()
        .write(SubscriptionWrite::Remove {
            id: "gone".into(),
            expected_version: created.version,
            lifecycle: Some(notice("gone", LifecycleEvent::SubscriptionRemoved)),
        })
        .await
        .unwrap();
    // A crash right after the write: both halves are there, or the write was not acknowledged.
    h.crash();
    assert!(h.store().subscription("gone").await.unwrap().is_none());
    let notices = h
        .store()
        .claim_lifecycle("c", t0(), SignedDuration::from_secs(30), 10)
        .await
        .unwrap();
    assert_eq!(notices.len(), 1);
    assert_eq!(notices[0].notice.event, LifecycleEvent::SubscriptionRemoved);
    assert_eq!(notices[0].notice.subscription_id, "gone");
    assert!(
        h.store()
            .claim("c", t0(), SignedDuration::from_secs(30))
            .await
            .unwrap()
            .is_empty(),
        "no position is kept for a removed subscription"
    );
}

// ---- deliveries ----

pub async fn a_new_subscription_is_owed_what_follows_its_creation<H: Harness>() {
    let h = H::open(Settings::default());
    let store = h.store();
    flip(store, "watched", t0()).await;
    let head = store.head();
    store
        .create(subscription("new", "app", &["watched"], t0()), limits(10))
        .await
        .unwrap();
    let claimed = store.claim("c", t0(), SignedDuration::from_secs(30)).await.unwrap();
    assert_eq!(claimed, vec![("new".to_string(), head)]);
}

pub async fn acknowledgements_only_move_forward_and_survive_a_reopen<H: Harness>() {
    let mut h = H::open(Settings::default());
    h.store()
        .create(subscription("ack", "app", &["u"], t0()), limits(10))
        .await
        .unwrap();
    for _ in 0..5 {
        flip(h.store(), "u", t0()).await;
    }
    let head = h.store().head();
    let lease = SignedDuration::from_secs(30);
    h.store()
        .acknowledge("c", vec![("ack".into(), head.clone())])
        .await
        .unwrap();
    h.store()
        .acknowledge(
            "c",
            vec![("ack".into(), Position::ZERO), ("unknown".into(), head.clone())],
        )
        .await
        .unwrap();
    assert_eq!(
        h.store().claim("c", t0(), lease).await.unwrap(),
        vec![("ack".to_string(), head.clone())]
    );
    h.reopen();
    assert_eq!(
        h.store().claim("c", t0(), lease).await.unwrap(),
        vec![("ack".to_string(), head)]
    );
}

pub async fn a_skip_and_its_missed_notice_are_one_write<H: Harness>() {
    let mut h = H::open(Settings::default());
    h.store()
        .create(subscription("lossy", "app", &["u"], t0()), limits(10))
        .await
        .unwrap();
    for _ in 0..3 {
        flip(h.store(), "u", t0()).await;
    }
    let head = h.store().head();
    h.store()
        .skip("lossy", head.clone(), Some(notice("lossy", LifecycleEvent::Missed)))
        .await
        .unwrap();
    h.crash();
    let lease = SignedDuration::from_secs(30);
    assert_eq!(
        h.store().claim("c", t0(), lease).await.unwrap(),
        vec![("lossy".to_string(), head)]
    );
    let notices = h.store().claim_lifecycle("c", t0(), lease, 10).await.unwrap();
    assert_eq!(notices.len(), 1);
    assert_eq!(notices[0].notice.event, LifecycleEvent::Missed);
}

pub async fn claims_are_exclusive_until_the_lease_lapses<H: Harness>() {
    let h = H::open(Settings::default());
    h.store()
        .create(subscription("leased", "app", &["u"], t0()), limits(10))
        .await
        .unwrap();
    let other = h.second();
    let lease = SignedDuration::from_secs(30);
    assert_eq!(h.store().claim("a", t0(), lease).await.unwrap().len(), 1);
    assert!(other.claim("b", t0(), lease).await.unwrap().is_empty(), "held by a");
    assert_eq!(
        h.store()
            .claim("a", t0() + SignedDuration::from_secs(20), lease)
            .await
            .unwrap()
            .len(),
        1,
        "renewed"
    );
    assert!(other
        .claim("b", t0() + SignedDuration::from_secs(40), lease)
        .await
        .unwrap()
        .is_empty());
    let later = t0() + SignedDuration::from_secs(51);
    assert_eq!(
        other.claim("b", later, lease).await.unwrap().len(),
        1,
        "a's lease lapsed"
    );
    // A released claim is free at once; releasing another's claim does nothing.
    h.store().release("a", vec!["leased".into()]).await.unwrap();
    assert!(
        h.store().claim("a", later, lease).await.unwrap().is_empty(),
        "b holds it"
    );
    other.release("b", vec!["leased".into()]).await.unwrap();
    assert_eq!(h.store().claim("a", later, lease).await.unwrap().len(), 1, "b let go");
}

pub async fn lifecycle_notices_are_claimed_and_finished<H: Harness>() {
    let settings = Settings::default();
    let clock = settings.clock.clone();
    let mut h = H::open(settings);
    let created = h
        .store()
        .create(subscription("life", "app", &["u"], t0()), limits(10))
        .await
        .unwrap();
    let mut asked = (*created.subscription).clone();
    asked.reauthorization_requested = true;
    h.store()
        .write(SubscriptionWrite::Replace {
            subscription: Box::new(asked),
            expected_version: created.version,
            lifecycle: Some(notice("life", LifecycleEvent::ReauthorizationRequired)),
        })
        .await
        .unwrap();
    let lease = SignedDuration::from_secs(30);
    let claimed = h.store().claim_lifecycle("a", t0(), lease, 10).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert!(h
        .second()
        .claim_lifecycle("b", t0(), lease, 10)
        .await
        .unwrap()
        .is_empty());
    h.store().finish_lifecycle(vec![claimed[0].id]).await.unwrap();
    h.reopen();
    clock.advance(SignedDuration::from_secs(1));
    let later = t0() + SignedDuration::from_hours(1);
    assert!(h
        .store()
        .claim_lifecycle("b", later, lease, 10)
        .await
        .unwrap()
        .is_empty());
    // Ids go on after a restart rather than being reused.
    h.store()
        .skip("life", h.store().head(), Some(notice("life", LifecycleEvent::Missed)))
        .await
        .unwrap();
    let next = h.store().claim_lifecycle("b", later, lease, 10).await.unwrap();
    assert!(next[0].id > claimed[0].id);
}

#[cfg(test)]
mod embedded {
    use super::{Harness, Settings};
    use crate::store::embedded::change_log::Retention;
    use crate::store::embedded::{EmbeddedStore, Options};

    /// The embedded store in a temporary directory. Its second handle is a clone: one process
    /// holds the files, so that is what another user of the same data sees.
    pub struct Embedded {
        dir: tempfile::TempDir,
        options: Options,
        store: Option<EmbeddedStore>,
    }

    impl Embedded {
        fn open_store(&self) -> EmbeddedStore {
            EmbeddedStore::open(self.dir.path(), self.options.clone()).unwrap().0
        }
    }

    impl Harness for Embedded {
        type Store = EmbeddedStore;

        fn open(settings: Settings) -> Self {
            let mut h = Embedded {
                dir: tempfile::tempdir().unwrap(),
                options: Options {
                    retention: Retention {
                        count: settings.retain,
                        age: settings.retain_for,
                    },
                    clock: settings.clock,
                },
                store: None,
            };
            h.store = Some(h.open_store());
            h
        }

        fn store(&self) -> &EmbeddedStore {
            self.store.as_ref().expect("open")
        }

        fn reopen(&mut self) {
            self.store.take().expect("open").close();
            self.store = Some(self.open_store());
        }

        fn crash(&mut self) {
            self.store.take().expect("open").crash();
            self.store = Some(self.open_store());
        }

        fn second(&self) -> EmbeddedStore {
            self.store().clone()
        }
    }

    crate::conformance_tests!(Embedded);
}

/// The Redis backend on a standalone server and on a three-master Cluster with replicas, each
/// started by the test. Every behaviour gets its own key prefix, so a fresh keyspace.
mod redis {
    use super::{Harness, Settings};
    use crate::store::redis::connection::Target;
    use crate::store::redis::test_servers::{start_node, Cluster, Node};
    use crate::store::redis::{Options, RedisStore};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;
    use std::time::Duration;

    // Started by the first behaviour, shared by the rest, stopped by `finish`.
    static STANDALONE: Mutex<Option<Node>> = Mutex::new(None);
    static CLUSTER: Mutex<Option<Cluster>> = Mutex::new(None);
    static NEXT_PREFIX: AtomicUsize = AtomicUsize::new(0);

    pub struct OnRedis<const CLUSTER_MODE: bool> {
        options: Options,
        store: Option<RedisStore>,
    }

    fn block<T>(f: impl std::future::Future<Output = T>) -> T {
        tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(f))
    }

    impl<const CLUSTER_MODE: bool> OnRedis<CLUSTER_MODE> {
        fn open_store(&self) -> RedisStore {
            block(RedisStore::open(self.options.clone())).expect("the Redis store opens")
        }
    }

    impl<const CLUSTER_MODE: bool> Harness for OnRedis<CLUSTER_MODE> {
        type Store = RedisStore;

        fn open(settings: Settings) -> Self {
            let url = if CLUSTER_MODE {
                CLUSTER
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get_or_insert_with(Cluster::start)
                    .url()
            } else {
                STANDALONE
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get_or_insert_with(|| start_node(false))
                    .url()
            };
            let mut options = Options::new(Target::parse(&url).unwrap(), settings.clock);
            options.prefix = format!("t{}", NEXT_PREFIX.fetch_add(1, Ordering::Relaxed));
            options.retain = settings.retain;
            options.retain_for = settings.retain_for;
            // Other handles' commits reach this one by the live path alone.
            options.poll = Duration::from_secs(3600);
            let mut h = OnRedis { options, store: None };
            h.store = Some(h.open_store());
            h
        }

        fn store(&self) -> &RedisStore {
            self.store.as_ref().expect("open")
        }

        fn reopen(&mut self) {
            self.store = None;
            self.store = Some(self.open_store());
        }

        fn crash(&mut self) {
            // Nothing is held back from Redis: a dropped handle is a crashed node.
            self.reopen();
        }

        fn second(&self) -> RedisStore {
            self.open_store()
        }

        fn finish() {
            if CLUSTER_MODE {
                CLUSTER.lock().unwrap_or_else(|e| e.into_inner()).take();
            } else {
                STANDALONE.lock().unwrap_or_else(|e| e.into_inner()).take();
            }
        }
    }

    crate::conformance_sequence!(conformance_on_standalone_redis, OnRedis<false>);
    crate::conformance_sequence!(conformance_on_a_redis_cluster, OnRedis<true>);
}
