//! Resolving Graph `dateTimeTimeZone` values to instants.
//!
//! Graph sends a wall-clock `dateTime` without an offset plus a separate `timeZone`, which real
//! clients fill with Windows names ("Pacific Standard Time") as often as IANA names
//! ("America/Los_Angeles"). Windows names are mapped through the CLDR table shipped in
//! `localzone`, and all zone data comes from the IANA database bundled into jiff, so results
//! never depend on the host's zoneinfo files and lookups never touch the file system.

use std::collections::HashMap;
use std::sync::OnceLock;

use jiff::civil::DateTime;
use jiff::tz::{Offset, TimeZone, TimeZoneDatabase};
use jiff::Timestamp;

/// No real zone name comes close; longer input is rejected before any lookup work is done.
const MAX_ZONE_NAME_LEN: usize = 128;

/// Inputs are echoed into HTTP 400 bodies; a cap keeps a hostile megabyte string out of them.
const MAX_QUOTED_CHARS: usize = 64;

const DATE_TIME_SHAPE: &str =
    "expected a wall-clock time like \"2026-12-01T12:00:00\" (seconds and up to 9 fractional digits optional)";

/// Why a `dateTimeTimeZone` could not be resolved. The `Display` text is meant for API clients.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ZoneError {
    /// The zone is neither a known Windows name nor a known IANA name. Carries the name as given
    /// (trimmed, and shortened if absurdly long).
    #[error(
        "unknown time zone {0:?}; expected a Windows name like \"Pacific Standard Time\" \
         or an IANA name like \"America/Los_Angeles\""
    )]
    UnknownZone(String),
    /// The `dateTime` is not a valid offset-free wall-clock time; the payload quotes it and says why.
    #[error("invalid dateTime {0}")]
    BadDateTime(String),
}

/// A Graph `dateTimeTimeZone` resolved: the instant it names, and the wall clock of that instant
/// in its zone (what a response echoes as `dateTime`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResolvedDateTime {
    pub at: Timestamp,
    pub wall_clock: DateTime,
}

impl ResolvedDateTime {
    /// The wall clock as Graph writes a `dateTime`: no zone, seven fractional digits.
    pub fn wall_clock_text(&self) -> String {
        self.wall_clock.strftime("%Y-%m-%dT%H:%M:%S%.7f").to_string()
    }
}

/// Resolve a Graph `dateTimeTimeZone` (a wall-clock `dateTime` with no offset, plus a zone name) to an instant.
///
/// `time_zone` may be an IANA name ("America/Los_Angeles", "UTC", "Etc/GMT+5") or a Windows name
/// ("Pacific Standard Time", "W. Europe Standard Time", "UTC"); both are matched
/// case-insensitively. `date_time` is `YYYY-MM-DDTHH:MM[:SS[.fffffffff]]`. Wall-clock times
/// skipped or repeated by a DST change resolve with jiff's "compatible" disambiguation (gaps move
/// forward, overlaps take the earlier instant), matching what Windows and most calendar software do.
///
/// Graph's `dateTime` carries no zone, but JavaScript's `new Date().toISOString()` and Python's
/// `isoformat()` both write one (`Z`, `+00:00`), and clients send what they have. A trailing `Z` or
/// `±HH:MM` (also `±HHMM`, `±HH`) therefore names that instant exactly, whatever `time_zone`
/// says; `time_zone` then only decides the wall clock the instant is shown in.
pub fn resolve_date_time_zone(date_time: &str, time_zone: &str) -> Result<Timestamp, ZoneError> {
    resolve_date_time(date_time, time_zone).map(|r| r.at)
}

/// [`resolve_date_time_zone`], with the wall clock of the instant in the zone.
pub fn resolve_date_time(date_time: &str, time_zone: &str) -> Result<ResolvedDateTime, ZoneError> {
    let (wall, offset) = parse_wall_clock(date_time)?;
    let tz = lookup_zone(time_zone)?;
    let outside = || {
        ZoneError::BadDateTime(format!(
            "{}: outside the supported range of instants in {}",
            quote(date_time.trim()),
            quote(time_zone.trim())
        ))
    };
    match offset {
        None => {
            let at = tz.to_ambiguous_timestamp(wall).compatible().map_err(|_| outside())?;
            Ok(ResolvedDateTime { at, wall_clock: wall })
        }
        Some(offset) => {
            let at = offset.to_timestamp(wall).map_err(|_| outside())?;
            let wall_clock = tz.to_datetime(at);
            Ok(ResolvedDateTime { at, wall_clock })
        }
    }
}

/// A zone by Windows or IANA name, case-insensitively (what `resolve_date_time_zone` accepts).
pub fn lookup_time_zone(time_zone: &str) -> Result<TimeZone, ZoneError> {
    lookup_zone(time_zone)
}

fn lookup_zone(time_zone: &str) -> Result<TimeZone, ZoneError> {
    let name = time_zone.trim();
    let unknown = || ZoneError::UnknownZone(shorten(name));
    if name.is_empty() || name.len() > MAX_ZONE_NAME_LEN {
        return Err(unknown());
    }

    // Windows names go first because they are what Graph itself emits; the exact-case lookup
    // is the common path and avoids building the case-insensitive index at all.
    let windows = localzone::win_zone_to_iana(name, None).or_else(|| {
        windows_names()
            .get(&name.to_ascii_lowercase())
            .and_then(|canonical| localzone::win_zone_to_iana(canonical, None))
    });
    // jiff's lookup is already case-insensitive for IANA names.
    database().get(windows.unwrap_or(name)).map_err(|_| unknown())
}

/// Pinned to the bundled copy: `jiff::tz::db()` may read the host's zoneinfo when other crates
/// enable jiff's default features, and this module must stay free of I/O and host differences.
fn database() -> &'static TimeZoneDatabase {
    static DB: OnceLock<TimeZoneDatabase> = OnceLock::new();
    DB.get_or_init(TimeZoneDatabase::bundled)
}

/// Lowercased Windows name → canonical Windows name.
///
/// `localzone` matches Windows names exactly and does not expose its table, so the canonical
/// spellings are recovered by mapping every IANA name back through it. That keeps the CLDR
/// table as the single source of truth instead of a hand-maintained copy.
fn windows_names() -> &'static HashMap<String, &'static str> {
    static NAMES: OnceLock<HashMap<String, &'static str>> = OnceLock::new();
    NAMES.get_or_init(|| {
        database()
            .available()
            .filter_map(|iana| localzone::iana_to_win_zone(iana.as_str()))
            .map(|(windows, _territory)| (windows.to_ascii_lowercase(), windows))
            .collect()
    })
}

/// Parse `YYYY-MM-DDTHH:MM[:SS[.f{1,9}]]` strictly, with an optional trailing `Z` or
/// `±HH[:MM]`. jiff's own parser is deliberately not used: it also takes bracketed zones,
/// date-only and basic formats, each of which would need to be detected and rejected anyway.
fn parse_wall_clock(text: &str) -> Result<(DateTime, Option<Offset>), ZoneError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(ZoneError::BadDateTime(format!("\"\": {DATE_TIME_SHAPE}")));
    }
    let bad = |why: &str| ZoneError::BadDateTime(format!("{}: {why}", quote(text)));
    let b = text.as_bytes();

    let number = |range: std::ops::Range<usize>| -> Option<i16> {
        let digits = b.get(range)?;
        digits.iter().try_fold(0i16, |acc, d| {
            d.is_ascii_digit().then(|| acc * 10 + i16::from(d - b'0'))
        })
    };
    let at = |i: usize, expected: &[u8]| b.get(i).is_some_and(|c| expected.contains(c));

    let (Some(year), true, Some(month), true, Some(day), true, Some(hour), true, Some(minute)) = (
        number(0..4),
        at(4, b"-"),
        number(5..7),
        at(7, b"-"),
        number(8..10),
        at(10, b"Tt"),
        number(11..13),
        at(13, b":"),
        number(14..16),
    ) else {
        return Err(bad(DATE_TIME_SHAPE));
    };

    let mut pos = 16;
    let mut second = 0;
    let mut nanos = 0i32;
    if at(pos, b":") {
        second = number(17..19).ok_or_else(|| bad(DATE_TIME_SHAPE))?;
        pos = 19;
        if at(pos, b".,") {
            pos += 1;
            let start = pos;
            while b.get(pos).is_some_and(u8::is_ascii_digit) {
                pos += 1;
            }
            let len = pos - start;
            if len == 0 || len > 9 {
                return Err(bad("the fraction of a second must have 1 to 9 digits"));
            }
            for (i, d) in b[start..pos].iter().enumerate() {
                nanos += i32::from(d - b'0') * 10i32.pow(8 - i as u32);
            }
        }
    }

    // Every byte before `pos` was checked to be ASCII, so `pos` is a char boundary.
    let rest = &text[pos..];
    let bad_offset = || {
        bad("a UTC offset must be Z or +HH:MM / -HH:MM (at most 23:59); or leave it out and give the zone in timeZone")
    };
    let offset = match rest.as_bytes() {
        [] => None,
        [b'Z' | b'z'] => Some(Offset::UTC),
        [b'Z' | b'z', ..] => return Err(bad_offset()),
        [sign @ (b'+' | b'-'), ..] => Some(parse_offset(*sign, &rest[1..]).ok_or_else(bad_offset)?),
        _ => {
            let ch = rest.chars().next().unwrap_or(' ');
            return Err(bad(&format!("unexpected {ch:?} after the time; {DATE_TIME_SHAPE}")));
        }
    };

    // Every component is at most four digits, so these narrowings cannot fail; mapping them to an
    // error anyway keeps the function panic-free by construction.
    let narrow = |v: i16| i8::try_from(v).map_err(|_| bad(DATE_TIME_SHAPE));
    let wall = DateTime::new(
        year,
        narrow(month)?,
        narrow(day)?,
        narrow(hour)?,
        narrow(minute)?,
        narrow(second)?,
        nanos,
    )
    .map_err(|e| bad(&format!("not a valid date and time ({e})")))?;
    Ok((wall, offset))
}

/// `HH`, `HHMM` or `HH:MM` after the sign; hours 0..=23, minutes 0..=59.
fn parse_offset(sign: u8, digits: &str) -> Option<Offset> {
    let b = digits.as_bytes();
    let two = |i: usize| -> Option<i32> {
        let (h, l) = (*b.get(i)?, *b.get(i + 1)?);
        (h.is_ascii_digit() && l.is_ascii_digit()).then(|| i32::from(h - b'0') * 10 + i32::from(l - b'0'))
    };
    let (hours, minutes) = match b.len() {
        2 => (two(0)?, 0),
        4 => (two(0)?, two(2)?),
        5 if b[2] == b':' => (two(0)?, two(3)?),
        _ => return None,
    };
    if hours > 23 || minutes > 59 {
        return None;
    }
    let seconds = (hours * 3600 + minutes * 60) * if sign == b'-' { -1 } else { 1 };
    Offset::from_seconds(seconds).ok()
}

fn shorten(text: &str) -> String {
    match text.char_indices().nth(MAX_QUOTED_CHARS) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

/// Escaped so control characters cannot leak into logs or response bodies.
fn quote(text: &str) -> String {
    match text.char_indices().nth(MAX_QUOTED_CHARS) {
        Some((cut, _)) => format!("{:?}…", &text[..cut]),
        None => format!("{text:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ts(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    fn resolve(date_time: &str, time_zone: &str) -> Timestamp {
        resolve_date_time_zone(date_time, time_zone)
            .unwrap_or_else(|e| panic!("{date_time:?} in {time_zone:?} should resolve: {e}"))
    }

    #[test]
    fn windows_and_iana_names_agree() {
        let want = ts("2026-12-01T20:00:00Z");
        assert_eq!(resolve("2026-12-01T12:00:00", "Pacific Standard Time"), want);
        assert_eq!(resolve("2026-12-01T12:00:00", "America/Los_Angeles"), want);
    }

    #[test]
    fn summer_dates_use_daylight_time() {
        // -07:00 in July, not the -08:00 the Windows name might suggest.
        assert_eq!(
            resolve("2026-07-01T12:00:00", "Pacific Standard Time"),
            ts("2026-07-01T19:00:00Z")
        );
        assert_eq!(
            resolve("2026-07-01T12:00:00", "America/Los_Angeles"),
            ts("2026-07-01T19:00:00Z")
        );
    }

    #[test]
    fn western_europe() {
        assert_eq!(
            resolve("2026-12-01T12:00:00", "W. Europe Standard Time"),
            ts("2026-12-01T11:00:00Z")
        );
        assert_eq!(
            resolve("2026-07-01T12:00:00", "W. Europe Standard Time"),
            ts("2026-07-01T10:00:00Z")
        );
        assert_eq!(
            resolve("2026-07-01T12:00:00", "Europe/Berlin"),
            ts("2026-07-01T10:00:00Z")
        );
    }

    #[test]
    fn utc_and_fixed_offsets() {
        assert_eq!(resolve("2026-12-01T12:00:00", "UTC"), ts("2026-12-01T12:00:00Z"));
        assert_eq!(resolve("2026-12-01T12:00:00", "utc"), ts("2026-12-01T12:00:00Z"));
        assert_eq!(resolve("2026-12-01T12:00:00", "Etc/UTC"), ts("2026-12-01T12:00:00Z"));
        // POSIX sign convention: Etc/GMT+5 is five hours *behind* UTC.
        assert_eq!(resolve("2026-12-01T12:00:00", "Etc/GMT+5"), ts("2026-12-01T17:00:00Z"));
        assert_eq!(resolve("2026-12-01T12:00:00", "UTC-11"), ts("2026-12-01T23:00:00Z"));
    }

    #[test]
    fn names_are_case_insensitive_and_trimmed() {
        let want = ts("2026-12-01T20:00:00Z");
        for zone in [
            "pacific standard time",
            "PACIFIC STANDARD TIME",
            " Pacific Standard Time ",
            "america/los_angeles",
            "AMERICA/LOS_ANGELES",
        ] {
            assert_eq!(resolve("2026-12-01T12:00:00", zone), want, "{zone:?}");
        }
        assert_eq!(
            resolve("2026-12-01T12:00:00", "w. europe standard time"),
            ts("2026-12-01T11:00:00Z")
        );
    }

    #[test]
    fn every_windows_name_resolves() {
        // The reverse-built index must cover the whole CLDR table: 139 Windows names in the
        // localzone 0.3 table. Fewer would mean some names silently lost case-insensitivity.
        let names = windows_names();
        assert!(names.len() >= 139, "only {} Windows names indexed", names.len());
        for (lower, canonical) in names {
            assert!(lookup_zone(canonical).is_ok(), "{canonical}");
            assert!(lookup_zone(lower).is_ok(), "{lower}");
        }
    }

    #[test]
    fn windows_names_that_are_also_iana_names_agree() {
        // Windows names win the lookup; this checks that no IANA name spelled the same way
        // would have meant a different zone.
        let wall: DateTime = "2026-07-01T12:00:00".parse().unwrap();
        for (lower, canonical) in windows_names() {
            if let Ok(iana) = database().get(lower) {
                let via_windows = lookup_zone(canonical).unwrap();
                assert_eq!(
                    iana.to_ambiguous_timestamp(wall).compatible().unwrap(),
                    via_windows.to_ambiguous_timestamp(wall).compatible().unwrap(),
                    "{canonical}"
                );
            }
        }
    }

    #[test]
    fn unknown_zones_are_errors() {
        for zone in ["", "  ", "Mars Standard Time", "America/Atlantis", "Pacific", "+05:00"] {
            assert!(
                matches!(
                    resolve_date_time_zone("2026-12-01T12:00:00", zone),
                    Err(ZoneError::UnknownZone(_))
                ),
                "{zone:?}"
            );
        }
        let msg = resolve_date_time_zone("2026-12-01T12:00:00", "Mars Standard Time")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("\"Mars Standard Time\""), "{msg}");
        assert!(msg.contains("Pacific Standard Time"), "{msg}");
    }

    #[test]
    fn zone_lookup_never_touches_paths() {
        for zone in ["../../etc/passwd", "/etc/localtime", "America/../UTC"] {
            assert!(resolve_date_time_zone("2026-12-01T12:00:00", zone).is_err(), "{zone}");
        }
    }

    #[test]
    fn date_time_forms() {
        let tz = "UTC";
        assert_eq!(resolve("2026-12-01T12:00", tz), ts("2026-12-01T12:00:00Z"));
        assert_eq!(resolve("2026-12-01t12:00:00", tz), ts("2026-12-01T12:00:00Z"));
        assert_eq!(resolve(" 2026-12-01T12:00:00 ", tz), ts("2026-12-01T12:00:00Z"));
        assert_eq!(
            resolve("2022-10-18T17:05:33.2079781", tz),
            ts("2022-10-18T17:05:33.2079781Z")
        );
        assert_eq!(
            resolve("2022-10-18T17:05:33.123456789", tz),
            ts("2022-10-18T17:05:33.123456789Z")
        );
        assert_eq!(resolve("2022-10-18T17:05:33,5", tz), ts("2022-10-18T17:05:33.5Z"));
    }

    #[test]
    fn an_offset_or_z_names_that_instant_and_the_zone_only_its_wall_clock() {
        // What `new Date().toISOString()` and Python's isoformat() send.
        let cases = [
            (
                "2026-12-04T21:53:51.697Z",
                "Pacific Standard Time",
                "2026-12-04T21:53:51.697Z",
                "2026-12-04T13:53:51.6970000",
            ),
            (
                "2026-12-01T12:00:00z",
                "UTC",
                "2026-12-01T12:00:00Z",
                "2026-12-01T12:00:00.0000000",
            ),
            (
                "2026-12-01T12:00:00+00:00",
                "W. Europe Standard Time",
                "2026-12-01T12:00:00Z",
                "2026-12-01T13:00:00.0000000",
            ),
            (
                "2026-12-01T12:00:00-08:00",
                "UTC",
                "2026-12-01T20:00:00Z",
                "2026-12-01T20:00:00.0000000",
            ),
            (
                "2026-12-01T12:00Z",
                "Asia/Kolkata",
                "2026-12-01T12:00:00Z",
                "2026-12-01T17:30:00.0000000",
            ),
            (
                "2026-12-01T12:00:00.5+0130",
                "UTC",
                "2026-12-01T10:30:00.5Z",
                "2026-12-01T10:30:00.5000000",
            ),
            (
                "2026-12-01T12:00:00+05",
                "UTC",
                "2026-12-01T07:00:00Z",
                "2026-12-01T07:00:00.0000000",
            ),
        ];
        for (date_time, zone, instant, wall) in cases {
            let r = resolve_date_time(date_time, zone).unwrap();
            assert_eq!(
                (r.at, r.wall_clock_text().as_str()),
                (ts(instant), wall),
                "{date_time} {zone}"
            );
        }
        // Without an offset the wall clock is the one given, written with seven digits.
        let r = resolve_date_time("2022-10-18T17:05:33.2079781", "Pacific Standard Time").unwrap();
        assert_eq!(r.wall_clock_text(), "2022-10-18T17:05:33.2079781");
        for bad in [
            "2026-12-01T12:00:00+24:00",
            "2026-12-01T12:00:00+01:60",
            "2026-12-01T12:00:00+1",
            "2026-12-01T12:00:00+01:0",
            "2026-12-01T12:00:00Zx",
            "2026-12-01T12:00:00+01:00:00",
            "2026-12-01T12:00:00-",
        ] {
            let err = resolve_date_time_zone(bad, "UTC").unwrap_err();
            assert!(
                matches!(&err, ZoneError::BadDateTime(m) if m.contains("offset")),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn bad_date_times_are_rejected() {
        for date_time in [
            "",
            "   ",
            "2026-12-01",
            "2026-12-01T",
            "2026-12-01T12",
            "2026-12-01T12:00:",
            "2026-12-01T12:00:00.",
            "2026-12-01T12:00:00.1234567890",
            "2026-12-01 12:00:00",
            "20261201T120000",
            "2026-02-30T12:00:00",
            "2026-13-01T12:00:00",
            "2026-12-01T24:00:00",
            "2026-12-01T12:60:00",
            "2026-12-01T12:00:60",
            "26-12-01T12:00:00",
            "2026-12-01T12:00:00[America/Los_Angeles]",
            "2026-12-01T12:00:00 garbage",
            "２026-12-01T12:00:00",
            "2026-12-01T12:00:0é",
            "-026-12-01T12:00:00",
        ] {
            assert!(
                matches!(resolve_date_time_zone(date_time, "UTC"), Err(ZoneError::BadDateTime(_))),
                "{date_time:?}"
            );
        }
    }

    #[test]
    fn dst_gap_moves_forward_and_overlap_takes_earlier() {
        // 02:30 does not exist on 2026-03-08 in Los Angeles; "compatible" reads it as 03:30 PDT.
        assert_eq!(
            resolve("2026-03-08T02:30:00", "Pacific Standard Time"),
            ts("2026-03-08T10:30:00Z")
        );
        // 01:30 happens twice on 2026-11-01; "compatible" picks the first (PDT, -07:00).
        assert_eq!(
            resolve("2026-11-01T01:30:00", "Pacific Standard Time"),
            ts("2026-11-01T08:30:00Z")
        );
    }

    #[test]
    fn out_of_range_instants_are_errors_not_panics() {
        assert!(matches!(
            resolve_date_time_zone("9999-12-31T23:59:59", "Etc/GMT+12"),
            Err(ZoneError::BadDateTime(_))
        ));
        assert!(matches!(
            resolve_date_time_zone("0000-01-01T00:00:00", "Etc/GMT-14"),
            Ok(_) | Err(ZoneError::BadDateTime(_))
        ));
    }

    #[test]
    fn huge_and_hostile_inputs_give_short_messages() {
        let huge = format!("\u{1b}{}", "A".repeat(100_000));
        let zone_msg = resolve_date_time_zone("2026-12-01T12:00:00", &huge)
            .unwrap_err()
            .to_string();
        assert!(zone_msg.len() < 400, "{zone_msg}");
        assert!(!zone_msg.contains('\u{1b}'));
        let dt_msg = resolve_date_time_zone(&huge, "UTC").unwrap_err().to_string();
        assert!(dt_msg.len() < 400, "{dt_msg}");
        assert!(!dt_msg.contains('\u{1b}'));
    }

    proptest! {
        #[test]
        fn never_panics(date_time in any::<String>(), time_zone in any::<String>()) {
            let _ = resolve_date_time_zone(&date_time, &time_zone);
        }

        #[test]
        fn never_panics_on_near_misses(
            date_time in "[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}(:[0-9]{2}([.,][0-9]{0,12})?)?[Zz+\\-:0-9]{0,6}",
        ) {
            let _ = resolve_date_time_zone(&date_time, "Pacific Standard Time");
        }
    }
}
