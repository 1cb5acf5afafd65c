//! Turns what GetMedia and GetMediaForFragmentList return (one complete Matroska document per fragment) into
//! what a player wants: one EBML header and Segment, the Tracks once, then the clusters, with a new Segment only
//! when the tracks really change. GStreamer-free; the element feeds it response bytes.
//!
//! - The AWS tags (`AWS_KINESISVIDEO_*`) and user tags become [`Output::Fragment`] / [`Output::Session`] /
//!   [`Output::Error`] events instead of bytes.
//! - A fragment seen before (same fragment number) or not later than the last one written (a producer re-sent
//!   it after a reconnection) is left out, so timestamps never go backwards and no frame comes twice.
//! - Clusters are written with an unknown size, child by child as they arrive, so a live fragment reaches the
//!   output with the latency of its frames, not of the whole fragment. When a session breaks inside a cluster,
//!   [`Merger::interrupted`] keeps what was written; the next session repeats that fragment from its start and
//!   only the children not yet written are passed on.
//! - `raw` mode passes the service's bytes through unchanged (the events are still produced).

use std::collections::VecDeque;

use bytes::Bytes;
use kvs_mkv::ebml::{UNKNOWN_SIZE_8, id, write_id};
use kvs_mkv::tags::{self, SimpleTag};
use kvs_mkv::{Error, Event, MkvReader};

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
    /// The cluster's start, in ns since the epoch (for ABSOLUTE producers).
    pub cluster_time_ns: u64,
    /// Tags that are not the service's.
    pub user_tags: Vec<SimpleTag>,
    /// Left out as a repeat of a fragment already written.
    pub skipped: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Bytes for the output, in order. `header` marks an EBML header + Segment start + Info + Tracks.
    Data { bytes: Bytes, header: bool },
    /// A fragment's cluster started (after its tags were read).
    Fragment(FragmentInfo),
    /// After a fragment: how far behind now the session is, and where to continue.
    Session { millis_behind_now: Option<u64>, continuation_token: Option<String> },
    /// An error chunk in the stream.
    Error { code: String, id: String },
}

/// The tag names the GetMediaForFragmentList reference gives (GetMedia's are in [`kvs_mkv::tags`]).
const SERVER_SIDE_TIMESTAMP: &str = "AWS_KINESISVIDEO_SERVER_SIDE_TIMESTAMP";
const PRODUCER_SIDE_TIMESTAMP: &str = "AWS_KINESISVIDEO_PRODUCER_SIDE_TIMESTAMP";
const EXCEPTION_ERROR_CODE: &str = "AWS_KINESISVIDEO_EXCEPTION_ERROR_CODE";
const EXCEPTION_MESSAGE: &str = "AWS_KINESISVIDEO_EXCEPTION_MESSAGE";

/// Fragment numbers remembered to recognise repeats.
const REMEMBERED: usize = 4096;

#[derive(Debug, Default)]
struct Document {
    ebml: Option<Bytes>,
    info: Option<Bytes>,
    tracks: Option<Bytes>,
    timecode_scale: u64,
    fragment: Option<FragmentInfo>,
    user_tags: Vec<SimpleTag>,
}

/// The cluster being passed through.
#[derive(Debug)]
struct OpenCluster {
    number: String,
    /// Children written so far.
    written: usize,
    /// Children of this cluster seen in the current session.
    seen: usize,
    /// Children to leave out (already written before an interruption).
    skip: usize,
    /// False when the whole cluster is left out.
    pass: bool,
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
    pending_children: Vec<Bytes>,
    /// An interrupted cluster, to be continued if the next session starts with the same fragment.
    interrupted: Option<OpenCluster>,
    last_time_ns: Option<u64>,
    seen: VecDeque<String>,
    pub fragments_written: u64,
    pub fragments_skipped: u64,
}

impl Merger {
    pub fn new(mode: Mode) -> Self {
        Merger {
            mode,
            reader: MkvReader::new(),
            doc: Document { timecode_scale: 1_000_000, ..Default::default() },
            out_header: None,
            cluster: None,
            pending_children: Vec::new(),
            interrupted: None,
            last_time_ns: None,
            seen: VecDeque::new(),
            fragments_written: 0,
            fragments_skipped: 0,
        }
    }

    /// The response broke off: what follows comes from a new response.
    pub fn interrupted(&mut self) {
        self.reader = MkvReader::new();
        self.doc = Document { timecode_scale: 1_000_000, ..Default::default() };
        self.pending_children.clear();
        if let Some(cluster) = self.cluster.take()
            && cluster.pass
        {
            self.interrupted = Some(cluster);
        }
    }

    /// Feeds response bytes; returns what they give, in order.
    pub fn push(&mut self, data: &[u8]) -> Result<Vec<Output>, Error> {
        let mut out = Vec::new();
        if self.mode == Mode::Raw {
            out.push(Output::Data { bytes: Bytes::copy_from_slice(data), header: false });
        }
        self.reader.push(data);
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
                if let Some(cluster) = &mut self.cluster {
                    cluster.seen += 1;
                    if cluster.pass && cluster.seen > cluster.skip {
                        cluster.written += 1;
                        if self.mode == Mode::Merged {
                            out.push(Output::Data { bytes: element.to_bytes(), header: false });
                        }
                    }
                } else if element.id == id::TIMECODE {
                    let timecode = kvs_mkv::ebml::read_uint(&element.data())?;
                    self.pending_children.push(element.to_bytes());
                    self.open_cluster(timecode, out)?;
                } else {
                    // Children before the Timecode (CRC-32, Void) wait for it.
                    self.pending_children.push(element.to_bytes());
                }
            }
            Event::ClusterEnd { .. } => {
                if let Some(cluster) = self.cluster.take()
                    && cluster.pass
                {
                    self.fragments_written += 1;
                }
                self.interrupted = None;
            }
        }
        Ok(())
    }

    fn tags(&mut self, simple: &[SimpleTag], out: &mut Vec<Output>) {
        let get = |name: &str| simple.iter().find(|t| t.name == name).map(|t| t.value.clone());
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
                producer_timestamp: get(tags::PRODUCER_TIMESTAMP).or_else(|| get(PRODUCER_SIDE_TIMESTAMP)),
                server_timestamp: get(tags::SERVER_TIMESTAMP).or_else(|| get(SERVER_SIDE_TIMESTAMP)),
                ..Default::default()
            });
        }
        let behind = get(tags::MILLIS_BEHIND_NOW).and_then(|v| v.parse().ok());
        let token = get(tags::CONTINUATION_TOKEN);
        if behind.is_some() || token.is_some() {
            out.push(Output::Session { millis_behind_now: behind, continuation_token: token });
        }
        self.doc
            .user_tags
            .extend(simple.iter().filter(|t| !t.name.starts_with("AWS_KINESISVIDEO_")).cloned());
    }

    fn open_cluster(&mut self, timecode: u64, out: &mut Vec<Output>) -> Result<(), Error> {
        let time_ns = timecode.saturating_mul(self.doc.timecode_scale);
        let mut info = self.doc.fragment.take().unwrap_or_default();
        info.cluster_time_ns = time_ns;
        info.user_tags = std::mem::take(&mut self.doc.user_tags);
        let children = std::mem::take(&mut self.pending_children);

        // The continuation of a cluster a broken session left half written.
        if let Some(previous) = self.interrupted.take()
            && !info.number.is_empty()
            && previous.number == info.number
        {
            let mut cluster = OpenCluster { seen: 0, skip: previous.written, ..previous };
            for child in children {
                cluster.seen += 1;
                if cluster.seen > cluster.skip {
                    cluster.written += 1;
                    if self.merged() {
                        out.push(Output::Data { bytes: child, header: false });
                    }
                }
            }
            self.cluster = Some(cluster);
            return Ok(());
        }

        let repeated = (!info.number.is_empty() && self.seen.contains(&info.number))
            || self.last_time_ns.is_some_and(|last| time_ns <= last);
        info.skipped = repeated;
        let number = info.number.clone();
        out.push(Output::Fragment(info));
        if repeated {
            self.fragments_skipped += 1;
            self.cluster =
                Some(OpenCluster { number, written: 0, seen: children.len(), skip: 0, pass: false });
            return Ok(());
        }
        if !number.is_empty() {
            if self.seen.len() == REMEMBERED {
                self.seen.pop_front();
            }
            self.seen.push_back(number.clone());
        }
        self.last_time_ns = Some(time_ns);
        if self.merged() {
            self.write_header_if_changed(out)?;
            let mut head = Vec::with_capacity(12);
            write_id(&mut head, id::CLUSTER);
            head.extend_from_slice(&UNKNOWN_SIZE_8);
            out.push(Output::Data { bytes: head.into(), header: false });
            for child in &children {
                out.push(Output::Data { bytes: child.clone(), header: false });
            }
        }
        self.cluster =
            Some(OpenCluster { number, written: children.len(), seen: children.len(), skip: 0, pass: true });
        Ok(())
    }

    fn write_header_if_changed(&mut self, out: &mut Vec<Output>) -> Result<(), Error> {
        let Some(tracks) = self.doc.tracks.clone() else {
            return Err(Error::InvalidValue("a Cluster comes before any Tracks"));
        };
        let scale = self.doc.timecode_scale;
        if self.out_header.as_ref().is_some_and(|(t, s)| *t == tracks && *s == scale) {
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
        out.push(Output::Data { bytes: header.into(), header: true });
        self.out_header = Some((tracks, scale));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvs_mkv::writer::{self, TrackSpec};

    /// One fragment the way GetMedia sends it: header, fragment tags, the cluster, then the session tags.
    fn fragment(number: &str, timecode: u64, frames: &[&[u8]], codec_private: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        writer::write_ebml_header(&mut out, "matroska");
        writer::write_segment_start(&mut out);
        writer::write_info(&mut out, 1_000_000);
        writer::write_tracks(
            &mut out,
            &[TrackSpec { number: 1, track_type: 1, codec_id: "V_MPEG4/ISO/AVC", codec_private }],
        );
        let fragment_tags = [
            SimpleTag::new(tags::FRAGMENT_NUMBER, number),
            SimpleTag::new(tags::PRODUCER_TIMESTAMP, format!("{}.000", timecode / 1000)),
        ];
        tags::write_tags(&mut out, &fragment_tags, 8);
        writer::write_cluster_start(&mut out, timecode);
        for (i, frame) in frames.iter().enumerate() {
            writer::write_simple_block(&mut out, 1, (i * 33) as i16, i == 0, frame);
        }
        tags::write_tags(
            &mut out,
            &[SimpleTag::new(tags::MILLIS_BEHIND_NOW, "5"), SimpleTag::new(tags::CONTINUATION_TOKEN, number)],
            8,
        );
        out
    }

    fn data(outputs: &[Output]) -> Vec<u8> {
        outputs
            .iter()
            .filter_map(|o| match o {
                Output::Data { bytes, .. } => Some(bytes.to_vec()),
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
        kvs_mkv::read_all(stream).unwrap().iter().filter(|e| matches!(e, Event::EbmlHeader(_))).count()
    }

    #[test]
    fn fragments_merge_into_one_stream_and_repeats_are_left_out() {
        let mut input = fragment("1", 1_000, &[b"a", b"b"], &[]);
        input.extend(fragment("2", 2_000, &[b"c"], &[]));
        input.extend(fragment("2", 2_000, &[b"c"], &[])); // the same fragment again
        input.extend(fragment("9", 1_500, &[b"x"], &[])); // re-sent with an earlier time
        input.extend(fragment("3", 3_000, &[b"d"], &[]));
        let mut merger = Merger::new(Mode::Merged);
        let mut outputs = merger.push(&input).unwrap();
        outputs.extend(merger.finish().unwrap());
        let stream = data(&outputs);
        assert_eq!(headers(&stream), 1);
        assert_eq!(payloads(&stream), [b"a".to_vec(), b"b".to_vec(), b"c".to_vec(), b"d".to_vec()]);
        let skipped: Vec<(String, bool)> = outputs
            .iter()
            .filter_map(|o| match o {
                Output::Fragment(f) => Some((f.number.clone(), f.skipped)),
                _ => None,
            })
            .collect();
        let expected = [("1", false), ("2", false), ("2", true), ("9", true), ("3", false)];
        assert_eq!(skipped, expected.map(|(n, s)| (n.to_owned(), s)));
        assert_eq!((merger.fragments_written, merger.fragments_skipped), (3, 2));
        let tokens = outputs.iter().filter(|o| matches!(o, Output::Session { .. })).count();
        assert_eq!(tokens, 5);
    }

    #[test]
    fn a_session_broken_inside_a_cluster_continues_without_gap_or_repeat() {
        let whole = fragment("7", 7_000, &[b"f1", b"f2", b"f3", b"f4"], &[]);
        // Cut inside the third frame.
        let cut = whole.windows(2).position(|w| w == b"f3").unwrap() - 1;
        let mut merger = Merger::new(Mode::Merged);
        let mut stream = data(&merger.push(&whole[..cut]).unwrap());
        merger.interrupted();
        // The next session starts again with the same fragment, then goes on.
        let mut next = whole.clone();
        next.extend(fragment("8", 8_000, &[b"g1"], &[]));
        stream.extend(data(&merger.push(&next).unwrap()));
        stream.extend(data(&merger.finish().unwrap()));
        assert_eq!(headers(&stream), 1);
        let expected: Vec<Vec<u8>> =
            ["f1", "f2", "f3", "f4", "g1"].iter().map(|s| s.as_bytes().to_vec()).collect();
        assert_eq!(payloads(&stream), expected);
    }

    #[test]
    fn changed_tracks_start_a_new_segment_and_raw_mode_changes_nothing() {
        let mut input = fragment("1", 1_000, &[b"a"], &[1, 2]);
        input.extend(fragment("2", 2_000, &[b"b"], &[1, 2]));
        input.extend(fragment("3", 3_000, &[b"c"], &[3, 4]));
        let mut merger = Merger::new(Mode::Merged);
        let stream = data(&merger.push(&input).unwrap());
        assert_eq!(headers(&stream), 2);
        assert_eq!(payloads(&stream).len(), 3);

        let mut raw = Merger::new(Mode::Raw);
        let mut passed = Vec::new();
        for chunk in input.chunks(7) {
            passed.extend(data(&raw.push(chunk).unwrap()));
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
            &[TrackSpec { number: 1, track_type: 1, codec_id: "V_MPEG4/ISO/AVC", codec_private: &[] }],
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
        let outputs = Merger::new(Mode::Merged).push(&input).unwrap();
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
            Some(&Output::Error { code: "FRAGMENT_NOT_FOUND".into(), id: "Fragment 13 is not found".into() })
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
        let outputs = Merger::new(Mode::Merged).push(&input).unwrap();
        assert_eq!(
            outputs,
            [Output::Error { code: "Requested fragment is not found".into(), id: "4000".into() }]
        );
    }
}
