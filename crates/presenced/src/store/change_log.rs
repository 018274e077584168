//! The change-log port: every committed change of a user's visible presence, in commit order per
//! user, each at a [`Position`]. Consumers (the webhook dispatcher, streams) read it; nothing in
//! the commit path knows who they are.
//!
//! The log is a retained window, not the whole history: a reader asking for changes after a
//! position the window no longer covers gets [`LogError::Expired`] and must resynchronise.
use super::{Position, StoreError};
use presence_core::{ChangeEvent, PresenceView, TenantId, UserKey};
use std::future::Future;
use std::sync::Arc;

/// One committed change of one user's presence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub position: Position,
    pub key: UserKey,
    pub event: ChangeEvent,
}

/// The presence of a set of users exactly as of one position: follow the log after `position`
/// and nothing is missed or repeated.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub position: Position,
    /// In the order the keys were asked; a user never changed reads as the default (offline).
    pub views: Vec<PresenceView>,
}

/// [`Snapshot`] of a whole tenant: every user it holds, with their keys.
#[derive(Debug, Clone, PartialEq)]
pub struct TenantSnapshot {
    pub position: Position,
    pub presences: Vec<(UserKey, PresenceView)>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogError {
    /// The window no longer holds every change after the position asked; `oldest` is the
    /// earliest position it can still answer after.
    #[error("the change log no longer holds changes after that position")]
    Expired { oldest: Position },
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub trait ChangeLog: Send + Sync + 'static {
    /// The newest position: every change at or before it is durable and readable.
    fn head(&self) -> Position;

    /// Resolves once the head is past `position` (at once if it already is). Followers wait on
    /// this, then read with [`changes_after`](Self::changes_after).
    fn wait_past(&self, position: &Position) -> impl Future<Output = ()> + Send;

    /// Changes after `position`, oldest first, at most `limit`. Never stalls writers.
    fn changes_after(
        &self,
        position: &Position,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<Arc<Change>>, LogError>> + Send;

    /// The committed presence of `keys` (as of each user's last change, with no transitions
    /// applied that are not committed yet) exactly at one position.
    fn snapshot(&self, keys: &[UserKey]) -> impl Future<Output = Result<Snapshot, StoreError>> + Send;

    /// The committed presence of every user of `tenant` the store holds, exactly at one position,
    /// in no particular order. Costs a walk over the tenant's users: for tenant-wide streams.
    fn snapshot_tenant(&self, tenant: &TenantId) -> impl Future<Output = Result<TenantSnapshot, StoreError>> + Send;
}

/// Follows a change log from a position: the loop every consumer would otherwise write itself.
pub struct Follower<L> {
    log: L,
    position: Position,
    batch: usize,
}

impl<L: ChangeLog> Follower<L> {
    /// Follow from the log's current head: only changes committed from now on.
    pub fn from_now(log: L, batch: usize) -> Self {
        let position = log.head();
        Self::after(log, position, batch)
    }

    pub fn after(log: L, position: Position, batch: usize) -> Self {
        Self {
            log,
            position,
            batch: batch.max(1),
        }
    }

    /// The position of the last change handed out.
    pub fn position(&self) -> Position {
        self.position.clone()
    }

    /// The next changes (at least one), waiting for them if need be.
    pub async fn next(&mut self) -> Result<Vec<Arc<Change>>, LogError> {
        loop {
            self.log.wait_past(&self.position).await;
            let changes = self.log.changes_after(&self.position, self.batch).await?;
            if !changes.is_empty() {
                self.position = changes.iter().fold(self.position.clone(), |p, c| p.join(&c.position));
                return Ok(changes);
            }
        }
    }
}
