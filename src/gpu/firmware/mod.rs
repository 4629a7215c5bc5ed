//! The CSF firmware and the kernel-side scheduler of the emulated GPU: a
//! deterministic model of what Panthor and the Mali firmware do together
//! for one context, driven entirely by explicit calls and explicit time.
//!
//! # Pieces
//! - [`vms`]: VM handles and VM objects (a VM outlives its handle while
//!   groups use it).
//! - [`group`]: GROUP_CREATE arguments and validation, queues and jobs.
//! - [`kmem`]: kernel objects (rings, sync objects, heap contexts and
//!   chunks) in the VM's kernel window, with memory from a caller-provided
//!   [`KernelMemory`] allocator, zeroed before use.
//! - [`ring`]: the kernel's per-job ring wrapper and the ring copy.
//! - [`sched`]: CSG slots, distinct CSG priorities, tick rotation and
//!   REALTIME preemption.
//! - [`heap`]: tiler heaps and their growth.
//! - [`event`]: what the firmware reports ([`FwEvent`]) and GROUP_GET_STATE
//!   ([`GroupStatus`]).
//! - [`fw`]: [`Firmware`], which ties them together.
//!
//! # Jobs
//! A GROUP_SUBMIT entry is checked as Panthor's `panthor_job_create` does
//! ([`JobSubmit::validate`], then queue index and group health), given the
//! queue's next sequence number (from 1), and its wrapper (csf.md §2.5) is
//! copied through the MMU into the queue's ring at `insert & (size - 1)`;
//! insert moves by 128 bytes and the doorbell rings: the queue becomes ready
//! and its group asks for a slot. A job completes when its queue's
//! `syncobj_64b.seqno` reaches its sequence number; a non-zero status word
//! fails it with EINVAL. That check runs on every SYNC_ADD/SET the streams
//! make to that object (the interpreter's `on_sync_write` hook), with the
//! value and status read right after each write, and never by polling. A
//! job of size 0 completes together with the queue's previous job.
//!
//! **Full rings.** Panthor's drm_sched would hold jobs until ring credits
//! free up. Here a job that finds no room waits in a software list of at
//! most [`FwConfig::max_pending_jobs`] jobs per queue and enters the ring
//! as the stream consumes it; beyond that the submit fails with EAGAIN
//! (retry later), so memory stays bounded. Empty jobs waiting on one job
//! are capped the same way.
//!
//! # Scheduling
//! See [`sched`]. Within the resident groups, every ready queue runs one
//! slice of [`FwConfig::slice_budget`] instructions per [`Firmware::run`],
//! best CSG priority first and best queue priority first within a group;
//! a stream that uses up its budget stays ready (an endless loop is
//! preempted, then killed by the timeout). A queue blocked on scoreboards
//! sleeps until the time the interpreter gives; a queue blocked on
//! SYNC_WAIT is parked with its wait (address, value, condition, width),
//! and a group whose busy queues are all parked leaves its slot. Parked
//! waits are re-checked after every slice that wrote a sync object, and
//! when the host reports a memory change ([`Firmware::memory_changed`]).
//!
//! # Faults and timeouts
//! - CS_FAULT (non-fatal): the job whose ring range holds the extract
//!   pointer fails with EINVAL; the stream continues (its error state lasts
//!   until the wrapper's ERROR_BARRIER, so the jobs after it are clean).
//! - CS_FATAL: the queue joins the group's `fatal_queues`; the group dies.
//! - MMU fault: the same for the faulting queue; the VM becomes unusable
//!   and every other group on it dies too (all its queues marked fatal).
//! - Job timeout: a queue's timer runs while it has jobs in flight and its
//!   group holds a slot or is parked on its own sync waits; it is suspended
//!   only while the group is runnable but waits for a slot (Panthor
//!   suspends it whenever the group has no slot; keeping it running while
//!   parked bounds every job's completion in time, as dma-fence rules
//!   require). It restarts when a job of the queue completes. When it
//!   expires the group becomes TIMEDOUT and dies.
//! - A dead group's jobs all complete with an error, as Panthor's group
//!   termination does: EINVAL for fatal queues, ETIMEDOUT after a timeout,
//!   ECANCELED otherwise (group destroyed, or a queue that did not fault);
//!   its sync objects get status `!0` and the last sequence number. New
//!   submits are refused with EINVAL. Other groups are untouched.
//! - INNOCENT: only a host-requested [`Firmware::reset`] makes groups
//!   innocent (resident groups become TIMEDOUT | INNOCENT); the model
//!   itself never needs a reset.
//!
//! # Choices where the references are silent
//! - A group leaves its slot as soon as it is idle or parked, instead of at
//!   the next tick.
//! - Suspend buffers are not modelled: a stream's state stays in its
//!   [`crate::gpu::interp::StreamState`] across evictions.
//! - CS_FAULT marking applies to every non-fatal fault, not only
//!   CS_INHERIT_FAULT: the interpreter's only other one (a misaligned sync
//!   object) leaves the stream in its error state too, so the job's status
//!   word reports the error anyway.
//! - Tiler OOM never comes from a stream (RUN_* do not tile); the growth
//!   path is reached through [`Firmware::tiler_oom`] and
//!   [`Firmware::heap_grow`].

pub mod config;
pub mod error;
pub mod event;
pub mod fw;
pub mod group;
pub mod heap;
pub mod kmem;
pub mod ring;
pub mod sched;
pub mod vms;

#[cfg(test)]
mod tests;

pub use config::FwConfig;
pub use error::{FwError, KernelMemoryError};
pub use event::{
    FwEvent, GroupStatus, JobId, GROUP_STATE_FATAL_FAULT, GROUP_STATE_INNOCENT,
    GROUP_STATE_TIMEDOUT,
};
pub use fw::Firmware;
pub use group::{GroupCreate, JobSubmit, QueueCreate, MAX_QUEUES};
pub use heap::{chunk_header, HeapCreate, HeapInfo};
pub use kmem::{KernelMemory, KernelObject, PageAllocator};
pub use ring::{wrapper_words, WrapperArgs, JOB_BYTES, JOB_INSTRS};
