//! Tunables of the firmware model: scheduler tick, job timeout, slice
//! budget, queue and handle limits, and the timing model of the command
//! streams.

use crate::gpu::interp::TimingModel;
use crate::gpu::mmu::VmLimits;

/// Panthor's scheduler tick period (10 ms).
pub const TICK_NS: u64 = 10_000_000;
/// Panthor's job timeout (JOB_TIMEOUT_MS = 5000).
pub const JOB_TIMEOUT_NS: u64 = 5_000_000_000;
/// Instructions one queue may execute per slice before it is preempted.
pub const SLICE_BUDGET: u64 = 100_000;
/// Groups per context (MAX_GROUPS_PER_POOL).
pub const MAX_GROUPS: u32 = 128;
/// VMs per context (PANTHOR_MAX_VMS_PER_FILE).
pub const MAX_VMS: u32 = 32;
/// Tiler heaps per VM (MAX_HEAPS_PER_POOL).
pub const MAX_HEAPS_PER_VM: u32 = 128;
/// Jobs a queue may hold beyond what its ring has room for.
pub const MAX_PENDING_JOBS: usize = 256;

/// Configuration of a [`Firmware`](super::Firmware).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FwConfig {
    /// Scheduler tick period, in ns: how often resident groups rotate when
    /// more groups are runnable than there are CSG slots.
    pub tick_ns: u64,
    /// A queue whose oldest job has not completed after this long (counted
    /// only while its group may run, see the module documentation) makes
    /// its group TIMEDOUT.
    pub job_timeout_ns: u64,
    /// Instruction budget of one queue slice.
    pub slice_budget: u64,
    /// Jobs a queue keeps in software when its ring is full; one more is
    /// refused with EAGAIN.
    pub max_pending_jobs: usize,
    /// Most groups alive at once (handles `1..=max_groups`).
    pub max_groups: u32,
    /// Most VMs alive at once (handles `1..=max_vms`).
    pub max_vms: u32,
    /// Most tiler heaps per VM.
    pub max_heaps_per_vm: u32,
    /// Limits of each VM's page tables and mapping tree.
    pub vm_limits: VmLimits,
    /// Bytes of user mappings across all VMs.
    pub max_mapped_bytes: u64,
    /// Modelled durations of asynchronous CS operations.
    pub timing: TimingModel,
}

impl Default for FwConfig {
    fn default() -> Self {
        Self {
            tick_ns: TICK_NS,
            job_timeout_ns: JOB_TIMEOUT_NS,
            slice_budget: SLICE_BUDGET,
            max_pending_jobs: MAX_PENDING_JOBS,
            max_groups: MAX_GROUPS,
            max_vms: MAX_VMS,
            max_heaps_per_vm: MAX_HEAPS_PER_VM,
            vm_limits: VmLimits::default(),
            max_mapped_bytes: u64::MAX,
            timing: TimingModel::DEFAULT,
        }
    }
}
