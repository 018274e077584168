//! The write commands, already validated: a handler turns a Graph request into one of these
//! (parse, don't validate), and `UserPresence::apply` can then only fail for reasons that depend on state.
use crate::ids::SessionId;
use crate::origin::Device;
use crate::state::{PreferredState, SessionState};
use crate::view::{MessageExpiry, OutOfOfficeSettings};
use crate::work_location::{DayZone, LocationInput, LocationLayer};
use jiff::{SignedDuration, Timestamp};

/// Teams caps status notes at 280 characters; Graph documents no limit, so we follow the client
/// users actually see the message in.
pub const MAX_STATUS_MESSAGE_CHARS: usize = 280;
/// Out-of-office messages come from mail clients and can be long, but must stay bounded.
pub const MAX_OUT_OF_OFFICE_MESSAGE_CHARS: usize = 4096;
/// A user with more sessions than this is almost certainly a client minting a new sessionId per
/// call (a known Graph misuse); refusing keeps one user's record from growing without bound.
pub const MAX_SESSIONS_PER_USER: usize = 64;

#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Create or keep alive a session: its state, fade and expiry restart from `now`.
    SetPresence {
        session: SessionId,
        state: SessionState,
        expiration: SignedDuration,
        /// The calling application, recorded when it differs from the session id.
        application: Option<String>,
    },
    /// A client connects (or reconnects) its session: it lives as long as the connection.
    ConnectClient {
        session: SessionId,
        device: Device,
        /// The process (or node) holding the connection.
        epoch: String,
        state: SessionState,
    },
    /// A connected client sets its availability and activity.
    SetClientState {
        session: SessionId,
        state: SessionState,
    },
    /// The user was active on a client: its fade starts over.
    ClientActivity {
        session: SessionId,
    },
    /// The client's connection ended: the session goes after `grace` unless it reconnects.
    DisconnectClient {
        session: SessionId,
        grace: SignedDuration,
    },
    /// Every connected client session of a process not in `live` (one that stopped, or a node
    /// whose lease lapsed) is disconnected, with the grace from now, so clients that reconnect
    /// keep theirs and ghosts go.
    OrphanClients {
        live: Vec<String>,
        grace: SignedDuration,
    },
    ClearPresence {
        session: SessionId,
    },
    SetPreferred {
        state: PreferredState,
        expiration: SignedDuration,
    },
    ClearPreferred,
    /// `None` clears the message.
    SetStatusMessage(Option<StatusMessageInput>),
    SetOutOfOffice(OutOfOfficeSettings),
    /// `setManualLocation` / `setAutomaticLocation`: the layer holds this location until the end
    /// of the current day in `day`'s zone.
    SetWorkLocation {
        layer: LocationLayer,
        location: LocationInput,
        day: DayZone,
    },
    /// `clearAutomaticLocation`: the manual layer, if any, still shows.
    ClearAutomaticLocation,
    /// `clearLocation`: both layers go.
    ClearLocation,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StatusMessageInput {
    content: String,
    expiry: Option<MessageExpiry>,
}

impl StatusMessageInput {
    pub fn new(content: String, expiry: Option<MessageExpiry>) -> Result<Self, CommandError> {
        if content.chars().count() > MAX_STATUS_MESSAGE_CHARS {
            return Err(CommandError::MessageTooLong {
                max: MAX_STATUS_MESSAGE_CHARS,
            });
        }
        Ok(Self { content, expiry })
    }

    pub fn content(&self) -> &str {
        &self.content
    }

    pub fn expiry(&self) -> Option<&MessageExpiry> {
        self.expiry.as_ref()
    }

    pub(crate) fn into_parts(self) -> (String, Option<MessageExpiry>) {
        (self.content, self.expiry)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error("The presence session '{0}' does not exist.")]
    SessionNotFound(SessionId),
    #[error("The presence session '{0}' belongs to a connected client; setPresence and clearPresence act on application sessions only.")]
    SessionKind(SessionId),
    #[error("The user already has {max} presence sessions; clear one or reuse a sessionId (your application id).")]
    TooManySessions { max: usize },
    #[error("The status message is longer than {max} characters.")]
    MessageTooLong { max: usize },
    #[error("The out-of-office message is longer than {max} characters.")]
    OutOfOfficeTooLong { max: usize },
    #[error("The expiryDateTime {0} is already in the past.")]
    ExpiryInPast(Timestamp),
}
