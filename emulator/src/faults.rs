//! Fault injection, driven by the admin API (`POST /_emulator/faults`): tests script failures of the
//! service (dropped connections, stalled or withheld ACKs, ERROR ACKs, HTTP errors, slow links) and check
//! that clients survive them.
//!
//! A fault names the API it applies to (`putMedia`, `getMedia`, or a JSON API such as `describeStream`), may
//! be limited to one stream, and fires a set number of times: each matching call (connection) takes one.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

/// What a fault does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Action {
    /// Drops the connection once this many body bytes were received (PutMedia) or sent (GetMedia).
    DropAfterBytes { bytes: u64 },
    /// Drops the connection when the K-th fragment (1-based, counted per connection) begins.
    DropAtFragment { fragment: u64 },
    /// Delays ACKs (all, or those of one EventType) by `ms`; later ACKs wait behind them.
    DelayAcks {
        ms: u64,
        #[serde(default)]
        event: Option<String>,
    },
    /// Never sends ACKs (all, or those of one EventType).
    WithholdAcks {
        #[serde(default)]
        event: Option<String>,
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

#[derive(Debug, Default)]
pub struct Faults {
    state: Mutex<(u64, Vec<Fault>)>,
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
    pub drop_after_bytes: Option<u64>,
    pub drop_at_fragment: Option<u64>,
    pub delay_acks: Vec<(Duration, Option<String>)>,
    pub withhold_acks: Vec<Option<String>>,
    pub error_ack: Option<(u64, u32)>,
    pub bytes_per_second: Option<u64>,
    pub error_tag: Option<(u64, u32)>,
}

impl ConnectionFaults {
    pub fn new(actions: &[Action]) -> ConnectionFaults {
        let mut out = ConnectionFaults::default();
        for action in actions {
            match action {
                Action::DropAfterBytes { bytes } => out.drop_after_bytes = Some(*bytes),
                Action::DropAtFragment { fragment } => out.drop_at_fragment = Some(*fragment),
                Action::DelayAcks { ms, event } => {
                    out.delay_acks.push((Duration::from_millis(*ms), event.clone()))
                }
                Action::WithholdAcks { event } => out.withhold_acks.push(event.clone()),
                Action::ErrorAck { fragment, error_id } => out.error_ack = Some((*fragment, *error_id)),
                Action::Throttle { bytes_per_second } => {
                    out.bytes_per_second = Some((*bytes_per_second).max(1))
                }
                Action::ErrorTag { fragment, error_id } => out.error_tag = Some((*fragment, *error_id)),
                Action::HttpError { .. } => {}
            }
        }
        out
    }

    fn matches(filter: &Option<String>, event: &str) -> bool {
        filter.as_deref().is_none_or(|wanted| wanted == event)
    }

    /// Whether an ACK of this EventType is withheld.
    pub fn withholds(&self, event: &str) -> bool {
        self.withhold_acks.iter().any(|filter| Self::matches(filter, event))
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
        tokio::time::sleep_until(started + Duration::from_secs_f64(self.bytes as f64 / rate as f64)).await;
    }
}

/// Ends a connection from inside a request handler: the connection task drops the socket when notified.
#[derive(Debug, Clone, Default)]
pub struct ConnectionKill(pub Arc<Notify>);

impl ConnectionKill {
    pub fn kill(&self) {
        self.0.notify_one();
    }
}

/// The first HTTP error fault among `actions`, if any.
pub fn http_error(actions: &[Action]) -> Option<crate::error::ApiError> {
    actions.iter().find_map(|action| match action {
        Action::HttpError { status, error, message } => {
            let status =
                hyper::StatusCode::from_u16(*status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
            Some(crate::error::ApiError::new(
                error.clone(),
                status,
                message.clone().unwrap_or_else(|| format!("Injected fault: {error}")),
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
        assert_eq!(fault.action, Action::DropAfterBytes { bytes: 1000 });
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
            Action::WithholdAcks { event: Some("PERSISTED".into()) },
            Action::DelayAcks { ms: 1500, event: None },
        ]);
        assert!(faults.withholds("PERSISTED"));
        assert!(!faults.withholds("RECEIVED"));
        assert_eq!(faults.delay_of("BUFFERING"), Duration::from_millis(1500));
    }
}
