// SPDX-License-Identifier: MPL-2.0

//! GetMedia (KVS-PROTOCOL.md §3): a long-lived chunked response with one complete Matroska document per
//! fragment, in the element layout of the service's recorded output (`tests/fixtures/getmedia/`):
//!
//! ```text
//! EBML header (the producer's) | Segment, unknown size (8-byte form) | the producer's header elements
//! | Tags: FRAGMENT_NUMBER, SERVER_TIMESTAMP, PRODUCER_TIMESTAMP | the Cluster as ingested
//! | the fragment's own Tags | Tags: MILLIS_BEHIND_NOW, CONTINUATION_TOKEN
//! ```
//!
//! Live tailing: a fragment still being ingested is sent as its frames arrive (each complete Cluster child is
//! written as soon as PutMedia has it), so a viewer sees frames with ingest latency rather than one fragment
//! duration later. The session ends after 3 s with nothing new to send, as the service's does.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use serde::Deserialize;
use tokio::sync::mpsc;

use crate::error::ApiError;
use crate::faults::{Close, ConnectionFaults, ConnectionKill, Pacer};
use crate::media::{Fragment, FragmentState, MediaStore};
use crate::store::{Store, epoch_millis};
use kvs_mkv::ebml::{UNKNOWN_SIZE_8, id, write_id};
use kvs_mkv::tags::{self, SimpleTag, write_tags};

/// A session ends after this long with nothing new to send.
pub const IDLE_END: Duration = Duration::from_secs(3);

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct GetMediaRequest {
    pub stream_name: Option<String>,
    #[serde(rename = "StreamARN")]
    pub stream_arn: Option<String>,
    pub start_selector: Option<StartSelector>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct StartSelector {
    pub start_selector_type: Option<String>,
    pub after_fragment_number: Option<String>,
    pub start_timestamp: Option<f64>,
    pub continuation_token: Option<String>,
}

/// Where a GetMedia session starts.
#[derive(Debug, Clone, PartialEq)]
pub enum Start {
    Now,
    Earliest,
    /// Starts with this fragment (inclusive: see the emulator README).
    FragmentNumber(String),
    ServerTimestamp(i64),
    ProducerTimestamp(i64),
    /// Starts with the fragment after the one whose end carried this token.
    ContinuationToken(String),
}

/// Validates a GetMedia request's StartSelector.
pub fn parse_start(selector: Option<&StartSelector>) -> Result<Start, ApiError> {
    let selector =
        selector.ok_or_else(|| ApiError::invalid_argument("StartSelector must be specified."))?;
    let kind = selector.start_selector_type.as_deref().ok_or_else(|| {
        ApiError::invalid_argument("StartSelector.StartSelectorType must be specified.")
    })?;
    let timestamp_ms = || -> Result<i64, ApiError> {
        let seconds = selector.start_timestamp.ok_or_else(|| {
            ApiError::invalid_argument(format!(
                "StartTimestamp must be specified for StartSelectorType {kind}."
            ))
        })?;
        Ok((seconds * 1000.0).round() as i64)
    };
    let digits = |value: Option<&String>, field: &str| -> Result<String, ApiError> {
        let value = value.ok_or_else(|| {
            ApiError::invalid_argument(format!(
                "{field} must be specified for StartSelectorType {kind}."
            ))
        })?;
        let valid_number =
            !value.is_empty() && value.len() <= 128 && value.bytes().all(|b| b.is_ascii_digit());
        if !valid_number {
            return Err(ApiError::invalid_argument(format!(
                "Invalid {field} {value:?}."
            )));
        }
        Ok(value.clone())
    };
    Ok(match kind {
        "NOW" => Start::Now,
        "EARLIEST" => Start::Earliest,
        "FRAGMENT_NUMBER" => Start::FragmentNumber(digits(
            selector.after_fragment_number.as_ref(),
            "AfterFragmentNumber",
        )?),
        "SERVER_TIMESTAMP" => Start::ServerTimestamp(timestamp_ms()?),
        "PRODUCER_TIMESTAMP" => Start::ProducerTimestamp(timestamp_ms()?),
        "CONTINUATION_TOKEN" => Start::ContinuationToken(digits(
            selector.continuation_token.as_ref(),
            "ContinuationToken",
        )?),
        other => {
            return Err(ApiError::invalid_argument(format!(
                "Invalid StartSelectorType {other:?}."
            )));
        }
    })
}

/// The sequence number of the first fragment to send, or an error when the start point does not exist.
/// `None` means "the next fragment to arrive".
pub fn start_sequence(fragments: &[Fragment], start: &Start) -> Result<Option<u64>, ApiError> {
    let usable = || {
        fragments
            .iter()
            .filter(|f| f.state != FragmentState::Aborted)
    };
    let not_found =
        |what: &str| ApiError::resource_not_found(format!("The requested {what} was not found."));
    Ok(match start {
        Start::Earliest => usable().next().map(|f| f.sequence),
        Start::Now => usable()
            .find(|f| f.state == FragmentState::Ingesting)
            .map(|f| f.sequence),
        Start::FragmentNumber(number) => Some(
            usable()
                .find(|f| &f.number == number)
                .ok_or_else(|| not_found("fragment"))?
                .sequence,
        ),
        Start::ContinuationToken(token) => {
            let after = fragments
                .iter()
                .find(|f| &f.number == token)
                .ok_or_else(|| not_found("continuation token"))?;
            usable()
                .find(|f| f.sequence > after.sequence)
                .map(|f| f.sequence)
        }
        Start::ServerTimestamp(ms) => usable()
            .find(|f| f.server_ms + f.duration_ms >= *ms)
            .map(|f| f.sequence),
        Start::ProducerTimestamp(ms) => usable()
            .find(|f| f.producer_ms + f.duration_ms.max(0) >= *ms)
            .map(|f| f.sequence),
    })
}

/// Seconds with three decimals, as the service writes timestamps in tags.
pub fn seconds_text(ms: i64) -> String {
    format!("{}.{:03}", ms.div_euclid(1000), ms.rem_euclid(1000))
}

/// The bytes before a fragment's Cluster: EBML header, Segment start, producer header, AWS fragment tags.
pub fn fragment_prefix(fragment: &Fragment, server_tag: &str, producer_tag: &str) -> Bytes {
    let mut out = Vec::with_capacity(1024);
    out.extend_from_slice(&fragment.ebml_header);
    write_id(&mut out, id::SEGMENT);
    out.extend_from_slice(&UNKNOWN_SIZE_8);
    for element in fragment.header.iter() {
        out.extend_from_slice(element);
    }
    write_tags(
        &mut out,
        &[
            SimpleTag::new(tags::FRAGMENT_NUMBER, fragment.number.clone()),
            SimpleTag::new(server_tag, seconds_text(fragment.server_ms)),
            SimpleTag::new(producer_tag, seconds_text(fragment.producer_ms)),
        ],
        4,
    );
    Bytes::from(out)
}

/// The service's description of a GetMedia error id (API reference), used as AWS_KINESISVIDEO_ERROR_CODE.
pub fn error_description(error_id: u32) -> &'static str {
    match error_id {
        3002 => "Error writing to the stream",
        4000 => "Requested fragment is not found",
        4500 => "Access denied for the stream's KMS key",
        4501 => "Stream's KMS key is disabled",
        4502 => "Validation error on the stream's KMS key",
        4503 => "KMS key specified in the stream is unavailable",
        4504 => "Invalid usage of the KMS key specified in the stream",
        4505 => "Invalid state of the KMS key specified in the stream",
        4506 => "Unable to find the KMS key specified in the stream",
        _ => "Internal error",
    }
}

/// An error chunk: the fragment's EBML header, a Segment, and Tags with FRAGMENT_NUMBER, ERROR_CODE and
/// ERROR_ID (no timestamps: that is how readers such as the Java parser tell an error chunk).
pub fn error_chunk(fragment: &Fragment, error_id: u32) -> Bytes {
    let mut out = Vec::new();
    out.extend_from_slice(&fragment.ebml_header);
    write_id(&mut out, id::SEGMENT);
    out.extend_from_slice(&UNKNOWN_SIZE_8);
    write_tags(
        &mut out,
        &[
            SimpleTag::new(tags::FRAGMENT_NUMBER, fragment.number.clone()),
            SimpleTag::new(tags::ERROR_CODE, error_description(error_id)),
            SimpleTag::new(tags::ERROR_ID, error_id.to_string()),
        ],
        4,
    );
    Bytes::from(out)
}

/// The bytes after a fragment's Cluster: its own tags, then MILLIS_BEHIND_NOW and CONTINUATION_TOKEN.
pub fn fragment_suffix(fragment: &Fragment, with_session_tags: bool) -> Bytes {
    let mut out = Vec::new();
    for tags in &fragment.tags {
        out.extend_from_slice(tags);
    }
    if with_session_tags {
        let behind = epoch_millis(SystemTime::now()) as i64 - fragment.server_ms;
        write_tags(
            &mut out,
            &[
                SimpleTag::new(tags::MILLIS_BEHIND_NOW, behind.max(0).to_string()),
                SimpleTag::new(tags::CONTINUATION_TOKEN, fragment.number.clone()),
            ],
            4,
        );
    }
    Bytes::from(out)
}

/// The response side of a GetMedia session, applying the connection's faults.
pub struct Output {
    pub tx: mpsc::Sender<Bytes>,
    pub faults: ConnectionFaults,
    pub kill: Option<ConnectionKill>,
    sent: u64,
    fragments: u64,
    pacer: Pacer,
    /// The service's bandwidth limit for the connection, bytes a second.
    limit: Option<u64>,
}

impl Output {
    pub fn new(
        tx: mpsc::Sender<Bytes>,
        faults: ConnectionFaults,
        kill: Option<ConnectionKill>,
    ) -> Output {
        Output {
            tx,
            faults,
            kill,
            sent: 0,
            fragments: 0,
            pacer: Pacer::default(),
            limit: None,
        }
    }

    /// Sends at most `bytes_per_second` (a throttle fault may slow it further).
    pub fn limited(mut self, bytes_per_second: Option<u64>) -> Output {
        self.limit = bytes_per_second;
        self
    }

    /// Drops the connection, and waits until it is gone so that the response cannot end cleanly first.
    async fn drop_connection(&self, how: Close) {
        if let Some(kill) = &self.kill {
            kill.close(how);
            let _ = tokio::time::timeout(Duration::from_secs(5), self.tx.closed()).await;
        }
    }

    /// Counts a fragment about to be sent; false when a fault drops the connection or ends the session here.
    async fn begin_fragment(&mut self, fragment: &Fragment) -> bool {
        self.fragments += 1;
        if let Some((_, how, _)) = self
            .faults
            .drop_at_fragment
            .filter(|(k, _, _)| *k == self.fragments)
        {
            self.faults.recorder.fired("drop_at_fragment");
            self.drop_connection(how).await;
            return false;
        }
        if self.faults.garble_media == Some(self.fragments) {
            self.faults.recorder.fired("garble_media");
            if !self.send(Bytes::from_static(&[0u8; 64])).await {
                return false;
            }
        }
        if let Some((_, error_id)) = self.faults.error_tag.filter(|(k, _)| *k == self.fragments) {
            self.faults.recorder.fired("error_tag");
            let _ = self.send(error_chunk(fragment, error_id)).await;
            return false;
        }
        true
    }

    /// Sends bytes; false when the client is gone or a fault ended the session (dropped the connection, ended
    /// the response, stalled it).
    pub async fn send(&mut self, mut data: Bytes) -> bool {
        // The first fault whose byte offset falls in this piece cuts it there.
        let end = self.sent + data.len() as u64;
        let cut = [
            self.faults.drop_after_bytes.map(|(at, _)| at),
            self.faults.end_response_after_bytes,
            self.faults.stall,
        ]
        .into_iter()
        .flatten()
        .filter(|at| *at >= self.sent && *at <= end)
        .min();
        if let Some(at) = cut {
            data.truncate((at - self.sent) as usize);
        }
        self.sent += data.len() as u64;
        let paced = data.len();
        if !data.is_empty() && self.tx.send(data).await.is_err() {
            return false;
        }
        if self.faults.bytes_per_second.is_some() {
            self.faults.recorder.fired("throttle");
        }
        let rate = match (self.faults.bytes_per_second, self.limit) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.pacer.pace(rate, paced).await;
        let Some(at) = cut else { return true };
        if let Some((_, how)) = self.faults.drop_after_bytes.filter(|(a, _)| *a == at) {
            self.faults.recorder.fired("drop_after_bytes");
            // Let the connection write what was sent, then drop it.
            tokio::time::sleep(Duration::from_millis(50)).await;
            self.drop_connection(how).await;
        } else if self.faults.stall == Some(at) {
            self.faults.recorder.fired("stall");
            // Nothing more, and the connection stays open until the client gives up.
            self.tx.closed().await;
        } else {
            // end_response_after_bytes: returning false ends the session, and with it the response.
            self.faults.recorder.fired("end_response_after_bytes");
        }
        false
    }
}

/// Sends a GetMedia session's bytes into `out` until nothing new arrives for `idle_end`, the stream goes
/// away, or the client disconnects.
pub async fn stream_session(
    store: Arc<Store>,
    media: Arc<MediaStore>,
    arn: String,
    first: Option<u64>,
    idle_end: Duration,
    mut out: Output,
) {
    let mut changes = media.subscribe();
    // `next`: the sequence of the next fragment to send; None = the first one that arrives after now.
    let mut next = first;
    let floor = media.lock().get(&arn).map_or(0, |m| m.next_sequence);
    loop {
        // Find the fragment to send (`None`: the stream has no media yet).
        let found: Option<Option<u64>> = {
            let streams = media.lock();
            let wanted = next.unwrap_or(floor + 1);
            streams.get(&arn).map(|stream_media| {
                stream_media
                    .fragments
                    .iter()
                    .find(|f| f.sequence >= wanted && f.state != FragmentState::Aborted)
                    .map(|f| f.sequence)
            })
        };
        if found.is_none() && store.lock().find(None, Some(&arn)).is_err() {
            return;
        }
        let Some(sequence) = found.flatten() else {
            if !wait_for_change(&mut changes, idle_end, &out.tx).await {
                return;
            }
            continue;
        };
        if !send_fragment(&media, &arn, sequence, &mut changes, idle_end, &mut out).await {
            return;
        }
        next = Some(sequence + 1);
    }
}

/// Waits until the media changes; false after `limit` with no change, or when the client is gone (so that its
/// session, and its place among the stream's three, ends with the connection).
async fn wait_for_change(
    changes: &mut tokio::sync::watch::Receiver<u64>,
    limit: Duration,
    client: &mpsc::Sender<Bytes>,
) -> bool {
    tokio::select! {
        changed = tokio::time::timeout(limit, changes.changed()) => matches!(changed, Ok(Ok(()))),
        _ = client.closed() => false,
    }
}

async fn send_fragment(
    media: &MediaStore,
    arn: &str,
    sequence: u64,
    changes: &mut tokio::sync::watch::Receiver<u64>,
    idle_end: Duration,
    out: &mut Output,
) -> bool {
    let mut sent_chunks = 0usize;
    let mut started = false;
    loop {
        let (start, chunks, state, suffix) = {
            let streams = media.lock();
            let Some(fragment) = streams
                .get(arn)
                .and_then(|m| m.fragments.iter().find(|f| f.sequence == sequence))
            else {
                return false;
            };
            // The prefix, and what an error chunk would need (the fragment without its media).
            let start = (!started).then(|| {
                let head = Fragment {
                    cluster: Vec::new(),
                    tags: Vec::new(),
                    ..fragment.clone()
                };
                (
                    fragment_prefix(fragment, tags::SERVER_TIMESTAMP, tags::PRODUCER_TIMESTAMP),
                    head,
                )
            });
            let chunks: Vec<Bytes> = fragment.cluster[sent_chunks..].to_vec();
            let done = fragment.state != FragmentState::Ingesting;
            let suffix = done.then(|| fragment_suffix(fragment, true));
            (start, chunks, fragment.state, suffix)
        };
        if let Some((prefix, head)) = start {
            if state == FragmentState::Aborted {
                return true; // never started: skip it
            }
            started = true;
            if !out.begin_fragment(&head).await || !out.send(prefix).await {
                return false;
            }
        }
        sent_chunks += chunks.len();
        if !chunks.is_empty() {
            let mut joined = Vec::with_capacity(chunks.iter().map(Bytes::len).sum());
            for chunk in &chunks {
                joined.extend_from_slice(chunk);
            }
            if !out.send(Bytes::from(joined)).await {
                return false;
            }
        }
        if let Some(suffix) = suffix {
            return out.send(suffix).await;
        }
        if !wait_for_change(changes, idle_end, &out.tx).await {
            return false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_print_like_the_service() {
        assert_eq!(seconds_text(1_511_852_109_126), "1511852109.126");
        assert_eq!(seconds_text(5_000), "5.000");
        assert_eq!(seconds_text(7), "0.007");
    }

    #[test]
    fn selectors_are_validated() {
        let selector = |kind: &str| StartSelector {
            start_selector_type: Some(kind.to_owned()),
            after_fragment_number: None,
            start_timestamp: None,
            continuation_token: None,
        };
        assert_eq!(parse_start(Some(&selector("NOW"))).unwrap(), Start::Now);
        assert_eq!(
            parse_start(Some(&selector("EARLIEST"))).unwrap(),
            Start::Earliest
        );
        for kind in [
            "FRAGMENT_NUMBER",
            "SERVER_TIMESTAMP",
            "PRODUCER_TIMESTAMP",
            "CONTINUATION_TOKEN",
            "LATEST",
        ] {
            let err = parse_start(Some(&selector(kind))).unwrap_err();
            assert_eq!(err.name, "InvalidArgumentException", "{kind}");
        }
        let mut with_ts = selector("PRODUCER_TIMESTAMP");
        with_ts.start_timestamp = Some(1511852108.513);
        assert_eq!(
            parse_start(Some(&with_ts)).unwrap(),
            Start::ProducerTimestamp(1_511_852_108_513)
        );
        assert!(parse_start(None).is_err());
    }
}
