//! What readers see: the folded presence, and the change event emitted when it changes.
use crate::state::{Activity, Availability};
use crate::work_location::WorkLocationView;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use std::fmt;

/// The version stamp of a user's presence. Rendered fixed-width so it sorts as a plain string,
/// which is all Graph promises ("lexicographically sortable").
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
pub struct SequenceNumber(pub u64);

impl SequenceNumber {
    /// The 20 zero-padded decimal digits (every `u64` fits): what `Display` writes, without the
    /// formatting machinery, which cost ~800 instructions of every presence read.
    fn digits(self) -> [u8; 20] {
        let mut out = [b'0'; 20];
        let mut n = self.0;
        for slot in out.iter_mut().rev() {
            *slot = b'0' + (n % 10) as u8;
            n /= 10;
        }
        out
    }
}

impl fmt::Display for SequenceNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let digits = self.digits();
        // Only ASCII digits were written.
        f.write_str(std::str::from_utf8(&digits).map_err(|_| fmt::Error)?)
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
    // A boxed str, 8 bytes smaller than a String: it keeps a user's state (held in memory for
    // every user) within a smaller allocation size class (BENCHMARKS.md §5).
    pub message: Option<Box<str>>,
}

/// The folded presence of one user at one instant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceView {
    pub availability: Availability,
    pub activity: Activity,
    pub status_message: Option<StatusMessageView>,
    pub out_of_office: OutOfOfficeSettings,
    pub sequence: SequenceNumber,
    /// Left out of stored records while it is the default, so records of users who never set a
    /// work location are byte for byte what they were before it existed.
    #[serde(default, skip_serializing_if = "WorkLocationView::is_default")]
    pub work_location: WorkLocationView,
}

impl PresenceView {
    /// Everything but the sequence number: two views with equal content are the same presence.
    pub(crate) fn same_content(&self, other: &PresenceView) -> bool {
        self.availability == other.availability
            && self.activity == other.activity
            && self.status_message == other.status_message
            && self.out_of_office == other.out_of_office
            && self.work_location == other.work_location
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

#[cfg(test)]
mod tests {
    use super::SequenceNumber;

    #[test]
    fn sequence_numbers_render_as_twenty_padded_digits_that_sort_like_the_numbers() {
        let samples = [
            0,
            1,
            9,
            10,
            42,
            999_999,
            1_700_000_000_123,
            u64::MAX / 3,
            u64::MAX - 1,
            u64::MAX,
        ];
        for n in samples {
            assert_eq!(SequenceNumber(n).to_string(), format!("{n:020}"));
        }
        assert_eq!(SequenceNumber(u64::MAX).to_string(), "18446744073709551615");
        let rendered: Vec<String> = samples.iter().map(|&n| SequenceNumber(n).to_string()).collect();
        assert!(rendered.windows(2).all(|w| w[0] < w[1]));
    }
}
