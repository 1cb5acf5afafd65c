//! `kvssink`: streams the output of `matroskamux` to Kinesis Video Streams with PutMedia.

use gst::glib;
use gst::prelude::*;

mod imp;

glib::wrapper! {
    pub struct KvsSink(ObjectSubclass<imp::KvsSink>) @extends gst_base::BaseSink, gst::Element, gst::Object;
}

pub fn register(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    gst::Element::register(Some(plugin), "kvssink", gst::Rank::NONE, KvsSink::static_type())
}
