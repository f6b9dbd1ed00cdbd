//! The image's run config (entrypoint, command, environment, …), carried in
//! the sealed part of a format-2 manifest, and its canonical encoding.
//!
//! It is sealed, not public, because `Env` often holds secrets. Encoding
//! (all integers little-endian, `str32` = `u32` byte length + UTF-8):
//!
//! | size | field |
//! |---|---|
//! | 1 | `0` no entrypoint, `1` entrypoint follows as a list |
//! | list | entrypoint: `u32` count, then `str32` each |
//! | 1 + list | cmd, the same way |
//! | list | env, `KEY=VALUE` each |
//! | 3 × (1 + str32) | working dir, user, stop signal: `0` absent, `1` then the string |
//! | `u32` + pairs | labels: count, then (key, value) `str32` pairs, keys strictly ascending |
//! | list | exposed ports, strictly ascending |
//! | 3 × (1 + str32) | os, architecture, variant (each optional) |

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use zeroize::Zeroize;

use crate::error::{Error, Result};

/// How the image runs, as its OCI image config says: sealed in the
/// manifest with the chunk keys.
///
/// `Debug` prints environment variable names, never their values; the
/// environment is wiped from memory on drop.
#[derive(Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ImageConfig {
    /// `Entrypoint`; `None` when unset.
    pub entrypoint: Option<Vec<String>>,
    /// `Cmd`; `None` when unset.
    pub cmd: Option<Vec<String>>,
    /// `Env`: `KEY=VALUE` entries.
    pub env: Vec<String>,
    /// `WorkingDir`.
    pub working_dir: Option<String>,
    /// `User`: `name`, `uid`, `name:group` or `uid:gid`.
    pub user: Option<String>,
    /// `StopSignal`, e.g. `SIGTERM`.
    pub stop_signal: Option<String>,
    /// `Labels`.
    pub labels: BTreeMap<String, String>,
    /// `ExposedPorts` keys, e.g. `8080/tcp`.
    pub exposed_ports: BTreeSet<String>,
    /// Platform os, e.g. `linux`.
    pub os: Option<String>,
    /// Platform architecture, e.g. `amd64`.
    pub architecture: Option<String>,
    /// Platform variant, e.g. `v8`.
    pub variant: Option<String>,
}

impl Drop for ImageConfig {
    fn drop(&mut self) {
        for e in &mut self.env {
            e.zeroize();
        }
    }
}

impl fmt::Debug for ImageConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let env_names: Vec<&str> = self
            .env
            .iter()
            .map(|e| e.split_once('=').map_or(e.as_str(), |(k, _)| k))
            .collect();
        f.debug_struct("ImageConfig")
            .field("entrypoint", &self.entrypoint)
            .field("cmd", &self.cmd)
            .field("env_names", &env_names)
            .field("working_dir", &self.working_dir)
            .field("user", &self.user)
            .field("stop_signal", &self.stop_signal)
            .field("labels", &self.labels)
            .field("exposed_ports", &self.exposed_ports)
            .field("os", &self.os)
            .field("architecture", &self.architecture)
            .field("variant", &self.variant)
            .finish()
    }
}

impl ImageConfig {
    /// Appends the canonical encoding to `out`.
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        put_opt_list(out, self.entrypoint.as_deref());
        put_opt_list(out, self.cmd.as_deref());
        put_list(out, self.env.iter());
        for s in [&self.working_dir, &self.user, &self.stop_signal] {
            put_opt_str(out, s.as_deref());
        }
        put_u32(out, self.labels.len());
        for (k, v) in &self.labels {
            put_str(out, k);
            put_str(out, v);
        }
        put_list(out, self.exposed_ports.iter());
        for s in [&self.os, &self.architecture, &self.variant] {
            put_opt_str(out, s.as_deref());
        }
    }

    /// Checks every length fits its `u32` field.
    pub(crate) fn validate(&self) -> Result<()> {
        let too_long = |s: &String| u32::try_from(s.len()).is_err();
        let lists = [
            self.entrypoint.as_deref(),
            self.cmd.as_deref(),
            Some(&self.env[..]),
        ];
        if lists
            .iter()
            .flatten()
            .any(|l| u32::try_from(l.len()).is_err() || l.iter().any(too_long))
            || u32::try_from(self.labels.len()).is_err()
            || self.labels.iter().any(|(k, v)| too_long(k) || too_long(v))
            || u32::try_from(self.exposed_ports.len()).is_err()
            || self.exposed_ports.iter().any(too_long)
        {
            return Err(Error::Invalid {
                reason: "image config field longer than 2^32 - 1".into(),
            });
        }
        Ok(())
    }

    /// Decodes the canonical encoding; all of `bytes` must be used.
    pub(crate) fn decode(bytes: &[u8]) -> Result<Self> {
        let mut r = Reader { bytes, pos: 0 };
        let entrypoint = r.opt_list("entrypoint")?;
        let cmd = r.opt_list("cmd")?;
        let env = r.list("env")?;
        let working_dir = r.opt_str("working dir")?;
        let user = r.opt_str("user")?;
        let stop_signal = r.opt_str("stop signal")?;
        let n = r.u32("labels")?;
        let mut labels = BTreeMap::new();
        for _ in 0..n {
            let at = r.pos;
            let k = r.str("label key")?;
            let v = r.str("label value")?;
            if labels.last_key_value().is_some_and(|(l, _)| l >= &k) {
                return Err(malformed("label key", at, "keys not strictly ascending"));
            }
            labels.insert(k, v);
        }
        let at = r.pos;
        let ports = r.list("exposed ports")?;
        if ports.windows(2).any(|w| w[0] >= w[1]) {
            return Err(malformed("exposed ports", at, "not strictly ascending"));
        }
        let os = r.opt_str("os")?;
        let architecture = r.opt_str("architecture")?;
        let variant = r.opt_str("variant")?;
        if r.pos != bytes.len() {
            return Err(malformed("image config", r.pos, "trailing bytes"));
        }
        Ok(ImageConfig {
            entrypoint,
            cmd,
            env,
            working_dir,
            user,
            stop_signal,
            labels,
            exposed_ports: ports.into_iter().collect(),
            os,
            architecture,
            variant,
        })
    }
}

fn malformed(field: &'static str, offset: usize, reason: &'static str) -> Error {
    Error::MalformedConfig {
        field,
        offset,
        reason,
    }
}

/// Lengths are validated to fit 32 bits before anything is encoded.
fn put_u32(out: &mut Vec<u8>, v: usize) {
    out.extend_from_slice(&(v as u32).to_le_bytes());
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_u32(out, s.len());
    out.extend_from_slice(s.as_bytes());
}

fn put_list<'a>(out: &mut Vec<u8>, l: impl ExactSizeIterator<Item = &'a String>) {
    put_u32(out, l.len());
    for s in l {
        put_str(out, s);
    }
}

fn put_opt_list(out: &mut Vec<u8>, l: Option<&[String]>) {
    match l {
        None => out.push(0),
        Some(l) => {
            out.push(1);
            put_list(out, l.iter());
        }
    }
}

fn put_opt_str(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        None => out.push(0),
        Some(s) => {
            out.push(1);
            put_str(out, s);
        }
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn take(&mut self, field: &'static str, n: usize) -> Result<&[u8]> {
        if n > self.bytes.len() - self.pos {
            return Err(malformed(field, self.pos, "truncated"));
        }
        let out = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }
    fn u32(&mut self, field: &'static str) -> Result<usize> {
        let b = self.take(field, 4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    }
    fn flag(&mut self, field: &'static str) -> Result<bool> {
        let at = self.pos;
        match self.take(field, 1)?[0] {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(malformed(field, at, "presence flag is not 0 or 1")),
        }
    }
    fn str(&mut self, field: &'static str) -> Result<String> {
        let n = self.u32(field)?;
        let at = self.pos;
        let raw = self.take(field, n)?;
        std::str::from_utf8(raw)
            .map(str::to_owned)
            .map_err(|_| malformed(field, at, "not UTF-8"))
    }
    fn list(&mut self, field: &'static str) -> Result<Vec<String>> {
        let n = self.u32(field)?;
        // Each entry needs at least its 4-byte length: bounds the allocation.
        let mut out = Vec::with_capacity(n.min((self.bytes.len() - self.pos) / 4));
        for _ in 0..n {
            out.push(self.str(field)?);
        }
        Ok(out)
    }
    fn opt_list(&mut self, field: &'static str) -> Result<Option<Vec<String>>> {
        Ok(if self.flag(field)? {
            Some(self.list(field)?)
        } else {
            None
        })
    }
    fn opt_str(&mut self, field: &'static str) -> Result<Option<String>> {
        Ok(if self.flag(field)? {
            Some(self.str(field)?)
        } else {
            None
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> ImageConfig {
        ImageConfig {
            entrypoint: Some(vec!["/bin/sh".into(), "-c".into()]),
            cmd: None,
            env: vec!["PATH=/bin".into(), "TOKEN=s3cret".into()],
            working_dir: Some("/app".into()),
            user: Some("1000:1000".into()),
            stop_signal: Some("SIGINT".into()),
            labels: [("a".into(), "1".into()), ("b".into(), "2".into())].into(),
            exposed_ports: ["53/udp".into(), "8080/tcp".into()].into(),
            os: Some("linux".into()),
            architecture: Some("amd64".into()),
            variant: None,
        }
    }

    #[test]
    fn round_trips_and_rejects_every_truncation_and_trailing_bytes() {
        for c in [sample(), ImageConfig::default()] {
            let mut b = Vec::new();
            c.encode(&mut b);
            assert_eq!(ImageConfig::decode(&b).unwrap(), c);
            for n in 0..b.len() {
                assert!(ImageConfig::decode(&b[..n]).is_err(), "prefix {n}");
            }
            b.push(0);
            assert!(ImageConfig::decode(&b).is_err());
        }
    }

    #[test]
    fn rejects_bad_flags_and_unsorted_labels() {
        let mut b = Vec::new();
        sample().encode(&mut b);
        let mut bad = b.clone();
        bad[0] = 2;
        assert!(matches!(
            ImageConfig::decode(&bad),
            Err(Error::MalformedConfig {
                field: "entrypoint",
                offset: 0,
                ..
            })
        ));
        let mut c = ImageConfig::default();
        c.labels.insert("a".into(), String::new());
        let mut b = Vec::new();
        c.encode(&mut b);
        // Duplicate the one label: keys not strictly ascending.
        let labels_at = 1 + 1 + 4 + 3;
        b[labels_at] = 2;
        b.splice(labels_at + 4..labels_at + 4, [1, 0, 0, 0, b'a', 0, 0, 0, 0]);
        assert!(matches!(
            ImageConfig::decode(&b),
            Err(Error::MalformedConfig {
                field: "label key",
                ..
            })
        ));
    }

    #[test]
    fn debug_hides_env_values() {
        let d = format!("{:?}", sample());
        assert!(d.contains("TOKEN") && !d.contains("s3cret"), "{d}");
    }
}
