#!/usr/bin/env python3
# SPDX-License-Identifier: MPL-2.0
"""Saves a time range of a Kinesis video stream into a Matroska file that any player opens.

    python3 examples/python/kvs_download.py cam1 2026-11-28T10:00:00Z 2026-11-28T10:05:00Z cam1.mkv

Times are producer timestamps: RFC 3339, or seconds since the Unix epoch. Credentials come from the AWS
environment, the endpoint from CONTROL_PLANE_URI when it is set.
"""

import sys
import urllib.parse

import gi

gi.require_version("Gst", "1.0")
from gi.repository import GLib, Gst  # noqa: E402


def main():
    if len(sys.argv) != 5:
        sys.exit(__doc__)
    stream, start, end, path = sys.argv[1:]
    Gst.init(None)
    query = urllib.parse.urlencode(
        {"start-selector": "producer-timestamp", "start-timestamp": start, "end-timestamp": end}
    )
    try:
        source = Gst.Element.make_from_uri(Gst.URIType.SRC, f"kvs://{stream}?{query}", None)
    except GLib.Error as error:
        sys.exit(f"error: {error.message}")
    sink = Gst.ElementFactory.make("filesink")
    sink.set_property("location", path)
    pipeline = Gst.Pipeline()
    pipeline.add(source)
    pipeline.add(sink)
    source.link(sink)

    pipeline.set_state(Gst.State.PLAYING)
    wanted = Gst.MessageType.ERROR | Gst.MessageType.EOS | Gst.MessageType.ELEMENT
    while True:
        message = pipeline.get_bus().timed_pop_filtered(Gst.CLOCK_TIME_NONE, wanted)
        if message.type == Gst.MessageType.ELEMENT and message.get_structure().get_name() == "kvssrc-progress":
            progress = message.get_structure()
            done, total = progress.get_value("fragments-done"), progress.get_value("fragments-total")
            bar = "#" * (30 * done // max(total, 1))
            print(f"\r[{bar:<30}] {done}/{total} fragments", end="", file=sys.stderr, flush=True)
        elif message.type == Gst.MessageType.ERROR:
            pipeline.set_state(Gst.State.NULL)
            sys.exit(f"\nerror: {message.parse_error()[0].message}")
        elif message.type == Gst.MessageType.EOS:
            break
    pipeline.set_state(Gst.State.NULL)
    print(f"\nsaved {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
