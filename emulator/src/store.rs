// SPDX-License-Identifier: MPL-2.0

//! The in-memory stream registry.
//!
//! One [`Store`] per emulator, shared as `Arc<Store>`; its [`Streams`] sit behind a `std::sync::Mutex` that is
//! held only for short, non-blocking work (never across an `.await`). Streams are kept in a `BTreeMap` by name,
//! so ListStreams pages come out sorted by name.
//!
//! Choices (see the README's table): a stream is created `ACTIVE` straight away (the service goes through
//! `CREATING` for a few seconds, and clients poll DescribeStream until `ACTIVE`, so skipping it is invisible to
//! them); DeleteStream removes the stream at once (no `DELETING` phase); the account is always `123456789012`.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::Rng;
use rand::distr::Alphanumeric;

use crate::error::ApiError;

/// The account id in every ARN the emulator makes.
pub const ACCOUNT_ID: &str = "123456789012";

/// Most tags a stream can carry.
pub const MAX_TAGS_PER_STREAM: usize = 50;

/// Length of a stream's `Version` (the service's are 20 alphanumeric characters).
const VERSION_LENGTH: usize = 20;

/// A stream's `Status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamStatus {
    Creating,
    Active,
    Updating,
    Deleting,
}

impl StreamStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            StreamStatus::Creating => "CREATING",
            StreamStatus::Active => "ACTIVE",
            StreamStatus::Updating => "UPDATING",
            StreamStatus::Deleting => "DELETING",
        }
    }
}

/// One stream and its metadata. Per-stream media storage goes next to these fields.
#[derive(Debug)]
pub struct Stream {
    pub device_name: Option<String>,
    pub stream_name: String,
    pub stream_arn: String,
    pub media_type: Option<String>,
    pub kms_key_id: String,
    /// Changes on every metadata update (UpdateStream, UpdateDataRetention).
    pub version: String,
    pub status: StreamStatus,
    pub creation_time: SystemTime,
    pub data_retention_in_hours: u32,
    pub tags: BTreeMap<String, String>,
}

impl Stream {
    /// `CreationTime` as the service prints it: epoch seconds with a millisecond fraction.
    pub fn creation_time_epoch_seconds(&self) -> f64 {
        epoch_millis(self.creation_time) as f64 / 1000.0
    }

    /// Gives the stream a new random `Version`.
    pub fn bump_version(&mut self) {
        self.version = new_version();
    }
}

/// What CreateStream was asked for, already validated.
#[derive(Debug, Clone, Default)]
pub struct NewStream {
    pub stream_name: String,
    pub device_name: Option<String>,
    pub media_type: Option<String>,
    pub kms_key_id: Option<String>,
    pub data_retention_in_hours: u32,
    pub tags: BTreeMap<String, String>,
}

/// The stream registry of one emulator.
#[derive(Debug)]
pub struct Store {
    region: String,
    streams: Mutex<Streams>,
}

impl Store {
    pub fn new(region: impl Into<String>) -> Store {
        Store {
            region: region.into(),
            streams: Mutex::new(Streams::default()),
        }
    }

    pub fn region(&self) -> &str {
        &self.region
    }

    /// Locks the registry. A panic while it was held does not make it unusable: the maps stay consistent
    /// because every update is a single insert or remove.
    pub fn lock(&self) -> MutexGuard<'_, Streams> {
        self.streams
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Puts back a stream saved by `--data-dir`.
    pub fn restore(&self, stream: Stream) {
        self.lock()
            .by_name
            .insert(stream.stream_name.clone(), stream);
    }

    /// Forgets every stream (admin reset).
    pub fn reset(&self) {
        *self.lock() = Streams::default();
    }

    /// Creates an ACTIVE stream; `ResourceInUseException` if the name is taken.
    pub fn create(&self, new: NewStream) -> Result<String, ApiError> {
        let mut streams = self.lock();
        if streams.by_name.contains_key(&new.stream_name) {
            return Err(ApiError::resource_in_use(format!(
                "The stream {} already exists.",
                new.stream_name
            )));
        }
        let creation_time = now_millis_precision();
        let stream_arn = format!(
            "arn:{}:kinesisvideo:{}:{ACCOUNT_ID}:stream/{}/{}",
            partition(&self.region),
            self.region,
            new.stream_name,
            epoch_millis(creation_time)
        );
        let kms_key_id = new.kms_key_id.unwrap_or_else(|| {
            format!(
                "arn:{}:kms:{}:{ACCOUNT_ID}:alias/aws/kinesisvideo",
                partition(&self.region),
                self.region
            )
        });
        let stream = Stream {
            device_name: new.device_name,
            stream_name: new.stream_name.clone(),
            stream_arn: stream_arn.clone(),
            media_type: new.media_type,
            kms_key_id,
            version: new_version(),
            status: StreamStatus::Active,
            creation_time,
            data_retention_in_hours: new.data_retention_in_hours,
            tags: new.tags,
        };
        streams.by_name.insert(new.stream_name, stream);
        Ok(stream_arn)
    }
}

/// The streams, reached through [`Store::lock`].
#[derive(Debug, Default)]
pub struct Streams {
    by_name: BTreeMap<String, Stream>,
}

impl Streams {
    /// The stream with this name and/or ARN; `ResourceNotFoundException` if there is none. When both are
    /// given they must designate the same stream.
    pub fn find(&self, name: Option<&str>, arn: Option<&str>) -> Result<&Stream, ApiError> {
        let key = self.key_of(name, arn)?;
        self.by_name
            .get(&key)
            .ok_or_else(ApiError::stream_not_found)
    }

    /// Like [`Streams::find`], for changing the stream.
    pub fn find_mut(
        &mut self,
        name: Option<&str>,
        arn: Option<&str>,
    ) -> Result<&mut Stream, ApiError> {
        let key = self.key_of(name, arn)?;
        self.by_name
            .get_mut(&key)
            .ok_or_else(ApiError::stream_not_found)
    }

    /// Removes a stream at once and returns it.
    pub fn remove(&mut self, name: Option<&str>, arn: Option<&str>) -> Result<Stream, ApiError> {
        let key = self.key_of(name, arn)?;
        self.by_name
            .remove(&key)
            .ok_or_else(ApiError::stream_not_found)
    }

    /// All streams, sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = &Stream> {
        self.by_name.values()
    }

    /// The streams whose name comes after `name`, sorted by name.
    pub fn after(&self, name: &str) -> impl Iterator<Item = &Stream> {
        use std::ops::Bound;
        self.by_name
            .range::<str, _>((Bound::Excluded(name), Bound::Unbounded))
            .map(|(_, stream)| stream)
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// The map key (the name) of the stream designated by a name and/or an ARN.
    fn key_of(&self, name: Option<&str>, arn: Option<&str>) -> Result<String, ApiError> {
        match (name, arn) {
            (Some(name), None) => Ok(name.to_owned()),
            (name, Some(arn)) => {
                // An ARN designates one incarnation of a name: it must match exactly, creation time included.
                // The name is the ARN's second-last `/` segment (names cannot contain `/`).
                let name_in_arn = arn.rsplit('/').nth(1).unwrap_or_default();
                let stream = self
                    .by_name
                    .get(name_in_arn)
                    .filter(|stream| stream.stream_arn == arn)
                    .ok_or_else(ApiError::stream_not_found)?;
                match name {
                    Some(name) if name != stream.stream_name => Err(ApiError::stream_not_found()),
                    _ => Ok(stream.stream_name.clone()),
                }
            }
            (None, None) => Err(ApiError::invalid_argument(
                "Either StreamName or StreamARN must be specified.",
            )),
        }
    }
}

/// The ARN partition of a region.
fn partition(region: &str) -> &'static str {
    if region.starts_with("cn-") {
        "aws-cn"
    } else if region.starts_with("us-gov-") {
        "aws-us-gov"
    } else {
        "aws"
    }
}

fn new_version() -> String {
    rand::rng()
        .sample_iter(&Alphanumeric)
        .take(VERSION_LENGTH)
        .map(char::from)
        .collect()
}

/// Milliseconds since the Unix epoch (0 before 1970).
pub fn epoch_millis(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Now, truncated to whole milliseconds so the ARN suffix and `CreationTime` agree.
fn now_millis_precision() -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(epoch_millis(SystemTime::now()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new_stream(name: &str) -> NewStream {
        NewStream {
            stream_name: name.to_owned(),
            ..NewStream::default()
        }
    }

    #[test]
    fn create_makes_an_active_stream_with_arn_kms_key_and_version() {
        let store = Store::new("eu-west-1");
        let arn = store.create(new_stream("cam-1")).unwrap();
        let streams = store.lock();
        let stream = streams.find(Some("cam-1"), None).unwrap();
        assert_eq!(stream.stream_arn, arn);
        let millis = epoch_millis(stream.creation_time);
        assert_eq!(
            arn,
            format!("arn:aws:kinesisvideo:eu-west-1:123456789012:stream/cam-1/{millis}")
        );
        assert_eq!(
            stream.kms_key_id,
            "arn:aws:kms:eu-west-1:123456789012:alias/aws/kinesisvideo"
        );
        assert_eq!(stream.status, StreamStatus::Active);
        assert_eq!(stream.version.len(), 20);
        assert!(stream.version.chars().all(|c| c.is_ascii_alphanumeric()));
        assert_eq!(stream.creation_time_epoch_seconds(), millis as f64 / 1000.0);
    }

    #[test]
    fn names_are_unique() {
        let store = Store::new("us-east-1");
        store.create(new_stream("a")).unwrap();
        let err = store.create(new_stream("a")).unwrap_err();
        assert_eq!(err.name, "ResourceInUseException");
        assert_eq!(err.message, "The stream a already exists.");
    }

    #[test]
    fn find_by_name_arn_or_both() {
        let store = Store::new("us-east-1");
        let arn_a = store.create(new_stream("a")).unwrap();
        store.create(new_stream("b")).unwrap();
        let streams = store.lock();
        assert_eq!(streams.find(None, Some(&arn_a)).unwrap().stream_name, "a");
        assert_eq!(
            streams.find(Some("a"), Some(&arn_a)).unwrap().stream_name,
            "a"
        );
        assert_eq!(
            streams.find(Some("b"), Some(&arn_a)).unwrap_err().name,
            "ResourceNotFoundException"
        );
        assert_eq!(
            streams.find(Some("c"), None).unwrap_err().name,
            "ResourceNotFoundException"
        );
        let stale = arn_a.replace("/a/", "/a/1");
        assert_eq!(
            streams.find(None, Some(&stale)).unwrap_err().name,
            "ResourceNotFoundException"
        );
        assert_eq!(
            streams.find(None, None).unwrap_err().name,
            "InvalidArgumentException"
        );
    }

    #[test]
    fn remove_is_immediate_and_listing_is_sorted() {
        let store = Store::new("us-east-1");
        for name in ["c", "a", "b"] {
            store.create(new_stream(name)).unwrap();
        }
        let mut streams = store.lock();
        let names: Vec<_> = streams.iter().map(|s| s.stream_name.as_str()).collect();
        assert_eq!(names, ["a", "b", "c"]);
        let after: Vec<_> = streams.after("a").map(|s| s.stream_name.as_str()).collect();
        assert_eq!(after, ["b", "c"]);
        streams.remove(Some("b"), None).unwrap();
        assert_eq!(streams.len(), 2);
        assert!(streams.find(Some("b"), None).is_err());
    }

    #[test]
    fn bump_version_changes_it() {
        let store = Store::new("us-east-1");
        store.create(new_stream("a")).unwrap();
        let mut streams = store.lock();
        let stream = streams.find_mut(Some("a"), None).unwrap();
        let before = stream.version.clone();
        stream.bump_version();
        assert_ne!(stream.version, before);
    }

    #[test]
    fn partitions() {
        assert_eq!(partition("cn-north-1"), "aws-cn");
        assert_eq!(partition("us-gov-west-1"), "aws-us-gov");
        assert_eq!(partition("ap-south-1"), "aws");
    }
}
