//! Why [`StreamState::run`](super::StreamState::run) returned: the stream
//! ran out, it is blocked, its slice is over, or it faulted.
//!
//! CS exceptions are split the way the CSF interface splits them:
//! - a *fatal* [`CsFault`] is what the firmware reports through CS_FATAL
//!   (Panthor then kills the group); the stream is halted and every later
//!   `run` returns the same stop until the stream is programmed again;
//! - a *non-fatal* [`CsFault`] is a CS_FAULT event: the instruction that
//!   raised it has completed, the stream is in its error state, and the next
//!   `run` continues after it;
//! - an MMU fault ([`Stop::MmuFault`]) is reported on the address space, not
//!   on the CS; Panthor treats it as unrecoverable, so the stream is halted
//!   as for a fatal fault.

use thiserror::Error;

use crate::gpu::cs::{DecodeError, RegisterError, SyncCond};
use crate::gpu::mmu::Fault;

/// CS exception codes (CS_FAULT / CS_FATAL EXCEPTION_TYPE, bits 7:0) the
/// interpreter raises, with Panthor's names.
pub mod exception {
    /// CS_INSTR_INVALID: a decodable instruction that cannot execute (a
    /// register or scoreboard slot the model does not have, a JUMP from the
    /// root ring buffer).
    pub const CS_INSTR_INVALID: u8 = 0x49;
    /// CS_CALL_STACK_OVERFLOW: a CALL beyond the call-stack depth.
    pub const CS_CALL_STACK_OVERFLOW: u8 = 0x4a;
    /// CS_INHERIT_FAULT: a SYNC_WAIT inherited the error of its sync object.
    pub const CS_INHERIT_FAULT: u8 = 0x4b;
    /// INSTR_INVALID_PC: a CALL/JUMP to a misaligned or wrapping buffer, or
    /// a BRANCH out of the current buffer.
    pub const INSTR_INVALID_PC: u8 = 0x50;
    /// INSTR_INVALID_ENC: a word that is not a valid instruction.
    pub const INSTR_INVALID_ENC: u8 = 0x51;
    /// DATA_INVALID_FAULT: a sync-object access that is not naturally
    /// aligned.
    pub const DATA_INVALID_FAULT: u8 = 0x58;
}

/// The detailed reason of a [`CsFault`], for logs and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum FaultReason {
    /// The word does not decode.
    #[error("undecodable instruction: {0}")]
    Decode(DecodeError),
    /// An operand names a register the model does not have.
    #[error("{0}")]
    Register(RegisterError),
    /// A signal slot or SET_SB_ENTRY entry names a missing scoreboard slot.
    #[error("scoreboard slot {slot} does not exist (the model has {count})")]
    ScoreboardSlot {
        /// The slot named.
        slot: u8,
        /// Scoreboard slots of the model.
        count: usize,
    },
    /// A CALL would need more frames than the call stack holds.
    #[error("call stack overflow (at most {max} frames, the active one included)")]
    CallStackOverflow {
        /// The frame limit.
        max: usize,
    },
    /// JUMP at depth 0, from the root buffer itself.
    #[error("JUMP from the root buffer")]
    JumpFromRoot,
    /// A CALL/JUMP target that is not 8-byte aligned.
    #[error("CALL/JUMP target {address:#x} is not 8-byte aligned")]
    MisalignedTarget {
        /// The target address.
        address: u64,
    },
    /// A CALL/JUMP length that is not a multiple of 8.
    #[error("CALL/JUMP length {length:#x} is not a multiple of 8")]
    MisalignedLength {
        /// The length register value.
        length: u32,
    },
    /// A CALL/JUMP buffer that runs past the end of the address space.
    #[error("CALL/JUMP buffer {address:#x}+{length:#x} wraps the address space")]
    BufferWraps {
        /// The target address.
        address: u64,
        /// The length.
        length: u32,
    },
    /// A taken BRANCH whose target lies outside the current buffer.
    #[error("branch target {target:#x} outside the buffer [{start:#x}, {end:#x}]")]
    BranchOutOfBuffer {
        /// The computed target.
        target: u64,
        /// Start of the current buffer.
        start: u64,
        /// End of the current buffer (a branch may land exactly here).
        end: u64,
    },
    /// SYNC_WAIT (inherit mode) found a non-zero status word.
    #[error("inherited error status {status:#x} from the sync object at {address:#x}")]
    InheritedError {
        /// The sync object.
        address: u64,
        /// The status word read.
        status: u32,
    },
    /// A sync object address that is not naturally aligned.
    #[error("sync object address {address:#x} is not naturally aligned")]
    MisalignedSync {
        /// The address.
        address: u64,
    },
}

/// A CS exception, as the firmware reports it in CS_FAULT / CS_FATAL and
/// their INFO registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("CS {} 0x{exception_code:02x} at {ip:#x}: {reason}", if *.fatal { "fatal" } else { "fault" })]
pub struct CsFault {
    /// EXCEPTION_TYPE (bits 7:0 of CS_FAULT / CS_FATAL).
    pub exception_code: u8,
    /// CS_FATAL (true) or CS_FAULT (false).
    pub fatal: bool,
    /// GPU VA of the instruction that raised it (what STATUS_CMD_PTR shows).
    pub ip: u64,
    /// EXCEPTION_DATA (bits 31:8 of CS_FAULT / CS_FATAL, 24 bits).
    pub data: u32,
    /// CS_FAULT_INFO / CS_FATAL_INFO: the instruction word for instruction
    /// errors, the offending address for address errors.
    pub info: u64,
    /// Why, in detail.
    pub reason: FaultReason,
}

impl CsFault {
    /// The CS_FAULT / CS_FATAL register value: exception type in bits 7:0,
    /// exception data in bits 31:8.
    pub const fn register_value(&self) -> u32 {
        self.exception_code as u32 | ((self.data & 0x00ff_ffff) << 8)
    }
}

/// What a blocked stream waits for. The instruction pointer stays on the
/// waiting instruction, so the next `run` evaluates it again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Block {
    /// SYNC_WAIT32/64 whose condition does not hold. Re-run after a write to
    /// `addr` (any SYNC_ADD/SET reported through `on_sync_write`, or a CPU
    /// write the host learns about).
    SyncWait {
        /// GPU VA of the sync object.
        addr: u64,
        /// Reference value (zero-extended for 32-bit waits).
        value: u64,
        /// LE: unblock when `mem <= value`; GT: when `mem > value`.
        cond: SyncCond,
        /// SYNC_WAIT64 (true) or SYNC_WAIT32.
        is_64: bool,
    },
    /// A WAIT (or an operation that needs a free deferred-operation entry)
    /// until scoreboard slots drain. Re-run at `until_ns` or later; nothing
    /// else unblocks it.
    Scoreboard {
        /// The slots waited for (0 when waiting for a free entry of the
        /// deferred-operation queue).
        mask: u16,
        /// Modelled time at which the wait is satisfied.
        until_ns: u64,
    },
    /// PROGRESS_WAIT on another queue's progress counter, as reported by
    /// [`ExecEnv::progress`](super::ExecEnv::progress). Re-run when that
    /// counter changes.
    Progress {
        /// The queue index of the instruction.
        queue: u8,
        /// The value waited for.
        value: u64,
    },
}

/// The outcome of one [`StreamState::run`](super::StreamState::run) slice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// The instruction pointer reached the end of the root buffer (for a
    /// ring: the insert point). Deferred operations may still be pending;
    /// see [`StreamState::next_deadline_ns`](super::StreamState::next_deadline_ns).
    Done,
    /// The stream waits; see [`Block`].
    Blocked(Block),
    /// The instruction budget of the slice ran out. Everything is kept; the
    /// next `run` continues with the next instruction.
    Preempted,
    /// A CS exception; see [`CsFault::fatal`].
    Fault(CsFault),
    /// A GPU MMU fault (a translation, permission, address-size or bus
    /// fault) on an access of the stream: instruction fetch, LOAD/STORE,
    /// sync object, STORE_STATE or a RUN_* descriptor. The stream is
    /// halted.
    MmuFault {
        /// The fault, with the faulting VA and access type.
        fault: Fault,
        /// GPU VA of the instruction that made the access.
        ip: u64,
    },
}

impl Stop {
    /// Whether the stream is halted and will only return this stop again.
    pub const fn is_halted(&self) -> bool {
        match self {
            Stop::Fault(f) => f.fatal,
            Stop::MmuFault { .. } => true,
            _ => false,
        }
    }
}

/// Errors of programming a stream (the host side, not the guest's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum ConfigError {
    /// The limits are outside what the interpreter supports.
    #[error("unsupported CS limits: {0}")]
    Limits(&'static str),
    /// A ring base or linear buffer bound that is not 8-byte aligned.
    #[error("stream address {0:#x} is not 8-byte aligned")]
    Misaligned(u64),
    /// A ring size that is not a power of two of at least 8 bytes.
    #[error("ring size {0:#x} is not a power of two >= 8")]
    RingSize(u64),
    /// The ring or buffer runs past the end of the address space.
    #[error("stream range wraps the address space")]
    Wraps,
    /// A linear buffer whose end is before its start.
    #[error("linear buffer end before start")]
    Reversed,
    /// An insert pointer behind the extract pointer, more than a ring ahead
    /// of it, or moving backwards.
    #[error("insert {insert:#x} invalid for extract {extract:#x} (ring size {size:#x})")]
    Insert {
        /// The insert counter given.
        insert: u64,
        /// The current extract counter.
        extract: u64,
        /// The ring size.
        size: u64,
    },
    /// The root is not a ring (for [`set_insert`](super::StreamState::set_insert)).
    #[error("the stream has no ring buffer")]
    NotARing,
}
