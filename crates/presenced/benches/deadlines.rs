//! Micro-benchmarks of the embedded store's deadline index (`DeadlineIndex`): the one ordered set
//! the sweeper plans from, updated on every commit that moves a user's next deadline.
//!
//! Big indexes are built once, outside the timed loops; every instant is a fixed `Timestamp`.
//!
//! Run (quick): `cargo bench -p presenced --bench deadlines -- --warm-up-time 1 --measurement-time 2`
use criterion::{criterion_group, criterion_main, Criterion};
use jiff::{SignedDuration, Timestamp};
use presence_core::{TenantId, UserId, UserKey};
use presenced::store::embedded::deadlines::DeadlineIndex;
use presenced::store::embedded::key_hash::{KeyHash, KeyHasher};
use std::hint::black_box;
use std::time::{Duration, Instant};

const TENANT: &str = "0f7a3c2e-5b1d-4e8f-9a6c-3d2b1e0f4a5c";

/// 2026-01-01T09:00:00Z, a constant so timed loops do not parse it.
const T0: Timestamp = Timestamp::constant(1_767_258_000, 0);

/// A GUID-shaped user id (what Graph clients send), distinct per `i`.
fn key(i: u64) -> UserKey {
    let id = format!("{:08x}-{:04x}-4000-8000-{:012x}", mix(i) as u32, i & 0xffff, i);
    UserKey::new(
        TenantId::parse(TENANT).expect("tenant"),
        UserId::parse(&id).expect("user"),
    )
}

/// A cheap deterministic scramble, so deadlines land all over the tree rather than in order.
fn mix(i: u64) -> u64 {
    let mut x = i.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Deadlines spread over the next 4 hours (the longest session expiration), in milliseconds.
fn deadline(i: u64) -> Timestamp {
    T0 + SignedDuration::from_millis((mix(i) % (4 * 3600 * 1000)) as i64)
}

/// Key `i` with its hash. The store hashes a key once, on the worker that queues the commit, so
/// the timed loops below take hashes made beforehand, as the writer thread does.
fn hashed(hasher: &KeyHasher, i: u64) -> (UserKey, KeyHash) {
    let k = key(i);
    let hash = hasher.hash(&k);
    (k, hash)
}

/// An index of `n` keys `0..n` with scrambled deadlines.
fn index(hasher: &KeyHasher, n: u64) -> DeadlineIndex {
    let index = DeadlineIndex::default();
    for i in 0..n {
        let (k, hash) = hashed(hasher, i);
        index.set(hash, &k, Some(deadline(i)));
    }
    index
}

/// After every deadline of `index`: everything is due.
fn far_future() -> Timestamp {
    T0 + SignedDuration::from_hours(5)
}

fn deadlines(c: &mut Criterion) {
    const N: u64 = 100_000;
    let mut group = c.benchmark_group("deadlines");
    let hasher = KeyHasher::new();

    // Insert a key the index has not seen into an index of 100k. The keys are made before the clock
    // starts and removed after it stops, so every timed insert meets an index of ~100k.
    let idx = index(&hasher, N);
    let fresh: Vec<(UserKey, KeyHash, Timestamp)> = (N..N + 50_000)
        .map(|i| {
            let (k, hash) = hashed(&hasher, i);
            (k, hash, deadline(i))
        })
        .collect();
    group.bench_function("insert/100k", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            let mut left = iters;
            while left > 0 {
                let chunk = left.min(fresh.len() as u64) as usize;
                let started = Instant::now();
                for (k, hash, at) in &fresh[..chunk] {
                    black_box(idx.set(*hash, k, Some(*at)));
                }
                total += started.elapsed();
                for (k, hash, _) in &fresh[..chunk] {
                    idx.set(*hash, k, None);
                }
                left -= chunk as u64;
            }
            total
        })
    });

    // Renew: an existing key moves to a later deadline (a keep-alive), cycling through all 100k
    // keys. Lazy: the key's tree entry stays where it is until the sweeper reaches it.
    let keys: Vec<(UserKey, KeyHash)> = (0..N).map(|i| hashed(&hasher, i)).collect();
    let mut round: u64 = 0;
    let base = far_future();
    group.bench_function("renew/100k", |b| {
        b.iter(|| {
            round += 1;
            let (k, hash) = &keys[(round % N) as usize];
            let later = base + SignedDuration::from_millis(round as i64);
            black_box(idx.set(*hash, black_box(k), Some(later)))
        })
    });
    // Bring forward: an existing key moves to an earlier deadline, which moves its tree entry at
    // once (the sweeper must wake for it). Each round is earlier than the last.
    group.bench_function("bring-forward/100k", |b| {
        b.iter(|| {
            round += 1;
            let (k, hash) = &keys[(round % N) as usize];
            let earlier = T0 - SignedDuration::from_millis(round as i64);
            black_box(idx.set(*hash, black_box(k), Some(earlier)))
        })
    });
    drop(idx);

    // Pop: what the sweeper does per user, `due(now, 1)` then removing the key once handled. Popped
    // keys are put back (untimed) in chunks, so the index stays between 50k and 100k keys.
    let idx = index(&hasher, N);
    let now = far_future();
    group.bench_function("pop/100k", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            let mut left = iters;
            let mut popped: Vec<UserKey> = Vec::with_capacity((N / 2) as usize);
            while left > 0 {
                let chunk = left.min(N / 2);
                let started = Instant::now();
                for _ in 0..chunk {
                    let due = idx.due(black_box(now), 1);
                    let k = due.into_iter().next().expect("an entry is due");
                    idx.set(hasher.hash(&k), &k, None);
                    popped.push(k);
                }
                total += started.elapsed();
                for (i, k) in popped.drain(..).enumerate() {
                    idx.set(hasher.hash(&k), &k, Some(deadline(i as u64)));
                }
                left -= chunk;
            }
            total
        })
    });
    drop(idx);
    group.finish();

    // One sweeper batch from a big index: the first 1000 due of 1M.
    let mut group = c.benchmark_group("deadlines-1M");
    group.sample_size(50);
    let big = index(&hasher, 1_000_000);
    group.bench_function("due(now, 1000)/1M", |b| {
        b.iter(|| black_box(big.due(black_box(now), 1000)))
    });
    group.bench_function("due(now, 1000)/1M, nothing due", |b| {
        b.iter(|| black_box(big.due(black_box(T0), 1000)))
    });
    group.finish();
}

criterion_group!(benches, deadlines);
criterion_main!(benches);
