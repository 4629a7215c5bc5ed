//! What comes out of the engine: completions the transport turns into
//! fences, and the firmware's reports.

use super::command::EngineError;
use crate::gpu::firmware::FwEvent;
use crate::gpu::sync::FenceResult;

/// An event of the engine, delivered on its thread to the callback given
/// to [`Engine::spawn`](super::Engine::spawn).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EngineEvent {
    /// A job of a GROUP_SUBMIT completed (or was cancelled). Its SIGNAL
    /// syncs carry the same result.
    JobDone {
        /// The job's `user_data`.
        user_data: u64,
        /// Its group.
        group: u32,
        /// Its queue index.
        queue: u32,
        /// Its queue sequence number (0 if it never reached the firmware).
        seqno: u64,
        /// Success or the errno.
        result: FenceResult,
    },
    /// The last op of an asynchronous VM_BIND was applied (or failed, or
    /// was cancelled). `result` is the first error among its ops.
    BindDone {
        /// The VM_BIND's `user_data`.
        user_data: u64,
        /// The VM handle.
        vm: u32,
        /// Success or the errno.
        result: FenceResult,
    },
    /// A host wait on a syncobj point is over.
    SyncWaitDone {
        /// The wait's `user_data`.
        user_data: u64,
        /// The result of the fence waited on.
        result: FenceResult,
    },
    /// A GROUP_SUBMIT posted without waiting for an answer
    /// ([`Engine::group_submit_posted`](super::Engine::group_submit_posted))
    /// was refused: none of its jobs was queued and no `JobDone` follows.
    SubmitRejected {
        /// The `user_data` of its first job.
        user_data: u64,
        /// The group.
        group: u32,
        /// Why, as [`Engine::group_submit`](super::Engine::group_submit)
        /// would have answered.
        error: EngineError,
    },
    /// A firmware report other than a job completion: a fault, a group
    /// that died, a VM that became unusable.
    Firmware(FwEvent),
}
