// SPDX-License-Identifier: MPL-2.0

//! The reader against real recorded KVS output (GetMedia responses) and real C++ producer PutMedia bodies.
//! Fixtures live in the repository's `tests/fixtures` (override with `KVS_FIXTURES_DIR`).

use std::path::PathBuf;

use kvs_mkv::ebml::id;
use kvs_mkv::{Event, MkvReader, block, tags};

fn fixture(path: &str) -> Vec<u8> {
    let dir = std::env::var_os("KVS_FIXTURES_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures"));
    let path = dir.join(path);
    std::fs::read(&path)
        .unwrap_or_else(|e| panic!("fixture {} (set KVS_FIXTURES_DIR): {e}", path.display()))
}

#[derive(Debug, Default, PartialEq)]
struct Counts {
    documents: usize,
    clusters: usize,
    blocks: usize,
    tags_elements: usize,
    simple_tags: Vec<(String, String)>,
}

/// Feeds `data` in pieces of `piece` bytes and counts what the reader finds.
fn read_all(data: &[u8], piece: usize, complete: bool) -> Counts {
    let mut reader = MkvReader::new();
    let mut counts = Counts::default();
    let on_event = |event: Event, counts: &mut Counts| match event {
        Event::EbmlHeader(el) => {
            kvs_mkv::header::doc_type(&el.data()).unwrap();
            counts.documents += 1;
        }
        Event::ClusterStart { .. } => counts.clusters += 1,
        Event::ClusterChild(el) if el.id == id::SIMPLE_BLOCK => {
            block::parse_simple_block(&el.data()).unwrap();
            counts.blocks += 1;
        }
        Event::ClusterChild(el) if el.id == id::BLOCK_GROUP => {
            block::parse_block_group(&el.data()).unwrap();
            counts.blocks += 1;
        }
        Event::Element(el) if el.id == id::TAGS => {
            counts.tags_elements += 1;
            for tag in tags::parse_tags(&el.data()).unwrap() {
                counts.simple_tags.push((tag.name, tag.value));
            }
        }
        _ => {}
    };
    for chunk in data.chunks(piece) {
        reader.push(chunk);
        while let Some(event) = reader.next_event().unwrap() {
            on_event(event, &mut counts);
        }
    }
    if complete {
        for event in reader.finish().unwrap() {
            on_event(event, &mut counts);
        }
    }
    counts
}

fn tag_values<'a>(counts: &'a Counts, name: &str) -> Vec<&'a str> {
    counts
        .simple_tags
        .iter()
        .filter(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
        .collect()
}

#[test]
fn getmedia_capture_has_five_fragments_of_sixty_frames() {
    let data = fixture("getmedia/output_get_media.mkv");
    let counts = read_all(&data, data.len(), true);
    assert_eq!(
        (counts.documents, counts.clusters, counts.blocks),
        (5, 5, 300)
    );
    assert_eq!(tag_values(&counts, tags::FRAGMENT_NUMBER).len(), 5);
    assert_eq!(tag_values(&counts, tags::MILLIS_BEHIND_NOW).len(), 5);
    assert_eq!(
        tag_values(&counts, tags::CONTINUATION_TOKEN),
        tag_values(&counts, tags::FRAGMENT_NUMBER)
    );
    assert_eq!(
        tag_values(&counts, tags::SERVER_TIMESTAMP)[0],
        "1511852109.126"
    );
    assert_eq!(
        tag_values(&counts, tags::PRODUCER_TIMESTAMP)[0],
        "1511852108.513"
    );
    // Any piece size gives the same result.
    for piece in [1, 7, 4096] {
        assert_eq!(read_all(&data, piece, true), counts, "piece size {piece}");
    }
}

#[test]
fn every_getmedia_fixture_reads_to_the_end() {
    for name in [
        "test_mixed_tags.mkv",
        "empty-mkv-with-tags.mkv",
        "test_tags_empty_cluster.mkv",
    ] {
        let data = fixture(&format!("getmedia/{name}"));
        let counts = read_all(&data, 1000, true);
        assert!(counts.documents >= 1, "{name}: {counts:?}");
        assert!(!counts.simple_tags.is_empty(), "{name}: no tags");
    }
}

#[test]
fn cpp_producer_putmedia_body_reads_up_to_its_truncation() {
    let data = fixture("putmedia-cpp/01-basic-10s/putmedia-1.body.first2MiB.mkv");
    let counts = read_all(&data, 65536, false);
    assert_eq!(counts.documents, 1, "one EBML header per PutMedia body");
    assert!(counts.clusters >= 5, "{counts:?}");
    assert!(counts.blocks >= 100, "{counts:?}");
}
