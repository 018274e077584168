//! Graph's availability/activity vocabulary and the pairs each action accepts.
//!
//! On the wire these are PascalCase strings; Graph's own docs also spell some in camelCase, so input
//! is matched case-insensitively and output is always PascalCase.
use serde::{Deserialize, Serialize};
use std::fmt;

macro_rules! wire_enum {
    ($(#[$doc:meta])* $name:ident, $kind:literal { $($variant:ident),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum $name { $($variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => stringify!($variant)),+ }
            }

            /// Case-insensitive, because Graph's documentation itself mixes PascalCase and camelCase.
            pub fn parse(raw: &str) -> Result<Self, PairError> {
                Self::ALL
                    .iter()
                    .copied()
                    .find(|v| v.as_str().eq_ignore_ascii_case(raw))
                    .ok_or_else(|| PairError::UnknownValue { kind: $kind, value: raw.chars().take(64).collect() })
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

wire_enum!(
    /// The base presence of a user.
    Availability, "availability" {
        Available, AvailableIdle, Away, BeRightBack, Busy, BusyIdle, DoNotDisturb, Offline, PresenceUnknown,
    }
);

wire_enum!(
    /// The supplemental information to an availability.
    Activity, "activity" {
        Available, Away, BeRightBack, Busy, DoNotDisturb, InACall, InAConferenceCall, Inactive, InAMeeting,
        Offline, OffWork, OutOfOffice, PresenceUnknown, Presenting, UrgentInterruptionsOnly,
    }
);

impl Availability {
    /// Folding rank, highest wins (design.md §2). Graph documents only DoNotDisturb > Busy >
    /// Available > Away; the idle states sit just below their active forms so an idle Busy still
    /// beats an active Available, and Offline/PresenceUnknown lose to any real signal.
    pub fn rank(self) -> u8 {
        match self {
            Availability::DoNotDisturb => 8,
            Availability::Busy => 7,
            Availability::BusyIdle => 6,
            Availability::Available => 5,
            Availability::AvailableIdle => 4,
            Availability::BeRightBack => 3,
            Availability::Away => 2,
            Availability::Offline => 1,
            Availability::PresenceUnknown => 0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PairError {
    #[error("'{value}' is not a valid {kind}")]
    UnknownValue { kind: &'static str, value: String },
    #[error("the combination availability '{availability}' with activity '{activity}' is not supported by {action}; supported: {supported}")]
    Unsupported {
        action: &'static str,
        availability: Availability,
        activity: Activity,
        supported: &'static str,
    },
}

/// The pairs `setPresence` accepts (Graph's documented table).
pub const SESSION_PAIRS: &[(Availability, Activity)] = &[
    (Availability::Available, Activity::Available),
    (Availability::Busy, Activity::InACall),
    (Availability::Busy, Activity::InAConferenceCall),
    (Availability::Away, Activity::Away),
    (Availability::DoNotDisturb, Activity::Presenting),
];

/// The pairs `setUserPreferredPresence` accepts.
pub const PREFERRED_PAIRS: &[(Availability, Activity)] = &[
    (Availability::Available, Activity::Available),
    (Availability::Busy, Activity::Busy),
    (Availability::DoNotDisturb, Activity::DoNotDisturb),
    (Availability::BeRightBack, Activity::BeRightBack),
    (Availability::Away, Activity::Away),
    (Availability::Offline, Activity::OffWork),
];

/// A pair `setPresence` accepts (Graph's documented table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionState {
    pub availability: Availability,
    pub activity: Activity,
}

impl SessionState {
    pub fn new(availability: Availability, activity: Activity) -> Result<Self, PairError> {
        if SESSION_PAIRS.contains(&(availability, activity)) {
            Ok(Self { availability, activity })
        } else {
            Err(PairError::Unsupported {
                action: "setPresence",
                availability,
                activity,
                supported:
                    "Available/Available, Busy/InACall, Busy/InAConferenceCall, Away/Away, DoNotDisturb/Presenting",
            })
        }
    }
}

/// A pair `setUserPreferredPresence` accepts; `Offline/OffWork` is Teams' "appear offline".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreferredState {
    pub availability: Availability,
    pub activity: Activity,
}

impl PreferredState {
    pub fn new(availability: Availability, activity: Activity) -> Result<Self, PairError> {
        if PREFERRED_PAIRS.contains(&(availability, activity)) {
            Ok(Self { availability, activity })
        } else {
            Err(PairError::Unsupported {
                action: "setUserPreferredPresence",
                availability,
                activity,
                supported: "Available/Available, Busy/Busy, DoNotDisturb/DoNotDisturb, BeRightBack/BeRightBack, Away/Away, Offline/OffWork",
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_any_case_and_prints_pascal_case() {
        assert_eq!(Availability::parse("doNotDisturb").unwrap(), Availability::DoNotDisturb);
        assert_eq!(Activity::parse("INACALL").unwrap(), Activity::InACall);
        assert_eq!(Activity::InAConferenceCall.to_string(), "InAConferenceCall");
        assert!(matches!(
            Availability::parse("Sleeping"),
            Err(PairError::UnknownValue { .. })
        ));
        assert!(Availability::parse("").is_err());
    }

    #[test]
    fn rank_follows_the_documented_order() {
        use Availability::*;
        let order = [
            DoNotDisturb,
            Busy,
            BusyIdle,
            Available,
            AvailableIdle,
            BeRightBack,
            Away,
            Offline,
            PresenceUnknown,
        ];
        for pair in order.windows(2) {
            assert!(
                pair[0].rank() > pair[1].rank(),
                "{:?} must outrank {:?}",
                pair[0],
                pair[1]
            );
        }
    }

    #[test]
    fn each_action_enforces_its_own_pairs() {
        use Activity as Ac;
        use Availability as Av;
        assert!(SessionState::new(Av::Busy, Ac::InACall).is_ok());
        assert!(SessionState::new(Av::Busy, Ac::Busy).is_err());
        assert!(SessionState::new(Av::Offline, Ac::OffWork).is_err());
        assert!(PreferredState::new(Av::Busy, Ac::Busy).is_ok());
        assert!(PreferredState::new(Av::Offline, Ac::OffWork).is_ok());
        assert!(PreferredState::new(Av::Busy, Ac::InACall).is_err());
        let legal_session = Av::ALL
            .iter()
            .flat_map(|a| Ac::ALL.iter().map(move |b| (*a, *b)))
            .filter(|(a, b)| SessionState::new(*a, *b).is_ok())
            .count();
        assert_eq!(legal_session, 5);
    }
}
