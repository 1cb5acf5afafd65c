// SPDX-License-Identifier: MPL-2.0

//! kvssink's request pads (`video_%u`, `audio_%u`): elementary H.264, H.265 and AAC linked straight to kvssink
//! as with the C++ kvssink, uploaded and read back frame for frame; the C++ documentation's pipelines run by
//! `gst-launch-1.0` with only the endpoint (`CONTROL_PLANE_URI`) and the sources changed; what is refused.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::*;
use gst::prelude::*;

/// Collects each buffer the appsink `name` receives, one entry per buffer.
fn collect(pipeline: &gst::Pipeline, name: &str) -> Arc<Mutex<Vec<Vec<u8>>>> {
    let frames = Arc::new(Mutex::new(Vec::new()));
    let appsink = pipeline
        .by_name(name)
        .unwrap()
        .downcast::<gst_app::AppSink>()
        .unwrap();
    let sink_frames = frames.clone();
    appsink.set_callbacks(
        gst_app::AppSinkCallbacks::builder()
            .new_sample(move |sink| {
                let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                let buffer = sample.buffer().ok_or(gst::FlowError::Error)?;
                sink_frames
                    .lock()
                    .unwrap()
                    .push(buffer.map_readable().unwrap().to_vec());
                Ok(gst::FlowSuccess::Ok)
            })
            .build(),
    );
    frames
}

/// The stored stream's tracks (name, codec ID, type) and its frames per track type, re-sent fragments left out.
struct Stored {
    tracks: Vec<(Option<String>, String, u64)>,
    video: Vec<Vec<u8>>,
    audio: Vec<Vec<u8>>,
}

fn stored(emu: &Emu, stream: &str) -> Stored {
    let data = emu.read_back(stream);
    let header = kvs_mkv::read_all(&data)
        .expect("valid Matroska")
        .into_iter()
        .find_map(|event| match event {
            kvs_mkv::Event::Element(element) if element.id == kvs_mkv::ebml::id::TRACKS => {
                Some(kvs_mkv::header::tracks(&element.data()).unwrap())
            }
            _ => None,
        })
        .unwrap_or_default();
    let kind_of = |number: u64| {
        header
            .iter()
            .find(|t| t.number == number)
            .map(|t| t.track_type)
    };
    let (mut video, mut audio) = (Vec::new(), Vec::new());
    for (track, payload) in unique_frames(&data) {
        match kind_of(track) {
            Some(kvs_mkv::header::TRACK_TYPE_VIDEO) => video.push(payload),
            Some(kvs_mkv::header::TRACK_TYPE_AUDIO) => audio.push(payload),
            other => panic!("a frame of track {track} ({other:?})"),
        }
    }
    let mut tracks: Vec<_> = header
        .into_iter()
        .map(|t| (t.name, t.codec_id, t.track_type))
        .collect();
    tracks.sort_by_key(|t| t.2);
    Stored {
        tracks,
        video,
        audio,
    }
}

const H264_CPP: &str = "x264enc bframes=0 key-int-max=45 tune=zerolatency speed-preset=ultrafast \
     ! video/x-h264,stream-format=avc,alignment=au,profile=baseline";

fn raw_video(frames: u32) -> String {
    format!(
        "videotestsrc num-buffers={frames} pattern=ball ! video/x-raw,format=I420,width=320,height=240,framerate=30/1"
    )
}

#[test]
fn h264_linked_straight_to_kvssink_is_stored_frame_for_frame_with_the_cpp_track() {
    let emu = Emu::start();
    emu.create_stream("h264", 1);
    let description = format!(
        "{} ! {H264_CPP} ! tee name=v ! queue ! {} sync=false v. ! queue ! appsink name=vcap sync=false",
        raw_video(90),
        sink_props(&emu, "h264")
    );
    let mut video_in = None;
    let run = run_pipeline_with(&description, Duration::from_secs(60), |pipeline| {
        video_in = Some(collect(pipeline, "vcap"));
        let sink = pipeline.by_name("sink").unwrap();
        assert!(
            sink.static_pad("video_0").is_some(),
            "gst-launch linked the video_%u pad"
        );
    });
    assert_eq!(run.error, None, "warnings: {:?}", run.warnings);
    let video_in = video_in.unwrap().lock().unwrap().clone();
    assert_eq!(video_in.len(), 90);
    let stored = stored(&emu, "h264");
    assert_eq!(
        stored.tracks,
        [(
            Some("kinesis_video".to_owned()),
            "V_MPEG4/ISO/AVC".to_owned(),
            1
        )]
    );
    assert_eq!(stored.video.len(), 90);
    assert!(
        stored.video == video_in,
        "the frames read back differ from the frames uploaded"
    );
    // A key frame every 45 frames: two fragments, both persisted.
    assert_eq!(run.acks("PERSISTED"), 2, "{:?}", run.messages);
}

#[test]
fn h264_and_aac_on_request_pads_are_stored_frame_for_frame() {
    let emu = Emu::start();
    emu.create_stream("av", 1);
    let description = format!(
        "{} sync=false track-name=front-door {} ! {H264_CPP} ! tee name=v ! queue ! sink. \
         v. ! queue ! appsink name=vcap sync=false \
         audiotestsrc num-buffers=140 samplesperbuffer=1024 ! audio/x-raw,rate=48000,channels=2 ! avenc_aac \
         ! tee name=a ! queue ! sink. a. ! queue ! appsink name=acap sync=false",
        sink_props(&emu, "av"),
        raw_video(90),
    );
    let (mut video_in, mut audio_in) = (None, None);
    let run = run_pipeline_with(&description, Duration::from_secs(60), |pipeline| {
        video_in = Some(collect(pipeline, "vcap"));
        audio_in = Some(collect(pipeline, "acap"));
    });
    assert_eq!(run.error, None, "warnings: {:?}", run.warnings);
    let video_in = video_in.unwrap().lock().unwrap().clone();
    let audio_in = audio_in.unwrap().lock().unwrap().clone();
    let stored = stored(&emu, "av");
    assert_eq!(
        stored.tracks,
        [
            (
                Some("front-door".to_owned()),
                "V_MPEG4/ISO/AVC".to_owned(),
                1
            ),
            (Some("audio".to_owned()), "A_AAC".to_owned(), 2)
        ]
    );
    assert_eq!(
        (stored.video.len(), stored.audio.len()),
        (video_in.len(), audio_in.len())
    );
    assert!(stored.video == video_in, "video frames differ");
    assert!(stored.audio == audio_in, "audio frames differ");
}

#[test]
fn h265_linked_straight_to_kvssink_is_stored_frame_for_frame() {
    // kvssink creates the stream, with the media type of its first header.
    let emu = Emu::start();
    let description = format!(
        "{} ! x265enc tune=zerolatency speed-preset=ultrafast key-int-max=30 ! h265parse \
         ! video/x-h265,stream-format=hvc1,alignment=au ! tee name=v ! queue ! {} sync=false \
         v. ! queue ! appsink name=vcap sync=false",
        raw_video(60),
        sink_props(&emu, "h265")
    );
    let mut video_in = None;
    let run = run_pipeline_with(&description, Duration::from_secs(60), |pipeline| {
        video_in = Some(collect(pipeline, "vcap"));
    });
    assert_eq!(run.error, None, "warnings: {:?}", run.warnings);
    let video_in = video_in.unwrap().lock().unwrap().clone();
    assert_eq!(video_in.len(), 60);
    let stored = stored(&emu, "h265");
    assert_eq!(
        stored.tracks,
        [(
            Some("kinesis_video".to_owned()),
            "V_MPEGH/ISO/HEVC".to_owned(),
            1
        )]
    );
    assert!(
        stored.video == video_in,
        "the frames read back differ from the frames uploaded"
    );
    let (_, description) = emu.json("/describeStream", serde_json::json!({"StreamName": "h265"}));
    assert_eq!(
        description["StreamInfo"]["MediaType"], "video/h265",
        "{description}"
    );
}

/// `matroskademux ! h264parse` gives key frames without a DTS: the C++ kvssink drops them (and so the whole
/// stream); kvssink muxes them by their PTS.
#[test]
fn key_frames_without_dts_from_matroskademux_are_uploaded() {
    let emu = Emu::start();
    emu.create_stream("demuxed", 1);
    let dir = std::env::temp_dir().join(format!("kvs-demuxed-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("in.mkv");
    let made = run_pipeline(
        &format!(
            "{} ! {H264_CPP} ! matroskamux ! filesink location={}",
            raw_video(60),
            file.display()
        ),
        Duration::from_secs(60),
    );
    assert_eq!(made.error, None);
    let recorded = input_frames(&std::fs::read(&file).unwrap());
    assert_eq!(recorded.len(), 60);
    let no_dts_key_frames = Arc::new(Mutex::new(0));
    let counted = no_dts_key_frames.clone();
    let run = run_pipeline_with(
        &format!(
            "filesrc location={} ! matroskademux ! h264parse name=parse ! {} sync=false",
            file.display(),
            sink_props(&emu, "demuxed")
        ),
        Duration::from_secs(60),
        move |pipeline| {
            let sink = pipeline.by_name("sink").unwrap();
            assert!(sink.static_pad("video_0").is_some(), "linked to video_0");
            let pad = pipeline
                .by_name("parse")
                .unwrap()
                .static_pad("src")
                .unwrap();
            pad.add_probe(gst::PadProbeType::BUFFER, move |_, info| {
                if let Some(gst::PadProbeData::Buffer(buffer)) = &info.data
                    && buffer.dts().is_none()
                    && !buffer.flags().contains(gst::BufferFlags::DELTA_UNIT)
                {
                    *counted.lock().unwrap() += 1;
                }
                gst::PadProbeReturn::Ok
            });
        },
    );
    assert_eq!(run.error, None, "warnings: {:?}", run.warnings);
    assert_eq!(
        *no_dts_key_frames.lock().unwrap(),
        2,
        "the key frames came without a DTS"
    );
    let stored = stored(&emu, "demuxed");
    let recorded: Vec<Vec<u8>> = recorded.into_iter().map(|(_, payload)| payload).collect();
    assert!(
        stored.video == recorded,
        "{} frames stored of {}",
        stored.video.len(),
        recorded.len()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The C++ kvssink documentation's pipelines, run by `gst-launch-1.0` as they are written there: the same
/// elements, caps and kvssink properties; only the sources are test sources (no camera or microphone here) and
/// the endpoint comes from `CONTROL_PLANE_URI`, as the C++ element reads it.
const DOC_PIPELINES: [(&str, &str, usize, bool); 3] = [
    (
        "doc-video",
        "videotestsrc is-live=true num-buffers=60 ! videoconvert ! video/x-raw,format=I420,width=640,height=480 \
         ! x264enc bframes=0 key-int-max=45 bitrate=500 tune=zerolatency \
         ! video/x-h264,stream-format=avc,alignment=au,profile=baseline \
         ! kvssink stream-name=doc-video storage-size=128 access-key=YourAccessKey secret-key=YourSecretKey aws-region=us-west-2",
        60,
        false,
    ),
    (
        "doc-av",
        "videotestsrc is-live=true num-buffers=60 ! videoconvert ! video/x-raw,format=I420,width=640,height=480,framerate=30/1 \
         ! x264enc bframes=0 key-int-max=45 bitrate=500 tune=zerolatency \
         ! video/x-h264,stream-format=avc,alignment=au,profile=baseline \
         ! kvssink name=sink stream-name=doc-av access-key=YourAccessKey secret-key=YourSecretKey aws-region=us-west-2 \
         audiotestsrc is-live=true num-buffers=86 ! audioconvert ! avenc_aac ! queue ! sink.",
        60,
        true,
    ),
    (
        "doc-h265",
        "videotestsrc is-live=true num-buffers=60 ! video/x-raw,framerate=30/1,width=640,height=480 \
         ! x265enc tune=zerolatency ! h265parse ! video/x-h265,stream-format=hvc1,alignment=au,profile=main \
         ! kvssink stream-name=doc-h265 access-key=YourAccessKey secret-key=YourSecretKey aws-region=us-west-2",
        60,
        false,
    ),
];

#[test]
fn the_cpp_documentation_pipelines_run_unchanged_with_gst_launch() {
    let emu = Emu::start();
    for (stream, pipeline, video_frames, audio) in DOC_PIPELINES {
        let mut args = vec!["-e".to_owned()];
        args.extend(pipeline.split_whitespace().map(str::to_owned));
        let output = std::process::Command::new("gst-launch-1.0")
            .args(&args)
            .env("GST_PLUGIN_PATH", plugin_dir())
            .env("CONTROL_PLANE_URI", &emu.url)
            .env_remove("AWS_PROFILE")
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(output.status.success(), "{stream}: {text}");
        let stored = stored(&emu, stream);
        assert_eq!(
            stored.video.len(),
            video_frames,
            "{stream}: video frames stored"
        );
        if audio {
            // 86 buffers of 1024 samples, and the frame avenc_aac's priming delay pushes out at EOS.
            assert_eq!(stored.audio.len(), 87, "{stream}: audio frames stored");
            assert_eq!(
                stored.tracks[1],
                (Some("audio".to_owned()), "A_AAC".to_owned(), 2)
            );
        } else {
            assert!(stored.audio.is_empty());
        }
        println!(
            "{stream}: {} video and {} audio frames stored",
            stored.video.len(),
            stored.audio.len()
        );
    }
}

#[test]
fn metadata_sent_into_a_request_pad_is_stored_with_the_next_fragment() {
    let emu = Emu::start();
    emu.create_stream("padmeta", 1);
    let description = format!(
        "{} ! {H264_CPP} ! {} sync=false",
        raw_video(90),
        sink_props(&emu, "padmeta")
    );
    let run = run_pipeline_with(&description, Duration::from_secs(60), |pipeline| {
        let pad = pipeline
            .by_name("sink")
            .unwrap()
            .static_pad("video_0")
            .unwrap();
        let sent = std::sync::atomic::AtomicBool::new(false);
        pad.add_probe(gst::PadProbeType::BUFFER, move |pad, _| {
            if !sent.swap(true, std::sync::atomic::Ordering::SeqCst) {
                let s = gst::Structure::builder("kvs-add-metadata")
                    .field("name", "camera")
                    .field("value", "front door")
                    .field("persist", true)
                    .build();
                assert!(pad.send_event(gst::event::CustomDownstream::new(s)));
            }
            gst::PadProbeReturn::Ok
        });
    });
    assert_eq!(run.error, None, "warnings: {:?}", run.warnings);
    let data = emu.read_back("padmeta");
    let mut per_fragment: Vec<Vec<String>> = Vec::new();
    for event in kvs_mkv::read_all(&data).unwrap() {
        match event {
            kvs_mkv::Event::EbmlHeader(_) => per_fragment.push(Vec::new()),
            kvs_mkv::Event::Element(e) if e.id == kvs_mkv::ebml::id::TAGS => {
                for tag in kvs_mkv::tags::parse_tags(&e.data()).unwrap() {
                    per_fragment
                        .last_mut()
                        .unwrap()
                        .push(format!("{}={}", tag.name, tag.value));
                }
            }
            _ => {}
        }
    }
    // Persistent: with each of the two fragments.
    assert_eq!(per_fragment.len(), 2);
    assert!(
        per_fragment
            .iter()
            .all(|tags| tags.contains(&"camera=front door".to_owned())),
        "{per_fragment:?}"
    );
}

#[test]
fn a_second_video_pad_and_mixing_sink_with_request_pads_are_refused_by_name() {
    init();
    let sink = gst::ElementFactory::make("kvssink").build().unwrap();
    let pipeline = gst::Pipeline::new();
    pipeline.add(&sink).unwrap();
    let bus = pipeline.bus().unwrap();
    let video = sink.request_pad_simple("video_%u").expect("one video pad");
    assert_eq!(video.name(), "video_0");
    assert!(sink.request_pad_simple("video_%u").is_none());
    let warning = bus
        .timed_pop_filtered(
            gst::ClockTime::from_seconds(1),
            &[gst::MessageType::Warning],
        )
        .unwrap();
    let gst::MessageView::Warning(w) = warning.view() else {
        unreachable!()
    };
    assert_eq!(
        w.error().message(),
        "it takes one video stream on its request pads, as the C++ kvssink does; mux more tracks with \
         matroskamux ! kvssink"
    );
    assert_eq!(warning.src(), Some(sink.upcast_ref::<gst::Object>()));
    let audio = sink.request_pad_simple("audio_%u").expect("one audio pad");
    // While request pads are in use, `sink` leads nowhere; releasing them makes it the Matroska input again.
    let matroska = sink
        .static_pad("sink")
        .unwrap()
        .downcast::<gst::GhostPad>()
        .unwrap();
    assert!(matroska.target().is_none());
    sink.release_request_pad(&video);
    sink.release_request_pad(&audio);
    assert!(matroska.target().is_some());
    assert!(sink.static_pad("video_0").is_none());

    // `sink` linked first: a request pad is refused.
    let mux = gst::ElementFactory::make("matroskamux").build().unwrap();
    pipeline.add(&mux).unwrap();
    mux.link(&sink).unwrap();
    assert!(sink.request_pad_simple("audio_%u").is_none());
    let warning = bus
        .timed_pop_filtered(
            gst::ClockTime::from_seconds(1),
            &[gst::MessageType::Warning],
        )
        .unwrap();
    let gst::MessageView::Warning(w) = warning.view() else {
        unreachable!()
    };
    assert_eq!(
        w.error().message(),
        "cannot take audio on a request pad: its sink pad is linked (Matroska input)"
    );
}

/// The C++ muxing properties shape what the inner matroskamux writes: with `key-frame-fragmentation=false`
/// a fragment lasts at least `fragment-duration` (90 frames with a key frame every 45: one fragment, not two),
/// and `timecode-scale` is the stored stream's TimecodeScale.
#[test]
fn fragment_duration_and_timecode_scale_shape_the_muxed_fragments() {
    let emu = Emu::start();
    emu.create_stream("shaped", 1);
    let description = format!(
        "{} ! {H264_CPP} ! {} sync=false key-frame-fragmentation=false fragment-duration=2000 timecode-scale=10 \
         codec-id=V_MPEG4/ISO/AVC/KVS",
        raw_video(90),
        sink_props(&emu, "shaped")
    );
    let run = run_pipeline(&description, Duration::from_secs(60));
    assert_eq!(run.error, None, "warnings: {:?}", run.warnings);
    assert_eq!(run.acks("PERSISTED"), 1, "{:?}", run.messages);
    let data = emu.read_back("shaped");
    let scale = kvs_mkv::read_all(&data)
        .unwrap()
        .into_iter()
        .find_map(|event| match event {
            kvs_mkv::Event::Element(e) if e.id == kvs_mkv::ebml::id::INFO => {
                Some(kvs_mkv::header::timecode_scale(&e.data()).unwrap())
            }
            _ => None,
        })
        .unwrap();
    assert_eq!(scale, 10_000_000);
    let stored = stored(&emu, "shaped");
    assert_eq!(stored.video.len(), 90);
    assert_eq!(
        stored.tracks,
        [(
            Some("kinesis_video".to_owned()),
            "V_MPEG4/ISO/AVC/KVS".to_owned(),
            1
        )]
    );
}

/// A-law audio alone on an audio request pad: the C++ element's A_MS/ACM track named "audio", cut into
/// fragments of at least `fragment-duration` (audio has no key frames).
#[test]
fn alaw_audio_alone_is_stored_frame_for_frame_in_fragment_duration_fragments() {
    let emu = Emu::start();
    emu.create_stream("alaw", 1);
    let description = format!(
        "audiotestsrc num-buffers=100 samplesperbuffer=1024 ! audio/x-raw,rate=8000,channels=1 ! alawenc \
         ! tee name=a ! queue ! {} sync=false a. ! queue ! appsink name=acap sync=false",
        sink_props(&emu, "alaw")
    );
    let mut audio_in = None;
    let run = run_pipeline_with(&description, Duration::from_secs(60), |pipeline| {
        audio_in = Some(collect(pipeline, "acap"));
    });
    assert_eq!(run.error, None, "warnings: {:?}", run.warnings);
    let audio_in = audio_in.unwrap().lock().unwrap().clone();
    let stored = stored(&emu, "alaw");
    assert_eq!(
        stored.tracks,
        [(Some("audio".to_owned()), "A_MS/ACM".to_owned(), 2)]
    );
    assert_eq!(stored.audio.len(), 100);
    assert!(
        stored.audio == audio_in,
        "the frames read back differ from the frames uploaded"
    );
    // 12.8 s of audio in fragments of at least 2 s (16 buffers of 128 ms): 7.
    assert_eq!(run.acks("PERSISTED"), 7, "{:?}", run.messages);
}

/// Both request pads of one kvssink driven by `gst_check::Harness` (one harness per pad), with H.264 and AAC
/// buffers made by hand, no encoder: each frame is stored exactly as pushed, each track in order, and the C++
/// element's track names are given.
#[test]
fn request_pads_in_harnesses_store_the_buffers_pushed_exactly() {
    init();
    let emu = Emu::start();
    emu.create_stream("harness-pads", 1);
    let sink = gst::ElementFactory::make("kvssink")
        .property("stream-name", "harness-pads")
        .property("endpoint-uri", &emu.url)
        .property("access-key", "AKIDTEST")
        .property("secret-access-key", "test-secret")
        .property("region", "us-east-1")
        .property("sync", false)
        .build()
        .unwrap();
    let mut video = gst_check::Harness::with_element(&sink, Some("video_%u"), None);
    let mut audio = gst_check::Harness::with_element(&sink, Some("audio_%u"), None);
    // avcC with one SPS and one PPS (baseline, level 3.0); AudioSpecificConfig for AAC-LC, 48 kHz, stereo.
    let avcc: &[u8] = &[
        1, 0x42, 0xC0, 0x1E, 0xFF, 0xE1, 0, 4, 0x67, 0x42, 0xC0, 0x1E, 1, 0, 2, 0x68, 0xCE,
    ];
    video.set_src_caps(
        gst::Caps::builder("video/x-h264")
            .field("stream-format", "avc")
            .field("alignment", "au")
            .field("width", 320i32)
            .field("height", 240i32)
            .field("framerate", gst::Fraction::new(30, 1))
            .field("codec_data", gst::Buffer::from_slice(avcc))
            .build(),
    );
    audio.set_src_caps(
        gst::Caps::builder("audio/mpeg")
            .field("mpegversion", 4i32)
            .field("stream-format", "raw")
            .field("rate", 48000i32)
            .field("channels", 2i32)
            .field("codec_data", gst::Buffer::from_slice([0x11u8, 0x90]))
            .build(),
    );
    fn buffer(payload: Vec<u8>, pts: u64, duration: u64, key: bool) -> gst::Buffer {
        let mut buffer = gst::Buffer::from_mut_slice(payload);
        let b = buffer.get_mut().unwrap();
        b.set_pts(gst::ClockTime::from_nseconds(pts));
        b.set_dts(gst::ClockTime::from_nseconds(pts));
        b.set_duration(gst::ClockTime::from_nseconds(duration));
        if !key {
            b.set_flags(gst::BufferFlags::DELTA_UNIT);
        }
        buffer
    }
    // 3 s: 90 video frames, a key frame each second, and the AAC frames (1024 samples) of the same 3 s. Each
    // pad is pushed from its own thread, as an upstream element would: the inner matroskamux takes a buffer on
    // one pad only when the other has one too.
    let aac_ns = |n: u64| n * 1024 * 1_000_000_000 / 48_000;
    let audio_in: Vec<Vec<u8>> = (0..)
        .take_while(|n| aac_ns(*n) < 3_000_000_000)
        .map(|n| format!("aac frame {n}").into_bytes())
        .collect();
    let audio_thread = {
        let audio_in = audio_in.clone();
        std::thread::spawn(move || {
            for (n, payload) in audio_in.into_iter().enumerate() {
                let n = n as u64;
                let pushed =
                    audio.push(buffer(payload, aac_ns(n), aac_ns(n + 1) - aac_ns(n), true));
                assert_eq!(pushed, Ok(gst::FlowSuccess::Ok));
            }
            assert!(audio.push_event(gst::event::Eos::new()));
            audio
        })
    };
    let mut video_in = Vec::new();
    for i in 0..90u64 {
        let key = i % 30 == 0;
        let nal = format!("h264 frame {i}").into_bytes();
        let mut payload = (nal.len() as u32 + 1).to_be_bytes().to_vec();
        payload.push(if key { 0x65 } else { 0x41 });
        payload.extend_from_slice(&nal);
        video_in.push(payload.clone());
        let pushed = video.push(buffer(
            payload,
            i * 1_000_000_000 / 30,
            1_000_000_000 / 30,
            key,
        ));
        assert_eq!(pushed, Ok(gst::FlowSuccess::Ok));
    }
    assert!(video.push_event(gst::event::Eos::new()));
    let _audio = audio_thread.join().unwrap();
    // EOS reaches the uploader through the inner matroskamux: wait for the last fragment to be stored.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let stored = loop {
        let stored = stored(&emu, "harness-pads");
        if stored.video.len() >= video_in.len() || std::time::Instant::now() > deadline {
            break stored;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(
        stored.tracks,
        [
            (
                Some("kinesis_video".to_owned()),
                "V_MPEG4/ISO/AVC".to_owned(),
                1
            ),
            (Some("audio".to_owned()), "A_AAC".to_owned(), 2)
        ]
    );
    assert_eq!(
        (stored.video.len(), stored.audio.len()),
        (video_in.len(), audio_in.len())
    );
    assert!(stored.video == video_in, "video frames differ");
    assert!(stored.audio == audio_in, "audio frames differ");
}
