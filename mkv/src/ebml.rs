// SPDX-License-Identifier: MPL-2.0

//! EBML primitives: element IDs, variable-size integers, and writing elements.
//!
//! Matroska is EBML: every element is `ID | size | data`, where the ID and the size are variable-length
//! integers whose first byte's leading zeros give their length. A size whose value bits are all ones means
//! "unknown size" (used for the live Segment and Clusters that KVS and `matroskamux streamable=true` write).

use crate::Error;

/// Element IDs this crate works with (values include the length marker bits, as usually written).
pub mod id {
    pub const EBML: u32 = 0x1A45_DFA3;
    pub const EBML_VERSION: u32 = 0x4286;
    pub const EBML_READ_VERSION: u32 = 0x42F7;
    pub const EBML_MAX_ID_LENGTH: u32 = 0x42F2;
    pub const EBML_MAX_SIZE_LENGTH: u32 = 0x42F3;
    pub const DOC_TYPE: u32 = 0x4282;
    pub const DOC_TYPE_VERSION: u32 = 0x4287;
    pub const DOC_TYPE_READ_VERSION: u32 = 0x4285;

    pub const SEGMENT: u32 = 0x1853_8067;
    pub const SEEK_HEAD: u32 = 0x114D_9B74;
    pub const INFO: u32 = 0x1549_A966;
    pub const TRACKS: u32 = 0x1654_AE6B;
    pub const CLUSTER: u32 = 0x1F43_B675;
    pub const CUES: u32 = 0x1C53_BB6B;
    pub const TAGS: u32 = 0x1254_C367;
    pub const CHAPTERS: u32 = 0x1043_A770;
    pub const ATTACHMENTS: u32 = 0x1941_A469;

    pub const VOID: u32 = 0xEC;
    pub const CRC32: u32 = 0xBF;

    // Info
    pub const SEGMENT_UID: u32 = 0x73A4;
    pub const TIMECODE_SCALE: u32 = 0x2A_D7B1;
    pub const DURATION: u32 = 0x4489;
    pub const TITLE: u32 = 0x7BA9;
    pub const MUXING_APP: u32 = 0x4D80;
    pub const WRITING_APP: u32 = 0x5741;

    // Tracks
    pub const TRACK_ENTRY: u32 = 0xAE;
    pub const TRACK_NUMBER: u32 = 0xD7;
    pub const TRACK_UID: u32 = 0x73C5;
    pub const TRACK_TYPE: u32 = 0x83;
    pub const CODEC_ID: u32 = 0x86;
    pub const CODEC_PRIVATE: u32 = 0x63A2;
    pub const DEFAULT_DURATION: u32 = 0x23E383;
    pub const NAME: u32 = 0x536E;

    // Cluster
    pub const TIMECODE: u32 = 0xE7;
    pub const SILENT_TRACKS: u32 = 0x5854;
    pub const POSITION: u32 = 0xA7;
    pub const PREV_SIZE: u32 = 0xAB;
    pub const SIMPLE_BLOCK: u32 = 0xA3;
    pub const BLOCK_GROUP: u32 = 0xA0;
    pub const BLOCK: u32 = 0xA1;
    pub const BLOCK_DURATION: u32 = 0x9B;
    pub const REFERENCE_BLOCK: u32 = 0xFB;
    pub const ENCRYPTED_BLOCK: u32 = 0xAF;

    // Tags
    pub const TAG: u32 = 0x7373;
    pub const TARGETS: u32 = 0x63C0;
    pub const SIMPLE_TAG: u32 = 0x67C8;
    pub const TAG_NAME: u32 = 0x45A3;
    pub const TAG_LANGUAGE: u32 = 0x447A;
    pub const TAG_DEFAULT: u32 = 0x4484;
    pub const TAG_STRING: u32 = 0x4487;
    pub const TAG_BINARY: u32 = 0x4485;
}

/// The 8-byte encoding of "unknown size".
pub const UNKNOWN_SIZE_8: [u8; 8] = [0x01, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF];

/// Reads an element ID at the start of `data`: `Ok(None)` when more bytes are needed.
pub fn read_id(data: &[u8]) -> Result<Option<(u32, usize)>, Error> {
    let Some(&first) = data.first() else {
        return Ok(None);
    };
    let len = first.leading_zeros() as usize + 1;
    if len > 4 {
        return Err(Error::InvalidId { first_byte: first });
    }
    if data.len() < len {
        return Ok(None);
    }
    let id = data[..len]
        .iter()
        .fold(0u32, |acc, &b| (acc << 8) | u32::from(b));
    Ok(Some((id, len)))
}

/// Reads an element size at the start of `data`: `Ok(None)` when more bytes are needed; the inner
/// `None` is the "unknown size" marker.
#[allow(clippy::type_complexity)]
pub fn read_size(data: &[u8]) -> Result<Option<(Option<u64>, usize)>, Error> {
    let Some(&first) = data.first() else {
        return Ok(None);
    };
    if first == 0 {
        return Err(Error::InvalidSize);
    }
    let len = first.leading_zeros() as usize + 1;
    if data.len() < len {
        return Ok(None);
    }
    let marker_mask = if len == 8 { 0 } else { 0xFFu8 >> len };
    let value = data[1..len]
        .iter()
        .fold(u64::from(first & marker_mask), |acc, &b| {
            (acc << 8) | u64::from(b)
        });
    let all_ones = (1u64 << (7 * len)) - 1;
    Ok(Some((
        if value == all_ones { None } else { Some(value) },
        len,
    )))
}

/// Reads a variable-length integer as used for track numbers in block headers (same coding as sizes).
pub fn read_vint(data: &[u8]) -> Result<Option<(u64, usize)>, Error> {
    Ok(read_size(data)?.map(|(value, len)| (value.unwrap_or((1u64 << (7 * len)) - 1), len)))
}

/// Big-endian unsigned integer of 0 to 8 bytes.
pub fn read_uint(data: &[u8]) -> Result<u64, Error> {
    if data.len() > 8 {
        return Err(Error::InvalidValue("unsigned integer longer than 8 bytes"));
    }
    Ok(data.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b)))
}

/// IEEE float of 0, 4 or 8 bytes.
pub fn read_float(data: &[u8]) -> Result<f64, Error> {
    match data.len() {
        0 => Ok(0.0),
        4 => Ok(f64::from(f32::from_be_bytes([
            data[0], data[1], data[2], data[3],
        ]))),
        8 => {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(data);
            Ok(f64::from_be_bytes(bytes))
        }
        _ => Err(Error::InvalidValue("float that is not 4 or 8 bytes")),
    }
}

/// Iterates over the child elements of a master element's data: `(id, data)` pairs.
pub fn children(data: &[u8]) -> Children<'_> {
    Children { data }
}

pub struct Children<'a> {
    data: &'a [u8],
}

impl<'a> Iterator for Children<'a> {
    type Item = Result<(u32, &'a [u8]), Error>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.data.is_empty() {
            return None;
        }
        let result = (|| {
            let (id, id_len) = read_id(self.data)?.ok_or(Error::Truncated)?;
            let (size, size_len) = read_size(&self.data[id_len..])?.ok_or(Error::Truncated)?;
            let size = size.ok_or(Error::UnexpectedUnknownSize { id })?;
            let start = id_len + size_len;
            let end = usize::try_from(size)
                .ok()
                .and_then(|size| start.checked_add(size))
                .filter(|&end| end <= self.data.len())
                .ok_or(Error::Truncated)?;
            let child = &self.data[start..end];
            self.data = &self.data[end..];
            Ok((id, child))
        })();
        if result.is_err() {
            self.data = &[];
        }
        Some(result)
    }
}

/// Writes an element ID.
pub fn write_id(out: &mut Vec<u8>, id: u32) {
    let len = (4 - id.leading_zeros() as usize / 8).max(1);
    out.extend_from_slice(&id.to_be_bytes()[4 - len..]);
}

/// Writes `size` with the given width in bytes (1..=8).
pub fn write_size(out: &mut Vec<u8>, size: u64, width: usize) {
    debug_assert!((1..=8).contains(&width) && size < (1u64 << (7 * width)) - 1);
    let marked = size | (1u64 << (7 * width));
    out.extend_from_slice(&marked.to_be_bytes()[8 - width..]);
}

/// The smallest width that can hold `size` as a known size.
pub fn size_width(size: u64) -> usize {
    (1..=8).find(|&w| size < (1u64 << (7 * w)) - 1).unwrap_or(8)
}

/// Writes an element with binary (or string) data, the size in its smallest form.
pub fn write_binary(out: &mut Vec<u8>, id: u32, data: &[u8]) {
    write_id(out, id);
    write_size(out, data.len() as u64, size_width(data.len() as u64));
    out.extend_from_slice(data);
}

/// Writes an unsigned integer element using exactly `width` data bytes (1..=8).
pub fn write_uint_fixed(out: &mut Vec<u8>, id: u32, value: u64, width: usize) {
    write_id(out, id);
    write_size(out, width as u64, 1);
    out.extend_from_slice(&value.to_be_bytes()[8 - width..]);
}

/// Writes an unsigned integer element in its smallest form.
pub fn write_uint(out: &mut Vec<u8>, id: u32, value: u64) {
    let width = (8 - value.leading_zeros() as usize / 8).max(1);
    write_uint_fixed(out, id, value, width);
}

/// Writes a master element whose children are already encoded in `body`, with a size field `width` bytes wide.
pub fn write_master(out: &mut Vec<u8>, id: u32, body: &[u8], width: usize) {
    write_id(out, id);
    write_size(
        out,
        body.len() as u64,
        width.max(size_width(body.len() as u64)),
    );
    out.extend_from_slice(body);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip() {
        for id in [
            id::EBML,
            id::SEGMENT,
            id::TIMECODE_SCALE,
            id::TAG,
            id::SIMPLE_BLOCK,
        ] {
            let mut out = Vec::new();
            write_id(&mut out, id);
            assert_eq!(read_id(&out).unwrap(), Some((id, out.len())));
        }
        assert_eq!(read_id(&[0x1A, 0x45]).unwrap(), None);
        assert!(read_id(&[0x00, 0x01]).is_err());
        assert!(
            read_id(&[0x08, 0, 0, 0, 0]).is_err(),
            "5-byte ids are not valid"
        );
    }

    #[test]
    fn sizes_round_trip_in_every_width() {
        for width in 1..=8 {
            for size in [0u64, 1, 126, (1u64 << (7 * width)) - 2] {
                let mut out = Vec::new();
                write_size(&mut out, size, width);
                assert_eq!(out.len(), width);
                assert_eq!(
                    read_size(&out).unwrap(),
                    Some((Some(size), width)),
                    "width {width} size {size}"
                );
            }
        }
    }

    #[test]
    fn unknown_sizes_in_every_width() {
        assert_eq!(read_size(&[0xFF]).unwrap(), Some((None, 1)));
        assert_eq!(read_size(&[0x7F, 0xFF]).unwrap(), Some((None, 2)));
        assert_eq!(read_size(&UNKNOWN_SIZE_8).unwrap(), Some((None, 8)));
        assert_eq!(read_size(&[0x01, 0xFF]).unwrap(), None, "needs all 8 bytes");
        assert!(read_size(&[0x00]).is_err());
    }

    #[test]
    fn integers_and_floats() {
        let mut out = Vec::new();
        write_uint(&mut out, id::TIMECODE, 1_700_000_000_123);
        assert_eq!(out, [0xE7, 0x86, 0x01, 0x8B, 0xCF, 0xE5, 0x68, 0x7B]);
        assert_eq!(read_uint(&out[2..]).unwrap(), 1_700_000_000_123);
        assert_eq!(read_float(&48000f32.to_be_bytes()).unwrap(), 48000.0);
        assert_eq!(read_float(&44100f64.to_be_bytes()).unwrap(), 44100.0);
        assert!(read_float(&[0, 0, 0]).is_err());
    }

    #[test]
    fn children_walks_and_reports_truncation() {
        let mut body = Vec::new();
        write_uint(&mut body, id::TRACK_NUMBER, 1);
        write_binary(&mut body, id::CODEC_ID, b"V_MPEG4/ISO/AVC");
        let kids: Vec<_> = children(&body).collect::<Result<_, _>>().unwrap();
        assert_eq!(
            kids,
            vec![
                (id::TRACK_NUMBER, &[1u8][..]),
                (id::CODEC_ID, &b"V_MPEG4/ISO/AVC"[..])
            ]
        );
        let cut = &body[..body.len() - 1];
        let last = children(cut).last().unwrap();
        assert_eq!(last, Err(Error::Truncated));
    }
}
