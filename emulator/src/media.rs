// SPDX-License-Identifier: MPL-2.0

//! Stored media: every fragment of every stream, as ingested by PutMedia (or imported), with what
//! GetMedia, ListFragments and the admin API need. Fragments still being ingested are visible, so live
//! GetMedia readers can follow them frame by frame.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use tokio::sync::watch;

/// A fragment number as KVS mints them (KVS-PROTOCOL.md §2.4): a 160-bit integer holding a constant
/// marker, the per-stream sequence, the server timestamp in ms and 28 random bits, printed in decimal.
pub fn mint_fragment_number(sequence: u64, server_ms: u64, random28: u32) -> String {
    // Three 64-bit limbs, most significant first: bits 128..191, 64..127, 0..63.
    let value: [u64; 3] = {
        let low = (u128::from(server_ms) << 28)
            | u128::from(random28 & 0x0FFF_FFFF)
            | (u128::from(sequence) << 92);
        let high = (1u64 << 28) | (sequence >> 36);
        [high, (low >> 64) as u64, low as u64]
    };
    to_decimal(value)
}

fn to_decimal(mut limbs: [u64; 3]) -> String {
    const CHUNK: u64 = 10_000_000_000_000_000_000; // 10^19
    let mut chunks = Vec::new();
    while limbs.iter().any(|&l| l != 0) {
        let mut remainder: u128 = 0;
        for limb in limbs.iter_mut() {
            let current = (remainder << 64) | u128::from(*limb);
            *limb = (current / u128::from(CHUNK)) as u64;
            remainder = current % u128::from(CHUNK);
        }
        chunks.push(remainder as u64);
    }
    let mut out = chunks
        .pop()
        .map_or_else(|| "0".to_owned(), |c| c.to_string());
    while let Some(chunk) = chunks.pop() {
        out.push_str(&format!("{chunk:019}"));
    }
    out
}

/// How long fragments of a stream with no retention stay readable (the service's live buffer: 5 minutes).
pub const LIVE_BUFFER_MS: i64 = 5 * 60 * 1000;

/// One fragment. Cluster bytes are kept as the elements they arrived in, so nothing is copied again.
#[derive(Debug, Clone)]
pub struct Fragment {
    pub number: String,
    pub sequence: u64,
    pub server_ms: i64,
    pub producer_ms: i64,
    /// The Cluster Timecode as sent.
    pub timecode: u64,
    /// The EBML header of the upload this fragment came in.
    pub ebml_header: Bytes,
    /// The upload's level-1 header elements (Info, Tracks...), as sent.
    pub header: Arc<Vec<Bytes>>,
    /// Tags elements that preceded the Cluster in the upload (user metadata); GetMedia writes them after the
    /// Cluster. Imported fragments also keep here any other element that followed their Cluster (Cues).
    pub tags: Vec<Bytes>,
    /// The Cluster: its ID and size, then its children.
    pub cluster: Vec<Bytes>,
    pub size: u64,
    pub duration_ms: i64,
    pub frames: BTreeMap<u64, u64>,
    pub state: FragmentState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FragmentState {
    /// Still arriving.
    Ingesting,
    /// Complete and stored.
    Complete,
    /// The upload ended inside it: not stored (live readers that followed it see it end early).
    Aborted,
}

/// The media of one stream.
#[derive(Debug, Default)]
pub struct StreamMedia {
    pub fragments: Vec<Fragment>,
    pub next_sequence: u64,
}

impl StreamMedia {
    /// The fragment with this sequence number (fragments are kept in sequence order).
    pub fn get(&self, sequence: u64) -> Option<&Fragment> {
        self.fragments
            .binary_search_by_key(&sequence, |f| f.sequence)
            .ok()
            .map(|i| &self.fragments[i])
    }

    pub fn get_mut(&mut self, sequence: u64) -> Option<&mut Fragment> {
        self.fragments
            .binary_search_by_key(&sequence, |f| f.sequence)
            .ok()
            .map(|i| &mut self.fragments[i])
    }

    /// Drops fragments that started before `before_ms` (server time), oldest first, as the service drops
    /// data past the stream's retention; fragments still being ingested stay.
    pub fn expire(&mut self, before_ms: i64) -> Vec<u64> {
        let count = self
            .fragments
            .iter()
            .take_while(|f| f.server_ms < before_ms && f.state != FragmentState::Ingesting)
            .count();
        self.fragments.drain(..count).map(|f| f.sequence).collect()
    }
}

/// All streams' media, keyed by stream ARN, plus a change counter that live readers wait on.
#[derive(Debug)]
pub struct MediaStore {
    streams: Mutex<HashMap<String, StreamMedia>>,
    changed: watch::Sender<u64>,
}

impl Default for MediaStore {
    fn default() -> Self {
        MediaStore {
            streams: Mutex::new(HashMap::new()),
            changed: watch::channel(0).0,
        }
    }
}

impl MediaStore {
    pub fn lock(&self) -> MutexGuard<'_, HashMap<String, StreamMedia>> {
        self.streams.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wakes every live reader.
    pub fn notify(&self) {
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// A receiver that changes whenever any stream's media changes.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Drops the stream's fragments older than its retention (0 hours: the 5 minutes the service keeps for
    /// live readers); returns the sequence numbers dropped.
    pub fn expire(&self, arn: &str, retention_hours: u32, now_ms: i64) -> Vec<u64> {
        let window_ms = if retention_hours == 0 {
            LIVE_BUFFER_MS
        } else {
            i64::from(retention_hours) * 3_600_000
        };
        let dropped = self
            .lock()
            .get_mut(arn)
            .map(|m| m.expire(now_ms - window_ms))
            .unwrap_or_default();
        if !dropped.is_empty() {
            self.notify();
        }
        dropped
    }

    /// Forgets a stream's media (DeleteStream, reset).
    pub fn remove(&self, arn: &str) {
        self.lock().remove(arn);
        self.notify();
    }

    pub fn clear(&self) {
        self.lock().clear();
        self.notify();
    }

    /// Starts a fragment and returns its sequence number and fragment number.
    #[allow(clippy::too_many_arguments)]
    pub fn start_fragment(
        &self,
        arn: &str,
        server_ms: i64,
        producer_ms: i64,
        timecode: u64,
        ebml_header: Bytes,
        header: Arc<Vec<Bytes>>,
        tags: Vec<Bytes>,
        cluster: Vec<Bytes>,
    ) -> (u64, String) {
        let mut streams = self.lock();
        let media = streams.entry(arn.to_owned()).or_default();
        media.next_sequence += 1;
        let sequence = media.next_sequence;
        let number = mint_fragment_number(sequence, server_ms.max(0) as u64, rand::random::<u32>());
        let size = cluster.iter().map(|b| b.len() as u64).sum();
        media.fragments.push(Fragment {
            number: number.clone(),
            sequence,
            server_ms,
            producer_ms,
            timecode,
            ebml_header,
            header,
            tags,
            cluster,
            size,
            duration_ms: 0,
            frames: BTreeMap::new(),
            state: FragmentState::Ingesting,
        });
        drop(streams);
        self.notify();
        (sequence, number)
    }

    /// Stores a complete fragment (imported or loaded from `--data-dir`): it keeps its sequence number if it
    /// has one (else gets the next), and gets a fresh fragment number if it has none.
    pub fn push_complete(&self, arn: &str, mut fragment: Fragment) -> u64 {
        let mut streams = self.lock();
        let media = streams.entry(arn.to_owned()).or_default();
        if fragment.sequence == 0 {
            fragment.sequence = media.next_sequence + 1;
        }
        media.next_sequence = media.next_sequence.max(fragment.sequence);
        if fragment.number.is_empty() {
            fragment.number = mint_fragment_number(
                fragment.sequence,
                fragment.server_ms.max(0) as u64,
                rand::random::<u32>(),
            );
        }
        let sequence = fragment.sequence;
        media.fragments.push(fragment);
        drop(streams);
        self.notify();
        sequence
    }

    /// Appends a Cluster child to an ingesting fragment.
    pub fn append(&self, arn: &str, sequence: u64, data: Bytes) {
        if let Some(fragment) = self.lock().get_mut(arn).and_then(|m| m.get_mut(sequence)) {
            fragment.size += data.len() as u64;
            fragment.cluster.push(data);
        }
        self.notify();
    }

    /// Marks a fragment complete (or aborted).
    pub fn finish_fragment(
        &self,
        arn: &str,
        sequence: u64,
        state: FragmentState,
        duration_ms: i64,
        frames: BTreeMap<u64, u64>,
    ) {
        if let Some(fragment) = self.lock().get_mut(arn).and_then(|m| m.get_mut(sequence)) {
            fragment.state = state;
            fragment.duration_ms = duration_ms;
            fragment.frames = frames;
        }
        self.notify();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fragment_numbers_decode_like_the_service_ones() {
        // 91343852333181432392682062607743920146159169392 = seq 1, server ms 1511852109126, rand 0xFEEEF70.
        assert_eq!(
            mint_fragment_number(1, 1_511_852_109_126, 0x0FEE_EF70),
            "91343852333181432392682062607743920146159169392"
        );
    }

    #[test]
    fn fragments_past_retention_expire_oldest_first() {
        let store = MediaStore::default();
        let now = 10 * 3_600_000;
        for (i, server_ms) in [now - 3 * 3_600_000, now - 2 * 3_600_000 + 1, now - 60_000]
            .into_iter()
            .enumerate()
        {
            let (sequence, _) = store.start_fragment(
                "arn",
                server_ms,
                0,
                i as u64,
                Bytes::new(),
                Arc::default(),
                vec![],
                vec![],
            );
            store.finish_fragment("arn", sequence, FragmentState::Complete, 0, BTreeMap::new());
        }
        assert_eq!(store.expire("arn", 2, now), [1]);
        assert_eq!(store.expire("arn", 2, now), Vec::<u64>::new());
        assert_eq!(store.expire("arn", 0, now), [2], "no retention: 5 minutes");
        let streams = store.lock();
        assert_eq!(streams["arn"].fragments.len(), 1);
        assert!(streams["arn"].get(3).is_some() && streams["arn"].get(1).is_none());
    }

    #[test]
    fn fragment_numbers_increase_with_the_sequence() {
        let a = mint_fragment_number(116_001, 1_700_000_000_000, 0x0FFF_FFFF);
        let b = mint_fragment_number(116_002, 1_600_000_000_000, 0);
        assert_eq!(a.len(), 47);
        assert_eq!(b.len(), 47);
        assert!(a < b, "{a} !< {b}");
    }
}
