//! Process hardening for the long-running processes that hold keys (the
//! mount daemon, the NBD server).

use crate::error::{Error, Result};

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

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;

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
