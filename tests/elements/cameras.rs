// SPDX-License-Identifier: MPL-2.0

//! IP cameras: gst-rtsp-server, in this process, stands in for a camera; the pipelines are the ones users
//! write (`rtspsrc ! rtph264depay ! h264parse ! kvssink`, with or without `matroskamux`), over TCP and UDP.
//! Every frame the depayloader chain gave kvssink (a probe on the element before it) is compared byte for
//! byte with what the emulator stored, and each stored frame's producer time with the frame's capture time:
//! the camera's (RTCP sender reports, `add-reference-timestamp-meta=true`) within 1 ms, or the host's within
//! 5 ms.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::common::*;
use gst::glib;
use gst::prelude::*;
use gst_rtsp_server::prelude::*;

/// Seconds from 1900 (NTP) to 1970.
const NTP_TO_UNIX_S: u64 = 2_208_988_800;

/// 30 fps H.264, a key frame a second, SPS/PPS with every key frame (as cameras send them).
fn h264_camera(frames: u32) -> String {
    format!(
        "( videotestsrc is-live=true num-buffers={frames} pattern=ball ! capsfilter name=size \
         caps=video/x-raw,format=I420,width=320,height=240,framerate=30/1 \
         ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=30 bframes=0 ! h264parse \
         ! rtph264pay name=pay0 pt=96 config-interval=-1 )"
    )
}

/// A camera: an RTSP server with one mount, `/cam`, on its own GLib main loop.
struct Camera {
    server: gst_rtsp_server::RTSPServer,
    main_loop: glib::MainLoop,
    context: glib::MainContext,
    source: Option<glib::SourceId>,
    thread: Option<std::thread::JoinHandle<()>>,
    port: u16,
}

impl Camera {
    /// Serves `launch` (a gst-rtsp-server launch line) on `port` (0: any); `configure` sees the factory.
    fn start(
        launch: &str,
        port: u16,
        configure: impl FnOnce(&gst_rtsp_server::RTSPMediaFactory),
    ) -> Camera {
        init();
        let context = glib::MainContext::new();
        let main_loop = glib::MainLoop::new(Some(&context), false);
        let server = gst_rtsp_server::RTSPServer::new();
        server.set_address("127.0.0.1");
        server.set_service(&port.to_string());
        let factory = gst_rtsp_server::RTSPMediaFactory::new();
        factory.set_launch(launch);
        factory.set_shared(true);
        configure(&factory);
        server.mount_points().unwrap().add_factory("/cam", factory);
        let source = server
            .attach(Some(&context))
            .expect("the RTSP server listens");
        let port = server.bound_port() as u16;
        let (thread_loop, thread_context) = (main_loop.clone(), context.clone());
        let thread = std::thread::spawn(move || {
            let _guard = thread_context.acquire().unwrap();
            thread_loop.run();
        });
        Camera {
            server,
            main_loop,
            context,
            source: Some(source),
            thread: Some(thread),
            port,
        }
    }

    fn url(&self) -> String {
        format!("rtsp://127.0.0.1:{}/cam", self.port)
    }

    /// The camera goes away: no more connections, every session closed.
    fn stop(&mut self) {
        if let Some(source) = self
            .source
            .take()
            .and_then(|id| self.context.find_source_by_id(&id))
        {
            source.destroy();
        }
        self.server
            .client_filter(Some(&mut |_, _| gst_rtsp_server::RTSPFilterResult::Remove));
        self.main_loop.quit();
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap();
        }
    }
}

impl Drop for Camera {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Makes the camera's RTCP sender reports carry its own clock, `offset` from the host's: the media's pipeline
/// clock is the system clock moved by `offset` (and to the NTP era), and rtpbin takes its NTP time from it.
fn camera_clock(factory: &gst_rtsp_server::RTSPMediaFactory, offset_s: i64) {
    let clock = glib::Object::builder::<gst::SystemClock>()
        .property("clock-type", gst::ClockType::Realtime)
        .build();
    let internal = clock.internal_time();
    let external = internal.nseconds() as i128
        + (NTP_TO_UNIX_S as i128 + i128::from(offset_s)) * 1_000_000_000;
    clock.set_calibration(
        internal,
        gst::ClockTime::from_nseconds(external as u64),
        1,
        1,
    );
    factory.set_clock(Some(&clock));
    factory.connect_media_configure(|_, media| {
        media.connect_prepared(|media| {
            let Some(pipeline) = media.element().parent().and_downcast::<gst::Bin>() else {
                return;
            };
            for element in pipeline.iterate_recurse().into_iter().flatten() {
                if element.factory().is_some_and(|f| f.name() == "rtpbin") {
                    element.set_property_from_str("ntp-time-source", "clock-time");
                }
            }
        });
    });
}

/// A frame as kvssink received it: payload, the camera's time (reference timestamp meta), the host capture
/// time (running time mapped to the wall clock, as kvssink maps it), the running time.
#[derive(Debug, Clone)]
struct Sent {
    payload: Vec<u8>,
    camera: Option<SystemTime>,
    host: SystemTime,
    /// Running time in ns (negative before the segment's start: rtspsrc's first buffers can be).
    running: i128,
}

/// Records every buffer leaving the element named `name`.
fn probe_sent(pipeline: &gst::Pipeline, name: &str) -> Arc<Mutex<Vec<Sent>>> {
    let sent = Arc::new(Mutex::new(Vec::new()));
    let element = pipeline.by_name(name).unwrap();
    let recorded = sent.clone();
    element
        .static_pad("src")
        .unwrap()
        .add_probe(gst::PadProbeType::BUFFER, move |pad, info| {
            let Some(buffer) = info.buffer() else {
                return gst::PadProbeReturn::Ok;
            };
            let camera = buffer
                .iter_meta::<gst::ReferenceTimestampMeta>()
                .find_map(|meta| {
                    let name = meta.reference().structure(0)?.name().to_string();
                    (name == "timestamp/x-ntp").then(|| {
                        UNIX_EPOCH
                            + Duration::from_nanos(
                                meta.timestamp().nseconds() - NTP_TO_UNIX_S * 1_000_000_000,
                            )
                    })
                });
            let element = pad.parent_element().unwrap();
            let segment = pad.sticky_event::<gst::event::Segment>(0).unwrap();
            let segment = segment
                .segment()
                .downcast_ref::<gst::ClockTime>()
                .unwrap()
                .clone();
            // No unwrap here: a panic in a probe aborts the test binary.
            let running = match buffer
                .pts()
                .and_then(|pts| segment.to_running_time_full(pts))
            {
                Some(gst::Signed::Positive(t)) => i128::from(t.nseconds()),
                Some(gst::Signed::Negative(t)) => -i128::from(t.nseconds()),
                None => i128::MIN,
            };
            let (Some(clock), Some(base)) = (element.clock(), element.base_time()) else {
                return gst::PadProbeReturn::Ok;
            };
            let (now_clock, now) = (clock.time(), SystemTime::now());
            // A buffer without a running time (no PTS: rare, a parser's first output after a restart) counts as
            // captured when it passed here; the arithmetic below would overflow (and a panic aborts the binary).
            let host = match running {
                i128::MIN => now,
                running => {
                    let behind =
                        i128::from(now_clock.nseconds()) - (i128::from(base.nseconds()) + running);
                    if behind >= 0 {
                        now.checked_sub(Duration::from_nanos(
                            behind.min(i128::from(u64::MAX)) as u64
                        ))
                    } else {
                        now.checked_add(Duration::from_nanos(
                            (-behind).min(i128::from(u64::MAX)) as u64
                        ))
                    }
                    .unwrap_or(UNIX_EPOCH)
                }
            };
            let payload = buffer.map_readable().unwrap().to_vec();
            recorded.lock().unwrap().push(Sent {
                payload,
                camera,
                host,
                running,
            });
            gst::PadProbeReturn::Ok
        });
    sent
}

/// A stored frame: its track, producer time (ms since the epoch), its cluster's Timecode (ms), whether its
/// fragment starts 1 or 2 ms after the latest frame before it (of any track: where kvssink moves a fragment
/// whose time went back) and payload.
#[derive(Debug, Clone, PartialEq)]
struct Stored {
    track: u64,
    time_ms: i64,
    cluster_ms: i64,
    moved: bool,
    payload: Vec<u8>,
}

/// Every stored frame of `stream`, in producer-time order of fragments, re-sent fragments left out.
fn stored_frames(emu: &Emu, stream: &str) -> Vec<Stored> {
    use kvs_mkv::ebml::id;
    let data = emu.read_back(stream);
    let mut seen = std::collections::HashSet::new();
    let (mut cluster_time, mut keep) = (0u64, false);
    let (mut latest, mut first, mut moved) = (None::<i64>, false, false);
    let mut out = Vec::new();
    for event in kvs_mkv::read_all(&data).expect("valid Matroska") {
        if let kvs_mkv::Event::ClusterChild(element) = event {
            match element.id {
                id::TIMECODE => {
                    cluster_time = kvs_mkv::ebml::read_uint(&element.data()).unwrap();
                    keep = seen.insert(cluster_time);
                    first = keep;
                }
                id::SIMPLE_BLOCK if keep => {
                    let info = kvs_mkv::block::parse_simple_block(&element.data()).unwrap();
                    let time_ms = cluster_time as i64 + i64::from(info.relative_timecode);
                    if std::mem::take(&mut first) {
                        // 1 ms after it; 2 when the cluster's Timecode, 1 ms before its first frame, had to
                        // go after the previous fragment's too.
                        moved = latest.is_some_and(|latest| (1..=2).contains(&(time_ms - latest)));
                    }
                    latest = latest.max(Some(time_ms));
                    out.push(Stored {
                        track: info.track,
                        time_ms,
                        cluster_ms: cluster_time as i64,
                        moved,
                        payload: element.data()[info.header_len..].to_vec(),
                    });
                }
                _ => {}
            }
        }
    }
    out
}

fn ms(time: SystemTime) -> f64 {
    time.duration_since(UNIX_EPOCH).unwrap().as_nanos() as f64 / 1e6
}

/// Runs `description` (its kvssink named `sink`, the element before it `last`) until EOS; returns the run and
/// what went into kvssink.
fn upload(description: &str) -> (Run, Vec<Sent>) {
    let mut sent = None;
    let run = run_pipeline_with(description, Duration::from_secs(90), |pipeline| {
        sent = Some(probe_sent(pipeline, "last"));
    });
    let sent = sent.unwrap().lock().unwrap().clone();
    (run, sent)
}

/// The frames went in and came out the same, each stored within `tolerance_ms` of `expected` (its time).
fn assert_stored(
    stored: &[Stored],
    sent: &[Sent],
    expected: impl Fn(&Sent) -> f64,
    tolerance_ms: f64,
) {
    assert_eq!(stored.len(), sent.len(), "frames stored / sent");
    let (mut cluster, mut shift) = (None, 0.0);
    for (i, (frame, sent)) in stored.iter().zip(sent).enumerate() {
        assert!(
            frame.payload == sent.payload,
            "frame {i}: the stored bytes differ from the sent ones"
        );
        // A frame without its own reference timestamp is stamped from another's (the latest offset between the
        // source's clock and the running time, which differs a little between the RTP streams): 5 ms.
        let tolerance_ms = if tolerance_ms < 5.0 && sent.camera.is_none() {
            5.0
        } else {
            tolerance_ms
        };
        let mut want = expected(sent);
        // kvssink's rule (fragmenter, TIME_JUMP): a fragment whose first frame would go at or before the latest
        // frame sent (of any track) goes right after it, its frames keeping their spacing. Input meets it when
        // its time steps back at a fragment's start: input-selector handing over to an encoder a frame behind,
        // or a camera's audio stamped later than its video (a loaded machine). This track's frames of such a
        // fragment are checked moved as far as its first one here.
        if cluster != Some(frame.cluster_ms) {
            cluster = Some(frame.cluster_ms);
            let moved_by = frame.time_ms as f64 - want;
            shift = if frame.moved && moved_by > tolerance_ms + 1.0 && moved_by < 1000.0 {
                moved_by
            } else {
                0.0
            };
        }
        want += shift;
        let error = frame.time_ms as f64 - want;
        // Stored times are whole milliseconds: a frame at 12.7 ms is stored at 12.
        assert!(
            (-tolerance_ms..tolerance_ms + 1.0).contains(&error),
            "frame {i}: stored at {} ms, its capture time is {want:.3} ms ({error:+.3} ms; own reference: {}; \
             fragment moved by {shift:.3} ms)",
            frame.time_ms,
            sent.camera.is_some()
        );
    }
}

#[test]
fn an_h264_camera_over_tcp_and_udp_is_stored_frame_for_frame_at_the_host_capture_time() {
    let emu = Emu::start();
    let camera = Camera::start(&h264_camera(150), 0, |_| {});
    for (protocol, mux) in [("tcp", ""), ("udp", ""), ("tcp", "matroskamux ! ")] {
        let stream = format!("cam-{protocol}-{}", mux.len());
        emu.create_stream(&stream, 1);
        let (run, sent) = upload(&format!(
            "rtspsrc location={} protocols={protocol} ! rtph264depay ! h264parse name=last ! {mux}{} sync=false",
            camera.url(),
            sink_props(&emu, &stream)
        ));
        assert_eq!(
            run.error, None,
            "{protocol} {mux}: warnings: {:?}",
            run.warnings
        );
        // A shared camera: a second client joins a running stream, so fewer than 150 frames.
        assert!(sent.len() > 60, "{protocol} {mux}: {} frames", sent.len());
        assert_stored(&stored_frames(&emu, &stream), &sent, |s| ms(s.host), 5.0);
    }
}

#[test]
fn with_rtcp_sender_reports_each_frame_is_stored_at_the_camera_time_an_hour_behind() {
    let emu = Emu::start();
    let camera = Camera::start(&h264_camera(240), 0, |factory| camera_clock(factory, -3600));
    emu.create_stream("camera-clock", 1);
    let (run, sent) = upload(&format!(
        "rtspsrc location={} protocols=tcp add-reference-timestamp-meta=true ! rtph264depay ! h264parse name=last \
         ! {} capture-time=meta sync=false",
        camera.url(),
        sink_props(&emu, "camera-clock")
    ));
    assert_eq!(run.error, None, "warnings: {:?}", run.warnings);
    let first = sent
        .iter()
        .position(|s| s.camera.is_some())
        .expect("a frame with the camera's time");
    assert!(
        first > 0,
        "the first sender report comes after the first frames"
    );
    assert!(
        sent[first..].iter().all(|s| s.camera.is_some()),
        "every frame after the first report has its time"
    );
    // Before the first report, the camera time follows from it by running time.
    let anchor = &sent[first];
    let camera_time = |s: &Sent| match s.camera {
        Some(time) => ms(time),
        None => ms(anchor.camera.unwrap()) - (anchor.running - s.running) as f64 / 1e6,
    };
    let behind = ms(anchor.host) - ms(anchor.camera.unwrap());
    assert!(
        (3_599_000.0..3_601_000.0).contains(&behind),
        "the camera is {behind} ms behind"
    );
    assert_stored(
        &stored_frames(&emu, "camera-clock"),
        &sent,
        camera_time,
        1.0,
    );
    assert!(run.warnings.is_empty(), "{:?}", run.warnings);
}

#[test]
fn in_auto_mode_the_camera_time_takes_over_at_its_first_report_in_a_new_session() {
    let emu = Emu::start();
    let camera = Camera::start(&h264_camera(240), 0, |factory| camera_clock(factory, -3600));
    emu.create_stream("auto-clock", 1);
    let (run, sent) = upload(&format!(
        "rtspsrc location={} protocols=tcp add-reference-timestamp-meta=true ! rtph264depay ! h264parse name=last \
         ! matroskamux ! {} sync=false",
        camera.url(),
        sink_props(&emu, "auto-clock")
    ));
    assert_eq!(run.error, None, "warnings: {:?}", run.warnings);
    let jumps: Vec<&String> = run
        .warnings
        .iter()
        .filter(|w| w.starts_with("capture time went back 3"))
        .collect();
    assert_eq!(jumps.len(), 1, "{:?}", run.warnings);
    assert!(
        jumps[0].contains("starts a new PutMedia session"),
        "{}",
        jumps[0]
    );
    // Read back in producer-time order: the camera's hour-old frames first, then the host-stamped ones.
    let stored = stored_frames(&emu, "auto-clock");
    let now_ms = ms(SystemTime::now()) as i64;
    let (camera_frames, host_frames): (Vec<&Stored>, Vec<&Stored>) =
        stored.iter().partition(|s| now_ms - s.time_ms > 1_800_000);
    assert!(!camera_frames.is_empty() && !host_frames.is_empty());
    assert!(
        camera_frames
            .iter()
            .all(|s| (now_ms - s.time_ms - 3_600_000).abs() < 60_000)
    );
    assert!(
        host_frames
            .iter()
            .all(|s| (now_ms - s.time_ms).abs() < 60_000)
    );
    // Every frame once: the host-stamped ones first as sent, the camera-stamped ones after them.
    let payloads =
        |frames: &[&Stored]| frames.iter().map(|s| s.payload.clone()).collect::<Vec<_>>();
    let sent: Vec<Vec<u8>> = sent.into_iter().map(|s| s.payload).collect();
    assert_eq!(camera_frames.len() + host_frames.len(), sent.len());
    assert!(
        payloads(&host_frames) == sent[..host_frames.len()],
        "the host-stamped frames"
    );
    assert!(
        payloads(&camera_frames) == sent[host_frames.len()..],
        "the camera-stamped frames"
    );
}

/// The camera's resolution goes to 640x480 after it sent `frames` frames (counted, not timed: a loaded machine
/// connects later).
fn resize_after(media: &gst_rtsp_server::RTSPMedia, frames: u32) {
    let size = media
        .element()
        .downcast::<gst::Bin>()
        .unwrap()
        .by_name("size")
        .unwrap();
    resize_after_buffers(&size.static_pad("src").unwrap(), size, frames);
}

/// Sets the capsfilter `size` to 640x480 once `frames` buffers went through `pad`.
fn resize_after_buffers(pad: &gst::Pad, size: gst::Element, frames: u32) {
    let count = std::sync::atomic::AtomicU32::new(0);
    pad.add_probe(gst::PadProbeType::BUFFER, move |_, _| {
        if count.fetch_add(1, std::sync::atomic::Ordering::Relaxed) == frames {
            let size = size.clone();
            // Not from the streaming thread: the caps change renegotiates upstream of it.
            std::thread::spawn(move || {
                let caps = gst::Caps::builder("video/x-raw")
                    .field("format", "I420")
                    .field("width", 640)
                    .field("height", 480)
                    .field("framerate", gst::Fraction::new(30, 1))
                    .build();
                size.set_property("caps", caps);
            });
        }
        gst::PadProbeReturn::Ok
    });
}

#[test]
fn a_resolution_change_mid_stream_starts_a_new_session_and_loses_no_frame() {
    let emu = Emu::start();
    // The camera's resolution changes 4 s in, from its web page: new SPS/PPS in a new codec_data.
    let camera = Camera::start(&h264_camera(240), 0, |factory| {
        factory.connect_media_configure(|_, media| resize_after(media, 120));
    });
    emu.create_stream("resize", 1);
    let (run, sent) = upload(&format!(
        "rtspsrc location={} protocols=tcp ! rtph264depay ! h264parse name=last ! {} sync=false",
        camera.url(),
        sink_props(&emu, "resize")
    ));
    assert_eq!(run.error, None, "warnings: {:?}", run.warnings);
    let changes: Vec<&String> = run
        .warnings
        .iter()
        .filter(|w| w.starts_with("video_0 changed mid-stream"))
        .collect();
    assert_eq!(changes.len(), 1, "{:?}", run.warnings);
    assert!(
        changes[0].contains("height 240 → 480") && changes[0].contains("width 320 → 640"),
        "{}",
        changes[0]
    );
    assert!(changes[0].contains("new codec_data"), "{}", changes[0]);
    assert_stored(&stored_frames(&emu, "resize"), &sent, |s| ms(s.host), 5.0);
    // Two stream headers, the second with the new size, each on its own PutMedia session.
    let fragments = emu.admin_fragments("resize");
    let sizes: std::collections::BTreeSet<String> = kvs_mkv::read_all(&emu.read_back("resize"))
        .unwrap()
        .into_iter()
        .filter_map(|event| match event {
            kvs_mkv::Event::Element(element) if element.id == kvs_mkv::ebml::id::TRACKS => {
                let tracks = kvs_mkv::header::tracks(&element.data()).unwrap();
                Some(format!("{:?}", tracks[0].codec_private))
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        sizes.len(),
        2,
        "two codec private data among {} fragments",
        fragments.len()
    );
}

#[test]
fn matroskamux_refuses_a_resolution_change_which_is_why_request_pads_handle_it() {
    let emu = Emu::start();
    let camera = Camera::start(&h264_camera(240), 0, |factory| {
        factory.connect_media_configure(|_, media| resize_after(media, 90));
    });
    emu.create_stream("resize-mux", 1);
    let (run, _) = upload(&format!(
        "rtspsrc location={} protocols=tcp ! rtph264depay ! h264parse name=last ! matroskamux ! {} sync=false",
        camera.url(),
        sink_props(&emu, "resize-mux")
    ));
    let error = run.error.unwrap();
    assert!(
        error.starts_with("Could not multiplex stream. | "),
        "{error}"
    );
    assert!(
        error.contains("Caps changes are not supported by Matroska"),
        "{error}"
    );
}

#[test]
fn a_camera_that_goes_away_for_20_s_continues_the_stream_with_a_gap_and_every_frame() {
    let emu = Emu::start();
    emu.create_stream("reboot", 1);
    let mut camera = Camera::start(&h264_camera(100_000), 0, |_| {});
    let port = camera.port;
    let dir = std::env::temp_dir().join(format!("kvs-camera-reboot-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let description = format!(
        "rtspsrc location={} protocols=tcp ! rtph264depay ! h264parse name=last ! {} buffer-dir={} sync=false",
        camera.url(),
        sink_props(&emu, "reboot"),
        dir.display()
    );
    // The usual application: the pipeline ends with an error when the camera goes, and is started again; the
    // fragment store keeps what the first one had not had persisted.
    let (tx, rx) = std::sync::mpsc::channel();
    let first_pipeline = std::thread::spawn({
        let description = description.clone();
        move || {
            let mut sent = None;
            let run = run_pipeline_with(&description, Duration::from_secs(120), |pipeline| {
                let probe = probe_sent(pipeline, "last");
                tx.send(probe.clone()).unwrap();
                sent = Some(probe);
            });
            let sent = sent.unwrap().lock().unwrap().clone();
            (run, sent)
        }
    });
    // The camera goes once 60 frames went through (connecting takes longer under load).
    let flowing = rx.recv().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while flowing.lock().unwrap().len() < 60 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    camera.stop();
    let (first, sent_before) = first_pipeline.join().unwrap();
    // rtspsrc ends with EOS when the server closes the session (an error when the connection just drops).
    assert!(
        !first
            .error
            .as_deref()
            .unwrap_or("")
            .starts_with("timed out"),
        "{:?}",
        first.error
    );
    assert!(
        sent_before.len() >= 60,
        "{} frames before: {:?} {:?}",
        sent_before.len(),
        first.error,
        first.warnings
    );
    std::thread::sleep(Duration::from_secs(20));
    let camera = Camera::start(&h264_camera(120), port, |_| {});
    let (second, sent_after) = upload(&description);
    drop(camera);
    assert_eq!(second.error, None, "warnings: {:?}", second.warnings);
    let sent: Vec<Sent> = sent_before.iter().chain(&sent_after).cloned().collect();
    let stored = stored_frames(&emu, "reboot");
    assert_stored(&stored, &sent, |s| ms(s.host), 5.0);
    let gap = stored[sent_before.len()].time_ms - stored[sent_before.len() - 1].time_ms;
    assert!((20_000..30_000).contains(&gap), "a gap of {gap} ms");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The video and audio track numbers of a stored stream (from its first Tracks).
fn track_numbers(emu: &Emu, stream: &str) -> (u64, u64) {
    let data = emu.read_back(stream);
    let tracks = kvs_mkv::read_all(&data)
        .unwrap()
        .into_iter()
        .find_map(|event| match event {
            kvs_mkv::Event::Element(element) if element.id == kvs_mkv::ebml::id::TRACKS => {
                Some(kvs_mkv::header::tracks(&element.data()).unwrap())
            }
            _ => None,
        })
        .expect("a Tracks element");
    let number = |kind| {
        tracks
            .iter()
            .find(|t| t.track_type == kind)
            .map(|t| t.number)
            .expect("the track")
    };
    (
        number(kvs_mkv::header::TRACK_TYPE_VIDEO),
        number(kvs_mkv::header::TRACK_TYPE_AUDIO),
    )
}

#[test]
fn an_h265_camera_with_aac_is_stored_frame_for_frame_on_both_tracks_at_the_camera_time() {
    let emu = Emu::start();
    let camera = Camera::start(
        "( videotestsrc is-live=true num-buffers=150 pattern=ball \
           ! video/x-raw,format=I420,width=320,height=240,framerate=30/1 \
           ! x265enc tune=zerolatency speed-preset=ultrafast key-int-max=30 ! h265parse \
           ! rtph265pay name=pay0 pt=96 config-interval=-1 \
           audiotestsrc is-live=true num-buffers=235 samplesperbuffer=1024 ! audio/x-raw,rate=48000,channels=2 \
           ! avenc_aac ! aacparse ! rtpmp4gpay name=pay1 pt=97 )",
        0,
        |factory| camera_clock(factory, 0),
    );
    emu.create_stream("h265-aac", 1);
    let mut audio = None;
    let description = format!(
        "rtspsrc name=src location={} protocols=tcp add-reference-timestamp-meta=true \
         src. ! rtph265depay ! h265parse name=last ! {} capture-time=meta sync=false \
         src. ! rtpmp4gdepay ! aacparse name=alast ! sink.",
        camera.url(),
        sink_props(&emu, "h265-aac")
    );
    let mut video = None;
    let run = run_pipeline_with(&description, Duration::from_secs(90), |pipeline| {
        video = Some(probe_sent(pipeline, "last"));
        audio = Some(probe_sent(pipeline, "alast"));
    });
    assert_eq!(run.error, None, "warnings: {:?}", run.warnings);
    let (video, audio) = (
        video.unwrap().lock().unwrap().clone(),
        audio.unwrap().lock().unwrap().clone(),
    );
    assert!(
        video.len() > 100 && audio.len() > 150,
        "{} video and {} audio frames",
        video.len(),
        audio.len()
    );
    let (video_track, audio_track) = track_numbers(&emu, "h265-aac");
    let stored = stored_frames(&emu, "h265-aac");
    let on = |track| {
        stored
            .iter()
            .filter(|s| s.track == track)
            .cloned()
            .collect::<Vec<_>>()
    };
    // Each track on the camera's clock (both from its sender reports), extrapolated before the first one.
    for (name, track, sent) in [
        ("video", video_track, &video),
        ("audio", audio_track, &audio),
    ] {
        let first = sent
            .iter()
            .position(|s| s.camera.is_some())
            .unwrap_or_else(|| panic!("{name}: no report"));
        let anchor = sent[first].clone();
        let camera_time = move |s: &Sent| match s.camera {
            Some(time) => ms(time),
            None => ms(anchor.camera.unwrap()) - (anchor.running - s.running) as f64 / 1e6,
        };
        let stored = on(track);
        assert_eq!(stored.len(), sent.len(), "{name}: frames stored / sent");
        assert_stored(&stored, sent, camera_time, 1.0);
    }
}

#[test]
fn b_frames_upload_and_read_back_frame_for_frame_without_a_step_back() {
    // x264 with B-frames, straight into the request pad: presentation times out of decode order.
    let emu = Emu::start();
    emu.create_stream("b-frames", 1);
    let (run, sent) = upload(&format!(
        "videotestsrc is-live=true num-buffers=150 pattern=ball ! video/x-raw,format=I420,width=320,height=240,framerate=30/1 \
         ! x264enc speed-preset=ultrafast key-int-max=30 bframes=2 ! h264parse name=last ! {} sync=false",
        sink_props(&emu, "b-frames")
    ));
    assert_eq!(run.error, None, "warnings: {:?}", run.warnings);
    assert!(run.warnings.is_empty(), "{:?}", run.warnings);
    assert_eq!(sent.len(), 150);
    assert!(
        sent.windows(2).any(|w| w[1].running < w[0].running),
        "no B-frames"
    );
    // Stored in decode order (as sent), each at its presentation time.
    assert_stored(&stored_frames(&emu, "b-frames"), &sent, |s| ms(s.host), 5.0);
    assert_eq!(run.acks("ERROR"), 0, "{:?}", run.messages);
    assert_eq!(run.acks("PERSISTED"), 5, "{:?}", run.messages);
}

/// Runs 240 frames of live H.264 into kvssink's request pad; at frame 120 `at_jump` is called on a probe
/// before `last` (h264parse) to move time back, and `stamp` may put a reference timestamp on each buffer.
fn upload_with_jump(
    emu: &Emu,
    stream: &str,
    mux: &str,
    props: &str,
    stamp: fn(u64, &mut gst::BufferRef),
) -> (Run, Vec<Sent>) {
    emu.create_stream(stream, 1);
    let description = format!(
        "videotestsrc is-live=true num-buffers=240 pattern=ball ! video/x-raw,format=I420,width=320,height=240,framerate=30/1 \
         ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=30 bframes=0 ! h264parse name=parse \
         ! identity name=last ! {mux}{} {props} sync=false",
        sink_props(emu, stream)
    );
    let mut sent = None;
    let run = run_pipeline_with(&description, Duration::from_secs(60), |pipeline| {
        let index = std::sync::atomic::AtomicU64::new(0);
        pipeline
            .by_name("parse")
            .unwrap()
            .static_pad("src")
            .unwrap()
            .add_probe(gst::PadProbeType::BUFFER, move |_, info| {
                let n = index.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if let Some(buffer) = info.buffer_mut() {
                    stamp(n, buffer.make_mut());
                }
                gst::PadProbeReturn::Ok
            });
        sent = Some(probe_sent(pipeline, "last"));
    });
    let sent = sent.unwrap().lock().unwrap().clone();
    (run, sent)
}

/// 1 800 000 000 s since the epoch plus 1/30 s per frame; at frame 120 (a key frame) the clock goes back an
/// hour (a camera rebooted with its clock reset).
fn camera_time(n: u64) -> SystemTime {
    let t = UNIX_EPOCH
        + Duration::from_secs(1_800_000_000)
        + Duration::from_nanos(n * 1_000_000_000 / 30);
    if n >= 120 {
        t - Duration::from_secs(3_600)
    } else {
        t
    }
}

#[test]
fn a_camera_clock_going_back_an_hour_starts_a_new_session_at_its_time_and_loses_no_frame() {
    let emu = Emu::start();
    let (run, sent) = upload_with_jump(&emu, "clock-back", "", "capture-time=meta", |n, buffer| {
        let ntp =
            camera_time(n).duration_since(UNIX_EPOCH).unwrap() + Duration::from_secs(NTP_TO_UNIX_S);
        let caps = gst::Caps::new_empty_simple("timestamp/x-ntp");
        gst::ReferenceTimestampMeta::add(
            buffer,
            &caps,
            gst::ClockTime::from_nseconds(ntp.as_nanos() as u64),
            None,
        );
    });
    assert_eq!(run.error, None, "warnings: {:?}", run.warnings);
    assert_eq!(sent.len(), 240);
    let jumps: Vec<&String> = run
        .warnings
        .iter()
        .filter(|w| w.starts_with("capture time went back"))
        .collect();
    assert_eq!(jumps.len(), 1, "{:?}", run.warnings);
    // From the last frame before (frame 119) to frame 120, an hour earlier minus one frame.
    assert!(
        jumps[0].starts_with("capture time went back 3599.966 s"),
        "{}",
        jumps[0]
    );
    assert!(
        jumps[0].contains("starts a new PutMedia session"),
        "{}",
        jumps[0]
    );
    assert_eq!(run.acks("ERROR"), 0, "{:?}", run.messages);
    // Read back in producer-time order: the hour-earlier frames first; each at the camera's time.
    let stored = stored_frames(&emu, "clock-back");
    let order: Vec<Sent> = sent[120..].iter().chain(&sent[..120]).cloned().collect();
    assert_stored(&stored, &order, |s| ms(s.camera.unwrap()), 1.0);
    let connections = run.messages_named("kvssink-connection");
    assert!(
        connections
            .iter()
            .filter(|m| m.get::<String>("state").unwrap() == "connected")
            .count()
            >= 2
    );
}

#[test]
fn timestamps_jumping_back_in_a_live_pipeline_are_reported_once_and_the_stream_goes_on() {
    // A depayloader jump: the PTS go back 2 s at frame 120; the host-clock stream goes on from where it was.
    // On the request pad (a cluster at each key frame) and through matroskamux (its 500-ms minimum cluster
    // keeps the jumped key frame in the cluster it is writing).
    let emu = Emu::start();
    for mux in ["", "matroskamux ! "] {
        let stream = format!("pts-back-{}", mux.len());
        let (run, sent) = upload_with_jump(&emu, &stream, mux, "", |n, buffer| {
            if n >= 120
                && let Some(pts) = buffer.pts()
            {
                buffer.set_pts(pts.saturating_sub(gst::ClockTime::from_seconds(2)));
            }
        });
        check_pts_back(&emu, &stream, &run, &sent);
    }
}

fn check_pts_back(emu: &Emu, stream: &str, run: &Run, sent: &[Sent]) {
    assert_eq!(run.error, None, "warnings: {:?}", run.warnings);
    assert_eq!(sent.len(), 240);
    let jumps: Vec<&String> = run
        .warnings
        .iter()
        .filter(|w| w.starts_with("capture time went back"))
        .collect();
    assert_eq!(jumps.len(), 1, "{:?}", run.warnings);
    assert!(
        jumps[0].contains("goes on right after the previous frame"),
        "{}",
        jumps[0]
    );
    assert_eq!(run.acks("ERROR"), 0, "{:?}", run.messages);
    let stored = stored_frames(emu, stream);
    // Every frame, in order, times always increasing, one connection.
    assert_eq!(stored.len(), 240);
    assert!(
        stored.iter().zip(sent).all(|(s, t)| s.payload == t.payload),
        "every frame in order"
    );
    assert!(
        stored.windows(2).all(|w| w[0].time_ms < w[1].time_ms),
        "time never goes back"
    );
    // The frames before the jump at their capture time; the first after it right after the last before.
    assert_stored(&stored[..120], &sent[..120], |s| ms(s.host), 5.0);
    let step = stored[120].time_ms - stored[119].time_ms;
    assert!(
        (1..=40).contains(&step),
        "{step} ms between the frames around the jump"
    );
}

#[test]
fn a_resolution_change_with_audio_on_the_other_pad_loses_no_frame_of_either() {
    // Both request pads in use: the muxer swap drains the audio pad too (its stream lock held while it does).
    let emu = Emu::start();
    emu.create_stream("resize-av", 1);
    let description = format!(
        "videotestsrc is-live=true num-buffers=180 pattern=ball ! capsfilter name=size \
         caps=video/x-raw,format=I420,width=320,height=240,framerate=30/1 \
         ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=30 bframes=0 ! h264parse name=last \
         ! {} sync=false \
         audiotestsrc is-live=true num-buffers=280 samplesperbuffer=1024 ! audio/x-raw,rate=48000,channels=2 \
         ! avenc_aac ! aacparse name=alast ! sink.",
        sink_props(&emu, "resize-av")
    );
    let (mut video, mut audio) = (None, None);
    let run = run_pipeline_with(&description, Duration::from_secs(60), |pipeline| {
        video = Some(probe_sent(pipeline, "last"));
        audio = Some(probe_sent(pipeline, "alast"));
        // The change once 75 frames went out (not at a fixed time: a loaded machine starts later).
        let last = pipeline.by_name("last").unwrap().static_pad("src").unwrap();
        resize_after_buffers(&last, pipeline.by_name("size").unwrap(), 75);
    });
    assert_eq!(run.error, None, "warnings: {:?}", run.warnings);
    let changes: Vec<&String> = run
        .warnings
        .iter()
        .filter(|w| w.starts_with("video_0 changed mid-stream"))
        .collect();
    assert_eq!(changes.len(), 1, "{:?}", run.warnings);
    let (video, audio) = (
        video.unwrap().lock().unwrap().clone(),
        audio.unwrap().lock().unwrap().clone(),
    );
    assert_eq!(video.len(), 180);
    assert!(audio.len() >= 280, "{} AAC frames", audio.len());
    let (video_track, audio_track) = track_numbers(&emu, "resize-av");
    let stored = stored_frames(&emu, "resize-av");
    let payloads = |track| {
        stored
            .iter()
            .filter(|s| s.track == track)
            .map(|s| s.payload.clone())
            .collect::<Vec<_>>()
    };
    let sent = |frames: &[Sent]| frames.iter().map(|s| s.payload.clone()).collect::<Vec<_>>();
    if std::env::var("CAMERA_DEBUG").is_ok() {
        for f in emu.admin_fragments("resize-av") {
            eprintln!("fragment {f}");
        }
        let mut cluster = 0;
        for event in kvs_mkv::read_all(&emu.read_back("resize-av")).unwrap() {
            match event {
                kvs_mkv::Event::ClusterChild(el) if el.id == kvs_mkv::ebml::id::TIMECODE => {
                    cluster = kvs_mkv::ebml::read_uint(&el.data()).unwrap();
                    eprintln!("cluster {cluster}");
                }
                kvs_mkv::Event::ClusterChild(el) if el.id == kvs_mkv::ebml::id::SIMPLE_BLOCK => {
                    let info = kvs_mkv::block::parse_simple_block(&el.data()).unwrap();
                    eprintln!(
                        "  track {} at {} key {}",
                        info.track,
                        cluster as i64 + i64::from(info.relative_timecode),
                        info.keyframe
                    );
                }
                kvs_mkv::Event::EbmlHeader(_) => eprintln!("EBML header"),
                _ => {}
            }
        }
    }
    for (name, track, frames) in [
        ("video", video_track, &video),
        ("audio", audio_track, &audio),
    ] {
        let (got, want) = (payloads(track), sent(frames));
        let first_difference = got.iter().zip(&want).position(|(a, b)| a != b);
        assert!(
            got == want,
            "{name}: {} frames stored, {} sent, first difference at {first_difference:?}; stored times {:?}",
            got.len(),
            want.len(),
            stored
                .iter()
                .filter(|s| s.track == track)
                .map(|s| s.time_ms)
                .collect::<Vec<_>>()
        );
    }
    assert_eq!(run.acks("ERROR"), 0, "{:?}", run.messages);
}

#[test]
fn a_codec_change_from_h264_to_h265_on_the_video_pad_starts_a_new_session_with_every_frame() {
    // A camera switched from H.264 to H.265 (input-selector stands in for it): new caps of another media type
    // on video_0.
    let emu = Emu::start();
    emu.create_stream("codec-change", 1);
    let description = format!(
        "videotestsrc is-live=true num-buffers=150 pattern=ball ! video/x-raw,format=I420,width=320,height=240,framerate=30/1 \
         ! tee name=t t. ! queue ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=30 bframes=0 \
         ! h264parse ! sel.sink_0 \
         t. ! queue ! x265enc tune=zerolatency speed-preset=ultrafast key-int-max=30 ! h265parse ! sel.sink_1 \
         input-selector name=sel sync-streams=false ! identity name=last ! sink.video_0 {} sync=false",
        sink_props(&emu, "codec-change")
    );
    let mut sent = None;
    let run = run_pipeline_with(&description, Duration::from_secs(60), |pipeline| {
        sent = Some(probe_sent(pipeline, "last"));
        // The switch once 60 frames went out (not at a fixed time: a loaded machine starts later).
        let selector = pipeline.by_name("sel").unwrap();
        let count = std::sync::atomic::AtomicU32::new(0);
        pipeline
            .by_name("last")
            .unwrap()
            .static_pad("src")
            .unwrap()
            .add_probe(gst::PadProbeType::BUFFER, move |_, _| {
                if count.fetch_add(1, std::sync::atomic::Ordering::Relaxed) == 60 {
                    let selector = selector.clone();
                    std::thread::spawn(move || {
                        let h265 = selector.static_pad("sink_1").unwrap();
                        selector.set_property("active-pad", &h265);
                    });
                }
                gst::PadProbeReturn::Ok
            });
    });
    assert_eq!(run.error, None, "warnings: {:?}", run.warnings);
    let changes: Vec<&String> = run
        .warnings
        .iter()
        .filter(|w| w.starts_with("video_0 changed mid-stream"))
        .collect();
    assert_eq!(changes.len(), 1, "{:?}", run.warnings);
    assert!(
        changes[0].starts_with("video_0 changed mid-stream: video/x-h264 → video/x-h265"),
        "{}",
        changes[0]
    );
    let sent = sent.unwrap().lock().unwrap().clone();
    assert!(sent.len() > 100, "{} frames", sent.len());
    assert_stored(
        &stored_frames(&emu, "codec-change"),
        &sent,
        |s| ms(s.host),
        5.0,
    );
    let codecs: Vec<String> = kvs_mkv::read_all(&emu.read_back("codec-change"))
        .unwrap()
        .into_iter()
        .filter_map(|event| match event {
            kvs_mkv::Event::Element(element) if element.id == kvs_mkv::ebml::id::TRACKS => Some(
                kvs_mkv::header::tracks(&element.data()).unwrap()[0]
                    .codec_id
                    .clone(),
            ),
            _ => None,
        })
        .collect();
    assert!(
        codecs.contains(&"V_MPEG4/ISO/AVC".to_owned())
            && codecs.contains(&"V_MPEGH/ISO/HEVC".to_owned()),
        "{codecs:?}"
    );
}

/// A camera on its own clock uploaded only around a trigger (the `trigger` property, on then off): the window is
/// a contiguous run of the camera's frames, from a key frame `pre-roll` before the trigger to `post-roll`
/// after it ended, each at the camera's time.
#[test]
fn a_triggered_camera_uploads_one_contiguous_window_at_the_camera_time() {
    let emu = Emu::start();
    let camera = Camera::start(&h264_camera(300), 0, |factory| camera_clock(factory, -3600));
    emu.create_stream("camera-window", 1);
    let description = format!(
        "rtspsrc location={} protocols=tcp latency=200 add-reference-timestamp-meta=true ! rtph264depay \
         ! h264parse name=last ! {} capture-time=meta upload-mode=triggered pre-roll=2 post-roll=1",
        camera.url(),
        sink_props(&emu, "camera-window")
    );
    let mut sent = None;
    let run = run_pipeline_with(&description, Duration::from_secs(90), |pipeline| {
        sent = Some(probe_sent(pipeline, "last"));
        let sink = pipeline.by_name("sink").unwrap();
        let count = std::sync::atomic::AtomicU64::new(0);
        pipeline
            .by_name("last")
            .unwrap()
            .static_pad("src")
            .unwrap()
            .add_probe(gst::PadProbeType::BUFFER, move |_, _| {
                match count.fetch_add(1, std::sync::atomic::Ordering::SeqCst) {
                    150 => sink.set_property("trigger", true),
                    210 => sink.set_property("trigger", false),
                    _ => {}
                }
                gst::PadProbeReturn::Ok
            });
    });
    assert_eq!(run.error, None, "warnings: {:?}", run.warnings);
    let sent = sent.unwrap().lock().unwrap().clone();
    let started = run.messages_named("kvssink-window-started");
    let ended = run.messages_named("kvssink-window-ended");
    assert_eq!((started.len(), ended.len()), (1, 1), "{:?}", run.messages);
    let time =
        |s: &gst::Structure, f: &str| i128::from(s.get::<gst::ClockTime>(f).unwrap().nseconds());
    let (trigger, first, last) = (
        time(started[0], "trigger-running-time"),
        time(started[0], "first-running-time"),
        time(ended[0], "last-running-time"),
    );
    // The window's first frame is a key frame at most a GOP (1 s) before trigger - pre-roll.
    assert!(
        (trigger - 3_000_000_000..=trigger - 2_000_000_000).contains(&first),
        "{:?}",
        started[0]
    );
    let from = sent
        .iter()
        .position(|s| s.running == first)
        .expect("the first frame was sent");
    let to = sent
        .iter()
        .position(|s| s.running == last)
        .expect("the last frame was sent");
    assert_eq!(
        ended[0].get::<u64>("frames").unwrap(),
        (to - from + 1) as u64
    );
    // Exactly those frames, each at the camera's time (an hour behind the host; before the first sender report,
    // from it by running time).
    let anchor = sent
        .iter()
        .find(|s| s.camera.is_some())
        .expect("a frame with the camera's time")
        .clone();
    let camera_time = |s: &Sent| match s.camera {
        Some(time) => ms(time),
        None => ms(anchor.camera.unwrap()) - (anchor.running - s.running) as f64 / 1e6,
    };
    assert_stored(
        &stored_frames(&emu, "camera-window"),
        &sent[from..=to],
        camera_time,
        1.0,
    );
}
