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

use anyhow::{Context, Result, bail, ensure};
use chunk_core::Salt;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

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

/// Adds a fresh random salt to the file (creating it), makes it current and returns its id.
pub fn new_salt(path: &Path) -> Result<u32> {
    let mut file = if path.exists() {
        read(path)?
    } else {
        SaltFile::default()
    };
    let id = file.salt.iter().map(|s| s.id).max().unwrap_or(0) + 1;
    let mut secret = Zeroizing::new([0u8; 32]);
    getrandom::fill(secret.as_mut())
        .map_err(|e| anyhow::anyhow!("reading the system random source: {e}"))?;
    file.salt.push(SaltEntry {
        id,
        secret: hex::encode(secret.as_ref()),
    });
    file.current = id;
    let text = Zeroizing::new(toml::to_string(&file).context("encoding the salt file")?);
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
        .with_context(|| {
            format!(
                "{}: current salt {} is not in the file",
                path.display(),
                file.current
            )
        })?;
    let mut secret = [0u8; 32];
    hex::decode_to_slice(&entry.secret, &mut secret)
        .with_context(|| format!("{}: salt {} is not 64 hex digits", path.display(), entry.id))?;
    let salt = Salt::new(entry.id, secret);
    zeroize::Zeroize::zeroize(&mut secret);
    Ok(salt)
}

fn read(path: &Path) -> Result<SaltFile> {
    let meta =
        fs::metadata(path).with_context(|| format!("opening salt file {}", path.display()))?;
    let mode = meta.permissions().mode();
    if mode & 0o077 != 0 {
        bail!(
            "salt file {} is accessible by group or others (mode {:o}); run `chmod 600 {}`",
            path.display(),
            mode & 0o777,
            path.display()
        );
    }
    let text = Zeroizing::new(
        fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?,
    );
    let file: SaltFile = toml::from_str(&text)
        .with_context(|| format!("{} is not a lode salt file", path.display()))?;
    ensure!(
        !file.salt.is_empty(),
        "{} holds no salt; run `lode salt new {}`",
        path.display(),
        path.display()
    );
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
            .with_context(|| format!("creating {}", dir.display()))?;
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
        .with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
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
}
