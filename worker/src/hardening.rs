//! Process hardening for the long-running processes that hold keys (the
//! mount daemon, the NBD server).

use std::path::Path;

use crate::error::{Error, Result};

/// Raises the soft open-file limit to the hard one (as Go programs do at
/// start): flattening keeps a spool file open per layer, and a mount keeps
/// cache files and connections open; a soft limit of 1024 is common.
pub fn raise_open_file_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write one rlimit we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                tracing::debug!("could not raise the open-file limit");
            }
        }
    }
}

/// Marks this process not dumpable (`prctl(PR_SET_DUMPABLE, 0)`): no core
/// dump on a crash, and no `ptrace` or `/proc/<pid>/mem` access by any user
/// but root (with `CAP_SYS_PTRACE`). A process serving an image holds the
/// chunk keys of its manifest and decrypted chunks in memory; a core file or
/// a debugger attached by another local user would reveal them.
///
/// [`spawn_daemon`](crate::spawn_daemon) calls it in the daemon; call it at
/// the start of any other process that serves an image (`lode mount
/// --foreground`, `lode serve-nbd`). Children created by `fork` inherit the
/// setting; `execve` resets it.
pub fn make_undumpable() -> Result<()> {
    // SAFETY: prctl with PR_SET_DUMPABLE takes integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) } != 0 {
        return Err(Error::Hardening {
            step: "prctl(PR_SET_DUMPABLE, 0)",
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Whether this process is dumpable (`prctl(PR_GET_DUMPABLE)`): `false`
/// after [`make_undumpable`].
pub fn is_dumpable() -> Result<bool> {
    // SAFETY: prctl with PR_GET_DUMPABLE takes integer arguments only.
    match unsafe { libc::prctl(libc::PR_GET_DUMPABLE, 0, 0, 0, 0) } {
        -1 => Err(Error::Hardening {
            step: "prctl(PR_GET_DUMPABLE)",
            source: std::io::Error::last_os_error(),
        }),
        n => Ok(n != 0),
    }
}

/// Creates `dir` (and its parents) if missing and makes it mode 0700, for
/// what only root may reach: the mount state directory (`/run/lode`) holds
/// the FUSE mounts whose files are whole decrypted images, and the default
/// NBD sockets live in `/run/lode/nbd`. An existing directory (one made by
/// an older version with mode 0755) is tightened too.
pub fn create_private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| Error::io("creating directory", dir, e))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| Error::io("restricting to its owner (mode 0700)", dir, e))
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;

    #[test]
    fn private_dir_is_0700_even_when_it_existed_open() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        let fresh = tmp.path().join("a/b");
        create_private_dir(&fresh).unwrap();
        assert_eq!(mode(&fresh), 0o700);
        let old = tmp.path().join("old");
        std::fs::create_dir(&old).unwrap();
        std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o755)).unwrap();
        create_private_dir(&old).unwrap();
        assert_eq!(mode(&old), 0o700);
    }

    const CHILD_ENV: &str = "LODE_WORKER_TEST_UNDUMPABLE_CHILD";

    /// Runs in a child process (the flag is process-wide): reports the flag
    /// before and after `make_undumpable`.
    #[test]
    #[ignore = "helper process for make_undumpable_clears_the_dumpable_flag"]
    fn undumpable_child() {
        if std::env::var_os(CHILD_ENV).is_none() {
            return;
        }
        println!("BEFORE {}", is_dumpable().unwrap());
        make_undumpable().unwrap();
        println!("AFTER {}", is_dumpable().unwrap());
    }

    #[test]
    fn make_undumpable_clears_the_dumpable_flag() {
        let out = Command::new(std::env::current_exe().unwrap())
            .args([
                "hardening::tests::undumpable_child",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, "1")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{out:?}");
        assert!(stdout.contains("BEFORE true"), "{stdout}");
        assert!(stdout.contains("AFTER false"), "{stdout}");
    }
}
