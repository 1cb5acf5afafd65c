// SPDX-License-Identifier: MPL-2.0

//! `kvs://` URIs: the element a URI makes and the properties it sets, the URIs refused and why; `playbin`,
//! `gst-play-1.0` and `gst-launch-1.0 playbin` playing streams from the emulator, frame for frame, with the
//! range read's GST_MESSAGE_PROGRESS.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::*;
use crate::kvssrc::{now_s, produce};
use gst::prelude::*;

const FRAME_BYTES: usize = 320 * 240 * 3 / 2;

fn uri_error(kind: gst::URIType, uri: &str) -> String {
    init();
    match gst::Element::make_from_uri(kind, uri, None) {
        Ok(element) => panic!("{uri} made {:?}", element.factory().map(|f| f.name())),
        Err(e) => {
            assert!(
                e.matches(gst::URIError::BadUri) || e.matches(gst::URIError::UnsupportedProtocol),
                "{e:?}"
            );
            e.message().to_owned()
        }
    }
}

#[test]
fn a_kvs_uri_makes_kvssrc_or_kvssink_and_sets_their_properties() {
    init();
    let uri = "kvs://cam_1.a-B?start-selector=producer-timestamp&start-timestamp=2026-11-28T10:00:00Z\
               &end-timestamp=1795860000.5&endpoint=http://127.0.0.1:4567&region=eu-west-1";
    let src = gst::Element::make_from_uri(gst::URIType::Src, uri, None).unwrap();
    assert_eq!(src.factory().unwrap().name(), "kvssrc");
    assert_eq!(
        src.property::<Option<String>>("stream-name").as_deref(),
        Some("cam_1.a-B")
    );
    assert_eq!(
        src.property_value("start-selector").serialize().unwrap(),
        "producer-timestamp"
    );
    assert_eq!(src.property::<f64>("start-timestamp"), 1_795_860_000.0);
    assert_eq!(src.property::<f64>("end-timestamp"), 1_795_860_000.5);
    assert_eq!(
        src.property::<Option<String>>("endpoint-uri").as_deref(),
        Some("http://127.0.0.1:4567")
    );
    assert_eq!(
        src.property::<Option<String>>("region").as_deref(),
        Some("eu-west-1")
    );
    let handler = src.dynamic_cast_ref::<gst::URIHandler>().unwrap();
    assert_eq!(
        handler.uri().unwrap(),
        "kvs://cam_1.a-B?region=eu-west-1&endpoint-uri=http%3A%2F%2F127.0.0.1%3A4567\
         &start-selector=producer-timestamp&start-timestamp=1795860000&end-timestamp=1795860000.5"
    );
    // A URI says all it sets: what the next one leaves out goes back to its default. Credentials set as
    // properties stay.
    src.set_property("access-key", "AKIDKEEP");
    handler.set_uri("kvs:///cam2?mode=raw").unwrap();
    assert_eq!(handler.uri().unwrap(), "kvs://cam2?mode=raw");
    assert_eq!(
        src.property_value("start-selector").serialize().unwrap(),
        "now"
    );
    assert_eq!(src.property::<Option<String>>("endpoint-uri"), None);
    assert_eq!(
        src.property::<Option<String>>("access-key").as_deref(),
        Some("AKIDKEEP")
    );

    let sink = gst::Element::make_from_uri(
        gst::URIType::Sink,
        "kvs://cam1?storage-size=64&fragment-acks=false",
        None,
    )
    .unwrap();
    assert_eq!(sink.factory().unwrap().name(), "kvssink");
    assert_eq!(sink.property::<u32>("storage-size"), 64);
    assert!(!sink.property::<bool>("fragment-acks"));
    assert_eq!(
        sink.dynamic_cast_ref::<gst::URIHandler>()
            .unwrap()
            .uri()
            .unwrap(),
        "kvs://cam1?fragment-acks=false&storage-size=64"
    );
    for (factory, kind) in [
        ("kvssrc", gst::URIType::Src),
        ("kvssink", gst::URIType::Sink),
    ] {
        let factory = gst::ElementFactory::find(factory).unwrap();
        assert_eq!(factory.uri_type(), kind);
        assert_eq!(factory.uri_protocols(), ["kvs"]);
        assert!(
            factory.rank() >= gst::Rank::MARGINAL,
            "playbin needs a rank to pick it"
        );
    }
}

#[test]
fn bad_kvs_uris_are_refused_with_the_reason() {
    let credentials = "use the AWS environment variables, a profile or the element's properties";
    assert_eq!(
        uri_error(gst::URIType::Src, "kvs://AKID:SECRET@cam1"),
        format!("credentials never go in a kvs:// URI: {credentials}")
    );
    for key in [
        "secret-key",
        "secret-access-key",
        "session-token",
        "access-key",
    ] {
        assert_eq!(
            uri_error(gst::URIType::Sink, &format!("kvs://cam1?{key}=x")),
            format!("credentials never go in a kvs:// URI ('{key}'): {credentials}")
        );
    }
    assert_eq!(
        uri_error(gst::URIType::Src, "kvs://cam1?start-selector=bogus"),
        "start-selector: 'bogus' is not a valid value (one of now, earliest, fragment-number, server-timestamp, \
         producer-timestamp, continuation-token)"
    );
    assert_eq!(
        uri_error(gst::URIType::Src, "kvs://cam1?parallel-downloads=1000"),
        "parallel-downloads: '1000' is not a valid value (an integer from 0 to 64)"
    );
    assert_eq!(
        uri_error(gst::URIType::Src, "kvs://cam1?start-timestamp=yesterday"),
        "start-timestamp: 'yesterday' is neither seconds since the Unix epoch nor an RFC 3339 time"
    );
    let unknown = uri_error(gst::URIType::Src, "kvs://cam1?storage-size=64");
    assert!(
        unknown.starts_with(
            "'storage-size' cannot be set in a kvs:// URI of kvssrc; these can: region, "
        ),
        "{unknown}"
    );
    assert_eq!(
        uri_error(gst::URIType::Src, "kvs://ca$m"),
        "'kvs://ca$m': the stream name 'ca$m' is not valid (1 to 256 letters, digits, '_', '.' or '-')"
    );
    assert_eq!(
        uri_error(gst::URIType::Src, "kvs://"),
        "'kvs://': the stream name '' is not valid (1 to 256 letters, digits, '_', '.' or '-')"
    );
}

/// Decodes Matroska H.264 to raw I420 frames, back to back.
fn decode(mkv: &[u8]) -> Vec<u8> {
    static COUNT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = std::env::temp_dir().join(format!("kvs-uri-ref-{}-{n}.mkv", std::process::id()));
    std::fs::write(&path, mkv).unwrap();
    let run = run_pipeline(
        &format!(
            "filesrc location={} ! matroskademux ! h264parse ! avdec_h264 ! videoconvert ! video/x-raw,format=I420 \
             ! appsink name=capture sync=false",
            path.display()
        ),
        Duration::from_secs(60),
    );
    std::fs::remove_file(&path).unwrap();
    assert_eq!(run.error, None);
    run.input
}

/// Makes `playbin`'s video end in an appsink collecting I420 frames into `decoded`; credentials go to kvssrc in
/// `source-setup`, the way applications give them.
fn set_up_playbin(playbin: &gst::Element, decoded: Arc<Mutex<Vec<u8>>>) {
    let video = gst::parse::bin_from_description(
        "videoconvert ! video/x-raw,format=I420 ! appsink name=capture sync=true",
        true,
    )
    .unwrap();
    capture_into(&video.by_name("capture").unwrap(), decoded);
    playbin.set_property("video-sink", &video);
    playbin.set_property(
        "audio-sink",
        gst::ElementFactory::make("fakesink").build().unwrap(),
    );
    playbin.connect("source-setup", false, |args| {
        let source = args[1].get::<gst::Element>().unwrap();
        assert_eq!(source.factory().unwrap().name(), "kvssrc");
        source.set_property("access-key", "AKIDTEST");
        source.set_property("secret-access-key", "test-secret");
        None
    });
}

#[test]
fn playbin_plays_a_range_from_a_kvs_uri_frame_for_frame_and_posts_progress() {
    let emu = Emu::start();
    emu.create_stream("play-range", 1);
    let input = produce(&emu, "play-range", 150, "");
    let expected = decode(&input);
    assert_eq!(expected.len(), 150 * FRAME_BYTES);

    let uri = format!(
        "kvs://play-range?start-selector=earliest&end-timestamp={:.3}&endpoint-uri={}&region=us-east-1",
        now_s(),
        emu.url
    );
    let decoded = Arc::new(Mutex::new(Vec::new()));
    let capture = decoded.clone();
    let run = run_pipeline_with(
        &format!("playbin uri=\"{uri}\""),
        Duration::from_secs(60),
        move |pipeline| set_up_playbin(pipeline.upcast_ref(), capture),
    );
    assert_eq!(run.error, None);
    let progress = run.progress;
    let decoded = std::mem::take(&mut *decoded.lock().unwrap());
    assert_eq!(decoded.len() / FRAME_BYTES, 150, "every frame played once");
    assert!(
        decoded == expected,
        "decoded frames differ from the input's"
    );

    // Progress: a start, continues with a growing percentage, one complete at 100%: what gst-launch-1.0 waits
    // on and prints.
    assert!(progress.len() >= 2, "{progress:?}");
    assert!(
        progress.iter().all(|(_, code, _, _)| code == "kvs-read"),
        "{progress:?}"
    );
    assert_eq!(progress[0].0, gst::ProgressType::Start, "{progress:?}");
    let last = progress.last().unwrap();
    assert_eq!(
        (last.0, last.2.as_str(), last.3),
        (
            gst::ProgressType::Complete,
            "Read 5 of 5 fragments (100%)",
            100
        )
    );
    assert!(
        progress[1..progress.len() - 1]
            .iter()
            .all(|p| p.0 == gst::ProgressType::Continue),
        "{progress:?}"
    );
    assert!(
        progress.windows(2).all(|w| w[0].3 <= w[1].3),
        "{progress:?}"
    );
}

#[test]
fn playbin_plays_a_live_kvs_uri_while_the_stream_is_uploaded() {
    let emu = Emu::start();
    emu.create_stream("play-live", 1);
    let uri = format!("kvs://play-live?endpoint-uri={}&region=us-east-1", emu.url);
    let decoded = Arc::new(Mutex::new(Vec::new()));
    init();
    let pipeline = gst::ElementFactory::make("playbin")
        .property("uri", &uri)
        .build()
        .unwrap();
    set_up_playbin(&pipeline, decoded.clone());
    pipeline.set_state(gst::State::Playing).unwrap();
    // The reader waits for the first fragment (decodebin exposes its pads once it has seen data).
    std::thread::sleep(Duration::from_millis(500));

    let input = produce(&emu, "play-live", 90, "");
    let expected = decode(&input);
    let deadline = Instant::now() + Duration::from_secs(30);
    while decoded.lock().unwrap().len() < expected.len() && Instant::now() < deadline {
        if let Some(message) = pipeline.bus().unwrap().timed_pop_filtered(
            gst::ClockTime::from_mseconds(100),
            &[gst::MessageType::Error],
        ) {
            panic!("{message:?}");
        }
    }
    pipeline.set_state(gst::State::Null).unwrap();
    let decoded = std::mem::take(&mut *decoded.lock().unwrap());
    assert_eq!(decoded.len() / FRAME_BYTES, 90, "every frame played once");
    assert!(
        decoded == expected,
        "decoded frames differ from the input's"
    );
}

#[test]
fn gst_play_and_gst_launch_playbin_play_a_kvs_uri_with_the_endpoint_from_the_environment() {
    let emu = Emu::start();
    emu.create_stream("play-cli", 1);
    produce(&emu, "play-cli", 90, "");
    let uri = format!(
        "kvs://play-cli?start-selector=earliest&end-timestamp={:.3}",
        now_s()
    );
    let plugin_dir = plugin_dir();
    let run = |program: &str, args: &[&str]| {
        let output = std::process::Command::new(program)
            .args(args)
            .env("GST_PLUGIN_PATH", &plugin_dir)
            .env("CONTROL_PLANE_URI", &emu.url)
            .env("AWS_ACCESS_KEY_ID", "AKIDTEST")
            .env("AWS_SECRET_ACCESS_KEY", "test-secret")
            .env("AWS_REGION", "us-east-1")
            .env_remove("GST_DEBUG")
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(output.status.success(), "{program}: {text}");
        text
    };
    let played = run(
        "gst-play-1.0",
        &["--no-interactive", "--videosink=fakesink sync=true", &uri],
    );
    assert!(played.contains(&format!("Now playing {uri}")), "{played}");
    assert!(played.contains("Reached end of play list."), "{played}");
    assert!(!played.contains("ERROR"), "{played}");

    let launched = run(
        "gst-launch-1.0",
        &[
            "playbin",
            &format!("uri={uri}"),
            "video-sink=fakesink sync=true",
        ],
    );
    assert!(
        launched.contains("Progress: (kvs-read) Read 3 of 3 fragments (100%)"),
        "{launched}"
    );
    assert!(
        launched.contains("Got EOS from element \"playbin0\""),
        "{launched}"
    );
}
