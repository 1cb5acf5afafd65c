// SPDX-License-Identifier: MPL-2.0

//! Tags: the per-fragment metadata of KVS (`AWS_KINESISVIDEO_*` and user tags).

use crate::Error;
use crate::ebml::{children, id, write_id, write_size};

pub const END_OF_FRAGMENT: &str = "AWS_KINESISVIDEO_END_OF_FRAGMENT";
pub const FRAGMENT_NUMBER: &str = "AWS_KINESISVIDEO_FRAGMENT_NUMBER";
pub const SERVER_TIMESTAMP: &str = "AWS_KINESISVIDEO_SERVER_TIMESTAMP";
pub const PRODUCER_TIMESTAMP: &str = "AWS_KINESISVIDEO_PRODUCER_TIMESTAMP";
pub const MILLIS_BEHIND_NOW: &str = "AWS_KINESISVIDEO_MILLIS_BEHIND_NOW";
pub const CONTINUATION_TOKEN: &str = "AWS_KINESISVIDEO_CONTINUATION_TOKEN";
pub const ERROR_CODE: &str = "AWS_KINESISVIDEO_ERROR_CODE";
pub const ERROR_ID: &str = "AWS_KINESISVIDEO_ERROR_ID";
/// The producer's event tags: the service sends an SNS notification for a fragment with `NOTIFICATION`, and
/// generates images of one with `IMAGE_GENERATION` (named with `IMAGE_PREFIX`). Unlike the names above, a
/// producer writes them.
pub const NOTIFICATION: &str = "AWS_KINESISVIDEO_NOTIFICATION";
pub const IMAGE_GENERATION: &str = "AWS_KINESISVIDEO_IMAGE_GENERATION";
pub const IMAGE_PREFIX: &str = "AWS_KINESISVIDEO_IMAGE_PREFIX";
pub const EVENT_TAGS: [&str; 3] = [NOTIFICATION, IMAGE_GENERATION, IMAGE_PREFIX];

/// One SimpleTag: a name and a string value (binary values are kept as lossy UTF-8).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimpleTag {
    pub name: String,
    pub value: String,
}

impl SimpleTag {
    pub fn new(name: impl Into<String>, value: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            value: value.into(),
        }
    }
}

/// All SimpleTags of a Tags element's data, in order, nested ones included.
pub fn parse_tags(tags_data: &[u8]) -> Result<Vec<SimpleTag>, Error> {
    let mut out = Vec::new();
    for tag in children(tags_data) {
        let (tag_id, tag_data) = tag?;
        if tag_id != id::TAG {
            continue;
        }
        for child in children(tag_data) {
            let (child_id, data) = child?;
            if child_id == id::SIMPLE_TAG {
                parse_simple_tag(data, &mut out)?;
            }
        }
    }
    Ok(out)
}

fn parse_simple_tag(data: &[u8], out: &mut Vec<SimpleTag>) -> Result<(), Error> {
    let mut name = String::new();
    let mut value = String::new();
    let mut nested = Vec::new();
    for child in children(data) {
        let (child_id, child_data) = child?;
        match child_id {
            id::TAG_NAME => {
                name = String::from_utf8_lossy(child_data)
                    .trim_end_matches('\0')
                    .to_owned()
            }
            id::TAG_STRING | id::TAG_BINARY => {
                value = String::from_utf8_lossy(child_data)
                    .trim_end_matches('\0')
                    .to_owned()
            }
            id::SIMPLE_TAG => nested.push(child_data),
            _ => {}
        }
    }
    out.push(SimpleTag { name, value });
    for nested in nested {
        parse_simple_tag(nested, out)?;
    }
    Ok(())
}

/// True when a Tags element's data is the end-of-fragment marker.
pub fn is_end_of_fragment(tags_data: &[u8]) -> bool {
    parse_tags(tags_data).is_ok_and(|tags| tags.iter().any(|t| t.name == END_OF_FRAGMENT))
}

/// Writes a whole Tags element holding one Tag with `tags` as SimpleTags, every size field `size_width`
/// bytes wide (KVS writes 4-byte sizes in GetMedia output, the C++ producer 8-byte sizes).
pub fn write_tags(out: &mut Vec<u8>, tags: &[SimpleTag], size_width: usize) {
    let mut simple_tags = Vec::new();
    for tag in tags {
        let mut body = Vec::new();
        write_element(&mut body, id::TAG_NAME, tag.name.as_bytes(), size_width);
        write_element(&mut body, id::TAG_STRING, tag.value.as_bytes(), size_width);
        write_element(&mut simple_tags, id::SIMPLE_TAG, &body, size_width);
    }
    let mut tag = Vec::new();
    write_element(&mut tag, id::TAG, &simple_tags, size_width);
    write_element(out, id::TAGS, &tag, size_width);
}

fn write_element(out: &mut Vec<u8>, element_id: u32, data: &[u8], size_width: usize) {
    write_id(out, element_id);
    write_size(
        out,
        data.len() as u64,
        size_width.max(crate::ebml::size_width(data.len() as u64)),
    );
    out.extend_from_slice(data);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ebml::read_size;

    #[test]
    fn write_then_parse() {
        let tags = vec![
            SimpleTag::new(FRAGMENT_NUMBER, "913438"),
            SimpleTag::new("user", "hello"),
        ];
        let mut out = Vec::new();
        write_tags(&mut out, &tags, 4);
        assert_eq!(&out[..4], &[0x12, 0x54, 0xC3, 0x67]);
        let (size, width) = read_size(&out[4..]).unwrap().unwrap();
        assert_eq!(width, 4);
        assert_eq!(size, Some(out.len() as u64 - 8));
        assert_eq!(parse_tags(&out[8..]).unwrap(), tags);
        assert!(!is_end_of_fragment(&out[8..]));
        let mut eofr = Vec::new();
        write_tags(&mut eofr, &[SimpleTag::new(END_OF_FRAGMENT, "")], 8);
        assert!(is_end_of_fragment(&eofr[12..]));
    }
}
