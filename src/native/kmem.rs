//! Kernel memory of a native context: the BOs the guest gave with
//! VM_ADD_KERNEL_MEMORY, from which the engine carves ring buffers, queue
//! sequence objects and tiler heaps (§6 of `docs/protocol.md`).
//!
//! The pool is shared between the context (which adds BOs) and its engine
//! thread (which allocates), behind a mutex. Each BO belongs to the VM it
//! was given to, and an object of a VM comes from that VM's BOs only.
//! Allocation is first-fit at 4 KiB granularity inside one BO; an object
//! never spans two BOs.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use vm_memory::GuestMemoryBackend;

use crate::gpu::firmware::{KernelMemory, KernelMemoryError};
use crate::gpu::mmu::{Bo, BoLimits, GuestRange, VmKey, PAGE_SIZE};

#[derive(Debug)]
struct PoolBo {
    /// The VM it was given to.
    vm: VmKey,
    ranges: Vec<GuestRange>,
    size: u64,
    /// Revoked: nothing more is allocated from it or given back to it.
    dead: bool,
    /// Free extents: BO offset → length.
    free: BTreeMap<u64, u64>,
}

/// The pool state.
#[derive(Debug, Default)]
pub struct Pool {
    bos: Vec<PoolBo>,
    /// First guest address of an allocation → (BO index, offset, size).
    live: HashMap<u64, (usize, u64, u64)>,
    size: u64,
    used: u64,
}

impl Pool {
    /// Adds a BO's pages (4 KiB aligned ranges) to the pool of `vm`.
    pub fn add(&mut self, vm: VmKey, ranges: Vec<GuestRange>, size: u64) {
        self.bos.push(PoolBo {
            vm,
            ranges,
            size,
            dead: false,
            free: BTreeMap::from([(0, size)]),
        });
        self.size = self.size.saturating_add(size);
    }

    /// Bytes in the pool.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Bytes of `vm`'s BOs not allocated.
    pub fn free_bytes_of(&self, vm: VmKey) -> u64 {
        self.bos
            .iter()
            .filter(|b| b.vm == vm && !b.dead)
            .flat_map(|b| b.free.values())
            .fold(0u64, |a, &l| a.saturating_add(l))
    }

    /// The guest took back the BO over `ranges`: nothing is allocated from
    /// it any more, and its bytes leave the pool (objects still living in
    /// it are freed into nothing). Returns whether such a BO was found.
    pub fn revoke(&mut self, ranges: &[GuestRange]) -> bool {
        let Some(i) = self.bos.iter().position(|b| !b.dead && b.ranges == ranges) else {
            return false;
        };
        let b = &mut self.bos[i];
        b.dead = true;
        b.free.clear();
        let size = b.size;
        let live: u64 = self
            .live
            .values()
            .filter(|&&(idx, _, _)| idx == i)
            .map(|&(_, _, s)| s)
            .sum();
        self.used = self.used.saturating_sub(live);
        self.size = self.size.saturating_sub(size);
        true
    }

    /// Bytes not allocated.
    pub fn free_bytes(&self) -> u64 {
        self.size.saturating_sub(self.used)
    }
}

/// Sub-ranges `[off, off + len)` of a list of ranges.
fn slice_ranges(ranges: &[GuestRange], off: u64, len: u64) -> Vec<GuestRange> {
    let mut out = Vec::new();
    let mut pos = 0u64;
    let end = off.saturating_add(len);
    for r in ranges {
        let r_end = pos.saturating_add(r.len);
        let s = off.max(pos);
        let e = end.min(r_end);
        if s < e {
            out.push(GuestRange::new(r.addr.0 + (s - pos), e - s));
        }
        pos = r_end;
    }
    out
}

/// A cloneable handle on a context's kernel-memory pool.
#[derive(Debug, Clone, Default)]
pub struct SharedPool(pub Arc<Mutex<Pool>>);

impl SharedPool {
    /// Locks the pool.
    pub fn lock(&self) -> std::sync::MutexGuard<'_, Pool> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl KernelMemory for SharedPool {
    fn alloc<M>(&mut self, mem: &M, vm: VmKey, size: u64) -> Result<Arc<Bo>, KernelMemoryError>
    where
        M: GuestMemoryBackend + ?Sized,
    {
        if size == 0 || size % PAGE_SIZE != 0 {
            return Err(KernelMemoryError::InvalidSize(size));
        }
        let mut pool = self.lock();
        let found = pool.bos.iter().enumerate().find_map(|(i, b)| {
            if b.vm != vm || b.dead {
                return None;
            }
            b.free
                .iter()
                .find(|(_, &l)| l >= size)
                .map(|(&o, &l)| (i, o, l))
        });
        let (index, off, len) = found.ok_or(KernelMemoryError::Exhausted(size))?;
        let ranges = slice_ranges(&pool.bos[index].ranges, off, size);
        let bo = Bo::new(ranges, mem, None, &BoLimits::default()).map_err(KernelMemoryError::Bo)?;
        let first = bo.ranges().first().map(|r| r.addr.0).unwrap_or(0);
        let b = &mut pool.bos[index];
        b.free.remove(&off);
        if len > size {
            b.free.insert(off + size, len - size);
        }
        pool.live.insert(first, (index, off, size));
        pool.used += size;
        Ok(Arc::new(bo))
    }

    fn free(&mut self, bo: Arc<Bo>) {
        let Some(first) = bo.ranges().first().map(|r| r.addr.0) else {
            return;
        };
        let mut pool = self.lock();
        let Some((index, mut off, mut len)) = pool.live.remove(&first) else {
            return;
        };
        if pool.bos.get(index).is_none_or(|b| b.dead) {
            return;
        }
        pool.used = pool.used.saturating_sub(len);
        let Some(b) = pool.bos.get_mut(index) else {
            return;
        };
        if let Some((&p, &pl)) = b.free.range(..off).next_back() {
            if p + pl == off {
                b.free.remove(&p);
                off = p;
                len += pl;
            }
        }
        if let Some(nl) = b.free.remove(&(off + len)) {
            len += nl;
        }
        b.free.insert(off, len);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{GuestAddress, GuestMemoryMmap};

    #[test]
    fn allocates_inside_given_bos_and_frees() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let mut pool = SharedPool::default();
        let vm = VmKey::new_unique();
        assert!(pool.alloc(&mem, vm, 4096).is_err(), "empty pool");
        // One BO of two discontiguous 8 KiB pieces.
        pool.lock().add(
            vm,
            vec![
                GuestRange::new(0x1_0000, 0x2000),
                GuestRange::new(0x8_0000, 0x2000),
            ],
            0x4000,
        );
        let a = pool.alloc(&mem, vm, 0x3000).unwrap();
        assert_eq!(
            a.ranges(),
            &[
                GuestRange::new(0x1_0000, 0x2000),
                GuestRange::new(0x8_0000, 0x1000)
            ]
        );
        assert!(pool.alloc(&mem, vm, 0x2000).is_err(), "no room left");
        let b = pool.alloc(&mem, vm, 0x1000).unwrap();
        assert_eq!(b.ranges(), &[GuestRange::new(0x8_1000, 0x1000)]);
        assert_eq!(pool.lock().free_bytes(), 0);
        pool.free(a);
        pool.free(b);
        assert_eq!(pool.lock().free_bytes(), 0x4000);
        assert_eq!(pool.alloc(&mem, vm, 0x4000).unwrap().size(), 0x4000);
    }

    #[test]
    fn revoked_bo_leaves_the_pool() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let mut pool = SharedPool::default();
        let vm = VmKey::new_unique();
        let r1 = vec![GuestRange::new(0x1_0000, 0x2000)];
        let r2 = vec![GuestRange::new(0x4_0000, 0x2000)];
        pool.lock().add(vm, r1.clone(), 0x2000);
        pool.lock().add(vm, r2.clone(), 0x2000);
        let a = pool.alloc(&mem, vm, 0x1000).unwrap();
        assert_eq!(a.ranges(), &[GuestRange::new(0x1_0000, 0x1000)]);
        assert!(pool.lock().revoke(&r1));
        assert!(!pool.lock().revoke(&r1), "once");
        let (size, free) = {
            let p = pool.lock();
            (p.size(), p.free_bytes())
        };
        assert_eq!((size, free), (0x2000, 0x2000));
        // Freeing an object of the revoked BO gives nothing back to it.
        pool.free(a);
        assert_eq!(pool.lock().free_bytes(), 0x2000);
        let b = pool.alloc(&mem, vm, 0x2000).unwrap();
        assert_eq!(b.ranges(), &r2[..]);
        assert!(
            pool.alloc(&mem, vm, 0x1000).is_err(),
            "nothing from the revoked BO"
        );
    }

    #[test]
    fn objects_of_a_vm_come_from_its_bos() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let mut pool = SharedPool::default();
        let (a, b) = (VmKey::new_unique(), VmKey::new_unique());
        pool.lock()
            .add(a, vec![GuestRange::new(0x1_0000, 0x2000)], 0x2000);
        pool.lock()
            .add(b, vec![GuestRange::new(0x4_0000, 0x1000)], 0x1000);
        assert!(pool.alloc(&mem, b, 0x2000).is_err(), "not from A's memory");
        let x = pool.alloc(&mem, b, 0x1000).unwrap();
        assert_eq!(x.ranges(), &[GuestRange::new(0x4_0000, 0x1000)]);
        assert!(pool.alloc(&mem, b, 0x1000).is_err(), "B is full");
        assert_eq!(pool.lock().free_bytes_of(a), 0x2000);
        let y = pool.alloc(&mem, a, 0x1000).unwrap();
        assert_eq!(y.ranges(), &[GuestRange::new(0x1_0000, 0x1000)]);
        assert_eq!(pool.lock().free_bytes_of(a), 0x1000);
        assert_eq!(pool.lock().free_bytes_of(b), 0);
        pool.free(x);
        assert_eq!(pool.lock().free_bytes_of(b), 0x1000);
        assert!(
            pool.alloc(&mem, VmKey::new_unique(), 0x1000).is_err(),
            "a VM without memory"
        );
    }
}
