//! GPU memory accesses through the MMU: what the command-stream interpreter
//! and the firmware model use to touch guest memory by GPU VA.
//!
//! Every access is translated by [`GpuVm::translate`] (translation cache,
//! permission check) and then performed through vm-memory on the guest's
//! memory, bounds-checked; there are no raw pointers. A guest-physical
//! address that guest memory does not (or no longer) back gives a bus fault.
//!
//! - Plain accesses (`read_u32`, `write_u64`, `read_bytes`, ...) may be
//!   unaligned and may cross page boundaries; each page is translated on its
//!   own, so a range that runs into an unmapped page faults at the first
//!   byte of that page. They are not atomic: a write that faults halfway has
//!   written the pages before the fault, as on the hardware.
//! - Sync-object accesses (`atomic_*`) must be naturally aligned (4 bytes
//!   for 32-bit words, 8 for 64-bit ones); a misaligned one is refused with
//!   [`FaultKind::Alignment`] before translation. They are real host atomic
//!   operations on the guest page (vm-memory hands out the `AtomicU32` /
//!   `AtomicU64` that lives there), so a guest CPU polling the word
//!   concurrently sees either the old or the new value and no update is
//!   lost. Read-modify-writes use acquire-release ordering, loads acquire
//!   and stores release. They need write permission (the access type is
//!   ATOMIC), except loads, which are reads.
//!
//! Little-endian byte order throughout, as the GPU's.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use vm_memory::bitmap::Bitmap;
use vm_memory::{AtomicInteger, GuestAddress, GuestMemoryBackend, VolatileMemory};

use super::fault::{Access, Fault, FaultKind};
use super::vm::GpuVm;

/// Bytes `[0, n)` of the page holding `va` that are left from `va`.
fn page_left(va: u64) -> u64 {
    super::PAGE_SIZE - (va & (super::PAGE_SIZE - 1))
}

impl GpuVm {
    /// Translate `va` for `access`, with the cache, limited to the current
    /// 4 KiB page.
    fn page_gpa(&mut self, va: u64, access: Access) -> Result<(GuestAddress, u64), Fault> {
        let t = self.translate(va, access)?;
        Ok((t.gpa, t.contiguous.min(page_left(va))))
    }

    /// Calls `f(guest_address, range_in_buffer)` for each page-contiguous
    /// piece of `[va, va + len)`, translating each page for `access`.
    fn for_each_piece(
        &mut self,
        va: u64,
        len: usize,
        access: Access,
        mut f: impl FnMut(GuestAddress, std::ops::Range<usize>) -> Result<(), ()>,
    ) -> Result<(), Fault> {
        let mut done = 0usize;
        while done < len {
            let cur = va.checked_add(done as u64).ok_or(Fault::new(
                FaultKind::AddressSizeIn,
                u64::MAX,
                access,
            ))?;
            let (gpa, avail) = self.page_gpa(cur, access)?;
            let n = (len - done).min(avail as usize);
            f(gpa, done..done + n).map_err(|()| Fault::new(FaultKind::Bus, cur, access))?;
            done += n;
        }
        Ok(())
    }

    /// Read `buf.len()` bytes at `va`.
    pub fn read_bytes<M>(&mut self, mem: &M, va: u64, buf: &mut [u8]) -> Result<(), Fault>
    where
        M: GuestMemoryBackend + ?Sized,
    {
        self.for_each_piece(va, buf.len(), Access::Read, |gpa, r| {
            let chunk = buf.get_mut(r).ok_or(())?;
            crate::guest_bytes::read(mem, gpa, chunk).map_err(|_| ())
        })
    }

    /// Write `buf` at `va`.
    pub fn write_bytes<M>(&mut self, mem: &M, va: u64, buf: &[u8]) -> Result<(), Fault>
    where
        M: GuestMemoryBackend + ?Sized,
    {
        self.for_each_piece(va, buf.len(), Access::Write, |gpa, r| {
            let chunk = buf.get(r).ok_or(())?;
            crate::guest_bytes::write(mem, gpa, chunk).map_err(|_| ())
        })
    }

    /// Read a little-endian `u32` at `va` (any alignment).
    pub fn read_u32<M>(&mut self, mem: &M, va: u64) -> Result<u32, Fault>
    where
        M: GuestMemoryBackend + ?Sized,
    {
        let mut b = [0u8; 4];
        self.read_bytes(mem, va, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    /// Read a little-endian `u64` at `va` (any alignment).
    pub fn read_u64<M>(&mut self, mem: &M, va: u64) -> Result<u64, Fault>
    where
        M: GuestMemoryBackend + ?Sized,
    {
        let mut b = [0u8; 8];
        self.read_bytes(mem, va, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    /// Write a little-endian `u32` at `va` (any alignment).
    pub fn write_u32<M>(&mut self, mem: &M, va: u64, value: u32) -> Result<(), Fault>
    where
        M: GuestMemoryBackend + ?Sized,
    {
        self.write_bytes(mem, va, &value.to_le_bytes())
    }

    /// Write a little-endian `u64` at `va` (any alignment).
    pub fn write_u64<M>(&mut self, mem: &M, va: u64, value: u64) -> Result<(), Fault>
    where
        M: GuestMemoryBackend + ?Sized,
    {
        self.write_bytes(mem, va, &value.to_le_bytes())
    }

    /// Check that `[va, va+len)` is entirely mapped with the permission
    /// `access` needs, without touching memory (for validating what a job
    /// points at, e.g. executable shader code). Costs one translation per
    /// leaf (page or block) of the range.
    pub fn check_access(&mut self, va: u64, len: u64, access: Access) -> Result<(), Fault> {
        let end = va
            .checked_add(len)
            .ok_or(Fault::new(FaultKind::AddressSizeIn, va, access))?;
        let mut cur = va;
        while cur < end {
            let t = self.translate(cur, access)?;
            cur = cur.saturating_add(t.contiguous);
        }
        Ok(())
    }

    /// Run `f` on the host atomic that backs the naturally aligned word at
    /// `va`, after translating it for `access`.
    fn with_atomic<M, A, R>(
        &mut self,
        mem: &M,
        va: u64,
        access: Access,
        f: impl FnOnce(&A) -> R,
    ) -> Result<R, Fault>
    where
        M: GuestMemoryBackend + ?Sized,
        A: AtomicInteger,
    {
        let size = std::mem::size_of::<A>();
        if va % size as u64 != 0 {
            return Err(Fault::new(FaultKind::Alignment, va, access));
        }
        let bus = Fault::new(FaultKind::Bus, va, access);
        let t = self.translate(va, access)?;
        // An aligned word never crosses a page, so one slice holds it.
        let slice = mem.get_slice(t.gpa, size).map_err(|_| bus)?;
        let atomic = slice.get_atomic_ref::<A>(0).map_err(|_| bus)?;
        let r = f(atomic);
        if access.writes() {
            slice.bitmap().mark_dirty(0, size);
        }
        Ok(r)
    }

    /// A SYNC_ADD/SET on the sync object at `va`: a naturally aligned
    /// value word (64-bit if `is_64`) and the 32-bit status word right
    /// after it. The status word gets `status` first, then `op` updates
    /// the value word, so a reader who sees the new value also sees its
    /// status. Returns the value word as the update left it.
    ///
    /// An object inside one page and one memory region costs one
    /// translation; otherwise each word is accessed on its own. Either way
    /// a fault on the value word comes before the status word is touched.
    pub fn sync_object_update<M>(
        &mut self,
        mem: &M,
        va: u64,
        is_64: bool,
        op: SyncWordOp,
        status: u32,
    ) -> Result<u64, Fault>
    where
        M: GuestMemoryBackend + ?Sized,
    {
        let size: u64 = if is_64 { 8 } else { 4 };
        let access = Access::Atomic;
        if va % size != 0 {
            return Err(Fault::new(FaultKind::Alignment, va, access));
        }
        let t = self.translate(va, access)?;
        let len = (size + 4) as usize;
        if page_left(va) >= size + 4 {
            if let Ok(slice) = mem.get_slice(t.gpa, len) {
                if let Ok(s) = slice.get_atomic_ref::<AtomicU32>(size as usize) {
                    let left = if is_64 {
                        slice.get_atomic_ref::<AtomicU64>(0).ok().map(|a| {
                            store_u32(s, status);
                            op.apply_u64(a)
                        })
                    } else {
                        slice.get_atomic_ref::<AtomicU32>(0).ok().map(|a| {
                            store_u32(s, status);
                            u64::from(op.apply_u32(a))
                        })
                    };
                    if let Some(v) = left {
                        slice.bitmap().mark_dirty(0, len);
                        return Ok(v);
                    }
                }
            }
        }
        let status_va =
            va.checked_add(size)
                .ok_or(Fault::new(FaultKind::AddressSizeIn, va, access))?;
        self.atomic_store_u32(mem, status_va, status)?;
        if is_64 {
            self.with_atomic(mem, va, access, |a: &AtomicU64| op.apply_u64(a))
        } else {
            self.with_atomic(mem, va, access, |a: &AtomicU32| u64::from(op.apply_u32(a)))
        }
    }

    /// Atomically load the 32-bit sync word at `va` (4-byte aligned).
    pub fn atomic_load_u32<M>(&mut self, mem: &M, va: u64) -> Result<u32, Fault>
    where
        M: GuestMemoryBackend + ?Sized,
    {
        self.with_atomic(mem, va, Access::Read, |a: &AtomicU32| {
            u32::from_le(a.load(Ordering::Acquire))
        })
    }

    /// Atomically load the 64-bit sync word at `va` (8-byte aligned).
    pub fn atomic_load_u64<M>(&mut self, mem: &M, va: u64) -> Result<u64, Fault>
    where
        M: GuestMemoryBackend + ?Sized,
    {
        self.with_atomic(mem, va, Access::Read, |a: &AtomicU64| {
            u64::from_le(a.load(Ordering::Acquire))
        })
    }

    /// Atomically store the 32-bit sync word at `va` (SYNC_SET32).
    pub fn atomic_store_u32<M>(&mut self, mem: &M, va: u64, value: u32) -> Result<(), Fault>
    where
        M: GuestMemoryBackend + ?Sized,
    {
        self.with_atomic(mem, va, Access::Atomic, |a: &AtomicU32| store_u32(a, value))
    }

    /// Atomically store the 64-bit sync word at `va` (SYNC_SET64).
    pub fn atomic_store_u64<M>(&mut self, mem: &M, va: u64, value: u64) -> Result<(), Fault>
    where
        M: GuestMemoryBackend + ?Sized,
    {
        self.with_atomic(mem, va, Access::Atomic, |a: &AtomicU64| store_u64(a, value))
    }

    /// Atomically add `value` (wrapping) to the 32-bit sync word at `va`
    /// (SYNC_ADD32); returns the previous value.
    pub fn atomic_add_u32<M>(&mut self, mem: &M, va: u64, value: u32) -> Result<u32, Fault>
    where
        M: GuestMemoryBackend + ?Sized,
    {
        self.with_atomic(mem, va, Access::Atomic, |a: &AtomicU32| add_u32(a, value))
    }

    /// Atomically add `value` (wrapping) to the 64-bit sync word at `va`
    /// (SYNC_ADD64); returns the previous value.
    pub fn atomic_add_u64<M>(&mut self, mem: &M, va: u64, value: u64) -> Result<u64, Fault>
    where
        M: GuestMemoryBackend + ?Sized,
    {
        self.with_atomic(mem, va, Access::Atomic, |a: &AtomicU64| add_u64(a, value))
    }

    /// Atomically replace the 32-bit sync word at `va` with `new` if it
    /// holds `current`. `Ok(Ok(previous))` on success, `Ok(Err(actual))`
    /// when the word held something else.
    pub fn atomic_compare_exchange_u32<M>(
        &mut self,
        mem: &M,
        va: u64,
        current: u32,
        new: u32,
    ) -> Result<Result<u32, u32>, Fault>
    where
        M: GuestMemoryBackend + ?Sized,
    {
        self.with_atomic(mem, va, Access::Atomic, |a: &AtomicU32| {
            a.compare_exchange(
                current.to_le(),
                new.to_le(),
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .map(u32::from_le)
            .map_err(u32::from_le)
        })
    }

    /// Atomically replace the 64-bit sync word at `va` with `new` if it
    /// holds `current`. `Ok(Ok(previous))` on success, `Ok(Err(actual))`
    /// when the word held something else.
    pub fn atomic_compare_exchange_u64<M>(
        &mut self,
        mem: &M,
        va: u64,
        current: u64,
        new: u64,
    ) -> Result<Result<u64, u64>, Fault>
    where
        M: GuestMemoryBackend + ?Sized,
    {
        self.with_atomic(mem, va, Access::Atomic, |a: &AtomicU64| {
            a.compare_exchange(
                current.to_le(),
                new.to_le(),
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .map(u64::from_le)
            .map_err(u64::from_le)
        })
    }
}

/// How a SYNC_ADD/SET changes a sync object's value word (the value is
/// truncated to 32 bits for a 32-bit object).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncWordOp {
    /// Add (wrapping).
    Add(u64),
    /// Replace.
    Set(u64),
}

impl SyncWordOp {
    /// Applies the update to a 64-bit word; returns the new value.
    fn apply_u64(self, a: &AtomicU64) -> u64 {
        match self {
            SyncWordOp::Add(v) => add_u64(a, v).wrapping_add(v),
            SyncWordOp::Set(v) => {
                store_u64(a, v);
                v
            }
        }
    }

    /// Applies the update to a 32-bit word; returns the new value.
    fn apply_u32(self, a: &AtomicU32) -> u32 {
        match self {
            SyncWordOp::Add(v) => add_u32(a, v as u32).wrapping_add(v as u32),
            SyncWordOp::Set(v) => {
                store_u32(a, v as u32);
                v as u32
            }
        }
    }
}

/// Adds `value` (wrapping) to a little-endian word; returns the old value.
fn add_u32(a: &AtomicU32, value: u32) -> u32 {
    if cfg!(target_endian = "little") {
        a.fetch_add(value, Ordering::AcqRel)
    } else {
        let old = a
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                Some(u32::from_le(v).wrapping_add(value).to_le())
            })
            .unwrap_or_else(|v| v);
        u32::from_le(old)
    }
}

/// Adds `value` (wrapping) to a little-endian word; returns the old value.
fn add_u64(a: &AtomicU64, value: u64) -> u64 {
    if cfg!(target_endian = "little") {
        a.fetch_add(value, Ordering::AcqRel)
    } else {
        let old = a
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                Some(u64::from_le(v).wrapping_add(value).to_le())
            })
            .unwrap_or_else(|v| v);
        u64::from_le(old)
    }
}

fn store_u32(a: &AtomicU32, value: u32) {
    a.store(value.to_le(), Ordering::Release)
}

fn store_u64(a: &AtomicU64, value: u64) {
    a.store(value.to_le(), Ordering::Release)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::mmu::{BindOp, Bo, BoLimits, GuestRange, MapFlags, VmLimits, PAGE_SIZE};
    use std::sync::Arc;
    use vm_memory::Bytes;
    use vm_memory::GuestMemoryMmap;

    const P: u64 = PAGE_SIZE;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap()
    }

    /// A VM with pages 0 and 1 of VA mapped to two distant, non-contiguous
    /// guest pages (0x5000 then 0x2000), page 2 unmapped, page 3 read-only.
    fn setup(mem: &GuestMemoryMmap) -> GpuVm {
        let mut vm = GpuVm::new(0, VmLimits::default()).unwrap();
        let bo = Arc::new(
            Bo::new(
                [GuestRange::new(0x5000, P), GuestRange::new(0x2000, P)],
                mem,
                None,
                &BoLimits::default(),
            )
            .unwrap(),
        );
        vm.bind(&[
            BindOp::Map {
                bo: bo.clone(),
                bo_offset: 0,
                va: 0,
                size: 2 * P,
                flags: MapFlags::EMPTY,
            },
            BindOp::Map {
                bo,
                bo_offset: 0,
                va: 3 * P,
                size: P,
                flags: MapFlags::READONLY,
            },
        ])
        .unwrap();
        vm
    }

    #[test]
    fn cross_page_bytes_land_in_the_right_guest_pages() {
        let mem = mem();
        let mut vm = setup(&mem);
        let data: Vec<u8> = (0..64u8).collect();
        vm.write_bytes(&mem, P - 16, &data).unwrap();
        let mut head = [0u8; 16];
        mem.read_slice(&mut head, GuestAddress(0x5000 + P - 16))
            .unwrap();
        assert_eq!(&head[..], &data[..16]);
        let mut tail = [0u8; 48];
        mem.read_slice(&mut tail, GuestAddress(0x2000)).unwrap();
        assert_eq!(&tail[..], &data[16..]);
        let mut back = [0u8; 64];
        vm.read_bytes(&mem, P - 16, &mut back).unwrap();
        assert_eq!(&back[..], &data[..]);
        // Scalars straddling the page boundary.
        vm.write_u64(&mem, P - 4, 0x1122_3344_5566_7788).unwrap();
        assert_eq!(vm.read_u64(&mem, P - 4).unwrap(), 0x1122_3344_5566_7788);
        assert_eq!(vm.read_u32(&mem, P - 4).unwrap(), 0x5566_7788);
        let lo: u32 = mem.read_obj(GuestAddress(0x5000 + P - 4)).unwrap();
        assert_eq!(lo, 0x5566_7788u32.to_le());
        vm.write_u32(&mem, 8, 0xdead_beef).unwrap();
        assert_eq!(
            mem.read_obj::<u32>(GuestAddress(0x5008)).unwrap(),
            0xdead_beef
        );
        // Empty accesses do nothing, even unmapped.
        vm.read_bytes(&mem, 2 * P, &mut []).unwrap();
    }

    #[test]
    fn accesses_fault_at_the_first_bad_page() {
        let mem = mem();
        let mut vm = setup(&mem);
        let mut buf = [0u8; 32];
        let f = vm.read_bytes(&mem, 2 * P - 16, &mut buf).unwrap_err();
        assert_eq!(f.va, 2 * P);
        assert_eq!(f.exception_code, 0xc3);
        assert_eq!(f.access, Access::Read);
        let f = vm.write_u32(&mem, 3 * P, 1).unwrap_err();
        assert_eq!((f.exception_code, f.access), (0xcb, Access::Write));
        assert_eq!(
            vm.read_u32(&mem, 3 * P).unwrap(),
            mem.read_obj::<u32>(GuestAddress(0x5000)).unwrap()
        );
        let f = vm.read_u32(&mem, u64::MAX - 1).unwrap_err();
        assert_eq!(f.kind, FaultKind::AddressSizeIn);
        assert!(vm.check_access(0, 2 * P, Access::Write).is_ok());
        assert_eq!(
            vm.check_access(0, 3 * P, Access::Read).unwrap_err().va,
            2 * P
        );
        assert_eq!(
            vm.check_access(3 * P, 8, Access::Write)
                .unwrap_err()
                .exception_code,
            0xcb
        );
        assert!(vm.check_access(u64::MAX, 2, Access::Read).is_err());
    }

    #[test]
    fn memory_gone_from_under_a_mapping_is_a_bus_fault() {
        let big = mem();
        let mut vm = setup(&big);
        let small = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x3000)]).unwrap();
        let f = vm.read_u32(&small, 0).unwrap_err();
        assert_eq!((f.kind, f.exception_code), (FaultKind::Bus, 0x80));
        let f = vm.atomic_add_u32(&small, 0, 1).unwrap_err();
        assert_eq!(f.kind, FaultKind::Bus);
        assert!(vm.read_u32(&small, P).is_ok());
    }

    #[test]
    fn sync_atomics() {
        let mem = mem();
        let mut vm = setup(&mem);
        vm.atomic_store_u64(&mem, P, 41).unwrap();
        assert_eq!(vm.atomic_add_u64(&mem, P, 1).unwrap(), 41);
        assert_eq!(vm.atomic_load_u64(&mem, P).unwrap(), 42);
        assert_eq!(
            mem.read_obj::<u64>(GuestAddress(0x2000)).unwrap(),
            42u64.to_le()
        );
        assert_eq!(vm.atomic_add_u64(&mem, P, u64::MAX).unwrap(), 42);
        assert_eq!(vm.atomic_load_u64(&mem, P).unwrap(), 41);
        vm.atomic_store_u32(&mem, 8, u32::MAX).unwrap();
        assert_eq!(vm.atomic_add_u32(&mem, 8, 2).unwrap(), u32::MAX);
        assert_eq!(vm.atomic_load_u32(&mem, 8).unwrap(), 1);
        assert_eq!(
            vm.atomic_compare_exchange_u32(&mem, 8, 1, 7).unwrap(),
            Ok(1)
        );
        assert_eq!(
            vm.atomic_compare_exchange_u32(&mem, 8, 1, 9).unwrap(),
            Err(7)
        );
        assert_eq!(
            vm.atomic_compare_exchange_u64(&mem, P, 41, 5).unwrap(),
            Ok(41)
        );
        assert_eq!(
            vm.atomic_compare_exchange_u64(&mem, P, 41, 6).unwrap(),
            Err(5)
        );
        assert_eq!(vm.read_u64(&mem, P).unwrap(), 5);
    }

    #[test]
    fn sync_object_updates_in_a_page_and_across_pages() {
        let mem = mem();
        let mut vm = setup(&mem);
        // In one page: the status word, then the value.
        assert_eq!(
            vm.sync_object_update(&mem, 16, true, SyncWordOp::Add(5), 1)
                .unwrap(),
            5
        );
        assert_eq!(vm.read_u64(&mem, 16).unwrap(), 5);
        assert_eq!(vm.read_u32(&mem, 24).unwrap(), 1);
        assert_eq!(
            vm.sync_object_update(&mem, 16, true, SyncWordOp::Add(u64::MAX), 0)
                .unwrap(),
            4
        );
        // A 32-bit object keeps 32 bits of the operand.
        vm.write_u32(&mem, 40, 7).unwrap();
        assert_eq!(
            vm.sync_object_update(&mem, 32, false, SyncWordOp::Add((1 << 32) | 2), 3)
                .unwrap(),
            2
        );
        assert_eq!(vm.read_u32(&mem, 32).unwrap(), 2);
        assert_eq!(vm.read_u32(&mem, 36).unwrap(), 3);
        assert_eq!(vm.read_u32(&mem, 40).unwrap(), 7, "nothing past the object");
        // The status word on the next page, which lives elsewhere in guest
        // memory.
        vm.write_u32(&mem, P, 0xdead).unwrap();
        assert_eq!(
            vm.sync_object_update(&mem, P - 8, true, SyncWordOp::Set(9), 0)
                .unwrap(),
            9
        );
        assert_eq!(vm.read_u64(&mem, P - 8).unwrap(), 9);
        assert_eq!(vm.read_u32(&mem, P).unwrap(), 0);
        assert_eq!(
            mem.read_obj::<u32>(GuestAddress(0x2000)).unwrap(),
            0,
            "status at the second page's guest address"
        );
        // The status word unmapped: the value is not touched.
        vm.write_u64(&mem, 2 * P - 8, 3).unwrap();
        let f = vm
            .sync_object_update(&mem, 2 * P - 8, true, SyncWordOp::Set(4), 0)
            .unwrap_err();
        assert_eq!(f.va, 2 * P);
        assert_eq!(vm.read_u64(&mem, 2 * P - 8).unwrap(), 3);
        // Misaligned, and read-only (VA 3P maps the first page again).
        let f = vm
            .sync_object_update(&mem, 4, true, SyncWordOp::Set(1), 0)
            .unwrap_err();
        assert_eq!(f.kind, FaultKind::Alignment);
        assert!(vm
            .sync_object_update(&mem, 3 * P + 16, true, SyncWordOp::Set(1), 0)
            .is_err());
        assert_eq!(vm.read_u64(&mem, 3 * P + 16).unwrap(), 4);
    }

    #[test]
    fn sync_atomics_fault_when_misaligned_or_forbidden() {
        let mem = mem();
        let mut vm = setup(&mem);
        let f = vm.atomic_add_u64(&mem, 4, 1).unwrap_err();
        assert_eq!(
            (f.kind, f.exception_code, f.va),
            (FaultKind::Alignment, 0x58, 4)
        );
        assert_eq!(
            vm.atomic_load_u32(&mem, 2).unwrap_err().kind,
            FaultKind::Alignment
        );
        assert_eq!(
            vm.atomic_store_u64(&mem, P + 12, 0).unwrap_err().kind,
            FaultKind::Alignment
        );
        // Read-only: loads work, read-modify-writes fault with ATOMIC access.
        assert!(vm.atomic_load_u64(&mem, 3 * P).is_ok());
        let f = vm.atomic_add_u32(&mem, 3 * P, 1).unwrap_err();
        assert_eq!((f.exception_code, f.access), (0xcb, Access::Atomic));
        assert_eq!(f.fault_status(), 0xcb);
        let f = vm.atomic_load_u64(&mem, 2 * P).unwrap_err();
        assert_eq!(f.kind, FaultKind::Translation { level: 3 });
    }

    #[test]
    fn concurrent_adds_are_not_lost() {
        let mem = mem();
        let mut vm = setup(&mem);
        // Another agent (the "guest CPU") hammers the same word directly.
        let other = std::thread::scope(|s| {
            let h = s.spawn(|| {
                let slice = mem.get_slice(GuestAddress(0x5000 + 64), 8).unwrap();
                let a = slice.get_atomic_ref::<AtomicU64>(0).unwrap();
                for _ in 0..10_000 {
                    a.fetch_add(1, Ordering::AcqRel);
                }
            });
            for _ in 0..10_000 {
                vm.atomic_add_u64(&mem, 64, 1).unwrap();
            }
            h.join()
        });
        assert!(other.is_ok());
        assert_eq!(vm.atomic_load_u64(&mem, 64).unwrap(), 20_000);
    }
}
