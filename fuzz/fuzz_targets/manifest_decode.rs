//! Arbitrary bytes never panic the manifest decoder, and every accepted input
//! is the one canonical encoding of what it decodes to.
//!
//! From `fuzz/`, on the stable toolchain (as `scripts/test.sh` does):
//! `RUSTC_BOOTSTRAP=1 cargo fuzz run -O -s none manifest_decode -- -max_total_time=60`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = manifest::SealedManifest::decode(data) {
        assert_eq!(m.encode(), data, "decoder accepted a non-canonical encoding");
        assert_eq!(m.names().count(), m.chunk_count());
        let _ = m.public_digest(&chunk_core::RustCrypto);
        let _ = format!("{m:?}");
    }
});
