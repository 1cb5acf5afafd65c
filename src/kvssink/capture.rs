// SPDX-License-Identifier: MPL-2.0

//! Where each buffer's capture time comes from (the `capture-time` property).
//!
//! - The host clock: the buffer's running time mapped to the wall clock (what kvssink has always done, and
//!   what a source without its own clock gets).
//! - The source's clock: a `GstReferenceTimestampMeta` on the buffer, with caps `timestamp/x-ntp` (seconds
//!   since 1900, what `rtspsrc add-reference-timestamp-meta=true` gives from the camera's RTCP sender reports)
//!   or `timestamp/x-unix` (since 1970). That time is the frame's, exactly ([`Stamp::Source`]). A buffer
//!   without one, after one that had it, gets the same offset between the source's clock and the running time
//!   (an audio buffer, a frame between two sender reports).
//!
//! `auto` takes the source's time as soon as a buffer has it and the host's before. `meta` holds what arrives
//! before the first reference timestamp (a camera sends its first sender report a few seconds in) and stamps
//! it from the first one, so every frame is on the camera's clock; after [`HOLD_LIMIT`] without one it gives
//! up, warns, and goes on as `auto`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use super::CaptureTime;
use super::fragmenter::Stamp;

/// Seconds from 1900 (NTP) to 1970 (Unix).
const NTP_TO_UNIX_S: u64 = 2_208_988_800;
/// `meta` waits at most this long (of running time, or of wall-clock time without one) for the first
/// reference timestamp.
pub const HOLD_LIMIT: Duration = Duration::from_secs(10);

/// The source's capture time carried by `buffer`, if it has a reference timestamp kvssink understands, and
/// the caps name it came with.
pub fn reference_time(buffer: &gst::BufferRef) -> Option<(SystemTime, &'static str)> {
    buffer
        .iter_meta::<gst::ReferenceTimestampMeta>()
        .find_map(|meta| {
            let reference = meta.reference();
            let name = reference.structure(0)?.name();
            let ns = meta.timestamp().nseconds();
            if name == "timestamp/x-ntp" {
                let unix = ns.checked_sub(NTP_TO_UNIX_S * 1_000_000_000)?;
                Some((UNIX_EPOCH + Duration::from_nanos(unix), "timestamp/x-ntp"))
            } else if name == "timestamp/x-unix" {
                Some((UNIX_EPOCH + Duration::from_nanos(ns), "timestamp/x-unix"))
            } else {
                None
            }
        })
}

/// What happened that the application should hear about.
#[derive(Debug, Clone, PartialEq)]
pub enum Notice {
    /// The first reference timestamp: from now on frames carry the source's time. `ahead` is how far the
    /// source's clock is ahead of the host's (negative: behind), measured on this buffer.
    SourceClock { caps: &'static str, ahead_s: f64 },
    /// `meta` waited [`HOLD_LIMIT`] without a reference timestamp: `held` buffers go out on the host clock.
    NoReference { held: usize },
}

/// A buffer held by `meta` until the first reference timestamp.
struct Held {
    data: Bytes,
    running: Option<gst::ClockTime>,
    host: Option<SystemTime>,
}

/// See the module documentation.
#[derive(Default)]
pub struct CaptureTimes {
    mode: CaptureTime,
    /// Source time minus running time, in ns, from the latest buffer with a reference timestamp.
    offset: Option<i128>,
    held: Vec<Held>,
    /// When the first held buffer arrived (wall clock), for the hold limit.
    held_since: Option<std::time::Instant>,
    gave_up: bool,
}

impl CaptureTimes {
    pub fn new(mode: CaptureTime) -> Self {
        CaptureTimes {
            mode,
            ..Default::default()
        }
    }

    /// The stamps for a buffer's `data` (and for buffers held before it): `running` is its running time,
    /// `host` its capture time on the host clock, `reference` its reference timestamp.
    pub fn stamp(
        &mut self,
        data: Bytes,
        running: Option<gst::ClockTime>,
        host: Option<SystemTime>,
        reference: Option<(SystemTime, &'static str)>,
        notices: &mut Vec<Notice>,
    ) -> Vec<(Bytes, Stamp, Option<gst::ClockTime>)> {
        let host_stamp = host.map_or(Stamp::None, Stamp::Host);
        if self.mode == CaptureTime::Clock {
            return vec![(data, host_stamp, running)];
        }
        if let Some((time, caps)) = reference {
            if let Some(running) = running {
                let first = self.offset.is_none();
                self.offset = Some(ns(time) - i128::from(running.nseconds()));
                if first {
                    let ahead_s = host.map_or(0.0, |host| (ns(time) - ns(host)) as f64 / 1e9);
                    notices.push(Notice::SourceClock { caps, ahead_s });
                }
            }
            let mut out = self.release();
            out.push((data, Stamp::Source(time), running));
            return out;
        }
        if let Some(offset) = self.offset {
            let mut out = self.release();
            out.push((
                data,
                running.map_or(host_stamp, |r| source_stamp(offset, r)),
                running,
            ));
            return out;
        }
        if self.mode == CaptureTime::Meta && !self.gave_up {
            let since = *self.held_since.get_or_insert_with(std::time::Instant::now);
            let first_running = self.held.iter().find_map(|h| h.running);
            let waited = match (first_running, running) {
                (Some(first), Some(now)) => {
                    Duration::from_nanos(now.saturating_sub(first).nseconds())
                }
                _ => since.elapsed(),
            };
            self.held.push(Held {
                data,
                running,
                host,
            });
            if waited < HOLD_LIMIT {
                return Vec::new();
            }
            self.gave_up = true;
            notices.push(Notice::NoReference {
                held: self.held.len(),
            });
            return self.release();
        }
        vec![(data, host_stamp, running)]
    }

    /// What is held, with its stamps: from the source's clock once its offset is known, else the host's.
    pub fn release(&mut self) -> Vec<(Bytes, Stamp, Option<gst::ClockTime>)> {
        self.held_since = None;
        let offset = self.offset;
        std::mem::take(&mut self.held)
            .into_iter()
            .map(|held| {
                let stamp = match (offset, held.running) {
                    (Some(offset), Some(running)) => source_stamp(offset, running),
                    _ => held.host.map_or(Stamp::None, Stamp::Host),
                };
                (held.data, stamp, held.running)
            })
            .collect()
    }
}

fn ns(time: SystemTime) -> i128 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(after) => after.as_nanos() as i128,
        Err(before) => -(before.duration().as_nanos() as i128),
    }
}

fn source_stamp(offset: i128, running: gst::ClockTime) -> Stamp {
    let time = offset + i128::from(running.nseconds());
    match u64::try_from(time) {
        Ok(time) => Stamp::Source(UNIX_EPOCH + Duration::from_nanos(time)),
        Err(_) => Stamp::None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(s)
    }

    fn running(ms: u64) -> Option<gst::ClockTime> {
        Some(gst::ClockTime::from_mseconds(ms))
    }

    #[test]
    fn reference_timestamps_in_ntp_and_unix_time_are_read_and_others_ignored() {
        gst::init().unwrap();
        let mut buffer = gst::Buffer::new();
        let unix_s = 1_800_000_000;
        {
            let buffer = buffer.get_mut().unwrap();
            let caps = gst::Caps::new_empty_simple("timestamp/x-something-else");
            gst::ReferenceTimestampMeta::add(buffer, &caps, gst::ClockTime::from_seconds(5), None);
            assert_eq!(reference_time(buffer), None);
            let caps = gst::Caps::new_empty_simple("timestamp/x-ntp");
            let ntp = gst::ClockTime::from_seconds(unix_s + NTP_TO_UNIX_S)
                + gst::ClockTime::from_mseconds(250);
            gst::ReferenceTimestampMeta::add(buffer, &caps, ntp, None);
        }
        let expected = at(unix_s) + Duration::from_millis(250);
        assert_eq!(reference_time(&buffer), Some((expected, "timestamp/x-ntp")));
        let mut unix = gst::Buffer::new();
        let caps = gst::Caps::new_empty_simple("timestamp/x-unix");
        gst::ReferenceTimestampMeta::add(
            unix.get_mut().unwrap(),
            &caps,
            gst::ClockTime::from_seconds(unix_s),
            None,
        );
        assert_eq!(
            reference_time(&unix),
            Some((at(unix_s), "timestamp/x-unix"))
        );
    }

    #[test]
    fn auto_uses_the_host_clock_until_a_reference_and_its_offset_after() {
        let mut times = CaptureTimes::new(CaptureTime::Auto);
        let mut notices = Vec::new();
        let host = at(10_000);
        let out = times.stamp(
            Bytes::from_static(b"a"),
            running(0),
            Some(host),
            None,
            &mut notices,
        );
        assert_eq!(
            out,
            [(Bytes::from_static(b"a"), Stamp::Host(host), running(0))]
        );
        // The camera's clock is an hour behind.
        let camera = at(10_000 - 3_600) + Duration::from_millis(40);
        let out = times.stamp(
            Bytes::from_static(b"b"),
            running(40),
            Some(host),
            Some((camera, "x")),
            &mut notices,
        );
        assert_eq!(
            out,
            [(Bytes::from_static(b"b"), Stamp::Source(camera), running(40))]
        );
        assert_eq!(
            notices,
            [Notice::SourceClock {
                caps: "x",
                ahead_s: -3_599.96
            }]
        );
        // No reference on the next buffer: the same offset.
        let out = times.stamp(
            Bytes::from_static(b"c"),
            running(73),
            Some(host),
            None,
            &mut notices,
        );
        assert_eq!(
            out,
            [(
                Bytes::from_static(b"c"),
                Stamp::Source(camera + Duration::from_millis(33)),
                running(73)
            )]
        );
        assert_eq!(notices.len(), 1);
    }

    #[test]
    fn meta_holds_what_comes_before_the_first_reference_and_stamps_it_from_it() {
        let mut times = CaptureTimes::new(CaptureTime::Meta);
        let mut notices = Vec::new();
        for ms in [0, 33, 66] {
            let out = times.stamp(Bytes::new(), running(ms), Some(at(9)), None, &mut notices);
            assert!(out.is_empty());
        }
        let camera = at(500);
        let out = times.stamp(
            Bytes::new(),
            running(100),
            Some(at(9)),
            Some((camera, "x")),
            &mut notices,
        );
        let stamps: Vec<Stamp> = out.into_iter().map(|(_, s, _)| s).collect();
        let before = |ms| Stamp::Source(camera - Duration::from_millis(ms));
        assert_eq!(
            stamps,
            [before(100), before(67), before(34), Stamp::Source(camera)]
        );
    }

    #[test]
    fn meta_gives_up_after_the_hold_limit_on_the_host_clock() {
        let mut times = CaptureTimes::new(CaptureTime::Meta);
        let mut notices = Vec::new();
        let mut released = Vec::new();
        for ms in (0..=10_000).step_by(1_000) {
            released.extend(times.stamp(
                Bytes::new(),
                running(ms),
                Some(at(ms / 1_000)),
                None,
                &mut notices,
            ));
        }
        assert_eq!(notices, [Notice::NoReference { held: 11 }]);
        let stamps: Vec<Stamp> = released.into_iter().map(|(_, s, _)| s).collect();
        assert_eq!(
            stamps,
            (0..=10).map(|s| Stamp::Host(at(s))).collect::<Vec<_>>()
        );
        let out = times.stamp(
            Bytes::new(),
            running(11_000),
            Some(at(11)),
            None,
            &mut notices,
        );
        assert_eq!(out[0].1, Stamp::Host(at(11)));
    }

    #[test]
    fn clock_ignores_reference_timestamps() {
        let mut times = CaptureTimes::new(CaptureTime::Clock);
        let mut notices = Vec::new();
        let out = times.stamp(
            Bytes::new(),
            running(0),
            Some(at(1)),
            Some((at(2), "x")),
            &mut notices,
        );
        assert_eq!(out[0].1, Stamp::Host(at(1)));
        assert!(notices.is_empty());
    }
}
