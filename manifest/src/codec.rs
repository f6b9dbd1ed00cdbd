//! The canonical encoding of a [`SealedManifest`] (format versions 1 and 2;
//! the layout is in the crate docs): [`SealedManifest::encode`] and
//! [`SealedManifest::decode`], and the public part the sealed keys are bound
//! to. No crypto here: decoding needs no key.

use chunk_core::{ChunkName, TAG_LEN};
use kms_envelope::EncryptionContext;

use crate::error::{Error, Result};
use crate::table::ChunkTable;
use crate::{
    FORMAT_VERSION, MAGIC, OLDEST_FORMAT_VERSION, PublicPart, SealedManifest, check_context,
    chunk_count, is_valid_chunk_size,
};

impl SealedManifest {
    /// The canonical encoding (see the crate docs for the layout).
    pub fn encode(&self) -> Vec<u8> {
        let present = self.present_count();
        let mut out = Vec::with_capacity(
            128 + self.names.len() / 8
                + present * 64
                + self.key_id.len()
                + self.wrapped.len()
                + self
                    .context
                    .iter()
                    .map(|(k, v)| 4 + k.len() + v.len())
                    .sum::<usize>(),
        );
        encode_public(&mut out, &self.public, &self.names);
        put_str16(&mut out, self.key_id.as_bytes());
        put_u16(&mut out, self.context.len());
        for (k, v) in &self.context {
            put_str16(&mut out, k.as_bytes());
            put_str16(&mut out, v.as_bytes());
        }
        put_str16(&mut out, &self.wrapped);
        if self.public.version >= 2 {
            // Validated to fit when sealed or decoded.
            out.extend_from_slice(&(self.sealed_keys.len() as u32).to_le_bytes());
        }
        out.extend_from_slice(&self.sealed_keys);
        out
    }

    /// Decodes a sealed manifest. Needs no key; checks structure and
    /// canonical form, not authenticity (that is [`open`](Self::open)'s job).
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let mut r = Reader { bytes, pos: 0 };
        if r.take("magic", 4)? != MAGIC {
            return Err(Error::BadMagic);
        }
        let version = r.u16("format version")?;
        if !(OLDEST_FORMAT_VERSION..=FORMAT_VERSION).contains(&version) {
            return Err(Error::UnsupportedVersion {
                found: version,
                supported: FORMAT_VERSION,
            });
        }
        let source_ref = r.str16("source reference")?;
        let source_digest = r.str16("source digest")?;
        let image_size = r.u64("image size")?;
        let at = r.pos;
        let chunk_size = r.u32("chunk size")?;
        let salt_id = r.u32("salt id")?;
        let tool_version = r.str16("tool version")?;
        let count_at = r.pos;
        let count = r.u32("chunk count")?;
        if !is_valid_chunk_size(chunk_size) {
            return Err(r.malformed("chunk size", at, "not a power of two from 4 KiB to 16 MiB"));
        }
        let Some(expected) = chunk_count(image_size, chunk_size) else {
            return Err(r.malformed("chunk size", at, "chunk size is 0"));
        };
        if expected != u64::from(count) {
            return Err(r.malformed(
                "chunk count",
                count_at,
                "does not match image size and chunk size",
            ));
        }
        let count = count as usize;
        let bitmap_at = r.pos;
        let bitmap = r.take("presence bitmap", count.div_ceil(8))?;
        if !count.is_multiple_of(8) && bitmap[bitmap.len() - 1] >> (count % 8) != 0 {
            return Err(r.malformed("presence bitmap", bitmap_at, "padding bits are not zero"));
        }
        let present: usize = bitmap.iter().map(|b| b.count_ones() as usize).sum();
        let names_bytes = r.take("chunk names", present * 32)?;
        let names = names_bytes
            .chunks_exact(32)
            .map(|n| {
                let mut raw = [0u8; 32];
                raw.copy_from_slice(n);
                ChunkName::from_bytes(raw)
            })
            .collect();
        let names = ChunkTable::from_parts(count, bitmap.to_vec(), names);
        let key_id_at = r.pos;
        let key_id = r.str16("key id")?;
        if key_id.is_empty() {
            return Err(r.malformed("key id", key_id_at, "empty"));
        }
        let ctx_at = r.pos;
        let entries = r.u16("context entry count")?;
        let mut context = EncryptionContext::new();
        let mut last: Option<String> = None;
        for _ in 0..entries {
            let key_at = r.pos;
            let k = r.str16("context key")?;
            let v = r.str16("context value")?;
            if last.as_ref().is_some_and(|l| l.as_bytes() >= k.as_bytes()) {
                return Err(r.malformed("context key", key_at, "keys not strictly ascending"));
            }
            last = Some(k.clone());
            context.insert(k, v);
        }
        if let Err(reason) = check_context(&context) {
            return Err(r.malformed("encryption context", ctx_at, reason));
        }
        let wrapped_at = r.pos;
        let wrapped = r.bytes16("wrapped data key")?.to_vec();
        if wrapped.is_empty() {
            return Err(r.malformed("wrapped data key", wrapped_at, "empty"));
        }
        let sealed_keys = if version == 1 {
            r.take("sealed keys", present * 32 + TAG_LEN)?.to_vec()
        } else {
            let len_at = r.pos;
            let len = r.u32("sealed part length")? as usize;
            // Keys, the config's presence byte, the tag.
            if len < present * 32 + 1 + TAG_LEN {
                return Err(r.malformed(
                    "sealed part length",
                    len_at,
                    "shorter than the chunk keys, a config flag and the tag",
                ));
            }
            r.take("sealed part", len)?.to_vec()
        };
        if r.pos != bytes.len() {
            return Err(r.malformed("end", r.pos, "trailing bytes after the sealed keys"));
        }
        Ok(SealedManifest {
            public: PublicPart {
                version,
                source_ref,
                source_digest,
                image_size,
                chunk_size,
                salt_id,
                tool_version,
            },
            names,
            key_id,
            context,
            wrapped,
            sealed_keys,
        })
    }
}

pub(crate) fn encode_public(out: &mut Vec<u8>, p: &PublicPart, names: &ChunkTable) {
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&p.version.to_le_bytes());
    put_str16(out, p.source_ref.as_bytes());
    put_str16(out, p.source_digest.as_bytes());
    out.extend_from_slice(&p.image_size.to_le_bytes());
    out.extend_from_slice(&p.chunk_size.to_le_bytes());
    out.extend_from_slice(&p.salt_id.to_le_bytes());
    put_str16(out, p.tool_version.as_bytes());
    // Validated to fit when sealed or decoded.
    out.extend_from_slice(&(names.len() as u32).to_le_bytes());
    out.extend_from_slice(names.bitmap());
    for n in names.present_names() {
        out.extend_from_slice(n.as_bytes());
    }
}

/// Lengths are validated to fit 16 bits before anything is encoded.
fn put_u16(out: &mut Vec<u8>, v: usize) {
    out.extend_from_slice(&(v as u16).to_le_bytes());
}

fn put_str16(out: &mut Vec<u8>, s: &[u8]) {
    put_u16(out, s.len());
    out.extend_from_slice(s);
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, field: &'static str, n: usize) -> Result<&'a [u8]> {
        let available = self.bytes.len() - self.pos;
        if n > available {
            return Err(Error::Truncated {
                field,
                offset: self.pos,
                needed: n,
                available,
            });
        }
        let out = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }
    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(field, N)?);
        Ok(out)
    }
    fn u16(&mut self, field: &'static str) -> Result<u16> {
        self.array(field).map(u16::from_le_bytes)
    }
    fn u32(&mut self, field: &'static str) -> Result<u32> {
        self.array(field).map(u32::from_le_bytes)
    }
    fn u64(&mut self, field: &'static str) -> Result<u64> {
        self.array(field).map(u64::from_le_bytes)
    }
    fn bytes16(&mut self, field: &'static str) -> Result<&'a [u8]> {
        let n = self.u16(field)?;
        self.take(field, usize::from(n))
    }
    fn str16(&mut self, field: &'static str) -> Result<String> {
        let at = self.pos;
        let raw = self.bytes16(field)?;
        std::str::from_utf8(raw)
            .map(str::to_owned)
            .map_err(|_| self.malformed(field, at, "not UTF-8"))
    }
    fn malformed(&self, field: &'static str, offset: usize, reason: &'static str) -> Error {
        Error::Malformed {
            field,
            offset,
            reason,
        }
    }
}

#[cfg(test)]
mod tests {
    use chunk_core::{ChunkKey, ChunkRef};

    use super::*;
    use crate::{Manifest, image_context};

    fn sample(kms: &kms_envelope::LocalKms) -> SealedManifest {
        let m = Manifest {
            source_ref: "r".into(),
            source_digest: "d".into(),
            image_size: 2 * 4096 + 2,
            chunk_size: 4096,
            salt_id: 9,
            tool_version: "t".into(),
            chunks: vec![
                None,
                Some(ChunkRef {
                    name: ChunkName::from_bytes([1; 32]),
                    key: ChunkKey::from_bytes([2; 32]),
                }),
                None,
            ],
        };
        kms_envelope::block_on(m.seal(kms.provider(), kms, "k", &image_context("img"))).unwrap()
    }

    #[test]
    fn layout_offsets_match_docs() {
        let kms = kms_envelope::LocalKms::from_keys(
            &chunk_core::RustCrypto,
            [("k".to_owned(), 1, [5; 32])],
        )
        .unwrap();
        let b = sample(&kms).encode();
        assert_eq!(&b[..4], b"LODM");
        assert_eq!(&b[4..6], &[2, 0]);
        assert_eq!(&b[6..9], &[1, 0, b'r']);
        assert_eq!(&b[9..12], &[1, 0, b'd']);
        assert_eq!(&b[12..20], &8194u64.to_le_bytes());
        assert_eq!(&b[20..24], &4096u32.to_le_bytes());
        assert_eq!(&b[24..28], &9u32.to_le_bytes());
        assert_eq!(&b[28..31], &[1, 0, b't']);
        assert_eq!(&b[31..35], &3u32.to_le_bytes());
        assert_eq!(b[35], 0b010, "bitmap: only chunk 1 present");
        assert_eq!(&b[36..68], &[1; 32]);
        assert_eq!(&b[68..73], &[3, 0, b'k', b'@', b'1']);
        assert_eq!(&b[73..75], &[1, 0]);
        assert_eq!(&b[75..87], b"\x0a\x00lode:image");
        assert_eq!(&b[87..92], b"\x03\x00img");
        let wrapped_len = usize::from(u16::from_le_bytes([b[92], b[93]]));
        assert_eq!(wrapped_len, 4 + 1 + 1 + 4 + 12 + 48);
        let sealed_at = 94 + wrapped_len;
        // Sealed part: one key, the config flag (no config), the tag.
        assert_eq!(
            &b[sealed_at..sealed_at + 4],
            &(32u32 + 1 + 16).to_le_bytes()
        );
        assert_eq!(b.len(), sealed_at + 4 + 32 + 1 + 16);
    }

    #[test]
    fn nonzero_bitmap_padding_is_rejected() {
        let kms = kms_envelope::LocalKms::from_keys(
            &chunk_core::RustCrypto,
            [("k".to_owned(), 1, [5; 32])],
        )
        .unwrap();
        let mut b = sample(&kms).encode();
        b[35] |= 0b1000; // bit for index 3 of a 3-chunk image
        assert!(matches!(
            SealedManifest::decode(&b),
            Err(Error::Malformed {
                field: "presence bitmap",
                ..
            })
        ));
    }

    #[test]
    fn chunk_sizes_the_chunker_does_not_cut_are_malformed() {
        let kms = kms_envelope::LocalKms::from_keys(
            &chunk_core::RustCrypto,
            [("k".to_owned(), 1, [5; 32])],
        )
        .unwrap();
        let good = sample(&kms).encode();
        assert!(SealedManifest::decode(&good).is_ok());
        for bad in [
            0u32,
            1,
            16,
            2048,
            4095,
            4097,
            6144,
            512 * 1024 + 1,
            32 << 20,
            u32::MAX,
        ] {
            let mut b = good.clone();
            b[20..24].copy_from_slice(&bad.to_le_bytes());
            match SealedManifest::decode(&b) {
                Err(Error::Malformed {
                    field: "chunk size",
                    offset: 20,
                    ..
                }) => {}
                other => panic!("chunk size {bad}: {other:?}"),
            }
        }
        for ok in [4096u32, 8192, 512 * 1024, 16 << 20] {
            assert!(is_valid_chunk_size(ok), "{ok}");
        }
        for bad in [0u32, 2048, 4095, 3 << 12, 32 << 20] {
            assert!(!is_valid_chunk_size(bad), "{bad}");
        }
    }
}
