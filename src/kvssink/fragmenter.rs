// SPDX-License-Identifier: MPL-2.0

//! Splits a Matroska byte stream (matroskamux output, in buffers of any size) into a KVS stream header and
//! fragments, one per Cluster, frame by frame, ready for PutMedia.
//!
//! - The header is rebuilt as KVS wants it: the EBML header, a Segment of unknown size, Info and Tracks.
//!   SeekHead, Void, Cues, Chapters and global Tags are dropped: they describe a file, not a live stream.
//! - Each Cluster is re-emitted with an unknown size and its Timecode rewritten to absolute time (epoch time in
//!   TimecodeScale units). Only Timecode, SimpleBlock and BlockGroup children are kept (Position and PrevSize
//!   would be wrong after the rewrite). Fragment metadata (Tags) goes right before the cluster it is for.
//! - Nothing waits for a cluster to end: a fragment starts ([`Output::FragmentStart`]) with its first frame,
//!   every later frame follows on its own ([`Output::Frame`]), and [`Output::FragmentEnd`] says the fragment
//!   is complete (the next Cluster began, or the input ended). Frames are slices of the input (a [`Rope`]):
//!   pushed as [`Bytes`], a GStreamer buffer's memory goes to the socket uncopied. The 10-s and 50-MB fragment
//!   limits are checked at each frame.
//! - Time: a fragment's first frame is stamped with its capture time (the wall-clock time the element gives
//!   with the buffer that carried it, mapped from the buffer's running time), or with a start time given by
//!   the user for recorded files; the frames after it keep their Matroska offsets. Without a capture time the
//!   stream goes on from its previous anchor (the first one is the wall clock when the first frame arrives).
//!   Time never goes back inside a header generation (one PutMedia session): a fragment is always later than
//!   the last frame of the one before. A small step back (under [`TIME_JUMP`]) moves the fragment to just after
//!   that frame. A larger one is reported ([`Output::TimeJump`]): with host-clock times the stream goes on
//!   from where it was (the step is a timestamping glitch, the media is live); with the source's own times
//!   (a camera's clock, [`Stamp::Source`]) the fragment goes where the source says, in a new generation, so a
//!   new PutMedia session, as a rebooted camera's media would.
//! - [`Stamp::Source`] times are exact per frame: the frame a push completes is stamped with that time (its
//!   block timecode rewritten, the payload untouched), not at its muxer offset.
//! - A new EBML header (a caps or header change upstream) starts a new header generation: the uploader then
//!   opens a new connection for the fragments that follow.
//!
//! Nothing here depends on GStreamer, so it is tested with plain byte streams.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use kvs_mkv::ebml::{self, id};
pub use kvs_mkv::header::TrackRename;
use kvs_mkv::tags::{SimpleTag, write_tags};
use kvs_mkv::{Event, MkvReader, Rope};

/// KVS refuses fragments larger than this (ERROR 4001): the service quotas page says 50 MB without saying
/// whether that is 10^6 or 2^20 bytes, so kvssink takes the smaller reading, 50,000,000 bytes, and a fragment
/// it accepts is not refused under either. A fragment's size is its whole Cluster element as sent: its ID and
/// size, its Timecode and its blocks (the emulator measures the same).
pub const MAX_FRAGMENT_BYTES: usize = 50_000_000;
/// What starts every cluster kvssink sends: the Cluster ID (4 bytes), an unknown size (8) and the Timecode
/// element (ID, size and 8 bytes).
const CLUSTER_HEAD_BYTES: usize = 22;
/// KVS refuses fragments longer than this (ERROR 4002).
pub const MAX_FRAGMENT_DURATION: Duration = Duration::from_secs(10);
/// KVS accepts at most this many metadata tags per fragment.
pub const MAX_TAGS_PER_FRAGMENT: usize = 10;
/// KVS's limits on a metadata tag's name and value, in bytes.
pub const MAX_TAG_NAME_BYTES: usize = 128;
pub const MAX_TAG_VALUE_BYTES: usize = 256;
/// The reserved names an application may set: the service's event tags (see [`super::triggers`]).
pub use kvs_mkv::tags::EVENT_TAGS as EVENT_TAG_NAMES;

/// A stream header: what every PutMedia connection starts with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamHeader {
    /// Increases by one with each header the stream carries.
    pub generation: u64,
    pub bytes: Bytes,
    /// Nanoseconds per timecode unit.
    pub timecode_scale: u64,
    /// KVS media type from the tracks' codecs (`video/h264,audio/aac`), when known.
    pub media_type: Option<String>,
}

/// A fragment begins: its Tags, its Cluster head (unknown size, absolute Timecode) and its first frame.
#[derive(Debug, Clone)]
pub struct FragmentStart {
    pub header: Arc<StreamHeader>,
    /// The cluster's absolute Timecode, in TimecodeScale units (what the ACKs echo).
    pub timecode: u64,
    /// Tags, Cluster head and first frame: the bytes to send first.
    pub data: Rope,
}

/// What is wrong with the input. `Display` names the problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InputError {
    Matroska(kvs_mkv::Error),
    ClusterBeforeHeader,
    NoTracks,
    FragmentTooLarge { size: usize },
    FragmentTooLong { duration: Duration },
    TimecodeBackwards { previous: u64, next: u64 },
    TooManyTags,
    ReservedTagName(String),
    TagTooLong { name: String },
}

impl std::fmt::Display for InputError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            InputError::Matroska(e) => write!(f, "{e}"),
            InputError::ClusterBeforeHeader => {
                write!(
                    f,
                    "a Matroska Cluster arrived before the stream header (EBML header, Segment, Tracks)"
                )
            }
            InputError::NoTracks => {
                write!(f, "the Matroska stream has clusters but no Tracks element")
            }
            InputError::FragmentTooLarge { size } => write!(
                f,
                "a Matroska cluster of at least {size} bytes is larger than the KVS fragment limit of \
                 {MAX_FRAGMENT_BYTES} bytes (50 MB): make clusters shorter (encoder key-int-max, matroskamux \
                 max-cluster-duration) or the bitrate lower"
            ),
            InputError::FragmentTooLong { duration } => write!(
                f,
                "a Matroska cluster lasts at least {:.3} s, longer than the KVS fragment limit of {} s: make \
                 clusters shorter (encoder key-int-max, matroskamux max-cluster-duration)",
                duration.as_secs_f64(),
                MAX_FRAGMENT_DURATION.as_secs()
            ),
            InputError::TimecodeBackwards { previous, next } => write!(
                f,
                "Matroska cluster timecodes go backwards ({next} after {previous}): KVS needs increasing timestamps"
            ),
            InputError::TooManyTags => {
                write!(
                    f,
                    "more than {MAX_TAGS_PER_FRAGMENT} metadata tags for one fragment (the KVS limit)"
                )
            }
            InputError::TagTooLong { name } => write!(
                f,
                "metadata {name:?}: a name takes 1 to {MAX_TAG_NAME_BYTES} bytes and a value at most \
                 {MAX_TAG_VALUE_BYTES} (the KVS limits)"
            ),
            InputError::ReservedTagName(name) => {
                write!(
                    f,
                    "metadata name {name:?} is reserved: names starting with \"AWS\" belong to the service, \
                     except the event tags {}",
                    EVENT_TAG_NAMES.join(", ")
                )
            }
        }
    }
}

impl std::error::Error for InputError {}

impl From<kvs_mkv::Error> for InputError {
    fn from(e: kvs_mkv::Error) -> Self {
        InputError::Matroska(e)
    }
}

/// A step back in time larger than this is reported (and with source times, starts a new session).
pub const TIME_JUMP: Duration = Duration::from_secs(1);

/// The time that comes with a pushed buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stamp {
    /// None known: the stream goes on from its previous anchor.
    None,
    /// The host's wall-clock time at which the buffer's content was captured (its running time mapped).
    Host(SystemTime),
    /// The source's own capture time for the frame the buffer completes (a reference timestamp: a camera's
    /// RTCP or ONVIF time), exact for that frame.
    Source(SystemTime),
}

impl Stamp {
    fn time(self) -> Option<SystemTime> {
        match self {
            Stamp::None => None,
            Stamp::Host(time) | Stamp::Source(time) => Some(time),
        }
    }
}

/// Time went back by more than [`TIME_JUMP`] at a fragment's start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeJump {
    /// The latest frame before, and where the fragment's first frame would have gone, in TimecodeScale units.
    pub previous: u64,
    pub wanted: u64,
    /// Where it went: `wanted` in a new session, or right after `previous` in the same one.
    pub placed: u64,
    pub new_session: bool,
}

/// What [`Fragmenter::push`] found, in stream order.
#[derive(Debug, Clone)]
pub enum Output {
    /// A new stream header: fragments after it belong to it.
    Header(Arc<StreamHeader>),
    /// A fragment begins, with its first frame.
    FragmentStart(FragmentStart),
    /// The next frame of the current fragment (a SimpleBlock or BlockGroup, as received), and how long the
    /// fragment lasts with it (from its Timecode to the start of its latest frame).
    Frame { data: Rope, duration: Duration },
    /// The current fragment is complete.
    FragmentEnd,
    /// The fragment that starts next went back in time (before its header, if it got a new one).
    TimeJump(TimeJump),
}

/// Where absolute time comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeAnchor {
    /// Each fragment's first frame at the capture time given with its buffer; the first frame of the stream at
    /// the wall clock when it arrives if there is none.
    CaptureTime,
    /// The first frame of the stream is at this time, and the rest follow its Matroska timeline (for uploading
    /// recorded files).
    Fixed(SystemTime),
}

#[derive(Debug, Default)]
struct ClusterInProgress {
    /// The Cluster's Timecode as received (relative to its segment's timeline).
    relative_timecode: Option<u64>,
    /// Its absolute Timecode, set when its first frame went out.
    timecode: Option<u64>,
    size: usize,
    max_block_offset: i64,
    /// Set when the cluster's first frame came with a source time: how far it was moved from it.
    source_shift: Option<i128>,
    /// Added to the block timecodes (a cluster split where time went back: its Timecode is its first frame's).
    block_shift: i64,
    /// The latest frame of the fragments before it in the same session: each of its frames goes after it.
    floor: Option<u64>,
}

/// See the module documentation.
#[derive(Debug)]
pub struct Fragmenter {
    reader: MkvReader,
    anchor: TimeAnchor,
    generation: u64,
    header_parts: Vec<u8>,
    has_tracks: bool,
    header: Option<Arc<StreamHeader>>,
    header_announced: bool,
    timecode_scale: u64,
    /// Absolute timecode of relative timecode 0 in the current segment.
    segment_base: Option<i128>,
    /// The previous cluster's relative and absolute Timecodes in the current segment.
    last_cluster: Option<(u64, u64)>,
    /// Absolute start (in units) of the latest frame sent.
    last_frame: Option<u64>,
    /// The latest fragment's Timecode: each fragment's is higher (ACKs name fragments by it).
    last_timecode: Option<u64>,
    cluster: Option<ClusterInProgress>,
    media_type_tracks: Vec<&'static str>,
    pending_tags: Vec<SimpleTag>,
    persistent_tags: Vec<SimpleTag>,
    /// Capture time of the input being read (see [`push`](Self::push)); taken by the first frame it completes
    /// when it is exact.
    capture_time: Stamp,
    /// Added to host capture times after a step back that the stream went on from (units).
    host_adjust: i128,
    /// Names and codec IDs given to the tracks (see [`set_track_names`](Self::set_track_names)).
    track_names: Option<TrackNames>,
    /// No frame goes at or before this time (see [`set_not_before`](Self::set_not_before)).
    not_before: Option<SystemTime>,
}

/// Names and codec IDs for the video and audio tracks, replacing what the muxer wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrackNames {
    pub video: TrackRename,
    pub audio: TrackRename,
}

fn units(time: SystemTime, scale: u64) -> i128 {
    time.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as i128
        / i128::from(scale)
}

impl Fragmenter {
    pub fn new(anchor: TimeAnchor) -> Self {
        Fragmenter {
            reader: MkvReader::with_max_element_size(MAX_FRAGMENT_BYTES + 1024),
            anchor,
            generation: 0,
            header_parts: Vec::new(),
            has_tracks: false,
            header: None,
            header_announced: false,
            timecode_scale: 1_000_000,
            segment_base: None,
            last_cluster: None,
            last_frame: None,
            last_timecode: None,
            cluster: None,
            media_type_tracks: Vec::new(),
            pending_tags: Vec::new(),
            persistent_tags: Vec::new(),
            capture_time: Stamp::None,
            host_adjust: 0,
            track_names: None,
            not_before: None,
        }
    }

    /// Headers get generations after `base` (the generations already used by fragments queued before this
    /// fragmenter's, read back from the fragment store).
    pub fn set_generation_base(&mut self, base: u64) {
        self.generation = self.generation.max(base);
    }

    /// No fragment starts at or before `time` (the last frame already queued by someone else: fragments read
    /// back from the store), so that the stream never goes back in time.
    pub fn set_not_before(&mut self, time: Option<SystemTime>) {
        self.not_before = time;
    }

    /// Renames the tracks of the headers that come after this (None: as the muxer wrote them).
    pub fn set_track_names(&mut self, names: Option<TrackNames>) {
        self.track_names = names;
    }

    /// Adds a metadata tag to the next fragment, or to every following fragment when `persist` (a persistent
    /// tag with an empty value removes the persistent tag of that name).
    pub fn add_metadata(
        &mut self,
        name: &str,
        value: &str,
        persist: bool,
    ) -> Result<(), InputError> {
        if name.starts_with("AWS") && !EVENT_TAG_NAMES.contains(&name) {
            return Err(InputError::ReservedTagName(name.to_owned()));
        }
        if name.is_empty() || name.len() > MAX_TAG_NAME_BYTES || value.len() > MAX_TAG_VALUE_BYTES {
            return Err(InputError::TagTooLong {
                name: name.to_owned(),
            });
        }
        if persist {
            self.persistent_tags.retain(|t| t.name != name);
            if !value.is_empty() {
                self.persistent_tags.push(SimpleTag::new(name, value));
            }
        } else {
            self.pending_tags.push(SimpleTag::new(name, value));
        }
        if self.pending_tags.len() + self.persistent_tags.len() > MAX_TAGS_PER_FRAGMENT {
            self.pending_tags.pop();
            return Err(InputError::TooManyTags);
        }
        Ok(())
    }

    /// Feeds bytes (kept, not copied) and the wall-clock time at which what they carry was captured, if known;
    /// returns what they complete, in order.
    pub fn push(
        &mut self,
        data: Bytes,
        capture_time: Option<SystemTime>,
    ) -> Result<Vec<Output>, InputError> {
        self.push_stamped(data, capture_time.map_or(Stamp::None, Stamp::Host))
    }

    /// [`push`](Self::push) with the kind of time known: see [`Stamp`].
    pub fn push_stamped(&mut self, data: Bytes, stamp: Stamp) -> Result<Vec<Output>, InputError> {
        self.reader.push_bytes(data);
        self.capture_time = stamp;
        let mut out = Vec::new();
        while let Some(event) = self.reader.next_event()? {
            self.handle(event, &mut out)?;
        }
        Ok(out)
    }

    /// The input ended: completes the last fragment. Input that ends inside an element is an error.
    pub fn finish(&mut self) -> Result<Vec<Output>, InputError> {
        let mut out = Vec::new();
        for event in self.reader.finish()? {
            self.handle(event, &mut out)?;
        }
        self.end_cluster(&mut out);
        Ok(out)
    }

    /// True once a header has been seen.
    pub fn has_header(&self) -> bool {
        self.header.is_some()
    }

    fn handle(&mut self, event: Event, out: &mut Vec<Output>) -> Result<(), InputError> {
        match event {
            Event::EbmlHeader(element) => {
                self.end_cluster(out);
                kvs_mkv::header::doc_type(&element.data())?;
                self.header_parts = element.bytes.to_vec();
                self.has_tracks = false;
                self.header = None;
                self.header_announced = false;
                self.segment_base = None;
                self.last_cluster = None;
                self.media_type_tracks.clear();
            }
            Event::SegmentStart { .. } => {
                ebml::write_id(&mut self.header_parts, id::SEGMENT);
                self.header_parts.extend_from_slice(&ebml::UNKNOWN_SIZE_8);
            }
            Event::Element(element) => match element.id {
                id::INFO if !self.header_announced => {
                    self.timecode_scale = kvs_mkv::header::timecode_scale(&element.data())?;
                    self.header_parts.extend_from_slice(&element.bytes.to_vec());
                }
                id::TRACKS if !self.header_announced => {
                    let mut bytes = element.bytes.to_vec();
                    if let Some(names) = &self.track_names {
                        bytes =
                            kvs_mkv::header::rename_tracks(&element.data(), |kind| match kind {
                                kvs_mkv::header::TRACK_TYPE_VIDEO => names.video.clone(),
                                kvs_mkv::header::TRACK_TYPE_AUDIO => names.audio.clone(),
                                _ => TrackRename::default(),
                            })?;
                    }
                    let (_, data) = ebml::children(&bytes)
                        .next()
                        .ok_or(InputError::NoTracks)??;
                    let tracks = kvs_mkv::header::tracks(data)?;
                    self.media_type_tracks = tracks
                        .iter()
                        .filter_map(|t| kvs_mkv::header::media_type(&t.codec_id))
                        .collect();
                    self.header_parts.extend_from_slice(&bytes);
                    self.has_tracks = true;
                }
                // Everything else at level 1 describes a file (SeekHead, Cues, Void, global Tags): dropped.
                _ => {}
            },
            Event::ClusterStart { .. } => {
                self.end_cluster(out);
                if !self.header_announced {
                    if self.header_parts.is_empty() {
                        return Err(InputError::ClusterBeforeHeader);
                    }
                    if !self.has_tracks {
                        return Err(InputError::NoTracks);
                    }
                    self.generation += 1;
                    let media_type = (!self.media_type_tracks.is_empty())
                        .then(|| self.media_type_tracks.join(","));
                    let header = Arc::new(StreamHeader {
                        generation: self.generation,
                        bytes: Bytes::from(std::mem::take(&mut self.header_parts)),
                        timecode_scale: self.timecode_scale,
                        media_type,
                    });
                    self.header = Some(header.clone());
                    self.header_announced = true;
                    out.push(Output::Header(header));
                }
                self.cluster = Some(ClusterInProgress::default());
            }
            Event::ClusterChild(element) => {
                let Some(cluster) = self.cluster.as_mut() else {
                    return Ok(());
                };
                match element.id {
                    id::TIMECODE => {
                        cluster.relative_timecode = Some(ebml::read_uint(&element.data())?)
                    }
                    id::SIMPLE_BLOCK | id::BLOCK_GROUP => {
                        self.frame(element.block()?, element.bytes, out)?
                    }
                    _ => {}
                }
            }
            Event::ClusterEnd { .. } => self.end_cluster(out),
            Event::SegmentEnd { .. } => {}
        }
        Ok(())
    }

    /// One frame of the current cluster: the fragment's start with it if it is the first, else a frame.
    fn frame(
        &mut self,
        info: kvs_mkv::block::BlockInfo,
        data: Rope,
        out: &mut Vec<Output>,
    ) -> Result<(), InputError> {
        if self.header.is_none() {
            return Err(InputError::ClusterBeforeHeader);
        }
        // A source time belongs to the first frame its buffer completes.
        let source_time = match self.capture_time {
            Stamp::Source(time) => {
                self.capture_time = Stamp::None;
                Some(units(time, self.timecode_scale))
            }
            _ => None,
        };
        // A frame more than TIME_JUMP before the latest one, inside a cluster (timestamps that went back
        // between two of the muxer's cluster starts): its fragment ends, and it starts the next one, placed like
        // any fragment start (and reported), its cluster's Timecode at it.
        let timestamped = source_time.is_some() || self.capture_time != Stamp::None;
        let mut split = false;
        if self.anchor == TimeAnchor::CaptureTime
            && timestamped
            && let (Some(cluster), Some(last)) = (self.cluster.as_ref(), self.last_frame)
            && let Some(timecode) = cluster.timecode
        {
            let time = match (source_time, cluster.source_shift) {
                (Some(time), Some(shift)) => time + shift,
                _ => {
                    i128::from(timecode)
                        + i128::from(cluster.block_shift)
                        + i128::from(info.relative_timecode)
                }
            };
            let jump = TIME_JUMP.as_nanos() as i128 / i128::from(self.timecode_scale.max(1));
            if i128::from(last) - time > jump {
                out.push(Output::FragmentEnd);
                let relative_timecode = cluster.relative_timecode;
                self.cluster = Some(ClusterInProgress {
                    relative_timecode,
                    ..Default::default()
                });
                split = true;
            }
        }
        let start = match self.cluster.as_ref() {
            Some(cluster) if cluster.timecode.is_none() => {
                let relative = cluster.relative_timecode.unwrap_or(0);
                Some(self.start_fragment(relative, info, source_time, split, out)?)
            }
            Some(_) => None,
            None => return Ok(()),
        };
        let Some(header) = self.header.clone() else {
            return Err(InputError::ClusterBeforeHeader);
        };
        let scale = self.timecode_scale;
        let Some(cluster) = self.cluster.as_mut() else {
            return Ok(());
        };
        if let Some((timecode, _)) = &start {
            cluster.timecode = Some(*timecode);
            cluster.floor = self.last_frame;
            // A split cluster's Timecode is its first frame's: its blocks move by as much.
            cluster.block_shift = if split {
                -i64::from(info.relative_timecode)
            } else {
                0
            };
            let first = i128::from(info.relative_timecode) + i128::from(cluster.block_shift);
            // How far the first frame went from its source time (forward, after a small step back): the
            // cluster's later frames go as far.
            cluster.source_shift = source_time.map(|time| i128::from(*timecode) + first - time);
        }
        let (info, data) = match (
            start.is_none(),
            source_time,
            cluster.source_shift,
            cluster.timecode,
        ) {
            (true, Some(time), Some(shift), Some(timecode)) => {
                restamp(info, data, time + shift - i128::from(timecode))
            }
            _ if cluster.block_shift != 0 => {
                let offset = i128::from(info.relative_timecode) + i128::from(cluster.block_shift);
                restamp(info, data, offset)
            }
            _ => (info, data),
        };
        // A frame inside the cluster less than TIME_JUMP before frames already sent (timestamps that stepped back
        // a little mid-cluster: a jitter buffer resetting its skew) goes right after them: the service refuses a
        // fragment with a frame before the previous fragment's last one (4004), and would drop the whole
        // fragment.
        let (info, data) = match (cluster.floor, cluster.timecode) {
            (Some(floor), Some(timecode))
                if i128::from(timecode) + i128::from(info.relative_timecode)
                    <= i128::from(floor) =>
            {
                restamp(info, data, i128::from(floor) + 1 - i128::from(timecode))
            }
            _ => (info, data),
        };
        cluster.max_block_offset = cluster
            .max_block_offset
            .max(i64::from(info.relative_timecode));
        cluster.size += data.len();
        if CLUSTER_HEAD_BYTES + cluster.size > MAX_FRAGMENT_BYTES {
            return Err(InputError::FragmentTooLarge {
                size: CLUSTER_HEAD_BYTES + cluster.size,
            });
        }
        let duration =
            Duration::from_nanos((cluster.max_block_offset as u64).saturating_mul(scale));
        if duration > MAX_FRAGMENT_DURATION {
            return Err(InputError::FragmentTooLong { duration });
        }
        let timecode = cluster.timecode.unwrap_or_default();
        let frame_time = timecode.saturating_add_signed(i64::from(info.relative_timecode));
        self.last_frame = Some(
            self.last_frame
                .map_or(frame_time, |last| last.max(frame_time)),
        );
        match start {
            Some((timecode, head)) => {
                let mut bytes = Rope::from(head);
                bytes.append(data);
                out.push(Output::FragmentStart(FragmentStart {
                    header,
                    timecode,
                    data: bytes,
                }));
            }
            None => out.push(Output::Frame { data, duration }),
        }
        Ok(())
    }

    /// The absolute Timecode and the head (Tags, Cluster, Timecode) of the cluster with relative Timecode
    /// `relative` whose first frame is `first` (at `source_time` when the source gave it, in units).
    fn start_fragment(
        &mut self,
        relative: u64,
        first: kvs_mkv::block::BlockInfo,
        source_time: Option<i128>,
        at_first_frame: bool,
        out: &mut Vec<Output>,
    ) -> Result<(u64, Bytes), InputError> {
        let first_frame = i128::from(relative) + i128::from(first.relative_timecode);
        let scale = self.timecode_scale;
        if let Some((last_relative, last_absolute)) = self.last_cluster
            && relative < last_relative
        {
            let timestamped = source_time.is_some() || self.capture_time != Stamp::None;
            if self.anchor != TimeAnchor::CaptureTime || !timestamped {
                let next = self
                    .segment_base
                    .map_or(0, |base| (base + i128::from(relative)).max(0) as u64);
                return Err(InputError::TimecodeBackwards {
                    previous: last_absolute,
                    next,
                });
            }
            // Timestamped media whose timestamps went back (a depayloader jump): placed by its capture time,
            // as a new segment would be, and the step back is handled (and reported) below. Untimestamped
            // input (a file) has nothing to place it by: an error, as for a recording.
            self.segment_base = None;
            self.last_cluster = None;
        }
        // Where this fragment's first frame goes on the absolute timeline.
        let anchored = match (
            self.anchor,
            source_time,
            self.capture_time.time(),
            self.segment_base,
        ) {
            (TimeAnchor::Fixed(start), _, _, None) if self.last_frame.is_none() => {
                Some(units(start, scale))
            }
            (TimeAnchor::Fixed(_), _, _, _) => None,
            (TimeAnchor::CaptureTime, Some(source), _, _) => Some(source),
            (TimeAnchor::CaptureTime, None, Some(captured), _) => {
                Some(units(captured, scale) + self.host_adjust)
            }
            (TimeAnchor::CaptureTime, None, None, None) => Some(units(SystemTime::now(), scale)),
            (TimeAnchor::CaptureTime, None, None, Some(_)) => None,
        };
        let mut base = match (anchored, self.segment_base) {
            (Some(first_time), _) => first_time - first_frame,
            (None, Some(base)) => base,
            // A new segment of a recorded file: it follows the previous one.
            (None, None) => i128::from(self.last_frame.unwrap_or(0)) + 1 - first_frame,
        };
        // Never back to or before the latest frame already sent (or queued before this fragmenter started).
        let floor = self.not_before.map(|t| units(t, scale));
        let last = match (self.last_frame.map(i128::from), floor) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        if let Some(last) = last
            && base + first_frame <= last
        {
            let wanted = base + first_frame;
            let jump = Duration::from_nanos(((last - wanted) as u64).saturating_mul(scale));
            if jump <= TIME_JUMP || self.header.is_none() {
                base = last + 1 - first_frame;
            } else if source_time.is_some() && wanted >= 0 {
                // The source's clock went back: a new session at the time it says.
                let header = self.header.as_ref().expect("checked above");
                self.generation += 1;
                let header = Arc::new(StreamHeader {
                    generation: self.generation,
                    ..StreamHeader::clone(header)
                });
                self.header = Some(header.clone());
                out.push(Output::TimeJump(TimeJump {
                    previous: last as u64,
                    wanted: wanted as u64,
                    placed: wanted as u64,
                    new_session: true,
                }));
                out.push(Output::Header(header));
                self.last_frame = None;
                self.last_timecode = None;
            } else {
                self.host_adjust += last + 1 - wanted;
                base = last + 1 - first_frame;
                out.push(Output::TimeJump(TimeJump {
                    previous: last as u64,
                    wanted: wanted.max(0) as u64,
                    placed: (last + 1) as u64,
                    new_session: false,
                }));
            }
        }
        // A fragment whose first frame is not the cluster's earliest could still start at or before the
        // previous fragment's Timecode (within a session).
        // The cluster's Timecode: at the input cluster's, or at its first frame for a split cluster.
        let written = if at_first_frame {
            first_frame
        } else {
            i128::from(relative)
        };
        if let Some(previous) = self.last_timecode
            && base + written <= i128::from(previous)
        {
            base = i128::from(previous) + 1 - written;
        }
        self.segment_base = Some(base);
        let timecode =
            u64::try_from(base + written).map_err(|_| InputError::TimecodeBackwards {
                previous: self.last_frame.unwrap_or(0),
                next: 0,
            })?;
        self.last_cluster = Some((relative, timecode));
        self.last_timecode = Some(timecode);

        let mut head = Vec::with_capacity(64);
        let mut tags: Vec<SimpleTag> = std::mem::take(&mut self.pending_tags);
        tags.extend(self.persistent_tags.iter().cloned());
        if !tags.is_empty() {
            write_tags(&mut head, &tags, 8);
        }
        ebml::write_id(&mut head, id::CLUSTER);
        head.extend_from_slice(&ebml::UNKNOWN_SIZE_8);
        ebml::write_uint_fixed(&mut head, id::TIMECODE, timecode, 8);
        Ok((timecode, Bytes::from(head)))
    }

    /// Ends the current cluster: a fragment that started is complete (a cluster without frames is dropped).
    fn end_cluster(&mut self, out: &mut Vec<Output>) {
        if let Some(cluster) = self.cluster.take()
            && cluster.timecode.is_some()
        {
            out.push(Output::FragmentEnd);
        }
    }
}

/// The frame `data` (a SimpleBlock element, as received) with its block timecode set to `offset` from its
/// cluster's; the payload stays the same memory. Kept as it is when the offset does not fit the block's 16 bits
/// or the frame is a BlockGroup.
fn restamp(
    info: kvs_mkv::block::BlockInfo,
    data: Rope,
    offset: i128,
) -> (kvs_mkv::block::BlockInfo, Rope) {
    let Ok(offset) = i16::try_from(offset) else {
        return (info, data);
    };
    let mut head = [0u8; 32];
    let copied = data.copy_prefix(&mut head);
    // Element ID and size, then the block's track number, timecode (2 bytes, big-endian) and flags.
    let Ok(Some((id::SIMPLE_BLOCK, id_len))) = ebml::read_id(&head[..copied]) else {
        return (info, data);
    };
    let Ok(Some((_, size_len))) = ebml::read_size(&head[id_len..copied]) else {
        return (info, data);
    };
    let block_start = id_len + size_len;
    let Ok(Some((_, track_len))) = ebml::read_vint(&head[block_start..copied]) else {
        return (info, data);
    };
    let at = block_start + track_len;
    if at + 2 > copied {
        return (info, data);
    }
    head[at..at + 2].copy_from_slice(&offset.to_be_bytes());
    let mut rope = Rope::from(Bytes::copy_from_slice(&head[..at + 2]));
    rope.append(data.slice_from(at + 2));
    (
        kvs_mkv::block::BlockInfo {
            relative_timecode: offset,
            ..info
        },
        rope,
    )
}

/// The end-of-fragment marker: a Tags element with `AWS_KINESISVIDEO_END_OF_FRAGMENT`, which closes the last
/// open (unknown-size) cluster so that the service acknowledges it.
pub fn end_of_fragment_tag() -> Bytes {
    let mut out = Vec::new();
    write_tags(
        &mut out,
        &[SimpleTag::new(kvs_mkv::tags::END_OF_FRAGMENT, "")],
        8,
    );
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvs_mkv::writer;

    /// A producer-style stream with `clusters` clusters of `frames` frames, 33 ms apart, relative timecodes from
    /// `first_ms`.
    fn stream(clusters: u64, frames: u64, first_ms: u64) -> Vec<u8> {
        let mut out = writer::h264_stream_header();
        for c in 0..clusters {
            let tc = first_ms + c * frames * 33;
            writer::write_cluster_start(&mut out, tc);
            for f in 0..frames {
                writer::write_simple_block(
                    &mut out,
                    1,
                    (f * 33) as i16,
                    f == 0,
                    &[c as u8, f as u8, 0xAB],
                );
            }
        }
        out
    }

    fn run(fragmenter: &mut Fragmenter, data: &[u8], piece: usize) -> Vec<Output> {
        let mut out = Vec::new();
        for chunk in data.chunks(piece) {
            out.extend(
                fragmenter
                    .push(Bytes::copy_from_slice(chunk), None)
                    .unwrap(),
            );
        }
        out.extend(fragmenter.finish().unwrap());
        out
    }

    /// A fragment put together from its start, frames and end.
    #[derive(Debug)]
    struct Assembled {
        generation: u64,
        timecode: u64,
        data: Vec<u8>,
        frames: usize,
        duration: Duration,
        complete: bool,
    }

    fn fragments(out: &[Output]) -> Vec<Assembled> {
        let mut fragments: Vec<Assembled> = Vec::new();
        for output in out {
            match output {
                Output::Header(_) => {}
                Output::FragmentStart(start) => fragments.push(Assembled {
                    generation: start.header.generation,
                    timecode: start.timecode,
                    data: start.data.to_vec(),
                    frames: 1,
                    duration: Duration::ZERO,
                    complete: false,
                }),
                Output::Frame { data, duration } => {
                    let last = fragments
                        .last_mut()
                        .expect("a frame after a fragment start");
                    assert!(!last.complete, "a frame after its fragment ended");
                    last.data.extend(data.to_vec());
                    last.frames += 1;
                    last.duration = *duration;
                }
                Output::FragmentEnd => {
                    fragments.last_mut().expect("an end after a start").complete = true
                }
                Output::TimeJump(_) => {}
            }
        }
        fragments
    }

    /// Pushes a stream cluster by cluster and frame by frame (as matroskamux does), each frame with its stamp;
    /// clusters of 3 frames whose muxer offsets are 0, 33 and 66 ms.
    fn push_frames(fragmenter: &mut Fragmenter, stamps: &[[Stamp; 3]]) -> Vec<Output> {
        let mut out = fragmenter
            .push(Bytes::from(writer::h264_stream_header()), None)
            .unwrap();
        for (c, cluster) in stamps.iter().enumerate() {
            let mut head = Vec::new();
            writer::write_cluster_start(&mut head, c as u64 * 99);
            out.extend(
                fragmenter
                    .push_stamped(Bytes::from(head), Stamp::None)
                    .unwrap(),
            );
            for (f, stamp) in cluster.iter().enumerate() {
                let mut block = Vec::new();
                writer::write_simple_block(
                    &mut block,
                    1,
                    (f * 33) as i16,
                    f == 0,
                    &[c as u8, f as u8],
                );
                out.extend(fragmenter.push_stamped(Bytes::from(block), *stamp).unwrap());
            }
        }
        out.extend(fragmenter.finish().unwrap());
        out
    }

    /// (generation, absolute time in ms, payload) of every frame of assembled fragments.
    fn frame_times(fragments: &[Assembled]) -> Vec<(u64, u64, Vec<u8>)> {
        let mut out = Vec::new();
        for fragment in fragments {
            let mut document = writer::h264_stream_header();
            document.extend_from_slice(&fragment.data);
            for event in kvs_mkv::read_all(&document).unwrap() {
                if let Event::ClusterChild(element) = event
                    && element.id == id::SIMPLE_BLOCK
                {
                    let info = kvs_mkv::block::parse_simple_block(&element.data()).unwrap();
                    let time = fragment
                        .timecode
                        .saturating_add_signed(i64::from(info.relative_timecode));
                    out.push((
                        fragment.generation,
                        time,
                        element.data()[info.header_len..].to_vec(),
                    ));
                }
            }
        }
        out
    }

    #[test]
    fn source_times_stamp_every_frame_exactly_and_a_clock_going_back_starts_a_new_session() {
        let t = 1_800_000_000_000u64;
        let at = |ms: u64| Stamp::Source(UNIX_EPOCH + Duration::from_millis(ms));
        // The camera's frames are 40 ms apart where the muxer says 33; the third cluster is an hour back (the
        // camera rebooted with its clock reset), the fourth follows it.
        let back = t - 3_600_000;
        let stamps = [
            [at(t), at(t + 40), at(t + 80)],
            [at(t + 120), at(t + 160), at(t + 200)],
            [at(back), at(back + 40), at(back + 80)],
            [at(back + 120), at(back + 160), at(back + 200)],
        ];
        let out = push_frames(&mut Fragmenter::new(TimeAnchor::CaptureTime), &stamps);
        let jumps: Vec<&TimeJump> = out
            .iter()
            .filter_map(|o| {
                if let Output::TimeJump(j) = o {
                    Some(j)
                } else {
                    None
                }
            })
            .collect();
        assert_eq!(
            jumps,
            [&TimeJump {
                previous: t + 200,
                wanted: back,
                placed: back,
                new_session: true
            }]
        );
        let times: Vec<(u64, u64)> = frame_times(&fragments(&out))
            .into_iter()
            .map(|(g, t, _)| (g, t))
            .collect();
        let expected: Vec<(u64, u64)> = stamps
            .iter()
            .enumerate()
            .flat_map(|(c, cluster)| {
                cluster.iter().map(move |s| match s {
                    Stamp::Source(time) => (
                        1 + (c as u64 / 2),
                        time.duration_since(UNIX_EPOCH).unwrap().as_millis() as u64,
                    ),
                    _ => unreachable!(),
                })
            })
            .collect();
        assert_eq!(times, expected);
        // The new session's header is the same bytes.
        let headers: Vec<&Arc<StreamHeader>> = out
            .iter()
            .filter_map(|o| {
                if let Output::Header(h) = o {
                    Some(h)
                } else {
                    None
                }
            })
            .collect();
        assert_eq!(headers.len(), 2);
        assert_eq!(headers[0].bytes, headers[1].bytes);
    }

    #[test]
    fn time_going_back_inside_a_cluster_splits_it_and_the_stream_goes_on() {
        // matroskamux keeps a key frame whose timestamp went back 2 s in the cluster it is writing (its
        // min-cluster-duration is not reached): offsets 0, 33, 66, then -1934 and -1901.
        let t = 1_800_000_000_000u64;
        let mut fragmenter = Fragmenter::new(TimeAnchor::CaptureTime);
        let mut out = fragmenter
            .push(Bytes::from(writer::h264_stream_header()), None)
            .unwrap();
        let mut head = Vec::new();
        writer::write_cluster_start(&mut head, 5_000);
        out.extend(fragmenter.push(Bytes::from(head), None).unwrap());
        for (f, offset) in [0i16, 33, 66, -1_934, -1_901].into_iter().enumerate() {
            let mut block = Vec::new();
            writer::write_simple_block(&mut block, 1, offset, f == 0 || f == 3, &[f as u8]);
            let captured =
                UNIX_EPOCH + Duration::from_millis((t as i64 + i64::from(offset)) as u64);
            out.extend(
                fragmenter
                    .push_stamped(Bytes::from(block), Stamp::Host(captured))
                    .unwrap(),
            );
        }
        out.extend(fragmenter.finish().unwrap());
        let jumps: Vec<&TimeJump> = out
            .iter()
            .filter_map(|o| {
                if let Output::TimeJump(j) = o {
                    Some(j)
                } else {
                    None
                }
            })
            .collect();
        assert_eq!(
            jumps,
            [&TimeJump {
                previous: t + 66,
                wanted: t - 1_934,
                placed: t + 67,
                new_session: false
            }]
        );
        let fragments = fragments(&out);
        assert_eq!(
            fragments.iter().map(|f| f.timecode).collect::<Vec<_>>(),
            [t, t + 67]
        );
        let times: Vec<(u64, Vec<u8>)> = frame_times(&fragments)
            .into_iter()
            .map(|(_, t, p)| (t, p))
            .collect();
        let expected: Vec<(u64, Vec<u8>)> = [0, 33, 66, 67, 100]
            .into_iter()
            .enumerate()
            .map(|(f, o)| (t + o, vec![f as u8]))
            .collect();
        assert_eq!(times, expected);
    }

    #[test]
    fn a_small_step_back_inside_a_cluster_puts_the_frame_right_after_the_previous_fragment() {
        // The second cluster's third frame went back 700 ms (a jitter buffer resetting its skew): before the first
        // cluster's last frame. It goes 1 ms after that frame, the others keep their times.
        let t = 1_800_000_000_000u64;
        let mut fragmenter = Fragmenter::new(TimeAnchor::CaptureTime);
        let mut out = fragmenter
            .push(Bytes::from(writer::h264_stream_header()), None)
            .unwrap();
        for (cluster, offsets) in [(0u64, [0i16, 33, 66]), (100, [0, 33, -600])] {
            let mut head = Vec::new();
            writer::write_cluster_start(&mut head, cluster);
            out.extend(fragmenter.push(Bytes::from(head), None).unwrap());
            for (f, offset) in offsets.into_iter().enumerate() {
                let mut block = Vec::new();
                let payload = [cluster as u8 + f as u8];
                writer::write_simple_block(&mut block, 1, offset, f == 0, &payload);
                let at = (t + cluster) as i64 + i64::from(offset);
                let captured = UNIX_EPOCH + Duration::from_millis(at as u64);
                out.extend(
                    fragmenter
                        .push_stamped(Bytes::from(block), Stamp::Host(captured))
                        .unwrap(),
                );
            }
        }
        out.extend(fragmenter.finish().unwrap());
        let times: Vec<u64> = frame_times(&fragments(&out))
            .into_iter()
            .map(|(_, time, _)| time)
            .collect();
        assert_eq!(times, [t, t + 33, t + 66, t + 100, t + 133, t + 67]);
    }

    #[test]
    fn a_small_step_back_in_source_time_moves_the_whole_fragment_after_the_previous_one() {
        let t = 1_800_000_000_000u64;
        let at = |ms: u64| Stamp::Source(UNIX_EPOCH + Duration::from_millis(ms));
        let stamps = [
            [at(t), at(t + 33), at(t + 66)],
            [at(t + 50), at(t + 83), at(t + 116)],
        ];
        let out = push_frames(&mut Fragmenter::new(TimeAnchor::CaptureTime), &stamps);
        assert!(!out.iter().any(|o| matches!(o, Output::TimeJump(_))));
        let times: Vec<u64> = frame_times(&fragments(&out))
            .into_iter()
            .map(|(_, t, _)| t)
            .collect();
        assert_eq!(times, [t, t + 33, t + 66, t + 67, t + 100, t + 133]);
    }

    #[test]
    fn a_host_clock_step_back_is_reported_once_and_the_stream_goes_on_from_where_it_was() {
        let t = 1_800_000_000_000u64;
        let at = |ms: u64| Stamp::Host(UNIX_EPOCH + Duration::from_millis(ms));
        let stamps = [
            [at(t), at(t + 33), at(t + 66)],
            [at(t - 5_000), at(t - 4_967), at(t - 4_934)],
            [at(t - 4_901), at(t - 4_868), at(t - 4_835)],
        ];
        let out = push_frames(&mut Fragmenter::new(TimeAnchor::CaptureTime), &stamps);
        let jumps: Vec<&TimeJump> = out
            .iter()
            .filter_map(|o| {
                if let Output::TimeJump(j) = o {
                    Some(j)
                } else {
                    None
                }
            })
            .collect();
        assert_eq!(
            jumps,
            [&TimeJump {
                previous: t + 66,
                wanted: t - 5_000,
                placed: t + 67,
                new_session: false
            }]
        );
        let frames = frame_times(&fragments(&out));
        assert!(frames.iter().all(|(generation, _, _)| *generation == 1));
        let times: Vec<u64> = frames.iter().map(|(_, t, _)| *t).collect();
        // The second cluster right after the first; the third where the second's clock puts it, 99 ms later.
        let offsets = [0, 33, 66, 67, 100, 133, 166, 199, 232];
        assert_eq!(times, offsets.map(|o| t + o));
    }

    fn joined(fragment: &Assembled) -> Vec<u8> {
        assert!(fragment.complete);
        fragment.data.clone()
    }

    #[test]
    fn splits_header_and_clusters_whatever_the_buffer_boundaries() {
        let data = stream(4, 10, 0);
        let start = UNIX_EPOCH + Duration::from_millis(1_700_000_000_000);
        let reference = run(
            &mut Fragmenter::new(TimeAnchor::Fixed(start)),
            &data,
            data.len(),
        );
        assert!(matches!(&reference[0], Output::Header(h) if h.generation == 1));
        let reference_fragments = fragments(&reference);
        assert_eq!(reference_fragments.len(), 4);
        let timecodes: Vec<u64> = reference_fragments.iter().map(|f| f.timecode).collect();
        assert_eq!(
            timecodes,
            [
                1_700_000_000_000,
                1_700_000_000_330,
                1_700_000_000_660,
                1_700_000_000_990
            ]
        );
        for piece in [1, 2, 3, 7, 100, 1000] {
            let out = run(&mut Fragmenter::new(TimeAnchor::Fixed(start)), &data, piece);
            let got: Vec<Vec<u8>> = fragments(&out).iter().map(joined).collect();
            let want: Vec<Vec<u8>> = reference_fragments.iter().map(joined).collect();
            assert_eq!(got, want, "pieces of {piece}");
        }
    }

    #[test]
    fn the_output_is_a_valid_kvs_stream_with_every_frame() {
        let data = stream(3, 5, 500);
        let out = run(
            &mut Fragmenter::new(TimeAnchor::Fixed(UNIX_EPOCH + Duration::from_secs(1000))),
            &data,
            17,
        );
        let Output::Header(header) = &out[0] else {
            panic!("no header first")
        };
        let mut rebuilt = header.bytes.to_vec();
        for fragment in fragments(&out) {
            rebuilt.extend(joined(&fragment));
            assert_eq!(fragment.frames, 5);
            assert_eq!(fragment.duration, Duration::from_millis(132));
        }
        let events = kvs_mkv::read_all(&rebuilt).unwrap();
        let blocks: Vec<Vec<u8>> = events
            .iter()
            .filter_map(|e| match e {
                Event::ClusterChild(el) if el.id == id::SIMPLE_BLOCK => {
                    Some(el.data()[4..].to_vec())
                }
                _ => None,
            })
            .collect();
        assert_eq!(blocks.len(), 15);
        assert_eq!(blocks[7], [1, 2, 0xAB]);
        // The first cluster (relative 500) is at the anchor.
        let timecodes: Vec<u64> = events
            .iter()
            .filter_map(|e| match e {
                Event::ClusterChild(el) if el.id == id::TIMECODE => {
                    Some(ebml::read_uint(&el.data()).unwrap())
                }
                _ => None,
            })
            .collect();
        assert_eq!(timecodes, [1_000_000, 1_000_165, 1_000_330]);
    }

    #[test]
    fn each_frame_comes_out_as_soon_as_it_is_complete_in_the_input_memory() {
        // matroskamux's way: the cluster head, then each block as a 7-byte header buffer and a payload buffer.
        let mut fragmenter =
            Fragmenter::new(TimeAnchor::Fixed(UNIX_EPOCH + Duration::from_secs(1000)));
        let header = fragmenter
            .push(Bytes::from(writer::h264_stream_header()), None)
            .unwrap();
        assert!(header.is_empty(), "nothing before the first cluster");
        let mut cluster = Vec::new();
        writer::write_cluster_start(&mut cluster, 0);
        let out = fragmenter.push(Bytes::from(cluster), None).unwrap();
        assert!(matches!(out.as_slice(), [Output::Header(_)]), "{out:?}");
        for (n, payload) in [vec![1u8; 5000], vec![2u8; 3000]].into_iter().enumerate() {
            let mut block = Vec::new();
            writer::write_simple_block(&mut block, 1, (n * 33) as i16, n == 0, &payload);
            let head_len = block.len() - payload.len();
            let payload = Bytes::from(payload);
            let head = fragmenter
                .push(Bytes::copy_from_slice(&block[..head_len]), None)
                .unwrap();
            let out = [head, fragmenter.push(payload.clone(), None).unwrap()].concat();
            let data = match (n, out.as_slice()) {
                (0, [Output::FragmentStart(start)]) => &start.data,
                (1, [Output::Frame { data, duration }]) => {
                    assert_eq!(*duration, Duration::from_millis(33));
                    data
                }
                _ => panic!("frame {n}: {out:?}"),
            };
            // The payload piece is the pushed buffer itself: not copied.
            assert!(
                data.pieces()
                    .any(|p| p.as_ptr() == payload.as_ptr() && p.len() == payload.len())
            );
        }
        // The fragment ends when the next cluster begins.
        let mut next = Vec::new();
        writer::write_cluster_start(&mut next, 66);
        let out = fragmenter.push(Bytes::from(next), None).unwrap();
        assert!(matches!(out.as_slice(), [Output::FragmentEnd]), "{out:?}");
    }

    #[test]
    fn each_fragment_starts_at_the_capture_time_of_its_first_frame_and_time_never_goes_back() {
        // Clusters of 3 frames 33 ms apart; the capture time of each cluster's buffer is given, 1 ms late on the
        // Matroska timeline for the second, 200 ms back in time for the third (a clock step).
        let t0 = UNIX_EPOCH + Duration::from_millis(1_800_000_000_000);
        let data = stream(3, 3, 0);
        let events = kvs_mkv::read_all(&data).unwrap();
        let cluster_offsets: Vec<usize> = events
            .iter()
            .filter_map(|e| match e {
                Event::ClusterStart { offset, .. } => Some(*offset as usize),
                _ => None,
            })
            .collect();
        let captured = [
            t0,
            t0 + Duration::from_millis(100),
            t0 - Duration::from_millis(2),
        ];
        let mut fragmenter = Fragmenter::new(TimeAnchor::CaptureTime);
        let mut out = fragmenter
            .push(Bytes::copy_from_slice(&data[..cluster_offsets[0]]), None)
            .unwrap();
        for (i, start) in cluster_offsets.iter().enumerate() {
            let end = cluster_offsets.get(i + 1).copied().unwrap_or(data.len());
            out.extend(
                fragmenter
                    .push(
                        Bytes::copy_from_slice(&data[*start..end]),
                        Some(captured[i]),
                    )
                    .unwrap(),
            );
        }
        out.extend(fragmenter.finish().unwrap());
        let timecodes: Vec<u64> = fragments(&out).iter().map(|f| f.timecode).collect();
        // The third would start at t0 - 2 ms, before the second fragment's last frame (t0 + 166 ms): it goes
        // right after it.
        assert_eq!(
            timecodes,
            [1_800_000_000_000, 1_800_000_000_100, 1_800_000_000_167]
        );
    }

    #[test]
    fn wall_clock_anchoring_is_near_now() {
        let out = run(
            &mut Fragmenter::new(TimeAnchor::CaptureTime),
            &stream(1, 2, 0),
            64,
        );
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let timecode = fragments(&out)[0].timecode;
        assert!(now_ms - timecode < 5_000, "{timecode} vs {now_ms}");
    }

    #[test]
    fn metadata_goes_before_its_cluster_and_persistent_tags_repeat() {
        let data = stream(3, 2, 0);
        let mut fragmenter = Fragmenter::new(TimeAnchor::CaptureTime);
        fragmenter.add_metadata("once", "1", false).unwrap();
        fragmenter.add_metadata("always", "yes", true).unwrap();
        let out = run(&mut fragmenter, &data, data.len());
        let tag_sets: Vec<Vec<String>> = fragments(&out)
            .iter()
            .map(|f| {
                let bytes = joined(f);
                let events =
                    kvs_mkv::read_all(&[writer::h264_stream_header(), bytes].concat()).unwrap();
                events
                    .iter()
                    .filter_map(|e| match e {
                        Event::Element(el) if el.id == id::TAGS => Some(el.data().to_vec()),
                        _ => None,
                    })
                    .flat_map(|d| kvs_mkv::tags::parse_tags(&d).unwrap())
                    .map(|t| format!("{}={}", t.name, t.value))
                    .collect()
            })
            .collect();
        assert_eq!(
            tag_sets,
            [
                vec!["once=1", "always=yes"],
                vec!["always=yes"],
                vec!["always=yes"]
            ]
        );
        assert_eq!(
            fragmenter.add_metadata("AWS_KINESISVIDEO_X", "1", false),
            Err(InputError::ReservedTagName("AWS_KINESISVIDEO_X".into()))
        );
    }

    #[test]
    fn bad_input_is_named() {
        let mut fragmenter = Fragmenter::new(TimeAnchor::CaptureTime);
        let err = fragmenter
            .push(Bytes::from_static(b"this is not matroska at all"), None)
            .unwrap_err();
        assert!(err.to_string().starts_with("not Matroska"), "{err}");

        let data = stream(2, 5, 0);
        let mut fragmenter = Fragmenter::new(TimeAnchor::CaptureTime);
        fragmenter
            .push(Bytes::copy_from_slice(&data[..data.len() - 2]), None)
            .unwrap();
        let err = fragmenter.finish().unwrap_err();
        assert_eq!(
            err.to_string(),
            "truncated Matroska: the input ends inside an element"
        );

        // A fragment of exactly the service's limit goes; one byte more is refused. The Cluster as kvssink sends
        // it: its head (22 bytes), four blocks of 9 + 9,999,989 bytes (ID, 4-byte size, block header, frame) and
        // one of 9 + 9,999,977, 50,000,000 bytes in all.
        let edge = |last_extra: usize| {
            let mut big = writer::h264_stream_header();
            writer::write_cluster_start(&mut big, 0);
            for i in 0..5 {
                let size = if i == 4 {
                    MAX_FRAGMENT_BYTES - CLUSTER_HEAD_BYTES - 4 * (9 + 9_999_989) - 9 + last_extra
                } else {
                    9_999_989
                };
                writer::write_simple_block(&mut big, 1, i * 33, i == 0, &vec![0x42; size]);
            }
            let mut fragmenter = Fragmenter::new(TimeAnchor::CaptureTime);
            let mut out = fragmenter.push(Bytes::from(big), None)?;
            out.extend(fragmenter.finish()?);
            Ok::<_, InputError>(out)
        };
        let at_limit = fragments(&edge(0).unwrap());
        assert_eq!(at_limit.len(), 1);
        assert_eq!(at_limit[0].frames, 5);
        assert_eq!(
            edge(1).unwrap_err(),
            InputError::FragmentTooLarge { size: 50_000_001 }
        );
        assert_eq!(
            edge(1).unwrap_err().to_string(),
            "a Matroska cluster of at least 50000001 bytes is larger than the KVS fragment limit of 50000000 \
             bytes (50 MB): make clusters shorter (encoder key-int-max, matroskamux max-cluster-duration) or \
             the bitrate lower"
        );

        // One cluster of 12 s.
        let mut long = writer::h264_stream_header();
        writer::write_cluster_start(&mut long, 0);
        writer::write_simple_block(&mut long, 1, 0, true, &[1]);
        writer::write_simple_block(&mut long, 1, 12_000, false, &[2]);
        let err = Fragmenter::new(TimeAnchor::CaptureTime)
            .push(Bytes::from(long), None)
            .unwrap_err();
        assert_eq!(
            err,
            InputError::FragmentTooLong {
                duration: Duration::from_secs(12)
            }
        );

        // Cluster timecodes going backwards.
        let mut back = writer::h264_stream_header();
        for tc in [5000, 1000] {
            writer::write_cluster_start(&mut back, tc);
            writer::write_simple_block(&mut back, 1, 0, true, &[1]);
        }
        let mut fragmenter =
            Fragmenter::new(TimeAnchor::Fixed(UNIX_EPOCH + Duration::from_secs(100)));
        let err = fragmenter
            .push(Bytes::from(back), None)
            .and_then(|_| fragmenter.finish())
            .unwrap_err();
        assert_eq!(
            err,
            InputError::TimecodeBackwards {
                previous: 100_000,
                next: 96_000
            }
        );
    }

    #[test]
    fn a_new_header_starts_a_new_generation_that_never_goes_back_in_time() {
        let mut data = stream(2, 3, 0);
        data.extend(stream(2, 3, 0));
        let start = UNIX_EPOCH + Duration::from_secs(1_000);
        let out = run(&mut Fragmenter::new(TimeAnchor::Fixed(start)), &data, 50);
        let generations: Vec<u64> = fragments(&out).iter().map(|f| f.generation).collect();
        assert_eq!(generations, [1, 1, 2, 2]);
        let timecodes: Vec<u64> = fragments(&out).iter().map(|f| f.timecode).collect();
        assert!(timecodes.windows(2).all(|w| w[0] < w[1]), "{timecodes:?}");
        assert_eq!(
            out.iter()
                .filter(|o| matches!(o, Output::Header(_)))
                .count(),
            2
        );
    }
}
#[cfg(test)]
mod media_type_tests {
    use super::*;
    #[test]
    fn the_header_names_the_media_type() {
        let mut data = kvs_mkv::writer::h264_stream_header();
        kvs_mkv::writer::write_cluster_start(&mut data, 0);
        kvs_mkv::writer::write_simple_block(&mut data, 1, 0, true, &[1]);
        let out = Fragmenter::new(TimeAnchor::CaptureTime)
            .push(Bytes::from(data), None)
            .unwrap();
        let Output::Header(header) = &out[0] else {
            panic!()
        };
        assert_eq!(header.media_type.as_deref(), Some("video/h264"));
    }

    #[test]
    fn track_names_replace_what_the_muxer_wrote() {
        let mut data = kvs_mkv::writer::h264_stream_header();
        kvs_mkv::writer::write_cluster_start(&mut data, 0);
        kvs_mkv::writer::write_simple_block(&mut data, 1, 0, true, &[1]);
        let mut fragmenter = Fragmenter::new(TimeAnchor::CaptureTime);
        fragmenter.set_track_names(Some(TrackNames {
            video: TrackRename {
                name: Some("kinesis_video".into()),
                codec_id: Some("V_MPEGH/ISO/HEVC".into()),
            },
            audio: TrackRename {
                name: Some("audio".into()),
                codec_id: None,
            },
        }));
        let out = fragmenter.push(Bytes::from(data), None).unwrap();
        let Output::Header(header) = &out[0] else {
            panic!()
        };
        assert_eq!(header.media_type.as_deref(), Some("video/h265"));
        let mut reader = MkvReader::default();
        reader.push_bytes(header.bytes.clone());
        let mut names = Vec::new();
        while let Some(event) = reader.next_event().unwrap() {
            if let Event::Element(element) = event
                && element.id == id::TRACKS
            {
                for track in kvs_mkv::header::tracks(&element.data()).unwrap() {
                    names.push((track.name, track.codec_id));
                }
            }
        }
        assert_eq!(
            names,
            [(
                Some("kinesis_video".to_owned()),
                "V_MPEGH/ISO/HEVC".to_owned()
            )]
        );
    }
}
