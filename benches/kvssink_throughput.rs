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

use std::io::Read;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::TokioIo;
use kvs_emulator::{Config, Emulator};
use kvs_mkv::writer::{h264_stream_header, write_cluster_start, write_simple_block};

const FRAME_BYTES: usize = 100_000;
const FRAMES_PER_CLUSTER: usize = 30;
const CHUNK_BYTES: usize = 256 * 1024;

/// CPU seconds (user + system) of this process so far, from /proc (Linux).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let ticks: f64 = fields.get(11).and_then(|u| u.parse::<f64>().ok()).unwrap_or(0.0)
        + fields.get(12).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
    ticks / 100.0
}

/// Peak resident set size of this process, in MB.
fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn write_input(path: &std::path::Path, size_mb: usize) -> (u64, u64) {
    use std::io::Write;
    let clusters = (size_mb * 1_000_000 / (FRAME_BYTES * FRAMES_PER_CLUSTER)).max(1) as u64;
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    file.write_all(&h264_stream_header()).unwrap();
    let mut frame = vec![0u8; FRAME_BYTES];
    for index in 0..clusters {
        let mut out = Vec::with_capacity(FRAMES_PER_CLUSTER * (FRAME_BYTES + 16) + 32);
        write_cluster_start(&mut out, index * 1000);
        for i in 0..FRAMES_PER_CLUSTER {
            frame.fill((index as u8).wrapping_add(i as u8));
            write_simple_block(&mut out, 1, (i * 33) as i16, i == 0, &frame);
        }
        file.write_all(&out).unwrap();
    }
    file.flush().unwrap();
    (clusters, std::fs::metadata(path).unwrap().len())
}

fn baseline(url: &str, path: &str) {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        let addr = url.trim_start_matches("http://").trim_end_matches('/').to_owned();
        let stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
        tokio::spawn(conn);
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::convert::Infallible>>(8);
        let path = path.to_owned();
        // File reads on a blocking thread, as filesrc reads on its streaming thread.
        let reader = tokio::task::spawn_blocking(move || {
            let mut file = std::fs::File::open(path).unwrap();
            loop {
                let mut chunk = vec![0u8; CHUNK_BYTES];
                let n = file.read(&mut chunk).unwrap();
                if n == 0 {
                    break;
                }
                chunk.truncate(n);
                if tx.blocking_send(Ok(Frame::data(Bytes::from(chunk)))).is_err() {
                    break;
                }
            }
        });
        let body = StreamBody::new(futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        }));
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
        let request = hyper::Request::post("/putMedia")
            .header("host", addr.as_str())
            .header("x-amzn-stream-name", "baseline")
            .header("x-amzn-fragment-timecode-type", "RELATIVE")
            .header("x-amzn-producer-start-timestamp", format!("{:.3}", now.as_secs_f64()))
            .body(body)
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        assert_eq!(response.status(), 200);
        let acks = response.into_body().collect().await.unwrap().to_bytes();
        reader.await.unwrap();
        let persisted = acks.windows(9).filter(|w| *w == b"PERSISTED").count();
        println!("persisted {persisted}");
    });
}

fn kvssink(url: &str, path: &str) {
    gst::init().unwrap();
    gstkvs::plugin_register_static().unwrap();
    let description = format!(
        "filesrc location={path} blocksize={CHUNK_BYTES} ! video/x-matroska ! kvssink name=sink stream-name=kvssink \
         endpoint-uri={url} access-key=AKIDBENCH secret-access-key=bench-secret region=us-east-1 sync=false"
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
    println!("persisted {}", stats.get::<u64>("fragments-persisted").unwrap());
}

use gst::prelude::*;

struct Measured {
    seconds: f64,
    cpu: f64,
    rss_mb: f64,
    persisted: u64,
}

/// Runs one upload in a child process; it prints `persisted N` then `measured WALL CPU RSS`.
fn run_child(mode: &str, url: &str, path: &std::path::Path) -> Measured {
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--child", mode, url, path.to_str().unwrap()])
        .stderr(std::process::Stdio::inherit())
        .output()
        .unwrap();
    assert!(output.status.success(), "{mode} failed");
    let text = String::from_utf8_lossy(&output.stdout).to_string();
    let value = |key: &str| -> Vec<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_else(|| panic!("{mode}: no {key:?} in {text:?}"))
            .split_whitespace()
            .map(|v| v.parse().unwrap())
            .collect()
    };
    let measured = value("measured ");
    Measured {
        seconds: measured[0],
        cpu: measured[1],
        rss_mb: measured[2],
        persisted: value("persisted ")[0] as u64,
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    if args.first().map(String::as_str) == Some("--child") {
        let started = Instant::now();
        match args[1].as_str() {
            "baseline" => baseline(&args[2], &args[3]),
            "kvssink" => kvssink(&args[2], &args[3]),
            other => panic!("unknown mode {other}"),
        }
        println!("measured {} {} {}", started.elapsed().as_secs_f64(), cpu_seconds(), peak_rss_mb());
        return;
    }
    let size_mb: usize = args.iter().find_map(|a| a.parse().ok()).unwrap_or(512);
    let dir = std::env::temp_dir().join(format!("kvssink-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("input.mkv");
    let (clusters, bytes) = write_input(&path, size_mb);

    println!(
        "input: {:.1} MB, {clusters} fragments of {} x {} kB frames",
        bytes as f64 / 1e6,
        FRAMES_PER_CLUSTER,
        FRAME_BYTES / 1000
    );
    let gb = bytes as f64 / 1e9;
    let mut best = [0f64; 2];
    for round in 1..=2 {
        for (i, mode) in ["baseline", "kvssink"].into_iter().enumerate() {
            // A fresh emulator for every upload, so one upload's stored media does not slow the next.
            let emulator = Emu::start(mode);
            let m = run_child(mode, &emulator.url, &path);
            assert_eq!(m.persisted, clusters, "{mode}: every fragment persisted");
            let rate = bytes as f64 / 1e6 / m.seconds;
            best[i] = best[i].max(rate);
            println!(
                "round {round} {mode:>9}: {:.2} s, {rate:.0} MB/s, {:.2} CPU s/GB (process), peak RSS {:.0} MB",
                m.seconds,
                m.cpu / gb,
                m.rss_mb
            );
        }
    }
    println!("kvssink / baseline throughput (best of 2 each): {:.2}", best[1] / best[0]);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A kvs-emulator on its own runtime with one stream.
struct Emu {
    url: String,
    emulator: Option<Emulator>,
    runtime: tokio::runtime::Runtime,
}

impl Emu {
    fn start(stream: &str) -> Emu {
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let emulator = runtime.block_on(Emulator::start(Config::default())).unwrap();
        let addr = emulator.local_addr();
        runtime.block_on(async {
            let create = format!("{{\"StreamName\":\"{stream}\",\"DataRetentionInHours\":1}}");
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.unwrap();
            tokio::spawn(conn);
            let request = hyper::Request::post("/createStream")
                .header("host", addr.to_string())
                .body(Full::new(Bytes::from(create)))
                .unwrap();
            assert_eq!(sender.send_request(request).await.unwrap().status(), 200);
        });
        Emu { url: emulator.base_url(), emulator: Some(emulator), runtime }
    }
}

impl Drop for Emu {
    fn drop(&mut self) {
        if let Some(emulator) = self.emulator.take() {
            let _guard = self.runtime.enter();
            emulator.shutdown();
        }
    }
}
