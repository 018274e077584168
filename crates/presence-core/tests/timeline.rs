//! The presence rules of design.md §2, driven by a hand-held clock.
use jiff::{SignedDuration, Timestamp};
use presence_core::user::FadeStage;
use presence_core::*;

fn t0() -> Timestamp {
    "2026-11-27T09:00:00Z".parse().unwrap()
}
fn mins(m: i64) -> SignedDuration {
    SignedDuration::from_mins(m)
}
fn sid(s: &str) -> SessionId {
    SessionId::parse(s).unwrap()
}
fn set(session: &str, av: Availability, ac: Activity, expiration: SignedDuration) -> Command {
    Command::SetPresence {
        session: sid(session),
        state: SessionState::new(av, ac).unwrap(),
        expiration,
        application: None,
    }
}
fn pair(v: &PresenceView) -> (Availability, Activity) {
    (v.availability, v.activity)
}

#[test]
fn unknown_user_reads_offline() {
    let u = UserPresence::default();
    assert_eq!(pair(&u.view()), (Availability::Offline, Activity::Offline));
    assert_eq!(u.view().sequence.to_string(), "00000000000000000000");
    assert_eq!(u.next_deadline(), None);
}

#[test]
fn available_session_fades_then_goes_away_then_expires_exactly_on_time() {
    let timing = Timing::default();
    let mut u = UserPresence::default();
    let out = u
        .apply(
            set("app", Availability::Available, Activity::Available, mins(60)),
            t0(),
            &timing,
        )
        .unwrap();
    assert!(out.change.is_some());
    assert_eq!(u.next_deadline(), Some(t0() + mins(5)));

    let just_before = t0() + mins(5) - SignedDuration::from_nanos(1);
    assert_eq!(u.advance(just_before), None);
    assert_eq!(pair(&u.view()), (Availability::Available, Activity::Available));

    let idle = u.advance(t0() + mins(5)).expect("fade at exactly 5 minutes");
    assert_eq!(pair(&idle.view), (Availability::AvailableIdle, Activity::Inactive));
    assert_eq!(idle.at, t0() + mins(5));
    assert_eq!(u.next_deadline(), Some(t0() + mins(10)));

    let away = u.advance(t0() + mins(10)).unwrap();
    assert_eq!(pair(&away.view), (Availability::Away, Activity::Away));
    assert_eq!(u.next_deadline(), Some(t0() + mins(60)));

    let gone = u.advance(t0() + mins(60)).unwrap();
    assert_eq!(pair(&gone.view), (Availability::Offline, Activity::Offline));
    assert!(u.sessions().is_empty());
    assert_eq!(u.next_deadline(), None);
}

#[test]
fn keep_alive_restarts_fade_and_expiry() {
    let timing = Timing::default();
    let mut u = UserPresence::default();
    let av = || set("app", Availability::Available, Activity::Available, mins(5));
    u.apply(av(), t0(), &timing).unwrap();
    let again = u.apply(av(), t0() + mins(4), &timing).unwrap();
    assert_eq!(
        again.change, None,
        "a keep-alive that changes nothing visible emits no event"
    );
    assert_eq!(u.next_deadline(), Some(t0() + mins(9)));
    assert_eq!(u.advance(t0() + mins(8)), None);
    assert_eq!(u.sessions()[0].stage, FadeStage::Active);
}

#[test]
fn other_availabilities_do_not_fade() {
    let timing = Timing::default();
    let mut u = UserPresence::default();
    u.apply(
        set("app", Availability::Busy, Activity::InACall, mins(60)),
        t0(),
        &timing,
    )
    .unwrap();
    assert_eq!(u.next_deadline(), Some(t0() + mins(60)));
    assert_eq!(u.advance(t0() + mins(59)), None);
    assert_eq!(pair(&u.view()), (Availability::Busy, Activity::InACall));
}

#[test]
fn downtime_applies_all_overdue_transitions_stamped_with_the_last_deadline() {
    let timing = Timing::default();
    let mut u = UserPresence::default();
    u.apply(
        set("app", Availability::Available, Activity::Available, mins(30)),
        t0(),
        &timing,
    )
    .unwrap();
    let change = u.advance(t0() + mins(12)).unwrap();
    assert_eq!(pair(&change.view), (Availability::Away, Activity::Away));
    assert_eq!(change.at, t0() + mins(10));
}

#[test]
fn clear_presence_of_missing_or_expired_session_is_not_found() {
    let timing = Timing::default();
    let mut u = UserPresence::default();
    let clear = || Command::ClearPresence { session: sid("app") };
    assert_eq!(
        u.apply(clear(), t0(), &timing),
        Err(CommandError::SessionNotFound(sid("app")))
    );
    u.apply(
        set("app", Availability::Busy, Activity::InACall, mins(5)),
        t0(),
        &timing,
    )
    .unwrap();
    let err = u.apply(clear(), t0() + mins(5), &timing).unwrap_err();
    assert_eq!(err, CommandError::SessionNotFound(sid("app")));
    u.apply(
        set("app", Availability::Busy, Activity::InACall, mins(5)),
        t0(),
        &timing,
    )
    .unwrap();
    let out = u.apply(clear(), t0() + mins(1), &timing).unwrap();
    assert_eq!(
        pair(&out.change.unwrap().view),
        (Availability::Offline, Activity::Offline)
    );
}

#[test]
fn folding_order_and_most_recent_activity_wins() {
    let timing = Timing::default();
    let mut u = UserPresence::default();
    u.apply(set("a", Availability::Away, Activity::Away, mins(60)), t0(), &timing)
        .unwrap();
    u.apply(
        set("b", Availability::Available, Activity::Available, mins(60)),
        t0(),
        &timing,
    )
    .unwrap();
    assert_eq!(pair(&u.view()), (Availability::Available, Activity::Available));
    u.apply(set("c", Availability::Busy, Activity::InACall, mins(60)), t0(), &timing)
        .unwrap();
    u.apply(
        set("d", Availability::Busy, Activity::InAConferenceCall, mins(60)),
        t0() + mins(1),
        &timing,
    )
    .unwrap();
    assert_eq!(pair(&u.view()), (Availability::Busy, Activity::InAConferenceCall));
    u.apply(
        set("e", Availability::DoNotDisturb, Activity::Presenting, mins(60)),
        t0() + mins(2),
        &timing,
    )
    .unwrap();
    assert_eq!(pair(&u.view()), (Availability::DoNotDisturb, Activity::Presenting));
}

#[test]
fn preferred_presence_overrides_only_while_a_session_exists() {
    let timing = Timing::default();
    let mut u = UserPresence::default();
    let dnd = PreferredState::new(Availability::DoNotDisturb, Activity::DoNotDisturb).unwrap();
    u.apply(
        Command::SetPreferred {
            state: dnd,
            expiration: mins(120),
        },
        t0(),
        &timing,
    )
    .unwrap();
    assert_eq!(pair(&u.view()), (Availability::Offline, Activity::Offline));
    u.apply(
        set("app", Availability::Available, Activity::Available, mins(30)),
        t0(),
        &timing,
    )
    .unwrap();
    assert_eq!(pair(&u.view()), (Availability::DoNotDisturb, Activity::DoNotDisturb));
    let after_expiry = u.advance(t0() + mins(30)).unwrap();
    assert_eq!(pair(&after_expiry.view), (Availability::Offline, Activity::Offline));
    assert!(u.preferred().is_some(), "the preference outlives the session");
    assert_eq!(u.next_deadline(), Some(t0() + mins(120)));
    u.advance(t0() + mins(120));
    assert!(u.preferred().is_none());
}

#[test]
fn appear_offline_and_clear_preferred() {
    let timing = Timing::default();
    let mut u = UserPresence::default();
    u.apply(
        set("app", Availability::Busy, Activity::InACall, mins(60)),
        t0(),
        &timing,
    )
    .unwrap();
    let off = PreferredState::new(Availability::Offline, Activity::OffWork).unwrap();
    u.apply(
        Command::SetPreferred {
            state: off,
            expiration: mins(30),
        },
        t0(),
        &timing,
    )
    .unwrap();
    assert_eq!(pair(&u.view()), (Availability::Offline, Activity::OffWork));
    let cleared = u.apply(Command::ClearPreferred, t0() + mins(1), &timing).unwrap();
    assert_eq!(
        pair(&cleared.change.unwrap().view),
        (Availability::Busy, Activity::InACall)
    );
    let again = u.apply(Command::ClearPreferred, t0() + mins(2), &timing).unwrap();
    assert_eq!(again.change, None);
}

#[test]
fn status_message_expires_on_time_and_bumps_the_sequence() {
    let timing = Timing::default();
    let mut u = UserPresence::default();
    let expiry = view::MessageExpiry {
        at: t0() + mins(30),
        date_time: "2026-11-27T01:30:00".into(),
        time_zone: "Pacific Standard Time".into(),
    };
    let input = StatusMessageInput::new("In a workshop".into(), Some(expiry)).unwrap();
    let set_change = u
        .apply(Command::SetStatusMessage(Some(input)), t0(), &timing)
        .unwrap()
        .change
        .unwrap();
    assert_eq!(set_change.view.status_message.as_ref().unwrap().published_at, t0());
    assert!(!set_change.availability_or_activity_changed());
    assert_eq!(u.next_deadline(), Some(t0() + mins(30)));
    let gone = u.advance(t0() + mins(30)).unwrap();
    assert!(gone.view.status_message.is_none());
    assert!(gone.view.sequence > set_change.view.sequence);
}

#[test]
fn status_message_limits() {
    assert!(StatusMessageInput::new("x".repeat(280), None).is_ok());
    assert!(StatusMessageInput::new("x".repeat(281), None).is_err());
    let timing = Timing::default();
    let mut u = UserPresence::default();
    let past = view::MessageExpiry {
        at: t0(),
        date_time: String::new(),
        time_zone: "UTC".into(),
    };
    let input = StatusMessageInput::new("late".into(), Some(past)).unwrap();
    assert!(matches!(
        u.apply(Command::SetStatusMessage(Some(input)), t0(), &timing),
        Err(CommandError::ExpiryInPast(_))
    ));
    assert_eq!(
        u,
        UserPresence::default(),
        "a failed command leaves the state untouched"
    );
}

#[test]
fn sequence_strictly_increases_and_sorts_as_text() {
    let timing = Timing::default();
    let mut u = UserPresence::default();
    let mut seen = vec![u.view().sequence.to_string()];
    let cmds = [
        set("a", Availability::Busy, Activity::InACall, mins(60)),
        set("a", Availability::Away, Activity::Away, mins(60)),
        set("a", Availability::Available, Activity::Available, mins(60)),
        Command::ClearPresence { session: sid("a") },
    ];
    for (i, c) in cmds.into_iter().enumerate() {
        // Same instant for all: the counter alone must still grow.
        u.apply(c, t0() + SignedDuration::from_secs(i as i64 % 2), &timing)
            .unwrap();
        seen.push(u.view().sequence.to_string());
    }
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted, seen);
}

#[test]
fn too_many_sessions_is_refused() {
    let timing = Timing::default();
    let mut u = UserPresence::default();
    for i in 0..command::MAX_SESSIONS_PER_USER {
        u.apply(
            set(&format!("s{i}"), Availability::Away, Activity::Away, mins(60)),
            t0(),
            &timing,
        )
        .unwrap();
    }
    let err = u.apply(
        set("one-more", Availability::Away, Activity::Away, mins(60)),
        t0(),
        &timing,
    );
    assert!(matches!(err, Err(CommandError::TooManySessions { .. })));
    // Refreshing an existing session is still fine.
    u.apply(
        set("s0", Availability::Busy, Activity::InACall, mins(60)),
        t0(),
        &timing,
    )
    .unwrap();
}

#[test]
fn state_survives_serialisation() {
    let timing = Timing::default();
    let mut u = UserPresence::default();
    u.apply(
        set("a", Availability::Available, Activity::Available, mins(60)),
        t0(),
        &timing,
    )
    .unwrap();
    let json = serde_json::to_string(&u).unwrap();
    let back: UserPresence = serde_json::from_str(&json).unwrap();
    assert_eq!(back, u);
}

fn locate(layer: LocationLayer, kind: WorkLocationType, place: Option<&str>, zone: &str) -> Command {
    Command::SetWorkLocation {
        layer,
        location: LocationInput {
            kind,
            place_id: place.map(|p| PlaceId::parse(p).unwrap()),
        },
        day: DayZone::new(jiff::tz::TimeZone::get(zone).unwrap()),
    }
}

fn location(u: &UserPresence) -> (WorkLocationType, WorkLocationSource, Option<String>) {
    let w = u.view().work_location;
    (w.kind, w.source, w.place_id.map(|p| p.as_str().to_owned()))
}

#[test]
fn work_location_layers_fold_manual_over_automatic_and_clear_as_graph_documents() {
    let timing = Timing::default();
    let mut u = UserPresence::default();
    assert_eq!(
        location(&u),
        (WorkLocationType::Unspecified, WorkLocationSource::None, None)
    );
    let auto = locate(LocationLayer::Automatic, WorkLocationType::Office, Some("b1"), "UTC");
    u.apply(auto, t0(), &timing).unwrap();
    assert_eq!(
        location(&u),
        (
            WorkLocationType::Office,
            WorkLocationSource::Automatic,
            Some("b1".into())
        )
    );
    let manual = locate(LocationLayer::Manual, WorkLocationType::Remote, None, "UTC");
    u.apply(manual, t0(), &timing).unwrap();
    assert_eq!(
        location(&u),
        (WorkLocationType::Remote, WorkLocationSource::Manual, None)
    );
    // A new automatic signal is hidden by the manual one: nothing visible changes.
    let seq = u.sequence();
    let hidden = locate(LocationLayer::Automatic, WorkLocationType::TimeOff, None, "UTC");
    let out = u.apply(hidden, t0() + mins(1), &timing).unwrap();
    assert_eq!((out.change, u.sequence()), (None, seq));
    // Clearing the automatic layer leaves the manual one.
    u.apply(Command::ClearAutomaticLocation, t0() + mins(2), &timing)
        .unwrap();
    assert_eq!(
        location(&u),
        (WorkLocationType::Remote, WorkLocationSource::Manual, None)
    );
    let auto = locate(LocationLayer::Automatic, WorkLocationType::Office, Some("b2"), "UTC");
    u.apply(auto, t0() + mins(3), &timing).unwrap();
    // clearLocation takes both layers.
    u.apply(Command::ClearLocation, t0() + mins(4), &timing).unwrap();
    assert_eq!(
        location(&u),
        (WorkLocationType::Unspecified, WorkLocationSource::None, None)
    );
    assert_eq!(u.work_location(), None);
    assert_eq!(u.next_deadline(), None);
}

#[test]
fn a_work_location_change_bumps_the_sequence_but_is_no_availability_change() {
    let timing = Timing::default();
    let mut u = UserPresence::default();
    let before = u.sequence();
    let set = locate(LocationLayer::Manual, WorkLocationType::Office, Some("hq"), "UTC");
    let change = u
        .apply(set.clone(), t0(), &timing)
        .unwrap()
        .change
        .expect("a visible change");
    assert!(change.view.sequence > before);
    assert!(!change.availability_or_activity_changed());
    // The same location again is no change.
    assert_eq!(u.apply(set, t0() + mins(1), &timing).unwrap().change, None);
}

#[test]
fn work_location_layers_end_at_midnight_in_the_zone_the_caller_gave() {
    let timing = Timing::default();
    let mut u = UserPresence::default();
    // t0 is 09:00 UTC = 01:00 in Los Angeles, whose day ends at 08:00 UTC the next morning;
    // in Tokyo (UTC+9) it is already 18:00, and that day ends at 15:00 UTC today.
    let la = locate(
        LocationLayer::Manual,
        WorkLocationType::Remote,
        None,
        "America/Los_Angeles",
    );
    let tokyo = locate(
        LocationLayer::Automatic,
        WorkLocationType::Office,
        Some("t"),
        "Asia/Tokyo",
    );
    u.apply(la, t0(), &timing).unwrap();
    u.apply(tokyo, t0(), &timing).unwrap();
    let tokyo_midnight: Timestamp = "2026-11-27T15:00:00Z".parse().unwrap();
    let la_midnight: Timestamp = "2026-11-28T08:00:00Z".parse().unwrap();
    assert_eq!(u.next_deadline(), Some(tokyo_midnight));
    // The automatic layer ends unseen (the manual one hides it): state changes, the view does not.
    assert_eq!(u.advance(tokyo_midnight), None);
    assert_eq!(u.next_deadline(), Some(la_midnight));
    assert_eq!(u.advance(la_midnight - SignedDuration::from_nanos(1)), None);
    let ended = u.advance(la_midnight).expect("the manual layer ends at midnight");
    assert_eq!(ended.at, la_midnight);
    assert_eq!(ended.view.work_location, WorkLocationView::default());
    assert_eq!(u.next_deadline(), None);
}
