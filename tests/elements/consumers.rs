// SPDX-License-Identifier: MPL-2.0

//! kvssrc for consumers that run for months: a live read through a long outage while the stream moves on, a
//! range whose end is still ahead, the service's throttling answers, and `max-outage`. Every frame read is
//! compared with what matroskamux gave kvssink.

use std::time::{Duration, Instant};

use crate::common::*;
use crate::kvssrc::{LiveRead, now_s, produce, read_range, src_props};
use serde_json::json;

/// Frames kvssink uploads while GetMedia is down: 300 s of stream at 30 frames a second, which the emulator
/// takes in at the service's 5 fragments a second (1-s fragments), so the outage lasts about a minute of wall
/// time while the stream moves 5 minutes on. `KVS_OUTAGE_FRAMES` changes it (27000 for 15 minutes of stream).
fn outage_frames() -> u32 {
    std::env::var("KVS_OUTAGE_FRAMES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(9000)
}

fn connection_messages(reader: &LiveRead, state: &str) -> Vec<gst::Structure> {
    reader
        .messages_named("kvssrc-connection")
        .into_iter()
        .filter(|s| s.get::<String>("state").unwrap() == state)
        .collect()
}

#[test]
fn a_live_read_survives_a_long_outage_and_reads_every_frame_once() {
    let emu = Emu::start();
    emu.create_stream("outage", 24);
    let reader = LiveRead::start(&format!(
        "{} ! appsink name=capture sync=false",
        src_props(&emu, "outage")
    ));
    std::thread::sleep(Duration::from_millis(500));
    let first = produce(&emu, "outage", 150, "");
    reader.wait_for_frames(150, Duration::from_secs(20));
    assert_eq!(reader.frame_count(), 150);

    // The outage: GetMedia refused (503) for its first 25 s, then answered and reset before any byte (as a
    // broken network path does), while kvssink uploads 5 minutes of stream as fast as the service takes it.
    let frames = outage_frames();
    // 160x120: five minutes of stream cost little CPU beside the other tests.
    let description = format!(
        "videotestsrc num-buffers={frames} pattern=ball ! video/x-raw,format=I420,width=160,height=120,framerate=30/1 \
         ! x264enc key-int-max=30 bframes=0 tune=zerolatency speed-preset=ultrafast ! h264parse ! matroskamux \
         ! tee name=t ! queue ! {} sync=false {CAPTURE}",
        sink_props(&emu, "outage")
    );
    let down = Instant::now();
    emu.fault(
        json!({"api": "getMedia", "stream": "outage", "kind": "http_error", "status": 503,
                     "error": "ServiceUnavailableException", "times": 1_000_000}),
    );
    let (status, _) = emu.call(
        "POST",
        "/_emulator/streams/outage/drop",
        r#"{"api": "getMedia", "close": "reset"}"#,
    );
    assert_eq!(status, 200);
    let upload = std::thread::spawn(move || run_pipeline(&description, Duration::from_secs(900)));
    while !upload.is_finished() && down.elapsed() < Duration::from_secs(25) {
        std::thread::sleep(Duration::from_millis(100));
    }
    emu.call("DELETE", "/_emulator/faults", "");
    emu.fault(
        json!({"api": "getMedia", "stream": "outage", "kind": "drop_after_bytes", "bytes": 0,
                     "close": "reset", "times": 1_000_000}),
    );
    let second = upload.join().unwrap();
    assert_eq!(second.error, None, "{:?}", second.warnings);
    emu.call("DELETE", "/_emulator/faults", "");
    let outage = down.elapsed();

    let total = 150 + frames as usize;
    reader.wait_for_frames(total, Duration::from_secs(180));
    assert_eq!(*reader.errors.lock().unwrap(), Vec::<String>::new());
    let mut input = input_frames(&first);
    input.extend(input_frames(&second.input));
    let read = input_frames(&reader.captured.lock().unwrap());
    assert_eq!(read.len(), total, "every frame exactly once");
    assert!(read == input, "in order, byte for byte");

    // One warning when the outage began, one message when reading resumed.
    let warnings = reader.warnings.lock().unwrap().clone();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    // The first failed attempt: the session dropped when the outage began, or the first 503.
    assert!(
        warnings[0].starts_with(
            "Cannot read the stream: GetMedia failed: HTTP 503 ServiceUnavailableException"
        ) || warnings[0].starts_with("Cannot read the stream: the GetMedia connection broke"),
        "{warnings:?}"
    );
    let retries = connection_messages(&reader, "reconnecting");
    let failed: Vec<u64> = retries
        .iter()
        .filter(|m| m.get::<u32>("attempt").unwrap() > 0)
        .map(|m| m.get::<u64>("retry-in-ms").unwrap())
        .collect();
    let resumed = connection_messages(&reader, "resumed");
    assert_eq!(resumed.len(), 1, "{resumed:?}");
    let attempts = resumed[0].get::<u32>("attempts").unwrap();
    let outage_ms = resumed[0].get::<u64>("outage-ms").unwrap();
    let behind = resumed[0].get::<u64>("millis-behind-now").unwrap();
    println!(
        "outage of {:.1} s ({frames} frames uploaded meanwhile): {attempts} failed attempts, waits {failed:?} ms; \
         resumed after {outage_ms} ms, the first fragment {behind} ms behind now",
        outage.as_secs_f64()
    );
    assert_eq!(failed.len() as u32, attempts);
    // More attempts than the reader used to make before it gave up (8), each wait capped at 10 s.
    assert!(attempts > 8, "{attempts}");
    assert!(failed.iter().all(|ms| *ms <= 10_000), "{failed:?}");
    assert!(
        failed.iter().any(|ms| *ms >= 5_000),
        "the backoff grows to its cap: {failed:?}"
    );
    assert!(
        outage_ms + 1000 >= outage.as_millis() as u64,
        "{outage_ms} ms of {outage:?}"
    );
    // The first fragment read after the outage was stored when it began.
    assert!(
        behind + 5000 >= outage.as_millis() as u64,
        "{behind} ms behind now after {outage:?}"
    );
}

#[test]
fn max_outage_ends_a_live_read_that_cannot_read_with_an_error_that_says_so() {
    let emu = Emu::start();
    emu.create_stream("gone", 1);
    emu.fault(
        json!({"api": "getMedia", "stream": "gone", "kind": "http_error", "status": 503,
                     "error": "ServiceUnavailableException", "times": 1_000_000}),
    );
    let run = run_pipeline(
        &format!("{} max-outage=3 ! fakesink", src_props(&emu, "gone")),
        Duration::from_secs(60),
    );
    let error = run.error.expect("an element error");
    assert!(
        error.contains("gave up after 3 s without reading (max-outage) and "),
        "{error}"
    );
    assert!(
        error.contains(
            " attempts; the last: GetMedia failed: HTTP 503 ServiceUnavailableException: Injected fault"
        ),
        "{error}"
    );
    assert_eq!(run.warnings.len(), 1, "{:?}", run.warnings);
    let warning = &run.warnings[0];
    assert!(
        warning.starts_with(
            "Cannot read the stream: GetMedia failed: HTTP 503 ServiceUnavailableException: Injected fault: \
             ServiceUnavailableException | "
        ) && warning.ends_with("the live read retries for up to 3 s (max-outage), then ends with an error"),
        "{warning}"
    );
}

#[test]
fn a_range_that_ends_in_the_future_follows_the_stream_until_its_end() {
    let emu = Emu::start();
    emu.create_stream("ahead", 24);
    let start = now_s();
    let end = start + 20.0;
    let description = format!(
        "{} start-selector=producer-timestamp start-timestamp={start:.3} end-timestamp={end:.3} \
         ! appsink name=capture sync=false",
        src_props(&emu, "ahead")
    );
    let range = std::thread::spawn(move || run_pipeline(&description, Duration::from_secs(120)));
    // kvssink uploads 30 s of live video, from a second after the read began: the range sees the stream grow.
    std::thread::sleep(Duration::from_secs(1));
    let upload = run_pipeline(
        &live_upload(&emu, "ahead", 900, ""),
        Duration::from_secs(120),
    );
    assert_eq!(upload.error, None);
    let read = range.join().unwrap();
    assert_eq!(read.error, None, "{:?}", read.warnings);
    let eos = start + read.elapsed.as_secs_f64();

    // The fragments that start by the end, in the order they were stored: exactly their frames, once.
    let fragments = emu.admin_fragments("ahead");
    let (inside, after): (Vec<_>, Vec<_>) = fragments
        .iter()
        .partition(|f| f["producer_timestamp_ms"].as_f64().unwrap() / 1000.0 <= end);
    assert!(
        !inside.is_empty() && !after.is_empty(),
        "{} in the range, {} after it",
        inside.len(),
        after.len()
    );
    let count: u64 = inside
        .iter()
        .map(|f| f["frames"]["1"].as_u64().unwrap())
        .sum();
    let input = input_frames(&upload.input);
    let got = input_frames(&read.input);
    println!(
        "range ending {:.1} s after it began: EOS {:.2} s after its end, {} fragments ({count} frames) of {}",
        end - start,
        eos - end,
        inside.len(),
        fragments.len()
    );
    assert_eq!(got.len() as u64, count);
    assert!(
        got[..] == input[..count as usize],
        "every frame of the range once, in order"
    );
    assert!(eos > end, "EOS at {eos:.3}, before the end {end:.3}");
    let progress = read.messages_named("kvssrc-progress");
    let last = progress.last().unwrap();
    assert_eq!(
        last.get::<u64>("fragments-done").unwrap(),
        inside.len() as u64
    );
    assert_eq!(
        last.get::<u64>("fragments-total").unwrap(),
        inside.len() as u64
    );
}

#[test]
fn throttling_answers_make_kvssrc_back_off_and_finish() {
    let emu = Emu::start();
    emu.create_stream("busy", 24);
    let input = produce(&emu, "busy", 240, "");
    // A range read throttled on both APIs, with more downloads at once (8) than the service's 5 connections.
    emu.fault(
        json!({"api": "listFragments", "stream": "busy", "kind": "http_error", "status": 400,
                     "error": "ClientLimitExceededException", "times": 3}),
    );
    emu.fault(
        json!({"api": "getMediaForFragmentList", "stream": "busy", "kind": "http_error", "status": 400,
                     "error": "ConnectionLimitExceededException", "times": 4}),
    );
    let run = read_range(&emu, "busy", "parallel-downloads=8");
    assert_eq!(run.error, None);
    assert_eq!(
        emu.armed_faults(),
        json!([]),
        "every throttling answer was given"
    );
    assert!(
        input_frames(&run.input) == input_frames(&input),
        "every frame once, in order"
    );

    // A live read throttled 4 times before its first session.
    emu.fault(
        json!({"api": "getMedia", "stream": "busy", "kind": "http_error", "status": 400,
                     "error": "ClientLimitExceededException", "times": 4}),
    );
    let reader = LiveRead::start(&format!(
        "{} start-selector=earliest ! appsink name=capture sync=false",
        src_props(&emu, "busy")
    ));
    reader.wait_for_frames(240, Duration::from_secs(30));
    assert_eq!(*reader.errors.lock().unwrap(), Vec::<String>::new());
    assert!(input_frames(&reader.captured.lock().unwrap()) == input_frames(&input));
    let resumed = connection_messages(&reader, "resumed");
    assert_eq!(resumed.len(), 1);
    assert_eq!(resumed[0].get::<u32>("attempts").unwrap(), 4);
}
