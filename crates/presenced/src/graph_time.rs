//! Date-times as Graph writes them: UTC with seven fractional digits (100 ns ticks) and `Z`,
//! e.g. `2026-12-04T21:53:51.6977450Z`, in every response and notification.
use jiff::Timestamp;

/// `2026-12-04T21:53:51.6977450Z`: finer precision is cut, never rounded up into the next tick.
pub fn format(at: Timestamp) -> String {
    at.strftime("%Y-%m-%dT%H:%M:%S%.7fZ").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seven_digits_always() {
        let at = |s: &str| s.parse::<Timestamp>().unwrap();
        assert_eq!(
            format(at("2026-12-04T21:53:51.697745Z")),
            "2026-12-04T21:53:51.6977450Z"
        );
        assert_eq!(format(at("2026-12-04T21:53:51Z")), "2026-12-04T21:53:51.0000000Z");
        assert_eq!(
            format(at("2026-12-04T21:53:51.123456789Z")),
            "2026-12-04T21:53:51.1234567Z"
        );
        assert_eq!(
            format(at("2026-12-04T23:53:51.5+02:00")),
            "2026-12-04T21:53:51.5000000Z"
        );
    }
}
