// SPDX-License-Identifier: MPL-2.0

//! Prints the structure the streaming reader sees in a Matroska file: `cargo run -p kvs-mkv --example mkvdump FILE`.

use kvs_mkv::ebml::id;
use kvs_mkv::{Event, block, tags};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args().nth(1).ok_or("usage: mkvdump FILE")?;
    let data = std::fs::read(&path)?;
    let events = kvs_mkv::read_all(&data)?;
    let mut blocks = 0;
    for event in events {
        if !matches!(&event, Event::ClusterChild(el) if el.id == id::SIMPLE_BLOCK || el.id == id::BLOCK_GROUP)
            && blocks > 0
        {
            println!("    {blocks} blocks");
            blocks = 0;
        }
        match event {
            Event::EbmlHeader(el) => {
                println!("@{} EBML header ({} bytes)", el.offset, el.to_bytes().len())
            }
            Event::SegmentStart { offset, size, .. } => println!("@{offset} Segment size {size:?}"),
            Event::Element(el) if el.id == id::TAGS => {
                let tags = tags::parse_tags(&el.data())?;
                let list: Vec<String> = tags
                    .iter()
                    .map(|t| format!("{}={:?}", t.name, t.value))
                    .collect();
                println!("  @{} Tags [{}]", el.offset, list.join(", "));
            }
            Event::Element(el) => {
                println!(
                    "  @{} element 0x{:X} ({} bytes)",
                    el.offset,
                    el.id,
                    el.to_bytes().len()
                )
            }
            Event::ClusterStart { offset, size, .. } => {
                println!("  @{offset} Cluster size {size:?}")
            }
            Event::ClusterChild(el) if el.id == id::TIMECODE => {
                println!("    Timecode {}", kvs_mkv::ebml::read_uint(&el.data())?)
            }
            Event::ClusterChild(el) if el.id == id::SIMPLE_BLOCK => {
                block::parse_simple_block(&el.data())?;
                blocks += 1
            }
            Event::ClusterChild(el) if el.id == id::BLOCK_GROUP => {
                block::parse_block_group(&el.data())?;
                blocks += 1
            }
            Event::ClusterChild(el) => {
                println!("    child 0x{:X} ({} bytes)", el.id, el.to_bytes().len())
            }
            Event::ClusterEnd { end_offset } => println!("  /Cluster @{end_offset}"),
            Event::SegmentEnd { end_offset } => println!("/Segment @{end_offset}"),
        }
    }
    Ok(())
}
