// SPDX-License-Identifier: MPL-2.0

//! When uploaded frames arrived (`--record-arrivals`): for measuring a producer's latency from capture to the
//! service. For every PutMedia body, the time its request arrived and its first body byte; for every frame, its
//! track, its producer time and when the last of its bytes arrived. Kept per stream, at most
//! [`MAX_FRAMES`] frames each (the oldest go first); off unless asked for.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::SystemTime;

use serde::Serialize;
use serde_json::{Value, json};

/// Frames kept per stream.
pub const MAX_FRAMES: usize = 1_000_000;

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Upload {
    /// When the request head arrived, µs since the epoch.
    pub request_us: u64,
    /// When its first body byte arrived.
    pub first_body_byte_us: Option<u64>,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct FrameArrival {
    pub track: u64,
    /// The frame's producer time (its cluster's producer timestamp plus its block's offset), ms since the epoch.
    pub producer_ms: i64,
    /// When the last byte of the frame arrived, µs since the epoch.
    pub arrived_us: u64,
}

#[derive(Debug, Default)]
struct StreamArrivals {
    uploads: Vec<Upload>,
    frames: VecDeque<FrameArrival>,
}

/// The log; records nothing when disabled.
#[derive(Debug, Default)]
pub struct Arrivals {
    enabled: bool,
    streams: Mutex<HashMap<String, StreamArrivals>>,
}

pub fn epoch_us(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros() as u64
}

impl Arrivals {
    pub fn new(enabled: bool) -> Arrivals {
        Arrivals {
            enabled,
            streams: Mutex::default(),
        }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    fn with(&self, stream: &str, f: impl FnOnce(&mut StreamArrivals)) {
        if self.enabled {
            f(self
                .streams
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(stream.to_owned())
                .or_default());
        }
    }

    /// A PutMedia request for `stream` arrived; returns its index, for [`first_body_byte`](Self::first_body_byte).
    pub fn upload(&self, stream: &str, at: SystemTime) -> usize {
        let mut index = 0;
        self.with(stream, |s| {
            index = s.uploads.len();
            s.uploads.push(Upload {
                request_us: epoch_us(at),
                first_body_byte_us: None,
            });
        });
        index
    }

    pub fn first_body_byte(&self, stream: &str, upload: usize, at: SystemTime) {
        self.with(stream, |s| {
            if let Some(upload) = s.uploads.get_mut(upload) {
                upload.first_body_byte_us.get_or_insert(epoch_us(at));
            }
        });
    }

    pub fn frame(&self, stream: &str, track: u64, producer_ms: i64, at: SystemTime) {
        self.with(stream, |s| {
            if s.frames.len() == MAX_FRAMES {
                s.frames.pop_front();
            }
            s.frames.push_back(FrameArrival {
                track,
                producer_ms,
                arrived_us: epoch_us(at),
            });
        });
    }

    /// The admin listing: `{"enabled", "uploads": [...], "frames": [...]}`.
    pub fn list(&self, stream: &str) -> Value {
        let streams = self.streams.lock().unwrap_or_else(|e| e.into_inner());
        let (uploads, frames) = streams.get(stream).map_or((Vec::new(), Vec::new()), |s| {
            (
                s.uploads.clone(),
                s.frames.iter().copied().collect::<Vec<_>>(),
            )
        });
        json!({ "enabled": self.enabled, "uploads": uploads, "frames": frames })
    }

    pub fn clear(&self) {
        self.streams
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }
}
