// SPDX-License-Identifier: MPL-2.0

//! kvssink's fragment store (`buffer-dir`): a restart on a full store, and the catch-up that follows.
//!
//! `cargo bench --bench kvssink_store [-- MINUTES]` (default 67: about 1 GB of backlog).
//!
//! 1. A store is filled with MINUTES of 2 Mbit/s H.264-like media in 2-s fragments, through kvssink's own
//!    fragmenter and store (as a producer that recorded offline would leave it); the write rate is printed.
//! 2. Restart: a child process (this binary again) runs `videotestsrc is-live=true ! x264enc ! matroskamux !
//!    kvssink buffer-dir=...` with one second of live video against an in-process kvs-emulator with the
//!    service's limits on and `--record-arrivals`: process start -> first PutMedia body byte, against the same
//!    child on an empty store (the baseline).
//! 3. Catch-up: the same child uploads the whole backlog before its EOS returns: fragments/s and MB/s from the
//!    emulator's server timestamps, against the service's limits (5 fragments/s, 12.5 MB/s), and the child's CPU
//!    per GB.
//!
//! Left out: TLS (plain HTTP on loopback), a cold page cache (the store was just written), the network.

mod common;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{cpu_seconds, peak_rss_mb, run_child, run_to_eos};
use gstkvs::cores::fragmenter::{Fragmenter, Output, TimeAnchor};
use gstkvs::cores::store::Store;

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

/// Child: one second of live video into kvssink with `dir` as its store; EOS returns once everything the
/// store held is persisted. Writes its start time (µs since the epoch) to `out`.
fn upload(url: &str, stream: &str, dir: &str, out: &str) -> u64 {
    let start = now_us();
    std::fs::write(out, start.to_string()).unwrap();
    gst::init().unwrap();
    gstkvs::plugin_register_static().unwrap();
    let description = format!(
        "videotestsrc is-live=true num-buffers=30 ! video/x-raw,width=320,height=240,framerate=30/1 \
         ! x264enc key-int-max=30 bframes=0 tune=zerolatency speed-preset=ultrafast ! h264parse ! matroskamux \
         ! kvssink stream-name={stream} endpoint-uri={url} access-key=AKIDBENCH secret-access-key=bench-secret \
         region=us-east-1 buffer-dir={dir} stop-stream-timeout=3600"
    );
    let pipeline = gst::parse::launch(&description).unwrap();
    run_to_eos(&pipeline, Duration::from_secs(7200));
    1
}

/// Writes `minutes` of 2 Mbit/s media (2-s fragments of 60 frames of 8333 bytes) into a store for `stream`,
/// ending a minute ago; returns the bytes written.
fn fill(dir: &std::path::Path, stream: &str, minutes: u64) -> u64 {
    let fragments = minutes * 30;
    let start = SystemTime::now() - Duration::from_secs(minutes * 60 + 60);
    let (mut store, _) = Store::open(dir, stream).unwrap();
    let mut fragmenter = Fragmenter::new(TimeAnchor::Fixed(start));
    let mut written = 0u64;
    let mut handle = |outputs: Vec<Output>, store: &mut Store| {
        for output in outputs {
            match output {
                Output::Header(_) | Output::TimeJump(_) => {}
                Output::FragmentStart(start) => {
                    written += start.data.len() as u64;
                    store
                        .start_fragment(&start.header, start.timecode, &start.data, false)
                        .unwrap();
                }
                Output::Frame { data, duration } => {
                    written += data.len() as u64;
                    store.append(&data, duration).unwrap();
                }
                Output::FragmentEnd => store.end_fragment().unwrap(),
            }
        }
    };
    let outputs = fragmenter
        .push(kvs_mkv::writer::h264_stream_header().into(), None)
        .unwrap();
    handle(outputs, &mut store);
    for index in 0..fragments {
        let mut cluster = Vec::with_capacity(60 * 8400);
        kvs_mkv::writer::write_cluster_start(&mut cluster, index * 2000);
        for frame in 0..60u64 {
            let mut payload = vec![(index % 251) as u8; 8333];
            payload[..16].copy_from_slice(&[index.to_be_bytes(), frame.to_be_bytes()].concat());
            kvs_mkv::writer::write_simple_block(
                &mut cluster,
                1,
                (frame * 33) as i16,
                frame == 0,
                &payload,
            );
        }
        let outputs = fragmenter.push(cluster.into(), None).unwrap();
        handle(outputs, &mut store);
    }
    let outputs = fragmenter.finish().unwrap();
    handle(outputs, &mut store);
    store.sync();
    written
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    if args.first().map(String::as_str) == Some("--child") {
        let started = Instant::now();
        let count = upload(&args[2], &args[3], &args[4], &args[5]);
        println!("count {count}");
        println!(
            "measured {} {} {}",
            started.elapsed().as_secs_f64(),
            cpu_seconds(),
            peak_rss_mb()
        );
        return;
    }
    let minutes: u64 = args.iter().find_map(|a| a.parse().ok()).unwrap_or(67);
    let dir = std::env::temp_dir().join(format!("kvssink-store-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();

    let (runtime, emulator) = common::recording_emulator();
    let url = emulator.base_url();
    let http = |method: &str, path: &str, body: &str| {
        common::emulator_call(emulator.local_addr(), method, path, body)
    };
    println!(
        "note: the emulator's service limits are on (5 fragments/s, 12.5 MB/s per stream); plain HTTP on loopback"
    );

    // Process start -> first body byte, for a child on `store` uploading to `stream`.
    let start_to_first_byte = |stream: &str, store: &std::path::Path| {
        http(
            "POST",
            "/createStream",
            &format!("{{\"StreamName\":\"{stream}\",\"DataRetentionInHours\":1}}"),
        );
        let out = dir.join(format!("{stream}.start"));
        let measured = run_child(
            "upload",
            &[&url, stream, store.to_str().unwrap(), out.to_str().unwrap()],
        );
        let start: u64 = std::fs::read_to_string(&out)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let arrivals = http("GET", &format!("/_emulator/streams/{stream}/arrivals"), "");
        let first = arrivals["uploads"][0]["first_body_byte_us"]
            .as_u64()
            .unwrap();
        (measured, (first - start) as f64 / 1000.0)
    };

    let (baseline, baseline_ms) = start_to_first_byte("empty", &dir.join("empty"));
    println!("restart on an empty store: process start -> first body byte {baseline_ms:.1} ms");

    let store = dir.join("full");
    let filling = Instant::now();
    let bytes = fill(&store, "full", minutes);
    let fill_s = filling.elapsed().as_secs_f64();
    println!(
        "store filled: {minutes} min of 2 Mbit/s, {} fragments, {:.2} GB written through the fragmenter and the \
         store in {fill_s:.1} s ({:.0} MB/s, fsync at each fragment's end)",
        minutes * 30,
        bytes as f64 / 1e9,
        bytes as f64 / 1e6 / fill_s
    );
    let (full, full_ms) = start_to_first_byte("full", &store);
    println!(
        "restart on a {:.2} GB store: process start -> first backlog byte on the wire {full_ms:.1} ms ({:.2}x the \
         empty store's {baseline_ms:.1} ms; goal <= 1000 ms)",
        bytes as f64 / 1e9,
        full_ms / baseline_ms
    );

    let listed = http("GET", "/_emulator/streams/full/fragments", "");
    let fragments = listed["fragments"].as_array().unwrap();
    let mut arrivals: Vec<u64> = fragments
        .iter()
        .map(|f| f["server_timestamp_ms"].as_u64().unwrap())
        .collect();
    arrivals.sort();
    let stored_bytes: u64 = fragments
        .iter()
        .map(|f| f["size_bytes"].as_u64().unwrap())
        .sum();
    let span_s = (arrivals[arrivals.len() - 1] - arrivals[0]) as f64 / 1000.0;
    let rate = (arrivals.len() - 1) as f64 / span_s;
    let mb_rate = stored_bytes as f64 / 1e6 / span_s;
    let busiest = arrivals
        .windows(6)
        .map(|w| w[5] - w[0])
        .min()
        .unwrap_or(u64::MAX);
    println!(
        "catch-up: {} fragments ({:.2} GB) in {span_s:.1} s: {rate:.2} fragments/s ({:.0} % of the 5/s limit), \
         {mb_rate:.2} MB/s ({:.0} % of 12.5 MB/s); the closest six fragments span {busiest} ms",
        arrivals.len(),
        stored_bytes as f64 / 1e9,
        rate / 5.0 * 100.0,
        mb_rate / 12.5 * 100.0
    );
    println!(
        "uploader process: {:.1} CPU s for {:.2} GB: {:.2} CPU s/GB (the empty-store run: {:.2} CPU s); peak RSS \
         {:.1} MiB (empty store: {:.1} MiB)",
        full.cpu,
        stored_bytes as f64 / 1e9,
        (full.cpu - baseline.cpu) / (stored_bytes as f64 / 1e9),
        baseline.cpu,
        full.rss_mb,
        baseline.rss_mb
    );
    assert_eq!(
        arrivals.len() as u64,
        minutes * 30 + 1,
        "every stored fragment and the live one uploaded"
    );
    let _guard = runtime.enter();
    emulator.shutdown();
    drop(_guard);
    std::fs::remove_dir_all(&dir).unwrap();
}
