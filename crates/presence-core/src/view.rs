//! What readers see: the folded presence, and the change event emitted when it changes.
use crate::state::{Activity, Availability};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use std::fmt;

/// The version stamp of a user's presence. Rendered fixed-width so it sorts as a plain string,
/// which is all Graph promises ("lexicographically sortable").
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
pub struct SequenceNumber(pub u64);

impl fmt::Display for SequenceNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:020}", self.0)
    }
}

/// When a status message stops showing, as the caller gave it (wall clock + zone) and resolved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageExpiry {
    pub at: Timestamp,
    pub date_time: String,
    pub time_zone: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusMessageView {
    pub content: String,
    pub expiry: Option<MessageExpiry>,
    pub published_at: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct OutOfOfficeSettings {
    pub is_out_of_office: bool,
    pub message: Option<String>,
}

/// The folded presence of one user at one instant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceView {
    pub availability: Availability,
    pub activity: Activity,
    pub status_message: Option<StatusMessageView>,
    pub out_of_office: OutOfOfficeSettings,
    pub sequence: SequenceNumber,
}

impl PresenceView {
    /// Everything but the sequence number: two views with equal content are the same presence.
    pub(crate) fn same_content(&self, other: &PresenceView) -> bool {
        self.availability == other.availability
            && self.activity == other.activity
            && self.status_message == other.status_message
            && self.out_of_office == other.out_of_office
    }
}

/// Emitted by every change of a user's presence, committed atomically with the new state (the
/// outbox), so notifications can never be lost or invented.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeEvent {
    /// When the change took effect: the request time for writes, the deadline for timer transitions.
    pub at: Timestamp,
    pub previous_availability: Availability,
    pub previous_activity: Activity,
    pub view: PresenceView,
}

impl ChangeEvent {
    /// Graph notifies presence subscribers only when availability or activity change.
    pub fn availability_or_activity_changed(&self) -> bool {
        self.previous_availability != self.view.availability || self.previous_activity != self.view.activity
    }
}
