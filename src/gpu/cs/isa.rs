//! Typed representation of the v10 (Valhall CSF) command-stream instructions,
//! with a strict, total, allocation-free decoder and the matching encoder.
//!
//! Every instruction is one 64-bit word: the opcode sits in bits 63..56 and
//! the payload in bits 55..0. Each payload field listed for an opcode becomes
//! a typed field of the corresponding [`Instr`] variant. Decoding is strict:
//!
//! - an opcode that v10 does not define gives [`DecodeError::UnknownOpcode`];
//! - a payload bit outside every field of that opcode gives
//!   [`DecodeError::ReservedBits`];
//! - a value that an enumerated field does not define (a branch condition of
//!   7, a sync scope of 1, ...) gives [`DecodeError::InvalidField`].
//!
//! Because nothing is discarded, a word that decodes re-encodes to exactly the
//! same word. The interpreter reports any decode error as
//! `INSTR_INVALID_ENC` (0x51).
//!
//! Register operands are kept as raw indices. Whether an index exists depends
//! on the model's register file (96 registers on v10, 128 on v12+), so range
//! checks live outside [`decode`]: see [`Instr::check_registers`] and the
//! helpers [`reg_in_range`] and [`pair_in_range`].
//!
//! A 64-bit operand `dN` names the pair (rN low word, rN+1 high word). Mesa
//! only ever emits even N, but nothing documents odd N as an invalid encoding,
//! so the decoder and [`pair_in_range`] accept odd N and only require N+1 to
//! exist. The builder rejects odd pairs unless told otherwise, to catch
//! mistakes in hand-written streams.

use thiserror::Error;

/// Number of 32-bit work registers of a v10 command stream interface.
pub const REG_COUNT_V10: usize = 96;

/// Number of scoreboard slots on v10 (v11+ has 16).
pub const SCOREBOARD_SLOTS_V10: usize = 8;

/// `SET_EXCEPTION_HANDLER` exception type for a tiler out-of-memory event,
/// the only type the reference defines.
pub const EXCEPTION_TYPE_TILER_OOM: u8 = 2;

/// Bits 55..0 of an instruction word.
pub const PAYLOAD_MASK: u64 = (1 << 56) - 1;

/// Bit position of the opcode byte.
pub const OPCODE_SHIFT: u32 = 56;

/// A mask of `width` bits starting at `start` (`width` < 64).
const fn bits(start: u32, width: u32) -> u64 {
    ((1u64 << width) - 1) << start
}

/// Extracts the `width`-bit field at `start`.
#[inline(always)]
const fn get(word: u64, start: u32, width: u32) -> u64 {
    (word >> start) & ((1u64 << width) - 1)
}

/// Extracts a field of at most 8 bits.
#[inline(always)]
const fn get8(word: u64, start: u32, width: u32) -> u8 {
    get(word, start, width) as u8
}

/// Extracts a one-bit flag.
#[inline(always)]
const fn flag(word: u64, bit: u32) -> bool {
    (word >> bit) & 1 != 0
}

/// Places the low `width` bits of `value` at `start`.
#[inline(always)]
const fn put(value: u64, start: u32, width: u32) -> u64 {
    (value & ((1u64 << width) - 1)) << start
}

/// Places a one-bit flag at `bit`.
#[inline(always)]
const fn put_flag(value: bool, bit: u32) -> u64 {
    (value as u64) << bit
}

/// Error returned by [`decode`] for a word that is not a valid v10
/// instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum DecodeError {
    /// The opcode byte is not defined on v10.
    #[error("unknown opcode {opcode:#04x}")]
    UnknownOpcode {
        /// The opcode byte (bits 63..56).
        opcode: u8,
    },
    /// Payload bits outside every field of the instruction are set.
    #[error("reserved bits {bits:#x} set for opcode {opcode:#04x}")]
    ReservedBits {
        /// The opcode byte.
        opcode: u8,
        /// The offending bits, in their word positions.
        bits: u64,
    },
    /// An enumerated field holds a value the instruction set does not define.
    #[error("invalid {field} value {value} for opcode {opcode:#04x}")]
    InvalidField {
        /// The opcode byte.
        opcode: u8,
        /// The field name.
        field: &'static str,
        /// The raw field value.
        value: u64,
    },
}

impl DecodeError {
    /// The opcode byte of the rejected word.
    pub fn opcode(&self) -> u8 {
        match *self {
            Self::UnknownOpcode { opcode }
            | Self::ReservedBits { opcode, .. }
            | Self::InvalidField { opcode, .. } => opcode,
        }
    }
}

/// Error returned by [`Instr::validate`] and [`Instr::try_encode`] when a
/// field holds a value wider than its bit field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum EncodeError {
    /// The value does not fit in the field's width.
    #[error("{field} value {value:#x} does not fit in {width} bits")]
    FieldOverflow {
        /// The field name.
        field: &'static str,
        /// The value given.
        value: u64,
        /// The field width in bits.
        width: u32,
    },
}

/// Error returned by [`Instr::check_registers`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum RegisterError {
    /// A 32-bit register operand does not exist.
    #[error("register r{reg} out of range (register file has {reg_count})")]
    RegOutOfRange {
        /// The register index.
        reg: u16,
        /// The register file size.
        reg_count: usize,
    },
    /// The high half of a 64-bit register pair does not exist.
    #[error("register pair d{reg} out of range (register file has {reg_count})")]
    PairOutOfRange {
        /// The index of the low register of the pair.
        reg: u16,
        /// The register file size.
        reg_count: usize,
    },
}

/// Whether register `r` exists in a register file of `reg_count` registers.
#[inline]
pub const fn reg_in_range(r: u8, reg_count: usize) -> bool {
    (r as usize) < reg_count
}

/// Whether the 64-bit pair `dN` (rN, rN+1) exists in a register file of
/// `reg_count` registers. Odd N is accepted; only N+1 must exist.
#[inline]
pub const fn pair_in_range(n: u8, reg_count: usize) -> bool {
    (n as usize) + 1 < reg_count
}

macro_rules! opcodes {
    ($( $(#[$doc:meta])* $name:ident = $val:literal, $mn:literal, $mask:expr; )*) => {
        /// The v10 CS opcodes.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u8)]
        pub enum Opcode {
            $( $(#[$doc])* $name = $val, )*
        }

        impl Opcode {
            /// Every v10 opcode, in numeric order.
            pub const ALL: &'static [Opcode] = &[$(Opcode::$name,)*];

            /// The opcode for an opcode byte, if v10 defines it.
            #[inline]
            pub const fn from_u8(op: u8) -> Option<Opcode> {
                match op {
                    $( $val => Some(Opcode::$name), )*
                    _ => None,
                }
            }

            /// Lower-case assembler mnemonic.
            pub const fn mnemonic(self) -> &'static str {
                match self {
                    $( Opcode::$name => $mn, )*
                }
            }

            /// Payload bits (55..0) covered by this opcode's fields. Any other
            /// payload bit is reserved and must be zero.
            #[inline]
            pub const fn field_mask(self) -> u64 {
                match self {
                    $( Opcode::$name => $mask, )*
                }
            }
        }
    };
}

const SYNC_UPDATE_MASK: u64 =
    bits(0, 1) | bits(1, 2) | bits(16, 16) | bits(32, 8) | bits(40, 8) | bits(48, 4);
const SYNC_WAIT_MASK: u64 = bits(0, 1) | bits(28, 4) | bits(32, 8) | bits(40, 8);
const SELECT_MASK: u64 = bits(40, 8);
const PROGRESS_BIT: u32 = 32;

opcodes! {
    /// No operation.
    Nop = 0, "nop", bits(0, 56);
    /// Load a 48-bit immediate into a register pair.
    Move48 = 1, "move48", bits(0, 48) | bits(48, 8);
    /// Load a 32-bit immediate into a register.
    Move32 = 2, "move32", bits(0, 32) | bits(48, 8);
    /// Wait for scoreboard slots to drain.
    Wait = 3, "wait", bits(16, 8) | bits(32, 1);
    /// Launch a compute job.
    RunCompute = 4, "run_compute",
        bits(0, 14) | bits(14, 2) | bits(PROGRESS_BIT, 1) | SELECT_MASK;
    /// Launch a tiling job (v10 only).
    RunTiling = 5, "run_tiling", bits(0, 32) | bits(PROGRESS_BIT, 1) | SELECT_MASK;
    /// Launch an IDVS (index-driven vertex shading) job.
    RunIdvs = 6, "run_idvs", bits(0, 32) | bits(32, 8) | bits(40, 8);
    /// Launch a fragment job.
    RunFragment = 7, "run_fragment", bits(0, 1) | bits(4, 4) | bits(PROGRESS_BIT, 1);
    /// Launch a full-screen job.
    RunFullscreen = 8, "run_fullscreen", bits(0, 32) | bits(PROGRESS_BIT, 1) | bits(40, 8);
    /// Finish the current tiling pass.
    FinishTiling = 9, "finish_tiling", bits(PROGRESS_BIT, 1);
    /// Finish a fragment pass and release heap chunks.
    FinishFragment = 11, "finish_fragment",
        bits(0, 1) | bits(16, 16) | bits(32, 8) | bits(40, 8) | bits(48, 4);
    /// 32-bit add of a signed immediate.
    AddImm32 = 16, "add_imm32", bits(0, 32) | bits(40, 8) | bits(48, 8);
    /// 64-bit add of a sign-extended 32-bit immediate.
    AddImm64 = 17, "add_imm64", bits(0, 32) | bits(40, 8) | bits(48, 8);
    /// Unsigned 32-bit minimum (COMPARE_SELECT32).
    Umin32 = 18, "umin32", bits(32, 8) | bits(40, 8) | bits(48, 8);
    /// Load registers from memory.
    LoadMultiple = 20, "load_multiple", bits(0, 16) | bits(16, 16) | bits(40, 8) | bits(48, 8);
    /// Store registers to memory.
    StoreMultiple = 21, "store_multiple", bits(0, 16) | bits(16, 16) | bits(40, 8) | bits(48, 8);
    /// Conditional relative branch.
    Branch = 22, "branch", bits(0, 16) | bits(28, 3) | bits(40, 8);
    /// Select the scoreboard entries used by asynchronous operations.
    SetSbEntry = 23, "set_sb_entry", bits(0, 4) | bits(4, 4);
    /// Wait on a progress counter.
    ProgressWait = 24, "progress_wait", bits(0, 5) | bits(40, 8);
    /// Register an exception handler.
    SetExceptionHandler = 25, "set_exception_handler", bits(0, 8) | bits(32, 8) | bits(40, 8);
    /// Call a sub-stream.
    Call = 32, "call", bits(32, 8) | bits(40, 8);
    /// Tail-jump to another stream.
    Jump = 33, "jump", bits(32, 8) | bits(40, 8);
    /// Request or release endpoint resources.
    ReqResource = 34, "req_resource", bits(0, 4);
    /// Cache maintenance.
    FlushCache2 = 36, "flush_cache2",
        bits(0, 4) | bits(4, 4) | bits(8, 4) | bits(16, 16) | bits(40, 8) | bits(48, 4);
    /// Atomic 32-bit add to a sync object.
    SyncAdd32 = 37, "sync_add32", SYNC_UPDATE_MASK;
    /// 32-bit store to a sync object.
    SyncSet32 = 38, "sync_set32", SYNC_UPDATE_MASK;
    /// Wait on a 32-bit sync object.
    SyncWait32 = 39, "sync_wait32", SYNC_WAIT_MASK;
    /// Store a piece of CS state to memory.
    StoreState = 40, "store_state",
        bits(0, 16) | bits(16, 16) | bits(32, 2) | bits(40, 8) | bits(48, 4);
    /// Protected region marker.
    ProtRegion = 41, "prot_region", bits(0, 16);
    /// Store the progress counter.
    ProgressStore = 42, "progress_store", bits(40, 8);
    /// Load the progress counter.
    ProgressLoad = 43, "progress_load", bits(48, 8);
    /// Launch a compute job with indirect dimensions.
    RunComputeIndirect = 44, "run_compute_indirect",
        bits(0, 16) | bits(PROGRESS_BIT, 1) | SELECT_MASK;
    /// Error barrier.
    ErrorBarrier = 47, "error_barrier", 0;
    /// Set the tiler heap context.
    HeapSet = 48, "heap_set", bits(40, 8);
    /// Tiler heap bookkeeping.
    HeapOperation = 49, "heap_operation", bits(16, 16) | bits(32, 2) | bits(48, 4);
    /// Emit a trace point.
    TracePoint = 50, "trace_point", bits(16, 16) | bits(32, 8) | bits(40, 8) | bits(48, 4);
    /// Atomic 64-bit add to a sync object.
    SyncAdd64 = 51, "sync_add64", SYNC_UPDATE_MASK;
    /// 64-bit store to a sync object.
    SyncSet64 = 52, "sync_set64", SYNC_UPDATE_MASK;
    /// Wait on a 64-bit sync object.
    SyncWait64 = 53, "sync_wait64", SYNC_WAIT_MASK;
}

macro_rules! small_enum {
    (
        $(#[$doc:meta])* $name:ident, $width:literal {
            $( $(#[$vdoc:meta])* $var:ident = $val:literal, $mn:literal; )*
        }
    ) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u8)]
        pub enum $name {
            $( $(#[$vdoc])* $var = $val, )*
        }

        impl $name {
            /// Every defined value.
            pub const ALL: &'static [$name] = &[$($name::$var,)*];

            /// Width of the field in bits.
            pub const WIDTH: u32 = $width;

            /// The value for a raw field, if defined.
            #[inline]
            pub const fn from_bits(v: u64) -> Option<Self> {
                match v {
                    $( $val => Some($name::$var), )*
                    _ => None,
                }
            }

            /// The raw field value.
            #[inline]
            pub const fn bits(self) -> u64 {
                self as u64
            }

            /// Short lower-case name used by the disassembler.
            pub const fn mnemonic(self) -> &'static str {
                match self {
                    $( $name::$var => $mn, )*
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.mnemonic())
            }
        }
    };
}

small_enum! {
    /// BRANCH condition (Mesa v10 "CS Condition"): the signed 32-bit register
    /// value is compared with zero.
    Cond, 3 {
        /// value <= 0
        Le = 0, "le";
        /// value > 0
        Gt = 1, "gt";
        /// value == 0
        Eq = 2, "eq";
        /// value != 0
        Ne = 3, "ne";
        /// value < 0
        Lt = 4, "lt";
        /// value >= 0
        Ge = 5, "ge";
        /// always taken
        Always = 6, "always";
    }
}

impl Cond {
    /// Whether a branch on `value` (read as signed 32-bit) is taken.
    #[inline]
    pub const fn eval(self, value: u32) -> bool {
        let v = value as i32;
        match self {
            Cond::Le => v <= 0,
            Cond::Gt => v > 0,
            Cond::Eq => v == 0,
            Cond::Ne => v != 0,
            Cond::Lt => v < 0,
            Cond::Ge => v >= 0,
            Cond::Always => true,
        }
    }
}

small_enum! {
    /// SYNC_WAIT condition. The field shares the "CS Condition" numbering but
    /// only LE and GT are meaningful for sync waits (the CS_STATUS_WAIT
    /// SYNC_COND field can only report these two); other values are rejected.
    SyncCond, 4 {
        /// Unblock when `mem <= reference`.
        Le = 0, "le";
        /// Unblock when `mem > reference`.
        Gt = 1, "gt";
    }
}

impl SyncCond {
    /// Whether a wait with this condition is satisfied (unsigned compare).
    #[inline]
    pub const fn eval(self, mem: u64, reference: u64) -> bool {
        match self {
            SyncCond::Le => mem <= reference,
            SyncCond::Gt => mem > reference,
        }
    }
}

small_enum! {
    /// Visibility scope of a sync object update.
    SyncScope, 2 {
        /// Visible system-wide (CPU and other agents).
        System = 0, "system";
        /// Visible within the command stream group.
        Csg = 2, "csg";
    }
}

small_enum! {
    /// L2 / load-store cache flush mode of FLUSH_CACHE2.
    FlushMode, 4 {
        /// No operation on this cache.
        None = 0, "none";
        /// Clean (write back).
        Clean = 1, "clean";
        /// Clean and invalidate.
        CleanInvalidate = 3, "clean_inv";
    }
}

small_enum! {
    /// Flush mode for the other caches in FLUSH_CACHE2.
    OtherFlushMode, 4 {
        /// No operation.
        None = 0, "none";
        /// Invalidate.
        Invalidate = 2, "inv";
    }
}

small_enum! {
    /// STORE_STATE source.
    CsState, 2 {
        /// GPU timestamp.
        Timestamp = 0, "timestamp";
        /// Cycle counter.
        CycleCount = 1, "cycle_count";
        /// Disjoint counter.
        DisjointCount = 2, "disjoint_count";
        /// Error status of the command stream.
        ErrorStatus = 3, "error_status";
    }
}

small_enum! {
    /// HEAP_OPERATION operation.
    HeapOp, 2 {
        /// A vertex/tiler pass started.
        VtStart = 0, "vt_start";
        /// A vertex/tiler pass completed.
        VtComplete = 1, "vt_complete";
        /// A fragment pass completed.
        FragmentComplete = 3, "frag_complete";
    }
}

small_enum! {
    /// RUN_COMPUTE task split axis.
    TaskAxis, 2 {
        /// Split along X.
        X = 0, "x";
        /// Split along Y.
        Y = 1, "y";
        /// Split along Z.
        Z = 2, "z";
    }
}

small_enum! {
    /// RUN_FRAGMENT tile render order.
    TileOrder, 4 {
        /// Z (Morton) order.
        ZOrder = 0, "z_order";
        /// Row by row.
        Horizontal = 1, "horizontal";
        /// Column by column.
        Vertical = 2, "vertical";
        /// Row by row, reversed.
        ReverseHorizontal = 5, "reverse_horizontal";
        /// Column by column, reversed.
        ReverseVertical = 6, "reverse_vertical";
    }
}

/// Which of the four staging slots a compute/tiling RUN uses for each
/// resource table (each selector is 2 bits, at bits 40, 42, 44 and 46).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ShaderSelect {
    /// Shader resource table slot (0..=3).
    pub srt: u8,
    /// Shader program descriptor slot (0..=3).
    pub spd: u8,
    /// Thread storage descriptor slot (0..=3).
    pub tsd: u8,
    /// Fast access uniform slot (0..=3).
    pub fau: u8,
}

impl ShaderSelect {
    #[inline(always)]
    const fn unpack(w: u64) -> Self {
        Self {
            srt: get8(w, 40, 2),
            spd: get8(w, 42, 2),
            tsd: get8(w, 44, 2),
            fau: get8(w, 46, 2),
        }
    }

    #[inline(always)]
    const fn pack(self) -> u64 {
        put(self.srt as u64, 40, 2)
            | put(self.spd as u64, 42, 2)
            | put(self.tsd as u64, 44, 2)
            | put(self.fau as u64, 46, 2)
    }

    fn validate(self) -> Result<(), EncodeError> {
        check("srt_select", self.srt as u64, 2)?;
        check("spd_select", self.spd as u64, 2)?;
        check("tsd_select", self.tsd as u64, 2)?;
        check("fau_select", self.fau as u64, 2)
    }
}

/// The one-bit resource selects of RUN_IDVS (bits 35..39).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct IdvsSelect {
    /// Varying shader SRT select.
    pub varying_srt: bool,
    /// Varying shader FAU select.
    pub varying_fau: bool,
    /// Varying shader TSD select.
    pub varying_tsd: bool,
    /// Fragment shader SRT select.
    pub fragment_srt: bool,
    /// Fragment shader TSD select.
    pub fragment_tsd: bool,
}

/// One decoded v10 command-stream instruction.
///
/// Register fields hold raw register indices: `rN` fields name one 32-bit
/// register, `dN` fields the pair rN/rN+1. Signal slots, wait masks and
/// immediates are stored as encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Instr {
    /// NOP (opcode 0). The payload is ignored by the hardware; it is kept so
    /// that decoding stays lossless.
    Nop {
        /// Ignored payload bits 55..0.
        ignored: u64,
    },
    /// MOVE48: `dst` (pair) = zero-extended 48-bit `imm`.
    Move48 {
        /// Destination pair `dN` (bits 48..55).
        dst: u8,
        /// 48-bit immediate (bits 0..47).
        imm: u64,
    },
    /// MOVE32: `dst` = `imm`.
    Move32 {
        /// Destination register (bits 48..55).
        dst: u8,
        /// Immediate (bits 0..31).
        imm: u32,
    },
    /// WAIT until every scoreboard slot in `wait_mask` is zero.
    Wait {
        /// Scoreboard mask (bits 16..23 on v10).
        wait_mask: u8,
        /// Increment the progress counter (bit 32).
        progress_inc: bool,
    },
    /// RUN_COMPUTE.
    RunCompute {
        /// Task increment (bits 0..13).
        task_increment: u16,
        /// Task axis (bits 14..15).
        task_axis: TaskAxis,
        /// Increment the progress counter (bit 32).
        progress_inc: bool,
        /// Resource slot selects (bits 40..47).
        select: ShaderSelect,
    },
    /// RUN_TILING (v10 only).
    RunTiling {
        /// Tiler flags override (bits 0..31).
        flags_override: u32,
        /// Increment the progress counter (bit 32).
        progress_inc: bool,
        /// Resource slot selects (bits 40..47).
        select: ShaderSelect,
    },
    /// RUN_IDVS.
    RunIdvs {
        /// Tiler flags override (bits 0..31).
        flags_override: u32,
        /// Increment the progress counter (bit 32).
        progress_inc: bool,
        /// Malloc enable (bit 33).
        malloc_enable: bool,
        /// Pass `draw_id` to the shaders (bit 34).
        draw_id_reg_enable: bool,
        /// Resource selects (bits 35..39).
        select: IdvsSelect,
        /// Draw ID register (bits 40..47).
        draw_id: u8,
    },
    /// RUN_FRAGMENT.
    RunFragment {
        /// Enable the tile enable map (bit 0).
        enable_tem: bool,
        /// Tile order (bits 4..7).
        tile_order: TileOrder,
        /// Increment the progress counter (bit 32).
        progress_inc: bool,
    },
    /// RUN_FULLSCREEN.
    RunFullscreen {
        /// Tiler flags override (bits 0..31).
        flags_override: u32,
        /// Increment the progress counter (bit 32).
        progress_inc: bool,
        /// Draw call descriptor pointer pair (bits 40..47).
        dcd: u8,
    },
    /// FINISH_TILING.
    FinishTiling {
        /// Increment the progress counter (bit 32).
        progress_inc: bool,
    },
    /// FINISH_FRAGMENT.
    FinishFragment {
        /// Increment the completed-fragment counter (bit 0).
        inc_frag_completed: bool,
        /// Scoreboard wait mask (bits 16..31).
        wait_mask: u16,
        /// Last heap chunk pair (bits 32..39).
        last_heap_chunk: u8,
        /// First heap chunk pair (bits 40..47).
        first_heap_chunk: u8,
        /// Scoreboard slot to signal (bits 48..51).
        signal_slot: u8,
    },
    /// ADD_IMMEDIATE32: `dst` = `src` + `imm` (wrapping).
    AddImm32 {
        /// Destination register (bits 48..55).
        dst: u8,
        /// Source register (bits 40..47).
        src: u8,
        /// Signed immediate (bits 0..31).
        imm: i32,
    },
    /// ADD_IMMEDIATE64: `dst` = `src` + sign-extended `imm` (pairs).
    AddImm64 {
        /// Destination pair (bits 48..55).
        dst: u8,
        /// Source pair (bits 40..47).
        src: u8,
        /// Signed immediate (bits 0..31).
        imm: i32,
    },
    /// COMPARE_SELECT32 / UMIN32: `dst` = unsigned min(`src0`, `src1`).
    Umin32 {
        /// Destination register (bits 48..55).
        dst: u8,
        /// First source register (bits 40..47).
        src0: u8,
        /// Second source register (bits 32..39).
        src1: u8,
    },
    /// LOAD_MULTIPLE: for each set bit i of `mask`,
    /// `r(base + i) = mem32[address + offset + 4 * i]`.
    LoadMultiple {
        /// First register (bits 48..55).
        base: u8,
        /// Address pair (bits 40..47).
        address: u8,
        /// Register mask (bits 16..31).
        mask: u16,
        /// Signed byte offset (bits 0..15).
        offset: i16,
    },
    /// STORE_MULTIPLE: the mirror of LOAD_MULTIPLE.
    StoreMultiple {
        /// First register (bits 48..55).
        base: u8,
        /// Address pair (bits 40..47).
        address: u8,
        /// Register mask (bits 16..31).
        mask: u16,
        /// Signed byte offset (bits 0..15).
        offset: i16,
    },
    /// BRANCH: if `cond` holds for `value`, skip `offset` instructions from
    /// the next one.
    Branch {
        /// Condition (bits 28..30).
        cond: Cond,
        /// Tested register (bits 40..47).
        value: u8,
        /// Signed offset in instructions, relative to the next (bits 0..15).
        offset: i16,
    },
    /// SET_SB_ENTRY.
    SetSbEntry {
        /// Slot signalled by RUN_* (bits 0..3).
        endpoint: u8,
        /// Slot signalled by LOAD/STORE_MULTIPLE (bits 4..7).
        other: u8,
    },
    /// PROGRESS_WAIT.
    ProgressWait {
        /// Queue index (bits 0..4).
        queue: u8,
        /// Source pair (bits 40..47).
        src: u8,
    },
    /// SET_EXCEPTION_HANDLER.
    SetExceptionHandler {
        /// Exception type (bits 0..7); [`EXCEPTION_TYPE_TILER_OOM`] is the
        /// only one defined. Kept raw; the interpreter decides what to do
        /// with others.
        exception_type: u8,
        /// Handler address pair (bits 40..47).
        address: u8,
        /// Handler length register, in bytes (bits 32..39).
        length: u8,
    },
    /// CALL the stream `[address, address + length)`.
    Call {
        /// Address pair (bits 40..47).
        address: u8,
        /// Length register, in bytes (bits 32..39).
        length: u8,
    },
    /// JUMP to the stream `[address, address + length)`.
    Jump {
        /// Address pair (bits 40..47).
        address: u8,
        /// Length register, in bytes (bits 32..39).
        length: u8,
    },
    /// REQ_RESOURCE: each flag requests (1) or releases (0) an endpoint.
    ReqResource {
        /// Compute (bit 0).
        compute: bool,
        /// Fragment (bit 1).
        fragment: bool,
        /// Tiler (bit 2).
        tiler: bool,
        /// IDVS (bit 3).
        idvs: bool,
    },
    /// FLUSH_CACHE2 (always asynchronous).
    FlushCache2 {
        /// L2 mode (bits 0..3).
        l2: FlushMode,
        /// Load/store cache mode (bits 4..7).
        lsc: FlushMode,
        /// Other caches (bits 8..11).
        other: OtherFlushMode,
        /// Scoreboard wait mask (bits 16..31).
        wait_mask: u16,
        /// Register holding the flush ID sampled earlier (bits 40..47).
        flush_id: u8,
        /// Scoreboard slot to signal (bits 48..51).
        signal_slot: u8,
    },
    /// SYNC_ADD32: `mem32[address] += data`.
    SyncAdd32 {
        /// Copy the CS error state into the status word (bit 0).
        error_propagate: bool,
        /// Scope (bits 1..2).
        scope: SyncScope,
        /// Scoreboard wait mask (bits 16..31).
        wait_mask: u16,
        /// Data register (bits 32..39).
        data: u8,
        /// Address pair (bits 40..47).
        address: u8,
        /// Scoreboard slot to signal (bits 48..51).
        signal_slot: u8,
    },
    /// SYNC_SET32: `mem32[address] = data`.
    SyncSet32 {
        /// Copy the CS error state into the status word (bit 0).
        error_propagate: bool,
        /// Scope (bits 1..2).
        scope: SyncScope,
        /// Scoreboard wait mask (bits 16..31).
        wait_mask: u16,
        /// Data register (bits 32..39).
        data: u8,
        /// Address pair (bits 40..47).
        address: u8,
        /// Scoreboard slot to signal (bits 48..51).
        signal_slot: u8,
    },
    /// SYNC_WAIT32: block until `cond(mem32[address], data)`.
    SyncWait32 {
        /// Do not inherit the sync object's error (bit 0).
        error_reject: bool,
        /// Condition (bits 28..31).
        cond: SyncCond,
        /// Reference register (bits 32..39).
        data: u8,
        /// Address pair (bits 40..47).
        address: u8,
    },
    /// STORE_STATE: `mem64[address + offset] = state`.
    StoreState {
        /// Address pair (bits 40..47).
        address: u8,
        /// Signed byte offset (bits 0..15).
        offset: i16,
        /// State to store (bits 32..33).
        state: CsState,
        /// Scoreboard wait mask (bits 16..31).
        wait_mask: u16,
        /// Scoreboard slot to signal (bits 48..51).
        signal_slot: u8,
    },
    /// PROT_REGION.
    ProtRegion {
        /// Region size field (bits 0..15) as encoded, i.e. the size in bytes
        /// shifted right by 3 (a count of instructions).
        size: u16,
    },
    /// PROGRESS_STORE.
    ProgressStore {
        /// Address pair (bits 40..47).
        src: u8,
    },
    /// PROGRESS_LOAD.
    ProgressLoad {
        /// Destination pair (bits 48..55).
        dst: u8,
    },
    /// RUN_COMPUTE_INDIRECT.
    RunComputeIndirect {
        /// Workgroups per task (bits 0..15).
        wg_per_task: u16,
        /// Increment the progress counter (bit 32).
        progress_inc: bool,
        /// Resource slot selects (bits 40..47).
        select: ShaderSelect,
    },
    /// ERROR_BARRIER.
    ErrorBarrier,
    /// HEAP_SET.
    HeapSet {
        /// Heap context address pair (bits 40..47).
        address: u8,
    },
    /// HEAP_OPERATION.
    HeapOperation {
        /// Operation (bits 32..33).
        op: HeapOp,
        /// Scoreboard wait mask (bits 16..31).
        wait_mask: u16,
        /// Scoreboard slot to signal (bits 48..51).
        signal_slot: u8,
    },
    /// TRACE_POINT.
    TracePoint {
        /// First register to trace (bits 32..39).
        base: u8,
        /// Number of registers (bits 40..47).
        count: u8,
        /// Scoreboard wait mask (bits 16..31).
        wait_mask: u16,
        /// Scoreboard slot to signal (bits 48..51).
        signal_slot: u8,
    },
    /// SYNC_ADD64: `mem64[address] += data`.
    SyncAdd64 {
        /// Copy the CS error state into the status word (bit 0).
        error_propagate: bool,
        /// Scope (bits 1..2).
        scope: SyncScope,
        /// Scoreboard wait mask (bits 16..31).
        wait_mask: u16,
        /// Data pair (bits 32..39).
        data: u8,
        /// Address pair (bits 40..47).
        address: u8,
        /// Scoreboard slot to signal (bits 48..51).
        signal_slot: u8,
    },
    /// SYNC_SET64: `mem64[address] = data`.
    SyncSet64 {
        /// Copy the CS error state into the status word (bit 0).
        error_propagate: bool,
        /// Scope (bits 1..2).
        scope: SyncScope,
        /// Scoreboard wait mask (bits 16..31).
        wait_mask: u16,
        /// Data pair (bits 32..39).
        data: u8,
        /// Address pair (bits 40..47).
        address: u8,
        /// Scoreboard slot to signal (bits 48..51).
        signal_slot: u8,
    },
    /// SYNC_WAIT64: block until `cond(mem64[address], data)`.
    SyncWait64 {
        /// Do not inherit the sync object's error (bit 0).
        error_reject: bool,
        /// Condition (bits 28..31).
        cond: SyncCond,
        /// Reference pair (bits 32..39).
        data: u8,
        /// Address pair (bits 40..47).
        address: u8,
    },
}

/// Decodes an enumerated field or reports it as invalid.
#[inline(always)]
fn enum_field<T>(
    opcode: Opcode,
    field: &'static str,
    value: u64,
    from: fn(u64) -> Option<T>,
) -> Result<T, DecodeError> {
    from(value).ok_or(DecodeError::InvalidField {
        opcode: opcode as u8,
        field,
        value,
    })
}

/// Fields shared by SYNC_ADD/SET 32/64.
struct SyncUpdate {
    error_propagate: bool,
    scope: SyncScope,
    wait_mask: u16,
    data: u8,
    address: u8,
    signal_slot: u8,
}

#[inline(always)]
fn decode_sync_update(op: Opcode, w: u64) -> Result<SyncUpdate, DecodeError> {
    Ok(SyncUpdate {
        error_propagate: flag(w, 0),
        scope: enum_field(op, "scope", get(w, 1, 2), SyncScope::from_bits)?,
        wait_mask: get(w, 16, 16) as u16,
        data: get8(w, 32, 8),
        address: get8(w, 40, 8),
        signal_slot: get8(w, 48, 4),
    })
}

#[inline(always)]
const fn encode_sync_update(
    error_propagate: bool,
    scope: SyncScope,
    wait_mask: u16,
    data: u8,
    address: u8,
    signal_slot: u8,
) -> u64 {
    put_flag(error_propagate, 0)
        | put(scope.bits(), 1, 2)
        | put(wait_mask as u64, 16, 16)
        | put(data as u64, 32, 8)
        | put(address as u64, 40, 8)
        | put(signal_slot as u64, 48, 4)
}

#[inline(always)]
fn decode_sync_wait(op: Opcode, w: u64) -> Result<(bool, SyncCond, u8, u8), DecodeError> {
    Ok((
        flag(w, 0),
        enum_field(op, "sync condition", get(w, 28, 4), SyncCond::from_bits)?,
        get8(w, 32, 8),
        get8(w, 40, 8),
    ))
}

#[inline(always)]
const fn encode_sync_wait(error_reject: bool, cond: SyncCond, data: u8, address: u8) -> u64 {
    put_flag(error_reject, 0)
        | put(cond.bits(), 28, 4)
        | put(data as u64, 32, 8)
        | put(address as u64, 40, 8)
}

/// Checks that `value` fits in `width` bits.
#[inline]
fn check(field: &'static str, value: u64, width: u32) -> Result<(), EncodeError> {
    if value >> width == 0 {
        Ok(())
    } else {
        Err(EncodeError::FieldOverflow {
            field,
            value,
            width,
        })
    }
}

/// Decodes one instruction word. Total: never panics, never allocates.
#[inline]
pub fn decode(word: u64) -> Result<Instr, DecodeError> {
    let op_byte = (word >> OPCODE_SHIFT) as u8;
    let Some(op) = Opcode::from_u8(op_byte) else {
        return Err(DecodeError::UnknownOpcode { opcode: op_byte });
    };
    let reserved = word & PAYLOAD_MASK & !op.field_mask();
    if reserved != 0 {
        return Err(DecodeError::ReservedBits {
            opcode: op_byte,
            bits: reserved,
        });
    }
    let w = word;
    let instr = match op {
        Opcode::Nop => Instr::Nop {
            ignored: w & PAYLOAD_MASK,
        },
        Opcode::Move48 => Instr::Move48 {
            dst: get8(w, 48, 8),
            imm: get(w, 0, 48),
        },
        Opcode::Move32 => Instr::Move32 {
            dst: get8(w, 48, 8),
            imm: w as u32,
        },
        Opcode::Wait => Instr::Wait {
            wait_mask: get8(w, 16, 8),
            progress_inc: flag(w, PROGRESS_BIT),
        },
        Opcode::RunCompute => Instr::RunCompute {
            task_increment: get(w, 0, 14) as u16,
            task_axis: enum_field(op, "task axis", get(w, 14, 2), TaskAxis::from_bits)?,
            progress_inc: flag(w, PROGRESS_BIT),
            select: ShaderSelect::unpack(w),
        },
        Opcode::RunTiling => Instr::RunTiling {
            flags_override: w as u32,
            progress_inc: flag(w, PROGRESS_BIT),
            select: ShaderSelect::unpack(w),
        },
        Opcode::RunIdvs => Instr::RunIdvs {
            flags_override: w as u32,
            progress_inc: flag(w, PROGRESS_BIT),
            malloc_enable: flag(w, 33),
            draw_id_reg_enable: flag(w, 34),
            select: IdvsSelect {
                varying_srt: flag(w, 35),
                varying_fau: flag(w, 36),
                varying_tsd: flag(w, 37),
                fragment_srt: flag(w, 38),
                fragment_tsd: flag(w, 39),
            },
            draw_id: get8(w, 40, 8),
        },
        Opcode::RunFragment => Instr::RunFragment {
            enable_tem: flag(w, 0),
            tile_order: enum_field(op, "tile order", get(w, 4, 4), TileOrder::from_bits)?,
            progress_inc: flag(w, PROGRESS_BIT),
        },
        Opcode::RunFullscreen => Instr::RunFullscreen {
            flags_override: w as u32,
            progress_inc: flag(w, PROGRESS_BIT),
            dcd: get8(w, 40, 8),
        },
        Opcode::FinishTiling => Instr::FinishTiling {
            progress_inc: flag(w, PROGRESS_BIT),
        },
        Opcode::FinishFragment => Instr::FinishFragment {
            inc_frag_completed: flag(w, 0),
            wait_mask: get(w, 16, 16) as u16,
            last_heap_chunk: get8(w, 32, 8),
            first_heap_chunk: get8(w, 40, 8),
            signal_slot: get8(w, 48, 4),
        },
        Opcode::AddImm32 => Instr::AddImm32 {
            dst: get8(w, 48, 8),
            src: get8(w, 40, 8),
            imm: w as u32 as i32,
        },
        Opcode::AddImm64 => Instr::AddImm64 {
            dst: get8(w, 48, 8),
            src: get8(w, 40, 8),
            imm: w as u32 as i32,
        },
        Opcode::Umin32 => Instr::Umin32 {
            dst: get8(w, 48, 8),
            src0: get8(w, 40, 8),
            src1: get8(w, 32, 8),
        },
        Opcode::LoadMultiple => Instr::LoadMultiple {
            base: get8(w, 48, 8),
            address: get8(w, 40, 8),
            mask: get(w, 16, 16) as u16,
            offset: w as u16 as i16,
        },
        Opcode::StoreMultiple => Instr::StoreMultiple {
            base: get8(w, 48, 8),
            address: get8(w, 40, 8),
            mask: get(w, 16, 16) as u16,
            offset: w as u16 as i16,
        },
        Opcode::Branch => Instr::Branch {
            cond: enum_field(op, "branch condition", get(w, 28, 3), Cond::from_bits)?,
            value: get8(w, 40, 8),
            offset: w as u16 as i16,
        },
        Opcode::SetSbEntry => Instr::SetSbEntry {
            endpoint: get8(w, 0, 4),
            other: get8(w, 4, 4),
        },
        Opcode::ProgressWait => Instr::ProgressWait {
            queue: get8(w, 0, 5),
            src: get8(w, 40, 8),
        },
        Opcode::SetExceptionHandler => Instr::SetExceptionHandler {
            exception_type: get8(w, 0, 8),
            address: get8(w, 40, 8),
            length: get8(w, 32, 8),
        },
        Opcode::Call => Instr::Call {
            address: get8(w, 40, 8),
            length: get8(w, 32, 8),
        },
        Opcode::Jump => Instr::Jump {
            address: get8(w, 40, 8),
            length: get8(w, 32, 8),
        },
        Opcode::ReqResource => Instr::ReqResource {
            compute: flag(w, 0),
            fragment: flag(w, 1),
            tiler: flag(w, 2),
            idvs: flag(w, 3),
        },
        Opcode::FlushCache2 => Instr::FlushCache2 {
            l2: enum_field(op, "l2 flush mode", get(w, 0, 4), FlushMode::from_bits)?,
            lsc: enum_field(op, "lsc flush mode", get(w, 4, 4), FlushMode::from_bits)?,
            other: enum_field(
                op,
                "other flush mode",
                get(w, 8, 4),
                OtherFlushMode::from_bits,
            )?,
            wait_mask: get(w, 16, 16) as u16,
            flush_id: get8(w, 40, 8),
            signal_slot: get8(w, 48, 4),
        },
        Opcode::SyncAdd32 | Opcode::SyncSet32 | Opcode::SyncAdd64 | Opcode::SyncSet64 => {
            let SyncUpdate {
                error_propagate,
                scope,
                wait_mask,
                data,
                address,
                signal_slot,
            } = decode_sync_update(op, w)?;
            match op {
                Opcode::SyncAdd32 => Instr::SyncAdd32 {
                    error_propagate,
                    scope,
                    wait_mask,
                    data,
                    address,
                    signal_slot,
                },
                Opcode::SyncSet32 => Instr::SyncSet32 {
                    error_propagate,
                    scope,
                    wait_mask,
                    data,
                    address,
                    signal_slot,
                },
                Opcode::SyncAdd64 => Instr::SyncAdd64 {
                    error_propagate,
                    scope,
                    wait_mask,
                    data,
                    address,
                    signal_slot,
                },
                _ => Instr::SyncSet64 {
                    error_propagate,
                    scope,
                    wait_mask,
                    data,
                    address,
                    signal_slot,
                },
            }
        }
        Opcode::SyncWait32 => {
            let (error_reject, cond, data, address) = decode_sync_wait(op, w)?;
            Instr::SyncWait32 {
                error_reject,
                cond,
                data,
                address,
            }
        }
        Opcode::SyncWait64 => {
            let (error_reject, cond, data, address) = decode_sync_wait(op, w)?;
            Instr::SyncWait64 {
                error_reject,
                cond,
                data,
                address,
            }
        }
        Opcode::StoreState => Instr::StoreState {
            address: get8(w, 40, 8),
            offset: w as u16 as i16,
            state: enum_field(op, "state", get(w, 32, 2), CsState::from_bits)?,
            wait_mask: get(w, 16, 16) as u16,
            signal_slot: get8(w, 48, 4),
        },
        Opcode::ProtRegion => Instr::ProtRegion { size: w as u16 },
        Opcode::ProgressStore => Instr::ProgressStore {
            src: get8(w, 40, 8),
        },
        Opcode::ProgressLoad => Instr::ProgressLoad {
            dst: get8(w, 48, 8),
        },
        Opcode::RunComputeIndirect => Instr::RunComputeIndirect {
            wg_per_task: w as u16,
            progress_inc: flag(w, PROGRESS_BIT),
            select: ShaderSelect::unpack(w),
        },
        Opcode::ErrorBarrier => Instr::ErrorBarrier,
        Opcode::HeapSet => Instr::HeapSet {
            address: get8(w, 40, 8),
        },
        Opcode::HeapOperation => Instr::HeapOperation {
            op: enum_field(op, "heap operation", get(w, 32, 2), HeapOp::from_bits)?,
            wait_mask: get(w, 16, 16) as u16,
            signal_slot: get8(w, 48, 4),
        },
        Opcode::TracePoint => Instr::TracePoint {
            base: get8(w, 32, 8),
            count: get8(w, 40, 8),
            wait_mask: get(w, 16, 16) as u16,
            signal_slot: get8(w, 48, 4),
        },
    };
    Ok(instr)
}

impl Instr {
    /// Decodes one instruction word; see [`decode`].
    #[inline]
    pub fn decode(word: u64) -> Result<Instr, DecodeError> {
        decode(word)
    }

    /// The instruction's opcode.
    pub const fn opcode(&self) -> Opcode {
        match self {
            Instr::Nop { .. } => Opcode::Nop,
            Instr::Move48 { .. } => Opcode::Move48,
            Instr::Move32 { .. } => Opcode::Move32,
            Instr::Wait { .. } => Opcode::Wait,
            Instr::RunCompute { .. } => Opcode::RunCompute,
            Instr::RunTiling { .. } => Opcode::RunTiling,
            Instr::RunIdvs { .. } => Opcode::RunIdvs,
            Instr::RunFragment { .. } => Opcode::RunFragment,
            Instr::RunFullscreen { .. } => Opcode::RunFullscreen,
            Instr::FinishTiling { .. } => Opcode::FinishTiling,
            Instr::FinishFragment { .. } => Opcode::FinishFragment,
            Instr::AddImm32 { .. } => Opcode::AddImm32,
            Instr::AddImm64 { .. } => Opcode::AddImm64,
            Instr::Umin32 { .. } => Opcode::Umin32,
            Instr::LoadMultiple { .. } => Opcode::LoadMultiple,
            Instr::StoreMultiple { .. } => Opcode::StoreMultiple,
            Instr::Branch { .. } => Opcode::Branch,
            Instr::SetSbEntry { .. } => Opcode::SetSbEntry,
            Instr::ProgressWait { .. } => Opcode::ProgressWait,
            Instr::SetExceptionHandler { .. } => Opcode::SetExceptionHandler,
            Instr::Call { .. } => Opcode::Call,
            Instr::Jump { .. } => Opcode::Jump,
            Instr::ReqResource { .. } => Opcode::ReqResource,
            Instr::FlushCache2 { .. } => Opcode::FlushCache2,
            Instr::SyncAdd32 { .. } => Opcode::SyncAdd32,
            Instr::SyncSet32 { .. } => Opcode::SyncSet32,
            Instr::SyncWait32 { .. } => Opcode::SyncWait32,
            Instr::StoreState { .. } => Opcode::StoreState,
            Instr::ProtRegion { .. } => Opcode::ProtRegion,
            Instr::ProgressStore { .. } => Opcode::ProgressStore,
            Instr::ProgressLoad { .. } => Opcode::ProgressLoad,
            Instr::RunComputeIndirect { .. } => Opcode::RunComputeIndirect,
            Instr::ErrorBarrier => Opcode::ErrorBarrier,
            Instr::HeapSet { .. } => Opcode::HeapSet,
            Instr::HeapOperation { .. } => Opcode::HeapOperation,
            Instr::TracePoint { .. } => Opcode::TracePoint,
            Instr::SyncAdd64 { .. } => Opcode::SyncAdd64,
            Instr::SyncSet64 { .. } => Opcode::SyncSet64,
            Instr::SyncWait64 { .. } => Opcode::SyncWait64,
        }
    }

    /// Encodes the instruction into its 64-bit word.
    ///
    /// Fields narrower than their Rust type (4-bit signal slots, the 48-bit
    /// MOVE48 immediate, ...) are truncated to their width; use
    /// [`Instr::validate`] or [`Instr::try_encode`] to reject such values
    /// instead. For any instruction that validates,
    /// `decode(i.encode()) == Ok(i)`.
    #[inline]
    pub fn encode(&self) -> u64 {
        let payload = match *self {
            Instr::Nop { ignored } => ignored & PAYLOAD_MASK,
            Instr::Move48 { dst, imm } => put(imm, 0, 48) | put(dst as u64, 48, 8),
            Instr::Move32 { dst, imm } => imm as u64 | put(dst as u64, 48, 8),
            Instr::Wait {
                wait_mask,
                progress_inc,
            } => put(wait_mask as u64, 16, 8) | put_flag(progress_inc, PROGRESS_BIT),
            Instr::RunCompute {
                task_increment,
                task_axis,
                progress_inc,
                select,
            } => {
                put(task_increment as u64, 0, 14)
                    | put(task_axis.bits(), 14, 2)
                    | put_flag(progress_inc, PROGRESS_BIT)
                    | select.pack()
            }
            Instr::RunTiling {
                flags_override,
                progress_inc,
                select,
            } => flags_override as u64 | put_flag(progress_inc, PROGRESS_BIT) | select.pack(),
            Instr::RunIdvs {
                flags_override,
                progress_inc,
                malloc_enable,
                draw_id_reg_enable,
                select,
                draw_id,
            } => {
                flags_override as u64
                    | put_flag(progress_inc, PROGRESS_BIT)
                    | put_flag(malloc_enable, 33)
                    | put_flag(draw_id_reg_enable, 34)
                    | put_flag(select.varying_srt, 35)
                    | put_flag(select.varying_fau, 36)
                    | put_flag(select.varying_tsd, 37)
                    | put_flag(select.fragment_srt, 38)
                    | put_flag(select.fragment_tsd, 39)
                    | put(draw_id as u64, 40, 8)
            }
            Instr::RunFragment {
                enable_tem,
                tile_order,
                progress_inc,
            } => {
                put_flag(enable_tem, 0)
                    | put(tile_order.bits(), 4, 4)
                    | put_flag(progress_inc, PROGRESS_BIT)
            }
            Instr::RunFullscreen {
                flags_override,
                progress_inc,
                dcd,
            } => {
                flags_override as u64
                    | put_flag(progress_inc, PROGRESS_BIT)
                    | put(dcd as u64, 40, 8)
            }
            Instr::FinishTiling { progress_inc } => put_flag(progress_inc, PROGRESS_BIT),
            Instr::FinishFragment {
                inc_frag_completed,
                wait_mask,
                last_heap_chunk,
                first_heap_chunk,
                signal_slot,
            } => {
                put_flag(inc_frag_completed, 0)
                    | put(wait_mask as u64, 16, 16)
                    | put(last_heap_chunk as u64, 32, 8)
                    | put(first_heap_chunk as u64, 40, 8)
                    | put(signal_slot as u64, 48, 4)
            }
            Instr::AddImm32 { dst, src, imm } | Instr::AddImm64 { dst, src, imm } => {
                imm as u32 as u64 | put(src as u64, 40, 8) | put(dst as u64, 48, 8)
            }
            Instr::Umin32 { dst, src0, src1 } => {
                put(src1 as u64, 32, 8) | put(src0 as u64, 40, 8) | put(dst as u64, 48, 8)
            }
            Instr::LoadMultiple {
                base,
                address,
                mask,
                offset,
            }
            | Instr::StoreMultiple {
                base,
                address,
                mask,
                offset,
            } => {
                offset as u16 as u64
                    | put(mask as u64, 16, 16)
                    | put(address as u64, 40, 8)
                    | put(base as u64, 48, 8)
            }
            Instr::Branch {
                cond,
                value,
                offset,
            } => offset as u16 as u64 | put(cond.bits(), 28, 3) | put(value as u64, 40, 8),
            Instr::SetSbEntry { endpoint, other } => {
                put(endpoint as u64, 0, 4) | put(other as u64, 4, 4)
            }
            Instr::ProgressWait { queue, src } => put(queue as u64, 0, 5) | put(src as u64, 40, 8),
            Instr::SetExceptionHandler {
                exception_type,
                address,
                length,
            } => exception_type as u64 | put(length as u64, 32, 8) | put(address as u64, 40, 8),
            Instr::Call { address, length } | Instr::Jump { address, length } => {
                put(length as u64, 32, 8) | put(address as u64, 40, 8)
            }
            Instr::ReqResource {
                compute,
                fragment,
                tiler,
                idvs,
            } => {
                put_flag(compute, 0)
                    | put_flag(fragment, 1)
                    | put_flag(tiler, 2)
                    | put_flag(idvs, 3)
            }
            Instr::FlushCache2 {
                l2,
                lsc,
                other,
                wait_mask,
                flush_id,
                signal_slot,
            } => {
                put(l2.bits(), 0, 4)
                    | put(lsc.bits(), 4, 4)
                    | put(other.bits(), 8, 4)
                    | put(wait_mask as u64, 16, 16)
                    | put(flush_id as u64, 40, 8)
                    | put(signal_slot as u64, 48, 4)
            }
            Instr::SyncAdd32 {
                error_propagate,
                scope,
                wait_mask,
                data,
                address,
                signal_slot,
            }
            | Instr::SyncSet32 {
                error_propagate,
                scope,
                wait_mask,
                data,
                address,
                signal_slot,
            }
            | Instr::SyncAdd64 {
                error_propagate,
                scope,
                wait_mask,
                data,
                address,
                signal_slot,
            }
            | Instr::SyncSet64 {
                error_propagate,
                scope,
                wait_mask,
                data,
                address,
                signal_slot,
            } => encode_sync_update(
                error_propagate,
                scope,
                wait_mask,
                data,
                address,
                signal_slot,
            ),
            Instr::SyncWait32 {
                error_reject,
                cond,
                data,
                address,
            }
            | Instr::SyncWait64 {
                error_reject,
                cond,
                data,
                address,
            } => encode_sync_wait(error_reject, cond, data, address),
            Instr::StoreState {
                address,
                offset,
                state,
                wait_mask,
                signal_slot,
            } => {
                offset as u16 as u64
                    | put(wait_mask as u64, 16, 16)
                    | put(state.bits(), 32, 2)
                    | put(address as u64, 40, 8)
                    | put(signal_slot as u64, 48, 4)
            }
            Instr::ProtRegion { size } => size as u64,
            Instr::ProgressStore { src } => put(src as u64, 40, 8),
            Instr::ProgressLoad { dst } => put(dst as u64, 48, 8),
            Instr::RunComputeIndirect {
                wg_per_task,
                progress_inc,
                select,
            } => wg_per_task as u64 | put_flag(progress_inc, PROGRESS_BIT) | select.pack(),
            Instr::ErrorBarrier => 0,
            Instr::HeapSet { address } => put(address as u64, 40, 8),
            Instr::HeapOperation {
                op,
                wait_mask,
                signal_slot,
            } => {
                put(wait_mask as u64, 16, 16)
                    | put(op.bits(), 32, 2)
                    | put(signal_slot as u64, 48, 4)
            }
            Instr::TracePoint {
                base,
                count,
                wait_mask,
                signal_slot,
            } => {
                put(wait_mask as u64, 16, 16)
                    | put(base as u64, 32, 8)
                    | put(count as u64, 40, 8)
                    | put(signal_slot as u64, 48, 4)
            }
        };
        ((self.opcode() as u64) << OPCODE_SHIFT) | payload
    }

    /// Checks that every field fits its bit field, so that [`Instr::encode`]
    /// loses nothing.
    pub fn validate(&self) -> Result<(), EncodeError> {
        match *self {
            Instr::Nop { ignored } => check("ignored", ignored, 56),
            Instr::Move48 { imm, .. } => check("imm", imm, 48),
            Instr::RunCompute {
                task_increment,
                select,
                ..
            } => {
                check("task_increment", task_increment as u64, 14)?;
                select.validate()
            }
            Instr::RunTiling { select, .. } | Instr::RunComputeIndirect { select, .. } => {
                select.validate()
            }
            Instr::SetSbEntry { endpoint, other } => {
                check("endpoint", endpoint as u64, 4)?;
                check("other", other as u64, 4)
            }
            Instr::ProgressWait { queue, .. } => check("queue", queue as u64, 5),
            Instr::FinishFragment { signal_slot, .. }
            | Instr::FlushCache2 { signal_slot, .. }
            | Instr::SyncAdd32 { signal_slot, .. }
            | Instr::SyncSet32 { signal_slot, .. }
            | Instr::SyncAdd64 { signal_slot, .. }
            | Instr::SyncSet64 { signal_slot, .. }
            | Instr::StoreState { signal_slot, .. }
            | Instr::HeapOperation { signal_slot, .. }
            | Instr::TracePoint { signal_slot, .. } => check("signal_slot", signal_slot as u64, 4),
            Instr::Move32 { .. }
            | Instr::Wait { .. }
            | Instr::RunIdvs { .. }
            | Instr::RunFragment { .. }
            | Instr::RunFullscreen { .. }
            | Instr::FinishTiling { .. }
            | Instr::AddImm32 { .. }
            | Instr::AddImm64 { .. }
            | Instr::Umin32 { .. }
            | Instr::LoadMultiple { .. }
            | Instr::StoreMultiple { .. }
            | Instr::Branch { .. }
            | Instr::SetExceptionHandler { .. }
            | Instr::Call { .. }
            | Instr::Jump { .. }
            | Instr::ReqResource { .. }
            | Instr::SyncWait32 { .. }
            | Instr::SyncWait64 { .. }
            | Instr::ProtRegion { .. }
            | Instr::ProgressStore { .. }
            | Instr::ProgressLoad { .. }
            | Instr::ErrorBarrier
            | Instr::HeapSet { .. } => Ok(()),
        }
    }

    /// [`Instr::validate`] followed by [`Instr::encode`].
    pub fn try_encode(&self) -> Result<u64, EncodeError> {
        self.validate()?;
        Ok(self.encode())
    }

    /// Checks every explicit register operand against a register file of
    /// `reg_count` registers: 32-bit operands need rN < `reg_count`, 64-bit
    /// operands need rN+1 < `reg_count` (odd N allowed), LOAD/STORE_MULTIPLE
    /// need base+i for every set mask bit i, and TRACE_POINT needs
    /// base..base+count. The implicit staging registers of RUN_* are not
    /// checked here. The RUN_IDVS draw ID register is only checked when it
    /// is enabled.
    pub fn check_registers(&self, reg_count: usize) -> Result<(), RegisterError> {
        let reg = |r: u8| {
            if reg_in_range(r, reg_count) {
                Ok(())
            } else {
                Err(RegisterError::RegOutOfRange {
                    reg: r.into(),
                    reg_count,
                })
            }
        };
        let pair = |r: u8| {
            if pair_in_range(r, reg_count) {
                Ok(())
            } else {
                Err(RegisterError::PairOutOfRange {
                    reg: r.into(),
                    reg_count,
                })
            }
        };
        match *self {
            Instr::Move48 { dst, .. } => pair(dst),
            Instr::Move32 { dst, .. } => reg(dst),
            Instr::RunIdvs {
                draw_id_reg_enable,
                draw_id,
                ..
            } => {
                if draw_id_reg_enable {
                    reg(draw_id)
                } else {
                    Ok(())
                }
            }
            Instr::RunFullscreen { dcd, .. } => pair(dcd),
            Instr::FinishFragment {
                last_heap_chunk,
                first_heap_chunk,
                ..
            } => {
                pair(last_heap_chunk)?;
                pair(first_heap_chunk)
            }
            Instr::AddImm32 { dst, src, .. } => {
                reg(dst)?;
                reg(src)
            }
            Instr::AddImm64 { dst, src, .. } => {
                pair(dst)?;
                pair(src)
            }
            Instr::Umin32 { dst, src0, src1 } => {
                reg(dst)?;
                reg(src0)?;
                reg(src1)
            }
            Instr::LoadMultiple {
                base,
                address,
                mask,
                ..
            }
            | Instr::StoreMultiple {
                base,
                address,
                mask,
                ..
            } => {
                pair(address)?;
                if mask != 0 {
                    // The highest register touched is base + index of the
                    // top set bit.
                    let top = u16::from(base) + (15 - mask.leading_zeros() as u16);
                    if usize::from(top) >= reg_count {
                        return Err(RegisterError::RegOutOfRange {
                            reg: top,
                            reg_count,
                        });
                    }
                }
                Ok(())
            }
            Instr::Branch { value, .. } => reg(value),
            Instr::ProgressWait { src, .. } => pair(src),
            Instr::SetExceptionHandler {
                address, length, ..
            }
            | Instr::Call { address, length }
            | Instr::Jump { address, length } => {
                pair(address)?;
                reg(length)
            }
            Instr::FlushCache2 { flush_id, .. } => reg(flush_id),
            Instr::SyncAdd32 { data, address, .. }
            | Instr::SyncSet32 { data, address, .. }
            | Instr::SyncWait32 { data, address, .. } => {
                pair(address)?;
                reg(data)
            }
            Instr::SyncAdd64 { data, address, .. }
            | Instr::SyncSet64 { data, address, .. }
            | Instr::SyncWait64 { data, address, .. } => {
                pair(address)?;
                pair(data)
            }
            Instr::StoreState { address, .. } | Instr::HeapSet { address } => pair(address),
            Instr::ProgressStore { src } => pair(src),
            Instr::ProgressLoad { dst } => pair(dst),
            Instr::TracePoint { base, count, .. } => {
                if count == 0 {
                    return Ok(());
                }
                let last = u16::from(base) + u16::from(count) - 1;
                if usize::from(last) >= reg_count {
                    Err(RegisterError::RegOutOfRange {
                        reg: last,
                        reg_count,
                    })
                } else {
                    Ok(())
                }
            }
            Instr::Nop { .. }
            | Instr::Wait { .. }
            | Instr::RunCompute { .. }
            | Instr::RunTiling { .. }
            | Instr::RunFragment { .. }
            | Instr::FinishTiling { .. }
            | Instr::SetSbEntry { .. }
            | Instr::ReqResource { .. }
            | Instr::ProtRegion { .. }
            | Instr::RunComputeIndirect { .. }
            | Instr::ErrorBarrier
            | Instr::HeapOperation { .. } => Ok(()),
        }
    }

    /// The scoreboard wait mask and signal slot of instructions that carry
    /// them explicitly, as `(wait_mask, signal_slot)`. WAIT and the RUN_*
    /// family are not included: WAIT has no signal slot and RUN_* signal the
    /// endpoint entry chosen by SET_SB_ENTRY.
    pub const fn async_fields(&self) -> Option<(u16, u8)> {
        match *self {
            Instr::FinishFragment {
                wait_mask,
                signal_slot,
                ..
            }
            | Instr::FlushCache2 {
                wait_mask,
                signal_slot,
                ..
            }
            | Instr::SyncAdd32 {
                wait_mask,
                signal_slot,
                ..
            }
            | Instr::SyncSet32 {
                wait_mask,
                signal_slot,
                ..
            }
            | Instr::SyncAdd64 {
                wait_mask,
                signal_slot,
                ..
            }
            | Instr::SyncSet64 {
                wait_mask,
                signal_slot,
                ..
            }
            | Instr::StoreState {
                wait_mask,
                signal_slot,
                ..
            }
            | Instr::HeapOperation {
                wait_mask,
                signal_slot,
                ..
            }
            | Instr::TracePoint {
                wait_mask,
                signal_slot,
                ..
            } => Some((wait_mask, signal_slot)),
            _ => None,
        }
    }

    /// Whether an instruction with explicit wait/signal fields runs
    /// asynchronously (signals its slot on completion): FLUSH_CACHE2
    /// always, the others only when their wait mask is non-zero.
    pub const fn is_deferred(&self) -> bool {
        match self.async_fields() {
            Some((wait_mask, _)) => matches!(self, Instr::FlushCache2 { .. }) || wait_mask != 0,
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn round_trip(word: u64) -> Instr {
        let i = decode(word).unwrap_or_else(|e| panic!("{word:016x}: {e}"));
        assert_eq!(i.encode(), word, "re-encode of {i:?}");
        i
    }

    #[test]
    fn kernel_wrapper_words_decode() {
        assert_eq!(
            round_trip(0x025e000000000000),
            Instr::Move32 { dst: 94, imm: 0 }
        );
        assert_eq!(
            round_trip(0x24005e0000000233),
            Instr::FlushCache2 {
                l2: FlushMode::CleanInvalidate,
                lsc: FlushMode::CleanInvalidate,
                other: OtherFlushMode::Invalidate,
                wait_mask: 0,
                flush_id: 94,
                signal_slot: 0,
            }
        );
        assert_eq!(
            round_trip(0x015c00007f001000),
            Instr::Move48 {
                dst: 92,
                imm: 0x7f00_1000
            }
        );
        assert_eq!(
            round_trip(0x025e000000000180),
            Instr::Move32 {
                dst: 94,
                imm: 0x180
            }
        );
        assert_eq!(
            round_trip(0x0300000000010000),
            Instr::Wait {
                wait_mask: 1,
                progress_inc: false
            }
        );
        assert_eq!(
            round_trip(0x20005c5e00000000),
            Instr::Call {
                address: 92,
                length: 94
            }
        );
        assert_eq!(
            round_trip(0x015e000000000001),
            Instr::Move48 { dst: 94, imm: 1 }
        );
        assert_eq!(
            round_trip(0x0300000000ff0000),
            Instr::Wait {
                wait_mask: 0xff,
                progress_inc: false
            }
        );
        assert_eq!(
            round_trip(0x33005c5e00000001),
            Instr::SyncAdd64 {
                error_propagate: true,
                scope: SyncScope::System,
                wait_mask: 0,
                data: 94,
                address: 92,
                signal_slot: 0,
            }
        );
        assert_eq!(round_trip(0x2f00000000000000), Instr::ErrorBarrier);
        assert_eq!(round_trip(0), Instr::Nop { ignored: 0 });
    }

    /// Every opcode in the table has the numeric value of the reference.
    #[test]
    fn opcode_values() {
        let expected: &[(u8, &str)] = &[
            (0, "nop"),
            (1, "move48"),
            (2, "move32"),
            (3, "wait"),
            (4, "run_compute"),
            (5, "run_tiling"),
            (6, "run_idvs"),
            (7, "run_fragment"),
            (8, "run_fullscreen"),
            (9, "finish_tiling"),
            (11, "finish_fragment"),
            (16, "add_imm32"),
            (17, "add_imm64"),
            (18, "umin32"),
            (20, "load_multiple"),
            (21, "store_multiple"),
            (22, "branch"),
            (23, "set_sb_entry"),
            (24, "progress_wait"),
            (25, "set_exception_handler"),
            (32, "call"),
            (33, "jump"),
            (34, "req_resource"),
            (36, "flush_cache2"),
            (37, "sync_add32"),
            (38, "sync_set32"),
            (39, "sync_wait32"),
            (40, "store_state"),
            (41, "prot_region"),
            (42, "progress_store"),
            (43, "progress_load"),
            (44, "run_compute_indirect"),
            (47, "error_barrier"),
            (48, "heap_set"),
            (49, "heap_operation"),
            (50, "trace_point"),
            (51, "sync_add64"),
            (52, "sync_set64"),
            (53, "sync_wait64"),
        ];
        assert_eq!(Opcode::ALL.len(), expected.len());
        for (&op, &(val, mn)) in Opcode::ALL.iter().zip(expected) {
            assert_eq!(op as u8, val);
            assert_eq!(op.mnemonic(), mn);
            assert_eq!(Opcode::from_u8(val), Some(op));
        }
    }

    #[test]
    fn unknown_opcodes_rejected() {
        for op in 0..=255u8 {
            let word = u64::from(op) << 56;
            match Opcode::from_u8(op) {
                Some(_) => assert!(decode(word).is_ok(), "opcode {op}"),
                None => assert_eq!(decode(word), Err(DecodeError::UnknownOpcode { opcode: op })),
            }
        }
        assert_eq!(
            decode(0x0a00_0000_0000_0000),
            Err(DecodeError::UnknownOpcode { opcode: 10 })
        );
        assert_eq!(
            decode(0xff00_0000_0000_0001),
            Err(DecodeError::UnknownOpcode { opcode: 0xff })
        );
    }

    /// For every opcode and every payload bit, a word with only that bit set
    /// either decodes and re-encodes, or is rejected, as the field mask says.
    #[test]
    fn single_bit_reserved_check() {
        for &op in Opcode::ALL {
            for bit in 0..56 {
                let word = ((op as u64) << 56) | (1u64 << bit);
                let res = decode(word);
                if op.field_mask() & (1 << bit) == 0 {
                    assert_eq!(
                        res,
                        Err(DecodeError::ReservedBits {
                            opcode: op as u8,
                            bits: 1 << bit
                        }),
                        "{op:?} bit {bit}"
                    );
                } else if let Ok(i) = res {
                    assert_eq!(i.encode(), word, "{op:?} bit {bit}");
                } else {
                    // Only enumerated fields may reject a single set bit.
                    assert!(
                        matches!(res, Err(DecodeError::InvalidField { .. })),
                        "{op:?} bit {bit}: {res:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn reserved_bits_examples() {
        // WAIT uses 16:8 on v10; bit 24 belongs to the v11+ wider mask.
        assert_eq!(
            decode(0x0300_0000_0100_0000),
            Err(DecodeError::ReservedBits {
                opcode: 3,
                bits: 1 << 24
            })
        );
        // BRANCH condition is 3 bits on v10; bit 31 is reserved.
        assert_eq!(
            decode(0x1600_0000_8000_0000),
            Err(DecodeError::ReservedBits {
                opcode: 22,
                bits: 1 << 31
            })
        );
        // ERROR_BARRIER has no fields at all.
        assert_eq!(
            decode(0x2f00_0000_0000_0010),
            Err(DecodeError::ReservedBits {
                opcode: 47,
                bits: 0x10
            })
        );
        // CALL with a stray bit in the immediate area.
        assert_eq!(
            decode(0x2000_5c5e_0000_0008),
            Err(DecodeError::ReservedBits {
                opcode: 32,
                bits: 8
            })
        );
        // MOVE32 with bits 32..47 set.
        assert_eq!(
            decode(0x0201_0001_0000_0000),
            Err(DecodeError::ReservedBits {
                opcode: 2,
                bits: 1 << 32
            })
        );
    }

    #[test]
    fn invalid_enum_values() {
        let err = |word| decode(word).unwrap_err();
        // Branch condition 7.
        assert_eq!(
            err(0x1600_0300_7000_0000),
            DecodeError::InvalidField {
                opcode: 22,
                field: "branch condition",
                value: 7
            }
        );
        // Sync scope 1 and 3.
        assert!(matches!(
            err(0x3300_5c5e_0000_0002),
            DecodeError::InvalidField { value: 1, .. }
        ));
        assert!(matches!(
            err(0x2500_5c5e_0000_0006),
            DecodeError::InvalidField { value: 3, .. }
        ));
        // Sync wait condition EQ (2) is not a sync-wait condition.
        assert!(matches!(
            err(0x3500_5c5e_2000_0000),
            DecodeError::InvalidField { value: 2, .. }
        ));
        // Flush mode 2 for L2, 1 for "other".
        assert!(matches!(
            err(0x2400_5e00_0000_0002),
            DecodeError::InvalidField { value: 2, .. }
        ));
        assert!(matches!(
            err(0x2400_5e00_0000_0100),
            DecodeError::InvalidField { value: 1, .. }
        ));
        // Heap operation 2, task axis 3, tile order 3.
        assert!(matches!(
            err(0x3100_0002_0000_0000),
            DecodeError::InvalidField { value: 2, .. }
        ));
        assert!(matches!(
            err(0x0400_0000_0000_c000),
            DecodeError::InvalidField { value: 3, .. }
        ));
        assert!(matches!(
            err(0x0700_0000_0000_0030),
            DecodeError::InvalidField { value: 3, .. }
        ));
        assert_eq!(err(0x0700_0000_0000_0030).opcode(), 7);
    }

    /// Each field lands at its documented bit position and width.
    #[test]
    fn field_placement() {
        let w = |i: Instr| i.encode();
        assert_eq!(
            w(Instr::Move48 {
                dst: 0xab,
                imm: 0xffff_ffff_ffff
            }),
            0x01ab_ffff_ffff_ffff
        );
        assert_eq!(
            w(Instr::Move32 {
                dst: 0x11,
                imm: 0xdead_beef
            }),
            0x0211_0000_dead_beef
        );
        assert_eq!(
            w(Instr::Wait {
                wait_mask: 0xa5,
                progress_inc: true
            }),
            0x0300_0001_00a5_0000
        );
        assert_eq!(
            w(Instr::RunCompute {
                task_increment: 0x3fff,
                task_axis: TaskAxis::Z,
                progress_inc: true,
                select: ShaderSelect {
                    srt: 1,
                    spd: 2,
                    tsd: 3,
                    fau: 1
                },
            }),
            0x0400_7901_0000_bfff
        );
        assert_eq!(
            w(Instr::RunTiling {
                flags_override: 0x1234_5678,
                progress_inc: false,
                select: ShaderSelect {
                    srt: 3,
                    spd: 0,
                    tsd: 0,
                    fau: 2
                },
            }),
            0x0500_8300_1234_5678
        );
        assert_eq!(
            w(Instr::RunIdvs {
                flags_override: 0xffff_0000,
                progress_inc: true,
                malloc_enable: true,
                draw_id_reg_enable: false,
                select: IdvsSelect {
                    varying_srt: true,
                    varying_fau: false,
                    varying_tsd: true,
                    fragment_srt: false,
                    fragment_tsd: true,
                },
                draw_id: 0x3c,
            }),
            0x0600_3cab_ffff_0000
        );
        assert_eq!(
            w(Instr::RunFragment {
                enable_tem: true,
                tile_order: TileOrder::ReverseVertical,
                progress_inc: true
            }),
            0x0700_0001_0000_0061
        );
        assert_eq!(
            w(Instr::RunFullscreen {
                flags_override: 7,
                progress_inc: false,
                dcd: 0x28
            }),
            0x0800_2800_0000_0007
        );
        assert_eq!(
            w(Instr::FinishTiling { progress_inc: true }),
            0x0900_0001_0000_0000
        );
        assert_eq!(
            w(Instr::FinishFragment {
                inc_frag_completed: true,
                wait_mask: 0x8001,
                last_heap_chunk: 0x2a,
                first_heap_chunk: 0x28,
                signal_slot: 0xf
            }),
            0x0b0f_282a_8001_0001
        );
        assert_eq!(
            w(Instr::AddImm32 {
                dst: 1,
                src: 2,
                imm: -1
            }),
            0x1001_0200_ffff_ffff
        );
        assert_eq!(
            w(Instr::AddImm64 {
                dst: 4,
                src: 6,
                imm: 0x10
            }),
            0x1104_0600_0000_0010
        );
        assert_eq!(
            w(Instr::Umin32 {
                dst: 1,
                src0: 2,
                src1: 3
            }),
            0x1201_0203_0000_0000
        );
        assert_eq!(
            w(Instr::LoadMultiple {
                base: 8,
                address: 10,
                mask: 0xf00f,
                offset: -4
            }),
            0x1408_0a00_f00f_fffc
        );
        assert_eq!(
            w(Instr::StoreMultiple {
                base: 8,
                address: 10,
                mask: 0x1,
                offset: 0x7ff0
            }),
            0x1508_0a00_0001_7ff0
        );
        assert_eq!(
            w(Instr::Branch {
                cond: Cond::Always,
                value: 3,
                offset: -4
            }),
            0x1600_0300_6000_fffc
        );
        assert_eq!(
            w(Instr::SetSbEntry {
                endpoint: 2,
                other: 0xf
            }),
            0x1700_0000_0000_00f2
        );
        assert_eq!(
            w(Instr::ProgressWait {
                queue: 31,
                src: 0x10
            }),
            0x1800_1000_0000_001f
        );
        assert_eq!(
            w(Instr::SetExceptionHandler {
                exception_type: EXCEPTION_TYPE_TILER_OOM,
                address: 0x20,
                length: 0x22
            }),
            0x1900_2022_0000_0002
        );
        assert_eq!(
            w(Instr::Jump {
                address: 0x5c,
                length: 0x5b
            }),
            0x2100_5c5b_0000_0000
        );
        assert_eq!(
            w(Instr::ReqResource {
                compute: true,
                fragment: false,
                tiler: true,
                idvs: true
            }),
            0x2200_0000_0000_000d
        );
        assert_eq!(
            w(Instr::FlushCache2 {
                l2: FlushMode::Clean,
                lsc: FlushMode::None,
                other: OtherFlushMode::None,
                wait_mask: 0x00f0,
                flush_id: 7,
                signal_slot: 5
            }),
            0x2405_0700_00f0_0001
        );
        assert_eq!(
            w(Instr::SyncSet32 {
                error_propagate: false,
                scope: SyncScope::Csg,
                wait_mask: 0x0102,
                data: 3,
                address: 4,
                signal_slot: 6
            }),
            0x2606_0403_0102_0004
        );
        assert_eq!(
            w(Instr::SyncWait32 {
                error_reject: true,
                cond: SyncCond::Gt,
                data: 5,
                address: 6
            }),
            0x2700_0605_1000_0001
        );
        assert_eq!(
            w(Instr::StoreState {
                address: 0x5e,
                offset: 8,
                state: CsState::ErrorStatus,
                wait_mask: 0xffff,
                signal_slot: 1
            }),
            0x2801_5e03_ffff_0008
        );
        assert_eq!(w(Instr::ProtRegion { size: 0xbeef }), 0x2900_0000_0000_beef);
        assert_eq!(w(Instr::ProgressStore { src: 0x44 }), 0x2a00_4400_0000_0000);
        assert_eq!(w(Instr::ProgressLoad { dst: 0x44 }), 0x2b44_0000_0000_0000);
        assert_eq!(
            w(Instr::RunComputeIndirect {
                wg_per_task: 0xffff,
                progress_inc: true,
                select: ShaderSelect {
                    srt: 0,
                    spd: 1,
                    tsd: 0,
                    fau: 0
                }
            }),
            0x2c00_0401_0000_ffff
        );
        assert_eq!(w(Instr::HeapSet { address: 0x30 }), 0x3000_3000_0000_0000);
        assert_eq!(
            w(Instr::HeapOperation {
                op: HeapOp::FragmentComplete,
                wait_mask: 0x3,
                signal_slot: 2
            }),
            0x3102_0003_0003_0000
        );
        assert_eq!(
            w(Instr::TracePoint {
                base: 0x10,
                count: 4,
                wait_mask: 0,
                signal_slot: 0
            }),
            0x3200_0410_0000_0000
        );
        assert_eq!(
            w(Instr::SyncSet64 {
                error_propagate: true,
                scope: SyncScope::Csg,
                wait_mask: 0,
                data: 0x5e,
                address: 0x5c,
                signal_slot: 0
            }),
            0x3400_5c5e_0000_0005
        );
        assert_eq!(
            w(Instr::SyncWait64 {
                error_reject: false,
                cond: SyncCond::Le,
                data: 0x5e,
                address: 0x5c
            }),
            0x3500_5c5e_0000_0000
        );
        assert_eq!(
            w(Instr::Nop {
                ignored: PAYLOAD_MASK
            }),
            0x00ff_ffff_ffff_ffff
        );
    }

    #[test]
    fn validate_rejects_wide_fields() {
        assert_eq!(
            Instr::Move48 {
                dst: 0,
                imm: 1 << 48
            }
            .try_encode(),
            Err(EncodeError::FieldOverflow {
                field: "imm",
                value: 1 << 48,
                width: 48
            })
        );
        assert!(Instr::SetSbEntry {
            endpoint: 16,
            other: 0
        }
        .validate()
        .is_err());
        assert!(Instr::ProgressWait { queue: 32, src: 0 }
            .validate()
            .is_err());
        assert!(Instr::HeapOperation {
            op: HeapOp::VtStart,
            wait_mask: 0,
            signal_slot: 16
        }
        .validate()
        .is_err());
        assert!(Instr::RunCompute {
            task_increment: 1 << 14,
            task_axis: TaskAxis::X,
            progress_inc: false,
            select: ShaderSelect::default()
        }
        .validate()
        .is_err());
        assert!(Instr::RunTiling {
            flags_override: 0,
            progress_inc: false,
            select: ShaderSelect {
                fau: 4,
                ..ShaderSelect::default()
            }
        }
        .validate()
        .is_err());
    }

    #[test]
    fn register_checks() {
        let n = REG_COUNT_V10;
        assert!(pair_in_range(94, n));
        assert!(!pair_in_range(95, n));
        assert!(pair_in_range(93, n), "odd pairs are allowed");
        assert!(reg_in_range(95, n));
        assert!(!reg_in_range(96, n));

        assert_eq!(
            Instr::Move48 { dst: 95, imm: 0 }.check_registers(n),
            Err(RegisterError::PairOutOfRange {
                reg: 95,
                reg_count: n
            })
        );
        assert!(Instr::Move32 { dst: 95, imm: 0 }.check_registers(n).is_ok());
        assert_eq!(
            Instr::LoadMultiple {
                base: 90,
                address: 0,
                mask: 0x0041,
                offset: 0
            }
            .check_registers(n),
            Err(RegisterError::RegOutOfRange {
                reg: 96,
                reg_count: n
            })
        );
        assert!(Instr::LoadMultiple {
            base: 90,
            address: 0,
            mask: 0x0021,
            offset: 0
        }
        .check_registers(n)
        .is_ok());
        assert!(Instr::TracePoint {
            base: 92,
            count: 4,
            wait_mask: 0,
            signal_slot: 0
        }
        .check_registers(n)
        .is_ok());
        assert!(Instr::TracePoint {
            base: 92,
            count: 5,
            wait_mask: 0,
            signal_slot: 0
        }
        .check_registers(n)
        .is_err());
        assert!(Instr::Call {
            address: 92,
            length: 100
        }
        .check_registers(n)
        .is_err());
        // The same word is fine on a 128-register model.
        assert!(Instr::Call {
            address: 92,
            length: 100
        }
        .check_registers(128)
        .is_ok());
    }

    #[test]
    fn condition_eval() {
        let cases: &[(Cond, [bool; 3])] = &[
            // values -1, 0, 1
            (Cond::Le, [true, true, false]),
            (Cond::Gt, [false, false, true]),
            (Cond::Eq, [false, true, false]),
            (Cond::Ne, [true, false, true]),
            (Cond::Lt, [true, false, false]),
            (Cond::Ge, [false, true, true]),
            (Cond::Always, [true, true, true]),
        ];
        for &(c, expect) in cases {
            for (v, e) in [u32::MAX, 0, 1].into_iter().zip(expect) {
                assert_eq!(c.eval(v), e, "{c:?} {v}");
            }
        }
        assert!(SyncCond::Gt.eval(2, 1));
        assert!(!SyncCond::Gt.eval(1, 1));
        assert!(SyncCond::Le.eval(1, 1));
        assert!(SyncCond::Le.eval(0, u64::MAX));
    }

    #[test]
    fn deferred_ops() {
        let flush = decode(0x24005e0000000233).unwrap();
        assert!(flush.is_deferred());
        let sync = decode(0x33005c5e00000001).unwrap();
        assert!(!sync.is_deferred());
        assert_eq!(sync.async_fields(), Some((0, 0)));
        let mut deferred = sync;
        if let Instr::SyncAdd64 { wait_mask, .. } = &mut deferred {
            *wait_mask = 1;
        }
        assert!(deferred.is_deferred());
        assert_eq!(Instr::ErrorBarrier.async_fields(), None);
    }

    /// Picks one of a slice's values from random bits.
    fn pick<T: Copy>(all: &[T], r: u64) -> T {
        all[(r % all.len() as u64) as usize]
    }

    /// Builds a valid instruction of kind `k` from random bits, independently
    /// of the decoder.
    pub(crate) fn arbitrary_instr(k: usize, a: u64, b: u64) -> Instr {
        let r8 = |s: u32| (a >> s) as u8;
        let sel = ShaderSelect {
            srt: (b & 3) as u8,
            spd: ((b >> 2) & 3) as u8,
            tsd: ((b >> 4) & 3) as u8,
            fau: ((b >> 6) & 3) as u8,
        };
        let f = |n: u32| (b >> n) & 1 != 0;
        let slot = ((b >> 8) & 0xf) as u8;
        let mask16 = (b >> 16) as u16;
        let scope = pick(SyncScope::ALL, b >> 40);
        match k % 39 {
            0 => Instr::Nop {
                ignored: a & PAYLOAD_MASK,
            },
            1 => Instr::Move48 {
                dst: r8(56),
                imm: a & bits(0, 48),
            },
            2 => Instr::Move32 {
                dst: r8(56),
                imm: a as u32,
            },
            3 => Instr::Wait {
                wait_mask: r8(0),
                progress_inc: f(9),
            },
            4 => Instr::RunCompute {
                task_increment: (a & 0x3fff) as u16,
                task_axis: pick(TaskAxis::ALL, a >> 20),
                progress_inc: f(9),
                select: sel,
            },
            5 => Instr::RunTiling {
                flags_override: a as u32,
                progress_inc: f(9),
                select: sel,
            },
            6 => Instr::RunIdvs {
                flags_override: a as u32,
                progress_inc: f(9),
                malloc_enable: f(10),
                draw_id_reg_enable: f(11),
                select: IdvsSelect {
                    varying_srt: f(12),
                    varying_fau: f(13),
                    varying_tsd: f(14),
                    fragment_srt: f(15),
                    fragment_tsd: f(16),
                },
                draw_id: r8(40),
            },
            7 => Instr::RunFragment {
                enable_tem: f(9),
                tile_order: pick(TileOrder::ALL, a),
                progress_inc: f(10),
            },
            8 => Instr::RunFullscreen {
                flags_override: a as u32,
                progress_inc: f(9),
                dcd: r8(40),
            },
            9 => Instr::FinishTiling { progress_inc: f(9) },
            10 => Instr::FinishFragment {
                inc_frag_completed: f(9),
                wait_mask: mask16,
                last_heap_chunk: r8(0),
                first_heap_chunk: r8(8),
                signal_slot: slot,
            },
            11 => Instr::AddImm32 {
                dst: r8(32),
                src: r8(40),
                imm: a as i32,
            },
            12 => Instr::AddImm64 {
                dst: r8(32),
                src: r8(40),
                imm: a as i32,
            },
            13 => Instr::Umin32 {
                dst: r8(0),
                src0: r8(8),
                src1: r8(16),
            },
            14 => Instr::LoadMultiple {
                base: r8(0),
                address: r8(8),
                mask: (a >> 16) as u16,
                offset: (a >> 32) as i16,
            },
            15 => Instr::StoreMultiple {
                base: r8(0),
                address: r8(8),
                mask: (a >> 16) as u16,
                offset: (a >> 32) as i16,
            },
            16 => Instr::Branch {
                cond: pick(Cond::ALL, b),
                value: r8(0),
                offset: (a >> 16) as i16,
            },
            17 => Instr::SetSbEntry {
                endpoint: (a & 0xf) as u8,
                other: ((a >> 4) & 0xf) as u8,
            },
            18 => Instr::ProgressWait {
                queue: (a & 0x1f) as u8,
                src: r8(8),
            },
            19 => Instr::SetExceptionHandler {
                exception_type: r8(0),
                address: r8(8),
                length: r8(16),
            },
            20 => Instr::Call {
                address: r8(0),
                length: r8(8),
            },
            21 => Instr::Jump {
                address: r8(0),
                length: r8(8),
            },
            22 => Instr::ReqResource {
                compute: f(0),
                fragment: f(1),
                tiler: f(2),
                idvs: f(3),
            },
            23 => Instr::FlushCache2 {
                l2: pick(FlushMode::ALL, a),
                lsc: pick(FlushMode::ALL, a >> 8),
                other: pick(OtherFlushMode::ALL, a >> 16),
                wait_mask: mask16,
                flush_id: r8(24),
                signal_slot: slot,
            },
            24..=27 => {
                let (error_propagate, wait_mask, data, address, signal_slot) =
                    (f(0), mask16, r8(0), r8(8), slot);
                match k % 39 {
                    24 => Instr::SyncAdd32 {
                        error_propagate,
                        scope,
                        wait_mask,
                        data,
                        address,
                        signal_slot,
                    },
                    25 => Instr::SyncSet32 {
                        error_propagate,
                        scope,
                        wait_mask,
                        data,
                        address,
                        signal_slot,
                    },
                    26 => Instr::SyncAdd64 {
                        error_propagate,
                        scope,
                        wait_mask,
                        data,
                        address,
                        signal_slot,
                    },
                    _ => Instr::SyncSet64 {
                        error_propagate,
                        scope,
                        wait_mask,
                        data,
                        address,
                        signal_slot,
                    },
                }
            }
            28 => Instr::SyncWait32 {
                error_reject: f(0),
                cond: pick(SyncCond::ALL, a >> 50),
                data: r8(0),
                address: r8(8),
            },
            29 => Instr::SyncWait64 {
                error_reject: f(0),
                cond: pick(SyncCond::ALL, a >> 50),
                data: r8(0),
                address: r8(8),
            },
            30 => Instr::StoreState {
                address: r8(0),
                offset: (a >> 8) as i16,
                state: pick(CsState::ALL, a >> 30),
                wait_mask: mask16,
                signal_slot: slot,
            },
            31 => Instr::ProtRegion { size: a as u16 },
            32 => Instr::ProgressStore { src: r8(0) },
            33 => Instr::ProgressLoad { dst: r8(0) },
            34 => Instr::RunComputeIndirect {
                wg_per_task: a as u16,
                progress_inc: f(9),
                select: sel,
            },
            35 => Instr::ErrorBarrier,
            36 => Instr::HeapSet { address: r8(0) },
            37 => Instr::HeapOperation {
                op: pick(HeapOp::ALL, a),
                wait_mask: mask16,
                signal_slot: slot,
            },
            _ => Instr::TracePoint {
                base: r8(0),
                count: r8(8),
                wait_mask: mask16,
                signal_slot: slot,
            },
        }
    }

    #[test]
    fn arbitrary_covers_every_opcode() {
        let mut seen: Vec<Opcode> = (0..39).map(|k| arbitrary_instr(k, 0, 0).opcode()).collect();
        seen.sort_by_key(|o| *o as u8);
        seen.dedup();
        assert_eq!(seen.as_slice(), Opcode::ALL);
    }

    proptest! {
        #[test]
        fn instr_round_trip(k in 0usize..39, a in any::<u64>(), b in any::<u64>()) {
            let i = arbitrary_instr(k, a, b);
            prop_assert_eq!(i.validate(), Ok(()));
            let word = i.encode();
            prop_assert_eq!(word >> 56, i.opcode() as u64);
            prop_assert_eq!(decode(word), Ok(i));
        }

        #[test]
        fn any_word_decodes_strictly(word in any::<u64>()) {
            if let Ok(i) = decode(word) {
                prop_assert_eq!(i.encode(), word);
            }
        }

        /// Words built from a valid opcode and payload bits mostly inside its
        /// fields, so that decoding often succeeds.
        #[test]
        fn near_valid_word_decodes_strictly(
            op in 0usize..39,
            payload in any::<u64>(),
            noise in any::<u64>(),
            noisy in any::<bool>(),
        ) {
            let op = Opcode::ALL[op];
            let mut word = ((op as u64) << 56) | (payload & op.field_mask());
            if noisy {
                // A single extra bit somewhere in the payload.
                word |= 1 << (noise % 56);
            }
            match decode(word) {
                Ok(i) => {
                    prop_assert_eq!(i.opcode(), op);
                    prop_assert_eq!(i.encode(), word);
                }
                Err(DecodeError::ReservedBits { opcode, bits }) => {
                    prop_assert_eq!(opcode, op as u8);
                    prop_assert_eq!(bits & op.field_mask(), 0);
                    prop_assert!(noisy);
                }
                Err(DecodeError::InvalidField { opcode, .. }) => {
                    prop_assert_eq!(opcode, op as u8);
                }
                Err(e) => prop_assert!(false, "unexpected {e:?}"),
            }
        }
    }
}
