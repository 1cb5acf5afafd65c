// SPDX-License-Identifier: MPL-2.0

//! The official C++ kvssink's property names that kvssink does not have under its own names, accepted with the
//! C++ types and defaults so that pipelines written for it parse and run unchanged. Each says what it does here:
//!
//! - **implemented**: `user-agent` (prefixed to kvssink's own in every request), `connection-timeout` (seconds
//!   to connect), `completion-timeout` (seconds for a request to complete: `request-timeout`),
//!   `restart-on-error` (false: the first failed connection is an element error instead of a reconnection),
//!   `content-type` (the media type of a stream kvssink creates; otherwise the tracks' codecs give it),
//!   `frame-timecodes` (false: each fragment is stamped with the time it reaches kvssink, not its capture time),
//!   `streaming-type` (`offline`: a full queue always waits, never drops, and the stream starts at
//!   `file-start-time` or the start time);
//! - **for elementary streams on the request pads** (`codec-id`, `track-name`, `timecode-scale`,
//!   `fragment-duration`, `key-frame-fragmentation`): how the inner `matroskamux` muxes them, as the C++ element
//!   does; with Matroska input on the `sink` pad the upstream muxer decided, and they have no effect;
//! - **muxing details without a meaning here** (`absolute-fragment-times`, `use-original-pts`,
//!   `disable-buffer-clipping`): kvssink always sends absolute producer times from the buffers' running time;
//! - **C++ SDK internals** (`avg-bandwidth-bps`, `framerate`, `max-latency`, `log-config`,
//!   `recalculate-metrics`, `get-kvs-metrics`, `replay-duration`, `rotation-period`): no effect; kvssink
//!   re-sends every fragment not yet persisted (not a `replay-duration` window), and the C++ element ignores
//!   `rotation-period` too;
//! - **credentials** ([`crate::kvs::credentials`]): `credential-path` (the C++ SDK's rotating credential file,
//!   read again when it changes) with `rotation-period`, and `iot-certificate` (temporary credentials from the
//!   AWS IoT credentials endpoint with the device's certificate), in the C++ element's order.
//!
//! Properties without effect that are set get one warning on the bus when the element starts.

use std::collections::BTreeMap;

use gst::glib;
use gst::prelude::*;

use crate::kvs::credentials::IotSettings;
use crate::props::{boolean, string_or as string};

/// What a C++ property does in kvssink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Support {
    Implemented,
    /// Applies to the tracks muxed from the request pads; no effect with Matroska input.
    Muxing,
    /// Accepted, no effect; the text says why (for the start warning).
    Ignored(&'static str),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, glib::Enum)]
#[enum_type(name = "GstKvsRsStreamingType")]
pub enum StreamingType {
    #[default]
    #[enum_value(name = "Realtime", nick = "realtime")]
    Realtime,
    #[enum_value(name = "Near real-time", nick = "near-realtime")]
    NearRealtime,
    #[enum_value(name = "Offline", nick = "offline")]
    Offline,
}

/// The C++ kvssink's default `credential-path`, relative to the working directory.
const DEFAULT_CREDENTIAL_PATH: &str = ".kvs/credential";
const MUXER: &str = "kvssink stamps frames from the buffers' running time";
const UPSTREAM_MUXER: &str = "it applies to streams on the video/audio request pads; with Matroska input the upstream muxer decided";
const SDK: &str = "it tunes the C++ SDK";

/// The C++ properties kvssink accepts by their C++ names, with what each does.
pub fn effects() -> &'static [(&'static str, Support)] {
    &[
        ("user-agent", Support::Implemented),
        ("connection-timeout", Support::Implemented),
        ("completion-timeout", Support::Implemented),
        ("restart-on-error", Support::Implemented),
        ("codec-id", Support::Muxing),
        ("track-name", Support::Muxing),
        ("timecode-scale", Support::Muxing),
        ("fragment-duration", Support::Muxing),
        ("key-frame-fragmentation", Support::Muxing),
        ("frame-timecodes", Support::Implemented),
        (
            "absolute-fragment-times",
            Support::Ignored("kvssink always sends absolute producer times"),
        ),
        ("content-type", Support::Implemented),
        ("use-original-pts", Support::Ignored(MUXER)),
        ("disable-buffer-clipping", Support::Ignored(MUXER)),
        ("avg-bandwidth-bps", Support::Ignored(SDK)),
        ("framerate", Support::Ignored(SDK)),
        ("max-latency", Support::Ignored(SDK)),
        (
            "log-config",
            Support::Ignored("kvssink logs through GST_DEBUG"),
        ),
        ("recalculate-metrics", Support::Ignored(SDK)),
        (
            "get-kvs-metrics",
            Support::Ignored("the stats property and the bus messages carry the figures"),
        ),
        (
            "replay-duration",
            Support::Ignored("kvssink re-sends every fragment not yet persisted"),
        ),
        ("rotation-period", Support::Implemented),
        ("streaming-type", Support::Implemented),
        ("credential-path", Support::Implemented),
        ("iot-certificate", Support::Implemented),
    ]
}

fn uint(name: &str, blurb: &str, default: u32) -> glib::ParamSpec {
    crate::props::uint(name, blurb, u32::MAX, default)
}

/// The property specs, with the C++ types and defaults.
pub fn properties() -> Vec<glib::ParamSpec> {
    let none = |what: &str| format!("C++ kvssink compatibility: no effect, {what}");
    vec![
        string(
            "user-agent",
            "Prefixed to kvssink's own user agent in every request (C++ kvssink name)",
            None,
        ),
        uint("connection-timeout", "Seconds to connect to the service (C++ kvssink name)", 5),
        uint(
            "completion-timeout",
            "Seconds for each request to complete; the same as request-timeout in seconds (C++ kvssink name)",
            10,
        ),
        boolean(
            "restart-on-error",
            "false: the first failed connection is an element error instead of a reconnection (C++ kvssink name)",
            true,
        ),
        string(
            "codec-id",
            "CodecID of the video track muxed from the video request pad, when not the H.264 one; with Matroska input, no effect",
            Some("V_MPEG4/ISO/AVC"),
        ),
        string(
            "track-name",
            "Name of the video track muxed from the video request pad (the audio track is \"audio\"); with Matroska input, no effect",
            Some("kinesis_video"),
        ),
        uint(
            "timecode-scale",
            "Matroska timecode unit of the streams muxed from the request pads, in milliseconds; with Matroska input, no effect",
            1,
        ),
        uint(
            "fragment-duration",
            "Shortest fragment muxed from the request pads when not cut at every key frame (key-frame-fragmentation=false, or audio only), in milliseconds",
            2000,
        ),
        boolean(
            "key-frame-fragmentation",
            "Start a fragment at every video key frame of the request pads; false: at the first key frame after fragment-duration",
            true,
        ),
        boolean(
            "frame-timecodes",
            "Stamp fragments with the capture time from the buffers' timestamps; false: with the time they reach kvssink",
            true,
        ),
        boolean(
            "absolute-fragment-times",
            &none("kvssink always sends absolute producer times"),
            true,
        ),
        string(
            "content-type",
            "Media type of a stream kvssink creates, such as video/h264,audio/aac; when not set, the tracks' codecs give it",
            Some("video/h264"),
        ),
        boolean("use-original-pts", &none(MUXER), false),
        boolean("disable-buffer-clipping", &none(MUXER), false),
        uint("avg-bandwidth-bps", &none(SDK), 4 * 1024 * 1024),
        uint("framerate", &none(SDK), 25),
        uint("max-latency", &format!("{} (seconds)", none(SDK)), 60),
        string(
            "log-config",
            &format!("{} (unset: ../kvs_log_configuration)", none("kvssink logs through GST_DEBUG")),
            Some("../kvs_log_configuration"),
        ),
        boolean("recalculate-metrics", &none(SDK), true),
        boolean("get-kvs-metrics", &none("the stats property has the figures"), false),
        uint(
            "replay-duration",
            &format!("{} (seconds)", none("kvssink re-sends every fragment not yet persisted")),
            40,
        ),
        uint(
            "rotation-period",
            "The longest credentials from credential-path are used before the file is read again, in seconds",
            3600,
        ),
        glib::ParamSpecEnum::builder_with_default("streaming-type", StreamingType::Realtime)
            .nick("Streaming type")
            .blurb("realtime and near-realtime: a live source drops the oldest fragments when the queue is full; offline: the queue always waits, and the stream starts at file-start-time")
            .mutable_ready()
            .build(),
        string(
            "credential-path",
            "The C++ SDK's rotating credential file (CREDENTIALS <key id> [<expiration>] <secret> [<token>]), read again when it changes; used when neither the properties nor the environment give keys (unset: .kvs/credential, when it exists)",
            Some(DEFAULT_CREDENTIAL_PATH),
        ),
        glib::ParamSpecBoxed::builder::<gst::Structure>("iot-certificate")
            .nick("IoT certificate")
            .blurb("Credentials from the AWS IoT credentials endpoint with a device certificate, as \"iot-certificate,endpoint=HOST,cert-path=…,key-path=…,ca-path=…,role-aliases=ALIAS[,iot-thing-name=…][,connection-timeout=3][,completion-timeout=5]\"; the thing name defaults to stream-name")
            .mutable_ready()
            .build(),
    ]
}

/// The values of the C++ properties that were set, serialized (None: set to NULL): plain strings, so that the
/// element's settings stay `Send`.
#[derive(Debug, Clone, Default)]
pub struct CppSettings {
    values: BTreeMap<String, Option<String>>,
}

impl CppSettings {
    /// Stores a value; false when `name` is not one of these properties.
    pub fn set(&mut self, name: &str, value: &glib::Value) -> bool {
        if !effects().iter().any(|(n, _)| *n == name) {
            return false;
        }
        let unset = matches!(value.get::<Option<String>>(), Ok(None))
            || matches!(value.get::<Option<gst::Structure>>(), Ok(None));
        let text = if unset {
            None
        } else {
            value.serialize().ok().map(String::from)
        };
        self.values.insert(name.to_owned(), text);
        true
    }

    /// The value of one of these properties (its default when it was not set); None when `name` is not one.
    pub fn get(&self, name: &str, pspec: &glib::ParamSpec) -> Option<glib::Value> {
        if !effects().iter().any(|(n, _)| *n == name) {
            return None;
        }
        Some(match self.values.get(name) {
            None => pspec.default_value().clone(),
            Some(None) => glib::Value::from_type(pspec.value_type()),
            Some(Some(text)) => glib::Value::deserialize_with_pspec(text, pspec)
                .unwrap_or_else(|_| pspec.default_value().clone()),
        })
    }

    fn text(&self, name: &str) -> Option<&str> {
        self.values.get(name).and_then(|v| v.as_deref())
    }

    /// A string property's value, when set and not empty.
    fn string(&self, name: &str) -> Option<String> {
        let value = glib::Value::deserialize(self.text(name)?, glib::Type::STRING).ok()?;
        value
            .get::<Option<String>>()
            .ok()
            .flatten()
            .filter(|s| !s.is_empty())
    }

    pub fn user_agent(&self) -> Option<String> {
        self.string("user-agent")
    }

    fn seconds(&self, name: &str) -> Option<std::time::Duration> {
        let seconds: u64 = self.text(name)?.parse().ok()?;
        Some(std::time::Duration::from_secs(seconds.max(1)))
    }

    /// `connection-timeout`, when set.
    pub fn connect_timeout(&self) -> Option<std::time::Duration> {
        self.seconds("connection-timeout")
    }

    /// `completion-timeout`, when set.
    pub fn completion_timeout(&self) -> Option<std::time::Duration> {
        self.seconds("completion-timeout")
    }

    pub fn restart_on_error(&self) -> bool {
        self.text("restart-on-error") != Some("false")
    }

    /// `content-type`, when set.
    pub fn content_type(&self) -> Option<String> {
        self.string("content-type")
    }

    /// `frame-timecodes` (true unless set to false).
    pub fn frame_timecodes(&self) -> bool {
        self.text("frame-timecodes") != Some("false")
    }

    /// The credential file and the longest its credentials are kept: `credential-path` when set, else the C++
    /// default `.kvs/credential` when that file exists.
    pub fn credential_file(&self) -> Option<(String, std::time::Duration)> {
        let period = self
            .seconds("rotation-period")
            .unwrap_or(std::time::Duration::from_secs(3600));
        match self.values.get("credential-path") {
            // Set: used (an empty value or NULL turns it off).
            Some(_) => self.string("credential-path").map(|path| (path, period)),
            None => std::path::Path::new(DEFAULT_CREDENTIAL_PATH)
                .is_file()
                .then(|| (DEFAULT_CREDENTIAL_PATH.to_owned(), period)),
        }
    }

    /// `streaming-type=offline`.
    pub fn offline(&self) -> bool {
        self.text("streaming-type") == Some("offline")
    }

    /// `streaming-type=near-realtime` (uploaded as realtime).
    pub fn near_realtime(&self) -> bool {
        self.text("streaming-type") == Some("near-realtime")
    }

    /// `iot-certificate`, when set: its fields, the thing name defaulting to the stream name.
    pub fn iot(&self, stream_name: &str) -> Result<Option<IotSettings>, String> {
        let Some(text) = self
            .text("iot-certificate")
            .filter(|t| !t.is_empty() && *t != "\"\"")
        else {
            return Ok(None);
        };
        let structure = glib::Value::deserialize(text, gst::Structure::static_type())
            .ok()
            .and_then(|v| v.get::<Option<gst::Structure>>().ok().flatten())
            .ok_or("iot-certificate is not a GstStructure")?;
        let field = |name: &str| {
            structure
                .value(name)
                .ok()
                .and_then(|value| match value.get::<String>() {
                    Ok(text) => Some(text),
                    Err(_) => value.serialize().ok().map(String::from),
                })
        };
        let required = |name: &str| {
            field(name).filter(|v| !v.is_empty()).ok_or_else(|| {
                format!(
                    "iot-certificate lacks {name} (it needs endpoint, cert-path, key-path and role-aliases)"
                )
            })
        };
        let seconds = |name: &str, default: u64| -> Result<std::time::Duration, String> {
            match field(name) {
                None => Ok(std::time::Duration::from_secs(default)),
                Some(text) => text
                    .parse::<u64>()
                    .map(|s| std::time::Duration::from_secs(s.max(1)))
                    .map_err(|_| {
                        format!("iot-certificate {name} {text:?} is not a number of seconds")
                    }),
            }
        };
        Ok(Some(IotSettings {
            endpoint: required("endpoint")?,
            cert_path: required("cert-path")?,
            key_path: required("key-path")?,
            ca_path: field("ca-path").filter(|v| !v.is_empty()),
            role_alias: required("role-aliases")?,
            thing_name: field("iot-thing-name")
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| stream_name.to_owned()),
            connect_timeout: seconds("connection-timeout", 3)?,
            completion_timeout: seconds("completion-timeout", 5)?,
        }))
    }

    /// The properties set that have no effect, with why (the muxing ones when the input is Matroska).
    pub fn without_effect(&self, muxing: bool) -> Vec<(&'static str, &'static str)> {
        effects()
            .iter()
            .filter_map(|(name, effect)| match effect {
                _ if !self.values.contains_key(*name) => None,
                Support::Ignored(why) => Some((*name, *why)),
                Support::Muxing if !muxing => Some((*name, UPSTREAM_MUXER)),
                _ => None,
            })
            .collect()
    }
}
