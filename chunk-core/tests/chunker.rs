//! Chunking properties: split or read, then join with holes as zeros,
//! reproduces any input of any length.

#![allow(missing_docs)]

use std::io::{self, Read};

use chunk_core::{Chunk, ChunkData, Chunker, OwnedChunkData, is_all_zero};
use proptest::prelude::*;

/// Input made of runs of zeros and of random bytes, so that whole-chunk
/// holes, partial zeros and short tails all occur.
fn input() -> impl Strategy<Value = Vec<u8>> {
    let run = prop_oneof![
        (1usize..20_000).prop_map(|n| vec![0u8; n]),
        proptest::collection::vec(any::<u8>(), 1..3000),
        (1usize..4).prop_map(|n| vec![0u8; n * 4096]),
    ];
    proptest::collection::vec(run, 0..8).prop_map(|runs| runs.concat())
}

fn chunk_sizes() -> impl Strategy<Value = usize> {
    prop_oneof![Just(4096usize), Just(8192), Just(16384)]
}

/// Checks the invariants of a chunk sequence and joins it back.
fn join<'a>(
    chunker: &Chunker,
    chunks: impl Iterator<Item = Chunk<'a>>,
    original: &[u8],
) -> Result<Vec<u8>, TestCaseError> {
    let size = chunker.chunk_size();
    let mut out = Vec::new();
    let mut count = 0u64;
    for (i, chunk) in chunks.enumerate() {
        prop_assert_eq!(chunk.index, i as u64);
        prop_assert_eq!(chunk.offset, i as u64 * size as u64);
        prop_assert_eq!(chunk.offset, out.len() as u64);
        prop_assert!(!chunk.data.is_empty() && chunk.data.len() <= size);
        let start = out.len();
        match chunk.data {
            ChunkData::Data(bytes) => {
                prop_assert!(!is_all_zero(bytes), "a data chunk must not be all zero");
                out.extend_from_slice(bytes);
            }
            ChunkData::Hole { len } => out.resize(out.len() + len, 0),
        }
        // Only the last chunk may be short.
        if out.len() < original.len() {
            prop_assert_eq!(out.len() - start, size);
        }
        count += 1;
    }
    prop_assert_eq!(count, chunker.chunk_count(original.len() as u64));
    Ok(out)
}

/// A reader that returns short reads of varying sizes and sometimes
/// `Interrupted`, like pipes and sockets do.
struct Trickle<'a> {
    data: &'a [u8],
    steps: Vec<usize>,
    step: usize,
}

impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = self.steps[self.step % self.steps.len()];
        self.step += 1;
        if want == 0 {
            return Err(io::Error::new(io::ErrorKind::Interrupted, "signal"));
        }
        let n = want.min(buf.len()).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn split_then_join_reproduces_input(data in input(), size in chunk_sizes()) {
        let chunker = Chunker::new(size).expect("valid size");
        let joined = join(&chunker, chunker.split(&data), &data)?;
        prop_assert_eq!(joined, data);
    }

    #[test]
    fn read_then_join_reproduces_input(
        data in input(),
        size in chunk_sizes(),
        steps in proptest::collection::vec(prop_oneof![Just(0usize), 1usize..5000, Just(usize::MAX)], 1..6),
    ) {
        prop_assume!(steps.iter().any(|&s| s > 0));
        let chunker = Chunker::new(size).expect("valid size");
        let reader = Trickle { data: &data, steps, step: 0 };
        let owned: Vec<_> = chunker.reader(reader).collect::<io::Result<_>>().expect("read");
        let joined = join(&chunker, owned.iter().map(|c| c.as_chunk()), &data)?;
        prop_assert_eq!(&joined, &data);
        // Reading and splitting agree chunk for chunk.
        let split: Vec<_> = chunker.split(&data).collect();
        let read: Vec<_> = owned.iter().map(|c| c.as_chunk()).collect();
        prop_assert_eq!(split, read);
    }

    #[test]
    fn is_all_zero_matches_naive(data in proptest::collection::vec(prop_oneof![9 => Just(0u8), 1 => any::<u8>()], 0..300)) {
        prop_assert_eq!(is_all_zero(&data), data.iter().all(|&b| b == 0));
    }
}

#[test]
fn default_chunker_reads_a_large_sparse_input() {
    let chunker = Chunker::default();
    let mut data = vec![0u8; 3 * 512 * 1024 + 1];
    data[512 * 1024 + 17] = 42;
    data[3 * 512 * 1024] = 1;
    let chunks: Vec<_> = chunker
        .reader(&data[..])
        .collect::<io::Result<_>>()
        .expect("read from slice");
    let kinds: Vec<_> = chunks
        .iter()
        .map(|c| match &c.data {
            OwnedChunkData::Data(d) => ("data", d.len()),
            OwnedChunkData::Hole { len } => ("hole", *len),
        })
        .collect();
    assert_eq!(
        kinds,
        [
            ("hole", 524_288),
            ("data", 524_288),
            ("hole", 524_288),
            ("data", 1)
        ]
    );
    assert_eq!(chunks[3].offset, 3 * 512 * 1024);
}

#[test]
fn empty_input_has_no_chunks() {
    let chunker = Chunker::default();
    assert_eq!(chunker.split(&[]).count(), 0);
    assert_eq!(chunker.reader(io::empty()).count(), 0);
}
