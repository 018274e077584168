//! The one place that reads the wall clock. Everything else receives `now` as an argument, which
//! keeps the core pure and lets tests pin time (clippy's `disallowed-methods` enforces this).
use jiff::Timestamp;

#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl SystemClock {
    #[allow(clippy::disallowed_methods)]
    pub fn now(&self) -> Timestamp {
        Timestamp::now()
    }

    pub fn unix_seconds(&self) -> i64 {
        self.now().as_second()
    }
}
