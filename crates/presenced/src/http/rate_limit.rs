//! Graph's presence throttling: a request budget per application per tenant per window
//! (default 1,500 requests in 30 s), answered with `429`, `Retry-After` and Graph's error body.
//!
//! A fixed window per (tenant, application) is what Graph describes and what clients' retry
//! logic expects; `Retry-After` is the time until the window turns over.
use jiff::{SignedDuration, Timestamp};
use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Mutex;

const SHARDS: usize = 16;
/// Entries idle for this many windows are dropped, so the table only holds active callers.
const IDLE_WINDOWS: i32 = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub requests: u32,
    pub window: SignedDuration,
}

impl RateLimit {
    /// `1500/30s`, `100/1m`, or `off`.
    pub fn parse(text: &str) -> Result<Option<RateLimit>, String> {
        let text = text.trim();
        if text.eq_ignore_ascii_case("off") {
            return Ok(None);
        }
        let (count, window) = text
            .split_once('/')
            .ok_or_else(|| format!("{text:?}: expected REQUESTS/WINDOW like 1500/30s, or off"))?;
        let requests: u32 = count
            .trim()
            .parse()
            .map_err(|_| format!("{count:?} is not a request count"))?;
        let window = presence_core::duration::parse_config_duration(window).map_err(|e| e.to_string())?;
        if requests == 0 || window <= SignedDuration::ZERO {
            return Err("the request count and the window must be positive".into());
        }
        Ok(Some(RateLimit { requests, window }))
    }
}

/// Hash of (tenant, application) → its current window. Keyed by a keyed 64-bit hash rather than
/// owned strings so the per-request check allocates nothing; a collision would need a forged pair
/// under a per-process random key.
type Windows = HashMap<u64, Window>;

struct Window {
    started: Timestamp,
    used: u32,
}

pub struct RateLimiter {
    limit: RateLimit,
    hasher: RandomState,
    shards: Box<[Mutex<Windows>]>,
}

impl RateLimiter {
    pub fn new(limit: RateLimit) -> Self {
        Self {
            limit,
            hasher: RandomState::new(),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    /// Count one request; `Err(retry_after_seconds)` when the budget of this window is spent.
    pub fn check(&self, tenant: &str, app: &str, now: Timestamp) -> Result<(), u64> {
        let key = self.hasher.hash_one((tenant, app));
        let shard = &self.shards[key as usize % SHARDS];
        let mut windows = shard.lock().unwrap_or_else(|e| e.into_inner());
        if windows.len() > 10_000 {
            let horizon = self.limit.window * IDLE_WINDOWS;
            windows.retain(|_, w| now.duration_since(w.started) < horizon);
        }
        let window = windows.entry(key).or_insert(Window { started: now, used: 0 });
        if now.duration_since(window.started) >= self.limit.window {
            *window = Window { started: now, used: 0 };
        }
        if window.used >= self.limit.requests {
            let left = (window.started + self.limit.window).duration_since(now);
            return Err(u64::try_from(left.as_secs()).unwrap_or(0) + 1);
        }
        window.used += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_limits() {
        assert_eq!(RateLimit::parse("off"), Ok(None));
        assert_eq!(
            RateLimit::parse("1500/30s"),
            Ok(Some(RateLimit {
                requests: 1500,
                window: SignedDuration::from_secs(30)
            }))
        );
        assert!(RateLimit::parse("0/30s").is_err());
        assert!(RateLimit::parse("lots").is_err());
        assert!(RateLimit::parse("10/soon").is_err());
    }

    #[test]
    fn budget_per_app_per_tenant_and_window_reset() {
        let limiter = RateLimiter::new(RateLimit {
            requests: 3,
            window: SignedDuration::from_secs(30),
        });
        let t0: Timestamp = "2026-11-27T08:00:00Z".parse().unwrap();
        for _ in 0..3 {
            assert_eq!(limiter.check("t", "a", t0), Ok(()));
        }
        assert_eq!(limiter.check("t", "a", t0 + SignedDuration::from_secs(10)), Err(21));
        assert_eq!(limiter.check("t", "b", t0), Ok(()), "another app has its own budget");
        assert_eq!(limiter.check("u", "a", t0), Ok(()), "another tenant too");
        assert_eq!(
            limiter.check("t", "a", t0 + SignedDuration::from_secs(30)),
            Ok(()),
            "a new window"
        );
    }
}
