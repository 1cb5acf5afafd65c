//! Splits a Matroska byte stream (matroskamux output, in buffers of any size) into a KVS stream header and
//! fragments, one per Cluster, ready for PutMedia.
//!
//! - The header is rebuilt as KVS wants it: the EBML header, a Segment of unknown size, Info and Tracks.
//!   SeekHead, Void, Cues, Chapters and global Tags are dropped: they describe a file, not a live stream.
//! - Each Cluster is re-emitted with an unknown size and its Timecode rewritten to absolute time (epoch time in
//!   TimecodeScale units), anchored to the wall clock when its segment's first cluster arrives or to a start
//!   time given by the user. Only Timecode, SimpleBlock and BlockGroup children are kept (Position and PrevSize
//!   would be wrong after the rewrite). Fragment metadata (Tags) goes right before the cluster it is for.
//! - A new EBML header (a caps or header change upstream) starts a new header generation: the uploader then
//!   opens a new connection for the fragments that follow.
//!
//! Nothing here depends on GStreamer, so it is tested with plain byte streams.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use kvs_mkv::ebml::{self, id};
use kvs_mkv::tags::{SimpleTag, write_tags};
use kvs_mkv::{Event, MkvReader};

/// KVS refuses fragments larger than this (ERROR 4001).
pub const MAX_FRAGMENT_BYTES: usize = 50 * 1024 * 1024;
/// KVS refuses fragments longer than this (ERROR 4002).
pub const MAX_FRAGMENT_DURATION: Duration = Duration::from_secs(10);
/// KVS accepts at most this many metadata tags per fragment.
pub const MAX_TAGS_PER_FRAGMENT: usize = 10;

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

/// One fragment: optional Tags, then one Cluster with an absolute Timecode.
#[derive(Debug, Clone)]
pub struct Fragment {
    pub header: Arc<StreamHeader>,
    /// The cluster's absolute Timecode, in TimecodeScale units (what the ACKs echo).
    pub timecode: u64,
    /// From the cluster's start to the start of its last frame.
    pub duration: Duration,
    /// The bytes to send, in pieces (no copy of the frames).
    pub chunks: Vec<Bytes>,
    pub size: usize,
    pub frames: usize,
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
            InputError::NoTracks => write!(f, "the Matroska stream has clusters but no Tracks element"),
            InputError::FragmentTooLarge { size } => write!(
                f,
                "a Matroska cluster of {size} bytes is larger than the KVS fragment limit of {MAX_FRAGMENT_BYTES} \
                 bytes: make clusters shorter (encoder key-int-max, matroskamux max-cluster-duration)"
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
                write!(f, "more than {MAX_TAGS_PER_FRAGMENT} metadata tags for one fragment (the KVS limit)")
            }
            InputError::ReservedTagName(name) => {
                write!(
                    f,
                    "metadata name {name:?} is reserved: names starting with \"AWS\" belong to the service"
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

/// What [`Fragmenter::push`] found.
#[derive(Debug, Clone)]
pub enum Output {
    /// A new stream header: fragments after it belong to it.
    Header(Arc<StreamHeader>),
    Fragment(Fragment),
}

/// Where absolute time comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeAnchor {
    /// The wall clock when a segment's first cluster arrives.
    WallClock,
    /// The first cluster of the stream is at this time (for uploading recorded files).
    Fixed(SystemTime),
}

#[derive(Debug)]
struct ClusterInProgress {
    relative_timecode: Option<u64>,
    blocks: Vec<Bytes>,
    size: usize,
    max_block_offset: i64,
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
    /// End (absolute, in units) of the last fragment's last frame.
    last_end: Option<u64>,
    last_timecode: Option<u64>,
    cluster: Option<ClusterInProgress>,
    media_type_tracks: Vec<&'static str>,
    pending_tags: Vec<SimpleTag>,
    persistent_tags: Vec<SimpleTag>,
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
            last_end: None,
            last_timecode: None,
            cluster: None,
            media_type_tracks: Vec::new(),
            pending_tags: Vec::new(),
            persistent_tags: Vec::new(),
        }
    }

    /// Adds a metadata tag to the next fragment, or to every following fragment when `persist` (a persistent
    /// tag with an empty value removes the persistent tag of that name).
    pub fn add_metadata(&mut self, name: &str, value: &str, persist: bool) -> Result<(), InputError> {
        if name.starts_with("AWS") {
            return Err(InputError::ReservedTagName(name.to_owned()));
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

    /// Feeds bytes; returns the headers and complete fragments they finish, in order.
    pub fn push(&mut self, data: &[u8]) -> Result<Vec<Output>, InputError> {
        self.reader.push(data);
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
        if self.cluster.is_some() {
            self.end_cluster(&mut out)?;
        }
        Ok(out)
    }

    /// True once a header has been seen.
    pub fn has_header(&self) -> bool {
        self.header.is_some()
    }

    fn handle(&mut self, event: Event, out: &mut Vec<Output>) -> Result<(), InputError> {
        match event {
            Event::EbmlHeader(element) => {
                if self.cluster.is_some() {
                    self.end_cluster(out)?;
                }
                kvs_mkv::header::doc_type(element.data())?;
                self.header_parts = element.bytes.to_vec();
                self.has_tracks = false;
                self.header = None;
                self.header_announced = false;
                self.segment_base = None;
                self.media_type_tracks.clear();
            }
            Event::SegmentStart { .. } => {
                ebml::write_id(&mut self.header_parts, id::SEGMENT);
                self.header_parts.extend_from_slice(&ebml::UNKNOWN_SIZE_8);
            }
            Event::Element(element) => match element.id {
                id::INFO if !self.header_announced => {
                    self.timecode_scale = kvs_mkv::header::timecode_scale(element.data())?;
                    self.header_parts.extend_from_slice(&element.bytes);
                }
                id::TRACKS if !self.header_announced => {
                    let tracks = kvs_mkv::header::tracks(element.data())?;
                    self.media_type_tracks =
                        tracks.iter().filter_map(|t| kvs_mkv::header::media_type(&t.codec_id)).collect();
                    self.header_parts.extend_from_slice(&element.bytes);
                    self.has_tracks = true;
                }
                // Everything else at level 1 describes a file (SeekHead, Cues, Void, global Tags): dropped.
                _ => {}
            },
            Event::ClusterStart { .. } => {
                if !self.header_announced {
                    if self.header_parts.is_empty() {
                        return Err(InputError::ClusterBeforeHeader);
                    }
                    if !self.has_tracks {
                        return Err(InputError::NoTracks);
                    }
                    self.generation += 1;
                    let media_type =
                        (!self.media_type_tracks.is_empty()).then(|| self.media_type_tracks.join(","));
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
                self.cluster = Some(ClusterInProgress {
                    relative_timecode: None,
                    blocks: Vec::new(),
                    size: 0,
                    max_block_offset: 0,
                });
            }
            Event::ClusterChild(element) => {
                let Some(cluster) = self.cluster.as_mut() else { return Ok(()) };
                match element.id {
                    id::TIMECODE => cluster.relative_timecode = Some(ebml::read_uint(element.data())?),
                    id::SIMPLE_BLOCK | id::BLOCK_GROUP => {
                        let info = if element.id == id::SIMPLE_BLOCK {
                            kvs_mkv::block::parse_simple_block(element.data())?
                        } else {
                            kvs_mkv::block::parse_block_group(element.data())?
                        };
                        cluster.max_block_offset =
                            cluster.max_block_offset.max(i64::from(info.relative_timecode));
                        cluster.size += element.bytes.len();
                        cluster.blocks.push(element.bytes);
                        if cluster.size > MAX_FRAGMENT_BYTES {
                            return Err(InputError::FragmentTooLarge { size: cluster.size });
                        }
                        let duration = Duration::from_nanos(
                            (cluster.max_block_offset as u64).saturating_mul(self.timecode_scale),
                        );
                        if duration > MAX_FRAGMENT_DURATION {
                            return Err(InputError::FragmentTooLong { duration });
                        }
                    }
                    _ => {}
                }
            }
            Event::ClusterEnd { .. } => self.end_cluster(out)?,
            Event::SegmentEnd { .. } => {}
        }
        Ok(())
    }

    fn units_to_duration(&self, units: u64) -> Duration {
        Duration::from_nanos(units.saturating_mul(self.timecode_scale))
    }

    fn end_cluster(&mut self, out: &mut Vec<Output>) -> Result<(), InputError> {
        let Some(cluster) = self.cluster.take() else { return Ok(()) };
        if cluster.blocks.is_empty() {
            return Ok(());
        }
        let Some(header) = self.header.clone() else { return Err(InputError::ClusterBeforeHeader) };
        let relative = cluster.relative_timecode.unwrap_or(0);
        let scale = i128::from(self.timecode_scale);
        let base = match self.segment_base {
            Some(base) => base,
            None => {
                let anchor_time = match (self.anchor, self.last_end) {
                    (TimeAnchor::Fixed(start), None) => start,
                    _ => SystemTime::now(),
                };
                let anchor_ns = anchor_time.duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos() as i128;
                let mut first = anchor_ns / scale;
                // A later segment (after a header change) never goes back before the previous one's end.
                if let Some(end) = self.last_end {
                    first = first.max(i128::from(end) + 1);
                }
                let base = first - i128::from(relative);
                self.segment_base = Some(base);
                base
            }
        };
        let absolute = base + i128::from(relative);
        let timecode = u64::try_from(absolute).map_err(|_| InputError::TimecodeBackwards {
            previous: self.last_timecode.unwrap_or(0),
            next: 0,
        })?;
        if let Some(previous) = self.last_timecode
            && timecode < previous
        {
            return Err(InputError::TimecodeBackwards { previous, next: timecode });
        }
        let mut head = Vec::with_capacity(64);
        let mut tags: Vec<SimpleTag> = std::mem::take(&mut self.pending_tags);
        tags.extend(self.persistent_tags.iter().cloned());
        if !tags.is_empty() {
            write_tags(&mut head, &tags, 8);
        }
        ebml::write_id(&mut head, id::CLUSTER);
        head.extend_from_slice(&ebml::UNKNOWN_SIZE_8);
        ebml::write_uint_fixed(&mut head, id::TIMECODE, timecode, 8);
        let frames = cluster.blocks.len();
        let mut chunks = Vec::with_capacity(frames + 1);
        let size = head.len() + cluster.size;
        chunks.push(Bytes::from(head));
        chunks.extend(cluster.blocks);
        self.last_timecode = Some(timecode);
        let end = timecode.saturating_add(cluster.max_block_offset.max(0) as u64);
        self.last_end = Some(self.last_end.map_or(end, |e| e.max(end)));
        out.push(Output::Fragment(Fragment {
            header,
            timecode,
            duration: self.units_to_duration(cluster.max_block_offset.max(0) as u64),
            chunks,
            size,
            frames,
        }));
        Ok(())
    }
}

/// The end-of-fragment marker: a Tags element with `AWS_KINESISVIDEO_END_OF_FRAGMENT`, which closes the last
/// open (unknown-size) cluster so that the service acknowledges it.
pub fn end_of_fragment_tag() -> Bytes {
    let mut out = Vec::new();
    write_tags(&mut out, &[SimpleTag::new(kvs_mkv::tags::END_OF_FRAGMENT, "")], 8);
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
                writer::write_simple_block(&mut out, 1, (f * 33) as i16, f == 0, &[c as u8, f as u8, 0xAB]);
            }
        }
        out
    }

    fn run(fragmenter: &mut Fragmenter, data: &[u8], piece: usize) -> Vec<Output> {
        let mut out = Vec::new();
        for chunk in data.chunks(piece) {
            out.extend(fragmenter.push(chunk).unwrap());
        }
        out.extend(fragmenter.finish().unwrap());
        out
    }

    fn fragments(out: &[Output]) -> Vec<&Fragment> {
        out.iter().filter_map(|o| if let Output::Fragment(f) = o { Some(f) } else { None }).collect()
    }

    fn joined(fragment: &Fragment) -> Vec<u8> {
        fragment.chunks.concat()
    }

    #[test]
    fn splits_header_and_clusters_whatever_the_buffer_boundaries() {
        let data = stream(4, 10, 0);
        let start = UNIX_EPOCH + Duration::from_millis(1_700_000_000_000);
        let reference = run(&mut Fragmenter::new(TimeAnchor::Fixed(start)), &data, data.len());
        assert!(matches!(&reference[0], Output::Header(h) if h.generation == 1));
        let reference_fragments = fragments(&reference);
        assert_eq!(reference_fragments.len(), 4);
        let timecodes: Vec<u64> = reference_fragments.iter().map(|f| f.timecode).collect();
        assert_eq!(timecodes, [1_700_000_000_000, 1_700_000_000_330, 1_700_000_000_660, 1_700_000_000_990]);
        for piece in [1, 2, 3, 7, 100, 1000] {
            let out = run(&mut Fragmenter::new(TimeAnchor::Fixed(start)), &data, piece);
            let got: Vec<Vec<u8>> = fragments(&out).iter().map(|f| joined(f)).collect();
            let want: Vec<Vec<u8>> = reference_fragments.iter().map(|f| joined(f)).collect();
            assert_eq!(got, want, "pieces of {piece}");
        }
    }

    #[test]
    fn the_output_is_a_valid_kvs_stream_with_every_frame() {
        let data = stream(3, 5, 500);
        let out =
            run(&mut Fragmenter::new(TimeAnchor::Fixed(UNIX_EPOCH + Duration::from_secs(1000))), &data, 17);
        let Output::Header(header) = &out[0] else { panic!("no header first") };
        let mut rebuilt = header.bytes.to_vec();
        for fragment in fragments(&out) {
            rebuilt.extend(joined(fragment));
            assert_eq!(fragment.frames, 5);
            assert_eq!(fragment.duration, Duration::from_millis(132));
        }
        let events = kvs_mkv::read_all(&rebuilt).unwrap();
        let blocks: Vec<Vec<u8>> = events
            .iter()
            .filter_map(|e| match e {
                Event::ClusterChild(el) if el.id == id::SIMPLE_BLOCK => Some(el.data()[4..].to_vec()),
                _ => None,
            })
            .collect();
        assert_eq!(blocks.len(), 15);
        assert_eq!(blocks[7], [1, 2, 0xAB]);
        // The first cluster (relative 500) is at the anchor.
        let timecodes: Vec<u64> = events
            .iter()
            .filter_map(|e| match e {
                Event::ClusterChild(el) if el.id == id::TIMECODE => Some(ebml::read_uint(el.data()).unwrap()),
                _ => None,
            })
            .collect();
        assert_eq!(timecodes, [1_000_000, 1_000_165, 1_000_330]);
    }

    #[test]
    fn wall_clock_anchoring_is_near_now() {
        let out = run(&mut Fragmenter::new(TimeAnchor::WallClock), &stream(1, 2, 0), 64);
        let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
        let timecode = fragments(&out)[0].timecode;
        assert!(now_ms - timecode < 5_000, "{timecode} vs {now_ms}");
    }

    #[test]
    fn metadata_goes_before_its_cluster_and_persistent_tags_repeat() {
        let data = stream(3, 2, 0);
        let mut fragmenter = Fragmenter::new(TimeAnchor::WallClock);
        fragmenter.add_metadata("once", "1", false).unwrap();
        fragmenter.add_metadata("always", "yes", true).unwrap();
        let out = run(&mut fragmenter, &data, data.len());
        let tag_sets: Vec<Vec<String>> = fragments(&out)
            .iter()
            .map(|f| {
                let bytes = joined(f);
                let events = kvs_mkv::read_all(&[writer::h264_stream_header(), bytes].concat()).unwrap();
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
        assert_eq!(tag_sets, [vec!["once=1", "always=yes"], vec!["always=yes"], vec!["always=yes"]]);
        assert_eq!(
            fragmenter.add_metadata("AWS_KINESISVIDEO_X", "1", false),
            Err(InputError::ReservedTagName("AWS_KINESISVIDEO_X".into()))
        );
    }

    #[test]
    fn bad_input_is_named() {
        let mut fragmenter = Fragmenter::new(TimeAnchor::WallClock);
        let err = fragmenter.push(b"this is not matroska at all").unwrap_err();
        assert!(err.to_string().starts_with("not Matroska"), "{err}");

        let data = stream(2, 5, 0);
        let mut fragmenter = Fragmenter::new(TimeAnchor::WallClock);
        fragmenter.push(&data[..data.len() - 2]).unwrap();
        let err = fragmenter.finish().unwrap_err();
        assert_eq!(err.to_string(), "truncated Matroska: the input ends inside an element");

        // One cluster of 12 s.
        let mut long = writer::h264_stream_header();
        writer::write_cluster_start(&mut long, 0);
        writer::write_simple_block(&mut long, 1, 0, true, &[1]);
        writer::write_simple_block(&mut long, 1, 12_000, false, &[2]);
        let err = Fragmenter::new(TimeAnchor::WallClock).push(&long).unwrap_err();
        assert_eq!(err, InputError::FragmentTooLong { duration: Duration::from_secs(12) });

        // Cluster timecodes going backwards.
        let mut back = writer::h264_stream_header();
        for tc in [5000, 1000] {
            writer::write_cluster_start(&mut back, tc);
            writer::write_simple_block(&mut back, 1, 0, true, &[1]);
        }
        let mut fragmenter = Fragmenter::new(TimeAnchor::Fixed(UNIX_EPOCH + Duration::from_secs(100)));
        let err = fragmenter.push(&back).and_then(|_| fragmenter.finish()).unwrap_err();
        assert_eq!(err, InputError::TimecodeBackwards { previous: 100_000, next: 96_000 });
    }

    #[test]
    fn a_new_header_starts_a_new_generation_that_never_goes_back_in_time() {
        let mut data = stream(2, 3, 0);
        data.extend(stream(2, 3, 0));
        let start = UNIX_EPOCH + Duration::from_secs(1_000);
        let out = run(&mut Fragmenter::new(TimeAnchor::Fixed(start)), &data, 50);
        let generations: Vec<u64> = fragments(&out).iter().map(|f| f.header.generation).collect();
        assert_eq!(generations, [1, 1, 2, 2]);
        let timecodes: Vec<u64> = fragments(&out).iter().map(|f| f.timecode).collect();
        assert!(timecodes.windows(2).all(|w| w[0] < w[1]), "{timecodes:?}");
        assert_eq!(out.iter().filter(|o| matches!(o, Output::Header(_))).count(), 2);
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
        let out = Fragmenter::new(TimeAnchor::WallClock).push(&data).unwrap();
        let Output::Header(header) = &out[0] else { panic!() };
        assert_eq!(header.media_type.as_deref(), Some("video/h264"));
    }
}
