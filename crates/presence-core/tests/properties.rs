//! Property tests: the fold ignores insertion order, and nothing changes between deadlines
//! (work-location layers, which end at a midnight, included).
use jiff::{SignedDuration, Timestamp};
use presence_core::*;
use proptest::prelude::*;

const PAIRS: [(Availability, Activity); 5] = [
    (Availability::Available, Activity::Available),
    (Availability::Busy, Activity::InACall),
    (Availability::Busy, Activity::InAConferenceCall),
    (Availability::Away, Activity::Away),
    (Availability::DoNotDisturb, Activity::Presenting),
];

fn t0() -> Timestamp {
    "2026-11-27T09:00:00Z".parse().unwrap()
}

#[derive(Debug, Clone)]
struct Op {
    session: u8,
    pair: usize,
    /// Seconds after t0 at which the op happens.
    offset: i64,
    expiration_mins: i64,
    clear: bool,
    /// A work-location command instead of a session one (see `location_command`).
    location: Option<u8>,
    /// A client-session command instead (see `client_command`).
    client: Option<u8>,
}

fn op() -> impl Strategy<Value = Op> {
    (
        0u8..5,
        0usize..5,
        0i64..1800,
        5i64..=240,
        prop::bool::weighted(0.15),
        prop::option::weighted(0.25, 0u8..6),
        prop::option::weighted(0.3, 0u8..5),
    )
        .prop_map(|(session, pair, offset, expiration_mins, clear, location, client)| Op {
            session,
            pair,
            offset,
            expiration_mins,
            clear,
            location,
            client,
        })
}

/// Client-session commands on sessions `c0`..`c4`: connect, set a state, report activity,
/// disconnect (a grace of 30 s), or orphan every client of another process.
fn client_command(op: &Op, kind: u8) -> Command {
    let session = SessionId::parse(&format!("c{}", op.session)).unwrap();
    let (av, ac) = PAIRS[op.pair];
    let state = SessionState::new(av, ac).unwrap();
    match kind {
        0 => Command::ConnectClient {
            session,
            device: Device::parse("desktop").unwrap(),
            epoch: format!("e{}", op.expiration_mins % 2),
            state,
        },
        1 => Command::SetClientState { session, state },
        2 => Command::ClientActivity { session },
        3 => Command::DisconnectClient {
            session,
            grace: SignedDuration::from_secs(30),
        },
        _ => Command::OrphanClients {
            live: vec!["e1".into()],
            grace: SignedDuration::from_secs(30),
        },
    }
}

/// Work-location commands in zones whose day ends at different distances from t0 (09:00 UTC):
/// Kiritimati (UTC+14) an hour later, UTC 15 hours later, Los Angeles 23 hours later.
fn location_command(kind: u8) -> Command {
    let zone = |name: &str| DayZone::new(jiff::tz::TimeZone::get(name).unwrap());
    let input = |kind, place: Option<&str>| LocationInput {
        kind,
        place_id: place.map(|p| PlaceId::parse(p).unwrap()),
    };
    match kind {
        0 => Command::SetWorkLocation {
            layer: LocationLayer::Manual,
            location: input(WorkLocationType::Office, Some("hq")),
            day: zone("Pacific/Kiritimati"),
        },
        1 => Command::SetWorkLocation {
            layer: LocationLayer::Automatic,
            location: input(WorkLocationType::Remote, None),
            day: DayZone::utc(),
        },
        2 => Command::SetWorkLocation {
            layer: LocationLayer::Automatic,
            location: input(WorkLocationType::Office, Some("b2")),
            day: zone("Pacific/Kiritimati"),
        },
        3 => Command::SetWorkLocation {
            layer: LocationLayer::Manual,
            location: input(WorkLocationType::TimeOff, None),
            day: zone("America/Los_Angeles"),
        },
        4 => Command::ClearAutomaticLocation,
        _ => Command::ClearLocation,
    }
}

fn command(op: &Op) -> Command {
    if let Some(kind) = op.location {
        return location_command(kind);
    }
    if let Some(kind) = op.client {
        return client_command(op, kind);
    }
    let session = SessionId::parse(&format!("s{}", op.session)).unwrap();
    if op.clear {
        return Command::ClearPresence { session };
    }
    let (av, ac) = PAIRS[op.pair];
    Command::SetPresence {
        session,
        state: SessionState::new(av, ac).unwrap(),
        expiration: SignedDuration::from_mins(op.expiration_mins),
        application: None,
    }
}

fn run(ops: &[Op], timing: &Timing) -> UserPresence {
    let mut u = UserPresence::default();
    let mut ops = ops.to_vec();
    ops.sort_by_key(|o| o.offset);
    for o in &ops {
        let _ = u.apply(command(o), t0() + SignedDuration::from_secs(o.offset), timing);
    }
    u
}

proptest! {
    /// Sessions set at distinct instants, applied in any order of arrival, fold to the same presence.
    #[test]
    fn fold_ignores_insertion_order(ops in prop::collection::vec(op(), 1..8), seed in any::<u64>()) {
        let timing = Timing::default();
        // One set per session at the same instant: arrival order is the only difference.
        let mut sets: Vec<Op> = ops.iter().cloned().map(|mut o| { o.clear = false; o.location = None; o.offset = 0; o.client = o.client.map(|_| 0); o }).collect();
        sets.sort_by_key(|o| o.session);
        sets.dedup_by_key(|o| o.session);
        let mut shuffled = sets.clone();
        let n = shuffled.len();
        for i in (1..n).rev() {
            let j = (seed.wrapping_mul(6364136223846793005).wrapping_add(i as u64) % (i as u64 + 1)) as usize;
            shuffled.swap(i, j);
        }
        let (mut a, mut b) = (UserPresence::default(), UserPresence::default());
        for o in &sets { a.apply(command(o), t0(), &timing).unwrap(); }
        for o in &shuffled { b.apply(command(o), t0(), &timing).unwrap(); }
        prop_assert_eq!((a.view().availability, a.view().activity), (b.view().availability, b.view().activity));
    }

    /// Renewing a session (setPresence on an id the user already has) leaves the user exactly as
    /// clearing it and setting it afresh would: a renewal updates the session in place, keeping
    /// its id, and must not keep anything else from before. `applied` leaves the state it is
    /// asked about as it was.
    #[test]
    fn a_renewal_is_a_fresh_session(ops in prop::collection::vec(op(), 1..10), renew in op(), later in 0i64..3_600) {
        let timing = Timing::default();
        let u = run(&ops, &timing);
        let before = u.clone();
        let last = ops.iter().map(|o| o.offset).max().unwrap_or(0);
        let at = t0() + SignedDuration::from_secs(last + later);
        let set = command(&Op { clear: false, location: None, client: None, ..renew.clone() });
        let Ok((renewed, _)) = u.applied(&set, at, &timing) else {
            return Ok(()); // too many sessions: nothing to compare
        };
        prop_assert_eq!(&u, &before);
        let clear = Command::ClearPresence { session: SessionId::parse(&format!("s{}", renew.session)).unwrap() };
        let cleared = u.applied(&clear, at, &timing).map(|(c, _)| c).unwrap_or_else(|_| u.clone());
        let (fresh, _) = cleared.applied(&set, at, &timing).unwrap();
        let sorted = |p: &UserPresence| {
            let mut s = p.sessions().to_vec();
            s.sort_by(|a, b| a.id.as_str().cmp(b.id.as_str()));
            s
        };
        prop_assert_eq!(sorted(&renewed), sorted(&fresh));
        for probe in [0i64, 299, 300, 600, 3_600, 20_000] {
            let t = at + SignedDuration::from_secs(probe);
            let (a, b) = (renewed.view_at(t), fresh.view_at(t));
            prop_assert_eq!((a.availability, a.activity), (b.availability, b.activity));
        }
        prop_assert_eq!(renewed.next_deadline(), fresh.next_deadline());
    }

    /// Between `now` and `next_deadline()` the view is constant; at the deadline something changes
    /// in the state (a stage, a removal), so the deadline is never spurious.
    #[test]
    fn nothing_changes_before_the_next_deadline(ops in prop::collection::vec(op(), 1..10), probe in 0i64..36_000) {
        let timing = Timing::default();
        let u = run(&ops, &timing);
        let last = ops.iter().map(|o| o.offset).max().unwrap_or(0);
        let now = t0() + SignedDuration::from_secs(last);
        let view = u.view_at(now);
        match u.clone().next_deadline_after(now) {
            Some(deadline) => {
                let probe_at = now + SignedDuration::from_millis(probe * 100);
                if probe_at < deadline {
                    let mut w = u.clone();
                    w.advance(now);
                    prop_assert_eq!(w.advance(probe_at), None);
                    prop_assert_eq!(&u.view_at(probe_at), &view);
                }
                let mut at_deadline = u.clone();
                at_deadline.advance(now);
                let before = at_deadline.clone();
                at_deadline.advance(deadline);
                prop_assert_ne!(before, at_deadline);
            }
            None => {
                let far = now + SignedDuration::from_hours(1000);
                prop_assert_eq!(&u.view_at(far), &view);
            }
        }
    }

    /// The explanation is of the very view readers get, and its rule names what produced it.
    #[test]
    fn the_explanation_agrees_with_the_view(ops in prop::collection::vec(op(), 0..12), later in 0i64..20_000) {
        let timing = Timing::default();
        let mut u = run(&ops, &timing);
        let last = ops.iter().map(|o| o.offset).max().unwrap_or(0);
        u.advance(t0() + SignedDuration::from_secs(last + later));
        let explained = u.explain();
        prop_assert_eq!(&explained.view, &u.view());
        let (availability, activity) = (explained.view.availability, explained.view.activity);
        match &explained.rule {
            Rule::NoSession => {
                prop_assert!(u.sessions().is_empty());
                prop_assert_eq!((availability, activity), (Availability::Offline, Activity::Offline));
            }
            Rule::Preferred => {
                let p = u.preferred().unwrap();
                prop_assert_eq!((availability, activity), (p.state.availability, p.state.activity));
            }
            Rule::OnlySession(id) | Rule::HighestSession(id) => {
                prop_assert!(u.preferred().is_none());
                let s = u.sessions().iter().find(|s| s.id == *id).unwrap();
                prop_assert_eq!((availability, activity), s.effective());
                let top = u.sessions().iter().map(|s| s.effective().0.rank()).max().unwrap();
                prop_assert_eq!(s.effective().0.rank(), top);
                prop_assert_eq!(matches!(explained.rule, Rule::OnlySession(_)), u.sessions().len() == 1);
            }
        }
    }

    /// A connected client's session never expires; once disconnected it goes exactly a grace
    /// after, unless it reconnects first, which keeps it without a visible change.
    #[test]
    fn a_client_session_lives_with_its_connection(pair in 0usize..5, away in 1i64..100_000, back in prop::option::of(0i64..60)) {
        let timing = Timing::default();
        let (av, ac) = PAIRS[pair];
        let state = SessionState::new(av, ac).unwrap();
        let session = SessionId::parse("c").unwrap();
        let connect = Command::ConnectClient { session: session.clone(), device: Device::parse("web").unwrap(), epoch: "e".into(), state };
        let mut u = UserPresence::default();
        u.apply(connect.clone(), t0(), &timing).unwrap();
        let gone_at = t0() + SignedDuration::from_secs(away);
        u.advance(gone_at);
        prop_assert_eq!(u.sessions().len(), 1, "connected: never expires");
        let grace = SignedDuration::from_secs(30);
        u.apply(Command::DisconnectClient { session: session.clone(), grace }, gone_at, &timing).unwrap();
        match back {
            Some(after) if after < 30 => {
                let view = u.view_at(gone_at + SignedDuration::from_secs(after));
                let at = gone_at + SignedDuration::from_secs(after);
                let outcome = u.apply(connect, at, &timing).unwrap();
                if av != Availability::Available {
                    prop_assert_eq!(outcome.change, None, "a reconnect within the grace changes nothing visible");
                }
                let _ = view;
                u.advance(at + grace * 10);
                prop_assert_eq!(u.sessions().len(), 1);
            }
            _ => {
                let mut before = u.clone();
                before.advance(gone_at + grace - SignedDuration::from_millis(1));
                prop_assert_eq!(before.sessions().len(), 1, "not before the grace");
                u.advance(gone_at + grace);
                prop_assert!(u.sessions().is_empty(), "gone at the grace");
            }
        }
    }

    /// Advancing in many small steps or one big one lands on the same visible presence.
    #[test]
    fn advance_is_path_independent(ops in prop::collection::vec(op(), 1..10), step_secs in 1i64..600) {
        let timing = Timing::default();
        let u = run(&ops, &timing);
        let end = t0() + SignedDuration::from_hours(6);
        let mut stepped = u.clone();
        let mut t = t0();
        while t < end {
            t = (t + SignedDuration::from_secs(step_secs)).min(end);
            stepped.advance(t);
        }
        let mut jumped = u.clone();
        jumped.advance(end);
        prop_assert_eq!((stepped.view().availability, stepped.view().activity), (jumped.view().availability, jumped.view().activity));
        // Every session expires within 4 hours, but a connected client's, which lives with its connection.
        prop_assert!(
            stepped.sessions().iter().all(|s| s.client().is_some_and(|l| l.connected)),
            "every other session expires within 4 hours"
        );
    }
}

/// Helper trait kept local to the tests: the next deadline after everything due at `now` is applied.
trait NextAfter {
    fn next_deadline_after(self, now: Timestamp) -> Option<Timestamp>;
}
impl NextAfter for UserPresence {
    fn next_deadline_after(mut self, now: Timestamp) -> Option<Timestamp> {
        self.advance(now);
        self.next_deadline()
    }
}
