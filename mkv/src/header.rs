// SPDX-License-Identifier: MPL-2.0

//! What a Matroska stream header says: doc type, timecode scale and tracks.

use crate::Error;
use crate::ebml::{children, id, read_float, read_uint, write_binary, write_master};

/// Track types (Matroska TrackType values).
pub const TRACK_TYPE_VIDEO: u64 = 1;
pub const TRACK_TYPE_AUDIO: u64 = 2;

/// One TrackEntry.
#[derive(Debug, Clone, PartialEq)]
pub struct Track {
    pub number: u64,
    pub uid: u64,
    pub track_type: u64,
    pub codec_id: String,
    pub codec_private: Vec<u8>,
    pub name: Option<String>,
    pub pixel_size: Option<(u64, u64)>,
    pub sampling_frequency: Option<f64>,
    pub channels: Option<u64>,
}

/// The DocType of an EBML header element's data (`matroska` or `webm`; anything else is refused).
pub fn doc_type(ebml_header_data: &[u8]) -> Result<String, Error> {
    let mut doc_type = "matroska".to_owned(); // the EBML default
    for child in children(ebml_header_data) {
        let (child_id, data) = child?;
        if child_id == id::DOC_TYPE {
            doc_type = String::from_utf8_lossy(data)
                .trim_end_matches('\0')
                .to_owned();
        }
    }
    match doc_type.as_str() {
        "matroska" | "webm" => Ok(doc_type),
        _ => Err(Error::UnsupportedDocType(doc_type)),
    }
}

/// TimecodeScale (nanoseconds per timecode unit) from an Info element's data; 1,000,000 when absent.
pub fn timecode_scale(info_data: &[u8]) -> Result<u64, Error> {
    for child in children(info_data) {
        let (child_id, data) = child?;
        if child_id == id::TIMECODE_SCALE {
            let scale = read_uint(data)?;
            if scale == 0 {
                return Err(Error::InvalidValue("TimecodeScale of 0"));
            }
            return Ok(scale);
        }
    }
    Ok(1_000_000)
}

/// The tracks of a Tracks element's data.
pub fn tracks(tracks_data: &[u8]) -> Result<Vec<Track>, Error> {
    let mut tracks = Vec::new();
    for entry in children(tracks_data) {
        let (entry_id, entry_data) = entry?;
        if entry_id != id::TRACK_ENTRY {
            continue;
        }
        let mut track = Track {
            number: 0,
            uid: 0,
            track_type: 0,
            codec_id: String::new(),
            codec_private: Vec::new(),
            name: None,
            pixel_size: None,
            sampling_frequency: None,
            channels: None,
        };
        for child in children(entry_data) {
            let (child_id, data) = child?;
            match child_id {
                id::TRACK_NUMBER => track.number = read_uint(data)?,
                id::TRACK_UID => track.uid = read_uint(data)?,
                id::TRACK_TYPE => track.track_type = read_uint(data)?,
                id::CODEC_ID => {
                    track.codec_id = String::from_utf8_lossy(data)
                        .trim_end_matches('\0')
                        .to_owned()
                }
                id::CODEC_PRIVATE => track.codec_private = data.to_vec(),
                id::NAME => {
                    track.name = Some(
                        String::from_utf8_lossy(data)
                            .trim_end_matches('\0')
                            .to_owned(),
                    )
                }
                0xE0 => {
                    let mut width = 0;
                    let mut height = 0;
                    for video in children(data) {
                        let (video_id, value) = video?;
                        match video_id {
                            0xB0 => width = read_uint(value)?,
                            0xBA => height = read_uint(value)?,
                            _ => {}
                        }
                    }
                    track.pixel_size = Some((width, height));
                }
                0xE1 => {
                    for audio in children(data) {
                        let (audio_id, value) = audio?;
                        match audio_id {
                            0xB5 => track.sampling_frequency = Some(read_float(value)?),
                            0x9F => track.channels = Some(read_uint(value)?),
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        if track.number == 0 {
            return Err(Error::InvalidValue("TrackEntry without a TrackNumber"));
        }
        tracks.push(track);
    }
    Ok(tracks)
}

/// A track's new Name and CodecID (None: keep what it has).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrackRename {
    pub name: Option<String>,
    pub codec_id: Option<String>,
}

/// A Tracks element (id, size and data) rebuilt from `tracks_data` with each TrackEntry's Name and CodecID
/// replaced as `rename(track_type)` says; every other child is kept as it was (re-encoded with the smallest
/// size fields). This is how kvssink gives the tracks it muxes itself the C++ kvssink's names and codec IDs.
pub fn rename_tracks(
    tracks_data: &[u8],
    rename: impl Fn(u64) -> TrackRename,
) -> Result<Vec<u8>, Error> {
    let mut entries = Vec::new();
    for entry in children(tracks_data) {
        let (entry_id, entry_data) = entry?;
        if entry_id != id::TRACK_ENTRY {
            write_binary(&mut entries, entry_id, entry_data);
            continue;
        }
        let mut track_type = 0;
        for child in children(entry_data) {
            let (child_id, data) = child?;
            if child_id == id::TRACK_TYPE {
                track_type = read_uint(data)?;
            }
        }
        let wanted = rename(track_type);
        let mut entry = Vec::new();
        for child in children(entry_data) {
            let (child_id, data) = child?;
            match child_id {
                id::NAME if wanted.name.is_some() => {}
                id::CODEC_ID if wanted.codec_id.is_some() => {}
                _ => write_binary(&mut entry, child_id, data),
            }
        }
        if let Some(name) = &wanted.name {
            write_binary(&mut entry, id::NAME, name.as_bytes());
        }
        if let Some(codec_id) = &wanted.codec_id {
            write_binary(&mut entry, id::CODEC_ID, codec_id.as_bytes());
        }
        write_master(&mut entries, id::TRACK_ENTRY, &entry, 1);
    }
    let mut out = Vec::new();
    write_master(&mut out, id::TRACKS, &entries, 4);
    Ok(out)
}

/// The MIME type KVS uses for a Matroska codec ID (`video/h264`, `audio/aac`...), as CreateStream's
/// MediaType expects; `None` for codecs KVS has no name for.
pub fn media_type(codec_id: &str) -> Option<&'static str> {
    Some(match codec_id {
        "V_MPEG4/ISO/AVC" => "video/h264",
        "V_MPEGH/ISO/HEVC" => "video/h265",
        "V_VP8" => "video/vp8",
        "V_VP9" => "video/vp9",
        "V_AV1" => "video/av1",
        "V_MJPEG" => "video/x-motion-jpeg",
        "A_AAC" | "A_AAC/MPEG4/LC" | "A_AAC/MPEG2/LC" => "audio/aac",
        "A_OPUS" => "audio/opus",
        "A_VORBIS" => "audio/vorbis",
        "A_MPEG/L3" => "audio/mpeg",
        "A_MS/ACM" => "audio/x-ms-acm",
        "A_PCM/INT/LIT" => "audio/L16",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ebml::{write_binary, write_master, write_uint};

    #[test]
    fn doc_types() {
        let mut header = Vec::new();
        write_binary(&mut header, id::DOC_TYPE, b"webm");
        assert_eq!(doc_type(&header).unwrap(), "webm");
        assert_eq!(doc_type(&[]).unwrap(), "matroska");
        let mut header = Vec::new();
        write_binary(&mut header, id::DOC_TYPE, b"avi");
        assert_eq!(
            doc_type(&header),
            Err(Error::UnsupportedDocType("avi".into()))
        );
    }

    #[test]
    fn tracks_and_scale() {
        let mut video = Vec::new();
        write_uint(&mut video, 0xB0, 640);
        write_uint(&mut video, 0xBA, 480);
        let mut entry = Vec::new();
        write_uint(&mut entry, id::TRACK_NUMBER, 1);
        write_uint(&mut entry, id::TRACK_UID, 77);
        write_uint(&mut entry, id::TRACK_TYPE, TRACK_TYPE_VIDEO);
        write_binary(&mut entry, id::CODEC_ID, b"V_MPEG4/ISO/AVC");
        write_binary(&mut entry, id::CODEC_PRIVATE, &[1, 2, 3]);
        write_master(&mut entry, 0xE0, &video, 1);
        let mut body = Vec::new();
        write_master(&mut body, id::TRACK_ENTRY, &entry, 1);
        let tracks = tracks(&body).unwrap();
        assert_eq!(tracks.len(), 1);
        assert_eq!(tracks[0].number, 1);
        assert_eq!(tracks[0].codec_id, "V_MPEG4/ISO/AVC");
        assert_eq!(tracks[0].pixel_size, Some((640, 480)));
        assert_eq!(media_type(&tracks[0].codec_id), Some("video/h264"));

        let mut info = Vec::new();
        write_uint(&mut info, id::TIMECODE_SCALE, 1000);
        assert_eq!(timecode_scale(&info).unwrap(), 1000);
        assert_eq!(timecode_scale(&[]).unwrap(), 1_000_000);
    }

    #[test]
    fn tracks_are_renamed_by_type_and_keep_everything_else() {
        let mut body = Vec::new();
        for (number, kind, codec, name) in [
            (1, TRACK_TYPE_VIDEO, "V_MPEG4/ISO/AVC", Some("Video")),
            (2, TRACK_TYPE_AUDIO, "A_AAC", None),
        ] {
            let mut entry = Vec::new();
            write_uint(&mut entry, id::TRACK_NUMBER, number);
            write_uint(&mut entry, id::TRACK_TYPE, kind);
            if let Some(name) = name {
                write_binary(&mut entry, id::NAME, name.as_bytes());
            }
            write_binary(&mut entry, id::CODEC_ID, codec.as_bytes());
            write_binary(&mut entry, id::CODEC_PRIVATE, &[9; 200]);
            write_master(&mut body, id::TRACK_ENTRY, &entry, 1);
        }
        let renamed = rename_tracks(&body, |kind| TrackRename {
            name: Some(
                if kind == TRACK_TYPE_VIDEO {
                    "kinesis_video"
                } else {
                    "audio"
                }
                .to_owned(),
            ),
            codec_id: (kind == TRACK_TYPE_VIDEO).then(|| "V_MPEG4/ISO/AVC/X".to_owned()),
        })
        .unwrap();
        let (element_id, _) = crate::ebml::read_id(&renamed).unwrap().unwrap();
        assert_eq!(element_id, id::TRACKS);
        let data = children(&renamed).next().unwrap().unwrap().1;
        let tracks = tracks(data).unwrap();
        assert_eq!(tracks.len(), 2);
        assert_eq!(tracks[0].name.as_deref(), Some("kinesis_video"));
        assert_eq!(tracks[0].codec_id, "V_MPEG4/ISO/AVC/X");
        assert_eq!(tracks[0].codec_private, vec![9; 200]);
        assert_eq!(
            (tracks[1].number, tracks[1].name.as_deref()),
            (2, Some("audio"))
        );
        assert_eq!(tracks[1].codec_id, "A_AAC");
        // Nothing asked: the same tracks.
        let same = rename_tracks(&body, |_| TrackRename::default()).unwrap();
        assert_eq!(
            super::tracks(children(&same).next().unwrap().unwrap().1)
                .unwrap()
                .len(),
            2
        );
    }
}
