//! A small assembler for v10 command streams, used by tests, benchmarks and
//! guest tools to write streams without hand-encoding words.
//!
//! Every method appends one instruction and returns `&mut Self`, so calls can
//! be chained. Arguments are validated against the builder's limits (register
//! file size, scoreboard slot count, field widths). The first invalid argument
//! is recorded together with the index of the instruction it belongs to;
//! later calls are ignored and [`Builder::finish`] returns that error. No
//! method panics.
//!
//! Branches can target [`Label`]s. A label is created with
//! [`Builder::label`], placed with [`Builder::bind`] (before or after the
//! branches that use it) and resolved by [`Builder::finish`]. Branch offsets
//! count instructions from the instruction after the branch and must fit in
//! 16 signed bits.
//!
//! ```
//! use vhost_user_mali::gpu::cs::builder::Builder;
//! use vhost_user_mali::gpu::cs::isa::Cond;
//!
//! let mut b = Builder::new();
//! let top = b.label();
//! b.move32(0, 10);
//! b.bind(top);
//! b.add_imm32(0, 0, -1);
//! b.branch_to(Cond::Ne, 0, top);
//! let words = b.finish().unwrap();
//! assert_eq!(words.len(), 3);
//! assert_eq!(words[2] & 0xffff, 0xfffe); // back two instructions
//! ```

use thiserror::Error;

use super::isa::{
    Cond, CsState, EncodeError, FlushMode, HeapOp, IdvsSelect, Instr, OtherFlushMode, ShaderSelect,
    SyncCond, SyncScope, TaskAxis, TileOrder, REG_COUNT_V10, SCOREBOARD_SLOTS_V10,
};

/// Maximum number of scoreboard slots any encoding can address (4-bit slot
/// fields, 16-bit masks).
const MAX_SB_SLOTS: usize = 16;

/// Errors reported by [`Builder::finish`]. `index` is the position of the
/// offending instruction in the stream.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum BuildError {
    /// A 32-bit register operand is outside the register file.
    #[error("instruction {index}: register r{reg} out of range (limit {reg_count})")]
    RegisterOutOfRange {
        /// Instruction index.
        index: usize,
        /// The register index (for multi-register operands, the highest one).
        reg: u16,
        /// The register file size.
        reg_count: usize,
    },
    /// A 64-bit register pair has its high half outside the register file.
    #[error("instruction {index}: register pair d{reg} out of range (limit {reg_count})")]
    PairOutOfRange {
        /// Instruction index.
        index: usize,
        /// The low register of the pair.
        reg: u8,
        /// The register file size.
        reg_count: usize,
    },
    /// A 64-bit register pair starts at an odd register.
    #[error("instruction {index}: register pair d{reg} is not even-aligned")]
    OddRegisterPair {
        /// Instruction index.
        index: usize,
        /// The low register of the pair.
        reg: u8,
    },
    /// An immediate does not fit its field.
    #[error("instruction {index}: {field} value {value} does not fit")]
    ImmediateOutOfRange {
        /// Instruction index.
        index: usize,
        /// Field name.
        field: &'static str,
        /// The value given.
        value: i128,
    },
    /// A scoreboard slot does not exist.
    #[error("instruction {index}: scoreboard slot {slot} out of range (limit {slots})")]
    SlotOutOfRange {
        /// Instruction index.
        index: usize,
        /// The slot given.
        slot: u8,
        /// Number of scoreboard slots.
        slots: usize,
    },
    /// A scoreboard wait mask names slots that do not exist.
    #[error("instruction {index}: wait mask {mask:#x} names missing slots (limit {slots})")]
    WaitMaskOutOfRange {
        /// Instruction index.
        index: usize,
        /// The mask given.
        mask: u16,
        /// Number of scoreboard slots.
        slots: usize,
    },
    /// An instruction pushed with [`Builder::push`] has a field wider than
    /// its encoding.
    #[error("instruction {index}: {source}")]
    Encode {
        /// Instruction index.
        index: usize,
        /// The field error.
        #[source]
        source: EncodeError,
    },
    /// A label was bound twice.
    #[error("label {label} bound twice")]
    LabelRebound {
        /// The label number.
        label: usize,
    },
    /// A label does not belong to this builder.
    #[error("label {label} does not belong to this builder")]
    UnknownLabel {
        /// The label number.
        label: usize,
    },
    /// A branch targets a label that was never bound.
    #[error("instruction {index}: branch to unbound label {label}")]
    UnboundLabel {
        /// Instruction index of the branch.
        index: usize,
        /// The label number.
        label: usize,
    },
    /// A branch target is further than a 16-bit signed offset can reach.
    #[error("instruction {index}: branch offset {offset} out of range")]
    BranchOutOfRange {
        /// Instruction index of the branch.
        index: usize,
        /// The offset that would be needed.
        offset: i64,
    },
    /// The builder limits are unusable (register count above 256 or
    /// scoreboard slot count above 16).
    #[error("invalid builder limits: {reg_count} registers, {slots} scoreboard slots")]
    InvalidLimits {
        /// Register count asked for.
        reg_count: usize,
        /// Scoreboard slot count asked for.
        slots: usize,
    },
    /// The stream grew past what can be addressed.
    #[error("stream too long")]
    TooLong,
}

/// A branch target inside one [`Builder`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Label(usize);

/// The scoreboard behaviour of an instruction with explicit wait/signal
/// fields: wait for every slot in `wait_mask`, then signal `signal_slot`
/// when the operation completes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct AsyncOp {
    /// Scoreboard slots to wait for before starting.
    pub wait_mask: u16,
    /// Slot signalled on completion.
    pub signal_slot: u8,
}

impl AsyncOp {
    /// Synchronous: no wait, slot field 0.
    pub const NOW: AsyncOp = AsyncOp {
        wait_mask: 0,
        signal_slot: 0,
    };

    /// Deferred: wait for `wait_mask`, signal `signal_slot`.
    pub const fn defer(wait_mask: u16, signal_slot: u8) -> AsyncOp {
        AsyncOp {
            wait_mask,
            signal_slot,
        }
    }
}

/// Command-stream assembler. See the module documentation.
#[derive(Debug, Clone)]
pub struct Builder {
    instrs: Vec<Instr>,
    /// Bound position of each label, by label number.
    labels: Vec<Option<usize>>,
    /// (branch instruction index, label) pairs to patch at finish.
    fixups: Vec<(usize, Label)>,
    reg_count: usize,
    sb_slots: usize,
    allow_odd_pairs: bool,
    error: Option<BuildError>,
}

impl Default for Builder {
    fn default() -> Self {
        Self::new()
    }
}

impl Builder {
    /// A builder for a v10 model: 96 registers, 8 scoreboard slots, pairs
    /// must start at an even register.
    pub fn new() -> Self {
        Builder {
            instrs: Vec::new(),
            labels: Vec::new(),
            fixups: Vec::new(),
            reg_count: REG_COUNT_V10,
            sb_slots: SCOREBOARD_SLOTS_V10,
            allow_odd_pairs: false,
            error: None,
        }
    }

    /// A builder with other limits: `reg_count` registers (at most 256) and
    /// `sb_slots` scoreboard slots (at most 16). Unusable limits are
    /// reported by [`Builder::finish`].
    pub fn with_limits(reg_count: usize, sb_slots: usize) -> Self {
        let mut b = Self::new();
        if reg_count > 256 || sb_slots > MAX_SB_SLOTS {
            b.error = Some(BuildError::InvalidLimits {
                reg_count,
                slots: sb_slots,
            });
        }
        b.reg_count = reg_count;
        b.sb_slots = sb_slots;
        b
    }

    /// Accept 64-bit register pairs that start at an odd register (the
    /// hardware encoding allows them; Mesa never emits them).
    pub fn allow_odd_pairs(mut self, allow: bool) -> Self {
        self.allow_odd_pairs = allow;
        self
    }

    /// Number of instructions emitted so far.
    pub fn len(&self) -> usize {
        self.instrs.len()
    }

    /// Whether nothing has been emitted yet.
    pub fn is_empty(&self) -> bool {
        self.instrs.is_empty()
    }

    /// The first error recorded, if any.
    pub fn error(&self) -> Option<&BuildError> {
        self.error.as_ref()
    }

    /// The instructions emitted so far (branches to labels still have offset
    /// 0 until [`Builder::finish`]).
    pub fn instrs(&self) -> &[Instr] {
        &self.instrs
    }

    fn fail(&mut self, e: BuildError) {
        if self.error.is_none() {
            self.error = Some(e);
        }
    }

    /// Index the next instruction will get.
    fn next_index(&self) -> usize {
        self.instrs.len()
    }

    fn reg(&self, r: u8) -> Result<(), BuildError> {
        if usize::from(r) < self.reg_count {
            Ok(())
        } else {
            Err(BuildError::RegisterOutOfRange {
                index: self.next_index(),
                reg: r.into(),
                reg_count: self.reg_count,
            })
        }
    }

    fn pair(&self, r: u8) -> Result<(), BuildError> {
        let index = self.next_index();
        if !self.allow_odd_pairs && r & 1 == 1 {
            return Err(BuildError::OddRegisterPair { index, reg: r });
        }
        if usize::from(r) + 1 < self.reg_count {
            Ok(())
        } else {
            Err(BuildError::PairOutOfRange {
                index,
                reg: r,
                reg_count: self.reg_count,
            })
        }
    }

    /// Checks that registers `base + i` exist for `i` in `0..count`.
    fn reg_range(&self, base: u8, count: u16) -> Result<(), BuildError> {
        if count == 0 {
            return Ok(());
        }
        let last = u16::from(base) + count - 1;
        if usize::from(last) < self.reg_count {
            Ok(())
        } else {
            Err(BuildError::RegisterOutOfRange {
                index: self.next_index(),
                reg: last,
                reg_count: self.reg_count,
            })
        }
    }

    fn imm(
        &self,
        field: &'static str,
        value: i128,
        min: i128,
        max: i128,
    ) -> Result<(), BuildError> {
        if (min..=max).contains(&value) {
            Ok(())
        } else {
            Err(BuildError::ImmediateOutOfRange {
                index: self.next_index(),
                field,
                value,
            })
        }
    }

    fn slot(&self, slot: u8) -> Result<(), BuildError> {
        if usize::from(slot) < self.sb_slots.min(MAX_SB_SLOTS) {
            Ok(())
        } else {
            Err(BuildError::SlotOutOfRange {
                index: self.next_index(),
                slot,
                slots: self.sb_slots,
            })
        }
    }

    /// Mask of the slots that exist.
    fn slot_mask(&self) -> u16 {
        match self.sb_slots {
            0 => 0,
            n if n >= MAX_SB_SLOTS => u16::MAX,
            n => (1u16 << n) - 1,
        }
    }

    fn wait_mask(&self, mask: u16) -> Result<(), BuildError> {
        if mask & !self.slot_mask() == 0 {
            Ok(())
        } else {
            Err(BuildError::WaitMaskOutOfRange {
                index: self.next_index(),
                mask,
                slots: self.sb_slots,
            })
        }
    }

    fn async_op(&self, a: AsyncOp) -> Result<(), BuildError> {
        self.wait_mask(a.wait_mask)?;
        self.slot(a.signal_slot)
    }

    /// Runs the checks, then appends the instruction built by `make`.
    fn emit(
        &mut self,
        checks: impl FnOnce(&Self) -> Result<(), BuildError>,
        make: impl FnOnce() -> Instr,
    ) -> &mut Self {
        if self.error.is_some() {
            return self;
        }
        if self.instrs.len() >= i64::MAX as usize / 8 {
            self.fail(BuildError::TooLong);
            return self;
        }
        match checks(self) {
            Ok(()) => self.instrs.push(make()),
            Err(e) => self.fail(e),
        }
        self
    }

    /// Appends an already-built instruction after checking its field widths
    /// and register operands against the builder limits. Odd register pairs
    /// are accepted here, as they are valid encodings.
    pub fn push(&mut self, instr: Instr) -> &mut Self {
        let reg_count = self.reg_count;
        self.emit(
            |b| {
                instr.validate().map_err(|source| BuildError::Encode {
                    index: b.next_index(),
                    source,
                })?;
                instr.check_registers(reg_count).map_err(|e| match e {
                    super::isa::RegisterError::RegOutOfRange { reg, reg_count } => {
                        BuildError::RegisterOutOfRange {
                            index: b.next_index(),
                            reg,
                            reg_count,
                        }
                    }
                    super::isa::RegisterError::PairOutOfRange { reg, reg_count } => {
                        BuildError::PairOutOfRange {
                            index: b.next_index(),
                            // Pair indices come from u8 fields.
                            reg: reg as u8,
                            reg_count,
                        }
                    }
                })?;
                if let Some((wait_mask, signal_slot)) = instr.async_fields() {
                    b.async_op(AsyncOp::defer(wait_mask, signal_slot))?;
                }
                Ok(())
            },
            || instr,
        )
    }

    /// NOP.
    pub fn nop(&mut self) -> &mut Self {
        self.emit(|_| Ok(()), || Instr::Nop { ignored: 0 })
    }

    /// Appends NOPs until the length is a multiple of `n` instructions
    /// (`n` = 0 or 1 does nothing).
    pub fn pad_to(&mut self, n: usize) -> &mut Self {
        if n > 1 {
            let missing = (n - self.instrs.len() % n) % n;
            for _ in 0..missing {
                self.nop();
            }
        }
        self
    }

    /// MOVE48: `dN = imm` (48-bit).
    pub fn move48(&mut self, d: u8, imm: u64) -> &mut Self {
        self.emit(
            |b| {
                b.pair(d)?;
                b.imm("move48 immediate", imm.into(), 0, (1 << 48) - 1)
            },
            || Instr::Move48 { dst: d, imm },
        )
    }

    /// MOVE32: `rN = imm`.
    pub fn move32(&mut self, r: u8, imm: u32) -> &mut Self {
        self.emit(|b| b.reg(r), || Instr::Move32 { dst: r, imm })
    }

    /// ADD_IMMEDIATE32: `dst = src + imm`.
    pub fn add_imm32(&mut self, dst: u8, src: u8, imm: i32) -> &mut Self {
        self.emit(
            |b| {
                b.reg(dst)?;
                b.reg(src)
            },
            || Instr::AddImm32 { dst, src, imm },
        )
    }

    /// ADD_IMMEDIATE64: `dDst = dSrc + sign_extend(imm)`.
    pub fn add_imm64(&mut self, dst: u8, src: u8, imm: i32) -> &mut Self {
        self.emit(
            |b| {
                b.pair(dst)?;
                b.pair(src)
            },
            || Instr::AddImm64 { dst, src, imm },
        )
    }

    /// UMIN32: `dst = min_u(src0, src1)`.
    pub fn umin32(&mut self, dst: u8, src0: u8, src1: u8) -> &mut Self {
        self.emit(
            |b| {
                b.reg(dst)?;
                b.reg(src0)?;
                b.reg(src1)
            },
            || Instr::Umin32 { dst, src0, src1 },
        )
    }

    fn multiple_checks(&self, base: u8, mask: u16, address: u8) -> Result<(), BuildError> {
        self.pair(address)?;
        let span = 16 - mask.leading_zeros() as u16;
        self.reg_range(base, span)
    }

    /// LOAD_MULTIPLE: for each set bit i of `mask`,
    /// `r(base+i) = mem32[dAddress + offset + 4i]`.
    pub fn load_multiple(&mut self, base: u8, mask: u16, address: u8, offset: i16) -> &mut Self {
        self.emit(
            |b| b.multiple_checks(base, mask, address),
            || Instr::LoadMultiple {
                base,
                address,
                mask,
                offset,
            },
        )
    }

    /// STORE_MULTIPLE: for each set bit i of `mask`,
    /// `mem32[dAddress + offset + 4i] = r(base+i)`.
    pub fn store_multiple(&mut self, base: u8, mask: u16, address: u8, offset: i16) -> &mut Self {
        self.emit(
            |b| b.multiple_checks(base, mask, address),
            || Instr::StoreMultiple {
                base,
                address,
                mask,
                offset,
            },
        )
    }

    /// BRANCH with an explicit offset (in instructions, relative to the next
    /// instruction).
    pub fn branch(&mut self, cond: Cond, reg: u8, offset: i16) -> &mut Self {
        self.emit(
            |b| b.reg(reg),
            || Instr::Branch {
                cond,
                value: reg,
                offset,
            },
        )
    }

    /// A new, unbound label.
    pub fn label(&mut self) -> Label {
        self.labels.push(None);
        Label(self.labels.len() - 1)
    }

    /// Binds `label` to the position of the next instruction.
    pub fn bind(&mut self, label: Label) -> &mut Self {
        let here = self.instrs.len();
        match self.labels.get(label.0) {
            None => self.fail(BuildError::UnknownLabel { label: label.0 }),
            Some(Some(_)) => self.fail(BuildError::LabelRebound { label: label.0 }),
            Some(None) => {
                if let Some(slot) = self.labels.get_mut(label.0) {
                    *slot = Some(here);
                }
            }
        }
        self
    }

    /// A label bound to the position of the next instruction.
    pub fn label_here(&mut self) -> Label {
        let l = self.label();
        self.bind(l);
        l
    }

    /// BRANCH to `label`; the offset is filled in by [`Builder::finish`].
    pub fn branch_to(&mut self, cond: Cond, reg: u8, label: Label) -> &mut Self {
        if label.0 >= self.labels.len() {
            self.fail(BuildError::UnknownLabel { label: label.0 });
            return self;
        }
        let before = self.instrs.len();
        self.branch(cond, reg, 0);
        if self.instrs.len() > before {
            self.fixups.push((before, label));
        }
        self
    }

    /// SET_SB_ENTRY: the slots RUN_* and LOAD/STORE_MULTIPLE signal.
    pub fn set_sb_entry(&mut self, endpoint: u8, other: u8) -> &mut Self {
        self.emit(
            |b| {
                b.slot(endpoint)?;
                b.slot(other)
            },
            || Instr::SetSbEntry { endpoint, other },
        )
    }

    /// WAIT for every slot in `mask`.
    pub fn wait(&mut self, mask: u8) -> &mut Self {
        self.emit(
            |b| b.wait_mask(mask.into()),
            || Instr::Wait {
                wait_mask: mask,
                progress_inc: false,
            },
        )
    }

    /// WAIT for every scoreboard slot of the model (limited to the 8 that
    /// the v10 WAIT encoding can name).
    pub fn wait_all(&mut self) -> &mut Self {
        let mask = (self.slot_mask() & 0xff) as u8;
        self.wait(mask)
    }

    /// PROGRESS_WAIT on `queue` with the value in `dSrc`.
    pub fn progress_wait(&mut self, queue: u8, src: u8) -> &mut Self {
        self.emit(
            |b| {
                b.pair(src)?;
                b.imm("progress queue", queue.into(), 0, 31)
            },
            || Instr::ProgressWait { queue, src },
        )
    }

    /// SET_EXCEPTION_HANDLER: handler stream at `dAddress`, `rLength` bytes.
    pub fn set_exception_handler(
        &mut self,
        exception_type: u8,
        address: u8,
        length: u8,
    ) -> &mut Self {
        self.emit(
            |b| {
                b.pair(address)?;
                b.reg(length)
            },
            || Instr::SetExceptionHandler {
                exception_type,
                address,
                length,
            },
        )
    }

    /// CALL the stream at `dAddress` of `rLength` bytes.
    pub fn call(&mut self, address: u8, length: u8) -> &mut Self {
        self.emit(
            |b| {
                b.pair(address)?;
                b.reg(length)
            },
            || Instr::Call { address, length },
        )
    }

    /// JUMP to the stream at `dAddress` of `rLength` bytes.
    pub fn jump(&mut self, address: u8, length: u8) -> &mut Self {
        self.emit(
            |b| {
                b.pair(address)?;
                b.reg(length)
            },
            || Instr::Jump { address, length },
        )
    }

    /// REQ_RESOURCE.
    pub fn req_resource(
        &mut self,
        compute: bool,
        fragment: bool,
        tiler: bool,
        idvs: bool,
    ) -> &mut Self {
        self.emit(
            |_| Ok(()),
            || Instr::ReqResource {
                compute,
                fragment,
                tiler,
                idvs,
            },
        )
    }

    /// FLUSH_CACHE2 with the flush ID in `rFlushId`.
    pub fn flush_cache2(
        &mut self,
        l2: FlushMode,
        lsc: FlushMode,
        other: OtherFlushMode,
        flush_id: u8,
        op: AsyncOp,
    ) -> &mut Self {
        self.emit(
            |b| {
                b.reg(flush_id)?;
                b.async_op(op)
            },
            || Instr::FlushCache2 {
                l2,
                lsc,
                other,
                wait_mask: op.wait_mask,
                flush_id,
                signal_slot: op.signal_slot,
            },
        )
    }

    fn sync_update(
        &mut self,
        wide: bool,
        address: u8,
        data: u8,
        op: AsyncOp,
        make: impl FnOnce() -> Instr,
    ) -> &mut Self {
        self.emit(
            |b| {
                b.pair(address)?;
                if wide {
                    b.pair(data)?;
                } else {
                    b.reg(data)?;
                }
                b.async_op(op)
            },
            make,
        )
    }

    /// SYNC_ADD32: `mem32[dAddress] += rData`.
    pub fn sync_add32(
        &mut self,
        scope: SyncScope,
        error_propagate: bool,
        address: u8,
        data: u8,
        op: AsyncOp,
    ) -> &mut Self {
        self.sync_update(false, address, data, op, || Instr::SyncAdd32 {
            error_propagate,
            scope,
            wait_mask: op.wait_mask,
            data,
            address,
            signal_slot: op.signal_slot,
        })
    }

    /// SYNC_SET32: `mem32[dAddress] = rData`.
    pub fn sync_set32(
        &mut self,
        scope: SyncScope,
        error_propagate: bool,
        address: u8,
        data: u8,
        op: AsyncOp,
    ) -> &mut Self {
        self.sync_update(false, address, data, op, || Instr::SyncSet32 {
            error_propagate,
            scope,
            wait_mask: op.wait_mask,
            data,
            address,
            signal_slot: op.signal_slot,
        })
    }

    /// SYNC_ADD64: `mem64[dAddress] += dData`.
    pub fn sync_add64(
        &mut self,
        scope: SyncScope,
        error_propagate: bool,
        address: u8,
        data: u8,
        op: AsyncOp,
    ) -> &mut Self {
        self.sync_update(true, address, data, op, || Instr::SyncAdd64 {
            error_propagate,
            scope,
            wait_mask: op.wait_mask,
            data,
            address,
            signal_slot: op.signal_slot,
        })
    }

    /// SYNC_SET64: `mem64[dAddress] = dData`.
    pub fn sync_set64(
        &mut self,
        scope: SyncScope,
        error_propagate: bool,
        address: u8,
        data: u8,
        op: AsyncOp,
    ) -> &mut Self {
        self.sync_update(true, address, data, op, || Instr::SyncSet64 {
            error_propagate,
            scope,
            wait_mask: op.wait_mask,
            data,
            address,
            signal_slot: op.signal_slot,
        })
    }

    /// SYNC_WAIT32: block until `cond(mem32[dAddress], rData)`.
    pub fn sync_wait32(
        &mut self,
        cond: SyncCond,
        error_reject: bool,
        address: u8,
        data: u8,
    ) -> &mut Self {
        self.emit(
            |b| {
                b.pair(address)?;
                b.reg(data)
            },
            || Instr::SyncWait32 {
                error_reject,
                cond,
                data,
                address,
            },
        )
    }

    /// SYNC_WAIT64: block until `cond(mem64[dAddress], dData)`.
    pub fn sync_wait64(
        &mut self,
        cond: SyncCond,
        error_reject: bool,
        address: u8,
        data: u8,
    ) -> &mut Self {
        self.emit(
            |b| {
                b.pair(address)?;
                b.pair(data)
            },
            || Instr::SyncWait64 {
                error_reject,
                cond,
                data,
                address,
            },
        )
    }

    /// STORE_STATE: `mem64[dAddress + offset] = state`.
    pub fn store_state(
        &mut self,
        state: CsState,
        address: u8,
        offset: i16,
        op: AsyncOp,
    ) -> &mut Self {
        self.emit(
            |b| {
                b.pair(address)?;
                b.async_op(op)
            },
            || Instr::StoreState {
                address,
                offset,
                state,
                wait_mask: op.wait_mask,
                signal_slot: op.signal_slot,
            },
        )
    }

    /// PROT_REGION of `size_bytes` bytes (a multiple of 8, at most
    /// 0xffff * 8).
    pub fn prot_region(&mut self, size_bytes: u32) -> &mut Self {
        let units = size_bytes / 8;
        self.emit(
            |b| {
                if size_bytes & 7 != 0 {
                    return Err(BuildError::ImmediateOutOfRange {
                        index: b.next_index(),
                        field: "prot_region size",
                        value: size_bytes.into(),
                    });
                }
                b.imm("prot_region size", units.into(), 0, u16::MAX.into())
            },
            // The check above guarantees the size fits.
            || Instr::ProtRegion { size: units as u16 },
        )
    }

    /// PROGRESS_STORE from `dSrc`.
    pub fn progress_store(&mut self, src: u8) -> &mut Self {
        self.emit(|b| b.pair(src), || Instr::ProgressStore { src })
    }

    /// PROGRESS_LOAD into `dDst`.
    pub fn progress_load(&mut self, dst: u8) -> &mut Self {
        self.emit(|b| b.pair(dst), || Instr::ProgressLoad { dst })
    }

    fn select(&self, s: ShaderSelect) -> Result<(), BuildError> {
        self.imm("srt select", s.srt.into(), 0, 3)?;
        self.imm("spd select", s.spd.into(), 0, 3)?;
        self.imm("tsd select", s.tsd.into(), 0, 3)?;
        self.imm("fau select", s.fau.into(), 0, 3)
    }

    /// RUN_COMPUTE.
    pub fn run_compute(
        &mut self,
        task_increment: u16,
        task_axis: TaskAxis,
        select: ShaderSelect,
        progress_inc: bool,
    ) -> &mut Self {
        self.emit(
            |b| {
                b.imm("task increment", task_increment.into(), 0, (1 << 14) - 1)?;
                b.select(select)
            },
            || Instr::RunCompute {
                task_increment,
                task_axis,
                progress_inc,
                select,
            },
        )
    }

    /// RUN_COMPUTE_INDIRECT.
    pub fn run_compute_indirect(
        &mut self,
        wg_per_task: u16,
        select: ShaderSelect,
        progress_inc: bool,
    ) -> &mut Self {
        self.emit(
            |b| b.select(select),
            || Instr::RunComputeIndirect {
                wg_per_task,
                progress_inc,
                select,
            },
        )
    }

    /// RUN_TILING (v10 only).
    pub fn run_tiling(
        &mut self,
        flags_override: u32,
        select: ShaderSelect,
        progress_inc: bool,
    ) -> &mut Self {
        self.emit(
            |b| b.select(select),
            || Instr::RunTiling {
                flags_override,
                progress_inc,
                select,
            },
        )
    }

    /// RUN_IDVS. `draw_id` names the draw ID register when the shaders
    /// should receive it.
    pub fn run_idvs(
        &mut self,
        flags_override: u32,
        malloc_enable: bool,
        select: IdvsSelect,
        draw_id: Option<u8>,
        progress_inc: bool,
    ) -> &mut Self {
        self.emit(
            |b| match draw_id {
                Some(r) => b.reg(r),
                None => Ok(()),
            },
            || Instr::RunIdvs {
                flags_override,
                progress_inc,
                malloc_enable,
                draw_id_reg_enable: draw_id.is_some(),
                select,
                draw_id: draw_id.unwrap_or(0),
            },
        )
    }

    /// RUN_FRAGMENT.
    pub fn run_fragment(
        &mut self,
        enable_tem: bool,
        tile_order: TileOrder,
        progress_inc: bool,
    ) -> &mut Self {
        self.emit(
            |_| Ok(()),
            || Instr::RunFragment {
                enable_tem,
                tile_order,
                progress_inc,
            },
        )
    }

    /// RUN_FULLSCREEN with the draw call descriptor pointer in `dDcd`.
    pub fn run_fullscreen(
        &mut self,
        flags_override: u32,
        dcd: u8,
        progress_inc: bool,
    ) -> &mut Self {
        self.emit(
            |b| b.pair(dcd),
            || Instr::RunFullscreen {
                flags_override,
                progress_inc,
                dcd,
            },
        )
    }

    /// FINISH_TILING.
    pub fn finish_tiling(&mut self, progress_inc: bool) -> &mut Self {
        self.emit(|_| Ok(()), || Instr::FinishTiling { progress_inc })
    }

    /// FINISH_FRAGMENT releasing the heap chunks `dFirst`..`dLast`.
    pub fn finish_fragment(
        &mut self,
        inc_frag_completed: bool,
        first_heap_chunk: u8,
        last_heap_chunk: u8,
        op: AsyncOp,
    ) -> &mut Self {
        self.emit(
            |b| {
                b.pair(first_heap_chunk)?;
                b.pair(last_heap_chunk)?;
                b.async_op(op)
            },
            || Instr::FinishFragment {
                inc_frag_completed,
                wait_mask: op.wait_mask,
                last_heap_chunk,
                first_heap_chunk,
                signal_slot: op.signal_slot,
            },
        )
    }

    /// ERROR_BARRIER.
    pub fn error_barrier(&mut self) -> &mut Self {
        self.emit(|_| Ok(()), || Instr::ErrorBarrier)
    }

    /// HEAP_SET with the heap context in `dAddress`.
    pub fn heap_set(&mut self, address: u8) -> &mut Self {
        self.emit(|b| b.pair(address), || Instr::HeapSet { address })
    }

    /// HEAP_OPERATION.
    pub fn heap_operation(&mut self, op: HeapOp, a: AsyncOp) -> &mut Self {
        self.emit(
            |b| b.async_op(a),
            || Instr::HeapOperation {
                op,
                wait_mask: a.wait_mask,
                signal_slot: a.signal_slot,
            },
        )
    }

    /// TRACE_POINT of `count` registers starting at `rBase`.
    pub fn trace_point(&mut self, base: u8, count: u8, op: AsyncOp) -> &mut Self {
        self.emit(
            |b| {
                b.reg_range(base, count.into())?;
                b.async_op(op)
            },
            || Instr::TracePoint {
                base,
                count,
                wait_mask: op.wait_mask,
                signal_slot: op.signal_slot,
            },
        )
    }

    /// Resolves labels and returns the encoded stream.
    fn resolve(&self) -> Result<Vec<u64>, BuildError> {
        if let Some(e) = &self.error {
            return Err(e.clone());
        }
        let mut words: Vec<u64> = self.instrs.iter().map(Instr::encode).collect();
        for &(index, label) in &self.fixups {
            let target = self
                .labels
                .get(label.0)
                .copied()
                .ok_or(BuildError::UnknownLabel { label: label.0 })?
                .ok_or(BuildError::UnboundLabel {
                    index,
                    label: label.0,
                })?;
            let target = i64::try_from(target).map_err(|_| BuildError::TooLong)?;
            let next = i64::try_from(index)
                .ok()
                .and_then(|i| i.checked_add(1))
                .ok_or(BuildError::TooLong)?;
            let offset = target.checked_sub(next).ok_or(BuildError::TooLong)?;
            let offset16 = i16::try_from(offset)
                .map_err(|_| BuildError::BranchOutOfRange { index, offset })?;
            let word = words.get_mut(index).ok_or(BuildError::TooLong)?;
            *word = (*word & !0xffff) | u64::from(offset16 as u16);
        }
        Ok(words)
    }

    /// Resolves labels and returns the instruction words.
    pub fn finish(self) -> Result<Vec<u64>, BuildError> {
        self.resolve()
    }

    /// Resolves labels and returns the stream as little-endian bytes, ready
    /// to copy into GPU memory.
    pub fn to_bytes(&self) -> Result<Vec<u8>, BuildError> {
        Ok(words_to_bytes(&self.resolve()?))
    }
}

/// Serialises instruction words as little-endian bytes.
pub fn words_to_bytes(words: &[u64]) -> Vec<u8> {
    words.iter().flat_map(|w| w.to_le_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::cs::isa::decode;

    /// The kernel's per-job ring wrapper (no profiling), for a stream at
    /// 0x7f001000 of 0x180 bytes and a sync object at `syncobj`.
    fn kernel_wrapper(syncobj: u64) -> Builder {
        let mut b = Builder::new();
        b.move32(94, 0)
            .flush_cache2(
                FlushMode::CleanInvalidate,
                FlushMode::CleanInvalidate,
                OtherFlushMode::Invalidate,
                94,
                AsyncOp::NOW,
            )
            .move48(92, 0x7f00_1000)
            .move32(94, 0x180)
            .wait(0x1)
            .call(92, 94)
            .move48(92, syncobj)
            .move48(94, 1)
            .wait_all()
            .sync_add64(SyncScope::System, true, 92, 94, AsyncOp::NOW)
            .error_barrier()
            .pad_to(8);
        b
    }

    #[test]
    fn kernel_wrapper_matches_reference() {
        let words = kernel_wrapper(0x7f00_2040).finish().unwrap();
        let expected: [u64; 16] = [
            0x025e000000000000,
            0x24005e0000000233,
            0x015c00007f001000,
            0x025e000000000180,
            0x0300000000010000,
            0x20005c5e00000000,
            0x015c00007f002040,
            0x015e000000000001,
            0x0300000000ff0000,
            0x33005c5e00000001,
            0x2f00000000000000,
            0,
            0,
            0,
            0,
            0,
        ];
        assert_eq!(words, expected);
    }

    #[test]
    fn to_bytes_is_little_endian() {
        let mut b = Builder::new();
        b.move48(92, 0x7f00_1000);
        assert_eq!(
            b.to_bytes().unwrap(),
            vec![0x00, 0x10, 0x00, 0x7f, 0x00, 0x00, 0x5c, 0x01]
        );
        assert_eq!(words_to_bytes(&[1, 2]).len(), 16);
    }

    #[test]
    fn backward_branch() {
        let mut b = Builder::new();
        b.move32(0, 3);
        let top = b.label_here();
        b.add_imm32(0, 0, -1).nop().branch_to(Cond::Ne, 0, top);
        let words = b.finish().unwrap();
        // Branch at index 3, target 1: offset = 1 - 4 = -3.
        assert_eq!(
            decode(words[3]),
            Ok(Instr::Branch {
                cond: Cond::Ne,
                value: 0,
                offset: -3
            })
        );
    }

    #[test]
    fn forward_branch_and_self_loop() {
        let mut b = Builder::new();
        let skip = b.label();
        b.branch_to(Cond::Always, 0, skip).nop().nop();
        b.bind(skip);
        let spin = b.label_here();
        b.branch_to(Cond::Eq, 1, spin);
        let words = b.finish().unwrap();
        assert_eq!(words[0] & 0xffff, 2);
        // A branch to itself has offset -1.
        assert_eq!(words[3] & 0xffff, 0xffff);
    }

    #[test]
    fn branch_to_end_of_stream() {
        let mut b = Builder::new();
        let end = b.label();
        b.branch_to(Cond::Always, 0, end);
        b.bind(end);
        assert_eq!(b.finish().unwrap(), vec![0x1600_0000_6000_0000]);
    }

    #[test]
    fn branch_out_of_range() {
        let mut b = Builder::new();
        let far = b.label();
        b.branch_to(Cond::Always, 0, far);
        for _ in 0..32768 {
            b.nop();
        }
        b.bind(far);
        assert_eq!(
            b.finish(),
            Err(BuildError::BranchOutOfRange {
                index: 0,
                offset: 32768
            })
        );

        // 32767 forward is the limit and works.
        let mut b = Builder::new();
        let far = b.label();
        b.branch_to(Cond::Always, 0, far);
        for _ in 0..32767 {
            b.nop();
        }
        b.bind(far);
        assert_eq!(b.finish().unwrap()[0] & 0xffff, 0x7fff);

        // Backward: -32768 works, -32769 does not.
        let mut b = Builder::new();
        let top = b.label_here();
        for _ in 0..32767 {
            b.nop();
        }
        b.branch_to(Cond::Always, 0, top);
        assert_eq!(b.finish().unwrap()[32767] & 0xffff, 0x8000);

        let mut b = Builder::new();
        let top = b.label_here();
        for _ in 0..32768 {
            b.nop();
        }
        b.branch_to(Cond::Always, 0, top);
        assert_eq!(
            b.finish(),
            Err(BuildError::BranchOutOfRange {
                index: 32768,
                offset: -32769
            })
        );
    }

    #[test]
    fn label_errors() {
        let mut b = Builder::new();
        let l = b.label();
        b.branch_to(Cond::Always, 0, l);
        assert_eq!(
            b.clone().finish(),
            Err(BuildError::UnboundLabel { index: 0, label: 0 })
        );
        b.bind(l).bind(l);
        assert_eq!(b.finish(), Err(BuildError::LabelRebound { label: 0 }));

        let mut other = Builder::new();
        let foreign = other.label();
        let _ = other.label();
        let mut b = Builder::new();
        b.branch_to(Cond::Always, 0, Label(foreign.0 + 1));
        assert_eq!(b.finish(), Err(BuildError::UnknownLabel { label: 1 }));
    }

    #[test]
    fn register_validation() {
        let mut b = Builder::new();
        b.nop().move32(96, 0);
        assert_eq!(
            b.finish(),
            Err(BuildError::RegisterOutOfRange {
                index: 1,
                reg: 96,
                reg_count: 96
            })
        );

        let mut b = Builder::new();
        b.move48(95, 0);
        assert_eq!(
            b.finish(),
            Err(BuildError::OddRegisterPair { index: 0, reg: 95 })
        );

        let mut b = Builder::new().allow_odd_pairs(true);
        b.move48(93, 0).move48(95, 0);
        assert_eq!(
            b.finish(),
            Err(BuildError::PairOutOfRange {
                index: 1,
                reg: 95,
                reg_count: 96
            })
        );

        // A 128-register model accepts what v10 rejects.
        let mut b = Builder::with_limits(128, 16);
        b.move32(127, 0).move48(126, 0).wait(0xff);
        assert!(b.finish().is_ok());

        // LOAD_MULTIPLE checks the highest register of the mask.
        let mut b = Builder::new();
        b.load_multiple(88, 0x00ff, 0, 0);
        assert!(b.finish().is_ok());
        let mut b = Builder::new();
        b.load_multiple(89, 0x00ff, 0, 0);
        assert_eq!(
            b.finish(),
            Err(BuildError::RegisterOutOfRange {
                index: 0,
                reg: 96,
                reg_count: 96
            })
        );

        let mut b = Builder::new();
        b.trace_point(94, 3, AsyncOp::NOW);
        assert!(matches!(
            b.finish(),
            Err(BuildError::RegisterOutOfRange { reg: 96, .. })
        ));
    }

    #[test]
    fn immediate_and_slot_validation() {
        let mut b = Builder::new();
        b.move48(0, 1 << 48);
        assert!(matches!(
            b.finish(),
            Err(BuildError::ImmediateOutOfRange { value, .. }) if value == 1 << 48
        ));

        let mut b = Builder::new();
        b.wait(0x1)
            .sync_add32(SyncScope::Csg, false, 0, 2, AsyncOp::defer(0, 8));
        assert_eq!(
            b.finish(),
            Err(BuildError::SlotOutOfRange {
                index: 1,
                slot: 8,
                slots: 8
            })
        );

        let mut b = Builder::new();
        b.store_state(CsState::Timestamp, 0, 0, AsyncOp::defer(0x100, 0));
        assert!(matches!(
            b.finish(),
            Err(BuildError::WaitMaskOutOfRange { .. })
        ));

        let mut b = Builder::new();
        b.prot_region(12);
        assert!(matches!(
            b.finish(),
            Err(BuildError::ImmediateOutOfRange { .. })
        ));
        let mut b = Builder::new();
        b.prot_region(0x8_0000);
        assert!(matches!(
            b.finish(),
            Err(BuildError::ImmediateOutOfRange { .. })
        ));
        let mut b = Builder::new();
        b.prot_region(0x7_fff8);
        assert_eq!(b.finish(), Ok(vec![0x2900_0000_0000_ffff]));

        let mut b = Builder::new();
        b.run_compute(1 << 14, TaskAxis::X, ShaderSelect::default(), false);
        assert!(b.finish().is_err());

        let mut b = Builder::new();
        b.progress_wait(32, 0);
        assert!(b.finish().is_err());

        assert!(matches!(
            Builder::with_limits(300, 8).finish(),
            Err(BuildError::InvalidLimits { .. })
        ));
    }

    #[test]
    fn first_error_is_kept() {
        let mut b = Builder::new();
        b.move32(200, 0).move32(201, 0).nop();
        assert_eq!(b.len(), 0);
        assert!(matches!(
            b.error(),
            Some(BuildError::RegisterOutOfRange { reg: 200, .. })
        ));
    }

    #[test]
    fn push_validates() {
        let mut b = Builder::new();
        b.push(Instr::SetSbEntry {
            endpoint: 16,
            other: 0,
        });
        assert!(matches!(
            b.finish(),
            Err(BuildError::Encode { index: 0, .. })
        ));

        let mut b = Builder::new();
        b.push(Instr::Call {
            address: 95,
            length: 0,
        });
        assert!(matches!(
            b.finish(),
            Err(BuildError::PairOutOfRange { reg: 95, .. })
        ));

        let mut b = Builder::new();
        b.push(Instr::HeapOperation {
            op: HeapOp::VtComplete,
            wait_mask: 0,
            signal_slot: 9,
        });
        assert!(matches!(b.finish(), Err(BuildError::SlotOutOfRange { .. })));

        let mut b = Builder::new();
        b.push(Instr::Move48 { dst: 93, imm: 5 });
        assert_eq!(b.finish(), Ok(vec![0x015d_0000_0000_0005]));
    }

    #[test]
    fn every_method_encodes_what_it_says() {
        let sel = ShaderSelect {
            srt: 1,
            spd: 2,
            tsd: 3,
            fau: 0,
        };
        let mut b = Builder::new();
        b.umin32(1, 2, 3)
            .add_imm64(4, 6, -8)
            .store_multiple(8, 0x3, 10, -4)
            .set_sb_entry(1, 2)
            .set_exception_handler(2, 20, 22)
            .jump(92, 91)
            .req_resource(true, true, false, false)
            .sync_set32(SyncScope::System, false, 0, 2, AsyncOp::defer(0x3, 4))
            .sync_set64(SyncScope::Csg, true, 0, 2, AsyncOp::NOW)
            .sync_wait32(SyncCond::Gt, false, 0, 2)
            .sync_wait64(SyncCond::Le, true, 0, 2)
            .progress_store(4)
            .progress_load(6)
            .run_compute(7, TaskAxis::Y, sel, true)
            .run_compute_indirect(64, sel, false)
            .run_tiling(0xf, sel, false)
            .run_idvs(0x10, true, IdvsSelect::default(), Some(5), false)
            .run_fragment(true, TileOrder::Horizontal, true)
            .run_fullscreen(0, 40, false)
            .finish_tiling(false)
            .finish_fragment(true, 40, 42, AsyncOp::defer(1, 2))
            .heap_set(48)
            .heap_operation(HeapOp::VtComplete, AsyncOp::defer(0, 3))
            .trace_point(0, 4, AsyncOp::NOW)
            .branch(Cond::Ge, 5, 7);
        let instrs = b.instrs().to_vec();
        let words = b.finish().unwrap();
        assert_eq!(words.len(), 25);
        for (w, i) in words.iter().zip(&instrs) {
            assert_eq!(decode(*w).as_ref(), Ok(i));
        }
        assert_eq!(words[0], 0x1201_0203_0000_0000);
        assert_eq!(words[1], 0x1104_0600_ffff_fff8);
        assert_eq!(words[2], 0x1508_0a00_0003_fffc);
        assert_eq!(
            instrs[16],
            Instr::RunIdvs {
                flags_override: 0x10,
                progress_inc: false,
                malloc_enable: true,
                draw_id_reg_enable: true,
                select: IdvsSelect::default(),
                draw_id: 5
            }
        );
        assert_eq!(words[24], 0x1600_0500_5000_0007);
    }
}
