//! What the firmware reports: job completions, group state changes and
//! faults, plus the group state GROUP_GET_STATE returns.

use crate::gpu::interp::CsFault;
use crate::gpu::mmu::Fault;
use crate::gpu::sync::FenceResult;

/// Identity of one submitted job, unique within a [`Firmware`](super::Firmware).
pub type JobId = u64;

/// DRM_PANTHOR_GROUP_STATE_TIMEDOUT.
pub const GROUP_STATE_TIMEDOUT: u32 = 1 << 0;
/// DRM_PANTHOR_GROUP_STATE_FATAL_FAULT.
pub const GROUP_STATE_FATAL_FAULT: u32 = 1 << 1;
/// DRM_PANTHOR_GROUP_STATE_INNOCENT.
pub const GROUP_STATE_INNOCENT: u32 = 1 << 2;

/// A group's health, as GROUP_GET_STATE reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GroupStatus {
    /// A job of the group ran past the timeout, or the group was killed by
    /// a GPU reset.
    pub timedout: bool,
    /// Queues that raised a fatal fault (bit per queue index). Non-zero
    /// means FATAL_FAULT.
    pub fatal_queues: u32,
    /// Killed by a reset another group caused (only with `timedout`, never
    /// with a fatal fault).
    pub innocent: bool,
}

impl GroupStatus {
    /// Whether the group can no longer run.
    pub fn is_dead(&self) -> bool {
        self.timedout || self.fatal_queues != 0
    }

    /// The `state` flags of GROUP_GET_STATE.
    pub fn state_flags(&self) -> u32 {
        let mut flags = 0;
        if self.timedout {
            flags |= GROUP_STATE_TIMEDOUT;
        }
        if self.fatal_queues != 0 {
            flags |= GROUP_STATE_FATAL_FAULT;
        }
        if self.innocent {
            flags |= GROUP_STATE_INNOCENT;
        }
        flags
    }
}

/// Something the firmware reports; drained with
/// [`Firmware::take_events`](super::Firmware::take_events).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FwEvent {
    /// A job completed. `seqno` is its queue sequence number (for an empty
    /// job, the one of the job whose completion it shares; 0 if none).
    /// `result` is `Err(errno)` for a failed job: EINVAL for a job whose
    /// sync object status reported an error or that a CS fault hit,
    /// ETIMEDOUT / ECANCELED / EINVAL for the jobs of a group that died.
    JobDone {
        /// The job.
        job: JobId,
        /// Its [`JobSubmit::tag`](super::JobSubmit).
        tag: u64,
        /// Its group.
        group: u32,
        /// Its queue index.
        queue: u32,
        /// Its sequence number.
        seqno: u64,
        /// Success or the errno.
        result: FenceResult,
    },
    /// A group's GROUP_GET_STATE changed: it timed out, faulted fatally or
    /// was lost to a reset, and runs no more.
    GroupStateChanged {
        /// The group.
        group: u32,
        /// Its new state.
        status: GroupStatus,
    },
    /// A VM became unusable (MMU fault or failed asynchronous bind).
    VmUnusable {
        /// The VM handle (`None` if the VM was already destroyed).
        vm: Option<u32>,
    },
    /// A non-fatal CS fault (CS_FAULT); the queue continued.
    CsFault {
        /// The group.
        group: u32,
        /// The queue index.
        queue: u32,
        /// The fault.
        fault: CsFault,
    },
    /// A fatal CS fault (CS_FATAL).
    CsFatal {
        /// The group.
        group: u32,
        /// The queue index.
        queue: u32,
        /// The fault.
        fault: CsFault,
    },
    /// A GPU MMU fault raised by a queue.
    MmuFault {
        /// The group.
        group: u32,
        /// The queue index.
        queue: u32,
        /// The fault.
        fault: Fault,
        /// The instruction that made the access.
        ip: u64,
    },
}
