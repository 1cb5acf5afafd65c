// SPDX-License-Identifier: MPL-2.0

fn main() {
    // Sets COMMIT_ID and BUILD_REL_DATE for gst::plugin_define! (shown by gst-inspect-1.0).
    gst_plugin_version_helper::info()
}
