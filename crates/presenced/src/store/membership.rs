//! The membership port: which nodes are alive, and whether this one may still write.
//!
//! A node of a shared store holds a lease, renewed while it runs and judged by the store's clock.
//! Client sessions record the epoch of the node holding their connection; the survivors give the
//! sessions of a node whose lease lapsed their grace. A node that finds its own lease lapsed (it
//! was paused, or cut off, long enough to be declared dead) is fenced: the store refuses its
//! commits, and it stops.
use super::StoreError;
use std::future::Future;

pub trait Membership: Send + Sync + 'static {
    /// The epochs of the nodes holding a live lease now, or `None` for a store only one process
    /// uses (the embedded one), where the only live epoch is the caller's own.
    fn live_epochs(&self) -> impl Future<Output = Result<Option<Vec<String>>, StoreError>> + Send;

    /// Resolves once this node's lease has lapsed; never on a store without leases.
    fn fenced(&self) -> impl Future<Output = ()> + Send;

    /// Leave the live nodes at a clean stop, after this node's last write: the others take over
    /// its partitions and subscriptions at once instead of when its lease lapses. Best effort (a
    /// node that cannot reach the store is declared dead by the lapse instead); nothing on a store
    /// without leases.
    fn leave(&self) -> impl Future<Output = ()> + Send;
}
