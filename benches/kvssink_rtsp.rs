// SPDX-License-Identifier: MPL-2.0

//! An IP camera into kvssink: latency from each frame's capture time at the camera to its last byte at the
//! server, next to the same pipeline ending in `fakesink`. Prints numbers; asserts only that frames arrived.
//!
//! `cargo bench --bench kvssink_rtsp [-- SECONDS]` (default 30).
//!
//! The camera: gst-rtsp-server in this process, serving 640x480 H.264 at 30 fps, 2 Mbit/s, a key frame every
//! 2 s (`x264enc tune=zerolatency`), with RTCP sender reports from the host's clock. Each client is a child
//! process (this binary again), so its CPU time and peak RSS are its own:
//! `rtspsrc protocols=tcp add-reference-timestamp-meta=true ! rtph264depay ! h264parse ! SINK`, SINK
//! `fakesink` (the baseline) or `kvssink capture-time=meta` (its request pad) into an in-process kvs-emulator
//! started with `--record-arrivals`. A frame's capture time is its reference timestamp: the camera's time for
//! it, from its sender reports. So, per frame:
//! - fakesink: the time the frame reaches fakesink − its capture time (what the network, rtspsrc's jitter
//!   buffer and the depayloader take);
//! - kvssink: arrival of its last byte at the server − its stored producer time (the capture time, whole ms).
//!
//! Left out: TLS (the emulator speaks plain HTTP here), a real network between camera and host and between
//! host and service, and the service's own processing; camera and emulator run on this machine.

mod common;

use std::io::Write;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{cpu_seconds, peak_rss_mb, run_child};
use gst::glib;
use gst::prelude::*;
use gst_rtsp_server::prelude::*;

const STREAM: &str = "rtsp-latency";
/// Seconds from 1900 (NTP) to 1970.
const NTP_TO_UNIX_S: u64 = 2_208_988_800;

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64
}

fn init() {
    gst::init().unwrap();
    gstkvs::plugin_register_static().unwrap();
}

/// Child: reads the camera for `seconds` into `sink`, then EOS; for fakesink writes, per frame with a
/// reference timestamp, arrival − capture time (µs) to `out`.
fn client(sink: &str, camera: &str, url: &str, seconds: u64, out: &str) -> u64 {
    init();
    let tail = match sink {
        "kvssink" => format!(
            "kvssink stream-name={STREAM} endpoint-uri={url} access-key=AKIDBENCH secret-access-key=bench-secret \
             region=us-east-1 capture-time=meta"
        ),
        _ => "fakesink name=last sync=false".to_owned(),
    };
    let description = format!(
        "rtspsrc location={camera} protocols=tcp add-reference-timestamp-meta=true ! rtph264depay \
         ! h264parse name=parse ! {tail}"
    );
    let pipeline = gst::parse::launch(&description)
        .unwrap()
        .downcast::<gst::Pipeline>()
        .unwrap();
    let delays = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let frames = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let pad = pipeline
        .by_name("parse")
        .unwrap()
        .static_pad("src")
        .unwrap();
    let (log, count) = (delays.clone(), frames.clone());
    // fakesink: the delays; kvssink: how many frames came before the first reference timestamp (they wait for
    // it, capture-time=meta), written as the file's only line.
    let measure = sink != "kvssink";
    let before_first = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let waiting = before_first.clone();
    pad.add_probe(gst::PadProbeType::BUFFER, move |_, info| {
        let n = count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Some(buffer) = info.buffer() {
            let now = now_us();
            match buffer.meta::<gst::ReferenceTimestampMeta>() {
                Some(meta) if measure => {
                    let unix_us = (meta.timestamp().nseconds() / 1000) as i64
                        - (NTP_TO_UNIX_S * 1_000_000) as i64;
                    log.lock().unwrap().push(now - unix_us);
                }
                None if waiting.load(std::sync::atomic::Ordering::Relaxed) == n => {
                    waiting.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                _ => {}
            }
        }
        gst::PadProbeReturn::Ok
    });
    pipeline.set_state(gst::State::Playing).unwrap();
    let bus = pipeline.bus().unwrap();
    let stop_at = Instant::now() + Duration::from_secs(seconds);
    let mut eos_sent = false;
    loop {
        if !eos_sent && Instant::now() >= stop_at {
            pipeline.send_event(gst::event::Eos::new());
            eos_sent = true;
        }
        let Some(message) = bus.timed_pop(gst::ClockTime::from_mseconds(100)) else {
            continue;
        };
        match message.view() {
            gst::MessageView::Eos(_) => break,
            gst::MessageView::Error(e) => panic!("{} ({:?})", e.error(), e.debug()),
            _ => {}
        }
    }
    pipeline.set_state(gst::State::Null).unwrap();
    let mut file = std::io::BufWriter::new(std::fs::File::create(out).unwrap());
    if measure {
        for delay in delays.lock().unwrap().iter() {
            writeln!(file, "{delay}").unwrap();
        }
    } else {
        writeln!(
            file,
            "{}",
            before_first.load(std::sync::atomic::Ordering::Relaxed)
        )
        .unwrap();
    }
    frames.load(std::sync::atomic::Ordering::Relaxed)
}

fn summary(values: &mut [f64]) -> String {
    values.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let at = |p: f64| {
        values
            .get(((values.len().max(1) - 1) as f64 * p).round() as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    format!(
        "p50 {:.1} / p90 {:.1} / p99 {:.1} / max {:.1} ms ({} frames)",
        at(0.5),
        at(0.9),
        at(0.99),
        at(1.0),
        values.len()
    )
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    if args.first().map(String::as_str) == Some("--child") {
        let started = Instant::now();
        let count = client(
            &args[1],
            &args[2],
            &args[3],
            args[4].parse().unwrap(),
            &args[5],
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
    let seconds: u64 = args.iter().find_map(|a| a.parse().ok()).unwrap_or(30);
    init();
    let dir = std::env::temp_dir().join(format!("kvssink-rtsp-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();

    // The camera: a media of its own for each client (not shared), on a main loop of its own.
    let context = glib::MainContext::new();
    let main_loop = glib::MainLoop::new(Some(&context), false);
    let server = gst_rtsp_server::RTSPServer::new();
    server.set_address("127.0.0.1");
    server.set_service("0");
    let factory = gst_rtsp_server::RTSPMediaFactory::new();
    factory.set_launch(
        "( videotestsrc is-live=true pattern=ball ! video/x-raw,format=I420,width=640,height=480,framerate=30/1 \
         ! x264enc tune=zerolatency speed-preset=ultrafast bitrate=2000 key-int-max=60 bframes=0 ! h264parse \
         ! rtph264pay name=pay0 pt=96 config-interval=-1 )",
    );
    server.mount_points().unwrap().add_factory("/cam", factory);
    let _source = server.attach(Some(&context)).unwrap();
    let camera = format!("rtsp://127.0.0.1:{}/cam", server.bound_port());
    let loop_thread = {
        let (main_loop, context) = (main_loop.clone(), context.clone());
        std::thread::spawn(move || {
            let _guard = context.acquire().unwrap();
            main_loop.run();
        })
    };

    let (runtime, emulator) = common::recording_emulator();
    let url = emulator.base_url();
    let http = |method: &str, path: &str, body: &str| {
        common::emulator_call(emulator.local_addr(), method, path, body)
    };
    http(
        "POST",
        "/createStream",
        &format!("{{\"StreamName\":\"{STREAM}\",\"DataRetentionInHours\":1}}"),
    );
    println!(
        "camera: 640x480 H.264 at 30 fps, 2 Mbit/s, 2-s GOP, over RTSP/TCP on this machine; {seconds} s per client"
    );

    let secs = seconds.to_string();
    let base_out = dir.join("fakesink.txt");
    let base = run_child(
        "fakesink",
        &[&camera, &url, &secs, base_out.to_str().unwrap()],
    );
    let sink_out = dir.join("kvssink.txt");
    let sink = run_child(
        "kvssink",
        &[&camera, &url, &secs, sink_out.to_str().unwrap()],
    );
    let held: usize = std::fs::read_to_string(&sink_out)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(base.count > 0 && sink.count > 0, "frames went through");

    let mut baseline: Vec<f64> = std::fs::read_to_string(&base_out)
        .unwrap()
        .lines()
        .map(|l| l.trim().parse::<f64>().unwrap() / 1000.0)
        .collect();
    let arrivals = http("GET", &format!("/_emulator/streams/{STREAM}/arrivals"), "");
    let stored = arrivals["frames"].as_array().unwrap();
    let mut latency: Vec<f64> = stored
        .iter()
        .skip(held)
        .map(|s| {
            (s["arrived_us"].as_i64().unwrap() - s["producer_ms"].as_i64().unwrap() * 1000) as f64
                / 1000.0
        })
        .collect();
    println!(
        "fakesink: {} frames, {:.2} CPU s, peak RSS {:.1} MiB",
        base.count, base.cpu, base.rss_mb
    );
    println!(
        "kvssink:  {} frames ({} at the server), {:.2} CPU s ({:.2}x), peak RSS {:.1} MiB ({:+.1})",
        sink.count,
        stored.len(),
        sink.cpu,
        sink.cpu / base.cpu.max(0.001),
        sink.rss_mb,
        sink.rss_mb - base.rss_mb
    );
    let base_p50 = {
        let mut v = baseline.clone();
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
    };
    println!(
        "capture (camera time) -> frame at fakesink: {}",
        summary(&mut baseline)
    );
    println!(
        "capture (camera time) -> its last byte at the server (kvssink), frames after the first report: {}",
        summary(&mut latency)
    );
    println!(
        "({held} frames came before the camera's first sender report: capture-time=meta held them until it and \
         stamped them from it; left out above)"
    );
    let mut sorted = latency.clone();
    sorted.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let p50 = sorted.get(sorted.len() / 2).copied().unwrap_or(f64::NAN);
    println!(
        "kvssink above the fakesink baseline at p50: {:+.1} ms (stored times are whole ms: up to 1 ms of it)",
        p50 - base_p50
    );
    println!(
        "C++ kvssink as measured on the wire (a paced file, not a camera; its own timestamp -> last byte): p50 ~17 ms, p90 ~32 ms, max ~40 ms"
    );
    println!("left out: TLS, a real network, the service's processing");
    main_loop.quit();
    loop_thread.join().unwrap();
    drop(runtime);
    let _ = std::fs::remove_dir_all(&dir);
}
