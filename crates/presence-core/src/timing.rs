//! The timing policy: how long sessions live and fade, and how long preferences last.
//!
//! Kept apart from the state so that operators can tune it (tests shrink minutes to seconds) while
//! stored state stays a record of absolute instants that does not depend on the policy in force.
use crate::duration::format_iso;
use crate::state::{Availability, PreferredState};
use crate::work_location::DayZone;
use jiff::SignedDuration;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timing {
    /// An Available session without keep-alive reads AvailableIdle/Inactive after this, Away after twice this.
    pub fade_after: SignedDuration,
    pub session_expiration_min: SignedDuration,
    pub session_expiration_default: SignedDuration,
    pub session_expiration_max: SignedDuration,
    /// Longest preferred presence a caller may ask for. Graph is silent; 30 days keeps a forgotten
    /// "appear offline" from living forever while covering a month of leave.
    pub preferred_expiration_max: SignedDuration,
    /// The zone whose midnight ends a work-location layer when the caller names none (Graph
    /// scopes the layers to "the current date").
    pub work_location_zone: DayZone,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimingError {
    #[error("The provided [ExpirationDuration] is out of range: {given} is not between {min} and {max}.")]
    OutOfRange { given: String, min: String, max: String },
    #[error("invalid timing configuration: {0}")]
    Config(String),
}

impl Default for Timing {
    /// Graph's documented values: 5 minute fade, sessions 5 minutes by default, 5 minutes to 4 hours.
    fn default() -> Self {
        Self {
            fade_after: SignedDuration::from_mins(5),
            session_expiration_min: SignedDuration::from_mins(5),
            session_expiration_default: SignedDuration::from_mins(5),
            session_expiration_max: SignedDuration::from_hours(4),
            preferred_expiration_max: SignedDuration::from_hours(24 * 30),
            work_location_zone: DayZone::utc(),
        }
    }
}

impl Timing {
    /// Reject policies that would make the state machine meaningless (zero fade, inverted bounds).
    pub fn validate(self) -> Result<Self, TimingError> {
        let zero = SignedDuration::ZERO;
        if self.fade_after <= zero {
            return Err(TimingError::Config("fade-after must be positive".into()));
        }
        if self.session_expiration_min <= zero {
            return Err(TimingError::Config("session-expiration-min must be positive".into()));
        }
        if !(self.session_expiration_min <= self.session_expiration_default
            && self.session_expiration_default <= self.session_expiration_max)
        {
            return Err(TimingError::Config(format!(
                "need session-expiration-min ({}) <= default ({}) <= max ({})",
                format_iso(self.session_expiration_min),
                format_iso(self.session_expiration_default),
                format_iso(self.session_expiration_max)
            )));
        }
        Ok(self)
    }

    /// The lifetime of a `setPresence` session: the caller's value within bounds, else the default.
    pub fn session_expiration(&self, requested: Option<SignedDuration>) -> Result<SignedDuration, TimingError> {
        let Some(d) = requested else {
            return Ok(self.session_expiration_default);
        };
        check_range(d, self.session_expiration_min, self.session_expiration_max)
    }

    /// The lifetime of a preferred presence: Graph defaults to 1 day for Busy/DoNotDisturb, 7 days otherwise.
    pub fn preferred_expiration(
        &self,
        state: PreferredState,
        requested: Option<SignedDuration>,
    ) -> Result<SignedDuration, TimingError> {
        match requested {
            Some(d) => check_range(d, SignedDuration::from_secs(1), self.preferred_expiration_max),
            None => Ok(match state.availability {
                Availability::Busy | Availability::DoNotDisturb => SignedDuration::from_hours(24),
                _ => SignedDuration::from_hours(24 * 7),
            }),
        }
    }
}

fn check_range(d: SignedDuration, min: SignedDuration, max: SignedDuration) -> Result<SignedDuration, TimingError> {
    if d < min || d > max {
        Err(TimingError::OutOfRange {
            given: format_iso(d),
            min: format_iso(min),
            max: format_iso(max),
        })
    } else {
        Ok(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Activity;

    #[test]
    fn session_bounds_follow_graph() {
        let t = Timing::default();
        assert_eq!(t.session_expiration(None).unwrap(), SignedDuration::from_mins(5));
        assert!(t.session_expiration(Some(SignedDuration::from_mins(4))).is_err());
        assert!(t.session_expiration(Some(SignedDuration::from_hours(4))).is_ok());
        assert!(t.session_expiration(Some(SignedDuration::from_mins(241))).is_err());
    }

    #[test]
    fn preferred_defaults_depend_on_availability() {
        let t = Timing::default();
        let busy = PreferredState::new(Availability::Busy, Activity::Busy).unwrap();
        let brb = PreferredState::new(Availability::BeRightBack, Activity::BeRightBack).unwrap();
        assert_eq!(
            t.preferred_expiration(busy, None).unwrap(),
            SignedDuration::from_hours(24)
        );
        assert_eq!(
            t.preferred_expiration(brb, None).unwrap(),
            SignedDuration::from_hours(168)
        );
        assert!(t.preferred_expiration(brb, Some(SignedDuration::ZERO)).is_err());
    }

    #[test]
    fn inverted_bounds_are_rejected() {
        let t = Timing {
            session_expiration_default: SignedDuration::from_hours(5),
            ..Timing::default()
        };
        assert!(t.validate().is_err());
    }
}
