//! Error types of the MMU: BO creation, VM creation and VM_BIND.
//!
//! Every error that the guest can cause maps to the errno Panthor returns for
//! the same mistake ([`VmBindError::errno`], [`BoError::errno`]); the values
//! are positive (`libc::EINVAL`, not `-EINVAL`).

use thiserror::Error;

/// Why a BO backing was refused.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum BoError {
    /// The BO has no backing range at all.
    #[error("the BO has no backing ranges")]
    Empty,
    /// One backing range has length zero.
    #[error("backing range {index} is empty")]
    EmptyRange {
        /// Index of the range in the caller's list.
        index: usize,
    },
    /// One backing range does not start or end on a 4 KiB boundary.
    #[error("backing range {index} is not 4 KiB aligned")]
    MisalignedRange {
        /// Index of the range in the caller's list.
        index: usize,
    },
    /// One backing range wraps around the address space or lies beyond
    /// what a page-table entry can hold.
    #[error("backing range {index} overflows the physical address space")]
    RangeOverflow {
        /// Index of the range in the caller's list.
        index: usize,
    },
    /// One backing range is not entirely inside guest memory.
    #[error("backing range {index} is outside guest memory")]
    OutsideGuestMemory {
        /// Index of the range in the caller's list.
        index: usize,
    },
    /// More backing ranges than the limit allows.
    #[error("too many backing ranges (limit {max})")]
    TooManyRanges {
        /// The limit.
        max: usize,
    },
    /// The ranges add up to more than the BO size limit.
    #[error("BO larger than the limit of {max} bytes")]
    TooLarge {
        /// The limit, in bytes.
        max: u64,
    },
}

impl BoError {
    /// The errno to report: EINVAL for malformed ranges, ENOMEM when a
    /// resource limit was hit.
    pub fn errno(&self) -> i32 {
        match self {
            BoError::TooManyRanges { .. } | BoError::TooLarge { .. } => libc::ENOMEM,
            _ => libc::EINVAL,
        }
    }
}

/// Why a VM_BIND operation (or VM creation) was refused.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum VmBindError {
    /// `va` or `size` is not a multiple of 4 KiB.
    #[error("va or size is not 4 KiB aligned")]
    Misaligned,
    /// `bo_offset` is not a multiple of 4 KiB.
    #[error("bo_offset is not 4 KiB aligned")]
    BoOffsetMisaligned,
    /// A MAP or UNMAP of zero bytes reached validation.
    #[error("zero-sized operation")]
    ZeroSize,
    /// The range wraps or ends beyond the VA space (or, for kernel binds,
    /// is not inside the kernel window).
    #[error("range outside the VM's VA space")]
    OutOfRange,
    /// A user bind overlaps the kernel VA window.
    #[error("range overlaps the kernel VA window")]
    KernelWindow,
    /// `bo_offset + size` is beyond the end of the BO (or overflows).
    #[error("bo_offset + size is beyond the BO")]
    BoRange,
    /// The BO was created exclusive to another VM.
    #[error("the BO is exclusive to another VM")]
    ExclusiveVm,
    /// Unknown or misplaced flag bits in the op.
    #[error("invalid op flags")]
    InvalidFlags,
    /// `bo_handle` / `bo_offset` (UNMAP, SYNC_ONLY) or `va` / `size`
    /// (SYNC_ONLY) are not zero.
    #[error("field must be zero for this op type")]
    NonZeroField,
    /// The BO handle of a MAP names no BO.
    #[error("no such BO")]
    NoSuchBo,
    /// MAP on a VM that a failed asynchronous bind made unusable.
    #[error("the VM is unusable")]
    Unusable,
    /// A validated op was applied to a VM other than the one that validated it.
    #[error("op validated for another VM")]
    WrongVm,
    /// The user VA range asked for at VM creation leaves less than 256 MiB
    /// for the kernel window.
    #[error("invalid user VA range")]
    InvalidUserVaRange,
    /// The kernel window has no free range of the requested size.
    #[error("no free range in the kernel VA window")]
    NoKernelVa,
    /// The VM's mapping limit would be exceeded.
    #[error("too many mappings in the VM")]
    TooManyMappings,
    /// The VM's page-table budget would be exceeded.
    #[error("page-table budget of the VM exhausted")]
    PageTableBudget,
    /// MAP of a BO whose memory the guest took back.
    #[error("the BO was revoked")]
    Revoked,
    /// The bytes of user mappings shared with other VMs would exceed
    /// their quota.
    #[error("mapped-bytes quota exhausted")]
    MappedBytes,
}

impl VmBindError {
    /// The errno Panthor returns for this mistake. Argument errors are
    /// EINVAL, as in Panthor (which also answers EINVAL for MAP on an
    /// unusable VM). Resource limits are ENOMEM, what Panthor returns when
    /// pre-allocating VMAs or page tables fails. A full kernel window is
    /// ENOSPC, drm_mm's answer.
    pub fn errno(&self) -> i32 {
        match self {
            VmBindError::TooManyMappings
            | VmBindError::PageTableBudget
            | VmBindError::MappedBytes => libc::ENOMEM,
            VmBindError::NoKernelVa => libc::ENOSPC,
            _ => libc::EINVAL,
        }
    }
}

/// A synchronous multi-op VM_BIND stopped at a failing op.
///
/// Ops before `completed` were applied; the failing op and the ones after it
/// were not (Panthor reports this through `ops.count = completed`).
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
#[error("VM_BIND op {completed} failed: {error}")]
pub struct BindError {
    /// How many ops were applied before the failure.
    pub completed: usize,
    /// Why the op at index `completed` failed.
    pub error: VmBindError,
}

impl BindError {
    /// The errno of the failing op.
    pub fn errno(&self) -> i32 {
        self.error.errno()
    }
}
