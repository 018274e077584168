//! The presence core: a pure state machine that folds a user's presence sessions into one presence.
//!
//! Nothing here reads a clock, spawns a task or touches I/O: every rule is a function of
//! `(state, command, now)`, so tests drive time by hand and the server only decides *when* to call in.
//!
//! Module map:
//! - [`ids`]: validated identifiers (`TenantId`, `UserId`, `SessionId`) and the `UserKey` pair.
//! - [`state`]: the Graph availability/activity vocabulary, their folding rank, and the legal pairs per action.
//! - [`duration`]: `expirationDuration` parsing in every form the official SDKs send (ISO 8601 through
//!   jiff's span parser, the clock forms by hand), plus config durations.
//! - [`zone`]: resolving Graph `dateTimeTimeZone` values (Windows or IANA zone names) to instants.
//! - [`timing`]: the timing policy (fade, session expiration bounds, preferred-presence defaults).
//! - [`command`]: the write commands a caller can issue, already validated.
//! - [`origin`]: where a session comes from: an application, or a connected client (device, connection).
//! - [`user`]: `UserPresence`, the per-user aggregate with `apply`, `advance` and `next_deadline`.
//! - [`view`]: the folded, externally visible presence and the change event it produces.
//! - [`work_location`]: the manual and automatic work-location layers and their end of day.
#![forbid(unsafe_code)]

pub mod command;
pub mod duration;
pub mod ids;
pub mod origin;
pub mod state;
pub mod timing;
pub mod user;
pub mod view;
pub mod work_location;
pub mod zone;

pub use command::{Command, CommandError, StatusMessageInput};
pub use ids::{IdError, SessionId, TenantId, UserId, UserKey};
pub use origin::{ClientLink, Device, Origin};
pub use state::{Activity, Availability, PairError, PreferredState, SessionState};
pub use timing::{Timing, TimingError};
pub use user::{Explanation, FadeStage, Fold, Outcome, Rule, Session, UserPresence};
pub use view::{ChangeEvent, OutOfOfficeSettings, PresenceView, SequenceNumber, StatusMessageView};
pub use work_location::{
    DayZone, LocationInput, LocationLayer, PlaceId, WorkLocation, WorkLocationError, WorkLocationSource,
    WorkLocationType, WorkLocationView,
};
