// SPDX-License-Identifier: MPL-2.0

//! The fault campaign: one kvssink uploads a long recording (`sync=false`) to a kvs-emulator process while
//! drivers inject faults drawn at random from a seed (every PutMedia kind the emulator has, emulator restarts
//! with SIGKILL on its `--data-dir`), and a live kvssrc (a `gst-launch-1.0` child process) reads the same
//! stream under its own GetMedia faults. At the end every frame is checked: stored at least once, read by kvssrc
//! exactly once, in order, byte for byte. Faults are counted when they fire (the emulator's `fired` counts), not
//! when they are armed, and every kind armed must have fired.
//!
//! Shared by the benchmark `benches/chaos.rs` (an hour of stream time, over a hundred faults) and a short run in
//! the test command (`tests/elements/chaos.rs`). Frames are generated, not encoded: each payload starts with its
//! index and is filled from the seed, so every stored or read frame can be checked against what was sent.

use std::collections::BTreeMap;
use std::io::{BufRead, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use gst::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

pub struct Config {
    pub seed: u64,
    /// Stream time to upload, in seconds (30 frames a second, one fragment a second).
    pub stream_seconds: u64,
    /// How many times faster than real time the recording is fed to kvssink (which uploads as fast as it can:
    /// `sync=false`); the pace leaves the fault drivers time to act during the upload.
    pub speed: u64,
    /// PutMedia faults to inject (at least).
    pub faults: usize,
    /// Emulator restarts (SIGKILL, then started again on the same port and data directory).
    pub restarts: usize,
    /// GetMedia faults for the reader.
    pub read_faults: usize,
    pub emulator: PathBuf,
    /// Where libgstkvs.so is, for the reader child process.
    pub plugin_dir: PathBuf,
}

#[derive(Debug, Default)]
pub struct Report {
    pub frames_sent: u64,
    pub frames_stored: u64,
    pub frames_stored_twice: u64,
    pub frames_lost: u64,
    pub frames_read: u64,
    pub read_duplicates: u64,
    pub read_missing: u64,
    pub read_out_of_order: u64,
    /// The first frames kvssrc did not read, and what the reader said (warnings, reconnections).
    pub missing_examples: Vec<u64>,
    pub reader_log: String,
    pub corrupt: u64,
    pub reconnections: u64,
    /// The PutMedia and GetMedia fault sets armed, each as its kinds joined by `+`.
    pub faults: Vec<String>,
    pub read_faults: Vec<String>,
    /// The connections the campaign ended itself (after arming a set, so that the next connection takes it):
    /// drops, not faults.
    pub drops: usize,
    /// Faults armed and taken by a connection, by "API kind".
    pub armed: BTreeMap<String, u64>,
    /// Of those, the ones that fired (the emulator's count rose while the driver waited).
    pub armed_fired: BTreeMap<String, u64>,
    /// Faults left out of the count: gone with an emulator restart before a connection took them, or still
    /// waiting to fire when the recording ended.
    pub not_taken: usize,
    /// Faults that fired, by "API kind", as the emulator counted them (one per connection in which the fault
    /// acted), summed over the emulator's restarts.
    pub fired: BTreeMap<String, u64>,
    pub restarts: usize,
    pub longest_gap: Duration,
    pub rss_kib: Vec<u64>,
    pub peak_rss_kib: u64,
    pub upload_time: Duration,
    pub error: Option<String>,
}

const FPS: u64 = 30;
const STREAM: &str = "chaos";

/// Frame `index`'s payload: its index, then bytes drawn from the seed.
fn payload(seed: u64, index: u64) -> Vec<u8> {
    let mut rng = StdRng::seed_from_u64(seed ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut out = index.to_be_bytes().to_vec();
    out.extend((0..rng.random_range(200..600)).map(|_| rng.random::<u8>()));
    out
}

/// A kvs-emulator child process on a fixed port and data directory.
struct Emulator {
    binary: PathBuf,
    data_dir: PathBuf,
    listen: String,
    child: Child,
    addr: SocketAddr,
}

/// Starts a kvs-emulator process listening on `listen` with `--data-dir`; returns it and its base URL (its
/// first stdout line).
pub fn spawn_emulator(binary: &Path, data_dir: &Path, listen: &str) -> (Child, String) {
    assert!(
        binary.exists(),
        "{} not found: cargo build -p kvs-emulator",
        binary.display()
    );
    let mut child = Command::new(binary)
        .args(["--listen", listen, "--data-dir"])
        .arg(data_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start kvs-emulator");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    (child, line.trim().to_owned())
}

impl Emulator {
    fn start(binary: &Path, data_dir: &Path) -> (Emulator, String) {
        let (child, url) = spawn_emulator(binary, data_dir, "127.0.0.1:0");
        let listen = url.trim_start_matches("http://").to_owned();
        let addr = listen.parse().unwrap();
        (
            Emulator {
                binary: binary.into(),
                data_dir: data_dir.into(),
                listen,
                child,
                addr,
            },
            url,
        )
    }

    fn restart(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        std::thread::sleep(Duration::from_millis(500));
        let (child, _) = spawn_emulator(&self.binary, &self.data_dir, &self.listen);
        self.child = child;
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.1 request to the emulator; None when it is down.
fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> Option<(u16, Vec<u8>)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .ok()?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).ok()?;
    let split = response.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&response[..split]).to_string();
    let status = head.split(' ').nth(1)?.parse().ok()?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(&response[split..])
    } else {
        response[split..].to_vec()
    };
    Some((status, body))
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(line_end) = data.windows(2).position(|w| w == b"\r\n") {
        let size_text = String::from_utf8_lossy(&data[..line_end]).to_string();
        let size =
            usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16).unwrap_or(0);
        if size == 0 || data.len() < line_end + 2 + size {
            break;
        }
        out.extend_from_slice(&data[line_end + 2..line_end + 2 + size]);
        data = &data[(line_end + 4 + size).min(data.len())..];
    }
    out
}

fn json_call(addr: SocketAddr, path: &str, body: Value) -> Option<Value> {
    let (status, bytes) = http(addr, "POST", path, &body.to_string())?;
    (status == 200).then(|| serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

/// Whether a fault of `api` is still armed (None: the emulator is down).
fn armed(addr: SocketAddr, api: &str) -> Option<bool> {
    let (_, bytes) = http(addr, "GET", "/_emulator/faults", "")?;
    let listed: Value = serde_json::from_slice(&bytes).ok()?;
    Some(listed["faults"].as_array()?.iter().any(|f| f["api"] == api))
}

/// The faults that fired since the emulator started, by "API kind" (None: the emulator is down).
fn fired(addr: SocketAddr) -> Option<BTreeMap<String, u64>> {
    let (_, bytes) = http(addr, "GET", "/_emulator/faults", "")?;
    let listed: Value = serde_json::from_slice(&bytes).ok()?;
    let mut out = BTreeMap::new();
    for (api, kinds) in listed["fired"].as_object()? {
        for (kind, count) in kinds.as_object()? {
            out.insert(format!("{api} {kind}"), count.as_u64()?);
        }
    }
    Some(out)
}

/// How long a driver waits for an armed fault to fire before it arms the next set.
const FIRE_WAIT: Duration = Duration::from_secs(20);

/// What one driver did.
#[derive(Debug, Default)]
struct Driven {
    /// The faults armed and taken by a connection, each with whether it fired (within [`FIRE_WAIT`]).
    sets: Vec<(String, bool)>,
    /// Faults left out: lost with an emulator restart, or still waiting to fire when the recording ended.
    not_taken: usize,
    drops: usize,
}

/// A PutMedia fault drawn at random: most end the connection, some change how ACKs come (alone, so that each
/// can fire before another fault ends its connection).
fn putmedia_faults(rng: &mut StdRng) -> Vec<Value> {
    let close = ["drop", "fin", "reset"][rng.random_range(0..3)];
    let fragment = rng.random_range(1..6);
    let ending = match rng.random_range(0..11) {
        0 => {
            json!({"kind": "drop_after_bytes", "bytes": rng.random_range(1_000..400_000), "close": close})
        }
        1 => json!({"kind": "drop_at_fragment", "fragment": fragment, "close": close}),
        2 => {
            json!({"kind": "drop_after_ack", "fragment": fragment, "event": "PERSISTED", "close": close})
        }
        3 => {
            json!({"kind": "drop_after_ack", "fragment": fragment, "event": "RECEIVED", "close": "reset"})
        }
        4 => json!({"kind": "end_response", "fragment": fragment}),
        5 => {
            let error_id = [5000, 5001][rng.random_range(0..2)];
            json!({"kind": "error_ack", "fragment": fragment, "error_id": error_id})
        }
        6 => json!({"kind": "endless_line", "fragment": fragment}),
        7 => json!({"kind": "stop_reading", "fragment": fragment}),
        8 => json!({"kind": "raw_response", "status": 502, "content_type": "text/html",
                    "body": "<html><body><h1>502 Bad Gateway</h1></body></html>"}),
        9 => json!({"kind": "http_error", "status": 500, "error": "InternalFailure"}),
        _ => {
            json!({"kind": "drop_after_bytes", "bytes": rng.random_range(100..5_000), "close": "reset"})
        }
    };
    if rng.random_bool(0.3) {
        return vec![match rng.random_range(0..6) {
            0 => json!({"kind": "split_acks", "bytes": rng.random_range(1..40)}),
            1 => json!({"kind": "coalesce_acks", "count": rng.random_range(2..6)}),
            2 => {
                json!({"kind": "garble_ack", "fragment": rng.random_range(1..4), "event": "PERSISTED"})
            }
            3 => json!({"kind": "unknown_ack", "fragment": rng.random_range(1..4)}),
            4 => json!({"kind": "no_continue"}),
            _ => json!({"kind": "delay_acks", "ms": rng.random_range(50..1_500)}),
        }];
    }
    vec![ending]
}

fn getmedia_fault(rng: &mut StdRng) -> Value {
    match rng.random_range(0..5) {
        0 => json!({"kind": "end_response_after_bytes", "bytes": rng.random_range(1_000..300_000)}),
        1 => {
            json!({"kind": "drop_after_bytes", "bytes": rng.random_range(1_000..300_000), "close": "reset"})
        }
        2 => json!({"kind": "stall", "bytes": rng.random_range(1_000..300_000)}),
        3 => json!({"kind": "garble_media", "fragment": rng.random_range(1..20)}),
        _ => {
            json!({"kind": "raw_response", "status": 503, "content_type": "text/plain", "body": "try again"})
        }
    }
}

/// Arms faults for `api` one at a time, until `done`: a fault, then a drop of the current connection so that
/// the next one takes it, then a wait until the fault fired (the emulator counts it) or [`FIRE_WAIT`] passed.
/// `restarts` counts the emulator's restarts: a fault armed before one is gone with it.
#[allow(clippy::too_many_arguments)]
fn drive(
    addr: SocketAddr,
    api: &'static str,
    mut rng: StdRng,
    wanted: usize,
    done: Arc<AtomicBool>,
    pause: Arc<AtomicBool>,
    restarts: Arc<AtomicU64>,
    next: impl Fn(&mut StdRng) -> Vec<Value>,
) -> Driven {
    let mut driven = Driven::default();
    while !done.load(Ordering::Relaxed) && driven.sets.len() < wanted {
        std::thread::sleep(Duration::from_millis(rng.random_range(20..200)));
        if pause.load(Ordering::Relaxed) {
            continue;
        }
        let faults = next(&mut rng);
        let generation = restarts.load(Ordering::Relaxed);
        let first = format!("{api} {}", faults[0]["kind"].as_str().unwrap_or("?"));
        let Some(before) = fired(addr).map(|f| f.get(&first).copied().unwrap_or(0)) else {
            continue;
        };
        let mut armed_ok = true;
        for fault in &faults {
            let mut fault = fault.clone();
            fault["api"] = json!(api);
            fault["stream"] = json!(STREAM);
            armed_ok &= http(addr, "POST", "/_emulator/faults", &fault.to_string())
                .is_some_and(|(s, _)| s == 200);
        }
        if !armed_ok {
            continue;
        }
        let kinds = faults
            .iter()
            .map(|f| f["kind"].as_str().unwrap_or("?"))
            .collect::<Vec<_>>()
            .join("+");
        // Faults act on the next connection: end the current one now, the way a network does (a fault too).
        let close = ["drop", "fin", "reset"][rng.random_range(0..3)];
        let drop = json!({"api": api, "close": close}).to_string();
        if http(
            addr,
            "POST",
            &format!("/_emulator/streams/{STREAM}/drop"),
            &drop,
        )
        .is_some_and(|(s, _)| s == 200)
        {
            driven.drops += 1;
        }
        // Taken by a connection (or gone with a restarted emulator), then fired (or given up on).
        while !done.load(Ordering::Relaxed) && armed(addr, api).unwrap_or(false) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let taken = Instant::now();
        let has_fired =
            || fired(addr).is_some_and(|f| f.get(&first).copied().unwrap_or(0) > before);
        let mut fired_now = false;
        while !done.load(Ordering::Relaxed) && taken.elapsed() < FIRE_WAIT {
            fired_now = has_fired();
            if fired_now || restarts.load(Ordering::Relaxed) != generation {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if fired_now {
            driven.sets.push((kinds, true));
        } else if restarts.load(Ordering::Relaxed) != generation || done.load(Ordering::Relaxed) {
            driven.not_taken += 1;
        } else {
            driven.sets.push((kinds, false));
        }
    }
    driven
}

/// Resident and peak memory of this process (KiB).
fn rss_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with(field)).map(str::to_owned))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

/// Frame indexes and payload checks of Matroska bytes (tolerating a cut-off end).
fn frame_indexes(seed: u64, data: &[u8], corrupt: &mut u64) -> Vec<u64> {
    let mut reader = kvs_mkv::MkvReader::new();
    reader.push(data);
    let mut out = Vec::new();
    while let Ok(Some(event)) = reader.next_event() {
        if let kvs_mkv::Event::ClusterChild(element) = event
            && element.id == kvs_mkv::ebml::id::SIMPLE_BLOCK
        {
            let data = element.data();
            let Ok(info) = kvs_mkv::block::parse_simple_block(&data) else {
                continue;
            };
            let frame = &data[info.header_len..];
            let Some(index) = frame
                .get(..8)
                .map(|b| u64::from_be_bytes(b.try_into().unwrap()))
            else {
                continue;
            };
            if frame != payload(seed, index).as_slice() {
                *corrupt += 1;
            }
            out.push(index);
        }
    }
    out
}

/// Every stored fragment's frames, in producer-timestamp order (ListFragments pages, then
/// GetMediaForFragmentList in batches).
fn stored_frames(addr: SocketAddr, seed: u64, corrupt: &mut u64) -> Vec<u64> {
    let mut fragments: Vec<(f64, String)> = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let mut request = json!({"StreamName": STREAM, "MaxResults": 1000});
        if let Some(t) = &token {
            request["NextToken"] = json!(t);
        }
        let page = json_call(addr, "/listFragments", request).expect("ListFragments");
        for f in page["Fragments"].as_array().unwrap() {
            fragments.push((
                f["ProducerTimestamp"].as_f64().unwrap(),
                f["FragmentNumber"].as_str().unwrap().into(),
            ));
        }
        match page["NextToken"].as_str() {
            Some(t) => token = Some(t.to_owned()),
            None => break,
        }
    }
    fragments.sort_by(|a, b| a.0.total_cmp(&b.0).then_with(|| a.1.cmp(&b.1)));
    let mut out = Vec::new();
    for batch in fragments.chunks(200) {
        let numbers: Vec<&str> = batch.iter().map(|(_, n)| n.as_str()).collect();
        let body = json!({"StreamName": STREAM, "Fragments": numbers}).to_string();
        let (status, bytes) =
            http(addr, "POST", "/getMediaForFragmentList", &body).expect("GetMediaForFragmentList");
        assert_eq!(status, 200);
        out.extend(frame_indexes(seed, &bytes, corrupt));
    }
    out
}

pub fn run(config: &Config) -> Report {
    let mut report = Report::default();
    let mut rng = StdRng::seed_from_u64(config.seed);
    let data_dir =
        std::env::temp_dir().join(format!("kvs-chaos-{}-{}", std::process::id(), config.seed));
    let _ = std::fs::remove_dir_all(&data_dir);
    let (emulator, url) = Emulator::start(&config.emulator, &data_dir);
    let addr = emulator.addr;
    let emulator = Arc::new(Mutex::new(emulator));
    assert!(
        json_call(
            addr,
            "/createStream",
            json!({"StreamName": STREAM, "DataRetentionInHours": 2})
        )
        .is_some()
    );

    // The reader: a live kvssrc in its own process, writing what it reads to a file.
    let read_path = data_dir.with_extension("read.mkv");
    let mut reader = Command::new("gst-launch-1.0")
        .args([
            "-e",
            "-q",
            "kvssrc",
            &format!("stream-name={STREAM}"),
            "request-timeout=2000",
            "!",
            "filesink",
            "buffer-mode=unbuffered",
        ])
        .arg(format!("location={}", read_path.display()))
        .env("GST_PLUGIN_PATH", &config.plugin_dir)
        .env("CONTROL_PLANE_URI", &url)
        .env("AWS_ACCESS_KEY_ID", "AKIDCHAOS")
        .env("AWS_SECRET_ACCESS_KEY", "chaos-secret")
        .env("AWS_REGION", "us-east-1")
        .env("GST_DEBUG", "kvssrc:5")
        .env("GST_DEBUG_NO_COLOR", "1")
        .env("GST_DEBUG_FILE", data_dir.with_extension("reader.log"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("gst-launch-1.0 kvssrc");
    std::thread::sleep(Duration::from_millis(1_000));

    // The uploader: appsrc of generated Matroska into kvssink, in this process.
    let frames = config.stream_seconds * FPS;
    let start_time = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        - config.stream_seconds
        - 60;
    let pipeline = gst::parse::launch(&format!(
        "appsrc name=src format=bytes block=true max-bytes=1000000 caps=video/x-matroska ! kvssink name=sink \
         stream-name={STREAM} endpoint-uri={url} access-key=AKIDCHAOS secret-access-key=chaos-secret \
         region=us-east-1 sync=false connection-staleness=3 retry-limit=0 file-start-time={start_time}"
    ))
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    let appsrc = pipeline
        .by_name("src")
        .unwrap()
        .downcast::<gst_app::AppSrc>()
        .unwrap();
    let sink = pipeline.by_name("sink").unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();

    let sent = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let pause = Arc::new(AtomicBool::new(false));
    let restart_count = Arc::new(AtomicU64::new(0));
    let seed = config.seed;
    let speed = config.speed.max(1);
    let generator = {
        let (sent, done) = (sent.clone(), done.clone());
        std::thread::spawn(move || {
            let began = Instant::now();
            let codec_private = kvs_mkv::writer::h264_stream_header();
            let mut head = Vec::new();
            kvs_mkv::writer::write_ebml_header(&mut head, "matroska");
            kvs_mkv::writer::write_segment_start(&mut head);
            kvs_mkv::writer::write_info(&mut head, 1_000_000);
            kvs_mkv::writer::write_tracks(
                &mut head,
                &[kvs_mkv::writer::TrackSpec {
                    number: 1,
                    track_type: 1,
                    codec_id: "V_MPEG4/ISO/AVC",
                    codec_private: &codec_private,
                }],
            );
            let _ = appsrc.push_buffer(gst::Buffer::from_slice(head));
            for second in 0..frames / FPS {
                let due = began + Duration::from_millis(second * 1000 / speed);
                std::thread::sleep(due.saturating_duration_since(Instant::now()));
                let mut cluster = Vec::new();
                kvs_mkv::writer::write_cluster_start(&mut cluster, second * 1000);
                for i in 0..FPS {
                    let index = second * FPS + i;
                    kvs_mkv::writer::write_simple_block(
                        &mut cluster,
                        1,
                        (i * 33) as i16,
                        i == 0,
                        &payload(seed, index),
                    );
                }
                if appsrc
                    .push_buffer(gst::Buffer::from_slice(cluster))
                    .is_err()
                {
                    return;
                }
                sent.fetch_add(FPS, Ordering::Relaxed);
            }
            let _ = appsrc.end_of_stream();
            // No fault is armed after the recording ends: a GetMedia fault that acts after N bytes, say, could
            // not fire once nothing more is written.
            done.store(true, Ordering::Relaxed);
        })
    };

    let putmedia_driver = {
        let (done, pause, restarts, rng) = (
            done.clone(),
            pause.clone(),
            restart_count.clone(),
            StdRng::seed_from_u64(rng.random()),
        );
        let wanted = config.faults;
        std::thread::spawn(move || {
            drive(
                addr,
                "putMedia",
                rng,
                wanted,
                done,
                pause,
                restarts,
                putmedia_faults,
            )
        })
    };
    let getmedia_driver = {
        let (done, pause, restarts, rng) = (
            done.clone(),
            pause.clone(),
            restart_count.clone(),
            StdRng::seed_from_u64(rng.random()),
        );
        let wanted = config.read_faults;
        std::thread::spawn(move || {
            drive(addr, "getMedia", rng, wanted, done, pause, restarts, |r| {
                vec![getmedia_fault(r)]
            })
        })
    };

    // Bus, memory and restarts until the upload ends.
    let started = Instant::now();
    let bus = pipeline.bus().unwrap();
    let mut noticed: Option<Instant> = None;
    let mut restarts_left: Vec<u64> = (1..=config.restarts as u64)
        .map(|k| frames * k / (config.restarts as u64 + 1))
        .collect();
    loop {
        if let Some(&at) = restarts_left.first()
            && sent.load(Ordering::Relaxed) >= at
        {
            restarts_left.remove(0);
            pause.store(true, Ordering::Relaxed);
            // A restarted emulator counts from zero, and forgets the faults armed.
            add_counts(&mut report.fired, fired(addr).unwrap_or_default());
            restart_count.fetch_add(1, Ordering::Relaxed);
            emulator.lock().unwrap().restart();
            pause.store(false, Ordering::Relaxed);
            report.restarts += 1;
        }
        let Some(message) = bus.timed_pop(gst::ClockTime::from_mseconds(250)) else {
            report.rss_kib.push(rss_kib("VmRSS:"));
            continue;
        };
        match message.view() {
            gst::MessageView::Eos(_) => break,
            gst::MessageView::Error(e) => {
                report.error = Some(format!("{} | {:?}", e.error(), e.debug()));
                break;
            }
            gst::MessageView::Element(e) => {
                let Some(s) = e.structure().filter(|s| s.name() == "kvssink-connection") else {
                    continue;
                };
                match s.get::<String>("state").unwrap_or_default().as_str() {
                    "reconnecting" => {
                        noticed.get_or_insert_with(Instant::now);
                    }
                    "connected" => {
                        if let Some(at) = noticed.take() {
                            report.longest_gap = report.longest_gap.max(at.elapsed());
                        }
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }
    report.upload_time = started.elapsed();
    report.peak_rss_kib = rss_kib("VmHWM:");
    done.store(true, Ordering::Relaxed);
    for (api, driven, sets) in [
        (
            "putMedia",
            putmedia_driver.join().unwrap(),
            &mut report.faults,
        ),
        (
            "getMedia",
            getmedia_driver.join().unwrap(),
            &mut report.read_faults,
        ),
    ] {
        for (kind, fired) in &driven.sets {
            let kind = format!("{api} {kind}");
            *report.armed.entry(kind.clone()).or_default() += 1;
            *report.armed_fired.entry(kind).or_default() += u64::from(*fired);
        }
        *sets = driven.sets.into_iter().map(|(kind, _)| kind).collect();
        report.drops += driven.drops;
        report.not_taken += driven.not_taken;
    }
    let _ = generator.join();
    let stats = sink.property::<gst::Structure>("stats");
    report.reconnections = stats.get::<u64>("reconnections").unwrap_or(0);
    pipeline.set_state(gst::State::Null).unwrap();
    report.frames_sent = sent.load(Ordering::Relaxed);

    // What is stored.
    let stored = stored_frames(addr, config.seed, &mut report.corrupt);
    let mut seen = vec![0u32; report.frames_sent as usize];
    for &index in &stored {
        if let Some(count) = seen.get_mut(index as usize) {
            *count += 1;
        }
    }
    report.frames_stored = seen.iter().filter(|c| **c > 0).count() as u64;
    report.frames_lost = seen.iter().filter(|c| **c == 0).count() as u64;
    report.frames_stored_twice = stored.len() as u64 - report.frames_stored;

    // What the reader read: wait until it has everything (or stops progressing for 30 s).
    let mut last = (0usize, Instant::now());
    loop {
        let data = std::fs::read(&read_path).unwrap_or_default();
        let count = frame_indexes(config.seed, &data, &mut 0).len();
        if count as u64 >= report.frames_sent || last.1.elapsed() > Duration::from_secs(30) {
            break;
        }
        if count != last.0 {
            last = (count, Instant::now());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // Unbuffered: what the file holds is all the reader wrote.
    let _ = reader.kill();
    let _ = reader.wait();
    let mut reader_log = String::new();
    if let Some(mut stderr) = reader.stderr.take() {
        let _ = stderr.read_to_string(&mut reader_log);
    }
    if reader_log.contains("ERROR") {
        report.error.get_or_insert(format!("kvssrc: {reader_log}"));
    }
    let read = frame_indexes(
        config.seed,
        &std::fs::read(&read_path).unwrap_or_default(),
        &mut report.corrupt,
    );
    report.frames_read = read.len() as u64;
    let mut seen = vec![0u32; report.frames_sent as usize];
    for (position, &index) in read.iter().enumerate() {
        match seen.get_mut(index as usize) {
            Some(count) => *count += 1,
            None => report.corrupt += 1,
        }
        if position > 0 && index <= read[position - 1] {
            report.read_out_of_order += 1;
        }
    }
    report.read_duplicates = seen.iter().map(|c| u64::from(c.saturating_sub(1))).sum();
    report.read_missing = seen.iter().filter(|c| **c == 0).count() as u64;
    report.missing_examples = seen
        .iter()
        .enumerate()
        .filter(|(_, c)| **c == 0)
        .map(|(i, _)| i as u64)
        .take(30)
        .collect();
    report.reader_log =
        std::fs::read_to_string(data_dir.with_extension("reader.log")).unwrap_or_default();
    add_counts(&mut report.fired, fired(addr).unwrap_or_default());
    let _ = std::fs::rename(
        data_dir.with_extension("reader.log"),
        std::env::temp_dir().join("kvs-chaos-reader.log"),
    );
    drop(emulator);
    let _ = std::fs::remove_dir_all(&data_dir);
    let _ = std::fs::remove_file(&read_path);
    report
}

fn add_counts(total: &mut BTreeMap<String, u64>, counts: BTreeMap<String, u64>) {
    for (kind, count) in counts {
        *total.entry(kind).or_default() += count;
    }
}

impl Report {
    /// The kinds armed (and taken) that never fired.
    pub fn never_fired(&self) -> Vec<&str> {
        self.armed
            .keys()
            .filter(|kind| self.armed_fired.get(*kind).copied().unwrap_or(0) == 0)
            .map(String::as_str)
            .collect()
    }

    pub fn print(&self, config: &Config) {
        let quarter = (self.rss_kib.len() / 4).max(1);
        let average = |s: &[u64]| s.iter().sum::<u64>() / (s.len().max(1) as u64);
        println!(
            "chaos campaign, seed {}: {} s of stream ({} frames) uploaded in {:.1} s; {} PutMedia and {} GetMedia \
             fault sets armed, {} connections dropped by the campaign to bring them on, {} emulator restarts",
            config.seed,
            config.stream_seconds,
            self.frames_sent,
            self.upload_time.as_secs_f64(),
            self.faults.len(),
            self.read_faults.len(),
            self.drops,
            self.restarts
        );
        println!(
            "  frames sent {}, stored {} ({} lost, {} stored twice), read by kvssrc {} ({} missing, {} duplicated, {} out \
             of order), corrupt {}",
            self.frames_sent,
            self.frames_stored,
            self.frames_lost,
            self.frames_stored_twice,
            self.frames_read,
            self.read_missing,
            self.read_duplicates,
            self.read_out_of_order,
            self.corrupt
        );
        println!(
            "  kvssink reconnections {}, longest failure-to-connected gap {} ms; process RSS first quarter {} MiB, last \
             quarter {} MiB, peak {} MiB",
            self.reconnections,
            self.longest_gap.as_millis(),
            average(&self.rss_kib[..quarter.min(self.rss_kib.len())]) / 1024,
            average(&self.rss_kib[self.rss_kib.len().saturating_sub(quarter)..]) / 1024,
            self.peak_rss_kib / 1024
        );
        let fired: u64 = self.fired.values().sum();
        println!(
            "  faults fired: {fired} (connections in which a fault acted, as the emulator counted); {} armed \
             faults left out: gone with a restart, or still waiting to fire when the recording ended",
            self.not_taken
        );
        for (kind, armed) in &self.armed {
            println!(
                "    {kind:<40} armed and taken {armed:>3}, of which fired {:>3}",
                self.armed_fired.get(kind).copied().unwrap_or(0)
            );
        }
        if let Some(error) = &self.error {
            println!("  error: {error}");
        }
        if !self.missing_examples.is_empty() {
            println!(
                "  frames kvssrc did not read (first 30): {:?}",
                self.missing_examples
            );
            let notable: Vec<&str> = self
                .reader_log
                .lines()
                .filter(|l| {
                    l.contains("kvssrc-connection")
                        || l.contains("skip-reason=(string)a")
                        || l.contains("WARNING")
                })
                .collect();
            println!(
                "  the reader's reconnections and warnings:\n    {}",
                notable.join("\n    ")
            );
        }
    }

    /// The campaign's goals: nothing lost, nothing read twice, nothing corrupt, no error, and every kind of
    /// fault it armed fired.
    pub fn check(&self) {
        assert_eq!(self.error, None);
        assert_eq!(
            self.never_fired(),
            Vec::<&str>::new(),
            "fault kinds armed that never fired"
        );
        assert!(self.frames_sent > 0);
        assert_eq!(self.frames_lost, 0, "frames lost");
        assert_eq!(self.corrupt, 0, "corrupt frames");
        assert_eq!(self.read_missing, 0, "frames kvssrc did not read");
        assert_eq!(self.read_duplicates, 0, "frames kvssrc read twice");
        assert_eq!(self.read_out_of_order, 0, "frames kvssrc read out of order");
    }
}
