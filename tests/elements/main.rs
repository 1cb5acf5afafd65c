// SPDX-License-Identifier: MPL-2.0

//! The elements' integration tests, in one test binary (one link of the plugin and the AWS SDK, not one per
//! file): real pipelines against a kvs-emulator running in the test process.

mod alarms;
mod cameras;
mod chaos;
mod common;
mod consumers;
mod durable_store;
mod elementary;
mod harness;
mod kvssink;
mod kvssrc;
mod plugin;
mod reliability;
mod secrets;
mod uri;
