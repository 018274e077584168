//! The durable files' tests: frames, segments, checkpoints, replay after a crash, damage, upgrades.
use super::*;
use redb::Database;
use std::sync::atomic::Ordering;

#[test]
fn ops_roundtrip_through_a_frame() {
    let ops = vec![
        Op::UserPut("t/u", b"{}"),
        Op::OutboxPut(7, b"[1]"),
        Op::PruneOutbox(3),
        Op::SubscriptionPut("s", b"{\"a\":1}"),
        Op::SubscriptionDelete("s2"),
        Op::DeliveryPut(9, b"x"),
        Op::DeliveryDelete(4),
        Op::ProgressPut("s", 17),
        Op::ProgressDelete("s3"),
    ];
    assert_eq!(decode_ops(&encode_ops(&ops)).unwrap(), ops);
    assert!(decode_ops(&[1, 5, 0, 0, 0, b'a']).is_err());
    assert!(decode_ops(&[99]).is_err());
}

/// Two different states of one user, in the order a test writes them (Busy, then Away).
fn older_and_newer() -> (Vec<u8>, Vec<u8>) {
    use presence_core::{Activity, Availability};
    let older = state_json(Availability::Busy, Activity::InACall);
    let newer = state_json(Availability::Away, Activity::Away);
    assert_ne!(older, newer);
    (older, newer)
}

fn state_json(availability: presence_core::Availability, activity: presence_core::Activity) -> Vec<u8> {
    let mut state = UserPresence::default();
    let command = presence_core::Command::SetPresence {
        session: presence_core::SessionId::parse("app").unwrap(),
        state: presence_core::SessionState::new(availability, activity).unwrap(),
        expiration: jiff::SignedDuration::from_mins(10),
        application: None,
    };
    let now = jiff::Timestamp::from_second(1_800_000_000).unwrap();
    state.apply(command, now, &presence_core::Timing::default()).unwrap();
    serde_json::to_vec(&state).unwrap()
}

#[test]
fn segments_left_by_a_crash_are_replayed_oldest_first_then_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let key = "t1/u1";
    let (older, newer) = older_and_newer();
    // Two closed segments, as a crash during a checkpoint leaves them, the newer value last.
    let mut first = Wal::create(dir.path(), 7).unwrap();
    first.append(&encode_ops(&[Op::UserPut(key, &older)]), true).unwrap();
    let mut second = Wal::create(dir.path(), 8).unwrap();
    second.append(&encode_ops(&[Op::UserPut(key, &newer)]), true).unwrap();
    let (disk, loaded) = Disk::open(dir.path()).unwrap();
    let stored: Vec<u8> = serde_json::to_vec(&loaded.users[0].1).unwrap();
    assert_eq!(stored, newer, "the later segment wins");
    let left: Vec<u64> = wal::segments(dir.path()).unwrap().into_iter().map(|(s, _)| s).collect();
    assert_eq!(
        left,
        vec![9],
        "replayed segments are deleted; writing continues in the next one"
    );
    drop(disk);
}

fn put(disk: &Disk, key: &str, state: &[u8]) {
    let batch = Batch {
        records: vec![Record {
            storage_key: key.into(),
            state_json: state.to_vec(),
            outbox: None,
        }],
        durable: true,
        ..Batch::default()
    };
    disk.write_batch(&batch).unwrap();
}

/// [`put`], and record the value as what redb must end up holding.
fn put_expecting(disk: &Disk, expected: &mut std::collections::BTreeMap<String, String>, key: &str, state: &[u8]) {
    put(disk, key, state);
    expected.insert(key.to_string(), String::from_utf8(state.to_vec()).unwrap());
}

/// Close the current segment, as the writer does every 2 s, and wait (bounded) until the
/// checkpoint thread has written it to redb.
fn close_and_checkpoint(disk: &Disk) {
    let closed = disk
        .close_segment(&mut disk.lock_wal())
        .unwrap()
        .expect("a segment with frames");
    assert!(closed.frames.is_some(), "the writer kept the frames");
    disk.checkpoints.queue(closed);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !disk.checkpoints.idle() {
        assert!(Instant::now() < deadline, "the checkpoint did not finish");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn segment_count(dir: &Path) -> usize {
    wal::segments(dir).unwrap().len()
}

/// What a SIGKILL would leave now: the files as they are on disk, without whatever redb
/// holds only in memory (its unsynced commits), opened as the next start would.
fn open_crash_image(dir: &Path) -> (tempfile::TempDir, Loaded) {
    let image = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), image.path().join(entry.file_name())).unwrap();
    }
    let (_disk, loaded) = Disk::open(image.path()).unwrap();
    (image, loaded)
}

fn stored(loaded: &Loaded) -> std::collections::BTreeMap<String, String> {
    loaded
        .users
        .iter()
        .map(|(k, v)| (k.storage_key(), serde_json::to_string(v).unwrap()))
        .collect()
}

#[test]
fn checkpointed_segments_stay_on_disk_until_a_synced_commit_covers_them() {
    let dir = tempfile::tempdir().unwrap();
    let (disk, _) = Disk::open(dir.path()).unwrap();
    let (busy, away) = older_and_newer();
    let mut expected = std::collections::BTreeMap::new();
    for i in 0..SYNC_EVERY_SEGMENTS - 1 {
        put_expecting(&disk, &mut expected, &format!("t1/u{i}"), &busy);
        // The last segment overwrites an earlier key: replay order decides what survives.
        put_expecting(&disk, &mut expected, "t1/u0", if i % 2 == 0 { &away } else { &busy });
        close_and_checkpoint(&disk);
    }
    assert_eq!(
        segment_count(dir.path()),
        SYNC_EVERY_SEGMENTS,
        "every checkpointed segment is kept (unsynced in redb), plus the current one"
    );
    let (_image, loaded) = open_crash_image(dir.path());
    assert_eq!(stored(&loaded), expected, "a crash now replays them all");

    put_expecting(&disk, &mut expected, "t1/last", &away);
    close_and_checkpoint(&disk);
    assert_eq!(
        segment_count(dir.path()),
        1,
        "the synced commit covers the kept segments, and they are deleted"
    );
    let (_image, loaded) = open_crash_image(dir.path());
    assert_eq!(stored(&loaded), expected, "and redb alone holds everything");

    put_expecting(&disk, &mut expected, "t1/u1", &away);
    close_and_checkpoint(&disk);
    assert_eq!(segment_count(dir.path()), 2);
    disk.checkpoint_now().unwrap();
    assert_eq!(segment_count(dir.path()), 1, "checkpoint_now syncs whatever is kept");
    let (_image, loaded) = open_crash_image(dir.path());
    assert_eq!(stored(&loaded), expected);
}

#[test]
fn a_segment_redb_already_holds_is_skipped_at_start_not_replayed_over_newer_state() {
    let dir = tempfile::tempdir().unwrap();
    let (older, newer) = older_and_newer();
    let (disk, _) = Disk::open(dir.path()).unwrap();
    put(&disk, "t1/u", &older);
    let first = disk.lock_wal().log.path().to_path_buf();
    let kept_first = std::fs::read(&first).unwrap();
    close_and_checkpoint(&disk);
    put(&disk, "t1/u", &newer);
    disk.checkpoint_now().unwrap();
    assert!(!first.exists(), "synced and deleted");
    drop(disk);
    // A crash undid the first segment's deletion (deletions are not synced).
    std::fs::write(&first, &kept_first).unwrap();
    let (disk, loaded) = Disk::open(dir.path()).unwrap();
    assert_eq!(
        serde_json::to_vec(&loaded.users[0].1).unwrap(),
        newer,
        "the stale segment is not replayed"
    );
    assert!(!first.exists(), "and it is deleted");
    let (current, _) = wal::segments(dir.path()).unwrap()[0].clone();
    let held = disk.redb.log_applied_through().unwrap().unwrap();
    assert!(
        current > held,
        "new segments are numbered past what redb holds ({current} > {held})"
    );
}

/// Set to make every write and sync of a redb file opened with [`open_failable`] fail, as a
/// full or failing disk does. Only the test that opens such a file reads it.
static FAIL_REDB_IO: AtomicBool = AtomicBool::new(false);

#[derive(Debug)]
struct FailableBackend(redb::backends::FileBackend);

impl FailableBackend {
    fn check() -> std::io::Result<()> {
        match FAIL_REDB_IO.load(Ordering::Acquire) {
            true => Err(std::io::Error::other("injected I/O failure")),
            false => Ok(()),
        }
    }
}

impl redb::StorageBackend for FailableBackend {
    fn len(&self) -> std::io::Result<u64> {
        self.0.len()
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
        self.0.read(offset, out)
    }
    fn set_len(&self, len: u64) -> std::io::Result<()> {
        Self::check()?;
        self.0.set_len(len)
    }
    fn sync_data(&self) -> std::io::Result<()> {
        Self::check()?;
        self.0.sync_data()
    }
    fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        Self::check()?;
        self.0.write(offset, data)
    }
    fn close(&self) -> std::io::Result<()> {
        self.0.close()
    }
}

fn open_failable(path: &Path) -> Result<Database, redb::DatabaseError> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    let backend = FailableBackend(redb::backends::FileBackend::new(file)?);
    redb::Builder::new()
        .set_cache_size(REDB_CACHE_BYTES)
        .create_with_backend(backend)
}

#[test]
fn after_a_failed_commit_the_reopened_redb_gets_the_unsynced_segments_again() {
    use presence_core::{Activity, Availability};
    let dir = tempfile::tempdir().unwrap();
    let (disk, _) = Disk::open_with(dir.path(), open_failable).unwrap();
    let busy = state_json(Availability::Busy, Activity::InACall);
    put(&disk, "t1/a", &busy);
    close_and_checkpoint(&disk);
    put(&disk, "t1/b", &busy);
    close_and_checkpoint(&disk);
    // The synced commit fails: redb then drops its unsynced commits (a and b) with the handle.
    FAIL_REDB_IO.store(true, Ordering::Release);
    assert!(disk.checkpoint_now().is_err());
    FAIL_REDB_IO.store(false, Ordering::Release);
    assert!(disk.redb.broken.load(Ordering::Acquire));
    assert_eq!(segment_count(dir.path()), 3, "nothing synced, nothing deleted");
    // The next checkpoint reopens redb, writes a and b again from their segments, then c.
    put(&disk, "t1/c", &busy);
    close_and_checkpoint(&disk);
    assert!(!disk.redb.broken.load(Ordering::Acquire), "reopened");
    disk.checkpoint_now().unwrap();
    assert_eq!(segment_count(dir.path()), 1);
    let (_image, loaded) = open_crash_image(dir.path());
    let keys: Vec<String> = stored(&loaded).into_keys().collect();
    assert_eq!(keys, ["t1/a", "t1/b", "t1/c"]);
}

#[test]
fn a_version_1_file_is_upgraded_and_a_newer_one_refused() {
    let dir = tempfile::tempdir().unwrap();
    let set_schema = |version: u64| {
        let db = open_database(&dir.path().join(FILE_NAME)).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(META).unwrap().insert(SCHEMA_KEY, version).unwrap();
        txn.commit().unwrap();
    };
    drop(Disk::open(dir.path()).unwrap());
    set_schema(1);
    let (disk, _) = Disk::open(dir.path()).unwrap();
    assert_eq!(disk.redb.schema_version().unwrap(), SCHEMA_VERSION);
    drop(disk);
    set_schema(SCHEMA_VERSION + 1);
    assert!(matches!(
        Disk::open(dir.path()),
        Err(OpenError::Schema { found, .. }) if found == SCHEMA_VERSION + 1
    ));
}

#[test]
fn a_version_2_file_keeps_its_lifecycle_deliveries_and_owes_its_subscriptions_the_retained_log() {
    let dir = tempfile::tempdir().unwrap();
    let (disk, _) = Disk::open(dir.path()).unwrap();
    let subscription = br#"{"id":"s1","tenant":"t","application_id":"app","creator_id":null,"resource":"r","users":["u"],"notification_url":"https://h/n","lifecycle_notification_url":"https://h/l","client_state":null,"expiration":"2026-11-27T10:00:00Z","renewed_at":"2026-11-27T09:00:00Z","include_resource_data":false,"encryption_certificate":null,"encryption_certificate_id":null,"latest_supported_tls_version":null}"#;
    let lifecycle = br#"{"id":7,"url":"https://h/l","subscription_id":"s1","created_at":"2026-11-27T09:00:00Z","kind":{"Lifecycle":{"event":"Missed","tenant":"t","client_state":null,"subscription_expiration":"2026-11-27T10:00:00Z"}}}"#;
    let change = br#"{"id":8,"url":"https://h/n","subscription_id":"s1","created_at":"2026-11-27T09:00:00Z","kind":{"Change":{"user":"u","availability":"Busy","activity":"InACall","sequence":5}}}"#;
    disk.write_batch(&Batch {
        subscriptions_put: vec![("s1".into(), subscription.to_vec())],
        deliveries_put: vec![(7, lifecycle.to_vec()), (8, change.to_vec())],
        durable: true,
        ..Batch::default()
    })
    .unwrap();
    disk.checkpoint_now().unwrap();
    drop(disk);
    let db = open_database(&dir.path().join(FILE_NAME)).unwrap();
    let txn = db.begin_write().unwrap();
    txn.open_table(META).unwrap().insert(SCHEMA_KEY, 2).unwrap();
    txn.commit().unwrap();
    drop(db);
    let (disk, loaded) = Disk::open(dir.path()).unwrap();
    assert_eq!(disk.redb.schema_version().unwrap(), SCHEMA_VERSION);
    assert_eq!(
        loaded.notices.len(),
        1,
        "the change delivery is re-derived from the log"
    );
    assert_eq!(loaded.notices[0].id, 7);
    assert_eq!(loaded.progress, vec![("s1".to_string(), loaded.outbox_first - 1)]);
}

#[test]
fn a_reopen_does_not_write_again_a_listed_segment_a_synced_commit_covers() {
    let dir = tempfile::tempdir().unwrap();
    let (older, newer) = older_and_newer();
    let (disk, _) = Disk::open(dir.path()).unwrap();
    put(&disk, "t1/u", &older);
    let (first_seq, first) = {
        let wal = disk.lock_wal();
        (wal.log.seq(), wal.log.path().to_path_buf())
    };
    let kept_first = std::fs::read(&first).unwrap();
    close_and_checkpoint(&disk);
    put(&disk, "t1/u", &newer);
    disk.checkpoint_now().unwrap();
    // The first segment as it would be had its deletion failed: still on disk, still listed.
    std::fs::write(&first, &kept_first).unwrap();
    disk.redb.lock_unsynced().segments.push((first_seq, first.clone()));
    disk.redb.broken.store(true, Ordering::Release);
    put(&disk, "t1/other", &older);
    close_and_checkpoint(&disk);
    disk.checkpoint_now().unwrap();
    let (_image, loaded) = open_crash_image(dir.path());
    let stored = stored(&loaded);
    assert_eq!(
        stored["t1/u"],
        String::from_utf8(newer).unwrap(),
        "not rolled back to the stale segment"
    );
    assert!(!first.exists(), "deleted at the next sync");
}

/// The writer copies frames into a buffer it is handed and never grows it (growing maps
/// fresh memory); the checkpoint thread sizes that buffer for the spare it last prepared.
#[test]
fn the_checkpoint_prepares_the_next_segments_buffer_for_the_spare_it_made() {
    let dir = tempfile::tempdir().unwrap();
    let (disk, _) = Disk::open(dir.path()).unwrap();
    let state = state_json(presence_core::Availability::Busy, presence_core::Activity::InACall);
    let mut key = 0;
    while disk.lock_wal().log.len() < SPARE_MIN_BYTES * 3 / 4 {
        key += 1;
        put(&disk, &format!("t1/u{key}"), &state);
    }
    let segment = disk.lock_wal().log.len();
    close_and_checkpoint(&disk);
    let buffer = disk.redb.take_copy_buffer();
    assert!(buffer.is_empty());
    assert!(
        buffer.capacity() as u64 >= segment + segment / 2,
        "room for the next spare ({} bytes) in {}",
        segment + segment / 2,
        buffer.capacity()
    );
    drop(disk);
}

#[test]
fn a_lagging_checkpoint_holds_at_most_one_queued_segments_frames() {
    let checkpoints = Checkpoints::default();
    let closed = |n: u64| Closed {
        seq: n,
        path: PathBuf::from(format!("segment{n}")),
        frames: Some(vec![1, 2, 3]),
    };
    checkpoints.queue(closed(1));
    checkpoints.queue(closed(2));
    checkpoints.queue(closed(3));
    let kept: Vec<bool> = checkpoints.lock().queued.iter().map(|c| c.frames.is_some()).collect();
    assert_eq!(
        kept,
        [true, false, false],
        "later ones are read from disk when their turn comes"
    );
}

/// Wait (bounded) until the checkpoint thread has a spare ready.
fn await_spare(disk: &Disk) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !disk.checkpoints.lock().spare_ready {
        assert!(Instant::now() < deadline, "no spare was prepared");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn new_segments_are_made_from_zero_filled_spares_this_process_prepared() {
    let dir = tempfile::tempdir().unwrap();
    // A spare from an earlier process: its blocks may never have reached the disk, so what
    // reads as zeros now need not after a crash. It is replaced, never used.
    std::fs::write(dir.path().join(wal::SPARE_NAME), b"PWAL left by a crash").unwrap();
    let (disk, _) = Disk::open(dir.path()).unwrap();
    await_spare(&disk);
    let spare = std::fs::read(dir.path().join(wal::SPARE_NAME)).unwrap();
    assert_eq!(spare.len() as u64, SPARE_MIN_BYTES);
    assert!(
        spare.iter().all(|&b| b == 0),
        "a fresh spare, zero-filled by this process"
    );

    let state = state_json(presence_core::Availability::Busy, presence_core::Activity::InACall);
    let batch = Batch {
        records: vec![Record {
            storage_key: "t1/u1".into(),
            state_json: state.clone(),
            outbox: None,
        }],
        durable: true,
        ..Batch::default()
    };
    disk.write_batch(&batch).unwrap();
    // Closing the segment (here on demand; normally every 2 s) starts the next from the spare.
    disk.checkpoint_now().unwrap();
    let current = disk.lock_wal().log.path().to_path_buf();
    assert_eq!(std::fs::metadata(&current).unwrap().len(), SPARE_MIN_BYTES);
    disk.write_batch(&batch).unwrap();
    assert_eq!(
        std::fs::metadata(&current).unwrap().len(),
        SPARE_MIN_BYTES,
        "written in place"
    );
    assert_eq!(wal::read_frames(&current).unwrap().len(), 1);
    // And the checkpoint thread prepares the next spare.
    await_spare(&disk);
    drop(disk);
    let (_disk, loaded) = Disk::open(dir.path()).unwrap();
    assert_eq!(serde_json::to_vec(&loaded.users[0].1).unwrap(), state);
}
