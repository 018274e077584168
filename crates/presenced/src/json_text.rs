//! JSON values written by hand, byte for byte as serde_json writes them.
//!
//! For the hot paths only: a presence read's body and the two records each write logs. There
//! serde_json's escaping scans every key and value a byte at a time, and jiff's timestamp
//! formatting goes through `fmt` machinery; together they were ~10% of a write's instructions.
//! The tests hold each function equal to serde's output, so the files and wire bytes are the same
//! either way.
use jiff::Timestamp;

/// A JSON string: copied as is unless it holds a byte JSON requires escaped (a control character,
/// `"` or `\\`), in which case serde_json escapes it.
pub fn string(out: &mut Vec<u8>, text: &str) {
    // Not short-circuiting, so the check runs over whole words at a time.
    let needs_escape = text
        .bytes()
        .fold(false, |any, b| any | (b < 0x20) | (b == b'"') | (b == b'\\'));
    if needs_escape {
        // Writing a string into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, text);
    } else {
        out.reserve(text.len() + 2);
        out.push(b'"');
        out.extend_from_slice(text.as_bytes());
        out.push(b'"');
    }
}

/// An optional value: `write` for `Some`, `null` for `None` (serde's `Option`).
pub fn optional<T>(out: &mut Vec<u8>, value: Option<T>, write: impl FnOnce(&mut Vec<u8>, T)) {
    match value {
        Some(value) => write(out, value),
        None => out.extend_from_slice(b"null"),
    }
}

pub fn bool(out: &mut Vec<u8>, value: bool) {
    out.extend_from_slice(if value { b"true" } else { b"false" });
}

pub fn u64(out: &mut Vec<u8>, value: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut n = value;
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// A timestamp as jiff's serde support writes it (its `Display`: RFC 3339 in UTC, `Z`, and only
/// the fractional digits needed). Years 1970 to 9999 are written here, which covers every instant
/// presenced stores; others go through jiff.
pub fn timestamp(out: &mut Vec<u8>, at: Timestamp) {
    let seconds = at.as_second();
    let nanos = at.subsec_nanosecond();
    // 1970-01-01 to 9999-12-31T23:59:59, with non-negative nanoseconds.
    if !(0..253_402_300_800).contains(&seconds) || nanos < 0 {
        let _ = serde_json::to_writer(&mut *out, &at);
        return;
    }
    let days = seconds / 86_400;
    let of_day = seconds % 86_400;
    let (year, month, day) = civil_from_days(days);
    let mut text = [0u8; 32];
    let mut put = |at: usize, value: i64, width: usize| {
        let mut v = value;
        for i in (0..width).rev() {
            text[at + i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(1, year, 4);
    put(6, month, 2);
    put(9, day, 2);
    put(12, of_day / 3600, 2);
    put(15, of_day / 60 % 60, 2);
    put(18, of_day % 60, 2);
    let mut end = 20;
    if nanos != 0 {
        let mut fraction = nanos as i64;
        let mut width = 9;
        while fraction % 10 == 0 {
            fraction /= 10;
            width -= 1;
        }
        put(21, fraction, width);
        text[20] = b'.';
        end = 21 + width;
    }
    text[0] = b'"';
    text[5] = b'-';
    text[8] = b'-';
    text[11] = b'T';
    text[14] = b':';
    text[17] = b':';
    text[end] = b'Z';
    text[end + 1] = b'"';
    out.extend_from_slice(&text[..end + 2]);
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's
/// `civil_from_days`, for non-negative counts).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ours(write: impl FnOnce(&mut Vec<u8>)) -> String {
        let mut out = Vec::new();
        write(&mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn timestamps_match_jiff_at_the_edges() {
        for (seconds, nanos) in [
            (0, 0),
            (0, 1),
            (59, 999_999_999),
            (951_782_400, 0),             // 2000-02-29
            (1_709_164_800, 500_000_000), // 2024-02-29
            (1_800_000_000, 120_000),
            (4_107_542_400, 10),            // 2100-03-01
            (253_402_207_199, 999_999_999), // near jiff's latest instant
            (253_402_207_200, 0),           // jiff's latest instant, 9999-12-30T22:00:00Z
            (-1, 0),
            (-62_135_596_800, 0), // 0001-01-01
            (-1, 999_999_999),
        ] {
            let at = Timestamp::new(seconds, nanos).unwrap();
            assert_eq!(ours(|o| timestamp(o, at)), serde_json::to_string(&at).unwrap(), "{at}");
        }
    }

    proptest! {
        #[test]
        fn timestamps_match_jiff(seconds in -100_000_000_000i64..=253_402_207_200, nanos in 0i32..1_000_000_000, round in 0u32..4) {
            // Round some to whole milli-, micro- or seconds: trailing zeros are trimmed.
            let nanos = match round { 0 => nanos, 1 => nanos / 1_000_000 * 1_000_000, 2 => nanos / 1_000 * 1_000, _ => 0 };
            let at = Timestamp::new(seconds, nanos).unwrap();
            prop_assert_eq!(ours(|o| timestamp(o, at)), serde_json::to_string(&at).unwrap());
        }

        #[test]
        fn strings_match_serde(text in ".*", control in proptest::char::range('\u{0}', '\u{1f}')) {
            let text = format!("{text}{control}\"\\/é😀");
            prop_assert_eq!(ours(|o| string(o, &text)), serde_json::to_string(&text).unwrap());
            prop_assert_eq!(ours(|o| string(o, "plain")), "\"plain\"");
        }

        #[test]
        fn numbers_match_serde(n in any::<u64>()) {
            prop_assert_eq!(ours(|o| u64(o, n)), n.to_string());
        }
    }

    #[test]
    fn small_values_match_serde() {
        for n in [0u64, 9, 10, u64::MAX] {
            assert_eq!(ours(|o| u64(o, n)), n.to_string());
        }
        assert_eq!(ours(|o| bool(o, true)), "true");
        assert_eq!(ours(|o| optional(o, None::<&str>, string)), "null");
        assert_eq!(ours(|o| optional(o, Some("x"), string)), "\"x\"");
    }
}
