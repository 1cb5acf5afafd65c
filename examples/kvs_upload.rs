// SPDX-License-Identifier: MPL-2.0

//! A Rust application that uses the plugin as a crate, without installing it: `gstkvs::plugin_register_static()`
//! registers kvssink and kvssrc in this process. Streams H.264 to Kinesis Video Streams and prints every fragment
//! acknowledgement and the final statistics.
//!
//! ```text
//! cargo run --example kvs_upload -- cam1
//! cargo run --example kvs_upload -- cam1 "v4l2src ! videoconvert ! x264enc tune=zerolatency bframes=0 ! h264parse"
//! ```
//!
//! In an application's own `Cargo.toml`: `gst-plugin-kvs = { git = "…" }` beside `gstreamer`. Credentials and
//! region come from the AWS environment, the endpoint from `CONTROL_PLANE_URI` when it is set (kvs-emulator).

use gst::prelude::*;

const DEFAULT_SOURCE: &str = "videotestsrc is-live=true num-buffers=300 ! video/x-raw,width=640,height=480,framerate=30/1 \
                              ! x264enc tune=zerolatency key-int-max=60 bframes=0 ! h264parse";

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if !(2..=3).contains(&args.len()) {
        eprintln!("usage: {} STREAM [SOURCE-DESCRIPTION]", args[0]);
        return std::process::ExitCode::from(2);
    }
    match run(&args[1], args.get(2).map_or(DEFAULT_SOURCE, String::as_str)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(stream: &str, source: &str) -> Result<(), String> {
    gst::init().map_err(|e| e.to_string())?;
    gstkvs::plugin_register_static().map_err(|e| e.to_string())?;
    let pipeline = gst::parse::launch(&format!("{source} ! matroskamux ! kvssink name=sink"))
        .map_err(|e| format!("cannot build the pipeline: {e}"))?
        .downcast::<gst::Pipeline>()
        .map_err(|_| "not a pipeline".to_owned())?;
    let sink = pipeline
        .by_name("sink")
        .expect("the pipeline names its kvssink");
    sink.set_property("stream-name", stream);

    pipeline
        .set_state(gst::State::Playing)
        .map_err(|e| e.to_string())?;
    let mut result = Ok(());
    for message in pipeline
        .bus()
        .expect("a pipeline has a bus")
        .iter_timed(gst::ClockTime::NONE)
    {
        match message.view() {
            gst::MessageView::Element(m) => {
                if let Some(ack) = m.structure().filter(|s| s.name() == "kvssink-ack") {
                    println!(
                        "ack: {} fragment {} (timecode {} ms)",
                        ack.get::<&str>("event-type").unwrap_or("?"),
                        ack.get::<&str>("fragment-number").unwrap_or("?"),
                        ack.get::<u64>("fragment-timecode").unwrap_or(0)
                    );
                }
            }
            gst::MessageView::Error(e) => {
                result = Err(e.error().message().to_owned());
                break;
            }
            gst::MessageView::Eos(_) => break,
            _ => {}
        }
    }
    if result.is_ok() {
        let stats = sink.property::<gst::Structure>("stats");
        println!(
            "stats: {} persisted, {} bytes",
            stats.get::<u64>("fragments-persisted").unwrap_or(0),
            stats.get::<u64>("bytes-sent").unwrap_or(0)
        );
    }
    pipeline
        .set_state(gst::State::Null)
        .map_err(|e| e.to_string())?;
    result
}
