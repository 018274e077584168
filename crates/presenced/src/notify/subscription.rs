//! The subscription record and the rules for creating and renewing one.
use jiff::{SignedDuration, Timestamp};
use presence_core::{TenantId, UserId};
use serde::{Deserialize, Serialize};

/// Graph caps `clientState` at 128 characters for subscriptions.
pub const MAX_CLIENT_STATE_CHARS: usize = 128;
/// Graph caps `encryptionCertificateId` at 128 characters.
pub const MAX_CERTIFICATE_ID_CHARS: usize = 128;
/// Bounded everything: one app in one tenant cannot grow the subscription table without limit.
pub const MAX_SUBSCRIPTIONS_PER_APP: usize = 1000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscription {
    pub id: String,
    pub tenant: TenantId,
    /// The owning application (`appid`/`azp` of the creator's token).
    pub application_id: String,
    /// The signed-in user who created it, if delegated.
    pub creator_id: Option<String>,
    /// As the caller wrote it, echoed back.
    pub resource: String,
    pub users: Vec<UserId>,
    pub notification_url: String,
    pub lifecycle_notification_url: Option<String>,
    pub client_state: Option<String>,
    pub expiration: Timestamp,
    /// Creation or last renewal: the start of the lifetime that reauthorization timing is based on.
    pub renewed_at: Timestamp,
    pub include_resource_data: bool,
    pub encryption_certificate: Option<String>,
    pub encryption_certificate_id: Option<String>,
    pub latest_supported_tls_version: Option<String>,
    /// When a `reauthorizationRequired` lifecycle event was last queued; cleared by renewal.
    #[serde(default)]
    pub reauthorization_requested: bool,
}

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
}

impl Default for SubscriptionPolicy {
    fn default() -> Self {
        Self {
            lifetime_max: SignedDuration::from_mins(60),
            lifetime_min: SignedDuration::from_mins(45),
            reauthorize_before: SignedDuration::from_mins(15),
            allow_app_tokens: false,
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
