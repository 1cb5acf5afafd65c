// SPDX-License-Identifier: MPL-2.0

//! Many live kvssrc readers in one process: N pipelines `kvssrc start-selector=now ! fakesink`, each reading its
//! own stream live while this parent process uploads to every stream at 256 kbit/s (one fragment a second of 10
//! frames of 3.2 kB, for SECONDS), over plain HTTP and over HTTPS (the emulator's TLS mode with a test CA,
//! `ca-file` on each kvssrc). Prints the readers' CPU and memory per reader; asserts that every reader read every
//! frame exactly once.
//!
//! `cargo bench --bench kvssrc_scale [-- N...]` (default 50 200).
//!
//! The readers run in a child process (this binary again), so its CPU time and peak RSS are theirs alone; the
//! emulator (the service's limits on) and the uploads run here. Memory per reader is the child's peak RSS above
//! a child that starts GStreamer and the plugin and reads nothing. Left out: a real network, the service's own
//! latency, SigV4 checks (signed, not checked).

mod common;

use std::io::{BufRead, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Emu, cpu_seconds};
use gst::prelude::*;
use kvs_mkv::writer::{h264_stream_header, write_cluster_start, write_simple_block};

const SECONDS: u64 = 20;
const FRAMES_PER_FRAGMENT: u64 = 10;
const FRAME_BYTES: usize = 3200;

/// Child: N live readers; prints `ready` once all are playing, then waits until each has read every frame
/// (or a minute more than the upload lasts); counts the frames read.
fn read(count: usize, url: &str, ca: Option<&str>) -> u64 {
    gst::init().unwrap();
    gstkvs::plugin_register_static().unwrap();
    let ca = ca.map(|ca| format!("ca-file={ca}")).unwrap_or_default();
    let frames: Vec<Arc<AtomicU64>> = (0..count).map(|_| Arc::default()).collect();
    let pipelines: Vec<gst::Pipeline> = (0..count)
        .map(|i| {
            let description = format!(
                "kvssrc name=src stream-name=scale-{i} start-selector=now endpoint-uri={url} {ca} \
                 access-key=AKIDBENCH secret-access-key=bench-secret region=us-east-1 ! fakesink"
            );
            let pipeline = gst::parse::launch(&description)
                .unwrap()
                .downcast::<gst::Pipeline>()
                .unwrap();
            // A frame is a buffer with its producer time (merged mode); headers and cluster starts have none.
            let counter = frames[i].clone();
            pipeline
                .by_name("src")
                .unwrap()
                .static_pad("src")
                .unwrap()
                .add_probe(gst::PadProbeType::BUFFER, move |_, info| {
                    if let Some(buffer) = info.buffer()
                        && buffer.meta::<gst::ReferenceTimestampMeta>().is_some()
                    {
                        counter.fetch_add(1, Ordering::Relaxed);
                    }
                    gst::PadProbeReturn::Ok
                });
            pipeline
        })
        .collect();
    for pipeline in &pipelines {
        pipeline.set_state(gst::State::Playing).unwrap();
    }
    println!("ready");
    std::io::stdout().flush().unwrap();
    let cpu_before = cpu_seconds();
    let expected = SECONDS * FRAMES_PER_FRAGMENT;
    let deadline = Instant::now() + Duration::from_secs(SECONDS + 60);
    while Instant::now() < deadline && frames.iter().any(|f| f.load(Ordering::Relaxed) < expected) {
        for pipeline in &pipelines {
            let bus = pipeline.bus().unwrap();
            while let Some(message) = bus.pop_filtered(&[gst::MessageType::Error]) {
                if let gst::MessageView::Error(e) = message.view() {
                    panic!("{} {:?}", e.error(), e.debug());
                }
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // Anything read twice would come right after: a moment more.
    std::thread::sleep(Duration::from_millis(500));
    println!("work-cpu {}", cpu_seconds() - cpu_before);
    for pipeline in &pipelines {
        pipeline.set_state(gst::State::Null).unwrap();
    }
    let counts: Vec<u64> = frames.iter().map(|f| f.load(Ordering::Relaxed)).collect();
    assert!(
        counts.iter().all(|c| *c == expected),
        "every frame once: {counts:?}"
    );
    counts.iter().sum()
}

/// One stream's upload: SECONDS one-second fragments, one a second, as one PutMedia request (RELATIVE
/// timecodes); returns how many were PERSISTED.
async fn upload(url: String, ca: Option<std::path::PathBuf>, stream: String) -> u64 {
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    tokio::spawn(async move {
        let mut out = h264_stream_header();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        for second in 0..SECONDS {
            tick.tick().await;
            write_cluster_start(&mut out, second * 1000);
            for i in 0..FRAMES_PER_FRAGMENT {
                let frame = vec![(second + i) as u8; FRAME_BYTES];
                write_simple_block(&mut out, 1, (i * 100) as i16, i == 0, &frame);
            }
            if tx
                .send(Bytes::from(std::mem::take(&mut out)))
                .await
                .is_err()
            {
                return;
            }
        }
    });
    common::put_media(&url, ca.as_deref(), &stream, rx).await
}

/// Starts the reader child; returns it once its readers play.
fn start_readers(count: usize, url: &str, ca: Option<&str>) -> std::process::Child {
    let count = count.to_string();
    let mut child = common::child_command("read", &[&count])
        .args(["--child", "read", &count, url])
        .args(ca)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "ready");
    child
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    if args.first().map(String::as_str) == Some("--child") {
        let started = Instant::now();
        let count = read(
            args[2].parse().unwrap(),
            &args[3],
            args.get(4).map(String::as_str),
        );
        common::report_child(started, count);
        return;
    }
    let counts: Vec<usize> = {
        let given: Vec<usize> = args.iter().filter_map(|a| a.parse().ok()).collect();
        if given.is_empty() {
            vec![50, 200]
        } else {
            given
        }
    };
    println!(
        "each stream: {SECONDS} fragments of {FRAMES_PER_FRAGMENT} x {:.1} kB frames, one a second (256 kbit/s), \
         uploaded by this process; the emulator with the service's limits on, loopback",
        FRAME_BYTES as f64 / 1e3
    );
    let tls = kvs_emulator::tls::LocalCa::make().unwrap();
    let uploads = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    for count in counts {
        for (transport, tls) in [("HTTP", None), ("HTTPS", Some(&tls))] {
            let emu = Emu::start_with("scale-0", true, tls);
            emu.create_streams("scale", 1..count);
            let ca = emu.ca.as_ref().map(|ca| ca.to_str().unwrap().to_owned());
            let idle = common::child_measures(
                "read",
                start_readers(0, &emu.url, ca.as_deref())
                    .wait_with_output()
                    .unwrap(),
            );
            let readers = start_readers(count, &emu.url, ca.as_deref());
            let persisted: u64 = uploads.block_on(async {
                let tasks: Vec<_> = (0..count)
                    .map(|i| {
                        tokio::spawn(upload(
                            emu.url.clone(),
                            emu.ca.clone(),
                            format!("scale-{i}"),
                        ))
                    })
                    .collect();
                let mut total = 0;
                for task in tasks {
                    total += task.await.unwrap();
                }
                total
            });
            assert_eq!(
                persisted,
                SECONDS * count as u64,
                "every fragment persisted"
            );
            let m = common::child_measures("read", readers.wait_with_output().unwrap());
            let (frames, wall, cpu, rss) = (m.count, m.seconds, m.cpu, m.rss_mb);
            let work = m.work_cpu.unwrap_or(cpu);
            assert_eq!(frames, SECONDS * FRAMES_PER_FRAGMENT * count as u64);
            println!(
                "N={count:>4} {transport:<5}: {frames} frames read once each; readers {wall:.1} s wall, {cpu:.2} CPU s \
                 ({work:.2} while reading: {:.4} % of a core per reader), peak RSS {rss:.0} MiB ({:.3} MiB per reader \
                 above an idle process of {:.0} MiB)",
                work / SECONDS as f64 / count as f64 * 100.0,
                (rss - idle.rss_mb) / count as f64,
                idle.rss_mb
            );
            drop(emu);
        }
    }
}
