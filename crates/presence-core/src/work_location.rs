//! Work location: the manual and automatic layers of Graph's `userWorkLocation`.
//!
//! Graph folds three layers into the `workLocation` a presence read shows: manual (what the user
//! or a client chose) over automatic (what a client detected) over scheduled (the calendar's
//! working hours and locations). presenced has no calendar, so it holds the first two; with
//! neither set the location reads `unspecified` from source `none`.
//!
//! Graph scopes both layers to "the current date". A layer here ends at the first midnight after
//! it was set, in a time zone the caller gives (see [`DayZone`]): an absolute deadline stored with
//! the layer, so `UserPresence::advance` removes it on time like every other timer.
use jiff::tz::TimeZone;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use std::fmt;

/// A place id is an opaque identifier (Graph uses GUIDs or place mailbox addresses); 256
/// characters covers both with room to spare while keeping a user's record small.
pub const MAX_PLACE_ID_CHARS: usize = 256;

macro_rules! camel_enum {
    ($(#[$doc:meta])* $name:ident, $kind:literal { $($variant:ident => $wire:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum $name { $($variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// As Graph writes it: these are OData enums, so camelCase.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $wire),+ }
            }

            /// Case-insensitive, like every enum presenced reads.
            pub fn parse(raw: &str) -> Result<Self, WorkLocationError> {
                Self::ALL
                    .iter()
                    .copied()
                    .find(|v| v.as_str().eq_ignore_ascii_case(raw))
                    .ok_or_else(|| WorkLocationError::UnknownValue {
                        kind: $kind,
                        value: raw.chars().take(64).collect(),
                        allowed: concat!($($wire, " "),+).trim_end(),
                    })
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

camel_enum!(
    /// What kind of place the user works from. Graph's `unknownFutureValue` is a sentinel for
    /// clients, never a value to set, so it is not one of these.
    WorkLocationType, "workLocationType" {
        Unspecified => "unspecified",
        Office => "office",
        Remote => "remote",
        TimeOff => "timeOff",
    }
);

camel_enum!(
    /// Which layer the folded location came from. `Scheduled` is Graph's calendar layer, which
    /// presenced does not have: it is part of the vocabulary but never produced.
    WorkLocationSource, "source" {
        None => "none",
        Manual => "manual",
        Scheduled => "scheduled",
        Automatic => "automatic",
    }
);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WorkLocationError {
    #[error("'{value}' is not a valid {kind}; expected one of: {allowed}")]
    UnknownValue {
        kind: &'static str,
        value: String,
        allowed: &'static str,
    },
    #[error("the placeId must be 1 to {MAX_PLACE_ID_CHARS} characters without control characters")]
    BadPlaceId,
}

/// Graph's `placeId`: opaque, bounded, printable.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PlaceId(String);

impl PlaceId {
    pub fn parse(raw: &str) -> Result<Self, WorkLocationError> {
        let count = raw.chars().count();
        if count == 0 || count > MAX_PLACE_ID_CHARS || raw.chars().any(char::is_control) {
            return Err(WorkLocationError::BadPlaceId);
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for PlaceId {
    type Error = WorkLocationError;
    fn try_from(raw: String) -> Result<Self, WorkLocationError> {
        Self::parse(&raw)
    }
}

impl From<PlaceId> for String {
    fn from(id: PlaceId) -> String {
        id.0
    }
}

/// Which of the two layers presenced holds a command writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocationLayer {
    Manual,
    Automatic,
}

/// What `setManualLocation` / `setAutomaticLocation` carry, already parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocationInput {
    pub kind: WorkLocationType,
    pub place_id: Option<PlaceId>,
}

/// The time zone whose calendar day a layer lasts for. Graph scopes the layers to "the current
/// date" without saying whose date; the caller names the zone (presenced reads it from the
/// request), and the layer ends at the next midnight there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DayZone(TimeZone);

impl DayZone {
    pub fn new(zone: TimeZone) -> Self {
        Self(zone)
    }

    /// UTC as the zone lookup names it, so it equals the zone a configuration saying "UTC" gets.
    pub fn utc() -> Self {
        Self(crate::zone::lookup_time_zone("UTC").unwrap_or(TimeZone::UTC))
    }

    /// The first instant of the next day in this zone, strictly after `now`. Midnight that a DST
    /// change skips resolves to the day's first instant (jiff's `start_of_day`); a zone or date
    /// jiff cannot represent falls back to 24 hours after `now`, so there is always an end.
    pub fn end_of_day(&self, now: Timestamp) -> Timestamp {
        now.to_zoned_datetime(self.0.clone())
            .tomorrow()
            .and_then(|d| d.start_of_day())
            .map(|d| d.timestamp())
            .ok()
            .filter(|end| *end > now)
            .unwrap_or_else(|| {
                now.checked_add(jiff::SignedDuration::from_hours(24))
                    .unwrap_or(Timestamp::MAX)
            })
    }
}

/// One layer's current signal and the instant it stops counting.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocationSignal {
    pub kind: WorkLocationType,
    pub place_id: Option<PlaceId>,
    pub until: Timestamp,
}

/// The layers presenced holds for a user.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct WorkLocation {
    pub manual: Option<LocationSignal>,
    pub automatic: Option<LocationSignal>,
}

impl WorkLocation {
    pub fn is_empty(&self) -> bool {
        self.manual.is_none() && self.automatic.is_none()
    }

    /// Manual over automatic; neither: `unspecified` from `none`.
    pub fn view(&self) -> WorkLocationView {
        let layered = [
            (self.manual.as_ref(), WorkLocationSource::Manual),
            (self.automatic.as_ref(), WorkLocationSource::Automatic),
        ];
        layered
            .into_iter()
            .find_map(|(signal, source)| {
                signal.map(|s| WorkLocationView {
                    kind: s.kind,
                    source,
                    place_id: s.place_id.clone(),
                })
            })
            .unwrap_or_default()
    }

    /// The earliest instant a layer ends.
    pub fn next_deadline(&self) -> Option<Timestamp> {
        [&self.manual, &self.automatic]
            .into_iter()
            .flatten()
            .map(|s| s.until)
            .min()
    }

    /// Drop the layers that ended at or before `now`; returns the latest such end.
    pub(crate) fn apply_due(&mut self, now: Timestamp) -> Option<Timestamp> {
        let mut latest = None;
        for layer in [&mut self.manual, &mut self.automatic] {
            if let Some(ended) = layer.take_if(|s| s.until <= now) {
                latest = Some(latest.map_or(ended.until, |l: Timestamp| l.max(ended.until)));
            }
        }
        latest
    }

    pub(crate) fn set(&mut self, layer: LocationLayer, input: &LocationInput, until: Timestamp) {
        let signal = Some(LocationSignal {
            kind: input.kind,
            place_id: input.place_id.clone(),
            until,
        });
        match layer {
            LocationLayer::Manual => self.manual = signal,
            LocationLayer::Automatic => self.automatic = signal,
        }
    }
}

/// The folded work location, as a presence read shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkLocationView {
    pub kind: WorkLocationType,
    pub source: WorkLocationSource,
    pub place_id: Option<PlaceId>,
}

impl Default for WorkLocationView {
    fn default() -> Self {
        Self {
            kind: WorkLocationType::Unspecified,
            source: WorkLocationSource::None,
            place_id: None,
        }
    }
}

impl WorkLocationView {
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    #[test]
    fn enums_read_any_case_and_write_camel_case() {
        assert_eq!(WorkLocationType::parse("TIMEOFF").unwrap(), WorkLocationType::TimeOff);
        assert_eq!(WorkLocationType::TimeOff.as_str(), "timeOff");
        assert_eq!(WorkLocationType::parse("Office").unwrap().to_string(), "office");
        let err = WorkLocationType::parse("unknownFutureValue").unwrap_err().to_string();
        assert!(err.contains("unspecified office remote timeOff"), "{err}");
        assert!(WorkLocationType::parse("").is_err());
        assert_eq!(WorkLocationSource::Automatic.as_str(), "automatic");
    }

    #[test]
    fn place_ids_are_bounded_and_printable() {
        assert!(PlaceId::parse("eb706f15-137e-4722-b4d1-b601481d9251").is_ok());
        assert!(PlaceId::parse("Building 4, Floor 2 – Café").is_ok());
        assert!(PlaceId::parse(&"é".repeat(MAX_PLACE_ID_CHARS)).is_ok());
        assert!(PlaceId::parse(&"a".repeat(MAX_PLACE_ID_CHARS + 1)).is_err());
        assert!(PlaceId::parse("").is_err());
        assert!(PlaceId::parse("a\nb").is_err());
    }

    #[test]
    fn a_day_ends_at_the_next_midnight_of_the_zone() {
        let utc = DayZone::utc();
        assert_eq!(utc.end_of_day(ts("2026-12-04T21:53:51Z")), ts("2026-12-05T00:00:00Z"));
        // Exactly midnight belongs to the day it starts.
        assert_eq!(utc.end_of_day(ts("2026-12-05T00:00:00Z")), ts("2026-12-06T00:00:00Z"));
        let la = DayZone::new(jiff::tz::TimeZone::get("America/Los_Angeles").unwrap());
        // 21:53 UTC is 13:53 in Los Angeles: the day ends at 08:00 UTC the next morning.
        assert_eq!(la.end_of_day(ts("2026-12-04T21:53:51Z")), ts("2026-12-05T08:00:00Z"));
        // The day DST starts is 23 hours long there.
        assert_eq!(la.end_of_day(ts("2026-03-08T09:00:00Z")), ts("2026-03-09T07:00:00Z"));
    }

    #[test]
    fn manual_wins_over_automatic_and_nothing_reads_unspecified() {
        let until = ts("2026-12-05T00:00:00Z");
        let office = LocationInput {
            kind: WorkLocationType::Office,
            place_id: Some(PlaceId::parse("hq").unwrap()),
        };
        let remote = LocationInput {
            kind: WorkLocationType::Remote,
            place_id: None,
        };
        let mut w = WorkLocation::default();
        assert!(w.view().is_default());
        w.set(LocationLayer::Automatic, &office, until);
        assert_eq!(w.view().source, WorkLocationSource::Automatic);
        w.set(LocationLayer::Manual, &remote, until);
        assert_eq!(
            w.view(),
            WorkLocationView {
                kind: WorkLocationType::Remote,
                source: WorkLocationSource::Manual,
                place_id: None,
            }
        );
        w.manual = None;
        assert_eq!(w.view().place_id.as_ref().map(PlaceId::as_str), Some("hq"));
    }
}
