// SPDX-License-Identifier: MPL-2.0

//! Writing the Matroska a KVS producer sends: EBML header, a live Segment, Tracks, and unknown-size Clusters
//! of SimpleBlocks (the layout of the C++ producer, KVS-PROTOCOL.md §2.8).

use crate::ebml::{
    UNKNOWN_SIZE_8, id, write_binary, write_id, write_master, write_uint, write_uint_fixed,
};

/// One track of a Tracks element.
#[derive(Debug, Clone)]
pub struct TrackSpec<'a> {
    pub number: u64,
    /// 1 video, 2 audio.
    pub track_type: u64,
    pub codec_id: &'a str,
    pub codec_private: &'a [u8],
}

/// An EBML header with this DocType (`matroska` or `webm`).
pub fn write_ebml_header(out: &mut Vec<u8>, doc_type: &str) {
    let mut body = Vec::new();
    write_binary(&mut body, id::DOC_TYPE, doc_type.as_bytes());
    write_master(out, id::EBML, &body, 1);
}

/// The start of a Segment of unknown size (a live stream).
pub fn write_segment_start(out: &mut Vec<u8>) {
    write_id(out, id::SEGMENT);
    out.extend_from_slice(&UNKNOWN_SIZE_8);
}

/// An Info element with this TimecodeScale (ns per unit).
pub fn write_info(out: &mut Vec<u8>, timecode_scale: u64) {
    let mut body = Vec::new();
    write_uint(&mut body, id::TIMECODE_SCALE, timecode_scale);
    write_master(out, id::INFO, &body, 1);
}

/// A Tracks element.
pub fn write_tracks(out: &mut Vec<u8>, tracks: &[TrackSpec<'_>]) {
    let mut entries = Vec::new();
    for track in tracks {
        let mut entry = Vec::new();
        write_uint(&mut entry, id::TRACK_NUMBER, track.number);
        write_uint(&mut entry, id::TRACK_UID, track.number);
        write_uint(&mut entry, id::TRACK_TYPE, track.track_type);
        write_binary(&mut entry, id::CODEC_ID, track.codec_id.as_bytes());
        if !track.codec_private.is_empty() {
            write_binary(&mut entry, id::CODEC_PRIVATE, track.codec_private);
        }
        write_master(&mut entries, id::TRACK_ENTRY, &entry, 1);
    }
    write_master(out, id::TRACKS, &entries, 4);
}

/// The start of an unknown-size Cluster with its Timecode (8 bytes wide, as KVS producers write it).
pub fn write_cluster_start(out: &mut Vec<u8>, timecode: u64) {
    write_id(out, id::CLUSTER);
    out.extend_from_slice(&UNKNOWN_SIZE_8);
    write_uint_fixed(out, id::TIMECODE, timecode, 8);
}

/// A SimpleBlock holding one frame.
pub fn write_simple_block(
    out: &mut Vec<u8>,
    track: u64,
    relative_timecode: i16,
    keyframe: bool,
    frame: &[u8],
) {
    let mut header = Vec::with_capacity(4);
    crate::ebml::write_size(&mut header, track, crate::ebml::size_width(track));
    header.extend_from_slice(&relative_timecode.to_be_bytes());
    header.push(if keyframe { 0x80 } else { 0 });
    write_id(out, id::SIMPLE_BLOCK);
    let size = (header.len() + frame.len()) as u64;
    crate::ebml::write_size(out, size, crate::ebml::size_width(size));
    out.extend_from_slice(&header);
    out.extend_from_slice(frame);
}

/// The header of a one-track H.264 stream: EBML header, Segment start, Info (ms timecodes), Tracks.
pub fn h264_stream_header() -> Vec<u8> {
    let mut out = Vec::new();
    write_ebml_header(&mut out, "matroska");
    write_segment_start(&mut out);
    write_info(&mut out, 1_000_000);
    write_tracks(
        &mut out,
        &[TrackSpec {
            number: 1,
            track_type: 1,
            codec_id: "V_MPEG4/ISO/AVC",
            codec_private: &[],
        }],
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::parse_simple_block;
    use crate::reader::{Event, read_all};

    #[test]
    fn written_streams_read_back() {
        let mut out = h264_stream_header();
        write_cluster_start(&mut out, 1_795_000_000_000);
        write_simple_block(&mut out, 1, 0, true, b"key");
        write_simple_block(&mut out, 1, 33, false, b"delta");
        let events = read_all(&out).unwrap();
        let blocks: Vec<_> = events
            .iter()
            .filter_map(|e| match e {
                Event::ClusterChild(el) if el.id == id::SIMPLE_BLOCK => {
                    Some(parse_simple_block(&el.data()).unwrap())
                }
                _ => None,
            })
            .collect();
        assert_eq!(blocks.len(), 2);
        assert!(blocks[0].keyframe && !blocks[1].keyframe);
        assert_eq!(blocks[1].relative_timecode, 33);
        let tracks = events
            .iter()
            .find_map(|e| match e {
                Event::Element(el) if el.id == id::TRACKS => {
                    Some(crate::header::tracks(&el.data()).unwrap())
                }
                _ => None,
            })
            .unwrap();
        assert_eq!(tracks[0].codec_id, "V_MPEG4/ISO/AVC");
    }
}
