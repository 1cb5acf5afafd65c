// SPDX-License-Identifier: MPL-2.0

//! Streaming EBML/Matroska for Kinesis Video Streams, shared by the `kvs` GStreamer plugin (kvssink splits
//! `matroskamux` output into fragments, kvssrc reads GetMedia responses) and by `kvs-emulator` (parses
//! PutMedia bodies, writes GetMedia responses).
//!
//! - [`ebml`]: IDs, variable-size integers, writing elements.
//! - [`reader`]: [`MkvReader`], the incremental reader for endless streams with unknown-size elements.
//! - [`rope`]: [`Rope`], bytes kept in the pieces they arrived in (frames are never copied).
//! - [`block`]: SimpleBlock / BlockGroup headers (track, relative timecode, key frame).
//! - [`header`]: what a stream header says (doc type, timecode scale, tracks).
//! - [`tags`]: reading and writing Tags, including the `AWS_KINESISVIDEO_*` tags KVS uses.
//! - [`writer`]: writing producer-style streams (header, live Segment, Clusters, SimpleBlocks).

pub mod block;
pub mod ebml;
pub mod header;
pub mod reader;
pub mod rope;
pub mod tags;
pub mod writer;

pub use reader::{Element, Event, MkvReader, read_all};
pub use rope::Rope;

/// What can be wrong with Matroska input. Messages name the problem and where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The first element is not an EBML header.
    NotMatroska { first_id: u32 },
    /// An element ID whose first byte announces more than 4 bytes.
    InvalidId { first_byte: u8 },
    /// A size field starting with a zero byte (more than 8 bytes).
    InvalidSize,
    /// Bytes that cannot be EBML at a given offset.
    Corrupt { offset: u64, cause: Box<Error> },
    /// Input ended inside an element.
    Truncated,
    /// An element is larger than the reader accepts.
    ElementTooLarge { id: u32, size: u64, offset: u64 },
    /// A child element extends past its parent's end.
    ElementOverflowsParent { id: u32, offset: u64 },
    /// An element where it cannot be (e.g. a Cluster outside a Segment).
    UnexpectedElement { id: u32, offset: u64 },
    /// Unknown size on an element that must have a known size.
    UnexpectedUnknownSize { id: u32 },
    /// A value that does not decode.
    InvalidValue(&'static str),
    /// The EBML header's DocType is neither `matroska` nor `webm`.
    UnsupportedDocType(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::NotMatroska { first_id } => {
                write!(
                    f,
                    "not Matroska: the stream starts with element 0x{first_id:X}, not an EBML header"
                )
            }
            Error::InvalidId { first_byte } => {
                write!(f, "invalid EBML element ID (first byte 0x{first_byte:02X})")
            }
            Error::InvalidSize => write!(f, "invalid EBML size field"),
            Error::Corrupt { offset, cause } => {
                write!(f, "corrupt Matroska at byte {offset}: {cause}")
            }
            Error::Truncated => write!(f, "truncated Matroska: the input ends inside an element"),
            Error::ElementTooLarge { id, size, offset } => {
                write!(
                    f,
                    "Matroska element 0x{id:X} at byte {offset} is too large ({size} bytes)"
                )
            }
            Error::ElementOverflowsParent { id, offset } => {
                write!(
                    f,
                    "corrupt Matroska: element 0x{id:X} at byte {offset} extends past its parent"
                )
            }
            Error::UnexpectedElement { id, offset } => {
                write!(f, "unexpected Matroska element 0x{id:X} at byte {offset}")
            }
            Error::UnexpectedUnknownSize { id } => {
                write!(f, "Matroska element 0x{id:X} has an unknown size")
            }
            Error::InvalidValue(what) => write!(f, "invalid Matroska value: {what}"),
            Error::UnsupportedDocType(doc_type) => {
                write!(
                    f,
                    "unsupported EBML DocType {doc_type:?} (expected \"matroska\" or \"webm\")"
                )
            }
        }
    }
}

impl std::error::Error for Error {}
