//! The rules for a subscription's lifetime: clamping a requested expiry, and when to ask for
//! reauthorization.
use jiff::{SignedDuration, Timestamp};

/// Lifetime bounds and lifecycle timing, from configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionPolicy {
    /// Graph: presence subscriptions live at most an hour.
    pub lifetime_max: SignedDuration,
    /// Graph: a shorter request is lengthened to 45 minutes.
    pub lifetime_min: SignedDuration,
    /// Ask for reauthorization this long before expiry (at most a quarter of the lifetime).
    pub reauthorize_before: SignedDuration,
    /// Application tokens may subscribe (Graph allows only delegated tokens).
    pub allow_app_tokens: bool,
    /// Bounded everything: one application in one tenant cannot grow the table without limit...
    pub max_per_app: usize,
    /// ...nor one user of it lock out its colleagues...
    pub max_per_user: usize,
    /// ...nor can anyone make one user's every change fan out without limit.
    pub max_per_watched_user: usize,
}

impl Default for SubscriptionPolicy {
    fn default() -> Self {
        Self {
            lifetime_max: SignedDuration::from_mins(60),
            lifetime_min: SignedDuration::from_mins(45),
            reauthorize_before: SignedDuration::from_mins(15),
            allow_app_tokens: false,
            max_per_app: 1000,
            max_per_user: 100,
            max_per_watched_user: 1000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExpirationError {
    #[error("expirationDateTime is required")]
    Missing,
    #[error("expirationDateTime {0:?} is not an ISO 8601 date-time with an offset (e.g. 2026-11-27T08:00:00Z)")]
    Malformed(String),
    #[error("expirationDateTime {0} is in the past")]
    Past(Timestamp),
}

impl SubscriptionPolicy {
    /// Clamp a requested expiry into `[now + min, now + max]`, as Graph does for presence.
    pub fn expiration(&self, raw: Option<&str>, now: Timestamp) -> Result<Timestamp, ExpirationError> {
        let raw = raw.ok_or(ExpirationError::Missing)?;
        let requested: Timestamp = raw
            .trim()
            .parse()
            .map_err(|_| ExpirationError::Malformed(raw.chars().take(64).collect()))?;
        if requested <= now {
            return Err(ExpirationError::Past(requested));
        }
        let earliest = now + self.lifetime_min.min(self.lifetime_max);
        Ok(requested.clamp(earliest, now + self.lifetime_max))
    }

    /// When the subscription's next lifecycle step falls due: the reauthorization request until it
    /// was sent, then the removal at expiry.
    pub fn lifecycle_at(&self, subscription: &super::Subscription) -> Timestamp {
        if subscription.reauthorization_requested {
            subscription.expiration
        } else {
            self.reauthorize_at(subscription.expiration, subscription.renewed_at)
        }
    }

    /// When to send `reauthorizationRequired` for a subscription expiring at `expiration`.
    pub fn reauthorize_at(&self, expiration: Timestamp, created_or_renewed: Timestamp) -> Timestamp {
        let lifetime = expiration.duration_since(created_or_renewed);
        expiration - self.reauthorize_before.min(lifetime / 4)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiration_is_clamped_like_graph() {
        let p = SubscriptionPolicy::default();
        let now: Timestamp = "2026-11-27T08:00:00Z".parse().unwrap();
        assert_eq!(
            p.expiration(Some("2026-11-27T08:10:00Z"), now).unwrap(),
            now + SignedDuration::from_mins(45)
        );
        assert_eq!(
            p.expiration(Some("2026-11-27T08:50:00+00:00"), now).unwrap(),
            now + SignedDuration::from_mins(50)
        );
        assert_eq!(
            p.expiration(Some("2026-11-28T08:00:00.0000000Z"), now).unwrap(),
            now + SignedDuration::from_mins(60)
        );
        assert!(matches!(
            p.expiration(Some("2026-11-27T07:00:00Z"), now),
            Err(ExpirationError::Past(_))
        ));
        assert!(matches!(
            p.expiration(Some("tomorrow"), now),
            Err(ExpirationError::Malformed(_))
        ));
        assert!(matches!(
            p.expiration(Some("2026-11-27T09:00:00"), now),
            Err(ExpirationError::Malformed(_))
        ));
        assert_eq!(p.expiration(None, now), Err(ExpirationError::Missing));
    }

    #[test]
    fn reauthorization_comes_before_expiry() {
        let p = SubscriptionPolicy::default();
        let now: Timestamp = "2026-11-27T08:00:00Z".parse().unwrap();
        let exp = now + SignedDuration::from_mins(60);
        assert_eq!(p.reauthorize_at(exp, now), exp - SignedDuration::from_mins(15));
        let short = now + SignedDuration::from_secs(8);
        assert_eq!(p.reauthorize_at(short, now), short - SignedDuration::from_secs(2));
    }
}
