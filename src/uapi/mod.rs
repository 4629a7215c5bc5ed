//! Guest-facing protocol types: everything a guest driver or guest program
//! must agree on with the daemon. The daemon, the tests and the guest tools
//! share these definitions; nothing here depends on the host side (the
//! DEV_QUERY payloads are the plain-data structs of [`crate::gpu::model`],
//! re-exported by [`native`]).
//!
//! - [`capset`]: the DRM capset that announces the GPU.
//! - [`native`]: the native-context commands, responses, constants and
//!   limits (`docs/protocol.md` is their specification).
//! - [`codec`]: building and reading commands, with the array rules.
//! - [`example`]: the worked example of the specification, as bytes.

pub mod capset;
pub mod codec;
pub mod example;
pub mod native;

#[cfg(test)]
mod tests;
