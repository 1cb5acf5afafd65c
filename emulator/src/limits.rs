// SPDX-License-Identifier: MPL-2.0

//! The service's documented limits on reading a stream (Developer Guide, "Amazon Kinesis Video Streams service
//! quotas", media and archived-media tables), per stream:
//!
//! | API | calls | at once | bandwidth |
//! |---|---|---|---|
//! | GetMedia | 5 a second | 3 sessions | 25 MB/s a session |
//! | GetMediaForFragmentList | 5 a second | 5 connections | 25 MB/s a connection |
//! | ListFragments | 5 a second | | |
//!
//! A call over the rate gets `ClientLimitExceededException` (HTTP 400), a connection over the count
//! `ConnectionLimitExceededException` (HTTP 400), as the API reference lists them; their messages are the
//! emulator's own (no recorded answer says the service's wording). Bandwidth is held back, not refused. A call
//! is counted when it arrives, whether or not it succeeds. `--no-service-limits` lifts all of them.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use hyper::StatusCode;

use crate::error::ApiError;

/// Calls a second on one stream, for each read API.
pub const CALLS_PER_SECOND: usize = 5;
/// GetMedia sessions open on one stream at once.
pub const GET_MEDIA_SESSIONS: usize = 3;
/// GetMediaForFragmentList connections open on one stream at once.
pub const FRAGMENT_LIST_CONNECTIONS: usize = 5;
/// What one GetMedia session or GetMediaForFragmentList connection sends at most (25 MB/s, 200 Mbps).
pub const BYTES_PER_SECOND: u64 = 25_000_000;

type Key = (&'static str, String);

/// Calls and open connections per (API, stream ARN).
#[derive(Debug, Default)]
pub struct ReadLimits {
    calls: Mutex<HashMap<Key, VecDeque<Instant>>>,
    open: Mutex<HashMap<Key, usize>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl ReadLimits {
    /// Counts a call of `api` on the stream; refuses it when the last second already had [`CALLS_PER_SECOND`].
    pub fn call(&self, api: &'static str, arn: &str) -> Result<(), ApiError> {
        let now = Instant::now();
        let mut calls = lock(&self.calls);
        let recent = calls.entry((api, arn.to_owned())).or_default();
        while recent
            .front()
            .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(1))
        {
            recent.pop_front();
        }
        if recent.len() >= CALLS_PER_SECOND {
            return Err(ApiError::new(
                "ClientLimitExceededException",
                StatusCode::BAD_REQUEST,
                format!(
                    "{api} is limited to {CALLS_PER_SECOND} calls a second on this stream; try again later."
                ),
            ));
        }
        recent.push_back(now);
        Ok(())
    }

    /// Opens a connection of `api` on the stream, held until the slot is dropped; refuses it when `most` are
    /// open.
    pub fn open(
        self: &Arc<Self>,
        api: &'static str,
        arn: &str,
        most: usize,
    ) -> Result<Slot, ApiError> {
        let key = (api, arn.to_owned());
        let mut open = lock(&self.open);
        let count = open.entry(key.clone()).or_default();
        if *count >= most {
            return Err(ApiError::new(
                "ConnectionLimitExceededException",
                StatusCode::BAD_REQUEST,
                format!("At most {most} {api} connections per stream are allowed."),
            ));
        }
        *count += 1;
        Ok(Slot {
            limits: self.clone(),
            key,
        })
    }
}

/// An open read connection; dropping it closes it.
#[derive(Debug)]
pub struct Slot {
    limits: Arc<ReadLimits>,
    key: Key,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(count) = lock(&self.limits.open).get_mut(&self.key) {
            *count = count.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_over_the_rate_and_connections_over_the_count_are_refused() {
        let limits = Arc::new(ReadLimits::default());
        for _ in 0..CALLS_PER_SECOND {
            limits.call("GetMedia", "a").unwrap();
        }
        let refused = limits.call("GetMedia", "a").unwrap_err();
        assert_eq!(refused.name, "ClientLimitExceededException");
        limits.call("GetMedia", "b").unwrap();
        limits.call("ListFragments", "a").unwrap();
        let slots: Vec<Slot> = (0..3)
            .map(|_| limits.open("GetMedia", "a", 3).unwrap())
            .collect();
        let refused = limits.open("GetMedia", "a", 3).unwrap_err();
        assert_eq!(refused.name, "ConnectionLimitExceededException");
        assert_eq!(refused.status, StatusCode::BAD_REQUEST);
        drop(slots);
        limits.open("GetMedia", "a", 3).unwrap();
    }
}
