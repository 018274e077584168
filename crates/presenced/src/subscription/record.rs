//! The subscription record: what a client asked for, as stored.
use jiff::Timestamp;
use presence_core::{TenantId, UserId};
use serde::{Deserialize, Serialize};

/// Graph caps `clientState` at 128 characters for subscriptions.
pub const MAX_CLIENT_STATE_CHARS: usize = 128;
/// Graph caps `encryptionCertificateId` at 128 characters.
pub const MAX_CERTIFICATE_ID_CHARS: usize = 128;

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
    /// When the next lifecycle step is due (reauthorization, then removal), as the subscription
    /// service computed it from its policy: the store keeps a deadline index on it, so nothing
    /// scans every subscription to find the due ones. Absent in records of older builds.
    #[serde(default)]
    pub lifecycle_at: Option<Timestamp>,
}

impl Subscription {
    /// The instant the store's lifecycle index files this subscription under.
    pub fn lifecycle_deadline(&self) -> Timestamp {
        self.lifecycle_at.unwrap_or(self.expiration).min(self.expiration)
    }
}
