// SPDX-License-Identifier: MPL-2.0

//! What the benchmarks share: CPU, context-switch and peak-RSS readings from the kernel, uploads and reads run in child processes
//! (this binary again, with `--child MODE ...`), and an in-process kvs-emulator.
#![allow(dead_code)]

use std::io::Read;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::TokioIo;
use kvs_emulator::{Config, Emulator};
use kvs_mkv::writer::{h264_stream_header, write_cluster_start, write_simple_block};

/// CPU seconds (user + system) of this process so far, every thread's, ended ones included (Linux).
pub fn cpu_seconds() -> f64 {
    // The process's CPU clock: every thread's time, to the nanosecond (the 10-ms ticks of /proc were too coarse
    // for a reader that spends a tenth of a second).
    let mut time = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into the one given; CLOCK_PROCESS_CPUTIME_ID always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut time) };
    time.tv_sec as f64 + time.tv_nsec as f64 / 1e9
}

/// This process's context switches (voluntary and not, every thread's, ended ones too) and minor page faults
/// so far: what a reader's CPU goes to besides its own code (wake-ups, fresh pages).
pub fn switches_and_faults() -> (u64, u64) {
    // SAFETY: getrusage fills the one rusage given.
    let usage = unsafe {
        let mut usage = std::mem::zeroed::<libc::rusage>();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    (
        (usage.ru_nvcsw + usage.ru_nivcsw) as u64,
        usage.ru_minflt as u64,
    )
}

/// Peak resident set size of this process, in MB.
pub fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

pub struct Measured {
    pub seconds: f64,
    pub cpu: f64,
    pub rss_mb: f64,
    /// The child's `count N` line: what it counted (fragments persisted, bytes read...).
    pub count: u64,
    /// The child's `work-cpu S` line, if it printed one: CPU seconds of the work alone (without start-up).
    pub work_cpu: Option<f64>,
    /// The child's `work-events SWITCHES FAULTS` line, if it printed one: context switches and minor page
    /// faults during the work alone.
    pub work_events: Option<(u64, u64)>,
}

/// Runs one upload in a child process; it prints `count N` then `measured WALL CPU RSS`.
///
/// With `KVS_BENCH_PERF=DIR`, each child runs under `perf record -g` into `DIR/MODE-ARGS.data` (its CPU figures
/// then include perf's overhead), to see where a reader's or an uploader's CPU goes.
pub fn run_child(mode: &str, args: &[&str]) -> Measured {
    let output = child_command(mode, args)
        .args(["--child", mode])
        .args(args)
        .stderr(std::process::Stdio::inherit())
        .output()
        .unwrap();
    child_measures(mode, output)
}

/// This benchmark binary again, for a child running `mode` with `args` (the caller adds `--child MODE ARGS`):
/// under `perf record -g` into `KVS_BENCH_PERF/MODE-ARGS.data` when that variable names a directory.
pub fn child_command(mode: &str, args: &[&str]) -> std::process::Command {
    let exe = std::env::current_exe().unwrap();
    match std::env::var_os("KVS_BENCH_PERF") {
        Some(dir) => {
            let name: String = std::iter::once(mode)
                .chain(args.iter().copied().filter(|a| !a.contains('/')))
                .collect::<Vec<_>>()
                .join("-");
            let data = std::path::Path::new(&dir).join(format!("{name}.data"));
            let mut command = std::process::Command::new("perf");
            command
                .args(["record", "-q", "-F", "1999", "-g", "-o"])
                .arg(data)
                .arg("--")
                .arg(exe);
            command
        }
        None => std::process::Command::new(exe),
    }
}

/// What a child that ended reported: its `count N`, `measured WALL CPU RSS` and optional `work-cpu S` lines.
pub fn child_measures(mode: &str, output: std::process::Output) -> Measured {
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
    let work_cpu = text
        .lines()
        .find_map(|l| l.strip_prefix("work-cpu "))
        .and_then(|v| v.trim().parse().ok());
    let work_events = text
        .lines()
        .find_map(|l| l.strip_prefix("work-events "))
        .and_then(|v| {
            let mut n = v.split_whitespace().map(|n| n.parse().ok());
            Some((n.next()??, n.next()??))
        });
    Measured {
        seconds: measured[0],
        cpu: measured[1],
        rss_mb: measured[2],
        count: value("count ")[0] as u64,
        work_cpu,
        work_events,
    }
}

pub const FRAME_BYTES: usize = 100_000;
pub const FRAMES_PER_CLUSTER: usize = 30;
pub const CHUNK_BYTES: usize = 256 * 1024;

/// A synthetic Matroska file of `size_mb` MB: 1-s clusters of 30 frames of 100 kB. Returns (clusters, bytes).
pub fn write_input(path: &std::path::Path, size_mb: usize) -> (u64, u64) {
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

/// What a bare client talks over: TCP, or TLS on TCP.
pub trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

/// A connection to `url` (`http://` or `https://` and an IP address), TCP_NODELAY set; over TLS the server's
/// certificate must be signed by the CA in `ca_file` (PEM), as kvssink's `ca-file` does.
pub async fn connect(url: &str, ca_file: Option<&std::path::Path>) -> Box<dyn Io> {
    use tokio_rustls::rustls;
    let https = url.starts_with("https://");
    let addr = url
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    if !https {
        return Box::new(tcp);
    }
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in
        rustls_pki_types::CertificateDer::pem_file_iter(ca_file.expect("a CA for https")).unwrap()
    {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let host = addr
        .rsplit_once(':')
        .map_or(addr.as_str(), |(host, _)| host)
        .to_owned();
    let name = rustls_pki_types::ServerName::try_from(host).unwrap();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    Box::new(connector.connect(name, tcp).await.unwrap())
}

/// Streams a file as one PutMedia request with a bare hyper client (no signing, RELATIVE timecodes), reads the
/// ACKs to the end; returns how many fragments were persisted.
pub fn upload_file(url: &str, stream: &str, path: &str) -> u64 {
    upload_file_over(url, None, stream, path)
}

/// [`upload_file`] to an `https://` emulator too, trusting `ca_file`.
pub fn upload_file_over(
    url: &str,
    ca_file: Option<&std::path::Path>,
    stream: &str,
    path: &str,
) -> u64 {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(8);
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
                if tx.blocking_send(Bytes::from(chunk)).is_err() {
                    break;
                }
            }
        });
        let persisted = put_media(url, ca_file, stream, rx).await;
        reader.await.unwrap();
        persisted
    })
}

/// One PutMedia request with a bare hyper client (no signing, RELATIVE timecodes) whose body is what `body`
/// gives until it closes; reads the ACKs to the end and returns how many fragments were persisted.
pub async fn put_media(
    url: &str,
    ca_file: Option<&std::path::Path>,
    stream: &str,
    body: tokio::sync::mpsc::Receiver<Bytes>,
) -> u64 {
    let addr = url
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    let io = connect(url, ca_file).await;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .unwrap();
    tokio::spawn(conn);
    let body = StreamBody::new(futures::stream::unfold(body, |mut rx| async move {
        rx.recv()
            .await
            .map(|bytes| (Ok::<_, std::convert::Infallible>(Frame::data(bytes)), rx))
    }));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let request = hyper::Request::post("/putMedia")
        .header("host", addr.as_str())
        .header("x-amzn-stream-name", stream)
        .header("x-amzn-fragment-timecode-type", "RELATIVE")
        .header(
            "x-amzn-producer-start-timestamp",
            format!("{:.3}", now.as_secs_f64()),
        )
        .body(body)
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let acks = response.into_body().collect().await.unwrap().to_bytes();
    acks.windows(9).filter(|w| *w == b"PERSISTED").count() as u64
}

/// What the benchmarks on [`Emu`] print beside their figures.
pub const NO_SERVICE_LIMITS: &str = "the emulator's service limits are lifted (5 fragments/s, 12.5 MB/s per stream): client alone, on loopback";

/// Reports a child's measures on stdout, for [`run_child`].
pub fn report_child(started: std::time::Instant, count: u64) {
    println!("count {count}");
    println!(
        "measured {} {} {}",
        started.elapsed().as_secs_f64(),
        cpu_seconds(),
        peak_rss_mb()
    );
}

/// A kvs-emulator on its own runtime with one stream, with the service's per-stream PutMedia limits lifted
/// (5 fragments/s, 12.5 MB/s): the benchmarks that use it measure the client alone, and say so.
pub struct Emu {
    pub url: String,
    /// The CA its certificate is signed by, when it serves HTTPS.
    pub ca: Option<std::path::PathBuf>,
    emulator: Option<Emulator>,
    runtime: tokio::runtime::Runtime,
}

impl Emu {
    pub fn start(stream: &str) -> Emu {
        Emu::start_with(stream, false, None)
    }

    /// An emulator with the service's limits on or lifted, serving HTTPS with `tls`'s certificate if given.
    pub fn start_with(stream: &str, limits: bool, tls: Option<&kvs_emulator::tls::LocalCa>) -> Emu {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let mut config = Config::default();
        config.put_media.service_limits = limits;
        config.tls = tls.map(|tls| (tls.cert.clone(), tls.key.clone()));
        let emulator = runtime.block_on(Emulator::start(config)).unwrap();
        let emu = Emu {
            url: emulator.base_url(),
            ca: tls.map(|tls| tls.ca.clone()),
            emulator: Some(emulator),
            runtime,
        };
        let status = emu.post(
            "/createStream",
            format!("{{\"StreamName\":\"{stream}\",\"DataRetentionInHours\":1}}"),
        );
        assert_eq!(status, 200);
        emu
    }

    /// Creates the streams `PREFIX-I` for each I in `numbers` (retention 1 h).
    pub fn create_streams(&self, prefix: &str, numbers: std::ops::Range<usize>) {
        for i in numbers {
            let status = self.post(
                "/createStream",
                format!("{{\"StreamName\":\"{prefix}-{i}\",\"DataRetentionInHours\":1}}"),
            );
            assert_eq!(status, 200);
        }
    }

    /// One POST with a JSON body; returns the status.
    pub fn post(&self, path: &str, json: String) -> u16 {
        let addr = self.emulator.as_ref().unwrap().local_addr();
        self.runtime.block_on(async {
            let io = connect(&self.url, self.ca.as_deref()).await;
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
                .await
                .unwrap();
            tokio::spawn(conn);
            let request = hyper::Request::post(path)
                .header("host", addr.to_string())
                .body(Full::new(Bytes::from(json)))
                .unwrap();
            sender
                .send_request(request)
                .await
                .unwrap()
                .status()
                .as_u16()
        })
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

/// Runs a pipeline to EOS (bounded by `limit`); panics on an error.
pub fn run_to_eos(pipeline: &gst::Element, limit: std::time::Duration) {
    use gst::prelude::*;
    let bus = pipeline.bus().unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();
    for message in bus.iter_timed(gst::ClockTime::from_nseconds(limit.as_nanos() as u64)) {
        match message.view() {
            gst::MessageView::Eos(_) => break,
            gst::MessageView::Error(e) => panic!("{} {:?}", e.error(), e.debug()),
            _ => {}
        }
    }
    pipeline.set_state(gst::State::Null).unwrap();
}

/// Encodes `seconds` of noise (so that x264 reaches its bitrate) into a Matroska file: `width`x`height` H.264
/// at `fps`, `kbps`, a key frame every `gop` frames.
pub fn encode_clip(
    path: &std::path::Path,
    seconds: u32,
    (width, height, fps): (u32, u32, u32),
    kbps: u32,
    gop: u32,
) {
    gst::init().unwrap();
    let description = format!(
        "videotestsrc num-buffers={} pattern=snow ! video/x-raw,format=I420,width={width},height={height},framerate={fps}/1 \
         ! x264enc bitrate={kbps} key-int-max={gop} bframes=0 option-string=scenecut=0 speed-preset=veryfast \
         ! h264parse ! matroskamux ! filesink location={}",
        seconds * fps,
        path.display()
    );
    run_to_eos(
        &gst::parse::launch(&description).unwrap(),
        std::time::Duration::from_secs(600),
    );
}

/// One request to an emulator on a new connection; the JSON answer (Null when it is not JSON).
pub fn emulator_call(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> serde_json::Value {
    use std::io::Write;
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    std::io::Read::read_to_string(&mut stream, &mut response).unwrap();
    let body = &response[response.find("\r\n\r\n").unwrap() + 4..];
    serde_json::from_str(body).unwrap_or(serde_json::Value::Null)
}

/// An in-process kvs-emulator on a runtime of its own, with the service's limits and `--record-arrivals`.
pub fn recording_emulator() -> (tokio::runtime::Runtime, Emulator) {
    recording_emulator_with(None)
}

/// [`recording_emulator`] serving HTTPS with `tls`'s certificate, if given.
pub fn recording_emulator_with(
    tls: Option<&kvs_emulator::tls::LocalCa>,
) -> (tokio::runtime::Runtime, Emulator) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let config = Config {
        record_arrivals: true,
        tls: tls.map(|tls| (tls.cert.clone(), tls.key.clone())),
        ..Config::default()
    };
    let emulator = runtime.block_on(Emulator::start(config)).unwrap();
    (runtime, emulator)
}
