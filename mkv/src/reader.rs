// SPDX-License-Identifier: MPL-2.0

//! A push-style streaming Matroska reader: feed it bytes as they arrive, in pieces of any size, and take
//! out events for the structure KVS cares about.
//!
//! It descends into the Segment and into Clusters (known or unknown size) and hands out every other
//! element whole: the EBML header, each level-1 element (SeekHead, Info, Tracks, Tags, Cues...), and each
//! Cluster child (Timecode, SimpleBlock, BlockGroup...). An unknown-size Cluster ends where an element that
//! cannot be its child begins (the next Cluster, a Tags, any level-1 element, a new EBML header), and an
//! unknown-size Segment ends at the next EBML header; this is how PutMedia bodies and GetMedia responses
//! are delimited.
//!
//! Input given as [`Bytes`] is not copied: an element's bytes are a [`Rope`] of slices of the input pieces
//! it spans (a frame from a GStreamer buffer or an HTTP response goes on in the memory it came in).
//!
//! Written by hand because the Matroska crates on crates.io parse whole files or need `Read + Seek`; KVS
//! needs incremental parsing of an endless body with unknown sizes, with every byte accounted for.

use bytes::Bytes;

use crate::Error;
use crate::block::{self, BlockInfo};
use crate::ebml::{id, read_id, read_size};
use crate::rope::{PieceQueue, Rope};

/// One complete element, with its ID and size bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Element {
    pub id: u32,
    /// Offset of the element's first byte in the stream fed to the reader.
    pub offset: u64,
    /// Length of the ID and size fields.
    pub header_len: usize,
    /// The whole element: ID, size and data, in the input's pieces.
    pub bytes: Rope,
}

impl Element {
    /// The element's data (after the ID and size), contiguous: a copy when the element spans input pieces.
    /// For small elements; frames are better read through [`bytes`](Self::bytes) and [`block`](Self::block).
    pub fn data(&self) -> Bytes {
        self.bytes.to_bytes().slice(self.header_len..)
    }

    /// The whole element (ID, size and data), contiguous: a copy when it spans input pieces.
    pub fn to_bytes(&self) -> Bytes {
        self.bytes.to_bytes()
    }

    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The header of a SimpleBlock or BlockGroup (track, relative timecode, key frame), read without copying
    /// the frame of a SimpleBlock.
    pub fn block(&self) -> Result<BlockInfo, Error> {
        match self.id {
            id::SIMPLE_BLOCK => {
                // ID and size (at most 12 bytes), track number (at most 8), timecode and flags (3).
                let mut head = [0u8; 24];
                let n = self.bytes.copy_prefix(&mut head);
                block::parse_simple_block(&head[self.header_len.min(n)..n])
            }
            id::BLOCK_GROUP => block::parse_block_group(&self.data()),
            _ => Err(Error::InvalidValue("not a SimpleBlock or BlockGroup")),
        }
    }
}

/// What the reader found, in stream order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A whole EBML header element; a new Matroska document begins.
    EbmlHeader(Element),
    /// A Segment begins. `header` holds its ID and size bytes; `size` is `None` when unknown.
    SegmentStart {
        offset: u64,
        header: Bytes,
        size: Option<u64>,
    },
    /// A whole level-1 element other than a Cluster (SeekHead, Info, Tracks, Tags, Cues, Void...).
    Element(Element),
    /// A Cluster begins. `header` holds its ID and size bytes; `size` is `None` when unknown.
    ClusterStart {
        offset: u64,
        header: Bytes,
        size: Option<u64>,
    },
    /// A whole child of the current Cluster (Timecode, SimpleBlock, BlockGroup, Position, PrevSize...).
    ClusterChild(Element),
    /// The current Cluster ended (its known size was reached, or an element that is not its child began).
    ClusterEnd { end_offset: u64 },
    /// The current Segment ended.
    SegmentEnd { end_offset: u64 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Level {
    Segment,
    Cluster,
}

#[derive(Debug, Clone, Copy)]
struct Open {
    level: Level,
    /// Absolute end offset for known sizes.
    end: Option<u64>,
}

/// Elements larger than this (other than the Segment and Clusters, which are not buffered) are refused.
pub const DEFAULT_MAX_ELEMENT_SIZE: usize = 64 * 1024 * 1024;

/// The streaming reader. See the module documentation.
#[derive(Debug)]
pub struct MkvReader {
    buf: PieceQueue,
    /// Stream offset of `buf[0]`.
    offset: u64,
    stack: Vec<Open>,
    seen_header: bool,
    max_element_size: usize,
    failed: Option<Error>,
}

impl Default for MkvReader {
    fn default() -> Self {
        Self::new()
    }
}

/// True for IDs that may appear directly inside a Segment (and so end an unknown-size Cluster).
fn is_level1(id: u32) -> bool {
    matches!(
        id,
        id::SEEK_HEAD
            | id::INFO
            | id::TRACKS
            | id::CLUSTER
            | id::CUES
            | id::TAGS
            | id::CHAPTERS
            | id::ATTACHMENTS
    )
}

impl MkvReader {
    pub fn new() -> Self {
        Self::with_max_element_size(DEFAULT_MAX_ELEMENT_SIZE)
    }

    pub fn with_max_element_size(max_element_size: usize) -> Self {
        Self {
            buf: PieceQueue::default(),
            offset: 0,
            stack: Vec::new(),
            seen_header: false,
            max_element_size,
            failed: None,
        }
    }

    /// Appends bytes to the input (a copy of them).
    pub fn push(&mut self, data: &[u8]) {
        self.buf.push(Bytes::copy_from_slice(data));
    }

    /// Appends bytes to the input without copying them: elements are handed out as slices of them.
    pub fn push_bytes(&mut self, data: Bytes) {
        self.buf.push(data);
    }

    /// Stream offset of the first byte not yet consumed by an event.
    pub fn position(&self) -> u64 {
        self.offset
    }

    /// Bytes received but not yet handed out in an event.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// True while a Cluster is open.
    pub fn in_cluster(&self) -> bool {
        self.stack
            .last()
            .is_some_and(|open| open.level == Level::Cluster)
    }

    /// The next event, `Ok(None)` when more input is needed. After an error, every call returns that error.
    pub fn next_event(&mut self) -> Result<Option<Event>, Error> {
        if let Some(err) = &self.failed {
            return Err(err.clone());
        }
        let result = self.next_event_inner();
        if let Err(err) = &result {
            self.failed = Some(err.clone());
        }
        result
    }

    /// Declares the end of the input: closes open unknown-size elements and returns their end events.
    /// Fails when the input stops inside an element.
    pub fn finish(&mut self) -> Result<Vec<Event>, Error> {
        let mut events = Vec::new();
        while let Some(event) = self.next_event()? {
            events.push(event);
        }
        if !self.buf.is_empty() {
            let err = Error::Truncated;
            self.failed = Some(err.clone());
            return Err(err);
        }
        while let Some(open) = self.stack.pop() {
            if open.end.is_some() {
                let err = Error::Truncated;
                self.failed = Some(err.clone());
                return Err(err);
            }
            events.push(self.end_event(open.level));
        }
        Ok(events)
    }

    fn end_event(&self, level: Level) -> Event {
        match level {
            Level::Segment => Event::SegmentEnd {
                end_offset: self.offset,
            },
            Level::Cluster => Event::ClusterEnd {
                end_offset: self.offset,
            },
        }
    }

    fn next_event_inner(&mut self) -> Result<Option<Event>, Error> {
        // Known-size masters end exactly at their end offset.
        if let Some(open) = self.stack.last().copied()
            && open.end == Some(self.offset)
        {
            self.stack.pop();
            return Ok(Some(self.end_event(open.level)));
        }
        // The ID (at most 4 bytes) and size (at most 8) of the next element.
        let mut head = [0u8; 12];
        let head_len = self.buf.peek(&mut head);
        let head = &head[..head_len];
        let Some((element_id, id_len)) = read_id(head).map_err(|e| self.at(e))? else {
            return Ok(None);
        };
        if !self.seen_header && element_id != id::EBML {
            return Err(Error::NotMatroska {
                first_id: element_id,
            });
        }
        // An unknown-size master ends where an element that cannot be its child begins.
        if let Some(open) = self.stack.last().copied()
            && open.end.is_none()
        {
            let ends = match open.level {
                Level::Cluster => {
                    is_level1(element_id) || element_id == id::EBML || element_id == id::SEGMENT
                }
                Level::Segment => element_id == id::EBML || element_id == id::SEGMENT,
            };
            if ends {
                self.stack.pop();
                return Ok(Some(self.end_event(open.level)));
            }
        }
        let Some((size, size_len)) = read_size(&head[id_len..]).map_err(|e| self.at(e))? else {
            return Ok(None);
        };
        let header_len = id_len + size_len;
        let offset = self.offset;
        let parent_end = self.stack.last().and_then(|open| open.end);
        let end = match size {
            Some(size) => {
                let end = offset
                    .checked_add(header_len as u64)
                    .and_then(|v| v.checked_add(size))
                    .ok_or(Error::ElementTooLarge {
                        id: element_id,
                        size,
                        offset,
                    })?;
                if parent_end.is_some_and(|parent_end| end > parent_end) {
                    return Err(Error::ElementOverflowsParent {
                        id: element_id,
                        offset,
                    });
                }
                Some(end)
            }
            None => None,
        };

        let context = self.stack.last().map(|open| open.level);
        let descend = match (context, element_id) {
            (None, id::SEGMENT) => Some(Level::Segment),
            (Some(Level::Segment), id::CLUSTER) => Some(Level::Cluster),
            _ => None,
        };
        if let Some(level) = descend {
            let header = self.buf.take(header_len).to_bytes();
            self.offset += header_len as u64;
            self.stack.push(Open { level, end });
            return Ok(Some(match level {
                Level::Segment => Event::SegmentStart {
                    offset,
                    header,
                    size,
                },
                Level::Cluster => Event::ClusterStart {
                    offset,
                    header,
                    size,
                },
            }));
        }

        match (context, element_id) {
            (None, id::EBML) => {}
            (None, _) => {
                return Err(Error::UnexpectedElement {
                    id: element_id,
                    offset,
                });
            }
            (Some(_), id::EBML | id::SEGMENT) => {
                return Err(Error::UnexpectedElement {
                    id: element_id,
                    offset,
                });
            }
            _ => {}
        }
        let Some(size) = size else {
            return Err(Error::UnexpectedUnknownSize { id: element_id });
        };
        if size > self.max_element_size as u64 {
            return Err(Error::ElementTooLarge {
                id: element_id,
                size,
                offset,
            });
        }
        let total = header_len + size as usize;
        if self.buf.len() < total {
            return Ok(None);
        }
        let element = Element {
            id: element_id,
            offset,
            header_len,
            bytes: self.buf.take(total),
        };
        self.offset += total as u64;
        Ok(Some(match context {
            None => {
                self.seen_header = true;
                Event::EbmlHeader(element)
            }
            Some(Level::Segment) => Event::Element(element),
            Some(Level::Cluster) => Event::ClusterChild(element),
        }))
    }

    fn at(&self, err: Error) -> Error {
        match err {
            Error::InvalidId { .. } | Error::InvalidSize => Error::Corrupt {
                offset: self.offset,
                cause: Box::new(err),
            },
            other => other,
        }
    }
}

/// Reads a whole, complete stream: every event, or the first error.
pub fn read_all(data: &[u8]) -> Result<Vec<Event>, Error> {
    let mut reader = MkvReader::new();
    reader.push(data);
    let mut events = Vec::new();
    while let Some(event) = reader.next_event()? {
        events.push(event);
    }
    events.extend(reader.finish()?);
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ebml::{UNKNOWN_SIZE_8, write_binary, write_id, write_master, write_uint};

    fn ebml_header() -> Vec<u8> {
        let mut body = Vec::new();
        write_binary(&mut body, id::DOC_TYPE, b"matroska");
        let mut out = Vec::new();
        write_master(&mut out, id::EBML, &body, 1);
        out
    }

    fn live_stream(clusters: &[(u64, &[u8])]) -> Vec<u8> {
        let mut out = ebml_header();
        write_id(&mut out, id::SEGMENT);
        out.extend_from_slice(&UNKNOWN_SIZE_8);
        let mut info = Vec::new();
        write_uint(&mut info, id::TIMECODE_SCALE, 1_000_000);
        write_master(&mut out, id::INFO, &info, 1);
        for (timecode, frame) in clusters {
            write_id(&mut out, id::CLUSTER);
            out.extend_from_slice(&UNKNOWN_SIZE_8);
            write_uint(&mut out, id::TIMECODE, *timecode);
            let mut block = vec![0x81, 0, 0, 0x80];
            block.extend_from_slice(frame);
            write_binary(&mut out, id::SIMPLE_BLOCK, &block);
        }
        out
    }

    fn all_events(reader: &mut MkvReader) -> Vec<Event> {
        let mut events = Vec::new();
        while let Some(event) = reader.next_event().unwrap() {
            events.push(event);
        }
        events
    }

    /// Reads until the reader fails; panics if it only wants more input.
    fn first_error(reader: &mut MkvReader) -> Error {
        loop {
            match reader.next_event() {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("wanted an error"),
                Err(err) => return err,
            }
        }
    }

    fn kinds(events: &[Event]) -> Vec<String> {
        events
            .iter()
            .map(|e| match e {
                Event::EbmlHeader(_) => "ebml".to_owned(),
                Event::SegmentStart { size, .. } => format!("segment({size:?})"),
                Event::Element(el) => format!("el({:x})", el.id),
                Event::ClusterStart { size, .. } => format!("cluster({size:?})"),
                Event::ClusterChild(el) => format!("child({:x})", el.id),
                Event::ClusterEnd { .. } => "/cluster".to_owned(),
                Event::SegmentEnd { .. } => "/segment".to_owned(),
            })
            .collect()
    }

    #[test]
    fn unknown_size_clusters_end_at_the_next_cluster_and_at_finish() {
        let stream = live_stream(&[(0, b"one"), (1000, b"two")]);
        let mut reader = MkvReader::new();
        reader.push(&stream);
        let mut events = all_events(&mut reader);
        events.extend(reader.finish().unwrap());
        assert_eq!(
            kinds(&events),
            [
                "ebml",
                "segment(None)",
                "el(1549a966)",
                "cluster(None)",
                "child(e7)",
                "child(a3)",
                "/cluster",
                "cluster(None)",
                "child(e7)",
                "child(a3)",
                "/cluster",
                "/segment"
            ]
        );
        assert_eq!(reader.position(), stream.len() as u64);
    }

    #[test]
    fn byte_by_byte_feeding_gives_the_same_events() {
        let stream = live_stream(&[(0, b"one"), (1000, b"two"), (2000, b"three")]);
        let mut whole = MkvReader::new();
        whole.push(&stream);
        let expected = all_events(&mut whole);
        let mut reader = MkvReader::new();
        let mut events = Vec::new();
        for byte in &stream {
            reader.push(std::slice::from_ref(byte));
            events.extend(all_events(&mut reader));
        }
        assert_eq!(events, expected);
    }

    #[test]
    fn known_size_segment_and_cluster() {
        let mut cluster = Vec::new();
        write_uint(&mut cluster, id::TIMECODE, 5);
        write_binary(&mut cluster, id::SIMPLE_BLOCK, &[0x81, 0, 0, 0x80, 1, 2, 3]);
        let mut segment = Vec::new();
        write_master(&mut segment, id::CLUSTER, &cluster, 4);
        let mut stream = ebml_header();
        write_master(&mut stream, id::SEGMENT, &segment, 8);
        stream.extend_from_slice(&ebml_header());
        let mut reader = MkvReader::new();
        reader.push(&stream);
        let events = all_events(&mut reader);
        assert_eq!(
            kinds(&events),
            [
                "ebml",
                "segment(Some(20))",
                "cluster(Some(12))",
                "child(e7)",
                "child(a3)",
                "/cluster",
                "/segment",
                "ebml"
            ]
        );
    }

    #[test]
    fn tags_and_a_new_document_end_an_unknown_size_cluster() {
        let mut stream = live_stream(&[(0, b"one")]);
        let mut tags = Vec::new();
        write_master(&mut tags, id::TAGS, &[], 1);
        stream.extend_from_slice(&tags);
        stream.extend_from_slice(&live_stream(&[(7, b"x")]));
        let mut reader = MkvReader::new();
        reader.push(&stream);
        let events = all_events(&mut reader);
        let kinds = kinds(&events);
        assert_eq!(
            kinds[6..10],
            ["/cluster", "el(1254c367)", "/segment", "ebml"]
        );
    }

    #[test]
    fn not_matroska_is_refused_at_the_first_element() {
        let mut reader = MkvReader::new();
        reader.push(b"\x00\x00\x00\x18ftypmp42");
        assert!(matches!(
            reader.next_event(),
            Err(Error::Corrupt { offset: 0, .. })
        ));
        let mut reader = MkvReader::new();
        reader.push(&[0x1F, 0x43, 0xB6, 0x75, 0x80]);
        assert_eq!(
            reader.next_event(),
            Err(Error::NotMatroska {
                first_id: id::CLUSTER
            })
        );
        // The error sticks.
        assert_eq!(
            reader.next_event(),
            Err(Error::NotMatroska {
                first_id: id::CLUSTER
            })
        );
    }

    #[test]
    fn truncated_input_is_reported_by_finish() {
        let stream = live_stream(&[(0, b"one")]);
        let mut reader = MkvReader::new();
        reader.push(&stream[..stream.len() - 2]);
        all_events(&mut reader);
        assert_eq!(reader.finish(), Err(Error::Truncated));
    }

    #[test]
    fn oversized_elements_are_refused_before_buffering() {
        let mut stream = live_stream(&[]);
        write_id(&mut stream, id::CLUSTER);
        stream.extend_from_slice(&UNKNOWN_SIZE_8);
        write_id(&mut stream, id::SIMPLE_BLOCK);
        stream.extend_from_slice(&[0x01, 0, 0, 0, 0x10, 0, 0, 0]);
        let mut reader = MkvReader::with_max_element_size(1 << 20);
        reader.push(&stream);
        let err = first_error(&mut reader);
        assert!(
            matches!(
                err,
                Error::ElementTooLarge {
                    id: id::SIMPLE_BLOCK,
                    size: 0x1000_0000,
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn child_larger_than_its_known_size_parent_is_corrupt() {
        let mut cluster = Vec::new();
        write_uint(&mut cluster, id::TIMECODE, 5);
        let mut stream = ebml_header();
        write_id(&mut stream, id::SEGMENT);
        stream.extend_from_slice(&UNKNOWN_SIZE_8);
        write_id(&mut stream, id::CLUSTER);
        stream.push(0x82); // says 2 bytes, but the Timecode child is 3
        stream.extend_from_slice(&cluster);
        let mut reader = MkvReader::new();
        reader.push(&stream);
        let err = first_error(&mut reader);
        assert!(
            matches!(
                err,
                Error::ElementOverflowsParent {
                    id: id::TIMECODE,
                    ..
                }
            ),
            "{err:?}"
        );
    }

    mod prop {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn any_split_gives_the_same_events(
                frames in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 1..6),
                cuts in proptest::collection::vec(1usize..64, 1..40),
            ) {
                let clusters: Vec<(u64, &[u8])> =
                    frames.iter().enumerate().map(|(i, f)| (i as u64 * 1000, f.as_slice())).collect();
                let stream = live_stream(&clusters);
                let mut whole = MkvReader::new();
                whole.push(&stream);
                let mut expected = all_events(&mut whole);
                expected.extend(whole.finish().unwrap());

                let mut reader = MkvReader::new();
                let mut events = Vec::new();
                let mut rest = stream.as_slice();
                let mut cuts = cuts.iter().cycle();
                while !rest.is_empty() {
                    let n = (*cuts.next().unwrap()).min(rest.len());
                    reader.push(&rest[..n]);
                    rest = &rest[n..];
                    events.extend(all_events(&mut reader));
                }
                events.extend(reader.finish().unwrap());
                prop_assert_eq!(events, expected);
            }

            #[test]
            fn random_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..512)) {
                let mut reader = MkvReader::with_max_element_size(4096);
                reader.push(&data);
                while let Ok(Some(_)) = reader.next_event() {}
                let _ = reader.finish();
            }
        }
    }
}
