// SPDX-License-Identifier: MPL-2.0

//! `--data-dir`: streams and fragments that survive a restart.
//!
//! Layout: `streams.json` holds the stream registry (rewritten whole, through a temporary file and a rename,
//! after every change); `media/<stream ARN, made file-safe>/<sequence>.mkv` holds each complete fragment as
//! one GetMedia document (header, fragment tags, Cluster, its own tags), the format the admin import reads,
//! so loading a stream's media at start-up is an import of its files in sequence order.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::media::{Fragment, MediaStore};
use crate::store::{Store, Stream, StreamStatus, epoch_millis};

#[derive(Debug)]
pub struct DataDir {
    root: PathBuf,
}

fn file_safe(arn: &str) -> String {
    arn.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn write_atomically(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let temporary = path.with_extension("tmp");
    std::fs::write(&temporary, data)?;
    std::fs::rename(&temporary, path)
}

impl DataDir {
    /// Opens (creating it if needed) a data directory.
    pub fn open(root: &Path) -> std::io::Result<DataDir> {
        std::fs::create_dir_all(root.join("media"))?;
        Ok(DataDir {
            root: root.to_owned(),
        })
    }

    fn media_dir(&self, arn: &str) -> PathBuf {
        self.root.join("media").join(file_safe(arn))
    }

    /// Writes the stream registry.
    pub fn save_streams(&self, store: &Store) -> std::io::Result<()> {
        let streams: Vec<Value> = store
            .lock()
            .iter()
            .map(|s| {
                json!({
                    "StreamName": s.stream_name, "StreamARN": s.stream_arn, "DeviceName": s.device_name,
                    "MediaType": s.media_type, "KmsKeyId": s.kms_key_id, "Version": s.version,
                    "CreationTimeMs": epoch_millis(s.creation_time), "DataRetentionInHours": s.data_retention_in_hours,
                    "Tags": s.tags,
                })
            })
            .collect();
        write_atomically(
            &self.root.join("streams.json"),
            json!({ "streams": streams }).to_string().as_bytes(),
        )
    }

    /// Removes the media of streams that no longer exist, on disk and in memory.
    pub fn prune(&self, store: &Store, media: &MediaStore) -> std::io::Result<()> {
        let live: Vec<String> = store.lock().iter().map(|s| s.stream_arn.clone()).collect();
        let gone: Vec<String> = media
            .lock()
            .keys()
            .filter(|arn| !live.contains(arn))
            .cloned()
            .collect();
        for arn in gone {
            media.remove(&arn);
        }
        let live_dirs: Vec<String> = live.iter().map(|arn| file_safe(arn)).collect();
        for entry in std::fs::read_dir(self.root.join("media"))? {
            let entry = entry?;
            if !live_dirs
                .iter()
                .any(|dir| entry.file_name().to_str() == Some(dir))
            {
                std::fs::remove_dir_all(entry.path())?;
            }
        }
        Ok(())
    }

    /// Writes one complete fragment.
    pub fn save_fragment(&self, arn: &str, fragment: &Fragment) -> std::io::Result<()> {
        let dir = self.media_dir(arn);
        std::fs::create_dir_all(&dir)?;
        let mut data = Vec::with_capacity(fragment.size as usize + 4096);
        for part in crate::archived::fragment_document(fragment) {
            data.extend_from_slice(&part);
        }
        write_atomically(&dir.join(format!("{:012}.mkv", fragment.sequence)), &data)
    }

    /// Deletes expired fragments' files (best effort: a file left behind is dropped again at the next load).
    pub fn remove_fragments(&self, arn: &str, sequences: &[u64]) {
        let dir = self.media_dir(arn);
        for sequence in sequences {
            let _ = std::fs::remove_file(dir.join(format!("{sequence:012}.mkv")));
        }
    }

    /// Loads the streams and their fragments into empty stores.
    pub fn load(&self, store: &Store, media: &MediaStore) -> Result<(usize, usize), String> {
        let path = self.root.join("streams.json");
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok((0, 0)),
            Err(err) => return Err(format!("{}: {err}", path.display())),
        };
        let saved: Value =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        let text_of = |v: &Value| v.as_str().map(str::to_owned);
        let (mut streams, mut fragments) = (0, 0);
        for s in saved["streams"].as_array().cloned().unwrap_or_default() {
            let (Some(name), Some(arn)) = (text_of(&s["StreamName"]), text_of(&s["StreamARN"]))
            else {
                return Err(format!(
                    "{}: a stream without a name or ARN",
                    path.display()
                ));
            };
            let tags: BTreeMap<String, String> =
                serde_json::from_value(s["Tags"].clone()).unwrap_or_default();
            store.restore(Stream {
                device_name: text_of(&s["DeviceName"]),
                stream_name: name,
                stream_arn: arn.clone(),
                media_type: text_of(&s["MediaType"]),
                kms_key_id: text_of(&s["KmsKeyId"]).unwrap_or_default(),
                version: text_of(&s["Version"]).unwrap_or_default(),
                status: StreamStatus::Active,
                creation_time: UNIX_EPOCH
                    + Duration::from_millis(s["CreationTimeMs"].as_u64().unwrap_or(0)),
                data_retention_in_hours: s["DataRetentionInHours"].as_u64().unwrap_or(0) as u32,
                tags,
            });
            streams += 1;
            let dir = self.media_dir(&arn);
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            let mut files: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "mkv"))
                .collect();
            files.sort();
            for file in files {
                let data = std::fs::read(&file).map_err(|e| format!("{}: {e}", file.display()))?;
                let parsed = crate::admin::parse_recording(&data)
                    .map_err(|e| format!("{}: {e}", file.display()))?;
                let sequence = file
                    .file_stem()
                    .and_then(|n| n.to_str())
                    .and_then(|n| n.parse::<u64>().ok());
                for mut fragment in parsed {
                    fragment.sequence = sequence.unwrap_or(0);
                    media.push_complete(&arn, fragment);
                    fragments += 1;
                }
            }
        }
        Ok((streams, fragments))
    }

    /// Forgets everything (admin reset).
    pub fn clear(&self) -> std::io::Result<()> {
        let _ = std::fs::remove_file(self.root.join("streams.json"));
        std::fs::remove_dir_all(self.root.join("media"))?;
        std::fs::create_dir_all(self.root.join("media"))
    }
}
