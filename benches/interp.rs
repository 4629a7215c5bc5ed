//! Command-stream interpreter throughput on register-only loops.
//!
//! Cases (each a countdown of `INTERP_ITERS` iterations, default 20 M):
//! - `add+branch`: ADD_IMM32 r0, r0, -1; BRANCH.ne r0 (2 instructions per
//!   iteration), in one slice;
//! - `alu4+branch`: four ALU instructions (ADD_IMM32, ADD_IMM64, UMIN32,
//!   MOVE32) and the branch;
//! - `add+branch, 10k slices`: the first loop preempted every 10 000
//!   instructions, as a firmware scheduling slices would run it.
//!
//! Each case runs several times; the median rate is printed in millions of
//! instructions per second with its ratio to the 200 M/s target.
//!
//! Run with `cargo bench --bench interp`.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vhost_user_mali::gpu::cs::{Builder, Cond};
use vhost_user_mali::gpu::interp::{ExecEnv, Stop, StreamState, TimingModel};
use vhost_user_mali::gpu::mmu::{BindOp, Bo, BoLimits, GpuVm, GuestRange, MapFlags, VmLimits};
use vm_memory::{GuestAddress, GuestMemoryMmap};

const MIB: u64 = 1 << 20;
const CODE: u64 = 0x1000_0000;
const TARGET_MIPS: f64 = 200.0;
const RUNS: usize = 7;

struct Env {
    vm: GpuVm,
    mem: GuestMemoryMmap<()>,
    start: Instant,
}

impl ExecEnv for Env {
    type Mem = GuestMemoryMmap<()>;

    fn memory(&mut self) -> (&mut GpuVm, &Self::Mem) {
        (&mut self.vm, &self.mem)
    }

    fn now_ns(&mut self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }
}

fn env() -> Env {
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 4 * MIB as usize)])
        .expect("guest memory");
    let bo = Arc::new(
        Bo::new(
            [GuestRange::new(MIB, MIB)],
            &mem,
            None,
            &BoLimits::default(),
        )
        .expect("BO"),
    );
    let mut vm = GpuVm::new(0, VmLimits::default()).expect("VM");
    vm.bind(&[BindOp::Map {
        bo,
        bo_offset: 0,
        va: CODE,
        size: MIB,
        flags: MapFlags::NOEXEC,
    }])
    .expect("map");
    Env {
        vm,
        mem,
        start: Instant::now(),
    }
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A countdown loop of `iters` iterations with `extra` ALU instructions
/// before the decrement; returns the words and the instruction count.
fn countdown(iters: u32, extra: bool) -> (Vec<u64>, u64) {
    let mut b = Builder::new();
    b.move32(0, iters);
    let top = b.label_here();
    if extra {
        b.add_imm32(2, 2, 3);
        b.add_imm64(4, 4, -1);
        b.umin32(6, 2, 0);
        b.move32(7, 9);
    }
    b.add_imm32(0, 0, -1);
    b.branch_to(Cond::Ne, 0, top);
    let words = b.finish().expect("stream");
    let body = if extra { 6 } else { 2 };
    (words, 1 + u64::from(iters) * body)
}

fn measure(name: &str, words: &[u64], instructions: u64, slice: u64) {
    let mut env = env();
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    env.vm
        .write_bytes(&env.mem, CODE, &bytes)
        .expect("write stream");
    let end = CODE + bytes.len() as u64;
    let mut times = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        let mut s = StreamState::v10(TimingModel::ZERO);
        s.start_linear(CODE, end).expect("stream");
        let t = Instant::now();
        loop {
            match s.run(&mut env, slice) {
                Stop::Done => break,
                Stop::Preempted => continue,
                other => panic!("{name}: unexpected stop {other:?}"),
            }
        }
        let d = t.elapsed();
        assert_eq!(s.stats().instructions, instructions);
        black_box(s.reg(0));
        times.push(d);
    }
    times.sort();
    let median: Duration = times[times.len() / 2];
    let mips = instructions as f64 / median.as_secs_f64() / 1e6;
    println!(
        "{name:<24} {instructions:>11} instr  {:>8.2} ms  {mips:>7.1} M instr/s  ({:.2}x the {TARGET_MIPS:.0} M/s target)",
        median.as_secs_f64() * 1e3,
        mips / TARGET_MIPS
    );
}

fn main() {
    let iters = env_usize("INTERP_ITERS", 20_000_000) as u32;
    let (simple, n_simple) = countdown(iters, false);
    let (alu, n_alu) = countdown(iters / 3, true);
    measure("add+branch", &simple, n_simple, u64::MAX);
    measure("alu4+branch", &alu, n_alu, u64::MAX);
    measure("add+branch, 10k slices", &simple, n_simple, 10_000);
}
