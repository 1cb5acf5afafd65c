// SPDX-License-Identifier: MPL-2.0

//! `kvssrc`: reads a Kinesis video stream with GetMedia and emits Matroska.

use gst::glib;
use gst::prelude::*;

mod imp;
pub mod merger;
pub mod reader;

glib::wrapper! {
    pub struct KvsSrc(ObjectSubclass<imp::KvsSrc>) @extends gst_base::PushSrc, gst_base::BaseSrc, gst::Element, gst::Object, @implements gst::URIHandler;
}

pub fn register(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    // The property enums, documented with the element (gst-inspect, the plugin documentation cache).
    for enum_type in [
        imp::StartSelector::static_type(),
        imp::OutputMode::static_type(),
        imp::OutputTimeline::static_type(),
    ] {
        enum_type.mark_as_plugin_api(gst::PluginAPIFlags::empty());
    }
    gst::Element::register(
        Some(plugin),
        "kvssrc",
        gst::Rank::SECONDARY,
        KvsSrc::static_type(),
    )
}
