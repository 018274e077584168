//! The two records every write logs, a user's state and its change event, as JSON written by hand.
//!
//! Encoding these was the largest user-space cost of a write after HTTP itself (~7,200
//! instructions with serde_json, most of it escaping constant keys and formatting timestamps).
//! The bytes are exactly serde_json's (the tests below compare them over many states), so
//! records are still read back with serde, and files written before and after this module are
//! the same.
use crate::json_text;
use presence_core::user::{Preferred, Session, StatusMessage};
use presence_core::view::MessageExpiry;
use presence_core::work_location::LocationSignal;
use presence_core::{
    ChangeEvent, OutOfOfficeSettings, PresenceView, StatusMessageView, UserKey, UserPresence, WorkLocation,
    WorkLocationView,
};

/// What `serde_json::to_vec(state)` writes.
pub fn state(state: &UserPresence) -> Vec<u8> {
    let mut out = Vec::with_capacity(256 + 192 * state.sessions().len());
    out.extend_from_slice(b"{\"sessions\":[");
    for (i, s) in state.sessions().iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        session(&mut out, s);
    }
    out.extend_from_slice(b"],\"preferred\":");
    json_text::optional(&mut out, state.preferred(), preferred);
    out.extend_from_slice(b",\"status_message\":");
    json_text::optional(&mut out, state.status_message(), status_message);
    out.extend_from_slice(b",\"out_of_office\":");
    out_of_office(&mut out, state.out_of_office());
    out.extend_from_slice(b",\"sequence\":");
    json_text::u64(&mut out, state.sequence().0);
    // Absent while unset (serde's `skip_serializing_if`), so older records are unchanged.
    if let Some(w) = state.work_location() {
        out.extend_from_slice(b",\"work_location\":");
        work_location(&mut out, w);
    }
    out.push(b'}');
    out
}

/// What `serde_json::to_vec(&(key, event))` writes.
pub fn event(key: &UserKey, event: &ChangeEvent) -> Vec<u8> {
    let mut out = Vec::with_capacity(384);
    out.extend_from_slice(b"[{\"tenant\":");
    json_text::string(&mut out, key.tenant.as_str());
    out.extend_from_slice(b",\"user\":");
    json_text::string(&mut out, key.user.as_str());
    out.extend_from_slice(b"},{\"at\":");
    json_text::timestamp(&mut out, event.at);
    out.extend_from_slice(b",\"previous_availability\":");
    json_text::string(&mut out, event.previous_availability.as_str());
    out.extend_from_slice(b",\"previous_activity\":");
    json_text::string(&mut out, event.previous_activity.as_str());
    out.extend_from_slice(b",\"view\":");
    view(&mut out, &event.view);
    out.extend_from_slice(b"}]");
    out
}

fn session(out: &mut Vec<u8>, s: &Session) {
    out.extend_from_slice(b"{\"id\":");
    json_text::string(out, s.id.as_str());
    out.extend_from_slice(b",\"state\":");
    pair(out, s.state.availability.as_str(), s.state.activity.as_str());
    out.extend_from_slice(b",\"stage\":");
    let stage: &[u8] = match s.stage {
        presence_core::user::FadeStage::Active => b"\"Active\"",
        presence_core::user::FadeStage::Idle => b"\"Idle\"",
        presence_core::user::FadeStage::Away => b"\"Away\"",
    };
    out.extend_from_slice(stage);
    out.extend_from_slice(b",\"set_at\":");
    json_text::timestamp(out, s.set_at);
    out.extend_from_slice(b",\"idle_at\":");
    json_text::optional(out, s.idle_at, json_text::timestamp);
    out.extend_from_slice(b",\"away_at\":");
    json_text::optional(out, s.away_at, json_text::timestamp);
    out.extend_from_slice(b",\"expires_at\":");
    json_text::timestamp(out, s.expires_at);
    if let Some(origin) = &s.origin {
        // Rare (an app other than the session's id, or a client): serde writes it.
        out.extend_from_slice(b",\"origin\":");
        if serde_json::to_writer(&mut *out, origin).is_err() {
            out.extend_from_slice(b"null");
        }
    }
    out.push(b'}');
}

fn preferred(out: &mut Vec<u8>, p: &Preferred) {
    out.extend_from_slice(b"{\"state\":");
    pair(out, p.state.availability.as_str(), p.state.activity.as_str());
    out.extend_from_slice(b",\"expires_at\":");
    json_text::timestamp(out, p.expires_at);
    out.push(b'}');
}

/// `{"availability":…,"activity":…}`, the shape of both session and preferred states.
fn pair(out: &mut Vec<u8>, availability: &str, activity: &str) {
    out.extend_from_slice(b"{\"availability\":");
    json_text::string(out, availability);
    out.extend_from_slice(b",\"activity\":");
    json_text::string(out, activity);
    out.push(b'}');
}

fn status_message(out: &mut Vec<u8>, m: &StatusMessage) {
    message(out, &m.content, m.expiry.as_ref(), m.published_at);
}

/// The shape shared by a stored status message and the one in a view.
fn message(out: &mut Vec<u8>, content: &str, expiry: Option<&MessageExpiry>, published_at: jiff::Timestamp) {
    out.extend_from_slice(b"{\"content\":");
    json_text::string(out, content);
    out.extend_from_slice(b",\"expiry\":");
    json_text::optional(out, expiry, message_expiry);
    out.extend_from_slice(b",\"published_at\":");
    json_text::timestamp(out, published_at);
    out.push(b'}');
}

fn message_expiry(out: &mut Vec<u8>, e: &MessageExpiry) {
    out.extend_from_slice(b"{\"at\":");
    json_text::timestamp(out, e.at);
    out.extend_from_slice(b",\"date_time\":");
    json_text::string(out, &e.date_time);
    out.extend_from_slice(b",\"time_zone\":");
    json_text::string(out, &e.time_zone);
    out.push(b'}');
}

fn out_of_office(out: &mut Vec<u8>, o: &OutOfOfficeSettings) {
    out.extend_from_slice(b"{\"is_out_of_office\":");
    json_text::bool(out, o.is_out_of_office);
    out.extend_from_slice(b",\"message\":");
    json_text::optional(out, o.message.as_deref(), json_text::string);
    out.push(b'}');
}

fn view(out: &mut Vec<u8>, v: &PresenceView) {
    out.extend_from_slice(b"{\"availability\":");
    json_text::string(out, v.availability.as_str());
    out.extend_from_slice(b",\"activity\":");
    json_text::string(out, v.activity.as_str());
    out.extend_from_slice(b",\"status_message\":");
    json_text::optional(out, v.status_message.as_ref(), |out, m: &StatusMessageView| {
        message(out, &m.content, m.expiry.as_ref(), m.published_at)
    });
    out.extend_from_slice(b",\"out_of_office\":");
    out_of_office(out, &v.out_of_office);
    out.extend_from_slice(b",\"sequence\":");
    json_text::u64(out, v.sequence.0);
    if !v.work_location.is_default() {
        out.extend_from_slice(b",\"work_location\":");
        work_location_view(out, &v.work_location);
    }
    out.push(b'}');
}

// Work-location enums are stored by their Rust names (what serde's derive writes), like
// availability and activity; the wire's camelCase is the HTTP layer's business.
fn location_kind(out: &mut Vec<u8>, kind: presence_core::WorkLocationType) {
    json_text::string(out, &format!("{kind:?}"));
}

fn work_location(out: &mut Vec<u8>, w: &WorkLocation) {
    out.extend_from_slice(b"{\"manual\":");
    json_text::optional(out, w.manual.as_ref(), location_signal);
    out.extend_from_slice(b",\"automatic\":");
    json_text::optional(out, w.automatic.as_ref(), location_signal);
    out.push(b'}');
}

fn location_signal(out: &mut Vec<u8>, s: &LocationSignal) {
    out.extend_from_slice(b"{\"kind\":");
    location_kind(out, s.kind);
    out.extend_from_slice(b",\"place_id\":");
    json_text::optional(out, s.place_id.as_ref().map(|p| p.as_str()), json_text::string);
    out.extend_from_slice(b",\"until\":");
    json_text::timestamp(out, s.until);
    out.push(b'}');
}

fn work_location_view(out: &mut Vec<u8>, w: &WorkLocationView) {
    out.extend_from_slice(b"{\"kind\":");
    location_kind(out, w.kind);
    out.extend_from_slice(b",\"source\":");
    json_text::string(out, &format!("{:?}", w.source));
    out.extend_from_slice(b",\"place_id\":");
    json_text::optional(out, w.place_id.as_ref().map(|p| p.as_str()), json_text::string);
    out.push(b'}');
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::{SignedDuration, Timestamp};
    use presence_core::{
        Command, DayZone, LocationInput, LocationLayer, PlaceId, PreferredState, SessionId, SessionState,
        StatusMessageInput, TenantId, Timing, UserId, WorkLocationType,
    };
    use proptest::prelude::*;

    /// One step of a user's history, chosen by the property test.
    #[derive(Debug, Clone)]
    enum Step {
        Set {
            session: u8,
            pair: usize,
            minutes: i64,
        },
        Clear {
            session: u8,
        },
        Prefer {
            pair: usize,
        },
        Unprefer,
        Message {
            text: String,
            expires: bool,
        },
        OutOfOffice {
            on: bool,
            text: Option<String>,
        },
        Locate {
            manual: bool,
            kind: usize,
            place: Option<String>,
        },
        ClearAutomaticLocation,
        ClearLocation,
        /// A client session: connect (or set its state), or disconnect it.
        Client {
            session: u8,
            pair: usize,
            connect: bool,
        },
        /// Let time pass (fades, expiries) by this many seconds and nanoseconds.
        Wait {
            seconds: i64,
            nanos: i64,
        },
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (0u8..4, 0usize..8, 5i64..240).prop_map(|(session, pair, minutes)| Step::Set { session, pair, minutes }),
            (0u8..4, 0usize..8, any::<bool>()).prop_map(|(session, pair, connect)| Step::Client {
                session,
                pair,
                connect
            }),
            (0u8..4).prop_map(|session| Step::Clear { session }),
            (0usize..8).prop_map(|pair| Step::Prefer { pair }),
            Just(Step::Unprefer),
            (".{0,40}", any::<bool>()).prop_map(|(text, expires)| Step::Message { text, expires }),
            (any::<bool>(), proptest::option::of(".{0,20}")).prop_map(|(on, text)| Step::OutOfOffice { on, text }),
            (any::<bool>(), 0usize..4, proptest::option::of("[^\\p{Cc}]{1,20}"))
                .prop_map(|(manual, kind, place)| Step::Locate { manual, kind, place }),
            Just(Step::ClearAutomaticLocation),
            Just(Step::ClearLocation),
            (0i64..20_000, 0i64..1_000_000_000).prop_map(|(seconds, nanos)| Step::Wait { seconds, nanos }),
        ]
    }

    fn command(step: &Step, now: Timestamp) -> Option<Command> {
        let sessions = ["app", "desktop.1", "mobile_x", "web@2"];
        Some(match step {
            Step::Set { session, pair, minutes } => {
                let pairs = presence_core::state::SESSION_PAIRS;
                let (a, b) = pairs[pair % pairs.len()];
                Command::SetPresence {
                    session: SessionId::parse(sessions[*session as usize]).unwrap(),
                    state: SessionState::new(a, b).ok()?,
                    expiration: SignedDuration::from_mins(*minutes),
                    application: (*session % 2 == 0).then(|| "another \"app\"\u{e9}".to_owned()),
                }
            }
            Step::Client { session, pair, connect } => {
                let pairs = presence_core::state::SESSION_PAIRS;
                let (a, b) = pairs[pair % pairs.len()];
                let session = SessionId::parse(&format!("client-{session}")).unwrap();
                if *connect {
                    Command::ConnectClient {
                        session,
                        device: presence_core::Device::parse("Anna's \"laptop\"").unwrap(),
                        epoch: "e1".into(),
                        state: SessionState::new(a, b).ok()?,
                    }
                } else {
                    Command::DisconnectClient {
                        session,
                        grace: SignedDuration::from_secs(30),
                    }
                }
            }
            Step::Clear { session } => Command::ClearPresence {
                session: SessionId::parse(sessions[*session as usize]).unwrap(),
            },
            Step::Prefer { pair } => {
                let pairs = presence_core::state::PREFERRED_PAIRS;
                let (a, b) = pairs[pair % pairs.len()];
                Command::SetPreferred {
                    state: PreferredState::new(a, b).ok()?,
                    expiration: SignedDuration::from_hours(8),
                }
            }
            Step::Unprefer => Command::ClearPreferred,
            Step::Message { text, expires } => {
                let expiry = expires.then(|| MessageExpiry {
                    at: now + SignedDuration::from_secs(3_600),
                    date_time: "2026-12-01T23:00:00.0000000".into(),
                    time_zone: "W. Europe Standard Time".into(),
                });
                Command::SetStatusMessage(Some(StatusMessageInput::new(text.clone(), expiry).ok()?))
            }
            Step::OutOfOffice { on, text } => Command::SetOutOfOffice(OutOfOfficeSettings {
                is_out_of_office: *on,
                message: text.clone().map(String::into_boxed_str),
            }),
            Step::Locate { manual, kind, place } => Command::SetWorkLocation {
                layer: if *manual {
                    LocationLayer::Manual
                } else {
                    LocationLayer::Automatic
                },
                location: LocationInput {
                    kind: WorkLocationType::ALL[kind % WorkLocationType::ALL.len()],
                    place_id: place.as_deref().map(|p| PlaceId::parse(p).unwrap()),
                },
                day: DayZone::new(jiff::tz::TimeZone::get("Asia/Kolkata").unwrap()),
            },
            Step::ClearAutomaticLocation => Command::ClearAutomaticLocation,
            Step::ClearLocation => Command::ClearLocation,
            Step::Wait { .. } => return None,
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn records_are_byte_for_byte_what_serde_writes(steps in proptest::collection::vec(step(), 1..24)) {
            let key = UserKey::new(TenantId::parse("tenant-1").unwrap(), UserId::parse("user.one@contoso").unwrap());
            let timing = Timing::default();
            let mut now = Timestamp::new(1_800_000_000, 123_456_789).unwrap();
            let mut state = UserPresence::default();
            for step in &steps {
                let event = match (step, command(step, now)) {
                    (Step::Wait { seconds, nanos }, _) => {
                        now += SignedDuration::new(*seconds, *nanos as i32);
                        state.advance(now)
                    }
                    (_, Some(command)) => state.apply(command, now, &timing).ok().and_then(|o| o.change),
                    (_, None) => None,
                };
                prop_assert_eq!(
                    String::from_utf8(super::state(&state)).unwrap(),
                    serde_json::to_string(&state).unwrap()
                );
                if let Some(event) = event {
                    prop_assert_eq!(
                        String::from_utf8(super::event(&key, &event)).unwrap(),
                        serde_json::to_string(&(&key, &event)).unwrap()
                    );
                }
            }
        }
    }
}
