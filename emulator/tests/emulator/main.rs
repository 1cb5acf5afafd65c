// SPDX-License-Identifier: MPL-2.0

//! The emulator's integration tests, in one test binary (one link, not one per file).

mod admin;
mod cli;
mod control_plane;
mod media;
