// SPDX-License-Identifier: MPL-2.0

//! The emulator's own admin API under `/_emulator/` (never signature-checked), for tests and users:
//! inspect stored fragments, import recorded GetMedia output, reset, and inject faults.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use hyper::StatusCode;
use serde_json::{Value, json};

use crate::State;
use crate::error::ApiError;
use crate::faults::Fault;
use crate::media::{Fragment, FragmentState};
use crate::store::NewStream;
use kvs_mkv::ebml::{id, read_uint};
use kvs_mkv::{Event, header, tags};

/// Largest import body (recorded GetMedia output).
pub const MAX_IMPORT_BYTES: usize = 1024 * 1024 * 1024;

/// Runs one admin call: `(method, path after /_emulator/, body)` → JSON.
pub fn handle(
    state: &Arc<State>,
    method: &str,
    path: &str,
    body: &[u8],
) -> Result<Value, ApiError> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (method, parts.as_slice()) {
        ("GET", ["streams", name, "fragments"]) => fragments(state, name),
        ("GET", ["streams", name, "arrivals"]) => {
            stream_arn(state, name)?;
            Ok(state.arrivals.list(name))
        }
        ("POST", ["streams", name, "import"]) => import(state, name, body),
        ("POST", ["streams", name, "drop"]) => {
            #[derive(serde::Deserialize)]
            struct Drop {
                api: String,
                #[serde(default)]
                close: crate::faults::Close,
            }
            let request: Drop = serde_json::from_slice(body)
                .map_err(|e| ApiError::invalid_argument(format!("Invalid drop request: {e}")))?;
            stream_arn(state, name)?;
            Ok(json!({ "dropped": state.faults.drop_open(&request.api, name, request.close) }))
        }
        ("POST", ["reset"]) => {
            state.faults.clear();
            state.media.clear();
            state.arrivals.clear();
            state.store.reset();
            if let Some(dir) = &state.data_dir {
                dir.clear().map_err(|e| {
                    ApiError::internal(format!("cannot clear the data directory: {e}"))
                })?;
            }
            Ok(json!({}))
        }
        ("POST", ["faults"]) => {
            let fault: Fault = serde_json::from_slice(body)
                .map_err(|e| ApiError::invalid_argument(format!("Invalid fault: {e}")))?;
            Ok(serde_json::to_value(state.faults.add(fault)).unwrap_or_default())
        }
        ("GET", ["faults"]) => Ok(json!({
            "faults": state.faults.list(),
            "fired": state.faults.fired(),
        })),
        ("POST", ["credentials"]) => {
            #[derive(serde::Deserialize)]
            struct Key {
                access_key_id: String,
                secret_access_key: String,
            }
            let key: Key = serde_json::from_slice(body)
                .map_err(|e| ApiError::invalid_argument(format!("Invalid access key: {e}")))?;
            verifier(state)?.accept(&key.access_key_id, &key.secret_access_key, None);
            Ok(json!({}))
        }
        ("DELETE", ["credentials", access_key_id]) => {
            if !verifier(state)?.revoke(access_key_id) {
                return Err(ApiError::new(
                    "ResourceNotFoundException",
                    StatusCode::NOT_FOUND,
                    format!("No access key {access_key_id}"),
                ));
            }
            Ok(json!({}))
        }
        ("DELETE", ["faults"]) => {
            state.faults.clear();
            Ok(json!({}))
        }
        _ => Err(ApiError::new(
            "UnknownOperationException",
            StatusCode::NOT_FOUND,
            format!("No admin operation {method} /_emulator/{path}"),
        )),
    }
}

/// The signature verifier, which exists only when the emulator was started with credentials.
fn verifier(state: &State) -> Result<&crate::sigv4::Verifier, ApiError> {
    state.verifier.as_deref().ok_or_else(|| {
        ApiError::invalid_argument(
            "Signatures are not checked: start the emulator with --credentials to manage keys",
        )
    })
}

fn stream_arn(state: &State, name: &str) -> Result<String, ApiError> {
    Ok(state
        .store
        .lock()
        .find(Some(name), None)?
        .stream_arn
        .clone())
}

fn fragments(state: &State, name: &str) -> Result<Value, ApiError> {
    let arn = stream_arn(state, name)?;
    let streams = state.media.lock();
    let list: Vec<Value> = streams
        .get(&arn)
        .map(|media| media.fragments.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|f| {
            let frames: BTreeMap<String, u64> = f
                .frames
                .iter()
                .map(|(track, n)| (track.to_string(), *n))
                .collect();
            json!({
                "number": f.number,
                "producer_timestamp_ms": f.producer_ms,
                "server_timestamp_ms": f.server_ms,
                "size_bytes": f.size,
                "duration_ms": f.duration_ms,
                "frames": frames,
                "state": match f.state {
                    FragmentState::Ingesting => "ingesting",
                    FragmentState::Complete => "complete",
                    FragmentState::Aborted => "aborted",
                },
            })
        })
        .collect();
    Ok(json!({ "fragments": list }))
}

/// Parses a recorded GetMedia response and stores its fragments as if ingested, keeping their fragment numbers
/// and timestamps. The stream is created (retention 24 h) if it does not exist.
fn import(state: &State, name: &str, body: &[u8]) -> Result<Value, ApiError> {
    if state.store.lock().find(Some(name), None).is_err() {
        let new = NewStream {
            stream_name: name.to_owned(),
            data_retention_in_hours: 24,
            ..NewStream::default()
        };
        state.store.create(new)?;
    }
    let arn = stream_arn(state, name)?;
    let (parsed, cut) = parse_capture(body)
        .map_err(|e| ApiError::invalid_argument(format!("Cannot import: {e}")))?;
    let count = parsed.len();
    for fragment in parsed {
        let sequence = state.media.push_complete(&arn, fragment);
        if let Some(dir) = &state.data_dir {
            let stored = state
                .media
                .lock()
                .get(&arn)
                .and_then(|m| m.fragments.iter().find(|f| f.sequence == sequence).cloned());
            if let Some(stored) = stored {
                dir.save_fragment(&arn, &stored)
                    .map_err(|e| ApiError::internal(format!("cannot save: {e}")))?;
            }
        }
    }
    if let Some(dir) = &state.data_dir {
        dir.save_streams(&state.store)
            .map_err(|e| ApiError::internal(format!("cannot save: {e}")))?;
    }
    let mut answer = json!({ "imported": count });
    if let Some(cut) = cut {
        answer["truncated"] = serde_json::to_value(cut).unwrap_or_default();
    }
    Ok(answer)
}

/// Where a capture that stops in the middle of an element was cut, and what of it was kept.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Cut {
    /// The fragment the capture ends in, if its tags were read.
    pub fragment: Option<String>,
    /// Its whole frames, imported (0 when the cut came before its first frame: nothing of it was imported).
    pub frames_kept: u64,
    /// The bytes of the unfinished element at the end, left out.
    pub bytes_left_out: u64,
}

/// One document of a GetMedia recording, being read.
#[derive(Default)]
struct Document {
    ebml: Bytes,
    header: Vec<Bytes>,
    fragment_tags: Option<Vec<tags::SimpleTag>>,
    own_tags: Vec<Bytes>,
    cluster: Vec<Bytes>,
    timecode: u64,
    scale: u64,
    frames: BTreeMap<u64, u64>,
    first_ms: Option<i64>,
    last_ms: i64,
}

fn seconds_to_ms(text: &str) -> Result<i64, String> {
    text.parse::<f64>()
        .map(|s| (s * 1000.0).round() as i64)
        .map_err(|_| format!("bad timestamp {text:?}"))
}

impl Document {
    fn finish(self) -> Result<Option<Fragment>, String> {
        let Some(aws) = self.fragment_tags else {
            return Ok(None);
        };
        if self.cluster.is_empty() {
            return Ok(None);
        }
        let value = |name: &str| aws.iter().find(|t| t.name == name).map(|t| t.value.clone());
        let number = value(tags::FRAGMENT_NUMBER)
            .ok_or("a fragment without AWS_KINESISVIDEO_FRAGMENT_NUMBER")?;
        let server_ms = value(tags::SERVER_TIMESTAMP)
            .map(|v| seconds_to_ms(&v))
            .transpose()?
            .unwrap_or(0);
        let producer_ms = value(tags::PRODUCER_TIMESTAMP)
            .map(|v| seconds_to_ms(&v))
            .transpose()?
            .unwrap_or(0);
        let size = self.cluster.iter().map(|b| b.len() as u64).sum();
        Ok(Some(Fragment {
            number,
            sequence: 0,
            server_ms,
            producer_ms,
            timecode: self.timecode,
            ebml_header: self.ebml,
            header: Arc::new(self.header),
            tags: self.own_tags,
            cluster: self.cluster,
            size,
            duration_ms: self.first_ms.map_or(0, |first| self.last_ms - first),
            frames: self.frames,
            state: FragmentState::Complete,
        }))
    }
}

/// Splits a complete recorded GetMedia response into fragments.
pub fn parse_recording(body: &[u8]) -> Result<Vec<Fragment>, String> {
    match parse_capture(body)? {
        (fragments, None) => Ok(fragments),
        (_, Some(_)) => Err(kvs_mkv::Error::Truncated.to_string()),
    }
}

/// Splits a recorded GetMedia response into fragments. A capture stopped in the middle of an element (as most
/// real captures end) gives every whole fragment, and the whole frames of the one it ends in; the [`Cut`]
/// says what was left out.
pub fn parse_capture(body: &[u8]) -> Result<(Vec<Fragment>, Option<Cut>), String> {
    let mut reader = kvs_mkv::MkvReader::new();
    reader.push(body);
    let mut events = Vec::new();
    while let Some(event) = reader.next_event().map_err(|e| e.to_string())? {
        events.push(event);
    }
    let cut = match reader.finish() {
        Ok(rest) => {
            events.extend(rest);
            None
        }
        Err(kvs_mkv::Error::Truncated) => Some(body.len() as u64 - reader.position()),
        Err(e) => return Err(e.to_string()),
    };
    let mut out = Vec::new();
    let mut doc = Document::default();
    for event in events {
        match event {
            Event::EbmlHeader(el) => {
                if let Some(fragment) = std::mem::take(&mut doc).finish()? {
                    out.push(fragment);
                }
                doc.ebml = el.to_bytes();
                doc.scale = 1_000_000;
            }
            Event::Element(el) if el.id == id::TAGS => {
                let parsed = tags::parse_tags(&el.data()).map_err(|e| e.to_string())?;
                let names: Vec<&str> = parsed.iter().map(|t| t.name.as_str()).collect();
                if names.contains(&tags::FRAGMENT_NUMBER) && doc.cluster.is_empty() {
                    doc.fragment_tags = Some(parsed);
                } else if names.contains(&tags::MILLIS_BEHIND_NOW)
                    || names.contains(&tags::CONTINUATION_TOKEN)
                {
                    // Session tags: written again by GetMedia.
                } else if doc.fragment_tags.is_none() {
                    doc.header.push(el.to_bytes());
                } else {
                    doc.own_tags.push(el.to_bytes());
                }
            }
            Event::Element(el) => {
                if el.id == id::INFO {
                    doc.scale = header::timecode_scale(&el.data()).map_err(|e| e.to_string())?;
                }
                if doc.cluster.is_empty() {
                    doc.header.push(el.to_bytes());
                } else {
                    // E.g. the Cues ffmpeg writes after its last Cluster: the service returns them there.
                    doc.own_tags.push(el.to_bytes());
                }
            }
            Event::ClusterStart { header, .. } => doc.cluster.push(header),
            Event::ClusterChild(el) => {
                if el.id == id::TIMECODE {
                    doc.timecode = read_uint(&el.data()).map_err(|e| e.to_string())?;
                } else if el.id == id::SIMPLE_BLOCK || el.id == id::BLOCK_GROUP {
                    let info = el.block().map_err(|e| e.to_string())?;
                    *doc.frames.entry(info.track).or_default() += 1;
                    let units = doc.timecode as i128 + i128::from(info.relative_timecode);
                    let ms = (units * i128::from(doc.scale) / 1_000_000) as i64;
                    doc.first_ms.get_or_insert(ms);
                    doc.last_ms = doc.last_ms.max(ms);
                }
                doc.cluster.push(el.to_bytes());
            }
            Event::SegmentStart { .. } | Event::ClusterEnd { .. } | Event::SegmentEnd { .. } => {}
        }
    }
    let cut = cut.map(|bytes_left_out| Cut {
        fragment: doc.fragment_tags.as_ref().and_then(|aws| {
            aws.iter()
                .find(|t| t.name == tags::FRAGMENT_NUMBER)
                .map(|t| t.value.clone())
        }),
        frames_kept: doc.frames.values().sum(),
        bytes_left_out,
    });
    // A fragment cut before its first frame is left out.
    if (cut.is_none() || !doc.frames.is_empty())
        && let Some(fragment) = doc.finish()?
    {
        out.push(fragment);
    }
    Ok((out, cut))
}
