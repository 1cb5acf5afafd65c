#!/usr/bin/env bash
# SPDX-License-Identifier: MPL-2.0
# Checks the cargo-c build (`cargo cbuild`), as gst-plugins-rs plugins are built for static GStreamer: the shared
# and the static plugin and gstkvs.pc are made, and a C program linked with the static plugin (and no plugin
# path) registers it with GST_PLUGIN_STATIC_REGISTER and makes kvssink and kvssrc.
#
# cargo-c is installed first when missing (`cargo install cargo-c`, 10.5 min on 2 cores: it compiles cargo).
# usage: bash scripts/test-cbuild.sh
set -euo pipefail
cd "$(dirname "$0")/.."
# The newest cargo-c that builds with this machine's Rust (1.95).
cargo_c_version=0.10.24+cargo-0.98.0
if ! cargo cbuild --version >/dev/null 2>&1; then
    echo "==> cargo install cargo-c $cargo_c_version (compiles cargo: about 10 min)"
    cargo install --locked "cargo-c@$cargo_c_version"
fi

multiarch=$(gcc -print-multiarch)
triple=$(rustc -vV | sed -n 's/^host: //p')
echo "==> cargo cbuild (dev profile) for prefix /usr, libdir /usr/lib/$multiarch"
cargo cbuild -p gst-plugin-kvs --prefix=/usr --libdir="/usr/lib/$multiarch" 2>&1 |
    grep -Ev '^ +(Compiling|Fresh) |^note: |^$' || true
out="target/$triple/debug"
for file in libgstkvs.so libgstkvs.a gstkvs.pc; do
    test -s "$out/$file" || { echo "error: cargo cbuild made no $out/$file" >&2; exit 1; }
done
grep -qx "Libs: -L\${libdir}/gstreamer-1.0 -lgstkvs" "$out/gstkvs.pc" ||
    { echo "error: gstkvs.pc does not point at <libdir>/gstreamer-1.0:" >&2; cat "$out/gstkvs.pc" >&2; exit 1; }
nm -g --defined-only "$out/libgstkvs.a" 2>/dev/null | grep ' T gst_plugin_kvs_register$' >/dev/null ||
    { echo "error: libgstkvs.a has no gst_plugin_kvs_register" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cat >"$work/static.c" <<'EOF'
#include <gst/gst.h>

GST_PLUGIN_STATIC_DECLARE(kvs);

int main(int argc, char **argv) {
    const char *names[] = {"kvssink", "kvssrc"};
    gst_init(&argc, &argv);
    GST_PLUGIN_STATIC_REGISTER(kvs);
    for (unsigned i = 0; i < G_N_ELEMENTS(names); i++) {
        GstElement *element = gst_element_factory_make(names[i], NULL);
        if (element == NULL) {
            g_printerr("the static plugin gives no %s\n", names[i]);
            return 1;
        }
        GstPluginFeature *factory = GST_PLUGIN_FEATURE(gst_element_get_factory(element));
        g_print("%s from the static plugin %s\n", names[i], gst_plugin_feature_get_plugin_name(factory));
        gst_object_unref(element);
    }
    return 0;
}
EOF
# The plugin's own private libraries from gstkvs.pc, with the archive instead of -lgstkvs.
libs=$(PKG_CONFIG_PATH="$out" pkg-config --static --libs gstkvs | sed 's/ -lgstkvs / /; s/-L[^ ]*gstreamer-1.0//')
echo "==> linking a C program with libgstkvs.a"
cc -o "$work/static" "$work/static.c" $(pkg-config --cflags gstreamer-1.0) "$out/libgstkvs.a" $libs
# No plugin path, no system plugins, a registry of its own: only what is linked in can give the elements.
GST_PLUGIN_SYSTEM_PATH_1_0="$work/none" GST_PLUGIN_PATH_1_0="" GST_PLUGIN_PATH="" \
    GST_REGISTRY_1_0="$work/registry.bin" "$work/static" | tee "$work/out.txt"
[ "$(grep -c 'from the static plugin kvs$' "$work/out.txt")" = 2 ]
echo "cargo cbuild: ok"
