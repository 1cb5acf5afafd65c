// SPDX-License-Identifier: MPL-2.0

//! kvssink against a kvs-emulator running in the test process: real pipelines (videotestsrc ! x264enc !
//! matroskamux ! kvssink), frames read back through the emulator's media APIs and compared with what
//! matroskamux produced, byte for byte.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::*;
use gst::prelude::*;
use serde_json::json;

fn assert_round_trip(emu: &Emu, stream: &str, run: &Run) {
    assert_eq!(run.error, None, "warnings: {:?}", run.warnings);
    let input = input_frames(&run.input);
    assert!(!input.is_empty());
    let output = unique_frames(&emu.read_back(stream));
    assert_eq!(output.len(), input.len(), "frames in and out");
    assert!(
        output == input,
        "the frames read back differ from the frames uploaded"
    );
}

#[test]
fn video_round_trip_every_frame_identical() {
    let emu = Emu::start();
    emu.create_stream("video", 1);
    let description = format!(
        "{} ! matroskamux ! tee name=t ! queue ! {} sync=false {CAPTURE}",
        video_source(300),
        sink_props(&emu, "video")
    );
    let run = run_pipeline(&description, Duration::from_secs(60));
    assert_round_trip(&emu, "video", &run);
    assert_eq!(input_frames(&run.input).len(), 300);
    // One fragment per second of video, each acknowledged and persisted.
    assert_eq!(run.acks("PERSISTED"), 10, "{:?}", run.messages);
    assert_eq!(run.stat("fragments-persisted"), 10);
    assert_eq!(run.stat("fragments-resent"), 0);
    assert_eq!(run.stat("queued-fragments"), 0);
    let sizes: Vec<u64> = emu
        .admin_fragments("video")
        .iter()
        .map(|f| f["size_bytes"].as_u64().unwrap())
        .collect();
    assert_eq!(sizes.len(), 10);
}

#[test]
fn video_and_aac_round_trip() {
    let emu = Emu::start();
    emu.create_stream("av", 1);
    let description = av_upload(&emu, "av");
    let run = run_pipeline(&description, Duration::from_secs(60));
    assert_round_trip(&emu, "av", &run);
    let tracks: std::collections::BTreeSet<u64> =
        input_frames(&run.input).iter().map(|(t, _)| *t).collect();
    assert_eq!(tracks.len(), 2, "video and audio");
}

#[test]
fn audio_only_round_trip() {
    let emu = Emu::start();
    emu.create_stream("audio", 1);
    let description = format!(
        "audiotestsrc num-buffers=150 samplesperbuffer=1024 ! audio/x-raw,rate=48000,channels=2 ! avenc_aac ! aacparse \
         ! matroskamux ! tee name=t ! queue ! {} sync=false {CAPTURE}",
        sink_props(&emu, "audio")
    );
    let run = run_pipeline(&description, Duration::from_secs(60));
    assert_round_trip(&emu, "audio", &run);
}

#[test]
fn a_missing_stream_is_created_with_the_media_type_of_the_tracks() {
    let emu = Emu::start();
    let description = format!(
        "{} ! matroskamux ! tee name=t ! queue ! {} sync=false retention-period=3 stream-tags=\"tags,team=video\" {CAPTURE}",
        video_source(60),
        sink_props(&emu, "created")
    );
    let run = run_pipeline(&description, Duration::from_secs(60));
    assert_round_trip(&emu, "created", &run);
    let (status, described) = emu.json("/describeStream", json!({"StreamName": "created"}));
    assert_eq!(status, 200);
    assert_eq!(
        described["StreamInfo"]["MediaType"], "video/h264",
        "{described}"
    );
    assert_eq!(described["StreamInfo"]["DataRetentionInHours"], 3);
    let (_, tags) = emu.json("/listTagsForStream", json!({"StreamName": "created"}));
    assert_eq!(tags["Tags"]["team"], "video");
}

/// An upload of `frames` frames to `stream`, with extra kvssink properties.
fn upload(emu: &Emu, stream: &str, frames: u32, extra: &str) -> Run {
    let description = format!(
        "{} ! matroskamux ! tee name=t ! queue ! {} sync=false {extra} {CAPTURE}",
        video_source(frames),
        sink_props(emu, stream)
    );
    run_pipeline(&description, Duration::from_secs(120))
}

fn reconnections(run: &Run) -> usize {
    run.messages_named("kvssink-connection")
        .iter()
        .filter(|s| s.get::<String>("state").unwrap() == "reconnecting")
        .count()
}

#[test]
fn ten_dropped_connections_lose_nothing() {
    let emu = Emu::start();
    emu.create_stream("drops", 1);
    emu.fault(json!({"api": "putMedia", "stream": "drops", "kind": "drop_after_bytes", "bytes": 30000, "times": 10}));
    let run = upload(&emu, "drops", 360, "");
    assert_round_trip(&emu, "drops", &run);
    assert_eq!(
        reconnections(&run),
        10,
        "{:?}",
        run.messages_named("kvssink-connection")
    );
    assert_eq!(run.stat("reconnections"), 10);
    // A drop after ACKs is followed by a reconnection at once (a drop that beats the new connection's first
    // ACK counts as a second failure in a row and backs off: allowed for once or twice).
    let waits: Vec<u64> = run
        .messages_named("kvssink-connection")
        .iter()
        .filter_map(|s| s.get::<u64>("retry-in-ms").ok())
        .collect();
    assert!(waits.iter().filter(|w| **w == 0).count() >= 8, "{waits:?}");
    assert!(run.stat("fragments-resent") >= 10, "{:?}", run.stats);
}

#[test]
fn retryable_error_acks_resend_the_fragment() {
    for error_id in [5000u32, 5001] {
        let emu = Emu::start();
        emu.create_stream("errors", 1);
        emu.fault(
            json!({"api": "putMedia", "kind": "error_ack", "fragment": 3, "error_id": error_id}),
        );
        let run = upload(&emu, "errors", 240, "");
        assert_round_trip(&emu, "errors", &run);
        let errors: Vec<u32> = run
            .messages_named("kvssink-ack")
            .iter()
            .filter_map(|s| s.get::<u32>("error-id").ok())
            .collect();
        assert_eq!(errors, [error_id]);
        assert_eq!(reconnections(&run), 1);
        assert!(
            run.stat("fragments-resent") >= 1,
            "fragment 3 goes again: {:?}",
            run.stats
        );
    }
}

#[test]
fn a_503_on_connect_is_retried() {
    let emu = Emu::start();
    emu.create_stream("unavailable", 1);
    emu.fault(json!({"api": "putMedia", "kind": "http_error", "status": 503, "error": "ServiceUnavailableException", "times": 2}));
    let run = upload(&emu, "unavailable", 90, "");
    assert_round_trip(&emu, "unavailable", &run);
    let reasons = reasons(&run);
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert!(
        reasons[0].contains("HTTP 503 ServiceUnavailableException"),
        "{reasons:?}"
    );
    // The first retry goes at once; the second, after another failure, backs off.
    let waits: Vec<(u32, u64)> = run
        .messages_named("kvssink-connection")
        .iter()
        .filter(|s| s.get::<String>("state").unwrap() == "reconnecting")
        .map(|s| {
            (
                s.get::<u32>("attempt").unwrap(),
                s.get::<u64>("retry-in-ms").unwrap(),
            )
        })
        .collect();
    assert_eq!(waits[0], (1, 0), "{waits:?}");
    assert_eq!(waits[1].0, 2);
    assert!((250..=500).contains(&waits[1].1), "{waits:?}");
}

#[test]
fn withheld_acks_make_the_connection_stale_and_it_is_replaced() {
    let emu = Emu::start();
    emu.create_stream("stale", 1);
    emu.fault(json!({"api": "putMedia", "kind": "withhold_acks"}));
    let run = upload(&emu, "stale", 90, "connection-staleness=2");
    assert_round_trip(&emu, "stale", &run);
    let reasons = reasons(&run);
    assert_eq!(reasons.len(), 1, "{reasons:?}");
    assert!(reasons[0].contains("(connection-staleness)"), "{reasons:?}");
}

#[test]
fn a_stream_deleted_mid_stream_is_an_element_error() {
    let emu = Emu::start();
    emu.create_stream("deleted", 1);
    let (_, described) = emu.json("/describeStream", json!({"StreamName": "deleted"}));
    let arn = described["StreamInfo"]["StreamARN"]
        .as_str()
        .unwrap()
        .to_owned();
    let description = format!(
        "videotestsrc is-live=true num-buffers=300 ! video/x-raw,width=320,height=240,framerate=30/1 \
         ! x264enc key-int-max=15 bframes=0 tune=zerolatency speed-preset=ultrafast ! h264parse ! matroskamux \
         ! {}",
        sink_props(&emu, "deleted")
    );
    std::thread::scope(|scope| {
        scope.spawn(|| {
            std::thread::sleep(Duration::from_millis(2500));
            let (status, body) = emu.json("/deleteStream", json!({"StreamARN": arn}));
            assert_eq!(status, 200, "{body}");
        });
        let run = run_pipeline(&description, Duration::from_secs(30));
        let error = run.error.expect("an element error");
        assert!(
            error.contains("ERROR 4507 STREAM_DELETED")
                || error.contains("ResourceNotFoundException"),
            "{error}"
        );
        // The domain says what happened, whichever way the service said it.
        assert!(
            run.gerror.unwrap().matches(gst::ResourceError::NotFound),
            "{error}"
        );
        assert!(run.elapsed < Duration::from_secs(9), "{:?}", run.elapsed);
    });
}

#[test]
fn eos_waits_for_persisted_and_times_out_with_a_warning_when_it_never_comes() {
    let emu = Emu::start();
    emu.create_stream("unpersisted", 1);
    emu.fault(json!({"api": "putMedia", "kind": "withhold_acks", "event": "PERSISTED"}));
    let run = upload(&emu, "unpersisted", 60, "stop-stream-timeout=2");
    assert_eq!(run.error, None);
    assert!(run.elapsed >= Duration::from_secs(2), "{:?}", run.elapsed);
    assert_eq!(run.acks("PERSISTED"), 0);
    assert_eq!(run.acks("RECEIVED"), 2);
    assert_eq!(run.warnings.len(), 1, "{:?}", run.warnings);
    assert!(
        run.warnings[0].contains("2 fragments were not acknowledged as persisted within 2 s"),
        "{:?}",
        run.warnings
    );
}

#[test]
fn setting_the_pipeline_to_null_during_a_stalled_eos_returns_at_once() {
    init();
    let emu = Emu::start();
    emu.create_stream("stall", 1);
    emu.fault(json!({"api": "putMedia", "kind": "withhold_acks", "times": 5}));
    let description = format!(
        "{} ! matroskamux ! {} sync=false",
        video_source(30),
        sink_props(&emu, "stall")
    );
    let pipeline = gst::parse::launch(&description).unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();
    // The frames are encoded and queued at once; EOS then waits for ACKs that never come.
    std::thread::sleep(Duration::from_secs(2));
    let started = std::time::Instant::now();
    pipeline.set_state(gst::State::Null).unwrap();
    let took = started.elapsed();
    assert!(took < Duration::from_secs(1), "NULL took {took:?}");
}

#[test]
fn metadata_events_become_fragment_tags() {
    let emu = Emu::start();
    emu.create_stream("meta", 1);
    let description = format!(
        "{} ! matroskamux ! tee name=t ! queue ! {} sync=false {CAPTURE}",
        video_source(90),
        sink_props(&emu, "meta")
    );
    let run = run_pipeline_with(&description, Duration::from_secs(60), |pipeline| {
        let sink = pipeline.by_name("sink").unwrap();
        let pad = sink.static_pad("sink").unwrap();
        let sent = std::sync::atomic::AtomicBool::new(false);
        pad.add_probe(gst::PadProbeType::BUFFER, move |pad, _| {
            if !sent.swap(true, std::sync::atomic::Ordering::SeqCst) {
                for (name, value, persist) in
                    [("camera", "front door", false), ("site", "berlin", true)]
                {
                    let s = gst::Structure::builder("kvs-add-metadata")
                        .field("name", name)
                        .field("value", value)
                        .field("persist", persist)
                        .build();
                    assert!(pad.send_event(gst::event::CustomDownstream::new(s)));
                }
            }
            gst::PadProbeReturn::Ok
        });
    });
    assert_round_trip(&emu, "meta", &run);
    // Per fragment, in order: the user tags stored with it.
    let output = emu.read_back("meta");
    let mut per_fragment: Vec<Vec<String>> = Vec::new();
    for event in kvs_mkv::read_all(&output).unwrap() {
        match event {
            kvs_mkv::Event::EbmlHeader(_) => per_fragment.push(Vec::new()),
            kvs_mkv::Event::Element(e) if e.id == kvs_mkv::ebml::id::TAGS => {
                for tag in kvs_mkv::tags::parse_tags(&e.data()).unwrap() {
                    if !tag.name.starts_with("AWS_") {
                        per_fragment
                            .last_mut()
                            .unwrap()
                            .push(format!("{}={}", tag.name, tag.value));
                    }
                }
            }
            _ => {}
        }
    }
    // Each fragment carries its own tags. (The service treats Tags before the first Cluster of a connection as
    // part of that connection's header, so the first fragment's tags also show up in the later fragments of
    // the same connection, as in its recorded output; see the emulator's README.)
    assert_eq!(per_fragment.len(), 3);
    assert!(
        per_fragment[0].contains(&"camera=front door".to_owned()),
        "{per_fragment:?}"
    );
    for tags in &per_fragment {
        assert!(tags.contains(&"site=berlin".to_owned()), "{per_fragment:?}");
    }
    let own_tags = |i: usize| {
        per_fragment[i]
            .iter()
            .filter(|t| *t == "site=berlin")
            .count()
    };
    assert_eq!(
        (own_tags(1), own_tags(2)),
        (2, 2),
        "the persistent tag is sent with every fragment"
    );
}

/// A pipeline reading `data` from a file as Matroska into kvssink; returns the error it ends with.
fn error_for_input(emu: &Emu, stream: &str, data: &[u8]) -> String {
    let dir = std::env::temp_dir().join(format!("kvssink-test-{}-{stream}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("input.mkv");
    std::fs::write(&path, data).unwrap();
    let description = format!(
        "filesrc location={} ! video/x-matroska ! {} sync=false",
        path.display(),
        sink_props(emu, stream)
    );
    let run = run_pipeline(&description, Duration::from_secs(30));
    std::fs::remove_dir_all(&dir).unwrap();
    run.error.expect("an element error")
}

#[test]
fn bad_input_gives_an_error_naming_the_problem() {
    use kvs_mkv::writer;
    let emu = Emu::start();
    emu.create_stream("bad", 1);

    let error = error_for_input(
        &emu,
        "bad",
        b"this is certainly not a Matroska stream, just text",
    );
    assert!(error.contains("invalid input: not Matroska"), "{error}");

    let mut stream = writer::h264_stream_header();
    writer::write_cluster_start(&mut stream, 0);
    writer::write_simple_block(&mut stream, 1, 0, true, &[7; 500]);
    let error = error_for_input(&emu, "bad", &stream[..stream.len() - 100]);
    assert!(
        error.contains("truncated Matroska: the input ends inside an element"),
        "{error}"
    );

    let mut long = writer::h264_stream_header();
    writer::write_cluster_start(&mut long, 0);
    writer::write_simple_block(&mut long, 1, 0, true, &[1]);
    writer::write_simple_block(&mut long, 1, 12_000, false, &[2]);
    let error = error_for_input(&emu, "bad", &long);
    assert!(
        error.contains("lasts at least 12.000 s, longer than the KVS fragment limit of 10 s"),
        "{error}"
    );

    let mut backwards = writer::h264_stream_header();
    for timecode in [5000, 1000] {
        writer::write_cluster_start(&mut backwards, timecode);
        writer::write_simple_block(&mut backwards, 1, 0, true, &[1]);
    }
    let error = error_for_input(&emu, "bad", &backwards);
    assert!(
        error.contains("Matroska cluster timecodes go backwards"),
        "{error}"
    );

    let mut mp4 = Vec::new();
    writer::write_ebml_header(&mut mp4, "mp4");
    writer::write_segment_start(&mut mp4);
    writer::write_info(&mut mp4, 1_000_000);
    let error = error_for_input(&emu, "bad", &mp4);
    assert!(
        error.starts_with(
            "invalid input: unsupported EBML DocType \"mp4\" (expected \"matroska\" or \"webm\")"
        ),
        "{error}"
    );

    let mut no_tracks = Vec::new();
    writer::write_ebml_header(&mut no_tracks, "matroska");
    writer::write_segment_start(&mut no_tracks);
    writer::write_info(&mut no_tracks, 1_000_000);
    writer::write_cluster_start(&mut no_tracks, 0);
    writer::write_simple_block(&mut no_tracks, 1, 0, true, &[1; 100]);
    let error = error_for_input(&emu, "bad", &no_tracks);
    assert!(
        error.starts_with("invalid input: the Matroska stream has clusters but no Tracks element"),
        "{error}"
    );

    // Elements that declare 1 GB: a frame, and a level-1 Tags element. Refused at once, nothing allocated.
    let gigabyte = [0x08, 0x40, 0x00, 0x00, 0x00];
    let mut huge_frame = writer::h264_stream_header();
    writer::write_cluster_start(&mut huge_frame, 0);
    huge_frame.push(0xA3);
    huge_frame.extend_from_slice(&gigabyte);
    huge_frame.extend_from_slice(&[0x81, 0, 0, 0x80, 1, 2, 3]);
    let error = error_for_input(&emu, "bad", &huge_frame);
    assert!(
        error.starts_with("invalid input: Matroska element 0xA3 at byte "),
        "{error}"
    );
    assert!(error.contains("is too large (1073741824 bytes)"), "{error}");
    let mut huge_tags = writer::h264_stream_header();
    huge_tags.extend_from_slice(&[0x12, 0x54, 0xC3, 0x67]);
    huge_tags.extend_from_slice(&gigabyte);
    huge_tags.extend_from_slice(&[0; 64]);
    let error = error_for_input(&emu, "bad", &huge_tags);
    assert!(
        error.starts_with("invalid input: Matroska element 0x1254C367 at byte "),
        "{error}"
    );
}

#[test]
fn caps_and_stream_header_changing_mid_stream_start_a_new_header_and_lose_nothing() {
    use kvs_mkv::writer;
    let emu = Emu::start();
    emu.create_stream("recaps", 1);
    // Two documents, the second WebM with other tracks, the caps changing between them, as after a
    // renegotiation upstream of matroskamux.
    let document = |doc_type: &str, codec_private: &[u8], first_timecode: u64, seed: u8| {
        let mut out = Vec::new();
        writer::write_ebml_header(&mut out, doc_type);
        writer::write_segment_start(&mut out);
        writer::write_info(&mut out, 1_000_000);
        writer::write_tracks(
            &mut out,
            &[writer::TrackSpec {
                number: 1,
                track_type: 1,
                codec_id: "V_MPEG4/ISO/AVC",
                codec_private,
            }],
        );
        for cluster in 0..3u64 {
            writer::write_cluster_start(&mut out, first_timecode + cluster * 1000);
            for frame in 0..10u8 {
                writer::write_simple_block(
                    &mut out,
                    1,
                    i16::from(frame) * 100,
                    frame == 0,
                    &[seed, frame, 7, 7],
                );
            }
        }
        out
    };
    let first = document("matroska", &[1, 2, 3], 0, 1);
    let second = document("webm", &[4, 5, 6], 3000, 2);
    init();
    let pipeline = gst::parse::launch(&format!(
        "appsrc name=in format=time ! {} sync=false",
        sink_props(&emu, "recaps")
    ))
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    let appsrc = pipeline
        .by_name("in")
        .unwrap()
        .downcast::<gst_app::AppSrc>()
        .unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();
    appsrc.set_caps(Some(&gst::Caps::builder("video/x-matroska").build()));
    appsrc
        .push_buffer(gst::Buffer::from_slice(first.clone()))
        .unwrap();
    appsrc.set_caps(Some(&gst::Caps::builder("video/webm").build()));
    appsrc
        .push_buffer(gst::Buffer::from_slice(second.clone()))
        .unwrap();
    appsrc.end_of_stream().unwrap();
    let bus = pipeline.bus().unwrap();
    let message = bus
        .timed_pop_filtered(
            gst::ClockTime::from_seconds(30),
            &[gst::MessageType::Eos, gst::MessageType::Error],
        )
        .expect("EOS");
    assert!(
        matches!(message.view(), gst::MessageView::Eos(_)),
        "{message:?}"
    );
    pipeline.set_state(gst::State::Null).unwrap();
    let mut input = input_frames(&first);
    input.extend(input_frames(&second));
    let stored = unique_frames(&emu.read_back("recaps"));
    assert_eq!(stored.len(), 60);
    assert!(stored == input, "every frame of both documents, in order");
}

fn start_error(description: &str) -> (String, Duration) {
    let run = run_pipeline(description, Duration::from_secs(60));
    (run.error.expect("an element error"), run.elapsed)
}

#[test]
fn a_wrong_secret_is_refused_with_the_service_error() {
    let emu = Emu::with_config(kvs_emulator::Config {
        credentials: vec![("AKIDTEST".into(), "right-secret".into())],
        ..Default::default()
    });
    let run = run_pipeline(
        &format!(
            "{} ! matroskamux ! {}",
            video_source(10),
            sink_props(&emu, "any")
        ),
        Duration::from_secs(60),
    );
    let error = run.error.expect("an element error");
    assert!(error.contains("DescribeStream failed: HTTP 403"), "{error}");
    assert!(
        !error.contains("test-secret"),
        "the secret never shows: {error}"
    );
    assert!(
        run.gerror
            .unwrap()
            .matches(gst::ResourceError::NotAuthorized),
        "{error}"
    );
    // The debug string carries the service's error code and request id.
    let debug = error.split(" | ").nth(1).unwrap();
    assert!(
        debug.contains("error code InvalidSignatureException, request id "),
        "{debug}"
    );
}

#[test]
fn a_missing_stream_without_creation_is_an_error() {
    let emu = Emu::start();
    let (error, _) = start_error(&format!(
        "{} ! matroskamux ! {} allow-create-stream=false",
        video_source(10),
        sink_props(&emu, "nothere")
    ));
    assert!(
        error.contains(
            "the stream \"nothere\" does not exist and creating it is not allowed (allow-create-stream=false)"
        ),
        "{error}"
    );
}

#[test]
fn an_unreachable_endpoint_fails_within_the_request_timeout() {
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (error, elapsed) = start_error(&format!(
        "{} ! matroskamux ! kvssink stream-name=x endpoint-uri=http://127.0.0.1:{port} access-key=AK secret-access-key=SK \
         region=us-east-1 request-timeout=2000",
        video_source(10)
    ));
    assert!(
        error.contains("DescribeStream failed: cannot reach the service"),
        "{error}"
    );
    assert!(elapsed < Duration::from_secs(10), "{elapsed:?}");
}

#[test]
fn no_credentials_anywhere_is_an_error_naming_the_cause() {
    // gst-launch-1.0 in a clean environment: no AWS variables, an empty HOME, IMDS disabled.
    let plugin_dir = plugin_dir();
    let home = std::env::temp_dir().join(format!("kvssink-nocreds-{}", std::process::id()));
    std::fs::create_dir_all(&home).unwrap();
    let output = std::process::Command::new("gst-launch-1.0")
        .args([
            "fakesrc",
            "num-buffers=1",
            "!",
            "video/x-matroska",
            "!",
            "kvssink",
            "stream-name=x",
        ])
        .args(["endpoint-uri=http://127.0.0.1:9", "region=us-east-1"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap())
        .env("HOME", &home)
        .env("GST_PLUGIN_PATH", &plugin_dir)
        .env("GST_REGISTRY", home.join("registry.bin"))
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output()
        .unwrap();
    std::fs::remove_dir_all(&home).unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(!output.status.success());
    assert!(
        stdout.contains("no usable AWS credentials")
            || stderr.contains("no usable AWS credentials"),
        "{stdout}\n{stderr}"
    );
}

#[test]
fn secrets_cannot_be_read_back() {
    init();
    let sink = gst::ElementFactory::make("kvssink")
        .property("secret-access-key", "s3cr3t-value")
        .build()
        .unwrap();
    for name in ["secret-access-key", "secret-key", "session-token"] {
        let pspec = sink.find_property(name).unwrap();
        assert!(
            !pspec.flags().contains(gst::glib::ParamFlags::READABLE),
            "{name} is readable"
        );
        assert!(
            pspec.flags().contains(gst::glib::ParamFlags::WRITABLE),
            "{name} is not writable"
        );
    }
    assert_eq!(sink.property::<u32>("request-timeout"), 10_000);
    assert_eq!(sink.property::<u32>("connection-staleness"), 60);
}

/// A file of `frames` frames of 160x120 H.264 at 30 fps in Matroska (a key frame, so a cluster, every
/// `key_interval` frames), for the tests that upload recordings.
fn recording(name: &str, frames: u32, key_interval: u32) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("kvssink-test-{}-{name}.mkv", std::process::id()));
    let description = format!(
        "videotestsrc num-buffers={frames} pattern=ball ! video/x-raw,format=I420,width=160,height=120,framerate=30/1 \
         ! x264enc key-int-max={key_interval} bframes=0 speed-preset=ultrafast ! h264parse ! matroskamux ! filesink location={}",
        path.display()
    );
    let run = run_pipeline(&description, Duration::from_secs(60));
    assert_eq!(run.error, None);
    path
}

/// Uploads a recording demuxed and muxed again (so buffers carry timestamps the sink can sync on).
fn upload_recording(emu: &Emu, stream: &str, path: &std::path::Path, extra: &str) -> Run {
    let description = format!(
        "filesrc location={} ! matroskademux ! h264parse ! matroskamux ! tee name=t ! queue ! {} {extra} {CAPTURE}",
        path.display(),
        sink_props(emu, stream)
    );
    run_pipeline(&description, Duration::from_secs(90))
}

#[test]
fn sync_true_uploads_at_native_rate_and_sync_false_as_fast_as_it_can() {
    let emu = Emu::start();
    emu.create_stream("paced", 1);
    emu.create_stream("unpaced", 1);
    let ten_seconds = recording("10s", 300, 30);
    let sixty_seconds = recording("60s", 1800, 30);

    let paced = upload_recording(&emu, "paced", &ten_seconds, "sync=true");
    assert_round_trip(&emu, "paced", &paced);
    println!(
        "sync=true, 10 s of video: {:.2} s",
        paced.elapsed.as_secs_f64()
    );
    // Clock sync cannot render the last frame (at 9.967 s) before its time.
    assert!(
        paced.elapsed >= Duration::from_millis(9_900),
        "{:?}",
        paced.elapsed
    );
    assert!(
        paced.elapsed < Duration::from_secs(20),
        "{:?}",
        paced.elapsed
    );

    let unpaced = upload_recording(&emu, "unpaced", &sixty_seconds, "sync=false");
    assert_round_trip(&emu, "unpaced", &unpaced);
    assert_eq!(input_frames(&unpaced.input).len(), 1800);
    println!(
        "sync=false, 60 s of video: {:.2} s",
        unpaced.elapsed.as_secs_f64()
    );
    assert!(
        unpaced.elapsed < Duration::from_secs(20),
        "{:?}",
        unpaced.elapsed
    );
    for path in [ten_seconds, sixty_seconds] {
        let _ = std::fs::remove_file(path);
    }
}

/// Why connections ended (reconnections and rotations), in order.
fn reasons(run: &Run) -> Vec<String> {
    connection_states(run)
        .into_iter()
        .map(|(_, reason)| reason)
        .filter(|r| !r.is_empty())
        .collect()
}

fn connection_states(run: &Run) -> Vec<(String, String)> {
    run.messages_named("kvssink-connection")
        .iter()
        .map(|s| {
            (
                s.get::<String>("state").unwrap(),
                s.get::<String>("reason").unwrap_or_default(),
            )
        })
        .collect()
}

#[test]
fn connection_rotation_opens_new_connections_and_loses_nothing() {
    let emu = Emu::start();
    emu.create_stream("rotation", 1);
    let path = recording("rotation", 180, 60);
    // Three 2-s fragments at native rate; each fragment after the first finds its connection older than 1 s.
    let run = upload_recording(&emu, "rotation", &path, "sync=true connection-rotation=1");
    let _ = std::fs::remove_file(&path);
    assert_round_trip(&emu, "rotation", &run);
    let states = connection_states(&run);
    let rotations = states.iter().filter(|(s, _)| s == "rotating").count();
    assert_eq!(rotations, 2, "{states:?}");
    assert!(
        states
            .iter()
            .filter(|(s, _)| s == "rotating")
            .all(|(_, r)| r == "connection-rotation reached")
    );
    assert_eq!(
        states.iter().filter(|(s, _)| s == "reconnecting").count(),
        0,
        "{states:?}"
    );
    assert_eq!(run.stat("connections"), rotations as u64 + 1);
    // Nothing is sent twice: each connection's fragments finish on it while the next one starts.
    assert_eq!(run.stat("fragments-resent"), 0);
    assert_eq!(frames(&emu.read_back("rotation")).len(), 180);
    assert_eq!(run.acks("PERSISTED"), 3);
}

#[test]
fn a_new_stream_header_starts_a_new_connection_with_it() {
    use kvs_mkv::writer;
    let emu = Emu::start();
    emu.create_stream("headers", 1);
    // Two Matroska documents one after the other, as matroskamux writes after a caps change.
    let mut data = Vec::new();
    let mut payloads = Vec::new();
    for document in 0..2u8 {
        data.extend(writer::h264_stream_header());
        for cluster in 0..2u8 {
            writer::write_cluster_start(&mut data, u64::from(cluster) * 1000);
            for frame in 0..3u8 {
                let payload = vec![document * 100 + cluster * 10 + frame; 200 + usize::from(frame)];
                writer::write_simple_block(
                    &mut data,
                    1,
                    i16::from(frame) * 333,
                    frame == 0,
                    &payload,
                );
                payloads.push((1u64, payload));
            }
        }
    }
    let dir = std::env::temp_dir().join(format!("kvssink-test-{}-headers", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("input.mkv");
    std::fs::write(&path, &data).unwrap();
    let description = format!(
        "filesrc location={} ! video/x-matroska ! {} sync=false",
        path.display(),
        sink_props(&emu, "headers")
    );
    let run = run_pipeline(&description, Duration::from_secs(30));
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(run.error, None, "{:?}", run.warnings);
    let states = connection_states(&run);
    assert_eq!(
        states
            .iter()
            .filter(|(s, _)| s == "rotating")
            .map(|(_, r)| r.as_str())
            .collect::<Vec<_>>(),
        ["the stream header changed"],
        "{states:?}"
    );
    assert_eq!(run.stat("connections"), 2);
    assert_eq!(unique_frames(&emu.read_back("headers")), payloads);
    // Each connection's fragments carry the header it was opened with: two EBML documents in the stored media.
    let fragments = emu.admin_fragments("headers");
    assert_eq!(fragments.len(), 4);
}

#[test]
fn without_fragment_acks_fragments_are_released_once_written() {
    let emu = Emu::start();
    emu.create_stream("noacks", 1);
    // Even with no ACK at all, nothing waits for one: no staleness, no EOS timeout.
    emu.fault(json!({"api": "putMedia", "kind": "withhold_acks"}));
    let run = upload(
        &emu,
        "noacks",
        90,
        "fragment-acks=false connection-staleness=1 stop-stream-timeout=30",
    );
    assert_round_trip(&emu, "noacks", &run);
    // Said once, at start: nothing can be re-sent without ACKs.
    assert_eq!(run.warnings.len(), 1, "{:?}", run.warnings);
    assert!(
        run.warnings[0].starts_with(
            "fragment-acks=false: a fragment is forgotten once written, so nothing lost on a dropped \
             connection can be sent again | "
        ),
        "{:?}",
        run.warnings
    );
    assert_eq!(reconnections(&run), 0);
    assert!(
        run.elapsed < Duration::from_secs(20),
        "EOS did not wait for the stop-stream-timeout: {:?}",
        run.elapsed
    );
    assert_eq!(run.stat("fragments-sent"), 3);
    assert_eq!(run.stat("fragments-persisted"), 0);
    assert_eq!(run.stat("queued-fragments"), 0);
}

/// Absolute time (ms since the epoch, as stored: cluster Timecode + block offset) of every video frame of a
/// Matroska stream with ABSOLUTE timecodes, in order.
fn stored_frame_times(data: &[u8]) -> Vec<i64> {
    use kvs_mkv::Event;
    use kvs_mkv::ebml::id;
    let mut cluster = 0i64;
    let mut out = Vec::new();
    for event in kvs_mkv::read_all(data).expect("valid Matroska") {
        if let Event::ClusterChild(element) = event {
            match element.id {
                id::TIMECODE => cluster = kvs_mkv::ebml::read_uint(&element.data()).unwrap() as i64,
                id::SIMPLE_BLOCK => {
                    out.push(cluster + i64::from(element.block().unwrap().relative_timecode))
                }
                _ => {}
            }
        }
    }
    out
}

/// A live source with an encoder that holds frames back (x264's lookahead: about 0.5 s), fragments of
/// `gop_seconds`: every frame's stored producer time is the wall-clock time at which the source produced it (its
/// timestamp on the pipeline clock, in wall-clock time).
fn producer_timestamps_are_capture_times(gop_seconds: u32, seconds: u32) {
    let emu = Emu::start();
    let stream = format!("capture-{gop_seconds}");
    emu.create_stream(&stream, 1);
    let description = format!(
        "videotestsrc name=src is-live=true num-buffers={} pattern=ball ! video/x-raw,format=I420,width=160,height=120,framerate=30/1 \
         ! x264enc key-int-max={} bframes=0 rc-lookahead=15 speed-preset=ultrafast option-string=scenecut=0 ! h264parse \
         ! matroskamux streamable=true ! {}",
        seconds * 30,
        gop_seconds * 30,
        sink_props(&emu, &stream)
    );
    let produced = std::sync::Arc::new(std::sync::Mutex::new(Vec::<i64>::new()));
    let run = run_pipeline_with(
        &description,
        Duration::from_secs(u64::from(seconds) + 30),
        |pipeline| {
            let produced = produced.clone();
            let src = pipeline.by_name("src").unwrap();
            let pad = src.static_pad("src").unwrap();
            pad.add_probe(gst::PadProbeType::BUFFER, move |_, info| {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as i64;
                // The wall-clock time the source stamped the frame (its capture), not the moment this probe
                // runs: a thread descheduled between the two on a loaded machine would otherwise count as an
                // error of kvssink's.
                let (Some(buffer), Some(clock), Some(base)) =
                    (info.buffer(), src.clock(), src.base_time())
                else {
                    return gst::PadProbeReturn::Ok;
                };
                let captured = base + buffer.pts().unwrap();
                let since = clock.time().nseconds() as i64 - captured.nseconds() as i64;
                produced.lock().unwrap().push((now - since) / 1_000_000);
                gst::PadProbeReturn::Ok
            });
        },
    );
    assert_eq!(run.error, None, "{:?}", run.warnings);
    let produced = produced.lock().unwrap().clone();
    let stored = stored_frame_times(&emu.read_back(&stream));
    assert_eq!(stored.len(), produced.len(), "every frame stored");
    let errors: Vec<i64> = stored.iter().zip(&produced).map(|(s, p)| s - p).collect();
    let worst = errors.iter().copied().max_by_key(|e| e.abs()).unwrap();
    let fragments = emu.admin_fragments(&stream).len();
    println!(
        "{gop_seconds}-s GOP: {} frames in {fragments} fragments, stored time - production time: first {} ms, \
         worst {worst} ms",
        stored.len(),
        errors[0]
    );
    assert_eq!(fragments as u32, seconds.div_ceil(gop_seconds));
    assert!(
        worst.abs() <= 50,
        "a frame stamped {worst} ms away from when it was produced: {errors:?}"
    );
}

#[test]
fn producer_timestamps_are_capture_times_with_2_s_fragments() {
    producer_timestamps_are_capture_times(2, 5);
}

#[test]
fn producer_timestamps_are_capture_times_with_10_s_fragments() {
    producer_timestamps_are_capture_times(10, 12);
}

/// The C++ kvssink's property names kvssink has besides its own, with a value each.
/// Every C++ kvssink property but `iot-certificate` (which would be used first of all credential sources: its
/// own test sets it), with a value; `credential-path` is set but not used, because the properties give keys.
const CPP_PROPERTIES: &[(&str, &str)] = &[
    ("credential-path", "/etc/kvs/credential"),
    ("user-agent", "my-camera/1.0"),
    ("connection-timeout", "3"),
    ("completion-timeout", "20"),
    ("restart-on-error", "true"),
    ("codec-id", "V_MPEG4/ISO/AVC"),
    ("track-name", "kinesis_video"),
    ("timecode-scale", "1"),
    ("fragment-duration", "2000"),
    ("key-frame-fragmentation", "true"),
    ("frame-timecodes", "true"),
    ("absolute-fragment-times", "true"),
    ("content-type", "video/h264"),
    ("use-original-pts", "false"),
    ("disable-buffer-clipping", "false"),
    ("avg-bandwidth-bps", "2097152"),
    ("framerate", "30"),
    ("max-latency", "60"),
    ("log-config", "../kvs_log_configuration"),
    ("recalculate-metrics", "true"),
    ("get-kvs-metrics", "false"),
    ("replay-duration", "40"),
    ("rotation-period", "3600"),
    ("streaming-type", "realtime"),
];

#[test]
fn every_cpp_kvssink_property_is_accepted_from_gst_launch_and_the_upload_goes_through() {
    let emu = Emu::start();
    emu.create_stream("cpp-props", 1);
    let mut args: Vec<String> = format!(
        "{} ! matroskamux ! {} sync=false",
        video_source(60),
        sink_props(&emu, "cpp-props")
    )
    .split_whitespace()
    .map(str::to_owned)
    .collect();
    args.extend(
        CPP_PROPERTIES
            .iter()
            .map(|(name, value)| format!("{name}={value}")),
    );
    let output = std::process::Command::new("gst-launch-1.0")
        .args(&args)
        .env("GST_PLUGIN_PATH", plugin_dir())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{text}");
    assert!(!text.contains("no property"), "{text}");
    assert!(
        text.contains(
            "these C++ kvssink properties have no effect here: codec-id (it applies to streams on the \
             video/audio request pads; with Matroska input the upstream muxer decided)"
        ),
        "{text}"
    );
    assert!(
        !text.contains("user-agent ("),
        "user-agent has an effect: {text}"
    );
    assert_eq!(unique_frames(&emu.read_back("cpp-props")).len(), 60);

    // Each reads back as set, with the C++ type.
    init();
    let sink = gst::ElementFactory::make("kvssink").build().unwrap();
    for (name, value) in CPP_PROPERTIES {
        sink.set_property_from_str(name, value);
        let read = sink.property_value(name);
        assert_eq!(
            read.serialize().unwrap().trim_matches('"'),
            *value,
            "{name}"
        );
    }
    let defaults = gst::ElementFactory::make("kvssink").build().unwrap();
    assert_eq!(defaults.property::<u32>("completion-timeout"), 10);
    assert_eq!(
        defaults.property::<u32>("avg-bandwidth-bps"),
        4 * 1024 * 1024
    );
    assert_eq!(
        defaults
            .property::<Option<String>>("credential-path")
            .as_deref(),
        Some(".kvs/credential")
    );
}

/// The producer timestamps (seconds) of a stream's fragments, in order.
fn producer_times(emu: &Emu, stream: &str) -> Vec<f64> {
    let (_, listed) = emu.json("/listFragments", json!({"StreamName": stream}));
    let mut times: Vec<f64> = listed["Fragments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["ProducerTimestamp"].as_f64().unwrap())
        .collect();
    times.sort_by(f64::total_cmp);
    times
}

/// Buffers stamped 600 s ahead: by default the fragments carry that capture time; `frame-timecodes=false`
/// stamps them when they arrive, and `streaming-type=offline` starts the stream at the start time and follows
/// the Matroska timeline exactly; `content-type` names the media type of the stream kvssink creates.
#[test]
fn frame_timecodes_streaming_type_and_content_type_do_what_the_cpp_kvssink_does() {
    let emu = Emu::start();
    let wall = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64()
    };
    for (stream, extra, ahead) in [
        ("stamp-capture", "", 600.0),
        (
            "stamp-arrival",
            "frame-timecodes=false content-type=video/h264,audio/aac",
            0.0,
        ),
        ("stamp-offline", "streaming-type=offline", 0.0),
    ] {
        let before = wall();
        let run = run_pipeline(
            &format!(
                "videotestsrc num-buffers=90 timestamp-offset=600000000000 \
                 ! video/x-raw,width=160,height=120,framerate=30/1 \
                 ! x264enc key-int-max=45 bframes=0 tune=zerolatency speed-preset=ultrafast \
                 ! h264parse ! matroskamux ! {} sync=false {extra}",
                sink_props(&emu, stream)
            ),
            Duration::from_secs(60),
        );
        assert_eq!(run.error, None, "{stream}: {:?}", run.warnings);
        let times = producer_times(&emu, stream);
        assert_eq!(times.len(), 2, "{stream}");
        let start = times[0] - ahead;
        assert!(
            start >= before - 1.0 && start <= wall() + 1.0,
            "{stream}: first fragment at {} (now {before})",
            times[0]
        );
        if stream == "stamp-offline" {
            assert_eq!(
                times[1] - times[0],
                1.5,
                "{stream}: the Matroska timeline, exactly"
            );
        }
    }
    let (_, described) = emu.json("/describeStream", json!({"StreamName": "stamp-arrival"}));
    assert_eq!(
        described["StreamInfo"]["MediaType"], "video/h264,audio/aac",
        "{described}"
    );
    let (_, described) = emu.json("/describeStream", json!({"StreamName": "stamp-capture"}));
    assert_eq!(
        described["StreamInfo"]["MediaType"], "video/h264",
        "{described}"
    );
}

/// An emulator that checks signatures, with an IoT credentials endpoint (certificate for 127.0.0.1 signed by
/// the CA `ca`, device certificates by `device-ca`); returns it, the CA's path and a device's certificate and
/// key.
fn iot_emulator(
    pki: &Pki,
    role_aliases: Vec<String>,
    lifetime: Duration,
) -> (
    Emu,
    std::path::PathBuf,
    (std::path::PathBuf, std::path::PathBuf),
) {
    let ca = pki.ca("ca");
    let (cert, key) = pki.leaf("iot-server", "ca", Some("IP:127.0.0.1"));
    let client_ca = pki.ca("device-ca");
    let device = pki.leaf("device", "device-ca", None);
    let emu = Emu::with_config(kvs_emulator::Config {
        credentials: vec![("AKIDTEST".into(), "test-secret".into())],
        iot: Some(kvs_emulator::iot::IotConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            cert,
            key,
            client_ca,
            role_aliases,
            lifetime,
        }),
        ..Default::default()
    });
    (emu, ca, device)
}

/// `iot-certificate` against the emulator's IoT credentials endpoint: a device certificate the test makes gets
/// temporary credentials (the emulator accepts nothing else: it checks signatures), the stream is created and
/// uploaded with them, and read back with other keys. A certificate from another CA, an unknown role alias and
/// a missing key file are start errors naming the cause.
#[test]
fn iot_certificate_gets_credentials_from_the_iot_endpoint_with_a_device_certificate() {
    let pki = Pki::new("iot");
    let (emu, ca, (device_cert, device_key)) = iot_emulator(
        &pki,
        vec!["KvsCameraIoTRoleAlias".into()],
        Duration::from_secs(3600),
    );
    pki.ca("rogue-ca");
    let (rogue_cert, rogue_key) = pki.leaf("rogue", "rogue-ca", None);
    let iot_addr = emu.iot_addr().expect("the IoT endpoint runs");
    let sink = |cert: &std::path::Path, key: &str, alias: &str| {
        format!(
            "kvssink name=sink stream-name=iot-cam endpoint-uri={} region=us-east-1 \
             iot-certificate=\"iot-certificate,endpoint={iot_addr},cert-path={},key-path={key},ca-path={},\
             role-aliases={alias},iot-thing-name=front-door\"",
            emu.url,
            cert.display(),
            ca.display()
        )
    };
    let device_key = device_key.display().to_string();
    let run = run_pipeline(
        &format!(
            "{} ! matroskamux ! tee name=t ! queue ! {} sync=false {CAPTURE}",
            video_source(60),
            sink(&device_cert, &device_key, "KvsCameraIoTRoleAlias")
        ),
        Duration::from_secs(60),
    );
    assert_eq!(run.error, None, "warnings: {:?}", run.warnings);
    assert_eq!(run.acks("PERSISTED"), 2);
    let read = crate::kvssrc::read_range(&emu, "iot-cam", "");
    assert_eq!(read.error, None);
    assert!(
        input_frames(&read.input) == input_frames(&run.input),
        "the frames read back differ"
    );

    let refused =
        |sink: String| start_error(&format!("{} ! matroskamux ! {sink}", video_source(10))).0;
    let error = refused(sink(
        &rogue_cert,
        &rogue_key.display().to_string(),
        "KvsCameraIoTRoleAlias",
    ));
    assert!(
        error.starts_with(&format!(
            "no usable AWS credentials: iot-certificate: the IoT credentials endpoint {iot_addr} ended \
             the connection"
        )) && error.contains("is cert-path a certificate registered with AWS IoT?"),
        "{error}"
    );
    let error = refused(sink(&device_cert, &device_key, "OtherAlias"));
    assert!(
        error.contains(&format!(
            "the IoT credentials endpoint {iot_addr}: HTTP 404: Role alias does not exist"
        )),
        "{error}"
    );
    let error = refused(sink(
        &device_cert,
        "/nonexistent/device.key",
        "KvsCameraIoTRoleAlias",
    ));
    assert!(
        error.contains("iot-certificate: key-path /nonexistent/device.key: "),
        "{error}"
    );
    let error = refused(format!(
        "kvssink name=sink stream-name=iot-cam endpoint-uri={} iot-certificate=\"iot-certificate,endpoint={iot_addr}\"",
        emu.url
    ));
    assert!(
        error.starts_with(
            "iot-certificate lacks cert-path (it needs endpoint, cert-path, key-path and role-aliases)"
        ),
        "{error}"
    );
}

/// An X.509 version 1 device certificate (`openssl x509 -req` without extensions, AWS IoT's own recipe for a
/// certificate signed by your CA) gets credentials and uploads, as the real IoT endpoint takes it; a v1
/// certificate from another CA is refused by the endpoint, and a key that is not the certificate's (v1 or v3) is
/// a start error that says so.
#[test]
fn iot_certificate_takes_an_x509_v1_device_certificate() {
    let pki = Pki::new("iot-v1");
    let (emu, ca, (v3_cert, v3_key)) = iot_emulator(&pki, Vec::new(), Duration::from_secs(3600));
    let (v1_cert, v1_key) = pki.v1_leaf("device-v1", "device-ca");
    pki.ca("rogue-ca");
    let (rogue_cert, rogue_key) = pki.v1_leaf("rogue-v1", "rogue-ca");
    let iot_addr = emu.iot_addr().expect("the IoT endpoint runs");
    let sink = |cert: &std::path::Path, key: &std::path::Path| {
        format!(
            "kvssink name=sink stream-name=iot-v1 endpoint-uri={} region=us-east-1 \
             iot-certificate=\"iot-certificate,endpoint={iot_addr},cert-path={},key-path={},ca-path={},\
             role-aliases=KvsCameraIoTRoleAlias\"",
            emu.url,
            cert.display(),
            key.display(),
            ca.display()
        )
    };
    let run = run_pipeline(
        &format!(
            "{} ! matroskamux ! tee name=t ! queue ! {} sync=false {CAPTURE}",
            video_source(60),
            sink(&v1_cert, &v1_key)
        ),
        Duration::from_secs(60),
    );
    assert_eq!(run.error, None, "warnings: {:?}", run.warnings);
    assert_eq!(run.acks("PERSISTED"), 2);
    let read = crate::kvssrc::read_range(&emu, "iot-v1", "");
    assert!(
        input_frames(&read.input) == input_frames(&run.input),
        "the frames read back differ"
    );

    let refused =
        |sink: String| start_error(&format!("{} ! matroskamux ! {sink}", video_source(10))).0;
    let error = refused(sink(&rogue_cert, &rogue_key));
    assert!(
        error.starts_with(&format!(
            "no usable AWS credentials: iot-certificate: the IoT credentials endpoint {iot_addr} ended \
             the connection"
        )),
        "{error}"
    );
    // Another certificate's key, with a v1 certificate (checked by kvssink itself) and a v3 one (by rustls).
    for (cert, key) in [(&v1_cert, &v3_key), (&v3_cert, &v1_key)] {
        let error = refused(sink(cert, key));
        assert!(
            error.contains(
                "iot-certificate: cert-path and key-path do not make a client certificate: the private key \
                 in key-path is not the one of the certificate in cert-path"
            ),
            "{error}"
        );
    }
}

/// IoT credentials that last 3 s (the emulator refuses them after that, as the service refuses expired
/// temporary credentials) over an 8-s live upload that opens a connection every second: kvssink asks the IoT
/// endpoint again before they expire, and every frame is stored.
#[test]
fn iot_credentials_are_renewed_before_they_expire() {
    let pki = Pki::new("iot-renew");
    let (emu, ca, (device_cert, device_key)) =
        iot_emulator(&pki, Vec::new(), Duration::from_secs(3));
    let description = format!(
        "videotestsrc is-live=true num-buffers=240 ! video/x-raw,width=160,height=120,framerate=30/1 \
         ! x264enc key-int-max=15 bframes=0 tune=zerolatency speed-preset=ultrafast ! h264parse ! matroskamux \
         ! tee name=t ! queue ! kvssink name=sink stream-name=iot-renew endpoint-uri={} region=us-east-1 \
         connection-rotation=1 iot-certificate=\"iot-certificate,endpoint={},cert-path={},key-path={},ca-path={},\
         role-aliases=KvsCameraIoTRoleAlias\" {CAPTURE}",
        emu.url,
        emu.iot_addr().unwrap(),
        device_cert.display(),
        device_key.display(),
        ca.display()
    );
    let run = run_pipeline(&description, Duration::from_secs(60));
    assert_eq!(run.error, None, "warnings: {:?}", run.warnings);
    assert!(run.stat("connections") >= 5, "{:?}", run.stats);
    let read = crate::kvssrc::read_range(&emu, "iot-renew", "");
    assert_eq!(read.error, None);
    assert_eq!(input_frames(&read.input).len(), 240);
    assert!(
        input_frames(&read.input) == input_frames(&run.input),
        "the frames read back differ"
    );
}

/// The C++ SDK's credential file, rewritten with a new key mid-stream; the old key is then revoked. kvssink
/// opens a new connection every second, each signed with what the file says then: every frame is stored.
#[test]
fn credential_path_rotated_mid_stream_loses_nothing() {
    let emu = Emu::with_config(kvs_emulator::Config {
        credentials: vec![
            ("KEYONE".into(), "secret-one".into()),
            ("KEYTWO".into(), "secret-two-longer".into()),
        ],
        ..Default::default()
    });
    let dir = std::env::temp_dir().join(format!("kvs-credential-path-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("credential");
    let sink = |stream: &str, path: &std::path::Path| {
        format!(
            "kvssink name=sink stream-name={stream} endpoint-uri={} region=us-east-1 credential-path={}",
            emu.url,
            path.display()
        )
    };
    // A missing file is a start error naming it.
    let (error, _) = start_error(&format!(
        "{} ! matroskamux ! {}",
        video_source(10),
        sink("rotated", &dir.join("missing"))
    ));
    assert!(
        error.contains(&format!(
            "credential-path {}/missing: No such file",
            dir.display()
        )),
        "{error}"
    );

    std::fs::write(&file, "CREDENTIALS KEYONE secret-one\n").unwrap();
    let description = format!(
        "videotestsrc is-live=true num-buffers=150 ! video/x-raw,width=160,height=120,framerate=30/1 \
         ! x264enc key-int-max=15 bframes=0 tune=zerolatency speed-preset=ultrafast ! h264parse \
         ! matroskamux ! tee name=t ! queue ! {} connection-rotation=1 {CAPTURE}",
        sink("rotated", &file)
    );
    let url = emu.url.clone();
    let rotated = file.clone();
    let run = run_pipeline_with(&description, Duration::from_secs(60), move |_| {
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(1500));
            std::fs::write(
                &rotated,
                "CREDENTIALS KEYTWO 2099-01-01T00:00:00Z secret-two-longer TOKEN2\n",
            )
            .unwrap();
            std::thread::sleep(Duration::from_millis(1000));
            let revoked = Emu::external(&url).call("DELETE", "/_emulator/credentials/KEYONE", "");
            assert_eq!(revoked.0, 200, "{}", String::from_utf8_lossy(&revoked.1));
        });
    });
    assert_eq!(run.error, None, "warnings: {:?}", run.warnings);
    assert_eq!(input_frames(&run.input).len(), 150);
    assert!(run.stat("connections") >= 4, "{:?}", run.stats);
    // Read back through kvssrc with the new key (the emulator refuses unsigned calls, and now the old key).
    let read = crate::kvssrc::read_range(
        &emu,
        "rotated",
        "access-key=KEYTWO secret-access-key=secret-two-longer",
    );
    assert_eq!(read.error, None);
    assert!(
        input_frames(&read.input) == input_frames(&run.input),
        "the frames read back differ"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn restart_on_error_false_makes_the_first_failure_final() {
    let emu = Emu::start();
    emu.create_stream("no-restart", 1);
    emu.fault(
        json!({"api": "putMedia", "kind": "drop_after_bytes", "bytes": 20000, "close": "reset"}),
    );
    let run = upload(&emu, "no-restart", 120, "restart-on-error=false");
    let error = run.error.expect("an element error");
    // The reset is seen on the read side ("the connection broke") or, under load, on the write side first.
    assert!(
        error.starts_with("the connection broke")
            || error.starts_with("the connection closed while sending"),
        "{error}"
    );
    assert!(error.contains("(restart-on-error is false)"), "{error}");
    assert!(
        run.gerror.unwrap().matches(gst::ResourceError::Write),
        "{error}"
    );
}

#[test]
fn the_cpp_signals_fragment_ack_and_stream_error_carry_structures() {
    let emu = Emu::start();
    emu.create_stream("signals", 1);
    emu.fault(json!({"api": "putMedia", "kind": "error_ack", "fragment": 2, "error_id": 5000}));
    let acks = Arc::new(Mutex::new(Vec::<String>::new()));
    let errors = Arc::new(Mutex::new(Vec::<gst::Structure>::new()));
    let description = format!(
        "{} ! matroskamux ! {} sync=false",
        video_source(90),
        sink_props(&emu, "signals")
    );
    let (a, e) = (acks.clone(), errors.clone());
    let run = run_pipeline_with(&description, Duration::from_secs(60), move |pipeline| {
        let sink = pipeline.by_name("sink").unwrap();
        sink.connect("fragment-ack", false, move |args| {
            let ack = args[1].get::<gst::Structure>().unwrap();
            a.lock()
                .unwrap()
                .push(ack.get::<String>("event-type").unwrap());
            None
        });
        sink.connect("stream-error", false, move |args| {
            e.lock()
                .unwrap()
                .push(args[1].get::<gst::Structure>().unwrap());
            None
        });
    });
    assert_eq!(run.error, None);
    let acks = acks.lock().unwrap().clone();
    assert_eq!(
        acks.iter().filter(|k| *k == "PERSISTED").count(),
        3,
        "{acks:?}"
    );
    assert_eq!(
        acks.len(),
        run.messages_named("kvssink-ack").len(),
        "one signal per ACK message"
    );
    let errors = errors.lock().unwrap().clone();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].get::<u32>("error-id").unwrap(), 5000);
    assert!(!errors[0].get::<bool>("fatal").unwrap());
    assert_eq!(
        errors[0].get::<String>("reason").unwrap(),
        "ERROR ACK 5000 INTERNAL_ERROR"
    );
}

/// Metadata sent to kvssink before the upload starts goes with its first fragment; metadata without a name is
/// a warning, as is `streaming-type=near-realtime` (uploaded as realtime).
#[test]
fn early_metadata_is_kept_and_a_nameless_one_and_near_realtime_are_warnings() {
    let emu = Emu::start();
    emu.create_stream("early-meta", 1);
    let description = format!(
        "{} ! matroskamux ! {} sync=false streaming-type=near-realtime",
        video_source(60),
        sink_props(&emu, "early-meta")
    );
    let run = run_pipeline_with(&description, Duration::from_secs(60), |pipeline| {
        let sink = pipeline.by_name("sink").unwrap();
        for name in ["door", ""] {
            let s = gst::Structure::builder("kvs-add-metadata")
                .field("name", name)
                .field("value", "open")
                .field("persist", false)
                .build();
            assert!(sink.send_event(gst::event::CustomDownstream::new(s)));
        }
    });
    assert_eq!(run.error, None);
    let nameless =
        "metadata \"\": a name takes 1 to 128 bytes and a value at most 256 (the KVS limits)";
    assert!(
        run.warnings.iter().any(|w| w.contains(nameless)),
        "{:?}",
        run.warnings
    );
    assert!(
        run.warnings.iter().any(|w| w.starts_with(
            "streaming-type=near-realtime is uploaded as realtime: each frame goes out as it comes"
        )),
        "{:?}",
        run.warnings
    );
    let mut first_tags = Vec::new();
    for event in kvs_mkv::read_all(&emu.read_back("early-meta")).unwrap() {
        match event {
            kvs_mkv::Event::ClusterStart { .. } => break,
            kvs_mkv::Event::Element(e) if e.id == kvs_mkv::ebml::id::TAGS => {
                for tag in kvs_mkv::tags::parse_tags(&e.data()).unwrap() {
                    first_tags.push(format!("{}={}", tag.name, tag.value));
                }
            }
            _ => {}
        }
    }
    assert!(
        first_tags.contains(&"door=open".to_owned()),
        "{first_tags:?}"
    );
}
