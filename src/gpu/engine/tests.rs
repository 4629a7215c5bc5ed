//! Tests of the engine thread: jobs with events, asynchronous VM_BIND
//! chained to GROUP_SUBMIT through syncobjs, bind ordering and run-time
//! bind failures, synchronous errors, timeouts through the timerfd, and
//! shutdown with work in flight.

use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use super::*;
use crate::gpu::cs::{Builder, Cond, SyncCond};
use crate::gpu::firmware::{
    FwError, FwEvent, JobSubmit, KernelMemoryError, PageAllocator, QueueCreate,
};
use crate::gpu::interp::TimingModel;
use crate::gpu::mmu::{BindOp, Bo, BoLimits, GuestRange, MapFlags, VmKey};
use crate::gpu::sync::FenceResult;

const MIB: u64 = 1 << 20;
const KMEM_BASE: u64 = 32 * MIB;
/// The code/data BO: GPA 0..16 MiB, mapped at CODE.
const CODE: u64 = 0x1000_0000;
const DATA: u64 = CODE + 8 * MIB;
/// A second BO (GPA 16..17 MiB) that asynchronous binds map at EXTRA.
const EXTRA: u64 = 0x2000_0000;
const EXTRA_GPA: u64 = 16 * MIB;
const WAIT: Duration = Duration::from_secs(10);

/// A kernel-memory allocator the test can still inspect after the engine
/// took it.
#[derive(Clone)]
struct Shared(Arc<Mutex<PageAllocator>>);

impl KernelMemory for Shared {
    fn alloc<M>(&mut self, mem: &M, vm: VmKey, size: u64) -> Result<Arc<Bo>, KernelMemoryError>
    where
        M: GuestMemoryBackend + ?Sized,
    {
        self.0.lock().unwrap().alloc(mem, vm, size)
    }

    fn free(&mut self, bo: Arc<Bo>) {
        self.0.lock().unwrap().free(bo);
    }
}

struct H {
    engine: Option<Engine>,
    events: Receiver<EngineEvent>,
    seen: Vec<EngineEvent>,
    mem: Arc<GuestMemoryMmap<()>>,
    kmem: Shared,
    code: Arc<Bo>,
    extra: Arc<Bo>,
    code_top: u64,
}

fn config() -> EngineConfig {
    EngineConfig {
        firmware: FwConfig {
            job_timeout_ns: 5_000_000_000,
            timing: TimingModel::ZERO,
            slice_budget: 10_000,
            ..FwConfig::default()
        },
        ..EngineConfig::default()
    }
}

impl H {
    fn new() -> H {
        H::with(config())
    }

    fn with(config: EngineConfig) -> H {
        let mem = Arc::new(
            GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 64 * MIB as usize)]).unwrap(),
        );
        let kmem = Shared(Arc::new(Mutex::new(
            PageAllocator::new(KMEM_BASE, 32 * MIB).unwrap(),
        )));
        let (tx, events) = channel();
        let engine = Engine::spawn(
            mem.clone(),
            kmem.clone(),
            GpuModel::g610(),
            config,
            Box::new(move |e| {
                let _ = tx.send(e);
            }),
        )
        .unwrap();
        let bo = |base: u64, len: u64| {
            Arc::new(
                Bo::new(
                    [GuestRange::new(base, len)],
                    &*mem,
                    None,
                    &BoLimits::default(),
                )
                .unwrap(),
            )
        };
        H {
            engine: Some(engine),
            events,
            seen: Vec::new(),
            code: bo(0, 16 * MIB),
            extra: bo(EXTRA_GPA, MIB),
            mem,
            kmem,
            code_top: CODE,
        }
    }

    fn e(&self) -> &Engine {
        self.engine.as_ref().unwrap()
    }

    /// A VM with the code BO mapped at CODE (synchronous bind).
    fn vm(&self) -> u32 {
        self.vm_and_kernel_start().0
    }

    /// [`H::vm`], and where its kernel VA window starts.
    fn vm_and_kernel_start(&self) -> (u32, u64) {
        let (vm, kernel_start) = self.e().vm_create(0).unwrap();
        self.e()
            .vm_bind(
                vm,
                vec![BindRequest {
                    op: BindOp::Map {
                        bo: self.code.clone(),
                        bo_offset: 0,
                        va: CODE,
                        size: 16 * MIB,
                        flags: MapFlags::EMPTY,
                    },
                    syncs: vec![],
                }],
                BindMode::Sync,
            )
            .unwrap();
        (vm, kernel_start)
    }

    fn group(&self, vm: u32, queues: usize) -> u32 {
        self.e()
            .group_create(GroupCreate {
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
                priority: 0,
                compute_core_mask: 1,
                fragment_core_mask: 1,
                tiler_core_mask: 1,
                vm,
                privileged: false,
            })
            .unwrap()
    }

    /// Writes a stream into the code BO (guest-physical = VA - CODE).
    fn stream(&mut self, f: impl FnOnce(&mut Builder)) -> JobSubmit {
        let mut b = Builder::new();
        f(&mut b);
        let bytes = b.to_bytes().unwrap();
        let at = self.code_top;
        self.code_top += (bytes.len() as u64 + 63) & !63;
        self.mem
            .write_slice(&bytes, GuestAddress(at - CODE))
            .unwrap();
        JobSubmit {
            queue: 0,
            stream_addr: at,
            stream_size: bytes.len() as u32,
            latest_flush: 0,
            tag: 0,
        }
    }

    /// A binary syncobj that a job (`user_data`) on `queue` of group `g`
    /// signals once the word at `flag` is non-zero: `w32(flag - CODE, 1)`
    /// and `memory_changed` open it.
    fn gate_on_flag(&mut self, g: u32, queue: u32, flag: u64, user_data: u64) -> SyncHandle {
        let gate = self.e().sync_create(SyncKind::Binary, false).unwrap();
        let s = self.stream(|b| wait_gt(b, flag, 0));
        self.e()
            .group_submit(
                g,
                vec![H::job(s, queue, vec![SyncOp::signal(gate, 0)], user_data)],
            )
            .unwrap();
        gate
    }

    /// An asynchronous VM_BIND (`user_data`) mapping page 0 of the extra
    /// BO at EXTRA once `gate` is signalled.
    fn map_extra_after(&self, vm: u32, gate: SyncHandle, user_data: u64) {
        self.e()
            .vm_bind(
                vm,
                vec![map_extra(self, 0, EXTRA, vec![SyncOp::wait(gate, 0)])],
                BindMode::Async { user_data },
            )
            .unwrap();
    }

    fn job(job: JobSubmit, queue: u32, syncs: Vec<SyncOp>, user_data: u64) -> QueueSubmit {
        QueueSubmit {
            job: JobSubmit { queue, ..job },
            syncs,
            user_data,
        }
    }

    /// Waits for an event matching `pred`, keeping every event seen.
    fn wait_for(&mut self, what: &str, pred: impl Fn(&EngineEvent) -> bool) -> EngineEvent {
        if let Some(e) = self.seen.iter().find(|e| pred(e)) {
            return e.clone();
        }
        loop {
            let e = self
                .events
                .recv_timeout(WAIT)
                .unwrap_or_else(|_| panic!("no {what}; saw {:?}", self.seen));
            self.seen.push(e.clone());
            if pred(&e) {
                return e;
            }
        }
    }

    fn job_done(&mut self, user_data: u64) -> (u64, FenceResult) {
        match self.wait_for(
            "JobDone",
            |e| matches!(e, EngineEvent::JobDone { user_data: u, .. } if *u == user_data),
        ) {
            EngineEvent::JobDone { seqno, result, .. } => (seqno, result),
            _ => unreachable!(),
        }
    }

    fn bind_done(&mut self, user_data: u64) -> FenceResult {
        match self.wait_for(
            "BindDone",
            |e| matches!(e, EngineEvent::BindDone { user_data: u, .. } if *u == user_data),
        ) {
            EngineEvent::BindDone { result, .. } => result,
            _ => unreachable!(),
        }
    }

    fn wait_done(&mut self, user_data: u64) -> FenceResult {
        match self.wait_for(
            "SyncWaitDone",
            |e| matches!(e, EngineEvent::SyncWaitDone { user_data: u, .. } if *u == user_data),
        ) {
            EngineEvent::SyncWaitDone { result, .. } => result,
            _ => unreachable!(),
        }
    }

    /// Everything that arrives within `d`.
    fn quiet_for(&mut self, d: Duration) -> Vec<EngineEvent> {
        let mut got = Vec::new();
        while let Ok(e) = self.events.recv_timeout(d) {
            self.seen.push(e.clone());
            got.push(e);
        }
        got
    }

    fn r32(&self, gpa: u64) -> u32 {
        self.mem.read_obj(GuestAddress(gpa)).unwrap()
    }

    fn w32(&self, gpa: u64, v: u32) {
        self.mem.write_obj(v, GuestAddress(gpa)).unwrap();
    }

    fn position(&self, pred: impl Fn(&EngineEvent) -> bool) -> usize {
        self.seen.iter().position(pred).expect("event seen")
    }
}

fn store(b: &mut Builder, at: u64, value: u32) {
    b.move48(0, at);
    b.move32(2, value);
    b.store_multiple(2, 1, 0, 0);
}

fn wait_gt(b: &mut Builder, at: u64, value: u32) {
    b.move48(10, at);
    b.move32(12, value);
    b.sync_wait32(SyncCond::Gt, false, 10, 12);
}

fn endless(b: &mut Builder) {
    let top = b.label_here();
    b.add_imm32(2, 2, 1);
    b.move32(3, 1);
    b.branch_to(Cond::Ne, 3, top);
}

fn map_extra(h: &H, page: u64, va: u64, syncs: Vec<SyncOp>) -> BindRequest {
    BindRequest {
        op: BindOp::Map {
            bo: h.extra.clone(),
            bo_offset: page * 4096,
            va,
            size: 4096,
            flags: MapFlags::EMPTY,
        },
        syncs,
    }
}

#[test]
fn jobs_complete_through_the_thread_with_events() {
    let mut h = H::new();
    let vm = h.vm();
    let g = h.group(vm, 1);
    let jobs: Vec<QueueSubmit> = (0..3u32)
        .map(|i| {
            let s = h.stream(|b| store(b, DATA + 4 * u64::from(i), 100 + i));
            H::job(s, 0, vec![], 10 + u64::from(i))
        })
        .collect();
    h.e().group_submit(g, jobs).unwrap();
    for i in 0..3u64 {
        assert_eq!(h.job_done(10 + i), (i + 1, Ok(())));
    }
    for i in 0..3u64 {
        assert_eq!(h.r32(DATA - CODE + 4 * i), 100 + i as u32);
    }
    // Events per queue arrive in order.
    let order: Vec<u64> = h
        .seen
        .iter()
        .filter_map(|e| match e {
            EngineEvent::JobDone { user_data, .. } => Some(*user_data),
            _ => None,
        })
        .collect();
    assert_eq!(order, vec![10, 11, 12]);
    assert_eq!(h.e().group_state(g).unwrap(), GroupStatus::default());
    // An empty job on an idle queue completes at once with the last seqno.
    h.e()
        .group_submit(g, vec![H::job(JobSubmit::default(), 0, vec![], 99)])
        .unwrap();
    assert_eq!(h.job_done(99), (3, Ok(())));
}

#[test]
fn async_bind_gates_a_submit_through_syncobjs() {
    let mut h = H::new();
    let vm = h.vm();
    let g = h.group(vm, 2);
    let gate = h.e().sync_create(SyncKind::Binary, false).unwrap();
    let mapped = h.e().sync_create(SyncKind::Binary, false).unwrap();
    let done = h.e().sync_create(SyncKind::Timeline, false).unwrap();
    // Job 0 parks until the guest CPU raises a flag, then signals `gate`.
    let flag = DATA + 0x100;
    let s0 = h.stream(|b| wait_gt(b, flag, 0));
    h.e()
        .group_submit(g, vec![H::job(s0, 1, vec![SyncOp::signal(gate, 0)], 1)])
        .unwrap();
    // The bind maps EXTRA once `gate` is signalled, then signals `mapped`.
    h.e()
        .vm_bind(
            vm,
            vec![map_extra(
                &h,
                0,
                EXTRA,
                vec![SyncOp::wait(gate, 0), SyncOp::signal(mapped, 0)],
            )],
            BindMode::Async { user_data: 2 },
        )
        .unwrap();
    // Job 1 writes through the new mapping; it waits for `mapped`.
    let s1 = h.stream(|b| store(b, EXTRA + 0x10, 0xabcd));
    h.e()
        .group_submit(
            g,
            vec![H::job(
                s1,
                0,
                vec![SyncOp::wait(mapped, 0), SyncOp::signal(done, 1)],
                3,
            )],
        )
        .unwrap();
    h.e().sync_wait(done, 1, WaitFlags::NONE, 4).unwrap();
    // Nothing moves while job 0 is parked.
    assert!(h.quiet_for(Duration::from_millis(50)).is_empty());
    assert_eq!(h.r32(EXTRA_GPA + 0x10), 0);
    // The guest raises the flag and tells the device.
    h.w32(flag - CODE, 1);
    h.e().memory_changed().unwrap();
    assert_eq!(h.job_done(1), (1, Ok(())));
    assert_eq!(h.bind_done(2), Ok(()));
    assert_eq!(h.job_done(3), (1, Ok(())));
    assert_eq!(h.wait_done(4), Ok(()));
    assert_eq!(h.r32(EXTRA_GPA + 0x10), 0xabcd);
    let job0 = h.position(|e| matches!(e, EngineEvent::JobDone { user_data: 1, .. }));
    let bind = h.position(|e| matches!(e, EngineEvent::BindDone { user_data: 2, .. }));
    let job1 = h.position(|e| matches!(e, EngineEvent::JobDone { user_data: 3, .. }));
    assert!(job0 < bind && bind < job1);
    assert_eq!(
        h.e().sync_query(done).unwrap(),
        SyncState::Timeline {
            value: 1,
            last_submitted: 1
        }
    );
}

#[test]
fn jobs_of_one_submit_chain_and_binds_apply_in_order() {
    let mut h = H::new();
    let vm = h.vm();
    let g = h.group(vm, 2);
    let flag = DATA + 0x200;
    let gate = h.gate_on_flag(g, 1, flag, 1);
    // VM_BIND A: page 0 at EXTRA, gated. VM_BIND B: page 1 at EXTRA, not
    // gated, but queued behind A on the same VM.
    h.map_extra_after(vm, gate, 10);
    let tl = h.e().sync_create(SyncKind::Timeline, false).unwrap();
    h.e()
        .vm_bind(
            vm,
            vec![
                map_extra(&h, 1, EXTRA, vec![SyncOp::signal(tl, 1)]),
                BindRequest {
                    op: BindOp::SyncOnly,
                    syncs: vec![SyncOp::signal(tl, 2)],
                },
            ],
            BindMode::Async { user_data: 11 },
        )
        .unwrap();
    // In one GROUP_SUBMIT, job B (queue 1) waits for job A (queue 0),
    // which waits for the binds.
    let sa = h.stream(|b| store(b, EXTRA + 0x20, 0x11));
    let sb = h.stream(|b| store(b, DATA + 0x204, 0x22));
    let chain = h.e().sync_create(SyncKind::Timeline, false).unwrap();
    h.e()
        .group_submit(
            g,
            vec![
                H::job(
                    sa,
                    0,
                    vec![SyncOp::wait(tl, 2), SyncOp::signal(chain, 7)],
                    20,
                ),
                H::job(sb, 1, vec![SyncOp::wait(chain, 7)], 21),
            ],
        )
        .unwrap();
    assert!(h.quiet_for(Duration::from_millis(50)).is_empty());
    h.w32(flag - CODE, 1);
    h.e().memory_changed().unwrap();
    assert_eq!(h.bind_done(10), Ok(()));
    assert_eq!(h.bind_done(11), Ok(()));
    assert_eq!(h.job_done(20).1, Ok(()));
    assert_eq!(h.job_done(21).1, Ok(()));
    let b10 = h.position(|e| matches!(e, EngineEvent::BindDone { user_data: 10, .. }));
    let b11 = h.position(|e| matches!(e, EngineEvent::BindDone { user_data: 11, .. }));
    let j20 = h.position(|e| matches!(e, EngineEvent::JobDone { user_data: 20, .. }));
    let j21 = h.position(|e| matches!(e, EngineEvent::JobDone { user_data: 21, .. }));
    assert!(b10 < b11 && b11 < j20 && j20 < j21);
    // The later MAP replaced the earlier one: page 1 got the write.
    assert_eq!(h.r32(EXTRA_GPA + 4096 + 0x20), 0x11);
    assert_eq!(h.r32(EXTRA_GPA + 0x20), 0);
    assert_eq!(h.r32(DATA - CODE + 0x204), 0x22);
}

#[test]
fn bind_failing_at_run_time_signals_errors_and_unmap_still_works() {
    let mut h = H::new();
    let vm = h.vm();
    let g = h.group(vm, 2);
    let gate = h.e().sync_create(SyncKind::Binary, false).unwrap();
    let out = h.e().sync_create(SyncKind::Binary, false).unwrap();
    let flag = DATA + 0x300;
    let s0 = h.stream(|b| wait_gt(b, flag, 0));
    h.e()
        .group_submit(g, vec![H::job(s0, 1, vec![SyncOp::signal(gate, 0)], 1)])
        .unwrap();
    h.e()
        .vm_bind(
            vm,
            vec![
                map_extra(
                    &h,
                    0,
                    EXTRA,
                    vec![SyncOp::wait(gate, 0), SyncOp::signal(out, 0)],
                ),
                BindRequest {
                    op: BindOp::Unmap {
                        va: CODE + 15 * MIB,
                        size: MIB,
                    },
                    syncs: vec![],
                },
            ],
            BindMode::Async { user_data: 2 },
        )
        .unwrap();
    h.e().sync_wait(out, 0, WaitFlags::NONE, 3).unwrap();
    // Meanwhile a job on queue 0 faults on unmapped memory: the VM becomes
    // unusable while the MAP is still queued.
    let wild = h.stream(|b| store(b, 0x7000_0000, 1));
    h.e()
        .group_submit(g, vec![H::job(wild, 0, vec![], 4)])
        .unwrap();
    assert_eq!(h.job_done(4).1, Err(libc::EINVAL));
    h.wait_for(
        "VmUnusable",
        |e| matches!(e, EngineEvent::Firmware(FwEvent::VmUnusable { vm: Some(v) }) if *v == vm),
    );
    assert_eq!(h.e().vm_state(vm).unwrap(), VmState::Unusable);
    // Job 0 died with its group: its SIGNAL on `gate` carries the error,
    // which releases the bind; the MAP then fails on the unusable VM.
    assert_eq!(h.job_done(1).1, Err(libc::ECANCELED));
    assert_eq!(h.bind_done(2), Err(libc::EINVAL));
    assert_eq!(h.wait_done(3), Err(libc::EINVAL));
    // New MAPs are refused at once; UNMAPs still work.
    let e = h
        .e()
        .vm_bind(vm, vec![map_extra(&h, 0, EXTRA, vec![])], BindMode::Sync)
        .unwrap_err();
    assert_eq!(e.errno(), libc::EINVAL);
    h.e()
        .vm_bind(
            vm,
            vec![BindRequest {
                op: BindOp::Unmap {
                    va: CODE,
                    size: MIB,
                },
                syncs: vec![],
            }],
            BindMode::Async { user_data: 5 },
        )
        .unwrap();
    assert_eq!(h.bind_done(5), Ok(()));
}

#[test]
fn argument_errors_are_synchronous_and_change_nothing() {
    let mut cfg = config();
    cfg.max_jobs_per_queue = 2;
    let mut h = H::with(cfg);
    let vm = h.vm();
    let g = h.group(vm, 1);
    let s = h.stream(|b| store(b, DATA, 1));
    let mut bad = s;
    bad.stream_addr += 8;
    let errno = |r: Result<(), EngineError>| r.unwrap_err().errno();
    assert_eq!(
        errno(
            h.e()
                .group_submit(g, vec![H::job(s, 0, vec![], 1), H::job(bad, 0, vec![], 2)])
        ),
        libc::EINVAL
    );
    let unsignalled = h.e().sync_create(SyncKind::Binary, false).unwrap();
    let r = h
        .e()
        .group_submit(g, vec![H::job(s, 0, vec![SyncOp::wait(unsignalled, 0)], 3)]);
    assert_eq!(errno(r), libc::EINVAL, "waiting on an unsubmitted syncobj");
    let r = h
        .e()
        .group_submit(g, vec![H::job(s, 0, vec![SyncOp::wait(999, 0)], 4)]);
    assert_eq!(errno(r), libc::ENOENT);
    let r = h.e().group_submit(
        g,
        vec![H::job(s, 0, vec![SyncOp::signal(unsignalled, 5)], 5)],
    );
    assert_eq!(errno(r), libc::EINVAL, "binary syncobj with a point");
    let tl = h.e().sync_create(SyncKind::Timeline, false).unwrap();
    let r = h.e().group_submit(
        g,
        vec![
            H::job(s, 0, vec![SyncOp::signal(tl, 3)], 6),
            H::job(s, 0, vec![SyncOp::signal(tl, 3)], 7),
        ],
    );
    assert_eq!(errno(r), libc::EINVAL, "timeline points must increase");
    assert!(
        h.quiet_for(Duration::from_millis(20)).is_empty(),
        "nothing ran"
    );
    assert_eq!(
        h.e().sync_query(tl).unwrap(),
        SyncState::Timeline {
            value: 0,
            last_submitted: 0
        }
    );
    // Too many jobs outstanding on one queue.
    let park = h.stream(|b| wait_gt(b, DATA + 0x400, 0));
    h.e()
        .group_submit(g, vec![H::job(park, 0, vec![], 8), H::job(s, 0, vec![], 9)])
        .unwrap();
    let e = h
        .e()
        .group_submit(g, vec![H::job(s, 0, vec![], 10)])
        .unwrap_err();
    assert_eq!((e, e.errno()), (EngineError::Busy, libc::EAGAIN));
    let e = h
        .e()
        .group_submit(g, vec![H::job(s, 0, vec![], 11), H::job(s, 0, vec![], 12)])
        .unwrap_err();
    assert_eq!(
        e,
        EngineError::Busy,
        "counted per queue for several jobs too"
    );
    // Sync op decoding.
    assert_eq!(
        SyncOp::from_uapi(2, 1, 0).unwrap_err().errno(),
        libc::EINVAL
    );
    assert_eq!(
        SyncOp::from_uapi(1 << 8, 1, 0).unwrap_err().errno(),
        libc::EINVAL
    );
    assert_eq!(
        SyncOp::from_uapi(0, 1, 4).unwrap_err().errno(),
        libc::EINVAL
    );
    assert_eq!(
        SyncOp::from_uapi(SYNC_OP_SIGNAL | 1, 7, 4).unwrap(),
        SyncOp::signal(7, 4)
    );
    // VM_BIND errors.
    let r = h.e().vm_bind(
        vm,
        vec![map_extra(&h, 0, EXTRA, vec![SyncOp::signal(tl, 1)])],
        BindMode::Sync,
    );
    assert_eq!(errno(r), libc::EINVAL, "syncs on a synchronous bind");
    let r = h.e().vm_bind(
        vm,
        vec![
            map_extra(&h, 0, EXTRA, vec![]),
            map_extra(&h, 0, EXTRA + 8, vec![]),
        ],
        BindMode::Async { user_data: 1 },
    );
    assert!(matches!(r, Err(EngineError::BindOp { index: 1, .. })));
    let r = h.e().vm_bind(
        vm,
        vec![BindRequest {
            op: BindOp::SyncOnly,
            syncs: vec![],
        }],
        BindMode::Async { user_data: 1 },
    );
    assert_eq!(errno(r), libc::EINVAL);
    assert_eq!(
        errno(h.e().vm_bind(77, vec![], BindMode::Async { user_data: 1 })),
        libc::EINVAL
    );
    let e = h
        .e()
        .vm_bind(
            vm,
            vec![
                map_extra(&h, 0, EXTRA, vec![]),
                map_extra(&h, 0, 1 << 47, vec![]),
            ],
            BindMode::Sync,
        )
        .unwrap_err();
    assert!(matches!(e, EngineError::Bind(b) if b.completed == 1));
    assert_eq!(
        h.e().group_state(99).unwrap_err(),
        EngineError::Fw(FwError::NoSuchGroup(99))
    );
}

/// `kick` on an idle engine runs the pass on the calling thread: a short
/// job's event arrives before it returns. A stream that runs on gets only
/// the inline budget there (a slice of the configured budget would hold
/// the caller for seconds) and goes on on the engine thread, which times
/// it out.
#[test]
fn kick_runs_short_work_inline_and_leaves_long_work_to_the_thread() {
    let mut cfg = config();
    // A slice of tenths of a second, at the interpreter's speed.
    cfg.firmware.slice_budget = 50_000_000;
    cfg.firmware.job_timeout_ns = 200_000_000;
    let mut h = H::with(cfg);
    let vm = h.vm();
    let g = h.group(vm, 1);
    let short = h.stream(|b| store(b, DATA + 0x600, 6));
    let long = h.stream(endless);
    // Let the thread finish the pass that answered group_create.
    std::thread::sleep(Duration::from_millis(50));
    h.e()
        .group_submit_posted(g, vec![H::job(short, 0, vec![], 1)])
        .unwrap();
    assert!(h.e().kick().unwrap(), "the engine was idle");
    match h.events.try_recv() {
        Ok(EngineEvent::JobDone {
            user_data: 1,
            result,
            ..
        }) => assert_eq!(result, Ok(())),
        other => panic!("expected the job's event before kick returned, got {other:?}"),
    }
    let mut v = [0u8; 4];
    h.mem
        .read_slice(&mut v, GuestAddress(DATA + 0x600 - CODE))
        .unwrap();
    assert_eq!(u32::from_le_bytes(v), 6);
    std::thread::sleep(Duration::from_millis(50));
    let g2 = h.group(vm, 1);
    std::thread::sleep(Duration::from_millis(50));
    h.e()
        .group_submit_posted(g2, vec![H::job(long, 0, vec![], 2)])
        .unwrap();
    let t = std::time::Instant::now();
    assert!(h.e().kick().unwrap());
    let inline = t.elapsed();
    assert!(
        inline < Duration::from_millis(100),
        "an inline pass of 16 x 4096 instructions took {inline:?}"
    );
    assert!(h.events.try_recv().is_err(), "the loop is still running");
    assert_eq!(h.job_done(2).1, Err(libc::ETIMEDOUT));
}

#[test]
fn endless_job_times_out_through_the_timer() {
    let mut cfg = config();
    cfg.firmware.job_timeout_ns = 100_000_000;
    let mut h = H::with(cfg);
    let vm = h.vm();
    let g = h.group(vm, 1);
    let other = h.group(vm, 1);
    let s = h.stream(endless);
    h.e()
        .group_submit(g, vec![H::job(s, 0, vec![], 1)])
        .unwrap();
    // The loop is preempted between slices: other work still gets through.
    let fine = h.stream(|b| store(b, DATA + 0x500, 5));
    h.e()
        .group_submit(other, vec![H::job(fine, 0, vec![], 2)])
        .unwrap();
    assert_eq!(h.job_done(2).1, Ok(()));
    assert_eq!(h.job_done(1).1, Err(libc::ETIMEDOUT));
    let st = h.e().group_state(g).unwrap();
    assert!(st.timedout);
    h.wait_for(
        "GroupStateChanged",
        |e| matches!(e, EngineEvent::Firmware(FwEvent::GroupStateChanged { group, .. }) if *group == g),
    );
    assert_eq!(
        h.e()
            .group_submit(g, vec![H::job(fine, 0, vec![], 3)])
            .unwrap_err()
            .errno(),
        libc::EINVAL
    );
}

#[test]
fn group_destroy_cancels_held_and_running_jobs() {
    let mut h = H::new();
    let vm = h.vm();
    let g = h.group(vm, 1);
    let never = h.e().sync_create(SyncKind::Timeline, false).unwrap();
    let gate = h.e().sync_create(SyncKind::Timeline, false).unwrap();
    let park = h.stream(|b| wait_gt(b, DATA + 0x600, 0));
    h.e()
        .group_submit(
            g,
            vec![
                H::job(park, 0, vec![SyncOp::signal(gate, 1)], 1),
                H::job(
                    park,
                    0,
                    vec![SyncOp::wait(gate, 1), SyncOp::signal(never, 1)],
                    2,
                ),
            ],
        )
        .unwrap();
    h.e().sync_wait(never, 1, WaitFlags::NONE, 3).unwrap();
    h.e().group_destroy(g).unwrap();
    assert_eq!(h.job_done(1).1, Err(libc::ECANCELED));
    assert_eq!(h.job_done(2), (0, Err(libc::ECANCELED)));
    assert_eq!(h.wait_done(3), Err(libc::ECANCELED));
    assert_eq!(h.e().group_destroy(g).unwrap_err().errno(), libc::EINVAL);
}

#[test]
fn shutdown_with_jobs_in_flight_and_binds_pending() {
    let mut h = H::new();
    let vm = h.vm();
    let g = h.group(vm, 2);
    let gate = h.e().sync_create(SyncKind::Binary, false).unwrap();
    let after = h.e().sync_create(SyncKind::Timeline, false).unwrap();
    let heap = h
        .e()
        .heap_create(HeapCreate {
            vm,
            initial_chunk_count: 1,
            chunk_size: 128 << 10,
            max_chunks: 2,
            target_in_flight: 1,
        })
        .unwrap();
    assert_eq!(heap.handle, (vm << 16) | 1);
    // In flight: an endless loop and a parked job; held: a job waiting for
    // a bind; pending: the bind, waiting for the endless loop.
    let spin = h.stream(endless);
    let park = h.stream(|b| wait_gt(b, DATA + 0x700, 0));
    h.e()
        .group_submit(
            g,
            vec![
                H::job(spin, 0, vec![SyncOp::signal(gate, 0)], 1),
                H::job(park, 1, vec![], 2),
            ],
        )
        .unwrap();
    h.e()
        .vm_bind(
            vm,
            vec![map_extra(
                &h,
                0,
                EXTRA,
                vec![SyncOp::wait(gate, 0), SyncOp::signal(after, 1)],
            )],
            BindMode::Async { user_data: 3 },
        )
        .unwrap();
    h.e()
        .group_submit(g, vec![H::job(park, 1, vec![SyncOp::wait(after, 1)], 4)])
        .unwrap();
    h.e().sync_wait(after, 1, WaitFlags::NONE, 5).unwrap();
    assert!(h.quiet_for(Duration::from_millis(30)).is_empty());
    assert!(h.kmem.0.lock().unwrap().used() > 0);
    h.engine.take().unwrap().shutdown();
    // Every piece of pending work was reported, with an error.
    assert_eq!(h.job_done(1).1, Err(libc::ECANCELED));
    assert_eq!(h.job_done(2).1, Err(libc::ECANCELED));
    assert_eq!(h.job_done(4), (0, Err(libc::ECANCELED)));
    assert_eq!(h.bind_done(3), Err(libc::ECANCELED));
    assert_eq!(h.wait_done(5), Err(libc::ECANCELED));
    // Nothing leaked: all kernel memory is back, the callback is gone.
    assert_eq!(h.kmem.0.lock().unwrap().used(), 0);
    loop {
        match h.events.recv_timeout(WAIT) {
            Ok(_) => continue,
            Err(RecvTimeoutError::Disconnected) => break,
            Err(RecvTimeoutError::Timeout) => panic!("the engine thread is still alive"),
        }
    }
}

#[test]
fn dropping_the_engine_shuts_it_down() {
    let mut h = H::new();
    let vm = h.vm();
    let g = h.group(vm, 1);
    let park = h.stream(|b| wait_gt(b, DATA + 0x800, 0));
    h.e()
        .group_submit(g, vec![H::job(park, 0, vec![], 1)])
        .unwrap();
    drop(h.engine.take());
    assert_eq!(h.job_done(1).1, Err(libc::ECANCELED));
    assert_eq!(h.kmem.0.lock().unwrap().used(), 0);
}

#[test]
fn posted_submits_run_after_a_ring_and_refusals_are_events() {
    let mut h = H::new();
    let vm = h.vm();
    let g = h.group(vm, 1);
    let job = h.stream(|b| store(b, CODE + 0x80_0000, 9));
    // Posted without a ring; one ring covers both.
    h.e()
        .group_submit_posted(g, vec![H::job(job, 0, vec![], 41)])
        .unwrap();
    h.e()
        .group_submit_posted(g, vec![H::job(job, 0, vec![], 42)])
        .unwrap();
    h.e().ring().unwrap();
    assert_eq!(h.job_done(41).1, Ok(()));
    assert_eq!(h.job_done(42).1, Ok(()));
    assert_eq!(h.r32(0x80_0000), 9);
    // A queue the group does not have: refused as group_submit would be,
    // reported with the first job's user_data, and no job runs.
    let refused = h
        .e()
        .group_submit(g, vec![H::job(job, 3, vec![], 1)])
        .unwrap_err();
    h.e()
        .group_submit_posted(g, vec![H::job(job, 3, vec![], 43)])
        .unwrap();
    h.e().ring().unwrap();
    let ev = h.wait_for("SubmitRejected", |e| {
        matches!(e, EngineEvent::SubmitRejected { .. })
    });
    assert_eq!(
        ev,
        EngineEvent::SubmitRejected {
            user_data: 43,
            group: g,
            error: refused,
        }
    );
    assert!(!h
        .quiet_for(Duration::from_millis(50))
        .iter()
        .any(|e| matches!(e, EngineEvent::JobDone { user_data: 43, .. })));
}

#[test]
fn a_bo_a_queued_map_is_about_to_map_is_refused_as_kernel_memory() {
    let mut h = H::new();
    let (vm, kernel_start) = h.vm_and_kernel_start();
    // A job blocked on a flag signals the gate the MAP waits for.
    let g = h.group(vm, 1);
    let flag = DATA + 0x300;
    let gate = h.gate_on_flag(g, 0, flag, 1);
    h.map_extra_after(vm, gate, 10);
    // The MAP waits for the gate; the BO is already promised to the VM.
    let err = h
        .e()
        .map_kernel_memory(vm, h.extra.clone(), kernel_start)
        .unwrap_err();
    assert_eq!(err.errno(), libc::EBUSY);
    h.w32(flag - CODE, 1);
    h.e().memory_changed().unwrap();
    assert_eq!(h.job_done(1).1, Ok(()));
    assert_eq!(h.bind_done(10), Ok(()));
    // Mapped now: still refused.
    let err = h
        .e()
        .map_kernel_memory(vm, h.extra.clone(), kernel_start)
        .unwrap_err();
    assert_eq!(err.errno(), libc::EBUSY);
    // A BO nobody maps or is about to map is accepted.
    let free = Arc::new(
        Bo::new(
            [GuestRange {
                addr: GuestAddress(20 * MIB),
                len: MIB,
            }],
            &*h.mem,
            None,
            &BoLimits::default(),
        )
        .unwrap(),
    );
    h.e().map_kernel_memory(vm, free, kernel_start).unwrap();
}
