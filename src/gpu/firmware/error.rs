//! Errors of the firmware model, each with the errno Panthor returns for the
//! same mistake (positive values: `libc::EINVAL`, not `-EINVAL`).

use thiserror::Error;

use crate::gpu::mmu::{BoError, Fault, VmBindError};

/// Why the kernel-object allocator refused an allocation.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum KernelMemoryError {
    /// The size is zero or not a multiple of 4 KiB.
    #[error("kernel object size {0:#x} is zero or not page aligned")]
    InvalidSize(u64),
    /// No free range of that size is left.
    #[error("out of kernel memory ({0:#x} bytes asked)")]
    Exhausted(u64),
    /// The memory handed out is not valid guest memory.
    #[error("kernel memory is not usable guest memory: {0}")]
    Bo(BoError),
    /// The memory could not be zeroed (guest memory went away).
    #[error("kernel memory could not be written")]
    Inaccessible,
}

/// Why a firmware request was refused. Nothing changed when one is
/// returned.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum FwError {
    /// No VM with this handle.
    #[error("no VM with handle {0}")]
    NoSuchVm(u32),
    /// The context already has its maximum number of VMs.
    #[error("too many VMs (limit {0})")]
    TooManyVms(u32),
    /// No group with this handle.
    #[error("no group with handle {0}")]
    NoSuchGroup(u32),
    /// The context already has its maximum number of groups.
    #[error("too many groups (limit {0})")]
    TooManyGroups(u32),
    /// A group needs between 1 and `cs_slot_count` queues.
    #[error("invalid queue count {0}")]
    QueueCount(usize),
    /// A queue priority above 15.
    #[error("invalid queue priority {0}")]
    QueuePriority(u8),
    /// A ring size that is not a power of two in 4 KiB..=64 KiB.
    #[error("invalid ring buffer size {0:#x}")]
    RingSize(u32),
    /// A group priority above REALTIME.
    #[error("invalid group priority {0}")]
    GroupPriority(u8),
    /// A group priority the client may not use.
    #[error("group priority {0} needs a privileged client")]
    PriorityNotAllowed(u8),
    /// A core mask outside the cores present, or with fewer cores than the
    /// matching `max_*_cores`.
    #[error("invalid {0} core mask")]
    CoreMask(&'static str),
    /// The queue index is beyond the group's queues.
    #[error("no queue {queue} in group {group}")]
    NoSuchQueue {
        /// The group.
        group: u32,
        /// The queue index given.
        queue: u32,
    },
    /// `stream_size == 0` but `stream_addr != 0`, or the reverse.
    #[error("stream address and size must both be zero or both non-zero")]
    StreamEmptiness,
    /// `stream_addr` not 64-byte aligned or `stream_size` not a multiple
    /// of 8.
    #[error("stream address or size misaligned")]
    StreamAlignment,
    /// `latest_flush` has bits 30:24 set.
    #[error("latest_flush {0:#x} has reserved bits set")]
    LatestFlush(u32),
    /// The group timed out, faulted or was destroyed: it takes no more
    /// jobs.
    #[error("group {0} can no longer run")]
    GroupDead(u32),
    /// The queue's ring and its pending list are full.
    #[error("queue is full; retry later")]
    QueueFull,
    /// Allocating a kernel object failed.
    #[error("kernel object allocation failed: {0}")]
    KernelMemory(#[from] KernelMemoryError),
    /// A VM operation failed (VM creation, or mapping a kernel object).
    #[error("VM operation failed: {0}")]
    Vm(#[from] VmBindError),
    /// Guest memory behind a kernel object could not be written.
    #[error("kernel object not writable: {0}")]
    KernelAccess(Fault),
    /// Tiler heap arguments out of range.
    #[error("invalid tiler heap argument: {0}")]
    HeapArgs(&'static str),
    /// The VM already has its maximum number of tiler heaps.
    #[error("too many tiler heaps in the VM")]
    TooManyHeaps,
    /// No tiler heap with this handle or context address.
    #[error("no such tiler heap")]
    NoSuchHeap,
    /// The heap may not grow now: it has its maximum number of chunks, or
    /// more render passes are in flight than its target.
    #[error("tiler heap cannot grow now")]
    HeapBusy,

    /// A BO to be mapped as kernel memory is mapped in a VM already.
    #[error("the BO is mapped in a VM")]
    BoMapped,
}

impl FwError {
    /// The errno Panthor reports for this mistake: EINVAL for bad
    /// arguments and dead groups, EACCES for a forbidden priority, EBUSY when
    /// a handle space is full (xarray allocation) or a heap is at its limit,
    /// ENOMEM when memory runs out, EAGAIN when a queue is full (see the
    /// module documentation), EIO when guest memory vanished.
    pub fn errno(&self) -> i32 {
        match self {
            FwError::PriorityNotAllowed(_) => libc::EACCES,
            FwError::TooManyVms(_)
            | FwError::TooManyGroups(_)
            | FwError::TooManyHeaps
            | FwError::HeapBusy
            | FwError::BoMapped => libc::EBUSY,
            FwError::QueueFull => libc::EAGAIN,
            FwError::KernelMemory(_) => libc::ENOMEM,
            FwError::Vm(e) => e.errno(),
            FwError::KernelAccess(_) => libc::EIO,
            _ => libc::EINVAL,
        }
    }
}
