//! The instruction window: the part of the current page of the current
//! buffer, read from guest memory and pre-decoded in one go.
//!
//! A fill reads `[ip, min(ip + 64 words, page end, buffer end))`
//! through the MMU as a data read (`Access::Read`: Panthor maps ring
//! buffers NOEXEC, so the command-stream frontend's fetch cannot be an
//! execute access; user streams are fetched the same way), decodes every
//! word and checks its register and scoreboard operands against the model,
//! so the execution loop does neither. A fill costs one translation and
//! one copy of at most 512 bytes, plus a decode per word, which the
//! `DecodeCache` (decoded words by value) mostly saves: a queue's jobs
//! repeat the same wrapper words.
//!
//! A stream keeps two windows: the current one and a spare. A CALL, JUMP
//! or return into the spare's range swaps them (so a ring's window and
//! the stream each job calls both stay decoded across a slice); running
//! on past the end of the current window refills it in place; any other
//! move refills the spare and makes it current.
//!
//! Coherency: like a hardware prefetcher, the window is not kept coherent
//! with every write. It is dropped at the start of every slice, when the
//! host moves the ring's insert pointer (it has just written new jobs), and
//! when the stream itself writes over it (STORE_MULTIPLE, SYNC_ADD/SET,
//! STORE_STATE at an overlapping VA; writes through another VA aliasing the
//! same memory are not noticed). A guest CPU write to a buffer the stream
//! is executing becomes visible at the next fill of that range, at the
//! latest at the next slice.
//!
//! Ring seed: the host writes each job's ring words itself, so it hands
//! them to the stream as well ([`super::StreamState::seed_ring`]), and a
//! fill inside that range copies them pre-decoded (up to 256 words, 16
//! jobs) instead of reading and decoding memory. This is the CS having
//! fetched the words as the host wrote them: a later write to ring memory
//! by the guest CPU (which must not write kernel memory) or by another
//! stream is not seen for seeded words; the stream's own writes over them
//! drop the seed, as they drop the windows. The seed holds one contiguous run of a ring lap, at most
//! 1024 words (64 jobs; `SEED_WORDS`) and no more than the ring; words the
//! host writes elsewhere, or past a full seed whose words have not all
//! run, are fetched from memory as before.

use crate::gpu::cs::{decode, Cond, Instr};
use crate::gpu::mmu::{Fault, PAGE_SIZE};

use super::env::ExecEnv;
use super::stop::{exception, FaultReason};

/// Instructions in a 4 KiB page.
pub(super) const WINDOW_WORDS: usize = (PAGE_SIZE / 8) as usize;

/// Words one fill reads and decodes at most, from the fetch address on
/// (never past the ring's insert point or the buffer's end). A job's ring
/// wrapper is 16 words, so a fill covers four jobs queued together;
/// decoding the rest of the page at every job would cost more than running
/// it. A loop longer than this, or a branch back before the window's
/// start, costs one more fill.
const FILL_WORDS: usize = 64;

/// Seeded words one fill copies at most: 16 jobs' wrappers. Copying them
/// costs far less than fetching and decoding, so a fill takes more of them
/// than [`FILL_WORDS`]; but not a whole page, as a queue that stops after
/// each job (a wait) copies them again at its next run.
const SEED_FILL_WORDS: usize = 256;

/// What the execution loop does with a pre-decoded word. The register-only
/// instructions get their own kinds (one per branch condition) and run in
/// the loop itself, as do the two that touch nothing but a flag of the
/// stream (WAIT on idle scoreboards, ERROR_BARRIER); everything else is
/// [`Kind::Other`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(super) enum Kind {
    Nop,
    Move32,
    Move48,
    AddImm32,
    AddImm64,
    Umin32,
    BranchLe,
    BranchGt,
    BranchEq,
    BranchNe,
    BranchLt,
    BranchGe,
    BranchAlways,
    /// A WAIT that does not bump the progress counter: a no-op when no
    /// scoreboard slot is busy, else run as [`Kind::Other`] (its decoded
    /// instruction is kept too).
    Wait,
    /// ERROR_BARRIER: clears the stream's error state.
    ErrorBarrier,
    /// Any other valid instruction: see the window's `instrs`.
    Other,
    /// A word that must not execute; [`classify`] says why.
    Bad,
}

/// One pre-decoded word, laid out flat so that the loop reads its fields
/// straight from the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Op {
    pub kind: Kind,
    /// Destination register, or the register a branch tests.
    pub a: u8,
    /// First source register.
    pub b: u8,
    /// Second source register.
    pub c: u8,
    /// 32-bit immediate; for a branch, the offset in bytes (as `i32`);
    /// for a NOP, how many NOPs run from it on (itself included) among the
    /// words decoded with it ([`mark_nop_runs`]), so the loop passes them
    /// in one step.
    pub imm: u32,
    /// MOVE48 immediate, sign-extended ADD_IMMEDIATE64 immediate, or the
    /// raw word of a [`Kind::Bad`].
    pub w: u64,
}

impl Op {
    const fn new(kind: Kind, a: u8, b: u8, c: u8, imm: u32, w: u64) -> Self {
        Self {
            kind,
            a,
            b,
            c,
            imm,
            w,
        }
    }

    /// The flat form of a valid instruction.
    fn from_instr(i: &Instr) -> Self {
        match *i {
            Instr::Nop { .. } => Self::new(Kind::Nop, 0, 0, 0, 1, 0),
            Instr::Move32 { dst, imm } => Self::new(Kind::Move32, dst, 0, 0, imm, 0),
            Instr::Move48 { dst, imm } => Self::new(Kind::Move48, dst, 0, 0, 0, imm),
            Instr::AddImm32 { dst, src, imm } => {
                Self::new(Kind::AddImm32, dst, src, 0, imm as u32, 0)
            }
            Instr::AddImm64 { dst, src, imm } => {
                Self::new(Kind::AddImm64, dst, src, 0, 0, i64::from(imm) as u64)
            }
            Instr::Umin32 { dst, src0, src1 } => Self::new(Kind::Umin32, dst, src0, src1, 0, 0),
            Instr::Branch {
                cond,
                value,
                offset,
            } => {
                let kind = match cond {
                    Cond::Le => Kind::BranchLe,
                    Cond::Gt => Kind::BranchGt,
                    Cond::Eq => Kind::BranchEq,
                    Cond::Ne => Kind::BranchNe,
                    Cond::Lt => Kind::BranchLt,
                    Cond::Ge => Kind::BranchGe,
                    Cond::Always => Kind::BranchAlways,
                };
                Self::new(kind, value, 0, 0, (i32::from(offset) * 8) as u32, 0)
            }
            Instr::Wait {
                progress_inc: false,
                ..
            } => Self::new(Kind::Wait, 0, 0, 0, 0, 0),
            Instr::ErrorBarrier => Self::new(Kind::ErrorBarrier, 0, 0, 0, 0, 0),
            _ => Self::new(Kind::Other, 0, 0, 0, 0, 0),
        }
    }
}

/// The fetched and pre-decoded words of `[start, start + bytes)`.
#[derive(Debug, Clone)]
pub(super) struct Window {
    pub start: u64,
    /// Length in bytes (0 = empty).
    pub bytes: u64,
    /// The flat form of each word.
    pub ops: Box<[Op]>,
    /// The decoded instruction of each [`Kind::Other`] word.
    pub instrs: Box<[Instr]>,
}

impl Window {
    /// An empty window with no buffer yet: the first fill makes it.
    pub fn new() -> Self {
        Self {
            start: 0,
            bytes: 0,
            ops: Box::default(),
            instrs: Box::default(),
        }
    }

    /// Makes the buffer if the window has none.
    #[inline]
    fn buffer(&mut self) {
        if self.ops.is_empty() {
            self.ops = vec![Op::new(Kind::Bad, 0, 0, 0, 0, 0); WINDOW_WORDS].into_boxed_slice();
            self.instrs = vec![Instr::ErrorBarrier; WINDOW_WORDS].into_boxed_slice();
        }
    }

    #[inline]
    pub fn invalidate(&mut self) {
        self.bytes = 0;
    }

    /// Drops the window if `[va, va + len)` overlaps it.
    #[inline]
    pub fn note_write(&mut self, va: u64, len: u64) {
        let end = self.start + self.bytes;
        if self.bytes != 0 && va < end && va.saturating_add(len) > self.start {
            self.bytes = 0;
        }
    }

    /// Fills the window around `ip`, inside the buffer `[start, end)`
    /// (which contains `ip`), decoding through `cache`.
    pub fn fill<E: ExecEnv>(
        &mut self,
        env: &mut E,
        cache: &mut DecodeCache,
        seed: &Seed,
        ip: u64,
        start: u64,
        end: u64,
    ) -> Result<(), Fault> {
        self.buffer();
        if seed.covers(ip) {
            self.copy_seed(seed, ip, end);
            return Ok(());
        }
        let page = ip & !(PAGE_SIZE - 1);
        let lo = ip.max(start);
        let hi = page
            .saturating_add(PAGE_SIZE)
            .min(end)
            .min(lo.saturating_add(FILL_WORDS as u64 * 8));
        let len = (hi.saturating_sub(lo) as usize).min(WINDOW_WORDS * 8);
        let mut bytes = [0u8; FILL_WORDS * 8];
        let len = len.min(bytes.len());
        let buf = &mut bytes[..len];
        let (vm, mem) = env.memory();
        vm.read_bytes(mem, lo, buf).map_err(|mut f| {
            // The whole page faults alike; report the address fetched.
            f.va = ip;
            f
        })?;
        for ((op, instr), word) in self
            .ops
            .iter_mut()
            .zip(self.instrs.iter_mut())
            .zip(buf.chunks_exact(8))
        {
            let mut w = [0u8; 8];
            w.copy_from_slice(word);
            let e = cache.get(u64::from_le_bytes(w));
            *op = e.op;
            *instr = e.instr;
        }
        let words = len / 8;
        mark_nop_runs(&mut self.ops[..words]);
        self.start = lo;
        self.bytes = words as u64 * 8;
        Ok(())
    }

    /// Fills the window at `ip` (inside `seed`) from the seed, up to the
    /// buffer's end `end`.
    fn copy_seed(&mut self, seed: &Seed, ip: u64, end: u64) {
        let first = ((ip - seed.va) / 8) as usize;
        let room = (end.saturating_sub(ip) / 8).min(SEED_FILL_WORDS as u64) as usize;
        let n = (seed.len - first).min(room);
        self.ops[..n].copy_from_slice(&seed.ops[first..first + n]);
        self.instrs[..n].copy_from_slice(&seed.instrs[first..first + n]);
        self.start = ip;
        self.bytes = n as u64 * 8;
    }
}

impl Seed {
    /// Whether `ip` is a seeded word.
    #[inline]
    fn covers(&self, ip: u64) -> bool {
        ip.wrapping_sub(self.va) < self.bytes() && ip % 8 == 0
    }
}

/// Words a ring seed holds at most: 64 jobs of 16 words (a smaller ring's
/// seed holds the ring).
pub(super) const SEED_WORDS: usize = 1024;

/// Ring words the host wrote, pre-decoded: one contiguous run of ring
/// counters `[from, from + 8 * len)` at GPU VAs `[va, va + 8 * len)`, not
/// crossing the end of the ring. See the module documentation.
#[derive(Debug, Clone, Default)]
pub(super) struct Seed {
    /// Ring counter of the first word.
    from: u64,
    /// GPU VA of the first word.
    va: u64,
    /// Seeded words (the first `len` of `ops` and `instrs`).
    len: usize,
    /// Room for a ring's words, up to [`SEED_WORDS`], given at the first
    /// job ([`Seed::allocate`]).
    ops: Box<[Op]>,
    instrs: Box<[Instr]>,
    /// The words of the last [`Seed::push`] and their decoded forms: a
    /// queue's jobs repeat most wrapper words at the same place, so a push
    /// copies these and decodes only the words that differ.
    last_words: Vec<u64>,
    last_ops: Vec<Op>,
    last_instrs: Vec<Instr>,
}

impl Seed {
    fn bytes(&self) -> u64 {
        self.len as u64 * 8
    }

    /// At the seed's first use, gives it room for a ring of `ring_words`
    /// words, at most [`SEED_WORDS`].
    pub fn allocate(&mut self, ring_words: usize, cache: &mut DecodeCache) {
        if !self.ops.is_empty() {
            return;
        }
        let n = ring_words.min(SEED_WORDS);
        let nop = *cache.get(0);
        self.ops = vec![nop.op; n].into_boxed_slice();
        self.instrs = vec![nop.instr; n].into_boxed_slice();
    }

    /// Drops the seeded words.
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Drops the seed if `[va, va + len)` overlaps it.
    #[inline]
    pub fn note_write(&mut self, va: u64, len: u64) {
        if self.len != 0 && va < self.va + self.bytes() && va.saturating_add(len) > self.va {
            self.clear();
        }
    }

    /// Adds `words`, written by the host at ring counter `at` (GPU VA
    /// `va`), of a ring ending at `ring_end`; `extract` is the stream's
    /// extract counter. Words right after the seed extend it, while it has
    /// room. Otherwise they start a new seed, unless words of the seed are
    /// still to run and these do not overwrite them: then the seed is
    /// kept and these words are not seeded.
    pub fn push(
        &mut self,
        cache: &mut DecodeCache,
        at: u64,
        va: u64,
        ring_end: u64,
        extract: u64,
        words: &[u64],
    ) {
        let end = self.from + self.bytes();
        let follows = self.len != 0 && at == end && va == self.va + self.bytes();
        if !follows || self.len + words.len() > self.ops.len() {
            let bytes = words.len() as u64 * 8;
            let overlaps = va < self.va + self.bytes() && va.saturating_add(bytes) > self.va;
            if self.len != 0 && extract < end && !overlaps {
                // Seeded words still to run: keep them, and fetch these
                // from memory.
                return;
            }
            self.len = 0;
            self.from = at;
            self.va = va;
        }
        let fits = (va as u128) + (words.len() as u128) * 8 <= u128::from(ring_end);
        if !fits || words.len() > self.ops.len() {
            // Across the end of the ring (or more than the seed holds):
            // fetched from memory.
            return;
        }
        if self.last_words.len() != words.len() {
            self.last_words.clear();
            self.last_ops.clear();
            self.last_instrs.clear();
            for &w in words {
                let d = cache.get(w);
                self.last_words.push(w);
                self.last_ops.push(d.op);
                self.last_instrs.push(d.instr);
            }
            mark_nop_runs(&mut self.last_ops);
        } else if self.last_words.as_slice() != words {
            let last = self
                .last_words
                .iter_mut()
                .zip(self.last_ops.iter_mut().zip(self.last_instrs.iter_mut()));
            for ((lw, (op, instr)), &w) in last.zip(words) {
                if *lw != w {
                    let d = cache.get(w);
                    *lw = w;
                    *op = d.op;
                    *instr = d.instr;
                }
            }
            mark_nop_runs(&mut self.last_ops);
        }
        let range = self.len..self.len + words.len();
        self.ops[range.clone()].copy_from_slice(&self.last_ops);
        self.instrs[range].copy_from_slice(&self.last_instrs);
        self.len += words.len();
    }
}

/// Sets each NOP's `imm` to the number of NOPs from it to the next other
/// word (or the end of `ops`), so that a run of NOPs executes in one step.
/// A run counted here may go on in the words after `ops`; the loop only
/// ever passes the part inside its window.
fn mark_nop_runs(ops: &mut [Op]) {
    let mut run = 0u32;
    for op in ops.iter_mut().rev() {
        if op.kind == Kind::Nop {
            run += 1;
            op.imm = run;
        } else {
            run = 0;
        }
    }
}

/// The two instruction windows a stream fetches into. Their contents are
/// dropped at the start of every slice, so one pair serves every stream
/// that runs slices one after another: the firmware lends its pair to each
/// slice ([`super::StreamState::run_lent`]), and a stream then needs no
/// buffers of its own (16 KiB each).
#[derive(Debug)]
pub struct Windows {
    pub(super) window: Window,
    pub(super) spare: Window,
}

impl Default for Windows {
    fn default() -> Self {
        Self {
            window: Window::new(),
            spare: Window::new(),
        }
    }
}

/// Sets of a [`DecodeCache`] (a power of two), and entries per set.
const CACHE_SETS: usize = 64;
const CACHE_WAYS: usize = 2;

/// One decoded word.
#[derive(Debug, Clone, Copy)]
pub(super) struct Decoded {
    word: u64,
    pub op: Op,
    /// The instruction of a valid word (anything for a [`Kind::Bad`]).
    pub instr: Instr,
}

/// Decoded words by value, two-way set-associative. Decoding a word costs
/// a few unpredictable branches (opcode, operand checks, flat form); a
/// queue's jobs repeat the same wrapper words, so most words of a fill are
/// found here instead. Two ways per set keep a dozen wrapper words that
/// share sets from evicting each other on every job, as they did with one.
/// Keyed by the word alone, an entry is right whatever memory holds now;
/// the operand checks use the stream's register and scoreboard counts,
/// fixed when the stream is made.
#[derive(Debug, Clone)]
pub(super) struct DecodeCache {
    reg_count: usize,
    scoreboards: usize,
    /// Per set, the most recently used entry first.
    sets: Box<[[Decoded; CACHE_WAYS]; CACHE_SETS]>,
    misses: u64,
}

impl DecodeCache {
    pub fn new(reg_count: usize, scoreboards: usize) -> Self {
        let nop = decode_word(0, reg_count, scoreboards);
        Self {
            reg_count,
            scoreboards,
            sets: Box::new([[nop; CACHE_WAYS]; CACHE_SETS]),
            misses: 0,
        }
    }

    /// The set `word` belongs to.
    fn set_of(word: u64) -> usize {
        // Multiply-and-shift: the top bits depend on every bit of the word.
        (word.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 58) as usize % CACHE_SETS
    }

    /// The decoded form of `word`.
    #[inline]
    pub fn get(&mut self, word: u64) -> &Decoded {
        let set = &mut self.sets[Self::set_of(word)];
        if set[0].word != word {
            if set[1].word == word {
                set.swap(0, 1);
            } else {
                self.misses += 1;
                set[1] = set[0];
                set[0] = decode_word(word, self.reg_count, self.scoreboards);
            }
        }
        &set[0]
    }
}

/// Decodes and checks one word.
fn decode_word(word: u64, reg_count: usize, scoreboards: usize) -> Decoded {
    let (op, instr) = match decode(word) {
        Ok(i) if i.check_registers(reg_count).is_ok() && slots_ok(&i, scoreboards) => {
            (Op::from_instr(&i), i)
        }
        _ => (Op::new(Kind::Bad, 0, 0, 0, 0, word), Instr::ErrorBarrier),
    };
    Decoded { word, op, instr }
}

/// Whether every scoreboard slot the instruction names exists.
fn slots_ok(i: &Instr, scoreboards: usize) -> bool {
    match *i {
        Instr::SetSbEntry { endpoint, other } => {
            usize::from(endpoint) < scoreboards && usize::from(other) < scoreboards
        }
        _ => match i.async_fields() {
            Some((_, slot)) => usize::from(slot) < scoreboards,
            None => true,
        },
    }
}

/// Why a word was refused, and the exception code for it:
/// INSTR_INVALID_ENC for a word that does not decode, CS_INSTR_INVALID for
/// a valid encoding naming a register or scoreboard slot the model lacks.
pub(super) fn classify(word: u64, reg_count: usize, scoreboards: usize) -> (u8, FaultReason) {
    let instr = match decode(word) {
        Ok(i) => i,
        Err(e) => return (exception::INSTR_INVALID_ENC, FaultReason::Decode(e)),
    };
    if let Err(e) = instr.check_registers(reg_count) {
        return (exception::CS_INSTR_INVALID, FaultReason::Register(e));
    }
    let bad_slot = match instr {
        Instr::SetSbEntry { endpoint, other } => {
            if usize::from(endpoint) >= scoreboards {
                endpoint
            } else {
                other
            }
        }
        _ => instr.async_fields().map_or(0, |(_, s)| s),
    };
    (
        exception::CS_INSTR_INVALID,
        FaultReason::ScoreboardSlot {
            slot: bad_slot,
            count: scoreboards,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(word: u64) -> usize {
        DecodeCache::set_of(word)
    }

    #[test]
    fn cache_answers_what_decoding_answers() {
        let mut c = DecodeCache::new(96, 8);
        let mov = Instr::Move32 { dst: 4, imm: 7 }.encode();
        // Another MOVE32 in the same set, and a word that does not decode
        // in the same set too: three words for two ways, so each in turn
        // replaces the least recently used.
        let twin = (1..u64::from(u32::MAX))
            .map(|imm| {
                Instr::Move32 {
                    dst: 4,
                    imm: imm as u32,
                }
                .encode()
            })
            .find(|&w| w != mov && slot(w) == slot(mov))
            .unwrap();
        let bad = (0u64..)
            .map(|n| (0xffu64 << 56) | n)
            .find(|&w| decode(w).is_err() && slot(w) == slot(mov))
            .unwrap();
        for _ in 0..2 {
            for w in [mov, twin, bad, 0] {
                let want = decode_word(w, 96, 8);
                let got = *c.get(w);
                assert_eq!(got.op, want.op, "word {w:#x}");
                if want.op.kind != Kind::Bad {
                    assert_eq!(got.instr, want.instr, "word {w:#x}");
                }
            }
        }
        // A bad word keeps its raw value for the fault report.
        assert_eq!(c.get(bad).op, Op::new(Kind::Bad, 0, 0, 0, 0, bad));
        // The stream's operand limits apply: r95 exists on 96 registers
        // but not on 64.
        let high = Instr::Move32 { dst: 95, imm: 1 }.encode();
        assert_eq!(c.get(high).op.kind, Kind::Move32);
        assert_eq!(DecodeCache::new(64, 8).get(high).op.kind, Kind::Bad);
    }

    #[test]
    fn two_words_of_one_set_both_stay_cached() {
        let mut c = DecodeCache::new(96, 8);
        let a = Instr::Move32 { dst: 4, imm: 7 }.encode();
        let b = (1..u64::from(u32::MAX))
            .map(|imm| {
                Instr::Move32 {
                    dst: 5,
                    imm: imm as u32,
                }
                .encode()
            })
            .find(|&w| slot(w) == slot(a))
            .unwrap();
        c.get(a);
        c.get(b);
        assert_eq!(c.misses, 2);
        for _ in 0..4 {
            assert_eq!(c.get(a).word, a);
            assert_eq!(c.get(b).word, b);
        }
        assert_eq!(c.misses, 2, "alternating words of one set must both hit");
    }
}
