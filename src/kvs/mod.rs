// SPDX-License-Identifier: MPL-2.0

//! The AWS side, shared by kvssink and kvssrc and free of GStreamer types: the elements' connection settings
//! ([`settings`]), the SDK context built from them ([`config`]) and the credential sources the C++ kvssink
//! adds ([`credentials`]), the control plane ([`control`]), signed data-plane requests ([`http`]), PutMedia
//! connections ([`putmedia`]) over HTTP/1.1 by hand ([`wire`]) and their ACKs ([`ack`]), and the error table ([`error`]).

pub mod ack;
pub mod config;
pub mod control;
pub mod credentials;
pub mod error;
pub mod http;
pub mod putmedia;
pub mod settings;
pub mod wire;
