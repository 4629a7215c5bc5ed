//! Tests of the firmware model: jobs through the ring wrapper, validation,
//! full rings, every fault class and the timeout, scheduling (rotation,
//! priorities, REALTIME preemption, SYNC_WAIT parking), tiler heaps and
//! teardown.

use std::collections::HashMap;
use std::sync::Arc;

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::*;
use crate::gpu::cs::{AsyncOp, Builder, Cond, SyncCond, SyncScope};
use crate::gpu::interp::TimingModel;
use crate::gpu::mmu::{BindOp, Bo, BoLimits, GuestRange, MapFlags, VmKey, VmState};
use crate::gpu::model::{GpuModel, GROUP_PRIORITY_HIGH, GROUP_PRIORITY_LOW};
use crate::gpu::sync::FenceResult;

const MIB: u64 = 1 << 20;
/// Guest memory: user BO at 0..16 MiB, kernel memory at 32..64 MiB.
const KMEM_BASE: u64 = 32 * MIB;
const KMEM_SIZE: u64 = 32 * MIB;
/// User VA of the user BO (code and data).
const CODE: u64 = 0x1000_0000;
const DATA: u64 = 0x1080_0000;
/// Never mapped.
const HOLE: u64 = 0x5000_0000;
const MS: u64 = 1_000_000;
/// Simulated time per `run` call while streams keep running.
const QUANTUM: u64 = MS;

type Fw = Firmware<PageAllocator>;

struct T {
    mem: GuestMemoryMmap<()>,
    fw: Fw,
    bo: Arc<Bo>,
    now: u64,
    done: HashMap<JobId, (u64, FenceResult)>,
    /// The tag each job was submitted with (every completion must carry
    /// its job's).
    tags: HashMap<JobId, u64>,
    events: Vec<FwEvent>,
    /// Next free byte of the code area.
    code_top: u64,
}

fn config() -> FwConfig {
    FwConfig {
        tick_ns: 10 * MS,
        job_timeout_ns: 50 * MS,
        slice_budget: 10_000,
        timing: TimingModel::ZERO,
        ..FwConfig::default()
    }
}

impl T {
    fn new() -> T {
        T::with(GpuModel::g610(), config())
    }

    fn with(model: GpuModel, config: FwConfig) -> T {
        let mem =
            GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 64 * MIB as usize)]).unwrap();
        let bo = Arc::new(
            Bo::new(
                [GuestRange::new(0, 16 * MIB)],
                &mem,
                None,
                &BoLimits::default(),
            )
            .unwrap(),
        );
        let kmem = PageAllocator::new(KMEM_BASE, KMEM_SIZE).unwrap();
        T {
            mem,
            fw: Firmware::new(model, config, kmem),
            bo,
            now: 1_000,
            done: HashMap::new(),
            tags: HashMap::new(),
            events: Vec::new(),
            code_top: CODE,
        }
    }

    /// A VM with the user BO mapped at CODE.
    fn vm(&mut self) -> u32 {
        let (vm, range) = self.fw.vm_create(0).unwrap();
        assert_eq!(range, 1 << 47);
        self.fw
            .vm_mut(vm)
            .unwrap()
            .bind(&[BindOp::Map {
                bo: self.bo.clone(),
                bo_offset: 0,
                va: CODE,
                size: 16 * MIB,
                flags: MapFlags::EMPTY,
            }])
            .unwrap();
        vm
    }

    fn group_args(vm: u32, priority: u8, queues: usize) -> GroupCreate {
        GroupCreate {
            queues: vec![
                QueueCreate {
                    priority: 0,
                    ringbuf_size: 4096,
                };
                queues
            ],
            max_compute_cores: 1,
            max_fragment_cores: 1,
            max_tiler_cores: 1,
            priority,
            compute_core_mask: 0x50005,
            fragment_core_mask: 0x50005,
            tiler_core_mask: 1,
            vm,
            privileged: true,
        }
    }

    fn group(&mut self, vm: u32, priority: u8, queues: usize) -> u32 {
        self.fw
            .group_create(&self.mem, &T::group_args(vm, priority, queues))
            .unwrap()
    }

    /// Assembles a stream into the code area; returns (address, size).
    fn stream(&mut self, vm: u32, f: impl FnOnce(&mut Builder)) -> (u64, u32) {
        let mut b = Builder::new();
        f(&mut b);
        let words = b.finish().unwrap();
        self.raw_stream(vm, &words)
    }

    /// Writes raw words into the code area; returns (address, size).
    fn raw_stream(&mut self, vm: u32, words: &[u64]) -> (u64, u32) {
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        let at = self.code_top;
        self.code_top += (bytes.len() as u64 + 63) & !63;
        self.fw
            .vm_mut(vm)
            .unwrap()
            .write_bytes(&self.mem, at, &bytes)
            .unwrap();
        (at, bytes.len() as u32)
    }

    fn submit(&mut self, group: u32, queue: u32, stream: (u64, u32)) -> JobId {
        self.try_submit(group, queue, stream).unwrap()
    }

    fn try_submit(&mut self, group: u32, queue: u32, stream: (u64, u32)) -> Result<JobId, FwError> {
        let tag = 1000 + self.tags.len() as u64;
        let r = self.fw.submit(
            &self.mem,
            self.now,
            group,
            &JobSubmit {
                queue,
                stream_addr: stream.0,
                stream_size: stream.1,
                latest_flush: 0,
                tag,
            },
        );
        if let Ok(id) = r {
            self.tags.insert(id, tag);
        }
        self.collect();
        r
    }

    fn collect(&mut self) {
        for e in self.fw.take_events() {
            if let FwEvent::JobDone {
                job,
                tag,
                seqno,
                result,
                ..
            } = e
            {
                assert_eq!(self.tags.get(&job), Some(&tag), "job {job}'s tag");
                assert!(
                    self.done.insert(job, (seqno, result)).is_none(),
                    "job {job} completed twice"
                );
            }
            self.events.push(e);
        }
    }

    /// Runs at the current time until no queue is ready.
    fn settle(&mut self) {
        for _ in 0..1000 {
            self.fw.run(&self.mem, self.now);
            self.collect();
            if !self.fw.needs_run() {
                return;
            }
        }
        panic!("firmware does not settle");
    }

    /// Runs until time `t`, stepping by QUANTUM while streams run and
    /// jumping to the firmware's wake-ups otherwise.
    fn advance_to(&mut self, t: u64) {
        loop {
            self.fw.run(&self.mem, self.now);
            self.collect();
            let next = if self.fw.needs_run() {
                self.now + QUANTUM
            } else {
                self.fw.next_wakeup_ns().unwrap_or(u64::MAX)
            };
            if next > t {
                if self.now < t {
                    self.now = t;
                    continue;
                }
                return;
            }
            self.now = next.max(self.now + 1);
        }
    }

    fn result(&self, job: JobId) -> Option<FenceResult> {
        self.done.get(&job).map(|d| d.1)
    }

    fn r32(&mut self, vm: u32, va: u64) -> u32 {
        self.fw.vm_mut(vm).unwrap().read_u32(&self.mem, va).unwrap()
    }

    fn r64(&mut self, vm: u32, va: u64) -> u64 {
        self.fw.vm_mut(vm).unwrap().read_u64(&self.mem, va).unwrap()
    }

    fn w32(&mut self, vm: u32, va: u64, v: u32) {
        self.fw
            .vm_mut(vm)
            .unwrap()
            .write_u32(&self.mem, va, v)
            .unwrap();
    }

    fn resident(&self) -> Vec<u32> {
        self.fw.resident_groups().iter().map(|r| r.1).collect()
    }
}

/// A stream that stores `value` at `at`.
fn store(b: &mut Builder, at: u64, value: u32) {
    b.move48(0, at);
    b.move32(2, value);
    b.store_multiple(2, 1, 0, 0);
}

/// A stream that loops for ever, counting iterations at `counter`.
fn endless(b: &mut Builder, counter: u64) {
    b.move48(0, counter);
    let top = b.label_here();
    b.add_imm32(2, 2, 1);
    b.store_multiple(2, 1, 0, 0);
    b.move32(3, 1);
    b.branch_to(Cond::Ne, 3, top);
}

/// A stream that parks until the 32-bit object at `at` is above `value`.
fn wait_gt(b: &mut Builder, at: u64, value: u32) {
    b.move48(0, at);
    b.move32(2, value);
    b.sync_wait32(SyncCond::Gt, false, 0, 2);
}

fn set32(b: &mut Builder, at: u64, value: u32) {
    b.move48(4, at);
    b.move32(6, value);
    b.sync_set32(SyncScope::System, false, 4, 6, AsyncOp::NOW);
}

// ---------------------------------------------------------------------
// Jobs
// ---------------------------------------------------------------------

#[test]
fn panthor_job_end_to_end() {
    let mut t = T::new();
    let vm = t.vm();
    let g = t.group(vm, GROUP_PRIORITY_LOW, 1);
    let usersync = DATA + 0x100;
    let s = t.stream(vm, |b| {
        store(b, DATA, 0xdead_beef);
        b.move48(4, usersync);
        b.move32(6, 5);
        b.sync_add32(SyncScope::System, false, 4, 6, AsyncOp::NOW);
    });
    let job = t.submit(g, 0, s);
    // The wrapper is in the ring, through the MMU, at insert 0.
    let (ring, size) = t.fw.ring(g, 0).unwrap();
    assert_eq!(size, 4096);
    assert!(ring >= 1 << 47, "ring in the kernel window");
    let syncobj = t.fw.syncobj_va(g, 0).unwrap();
    let expected = wrapper_words(&WrapperArgs {
        reg_count: 96,
        scoreboards: 8,
        latest_flush: 0,
        stream_addr: s.0,
        stream_size: s.1,
        syncobj,
    });
    for (i, w) in expected.iter().enumerate() {
        assert_eq!(t.r64(vm, ring + 8 * i as u64), *w);
    }
    assert_eq!(t.fw.ring_counters(g, 0).unwrap(), (128, 0));
    assert_eq!(t.result(job), None);
    t.settle();
    assert_eq!(t.done[&job], (1, Ok(())));
    assert_eq!(t.r64(vm, syncobj), 1, "queue seqno object");
    assert_eq!(t.r32(vm, syncobj + 8), 0, "status");
    assert_eq!(t.r32(vm, DATA), 0xdead_beef, "what the stream wrote");
    assert_eq!(t.r32(vm, usersync), 5);
    assert_eq!(t.fw.ring_counters(g, 0).unwrap(), (128, 128));

    // A second job and an empty one behind it: the empty job shares the
    // second job's completion and sequence number.
    let j2 = t.submit(g, 0, s);
    let empty = t.submit(g, 0, (0, 0));
    assert_eq!(t.result(empty), None);
    t.settle();
    assert_eq!(t.done[&j2], (2, Ok(())));
    assert_eq!(t.done[&empty], (2, Ok(())));
    assert_eq!(t.r32(vm, usersync), 10);
    // Nothing in flight: an empty job completes at once.
    let e2 = t.submit(g, 0, (0, 0));
    assert_eq!(t.done[&e2], (2, Ok(())));
    assert_eq!(t.r64(vm, syncobj), 2);
    assert_eq!(t.fw.group_status(g).unwrap(), GroupStatus::default());
}

#[test]
fn scoreboard_blocked_queue_resumes_at_its_deadline() {
    let mut cfg = config();
    cfg.timing = TimingModel {
        flush_ns: 5_000,
        ..TimingModel::ZERO
    };
    let mut t = T::with(GpuModel::g610(), cfg);
    let vm = t.vm();
    let g = t.group(vm, GROUP_PRIORITY_LOW, 1);
    let s = t.stream(vm, |b| store(b, DATA, 1));
    let job = t.submit(g, 0, s);
    t.settle();
    // The wrapper's WAIT(sb0) waits for the FLUSH_CACHE2.
    assert_eq!(t.result(job), None);
    assert!(!t.fw.needs_run());
    assert_eq!(t.fw.next_wakeup_ns(), Some(t.now + 5_000));
    t.now += 5_000;
    t.settle();
    assert_eq!(t.result(job), Some(Ok(())));
}

#[test]
fn ring_wraps_and_full_rings_queue_then_refuse() {
    let mut cfg = config();
    cfg.max_pending_jobs = 4;
    let mut t = T::with(GpuModel::g610(), cfg);
    let vm = t.vm();
    let g = t.group(vm, GROUP_PRIORITY_LOW, 1);
    let s = t.stream(vm, |b| {
        b.move48(0, DATA);
        b.move32(2, 1);
        b.sync_add32(SyncScope::System, false, 0, 2, AsyncOp::NOW);
    });
    // 4 KiB hold 32 jobs; 4 more wait; the next is refused.
    let mut jobs = Vec::new();
    for _ in 0..36 {
        jobs.push(t.submit(g, 0, s));
    }
    assert_eq!(t.fw.jobs_outstanding(g, 0).unwrap(), 36);
    let err = t.try_submit(g, 0, s).unwrap_err();
    assert_eq!(err, FwError::QueueFull);
    assert_eq!(err.errno(), libc::EAGAIN);
    t.settle();
    for (i, j) in jobs.iter().enumerate() {
        assert_eq!(t.done[j], (i as u64 + 1, Ok(())));
    }
    assert_eq!(t.r32(vm, DATA), 36);
    // The ring wrapped around: 36 jobs of 128 bytes in 4 KiB.
    assert_eq!(t.fw.ring_counters(g, 0).unwrap(), (36 * 128, 36 * 128));
    let j = t.submit(g, 0, s);
    t.settle();
    assert_eq!(t.done[&j], (37, Ok(())));
}

#[test]
fn submit_and_group_validation_errnos() {
    let mut t = T::new();
    let vm = t.vm();
    let g = t.group(vm, GROUP_PRIORITY_LOW, 2);
    let bad = |t: &mut T, addr: u64, size: u32, flush: u32, queue: u32| {
        t.fw.submit(
            &t.mem,
            t.now,
            g,
            &JobSubmit {
                queue,
                stream_addr: addr,
                stream_size: size,
                latest_flush: flush,
                tag: 0,
            },
        )
        .unwrap_err()
    };
    assert_eq!(bad(&mut t, CODE, 0, 0, 0), FwError::StreamEmptiness);
    assert_eq!(bad(&mut t, 0, 8, 0, 0), FwError::StreamEmptiness);
    assert_eq!(bad(&mut t, CODE + 8, 8, 0, 0), FwError::StreamAlignment);
    assert_eq!(bad(&mut t, CODE, 12, 0, 0), FwError::StreamAlignment);
    assert_eq!(
        bad(&mut t, CODE, 8, 1 << 24, 0),
        FwError::LatestFlush(1 << 24)
    );
    assert!(matches!(
        bad(&mut t, CODE, 8, 0, 2),
        FwError::NoSuchQueue { .. }
    ));
    // Bit 31 of latest_flush is allowed.
    assert!(t.try_submit(g, 1, (0, 0)).is_ok());
    for e in [
        FwError::StreamEmptiness,
        FwError::StreamAlignment,
        FwError::LatestFlush(0),
        FwError::NoSuchGroup(9),
    ] {
        assert_eq!(e.errno(), libc::EINVAL);
    }
    assert!(matches!(
        t.fw.submit(&t.mem, t.now, 77, &JobSubmit::default()),
        Err(FwError::NoSuchGroup(77))
    ));

    let create = |t: &mut T, f: &dyn Fn(&mut GroupCreate)| {
        let mut a = T::group_args(vm, GROUP_PRIORITY_LOW, 1);
        f(&mut a);
        t.fw.group_create(&t.mem, &a).map_err(|e| (e, e.errno()))
    };
    let einval = |r: Result<u32, (FwError, i32)>| r.unwrap_err().1 == libc::EINVAL;
    assert!(einval(create(&mut t, &|a| a.queues.clear())));
    assert!(einval(create(&mut t, &|a| a.queues = vec![a.queues[0]; 9])));
    assert!(einval(create(&mut t, &|a| a.queues[0].ringbuf_size = 2048)));
    assert!(einval(create(&mut t, &|a| a.queues[0].ringbuf_size = 6144)));
    assert!(einval(
        create(&mut t, &|a| a.queues[0].ringbuf_size = 128 << 10)
    ));
    assert!(einval(create(&mut t, &|a| a.queues[0].priority = 16)));
    assert!(einval(create(&mut t, &|a| a.priority = 4)));
    assert!(einval(create(&mut t, &|a| a.compute_core_mask = 0x2)));
    assert!(einval(create(&mut t, &|a| a.tiler_core_mask = 0x3)));
    assert!(einval(create(&mut t, &|a| a.max_fragment_cores = 5)));
    assert!(einval(create(&mut t, &|a| a.vm = 99)));
    let r = create(&mut t, &|a| {
        a.priority = GROUP_PRIORITY_HIGH;
        a.privileged = false;
    });
    assert_eq!(r.unwrap_err().1, libc::EACCES);
    assert!(create(&mut t, &|a| a.queues = vec![a.queues[0]; 8]).is_ok());
    assert!(create(&mut t, &|a| a.queues[0].ringbuf_size = 64 << 10).is_ok());
}

#[test]
fn group_and_vm_handle_limits() {
    let mut cfg = config();
    cfg.max_groups = 2;
    cfg.max_vms = 1;
    let mut t = T::with(GpuModel::g610(), cfg);
    let vm = t.vm();
    assert_eq!(t.fw.vm_create(0).unwrap_err().errno(), libc::EBUSY);
    assert_eq!(t.group(vm, 0, 1), 1);
    assert_eq!(t.group(vm, 0, 1), 2);
    let e =
        t.fw.group_create(&t.mem, &T::group_args(vm, 0, 1))
            .unwrap_err();
    assert_eq!((e, e.errno()), (FwError::TooManyGroups(2), libc::EBUSY));
    t.fw.group_destroy(&t.mem, t.now, 1).unwrap();
    assert_eq!(t.group(vm, 0, 1), 1, "lowest free handle");
    assert_eq!(
        t.fw.group_destroy(&t.mem, t.now, 5).unwrap_err().errno(),
        libc::EINVAL
    );
}

#[test]
fn kernel_objects_are_zeroed_and_freed() {
    let mut t = T::new();
    // Dirty the kernel memory first.
    t.mem
        .write_slice(&vec![0xa5u8; 4 * MIB as usize], GuestAddress(KMEM_BASE))
        .unwrap();
    let vm = t.vm();
    let base = t.fw.kernel_memory().used();
    let g = t.group(vm, 0, 3);
    for q in 0..3 {
        let (ring, size) = t.fw.ring(g, q).unwrap();
        let mut buf = vec![0u8; size as usize];
        t.fw.vm_mut(vm)
            .unwrap()
            .read_bytes(&t.mem, ring, &mut buf)
            .unwrap();
        assert!(buf.iter().all(|&b| b == 0));
        let so = t.fw.syncobj_va(g, q).unwrap();
        assert_eq!((t.r64(vm, so), t.r64(vm, so + 8)), (0, 0));
    }
    assert_eq!(t.fw.kernel_memory().used(), base + 3 * 4096 + 4096);
    t.fw.group_destroy(&t.mem, t.now, g).unwrap();
    assert_eq!(t.fw.kernel_memory().used(), base);
    assert!(t.fw.vm(vm).unwrap().mappings().all(|m| !m.kernel));
}

// ---------------------------------------------------------------------
// Faults and timeouts
// ---------------------------------------------------------------------

#[test]
fn cs_fault_fails_its_job_and_execution_continues_after_the_barrier() {
    let mut t = T::new();
    let vm = t.vm();
    let g = t.group(vm, 0, 1);
    let bad = DATA + 0x200;
    // A sync object in error: value 1, status 1.
    t.w32(vm, bad, 1);
    t.w32(vm, bad + 4, 1);
    let s1 = t.stream(vm, |b| wait_gt(b, bad, 0));
    let s2 = t.stream(vm, |b| store(b, DATA, 7));
    let j1 = t.submit(g, 0, s1);
    let j2 = t.submit(g, 0, s2);
    t.settle();
    assert_eq!(t.done[&j1], (1, Err(libc::EINVAL)));
    assert_eq!(t.done[&j2], (2, Ok(())));
    assert_eq!(t.r32(vm, DATA), 7);
    assert!(t.events.iter().any(|e| matches!(
        e,
        FwEvent::CsFault { group, queue: 0, fault } if *group == g && fault.exception_code == 0x4b
    )));
    assert_eq!(t.fw.group_status(g).unwrap(), GroupStatus::default());
    let so = t.fw.syncobj_va(g, 0).unwrap();
    assert_eq!((t.r64(vm, so), t.r32(vm, so + 8)), (2, 0));
}

#[test]
fn cs_fatal_kills_the_group_and_all_its_jobs() {
    let mut t = T::new();
    let vm = t.vm();
    let g = t.group(vm, 0, 2);
    let other = t.group(vm, 0, 1);
    // Queue 1 parks on a wait; queue 0 hits an undecodable word.
    let park = t.stream(vm, |b| wait_gt(b, DATA + 0x300, 0));
    let parked = t.submit(g, 1, park);
    t.settle();
    let invalid = t.stream(vm, |b| {
        b.push(crate::gpu::cs::decode(0x0200_0000_0000_0000).unwrap());
    });
    // Overwrite it with a word that does not decode.
    t.fw.vm_mut(vm)
        .unwrap()
        .write_u64(&t.mem, invalid.0, 0xff00_0000_0000_0000)
        .unwrap();
    let j1 = t.submit(g, 0, invalid);
    let j2 = t.submit(g, 0, invalid);
    let follower = t.submit(g, 0, (0, 0));
    let fine = t.stream(vm, |b| store(b, DATA + 0x40, 3));
    let ok = t.submit(other, 0, fine);
    t.settle();
    let status = t.fw.group_status(g).unwrap();
    assert_eq!(status.fatal_queues, 0b01);
    assert!(!status.timedout);
    assert_eq!(status.state_flags(), GROUP_STATE_FATAL_FAULT);
    assert_eq!(t.done[&j1], (1, Err(libc::EINVAL)));
    assert_eq!(t.done[&j2], (2, Err(libc::EINVAL)));
    assert_eq!(t.done[&follower], (2, Err(libc::EINVAL)));
    assert_eq!(t.done[&parked], (1, Err(libc::ECANCELED)));
    assert!(t
        .events
        .iter()
        .any(|e| matches!(e, FwEvent::CsFatal { fault, .. } if fault.exception_code == 0x51)));
    // The sync objects tell waiters the queue is dead.
    let so = t.fw.syncobj_va(g, 0).unwrap();
    assert_eq!((t.r64(vm, so), t.r32(vm, so + 8)), (2, u32::MAX));
    // No more submits; the other group is untouched.
    let e = t.try_submit(g, 0, fine).unwrap_err();
    assert_eq!((e, e.errno()), (FwError::GroupDead(g), libc::EINVAL));
    assert_eq!(t.done[&ok], (1, Ok(())));
    let ok2 = t.submit(other, 0, fine);
    t.settle();
    assert_eq!(t.done[&ok2], (2, Ok(())));
    assert_eq!(t.fw.group_status(other).unwrap(), GroupStatus::default());
    assert!(!t.resident().contains(&g));
}

#[test]
fn mmu_fault_kills_the_vm_groups_only() {
    let mut t = T::new();
    let vm_a = t.vm();
    let vm_b = t.vm();
    let a1 = t.group(vm_a, 0, 2);
    let a2 = t.group(vm_a, 0, 1);
    let b = t.group(vm_b, 0, 1);
    let park = t.stream(vm_a, |b| wait_gt(b, DATA + 0x300, 0));
    let a2_job = t.submit(a2, 0, park);
    t.settle();
    let wild = t.stream(vm_a, |b| store(b, HOLE, 1));
    // Same code bytes in VM B (the BO is mapped at the same VA there).
    let fine = t.stream(vm_b, |b| store(b, DATA, 9));
    let a1_job = t.submit(a1, 1, wild);
    let b_job = t.submit(b, 0, fine);
    t.settle();
    assert!(t.events.iter().any(|e| matches!(
        e,
        FwEvent::MmuFault { group, queue: 1, fault, .. } if *group == a1 && fault.va == HOLE
    )));
    assert_eq!(t.fw.vm_state(vm_a).unwrap(), VmState::Unusable);
    assert!(t.events.contains(&FwEvent::VmUnusable { vm: Some(vm_a) }));
    assert_eq!(t.fw.group_status(a1).unwrap().fatal_queues, 0b10);
    assert_eq!(t.fw.group_status(a2).unwrap().fatal_queues, 0b1);
    assert_eq!(t.done[&a1_job].1, Err(libc::EINVAL));
    assert_eq!(t.done[&a2_job].1, Err(libc::EINVAL));
    assert_eq!(t.try_submit(a2, 0, park).unwrap_err().errno(), libc::EINVAL);
    // No new group on the unusable VM: its kernel objects cannot be mapped.
    let e =
        t.fw.group_create(&t.mem, &T::group_args(vm_a, 0, 1))
            .unwrap_err();
    assert_eq!(e.errno(), libc::EINVAL);
    // VM B and its group are untouched.
    assert_eq!(t.done[&b_job], (1, Ok(())));
    assert_eq!(t.fw.vm_state(vm_b).unwrap(), VmState::Usable);
    assert_eq!(t.r32(vm_b, DATA), 9);
    assert_eq!(t.fw.group_status(b).unwrap(), GroupStatus::default());
}

#[test]
fn endless_loop_is_preempted_then_times_out() {
    let mut t = T::new();
    let vm = t.vm();
    let g = t.group(vm, 0, 1);
    let other = t.group(vm, 0, 1);
    let s = t.stream(vm, |b| endless(b, DATA));
    let job = t.submit(g, 0, s);
    let start = t.now;
    t.advance_to(start + 20 * MS);
    // Running, preempted at every slice, not dead yet.
    assert!(t.r32(vm, DATA) > 10_000);
    assert_eq!(t.result(job), None);
    // Another group still gets its work done meanwhile.
    let fine = t.stream(vm, |b| store(b, DATA + 0x40, 1));
    let ok = t.submit(other, 0, fine);
    t.advance_to(t.now + MS);
    assert_eq!(t.result(ok), Some(Ok(())));
    t.advance_to(start + 60 * MS);
    assert_eq!(t.done[&job], (1, Err(libc::ETIMEDOUT)));
    let st = t.fw.group_status(g).unwrap();
    assert!(st.timedout && st.fatal_queues == 0 && !st.innocent);
    assert_eq!(st.state_flags(), GROUP_STATE_TIMEDOUT);
    assert!(t.events.contains(&FwEvent::GroupStateChanged {
        group: g,
        status: st
    }));
    let counted = t.r32(vm, DATA);
    t.advance_to(t.now + 5 * MS);
    assert_eq!(t.r32(vm, DATA), counted, "the loop no longer runs");
    assert_eq!(t.fw.group_status(other).unwrap(), GroupStatus::default());
    assert_eq!(t.try_submit(g, 0, s).unwrap_err().errno(), libc::EINVAL);
}

#[test]
fn timeout_is_suspended_while_waiting_for_a_slot() {
    let mut model = GpuModel::g610();
    model.csif_info.csg_slot_count = 1;
    let mut t = T::with(model, config());
    let vm = t.vm();
    let a = t.group(vm, 0, 1);
    let b = t.group(vm, 0, 1);
    let sa = t.stream(vm, |x| endless(x, DATA));
    let sb = t.stream(vm, |x| endless(x, DATA + 4));
    let ja = t.submit(a, 0, sa);
    let jb = t.submit(b, 0, sb);
    let start = t.now;
    // They share one slot, rotating every 10 ms: each is charged for about
    // half of the elapsed time.
    t.advance_to(start + 70 * MS);
    assert_eq!(t.result(ja), None);
    assert_eq!(t.result(jb), None);
    assert!(t.r32(vm, DATA) > 0 && t.r32(vm, DATA + 4) > 0);
    t.advance_to(start + 120 * MS);
    assert_eq!(t.result(ja), Some(Err(libc::ETIMEDOUT)));
    assert_eq!(t.result(jb), Some(Err(libc::ETIMEDOUT)));
}

#[test]
fn parked_group_still_times_out() {
    let mut t = T::new();
    let vm = t.vm();
    let g = t.group(vm, 0, 1);
    let s = t.stream(vm, |b| wait_gt(b, DATA, 0));
    let job = t.submit(g, 0, s);
    t.settle();
    assert!(t.resident().is_empty(), "parked groups leave their slot");
    t.advance_to(t.now + 49 * MS);
    assert_eq!(t.result(job), None);
    t.advance_to(t.now + 2 * MS);
    assert_eq!(t.result(job), Some(Err(libc::ETIMEDOUT)));
}

#[test]
fn destroy_cancels_jobs_and_reset_makes_resident_groups_innocent() {
    let mut t = T::new();
    let vm = t.vm();
    let g = t.group(vm, 0, 1);
    let s = t.stream(vm, |b| wait_gt(b, DATA, 0));
    let j = t.submit(g, 0, s);
    let j2 = t.submit(g, 0, s);
    t.settle();
    t.fw.group_destroy(&t.mem, t.now, g).unwrap();
    t.collect();
    assert_eq!(t.result(j), Some(Err(libc::ECANCELED)));
    assert_eq!(t.result(j2), Some(Err(libc::ECANCELED)));
    assert_eq!(t.fw.group_status(g).unwrap_err().errno(), libc::EINVAL);

    // Reset: the resident group is lost as an innocent bystander; the one
    // parked without a slot is not.
    let busy = t.group(vm, 0, 1);
    let parked = t.group(vm, 0, 1);
    let loop_s = t.stream(vm, |b| endless(b, DATA + 8));
    let jb = t.submit(busy, 0, loop_s);
    let jp = t.submit(parked, 0, s);
    t.advance_to(t.now + 2 * MS);
    assert_eq!(t.resident(), vec![busy]);
    t.fw.reset(&t.mem, t.now);
    t.collect();
    let st = t.fw.group_status(busy).unwrap();
    assert!(st.timedout && st.innocent && st.fatal_queues == 0);
    assert_eq!(
        st.state_flags(),
        GROUP_STATE_TIMEDOUT | GROUP_STATE_INNOCENT
    );
    assert_eq!(t.result(jb), Some(Err(libc::ETIMEDOUT)));
    assert_eq!(t.fw.group_status(parked).unwrap(), GroupStatus::default());
    assert_eq!(t.result(jp), None);
    t.w32(vm, DATA, 1);
    t.fw.memory_changed(&t.mem, t.now);
    t.settle();
    assert_eq!(t.result(jp), Some(Ok(())));
}

// ---------------------------------------------------------------------
// Scheduling
// ---------------------------------------------------------------------

#[test]
fn more_groups_than_slots_rotate_with_distinct_priorities() {
    let mut t = T::new();
    let vm = t.vm();
    let groups: Vec<u32> = (0..10)
        .map(|_| t.group(vm, GROUP_PRIORITY_LOW, 1))
        .collect();
    for (i, &g) in groups.iter().enumerate() {
        let s = t.stream(vm, |b| endless(b, DATA + 4 * i as u64));
        t.submit(g, 0, s);
    }
    t.settle_once();
    let r = t.fw.resident_groups();
    assert_eq!(r.len(), 8);
    let prios: Vec<u8> = r.iter().map(|x| x.2).collect();
    assert_eq!(prios, (8..=15).rev().collect::<Vec<u8>>());
    let first: Vec<u32> = r.iter().map(|x| x.1).collect();
    assert_eq!(first, groups[..8].to_vec());
    for i in 8..10 {
        assert_eq!(t.r32(vm, DATA + 4 * i), 0, "not resident, not running");
    }
    // One tick later the two waiting groups are in.
    t.advance_to(t.now + 10 * MS);
    let now_in = t.resident();
    assert!(now_in.contains(&groups[8]) && now_in.contains(&groups[9]));
    assert_eq!(now_in.len(), 8);
    t.advance_to(t.now + 30 * MS);
    for i in 0..10 {
        assert!(t.r32(vm, DATA + 4 * i) > 0, "group {i} ran");
    }
}

impl T {
    /// One `run` at the current time.
    fn settle_once(&mut self) {
        self.fw.run(&self.mem, self.now);
        self.collect();
    }
}

#[test]
fn higher_priorities_stay_resident_and_realtime_preempts() {
    let mut cfg = config();
    cfg.job_timeout_ns = 10_000 * MS;
    let mut t = T::with(GpuModel::g610(), cfg);
    let vm = t.vm();
    let low: Vec<u32> = (0..8).map(|_| t.group(vm, GROUP_PRIORITY_LOW, 1)).collect();
    for (i, &g) in low.iter().enumerate() {
        let s = t.stream(vm, |b| endless(b, DATA + 4 * i as u64));
        t.submit(g, 0, s);
    }
    t.settle_once();
    assert_eq!(t.resident().len(), 8);
    // A REALTIME group takes a slot at once, without waiting for a tick.
    let rt = t.group(vm, 3, 1);
    let s = t.stream(vm, |b| endless(b, DATA + 0x100));
    t.submit(rt, 0, s);
    let r = t.fw.resident_groups();
    assert_eq!(r[0].1, rt);
    assert_eq!(r[0].2, 15);
    assert_eq!(r.len(), 8);
    assert!(!t.resident().contains(&low[7]), "the last LOW group left");
    t.settle_once();
    assert!(t.r32(vm, DATA + 0x100) > 0);
    // A HIGH group waits for the tick, then stays resident while the LOW
    // ones rotate around it.
    let high = t.group(vm, GROUP_PRIORITY_HIGH, 1);
    let s = t.stream(vm, |b| endless(b, DATA + 0x104));
    t.submit(high, 0, s);
    assert!(!t.resident().contains(&high));
    t.advance_to(t.now + 10 * MS);
    let r = t.fw.resident_groups();
    assert_eq!((r[0].1, r[1].1), (rt, high));
    assert_eq!((r[0].2, r[1].2), (15, 14));
    for _ in 0..5 {
        t.advance_to(t.now + 10 * MS);
        let r = t.resident();
        assert!(r.contains(&rt) && r.contains(&high));
    }
}

#[test]
fn queue_priorities_order_execution_within_a_group() {
    let mut t = T::new();
    let vm = t.vm();
    let mut args = T::group_args(vm, 0, 2);
    args.queues[1].priority = 15;
    let g = t.fw.group_create(&t.mem, &args).unwrap();
    // Each job reads a shared counter, bumps it and records what it saw.
    let bump = |t: &mut T, slot: u64| {
        t.stream(vm, |b| {
            b.move48(0, DATA);
            b.load_multiple(2, 1, 0, 0);
            b.add_imm32(2, 2, 1);
            b.store_multiple(2, 1, 0, 0);
            b.move48(0, slot);
            b.store_multiple(2, 1, 0, 0);
        })
    };
    let s0 = bump(&mut t, DATA + 0x10);
    let s1 = bump(&mut t, DATA + 0x14);
    t.submit(g, 0, s0);
    t.submit(g, 1, s1);
    t.settle();
    assert_eq!(t.r32(vm, DATA + 0x14), 1, "priority 15 queue ran first");
    assert_eq!(t.r32(vm, DATA + 0x10), 2);
}

#[test]
fn sync_wait_parks_and_a_sync_set_in_another_group_wakes_it() {
    let mut t = T::new();
    let vm = t.vm();
    let waiter = t.group(vm, 0, 1);
    let setter = t.group(vm, 0, 1);
    let flag = DATA + 0x500;
    let sw = t.stream(vm, |b| {
        wait_gt(b, flag, 0);
        store(b, DATA + 0x504, 0x77);
    });
    let jw = t.submit(waiter, 0, sw);
    t.settle();
    assert_eq!(t.result(jw), None);
    assert!(t.resident().is_empty(), "the parked group left its slot");
    assert_eq!(
        t.fw.next_wakeup_ns(),
        Some(t.now + 50 * MS),
        "only its timeout"
    );
    let ss = t.stream(vm, |b| set32(b, flag, 1));
    let js = t.submit(setter, 0, ss);
    t.settle();
    assert_eq!(t.result(js), Some(Ok(())));
    assert_eq!(t.result(jw), Some(Ok(())));
    assert_eq!(t.r32(vm, DATA + 0x504), 0x77);
}

// ---------------------------------------------------------------------
// Tiler heaps, VMs, teardown
// ---------------------------------------------------------------------

#[test]
fn tiler_heap_create_grow_and_destroy() {
    let mut t = T::new();
    let vm = t.vm();
    let args = HeapCreate {
        vm,
        initial_chunk_count: 2,
        chunk_size: 256 << 10,
        max_chunks: 4,
        target_in_flight: 2,
    };
    for bad in [
        HeapCreate {
            initial_chunk_count: 0,
            ..args
        },
        HeapCreate {
            chunk_size: 64 << 10,
            ..args
        },
        HeapCreate {
            chunk_size: (256 << 10) + 100,
            ..args
        },
        HeapCreate {
            chunk_size: 16 << 20,
            ..args
        },
        HeapCreate {
            max_chunks: 1,
            ..args
        },
        HeapCreate { vm: 9, ..args },
    ] {
        assert_eq!(
            t.fw.heap_create(&t.mem, &bad).unwrap_err().errno(),
            libc::EINVAL
        );
    }
    let base = t.fw.kernel_memory().used();
    let info = t.fw.heap_create(&t.mem, &args).unwrap();
    assert_eq!(info.handle, (vm << 16) | 1);
    let chunks = t.fw.heap_chunks(info.handle).unwrap();
    assert_eq!(chunks.len(), 2);
    assert_eq!(info.first_heap_chunk_gpu_va, chunks[0]);
    // The first chunk points at the second; the last points nowhere.
    assert_eq!(t.r64(vm, chunks[0]), chunk_header(chunks[1], 256 << 10));
    assert_eq!(t.r64(vm, chunks[0]) & 0xfff, 0x40);
    assert_eq!(t.r64(vm, chunks[1]), 0);
    assert_eq!(t.r64(vm, info.tiler_heap_ctx_gpu_va), 0);
    assert!(info.tiler_heap_ctx_gpu_va >= 1 << 47);

    // Growth: one chunk per call up to max_chunks, then EBUSY.
    let ctx = info.tiler_heap_ctx_gpu_va;
    assert_eq!(
        t.fw.heap_grow(&t.mem, vm, ctx, 3).unwrap_err(),
        FwError::HeapBusy,
        "more render passes in flight than the target"
    );
    let grown = t.fw.heap_grow(&t.mem, vm, ctx, 1).unwrap();
    let chunks = t.fw.heap_chunks(info.handle).unwrap();
    assert_eq!(chunks.len(), 3);
    assert_eq!(grown, chunk_header(chunks[0], 256 << 10));
    assert_eq!(t.r64(vm, chunks[0]), 0, "a grown chunk is not linked");
    let g = t.group(vm, 0, 1);
    let answer = t.fw.tiler_oom(&t.mem, t.now, g, 0, ctx, 0).unwrap();
    assert_ne!(answer, 0);
    // At max_chunks, the documented answer is a null chunk.
    assert_eq!(
        t.fw.heap_grow(&t.mem, vm, ctx, 0).unwrap_err().errno(),
        libc::EBUSY
    );
    assert_eq!(t.fw.tiler_oom(&t.mem, t.now, g, 0, ctx, 0).unwrap(), 0);
    assert_eq!(t.fw.group_status(g).unwrap(), GroupStatus::default());
    // A TILER_OOM on something that is not a heap makes the queue fatal.
    assert_eq!(t.fw.tiler_oom(&t.mem, t.now, g, 0, 0x1234, 0).unwrap(), 0);
    t.collect();
    assert_eq!(t.fw.group_status(g).unwrap().fatal_queues, 1);

    t.fw.heap_destroy(info.handle).unwrap();
    assert_eq!(
        t.fw.heap_destroy(info.handle).unwrap_err().errno(),
        libc::EINVAL
    );
    // The context array stays for the VM's next heap.
    let ctx_array = t.fw.kernel_memory().used() - base - 2 * 4096;
    assert_eq!(ctx_array, 128 * 64);
    // The heap limit per VM.
    let mut cfg = config();
    cfg.max_heaps_per_vm = 1;
    let mut t2 = T::with(GpuModel::g610(), cfg);
    let vm2 = t2.vm();
    let a = HeapCreate { vm: vm2, ..args };
    t2.fw.heap_create(&t2.mem, &a).unwrap();
    assert_eq!(
        t2.fw.heap_create(&t2.mem, &a).unwrap_err().errno(),
        libc::EBUSY
    );
}

#[test]
fn vm_destroy_unmaps_user_memory_but_groups_keep_their_kernel_objects() {
    let mut t = T::new();
    let vm = t.vm();
    let g = t.group(vm, 0, 1);
    let s = t.stream(vm, |b| store(b, DATA, 1));
    let heap =
        t.fw.heap_create(
            &t.mem,
            &HeapCreate {
                vm,
                initial_chunk_count: 1,
                chunk_size: 128 << 10,
                max_chunks: 1,
                target_in_flight: 1,
            },
        )
        .unwrap();
    t.fw.vm_destroy(vm).unwrap();
    assert_eq!(t.fw.vm_destroy(vm).unwrap_err().errno(), libc::EINVAL);
    assert_eq!(
        t.fw.heap_destroy(heap.handle).unwrap_err().errno(),
        libc::EINVAL
    );
    // The job runs from kernel objects that still exist, and faults on the
    // user memory that is gone.
    let j = t.submit(g, 0, s);
    t.settle();
    assert_eq!(t.result(j), Some(Err(libc::EINVAL)));
    assert!(t
        .events
        .iter()
        .any(|e| matches!(e, FwEvent::MmuFault { fault, .. } if fault.va == s.0)));
    assert!(t.events.contains(&FwEvent::VmUnusable { vm: None }));
    // The handle is free again.
    let (again, _) = t.fw.vm_create(0).unwrap();
    assert_eq!(again, vm);
}

#[test]
fn shutdown_completes_everything_and_frees_all_kernel_memory() {
    let mut t = T::new();
    let vm = t.vm();
    let before = t.fw.kernel_memory().used();
    assert_eq!(before, 0);
    let g = t.group(vm, 0, 2);
    let g2 = t.group(vm, 0, 1);
    t.fw.heap_create(
        &t.mem,
        &HeapCreate {
            vm,
            initial_chunk_count: 2,
            chunk_size: 128 << 10,
            max_chunks: 4,
            target_in_flight: 1,
        },
    )
    .unwrap();
    let park = t.stream(vm, |b| wait_gt(b, DATA, 0));
    let loop_s = t.stream(vm, |b| endless(b, DATA + 4));
    let mut jobs = vec![t.submit(g, 0, park), t.submit(g, 0, park)];
    jobs.push(t.submit(g, 0, (0, 0)));
    jobs.push(t.submit(g2, 0, loop_s));
    t.advance_to(t.now + 2 * MS);
    assert!(t.fw.kernel_memory().used() > 0);
    t.fw.shutdown(&t.mem);
    t.collect();
    for j in jobs {
        assert_eq!(t.result(j), Some(Err(libc::ECANCELED)));
    }
    assert_eq!(t.fw.kernel_memory().used(), 0);
    assert!(t.fw.vm(vm).is_err());
    assert!(!t.fw.needs_run());
    assert_eq!(t.fw.next_wakeup_ns(), None);
}

#[test]
fn page_allocator_first_fit_and_coalescing() {
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 16 * MIB as usize)]).unwrap();
    let mut a = PageAllocator::new(MIB, 16 * 4096).unwrap();
    assert!(PageAllocator::new(1, 4096).is_err());
    assert_eq!(
        a.alloc(&mem, VmKey::new_unique(), 100).unwrap_err(),
        KernelMemoryError::InvalidSize(100)
    );
    let x = a.alloc(&mem, VmKey::new_unique(), 4 * 4096).unwrap();
    let y = a.alloc(&mem, VmKey::new_unique(), 4 * 4096).unwrap();
    let z = a.alloc(&mem, VmKey::new_unique(), 8 * 4096).unwrap();
    assert_eq!(
        a.alloc(&mem, VmKey::new_unique(), 4096).unwrap_err(),
        KernelMemoryError::Exhausted(4096)
    );
    assert_eq!(a.used(), 16 * 4096);
    a.free(x);
    a.free(y);
    // The two freed neighbours coalesce into one 8-page range.
    let w = a.alloc(&mem, VmKey::new_unique(), 8 * 4096).unwrap();
    assert_eq!(w.ranges()[0].addr.0, MIB);
    a.free(w);
    a.free(z);
    assert_eq!(a.used(), 0);
    assert_eq!(
        a.alloc(&mem, VmKey::new_unique(), 16 * 4096)
            .unwrap()
            .size(),
        16 * 4096
    );
    // Outside guest memory: refused.
    let mut far = PageAllocator::new(32 * MIB, 4096).unwrap();
    assert!(matches!(
        far.alloc(&mem, VmKey::new_unique(), 4096),
        Err(KernelMemoryError::Bo(_))
    ));
}

// ---------------------------------------------------------------------
// Arbitrary streams
// ---------------------------------------------------------------------

mod fuzz {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// Random streams (biased towards valid opcodes, registers mostly
        /// pointing into mapped memory) on two groups never panic the
        /// firmware, and every job completes within the timeout.
        #[test]
        fn every_job_completes_whatever_the_stream(
            raw in proptest::collection::vec(any::<u64>(), 1..48),
            picks in proptest::collection::vec(0usize..64, 48),
            split in 1usize..47,
        ) {
            let mut t = T::new();
            let vm = t.vm();
            let groups = [t.group(vm, 0, 2), t.group(vm, 1, 1)];
            let all = crate::gpu::cs::Opcode::ALL;
            let words: Vec<u64> = raw
                .iter()
                .zip(picks.iter().cycle())
                .map(|(&w, &k)| {
                    let op = all[k % all.len()];
                    let mut w = w;
                    for shift in [32, 40, 48] {
                        let b = (w >> shift) & 0xff;
                        w = (w & !(0xff << shift)) | ((b % 24) << shift);
                    }
                    ((op as u64) << 56) | (w & op.field_mask())
                })
                .collect();
            // A prologue points d0..d22 at the data area.
            let split = split.min(words.len());
            let mut jobs = Vec::new();
            for (i, chunk) in [&words[..split], &words[split..]].iter().enumerate() {
                let mut b = Builder::new();
                for r in (0..24).step_by(2) {
                    b.move48(r, DATA + 0x1000 * r as u64);
                }
                let mut code = b.finish().unwrap();
                code.extend_from_slice(chunk);
                let s = t.raw_stream(vm, &code);
                let (g, q) = if i == 0 { (groups[0], 1) } else { (groups[1], 0) };
                jobs.push(t.try_submit(g, q, s).ok());
                jobs.push(t.try_submit(groups[0], 0, s).ok());
            }
            t.advance_to(t.now + 200 * MS);
            for j in jobs.into_iter().flatten() {
                prop_assert!(t.result(j).is_some(), "job {} never completed", j);
            }
        }
    }
}
