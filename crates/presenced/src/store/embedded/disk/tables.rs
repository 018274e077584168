//! redb's tables: what each holds, the schema version and its upgrades, and reading everything
//! at start. A checkpoint writes a run of frames into them as one merged [`Pending`].
use super::*;
use crate::store::embedded::upgrade::legacy_lifecycle_notice;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

/// The latest value per key in a run of log frames: what one checkpoint writes to redb, each key
/// once however often it changed.
/// Values are borrowed from the segment being checkpointed.
#[derive(Default)]
pub(super) struct Pending<'a> {
    pub(super) users: std::collections::HashMap<&'a str, &'a [u8]>,
    pub(super) outbox: std::collections::BTreeMap<u64, &'a [u8]>,
    pub(super) prune_outbox_below: u64,
    pub(super) subscriptions: std::collections::HashMap<&'a str, Option<&'a [u8]>>,
    pub(super) deliveries: std::collections::BTreeMap<u64, Option<&'a [u8]>>,
    pub(super) progress: std::collections::HashMap<&'a str, Option<u64>>,
}

impl<'a> Pending<'a> {
    pub(super) fn merge(&mut self, ops: &[Op<'a>]) {
        for op in ops {
            match *op {
                Op::UserPut(k, v) => drop(self.users.insert(k, v)),
                Op::OutboxPut(id, v) => drop(self.outbox.insert(id, v)),
                Op::PruneOutbox(below) => {
                    self.prune_outbox_below = self.prune_outbox_below.max(below);
                    self.outbox.retain(|id, _| *id >= below);
                }
                Op::SubscriptionPut(k, v) => drop(self.subscriptions.insert(k, Some(v))),
                Op::SubscriptionDelete(k) => drop(self.subscriptions.insert(k, None)),
                Op::DeliveryPut(id, v) => drop(self.deliveries.insert(id, Some(v))),
                Op::DeliveryDelete(id) => drop(self.deliveries.insert(id, None)),
                Op::ProgressPut(k, at) => drop(self.progress.insert(k, Some(at))),
                Op::ProgressDelete(k) => drop(self.progress.insert(k, None)),
            }
        }
    }

    pub(super) fn apply(&self, txn: &redb::WriteTransaction) -> Result<(), redb::Error> {
        let mut users = txn.open_table(USERS)?;
        // In key order: redb's B-tree then visits each leaf once, in sequence. In hash order, a
        // checkpoint of a timer storm (every user once) measured ~9x slower per user.
        let mut sorted: Vec<(&str, &[u8])> = self.users.iter().map(|(k, v)| (*k, *v)).collect();
        sorted.sort_unstable_by(|a, b| a.0.cmp(b.0));
        for (k, v) in sorted {
            users.insert(k, v)?;
        }
        let mut outbox = txn.open_table(OUTBOX)?;
        for (id, v) in &self.outbox {
            outbox.insert(*id, *v)?;
        }
        if self.prune_outbox_below > 0 {
            outbox.retain_in(..self.prune_outbox_below, |_, _| false)?;
        }
        let mut subscriptions = txn.open_table(SUBSCRIPTIONS)?;
        for (k, v) in &self.subscriptions {
            match v {
                Some(v) => drop(subscriptions.insert(*k, *v)?),
                None => drop(subscriptions.remove(*k)?),
            }
        }
        let mut deliveries = txn.open_table(DELIVERIES)?;
        for (id, v) in &self.deliveries {
            match v {
                Some(v) => drop(deliveries.insert(*id, *v)?),
                None => drop(deliveries.remove(*id)?),
            }
        }
        let mut progress = txn.open_table(PROGRESS)?;
        for (k, v) in &self.progress {
            match v {
                Some(at) => drop(progress.insert(*k, *at)?),
                None => drop(progress.remove(*k)?),
            }
        }
        Ok(())
    }
}

pub(super) const USERS: TableDefinition<&str, &[u8]> = TableDefinition::new("users");
pub(super) const OUTBOX: TableDefinition<u64, &[u8]> = TableDefinition::new("outbox");
pub(super) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
pub(super) const SUBSCRIPTIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("subscriptions");
/// Queued lifecycle notices, by id.
pub(super) const DELIVERIES: TableDefinition<u64, &[u8]> = TableDefinition::new("deliveries");
/// Each subscription's acknowledged change-log position.
pub(super) const PROGRESS: TableDefinition<&str, u64> = TableDefinition::new("progress");
pub(super) const SCHEMA_KEY: &str = "schema_version";
pub(super) const CHECKPOINTS_KEY: &str = "checkpoints";
/// The number of the newest log segment a checkpoint wrote to redb: the start skips (and deletes)
/// segments at or below it, so segments can be deleted in any order and without syncs.
pub(super) const LOG_APPLIED_THROUGH_KEY: &str = "log_applied_through";
/// 2 since segments are skipped by number at start ([`LOG_APPLIED_THROUGH_KEY`]): a version-1
/// build would number its log from 1 again, and this one would then skip those segments as held.
/// 3 since change notifications are derived from the change log (`deliveries` holds lifecycle
/// notices only, `progress` each subscription's position): a version-2 build would read neither.
/// So a file this build opened must stop older builds, and does. Older files are upgraded.
pub(super) const SCHEMA_VERSION: u64 = 3;
/// redb's page cache. Reads are served from memory, so redb is only written (at checkpoints)
/// and read at start; its default 1 GiB cache held ~600 B per user at 1M users for nothing.
pub(super) const REDB_CACHE_BYTES: usize = 64 * 1024 * 1024;

/// How the redb file is opened (and reopened after a failure): [`open_database`], except in tests
/// that inject I/O errors.
pub(super) type OpenDatabase = fn(&Path) -> Result<Database, redb::DatabaseError>;

pub(super) fn open_database(path: &Path) -> Result<Database, redb::DatabaseError> {
    // Opened here rather than by redb: created 0600 and never through a symlink.
    let file = crate::data_dir::open_or_create(path)?;
    redb::Builder::new()
        .set_cache_size(REDB_CACHE_BYTES)
        .create_with_backend(redb::backends::FileBackend::new(file)?)
}
pub const FILE_NAME: &str = "presence.redb";

impl Redb {
    pub(super) fn init_schema(&self) -> Result<(), redb::Error> {
        let txn = self.db()?.begin_write()?;
        {
            let mut meta = txn.open_table(META)?;
            let found = meta.get(SCHEMA_KEY)?.map(|v| v.value());
            // A new file, or a version-1 one (upgraded to 2 by the log numbering alone); version 2
            // is upgraded to 3 after its log is replayed (`upgrade_to_3`).
            if found.is_none() {
                meta.insert(SCHEMA_KEY, SCHEMA_VERSION)?;
            } else if found == Some(1) {
                meta.insert(SCHEMA_KEY, 2)?;
            }
            txn.open_table(USERS)?;
            txn.open_table(OUTBOX)?;
            txn.open_table(SUBSCRIPTIONS)?;
            txn.open_table(DELIVERIES)?;
            txn.open_table(PROGRESS)?;
        }
        txn.commit()?;
        Ok(())
    }

    pub(super) fn schema_version(&self) -> Result<u64, redb::Error> {
        let txn = self.db()?.begin_read()?;
        let meta = txn.open_table(META)?;
        Ok(meta.get(SCHEMA_KEY)?.map_or(0, |v| v.value()))
    }

    pub(super) fn load(&self) -> Result<Loaded, LoadError> {
        let txn = self.db()?.begin_read()?;
        let users_table = txn.open_table(USERS)?;
        let mut users = Vec::new();
        for row in users_table.iter()? {
            let (k, v) = row?;
            let raw_key = k.value();
            let key = UserKey::from_storage_key(raw_key)
                .ok_or_else(|| LoadError::Record(format!("invalid user key {raw_key:?}")))?;
            let state: UserPresence = serde_json::from_slice(v.value())
                .map_err(|e| LoadError::Record(format!("record for {raw_key:?} does not decode: {e}")))?;
            users.push((key, state));
        }
        let outbox_table = txn.open_table(OUTBOX)?;
        let outbox_next = outbox_table.last()?.map_or(1, |(k, _)| k.value() + 1);
        let outbox_first = outbox_table.first()?.map_or(outbox_next, |(k, _)| k.value());
        let mut outbox = Vec::new();
        for row in outbox_table.iter()? {
            let (k, v) = row?;
            let (key, event): (UserKey, ChangeEvent) = serde_json::from_slice(v.value())
                .map_err(|e| LoadError::Record(format!("change-log entry {} does not decode: {e}", k.value())))?;
            outbox.push((k.value(), key, event));
        }
        let mut subscriptions = Vec::new();
        for row in txn.open_table(SUBSCRIPTIONS)?.iter()? {
            let (k, v) = row?;
            let sub: Subscription = serde_json::from_slice(v.value())
                .map_err(|e| LoadError::Record(format!("subscription {:?} does not decode: {e}", k.value())))?;
            subscriptions.push(sub);
        }
        let mut notices = Vec::new();
        for row in txn.open_table(DELIVERIES)?.iter()? {
            let (k, v) = row?;
            let notice: LifecycleNotice = serde_json::from_slice(v.value())
                .map_err(|e| LoadError::Record(format!("lifecycle notice {} does not decode: {e}", k.value())))?;
            notices.push(notice);
        }
        let mut progress = Vec::new();
        for row in txn.open_table(PROGRESS)?.iter()? {
            let (k, v) = row?;
            progress.push((k.value().to_owned(), v.value()));
        }
        Ok(Loaded {
            users,
            outbox,
            outbox_first,
            outbox_next,
            subscriptions,
            notices,
            progress,
        })
    }

    /// Version 2 kept one delivery record per notification owed. Change notifications are now
    /// derived from the change log, so those go, and each subscription instead gets the position
    /// before the oldest retained change: what the old records owed is re-sent from the log (at
    /// least once, as before). Lifecycle deliveries become lifecycle notices. One transaction.
    pub(super) fn upgrade_to_3(&self) -> Result<(), LoadError> {
        let txn = self.db()?.begin_write()?;
        {
            let outbox = txn.open_table(OUTBOX)?;
            let start = outbox.first()?.map_or_else(
                || outbox.last().map(|l| l.map_or(0, |(k, _)| k.value())),
                |(k, _)| Ok(k.value() - 1),
            )?;
            drop(outbox);
            let mut deliveries = txn.open_table(DELIVERIES)?;
            let old: Vec<(u64, Vec<u8>)> = deliveries
                .iter()?
                .map(|row| row.map(|(k, v)| (k.value(), v.value().to_vec())))
                .collect::<Result<_, _>>()?;
            for (id, bytes) in old {
                deliveries.remove(id)?;
                if let Some(notice) = legacy_lifecycle_notice(id, &bytes) {
                    deliveries.insert(id, notice.as_slice())?;
                }
            }
            let ids: Vec<String> = txn
                .open_table(SUBSCRIPTIONS)?
                .iter()?
                .map(|row| row.map(|(k, _)| k.value().to_owned()))
                .collect::<Result<_, _>>()?;
            let mut progress = txn.open_table(PROGRESS)?;
            for id in ids {
                progress.insert(id.as_str(), start)?;
            }
            txn.open_table(META)?.insert(SCHEMA_KEY, SCHEMA_VERSION)?;
        }
        txn.commit()?;
        tracing::info!("upgraded the database to schema version {SCHEMA_VERSION}");
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub(super) enum LoadError {
    #[error(transparent)]
    Db(#[from] redb::Error),
    #[error("{0}")]
    Record(String),
}

macro_rules! into_load_error {
    ($($t:ty),*) => {$(impl From<$t> for LoadError { fn from(e: $t) -> Self { LoadError::Db(e.into()) } })*};
}
into_load_error!(
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);
