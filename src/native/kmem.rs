//! Kernel memory of a native context: the BOs the guest gave with
//! VM_ADD_KERNEL_MEMORY, from which the engine carves ring buffers, queue
//! sequence objects and tiler heaps (§6 of `docs/protocol.md`).
//!
//! The pool is shared between the context (which adds BOs) and its engine
//! thread (which allocates), behind a mutex. Allocation is first-fit at
//! 4 KiB granularity inside one BO; an object never spans two BOs.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use vm_memory::GuestMemoryBackend;

use crate::gpu::firmware::{KernelMemory, KernelMemoryError};
use crate::gpu::mmu::{Bo, BoLimits, GuestRange, PAGE_SIZE};

#[derive(Debug)]
struct PoolBo {
    ranges: Vec<GuestRange>,
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
    /// Adds a BO's pages (4 KiB aligned ranges) to the pool.
    pub fn add(&mut self, ranges: Vec<GuestRange>, size: u64) {
        self.bos.push(PoolBo {
            ranges,
            free: BTreeMap::from([(0, size)]),
        });
        self.size = self.size.saturating_add(size);
    }

    /// Bytes in the pool.
    pub fn size(&self) -> u64 {
        self.size
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
    fn alloc<M>(&mut self, mem: &M, size: u64) -> Result<Arc<Bo>, KernelMemoryError>
    where
        M: GuestMemoryBackend + ?Sized,
    {
        if size == 0 || size % PAGE_SIZE != 0 {
            return Err(KernelMemoryError::InvalidSize(size));
        }
        let mut pool = self.lock();
        let found = pool.bos.iter().enumerate().find_map(|(i, b)| {
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
        assert!(pool.alloc(&mem, 4096).is_err(), "empty pool");
        // One BO of two discontiguous 8 KiB pieces.
        pool.lock().add(
            vec![
                GuestRange::new(0x1_0000, 0x2000),
                GuestRange::new(0x8_0000, 0x2000),
            ],
            0x4000,
        );
        let a = pool.alloc(&mem, 0x3000).unwrap();
        assert_eq!(
            a.ranges(),
            &[
                GuestRange::new(0x1_0000, 0x2000),
                GuestRange::new(0x8_0000, 0x1000)
            ]
        );
        assert!(pool.alloc(&mem, 0x2000).is_err(), "no room left");
        let b = pool.alloc(&mem, 0x1000).unwrap();
        assert_eq!(b.ranges(), &[GuestRange::new(0x8_1000, 0x1000)]);
        assert_eq!(pool.lock().free_bytes(), 0);
        pool.free(a);
        pool.free(b);
        assert_eq!(pool.lock().free_bytes(), 0x4000);
        assert_eq!(pool.alloc(&mem, 0x4000).unwrap().size(), 0x4000);
    }
}
