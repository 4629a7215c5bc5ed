//! Kernel memory of a native context: the BOs the guest gave with
//! VM_ADD_KERNEL_MEMORY, from which the engine carves ring buffers, queue
//! sequence objects and tiler heaps (§6 of `docs/protocol.md`).
//!
//! The pool is shared between the context (which adds BOs) and its engine
//! thread (which allocates), behind a mutex. Each BO belongs to the VM it
//! was given to, is mapped as a whole in that VM's kernel window when it is
//! given, and an object of a VM comes from that VM's BOs only, at the VA
//! where its bytes are mapped. Allocation is first-fit at 4 KiB granularity
//! inside one BO; an object never spans two BOs. A BO leaves the pool when
//! the guest takes its memory back (revocation) or when its VM is gone
//! (destroyed and its last group with it).

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
    /// Where the whole BO is mapped in the VM's kernel window.
    va: u64,
    /// Free extents: BO offset → length.
    free: BTreeMap<u64, u64>,
}

/// The pool state.
#[derive(Debug, Default)]
pub struct Pool {
    /// The BOs given and not taken back, by pool id.
    bos: BTreeMap<u64, PoolBo>,
    next_id: u64,
    /// Live objects, by the address of their [`Bo`] (unique while the
    /// object lives): (pool id, offset, size).
    live: HashMap<usize, (u64, u64, u64)>,
    size: u64,
    used: u64,
}

impl Pool {
    /// Adds a BO's pages (4 KiB aligned ranges), mapped as a whole at `va`
    /// of `vm`'s kernel window, to the pool of `vm`; returns its pool id.
    pub fn add(&mut self, vm: VmKey, ranges: Vec<GuestRange>, size: u64, va: u64) -> u64 {
        self.next_id += 1;
        let id = self.next_id;
        self.bos.insert(
            id,
            PoolBo {
                vm,
                ranges,
                size,
                va,
                free: BTreeMap::from([(0, size)]),
            },
        );
        self.size = self.size.saturating_add(size);
        id
    }

    /// Whether the BO of pool id `id` is still kernel memory (neither its
    /// VM is gone nor was it revoked).
    pub fn holds(&self, id: u64) -> bool {
        self.bos.contains_key(&id)
    }

    /// Bytes in the pool.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Bytes of `vm`'s BOs not allocated.
    pub fn free_bytes_of(&self, vm: VmKey) -> u64 {
        self.bos
            .values()
            .filter(|b| b.vm == vm)
            .flat_map(|b| b.free.values())
            .fold(0u64, |a, &l| a.saturating_add(l))
    }

    /// Takes the BO of pool id `id` out: nothing is allocated from it any
    /// more and its bytes leave the pool (objects still living in it are
    /// freed into nothing). Returns whether it was there.
    pub fn remove(&mut self, id: u64) -> bool {
        let Some(b) = self.bos.remove(&id) else {
            return false;
        };
        let live: u64 = self
            .live
            .values()
            .filter(|&&(i, _, _)| i == id)
            .map(|&(_, _, s)| s)
            .sum();
        self.used = self.used.saturating_sub(live);
        self.size = self.size.saturating_sub(b.size);
        true
    }

    /// Takes every BO of `vm` out (the VM is gone).
    pub fn remove_vm(&mut self, vm: VmKey) {
        let ids: Vec<u64> = self
            .bos
            .iter()
            .filter(|(_, b)| b.vm == vm)
            .map(|(&i, _)| i)
            .collect();
        for id in ids {
            self.remove(id);
        }
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
        let found = pool.bos.iter().find_map(|(&id, b)| {
            if b.vm != vm {
                return None;
            }
            b.free
                .iter()
                .find(|(_, &l)| l >= size)
                .map(|(&o, &l)| (id, o, l))
        });
        let (id, off, len) = found.ok_or(KernelMemoryError::Exhausted(size))?;
        let Some(b) = pool.bos.get_mut(&id) else {
            return Err(KernelMemoryError::Exhausted(size));
        };
        let ranges = slice_ranges(&b.ranges, off, size);
        let bo = Arc::new(
            Bo::new(ranges, mem, None, &BoLimits::default()).map_err(KernelMemoryError::Bo)?,
        );
        b.free.remove(&off);
        if len > size {
            b.free.insert(off + size, len - size);
        }
        pool.live.insert(Arc::as_ptr(&bo) as usize, (id, off, size));
        pool.used += size;
        Ok(bo)
    }

    fn free(&mut self, bo: Arc<Bo>) {
        let mut pool = self.lock();
        let Some((id, mut off, mut len)) = pool.live.remove(&(Arc::as_ptr(&bo) as usize)) else {
            return;
        };
        // A BO taken out of the pool gets nothing back (its bytes already
        // left `used`).
        let Some(b) = pool.bos.get_mut(&id) else {
            return;
        };
        let freed = len;
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
        pool.used = pool.used.saturating_sub(freed);
    }

    fn mapped_at(&self, bo: &Bo) -> Option<u64> {
        let pool = self.lock();
        let &(id, off, _) = pool.live.get(&(bo as *const Bo as usize))?;
        pool.bos.get(&id).and_then(|b| b.va.checked_add(off))
    }

    fn vm_gone(&mut self, vm: VmKey) {
        self.lock().remove_vm(vm);
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
            0xff00_0000,
        );
        let a = pool.alloc(&mem, vm, 0x3000).unwrap();
        assert_eq!(pool.mapped_at(&a), Some(0xff00_0000));
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
        assert_eq!(pool.mapped_at(&b), Some(0xff00_3000), "BO VA + offset");
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
        let id1 = pool.lock().add(vm, r1.clone(), 0x2000, 0);
        let id2 = pool.lock().add(vm, r2.clone(), 0x2000, 0x2000);
        let a = pool.alloc(&mem, vm, 0x1000).unwrap();
        assert_eq!(a.ranges(), &[GuestRange::new(0x1_0000, 0x1000)]);
        assert!(pool.lock().remove(id1));
        assert!(!pool.lock().remove(id1), "once");
        let p = pool.lock();
        assert!(!p.holds(id1) && p.holds(id2));
        drop(p);
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
            .add(a, vec![GuestRange::new(0x1_0000, 0x2000)], 0x2000, 0);
        pool.lock()
            .add(b, vec![GuestRange::new(0x4_0000, 0x1000)], 0x1000, 0);
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

    #[test]
    fn a_gone_vm_takes_its_bos_out() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let mut pool = SharedPool::default();
        let (a, b) = (VmKey::new_unique(), VmKey::new_unique());
        let ia = pool
            .lock()
            .add(a, vec![GuestRange::new(0x1_0000, 0x2000)], 0x2000, 0);
        let ib = pool
            .lock()
            .add(b, vec![GuestRange::new(0x4_0000, 0x1000)], 0x1000, 0);
        let x = pool.alloc(&mem, a, 0x1000).unwrap();
        pool.free(x);
        pool.vm_gone(a);
        let p = pool.lock();
        assert!(!p.holds(ia) && p.holds(ib));
        assert_eq!((p.size(), p.free_bytes()), (0x1000, 0x1000));
        drop(p);
        assert!(pool.alloc(&mem, a, 0x1000).is_err(), "nothing left for A");
        assert!(pool.alloc(&mem, b, 0x1000).is_ok());
    }
}
