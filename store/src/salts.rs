//! The pusher's secret salt file: numbered salts, one of them current.
//!
//! Format (TOML, mode 0600, refused when group or others can read it):
//! ```toml
//! current = 2
//! [[salt]]
//! id = 1
//! secret = "64 hex digits"
//! ```
//! Workers never need this file: salts only shape chunk keys and names at push time.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

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
pub fn new_salt(path: &Path) -> Result<u32> {
    let mut file = if path.exists() {
        read(path)?
    } else {
        SaltFile::default()
    };
    let id = file.salt.iter().map(|s| s.id).max().unwrap_or(0) + 1;
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
    write_private(path, text.as_bytes())?;
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
    let meta = fs::metadata(path).map_err(|e| Error::file("opening salt file", path, e))?;
    let mode = meta.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(Error::SaltMode {
            path: path.to_path_buf(),
            mode: mode & 0o777,
        });
    }
    let text =
        Zeroizing::new(fs::read_to_string(path).map_err(|e| Error::file("reading", path, e))?);
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

/// Writes a secret file atomically with mode 0600 (temp file + rename).
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    create_private_parent(path)?;
    let tmp = path.with_extension("tmp");
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| Error::file("creating", &tmp, e))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| Error::file("writing", &tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| Error::file("renaming into place", path, e))?;
    Ok(())
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
