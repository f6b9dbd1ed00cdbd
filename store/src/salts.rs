//! The pusher's secret salt file: numbered salts, one of them current.
//!
//! Format (TOML, mode 0600, refused when group or others have any access to
//! it, checked on the opened file):
//! ```toml
//! current = 2
//! [[salt]]
//! id = 1
//! secret = "64 hex digits"
//! ```
//! Workers never need this file: salts only shape chunk keys and names at push time.

use std::fs;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use chunk_core::Salt;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::error::{Error, Result};

#[derive(Serialize, Deserialize, Default)]
struct SaltFile {
    current: u32,
    #[serde(default)]
    salt: Vec<SaltEntry>,
}

#[derive(Serialize, Deserialize)]
struct SaltEntry {
    id: u32,
    secret: String,
}

fn problem(path: &Path, problem: impl Into<String>) -> Error {
    Error::SaltFile {
        path: path.to_path_buf(),
        problem: problem.into(),
    }
}

/// Adds a fresh random salt to the file (creating it), makes it current and returns its id.
///
/// The file is read, changed and replaced under an exclusive advisory lock
/// (`flock` on `NAME.lock` beside it), so concurrent calls from threads or
/// processes never lose a salt; see [`write_private`] for how it is written.
pub fn new_salt(path: &Path) -> Result<u32> {
    create_private_parent(path)?;
    let _lock = lock(path)?;
    let mut file = match read(path) {
        Ok(file) => file,
        Err(Error::File { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            SaltFile::default()
        }
        Err(e) => return Err(e),
    };
    let id = file
        .salt
        .iter()
        .map(|s| s.id)
        .max()
        .unwrap_or(0)
        .checked_add(1)
        .ok_or_else(|| problem(path, "no salt ids left"))?;
    let mut secret = Zeroizing::new([0u8; 32]);
    getrandom::fill(secret.as_mut()).map_err(Error::random)?;
    file.salt.push(SaltEntry {
        id,
        secret: hex::encode(secret.as_ref()),
    });
    file.current = id;
    let text = Zeroizing::new(
        toml::to_string(&file).map_err(|e| problem(path, format!("encoding: {e}")))?,
    );
    replace_atomically(path, text.as_bytes())?;
    Ok(id)
}

/// The current salt of the file.
pub fn current_salt(path: &Path) -> Result<Salt> {
    let file = read(path)?;
    let entry = file
        .salt
        .iter()
        .find(|s| s.id == file.current)
        .ok_or_else(|| {
            problem(
                path,
                format!("current salt {} is not in the file", file.current),
            )
        })?;
    let mut secret = Zeroizing::new([0u8; 32]);
    hex::decode_to_slice(&entry.secret, secret.as_mut())
        .map_err(|_| problem(path, format!("salt {} is not 64 hex digits", entry.id)))?;
    Ok(Salt::new(entry.id, *secret))
}

fn read(path: &Path) -> Result<SaltFile> {
    let mut f = fs::File::open(path).map_err(|e| Error::file("opening salt file", path, e))?;
    // Check the opened file (fstat), not the path, so a swap between the
    // check and the read cannot slip past.
    let meta = f
        .metadata()
        .map_err(|e| Error::file("reading the mode of", path, e))?;
    if !meta.is_file() {
        return Err(problem(path, "not a regular file"));
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(Error::SaltMode {
            path: path.to_path_buf(),
            mode,
        });
    }
    let mut text = Zeroizing::new(String::new());
    f.read_to_string(&mut text)
        .map_err(|e| Error::file("reading", path, e))?;
    // The parser's message may quote the secret: keep only where it failed.
    let file: SaltFile = toml::from_str(&text).map_err(|e| {
        let at = e
            .span()
            .map(|s| format!(" (at byte {})", s.start))
            .unwrap_or_default();
        problem(path, format!("not TOML of the expected shape{at}"))
    })?;
    if file.salt.is_empty() {
        return Err(problem(
            path,
            format!("it holds no salt; run `lode salt new {}`", path.display()),
        ));
    }
    Ok(file)
}

/// Creates the directory a secret file goes in, mode 0700 when new.
pub fn create_private_parent(path: &Path) -> Result<()> {
    if let Some(dir) = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty() && !d.exists())
    {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| Error::file("creating", dir, e))?;
    }
    Ok(())
}

/// Writes a secret file atomically with mode 0600, the way the keyring is
/// written.
///
/// Under an exclusive advisory lock (`flock` on `NAME.lock` beside the file):
/// a leftover `NAME.tmp` is removed, a new one is created with `O_EXCL`
/// (never following a symlink, never reusing a file someone else may hold
/// open) and `fchmod`ed to exactly 0600 before any byte is written, then
/// written, fsynced, renamed over `NAME`, and the directory fsynced. So the
/// secret is never readable by group or others, not even for a moment.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    create_private_parent(path)?;
    let _lock = lock(path)?;
    replace_atomically(path, bytes)
}

/// `DIR/NAME<suffix>` for file `DIR/NAME`.
fn sibling(path: &Path, suffix: &str) -> Result<PathBuf> {
    let name = path
        .file_name()
        .ok_or_else(|| problem(path, "the path has no file name"))?;
    let mut name = name.to_os_string();
    name.push(suffix);
    Ok(path.with_file_name(name))
}

/// An exclusive `flock` on `NAME.lock` beside a secret file; released on drop.
struct FileLock(#[allow(dead_code)] fs::File);

fn lock(path: &Path) -> Result<FileLock> {
    let lock_path = sibling(path, ".lock")?;
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&lock_path)
        .map_err(|e| Error::file("opening the lock file", &lock_path, e))?;
    loop {
        // SAFETY: `file` owns an open descriptor for the whole call.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } == 0 {
            return Ok(FileLock(file));
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            return Err(Error::file("locking", &lock_path, err));
        }
    }
}

/// The write behind [`write_private`]; the caller holds the lock.
fn replace_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = sibling(path, ".tmp")?;
    // We hold the lock, so a temp file left here is stale (a crash, or a
    // file planted with a wider mode or as a symlink): never write into it.
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::file("removing the stale", &tmp, e)),
    }
    let written = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        // The mode above is filtered by the umask; make it exactly 0600
        // (fchmod on the descriptor) before the secret goes in.
        f.set_permissions(fs::Permissions::from_mode(0o600))?;
        f.write_all(bytes)?;
        f.sync_all()
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(Error::file("writing", &tmp, e));
    }
    if let Err(e) = fs::rename(&tmp, path) {
        let _ = fs::remove_file(&tmp);
        return Err(Error::file("renaming into place", path, e));
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::file("syncing the directory", dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_salts_rotate_and_stay_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k/salts");
        assert_eq!(new_salt(&path).unwrap(), 1);
        let first = current_salt(&path).unwrap();
        assert_eq!(new_salt(&path).unwrap(), 2);
        let second = current_salt(&path).unwrap();
        assert_eq!((first.id(), second.id()), (1, 2));
        assert_ne!(first.expose_secret(), second.expose_secret());
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = current_salt(&path).unwrap_err().to_string();
        assert!(err.contains("group or others"), "{err}");
    }

    #[test]
    fn a_broken_salt_file_is_named_and_its_secret_not_quoted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("salts");
        write_private(
            &path,
            b"current = 1\n[[salt]]\nid = 1\nsecret = \"zz-secret\"\n",
        )
        .unwrap();
        let err = current_salt(&path).unwrap_err().to_string();
        assert!(err.contains("not 64 hex digits"), "{err}");
        assert!(!err.contains("zz-secret"), "{err}");
        write_private(&path, b"current = \"zz-secret\"\n").unwrap();
        let err = current_salt(&path).unwrap_err().to_string();
        assert!(err.contains(&path.display().to_string()), "{err}");
        assert!(!err.contains("zz-secret"), "{err}");
    }
}
