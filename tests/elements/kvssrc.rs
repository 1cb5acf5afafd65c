// SPDX-License-Identifier: MPL-2.0

//! kvssrc against a kvs-emulator running in the test process: streams written by kvssink (or imported from
//! recorded service output) read back through kvssrc, frame by frame.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::common::*;
use gst::prelude::*;
use serde_json::json;

pub fn src_props(emu: &Emu, stream: &str) -> String {
    format!(
        "kvssrc name=src stream-name={stream} endpoint-uri={} access-key=AKIDTEST secret-access-key=test-secret region=us-east-1",
        emu.url
    )
}

pub fn now_s() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Uploads `frames` frames of H.264 through kvssink; returns the Matroska bytes matroskamux made.
pub fn produce(emu: &Emu, stream: &str, frames: u32, extra: &str) -> Vec<u8> {
    let description = format!(
        "{} ! matroskamux ! tee name=t ! queue ! {} sync=false {extra} {CAPTURE}",
        video_source(frames),
        sink_props(emu, stream)
    );
    let run = run_pipeline(&description, Duration::from_secs(120));
    assert_eq!(run.error, None, "{:?}", run.warnings);
    run.input
}

/// Reads everything stored up to now through kvssrc (a range read ending with EOS).
pub fn read_range(emu: &Emu, stream: &str, extra: &str) -> Run {
    let description = format!(
        "{} start-selector=earliest end-timestamp={:.3} {extra} ! appsink name=capture sync=false",
        src_props(emu, stream),
        now_s()
    );
    run_pipeline(&description, Duration::from_secs(60))
}

fn ebml_headers(data: &[u8]) -> usize {
    kvs_mkv::read_all(data)
        .unwrap()
        .iter()
        .filter(|e| matches!(e, kvs_mkv::Event::EbmlHeader(_)))
        .count()
}

/// Cluster times of a Matroska stream, in order.
fn cluster_timecodes(data: &[u8]) -> Vec<u64> {
    let mut out: Vec<u64> = frames(data)
        .iter()
        .map(|(_, timecode, _, _)| *timecode)
        .collect();
    out.dedup();
    out
}

#[test]
fn round_trip_through_kvssink_and_kvssrc_every_frame_identical() {
    let emu = Emu::start();
    emu.create_stream("rt", 1);
    let input = produce(&emu, "rt", 300, "");
    let run = read_range(&emu, "rt", "");
    assert_eq!(run.error, None);
    assert_eq!(input_frames(&run.input).len(), 300);
    assert!(
        input_frames(&run.input) == input_frames(&input),
        "frames differ"
    );
    assert_eq!(ebml_headers(&run.input), 1, "one merged stream");
    let progress = run.messages_named("kvssrc-progress");
    let last = progress.last().unwrap();
    assert_eq!(last.get::<u32>("percent").unwrap(), 100);
    assert_eq!(last.get::<u64>("fragments-done").unwrap(), 10);
    let fragments = run.messages_named("kvssrc-fragment");
    assert_eq!(fragments.len(), 10);
    assert!(fragments.iter().all(|f| !f.get::<bool>("skipped").unwrap()));
}

#[test]
fn round_trip_with_audio() {
    let emu = Emu::start();
    emu.create_stream("av", 1);
    let description = av_upload(&emu, "av");
    let upload = run_pipeline(&description, Duration::from_secs(60));
    assert_eq!(upload.error, None);
    let run = read_range(&emu, "av", "");
    assert_eq!(run.error, None);
    let (input, output) = (input_frames(&upload.input), input_frames(&run.input));
    assert!(
        output == input,
        "{} frames in, {} out",
        input.len(),
        output.len()
    );
    assert_eq!(
        output
            .iter()
            .map(|(t, _)| *t)
            .collect::<std::collections::BTreeSet<_>>()
            .len(),
        2
    );
}

fn ffprobe_frames(path: &std::path::Path) -> u64 {
    let output = std::process::Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-count_frames",
            "-select_streams",
            "v:0",
            "-show_entries",
            "stream=nb_read_frames",
        ])
        .args(["-of", "default=nokey=1:noprint_wrappers=1"])
        .arg(path)
        .output()
        .expect("ffprobe");
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .unwrap_or(0)
}

#[test]
fn filesink_and_mp4mux_outputs_open_in_ffprobe_with_every_frame() {
    let emu = Emu::start();
    emu.create_stream("files", 1);
    produce(&emu, "files", 300, "");
    let dir = std::env::temp_dir().join(format!("kvssrc-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (mkv, mp4) = (dir.join("clip.mkv"), dir.join("clip.mp4"));
    let end = now_s();
    for (tail, path) in [
        (String::from("filesink"), &mkv),
        (
            String::from("matroskademux ! h264parse ! mp4mux ! filesink"),
            &mp4,
        ),
    ] {
        let description = format!(
            "{} start-selector=earliest end-timestamp={end:.3} ! {tail} location={}",
            src_props(&emu, "files"),
            path.display()
        );
        let run = run_pipeline(&description, Duration::from_secs(60));
        assert_eq!(run.error, None);
        assert_eq!(ffprobe_frames(path), 300, "{}", path.display());
    }
    assert_eq!(ebml_headers(&std::fs::read(&mkv).unwrap()), 1);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn recorded_service_output_reads_back_with_every_frame() {
    // Fixtures live in `tests/fixtures` (override with `KVS_FIXTURES_DIR`).
    let fixtures = std::env::var_os("KVS_FIXTURES_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures"))
        .join("getmedia");
    let emu = Emu::start();
    for name in ["output_get_media.mkv", "test_mixed_tags.mkv"] {
        let path = fixtures.join(name);
        let recording = std::fs::read(&path)
            .unwrap_or_else(|e| panic!("fixture {} (set KVS_FIXTURES_DIR): {e}", path.display()));
        let stream = name.trim_end_matches(".mkv").replace('_', "-");
        let (status, body) = emu.call_bytes(
            "POST",
            &format!("/_emulator/streams/{stream}/import"),
            &recording,
        );
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        let run = read_range(&emu, &stream, "");
        assert_eq!(run.error, None, "{name}");
        let (input, output) = (input_frames(&recording), input_frames(&run.input));
        assert!(!input.is_empty());
        assert!(
            output == input,
            "{name}: {} frames recorded, {} read",
            input.len(),
            output.len()
        );
        assert_eq!(ebml_headers(&run.input), 1, "{name}");
        if name == "output_get_media.mkv" {
            // The producer's tags of each fragment reach the application in the fragment messages.
            let messages = run.messages_named("kvssrc-fragment");
            assert!(!messages.is_empty());
            for message in messages {
                let tags: Vec<String> = message
                    .get::<gst::Array>("tags")
                    .unwrap()
                    .iter()
                    .map(|v| v.get::<String>().unwrap())
                    .collect();
                assert!(tags.contains(&"MAJOR_BRAND=M4V ".to_owned()), "{tags:?}");
                assert!(
                    tags.contains(&"ENCODER=Elemental H.264".to_owned()),
                    "{tags:?}"
                );
            }
        }
    }
}

#[test]
fn resent_fragments_are_left_out_and_time_never_goes_back() {
    let emu = Emu::start();
    emu.create_stream("resent", 1);
    // No ACK on the first connection: kvssink finds it stale and sends every fragment again on a new one; the
    // service stored both copies.
    emu.fault(json!({"api": "putMedia", "stream": "resent", "kind": "withhold_acks"}));
    let input = produce(&emu, "resent", 240, "connection-staleness=1");
    let stored = emu.read_back("resent");
    assert!(
        frames(&stored).len() > 240,
        "the stream holds re-sent fragments"
    );
    let run = read_range(&emu, "resent", "");
    assert_eq!(run.error, None);
    assert!(
        input_frames(&run.input) == input_frames(&input),
        "every frame once, in order"
    );
    let timecodes = cluster_timecodes(&run.input);
    assert!(timecodes.windows(2).all(|w| w[0] < w[1]), "{timecodes:?}");
    let skipped = run
        .messages_named("kvssrc-fragment")
        .iter()
        .filter(|f| f.get::<bool>("skipped").unwrap())
        .count();
    assert!(skipped > 0);
}

#[test]
fn a_time_range_reads_exactly_its_fragments_and_parallel_equals_sequential() {
    let emu = Emu::start();
    emu.create_stream("range", 1);
    let start = 1_700_000_000u64;
    let input = produce(&emu, "range", 300, &format!("file-start-time={start}"));
    let frames_in = input_frames(&input);
    // Fragments start at start+0, +1, ... +9: the range [start+2.5, start+6.5] holds +3 to +6.
    let description = |parallel: u32| {
        format!(
            "{} start-selector=producer-timestamp start-timestamp={}.5 end-timestamp={}.5 parallel-downloads={parallel} \
             ! appsink name=capture sync=false",
            src_props(&emu, "range"),
            start + 2,
            start + 6
        )
    };
    let sequential = run_pipeline(&description(1), Duration::from_secs(60));
    assert_eq!(sequential.error, None);
    assert!(
        input_frames(&sequential.input) == frames_in[90..210],
        "fragments 3 to 6, 120 frames"
    );
    let producer: Vec<String> = sequential
        .messages_named("kvssrc-fragment")
        .iter()
        .map(|f| f.get::<String>("producer-timestamp").unwrap())
        .collect();
    assert_eq!(
        producer,
        (3..=6)
            .map(|i| format!("{}.000", start + i))
            .collect::<Vec<_>>()
    );
    let parallel = run_pipeline(&description(4), Duration::from_secs(60));
    assert_eq!(parallel.error, None);
    assert!(parallel.input == sequential.input, "the same bytes");
    let done: Vec<u32> = parallel
        .messages_named("kvssrc-progress")
        .iter()
        .map(|p| p.get::<u32>("percent").unwrap())
        .collect();
    assert_eq!(done.first(), Some(&0));
    assert_eq!(done.last(), Some(&100));
    assert!(done.len() > 2, "progress along the way: {done:?}");
}

/// A live kvssrc pipeline running in the background, its output and messages collected.
pub struct LiveRead {
    pub pipeline: gst::Pipeline,
    pub captured: Arc<Mutex<Vec<u8>>>,
    messages: Arc<Mutex<Vec<gst::Structure>>>,
    pub errors: Arc<Mutex<Vec<String>>>,
    /// Warnings, "MESSAGE | DEBUG".
    pub warnings: Arc<Mutex<Vec<String>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    watcher: Option<std::thread::JoinHandle<()>>,
}

impl LiveRead {
    pub fn start(description: &str) -> LiveRead {
        init();
        let pipeline = gst::parse::launch(description)
            .unwrap()
            .downcast::<gst::Pipeline>()
            .unwrap();
        let captured = Arc::new(Mutex::new(Vec::new()));
        capture_into(&pipeline.by_name("capture").unwrap(), captured.clone());
        let (messages, errors) = (
            Arc::new(Mutex::new(Vec::new())),
            Arc::new(Mutex::new(Vec::new())),
        );
        let warnings = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let bus = pipeline.bus().unwrap();
        let (m, e, w, s) = (
            messages.clone(),
            errors.clone(),
            warnings.clone(),
            stop.clone(),
        );
        // The bus keeps what is posted until the watcher has read it, also across the stop: going to NULL would
        // otherwise flush messages posted just before it (a fragment message behind its last frame).
        pipeline.set_auto_flush_bus(false);
        let watcher = std::thread::spawn(move || {
            loop {
                let Some(message) = bus.timed_pop(gst::ClockTime::from_mseconds(50)) else {
                    if s.load(std::sync::atomic::Ordering::Relaxed) {
                        break;
                    }
                    continue;
                };
                match message.view() {
                    gst::MessageView::Element(el) => {
                        if let Some(st) = el.structure() {
                            m.lock().unwrap().push(st.to_owned());
                        }
                    }
                    gst::MessageView::Error(err) => e.lock().unwrap().push(format!(
                        "{} | {}",
                        err.error(),
                        err.debug().map(|d| d.to_string()).unwrap_or_default()
                    )),
                    gst::MessageView::Warning(warning) => w.lock().unwrap().push(format!(
                        "{} | {}",
                        warning.error(),
                        warning.debug().map(|d| d.to_string()).unwrap_or_default()
                    )),
                    _ => {}
                }
            }
        });
        pipeline.set_state(gst::State::Playing).unwrap();
        LiveRead {
            pipeline,
            captured,
            messages,
            errors,
            warnings,
            stop,
            watcher: Some(watcher),
        }
    }

    pub fn frame_count(&self) -> usize {
        let data = self.captured.lock().unwrap().clone();
        // Count the frames of complete clusters read so far (the reader copes with a cut-off end).
        let mut reader = kvs_mkv::MkvReader::new();
        reader.push(&data);
        let mut count = 0;
        while let Ok(Some(event)) = reader.next_event() {
            if let kvs_mkv::Event::ClusterChild(element) = event
                && element.id == kvs_mkv::ebml::id::SIMPLE_BLOCK
            {
                count += 1;
            }
        }
        count
    }

    pub fn wait_for_frames(&self, count: usize, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            // Counting parses everything read so far: on a long read, look less often (at most a fifth of the
            // time spent counting), so that the count does not take the CPU the pipelines need.
            let started = Instant::now();
            let done = self.frame_count() >= count;
            if done || Instant::now() >= deadline || !self.errors.lock().unwrap().is_empty() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100).max(started.elapsed() * 4));
        }
    }

    pub fn messages_named(&self, name: &str) -> Vec<gst::Structure> {
        self.messages
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.name() == name)
            .cloned()
            .collect()
    }

    /// Stops the pipeline; returns how long going to NULL took.
    pub fn stop(&mut self) -> Duration {
        let started = Instant::now();
        self.pipeline.set_state(gst::State::Null).unwrap();
        let took = started.elapsed();
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(watcher) = self.watcher.take() {
            watcher.join().unwrap();
        }
        took
    }
}

impl Drop for LiveRead {
    fn drop(&mut self) {
        self.stop();
    }
}

#[test]
fn live_reading_survives_dropped_connections_and_idle_session_ends() {
    let emu = Emu::start();
    emu.create_stream("live", 1);
    let mut reader = LiveRead::start(&format!(
        "{} ! appsink name=capture sync=false",
        src_props(&emu, "live")
    ));
    std::thread::sleep(Duration::from_millis(500));
    // Two GetMedia sessions dropped in the middle of a fragment.
    emu.fault(
        json!({"api": "getMedia", "stream": "live", "kind": "drop_after_bytes", "bytes": 40000, "times": 2}),
    );
    let first = produce(&emu, "live", 150, "");
    reader.wait_for_frames(150, Duration::from_secs(20));
    // Nothing new for longer than the service keeps an idle session: it ends, and kvssrc reads on.
    std::thread::sleep(Duration::from_secs(4));
    let second = produce(&emu, "live", 150, "");
    reader.wait_for_frames(300, Duration::from_secs(20));
    assert_eq!(*reader.errors.lock().unwrap(), Vec::<String>::new());
    let output = reader.captured.lock().unwrap().clone();
    let mut input = input_frames(&first);
    input.extend(input_frames(&second));
    let read = input_frames(&output);
    assert_eq!(read.len(), 300, "every frame exactly once");
    assert!(read == input, "in order, byte for byte");
    let reasons: Vec<String> = reader
        .messages_named("kvssrc-connection")
        .iter()
        .filter_map(|s| s.get::<String>("reason").ok())
        .collect();
    assert!(
        reasons.iter().filter(|r| r.contains("broke")).count() >= 2,
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("session ended")),
        "{reasons:?}"
    );
    let token = reader
        .pipeline
        .by_name("src")
        .unwrap()
        .property::<Option<String>>("continuation-token");
    let last = reader
        .pipeline
        .by_name("src")
        .unwrap()
        .property::<Option<String>>("last-fragment-number");
    assert!(token.is_some() && token == last, "{token:?} {last:?}");
    assert!(reader.stop() < Duration::from_secs(1));
}

#[test]
fn setting_a_waiting_live_reader_to_null_returns_at_once() {
    let emu = Emu::start();
    emu.create_stream("idle", 1);
    let mut reader = LiveRead::start(&format!(
        "{} ! appsink name=capture sync=false",
        src_props(&emu, "idle")
    ));
    std::thread::sleep(Duration::from_millis(1500));
    let took = reader.stop();
    assert!(took < Duration::from_secs(1), "{took:?}");
}

fn read_error(description: &str) -> (String, Duration) {
    let run = run_pipeline(description, Duration::from_secs(60));
    (run.error.expect("an element error"), run.elapsed)
}

#[test]
fn errors_name_their_cause() {
    let emu = Emu::start();
    let missing = run_pipeline(
        &format!("{} ! fakesink", src_props(&emu, "nothere")),
        Duration::from_secs(60),
    );
    let error = missing.error.expect("an element error");
    assert!(
        error.contains("DescribeStream failed: HTTP 404 ResourceNotFoundException"),
        "{error}"
    );
    assert!(
        missing
            .gerror
            .unwrap()
            .matches(gst::ResourceError::NotFound),
        "{error}"
    );

    emu.create_stream("tagged", 1);
    produce(&emu, "tagged", 90, "");
    emu.fault(json!({"api": "getMedia", "kind": "error_tag", "fragment": 2, "error_id": 4000}));
    let (error, _) = read_error(&format!(
        "{} start-selector=earliest ! fakesink",
        src_props(&emu, "tagged")
    ));
    assert!(error.contains("the stream holds an error chunk"), "{error}");
    assert!(error.contains("(4000)"), "{error}");

    let (error, _) = read_error(&format!(
        "{} start-selector=fragment-number ! fakesink",
        src_props(&emu, "tagged")
    ));
    assert!(
        error.contains("start-selector fragment-number needs start-fragment-number"),
        "{error}"
    );

    let (error, elapsed) = read_error(
        "kvssrc stream-name=x endpoint-uri=http://127.0.0.1:9 access-key=A secret-access-key=B region=us-east-1 \
         request-timeout=2000 ! fakesink",
    );
    assert!(error.contains("DescribeStream"), "{error}");
    assert!(elapsed < Duration::from_secs(15), "{elapsed:?}");
}

#[test]
fn a_wrong_secret_is_refused() {
    let emu = Emu::with_config(kvs_emulator::Config {
        credentials: vec![("AKIDTEST".into(), "right-secret".into())],
        ..Default::default()
    });
    let (error, _) = read_error(&format!("{} ! fakesink", src_props(&emu, "any")));
    assert!(error.contains("DescribeStream failed: HTTP 403"), "{error}");
    assert!(!error.contains("test-secret"), "{error}");
}

#[test]
fn raw_mode_passes_the_service_bytes_through() {
    let emu = Emu::start();
    emu.create_stream("raw", 1);
    let input = produce(&emu, "raw", 90, "");
    let run = read_range(&emu, "raw", "mode=raw");
    assert_eq!(run.error, None);
    assert!(
        run.input == emu.read_back("raw"),
        "GetMediaForFragmentList's bytes"
    );
    assert_eq!(ebml_headers(&run.input), 3, "one document per fragment");
    assert!(input_frames(&run.input) == input_frames(&input));
}

#[test]
fn a_range_read_retries_a_dropped_download() {
    let emu = Emu::start();
    emu.create_stream("retry", 1);
    let input = produce(&emu, "retry", 240, "");
    emu.fault(
        json!({"api": "getMediaForFragmentList", "kind": "drop_after_bytes", "bytes": 20000, "times": 2}),
    );
    let run = read_range(&emu, "retry", "parallel-downloads=2");
    assert_eq!(run.error, None);
    assert_eq!(emu.armed_faults(), json!([]), "both drops happened");
    assert!(
        input_frames(&run.input) == input_frames(&input),
        "every frame once, in order"
    );
    assert_eq!(ebml_headers(&run.input), 1);
}

#[test]
fn invalid_endpoint_makes_the_live_reader_resolve_the_endpoint_again() {
    let emu = Emu::start();
    emu.create_stream("moved", 1);
    let reader = LiveRead::start(&format!(
        "{} ! appsink name=capture sync=false",
        src_props(&emu, "moved")
    ));
    let first = produce(&emu, "moved", 60, "");
    reader.wait_for_frames(60, Duration::from_secs(20));
    // The next GetMedia (after this session ends idle) is refused as sent to the wrong endpoint; the
    // GetDataEndpoint fault is only reached if kvssrc asks for the endpoint again.
    emu.fault(json!({"api": "getMedia", "stream": "moved", "kind": "http_error", "status": 400, "error": "InvalidEndpointException"}));
    emu.fault(json!({"api": "getDataEndpoint", "kind": "http_error", "status": 503, "error": "ServiceUnavailableException"}));
    std::thread::sleep(Duration::from_secs(4));
    let second = produce(&emu, "moved", 60, "");
    reader.wait_for_frames(120, Duration::from_secs(20));
    assert_eq!(*reader.errors.lock().unwrap(), Vec::<String>::new());
    let mut input = input_frames(&first);
    input.extend(input_frames(&second));
    assert!(input_frames(&reader.captured.lock().unwrap()) == input);
    assert_eq!(
        emu.armed_faults(),
        json!([]),
        "GetDataEndpoint was called again"
    );
    let reasons: Vec<String> = reader
        .messages_named("kvssrc-connection")
        .iter()
        .filter_map(|s| s.get::<String>("reason").ok())
        .collect();
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("InvalidEndpointException")),
        "{reasons:?}"
    );
}

#[test]
fn a_range_plays_at_its_own_pace_behind_matroskademux() {
    let emu = Emu::start();
    emu.create_stream("pace", 1);
    produce(&emu, "pace", 150, "");
    let end = now_s();
    let description = |sync: bool| {
        format!(
            "{} start-selector=earliest end-timestamp={end:.3} ! matroskademux ! h264parse ! fakesink sync={sync}",
            src_props(&emu, "pace")
        )
    };
    let paced = run_pipeline(&description(true), Duration::from_secs(60));
    assert_eq!(paced.error, None);
    println!(
        "150 frames (5 s) played in {:.2} s",
        paced.elapsed.as_secs_f64()
    );
    // The last frame is due at 4.967 s: a sink syncing on the demuxer's timestamps cannot finish sooner.
    assert!(
        paced.elapsed >= Duration::from_millis(4_900),
        "{:?}",
        paced.elapsed
    );
    assert!(
        paced.elapsed < Duration::from_secs(15),
        "{:?}",
        paced.elapsed
    );
    let unpaced = run_pipeline(&description(false), Duration::from_secs(60));
    assert_eq!(unpaced.error, None);
    assert!(
        unpaced.elapsed < Duration::from_secs(4),
        "{:?}",
        unpaced.elapsed
    );
}

// Streams written by many producer sessions: RELATIVE timecodes restarting at 0, sessions hours apart, a
// fragment the service sends twice.

/// Real H.264 (so that ffprobe reads it): the Tracks element matroskamux wrote and `count` frames, a key frame
/// every 10.
struct Clip {
    tracks: Vec<u8>,
    frames: Vec<Vec<u8>>,
}

fn clip(count: usize) -> Clip {
    let description = format!(
        "videotestsrc num-buffers={count} pattern=ball ! video/x-raw,format=I420,width=160,height=120,framerate=10/1 \
         ! x264enc key-int-max=10 bframes=0 option-string=scenecut=0 speed-preset=ultrafast ! h264parse \
         ! matroskamux ! appsink name=capture sync=false"
    );
    let run = run_pipeline(&description, Duration::from_secs(60));
    assert_eq!(run.error, None);
    let tracks = kvs_mkv::read_all(&run.input)
        .unwrap()
        .into_iter()
        .find_map(|e| match e {
            kvs_mkv::Event::Element(el) if el.id == kvs_mkv::ebml::id::TRACKS => {
                Some(el.bytes.to_vec())
            }
            _ => None,
        })
        .unwrap();
    let frames: Vec<Vec<u8>> = input_frames(&run.input)
        .into_iter()
        .map(|(_, payload)| payload)
        .collect();
    assert_eq!(frames.len(), count);
    Clip { tracks, frames }
}

impl Clip {
    /// EBML header, live Segment, Info (1-ms timecodes) and the clip's Tracks.
    fn header(&self) -> Vec<u8> {
        let mut out = Vec::new();
        kvs_mkv::writer::write_ebml_header(&mut out, "matroska");
        kvs_mkv::writer::write_segment_start(&mut out);
        kvs_mkv::writer::write_info(&mut out, 1_000_000);
        out.extend_from_slice(&self.tracks);
        out
    }
}

/// One fragment of a hand-made stream: its cluster timecode (ms), its producer time (ms since the epoch) and
/// its 10 frames (100 ms apart, the first a key frame).
struct Piece {
    timecode: u64,
    producer_ms: u64,
    frames: Vec<Vec<u8>>,
}

fn piece(clip: &Clip, index: usize, timecode: u64, producer_ms: u64) -> Piece {
    Piece {
        timecode,
        producer_ms,
        frames: clip.frames[index * 10..index * 10 + 10].to_vec(),
    }
}

/// The cluster (timecode and SimpleBlocks) of a piece.
fn write_cluster(out: &mut Vec<u8>, piece: &Piece) {
    kvs_mkv::writer::write_cluster_start(out, piece.timecode);
    for (i, frame) in piece.frames.iter().enumerate() {
        kvs_mkv::writer::write_simple_block(out, 1, (i * 100) as i16, i == 0, frame);
    }
}

/// Three producer sessions sending RELATIVE timecodes, each one PutMedia with its start time: A ends at
/// timecode 10014, B restarts at 0 twelve seconds after A began, C restarts at 0 two hours later.
fn relative_sessions(clip: &Clip, base_ms: u64) -> Vec<(u64, Vec<Piece>)> {
    let mut index = 0;
    let mut session = |start: u64, timecodes: &[u64]| {
        let pieces = timecodes
            .iter()
            .map(|tc| {
                index += 1;
                piece(clip, index - 1, *tc, start + tc)
            })
            .collect();
        (start, pieces)
    };
    vec![
        session(base_ms, &[0, 5_005, 10_014]),
        session(base_ms + 12_000, &[0, 1_001, 2_002]),
        session(base_ms + 2 * 3_600_000, &[0, 1_001]),
    ]
}

/// Uploads one session with `x-amzn-fragment-timecode-type: RELATIVE`; every fragment is PERSISTED.
fn put_relative(emu: &Emu, clip: &Clip, stream: &str, start_ms: u64, pieces: &[Piece]) {
    let mut body = clip.header();
    for piece in pieces {
        write_cluster(&mut body, piece);
    }
    kvs_mkv::tags::write_tags(
        &mut body,
        &[kvs_mkv::tags::SimpleTag::new(
            kvs_mkv::tags::END_OF_FRAGMENT,
            "",
        )],
        8,
    );
    let mut stream_tcp = std::net::TcpStream::connect(emu.addr).unwrap();
    use std::io::{Read, Write};
    write!(
        stream_tcp,
        "POST /putMedia HTTP/1.1\r\nhost: {}\r\nx-amzn-stream-name: {stream}\r\nx-amzn-fragment-timecode-type: RELATIVE\r\n\
         x-amzn-producer-start-timestamp: {}.{:03}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        emu.addr,
        start_ms / 1000,
        start_ms % 1000,
        body.len()
    )
    .unwrap();
    stream_tcp.write_all(&body).unwrap();
    let mut response = Vec::new();
    stream_tcp.read_to_end(&mut response).unwrap();
    let text = String::from_utf8_lossy(&response);
    assert_eq!(text.matches("PERSISTED").count(), pieces.len(), "{text}");
}

/// (PTS in ns) of every packet matroskademux gives for a Matroska file.
fn demuxed_timestamps(path: &std::path::Path) -> Vec<u64> {
    let pipeline = gst::parse::launch(&format!(
        "filesrc location={} ! matroskademux ! appsink name=out sync=false",
        path.display()
    ))
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    let appsink = pipeline
        .by_name("out")
        .unwrap()
        .downcast::<gst_app::AppSink>()
        .unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();
    let mut out = Vec::new();
    while let Ok(sample) = appsink.pull_sample() {
        out.push(sample.buffer().unwrap().pts().unwrap().nseconds());
    }
    pipeline.set_state(gst::State::Null).unwrap();
    out
}

/// Packet timestamps (ms) ffprobe reads in a Matroska file.
fn ffprobe_timestamps(path: &std::path::Path) -> Vec<i64> {
    let output = std::process::Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-select_streams",
            "v:0",
            "-show_entries",
            "packet=pts",
            "-of",
            "csv=p=0",
        ])
        .arg(path)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| l.trim().parse().unwrap())
        .collect()
}

/// What a merged output must be: every frame once in order, cluster times at the producer times, timestamps
/// that never go back in matroskademux and ffprobe, and fragment messages naming the session starts.
fn assert_one_timeline(
    name: &str,
    output: &[u8],
    messages: &[&gst::Structure],
    pieces: &[&Piece],
    sessions: &[bool],
) {
    let expected: Vec<(u64, Vec<u8>)> = pieces
        .iter()
        .flat_map(|p| p.frames.iter().map(|f| (1, f.clone())))
        .collect();
    let got = input_frames(output);
    assert_eq!(got.len(), expected.len(), "{name}: frames");
    assert!(got == expected, "{name}: every frame once, in order");
    let producer: Vec<u64> = pieces.iter().map(|p| p.producer_ms).collect();
    assert_eq!(
        cluster_timecodes(output),
        producer,
        "{name}: clusters at their producer times"
    );
    let written: Vec<&&gst::Structure> = messages
        .iter()
        .filter(|m| !m.get::<bool>("skipped").unwrap())
        .collect();
    let starts: Vec<bool> = written
        .iter()
        .map(|m| m.get::<bool>("session-start").unwrap())
        .collect();
    assert_eq!(starts, sessions, "{name}: session starts");
    let path =
        std::env::temp_dir().join(format!("kvssrc-sessions-{}-{name}.mkv", std::process::id()));
    std::fs::write(&path, output).unwrap();
    let demuxed = demuxed_timestamps(&path);
    assert_eq!(
        demuxed.len(),
        expected.len(),
        "{name}: matroskademux packets"
    );
    assert!(
        demuxed.windows(2).all(|w| w[0] < w[1]),
        "{name}: matroskademux timestamps go back: {demuxed:?}"
    );
    assert_eq!(
        demuxed[0],
        producer[0] * 1_000_000,
        "{name}: the first frame at its producer time"
    );
    let probed = ffprobe_timestamps(&path);
    assert_eq!(probed.len(), expected.len(), "{name}: ffprobe packets");
    assert!(
        probed.windows(2).all(|w| w[0] < w[1]),
        "{name}: ffprobe timestamps go back: {probed:?}"
    );
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn relative_producer_sessions_restarting_at_zero_read_back_every_frame_once_in_every_mode() {
    let emu = Emu::start();
    emu.create_stream("sessions", 24);
    let base_ms = (now_s() as u64 - 3 * 3600) * 1000;
    let clip = clip(80);
    let sessions = relative_sessions(&clip, base_ms);
    for (start, pieces) in &sessions {
        put_relative(&emu, &clip, "sessions", *start, pieces);
    }
    let pieces: Vec<&Piece> = sessions.iter().flat_map(|(_, p)| p.iter()).collect();
    let starts = [true, false, false, true, false, false, true, false];

    // Everything stored (ListFragments + GetMediaForFragmentList).
    let earliest = read_range(&emu, "sessions", "");
    assert_eq!(earliest.error, None);
    assert_one_timeline(
        "earliest",
        &earliest.input,
        &earliest.messages_named("kvssrc-fragment"),
        &pieces,
        &starts,
    );

    // By producer time, from the first fragment to past the last.
    let description = format!(
        "{} start-selector=producer-timestamp start-timestamp={} end-timestamp={} ! appsink name=capture sync=false",
        src_props(&emu, "sessions"),
        base_ms / 1000,
        base_ms / 1000 + 3 * 3600
    );
    let by_time = run_pipeline(&description, Duration::from_secs(60));
    assert_eq!(by_time.error, None);
    assert_one_timeline(
        "producer-range",
        &by_time.input,
        &by_time.messages_named("kvssrc-fragment"),
        &pieces,
        &starts,
    );

    // Live from the earliest fragment (GetMedia).
    let mut live = LiveRead::start(&format!(
        "{} start-selector=earliest ! appsink name=capture sync=false",
        src_props(&emu, "sessions")
    ));
    live.wait_for_frames(80, Duration::from_secs(30));
    live.stop();
    let output = live.captured.lock().unwrap().clone();
    let messages = live.messages_named("kvssrc-fragment");
    assert_one_timeline(
        "live",
        &output,
        &messages.iter().collect::<Vec<_>>(),
        &pieces,
        &starts,
    );

    // Continuous: the same frames, the gaps between sessions closed (2 hours and 1.1 s here).
    let continuous = read_range(&emu, "sessions", "timeline=continuous");
    assert_eq!(continuous.error, None);
    assert!(
        input_frames(&continuous.input) == input_frames(&earliest.input),
        "the same frames"
    );
    let times = cluster_timecodes(&continuous.input);
    assert!(times.windows(2).all(|w| w[0] < w[1]), "{times:?}");
    assert_eq!(times[0], base_ms);
    assert!(times[7] - times[0] < 15_000, "no gap left: {times:?}");
    let path = std::env::temp_dir().join(format!("kvssrc-continuous-{}.mkv", std::process::id()));
    std::fs::write(&path, &continuous.input).unwrap();
    let probed = ffprobe_timestamps(&path);
    std::fs::remove_file(&path).unwrap();
    assert_eq!(probed.len(), 80);
    assert!(
        probed
            .windows(2)
            .all(|w| w[0] < w[1] && w[1] - w[0] <= 1_000),
        "{probed:?}"
    );

    // Raw: the service's bytes unchanged, the messages still naming the session starts.
    let raw = read_range(&emu, "sessions", "mode=raw");
    assert_eq!(raw.error, None);
    assert_eq!(ebml_headers(&raw.input), 8, "one document per fragment");
    let timecodes: Vec<u64> = frames(&raw.input)
        .iter()
        .map(|(_, t, _, _)| *t)
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(
        timecodes,
        [0, 1_001, 2_002, 5_005, 10_014],
        "the stored (relative) cluster timecodes"
    );
    let starts_raw: Vec<bool> = raw
        .messages_named("kvssrc-fragment")
        .iter()
        .map(|m| m.get::<bool>("session-start").unwrap())
        .collect();
    assert_eq!(starts_raw, starts);
}

#[test]
fn a_fragment_the_service_sends_twice_is_left_out_with_a_warning() {
    // A GetMedia recording, imported: a RELATIVE session restart, and its first fragment sent again (same
    // fragment number) right after it.
    let base_ms = 1_700_000_000_000u64;
    let clip = clip(30);
    let pieces = [
        piece(&clip, 0, 10_014, base_ms + 10_014),
        piece(&clip, 1, 0, base_ms + 12_000),
        piece(&clip, 2, 1_001, base_ms + 13_001),
    ];
    let number = |i: usize| format!("91343852333181432392682062607743920146159169{i:03}");
    let mut recording = Vec::new();
    for (index, piece_index) in [0usize, 1, 1, 2].into_iter().enumerate() {
        let piece = &pieces[piece_index];
        recording.extend(clip.header());
        let seconds = |ms: u64| format!("{}.{:03}", ms / 1000, ms % 1000);
        kvs_mkv::tags::write_tags(
            &mut recording,
            &[
                kvs_mkv::tags::SimpleTag::new(kvs_mkv::tags::FRAGMENT_NUMBER, number(piece_index)),
                kvs_mkv::tags::SimpleTag::new(
                    kvs_mkv::tags::SERVER_TIMESTAMP,
                    seconds(piece.producer_ms + 300),
                ),
                kvs_mkv::tags::SimpleTag::new(
                    kvs_mkv::tags::PRODUCER_TIMESTAMP,
                    seconds(piece.producer_ms),
                ),
            ],
            8,
        );
        write_cluster(&mut recording, piece);
        kvs_mkv::tags::write_tags(
            &mut recording,
            &[
                kvs_mkv::tags::SimpleTag::new(kvs_mkv::tags::MILLIS_BEHIND_NOW, "1000"),
                kvs_mkv::tags::SimpleTag::new(kvs_mkv::tags::CONTINUATION_TOKEN, number(index)),
            ],
            8,
        );
    }
    let emu = Emu::start();
    let (status, body) = emu.call_bytes("POST", "/_emulator/streams/twice/import", &recording);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let description = format!(
        "{} start-selector=earliest end-timestamp={} ! appsink name=capture sync=false",
        src_props(&emu, "twice"),
        base_ms / 1000 + 60
    );
    let run = run_pipeline(&description, Duration::from_secs(60));
    assert_eq!(run.error, None);
    let messages = run.messages_named("kvssrc-fragment");
    let skipped: Vec<String> = messages
        .iter()
        .map(|m| m.get::<String>("skip-reason").unwrap())
        .collect();
    assert_eq!(
        skipped,
        [
            "",
            "",
            &format!(
                "fragment {} was already written (the service sent it again)",
                number(1)
            ),
            ""
        ]
    );
    assert!(
        run.warnings
            .iter()
            .any(|w| w.contains(&format!("fragment {} left out", number(1)))),
        "{:?}",
        run.warnings
    );
    assert_one_timeline(
        "twice",
        &run.input,
        &messages,
        &pieces.iter().collect::<Vec<_>>(),
        &[true, true, false],
    );
}

#[test]
fn both_elements_work_over_https_with_a_custom_ca_and_refuse_an_unknown_certificate() {
    // A CA, and a certificate for 127.0.0.1 it signed.
    let pki = Pki::new("tls");
    let ca = pki.ca("ca");
    let (cert, key) = pki.leaf("server", "ca", Some("IP:127.0.0.1"));
    let emu = Emu::with_config(kvs_emulator::Config {
        tls: Some((cert.clone(), key.clone())),
        ..kvs_emulator::Config::default()
    });
    assert!(emu.url.starts_with("https://"), "{}", emu.url);
    let ca = format!("ca-file={}", ca.display());
    let upload = format!(
        "{} ! matroskamux ! tee name=t ! queue ! {} sync=false {ca} {CAPTURE}",
        video_source(60),
        sink_props(&emu, "secure")
    );
    let run = run_pipeline(&upload, Duration::from_secs(60));
    assert_eq!(run.error, None, "{:?}", run.warnings);
    assert_eq!(run.acks("PERSISTED"), 2);
    let read = read_range(&emu, "secure", &ca);
    assert_eq!(read.error, None);
    assert!(
        input_frames(&read.input) == input_frames(&run.input),
        "every frame back over TLS"
    );

    // Without the CA the service's certificate is not trusted: a clear error, no silent fallback.
    let refused = run_pipeline(
        &format!(
            "{} ! matroskamux ! {} sync=false",
            video_source(10),
            sink_props(&emu, "secure")
        ),
        Duration::from_secs(30),
    );
    let error = refused.error.unwrap_or_default();
    assert!(
        error.contains("GstKvsSink") && error.to_lowercase().contains("certificate"),
        "{error}"
    );
}

#[test]
fn a_live_reader_started_before_any_fragment_misses_none_that_arrives_between_two_sessions() {
    let emu = Emu::start();
    emu.create_stream("between", 1);
    let clip = clip(10);
    let mut reader = LiveRead::start(&format!(
        "{} ! appsink name=capture sync=false",
        src_props(&emu, "between")
    ));
    // The first NOW session ends after the service's idle time; kvssrc waits a moment (the retry delay after a
    // session that gave nothing) before the next one. A whole fragment is stored right then.
    let deadline = Instant::now() + Duration::from_secs(10);
    let retry_in = loop {
        if let Some(message) = reader.messages_named("kvssrc-connection").first() {
            break message.get::<u64>("retry-in-ms").unwrap();
        }
        assert!(Instant::now() < deadline, "no session ended");
        std::thread::sleep(Duration::from_millis(5));
    };
    let piece = piece(&clip, 0, 0, (now_s() * 1000.0) as u64);
    let started = Instant::now();
    put_relative(
        &emu,
        &clip,
        "between",
        piece.producer_ms,
        std::slice::from_ref(&piece),
    );
    assert!(
        started.elapsed() < Duration::from_millis(retry_in),
        "the fragment was not stored before the next session ({:?}, retry in {retry_in} ms)",
        started.elapsed()
    );
    reader.wait_for_frames(10, Duration::from_secs(10));
    reader.stop();
    let output = reader.captured.lock().unwrap().clone();
    assert!(
        input_frames(&output)
            == piece
                .frames
                .iter()
                .map(|f| (1, f.clone()))
                .collect::<Vec<_>>()
    );
}

#[test]
fn a_producer_restarted_with_a_clock_behind_loses_nothing_and_time_never_goes_back() {
    // kvssink uploads 3 s stamped from T, then restarts with a clock one second behind and uploads 3 s of
    // other pictures: its fragments at T+1 and T+2 have the producer timestamps of the first run's (not copies:
    // other frames).
    let emu = Emu::start();
    emu.create_stream("restart", 1);
    let start = 1_700_000_000u64;
    let first = produce(&emu, "restart", 90, &format!("file-start-time={start}"));
    let description = format!(
        "videotestsrc num-buffers=90 pattern=smpte ! video/x-raw,format=I420,width=320,height=240,framerate=30/1 \
         ! x264enc key-int-max=30 bframes=0 tune=zerolatency speed-preset=ultrafast ! h264parse ! matroskamux \
         ! tee name=t ! queue ! {} sync=false file-start-time={} {CAPTURE}",
        sink_props(&emu, "restart"),
        start + 1
    );
    let second = run_pipeline(&description, Duration::from_secs(60));
    assert_eq!(second.error, None);
    let run = read_range(&emu, "restart", "");
    assert_eq!(run.error, None);
    let mut expected = input_frames(&first);
    expected.extend(input_frames(&second.input));
    let got = input_frames(&run.input);
    assert_eq!(got.len(), 180, "every frame of both runs");
    // Fragments come in producer-time order: T, T+1 (first run), T+1 (second run), T+2, T+2, T+3.
    let mut sorted_got = got.clone();
    sorted_got.sort();
    let mut sorted_expected = expected;
    sorted_expected.sort();
    assert!(sorted_got == sorted_expected, "each frame once");
    let times = cluster_timecodes(&run.input);
    assert!(times.windows(2).all(|w| w[0] < w[1]), "{times:?}");
    assert_eq!(times.len(), 6);
    assert!(
        run.messages_named("kvssrc-fragment")
            .iter()
            .all(|m| !m.get::<bool>("skipped").unwrap())
    );
}

#[test]
fn a_fragment_stored_cut_short_then_resent_whole_reads_back_every_frame_once() {
    // A producer that ends its PutMedia body cleanly in mid-fragment (the C++ kvssink does after an ERROR ACK)
    // gets that fragment stored cut short; it then sends the whole fragment again on a new connection.
    let clip = clip(40);
    let emu = Emu::start();
    emu.create_stream("cut", 1);
    let start = (now_s() as u64 - 60) * 1000;
    let mut cut_short = piece(&clip, 2, 2_000, start + 2_000);
    cut_short.frames.truncate(5);
    put_relative(
        &emu,
        &clip,
        "cut",
        start,
        &[
            piece(&clip, 0, 0, start),
            piece(&clip, 1, 1_000, start + 1_000),
            cut_short,
        ],
    );
    put_relative(
        &emu,
        &clip,
        "cut",
        start,
        &[
            piece(&clip, 2, 2_000, start + 2_000),
            piece(&clip, 3, 3_000, start + 3_000),
        ],
    );
    assert_eq!(
        emu.admin_fragments("cut").len(),
        5,
        "the service keeps both copies"
    );

    for extra in ["", "parallel-downloads=1"] {
        let run = read_range(&emu, "cut", extra);
        assert_eq!(run.error, None);
        let read: Vec<Vec<u8>> = input_frames(&run.input)
            .into_iter()
            .map(|(_, payload)| payload)
            .collect();
        assert_eq!(read.len(), 40, "every frame once");
        assert!(read == clip.frames, "in order, byte for byte");
        let skipped = run
            .messages_named("kvssrc-fragment")
            .iter()
            .filter(|f| f.get::<bool>("skipped").unwrap())
            .count();
        assert_eq!(skipped, 1);
    }
}

/// Each frame kvssrc gives is a buffer of its own with its producer timestamp and its fragment's server
/// timestamp as reference timestamps; a fragment's own tags reach downstream as a tag event.
#[test]
fn each_frame_carries_its_producer_and_server_time_and_fragment_tags_go_downstream() {
    let emu = Emu::start();
    emu.create_stream("frame-times", 24);
    let description = format!(
        "{} ! matroskamux ! {} sync=false",
        crate::common::video_source(90),
        crate::common::sink_props(&emu, "frame-times")
    );
    let upload = run_pipeline_with(&description, Duration::from_secs(60), |pipeline| {
        let pad = pipeline
            .by_name("sink")
            .unwrap()
            .static_pad("sink")
            .unwrap();
        let sent = std::sync::atomic::AtomicBool::new(false);
        pad.add_probe(gst::PadProbeType::BUFFER, move |pad, _| {
            if !sent.swap(true, std::sync::atomic::Ordering::SeqCst) {
                let s = gst::Structure::builder("kvs-add-metadata")
                    .field("name", "site")
                    .field("value", "berlin")
                    .field("persist", true)
                    .build();
                assert!(pad.send_event(gst::event::CustomDownstream::new(s)));
            }
            gst::PadProbeReturn::Ok
        });
    });
    assert_eq!(upload.error, None);
    // What was stored: each frame's producer time (cluster timecode + block offset, ms) and payload, and each
    // fragment's server timestamp.
    let mut stored = Vec::new();
    let mut cluster_ms = 0i64;
    for event in kvs_mkv::read_all(&emu.read_back("frame-times")).unwrap() {
        if let kvs_mkv::Event::ClusterChild(element) = event {
            if element.id == kvs_mkv::ebml::id::TIMECODE {
                cluster_ms = kvs_mkv::ebml::read_uint(&element.data()).unwrap() as i64;
            } else if element.id == kvs_mkv::ebml::id::SIMPLE_BLOCK {
                let info = kvs_mkv::block::parse_simple_block(&element.data()).unwrap();
                stored.push((
                    cluster_ms + i64::from(info.relative_timecode),
                    element.data()[info.header_len..].to_vec(),
                ));
            }
        }
    }
    assert_eq!(stored.len(), 90);
    let (status, listed) = emu.json(
        "/listFragments",
        serde_json::json!({"StreamName": "frame-times"}),
    );
    assert_eq!(status, 200);
    let servers: std::collections::BTreeSet<i64> = listed["Fragments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["ServerTimestamp"].as_f64().unwrap() * 1000.0).round() as i64)
        .collect();

    type Frame = (Vec<u8>, Option<u64>, Option<u64>);
    let frames: Arc<Mutex<Vec<Frame>>> = Arc::default();
    let tags: Arc<Mutex<Vec<String>>> = Arc::default();
    let description = format!(
        "{} start-selector=earliest end-timestamp={:.3} ! appsink name=frames sync=false",
        src_props(&emu, "frame-times"),
        now_s()
    );
    let read = run_pipeline_with(&description, Duration::from_secs(60), |pipeline| {
        let appsink = pipeline.by_name("frames").unwrap();
        let tags = tags.clone();
        appsink.static_pad("sink").unwrap().add_probe(
            gst::PadProbeType::EVENT_DOWNSTREAM,
            move |_, info| {
                if let Some(gst::PadProbeData::Event(event)) = &info.data
                    && let gst::EventView::Tag(tag) = event.view()
                {
                    for comment in tag.tag().iter_tag::<gst::tags::ExtendedComment>() {
                        tags.lock().unwrap().push(comment.get().to_owned());
                    }
                }
                gst::PadProbeReturn::Ok
            },
        );
        let frames = frames.clone();
        appsink
            .downcast::<gst_app::AppSink>()
            .unwrap()
            .set_callbacks(
                gst_app::AppSinkCallbacks::builder()
                    .new_sample(move |sink| {
                        let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                        let buffer = sample.buffer().unwrap();
                        let time = |name: &str| {
                            buffer
                                .iter_meta::<gst::ReferenceTimestampMeta>()
                                .find_map(|m| {
                                    (m.reference().structure(0)?.name() == name)
                                        .then(|| m.timestamp().nseconds())
                                })
                        };
                        let frame = (
                            buffer.map_readable().unwrap().to_vec(),
                            time("timestamp/x-kvs-producer"),
                            time("timestamp/x-kvs-server"),
                        );
                        frames.lock().unwrap().push(frame);
                        Ok(gst::FlowSuccess::Ok)
                    })
                    .build(),
            );
    });
    assert_eq!(read.error, None);
    let frames = frames.lock().unwrap().clone();
    let with_times: Vec<&Frame> = frames.iter().filter(|f| f.1.is_some()).collect();
    assert_eq!(with_times.len(), 90, "one buffer with times per frame");
    for (i, ((bytes, producer, server), (time_ms, payload))) in
        with_times.into_iter().zip(&stored).enumerate()
    {
        // The buffer is the frame's SimpleBlock, nothing else.
        let element = kvs_mkv::read_all(
            &[kvs_mkv::writer::h264_stream_header(), cluster_around(bytes)].concat(),
        )
        .unwrap()
        .into_iter()
        .filter_map(|e| match e {
            kvs_mkv::Event::ClusterChild(el) if el.id == kvs_mkv::ebml::id::SIMPLE_BLOCK => {
                Some(el)
            }
            _ => None,
        })
        .collect::<Vec<_>>();
        assert_eq!(element.len(), 1, "frame {i}: one SimpleBlock per buffer");
        let info = kvs_mkv::block::parse_simple_block(&element[0].data()).unwrap();
        assert!(
            element[0].data()[info.header_len..] == payload[..],
            "frame {i}: its bytes"
        );
        assert_eq!(
            producer.unwrap(),
            *time_ms as u64 * 1_000_000,
            "frame {i}: its producer time"
        );
        let server_ms = (server.unwrap() / 1_000_000) as i64;
        assert!(
            servers.contains(&server_ms),
            "frame {i}: server time {server_ms} not among {servers:?}"
        );
    }
    // Each of the 3 fragments carries the persistent tag after its frames (where GetMedia puts a fragment's own
    // tags); the tags that followed the connection's header come with every fragment too, before its frames.
    let berlin = tags
        .lock()
        .unwrap()
        .iter()
        .filter(|t| *t == "site=berlin")
        .count();
    assert_eq!(berlin, 6, "tags: {:?}", tags.lock().unwrap());
}

/// `bytes` (cluster children) inside a cluster of unknown size, for reading them alone.
fn cluster_around(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    kvs_mkv::writer::write_cluster_start(&mut out, 0);
    out.extend_from_slice(bytes);
    out
}

/// kvssrc in a `gst_check::Harness`, pulled buffer by buffer until EOS: Matroska caps and a byte segment (a
/// Matroska byte stream, as filesrc gives one to matroskademux) before the first buffer, every stored frame
/// once and in order, and each frame's buffer with its producer and server timestamps (reference timestamp
/// metas).
#[test]
fn kvssrc_in_a_harness_gives_every_frame_with_its_timestamps_then_eos() {
    let emu = Emu::start();
    emu.create_stream("harness-src", 1);
    let input = produce(&emu, "harness-src", 60, "");
    let src = gst::ElementFactory::make("kvssrc")
        .property("stream-name", "harness-src")
        .property("endpoint-uri", &emu.url)
        .property("access-key", "AKIDTEST")
        .property("secret-access-key", "test-secret")
        .property("region", "us-east-1")
        .property_from_str("start-selector", "earliest")
        .property("end-timestamp", now_s())
        .build()
        .unwrap();
    let mut h = gst_check::Harness::with_element(&src, None, Some("src"));
    h.play();
    let (mut data, mut buffers) = (Vec::new(), Vec::new());
    loop {
        match h.pull_until_eos() {
            Ok(Some(buffer)) => {
                data.extend_from_slice(&buffer.map_readable().unwrap());
                buffers.push(buffer);
            }
            Ok(None) => break,
            Err(error) => panic!("no EOS: {error}"),
        }
    }
    let caps = h.sinkpad().unwrap().current_caps().unwrap();
    assert_eq!(caps.structure(0).unwrap().name(), "video/x-matroska");
    let mut saw_segment = false;
    while let Some(event) = h.try_pull_event() {
        if let gst::EventView::Segment(segment) = event.view() {
            assert_eq!(segment.segment().format(), gst::Format::Bytes);
            saw_segment = true;
        }
    }
    assert!(saw_segment, "no segment event");
    assert!(
        input_frames(&data) == input_frames(&input),
        "the frames read differ from those uploaded"
    );
    // One buffer per frame carries both reference timestamps (no PTS: the output is a byte stream, and
    // matroskademux gives the frames their times); producer times go forward frame by frame.
    let frames: Vec<&gst::Buffer> = buffers
        .iter()
        .filter(|b| b.meta::<gst::ReferenceTimestampMeta>().is_some())
        .collect();
    assert_eq!(frames.len(), 60);
    let mut producer_times = Vec::new();
    for frame in &frames {
        let references: Vec<(String, gst::ClockTime)> = frame
            .iter_meta::<gst::ReferenceTimestampMeta>()
            .map(|m| {
                let name = m.reference().structure(0).unwrap().name().to_string();
                (name, m.timestamp())
            })
            .collect();
        let names: Vec<&str> = references.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            ["timestamp/x-kvs-producer", "timestamp/x-kvs-server"]
        );
        producer_times.push(references[0].1);
    }
    assert!(
        producer_times.windows(2).all(|w| w[0] < w[1]),
        "{producer_times:?}"
    );
}
