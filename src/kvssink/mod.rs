// SPDX-License-Identifier: MPL-2.0

//! `kvssink`: streams the output of `matroskamux`, or elementary H.264/H.265/AAC streams, to Kinesis Video
//! Streams with PutMedia.
//!
//! [`fragmenter`] splits the Matroska byte stream into a header and fragments; [`uploader`] owns the PutMedia
//! connection and the fragment queue; `imp` is the Matroska sink around them, and `bin` the `kvssink` element:
//! a bin holding that sink and, for elementary streams on request pads, a `matroskamux`.

use gst::glib;
use gst::prelude::*;

mod bin;
mod capture;
mod compat;
pub mod fragmenter;
mod imp;
pub mod queue;
pub mod store;
pub(crate) mod triggers;
pub mod uploader;
pub(crate) mod window;

glib::wrapper! {
    /// The `kvssink` element.
    pub struct KvsSink(ObjectSubclass<bin::KvsSink>) @extends gst::Bin, gst::Element, gst::Object, @implements gst::URIHandler, gst::ChildProxy;
}

glib::wrapper! {
    /// The Matroska sink inside `kvssink` (not registered as an element of its own).
    pub struct KvsMkvSink(ObjectSubclass<imp::KvsMkvSink>) @extends gst_base::BaseSink, gst::Element, gst::Object;
}

pub fn register(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    compat::StreamingType::static_type().mark_as_plugin_api(gst::PluginAPIFlags::empty());
    capture::CaptureTime::static_type().mark_as_plugin_api(gst::PluginAPIFlags::empty());
    triggers::UploadMode::static_type().mark_as_plugin_api(gst::PluginAPIFlags::empty());
    triggers::EventTags::static_type().mark_as_plugin_api(gst::PluginAPIFlags::empty());
    gst::Element::register(
        Some(plugin),
        "kvssink",
        gst::Rank::SECONDARY,
        KvsSink::static_type(),
    )
}
