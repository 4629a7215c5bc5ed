//! The CSF native context: the GPU protocol a guest reaches through
//! SUBMIT_3D on a context created with the project's capset (full mode) or
//! capset 0 (compat mode). `docs/protocol.md` is the specification.
//!
//! - [`framing`]: splits a SUBMIT_3D buffer into commands.
//! - [`context`]: one context's objects and the execution of each command.
//! - [`rspmem`]: the response memory the guest registered with INIT.
//! - [`events`]: asynchronous work and the engine's completion handler.
//! - [`fences`]: fence completion of SUBMIT_3Ds that queued work.
//! - [`kmem`]: the kernel-memory pool given with VM_ADD_KERNEL_MEMORY.

pub mod context;
pub mod events;
pub mod fences;
pub mod framing;
pub mod kmem;
pub mod rspmem;

pub use context::{NativeConfig, NativeContext, SubmitEnv};
pub use fences::{FenceSink, WorkTracker};
pub use framing::{parse_commands, FramingError};

/// Errors a native context reports for a SUBMIT_3D buffer.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NativeError {
    /// The buffer is not a well-formed command sequence.
    #[error(transparent)]
    Framing(#[from] FramingError),
    /// A command code this device does not know.
    #[error("unknown native command {cmd:#x} (seqno {seqno})")]
    UnknownCommand {
        /// The code.
        cmd: u32,
        /// Its sequence number.
        seqno: u32,
    },
    /// A command other than NOP before the context has response memory.
    #[error("native command {cmd:#x} before INIT")]
    BeforeInit {
        /// The code.
        cmd: u32,
    },
}
