// SPDX-License-Identifier: MPL-2.0

//! kvssink's fragment store (`buffer-dir`) with real processes: `gst-launch-1.0` producers killed with SIGKILL
//! and started again on the same directory, a service that cannot be reached at start, and the directories a
//! store must refuse. Every check compares frames: each frame a killed producer logged as stored is read back
//! by kvssrc exactly once, byte for byte, at its capture time.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::common::*;
use crate::kvssrc::read_range;
use serde_json::json;

/// A fresh directory under the system's temporary directory.
fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kvs-store-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// The fragment files in a store directory.
fn fragment_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| entries.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.retain(|p| p.extension().is_some_and(|e| e == "kvsfrag"));
    files.sort();
    files
}

/// Every frame of a Matroska byte stream with its absolute time (cluster Timecode + block offset, in
/// TimecodeScale units): (time, track, payload), in stream order.
fn timed_frames(data: &[u8]) -> Vec<(i64, u64, Vec<u8>)> {
    use kvs_mkv::Event;
    use kvs_mkv::ebml::id;
    let mut out = Vec::new();
    let mut cluster = 0i64;
    for event in kvs_mkv::read_all(data).expect("valid Matroska") {
        if let Event::ClusterChild(element) = event {
            match element.id {
                id::TIMECODE => cluster = kvs_mkv::ebml::read_uint(&element.data()).unwrap() as i64,
                id::SIMPLE_BLOCK => {
                    let info = kvs_mkv::block::parse_simple_block(&element.data()).unwrap();
                    let time = cluster + i64::from(info.relative_timecode);
                    out.push((time, info.track, element.data()[info.header_len..].to_vec()));
                }
                _ => {}
            }
        }
    }
    out
}

/// Clusters of a Matroska byte stream by Timecode: the most frames any copy of it holds.
fn cluster_sizes(data: &[u8]) -> HashMap<u64, usize> {
    let mut counts: Vec<(u64, usize)> = Vec::new();
    let mut current = None;
    for (cluster, timecode, _, _) in frames(data) {
        if current != Some(cluster) {
            current = Some(cluster);
            counts.push((timecode, 0));
        }
        if let Some(last) = counts.last_mut() {
            last.1 += 1;
        }
    }
    let mut sizes = HashMap::new();
    for (timecode, count) in counts {
        let size = sizes.entry(timecode).or_insert(0);
        *size = count.max(*size);
    }
    sizes
}

/// A free loopback address nothing listens on (for a service that cannot be reached).
fn closed_address() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}")
}

/// A live producer in its own process: H.264 at 30 fps into kvssink with `buffer-dir`, its debug log (each
/// frame the store took) in `log`.
fn spawn_producer(endpoint: &str, stream: &str, dir: &Path, log: &Path, color: u32) -> Child {
    let description = format!(
        "videotestsrc is-live=true pattern=ball foreground-color={color} ! video/x-raw,format=I420,width=320,height=240,framerate=30/1 \
         ! x264enc key-int-max=30 bframes=0 tune=zerolatency speed-preset=ultrafast ! h264parse ! matroskamux \
         ! kvssink stream-name={stream} endpoint-uri={endpoint} access-key=AKIDTEST secret-access-key=test-secret \
         region=us-east-1 request-timeout=1000 connection-staleness=3 buffer-dir={}",
        dir.display()
    );
    Command::new("gst-launch-1.0")
        .arg("-q")
        .args(description.split_whitespace())
        .env("GST_PLUGIN_PATH", plugin_dir())
        .env("GST_DEBUG", "kvssink:5")
        .env("GST_DEBUG_NO_COLOR", "1")
        .env("GST_DEBUG_FILE", log)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("gst-launch-1.0")
}

/// From a producer's debug log: for each fragment (by Timecode), how many of its frames the store took.
fn stored_frames(log: &Path) -> BTreeMap<u64, usize> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut stored = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.split("stored frame ").nth(1) else {
            continue;
        };
        let mut words = rest.split_whitespace();
        let index: usize = words.next().unwrap().parse().unwrap();
        let fragment: u64 = words.nth(2).unwrap().parse().unwrap();
        let count = stored.entry(fragment).or_insert(0);
        *count = (index + 1).max(*count);
    }
    stored
}

/// A small deterministic generator, so that a failing run can be replayed (the seed is printed).
struct Seeded(u64);

impl Seeded {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

#[test]
fn a_producer_killed_ten_times_loses_no_frame_it_stored() {
    let seed = std::env::var("KVS_STORE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20261201);
    let mut rng = Seeded(seed);
    let emu = Emu::start();
    emu.create_stream("killed", 1);
    let dir = temp_dir("killed");
    let closed = closed_address();
    let mut logged: BTreeMap<u64, usize> = BTreeMap::new();
    let mut modes = Vec::new();
    for run in 0..10u32 {
        // Offline (nothing listens), connected with PERSISTED withheld (a backlog that was sent), or connected.
        let mode = ["offline", "unpersisted", "online"][rng.below(3) as usize];
        if mode == "unpersisted" {
            emu.fault(
                json!({"api": "putMedia", "stream": "killed", "kind": "withhold_acks", "event": "PERSISTED"}),
            );
        }
        let endpoint = if mode == "offline" {
            closed.clone()
        } else {
            emu.url.clone()
        };
        let log = dir.with_extension(format!("{run}.log"));
        let mut child = spawn_producer(
            &endpoint,
            "killed",
            &dir,
            &log,
            0xff000000 | (run * 0x1f3d5b),
        );
        let after = Duration::from_millis(3500 + rng.below(3000));
        std::thread::sleep(after);
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(emu.call("DELETE", "/_emulator/faults", "").0, 200);
        let stored = stored_frames(&log);
        assert!(
            !stored.is_empty(),
            "run {run} ({mode}) stored nothing in {after:?}"
        );
        modes.push(format!(
            "{mode} {}ms {} frames",
            after.as_millis(),
            stored.values().sum::<usize>()
        ));
        for (fragment, count) in stored {
            let entry = logged.entry(fragment).or_insert(0);
            *entry = count.max(*entry);
        }
        let _ = std::fs::remove_file(&log);
    }
    let left = fragment_files(&dir).len();
    // The last producer runs to the end: it uploads what the killed ones left, then its own frames.
    let description = format!(
        "{} ! matroskamux ! tee name=t ! queue ! {} sync=false buffer-dir={} {CAPTURE}",
        video_source(90),
        sink_props(&emu, "killed"),
        dir.display()
    );
    let run = run_pipeline(&description, Duration::from_secs(120));
    assert_eq!(run.error, None, "warnings {:?}", run.warnings);
    let recovered = run.messages_named("kvssink-store-recovered");
    assert_eq!(recovered.len(), 1);
    assert_eq!(recovered[0].get::<u64>("fragments").unwrap(), left as u64);
    assert!(
        fragment_files(&dir).is_empty(),
        "every fragment persisted and released: {:?}",
        fragment_files(&dir)
    );

    // Each frame a killed producer stored is in the stream.
    let stored = emu.read_back("killed");
    let sizes = cluster_sizes(&stored);
    for (fragment, count) in &logged {
        let found = sizes.get(fragment).copied().unwrap_or(0);
        assert!(
            found >= *count,
            "fragment {fragment}: {count} frames stored by a producer, {found} in the stream"
        );
    }
    // kvssrc reads each stored frame once, in time order, byte for byte, at its capture time.
    let mut distinct: BTreeMap<(i64, u64), Vec<u8>> = BTreeMap::new();
    for (time, track, payload) in timed_frames(&stored) {
        let previous = distinct.insert((time, track), payload.clone());
        assert!(
            previous.is_none_or(|p| p == payload),
            "two different frames at {time}"
        );
    }
    let read = read_range(&emu, "killed", "");
    assert_eq!(read.error, None);
    let read_frames = timed_frames(&read.input);
    let read_keys: Vec<(i64, u64)> = read_frames
        .iter()
        .map(|(t, track, _)| (*t, *track))
        .collect();
    let distinct_keys: Vec<(i64, u64)> = distinct.keys().copied().collect();
    assert_eq!(
        read_keys.len(),
        distinct_keys.len(),
        "frames read by kvssrc against distinct frames stored"
    );
    assert!(
        read_keys == distinct_keys,
        "kvssrc reads each stored frame once, in time order, at its time"
    );
    assert!(
        read_frames
            .iter()
            .all(|(t, track, payload)| distinct[&(*t, *track)] == *payload)
    );
    // The last producer's own frames end the stream, as matroskamux made them.
    let input = input_frames(&run.input);
    let tail: Vec<(u64, Vec<u8>)> = read_frames[read_frames.len() - input.len()..]
        .iter()
        .map(|(_, t, p)| (*t, p.clone()))
        .collect();
    assert!(
        tail == input,
        "the last producer's frames follow the recovered ones"
    );
    println!(
        "seed {seed}: 10 SIGKILLs ({}), {} fragments left for the last producer, {} frames logged as stored by \
         the killed producers, {} distinct frames in the stream ({} stored in all), all read once by kvssrc",
        modes.join(", "),
        left,
        logged.values().sum::<usize>(),
        distinct_keys.len(),
        frames(&stored).len()
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_sink_started_with_the_service_unreachable_records_and_uploads_when_it_comes_back() {
    // A port nothing listens on yet: the emulator process starts on it once the sink has stored fragments (so
    // it surely started without the service, however loaded the machine), and a second later.
    let closed = closed_address();
    let listen = closed.trim_start_matches("http://").to_owned();
    let data_dir = temp_dir("offline-emulator");
    let dir = temp_dir("offline");
    let watched = dir.clone();
    let starter = std::thread::spawn(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while fragment_files(&watched).len() < 2 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_secs(1));
        crate::chaos::campaign::spawn_emulator(
            &plugin_dir().join("kvs-emulator"),
            &data_dir,
            &listen,
        )
    });
    let emu = Emu::external(&closed);
    // A minute of stream time, fed faster than real time.
    let description = format!(
        "{} ! matroskamux ! tee name=t ! queue ! {} sync=false request-timeout=1000 buffer-dir={} {CAPTURE}",
        video_source(1800),
        sink_props(&emu, "offline"),
        dir.display()
    );
    let run = run_pipeline(&description, Duration::from_secs(180));
    let (mut emulator, url) = starter.join().unwrap();
    assert_eq!(url, closed);
    assert_eq!(run.error, None, "warnings {:?}", run.warnings);
    assert!(
        run.warnings
            .iter()
            .any(|w| w.starts_with("the service cannot be reached (")),
        "{:?}",
        run.warnings
    );
    let input = input_frames(&run.input);
    assert_eq!(input.len(), 1800);
    let stored = unique_frames(&emu.read_back("offline"));
    assert_eq!(stored.len(), input.len(), "frames stored");
    assert!(stored == input, "the frames stored are the frames uploaded");
    assert!(fragment_files(&dir).is_empty());
    emulator.kill().unwrap();
    emulator.wait().unwrap();
    println!(
        "started offline: {} frames recorded, then all stored once the service came up",
        input.len()
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn directories_a_store_cannot_use_are_named_in_the_error() {
    init();
    let emu = Emu::start();
    emu.create_stream("dirs", 1);
    emu.create_stream("other", 1);
    let dir = temp_dir("dirs");
    let upload = |stream: &str, frames: u32, dir: &Path| {
        run_pipeline(
            &format!(
                "{} ! matroskamux ! {} sync=false buffer-dir={}",
                video_source(frames),
                sink_props(&emu, stream),
                dir.display()
            ),
            Duration::from_secs(60),
        )
    };
    // Two sinks on one directory: the second fails to start, naming the directory and the holder.
    let holder = format!(
        "{} ! matroskamux ! {} buffer-dir={}",
        "videotestsrc is-live=true pattern=ball ! video/x-raw,width=320,height=240,framerate=30/1 \
         ! x264enc key-int-max=30 bframes=0 tune=zerolatency speed-preset=ultrafast ! h264parse",
        sink_props(&emu, "dirs"),
        dir.display()
    );
    let pipeline = gst::parse::launch(&holder).unwrap();
    use gst::prelude::*;
    pipeline.set_state(gst::State::Playing).unwrap();
    pipeline.state(gst::ClockTime::from_seconds(10)).0.unwrap();
    // Until the holder stored its first frame (the fragment being written is never persisted before it ends).
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while fragment_files(&dir).is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let run = upload("dirs", 30, &dir);
    let error = run.error.expect("a second sink on the directory fails");
    assert!(
        error.starts_with(&format!(
            "buffer-dir {} is in use by another kvssink (this process, {}): each sink needs a directory of \
             its own",
            dir.display(),
            std::process::id()
        )),
        "{error}"
    );
    pipeline.set_state(gst::State::Null).unwrap();

    // A fragment of another stream: an error naming the file; nothing is uploaded to the wrong stream.
    let files = fragment_files(&dir);
    assert!(
        !files.is_empty(),
        "the holder left its unpersisted fragments? {files:?}"
    );
    let run = upload("other", 30, &dir);
    let error = run.error.expect("another stream's directory is refused");
    assert!(
        error.starts_with(&format!(
            "{} holds a fragment of stream \"dirs\", not \"other\": buffer-dir belongs to another stream",
            files[0].display()
        )),
        "{error}"
    );
    assert!(emu.read_back("other").is_empty());

    // A damaged file: set aside with a warning naming it; the rest is uploaded.
    let damaged = files[0].clone();
    std::fs::write(&damaged, b"KVSFRAG1 but then nothing that makes sense").unwrap();
    let run = upload("dirs", 30, &dir);
    assert_eq!(run.error, None);
    let warning = run
        .warnings
        .iter()
        .find(|w| w.contains("is not a readable fragment"))
        .expect("a warning");
    assert!(
        warning.starts_with(&format!(
            "{} is not a readable fragment (",
            damaged.display()
        )),
        "{warning}"
    );
    assert!(damaged.with_extension("kvsfrag.corrupt").exists());
    assert!(fragment_files(&dir).is_empty());

    // A path that cannot be a directory.
    let not_a_dir = damaged.with_extension("kvsfrag.corrupt").join("store");
    let run = upload("dirs", 30, &not_a_dir);
    let error = run.error.expect("an error");
    assert!(
        error.starts_with(&format!(
            "cannot create the directory {}: ",
            not_a_dir.display()
        )),
        "{error}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Reads kvssink's `queued-bytes` every 20 ms while the pipeline runs; returns the largest value seen.
fn sample_queued_bytes(pipeline: &gst::Pipeline) -> std::sync::Arc<std::sync::atomic::AtomicU64> {
    use gst::prelude::*;
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let sink = pipeline.by_name("sink").unwrap().downgrade();
    let seen = peak.clone();
    std::thread::spawn(move || {
        while let Some(sink) = sink.upgrade() {
            if let Some(stats) = sink.property::<Option<gst::Structure>>("stats") {
                seen.fetch_max(
                    stats.get::<u64>("queued-bytes").unwrap(),
                    std::sync::atomic::Ordering::Relaxed,
                );
            }
            drop(sink);
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    peak
}

/// A live H.264 source of `frames` frames at about 4 Mbit/s (noise), a key frame each second.
fn heavy_live_source(frames: u32) -> String {
    format!(
        "videotestsrc is-live=true num-buffers={frames} pattern=snow ! video/x-raw,format=I420,width=320,height=240,framerate=30/1 \
         ! x264enc key-int-max=30 bframes=0 tune=zerolatency speed-preset=ultrafast bitrate=4000 ! h264parse"
    )
}

#[test]
fn the_ram_queue_holds_no_more_than_storage_size_when_persisted_never_comes() {
    let emu = Emu::start();
    emu.create_stream("withheld", 1);
    // RECEIVED comes, PERSISTED never does: before, sent fragments stayed in RAM without bound.
    emu.fault(
        json!({"api": "putMedia", "kind": "withhold_acks", "event": "PERSISTED", "times": 1000}),
    );
    let description = format!(
        "{} ! matroskamux ! {} storage-size=2 connection-staleness=1 stop-stream-timeout=1",
        heavy_live_source(300),
        sink_props(&emu, "withheld")
    );
    let mut peak = None;
    let run = run_pipeline_with(&description, Duration::from_secs(60), |p| {
        peak = Some(sample_queued_bytes(p))
    });
    let peak = peak.unwrap().load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(run.error, None);
    let dropped = run.messages_named("kvssink-fragment-dropped");
    assert!(!dropped.is_empty(), "a full queue drops fragments");
    assert_eq!(run.stat("fragments-dropped"), dropped.len() as u64);
    let dropped_warnings = run
        .warnings
        .iter()
        .filter(|w| w.contains(" dropped | "))
        .count();
    assert_eq!(dropped_warnings, dropped.len(), "{:?}", run.warnings);
    for message in &dropped {
        assert!(message.get::<String>("reason").unwrap().starts_with(
            "the fragment queue is full (2097152 bytes, 120 s at most: storage-size, buffer-duration)"
        ));
    }
    // Every byte counts: at most storage-size, plus the fragment being written (never dropped).
    let largest = emu
        .admin_fragments("withheld")
        .iter()
        .map(|f| f["size_bytes"].as_u64().unwrap())
        .max()
        .unwrap();
    assert!(
        peak <= 2 * 1024 * 1024 + largest,
        "queued bytes peaked at {peak} (largest fragment {largest})"
    );
    // And fragments that never got their PERSISTED were sent again.
    assert!(run.stat("fragments-resent") >= 1, "{:?}", run.stats);
    println!(
        "PERSISTED withheld: queue peaked at {peak} bytes (storage-size 2 MiB, largest fragment {largest}), \
         {} fragments dropped with a warning, {} re-sent",
        dropped.len(),
        run.stat("fragments-resent")
    );
}

/// Runs `body` with a tmpfs of `size` mounted at a new directory (root only: None otherwise).
fn with_tmpfs<T>(size: &str, body: impl FnOnce(&Path) -> T) -> Option<T> {
    let is_root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
    if !is_root {
        println!("skipped: mounting a tmpfs needs root");
        return None;
    }
    let dir = temp_dir(&format!("tmpfs-{size}"));
    std::fs::create_dir_all(&dir).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(&dir)
        .status()
        .unwrap();
    assert!(mounted.success(), "mount a tmpfs on {}", dir.display());
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| body(&dir)));
    Command::new("umount").arg(&dir).status().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    Some(result.unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
}

#[test]
fn a_full_disk_is_a_warning_naming_it_and_nothing_is_lost() {
    with_tmpfs("512k", |dir| {
        let emu = Emu::start();
        emu.create_stream("full", 1);
        // Nothing is persisted for a while, so the store fills; then it drains.
        emu.fault(
            json!({"api": "putMedia", "kind": "delay_acks", "ms": 2500, "event": "PERSISTED"}),
        );
        let description = format!(
            "{} ! matroskamux ! tee name=t ! queue ! {} sync=false buffer-dir={}/store {CAPTURE}",
            heavy_live_source(150),
            sink_props(&emu, "full"),
            dir.display()
        );
        let run = run_pipeline(&description, Duration::from_secs(60));
        assert_eq!(run.error, None);
        let full: Vec<&String> = run
            .warnings
            .iter()
            .filter(|w| w.contains("No space left on device"))
            .collect();
        assert!(
            !full.is_empty(),
            "a warning when the store starts failing: {:?}",
            run.warnings
        );
        let recovered = run.warnings.len() - full.len();
        assert_eq!(recovered, 0, "no other warning: {:?}", run.warnings);
        for warning in &full {
            assert!(
                warning.starts_with(&format!("cannot write {}/store/", dir.display()))
                    || warning.starts_with(&format!("cannot create {}/store/", dir.display())),
                "{warning}"
            );
        }
        let input = input_frames(&run.input);
        let stored = unique_frames(&emu.read_back("full"));
        assert_eq!(stored.len(), input.len());
        assert!(
            stored == input,
            "every frame stored although the disk was full"
        );
        assert!(fragment_files(&dir.join("store")).is_empty());
    });
}

/// One cluster of synthetic H.264 at 2 Mbit/s: 60 frames 33 ms apart, each 8333 bytes that name the cluster
/// and the frame.
fn synthetic_cluster(index: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(60 * 8400);
    kvs_mkv::writer::write_cluster_start(&mut out, index * 2000);
    for frame in 0..60u64 {
        let mut payload = vec![(index % 251) as u8; 8333];
        payload[..16].copy_from_slice(&[index.to_be_bytes(), frame.to_be_bytes()].concat());
        kvs_mkv::writer::write_simple_block(&mut out, 1, (frame * 33) as i16, frame == 0, &payload);
    }
    out
}

#[test]
fn an_hour_offline_with_a_smaller_store_keeps_the_newest_and_names_what_it_dropped() {
    use gst::prelude::*;
    const CLUSTERS: u64 = 1800; // an hour of 2-s fragments at 2 Mbit/s: 900 MB
    let closed = closed_address();
    let listen = closed.trim_start_matches("http://").to_owned();
    let dir = temp_dir("hour");
    let data_dir = temp_dir("hour-emulator");
    let emu = Emu::external(&closed);
    let started_at = std::time::SystemTime::now() - Duration::from_secs(3600 + 60);
    let start_s = started_at
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let description = format!(
        "appsrc name=feed is-live=true format=time block=true max-bytes=1000000 caps=video/x-matroska ! {} request-timeout=1000 \
         buffer-dir={} buffer-max-size=64 file-start-time={start_s} stop-stream-timeout=300",
        sink_props(&emu, "hour"),
        dir.display()
    );
    let (emulator_tx, emulator_rx) = std::sync::mpsc::channel();
    let run = run_pipeline_with(&description, Duration::from_secs(400), |pipeline| {
        let feed = pipeline
            .by_name("feed")
            .unwrap()
            .downcast::<gst_app::AppSrc>()
            .unwrap();
        std::thread::spawn(move || {
            let push = |data: Vec<u8>, pts: u64| {
                let mut buffer = gst::Buffer::from_mut_slice(data);
                buffer
                    .get_mut()
                    .unwrap()
                    .set_pts(gst::ClockTime::from_mseconds(pts));
                let _ = feed.push_buffer(buffer);
            };
            push(kvs_mkv::writer::h264_stream_header(), 0);
            for index in 0..CLUSTERS {
                push(synthetic_cluster(index), index * 2000);
            }
            // The service comes back once the hour is recorded.
            emulator_tx
                .send(crate::chaos::campaign::spawn_emulator(
                    &plugin_dir().join("kvs-emulator"),
                    &data_dir,
                    &listen,
                ))
                .unwrap();
            let _ = feed.end_of_stream();
        });
    });
    let (mut emulator, _) = emulator_rx.recv().unwrap();
    assert_eq!(run.error, None, "{:?}", run.warnings.first());
    // What was dropped, oldest first, each named; what is stored is all the rest, byte for byte.
    let dropped: Vec<(u64, u64)> = run
        .messages_named("kvssink-fragment-dropped")
        .iter()
        .map(|m| {
            (
                m.get::<u64>("fragment-timecode").unwrap(),
                m.get::<u64>("bytes").unwrap(),
            )
        })
        .collect();
    let start_ms = start_s * 1000;
    let expected_dropped: Vec<u64> = (0..dropped.len() as u64)
        .map(|i| start_ms + i * 2000)
        .collect();
    assert_eq!(
        dropped.iter().map(|(t, _)| *t).collect::<Vec<_>>(),
        expected_dropped,
        "the oldest go, in order"
    );
    assert!(
        dropped.len() > 1000 && dropped.len() < 1750,
        "{} dropped; {:?} {:?}",
        dropped.len(),
        run.stats,
        run.warnings.first()
    );
    let warnings = run
        .warnings
        .iter()
        .filter(|w| w.contains(" dropped | "))
        .count();
    assert_eq!(warnings, dropped.len());
    let stored = timed_frames(&emu.read_back("hour"));
    let kept = CLUSTERS - dropped.len() as u64;
    assert_eq!(
        stored.len() as u64,
        kept * 60,
        "every frame not dropped is stored"
    );
    for (i, (time, _, payload)) in stored.iter().enumerate() {
        let (cluster, frame) = (dropped.len() as u64 + i as u64 / 60, i as u64 % 60);
        assert_eq!(*time as u64, start_ms + cluster * 2000 + frame * 33);
        assert_eq!(
            &payload[..16],
            &[cluster.to_be_bytes(), frame.to_be_bytes()].concat()[..]
        );
    }
    assert!(fragment_files(&dir).is_empty());
    // The backlog was told: while offline (waiting), then during the catch-up, then gone.
    let backlog = run.messages_named("kvssink-backlog");
    assert!(
        backlog.iter().any(|m| m.get::<bool>("waiting").unwrap()),
        "a backlog waiting for the service"
    );
    let last = backlog.last().expect("backlog messages");
    assert_eq!(
        (
            last.get::<u64>("fragments").unwrap(),
            last.get::<u64>("bytes").unwrap()
        ),
        (0, 0)
    );
    let catching_up: Vec<u64> = backlog
        .iter()
        .filter(|m| !m.get::<bool>("waiting").unwrap() && m.get::<u64>("fragments").unwrap() > 0)
        .map(|m| m.get::<u64>("fragments").unwrap())
        .collect();
    assert!(
        catching_up.windows(2).all(|w| w[1] <= w[0]),
        "the backlog only shrinks: {catching_up:?}"
    );
    let progress: Vec<&(gst::ProgressType, String, String, i32)> = run
        .progress
        .iter()
        .filter(|(_, code, _, _)| code == "kvssink-backlog")
        .collect();
    assert_eq!(
        progress.first().map(|p| p.0),
        Some(gst::ProgressType::Start)
    );
    assert_eq!(
        progress.last().map(|p| (p.0, p.2.as_str())),
        Some((gst::ProgressType::Complete, "Backlog uploaded"))
    );
    // ACKs were read during the catch-up, not at its end: what was persisted left the store as it went.
    let catch_up_end = run
        .messages
        .iter()
        .rposition(|m| m.name() == "kvssink-backlog" && m.get::<u64>("fragments").unwrap() > 0)
        .unwrap();
    let persisted_during = run.messages[..catch_up_end]
        .iter()
        .filter(|m| {
            m.name() == "kvssink-ack" && m.get::<String>("event-type").unwrap() == "PERSISTED"
        })
        .count();
    assert!(
        persisted_during >= 100,
        "{persisted_during} PERSISTED read while the backlog was going up"
    );
    // The catch-up went at the service's pace: never more than five fragments in a second.
    let mut arrivals: Vec<u64> = emu
        .admin_fragments("hour")
        .iter()
        .map(|f| f["server_timestamp_ms"].as_u64().unwrap())
        .collect();
    arrivals.sort();
    assert!(
        arrivals.windows(6).all(|w| w[5] - w[0] >= 990),
        "more than 5 fragments in a second"
    );
    let rate =
        (arrivals.len() - 1) as f64 * 1000.0 / (arrivals[arrivals.len() - 1] - arrivals[0]) as f64;
    emulator.kill().unwrap();
    emulator.wait().unwrap();
    println!(
        "catch-up: {} fragments at {rate:.2} fragments/s (the service's limit: 5), {persisted_during} PERSISTED \
         read while it went on",
        arrivals.len()
    );
    println!(
        "an hour offline (1800 fragments, 900 MB) into a 64-MiB store: {} oldest dropped with a warning each \
         ({} bytes each), the newest {kept} stored, {} frames compared; {:.1} s",
        dropped.len(),
        dropped[0].1,
        stored.len(),
        run.elapsed.as_secs_f64()
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
