//! The one place that reads the wall clock. Everything else receives `now` as an argument or a
//! [`Clock`], which keeps the core pure and lets tests pin or step time (clippy's
//! `disallowed-methods` enforces this).
use jiff::{SignedDuration, Timestamp};
use std::sync::{Arc, Mutex};

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

/// The clock the services, workers and store read: the system's, or a manual one that tests move
/// by hand, so timer behaviour is tested without sleeping.
#[derive(Debug, Clone, Default)]
pub struct Clock(Option<Arc<Mutex<Timestamp>>>);

impl Clock {
    pub fn system() -> Self {
        Clock(None)
    }

    /// A clock that reads `start` until moved with [`Clock::advance`] or [`Clock::set`].
    pub fn manual(start: Timestamp) -> Self {
        Clock(Some(Arc::new(Mutex::new(start))))
    }

    pub fn now(&self) -> Timestamp {
        match &self.0 {
            None => SystemClock.now(),
            Some(t) => *t.lock().unwrap_or_else(|e| e.into_inner()),
        }
    }

    pub fn is_manual(&self) -> bool {
        self.0.is_some()
    }

    /// Move a manual clock forward; a system clock ignores it.
    pub fn advance(&self, by: SignedDuration) {
        if let Some(t) = &self.0 {
            let mut t = t.lock().unwrap_or_else(|e| e.into_inner());
            *t += by;
        }
    }

    pub fn set(&self, to: Timestamp) {
        if let Some(t) = &self.0 {
            *t.lock().unwrap_or_else(|e| e.into_inner()) = to;
        }
    }
}
