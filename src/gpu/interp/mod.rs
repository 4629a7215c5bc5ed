//! The command-stream interpreter: runs v10 CSF command streams against
//! guest memory, the way the command-stream frontend of a Mali-G610 does
//! for the firmware.
//!
//! # Using it
//! The firmware model keeps one [`StreamState`] per command stream
//! interface, programs it with [`StreamState::start_ring`] (ring base and
//! size, extract and insert counters, as CS_START does) and moves the
//! insert counter with [`StreamState::set_insert`] when jobs are copied into
//! the ring, handing the stream the words it wrote
//! ([`StreamState::seed_ring`]). It then calls [`StreamState::run`] with an
//! [`ExecEnv`] (the group's VM, guest memory, a clock and event hooks) and
//! an instruction budget (or [`StreamState::run_lent`], lending the one
//! pair of [`Windows`] it keeps for all its streams), and acts on the
//! returned [`Stop`]:
//!
//! | stop | firmware action |
//! |---|---|
//! | [`Stop::Done`] | queue idle; [`StreamState::extract`] is the new extract counter |
//! | [`Stop::Blocked`]`(`[`Block::SyncWait`]`)` | park the queue; run it again after a write to that sync object ([`ExecEnv::on_sync_write`]) |
//! | [`Stop::Blocked`]`(`[`Block::Scoreboard`]`)` | arm a timer for `until_ns` |
//! | [`Stop::Blocked`]`(`[`Block::Progress`]`)` | run again when that queue's progress counter moves |
//! | [`Stop::Preempted`] | slice over; schedule the queue again (the job timeout ends endless streams) |
//! | [`Stop::Fault`] non-fatal | raise CS_FAULT; continue with `run` |
//! | [`Stop::Fault`] fatal | raise CS_FATAL; the stream is halted |
//! | [`Stop::MmuFault`] | raise the MMU fault on the group's address space; the stream is halted |
//!
//! After any stop that is not a halt, [`StreamState::next_deadline_ns`]
//! tells when a modelled completion (a scoreboard slot draining or a
//! deferred sync write) is due; the firmware runs the stream again then.
//! Nothing needs polling.
//!
//! # Execution model
//! - **Instructions** decode with [`crate::gpu::cs::decode`] and execute as
//!   csf.md §3.4 describes (Mesa's pandecode interpreter for control flow).
//!   32-bit arithmetic wraps; ADD_IMMEDIATE64 sign-extends its immediate;
//!   BRANCH compares the signed register with zero and targets the
//!   instruction after it plus the offset.
//! - **Time.** Each slice runs at the instant [`ExecEnv::now_ns`] returned
//!   at its start. Asynchronous operations complete at a modelled time:
//!   RUN_* and FINISH_TILING take a duration from [`TimingModel`] on their
//!   iterator (compute, fragment, tiler; one job at a time each) and signal
//!   the SET_SB_ENTRY endpoint slot until then; FLUSH_CACHE2, HEAP_OPERATION,
//!   TRACE_POINT and FINISH_FRAGMENT wait for their wait mask, take their
//!   duration and signal their slot. A scoreboard slot is the latest
//!   completion time of what signalled it; WAIT blocks until every slot of
//!   its mask has drained. LOAD/STORE_MULTIPLE complete at once (Mesa waits
//!   on the "other" slot before using their results anyway).
//! - **Deferred memory operations.** SYNC_ADD/SET and STORE_STATE with a
//!   wait mask that is still busy are queued and performed when it drains
//!   (at the start of the first slice at or after that time), with the
//!   error state the stream had when it issued them; their signal slot
//!   stays busy until then. With a free wait mask they run at once.
//! - **Sync objects.** SYNC_ADD/SET are host atomics on the word at the
//!   (naturally aligned) GPU VA, through the MMU. The status word (at +4
//!   for 32-bit objects, +8 for 64-bit ones) gets 1 when `error_propagate`
//!   is set and the stream is in its error state, and 0 otherwise; it is
//!   written before the value, so whoever sees the new value sees its
//!   status. [`ExecEnv::on_sync_write`] follows every write. SYNC_WAIT
//!   compares unsigned (LE: `mem <= ref`, GT: `mem > ref`); when satisfied
//!   in inherit mode (`error_reject` clear) with a non-zero status word, the
//!   stream enters its error state and the wait completes with a non-fatal
//!   CS_INHERIT_FAULT (0x4b). ERROR_BARRIER leaves the error state.
//!   STORE_STATE(ERROR_STATUS) writes the error state as 0 or 1.
//! - **Calls.** CALL pushes the return point and the caller's buffer; a
//!   buffer's end returns; 8 frames on v10 counting the active one (the
//!   ring is the first), so a CALL from the eighth frame is
//!   CS_CALL_STACK_OVERFLOW (0x4a). A length of 0 returns at once. JUMP
//!   replaces the current buffer.
//! - **Fetch.** See [`fetch`]: instructions are read per page of the
//!   current buffer through the MMU as data reads, pre-decoded, and re-read
//!   every slice, at page crossings and after the stream writes over them.
//!   Ring words the host hands over with [`StreamState::seed_ring`] as it
//!   writes them are run from that pre-decoded copy instead.
//! - **Jobs.** RUN_* validate what their staging registers point at and
//!   fault as the hardware's descriptor fetch would; shader code is never
//!   executed and nothing is rendered. See [`jobs`].
//!
//! # Choices where the references are silent
//! - An undecodable word is a fatal INSTR_INVALID_ENC (0x51); a valid
//!   encoding naming a register or scoreboard slot the model lacks is a
//!   fatal CS_INSTR_INVALID (0x49).
//! - JUMP at depth 0 (from the root buffer) is refused, as pandecode does,
//!   with a fatal CS_INSTR_INVALID. Panthor never emits it: user streams
//!   run at depth 1 under the kernel's CALL.
//! - A CALL/JUMP whose target is not 8-byte aligned, whose length is not a
//!   multiple of 8 (pandecode's "call alignment error") or whose buffer
//!   wraps the address space is a fatal INSTR_INVALID_PC (0x50): the end
//!   pointer of such a buffer can never be reached by the instruction
//!   pointer.
//! - A taken BRANCH must land inside the current buffer, its end included
//!   (landing on the end returns, like running off it). Anything else is a
//!   fatal INSTR_INVALID_PC. In a ring, the current buffer is the segment
//!   from where the stream entered it (or wrapped) to the insert point.
//! - An instruction fetch from unmapped memory is an MMU fault at the
//!   instruction's address (read access).
//! - A misaligned sync object is a non-fatal DATA_INVALID_FAULT (0x58) that
//!   skips the instruction and sets the error state; the MMU layer picked
//!   that code for misaligned atomics.
//! - LOAD_MULTIPLE uses bit-position addressing (register `base + i` from
//!   `addr + 4i`, as pandecode); each run of set bits is one access, so a
//!   fault is reported at the first unmapped byte of the first run that
//!   needs it, and the registers are only written if every read succeeds.
//!   STORE_MULTIPLE leaves the words of clear bits alone; runs before a
//!   faulting one stay written.
//! - The ring's extract counter, while a CALL runs, is the position of the
//!   instruction after the CALL.
//! - PROGRESS_WAIT asks [`ExecEnv::progress`]; PROGRESS_STORE sets the
//!   stream's counter and PROGRESS_LOAD reads it; `progress_inc` bumps it
//!   when a job is issued or a WAIT completes.
//! - SET_EXCEPTION_HANDLER, REQ_RESOURCE, PROT_REGION, HEAP_SET and the
//!   heap operations are recorded; no tiler runs, so no tiler
//!   out-of-memory exception ever calls a handler.

pub mod env;
mod exec;
pub mod fetch;
pub mod jobs;
pub mod state;
pub mod stop;

#[cfg(test)]
mod tests;

pub use env::{ExecEnv, RunInfo, RunKind};
pub use fetch::Windows;
pub use state::{
    CsLimits, ExceptionHandler, HeapState, Resources, Stats, StreamState, TimingModel,
    DEFERRED_CAPACITY, MAX_FRAMES, MAX_REGS, MAX_SCOREBOARDS,
};
pub use stop::{exception, Block, ConfigError, CsFault, FaultReason, Stop};
