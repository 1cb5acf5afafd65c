// SPDX-License-Identifier: MPL-2.0

//! Archived media (KVS-PROTOCOL.md §4): ListFragments and GetMediaForFragmentList over the stored fragments.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::getmedia::{fragment_prefix, fragment_suffix};
use crate::media::{Fragment, FragmentState};
use kvs_mkv::tags;

/// Largest and default ListFragments page (the model's MaxResults range is 1..1000).
pub const MAX_LIST_FRAGMENTS: usize = 1000;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct ListFragmentsRequest {
    pub stream_name: Option<String>,
    #[serde(rename = "StreamARN")]
    pub stream_arn: Option<String>,
    pub max_results: Option<i64>,
    pub next_token: Option<String>,
    pub fragment_selector: Option<FragmentSelector>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct FragmentSelector {
    pub fragment_selector_type: Option<String>,
    pub timestamp_range: Option<TimestampRange>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TimestampRange {
    pub start_timestamp: Option<f64>,
    pub end_timestamp: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct GetMediaForFragmentListRequest {
    pub stream_name: Option<String>,
    #[serde(rename = "StreamARN")]
    pub stream_arn: Option<String>,
    pub fragments: Option<Vec<String>>,
}

/// Which timestamp a range applies to, and the inclusive range in ms.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Range {
    All,
    Producer(i64, i64),
    Server(i64, i64),
}

fn parse_range(selector: Option<&FragmentSelector>) -> Result<Range, ApiError> {
    let Some(selector) = selector else {
        return Ok(Range::All);
    };
    let kind = selector.fragment_selector_type.as_deref().ok_or_else(|| {
        ApiError::invalid_argument("FragmentSelector.FragmentSelectorType must be specified.")
    })?;
    let range = selector.timestamp_range.as_ref().ok_or_else(|| {
        ApiError::invalid_argument("FragmentSelector.TimestampRange must be specified.")
    })?;
    let (Some(start), Some(end)) = (range.start_timestamp, range.end_timestamp) else {
        return Err(ApiError::invalid_argument(
            "TimestampRange needs StartTimestamp and EndTimestamp.",
        ));
    };
    let (start, end) = (
        (start * 1000.0).round() as i64,
        (end * 1000.0).round() as i64,
    );
    if start > end {
        return Err(ApiError::invalid_argument(
            "StartTimestamp must not be later than EndTimestamp.",
        ));
    }
    match kind {
        "PRODUCER_TIMESTAMP" => Ok(Range::Producer(start, end)),
        "SERVER_TIMESTAMP" => Ok(Range::Server(start, end)),
        other => Err(ApiError::invalid_argument(format!(
            "Invalid FragmentSelectorType {other:?}."
        ))),
    }
}

fn seconds(ms: i64) -> Value {
    json!(ms as f64 / 1000.0)
}

/// ListFragments over `fragments` (one stream's, in ingestion order): complete fragments whose start time is
/// in the range (inclusive at both ends), paged.
pub fn list_fragments(
    fragments: &[Fragment],
    request: &ListFragmentsRequest,
) -> Result<Value, ApiError> {
    let range = parse_range(request.fragment_selector.as_ref())?;
    let page = match request.max_results {
        None => MAX_LIST_FRAGMENTS,
        Some(n) if (1..=MAX_LIST_FRAGMENTS as i64).contains(&n) => n as usize,
        Some(n) => {
            return Err(ApiError::invalid_argument(format!(
                "MaxResults {n} is not in 1..1000."
            )));
        }
    };
    let skip = match &request.next_token {
        None => 0,
        Some(token) => BASE64
            .decode(token)
            .ok()
            .and_then(|raw| String::from_utf8(raw).ok())
            .and_then(|text| {
                text.strip_prefix("fragments:")
                    .and_then(|n| n.parse::<usize>().ok())
            })
            .ok_or_else(|| ApiError::invalid_argument("Invalid NextToken."))?,
    };
    let matching: Vec<&Fragment> = fragments
        .iter()
        .filter(|f| f.state == FragmentState::Complete)
        .filter(|f| match range {
            Range::All => true,
            Range::Producer(start, end) => (start..=end).contains(&f.producer_ms),
            Range::Server(start, end) => (start..=end).contains(&f.server_ms),
        })
        .collect();
    let listed: Vec<Value> = matching
        .iter()
        .skip(skip)
        .take(page)
        .map(|f| {
            json!({
                "FragmentNumber": f.number,
                "FragmentSizeInBytes": f.size,
                "ProducerTimestamp": seconds(f.producer_ms),
                "ServerTimestamp": seconds(f.server_ms),
                "FragmentLengthInMilliseconds": f.duration_ms,
            })
        })
        .collect();
    let mut out = json!({ "Fragments": listed });
    if skip + page < matching.len() {
        out["NextToken"] = json!(BASE64.encode(format!("fragments:{}", skip + page)));
    }
    Ok(out)
}

/// The fragments GetMediaForFragmentList asked for, in the order asked, or the error for the first unknown
/// one.
pub fn select_fragments<'a>(
    fragments: &'a [Fragment],
    numbers: &[String],
) -> Result<Vec<&'a Fragment>, ApiError> {
    if numbers.is_empty() || numbers.len() > 1000 {
        return Err(ApiError::invalid_argument(
            "Fragments must hold 1 to 1000 fragment numbers.",
        ));
    }
    numbers
        .iter()
        .map(|number| {
            fragments
                .iter()
                .find(|f| &f.number == number && f.state == FragmentState::Complete)
                .ok_or_else(|| {
                    ApiError::resource_not_found(format!(
                        "The requested fragment {number} was not found."
                    ))
                })
        })
        .collect()
}

/// One fragment as GetMediaForFragmentList returns it: the GetMedia layout, with the fragment tags but no
/// MILLIS_BEHIND_NOW / CONTINUATION_TOKEN (see the README's choices).
pub fn fragment_document(fragment: &Fragment) -> Vec<Bytes> {
    let mut out = vec![fragment_prefix(
        fragment,
        tags::SERVER_TIMESTAMP,
        tags::PRODUCER_TIMESTAMP,
    )];
    out.extend(fragment.cluster.iter().cloned());
    out.push(fragment_suffix(fragment, false));
    out
}
