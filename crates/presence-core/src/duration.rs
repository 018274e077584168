//! Durations as they arrive on the wire and in configuration.
//!
//! Graph's `expirationDuration` is nominally ISO 8601, but the official SDKs disagree on what
//! that means: kiota-python sends `str(timedelta)` (`"1:00:00"`, `"1 day, 0:05:00"`), kiota-php
//! always writes zero calendar fields (`"P0Y0M0DT1H0M0S"`), and a .NET `TimeSpan` rendered as text
//! looks like `"1.00:05:00"`. [`parse_wire_duration`] accepts all of them so every SDK works
//! unchanged. [`parse_config_duration`] adds short forms (`5m`, `1h30m`) for humans writing
//! configuration, and [`format_iso`] renders durations back as ISO 8601 for messages and dumps.
//!
//! ISO 8601 is read by jiff's Temporal parser ([`SpanParser`]); the clock and short forms, which
//! jiff does not know (or reads more loosely), are read here.

use std::borrow::Cow;
use std::fmt::Write as _;

use jiff::fmt::temporal::SpanParser;
use jiff::{SignedDuration, Span, SpanRelativeTo};

const NANOS_PER_SEC: u128 = 1_000_000_000;
const NANOS_PER_MIN: u128 = 60 * NANOS_PER_SEC;
const NANOS_PER_HOUR: u128 = 60 * NANOS_PER_MIN;
const NANOS_PER_DAY: u128 = 24 * NANOS_PER_HOUR;
const NANOS_PER_MILLI: u128 = 1_000_000;

/// Nothing in presence needs longer than this; the cap keeps every later `Timestamp + duration`
/// far away from jiff's range limits, so callers can add without checking.
const MAX_DAYS: u128 = 36_525;
const MAX_NANOS: u128 = MAX_DAYS * NANOS_PER_DAY;

/// Inputs are echoed into HTTP 400 bodies; a cap keeps a hostile megabyte string out of them.
const MAX_QUOTED_CHARS: usize = 64;

const WIRE_FORMS: &str = "expected ISO 8601 like PT5M or a clock duration like 0:05:00";
const CONFIG_FORMS: &str =
    "expected ISO 8601 like PT5M, a clock duration like 0:05:00, or a short form like 5m or 1h30m";

/// Why a duration was rejected. The `Display` text is meant for API clients and operators.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// The text was empty or only whitespace.
    #[error("duration is empty; expected ISO 8601 like PT5M")]
    Empty,
    /// The text was well formed but denotes a negative duration.
    #[error("duration must not be negative")]
    Negative,
    /// Non-zero years or months: their length depends on the calendar, so they have no fixed size.
    #[error(
        "duration must not contain years or months, whose length varies; \
         use weeks, days, hours, minutes or seconds instead (e.g. P30D)"
    )]
    Calendar,
    /// The text is not any accepted form; the payload quotes the input and says what was wrong.
    #[error("malformed duration {0}")]
    Malformed(String),
    /// The duration exceeds the supported maximum.
    #[error("duration is too large; the maximum is 36525 days (100 years)")]
    TooLarge,
}

/// Parse an `expirationDuration` as real Graph clients send it. Returns a strictly non-negative duration.
///
/// Accepts ISO 8601 (`PT5M`, `P1DT2H`, `PT0.5S`, `PT1,5S`, `P1W`, PHP's `P0Y0M1DT0H5M0S`, and a
/// fraction on the smallest unit given, as in `PT7.5M` or `PT1.5H`), Python's `str(timedelta)`
/// (`0:05:00`, `1 day, 0:05:00`, `0:00:00.500000`) and .NET `TimeSpan` text (`01:00:00`,
/// `1.02:00:00`, `00:00:00.5000000`). Surrounding whitespace is ignored and ISO designators are
/// case-insensitive. Fractional digits beyond nanoseconds are truncated rather than rejected,
/// since a client computing seconds as a float can emit them.
pub fn parse_wire_duration(text: &str) -> Result<SignedDuration, DurationError> {
    parse(text, false)
}

/// Parse a configuration/CLI duration: everything [`parse_wire_duration`] takes, plus humane forms
/// like `2s`, `500ms`, `5m`, `1h`, `1h30m`, `2d` (units ms, s, m, h, d; combinable; integers only).
///
/// Each unit may appear at most once, in any order, optionally separated by whitespace
/// (`1h 30m`). Units are lowercase only: `5M` is rejected so that nobody gets five minutes when
/// they meant five months.
pub fn parse_config_duration(text: &str) -> Result<SignedDuration, DurationError> {
    parse(text, true)
}

/// Render a duration as ISO 8601 (e.g. `PT5M`, `PT1H30M`, `P1DT2H`, `PT0.5S`) — used in docs/errors/config dumps.
///
/// Whole days use `D` (a day is always 24 hours here); zero is `PT0S`; a negative duration gets
/// a leading `-` (`-PT5M`). The output is always accepted back by [`parse_wire_duration`] when
/// non-negative and within range.
pub fn format_iso(d: SignedDuration) -> String {
    let nanos = d.as_nanos();
    let abs = nanos.unsigned_abs();
    let days = abs / NANOS_PER_DAY;
    let time_of_day = abs % NANOS_PER_DAY;
    let hours = time_of_day / NANOS_PER_HOUR;
    let minutes = abs % NANOS_PER_HOUR / NANOS_PER_MIN;
    let seconds = abs % NANOS_PER_MIN / NANOS_PER_SEC;
    let subsec = abs % NANOS_PER_SEC;

    let mut out = String::new();
    if nanos < 0 {
        out.push('-');
    }
    out.push('P');
    // Writing to a String cannot fail, so the fmt::Result is safe to ignore.
    if days > 0 {
        let _ = write!(out, "{days}D");
    }
    // "P1D" rather than "P1DT0S": the time part appears only when there is something to say.
    if days > 0 && time_of_day == 0 {
        return out;
    }
    out.push('T');
    if hours > 0 {
        let _ = write!(out, "{hours}H");
    }
    if minutes > 0 {
        let _ = write!(out, "{minutes}M");
    }
    if seconds > 0 || subsec > 0 || abs == 0 {
        let _ = write!(out, "{seconds}");
        if subsec > 0 {
            let digits = format!("{subsec:09}");
            let _ = write!(out, ".{}", digits.trim_end_matches('0'));
        }
        out.push('S');
    }
    out
}

/// The outcome of a syntactically valid parse, before the semantic checks. Overflow and calendar
/// fields are recorded rather than returned early so that a syntax error anywhere in the input
/// is reported as such, and so the checks apply in one fixed order.
struct Parsed {
    /// `None` once the running total overflowed `u128`.
    nanos: Option<u128>,
    calendar: bool,
}

impl Parsed {
    fn new() -> Self {
        Parsed {
            nanos: Some(0),
            calendar: false,
        }
    }

    fn add(&mut self, count: Option<u128>, unit: u128) {
        self.nanos = self
            .nanos
            .zip(count)
            .and_then(|(total, count)| total.checked_add(count.checked_mul(unit)?));
    }
}

fn parse(text: &str, humane: bool) -> Result<SignedDuration, DurationError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(DurationError::Empty);
    }
    let forms = if humane { CONFIG_FORMS } else { WIRE_FORMS };
    let malformed = |why: String| DurationError::Malformed(format!("{}: {why}", quote(text)));

    let (negative, body) = match text.as_bytes()[0] {
        b'-' => (true, &text[1..]),
        b'+' => (false, &text[1..]),
        _ => (false, text),
    };
    let mut c = Cursor { text: body, pos: 0 };
    let parsed = match c.peek() {
        None => return Err(malformed(format!("nothing follows the sign; {forms}"))),
        Some(b'P' | b'p') => parse_iso(body),
        Some(_) if body.contains(':') => parse_clock(&mut c),
        Some(_) if humane => parse_humane(&mut c),
        Some(_) => Err(forms.to_owned()),
    }
    .map_err(malformed)?;

    // Negative first: it is the most fundamental complaint, and Python's "-1 day, 23:55:00"
    // is only recognisable as negative by its sign.
    if negative {
        return Err(DurationError::Negative);
    }
    if parsed.calendar {
        return Err(DurationError::Calendar);
    }
    let nanos = parsed
        .nanos
        .filter(|n| *n <= MAX_NANOS)
        .ok_or(DurationError::TooLarge)?;
    // Both conversions are infallible under MAX_NANOS; mapping to TooLarge keeps this panic-free.
    let secs = i64::try_from(nanos / NANOS_PER_SEC).map_err(|_| DurationError::TooLarge)?;
    let subsec = i32::try_from(nanos % NANOS_PER_SEC).map_err(|_| DurationError::TooLarge)?;
    Ok(SignedDuration::new(secs, subsec))
}

/// ISO 8601 durations (`P…`), as Temporal reads them: `[nY][nM][nW][nD][T[nH][nM][nS]]`, each at
/// most once and in that order, a fraction (`.` or `,`) only on the last unit and only from hours
/// down, designators in either case.
static ISO: SpanParser = SpanParser::new();

/// An ISO duration, `P` included. Years and months have no fixed length, so only their presence is
/// recorded (zero ones, as PHP always writes them, are fine); days and weeks are 24 hours and 7
/// days here.
fn parse_iso(text: &str) -> Result<Parsed, String> {
    let text = truncate_fractions(text);
    let span = match ISO.parse_span(&*text) {
        Ok(span) => span,
        // jiff refuses a number too large for its span in several ways; the same text with every
        // number made small reads, so only a size was wrong.
        Err(_) if ISO.parse_span(shrink_numbers(&text)).is_ok() => {
            return Ok(Parsed {
                nanos: None,
                calendar: false,
            })
        }
        Err(e) => {
            return Err(format!(
                "{e}; hours, minutes and seconds follow a 'T', as in PT1H or PT5M"
            ))
        }
    };
    if span.get_years() != 0 || span.get_months() != 0 {
        return Ok(Parsed {
            nanos: Some(0),
            calendar: true,
        });
    }
    Ok(Parsed {
        nanos: span_nanos(span),
        calendar: false,
    })
}

/// The length of a span without years or months, `None` if it does not fit.
fn span_nanos(span: Span) -> Option<u128> {
    let duration = span.to_duration(SpanRelativeTo::days_are_24_hours()).ok()?;
    u128::try_from(duration.as_nanos()).ok()
}

/// `text` with every fraction cut to nine digits (nanoseconds), which is all jiff reads.
fn truncate_fractions(text: &str) -> Cow<'_, str> {
    let bytes = text.as_bytes();
    let mut out = String::new();
    let (mut copied, mut at) = (0, 0);
    while at < bytes.len() {
        if matches!(bytes[at], b'.' | b',') {
            let digits = bytes[at + 1..].iter().take_while(|b| b.is_ascii_digit()).count();
            if digits > 9 {
                out.push_str(&text[copied..at + 10]);
                copied = at + 1 + digits;
            }
            at += 1 + digits;
        } else {
            at += 1;
        }
    }
    if copied == 0 {
        return Cow::Borrowed(text);
    }
    out.push_str(&text[copied..]);
    Cow::Owned(out)
}

/// `text` with every run of digits replaced by `1`.
fn shrink_numbers(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_number = false;
    for ch in text.chars() {
        if ch.is_ascii_digit() {
            if !in_number {
                out.push('1');
            }
            in_number = true;
        } else {
            out.push(ch);
            in_number = false;
        }
    }
    out
}

/// Python `str(timedelta)` (`[D day[s], ]H:MM:SS[.ffffff]`) and .NET `TimeSpan` text
/// (`[D.]HH:MM:SS[.fffffff]`). They differ only in how the day count is attached.
fn parse_clock(c: &mut Cursor<'_>) -> Result<Parsed, String> {
    const SHAPE: &str = "expected H:MM:SS, optionally with days as in \"1 day, 0:05:00\" or \"1.00:05:00\"";
    let first = c.digits().ok_or_else(|| SHAPE.to_owned())?;
    let mut days = None;
    let hours = match c.peek() {
        Some(b'.') => {
            c.bump();
            days = Some(first);
            c.digits().ok_or_else(|| SHAPE.to_owned())?
        }
        Some(b' ' | b'd' | b'D') => {
            c.skip_spaces();
            if !c.eat_word_ignore_case("day") {
                return Err(SHAPE.to_owned());
            }
            c.eat_ignore_case(b'S');
            c.eat_ignore_case(b',');
            c.skip_spaces();
            days = Some(first);
            c.digits().ok_or_else(|| SHAPE.to_owned())?
        }
        _ => first,
    };
    if !c.eat_ignore_case(b':') {
        return Err(SHAPE.to_owned());
    }
    let minutes = c.two_digits().ok_or_else(|| SHAPE.to_owned())?;
    if !c.eat_ignore_case(b':') {
        return Err(SHAPE.to_owned());
    }
    let seconds = c.two_digits().ok_or_else(|| SHAPE.to_owned())?;
    let fraction = if c.peek() == Some(b'.') {
        Some(c.fraction()?)
    } else {
        None
    };
    if !c.at_end() {
        return Err(format!("unexpected {} after the seconds", c.describe_next()));
    }

    // Neither Python nor .NET ever prints 24 or more hours (they roll into days), so anything
    // larger is a typo or a different format, not a value to reinterpret.
    if hours.len > 2 || hours.whole.is_none_or(|h| h > 23) {
        return Err("hours must be between 0 and 23".to_owned());
    }
    if minutes > 59 {
        return Err("minutes must be between 00 and 59".to_owned());
    }
    if seconds > 59 {
        return Err("seconds must be between 00 and 59".to_owned());
    }

    let mut parsed = Parsed::new();
    if let Some(days) = days {
        parsed.add(days.whole, NANOS_PER_DAY);
    }
    parsed.add(hours.whole, NANOS_PER_HOUR);
    parsed.add(Some(u128::from(minutes)), NANOS_PER_MIN);
    parsed.add(Some(u128::from(seconds)), NANOS_PER_SEC);
    if let Some(nanos) = fraction {
        parsed.add(Some(u128::from(nanos)), 1);
    }
    Ok(parsed)
}

/// Short forms for configuration: `1h30m`, `500ms`, `2d`.
fn parse_humane(c: &mut Cursor<'_>) -> Result<Parsed, String> {
    const UNITS: [(&str, u128); 5] = [
        ("d", NANOS_PER_DAY),
        ("h", NANOS_PER_HOUR),
        ("m", NANOS_PER_MIN),
        ("s", NANOS_PER_SEC),
        ("ms", NANOS_PER_MILLI),
    ];
    let mut parsed = Parsed::new();
    let mut seen = [false; UNITS.len()];
    loop {
        let Some(number) = c.digits() else {
            // Failing on the very first character means the text is not a short form at all,
            // so listing every accepted form helps more than pointing at that character.
            return Err(if c.pos == 0 {
                CONFIG_FORMS.to_owned()
            } else {
                format!("expected a number but found {}", c.describe_next())
            });
        };
        if matches!(c.peek(), Some(b'.' | b',')) {
            return Err("short forms take whole numbers only; write 1500ms rather than 1.5s".to_owned());
        }
        let unit = c.letters();
        let Some(index) = UNITS.iter().position(|(u, _)| *u == unit) else {
            return Err(if unit.is_empty() {
                "a number needs a unit (ms, s, m, h or d), as in 30s".to_owned()
            } else {
                format!("unknown unit {unit:?}; use ms, s, m, h or d (lowercase)")
            });
        };
        if seen[index] {
            return Err(format!("unit {unit:?} appears more than once"));
        }
        seen[index] = true;
        parsed.add(number.whole, UNITS[index].1);
        c.skip_spaces();
        if c.at_end() {
            return Ok(parsed);
        }
    }
}

/// An integer as written: `whole` is `None` if it overflowed, `len` is its digit count.
struct Digits {
    whole: Option<u128>,
    len: usize,
}

/// A byte cursor over the input. Only ASCII bytes are ever consumed, so `pos` always sits on a
/// char boundary and slicing `text` at it cannot panic, whatever the input.
struct Cursor<'a> {
    text: &'a str,
    pos: usize,
}

impl Cursor<'_> {
    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.pos).copied()
    }

    fn bump(&mut self) {
        self.pos += 1;
    }

    fn at_end(&self) -> bool {
        self.pos >= self.text.len()
    }

    fn eat_ignore_case(&mut self, expected: u8) -> bool {
        let hit = self.peek().is_some_and(|b| b.eq_ignore_ascii_case(&expected));
        if hit {
            self.bump();
        }
        hit
    }

    fn eat_word_ignore_case(&mut self, word: &str) -> bool {
        let hit = self
            .text
            .as_bytes()
            .get(self.pos..self.pos + word.len())
            .is_some_and(|s| s.eq_ignore_ascii_case(word.as_bytes()));
        if hit {
            self.pos += word.len();
        }
        hit
    }

    fn skip_spaces(&mut self) {
        while self.peek().is_some_and(|b| b.is_ascii_whitespace()) {
            self.bump();
        }
    }

    fn digits(&mut self) -> Option<Digits> {
        let mut whole = Some(0u128);
        let mut len = 0;
        while let Some(b) = self.peek().filter(u8::is_ascii_digit) {
            whole = whole.and_then(|w| w.checked_mul(10)?.checked_add(u128::from(b - b'0')));
            len += 1;
            self.bump();
        }
        (len > 0).then_some(Digits { whole, len })
    }

    fn two_digits(&mut self) -> Option<u8> {
        let bytes = self.text.as_bytes().get(self.pos..self.pos + 2)?;
        if !bytes.iter().all(u8::is_ascii_digit) {
            return None;
        }
        self.pos += 2;
        Some((bytes[0] - b'0') * 10 + (bytes[1] - b'0'))
    }

    /// After a `.` or `,`: at least one digit, scaled to nanoseconds. Digits past the ninth are
    /// validated but dropped, as sub-nanosecond precision has nowhere to go.
    fn fraction(&mut self) -> Result<u32, String> {
        self.bump();
        let mut nanos = 0u32;
        let mut len = 0;
        while let Some(b) = self.peek().filter(u8::is_ascii_digit) {
            if len < 9 {
                nanos = nanos * 10 + u32::from(b - b'0');
            }
            len += 1;
            self.bump();
        }
        if len == 0 {
            return Err("a decimal separator must be followed by digits".to_owned());
        }
        for _ in len..9 {
            nanos *= 10;
        }
        Ok(nanos)
    }

    fn letters(&mut self) -> &str {
        let start = self.pos;
        while self.peek().is_some_and(|b| b.is_ascii_alphabetic()) {
            self.bump();
        }
        &self.text[start..self.pos]
    }

    fn describe_next(&self) -> String {
        match self.text[self.pos..].chars().next() {
            Some(ch) => format!("{ch:?}"),
            None => "end of input".to_owned(),
        }
    }
}

/// Quote user input for an error message: escaped (no control characters leak into logs or
/// bodies) and shortened.
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

    fn hms(h: i64, m: i64, s: i64) -> SignedDuration {
        SignedDuration::from_secs(h * 3600 + m * 60 + s)
    }

    fn day() -> SignedDuration {
        hms(24, 0, 0)
    }

    fn wire(text: &str) -> SignedDuration {
        parse_wire_duration(text).unwrap_or_else(|e| panic!("{text:?} should parse: {e}"))
    }

    fn config(text: &str) -> SignedDuration {
        parse_config_duration(text).unwrap_or_else(|e| panic!("{text:?} should parse: {e}"))
    }

    fn is_malformed(r: Result<SignedDuration, DurationError>) -> bool {
        matches!(r, Err(DurationError::Malformed(_)))
    }

    #[test]
    fn iso_basic_forms() {
        assert_eq!(wire("PT5M"), hms(0, 5, 0));
        assert_eq!(wire("PT1H"), hms(1, 0, 0));
        assert_eq!(wire("P1DT2H"), hms(26, 0, 0));
        assert_eq!(wire("PT1H30M15S"), hms(1, 30, 15));
        assert_eq!(wire("P2D"), day() * 2);
        assert_eq!(wire("P1W"), day() * 7);
        assert_eq!(wire("P1DT5M"), hms(24, 5, 0));
        assert_eq!(wire("PT90M"), hms(1, 30, 0));
        assert_eq!(wire("PT0S"), SignedDuration::ZERO);
    }

    #[test]
    fn iso_fractions() {
        assert_eq!(wire("PT0.5S"), SignedDuration::from_millis(500));
        assert_eq!(wire("PT1.25S"), SignedDuration::from_millis(1250));
        assert_eq!(wire("PT1,5S"), SignedDuration::from_millis(1500));
        assert_eq!(wire("PT0.000000001S"), SignedDuration::from_nanos(1));
        assert_eq!(wire("PT1M0.123456789S"), SignedDuration::new(60, 123_456_789));
        // Past nanoseconds the digits are dropped, not rounded.
        assert_eq!(wire("PT0.30000000000000004S"), SignedDuration::from_millis(300));
    }

    /// ISO 8601 allows a fraction on the smallest unit given, not only on seconds; the Kiota SDK
    /// sends `PT7.5M` for seven and a half minutes.
    #[test]
    fn iso_fraction_on_the_smallest_unit() {
        assert_eq!(wire("PT7.5M"), hms(0, 7, 30));
        assert_eq!(wire("PT7,5M"), hms(0, 7, 30));
        assert_eq!(wire("PT0.5M"), hms(0, 0, 30));
        assert_eq!(wire("PT1.5H"), hms(1, 30, 0));
        assert_eq!(wire("PT1H7.5M"), hms(1, 7, 30));
        assert_eq!(wire("P1DT0.25H"), hms(24, 15, 0));
        assert_eq!(wire("pt7.5m"), hms(0, 7, 30));
        assert_eq!(wire("PT0.001M"), SignedDuration::from_millis(60));
        // Past nanoseconds the digits are dropped, whatever the unit.
        assert_eq!(wire("PT0.0000000001H"), SignedDuration::ZERO);
        assert_eq!(config("PT7.5M"), hms(0, 7, 30));
    }

    #[test]
    fn iso_is_case_insensitive_and_trimmed() {
        assert_eq!(wire("pt5m"), hms(0, 5, 0));
        assert_eq!(wire("p1dt2h"), hms(26, 0, 0));
        assert_eq!(wire("  PT5M\n"), hms(0, 5, 0));
        assert_eq!(wire("+PT5M"), hms(0, 5, 0));
        assert_eq!(wire("p1w"), day() * 7);
    }

    #[test]
    fn php_zero_calendar_fields_are_accepted() {
        assert_eq!(wire("P0Y0M0DT1H0M0S"), hms(1, 0, 0));
        assert_eq!(wire("P0Y0M1DT0H5M0S"), hms(24, 5, 0));
        assert_eq!(wire("P0Y0M0DT0H0M0S"), SignedDuration::ZERO);
    }

    #[test]
    fn calendar_fields_are_rejected() {
        for text in ["P1M", "P1Y", "P0Y1M", "P1Y0M0DT1H", "P1YT5M"] {
            assert_eq!(parse_wire_duration(text), Err(DurationError::Calendar), "{text}");
        }
    }

    #[test]
    fn iso_negative_is_rejected() {
        assert_eq!(parse_wire_duration("-PT5M"), Err(DurationError::Negative));
        assert_eq!(parse_wire_duration("-P1D"), Err(DurationError::Negative));
    }

    #[test]
    fn iso_malformed() {
        for text in [
            "P",
            "PT",
            "P1H",
            "P1S",
            "PT1D",
            "P1DT",
            "PT5",
            "P5",
            "PT5M5H",
            "PT5M5M",
            "P1D1W",
            "PT1.5H30M",
            "PT0.5M30S",
            "P1.5D",
            "P1.5W",
            "PT.5S",
            "PT1.S",
            "PT 5M",
            "PT5M garbage",
            "PT5X",
            "P-1D",
            "5M",
            "garbage",
            "-",
            "+",
            "+-PT5M",
            "PT5m5s5",
            "1h",
        ] {
            assert!(is_malformed(parse_wire_duration(text)), "{text:?}");
        }
    }

    #[test]
    fn empty_is_its_own_error() {
        assert_eq!(parse_wire_duration(""), Err(DurationError::Empty));
        assert_eq!(parse_wire_duration("  \t"), Err(DurationError::Empty));
        assert_eq!(parse_config_duration(""), Err(DurationError::Empty));
    }

    #[test]
    fn python_timedelta_forms() {
        assert_eq!(wire("0:05:00"), hms(0, 5, 0));
        assert_eq!(wire("1:00:00"), hms(1, 0, 0));
        assert_eq!(wire("8:00:00"), hms(8, 0, 0));
        assert_eq!(wire("0:00:00.500000"), SignedDuration::from_millis(500));
        assert_eq!(wire("1 day, 0:05:00"), hms(24, 5, 0));
        assert_eq!(wire("2 days, 1:00:00"), hms(49, 0, 0));
        assert_eq!(wire("23:59:59.999999"), SignedDuration::new(86_399, 999_999_000));
    }

    #[test]
    fn python_negative_timedelta_is_rejected() {
        assert_eq!(parse_wire_duration("-1 day, 23:55:00"), Err(DurationError::Negative));
        assert_eq!(parse_wire_duration("-2 days, 0:00:00"), Err(DurationError::Negative));
    }

    #[test]
    fn dotnet_timespan_forms() {
        assert_eq!(wire("01:00:00"), hms(1, 0, 0));
        assert_eq!(wire("1.02:00:00"), hms(26, 0, 0));
        assert_eq!(wire("1.00:05:00"), hms(24, 5, 0));
        assert_eq!(wire("00:00:00.5000000"), SignedDuration::from_millis(500));
        assert_eq!(wire("1.02:00:00.25"), SignedDuration::new(26 * 3600, 250_000_000));
        assert_eq!(parse_wire_duration("-00:05:00"), Err(DurationError::Negative));
        assert_eq!(parse_wire_duration("-1.02:00:00"), Err(DurationError::Negative));
    }

    #[test]
    fn clock_ranges_are_checked() {
        for text in [
            "24:00:00",
            "1.24:00:00",
            "100:00:00",
            "0:60:00",
            "0:00:60",
            "1 day, 24:00:00",
            "0:5:00",
            "0:05",
            "0:05:00.",
            "0:05:00,5",
            "1 week, 0:05:00",
            "1.:00:00",
            ":05:00",
            "0:05:00:00",
        ] {
            assert!(is_malformed(parse_wire_duration(text)), "{text:?}");
        }
    }

    #[test]
    fn overflow_is_too_large_not_a_panic() {
        for text in [
            "P36526D",
            "PT876601H",
            "P99999999999999999999999999999999999999999999999999D",
            "PT340282366920938463463374607431768211455S",
            "99999999999999999999999999999999999999999.00:00:00",
            "36526 days, 0:00:00",
        ] {
            assert_eq!(parse_wire_duration(text), Err(DurationError::TooLarge), "{text}");
        }
        assert_eq!(
            parse_config_duration("99999999999999999999999999999999999999999d"),
            Err(DurationError::TooLarge)
        );
        // The cap itself is allowed.
        assert_eq!(wire("P36525D"), day() * 36_525);
    }

    #[test]
    fn config_accepts_wire_forms() {
        assert_eq!(config("PT5M"), hms(0, 5, 0));
        assert_eq!(config("1 day, 0:05:00"), hms(24, 5, 0));
        assert_eq!(config("1.02:00:00"), hms(26, 0, 0));
    }

    #[test]
    fn config_humane_forms() {
        assert_eq!(config("2s"), hms(0, 0, 2));
        assert_eq!(config("500ms"), SignedDuration::from_millis(500));
        assert_eq!(config("5m"), hms(0, 5, 0));
        assert_eq!(config("1h"), hms(1, 0, 0));
        assert_eq!(config("1h30m"), hms(1, 30, 0));
        assert_eq!(config("2d"), day() * 2);
        assert_eq!(config("1d12h"), hms(36, 0, 0));
        assert_eq!(config("1h 30m"), hms(1, 30, 0));
        assert_eq!(config("1m30s500ms"), SignedDuration::from_millis(90_500));
        assert_eq!(config("0s"), SignedDuration::ZERO);
        assert_eq!(config(" 90s "), hms(0, 1, 30));
    }

    #[test]
    fn config_humane_rejections() {
        for text in [
            "1.5s", "1,5s", "5", "5M", "5 m", "1h1h", "5mm", "5x", "h", "1h30", "1w", "5min", "1h,30m",
        ] {
            assert!(is_malformed(parse_config_duration(text)), "{text:?}");
        }
        assert_eq!(parse_config_duration("-5m"), Err(DurationError::Negative));
    }

    #[test]
    fn wire_rejects_humane_forms() {
        for text in ["5m", "2s", "1h30m"] {
            assert!(is_malformed(parse_wire_duration(text)), "{text:?}");
        }
    }

    #[test]
    fn error_messages_quote_and_explain() {
        let msg = parse_wire_duration("P1H").unwrap_err().to_string();
        assert!(msg.contains("\"P1H\""), "{msg}");
        assert!(msg.contains("PT1H"), "{msg}");

        let msg = parse_wire_duration("soon").unwrap_err().to_string();
        assert!(msg.contains("expected ISO 8601 like PT5M"), "{msg}");

        // Huge and hostile inputs are shortened and escaped before they reach a response body.
        let msg = parse_wire_duration(&format!("x\u{1b}{}", "y".repeat(10_000)))
            .unwrap_err()
            .to_string();
        assert!(msg.len() < 300, "{msg}");
        assert!(!msg.contains('\u{1b}'), "{msg}");
    }

    #[test]
    fn non_ascii_input_is_malformed() {
        for text in ["PT5Mé", "PT５M", "é", "P1DTé", "1 dáy, 0:05:00", "5mé"] {
            assert!(is_malformed(parse_config_duration(text)), "{text:?}");
        }
    }

    #[test]
    fn format_iso_examples() {
        assert_eq!(format_iso(SignedDuration::ZERO), "PT0S");
        assert_eq!(format_iso(hms(0, 5, 0)), "PT5M");
        assert_eq!(format_iso(hms(1, 30, 0)), "PT1H30M");
        assert_eq!(format_iso(hms(26, 0, 0)), "P1DT2H");
        assert_eq!(format_iso(day()), "P1D");
        assert_eq!(format_iso(day() * 7), "P7D");
        assert_eq!(format_iso(SignedDuration::from_millis(500)), "PT0.5S");
        assert_eq!(format_iso(SignedDuration::from_nanos(1)), "PT0.000000001S");
        assert_eq!(format_iso(SignedDuration::new(86_401, 250_000_000)), "P1DT1.25S");
        assert_eq!(format_iso(-hms(0, 5, 0)), "-PT5M");
        // The extremes must not overflow.
        assert!(format_iso(SignedDuration::MIN).starts_with("-P"));
        assert!(format_iso(SignedDuration::MAX).starts_with('P'));
    }

    proptest! {
        #[test]
        fn wire_never_panics(text in any::<String>()) {
            let _ = parse_wire_duration(&text);
            let _ = parse_config_duration(&text);
        }

        #[test]
        fn wire_never_panics_on_near_misses(text in "[-+ ]?[PpTt0-9.,:DHMSWYdays ]{0,24}") {
            let _ = parse_wire_duration(&text);
            let _ = parse_config_duration(&text);
        }

        #[test]
        fn format_iso_roundtrips(millis in 0i64..=30 * 24 * 3600 * 1000) {
            let d = SignedDuration::from_millis(millis);
            prop_assert_eq!(parse_wire_duration(&format_iso(d)), Ok(d));
        }
    }
}
