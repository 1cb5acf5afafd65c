// SPDX-License-Identifier: MPL-2.0

//! The element messages both elements post on the bus, and the structures their signals carry: one function
//! per message turns a core event into its `GstStructure`, so that the names and fields are defined once
//! (the README's tables describe these) and are tested without a pipeline. The elements only post them.
//!
//! | structure | fields |
//! |---|---|
//! | `kvssink-connection` | `state` (`connected`: `endpoint`, `resending`; `reconnecting`: `reason`, `attempt`, `retry-in-ms`; `rotating`: `reason`), `connection` |
//! | `kvssink-ack` | `event-type`, `connection`, `fragment-timecode`, `fragment-number`, `latency-ms` (when known), `error-id` and `error-code` (ERROR) |
//! | `kvssink-fragment-dropped` | `fragment-timecode`, `bytes`, `reason` |
//! | `kvssink-stream-error` | `reason`, `error-id`, `fatal` (the `stream-error` signal's argument) |
//! | `kvssink-stats` | the `stats` property: counters of the upload |
//! | `kvssink-backlog` | `fragments`, `bytes`, `bytes-per-second`, `eta-ms` (-1: unknown), `waiting` |
//! | `kvssink-window-started` | `trigger`, `trigger-running-time`, `first-running-time`, `fragment-timecode`, `pre-roll`, `end-running-time`, `left-out-fragments`, `left-out-frames`, `left-out-bytes`, `missing-pre-roll` |
//! | `kvssink-window-ended` | `fragments`, `frames`, `bytes`, `first-running-time`, `last-running-time`, `duration`, `extended` |
//! | `kvssink-store-recovered` | `dir`, `fragments`, `frames`, `bytes`, `incomplete`, `first-timecode`, `problems`, `pre-roll-discarded` (set by the element) |
//! | `kvssrc-fragment` | `fragment-number`, `producer-timestamp`, `server-timestamp`, `cluster-time-ns`, `output-time-ns`, `session-start`, `skipped`, `skip-reason`, `tags`, `millis-behind-now` (live) |
//! | `kvssrc-fragment-tags` | `fragment-number`, `tags` (those GetMedia sent after the fragment's frames) |
//! | `kvssrc-session` | `millis-behind-now`, `continuation-token` |
//! | `kvssrc-progress` | `fragments-done`, `fragments-total`, `bytes`, `percent` |
//! | `kvssrc-connection` | `state`: `reconnecting` (`reason`, `attempt`, `retry-in-ms`) or `resumed` (`outage-ms`, `attempts`, `millis-behind-now`) |

use std::time::Duration;

use crate::kvs::ack::AckKind;
use crate::kvssink::queue::Stats;
use crate::kvssink::uploader::UploadEvent;
use crate::kvssink::window::Notice;
use crate::kvssrc::merger::FragmentInfo;

pub const KVSSINK_CONNECTION: &str = "kvssink-connection";
pub const KVSSINK_ACK: &str = "kvssink-ack";
pub const KVSSINK_FRAGMENT_DROPPED: &str = "kvssink-fragment-dropped";
pub const KVSSINK_STREAM_ERROR: &str = "kvssink-stream-error";
pub const KVSSINK_STATS: &str = "kvssink-stats";
pub const KVSSINK_STORE_RECOVERED: &str = "kvssink-store-recovered";
pub const KVSSINK_BACKLOG: &str = "kvssink-backlog";
pub const KVSSINK_WINDOW_STARTED: &str = "kvssink-window-started";
pub const KVSSINK_WINDOW_ENDED: &str = "kvssink-window-ended";
pub const KVSSRC_FRAGMENT: &str = "kvssrc-fragment";
pub const KVSSRC_FRAGMENT_TAGS: &str = "kvssrc-fragment-tags";
pub const KVSSRC_SESSION: &str = "kvssrc-session";
pub const KVSSRC_PROGRESS: &str = "kvssrc-progress";
pub const KVSSRC_CONNECTION: &str = "kvssrc-connection";

/// The bus message for an upload event; `None` for the events that are errors or warnings instead.
pub fn upload_event(event: &UploadEvent) -> Option<gst::Structure> {
    Some(match event {
        UploadEvent::Connected {
            connection,
            endpoint,
            resending,
        } => gst::Structure::builder(KVSSINK_CONNECTION)
            .field("state", "connected")
            .field("connection", connection)
            .field("endpoint", endpoint)
            .field("resending", *resending as u64)
            .build(),
        UploadEvent::Disconnected {
            connection,
            reason,
            retry_in,
            attempt,
        } => gst::Structure::builder(KVSSINK_CONNECTION)
            .field("state", "reconnecting")
            .field("connection", connection)
            .field("reason", reason)
            .field("attempt", attempt)
            .field("retry-in-ms", retry_in.as_millis() as u64)
            .build(),
        UploadEvent::Rotating { connection, reason } => gst::Structure::builder(KVSSINK_CONNECTION)
            .field("state", "rotating")
            .field("connection", connection)
            .field("reason", *reason)
            .build(),
        UploadEvent::Ack {
            connection,
            ack,
            latency,
        } => {
            let mut builder = gst::Structure::builder(KVSSINK_ACK)
                .field("event-type", ack.kind.name())
                .field("connection", connection)
                .field("fragment-timecode", ack.timecode.unwrap_or(0))
                .field(
                    "fragment-number",
                    ack.fragment_number.clone().unwrap_or_default(),
                )
                .field_if_some("latency-ms", latency.map(|l| l.as_millis() as u64));
            if let AckKind::Error { id, code } = &ack.kind {
                builder = builder.field("error-id", id).field("error-code", code);
            }
            builder.build()
        }
        UploadEvent::Dropped {
            timecode,
            bytes,
            reason,
        } => gst::Structure::builder(KVSSINK_FRAGMENT_DROPPED)
            .field("fragment-timecode", timecode)
            .field("bytes", *bytes as u64)
            .field("reason", reason)
            .build(),
        UploadEvent::Backlog(backlog) => gst::Structure::builder(KVSSINK_BACKLOG)
            .field("fragments", backlog.fragments as u64)
            .field("bytes", backlog.bytes as u64)
            .field("bytes-per-second", backlog.rate.round() as u64)
            .field(
                "eta-ms",
                backlog.eta.map_or(-1, |eta| eta.as_millis() as i64),
            )
            .field("waiting", backlog.waiting)
            .build(),
        UploadEvent::UnreadableAck { .. } | UploadEvent::Failed(_) => return None,
    })
}

/// The `stream-error` signal's argument.
pub fn stream_error(reason: &str, error_id: u32, fatal: bool) -> gst::Structure {
    gst::Structure::builder(KVSSINK_STREAM_ERROR)
        .field("reason", reason)
        .field("error-id", error_id)
        .field("fatal", fatal)
        .build()
}

/// The `stats` property of kvssink.
pub fn stats(stats: &Stats) -> gst::Structure {
    gst::Structure::builder(KVSSINK_STATS)
        .field("bytes-sent", stats.bytes_sent)
        .field("fragments-queued", stats.fragments_queued)
        .field("fragments-sent", stats.fragments_sent)
        .field("fragments-received", stats.fragments_received)
        .field("fragments-persisted", stats.fragments_persisted)
        .field("fragments-dropped", stats.fragments_dropped)
        .field("fragments-resent", stats.fragments_resent)
        .field("error-acks", stats.errors_acked)
        .field("connections", stats.connections)
        .field("reconnections", stats.reconnections)
        .field(
            "last-ack-latency-ms",
            stats.last_ack_latency.map_or(0, |d| d.as_millis() as u64),
        )
        .field("queued-fragments", stats.queue_fragments as u64)
        .field("queued-bytes", stats.queue_bytes as u64)
        .field("backlog-fragments", stats.backlog_fragments as u64)
        .field("backlog-bytes", stats.backlog_bytes as u64)
        .build()
}

/// What kvssink found in its fragment store at start (queued before live media): how many fragments,
/// frames and bytes, how many were cut short by the end of the earlier process, the first one's Timecode (0
/// when none) and the number of files cut or set aside (each also a warning).
pub fn store_recovered(
    dir: &str,
    fragments: u64,
    frames: u64,
    bytes: u64,
    incomplete: u64,
    first_timecode: Option<u64>,
    problems: u64,
) -> gst::Structure {
    gst::Structure::builder(KVSSINK_STORE_RECOVERED)
        .field("dir", dir)
        .field("fragments", fragments)
        .field("frames", frames)
        .field("bytes", bytes)
        .field("incomplete", incomplete)
        .field("first-timecode", first_timecode.unwrap_or(0))
        .field("problems", problems)
        .build()
}

/// A fragment kvssrc read (or left out); `millis_behind_now` for live reads.
pub fn fragment(info: &FragmentInfo, millis_behind_now: Option<u64>) -> gst::Structure {
    let tags: Vec<String> = info
        .user_tags
        .iter()
        .map(|t| format!("{}={}", t.name, t.value))
        .collect();
    gst::Structure::builder(KVSSRC_FRAGMENT)
        .field("fragment-number", &info.number)
        .field(
            "producer-timestamp",
            info.producer_timestamp.clone().unwrap_or_default(),
        )
        .field(
            "server-timestamp",
            info.server_timestamp.clone().unwrap_or_default(),
        )
        .field("cluster-time-ns", info.cluster_time_ns)
        .field("output-time-ns", info.output_time_ns)
        .field("session-start", info.session_start)
        .field("skipped", info.skipped.is_some())
        .field("skip-reason", info.skipped.clone().unwrap_or_default())
        .field("tags", gst::Array::new(tags))
        .field_if_some("millis-behind-now", millis_behind_now)
        .build()
}

/// A fragment's own tags that GetMedia sent after its frames (`kvssrc-fragment` has those sent before).
pub fn fragment_tags(number: &str, tags: &[kvs_mkv::tags::SimpleTag]) -> gst::Structure {
    let tags: Vec<String> = tags
        .iter()
        .map(|t| format!("{}={}", t.name, t.value))
        .collect();
    gst::Structure::builder(KVSSRC_FRAGMENT_TAGS)
        .field("fragment-number", number)
        .field("tags", gst::Array::new(tags))
        .build()
}

fn clock_time(ns: u64) -> gst::ClockTime {
    gst::ClockTime::from_nseconds(ns)
}

fn clock_duration(duration: Duration) -> gst::ClockTime {
    gst::ClockTime::from_nseconds(u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX))
}

/// The bus message for a window that started or ended.
pub fn window(notice: &Notice) -> gst::Structure {
    match notice {
        Notice::Started(start) => gst::Structure::builder(KVSSINK_WINDOW_STARTED)
            .field("trigger", start.source.name())
            .field("trigger-running-time", clock_time(start.trigger))
            .field("first-running-time", clock_time(start.first))
            .field("fragment-timecode", start.timecode)
            .field("pre-roll", clock_duration(start.pre_roll))
            .field("end-running-time", start.end.map(clock_time))
            .field("left-out-fragments", start.left_out.fragments)
            .field("left-out-frames", start.left_out.frames)
            .field("left-out-bytes", start.left_out.bytes)
            .field("missing-pre-roll", clock_duration(start.left_out.missing))
            .build(),
        Notice::Ended(end) => gst::Structure::builder(KVSSINK_WINDOW_ENDED)
            .field("fragments", end.fragments)
            .field("frames", end.frames)
            .field("bytes", end.bytes)
            .field("first-running-time", clock_time(end.first))
            .field("last-running-time", clock_time(end.last))
            .field("duration", clock_time(end.last.saturating_sub(end.first)))
            .field("extended", end.extended)
            .build(),
    }
}

/// The end of a GetMedia chunk: how far behind now, and where to continue.
pub fn session(millis_behind_now: Option<u64>, continuation_token: Option<&str>) -> gst::Structure {
    gst::Structure::builder(KVSSRC_SESSION)
        .field("millis-behind-now", millis_behind_now.unwrap_or(0))
        .field("continuation-token", continuation_token.unwrap_or_default())
        .build()
}

/// How far a range read is.
pub fn progress(done: usize, total: usize, bytes: u64) -> gst::Structure {
    gst::Structure::builder(KVSSRC_PROGRESS)
        .field("fragments-done", done as u64)
        .field("fragments-total", total as u64)
        .field("bytes", bytes)
        .field("percent", progress_percent(done, total))
        .build()
}

/// `done` of `total` in percent (100 for an empty read).
pub fn progress_percent(done: usize, total: usize) -> u32 {
    (done * 100).checked_div(total).unwrap_or(100) as u32
}

/// A live read lost its session, or an attempt failed (`attempt`: the outage's attempts so far, 0 when none
/// failed), and reads again after `retry_in`.
pub fn reconnecting(reason: &str, retry_in: Duration, attempt: u32) -> gst::Structure {
    gst::Structure::builder(KVSSRC_CONNECTION)
        .field("state", "reconnecting")
        .field("reason", reason)
        .field("attempt", attempt)
        .field("retry-in-ms", retry_in.as_millis() as u64)
        .build()
}

/// A live read reads again after an outage of `down` (from its first failed attempt to the service's answer);
/// `millis_behind_now` is how far behind the live edge the first fragment read was (when one came with it).
pub fn resumed(down: Duration, attempts: u32, millis_behind_now: Option<u64>) -> gst::Structure {
    gst::Structure::builder(KVSSRC_CONNECTION)
        .field("state", "resumed")
        .field("outage-ms", down.as_millis() as u64)
        .field("attempts", attempts)
        .field_if_some("millis-behind-now", millis_behind_now)
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kvs::ack::AckEvent;

    fn init() {
        gst::init().unwrap();
    }

    #[test]
    fn kvssink_messages() {
        init();
        let connected = upload_event(&UploadEvent::Connected {
            connection: 2,
            endpoint: "https://example".into(),
            resending: 3,
        })
        .unwrap();
        assert_eq!(
            connected.to_string(),
            "kvssink-connection, state=(string)connected, connection=(guint64)2, endpoint=(string)https://example, resending=(guint64)3;"
        );
        let lost = upload_event(&UploadEvent::Disconnected {
            connection: 2,
            reason: "the connection broke".into(),
            retry_in: Duration::from_millis(250),
            attempt: 2,
        })
        .unwrap();
        assert_eq!(lost.get::<String>("state").unwrap(), "reconnecting");
        assert_eq!(lost.get::<u64>("retry-in-ms").unwrap(), 250);
        assert_eq!(lost.get::<u32>("attempt").unwrap(), 2);

        let ack = |kind: AckKind, latency: Option<Duration>| UploadEvent::Ack {
            connection: 1,
            ack: AckEvent {
                kind,
                timecode: Some(1_700_000_000_000),
                fragment_number: Some("9100".into()),
            },
            latency,
        };
        let persisted =
            upload_event(&ack(AckKind::Persisted, Some(Duration::from_millis(40)))).unwrap();
        assert_eq!(persisted.name(), KVSSINK_ACK);
        assert_eq!(persisted.get::<String>("event-type").unwrap(), "PERSISTED");
        assert_eq!(
            persisted.get::<u64>("fragment-timecode").unwrap(),
            1_700_000_000_000
        );
        assert_eq!(persisted.get::<u64>("latency-ms").unwrap(), 40);
        assert!(!persisted.has_field("error-id"));
        let error = upload_event(&ack(
            AckKind::Error {
                id: 4507,
                code: "STREAM_DELETED".into(),
            },
            None,
        ))
        .unwrap();
        assert_eq!(error.get::<u32>("error-id").unwrap(), 4507);
        assert_eq!(error.get::<String>("error-code").unwrap(), "STREAM_DELETED");
        assert!(!error.has_field("latency-ms"));

        let dropped = upload_event(&UploadEvent::Dropped {
            timecode: 5,
            bytes: 100,
            reason: "full".into(),
        })
        .unwrap();
        assert_eq!(
            dropped.to_string(),
            "kvssink-fragment-dropped, fragment-timecode=(guint64)5, bytes=(guint64)100, reason=(string)full;"
        );
        assert!(
            upload_event(&UploadEvent::UnreadableAck {
                connection: 1,
                reason: "x".into()
            })
            .is_none()
        );

        let signal = stream_error("ERROR ACK 4000 X", 4000, false);
        assert_eq!(
            signal.to_string(),
            "kvssink-stream-error, reason=(string)\"ERROR\\ ACK\\ 4000\\ X\", error-id=(uint)4000, fatal=(boolean)false;"
        );
        let counters = stats(&Stats {
            connections: 3,
            ..Default::default()
        });
        assert_eq!(counters.get::<u64>("connections").unwrap(), 3);
        assert_eq!(counters.n_fields(), 15);
    }

    #[test]
    fn kvssrc_messages() {
        init();
        let info = FragmentInfo {
            number: "91343852333181432392682062607743920146264143695".into(),
            producer_timestamp: Some("1700000000.000".into()),
            server_timestamp: None,
            cluster_time_ns: 1,
            output_time_ns: 2,
            session_start: true,
            user_tags: vec![kvs_mkv::tags::SimpleTag::new("camera", "front")],
            skipped: None,
        };
        let live = fragment(&info, Some(120));
        assert_eq!(
            live.get::<String>("producer-timestamp").unwrap(),
            "1700000000.000"
        );
        assert_eq!(live.get::<String>("server-timestamp").unwrap(), "");
        assert!(!live.get::<bool>("skipped").unwrap());
        assert_eq!(
            live.get::<gst::Array>("tags").unwrap().as_slice()[0]
                .get::<String>()
                .unwrap(),
            "camera=front"
        );
        assert_eq!(live.get::<u64>("millis-behind-now").unwrap(), 120);
        assert!(!fragment(&info, None).has_field("millis-behind-now"));

        assert_eq!(
            session(None, Some("t")).to_string(),
            "kvssrc-session, millis-behind-now=(guint64)0, continuation-token=(string)t;"
        );
        let half = progress(5, 10, 1000);
        assert_eq!(half.get::<u32>("percent").unwrap(), 50);
        assert_eq!(progress_percent(0, 0), 100);
        let retry = reconnecting("stalled", Duration::from_secs(1), 2);
        assert_eq!(
            retry.to_string(),
            "kvssrc-connection, state=(string)reconnecting, reason=(string)stalled, attempt=(uint)2, retry-in-ms=(guint64)1000;"
        );
        assert_eq!(
            resumed(Duration::from_millis(61_500), 9, Some(62_000)).to_string(),
            "kvssrc-connection, state=(string)resumed, outage-ms=(guint64)61500, attempts=(uint)9, millis-behind-now=(guint64)62000;"
        );
    }

    /// The README's message tables name every field these functions write (the tables are for people; this
    /// keeps them true).
    #[test]
    fn the_readme_tables_name_every_field() {
        use crate::kvssink::window::{LeftOut, Source, WindowEnd, WindowStart};
        init();
        let readme = include_str!("../README.md");
        let info = FragmentInfo {
            number: "1".into(),
            producer_timestamp: None,
            server_timestamp: None,
            cluster_time_ns: 0,
            output_time_ns: 0,
            session_start: false,
            user_tags: Vec::new(),
            skipped: None,
        };
        let ack = crate::kvs::ack::AckEvent {
            kind: AckKind::Error {
                id: 1,
                code: "X".into(),
            },
            timecode: Some(1),
            fragment_number: None,
        };
        let structures = [
            upload_event(&UploadEvent::Connected {
                connection: 1,
                endpoint: String::new(),
                resending: 0,
            })
            .unwrap(),
            upload_event(&UploadEvent::Disconnected {
                connection: 1,
                reason: String::new(),
                retry_in: Duration::ZERO,
                attempt: 1,
            })
            .unwrap(),
            upload_event(&UploadEvent::Ack {
                connection: 1,
                ack,
                latency: Some(Duration::ZERO),
            })
            .unwrap(),
            upload_event(&UploadEvent::Dropped {
                timecode: 1,
                bytes: 1,
                reason: String::new(),
            })
            .unwrap(),
            store_recovered("", 0, 0, 0, 0, None, 0),
            upload_event(&UploadEvent::Backlog(crate::kvssink::uploader::Backlog {
                fragments: 1,
                bytes: 1,
                rate: 1.0,
                eta: None,
                waiting: false,
            }))
            .unwrap(),
            fragment(&info, Some(1)),
            fragment_tags("1", &[]),
            window(&Notice::Started(WindowStart {
                source: Source::Signal,
                trigger: 0,
                first: 0,
                timecode: 0,
                pre_roll: Duration::ZERO,
                left_out: LeftOut::default(),
                end: Some(1),
            })),
            window(&Notice::Ended(WindowEnd::default())),
            session(None, None),
            progress(1, 1, 1),
            reconnecting("", Duration::ZERO, 0),
            resumed(Duration::ZERO, 1, Some(0)),
        ];
        for structure in structures {
            let row = readme
                .lines()
                .find(|l| l.starts_with(&format!("| `{}` |", structure.name())))
                .unwrap_or_else(|| panic!("no README row for {}", structure.name()));
            for field in structure.fields() {
                assert!(
                    row.contains(&format!("`{field}`")),
                    "the README row of {} lacks {field}",
                    structure.name()
                );
            }
        }
        let stats_row = readme
            .lines()
            .find(|l| l.contains("`kvssink-stats` structure"))
            .unwrap();
        for field in stats(&Stats::default()).fields() {
            let named = stats_row.contains(&format!("`{field}`"))
                || field
                    .strip_prefix("fragments-")
                    .is_some_and(|rest| stats_row.contains(rest));
            assert!(named, "the README's stats row lacks {field}");
        }
    }
}
