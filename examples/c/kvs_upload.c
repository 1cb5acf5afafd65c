/* SPDX-License-Identifier: MPL-2.0 */

/* Streams H.264 to Kinesis Video Streams with kvssink and prints every fragment acknowledgement, read from the
 * kvssink-ack element messages.
 *
 *   cc kvs_upload.c -o kvs_upload $(pkg-config --cflags --libs gstreamer-1.0)
 *   ./kvs_upload cam1
 *   ./kvs_upload cam1 "v4l2src ! videoconvert ! x264enc tune=zerolatency key-int-max=60 bframes=0 ! h264parse"
 *
 * Credentials and region come from the AWS environment, the endpoint from CONTROL_PLANE_URI when it is set
 * (kvs-emulator); GST_PLUGIN_PATH must name the directory of libgstkvs.so if it is not installed. Exits with 1
 * and the element's message on an error.
 */

#include <gst/gst.h>
#include <stdio.h>

#define DEFAULT_SOURCE                                                                                        \
  "videotestsrc is-live=true num-buffers=300 ! video/x-raw,width=640,height=480,framerate=30/1 "              \
  "! x264enc tune=zerolatency key-int-max=60 bframes=0 ! h264parse"

static void print_ack (const GstStructure * ack)
{
  guint64 timecode = 0, latency = 0;
  gst_structure_get_uint64 (ack, "fragment-timecode", &timecode);
  if (!gst_structure_get_uint64 (ack, "latency-ms", &latency))
    latency = 0;
  printf ("ack: %s fragment %s (timecode %" G_GUINT64_FORMAT " ms, %" G_GUINT64_FORMAT " ms after it was sent)\n",
      gst_structure_get_string (ack, "event-type"), gst_structure_get_string (ack, "fragment-number"), timecode,
      latency);
  fflush (stdout);
}

int main (int argc, char *argv[])
{
  gst_init (&argc, &argv);
  if (argc < 2 || argc > 3) {
    fprintf (stderr, "usage: %s STREAM [SOURCE-DESCRIPTION]\n", argv[0]);
    return 2;
  }
  gchar *description = g_strdup_printf ("%s ! matroskamux ! kvssink name=sink", argc == 3 ? argv[2] : DEFAULT_SOURCE);
  GError *error = NULL;
  GstElement *pipeline = gst_parse_launch (description, &error);
  g_free (description);
  if (error) {                  /* a pipeline may come back with an error: an element missing */
    fprintf (stderr, "error: cannot build the pipeline: %s\n", error->message);
    g_clear_error (&error);
    if (pipeline)
      gst_object_unref (pipeline);
    return 1;
  }
  GstElement *sink = gst_bin_get_by_name (GST_BIN (pipeline), "sink");
  g_object_set (sink, "stream-name", argv[1], NULL);

  int status = 0;
  GstBus *bus = gst_element_get_bus (pipeline);
  gst_element_set_state (pipeline, GST_STATE_PLAYING);
  for (gboolean done = FALSE; !done;) {
    GstMessage *message = gst_bus_timed_pop_filtered (bus, GST_CLOCK_TIME_NONE,
        GST_MESSAGE_ELEMENT | GST_MESSAGE_ERROR | GST_MESSAGE_EOS);
    switch (GST_MESSAGE_TYPE (message)) {
      case GST_MESSAGE_ELEMENT:
        if (gst_message_has_name (message, "kvssink-ack"))
          print_ack (gst_message_get_structure (message));
        break;
      case GST_MESSAGE_ERROR:{
        gchar *debug = NULL;
        gst_message_parse_error (message, &error, &debug);
        fprintf (stderr, "error: %s\n", error->message);
        if (debug)
          fprintf (stderr, "details: %s\n", debug);
        g_clear_error (&error);
        g_free (debug);
        status = 1;
        done = TRUE;
        break;
      }
      default:                 /* EOS: everything is persisted */
        done = TRUE;
    }
    gst_message_unref (message);
  }

  if (status == 0) {
    GstStructure *stats = NULL;
    guint64 persisted = 0, bytes = 0;
    g_object_get (sink, "stats", &stats, NULL);
    gst_structure_get_uint64 (stats, "fragments-persisted", &persisted);
    gst_structure_get_uint64 (stats, "bytes-sent", &bytes);
    printf ("stats: %" G_GUINT64_FORMAT " persisted, %" G_GUINT64_FORMAT " bytes\n", persisted, bytes);
    gst_structure_free (stats);
  }
  gst_element_set_state (pipeline, GST_STATE_NULL);
  gst_object_unref (sink);
  gst_object_unref (bus);
  gst_object_unref (pipeline);
  return status;
}
