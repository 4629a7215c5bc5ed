//! The CSF native context: the GPU protocol a guest reaches through
//! SUBMIT_3D on a context created with the project's capset.
//!
//! This module owns the per-context state and the decoding of the command
//! stream framing ([`framing`]).

pub mod framing;

use log::debug;

pub use framing::{parse_commands, FramingError};

use crate::uapi::native::NATIVE_CMD_NOP;

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
}

/// The state of one native context.
#[derive(Debug, Default)]
pub struct NativeContext {
    commands_seen: u64,
}

impl NativeContext {
    /// A fresh context.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of commands executed so far.
    pub fn commands_seen(&self) -> u64 {
        self.commands_seen
    }

    /// Validates and executes a SUBMIT_3D buffer. Nothing runs unless the
    /// whole buffer is well-formed and every command is known.
    pub fn submit(&mut self, buf: &[u8]) -> Result<(), NativeError> {
        let cmds = parse_commands(buf)?;
        if let Some((h, _)) = cmds.iter().find(|(h, _)| h.cmd != NATIVE_CMD_NOP) {
            return Err(NativeError::UnknownCommand {
                cmd: h.cmd,
                seqno: h.seqno,
            });
        }
        for (h, _) in &cmds {
            debug!("native: NOP seqno {}", h.seqno);
            self.commands_seen += 1;
        }
        Ok(())
    }
}
