// SPDX-License-Identifier: MPL-2.0

//! Block headers: which track a frame belongs to, its timecode relative to the Cluster, and whether it is
//! a key frame.

use crate::Error;
use crate::ebml::{children, id, read_vint};

/// What a SimpleBlock or a BlockGroup's Block says about its frame(s).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockInfo {
    pub track: u64,
    /// Timecode relative to the Cluster's, in TimecodeScale units.
    pub relative_timecode: i16,
    pub keyframe: bool,
    /// Offset of the frame data within the block data (after track, timecode and flags).
    pub header_len: usize,
    /// BlockDuration, for a BlockGroup that has one.
    pub duration: Option<u64>,
}

/// Parses the header of a SimpleBlock's data.
pub fn parse_simple_block(data: &[u8]) -> Result<BlockInfo, Error> {
    let (track, header_len, relative_timecode, flags) = parse_block_header(data)?;
    Ok(BlockInfo {
        track,
        relative_timecode,
        keyframe: flags & 0x80 != 0,
        header_len,
        duration: None,
    })
}

/// Parses a BlockGroup's data: its Block, and whether a ReferenceBlock makes it a non-key frame.
pub fn parse_block_group(data: &[u8]) -> Result<BlockInfo, Error> {
    let mut block = None;
    let mut referenced = false;
    let mut duration = None;
    for child in children(data) {
        let (child_id, child_data) = child?;
        match child_id {
            id::BLOCK => block = Some(parse_block_header(child_data)?),
            id::REFERENCE_BLOCK => referenced = true,
            id::BLOCK_DURATION => duration = Some(crate::ebml::read_uint(child_data)?),
            _ => {}
        }
    }
    let (track, header_len, relative_timecode, _flags) =
        block.ok_or(Error::InvalidValue("BlockGroup without a Block"))?;
    Ok(BlockInfo {
        track,
        relative_timecode,
        keyframe: !referenced,
        header_len,
        duration,
    })
}

fn parse_block_header(data: &[u8]) -> Result<(u64, usize, i16, u8), Error> {
    let (track, track_len) =
        read_vint(data)?.ok_or(Error::InvalidValue("block shorter than its header"))?;
    let rest = &data[track_len..];
    if rest.len() < 3 {
        return Err(Error::InvalidValue("block shorter than its header"));
    }
    Ok((
        track,
        track_len + 3,
        i16::from_be_bytes([rest[0], rest[1]]),
        rest[2],
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ebml::{write_binary, write_uint};

    #[test]
    fn simple_block_header() {
        let info = parse_simple_block(&[0x82, 0xFF, 0xFE, 0x80, 9, 9]).unwrap();
        assert_eq!(
            info,
            BlockInfo {
                track: 2,
                relative_timecode: -2,
                keyframe: true,
                header_len: 4,
                duration: None
            }
        );
        assert!(!parse_simple_block(&[0x81, 0, 33, 0x00]).unwrap().keyframe);
        assert!(parse_simple_block(&[0x81, 0]).is_err());
    }

    #[test]
    fn block_group_with_and_without_reference() {
        let mut group = Vec::new();
        write_binary(&mut group, id::BLOCK, &[0x81, 0, 10, 0, 1, 2]);
        write_uint(&mut group, id::BLOCK_DURATION, 40);
        let info = parse_block_group(&group).unwrap();
        assert_eq!(
            (
                info.track,
                info.relative_timecode,
                info.keyframe,
                info.duration
            ),
            (1, 10, true, Some(40))
        );
        write_binary(&mut group, id::REFERENCE_BLOCK, &[0xF6]);
        assert!(!parse_block_group(&group).unwrap().keyframe);
        assert!(parse_block_group(&[]).is_err());
    }
}
