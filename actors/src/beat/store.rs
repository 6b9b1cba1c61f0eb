//! The schedule database (`-s/--schedule`, `[beat] schedule_db`): each entry's last run and
//! run count in RocksDB, like the statedb, so that a restart (kill -9 included) neither runs
//! an entry twice nor skips it. Synchronous; writes go through RocksDB's write-ahead log
//! (which a crashed process does not lose) without an fsync per run.
//!
//! Keys: `e:<entry name>` -> `{"last_run_at": <epoch seconds>, "total_run_count": <n>}`.

use std::path::Path;

use rocksdb::{DB, IteratorMode, Options};
use serde::{Deserialize, Serialize};

use crate::error::StoreError;

const PREFIX: &[u8] = b"e:";

/// What is kept of an entry.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// When it last ran (what its next run is counted from), seconds since the epoch.
    pub last_run_at: f64,
    /// How many times it ran.
    pub total_run_count: u64,
}

/// An open schedule database.
#[derive(Debug)]
pub struct ScheduleStore {
    db: DB,
}

impl ScheduleStore {
    /// Opens (creating if missing) the database at `path`. A path that cannot be used (held
    /// by another scheduler, not a directory) or a corrupt database is an error: nothing is
    /// reset.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.set_paranoid_checks(true);
        opts.set_keep_log_file_num(2);
        let db = DB::open(&opts, path).map_err(|e| StoreError::OpenSchedule {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Ok(ScheduleStore { db })
    }

    /// Every stored entry.
    pub fn load(&self) -> Result<Vec<(String, Record)>, StoreError> {
        let mut out = Vec::new();
        for item in self.db.iterator(IteratorMode::Start) {
            let (key, value) = item.map_err(|e| StoreError::Io(e.to_string()))?;
            let Some(name) = key.strip_prefix(PREFIX) else {
                continue;
            };
            let name = String::from_utf8_lossy(name).into_owned();
            let record: Record = serde_json::from_slice(&value)
                .map_err(|e| StoreError::Corrupt(format!("entry {name}: {e}")))?;
            out.push((name, record));
        }
        Ok(out)
    }

    /// Keeps `record` for `name`.
    pub fn put(&self, name: &str, record: Record) -> Result<(), StoreError> {
        let value = serde_json::to_vec(&record).map_err(|e| StoreError::Io(e.to_string()))?;
        self.db
            .put(key(name), value)
            .map_err(|e| StoreError::Io(e.to_string()))
    }

    /// Forgets entries no longer in the schedule (Celery's `merge_inplace` drops them too).
    pub fn remove(&self, name: &str) -> Result<(), StoreError> {
        self.db
            .delete(key(name))
            .map_err(|e| StoreError::Io(e.to_string()))
    }
}

fn key(name: &str) -> Vec<u8> {
    [PREFIX, name.as_bytes()].concat()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn survives_reopening_and_refuses_a_second_opener() {
        let dir = tempfile::tempdir().unwrap();
        let r = Record {
            last_run_at: 1.5,
            total_run_count: 3,
        };
        {
            let s = ScheduleStore::open(dir.path()).unwrap();
            s.put("a", r).unwrap();
            s.put("b", r).unwrap();
            s.remove("b").unwrap();
            let e = ScheduleStore::open(dir.path()).unwrap_err();
            assert!(e.to_string().contains("beat schedule"), "{e}");
        }
        let s = ScheduleStore::open(dir.path()).unwrap();
        assert_eq!(s.load().unwrap(), vec![("a".to_owned(), r)]);
    }
}
