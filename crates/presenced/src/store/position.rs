//! Where a change sits in the change log: opaque to everyone but the backend that made it.
//!
//! Positions are only compared, stored and handed back; nobody does arithmetic on them, so a
//! partitioned backend can later hold one entry per partition. Their text form starts with a
//! version (`1.` today: one sequence for the whole log) so an old token is recognised, never
//! misread, when the form changes.
use std::fmt;

/// A place in the change log. `Position::ZERO` is "before every change".
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Position(u64);

/// The version of the text form this build writes.
const TEXT_VERSION: &str = "1";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PositionError {
    #[error("not a change-log position (expected `1.<digits>`)")]
    Malformed,
    #[error("a change-log position of another form (version {0}); this server writes version 1")]
    OtherVersion(String),
}

impl Position {
    pub const ZERO: Position = Position(0);

    /// For backends with one sequence for the whole log (the embedded one).
    pub fn from_sequence(sequence: u64) -> Self {
        Position(sequence)
    }

    /// The single sequence behind this position; only the backend that made it reads it.
    pub fn sequence(self) -> u64 {
        self.0
    }

    /// The versioned text form, e.g. `1.4711`: what tokens and cursors carry.
    pub fn to_text(self) -> String {
        self.to_string()
    }

    pub fn parse(text: &str) -> Result<Self, PositionError> {
        let (version, rest) = text.split_once('.').ok_or(PositionError::Malformed)?;
        if version != TEXT_VERSION {
            return if !version.is_empty() && version.bytes().all(|b| b.is_ascii_digit()) {
                Err(PositionError::OtherVersion(version.to_owned()))
            } else {
                Err(PositionError::Malformed)
            };
        }
        if rest.is_empty() || rest.len() > 20 || !rest.bytes().all(|b| b.is_ascii_digit()) {
            return Err(PositionError::Malformed);
        }
        rest.parse().map(Position).map_err(|_| PositionError::Malformed)
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{TEXT_VERSION}.{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_form_round_trips_and_refuses_what_it_did_not_write() {
        for n in [0, 1, 42, u64::MAX] {
            let p = Position::from_sequence(n);
            assert_eq!(Position::parse(&p.to_text()), Ok(p));
        }
        assert_eq!(Position::from_sequence(7).to_text(), "1.7");
        assert_eq!(Position::parse("2.7"), Err(PositionError::OtherVersion("2".into())));
        for bad in [
            "",
            "1",
            "1.",
            "1.x",
            "x.1",
            "1.-1",
            "1.99999999999999999999",
            ".1",
            "1.1.1",
        ] {
            assert!(Position::parse(bad).is_err(), "{bad:?}");
        }
        assert!(Position::from_sequence(2) > Position::from_sequence(1));
    }
}
