// SPDX-License-Identifier: MPL-2.0

//! kvssink upload throughput next to a plain streaming HTTP upload of the same bytes, into one kvs-emulator on
//! loopback. Prints numbers; asserts only that every fragment arrived.
//!
//! `cargo bench --bench kvssink_throughput [-- SIZE_MB]` (default 512 MB).
//!
//! The input is a Matroska file written once to a temporary directory: 100-kB frames, 30 per 1-s cluster, as a
//! camera at ~24 Mbit/s would give. Each upload runs in its own child process (this binary again), so its CPU
//! time and peak RSS are its own and not the emulator's (which runs in this parent process):
//! - `baseline`: a bare hyper HTTP/1.1 client reads the file in 256-kB chunks and streams it as one chunked
//!   PutMedia request, then reads the ACKs to the end of the response. No signing, no fragment tracking.
//! - `kvssink`: `filesrc blocksize=262144 ! video/x-matroska ! kvssink sync=false`, EOS after the last
//!   PERSISTED ACK.
//!
//! Both run over plain HTTP and over HTTPS (the emulator's TLS mode with a test CA; rustls on both sides).

mod common;

use std::time::Instant;

use common::{CHUNK_BYTES, Emu, FRAME_BYTES, FRAMES_PER_CLUSTER, report_child, run_child};
use gst::prelude::*;

fn baseline(url: &str, path: &str, ca: Option<&str>) -> u64 {
    common::upload_file_over(url, ca.map(std::path::Path::new), "baseline", path)
}

fn kvssink(url: &str, path: &str, ca: Option<&str>) -> u64 {
    gst::init().unwrap();
    gstkvs::plugin_register_static().unwrap();
    let ca = ca.map(|ca| format!("ca-file={ca}")).unwrap_or_default();
    let description = format!(
        "filesrc location={path} blocksize={CHUNK_BYTES} ! video/x-matroska ! kvssink name=sink stream-name=kvssink \
         endpoint-uri={url} {ca} access-key=AKIDBENCH secret-access-key=bench-secret region=us-east-1 sync=false"
    );
    let pipeline = gst::parse::launch(&description).unwrap();
    let bus = pipeline.bus().unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();
    for message in bus.iter_timed(gst::ClockTime::NONE) {
        match message.view() {
            gst::MessageView::Eos(_) => break,
            gst::MessageView::Error(e) => panic!("{} {:?}", e.error(), e.debug()),
            _ => {}
        }
    }
    let stats = pipeline
        .downcast_ref::<gst::Bin>()
        .unwrap()
        .by_name("sink")
        .unwrap()
        .property::<Option<gst::Structure>>("stats")
        .unwrap();
    pipeline.set_state(gst::State::Null).unwrap();
    stats.get::<u64>("fragments-persisted").unwrap()
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    if args.first().map(String::as_str) == Some("--child") {
        let started = Instant::now();
        let count = match args[1].as_str() {
            "baseline" => baseline(&args[2], &args[3], args.get(4).map(String::as_str)),
            "kvssink" => kvssink(&args[2], &args[3], args.get(4).map(String::as_str)),
            other => panic!("unknown mode {other}"),
        };
        report_child(started, count);
        return;
    }
    let size_mb: usize = args.iter().find_map(|a| a.parse().ok()).unwrap_or(512);
    let dir = std::env::temp_dir().join(format!("kvssink-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("input.mkv");
    let (clusters, bytes) = common::write_input(&path, size_mb);

    println!(
        "input: {:.1} MB, {clusters} fragments of {} x {} kB frames",
        bytes as f64 / 1e6,
        FRAMES_PER_CLUSTER,
        FRAME_BYTES / 1000
    );
    println!("note: {}", common::NO_SERVICE_LIMITS);
    let gb = bytes as f64 / 1e9;
    let tls = kvs_emulator::tls::LocalCa::make().unwrap();
    for (transport, tls) in [("HTTP", None), ("HTTPS", Some(&tls))] {
        let mut best = [0f64; 2];
        for round in 1..=2 {
            for (i, mode) in ["baseline", "kvssink"].into_iter().enumerate() {
                // A fresh emulator for every upload, so one upload's stored media does not slow the next.
                let emulator = Emu::start_with(mode, false, tls);
                let mut args = vec![emulator.url.clone(), path.to_str().unwrap().to_owned()];
                args.extend(
                    emulator
                        .ca
                        .as_ref()
                        .map(|ca| ca.to_str().unwrap().to_owned()),
                );
                let m = run_child(mode, &args.iter().map(String::as_str).collect::<Vec<_>>());
                assert_eq!(m.count, clusters, "{mode}: every fragment persisted");
                let rate = bytes as f64 / 1e6 / m.seconds;
                best[i] = best[i].max(rate);
                println!(
                    "{transport:<5} round {round} {mode:>9}: {:.2} s, {rate:.0} MB/s, {:.2} CPU s/GB (process), \
                     peak RSS {:.0} MB",
                    m.seconds,
                    m.cpu / gb,
                    m.rss_mb
                );
            }
        }
        println!(
            "{transport:<5} kvssink / baseline throughput (best of 2 each): {:.2}",
            best[1] / best[0]
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
