//! Asynchronous VM_BIND: one ordered bind queue per VM.
//!
//! Each op of an asynchronous VM_BIND is validated when the VM_BIND
//! arrives (so every argument error is reported synchronously and the
//! resources it needs are reserved) and becomes one entry of its VM's
//! queue. Entries leave the queue strictly in order: the head is applied
//! once all its WAITs are signalled; then its SIGNALs complete with the
//! op's result. A VM_BIND's completion event follows its last op.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use crate::gpu::mmu::{Bo, ValidatedOp};
use crate::gpu::sync::{FenceResult, SignalToken};
use crate::idmap::IdMap;

/// One queued op.
pub(crate) struct BindJob {
    pub op: ValidatedOp,
    /// WAITs not yet signalled.
    pub waits: usize,
    pub signals: Vec<SignalToken>,
    /// The VM_BIND it belongs to.
    pub request: u64,
}

/// One asynchronous VM_BIND.
struct Request {
    user_data: u64,
    remaining: usize,
    result: FenceResult,
}

/// The bind queues of every VM of a context.
#[derive(Default)]
pub(crate) struct BindQueues {
    queues: BTreeMap<u32, VecDeque<u64>>,
    jobs: IdMap<u64, (u32, BindJob)>,
    requests: IdMap<u64, Request>,
}

impl BindQueues {
    /// Ops queued on `vm`.
    pub fn len(&self, vm: u32) -> usize {
        self.queues.get(&vm).map_or(0, VecDeque::len)
    }

    /// Starts a VM_BIND of `ops` ops.
    pub fn add_request(&mut self, id: u64, user_data: u64, ops: usize) {
        self.requests.insert(
            id,
            Request {
                user_data,
                remaining: ops,
                result: Ok(()),
            },
        );
    }

    /// Queues an op at the back of `vm`'s queue.
    /// Whether a queued op of any VM maps `bo`.
    pub fn maps_bo(&self, bo: &Arc<Bo>) -> bool {
        self.jobs.values().any(|(_, j)| j.op.maps_bo(bo))
    }

    pub fn push(&mut self, vm: u32, id: u64, job: BindJob) {
        self.queues.entry(vm).or_default().push_back(id);
        self.jobs.insert(id, (vm, job));
    }

    /// One WAIT of op `id` was signalled; returns its VM.
    pub fn satisfy(&mut self, id: u64) -> Option<u32> {
        let (vm, job) = self.jobs.get_mut(&id)?;
        job.waits = job.waits.saturating_sub(1);
        Some(*vm)
    }

    /// Takes the head of `vm`'s queue if nothing holds it back.
    pub fn pop_ready(&mut self, vm: u32) -> Option<BindJob> {
        let queue = self.queues.get_mut(&vm)?;
        let head = *queue.front()?;
        if self.jobs.get(&head).is_some_and(|(_, j)| j.waits > 0) {
            return None;
        }
        queue.pop_front();
        if queue.is_empty() {
            self.queues.remove(&vm);
        }
        self.jobs.remove(&head).map(|(_, j)| j)
    }

    /// Records an op's result; when it was the VM_BIND's last op, returns
    /// the VM_BIND's `user_data` and result (its first error).
    pub fn finish(&mut self, request: u64, result: FenceResult) -> Option<(u64, FenceResult)> {
        let r = self.requests.get_mut(&request)?;
        if r.result.is_ok() {
            r.result = result;
        }
        r.remaining = r.remaining.saturating_sub(1);
        if r.remaining > 0 {
            return None;
        }
        self.requests
            .remove(&request)
            .map(|r| (r.user_data, r.result))
    }

    /// Removes every op queued on `vm`, in order.
    pub fn take_vm(&mut self, vm: u32) -> Vec<BindJob> {
        let ids = self.queues.remove(&vm).unwrap_or_default();
        ids.into_iter()
            .filter_map(|id| self.jobs.remove(&id).map(|(_, j)| j))
            .collect()
    }

    /// VMs with queued ops.
    pub fn vms(&self) -> Vec<u32> {
        self.queues.keys().copied().collect()
    }
}
