//! Kernel objects: the firmware's own memory inside a GPU VM.
//!
//! Panthor keeps its per-queue ring buffers, the per-group sync objects and
//! the tiler heap contexts and chunks in kernel BOs mapped into the top
//! window of the group's VM. The emulated firmware does the same, with
//! memory from a [`KernelMemory`] allocator: the caller decides where that
//! memory lives (the native context hands over guest memory set aside for
//! the device; tests carve it out of their test memory).
//!
//! A [`KernelObject`] is one such allocation, zeroed before use (no stale
//! bytes from an earlier owner reach the GPU or the guest) and mapped
//! NOEXEC | UNCACHED in the kernel window, as Panthor maps them: at a free
//! VA by the object itself, or where the allocator mapped its whole
//! memory ([`KernelMemory::mapped_at`]). [`PageAllocator`] is a first-fit
//! allocator over one guest-physical range, for tests and for a context
//! that reserves a single region.

use std::collections::BTreeMap;
use std::sync::Arc;

use vm_memory::{Bytes, GuestMemoryBackend};

use super::error::{FwError, KernelMemoryError};
use crate::gpu::mmu::{Bo, BoLimits, GpuVm, GuestRange, MapFlags, VmKey, PAGE_SIZE};

/// Where kernel objects get their memory.
pub trait KernelMemory {
    /// Allocates `size` bytes (a non-zero multiple of 4 KiB) of guest
    /// memory inside `mem` for an object of the VM `vm` (an allocator may
    /// keep memory per VM, or ignore `vm`). The content is not defined; the
    /// firmware zeroes it.
    fn alloc<M>(&mut self, mem: &M, vm: VmKey, size: u64) -> Result<Arc<Bo>, KernelMemoryError>
    where
        M: GuestMemoryBackend + ?Sized;

    /// Gives back memory [`KernelMemory::alloc`] returned.
    fn free(&mut self, bo: Arc<Bo>);

    /// Where `bo`, which [`KernelMemory::alloc`] returned for `vm`, is
    /// already mapped in that VM's kernel window: an allocator whose memory
    /// is mapped there as a whole (the native context maps every
    /// kernel-memory BO when the guest gives it) answers the VA of the
    /// object's first byte, and the firmware does not map the object
    /// again. `None` (the default): the firmware maps each object itself.
    fn mapped_at(&self, _bo: &Bo) -> Option<u64> {
        None
    }

    /// The VM object `vm` is gone (destroyed, and its last group with it):
    /// none of its kernel objects is left, and memory kept for it can go
    /// back to its owner.
    fn vm_gone(&mut self, _vm: VmKey) {}
}

/// A first-fit page allocator over the guest-physical range
/// `[base, base + size)`. Free ranges are coalesced, so the bookkeeping
/// never holds more entries than there are live allocations plus one.
#[derive(Debug)]
pub struct PageAllocator {
    /// Free ranges: start → length.
    free: BTreeMap<u64, u64>,
    size: u64,
    used: u64,
}

impl PageAllocator {
    /// An allocator handing out pages of `[base, base + size)`; both must be
    /// 4 KiB aligned.
    pub fn new(base: u64, size: u64) -> Result<Self, KernelMemoryError> {
        if size == 0 || (base | size) % PAGE_SIZE != 0 || base.checked_add(size).is_none() {
            return Err(KernelMemoryError::InvalidSize(size));
        }
        Ok(Self {
            free: BTreeMap::from([(base, size)]),
            size,
            used: 0,
        })
    }

    /// Bytes handed out and not given back.
    pub fn used(&self) -> u64 {
        self.used
    }

    /// Total bytes managed.
    pub fn capacity(&self) -> u64 {
        self.size
    }

    fn give_back(&mut self, mut start: u64, mut len: u64) {
        if let Some((&prev, &plen)) = self.free.range(..start).next_back() {
            if prev + plen == start {
                self.free.remove(&prev);
                start = prev;
                len += plen;
            }
        }
        if let Some(next_len) = self.free.remove(&(start + len)) {
            len += next_len;
        }
        self.free.insert(start, len);
    }
}

impl KernelMemory for PageAllocator {
    /// One region for every VM: `vm` is not looked at.
    fn alloc<M>(&mut self, mem: &M, _vm: VmKey, size: u64) -> Result<Arc<Bo>, KernelMemoryError>
    where
        M: GuestMemoryBackend + ?Sized,
    {
        if size == 0 || size % PAGE_SIZE != 0 {
            return Err(KernelMemoryError::InvalidSize(size));
        }
        let (start, len) = self
            .free
            .iter()
            .find(|(_, &len)| len >= size)
            .map(|(&s, &l)| (s, l))
            .ok_or(KernelMemoryError::Exhausted(size))?;
        let bo = Bo::new(
            [GuestRange::new(start, size)],
            mem,
            None,
            &BoLimits::default(),
        )
        .map_err(KernelMemoryError::Bo)?;
        self.free.remove(&start);
        if len > size {
            self.free.insert(start + size, len - size);
        }
        self.used += size;
        Ok(Arc::new(bo))
    }

    fn free(&mut self, bo: Arc<Bo>) {
        for r in bo.ranges() {
            self.used = self.used.saturating_sub(r.len);
            self.give_back(r.addr.0, r.len);
        }
    }
}

/// Writes zeros over the whole backing of `bo`.
pub(crate) fn zero_bo<M>(mem: &M, bo: &Bo) -> Result<(), KernelMemoryError>
where
    M: GuestMemoryBackend + ?Sized,
{
    const ZEROS: [u8; 4096] = [0; 4096];
    for range in bo.ranges() {
        let mut done = 0u64;
        while done < range.len {
            let n = (range.len - done).min(ZEROS.len() as u64);
            mem.write_slice(
                &ZEROS[..n as usize],
                vm_memory::GuestAddress(range.addr.0 + done),
            )
            .map_err(|_| KernelMemoryError::Inaccessible)?;
            done += n;
        }
    }
    Ok(())
}

/// One kernel object: zeroed memory mapped in the kernel window of a VM.
#[derive(Debug)]
pub struct KernelObject {
    bo: Arc<Bo>,
    va: u64,
    size: u64,
    /// Mapped by [`KernelObject::create`] (not by the allocator), so
    /// unmapped by [`KernelObject::release`].
    own_mapping: bool,
}

impl KernelObject {
    /// Allocates `size` bytes (rounded up to pages), zeroes them and, unless
    /// the allocator's memory is mapped already
    /// ([`KernelMemory::mapped_at`]), maps them NOEXEC | UNCACHED at a free
    /// VA of `vm`'s kernel window. On failure nothing stays allocated or
    /// mapped.
    pub fn create<M, K>(kmem: &mut K, vm: &mut GpuVm, mem: &M, size: u64) -> Result<Self, FwError>
    where
        M: GuestMemoryBackend + ?Sized,
        K: KernelMemory,
    {
        let size = size
            .checked_add(PAGE_SIZE - 1)
            .map(|s| s & !(PAGE_SIZE - 1))
            .filter(|&s| s != 0)
            .ok_or(KernelMemoryError::InvalidSize(size))?;
        let bo = kmem.alloc(mem, vm.key(), size)?;
        if let Err(e) = zero_bo(mem, &bo) {
            kmem.free(bo);
            return Err(e.into());
        }
        if let Some(va) = kmem.mapped_at(&bo) {
            return Ok(Self {
                bo,
                va,
                size,
                own_mapping: false,
            });
        }
        match vm.map_kernel_auto(&bo, 0, size, MapFlags::NOEXEC | MapFlags::UNCACHED) {
            Ok(va) => Ok(Self {
                bo,
                va,
                size,
                own_mapping: true,
            }),
            Err(e) => {
                kmem.free(bo);
                Err(e.into())
            }
        }
    }

    /// GPU VA of the first byte.
    pub fn va(&self) -> u64 {
        self.va
    }

    /// Size in bytes (whole pages).
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Unmaps the object from `vm` (if it mapped itself) and gives its
    /// memory back.
    pub fn release<K: KernelMemory>(self, kmem: &mut K, vm: &mut GpuVm) {
        if self.own_mapping {
            // The range was mapped by `create`; unmapping a kernel range
            // only fails for malformed ranges.
            let _ = vm.unmap_kernel(self.va, self.size);
        }
        kmem.free(self.bo);
    }
}
