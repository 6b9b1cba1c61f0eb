//! Daemon duties of `celery worker`'s flags: `--umask`, `-D/--detach`, `--uid/--gid` (drop
//! privileges once the log and pid files are open, before any task runs), and the
//! environment Celery's own `--result-backend` and `--skip-checks` hand to the app.
//!
//! All of it runs in [`crate::main_with`] before the async runtime starts: the process has
//! one thread then, so forking (detach) and changing the environment are safe.

use nix::unistd::{Gid, Group, Uid, User};

use crate::cli::RunArgs;
use crate::error::StartupError;

/// The user and group to become, resolved (and checked) before anything is opened.
#[derive(Debug, Default)]
pub struct Privileges {
    target: Option<(Uid, Gid, String)>,
}

/// Parses `--umask` (octal, as Celery reads it: `027`, `0o027`).
pub fn parse_umask(text: &str) -> Result<u32, String> {
    let digits = text.trim().trim_start_matches("0o");
    u32::from_str_radix(digits, 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| format!("--umask {text:?}: not an octal mode from 0 to 777"))
}

/// Applies `--umask`, sets what `--result-backend` and `--skip-checks` hand to a Python app
/// (as `celery` sets `CELERY_RESULT_BACKEND` and `CELERY_SKIP_CHECKS`) and resolves
/// `--uid/--gid`.
pub fn prepare(run: &RunArgs) -> Result<Privileges, StartupError> {
    if let Some(text) = &run.umask {
        let mode = parse_umask(text).map_err(StartupError::Config)?;
        nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(mode));
    }
    // SAFETY (both): before the runtime starts, this process has a single thread.
    if let Some(b) = &run.result_backend {
        #[allow(unsafe_code)]
        unsafe {
            std::env::set_var("CELERY_RESULT_BACKEND", b)
        };
    }
    if run.skip_checks {
        #[allow(unsafe_code)]
        unsafe {
            std::env::set_var("CELERY_SKIP_CHECKS", "true")
        };
    }
    resolve(run.uid.as_deref(), run.gid.as_deref())
}

/// `--uid`/`--gid` (names or numbers) as ids; the group defaults to the user's own. Only root
/// can become another user: anyone else asking is refused, not ignored.
pub fn resolve(uid: Option<&str>, gid: Option<&str>) -> Result<Privileges, StartupError> {
    if uid.is_none() && gid.is_none() {
        return Ok(Privileges::default());
    }
    let bad = |what: &str, v: &str, e: String| StartupError::Config(format!("--{what} {v}: {e}"));
    let user = match uid {
        Some(v) => {
            let found = match v.parse::<u32>() {
                Ok(n) => User::from_uid(Uid::from_raw(n)),
                Err(_) => User::from_name(v),
            };
            Some(
                found
                    .map_err(|e| bad("uid", v, e.to_string()))?
                    .ok_or_else(|| bad("uid", v, "no such user".into()))?,
            )
        }
        None => None,
    };
    let group = match gid {
        Some(v) => {
            let found = match v.parse::<u32>() {
                Ok(n) => Group::from_gid(Gid::from_raw(n)),
                Err(_) => Group::from_name(v),
            };
            Some(
                found
                    .map_err(|e| bad("gid", v, e.to_string()))?
                    .ok_or_else(|| bad("gid", v, "no such group".into()))?,
            )
        }
        None => None,
    };
    let uid = user.as_ref().map_or(Uid::current(), |u| u.uid);
    let gid = match (&group, &user) {
        (Some(g), _) => g.gid,
        (None, Some(u)) => u.gid,
        (None, None) => Gid::current(),
    };
    let name = user
        .map(|u| u.name)
        .unwrap_or_else(|| uid.as_raw().to_string());
    if !Uid::effective().is_root() && (uid != Uid::effective() || gid != Gid::effective()) {
        return Err(StartupError::Config(format!(
            "--uid/--gid: only root can run as another user ({name}); start it as that user \
             instead"
        )));
    }
    Ok(Privileges {
        target: Some((uid, gid, name)),
    })
}

impl Privileges {
    /// Becomes the target user and group (supplementary groups: the user's own), for good.
    pub fn drop_now(&self) -> Result<(), StartupError> {
        let Some((uid, gid, name)) = &self.target else {
            return Ok(());
        };
        let fail = |what: &str, e: nix::Error| {
            StartupError::Runtime(format!("cannot drop privileges to {name} ({what}): {e}"))
        };
        if Uid::effective().is_root() {
            let cname = std::ffi::CString::new(name.as_str()).unwrap_or_default();
            nix::unistd::initgroups(&cname, *gid)
                .or_else(|_| nix::unistd::setgroups(&[*gid]))
                .map_err(|e| fail("groups", e))?;
        }
        nix::unistd::setgid(*gid).map_err(|e| fail("gid", e))?;
        nix::unistd::setuid(*uid).map_err(|e| fail("uid", e))?;
        tracing::info!(uid = uid.as_raw(), gid = gid.as_raw(), "Running as {name}.");
        Ok(())
    }
}

/// `-D/--detach`: into the background (fork, new session, stdio to /dev/null), staying in
/// the current directory (`--workdir` already moved there). Without a log file the log would
/// go nowhere: said on the terminal before it goes.
pub fn detach(has_logfile: bool) -> Result<(), StartupError> {
    if !has_logfile {
        eprintln!(
            "worker: detaching without --logfile (worker.logfile): the log goes to /dev/null"
        );
    }
    nix::unistd::daemon(true, false)
        .map_err(|e| StartupError::Runtime(format!("cannot detach: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn umasks_are_octal() {
        assert_eq!(parse_umask("027"), Ok(0o027));
        assert_eq!(parse_umask("0o22"), Ok(0o22));
        assert!(parse_umask("999").is_err());
        assert!(parse_umask("rwx").is_err());
    }

    #[test]
    fn users_and_groups_resolve_by_name_or_number() {
        let me = Uid::current().as_raw();
        let p = resolve(Some(&me.to_string()), None).unwrap();
        assert_eq!(p.target.as_ref().map(|t| t.0.as_raw()), Some(me));
        let e = resolve(Some("no-such-user-celeryd"), None).unwrap_err();
        assert!(e.to_string().contains("no such user"), "{e}");
        assert!(resolve(None, None).unwrap().target.is_none());
    }
}
