// SPDX-License-Identifier: MPL-2.0

//! PutMedia acknowledgements: the JSON objects the service streams back while the body is being uploaded.
//!
//! The response body is a sequence of flat JSON objects, usually one per line, but a proxy may coalesce several
//! into one read or split one across reads. [`AckParser`] takes bytes as they come and hands out whole
//! [`AckEvent`]s. It finds object boundaries by tracking braces outside strings (serde_json's stream
//! deserializer cannot resume in the middle of an object) and parses each object with serde_json.

use serde::Deserialize;

/// The largest ACK object accepted; the official producer refuses anything longer than 1024 characters.
pub const MAX_ACK_LEN: usize = 4096;

/// What an ACK says happened to a fragment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AckKind {
    /// The service started receiving the fragment.
    Buffering,
    /// The whole fragment was received.
    Received,
    /// The fragment is durably stored (streams with retention only).
    Persisted,
    /// The fragment failed; the service closes the connection after this.
    Error { id: u32, code: String },
    /// Keep-alive while no data arrives.
    Idle,
}

/// One acknowledgement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckEvent {
    pub kind: AckKind,
    /// The Cluster Timecode as sent (in TimecodeScale units); `None` for IDLE.
    pub timecode: Option<u64>,
    /// The service's fragment number, a decimal string.
    pub fragment_number: Option<String>,
}

impl AckKind {
    pub fn name(&self) -> &'static str {
        match self {
            AckKind::Buffering => "BUFFERING",
            AckKind::Received => "RECEIVED",
            AckKind::Persisted => "PERSISTED",
            AckKind::Error { .. } => "ERROR",
            AckKind::Idle => "IDLE",
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawAck {
    event_type: String,
    fragment_timecode: Option<u64>,
    fragment_number: Option<serde_json::Value>,
    error_id: Option<u32>,
    error_code: Option<String>,
}

/// Why an ACK could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AckError {
    /// An object longer than [`MAX_ACK_LEN`].
    TooLong,
    /// Not JSON, or JSON without a known `EventType` (or an ERROR without `ErrorId`).
    Invalid(String),
}

impl std::fmt::Display for AckError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AckError::TooLong => write!(f, "an acknowledgement longer than {MAX_ACK_LEN} bytes"),
            AckError::Invalid(why) => write!(f, "an unreadable acknowledgement: {why}"),
        }
    }
}

impl std::error::Error for AckError {}

/// Parses one ACK object.
pub fn parse_ack(text: &[u8]) -> Result<AckEvent, AckError> {
    let raw: RawAck = serde_json::from_slice(text).map_err(|e| AckError::Invalid(e.to_string()))?;
    let kind = match raw.event_type.as_str() {
        "BUFFERING" => AckKind::Buffering,
        "RECEIVED" => AckKind::Received,
        "PERSISTED" => AckKind::Persisted,
        "IDLE" => AckKind::Idle,
        "ERROR" => AckKind::Error {
            id: raw
                .error_id
                .ok_or_else(|| AckError::Invalid("an ERROR without ErrorId".into()))?,
            code: raw.error_code.unwrap_or_default(),
        },
        other => return Err(AckError::Invalid(format!("unknown EventType {other:?}"))),
    };
    let fragment_number = match raw.fragment_number {
        Some(serde_json::Value::String(s)) => Some(s),
        Some(serde_json::Value::Number(n)) => Some(n.to_string()),
        _ => None,
    };
    Ok(AckEvent {
        kind,
        timecode: raw.fragment_timecode,
        fragment_number,
    })
}

/// Splits a byte stream into ACK objects. See the module documentation.
#[derive(Debug, Default)]
pub struct AckParser {
    current: Vec<u8>,
    /// Bytes skipped between objects since the last line break.
    skipped: usize,
    depth: u32,
    in_string: bool,
    escaped: bool,
}

impl AckParser {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds bytes; returns the ACKs completed by them, in order.
    pub fn push(&mut self, data: &[u8]) -> Vec<Result<AckEvent, AckError>> {
        let mut out = Vec::new();
        for &byte in data {
            if self.depth == 0 {
                // Between objects only whitespace (newlines) is expected; anything else is skipped, but a line
                // of it longer than an ACK means the response is not an ACK stream.
                match byte {
                    b'{' => {
                        self.depth = 1;
                        self.skipped = 0;
                        self.current.clear();
                        self.current.push(byte);
                    }
                    b'\n' => self.skipped = 0,
                    _ => {
                        self.skipped += 1;
                        if self.skipped == MAX_ACK_LEN {
                            out.push(Err(AckError::TooLong));
                            self.skipped = 0;
                        }
                    }
                }
                continue;
            }
            if self.current.len() >= MAX_ACK_LEN {
                out.push(Err(AckError::TooLong));
                self.depth = 0;
                self.in_string = false;
                self.escaped = false;
                self.current.clear();
                continue;
            }
            if self.in_string && byte == b'\n' {
                // JSON strings hold no raw line break: this object was cut, and the next line starts afresh.
                out.push(Err(AckError::Invalid(
                    "a cut acknowledgement (a line break inside a string)".into(),
                )));
                self.depth = 0;
                self.in_string = false;
                self.escaped = false;
                self.current.clear();
                continue;
            }
            self.current.push(byte);
            if self.in_string {
                if self.escaped {
                    self.escaped = false;
                } else if byte == b'\\' {
                    self.escaped = true;
                } else if byte == b'"' {
                    self.in_string = false;
                }
                continue;
            }
            match byte {
                b'"' => self.in_string = true,
                b'{' | b'[' => self.depth += 1,
                b'}' | b']' => {
                    self.depth -= 1;
                    if self.depth == 0 {
                        out.push(parse_ack(&self.current));
                        self.current.clear();
                    }
                }
                _ => {}
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = concat!(
        r#"{"EventType":"BUFFERING","FragmentTimecode":1677613819540,"FragmentNumber":"91343852333182006801812051225829315333083406205"}"#,
        "\n",
        r#"{"EventType":"RECEIVED","FragmentTimecode":1677613819540,"FragmentNumber":"91343852333182006801812051225829315333083406205"}"#,
        "\n",
        r#"{"EventType":"ERROR","FragmentTimecode":0,"FragmentNumber":"913","ErrorCode":"FRAGMENT_TIMECODE_LESSER_THAN_PREVIOUS","ErrorId":4004}"#,
        "\n",
        r#"{"EventType":"IDLE"}"#,
        "\n"
    );

    fn kinds(results: &[Result<AckEvent, AckError>]) -> Vec<String> {
        results
            .iter()
            .map(|r| r.as_ref().unwrap().kind.name().to_owned())
            .collect()
    }

    #[test]
    fn parses_the_service_acks_in_one_read() {
        let acks = AckParser::new().push(SAMPLE.as_bytes());
        assert_eq!(kinds(&acks), ["BUFFERING", "RECEIVED", "ERROR", "IDLE"]);
        let first = acks[0].as_ref().unwrap();
        assert_eq!(first.timecode, Some(1677613819540));
        assert_eq!(
            first.fragment_number.as_deref(),
            Some("91343852333182006801812051225829315333083406205")
        );
        assert_eq!(
            acks[2].as_ref().unwrap().kind,
            AckKind::Error {
                id: 4004,
                code: "FRAGMENT_TIMECODE_LESSER_THAN_PREVIOUS".into()
            }
        );
        assert_eq!(acks[3].as_ref().unwrap().timecode, None);
    }

    #[test]
    fn any_split_of_the_stream_gives_the_same_acks() {
        let whole = AckParser::new().push(SAMPLE.as_bytes());
        for piece in 1..=17 {
            let mut parser = AckParser::new();
            let mut acks = Vec::new();
            for chunk in SAMPLE.as_bytes().chunks(piece) {
                acks.extend(parser.push(chunk));
            }
            assert_eq!(acks, whole, "pieces of {piece} bytes");
        }
    }

    #[test]
    fn braces_inside_strings_do_not_end_an_object() {
        let acks = AckParser::new().push(
            br#"{"EventType":"ERROR","ErrorCode":"odd } \" { code","ErrorId":5000,"FragmentTimecode":3}"#,
        );
        assert_eq!(
            acks[0].as_ref().unwrap().kind,
            AckKind::Error {
                id: 5000,
                code: "odd } \" { code".into()
            }
        );
    }

    #[test]
    fn unknown_events_and_errors_without_an_id_are_refused() {
        let acks = AckParser::new().push(
            br#"{"EventType":"SOMETHING"}{"EventType":"ERROR"}{"EventType":"RECEIVED","FragmentNumber":7}"#,
        );
        assert!(matches!(&acks[0], Err(AckError::Invalid(why)) if why.contains("SOMETHING")));
        assert!(matches!(&acks[1], Err(AckError::Invalid(why)) if why.contains("ErrorId")));
        assert_eq!(
            acks[2].as_ref().unwrap().fragment_number.as_deref(),
            Some("7")
        );
    }

    #[test]
    fn an_endless_line_outside_any_object_is_refused() {
        let mut parser = AckParser::new();
        assert!(parser.push(&vec![b'x'; MAX_ACK_LEN - 1]).is_empty());
        assert!(
            parser.push(b"\n").is_empty(),
            "a line break starts the count again"
        );
        assert!(parser.push(&vec![b'x'; MAX_ACK_LEN - 1]).is_empty());
        assert_eq!(parser.push(b"x"), [Err(AckError::TooLong)]);
    }

    #[test]
    fn a_line_cut_inside_a_string_is_refused_and_the_next_line_is_read() {
        let mut parser = AckParser::new();
        let line = SAMPLE.lines().nth(1).unwrap();
        let cut = format!("{}\u{1}}}\n{}\n", &line[..line.len() / 2], line);
        let out = parser.push(cut.as_bytes());
        assert_eq!(out.len(), 2, "{out:?}");
        assert!(
            matches!(&out[0], Err(AckError::Invalid(why)) if why.contains("cut")),
            "{out:?}"
        );
        assert_eq!(out[1].as_ref().unwrap().kind, AckKind::Received);
    }

    #[test]
    fn an_overlong_object_is_refused_and_parsing_goes_on() {
        let mut parser = AckParser::new();
        let long = format!("{{\"EventType\":\"{}\"}}", "x".repeat(MAX_ACK_LEN));
        let acks = parser.push(long.as_bytes());
        assert_eq!(acks[0], Err(AckError::TooLong));
        let acks = parser.push(br#"{"EventType":"IDLE"}"#);
        assert_eq!(acks.len(), 1, "{acks:?}");
        assert_eq!(acks[0].as_ref().unwrap().kind, AckKind::Idle);
    }
}
