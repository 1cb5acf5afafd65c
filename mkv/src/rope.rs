// SPDX-License-Identifier: MPL-2.0

//! [`Rope`]: bytes kept in the pieces they arrived in, so that a frame read from a GStreamer buffer or an HTTP
//! response reaches the socket or the next buffer without being copied.
//!
//! Written here because `bytes` has no owned multi-piece buffer with content equality; a rope of one piece
//! costs no allocation.

use bytes::{Bytes, BytesMut};

/// A byte string held as a sequence of [`Bytes`] pieces (no empty piece is kept). Two ropes are equal when
/// their contents are, however they are cut.
#[derive(Clone, Default)]
pub struct Rope {
    first: Bytes,
    rest: Vec<Bytes>,
}

impl Rope {
    pub fn new() -> Self {
        Rope::default()
    }

    /// Appends a piece (no copy).
    pub fn push(&mut self, piece: Bytes) {
        if piece.is_empty() {
        } else if self.first.is_empty() {
            self.first = piece;
        } else {
            self.rest.push(piece);
        }
    }

    /// Appends every piece of another rope (no copy).
    pub fn append(&mut self, other: Rope) {
        for piece in other.into_pieces() {
            self.push(piece);
        }
    }

    pub fn len(&self) -> usize {
        self.first.len() + self.rest.iter().map(Bytes::len).sum::<usize>()
    }

    pub fn is_empty(&self) -> bool {
        self.first.is_empty()
    }

    /// The pieces, in order.
    pub fn pieces(&self) -> impl Iterator<Item = &Bytes> {
        std::iter::once(&self.first)
            .filter(|p| !p.is_empty())
            .chain(self.rest.iter())
    }

    pub fn piece_count(&self) -> usize {
        usize::from(!self.first.is_empty()) + self.rest.len()
    }

    pub fn into_pieces(self) -> impl Iterator<Item = Bytes> {
        std::iter::once(self.first)
            .filter(|p| !p.is_empty())
            .chain(self.rest)
    }

    /// The contents as one `Bytes`: free for a rope of one piece, a copy otherwise.
    pub fn to_bytes(&self) -> Bytes {
        if self.rest.is_empty() {
            return self.first.clone();
        }
        let mut out = BytesMut::with_capacity(self.len());
        for piece in self.pieces() {
            out.extend_from_slice(piece);
        }
        out.freeze()
    }

    /// Copies the contents into a `Vec`.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len());
        for piece in self.pieces() {
            out.extend_from_slice(piece);
        }
        out
    }

    /// Copies the first `out.len()` bytes (or all, if fewer) into `out`; returns how many were copied. For
    /// reading small headers at the start of a rope whatever its cuts.
    pub fn copy_prefix(&self, out: &mut [u8]) -> usize {
        copy_prefix(self.pieces(), out)
    }

    /// The bytes from `start` to the end, as a rope sharing the same pieces (no copy).
    pub fn slice_from(&self, mut start: usize) -> Rope {
        let mut out = Rope::new();
        for piece in self.pieces() {
            if start >= piece.len() {
                start -= piece.len();
            } else {
                out.push(piece.slice(start..));
                start = 0;
            }
        }
        out
    }
}

/// Copies the start of a sequence of pieces into `out`; returns how many bytes were copied.
fn copy_prefix<'a>(pieces: impl Iterator<Item = &'a Bytes>, out: &mut [u8]) -> usize {
    let mut copied = 0;
    for piece in pieces {
        if copied == out.len() {
            break;
        }
        let n = piece.len().min(out.len() - copied);
        out[copied..copied + n].copy_from_slice(&piece[..n]);
        copied += n;
    }
    copied
}

impl From<Bytes> for Rope {
    fn from(piece: Bytes) -> Self {
        Rope {
            first: piece,
            rest: Vec::new(),
        }
    }
}

impl From<Vec<u8>> for Rope {
    fn from(data: Vec<u8>) -> Self {
        Rope::from(Bytes::from(data))
    }
}

impl FromIterator<Bytes> for Rope {
    fn from_iter<I: IntoIterator<Item = Bytes>>(iter: I) -> Self {
        let mut rope = Rope::new();
        for piece in iter {
            rope.push(piece);
        }
        rope
    }
}

impl PartialEq for Rope {
    fn eq(&self, other: &Self) -> bool {
        if self.len() != other.len() {
            return false;
        }
        let (mut a, mut b) = (
            self.pieces().flat_map(|p| p.iter()),
            other.pieces().flat_map(|p| p.iter()),
        );
        loop {
            match (a.next(), b.next()) {
                (None, None) => return true,
                (x, y) if x == y => {}
                _ => return false,
            }
        }
    }
}

impl Eq for Rope {}

impl PartialEq<[u8]> for Rope {
    fn eq(&self, other: &[u8]) -> bool {
        self.len() == other.len() && self.pieces().flat_map(|p| p.iter()).eq(other.iter())
    }
}

impl std::fmt::Debug for Rope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Rope({} bytes in {} pieces)",
            self.len(),
            self.piece_count()
        )
    }
}

/// A queue of input pieces read from the front: what a streaming parser keeps of its input.
#[derive(Debug, Default)]
pub(crate) struct PieceQueue {
    pieces: std::collections::VecDeque<Bytes>,
    len: usize,
}

/// Pieces of a taken range at most this long in all are copied into one: not worth keeping apart.
const COALESCE_BELOW: usize = 256;
/// A taken range cut into more pieces than this is copied into one (input fed a few bytes at a time).
const MAX_PIECES: usize = 16;

impl PieceQueue {
    pub fn push(&mut self, piece: Bytes) {
        if !piece.is_empty() {
            self.len += piece.len();
            self.pieces.push_back(piece);
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Copies up to `out.len()` bytes from the front into `out`, without consuming them.
    pub fn peek(&self, out: &mut [u8]) -> usize {
        copy_prefix(self.pieces.iter(), out)
    }

    /// Removes the first `n` bytes (`n <= len`) and returns them as a rope of the input's pieces.
    pub fn take(&mut self, mut n: usize) -> Rope {
        debug_assert!(n <= self.len);
        self.len -= n;
        let mut rope = Rope::new();
        while n > 0 {
            let Some(front) = self.pieces.front_mut() else {
                break;
            };
            if front.len() <= n {
                n -= front.len();
                if let Some(piece) = self.pieces.pop_front() {
                    rope.push(piece);
                }
            } else {
                rope.push(front.split_to(n));
                n = 0;
            }
        }
        if rope.piece_count() > 1
            && (rope.len() <= COALESCE_BELOW || rope.piece_count() > MAX_PIECES)
        {
            return Rope::from(rope.to_bytes());
        }
        rope
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equality_is_by_content_whatever_the_cuts() {
        let a: Rope = [Bytes::from_static(b"ab"), Bytes::from_static(b"cdef")]
            .into_iter()
            .collect();
        let b: Rope = [
            Bytes::from_static(b"abcd"),
            Bytes::new(),
            Bytes::from_static(b"ef"),
        ]
        .into_iter()
        .collect();
        assert_eq!(a, b);
        assert_eq!(a, *b"abcdef".as_slice());
        assert_ne!(a, Rope::from(Bytes::from_static(b"abcdeg")));
        assert_eq!(b.piece_count(), 2);
        assert_eq!(a.to_bytes(), Bytes::from_static(b"abcdef"));
        assert_eq!(a.slice_from(3), *b"def".as_slice());
        let mut head = [0u8; 3];
        assert_eq!(a.copy_prefix(&mut head), 3);
        assert_eq!(&head, b"abc");
    }

    #[test]
    fn large_ranges_keep_the_input_pieces() {
        let big = Bytes::from(vec![7u8; 1000]);
        let mut queue = PieceQueue::default();
        queue.push(Bytes::from_static(b"head"));
        queue.push(big.clone());
        queue.push(Bytes::from_static(b"tail"));
        let mut peeked = [0u8; 6];
        assert_eq!(queue.peek(&mut peeked), 6);
        assert_eq!(&peeked, b"head\x07\x07");
        let taken = queue.take(1004);
        assert_eq!(taken.piece_count(), 2);
        // The frame piece is the input's own memory.
        assert_eq!(
            taken.pieces().nth(1).map(|p| p.as_ptr()),
            Some(big.as_ptr())
        );
        assert_eq!(queue.len(), 4);
        assert_eq!(queue.take(4), *b"tail".as_slice());
        assert!(queue.is_empty());
    }

    #[test]
    fn small_or_finely_cut_ranges_are_made_one_piece() {
        let mut queue = PieceQueue::default();
        for b in 0..100u8 {
            queue.push(Bytes::copy_from_slice(&[b]));
        }
        let taken = queue.take(50);
        assert_eq!(taken.piece_count(), 1);
        assert_eq!(taken.to_vec(), (0..50).collect::<Vec<u8>>());
    }
}
