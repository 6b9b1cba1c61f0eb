//! Statedb load benchmark: a worker restarting with 100,000 persisted revoked ids must have
//! them loaded (RocksDB open + read + in-memory set) within 200 ms.
//! Run: `cargo bench --profile dev --bench revoke_load` (BENCH_REVOKED=100000).
#![allow(clippy::unwrap_used, missing_docs)] // a benchmark

use std::time::{Duration, Instant};

use celeryd_actors::revoke::store::RevokeStore;
use celeryd_actors::revoke::{DEFAULT_EXPIRES, now_ms, restore};

fn main() {
    let n: usize = std::env::var("BENCH_REVOKED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("statedb");
    {
        let store = RevokeStore::open(&path).unwrap();
        let now = now_ms();
        let ids: Vec<String> = (0..n).map(|_| uuid::Uuid::new_v4().to_string()).collect();
        for chunk in ids.chunks(10_000) {
            store.add(chunk, now).unwrap();
        }
    }
    let mut runs = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let store = RevokeStore::open(&path).unwrap();
        let (set, stale) = restore(
            store.load().unwrap(),
            n.max(50_000),
            DEFAULT_EXPIRES,
            now_ms(),
        );
        store.remove(&stale).unwrap();
        let elapsed = t.elapsed();
        assert_eq!(set.len(), n);
        runs.push(elapsed);
        drop(store);
    }
    runs.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!("statedb load of {n} revoked ids (open + read + set), 5 runs:");
    println!(
        "  median {:.1} ms, min {:.1} ms, max {:.1} ms (target ≤ 200 ms)",
        ms(runs[2]),
        ms(runs[0]),
        ms(runs[4])
    );
}
