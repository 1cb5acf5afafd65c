// SPDX-License-Identifier: MPL-2.0

//! Many kvssink elements in one process: N pipelines, each streaming a paced 256 kbit/s clip to its own stream
//! on one kvs-emulator, next to the same N pipelines ending in `fakesink`. Prints, per stream, the memory and CPU
//! kvssink adds; asserts that every fragment of every stream was PERSISTED.
//!
//! `cargo bench --bench kvssink_scale [-- N...]` (default 100 500 1000).
//!
//! The clip: 20 s of 160x120 H.264 at 10 fps, 256 kbit/s, a key frame (so a fragment) every second, encoded once.
//! Each run is a child process (this binary again) holding N pipelines
//! `filesrc ! matroskademux ! h264parse ! clocksync ! matroskamux streamable=true ! SINK`, all playing at once;
//! the emulator runs in this parent process, so the child's CPU time and peak RSS are the pipelines' own. Each N
//! runs over plain HTTP and over HTTPS (the emulator's TLS mode with a test CA, `ca-file` on each kvssink), against
//! one fakesink run.

mod common;

use std::time::{Duration, Instant};

use common::{Emu, cpu_seconds, peak_rss_mb, run_child};
use gst::prelude::*;

const SECONDS: u32 = 20;

/// Child: N pipelines into `sink` (`fakesink` or `kvssink`), to EOS; counts the fragments kvssink says were
/// persisted.
fn run(count: usize, sink: &str, clip: &str, url: &str, ca: Option<&str>) -> u64 {
    let ca = ca.map(|ca| format!("ca-file={ca}")).unwrap_or_default();
    gst::init().unwrap();
    gstkvs::plugin_register_static().unwrap();
    let pipelines: Vec<gst::Pipeline> = (0..count)
        .map(|i| {
            let sink = match sink {
                "kvssink" => format!(
                    "kvssink name=sink stream-name=scale-{i} endpoint-uri={url} {ca} access-key=AKIDBENCH \
                     secret-access-key=bench-secret region=us-east-1"
                ),
                other => format!("{other} name=sink"),
            };
            let description = format!(
                "filesrc location={clip} ! matroskademux ! h264parse ! clocksync ! matroskamux streamable=true ! {sink}"
            );
            gst::parse::launch(&description).unwrap().downcast::<gst::Pipeline>().unwrap()
        })
        .collect();
    let started = Instant::now();
    for pipeline in &pipelines {
        pipeline.set_state(gst::State::Playing).unwrap();
    }
    eprintln!(
        "{count} x {sink}: all playing after {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let mut persisted = 0;
    for pipeline in &pipelines {
        let bus = pipeline.bus().unwrap();
        let message = bus
            .timed_pop_filtered(
                gst::ClockTime::from_seconds(u64::from(SECONDS) + 120),
                &[gst::MessageType::Eos, gst::MessageType::Error],
            )
            .expect("EOS in time");
        if let gst::MessageView::Error(e) = message.view() {
            panic!("{} {:?}", e.error(), e.debug());
        }
        let element = pipeline.by_name("sink").unwrap();
        if element.factory().is_some_and(|f| f.name() == "kvssink") {
            let stats = element.property::<Option<gst::Structure>>("stats").unwrap();
            persisted += stats.get::<u64>("fragments-persisted").unwrap();
        }
    }
    for pipeline in &pipelines {
        pipeline.set_state(gst::State::Null).unwrap();
    }
    persisted
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    if args.first().map(String::as_str) == Some("--child") {
        let started = Instant::now();
        let count = run(
            args[2].parse().unwrap(),
            &args[3],
            &args[4],
            &args[5],
            args.get(6).map(String::as_str),
        );
        println!("count {count}");
        println!(
            "measured {} {} {}",
            started.elapsed().as_secs_f64(),
            cpu_seconds(),
            peak_rss_mb()
        );
        return;
    }
    let counts: Vec<usize> = {
        let given: Vec<usize> = args.iter().filter_map(|a| a.parse().ok()).collect();
        if given.is_empty() {
            vec![100, 500, 1000]
        } else {
            given
        }
    };
    let dir = std::env::temp_dir().join(format!("kvssink-scale-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let clip = dir.join("clip.mkv");
    common::encode_clip(&clip, SECONDS, (160, 120, 10), 256, 10);
    let clip = clip.to_str().unwrap().to_owned();
    let fragments_per_stream = u64::from(SECONDS);
    println!(
        "clip: {SECONDS} s of 160x120 H.264, 256 kbit/s, {:.0} kB, {fragments_per_stream} fragments",
        std::fs::metadata(&clip).unwrap().len() as f64 / 1e3
    );
    println!("note: {}", common::NO_SERVICE_LIMITS);
    let tls = kvs_emulator::tls::LocalCa::make().unwrap();
    for count in counts {
        let mut base = None;
        for (transport, tls) in [("HTTP", None), ("HTTPS", Some(&tls))] {
            let emu = Emu::start_with("scale-0", false, tls);
            emu.create_streams("scale", 1..count);
            let base = base.get_or_insert_with(|| {
                run_child("run", &[&count.to_string(), "fakesink", &clip, &emu.url])
            });
            let mut args = vec![
                count.to_string(),
                "kvssink".into(),
                clip.clone(),
                emu.url.clone(),
            ];
            args.extend(emu.ca.as_ref().map(|ca| ca.to_str().unwrap().to_owned()));
            let sink = run_child("run", &args.iter().map(String::as_str).collect::<Vec<_>>());
            assert_eq!(
                sink.count,
                fragments_per_stream * count as u64,
                "every fragment of every stream PERSISTED"
            );
            let per_stream_mib = (sink.rss_mb - base.rss_mb) / count as f64;
            // CPU above the fakesink run, as a share of one core over the clip's duration, per stream.
            let per_stream_core = (sink.cpu - base.cpu) / f64::from(SECONDS) / count as f64 * 100.0;
            println!(
                "N={count:>5} {transport:<5}: fakesink {:.1} s wall, {:.2} CPU s, {:.0} MiB; kvssink {:.1} s wall, \
                 {:.2} CPU s, {:.0} MiB, {} fragments persisted; per stream {per_stream_mib:.3} MiB and \
                 {per_stream_core:.4} % of a core above fakesink",
                base.seconds,
                base.cpu,
                base.rss_mb,
                sink.seconds,
                sink.cpu,
                sink.rss_mb,
                sink.count
            );
            drop(emu);
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
