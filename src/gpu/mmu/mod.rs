//! The GPU MMU: page tables, translation and the VM_BIND engine.
//!
//! Mali has no VRAM: every buffer object (BO) is a list of guest-physical
//! ranges, and a GPU virtual address space (a *VM*) maps GPU VAs onto those
//! ranges through per-VM page tables, the way Panthor drives the real MMU.
//!
//! The pieces, one per file:
//! - [`bo`]: a BO backing (ordered guest-physical ranges) and the
//!   "BO offset → guest-physical address" lookup.
//! - [`pagetable`]: the 48-bit, 4-level page table with 4 KiB pages and
//!   2 MiB blocks, held in host memory and invisible to the guest.
//! - [`vm`]: [`GpuVm`], the VA space: VA layout (user range and kernel
//!   window), the mapping tree, VM_BIND validation and application with
//!   Panthor's error rules, and the USABLE / UNUSABLE state.
//! - [`fault`]: access types, MMU faults and their Mali exception codes.
//! - [`translate`]: GPU VA → guest-physical translation with a small
//!   translation cache.
//! - [`access`]: the memory accessors the command-stream interpreter uses
//!   (plain loads and stores, byte copies across pages, atomics for sync
//!   objects), all through vm-memory.
//! - [`error`]: the error types of BO creation, VM creation and VM_BIND.
//!
//! Resource bounds: every number that a guest controls and that drives host
//! allocation is capped, by [`BoLimits`] (ranges per BO, BO size) and
//! [`VmLimits`] (mappings and page tables per VM).

pub mod access;
pub mod bo;
pub mod error;
pub mod fault;
pub mod pagetable;
pub mod translate;
pub mod vm;

#[cfg(test)]
mod proptests;

pub use bo::{Bo, BoLimits, GuestRange, Segments, MAX_BO_RANGES, MAX_BO_SIZE};
pub use error::{BindError, BoError, VmBindError};
pub use fault::{exception, Access, Fault, FaultKind};
pub use pagetable::{Leaf, MapFlags, PageTable, PtError};
pub use translate::{Translation, TLB_ENTRIES};
pub use vm::{
    BindOp, GpuVm, MappedQuota, Mapping, VaLayout, ValidatedOp, VmKey, VmLimits, VmState,
    MAX_VM_MAPPINGS, MAX_VM_PAGE_TABLES,
};

/// log2 of the GPU page size.
pub const PAGE_SHIFT: u32 = 12;
/// The GPU page size (4 KiB, the LPAE 4K granule).
pub const PAGE_SIZE: u64 = 1 << PAGE_SHIFT;
/// log2 of the block size that level-2 entries map.
pub const BLOCK_SHIFT: u32 = 21;
/// The block size that level-2 entries map (2 MiB).
pub const BLOCK_SIZE: u64 = 1 << BLOCK_SHIFT;
/// Width of a GPU virtual address (mmu_features VA_BITS of a G610).
pub const VA_BITS: u32 = 48;
/// Size of the whole GPU VA space.
pub const VA_SPACE: u64 = 1 << VA_BITS;
/// Width of an output (guest-physical) address the MMU accepts
/// (mmu_features PA_BITS of a G610). A leaf whose address does not fit gives
/// an ADDR_SIZE_FAULT_OUT on access.
pub const PA_BITS: u32 = 40;

/// Whether `x` is a multiple of the page size.
pub(crate) const fn page_aligned(x: u64) -> bool {
    x & (PAGE_SIZE - 1) == 0
}
