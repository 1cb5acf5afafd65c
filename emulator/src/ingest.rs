// SPDX-License-Identifier: MPL-2.0

//! PutMedia body ingestion: the rules KVS applies to a Matroska upload (KVS-PROTOCOL.md §2.6), as a state
//! machine without I/O. The PutMedia handler feeds it the body as it arrives and turns its events into
//! ACKs and stored fragments.
//!
//! One Cluster is one fragment. A fragment starts when its Cluster's Timecode is read (BUFFERING) and is
//! complete when the next Cluster, a Tags element (such as the end-of-fragment marker) or the end of the body
//! closes it (RECEIVED).

use std::collections::BTreeMap;

use bytes::Bytes;
use kvs_mkv::ebml::{id, read_uint};
use kvs_mkv::{Event, MkvReader, header, tags};

/// An ERROR ACK's id and code (KVS-PROTOCOL.md §2.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AckError {
    pub id: u32,
    pub code: &'static str,
}

impl AckError {
    pub const STREAM_READ_ERROR: AckError = AckError {
        id: 4000,
        code: "STREAM_READ_ERROR",
    };
    pub const MAX_FRAGMENT_SIZE_REACHED: AckError = AckError {
        id: 4001,
        code: "MAX_FRAGMENT_SIZE_REACHED",
    };
    pub const MAX_FRAGMENT_DURATION_REACHED: AckError = AckError {
        id: 4002,
        code: "MAX_FRAGMENT_DURATION_REACHED",
    };
    pub const MAX_CONNECTION_DURATION_REACHED: AckError = AckError {
        id: 4003,
        code: "MAX_CONNECTION_DURATION_REACHED",
    };
    pub const FRAGMENT_TIMECODE_LESSER_THAN_PREVIOUS: AckError = AckError {
        id: 4004,
        code: "FRAGMENT_TIMECODE_LESSER_THAN_PREVIOUS",
    };
    pub const MORE_THAN_ONE_TRACK_FOUND: AckError = AckError {
        id: 4005,
        code: "MORE_THAN_ONE_TRACK_FOUND",
    };
    pub const INVALID_MKV_DATA: AckError = AckError {
        id: 4006,
        code: "INVALID_MKV_DATA",
    };
    pub const INVALID_PRODUCER_TIMESTAMP: AckError = AckError {
        id: 4007,
        code: "INVALID_PRODUCER_TIMESTAMP",
    };
    pub const STREAM_NOT_ACTIVE: AckError = AckError {
        id: 4008,
        code: "STREAM_NOT_ACTIVE",
    };
    pub const FRAGMENT_METADATA_LIMIT_REACHED: AckError = AckError {
        id: 4009,
        code: "FRAGMENT_METADATA_LIMIT_REACHED",
    };
    pub const TRACK_NUMBER_MISMATCH: AckError = AckError {
        id: 4010,
        code: "TRACK_NUMBER_MISMATCH",
    };
    pub const FRAMES_MISSING_FOR_TRACK: AckError = AckError {
        id: 4011,
        code: "FRAMES_MISSING_FOR_TRACK",
    };
    pub const MORE_THAN_ALLOWED_TRACKS_FOUND: AckError = AckError {
        id: 4012,
        code: "MORE_THAN_ALLOWED_TRACKS_FOUND",
    };
    pub const STREAM_DELETED: AckError = AckError {
        id: 4507,
        code: "STREAM_DELETED",
    };
    pub const INTERNAL_ERROR: AckError = AckError {
        id: 5000,
        code: "INTERNAL_ERROR",
    };
    pub const ARCHIVAL_ERROR: AckError = AckError {
        id: 5001,
        code: "ARCHIVAL_ERROR",
    };

    /// Every id the service documents, for fault injection by id.
    pub const ALL: [AckError; 18] = [
        Self::STREAM_READ_ERROR,
        Self::MAX_FRAGMENT_SIZE_REACHED,
        Self::MAX_FRAGMENT_DURATION_REACHED,
        Self::MAX_CONNECTION_DURATION_REACHED,
        Self::FRAGMENT_TIMECODE_LESSER_THAN_PREVIOUS,
        Self::MORE_THAN_ONE_TRACK_FOUND,
        Self::INVALID_MKV_DATA,
        Self::INVALID_PRODUCER_TIMESTAMP,
        Self::STREAM_NOT_ACTIVE,
        Self::FRAGMENT_METADATA_LIMIT_REACHED,
        Self::TRACK_NUMBER_MISMATCH,
        Self::FRAMES_MISSING_FOR_TRACK,
        Self::MORE_THAN_ALLOWED_TRACKS_FOUND,
        Self::STREAM_DELETED,
        Self::INTERNAL_ERROR,
        Self::ARCHIVAL_ERROR,
        AckError {
            id: 4500,
            code: "KMS_KEY_ACCESS_DENIED",
        },
        AckError {
            id: 4501,
            code: "KMS_KEY_DISABLED",
        },
    ];

    pub fn from_id(id: u32) -> Option<AckError> {
        Self::ALL.iter().copied().find(|e| e.id == id)
    }
}

/// How cluster timecodes map to producer time (`x-amzn-fragment-timecode-type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimecodeType {
    Absolute,
    Relative,
}

/// Service limits applied while ingesting.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_fragment_bytes: u64,
    pub max_fragment_duration_ms: i64,
    pub max_tracks: usize,
    pub max_tags_per_fragment: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            // "50 MB" on the service quotas page, read as 50,000,000 bytes (the stricter reading): a fragment
            // the emulator takes is then not refused by the service under either reading.
            max_fragment_bytes: 50_000_000,
            max_fragment_duration_ms: 10_000,
            max_tracks: 3,
            max_tags_per_fragment: 10,
        }
    }
}

/// What the upload's header (before the first Cluster) held.
#[derive(Debug, Clone, Default)]
pub struct StreamHeader {
    /// The EBML header element, as sent.
    pub ebml: Bytes,
    /// The level-1 elements before the first Cluster (Info, Tracks, SeekHead, Tags...), as sent.
    pub elements: Vec<Bytes>,
    pub timecode_scale: u64,
    pub tracks: Vec<header::Track>,
}

/// What happened in the body.
#[derive(Debug, Clone, PartialEq)]
pub enum IngestEvent {
    /// A fragment began: its Cluster's Timecode was read.
    Started {
        /// The Cluster Timecode as sent (the ACKs' FragmentTimecode).
        timecode: u64,
        /// Producer timestamp in ms since the epoch.
        producer_ms: i64,
        /// Tags elements that preceded this Cluster (metadata for this fragment), as sent.
        tags: Vec<Bytes>,
        /// The Cluster's ID and size, and its children so far.
        data: Vec<Bytes>,
    },
    /// Another complete child of the open fragment's Cluster.
    Data(Bytes),
    /// The child that follows (as `Data`) is a frame: its track and producer time in ms since the epoch.
    Frame { track: u64, producer_ms: i64 },
    /// The open fragment is complete.
    Completed {
        duration_ms: i64,
        frames: BTreeMap<u64, u64>,
        size: u64,
    },
    /// The upload broke a rule; the connection must end with an ERROR ACK for `timecode`.
    Failed {
        error: AckError,
        timecode: u64,
        reason: String,
    },
}

#[derive(Debug)]
struct OpenFragment {
    timecode: Option<u64>,
    pending: Vec<Bytes>,
    size: u64,
    frames: BTreeMap<u64, u64>,
    first_ms: Option<i64>,
    last_ms: Option<i64>,
    min_ms: i64,
    max_ms: i64,
}

/// The ingestion state machine for one PutMedia request.
#[derive(Debug)]
pub struct Ingest {
    reader: MkvReader,
    limits: Limits,
    timecode_type: TimecodeType,
    producer_start_ms: i64,
    header: StreamHeader,
    header_done: bool,
    /// Tags elements (and how many SimpleTags each holds) waiting for the next fragment.
    header_tags: Vec<(Bytes, usize)>,
    pending_tags: Vec<(Bytes, usize)>,
    current: Option<OpenFragment>,
    previous_max_ms: Option<i64>,
    last_timecode: u64,
    failed: bool,
}

impl Ingest {
    pub fn new(timecode_type: TimecodeType, producer_start_ms: i64, limits: Limits) -> Ingest {
        Ingest {
            reader: MkvReader::with_max_element_size(limits.max_fragment_bytes as usize + 1024),
            limits,
            timecode_type,
            producer_start_ms,
            header: StreamHeader {
                timecode_scale: 1_000_000,
                ..StreamHeader::default()
            },
            header_done: false,
            header_tags: Vec::new(),
            pending_tags: Vec::new(),
            current: None,
            previous_max_ms: None,
            last_timecode: 0,
            failed: false,
        }
    }

    /// The header read so far (complete once the first fragment has started).
    pub fn header(&self) -> &StreamHeader {
        &self.header
    }

    /// True while a fragment is open (started, not yet completed).
    pub fn fragment_open(&self) -> bool {
        self.current.as_ref().is_some_and(|f| f.timecode.is_some())
    }

    /// The timecode of the open fragment, or of the last one.
    pub fn current_timecode(&self) -> u64 {
        self.current
            .as_ref()
            .and_then(|f| f.timecode)
            .unwrap_or(self.last_timecode)
    }

    /// Feeds body bytes; returns what they completed. After a `Failed` event, nothing more is reported.
    pub fn push(&mut self, data: &[u8]) -> Vec<IngestEvent> {
        let mut out = Vec::new();
        if self.failed {
            return out;
        }
        self.reader.push(data);
        loop {
            match self.reader.next_event() {
                Ok(Some(event)) => {
                    if let Err((error, reason)) = self.on_event(event, &mut out) {
                        self.fail(error, reason, &mut out);
                        break;
                    }
                }
                Ok(None) => break,
                Err(err) => {
                    self.fail(AckError::INVALID_MKV_DATA, err.to_string(), &mut out);
                    break;
                }
            }
        }
        out
    }

    /// The body ended cleanly: completes the open fragment, or fails on a truncated element.
    pub fn finish(&mut self) -> Vec<IngestEvent> {
        let mut out = Vec::new();
        if self.failed {
            return out;
        }
        match self.reader.finish() {
            Ok(events) => {
                for event in events {
                    if let Err((error, reason)) = self.on_event(event, &mut out) {
                        self.fail(error, reason, &mut out);
                        return out;
                    }
                }
            }
            Err(err) => self.fail(AckError::INVALID_MKV_DATA, err.to_string(), &mut out),
        }
        out
    }

    fn fail(&mut self, error: AckError, reason: String, out: &mut Vec<IngestEvent>) {
        self.failed = true;
        out.push(IngestEvent::Failed {
            error,
            timecode: self.current_timecode(),
            reason,
        });
    }

    fn on_event(
        &mut self,
        event: Event,
        out: &mut Vec<IngestEvent>,
    ) -> Result<(), (AckError, String)> {
        let invalid = |reason: String| (AckError::INVALID_MKV_DATA, reason);
        match event {
            Event::EbmlHeader(element) => {
                if !self.header.ebml.is_empty() {
                    return Err(invalid(
                        "a second EBML header in one PutMedia body".to_owned(),
                    ));
                }
                header::doc_type(&element.data()).map_err(|e| invalid(e.to_string()))?;
                self.header.ebml = element.to_bytes();
            }
            Event::SegmentStart { .. } => {}
            Event::SegmentEnd { .. } => {}
            Event::Element(element) => match element.id {
                id::TAGS => {
                    let parsed =
                        tags::parse_tags(&element.data()).map_err(|e| invalid(e.to_string()))?;
                    let end_of_fragment = parsed.iter().any(|t| t.name == tags::END_OF_FRAGMENT);
                    if !end_of_fragment {
                        // The documented metadata limits hold for every fragment's tags, the first fragment's
                        // (right after the header) included; the event tags (AWS_KINESISVIDEO_NOTIFICATION,
                        // _IMAGE_GENERATION, _IMAGE_PREFIX) count like the others.
                        for tag in &parsed {
                            if tag.name.len() > 128 || tag.value.len() > 256 {
                                return Err((
                                    AckError::FRAGMENT_METADATA_LIMIT_REACHED,
                                    format!("tag {:?} is longer than allowed", tag.name),
                                ));
                            }
                        }
                        let waiting = if self.header_done {
                            &self.pending_tags
                        } else {
                            &self.header_tags
                        };
                        let count =
                            parsed.len() + waiting.iter().map(|(_, count)| count).sum::<usize>();
                        if count > self.limits.max_tags_per_fragment {
                            return Err((
                                AckError::FRAGMENT_METADATA_LIMIT_REACHED,
                                format!("{count} metadata tags for one fragment (at most 10)"),
                            ));
                        }
                    }
                    if !self.header_done {
                        self.header.elements.push(element.to_bytes());
                        if !end_of_fragment {
                            self.header_tags.push((element.to_bytes(), parsed.len()));
                        }
                    } else if !end_of_fragment {
                        self.pending_tags.push((element.to_bytes(), parsed.len()));
                    }
                }
                id::INFO | id::TRACKS if self.header_done => {
                    return Err(invalid(format!(
                        "element 0x{:X} after the first Cluster (a new header needs a new PutMedia)",
                        element.id
                    )));
                }
                id::INFO => {
                    self.header.timecode_scale = header::timecode_scale(&element.data())
                        .map_err(|e| invalid(e.to_string()))?;
                    self.header.elements.push(element.to_bytes());
                }
                id::TRACKS => {
                    let tracks =
                        header::tracks(&element.data()).map_err(|e| invalid(e.to_string()))?;
                    if tracks.len() > self.limits.max_tracks {
                        return Err((
                            AckError::MORE_THAN_ALLOWED_TRACKS_FOUND,
                            format!(
                                "{} tracks (at most {})",
                                tracks.len(),
                                self.limits.max_tracks
                            ),
                        ));
                    }
                    self.header.tracks = tracks;
                    self.header.elements.push(element.to_bytes());
                }
                _ if !self.header_done => self.header.elements.push(element.to_bytes()),
                _ => {} // Cues, Void, SeekHead... between clusters: not part of any fragment
            },
            Event::ClusterStart {
                header: cluster_header,
                ..
            } => {
                if self.header.tracks.is_empty() {
                    return Err(invalid("a Cluster before any Tracks".to_owned()));
                }
                if !self.header_done {
                    self.header_done = true;
                    self.pending_tags = std::mem::take(&mut self.header_tags);
                }
                self.current = Some(OpenFragment {
                    timecode: None,
                    pending: vec![cluster_header.clone()],
                    size: cluster_header.len() as u64,
                    frames: BTreeMap::new(),
                    first_ms: None,
                    last_ms: None,
                    min_ms: i64::MAX,
                    max_ms: i64::MIN,
                });
            }
            Event::ClusterChild(element) => self.on_cluster_child(element, out)?,
            Event::ClusterEnd { .. } => {
                if let Some(fragment) = self.current.take() {
                    let Some(timecode) = fragment.timecode else {
                        return Err(invalid("a Cluster without a Timecode".to_owned()));
                    };
                    self.last_timecode = timecode;
                    if fragment.max_ms != i64::MIN {
                        self.previous_max_ms = Some(fragment.max_ms);
                    }
                    let duration_ms = match (fragment.first_ms, fragment.last_ms) {
                        (Some(_), Some(_)) => fragment.max_ms - fragment.min_ms,
                        _ => 0,
                    };
                    out.push(IngestEvent::Completed {
                        duration_ms,
                        frames: fragment.frames,
                        size: fragment.size,
                    });
                }
            }
        }
        Ok(())
    }

    fn on_cluster_child(
        &mut self,
        element: kvs_mkv::Element,
        out: &mut Vec<IngestEvent>,
    ) -> Result<(), (AckError, String)> {
        let invalid = |reason: String| (AckError::INVALID_MKV_DATA, reason);
        let scale = self.header.timecode_scale;
        let limits = self.limits;
        let previous_max_ms = self.previous_max_ms;
        let Some(fragment) = self.current.as_mut() else {
            return Err(invalid("a Cluster child outside a Cluster".to_owned()));
        };
        fragment.size += element.len() as u64;
        if fragment.size > limits.max_fragment_bytes {
            return Err((
                AckError::MAX_FRAGMENT_SIZE_REACHED,
                format!("fragment larger than {} bytes", limits.max_fragment_bytes),
            ));
        }
        match element.id {
            id::TIMECODE => {
                if fragment.timecode.is_some() {
                    return Err(invalid("two Timecodes in one Cluster".to_owned()));
                }
                let timecode = read_uint(&element.data()).map_err(|e| invalid(e.to_string()))?;
                fragment.timecode = Some(timecode);
                let cluster_ms = units_to_ms(i128::from(timecode), scale);
                let producer_ms = match self.timecode_type {
                    TimecodeType::Absolute => cluster_ms,
                    TimecodeType::Relative => self.producer_start_ms.saturating_add(cluster_ms),
                };
                fragment.pending.push(element.to_bytes());
                out.push(IngestEvent::Started {
                    timecode,
                    producer_ms,
                    tags: std::mem::take(&mut self.pending_tags)
                        .into_iter()
                        .map(|(bytes, _)| bytes)
                        .collect(),
                    data: std::mem::take(&mut fragment.pending),
                });
                return Ok(());
            }
            id::SIMPLE_BLOCK | id::BLOCK_GROUP => {
                let Some(timecode) = fragment.timecode else {
                    return Err(invalid("a block before the Cluster's Timecode".to_owned()));
                };
                let info = element.block().map_err(|e| invalid(e.to_string()))?;
                if !self.header.tracks.iter().any(|t| t.number == info.track) {
                    return Err((
                        AckError::TRACK_NUMBER_MISMATCH,
                        format!(
                            "block for track {} which Tracks does not declare",
                            info.track
                        ),
                    ));
                }
                let frame_ms = units_to_ms(
                    i128::from(timecode) + i128::from(info.relative_timecode),
                    scale,
                );
                if previous_max_ms.is_some_and(|previous| frame_ms <= previous) {
                    return Err((
                        AckError::FRAGMENT_TIMECODE_LESSER_THAN_PREVIOUS,
                        format!(
                            "frame at {frame_ms} ms is not later than the previous fragment's last frame ({} ms)",
                            previous_max_ms.unwrap_or_default()
                        ),
                    ));
                }
                fragment.first_ms.get_or_insert(frame_ms);
                fragment.last_ms = Some(frame_ms);
                fragment.min_ms = fragment.min_ms.min(frame_ms);
                fragment.max_ms = fragment.max_ms.max(frame_ms);
                if fragment.max_ms - fragment.min_ms > limits.max_fragment_duration_ms {
                    return Err((
                        AckError::MAX_FRAGMENT_DURATION_REACHED,
                        format!(
                            "fragment longer than {} ms",
                            limits.max_fragment_duration_ms
                        ),
                    ));
                }
                *fragment.frames.entry(info.track).or_default() += 1;
                let producer_ms = match self.timecode_type {
                    TimecodeType::Absolute => frame_ms,
                    TimecodeType::Relative => self.producer_start_ms.saturating_add(frame_ms),
                };
                out.push(IngestEvent::Frame {
                    track: info.track,
                    producer_ms,
                });
            }
            _ => {}
        }
        if fragment.timecode.is_some() {
            out.push(IngestEvent::Data(element.to_bytes()));
        } else {
            fragment.pending.push(element.to_bytes());
        }
        Ok(())
    }
}

/// Converts timecode units to ms since the epoch (or since the stream start, for relative timecodes).
fn units_to_ms(units: i128, scale_ns: u64) -> i64 {
    let ms = units * i128::from(scale_ns) / 1_000_000;
    ms.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Offset of a whole element's data (skips its ID and size).
    fn tag_data_offset(element: &[u8]) -> usize {
        let id_len = kvs_mkv::ebml::read_id(element).unwrap().unwrap().1;
        id_len
            + kvs_mkv::ebml::read_size(&element[id_len..])
                .unwrap()
                .unwrap()
                .1
    }
    use kvs_mkv::ebml::{
        UNKNOWN_SIZE_8, write_binary, write_id, write_master, write_uint, write_uint_fixed,
    };
    use kvs_mkv::tags::{SimpleTag, write_tags};

    /// A PutMedia body the way the C++ producer writes it.
    struct Body(Vec<u8>);

    impl Body {
        fn new(tracks: u64) -> Body {
            let mut out = Vec::new();
            let mut ebml = Vec::new();
            write_binary(&mut ebml, id::DOC_TYPE, b"matroska");
            write_master(&mut out, id::EBML, &ebml, 1);
            write_id(&mut out, id::SEGMENT);
            out.push(0xFF);
            let mut info = Vec::new();
            write_uint(&mut info, id::TIMECODE_SCALE, 1_000_000);
            write_master(&mut out, id::INFO, &info, 1);
            let mut entries = Vec::new();
            for number in 1..=tracks {
                let mut entry = Vec::new();
                write_uint(&mut entry, id::TRACK_NUMBER, number);
                write_uint(&mut entry, id::TRACK_TYPE, if number == 1 { 1 } else { 2 });
                write_binary(
                    &mut entry,
                    id::CODEC_ID,
                    if number == 1 {
                        b"V_MPEG4/ISO/AVC"
                    } else {
                        b"A_AAC"
                    },
                );
                write_master(&mut entries, id::TRACK_ENTRY, &entry, 1);
            }
            write_master(&mut out, id::TRACKS, &entries, 4);
            Body(out)
        }

        fn cluster(mut self, timecode: u64, frames: &[(u64, i16)]) -> Body {
            write_id(&mut self.0, id::CLUSTER);
            self.0.push(0xFF);
            write_uint_fixed(&mut self.0, id::TIMECODE, timecode, 8);
            for (i, (track, relative)) in frames.iter().enumerate() {
                let mut block = vec![0x80 | *track as u8];
                block.extend_from_slice(&relative.to_be_bytes());
                block.push(if i == 0 { 0x80 } else { 0 });
                block.extend_from_slice(&[0xAB; 100]);
                write_binary(&mut self.0, id::SIMPLE_BLOCK, &block);
            }
            self
        }

        fn tags(mut self, tags: &[(&str, &str)]) -> Body {
            let tags: Vec<SimpleTag> = tags.iter().map(|(n, v)| SimpleTag::new(*n, *v)).collect();
            write_tags(&mut self.0, &tags, 8);
            self
        }

        fn end_of_fragment(self) -> Body {
            self.tags(&[(tags::END_OF_FRAGMENT, "")])
        }
    }

    fn run(body: &[u8], piece: usize) -> Vec<IngestEvent> {
        let mut ingest = Ingest::new(TimecodeType::Absolute, 0, Limits::default());
        let mut events = Vec::new();
        for chunk in body.chunks(piece) {
            events.extend(ingest.push(chunk));
        }
        events.extend(ingest.finish());
        events
    }

    fn summary(events: &[IngestEvent]) -> Vec<String> {
        events
            .iter()
            .filter_map(|e| match e {
                IngestEvent::Started { timecode, .. } => Some(format!("start {timecode}")),
                IngestEvent::Data(_) | IngestEvent::Frame { .. } => None,
                IngestEvent::Completed { frames, .. } => Some(format!("done {frames:?}")),
                IngestEvent::Failed {
                    error, timecode, ..
                } => Some(format!("error {} at {timecode}", error.id)),
            })
            .collect()
    }

    fn failure(body: &[u8]) -> (u32, String) {
        run(body, 1000)
            .into_iter()
            .find_map(|e| match e {
                IngestEvent::Failed { error, reason, .. } => Some((error.id, reason)),
                _ => None,
            })
            .expect("a Failed event")
    }

    const T0: u64 = 1_795_312_662_560;

    #[test]
    fn fragments_start_at_timecode_and_complete_at_next_cluster_and_end_of_fragment_tag() {
        let body = Body::new(1)
            .cluster(T0, &[(1, 0), (1, 33), (1, 67)])
            .cluster(T0 + 100, &[(1, 0), (1, 33)])
            .end_of_fragment()
            .0;
        for piece in [1, 5, 4096] {
            let mut ingest = Ingest::new(TimecodeType::Absolute, 0, Limits::default());
            let mut events = Vec::new();
            for chunk in body.chunks(piece) {
                events.extend(ingest.push(chunk));
            }
            // The end-of-fragment tag completes the last fragment before the body ends.
            assert_eq!(
                summary(&events),
                [
                    format!("start {T0}"),
                    "done {1: 3}".into(),
                    format!("start {}", T0 + 100),
                    "done {1: 2}".into()
                ],
                "piece {piece}"
            );
            assert!(ingest.finish().is_empty());
        }
    }

    #[test]
    fn fragment_bytes_are_the_cluster_as_sent() {
        let body = Body::new(1)
            .cluster(T0, &[(1, 0), (1, 33)])
            .end_of_fragment()
            .0;
        let events = run(&body, 7);
        let mut cluster = Vec::new();
        for event in &events {
            match event {
                IngestEvent::Started {
                    data, producer_ms, ..
                } => {
                    assert_eq!(*producer_ms, T0 as i64);
                    data.iter().for_each(|b| cluster.extend_from_slice(b));
                }
                IngestEvent::Data(bytes) => cluster.extend_from_slice(bytes),
                _ => {}
            }
        }
        let start = body
            .windows(4)
            .position(|w| w == [0x1F, 0x43, 0xB6, 0x75])
            .unwrap();
        let end = body
            .windows(4)
            .rposition(|w| w == [0x12, 0x54, 0xC3, 0x67])
            .unwrap();
        assert_eq!(cluster, &body[start..end]);
    }

    #[test]
    fn relative_timecodes_add_the_producer_start() {
        let body = Body::new(1).cluster(2000, &[(1, 0)]).0;
        let mut ingest = Ingest::new(TimecodeType::Relative, 1_511_852_108_513, Limits::default());
        let events = ingest.push(&body);
        let IngestEvent::Started {
            producer_ms,
            timecode,
            ..
        } = &events[0]
        else {
            panic!("{events:?}")
        };
        assert_eq!((*timecode, *producer_ms), (2000, 1_511_852_110_513));
    }

    #[test]
    fn tags_before_a_cluster_belong_to_it() {
        let body = Body::new(1)
            .tags(&[("first", "1")])
            .cluster(T0, &[(1, 0)])
            .tags(&[("second", "2")])
            .cluster(T0 + 40, &[(1, 0)])
            .0;
        let started: Vec<Vec<Bytes>> = run(&body, 64)
            .into_iter()
            .filter_map(|e| match e {
                IngestEvent::Started { tags, .. } => Some(tags),
                _ => None,
            })
            .collect();
        let names = |tags: &Vec<Bytes>| -> Vec<String> {
            tags.iter()
                .flat_map(|t| tags::parse_tags(&t[tag_data_offset(t)..]).unwrap())
                .map(|t| t.name)
                .collect()
        };
        assert_eq!(names(&started[0]), ["first"]);
        assert_eq!(names(&started[1]), ["second"]);
    }

    #[test]
    fn not_matroska_is_invalid_mkv_data() {
        let (id, reason) = failure(b"\x00\x00\x00\x1cftypisom\x00\x00\x02\x00isomiso2");
        assert_eq!(id, 4006);
        assert!(reason.contains("EBML"), "{reason}");
    }

    #[test]
    fn truncated_body_is_invalid_mkv_data() {
        let body = Body::new(1).cluster(T0, &[(1, 0)]).0;
        assert_eq!(failure(&body[..body.len() - 3]).0, 4006);
    }

    #[test]
    fn timecodes_going_backwards_within_a_connection() {
        let body = Body::new(1)
            .cluster(T0, &[(1, 0), (1, 33)])
            .cluster(T0 + 33, &[(1, 0)])
            .0;
        let (id, reason) = failure(&body);
        assert_eq!(id, 4004, "{reason}");
        let events = run(&body, 1000);
        assert!(
            matches!(events.last(), Some(IngestEvent::Failed { timecode, .. }) if *timecode == T0 + 33)
        );
    }

    #[test]
    fn fragment_longer_than_the_duration_limit() {
        let body = Body::new(1)
            .cluster(T0, &[(1, 0), (1, 5000), (1, 10_001)])
            .0;
        assert_eq!(failure(&body).0, 4002);
    }

    #[test]
    fn fragment_larger_than_the_size_limit() {
        let mut ingest = Ingest::new(
            TimecodeType::Absolute,
            0,
            Limits {
                max_fragment_bytes: 1000,
                ..Limits::default()
            },
        );
        let body = Body::new(1).cluster(T0, &[(1, 0); 12]).0;
        let events = ingest.push(&body);
        assert!(
            matches!(events.last(), Some(IngestEvent::Failed { error, .. }) if error.id == 4001),
            "{:?}",
            summary(&events)
        );
    }

    #[test]
    fn a_fragment_of_exactly_50_000_000_bytes_is_taken_and_one_byte_more_is_not() {
        // The whole Cluster as sent: its ID and unknown size (5 bytes), its Timecode (10 bytes) and five blocks of
        // 9 + 9,999,988 bytes (ID, 4-byte size, block header, frame).
        let edge = |extra: usize| {
            let mut body = Body::new(1).0;
            write_id(&mut body, id::CLUSTER);
            body.push(0xFF);
            write_uint_fixed(&mut body, id::TIMECODE, T0, 8);
            for i in 0..5u8 {
                let mut block = vec![0x81, 0, i, if i == 0 { 0x80 } else { 0 }];
                block.resize(4 + 9_999_988 + if i == 4 { extra } else { 0 }, 0x42);
                write_binary(&mut body, id::SIMPLE_BLOCK, &block);
            }
            let body = Body(body).end_of_fragment().0;
            let mut ingest = Ingest::new(TimecodeType::Absolute, 0, Limits::default());
            let mut events = ingest.push(&body);
            events.extend(ingest.finish());
            events
                .into_iter()
                .filter_map(|e| match e {
                    IngestEvent::Completed { size, .. } => Some(Ok(size)),
                    IngestEvent::Failed { error, reason, .. } => Some(Err((error.id, reason))),
                    _ => None,
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(edge(0), [Ok(50_000_000)]);
        assert_eq!(
            edge(1),
            [Err((
                4001,
                "fragment larger than 50000000 bytes".to_owned()
            ))]
        );
    }

    #[test]
    fn undeclared_track_and_too_many_tracks() {
        let body = Body::new(1).cluster(T0, &[(1, 0), (2, 10)]).0;
        assert_eq!(failure(&body).0, 4010);
        let body = Body::new(4).cluster(T0, &[(1, 0)]).0;
        assert_eq!(failure(&body).0, 4012);
        let body = Body::new(3)
            .cluster(T0, &[(1, 0), (2, 0), (3, 0)])
            .end_of_fragment()
            .0;
        assert_eq!(
            summary(&run(&body, 100)),
            [format!("start {T0}"), "done {1: 1, 2: 1, 3: 1}".into()]
        );
    }

    #[test]
    fn a_second_header_in_one_body_is_invalid() {
        let mut body = Body::new(1).cluster(T0, &[(1, 0)]).0;
        body.extend_from_slice(&Body::new(1).cluster(T0 + 100, &[(1, 0)]).0);
        let (id, reason) = failure(&body);
        assert_eq!(id, 4006);
        assert!(
            reason.contains("unexpected") || reason.contains("second"),
            "{reason}"
        );
    }

    #[test]
    fn too_many_metadata_tags() {
        let many: Vec<(String, String)> =
            (0..11).map(|i| (format!("k{i}"), "v".to_owned())).collect();
        let many: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let body = Body::new(1)
            .cluster(T0, &[(1, 0)])
            .tags(&many)
            .cluster(T0 + 40, &[(1, 0)])
            .0;
        assert_eq!(failure(&body).0, 4009);
    }

    #[test]
    fn event_tags_are_kept_with_their_fragment_and_count_towards_the_limit() {
        let event = [
            ("AWS_KINESISVIDEO_NOTIFICATION", ""),
            ("AWS_KINESISVIDEO_IMAGE_GENERATION", ""),
            ("AWS_KINESISVIDEO_IMAGE_PREFIX", "cam1/"),
        ];
        let body = Body::new(1)
            .cluster(T0, &[(1, 0)])
            .tags(&event)
            .cluster(T0 + 40, &[(1, 0)])
            .end_of_fragment()
            .0;
        let started: Vec<Vec<String>> = run(&body, 64)
            .into_iter()
            .filter_map(|e| match e {
                IngestEvent::Started { tags, .. } => Some(
                    tags.iter()
                        .flat_map(|t| tags::parse_tags(&t[tag_data_offset(t)..]).unwrap())
                        .map(|t| t.name)
                        .collect(),
                ),
                _ => None,
            })
            .collect();
        assert_eq!(
            started,
            [
                vec![],
                event.iter().map(|(n, _)| n.to_string()).collect::<Vec<_>>()
            ]
        );
        // Three event tags and eight of the application's: eleven, one too many (4009), right after the
        // header as much as between clusters.
        let user: Vec<(String, String)> =
            (0..8).map(|i| (format!("k{i}"), "v".to_owned())).collect();
        let user: Vec<(&str, &str)> = user.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let between = Body::new(1)
            .cluster(T0, &[(1, 0)])
            .tags(&event)
            .tags(&user)
            .cluster(T0 + 40, &[(1, 0)])
            .0;
        assert_eq!(
            failure(&between),
            (
                4009,
                "11 metadata tags for one fragment (at most 10)".to_owned()
            )
        );
        let first = Body::new(1)
            .tags(&event)
            .tags(&user)
            .cluster(T0, &[(1, 0)])
            .0;
        assert_eq!(failure(&first).0, 4009);
        // An image prefix longer than 256 bytes.
        let prefix = "p".repeat(257);
        let long = Body::new(1)
            .tags(&[("AWS_KINESISVIDEO_IMAGE_PREFIX", &prefix)])
            .cluster(T0, &[(1, 0)])
            .0;
        assert_eq!(failure(&long).0, 4009);
    }

    #[test]
    fn cpp_producer_body_is_accepted() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures/putmedia-cpp/01-basic-10s/putmedia-1.body.first2MiB.mkv");
        let body = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let mut ingest = Ingest::new(TimecodeType::Absolute, 0, Limits::default());
        let events: Vec<_> = body.chunks(8192).flat_map(|c| ingest.push(c)).collect();
        let completed = events
            .iter()
            .filter(|e| matches!(e, IngestEvent::Completed { .. }))
            .count();
        assert!(completed >= 5, "{:?}", summary(&events));
        assert!(
            !events
                .iter()
                .any(|e| matches!(e, IngestEvent::Failed { .. })),
            "{:?}",
            summary(&events)
        );
        assert_eq!(ingest.header().tracks[0].codec_id, "V_MPEG4/ISO/AVC");
        let _ = UNKNOWN_SIZE_8;
    }
}
