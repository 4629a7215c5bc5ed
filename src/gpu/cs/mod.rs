//! The v10 CSF command-stream instruction set: a typed [`Instr`] for every
//! v10 opcode with a strict, allocation-free decoder and an encoder that
//! reproduces the original word bit for bit ([`isa`]); a one-line
//! disassembler for logs and fault reports ([`disasm`]); and a small
//! assembler with labels and argument checking that tests, benchmarks and
//! guest tools use to write command streams ([`builder`]). Execution
//! semantics (register file, scoreboards, call stack, memory) belong to the
//! interpreter, which builds on these types.

pub mod builder;
pub mod disasm;
pub mod isa;

pub use builder::{words_to_bytes, AsyncOp, BuildError, Builder, Label};
pub use disasm::disassemble;
pub use isa::{
    decode, pair_in_range, reg_in_range, Cond, CsState, DecodeError, EncodeError, FlushMode,
    HeapOp, IdvsSelect, Instr, Opcode, OtherFlushMode, RegisterError, ShaderSelect, SyncCond,
    SyncScope, TaskAxis, TileOrder, EXCEPTION_TYPE_TILER_OOM, REG_COUNT_V10, SCOREBOARD_SLOTS_V10,
};
