//! GPU VMs: the VA space, its mapping tree and synchronous VM_BIND.
//!
//! A [`GpuVm`] is what Panthor's VM_CREATE makes: a 48-bit GPU VA space with
//! a mapping tree (in the style of drm_gpuvm: VA range → BO, BO offset,
//! flags) and the page table that implements it.
//!
//! # VA layout
//! As Panthor (csf.md §1.5): the user range starts at 0; the kernel window,
//! `rounddown_pow_of_two(full - user)` bytes, sits at the top of the space,
//! and at least 256 MiB are always left for it. A requested range of 0
//! picks half of the space (Panthor's choice when the GPU VA space is wider
//! than 4 GiB; the guest's TASK_SIZE is not known here). User binds may use
//! everything below the kernel window, which is what VM_CREATE reports back
//! as `user_va_range`. Kernel objects (ring buffers, sync objects, heap
//! contexts) are mapped through the separate `*_kernel` calls, which only
//! accept ranges inside the window.
//!
//! # VM_BIND
//! Ops follow Panthor's rules and errnos (see [`VmBindError::errno`]):
//! `va`, `size` and `bo_offset` 4 KiB aligned; the range inside the user VA
//! space and clear of the kernel window; `bo_offset + size` within the BO,
//! with checked arithmetic; a BO created exclusive to a VM only goes into
//! that VM; MAP refused once the VM is unusable, UNMAP still accepted.
//! MAP over existing mappings replaces them: overlapped mappings are removed
//! and ones that straddle an edge keep their outside parts, the part after
//! the new range having its BO offset moved by the split distance.
//! UNMAP splits the same way, and unmapping a hole is not an error.
//!
//! Validation and application are separate ([`GpuVm::validate`],
//! [`GpuVm::apply`]) so an asynchronous engine can validate at submit time
//! and apply in order later. [`GpuVm::bind`] is the synchronous multi-op
//! path: ops are applied in order and the first failure stops the batch
//! with the count of applied ops, as Panthor does with `ops.count`.
//!
//! # Resources
//! The mapping tree and the page tables are bounded by [`VmLimits`].
//! Validating a MAP reserves its worst case (two extra tree entries for the
//! straddling pieces plus the new one, and one page table per 512 GiB,
//! 1 GiB and 2 MiB region it touches); the reservation lives in the
//! [`ValidatedOp`] and is returned when the op is applied or dropped. So
//! applying a validated op never runs out of anything.
//!
//! UNMAP never fails for lack of resources: it reserves nothing and needs
//! nothing that can run out. The page tables cannot grow on an unmap,
//! because a 2 MiB block is charged against the budget like the leaf table
//! that splitting it needs. The tree can grow by one entry when an UNMAP
//! punches a hole in the middle of a mapping; that growth is deliberately
//! not limited (refusing the UNMAP would break the rule), and it stays
//! bounded because every mapping covers at least one page and the pages
//! that can be mapped at all are bounded by the page-table budget.
//!
//! The bytes of user mappings can also be bounded across several VMs (one
//! context's) by a shared [`MappedQuota`] ([`GpuVm::set_quota`]). A user
//! MAP is charged its full size when it is validated, before any credit
//! for what it replaces; the bytes it removes, UNMAPs and the VM's end
//! give bytes back. Kernel mappings are not counted.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use super::bo::Bo;
use super::error::{BindError, VmBindError};
use super::pagetable::{MapFlags, PageTable};
use super::translate::Tlb;
use super::{page_aligned, BLOCK_SIZE, PAGE_SIZE, VA_SPACE};

/// Default cap on the number of mappings a MAP may bring a VM to.
pub const MAX_VM_MAPPINGS: usize = 1 << 16;
/// Default page-table budget of a VM, in tables (blocks count as tables):
/// 64 MiB of host memory at most, enough for 32 GiB mapped with 4 KiB pages.
pub const MAX_VM_PAGE_TABLES: usize = 1 << 14;
/// Smallest kernel window (PANTHOR_VM_MIN_KERNEL_VA_SIZE).
pub const MIN_KERNEL_VA_SIZE: u64 = 256 << 20;
/// Tree entries one MAP may add: the new mapping plus the two outside
/// pieces of a mapping that straddles both ends of it.
const MAP_TREE_GROWTH: usize = 2;

/// The uAPI encoding of VM_BIND op flags (drm_panthor_vm_bind_op.flags).
pub mod op_flags {
    /// Mask of the op type field, bits 31:28.
    pub const TYPE_MASK: u32 = 0xf << 28;
    /// MAP op type.
    pub const TYPE_MAP: u32 = 0 << 28;
    /// UNMAP op type.
    pub const TYPE_UNMAP: u32 = 1 << 28;
    /// SYNC_ONLY op type.
    pub const TYPE_SYNC_ONLY: u32 = 2 << 28;
    /// MAP modifiers that are understood: READONLY, NOEXEC, UNCACHED.
    pub const MAP_FLAGS: u32 = 0b111;
}

/// A process-unique identity of a VM, used to check exclusive BOs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VmKey(u64);

impl VmKey {
    /// A key no other VM has or will have.
    pub fn new_unique() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        Self(NEXT.fetch_add(1, Ordering::Relaxed))
    }

    /// The raw value, for logs.
    pub fn raw(self) -> u64 {
        self.0
    }
}

/// Resource limits of one VM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VmLimits {
    /// A MAP is refused (ENOMEM) if the mapping tree could exceed this.
    pub max_mappings: usize,
    /// A MAP is refused (ENOMEM) if the page tables (root excluded) plus
    /// 2 MiB blocks could exceed this.
    pub max_page_tables: usize,
}

impl Default for VmLimits {
    fn default() -> Self {
        Self {
            max_mappings: MAX_VM_MAPPINGS,
            max_page_tables: MAX_VM_PAGE_TABLES,
        }
    }
}

/// The VA layout of a VM: the user range and the kernel window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VaLayout {
    kernel_start: u64,
}

impl VaLayout {
    /// The layout for VM_CREATE's `user_va_range` (0 picks the default).
    /// Fails with EINVAL when less than 256 MiB would be left for the
    /// kernel window.
    pub fn new(user_va_range: u64) -> Result<Self, VmBindError> {
        let user = if user_va_range == 0 {
            VA_SPACE / 2
        } else {
            user_va_range
        };
        if user > VA_SPACE - MIN_KERNEL_VA_SIZE {
            return Err(VmBindError::InvalidUserVaRange);
        }
        // VA_SPACE - user >= 256 MiB, so the log is well defined.
        let rest = VA_SPACE - user;
        let kernel_size = 1u64 << (63 - rest.leading_zeros());
        Ok(Self {
            kernel_start: VA_SPACE - kernel_size,
        })
    }

    /// The user VA range as VM_CREATE reports it back: user binds may use
    /// `[0, user_va_range())`.
    pub fn user_va_range(&self) -> u64 {
        self.kernel_start
    }

    /// The kernel window at the top of the VA space.
    pub fn kernel_window(&self) -> Range<u64> {
        self.kernel_start..VA_SPACE
    }
}

/// Where a bind may land.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Region {
    User,
    Kernel,
}

/// One entry of the mapping tree.
#[derive(Clone, Debug)]
pub struct Mapping {
    /// First VA.
    pub va: u64,
    /// Size in bytes.
    pub size: u64,
    /// The BO mapped (the mapping keeps its backing alive).
    pub bo: Arc<Bo>,
    /// Offset in the BO of `va`.
    pub bo_offset: u64,
    /// Permissions and attributes.
    pub flags: MapFlags,
    /// Whether the mapping lives in the kernel window.
    pub kernel: bool,
}

impl Mapping {
    /// First VA after the mapping.
    pub fn end(&self) -> u64 {
        self.va + self.size
    }
}

/// One VM_BIND operation, with its BO already looked up.
#[derive(Clone, Debug)]
pub enum BindOp {
    /// Map `size` bytes of `bo` from `bo_offset` at `va`.
    Map {
        /// The BO.
        bo: Arc<Bo>,
        /// Offset in the BO.
        bo_offset: u64,
        /// GPU VA.
        va: u64,
        /// Bytes to map.
        size: u64,
        /// Permissions and attributes.
        flags: MapFlags,
    },
    /// Unmap `[va, va+size)`.
    Unmap {
        /// GPU VA.
        va: u64,
        /// Bytes to unmap.
        size: u64,
    },
    /// No VA change; the op only carries syncs.
    SyncOnly,
}

impl BindOp {
    /// Decode a drm_panthor_vm_bind_op's fields, checking them in Panthor's
    /// order: `va` and `size` alignment first, then per type the flags and
    /// the fields that must be zero. `lookup` resolves a MAP's BO handle.
    ///
    /// Panthor's synchronous path treats any op with `size == 0` as a
    /// successful no-op before checking anything; a caller on that path
    /// skips such ops before decoding them.
    pub fn from_uapi<F>(
        flags: u32,
        bo_handle: u32,
        bo_offset: u64,
        va: u64,
        size: u64,
        lookup: F,
    ) -> Result<Self, VmBindError>
    where
        F: FnOnce(u32) -> Option<Arc<Bo>>,
    {
        if !page_aligned(va | size) {
            return Err(VmBindError::Misaligned);
        }
        let modifiers = flags & !op_flags::TYPE_MASK;
        match flags & op_flags::TYPE_MASK {
            op_flags::TYPE_MAP => {
                let bo = lookup(bo_handle).ok_or(VmBindError::NoSuchBo)?;
                let flags = MapFlags::from_bits(modifiers).ok_or(VmBindError::InvalidFlags)?;
                Ok(BindOp::Map {
                    bo,
                    bo_offset,
                    va,
                    size,
                    flags,
                })
            }
            op_flags::TYPE_UNMAP => {
                if modifiers != 0 {
                    return Err(VmBindError::InvalidFlags);
                }
                if bo_handle != 0 || bo_offset != 0 {
                    return Err(VmBindError::NonZeroField);
                }
                Ok(BindOp::Unmap { va, size })
            }
            op_flags::TYPE_SYNC_ONLY => {
                if modifiers != 0 {
                    return Err(VmBindError::InvalidFlags);
                }
                if bo_handle != 0 || bo_offset != 0 || va != 0 || size != 0 {
                    return Err(VmBindError::NonZeroField);
                }
                Ok(BindOp::SyncOnly)
            }
            _ => Err(VmBindError::InvalidFlags),
        }
    }

    /// The size of the op (0 for SYNC_ONLY).
    pub fn size(&self) -> u64 {
        match self {
            BindOp::Map { size, .. } | BindOp::Unmap { size, .. } => *size,
            BindOp::SyncOnly => 0,
        }
    }
}

/// Bytes of user mappings shared by several VMs: what is mapped plus what
/// validated MAPs not applied yet reserve.
#[derive(Debug)]
pub struct MappedQuota {
    max: u64,
    used: AtomicU64,
}

impl MappedQuota {
    /// A quota of `max` bytes, none used.
    pub fn new(max: u64) -> Arc<Self> {
        Arc::new(Self {
            max,
            used: AtomicU64::new(0),
        })
    }

    /// Bytes mapped or reserved.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Acquire)
    }

    /// The limit.
    pub fn max(&self) -> u64 {
        self.max
    }

    /// Takes `bytes` if they fit under the limit.
    fn charge(&self, bytes: u64) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                u.checked_add(bytes).filter(|&t| t <= self.max)
            })
            .is_ok()
    }

    /// Takes `bytes` whatever the limit (they were reserved before).
    fn force(&self, bytes: u64) {
        let _ = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                Some(u.saturating_add(bytes))
            });
    }

    /// Gives `bytes` back.
    fn credit(&self, bytes: u64) {
        let _ = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                Some(u.saturating_sub(bytes))
            });
    }
}

/// Amounts reserved by validated ops that are not applied yet.
#[derive(Debug, Default)]
struct Reserved {
    tables: AtomicUsize,
    mappings: AtomicUsize,
}

/// One op's share of [`Reserved`], returned on drop.
#[derive(Debug)]
struct Reservation {
    pool: Arc<Reserved>,
    tables: usize,
    mappings: usize,
    /// User bytes charged to a shared quota.
    bytes: Option<(Arc<MappedQuota>, u64)>,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Some((q, n)) = &self.bytes {
            q.credit(*n);
        }
        self.pool.tables.fetch_sub(self.tables, Ordering::AcqRel);
        self.pool
            .mappings
            .fetch_sub(self.mappings, Ordering::AcqRel);
    }
}

/// What a validated op will do.
#[derive(Debug)]
enum Validated {
    Map {
        bo: Arc<Bo>,
        bo_offset: u64,
        va: u64,
        size: u64,
        flags: MapFlags,
        kernel: bool,
    },
    Unmap {
        va: u64,
        size: u64,
    },
    Nop,
}

/// An op that passed validation against one VM, holding the resources
/// its application needs. Dropping it without applying it returns them.
#[derive(Debug)]
pub struct ValidatedOp {
    vm: VmKey,
    op: Validated,
    _reservation: Option<Reservation>,
}

impl ValidatedOp {
    /// Whether the op is a MAP (the only kind that an unusable VM refuses
    /// at apply time).
    pub fn is_map(&self) -> bool {
        matches!(self.op, Validated::Map { .. })
    }

    /// Whether the op maps (part of) `bo`.
    pub fn maps_bo(&self, bo: &Arc<Bo>) -> bool {
        matches!(&self.op, Validated::Map { bo: b, .. } if Arc::ptr_eq(b, bo))
    }

    /// The VA range the op changes, if any.
    pub fn va_range(&self) -> Option<Range<u64>> {
        match self.op {
            Validated::Map { va, size, .. } | Validated::Unmap { va, size } => Some(va..va + size),
            Validated::Nop => None,
        }
    }
}

/// VM state as VM_GET_STATE reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmState {
    /// Binds and jobs work.
    Usable,
    /// An asynchronous bind failed: MAP is refused, UNMAP still works, jobs
    /// fail; the VM must be destroyed.
    Unusable,
}

impl VmState {
    /// DRM_PANTHOR_VM_STATE_USABLE (0) / _UNUSABLE (1).
    pub fn as_uapi(self) -> u32 {
        match self {
            VmState::Usable => 0,
            VmState::Unusable => 1,
        }
    }
}

/// Number of naturally aligned `1 << shift` regions `[va, end)` touches.
fn regions(va: u64, end: u64, shift: u32) -> u64 {
    ((end - 1) >> shift) - (va >> shift) + 1
}

/// Worst-case number of page tables (or blocks) mapping `[va, va+size)`
/// can add: one per level-1, level-2 and level-3 table it touches.
fn tables_needed(va: u64, size: u64) -> usize {
    let end = va + size;
    let n = regions(va, end, 39) + regions(va, end, 30) + regions(va, end, 21);
    usize::try_from(n).unwrap_or(usize::MAX)
}

/// `x` rounded up to `align` (a power of two), or `None` on overflow.
fn align_up(x: u64, align: u64) -> Option<u64> {
    Some(x.checked_add(align - 1)? & !(align - 1))
}

/// A GPU virtual address space.
#[derive(Debug)]
pub struct GpuVm {
    key: VmKey,
    layout: VaLayout,
    limits: VmLimits,
    mappings: BTreeMap<u64, Mapping>,
    pt: PageTable,
    tlb: Tlb,
    state: VmState,
    reserved: Arc<Reserved>,
    quota: Option<Arc<MappedQuota>>,
    /// Bytes of user mappings.
    user_bytes: u64,
}

impl Drop for GpuVm {
    fn drop(&mut self) {
        if let Some(q) = &self.quota {
            q.credit(self.user_bytes);
        }
    }
}

impl GpuVm {
    /// Create a VM as VM_CREATE does; `user_va_range` 0 picks the default.
    pub fn new(user_va_range: u64, limits: VmLimits) -> Result<Self, VmBindError> {
        Ok(Self {
            key: VmKey::new_unique(),
            layout: VaLayout::new(user_va_range)?,
            limits,
            mappings: BTreeMap::new(),
            pt: PageTable::new(),
            tlb: Tlb::default(),
            state: VmState::Usable,
            reserved: Arc::default(),
            quota: None,
            user_bytes: 0,
        })
    }

    /// Charges the VM's user mappings to `quota` from now on (the bytes
    /// already mapped included, whatever its limit).
    pub fn set_quota(&mut self, quota: Arc<MappedQuota>) {
        if let Some(old) = self.quota.take() {
            old.credit(self.user_bytes);
        }
        quota.force(self.user_bytes);
        self.quota = Some(quota);
    }

    /// Bytes of user mappings in the VM.
    pub fn user_bytes(&self) -> u64 {
        self.user_bytes
    }

    /// The identity exclusive BOs are checked against.
    pub fn key(&self) -> VmKey {
        self.key
    }

    /// The VA layout.
    pub fn layout(&self) -> &VaLayout {
        &self.layout
    }

    /// The limits this VM enforces.
    pub fn limits(&self) -> &VmLimits {
        &self.limits
    }

    /// USABLE or UNUSABLE.
    pub fn state(&self) -> VmState {
        self.state
    }

    /// Whether MAP is still accepted.
    pub fn is_usable(&self) -> bool {
        self.state == VmState::Usable
    }

    /// Make the VM unusable (an asynchronous bind failed). There is no way
    /// back.
    pub fn mark_unusable(&mut self) {
        self.state = VmState::Unusable;
    }

    /// The mappings, in VA order.
    pub fn mappings(&self) -> impl Iterator<Item = &Mapping> {
        self.mappings.values()
    }

    /// Number of mappings.
    pub fn mapping_count(&self) -> usize {
        self.mappings.len()
    }

    /// The mapping containing `va`, if any.
    pub fn mapping_at(&self, va: u64) -> Option<&Mapping> {
        self.mappings
            .range(..=va)
            .next_back()
            .map(|(_, m)| m)
            .filter(|m| va < m.end())
    }

    /// The page table.
    pub fn page_table(&self) -> &PageTable {
        &self.pt
    }

    pub(crate) fn pt_and_tlb(&mut self) -> (&PageTable, &mut Tlb) {
        (&self.pt, &mut self.tlb)
    }

    pub(crate) fn tlb(&self) -> &Tlb {
        &self.tlb
    }

    /// Validate a user bind op against the current state and reserve what
    /// applying it needs.
    pub fn validate(&self, op: &BindOp) -> Result<ValidatedOp, VmBindError> {
        self.validate_in(op, Region::User)
    }

    /// Validate a batch of user bind ops at once (an asynchronous VM_BIND
    /// at submit time). Validation does not depend on the ops before it,
    /// apart from the reservations they take, so the batch can be applied
    /// in order later. On failure, nothing stays reserved and `completed`
    /// is the index of the refused op.
    pub fn validate_all(&self, ops: &[BindOp]) -> Result<Vec<ValidatedOp>, BindError> {
        ops.iter()
            .enumerate()
            .map(|(completed, op)| {
                self.validate(op)
                    .map_err(|error| BindError { completed, error })
            })
            .collect()
    }

    /// Validate a bind op for the kernel window (ring buffers, sync
    /// objects, heap contexts), which user binds cannot reach.
    pub fn validate_kernel(&self, op: &BindOp) -> Result<ValidatedOp, VmBindError> {
        self.validate_in(op, Region::Kernel)
    }

    /// Check that `[va, va+size)` is a well-formed range of `region`.
    fn check_bind_range(&self, va: u64, size: u64, region: Region) -> Result<(), VmBindError> {
        if size == 0 {
            return Err(VmBindError::ZeroSize);
        }
        if !page_aligned(va | size) {
            return Err(VmBindError::Misaligned);
        }
        let end = va
            .checked_add(size)
            .filter(|&e| e <= VA_SPACE)
            .ok_or(VmBindError::OutOfRange)?;
        match region {
            Region::User if end > self.layout.kernel_start => Err(VmBindError::KernelWindow),
            Region::Kernel if va < self.layout.kernel_start => Err(VmBindError::OutOfRange),
            _ => Ok(()),
        }
    }

    fn validate_in(&self, op: &BindOp, region: Region) -> Result<ValidatedOp, VmBindError> {
        let (op, reservation) = match op {
            BindOp::SyncOnly => (Validated::Nop, None),
            &BindOp::Unmap { va, size } => {
                self.check_bind_range(va, size, region)?;
                (Validated::Unmap { va, size }, None)
            }
            BindOp::Map {
                bo,
                bo_offset,
                va,
                size,
                flags,
            } => {
                let (bo_offset, va, size) = (*bo_offset, *va, *size);
                self.check_bind_range(va, size, region)?;
                if !page_aligned(bo_offset) {
                    return Err(VmBindError::BoOffsetMisaligned);
                }
                match bo_offset.checked_add(size) {
                    Some(end) if end <= bo.size() => {}
                    _ => return Err(VmBindError::BoRange),
                }
                if bo.exclusive_vm().is_some_and(|k| k != self.key) {
                    return Err(VmBindError::ExclusiveVm);
                }
                if !self.is_usable() {
                    return Err(VmBindError::Unusable);
                }
                if bo.is_revoked() {
                    return Err(VmBindError::Revoked);
                }
                let mut reservation = self.reserve(tables_needed(va, size), MAP_TREE_GROWTH)?;
                if region == Region::User {
                    if let Some(q) = &self.quota {
                        if !q.charge(size) {
                            return Err(VmBindError::MappedBytes);
                        }
                        reservation.bytes = Some((q.clone(), size));
                    }
                }
                (
                    Validated::Map {
                        bo: bo.clone(),
                        bo_offset,
                        va,
                        size,
                        flags: *flags,
                        kernel: region == Region::Kernel,
                    },
                    Some(reservation),
                )
            }
        };
        Ok(ValidatedOp {
            vm: self.key,
            op,
            _reservation: reservation,
        })
    }

    /// Reserve `tables` page tables and `mappings` tree entries on top of
    /// what is in use and already reserved.
    fn reserve(&self, tables: usize, mappings: usize) -> Result<Reservation, VmBindError> {
        let in_use = self.mappings.len();
        self.reserved
            .mappings
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |r| {
                let total = in_use.checked_add(r)?.checked_add(mappings)?;
                (total <= self.limits.max_mappings).then_some(r + mappings)
            })
            .map_err(|_| VmBindError::TooManyMappings)?;
        // From here on the guard returns the mapping reservation on failure.
        let mut reservation = Reservation {
            pool: self.reserved.clone(),
            tables: 0,
            mappings,
            bytes: None,
        };
        let charge = self.pt.charge();
        self.reserved
            .tables
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |r| {
                let total = charge.checked_add(r)?.checked_add(tables)?;
                (total <= self.limits.max_page_tables).then_some(r + tables)
            })
            .map_err(|_| VmBindError::PageTableBudget)?;
        reservation.tables = tables;
        Ok(reservation)
    }

    /// Apply a validated op. Fails only if `op` was validated by another VM
    /// (EINVAL) or if it is a MAP and the VM became unusable since (EINVAL,
    /// as Panthor's run step does). UNMAP and SYNC_ONLY always succeed.
    pub fn apply(&mut self, op: ValidatedOp) -> Result<(), VmBindError> {
        if op.vm != self.key {
            return Err(VmBindError::WrongVm);
        }
        match &op.op {
            Validated::Nop => Ok(()),
            &Validated::Unmap { va, size } => {
                self.remove_range(va, size);
                Ok(())
            }
            Validated::Map {
                bo,
                bo_offset,
                va,
                size,
                flags,
                kernel,
            } => {
                if !self.is_usable() {
                    return Err(VmBindError::Unusable);
                }
                if bo.is_revoked() {
                    return Err(VmBindError::Revoked);
                }
                let mapping = Mapping {
                    va: *va,
                    size: *size,
                    bo: bo.clone(),
                    bo_offset: *bo_offset,
                    flags: *flags,
                    kernel: *kernel,
                };
                self.insert_mapping(mapping)
            }
        }
        // `op` (and its reservation) is dropped here, after the page tables
        // and the tree account for what it used.
    }

    /// Remove `[va, va+size)` from the tree and the page table, keeping the
    /// outside parts of straddling mappings.
    fn remove_range(&mut self, va: u64, size: u64) {
        let end = va + size;
        let mut removed_user = 0u64;
        // A mapping that starts before the range and reaches into it.
        let straddler = self
            .mappings
            .range(..va)
            .next_back()
            .filter(|(_, m)| m.end() > va)
            .map(|(&k, _)| k);
        if let Some(m) = straddler.and_then(|k| self.mappings.get_mut(&k)) {
            let old_end = m.end();
            if !m.kernel {
                removed_user += old_end.min(end) - va;
            }
            let tail = (old_end > end).then(|| Mapping {
                va: end,
                size: old_end - end,
                bo_offset: m.bo_offset + (end - m.va),
                ..m.clone()
            });
            m.size = va - m.va;
            if let Some(t) = tail {
                self.mappings.insert(t.va, t);
            }
        }
        // Mappings that start inside the range.
        while let Some(k) = self.mappings.range(va..end).next().map(|(&k, _)| k) {
            let Some(m) = self.mappings.remove(&k) else {
                break;
            };
            if !m.kernel {
                removed_user += m.end().min(end) - m.va;
            }
            if m.end() > end {
                let tail = Mapping {
                    va: end,
                    size: m.end() - end,
                    bo_offset: m.bo_offset + (end - m.va),
                    ..m
                };
                self.mappings.insert(tail.va, tail);
            }
        }
        self.user_bytes = self.user_bytes.saturating_sub(removed_user);
        if let Some(q) = &self.quota {
            q.credit(removed_user);
        }
        // The range was validated, so this cannot fail; if it ever did, the
        // tree and the page table would disagree, which makes the VM
        // unusable.
        if self.pt.unmap(va, size).is_err() {
            self.mark_unusable();
        }
    }

    /// Replace whatever `[m.va, m.end())` holds with `m`.
    fn insert_mapping(&mut self, m: Mapping) -> Result<(), VmBindError> {
        self.remove_range(m.va, m.size);
        let mut va = m.va;
        for (gpa, len) in m.bo.segments(m.bo_offset, m.size) {
            if self.pt.map(va, gpa.0, len, m.flags).is_err() {
                // Unreachable after validation: BO ranges are page aligned
                // and below 2^52, and the VA range fits in 48 bits.
                self.mark_unusable();
                return Err(VmBindError::OutOfRange);
            }
            va += len;
        }
        if !m.kernel {
            self.user_bytes = self.user_bytes.saturating_add(m.size);
            if let Some(q) = &self.quota {
                q.force(m.size);
            }
        }
        self.mappings.insert(m.va, m);
        Ok(())
    }

    /// Synchronous VM_BIND: validate and apply each op in order. The first
    /// failure stops the batch; `completed` says how many ops were applied.
    /// Ops of size 0 (SYNC_ONLY included) succeed without any check, as in
    /// Panthor's synchronous path.
    pub fn bind(&mut self, ops: &[BindOp]) -> Result<(), BindError> {
        for (completed, op) in ops.iter().enumerate() {
            if op.size() == 0 {
                continue;
            }
            self.validate(op)
                .and_then(|v| self.apply(v))
                .map_err(|error| BindError { completed, error })?;
        }
        Ok(())
    }

    /// Whether any mapping of the VM, user or kernel, is of `bo`.
    pub fn maps_bo(&self, bo: &Arc<Bo>) -> bool {
        self.mappings.values().any(|m| Arc::ptr_eq(&m.bo, bo))
    }

    /// Removes every mapping of `bo`, user or kernel (its memory was
    /// revoked); returns the bytes unmapped.
    pub fn unmap_bo(&mut self, bo: &Arc<Bo>) -> u64 {
        let ranges: Vec<(u64, u64)> = self
            .mappings
            .values()
            .filter(|m| Arc::ptr_eq(&m.bo, bo))
            .map(|m| (m.va, m.size))
            .collect();
        for &(va, size) in &ranges {
            self.remove_range(va, size);
        }
        ranges.iter().map(|&(_, s)| s).sum()
    }

    /// Whether a kernel mapping of the VM uses guest memory in `ranges`.
    pub fn kernel_uses(&self, ranges: &[super::GuestRange]) -> bool {
        self.mappings.values().filter(|m| m.kernel).any(|m| {
            m.bo.ranges().iter().any(|a| {
                ranges.iter().any(|b| {
                    a.addr.0 < b.addr.0.saturating_add(b.len)
                        && b.addr.0 < a.addr.0.saturating_add(a.len)
                })
            })
        })
    }

    /// Map a BO range at `va` inside the kernel window.
    pub fn map_kernel(
        &mut self,
        bo: &Arc<Bo>,
        bo_offset: u64,
        va: u64,
        size: u64,
        flags: MapFlags,
    ) -> Result<(), VmBindError> {
        let op = self.validate_kernel(&BindOp::Map {
            bo: bo.clone(),
            bo_offset,
            va,
            size,
            flags,
        })?;
        self.apply(op)
    }

    /// Map a BO range at a free VA of the kernel window and return the VA
    /// (aligned to 2 MiB for sizes of 2 MiB and more, else to 4 KiB, as
    /// Panthor's kernel auto-VA allocator does).
    pub fn map_kernel_auto(
        &mut self,
        bo: &Arc<Bo>,
        bo_offset: u64,
        size: u64,
        flags: MapFlags,
    ) -> Result<u64, VmBindError> {
        let va = self.find_kernel_va(size)?;
        self.map_kernel(bo, bo_offset, va, size, flags)?;
        Ok(va)
    }

    /// Unmap a range of the kernel window.
    pub fn unmap_kernel(&mut self, va: u64, size: u64) -> Result<(), VmBindError> {
        let op = self.validate_kernel(&BindOp::Unmap { va, size })?;
        self.apply(op)
    }

    /// The lowest free range of `size` bytes in the kernel window (first
    /// fit, aligned as [`GpuVm::map_kernel_auto`] says).
    pub fn find_kernel_va(&self, size: u64) -> Result<u64, VmBindError> {
        if size == 0 {
            return Err(VmBindError::ZeroSize);
        }
        if !page_aligned(size) {
            return Err(VmBindError::Misaligned);
        }
        let align = if size >= BLOCK_SIZE {
            BLOCK_SIZE
        } else {
            PAGE_SIZE
        };
        let window = self.layout.kernel_window();
        let mut candidate = align_up(window.start, align).ok_or(VmBindError::NoKernelVa)?;
        // User mappings end at or below the window start, so only mappings
        // starting inside the window matter.
        for m in self.mappings.range(window.start..).map(|(_, m)| m) {
            let end = candidate.checked_add(size).ok_or(VmBindError::NoKernelVa)?;
            if end <= m.va {
                break;
            }
            candidate = candidate.max(align_up(m.end(), align).ok_or(VmBindError::NoKernelVa)?);
        }
        match candidate.checked_add(size) {
            Some(end) if end <= window.end => Ok(candidate),
            _ => Err(VmBindError::NoKernelVa),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::mmu::{BoLimits, GuestRange};
    use vm_memory::{GuestAddress, GuestMemoryMmap};

    const P: u64 = PAGE_SIZE;
    const MIB: u64 = 1 << 20;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap()
    }

    fn bo_at(addr: u64, len: u64, exclusive: Option<VmKey>) -> Arc<Bo> {
        Arc::new(
            Bo::new(
                [GuestRange::new(addr, len)],
                &mem(),
                exclusive,
                &BoLimits::default(),
            )
            .unwrap(),
        )
    }

    fn vm() -> GpuVm {
        GpuVm::new(0, VmLimits::default()).unwrap()
    }

    fn map_op(bo: &Arc<Bo>, bo_offset: u64, va: u64, size: u64) -> BindOp {
        BindOp::Map {
            bo: bo.clone(),
            bo_offset,
            va,
            size,
            flags: MapFlags::EMPTY,
        }
    }

    #[test]
    fn mapped_quota_is_shared_and_given_back() {
        let q = MappedQuota::new(8 * P);
        let (mut a, mut b) = (vm(), vm());
        a.set_quota(q.clone());
        b.set_quota(q.clone());
        let bo = bo_at(MIB, 8 * P, None);
        a.bind(&[map_op(&bo, 0, 0x10_0000, 6 * P)]).unwrap();
        assert_eq!(
            err(&mut b, map_op(&bo, 0, 0x10_0000, 4 * P)),
            VmBindError::MappedBytes
        );
        assert_eq!(VmBindError::MappedBytes.errno(), libc::ENOMEM);
        // A pending (validated) MAP holds its bytes until dropped.
        let v = b.validate(&map_op(&bo, 0, 0x10_0000, 2 * P)).unwrap();
        assert_eq!(q.used(), 8 * P);
        assert_eq!(
            err(&mut a, map_op(&bo, 0, 0x40_0000, P)),
            VmBindError::MappedBytes
        );
        b.apply(v).unwrap();
        assert_eq!((q.used(), b.user_bytes()), (8 * P, 2 * P));
        // A replacement is charged in full first.
        assert_eq!(
            err(&mut a, map_op(&bo, 0, 0x10_0000, P)),
            VmBindError::MappedBytes
        );
        // A hole punched in the middle of a mapping gives its bytes back.
        a.bind(&[BindOp::Unmap {
            va: 0x10_0000 + P,
            size: 2 * P,
        }])
        .unwrap();
        assert_eq!((q.used(), a.user_bytes()), (6 * P, 4 * P));
        a.bind(&[map_op(&bo, 0, 0x10_0000, 2 * P)]).unwrap();
        assert_eq!((q.used(), a.user_bytes()), (7 * P, 5 * P));
        // Revocation unmaps; the VM's end gives the rest back.
        assert_eq!(a.unmap_bo(&bo), 5 * P);
        assert_eq!(q.used(), 2 * P);
        drop(b);
        assert_eq!(q.used(), 0);
        // Kernel mappings are not counted.
        a.map_kernel_auto(&bo, 0, 8 * P, MapFlags::EMPTY).unwrap();
        assert_eq!(q.used(), 0);
        bo.revoke();
        assert_eq!(err(&mut a, map_op(&bo, 0, 0, P)), VmBindError::Revoked);
    }

    fn err(vm: &mut GpuVm, op: BindOp) -> VmBindError {
        vm.bind(&[op]).unwrap_err().error
    }

    fn gpa(vm: &mut GpuVm, va: u64) -> Option<u64> {
        vm.translate(va, crate::gpu::mmu::Access::Read)
            .ok()
            .map(|t| t.gpa.0)
    }

    /// (va, size, bo_offset) of every mapping.
    fn tree(vm: &GpuVm) -> Vec<(u64, u64, u64)> {
        vm.mappings().map(|m| (m.va, m.size, m.bo_offset)).collect()
    }

    #[test]
    fn layout_follows_panthor() {
        let d = VaLayout::new(0).unwrap();
        assert_eq!(d.user_va_range(), 1 << 47);
        assert_eq!(d.kernel_window(), (1 << 47)..(1 << 48));
        let max = VaLayout::new(VA_SPACE - MIN_KERNEL_VA_SIZE).unwrap();
        assert_eq!(
            max.kernel_window(),
            (VA_SPACE - MIN_KERNEL_VA_SIZE)..VA_SPACE
        );
        assert_eq!(
            VaLayout::new(VA_SPACE - MIN_KERNEL_VA_SIZE + P).unwrap_err(),
            VmBindError::InvalidUserVaRange
        );
        assert_eq!(VaLayout::new(u64::MAX).unwrap_err().errno(), libc::EINVAL);
        // The window is a power of two, so small user ranges get the gap.
        let small = VaLayout::new(1 << 30).unwrap();
        assert_eq!(small.user_va_range(), 1 << 47);
        let odd = VaLayout::new((1 << 47) + P).unwrap();
        assert_eq!(odd.kernel_window(), (VA_SPACE - (1 << 46))..VA_SPACE);
        assert!(GpuVm::new(VA_SPACE, VmLimits::default()).is_err());
    }

    #[test]
    fn misaligned_and_zero_sized_ops_are_einval() {
        let mut vm = vm();
        let bo = bo_at(0, 8 * P, None);
        for op in [
            map_op(&bo, 0, 0x800, P),
            map_op(&bo, 0, 0, 0x800),
            BindOp::Unmap { va: 1, size: P },
            BindOp::Unmap { va: 0, size: P + 1 },
        ] {
            assert_eq!(err(&mut vm, op), VmBindError::Misaligned);
        }
        assert_eq!(
            err(&mut vm, map_op(&bo, 0x10, 0, P)),
            VmBindError::BoOffsetMisaligned
        );
        assert_eq!(VmBindError::BoOffsetMisaligned.errno(), libc::EINVAL);
        // Validation refuses zero sizes; the synchronous path skips them.
        assert_eq!(
            vm.validate(&map_op(&bo, 0, 0, 0)).unwrap_err(),
            VmBindError::ZeroSize
        );
        assert_eq!(
            vm.validate(&BindOp::Unmap { va: 0, size: 0 }).unwrap_err(),
            VmBindError::ZeroSize
        );
        vm.bind(&[map_op(&bo, 0, 0, 0), BindOp::SyncOnly]).unwrap();
        assert_eq!(vm.mapping_count(), 0);
    }

    #[test]
    fn ranges_outside_the_user_space_are_einval() {
        let mut vm = vm();
        let bo = bo_at(0, 8 * P, None);
        let kstart = vm.layout().user_va_range();
        let cases = [
            (map_op(&bo, 0, kstart - P, 2 * P), VmBindError::KernelWindow),
            (map_op(&bo, 0, kstart, P), VmBindError::KernelWindow),
            (map_op(&bo, 0, VA_SPACE - P, 2 * P), VmBindError::OutOfRange),
            (map_op(&bo, 0, VA_SPACE, P), VmBindError::OutOfRange),
            (map_op(&bo, 0, !(P - 1), P), VmBindError::OutOfRange),
            (
                BindOp::Unmap {
                    va: kstart,
                    size: P,
                },
                VmBindError::KernelWindow,
            ),
            (
                BindOp::Unmap {
                    va: !(P - 1),
                    size: 2 * P,
                },
                VmBindError::OutOfRange,
            ),
        ];
        for (op, e) in cases {
            assert_eq!(err(&mut vm, op), e);
            assert_eq!(e.errno(), libc::EINVAL);
        }
        vm.bind(&[map_op(&bo, 0, kstart - P, P)]).unwrap();
    }

    #[test]
    fn bo_bounds_are_checked_without_overflow() {
        let mut vm = vm();
        let bo = bo_at(0, 8 * P, None);
        assert_eq!(
            err(&mut vm, map_op(&bo, 4 * P, 0, 5 * P)),
            VmBindError::BoRange
        );
        assert_eq!(err(&mut vm, map_op(&bo, 8 * P, 0, P)), VmBindError::BoRange);
        assert_eq!(
            err(&mut vm, map_op(&bo, !(P - 1), 0, P)),
            VmBindError::BoRange
        );
        assert_eq!(
            err(&mut vm, map_op(&bo, 0, 0, 1 << 46)),
            VmBindError::BoRange
        );
        vm.bind(&[map_op(&bo, 4 * P, 0, 4 * P)]).unwrap();
    }

    #[test]
    fn exclusive_bos_stay_in_their_vm() {
        let mut a = vm();
        let mut b = vm();
        let bo = bo_at(0, 4 * P, Some(a.key()));
        assert_eq!(err(&mut b, map_op(&bo, 0, 0, P)), VmBindError::ExclusiveVm);
        assert_eq!(VmBindError::ExclusiveVm.errno(), libc::EINVAL);
        a.bind(&[map_op(&bo, 0, 0, P)]).unwrap();
    }

    #[test]
    fn map_over_existing_replaces() {
        let mut vm = vm();
        let a = bo_at(0, 16 * P, None);
        let b = bo_at(MIB, 16 * P, None);
        vm.bind(&[map_op(&a, 0, 0, 16 * P), map_op(&b, 2 * P, 4 * P, 4 * P)])
            .unwrap();
        assert_eq!(
            tree(&vm),
            vec![(0, 4 * P, 0), (4 * P, 4 * P, 2 * P), (8 * P, 8 * P, 8 * P)]
        );
        let bos: Vec<_> = vm.mappings().map(|m| Arc::ptr_eq(&m.bo, &a)).collect();
        assert_eq!(bos, vec![true, false, true]);
        assert_eq!(gpa(&mut vm, 3 * P), Some(3 * P));
        assert_eq!(gpa(&mut vm, 4 * P), Some(MIB + 2 * P));
        assert_eq!(gpa(&mut vm, 8 * P), Some(8 * P));
        // Covering several mappings at once, straddling both ends.
        vm.bind(&[map_op(&b, 0, 2 * P, 8 * P)]).unwrap();
        assert_eq!(
            tree(&vm),
            vec![(0, 2 * P, 0), (2 * P, 8 * P, 0), (10 * P, 6 * P, 10 * P)]
        );
        assert_eq!(gpa(&mut vm, 9 * P), Some(MIB + 7 * P));
        // Identical range: replaced (new flags apply).
        vm.bind(&[BindOp::Map {
            bo: b.clone(),
            bo_offset: 0,
            va: 2 * P,
            size: 8 * P,
            flags: MapFlags::READONLY,
        }])
        .unwrap();
        assert_eq!(vm.mapping_count(), 3);
        assert!(vm.mapping_at(5 * P).unwrap().flags.readonly());
    }

    #[test]
    fn partial_unmap_keeps_prefix_and_suffix() {
        let mut vm = vm();
        let a = bo_at(0, 32 * P, None);
        vm.bind(&[map_op(&a, 2 * P, 0, 16 * P)]).unwrap();
        vm.bind(&[BindOp::Unmap {
            va: 4 * P,
            size: 4 * P,
        }])
        .unwrap();
        assert_eq!(tree(&vm), vec![(0, 4 * P, 2 * P), (8 * P, 8 * P, 10 * P)]);
        assert_eq!(gpa(&mut vm, 3 * P), Some(5 * P));
        assert_eq!(gpa(&mut vm, 4 * P), None);
        assert_eq!(gpa(&mut vm, 7 * P), None);
        assert_eq!(gpa(&mut vm, 8 * P), Some(10 * P));
        // Cut the head and the tail.
        vm.bind(&[
            BindOp::Unmap { va: 0, size: P },
            BindOp::Unmap {
                va: 15 * P,
                size: 4 * P,
            },
        ])
        .unwrap();
        assert_eq!(tree(&vm), vec![(P, 3 * P, 3 * P), (8 * P, 7 * P, 10 * P)]);
        // A hole is fine.
        vm.bind(&[BindOp::Unmap {
            va: 1 << 40,
            size: 1 << 30,
        }])
        .unwrap();
        assert_eq!(vm.mapping_count(), 2);
        // Everything.
        vm.bind(&[BindOp::Unmap {
            va: 0,
            size: 1 << 40,
        }])
        .unwrap();
        assert_eq!(vm.mapping_count(), 0);
        assert_eq!(vm.page_table().charge(), 0);
    }

    #[test]
    fn unusable_vm_refuses_map_but_unmaps() {
        let mut vm = vm();
        let a = bo_at(0, 4 * P, None);
        vm.bind(&[map_op(&a, 0, 0, 4 * P)]).unwrap();
        let pending = vm.validate(&map_op(&a, 0, 8 * P, P)).unwrap();
        vm.mark_unusable();
        assert_eq!(vm.state(), VmState::Unusable);
        assert_eq!(vm.state().as_uapi(), 1);
        assert_eq!(err(&mut vm, map_op(&a, 0, 8 * P, P)), VmBindError::Unusable);
        assert_eq!(VmBindError::Unusable.errno(), libc::EINVAL);
        assert!(pending.is_map());
        assert_eq!(vm.apply(pending).unwrap_err(), VmBindError::Unusable);
        vm.bind(&[BindOp::Unmap { va: P, size: P }]).unwrap();
        assert_eq!(tree(&vm), vec![(0, P, 0), (2 * P, 2 * P, 2 * P)]);
    }

    #[test]
    fn multi_op_bind_stops_at_the_failing_op() {
        let mut vm = vm();
        let a = bo_at(0, 8 * P, None);
        let ops = [
            map_op(&a, 0, 0, P),
            map_op(&a, P, P, P),
            map_op(&a, 0, 2 * P, 16 * P),
            map_op(&a, 0, 3 * P, P),
        ];
        let e = vm.bind(&ops).unwrap_err();
        assert_eq!(e.completed, 2);
        assert_eq!(e.error, VmBindError::BoRange);
        assert_eq!(e.errno(), libc::EINVAL);
        assert_eq!(tree(&vm), vec![(0, P, 0), (P, P, P)]);
        // A zero-size op counts as completed.
        let e = vm
            .bind(&[
                BindOp::Unmap { va: 0, size: 0 },
                BindOp::Unmap { va: 1, size: P },
            ])
            .unwrap_err();
        assert_eq!(e.completed, 1);
    }

    #[test]
    fn sync_only_changes_nothing() {
        let mut vm = vm();
        let v = vm.validate(&BindOp::SyncOnly).unwrap();
        assert_eq!(v.va_range(), None);
        let gen = vm.page_table().generation();
        vm.apply(v).unwrap();
        assert_eq!(vm.page_table().generation(), gen);
    }

    #[test]
    fn blocks_are_used_and_split() {
        let mut vm = vm();
        let a = bo_at(4 * MIB, 4 * MIB, None);
        vm.bind(&[map_op(&a, 0, 2 * MIB, 4 * MIB)]).unwrap();
        assert_eq!(vm.page_table().block_count(), 2);
        assert_eq!(
            vm.translate(2 * MIB, crate::gpu::mmu::Access::Read)
                .unwrap()
                .level,
            2
        );
        vm.bind(&[BindOp::Unmap {
            va: 3 * MIB,
            size: P,
        }])
        .unwrap();
        assert_eq!(vm.page_table().block_count(), 1);
        assert_eq!(gpa(&mut vm, 3 * MIB - P), Some(5 * MIB - P));
        assert_eq!(gpa(&mut vm, 3 * MIB), None);
        assert_eq!(gpa(&mut vm, 3 * MIB + P), Some(5 * MIB + P));
        assert_eq!(gpa(&mut vm, 4 * MIB), Some(6 * MIB));
        // A mapping whose VA and address disagree modulo 2 MiB uses pages.
        vm.bind(&[map_op(&a, P, 8 * MIB, 2 * MIB)]).unwrap();
        assert_eq!(vm.page_table().block_count(), 1);
    }

    #[test]
    fn kernel_window_is_separate() {
        let mut vm = vm();
        let ring = bo_at(0, 64 * 1024, None);
        let big = bo_at(4 * MIB, 4 * MIB, None);
        let kstart = vm.layout().kernel_window().start;
        let flags = MapFlags::NOEXEC | MapFlags::UNCACHED;
        let r0 = vm.map_kernel_auto(&ring, 0, 64 * 1024, flags).unwrap();
        assert_eq!(r0, kstart);
        let r1 = vm.map_kernel_auto(&ring, 0, 4 * P, flags).unwrap();
        assert_eq!(r1, kstart + 64 * 1024);
        let r2 = vm
            .map_kernel_auto(&big, 0, 2 * MIB, MapFlags::EMPTY)
            .unwrap();
        assert_eq!(r2, kstart + 2 * MIB);
        assert!(vm.mapping_at(r1).unwrap().kernel);
        assert!(vm.translate(r1, crate::gpu::mmu::Access::Execute).is_err());
        // User binds cannot reach it; kernel binds cannot leave it.
        assert_eq!(
            err(&mut vm, BindOp::Unmap { va: r0, size: P }),
            VmBindError::KernelWindow
        );
        assert_eq!(
            vm.map_kernel(&ring, 0, kstart - P, P, flags).unwrap_err(),
            VmBindError::OutOfRange
        );
        assert_eq!(vm.unmap_kernel(0, P).unwrap_err(), VmBindError::OutOfRange);
        // Freed space is found again.
        vm.unmap_kernel(r0, 64 * 1024).unwrap();
        assert_eq!(vm.find_kernel_va(P).unwrap(), kstart);
        assert_eq!(vm.find_kernel_va(0).unwrap_err(), VmBindError::ZeroSize);
        assert_eq!(
            vm.find_kernel_va(1 << 47).unwrap_err(),
            VmBindError::NoKernelVa
        );
        assert_eq!(VmBindError::NoKernelVa.errno(), libc::ENOSPC);
        // Unusable: kernel MAP refused too.
        vm.mark_unusable();
        assert_eq!(
            vm.map_kernel_auto(&ring, 0, P, flags).unwrap_err(),
            VmBindError::Unusable
        );
        vm.unmap_kernel(r1, 4 * P).unwrap();
    }

    #[test]
    fn mapping_limit_refuses_map_never_unmap() {
        let limits = VmLimits {
            max_mappings: 4,
            max_page_tables: MAX_VM_PAGE_TABLES,
        };
        let mut vm = GpuVm::new(0, limits).unwrap();
        let a = bo_at(0, 64 * P, None);
        // A MAP reserves room for two extra pieces, so the third one is the
        // last that fits under a limit of 4.
        vm.bind(&[
            map_op(&a, 0, 0, P),
            map_op(&a, 0, 2 * P, 32 * P),
            map_op(&a, 0, 40 * P, P),
        ])
        .unwrap();
        let e = vm.bind(&[map_op(&a, 0, 50 * P, P)]).unwrap_err();
        assert_eq!(e.error, VmBindError::TooManyMappings);
        assert_eq!(e.errno(), libc::ENOMEM);
        // Punching holes still works, even past the limit.
        for i in 0..8 {
            vm.bind(&[BindOp::Unmap {
                va: (3 + 2 * i) * P,
                size: P,
            }])
            .unwrap();
        }
        assert_eq!(vm.mapping_count(), 11);
    }

    #[test]
    fn page_table_budget_is_reserved_and_returned() {
        let limits = VmLimits {
            max_mappings: MAX_VM_MAPPINGS,
            max_page_tables: 6,
        };
        let mut vm = GpuVm::new(0, limits).unwrap();
        let a = bo_at(0, 8 * MIB, None);
        // Needs 1 (L1) + 1 (L2) + 4 (2 MiB regions) = 6.
        let op = vm.validate(&map_op(&a, 0, 0, 8 * MIB)).unwrap();
        // Reserved: nothing else fits.
        assert_eq!(
            vm.validate(&map_op(&a, 0, 16 * MIB, P)).unwrap_err(),
            VmBindError::PageTableBudget
        );
        drop(op);
        let op = vm.validate(&map_op(&a, 0, 0, 8 * MIB)).unwrap();
        vm.apply(op).unwrap();
        assert_eq!(vm.page_table().charge(), 6);
        assert_eq!(
            err(&mut vm, map_op(&a, 0, 16 * MIB, P)),
            VmBindError::PageTableBudget
        );
        // Splitting blocks by unmapping never needs budget.
        for i in 0..4 {
            vm.bind(&[BindOp::Unmap {
                va: i * 2 * MIB + P,
                size: P,
            }])
            .unwrap();
        }
        assert_eq!(vm.page_table().block_count(), 0);
        assert_eq!(vm.page_table().charge(), 6);
        vm.bind(&[BindOp::Unmap {
            va: 0,
            size: 8 * MIB,
        }])
        .unwrap();
        vm.bind(&[map_op(&a, 0, 16 * MIB, P)]).unwrap();
    }

    #[test]
    fn batch_validation_reserves_cumulatively() {
        let limits = VmLimits {
            max_mappings: MAX_VM_MAPPINGS,
            max_page_tables: 7,
        };
        let mut vm = GpuVm::new(0, limits).unwrap();
        let a = bo_at(0, 8 * MIB, None);
        // 3 tables each: two fit, the third does not.
        let ops = [map_op(&a, 0, 0, P), map_op(&a, 0, 1 << 40, P)];
        let batch = vm.validate_all(&ops).unwrap();
        let third = [map_op(&a, 0, 1 << 41, P)];
        assert_eq!(
            vm.validate_all(&third).unwrap_err().error,
            VmBindError::PageTableBudget
        );
        let mixed = [BindOp::Unmap { va: 0, size: P }, map_op(&a, 0, 1 << 41, P)];
        let e = vm.validate_all(&mixed).unwrap_err();
        assert_eq!((e.completed, e.error), (1, VmBindError::PageTableBudget));
        for op in batch {
            vm.apply(op).unwrap();
        }
        assert_eq!(vm.page_table().charge(), 6);
        assert_eq!(vm.mapping_count(), 2);
    }

    #[test]
    fn ops_apply_only_to_their_vm() {
        let a = vm();
        let mut b = vm();
        let op = a.validate(&BindOp::Unmap { va: 0, size: P }).unwrap();
        assert_eq!(b.apply(op).unwrap_err(), VmBindError::WrongVm);
    }

    #[test]
    fn uapi_decoding_follows_panthor() {
        let bo = bo_at(0, 4 * P, None);
        let some = |_| Some(bo.clone());
        let none = |_| None;
        use op_flags::*;
        let map = BindOp::from_uapi(TYPE_MAP | 0b011, 1, 0, 0, P, some).unwrap();
        assert!(
            matches!(map, BindOp::Map { flags, .. } if flags == MapFlags::READONLY | MapFlags::NOEXEC)
        );
        let d = |f, h, o, va, size, l: &dyn Fn(u32) -> Option<Arc<Bo>>| {
            BindOp::from_uapi(f, h, o, va, size, l)
                .map(|_| ())
                .unwrap_err()
        };
        assert_eq!(d(TYPE_MAP, 1, 0, 1, P, &some), VmBindError::Misaligned);
        assert_eq!(d(TYPE_MAP, 9, 0, 0, P, &none), VmBindError::NoSuchBo);
        assert_eq!(
            d(TYPE_MAP | 1 << 3, 1, 0, 0, P, &some),
            VmBindError::InvalidFlags
        );
        assert_eq!(
            d(TYPE_UNMAP | 1, 0, 0, 0, P, &none),
            VmBindError::InvalidFlags
        );
        assert_eq!(d(TYPE_UNMAP, 1, 0, 0, P, &none), VmBindError::NonZeroField);
        assert_eq!(d(TYPE_UNMAP, 0, P, 0, P, &none), VmBindError::NonZeroField);
        assert_eq!(
            d(TYPE_SYNC_ONLY, 0, 0, P, 0, &none),
            VmBindError::NonZeroField
        );
        assert_eq!(
            d(TYPE_SYNC_ONLY, 0, 0, 0, P, &none),
            VmBindError::NonZeroField
        );
        assert_eq!(d(3 << 28, 0, 0, 0, 0, &none), VmBindError::InvalidFlags);
        assert!(matches!(
            BindOp::from_uapi(TYPE_UNMAP, 0, 0, P, P, none),
            Ok(BindOp::Unmap { va: P, size: P })
        ));
        assert!(matches!(
            BindOp::from_uapi(TYPE_SYNC_ONLY, 0, 0, 0, 0, none),
            Ok(BindOp::SyncOnly)
        ));
    }

    #[test]
    fn worst_case_table_count() {
        assert_eq!(tables_needed(0, P), 3);
        assert_eq!(tables_needed(2 * MIB - P, 2 * P), 4);
        assert_eq!(tables_needed(0, 1 << 30), 2 + 512);
        assert_eq!(tables_needed(0, VA_SPACE), 512 + (1 << 18) + (1 << 27));
    }
}
