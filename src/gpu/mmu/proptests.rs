//! Property test of VM_BIND: random MAP / UNMAP sequences on a small VA
//! window, checked after every op against a deliberately naive model: a
//! list of mappings split by hand, and a page → (address, flags) map.
//! Both the mapping tree and the translation of every page must agree.

use std::collections::BTreeMap;
use std::sync::Arc;

use proptest::prelude::*;
use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::{
    Access, BindOp, Bo, BoLimits, GpuVm, GuestRange, MapFlags, VmLimits, BLOCK_SIZE, PAGE_SIZE,
};

/// Pages in the VA window the ops touch (8 MiB).
const WINDOW_PAGES: u64 = 2048;
/// Pages per 2 MiB block.
const BLOCK_PAGES: u64 = BLOCK_SIZE / PAGE_SIZE;

/// Backing ranges of the test BOs: a contiguous, block-aligned one and a
/// fragmented one whose pieces are scattered and out of order.
fn bo_ranges() -> [Vec<(u64, u64)>; 2] {
    let contiguous = vec![(2 << 20, 8 << 20)];
    let mut fragmented = Vec::new();
    let mut gpa = 15 << 20;
    for i in 0..48u64 {
        let pages = 1 + (i * 7) % 5;
        gpa -= (pages + 1 + i % 3) * PAGE_SIZE;
        fragmented.push((gpa, pages * PAGE_SIZE));
    }
    [contiguous, fragmented]
}

/// BO byte `offset` → guest address, by linear scan.
fn naive_resolve(ranges: &[(u64, u64)], mut offset: u64) -> u64 {
    for &(addr, len) in ranges {
        if offset < len {
            return addr + offset;
        }
        offset -= len;
    }
    panic!("offset past the BO");
}

#[derive(Clone, Debug)]
enum Op {
    Map {
        bo: usize,
        off: u64,
        va: u64,
        size: u64,
        flags: MapFlags,
    },
    Unmap {
        va: u64,
        size: u64,
    },
}

/// (va, size, bo index, bo offset, flags), all in bytes.
type ModelMapping = (u64, u64, usize, u64, MapFlags);

#[derive(Default)]
struct Model {
    mappings: Vec<ModelMapping>,
    pages: BTreeMap<u64, (u64, MapFlags)>,
}

impl Model {
    fn remove(&mut self, va: u64, size: u64) {
        let end = va + size;
        let mut kept = Vec::new();
        for &(mva, msize, bo, off, flags) in &self.mappings {
            let mend = mva + msize;
            if mend <= va || mva >= end {
                kept.push((mva, msize, bo, off, flags));
                continue;
            }
            if mva < va {
                kept.push((mva, va - mva, bo, off, flags));
            }
            if mend > end {
                kept.push((end, mend - end, bo, off + (end - mva), flags));
            }
        }
        kept.sort_by_key(|m| m.0);
        self.mappings = kept;
        for p in va / PAGE_SIZE..end / PAGE_SIZE {
            self.pages.remove(&p);
        }
    }

    fn apply(&mut self, op: &Op, ranges: &[Vec<(u64, u64)>; 2]) {
        match *op {
            Op::Unmap { va, size } => self.remove(va, size),
            Op::Map {
                bo,
                off,
                va,
                size,
                flags,
            } => {
                self.remove(va, size);
                self.mappings.push((va, size, bo, off, flags));
                self.mappings.sort_by_key(|m| m.0);
                for i in 0..size / PAGE_SIZE {
                    let gpa = naive_resolve(&ranges[bo], off + i * PAGE_SIZE);
                    self.pages.insert(va / PAGE_SIZE + i, (gpa, flags));
                }
            }
        }
    }
}

/// An op from raw random numbers: sizes, VAs and offsets land inside the
/// window and the BO; `aligned` biases towards 2 MiB alignment so blocks
/// are created and split.
fn make_op(
    kind: u8,
    a: u64,
    b: u64,
    c: u64,
    flag_bits: u32,
    aligned: bool,
    bo_pages: [u64; 2],
) -> Op {
    let bo = (kind & 1) as usize;
    let unmap = kind >= 2;
    let max = if unmap {
        WINDOW_PAGES
    } else {
        WINDOW_PAGES.min(bo_pages[bo])
    };
    // Only a range of at least one block can be block aligned.
    let unit = if aligned && max >= BLOCK_PAGES {
        BLOCK_PAGES
    } else {
        1
    };
    let size = (1 + a % (max / unit)) * unit;
    let va = (b % ((WINDOW_PAGES - size) / unit + 1)) * unit;
    if unmap {
        return Op::Unmap {
            va: va * PAGE_SIZE,
            size: size * PAGE_SIZE,
        };
    }
    let off = (c % ((bo_pages[bo] - size) / unit + 1)) * unit;
    Op::Map {
        bo,
        off: off * PAGE_SIZE,
        va: va * PAGE_SIZE,
        size: size * PAGE_SIZE,
        flags: MapFlags::from_bits(flag_bits & 7).unwrap_or_default(),
    }
}

fn check(vm: &mut GpuVm, model: &Model, bos: &[Arc<Bo>; 2]) -> Result<(), TestCaseError> {
    let tree: Vec<ModelMapping> = vm
        .mappings()
        .map(|m| {
            let bo = usize::from(!Arc::ptr_eq(&m.bo, &bos[0]));
            (m.va, m.size, bo, m.bo_offset, m.flags)
        })
        .collect();
    prop_assert_eq!(&tree, &model.mappings);
    for p in 0..WINDOW_PAGES {
        let va = p * PAGE_SIZE + (p * 24) % PAGE_SIZE;
        let got = vm.translate(va, Access::Read);
        match model.pages.get(&p) {
            Some(&(gpa, flags)) => {
                let t = got.map_err(|f| TestCaseError::fail(format!("{f}")))?;
                prop_assert_eq!(t.gpa, GuestAddress(gpa + va % PAGE_SIZE));
                prop_assert_eq!(t.flags, flags);
                prop_assert_eq!(vm.translate(va, Access::Write).is_ok(), !flags.readonly());
                prop_assert_eq!(vm.translate(va, Access::Execute).is_ok(), !flags.noexec());
            }
            None => prop_assert!(got.is_err(), "page {} should be unmapped", p),
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn bind_sequences_match_the_model(
        raw in prop::collection::vec(
            (0u8..4, any::<u64>(), any::<u64>(), any::<u64>(), any::<u32>(), any::<bool>()),
            1..24,
        )
    ) {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap();
        let ranges = bo_ranges();
        let bos = ranges.clone().map(|r| {
            Arc::new(
                Bo::new(
                    r.iter().map(|&(a, l)| GuestRange::new(a, l)),
                    &mem,
                    None,
                    &BoLimits::default(),
                )
                .unwrap(),
            )
        });
        let bo_pages = [bos[0].size() / PAGE_SIZE, bos[1].size() / PAGE_SIZE];
        let mut vm = GpuVm::new(0, VmLimits::default()).unwrap();
        let mut model = Model::default();
        for (kind, a, b, c, f, aligned) in raw {
            let op = make_op(kind, a, b, c, f, aligned, bo_pages);
            let bind = match op.clone() {
                Op::Map { bo, off, va, size, flags } => BindOp::Map {
                    bo: bos[bo].clone(),
                    bo_offset: off,
                    va,
                    size,
                    flags,
                },
                Op::Unmap { va, size } => BindOp::Unmap { va, size },
            };
            let applied = vm.bind(&[bind]);
            prop_assert!(applied.is_ok(), "{:?} failed: {:?}", op, applied);
            model.apply(&op, &ranges);
            check(&mut vm, &model, &bos)?;
        }
        let all = BindOp::Unmap { va: 0, size: WINDOW_PAGES * PAGE_SIZE };
        prop_assert!(vm.bind(&[all]).is_ok());
        prop_assert_eq!(vm.mapping_count(), 0);
        prop_assert_eq!(vm.page_table().charge(), 0);
    }
}
