//! Groups and queues: GROUP_CREATE arguments and their validation, and the
//! per-queue state the firmware keeps (ring, command stream, jobs in
//! flight, run state, timeout timer).

use std::collections::VecDeque;

use super::error::FwError;
use super::event::{GroupStatus, JobId};
use super::kmem::KernelObject;
use super::ring::WrapperTemplate;
use crate::gpu::cs::SyncCond;
use crate::gpu::interp::StreamState;
use crate::gpu::mmu::VmKey;
use crate::gpu::model::{GpuModel, GROUP_PRIORITY_MEDIUM, GROUP_PRIORITY_REALTIME};
use crate::gpu::sync::FenceResult;

/// Highest intra-group queue priority (CSF_MAX_QUEUE_PRIO).
pub const MAX_QUEUE_PRIORITY: u8 = 15;
/// Queues of a group at most, whatever the model's CS slot count
/// (Panthor's MAX_CS_PER_CSG).
pub const MAX_QUEUES: usize = 32;
/// Smallest ring buffer.
pub const MIN_RING_SIZE: u32 = 4 << 10;
/// Largest ring buffer.
pub const MAX_RING_SIZE: u32 = 64 << 10;
/// Bytes of one `panthor_syncobj_64b {u64 seqno; u32 status; u32 pad}`.
pub const SYNCOBJ_SIZE: u64 = 16;

/// One queue of a GROUP_CREATE (`drm_panthor_queue_create`; the padding is
/// checked by the caller that decodes the wire struct).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueCreate {
    /// Intra-group priority, 0..=15 (15 highest).
    pub priority: u8,
    /// Ring buffer size: a power of two in 4 KiB..=64 KiB.
    pub ringbuf_size: u32,
}

/// GROUP_CREATE arguments (`drm_panthor_group_create` with the queue array
/// decoded and the VM named by handle).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupCreate {
    /// The queues, 1..=`cs_slot_count` of them.
    pub queues: Vec<QueueCreate>,
    /// Compute cores the group may use at once.
    pub max_compute_cores: u8,
    /// Fragment cores the group may use at once.
    pub max_fragment_cores: u8,
    /// Tiler units the group may use at once.
    pub max_tiler_cores: u8,
    /// LOW 0, MEDIUM 1, HIGH 2, REALTIME 3.
    pub priority: u8,
    /// Shader cores for compute work (⊆ shader_present).
    pub compute_core_mask: u64,
    /// Shader cores for fragment work (⊆ shader_present).
    pub fragment_core_mask: u64,
    /// Tiler units (⊆ tiler_present).
    pub tiler_core_mask: u64,
    /// The VM handle.
    pub vm: u32,
    /// Whether the client holds CAP_SYS_NICE or is DRM master (HIGH and
    /// REALTIME need it).
    pub privileged: bool,
}

impl GroupCreate {
    /// Checks the arguments against the model, in Panthor's order: the
    /// queue count, the priority (EINVAL if out of range, EACCES if not
    /// allowed), the core masks, then each queue.
    pub fn validate(&self, model: &GpuModel) -> Result<(), FwError> {
        // A queue is a bit of `fatal_queues`: at most 32 whatever the model.
        let max_queues = (model.csif_info.cs_slot_count as usize).min(MAX_QUEUES);
        if self.queues.is_empty() || self.queues.len() > max_queues {
            return Err(FwError::QueueCount(self.queues.len()));
        }
        if self.priority > GROUP_PRIORITY_REALTIME {
            return Err(FwError::GroupPriority(self.priority));
        }
        if self.priority > GROUP_PRIORITY_MEDIUM
            && !model.priority_allowed(self.priority, self.privileged)
        {
            return Err(FwError::PriorityNotAllowed(self.priority));
        }
        let info = &model.gpu_info;
        let masks = [
            (
                "compute",
                self.compute_core_mask,
                info.shader_present,
                self.max_compute_cores,
            ),
            (
                "fragment",
                self.fragment_core_mask,
                info.shader_present,
                self.max_fragment_cores,
            ),
            (
                "tiler",
                self.tiler_core_mask,
                info.tiler_present,
                self.max_tiler_cores,
            ),
        ];
        for (name, mask, present, _) in masks {
            if mask & !present != 0 {
                return Err(FwError::CoreMask(name));
            }
        }
        for (name, mask, _, max) in masks {
            if mask.count_ones() < u32::from(max) {
                return Err(FwError::CoreMask(name));
            }
        }
        for q in &self.queues {
            if q.ringbuf_size < MIN_RING_SIZE
                || q.ringbuf_size > MAX_RING_SIZE
                || !q.ringbuf_size.is_power_of_two()
            {
                return Err(FwError::RingSize(q.ringbuf_size));
            }
            if q.priority > MAX_QUEUE_PRIORITY {
                return Err(FwError::QueuePriority(q.priority));
            }
        }
        Ok(())
    }
}

/// One GROUP_SUBMIT entry (`drm_panthor_queue_submit` without its syncs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct JobSubmit {
    /// Queue index in the group.
    pub queue: u32,
    /// GPU VA of the user stream (64-byte aligned; 0 with a size of 0).
    pub stream_addr: u64,
    /// Size of the user stream in bytes (a multiple of 8; 0 makes the job a
    /// pure sync point).
    pub stream_size: u32,
    /// The LATEST_FLUSH_ID the client sampled (bits 30:24 zero).
    pub latest_flush: u32,
    /// The submitter's own value: the firmware does not look at it and
    /// returns it in the job's [`FwEvent::JobDone`](super::FwEvent).
    pub tag: u64,
}

impl JobSubmit {
    /// The checks of Panthor's `panthor_job_create` that need no state.
    pub fn validate(&self) -> Result<(), FwError> {
        if (self.stream_size == 0) != (self.stream_addr == 0) {
            return Err(FwError::StreamEmptiness);
        }
        if self.stream_addr % 64 != 0 || self.stream_size % 8 != 0 {
            return Err(FwError::StreamAlignment);
        }
        if self.latest_flush & (0x7f << 24) != 0 {
            return Err(FwError::LatestFlush(self.latest_flush));
        }
        Ok(())
    }
}

/// A job the firmware holds: in the ring, or waiting for room in it.
#[derive(Debug)]
pub(crate) struct Job {
    pub id: JobId,
    pub seqno: u64,
    pub submit: JobSubmit,
    /// Byte counters of its wrapper in the ring (valid once written).
    pub ring_start: u64,
    pub ring_end: u64,
    /// A CS fault hit the job.
    pub faulted: bool,
    /// Empty jobs submitted after it, which complete with it (with their
    /// tags).
    pub followers: Vec<(JobId, u64)>,
}

/// Whether and when a queue's command stream should run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RunState {
    /// Nothing to execute.
    Idle,
    /// Run at the next slice.
    Ready,
    /// Run again at this time (a scoreboard drains or a deferred
    /// operation is due).
    Sleep(u64),
    /// Parked on SYNC_WAIT: run again when the condition holds.
    Parked {
        addr: u64,
        value: u64,
        cond: SyncCond,
        is_64: bool,
    },
    /// Halted by a fatal fault (the group is dead).
    Halted,
}

/// The job timeout timer of a queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Timer {
    /// No job in flight.
    Off,
    /// Expires at this time.
    Running(u64),
    /// Stopped with this much time left (the group waits for a slot).
    Suspended(u64),
}

/// One queue of a group.
#[derive(Debug)]
pub(crate) struct Queue {
    pub priority: u8,
    pub ring: KernelObject,
    pub ring_size: u64,
    /// GPU VA of this queue's `panthor_syncobj_64b`.
    pub syncobj: u64,
    /// The ring wrapper of this queue's jobs.
    pub wrapper: WrapperTemplate,
    pub cs: StreamState,
    /// The host's insert counter.
    pub insert: u64,
    /// Sequence number of the last job given one.
    pub last_seqno: u64,
    /// Jobs in the ring, oldest first.
    pub in_flight: VecDeque<Job>,
    /// Jobs waiting for room in the ring, oldest first.
    pub pending: VecDeque<Job>,
    pub state: RunState,
    /// Sequence number and result of the last job that completed.
    pub last_done: (u64, FenceResult),
    pub timer: Timer,
}

impl Queue {
    /// Whether the queue holds jobs that have not completed.
    pub fn busy(&self) -> bool {
        !self.in_flight.is_empty()
    }

    /// Whether one more job fits in the ring (the stream has consumed
    /// enough of it).
    pub fn ring_has_room(&self, bytes: u64) -> bool {
        self.insert + bytes - self.cs.extract() <= self.ring_size
    }
}

/// How the scheduler sees a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SchedState {
    /// Timed out, faulted or being destroyed.
    Dead,
    /// No job in flight.
    Idle,
    /// Jobs in flight, but every queue that has some is parked on a sync
    /// wait (or stuck): the group leaves its slot.
    Waiting,
    /// A queue has something to execute now or at a known time.
    Runnable,
}

/// A group: its queues, its sync objects and its health.
#[derive(Debug)]
pub(crate) struct Group {
    pub vm: VmKey,
    pub queues: Vec<Queue>,
    /// The `panthor_syncobj_64b` array, one per queue.
    pub syncobjs: KernelObject,
    pub status: GroupStatus,
}

impl Group {
    pub fn sched_state(&self) -> SchedState {
        if self.status.is_dead() {
            return SchedState::Dead;
        }
        let mut busy = false;
        for q in &self.queues {
            match q.state {
                RunState::Ready | RunState::Sleep(_) => return SchedState::Runnable,
                _ => busy |= q.busy(),
            }
        }
        if busy {
            SchedState::Waiting
        } else {
            SchedState::Idle
        }
    }

    /// Queue indices in execution order: priority first, then index.
    pub fn queue_order(&self) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.queues.len()).collect();
        order.sort_by_key(|&i| (std::cmp::Reverse(self.queues[i].priority), i));
        order
    }
}
