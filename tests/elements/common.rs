// SPDX-License-Identifier: MPL-2.0

//! What the element tests share: a kvs-emulator running in the test process, a small blocking HTTP client for
//! its APIs, pipelines run to the end with their bus messages, and frame extraction from Matroska bytes.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gst::prelude::*;
use kvs_emulator::{Config, Emulator};
use serde_json::{Value, json};

pub fn init() {
    static INIT: std::sync::Once = std::sync::Once::new();
    INIT.call_once(|| {
        gst::init().expect("gst::init");
        gstkvs::plugin_register_static().expect("register the kvs plugin");
    });
}

/// A kvs-emulator on its own runtime, on a free loopback port.
pub struct Emu {
    pub url: String,
    pub addr: std::net::SocketAddr,
    emulator: Option<Emulator>,
    runtime: tokio::runtime::Runtime,
}

impl Emu {
    pub fn start() -> Emu {
        Emu::with_config(Config::default())
    }

    /// A client for an emulator running elsewhere (a child process), at `url`.
    pub fn external(url: &str) -> Emu {
        let addr = url
            .trim_start_matches("http://")
            .parse()
            .expect("http://IP:PORT");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        Emu {
            url: url.to_owned(),
            addr,
            emulator: None,
            runtime,
        }
    }

    pub fn with_config(config: Config) -> Emu {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let emulator = runtime
            .block_on(Emulator::start(config))
            .expect("start the emulator");
        Emu {
            url: emulator.base_url(),
            addr: emulator.local_addr(),
            emulator: Some(emulator),
            runtime,
        }
    }

    /// The emulator's IoT credentials endpoint, when it runs one.
    pub fn iot_addr(&self) -> Option<std::net::SocketAddr> {
        self.emulator.as_ref().and_then(|e| e.iot_addr())
    }

    /// One HTTP/1.1 request; returns the status and the whole body.
    pub fn call(&self, method: &str, path: &str, body: &str) -> (u16, Vec<u8>) {
        self.call_bytes(method, path, body.as_bytes())
    }

    pub fn call_bytes(&self, method: &str, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
        let mut stream = TcpStream::connect(self.addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let request = format!(
            "{method} {path} HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            self.addr,
            body.len()
        );
        stream.write_all(request.as_bytes()).unwrap();
        stream.write_all(body).unwrap();
        let mut response = Vec::new();
        stream.read_to_end(&mut response).unwrap();
        let split = response
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("a response head")
            + 4;
        let head = String::from_utf8_lossy(&response[..split]).to_string();
        let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
        let mut body = response[split..].to_vec();
        if head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            body = dechunk(&body);
        }
        (status, body)
    }

    pub fn json(&self, path: &str, body: Value) -> (u16, Value) {
        let (status, bytes) = self.call("POST", path, &body.to_string());
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    pub fn create_stream(&self, name: &str, retention_hours: u32) {
        let (status, body) = self.json(
            "/createStream",
            json!({"StreamName": name, "DataRetentionInHours": retention_hours}),
        );
        assert_eq!(status, 200, "{body}");
    }

    pub fn fault(&self, fault: Value) {
        let (status, body) = self.json("/_emulator/faults", fault);
        assert_eq!(status, 200, "{body}");
    }

    /// Every stored fragment of a stream, in producer-timestamp order, as one GetMediaForFragmentList answer.
    pub fn read_back(&self, stream: &str) -> Vec<u8> {
        let (status, listed) = self.json("/listFragments", json!({"StreamName": stream}));
        assert_eq!(status, 200, "{listed}");
        let mut fragments = listed["Fragments"].as_array().unwrap().clone();
        fragments.sort_by(|a, b| {
            a["ProducerTimestamp"]
                .as_f64()
                .unwrap()
                .partial_cmp(&b["ProducerTimestamp"].as_f64().unwrap())
                .unwrap()
        });
        let numbers: Vec<Value> = fragments
            .iter()
            .map(|f| f["FragmentNumber"].clone())
            .collect();
        if numbers.is_empty() {
            return Vec::new();
        }
        let (status, body) = self.call(
            "POST",
            "/getMediaForFragmentList",
            &json!({"StreamName": stream, "Fragments": numbers}).to_string(),
        );
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        body
    }

    /// The faults still armed (`GET /_emulator/faults`): empty once each fired as many times as it was armed.
    pub fn armed_faults(&self) -> Value {
        let (status, bytes) = self.call("GET", "/_emulator/faults", "");
        assert_eq!(status, 200);
        let value: Value = serde_json::from_slice(&bytes).unwrap();
        value["faults"].clone()
    }

    /// The admin listing of a stream's fragments.
    pub fn admin_fragments(&self, stream: &str) -> Vec<Value> {
        let (status, bytes) =
            self.call("GET", &format!("/_emulator/streams/{stream}/fragments"), "");
        assert_eq!(status, 200);
        let value: Value = serde_json::from_slice(&bytes).unwrap();
        value["fragments"].as_array().unwrap().clone()
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

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(line_end) = data.windows(2).position(|w| w == b"\r\n") {
        let size_text = String::from_utf8_lossy(&data[..line_end]).to_string();
        let size =
            usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        let start = line_end + 2;
        out.extend_from_slice(&data[start..start + size]);
        data = &data[start + size + 2..];
    }
    out
}

/// The directory of this test binary's own libgstkvs.so (target/<profile>/deps/elements-<hash> ->
/// target/<profile>), for tools run as child processes (gst-launch-1.0, gst-play-1.0, the examples).
pub fn plugin_dir() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let plugin_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .unwrap()
        .to_path_buf();
    if !plugin_dir.join("libgstkvs.so").exists() {
        panic!(
            "no libgstkvs.so in {}: build the plugin first (cargo build --lib)",
            plugin_dir.display()
        );
    }
    plugin_dir
}

/// What running a pipeline gave.
pub struct Run {
    /// The Matroska bytes matroskamux produced (captured beside kvssink).
    pub input: Vec<u8>,
    /// The first error: its message and debug string, "MESSAGE | DEBUG".
    pub error: Option<String>,
    /// The first error itself, for its domain (`gerror.matches(gst::ResourceError::NotFound)`).
    pub gerror: Option<gst::glib::Error>,
    pub warnings: Vec<String>,
    /// Element messages from kvssink.
    pub messages: Vec<gst::Structure>,
    /// When each of `messages` arrived, since the pipeline started.
    pub message_times: Vec<Duration>,
    pub elapsed: Duration,
    pub stats: Option<gst::Structure>,
    /// GST_MESSAGE_PROGRESS messages: type, code, text, the `percent` field.
    pub progress: Vec<(gst::ProgressType, String, String, i32)>,
}

impl Run {
    pub fn acks(&self, kind: &str) -> usize {
        self.messages
            .iter()
            .filter(|s| {
                s.name() == "kvssink-ack"
                    && s.get::<String>("event-type").ok().as_deref() == Some(kind)
            })
            .count()
    }
    pub fn messages_named(&self, name: &str) -> Vec<&gst::Structure> {
        self.messages.iter().filter(|s| s.name() == name).collect()
    }
    pub fn stat(&self, field: &str) -> u64 {
        self.stats.as_ref().unwrap().get::<u64>(field).unwrap()
    }
}

/// Makes the appsink `capture` append every buffer it receives to `captured`.
pub fn capture_into(capture: &gst::Element, captured: Arc<Mutex<Vec<u8>>>) {
    let appsink = capture.clone().downcast::<gst_app::AppSink>().unwrap();
    appsink.set_callbacks(
        gst_app::AppSinkCallbacks::builder()
            .new_sample(move |sink| {
                let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                let buffer = sample.buffer().ok_or(gst::FlowError::Error)?;
                captured
                    .lock()
                    .unwrap()
                    .extend_from_slice(&buffer.map_readable().unwrap());
                Ok(gst::FlowSuccess::Ok)
            })
            .build(),
    );
}

/// Runs a pipeline description to EOS or error (bounded by `limit`). An appsink named `capture`, if present,
/// collects the bytes it receives; the element named `sink` is the kvssink whose stats are read at the end.
pub fn run_pipeline(description: &str, limit: Duration) -> Run {
    run_pipeline_with(description, limit, |_| {})
}

pub fn run_pipeline_with(
    description: &str,
    limit: Duration,
    setup: impl FnOnce(&gst::Pipeline),
) -> Run {
    init();
    let pipeline = gst::parse::launch(description)
        .unwrap()
        .downcast::<gst::Pipeline>()
        .unwrap();
    let captured = Arc::new(Mutex::new(Vec::new()));
    if let Some(capture) = pipeline.by_name("capture") {
        capture_into(&capture, captured.clone());
    }
    setup(&pipeline);
    let started = Instant::now();
    let bus = pipeline.bus().unwrap();
    let mut run = Run {
        input: Vec::new(),
        error: None,
        gerror: None,
        warnings: Vec::new(),
        messages: Vec::new(),
        message_times: Vec::new(),
        elapsed: Duration::ZERO,
        stats: None,
        progress: Vec::new(),
    };
    if let Err(e) = pipeline.set_state(gst::State::Playing) {
        // The error message on the bus says why.
        run.error = Some(format!("set_state failed: {e}"));
    }
    let deadline = started + limit;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let Some(message) =
            bus.timed_pop(gst::ClockTime::from_nseconds(remaining.as_nanos() as u64))
        else {
            run.error
                .get_or_insert_with(|| format!("timed out after {limit:?}"));
            break;
        };
        match message.view() {
            gst::MessageView::Eos(_) => break,
            gst::MessageView::Error(e) => {
                run.gerror = Some(e.error());
                run.error = Some(format!(
                    "{} | {}",
                    e.error(),
                    e.debug().map(|d| d.to_string()).unwrap_or_default()
                ));
                break;
            }
            gst::MessageView::Warning(w) => run.warnings.push(format!(
                "{} | {}",
                w.error(),
                w.debug().map(|d| d.to_string()).unwrap_or_default()
            )),
            gst::MessageView::Progress(p) => {
                let (kind, code, text) = p.get();
                let percent = p
                    .structure()
                    .and_then(|s| s.get::<i32>("percent").ok())
                    .unwrap_or(-1);
                run.progress
                    .push((kind, code.to_string(), text.to_string(), percent));
            }
            gst::MessageView::Element(e) => {
                if let Some(s) = e.structure()
                    && s.name().starts_with("kvs")
                {
                    run.messages.push(s.to_owned());
                    run.message_times.push(started.elapsed());
                }
            }
            _ => {}
        }
    }
    run.elapsed = started.elapsed();
    if let Some(sink) = pipeline.by_name("sink") {
        run.stats = sink.property::<Option<gst::Structure>>("stats");
    }
    pipeline.set_state(gst::State::Null).unwrap();
    run.input = std::mem::take(&mut *captured.lock().unwrap());
    run
}

/// Every frame of a Matroska byte stream (one or more documents): (cluster index, cluster timecode, track,
/// payload).
pub fn frames(data: &[u8]) -> Vec<(usize, u64, u64, Vec<u8>)> {
    use kvs_mkv::Event;
    use kvs_mkv::ebml::id;
    let mut out = Vec::new();
    let mut cluster_timecode = 0;
    let mut cluster = 0;
    for event in kvs_mkv::read_all(data).expect("valid Matroska") {
        if let Event::ClusterStart { .. } = event {
            cluster += 1;
        }
        if let Event::ClusterChild(element) = event {
            match element.id {
                id::TIMECODE => {
                    cluster_timecode = kvs_mkv::ebml::read_uint(&element.data()).unwrap()
                }
                id::SIMPLE_BLOCK => {
                    let info = kvs_mkv::block::parse_simple_block(&element.data()).unwrap();
                    out.push((
                        cluster,
                        cluster_timecode,
                        info.track,
                        element.data()[info.header_len..].to_vec(),
                    ));
                }
                _ => {}
            }
        }
    }
    out
}

/// The frames of the output with re-sent fragments (a cluster timecode seen before) left out, without the
/// timecodes: what can be compared with the input.
pub fn unique_frames(data: &[u8]) -> Vec<(u64, Vec<u8>)> {
    let mut seen = std::collections::HashSet::new();
    let mut current: Option<usize> = None;
    let mut keep = false;
    let mut out = Vec::new();
    for (cluster, timecode, track, payload) in frames(data) {
        if current != Some(cluster) {
            current = Some(cluster);
            keep = seen.insert(timecode);
        }
        if keep {
            out.push((track, payload));
        }
    }
    out
}

pub fn input_frames(data: &[u8]) -> Vec<(u64, Vec<u8>)> {
    frames(data)
        .into_iter()
        .map(|(_, _, track, payload)| (track, payload))
        .collect()
}

/// The kvssink properties that point it at an emulator.
pub fn sink_props(emu: &Emu, stream: &str) -> String {
    format!(
        "kvssink name=sink stream-name={stream} endpoint-uri={} access-key=AKIDTEST secret-access-key=test-secret region=us-east-1",
        emu.url
    )
}

/// `frames` of H.264 at 30 fps (a key frame each second), muxed; `tee name=t` feeds the capture appsink.
pub fn video_source(frames: u32) -> String {
    format!(
        "videotestsrc num-buffers={frames} pattern=ball ! video/x-raw,format=I420,width=320,height=240,framerate=30/1 \
         ! x264enc key-int-max=30 bframes=0 tune=zerolatency speed-preset=ultrafast ! h264parse"
    )
}

/// `frames` of live H.264 at 30 fps (a key frame each second), muxed, into kvssink with `props`.
pub fn live_upload(emu: &Emu, stream: &str, frames: u32, props: &str) -> String {
    format!(
        "videotestsrc is-live=true num-buffers={frames} pattern=ball ! video/x-raw,format=I420,width=320,height=240,framerate=30/1 \
         ! x264enc key-int-max=30 bframes=0 tune=zerolatency speed-preset=ultrafast ! h264parse name=parse \
         ! matroskamux ! tee name=t ! queue ! {} {props} {CAPTURE}",
        sink_props(emu, stream)
    )
}

/// 120 frames of H.264 and 200 of AAC muxed into `stream` through kvssink, matroskamux's output captured.
pub fn av_upload(emu: &Emu, stream: &str) -> String {
    format!(
        "{} ! queue ! mux. audiotestsrc num-buffers=200 samplesperbuffer=1024 ! audio/x-raw,rate=48000,channels=2 \
         ! avenc_aac ! aacparse ! queue ! mux. matroskamux name=mux ! tee name=t ! queue ! {} sync=false {CAPTURE}",
        video_source(120),
        sink_props(emu, stream)
    )
}

pub const CAPTURE: &str = "t. ! queue ! appsink name=capture sync=false";

/// Test certificates made with the `openssl` command in a directory: CAs and certificates they sign.
pub struct Pki {
    pub dir: std::path::PathBuf,
}

impl Pki {
    pub fn new(name: &str) -> Pki {
        let dir = std::env::temp_dir().join(format!("kvs-pki-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Pki { dir }
    }

    fn openssl(&self, args: &[&str]) {
        if let Err(error) = kvs_emulator::tls::openssl_in(&self.dir, args) {
            panic!("{error}");
        }
    }

    /// A self-signed CA: `NAME.pem` and `NAME.key`; returns the certificate's path.
    pub fn ca(&self, name: &str) -> std::path::PathBuf {
        let (cert, key) = (format!("{name}.pem"), format!("{name}.key"));
        let subject = format!("/CN={name} test CA");
        self.openssl(&[
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", &subject,
            "-keyout", &key, "-out", &cert,
        ]);
        self.dir.join(cert)
    }

    /// A certificate `NAME.pem` (key `NAME.key`) signed by the CA `ca`, for `subject_alt_name` (such as
    /// `IP:127.0.0.1`) or a client certificate without one; returns (certificate, key) paths. rustls refuses a
    /// CA certificate as a server's or a client's own, hence a leaf.
    pub fn leaf(
        &self,
        name: &str,
        ca: &str,
        subject_alt_name: Option<&str>,
    ) -> (std::path::PathBuf, std::path::PathBuf) {
        let mut extensions = String::from("basicConstraints=CA:FALSE\n");
        match subject_alt_name {
            Some(san) => extensions.push_str(&format!(
                "subjectAltName={san}\nextendedKeyUsage=serverAuth\n"
            )),
            None => extensions.push_str("extendedKeyUsage=clientAuth\n"),
        }
        let ext = format!("{name}.ext");
        std::fs::write(self.dir.join(&ext), extensions).unwrap();
        self.signed(name, ca, &["-extfile", &ext])
    }

    /// A client certificate `NAME.pem` (key `NAME.key`) signed by the CA `ca` with `openssl x509 -req` and no
    /// extensions, as AWS IoT's instructions for a certificate signed by your own CA make it: X.509 version 1
    /// with Debian 12's OpenSSL 3.0 (checked here). Returns (certificate, key) paths.
    pub fn v1_leaf(&self, name: &str, ca: &str) -> (std::path::PathBuf, std::path::PathBuf) {
        let (cert, key) = self.signed(name, ca, &["-sha256"]);
        let text = std::process::Command::new("openssl")
            .args(["x509", "-noout", "-text", "-in"])
            .arg(&cert)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&text.stdout);
        assert!(
            text.contains("Version: 1 (0x0)"),
            "openssl made another version: {text}"
        );
        (cert, key)
    }

    /// A new key `NAME.key` and its certificate `NAME.pem` signed by the CA `ca` (`openssl x509 -req` with
    /// `extra` arguments); returns (certificate, key) paths.
    fn signed(
        &self,
        name: &str,
        ca: &str,
        extra: &[&str],
    ) -> (std::path::PathBuf, std::path::PathBuf) {
        let (cert, key, csr) = (
            format!("{name}.pem"),
            format!("{name}.key"),
            format!("{name}.csr"),
        );
        let subject = format!("/CN={name}");
        self.openssl(&[
            "req", "-newkey", "rsa:2048", "-nodes", "-subj", &subject, "-keyout", &key, "-out",
            &csr,
        ]);
        let (ca_cert, ca_key) = (format!("{ca}.pem"), format!("{ca}.key"));
        let mut args = vec![
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca_cert,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            &cert,
        ];
        args.extend_from_slice(extra);
        self.openssl(&args);
        (self.dir.join(cert), self.dir.join(key))
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
