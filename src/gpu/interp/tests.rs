//! Unit tests of the interpreter: per-instruction semantics, control flow
//! limits, scoreboards and time, sync objects and error propagation, job
//! validation, and the Panthor kernel ring wrapper end to end.

use std::sync::Arc;

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::*;
use crate::gpu::cs::{
    AsyncOp, Builder, Cond, CsState, FlushMode, HeapOp, IdvsSelect, Instr, OtherFlushMode,
    ShaderSelect, SyncCond, SyncScope, TaskAxis, TileOrder,
};
use crate::gpu::mmu::{Access, Bo, BoLimits, FaultKind, GpuVm, GuestRange, MapFlags, VmLimits};

const MIB: u64 = 1 << 20;
/// Read/write/exec mapping: code and data.
const CODE: u64 = 0x1000_0000;
const DATA: u64 = 0x1020_0000;
/// A read-only page and a no-execute page.
const RO: u64 = 0x3000_0000;
const NX: u64 = 0x3100_0000;
/// Never mapped.
const HOLE: u64 = 0x5000_0000;
const BIG: u64 = 1 << 40;

/// The firmware side, for tests.
struct TestEnv {
    vm: GpuVm,
    mem: GuestMemoryMmap<()>,
    bo: Arc<Bo>,
    now: u64,
    flush_id: u32,
    sync_writes: Vec<(u64, bool)>,
    runs: Vec<RunInfo>,
    cache_flushes: u32,
    progress: Option<u64>,
}

impl ExecEnv for TestEnv {
    type Mem = GuestMemoryMmap<()>;

    fn memory(&mut self) -> (&mut GpuVm, &Self::Mem) {
        (&mut self.vm, &self.mem)
    }

    fn now_ns(&mut self) -> u64 {
        self.now
    }

    fn timestamp(&mut self, now_ns: u64) -> u64 {
        now_ns + 7
    }

    fn cycle_count(&mut self, now_ns: u64) -> u64 {
        now_ns * 2
    }

    fn disjoint_count(&mut self) -> u64 {
        3
    }

    fn latest_flush_id(&mut self) -> u32 {
        self.flush_id
    }

    fn on_cache_flush(&mut self) {
        self.cache_flushes += 1;
    }

    fn on_sync_write(&mut self, addr: u64, written: Option<(u64, u32)>) {
        self.sync_writes.push((addr, written.is_some()));
    }

    fn on_run(&mut self, run: &RunInfo) {
        self.runs.push(*run);
    }

    fn progress(&mut self, _queue: u8) -> Option<u64> {
        self.progress
    }
}

impl TestEnv {
    fn new() -> Self {
        let mem =
            GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 16 * MIB as usize)]).unwrap();
        let bo = Arc::new(
            Bo::new(
                [GuestRange::new(4 * MIB, 8 * MIB)],
                &mem,
                None,
                &BoLimits::default(),
            )
            .unwrap(),
        );
        let mut env = TestEnv {
            vm: GpuVm::new(0, VmLimits::default()).unwrap(),
            mem,
            bo,
            now: 1_000,
            flush_id: 0,
            sync_writes: Vec::new(),
            runs: Vec::new(),
            cache_flushes: 0,
            progress: None,
        };
        env.map(0, CODE, 4 * MIB, MapFlags::EMPTY);
        env.map(4 * MIB, RO, 0x1000, MapFlags::READONLY);
        env.map(4 * MIB + 0x1000, NX, 0x1000, MapFlags::NOEXEC);
        env
    }

    fn map(&mut self, bo_offset: u64, va: u64, size: u64, flags: MapFlags) {
        self.vm
            .bind(&[crate::gpu::mmu::BindOp::Map {
                bo: self.bo.clone(),
                bo_offset,
                va,
                size,
                flags,
            }])
            .unwrap();
    }

    fn put(&mut self, va: u64, words: &[u64]) {
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        self.vm.write_bytes(&self.mem, va, &bytes).unwrap();
    }

    fn w32(&mut self, va: u64, v: u32) {
        self.vm.write_u32(&self.mem, va, v).unwrap();
    }

    fn w64(&mut self, va: u64, v: u64) {
        self.vm.write_u64(&self.mem, va, v).unwrap();
    }

    /// Writes through the guest-physical address (read-only mappings).
    fn poke32(&mut self, va: u64, v: u32) {
        let gpa = self.vm.translate_uncached(va, Access::Read).unwrap().gpa;
        self.mem.write_obj(v, gpa).unwrap();
    }

    fn r32(&mut self, va: u64) -> u32 {
        self.vm.read_u32(&self.mem, va).unwrap()
    }

    fn r64(&mut self, va: u64) -> u64 {
        self.vm.read_u64(&self.mem, va).unwrap()
    }
}

fn words(f: impl FnOnce(&mut Builder)) -> Vec<u64> {
    let mut b = Builder::new();
    f(&mut b);
    b.finish().unwrap()
}

fn stream(timing: TimingModel) -> StreamState {
    StreamState::v10(timing)
}

/// Loads `code` at `at` as a linear root buffer of a fresh stream.
fn load(env: &mut TestEnv, at: u64, code: &[u64], timing: TimingModel) -> StreamState {
    env.put(at, code);
    let mut s = stream(timing);
    s.start_linear(at, at + 8 * code.len() as u64).unwrap();
    s
}

/// Runs `code` at CODE to completion with zero durations.
fn exec(env: &mut TestEnv, code: &[u64]) -> (StreamState, Stop) {
    let mut s = load(env, CODE, code, TimingModel::ZERO);
    let stop = s.run(env, BIG);
    (s, stop)
}

fn fault(stop: Stop) -> CsFault {
    match stop {
        Stop::Fault(f) => f,
        other => panic!("expected a CS fault, got {other:?}"),
    }
}

fn mmu(stop: Stop) -> (crate::gpu::mmu::Fault, u64) {
    match stop {
        Stop::MmuFault { fault, ip } => (fault, ip),
        other => panic!("expected an MMU fault, got {other:?}"),
    }
}

// ---------------------------------------------------------------------
// Register instructions
// ---------------------------------------------------------------------

#[test]
fn move_and_add_wrap() {
    let mut env = TestEnv::new();
    let code = words(|b| {
        b.move48(0, 0xffff_1234_5678);
        b.move32(2, u32::MAX);
        b.add_imm32(3, 2, 1); // wraps to 0
        b.add_imm32(4, 2, -2); // 0xffff_fffd
        b.move48(6, 0x0000_ffff_ffff); // d6 = 0xffff_ffff
        b.add_imm64(8, 6, 1); // carry into the high word
        b.add_imm64(10, 6, -0x1_0000); // sign-extended immediate
        b.move48(12, 0);
        b.add_imm64(12, 12, -1); // 0 - 1 wraps to all ones
        b.move32(14, 5);
        b.move32(15, 0xffff_fff0);
        b.umin32(16, 14, 15); // unsigned min: 5
        b.umin32(17, 15, 15);
    });
    let (s, stop) = exec(&mut env, &code);
    assert_eq!(stop, Stop::Done);
    assert_eq!(s.reg64(0), 0xffff_1234_5678);
    assert_eq!(s.reg(1), 0xffff, "MOVE48 zero-extends into the high word");
    assert_eq!(s.reg(2), u32::MAX);
    assert_eq!(s.reg(3), 0);
    assert_eq!(s.reg(4), 0xffff_fffd);
    assert_eq!(s.reg64(8), 0x1_0000_0000);
    assert_eq!(s.reg64(10), 0xffff_ffff - 0x1_0000);
    assert_eq!(s.reg64(12), u64::MAX);
    assert_eq!(s.reg(16), 5);
    assert_eq!(s.reg(17), 0xffff_fff0);
    assert_eq!(s.stats().instructions, code.len() as u64);
}

#[test]
fn move48_high_half_cleared() {
    let mut env = TestEnv::new();
    let code = words(|b| {
        b.move32(1, 0xdead_beef);
        b.move48(0, 7);
    });
    let (s, _) = exec(&mut env, &code);
    assert_eq!(s.reg64(0), 7);
}

// ---------------------------------------------------------------------
// LOAD / STORE_MULTIPLE
// ---------------------------------------------------------------------

#[test]
fn load_multiple_uses_bit_positions() {
    let mut env = TestEnv::new();
    for i in 0..16u32 {
        env.w32(DATA + 0x100 + 4 * u64::from(i), 0x100 + i);
    }
    let code = words(|b| {
        b.move48(0, DATA + 0x110);
        b.load_multiple(20, 0b1000_0000_0010_0101, 0, -0x10);
        b.load_multiple(40, 0xffff, 0, -0x10);
    });
    let (s, stop) = exec(&mut env, &code);
    assert_eq!(stop, Stop::Done);
    assert_eq!(s.reg(20), 0x100);
    assert_eq!(s.reg(21), 0, "clear bits leave registers alone");
    assert_eq!(s.reg(22), 0x102);
    assert_eq!(s.reg(25), 0x105);
    assert_eq!(s.reg(35), 0x10f);
    for i in 0..16 {
        assert_eq!(s.reg(40 + i), 0x100 + i as u32);
    }
}

#[test]
fn store_multiple_sparse_mask_leaves_holes() {
    let mut env = TestEnv::new();
    for i in 0..8u64 {
        env.w32(DATA + 4 * i, 0xaaaa_0000 + i as u32);
    }
    let code = words(|b| {
        b.move48(0, DATA + 4);
        for i in 0..8u8 {
            b.move32(10 + i, 0x5000 + u32::from(i));
        }
        b.store_multiple(10, 0b1010_0101, 0, -4);
    });
    let (_, stop) = exec(&mut env, &code);
    assert_eq!(stop, Stop::Done);
    let got: Vec<u32> = (0..8u64).map(|i| env.r32(DATA + 4 * i)).collect();
    assert_eq!(
        got,
        [
            0x5000,
            0xaaaa_0001,
            0x5002,
            0xaaaa_0003,
            0xaaaa_0004,
            0x5005,
            0xaaaa_0006,
            0x5007
        ]
    );
}

#[test]
fn load_store_fault_on_unmapped() {
    let mut env = TestEnv::new();
    let code = words(|b| {
        b.move48(0, HOLE);
        b.move32(5, 9);
        b.load_multiple(4, 0b11, 0, 0x40);
    });
    let (mut s, stop) = exec(&mut env, &code);
    let (f, ip) = mmu(stop);
    assert_eq!(f.va, HOLE + 0x40);
    assert_eq!(f.access, Access::Read);
    assert!(matches!(f.kind, FaultKind::Translation { .. }));
    assert_eq!(ip, CODE + 16);
    assert_eq!(s.reg(5), 9, "no register written on a faulting load");
    assert_eq!(s.run(&mut env, BIG), stop, "halted");

    // A store into a read-only page: permission fault, write access.
    let code = words(|b| {
        b.move48(0, RO);
        b.store_multiple(4, 1, 0, 8);
    });
    let (_, stop) = exec(&mut env, &code);
    let (f, _) = mmu(stop);
    assert_eq!((f.va, f.access), (RO + 8, Access::Write));
    assert_eq!(f.kind, FaultKind::Permission { level: 3 });
}

#[test]
fn load_multiple_across_a_page_into_a_hole() {
    let mut env = TestEnv::new();
    let end_of_map = CODE + 4 * MIB;
    let code = words(|b| {
        b.move48(0, end_of_map - 8);
        b.load_multiple(4, 0b1001, 0, 0);
    });
    let (_, stop) = exec(&mut env, &code);
    let (f, _) = mmu(stop);
    assert_eq!(
        f.va,
        end_of_map + 4,
        "the word of bit 3 is the one unmapped"
    );
}

// ---------------------------------------------------------------------
// BRANCH
// ---------------------------------------------------------------------

#[test]
fn branch_conditions_are_signed() {
    let mut env = TestEnv::new();
    let cases = [
        (Cond::Le, [true, true, false]),
        (Cond::Gt, [false, false, true]),
        (Cond::Eq, [false, true, false]),
        (Cond::Ne, [true, false, true]),
        (Cond::Lt, [true, false, false]),
        (Cond::Ge, [false, true, true]),
        (Cond::Always, [true, true, true]),
    ];
    for (cond, expect) in cases {
        for (v, taken) in [0x8000_0000u32, 0, 1].into_iter().zip(expect) {
            let code = words(|b| {
                b.move32(0, v);
                b.move32(1, 0);
                b.branch(cond, 0, 1);
                b.move32(1, 1); // skipped when taken
            });
            let (s, stop) = exec(&mut env, &code);
            assert_eq!(stop, Stop::Done);
            assert_eq!(s.reg(1) == 0, taken, "{cond:?} {v:#x}");
        }
    }
}

#[test]
fn branch_to_the_ends_of_the_buffer() {
    let mut env = TestEnv::new();
    // Forward to exactly the end of the buffer: the stream ends there.
    let code = words(|b| {
        b.move32(0, 1);
        b.branch(Cond::Always, 0, 2);
        b.move32(2, 2);
        b.move32(3, 3);
    });
    let (s, stop) = exec(&mut env, &code);
    assert_eq!(stop, Stop::Done);
    assert_eq!((s.reg(2), s.reg(3)), (0, 0));

    // Backward to the very first instruction: a countdown loop that
    // re-executes instruction 0 through a branch of -3.
    let code = words(|b| {
        b.add_imm32(0, 0, 1); // r0 counts passes
        b.add_imm32(1, 1, -1);
        b.branch(Cond::Gt, 1, -3);
    });
    let mut s = load(&mut env, CODE, &code, TimingModel::ZERO);
    s.set_reg(1, 4);
    assert_eq!(s.run(&mut env, BIG), Stop::Done);
    assert_eq!(s.reg(0), 4);

    // One past the end, and one before the start: INSTR_INVALID_PC.
    for off in [3i16, -3] {
        let code = words(|b| {
            b.nop();
            b.branch(Cond::Always, 0, off);
            b.nop();
        });
        let (s, stop) = exec(&mut env, &code);
        let f = fault(stop);
        assert_eq!(f.exception_code, exception::INSTR_INVALID_PC);
        assert!(f.fatal);
        assert_eq!(f.ip, CODE + 8);
        let target = (CODE as i64 + 16 + 8 * i64::from(off)) as u64;
        assert_eq!(f.info, target);
        assert_eq!(
            f.reason,
            FaultReason::BranchOutOfBuffer {
                target,
                start: CODE,
                end: CODE + 24
            }
        );
        assert_eq!(s.ip(), CODE + 8);
    }

    // An untaken branch out of range is harmless.
    let code = words(|b| {
        b.move32(0, 0);
        b.branch(Cond::Ne, 0, i16::MIN);
    });
    assert_eq!(exec(&mut env, &code).1, Stop::Done);
}

#[test]
fn branch_inside_a_called_buffer_is_bounded_by_it() {
    let mut env = TestEnv::new();
    let callee = words(|b| {
        b.branch(Cond::Always, 0, 1); // lands on the end of the callee: return
        b.nop();
    });
    env.put(DATA, &callee);
    let code = words(|b| {
        b.move48(0, DATA);
        b.move32(2, 16);
        b.call(0, 2);
        b.move32(3, 33);
    });
    let (s, stop) = exec(&mut env, &code);
    assert_eq!(stop, Stop::Done);
    assert_eq!(s.reg(3), 33);

    // Branching from the callee back into its caller is refused.
    let callee = words(|b| {
        b.branch(Cond::Always, 0, -2);
    });
    env.put(DATA, &callee);
    let code = words(|b| {
        b.move48(0, DATA);
        b.move32(2, 8);
        b.call(0, 2);
    });
    let f = fault(exec(&mut env, &code).1);
    assert_eq!(f.exception_code, exception::INSTR_INVALID_PC);
    assert_eq!(f.ip, DATA);
}

// ---------------------------------------------------------------------
// CALL / JUMP
// ---------------------------------------------------------------------

/// Streams at DATA + k * 0x100 for k in 0..n: each sets r(10 + k), then
/// calls the next one (the last only sets its register).
fn call_chain(env: &mut TestEnv, n: usize) {
    for k in 0..n {
        let code = words(|b| {
            b.move32(10 + k as u8, 1);
            if k + 1 < n {
                b.move48(0, DATA + 0x100 * (k as u64 + 1));
                b.move32(2, 32);
                b.call(0, 2);
            } else {
                b.nop().nop().nop();
            }
        });
        assert_eq!(code.len(), 4);
        env.put(DATA + 0x100 * k as u64, &code);
    }
}

#[test]
fn call_depth_eight_frames_ok_nine_overflow() {
    let mut env = TestEnv::new();
    let root = words(|b| {
        b.move48(0, DATA);
        b.move32(2, 32);
        b.call(0, 2);
        b.move32(9, 99);
    });
    // Root + 7 nested streams = 8 frames.
    call_chain(&mut env, 7);
    let (s, stop) = exec(&mut env, &root);
    assert_eq!(stop, Stop::Done);
    assert_eq!(s.reg(9), 99);
    assert!((10..17).all(|r| s.reg(r) == 1));
    assert_eq!(s.frames(), 1);

    // Root + 8 nested streams would need 9 frames.
    call_chain(&mut env, 8);
    let (s, stop) = exec(&mut env, &root);
    let f = fault(stop);
    assert_eq!(f.exception_code, exception::CS_CALL_STACK_OVERFLOW);
    assert!(f.fatal);
    assert_eq!(f.ip, DATA + 0x100 * 6 + 24, "the CALL in the 8th frame");
    assert_eq!(f.reason, FaultReason::CallStackOverflow { max: 8 });
    assert_eq!(s.frames(), 8);
    assert_eq!(s.reg(16), 1);
    assert_eq!(s.reg(17), 0);
    assert!(s.halted().is_some());
}

#[test]
fn call_length_rules() {
    let mut env = TestEnv::new();
    // Length 0 returns at once.
    let code = words(|b| {
        b.move48(0, HOLE);
        b.move32(2, 0);
        b.call(0, 2);
        b.move32(3, 3);
    });
    let (s, stop) = exec(&mut env, &code);
    assert_eq!(stop, Stop::Done);
    assert_eq!(s.reg(3), 3);

    // A length that is not a multiple of 8.
    let code = words(|b| {
        b.move48(0, DATA);
        b.move32(2, 12);
        b.call(0, 2);
    });
    let f = fault(exec(&mut env, &code).1);
    assert_eq!(f.exception_code, exception::INSTR_INVALID_PC);
    assert_eq!(f.reason, FaultReason::MisalignedLength { length: 12 });
    assert_eq!(f.info, 12);

    // A misaligned target.
    let code = words(|b| {
        b.move48(0, DATA + 4);
        b.move32(2, 8);
        b.call(0, 2);
    });
    let f = fault(exec(&mut env, &code).1);
    assert_eq!(f.exception_code, exception::INSTR_INVALID_PC);
    assert_eq!(
        f.reason,
        FaultReason::MisalignedTarget { address: DATA + 4 }
    );

    // A buffer running off the address space (built with ADD_IMM64).
    let code = words(|b| {
        b.move48(0, 0);
        b.add_imm64(0, 0, -8);
        b.move32(2, 16);
        b.call(0, 2);
    });
    let f = fault(exec(&mut env, &code).1);
    assert_eq!(f.exception_code, exception::INSTR_INVALID_PC);
    assert!(matches!(f.reason, FaultReason::BufferWraps { .. }));

    // A CALL into unmapped memory faults on the fetch.
    let code = words(|b| {
        b.move48(0, HOLE);
        b.move32(2, 64);
        b.call(0, 2);
    });
    let (s, stop) = exec(&mut env, &code);
    let (f, ip) = mmu(stop);
    assert_eq!((f.va, ip, f.access), (HOLE, HOLE, Access::Read));
    assert_eq!(s.frames(), 2);
}

#[test]
fn jump_replaces_the_buffer_and_is_refused_at_the_root() {
    let mut env = TestEnv::new();
    let tail = words(|b| {
        b.move32(5, 55);
    });
    env.put(DATA + 0x200, &tail);
    let middle = words(|b| {
        b.move48(0, DATA + 0x200);
        b.move32(2, 8);
        b.jump(0, 2);
        b.move32(6, 66); // never runs
    });
    env.put(DATA, &middle);
    let root = words(|b| {
        b.move48(0, DATA);
        b.move32(2, 32);
        b.call(0, 2);
        b.move32(7, 77);
    });
    let (s, stop) = exec(&mut env, &root);
    assert_eq!(stop, Stop::Done);
    assert_eq!((s.reg(5), s.reg(6), s.reg(7)), (55, 0, 77));

    // JUMP of length 0 returns to the caller.
    let middle = words(|b| {
        b.move32(2, 0);
        b.jump(0, 2);
        b.move32(6, 66);
    });
    env.put(DATA, &middle);
    let (s, stop) = exec(&mut env, &root);
    assert_eq!(stop, Stop::Done);
    assert_eq!((s.reg(6), s.reg(7)), (0, 77));

    // From the root itself.
    let code = words(|b| {
        b.move48(0, DATA + 0x200);
        b.move32(2, 8);
        b.jump(0, 2);
    });
    let f = fault(exec(&mut env, &code).1);
    assert_eq!(f.exception_code, exception::CS_INSTR_INVALID);
    assert_eq!(f.reason, FaultReason::JumpFromRoot);
    assert_eq!(f.info, code[2]);
}

// ---------------------------------------------------------------------
// Invalid instructions
// ---------------------------------------------------------------------

#[test]
fn invalid_encodings_are_fatal() {
    let mut env = TestEnv::new();
    let bad = [
        0x0a00_0000_0000_0000u64, // opcode 10 is not v10
        0x0200_0001_0000_0000,    // MOVE32 with a reserved bit
        0x1600_0000_7000_0000,    // BRANCH condition 7
    ];
    for word in bad {
        let code = [Instr::Move32 { dst: 3, imm: 1 }.encode(), word];
        let (s, stop) = exec(&mut env, &code);
        let f = fault(stop);
        assert_eq!(f.exception_code, exception::INSTR_INVALID_ENC, "{word:#x}");
        assert!(f.fatal);
        assert_eq!((f.ip, f.info), (CODE + 8, word));
        assert!(matches!(f.reason, FaultReason::Decode(_)));
        assert_eq!(s.reg(3), 1, "the instruction before ran");
        assert_eq!(s.ip(), CODE + 8);
        assert!(stop.is_halted());
        assert_eq!(f.register_value(), 0x51);
    }
}

#[test]
fn missing_registers_and_slots_are_cs_instr_invalid() {
    let mut env = TestEnv::new();
    let cases = [
        Instr::Move32 { dst: 96, imm: 0 },
        Instr::Move48 { dst: 95, imm: 0 },
        Instr::LoadMultiple {
            base: 90,
            address: 0,
            mask: 0x40,
            offset: 0,
        },
        Instr::SetSbEntry {
            endpoint: 8,
            other: 0,
        },
        Instr::SyncAdd32 {
            error_propagate: false,
            scope: SyncScope::System,
            wait_mask: 0,
            data: 0,
            address: 2,
            signal_slot: 9,
        },
    ];
    for i in cases {
        let (_, stop) = exec(&mut env, &[i.encode()]);
        let f = fault(stop);
        assert_eq!(f.exception_code, exception::CS_INSTR_INVALID, "{i:?}");
        assert!(matches!(
            f.reason,
            FaultReason::Register(_) | FaultReason::ScoreboardSlot { .. }
        ));
    }
    // The same encodings exist on a model with more registers.
    let limits = CsLimits {
        reg_count: 128,
        scoreboards: 16,
        max_frames: 8,
    };
    let mut s = StreamState::new(limits, TimingModel::ZERO).unwrap();
    env.put(CODE, &[Instr::Move32 { dst: 100, imm: 5 }.encode()]);
    s.start_linear(CODE, CODE + 8).unwrap();
    assert_eq!(s.run(&mut env, BIG), Stop::Done);
    assert_eq!(s.reg(100), 5);
}

// ---------------------------------------------------------------------
// Budget and preemption
// ---------------------------------------------------------------------

#[test]
fn endless_loop_is_preempted_with_state_intact() {
    let mut env = TestEnv::new();
    let code = words(|b| {
        let top = b.label_here();
        b.add_imm32(0, 0, 1);
        b.branch_to(Cond::Always, 0, top);
    });
    let mut s = load(&mut env, CODE, &code, TimingModel::ZERO);
    for slice in 1..=5u32 {
        assert_eq!(s.run(&mut env, 1001), Stop::Preempted);
        // 1001 instructions per slice: the loop body is 2 instructions.
        let executed = 1001 * u64::from(slice);
        assert_eq!(s.stats().instructions, executed);
        assert_eq!(u64::from(s.reg(0)), executed.div_ceil(2));
        assert_eq!(s.ip(), CODE + 8 * (executed % 2));
    }
    assert_eq!(s.run(&mut env, 0), Stop::Preempted);
    assert_eq!(s.stats().instructions, 5005);
}

#[test]
fn nop_runs_count_one_instruction_each() {
    // 100 NOPs from 64 bytes before a page end (the first fill stops at
    // the page, the run goes on in the next fill), an add, 10 more NOPs
    // to the end of the buffer.
    let mut env = TestEnv::new();
    let start = DATA + 0x1000 - 64;
    let code = words(|b| {
        for _ in 0..100 {
            b.nop();
        }
        b.add_imm32(1, 1, 1);
        for _ in 0..10 {
            b.nop();
        }
    });
    let mut s = load(&mut env, start, &code, TimingModel::ZERO);
    // Budgets that stop inside a run: before the page end, on it, after.
    let mut done = 0u64;
    for budget in [3u64, 5, 30, 61] {
        assert_eq!(s.run(&mut env, budget), Stop::Preempted);
        done += budget;
        assert_eq!(s.stats().instructions, done);
        assert_eq!(s.ip(), start + 8 * done);
        assert_eq!(s.reg(1), 0);
    }
    // 99 run: one more NOP, the add, then the last run to the end.
    assert_eq!(s.run(&mut env, 2), Stop::Preempted);
    assert_eq!((s.ip(), s.reg(1)), (start + 8 * 101, 1));
    assert_eq!(s.run(&mut env, BIG), Stop::Done);
    assert_eq!(s.stats().instructions, 111);
    assert_eq!(s.reg(1), 1);
}

#[test]
fn streams_share_one_lent_pair_of_windows() {
    // Two countdown loops in different buffers, preempted in turns, both
    // fetching into one lent pair: each sees its own code, and neither
    // makes window buffers of its own.
    let mut env = TestEnv::new();
    let count = |r: u8| {
        words(|b| {
            b.move32(r, 1000);
            let top = b.label_here();
            b.add_imm32(r, r, -1);
            b.branch_to(Cond::Ne, r, top);
        })
    };
    let mut a = load(&mut env, CODE, &count(1), TimingModel::ZERO);
    let mut b = load(&mut env, CODE + 0x2000, &count(2), TimingModel::ZERO);
    let mut lent = Windows::default();
    let mut done = (false, false);
    while done != (true, true) {
        for (s, d) in [(&mut a, &mut done.0), (&mut b, &mut done.1)] {
            if !*d {
                *d = s.run_lent(&mut env, 97, &mut lent) == Stop::Done;
            }
        }
    }
    assert_eq!((a.reg(1), b.reg(2)), (0, 0));
    assert_eq!(a.stats().instructions, 2001);
    for s in [&a, &b] {
        assert!(s.window.ops.is_empty() && s.spare.ops.is_empty());
    }
    assert!(!lent.window.ops.is_empty());
}

#[test]
fn done_is_repeatable_and_empty_streams_end_at_once() {
    let mut env = TestEnv::new();
    let mut s = stream(TimingModel::ZERO);
    assert_eq!(s.run(&mut env, BIG), Stop::Done, "nothing programmed");
    s.start_linear(CODE, CODE).unwrap();
    assert_eq!(s.run(&mut env, 0), Stop::Done);
    let (mut s, stop) = exec(
        &mut env,
        &words(|b| {
            b.nop();
        }),
    );
    assert_eq!(stop, Stop::Done);
    assert_eq!(s.run(&mut env, BIG), Stop::Done);
}

#[test]
fn fetch_from_unmapped_memory_is_an_mmu_fault() {
    let mut env = TestEnv::new();
    let mut s = stream(TimingModel::ZERO);
    s.start_linear(HOLE + 0x18, HOLE + 0x40).unwrap();
    let (f, ip) = mmu(s.run(&mut env, BIG));
    assert_eq!(
        (f.va, ip, f.access),
        (HOLE + 0x18, HOLE + 0x18, Access::Read)
    );
    // The ring's NOEXEC mapping does not stop the fetch.
    env.put(
        NX,
        &words(|b| {
            b.move32(1, 1);
        }),
    );
    s.start_linear(NX, NX + 8).unwrap();
    assert_eq!(s.run(&mut env, BIG), Stop::Done);
    assert_eq!(s.reg(1), 1);
}

#[test]
fn stream_crossing_pages_and_self_modification() {
    let mut env = TestEnv::new();
    // 700 instructions starting near the end of a page.
    let start = DATA + 0xfc0;
    let code = words(|b| {
        for _ in 0..700 {
            b.add_imm32(0, 0, 1);
        }
    });
    let mut s = load(&mut env, start, &code, TimingModel::ZERO);
    assert_eq!(s.run(&mut env, BIG), Stop::Done);
    assert_eq!(s.reg(0), 700);
    // 8 words to the end of the first page, then fills of 64 words:
    // 8 for the second page, 3 for the last 180 words.
    assert_eq!(s.stats().fetches, 12);

    // A store over a later instruction is seen by the fetch.
    let patched = Instr::Move32 { dst: 7, imm: 2 }.encode();
    let code = words(|b| {
        b.move48(0, CODE + 24);
        b.store_multiple(2, 0b11, 0, 0);
        b.move32(6, 6);
        b.move32(7, 1); // overwritten before it runs
    });
    let mut s = load(&mut env, CODE, &code, TimingModel::ZERO);
    s.set_reg64(2, patched);
    assert_eq!(s.run(&mut env, BIG), Stop::Done);
    assert_eq!((s.reg(6), s.reg(7)), (6, 2));
}

// ---------------------------------------------------------------------
// Scoreboards, WAIT and modelled time
// ---------------------------------------------------------------------

/// A compute job with every descriptor mapped: SRT, FAU, SPD (with its
/// binary), TSD at DATA + 0x1000.., size x*y*z workgroups.
fn compute_setup(env: &mut TestEnv, b: &mut Builder, x: u32) {
    let spd = DATA + 0x1100;
    env.w64(spd + 8, DATA + 0x2000); // shader binary, executable
    b.move48(0, (DATA + 0x1000) | 2); // SRT, 2 entries
    b.move48(8, DATA + 0x1080); // FAU address...
    b.move32(9, 4 << 24); // ...with 4 words in bits 63:56
    b.move48(16, spd);
    b.move48(24, DATA + 0x1200);
    b.move32(37, x);
    b.move32(38, 1);
    b.move32(39, 1);
}

#[test]
fn run_signals_endpoint_and_wait_blocks_until_done() {
    let mut env = TestEnv::new();
    let timing = TimingModel {
        run_base_ns: 1_000,
        compute_ns_per_workgroup: 10,
        max_run_ns: 1_000_000,
        ..TimingModel::ZERO
    };
    let mut b = Builder::new();
    compute_setup(&mut env, &mut b, 50);
    b.set_sb_entry(3, 1);
    b.run_compute(1, TaskAxis::X, ShaderSelect::default(), true);
    b.run_compute(1, TaskAxis::X, ShaderSelect::default(), false);
    b.wait(0b1000);
    b.move32(90, 1);
    let code = b.finish().unwrap();
    let mut s = load(&mut env, CODE, &code, timing);
    env.now = 10_000;
    // Two jobs of 1500 ns back to back on the compute iterator.
    let stop = s.run(&mut env, BIG);
    assert_eq!(
        stop,
        Stop::Blocked(Block::Scoreboard {
            mask: 0b1000,
            until_ns: 13_000
        })
    );
    assert_eq!(s.ip(), CODE + 8 * (code.len() as u64 - 2), "on the WAIT");
    assert_eq!(s.scoreboard_status(10_000), 0b1000);
    assert_eq!(s.next_deadline_ns(), Some(13_000));
    assert_eq!(env.runs.len(), 2);
    assert_eq!(env.runs[0].units, 50);
    assert_eq!(
        (env.runs[0].start_ns, env.runs[0].done_ns),
        (10_000, 11_500)
    );
    assert_eq!(
        (env.runs[1].start_ns, env.runs[1].done_ns),
        (11_500, 13_000)
    );
    assert_eq!(env.runs[0].slot, 3);
    assert_eq!(env.runs[0].descriptor, DATA + 0x1100);
    assert_eq!(s.progress(), 1);

    env.now = 12_999;
    assert!(matches!(s.run(&mut env, BIG), Stop::Blocked(_)));
    env.now = 13_000;
    assert_eq!(s.run(&mut env, BIG), Stop::Done);
    assert_eq!(s.reg(90), 1);
    assert_eq!(s.scoreboard_status(13_000), 0);
    assert_eq!(s.next_deadline_ns(), None);
}

#[test]
fn zero_timing_never_blocks() {
    let mut env = TestEnv::new();
    let mut b = Builder::new();
    compute_setup(&mut env, &mut b, 1000);
    b.run_compute(1, TaskAxis::X, ShaderSelect::default(), false);
    b.wait_all();
    let code = b.finish().unwrap();
    let (_, stop) = exec(&mut env, &code);
    assert_eq!(stop, Stop::Done);
}

#[test]
fn max_run_clamps_durations() {
    let mut env = TestEnv::new();
    let timing = TimingModel {
        run_base_ns: 100,
        compute_ns_per_workgroup: 1_000_000,
        max_run_ns: 5_000,
        ..TimingModel::ZERO
    };
    let mut b = Builder::new();
    compute_setup(&mut env, &mut b, u32::MAX);
    b.move32(38, u32::MAX).move32(39, u32::MAX);
    b.run_compute(1, TaskAxis::X, ShaderSelect::default(), false);
    b.wait(1);
    let code = b.finish().unwrap();
    let mut s = load(&mut env, CODE, &code, timing);
    assert_eq!(
        s.run(&mut env, BIG),
        Stop::Blocked(Block::Scoreboard {
            mask: 1,
            until_ns: env.now + 5_000
        })
    );
    assert_eq!(env.runs[0].units, u64::MAX);
}

#[test]
fn deferred_sync_add_happens_when_its_wait_drains() {
    let mut env = TestEnv::new();
    let timing = TimingModel {
        run_base_ns: 500,
        max_run_ns: 500,
        ..TimingModel::ZERO
    };
    let sync = DATA + 0x3000;
    let mut b = Builder::new();
    compute_setup(&mut env, &mut b, 1);
    b.move48(40, sync);
    b.move32(42, 5);
    b.set_sb_entry(0, 1);
    b.run_compute(1, TaskAxis::X, ShaderSelect::default(), false);
    // Waits for the job (slot 0), signals slot 2.
    b.sync_add32(SyncScope::System, false, 40, 42, AsyncOp::defer(1, 2));
    b.sync_set32(SyncScope::System, false, 40, 42, AsyncOp::NOW); // runs first
    b.move32(43, 1);
    let code = b.finish().unwrap();
    let mut s = load(&mut env, CODE, &code, timing);
    env.now = 2_000;
    assert_eq!(s.run(&mut env, BIG), Stop::Done);
    assert_eq!(env.r32(sync), 5, "the immediate SET ran, the ADD waits");
    assert_eq!(s.deferred_ops(), 1);
    assert_eq!(s.scoreboard_status(2_000), 0b101);
    assert_eq!(s.next_deadline_ns(), Some(2_500));
    assert_eq!(env.sync_writes.len(), 1);
    env.now = 2_499;
    assert_eq!(s.run(&mut env, BIG), Stop::Done);
    assert_eq!(env.r32(sync), 5);
    env.now = 2_600;
    assert_eq!(s.run(&mut env, BIG), Stop::Done);
    assert_eq!(env.r32(sync), 10);
    assert_eq!(s.deferred_ops(), 0);
    assert_eq!(env.sync_writes, vec![(sync, false), (sync, false)]);
    assert_eq!(s.next_deadline_ns(), None);
}

#[test]
fn deferred_queue_full_stalls() {
    let mut env = TestEnv::new();
    let timing = TimingModel {
        run_base_ns: 1_000,
        max_run_ns: 1_000,
        ..TimingModel::ZERO
    };
    let mut b = Builder::new();
    compute_setup(&mut env, &mut b, 1);
    b.move48(40, DATA + 0x3000);
    b.run_compute(1, TaskAxis::X, ShaderSelect::default(), false);
    for _ in 0..=DEFERRED_CAPACITY {
        b.sync_add32(SyncScope::System, false, 40, 42, AsyncOp::defer(1, 1));
    }
    let code = b.finish().unwrap();
    let mut s = load(&mut env, CODE, &code, timing);
    env.now = 0;
    let stop = s.run(&mut env, BIG);
    assert_eq!(
        stop,
        Stop::Blocked(Block::Scoreboard {
            mask: 0,
            until_ns: 1_000
        })
    );
    assert_eq!(s.deferred_ops(), DEFERRED_CAPACITY);
    env.now = 1_000;
    assert_eq!(
        s.run(&mut env, BIG),
        Stop::Blocked(Block::Scoreboard {
            mask: 0,
            until_ns: 1_000
        })
        .min_done()
    );
}

trait MinDone {
    fn min_done(self) -> Stop;
}

impl MinDone for Stop {
    /// The stream drains the queue at 1000 and then finishes.
    fn min_done(self) -> Stop {
        Stop::Done
    }
}

#[test]
fn flush_cache2_signals_and_elides() {
    let mut env = TestEnv::new();
    let timing = TimingModel {
        flush_ns: 300,
        ..TimingModel::ZERO
    };
    let code = words(|b| {
        b.move32(94, 0);
        b.flush_cache2(
            FlushMode::CleanInvalidate,
            FlushMode::CleanInvalidate,
            OtherFlushMode::Invalidate,
            94,
            AsyncOp::NOW,
        );
        b.wait(1);
        b.move32(94, 1);
        b.flush_cache2(
            FlushMode::Clean,
            FlushMode::None,
            OtherFlushMode::None,
            94,
            AsyncOp::defer(0, 4),
        );
    });
    let mut s = load(&mut env, CODE, &code, timing);
    assert_eq!(
        s.run(&mut env, BIG),
        Stop::Blocked(Block::Scoreboard {
            mask: 1,
            until_ns: env.now + 300
        })
    );
    env.now += 300;
    assert_eq!(s.run(&mut env, BIG), Stop::Done);
    assert_eq!((s.stats().flushes, s.stats().flushes_elided), (1, 1));
    assert_eq!(env.cache_flushes, 1);
    assert_eq!(s.scoreboard_status(env.now), 1 << 4);
}

#[test]
fn bookkeeping_ops_honour_wait_and_signal() {
    let mut env = TestEnv::new();
    let timing = TimingModel {
        run_base_ns: 1_000,
        max_run_ns: 1_000,
        bookkeeping_ns: 10,
        ..TimingModel::ZERO
    };
    let mut b = Builder::new();
    compute_setup(&mut env, &mut b, 1);
    b.move48(60, 0x1111_0000);
    b.move48(62, 0x2222_0000);
    b.run_compute(1, TaskAxis::X, ShaderSelect::default(), false);
    b.trace_point(0, 4, AsyncOp::defer(1, 5));
    b.heap_operation(HeapOp::VtStart, AsyncOp::defer(1, 6));
    b.finish_fragment(true, 60, 62, AsyncOp::defer(0b110_0000, 7));
    b.wait(0x80);
    let code = b.finish().unwrap();
    let mut s = load(&mut env, CODE, &code, timing);
    env.now = 0;
    assert_eq!(
        s.run(&mut env, BIG),
        Stop::Blocked(Block::Scoreboard {
            mask: 0x80,
            until_ns: 1_020
        })
    );
    assert_eq!(s.scoreboard_status(0), 0b1110_0001);
    assert_eq!(s.heap().vt_start, 1);
    assert_eq!(s.heap().finish_fragment, 1);
    assert_eq!(s.heap().released_chunks, (0x1111_0000, 0x2222_0000));
    env.now = 1_020;
    assert_eq!(s.run(&mut env, BIG), Stop::Done);
}

// ---------------------------------------------------------------------
// Sync objects
// ---------------------------------------------------------------------

#[test]
fn sync_add_set_wrap_and_status() {
    let mut env = TestEnv::new();
    let s32 = DATA + 0x100;
    let s64 = DATA + 0x200;
    env.w32(s32, u32::MAX);
    env.w32(s32 + 4, 0x77);
    env.w64(s64, u64::MAX - 1);
    env.w32(s64 + 8, 0x77);
    env.w32(s64 + 12, 0x99);
    let code = words(|b| {
        b.move48(0, s32);
        b.move48(2, s64);
        b.move32(4, 2);
        b.move48(6, 3);
        b.sync_add32(SyncScope::System, true, 0, 4, AsyncOp::NOW);
        b.sync_add64(SyncScope::Csg, false, 2, 6, AsyncOp::NOW);
    });
    let (s, stop) = exec(&mut env, &code);
    assert_eq!(stop, Stop::Done);
    assert_eq!(env.r32(s32), 1, "32-bit add wraps");
    assert_eq!(env.r32(s32 + 4), 0, "status cleared");
    assert_eq!(env.r64(s64), 1, "64-bit add wraps");
    assert_eq!(env.r32(s64 + 8), 0);
    assert_eq!(env.r32(s64 + 12), 0x99, "the pad word is untouched");
    assert_eq!(env.sync_writes, vec![(s32, false), (s64, true)]);
    assert_eq!(s.stats().sync_writes, 2);

    let code = words(|b| {
        b.move48(0, s32);
        b.move48(2, s64);
        b.move32(4, 0xabcd);
        b.move48(6, 0x1234_5678_9abc);
        b.sync_set32(SyncScope::System, false, 0, 4, AsyncOp::NOW);
        b.sync_set64(SyncScope::System, true, 2, 6, AsyncOp::NOW);
    });
    assert_eq!(exec(&mut env, &code).1, Stop::Done);
    assert_eq!(env.r32(s32), 0xabcd);
    assert_eq!(env.r64(s64), 0x1234_5678_9abc);
}

#[test]
fn sync_faults() {
    let mut env = TestEnv::new();
    // Misaligned: a non-fatal DATA_INVALID_FAULT that skips the instruction.
    let code = words(|b| {
        b.move48(0, DATA + 4);
        b.sync_add64(SyncScope::System, true, 0, 2, AsyncOp::NOW);
        b.move32(10, 10);
    });
    let mut s = load(&mut env, CODE, &code, TimingModel::ZERO);
    let f = fault(s.run(&mut env, BIG));
    assert_eq!(f.exception_code, exception::DATA_INVALID_FAULT);
    assert!(!f.fatal);
    assert_eq!(f.info, DATA + 4);
    assert!(s.error_state());
    assert_eq!(s.ip(), CODE + 16);
    assert_eq!(s.run(&mut env, BIG), Stop::Done);
    assert_eq!(s.reg(10), 10);
    assert!(env.sync_writes.is_empty());

    // Read-only: an MMU permission fault (atomic access), nothing written.
    env.poke32(RO + 4, 0x55);
    let code = words(|b| {
        b.move48(0, RO);
        b.sync_set32(SyncScope::System, false, 0, 2, AsyncOp::NOW);
    });
    let (f, ip) = mmu(exec(&mut env, &code).1);
    assert_eq!((f.va, f.access, ip), (RO, Access::Atomic, CODE + 8));
    assert_eq!(env.r32(RO + 4), 0x55, "status untouched");

    // SYNC_WAIT on unmapped memory.
    let code = words(|b| {
        b.move48(0, HOLE);
        b.sync_wait32(SyncCond::Gt, false, 0, 2);
    });
    let (f, _) = mmu(exec(&mut env, &code).1);
    assert_eq!((f.va, f.access), (HOLE, Access::Read));
}

#[test]
fn sync_wait_parks_and_resumes() {
    let mut env = TestEnv::new();
    let s32 = DATA + 0x100;
    let s64 = DATA + 0x200;
    env.w32(s32, 3);
    env.w64(s64, 0x1_0000_0000);
    let code = words(|b| {
        b.move48(0, s32);
        b.move48(2, s64);
        b.move32(4, 5);
        b.move48(6, 0x1_0000_0000);
        b.sync_wait32(SyncCond::Gt, false, 0, 4); // wait until mem > 5
        b.move32(10, 1);
        b.sync_wait64(SyncCond::Le, true, 2, 6); // wait until mem <= 2^32
        b.move32(11, 1);
        b.sync_wait64(SyncCond::Gt, false, 2, 6); // wait until mem > 2^32
        b.move32(12, 1);
    });
    let mut s = load(&mut env, CODE, &code, TimingModel::ZERO);
    let blocked = Stop::Blocked(Block::SyncWait {
        addr: s32,
        value: 5,
        cond: SyncCond::Gt,
        is_64: false,
    });
    assert_eq!(s.run(&mut env, BIG), blocked);
    assert_eq!(s.ip(), CODE + 32);
    assert_eq!(s.run(&mut env, BIG), blocked, "re-evaluated, still blocked");
    env.w32(s32, 5);
    assert_eq!(s.run(&mut env, BIG), blocked, "5 > 5 is false");
    env.w32(s32, 6);
    // The LE wait on 2^32 holds at once; the GT one parks.
    assert_eq!(
        s.run(&mut env, BIG),
        Stop::Blocked(Block::SyncWait {
            addr: s64,
            value: 0x1_0000_0000,
            cond: SyncCond::Gt,
            is_64: true,
        })
    );
    assert_eq!((s.reg(10), s.reg(11), s.reg(12)), (1, 1, 0));
    env.w64(s64, 0x1_0000_0001);
    assert_eq!(s.run(&mut env, BIG), Stop::Done);
    assert_eq!(s.reg(12), 1);
    assert!(!s.error_state());

    // The comparison is unsigned.
    env.w32(s32, 0x8000_0000);
    let code = words(|b| {
        b.move48(0, s32);
        b.move32(4, 1);
        b.sync_wait32(SyncCond::Gt, false, 0, 4);
    });
    assert_eq!(exec(&mut env, &code).1, Stop::Done);
}

#[test]
fn error_inherit_propagate_and_barrier() {
    let mut env = TestEnv::new();
    let bad = DATA + 0x100; // a sync object carrying an error
    let out = DATA + 0x200; // a 64-bit object signalled with propagation
    let out32 = DATA + 0x300;
    env.w32(bad, 1);
    env.w32(bad + 4, 1);
    env.w32(out32 + 4, 0x1234);
    let code = words(|b| {
        b.move48(0, bad);
        b.move48(2, out);
        b.move48(4, 1);
        b.move48(6, out32);
        b.move32(8, 0);
        // error_reject: the status is ignored.
        b.sync_wait32(SyncCond::Gt, true, 0, 8);
        b.sync_add64(SyncScope::System, true, 2, 4, AsyncOp::NOW);
        // inherit: the stream takes the error.
        b.sync_wait32(SyncCond::Gt, false, 0, 8);
        b.sync_add64(SyncScope::System, true, 2, 4, AsyncOp::NOW);
        b.sync_add32(SyncScope::System, false, 6, 4, AsyncOp::NOW); // no propagation
        b.store_state(CsState::ErrorStatus, 2, 0x40, AsyncOp::NOW);
        b.error_barrier();
        b.sync_add64(SyncScope::System, true, 2, 4, AsyncOp::NOW);
        b.store_state(CsState::ErrorStatus, 2, 0x48, AsyncOp::NOW);
    });
    let mut s = load(&mut env, CODE, &code, TimingModel::ZERO);
    let f = fault(s.run(&mut env, BIG));
    assert_eq!(f.exception_code, exception::CS_INHERIT_FAULT);
    assert!(!f.fatal);
    assert_eq!(f.ip, CODE + 7 * 8);
    assert_eq!(
        f.reason,
        FaultReason::InheritedError {
            address: bad,
            status: 1
        }
    );
    assert_eq!(env.r64(out), 1);
    assert_eq!(env.r32(out + 8), 0, "no error before the inherit");
    assert!(s.error_state());
    assert_eq!(s.ip(), CODE + 8 * 8, "the wait completed");

    assert_eq!(s.run(&mut env, BIG), Stop::Done);
    assert_eq!(env.r64(out), 3);
    assert_eq!(env.r32(out + 8), 0, "cleared again after the barrier");
    assert_eq!(env.r32(out32 + 4), 0, "no propagation: status 0");
    assert_eq!(env.r64(out + 0x40), 1, "error status while in error");
    assert_eq!(env.r64(out + 0x48), 0, "and after the barrier");
    assert!(!s.error_state());
}

#[test]
fn propagated_status_between_inherit_and_barrier() {
    let mut env = TestEnv::new();
    let bad = DATA + 0x100;
    let out = DATA + 0x200;
    env.w32(bad + 4, 7);
    let code = words(|b| {
        b.move48(0, bad);
        b.move48(2, out);
        b.move48(4, 1);
        b.move32(8, 0);
        b.sync_wait32(SyncCond::Le, false, 0, 8);
        b.sync_add64(SyncScope::System, true, 2, 4, AsyncOp::NOW);
    });
    let mut s = load(&mut env, CODE, &code, TimingModel::ZERO);
    assert_eq!(fault(s.run(&mut env, BIG)).exception_code, 0x4b);
    assert_eq!(s.run(&mut env, BIG), Stop::Done);
    assert_eq!((env.r64(out), env.r32(out + 8)), (1, 1));
}

// ---------------------------------------------------------------------
// STORE_STATE
// ---------------------------------------------------------------------

#[test]
fn store_state_values() {
    let mut env = TestEnv::new();
    env.now = 123_456;
    let code = words(|b| {
        b.move48(0, DATA + 0x100);
        b.store_state(CsState::Timestamp, 0, 0, AsyncOp::NOW);
        b.store_state(CsState::CycleCount, 0, 8, AsyncOp::NOW);
        b.store_state(CsState::DisjointCount, 0, 16, AsyncOp::NOW);
        b.store_state(CsState::ErrorStatus, 0, -8, AsyncOp::NOW);
    });
    env.w64(DATA + 0xf8, 0xffff);
    let (_, stop) = exec(&mut env, &code);
    assert_eq!(stop, Stop::Done);
    assert_eq!(env.r64(DATA + 0x100), 123_463, "env.timestamp(now)");
    assert_eq!(env.r64(DATA + 0x108), 246_912);
    assert_eq!(env.r64(DATA + 0x110), 3);
    assert_eq!(env.r64(DATA + 0xf8), 0, "negative offset, no error");
}

#[test]
fn deferred_store_state_samples_its_completion_time() {
    let mut env = TestEnv::new();
    let timing = TimingModel {
        run_base_ns: 700,
        max_run_ns: 700,
        ..TimingModel::ZERO
    };
    let mut b = Builder::new();
    compute_setup(&mut env, &mut b, 1);
    b.move48(40, DATA + 0x500);
    b.run_compute(1, TaskAxis::X, ShaderSelect::default(), false);
    b.store_state(CsState::Timestamp, 40, 0, AsyncOp::defer(1, 3));
    b.wait(1 << 3);
    let code = b.finish().unwrap();
    let mut s = load(&mut env, CODE, &code, timing);
    env.now = 5_000;
    assert_eq!(
        s.run(&mut env, BIG),
        Stop::Blocked(Block::Scoreboard {
            mask: 8,
            until_ns: 5_700
        })
    );
    assert_eq!(env.r64(DATA + 0x500), 0);
    env.now = 6_000;
    assert_eq!(s.run(&mut env, BIG), Stop::Done);
    assert_eq!(env.r64(DATA + 0x500), 5_707, "timestamp of 5700");
}

// ---------------------------------------------------------------------
// Other records
// ---------------------------------------------------------------------

#[test]
fn records_and_progress() {
    let mut env = TestEnv::new();
    let code = words(|b| {
        b.move48(0, 0xabc0);
        b.move32(2, 0x40);
        b.set_exception_handler(2, 0, 2);
        b.req_resource(true, false, true, false);
        b.prot_region(0x80);
        b.move48(4, 0x5555_0000);
        b.heap_set(4);
        b.move48(6, 41);
        b.progress_store(6);
        b.wait(0).push(Instr::Wait {
            wait_mask: 0,
            progress_inc: true,
        });
        b.progress_load(8);
        b.move48(10, 100);
        b.progress_wait(3, 10);
        b.move32(12, 1);
    });
    let mut s = load(&mut env, CODE, &code, TimingModel::ZERO);
    env.progress = Some(99);
    assert_eq!(
        s.run(&mut env, BIG),
        Stop::Blocked(Block::Progress {
            queue: 3,
            value: 100
        })
    );
    assert_eq!(
        s.exception_handler(),
        ExceptionHandler {
            exception_type: 2,
            address: 0xabc0,
            length: 0x40
        }
    );
    assert_eq!(
        s.resources(),
        Resources {
            compute: true,
            fragment: false,
            tiler: true,
            idvs: false
        }
    );
    assert_eq!(s.prot_region(), Some(0x10));
    assert_eq!(s.heap().context, 0x5555_0000);
    assert_eq!(s.reg64(8), 42);
    assert_eq!(s.progress(), 42);
    env.progress = Some(100);
    assert_eq!(s.run(&mut env, BIG), Stop::Done);
    assert_eq!(s.reg(12), 1);
    // Without a firmware answer PROGRESS_WAIT does not block.
    env.progress = None;
    let (_, stop) = exec(&mut env, &code);
    assert_eq!(stop, Stop::Done);
}

// ---------------------------------------------------------------------
// RUN_* validation
// ---------------------------------------------------------------------

#[test]
fn run_compute_checks_selected_descriptors() {
    let mut env = TestEnv::new();
    // Slot 1 of each table points at a hole; slot 0 is fine.
    let mut base = Builder::new();
    compute_setup(&mut env, &mut base, 1);
    let setup = base.finish().unwrap();
    let select = |srt, fau, spd, tsd| ShaderSelect { srt, fau, spd, tsd };
    let cases = [
        (select(1, 0, 0, 0), 2, HOLE | 3, HOLE),
        (select(0, 1, 0, 0), 10, HOLE | (1 << 56), HOLE),
        (select(0, 0, 1, 0), 18, HOLE + 0x40, HOLE + 0x40),
        (select(0, 0, 0, 1), 26, HOLE + 0x80, HOLE + 0x80),
    ];
    for (sel, reg, value, va) in cases {
        let mut b = Builder::new();
        b.move48(reg, value & ((1 << 48) - 1));
        b.move32(reg + 1, (value >> 32) as u32);
        b.run_compute(1, TaskAxis::X, sel, false);
        let mut code = setup.clone();
        code.extend(b.finish().unwrap());
        let (_, stop) = exec(&mut env, &code);
        let (f, ip) = mmu(stop);
        assert_eq!((f.va, f.access), (va, Access::Read), "{sel:?}");
        assert!(
            (0xc0..=0xc3).contains(&f.exception_code),
            "TRANSLATION_FAULT_n"
        );
        assert_eq!(ip, CODE + 8 * (code.len() as u64 - 1));
    }
    // Zero-count SRT/FAU and a zero TSD are not read.
    let mut b = Builder::new();
    b.move48(2, HOLE); // SRT slot 1, count 0
    b.move48(10, HOLE); // FAU slot 1, count 0
    b.move48(26, 0); // TSD slot 1 absent
    b.run_compute(1, TaskAxis::X, select(1, 1, 0, 1), false);
    let mut code = setup.clone();
    code.extend(b.finish().unwrap());
    assert_eq!(exec(&mut env, &code).1, Stop::Done);
    // The compute shader itself is mandatory.
    let mut b = Builder::new();
    b.move48(16, 0);
    b.run_compute(1, TaskAxis::X, select(0, 0, 0, 0), false);
    let mut code = setup.clone();
    code.extend(b.finish().unwrap());
    let (f, _) = mmu(exec(&mut env, &code).1);
    assert_eq!(f.va, 0);
}

#[test]
fn run_compute_shader_binary_must_be_executable() {
    let mut env = TestEnv::new();
    let spd = DATA + 0x1100;
    for (binary, permission) in [(NX + 0x40, true), (HOLE + 0x40, false)] {
        let mut b = Builder::new();
        compute_setup(&mut env, &mut b, 1);
        b.run_compute(1, TaskAxis::X, ShaderSelect::default(), false);
        let code = b.finish().unwrap();
        env.w64(spd + 8, binary);
        let mut s = load(&mut env, CODE, &code, TimingModel::ZERO);
        let (f, _) = mmu(s.run(&mut env, BIG));
        assert_eq!((f.va, f.access), (binary, Access::Execute));
        assert_eq!(f.kind == (FaultKind::Permission { level: 3 }), permission);
        if permission {
            assert_eq!(f.exception_code, 0xcb, "PERM_FAULT_3");
        }
    }
    // A descriptor straddling into a hole faults at the hole.
    let end_of_map = CODE + 4 * MIB;
    let mut b = Builder::new();
    compute_setup(&mut env, &mut b, 1);
    b.move48(16, end_of_map - 16);
    b.run_compute(1, TaskAxis::X, ShaderSelect::default(), false);
    let code = b.finish().unwrap();
    let (f, _) = mmu(exec(&mut env, &code).1);
    assert_eq!(f.va, end_of_map);
}

#[test]
fn run_fragment_checks_fbd_tiler_and_tem() {
    let mut env = TestEnv::new();
    let fbd = DATA + 0x4000;
    env.w64(fbd + 56, DATA + 0x5000); // tiler context
    let frag = |b: &mut Builder, fbd: u64, tem: bool| {
        b.move48(40, fbd | 0x5); // flags in the low bits
        b.move32(42, 0); // bbox min (0, 0)
        b.move32(43, (63 << 16) | 127); // bbox max (127, 63): 8 x 4 tiles
        b.move48(44, HOLE);
        b.run_fragment(tem, TileOrder::ZOrder, false);
    };
    let code = words(|b| frag(b, fbd, false));
    let (_, stop) = exec(&mut env, &code);
    assert_eq!(stop, Stop::Done);
    let run = env.runs.last().copied().unwrap();
    assert_eq!(
        (run.kind, run.descriptor, run.units),
        (RunKind::Fragment, fbd, 32)
    );

    let code = words(|b| frag(b, fbd, true));
    let (f, _) = mmu(exec(&mut env, &code).1);
    assert_eq!(f.va, HOLE, "tile enable map");

    let code = words(|b| frag(b, HOLE, false));
    let (f, _) = mmu(exec(&mut env, &code).1);
    assert_eq!(f.va, HOLE, "framebuffer descriptor");

    env.w64(fbd + 56, HOLE + 0x100);
    let code = words(|b| frag(b, fbd, false));
    let (f, _) = mmu(exec(&mut env, &code).1);
    assert_eq!(f.va, HOLE + 0x100, "tiler context of the framebuffer");
}

#[test]
fn run_idvs_and_fullscreen_checks() {
    let mut env = TestEnv::new();
    let idvs = |b: &mut Builder, tiler: u64, index: u64, flags: u32| {
        b.move48(16, DATA + 0x1100); // position shader
        b.move48(40, tiler);
        b.move48(54, index);
        b.move32(56, flags);
        b.move32(33, 3);
        b.move32(34, 2);
        b.run_idvs(0, true, IdvsSelect::default(), None, false);
    };
    env.w64(DATA + 0x1100 + 8, DATA + 0x2000);
    let ok = words(|b| idvs(b, DATA + 0x5000, 0, 0));
    assert_eq!(exec(&mut env, &ok).1, Stop::Done);
    let run = env.runs.last().copied().unwrap();
    assert_eq!((run.kind, run.units), (RunKind::Idvs, 6));

    let code = words(|b| idvs(b, HOLE, 0, 0));
    assert_eq!(mmu(exec(&mut env, &code).1).0.va, HOLE, "tiler context");

    // The index buffer is only read with an index type (flags bits 10:8).
    let code = words(|b| idvs(b, DATA + 0x5000, HOLE + 0x10, 0));
    assert_eq!(exec(&mut env, &code).1, Stop::Done);
    let code = words(|b| idvs(b, DATA + 0x5000, HOLE + 0x10, 2 << 8));
    assert_eq!(
        mmu(exec(&mut env, &code).1).0.va,
        HOLE + 0x10,
        "index buffer"
    );

    // The occlusion query must be writable.
    let code = words(|b| {
        b.move48(46, RO);
        idvs(b, DATA + 0x5000, 0, 0);
    });
    let (f, _) = mmu(exec(&mut env, &code).1);
    assert_eq!((f.va, f.access), (RO, Access::Write));

    // RUN_FULLSCREEN: tiler context and draw descriptor.
    let code = words(|b| {
        b.move48(40, DATA + 0x5000);
        b.move48(60, HOLE + 0x200);
        b.run_fullscreen(0, 60, false);
    });
    assert_eq!(mmu(exec(&mut env, &code).1).0.va, HOLE + 0x200);
    let code = words(|b| {
        b.move48(40, DATA + 0x5000);
        b.move48(60, DATA + 0x6000);
        b.run_fullscreen(0, 60, false);
        b.finish_tiling(true);
    });
    let (s, stop) = exec(&mut env, &code);
    assert_eq!(stop, Stop::Done);
    assert_eq!(env.runs.last().map(|r| r.kind), Some(RunKind::FinishTiling));
    assert_eq!(s.progress(), 1);
    assert_eq!(s.stats().runs, 2);
}

// ---------------------------------------------------------------------
// Ring buffers and the Panthor kernel wrapper (csf.md §2.5)
// ---------------------------------------------------------------------

/// The instructions Panthor's `prepare_job_instrs` puts in the ring for
/// one job (no profiling), padded to 16.
fn kernel_job(flush_id: u32, stream: u64, size: u32, syncobj: u64) -> Vec<u64> {
    words(|b| {
        b.move32(94, flush_id);
        b.flush_cache2(
            FlushMode::CleanInvalidate,
            FlushMode::CleanInvalidate,
            OtherFlushMode::Invalidate,
            94,
            AsyncOp::NOW,
        );
        b.move48(92, stream);
        b.move32(94, size);
        b.wait(1);
        b.call(92, 94);
        b.move48(92, syncobj);
        b.move48(94, 1);
        b.wait(0xff);
        b.sync_add64(SyncScope::System, true, 92, 94, AsyncOp::NOW);
        b.error_barrier();
        b.pad_to(8);
    })
}

#[test]
fn kernel_wrapper_encoding_matches_panthor() {
    let w = kernel_job(0, 0x7f00_1000, 0x180, 0x1234);
    assert_eq!(w.len(), 16);
    assert_eq!(
        [w[0], w[1], w[2], w[3], w[4], w[5], w[7], w[8], w[9], w[10]],
        [
            0x025e000000000000,
            0x24005e0000000233,
            0x015c00007f001000,
            0x025e000000000180,
            0x0300000000010000,
            0x20005c5e00000000,
            0x015e000000000001,
            0x0300000000ff0000,
            0x33005c5e00000001,
            0x2f00000000000000,
        ]
    );
    assert!(w[11..].iter().all(|&x| x == 0));
}

/// A queue: a 4 KiB ring in the kernel window (NOEXEC, as Panthor maps
/// it) and its sync object.
struct Queue {
    ring: u64,
    size: u64,
    insert: u64,
    syncobj: u64,
}

impl Queue {
    fn new(env: &mut TestEnv, size: u64) -> Queue {
        let ring = env
            .vm
            .map_kernel_auto(
                &env.bo.clone(),
                6 * MIB,
                size.max(0x1000),
                MapFlags::NOEXEC | MapFlags::UNCACHED,
            )
            .unwrap();
        Queue {
            ring,
            size,
            insert: 0,
            syncobj: DATA + 0x7000,
        }
    }

    /// Copies a job into the ring at the insert position (wrapping).
    fn push(&mut self, env: &mut TestEnv, job: &[u64]) {
        for &w in job {
            let pos = self.insert & (self.size - 1);
            env.put(self.ring + pos, &[w]);
            self.insert += 8;
        }
    }

    /// Copies the kernel wrapper of a job calling `size` bytes at `stream`
    /// into the ring, and hands its words to the stream too, as the
    /// firmware does.
    fn push_seeded(&mut self, env: &mut TestEnv, s: &mut StreamState, stream: u64, size: u32) {
        let job = kernel_job(0, stream, size, self.syncobj);
        s.seed_ring(self.insert, &job);
        self.push(env, &job);
    }
}

fn user_stream(env: &mut TestEnv, at: u64, f: impl FnOnce(&mut Builder)) -> u32 {
    let code = words(f);
    env.put(at, &code);
    8 * code.len() as u32
}

#[test]
fn panthor_ring_wrapper_end_to_end() {
    let mut env = TestEnv::new();
    let mut q = Queue::new(&mut env, 0x1000);
    let mut s = stream(TimingModel::DEFAULT);
    s.start_ring(q.ring, q.size, 0, 0).unwrap();
    assert_eq!(s.run(&mut env, BIG), Stop::Done, "empty ring");

    // Job 1: stores a value, bumps a user sync object, runs a compute job.
    let usersync = DATA + 0x7100;
    let mut b = Builder::new();
    compute_setup(&mut env, &mut b, 8);
    let setup = b.finish().unwrap();
    let job1 = user_stream(&mut env, DATA + 0x8000, |b| {
        for &w in &setup {
            b.push(crate::gpu::cs::decode(w).unwrap());
        }
        b.run_compute(1, TaskAxis::X, ShaderSelect::default(), false);
        b.move48(0, DATA + 0x9000);
        b.move32(2, 0xdead);
        b.move32(3, 0xbeef);
        b.store_multiple(2, 0b11, 0, 0);
        b.move48(4, usersync);
        b.move32(6, 1);
        b.sync_add32(SyncScope::System, false, 4, 6, AsyncOp::NOW);
    });
    q.push(&mut env, &kernel_job(0, DATA + 0x8000, job1, q.syncobj));
    s.set_insert(q.insert).unwrap();
    env.now = 1_000_000;
    // The compute job takes 2 µs + 8 workgroups; the wrapper's WAIT(all)
    // waits for it before signalling the queue.
    let stop = s.run(&mut env, BIG);
    assert_eq!(
        stop,
        Stop::Blocked(Block::Scoreboard {
            mask: 0xff,
            until_ns: 1_002_016
        })
    );
    assert_eq!(env.r32(DATA + 0x9000), 0xdead);
    assert_eq!(env.r32(DATA + 0x9004), 0xbeef);
    assert_eq!(env.r32(usersync), 1);
    assert_eq!(env.r64(q.syncobj), 0, "not signalled before the job ends");
    assert!(s.extract() < q.insert);
    env.now = s.next_deadline_ns().unwrap();
    assert_eq!(s.run(&mut env, BIG), Stop::Done);
    assert_eq!(env.r64(q.syncobj), 1, "seqno + 1");
    assert_eq!(env.r32(q.syncobj + 8), 0, "status OK");
    assert_eq!(s.extract(), q.insert);
    assert_eq!(s.extract(), 128);
    assert_eq!(env.sync_writes, vec![(usersync, false), (q.syncobj, true)]);
    assert_eq!(s.stats().flushes, 1);
    assert_eq!(env.runs.len(), 1);

    // Job 2: the user stream waits on a sync object in error (inherit).
    let bad = DATA + 0x7200;
    env.w32(bad, 1);
    env.w32(bad + 4, 1);
    let job2 = user_stream(&mut env, DATA + 0x8800, |b| {
        b.move48(0, bad);
        b.move32(2, 0);
        b.sync_wait32(SyncCond::Gt, false, 0, 2);
        b.move32(3, 3);
    });
    q.push(&mut env, &kernel_job(0, DATA + 0x8800, job2, q.syncobj));
    // Job 3: a clean job after it.
    let job3 = user_stream(&mut env, DATA + 0x8c00, |b| {
        b.move32(4, 4);
    });
    q.push(&mut env, &kernel_job(0, DATA + 0x8c00, job3, q.syncobj));
    s.set_insert(q.insert).unwrap();
    let f = fault(s.run(&mut env, BIG));
    assert_eq!(f.exception_code, exception::CS_INHERIT_FAULT);
    assert!(!f.fatal);
    assert_eq!(f.ip, DATA + 0x8810);
    // Panthor looks up the job whose ring range holds the extract counter.
    assert!((128..256).contains(&s.extract()));
    assert_eq!(s.frames(), 2);
    assert_eq!(s.run(&mut env, BIG), Stop::Done);
    assert_eq!(env.r64(q.syncobj), 3);
    assert_eq!(env.r32(q.syncobj + 8), 0, "job 3 succeeded");
    assert_eq!((s.reg(3), s.reg(4)), (3, 4));
    // Job 2's completion carried the error: watch the status write order.
    let writes: Vec<_> = env
        .sync_writes
        .iter()
        .filter(|w| w.0 == q.syncobj)
        .collect();
    assert_eq!(writes.len(), 3);
    assert!(!s.error_state());
}

#[test]
fn wrapper_status_reports_the_failed_job() {
    let mut env = TestEnv::new();
    let mut q = Queue::new(&mut env, 0x1000);
    let mut s = stream(TimingModel::ZERO);
    s.start_ring(q.ring, q.size, 0, 0).unwrap();
    let bad = DATA + 0x7200;
    env.w32(bad + 4, 9);
    let job = user_stream(&mut env, DATA + 0x8800, |b| {
        b.move48(0, bad);
        b.move32(2, 0);
        b.sync_wait32(SyncCond::Le, false, 0, 2);
    });
    q.push(&mut env, &kernel_job(0, DATA + 0x8800, job, q.syncobj));
    s.set_insert(q.insert).unwrap();
    assert_eq!(fault(s.run(&mut env, BIG)).exception_code, 0x4b);
    assert_eq!(s.run(&mut env, BIG), Stop::Done);
    assert_eq!(env.r64(q.syncobj), 1);
    assert_eq!(env.r32(q.syncobj + 8), 1, "error propagated to the queue");
    // The next job starts clean after the ERROR_BARRIER.
    let job = user_stream(&mut env, DATA + 0x8c00, |b| {
        b.nop();
    });
    q.push(&mut env, &kernel_job(0, DATA + 0x8c00, job, q.syncobj));
    s.set_insert(q.insert).unwrap();
    assert_eq!(s.run(&mut env, BIG), Stop::Done);
    assert_eq!((env.r64(q.syncobj), env.r32(q.syncobj + 8)), (2, 0));
}

#[test]
fn ring_wraps_around_its_end() {
    let mut env = TestEnv::new();
    let mut q = Queue::new(&mut env, 512);
    // Start near the end of the ring: the job straddles the wrap.
    q.insert = 448;
    let mut s = stream(TimingModel::ZERO);
    s.start_ring(q.ring, q.size, 448, 448).unwrap();
    let job = user_stream(&mut env, DATA + 0x8000, |b| {
        b.add_imm32(20, 20, 1);
    });
    for n in 1..=5u64 {
        q.push(&mut env, &kernel_job(0, DATA + 0x8000, job, q.syncobj));
        s.set_insert(q.insert).unwrap();
        assert_eq!(s.run(&mut env, BIG), Stop::Done);
        assert_eq!(env.r64(q.syncobj), n);
        assert_eq!(s.extract(), 448 + 128 * n);
        assert_eq!(s.reg(20), n as u32);
    }
    // Two jobs at once, and a preemption in the middle of them.
    q.push(&mut env, &kernel_job(0, DATA + 0x8000, job, q.syncobj));
    q.push(&mut env, &kernel_job(0, DATA + 0x8000, job, q.syncobj));
    s.set_insert(q.insert).unwrap();
    let mut slices = 0;
    while s.run(&mut env, 7) == Stop::Preempted {
        slices += 1;
    }
    assert!(slices > 3);
    assert_eq!(env.r64(q.syncobj), 7);
    assert_eq!(s.extract(), q.insert);
}

/// A started ring of `size` bytes and a user stream at DATA + 0x8000 that
/// adds 1 to r20 (its size returned).
fn counting_ring(size: u64) -> (TestEnv, Queue, StreamState, u32) {
    let mut env = TestEnv::new();
    let q = Queue::new(&mut env, size);
    let mut s = stream(TimingModel::ZERO);
    s.start_ring(q.ring, q.size, 0, 0).unwrap();
    let job = user_stream(&mut env, DATA + 0x8000, |b| {
        b.add_imm32(20, 20, 1);
    });
    (env, q, s, job)
}

#[test]
fn seeded_ring_words_run_as_the_host_wrote_them() {
    let (mut env, mut q, mut s, job) = counting_ring(0x1000);
    let start = q.insert;
    for _ in 0..8 {
        q.push_seeded(&mut env, &mut s, DATA + 0x8000, job);
    }
    // A write to ring memory after the host wrote the jobs (the guest must
    // not write kernel memory): the stream runs the words it was handed.
    for at in (start..q.insert).step_by(8) {
        env.put(q.ring + at, &[u64::MAX]);
    }
    s.set_insert(q.insert).unwrap();
    assert_eq!(s.run(&mut env, BIG), Stop::Done);
    assert_eq!((s.reg(20), env.r64(q.syncobj)), (8, 8));

    // Words the stream itself writes over are fetched from memory: the
    // first job's user stream turns the second job's first padding NOP
    // into an add to r21.
    let add = Instr::AddImm32 {
        dst: 21,
        src: 21,
        imm: 1,
    }
    .encode();
    let first = q.insert;
    let target = q.ring + ((first + 128 + 11 * 8) & (q.size - 1));
    let patcher = user_stream(&mut env, DATA + 0x8800, |b| {
        b.move48(10, target);
        b.move32(12, add as u32);
        b.move32(13, (add >> 32) as u32);
        b.store_multiple(12, 0b11, 10, 0);
    });
    q.push_seeded(&mut env, &mut s, DATA + 0x8800, patcher);
    q.push_seeded(&mut env, &mut s, DATA + 0x8000, job);
    s.set_insert(q.insert).unwrap();
    assert_eq!(s.run(&mut env, BIG), Stop::Done);
    assert_eq!((s.reg(20), s.reg(21), env.r64(q.syncobj)), (9, 1, 10));
}

#[test]
fn a_full_seed_is_kept_until_its_words_have_run() {
    // 70 jobs of 16 words: the seed holds the first 64; the rest are
    // fetched from memory, and all run in order.
    let (mut env, mut q, mut s, job) = counting_ring(0x4000);
    for _ in 0..70 {
        q.push_seeded(&mut env, &mut s, DATA + 0x8000, job);
    }
    // Garbage over the memory of the 64 seeded jobs: they run as seeded.
    for at in (0..64 * 128).step_by(8) {
        env.put(q.ring + at, &[u64::MAX]);
    }
    s.set_insert(q.insert).unwrap();
    assert_eq!(s.run(&mut env, BIG), Stop::Done);
    assert_eq!((s.reg(20), env.r64(q.syncobj)), (70, 70));
    // A second lap: the jobs that ran make room, and the ring wraps.
    for _ in 0..90 {
        q.push_seeded(&mut env, &mut s, DATA + 0x8000, job);
        s.set_insert(q.insert).unwrap();
        assert_eq!(s.run(&mut env, BIG), Stop::Done);
    }
    assert_eq!((s.reg(20), env.r64(q.syncobj)), (160, 160));
    assert_eq!(s.extract(), 160 * 128);
}

#[test]
fn a_job_written_over_seeded_words_that_ran_drops_the_seed() {
    // A full lap of seeded jobs, half of them run; the next job wraps onto
    // the memory of the first, which ran: it must run as written now, not
    // as seeded then.
    let (mut env, mut q, mut s, a) = counting_ring(0x1000);
    let b = user_stream(&mut env, DATA + 0x8800, |b| {
        b.add_imm32(22, 22, 1);
    });
    for _ in 0..32 {
        q.push_seeded(&mut env, &mut s, DATA + 0x8000, a);
    }
    s.set_insert(q.insert).unwrap();
    assert_eq!(s.run(&mut env, 300), Stop::Preempted);
    assert!(s.extract() >= 128 && s.extract() < 32 * 128);
    q.push_seeded(&mut env, &mut s, DATA + 0x8800, b);
    s.set_insert(q.insert).unwrap();
    assert_eq!(s.run(&mut env, BIG), Stop::Done);
    assert_eq!((s.reg(20), s.reg(22), env.r64(q.syncobj)), (32, 1, 33));
}

#[test]
fn returns_reuse_the_callers_window_unless_it_was_written() {
    let mut env = TestEnv::new();
    // Eight jobs calling the same user stream, run in one slice: the
    // ring's 128 words are fetched in two fills of four jobs each (running
    // on past a window refills it in place), and the user stream once for
    // all of them (every CALL finds it in the spare window, every return
    // the ring's).
    let mut q = Queue::new(&mut env, 0x1000);
    let mut s = stream(TimingModel::ZERO);
    s.start_ring(q.ring, q.size, 0, 0).unwrap();
    let job = user_stream(&mut env, DATA + 0x8000, |b| {
        b.add_imm32(20, 20, 1);
    });
    for _ in 0..8 {
        q.push(&mut env, &kernel_job(0, DATA + 0x8000, job, q.syncobj));
    }
    s.set_insert(q.insert).unwrap();
    assert_eq!(s.run(&mut env, BIG), Stop::Done);
    assert_eq!((s.reg(20), env.r64(q.syncobj)), (8, 8));
    assert_eq!(s.stats().fetches, 3);

    // A callee that rewrites the caller's next instruction: the return
    // sees the new word.
    let patched = Instr::Move32 { dst: 5, imm: 2 }.encode();
    let callee = words(|b| {
        b.move48(10, CODE + 3 * 8);
        b.move32(12, patched as u32);
        b.move32(13, (patched >> 32) as u32);
        b.store_multiple(12, 0b11, 10, 0);
    });
    env.put(DATA, &callee);
    let caller = words(|b| {
        b.move48(0, DATA);
        b.move32(2, 8 * callee.len() as u32);
        b.call(0, 2);
        b.move32(5, 1);
    });
    let (s, stop) = exec(&mut env, &caller);
    assert_eq!(stop, Stop::Done);
    assert_eq!(s.reg(5), 2);
}

#[test]
fn ring_programming_errors() {
    let mut s = stream(TimingModel::ZERO);
    assert_eq!(s.start_ring(4, 4096, 0, 0), Err(ConfigError::Misaligned(4)));
    assert_eq!(
        s.start_ring(0x1000, 3000, 0, 0),
        Err(ConfigError::RingSize(3000))
    );
    assert!(s.start_ring(0x1000, 4096, 0, 4104).is_err());
    assert!(s.start_ring(0x1000, 4096, 16, 8).is_err());
    assert_eq!(s.set_insert(8), Err(ConfigError::NotARing));
    s.start_ring(0x1000, 4096, 8, 64).unwrap();
    assert_eq!(s.extract(), 8);
    assert_eq!(s.ip(), 0x1008);
    assert!(s.set_insert(32).is_err(), "backwards");
    assert!(
        s.set_insert(8 + 4096 + 8).is_err(),
        "more than a ring ahead"
    );
    assert!(s.set_insert(8 + 4096).is_ok());
    assert_eq!(s.start_linear(16, 8), Err(ConfigError::Reversed));
    assert!(StreamState::new(
        CsLimits {
            reg_count: 32,
            ..CsLimits::V10
        },
        TimingModel::ZERO
    )
    .is_err());
}

#[test]
fn halted_stream_restarts_when_programmed_again() {
    let mut env = TestEnv::new();
    let (mut s, stop) = exec(&mut env, &[0xff00_0000_0000_0000]);
    assert!(stop.is_halted());
    assert_eq!(s.run(&mut env, BIG), stop);
    env.put(
        DATA,
        &words(|b| {
            b.move32(1, 1);
        }),
    );
    s.start_linear(DATA, DATA + 8).unwrap();
    assert_eq!(s.run(&mut env, BIG), Stop::Done);
    assert_eq!(s.reg(1), 1);
    s.reset();
    assert_eq!(s.reg(1), 0);
}

// ---------------------------------------------------------------------
// No panics on arbitrary streams
// ---------------------------------------------------------------------

mod fuzz {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1024))]

        /// Random words (biased towards valid opcodes) with random
        /// registers never panic and always stop within the budget.
        #[test]
        fn random_streams_never_panic(
            raw in proptest::collection::vec(any::<u64>(), 1..64),
            regs in proptest::collection::vec(any::<u32>(), 96),
            valid in proptest::collection::vec(0usize..39, 64),
        ) {
            let mut env = TestEnv::new();
            let all = crate::gpu::cs::Opcode::ALL;
            let code: Vec<u64> = raw
                .iter()
                .zip(valid.iter().cycle())
                .map(|(&w, &k)| {
                    let op = all[k % all.len()];
                    // Register fields sit in bits 32..56 of most opcodes:
                    // keep them mostly inside the register file.
                    let mut w = w;
                    for shift in [32, 40, 48] {
                        let b = (w >> shift) & 0xff;
                        w = (w & !(0xff << shift)) | ((b % 48) << shift);
                    }
                    ((op as u64) << 56) | (w & op.field_mask())
                })
                .collect();
            let mut s = load(&mut env, CODE, &code, TimingModel::DEFAULT);
            for (r, v) in regs.iter().enumerate() {
                s.set_reg(r, *v);
            }
            // Half of the even pairs point into mapped memory.
            for (r, v) in regs.iter().enumerate().step_by(2) {
                if v & 1 == 0 {
                    s.set_reg64(r, DATA + (u64::from(*v) & 0x3ff8));
                }
            }
            for _ in 0..4 {
                let stop = s.run(&mut env, 10_000);
                env.now += 1_000_000;
                if stop.is_halted() || stop == Stop::Done {
                    break;
                }
            }
        }
    }
}
