// SPDX-License-Identifier: MPL-2.0

//! Counts the frames (SimpleBlock/BlockGroup payloads) of Matroska files, one or many documents each, and
//! prints a digest of their bytes, so two files can be compared frame for frame:
//! `cargo run -p kvs-mkv --example mkvframes -- A.mkv B.mkv`

use kvs_mkv::Event;
use kvs_mkv::ebml::id;

/// FNV-1a, 64 bits: enough to tell two frame sequences apart in a demo.
fn fnv1a(hash: &mut u64, data: &[u8]) {
    for &byte in data {
        *hash ^= u64::from(byte);
        *hash = hash.wrapping_mul(0x0000_0100_0000_01B3);
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let paths: Vec<String> = std::env::args().skip(1).collect();
    if paths.is_empty() {
        return Err("usage: mkvframes FILE...".into());
    }
    for path in paths {
        let data = std::fs::read(&path).map_err(|e| format!("{path}: {e}"))?;
        let events = kvs_mkv::read_all(&data).map_err(|e| format!("{path}: {e}"))?;
        let (mut frames, mut documents, mut hash) = (0u64, 0u64, 0xCBF2_9CE4_8422_2325u64);
        for event in events {
            match event {
                Event::EbmlHeader(_) => documents += 1,
                Event::ClusterChild(el)
                    if el.id == id::SIMPLE_BLOCK || el.id == id::BLOCK_GROUP =>
                {
                    frames += 1;
                    fnv1a(&mut hash, &el.data());
                }
                _ => {}
            }
        }
        println!("{path}: {frames} frames in {documents} Matroska document(s), digest {hash:016x}");
    }
    Ok(())
}
