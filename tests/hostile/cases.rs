// SPDX-License-Identifier: MPL-2.0

//! Hostile input for the parsers that read what others wrote: the Matroska reader, kvssink's fragmenter, the
//! PutMedia ACK parser and kvssrc's GetMedia merger. Shared by the test binary `tests/hostile.rs` (100 inputs per
//! family, in the test command) and the benchmark `benches/hostile.rs` (20,000 per family). Counts keep distinct
//! inputs apart from the buffer splits checked on them: one small input split at every byte point gives
//! hundreds of splits.
//!
//! Every case is generated from a seed, so a failure names the seed that reproduces it. Each case checks:
//! - no panic (the runner catches one and reports the case);
//! - no hang: every read loop is bounded by the input's length;
//! - no allocation driven by a declared size: the largest single allocation while the case runs stays below a
//!   bound set by the input's real size (a counting global allocator, [`CountingAlloc`]); every family runs
//!   under this check;
//! - for valid streams, the same output whatever the buffer boundaries (random splits, and every single split
//!   point of small streams).
//!
//! Hand-written generators rather than a property-testing crate: the inputs are Matroska structures built with
//! the project's own writer and mutated in the ways that matter (sizes, nesting, cuts), which generic shrinkers
//! do not know.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use gstkvs::cores::AckParser;
use gstkvs::cores::fragmenter::{self, Fragmenter, TimeAnchor};
use gstkvs::cores::merger::{self, Merger, Mode};
use kvs_mkv::tags::{self, SimpleTag};
use kvs_mkv::writer::{self, TrackSpec};
use kvs_mkv::{Event, MkvReader};
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};

/// The system allocator, noting the largest single allocation since the last [`CountingAlloc::reset`].
pub struct CountingAlloc;

static LARGEST: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST.fetch_max(new_size, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

impl CountingAlloc {
    pub fn reset() {
        LARGEST.store(0, Ordering::Relaxed);
    }
    pub fn largest() -> usize {
        LARGEST.load(Ordering::Relaxed)
    }
}

/// What a run of cases did.
#[derive(Debug, Default, Clone, Copy)]
pub struct Tally {
    /// Distinct inputs (one per seed).
    pub inputs: u64,
    /// Buffer splits whose output was compared with the whole input's: one random split per input, or every
    /// split point of one input.
    pub splits: u64,
    /// Inputs refused with an error (as opposed to read through).
    pub refused: u64,
    pub bytes: u64,
    /// Inputs read under the allocation check (no single allocation beyond a few times the input).
    pub allocation_checked: u64,
}

impl std::ops::AddAssign for Tally {
    fn add_assign(&mut self, other: Tally) {
        self.inputs += other.inputs;
        self.splits += other.splits;
        self.refused += other.refused;
        self.bytes += other.bytes;
        self.allocation_checked += other.allocation_checked;
    }
}

/// One case of a family, made from its seed.
pub type Case = fn(u64) -> Tally;

/// The case families, each a function of a seed.
pub const FAMILIES: &[(&str, Case)] = &[
    ("reader: valid stream, random splits", reader_valid_splits),
    (
        "reader: valid stream, every split point",
        reader_every_split,
    ),
    ("reader: random bytes", reader_random_bytes),
    (
        "reader: mutated stream (sizes, nesting, cuts)",
        reader_mutated,
    ),
    (
        "fragmenter: valid stream, random splits",
        fragmenter_valid_splits,
    ),
    ("fragmenter: mutated stream", fragmenter_mutated),
    ("ack parser: valid acks, random splits", acks_valid_splits),
    ("ack parser: random bytes", acks_random),
    (
        "merger: GetMedia stream, random splits",
        merger_valid_splits,
    ),
    ("merger: mutated GetMedia stream", merger_mutated),
];

/// Runs `count` cases of one family from `first_seed`; panics naming the seed of a failing case.
pub fn run_family(name: &str, case: Case, first_seed: u64, count: u64) -> Tally {
    let mut tally = Tally::default();
    for seed in first_seed..first_seed + count {
        match std::panic::catch_unwind(|| case(seed)) {
            Ok(t) => tally += t,
            Err(panic) => {
                let message = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                panic!("{name}: case with seed {seed} failed: {message}");
            }
        }
    }
    tally
}

// ---------------------------------------------------------------------------------------------------------------
// Generators

/// A stream as matroskamux writes it (what kvssink takes): EBML header, unknown-size Segment, Info, Tracks,
/// then clusters of SimpleBlocks with increasing timecodes.
pub fn valid_stream(rng: &mut StdRng) -> Vec<u8> {
    let mut out = Vec::new();
    writer::write_ebml_header(
        &mut out,
        if rng.random_bool(0.9) {
            "matroska"
        } else {
            "webm"
        },
    );
    writer::write_segment_start(&mut out);
    writer::write_info(&mut out, 1_000_000);
    let audio = rng.random_bool(0.3);
    let codec_private = writer::h264_stream_header();
    let mut tracks = vec![TrackSpec {
        number: 1,
        track_type: 1,
        codec_id: "V_MPEG4/ISO/AVC",
        codec_private: &codec_private,
    }];
    if audio {
        tracks.push(TrackSpec {
            number: 2,
            track_type: 2,
            codec_id: "A_AAC",
            codec_private: &[0x12, 0x10],
        });
    }
    writer::write_tracks(&mut out, &tracks);
    let clusters = rng.random_range(1..6);
    let mut timecode = rng.random_range(0..100_000u64);
    for _ in 0..clusters {
        writer::write_cluster_start(&mut out, timecode);
        let frames = rng.random_range(1..12);
        for i in 0..frames {
            let track = if audio && rng.random_bool(0.4) { 2 } else { 1 };
            let mut payload = vec![0u8; rng.random_range(0..400)];
            rng.fill_bytes(&mut payload);
            writer::write_simple_block(&mut out, track, (i * 33) as i16, i == 0, &payload);
        }
        timecode += rng.random_range(400..2_000);
    }
    out
}

/// GetMedia's output for a few fragments: one document per fragment with its AWS tags, the cluster, then the
/// session tags. Some fragments repeat (same number, or same producer timestamp and frames).
pub fn getmedia_stream(rng: &mut StdRng) -> Vec<u8> {
    let mut out = Vec::new();
    let codec_private = writer::h264_stream_header();
    let fragments = rng.random_range(1..6);
    let mut timecode = 1_795_000_000_000u64 + rng.random_range(0..1_000_000);
    let mut previous: Option<(u64, Vec<Vec<u8>>)> = None;
    for n in 0..fragments {
        let (tc, frames) = match previous.take() {
            Some(repeat) if rng.random_bool(0.2) => repeat,
            _ => {
                let frames: Vec<Vec<u8>> = (0..rng.random_range(1..8))
                    .map(|_| {
                        let mut payload = vec![0u8; rng.random_range(1..300)];
                        rng.fill_bytes(&mut payload);
                        payload
                    })
                    .collect();
                timecode += rng.random_range(500..1_500);
                (timecode, frames)
            }
        };
        writer::write_ebml_header(&mut out, "matroska");
        writer::write_segment_start(&mut out);
        writer::write_info(&mut out, 1_000_000);
        writer::write_tracks(
            &mut out,
            &[TrackSpec {
                number: 1,
                track_type: 1,
                codec_id: "V_MPEG4/ISO/AVC",
                codec_private: &codec_private,
            }],
        );
        let number = format!("9134385233318{n:05}");
        let producer = format!("{}.{:03}", tc / 1000, tc % 1000);
        tags::write_tags(
            &mut out,
            &[
                SimpleTag::new(tags::FRAGMENT_NUMBER, &number),
                SimpleTag::new(tags::PRODUCER_TIMESTAMP, &producer),
            ],
            8,
        );
        writer::write_cluster_start(&mut out, tc);
        for (i, frame) in frames.iter().enumerate() {
            writer::write_simple_block(&mut out, 1, (i * 33) as i16, i == 0, frame);
        }
        tags::write_tags(
            &mut out,
            &[
                SimpleTag::new(tags::MILLIS_BEHIND_NOW, "12"),
                SimpleTag::new(tags::CONTINUATION_TOKEN, &number),
            ],
            8,
        );
        previous = Some((tc, frames));
    }
    out
}

/// Random cut points for `len` bytes.
fn splits(rng: &mut StdRng, len: usize) -> Vec<usize> {
    let count = rng.random_range(0..8usize.min(len + 1));
    let mut cuts: Vec<usize> = (0..count).map(|_| rng.random_range(0..=len)).collect();
    cuts.sort_unstable();
    cuts
}

/// `data` in pieces at `cuts`.
fn pieces(data: &[u8], cuts: &[usize]) -> Vec<Bytes> {
    let mut out = Vec::new();
    let mut start = 0;
    for &cut in cuts.iter().chain(std::iter::once(&data.len())) {
        out.push(Bytes::copy_from_slice(&data[start..cut]));
        start = cut;
    }
    out
}

/// Element size VINTs a mutation writes: huge, 1 GB, unknown, zero, and 8-byte forms of them.
const HOSTILE_SIZES: &[&[u8]] = &[
    &[0x01, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFE], // 2^56 - 2
    &[0x10, 0x40, 0x00, 0x00, 0x00],                   // not a size: a 4-byte ID first byte
    &[0x08, 0x40, 0x00, 0x00, 0x00],                   // 1 GB (5-byte VINT: 0x4000_0000)
    &[0xFF],                                           // unknown
    &[0x01, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF], // unknown, 8 bytes
    &[0x80],                                           // zero
    &[0x00],                                           // invalid VINT
];

/// A valid stream changed in the ways that break parsers: a size replaced by a hostile one, bytes flipped,
/// a region repeated, Clusters or Segments nested thousands deep, an unknown size where none is allowed, a cut.
pub fn mutate(rng: &mut StdRng, mut data: Vec<u8>) -> Vec<u8> {
    for _ in 0..rng.random_range(1..4) {
        let len = data.len().max(1);
        match rng.random_range(0..7) {
            0 => {
                let at = rng.random_range(0..len).min(data.len());
                let size = HOSTILE_SIZES[rng.random_range(0..HOSTILE_SIZES.len())];
                let end = (at + size.len()).min(data.len());
                data.splice(at..end, size.iter().copied());
            }
            1 => {
                for _ in 0..rng.random_range(1..8) {
                    if let Some(b) = data.get_mut(rng.random_range(0..len)) {
                        *b ^= 1 << rng.random_range(0..8);
                    }
                }
            }
            2 => {
                let start = rng.random_range(0..len).min(data.len());
                let end = (start + rng.random_range(0..200)).min(data.len());
                let region = data[start..end].to_vec();
                data.splice(start..start, region);
            }
            3 => {
                // Deep nesting: unknown-size Clusters (or Segments) inside each other.
                let id: &[u8] = if rng.random_bool(0.5) {
                    &[0x1F, 0x43, 0xB6, 0x75]
                } else {
                    &[0x18, 0x53, 0x80, 0x67]
                };
                let at = rng.random_range(0..len).min(data.len());
                let mut nest = Vec::new();
                for _ in 0..rng.random_range(100..5_000) {
                    nest.extend_from_slice(id);
                    nest.push(0xFF);
                }
                data.splice(at..at, nest);
            }
            4 => {
                // An unknown size on an element that must have one (SimpleBlock, Info, Tags).
                let id: &[u8] = match rng.random_range(0..3) {
                    0 => &[0xA3],
                    1 => &[0x15, 0x49, 0xA9, 0x66],
                    _ => &[0x12, 0x54, 0xC3, 0x67],
                };
                let at = rng.random_range(0..len).min(data.len());
                let mut element = id.to_vec();
                element.push(0xFF);
                element.extend_from_slice(&[0x81, 0x00, 0x00, 0x80]);
                data.splice(at..at, element);
            }
            5 => data.truncate(rng.random_range(0..len)),
            _ => {
                let at = rng.random_range(0..len).min(data.len());
                let mut junk = vec![0u8; rng.random_range(1..64)];
                rng.fill_bytes(&mut junk);
                data.splice(at..at, junk);
            }
        }
    }
    data
}

// ---------------------------------------------------------------------------------------------------------------
// Checks

/// The largest single allocation a case may make for `input_len` bytes of input: a few copies of the input,
/// never what a declared size asks for.
fn allocation_bound(input_len: usize) -> usize {
    4 * input_len + (1 << 20)
}

fn check_allocations(input_len: usize) {
    let largest = CountingAlloc::largest();
    assert!(
        largest <= allocation_bound(input_len),
        "an allocation of {largest} bytes for {input_len} bytes of input (a declared size was trusted)"
    );
}

/// What identifies a sequence of reader events: their count and a hash of their content (kept as a digest,
/// not a list, so that the check's own memory does not grow with the input).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Digest {
    count: usize,
    hash: u64,
}

fn hash_event(hasher: &mut impl std::hash::Hasher, event: &Event) {
    use std::hash::Hash;
    match event {
        Event::EbmlHeader(e) | Event::Element(e) | Event::ClusterChild(e) => {
            (std::mem::discriminant(event), e.id, e.offset).hash(hasher);
            for piece in e.bytes.pieces() {
                hasher.write(piece);
            }
        }
        Event::SegmentStart {
            offset,
            header,
            size,
        }
        | Event::ClusterStart {
            offset,
            header,
            size,
        } => (std::mem::discriminant(event), offset, &header[..], size).hash(hasher),
        Event::ClusterEnd { end_offset } | Event::SegmentEnd { end_offset } => {
            (std::mem::discriminant(event), end_offset).hash(hasher)
        }
    }
}

/// Reads `pieces` through a fresh reader; the digest of its events, or the error that stopped it. Bounded: a
/// reader that keeps giving events without consuming input is a hang.
fn read_events(pieces: &[Bytes]) -> Result<Digest, String> {
    use std::hash::Hasher;
    let total: usize = pieces.iter().map(Bytes::len).sum();
    let limit = 4 * total + 64;
    let mut reader = MkvReader::new();
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    let mut count = 0;
    for piece in pieces {
        reader.push_bytes(piece.clone());
        loop {
            match reader.next_event() {
                Ok(Some(event)) => {
                    hash_event(&mut hasher, &event);
                    count += 1;
                }
                Ok(None) => break,
                Err(e) => {
                    assert!(
                        reader.next_event().is_err(),
                        "a reader that failed must stay failed"
                    );
                    return Err(e.to_string());
                }
            }
            assert!(count <= limit, "{count} events from {total} bytes: a hang");
        }
    }
    for event in reader.finish().map_err(|e| e.to_string())? {
        hash_event(&mut hasher, &event);
        count += 1;
    }
    Ok(Digest {
        count,
        hash: hasher.finish(),
    })
}

fn reader_valid_splits(seed: u64) -> Tally {
    let mut rng = StdRng::seed_from_u64(seed);
    let data = valid_stream(&mut rng);
    CountingAlloc::reset();
    let whole = read_events(&[Bytes::from(data.clone())]).expect("a valid stream reads");
    let split =
        read_events(&pieces(&data, &splits(&mut rng, data.len()))).expect("a valid stream reads");
    assert!(whole == split, "other events when the input is split");
    check_allocations(data.len());
    Tally {
        inputs: 1,
        splits: 1,
        allocation_checked: 1,
        refused: 0,
        bytes: data.len() as u64,
    }
}

/// Every two-piece split of one small valid stream: one case per split point.
fn reader_every_split(seed: u64) -> Tally {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut data = valid_stream(&mut rng);
    data.truncate(data.len().min(1_500));
    CountingAlloc::reset();
    let whole = read_events(&[Bytes::from(data.clone())]);
    for cut in 0..=data.len() {
        let split = read_events(&pieces(&data, &[cut]));
        assert!(whole == split, "other events when split at byte {cut}");
    }
    check_allocations(data.len());
    Tally {
        inputs: 1,
        splits: data.len() as u64 + 1,
        allocation_checked: 1,
        refused: whole.is_err() as u64,
        bytes: data.len() as u64,
    }
}

fn reader_random_bytes(seed: u64) -> Tally {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut data = vec![0u8; rng.random_range(0..2_048)];
    rng.fill_bytes(&mut data);
    // Often behind a valid EBML header, so the reader gets past the first element.
    if rng.random_bool(0.5) {
        let mut head = Vec::new();
        writer::write_ebml_header(&mut head, "matroska");
        writer::write_segment_start(&mut head);
        head.extend_from_slice(&data);
        data = head;
    }
    CountingAlloc::reset();
    let result = read_events(&pieces(&data, &splits(&mut rng, data.len())));
    check_allocations(data.len());
    Tally {
        inputs: 1,
        splits: 0,
        allocation_checked: 1,
        refused: result.is_err() as u64,
        bytes: data.len() as u64,
    }
}

fn reader_mutated(seed: u64) -> Tally {
    let mut rng = StdRng::seed_from_u64(seed);
    let valid = valid_stream(&mut rng);
    let data = mutate(&mut rng, valid);
    CountingAlloc::reset();
    let whole = read_events(&[Bytes::from(data.clone())]);
    let split = read_events(&pieces(&data, &splits(&mut rng, data.len())));
    // Split or not, the same events, or an error (the error may be found at another point).
    let compared = if let (Ok(whole), Ok(split)) = (&whole, &split) {
        assert!(whole == split, "other events when a mutated input is split");
        1
    } else {
        0
    };
    check_allocations(data.len());
    Tally {
        inputs: 1,
        splits: compared,
        allocation_checked: 1,
        refused: whole.is_err() as u64,
        bytes: data.len() as u64,
    }
}

/// The fragmenter's outputs as comparable text (frames and headers as their bytes).
fn fragment(pieces: &[Bytes]) -> Result<Vec<String>, String> {
    let total: usize = pieces.iter().map(Bytes::len).sum();
    let anchor = TimeAnchor::Fixed(SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_000_000));
    let mut fragmenter = Fragmenter::new(anchor);
    let mut out = Vec::new();
    let mut record = |outputs: Vec<fragmenter::Output>| {
        for output in outputs {
            out.push(match output {
                fragmenter::Output::Header(h) => format!("header {} {:?}", h.generation, h.bytes),
                fragmenter::Output::FragmentStart(f) => {
                    format!("start {} {:?}", f.timecode, f.data.to_vec())
                }
                fragmenter::Output::Frame { data, duration } => {
                    format!("frame {duration:?} {:?}", data.to_vec())
                }
                fragmenter::Output::FragmentEnd => "end".to_owned(),
                fragmenter::Output::TimeJump(jump) => format!("jump {jump:?}"),
            });
        }
    };
    for piece in pieces {
        record(
            fragmenter
                .push(piece.clone(), None)
                .map_err(|e| e.to_string())?,
        );
    }
    record(fragmenter.finish().map_err(|e| e.to_string())?);
    assert!(
        out.len() <= 4 * total + 8,
        "{} outputs from {total} bytes",
        out.len()
    );
    Ok(out)
}

fn fragmenter_valid_splits(seed: u64) -> Tally {
    let mut rng = StdRng::seed_from_u64(seed);
    let data = valid_stream(&mut rng);
    CountingAlloc::reset();
    let whole = fragment(&[Bytes::from(data.clone())]).expect("a valid stream fragments");
    let split =
        fragment(&pieces(&data, &splits(&mut rng, data.len()))).expect("a valid stream fragments");
    assert!(whole == split, "other fragments when the input is split");
    check_allocations(data.len());
    Tally {
        inputs: 1,
        splits: 1,
        allocation_checked: 1,
        refused: 0,
        bytes: data.len() as u64,
    }
}

fn fragmenter_mutated(seed: u64) -> Tally {
    let mut rng = StdRng::seed_from_u64(seed);
    let valid = valid_stream(&mut rng);
    let data = mutate(&mut rng, valid);
    CountingAlloc::reset();
    let result = fragment(&pieces(&data, &splits(&mut rng, data.len())));
    check_allocations(data.len());
    Tally {
        inputs: 1,
        splits: 0,
        allocation_checked: 1,
        refused: result.is_err() as u64,
        bytes: data.len() as u64,
    }
}

fn acks(pieces: &[Bytes]) -> Vec<String> {
    let mut parser = AckParser::new();
    pieces
        .iter()
        .flat_map(|p| parser.push(p))
        .map(|ack| format!("{ack:?}"))
        .collect()
}

fn acks_valid_splits(seed: u64) -> Tally {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut text = String::new();
    for _ in 0..rng.random_range(1..20) {
        let timecode: u64 = rng.random_range(0..2_000_000_000_000);
        text.push_str(&match rng.random_range(0..5) {
            0 => format!("{{\"EventType\":\"BUFFERING\",\"FragmentTimecode\":{timecode},\"FragmentNumber\":\"91343{timecode}\"}}\n"),
            1 => format!("{{\"EventType\":\"RECEIVED\",\"FragmentTimecode\":{timecode},\"FragmentNumber\":\"91343{timecode}\"}}\n"),
            2 => format!("{{\"EventType\":\"PERSISTED\",\"FragmentTimecode\":{timecode},\"FragmentNumber\":\"91343{timecode}\"}}\n"),
            3 => "{\"EventType\":\"IDLE\"}\n".to_owned(),
            _ => format!(
                "{{\"EventType\":\"ERROR\",\"FragmentTimecode\":{timecode},\"ErrorId\":4004,\"ErrorCode\":\"FRAGMENT_TIMECODE_LESSER_THAN_PREVIOUS\"}}\n"
            ),
        });
    }
    let data = text.into_bytes();
    CountingAlloc::reset();
    let whole = acks(&[Bytes::from(data.clone())]);
    let split = acks(&pieces(&data, &splits(&mut rng, data.len())));
    assert_eq!(whole, split, "other ACKs when the response is split");
    assert!(whole.iter().all(|a| a.starts_with("Ok(")), "{whole:?}");
    check_allocations(data.len());
    Tally {
        inputs: 1,
        splits: 1,
        allocation_checked: 1,
        refused: 0,
        bytes: data.len() as u64,
    }
}

fn acks_random(seed: u64) -> Tally {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut data = vec![0u8; rng.random_range(0..8_192)];
    rng.fill_bytes(&mut data);
    // Braces, quotes and line breaks often, so objects open, nest and break.
    for b in data.iter_mut() {
        if rng.random_bool(0.2) {
            *b = b"{}\"\\\n:,"[rng.random_range(0..7)];
        }
    }
    CountingAlloc::reset();
    let out = acks(&pieces(&data, &splits(&mut rng, data.len())));
    assert!(
        out.len() <= data.len(),
        "{} ACKs from {} bytes",
        out.len(),
        data.len()
    );
    check_allocations(data.len());
    let refused = out.iter().filter(|a| a.starts_with("Err(")).count() as u64;
    Tally {
        inputs: 1,
        splits: 0,
        allocation_checked: 1,
        refused: refused.min(1),
        bytes: data.len() as u64,
    }
}

/// The merger's outputs as comparable text: consecutive data joined, the rest as written.
fn merge(pieces: &[Bytes]) -> Result<Vec<String>, String> {
    let total: usize = pieces.iter().map(Bytes::len).sum();
    let mut merger = Merger::new(Mode::Merged);
    let mut out: Vec<String> = Vec::new();
    let mut data = Vec::new();
    let record = |outputs: Vec<merger::Output>, out: &mut Vec<String>, data: &mut Vec<u8>| {
        for output in outputs {
            match output {
                merger::Output::Data { data: bytes, .. } => data.extend_from_slice(&bytes.to_vec()),
                other => {
                    if !data.is_empty() {
                        out.push(format!("data {:?}", std::mem::take(data)));
                    }
                    out.push(format!("{other:?}"));
                }
            }
        }
    };
    for piece in pieces {
        let outputs = merger.push(piece.clone()).map_err(|e| e.to_string())?;
        record(outputs, &mut out, &mut data);
    }
    let outputs = merger.finish().map_err(|e| e.to_string())?;
    record(outputs, &mut out, &mut data);
    if !data.is_empty() {
        out.push(format!("data {data:?}"));
    }
    assert!(
        out.len() <= 4 * total + 8,
        "{} outputs from {total} bytes",
        out.len()
    );
    Ok(out)
}

fn merger_valid_splits(seed: u64) -> Tally {
    let mut rng = StdRng::seed_from_u64(seed);
    let data = getmedia_stream(&mut rng);
    CountingAlloc::reset();
    let whole = merge(&[Bytes::from(data.clone())]).expect("a GetMedia stream merges");
    let split =
        merge(&pieces(&data, &splits(&mut rng, data.len()))).expect("a GetMedia stream merges");
    assert!(whole == split, "other output when the response is split");
    check_allocations(data.len());
    Tally {
        inputs: 1,
        splits: 1,
        allocation_checked: 1,
        refused: 0,
        bytes: data.len() as u64,
    }
}

fn merger_mutated(seed: u64) -> Tally {
    let mut rng = StdRng::seed_from_u64(seed);
    let valid = getmedia_stream(&mut rng);
    let data = mutate(&mut rng, valid);
    CountingAlloc::reset();
    let result = merge(&pieces(&data, &splits(&mut rng, data.len())));
    check_allocations(data.len());
    Tally {
        inputs: 1,
        splits: 0,
        allocation_checked: 1,
        refused: result.is_err() as u64,
        bytes: data.len() as u64,
    }
}
