//! Micro-benchmarks of the presence core: folding a user's sessions into a view, applying a
//! command, advancing time, and computing the next deadline.
//!
//! Time is an input here as everywhere in the core: every instant is a fixed `Timestamp`.
//!
//! Run (quick): `cargo bench -p presence-core --bench core -- --warm-up-time 1 --measurement-time 2`
use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use jiff::{SignedDuration, Timestamp};
use presence_core::{
    Activity, Availability, Command, SessionId, SessionState, StatusMessageInput, Timing, UserPresence,
};
use std::hint::black_box;

fn t0() -> Timestamp {
    "2026-01-01T09:00:00Z".parse().expect("fixed timestamp")
}

fn secs(s: i64) -> SignedDuration {
    SignedDuration::from_secs(s)
}

/// The session states a user's clients typically report, cycled through for multi-session users.
fn state(i: usize) -> SessionState {
    let pairs = [
        (Availability::Available, Activity::Available),
        (Availability::Busy, Activity::InACall),
        (Availability::Away, Activity::Away),
        (Availability::DoNotDisturb, Activity::Presenting),
    ];
    let (availability, activity) = pairs[i % pairs.len()];
    SessionState::new(availability, activity).expect("a setPresence pair")
}

fn session(i: usize) -> SessionId {
    // Graph asks apps to use their application id (a GUID) as the session id.
    SessionId::parse(&format!("{i:08x}-6f1c-4d3e-9a51-2b7e8c0d4f10")).expect("session id")
}

/// "1 session", "4 sessions": benchmark names.
fn sessions(n: usize) -> String {
    if n == 1 {
        "1 session".to_owned()
    } else {
        format!("{n} sessions")
    }
}

fn set_presence(i: usize) -> Command {
    Command::SetPresence {
        session: session(i),
        state: state(i),
        expiration: SignedDuration::from_hours(1),
        application: None,
    }
}

/// A user with `n` sessions set one second apart starting at `t0`, optionally with a status message.
fn user(n: usize, message: bool) -> UserPresence {
    let timing = Timing::default();
    let mut user = UserPresence::default();
    for i in 0..n {
        user.apply(set_presence(i), t0() + secs(i as i64), &timing)
            .expect("setPresence");
    }
    if message {
        let input = StatusMessageInput::new("In a workshop until noon, reachable by chat".repeat(2), None)
            .expect("short message");
        user.apply(Command::SetStatusMessage(Some(input)), t0() + secs(n as i64), &timing)
            .expect("setStatusMessage");
    }
    user
}

fn fold(c: &mut Criterion) {
    let mut group = c.benchmark_group("fold");
    for n in [1, 4, 16] {
        let u = user(n, false);
        group.bench_function(format!("view/{}", sessions(n)), |b| b.iter(|| black_box(&u).view()));
    }
    let u = user(1, true);
    group.bench_function("view/1 session + status message", |b| b.iter(|| black_box(&u).view()));
    group.finish();
}

fn apply(c: &mut Criterion) {
    let timing = Timing::default();
    let mut group = c.benchmark_group("apply");
    // Keep-alive: the same session set again a minute later (nothing due, the view is unchanged).
    for n in [1, 4] {
        let u = user(n, false);
        let now = t0() + secs(60);
        group.bench_function(format!("keep-alive/{}", sessions(n)), |b| {
            b.iter_batched(
                || (u.clone(), set_presence(0)),
                |(mut u, cmd)| {
                    let outcome = u.apply(cmd, black_box(now), &timing);
                    black_box((u, outcome))
                },
                BatchSize::SmallInput,
            )
        });
    }
    // A new session joins a user who has one (state changes from Available to Busy: an event).
    let u = user(1, false);
    let now = t0() + secs(60);
    group.bench_function("new session/1 -> 2 sessions", |b| {
        b.iter_batched(
            || (u.clone(), set_presence(1)),
            |(mut u, cmd)| {
                let outcome = u.apply(cmd, black_box(now), &timing);
                black_box((u, outcome))
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

fn advance(c: &mut Criterion) {
    let mut group = c.benchmark_group("advance");
    // One Available session, last set at t0: with the default 5 minute fade it reads Idle from t0 + 5 min.
    let u = user(1, false);
    let due = t0() + SignedDuration::from_mins(5) + secs(1);
    assert!(u.clone().advance(due).is_some(), "the fade must be due");
    group.bench_function("due fade/1 session", |b| {
        b.iter_batched(
            || u.clone(),
            |mut u| {
                let change = u.advance(black_box(due));
                black_box((u, change))
            },
            BatchSize::SmallInput,
        )
    });
    let mut idle = user(1, false);
    let early = t0() + secs(30);
    group.bench_function("nothing due/1 session", |b| {
        b.iter(|| black_box(black_box(&mut idle).advance(black_box(early))))
    });
    group.finish();
}

fn next_deadline(c: &mut Criterion) {
    let mut group = c.benchmark_group("next_deadline");
    for n in [1, 4, 16] {
        let u = user(n, false);
        group.bench_function(sessions(n), |b| b.iter(|| black_box(&u).next_deadline()));
    }
    group.finish();
}

criterion_group!(benches, fold, apply, advance, next_deadline);
criterion_main!(benches);
