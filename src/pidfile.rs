//! `--pidfile`: the main process's pid in a file, as daemon tools expect. A pid in it that is
//! alive refuses the start (another worker runs); a dead one is stale and replaced. The file
//! is removed on exit; a SIGHUP re-exec keeps the same pid, so it finds its own pid there.

use std::io::Write as _;
use std::path::{Path, PathBuf};

/// The written pidfile, removed when dropped (if it still holds this process's pid).
#[derive(Debug)]
pub struct Pidfile {
    path: PathBuf,
    pid: u32,
}

/// What an existing pidfile says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Existing {
    /// No file, or nothing usable in it.
    Absent,
    /// This very process (after a SIGHUP re-exec).
    Own,
    /// Another live process.
    Live(i32),
    /// A process that is gone.
    Stale(i32),
}

/// Classifies the contents of a pidfile for process `own`, with `alive` telling whether a pid
/// runs. Pure.
pub fn classify(contents: Option<&str>, own: u32, alive: impl Fn(i32) -> bool) -> Existing {
    let Some(pid) = contents.and_then(|c| c.trim().parse::<i32>().ok()) else {
        return Existing::Absent;
    };
    if u32::try_from(pid).ok() == Some(own) {
        Existing::Own
    } else if pid > 0 && alive(pid) {
        Existing::Live(pid)
    } else {
        Existing::Stale(pid)
    }
}

fn alive(pid: i32) -> bool {
    use nix::errno::Errno;
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None) {
        Ok(()) => true,
        Err(Errno::EPERM) => true,
        Err(_) => false,
    }
}

impl Pidfile {
    /// Writes this process's pid to `path`, or says why not.
    pub fn acquire(path: &Path) -> Result<Pidfile, String> {
        let own = std::process::id();
        let contents = std::fs::read_to_string(path).ok();
        match classify(contents.as_deref(), own, alive) {
            Existing::Live(pid) => {
                return Err(format!(
                    "pidfile {} already exists: a worker runs as pid {pid}",
                    path.display()
                ));
            }
            Existing::Stale(pid) => {
                tracing::warn!(
                    "Removing stale pidfile {} (pid {pid} is not running).",
                    path.display()
                );
            }
            Existing::Own | Existing::Absent => {}
        }
        let write = || -> std::io::Result<()> {
            let tmp = path.with_extension("pid.tmp");
            let mut f = std::fs::File::create(&tmp)?;
            writeln!(f, "{own}")?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)
        };
        write().map_err(|e| format!("cannot write pidfile {}: {e}", path.display()))?;
        Ok(Pidfile {
            path: path.to_owned(),
            pid: own,
        })
    }
}

impl Drop for Pidfile {
    fn drop(&mut self) {
        let ours = std::fs::read_to_string(&self.path)
            .ok()
            .and_then(|c| c.trim().parse::<u32>().ok())
            == Some(self.pid);
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_own_stale_and_absent() {
        let alive = |p: i32| p == 42;
        assert_eq!(classify(None, 7, alive), Existing::Absent);
        assert_eq!(classify(Some("junk"), 7, alive), Existing::Absent);
        assert_eq!(classify(Some("7\n"), 7, alive), Existing::Own);
        assert_eq!(classify(Some("42\n"), 7, alive), Existing::Live(42));
        assert_eq!(classify(Some("43"), 7, alive), Existing::Stale(43));
    }

    #[test]
    fn writes_refuses_replaces_and_removes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.pid");
        std::fs::write(&path, "999999999\n").unwrap();
        let p = Pidfile::acquire(&path).unwrap();
        let written = std::fs::read_to_string(&path).unwrap();
        assert_eq!(written.trim(), std::process::id().to_string());
        // Our own pid there (a re-exec): accepted.
        let again = Pidfile::acquire(&path).unwrap();
        std::mem::forget(again);
        drop(p);
        assert!(!path.exists());
        // pid 1 is alive.
        std::fs::write(&path, "1\n").unwrap();
        let e = Pidfile::acquire(&path).unwrap_err();
        assert!(e.contains("pid 1"), "{e}");
    }
}
