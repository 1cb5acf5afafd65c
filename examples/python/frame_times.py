#!/usr/bin/env python3
# SPDX-License-Identifier: MPL-2.0
"""Prints every frame of a time range of a Kinesis video stream with its capture time (the producer timestamp
kvssink stored) and the time the service received its fragment, and each fragment's own tags.

    python3 examples/python/frame_times.py cam1 2026-11-28T10:00:00Z 2026-11-28T10:05:00Z

kvssrc gives each frame as a buffer of its own with two GstReferenceTimestampMeta, caps timestamp/x-kvs-producer
and timestamp/x-kvs-server (nanoseconds since the Unix epoch); an appsink right after it reads them. Times are
producer timestamps: RFC 3339, or seconds since the Unix epoch. Credentials come from the AWS environment, the
endpoint from CONTROL_PLANE_URI when it is set. One line per frame:

    frame 0: captured 2026-11-28T10:00:00.033Z, received by the service 2026-11-28T10:00:00.512Z, 5123 bytes
"""

import sys
import time
import urllib.parse

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstApp", "1.0")
from gi.repository import GLib, Gst, GstApp  # noqa: E402,F401

PRODUCER = "timestamp/x-kvs-producer"
SERVER = "timestamp/x-kvs-server"


def utc(ns):
    seconds, rest = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{rest // 1_000_000:03d}Z"


def reference_time(buffer, caps):
    meta = buffer.get_reference_timestamp_meta(Gst.Caps.from_string(caps))
    return meta.timestamp if meta else None


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    stream, start, end = sys.argv[1:]
    Gst.init(None)
    query = urllib.parse.urlencode(
        {"start-selector": "producer-timestamp", "start-timestamp": start, "end-timestamp": end}
    )
    try:
        source = Gst.Element.make_from_uri(Gst.URIType.SRC, f"kvs://{stream}?{query}", None)
    except GLib.Error as error:
        sys.exit(f"error: {error.message}")
    sink = Gst.ElementFactory.make("appsink")
    sink.set_property("sync", False)
    pipeline = Gst.Pipeline()
    pipeline.add(source)
    pipeline.add(sink)
    source.link(sink)

    def on_event(_pad, info):
        event = info.get_event()
        if event.type == Gst.EventType.TAG:
            tags = event.parse_tag()
            for i in range(tags.get_tag_size(Gst.TAG_EXTENDED_COMMENT)):
                print(f"tag: {tags.get_string_index(Gst.TAG_EXTENDED_COMMENT, i)[1]}", flush=True)
        return Gst.PadProbeReturn.OK

    sink.get_static_pad("sink").add_probe(Gst.PadProbeType.EVENT_DOWNSTREAM, on_event)
    pipeline.set_state(Gst.State.PLAYING)
    frames = 0
    while True:
        sample = sink.emit("pull-sample")
        if sample is None:
            break
        buffer = sample.get_buffer()
        producer = reference_time(buffer, PRODUCER)
        if producer is None:
            continue  # stream header, cluster head: not a frame
        server = reference_time(buffer, SERVER)
        received = utc(server) if server is not None else "unknown"
        print(f"frame {frames}: captured {utc(producer)}, received by the service {received}, "
              f"{buffer.get_size()} bytes", flush=True)
        frames += 1
    message = pipeline.get_bus().pop_filtered(Gst.MessageType.ERROR)
    pipeline.set_state(Gst.State.NULL)
    if message:
        error, _debug = message.parse_error()
        sys.exit(f"error: {error.message}")
    print(f"{frames} frames", file=sys.stderr)


if __name__ == "__main__":
    main()
