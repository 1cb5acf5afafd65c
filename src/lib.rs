// SPDX-License-Identifier: MPL-2.0

//! GStreamer plugin `kvs`: elements for Amazon Kinesis Video Streams.
//!
//! - `kvssink` streams the output of `matroskamux` to the KVS PutMedia API. It is a bin, so that it also takes
//!   the elementary streams the C++ kvssink takes (H.264/H.265/AAC/G.711 on `video_%u`/`audio_%u` request
//!   pads): a real `matroskamux` inside muxes them for its Matroska sink, which a plain `sink` pad reaches
//!   directly otherwise. Muxing again by hand would duplicate what `matroskamux` does well; a bin keeps one
//!   upload path for both kinds of input.
//! - `kvssrc` reads a stream with GetMedia (live or from the past) and emits Matroska.
//!
//! The protocol code in `kvs` (signing, PutMedia, ACKs, errors), the fragmenter and uploader of
//! `kvssink` and the reader and merger of `kvssrc` do not depend on GStreamer types, so they are
//! unit-tested on their own. The Matroska reader and writer are the `kvs-mkv` crate, which the
//! `kvs-emulator` crate uses too.

use gst::glib;

mod element;
pub(crate) mod kvs;
pub(crate) mod kvssink;
pub(crate) mod kvssrc;
pub(crate) mod messages;
mod props;
pub(crate) mod runtime;
mod uri;

/// The GStreamer-free cores the hostile-input tests and benchmarks drive directly. Not a stable API: the plugin's
/// interface is its elements.
#[doc(hidden)]
pub mod cores {
    pub use crate::kvs::ack::AckParser;
    pub use crate::kvssink::fragmenter;
    pub use crate::kvssink::store;
    pub use crate::kvssrc::merger;
}

fn plugin_init(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    kvssink::register(plugin)?;
    kvssrc::register(plugin)?;
    Ok(())
}

gst::plugin_define!(
    kvs,
    env!("CARGO_PKG_DESCRIPTION"),
    plugin_init,
    concat!(env!("CARGO_PKG_VERSION"), "-", env!("COMMIT_ID")),
    // The GStreamer license string for MPL-2.0.
    "MPL",
    env!("CARGO_PKG_NAME"),
    env!("CARGO_PKG_NAME"),
    // The origin URL: the project has no public home yet, and a made-up one would send users nowhere.
    // GStreamer refuses an empty origin; this is what its own builds say when none is configured.
    "Unknown package origin",
    env!("BUILD_REL_DATE")
);
