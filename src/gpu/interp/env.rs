//! What the interpreter needs from the firmware model that runs it.

use vm_memory::GuestMemoryBackend;

use crate::gpu::mmu::GpuVm;

/// The firmware side of a running command stream: the group's GPU VM and
/// the guest memory behind it, a clock, and hooks for events the firmware
/// reacts to.
///
/// Only [`memory`](ExecEnv::memory) and [`now_ns`](ExecEnv::now_ns) are
/// required; every hook has a neutral default.
pub trait ExecEnv {
    /// The guest memory type.
    type Mem: GuestMemoryBackend + ?Sized;

    /// The VM of the stream's group and the guest memory it maps.
    fn memory(&mut self) -> (&mut GpuVm, &Self::Mem);

    /// The current time in nanoseconds, from a monotonic clock. The
    /// interpreter samples it once at the start of every slice (and never
    /// lets it go backwards): every instruction of a slice executes at that
    /// instant, and modelled completion times are expressed on this clock.
    fn now_ns(&mut self) -> u64;

    /// The GPU timestamp STORE_STATE(TIMESTAMP) writes for a moment of
    /// [`now_ns`](ExecEnv::now_ns)'s clock. The default counts nanoseconds
    /// (a 1 GHz timestamp); a firmware reporting another
    /// `timestamp_frequency` converts here.
    fn timestamp(&mut self, now_ns: u64) -> u64 {
        now_ns
    }

    /// The cycle counter STORE_STATE(CYCLE_COUNT) writes for a moment of
    /// [`now_ns`](ExecEnv::now_ns)'s clock. The default counts one cycle per
    /// nanosecond.
    fn cycle_count(&mut self, now_ns: u64) -> u64 {
        now_ns
    }

    /// The disjoint counter STORE_STATE(DISJOINT_COUNT) writes (bumped by
    /// the host when timestamps become incomparable, e.g. across a GPU
    /// reset). Default 0.
    fn disjoint_count(&mut self) -> u64 {
        0
    }

    /// The GPU's LATEST_FLUSH_ID. A FLUSH_CACHE2 whose flush-ID register
    /// differs from it is elided, since a flush already happened after the
    /// ID was sampled. Default 0.
    fn latest_flush_id(&mut self) -> u32 {
        0
    }

    /// A FLUSH_CACHE2 that was not elided was performed (the firmware may
    /// advance LATEST_FLUSH_ID here).
    fn on_cache_flush(&mut self) {}

    /// A SYNC_ADD/SET wrote the sync object at `addr` (its value word and
    /// its status word). For a 64-bit object, `written` holds the value and
    /// status words as this write left them (`None` for a 32-bit one).
    /// The firmware re-evaluates the streams parked on
    /// [`Block::SyncWait`](super::Block::SyncWait) and raises CSG
    /// SYNC_UPDATE; nothing polls.
    fn on_sync_write(&mut self, addr: u64, written: Option<(u64, u32)>) {
        let _ = (addr, written);
    }

    /// A RUN_* or FINISH_TILING was issued (tracing).
    fn on_run(&mut self, run: &RunInfo) {
        let _ = run;
    }

    /// The progress counter of queue `queue` of the same group, for
    /// PROGRESS_WAIT. `None` (the default) means the firmware does not
    /// model it, and the wait is satisfied at once.
    fn progress(&mut self, queue: u8) -> Option<u64> {
        let _ = queue;
        None
    }
}

/// The kind of a job-launching instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RunKind {
    /// RUN_COMPUTE.
    Compute,
    /// RUN_COMPUTE_INDIRECT.
    ComputeIndirect,
    /// RUN_TILING.
    Tiling,
    /// RUN_IDVS.
    Idvs,
    /// RUN_FRAGMENT.
    Fragment,
    /// RUN_FULLSCREEN.
    Fullscreen,
    /// FINISH_TILING.
    FinishTiling,
}

impl RunKind {
    /// The endpoint iterator that executes this kind of job: 0 compute,
    /// 1 fragment, 2 tiler. Jobs on one iterator run one after the other.
    pub const fn iterator(self) -> usize {
        match self {
            RunKind::Compute | RunKind::ComputeIndirect => 0,
            RunKind::Fragment => 1,
            RunKind::Tiling | RunKind::Idvs | RunKind::Fullscreen | RunKind::FinishTiling => 2,
        }
    }
}

/// A summary of one issued job, for [`ExecEnv::on_run`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunInfo {
    /// What was launched.
    pub kind: RunKind,
    /// GPU VA of the instruction.
    pub ip: u64,
    /// The scoreboard slot it signals (the SET_SB_ENTRY endpoint entry).
    pub slot: u8,
    /// The main descriptor: the shader program descriptor of a compute or
    /// tiling job, the framebuffer descriptor of a fragment job, the tiler
    /// context of an IDVS or full-screen job, 0 for FINISH_TILING.
    pub descriptor: u64,
    /// The job size the duration was derived from (workgroups, vertices
    /// times instances, or 16x16 tiles; 0 when unknown).
    pub units: u64,
    /// Modelled start time (the iterator may still be busy with an earlier
    /// job).
    pub start_ns: u64,
    /// Modelled completion time.
    pub done_ns: u64,
}
