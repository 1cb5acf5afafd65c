// SPDX-License-Identifier: MPL-2.0

//! Upload windows (`upload-mode=triggered`, `paused`: an alarm's pre-roll and post-roll). The module sorts
//! first so that its 60-s live test starts early, beside the others.
//!
//! Live H.264 through matroskamux into kvssink and the emulator; each test compares, frame for frame, what the
//! emulator stored with the frames matroskamux made, cut where the windows say. Triggers come from the
//! `trigger` action signal, a `kvs-trigger` event sent from upstream through matroskamux or to kvssink, the
//! `trigger` property (also from `gst-launch-1.0`), and `upload-mode` and `stream-name` changed while PLAYING.

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gst::prelude::*;

use crate::common::*;

/// Calls `at(index, running time, pad)` for each frame leaving h264parse (before matroskamux).
fn on_frames(pipeline: &gst::Pipeline, at: impl Fn(u64, u64, &gst::Pad) + Send + Sync + 'static) {
    let count = AtomicU64::new(0);
    let pad = pipeline
        .by_name("parse")
        .unwrap()
        .static_pad("src")
        .unwrap();
    pad.add_probe(gst::PadProbeType::BUFFER, move |pad, info| {
        let Some(buffer) = info.buffer() else {
            return gst::PadProbeReturn::Ok;
        };
        let index = count.fetch_add(1, Ordering::SeqCst);
        let segment = pad.sticky_event::<gst::event::Segment>(0);
        let running = segment
            .and_then(|s| {
                s.segment()
                    .downcast_ref::<gst::ClockTime>()?
                    .to_running_time(buffer.pts()?)
            })
            .map_or(0, |t| t.nseconds());
        at(index, running, pad);
        gst::PadProbeReturn::Ok
    });
}

/// The payloads of the video frames the emulator stored for `stream`, in order, each once.
fn stored(emu: &Emu, stream: &str) -> Vec<Vec<u8>> {
    unique_frames(&emu.read_back(stream))
        .into_iter()
        .map(|(_, payload)| payload)
        .collect()
}

fn input(run: &Run) -> Vec<Vec<u8>> {
    input_frames(&run.input)
        .into_iter()
        .map(|(_, payload)| payload)
        .collect()
}

/// Frames `ranges` of the input, in order.
fn cut(input: &[Vec<u8>], ranges: &[std::ops::Range<usize>]) -> Vec<Vec<u8>> {
    ranges
        .iter()
        .flat_map(|r| input[r.clone()].iter().cloned())
        .collect()
}

/// Asserts that `stored` is exactly `expected` (by frame index in the input, for a readable failure).
fn assert_frames(input: &[Vec<u8>], stored: &[Vec<u8>], expected: &[std::ops::Range<usize>]) {
    let index = |frame: &Vec<u8>| input.iter().position(|f| f == frame);
    let want = cut(input, expected);
    if stored != want.as_slice() {
        let got: Vec<Option<usize>> = stored.iter().map(index).collect();
        let first = got.first().copied().flatten();
        let last = got.last().copied().flatten();
        panic!(
            "stored {} frames (input frames {first:?}..={last:?}), expected {} ({expected:?}): {got:?}",
            stored.len(),
            want.len()
        );
    }
}

/// (frame, pre-roll-fragments, pre-roll-bytes, queued-fragments) at one time.
type Sample = (u64, u64, u64, u64);

/// Reads the `kvssink-stats` of the sink every 250 ms while `frames` counts frames; stops when told.
fn sample_stats(
    pipeline: &gst::Pipeline,
    frames: Arc<AtomicU64>,
) -> (Arc<Mutex<Vec<Sample>>>, Arc<std::sync::atomic::AtomicBool>) {
    let samples = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sink = pipeline.by_name("sink").unwrap();
    let (out, done) = (samples.clone(), stop.clone());
    std::thread::spawn(move || {
        while !done.load(Ordering::SeqCst) {
            if let Some(stats) = sink.property::<Option<gst::Structure>>("stats") {
                let get = |f: &str| stats.get::<u64>(f).unwrap_or(0);
                out.lock().unwrap().push((
                    frames.load(Ordering::SeqCst),
                    get("pre-roll-fragments"),
                    get("pre-roll-bytes"),
                    get("queued-fragments"),
                ));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    });
    (samples, stop)
}

/// The tag names each stored fragment of `stream` carries (its own, not the service's), in order.
fn fragment_tags(emu: &Emu, stream: &str) -> Vec<Vec<String>> {
    let mut per_fragment: Vec<Vec<String>> = Vec::new();
    for event in kvs_mkv::read_all(&emu.read_back(stream)).unwrap() {
        match event {
            kvs_mkv::Event::EbmlHeader(_) => per_fragment.push(Vec::new()),
            kvs_mkv::Event::Element(e) if e.id == kvs_mkv::ebml::id::TAGS => {
                for tag in kvs_mkv::tags::parse_tags(&e.data()).unwrap() {
                    let service = tag.name.starts_with("AWS_KINESISVIDEO_")
                        && !tag.name.starts_with("AWS_KINESISVIDEO_NOTIFICATION")
                        && !tag.name.starts_with("AWS_KINESISVIDEO_IMAGE");
                    if !service && let Some(last) = per_fragment.last_mut() {
                        last.push(tag.name);
                    }
                }
            }
            _ => {}
        }
    }
    per_fragment
}

#[test]
fn a_live_stream_with_two_triggers_stores_exactly_their_windows_and_holds_only_the_pre_roll_between()
 {
    let emu = Emu::start();
    emu.create_stream("trig", 1);
    let props = "upload-mode=triggered pre-roll=5 post-roll=3 event-tags=notification+image-generation image-prefix=cam1/";
    let frames = Arc::new(AtomicU64::new(0));
    let samples = Arc::new(Mutex::new(None));
    let run = run_pipeline_with(
        &live_upload(&emu, "trig", 1800, props),
        Duration::from_secs(120),
        |pipeline| {
            let sink = pipeline.by_name("sink").unwrap();
            let counter = frames.clone();
            on_frames(pipeline, move |index, running, pad| {
                counter.store(index, Ordering::SeqCst);
                if index == 600 {
                    // The application: a trigger at this frame's time, for 4 s.
                    sink.emit_by_name::<()>("trigger", &[&running, &4_000_000_000u64]);
                }
                if index == 1200 {
                    // An upstream element: a kvs-trigger event at this frame's time, open-ended, through matroskamux.
                    let s = gst::Structure::builder("kvs-trigger")
                        .field("running-time", running)
                        .build();
                    pad.push_event(gst::event::CustomDownstream::new(s));
                }
            });
            *samples.lock().unwrap() = Some(sample_stats(pipeline, frames.clone()));
        },
    );
    let (samples, stop) = samples.lock().unwrap().take().unwrap();
    stop.store(true, Ordering::SeqCst);
    assert_eq!(run.error, None);
    let input = input(&run);
    assert_eq!(input.len(), 1800);
    // Window 1: trigger at frame 600 (20 s), pre-roll 5 s: from the key frame at frame 450 (15 s) to 4 s + 3 s
    // after the trigger (frame 810, 27 s, not included). Window 2: from the key frame 5 s before frame 1200 to
    // the end.
    assert_frames(&input, &stored(&emu, "trig"), &[450..810, 1050..1800]);
    let started = run.messages_named("kvssink-window-started");
    let ended = run.messages_named("kvssink-window-ended");
    assert_eq!(started.len(), 2, "{:?}", run.messages);
    assert_eq!(ended.len(), 2, "{:?}", run.messages);
    let field = |s: &gst::Structure, f: &str| s.get::<u64>(f).unwrap();
    assert_eq!(started[0].get::<String>("trigger").unwrap(), "signal");
    assert_eq!(started[1].get::<String>("trigger").unwrap(), "event");
    for s in &started {
        assert_eq!(
            s.get::<gst::ClockTime>("pre-roll").unwrap(),
            gst::ClockTime::from_seconds(5)
        );
        assert_eq!(field(s, "left-out-fragments"), 0);
    }
    assert_eq!(
        (field(ended[0], "frames"), field(ended[1], "frames")),
        (360, 750)
    );
    assert_eq!(
        ended[0]
            .get::<gst::ClockTime>("duration")
            .unwrap()
            .mseconds(),
        11_966
    );
    // A connection per window: the first was closed once its fragments were persisted.
    let connected = run
        .messages_named("kvssink-connection")
        .iter()
        .filter(|s| s.get::<String>("state").unwrap() == "connected")
        .count();
    assert_eq!(connected, 2);
    // Idle, the sink held at most the pre-roll (5 s and the fragment before it) and queued nothing.
    let samples = samples.lock().unwrap().clone();
    let idle: Vec<_> = samples
        .iter()
        .filter(|s| (300..440).contains(&s.0) || (960..1040).contains(&s.0))
        .collect();
    assert!(idle.len() >= 10, "{samples:?}");
    // The most any 7 s of the input (the pre-roll and the fragment it starts in) takes, with the Matroska
    // framing.
    let max_bytes = input
        .windows(210)
        .map(|w| w.iter().map(|f| f.len() as u64 + 64).sum::<u64>())
        .max()
        .unwrap();
    for &&(frame, fragments, bytes, queued) in &idle {
        assert!(fragments <= 7, "frame {frame}: {fragments} fragments held");
        assert!(
            bytes <= max_bytes,
            "frame {frame}: {bytes} bytes held (bound {max_bytes})"
        );
        assert_eq!(queued, 0, "frame {frame}: queued fragments while idle");
    }
    // The event tags are on each window's first fragment. The service keeps the tags sent right after a
    // connection's header with that connection's later fragments too (its recorded GetMedia output; the
    // emulator does the same), and a window is a connection: every stored fragment shows them, none other.
    let tags = fragment_tags(&emu, "trig");
    let event = [
        "AWS_KINESISVIDEO_NOTIFICATION",
        "AWS_KINESISVIDEO_IMAGE_GENERATION",
        "AWS_KINESISVIDEO_IMAGE_PREFIX",
    ];
    assert_eq!(tags.len(), 12 + 25, "{tags:?}");
    for (i, names) in tags.iter().enumerate() {
        assert!(
            names.iter().all(|n| event.contains(&n.as_str())),
            "fragment {i}: {names:?}"
        );
        assert!(
            event.iter().all(|e| names.iter().any(|n| n == e)),
            "fragment {i}: {names:?}"
        );
    }
}

#[test]
fn pause_resume_and_a_stream_name_change_while_playing_give_each_stream_exactly_its_frames() {
    let emu = Emu::start();
    emu.create_stream("first", 1);
    // The second stream does not exist yet: kvssink creates it. The running time of each frame, and of the
    // clock when upload-mode changed (what kvssink takes as "now"), are noted.
    let times = Arc::new(Mutex::new((Vec::new(), Vec::new())));
    let noted = times.clone();
    let run = run_pipeline_with(
        &live_upload(&emu, "first", 300, ""),
        Duration::from_secs(60),
        |pipeline| {
            let sink = pipeline.by_name("sink").unwrap();
            on_frames(pipeline, move |index, running, _| {
                let now = || {
                    let (clock, base) = (sink.clock().unwrap(), sink.base_time().unwrap());
                    (clock.time() - base).nseconds()
                };
                let mut noted = noted.lock().unwrap();
                noted.0.push(running);
                match index {
                    90 => {
                        noted.1.push(now());
                        sink.set_property_from_str("upload-mode", "paused");
                    }
                    150 => {
                        noted.1.push(now());
                        sink.set_property_from_str("upload-mode", "continuous");
                    }
                    210 => sink.set_property("stream-name", "second"),
                    _ => {}
                }
            });
        },
    );
    assert_eq!(run.error, None);
    let input = input(&run);
    assert_eq!(input.len(), 300);
    let (running, changes) = times.lock().unwrap().clone();
    // Paused at the clock's time when frame 90 left h264parse (a frame or more later, on a busy machine): the
    // frames before it went. Resumed likewise at frame 150: from the key frame (one each 30 frames) at or before
    // that time. The new name from the next key frame kvssink received after it was set (210, or 180 when the
    // sink lags a second behind h264parse).
    let paused_at = running.iter().position(|&r| r >= changes[0]).unwrap();
    let resumed_at = running.iter().rposition(|&r| r <= changes[1]).unwrap() / 30 * 30;
    let second = stored(&emu, "second");
    let switched_at = input.iter().position(|f| *f == second[0]).unwrap();
    assert!(
        switched_at == 210 || switched_at == 180,
        "switched at frame {switched_at}"
    );
    assert_frames(
        &input,
        &stored(&emu, "first"),
        &[0..paused_at, resumed_at..switched_at],
    );
    assert_frames(&input, &second, std::slice::from_ref(&(switched_at..300)));
    assert!(
        run.warnings.is_empty() || run.warnings.iter().all(|w| !w.contains("kvssink")),
        "{:?}",
        run.warnings
    );
    let resumed = run.messages_named("kvssink-window-started");
    assert_eq!(resumed.len(), 1);
    assert_eq!(resumed[0].get::<String>("trigger").unwrap(), "resume");
    // A connection before the pause, one after it (the first closed while paused), one to the second stream.
    let connected = run
        .messages_named("kvssink-connection")
        .iter()
        .filter(|s| s.get::<String>("state").unwrap() == "connected")
        .count();
    assert_eq!(connected, 3);
}

#[test]
fn a_kvs_trigger_event_sent_to_kvssink_with_a_wall_clock_time_opens_the_window_then() {
    let emu = Emu::start();
    emu.create_stream("trig-unix", 1);
    // At frame 90 (3 s), the application sends kvssink a trigger for what happened 1 s before, for 0.5 s, as
    // a Unix time; the clock's running time and the wall clock are read together, as kvssink reads them.
    let noted = Arc::new(Mutex::new((Vec::new(), 0u64)));
    let times = noted.clone();
    let run = run_pipeline_with(
        &live_upload(&emu, "trig-unix", 180, "upload-mode=triggered"),
        Duration::from_secs(60),
        |pipeline| {
            let sink = pipeline.by_name("sink").unwrap();
            on_frames(pipeline, move |index, running, _| {
                let mut times = times.lock().unwrap();
                times.0.push(running);
                if index == 90 {
                    let (clock, base) = (sink.clock().unwrap(), sink.base_time().unwrap());
                    let now_running = (clock.time() - base).nseconds();
                    let now_unix = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap()
                        .as_nanos() as u64;
                    times.1 = now_running - 1_000_000_000;
                    let s = gst::Structure::builder("kvs-trigger")
                        .field("unix-time", now_unix - 1_000_000_000)
                        .field("duration", 500_000_000u64)
                        .build();
                    assert!(sink.send_event(gst::event::CustomDownstream::new(s)));
                }
            });
        },
    );
    assert_eq!(run.error, None);
    let input = input(&run);
    let (running, trigger) = noted.lock().unwrap().clone();
    let first = running.iter().rposition(|&r| r <= trigger).unwrap() / 30 * 30;
    let end = running
        .iter()
        .position(|&r| r >= trigger + 500_000_000)
        .unwrap();
    assert_frames(
        &input,
        &stored(&emu, "trig-unix"),
        std::slice::from_ref(&(first..end)),
    );
    let started = run.messages_named("kvssink-window-started");
    assert_eq!(started[0].get::<String>("trigger").unwrap(), "event");
    let at = started[0]
        .get::<gst::ClockTime>("trigger-running-time")
        .unwrap()
        .nseconds();
    assert!(
        at.abs_diff(trigger) < 5_000_000,
        "the trigger at {at} ns, asked for {trigger}"
    );
}

#[test]
fn the_trigger_property_from_gst_launch_uploads_while_it_is_true() {
    let emu = Emu::start();
    for (stream, trigger) in [("prop-on", true), ("prop-off", false)] {
        emu.create_stream(stream, 1);
        let description = format!(
            "videotestsrc is-live=true num-buffers=60 ! video/x-raw,format=I420,width=320,height=240,framerate=30/1 \
             ! x264enc key-int-max=30 bframes=0 tune=zerolatency speed-preset=ultrafast ! h264parse ! matroskamux \
             ! {} upload-mode=triggered trigger={trigger}",
            sink_props(&emu, stream)
        );
        let output = Command::new("gst-launch-1.0")
            .arg("-q")
            .args(description.split_whitespace())
            .env("GST_PLUGIN_PATH", plugin_dir())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .expect("gst-launch-1.0");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let frames = stored(&emu, stream).len();
        assert_eq!(frames, if trigger { 60 } else { 0 }, "trigger={trigger}");
    }
}

#[test]
fn request_pads_take_a_kvs_trigger_event_and_metadata_with_a_kvs_event_tag() {
    let emu = Emu::start();
    emu.create_stream("trig-pad", 1);
    // H.264 straight to kvssink's video_0 pad, as with the C++ kvssink; what h264parse hands over is recorded.
    let description = format!(
        "videotestsrc num-buffers=300 pattern=ball ! video/x-raw,format=I420,width=320,height=240,framerate=30/1 \
         ! x264enc key-int-max=30 bframes=0 tune=zerolatency speed-preset=ultrafast ! h264parse name=parse \
         ! {} sync=false upload-mode=triggered pre-roll=2",
        sink_props(&emu, "trig-pad")
    );
    let sent = Arc::new(Mutex::new(Vec::new()));
    let recorded = sent.clone();
    let pad_sent = Arc::new(Mutex::new(Vec::<Vec<u8>>::new()));
    let frames = pad_sent.clone();
    let run = run_pipeline_with(&description, Duration::from_secs(60), |pipeline| {
        on_frames(pipeline, move |index, running, pad| {
            if index == 100 {
                let s = gst::Structure::builder("kvs-add-metadata")
                    .field("name", "AWS_KINESISVIDEO_IMAGE_GENERATION")
                    .field("value", "")
                    .field("persist", false)
                    .build();
                recorded
                    .lock()
                    .unwrap()
                    .push(pad.push_event(gst::event::CustomDownstream::new(s)));
            }
            if index == 150 {
                let s = gst::Structure::builder("kvs-trigger")
                    .field("running-time", running)
                    .field("duration", 1_000_000_000u64)
                    .build();
                recorded
                    .lock()
                    .unwrap()
                    .push(pad.push_event(gst::event::CustomDownstream::new(s)));
            }
        });
        let pad = pipeline
            .by_name("parse")
            .unwrap()
            .static_pad("src")
            .unwrap();
        pad.add_probe(gst::PadProbeType::BUFFER, move |_, info| {
            if let Some(buffer) = info.buffer() {
                frames
                    .lock()
                    .unwrap()
                    .push(buffer.map_readable().unwrap().to_vec());
            }
            gst::PadProbeReturn::Ok
        });
    });
    assert_eq!(run.error, None);
    assert_eq!(*sent.lock().unwrap(), [true, true], "both events taken");
    let input = pad_sent.lock().unwrap().clone();
    assert_eq!(input.len(), 300);
    // Trigger at 5 s for 1 s, pre-roll 2 s: from the key frame at 3 s to the last frame before 6 s.
    assert_frames(
        &input,
        &stored(&emu, "trig-pad"),
        std::slice::from_ref(&(90..180)),
    );
    // The tag went with the next fragment (4 s), and only that one.
    let tags = fragment_tags(&emu, "trig-pad");
    assert_eq!(
        tags,
        [
            vec![],
            vec!["AWS_KINESISVIDEO_IMAGE_GENERATION".to_owned()],
            vec![]
        ]
    );
    // kvssrc hands each fragment's own tags to the application (those GetMedia sends after the frames in
    // kvssrc-fragment-tags).
    let read = crate::kvssrc::read_range(&emu, "trig-pad", "");
    assert_eq!(read.error, None);
    let strings = |m: &gst::Structure| -> Vec<String> {
        m.get::<gst::Array>("tags")
            .unwrap()
            .iter()
            .map(|v| v.get::<String>().unwrap())
            .collect()
    };
    let mut per_fragment: Vec<(String, Vec<String>)> = Vec::new();
    for message in &read.messages {
        let number = message.get::<String>("fragment-number").unwrap_or_default();
        match message.name().as_str() {
            "kvssrc-fragment" => per_fragment.push((number, strings(message))),
            "kvssrc-fragment-tags" => {
                let last = per_fragment.last_mut().unwrap();
                assert_eq!(last.0, number, "tags of the fragment just read");
                last.1.extend(strings(message));
            }
            _ => {}
        }
    }
    let tags: Vec<Vec<String>> = per_fragment.into_iter().map(|(_, tags)| tags).collect();
    assert_eq!(
        tags,
        [
            vec![],
            vec!["AWS_KINESISVIDEO_IMAGE_GENERATION=".to_owned()],
            vec![]
        ]
    );
}

#[test]
fn a_pre_roll_larger_than_storage_size_says_what_it_left_out() {
    let emu = Emu::start();
    emu.create_stream("trig-small", 1);
    // About 750 kB a second against a 1-MiB limit: the 10-s pre-roll cannot be held.
    let description = format!(
        "videotestsrc num-buffers=450 pattern=snow ! video/x-raw,format=I420,width=640,height=480,framerate=30/1 \
         ! x264enc bitrate=6000 key-int-max=30 bframes=0 tune=zerolatency speed-preset=ultrafast ! h264parse name=parse \
         ! matroskamux ! tee name=t ! queue ! {} sync=false upload-mode=triggered pre-roll=10 storage-size=1 {CAPTURE}",
        sink_props(&emu, "trig-small")
    );
    let run = run_pipeline_with(&description, Duration::from_secs(90), |pipeline| {
        let sink = pipeline.by_name("sink").unwrap();
        on_frames(pipeline, move |index, running, _| {
            if index == 420 {
                sink.emit_by_name::<()>("trigger", &[&running, &500_000_000u64]);
            }
        });
    });
    assert_eq!(run.error, None);
    let input = input(&run);
    let stored = stored(&emu, "trig-small");
    // What was held went, up to 14.5 s: the frames from the oldest fragment kept to frame 435 (not included).
    let first = input
        .iter()
        .position(|f| *f == stored[0])
        .expect("a stored frame from the input");
    assert_eq!(first % 30, 0, "the window starts at a key frame");
    assert!(
        first >= 300,
        "the 1-MiB limit held at most a few seconds, not {first} frames back"
    );
    assert_frames(&input, &stored, std::slice::from_ref(&(first..435)));
    let started = run.messages_named("kvssink-window-started");
    assert_eq!(started.len(), 1);
    let get = |f: &str| started[0].get::<u64>(f).unwrap();
    let fragments_left_out = (first as u64 - 120) / 30;
    assert_eq!(
        get("left-out-fragments"),
        fragments_left_out,
        "{:?}",
        started[0]
    );
    assert_eq!(get("left-out-frames"), fragments_left_out * 30);
    assert!(get("left-out-bytes") > 1_000_000, "{:?}", started[0]);
    let missing = started[0]
        .get::<gst::ClockTime>("missing-pre-roll")
        .unwrap();
    assert_eq!(missing.mseconds(), (first as u64 - 120) * 1000 / 30);
}

/// The files in a fragment store with `extension`.
fn files(dir: &std::path::Path, extension: &str) -> usize {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .filter(|e| e.path().extension().is_some_and(|x| x == extension))
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn with_buffer_dir_the_pre_roll_waits_on_disk_and_one_never_triggered_is_not_uploaded_after_a_kill()
{
    let emu = Emu::start();
    emu.create_stream("trig-disk", 1);
    let dir = std::env::temp_dir().join(format!("kvssink-trig-disk-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let props = format!(
        "upload-mode=triggered pre-roll=3 buffer-dir={}",
        dir.display()
    );
    let idle = Arc::new(Mutex::new(None));
    let seen = idle.clone();
    let store = dir.clone();
    let run = run_pipeline_with(
        &live_upload(&emu, "trig-disk", 300, &props),
        Duration::from_secs(60),
        |pipeline| {
            let sink = pipeline.by_name("sink").unwrap();
            on_frames(pipeline, move |index, running, _| {
                if index == 150 {
                    *seen.lock().unwrap() =
                        Some((files(&store, "kvshold"), files(&store, "kvsfrag")));
                }
                if index == 180 {
                    sink.emit_by_name::<()>("trigger", &[&running, &1_000_000_000u64]);
                }
            });
        },
    );
    assert_eq!(run.error, None, "{:?}", run.warnings);
    let input = input(&run);
    // Trigger at 6 s for 1 s, pre-roll 3 s: from the key frame at 3 s to the last frame before 7 s.
    assert_frames(
        &input,
        &stored(&emu, "trig-disk"),
        std::slice::from_ref(&(90..210)),
    );
    // While idle the pre-roll was on disk, held (3 s, the fragment before and the one being written), nothing
    // to upload; at the end nothing is left.
    let (held, to_upload) = idle.lock().unwrap().unwrap();
    assert!((4..=5).contains(&held), "{held} held fragment files at 5 s");
    assert_eq!(to_upload, 0);
    assert_eq!((files(&dir, "kvshold"), files(&dir, "kvsfrag")), (0, 0));

    // A producer killed while it holds a pre-roll: the next one does not upload it, and says so.
    let description = format!(
        "videotestsrc is-live=true ! video/x-raw,format=I420,width=320,height=240,framerate=30/1 \
         ! x264enc key-int-max=30 bframes=0 tune=zerolatency speed-preset=ultrafast ! h264parse ! matroskamux \
         ! {} {props}",
        sink_props(&emu, "trig-disk")
    );
    let mut child = Command::new("gst-launch-1.0")
        .arg("-q")
        .args(description.split_whitespace())
        .env("GST_PLUGIN_PATH", plugin_dir())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("gst-launch-1.0");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while files(&dir, "kvshold") < 3 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let held = files(&dir, "kvshold");
    assert!(held >= 3, "the producer held {held} fragments");
    let _ = Command::new("kill")
        .args(["-KILL", &child.id().to_string()])
        .status();
    let _ = child.wait();
    let run = run_pipeline(
        &live_upload(
            &emu,
            "trig-disk",
            30,
            &format!("buffer-dir={}", dir.display()),
        ),
        Duration::from_secs(60),
    );
    assert_eq!(run.error, None, "{:?}", run.warnings);
    let recovered = run.messages_named("kvssink-store-recovered");
    assert_eq!(recovered.len(), 1);
    assert!(
        recovered[0].get::<u64>("pre-roll-discarded").unwrap() >= 3,
        "{:?}",
        recovered[0]
    );
    assert_eq!(
        recovered[0].get::<u64>("fragments").unwrap(),
        0,
        "{:?}",
        recovered[0]
    );
    // The stream holds the first window and the 30 frames of the last run, nothing of the killed one.
    assert_eq!(stored(&emu, "trig-disk").len(), 120 + 30);
    std::fs::remove_dir_all(&dir).unwrap();
}
