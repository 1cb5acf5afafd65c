#!/usr/bin/env bash
# SPDX-License-Identifier: MPL-2.0
# cargo-deny's licence, ban and source checks of the dependency graph (deny.toml says what is allowed and why the
# advisories check is left out: its database cannot be fetched from this project's machines).
# cargo-deny is installed first when missing (`cargo install cargo-deny`: about 4 minutes on 2 cores).
# usage: bash scripts/test-deny.sh
set -euo pipefail
cd "$(dirname "$0")/.."
if ! cargo deny --version >/dev/null 2>&1; then
    echo "==> cargo install cargo-deny (about 4 minutes)"
    cargo install --locked cargo-deny
fi
cargo deny --log-level error check --hide-inclusion-graph licenses bans sources
cargo deny --log-level warn check --hide-inclusion-graph bans 2>&1 | grep -c '^warning\[duplicate\]' |
    sed 's/^/duplicate crate versions (warnings, allowed): /' || true
echo "cargo deny: ok"
