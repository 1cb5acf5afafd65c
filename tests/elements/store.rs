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
        let Some(rest) = line.split("stored frame ").nth(1) else { continue };
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
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

#[test]
fn a_producer_killed_ten_times_loses_no_frame_it_stored() {
    let seed = std::env::var("KVS_STORE_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(20261201);
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
        let endpoint = if mode == "offline" { closed.clone() } else { emu.url.clone() };
        let log = dir.with_extension(format!("{run}.log"));
        let mut child = spawn_producer(&endpoint, "killed", &dir, &log, 0xff000000 | (run * 0x1f3d5b));
        let after = Duration::from_millis(2500 + rng.below(3000));
        std::thread::sleep(after);
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(emu.call("DELETE", "/_emulator/faults", "").0, 200);
        let stored = stored_frames(&log);
        assert!(!stored.is_empty(), "run {run} ({mode}) stored nothing in {after:?}");
        modes.push(format!("{mode} {}ms {} frames", after.as_millis(), stored.values().sum::<usize>()));
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
        assert!(previous.is_none_or(|p| p == payload), "two different frames at {time}");
    }
    let read = read_range(&emu, "killed", "");
    assert_eq!(read.error, None);
    let read_frames = timed_frames(&read.input);
    let read_keys: Vec<(i64, u64)> = read_frames.iter().map(|(t, track, _)| (*t, *track)).collect();
    let distinct_keys: Vec<(i64, u64)> = distinct.keys().copied().collect();
    assert_eq!(read_keys.len(), distinct_keys.len(), "frames read by kvssrc against distinct frames stored");
    assert!(read_keys == distinct_keys, "kvssrc reads each stored frame once, in time order, at its time");
    assert!(read_frames.iter().all(|(t, track, payload)| distinct[&(*t, *track)] == *payload));
    // The last producer's own frames end the stream, as matroskamux made them.
    let input = input_frames(&run.input);
    let tail: Vec<(u64, Vec<u8>)> =
        read_frames[read_frames.len() - input.len()..].iter().map(|(_, t, p)| (*t, p.clone())).collect();
    assert!(tail == input, "the last producer's frames follow the recovered ones");
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
    // A port nothing listens on yet: the emulator process starts on it three seconds in.
    let closed = closed_address();
    let listen = closed.trim_start_matches("http://").to_owned();
    let data_dir = temp_dir("offline-emulator");
    let dir = temp_dir("offline");
    let starter = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(3));
        crate::chaos::campaign::spawn_emulator(&plugin_dir().join("kvs-emulator"), &data_dir, &listen)
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
        run.warnings.iter().any(|w| w.starts_with("kvssink: the service cannot be reached (")),
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
    println!("started offline: {} frames recorded, then all stored once the service came up", input.len());
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
    let run = upload("dirs", 30, &dir);
    let error = run.error.expect("a second sink on the directory fails");
    assert!(
        error.starts_with(&format!(
            "kvssink: buffer-dir {} is in use by another kvssink (process {}): each sink needs a directory of its own",
            dir.display(),
            std::process::id()
        )),
        "{error}"
    );
    pipeline.set_state(gst::State::Null).unwrap();

    // A fragment of another stream: an error naming the file; nothing is uploaded to the wrong stream.
    let files = fragment_files(&dir);
    assert!(!files.is_empty(), "the holder left its unpersisted fragments? {files:?}");
    let run = upload("other", 30, &dir);
    let error = run.error.expect("another stream's directory is refused");
    assert!(
        error.starts_with(&format!(
            "kvssink: {} holds a fragment of stream \"dirs\", not \"other\": buffer-dir belongs to another stream",
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
    let warning = run.warnings.iter().find(|w| w.contains("is not a readable fragment")).expect("a warning");
    assert!(
        warning.starts_with(&format!("kvssink: {} is not a readable fragment (", damaged.display())),
        "{warning}"
    );
    assert!(damaged.with_extension("kvsfrag.corrupt").exists());
    assert!(fragment_files(&dir).is_empty());

    // A path that cannot be a directory.
    let not_a_dir = damaged.with_extension("kvsfrag.corrupt").join("store");
    let run = upload("dirs", 30, &not_a_dir);
    let error = run.error.expect("an error");
    assert!(
        error.starts_with(&format!("kvssink: cannot create the directory {}: ", not_a_dir.display())),
        "{error}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
