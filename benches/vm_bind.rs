//! VM_BIND benchmark: map then unmap 1 GiB, through the synchronous bind
//! path (validation, mapping tree and page tables).
//!
//! Cases:
//! - a contiguous BO at 2 MiB-aligned VA and address: 2 MiB blocks;
//! - the same memory mapped from BO offset 4 KiB, so VA and address never
//!   agree modulo 2 MiB: 262144 4 KiB pages from one contiguous range;
//! - a contiguous BO at a VA that is 4 KiB off 2 MiB alignment: 4 KiB
//!   pages, with partially covered leaf tables at both ends;
//! - a fragmented BO of 262144 scattered, non-adjacent 4 KiB ranges:
//!   4 KiB pages, one BO segment per page.
//!
//! Each case runs several iterations on one VM and prints the median time
//! of each direction and its ratio to the 20 ms target.
//!
//! Run with `cargo bench --bench vm_bind`.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vhost_user_mali::gpu::mmu::{
    Access, BindOp, Bo, BoLimits, GpuVm, GuestRange, MapFlags, VmLimits, PAGE_SIZE,
};
use vm_memory::{GuestAddress, GuestMemoryMmap};

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;
const TARGET: Duration = Duration::from_millis(20);
const ITERATIONS: usize = 11;

struct Case {
    name: &'static str,
    bo: Arc<Bo>,
    bo_offset: u64,
    va: u64,
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn run(case: &Case) {
    let mut vm = GpuVm::new(0, VmLimits::default()).expect("VM");
    let map = BindOp::Map {
        bo: case.bo.clone(),
        bo_offset: case.bo_offset,
        va: case.va,
        size: GIB,
        flags: MapFlags::NOEXEC,
    };
    let unmap = BindOp::Unmap {
        va: case.va,
        size: GIB,
    };
    let mut map_times = Vec::with_capacity(ITERATIONS);
    let mut unmap_times = Vec::with_capacity(ITERATIONS);
    let (mut tables, mut blocks) = (0, 0);
    for _ in 0..ITERATIONS {
        let t = Instant::now();
        vm.bind(black_box(std::slice::from_ref(&map))).expect("map");
        map_times.push(t.elapsed());
        tables = vm.page_table().table_count();
        blocks = vm.page_table().block_count();
        // Spot-check the last page, outside the timed region.
        let last = vm
            .translate(case.va + GIB - PAGE_SIZE, Access::Read)
            .expect("mapped");
        let want = case
            .bo
            .resolve(case.bo_offset + GIB - PAGE_SIZE)
            .expect("in BO");
        assert_eq!(last.gpa, want.0);

        let t = Instant::now();
        vm.bind(black_box(std::slice::from_ref(&unmap)))
            .expect("unmap");
        unmap_times.push(t.elapsed());
        assert_eq!(vm.page_table().charge(), 0);
    }
    let (m, u) = (median(map_times), median(unmap_times));
    println!(
        "{:<52} map {:>8.3} ms ({:.3}x target)  unmap {:>8.3} ms ({:.3}x target)  [{} tables, {} blocks]",
        case.name,
        ms(m),
        m.as_secs_f64() / TARGET.as_secs_f64(),
        ms(u),
        u.as_secs_f64() / TARGET.as_secs_f64(),
        tables,
        blocks,
    );
}

fn main() {
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), (GIB + 2 * MIB) as usize)])
        .expect("guest memory");
    let limits = BoLimits::default();

    let contiguous =
        Arc::new(Bo::new([GuestRange::new(0, GIB + 2 * MIB)], &mem, None, &limits).expect("BO"));

    let pages = GIB / PAGE_SIZE;
    // An odd multiplier permutes the 2^18 pages, and consecutive BO pages
    // land 40503 pages apart, so no two ranges merge.
    let scattered =
        (0..pages).map(|i| GuestRange::new(((i * 40503) % pages) * PAGE_SIZE, PAGE_SIZE));
    let frag_limits = BoLimits {
        max_ranges: pages as usize,
        ..limits
    };
    let t = Instant::now();
    let fragmented = Arc::new(Bo::new(scattered, &mem, None, &frag_limits).expect("BO"));
    let create = t.elapsed();
    assert_eq!(fragmented.ranges().len(), pages as usize);

    println!(
        "VM_BIND: map then unmap 1 GiB, median of {ITERATIONS}, target {} ms each way",
        TARGET.as_millis()
    );
    let cases = [
        Case {
            name: "contiguous BO, 2 MiB aligned (2 MiB blocks)",
            bo: contiguous.clone(),
            bo_offset: 0,
            va: 4 * GIB,
        },
        Case {
            name: "contiguous BO, bo_offset 4 KiB (4 KiB pages)",
            bo: contiguous.clone(),
            bo_offset: PAGE_SIZE,
            va: 4 * GIB,
        },
        Case {
            name: "contiguous BO, VA 4 KiB off 2 MiB (4 KiB pages)",
            bo: contiguous,
            bo_offset: 0,
            va: 4 * GIB + PAGE_SIZE,
        },
        Case {
            name: "fragmented BO, 262144 x 4 KiB ranges (4 KiB pages)",
            bo: fragmented,
            bo_offset: 0,
            va: 4 * GIB,
        },
    ];
    for case in &cases {
        run(case);
    }
    println!(
        "(creating the fragmented BO from 262144 ranges took {:.3} ms, not included)",
        ms(create)
    );
}
