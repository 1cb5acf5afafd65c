// SPDX-License-Identifier: MPL-2.0

//! Fault injection, driven by the admin API (`POST /_emulator/faults`): tests script failures of the
//! service (dropped connections, stalled or withheld ACKs, ERROR ACKs, HTTP errors, slow links) and check
//! that clients survive them.
//!
//! A fault names the API it applies to (`putMedia`, `getMedia`, or a JSON API such as `describeStream`), may
//! be limited to one stream, and applies to a set number of calls: each matching call (connection) takes one.
//! Taking a fault is not firing it: `drop_at_fragment` 5 taken by a connection that ends at fragment 3 never
//! fires. The emulator counts, by kind, the connections in which a fault did what it says (`fired` in
//! `GET /_emulator/faults`), so that a campaign can tell the faults that happened from those it armed.

use std::collections::{BTreeMap, BTreeSet};

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

/// How a dropped connection ends at the TCP level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Close {
    /// The socket is closed as it is: the kernel sends FIN, or RST when received bytes are still unread.
    #[default]
    Drop,
    /// A clean close: FIN in both directions first (`shutdown`), then the socket is closed.
    Fin,
    /// A TCP reset (`SO_LINGER` 0): the peer's next read or write fails with "connection reset".
    Reset,
}

/// What a fault does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Action {
    /// Drops the connection once this many body bytes were received (PutMedia) or sent (GetMedia).
    DropAfterBytes {
        bytes: u64,
        #[serde(default)]
        close: Close,
    },
    /// Drops the connection when the K-th fragment (1-based, counted per connection) begins, or `delay_ms`
    /// after it began (PutMedia: checked as body bytes arrive).
    DropAtFragment {
        fragment: u64,
        #[serde(default)]
        close: Close,
        #[serde(default)]
        delay_ms: u64,
    },
    /// PutMedia: drops the connection right after the ACK `event` of the K-th fragment is written (a reset in the
    /// same millisecond as a PERSISTED).
    DropAfterAck {
        fragment: u64,
        event: String,
        #[serde(default)]
        close: Close,
    },
    /// PutMedia: when the K-th fragment begins, ends the response (the zero-length chunk) and half-closes the
    /// connection, while reading the rest of the body without storing it, as a server whose handler died.
    EndResponse { fragment: u64 },
    /// GetMedia: ends the response cleanly (the zero-length chunk) after this many bytes, in mid-fragment.
    EndResponseAfterBytes { bytes: u64 },
    /// PutMedia: no `100 Continue` before the response head (clients that wait for it wait in vain).
    NoContinue,
    /// PutMedia: stops reading the body when the K-th fragment begins; the connection stays open, the TCP
    /// window fills, nothing is refused and nothing arrives.
    StopReading { fragment: u64 },
    /// GetMedia: stops sending after this many bytes; the connection stays open.
    Stall { bytes: u64 },
    /// PutMedia: each ACK line goes out cut into pieces of this many bytes, one HTTP chunk each.
    SplitAcks { bytes: u64 },
    /// PutMedia: ACK lines go out `count` at a time in one HTTP chunk.
    CoalesceAcks { count: u64 },
    /// PutMedia: the ACK `event` of the K-th fragment is sent garbled (cut JSON, then a newline).
    GarbleAck { fragment: u64, event: String },
    /// PutMedia: before the K-th fragment's BUFFERING, an ACK for a fragment that was never sent.
    UnknownAck { fragment: u64 },
    /// PutMedia: when the K-th fragment begins, the response carries bytes without a newline, endlessly.
    EndlessLine { fragment: u64 },
    /// GetMedia: before the K-th fragment of the session, 64 bytes that are not Matroska, then the stream goes
    /// on (garbage inside a frame could not be told from the frame).
    GarbleMedia { fragment: u64 },
    /// PutMedia and GetMedia: answers with this status, content type and body, not chunked, instead of running
    /// the call (an HTML page from a proxy, a 4xx/5xx that is not JSON, a 200 with a plain body).
    RawResponse {
        status: u16,
        content_type: String,
        body: String,
    },
    /// Delays ACKs (all, or those of one EventType) by `ms`; later ACKs wait behind them.
    DelayAcks {
        ms: u64,
        #[serde(default)]
        event: Option<String>,
    },
    /// Never sends ACKs (all, or those of one EventType), from the K-th fragment of the connection on (all
    /// fragments when absent).
    WithholdAcks {
        #[serde(default)]
        event: Option<String>,
        #[serde(default)]
        from_fragment: Option<u64>,
    },
    /// Answers the call with this HTTP status and error name instead of running it.
    HttpError {
        status: u16,
        error: String,
        #[serde(default)]
        message: Option<String>,
    },
    /// Sends an ERROR ACK with this ErrorId when the K-th fragment (per connection) completes, instead of
    /// RECEIVED/PERSISTED, then ends the connection as the service does.
    ErrorAck { fragment: u64, error_id: u32 },
    /// Limits the connection to this many bytes per second.
    Throttle { bytes_per_second: u64 },
    /// GetMedia: instead of the K-th fragment (per session), an error chunk with this ErrorId, then the
    /// session ends.
    ErrorTag { fragment: u64, error_id: u32 },
}

/// A fault as the admin API takes and lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fault {
    /// `putMedia`, `getMedia`, `listFragments`, `getMediaForFragmentList`, or a control-plane path without the
    /// slash (`describeStream`...).
    pub api: String,
    /// Only calls for this stream name (any stream when absent).
    #[serde(default)]
    pub stream: Option<String>,
    #[serde(flatten)]
    pub action: Action,
    /// How many calls (connections) it applies to.
    #[serde(default = "one")]
    pub times: u32,
    /// Set by the emulator.
    #[serde(default)]
    pub id: u64,
}

fn one() -> u32 {
    1
}

impl Action {
    /// The fault's kind, as the admin API names it.
    pub fn kind(&self) -> &'static str {
        match self {
            Action::DropAfterBytes { .. } => "drop_after_bytes",
            Action::DropAtFragment { .. } => "drop_at_fragment",
            Action::DropAfterAck { .. } => "drop_after_ack",
            Action::EndResponse { .. } => "end_response",
            Action::EndResponseAfterBytes { .. } => "end_response_after_bytes",
            Action::NoContinue => "no_continue",
            Action::StopReading { .. } => "stop_reading",
            Action::Stall { .. } => "stall",
            Action::SplitAcks { .. } => "split_acks",
            Action::CoalesceAcks { .. } => "coalesce_acks",
            Action::GarbleAck { .. } => "garble_ack",
            Action::UnknownAck { .. } => "unknown_ack",
            Action::EndlessLine { .. } => "endless_line",
            Action::GarbleMedia { .. } => "garble_media",
            Action::RawResponse { .. } => "raw_response",
            Action::DelayAcks { .. } => "delay_acks",
            Action::WithholdAcks { .. } => "withhold_acks",
            Action::HttpError { .. } => "http_error",
            Action::ErrorAck { .. } => "error_ack",
            Action::Throttle { .. } => "throttle",
            Action::ErrorTag { .. } => "error_tag",
        }
    }
}

/// How many connections (calls) each kind of fault fired in, by API.
type FiredCounts = Arc<Mutex<BTreeMap<String, BTreeMap<&'static str, u64>>>>;

/// Records the faults that fire in one connection: each kind counts once per connection, however often it acts
/// (every ACK split, every piece throttled).
#[derive(Debug, Default, Clone)]
pub struct Recorder {
    api: String,
    counts: FiredCounts,
    seen: Arc<Mutex<BTreeSet<&'static str>>>,
}

impl Recorder {
    /// The fault of this kind acted.
    pub fn fired(&self, kind: &'static str) {
        if self
            .seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(kind)
        {
            *self
                .counts
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(self.api.clone())
                .or_default()
                .entry(kind)
                .or_default() += 1;
        }
    }
}

#[derive(Debug, Default)]
pub struct Faults {
    state: Mutex<(u64, Vec<Fault>)>,
    fired: FiredCounts,
    /// Open media connections (API, stream), for `POST /_emulator/streams/NAME/drop`.
    open: Mutex<Vec<(String, String, std::sync::Weak<KillState>)>>,
}

impl Faults {
    fn lock(&self) -> MutexGuard<'_, (u64, Vec<Fault>)> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a fault; returns it with its id.
    pub fn add(&self, mut fault: Fault) -> Fault {
        let mut state = self.lock();
        state.0 += 1;
        fault.id = state.0;
        state.1.push(fault.clone());
        fault
    }

    /// The faults still armed.
    pub fn list(&self) -> Vec<Fault> {
        self.lock().1.clone()
    }

    pub fn clear(&self) {
        self.lock().1.clear();
    }

    /// Notes an open media connection, so that it can be dropped on request.
    pub fn register(&self, api: &str, stream: &str, kill: &ConnectionKill) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.retain(|(_, _, weak)| weak.strong_count() > 0);
        open.push((api.to_owned(), stream.to_owned(), Arc::downgrade(&kill.0)));
    }

    /// Drops the open connections of `api` for `stream` the way `close` says; returns how many.
    pub fn drop_open(&self, api: &str, stream: &str, close: Close) -> usize {
        let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let mut count = 0;
        for (a, s, weak) in open.iter() {
            if a == api
                && s == stream
                && let Some(state) = weak.upgrade()
            {
                ConnectionKill(state).close(close);
                count += 1;
            }
        }
        count
    }

    /// How many connections (calls) each kind of fault fired in since the emulator started, by API.
    pub fn fired(&self) -> BTreeMap<String, BTreeMap<&'static str, u64>> {
        self.fired.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// What one connection (call) of `api` records its faults' firing with.
    pub fn recorder(&self, api: &str) -> Recorder {
        Recorder {
            api: api.to_owned(),
            counts: self.fired.clone(),
            seen: Default::default(),
        }
    }

    /// The faults of one connection of `api` taking `actions`, recording what fires.
    pub fn connection(&self, api: &str, actions: &[Action]) -> ConnectionFaults {
        ConnectionFaults {
            recorder: self.recorder(api),
            ..ConnectionFaults::new(actions)
        }
    }

    /// The HTTP error fault among `actions` of a call of `api`, if any (it fires: the call is answered with it).
    pub fn http_error(&self, api: &str, actions: &[Action]) -> Option<crate::error::ApiError> {
        let error = http_error(actions)?;
        self.recorder(api).fired("http_error");
        Some(error)
    }

    /// The raw response fault among `actions` of a call of `api`, if any (it fires: the call is answered with
    /// it).
    pub fn raw_response(
        &self,
        api: &str,
        actions: &[Action],
    ) -> Option<hyper::Response<crate::Body>> {
        let response = raw_response(actions)?;
        self.recorder(api).fired("raw_response");
        Some(response)
    }

    /// The actions that apply to one call of `api` for `stream`; each fault taken counts one use.
    pub fn take(&self, api: &str, stream: Option<&str>) -> Vec<Action> {
        let mut state = self.lock();
        let mut taken = Vec::new();
        for fault in state.1.iter_mut() {
            let stream_matches = match (&fault.stream, stream) {
                (None, _) => true,
                (Some(wanted), Some(actual)) => wanted == actual,
                (Some(_), None) => false,
            };
            if fault.api == api && stream_matches && fault.times > 0 {
                fault.times -= 1;
                taken.push(fault.action.clone());
            }
        }
        state.1.retain(|f| f.times > 0);
        taken
    }
}

/// The faults one connection is subject to, in a form its loop can check cheaply.
#[derive(Debug, Default, Clone)]
pub struct ConnectionFaults {
    pub drop_after_bytes: Option<(u64, Close)>,
    pub drop_at_fragment: Option<(u64, Close, Duration)>,
    pub drop_after_ack: Option<(u64, String, Close)>,
    pub end_response: Option<u64>,
    pub end_response_after_bytes: Option<u64>,
    pub no_continue: bool,
    pub stop_reading: Option<u64>,
    pub stall: Option<u64>,
    pub split_acks: Option<usize>,
    pub coalesce_acks: Option<usize>,
    pub garble_ack: Option<(u64, String)>,
    pub unknown_ack: Option<u64>,
    pub endless_line: Option<u64>,
    pub garble_media: Option<u64>,
    pub delay_acks: Vec<(Duration, Option<String>)>,
    pub withhold_acks: Vec<(Option<String>, u64)>,
    pub error_ack: Option<(u64, u32)>,
    pub bytes_per_second: Option<u64>,
    pub error_tag: Option<(u64, u32)>,
    pub recorder: Recorder,
}

impl ConnectionFaults {
    pub fn new(actions: &[Action]) -> ConnectionFaults {
        let mut out = ConnectionFaults::default();
        for action in actions {
            match action {
                Action::DropAfterBytes { bytes, close } => {
                    out.drop_after_bytes = Some((*bytes, *close))
                }
                Action::DropAtFragment {
                    fragment,
                    close,
                    delay_ms,
                } => {
                    out.drop_at_fragment =
                        Some((*fragment, *close, Duration::from_millis(*delay_ms)))
                }
                Action::DropAfterAck {
                    fragment,
                    event,
                    close,
                } => out.drop_after_ack = Some((*fragment, event.clone(), *close)),
                Action::EndResponse { fragment } => out.end_response = Some(*fragment),
                Action::EndResponseAfterBytes { bytes } => {
                    out.end_response_after_bytes = Some(*bytes)
                }
                Action::NoContinue => out.no_continue = true,
                Action::StopReading { fragment } => out.stop_reading = Some(*fragment),
                Action::Stall { bytes } => out.stall = Some(*bytes),
                Action::SplitAcks { bytes } => out.split_acks = Some((*bytes).max(1) as usize),
                Action::CoalesceAcks { count } => {
                    out.coalesce_acks = Some((*count).max(1) as usize)
                }
                Action::GarbleAck { fragment, event } => {
                    out.garble_ack = Some((*fragment, event.clone()))
                }
                Action::UnknownAck { fragment } => out.unknown_ack = Some(*fragment),
                Action::EndlessLine { fragment } => out.endless_line = Some(*fragment),
                Action::GarbleMedia { fragment } => out.garble_media = Some(*fragment),
                Action::DelayAcks { ms, event } => out
                    .delay_acks
                    .push((Duration::from_millis(*ms), event.clone())),
                Action::WithholdAcks {
                    event,
                    from_fragment,
                } => out
                    .withhold_acks
                    .push((event.clone(), from_fragment.unwrap_or(0))),
                Action::ErrorAck { fragment, error_id } => {
                    out.error_ack = Some((*fragment, *error_id))
                }
                Action::Throttle { bytes_per_second } => {
                    out.bytes_per_second = Some((*bytes_per_second).max(1))
                }
                Action::ErrorTag { fragment, error_id } => {
                    out.error_tag = Some((*fragment, *error_id))
                }
                Action::HttpError { .. } | Action::RawResponse { .. } => {}
            }
        }
        out
    }

    fn matches(filter: &Option<String>, event: &str) -> bool {
        filter.as_deref().is_none_or(|wanted| wanted == event)
    }

    /// Whether an ACK of this EventType about the `index`-th fragment (0: none) is withheld.
    pub fn withholds(&self, event: &str, index: u64) -> bool {
        self.withhold_acks
            .iter()
            .any(|(filter, from)| index >= *from && Self::matches(filter, event))
    }

    /// How long an ACK of this EventType is delayed.
    pub fn delay_of(&self, event: &str) -> Duration {
        self.delay_acks
            .iter()
            .filter(|(_, filter)| Self::matches(filter, event))
            .map(|(d, _)| *d)
            .max()
            .unwrap_or_default()
    }
}

/// Holds a connection to its throttle rate over its whole life: after each piece it waits until the time all
/// bytes so far are due, so timer granularity (a millisecond per sleep) does not add up over many pieces.
#[derive(Debug, Default)]
pub struct Pacer {
    started: Option<tokio::time::Instant>,
    bytes: u64,
}

impl Pacer {
    /// Counts `bytes` more; waits until they are due at `bytes_per_second` (no wait without a throttle).
    pub async fn pace(&mut self, bytes_per_second: Option<u64>, bytes: usize) {
        let Some(rate) = bytes_per_second else { return };
        let started = *self.started.get_or_insert_with(tokio::time::Instant::now);
        self.bytes += bytes as u64;
        tokio::time::sleep_until(
            started + Duration::from_secs_f64(self.bytes as f64 / rate as f64),
        )
        .await;
    }
}

/// Ends a connection from inside a request handler. The connection task (`serve_connection`) holds the socket's
/// descriptor and acts on the request: a close (FIN or reset) drops the connection, a half-close only ends the
/// sending side.
#[derive(Debug, Clone, Default)]
pub struct ConnectionKill(pub Arc<KillState>);

#[derive(Debug, Default)]
pub struct KillState {
    pub notify: Notify,
    pub how: Mutex<Close>,
    /// The TCP socket's descriptor, while the connection task holds the socket.
    pub fd: Mutex<Option<std::os::fd::RawFd>>,
}

impl ConnectionKill {
    /// Drops the connection with a FIN, a reset or a plain close.
    pub fn close(&self, how: Close) {
        *self.0.how.lock().unwrap_or_else(|e| e.into_inner()) = how;
        self.0.notify.notify_one();
    }

    /// Ends the sending side only (FIN towards the client); the connection still reads.
    pub fn half_close(&self) {
        self.with_socket(|socket| socket.shutdown(std::net::Shutdown::Write));
    }

    /// Prepares the socket for `how` just before the connection task drops it.
    pub fn prepare_close(&self, how: Close) {
        match how {
            Close::Drop => {}
            Close::Fin => self.with_socket(|socket| socket.shutdown(std::net::Shutdown::Both)),
            Close::Reset => self.with_socket(|socket| socket.set_linger(Some(Duration::ZERO))),
        }
    }

    pub fn how(&self) -> Close {
        *self.0.how.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn with_socket(&self, action: impl FnOnce(socket2::SockRef<'_>) -> std::io::Result<()>) {
        // The lock is held while the socket is used: the connection task clears `fd` under it before it drops
        // the socket.
        let guard = self.0.fd.lock().unwrap_or_else(|e| e.into_inner());
        let Some(fd) = *guard else { return };
        // SAFETY: `fd` is set only while the connection task owns the open socket (see above).
        let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        if let Err(err) = action(socket2::SockRef::from(&borrowed)) {
            eprintln!("kvs-emulator: socket fault not applied: {err}");
        }
    }
}

/// The raw response fault among `actions`, if any: status, content type and body.
fn raw_response(actions: &[Action]) -> Option<hyper::Response<crate::Body>> {
    actions.iter().find_map(|action| match action {
        Action::RawResponse {
            status,
            content_type,
            body,
        } => {
            use http_body_util::BodyExt;
            let mut response = hyper::Response::new(
                http_body_util::Full::new(bytes::Bytes::from(body.clone())).boxed(),
            );
            *response.status_mut() = hyper::StatusCode::from_u16(*status)
                .unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
            if let Ok(value) = hyper::header::HeaderValue::from_str(content_type) {
                response.headers_mut().insert("content-type", value);
            }
            Some(response)
        }
        _ => None,
    })
}

/// The first HTTP error fault among `actions`, if any.
fn http_error(actions: &[Action]) -> Option<crate::error::ApiError> {
    actions.iter().find_map(|action| match action {
        Action::HttpError {
            status,
            error,
            message,
        } => {
            let status = hyper::StatusCode::from_u16(*status)
                .unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
            Some(crate::error::ApiError::new(
                error.clone(),
                status,
                message
                    .clone()
                    .unwrap_or_else(|| format!("Injected fault: {error}")),
            ))
        }
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_parse_fire_a_set_number_of_times_and_match_streams() {
        let faults = Faults::default();
        let fault: Fault = serde_json::from_str(
            r#"{"api":"putMedia","stream":"cam1","kind":"drop_after_bytes","bytes":1000,"times":2}"#,
        )
        .unwrap();
        assert_eq!(
            fault.action,
            Action::DropAfterBytes {
                bytes: 1000,
                close: Close::Drop
            }
        );
        faults.add(fault);
        assert!(faults.take("putMedia", Some("cam2")).is_empty());
        assert!(faults.take("getMedia", Some("cam1")).is_empty());
        assert_eq!(faults.take("putMedia", Some("cam1")).len(), 1);
        assert_eq!(faults.take("putMedia", Some("cam1")).len(), 1);
        assert!(faults.take("putMedia", Some("cam1")).is_empty());
        assert!(faults.list().is_empty());
        assert!(serde_json::from_str::<Fault>(r#"{"api":"putMedia","kind":"explode"}"#).is_err());
    }

    #[test]
    fn connection_faults_filter_acks_by_event() {
        let faults = ConnectionFaults::new(&[
            Action::WithholdAcks {
                event: Some("PERSISTED".into()),
                from_fragment: None,
            },
            Action::DelayAcks {
                ms: 1500,
                event: None,
            },
        ]);
        assert!(faults.withholds("PERSISTED", 1));
        assert!(!faults.withholds("RECEIVED", 1));
        assert_eq!(faults.delay_of("BUFFERING"), Duration::from_millis(1500));
    }
}
