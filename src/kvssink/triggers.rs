// SPDX-License-Identifier: MPL-2.0

//! kvssink's upload windows as GStreamer sees them: the `upload-mode`, `pre-roll`, `post-roll`, `trigger`,
//! `event-tags` and `image-prefix` properties, the `kvs-trigger` custom event, the KVS event tags put on a
//! window's first fragment, and the `kvssink-window-started` / `kvssink-window-ended` messages. The windows
//! themselves are [`super::window`]; their bus messages are built in [`crate::messages`].
//!
//! The KVS event tags, as the service documents them (Kinesis Video Streams Developer Guide, "Set up
//! notifications" and "Automated real-time image generation"): a fragment whose Tags carry a SimpleTag named
//! `AWS_KINESISVIDEO_NOTIFICATION` (no value) makes the service publish an SNS notification for it once it
//! is persisted, with the fragment's other tags as the payload; `AWS_KINESISVIDEO_IMAGE_GENERATION` (no value)
//! makes it extract images from the fragment into the stream's S3 destination, with the optional
//! `AWS_KINESISVIDEO_IMAGE_PREFIX` (at most 256 bytes) as the objects' key prefix and the other tags as their
//! metadata. These tags count towards the 10 metadata tags a fragment may carry (names at most 128 bytes,
//! values at most 256); a fragment over the limits gets the ERROR ACK 4009.

use std::time::Duration;

use kvs_mkv::tags::{SimpleTag, write_tags};

use super::EventTags;
use super::fragmenter::{FragmentStart, MAX_TAGS_PER_FRAGMENT};

/// The custom event (downstream, or sent to the element) that triggers or stops an upload window.
pub const TRIGGER_EVENT: &str = "kvs-trigger";

use kvs_mkv::tags::{IMAGE_GENERATION, IMAGE_PREFIX, NOTIFICATION};

/// The tags `event-tags` and `image-prefix` put on a window's first fragment.
pub fn event_tags(flags: EventTags, image_prefix: Option<&str>) -> Vec<SimpleTag> {
    let mut tags = Vec::new();
    if flags.contains(EventTags::NOTIFICATION) {
        tags.push(SimpleTag::new(NOTIFICATION, ""));
    }
    if flags.contains(EventTags::IMAGE_GENERATION) {
        tags.push(SimpleTag::new(IMAGE_GENERATION, ""));
        if let Some(prefix) = image_prefix {
            tags.push(SimpleTag::new(IMAGE_PREFIX, prefix));
        }
    }
    tags
}

/// Puts `tags` before the fragment (a Tags element of their own, as the producer SDK writes each metadata
/// call). Refused when the fragment would carry more than the service's limit.
pub fn tag_fragment(start: &mut FragmentStart, tags: &[SimpleTag]) -> Result<(), String> {
    if tags.is_empty() {
        return Ok(());
    }
    let mut head = [0u8; 4096];
    let copied = start.data.copy_prefix(&mut head);
    let own = kvs_mkv::read_all(&head[..copied])
        .ok()
        .into_iter()
        .flatten()
        .find_map(|event| match event {
            kvs_mkv::Event::Element(e) if e.id == kvs_mkv::ebml::id::TAGS => {
                kvs_mkv::tags::parse_tags(&e.data()).ok().map(|t| t.len())
            }
            _ => None,
        })
        .unwrap_or(0);
    if own + tags.len() > MAX_TAGS_PER_FRAGMENT {
        return Err(format!(
            "the fragment already carries {own} metadata tags: with {} event tags it would have more than the \
             service's {MAX_TAGS_PER_FRAGMENT}",
            tags.len()
        ));
    }
    let mut bytes = Vec::new();
    write_tags(&mut bytes, tags, 8);
    let mut data = kvs_mkv::Rope::from(bytes::Bytes::from(bytes));
    data.append(std::mem::take(&mut start.data));
    start.data = data;
    Ok(())
}

/// A `kvs-trigger` event's request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TriggerRequest {
    /// Start at this time (None: the time of the latest media), for this long (None: until stopped).
    Start {
        at: Option<TriggerTime>,
        duration: Option<Duration>,
    },
    Stop {
        at: Option<TriggerTime>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TriggerTime {
    Running(u64),
    /// Nanoseconds since the Unix epoch.
    Unix(u64),
}

/// Reads a `kvs-trigger` structure: `running-time` or `unix-time` (guint64 ns, optional), `duration`
/// (guint64 ns, optional), `stop` (boolean, optional).
pub fn trigger_request(s: &gst::StructureRef) -> Result<TriggerRequest, String> {
    let time = |name: &str| -> Result<Option<u64>, String> {
        match s.get_optional::<u64>(name) {
            Ok(value) => Ok(value),
            Err(_) => Err(format!(
                "{TRIGGER_EVENT}: {name} must be a guint64 of nanoseconds"
            )),
        }
    };
    let at = match (time("running-time")?, time("unix-time")?) {
        (Some(_), Some(_)) => {
            return Err(format!(
                "{TRIGGER_EVENT}: give running-time or unix-time, not both"
            ));
        }
        (Some(running), None) => Some(TriggerTime::Running(running)),
        (None, Some(unix)) => Some(TriggerTime::Unix(unix)),
        (None, None) => None,
    };
    let stop = s
        .get_optional::<bool>("stop")
        .map_err(|_| format!("{TRIGGER_EVENT}: stop must be a boolean"))?
        .unwrap_or(false);
    let duration = time("duration")?.map(Duration::from_nanos);
    if stop {
        if duration.is_some() {
            return Err(format!("{TRIGGER_EVENT}: a stop has no duration"));
        }
        return Ok(TriggerRequest::Stop { at });
    }
    Ok(TriggerRequest::Start { at, duration })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trigger_events_are_read_and_bad_ones_named() {
        gst::init().unwrap();
        let parse = |s: &str| trigger_request(&s.parse::<gst::Structure>().unwrap());
        assert_eq!(
            parse("kvs-trigger, running-time=(guint64)5000000000, duration=(guint64)4000000000"),
            Ok(TriggerRequest::Start {
                at: Some(TriggerTime::Running(5_000_000_000)),
                duration: Some(Duration::from_secs(4))
            })
        );
        assert_eq!(
            parse("kvs-trigger"),
            Ok(TriggerRequest::Start {
                at: None,
                duration: None
            })
        );
        assert_eq!(
            parse("kvs-trigger, stop=true, unix-time=(guint64)7"),
            Ok(TriggerRequest::Stop {
                at: Some(TriggerTime::Unix(7))
            })
        );
        assert_eq!(
            parse("kvs-trigger, duration=4"),
            Err("kvs-trigger: duration must be a guint64 of nanoseconds".to_owned())
        );
        assert_eq!(
            parse("kvs-trigger, running-time=(guint64)1, unix-time=(guint64)2"),
            Err("kvs-trigger: give running-time or unix-time, not both".to_owned())
        );
    }

    #[test]
    fn event_tags_follow_the_flags_and_the_prefix_goes_with_image_generation() {
        let names = |tags: Vec<SimpleTag>| tags.into_iter().map(|t| t.name).collect::<Vec<_>>();
        assert!(event_tags(EventTags::empty(), Some("x")).is_empty());
        assert_eq!(
            names(event_tags(EventTags::NOTIFICATION, Some("x"))),
            [NOTIFICATION]
        );
        assert_eq!(
            names(event_tags(EventTags::all(), Some("cam1/"))),
            [NOTIFICATION, IMAGE_GENERATION, IMAGE_PREFIX]
        );
    }
}
