//! Graph `dateTimeTimeZone`: `resolve_date_time_zone(dateTime, timeZone)` on arbitrary text.
//!
//! Input: `dateTime` and `timeZone` separated by the first NUL byte (no NUL: the whole input is
//! tried as each, against a fixed other half). Invariants beyond "never panics": surrounding
//! whitespace and ASCII case of the zone name do not change the result, as documented.
#![no_main]

use libfuzzer_sys::fuzz_target;
use presence_core::zone::resolve_date_time_zone;

fn run(date_time: &str, time_zone: &str) {
    let result = resolve_date_time_zone(date_time, time_zone);
    if let Ok(at) = result {
        let padded = resolve_date_time_zone(&format!(" {date_time}\t"), &format!("\n{time_zone} "));
        assert_eq!(padded, Ok(at), "whitespace changed ({date_time:?}, {time_zone:?})");
        for zone in [time_zone.to_ascii_lowercase(), time_zone.to_ascii_uppercase()] {
            assert_eq!(
                resolve_date_time_zone(date_time, &zone),
                Ok(at),
                "case changed ({date_time:?}, {time_zone:?}) vs {zone:?}"
            );
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    match text.split_once('\0') {
        Some((date_time, time_zone)) => run(date_time, time_zone),
        None => {
            run(&text, "Pacific Standard Time");
            run("2026-03-08T02:30:00", &text);
        }
    }
});
