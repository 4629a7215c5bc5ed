//! The kernel's per-job ring-buffer wrapper (csf.md §2.5) and copying it
//! into a queue's ring.
//!
//! For each job Panthor's `prepare_job_instrs` writes, with `addr = d92`
//! and `val = r94/d94` on a 96-register v10 stream (the top four registers,
//! which user streams may not rely on):
//!
//! ```text
//! MOVE32       r94 <- latest_flush
//! FLUSH_CACHE2 L2 clean+inv, LSC clean+inv, other inv, flush_id r94
//! MOVE48       d92 <- stream_addr
//! MOVE32       r94 <- stream_size
//! WAIT         sb0                      (the flush)
//! CALL         d92, r94                 (the user stream)
//! MOVE48       d92 <- &syncobjs[queue]
//! MOVE48       d94 <- 1
//! WAIT         all scoreboard slots
//! SYNC_ADD64   system, error_propagate, [d92] += d94
//! ERROR_BARRIER
//! NOP ...                               (to 16 instructions, 128 bytes)
//! ```
//!
//! The copy goes through the GPU MMU at `insert & (size - 1)` and wraps at
//! the end of the ring.

use vm_memory::GuestMemoryBackend;

use crate::gpu::cs::{FlushMode, Instr, OtherFlushMode, SyncScope};
use crate::gpu::mmu::{Fault, GpuVm};

/// Instructions of one job in the ring (no profiling).
pub const JOB_INSTRS: usize = 16;
/// Bytes of one job in the ring.
pub const JOB_BYTES: u64 = (JOB_INSTRS * 8) as u64;

/// What the wrapper needs to know about the model and the job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WrapperArgs {
    /// CS register count of the model (96 on v10).
    pub reg_count: u32,
    /// Scoreboard slots of the model (8 on v10).
    pub scoreboards: u32,
    /// `queue_submit.latest_flush`.
    pub latest_flush: u32,
    /// GPU VA of the user stream.
    pub stream_addr: u64,
    /// Size of the user stream in bytes.
    pub stream_size: u32,
    /// GPU VA of the queue's `panthor_syncobj_64b`.
    pub syncobj: u64,
}

/// The wrapper words of one job, padded with NOPs to [`JOB_INSTRS`].
pub fn wrapper_words(a: &WrapperArgs) -> [u64; JOB_INSTRS] {
    WrapperTemplate::new(a.reg_count, a.scoreboards, a.syncobj).job(
        a.latest_flush,
        a.stream_addr,
        a.stream_size,
    )
}

/// A queue's wrapper with the job's operands (latest_flush, stream address
/// and size) left as zero: the rest depends only on the model and the
/// queue's sync object, so it is encoded once per queue and each job
/// encodes three instructions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WrapperTemplate {
    words: [u64; JOB_INSTRS],
    /// The `addr` and `val` registers (see the module documentation).
    addr: u8,
    val: u8,
}

/// Positions of the job's operands in the wrapper.
const LATEST_FLUSH_AT: usize = 0;
const STREAM_ADDR_AT: usize = 2;
const STREAM_SIZE_AT: usize = 3;

impl WrapperTemplate {
    /// The wrapper of a queue whose sync object is at GPU VA `syncobj`, on
    /// a model with `reg_count` CS registers and `scoreboards` slots.
    pub fn new(reg_count: u32, scoreboards: u32, syncobj: u64) -> Self {
        // Both are at least 64 and at most 16 for a model the interpreter
        // runs.
        let addr = (reg_count.saturating_sub(4)) as u8;
        let val = addr.wrapping_add(2);
        let wait_all = if scoreboards >= 8 {
            0xff
        } else {
            ((1u32 << scoreboards) - 1) as u8
        };
        let seq = [
            Instr::Move32 { dst: val, imm: 0 },
            Instr::FlushCache2 {
                l2: FlushMode::CleanInvalidate,
                lsc: FlushMode::CleanInvalidate,
                other: OtherFlushMode::Invalidate,
                wait_mask: 0,
                flush_id: val,
                signal_slot: 0,
            },
            Instr::Move48 { dst: addr, imm: 0 },
            Instr::Move32 { dst: val, imm: 0 },
            Instr::Wait {
                wait_mask: 1,
                progress_inc: false,
            },
            Instr::Call {
                address: addr,
                length: val,
            },
            Instr::Move48 {
                dst: addr,
                imm: syncobj,
            },
            Instr::Move48 { dst: val, imm: 1 },
            Instr::Wait {
                wait_mask: wait_all,
                progress_inc: false,
            },
            Instr::SyncAdd64 {
                error_propagate: true,
                scope: SyncScope::System,
                wait_mask: 0,
                data: val,
                address: addr,
                signal_slot: 0,
            },
            Instr::ErrorBarrier,
        ];
        let mut words = [0u64; JOB_INSTRS];
        for (w, i) in words.iter_mut().zip(seq.iter()) {
            *w = i.encode();
        }
        Self { words, addr, val }
    }

    /// The wrapper words of one job. The three operand words are MOVE32
    /// and MOVE48, whose immediates are the word's low 32 and 48 bits: the
    /// template holds them with a zero immediate, and the job's are put
    /// in (a stream address wider than 48 bits is cut, as encoding the
    /// MOVE48 would).
    pub fn job(&self, latest_flush: u32, stream_addr: u64, stream_size: u32) -> [u64; JOB_INSTRS] {
        const IMM48: u64 = (1 << 48) - 1;
        let mut words = self.words;
        words[LATEST_FLUSH_AT] |= u64::from(latest_flush);
        words[STREAM_ADDR_AT] |= stream_addr & IMM48;
        words[STREAM_SIZE_AT] |= u64::from(stream_size);
        words
    }
}

/// Copies `words` into the ring of `size` bytes (a power of two) at
/// `ring_va`, starting at the byte counter `insert`, wrapping at the end.
pub fn write_ring<M>(
    vm: &mut GpuVm,
    mem: &M,
    ring_va: u64,
    size: u64,
    insert: u64,
    words: &[u64],
) -> Result<(), Fault>
where
    M: GuestMemoryBackend + ?Sized,
{
    let mut bytes = [0u8; JOB_BYTES as usize];
    let mut pos = insert;
    for chunk in words.chunks(JOB_INSTRS) {
        let n = chunk.len() * 8;
        for (dst, w) in bytes.chunks_exact_mut(8).zip(chunk) {
            dst.copy_from_slice(&w.to_le_bytes());
        }
        let off = pos & (size - 1);
        let first = ((size - off) as usize).min(n);
        vm.write_bytes(mem, ring_va + off, &bytes[..first])?;
        if first < n {
            vm.write_bytes(mem, ring_va, &bytes[first..n])?;
        }
        pos += n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrapper_matches_panthor_encoding() {
        let w = wrapper_words(&WrapperArgs {
            reg_count: 96,
            scoreboards: 8,
            latest_flush: 0,
            stream_addr: 0x7f00_1000,
            stream_size: 0x180,
            syncobj: 0x1234,
        });
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
        assert_eq!(w[6], 0x015c000000001234);
        assert!(w[11..].iter().all(|&x| x == 0));
    }

    #[test]
    fn a_template_serves_every_job_of_its_queue() {
        let t = WrapperTemplate::new(96, 8, 0x1234);
        let a = t.job(7, 0x7f00_1000, 0x180);
        let b = t.job(0, 0x10_0000, 0x40);
        // Only the three operand words differ from job to job.
        for i in 0..JOB_INSTRS {
            let operand = [LATEST_FLUSH_AT, STREAM_ADDR_AT, STREAM_SIZE_AT].contains(&i);
            assert_eq!(a[i] == b[i], !operand, "word {i}");
        }
        assert_eq!(a[LATEST_FLUSH_AT], 0x025e000000000007);
        assert_eq!(b[STREAM_ADDR_AT], 0x015c000000100000);
        assert_eq!(b[STREAM_SIZE_AT], 0x025e000000000040);
        // The operand words are the instructions encoded in full.
        let (flush, addr, size) = (u32::MAX, 0xffff_ffff_ffc0, u32::MAX - 7);
        let c = t.job(flush, addr, size);
        assert_eq!(
            c[LATEST_FLUSH_AT],
            Instr::Move32 {
                dst: t.val,
                imm: flush
            }
            .encode()
        );
        assert_eq!(
            c[STREAM_ADDR_AT],
            Instr::Move48 {
                dst: t.addr,
                imm: addr
            }
            .encode()
        );
        assert_eq!(
            c[STREAM_SIZE_AT],
            Instr::Move32 {
                dst: t.val,
                imm: size
            }
            .encode()
        );
    }
}
