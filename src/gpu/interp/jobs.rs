//! RUN_* and FINISH_TILING: staging-register validation, the modelled
//! duration, and scoreboard signalling.
//!
//! Shader code is not executed and no pixel is written. What a job does
//! observably here is:
//! - it reads the descriptors its staging registers select (v10 layout,
//!   csf.md §3.3), so an unmapped descriptor gives the MMU fault the
//!   hardware's descriptor fetch would: a read fault at the first unmapped
//!   byte of the descriptor header, which for a wholly unmapped descriptor
//!   is the pointer itself;
//! - it checks that a shader program's code (the `Binary` pointer at byte 8
//!   of the 32-byte shader program descriptor) is mapped executable, so a
//!   NOEXEC or unmapped shader gives an execute permission or translation
//!   fault at that address;
//! - it occupies its endpoint iterator for a modelled time
//!   ([`TimingModel`](super::TimingModel)) and signals the SET_SB_ENTRY
//!   endpoint slot until then.
//!
//! Pointer formats (Mesa's pandecode): a resource table pointer carries its
//! entry count in bits 5:0 (16-byte entries); a FAU pointer holds the
//! address in bits 47:0 and the count of 64-bit words in bits 63:56; the
//! framebuffer pointer has flags in bits 5:0; the blend pointer has the
//! descriptor count in bits 3:0. Optional pointers are only checked when
//! non-zero; the compute shader program, the framebuffer descriptor of a
//! fragment job, the tiler context of a draw and the draw descriptor of a
//! full-screen job are always checked. Checks run in the order listed in
//! each function, and the first fault wins.

use crate::gpu::cs::{IdvsSelect, Instr, ShaderSelect};
use crate::gpu::mmu::{Access, Fault};

use super::env::{ExecEnv, RunInfo, RunKind};
use super::state::StreamState;

/// Bytes of a descriptor read to prove it is mapped.
const HEADER: usize = 32;
/// Bytes of a framebuffer descriptor read (the parameters section up to
/// its tiler pointer).
const FBD_HEADER: usize = 64;
/// Offset of the `Binary` pointer in a shader program descriptor.
const SPD_BINARY: usize = 8;
/// Offset of the `Tiler` pointer in the framebuffer parameters.
const FBD_TILER: usize = 56;
/// Size of a resource table entry.
const RESOURCE_SIZE: u64 = 16;
/// Size of a blend descriptor.
const BLEND_SIZE: u64 = 16;
/// Tiles are 16x16 pixels.
const TILE: u32 = 16;
/// Primitive flags: index type, bits 10:8.
const INDEX_TYPE_SHIFT: u32 = 8;
/// Primitive flags: secondary (varying) shader present, bit 18.
const SECONDARY_SHADER: u32 = 1 << 18;

/// A job ready to be timed: what it is, its main descriptor and its size.
struct Job {
    kind: RunKind,
    descriptor: u64,
    units: u64,
    progress_inc: bool,
}

/// Reads descriptors through the environment's VM.
struct Reader<'a, E: ExecEnv> {
    env: &'a mut E,
}

impl<E: ExecEnv> Reader<'_, E> {
    /// Reads `N` bytes at `va`; only the first `len` are fetched (the rest
    /// stay zero).
    fn read<const N: usize>(&mut self, va: u64, len: usize) -> Result<[u8; N], Fault> {
        let mut buf = [0u8; N];
        let len = len.min(N);
        let (vm, mem) = self.env.memory();
        vm.read_bytes(mem, va, &mut buf[..len])?;
        Ok(buf)
    }

    /// Proves `[va, va + len)` (at most [`HEADER`] bytes) readable.
    fn touch(&mut self, va: u64, len: u64) -> Result<(), Fault> {
        self.read::<HEADER>(va, len.min(HEADER as u64) as usize)
            .map(drop)
    }

    /// A shader program descriptor and the first byte of its code.
    fn shader(&mut self, spd: u64) -> Result<(), Fault> {
        let hdr = self.read::<HEADER>(spd, HEADER)?;
        let binary = le64(&hdr, SPD_BINARY);
        if binary != 0 {
            let (vm, _) = self.env.memory();
            vm.translate(binary, Access::Execute)?;
        }
        Ok(())
    }

    /// A shader program descriptor, when the pointer is non-zero.
    fn shader_opt(&mut self, spd: u64) -> Result<(), Fault> {
        if spd != 0 {
            self.shader(spd)?;
        }
        Ok(())
    }

    /// A resource table pointer (count in bits 5:0).
    fn resources(&mut self, srt: u64) -> Result<(), Fault> {
        let count = srt & 0x3f;
        let addr = srt & !0x3f;
        if addr != 0 && count != 0 {
            self.touch(addr, count * RESOURCE_SIZE)?;
        }
        Ok(())
    }

    /// A FAU pointer (address in bits 47:0, count in bits 63:56).
    fn fau(&mut self, fau: u64) -> Result<(), Fault> {
        let addr = fau & ((1 << 48) - 1);
        let count = fau >> 56;
        if addr != 0 && count != 0 {
            self.touch(addr, count * 8)?;
        }
        Ok(())
    }

    /// A descriptor that is only there when its pointer is non-zero.
    fn opt(&mut self, va: u64) -> Result<(), Fault> {
        if va != 0 {
            self.touch(va, HEADER as u64)?;
        }
        Ok(())
    }
}

fn le64(b: &[u8], off: usize) -> u64 {
    let mut w = [0u8; 8];
    if let Some(s) = b.get(off..off + 8) {
        w.copy_from_slice(s);
    }
    u64::from_le_bytes(w)
}

impl StreamState {
    /// Validates and issues a RUN_* / FINISH_TILING. On success the job is
    /// in flight on its iterator and the endpoint slot is signalled until
    /// it completes.
    pub(super) fn issue_job<E: ExecEnv>(
        &mut self,
        env: &mut E,
        instr: Instr,
        ip: u64,
    ) -> Result<(), Fault> {
        let job = match instr {
            Instr::RunCompute {
                select,
                progress_inc,
                ..
            } => self.check_compute(env, select, RunKind::Compute, progress_inc)?,
            Instr::RunComputeIndirect {
                select,
                progress_inc,
                ..
            } => self.check_compute(env, select, RunKind::ComputeIndirect, progress_inc)?,
            Instr::RunTiling {
                select,
                flags_override,
                progress_inc,
            } => self.check_tiling(env, select, flags_override, progress_inc)?,
            Instr::RunIdvs {
                select,
                flags_override,
                progress_inc,
                ..
            } => self.check_idvs(env, select, flags_override, progress_inc)?,
            Instr::RunFragment {
                enable_tem,
                progress_inc,
                ..
            } => self.check_fragment(env, enable_tem, progress_inc)?,
            Instr::RunFullscreen {
                dcd, progress_inc, ..
            } => {
                let mut rd = Reader { env: &mut *env };
                let tiler = self.reg64(40);
                rd.touch(tiler, HEADER as u64)?;
                rd.touch(self.reg64(usize::from(dcd)), HEADER as u64)?;
                Job {
                    kind: RunKind::Fullscreen,
                    descriptor: tiler,
                    units: 0,
                    progress_inc,
                }
            }
            Instr::FinishTiling { progress_inc } => Job {
                kind: RunKind::FinishTiling,
                descriptor: 0,
                units: 0,
                progress_inc,
            },
            _ => return Ok(()),
        };
        self.start_job(env, job, ip);
        Ok(())
    }

    fn check_compute<E: ExecEnv>(
        &self,
        env: &mut E,
        s: ShaderSelect,
        kind: RunKind,
        progress_inc: bool,
    ) -> Result<Job, Fault> {
        let mut rd = Reader { env };
        let pair = |base: usize, sel: u8| self.reg64(base + 2 * usize::from(sel));
        rd.resources(pair(0, s.srt))?;
        rd.fau(pair(8, s.fau))?;
        let spd = pair(16, s.spd);
        rd.shader(spd)?;
        rd.opt(pair(24, s.tsd))?;
        let units = if kind == RunKind::Compute {
            u64::from(self.reg(37))
                .saturating_mul(u64::from(self.reg(38)))
                .saturating_mul(u64::from(self.reg(39)))
        } else {
            0
        };
        Ok(Job {
            kind,
            descriptor: spd,
            units,
            progress_inc,
        })
    }

    /// The index buffer (d54) when the primitive flags name an index type.
    fn check_index_buffer<E: ExecEnv>(
        &self,
        rd: &mut Reader<'_, E>,
        flags: u32,
    ) -> Result<(), Fault> {
        if (flags >> INDEX_TYPE_SHIFT) & 7 != 0 {
            rd.opt(self.reg64(54))?;
        }
        Ok(())
    }

    fn draw_units(&self) -> u64 {
        u64::from(self.reg(33)).saturating_mul(u64::from(self.reg(34).max(1)))
    }

    fn check_tiling<E: ExecEnv>(
        &self,
        env: &mut E,
        s: ShaderSelect,
        flags_override: u32,
        progress_inc: bool,
    ) -> Result<Job, Fault> {
        let mut rd = Reader { env };
        let pair = |base: usize, sel: u8| self.reg64(base + 2 * usize::from(sel));
        rd.resources(pair(0, s.srt))?;
        rd.fau(pair(8, s.fau))?;
        rd.shader_opt(pair(16, s.spd))?;
        rd.opt(pair(24, s.tsd))?;
        let tiler = self.reg64(40);
        rd.touch(tiler, HEADER as u64)?;
        self.check_index_buffer(&mut rd, self.reg(56) | flags_override)?;
        Ok(Job {
            kind: RunKind::Tiling,
            descriptor: tiler,
            units: self.draw_units(),
            progress_inc,
        })
    }

    fn check_idvs<E: ExecEnv>(
        &self,
        env: &mut E,
        s: IdvsSelect,
        flags_override: u32,
        progress_inc: bool,
    ) -> Result<Job, Fault> {
        let mut rd = Reader { env };
        let flags = self.reg(56) | flags_override;
        let pick = |on: bool, yes: usize, no: usize| self.reg64(if on { yes } else { no });
        // Resource tables: position d0, varying d0/d2, fragment d0/d4.
        rd.resources(self.reg64(0))?;
        rd.resources(pick(s.varying_srt, 2, 0))?;
        rd.resources(pick(s.fragment_srt, 4, 0))?;
        // FAU: position d8, varying d8/d10, fragment d12.
        rd.fau(self.reg64(8))?;
        rd.fau(pick(s.varying_fau, 10, 8))?;
        rd.fau(self.reg64(12))?;
        // Shaders: position d16, varying d18 (with a secondary shader),
        // fragment d20.
        rd.shader_opt(self.reg64(16))?;
        if flags & SECONDARY_SHADER != 0 {
            rd.shader_opt(self.reg64(18))?;
        }
        rd.shader_opt(self.reg64(20))?;
        // Thread storage: position d24, varying d24/d26, fragment d24/d28.
        rd.opt(self.reg64(24))?;
        rd.opt(pick(s.varying_tsd, 26, 24))?;
        rd.opt(pick(s.fragment_tsd, 28, 24))?;
        let tiler = self.reg64(40);
        rd.touch(tiler, HEADER as u64)?;
        // Occlusion query target, written by the job.
        let oq = self.reg64(46);
        if oq != 0 {
            let (vm, _) = rd.env.memory();
            vm.translate(oq, Access::Write)?;
        }
        let blend = self.reg64(50);
        if blend & !0xf != 0 && blend & 0xf != 0 {
            rd.touch(blend & !0xf, (blend & 0xf) * BLEND_SIZE)?;
        }
        rd.opt(self.reg64(52))?;
        self.check_index_buffer(&mut rd, flags)?;
        Ok(Job {
            kind: RunKind::Idvs,
            descriptor: tiler,
            units: self.draw_units(),
            progress_inc,
        })
    }

    fn check_fragment<E: ExecEnv>(
        &self,
        env: &mut E,
        enable_tem: bool,
        progress_inc: bool,
    ) -> Result<Job, Fault> {
        let mut rd = Reader { env };
        let fbd = self.reg64(40) & !0x3f;
        let params = rd.read::<FBD_HEADER>(fbd, FBD_HEADER)?;
        rd.opt(le64(&params, FBD_TILER))?;
        if enable_tem {
            let tem = self.reg64(44);
            if tem != 0 {
                rd.touch(tem, 8)?;
            }
        }
        // Bounding box in pixels: x in bits 15:0, y in bits 31:16.
        let (min, max) = (self.reg(42), self.reg(43));
        let span = |lo: u32, hi: u32| {
            if hi >= lo {
                u64::from((hi - lo) / TILE + 1)
            } else {
                0
            }
        };
        let tiles = span(min & 0xffff, max & 0xffff).saturating_mul(span(min >> 16, max >> 16));
        Ok(Job {
            kind: RunKind::Fragment,
            descriptor: fbd,
            units: tiles,
            progress_inc,
        })
    }

    /// The modelled duration of a job.
    fn job_duration(&self, job: &Job) -> u64 {
        let t = &self.timing;
        let per_unit = match job.kind {
            RunKind::Compute => t.compute_ns_per_workgroup,
            RunKind::Tiling | RunKind::Idvs => t.vertex_ns,
            RunKind::Fragment => t.fragment_ns_per_tile,
            RunKind::ComputeIndirect | RunKind::Fullscreen => 0,
            RunKind::FinishTiling => return t.bookkeeping_ns,
        };
        t.run_base_ns
            .saturating_add(job.units.saturating_mul(per_unit))
            .min(t.max_run_ns)
    }

    /// Puts a validated job on its iterator and signals the endpoint slot.
    fn start_job<E: ExecEnv>(&mut self, env: &mut E, job: Job, ip: u64) {
        let duration = self.job_duration(&job);
        let it = job.kind.iterator();
        let free_at = self.iter_busy_until.get(it).copied().unwrap_or(0);
        let start_ns = self.now.max(free_at);
        let done_ns = start_ns.saturating_add(duration);
        if let Some(busy) = self.iter_busy_until.get_mut(it) {
            *busy = done_ns;
        }
        let slot = self.sb_endpoint;
        self.signal(slot, done_ns);
        if job.progress_inc {
            self.progress = self.progress.wrapping_add(1);
        }
        self.stats.runs += 1;
        env.on_run(&RunInfo {
            kind: job.kind,
            ip,
            slot,
            descriptor: job.descriptor,
            units: job.units,
            start_ns,
            done_ns,
        });
    }
}
