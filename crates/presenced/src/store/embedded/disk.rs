//! The redb file: the durable copy of every user's state and the change-event outbox.
//!
//! Values are JSON: a few bytes more than a binary encoding, but a record written by one version
//! of presenced stays readable by the next, and a damaged file can be inspected by hand.
use super::super::{Delivery, OutboxEntry};
use crate::notify::subscription::Subscription;
use presence_core::{ChangeEvent, UserKey, UserPresence};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use std::path::{Path, PathBuf};
use std::sync::{RwLock, RwLockReadGuard};

const USERS: TableDefinition<&str, &[u8]> = TableDefinition::new("users");
const OUTBOX: TableDefinition<u64, &[u8]> = TableDefinition::new("outbox");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const SUBSCRIPTIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("subscriptions");
const DELIVERIES: TableDefinition<u64, &[u8]> = TableDefinition::new("deliveries");
const SCHEMA_KEY: &str = "schema_version";
const SCHEMA_VERSION: u64 = 1;
pub const FILE_NAME: &str = "presence.redb";

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot create or read the data directory {path}: {source}")]
    Directory { path: PathBuf, source: std::io::Error },
    #[error("cannot open the database {path}: {reason}. Nothing in it was repaired, replaced or deleted; restore it from a backup or move it aside to start empty.")]
    Database { path: PathBuf, reason: String },
    #[error("the database {path} is corrupt ({reason}). Nothing in it was repaired, replaced or deleted; restore it from a backup or move it aside to start empty.")]
    Corrupt { path: PathBuf, reason: String },
    #[error("the database {path} has schema version {found}, this presenced understands {SCHEMA_VERSION}; refusing to start")]
    Schema { path: PathBuf, found: u64 },
}

/// Everything read at start-up.
pub struct Loaded {
    pub users: Vec<(UserKey, UserPresence)>,
    pub outbox_first: u64,
    pub outbox_next: u64,
    pub subscriptions: Vec<Subscription>,
    pub deliveries: Vec<Delivery>,
}

pub struct Disk {
    path: PathBuf,
    // Read-locked by every transaction; write-locked only to reopen the file after a failed
    // commit (redb must be reopened to rebuild its allocator state, e.g. after the disk was full).
    db: RwLock<Option<Database>>,
}

/// One user's record in a batch, already encoded.
pub struct Record {
    pub storage_key: String,
    pub state_json: Vec<u8>,
    pub outbox: Option<(u64, Vec<u8>)>,
}

/// Everything one transaction writes.
#[derive(Default)]
pub struct Batch {
    pub records: Vec<Record>,
    pub subscriptions_put: Vec<(String, Vec<u8>)>,
    pub subscriptions_delete: Vec<String>,
    pub deliveries_put: Vec<(u64, Vec<u8>)>,
    pub deliveries_delete: Vec<u64>,
    pub prune_outbox_below: u64,
    /// False only for batches that merely forget delivered notifications: losing those to a crash
    /// means a re-send, which at-least-once allows, so they skip the fsync.
    pub durable: bool,
}

impl Disk {
    pub fn open(dir: &Path) -> Result<(Self, Loaded), OpenError> {
        std::fs::create_dir_all(dir).map_err(|source| OpenError::Directory {
            path: dir.into(),
            source,
        })?;
        let path = dir.join(FILE_NAME);
        let db_err = |e: &dyn std::fmt::Display| OpenError::Database {
            path: path.clone(),
            reason: e.to_string(),
        };
        let corrupt = |reason: String| OpenError::Corrupt {
            path: path.clone(),
            reason,
        };
        // `create` opens an existing valid file and only initialises a missing or empty one; it
        // refuses anything else, so a damaged file is reported, never silently replaced.
        let mut db = Database::create(&path).map_err(|e| db_err(&e))?;
        // Verify every page checksum before trusting the file: a flipped bit in a page must stop
        // the server, not be served (or, worse, be written back) as if it were data.
        match db.check_integrity() {
            Ok(true) => {}
            Ok(false) => tracing::warn!(path = %path.display(), "database was repaired after an unclean shutdown"),
            Err(e) => return Err(corrupt(format!("integrity check failed: {e}"))),
        }
        let disk = Self {
            path: path.clone(),
            db: RwLock::new(Some(db)),
        };
        disk.init_schema().map_err(|e| db_err(&e))?;
        let found = disk.schema_version().map_err(|e| db_err(&e))?;
        if found != SCHEMA_VERSION {
            return Err(OpenError::Schema { path, found });
        }
        let loaded = disk.load().map_err(|e| match e {
            LoadError::Db(e) => db_err(&e),
            LoadError::Record(reason) => corrupt(reason),
        })?;
        Ok((disk, loaded))
    }

    /// The open database (read guard). Errors only if a reopen after a failure also failed.
    fn db(&self) -> Result<DbGuard<'_>, redb::Error> {
        let guard = self.db.read().unwrap_or_else(|e| e.into_inner());
        if guard.is_none() {
            return Err(redb::Error::Corrupted(
                "the database could not be reopened after an I/O error".into(),
            ));
        }
        Ok(DbGuard(guard))
    }

    /// Close and reopen the file after a failed commit, so writes can resume once the cause (a
    /// full disk, say) is gone. Nothing acknowledged is lost: a failed commit acknowledged nothing.
    pub fn reopen(&self) -> Result<(), String> {
        let mut slot = self.db.write().unwrap_or_else(|e| e.into_inner());
        drop(slot.take());
        let db = Database::create(&self.path).map_err(|e| e.to_string())?;
        *slot = Some(db);
        Ok(())
    }

    fn init_schema(&self) -> Result<(), redb::Error> {
        let txn = self.db()?.begin_write()?;
        {
            let mut meta = txn.open_table(META)?;
            if meta.get(SCHEMA_KEY)?.is_none() {
                meta.insert(SCHEMA_KEY, SCHEMA_VERSION)?;
            }
            txn.open_table(USERS)?;
            txn.open_table(OUTBOX)?;
            txn.open_table(SUBSCRIPTIONS)?;
            txn.open_table(DELIVERIES)?;
        }
        txn.commit()?;
        Ok(())
    }

    fn schema_version(&self) -> Result<u64, redb::Error> {
        let txn = self.db()?.begin_read()?;
        let meta = txn.open_table(META)?;
        Ok(meta.get(SCHEMA_KEY)?.map_or(0, |v| v.value()))
    }

    fn load(&self) -> Result<Loaded, LoadError> {
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
        let outbox = txn.open_table(OUTBOX)?;
        let outbox_first = outbox.first()?.map_or(1, |(k, _)| k.value());
        let outbox_next = outbox.last()?.map_or(1, |(k, _)| k.value() + 1);
        let mut subscriptions = Vec::new();
        for row in txn.open_table(SUBSCRIPTIONS)?.iter()? {
            let (k, v) = row?;
            let sub: Subscription = serde_json::from_slice(v.value())
                .map_err(|e| LoadError::Record(format!("subscription {:?} does not decode: {e}", k.value())))?;
            subscriptions.push(sub);
        }
        let mut deliveries = Vec::new();
        for row in txn.open_table(DELIVERIES)?.iter()? {
            let (k, v) = row?;
            let delivery: Delivery = serde_json::from_slice(v.value())
                .map_err(|e| LoadError::Record(format!("delivery {} does not decode: {e}", k.value())))?;
            deliveries.push(delivery);
        }
        Ok(Loaded {
            users,
            outbox_first,
            outbox_next,
            subscriptions,
            deliveries,
        })
    }

    /// Write a batch in one transaction and, if `durable`, fsync it (redb's `Immediate`
    /// durability): this is the group commit, one fsync shared by every request in the batch.
    /// Outbox entries below `prune_outbox_below` are dropped in the same transaction to bound the file.
    pub fn write_batch(&self, batch: &Batch) -> Result<(), redb::Error> {
        let mut txn = self.db()?.begin_write()?;
        if !batch.durable {
            txn.set_durability(redb::Durability::None)?;
        }
        {
            let mut users = txn.open_table(USERS)?;
            let mut outbox = txn.open_table(OUTBOX)?;
            for r in &batch.records {
                users.insert(r.storage_key.as_str(), r.state_json.as_slice())?;
                if let Some((id, json)) = &r.outbox {
                    outbox.insert(*id, json.as_slice())?;
                }
            }
            if batch.prune_outbox_below > 0 {
                outbox.retain_in(..batch.prune_outbox_below, |_, _| false)?;
            }
            let mut subscriptions = txn.open_table(SUBSCRIPTIONS)?;
            for (id, json) in &batch.subscriptions_put {
                subscriptions.insert(id.as_str(), json.as_slice())?;
            }
            for id in &batch.subscriptions_delete {
                subscriptions.remove(id.as_str())?;
            }
            let mut deliveries = txn.open_table(DELIVERIES)?;
            for (id, json) in &batch.deliveries_put {
                deliveries.insert(*id, json.as_slice())?;
            }
            for id in &batch.deliveries_delete {
                deliveries.remove(*id)?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    pub fn deliveries(&self) -> Result<Vec<Delivery>, String> {
        let read = || -> Result<Vec<Delivery>, LoadError> {
            let txn = self.db()?.begin_read()?;
            let mut out = Vec::new();
            for row in txn.open_table(DELIVERIES)?.iter()? {
                let (k, v) = row?;
                out.push(
                    serde_json::from_slice(v.value())
                        .map_err(|e| LoadError::Record(format!("delivery {} does not decode: {e}", k.value())))?,
                );
            }
            Ok(out)
        };
        read().map_err(|e| e.to_string())
    }

    pub fn outbox_after(&self, after_id: u64, limit: usize) -> Result<Vec<OutboxEntry>, String> {
        let read = || -> Result<Vec<OutboxEntry>, LoadError> {
            let txn = self.db()?.begin_read()?;
            let outbox = txn.open_table(OUTBOX)?;
            let mut out = Vec::new();
            for row in outbox.range(after_id.saturating_add(1)..)?.take(limit) {
                let (k, v) = row?;
                let (key, event): (UserKey, ChangeEvent) = serde_json::from_slice(v.value())
                    .map_err(|e| LoadError::Record(format!("outbox entry {} does not decode: {e}", k.value())))?;
                out.push(OutboxEntry {
                    id: k.value(),
                    key,
                    event,
                });
            }
            Ok(out)
        };
        read().map_err(|e| e.to_string())
    }
}

#[derive(Debug, thiserror::Error)]
enum LoadError {
    #[error(transparent)]
    Db(#[from] redb::Error),
    #[error("{0}")]
    Record(String),
}

macro_rules! into_load_error {
    ($($t:ty),*) => {$(impl From<$t> for LoadError { fn from(e: $t) -> Self { LoadError::Db(e.into()) } })*};
}
into_load_error!(redb::TransactionError, redb::TableError, redb::StorageError);

/// A read guard that derefs to the open database.
struct DbGuard<'a>(RwLockReadGuard<'a, Option<Database>>);

impl std::ops::Deref for DbGuard<'_> {
    type Target = Database;
    fn deref(&self) -> &Database {
        // `Disk::db` returns a guard only when the slot holds a database.
        self.0.as_ref().expect("checked in Disk::db")
    }
}
