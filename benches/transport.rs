//! The transport floor and the virtio-gpu device measured against it in the
//! same run: round trips over a real vhost-user socket, driver and device
//! threads in one process.
//!
//! Measures, in each CPU placement (unpinned; driver and device pinned to
//! the same CPU; pinned to different CPUs):
//! - the echo back end (the floor): one request in flight (64-byte request,
//!   64-byte response) on the bare driver queue: add chain, kick, sleep on
//!   the call eventfd, read used; once with precise waits (a kernel timer per
//!   sleep) and once with coarse waits (no timer; the closest to the raw
//!   transport); the same through `TestVmm::request`; throughput with 64
//!   requests per kick;
//! - the daemon's virtio-gpu device, started in this process: GET_DISPLAY_INFO
//!   (24-byte request, 408-byte response) and a fenced SUBMIT_3D carrying one
//!   native NOP, one in flight, and GET_DISPLAY_INFO at 64 per kick;
//! - a fenced no-op GPU job (a SUBMIT_3D with one GROUP_SUBMIT of a 64-byte
//!   NOP stream, completed from the engine thread when the job has run): one
//!   in flight (p50, p99) and 64 per kick; and 64 such GROUP_SUBMITs packed
//!   in one fenced SUBMIT_3D per kick. Each is printed as a ratio to the
//!   echo figure of the same placement and wait mode. Pinned, the job
//!   latency and the two batched job rates are measured in 8 rounds
//!   alternating with the echo floor (which stays up), and their ratio is
//!   the median of the rounds' ratios (the latency's p99 is over all
//!   rounds, against the rounds' median echo p50); unpinned, where each
//!   round could land in another placement, against the floor measured
//!   first.
//!
//! `cargo bench --bench transport`; `TRANSPORT_ITERS` (default 20000) sets
//! the round trips per measurement and `TRANSPORT_BATCHES` (default 2000) the
//! batches of 64. `TRANSPORT_CASES=jobs` measures only the echo figures the
//! ratios need and the GPU jobs (for profiling them);
//! `TRANSPORT_CASES=job-batch` and `echo-batch` measure only the GPU jobs
//! 64 per kick, or only the echo floor 64 per kick, with driver and device
//! on the first CPU (for counting instructions per request, see
//! docs/PERFORMANCE.md).
//! `TRANSPORT_COUNT_ALLOCS=1` also prints the heap allocations per request
//! of the batched figures (the whole process: driver and device), counted
//! over 200 more batches run untimed after each timed one.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use vhost_user_mali::gpu::cs::Builder;
use vhost_user_mali::testvmm::gpu_driver::{
    ctx_hdr, fenced, hdr, with_tail, GpuDriver, InProcessDaemon, ALL_GPU_FEATURES,
};
use vhost_user_mali::testvmm::{spawn_echo_daemon, Buf, EchoDaemon, TestVmm, VmmConfig, WaitMode};
use vhost_user_mali::uapi::codec::{encode, CommandWriter};
use vhost_user_mali::uapi::native::{
    BoCreateReq, GroupCreateReq, GroupSubmitReq, InitReq, QueueCreate, QueueSubmit,
    VmAddKernelMemoryReq, VmBindOp, VmBindReq, VmCreateReq, VM_BIND_OP_TYPE_MAP,
};
use vhost_user_mali::uapi::native::{NativeCmdHdr, NATIVE_CMD_NOP};
use vhost_user_mali::virtio_gpu::control::GpuConfig;
use vhost_user_mali::virtio_gpu::protocol::{cmd, CmdSubmit, CtrlHdr, RespDisplayInfo};
use vm_memory::ByteValued;

/// The system allocator, counting allocations while `COUNTING` is set.
struct CountingAlloc;

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

fn count_allocation() {
    if COUNTING.load(Ordering::Relaxed) {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: every call is passed on unchanged to the system allocator, which
// upholds the GlobalAlloc contract; counting touches no memory it returns.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count_allocation();
        // SAFETY: the caller's contract for `alloc` is passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count_allocation();
        // SAFETY: the caller's contract for `alloc_zeroed` is passed on.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count_allocation();
        // SAFETY: the caller's contract for `realloc` is passed on.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract for `dealloc` is passed on.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: CountingAlloc = CountingAlloc;

/// Allocations per request during `f`, which handles `requests` requests,
/// if `TRANSPORT_COUNT_ALLOCS` is set.
fn allocations_per<T>(requests: usize, f: impl FnOnce() -> T) -> (T, Option<f64>) {
    if std::env::var_os("TRANSPORT_COUNT_ALLOCS").is_none() {
        return (f(), None);
    }
    ALLOCATIONS.store(0, Ordering::Relaxed);
    COUNTING.store(true, Ordering::Relaxed);
    let r = f();
    COUNTING.store(false, Ordering::Relaxed);
    let n = ALLOCATIONS.load(Ordering::Relaxed) as f64 / requests.max(1) as f64;
    (r, Some(n))
}

/// The printed form of [`allocations_per`]'s count.
fn allocs_note(n: Option<f64>) -> String {
    n.map(|n| format!(", {n:.1} allocations per request"))
        .unwrap_or_default()
}

const WARMUP: usize = 2_000;
const BATCH: usize = 64;
const MSG: usize = 64;
const WAIT: Duration = Duration::from_secs(2);
const COARSE: WaitMode = WaitMode::Coarse(Duration::from_millis(10));

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// CPUs the calling thread may run on.
fn get_affinity() -> io::Result<Vec<usize>> {
    // SAFETY: an all-zero cpu_set_t is a valid empty set; sched_getaffinity
    // writes at most size_of::<cpu_set_t>() bytes into the set we own, and
    // CPU_ISSET only reads bits below CPU_SETSIZE of that set.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok((0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .collect())
    }
}

/// Restricts the calling thread (and threads it creates later) to `cpus`.
fn set_affinity(cpus: &[usize]) -> io::Result<()> {
    if cpus.iter().any(|&c| c >= libc::CPU_SETSIZE as usize) {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    // SAFETY: as in get_affinity; every cpu index was checked to be below
    // CPU_SETSIZE, and sched_setaffinity only reads the set.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &c in cpus {
            libc::CPU_SET(c, &mut set);
        }
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

struct Stats {
    p50: f64,
    p99: f64,
    p999: f64,
    max: f64,
    mean: f64,
}

fn stats(mut ns: Vec<u64>) -> Stats {
    ns.sort_unstable();
    let at = |q: f64| ns[((ns.len() as f64 * q) as usize).min(ns.len() - 1)] as f64 / 1000.0;
    Stats {
        p50: at(0.50),
        p99: at(0.99),
        p999: at(0.999),
        max: *ns.last().unwrap_or(&0) as f64 / 1000.0,
        mean: ns.iter().sum::<u64>() as f64 / ns.len() as f64 / 1000.0,
    }
}

fn print_latency(label: &str, s: &Stats) {
    println!(
        "  {label:<28} p50 {:>7.2} us  p99 {:>7.2} us  p99.9 {:>7.2} us  max {:>8.1} us  mean {:>6.2} us",
        s.p50, s.p99, s.p999, s.max, s.mean
    );
}

/// A chain of `req` (copied into fresh guest memory) and a writable
/// buffer of `resp_len` bytes.
fn request_chain(vmm: &mut TestVmm, req: &[u8], resp_len: usize) -> [Buf; 2] {
    let req_addr = vmm.alloc(req.len() as u64, 64).expect("alloc");
    let resp = vmm.alloc(resp_len as u64, 64).expect("alloc");
    vmm.write_guest(req_addr, req).expect("write");
    [
        Buf::readable(req_addr, req.len() as u32),
        Buf::writable(resp, resp_len as u32),
    ]
}

/// One request in flight on the bare driver queue: `req` in, a response of
/// `resp_len` bytes expected back.
fn round_trips(vmm: &mut TestVmm, req: &[u8], resp_len: usize, n: usize) -> Vec<u64> {
    let chain = request_chain(vmm, req, resp_len);
    let q = vmm.queue(0);
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        q.add_chain(&chain).expect("add_chain");
        q.kick().expect("kick");
        let used = q.wait_used(WAIT).expect("request timed out");
        out.push(t.elapsed().as_nanos() as u64);
        assert_eq!(used.len as usize, resp_len);
    }
    out
}

fn bare_round_trips(vmm: &mut TestVmm, n: usize) -> Vec<u64> {
    round_trips(vmm, &[0x42; MSG], MSG, n)
}

/// One request in flight through the convenience layer.
fn request_round_trips(vmm: &mut TestVmm, n: usize) -> Vec<u64> {
    let msg = [0x17u8; MSG];
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let r = vmm.request(0, &msg, MSG, WAIT).expect("request");
        out.push(t.elapsed().as_nanos() as u64);
        assert_eq!(r.len(), MSG);
    }
    out
}

/// Requests per second with `BATCH` copies of `req` per kick.
fn batched(vmm: &mut TestVmm, req: &[u8], resp_len: usize, batches: usize) -> f64 {
    let chains: Vec<[Buf; 2]> = (0..BATCH)
        .map(|_| request_chain(vmm, req, resp_len))
        .collect();
    let q = vmm.queue(0);
    let t = Instant::now();
    for _ in 0..batches {
        for c in &chains {
            q.add_chain(c).expect("add_chain");
        }
        q.kick().expect("kick");
        let got = q.wait_used_many(BATCH, WAIT);
        assert_eq!(got.len(), BATCH, "batch timed out");
    }
    (batches * BATCH) as f64 / t.elapsed().as_secs_f64()
}

/// With `TRANSPORT_COUNT_ALLOCS`, the allocations per request of 200
/// more batches like [`batched`]'s, run untimed after it.
fn batched_allocations(vmm: &mut TestVmm, req: &[u8], resp_len: usize) -> String {
    const BATCHES: usize = 200;
    allocs_note(allocations_per(BATCHES * BATCH, || batched(vmm, req, resp_len, BATCHES)).1)
}

fn batched_throughput(vmm: &mut TestVmm, batches: usize) -> f64 {
    batched(vmm, &[0x42; MSG], MSG, batches)
}

/// A fenced SUBMIT_3D to context 1 carrying one native NOP.
fn fenced_nop() -> Vec<u8> {
    let nop = NativeCmdHdr {
        cmd: NATIVE_CMD_NOP,
        len: 16,
        seqno: 0,
        rsp_off: 0,
    };
    let mut h = fenced(cmd::SUBMIT_3D, 1, 1, Some(0));
    h.type_ = cmd::SUBMIT_3D;
    with_tail(
        &CmdSubmit {
            hdr: h,
            size: 16,
            num_in_fences: 0,
        },
        nop.as_slice(),
    )
}

/// The virtio-gpu device, measured like the echo floor; prints each figure
/// with its ratio to `floor` (echo p50 one in flight, echo requests/s).
/// The daemon is started from the calling thread, so its threads take the
/// caller's CPU placement; the driver then moves to `driver_pin`.
fn gpu_device(
    iters: usize,
    batches: usize,
    floor: (f64, f64),
    echo: Option<&mut TestVmm>,
    driver_pin: &[usize],
) {
    let daemon = InProcessDaemon::start(GpuConfig::default()).expect("daemon");
    let mut g = GpuDriver::connect(&daemon.socket, ALL_GPU_FEATURES).expect("connect");
    set_affinity(driver_pin).expect("pin driver");
    assert_eq!(
        g.ctx_create(1, 6, "bench").expect("ctx"),
        cmd::RESP_OK_NODATA
    );
    let vmm = &mut g.vmm;
    for q in 0..vmm.num_queues() {
        vmm.queue(q).set_wait_mode(COARSE).expect("wait mode");
    }
    if jobs_only() {
        gpu_jobs(&mut g, iters, batches, floor, echo);
        return;
    }
    let info_req = hdr(cmd::GET_DISPLAY_INFO);
    let info_len = std::mem::size_of::<RespDisplayInfo>();
    let hdr_len = std::mem::size_of::<CtrlHdr>();
    let cases: [(&str, Vec<u8>, usize); 2] = [
        ("GET_DISPLAY_INFO", info_req.as_slice().to_vec(), info_len),
        ("fenced SUBMIT_3D (NOP)", fenced_nop(), hdr_len),
    ];
    for (label, req, resp_len) in &cases {
        round_trips(vmm, req, *resp_len, WARMUP);
        let s = stats(round_trips(vmm, req, *resp_len, iters));
        print_latency(&format!("{label}, coarse wait"), &s);
        println!(
            "  {:<28} p50 {:.2}x the echo round trip",
            "",
            s.p50 / floor.0
        );
        vmm.reset_alloc();
    }
    batched(vmm, info_req.as_slice(), info_len, batches / 10 + 1);
    let rps = batched(vmm, info_req.as_slice(), info_len, batches);
    let allocs = batched_allocations(vmm, info_req.as_slice(), info_len);
    println!(
        "  {:<28} {:>7.2} M requests/s, {:.2}x echo{allocs}",
        format!("GET_DISPLAY_INFO {BATCH}/kick"),
        rps / 1e6,
        rps / floor.1
    );
    gpu_jobs(&mut g, iters, batches, floor, echo);
}

/// Runs `cmds` in one unfenced SUBMIT_3D on context `ctx`.
fn native(g: &mut GpuDriver, ctx: u32, cmds: &[Vec<u8>]) {
    let buf: Vec<u8> = cmds.concat();
    let code = g.submit_3d(ctx_hdr(0, ctx), &buf).expect("submit");
    assert_eq!(code, cmd::RESP_OK_NODATA);
}

/// Fenced no-op GPU jobs: context 2 gets a VM, a 64-byte stream of NOPs
/// mapped at `DATA_VA` and a one-queue group; each request is a fenced
/// SUBMIT_3D with one GROUP_SUBMIT, which completes when the job has run
/// through the firmware's ring (wrapper, CALL, sequence-number update).
fn gpu_jobs(
    g: &mut GpuDriver,
    iters: usize,
    batches: usize,
    floor: (f64, f64),
    echo: Option<&mut TestVmm>,
) {
    const DATA_VA: u64 = 0x100_0000;
    let ctx = 2;
    assert_eq!(
        g.ctx_create(ctx, 6, "jobs").expect("ctx"),
        cmd::RESP_OK_NODATA
    );
    let (c0, _) = g.create_guest_blob(ctx, 101, 4096).expect("blob");
    let (c1, data) = g.create_guest_blob(ctx, 102, 64 << 10).expect("blob");
    let (c2, _) = g.create_guest_blob(ctx, 103, 256 << 10).expect("blob");
    assert!([c0, c1, c2].iter().all(|&c| c == cmd::RESP_OK_NODATA));
    let mut b = Builder::new();
    b.pad_to(8);
    g.vmm
        .write_guest(data, &b.to_bytes().expect("stream"))
        .expect("write");
    let mut bind = CommandWriter::<VmBindReq>::new(0, 0);
    let ops = bind.array(&[VmBindOp {
        flags: VM_BIND_OP_TYPE_MAP,
        bo_handle: 1,
        va: DATA_VA,
        size: 64 << 10,
        ..Default::default()
    }]);
    let mut group = CommandWriter::<GroupCreateReq>::new(0, 0);
    let queues = group.array(&[QueueCreate {
        priority: 1,
        pad: [0; 3],
        ringbuf_size: 65536,
    }]);
    native(
        g,
        ctx,
        &[
            encode(
                &InitReq {
                    rsp_res_id: 101,
                    num_rings: 4,
                    rsp_size: 4096,
                },
                1,
                0,
            ),
            encode(&VmCreateReq::default(), 2, 0),
            encode(
                &BoCreateReq {
                    res_id: 102,
                    handle: 1,
                    ..Default::default()
                },
                3,
                0,
            ),
            encode(
                &BoCreateReq {
                    res_id: 103,
                    handle: 2,
                    ..Default::default()
                },
                4,
                0,
            ),
            encode(
                &VmAddKernelMemoryReq {
                    vm_id: 1,
                    bo_handle: 2,
                },
                5,
                0,
            ),
            bind.finish(&VmBindReq {
                vm_id: 1,
                flags: 0,
                ops,
            }),
            group.finish(&GroupCreateReq {
                queues,
                max_compute_cores: 1,
                max_fragment_cores: 1,
                max_tiler_cores: 1,
                priority: 1,
                compute_core_mask: 1,
                fragment_core_mask: 1,
                tiler_core_mask: 1,
                vm_id: 1,
                handle: 1,
                ..Default::default()
            }),
        ],
    );
    // A GROUP_SUBMIT of one job; no response (rsp_off 0).
    let group_submit = |seqno: u32| {
        let mut w = CommandWriter::<GroupSubmitReq>::new(seqno, 0);
        let subs = w.array(&[QueueSubmit {
            queue_index: 0,
            stream_size: 64,
            stream_addr: DATA_VA,
            ..Default::default()
        }]);
        w.finish(&GroupSubmitReq {
            group_handle: 1,
            pad: 0,
            queue_submits: subs,
        })
    };
    // A fenced SUBMIT_3D carrying `cmds`, on the group queue's ring (the
    // VM's bind queue has ring 1, the group's queue ring 2).
    let submit = |cmds: &[u8]| {
        let mut h = fenced(cmd::SUBMIT_3D, ctx, 1, Some(2));
        h.type_ = cmd::SUBMIT_3D;
        with_tail(
            &CmdSubmit {
                hdr: h,
                size: cmds.len() as u32,
                num_in_fences: 0,
            },
            cmds,
        )
    };
    let req = submit(&group_submit(8));
    let packed: Vec<u8> = (0..BATCH as u32)
        .flat_map(|i| group_submit(8 + i))
        .collect();
    let packed_req = submit(&packed);
    let hdr_len = std::mem::size_of::<CtrlHdr>();
    let vmm = &mut g.vmm;
    let label = "fenced no-op GPU job";
    if cases() == Cases::JobBatch {
        let jps = batched(vmm, &req, hdr_len, batches);
        println!("  GPU jobs {BATCH}/kick {:.3} M jobs/s", jps / 1e6);
        return;
    }
    round_trips(vmm, &req, hdr_len, WARMUP / 4);
    let mut echo = echo;
    let (s, ratios, echo_p50) = latency_against_echo(echo.as_deref_mut(), floor.0, iters, |n| {
        round_trips(vmm, &req, hdr_len, n)
    });
    print_latency(&format!("{label}, coarse wait"), &s);
    let range = match ratios.as_slice() {
        [lo, .., hi] => format!(
            " (p50: median of {} alternating rounds, {lo:.2}x to {hi:.2}x)",
            ratios.len()
        ),
        _ => String::new(),
    };
    println!(
        "  {:<28} p50 {:.2}x, p99 {:.2}x the echo round trip (p50){range}",
        "",
        ratios[ratios.len() / 2],
        s.p99 / echo_p50
    );
    batched(vmm, &req, hdr_len, batches / 10 + 1);
    let r = against_echo(echo.as_deref_mut(), floor.1, batches, |n| {
        batched(vmm, &req, hdr_len, n)
    });
    let allocs = batched_allocations(vmm, &req, hdr_len);
    print_rate(&format!("GPU jobs {BATCH}/kick"), &r, &allocs);
    // The same jobs packed as 64 GROUP_SUBMITs in one fenced SUBMIT_3D per
    // kick: the per-request costs (chain, SUBMIT_3D, fence) once per 64.
    packed_batches(vmm, &packed_req, hdr_len, batches / 10 + 1);
    let r = against_echo(echo, floor.1, batches, |n| {
        packed_batches(vmm, &packed_req, hdr_len, n)
    });
    print_rate(&format!("GPU jobs {BATCH}/SUBMIT_3D"), &r, "");
}

/// Rounds of a batched rate measured alternately with the echo floor.
const ROUNDS: usize = 8;

/// A batched rate against the echo floor: (median rate, each round's ratio
/// to the echo round just before it, sorted). With the echo back end at
/// hand, in [`ROUNDS`] alternating rounds of `batches / ROUNDS` batches
/// each, so that a slow spell of the machine slows both sides of a round
/// (measuring the floor once and the rate later puts it on one side only);
/// else one round against `floor`, measured earlier.
fn against_echo(
    echo: Option<&mut TestVmm>,
    floor: f64,
    batches: usize,
    mut rate: impl FnMut(usize) -> f64,
) -> (f64, Vec<f64>) {
    let Some(echo) = echo else {
        let r = rate(batches);
        return (r, vec![r / floor]);
    };
    let per = (batches / ROUNDS).max(1);
    let mut rates = Vec::with_capacity(ROUNDS);
    let mut ratios = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        let floor = batched_throughput(echo, per);
        let r = rate(per);
        rates.push(r);
        ratios.push(r / floor);
    }
    rates.sort_by(f64::total_cmp);
    ratios.sort_by(f64::total_cmp);
    (rates[ROUNDS / 2], ratios)
}

/// One-in-flight round trips against the echo floor: (their stats, each
/// round's p50 ratio to the echo round just before it, sorted, and the
/// median echo p50). With the echo back end at hand, in [`ROUNDS`]
/// alternating rounds of `iters / ROUNDS` round trips each, as
/// [`against_echo`] does for rates; else one round against `floor_p50`.
fn latency_against_echo(
    echo: Option<&mut TestVmm>,
    floor_p50: f64,
    iters: usize,
    mut trips: impl FnMut(usize) -> Vec<u64>,
) -> (Stats, Vec<f64>, f64) {
    let Some(echo) = echo else {
        let s = stats(trips(iters));
        let ratio = s.p50 / floor_p50;
        return (s, vec![ratio], floor_p50);
    };
    let per = (iters / ROUNDS).max(1);
    let mut all = Vec::with_capacity(per * ROUNDS);
    let mut ratios = Vec::with_capacity(ROUNDS);
    let mut floors = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        let floor = stats(bare_round_trips(echo, per)).p50;
        let ns = trips(per);
        ratios.push(stats(ns.clone()).p50 / floor);
        floors.push(floor);
        all.extend(ns);
    }
    ratios.sort_by(f64::total_cmp);
    floors.sort_by(f64::total_cmp);
    (stats(all), ratios, floors[ROUNDS / 2])
}

/// Prints an [`against_echo`] result: the (median) rate and ratio, and the
/// rounds' range if there were several.
fn print_rate(label: &str, (rate, ratios): &(f64, Vec<f64>), allocs: &str) {
    let range = match ratios.as_slice() {
        [lo, .., hi] => format!(
            " (median of {} alternating rounds, {lo:.2}x to {hi:.2}x)",
            ratios.len()
        ),
        _ => String::new(),
    };
    println!(
        "  {label:<28} {:>7.3} M jobs/s, {:.2}x echo{range}{allocs}",
        rate / 1e6,
        ratios[ratios.len() / 2],
    );
}

/// Jobs per second with one chain of `BATCH` jobs per kick.
fn packed_batches(vmm: &mut TestVmm, req: &[u8], resp_len: usize, batches: usize) -> f64 {
    let chain = request_chain(vmm, req, resp_len);
    let q = vmm.queue(0);
    let t = Instant::now();
    for _ in 0..batches {
        q.add_chain(&chain).expect("add_chain");
        q.kick().expect("kick");
        let got = q.wait_used_many(1, WAIT);
        assert_eq!(got.len(), 1, "batch timed out");
    }
    (batches * BATCH) as f64 / t.elapsed().as_secs_f64()
}

fn socket_path(tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!("transport-bench-{}-{tag}.sock", std::process::id()))
}

/// Runs every measurement with the device threads on `device_cpu` and the
/// driver on `driver_cpu` (`None`: wherever the scheduler likes).
fn run(
    label: &str,
    device_cpu: Option<usize>,
    driver_cpu: Option<usize>,
    iters: usize,
    batches: usize,
) {
    let all = get_affinity().expect("sched_getaffinity");
    // Threads inherit the affinity of the thread that creates them, so the
    // daemon's threads (created by spawn_echo_daemon) land on device_cpu.
    if let Some(c) = device_cpu {
        set_affinity(&[c]).expect("pin device");
    }
    let tag: String = label
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let path = socket_path(&tag);
    let daemon: EchoDaemon = spawn_echo_daemon(&path).expect("echo daemon");
    let mut vmm = TestVmm::connect(&path, VmmConfig::default()).expect("connect");
    match driver_cpu {
        Some(c) => set_affinity(&[c]).expect("pin driver"),
        None => set_affinity(&all).expect("unpin"),
    }

    println!("{label}:");
    let floor = match cases() {
        Cases::EchoBatch => {
            vmm.queue(0).set_wait_mode(COARSE).expect("wait mode");
            let rps = batched_throughput(&mut vmm, batches);
            println!("  echo {BATCH} per kick {:.3} M requests/s", rps / 1e6);
            return;
        }
        // No ratio is printed, so no floor is measured.
        Cases::JobBatch => (0.0, 0.0),
        Cases::Jobs => brief_floor(&mut vmm, iters, batches),
        Cases::All => full_floor(&mut vmm, iters, batches, &daemon),
    };
    // The daemon's threads are created by the thread that starts it.
    if let Some(c) = device_cpu {
        set_affinity(&[c]).expect("pin device");
    }
    let driver_pin = driver_cpu.map(|c| vec![c]).unwrap_or_else(|| all.clone());
    // Pinned, the echo back end stays up: the batched job rates are
    // measured in rounds alternating with it. Unpinned, where each round
    // could land in another placement, against the floor measured above.
    let echo = (device_cpu.is_some() && cases() != Cases::JobBatch).then_some(&mut vmm);
    gpu_device(iters, batches, floor, echo, &driver_pin);
    drop(vmm);
    drop(daemon);
    let _ = std::fs::remove_file(&path);
    set_affinity(&all).expect("restore affinity");
}

/// The echo floor, measured and printed in full: (p50 of one in flight
/// with coarse waits, requests/s at 64 per kick).
fn full_floor(vmm: &mut TestVmm, iters: usize, batches: usize, daemon: &EchoDaemon) -> (f64, f64) {
    bare_round_trips(vmm, WARMUP);
    print_latency(
        "round trip, precise wait",
        &stats(bare_round_trips(vmm, iters)),
    );
    vmm.reset_alloc();
    // The rest without a kernel timer per sleep (see WaitMode).
    for q in 0..vmm.num_queues() {
        vmm.queue(q).set_wait_mode(COARSE).expect("wait mode");
    }
    bare_round_trips(vmm, WARMUP);
    let echo_p50 = {
        let s = stats(bare_round_trips(vmm, iters));
        print_latency("round trip, coarse wait", &s);
        s.p50
    };
    vmm.reset_alloc();
    request_round_trips(vmm, WARMUP);
    print_latency(
        "request(), coarse wait",
        &stats(request_round_trips(vmm, iters)),
    );
    vmm.reset_alloc();
    batched_throughput(vmm, batches / 10 + 1);
    let rps = batched_throughput(vmm, batches);
    let allocs = batched_allocations(vmm, &[0x42; MSG], MSG);
    println!(
        "  {:<28} {:>7.2} M requests/s ({} batches){allocs}",
        format!("{BATCH} per kick, coarse wait"),
        rps / 1e6,
        batches
    );
    let s = daemon.stats();
    println!(
        "  device: {} chains, {} wake-ups, {} calls",
        s.chains, s.events, s.notifications
    );
    (echo_p50, rps)
}

/// The two figures of the floor the ratios need, without the rest.
fn brief_floor(vmm: &mut TestVmm, iters: usize, batches: usize) -> (f64, f64) {
    vmm.queue(0).set_wait_mode(COARSE).expect("wait mode");
    bare_round_trips(vmm, WARMUP);
    let echo_p50 = stats(bare_round_trips(vmm, iters)).p50;
    vmm.reset_alloc();
    let rps = batched_throughput(vmm, batches);
    let allocs = batched_allocations(vmm, &[0x42; MSG], MSG);
    println!(
        "  echo p50 {echo_p50:.2} us, {:.2} M requests/s{allocs}",
        rps / 1e6
    );
    (echo_p50, rps)
}

/// What `TRANSPORT_CASES` selects (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cases {
    All,
    /// `jobs`: the echo figures the ratios need and the GPU jobs.
    Jobs,
    /// `job-batch`: only GPU jobs 64 per kick, driver and device on one
    /// CPU, with no ratio (for counting or profiling that case alone).
    JobBatch,
    /// `echo-batch`: only the echo floor 64 per kick, on one CPU.
    EchoBatch,
}

fn cases() -> Cases {
    match std::env::var("TRANSPORT_CASES").as_deref() {
        Ok("jobs") => Cases::Jobs,
        Ok("job-batch") => Cases::JobBatch,
        Ok("echo-batch") => Cases::EchoBatch,
        _ => Cases::All,
    }
}

/// Whether the device cases other than the GPU jobs are skipped.
fn jobs_only() -> bool {
    cases() != Cases::All
}

/// Whether one case alone is measured, on one CPU.
fn single_case() -> bool {
    matches!(cases(), Cases::JobBatch | Cases::EchoBatch)
}

fn main() {
    let iters = env_usize("TRANSPORT_ITERS", 20_000).max(1);
    let batches = env_usize("TRANSPORT_BATCHES", 2_000).max(1);
    let cpus = get_affinity().unwrap_or_default();
    println!(
        "transport floor: echo back end, {MSG}-byte request and response, {iters} round trips \
         after {WARMUP} warm-up, CPUs {cpus:?}"
    );
    if !single_case() {
        run("unpinned", None, None, iters, batches);
    }
    if let Some(&c0) = cpus.first() {
        run("pinned, same CPU", Some(c0), Some(c0), iters, batches);
        if let Some(&c1) = cpus.get(1).filter(|_| !single_case()) {
            run("pinned, different CPUs", Some(c0), Some(c1), iters, batches);
        }
    }
}
