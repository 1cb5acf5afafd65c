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

use std::collections::BTreeSet;

use gst::glib;
use gst::prelude::*;

use super::StreamingType;
use crate::kvs::settings::IotSettings;
use crate::props::{boolean, checked, string_or as string};

/// A string property's value, when set and not empty.
fn not_empty(value: &Option<String>) -> Option<String> {
    value.clone().filter(|s| !s.is_empty())
}

/// What a C++ property does in kvssink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Support {
    Implemented,
    /// Applies to the tracks muxed from the request pads; no effect with Matroska input.
    Muxing,
    /// Accepted, no effect; the text says why (for the start warning).
    Ignored(&'static str),
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
    let d = CppSettings::default();
    vec![
        string(
            "user-agent",
            "Prefixed to kvssink's own user agent in every request (C++ kvssink name)",
            None,
        ),
        uint("connection-timeout", "Seconds to connect to the service (C++ kvssink name)", d.connection_timeout),
        uint(
            "completion-timeout",
            "Seconds for each request to complete; the same as request-timeout in seconds (C++ kvssink name)",
            d.completion_timeout,
        ),
        boolean(
            "restart-on-error",
            "false: the first failed connection is an element error instead of a reconnection (C++ kvssink name)",
            d.restart_on_error,
        ),
        string(
            "codec-id",
            "CodecID of the video track muxed from the video request pad, when not the H.264 one; with Matroska input, no effect",
            d.codec_id.as_deref(),
        ),
        string(
            "track-name",
            "Name of the video track muxed from the video request pad (the audio track is \"audio\"); with Matroska input, no effect",
            d.track_name.as_deref(),
        ),
        uint(
            "timecode-scale",
            "Matroska timecode unit of the streams muxed from the request pads, in milliseconds; with Matroska input, no effect",
            d.timecode_scale,
        ),
        uint(
            "fragment-duration",
            "Shortest fragment muxed from the request pads when not cut at every key frame (key-frame-fragmentation=false, or audio only), in milliseconds",
            d.fragment_duration,
        ),
        boolean(
            "key-frame-fragmentation",
            "Start a fragment at every video key frame of the request pads; false: at the first key frame after fragment-duration",
            d.key_frame_fragmentation,
        ),
        boolean(
            "frame-timecodes",
            "Stamp fragments with the capture time from the buffers' timestamps; false: with the time they reach kvssink",
            d.frame_timecodes,
        ),
        boolean(
            "absolute-fragment-times",
            &none("kvssink always sends absolute producer times"),
            d.absolute_fragment_times,
        ),
        string(
            "content-type",
            "Media type of a stream kvssink creates, such as video/h264,audio/aac; when not set, the tracks' codecs give it",
            d.content_type.as_deref(),
        ),
        boolean("use-original-pts", &none(MUXER), d.use_original_pts),
        boolean("disable-buffer-clipping", &none(MUXER), d.disable_buffer_clipping),
        uint("avg-bandwidth-bps", &none(SDK), d.avg_bandwidth_bps),
        uint("framerate", &none(SDK), d.framerate),
        uint("max-latency", &format!("{} (seconds)", none(SDK)), d.max_latency),
        string(
            "log-config",
            &format!("{} (unset: ../kvs_log_configuration)", none("kvssink logs through GST_DEBUG")),
            d.log_config.as_deref(),
        ),
        boolean("recalculate-metrics", &none(SDK), d.recalculate_metrics),
        boolean("get-kvs-metrics", &none("the stats property has the figures"), d.get_kvs_metrics),
        uint(
            "replay-duration",
            &format!("{} (seconds)", none("kvssink re-sends every fragment not yet persisted")),
            d.replay_duration,
        ),
        uint(
            "rotation-period",
            "The longest credentials from credential-path are used before the file is read again, in seconds",
            d.rotation_period,
        ),
        glib::ParamSpecEnum::builder_with_default("streaming-type", d.streaming_type)
            .nick("Streaming type")
            .blurb("realtime and near-realtime: a live source drops the oldest fragments when the queue is full; offline: the queue always waits, and the stream starts at file-start-time")
            .mutable_ready()
            .build(),
        string(
            "credential-path",
            "The C++ SDK's rotating credential file (CREDENTIALS <key id> [<expiration>] <secret> [<token>]), read again when it changes; used when neither the properties nor the environment give keys (unset: .kvs/credential, when it exists)",
            d.credential_path.as_deref(),
        ),
        glib::ParamSpecBoxed::builder::<gst::Structure>("iot-certificate")
            .nick("IoT certificate")
            .blurb("Credentials from the AWS IoT credentials endpoint with a device certificate, as \"iot-certificate,endpoint=HOST,cert-path=…,key-path=…,ca-path=…,role-aliases=ALIAS[,iot-thing-name=…][,connection-timeout=3][,completion-timeout=5]\"; the thing name defaults to stream-name")
            .mutable_ready()
            .build(),
    ]
}

/// The values of the C++ properties, with the C++ defaults, and which of them were set.
#[derive(Debug, Clone)]
pub struct CppSettings {
    /// The properties that were set: the timeouts apply only then, and the ones without effect are named.
    set: BTreeSet<&'static str>,
    user_agent: Option<String>,
    connection_timeout: u32,
    completion_timeout: u32,
    restart_on_error: bool,
    codec_id: Option<String>,
    track_name: Option<String>,
    timecode_scale: u32,
    fragment_duration: u32,
    key_frame_fragmentation: bool,
    frame_timecodes: bool,
    absolute_fragment_times: bool,
    content_type: Option<String>,
    use_original_pts: bool,
    disable_buffer_clipping: bool,
    avg_bandwidth_bps: u32,
    framerate: u32,
    max_latency: u32,
    log_config: Option<String>,
    recalculate_metrics: bool,
    get_kvs_metrics: bool,
    replay_duration: u32,
    rotation_period: u32,
    streaming_type: StreamingType,
    credential_path: Option<String>,
    iot_certificate: Option<gst::Structure>,
}

/// The C++ element's defaults.
impl Default for CppSettings {
    fn default() -> Self {
        CppSettings {
            set: BTreeSet::new(),
            user_agent: None,
            connection_timeout: 5,
            completion_timeout: 10,
            restart_on_error: true,
            codec_id: Some("V_MPEG4/ISO/AVC".into()),
            track_name: Some("kinesis_video".into()),
            timecode_scale: 1,
            fragment_duration: 2000,
            key_frame_fragmentation: true,
            frame_timecodes: true,
            absolute_fragment_times: true,
            content_type: Some("video/h264".into()),
            use_original_pts: false,
            disable_buffer_clipping: false,
            avg_bandwidth_bps: 4 * 1024 * 1024,
            framerate: 25,
            max_latency: 60,
            log_config: Some("../kvs_log_configuration".into()),
            recalculate_metrics: true,
            get_kvs_metrics: false,
            replay_duration: 40,
            rotation_period: 3600,
            streaming_type: StreamingType::Realtime,
            credential_path: Some(DEFAULT_CREDENTIAL_PATH.into()),
            iot_certificate: None,
        }
    }
}

/// The C++ properties and the fields that hold them, once for both `set` and `get`.
macro_rules! cpp_properties {
    ($($name:literal => $field:ident,)*) => {
        impl CppSettings {
            /// Stores a value; false when `name` is not one of these properties.
            pub fn set(&mut self, name: &str, value: &glib::Value) -> bool {
                match name {
                    $($name => {
                        self.$field = checked(value);
                        self.set.insert($name);
                    })*
                    _ => return false,
                }
                true
            }

            /// The value of one of these properties; None when `name` is not one.
            pub fn get(&self, name: &str) -> Option<glib::Value> {
                Some(match name {
                    $($name => self.$field.to_value(),)*
                    _ => return None,
                })
            }
        }
    };
}

cpp_properties! {
    "user-agent" => user_agent,
    "connection-timeout" => connection_timeout,
    "completion-timeout" => completion_timeout,
    "restart-on-error" => restart_on_error,
    "codec-id" => codec_id,
    "track-name" => track_name,
    "timecode-scale" => timecode_scale,
    "fragment-duration" => fragment_duration,
    "key-frame-fragmentation" => key_frame_fragmentation,
    "frame-timecodes" => frame_timecodes,
    "absolute-fragment-times" => absolute_fragment_times,
    "content-type" => content_type,
    "use-original-pts" => use_original_pts,
    "disable-buffer-clipping" => disable_buffer_clipping,
    "avg-bandwidth-bps" => avg_bandwidth_bps,
    "framerate" => framerate,
    "max-latency" => max_latency,
    "log-config" => log_config,
    "recalculate-metrics" => recalculate_metrics,
    "get-kvs-metrics" => get_kvs_metrics,
    "replay-duration" => replay_duration,
    "rotation-period" => rotation_period,
    "streaming-type" => streaming_type,
    "credential-path" => credential_path,
    "iot-certificate" => iot_certificate,
}

impl CppSettings {
    pub fn user_agent(&self) -> Option<String> {
        not_empty(&self.user_agent)
    }

    /// Seconds (at least 1), when `name` was set.
    fn seconds_if_set(&self, name: &str, seconds: u32) -> Option<std::time::Duration> {
        self.set
            .contains(name)
            .then(|| std::time::Duration::from_secs(u64::from(seconds.max(1))))
    }

    /// `connection-timeout`, when set.
    pub fn connect_timeout(&self) -> Option<std::time::Duration> {
        self.seconds_if_set("connection-timeout", self.connection_timeout)
    }

    /// `completion-timeout`, when set.
    pub fn completion_timeout(&self) -> Option<std::time::Duration> {
        self.seconds_if_set("completion-timeout", self.completion_timeout)
    }

    pub fn restart_on_error(&self) -> bool {
        self.restart_on_error
    }

    /// `content-type`, when set.
    pub fn content_type(&self) -> Option<String> {
        self.set
            .contains("content-type")
            .then(|| not_empty(&self.content_type))
            .flatten()
    }

    pub fn frame_timecodes(&self) -> bool {
        self.frame_timecodes
    }

    /// The credential file and the longest its credentials are kept: `credential-path` when set, else the C++
    /// default `.kvs/credential` when that file exists.
    pub fn credential_file(&self) -> Option<(String, std::time::Duration)> {
        let period = std::time::Duration::from_secs(u64::from(self.rotation_period.max(1)));
        match self.set.contains("credential-path") {
            // Set: used (an empty value or NULL turns it off).
            true => not_empty(&self.credential_path).map(|path| (path, period)),
            false => std::path::Path::new(DEFAULT_CREDENTIAL_PATH)
                .is_file()
                .then(|| (DEFAULT_CREDENTIAL_PATH.to_owned(), period)),
        }
    }

    /// `streaming-type=offline`.
    pub fn offline(&self) -> bool {
        self.streaming_type == StreamingType::Offline
    }

    /// `streaming-type=near-realtime` (uploaded as realtime).
    pub fn near_realtime(&self) -> bool {
        self.streaming_type == StreamingType::NearRealtime
    }

    /// `iot-certificate`, when set: its fields, the thing name defaulting to the stream name.
    pub fn iot(&self, stream_name: &str) -> Result<Option<IotSettings>, String> {
        let Some(structure) = &self.iot_certificate else {
            return Ok(None);
        };
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
                _ if !self.set.contains(name) => None,
                Support::Ignored(why) => Some((*name, *why)),
                Support::Muxing if !muxing => Some((*name, UPSTREAM_MUXER)),
                _ => None,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_cpp_property_has_a_field_and_its_spec_has_the_fields_default() {
        gst::init().unwrap();
        let defaults = CppSettings::default();
        let specs = properties();
        assert_eq!(specs.len(), effects().len());
        for (name, _) in effects() {
            let spec = specs.iter().find(|s| s.name() == *name).unwrap();
            let value = defaults
                .get(name)
                .unwrap_or_else(|| panic!("{name} has no field"));
            assert!(
                spec.default_value().serialize().ok() == value.serialize().ok(),
                "{name}: spec default {:?}, field {:?}",
                spec.default_value(),
                value
            );
            let mut settings = CppSettings::default();
            assert!(settings.set(name, spec.default_value()), "{name}");
            assert!(settings.set.contains(name), "{name}");
        }
    }
}
