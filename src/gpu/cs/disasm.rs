//! One-line textual disassembly of v10 command-stream instructions, for logs,
//! traces and fault reports.
//!
//! Syntax: `mnemonic[.modifier...] operands`. 32-bit registers print as `rN`,
//! 64-bit pairs as `dN`, immediates as `#value`, memory operands as
//! `[dN]` or `[dN, #offset]`. Instructions with explicit scoreboard fields end
//! with `wait=0xMASK, signal=N`; `signal=-` marks a synchronous operation
//! (wait mask 0, not FLUSH_CACHE2) whose signal slot is 0 and therefore
//! unused. The text is lossless: every encoded field is shown.

use std::fmt::{self, Display, Formatter, Write};

use super::isa::{decode, Instr, ShaderSelect, EXCEPTION_TYPE_TILER_OOM};

/// Writes the `wait=0x.., signal=..` scoreboard operands, preceded by `sep`.
fn write_async(
    f: &mut Formatter<'_>,
    sep: &str,
    wait_mask: u16,
    signal_slot: u8,
    deferred: bool,
) -> fmt::Result {
    write!(f, "{sep}wait={wait_mask:#04x}, signal=")?;
    if !deferred && signal_slot == 0 {
        f.write_str("-")
    } else {
        write!(f, "{signal_slot}")
    }
}

/// Writes `.progress` when the progress-increment flag is set.
fn write_progress(f: &mut Formatter<'_>, progress_inc: bool) -> fmt::Result {
    if progress_inc {
        f.write_str(".progress")?;
    }
    Ok(())
}

/// Writes a memory operand `[dN]` or `[dN, #off]`.
fn write_mem(f: &mut Formatter<'_>, address: u8, offset: i16) -> fmt::Result {
    if offset == 0 {
        write!(f, "[d{address}]")
    } else {
        write!(f, "[d{address}, #{offset}]")
    }
}

fn write_select(f: &mut Formatter<'_>, s: ShaderSelect) -> fmt::Result {
    write!(
        f,
        "srt={}, spd={}, tsd={}, fau={}",
        s.srt, s.spd, s.tsd, s.fau
    )
}

/// Writes the sync-update modifiers and operands shared by SYNC_ADD/SET.
fn write_sync_update(f: &mut Formatter<'_>, instr: &Instr, pair_data: bool) -> fmt::Result {
    let (Instr::SyncAdd32 {
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
    }) = *instr
    else {
        return Ok(());
    };
    write!(f, "{}.{scope}", instr.opcode().mnemonic())?;
    if error_propagate {
        f.write_str(".propagate")?;
    }
    let kind = if pair_data { 'd' } else { 'r' };
    write!(f, " [d{address}], {kind}{data}")?;
    write_async(f, ", ", wait_mask, signal_slot, wait_mask != 0)
}

impl Display for Instr {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        let mn = self.opcode().mnemonic();
        match *self {
            Instr::Nop { ignored } => {
                f.write_str(mn)?;
                if ignored != 0 {
                    write!(f, " #{ignored:#x}")?;
                }
                Ok(())
            }
            Instr::Move48 { dst, imm } => write!(f, "{mn} d{dst}, #{imm:#x}"),
            Instr::Move32 { dst, imm } => write!(f, "{mn} r{dst}, #{imm:#x}"),
            Instr::Wait {
                wait_mask,
                progress_inc,
            } => {
                f.write_str(mn)?;
                write_progress(f, progress_inc)?;
                write!(f, " {wait_mask:#04x}")
            }
            Instr::RunCompute {
                task_increment,
                task_axis,
                progress_inc,
                select,
            } => {
                f.write_str(mn)?;
                write_progress(f, progress_inc)?;
                write!(f, " task_inc={task_increment}, axis={task_axis}, ")?;
                write_select(f, select)
            }
            Instr::RunTiling {
                flags_override,
                progress_inc,
                select,
            } => {
                f.write_str(mn)?;
                write_progress(f, progress_inc)?;
                write!(f, " flags={flags_override:#x}, ")?;
                write_select(f, select)
            }
            Instr::RunIdvs {
                flags_override,
                progress_inc,
                malloc_enable,
                draw_id_reg_enable,
                select,
                draw_id,
            } => {
                f.write_str(mn)?;
                write_progress(f, progress_inc)?;
                if malloc_enable {
                    f.write_str(".malloc")?;
                }
                write!(f, " flags={flags_override:#x}, draw_id=")?;
                if draw_id_reg_enable {
                    write!(f, "r{draw_id}")?;
                } else {
                    write!(f, "off({draw_id})")?;
                }
                write!(
                    f,
                    ", vary_srt={}, vary_fau={}, vary_tsd={}, frag_srt={}, frag_tsd={}",
                    u8::from(select.varying_srt),
                    u8::from(select.varying_fau),
                    u8::from(select.varying_tsd),
                    u8::from(select.fragment_srt),
                    u8::from(select.fragment_tsd),
                )
            }
            Instr::RunFragment {
                enable_tem,
                tile_order,
                progress_inc,
            } => {
                f.write_str(mn)?;
                write_progress(f, progress_inc)?;
                if enable_tem {
                    f.write_str(".tem")?;
                }
                write!(f, " order={tile_order}")
            }
            Instr::RunFullscreen {
                flags_override,
                progress_inc,
                dcd,
            } => {
                f.write_str(mn)?;
                write_progress(f, progress_inc)?;
                write!(f, " d{dcd}, flags={flags_override:#x}")
            }
            Instr::FinishTiling { progress_inc } => {
                f.write_str(mn)?;
                write_progress(f, progress_inc)
            }
            Instr::FinishFragment {
                inc_frag_completed,
                wait_mask,
                last_heap_chunk,
                first_heap_chunk,
                signal_slot,
            } => {
                f.write_str(mn)?;
                if inc_frag_completed {
                    f.write_str(".inc")?;
                }
                write!(f, " d{first_heap_chunk}, d{last_heap_chunk}")?;
                write_async(f, ", ", wait_mask, signal_slot, wait_mask != 0)
            }
            Instr::AddImm32 { dst, src, imm } => write!(f, "{mn} r{dst}, r{src}, #{imm}"),
            Instr::AddImm64 { dst, src, imm } => write!(f, "{mn} d{dst}, d{src}, #{imm}"),
            Instr::Umin32 { dst, src0, src1 } => write!(f, "{mn} r{dst}, r{src0}, r{src1}"),
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
                write!(f, "{mn} r{base}, ")?;
                write_mem(f, address, offset)?;
                write!(f, ", mask={mask:#06x}")
            }
            Instr::Branch {
                cond,
                value,
                offset,
            } => write!(f, "{mn}.{cond} r{value}, {offset}"),
            Instr::SetSbEntry { endpoint, other } => {
                write!(f, "{mn} endpoint={endpoint}, other={other}")
            }
            Instr::ProgressWait { queue, src } => write!(f, "{mn} d{src}, queue={queue}"),
            Instr::SetExceptionHandler {
                exception_type,
                address,
                length,
            } => {
                if exception_type == EXCEPTION_TYPE_TILER_OOM {
                    write!(f, "{mn}.tiler_oom")?;
                } else {
                    write!(f, "{mn}.type{exception_type}")?;
                }
                write!(f, " d{address}, r{length}")
            }
            Instr::Call { address, length } | Instr::Jump { address, length } => {
                write!(f, "{mn} d{address}, r{length}")
            }
            Instr::ReqResource {
                compute,
                fragment,
                tiler,
                idvs,
            } => {
                f.write_str(mn)?;
                let names = [
                    (compute, "compute"),
                    (fragment, "fragment"),
                    (tiler, "tiler"),
                    (idvs, "idvs"),
                ];
                let mut sep = " ";
                for (on, name) in names {
                    if on {
                        write!(f, "{sep}{name}")?;
                        sep = "|";
                    }
                }
                if sep == " " {
                    f.write_str(" none")?;
                }
                Ok(())
            }
            Instr::FlushCache2 {
                l2,
                lsc,
                other,
                wait_mask,
                flush_id,
                signal_slot,
            } => {
                write!(
                    f,
                    "{mn} l2={l2}, lsc={lsc}, other={other}, flush_id=r{flush_id}"
                )?;
                write_async(f, ", ", wait_mask, signal_slot, true)
            }
            Instr::SyncAdd32 { .. } | Instr::SyncSet32 { .. } => write_sync_update(f, self, false),
            Instr::SyncAdd64 { .. } | Instr::SyncSet64 { .. } => write_sync_update(f, self, true),
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
            } => {
                write!(f, "{mn}.{cond}")?;
                if error_reject {
                    f.write_str(".reject")?;
                }
                let kind = if matches!(self, Instr::SyncWait64 { .. }) {
                    'd'
                } else {
                    'r'
                };
                write!(f, " [d{address}], {kind}{data}")
            }
            Instr::StoreState {
                address,
                offset,
                state,
                wait_mask,
                signal_slot,
            } => {
                write!(f, "{mn}.{state} ")?;
                write_mem(f, address, offset)?;
                write_async(f, ", ", wait_mask, signal_slot, wait_mask != 0)
            }
            Instr::ProtRegion { size } => {
                write!(f, "{mn} #{:#x}", u32::from(size) << 3)
            }
            Instr::ProgressStore { src } => write!(f, "{mn} d{src}"),
            Instr::ProgressLoad { dst } => write!(f, "{mn} d{dst}"),
            Instr::RunComputeIndirect {
                wg_per_task,
                progress_inc,
                select,
            } => {
                f.write_str(mn)?;
                write_progress(f, progress_inc)?;
                write!(f, " wg_per_task={wg_per_task}, ")?;
                write_select(f, select)
            }
            Instr::ErrorBarrier => f.write_str(mn),
            Instr::HeapSet { address } => write!(f, "{mn} d{address}"),
            Instr::HeapOperation {
                op,
                wait_mask,
                signal_slot,
            } => {
                write!(f, "{mn}.{op}")?;
                write_async(f, " ", wait_mask, signal_slot, wait_mask != 0)
            }
            Instr::TracePoint {
                base,
                count,
                wait_mask,
                signal_slot,
            } => {
                write!(f, "{mn} r{base}, count={count}")?;
                write_async(f, ", ", wait_mask, signal_slot, wait_mask != 0)
            }
        }
    }
}

/// Disassembles a stream of instruction words that starts at GPU virtual
/// address `base_va`. Each line reads `VA: word  text`; a branch also shows
/// its target address, and a word that does not decode shows as
/// `.invalid 0x... (reason)`. Addresses wrap at 2^64 rather than overflow.
pub fn disassemble(words: &[u64], base_va: u64) -> String {
    let mut out = String::with_capacity(words.len() * 48);
    let mut va = base_va;
    for &word in words {
        // Writing into a String cannot fail.
        let _ = write!(out, "{va:#014x}: {word:016x}  ");
        let _ = match decode(word) {
            Ok(instr) => {
                let r = write!(out, "{instr}");
                if let Instr::Branch { offset, .. } = instr {
                    let delta = (i64::from(offset) + 1).wrapping_mul(8);
                    let target = va.wrapping_add_signed(delta);
                    let _ = write!(out, "  ; -> {target:#x}");
                }
                r
            }
            Err(e) => write!(out, ".invalid {word:#018x} ({e})"),
        };
        out.push('\n');
        va = va.wrapping_add(8);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::cs::isa::{
        Cond, CsState, FlushMode, HeapOp, OtherFlushMode, SyncCond, SyncScope, TaskAxis,
    };

    fn text(word: u64) -> String {
        decode(word).unwrap().to_string()
    }

    #[test]
    fn kernel_wrapper_text() {
        assert_eq!(text(0x025e000000000000), "move32 r94, #0x0");
        assert_eq!(
            text(0x24005e0000000233),
            "flush_cache2 l2=clean_inv, lsc=clean_inv, other=inv, flush_id=r94, wait=0x00, signal=0"
        );
        assert_eq!(text(0x015c00007f001000), "move48 d92, #0x7f001000");
        assert_eq!(text(0x025e000000000180), "move32 r94, #0x180");
        assert_eq!(text(0x0300000000010000), "wait 0x01");
        assert_eq!(text(0x20005c5e00000000), "call d92, r94");
        assert_eq!(text(0x0300000000ff0000), "wait 0xff");
        assert_eq!(
            text(0x33005c5e00000001),
            "sync_add64.system.propagate [d92], d94, wait=0x00, signal=-"
        );
        assert_eq!(text(0x2f00000000000000), "error_barrier");
        assert_eq!(text(0), "nop");
    }

    #[test]
    fn assorted_text() {
        let b = Instr::Branch {
            cond: Cond::Ne,
            value: 3,
            offset: -4,
        };
        assert_eq!(b.to_string(), "branch.ne r3, -4");
        assert_eq!(
            Instr::AddImm32 {
                dst: 1,
                src: 1,
                imm: -1
            }
            .to_string(),
            "add_imm32 r1, r1, #-1"
        );
        assert_eq!(
            Instr::LoadMultiple {
                base: 4,
                address: 6,
                mask: 0xf,
                offset: 16
            }
            .to_string(),
            "load_multiple r4, [d6, #16], mask=0x000f"
        );
        assert_eq!(
            Instr::SyncWait32 {
                error_reject: true,
                cond: SyncCond::Gt,
                data: 5,
                address: 6
            }
            .to_string(),
            "sync_wait32.gt.reject [d6], r5"
        );
        assert_eq!(
            Instr::SyncSet32 {
                error_propagate: false,
                scope: SyncScope::Csg,
                wait_mask: 0x3,
                data: 1,
                address: 2,
                signal_slot: 4
            }
            .to_string(),
            "sync_set32.csg [d2], r1, wait=0x03, signal=4"
        );
        assert_eq!(
            Instr::StoreState {
                address: 92,
                offset: 0,
                state: CsState::Timestamp,
                wait_mask: 0,
                signal_slot: 0
            }
            .to_string(),
            "store_state.timestamp [d92], wait=0x00, signal=-"
        );
        assert_eq!(
            Instr::HeapOperation {
                op: HeapOp::VtStart,
                wait_mask: 0x100,
                signal_slot: 2
            }
            .to_string(),
            "heap_operation.vt_start wait=0x100, signal=2"
        );
        assert_eq!(
            Instr::RunCompute {
                task_increment: 1,
                task_axis: TaskAxis::Y,
                progress_inc: true,
                select: ShaderSelect::default()
            }
            .to_string(),
            "run_compute.progress task_inc=1, axis=y, srt=0, spd=0, tsd=0, fau=0"
        );
        assert_eq!(
            Instr::ReqResource {
                compute: true,
                fragment: false,
                tiler: true,
                idvs: false
            }
            .to_string(),
            "req_resource compute|tiler"
        );
        assert_eq!(
            Instr::ReqResource {
                compute: false,
                fragment: false,
                tiler: false,
                idvs: false
            }
            .to_string(),
            "req_resource none"
        );
        assert_eq!(
            Instr::FlushCache2 {
                l2: FlushMode::Clean,
                lsc: FlushMode::None,
                other: OtherFlushMode::None,
                wait_mask: 0,
                flush_id: 0,
                signal_slot: 0
            }
            .to_string(),
            "flush_cache2 l2=clean, lsc=none, other=none, flush_id=r0, wait=0x00, signal=0"
        );
        assert_eq!(
            Instr::ProtRegion { size: 2 }.to_string(),
            "prot_region #0x10"
        );
    }

    #[test]
    fn listing_format() {
        let words = [
            0x015c00007f001000,
            0x1600_0300_3000_fffe, // branch.ne r3, -2
            0x0a00_0000_0000_0000,
            0x2f00_0000_0000_0001,
        ];
        let listing = disassemble(&words, 0x1000);
        let lines: Vec<&str> = listing.lines().collect();
        assert_eq!(lines.len(), 4);
        assert_eq!(
            lines[0],
            "0x000000001000: 015c00007f001000  move48 d92, #0x7f001000"
        );
        assert_eq!(
            lines[1],
            "0x000000001008: 160003003000fffe  branch.ne r3, -2  ; -> 0x1000"
        );
        assert_eq!(
            lines[2],
            "0x000000001010: 0a00000000000000  .invalid 0x0a00000000000000 (unknown opcode 0x0a)"
        );
        assert_eq!(
            lines[3],
            "0x000000001018: 2f00000000000001  .invalid 0x2f00000000000001 (reserved bits 0x1 set for opcode 0x2f)"
        );
    }

    #[test]
    fn listing_wraps_without_panic() {
        let listing = disassemble(&[0x1600_0000_6000_8000, 0], u64::MAX - 7);
        assert_eq!(listing.lines().count(), 2);
        assert!(disassemble(&[], 0).is_empty());
    }

    /// Every decodable word prints without panicking and not as an empty
    /// string.
    #[test]
    fn every_opcode_prints() {
        for &op in crate::gpu::cs::isa::Opcode::ALL {
            let word = (op as u64) << 56;
            let s = decode(word).unwrap().to_string();
            assert!(s.starts_with(op.mnemonic()), "{s}");
        }
    }
}
