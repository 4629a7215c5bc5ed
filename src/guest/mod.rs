//! Guest-side helpers: the virtgpu DRM uAPI as used by the guest programs.
//!
//! The programs under `src/bin/` that run inside a Linux guest (for example
//! `mali-guest-probe`) talk to the guest's virtio-gpu driver through its DRM
//! render node. This module wraps that interface without libdrm:
//!
//! - `ioctl`: the Linux `_IOC` request encoding and a checked `ioctl(2)` call;
//! - `drm`: the core DRM ioctls every driver answers (driver version);
//! - [`virtgpu`]: the virtio-gpu driver's own ioctls
//!   (`include/uapi/drm/virtgpu_drm.h`) behind the safe [`VirtGpu`] handle:
//!   parameters and capsets, CONTEXT_INIT, buffer and blob resources, their
//!   guest mappings ([`Mapping`]), EXECBUFFER with rings and sync_file
//!   fences, and waiting on a sync_file ([`wait_sync_file`]);
//! - [`session`]: [`NativeSession`], the project's native-context protocol
//!   (`docs/protocol.md`) on top of that: response memory, INIT, batches of
//!   commands and typed calls, in compat or full mode.
//!
//! Every kernel structure is an own `#[repr(C)]` type with a size assertion,
//! and every request number is computed from the same rules as the kernel's
//! `_IOWR` macro, so nothing depends on C headers at build time.
//!
//! The module is only built on Linux.

#[cfg(target_os = "linux")]
mod drm;
#[cfg(target_os = "linux")]
mod ioctl;
#[cfg(target_os = "linux")]
pub mod session;
#[cfg(target_os = "linux")]
pub mod virtgpu;

#[cfg(target_os = "linux")]
pub use drm::DriverVersion;
#[cfg(target_os = "linux")]
pub use session::{Batch, Buffer, Job, Mode, NativeSession, SessionConfig, Slot};
#[cfg(target_os = "linux")]
pub use virtgpu::{wait_sync_file, CapsetIdMask, ExecBuffer, Mapping, Param, Resource, VirtGpu};

/// Errors of the guest-side DRM helpers.
#[cfg(target_os = "linux")]
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The device node could not be opened.
    #[error("cannot open {path}")]
    Open {
        /// The node that was opened.
        path: std::path::PathBuf,
        /// What `open(2)` reported.
        #[source]
        source: std::io::Error,
    },
    /// The kernel rejected an ioctl.
    #[error("{ioctl} failed")]
    Ioctl {
        /// Name of the ioctl, as in the uAPI headers.
        ioctl: &'static str,
        /// The errno the kernel returned.
        #[source]
        source: std::io::Error,
    },
    /// A caller's buffer is larger than the uAPI can describe.
    #[error("{ioctl}: buffer of {len} bytes is too large")]
    BufferTooLarge {
        /// Name of the ioctl.
        ioctl: &'static str,
        /// Length of the buffer that was passed.
        len: usize,
    },
    /// A native-context command failed: its response's `ret`.
    #[error("command seqno {seqno} failed with {ret}")]
    Command {
        /// Sequence number of the command.
        seqno: u32,
        /// The negative errno in its response.
        ret: i32,
    },
    /// The device did not answer in time.
    #[error("timed out waiting for {what}")]
    Timeout {
        /// What was waited for.
        what: String,
    },
    /// A request the protocol does not allow was asked for.
    #[error("{what}: {detail}")]
    Protocol {
        /// What was wrong.
        what: &'static str,
        /// Details.
        detail: String,
    },
    /// The kernel answered with something the uAPI does not allow.
    #[error("{ioctl}: unexpected answer: {detail}")]
    BadAnswer {
        /// Name of the ioctl.
        ioctl: &'static str,
        /// What was wrong with it.
        detail: String,
    },
}

#[cfg(target_os = "linux")]
impl Error {
    /// The errno behind this error, when the kernel produced one.
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            Error::Open { source, .. } | Error::Ioctl { source, .. } => source.raw_os_error(),
            Error::Command { ret, .. } => Some(-ret),
            Error::BufferTooLarge { .. }
            | Error::BadAnswer { .. }
            | Error::Timeout { .. }
            | Error::Protocol { .. } => None,
        }
    }
}

/// Result type of the guest-side DRM helpers.
#[cfg(target_os = "linux")]
pub type Result<T> = std::result::Result<T, Error>;
