//! `LocalKms`: master keys in a keyring file on local disk.
//!
//! # Keyring file
//!
//! UTF-8 text, mode 0600. The first line is `lode-keyring v1`; then one line
//! per key version: `NAME VERSION HEX`, where `NAME` is 1 to 64 characters of
//! `[A-Za-z0-9._-]`, `VERSION` a decimal number from 1, and `HEX` the 32-byte
//! master key as 64 lowercase hex digits. Empty lines and lines starting with
//! `#` are ignored. The highest version of a name is its primary version.
//!
//! # Key ids
//!
//! `NAME` means the primary version of that key; `NAME@VERSION` one version.
//! Resolved ids (as reported in [`DataKey::key_id`]) always carry the version.
//!
//! # Wrapped blob (version 1)
//!
//! | bytes | field |
//! |---|---|
//! | 4 | magic `LKW` followed by format byte `0x01` |
//! | 1 | `n`, length of the key name |
//! | n | key name |
//! | 4 | key version, `u32` little-endian |
//! | 12 | random nonce |
//! | 48 | AES-256-GCM ciphertext of the 32-byte data key, then the 16-byte tag |
//!
//! The GCM key is the named master key version; the AAD is the header (the
//! first `9 + n` bytes) followed by [`encode_context`](crate::encode_context)
//! of the encryption context, so neither the key id nor the context can be
//! changed without failing authentication.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
#[cfg(feature = "testing")]
use std::sync::Mutex;
use std::sync::RwLock;

use chunk_core::{CryptoProvider, TAG_LEN};
use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::{DataKey, EncryptionContext, Kms, KmsFuture, WrappedKey, encode_context};

const HEADER_LINE: &str = "lode-keyring v1";
const BLOB_MAGIC: [u8; 4] = *b"LKW\x01";
const NONCE_LEN: usize = 12;
const SEALED_LEN: usize = 32 + TAG_LEN;
const MAX_NAME: usize = 64;

type Versions = BTreeMap<u32, Zeroizing<[u8; 32]>>;

/// A KMS whose master keys live in a local keyring file.
///
/// All its crypto (AES-256-GCM, random data keys, nonces and master keys)
/// runs on the [`CryptoProvider`] it is given, so one choice of backend
/// covers chunks, manifests and the keyring.
///
/// Cheap to share behind an `Arc`; methods take `&self`. `Debug` lists key
/// names and versions, never key bytes.
pub struct LocalKms {
    path: Option<PathBuf>,
    keys: RwLock<BTreeMap<String, Versions>>,
    provider: &'static dyn CryptoProvider,
    rng: Rng,
}

enum Rng {
    Os,
    #[cfg(feature = "testing")]
    Seeded(Mutex<(u64, u64)>),
}

impl Rng {
    fn fill(&self, provider: &dyn CryptoProvider, out: &mut [u8]) -> Result<()> {
        match self {
            Rng::Os => provider
                .fill_random(out)
                .map_err(|source| Error::Random { source }),
            #[cfg(feature = "testing")]
            Rng::Seeded(state) => {
                let mut state = state.lock().unwrap_or_else(|p| p.into_inner());
                for block in out.chunks_mut(32) {
                    let (seed, counter) = *state;
                    let mut input = b"lode LocalKms test rng".to_vec();
                    input.extend_from_slice(&seed.to_le_bytes());
                    input.extend_from_slice(&counter.to_le_bytes());
                    let digest = provider.sha256(&input);
                    block.copy_from_slice(&digest[..block.len()]);
                    state.1 = counter.wrapping_add(1);
                }
                Ok(())
            }
        }
    }
}

impl fmt::Debug for LocalKms {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalKms")
            .field("path", &self.path)
            .field("keys", &self.key_versions())
            .field("provider", &self.provider.name())
            .finish_non_exhaustive()
    }
}

impl LocalKms {
    /// Opens an existing keyring file; `provider` runs its crypto.
    ///
    /// Fails with [`Error::InsecurePermissions`] when group or others have any
    /// access to it.
    pub fn open(provider: &'static dyn CryptoProvider, path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let keys = read_keyring(path)?;
        Ok(Self {
            path: Some(path.to_path_buf()),
            keys: RwLock::new(keys),
            provider,
            rng: Rng::Os,
        })
    }

    /// Creates a new keyring file (mode 0600; fails if the file exists) with
    /// one fresh key [`DEFAULT_KEY_NAME`] at version 1, and opens it.
    pub fn create(provider: &'static dyn CryptoProvider, path: impl AsRef<Path>) -> Result<Self> {
        Self::create_with_key(provider, path, DEFAULT_KEY_NAME)
    }

    /// Like [`create`](Self::create), with the first key named `name`.
    pub fn create_with_key(
        provider: &'static dyn CryptoProvider,
        path: impl AsRef<Path>,
        name: &str,
    ) -> Result<Self> {
        new_keyring_with_key(provider, path.as_ref(), name)?;
        Self::open(provider, path)
    }

    /// An in-memory keyring from given key material, with no file behind it
    /// (for embedding and tests). Entries are `(name, version, key)`.
    pub fn from_keys<I>(provider: &'static dyn CryptoProvider, keys: I) -> Result<Self>
    where
        I: IntoIterator<Item = (String, u32, [u8; 32])>,
    {
        let mut map: BTreeMap<String, Versions> = BTreeMap::new();
        for (name, version, key) in keys {
            let key = Zeroizing::new(key);
            check_name(&name)?;
            if version == 0 {
                return Err(Error::InvalidKeyId {
                    key_id: name,
                    reason: "versions start at 1",
                });
            }
            map.entry(name).or_default().insert(version, key);
        }
        Ok(Self {
            path: None,
            keys: RwLock::new(map),
            provider,
            rng: Rng::Os,
        })
    }

    /// Replaces the random number generator by a deterministic one seeded
    /// with `seed`, so data keys and nonces repeat from run to run. For golden
    /// tests only: never use it for real keys.
    #[cfg(feature = "testing")]
    pub fn with_test_rng(mut self, seed: u64) -> Self {
        self.rng = Rng::Seeded(Mutex::new((seed, 0)));
        self
    }

    /// The crypto backend this keyring runs on.
    pub fn provider(&self) -> &'static dyn CryptoProvider {
        self.provider
    }

    /// The keyring file, if this keyring has one.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Key names with their versions, ascending. No key material.
    pub fn key_versions(&self) -> Vec<(String, Vec<u32>)> {
        self.read_keys()
            .iter()
            .map(|(n, v)| (n.clone(), v.keys().copied().collect()))
            .collect()
    }

    /// Adds a new version of key `name` that becomes its primary version, and
    /// saves the keyring file (atomically) when there is one. Returns the new
    /// resolved key id.
    pub fn rotate_key(&self, name: &str) -> Result<String> {
        self.update(name, false)
    }

    /// Adds a new key `name` at version 1 and saves the keyring file when
    /// there is one. Returns the resolved key id.
    pub fn add_key(&self, name: &str) -> Result<String> {
        self.update(name, true)
    }

    fn update(&self, name: &str, new_name: bool) -> Result<String> {
        check_name(name)?;
        let mut fresh = Zeroizing::new([0u8; 32]);
        self.rng.fill(self.provider, fresh.as_mut())?;
        let mut keys = self.keys.write().unwrap_or_else(|p| p.into_inner());
        // With a file: lock it, and start from what is on disk now, so changes
        // made meanwhile by other processes are kept, not overwritten.
        let _lock = match &self.path {
            Some(path) => Some(lock_keyring(path)?),
            None => None,
        };
        let mut next = match &self.path {
            Some(path) => read_keyring(path)?,
            None => keys.clone(),
        };
        let version = match (next.get_mut(name), new_name) {
            (Some(_), true) => {
                return Err(Error::KeyExists {
                    name: name.to_owned(),
                });
            }
            (None, false) => {
                return Err(Error::KeyNotFound {
                    key_id: name.to_owned(),
                });
            }
            (None, true) => {
                next.entry(name.to_owned()).or_default().insert(1, fresh);
                1
            }
            (Some(versions), false) => {
                let v = versions
                    .keys()
                    .next_back()
                    .copied()
                    .unwrap_or(0)
                    .checked_add(1)
                    .ok_or(Error::InvalidKeyId {
                        key_id: name.to_owned(),
                        reason: "no versions left",
                    })?;
                versions.insert(v, fresh);
                v
            }
        };
        if let Some(path) = &self.path {
            write_keyring_atomic(path, &next)?;
        }
        *keys = next;
        Ok(format!("{name}@{version}"))
    }

    fn read_keys(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Versions>> {
        self.keys.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Resolves a caller's key id to (name, version, key).
    fn resolve(&self, key_id: &str) -> Result<(String, u32, Zeroizing<[u8; 32]>)> {
        let (name, version) = parse_key_id(key_id)?;
        let keys = self.read_keys();
        let not_found = || Error::KeyNotFound {
            key_id: key_id.to_owned(),
        };
        let versions = keys.get(name).ok_or_else(not_found)?;
        let (v, key) = match version {
            Some(v) => (v, versions.get(&v).ok_or_else(not_found)?),
            None => versions
                .iter()
                .next_back()
                .map(|(v, k)| (*v, k))
                .ok_or_else(not_found)?,
        };
        Ok((name.to_owned(), v, key.clone()))
    }

    fn wrap(
        &self,
        key_id: &str,
        plaintext: &[u8; 32],
        ctx: &EncryptionContext,
    ) -> Result<WrappedKey> {
        let (name, version, master) = self.resolve(key_id)?;
        let mut blob = Vec::with_capacity(9 + name.len() + NONCE_LEN + SEALED_LEN);
        blob.extend_from_slice(&BLOB_MAGIC);
        // Names are at most 64 bytes (checked when loaded).
        blob.push(name.len() as u8);
        blob.extend_from_slice(name.as_bytes());
        blob.extend_from_slice(&version.to_le_bytes());
        let header_len = blob.len();
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(self.provider, &mut nonce)?;
        let mut aad = blob.clone();
        aad.extend_from_slice(&encode_context(ctx));
        // Sealed in place in a buffer with room for the tag, so it never
        // reallocates and leaves a copy of the data key behind.
        let mut sealed = Zeroizing::new(Vec::with_capacity(SEALED_LEN));
        sealed.extend_from_slice(plaintext);
        self.provider
            .aes256gcm_seal_in_place(&master, &nonce, &aad, &mut sealed)
            .map_err(|_| Error::Wrap {
                key_id: format!("{name}@{version}"),
                reason: "AES-256-GCM encryption failed",
            })?;
        debug_assert_eq!(blob.len(), header_len);
        blob.extend_from_slice(&nonce);
        blob.extend_from_slice(&sealed);
        Ok(WrappedKey {
            wrapped: blob,
            key_id: format!("{name}@{version}"),
        })
    }

    fn unwrap(
        &self,
        requested: Option<&str>,
        blob: &[u8],
        ctx: &EncryptionContext,
    ) -> Result<Zeroizing<[u8; 32]>> {
        let cannot = || Error::CannotUnwrap {
            key_id: requested.map(str::to_owned),
        };
        let wanted = match requested {
            Some(id) => {
                let (name, version) = parse_key_id(id)?;
                if !self.read_keys().contains_key(name) {
                    return Err(Error::KeyNotFound {
                        key_id: id.to_owned(),
                    });
                }
                Some((name, version))
            }
            None => None,
        };
        let parsed = parse_blob(blob).ok_or_else(cannot)?;
        if let Some((name, version)) = wanted
            && (parsed.name != name || version.is_some_and(|v| v != parsed.version))
        {
            return Err(cannot());
        }
        let master = {
            let keys = self.read_keys();
            keys.get(parsed.name)
                .and_then(|v| v.get(&parsed.version))
                .cloned()
                .ok_or_else(cannot)?
        };
        let mut aad = parsed.header.to_vec();
        aad.extend_from_slice(&encode_context(ctx));
        let nonce: &[u8; NONCE_LEN] = parsed.nonce.try_into().map_err(|_| cannot())?;
        let mut plain = Zeroizing::new(parsed.sealed.to_vec());
        self.provider
            .aes256gcm_open_in_place(&master, nonce, &aad, &mut plain)
            .map_err(|_| cannot())?;
        if plain.len() != 32 {
            return Err(cannot());
        }
        let mut out = Zeroizing::new([0u8; 32]);
        out.copy_from_slice(&plain);
        Ok(out)
    }
}

struct ParsedBlob<'a> {
    header: &'a [u8],
    name: &'a str,
    version: u32,
    nonce: &'a [u8],
    sealed: &'a [u8],
}

fn parse_blob(blob: &[u8]) -> Option<ParsedBlob<'_>> {
    let rest = blob.strip_prefix(&BLOB_MAGIC)?;
    let (&n, rest) = rest.split_first()?;
    let n = usize::from(n);
    if rest.len() != n + 4 + NONCE_LEN + SEALED_LEN {
        return None;
    }
    let name = std::str::from_utf8(&rest[..n]).ok()?;
    let version = u32::from_le_bytes(rest[n..n + 4].try_into().ok()?);
    let header_len = BLOB_MAGIC.len() + 1 + n + 4;
    Some(ParsedBlob {
        header: &blob[..header_len],
        name,
        version,
        nonce: &blob[header_len..header_len + NONCE_LEN],
        sealed: &blob[header_len + NONCE_LEN..],
    })
}

impl Kms for LocalKms {
    fn generate_data_key<'a>(
        &'a self,
        key_id: &'a str,
        ctx: &'a EncryptionContext,
    ) -> KmsFuture<'a, DataKey> {
        Box::pin(async move {
            let mut plaintext = Zeroizing::new([0u8; 32]);
            self.rng.fill(self.provider, plaintext.as_mut())?;
            let wrapped = self.wrap(key_id, &plaintext, ctx)?;
            Ok(DataKey::new(plaintext, wrapped.wrapped, wrapped.key_id))
        })
    }

    fn encrypt<'a>(
        &'a self,
        key_id: &'a str,
        plaintext: &'a [u8; 32],
        ctx: &'a EncryptionContext,
    ) -> KmsFuture<'a, WrappedKey> {
        Box::pin(async move { self.wrap(key_id, plaintext, ctx) })
    }

    fn decrypt<'a>(
        &'a self,
        wrapped: &'a [u8],
        ctx: &'a EncryptionContext,
    ) -> KmsFuture<'a, Zeroizing<[u8; 32]>> {
        Box::pin(async move { self.unwrap(None, wrapped, ctx) })
    }

    fn decrypt_with_key<'a>(
        &'a self,
        key_id: &'a str,
        wrapped: &'a [u8],
        ctx: &'a EncryptionContext,
    ) -> KmsFuture<'a, Zeroizing<[u8; 32]>> {
        Box::pin(async move { self.unwrap(Some(key_id), wrapped, ctx) })
    }
}

fn check_name(name: &str) -> Result<()> {
    let bad = |reason| Error::InvalidKeyId {
        key_id: name.chars().take(100).collect(),
        reason,
    };
    if name.is_empty() || name.len() > MAX_NAME {
        return Err(bad("key names are 1 to 64 characters"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(bad("key names use only A-Z a-z 0-9 . _ -"));
    }
    Ok(())
}

/// Splits `NAME` or `NAME@VERSION`.
fn parse_key_id(key_id: &str) -> Result<(&str, Option<u32>)> {
    let (name, version) = match key_id.split_once('@') {
        None => (key_id, None),
        Some((name, v)) => {
            let version = v
                .parse::<u32>()
                .ok()
                .filter(|v| *v > 0)
                .filter(|parsed| parsed.to_string() == v)
                .ok_or_else(|| Error::InvalidKeyId {
                    key_id: key_id.chars().take(100).collect(),
                    reason: "expected NAME or NAME@VERSION with VERSION a number from 1",
                })?;
            (name, Some(version))
        }
    };
    check_name(name)?;
    Ok((name, version))
}

/// The name of the first key of a keyring made by [`new_keyring`].
pub const DEFAULT_KEY_NAME: &str = "default";

/// Creates a new keyring file at `path` (mode 0600; fails if it exists)
/// holding one fresh key [`DEFAULT_KEY_NAME`] at version 1, drawn from
/// `provider`'s random generator. Returns its resolved key id (`default@1`).
/// Backs `lode keyring new`.
pub fn new_keyring(
    provider: &'static dyn CryptoProvider,
    path: impl AsRef<Path>,
) -> Result<String> {
    new_keyring_with_key(provider, path, DEFAULT_KEY_NAME)
}

/// Like [`new_keyring`], with the first key named `name`.
pub fn new_keyring_with_key(
    provider: &'static dyn CryptoProvider,
    path: impl AsRef<Path>,
    name: &str,
) -> Result<String> {
    let path = path.as_ref();
    check_name(name)?;
    let mut fresh = Zeroizing::new([0u8; 32]);
    Rng::Os.fill(provider, fresh.as_mut())?;
    let mut keys = BTreeMap::new();
    keys.insert(name.to_owned(), Versions::from([(1, fresh)]));
    let io = |source| Error::KeyringIo {
        path: path.to_path_buf(),
        source,
    };
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    // The mode above is filtered by the umask; make sure it is exactly 0600.
    file.set_permissions(fs::Permissions::from_mode(0o600))
        .map_err(io)?;
    let text = serialize(&keys);
    file.write_all(text.as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)?;
    sync_parent(path)?;
    Ok(format!("{name}@1"))
}

/// Adds a new key `name` at version 1 to the keyring file at `path`. Backs
/// `lode keyring add`.
pub fn add_key(
    provider: &'static dyn CryptoProvider,
    path: impl AsRef<Path>,
    name: &str,
) -> Result<String> {
    LocalKms::open(provider, path)?.add_key(name)
}

/// Adds a new primary version of key `name` to the keyring file at `path`;
/// older versions stay and keep unwrapping. Returns the new resolved key id.
/// Backs `lode keyring rotate`.
///
/// The file is replaced atomically (write, fsync, rename) while an exclusive
/// advisory lock (`flock` on `.NAME.lock` beside it) is held, and the keyring
/// is re-read under that lock: concurrent `add`/`rotate` calls, from threads
/// or processes, are serialized and none loses another's version (tested by
/// `concurrent_rotations_never_lose_a_version`). The lock is advisory: other
/// programs editing the file, or filesystems where `flock` does not reach
/// other hosts (some NFS setups), are not coordinated.
pub fn rotate(
    provider: &'static dyn CryptoProvider,
    path: impl AsRef<Path>,
    name: &str,
) -> Result<String> {
    LocalKms::open(provider, path)?.rotate_key(name)
}

fn serialize(keys: &BTreeMap<String, Versions>) -> Zeroizing<String> {
    let mut out = Zeroizing::new(String::new());
    out.push_str(HEADER_LINE);
    out.push('\n');
    for (name, versions) in keys {
        for (version, key) in versions {
            let hex = Zeroizing::new(hex::encode(key.as_ref()));
            out.push_str(name);
            out.push(' ');
            out.push_str(&version.to_string());
            out.push(' ');
            out.push_str(&hex);
            out.push('\n');
        }
    }
    out
}

fn read_keyring(path: &Path) -> Result<BTreeMap<String, Versions>> {
    let io = |source| Error::KeyringIo {
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::open(path).map_err(io)?;
    // Check the opened file itself (fstat), not the path, so a swap between
    // check and read cannot slip past.
    let meta = file.metadata().map_err(io)?;
    if !meta.is_file() {
        return Err(io(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file",
        )));
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(Error::InsecurePermissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    let mut text = Zeroizing::new(String::new());
    file.read_to_string(&mut text).map_err(io)?;
    parse(path, &text)
}

fn parse(path: &Path, text: &str) -> Result<BTreeMap<String, Versions>> {
    let bad = |line: usize, reason| Error::KeyringFormat {
        path: path.to_path_buf(),
        line,
        reason,
    };
    let mut lines = text.lines().enumerate().map(|(i, l)| (i + 1, l.trim()));
    match lines.next() {
        Some((_, HEADER_LINE)) => {}
        _ => return Err(bad(1, "first line must be `lode-keyring v1`")),
    }
    let mut keys: BTreeMap<String, Versions> = BTreeMap::new();
    for (n, line) in lines {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fields = line.split_ascii_whitespace();
        let (Some(name), Some(version), Some(hex_key), None) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            return Err(bad(n, "expected `NAME VERSION HEX`"));
        };
        check_name(name).map_err(|_| bad(n, "invalid key name"))?;
        let version: u32 = version
            .parse()
            .ok()
            .filter(|v| *v > 0)
            .ok_or_else(|| bad(n, "version must be a number from 1"))?;
        if hex_key.len() != 64 || hex_key.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(bad(n, "key must be 64 lowercase hex digits"));
        }
        let mut key = Zeroizing::new([0u8; 32]);
        hex::decode_to_slice(hex_key, key.as_mut())
            .map_err(|_| bad(n, "key must be 64 lowercase hex digits"))?;
        if keys
            .entry(name.to_owned())
            .or_default()
            .insert(version, key)
            .is_some()
        {
            return Err(bad(n, "duplicate key version"));
        }
    }
    Ok(keys)
}

/// An exclusive advisory lock (`flock`) on `.NAME.lock` beside the keyring
/// file, held while the keyring is read, changed and replaced, so concurrent
/// keyring commands never lose a key version. Released on drop.
struct KeyringLock(#[allow(dead_code)] File);

fn lock_keyring(path: &Path) -> Result<KeyringLock> {
    use std::os::fd::AsRawFd;
    let lock_path = sibling(path, ".lock")?;
    let io = |source| Error::KeyringIo {
        path: lock_path.clone(),
        source,
    };
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&lock_path)
        .map_err(io)?;
    loop {
        // SAFETY: `file` owns an open descriptor for the whole call.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
        if rc == 0 {
            return Ok(KeyringLock(file));
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            return Err(io(err));
        }
    }
}

/// `DIR/.FILE<suffix>` for keyring `DIR/FILE`.
fn sibling(path: &Path, suffix: &str) -> Result<PathBuf> {
    let file_name = path.file_name().ok_or_else(|| Error::KeyringIo {
        path: path.to_path_buf(),
        source: std::io::Error::other("keyring path has no file name"),
    })?;
    let mut name = std::ffi::OsString::from(".");
    name.push(file_name);
    name.push(suffix);
    Ok(path.with_file_name(name))
}

fn write_keyring_atomic(path: &Path, keys: &BTreeMap<String, Versions>) -> Result<()> {
    let io = |source| Error::KeyringIo {
        path: path.to_path_buf(),
        source,
    };
    // Callers hold the keyring lock, so a leftover temporary file is stale.
    let tmp = sibling(path, ".tmp")?;
    let _ = fs::remove_file(&tmp);
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        file.set_permissions(fs::Permissions::from_mode(0o600))?;
        file.write_all(serialize(keys).as_bytes())?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(io(e));
    }
    sync_parent(path)
}

fn sync_parent(path: &Path) -> Result<()> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(parent)
        .and_then(|d| d.sync_all())
        .map_err(|source| Error::KeyringIo {
            path: parent.to_path_buf(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use aes_gcm::aead::{Aead, KeyInit, Payload};
    use aes_gcm::{Aes256Gcm, Nonce};

    use super::*;
    use crate::block_on;

    fn providers() -> &'static [&'static dyn CryptoProvider] {
        let all = chunk_core::enabled_providers();
        assert!(!all.is_empty(), "no crypto backend compiled in");
        all
    }

    fn ctx(image: &str) -> EncryptionContext {
        EncryptionContext::from([("lode:image".to_owned(), image.to_owned())])
    }

    #[test]
    fn key_ids_parse() {
        assert_eq!(parse_key_id("a-b.c_1").unwrap(), ("a-b.c_1", None));
        assert_eq!(parse_key_id("k@12").unwrap(), ("k", Some(12)));
        for bad in [
            "",
            "k@",
            "k@0",
            "k@01",
            "k@x",
            "a b",
            "k@1@2",
            "ü",
            &"x".repeat(65),
        ] {
            assert!(
                matches!(parse_key_id(bad), Err(Error::InvalidKeyId { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn keyring_text_round_trips_and_rejects_bad_lines() {
        let p = Path::new("k");
        let mut keys = BTreeMap::new();
        keys.insert(
            "a".to_owned(),
            Versions::from([(1, Zeroizing::new([1; 32])), (2, Zeroizing::new([2; 32]))]),
        );
        let text = serialize(&keys);
        let back = parse(p, &text).unwrap();
        assert_eq!(back.len(), 1);
        assert_eq!(*back["a"][&2], [2; 32]);
        let key = "ab".repeat(32);
        for (bad, line) in [
            ("nope\n".to_owned(), 1),
            (format!("{HEADER_LINE}\na 1\n"), 2),
            (format!("{HEADER_LINE}\na 0 {key}\n"), 2),
            (format!("{HEADER_LINE}\n# c\na 1 {}\n", "AB".repeat(32)), 3),
            (format!("{HEADER_LINE}\na 1 {key}\na 1 {key}\n"), 3),
            (format!("{HEADER_LINE}\na@ 1 {key}\n"), 2),
        ] {
            match parse(p, &bad) {
                Err(Error::KeyringFormat { line: l, .. }) => assert_eq!(l, line, "{bad}"),
                other => panic!("{bad}: {other:?}"),
            }
        }
    }

    #[test]
    fn format_errors_never_quote_key_material() {
        let secret = "5a".repeat(31) + "zz";
        let text = format!("{HEADER_LINE}\nk 1 {secret}\n");
        let err = parse(Path::new("k"), &text).unwrap_err();
        let all = format!("{err} {err:?}");
        assert!(!all.contains("5a5a"), "{all}");
    }

    #[test]
    fn blob_layout_matches_docs() {
        for &p in providers() {
            let kms = LocalKms::from_keys(p, [("img".to_owned(), 3, [7; 32])]).unwrap();
            let dk = block_on(kms.generate_data_key("img", &ctx("x"))).unwrap();
            assert_eq!(dk.key_id, "img@3");
            let b = &dk.wrapped;
            assert_eq!(b.len(), 4 + 1 + 3 + 4 + 12 + 48);
            assert_eq!(&b[..4], b"LKW\x01");
            assert_eq!(b[4], 3);
            assert_eq!(&b[5..8], b"img");
            assert_eq!(&b[8..12], &3u32.to_le_bytes());
            // Decrypt by hand with the documented AAD.
            let mut aad = b[..12].to_vec();
            aad.extend_from_slice(&encode_context(&ctx("x")));
            let plain = Aes256Gcm::new((&[7u8; 32]).into())
                .decrypt(
                    Nonce::from_slice(&b[12..24]),
                    Payload {
                        msg: &b[24..],
                        aad: &aad,
                    },
                )
                .unwrap();
            assert_eq!(plain, dk.plaintext());
        }
    }

    #[test]
    fn explicit_version_and_key_checks() {
        for &p in providers() {
            let kms = LocalKms::from_keys(
                p,
                [
                    ("a".to_owned(), 1, [1; 32]),
                    ("a".to_owned(), 2, [2; 32]),
                    ("b".to_owned(), 1, [3; 32]),
                ],
            )
            .unwrap();
            let c = ctx("x");
            let dk = block_on(kms.generate_data_key("a@1", &c)).unwrap();
            assert_eq!(dk.key_id, "a@1");
            assert!(block_on(kms.decrypt_with_key("a", &dk.wrapped, &c)).is_ok());
            assert!(block_on(kms.decrypt_with_key("a@1", &dk.wrapped, &c)).is_ok());
            for wrong in ["a@2", "b"] {
                assert!(matches!(
                    block_on(kms.decrypt_with_key(wrong, &dk.wrapped, &c)),
                    Err(Error::CannotUnwrap { key_id: Some(k) }) if k == wrong
                ));
            }
            assert!(matches!(
                block_on(kms.decrypt_with_key("zz", &dk.wrapped, &c)),
                Err(Error::KeyNotFound { .. })
            ));
            assert!(matches!(
                block_on(kms.generate_data_key("a@9", &c)),
                Err(Error::KeyNotFound { .. })
            ));
        }
    }
}
