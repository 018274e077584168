//! `expirationDuration` / configuration durations: `parse_wire_duration`, `parse_config_duration`
//! and `format_iso` on arbitrary text.
//!
//! Invariants beyond "never panics":
//! - an accepted duration is non-negative and at most the documented 36525-day cap;
//! - `format_iso` of an accepted duration parses back (wire parser) to the same value;
//! - the config parser accepts everything the wire parser accepts, with the same value;
//! - `format_iso` of any in-range, non-negative duration (built from the input's first 12 bytes)
//!   is accepted back by the wire parser, as its doc promises.
#![no_main]

use jiff::SignedDuration;
use libfuzzer_sys::fuzz_target;
use presence_core::duration::{format_iso, parse_config_duration, parse_wire_duration};

const MAX_SECS: i64 = 36_525 * 86_400;

fn check_accepted(text: &str, d: SignedDuration, parser: &str) {
    assert!(!d.is_negative(), "{parser} accepted {text:?} as negative {d:?}");
    assert!(
        d <= SignedDuration::from_secs(MAX_SECS),
        "{parser} accepted {text:?} above the cap: {d:?}"
    );
    let iso = format_iso(d);
    assert_eq!(
        parse_wire_duration(&iso),
        Ok(d),
        "format_iso({d:?}) = {iso:?} does not reparse (from {parser} input {text:?})"
    );
}

fn run(text: &str) {
    let wire = parse_wire_duration(text);
    let config = parse_config_duration(text);
    if let Ok(d) = wire {
        check_accepted(text, d, "parse_wire_duration");
        assert_eq!(config, Ok(d), "config parser disagrees with wire parser on {text:?}");
    }
    if let Ok(d) = config {
        check_accepted(text, d, "parse_config_duration");
    }
}

fuzz_target!(|data: &[u8]| {
    match std::str::from_utf8(data) {
        Ok(text) => run(text),
        Err(_) => run(&String::from_utf8_lossy(data)),
    }

    // format_iso on an arbitrary SignedDuration (secs: i64, nanos folded into one second).
    if let (Some(secs), Some(nanos)) = (data.get(..8), data.get(8..12)) {
        let secs = i64::from_le_bytes(secs.try_into().unwrap());
        let nanos = i32::from_le_bytes(nanos.try_into().unwrap()) % 1_000_000_000;
        let d = SignedDuration::new(secs, nanos);
        let iso = format_iso(d);
        if !d.is_negative() && d <= SignedDuration::from_secs(MAX_SECS) {
            assert_eq!(parse_wire_duration(&iso), Ok(d), "format_iso({d:?}) = {iso:?}");
        } else if d.is_negative() {
            assert!(iso.starts_with("-P"), "format_iso({d:?}) = {iso:?}");
        }
    }
});
