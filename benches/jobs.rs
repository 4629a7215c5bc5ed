//! Fenced no-op jobs through the GPU engine thread.
//!
//! Each job is a one-instruction user stream (a NOP) run through Panthor's
//! ring wrapper, with a SIGNAL of a timeline syncobj point as its fence;
//! its completion is the engine's `JobDone` event, delivered by the
//! engine's callback to the measuring thread over a channel.
//!
//! Cases:
//! - `command round trip (GROUP_GET_STATE)`: the floor of any engine call,
//!   a command to the engine thread and its answer;
//! - `latency, 1 in flight`: submit one job, wait for its event, repeat
//!   (`JOBS_LATENCY_ITERS`, default 20 000); p50, p99 and mean of
//!   submit → event;
//! - `throughput, 64 per batch`: one GROUP_SUBMIT of 64 jobs, wait for the
//!   64 events, repeat (`JOBS_BATCHES`, default 2 000 batches);
//! - `throughput, 64 per batch, 4 batches in flight`: the same with up to
//!   four batches outstanding.
//!
//! Run with `cargo bench --bench jobs`.

use std::sync::mpsc::{channel, Receiver};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vhost_user_mali::gpu::cs::Builder;
use vhost_user_mali::gpu::engine::{
    BindMode, BindRequest, Engine, EngineConfig, EngineEvent, QueueSubmit, SyncOp,
};
use vhost_user_mali::gpu::firmware::{
    FwConfig, GroupCreate, JobSubmit, PageAllocator, QueueCreate,
};
use vhost_user_mali::gpu::interp::TimingModel;
use vhost_user_mali::gpu::mmu::{BindOp, Bo, BoLimits, GuestRange, MapFlags};
use vhost_user_mali::gpu::model::GpuModel;
use vhost_user_mali::gpu::sync::SyncKind;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const MIB: u64 = 1 << 20;
const CODE: u64 = 0x1000_0000;
const BATCH: usize = 64;

struct Bench {
    engine: Engine,
    events: Receiver<EngineEvent>,
    group: u32,
    timeline: u32,
    point: u64,
    stream: JobSubmit,
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn setup() -> Bench {
    let mem = Arc::new(
        GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 64 * MIB as usize)])
            .expect("guest memory"),
    );
    let kmem = PageAllocator::new(32 * MIB, 32 * MIB).expect("kernel memory");
    let (tx, events) = channel();
    let config = EngineConfig {
        firmware: FwConfig {
            timing: TimingModel::ZERO,
            ..FwConfig::default()
        },
        ..EngineConfig::default()
    };
    let engine = Engine::spawn(
        mem.clone(),
        kmem,
        GpuModel::g610(),
        config,
        Box::new(move |e| {
            let _ = tx.send(e);
        }),
    )
    .expect("engine");
    let bo = Arc::new(
        Bo::new([GuestRange::new(0, MIB)], &*mem, None, &BoLimits::default()).expect("BO"),
    );
    let (vm, _) = engine.vm_create(0).expect("VM");
    engine
        .vm_bind(
            vm,
            vec![BindRequest {
                op: BindOp::Map {
                    bo,
                    bo_offset: 0,
                    va: CODE,
                    size: MIB,
                    flags: MapFlags::EMPTY,
                },
                syncs: vec![],
            }],
            BindMode::Sync,
        )
        .expect("bind");
    let mut b = Builder::new();
    b.nop();
    let code = b.to_bytes().expect("stream");
    mem.write_slice(&code, GuestAddress(0)).expect("write");
    let group = engine
        .group_create(GroupCreate {
            queues: vec![QueueCreate {
                priority: 0,
                ringbuf_size: 64 << 10,
            }],
            max_compute_cores: 1,
            max_fragment_cores: 1,
            max_tiler_cores: 1,
            priority: 1,
            compute_core_mask: 1,
            fragment_core_mask: 1,
            tiler_core_mask: 1,
            vm,
            privileged: false,
        })
        .expect("group");
    let timeline = engine
        .sync_create(SyncKind::Timeline, false)
        .expect("syncobj");
    Bench {
        engine,
        events,
        group,
        timeline,
        point: 0,
        stream: JobSubmit {
            queue: 0,
            stream_addr: CODE,
            stream_size: code.len() as u32,
            latest_flush: 0,
            tag: 0,
        },
    }
}

impl Bench {
    fn jobs(&mut self, n: usize) -> Vec<QueueSubmit> {
        (0..n)
            .map(|_| {
                self.point += 1;
                QueueSubmit {
                    job: self.stream,
                    syncs: vec![SyncOp::signal(self.timeline, self.point)],
                    user_data: self.point,
                }
            })
            .collect()
    }

    fn submit(&mut self, n: usize) {
        let jobs = self.jobs(n);
        self.engine.group_submit(self.group, jobs).expect("submit");
    }

    /// Waits for `n` job completions.
    fn wait(&self, n: usize) {
        let mut left = n;
        while left > 0 {
            match self.events.recv_timeout(Duration::from_secs(10)) {
                Ok(EngineEvent::JobDone { result, .. }) => {
                    assert_eq!(result, Ok(()), "job failed");
                    left -= 1;
                }
                Ok(other) => panic!("unexpected event {other:?}"),
                Err(e) => panic!("no completion: {e}"),
            }
        }
    }
}

fn percentiles(name: &str, mut times: Vec<Duration>) {
    times.sort();
    let n = times.len();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let mean = times.iter().sum::<Duration>() / n as u32;
    println!(
        "{name:<44} p50 {:>7.1} us  p99 {:>7.1} us  mean {:>7.1} us  ({n} samples)",
        us(times[n / 2]),
        us(times[n * 99 / 100]),
        us(mean),
    );
}

fn round_trip(b: &Bench, iters: usize) {
    let mut times = Vec::with_capacity(iters);
    for _ in 0..iters {
        let t = Instant::now();
        b.engine.group_state(b.group).expect("state");
        times.push(t.elapsed());
    }
    percentiles("command round trip (GROUP_GET_STATE)", times);
}

fn latency(b: &mut Bench, iters: usize) {
    // Warm up.
    for _ in 0..1000 {
        b.submit(1);
        b.wait(1);
    }
    let mut times: Vec<Duration> = Vec::with_capacity(iters);
    for _ in 0..iters {
        let t = Instant::now();
        b.submit(1);
        b.wait(1);
        times.push(t.elapsed());
    }
    percentiles("latency, 1 in flight", times);
}

fn throughput(b: &mut Bench, batches: usize, in_flight: usize) {
    b.submit(BATCH);
    b.wait(BATCH);
    let t = Instant::now();
    let mut outstanding = 0;
    for _ in 0..batches {
        if outstanding == in_flight {
            b.wait(BATCH);
            outstanding -= 1;
        }
        b.submit(BATCH);
        outstanding += 1;
    }
    b.wait(BATCH * outstanding);
    let d = t.elapsed();
    let jobs = batches * BATCH;
    let name = if in_flight == 1 {
        "throughput, 64 per batch".to_string()
    } else {
        format!("throughput, 64 per batch, {in_flight} batches in flight")
    };
    println!(
        "{name:<44} {:>9.0} jobs/s  {:>6.2} us/job  ({jobs} jobs in {:.1} ms)",
        jobs as f64 / d.as_secs_f64(),
        d.as_secs_f64() * 1e6 / jobs as f64,
        d.as_secs_f64() * 1e3
    );
}

fn main() {
    let iters = env_usize("JOBS_LATENCY_ITERS", 20_000);
    let batches = env_usize("JOBS_BATCHES", 2_000);
    let mut b = setup();
    round_trip(&b, iters);
    latency(&mut b, iters);
    throughput(&mut b, batches, 1);
    throughput(&mut b, batches, 4);
    b.engine.shutdown();
}
