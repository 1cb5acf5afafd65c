// SPDX-License-Identifier: MPL-2.0

//! The plugin loads, registers both elements with the documented pad templates, and every property
//! round-trips.

use gst::prelude::*;

use crate::common::init;

fn template_caps(factory: &str, pad: &str) -> (gst::PadDirection, gst::Caps) {
    let factory = gst::ElementFactory::find(factory).expect("factory registered");
    let template = factory
        .static_pad_templates()
        .into_iter()
        .find(|t| t.name_template() == pad)
        .unwrap_or_else(|| panic!("no pad template {pad}"));
    (template.direction(), template.caps())
}

#[test]
fn plugin_registers_both_elements() {
    init();
    let plugin = gst::Registry::get()
        .find_plugin("kvs")
        .expect("plugin kvs registered");
    assert_eq!(plugin.license(), "MPL");
    assert_eq!(plugin.source(), "gst-plugin-kvs");
    assert!(
        plugin.version().starts_with(env!("CARGO_PKG_VERSION")),
        "{}",
        plugin.version()
    );
    // No made-up home page: GStreamer's own words for an origin that is not configured.
    assert_eq!(plugin.origin(), "Unknown package origin");
    for name in ["kvssink", "kvssrc"] {
        let element = gst::ElementFactory::make(name)
            .build()
            .unwrap_or_else(|e| panic!("make {name}: {e}"));
        assert_eq!(
            element.factory().unwrap().plugin_name().as_deref(),
            Some("kvs")
        );
    }
    // kvssink is a bin: its Matroska sink, and matroskamux when elementary streams come on request pads.
    let sink = gst::ElementFactory::make("kvssink")
        .build()
        .unwrap()
        .downcast::<gst::Bin>()
        .unwrap();
    let children: Vec<gst::Element> = sink.children();
    assert_eq!(children.len(), 1);
    assert!(children[0].is::<gst_base::BaseSink>());
    sink.request_pad_simple("video_%u").unwrap();
    assert_eq!(sink.children().len(), 2);
    assert!(
        sink.by_name("mux")
            .unwrap()
            .factory()
            .is_some_and(|f| f.name() == "matroskamux")
    );
    let src = gst::ElementFactory::make("kvssrc").build().unwrap();
    assert!(src.is::<gst_base::PushSrc>());
    // The property enums are marked as plugin API, so documentation tools describe them with the elements.
    for name in [
        "GstKvsSrcStartSelector",
        "GstKvsSrcMode",
        "GstKvsSrcTimeline",
        "GstKvsRsStreamingType",
        "GstKvsCaptureTime",
        "GstKvsUploadMode",
        "GstKvsEventTags",
    ] {
        let enum_type =
            gst::glib::Type::from_name(name).unwrap_or_else(|| panic!("{name} registered"));
        assert!(
            enum_type.plugin_api_flags().is_some(),
            "{name} is not marked as plugin API"
        );
    }
}

#[test]
fn kvssink_accepts_matroska_and_webm() {
    init();
    let (direction, caps) = template_caps("kvssink", "sink");
    assert_eq!(direction, gst::PadDirection::Sink);
    let expected: gst::Caps = "video/x-matroska; audio/x-matroska; video/webm; audio/webm"
        .parse()
        .unwrap();
    assert_eq!(caps, expected);
    // What matroskamux produces must be accepted.
    let from_mux: gst::Caps = "video/x-matroska, streamheader=(buffer)<1a45dfa3>"
        .parse()
        .unwrap();
    assert!(caps.can_intersect(&from_mux));
    assert!(!caps.can_intersect(&"video/x-h264".parse::<gst::Caps>().unwrap()));
}

#[test]
fn kvssrc_produces_matroska() {
    init();
    let (direction, caps) = template_caps("kvssrc", "src");
    assert_eq!(direction, gst::PadDirection::Src);
    assert_eq!(caps, "video/x-matroska".parse::<gst::Caps>().unwrap());
}

#[test]
fn string_properties_round_trip() {
    init();
    for factory in ["kvssink", "kvssrc"] {
        let element = gst::ElementFactory::make(factory).build().unwrap();
        assert_eq!(
            element.property::<Option<String>>("stream-name"),
            None,
            "{factory} default"
        );
        element.set_property("stream-name", "cam1");
        assert_eq!(
            element.property::<Option<String>>("stream-name").as_deref(),
            Some("cam1")
        );
        element.set_property("stream-name", None::<&str>);
        assert_eq!(element.property::<Option<String>>("stream-name"), None);
    }
}

#[test]
fn every_property_is_documented() {
    init();
    for factory in ["kvssink", "kvssrc"] {
        let element = gst::ElementFactory::make(factory).build().unwrap();
        // BaseSink's properties, which kvssink has too, are GStreamer's and documented there.
        let base_sink =
            gst::glib::object::ObjectClass::from_type(gst_base::BaseSink::static_type()).unwrap();
        let own = element.list_properties().into_iter().filter(|p| {
            p.owner_type() == element.type_() && base_sink.find_property(p.name()).is_none()
        });
        for pspec in own {
            let blurb = pspec.blurb().unwrap_or_default();
            assert!(
                blurb.len() > 20,
                "{factory}::{} has no real blurb: {blurb:?}",
                pspec.name()
            );
            // gst-inspect prints each default itself.
            assert!(
                !blurb.contains("default: "),
                "{factory}::{} blurb repeats its default: {blurb:?}",
                pspec.name()
            );
            let nick = pspec.nick();
            assert!(
                nick != pspec.name() && nick.len() > 1,
                "{factory}::{} has no nick: {nick:?}",
                pspec.name()
            );
        }
    }
}

#[test]
fn missing_stream_name_is_a_clear_error() {
    init();
    for factory in ["kvssink", "kvssrc"] {
        let pipeline = gst::Pipeline::new();
        let element = gst::ElementFactory::make(factory).build().unwrap();
        pipeline.add(&element).unwrap();
        let bus = pipeline.bus().unwrap();
        assert!(
            pipeline.set_state(gst::State::Paused).is_err(),
            "{factory} started without a stream name"
        );
        let msg = bus
            .pop_filtered(&[gst::MessageType::Error])
            .unwrap_or_else(|| panic!("{factory}: no error message"));
        let gst::MessageView::Error(err) = msg.view() else {
            unreachable!()
        };
        assert_eq!(
            err.error().to_string(),
            "the stream-name property is not set"
        );
        assert_eq!(msg.src(), Some(element.upcast_ref::<gst::Object>()));
        pipeline.set_state(gst::State::Null).unwrap();
    }
}

/// Every source file says its licence (SPDX), as the GStreamer Rust tree's checks expect.
#[test]
fn every_source_file_has_an_spdx_licence_header() {
    fn walk(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, out);
            } else if path
                .extension()
                .is_some_and(|e| e == "rs" || e == "py" || e == "c")
            {
                out.push(path);
            }
        }
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for dir in [
        "src", "tests", "benches", "examples", "emulator", "mkv/src", "build.rs",
    ] {
        let path = root.join(dir);
        if path.is_file() {
            files.push(path);
        } else if path.is_dir() {
            walk(&path, &mut files);
        }
    }
    assert!(files.len() > 70, "{}", files.len());
    let missing: Vec<_> = files
        .iter()
        .filter(|f| {
            let text = std::fs::read_to_string(f).unwrap_or_default();
            !text
                .lines()
                .take(3)
                .any(|l| l.contains("SPDX-License-Identifier: MPL-2.0"))
        })
        .collect();
    assert!(missing.is_empty(), "no SPDX header: {missing:?}");
}
