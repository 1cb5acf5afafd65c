// SPDX-License-Identifier: MPL-2.0

//! kvssink in triggered mode: how soon a trigger's pre-roll is on the wire, and what an idle triggered sink
//! holding a 10-s pre-roll costs next to the same pipeline into `fakesink`. Prints numbers; asserts only that
//! each window's frames arrived.
//!
//! `cargo bench --bench kvssink_trigger [-- SECONDS]` (default 40).
//!
//! The clip: SECONDS of 640x480 H.264 at 30 fps, 2 Mbit/s, a key frame each second, played at its own pace in
//! a child process (this binary again): `filesrc ! matroskademux ! h264parse ! clocksync ! matroskamux
//! streamable=true ! SINK`. SINK is `fakesink` (the baseline), `kvssink upload-mode=triggered pre-roll=10`
//! never triggered (idle: what holding the pre-roll costs), the same with `buffer-dir` (the pre-roll held as
//! files in the system's temporary directory), or the same sink triggered twice, at 15 s and at
//! 30 s of the clip, for 2 s each (post-roll 0), by the `trigger` action signal from the streaming thread.
//! kvssink sends into an in-process kvs-emulator started with `--record-arrivals` over plain HTTP on loopback:
//! TLS, a real network's round trips and the service's own latency are left out. For each trigger:
//! - trigger -> the PutMedia request's head at the server (the connection set-up: the sink keeps no
//!   connection between windows; GetDataEndpoint was looked up at start);
//! - trigger -> the first byte of the pre-roll (the first body byte: the stream header, then the pre-roll's
//!   first frame);
//! - trigger -> the last byte of the pre-roll's first frame, and of the whole pre-roll (about 10 s, 2.5 MB, sent
//!   at once: the service's own limits, 5 fragments and 12.5 MB a second, pace it).

mod common;

use std::io::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{cpu_seconds, peak_rss_mb, run_child, run_to_eos};
use gst::prelude::*;

const STREAM: &str = "trigger";
const PRE_ROLL_S: u64 = 10;
/// Clip seconds at which the triggers fire, and how long each lasts.
const TRIGGERS_S: [u64; 2] = [15, 30];
const DURATION_S: u64 = 2;

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

/// Child: plays the clip into `mode` (`fakesink`, `idle`, `triggered`); writes the time of each trigger (µs
/// since the epoch) to `out`. Counts the frames played.
fn play(mode: &str, clip: &str, url: &str, out: &str) -> u64 {
    init();
    let store = if mode == "idle-disk" {
        format!(" buffer-dir={out}.store")
    } else {
        String::new()
    };
    let sink = match mode {
        "fakesink" => "fakesink sync=false".to_owned(),
        _ => format!(
            "kvssink name=sink stream-name={STREAM} endpoint-uri={url} access-key=AKIDBENCH \
             secret-access-key=bench-secret region=us-east-1 upload-mode=triggered pre-roll={PRE_ROLL_S}{store}"
        ),
    };
    let description = format!(
        "filesrc location={clip} ! matroskademux ! h264parse ! clocksync name=pace ! matroskamux streamable=true ! {sink}"
    );
    let pipeline = gst::parse::launch(&description).unwrap();
    let bin = pipeline.downcast_ref::<gst::Bin>().unwrap();
    let frames = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let triggers = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let (counter, fired, kvssink) = (frames.clone(), triggers.clone(), bin.by_name("sink"));
    let triggered = mode == "triggered";
    bin.by_name("pace")
        .unwrap()
        .static_pad("src")
        .unwrap()
        .add_probe(gst::PadProbeType::BUFFER, move |_, _| {
            let index = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            if triggered && TRIGGERS_S.iter().any(|s| s * 30 == index) {
                let sink = kvssink.as_ref().unwrap();
                fired.lock().unwrap().push(now_us());
                sink.emit_by_name::<()>("trigger", &[&u64::MAX, &(DURATION_S * 1_000_000_000)]);
            }
            gst::PadProbeReturn::Ok
        });
    run_to_eos(&pipeline, Duration::from_secs(600));
    let mut file = std::fs::File::create(out).unwrap();
    for at in triggers.lock().unwrap().iter() {
        writeln!(file, "{at}").unwrap();
    }
    frames.load(std::sync::atomic::Ordering::SeqCst)
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    if args.first().map(String::as_str) == Some("--child") {
        let count = play(&args[1], &args[2], &args[3], &args[4]);
        println!("count {count}");
        println!("measured 0 {} {}", cpu_seconds(), peak_rss_mb());
        return;
    }
    let seconds: u32 = args
        .iter()
        .find_map(|a| a.parse().ok())
        .unwrap_or(40)
        .max(35);
    init();
    let dir = std::env::temp_dir().join(format!("kvssink-trigger-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let clip = dir.join("clip.mkv");
    common::encode_clip(&clip, seconds, (640, 480, 30), 2000, 30);
    println!(
        "clip: {seconds} s of 640x480 H.264 at 2 Mbit/s, 1-s GOP, {:.1} MB; pre-roll {PRE_ROLL_S} s",
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
    let frames = u64::from(seconds) * 30;

    let out = |name: &str| dir.join(name).to_str().unwrap().to_owned();
    let base = run_child("fakesink", &[&clip, &url, &out("fakesink.txt")]);
    let idle = run_child("idle", &[&clip, &url, &out("idle.txt")]);
    let idle_disk = run_child("idle-disk", &[&clip, &url, &out("idle-disk.txt")]);
    assert_eq!(
        (base.count, idle.count, idle_disk.count),
        (frames, frames, frames)
    );
    let nothing = http("GET", &format!("/_emulator/streams/{STREAM}/arrivals"), "");
    let sent = nothing["frames"].as_array().map_or(0, Vec::len);
    assert_eq!(sent, 0, "the idle sink sent frames");
    println!(
        "fakesink baseline:            {:.2} CPU s, peak RSS {:.1} MiB",
        base.cpu, base.rss_mb
    );
    println!(
        "kvssink triggered, idle:      {:.2} CPU s, peak RSS {:.1} MiB ({:+.2} CPU s, {:+.1} MiB; no connection, \
         nothing sent)",
        idle.cpu,
        idle.rss_mb,
        idle.cpu - base.cpu,
        idle.rss_mb - base.rss_mb
    );
    println!(
        "the same with buffer-dir:     {:.2} CPU s, peak RSS {:.1} MiB ({:+.2} CPU s, {:+.1} MiB; the pre-roll as held \
         files in {})",
        idle_disk.cpu,
        idle_disk.rss_mb,
        idle_disk.cpu - base.cpu,
        idle_disk.rss_mb - base.rss_mb,
        std::env::temp_dir().display()
    );

    let triggered = run_child("triggered", &[&clip, &url, &out("triggered.txt")]);
    assert_eq!(triggered.count, frames);
    let fired: Vec<u64> = std::fs::read_to_string(out("triggered.txt"))
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    let arrivals = http("GET", &format!("/_emulator/streams/{STREAM}/arrivals"), "");
    let uploads = arrivals["uploads"].as_array().unwrap();
    let stored = arrivals["frames"].as_array().unwrap();
    assert_eq!(uploads.len(), TRIGGERS_S.len(), "a connection per window");
    println!(
        "kvssink triggered twice:      {:.2} CPU s, peak RSS {:.1} MiB; {} frames stored",
        triggered.cpu,
        triggered.rss_mb,
        stored.len()
    );
    for (i, (&at, upload)) in fired.iter().zip(uploads).enumerate() {
        let ms = |us: u64| (us as f64 - at as f64) / 1000.0;
        let window: Vec<&serde_json::Value> = stored
            .iter()
            .filter(|f| f["arrived_us"].as_u64().unwrap() >= at)
            .collect();
        // The pre-roll: the frames captured before the trigger (producer times before it).
        let pre_roll: Vec<&&serde_json::Value> = window
            .iter()
            .filter(|f| f["producer_ms"].as_u64().unwrap() * 1000 < at)
            .collect();
        let first = window.first().expect("the window's frames arrived");
        let last = pre_roll.last().expect("a pre-roll");
        println!(
            "trigger {} (at {} s): request head +{:.1} ms, first body byte +{:.1} ms, first pre-roll frame \
             +{:.1} ms, whole pre-roll ({} frames, {:.1} s) +{:.1} ms",
            i + 1,
            TRIGGERS_S[i],
            ms(upload["request_us"].as_u64().unwrap()),
            ms(upload["first_body_byte_us"].as_u64().unwrap()),
            ms(first["arrived_us"].as_u64().unwrap()),
            pre_roll.len(),
            (at / 1000 - first["producer_ms"].as_u64().unwrap()) as f64 / 1000.0,
            ms(last["arrived_us"].as_u64().unwrap()),
        );
    }
    let _guard = runtime.enter();
    emulator.shutdown();
    drop(_guard);
    std::fs::remove_dir_all(&dir).unwrap();
}
