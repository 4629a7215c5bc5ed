//! The transport floor: round trips through the echo back end over a real
//! vhost-user socket, driver and device threads in one process.
//!
//! Measures, in each CPU placement (unpinned; driver and device pinned to
//! the same CPU; pinned to different CPUs):
//! - one request in flight (64-byte request, 64-byte response) on the bare
//!   driver queue: add chain, kick, sleep on the call eventfd, read used;
//!   once with precise waits (a kernel timer per sleep) and once with coarse
//!   waits (no timer; the closest to the raw transport);
//! - the same through `TestVmm::request` (arena buffers, poisoning, copies);
//! - throughput with 64 requests per kick.
//!
//! `cargo bench --bench transport`; `TRANSPORT_ITERS` (default 20000) sets
//! the round trips per measurement and `TRANSPORT_BATCHES` (default 2000) the
//! batches of 64.

use std::io;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use vhost_user_mali::testvmm::{spawn_echo_daemon, Buf, EchoDaemon, TestVmm, VmmConfig, WaitMode};

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

/// One request in flight on the bare driver queue.
fn bare_round_trips(vmm: &mut TestVmm, n: usize) -> Vec<u64> {
    let req = vmm.alloc(MSG as u64, 64).expect("alloc");
    let resp = vmm.alloc(MSG as u64, 64).expect("alloc");
    vmm.write_guest(req, &[0x42; MSG]).expect("write");
    let chain = [
        Buf::readable(req, MSG as u32),
        Buf::writable(resp, MSG as u32),
    ];
    let q = vmm.queue(0);
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        q.add_chain(&chain).expect("add_chain");
        q.kick().expect("kick");
        let used = q.wait_used(WAIT).expect("echo timed out");
        out.push(t.elapsed().as_nanos() as u64);
        assert_eq!(used.len as usize, MSG);
    }
    out
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

/// Requests per second with `BATCH` requests per kick.
fn batched_throughput(vmm: &mut TestVmm, batches: usize) -> f64 {
    let mut chains = Vec::with_capacity(BATCH);
    for _ in 0..BATCH {
        let req = vmm.alloc(MSG as u64, 64).expect("alloc");
        let resp = vmm.alloc(MSG as u64, 64).expect("alloc");
        chains.push([
            Buf::readable(req, MSG as u32),
            Buf::writable(resp, MSG as u32),
        ]);
    }
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
    bare_round_trips(&mut vmm, WARMUP);
    print_latency(
        "round trip, precise wait",
        &stats(bare_round_trips(&mut vmm, iters)),
    );
    vmm.reset_alloc();
    // The rest without a kernel timer per sleep (see WaitMode).
    for q in 0..vmm.num_queues() {
        vmm.queue(q).set_wait_mode(COARSE).expect("wait mode");
    }
    bare_round_trips(&mut vmm, WARMUP);
    print_latency(
        "round trip, coarse wait",
        &stats(bare_round_trips(&mut vmm, iters)),
    );
    vmm.reset_alloc();
    request_round_trips(&mut vmm, WARMUP);
    print_latency(
        "request(), coarse wait",
        &stats(request_round_trips(&mut vmm, iters)),
    );
    vmm.reset_alloc();
    batched_throughput(&mut vmm, batches / 10 + 1);
    let rps = batched_throughput(&mut vmm, batches);
    println!(
        "  {:<28} {:>7.2} M requests/s ({} batches)",
        format!("{BATCH} per kick, coarse wait"),
        rps / 1e6,
        batches
    );
    let s = daemon.stats();
    println!(
        "  device: {} chains, {} wake-ups, {} calls",
        s.chains, s.events, s.notifications
    );
    drop(vmm);
    drop(daemon);
    let _ = std::fs::remove_file(&path);
    set_affinity(&all).expect("restore affinity");
}

fn main() {
    let iters = env_usize("TRANSPORT_ITERS", 20_000).max(1);
    let batches = env_usize("TRANSPORT_BATCHES", 2_000).max(1);
    let cpus = get_affinity().unwrap_or_default();
    println!(
        "transport floor: echo back end, {MSG}-byte request and response, {iters} round trips \
         after {WARMUP} warm-up, CPUs {cpus:?}"
    );
    run("unpinned", None, None, iters, batches);
    if let Some(&c0) = cpus.first() {
        run("pinned, same CPU", Some(c0), Some(c0), iters, batches);
        if let Some(&c1) = cpus.get(1) {
            run("pinned, different CPUs", Some(c0), Some(c1), iters, batches);
        }
    }
}
