//! The execution loop and the semantics of every instruction.

use crate::gpu::cs::{CsState, HeapOp, Instr, SyncCond};
use crate::gpu::mmu::access::SyncWordOp;
use crate::gpu::mmu::{Fault, FaultKind};

use super::env::ExecEnv;
use super::fetch::{classify, Kind, Windows};
use super::state::{
    Deferred, DeferredOp, Frame, Root, StreamState, SyncKind, DEFERRED_CAPACITY, MAX_REGS,
};
use super::stop::{exception, Block, CsFault, FaultReason, Stop};

/// Why [`StreamState::run_registers`] returned.
enum Exit {
    /// The instruction at this window index needs [`StreamState::step`].
    Other(usize),
    /// The instruction pointer is at the end of its buffer.
    BufferEnd,
    /// The instruction pointer is outside the window.
    Refill,
    /// The budget is used up.
    Budget,
    /// The word (the current instruction) must not execute.
    Bad(u64),
    /// A taken branch to this target outside the buffer.
    BadBranch(u64),
}

/// What an instruction did to the control flow.
enum Flow {
    /// Continue with the next instruction.
    Next,
    /// The instruction set the instruction pointer itself.
    Moved,
    /// Stop with the instruction pointer still on this instruction
    /// (blocked, or halted by a fault).
    Stop(Stop),
    /// The instruction completed; stop after it (a non-fatal fault).
    NextThen(Stop),
}

impl StreamState {
    /// Runs the stream for at most `budget` instructions.
    ///
    /// Each call is one slice: it samples [`ExecEnv::now_ns`], performs the
    /// deferred operations that are due, drops the instruction window, then
    /// executes until the stream ends, blocks, faults or uses up the budget.
    /// Every stop but a halt leaves the state resumable: call `run` again to
    /// continue (a halted stream returns its halt again).
    pub fn run<E: ExecEnv>(&mut self, env: &mut E, budget: u64) -> Stop {
        if let Some(stop) = self.halted {
            return stop;
        }
        let now = env.now_ns();
        if now > self.now {
            self.now = now;
        }
        self.drop_windows();
        if let Some(stop) = self.retire_deferred(env) {
            return stop;
        }
        let mut left = budget;
        let stop = self.execute(env, &mut left);
        self.stats.instructions += budget - left;
        stop
    }

    /// [`StreamState::run`] with the instruction windows of `windows`
    /// instead of the stream's own (see [`Windows`]); they go back to
    /// `windows` afterwards.
    pub fn run_lent<E: ExecEnv>(
        &mut self,
        env: &mut E,
        budget: u64,
        windows: &mut Windows,
    ) -> Stop {
        self.swap_windows(windows);
        let stop = self.run(env, budget);
        self.swap_windows(windows);
        stop
    }

    fn swap_windows(&mut self, windows: &mut Windows) {
        std::mem::swap(&mut self.window, &mut windows.window);
        std::mem::swap(&mut self.spare, &mut windows.spare);
    }

    /// The instruction loop: register-only instructions (and WAIT on idle
    /// scoreboards, ERROR_BARRIER) run in
    /// [`StreamState::run_registers`]; this loop handles buffer ends,
    /// window fills, the budget and every other instruction.
    fn execute<E: ExecEnv>(&mut self, env: &mut E, left: &mut u64) -> Stop {
        loop {
            match self.run_registers(left) {
                Exit::Other(idx) => {
                    let ip = self.ip;
                    let next = ip + 8;
                    let Some(&instr) = self.window.instrs.get(idx) else {
                        self.window.invalidate();
                        continue;
                    };
                    *left -= 1;
                    match self.step(env, instr, ip, next) {
                        Flow::Next => self.ip = next,
                        Flow::Moved => {}
                        Flow::Stop(stop) => return stop,
                        Flow::NextThen(stop) => {
                            self.ip = next;
                            return stop;
                        }
                    }
                }
                Exit::BufferEnd => {
                    if let Some(stop) = self.leave_buffer() {
                        return stop;
                    }
                    continue;
                }
                Exit::Refill => {
                    if self.ip.wrapping_sub(self.spare.start) < self.spare.bytes {
                        // Back in the buffer of the spare window (a return
                        // from a CALL, or the next CALL of the same
                        // stream): use it as it is.
                        std::mem::swap(&mut self.window, &mut self.spare);
                    } else if let Some(stop) = self.refill(env) {
                        return stop;
                    }
                    continue;
                }
                Exit::Budget => return Stop::Preempted,
                Exit::Bad(word) => {
                    let (code, reason) =
                        classify(word, self.limits.reg_count, self.limits.scoreboards);
                    return self.halt_fault(code, self.ip, word, reason);
                }
                Exit::BadBranch(target) => {
                    let (start, end) = (self.start, self.end);
                    return self.halt_fault(
                        exception::INSTR_INVALID_PC,
                        self.ip,
                        target,
                        FaultReason::BranchOutOfBuffer { target, start, end },
                    );
                }
            }
        }
    }

    /// Runs register-only instructions from the window, and the WAITs and
    /// ERROR_BARRIERs that only read or clear a flag, until something
    /// else needs doing. Works on local copies of the hot state.
    #[inline(always)]
    fn run_registers(&mut self, left: &mut u64) -> Exit {
        let (start, end) = (self.start, self.end);
        let win_start = self.window.start;
        // The window's words: an instruction pointer outside them (below
        // the start, the offset wraps) finds no entry and refills.
        let words = (self.window.bytes / 8) as usize;
        let ops = &self.window.ops[..words.min(self.window.ops.len())];
        let regs = &mut self.regs;
        // No slot busy: every WAIT passes. Only `step` marks slots busy, so
        // this holds until the loop exits.
        let idle = self.sb_pending == 0;
        let mut ip = self.ip;
        let mut n = *left;
        let exit = loop {
            if ip == end {
                break Exit::BufferEnd;
            }
            let idx = usize::try_from(ip.wrapping_sub(win_start) >> 3).unwrap_or(usize::MAX);
            let Some(op) = ops.get(idx) else {
                break Exit::Refill;
            };
            if n == 0 {
                break Exit::Budget;
            }
            let next = ip + 8;
            let taken = match op.kind {
                Kind::AddImm32 => {
                    regs[usize::from(op.a)] = regs[usize::from(op.b)].wrapping_add(op.imm);
                    false
                }
                Kind::BranchNe => regs[usize::from(op.a)] != 0,
                Kind::BranchEq => regs[usize::from(op.a)] == 0,
                Kind::BranchGt => (regs[usize::from(op.a)] as i32) > 0,
                Kind::BranchLe => (regs[usize::from(op.a)] as i32) <= 0,
                Kind::BranchLt => (regs[usize::from(op.a)] as i32) < 0,
                Kind::BranchGe => (regs[usize::from(op.a)] as i32) >= 0,
                Kind::BranchAlways => true,
                Kind::Move32 => {
                    regs[usize::from(op.a)] = op.imm;
                    false
                }
                Kind::Move48 => {
                    set_pair(regs, op.a, op.w);
                    false
                }
                Kind::AddImm64 => {
                    let v = pair(regs, op.b).wrapping_add(op.w);
                    set_pair(regs, op.a, v);
                    false
                }
                Kind::Umin32 => {
                    regs[usize::from(op.a)] = regs[usize::from(op.b)].min(regs[usize::from(op.c)]);
                    false
                }
                Kind::Nop => {
                    // The run of NOPs from here, inside the window, the
                    // buffer and the budget (each counts as one).
                    let left_in_window = (ops.len() - idx) as u64;
                    let k = u64::from(op.imm)
                        .min(left_in_window)
                        .min(n)
                        .min(end.saturating_sub(ip) / 8)
                        .max(1);
                    n -= k;
                    ip += 8 * k;
                    continue;
                }
                Kind::Wait if idle => false,
                Kind::ErrorBarrier => {
                    self.error = false;
                    false
                }
                Kind::Wait | Kind::Other => break Exit::Other(idx),
                Kind::Bad => {
                    n -= 1;
                    break Exit::Bad(op.w);
                }
            };
            n -= 1;
            if taken {
                let target = next.wrapping_add_signed(i64::from(op.imm as i32));
                if target < start || target > end {
                    break Exit::BadBranch(target);
                }
                ip = target;
            } else {
                ip = next;
            }
        };
        self.ip = ip;
        *left = n;
        exit
    }

    /// Fills the instruction window at `ip` (which neither window holds).
    #[cold]
    fn refill<E: ExecEnv>(&mut self, env: &mut E) -> Option<Stop> {
        let (ip, start, end) = (self.ip, self.start, self.end);
        // Running on past the end of the window refills it in place, so
        // that the spare (a stream each job calls) survives a ring's jobs;
        // a jump elsewhere keeps the current window as the spare.
        let sequential = self.window.bytes != 0 && ip == self.window.start + self.window.bytes;
        if !sequential {
            std::mem::swap(&mut self.window, &mut self.spare);
        }
        self.stats.fetches += 1;
        if let Err(fault) = self
            .window
            .fill(env, &mut self.decoded, &self.seed, ip, start, end)
        {
            return Some(self.halt(Stop::MmuFault { fault, ip }));
        }
        if ip.wrapping_sub(self.window.start) >= self.window.bytes {
            // The instruction pointer left its buffer; nothing can fetch it.
            return Some(self.halt_fault(
                exception::INSTR_INVALID_PC,
                ip,
                ip,
                FaultReason::BranchOutOfBuffer {
                    target: ip,
                    start,
                    end,
                },
            ));
        }
        None
    }

    /// The end of the current buffer: return to the caller, wrap the ring,
    /// or stop at the end of the root.
    #[cold]
    fn leave_buffer(&mut self) -> Option<Stop> {
        if self.depth > 0 {
            self.depth -= 1;
            let f = self.stack.get(self.depth).copied().unwrap_or_default();
            self.ip = f.ret_ip;
            self.start = f.start;
            self.end = f.end;
            return None;
        }
        match self.root {
            Root::Ring {
                base,
                size,
                seg_va,
                seg_extract,
                insert,
            } => {
                let extract = seg_extract + (self.ip - seg_va);
                if extract >= insert {
                    return Some(Stop::Done);
                }
                // The end of the ring with more to run: wrap to its base.
                self.root = Root::Ring {
                    base,
                    size,
                    seg_va: base,
                    seg_extract: extract,
                    insert,
                };
                self.ip = base;
                self.start = base;
                self.end = self.ring_segment_end();
                None
            }
            Root::Linear | Root::None => Some(Stop::Done),
        }
    }

    /// Register `rN`.
    #[inline(always)]
    fn r(&self, n: u8) -> u32 {
        self.regs[usize::from(n)]
    }

    /// Register pair `dN`. Instructions are checked before they run, so
    /// `N + 1` exists; the mask only keeps the index in the array.
    #[inline(always)]
    pub(super) fn d(&self, n: u8) -> u64 {
        pair(&self.regs, n)
    }

    #[inline(always)]
    fn set_d(&mut self, n: u8, v: u64) {
        set_pair(&mut self.regs, n, v);
    }

    /// Records a fatal stop and returns it.
    fn halt(&mut self, stop: Stop) -> Stop {
        self.halted = Some(stop);
        stop
    }

    /// A fatal CS exception.
    #[cold]
    fn halt_fault(&mut self, code: u8, ip: u64, info: u64, reason: FaultReason) -> Stop {
        self.halt(Stop::Fault(CsFault {
            exception_code: code,
            fatal: true,
            ip,
            data: 0,
            info,
            reason,
        }))
    }

    /// How a memory fault of the instruction at `ip` stops the stream: a
    /// misaligned sync object is a CS fault (DATA_INVALID_FAULT) that puts
    /// the stream in its error state and skips the instruction; anything
    /// else is an MMU fault that halts it.
    fn fault_flow(&mut self, fault: Fault, ip: u64) -> Flow {
        match self.fault_stop(fault, ip) {
            s @ Stop::Fault(CsFault { fatal: false, .. }) => Flow::NextThen(s),
            s => Flow::Stop(s),
        }
    }

    fn fault_stop(&mut self, fault: Fault, ip: u64) -> Stop {
        if fault.kind == FaultKind::Alignment {
            self.error = true;
            Stop::Fault(CsFault {
                exception_code: exception::DATA_INVALID_FAULT,
                fatal: false,
                ip,
                data: 0,
                info: fault.va,
                reason: FaultReason::MisalignedSync { address: fault.va },
            })
        } else {
            self.halt(Stop::MmuFault { fault, ip })
        }
    }

    /// The time by which every slot of `mask` has drained (0 if none is
    /// busy). Forgets slots that drained by now.
    pub(super) fn drained_at(&mut self, mask: u16) -> u64 {
        let mut until = 0;
        let mut m = mask & self.sb_pending;
        while m != 0 {
            let s = m.trailing_zeros() as usize;
            m &= m - 1;
            let busy = self.sb_busy_until.get(s).copied().unwrap_or(0);
            if busy > self.now {
                until = until.max(busy);
            } else {
                self.sb_pending &= !(1 << s);
            }
        }
        until
    }

    /// Slot `slot` has an operation in flight until `done_ns` (nothing to
    /// do if that is not in the future).
    pub(super) fn signal(&mut self, slot: u8, done_ns: u64) {
        if done_ns > self.now {
            if let Some(busy) = self.sb_busy_until.get_mut(usize::from(slot)) {
                *busy = (*busy).max(done_ns);
                self.sb_pending |= 1 << slot;
            }
        }
    }

    /// When an operation waiting on `wait_mask` and taking `duration` ns
    /// completes.
    fn completion(&mut self, wait_mask: u16, duration: u64) -> u64 {
        self.drained_at(wait_mask)
            .max(self.now)
            .saturating_add(duration)
    }

    /// Every instruction but those [`StreamState::run_registers`] runs.
    fn step<E: ExecEnv>(&mut self, env: &mut E, instr: Instr, ip: u64, next: u64) -> Flow {
        match instr {
            Instr::Wait {
                wait_mask,
                progress_inc,
            } => {
                let mask = u16::from(wait_mask);
                let until = self.drained_at(mask);
                if until > self.now {
                    return Flow::Stop(Stop::Blocked(Block::Scoreboard {
                        mask,
                        until_ns: until,
                    }));
                }
                if progress_inc {
                    self.progress = self.progress.wrapping_add(1);
                }
                Flow::Next
            }
            Instr::LoadMultiple {
                base,
                address,
                mask,
                offset,
            } => self.load_multiple(env, ip, base, address, mask, offset),
            Instr::StoreMultiple {
                base,
                address,
                mask,
                offset,
            } => self.store_multiple(env, ip, base, address, mask, offset),
            Instr::SetSbEntry { endpoint, other } => {
                self.sb_endpoint = endpoint;
                self.sb_other = other;
                Flow::Next
            }
            Instr::ProgressWait { queue, src } => {
                let value = self.d(src);
                match env.progress(queue) {
                    Some(p) if p < value => {
                        Flow::Stop(Stop::Blocked(Block::Progress { queue, value }))
                    }
                    _ => Flow::Next,
                }
            }
            Instr::SetExceptionHandler {
                exception_type,
                address,
                length,
            } => {
                self.exception_handler = super::state::ExceptionHandler {
                    exception_type,
                    address: self.d(address),
                    length: self.r(length),
                };
                Flow::Next
            }
            Instr::Call { address, length } => self.call(instr, ip, next, address, length, false),
            Instr::Jump { address, length } => self.call(instr, ip, next, address, length, true),
            Instr::ReqResource {
                compute,
                fragment,
                tiler,
                idvs,
            } => {
                self.resources = super::state::Resources {
                    compute,
                    fragment,
                    tiler,
                    idvs,
                };
                Flow::Next
            }
            Instr::FlushCache2 {
                wait_mask,
                flush_id,
                signal_slot,
                ..
            } => {
                if env.latest_flush_id() != self.r(flush_id) {
                    self.stats.flushes_elided += 1;
                } else {
                    self.stats.flushes += 1;
                    env.on_cache_flush();
                }
                let done = self.completion(wait_mask, self.timing.flush_ns);
                self.signal(signal_slot, done);
                Flow::Next
            }
            Instr::SyncAdd32 {
                error_propagate,
                wait_mask,
                data,
                address,
                signal_slot,
                ..
            } => {
                let v = u64::from(self.r(data));
                self.sync_update(
                    env,
                    ip,
                    SyncKind::Add32,
                    address,
                    v,
                    error_propagate,
                    wait_mask,
                    signal_slot,
                )
            }
            Instr::SyncSet32 {
                error_propagate,
                wait_mask,
                data,
                address,
                signal_slot,
                ..
            } => {
                let v = u64::from(self.r(data));
                self.sync_update(
                    env,
                    ip,
                    SyncKind::Set32,
                    address,
                    v,
                    error_propagate,
                    wait_mask,
                    signal_slot,
                )
            }
            Instr::SyncAdd64 {
                error_propagate,
                wait_mask,
                data,
                address,
                signal_slot,
                ..
            } => {
                let v = self.d(data);
                self.sync_update(
                    env,
                    ip,
                    SyncKind::Add64,
                    address,
                    v,
                    error_propagate,
                    wait_mask,
                    signal_slot,
                )
            }
            Instr::SyncSet64 {
                error_propagate,
                wait_mask,
                data,
                address,
                signal_slot,
                ..
            } => {
                let v = self.d(data);
                self.sync_update(
                    env,
                    ip,
                    SyncKind::Set64,
                    address,
                    v,
                    error_propagate,
                    wait_mask,
                    signal_slot,
                )
            }
            Instr::SyncWait32 {
                error_reject,
                cond,
                data,
                address,
            } => {
                let value = u64::from(self.r(data));
                self.sync_wait(env, ip, false, self.d(address), value, cond, error_reject)
            }
            Instr::SyncWait64 {
                error_reject,
                cond,
                data,
                address,
            } => {
                let value = self.d(data);
                self.sync_wait(env, ip, true, self.d(address), value, cond, error_reject)
            }
            Instr::StoreState {
                address,
                offset,
                state,
                wait_mask,
                signal_slot,
            } => {
                let addr = self.d(address).wrapping_add_signed(i64::from(offset));
                let due = self.drained_at(wait_mask);
                if due > self.now {
                    return self.defer(
                        ip,
                        due,
                        DeferredOp::StoreState { addr, state },
                        signal_slot,
                    );
                }
                let (now, error) = (self.now, self.error);
                match self.store_state(env, addr, state, now, error) {
                    Ok(()) => Flow::Next,
                    Err(f) => self.fault_flow(f, ip),
                }
            }
            Instr::ProtRegion { size } => {
                self.prot_region = Some(size);
                Flow::Next
            }
            Instr::ProgressStore { src } => {
                self.progress = self.d(src);
                Flow::Next
            }
            Instr::ProgressLoad { dst } => {
                self.set_d(dst, self.progress);
                Flow::Next
            }
            Instr::ErrorBarrier => {
                self.error = false;
                Flow::Next
            }
            Instr::HeapSet { address } => {
                self.heap.context = self.d(address);
                Flow::Next
            }
            Instr::HeapOperation {
                op,
                wait_mask,
                signal_slot,
            } => {
                let counter = match op {
                    HeapOp::VtStart => &mut self.heap.vt_start,
                    HeapOp::VtComplete => &mut self.heap.vt_complete,
                    HeapOp::FragmentComplete => &mut self.heap.fragment_complete,
                };
                *counter = counter.wrapping_add(1);
                let done = self.completion(wait_mask, self.timing.bookkeeping_ns);
                self.signal(signal_slot, done);
                Flow::Next
            }
            Instr::TracePoint {
                wait_mask,
                signal_slot,
                ..
            } => {
                let done = self.completion(wait_mask, self.timing.bookkeeping_ns);
                self.signal(signal_slot, done);
                Flow::Next
            }
            Instr::FinishFragment {
                wait_mask,
                last_heap_chunk,
                first_heap_chunk,
                signal_slot,
                ..
            } => {
                self.heap.finish_fragment = self.heap.finish_fragment.wrapping_add(1);
                self.heap.released_chunks = (self.d(first_heap_chunk), self.d(last_heap_chunk));
                let done = self.completion(wait_mask, self.timing.bookkeeping_ns);
                self.signal(signal_slot, done);
                Flow::Next
            }
            Instr::RunCompute { .. }
            | Instr::RunComputeIndirect { .. }
            | Instr::RunTiling { .. }
            | Instr::RunIdvs { .. }
            | Instr::RunFragment { .. }
            | Instr::RunFullscreen { .. }
            | Instr::FinishTiling { .. } => match self.issue_job(env, instr, ip) {
                Ok(()) => Flow::Next,
                Err(f) => self.fault_flow(f, ip),
            },
            // Register-only instructions normally run in `run_registers`
            // (as do WAIT on idle scoreboards and ERROR_BARRIER, above).
            Instr::Nop { .. } => Flow::Next,
            Instr::Move32 { dst, imm } => {
                self.regs[usize::from(dst)] = imm;
                Flow::Next
            }
            Instr::Move48 { dst, imm } => {
                self.set_d(dst, imm);
                Flow::Next
            }
            Instr::AddImm32 { dst, src, imm } => {
                self.regs[usize::from(dst)] = self.r(src).wrapping_add(imm as u32);
                Flow::Next
            }
            Instr::AddImm64 { dst, src, imm } => {
                self.set_d(dst, self.d(src).wrapping_add_signed(i64::from(imm)));
                Flow::Next
            }
            Instr::Umin32 { dst, src0, src1 } => {
                self.regs[usize::from(dst)] = self.r(src0).min(self.r(src1));
                Flow::Next
            }
            Instr::Branch {
                cond,
                value,
                offset,
            } => {
                if !cond.eval(self.r(value)) {
                    return Flow::Next;
                }
                let target = next.wrapping_add_signed(i64::from(offset) * 8);
                if target < self.start || target > self.end {
                    let (start, end) = (self.start, self.end);
                    return Flow::Stop(self.halt_fault(
                        exception::INSTR_INVALID_PC,
                        ip,
                        target,
                        FaultReason::BranchOutOfBuffer { target, start, end },
                    ));
                }
                self.ip = target;
                Flow::Moved
            }
        }
    }

    /// CALL (push a frame) or JUMP (replace the current buffer).
    fn call(
        &mut self,
        instr: Instr,
        ip: u64,
        next: u64,
        address: u8,
        length: u8,
        jump: bool,
    ) -> Flow {
        let target = self.d(address);
        let len = self.r(length);
        if jump {
            if self.depth == 0 {
                return Flow::Stop(self.halt_fault(
                    exception::CS_INSTR_INVALID,
                    ip,
                    instr.encode(),
                    FaultReason::JumpFromRoot,
                ));
            }
        } else if self.depth + 1 >= self.limits.max_frames {
            return Flow::Stop(self.halt_fault(
                exception::CS_CALL_STACK_OVERFLOW,
                ip,
                instr.encode(),
                FaultReason::CallStackOverflow {
                    max: self.limits.max_frames,
                },
            ));
        }
        if target % 8 != 0 {
            return Flow::Stop(self.halt_fault(
                exception::INSTR_INVALID_PC,
                ip,
                target,
                FaultReason::MisalignedTarget { address: target },
            ));
        }
        if len % 8 != 0 {
            return Flow::Stop(self.halt_fault(
                exception::INSTR_INVALID_PC,
                ip,
                u64::from(len),
                FaultReason::MisalignedLength { length: len },
            ));
        }
        let Some(end) = target.checked_add(u64::from(len)) else {
            return Flow::Stop(self.halt_fault(
                exception::INSTR_INVALID_PC,
                ip,
                target,
                FaultReason::BufferWraps {
                    address: target,
                    length: len,
                },
            ));
        };
        if !jump {
            let frame = Frame {
                ret_ip: next,
                start: self.start,
                end: self.end,
            };
            match self.stack.get_mut(self.depth) {
                Some(slot) => *slot = frame,
                None => {
                    return Flow::Stop(self.halt_fault(
                        exception::CS_CALL_STACK_OVERFLOW,
                        ip,
                        instr.encode(),
                        FaultReason::CallStackOverflow {
                            max: self.limits.max_frames,
                        },
                    ))
                }
            }
            self.depth += 1;
        }
        self.ip = target;
        self.start = target;
        self.end = end;
        Flow::Moved
    }

    /// LOAD_MULTIPLE: r(base + i) = mem32[addr + 4i] for each set bit i.
    /// Each run of consecutive bits is read in one access; nothing is
    /// written to the registers unless every read succeeds.
    fn load_multiple<E: ExecEnv>(
        &mut self,
        env: &mut E,
        ip: u64,
        base: u8,
        address: u8,
        mask: u16,
        offset: i16,
    ) -> Flow {
        let addr = self.d(address).wrapping_add_signed(i64::from(offset));
        let mut vals = [0u32; 16];
        for (first, count) in runs(mask) {
            let mut buf = [0u8; 64];
            let bytes = &mut buf[..4 * count];
            let (vm, mem) = env.memory();
            if let Err(f) = vm.read_bytes(mem, addr.wrapping_add(4 * first as u64), bytes) {
                return self.fault_flow(f, ip);
            }
            for (k, w) in bytes.chunks_exact(4).enumerate() {
                if let Some(v) = vals.get_mut(first + k) {
                    *v = u32::from_le_bytes([w[0], w[1], w[2], w[3]]);
                }
            }
        }
        for (first, count) in runs(mask) {
            for i in first..first + count {
                if let (Some(r), Some(&v)) = (self.regs.get_mut(usize::from(base) + i), vals.get(i))
                {
                    *r = v;
                }
            }
        }
        Flow::Next
    }

    /// STORE_MULTIPLE: mem32[addr + 4i] = r(base + i) for each set bit i;
    /// the words of clear bits are left alone.
    fn store_multiple<E: ExecEnv>(
        &mut self,
        env: &mut E,
        ip: u64,
        base: u8,
        address: u8,
        mask: u16,
        offset: i16,
    ) -> Flow {
        let addr = self.d(address).wrapping_add_signed(i64::from(offset));
        for (first, count) in runs(mask) {
            let mut buf = [0u8; 64];
            for k in 0..count {
                let v = self
                    .regs
                    .get(usize::from(base) + first + k)
                    .copied()
                    .unwrap_or(0);
                if let Some(dst) = buf.get_mut(4 * k..4 * k + 4) {
                    dst.copy_from_slice(&v.to_le_bytes());
                }
            }
            let va = addr.wrapping_add(4 * first as u64);
            let bytes = &buf[..4 * count];
            let (vm, mem) = env.memory();
            let r = vm.write_bytes(mem, va, bytes);
            self.note_write(va, bytes.len() as u64);
            if let Err(f) = r {
                return self.fault_flow(f, ip);
            }
        }
        Flow::Next
    }

    /// SYNC_ADD/SET: now, or deferred until `wait_mask` drains.
    #[allow(clippy::too_many_arguments)]
    fn sync_update<E: ExecEnv>(
        &mut self,
        env: &mut E,
        ip: u64,
        kind: SyncKind,
        address: u8,
        value: u64,
        propagate: bool,
        wait_mask: u16,
        signal_slot: u8,
    ) -> Flow {
        let addr = self.d(address);
        let due = self.drained_at(wait_mask);
        if due > self.now {
            let op = DeferredOp::Sync {
                kind,
                addr,
                value,
                propagate,
            };
            return self.defer(ip, due, op, signal_slot);
        }
        match self.sync_write(env, kind, addr, value, propagate && self.error) {
            Ok(()) => Flow::Next,
            Err(f) => self.fault_flow(f, ip),
        }
    }

    /// Performs a SYNC_ADD/SET: the status word (`failed` as 0/1) first,
    /// then the value, so that a reader who sees the new value also sees
    /// its status; then tells the firmware.
    fn sync_write<E: ExecEnv>(
        &mut self,
        env: &mut E,
        kind: SyncKind,
        addr: u64,
        value: u64,
        failed: bool,
    ) -> Result<(), Fault> {
        let size: u64 = if kind.is_64() { 8 } else { 4 };
        let op = match kind {
            SyncKind::Add32 | SyncKind::Add64 => SyncWordOp::Add(value),
            SyncKind::Set32 | SyncKind::Set64 => SyncWordOp::Set(value),
        };
        let status = u32::from(failed);
        let (vm, mem) = env.memory();
        let left = vm.sync_object_update(mem, addr, kind.is_64(), op, status)?;
        // The 64-bit value this write left (what the firmware compares
        // with a queue's sequence number).
        let written = kind.is_64().then_some(left);
        self.note_write(addr, size + 4);
        self.stats.sync_writes += 1;
        env.on_sync_write(addr, written.map(|v| (v, status)));
        Ok(())
    }

    /// SYNC_WAIT: block unless the condition holds; then inherit the sync
    /// object's error unless `error_reject`.
    #[allow(clippy::too_many_arguments)]
    fn sync_wait<E: ExecEnv>(
        &mut self,
        env: &mut E,
        ip: u64,
        is_64: bool,
        addr: u64,
        value: u64,
        cond: SyncCond,
        error_reject: bool,
    ) -> Flow {
        let (vm, mem) = env.memory();
        let cur = if is_64 {
            vm.atomic_load_u64(mem, addr)
        } else {
            vm.atomic_load_u32(mem, addr).map(u64::from)
        };
        let cur = match cur {
            Ok(v) => v,
            Err(f) => return self.fault_flow(f, ip),
        };
        if !cond.eval(cur, value) {
            return Flow::Stop(Stop::Blocked(Block::SyncWait {
                addr,
                value,
                cond,
                is_64,
            }));
        }
        if error_reject {
            return Flow::Next;
        }
        let status_addr = addr.wrapping_add(if is_64 { 8 } else { 4 });
        let status = match vm.atomic_load_u32(mem, status_addr) {
            Ok(s) => s,
            Err(f) => return self.fault_flow(f, ip),
        };
        if status == 0 {
            return Flow::Next;
        }
        self.error = true;
        Flow::NextThen(Stop::Fault(CsFault {
            exception_code: exception::CS_INHERIT_FAULT,
            fatal: false,
            ip,
            data: 0,
            info: addr,
            reason: FaultReason::InheritedError {
                address: addr,
                status,
            },
        }))
    }

    /// STORE_STATE's 64-bit write of `state` as of `at_ns`.
    fn store_state<E: ExecEnv>(
        &mut self,
        env: &mut E,
        addr: u64,
        state: CsState,
        at_ns: u64,
        error: bool,
    ) -> Result<(), Fault> {
        let value = match state {
            CsState::Timestamp => env.timestamp(at_ns),
            CsState::CycleCount => env.cycle_count(at_ns),
            CsState::DisjointCount => env.disjoint_count(),
            CsState::ErrorStatus => u64::from(error),
        };
        let (vm, mem) = env.memory();
        let r = vm.write_u64(mem, addr, value);
        self.note_write(addr, 8);
        r
    }

    /// Queues a memory-writing operation until `due_ns`, signalling
    /// `signal_slot` until then. A full queue stalls the stream.
    fn defer(&mut self, ip: u64, due_ns: u64, op: DeferredOp, signal_slot: u8) -> Flow {
        if self.deferred.len() >= DEFERRED_CAPACITY {
            let until_ns = self
                .deferred
                .iter()
                .map(|d| d.due_ns)
                .min()
                .unwrap_or(self.now);
            return Flow::Stop(Stop::Blocked(Block::Scoreboard { mask: 0, until_ns }));
        }
        self.deferred.push(Deferred {
            due_ns,
            seq: self.deferred_seq,
            ip,
            error: self.error,
            op,
        });
        self.deferred_seq = self.deferred_seq.wrapping_add(1);
        self.signal(signal_slot, due_ns);
        Flow::Next
    }

    /// Performs the deferred operations that are due, in (due time, issue)
    /// order. A fault stops there; the rest stay queued.
    fn retire_deferred<E: ExecEnv>(&mut self, env: &mut E) -> Option<Stop> {
        loop {
            let now = self.now;
            let idx = self
                .deferred
                .iter()
                .enumerate()
                .filter(|(_, d)| d.due_ns <= now)
                .min_by_key(|(_, d)| (d.due_ns, d.seq))
                .map(|(i, _)| i)?;
            let d = self.deferred.remove(idx);
            let r = match d.op {
                DeferredOp::Sync {
                    kind,
                    addr,
                    value,
                    propagate,
                } => self.sync_write(env, kind, addr, value, propagate && d.error),
                DeferredOp::StoreState { addr, state } => {
                    self.store_state(env, addr, state, d.due_ns, d.error)
                }
            };
            if let Err(f) = r {
                return Some(self.fault_stop(f, d.ip));
            }
        }
    }
}

/// Register pair `dN` of a register file (see [`StreamState::d`]).
#[inline(always)]
fn pair(regs: &[u32; MAX_REGS], n: u8) -> u64 {
    let n = usize::from(n);
    u64::from(regs[n]) | (u64::from(regs[(n + 1) & (MAX_REGS - 1)]) << 32)
}

#[inline(always)]
fn set_pair(regs: &mut [u32; MAX_REGS], n: u8, v: u64) {
    let n = usize::from(n);
    regs[n] = v as u32;
    regs[(n + 1) & (MAX_REGS - 1)] = (v >> 32) as u32;
}

/// The runs of consecutive set bits of `mask`, as (first bit, length).
fn runs(mask: u16) -> impl Iterator<Item = (usize, usize)> {
    let mut m = u32::from(mask);
    std::iter::from_fn(move || {
        if m == 0 {
            return None;
        }
        let first = m.trailing_zeros();
        let count = (m >> first).trailing_ones();
        m &= !(((1u32 << count) - 1) << first);
        Some((first as usize, count as usize))
    })
}
