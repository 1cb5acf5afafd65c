// SPDX-License-Identifier: MPL-2.0

//! kvssink latency, timestamps, CPU and memory on a paced live clip, next to the same pipeline ending in
//! `fakesink`, and end to end through a live kvssrc. Prints numbers; asserts only that every frame arrived.
//!
//! `cargo bench --bench kvssink_latency [-- SECONDS]` (default 30).
//!
//! The clip: SECONDS of 640x480 H.264 at 30 fps, 2 Mbit/s, a key frame (so a fragment) every 2 s, encoded once
//! into a Matroska file. Each run plays it at its own pace in a child process (this binary again), so its CPU
//! time and peak RSS are its own:
//! `filesrc ! matroskademux ! h264parse ! clocksync ! matroskamux streamable=true ! SINK`, with SINK `fakesink`
//! (the baseline) or `kvssink` into an in-process kvs-emulator started with `--record-arrivals`. A probe after
//! `clocksync` notes the wall-clock time each frame is released: that is its capture time. The emulator notes
//! when the last byte of each frame arrives and the producer time it was stored with. So, per frame:
//! - latency: arrival of its last byte at the server − its capture time;
//! - timestamp error: stored producer time − capture time;
//! - and once: process start → first PutMedia body byte.
//!
//! Then the same clip once more as a C++ kvssink pipeline is written, `h264parse ! clocksync ! kvssink` (its
//! `video_0` request pad, with kvssink's own matroskamux inside), for the same latency figure; and once more
//! through kvssink with a fragment store (`buffer-dir` in the system's temporary directory), against kvssink
//! without one: latency, CPU and RSS side by side.
//!
//! Last, the kvssink run again over HTTPS (the emulator's TLS mode, a test CA as `ca-file`), beside the HTTP one.
//!
//! End to end: while kvssink streams, a third child reads the stream live (`kvssrc start-selector=now !
//! matroskademux ! appsink`). kvssrc's buffers carry the producer times (epoch) as timestamps, so wall clock at
//! the appsink − PTS is the time from capture to the frame coming out of kvssrc in another process.

mod common;

use std::io::Write;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{cpu_seconds, peak_rss_mb, run_child, run_to_eos};
use gst::prelude::*;

const STREAM: &str = "latency";
/// The stream the same clip goes to through kvssink's request pad.
const STREAM_ELEMENTARY: &str = "latency-elementary";
/// The stream the same clip goes to through kvssink with a fragment store (`buffer-dir`).
const STREAM_STORE: &str = "latency-store";

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

fn init() {
    gst::init().unwrap();
    gstkvs::plugin_register_static().unwrap();
}

fn write_lines(path: &str, lines: impl IntoIterator<Item = String>) {
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    for line in lines {
        writeln!(file, "{line}").unwrap();
    }
}

fn read_numbers(path: &std::path::Path) -> Vec<i64> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| l.trim().parse().unwrap())
        .collect()
}

/// Child: plays the clip into `sink` (`fakesink` or `kvssink`); writes its start time then every frame's
/// release time (µs since the epoch) to `out`.
fn play(sink: &str, clip: &str, url: &str, out: &str, ca: Option<&str>) -> u64 {
    let start = now_us();
    init();
    let ca = ca.map(|ca| format!("ca-file={ca}")).unwrap_or_default();
    let kvssink = |stream: &str| {
        format!(
            "kvssink stream-name={stream} endpoint-uri={url} {ca} access-key=AKIDBENCH \
             secret-access-key=bench-secret region=us-east-1"
        )
    };
    let tail = match sink {
        "kvssink" => format!("matroskamux streamable=true ! {}", kvssink(STREAM)),
        // The C++ kvssink's pipeline: H.264 straight to kvssink's video_%u pad (its own matroskamux inside).
        "kvssink-elementary" => kvssink(STREAM_ELEMENTARY),
        // Every frame written to the fragment store before it is sent.
        "kvssink-store" => {
            format!(
                "matroskamux streamable=true ! {} buffer-dir={out}.store",
                kvssink(STREAM_STORE)
            )
        }
        other => format!("matroskamux streamable=true ! {other}"),
    };
    let description = format!(
        "filesrc location={clip} ! matroskademux ! h264parse ! clocksync name=pace ! {tail}"
    );
    let pipeline = gst::parse::launch(&description).unwrap();
    let released = std::sync::Arc::new(std::sync::Mutex::new(Vec::with_capacity(4096)));
    let pad = pipeline
        .downcast_ref::<gst::Bin>()
        .unwrap()
        .by_name("pace")
        .unwrap()
        .static_pad("src")
        .unwrap();
    let log = released.clone();
    pad.add_probe(gst::PadProbeType::BUFFER, move |_, _| {
        log.lock().unwrap().push(now_us());
        gst::PadProbeReturn::Ok
    });
    run_to_eos(&pipeline, Duration::from_secs(600));
    let released = released.lock().unwrap().clone();
    let count = released.len() as u64;
    write_lines(
        out,
        std::iter::once(start.to_string()).chain(released.iter().map(u64::to_string)),
    );
    count
}

/// Child: reads the stream live until `frames` video frames came out (or 120 s passed); writes wall clock −
/// PTS of each (µs).
fn read(url: &str, frames: usize, out: &str) -> u64 {
    init();
    let description = format!(
        "kvssrc stream-name={STREAM} start-selector=now endpoint-uri={url} access-key=AKIDBENCH \
         secret-access-key=bench-secret region=us-east-1 ! matroskademux ! appsink name=out sync=false"
    );
    let pipeline = gst::parse::launch(&description).unwrap();
    let appsink = pipeline
        .downcast_ref::<gst::Bin>()
        .unwrap()
        .by_name("out")
        .unwrap()
        .downcast::<gst_app::AppSink>()
        .unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();
    println!("ready");
    std::io::stdout().flush().unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut delays = Vec::new();
    while delays.len() < frames && Instant::now() < deadline {
        let Some(sample) = appsink.try_pull_sample(gst::ClockTime::from_mseconds(500)) else {
            continue;
        };
        let now = now_us() as i64;
        if let Some(pts) = sample.buffer().and_then(|b| b.pts()) {
            delays.push(now - (pts.nseconds() / 1000) as i64);
        }
    }
    pipeline.set_state(gst::State::Null).unwrap();
    write_lines(out, delays.iter().map(i64::to_string));
    delays.len() as u64
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.partial_cmp(b).unwrap());
    percentile(values, 0.5)
}

fn summary(values: &mut [f64]) -> String {
    values.sort_by(|a, b| a.partial_cmp(b).unwrap());
    format!(
        "p50 {:.1} / p90 {:.1} / p99 {:.1} / max {:.1} ms",
        percentile(values, 0.5),
        percentile(values, 0.9),
        percentile(values, 0.99),
        values.last().copied().unwrap_or(f64::NAN)
    )
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    if args.first().map(String::as_str) == Some("--child") {
        let started = Instant::now();
        let count = match args[1].as_str() {
            "play" => play(
                &args[2],
                &args[3],
                &args[4],
                &args[5],
                args.get(6).map(String::as_str),
            ),
            "read" => read(&args[2], args[3].parse().unwrap(), &args[4]),
            other => panic!("unknown mode {other}"),
        };
        println!("count {count}");
        println!(
            "measured {} {} {}",
            started.elapsed().as_secs_f64(),
            cpu_seconds(),
            peak_rss_mb()
        );
        return;
    }
    let seconds: u32 = args.iter().find_map(|a| a.parse().ok()).unwrap_or(30);
    let frames = (seconds * 30) as usize;
    init();
    let dir = std::env::temp_dir().join(format!("kvssink-latency-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let clip = dir.join("clip.mkv");
    common::encode_clip(&clip, seconds, (640, 480, 30), 2000, 60);
    println!(
        "clip: {seconds} s, {frames} frames of 640x480 H.264 at 2 Mbit/s, 2-s GOP, {:.1} MB",
        std::fs::metadata(&clip).unwrap().len() as f64 / 1e6
    );

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

    let clip = clip.to_str().unwrap().to_owned();
    let base_out = dir.join("fakesink.txt");
    let base = run_child(
        "play",
        &["fakesink", &clip, &url, base_out.to_str().unwrap()],
    );
    assert_eq!(base.count as usize, frames);

    // The live reader first (it waits for the first fragment), then the upload.
    let reader_out = dir.join("reader.txt");
    let mut reader = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--child",
            "read",
            &url,
            &frames.to_string(),
            reader_out.to_str().unwrap(),
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut reader_stdout = std::io::BufReader::new(reader.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut reader_stdout, &mut line).unwrap();
    assert_eq!(line.trim(), "ready");
    std::thread::sleep(Duration::from_millis(500));
    let sink_out = dir.join("kvssink.txt");
    let sink = run_child(
        "play",
        &["kvssink", &clip, &url, sink_out.to_str().unwrap()],
    );
    assert_eq!(sink.count as usize, frames);
    let reader_status = reader.wait().unwrap();
    assert!(reader_status.success(), "the live reader failed");

    let released = read_numbers(&sink_out);
    let (start_us, released) = (released[0], &released[1..]);
    let arrivals = http("GET", &format!("/_emulator/streams/{STREAM}/arrivals"), "");
    let stored = arrivals["frames"].as_array().unwrap();
    assert_eq!(stored.len(), frames, "every frame arrived once");
    let first_byte_us = arrivals["uploads"][0]["first_body_byte_us"]
        .as_i64()
        .unwrap();
    let mut latency: Vec<f64> = stored
        .iter()
        .zip(released)
        .map(|(s, r)| (s["arrived_us"].as_i64().unwrap() - r) as f64 / 1000.0)
        .collect();
    let latency_without_store = latency.clone();
    let mut errors: Vec<f64> = stored
        .iter()
        .zip(released)
        .map(|(s, r)| s["producer_ms"].as_i64().unwrap() as f64 - *r as f64 / 1000.0)
        .collect();
    let worst_error = errors
        .iter()
        .copied()
        .fold(0f64, |a, e| if e.abs() > a.abs() { e } else { a });

    println!(
        "fakesink baseline: {:.2} s wall, {:.2} CPU s, peak RSS {:.1} MiB",
        base.seconds, base.cpu, base.rss_mb
    );
    println!(
        "kvssink:           {:.2} s wall, {:.2} CPU s, peak RSS {:.1} MiB",
        sink.seconds, sink.cpu, sink.rss_mb
    );
    println!(
        "kvssink above fakesink: CPU {:+.2} s ({:.2}x), peak RSS {:+.1} MiB",
        sink.cpu - base.cpu,
        sink.cpu / base.cpu.max(0.001),
        sink.rss_mb - base.rss_mb
    );
    println!(
        "frame capture -> its last byte at the server: {}",
        summary(&mut latency)
    );
    println!(
        "process start -> first PutMedia body byte: {:.1} ms",
        (first_byte_us - start_us) as f64 / 1000.0
    );
    println!(
        "stored producer time - capture time: worst {worst_error:+.1} ms, {}",
        summary(&mut errors.iter().map(|e| e.abs()).collect::<Vec<_>>())
    );
    errors.clear();

    let delays = read_numbers(&reader_out);
    // The first 2 s are left out: the reader joins the stream at its first fragment.
    let skip = delays.len().min(60);
    let mut end_to_end: Vec<f64> = delays[skip..].iter().map(|d| *d as f64 / 1000.0).collect();
    println!(
        "end to end (capture -> frame out of a live kvssrc ! matroskademux in another process), {} frames after \
         the first {skip}: {}",
        end_to_end.len(),
        summary(&mut end_to_end)
    );

    // The same clip through kvssink's request pad, as a C++ kvssink pipeline is written.
    http(
        "POST",
        "/createStream",
        &format!("{{\"StreamName\":\"{STREAM_ELEMENTARY}\",\"DataRetentionInHours\":1}}"),
    );
    // Plays the clip through `mode` into `stream`; its measures and every frame's capture -> server latency.
    let latency_of = |mode: &str, stream: &str| {
        let out = dir.join(format!("{mode}.txt"));
        let measured = run_child("play", &[mode, &clip, &url, out.to_str().unwrap()]);
        assert_eq!(measured.count as usize, frames);
        let released = read_numbers(&out);
        let arrivals = http("GET", &format!("/_emulator/streams/{stream}/arrivals"), "");
        let stored = arrivals["frames"].as_array().unwrap().clone();
        assert_eq!(stored.len(), frames, "every frame arrived once");
        let latency: Vec<f64> = stored
            .iter()
            .zip(&released[1..])
            .map(|(s, r)| (s["arrived_us"].as_i64().unwrap() - r) as f64 / 1000.0)
            .collect();
        (measured, latency)
    };
    let (elementary, mut latency) = latency_of("kvssink-elementary", STREAM_ELEMENTARY);
    println!(
        "h264parse ! kvssink (video_0 request pad): {:.2} CPU s, peak RSS {:.1} MiB; frame capture -> its last \
         byte at the server: {}",
        elementary.cpu,
        elementary.rss_mb,
        summary(&mut latency)
    );

    // With the fragment store: every frame written to disk before it is sent.
    http(
        "POST",
        "/createStream",
        &format!("{{\"StreamName\":\"{STREAM_STORE}\",\"DataRetentionInHours\":1}}"),
    );
    let (stored_run, mut with_store) = latency_of("kvssink-store", STREAM_STORE);
    let mut without = latency_without_store.clone();
    let (p50_with, p50_without) = (median(&mut with_store), median(&mut without));
    println!(
        "kvssink buffer-dir=...: {:.2} CPU s, peak RSS {:.1} MiB; frame capture -> its last byte at the server: {}",
        stored_run.cpu,
        stored_run.rss_mb,
        summary(&mut with_store)
    );
    println!(
        "the store against no store: p50 {:+.2} ms ({p50_with:.2} vs {p50_without:.2}), CPU {:+.2} s ({:.2}x), \
         peak RSS {:+.1} MiB (disk: {}; page cache, fsync at each fragment's end)",
        p50_with - p50_without,
        stored_run.cpu - sink.cpu,
        stored_run.cpu / sink.cpu.max(0.001),
        stored_run.rss_mb - sink.rss_mb,
        std::env::temp_dir().display()
    );
    let _guard = runtime.enter();
    emulator.shutdown();
    drop(_guard);

    // The same kvssink run over HTTPS (the emulator's TLS mode, a test CA given to kvssink as `ca-file`).
    let tls = kvs_emulator::tls::LocalCa::make().unwrap();
    let (tls_runtime, tls_emulator) = common::recording_emulator_with(Some(&tls));
    let tls_url = tls_emulator.base_url();
    let ca = tls.ca.to_str().unwrap().to_owned();
    // The admin and control calls go over TLS too: the bench's own small client.
    let tls_http = |path: &str, body: &str| -> serde_json::Value {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            use http_body_util::BodyExt;
            let io = common::connect(&tls_url, Some(&tls.ca)).await;
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io))
                    .await
                    .unwrap();
            tokio::spawn(conn);
            let method = if body.is_empty() { "GET" } else { "POST" };
            let request = hyper::Request::builder()
                .method(method)
                .uri(path)
                .header("host", tls_url.trim_start_matches("https://"))
                .body(http_body_util::Full::new(bytes::Bytes::from(
                    body.to_owned(),
                )))
                .unwrap();
            let answer = sender
                .send_request(request)
                .await
                .unwrap()
                .into_body()
                .collect()
                .await
                .unwrap();
            serde_json::from_slice(&answer.to_bytes()).unwrap_or(serde_json::Value::Null)
        })
    };
    tls_http(
        "/createStream",
        &format!("{{\"StreamName\":\"{STREAM}\",\"DataRetentionInHours\":1}}"),
    );
    let tls_out = dir.join("kvssink-https.txt");
    let over_tls = run_child(
        "play",
        &["kvssink", &clip, &tls_url, tls_out.to_str().unwrap(), &ca],
    );
    assert_eq!(over_tls.count as usize, frames);
    let released = read_numbers(&tls_out);
    let arrivals = tls_http(&format!("/_emulator/streams/{STREAM}/arrivals"), "");
    let stored = arrivals["frames"].as_array().unwrap();
    assert_eq!(stored.len(), frames, "every frame arrived once");
    let mut tls_latency: Vec<f64> = stored
        .iter()
        .zip(&released[1..])
        .map(|(s, r)| (s["arrived_us"].as_i64().unwrap() - r) as f64 / 1000.0)
        .collect();
    let mut plain = latency_without_store.clone();
    println!(
        "kvssink over HTTPS: {:.2} CPU s ({:+.2} s above fakesink, against {:+.2} s over HTTP), peak RSS {:.1} MiB \
         ({:+.1} against HTTP); frame capture -> its last byte at the server: {} (HTTP: {})",
        over_tls.cpu,
        over_tls.cpu - base.cpu,
        sink.cpu - base.cpu,
        over_tls.rss_mb,
        over_tls.rss_mb - sink.rss_mb,
        summary(&mut tls_latency),
        summary(&mut plain)
    );
    let _guard = tls_runtime.enter();
    tls_emulator.shutdown();
    drop(_guard);
    std::fs::remove_dir_all(&dir).unwrap();
}
