// SPDX-License-Identifier: MPL-2.0

//! Turns what GetMedia and GetMediaForFragmentList return (one complete Matroska document per fragment) into
//! what a player wants: one EBML header and Segment, the Tracks once, then the clusters on one timeline, with a
//! new Segment only when the tracks really change. GStreamer-free; the element feeds it response bytes.
//!
//! - The AWS tags (`AWS_KINESISVIDEO_*`) and user tags become [`Output::Fragment`] / [`Output::Session`] /
//!   [`Output::Error`] events instead of bytes.
//! - Repeats are recognised by fragment number (the same fragment sent twice, e.g. after a broken session), and
//!   by producer timestamp and first frame (a producer re-sent a fragment after a reconnection and the service
//!   stored it twice under a new number): they are left out, with the reason in the fragment event. Cluster timecodes never
//!   decide: a producer sending RELATIVE timecodes starts again at 0 on every restart, and a cluster whose
//!   timecode goes back is a new producer session ([`FragmentInfo::session_start`]), not a repeat.
//! - One timeline (merged mode): every cluster is placed at its producer timestamp (from the fragment's
//!   `AWS_KINESISVIDEO_PRODUCER_TIMESTAMP` tag), so the output's timestamps are epoch times, sessions keep the
//!   gaps between them, and a session restarting at timecode 0 follows the one before. Without that tag a
//!   cluster keeps its distance to the previous one of its session. Time never goes back: a cluster that would
//!   start at or before the last frame written goes right after it. [`Merger::closing_gaps`] instead closes every
//!   gap of more than a second between fragments, for a download to be watched straight through.
//! - Clusters are written with an unknown size, child by child as they arrive, so a live fragment reaches the
//!   output with the latency of its frames, not of the whole fragment. When a session breaks inside a cluster,
//!   [`Merger::interrupted`] keeps what was written; the next session repeats that fragment from its start and
//!   only the children not yet written are passed on.
//! - Input pushed as [`Bytes`] is not copied: output frames are slices of it ([`Rope`]s).
//! - `raw` mode passes the service's bytes through unchanged (the events are still produced).

use std::collections::{HashMap, HashSet, VecDeque};

use bytes::Bytes;
use kvs_mkv::ebml::{UNKNOWN_SIZE_8, id, write_id, write_uint_fixed};
use kvs_mkv::tags::{self, SimpleTag};
use kvs_mkv::{Error, Event, MkvReader, Rope};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    #[default]
    Merged,
    Raw,
}

/// One fragment, from its AWS tags.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FragmentInfo {
    pub number: String,
    pub producer_timestamp: Option<String>,
    pub server_timestamp: Option<String>,
    /// The cluster's Timecode as stored, in ns: on the producer's own timeline (epoch time for ABSOLUTE
    /// producers, time since its session started for RELATIVE ones).
    pub cluster_time_ns: u64,
    /// Where the cluster is in the merged output, in ns (epoch time when the producer timestamp is known).
    pub output_time_ns: u64,
    /// The first fragment of a producer session: the first one read, or its cluster time went back.
    pub session_start: bool,
    /// The producer's tags: not the service's, but with the event tags (`AWS_KINESISVIDEO_NOTIFICATION`...).
    pub user_tags: Vec<SimpleTag>,
    /// Left out of the merged output, and why.
    pub skipped: Option<String>,
}

/// A frame's times: its producer timestamp (the fragment's, plus the frame's offset in it) and the fragment's
/// server timestamp, in ns since the Unix epoch, when the fragment's tags gave them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FrameTimes {
    pub producer_ns: Option<u64>,
    pub server_ns: Option<u64>,
}

impl FrameTimes {
    fn of(info: &FragmentInfo) -> Self {
        FrameTimes {
            producer_ns: info.producer_timestamp.as_deref().and_then(seconds_to_ns),
            server_ns: info.server_timestamp.as_deref().and_then(seconds_to_ns),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Bytes for the output, in order. `header` marks an EBML header + Segment start + Info + Tracks; `frame`
    /// is set when the bytes are one frame (merged mode).
    Data {
        data: Rope,
        header: bool,
        frame: Option<FrameTimes>,
    },
    /// A fragment's cluster started (after its tags were read).
    Fragment(FragmentInfo),
    /// After a fragment: how far behind now the session is, and where to continue.
    Session {
        millis_behind_now: Option<u64>,
        continuation_token: Option<String>,
    },
    /// An error chunk in the stream.
    Error { code: String, id: String },
    /// A fragment's own tags that came after its cluster (where GetMedia puts a producer's tags).
    FragmentTags {
        number: String,
        tags: Vec<SimpleTag>,
    },
}

/// The tag names the GetMediaForFragmentList reference gives (GetMedia's are in [`kvs_mkv::tags`]).
const SERVER_SIDE_TIMESTAMP: &str = "AWS_KINESISVIDEO_SERVER_SIDE_TIMESTAMP";
const PRODUCER_SIDE_TIMESTAMP: &str = "AWS_KINESISVIDEO_PRODUCER_SIDE_TIMESTAMP";
const EXCEPTION_ERROR_CODE: &str = "AWS_KINESISVIDEO_EXCEPTION_ERROR_CODE";
const EXCEPTION_MESSAGE: &str = "AWS_KINESISVIDEO_EXCEPTION_MESSAGE";

/// With gaps closed, a fragment that would start more than this after the last frame starts one frame
/// interval after it.
const MAX_GAP_NS: u64 = 1_000_000_000;
/// The frame interval assumed before two frames were seen.
const DEFAULT_FRAME_INTERVAL_NS: u64 = 33_333_333;

/// Fragments remembered (by number and by producer timestamp) to recognise repeats.
const REMEMBERED: usize = 16_384;

#[derive(Debug, Default)]
struct Document {
    ebml: Option<Bytes>,
    info: Option<Bytes>,
    tracks: Option<Bytes>,
    timecode_scale: u64,
    fragment: Option<FragmentInfo>,
    user_tags: Vec<SimpleTag>,
    /// The fragment of this document that went out: its number, and whether it was left out.
    announced: Option<(String, bool)>,
}

/// The cluster being passed through.
#[derive(Debug)]
struct OpenCluster {
    number: String,
    /// Its Timecode in the output, in units of the timecode scale.
    output_units: u64,
    /// Children written so far.
    written: usize,
    /// Children of this cluster seen in the current session.
    seen: usize,
    /// Children to leave out (already written before an interruption).
    skip: usize,
    /// False when the whole cluster is left out.
    pass: bool,
    /// Its producer timestamp, and whether its first frame's fingerprint was noted.
    producer: Option<String>,
    fingerprinted: bool,
    /// The rest of a copy of the cluster written before it (not a fragment of its own).
    copy: bool,
    /// The fragment's producer and server timestamps.
    times: FrameTimes,
}

/// A fragment with the producer timestamp of one already written: a copy if its first frame is the same too.
/// It waits for that frame to be judged.
#[derive(Debug)]
struct Undecided {
    info: FragmentInfo,
    placement: Placement,
    /// The fragments written with the same producer timestamp, and their first frames' fingerprints.
    candidates: Vec<(String, Option<u64>)>,
    /// Its children so far (none is a frame).
    children: Vec<Rope>,
}

/// Where a cluster goes: what [`Merger::place`] decided.
#[derive(Debug, Clone, Copy)]
struct Placement {
    cluster_ns: u64,
    output_ns: u64,
    shift: i128,
}

/// What identifies a frame well enough to tell a copy: its length and first bytes.
fn fingerprint(element: &kvs_mkv::Element) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut head = [0u8; 256];
    let n = element.bytes.copy_prefix(&mut head);
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    element.len().hash(&mut hasher);
    head[..n].hash(&mut hasher);
    hasher.finish()
}

/// Fragment numbers and producer timestamps of the fragments written, to recognise repeats.
#[derive(Debug, Default)]
struct Written {
    order: VecDeque<(String, Option<String>)>,
    numbers: HashSet<String>,
    /// Producer timestamp → the fragments written with it and their first frames' fingerprints.
    producer_timestamps: HashMap<String, Vec<(String, Option<u64>)>>,
}

impl Written {
    fn number_repeat(&self, info: &FragmentInfo) -> Option<String> {
        (!info.number.is_empty() && self.numbers.contains(&info.number)).then(|| {
            format!(
                "fragment {} was already written (the service sent it again)",
                info.number
            )
        })
    }

    /// The fragments written with the same producer timestamp, and their first frames' fingerprints.
    fn same_producer_time(&self, info: &FragmentInfo) -> Vec<(String, Option<u64>)> {
        info.producer_timestamp
            .as_ref()
            .and_then(|p| self.producer_timestamps.get(p))
            .cloned()
            .unwrap_or_default()
    }

    fn set_fingerprint(&mut self, producer: &str, number: &str, fingerprint: u64) {
        if let Some(written) = self.producer_timestamps.get_mut(producer)
            && let Some((_, known)) = written.iter_mut().find(|(n, _)| n == number)
        {
            known.get_or_insert(fingerprint);
        }
    }

    fn add(&mut self, info: &FragmentInfo) {
        if self.order.len() == REMEMBERED
            && let Some((number, producer)) = self.order.pop_front()
        {
            self.numbers.remove(&number);
            if let Some(producer) = producer
                && let Some(written) = self.producer_timestamps.get_mut(&producer)
            {
                written.retain(|(n, _)| *n != number);
                if written.is_empty() {
                    self.producer_timestamps.remove(&producer);
                }
            }
        }
        if !info.number.is_empty() {
            self.numbers.insert(info.number.clone());
        }
        if let Some(producer) = &info.producer_timestamp {
            self.producer_timestamps
                .entry(producer.clone())
                .or_default()
                .push((info.number.clone(), None));
        }
        self.order
            .push_back((info.number.clone(), info.producer_timestamp.clone()));
    }
}

/// `"1511852108.513"` (seconds, as the tags write them) → ns.
fn seconds_to_ns(text: &str) -> Option<u64> {
    let (whole, fraction) = text.trim().split_once('.').unwrap_or((text.trim(), ""));
    let seconds: u64 = whole.parse().ok()?;
    let digits: String = fraction.chars().take(9).collect();
    let nanos: u64 = if digits.is_empty() {
        0
    } else {
        format!("{digits:0<9}").parse().ok()?
    };
    seconds.checked_mul(1_000_000_000)?.checked_add(nanos)
}

#[derive(Debug)]
pub struct Merger {
    mode: Mode,
    reader: MkvReader,
    doc: Document,
    /// The Tracks (and timecode scale) of the Segment being written.
    out_header: Option<(Bytes, u64)>,
    cluster: Option<OpenCluster>,
    /// Set when a cluster waits for its Timecode to be judged.
    pending_children: Vec<Rope>,
    /// An interrupted cluster, to be continued if the next session starts with the same fragment.
    interrupted: Option<OpenCluster>,
    /// A possible copy, waiting for its first frame.
    undecided: Option<Undecided>,
    /// The last cluster written whole (its number, children written, output Timecode), while no other was
    /// written after it: a copy of it that holds more frames continues it.
    last_cluster: Option<(String, usize, u64)>,
    /// The previous fragment's cluster time as stored (ns), and where it went in the output (ns).
    previous: Option<(u64, u64)>,
    /// Output time − producer time (ns) of the current session's fragments.
    shift: i128,
    /// Producer time − cluster time of the previous fragment (ns): constant within a producer session.
    previous_offset: Option<i128>,
    /// Output time (ns) of the latest frame written.
    last_frame_ns: Option<u64>,
    /// Time between the last two frames written (ns), for closing gaps.
    frame_interval_ns: u64,
    /// Close gaps longer than [`MAX_GAP_NS`] between fragments (`timeline=continuous`).
    close_gaps: bool,
    written: Written,
    pub fragments_written: u64,
    pub fragments_skipped: u64,
}

impl Merger {
    pub fn new(mode: Mode) -> Self {
        Merger {
            mode,
            reader: MkvReader::new(),
            doc: Document {
                timecode_scale: 1_000_000,
                ..Default::default()
            },
            out_header: None,
            cluster: None,
            pending_children: Vec::new(),
            interrupted: None,
            undecided: None,
            last_cluster: None,
            previous: None,
            shift: 0,
            previous_offset: None,
            last_frame_ns: None,
            frame_interval_ns: DEFAULT_FRAME_INTERVAL_NS,
            close_gaps: false,
            written: Written::default(),
            fragments_written: 0,
            fragments_skipped: 0,
        }
    }

    /// Closes the gaps between fragments (more than a second) instead of keeping producer times: for watching a
    /// download straight through.
    pub fn closing_gaps(mut self) -> Self {
        self.close_gaps = true;
        self
    }

    /// Whether a fragment's cluster is being written (not yet ended): a response that breaks off now leaves it
    /// to be continued.
    pub fn in_cluster(&self) -> bool {
        self.cluster.is_some()
    }

    /// The response broke off: what follows comes from a new response.
    pub fn interrupted(&mut self) {
        self.reader = MkvReader::new();
        self.doc = Document {
            timecode_scale: 1_000_000,
            ..Default::default()
        };
        self.pending_children.clear();
        self.undecided = None;
        if let Some(cluster) = self.cluster.take()
            && cluster.pass
        {
            // Continued by the next session if it starts with the same fragment, or by a copy of it (the
            // service lost the fragment and the producer sent it again under another number).
            self.last_cluster = Some((
                cluster.number.clone(),
                cluster.written,
                cluster.output_units,
            ));
            self.interrupted = Some(cluster);
        }
    }

    /// Feeds response bytes (kept, not copied); returns what they give, in order.
    pub fn push(&mut self, data: Bytes) -> Result<Vec<Output>, Error> {
        let mut out = Vec::new();
        if self.mode == Mode::Raw {
            out.push(Output::Data {
                data: Rope::from(data.clone()),
                header: false,
                frame: None,
            });
        }
        self.reader.push_bytes(data);
        while let Some(event) = self.reader.next_event()? {
            self.event(event, &mut out)?;
        }
        Ok(out)
    }

    /// The response ended: a cluster cut short is an error (a truncated response).
    pub fn finish(&mut self) -> Result<Vec<Output>, Error> {
        let mut out = Vec::new();
        for event in self.reader.finish()? {
            self.event(event, &mut out)?;
        }
        Ok(out)
    }

    fn merged(&self) -> bool {
        self.mode == Mode::Merged
    }

    fn event(&mut self, event: Event, out: &mut Vec<Output>) -> Result<(), Error> {
        match event {
            Event::EbmlHeader(element) => {
                self.doc = Document {
                    ebml: Some(element.to_bytes()),
                    timecode_scale: 1_000_000,
                    ..Default::default()
                };
            }
            Event::SegmentStart { .. } | Event::SegmentEnd { .. } => {}
            Event::Element(element) => match element.id {
                id::INFO => {
                    self.doc.timecode_scale = kvs_mkv::header::timecode_scale(&element.data())?;
                    self.doc.info = Some(element.to_bytes());
                }
                id::TRACKS => self.doc.tracks = Some(element.to_bytes()),
                id::TAGS => self.tags(&tags::parse_tags(&element.data())?, out),
                _ => {}
            },
            Event::ClusterStart { .. } => {
                self.pending_children.clear();
                self.cluster = None;
            }
            Event::ClusterChild(element) => {
                let is_frame = matches!(element.id, id::SIMPLE_BLOCK | id::BLOCK_GROUP);
                if let Some(mut undecided) = self.undecided.take() {
                    if !is_frame {
                        undecided.children.push(element.bytes);
                        self.undecided = Some(undecided);
                        return Ok(());
                    }
                    let frame = Some(fingerprint(&element));
                    if let Some((first, _)) = undecided
                        .candidates
                        .iter()
                        .find(|(_, known)| *known == frame)
                    {
                        let reason = format!(
                            "a copy of fragment {first} (same producer timestamp {} and first frame): the producer \
                             sent it again and the service stored it twice",
                            undecided
                                .info
                                .producer_timestamp
                                .as_deref()
                                .unwrap_or_default()
                        );
                        match self.last_cluster.take_if(|(number, _, _)| number == first) {
                            // A copy of the cluster just written: the first may have been stored cut short (its
                            // connection ended cleanly in mid-fragment), so the copy's frames beyond those written
                            // go on in the same output cluster. The children so far and this frame are counted
                            // below as for any cluster.
                            Some((_, written, output_units)) => {
                                let mut info = undecided.info;
                                let times = FrameTimes::of(&info);
                                info.skipped = Some(reason);
                                self.announce(info, out);
                                self.fragments_skipped += 1;
                                self.cluster = Some(OpenCluster {
                                    number: first.clone(),
                                    output_units,
                                    written,
                                    seen: undecided.children.len() + 1,
                                    skip: written,
                                    pass: true,
                                    producer: None,
                                    fingerprinted: true,
                                    copy: true,
                                    times,
                                });
                            }
                            None => {
                                let seen = undecided.children.len() + 2;
                                self.leave_out(
                                    undecided.info,
                                    reason,
                                    undecided.placement,
                                    seen,
                                    out,
                                );
                                return Ok(());
                            }
                        }
                    } else {
                        self.write_cluster(
                            undecided.info,
                            undecided.placement,
                            undecided.children,
                            out,
                        )?;
                    }
                }
                if let Some(cluster) = &mut self.cluster {
                    cluster.seen += 1;
                    if cluster.pass && cluster.seen > cluster.skip {
                        cluster.written += 1;
                        if is_frame && !cluster.fingerprinted {
                            cluster.fingerprinted = true;
                            if let Some(producer) = cluster.producer.clone() {
                                let number = cluster.number.clone();
                                self.written.set_fingerprint(
                                    &producer,
                                    &number,
                                    fingerprint(&element),
                                );
                            }
                        }
                        let (output_units, times) = self
                            .cluster
                            .as_ref()
                            .map_or((0, FrameTimes::default()), |c| (c.output_units, c.times));
                        self.pass_child(output_units, times, element, out);
                    }
                } else if element.id == id::TIMECODE {
                    let timecode = kvs_mkv::ebml::read_uint(&element.data())?;
                    self.open_cluster(timecode, out)?;
                } else {
                    // Children before the Timecode (CRC-32, Void) wait for it.
                    self.pending_children.push(element.bytes);
                }
            }
            Event::ClusterEnd { .. } => {
                // A possible copy without a frame: nothing would be written anyway.
                if let Some(undecided) = self.undecided.take() {
                    let first = undecided
                        .candidates
                        .first()
                        .map(|(n, _)| n.clone())
                        .unwrap_or_default();
                    let reason = format!("a copy of fragment {first} without frames");
                    self.leave_out(undecided.info, reason, undecided.placement, 0, out);
                    self.cluster = None;
                }
                if let Some(cluster) = self.cluster.take()
                    && cluster.pass
                {
                    if !cluster.copy {
                        self.fragments_written += 1;
                    }
                    self.last_cluster =
                        Some((cluster.number, cluster.written, cluster.output_units));
                    // A cluster written whole after the interrupted one: continuing that now would go back.
                    self.interrupted = None;
                }
            }
        }
        Ok(())
    }

    /// Writes a child of the current cluster (merged mode), noting where its frame is on the timeline; a frame
    /// goes with its times (`times`: its fragment's).
    fn pass_child(
        &mut self,
        output_units: u64,
        times: FrameTimes,
        element: kvs_mkv::Element,
        out: &mut Vec<Output>,
    ) {
        let mut frame = None;
        if let Ok(block) = element.block() {
            let offset_ns =
                i64::from(block.relative_timecode).saturating_mul(self.doc.timecode_scale as i64);
            frame = Some(FrameTimes {
                producer_ns: times
                    .producer_ns
                    .map(|p| p.saturating_add_signed(offset_ns)),
                server_ns: times.server_ns,
            });
            let units = output_units.saturating_add_signed(i64::from(block.relative_timecode));
            let ns = units.saturating_mul(self.doc.timecode_scale);
            if let Some(last) = self.last_frame_ns
                && ns > last
                && ns - last <= MAX_GAP_NS
            {
                self.frame_interval_ns = ns - last;
            }
            self.last_frame_ns = Some(self.last_frame_ns.map_or(ns, |last| last.max(ns)));
        }
        if self.merged() {
            out.push(Output::Data {
                data: element.bytes,
                header: false,
                frame,
            });
        }
    }

    fn tags(&mut self, simple: &[SimpleTag], out: &mut Vec<Output>) {
        let get = |name: &str| {
            simple
                .iter()
                .find(|t| t.name == name)
                .map(|t| t.value.clone())
        };
        // GetMediaForFragmentList is documented with other names for the timestamps and errors than GetMedia
        // uses; both are read.
        let error_code = get(tags::ERROR_CODE).or_else(|| get(EXCEPTION_ERROR_CODE));
        let error_id = get(tags::ERROR_ID).or_else(|| get(EXCEPTION_MESSAGE));
        if error_code.is_some() || error_id.is_some() {
            out.push(Output::Error {
                code: error_code.unwrap_or_default(),
                id: error_id.unwrap_or_default(),
            });
            return;
        }
        if let Some(number) = get(tags::FRAGMENT_NUMBER) {
            self.doc.fragment = Some(FragmentInfo {
                number,
                producer_timestamp: get(tags::PRODUCER_TIMESTAMP)
                    .or_else(|| get(PRODUCER_SIDE_TIMESTAMP)),
                server_timestamp: get(tags::SERVER_TIMESTAMP)
                    .or_else(|| get(SERVER_SIDE_TIMESTAMP)),
                ..Default::default()
            });
        }
        let behind = get(tags::MILLIS_BEHIND_NOW).and_then(|v| v.parse().ok());
        let token = get(tags::CONTINUATION_TOKEN);
        if behind.is_some() || token.is_some() {
            out.push(Output::Session {
                millis_behind_now: behind,
                continuation_token: token,
            });
        }
        let own = simple
            .iter()
            .filter(|t| {
                !t.name.starts_with("AWS_KINESISVIDEO_")
                    || tags::EVENT_TAGS.contains(&t.name.as_str())
            })
            .cloned();
        match &self.doc.announced {
            None => self.doc.user_tags.extend(own),
            Some((number, false)) => {
                let tags: Vec<SimpleTag> = own.collect();
                if !tags.is_empty() {
                    out.push(Output::FragmentTags {
                        number: number.clone(),
                        tags,
                    });
                }
            }
            // A fragment left out: so are its tags.
            Some((_, true)) => {}
        }
    }

    /// A fragment's cluster goes out (or is left out): its info first.
    fn announce(&mut self, info: FragmentInfo, out: &mut Vec<Output>) {
        self.doc.announced = Some((info.number.clone(), info.skipped.is_some()));
        out.push(Output::Fragment(info));
    }

    /// Where a cluster stored at `cluster_ns` goes in the output (ns), whether a producer session starts with
    /// it, and the shift (output − producer time) to keep for the fragments after it. A session starts with the
    /// first fragment, a cluster time that goes back, or (for a producer of RELATIVE timecodes) a new session
    /// start time, seen as a jump of more than a second between producer time and cluster time.
    fn place(&self, info: &FragmentInfo, cluster_ns: u64) -> (u64, bool, i128) {
        let producer_ns = info
            .producer_timestamp
            .as_deref()
            .and_then(seconds_to_ns)
            .map(i128::from);
        let cluster = i128::from(cluster_ns);
        let offset = producer_ns.map(|p| p - cluster);
        let session_start = match self.previous {
            None => true,
            Some((previous, _)) if cluster_ns < previous => true,
            Some(_) => {
                matches!((offset, self.previous_offset), (Some(a), Some(b)) if (a - b).abs() > 1_000_000_000)
            }
        };
        let scale = i128::from(self.doc.timecode_scale.max(1));
        let interval = i128::from(self.frame_interval_ns).max(scale);
        let last = self.last_frame_ns.map(i128::from);
        let mut placed = match (producer_ns, self.previous) {
            // A shifted session keeps its shift (its fragments keep their distances); a new one starts at its
            // producer time again, unless gaps are closed.
            (Some(producer), _) => {
                producer
                    + if session_start && !self.close_gaps {
                        0
                    } else {
                        self.shift
                    }
            }
            (None, Some((previous, previous_out))) if !session_start => {
                i128::from(previous_out) + cluster - i128::from(previous)
            }
            (None, _) => last.map_or(cluster, |last| last + interval),
        };
        if let Some(last) = last {
            if self.close_gaps && placed > last + i128::from(MAX_GAP_NS) {
                placed = last + interval;
            }
            // Never at or before the last frame written.
            if placed <= last {
                placed = last + interval;
            }
        }
        let placed = (placed.max(0) + scale - 1) / scale * scale;
        let shift = producer_ns.map_or(self.shift, |producer| placed - producer);
        (placed as u64, session_start, shift)
    }

    fn open_cluster(&mut self, timecode: u64, out: &mut Vec<Output>) -> Result<(), Error> {
        let scale = self.doc.timecode_scale.max(1);
        let cluster_ns = timecode.saturating_mul(scale);
        let mut info = self.doc.fragment.take().unwrap_or_default();
        info.cluster_time_ns = cluster_ns;
        info.user_tags = std::mem::take(&mut self.doc.user_tags);
        let children = std::mem::take(&mut self.pending_children);

        // The continuation of a cluster a broken session left half written: its Timecode is out already.
        // (A session that starts earlier, at a server time, first repeats fragments already written: they are
        // left out and the interrupted one waits for its turn.)
        if let Some(previous) = self
            .interrupted
            .take_if(|previous| !info.number.is_empty() && previous.number == info.number)
        {
            // The Timecode counts as this session's first child.
            let mut cluster = OpenCluster {
                seen: 1,
                skip: previous.written,
                ..previous
            };
            for child in children {
                cluster.seen += 1;
                if cluster.seen > cluster.skip {
                    cluster.written += 1;
                    if self.merged() {
                        out.push(Output::Data {
                            data: child,
                            header: false,
                            frame: None,
                        });
                    }
                }
            }
            self.cluster = Some(cluster);
            return Ok(());
        }

        let (output_ns, session_start, shift) = self.place(&info, cluster_ns);
        info.output_time_ns = output_ns;
        info.session_start = session_start;
        let placement = Placement {
            cluster_ns,
            output_ns,
            shift,
        };
        if self.merged() {
            if let Some(reason) = self.written.number_repeat(&info) {
                self.leave_out(info, reason, placement, children.len() + 1, out);
                return Ok(());
            }
            let candidates = self.written.same_producer_time(&info);
            if !candidates.is_empty() {
                self.undecided = Some(Undecided {
                    info,
                    placement,
                    candidates,
                    children,
                });
                return Ok(());
            }
        }
        self.write_cluster(info, placement, children, out)
    }

    /// Leaves a fragment out (reported with `reason`); `seen`: its children so far.
    fn leave_out(
        &mut self,
        mut info: FragmentInfo,
        reason: String,
        placement: Placement,
        seen: usize,
        out: &mut Vec<Output>,
    ) {
        let number = info.number.clone();
        info.skipped = Some(reason);
        self.announce(info, out);
        self.fragments_skipped += 1;
        let output_units = placement.output_ns / self.doc.timecode_scale.max(1);
        self.cluster = Some(OpenCluster {
            number,
            output_units,
            written: 0,
            seen,
            skip: 0,
            pass: false,
            producer: None,
            fingerprinted: true,
            copy: false,
            times: FrameTimes::default(),
        });
    }

    /// Writes a fragment's cluster start (and the children before its first frame); only what is written moves
    /// the timeline on.
    fn write_cluster(
        &mut self,
        info: FragmentInfo,
        placement: Placement,
        children: Vec<Rope>,
        out: &mut Vec<Output>,
    ) -> Result<(), Error> {
        let scale = self.doc.timecode_scale.max(1);
        self.shift = placement.shift;
        self.previous = Some((placement.cluster_ns, placement.output_ns));
        self.previous_offset = info
            .producer_timestamp
            .as_deref()
            .and_then(seconds_to_ns)
            .map(|p| i128::from(p) - i128::from(placement.cluster_ns));
        let output_units = placement.output_ns / scale;
        self.last_cluster = None;
        self.written.add(&info);
        let (number, producer) = (info.number.clone(), info.producer_timestamp.clone());
        let times = FrameTimes::of(&info);
        self.announce(info, out);
        // The children before the first frame and the Timecode count as written (in raw mode too).
        let before = children.len() + 1;
        self.cluster = Some(OpenCluster {
            number,
            output_units,
            written: before,
            seen: before,
            skip: 0,
            pass: true,
            producer,
            fingerprinted: false,
            copy: false,
            times,
        });
        if self.merged() {
            self.write_header_if_changed(out)?;
            let mut head = Vec::with_capacity(24);
            write_id(&mut head, id::CLUSTER);
            head.extend_from_slice(&UNKNOWN_SIZE_8);
            write_uint_fixed(&mut head, id::TIMECODE, output_units, 8);
            out.push(Output::Data {
                data: Rope::from(head),
                header: false,
                frame: None,
            });
            for child in children {
                out.push(Output::Data {
                    data: child,
                    header: false,
                    frame: None,
                });
            }
        }
        Ok(())
    }

    fn write_header_if_changed(&mut self, out: &mut Vec<Output>) -> Result<(), Error> {
        let Some(tracks) = self.doc.tracks.clone() else {
            return Err(Error::InvalidValue("a Cluster comes before any Tracks"));
        };
        let scale = self.doc.timecode_scale;
        if self
            .out_header
            .as_ref()
            .is_some_and(|(t, s)| *t == tracks && *s == scale)
        {
            return Ok(());
        }
        let mut header = Vec::new();
        match &self.doc.ebml {
            Some(ebml) => header.extend_from_slice(ebml),
            None => kvs_mkv::writer::write_ebml_header(&mut header, "matroska"),
        }
        kvs_mkv::writer::write_segment_start(&mut header);
        match &self.doc.info {
            Some(info) => header.extend_from_slice(info),
            None => kvs_mkv::writer::write_info(&mut header, scale),
        }
        header.extend_from_slice(&tracks);
        out.push(Output::Data {
            data: Rope::from(header),
            header: true,
            frame: None,
        });
        self.out_header = Some((tracks, scale));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvs_mkv::writer::{self, TrackSpec};

    /// One fragment the way GetMedia sends it: header, fragment tags, the cluster, then the session tags. Its
    /// producer timestamp is its cluster timecode (an ABSOLUTE producer).
    fn fragment(number: &str, timecode: u64, frames: &[&[u8]], codec_private: &[u8]) -> Vec<u8> {
        fragment_at(number, timecode, Some(timecode), frames, codec_private)
    }

    /// A fragment whose cluster timecode and producer timestamp (ms) are given apart (a RELATIVE producer), or
    /// without a producer timestamp tag.
    fn fragment_at(
        number: &str,
        timecode: u64,
        producer_ms: Option<u64>,
        frames: &[&[u8]],
        codec_private: &[u8],
    ) -> Vec<u8> {
        let mut out = Vec::new();
        writer::write_ebml_header(&mut out, "matroska");
        writer::write_segment_start(&mut out);
        writer::write_info(&mut out, 1_000_000);
        writer::write_tracks(
            &mut out,
            &[TrackSpec {
                number: 1,
                track_type: 1,
                codec_id: "V_MPEG4/ISO/AVC",
                codec_private,
            }],
        );
        let mut fragment_tags = vec![SimpleTag::new(tags::FRAGMENT_NUMBER, number)];
        if let Some(ms) = producer_ms {
            fragment_tags.push(SimpleTag::new(
                tags::PRODUCER_TIMESTAMP,
                format!("{}.{:03}", ms / 1000, ms % 1000),
            ));
        }
        tags::write_tags(&mut out, &fragment_tags, 8);
        writer::write_cluster_start(&mut out, timecode);
        for (i, frame) in frames.iter().enumerate() {
            writer::write_simple_block(&mut out, 1, (i * 33) as i16, i == 0, frame);
        }
        tags::write_tags(
            &mut out,
            &[
                SimpleTag::new(tags::MILLIS_BEHIND_NOW, "5"),
                SimpleTag::new(tags::CONTINUATION_TOKEN, number),
            ],
            8,
        );
        out
    }

    fn merge(input: &[u8]) -> (Merger, Vec<Output>) {
        let mut merger = Merger::new(Mode::Merged);
        let mut outputs = merger.push(Bytes::copy_from_slice(input)).unwrap();
        outputs.extend(merger.finish().unwrap());
        (merger, outputs)
    }

    fn infos(outputs: &[Output]) -> Vec<FragmentInfo> {
        outputs
            .iter()
            .filter_map(|o| match o {
                Output::Fragment(f) => Some(f.clone()),
                _ => None,
            })
            .collect()
    }

    fn cluster_timecodes(stream: &[u8]) -> Vec<u64> {
        kvs_mkv::read_all(stream)
            .unwrap()
            .into_iter()
            .filter_map(|e| match e {
                Event::ClusterChild(el) if el.id == id::TIMECODE => {
                    Some(kvs_mkv::ebml::read_uint(&el.data()).unwrap())
                }
                _ => None,
            })
            .collect()
    }

    fn data(outputs: &[Output]) -> Vec<u8> {
        outputs
            .iter()
            .filter_map(|o| match o {
                Output::Data { data, .. } => Some(data.to_vec()),
                _ => None,
            })
            .flatten()
            .collect()
    }

    fn payloads(stream: &[u8]) -> Vec<Vec<u8>> {
        kvs_mkv::read_all(stream)
            .unwrap()
            .into_iter()
            .filter_map(|e| match e {
                Event::ClusterChild(el) if el.id == id::SIMPLE_BLOCK => {
                    let info = kvs_mkv::block::parse_simple_block(&el.data()).unwrap();
                    Some(el.data()[info.header_len..].to_vec())
                }
                _ => None,
            })
            .collect()
    }

    fn headers(stream: &[u8]) -> usize {
        kvs_mkv::read_all(stream)
            .unwrap()
            .iter()
            .filter(|e| matches!(e, Event::EbmlHeader(_)))
            .count()
    }

    #[test]
    fn fragments_merge_into_one_stream_and_repeats_are_left_out_by_number_or_producer_timestamp() {
        let mut input = fragment("1", 1_000, &[b"a", b"b"], &[]);
        input.extend(fragment("2", 2_000, &[b"c"], &[]));
        input.extend(fragment("2", 2_000, &[b"c"], &[])); // the same fragment again
        input.extend(fragment("9", 2_000, &[b"c"], &[])); // stored twice: a new number, the same producer time
        input.extend(fragment("3", 3_000, &[b"d"], &[]));
        let (merger, outputs) = merge(&input);
        let stream = data(&outputs);
        assert_eq!(headers(&stream), 1);
        assert_eq!(
            payloads(&stream),
            [b"a".to_vec(), b"b".to_vec(), b"c".to_vec(), b"d".to_vec()]
        );
        let skipped: Vec<(String, Option<String>)> = infos(&outputs)
            .into_iter()
            .map(|f| (f.number, f.skipped))
            .collect();
        assert_eq!(
            skipped,
            [
                ("1".to_owned(), None),
                ("2".to_owned(), None),
                ("2".to_owned(), Some("fragment 2 was already written (the service sent it again)".to_owned())),
                (
                    "9".to_owned(),
                    Some(
                        "a copy of fragment 2 (same producer timestamp 2.000 and first frame): the producer sent it \
                         again and the service stored it twice"
                            .to_owned()
                    )
                ),
                ("3".to_owned(), None),
            ]
        );
        assert_eq!((merger.fragments_written, merger.fragments_skipped), (3, 2));
        // What is left out does not move the timeline.
        assert_eq!(cluster_timecodes(&stream), [1_000, 2_000, 3_000]);
        let tokens = outputs
            .iter()
            .filter(|o| matches!(o, Output::Session { .. }))
            .count();
        assert_eq!(tokens, 5);
    }

    #[test]
    fn a_fragment_with_the_producer_time_of_another_but_other_frames_is_not_a_copy() {
        // Two producers (or a clock that went back) stamping the same time: both are written, the second after
        // the first.
        let mut input = fragment("1", 1_000, &[b"a", b"b"], &[]);
        input.extend(fragment("2", 1_000, &[b"x", b"y"], &[]));
        input.extend(fragment("3", 1_000, &[b"a", b"b"], &[])); // a real copy of 1
        let (merger, outputs) = merge(&input);
        let stream = data(&outputs);
        assert_eq!(
            payloads(&stream),
            [b"a".to_vec(), b"b".to_vec(), b"x".to_vec(), b"y".to_vec()]
        );
        assert_eq!(cluster_timecodes(&stream), [1_000, 1_066]);
        let skipped: Vec<bool> = infos(&outputs)
            .iter()
            .map(|f| f.skipped.is_some())
            .collect();
        assert_eq!(skipped, [false, false, true]);
        assert_eq!(merger.fragments_skipped, 1);
    }

    #[test]
    fn producer_sessions_restarting_at_timecode_zero_go_on_one_timeline_with_every_frame() {
        // A RELATIVE producer: 10014 at the end of a session, then a restart at 0, 1001, then another session
        // that also begins at 0 after a gap of two hours. The producer timestamps keep increasing.
        let base = 1_511_852_100_000u64;
        let two_hours = 7_200_000;
        let mut input = fragment_at("10", 10_014, Some(base + 10_014), &[b"a1", b"a2"], &[]);
        input.extend(fragment_at("11", 0, Some(base + 12_000), &[b"b1"], &[]));
        input.extend(fragment_at("12", 1_001, Some(base + 13_001), &[b"b2"], &[]));
        input.extend(fragment_at(
            "13",
            0,
            Some(base + two_hours),
            &[b"c1", b"c2"],
            &[],
        ));
        let (merger, outputs) = merge(&input);
        let stream = data(&outputs);
        let expected: Vec<Vec<u8>> = ["a1", "a2", "b1", "b2", "c1", "c2"]
            .iter()
            .map(|s| s.as_bytes().to_vec())
            .collect();
        assert_eq!(payloads(&stream), expected, "every frame once");
        assert_eq!(merger.fragments_skipped, 0);
        assert_eq!(
            cluster_timecodes(&stream),
            [
                base + 10_014,
                base + 12_000,
                base + 13_001,
                base + two_hours
            ]
        );
        let sessions: Vec<bool> = infos(&outputs).iter().map(|f| f.session_start).collect();
        assert_eq!(sessions, [true, true, false, true]);
        // A new session whose timecodes happen to go on upwards is seen by its new start time.
        let mut input = fragment_at("1", 0, Some(base), &[b"a"], &[]);
        input.extend(fragment_at("2", 1_000, Some(base + 1_000), &[b"b"], &[]));
        input.extend(fragment_at("3", 2_000, Some(base + 60_000), &[b"c"], &[]));
        let sessions: Vec<bool> = infos(&merge(&input).1)
            .iter()
            .map(|f| f.session_start)
            .collect();
        assert_eq!(sessions, [true, false, true]);
        assert_eq!(infos(&outputs)[1].cluster_time_ns, 0);
        assert_eq!(
            infos(&outputs)[1].output_time_ns,
            (base + 12_000) * 1_000_000
        );
    }

    #[test]
    fn a_continuous_timeline_closes_the_gaps_between_sessions() {
        let base = 1_511_852_100_000u64;
        let mut input = fragment_at("1", 0, Some(base), &[b"a1", b"a2", b"a3"], &[]);
        input.extend(fragment_at("2", 0, Some(base + 7_200_000), &[b"b1"], &[]));
        input.extend(fragment_at(
            "3",
            1_000,
            Some(base + 7_201_000),
            &[b"b2"],
            &[],
        ));
        let mut merger = Merger::new(Mode::Merged).closing_gaps();
        let mut outputs = merger.push(Bytes::from(input)).unwrap();
        outputs.extend(merger.finish().unwrap());
        // Two hours later in producer time, but 33 ms (the frame interval) after the last frame in the output;
        // the next fragment keeps its second.
        assert_eq!(
            cluster_timecodes(&data(&outputs)),
            [base, base + 99, base + 1_099]
        );
    }

    #[test]
    fn without_producer_timestamps_or_with_a_clock_going_back_time_still_only_goes_forward() {
        // No producer timestamp tags: a restart at 0 goes one frame interval after the last frame (2033 ms),
        // and its next cluster keeps its distance.
        let mut input = fragment_at("1", 2_000, None, &[b"a", b"b"], &[]);
        input.extend(fragment_at("2", 0, None, &[b"c"], &[]));
        input.extend(fragment_at("3", 500, None, &[b"d"], &[]));
        let (_, outputs) = merge(&input);
        assert_eq!(cluster_timecodes(&data(&outputs)), [2_000, 2_066, 2_566]);
        // Producer timestamps that go back (a clock step): after the last frame, and the fragments after it keep
        // their distances.
        let mut input = fragment("1", 5_000, &[b"a", b"b"], &[]);
        input.extend(fragment("2", 4_000, &[b"c"], &[]));
        input.extend(fragment("3", 4_500, &[b"d"], &[]));
        let (merger, outputs) = merge(&input);
        assert_eq!(cluster_timecodes(&data(&outputs)), [5_000, 5_066, 5_566]);
        assert_eq!(merger.fragments_skipped, 0);
    }

    #[test]
    fn a_fragment_stored_cut_short_then_whole_gives_every_frame_once() {
        // The service stored fragment 5 with two of its four frames (its connection ended cleanly in
        // mid-fragment), then the whole fragment again as 6 (the producer re-sent it).
        let mut input = fragment("5", 5_000, &[b"f1", b"f2"], &[]);
        input.extend(fragment("6", 5_000, &[b"f1", b"f2", b"f3", b"f4"], &[]));
        input.extend(fragment("7", 6_000, &[b"g1"], &[]));
        // A copy with fewer frames than the first adds nothing.
        input.extend(fragment("8", 6_000, &[b"g1"], &[]));
        let (merger, outputs) = merge(&input);
        let stream = data(&outputs);
        let expected: Vec<Vec<u8>> = ["f1", "f2", "f3", "f4", "g1"]
            .iter()
            .map(|s| s.as_bytes().to_vec())
            .collect();
        assert_eq!(payloads(&stream), expected);
        assert_eq!(
            cluster_timecodes(&stream),
            [5_000, 6_000],
            "the rest of 5 goes on in its own cluster"
        );
        let skipped: Vec<(String, String)> = infos(&outputs)
            .into_iter()
            .filter_map(|i| i.skipped.map(|reason| (i.number, reason)))
            .collect();
        assert_eq!(skipped.len(), 2, "{skipped:?}");
        assert_eq!(skipped[0].0, "6");
        assert!(
            skipped[0]
                .1
                .starts_with("a copy of fragment 5 (same producer timestamp 5.000"),
            "{skipped:?}"
        );
        assert_eq!((merger.fragments_written, merger.fragments_skipped), (2, 2));
    }

    #[test]
    fn a_fragment_cut_off_by_a_broken_session_and_resent_under_another_number_gives_every_frame_once()
     {
        let whole = fragment("7", 7_000, &[b"f1", b"f2", b"f3", b"f4"], &[]);
        let cut = whole.windows(2).position(|w| w == b"f3").unwrap() - 1;
        let mut merger = Merger::new(Mode::Merged);
        let mut stream = data(&merger.push(Bytes::copy_from_slice(&whole[..cut])).unwrap());
        merger.interrupted();
        // The service lost fragment 7; the producer sent it again, stored as 9.
        let mut next = fragment("9", 7_000, &[b"f1", b"f2", b"f3", b"f4"], &[]);
        next.extend(fragment("10", 8_000, &[b"g1"], &[]));
        stream.extend(data(&merger.push(Bytes::from(next)).unwrap()));
        stream.extend(data(&merger.finish().unwrap()));
        let expected: Vec<Vec<u8>> = ["f1", "f2", "f3", "f4", "g1"]
            .iter()
            .map(|s| s.as_bytes().to_vec())
            .collect();
        assert_eq!(payloads(&stream), expected);
        assert_eq!(cluster_timecodes(&stream), [7_000, 8_000]);
    }

    #[test]
    fn copies_of_older_fragments_in_between_do_not_stop_a_cut_fragment_from_being_continued() {
        // Fragment 7 is cut off; the producer then re-sends 6 and 7 (a replay after a reconnection), stored
        // as 8 and 9: 8 is left out, 9 continues 7.
        let six = fragment("6", 6_000, &[b"e1"], &[]);
        let seven = fragment("7", 7_000, &[b"f1", b"f2", b"f3", b"f4"], &[]);
        let cut = seven.windows(2).position(|w| w == b"f3").unwrap() - 1;
        let mut merger = Merger::new(Mode::Merged);
        let mut first = six;
        first.extend_from_slice(&seven[..cut]);
        let mut stream = data(&merger.push(Bytes::from(first)).unwrap());
        merger.interrupted();
        let mut next = fragment("8", 6_000, &[b"e1"], &[]);
        next.extend(fragment("9", 7_000, &[b"f1", b"f2", b"f3", b"f4"], &[]));
        stream.extend(data(&merger.push(Bytes::from(next)).unwrap()));
        stream.extend(data(&merger.finish().unwrap()));
        let expected: Vec<Vec<u8>> = ["e1", "f1", "f2", "f3", "f4"]
            .iter()
            .map(|s| s.as_bytes().to_vec())
            .collect();
        assert_eq!(payloads(&stream), expected);
    }

    #[test]
    fn a_broken_fragment_continues_after_earlier_fragments_read_again() {
        // The next session starts earlier (a refused token: read again from a server time): fragment 6 again,
        // then 7 whole, then 8.
        let six = fragment("6", 6_000, &[b"e1"], &[]);
        let seven = fragment("7", 7_000, &[b"f1", b"f2", b"f3", b"f4"], &[]);
        let cut = seven.windows(2).position(|w| w == b"f3").unwrap() - 1;
        let mut merger = Merger::new(Mode::Merged);
        let mut first = six.clone();
        first.extend_from_slice(&seven[..cut]);
        let mut stream = data(&merger.push(Bytes::from(first)).unwrap());
        merger.interrupted();
        let mut next = six;
        next.extend(seven);
        next.extend(fragment("8", 8_000, &[b"g1"], &[]));
        stream.extend(data(&merger.push(Bytes::from(next)).unwrap()));
        stream.extend(data(&merger.finish().unwrap()));
        let expected: Vec<Vec<u8>> = ["e1", "f1", "f2", "f3", "f4", "g1"]
            .iter()
            .map(|s| s.as_bytes().to_vec())
            .collect();
        assert_eq!(payloads(&stream), expected);
    }

    #[test]
    fn a_session_broken_inside_a_cluster_continues_without_gap_or_repeat() {
        let whole = fragment("7", 7_000, &[b"f1", b"f2", b"f3", b"f4"], &[]);
        // Cut inside the third frame.
        let cut = whole.windows(2).position(|w| w == b"f3").unwrap() - 1;
        let mut merger = Merger::new(Mode::Merged);
        let mut stream = data(&merger.push(Bytes::copy_from_slice(&whole[..cut])).unwrap());
        merger.interrupted();
        // The next session starts again with the same fragment, then goes on.
        let mut next = whole.clone();
        next.extend(fragment("8", 8_000, &[b"g1"], &[]));
        stream.extend(data(&merger.push(Bytes::from(next)).unwrap()));
        stream.extend(data(&merger.finish().unwrap()));
        assert_eq!(headers(&stream), 1);
        let expected: Vec<Vec<u8>> = ["f1", "f2", "f3", "f4", "g1"]
            .iter()
            .map(|s| s.as_bytes().to_vec())
            .collect();
        assert_eq!(payloads(&stream), expected);
    }

    #[test]
    fn changed_tracks_start_a_new_segment_and_raw_mode_changes_nothing() {
        let mut input = fragment("1", 1_000, &[b"a"], &[1, 2]);
        input.extend(fragment("2", 2_000, &[b"b"], &[1, 2]));
        input.extend(fragment("3", 3_000, &[b"c"], &[3, 4]));
        let mut merger = Merger::new(Mode::Merged);
        let stream = data(&merger.push(Bytes::copy_from_slice(&input)).unwrap());
        assert_eq!(headers(&stream), 2);
        assert_eq!(payloads(&stream).len(), 3);

        let mut raw = Merger::new(Mode::Raw);
        let mut passed = Vec::new();
        for chunk in input.chunks(7) {
            passed.extend(data(&raw.push(Bytes::copy_from_slice(chunk)).unwrap()));
        }
        assert_eq!(passed, input);
    }

    #[test]
    fn the_fragment_list_tag_names_are_read_too() {
        let mut input = Vec::new();
        writer::write_ebml_header(&mut input, "matroska");
        writer::write_segment_start(&mut input);
        writer::write_info(&mut input, 1_000_000);
        writer::write_tracks(
            &mut input,
            &[TrackSpec {
                number: 1,
                track_type: 1,
                codec_id: "V_MPEG4/ISO/AVC",
                codec_private: &[],
            }],
        );
        let named = [
            SimpleTag::new(tags::FRAGMENT_NUMBER, "12"),
            SimpleTag::new(SERVER_SIDE_TIMESTAMP, "1795000001.250"),
            SimpleTag::new(PRODUCER_SIDE_TIMESTAMP, "1795000001.000"),
        ];
        tags::write_tags(&mut input, &named, 8);
        writer::write_cluster_start(&mut input, 1_795_000_001_000);
        writer::write_simple_block(&mut input, 1, 0, true, b"k");
        let mut exception = Vec::new();
        writer::write_ebml_header(&mut exception, "matroska");
        writer::write_segment_start(&mut exception);
        let failed = [
            SimpleTag::new(tags::FRAGMENT_NUMBER, "13"),
            SimpleTag::new(EXCEPTION_ERROR_CODE, "FRAGMENT_NOT_FOUND"),
            SimpleTag::new(EXCEPTION_MESSAGE, "Fragment 13 is not found"),
        ];
        tags::write_tags(&mut exception, &failed, 8);
        input.extend(exception);
        let outputs = Merger::new(Mode::Merged).push(Bytes::from(input)).unwrap();
        let info = outputs
            .iter()
            .find_map(|o| match o {
                Output::Fragment(f) => Some(f.clone()),
                _ => None,
            })
            .unwrap();
        assert_eq!(info.server_timestamp.as_deref(), Some("1795000001.250"));
        assert_eq!(info.producer_timestamp.as_deref(), Some("1795000001.000"));
        assert_eq!(
            outputs.last(),
            Some(&Output::Error {
                code: "FRAGMENT_NOT_FOUND".into(),
                id: "Fragment 13 is not found".into()
            })
        );
    }

    #[test]
    fn an_error_chunk_is_reported() {
        let mut input = Vec::new();
        writer::write_ebml_header(&mut input, "matroska");
        writer::write_segment_start(&mut input);
        let error = [
            SimpleTag::new(tags::FRAGMENT_NUMBER, "5"),
            SimpleTag::new(tags::ERROR_CODE, "Requested fragment is not found"),
            SimpleTag::new(tags::ERROR_ID, "4000"),
        ];
        tags::write_tags(&mut input, &error, 8);
        let outputs = Merger::new(Mode::Merged).push(Bytes::from(input)).unwrap();
        assert_eq!(
            outputs,
            [Output::Error {
                code: "Requested fragment is not found".into(),
                id: "4000".into()
            }]
        );
    }
}
