//! Framing of native-context requests carried in SUBMIT_3D buffers.
//!
//! A SUBMIT_3D buffer addressed to a CSF native context is a sequence of
//! commands. Each starts with a [`NativeCmdHdr`]; `len` covers the header and
//! the body, is a multiple of 8 and at least the header size. Commands are
//! packed back to back and must fill the buffer exactly. The full command set
//! and the response channel are described in `docs/protocol.md`.

use vm_memory::ByteValued;

/// Command: does nothing. Useful to probe the channel and to measure it.
pub const NATIVE_CMD_NOP: u32 = 0;

/// Alignment of commands and of every struct inside them.
pub const NATIVE_ALIGN: u32 = 8;

/// Header of one native-context command.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NativeCmdHdr {
    /// Command code (`NATIVE_CMD_*`).
    pub cmd: u32,
    /// Length of header plus body, in bytes.
    pub len: u32,
    /// Guest-chosen sequence number, echoed in the response.
    pub seqno: u32,
    /// Offset of the response in the context's response memory.
    pub rsp_off: u32,
}

// SAFETY: `repr(C)`, four `u32`s, no padding (size checked below).
unsafe impl ByteValued for NativeCmdHdr {}

const _: () = assert!(std::mem::size_of::<NativeCmdHdr>() == 16);
