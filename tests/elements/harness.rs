// SPDX-License-Identifier: MPL-2.0

//! kvssink driven by `gst_check::Harness`, without encoders: Matroska written by `kvs_mkv::writer` pushed buffer
//! by buffer, so that render, EOS, a flush in the middle of a fragment and `kvs-add-metadata` are tested exactly,
//! byte for byte, against the emulator.

use std::time::Duration;

use crate::common::*;
use gst::prelude::*;
use kvs_mkv::writer;

/// `fragments` fragments of `frames` frames each (the first a key frame), one second apart: the header, then
/// each fragment as (Cluster head, frames), and the frames' payloads in order.
/// A Cluster head and its frames' SimpleBlocks.
type Cluster = (Vec<u8>, Vec<Vec<u8>>);

fn stream(fragments: u64, frames: u64) -> (Vec<u8>, Vec<Cluster>, Vec<Vec<u8>>) {
    let mut payloads = Vec::new();
    let mut clusters = Vec::new();
    for f in 0..fragments {
        let mut head = Vec::new();
        writer::write_cluster_start(&mut head, f * 1000);
        let mut blocks = Vec::new();
        for i in 0..frames {
            let payload = format!("fragment {f} frame {i}").into_bytes();
            let mut block = Vec::new();
            writer::write_simple_block(&mut block, 1, (i * 33) as i16, i == 0, &payload);
            blocks.push(block);
            payloads.push(payload);
        }
        clusters.push((head, blocks));
    }
    (writer::h264_stream_header(), clusters, payloads)
}

/// A harness around a kvssink pointed at the emulator. The element is made with its properties first: the
/// harness starts it at once (and wants that synchronous, hence `async=false`: no preroll).
fn harness(emu: &Emu, stream: &str) -> gst_check::Harness {
    init();
    let sink = gst::ElementFactory::make("kvssink")
        .property("stream-name", stream)
        .property("endpoint-uri", &emu.url)
        .property("access-key", "AKIDTEST")
        .property("secret-access-key", "test-secret")
        .property("region", "us-east-1")
        .property("sync", false)
        .property("async", false)
        .build()
        .unwrap();
    let mut h = gst_check::Harness::with_element(&sink, Some("sink"), None);
    h.set_src_caps_str("video/x-matroska");
    h
}

fn push(h: &mut gst_check::Harness, bytes: Vec<u8>) {
    assert_eq!(
        h.push(gst::Buffer::from_mut_slice(bytes)),
        Ok(gst::FlowSuccess::Ok)
    );
}

fn stored_payloads(emu: &Emu, stream: &str) -> Vec<Vec<u8>> {
    unique_frames(&emu.read_back(stream))
        .into_iter()
        .map(|(_, payload)| payload)
        .collect()
}

#[test]
fn every_frame_rendered_one_buffer_at_a_time_is_stored_and_eos_waits_for_it() {
    let emu = Emu::start();
    emu.create_stream("harness", 1);
    let mut h = harness(&emu, "harness");
    let (header, clusters, payloads) = stream(3, 5);
    push(&mut h, header);
    for (head, blocks) in clusters {
        push(&mut h, head);
        for block in blocks {
            push(&mut h, block);
        }
    }
    assert!(h.push_event(gst::event::Eos::new()));
    // EOS returned only once every fragment was persisted.
    let stats = h.element().unwrap().property::<gst::Structure>("stats");
    assert_eq!(
        stats.get::<u64>("fragments-persisted").unwrap(),
        3,
        "{stats}"
    );
    assert_eq!(stats.get::<u64>("queued-fragments").unwrap(), 0);
    assert_eq!(stored_payloads(&emu, "harness"), payloads);
}

/// A flush in the middle of a fragment (a seek upstream) interrupts nothing that was sent, and the upload goes
/// on with what comes after it.
#[test]
fn a_flush_in_the_middle_of_a_fragment_loses_nothing_that_follows() {
    let emu = Emu::start();
    emu.create_stream("flushed", 1);
    let mut h = harness(&emu, "flushed");
    let (header, clusters, payloads) = stream(3, 4);
    push(&mut h, header);
    let mut clusters = clusters.into_iter();
    let (head, blocks) = clusters.next().unwrap();
    push(&mut h, head);
    for block in blocks {
        push(&mut h, block);
    }
    assert!(h.push_event(gst::event::FlushStart::new()));
    assert!(h.push_event(gst::event::FlushStop::new(true)));
    h.set_src_caps_str("video/x-matroska");
    h.push_event(gst::event::Segment::new(&gst::FormattedSegment::<
        gst::ClockTime,
    >::new()));
    for (head, blocks) in clusters {
        push(&mut h, head);
        for block in blocks {
            push(&mut h, block);
        }
    }
    assert!(h.push_event(gst::event::Eos::new()));
    assert_eq!(stored_payloads(&emu, "flushed"), payloads);
}

/// `kvs-add-metadata` between two fragments: stored with the next one, exactly once; sent into the pad or to
/// the element itself (`gst_element_send_event`, what applications usually do).
#[test]
fn metadata_goes_with_the_next_fragment() {
    let emu = Emu::start();
    emu.create_stream("tagged-harness", 1);
    let mut h = harness(&emu, "tagged-harness");
    let (header, clusters, _) = stream(3, 3);
    push(&mut h, header);
    for (n, (head, blocks)) in clusters.into_iter().enumerate() {
        let metadata = |value: &str| {
            gst::event::CustomDownstream::new(
                gst::Structure::builder("kvs-add-metadata")
                    .field("name", "door")
                    .field("value", value)
                    .field("persist", false)
                    .build(),
            )
        };
        if n == 1 {
            assert!(h.push_event(metadata("open")));
        }
        if n == 2 {
            assert!(h.element().unwrap().send_event(metadata("closed")));
        }
        push(&mut h, head);
        for block in blocks {
            push(&mut h, block);
        }
    }
    assert!(h.push_event(gst::event::Eos::new()));
    let fragments = emu.admin_fragments("tagged-harness");
    assert_eq!(fragments.len(), 3);
    // Each fragment's tags (GetMediaForFragmentList gives each fragment as its own document).
    let data = emu.read_back("tagged-harness");
    let mut own: Vec<Vec<String>> = Vec::new();
    for event in kvs_mkv::read_all(&data).unwrap() {
        match event {
            kvs_mkv::Event::EbmlHeader(_) => own.push(Vec::new()),
            kvs_mkv::Event::Element(e) if e.id == kvs_mkv::ebml::id::TAGS => {
                let doors = kvs_mkv::tags::parse_tags(&e.data())
                    .unwrap()
                    .into_iter()
                    .filter(|t| t.name == "door");
                own.last_mut().unwrap().extend(doors.map(|t| t.value));
            }
            _ => {}
        }
    }
    assert_eq!(
        own,
        [vec![], vec!["open".to_owned()], vec!["closed".to_owned()]]
    );
}

/// Setting kvssink to NULL while it waits for room in a full queue returns at once. (The harness answers
/// latency queries as a live source, which would drop fragments instead of waiting: `streaming-type=offline`
/// makes kvssink wait.)
#[test]
fn a_render_waiting_for_room_is_unlocked_by_a_state_change() {
    let emu = Emu::start();
    emu.create_stream("blocked", 1);
    // The service reads nothing: the queue fills and render waits.
    emu.fault(serde_json::json!({"api": "putMedia", "kind": "stop_reading", "fragment": 1}));
    let mut h = harness(&emu, "blocked");
    let sink = h.element().unwrap();
    sink.set_state(gst::State::Null).unwrap();
    sink.set_property("storage-size", 1u32);
    sink.set_property_from_str("streaming-type", "offline");
    sink.set_state(gst::State::Playing).unwrap();
    let (header, _, _) = stream(0, 0);
    push(&mut h, header);
    let pusher = std::thread::spawn(move || {
        let mut results = Vec::new();
        for f in 0..4000u64 {
            let mut data = Vec::new();
            writer::write_cluster_start(&mut data, f * 1000);
            writer::write_simple_block(&mut data, 1, 0, true, &vec![7u8; 4096]);
            let result = h.push(gst::Buffer::from_mut_slice(data));
            results.push(result);
            if result.is_err() {
                break;
            }
        }
        results
    });
    std::thread::sleep(Duration::from_millis(1500));
    let started = std::time::Instant::now();
    sink.set_state(gst::State::Null).unwrap();
    let results = pusher.join().unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    // It waited with the queue full (1 MiB of 4-KiB frames), not dropping, until the state change.
    let rendered = results.iter().filter(|r| r.is_ok()).count();
    assert!(
        (50..1000).contains(&rendered),
        "{rendered} buffers rendered"
    );
    assert_eq!(
        results.last(),
        Some(&Err(gst::FlowError::Flushing)),
        "the waiting render returned flushing"
    );
}
