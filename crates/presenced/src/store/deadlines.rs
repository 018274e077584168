//! The deadlines port: which users have a transition (fade, expiry, a preference or message
//! running out) due. Commits keep it current; the sweeper reads it.
use super::StoreError;
use jiff::Timestamp;
use presence_core::UserKey;
use std::future::Future;

pub trait Deadlines: Send + Sync + 'static {
    /// Users whose next deadline is at or before `now`, earliest first, at most `limit`.
    fn due(&self, now: Timestamp, limit: usize) -> impl Future<Output = Result<Vec<UserKey>, StoreError>> + Send;

    /// The earliest deadline pending across all users, or an earlier time: a backend may answer
    /// early, and a sweeper woken early finds nothing due and asks again. Never later.
    fn next_deadline(&self) -> impl Future<Output = Option<Timestamp>> + Send;

    /// A hint that resolves when a commit may have moved the earliest deadline earlier, so a
    /// sleeping sweeper can re-plan. It may also resolve for nothing, or (on a backend that
    /// cannot tell) never: callers still wake at `next_deadline` and poll.
    fn deadline_moved(&self) -> impl Future<Output = ()> + Send;
}
