//! GPU VA → guest-physical translation, with a small translation cache.
//!
//! [`GpuVm::translate`] checks the VA width, looks the VA up in a
//! direct-mapped cache of [`TLB_ENTRIES`] leaves (indexed by the 4 KiB page
//! number), walks the page table on a miss, then checks the permission the
//! access needs. Cache entries are tagged with the page table's generation,
//! which every map and unmap bumps, so nothing stale survives a change:
//! translate, unmap, translate again gives a fault.
//!
//! A cache entry holds a whole leaf (a page or a 2 MiB block), so the
//! reported contiguous length runs to the end of the leaf.

use vm_memory::GuestAddress;

use super::fault::{Access, Fault, FaultKind};
use super::pagetable::{Leaf, MapFlags, PageTable};
use super::vm::GpuVm;
use super::PAGE_SHIFT;

/// Number of entries of the translation cache.
pub const TLB_ENTRIES: usize = 64;

/// The result of a successful translation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Translation {
    /// Guest-physical address of the VA.
    pub gpa: GuestAddress,
    /// Bytes from the VA to the end of its leaf (page or block); the guest
    /// range `[gpa, gpa+contiguous)` is mapped contiguously with the same
    /// permissions.
    pub contiguous: u64,
    /// Level of the leaf: 3 for a page, 2 for a block.
    pub level: u8,
    /// Permissions and attributes of the leaf.
    pub flags: MapFlags,
}

/// One cached leaf and the page-table generation it was read at.
#[derive(Clone, Copy, Debug)]
struct TlbEntry {
    leaf: Leaf,
    generation: u64,
}

/// A direct-mapped translation cache.
#[derive(Debug)]
pub(crate) struct Tlb {
    entries: [Option<TlbEntry>; TLB_ENTRIES],
    hits: u64,
    misses: u64,
}

impl Default for Tlb {
    fn default() -> Self {
        Self {
            entries: [None; TLB_ENTRIES],
            hits: 0,
            misses: 0,
        }
    }
}

impl Tlb {
    fn slot(va: u64) -> usize {
        ((va >> PAGE_SHIFT) as usize) % TLB_ENTRIES
    }

    /// The cached leaf covering `va`, if still current.
    fn lookup(&mut self, va: u64, generation: u64) -> Option<Leaf> {
        match self.entries[Self::slot(va)] {
            Some(e)
                if e.generation == generation
                    && va >= e.leaf.va_base
                    && va - e.leaf.va_base < e.leaf.size =>
            {
                self.hits += 1;
                Some(e.leaf)
            }
            _ => {
                self.misses += 1;
                None
            }
        }
    }

    fn insert(&mut self, va: u64, leaf: Leaf, generation: u64) {
        self.entries[Self::slot(va)] = Some(TlbEntry { leaf, generation });
    }
}

/// Check that `leaf` allows `access`.
fn check_permission(leaf: &Leaf, va: u64, access: Access) -> Result<(), Fault> {
    let denied = match access {
        Access::Read => false,
        Access::Write | Access::Atomic => leaf.flags.readonly(),
        Access::Execute => leaf.flags.noexec(),
    };
    if denied {
        Err(Fault::new(
            FaultKind::Permission { level: leaf.level },
            va,
            access,
        ))
    } else {
        Ok(())
    }
}

fn to_translation(leaf: &Leaf, va: u64) -> Translation {
    Translation {
        gpa: GuestAddress(leaf.gpa_of(va)),
        contiguous: leaf.va_base + leaf.size - va,
        level: leaf.level,
        flags: leaf.flags,
    }
}

/// Translate without a cache.
pub(crate) fn translate_uncached(
    pt: &PageTable,
    va: u64,
    access: Access,
) -> Result<Translation, Fault> {
    let leaf = pt.walk(va).map_err(|k| Fault::new(k, va, access))?;
    check_permission(&leaf, va, access)?;
    Ok(to_translation(&leaf, va))
}

impl GpuVm {
    /// Translate `va` for `access` through the translation cache.
    pub fn translate(&mut self, va: u64, access: Access) -> Result<Translation, Fault> {
        let (pt, tlb) = self.pt_and_tlb();
        let generation = pt.generation();
        let leaf = match tlb.lookup(va, generation) {
            Some(leaf) => leaf,
            None => {
                let leaf = pt.walk(va).map_err(|k| Fault::new(k, va, access))?;
                tlb.insert(va, leaf, generation);
                leaf
            }
        };
        check_permission(&leaf, va, access)?;
        Ok(to_translation(&leaf, va))
    }

    /// Translate `va` for `access` with a page-table walk, leaving the
    /// cache alone.
    pub fn translate_uncached(&self, va: u64, access: Access) -> Result<Translation, Fault> {
        translate_uncached(self.page_table(), va, access)
    }

    /// Translation-cache hits and misses so far.
    pub fn tlb_stats(&self) -> (u64, u64) {
        let tlb = self.tlb();
        (tlb.hits, tlb.misses)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::mmu::{BindOp, Bo, BoLimits, GuestRange, VmLimits, BLOCK_SIZE, PAGE_SIZE};
    use std::sync::Arc;
    use vm_memory::GuestMemoryMmap;

    const MIB: u64 = 1 << 20;

    fn setup() -> (GpuVm, Arc<Bo>) {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap();
        let vm = GpuVm::new(0, VmLimits::default()).unwrap();
        let bo = Arc::new(
            Bo::new(
                [GuestRange::new(4 * MIB, 4 * MIB)],
                &mem,
                None,
                &BoLimits::default(),
            )
            .unwrap(),
        );
        (vm, bo)
    }

    fn map(vm: &mut GpuVm, bo: &Arc<Bo>, off: u64, va: u64, size: u64, flags: MapFlags) {
        vm.bind(&[BindOp::Map {
            bo: bo.clone(),
            bo_offset: off,
            va,
            size,
            flags,
        }])
        .unwrap();
    }

    #[test]
    fn translation_faults_report_the_level() {
        let (mut vm, bo) = setup();
        let f = vm.translate(0x1000, Access::Read).unwrap_err();
        assert_eq!(f.kind, FaultKind::Translation { level: 0 });
        assert_eq!(f.exception_code, 0xc0);
        assert_eq!(f.va, 0x1000);
        map(&mut vm, &bo, 0, 1 << 30, PAGE_SIZE, MapFlags::EMPTY);
        assert_eq!(
            vm.translate(0, Access::Read).unwrap_err().exception_code,
            0xc1
        );
        assert_eq!(
            vm.translate((1 << 30) + 2 * MIB, Access::Read)
                .unwrap_err()
                .exception_code,
            0xc2
        );
        assert_eq!(
            vm.translate((1 << 30) + PAGE_SIZE, Access::Write)
                .unwrap_err()
                .exception_code,
            0xc3
        );
        let ok = vm.translate((1 << 30) + 12, Access::Write).unwrap();
        assert_eq!(ok.gpa, GuestAddress(4 * MIB + 12));
        assert_eq!(ok.contiguous, PAGE_SIZE - 12);
        assert_eq!(ok.level, 3);
    }

    #[test]
    fn address_size_fault_for_wide_va() {
        let (mut vm, _) = setup();
        for va in [1u64 << 48, u64::MAX, 0xffff_0000_0000_0000] {
            let f = vm.translate(va, Access::Read).unwrap_err();
            assert_eq!(f.kind, FaultKind::AddressSizeIn);
            assert_eq!(f.exception_code, 0xe0);
        }
    }

    #[test]
    fn permission_faults() {
        let (mut vm, bo) = setup();
        map(&mut vm, &bo, 0, 0, PAGE_SIZE, MapFlags::READONLY);
        map(&mut vm, &bo, 0, 2 * MIB, BLOCK_SIZE, MapFlags::NOEXEC);
        assert!(vm.translate(0, Access::Read).is_ok());
        assert!(vm.translate(0, Access::Execute).is_ok());
        let w = vm.translate(8, Access::Write).unwrap_err();
        assert_eq!(
            (w.kind, w.exception_code, w.access),
            (FaultKind::Permission { level: 3 }, 0xcb, Access::Write)
        );
        assert_eq!(
            vm.translate(8, Access::Atomic).unwrap_err().exception_code,
            0xcb
        );
        // The block: level-2 permission fault.
        let x = vm.translate(3 * MIB, Access::Execute).unwrap_err();
        assert_eq!(
            (x.kind, x.exception_code),
            (FaultKind::Permission { level: 2 }, 0xca)
        );
        let t = vm.translate(3 * MIB, Access::Write).unwrap();
        assert_eq!(t.level, 2);
        assert_eq!(t.contiguous, MIB);
        assert_eq!(t.gpa, GuestAddress(5 * MIB));
    }

    #[test]
    fn cache_is_invalidated_by_unmap_and_replace() {
        let (mut vm, bo) = setup();
        map(&mut vm, &bo, 0, 0, 2 * PAGE_SIZE, MapFlags::EMPTY);
        assert_eq!(
            vm.translate(0, Access::Read).unwrap().gpa,
            GuestAddress(4 * MIB)
        );
        assert_eq!(
            vm.translate(4, Access::Read).unwrap().gpa,
            GuestAddress(4 * MIB + 4)
        );
        let (hits, _) = vm.tlb_stats();
        assert!(hits >= 1);
        vm.bind(&[BindOp::Unmap {
            va: 0,
            size: PAGE_SIZE,
        }])
        .unwrap();
        assert_eq!(
            vm.translate(0, Access::Read).unwrap_err().kind,
            FaultKind::Translation { level: 3 }
        );
        // Replace the second page with another part of the BO, read-only.
        assert!(vm.translate(PAGE_SIZE, Access::Write).is_ok());
        map(
            &mut vm,
            &bo,
            8 * PAGE_SIZE,
            PAGE_SIZE,
            PAGE_SIZE,
            MapFlags::READONLY,
        );
        let t = vm.translate(PAGE_SIZE, Access::Read).unwrap();
        assert_eq!(t.gpa, GuestAddress(4 * MIB + 8 * PAGE_SIZE));
        assert!(vm.translate(PAGE_SIZE, Access::Write).is_err());
        assert_eq!(vm.translate_uncached(PAGE_SIZE, Access::Read).unwrap(), t);
    }
}
