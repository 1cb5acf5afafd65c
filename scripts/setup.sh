#!/usr/bin/env bash
# SPDX-License-Identifier: MPL-2.0
# Installs what building, the demo and the tests need on Debian 12, skipping what is already there.
# Sourced by scripts/demo.sh and scripts/test.sh; safe to run again (idempotent).
set -euo pipefail

say() { printf '==> %s\n' "$*"; }

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
        echo "error: need root (or sudo) to run: $*" >&2; exit 1
    fi
}

# Debian packages: build (GStreamer 1.22 dev files, pkg-config, a C toolchain for -sys crates), the elements the
# demo and the tests use (x264enc, matroskamux/demux, h264parse, avdec/avenc), meson for the install path, and
# the tools the tests check output with (ffprobe, mkvinfo), and gst-rtsp-server, which the IP-camera tests run
# in-process as the camera; dpkg-dev and binutils build and check the Debian packages.
DEB_PACKAGES=(
    build-essential pkg-config git ca-certificates curl python3 python3-venv
    libgstreamer1.0-dev libgstreamer-plugins-base1.0-dev
    gstreamer1.0-tools gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad
    gstreamer1.0-plugins-ugly gstreamer1.0-libav gstreamer1.0-plugins-base-apps
    python3-gi gir1.2-gstreamer-1.0 gir1.2-gst-plugins-base-1.0
    libgstrtspserver-1.0-dev
    meson ninja-build ffmpeg mkvtoolnix openssl dpkg-dev binutils
)

install_debian_packages() {
    local missing=()
    for pkg in "${DEB_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
    done
    if [ ${#missing[@]} -eq 0 ]; then
        say "Debian packages: all ${#DEB_PACKAGES[@]} present"
        return
    fi
    say "Debian packages: installing ${missing[*]}"
    as_root apt-get update -q
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
}

ensure_rust() {
    [ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
    if command -v cargo >/dev/null; then
        say "Rust: $(cargo --version)"
        return
    fi
    # Debian 12's own cargo is too old for edition 2024: use rustup, as rust-lang.org documents.
    say "Rust: not found, installing the stable toolchain with rustup"
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal -c rustfmt,clippy
    . "$HOME/.cargo/env"
}

# The Python test clients (pytest, boto3 and the AWS CLI, from PyPI) in a venv at .venv in the repository.
PYTHON_PACKAGES=(pytest boto3 awscli)

ensure_python_venv() {
    local venv
    venv="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/.venv"
    if [ ! -x "$venv/bin/python" ]; then
        say "Python: creating the venv $venv"
        python3 -m venv "$venv"
    fi
    if "$venv/bin/python" -c 'import pytest, boto3, awscli' 2>/dev/null; then
        say "Python: ${PYTHON_PACKAGES[*]} present in .venv"
        return
    fi
    say "Python: installing ${PYTHON_PACKAGES[*]} into .venv"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check "${PYTHON_PACKAGES[@]}"
}

setup_all() {
    install_debian_packages
    ensure_rust
    ensure_python_venv
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    setup_all
fi
