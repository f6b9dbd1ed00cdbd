//! Running `lode mount` as a daemon that returns once the mount is ready.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::PathBuf;

use crate::error::{Error, Result};

/// What [`spawn_daemon`] returns in each process.
#[derive(Debug)]
#[non_exhaustive]
pub enum Daemon {
    /// The original process: the daemon reported that it is ready. Exit 0.
    Parent {
        /// The daemon's pid.
        pid: u32,
    },
    /// The daemon: build the runtime, mount, then call
    /// [`Readiness::ready`] (or [`Readiness::fail`]) and serve.
    Child(Readiness),
}

/// How the daemon's output is handled once it is ready.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct DaemonOptions {
    /// Append stdout and stderr here after readiness (default: /dev/null).
    pub log_file: Option<PathBuf>,
}

impl DaemonOptions {
    /// Sets [`log_file`](Self::log_file).
    #[must_use]
    pub fn log_file(mut self, path: Option<PathBuf>) -> Self {
        self.log_file = path;
        self
    }
}

/// The daemon's end of the readiness pipe. Dropping it without calling
/// [`ready`](Self::ready) makes the parent fail with "exited before ready".
#[derive(Debug)]
pub struct Readiness {
    pipe: File,
    log_file: Option<PathBuf>,
}

impl Readiness {
    /// Tells the parent that the mount is ready (it exits 0), and detaches
    /// stdin/stdout/stderr from the terminal (to the log file or /dev/null).
    pub fn ready(mut self) -> Result<()> {
        redirect_stdio(self.log_file.as_deref())?;
        self.pipe
            .write_all(b"OK\n")
            .map_err(|source| Error::DaemonStart {
                step: "signalling readiness",
                source,
            })
    }

    /// Tells the parent that mounting failed; it prints `message` and exits non-zero.
    pub fn fail(mut self, message: &str) {
        let _ = self.pipe.write_all(format!("ERR {message}").as_bytes());
    }
}

/// Forks a daemon (new session, detached from the terminal) and, in the
/// parent, waits until the daemon reports readiness or failure.
///
/// The daemon is made undumpable first ([`make_undumpable`](crate::make_undumpable):
/// no core dumps, no ptrace by other users), as it will hold the image's keys.
///
/// # Safety
///
/// The calling process must have no other thread when this is called (call
/// it first thing in `main`, before building the tokio runtime or starting
/// anything that spawns threads). `fork` copies only the calling thread: a
/// lock another thread holds at that moment (in the allocator, stdio, a
/// runtime) stays locked forever in the daemon, and memory that thread was
/// changing is left half-written, so the daemon could deadlock or read
/// inconsistent data.
pub unsafe fn spawn_daemon(opts: &DaemonOptions) -> Result<Daemon> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two fds into the array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(Error::DaemonStart {
            step: "creating the readiness pipe",
            source: std::io::Error::last_os_error(),
        });
    }
    // SAFETY: both fds are fresh and owned by us from here on.
    let (read_end, write_end) =
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: the caller guarantees that no other thread exists.
    let pid = unsafe { libc::fork() };
    match pid {
        -1 => Err(Error::DaemonStart {
            step: "forking",
            source: std::io::Error::last_os_error(),
        }),
        0 => {
            drop(read_end);
            // SAFETY: setsid has no memory-safety preconditions.
            unsafe { libc::setsid() };
            let readiness = Readiness {
                pipe: File::from(write_end),
                log_file: opts.log_file.clone(),
            };
            if let Err(e) = crate::hardening::make_undumpable() {
                readiness.fail(&crate::error::Chain(&e).to_string());
                return Err(e);
            }
            Ok(Daemon::Child(readiness))
        }
        pid => {
            drop(write_end);
            let mut msg = String::new();
            let _ = File::from(read_end).read_to_string(&mut msg);
            if msg.starts_with("OK") {
                return Ok(Daemon::Parent { pid: pid as u32 });
            }
            let pid_u32 = pid as u32;
            if let Some(message) = msg.strip_prefix("ERR ") {
                return Err(Error::DaemonFailed {
                    pid: pid_u32,
                    message: message.to_owned(),
                });
            }
            // Reap it once it has exited (the pipe closes just before), so we
            // can tell how; a daemon that closed the pipe but runs on is left.
            let mut status = 0;
            let mut reaped = false;
            for _ in 0..50 {
                // SAFETY: waitpid on our own child, writing into a local.
                reaped = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) } == pid;
                if reaped {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(4));
            }
            Err(Error::DaemonExited {
                pid: pid_u32,
                status: reaped.then(|| std::os::unix::process::ExitStatusExt::from_raw(status)),
            })
        }
    }
}

fn redirect_stdio(log: Option<&std::path::Path>) -> Result<()> {
    let null = File::options()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(|e| Error::io("opening", "/dev/null", e))?;
    let out = match log {
        Some(p) => File::options()
            .create(true)
            .append(true)
            .open(p)
            .map_err(|e| Error::io("opening log file", p, e))?,
        None => null
            .try_clone()
            .map_err(|e| Error::io("duplicating", "/dev/null", e))?,
    };
    use std::os::fd::AsRawFd;
    // SAFETY: dup2 onto the standard descriptors with valid source fds.
    unsafe {
        libc::dup2(null.as_raw_fd(), 0);
        libc::dup2(out.as_raw_fd(), 1);
        libc::dup2(out.as_raw_fd(), 2);
    }
    Ok(())
}
