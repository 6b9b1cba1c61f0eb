//! The statedb: revoked ids (and their revocation time) in RocksDB, so they survive restarts
//! and kill -9. Synchronous; the registry calls it off the async threads.
//!
//! Keys: `r:<task id>` -> revocation time (ms since the epoch, big-endian u64).

use std::path::Path;

use rocksdb::{DB, IteratorMode, Options, WriteBatch};

use crate::error::StoreError;

const PREFIX: &[u8] = b"r:";

/// An open statedb.
#[derive(Debug)]
pub struct RevokeStore {
    db: DB,
}

impl RevokeStore {
    /// Opens (creating if missing) the statedb at `path`. A path that cannot be used or a
    /// corrupt database is an error: nothing is reset.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.set_paranoid_checks(true);
        opts.set_keep_log_file_num(2);
        let db = DB::open(&opts, path).map_err(|e| StoreError::Open {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Ok(RevokeStore { db })
    }

    /// Every stored (id, revoked-at ms).
    pub fn load(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let mut out = Vec::new();
        for item in self.db.iterator(IteratorMode::Start) {
            let (key, value) = item.map_err(|e| StoreError::Io(e.to_string()))?;
            let Some(id) = key.strip_prefix(PREFIX) else {
                continue;
            };
            let at = <[u8; 8]>::try_from(value.as_ref())
                .map(u64::from_be_bytes)
                .map_err(|_| {
                    StoreError::Corrupt(format!(
                        "bad timestamp for {}",
                        String::from_utf8_lossy(id)
                    ))
                })?;
            out.push((String::from_utf8_lossy(id).into_owned(), at));
        }
        Ok(out)
    }

    /// Records revoked ids, all revoked at `at_ms` (one write).
    pub fn add(&self, ids: &[String], at_ms: u64) -> Result<(), StoreError> {
        let timed: Vec<(String, u64)> = ids.iter().map(|id| (id.clone(), at_ms)).collect();
        self.add_at(&timed)
    }

    /// Records revoked ids, each with its own time (one write).
    pub fn add_at(&self, ids: &[(String, u64)]) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut batch = WriteBatch::default();
        for (id, at_ms) in ids {
            batch.put(key(id), at_ms.to_be_bytes());
        }
        self.db
            .write(batch)
            .map_err(|e| StoreError::Io(e.to_string()))
    }

    /// Forgets ids (expired or over the cap).
    pub fn remove(&self, ids: &[String]) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut batch = WriteBatch::default();
        for id in ids {
            batch.delete(key(id));
        }
        self.db
            .write(batch)
            .map_err(|e| StoreError::Io(e.to_string()))
    }
}

fn key(id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(PREFIX.len() + id.len());
    k.extend_from_slice(PREFIX);
    k.extend_from_slice(id.as_bytes());
    k
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = RevokeStore::open(dir.path()).unwrap();
            s.add(&["a".into(), "b".into()], 1000).unwrap();
            s.remove(&["a".into()]).unwrap();
        }
        let s = RevokeStore::open(dir.path()).unwrap();
        assert_eq!(s.load().unwrap(), vec![("b".to_owned(), 1000)]);
    }

    #[test]
    fn unusable_or_corrupt_databases_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("plain-file");
        std::fs::write(&file, b"not a directory").unwrap();
        assert!(matches!(
            RevokeStore::open(&file),
            Err(StoreError::Open { .. })
        ));
        let db = dir.path().join("db");
        drop(RevokeStore::open(&db).unwrap());
        let current = std::fs::read_to_string(db.join("CURRENT")).unwrap();
        std::fs::write(db.join(current.trim()), b"garbage garbage garbage").unwrap();
        let err = RevokeStore::open(&db).unwrap_err();
        assert!(matches!(err, StoreError::Open { .. }), "{err:?}");
    }
}
