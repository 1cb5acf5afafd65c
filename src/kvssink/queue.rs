// SPDX-License-Identifier: MPL-2.0

//! The fragment queue of an upload, without I/O, locks or clocks: which fragments wait, which connection sent
//! them, what each ACK releases, what a full queue drops and which sent fragments are stale. The time is a
//! parameter and the methods return what happened, so that the [`super::uploader`] (which owns the
//! connections, the lock and the events) stays small and this is tested on its own.
//!
//! A fragment stays until it is PERSISTED (RECEIVED when the stream keeps no data, sent when no ACKs are asked
//! for); a PERSISTED also releases the fragments RECEIVED before it on the same connection, since the service
//! persists in order. A failed connection's fragments are queued again, in order.
//!
//! With a fragment store (`buffer-dir`, [`super::store`]) each entry also has its file. The queue's only I/O
//! goes through that handle: a fragment that leaves the queue (done or dropped) releases its file, and a
//! complete fragment that waits to be sent is served from a map of its file instead of the frames' memory
//! ([`spill`](FragmentQueue::spill)), so a backlog costs disk, not RAM.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::fragmenter::{FragmentStart, StreamHeader};
use super::store::FragmentFile;
use crate::kvs::ack::{AckEvent, AckKind};
use crate::kvs::error::{AckErrorAction, KvsError, ack_error_action};
use kvs_mkv::Rope;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Queued,
    Sent { connection: u64, at: Instant },
    Buffering { connection: u64, at: Instant },
    Received { connection: u64, at: Instant },
}

impl State {
    pub fn connection(&self) -> Option<u64> {
        match *self {
            State::Queued => None,
            State::Sent { connection, .. }
            | State::Buffering { connection, .. }
            | State::Received { connection, .. } => Some(connection),
        }
    }
    fn sent_at(&self) -> Option<Instant> {
        match *self {
            State::Queued => None,
            State::Sent { at, .. } | State::Buffering { at, .. } | State::Received { at, .. } => {
                Some(at)
            }
        }
    }
}

/// Counters, readable at any time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    pub bytes_sent: u64,
    pub fragments_queued: u64,
    pub fragments_sent: u64,
    pub fragments_received: u64,
    pub fragments_persisted: u64,
    pub fragments_dropped: u64,
    pub fragments_resent: u64,
    pub errors_acked: u64,
    pub connections: u64,
    pub reconnections: u64,
    pub last_ack_latency: Option<Duration>,
    pub queue_fragments: usize,
    pub queue_bytes: usize,
    /// Complete fragments waiting to be sent (a catch-up or an outage).
    pub backlog_fragments: usize,
    pub backlog_bytes: usize,
}

/// A fragment in the queue, complete or still being written.
pub struct Entry {
    /// Unique and increasing, in queue order.
    pub id: u64,
    pub header: Arc<StreamHeader>,
    /// The cluster's absolute Timecode (what the ACKs echo).
    pub timecode: u64,
    /// From its Timecode to the start of its latest frame.
    pub duration: Duration,
    /// Tags, Cluster head and frames, in the pieces they came in; empty while the fragment waits on disk
    /// ([`on_disk`](Entry::on_disk)), mapped from its file when it is sent.
    pub data: Vec<Bytes>,
    pub size: usize,
    /// The fragmenter said it ended: no more frames will be added.
    pub complete: bool,
    pub state: State,
    pub sends: u32,
    /// Its file in the fragment store, if there is one.
    pub stored: Option<FragmentFile>,
}

impl Entry {
    /// Its bytes wait in its file, not in memory (a fragment always has at least its first piece in memory).
    pub fn on_disk(&self) -> bool {
        self.data.is_empty() && self.stored.is_some()
    }
}

/// How much the queue holds at most, and whether fragments wait for ACKs.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_bytes: usize,
    pub max_duration: Duration,
    pub acks: bool,
    pub staleness: Duration,
}

/// A fragment that left the queue without being stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dropped {
    pub timecode: u64,
    pub bytes: usize,
}

/// Where a connection is in the fragment it writes: which entry, and how many of its pieces went out.
#[derive(Debug, Clone, Copy)]
pub struct Cursor {
    entry: u64,
    pieces: usize,
}

impl Cursor {
    /// The fragment being written (its queue id).
    pub fn entry(&self) -> u64 {
        self.entry
    }
}

/// What a connection sends next.
#[derive(Debug)]
pub enum Next {
    Send(Vec<Bytes>),
    /// End this connection gracefully and go on with a new one.
    Rotate(&'static str),
    /// Nothing to send until something changes.
    Wait,
    /// A fragment waits, but the caller said not to start one now.
    Hold,
    /// A fragment waiting on disk could not be read back (its file is gone or unreadable): it is dropped.
    Lost(Dropped, String),
}

/// What an ACK did.
#[derive(Debug, Default)]
pub struct AckEffect {
    /// It was for a fragment this connection sent (time since it was sent).
    pub latency: Option<Duration>,
    /// An ERROR ACK: the error, and whether it only cost that fragment (dropped, reconnect at once).
    pub refused: Option<(KvsError, bool)>,
    /// The fragment an ERROR ACK dropped.
    pub dropped: Option<Dropped>,
}

/// See the module documentation.
pub struct FragmentQueue {
    entries: VecDeque<Entry>,
    next_id: u64,
    bytes: usize,
    limits: Limits,
    pub stats: Stats,
}

impl FragmentQueue {
    pub fn new(limits: Limits) -> Self {
        FragmentQueue {
            entries: VecDeque::new(),
            next_id: 0,
            bytes: 0,
            limits,
            stats: Stats::default(),
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    #[cfg(test)]
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The counters, with the queue's size and backlog.
    pub fn stats(&self) -> Stats {
        let (backlog_fragments, backlog_bytes) = self.backlog();
        Stats {
            queue_fragments: self.entries.len(),
            queue_bytes: self.bytes,
            backlog_fragments,
            backlog_bytes,
            ..self.stats.clone()
        }
    }

    /// Complete fragments waiting to be sent (not the one being written): how many, how many bytes.
    pub fn backlog(&self) -> (usize, usize) {
        self.entries
            .iter()
            .filter(|e| e.complete && e.state == State::Queued)
            .fold((0, 0), |(n, bytes), e| (n + 1, bytes + e.size))
    }

    /// The first fragment waiting to be sent.
    pub fn first_queued(&self) -> Option<&Entry> {
        self.entries.iter().find(|e| e.state == State::Queued)
    }

    /// The oldest fragment in the queue.
    pub fn front(&self) -> Option<&Entry> {
        self.entries.front()
    }

    pub fn has_unsent(&self) -> bool {
        self.entries.iter().any(|e| e.state == State::Queued)
    }

    /// Fragments queued again after an earlier send.
    pub fn resending(&self) -> usize {
        self.entries
            .iter()
            .filter(|e| e.state == State::Queued && e.sends > 0)
            .count()
    }

    /// True while a fragment is still being written or waits to be sent.
    pub fn has_work(&self) -> bool {
        self.has_unsent() || self.entries.iter().any(|e| !e.complete)
    }

    /// True while `connection` has fragments not done.
    pub fn holds(&self, connection: u64) -> bool {
        self.entries
            .iter()
            .any(|e| e.state.connection() == Some(connection))
    }

    /// From the first fragment's start to the end of the last one.
    pub fn duration(&self) -> Duration {
        match (self.entries.front(), self.entries.back()) {
            (Some(first), Some(last)) => {
                let units = last.timecode.saturating_sub(first.timecode);
                Duration::from_nanos(units.saturating_mul(first.header.timecode_scale))
                    + last.duration
            }
            _ => Duration::ZERO,
        }
    }

    /// True when `size` more bytes fit (a queue holding at most the fragment being written always takes more).
    pub fn has_room(&self, size: usize) -> bool {
        self.entries.len() <= usize::from(self.entries.back().is_some_and(|e| !e.complete))
            || (self.bytes + size <= self.limits.max_bytes
                && self.duration() < self.limits.max_duration)
    }

    /// Makes room for `size` more bytes by dropping the oldest complete fragments, those not sent yet first,
    /// then those sent and waiting for their PERSISTED (every byte held counts against the limits); returns them.
    /// The fragment being written is never dropped.
    pub fn make_room(&mut self, size: usize) -> Vec<Dropped> {
        let mut dropped = Vec::new();
        while !self.has_room(size) {
            let index = self
                .entries
                .iter()
                .position(|e| e.state == State::Queued && e.complete)
                .or_else(|| self.entries.iter().position(|e| e.complete));
            let Some(index) = index else { break };
            if let Some(entry) = self.remove_at(index) {
                self.stats.fragments_dropped += 1;
                dropped.push(Dropped {
                    timecode: entry.timecode,
                    bytes: entry.size,
                });
            }
        }
        dropped
    }

    /// A new fragment with its first frame; the one being written is complete from now on.
    pub fn start_fragment(&mut self, start: FragmentStart, stored: Option<FragmentFile>) {
        if let Some(previous) = self.writing() {
            previous.complete = true;
        }
        let data: Vec<Bytes> = start.data.into_pieces().collect();
        self.push_entry(start.header, start.timecode, Duration::ZERO, data, stored);
    }

    /// A complete fragment read back from the store (left by an earlier process), queued after the others; its
    /// bytes stay on disk until it is sent.
    pub fn push_stored(
        &mut self,
        header: Arc<StreamHeader>,
        timecode: u64,
        duration: Duration,
        file: FragmentFile,
    ) {
        self.push_entry(header, timecode, duration, Vec::new(), Some(file));
    }

    /// Queues a fragment: with `data` (its memory), being written; without, complete and read from `stored`
    /// when sent.
    fn push_entry(
        &mut self,
        header: Arc<StreamHeader>,
        timecode: u64,
        duration: Duration,
        data: Vec<Bytes>,
        stored: Option<FragmentFile>,
    ) {
        let on_disk = data.is_empty();
        let size = if on_disk {
            stored.as_ref().map_or(0, FragmentFile::size)
        } else {
            data.iter().map(Bytes::len).sum()
        };
        let id = self.next_id;
        self.next_id += 1;
        self.bytes += size;
        self.stats.fragments_queued += 1;
        self.entries.push_back(Entry {
            id,
            header,
            timecode,
            duration,
            data,
            size,
            complete: on_disk,
            state: State::Queued,
            sends: 0,
            stored,
        });
    }

    /// Lets go of the memory of every complete fragment that waits to be sent and whose file holds all of it:
    /// it is read from the file when it is sent. Returns how many.
    pub fn spill(&mut self) -> usize {
        let mut count = 0;
        for entry in self
            .entries
            .iter_mut()
            .filter(|e| e.complete && e.state == State::Queued && !e.data.is_empty())
        {
            if entry
                .stored
                .as_ref()
                .is_some_and(|file| !file.is_released() && file.size() == entry.size)
            {
                entry.data = Vec::new();
                count += 1;
            }
        }
        count
    }

    /// The next frame of the fragment being written (`duration`: the fragment's length with it). Nothing when
    /// that fragment was refused by the service meanwhile: the rest of it goes too.
    pub fn push_frame(&mut self, data: Rope, duration: Duration) {
        let size = data.len();
        if let Some(entry) = self.writing() {
            entry.data.extend(data.into_pieces());
            entry.size += size;
            entry.duration = duration;
            self.bytes += size;
        }
    }

    /// The fragment being written is complete.
    pub fn end_fragment(&mut self) {
        if let Some(entry) = self.writing() {
            entry.complete = true;
        }
    }

    fn writing(&mut self) -> Option<&mut Entry> {
        self.entries.back_mut().filter(|e| !e.complete)
    }

    /// Takes a fragment out of the queue: it is done (stored by the service) or dropped, so its file goes too.
    fn remove_at(&mut self, index: usize) -> Option<Entry> {
        let entry = self.entries.remove(index)?;
        self.bytes -= entry.size;
        if let Some(file) = &entry.stored {
            file.release();
        }
        Some(entry)
    }

    /// Queues again every fragment of `connection` that is not done; returns how many.
    pub fn requeue(&mut self, connection: u64) -> usize {
        let mut count = 0;
        for entry in self
            .entries
            .iter_mut()
            .filter(|e| e.state.connection() == Some(connection))
        {
            entry.state = State::Queued;
            count += 1;
        }
        count
    }

    /// The pieces added to the fragment `connection` is writing since `cursor`, if there are any; nothing else
    /// changes (the fragment's end and the next fragment are for [`next_to_send`](Self::next_to_send)).
    pub fn next_pieces(&mut self, connection: u64, cursor: &mut Cursor) -> Option<Vec<Bytes>> {
        let entry = self
            .entries
            .iter()
            .rev()
            .find(|e| e.id == cursor.entry && e.state.connection() == Some(connection))?;
        if entry.data.len() <= cursor.pieces {
            return None;
        }
        let pieces = entry.data[cursor.pieces..].to_vec();
        cursor.pieces = entry.data.len();
        Some(pieces)
    }

    /// What `connection` sends next: the new pieces of the fragment it is writing, or the start of the next
    /// queued fragment, unless `may_start` says not yet (the service's fragment rate), that one has another
    /// header or `rotate` says the connection is old enough.
    pub fn next_to_send(
        &mut self,
        connection: u64,
        cursor: &mut Option<Cursor>,
        generation: u64,
        rotate: bool,
        now: Instant,
        may_start: bool,
    ) -> Next {
        if let Some(at) = cursor.as_mut() {
            match self
                .entries
                .iter()
                .position(|e| e.id == at.entry && e.state.connection() == Some(connection))
            {
                Some(index) if self.entries[index].data.len() > at.pieces => {
                    let pieces = self.entries[index].data[at.pieces..].to_vec();
                    at.pieces = self.entries[index].data.len();
                    return Next::Send(pieces);
                }
                Some(index) if !self.entries[index].complete => return Next::Wait,
                Some(index) => {
                    // Complete and all written.
                    self.stats.fragments_sent += 1;
                    if self.entries[index].sends > 1 {
                        self.stats.fragments_resent += 1;
                    }
                    if !self.limits.acks {
                        self.remove_at(index);
                    }
                }
                // Dropped meanwhile (refused by the service): its connection is ending.
                None => {}
            }
            *cursor = None;
        }
        let Some(index) = self.entries.iter().position(|e| e.state == State::Queued) else {
            return Next::Wait;
        };
        if !may_start {
            return Next::Hold;
        }
        if self.entries[index].on_disk() {
            match self.entries[index].stored.as_ref().map(FragmentFile::map) {
                Some(Ok(data)) => self.entries[index].data = data,
                Some(Err(error)) => {
                    let file = self.entries[index]
                        .stored
                        .as_ref()
                        .map(|f| f.path().display().to_string());
                    let (timecode, bytes) =
                        (self.entries[index].timecode, self.entries[index].size);
                    self.remove_at(index);
                    self.stats.fragments_dropped += 1;
                    let reason =
                        format!("{} cannot be read back: {error}", file.unwrap_or_default());
                    return Next::Lost(Dropped { timecode, bytes }, reason);
                }
                None => {}
            }
        }
        let entry = &mut self.entries[index];
        if entry.header.generation != generation {
            return Next::Rotate("the stream header changed");
        }
        if rotate {
            return Next::Rotate("connection-rotation reached");
        }
        entry.state = State::Sent {
            connection,
            at: now,
        };
        entry.sends += 1;
        *cursor = Some(Cursor {
            entry: entry.id,
            pieces: entry.data.len(),
        });
        Next::Send(entry.data.clone())
    }

    /// How long the oldest fragment `connection` sent has waited, if past the staleness limit (never without
    /// ACKs): a fragment with no ACK at all `staleness` after it was sent, or a complete one with a BUFFERING or
    /// RECEIVED but no PERSISTED `staleness` after its last frame.
    pub fn stale_for(&self, connection: u64, now: Instant) -> Option<Duration> {
        self.stale_bounds(connection)
            .filter(|&(sent, bound)| now.duration_since(sent) >= bound)
            .map(|(sent, _)| now.duration_since(sent))
            .max()
    }

    /// When [`stale_for`](Self::stale_for) would next find a fragment of `connection` stale, as things are.
    pub fn stale_at(&self, connection: u64) -> Option<Instant> {
        self.stale_bounds(connection)
            .map(|(sent, bound)| sent + bound)
            .min()
    }

    /// (sent at, how long it may wait) of each fragment of `connection` that waits for an ACK (none without
    /// ACKs).
    fn stale_bounds(&self, connection: u64) -> impl Iterator<Item = (Instant, Duration)> + '_ {
        let staleness = self.limits.staleness;
        self.entries
            .iter()
            .filter(|_| self.limits.acks)
            .filter_map(move |e| {
                let sent = e.state.sent_at()?;
                let bound = match e.state {
                    State::Sent { connection: c, .. } if c == connection => staleness,
                    State::Buffering { connection: c, .. }
                    | State::Received { connection: c, .. }
                        if c == connection && e.complete =>
                    {
                        staleness + e.duration
                    }
                    _ => return None,
                };
                Some((sent, bound))
            })
    }

    /// Applies an ACK `connection` received. `persisting`: the stream keeps data (otherwise RECEIVED is the
    /// last ACK a fragment gets).
    pub fn apply_ack(
        &mut self,
        connection: u64,
        ack: &AckEvent,
        now: Instant,
        persisting: bool,
    ) -> AckEffect {
        let mut effect = AckEffect::default();
        let index = self.entries.iter().position(|e| {
            e.state.connection() == Some(connection) && Some(e.timecode) == ack.timecode
        });
        if let Some(index) = index {
            effect.latency = self.entries[index]
                .state
                .sent_at()
                .map(|at| now.duration_since(at));
        }
        match (&ack.kind, index) {
            (AckKind::Buffering, Some(i)) => {
                let at = self.entries[i].state.sent_at().unwrap_or(now);
                self.entries[i].state = State::Buffering { connection, at };
            }
            (AckKind::Received, Some(i)) => {
                self.stats.fragments_received += 1;
                if persisting {
                    let at = self.entries[i].state.sent_at().unwrap_or(now);
                    self.entries[i].state = State::Received { connection, at };
                } else {
                    self.remove_at(i);
                }
            }
            (AckKind::Persisted, Some(i)) => {
                self.stats.fragments_persisted += 1;
                self.remove_at(i);
                // The service persists in order: earlier received fragments of this connection are stored.
                let timecode = ack.timecode.unwrap_or(0);
                while let Some(j) = self.entries.iter().position(|e| {
                    matches!(e.state, State::Received { connection: c, .. } if c == connection)
                        && e.timecode < timecode
                }) {
                    self.stats.fragments_persisted += 1;
                    self.remove_at(j);
                }
            }
            (AckKind::Error { id, code }, index) => {
                self.stats.errors_acked += 1;
                let error = KvsError::FragmentRefused {
                    fragment: ack.timecode.unwrap_or(0),
                    id: *id,
                    code: code.clone(),
                };
                let only_this_fragment = ack_error_action(*id) == AckErrorAction::SkipFragment;
                if only_this_fragment && let Some(entry) = index.and_then(|i| self.remove_at(i)) {
                    self.stats.fragments_dropped += 1;
                    effect.dropped = Some(Dropped {
                        timecode: entry.timecode,
                        bytes: entry.size,
                    });
                }
                effect.refused = Some((error, only_this_fragment));
            }
            _ => {}
        }
        if effect.latency.is_some() {
            self.stats.last_ack_latency = effect.latency;
        }
        effect
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_bytes: 1000,
        max_duration: Duration::from_secs(120),
        acks: true,
        staleness: Duration::from_secs(5),
    };

    fn header() -> Arc<StreamHeader> {
        Arc::new(StreamHeader {
            generation: 1,
            bytes: Bytes::from_static(b"H"),
            timecode_scale: 1_000_000,
            media_type: None,
        })
    }

    /// A complete fragment of `size` bytes at `timecode` (ms).
    fn fragment(queue: &mut FragmentQueue, timecode: u64, size: usize) {
        queue.start_fragment(
            FragmentStart {
                header: header(),
                timecode,
                data: Rope::from(Bytes::from(vec![0; size])),
            },
            None,
        );
        queue.end_fragment();
    }

    /// Sends every queued fragment on `connection` at `now`; returns their timecodes.
    fn send_all(queue: &mut FragmentQueue, connection: u64, now: Instant) -> Vec<u64> {
        let mut cursor = None;
        let mut sent = Vec::new();
        loop {
            match queue.next_to_send(connection, &mut cursor, 1, false, now, true) {
                Next::Send(_) => {
                    if let Some(c) = cursor {
                        sent.push(
                            queue
                                .entries
                                .iter()
                                .find(|e| e.id == c.entry)
                                .unwrap()
                                .timecode,
                        );
                    }
                }
                Next::Wait if cursor.is_none() => return sent,
                Next::Wait => cursor = None,
                Next::Rotate(why) => panic!("{why}"),
                Next::Lost(dropped, why) => panic!("{dropped:?}: {why}"),
                Next::Hold => panic!("held"),
            }
        }
    }

    fn ack(kind: AckKind, timecode: u64) -> AckEvent {
        AckEvent {
            kind,
            timecode: Some(timecode),
            fragment_number: None,
        }
    }

    #[test]
    fn a_persisted_releases_the_fragments_received_before_it_on_its_connection() {
        let t0 = Instant::now();
        let mut queue = FragmentQueue::new(LIMITS);
        for tc in [1000, 2000, 3000] {
            fragment(&mut queue, tc, 10);
        }
        assert_eq!(send_all(&mut queue, 1, t0), [1000, 2000, 3000]);
        queue.apply_ack(1, &ack(AckKind::Received, 1000), t0, true);
        queue.apply_ack(1, &ack(AckKind::Received, 2000), t0, true);
        assert_eq!(
            queue.len(),
            3,
            "RECEIVED keeps a fragment until it is persisted"
        );
        let effect = queue.apply_ack(
            1,
            &ack(AckKind::Persisted, 2000),
            t0 + Duration::from_millis(40),
            true,
        );
        assert_eq!(effect.latency, Some(Duration::from_millis(40)));
        assert_eq!(queue.len(), 1);
        assert_eq!(queue.stats.fragments_persisted, 2);
        assert_eq!(queue.front().unwrap().timecode, 3000);
        // An ACK for another connection's fragment changes nothing.
        assert!(
            queue
                .apply_ack(2, &ack(AckKind::Persisted, 3000), t0, true)
                .latency
                .is_none()
        );
        assert_eq!(queue.len(), 1);
    }

    #[test]
    fn without_retention_received_is_the_last_ack_and_without_acks_sent_is_done() {
        let t0 = Instant::now();
        let mut queue = FragmentQueue::new(LIMITS);
        fragment(&mut queue, 1000, 10);
        send_all(&mut queue, 1, t0);
        queue.apply_ack(1, &ack(AckKind::Received, 1000), t0, false);
        assert!(queue.is_empty());

        let mut queue = FragmentQueue::new(Limits {
            acks: false,
            ..LIMITS
        });
        fragment(&mut queue, 1000, 10);
        fragment(&mut queue, 2000, 10);
        assert_eq!(send_all(&mut queue, 1, t0), [1000, 2000]);
        // Each is done once all of it was written (seen at the next call).
        assert!(queue.is_empty());
        assert_eq!(queue.stats.fragments_sent, 2);
        assert_eq!(queue.stale_for(1, t0 + Duration::from_secs(60)), None);
    }

    #[test]
    fn an_error_ack_skips_only_fragments_the_service_will_never_take() {
        let t0 = Instant::now();
        let mut queue = FragmentQueue::new(LIMITS);
        fragment(&mut queue, 1000, 10);
        fragment(&mut queue, 2000, 10);
        send_all(&mut queue, 1, t0);
        // 4002: too long, this fragment only.
        let effect = queue.apply_ack(
            1,
            &ack(
                AckKind::Error {
                    id: 4002,
                    code: "MAX_FRAGMENT_DURATION_REACHED".into(),
                },
                1000,
            ),
            t0,
            true,
        );
        assert_eq!(
            effect.dropped,
            Some(Dropped {
                timecode: 1000,
                bytes: 10
            })
        );
        let (error, only_this) = effect.refused.unwrap();
        assert!(only_this);
        assert_eq!(
            error.to_string(),
            "the service refused fragment 1000 with ERROR 4002 MAX_FRAGMENT_DURATION_REACHED"
        );
        // 5000: the service's problem: the fragment stays, to be sent again.
        let effect = queue.apply_ack(
            1,
            &ack(
                AckKind::Error {
                    id: 5000,
                    code: "INTERNAL_ERROR".into(),
                },
                2000,
            ),
            t0,
            true,
        );
        assert_eq!((effect.dropped, effect.refused.unwrap().1), (None, false));
        assert_eq!(queue.len(), 1);
        assert_eq!(queue.requeue(1), 1);
        assert_eq!(queue.resending(), 1);
        assert_eq!(send_all(&mut queue, 2, t0), [2000]);
        assert_eq!(queue.stats.errors_acked, 2);
    }

    #[test]
    fn a_full_queue_drops_the_oldest_unsent_fragments_first_then_the_oldest_sent() {
        let t0 = Instant::now();
        let mut queue = FragmentQueue::new(LIMITS);
        fragment(&mut queue, 1000, 400);
        send_all(&mut queue, 1, t0);
        fragment(&mut queue, 2000, 400);
        fragment(&mut queue, 3000, 100);
        assert!(!queue.has_room(300));
        // The sent one stays; the oldest queued one goes.
        assert_eq!(
            queue.make_room(300),
            [Dropped {
                timecode: 2000,
                bytes: 400
            }]
        );
        assert!(queue.has_room(300));
        assert_eq!(queue.stats.fragments_dropped, 1);
        assert_eq!(queue.bytes(), 500);
        // With nothing unsent left, sent fragments waiting for their PERSISTED go too: every byte counts.
        assert_eq!(
            queue.make_room(900),
            [
                Dropped {
                    timecode: 3000,
                    bytes: 100
                },
                Dropped {
                    timecode: 1000,
                    bytes: 400
                }
            ]
        );
        assert!(queue.is_empty());
        // A fragment being written is never dropped, and a queue holding only it always takes more.
        let mut writing = FragmentQueue::new(LIMITS);
        writing.start_fragment(
            FragmentStart {
                header: header(),
                timecode: 1,
                data: Rope::from(Bytes::from(vec![0; 5000])),
            },
            None,
        );
        assert!(writing.has_room(5000));
        assert!(writing.make_room(5000).is_empty());
    }

    #[test]
    fn waiting_fragments_with_a_file_hold_no_memory_and_are_read_back_when_sent() {
        use super::super::store::Store;
        let dir = std::env::temp_dir().join(format!("kvs-queue-spill-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (mut store, _) = Store::open(&dir, "s").unwrap();
        let t0 = Instant::now();
        let mut queue = FragmentQueue::new(LIMITS);
        let mut files = Vec::new();
        for (timecode, first, second) in [(1000, b"A1", b"A2"), (2000, b"B1", b"B2")] {
            let start = FragmentStart {
                header: header(),
                timecode,
                data: Rope::from(Bytes::from_static(first)),
            };
            let file = store
                .start_fragment(&start.header, timecode, &start.data, false)
                .unwrap();
            queue.start_fragment(start, Some(file.clone()));
            store
                .append(
                    &Rope::from(Bytes::from_static(second)),
                    Duration::from_millis(33),
                )
                .unwrap();
            queue.push_frame(
                Rope::from(Bytes::from_static(second)),
                Duration::from_millis(33),
            );
            store.end_fragment().unwrap();
            queue.end_fragment();
            files.push(file);
        }
        // Both wait (no connection): their memory goes, their size still counts.
        assert_eq!(queue.spill(), 2);
        assert!(queue.entries.iter().all(|e| e.on_disk()));
        assert_eq!((queue.bytes(), queue.backlog()), (8, (2, 8)));
        // The second's file disappears: it is dropped, named, when its turn comes; the first is read back.
        std::fs::remove_file(files[1].path()).unwrap();
        let mut cursor = None;
        match queue.next_to_send(1, &mut cursor, 1, false, t0, true) {
            Next::Send(pieces) => assert_eq!(pieces.concat(), b"A1A2"),
            other => panic!("{other:?}"),
        }
        match queue.next_to_send(1, &mut cursor, 1, false, t0, true) {
            Next::Lost(dropped, why) => {
                assert_eq!(
                    dropped,
                    Dropped {
                        timecode: 2000,
                        bytes: 4
                    }
                );
                assert!(
                    why.starts_with(&format!(
                        "{} cannot be read back: ",
                        files[1].path().display()
                    )),
                    "{why}"
                );
            }
            other => panic!("{other:?}"),
        }
        // A persisted fragment's file goes with it.
        queue.apply_ack(1, &ack(AckKind::Persisted, 1000), t0, true);
        assert!(queue.is_empty() && !files[0].path().exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_sent_fragment_without_ack_becomes_stale_after_the_limit() {
        let t0 = Instant::now();
        let mut queue = FragmentQueue::new(LIMITS);
        fragment(&mut queue, 1000, 10);
        send_all(&mut queue, 7, t0);
        assert_eq!(queue.stale_for(7, t0 + Duration::from_secs(4)), None);
        assert_eq!(
            queue.stale_for(7, t0 + Duration::from_secs(6)),
            Some(Duration::from_secs(6))
        );
        // A BUFFERING ACK is an answer, but the fragment must still be persisted: stale `staleness` after its
        // last frame (at 2 s here) without one.
        queue.apply_ack(7, &ack(AckKind::Buffering, 1000), t0, true);
        queue.entries[0].duration = Duration::from_secs(2);
        assert_eq!(queue.stale_for(7, t0 + Duration::from_secs(6)), None);
        assert_eq!(
            queue.stale_for(7, t0 + Duration::from_secs(7)),
            Some(Duration::from_secs(7))
        );
        // So is a RECEIVED one; another connection's fragments are not this one's business.
        queue.apply_ack(7, &ack(AckKind::Received, 1000), t0, true);
        assert_eq!(
            queue.stale_for(7, t0 + Duration::from_secs(7)),
            Some(Duration::from_secs(7))
        );
        assert_eq!(queue.stale_for(8, t0 + Duration::from_secs(60)), None);
        assert!(queue.holds(7));
        // A fragment still being written waits for its end before it can be persisted.
        let mut queue = FragmentQueue::new(LIMITS);
        queue.start_fragment(
            FragmentStart {
                header: header(),
                timecode: 1,
                data: Rope::from(Bytes::from_static(b"A")),
            },
            None,
        );
        let mut cursor = None;
        assert!(matches!(
            queue.next_to_send(7, &mut cursor, 1, false, t0, true),
            Next::Send(_)
        ));
        queue.apply_ack(7, &ack(AckKind::Buffering, 1), t0, true);
        assert_eq!(queue.stale_for(7, t0 + Duration::from_secs(60)), None);
    }

    #[test]
    fn frames_follow_their_fragment_as_they_come_and_a_new_header_rotates() {
        let t0 = Instant::now();
        let mut queue = FragmentQueue::new(LIMITS);
        queue.start_fragment(
            FragmentStart {
                header: header(),
                timecode: 1000,
                data: Rope::from(Bytes::from_static(b"A")),
            },
            None,
        );
        let mut cursor = None;
        assert!(
            matches!(queue.next_to_send(1, &mut cursor, 1, false, t0, true), Next::Send(p) if p.len() == 1)
        );
        assert!(matches!(
            queue.next_to_send(1, &mut cursor, 1, false, t0, true),
            Next::Wait
        ));
        queue.push_frame(
            Rope::from(Bytes::from_static(b"B")),
            Duration::from_millis(33),
        );
        assert!(
            matches!(queue.next_to_send(1, &mut cursor, 1, false, t0, true), Next::Send(p) if p == [Bytes::from_static(b"B")])
        );
        queue.end_fragment();
        let mut next = StreamHeader::clone(&header());
        next.generation = 2;
        queue.start_fragment(
            FragmentStart {
                header: Arc::new(next),
                timecode: 2000,
                data: Rope::from(Bytes::from_static(b"C")),
            },
            None,
        );
        assert!(matches!(
            queue.next_to_send(1, &mut cursor, 1, false, t0, true),
            Next::Rotate("the stream header changed")
        ));
        assert_eq!(queue.stats.fragments_sent, 1);
        assert!(matches!(
            queue.next_to_send(2, &mut None, 2, true, t0, true),
            Next::Rotate("connection-rotation reached")
        ));
        assert!(matches!(
            queue.next_to_send(2, &mut None, 2, false, t0, true),
            Next::Send(_)
        ));
    }
}
