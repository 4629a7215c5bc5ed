//! The architectural state of one command stream interface and how the
//! firmware programs it: register file, instruction pointer and call stack,
//! the root buffer (a ring or a linear buffer), scoreboards, the error
//! state and the records kept for the firmware.

use crate::gpu::cs::{CsState, REG_COUNT_V10, SCOREBOARD_SLOTS_V10};

use super::fetch::{DecodeCache, Seed, Window};
use super::stop::{ConfigError, Stop};

/// The largest register file an encoding can address (8-bit register
/// fields).
pub const MAX_REGS: usize = 256;
/// The most scoreboard slots an encoding can address (4-bit slot fields).
pub const MAX_SCOREBOARDS: usize = 16;
/// The most call frames the interpreter supports.
pub const MAX_FRAMES: usize = 16;
/// Capacity of the deferred-operation queue (operations with a memory
/// effect whose scoreboard wait has not finished). An operation that finds
/// it full stalls the stream until the earliest entry retires.
pub const DEFERRED_CAPACITY: usize = 32;

/// The shape of the command stream interface (CS_FEATURES and the call
/// stack depth of the model).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CsLimits {
    /// Work registers (CS_FEATURES.WORK_REGS): 96 on v10, 128 on v12+.
    /// Between 64 (the RUN_* staging registers need r0..r63) and 256.
    pub reg_count: usize,
    /// Scoreboard slots (CS_FEATURES.SCOREBOARDS): 8 on v10, 16 on v11+.
    pub scoreboards: usize,
    /// Call-stack frames, the active one included: 8 on a G610.
    pub max_frames: usize,
}

impl CsLimits {
    /// A v10 (Mali-G610) command stream interface.
    pub const V10: CsLimits = CsLimits {
        reg_count: REG_COUNT_V10,
        scoreboards: SCOREBOARD_SLOTS_V10,
        max_frames: 8,
    };

    /// Checks that the interpreter supports these limits.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(64..=MAX_REGS).contains(&self.reg_count) {
            return Err(ConfigError::Limits("reg_count must be in 64..=256"));
        }
        if !(1..=MAX_SCOREBOARDS).contains(&self.scoreboards) {
            return Err(ConfigError::Limits("scoreboards must be in 1..=16"));
        }
        if !(1..=MAX_FRAMES).contains(&self.max_frames) {
            return Err(ConfigError::Limits("max_frames must be in 1..=16"));
        }
        Ok(())
    }
}

impl Default for CsLimits {
    fn default() -> Self {
        Self::V10
    }
}

/// Modelled durations of asynchronous operations, in nanoseconds.
///
/// A job's duration is `run_base_ns + units * per-unit cost`, clamped to
/// `max_run_ns`, where the units come from the staging registers: the
/// workgroup count of a compute job (r37 * r38 * r39), vertices times
/// instances of a draw (r33 * r34), the 16x16-pixel tiles of a fragment
/// job's bounding box (r42/r43). Jobs on the same iterator (compute,
/// fragment, tiler) run one after the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimingModel {
    /// Fixed cost of every RUN_* and FINISH_TILING.
    pub run_base_ns: u64,
    /// Cost per compute workgroup.
    pub compute_ns_per_workgroup: u64,
    /// Cost per vertex (index count times instance count).
    pub vertex_ns: u64,
    /// Cost per 16x16 tile of a fragment job.
    pub fragment_ns_per_tile: u64,
    /// Upper bound of one job's duration.
    pub max_run_ns: u64,
    /// FLUSH_CACHE2.
    pub flush_ns: u64,
    /// FINISH_FRAGMENT, HEAP_OPERATION and TRACE_POINT.
    pub bookkeeping_ns: u64,
}

impl TimingModel {
    /// Everything completes at the instant it is issued.
    pub const ZERO: TimingModel = TimingModel {
        run_base_ns: 0,
        compute_ns_per_workgroup: 0,
        vertex_ns: 0,
        fragment_ns_per_tile: 0,
        max_run_ns: 0,
        flush_ns: 0,
        bookkeeping_ns: 0,
    };

    /// Durations of the order of a G610's: 2 µs per job plus 2 ns per
    /// workgroup, 1 ns per vertex, 20 ns per tile, at most 2 ms. Cache
    /// flushes and heap bookkeeping are free, so the kernel's per-job
    /// FLUSH_CACHE2 + WAIT costs no timer round trip.
    pub const DEFAULT: TimingModel = TimingModel {
        run_base_ns: 2_000,
        compute_ns_per_workgroup: 2,
        vertex_ns: 1,
        fragment_ns_per_tile: 20,
        max_run_ns: 2_000_000,
        flush_ns: 0,
        bookkeeping_ns: 0,
    };
}

impl Default for TimingModel {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// A saved call frame: where to return and the caller's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) struct Frame {
    pub ret_ip: u64,
    pub start: u64,
    pub end: u64,
}

/// The root buffer the firmware programmed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Root {
    /// Nothing programmed: `run` returns [`Stop::Done`].
    None,
    /// A linear buffer `[start, end)`.
    Linear,
    /// A ring buffer of `size` bytes at `base`, consumed from the monotonic
    /// byte counter `extract` up to `insert`. The current segment (from
    /// `seg_va`, whose counter is `seg_extract`, to the insert point or the
    /// end of the ring) is the root frame's buffer.
    Ring {
        base: u64,
        size: u64,
        seg_va: u64,
        seg_extract: u64,
        insert: u64,
    },
}

/// SET_EXCEPTION_HANDLER registration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ExceptionHandler {
    /// Exception type (2 = tiler out of memory).
    pub exception_type: u8,
    /// Handler stream address (0 disables).
    pub address: u64,
    /// Handler stream length in bytes (0 disables).
    pub length: u32,
}

/// REQ_RESOURCE: the endpoints the stream holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Resources {
    /// Compute endpoint requested.
    pub compute: bool,
    /// Fragment endpoint requested.
    pub fragment: bool,
    /// Tiler endpoint requested.
    pub tiler: bool,
    /// IDVS endpoint requested.
    pub idvs: bool,
}

/// Tiler heap bookkeeping (HEAP_SET, HEAP_OPERATION, FINISH_FRAGMENT).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HeapState {
    /// The heap context address of the last HEAP_SET.
    pub context: u64,
    /// HEAP_OPERATION vt_start count.
    pub vt_start: u64,
    /// HEAP_OPERATION vt_complete count.
    pub vt_complete: u64,
    /// HEAP_OPERATION fragment_complete count.
    pub fragment_complete: u64,
    /// FINISH_FRAGMENT count.
    pub finish_fragment: u64,
    /// First and last heap chunk of the last FINISH_FRAGMENT.
    pub released_chunks: (u64, u64),
}

/// Counters kept for traces and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stats {
    /// Instructions executed, counting each attempt of one that blocks.
    pub instructions: u64,
    /// RUN_* and FINISH_TILING issued.
    pub runs: u64,
    /// SYNC_ADD/SET performed.
    pub sync_writes: u64,
    /// FLUSH_CACHE2 performed.
    pub flushes: u64,
    /// FLUSH_CACHE2 elided by the flush ID.
    pub flushes_elided: u64,
    /// Instruction-window fills.
    pub fetches: u64,
}

/// A memory-writing operation whose scoreboard wait was still pending when
/// it was issued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Deferred {
    /// When it executes.
    pub due_ns: u64,
    /// Issue order, to break ties.
    pub seq: u64,
    /// The issuing instruction (for fault reports).
    pub ip: u64,
    /// The CS error state at issue.
    pub error: bool,
    pub op: DeferredOp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum DeferredOp {
    Sync {
        kind: SyncKind,
        addr: u64,
        value: u64,
        propagate: bool,
    },
    StoreState {
        addr: u64,
        state: CsState,
    },
}

/// SYNC_ADD/SET flavours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SyncKind {
    Add32,
    Set32,
    Add64,
    Set64,
}

impl SyncKind {
    pub const fn is_64(self) -> bool {
        matches!(self, SyncKind::Add64 | SyncKind::Set64)
    }
}

/// One command stream: everything the CS keeps between slices. See the
/// [module documentation](super) for the execution model.
#[derive(Debug, Clone)]
pub struct StreamState {
    pub(super) limits: CsLimits,
    pub(super) timing: TimingModel,
    /// The register file, sized for any 8-bit register index; only the
    /// first `limits.reg_count` are reachable (instructions naming others
    /// are refused before they execute).
    pub(super) regs: [u32; MAX_REGS],

    /// The active frame: next instruction and buffer `[start, end)`.
    pub(super) ip: u64,
    pub(super) start: u64,
    pub(super) end: u64,
    /// Saved frames, outermost first; `depth` of them are live.
    pub(super) stack: [Frame; MAX_FRAMES],
    pub(super) depth: usize,
    pub(super) root: Root,

    pub(super) window: Window,
    /// The window of the buffer left by the last CALL or return, kept so
    /// that coming back to it (a return into the ring after each job's
    /// user stream) needs no new fill. Dropped together with `window`.
    pub(super) spare: Window,
    /// Recently decoded words, for both windows' fills.
    pub(super) decoded: DecodeCache,
    /// Ring words the host wrote, pre-decoded ([`StreamState::seed_ring`]).
    pub(super) seed: Seed,

    /// Per slot: the modelled time its last pending operation completes.
    pub(super) sb_busy_until: [u64; MAX_SCOREBOARDS],
    /// Slots whose `sb_busy_until` may still be in the future.
    pub(super) sb_pending: u16,
    pub(super) sb_endpoint: u8,
    pub(super) sb_other: u8,
    /// Per iterator (compute, fragment, tiler): when it is free again.
    pub(super) iter_busy_until: [u64; 3],
    pub(super) deferred: Vec<Deferred>,
    pub(super) deferred_seq: u64,

    /// The CS error state: set by an inherited or raised fault, cleared by
    /// ERROR_BARRIER.
    pub(super) error: bool,
    pub(super) exception_handler: ExceptionHandler,
    pub(super) resources: Resources,
    pub(super) heap: HeapState,
    pub(super) progress: u64,
    pub(super) prot_region: Option<u16>,

    /// The time of the current (or last) slice.
    pub(super) now: u64,
    /// A fatal stop, returned by every `run` until the stream is
    /// programmed again.
    pub(super) halted: Option<Stop>,
    pub(super) stats: Stats,
}

impl StreamState {
    /// A stream with the given limits and timing model, registers zeroed
    /// and nothing programmed.
    pub fn new(limits: CsLimits, timing: TimingModel) -> Result<Self, ConfigError> {
        limits.validate()?;
        Ok(Self::build(limits, timing))
    }

    /// Builds a stream for limits that passed [`CsLimits::validate`].
    fn build(limits: CsLimits, timing: TimingModel) -> Self {
        Self {
            limits,
            timing,
            regs: [0; MAX_REGS],
            ip: 0,
            start: 0,
            end: 0,
            stack: [Frame::default(); MAX_FRAMES],
            depth: 0,
            root: Root::None,
            window: Window::new(),
            spare: Window::new(),
            decoded: DecodeCache::new(limits.reg_count, limits.scoreboards),
            seed: Seed::default(),
            sb_busy_until: [0; MAX_SCOREBOARDS],
            sb_pending: 0,
            sb_endpoint: 0,
            sb_other: 0,
            iter_busy_until: [0; 3],
            deferred: Vec::with_capacity(DEFERRED_CAPACITY),
            deferred_seq: 0,
            error: false,
            exception_handler: ExceptionHandler::default(),
            resources: Resources::default(),
            heap: HeapState::default(),
            progress: 0,
            prot_region: None,
            now: 0,
            halted: None,
            stats: Stats::default(),
        }
    }

    /// A v10 stream ([`CsLimits::V10`]) with the given timing model.
    pub fn v10(timing: TimingModel) -> Self {
        Self::build(CsLimits::V10, timing)
    }

    /// Back to the state of [`StreamState::new`] (limits and timing kept).
    pub fn reset(&mut self) {
        *self = Self::build(self.limits, self.timing);
    }

    /// Clears the control state of a (re)started stream: call stack, halt,
    /// fetch window. Registers, scoreboards and records are kept, as they
    /// are across a CS stop/start.
    fn restart(&mut self) {
        self.depth = 0;
        self.halted = None;
        self.drop_windows();
        self.seed.clear();
    }

    /// Runs a ring buffer, as CS_START with RINGBUF_BASE / RINGBUF_SIZE and
    /// the ring's extract and insert counters does: instructions are
    /// fetched from `base + (counter & (size - 1))` while
    /// `extract < insert`, wrapping at the end of the ring.
    pub fn start_ring(
        &mut self,
        base: u64,
        size: u64,
        extract: u64,
        insert: u64,
    ) -> Result<(), ConfigError> {
        if base % 8 != 0 {
            return Err(ConfigError::Misaligned(base));
        }
        if size < 8 || !size.is_power_of_two() {
            return Err(ConfigError::RingSize(size));
        }
        base.checked_add(size).ok_or(ConfigError::Wraps)?;
        if extract % 8 != 0 || insert % 8 != 0 || insert < extract || insert - extract > size {
            return Err(ConfigError::Insert {
                insert,
                extract,
                size,
            });
        }
        self.restart();
        let seg_va = base + (extract & (size - 1));
        self.root = Root::Ring {
            base,
            size,
            seg_va,
            seg_extract: extract,
            insert,
        };
        self.ip = seg_va;
        self.start = seg_va;
        self.end = self.ring_segment_end();
        Ok(())
    }

    /// Runs the linear buffer `[start, end)` as the root (tools and tests;
    /// Panthor's queues are rings).
    pub fn start_linear(&mut self, start: u64, end: u64) -> Result<(), ConfigError> {
        if start % 8 != 0 {
            return Err(ConfigError::Misaligned(start));
        }
        if end % 8 != 0 {
            return Err(ConfigError::Misaligned(end));
        }
        if end < start {
            return Err(ConfigError::Reversed);
        }
        self.restart();
        self.root = Root::Linear;
        self.ip = start;
        self.start = start;
        self.end = end;
        Ok(())
    }

    /// The host moved the ring's insert counter (new jobs were copied in).
    /// It may not move backwards, nor more than a ring ahead of extract.
    pub fn set_insert(&mut self, insert: u64) -> Result<(), ConfigError> {
        let extract = self.extract();
        let Root::Ring {
            size,
            insert: ref mut cur,
            ..
        } = self.root
        else {
            return Err(ConfigError::NotARing);
        };
        if insert % 8 != 0 || insert < *cur || insert - extract > size {
            return Err(ConfigError::Insert {
                insert,
                extract,
                size,
            });
        }
        *cur = insert;
        let end = self.ring_segment_end();
        if self.depth == 0 {
            self.end = end;
        } else {
            self.stack[0].end = end;
        }
        // The host wrote the ring: drop what was fetched.
        self.drop_windows();
        Ok(())
    }

    /// The host wrote `words` into the ring at counter `at` (before moving
    /// the insert counter over them): the stream keeps them pre-decoded
    /// and fetches them from here instead of memory (see [`super::fetch`]
    /// for what that means for later writes to ring memory). Nothing
    /// happens for a stream that is not running a ring.
    pub fn seed_ring(&mut self, at: u64, words: &[u64]) {
        let Root::Ring { base, size, .. } = self.root else {
            return;
        };
        let extract = self.extract();
        let va = base + (at & (size - 1));
        let ring_words = usize::try_from(size / 8).unwrap_or(usize::MAX);
        self.seed.allocate(ring_words, &mut self.decoded);
        self.seed
            .push(&mut self.decoded, at, va, base + size, extract, words);
    }

    /// The stream wrote `[va, va + len)`: drops whatever was fetched or
    /// seeded from there.
    pub(super) fn note_write(&mut self, va: u64, len: u64) {
        self.window.note_write(va, len);
        self.spare.note_write(va, len);
        self.seed.note_write(va, len);
    }

    /// End of the current ring segment: the insert point or the end of the
    /// ring, whichever comes first.
    pub(super) fn ring_segment_end(&self) -> u64 {
        match self.root {
            Root::Ring {
                base,
                size,
                seg_va,
                seg_extract,
                insert,
            } => (base + size).min(seg_va.saturating_add(insert - seg_extract)),
            _ => self.end,
        }
    }

    /// Drops both instruction windows (the stream's memory may have
    /// changed).
    pub(super) fn drop_windows(&mut self) {
        self.window.invalidate();
        self.spare.invalidate();
    }

    /// The ring's extract counter: the position of the next root
    /// instruction (while a CALL runs, of the instruction after the CALL).
    /// For a linear root, the byte offset from the buffer start is not
    /// tracked and this returns 0.
    pub fn extract(&self) -> u64 {
        match self.root {
            Root::Ring {
                seg_va,
                seg_extract,
                ..
            } => {
                let root_ip = if self.depth == 0 {
                    self.ip
                } else {
                    self.stack[0].ret_ip
                };
                seg_extract + (root_ip - seg_va)
            }
            _ => 0,
        }
    }

    /// The ring's insert counter (0 for a linear root).
    pub fn insert(&self) -> u64 {
        match self.root {
            Root::Ring { insert, .. } => insert,
            _ => 0,
        }
    }

    /// The GPU VA of the next instruction (CS_STATUS_CMD_PTR).
    pub fn ip(&self) -> u64 {
        self.ip
    }

    /// The current buffer `[start, end)`.
    pub fn buffer(&self) -> (u64, u64) {
        (self.start, self.end)
    }

    /// Call frames in use, the active one included (1 at the root).
    pub fn frames(&self) -> usize {
        self.depth + 1
    }

    /// The limits.
    pub fn limits(&self) -> &CsLimits {
        &self.limits
    }

    /// The timing model.
    pub fn timing(&self) -> &TimingModel {
        &self.timing
    }

    /// Replaces the timing model (affects operations issued afterwards).
    pub fn set_timing(&mut self, timing: TimingModel) {
        self.timing = timing;
    }

    /// The registers of the model (`reg_count` of them).
    pub fn regs(&self) -> &[u32] {
        &self.regs[..self.limits.reg_count]
    }

    /// Register `r` (0 if the model does not have it).
    pub fn reg(&self, r: usize) -> u32 {
        self.regs().get(r).copied().unwrap_or(0)
    }

    /// Register pair `dN` = (rN, rN+1) as a 64-bit value (0 if the model
    /// does not have it).
    pub fn reg64(&self, n: usize) -> u64 {
        match self.regs().get(n..n.saturating_add(2)) {
            Some(&[lo, hi]) => u64::from(lo) | (u64::from(hi) << 32),
            _ => 0,
        }
    }

    /// Sets register `r`; ignored if the model does not have it.
    pub fn set_reg(&mut self, r: usize, value: u32) {
        if let Some(slot) = self.regs[..self.limits.reg_count].get_mut(r) {
            *slot = value;
        }
    }

    /// Sets the pair `dN`; ignored if the model does not have it.
    pub fn set_reg64(&mut self, n: usize, value: u64) {
        if let Some([lo, hi]) = self.regs[..self.limits.reg_count].get_mut(n..n.saturating_add(2)) {
            *lo = value as u32;
            *hi = (value >> 32) as u32;
        }
    }

    /// Whether the stream is in its error state (an inherited fault not
    /// yet cleared by ERROR_BARRIER).
    pub fn error_state(&self) -> bool {
        self.error
    }

    /// The SET_SB_ENTRY entries: (endpoint, other).
    pub fn sb_entries(&self) -> (u8, u8) {
        (self.sb_endpoint, self.sb_other)
    }

    /// CS_STATUS_SCOREBOARDS at time `now_ns`: a bit per slot with
    /// operations still in flight.
    pub fn scoreboard_status(&self, now_ns: u64) -> u16 {
        let mut mask = 0u16;
        let mut m = self.sb_pending;
        while m != 0 {
            let s = m.trailing_zeros() as usize;
            m &= m - 1;
            if self.sb_busy_until.get(s).is_some_and(|&t| t > now_ns) {
                mask |= 1 << s;
            }
        }
        mask
    }

    /// The earliest modelled time at which something of this stream
    /// completes on its own: a pending scoreboard slot drains or a deferred
    /// operation is due. After any stop other than a halt, a firmware that
    /// gets `Some(t)` calls `run` again at `t` or later (a deferred
    /// SYNC_ADD may be what unblocks a waiter).
    pub fn next_deadline_ns(&self) -> Option<u64> {
        let deferred = self.deferred.iter().map(|d| d.due_ns).min();
        let mut sb: Option<u64> = None;
        let mut m = self.sb_pending;
        while m != 0 {
            let s = m.trailing_zeros() as usize;
            m &= m - 1;
            if let Some(&t) = self.sb_busy_until.get(s) {
                if t > self.now {
                    sb = Some(sb.map_or(t, |x| x.min(t)));
                }
            }
        }
        match (deferred, sb) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Deferred operations not yet performed.
    pub fn deferred_ops(&self) -> usize {
        self.deferred.len()
    }

    /// The SET_EXCEPTION_HANDLER registration.
    pub fn exception_handler(&self) -> ExceptionHandler {
        self.exception_handler
    }

    /// The REQ_RESOURCE state.
    pub fn resources(&self) -> Resources {
        self.resources
    }

    /// Tiler heap records.
    pub fn heap(&self) -> HeapState {
        self.heap
    }

    /// The progress counter (PROGRESS_LOAD reads it, progress_inc bumps
    /// it, PROGRESS_STORE sets it).
    pub fn progress(&self) -> u64 {
        self.progress
    }

    /// The size operand of the last PROT_REGION, in instructions.
    pub fn prot_region(&self) -> Option<u16> {
        self.prot_region
    }

    /// Counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The halt, if a fatal fault stopped the stream.
    pub fn halted(&self) -> Option<Stop> {
        self.halted
    }
}
