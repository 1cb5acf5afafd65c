// SPDX-License-Identifier: MPL-2.0

//! AWS Signature Version 4 verification, server side.
//!
//! Written here with `hmac` and `sha2` because no maintained crate verifies SigV4: `aws-sigv4` and the other
//! signing crates only sign (the client side), and verifying needs things signing never does: reading the
//! signature back out of an `Authorization` header or a presigned query, rebuilding the canonical request from
//! the headers *as received*, and trying the few payload-hash conventions that KVS clients use.
//!
//! Accepted (KVS-PROTOCOL.md §5):
//! - `Authorization: AWS4-HMAC-SHA256 Credential=<AKID>/<yyyymmdd>/<region>/kinesisvideo/aws4_request,
//!   SignedHeaders=..., Signature=...` with `X-Amz-Date` (or `Date`);
//! - the presigned query form (`X-Amz-Algorithm`, `X-Amz-Credential`, `X-Amz-Date`, `X-Amz-Expires`,
//!   `X-Amz-SignedHeaders`, `X-Amz-Signature`, optional `X-Amz-Security-Token`, signed or added afterwards);
//! - payload hash: the `x-amz-content-sha256` header's value when present (`UNSIGNED-PAYLOAD`, or hex that must
//!   match the body), otherwise the SHA-256 of the body; for a streaming body (PutMedia, whose body cannot be
//!   hashed up front) also the SHA-256 of the empty string, as the official C producer signs; presigned
//!   requests also accept the empty-string hash and `UNSIGNED-PAYLOAD`;
//! - the canonical URI both as received (single encoding, as the C producer computes it) and encoded once more
//!   (double encoding, as the AWS SDKs compute it for every service but S3);
//! - headers exactly as received: the C producer signs `host` without the port, and that is what arrives;
//! - `x-amz-security-token` whether it is signed or not (temporary credentials are not checked further).
//!
//! The request time must be within 15 minutes of the emulator's clock (presigned: not before `X-Amz-Date` -
//! 15 min and not after `X-Amz-Date` + `X-Amz-Expires`). Errors are worded as AWS words them.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use chrono::{DateTime, NaiveDateTime, Utc};
use hmac::{Hmac, Mac};
use hyper::Uri;
use hyper::header::HeaderMap;
use sha2::{Digest, Sha256};

use crate::error::ApiError;

/// The signing name of every KVS API (control plane, media and archived media).
pub const SERVICE: &str = "kinesisvideo";
/// SHA-256 of the empty string, hex.
pub const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
/// The payload hash of clients that do not sign the body.
pub const UNSIGNED_PAYLOAD: &str = "UNSIGNED-PAYLOAD";
/// Largest accepted difference between the request's time and the emulator's clock.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(15 * 60);
/// Longest presigned-URL lifetime (7 days).
const MAX_EXPIRES_SECONDS: u64 = 7 * 24 * 3600;
const ALGORITHM: &str = "AWS4-HMAC-SHA256";
const TERMINATOR: &str = "aws4_request";
const DATE_FORMAT: &str = "%Y%m%dT%H%M%SZ";

/// The request body, as far as signature checking is concerned.
#[derive(Debug, Clone, Copy)]
pub enum Payload<'a> {
    /// The whole body, already read.
    Bytes(&'a [u8]),
    /// A body that streams and is not available (PutMedia).
    Streaming,
}

/// Who signed a request that verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub access_key_id: String,
}

/// Checks signatures against a set of access keys (which the admin API can change), for one region and
/// service.
pub struct Verifier {
    region: String,
    service: String,
    /// Secret access key and, for temporary keys, when they expire.
    secrets: std::sync::RwLock<HashMap<String, (String, Option<SystemTime>)>>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secrets.
        f.debug_struct("Verifier")
            .field("region", &self.region)
            .field("service", &self.service)
            .field("access_key_ids", &self.secrets().keys().collect::<Vec<_>>())
            .finish()
    }
}

/// What the request claims: parsed from the `Authorization` header or from the presigned query.
struct Claim {
    access_key_id: String,
    scope_date: String,
    scope_region: String,
    scope_service: String,
    scope_terminator: String,
    signed_headers: Vec<String>,
    signature: String,
    /// The time in `X-Amz-Date` form, as it enters the string to sign.
    timestamp: String,
    time: DateTime<Utc>,
    /// `X-Amz-Expires` of a presigned request.
    expires: Option<u64>,
    presigned: bool,
}

impl Verifier {
    /// A verifier for service `kinesisvideo` in `region`, knowing these `(access key id, secret)` pairs.
    pub fn new(region: &str, credentials: &[(String, String)]) -> Verifier {
        Verifier::for_service(region, SERVICE, credentials)
    }

    /// A verifier for another signing name (the AWS test suite uses `service`).
    pub fn for_service(region: &str, service: &str, credentials: &[(String, String)]) -> Verifier {
        Verifier {
            region: region.to_owned(),
            service: service.to_owned(),
            secrets: std::sync::RwLock::new(
                credentials
                    .iter()
                    .map(|(key, secret)| (key.clone(), (secret.clone(), None)))
                    .collect(),
            ),
        }
    }

    fn secrets(
        &self,
    ) -> std::sync::RwLockReadGuard<'_, HashMap<String, (String, Option<SystemTime>)>> {
        self.secrets.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Accepts one more access key from now on, until `expires` for temporary credentials (after which requests
    /// signed with it get `ExpiredTokenException`).
    pub fn accept(&self, access_key_id: &str, secret: &str, expires: Option<SystemTime>) {
        let mut secrets = self.secrets.write().unwrap_or_else(|e| e.into_inner());
        secrets.insert(access_key_id.to_owned(), (secret.to_owned(), expires));
    }

    /// Refuses an access key from now on; false if it was not known.
    pub fn revoke(&self, access_key_id: &str) -> bool {
        let mut secrets = self.secrets.write().unwrap_or_else(|e| e.into_inner());
        secrets.remove(access_key_id).is_some()
    }

    /// Verifies one request; `now` is the emulator's clock.
    pub fn verify(
        &self,
        method: &str,
        uri: &Uri,
        headers: &HeaderMap,
        payload: Payload<'_>,
        now: SystemTime,
    ) -> Result<Verified, ApiError> {
        let query = parse_query(uri.query().unwrap_or(""));
        let claim = if let Some(authorization) = headers.get("authorization") {
            let authorization = authorization.to_str().map_err(|_| {
                ApiError::incomplete_signature("The Authorization header is not valid ASCII.")
            })?;
            claim_from_header(authorization, headers)?
        } else if query.iter().any(|(key, _)| key == b"X-Amz-Algorithm") {
            claim_from_query(&query)?
        } else {
            return Err(ApiError::missing_authentication_token());
        };

        let (secret, expires) = self
            .secrets()
            .get(&claim.access_key_id)
            .cloned()
            .ok_or_else(ApiError::unrecognized_client)?;
        if expires.is_some_and(|at| at <= now) {
            return Err(ApiError::expired_token());
        }
        self.check_scope(&claim)?;
        check_time(&claim, now.into())?;
        if !claim.signed_headers.iter().any(|name| name == "host") {
            return Err(ApiError::invalid_signature(
                "'Host' or ':authority' must be a 'SignedHeader' in the AWS Authorization.",
            ));
        }

        let payload_hashes = payload_hashes(headers, payload, claim.presigned)?;
        let canonical_uris = canonical_uris(uri.path());
        let canonical_queries = canonical_queries(&query, claim.presigned);
        let canonical_headers = canonical_headers(headers, &claim.signed_headers);
        let signed_headers = claim.signed_headers.join(";");
        let scope = format!(
            "{}/{}/{}/{TERMINATOR}",
            claim.scope_date, self.region, self.service
        );
        let key = signing_key(&secret, &claim.scope_date, &self.region, &self.service);

        for canonical_uri in &canonical_uris {
            for canonical_query in &canonical_queries {
                for payload_hash in &payload_hashes {
                    let canonical_request = format!(
                        "{method}\n{canonical_uri}\n{canonical_query}\n{canonical_headers}\n{signed_headers}\n\
                         {payload_hash}"
                    );
                    let string_to_sign = format!(
                        "{ALGORITHM}\n{}\n{scope}\n{}",
                        claim.timestamp,
                        hex::encode(Sha256::digest(canonical_request.as_bytes()))
                    );
                    let signature = hex::encode(hmac(&key, string_to_sign.as_bytes()));
                    if constant_time_eq(signature.as_bytes(), claim.signature.as_bytes()) {
                        return Ok(Verified {
                            access_key_id: claim.access_key_id,
                        });
                    }
                }
            }
        }
        Err(ApiError::signature_mismatch())
    }

    fn check_scope(&self, claim: &Claim) -> Result<(), ApiError> {
        if claim.scope_region != self.region {
            return Err(ApiError::invalid_signature(format!(
                "Credential should be scoped to a valid region, not '{}'. ",
                claim.scope_region
            )));
        }
        if claim.scope_service != self.service {
            return Err(ApiError::invalid_signature(format!(
                "Credential should be scoped to correct service: '{}'. ",
                self.service
            )));
        }
        if claim.scope_terminator != TERMINATOR {
            return Err(ApiError::invalid_signature(format!(
                "Credential should be scoped with a valid terminator: '{TERMINATOR}', not '{}'. ",
                claim.scope_terminator
            )));
        }
        let day = &claim.timestamp[..8];
        if claim.scope_date != day {
            return Err(ApiError::invalid_signature(format!(
                "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: \
                 '{}' != '{day}', from '{}'.",
                claim.scope_date, claim.timestamp
            )));
        }
        Ok(())
    }
}

fn claim_from_header(authorization: &str, headers: &HeaderMap) -> Result<Claim, ApiError> {
    let Some(rest) = authorization
        .strip_prefix(ALGORITHM)
        .filter(|rest| rest.starts_with(' '))
    else {
        return Err(ApiError::incomplete_signature(format!(
            "Authorization header requires the {ALGORITHM} algorithm."
        )));
    };
    let mut credential = None;
    let mut signed_headers = None;
    let mut signature = None;
    for part in rest.split(',') {
        let Some((key, value)) = part.trim().split_once('=') else {
            continue;
        };
        match key.trim() {
            "Credential" => credential = Some(value.trim()),
            "SignedHeaders" => signed_headers = Some(value.trim()),
            "Signature" => signature = Some(value.trim()),
            _ => {}
        }
    }
    let timestamp = match (
        header_str(headers, "x-amz-date"),
        header_str(headers, "date"),
    ) {
        (Some(amz_date), _) => Some(parse_amz_date(amz_date)?),
        (None, Some(date)) => Some(parse_http_date(date)?),
        (None, None) => None,
    };
    let mut missing = Vec::new();
    if credential.is_none() {
        missing.push("Authorization header requires 'Credential' parameter.".to_owned());
    }
    if signed_headers.is_none() {
        missing.push("Authorization header requires 'SignedHeaders' parameter.".to_owned());
    }
    if signature.is_none() {
        missing.push("Authorization header requires 'Signature' parameter.".to_owned());
    }
    if timestamp.is_none() {
        missing.push(
            "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header."
                .into(),
        );
    }
    match (credential, signed_headers, signature, timestamp) {
        (Some(credential), Some(signed_headers), Some(signature), Some((timestamp, time))) => {
            build_claim(
                credential,
                signed_headers,
                signature,
                timestamp,
                time,
                None,
                false,
            )
        }
        _ => Err(ApiError::incomplete_signature(missing.join(" "))),
    }
}

fn claim_from_query(query: &[(Vec<u8>, Vec<u8>)]) -> Result<Claim, ApiError> {
    let get = |name: &str| {
        query
            .iter()
            .find(|(key, _)| key == name.as_bytes())
            .map(|(_, value)| String::from_utf8_lossy(value).into_owned())
    };
    let mut missing = Vec::new();
    for name in [
        "X-Amz-Algorithm",
        "X-Amz-Credential",
        "X-Amz-Date",
        "X-Amz-SignedHeaders",
        "X-Amz-Signature",
    ] {
        if get(name).is_none() {
            missing.push(format!(
                "AWS query-string parameters must include '{name}'. Re-examine the query-string parameters."
            ));
        }
    }
    if !missing.is_empty() {
        return Err(ApiError::incomplete_signature(missing.join(" ")));
    }
    let algorithm = get("X-Amz-Algorithm").unwrap_or_default();
    if algorithm != ALGORITHM {
        return Err(ApiError::incomplete_signature(format!(
            "X-Amz-Algorithm only supports \"{ALGORITHM}\", not \"{algorithm}\"."
        )));
    }
    let expires = match get("X-Amz-Expires") {
        None => None,
        Some(expires) => match expires.parse::<u64>() {
            Ok(seconds) if (1..=MAX_EXPIRES_SECONDS).contains(&seconds) => Some(seconds),
            _ => {
                return Err(ApiError::incomplete_signature(format!(
                    "X-Amz-Expires must be a number of seconds from 1 to {MAX_EXPIRES_SECONDS}, not '{expires}'."
                )));
            }
        },
    };
    let (timestamp, time) = parse_amz_date(&get("X-Amz-Date").unwrap_or_default())?;
    build_claim(
        &get("X-Amz-Credential").unwrap_or_default(),
        &get("X-Amz-SignedHeaders").unwrap_or_default(),
        &get("X-Amz-Signature").unwrap_or_default(),
        timestamp,
        time,
        expires,
        true,
    )
}

fn build_claim(
    credential: &str,
    signed_headers: &str,
    signature: &str,
    timestamp: String,
    time: DateTime<Utc>,
    expires: Option<u64>,
    presigned: bool,
) -> Result<Claim, ApiError> {
    // The access key id cannot contain '/', so the scope is the last four elements.
    let parts: Vec<&str> = credential.split('/').collect();
    let [access_key_id, date, region, service, terminator] = parts.as_slice() else {
        return Err(ApiError::incomplete_signature(format!(
            "Credential must have exactly 5 slash-delimited elements, e.g. keyid/date/region/service/term, got \
             '{credential}'"
        )));
    };
    Ok(Claim {
        access_key_id: (*access_key_id).to_owned(),
        scope_date: (*date).to_owned(),
        scope_region: (*region).to_owned(),
        scope_service: (*service).to_owned(),
        scope_terminator: (*terminator).to_owned(),
        signed_headers: signed_headers
            .split(';')
            .map(|name| name.trim().to_ascii_lowercase())
            .collect(),
        signature: signature.to_ascii_lowercase(),
        timestamp,
        time,
        expires,
        presigned,
    })
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|value| value.to_str().ok())
}

/// `20150830T123600Z` → (the same text, the time).
fn parse_amz_date(value: &str) -> Result<(String, DateTime<Utc>), ApiError> {
    let time = NaiveDateTime::parse_from_str(value.trim(), DATE_FORMAT)
        .map_err(|_| {
            ApiError::incomplete_signature(format!(
                "Date must be in ISO-8601 'basic format'. Got '{value}'. See \
                 http://en.wikipedia.org/wiki/ISO_8601"
            ))
        })?
        .and_utc();
    Ok((time.format(DATE_FORMAT).to_string(), time))
}

/// An RFC 7231 `Date` header → (its `X-Amz-Date` form, the time).
fn parse_http_date(value: &str) -> Result<(String, DateTime<Utc>), ApiError> {
    let time = DateTime::parse_from_rfc2822(value.trim())
        .map_err(|_| {
            ApiError::incomplete_signature(format!("Date header '{value}' is not an HTTP date."))
        })?
        .with_timezone(&Utc);
    Ok((time.format(DATE_FORMAT).to_string(), time))
}

fn check_time(claim: &Claim, now: DateTime<Utc>) -> Result<(), ApiError> {
    let skew = chrono::Duration::from_std(MAX_CLOCK_SKEW)
        .unwrap_or_else(|_| chrono::Duration::minutes(15));
    let fmt = |time: DateTime<Utc>| time.format(DATE_FORMAT).to_string();
    if claim.time > now + skew {
        return Err(ApiError::invalid_signature(format!(
            "Signature not yet current: {} is still later than {} ({} + 15 min.)",
            claim.timestamp,
            fmt(now + skew),
            fmt(now)
        )));
    }
    match claim.expires {
        Some(expires) => {
            let end = claim.time
                + chrono::Duration::seconds(i64::try_from(expires).unwrap_or(i64::MAX / 2));
            if now > end {
                return Err(ApiError::invalid_signature(format!(
                    "Signature expired: {} is now earlier than {} ({} - {expires} sec.)",
                    claim.timestamp,
                    fmt(now - (end - claim.time)),
                    fmt(now)
                )));
            }
        }
        None => {
            if claim.time < now - skew {
                return Err(ApiError::invalid_signature(format!(
                    "Signature expired: {} is now earlier than {} ({} - 15 min.)",
                    claim.timestamp,
                    fmt(now - skew),
                    fmt(now)
                )));
            }
        }
    }
    Ok(())
}

/// The payload hashes a valid signature may have used.
fn payload_hashes(
    headers: &HeaderMap,
    payload: Payload<'_>,
    presigned: bool,
) -> Result<Vec<String>, ApiError> {
    let mut hashes = Vec::new();
    if let Some(declared) = headers.get("x-amz-content-sha256") {
        let declared = declared.to_str().unwrap_or_default().trim().to_owned();
        if declared != UNSIGNED_PAYLOAD {
            let is_hex = declared.len() == 64 && declared.bytes().all(|b| b.is_ascii_hexdigit());
            if !is_hex {
                return Err(ApiError::invalid_signature(format!(
                    "x-amz-content-sha256 must be {UNSIGNED_PAYLOAD} or the hex SHA-256 of the body, not \
                     '{declared}'."
                )));
            }
            if let Payload::Bytes(body) = payload
                && !declared.eq_ignore_ascii_case(&hex::encode(Sha256::digest(body)))
            {
                return Err(ApiError::invalid_signature(
                    "The provided 'x-amz-content-sha256' header does not match what was computed.",
                ));
            }
        }
        hashes.push(declared);
    } else if let Payload::Bytes(body) = payload {
        hashes.push(hex::encode(Sha256::digest(body)));
    }
    if matches!(payload, Payload::Streaming) || presigned {
        hashes.push(EMPTY_SHA256.to_owned());
    }
    if presigned {
        hashes.push(UNSIGNED_PAYLOAD.to_owned());
    }
    let mut unique = Vec::with_capacity(hashes.len());
    for hash in hashes {
        if !unique.contains(&hash) {
            unique.push(hash);
        }
    }
    Ok(unique)
}

/// The path encoded once (from its decoded form: single encoding) and the path as received encoded once more
/// (double encoding).
fn canonical_uris(path: &str) -> Vec<String> {
    let path = if path.is_empty() { "/" } else { path };
    let single = encode(&decode(path), true);
    let double = encode(path.as_bytes(), true);
    if single == double {
        vec![single]
    } else {
        vec![double, single]
    }
}

/// The canonical query string; for a presigned request without `X-Amz-Signature`, and a second variant
/// without `X-Amz-Security-Token` for clients that add the token after signing.
fn canonical_queries(query: &[(Vec<u8>, Vec<u8>)], presigned: bool) -> Vec<String> {
    let build = |skip_token: bool| {
        let mut pairs: Vec<(String, String)> = query
            .iter()
            .filter(|(key, _)| !(presigned && key == b"X-Amz-Signature"))
            .filter(|(key, _)| !(skip_token && key == b"X-Amz-Security-Token"))
            .map(|(key, value)| (encode(key, false), encode(value, false)))
            .collect();
        pairs.sort();
        pairs
            .iter()
            .map(|(key, value)| format!("{key}={value}"))
            .collect::<Vec<_>>()
            .join("&")
    };
    let mut queries = vec![build(false)];
    if presigned && query.iter().any(|(key, _)| key == b"X-Amz-Security-Token") {
        queries.push(build(true));
    }
    queries
}

/// `name:value\n` for each signed header, values as received: trimmed, inner whitespace runs collapsed, repeated
/// headers joined with `,`.
fn canonical_headers(headers: &HeaderMap, signed: &[String]) -> String {
    let mut out = String::new();
    for name in signed {
        let values: Vec<String> = headers
            .get_all(name.as_str())
            .iter()
            .map(|value| {
                String::from_utf8_lossy(value.as_bytes())
                    .split_ascii_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect();
        out.push_str(name);
        out.push(':');
        out.push_str(&values.join(","));
        out.push('\n');
    }
    out
}

/// The query's `key=value` pairs, percent-decoded.
fn parse_query(query: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(key), decode(value))
        })
        .collect()
}

/// SigV4 URI encoding: everything but `A-Za-z0-9-_.~` (and `/` when `keep_slash`) as `%XX`, upper case.
fn encode(bytes: &[u8], keep_slash: bool) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        if b.is_ascii_alphanumeric()
            || matches!(b, b'-' | b'_' | b'.' | b'~')
            || (keep_slash && b == b'/')
        {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Percent-decoding; a `%` not followed by two hex digits stays as it is.
fn decode(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(high), Some(low)) = (hex_value(bytes[i + 1]), hex_value(bytes[i + 2]))
        {
            out.push(high << 4 | low);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    out
}

fn hex_value(b: u8) -> Option<u8> {
    char::from(b)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    // HMAC accepts keys of any length, so `new_from_slice` cannot fail.
    let mut mac =
        <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

fn signing_key(secret: &str, date: &str, region: &str, service: &str) -> Vec<u8> {
    let key = hmac(format!("AWS4{secret}").as_bytes(), date.as_bytes());
    let key = hmac(&key, region.as_bytes());
    let key = hmac(&key, service.as_bytes());
    hmac(&key, TERMINATOR.as_bytes())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::{HeaderName, HeaderValue};

    // ---- AWS's published SigV4 test vectors (the signing test suite of the AWS docs and SDKs): each request
    // ---- below was signed by AWS with these keys at this time; the expected signatures are theirs.

    const DOC_KEY_ID: &str = "AKIDEXAMPLE";
    const DOC_SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
    const DOC_SCOPE: &str = "AKIDEXAMPLE/20150830/us-east-1/service/aws4_request";

    fn doc_time() -> SystemTime {
        DateTime::parse_from_rfc3339("2015-08-30T12:36:00Z")
            .unwrap()
            .with_timezone(&Utc)
            .into()
    }

    fn doc_verifier(service: &str) -> Verifier {
        Verifier::for_service(
            "us-east-1",
            service,
            &[(DOC_KEY_ID.to_owned(), DOC_SECRET.to_owned())],
        )
    }

    fn header_map(headers: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    fn authorization(signed_headers: &str, signature: &str) -> String {
        format!(
            "AWS4-HMAC-SHA256 Credential={DOC_SCOPE}, SignedHeaders={signed_headers}, Signature={signature}"
        )
    }

    fn verify_doc(
        method: &str,
        uri: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Verified, ApiError> {
        doc_verifier("service").verify(
            method,
            &uri.parse().unwrap(),
            &header_map(headers),
            Payload::Bytes(body),
            doc_time(),
        )
    }

    #[test]
    fn signing_key_matches_the_documentation() {
        // The derived key of the documentation's IAM example.
        assert_eq!(
            hex::encode(signing_key(DOC_SECRET, "20150830", "us-east-1", "iam")),
            "c4afb1cc5771d871763a393e44b703571b55cc28424d1a5e86da6ed3c154a4b9"
        );
    }

    #[test]
    fn documentation_iam_list_users_example() {
        let verifier = doc_verifier("iam");
        let auth = "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/iam/aws4_request, \
                    SignedHeaders=content-type;host;x-amz-date, \
                    Signature=5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7";
        let headers = header_map(&[
            (
                "content-type",
                "application/x-www-form-urlencoded; charset=utf-8",
            ),
            ("host", "iam.amazonaws.com"),
            ("x-amz-date", "20150830T123600Z"),
            ("authorization", auth),
        ]);
        let uri = "/?Action=ListUsers&Version=2010-05-08".parse().unwrap();
        verifier
            .verify("GET", &uri, &headers, Payload::Bytes(b""), doc_time())
            .unwrap();
    }

    #[test]
    fn suite_get_vanilla_header_and_query() {
        let auth = authorization(
            "host;x-amz-date",
            "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
        );
        let headers = [
            ("host", "example.amazonaws.com"),
            ("x-amz-date", "20150830T123600Z"),
            ("authorization", &auth),
        ];
        assert_eq!(
            verify_doc("GET", "/", &headers, b"").unwrap().access_key_id,
            DOC_KEY_ID
        );

        let query = "/?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIDEXAMPLE%2F20150830%2Fus-east-1%2F\
                     service%2Faws4_request&X-Amz-Date=20150830T123600Z&X-Amz-SignedHeaders=host&X-Amz-Expires=3600\
                     &X-Amz-Signature=e93c787ed7f371d5c6b165c1b38ede9550f4dce4144713e844b25b7192d3865d";
        verify_doc("GET", query, &[("host", "example.amazonaws.com")], b"").unwrap();
        // The same presigned URL an hour and a second later has expired.
        let late = doc_time() + Duration::from_secs(3601);
        let err = doc_verifier("service")
            .verify(
                "GET",
                &query.parse().unwrap(),
                &header_map(&[("host", "example.amazonaws.com")]),
                Payload::Bytes(b""),
                late,
            )
            .unwrap_err();
        assert_eq!(err.name, "InvalidSignatureException");
        assert!(
            err.message
                .starts_with("Signature expired: 20150830T123600Z"),
            "{}",
            err.message
        );
    }

    #[test]
    fn suite_post_vanilla_and_query_order() {
        let auth = authorization(
            "host;x-amz-date",
            "5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b",
        );
        let headers = [
            ("host", "example.amazonaws.com"),
            ("x-amz-date", "20150830T123600Z"),
            ("authorization", &auth),
        ];
        verify_doc("POST", "/", &headers, b"").unwrap();
        // The method is part of what is signed.
        assert_eq!(
            verify_doc("GET", "/", &headers, b"").unwrap_err(),
            ApiError::signature_mismatch()
        );

        let auth = authorization(
            "host;x-amz-date",
            "b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500",
        );
        let headers = [
            ("host", "example.amazonaws.com"),
            ("x-amz-date", "20150830T123600Z"),
            ("authorization", &auth),
        ];
        verify_doc("GET", "/?Param2=value2&Param1=value1", &headers, b"").unwrap();
    }

    #[test]
    fn suite_session_token_header_and_query() {
        let token = "6e86291e8372ff2a2260956d9b8aae1d763fbf315fa00fa31553b73ebf194267";
        let auth = authorization(
            "host;x-amz-date;x-amz-security-token",
            "07ec1639c89043aa0e3e2de82b96708f198cceab042d4a97044c66dd9f74e7f8",
        );
        let headers = [
            ("host", "example.amazonaws.com"),
            ("x-amz-security-token", token),
            ("x-amz-date", "20150830T123600Z"),
            ("authorization", &auth),
        ];
        verify_doc("GET", "/", &headers, b"").unwrap();

        let query = format!(
            "/?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIDEXAMPLE%2F20150830%2Fus-east-1%2Fservice%2F\
             aws4_request&X-Amz-Date=20150830T123600Z&X-Amz-SignedHeaders=host&X-Amz-Expires=3600\
             &X-Amz-Security-Token={token}\
             &X-Amz-Signature=7ff2b50b376cb4d151970630573d6291dc128cc5c2a12ffb237f73cc53f67b6c"
        );
        verify_doc("GET", &query, &[("host", "example.amazonaws.com")], b"").unwrap();
    }

    #[test]
    fn suite_header_value_trim_utf8_path_and_space() {
        let auth = authorization(
            "host;my-header1;my-header2;x-amz-date",
            "acc3ed3afb60bb290fc8d2dd0098b9911fcaa05412b367055dee359757a9c736",
        );
        let headers = [
            ("host", "example.amazonaws.com"),
            ("my-header1", " value1"),
            ("my-header2", "\"a   b   c\""),
            ("x-amz-date", "20150830T123600Z"),
            ("authorization", &auth),
        ];
        verify_doc("GET", "/", &headers, b"").unwrap();

        let auth = authorization(
            "host;x-amz-date",
            "8318018e0b0f223aa2bbf98705b62bb787dc9c0e678f255a891fd03141be5d85",
        );
        let headers = [
            ("host", "example.amazonaws.com"),
            ("x-amz-date", "20150830T123600Z"),
            ("authorization", &auth),
        ];
        verify_doc("GET", "/%E1%88%B4", &headers, b"").unwrap();

        let auth = authorization(
            "host;x-amz-date",
            "652487583200325589f1fba4c7e578f72c47cb61beeca81406b39ddec1366741",
        );
        let headers = [
            ("host", "example.amazonaws.com"),
            ("x-amz-date", "20150830T123600Z"),
            ("authorization", &auth),
        ];
        verify_doc("GET", "/example%20space/", &headers, b"").unwrap();
    }

    #[test]
    fn suite_signed_body_with_content_sha256() {
        let body = b"Param1=value1";
        let hash = "9095672bbd1f56dfc5b65f3e153adc8731a4a654192329106275f4c7b24d0b6e";
        let auth = authorization(
            "content-length;content-type;host;x-amz-content-sha256;x-amz-date",
            "d3875051da38690788ef43de4db0d8f280229d82040bfac253562e56c3f20e0b",
        );
        let headers = [
            ("content-type", "application/x-www-form-urlencoded"),
            ("host", "example.amazonaws.com"),
            ("content-length", "13"),
            ("x-amz-date", "20150830T123600Z"),
            ("x-amz-content-sha256", hash),
            ("authorization", &auth),
        ];
        verify_doc("POST", "/", &headers, body).unwrap();
        let err = verify_doc("POST", "/", &headers, b"Param1=value2").unwrap_err();
        assert_eq!(err.name, "InvalidSignatureException");
        assert!(
            err.message.contains("x-amz-content-sha256"),
            "{}",
            err.message
        );
    }

    #[test]
    fn failures_answer_like_aws() {
        let good = "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31";
        let bad = "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf30";
        let base = |auth: &str| {
            vec![
                ("host", "example.amazonaws.com".to_owned()),
                ("x-amz-date", "20150830T123600Z".to_owned()),
                ("authorization", auth.to_owned()),
            ]
        };
        let run = |headers: Vec<(&str, String)>| {
            let headers: Vec<(&str, &str)> =
                headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            verify_doc("GET", "/", &headers, b"").unwrap_err()
        };

        let err = run(base(&authorization("host;x-amz-date", bad)));
        assert_eq!(err.name, "InvalidSignatureException");
        assert_eq!(err.status, hyper::StatusCode::FORBIDDEN);
        assert_eq!(
            err.message,
            "The request signature we calculated does not match the signature you provided. Check your AWS Secret \
             Access Key and signing method. Consult the service documentation for details."
        );

        let err = run(base(
            &authorization("host;x-amz-date", good).replace("AKIDEXAMPLE", "AKIDOTHER"),
        ));
        assert_eq!(err.name, "UnrecognizedClientException");
        assert_eq!(err.status, hyper::StatusCode::FORBIDDEN);
        assert_eq!(
            err.message,
            "The security token included in the request is invalid."
        );

        let err = verify_doc("GET", "/", &[("host", "example.amazonaws.com")], b"").unwrap_err();
        assert_eq!(err.name, "MissingAuthenticationTokenException");
        assert_eq!(err.status, hyper::StatusCode::FORBIDDEN);
        assert_eq!(err.message, "Missing Authentication Token");

        let err = run(base(&format!(
            "AWS4-HMAC-SHA256 Credential={DOC_SCOPE}, SignedHeaders=host;x-amz-date"
        )));
        assert_eq!(err.name, "IncompleteSignatureException");
        assert_eq!(
            err.message,
            "Authorization header requires 'Signature' parameter."
        );

        let err = run(base(
            &authorization("host;x-amz-date", good).replace("/service/", "/s3/"),
        ));
        assert_eq!(err.name, "InvalidSignatureException");
        assert!(
            err.message
                .starts_with("Credential should be scoped to correct service"),
            "{}",
            err.message
        );

        let err = run(base(&authorization("x-amz-date", good)));
        assert!(err.message.contains("'Host'"), "{}", err.message);

        let err = run(base(
            &authorization("host;x-amz-date", good)
                .replace("Credential=AKIDEXAMPLE/", "Credential="),
        ));
        assert_eq!(err.name, "IncompleteSignatureException");

        // Without a date.
        let auth = authorization("host;x-amz-date", good);
        let err = verify_doc(
            "GET",
            "/",
            &[("host", "example.amazonaws.com"), ("authorization", &auth)],
            b"",
        )
        .unwrap_err();
        assert_eq!(err.name, "IncompleteSignatureException");
    }

    #[test]
    fn clock_skew_over_15_minutes_is_refused() {
        let auth = authorization(
            "host;x-amz-date",
            "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
        );
        let headers = header_map(&[
            ("host", "example.amazonaws.com"),
            ("x-amz-date", "20150830T123600Z"),
            ("authorization", &auth),
        ]);
        let verifier = doc_verifier("service");
        let uri: Uri = "/".parse().unwrap();
        for offset in [Duration::from_secs(14 * 60), Duration::from_secs(15 * 60)] {
            verifier
                .verify(
                    "GET",
                    &uri,
                    &headers,
                    Payload::Bytes(b""),
                    doc_time() + offset,
                )
                .unwrap();
            verifier
                .verify(
                    "GET",
                    &uri,
                    &headers,
                    Payload::Bytes(b""),
                    doc_time() - offset,
                )
                .unwrap();
        }
        let err = verifier
            .verify(
                "GET",
                &uri,
                &headers,
                Payload::Bytes(b""),
                doc_time() + Duration::from_secs(16 * 60),
            )
            .unwrap_err();
        assert_eq!(
            (err.name.as_ref(), err.status),
            ("InvalidSignatureException", hyper::StatusCode::FORBIDDEN)
        );
        assert_eq!(
            err.message,
            "Signature expired: 20150830T123600Z is now earlier than 20150830T123700Z (20150830T125200Z - 15 min.)"
        );
        let err = verifier
            .verify(
                "GET",
                &uri,
                &headers,
                Payload::Bytes(b""),
                doc_time() - Duration::from_secs(16 * 60),
            )
            .unwrap_err();
        assert!(
            err.message.starts_with("Signature not yet current"),
            "{}",
            err.message
        );
    }

    #[test]
    fn encoding_helpers() {
        assert_eq!(encode(b"a b/c~d%", true), "a%20b/c~d%25");
        assert_eq!(encode(b"a/b", false), "a%2Fb");
        assert_eq!(decode("a%2Fb%zz%4"), b"a/b%zz%4");
        assert_eq!(canonical_uris(""), ["/"]);
        assert_eq!(canonical_uris("/a%20b"), ["/a%2520b", "/a%20b"]);
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }

    // ---- Requests signed by the `aws-sigv4` crate, the signer of the AWS Rust SDK, as the emulator's clients
    // ---- send them.

    mod aws_sigv4_signed {
        use super::*;
        use aws_credential_types::Credentials;
        use aws_sigv4::http_request::{
            PayloadChecksumKind, SessionTokenMode, SignableBody, SignableRequest,
            SignatureLocation, SigningSettings, sign,
        };
        use aws_sigv4::sign::v4;

        const KEY_ID: &str = "AKIDEMULATOR";
        const SECRET: &str = "emulator/secret+key";
        const BODY: &[u8] = br#"{"StreamName":"cam-1"}"#;

        fn now() -> SystemTime {
            DateTime::parse_from_rfc3339("2026-01-02T03:04:05Z")
                .unwrap()
                .with_timezone(&Utc)
                .into()
        }

        fn verifier() -> Verifier {
            Verifier::new(
                "us-east-1",
                &[
                    ("OTHER".to_owned(), "x".to_owned()),
                    (KEY_ID.to_owned(), SECRET.to_owned()),
                ],
            )
        }

        struct Signed {
            uri: Uri,
            headers: HeaderMap,
        }

        /// Signs `POST <path>` to `http://127.0.0.1:4567` with the given extra headers.
        fn sign_request(
            path: &str,
            headers: &[(&str, &str)],
            body: SignableBody<'_>,
            settings: SigningSettings,
            region: &str,
            session_token: Option<&str>,
        ) -> Signed {
            let identity = Credentials::new(
                KEY_ID,
                SECRET,
                session_token.map(str::to_owned),
                None,
                "test",
            )
            .into();
            let params = v4::SigningParams::builder()
                .identity(&identity)
                .region(region)
                .name("kinesisvideo")
                .time(now())
                .settings(settings)
                .build()
                .unwrap()
                .into();
            let url = format!("http://127.0.0.1:4567{path}");
            let signable =
                SignableRequest::new("POST", url.as_str(), headers.iter().copied(), body).unwrap();
            let (instructions, _signature) = sign(signable, &params).unwrap().into_parts();
            let (new_headers, params) = instructions.into_parts();
            let mut map = header_map(headers);
            for header in new_headers {
                map.insert(
                    HeaderName::from_static(header.name()),
                    HeaderValue::from_str(header.value()).unwrap(),
                );
            }
            let mut uri = path.to_owned();
            for (i, (name, value)) in params.iter().enumerate() {
                uri.push(if i == 0 && !path.contains('?') {
                    '?'
                } else {
                    '&'
                });
                uri.push_str(&format!("{name}={}", encode(value.as_bytes(), false)));
            }
            Signed {
                uri: uri.parse().unwrap(),
                headers: map,
            }
        }

        fn control_plane_headers() -> Vec<(&'static str, &'static str)> {
            vec![
                ("host", "127.0.0.1:4567"),
                ("content-type", "application/json"),
                ("user-agent", "test/1.0"),
            ]
        }

        #[test]
        fn body_signed_requests_verify_and_tampering_is_caught() {
            let signed = sign_request(
                "/describeStream",
                &control_plane_headers(),
                SignableBody::Bytes(BODY),
                SigningSettings::default(),
                "us-east-1",
                None,
            );
            let verify = |body: &[u8]| {
                verifier().verify(
                    "POST",
                    &signed.uri,
                    &signed.headers,
                    Payload::Bytes(body),
                    now(),
                )
            };
            assert_eq!(verify(BODY).unwrap().access_key_id, KEY_ID);
            assert_eq!(
                verify(br#"{"StreamName":"cam-2"}"#).unwrap_err(),
                ApiError::signature_mismatch()
            );
            let err = verifier()
                .verify(
                    "POST",
                    &"/createStream".parse().unwrap(),
                    &signed.headers,
                    Payload::Bytes(BODY),
                    now(),
                )
                .unwrap_err();
            assert_eq!(err, ApiError::signature_mismatch());
            let mut headers = signed.headers.clone();
            headers.insert("content-type", HeaderValue::from_static("text/plain"));
            let err = verifier()
                .verify("POST", &signed.uri, &headers, Payload::Bytes(BODY), now())
                .unwrap_err();
            assert_eq!(err, ApiError::signature_mismatch());

            let wrong_secret = Verifier::new(
                "us-east-1",
                &[(KEY_ID.to_owned(), "not the secret".to_owned())],
            );
            let err = wrong_secret
                .verify(
                    "POST",
                    &signed.uri,
                    &signed.headers,
                    Payload::Bytes(BODY),
                    now(),
                )
                .unwrap_err();
            assert_eq!(err, ApiError::signature_mismatch());
            let nobody = Verifier::new("us-east-1", &[("SOMEONE".to_owned(), SECRET.to_owned())]);
            let err = nobody
                .verify(
                    "POST",
                    &signed.uri,
                    &signed.headers,
                    Payload::Bytes(BODY),
                    now(),
                )
                .unwrap_err();
            assert_eq!(err, ApiError::unrecognized_client());
        }

        #[test]
        fn unsigned_payload_with_header() {
            let mut settings = SigningSettings::default();
            settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
            let signed = sign_request(
                "/describeStream",
                &control_plane_headers(),
                SignableBody::UnsignedPayload,
                settings,
                "us-east-1",
                None,
            );
            assert_eq!(signed.headers["x-amz-content-sha256"], UNSIGNED_PAYLOAD);
            for body in [BODY, b"anything"] {
                verifier()
                    .verify(
                        "POST",
                        &signed.uri,
                        &signed.headers,
                        Payload::Bytes(body),
                        now(),
                    )
                    .unwrap();
            }
            verifier()
                .verify(
                    "POST",
                    &signed.uri,
                    &signed.headers,
                    Payload::Streaming,
                    now(),
                )
                .unwrap();
        }

        #[test]
        fn hex_content_sha256_header_must_match_the_body() {
            let mut settings = SigningSettings::default();
            settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
            let signed = sign_request(
                "/describeStream",
                &control_plane_headers(),
                SignableBody::Bytes(BODY),
                settings,
                "us-east-1",
                None,
            );
            verifier()
                .verify(
                    "POST",
                    &signed.uri,
                    &signed.headers,
                    Payload::Bytes(BODY),
                    now(),
                )
                .unwrap();
            let err = verifier()
                .verify(
                    "POST",
                    &signed.uri,
                    &signed.headers,
                    Payload::Bytes(b"{}"),
                    now(),
                )
                .unwrap_err();
            assert_eq!(err.name, "InvalidSignatureException");
            assert!(err.message.contains("x-amz-content-sha256"));
        }

        #[test]
        fn streaming_put_media_with_empty_payload_hash_and_portless_host() {
            // What the C producer sends: host without the port, the empty-string hash, no content-sha256 header.
            let headers = [
                ("host", "127.0.0.1"),
                ("x-amzn-stream-name", "cam-1"),
                ("x-amzn-fragment-timecode-type", "ABSOLUTE"),
                ("x-amzn-producer-start-timestamp", "1767323045.5"),
                ("connection", "keep-alive"),
            ];
            let signed = sign_request(
                "/putMedia",
                &headers,
                SignableBody::Bytes(&[]),
                SigningSettings::default(),
                "us-east-1",
                None,
            );
            verifier()
                .verify(
                    "POST",
                    &signed.uri,
                    &signed.headers,
                    Payload::Streaming,
                    now(),
                )
                .unwrap();
            // A body that is available must match its hash.
            let err = verifier()
                .verify(
                    "POST",
                    &signed.uri,
                    &signed.headers,
                    Payload::Bytes(b"mkv"),
                    now(),
                )
                .unwrap_err();
            assert_eq!(err, ApiError::signature_mismatch());
            // The host as signed must be the host as received.
            let mut with_port = signed.headers.clone();
            with_port.insert("host", HeaderValue::from_static("127.0.0.1:4567"));
            let err = verifier()
                .verify("POST", &signed.uri, &with_port, Payload::Streaming, now())
                .unwrap_err();
            assert_eq!(err, ApiError::signature_mismatch());
        }

        #[test]
        fn presigned_query() {
            for body in [SignableBody::Bytes(&[]), SignableBody::UnsignedPayload] {
                let mut settings = SigningSettings::default();
                settings.signature_location = SignatureLocation::QueryParams;
                settings.expires_in = Some(Duration::from_secs(300));
                let signed = sign_request(
                    "/getMedia",
                    &[("host", "127.0.0.1:4567")],
                    body,
                    settings,
                    "us-east-1",
                    Some("tok"),
                );
                assert!(signed.uri.query().unwrap().contains("X-Amz-Signature="));
                assert!(signed.headers.get("authorization").is_none());
                verifier()
                    .verify(
                        "POST",
                        &signed.uri,
                        &signed.headers,
                        Payload::Streaming,
                        now(),
                    )
                    .unwrap();
                verifier()
                    .verify(
                        "POST",
                        &signed.uri,
                        &signed.headers,
                        Payload::Bytes(BODY),
                        now(),
                    )
                    .unwrap();
                let err = verifier()
                    .verify(
                        "POST",
                        &signed.uri,
                        &signed.headers,
                        Payload::Streaming,
                        now() + Duration::from_secs(301),
                    )
                    .unwrap_err();
                assert!(
                    err.message.starts_with("Signature expired"),
                    "{}",
                    err.message
                );
            }
        }

        #[test]
        fn session_token_signed_or_not() {
            for mode in [SessionTokenMode::Include, SessionTokenMode::Exclude] {
                let mut settings = SigningSettings::default();
                settings.session_token_mode = mode;
                let signed = sign_request(
                    "/getDataEndpoint",
                    &control_plane_headers(),
                    SignableBody::Bytes(BODY),
                    settings,
                    "us-east-1",
                    Some("session-token-value"),
                );
                let mut headers = signed.headers.clone();
                // SessionTokenMode::Exclude leaves the token out of the signature and of the headers: add it, as
                // the C producer does after signing.
                headers.insert(
                    "x-amz-security-token",
                    HeaderValue::from_static("session-token-value"),
                );
                verifier()
                    .verify("POST", &signed.uri, &headers, Payload::Bytes(BODY), now())
                    .unwrap();
            }
        }

        #[test]
        fn other_region_is_refused() {
            let signed = sign_request(
                "/describeStream",
                &control_plane_headers(),
                SignableBody::Bytes(BODY),
                SigningSettings::default(),
                "us-west-2",
                None,
            );
            let err = verifier()
                .verify(
                    "POST",
                    &signed.uri,
                    &signed.headers,
                    Payload::Bytes(BODY),
                    now(),
                )
                .unwrap_err();
            assert_eq!(err.name, "InvalidSignatureException");
            assert_eq!(
                err.message,
                "Credential should be scoped to a valid region, not 'us-west-2'. "
            );
        }
    }
}
