//! Sync operations of a batch (the jobs of one GROUP_SUBMIT, the ops of
//! one VM_BIND): checked all together before anything changes, then
//! committed entry by entry.
//!
//! As in Panthor's submit context, entry `i` sees the SIGNALs of entries
//! `0..i` of the same batch: a WAIT on such a point is accepted even though
//! it has not materialised in the table yet (it will have by the time the
//! entry is committed). Within an entry, WAITs are registered before
//! SIGNALs, so an entry never waits for itself.
//!
//! A WAIT only orders: the entry runs once the fence it waits on is
//! signalled, whatever its result (drm_sched does not turn dependency
//! errors into job errors either).

use std::collections::HashMap;

use super::command::{EngineError, SyncOp};
use crate::gpu::sync::{SignalToken, SyncError, SyncKind, SyncTable, WaitFlags, WaitOutcome};

/// Checks that committing `batch` in order would succeed.
pub(crate) fn check_batch<'a, W>(
    table: &SyncTable<W>,
    batch: impl Iterator<Item = &'a [SyncOp]>,
) -> Result<(), EngineError> {
    // Points signalled by earlier entries: handle -> highest point (binary
    // objects record 0). Made at the first signal: most batches have none.
    let mut signalled: Option<HashMap<u32, u64>> = None;
    let mut waits = 0usize;
    let mut signals = 0usize;
    for ops in batch {
        for op in ops.iter().filter(|o| !o.signal) {
            waits += 1;
            let earlier = signalled
                .as_ref()
                .and_then(|m| m.get(&op.handle))
                .is_some_and(|&head| op.point <= head);
            if !earlier {
                table.check_wait(op.handle, op.point, WaitFlags::NONE)?;
            }
        }
        for op in ops.iter().filter(|o| o.signal) {
            signals += 1;
            table.check_signal(op.handle, op.point)?;
            let signalled = signalled.get_or_insert_with(HashMap::new);
            if let Some(&head) = signalled.get(&op.handle) {
                if table.kind(op.handle)? == SyncKind::Timeline && op.point <= head {
                    return Err(SyncError::PointNotIncreasing {
                        handle: op.handle,
                        point: op.point,
                        last: head,
                    }
                    .into());
                }
            }
            signalled.insert(op.handle, op.point);
        }
    }
    let limits = table.limits();
    if table.point_count() + signals > limits.max_points {
        return Err(SyncError::TooManyPoints {
            max: limits.max_points,
        }
        .into());
    }
    if table.waiter_count() + waits > limits.max_waiters {
        return Err(SyncError::TooManyWaiters {
            max: limits.max_waiters,
        }
        .into());
    }
    Ok(())
}

/// What committing one entry's syncs produced.
pub(crate) struct Committed {
    /// Waiter ids recorded in the table (the entry waits for each).
    pub queued: Vec<u64>,
    /// Pending signals to complete with the entry's result.
    pub signals: Vec<SignalToken>,
}

/// Registers one entry's WAITs (with fresh waiter ids from `next_id`) and
/// attaches its SIGNALs. Only call after [`check_batch`] accepted the
/// batch; an op the table refuses anyway is skipped.
pub(crate) fn commit(table: &mut SyncTable<u64>, ops: &[SyncOp], next_id: &mut u64) -> Committed {
    let mut queued = Vec::new();
    if ops.is_empty() {
        // Most jobs: nothing to wait for or signal.
        return Committed {
            queued,
            signals: Vec::new(),
        };
    }
    for op in ops.iter().filter(|o| !o.signal) {
        let id = *next_id;
        *next_id += 1;
        if let Ok(WaitOutcome::Queued) = table.wait(op.handle, op.point, WaitFlags::NONE, id) {
            queued.push(id);
        }
    }
    let signals = ops
        .iter()
        .filter(|o| o.signal)
        .filter_map(|op| table.add_pending_signal(op.handle, op.point).ok())
        .collect();
    Committed { queued, signals }
}
