//! The firmware model proper: groups on their VMs, job submission through
//! the ring wrapper, completion, slot scheduling, faults and timeouts.
//!
//! Everything happens inside calls from the owner, at the time it passes
//! in (`now`, nanoseconds on any monotonic clock); nothing here sleeps,
//! spawns or polls. [`Firmware::run`] executes one slice of every runnable
//! resident queue; the owner calls it again while [`Firmware::needs_run`]
//! says so, and at [`Firmware::next_wakeup_ns`].

use std::collections::BTreeMap;
use std::sync::Arc;

use vm_memory::GuestMemoryBackend;

use super::config::FwConfig;
use super::error::FwError;
use super::event::{FwEvent, GroupStatus, JobId};
use super::group::{
    Group, GroupCreate, Job, JobSubmit, Queue, RunState, SchedState, Timer, SYNCOBJ_SIZE,
};
use super::heap::{HeapCreate, HeapInfo};
use super::kmem::{KernelMemory, KernelObject};
use super::ring::{write_ring, WrapperTemplate, JOB_BYTES};
use super::sched::Scheduler;
use super::vms::Vms;
use crate::gpu::cs::disassemble;
use crate::gpu::interp::{Block, CsLimits, ExecEnv, Stop, StreamState, Windows};
use crate::gpu::mmu::{Bo, Fault, GpuVm, GuestRange, MapFlags, VmKey, VmState};
use crate::gpu::model::GpuModel;
use crate::gpu::sync::FenceResult;
use crate::guest_warn;
use crate::log_limit::LogLimiter;

/// Sync writes remembered per slice; beyond this every queue of the VM is
/// checked after the slice instead.
const MAX_SLICE_WRITES: usize = 4096;

/// One SYNC_ADD/SET seen during a slice.
#[derive(Debug, Clone, Copy)]
struct SyncWrite {
    addr: u64,
    /// For 64-bit objects, the value and status words right after the
    /// write (before later writes of the same slice change them).
    seen: Option<(u64, u32)>,
}

/// The [`ExecEnv`] of one slice of one queue.
struct SliceEnv<'a, M: GuestMemoryBackend + ?Sized> {
    vm: &'a mut GpuVm,
    mem: &'a M,
    now: u64,
    timestamp_frequency: u64,
    writes: &'a mut Vec<SyncWrite>,
    overflow: bool,
}

impl<M: GuestMemoryBackend + ?Sized> ExecEnv for SliceEnv<'_, M> {
    type Mem = M;

    fn memory(&mut self) -> (&mut GpuVm, &M) {
        (self.vm, self.mem)
    }

    fn now_ns(&mut self) -> u64 {
        self.now
    }

    fn timestamp(&mut self, now_ns: u64) -> u64 {
        (u128::from(now_ns) * u128::from(self.timestamp_frequency) / 1_000_000_000) as u64
    }

    fn on_sync_write(&mut self, addr: u64, written: Option<(u64, u32)>) {
        if self.writes.len() >= MAX_SLICE_WRITES {
            self.overflow = true;
            return;
        }
        self.writes.push(SyncWrite {
            addr,
            seen: written,
        });
    }
}

/// Reports a job and the empty jobs that follow it.
fn finish_job(events: &mut Vec<FwEvent>, group: u32, queue: usize, job: Job, result: FenceResult) {
    let queue = queue as u32;
    events.push(FwEvent::JobDone {
        job: job.id,
        tag: job.submit.tag,
        group,
        queue,
        seqno: job.seqno,
        result,
    });
    for (id, tag) in job.followers {
        events.push(FwEvent::JobDone {
            job: id,
            tag,
            group,
            queue,
            seqno: job.seqno,
            result,
        });
    }
}

/// The emulated CSF firmware and kernel scheduler of one context. See the
/// [module documentation](super).
#[derive(Debug)]
pub struct Firmware<K: KernelMemory> {
    config: FwConfig,
    model: GpuModel,
    kmem: K,
    vms: Vms,
    groups: BTreeMap<u32, Group>,
    /// The instruction windows lent to each slice: one pair for all the
    /// streams, which run one at a time.
    windows: Windows,
    sched: Scheduler,
    events: Vec<FwEvent>,
    now: u64,
    next_job: JobId,
    writes: Vec<SyncWrite>,
    /// Sync objects were written since parked queues were last checked.
    sync_dirty: bool,
    /// Fault reports are guest-triggered: their log lines are rate-limited.
    fault_log: LogLimiter,
}

impl<K: KernelMemory> Firmware<K> {
    /// A firmware for `model` whose kernel objects come from `kmem`.
    pub fn new(model: GpuModel, config: FwConfig, kmem: K) -> Self {
        Self {
            sched: Scheduler::new(model.csif_info.csg_slot_count as usize),
            vms: Vms::new(config.max_vms, config.max_mapped_bytes),
            config,
            model,
            kmem,
            groups: BTreeMap::new(),
            windows: Windows::default(),
            events: Vec::new(),
            now: 0,
            next_job: 1,
            writes: Vec::with_capacity(64),
            sync_dirty: false,
            fault_log: LogLimiter::default(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &FwConfig {
        &self.config
    }

    /// The GPU model.
    pub fn model(&self) -> &GpuModel {
        &self.model
    }

    /// The kernel-memory allocator.
    pub fn kernel_memory(&self) -> &K {
        &self.kmem
    }

    /// The latest time the firmware was given.
    pub fn now(&self) -> u64 {
        self.now
    }

    /// Takes the events reported since the last call.
    pub fn take_events(&mut self) -> Vec<FwEvent> {
        std::mem::take(&mut self.events)
    }

    /// Appends the events reported since the last call to `out`.
    pub fn drain_events_into(&mut self, out: &mut Vec<FwEvent>) {
        out.append(&mut self.events);
    }

    /// Whether events were reported since they were last taken.
    pub fn has_events(&self) -> bool {
        !self.events.is_empty()
    }

    fn tick_clock(&mut self, now: u64) {
        self.now = self.now.max(now);
    }

    // ------------------------------------------------------------------
    // VMs
    // ------------------------------------------------------------------

    /// VM_CREATE: returns the handle and the user VA range (where the
    /// kernel window starts).
    pub fn vm_create(&mut self, user_va_range: u64) -> Result<(u32, u64), FwError> {
        let handle = self.vms.create(user_va_range, self.config.vm_limits)?;
        let range = self
            .vms
            .by_handle_mut(handle)
            .map(|e| e.vm.layout().user_va_range())?;
        Ok((handle, range))
    }

    /// VM_DESTROY: frees the handle, unmaps the user range and destroys the
    /// VM's tiler heaps. Groups on the VM keep running on what is left.
    pub fn vm_destroy(&mut self, handle: u32) -> Result<(), FwError> {
        let entry = self.vms.by_handle_mut(handle)?;
        entry.heaps.clear(&mut self.kmem, &mut entry.vm);
        if let Some(key) = self.vms.destroy(handle)? {
            self.kmem.vm_gone(key);
        }
        Ok(())
    }

    /// Maps all of `bo` NOEXEC | UNCACHED at `va` in the kernel window of
    /// VM `handle`: memory of a [`KernelMemory`] that maps its memory as a
    /// whole ([`KernelMemory::mapped_at`]).
    /// A BO mapped in any VM is refused ([`FwError::BoMapped`]).
    pub fn vm_map_kernel_memory(
        &mut self,
        handle: u32,
        bo: &Arc<Bo>,
        va: u64,
    ) -> Result<(), FwError> {
        self.vms.key(handle)?;
        if self.vms.iter_mut().any(|(_, e)| e.vm.maps_bo(bo)) {
            return Err(FwError::BoMapped);
        }
        let vm = self.vm_mut(handle)?;
        vm.map_kernel(bo, 0, va, bo.size(), MapFlags::NOEXEC | MapFlags::UNCACHED)?;
        Ok(())
    }

    /// The VM behind a handle.
    pub fn vm(&self, handle: u32) -> Result<&GpuVm, FwError> {
        let key = self.vms.key(handle)?;
        self.vms
            .get(key)
            .map(|e| &e.vm)
            .ok_or(FwError::NoSuchVm(handle))
    }

    /// The VM behind a handle, for binds.
    pub fn vm_mut(&mut self, handle: u32) -> Result<&mut GpuVm, FwError> {
        self.vms.by_handle_mut(handle).map(|e| &mut e.vm)
    }

    /// VM_GET_STATE.
    pub fn vm_state(&self, handle: u32) -> Result<VmState, FwError> {
        self.vm(handle).map(GpuVm::state)
    }

    /// Makes a VM unusable (an asynchronous bind failed at run time) and
    /// fails every group on it.
    pub fn vm_fail<M>(&mut self, mem: &M, now: u64, handle: u32) -> Result<(), FwError>
    where
        M: GuestMemoryBackend + ?Sized,
    {
        self.tick_clock(now);
        let key = self.vms.key(handle)?;
        self.fail_vm(mem, key);
        self.update_schedule(false);
        Ok(())
    }

    /// The guest took the memory of `bo` back (§10 of the protocol):
    /// marks it revoked, removes its user mappings from every VM, and
    /// fails (unusable, groups killed) every VM that has kernel objects in
    /// `kernel`, the guest memory of a revoked kernel-memory BO.
    pub fn revoke_bo<M>(&mut self, mem: &M, now: u64, bo: &Arc<Bo>, kernel: &[GuestRange])
    where
        M: GuestMemoryBackend + ?Sized,
    {
        self.tick_clock(now);
        bo.revoke();
        let mut failed = Vec::new();
        for (key, e) in self.vms.iter_mut() {
            if !kernel.is_empty() && e.vm.kernel_uses(kernel) {
                failed.push(key);
            }
            e.vm.unmap_bo(bo);
        }
        for key in failed {
            self.fail_vm(mem, key);
        }
        self.update_schedule(false);
    }

    fn fail_vm<M>(&mut self, mem: &M, key: VmKey)
    where
        M: GuestMemoryBackend + ?Sized,
    {
        if let Some(e) = self.vms.get_mut(key) {
            if e.vm.is_usable() {
                e.vm.mark_unusable();
                self.events.push(FwEvent::VmUnusable { vm: e.handle });
            }
        }
        let victims: Vec<u32> = self
            .groups
            .iter()
            .filter(|(_, g)| g.vm == key && !g.status.is_dead())
            .map(|(&h, _)| h)
            .collect();
        for h in victims {
            if let Some(g) = self.groups.get_mut(&h) {
                if g.status.fatal_queues == 0 {
                    g.status.fatal_queues = all_queues(g.queues.len());
                }
            }
            self.kill_group(mem, h);
        }
    }

    // ------------------------------------------------------------------
    // Groups
    // ------------------------------------------------------------------

    /// GROUP_CREATE: validates the arguments, allocates the queues' rings
    /// and the group's sync objects in the VM's kernel window, and returns
    /// the handle (the lowest free one in `1..=max_groups`).
    pub fn group_create<M>(&mut self, mem: &M, args: &GroupCreate) -> Result<u32, FwError>
    where
        M: GuestMemoryBackend + ?Sized,
    {
        args.validate(&self.model)?;
        let key = self.vms.key(args.vm)?;
        let handle = (1..=self.config.max_groups)
            .find(|h| !self.groups.contains_key(h))
            .ok_or(FwError::TooManyGroups(self.config.max_groups))?;
        let entry = self.vms.get_mut(key).ok_or(FwError::NoSuchVm(args.vm))?;
        let syncobjs = KernelObject::create(
            &mut self.kmem,
            &mut entry.vm,
            mem,
            SYNCOBJ_SIZE * args.queues.len() as u64,
        )?;
        let limits = CsLimits {
            reg_count: self.model.csif_info.cs_reg_count as usize,
            scoreboards: self.model.csif_info.scoreboard_slot_count as usize,
            ..CsLimits::V10
        };
        let mut queues: Vec<Queue> = Vec::with_capacity(args.queues.len());
        for (i, qa) in args.queues.iter().enumerate() {
            let size = u64::from(qa.ringbuf_size);
            let ring = match KernelObject::create(&mut self.kmem, &mut entry.vm, mem, size) {
                Ok(r) => r,
                Err(e) => {
                    for q in queues {
                        q.ring.release(&mut self.kmem, &mut entry.vm);
                    }
                    syncobjs.release(&mut self.kmem, &mut entry.vm);
                    return Err(e);
                }
            };
            let mut cs = StreamState::new(limits, self.config.timing)
                .unwrap_or_else(|_| StreamState::v10(self.config.timing));
            // A page-aligned ring of a power-of-two size always programs.
            let _ = cs.start_ring(ring.va(), size, 0, 0);
            let syncobj = syncobjs.va() + SYNCOBJ_SIZE * i as u64;
            queues.push(Queue {
                priority: qa.priority,
                ring,
                ring_size: size,
                syncobj,
                wrapper: WrapperTemplate::new(
                    self.model.csif_info.cs_reg_count,
                    self.model.csif_info.scoreboard_slot_count,
                    syncobj,
                ),
                cs,
                insert: 0,
                last_seqno: 0,
                in_flight: Default::default(),
                pending: Default::default(),
                state: RunState::Idle,
                last_done: (0, Ok(())),
                timer: Timer::Off,
            });
        }
        self.vms.acquire(key);
        self.sched.add(handle, args.priority);
        self.groups.insert(
            handle,
            Group {
                vm: key,
                queues,
                syncobjs,
                status: GroupStatus::default(),
            },
        );
        Ok(handle)
    }

    /// GROUP_DESTROY: every job the group still holds completes with
    /// ECANCELED (or the error of its queue if the group had died), and the
    /// kernel objects are freed.
    pub fn group_destroy<M>(&mut self, mem: &M, now: u64, handle: u32) -> Result<(), FwError>
    where
        M: GuestMemoryBackend + ?Sized,
    {
        self.tick_clock(now);
        if !self.groups.contains_key(&handle) {
            return Err(FwError::NoSuchGroup(handle));
        }
        self.terminate(mem, handle);
        self.release_group(handle);
        self.update_schedule(false);
        Ok(())
    }

    /// Frees a terminated group's kernel objects and forgets it.
    fn release_group(&mut self, handle: u32) {
        let Some(g) = self.groups.remove(&handle) else {
            return;
        };
        self.sched.remove(handle);
        if let Some(e) = self.vms.get_mut(g.vm) {
            for q in g.queues {
                q.ring.release(&mut self.kmem, &mut e.vm);
            }
            g.syncobjs.release(&mut self.kmem, &mut e.vm);
        }
        if self.vms.release(g.vm) {
            self.kmem.vm_gone(g.vm);
        }
    }

    /// GROUP_GET_STATE.
    pub fn group_status(&self, handle: u32) -> Result<GroupStatus, FwError> {
        self.groups
            .get(&handle)
            .map(|g| g.status)
            .ok_or(FwError::NoSuchGroup(handle))
    }

    /// Number of queues of a group.
    pub fn queue_count(&self, handle: u32) -> Result<usize, FwError> {
        self.groups
            .get(&handle)
            .map(|g| g.queues.len())
            .ok_or(FwError::NoSuchGroup(handle))
    }

    /// GPU VA of a queue's `panthor_syncobj_64b`.
    pub fn syncobj_va(&self, handle: u32, queue: u32) -> Result<u64, FwError> {
        self.queue(handle, queue).map(|q| q.syncobj)
    }

    /// GPU VA and size of a queue's ring buffer.
    pub fn ring(&self, handle: u32, queue: u32) -> Result<(u64, u64), FwError> {
        self.queue(handle, queue)
            .map(|q| (q.ring.va(), q.ring_size))
    }

    /// The host insert counter and the stream's extract counter of a queue.
    pub fn ring_counters(&self, handle: u32, queue: u32) -> Result<(u64, u64), FwError> {
        self.queue(handle, queue)
            .map(|q| (q.insert, q.cs.extract()))
    }

    /// Jobs of a queue not yet completed (in the ring, then pending).
    pub fn jobs_outstanding(&self, handle: u32, queue: u32) -> Result<usize, FwError> {
        self.queue(handle, queue)
            .map(|q| q.in_flight.len() + q.pending.len())
    }

    fn queue(&self, handle: u32, queue: u32) -> Result<&Queue, FwError> {
        let g = self
            .groups
            .get(&handle)
            .ok_or(FwError::NoSuchGroup(handle))?;
        g.queues.get(queue as usize).ok_or(FwError::NoSuchQueue {
            group: handle,
            queue,
        })
    }

    /// The checks GROUP_SUBMIT makes on one job before anything is queued:
    /// the stream fields, the group and queue, and that the group can still
    /// run (not timed out or faulted, VM usable).
    pub fn check_submit(&self, handle: u32, job: &JobSubmit) -> Result<(), FwError> {
        job.validate()?;
        let g = self
            .groups
            .get(&handle)
            .ok_or(FwError::NoSuchGroup(handle))?;
        check_target(g, &self.vms, handle, job.queue)
    }

    /// Submits a job: checks it, gives it the queue's next sequence number,
    /// writes its wrapper into the ring and rings the doorbell. When the
    /// ring is full the job waits in the queue's pending list (EAGAIN once
    /// that is full too). A job of size 0 gets no sequence number: it
    /// completes with the queue's previous job (at once if that one is done).
    pub fn submit<M>(
        &mut self,
        mem: &M,
        now: u64,
        handle: u32,
        job: &JobSubmit,
    ) -> Result<JobId, FwError>
    where
        M: GuestMemoryBackend + ?Sized,
    {
        job.validate()?;
        let r = self.submit_validated(mem, now, handle, job);
        if r.is_ok() {
            self.update_schedule(false);
        }
        r
    }

    /// [`Firmware::submit`] of a job that passed [`JobSubmit::validate`]
    /// (as [`Firmware::check_submit`] checks it; its group and queue are
    /// checked here, as they may have changed since), without the
    /// scheduling decision that follows it: for a caller submitting
    /// several jobs in a row, which must call [`Firmware::reschedule`]
    /// after the last one. (Running the firmware reschedules first, too.)
    pub(crate) fn submit_validated<M>(
        &mut self,
        mem: &M,
        now: u64,
        handle: u32,
        job: &JobSubmit,
    ) -> Result<JobId, FwError>
    where
        M: GuestMemoryBackend + ?Sized,
    {
        self.tick_clock(now);
        // check_submit's other checks, with the group looked up once.
        let max_pending = self.config.max_pending_jobs;
        let id = self.next_job;
        let Firmware {
            groups,
            vms,
            events,
            ..
        } = self;
        let g = groups
            .get_mut(&handle)
            .ok_or(FwError::NoSuchGroup(handle))?;
        check_target(g, vms, handle, job.queue)?;
        let vm_entry = vms.get_mut(g.vm).ok_or(FwError::GroupDead(handle))?;
        let qi = job.queue as usize;
        let q = g.queues.get_mut(qi).ok_or(FwError::NoSuchQueue {
            group: handle,
            queue: job.queue,
        })?;
        if job.stream_size == 0 {
            if let Some(last) = q.pending.back_mut().or(q.in_flight.back_mut()) {
                if last.followers.len() >= max_pending {
                    return Err(FwError::QueueFull);
                }
                last.followers.push((id, job.tag));
            } else {
                let (seqno, result) = q.last_done;
                events.push(FwEvent::JobDone {
                    job: id,
                    tag: job.tag,
                    group: handle,
                    queue: job.queue,
                    seqno,
                    result,
                });
            }
            self.next_job += 1;
            return Ok(id);
        }
        let direct = q.pending.is_empty() && q.ring_has_room(JOB_BYTES);
        if !direct && q.pending.len() >= max_pending {
            return Err(FwError::QueueFull);
        }
        let mut new = Job {
            id,
            seqno: q.last_seqno + 1,
            submit: *job,
            ring_start: 0,
            ring_end: 0,
            faulted: false,
            followers: Vec::new(),
        };
        if direct {
            push_to_ring(&mut vm_entry.vm, mem, q, &mut new).map_err(FwError::KernelAccess)?;
            q.in_flight.push_back(new);
        } else {
            q.pending.push_back(new);
        }
        q.last_seqno += 1;
        self.next_job += 1;
        Ok(id)
    }

    /// Makes the scheduling decision owed after jobs submitted without it
    /// (`submit_validated`): which groups hold slots, and which
    /// job timers run.
    pub fn reschedule(&mut self) {
        self.update_schedule(false);
    }

    // ------------------------------------------------------------------
    // Tiler heaps
    // ------------------------------------------------------------------

    /// TILER_HEAP_CREATE.
    pub fn heap_create<M>(&mut self, mem: &M, args: &HeapCreate) -> Result<HeapInfo, FwError>
    where
        M: GuestMemoryBackend + ?Sized,
    {
        args.validate()?;
        let max = self.config.max_heaps_per_vm;
        let l2_line = self.model.gpu_info.l2_line_size().map_or(64, u64::from);
        let entry = self.vms.by_handle_mut(args.vm)?;
        let (id, ctx, first) =
            entry
                .heaps
                .create(&mut self.kmem, &mut entry.vm, mem, args, max, l2_line)?;
        Ok(HeapInfo {
            handle: (args.vm << 16) | id,
            tiler_heap_ctx_gpu_va: ctx,
            first_heap_chunk_gpu_va: first,
        })
    }

    /// TILER_HEAP_DESTROY.
    pub fn heap_destroy(&mut self, handle: u32) -> Result<(), FwError> {
        let entry = self
            .vms
            .by_handle_mut(handle >> 16)
            .map_err(|_| FwError::NoSuchHeap)?;
        entry
            .heaps
            .destroy(&mut self.kmem, &mut entry.vm, handle & 0xffff)
    }

    /// The chunk VAs of a heap, list head first.
    pub fn heap_chunks(&mut self, handle: u32) -> Result<Vec<u64>, FwError> {
        let entry = self
            .vms
            .by_handle_mut(handle >> 16)
            .map_err(|_| FwError::NoSuchHeap)?;
        entry
            .heaps
            .chunks(handle & 0xffff)
            .ok_or(FwError::NoSuchHeap)
    }

    /// Grows the heap of VM `vm` whose context is at `heap_ctx_va` by one
    /// chunk; returns the chunk header value of the new chunk. EBUSY when
    /// the heap is at `max_chunks` or more render passes are in flight than
    /// its target.
    pub fn heap_grow<M>(
        &mut self,
        mem: &M,
        vm: u32,
        heap_ctx_va: u64,
        renderpasses_in_flight: u32,
    ) -> Result<u64, FwError>
    where
        M: GuestMemoryBackend + ?Sized,
    {
        let entry = self.vms.by_handle_mut(vm)?;
        entry.heaps.grow(
            &mut self.kmem,
            &mut entry.vm,
            mem,
            heap_ctx_va,
            renderpasses_in_flight,
        )
    }

    /// Answers a TILER_OOM raised by a queue, as Panthor does: grow the
    /// heap and answer the new chunk; answer 0 when the heap may not grow
    /// (EBUSY: the tiler then waits for fragment jobs or calls the stream's
    /// exception handler); any other failure makes the queue fatal.
    pub fn tiler_oom<M>(
        &mut self,
        mem: &M,
        now: u64,
        handle: u32,
        queue: u32,
        heap_ctx_va: u64,
        renderpasses_in_flight: u32,
    ) -> Result<u64, FwError>
    where
        M: GuestMemoryBackend + ?Sized,
    {
        self.tick_clock(now);
        self.queue(handle, queue)?;
        let key = self.groups[&handle].vm;
        let grown = match self.vms.get_mut(key) {
            Some(e) => e.heaps.grow(
                &mut self.kmem,
                &mut e.vm,
                mem,
                heap_ctx_va,
                renderpasses_in_flight,
            ),
            None => Err(FwError::NoSuchHeap),
        };
        match grown {
            Ok(chunk) => Ok(chunk),
            Err(FwError::HeapBusy) => Ok(0),
            Err(_) => {
                if let Some(g) = self.groups.get_mut(&handle) {
                    g.status.fatal_queues |= queue_bit(queue as usize);
                }
                self.kill_group(mem, handle);
                self.update_schedule(false);
                Ok(0)
            }
        }
    }

    // ------------------------------------------------------------------
    // Running
    // ------------------------------------------------------------------

    /// Brings the firmware to time `now` (wakes sleeping queues, fires job
    /// timeouts and the scheduler tick) and runs one slice of every ready
    /// queue of the resident groups, best CSG priority first and, within a
    /// group, best queue priority first.
    pub fn run<M>(&mut self, mem: &M, now: u64)
    where
        M: GuestMemoryBackend + ?Sized,
    {
        self.run_limited(mem, now, self.config.slice_budget, usize::MAX);
    }

    /// [`Firmware::run`] with slices of at most `slice_budget` instructions
    /// and at most `max_slices` of them; queues left ready (preempted, or
    /// not reached) make [`Firmware::needs_run`] true. A short pass for a
    /// caller that must not be held long.
    pub fn run_limited<M>(&mut self, mem: &M, now: u64, slice_budget: u64, max_slices: usize)
    where
        M: GuestMemoryBackend + ?Sized,
    {
        self.advance(mem, now);
        let mut order: Vec<(u32, usize)> = Vec::new();
        for (_, handle, _) in self.sched.resident() {
            if let Some(g) = self.groups.get(&handle) {
                for qi in g.queue_order() {
                    if g.queues[qi].state == RunState::Ready {
                        order.push((handle, qi));
                    }
                }
            }
        }
        for (handle, qi) in order.into_iter().take(max_slices) {
            let ready = self.sched.slot_of(handle).is_some()
                && self
                    .groups
                    .get(&handle)
                    .is_some_and(|g| g.queues[qi].state == RunState::Ready);
            if ready {
                self.run_slice(mem, handle, qi, slice_budget);
            }
        }
        if self.sync_dirty {
            self.reevaluate(mem);
        }
        self.update_schedule(false);
    }

    /// Whether a resident queue is ready to run now ([`Firmware::run`]
    /// should be called again soon).
    pub fn needs_run(&self) -> bool {
        self.sched.resident().iter().any(|&(_, h, _)| {
            self.groups
                .get(&h)
                .is_some_and(|g| g.queues.iter().any(|q| q.state == RunState::Ready))
        })
    }

    /// The earliest time something is due: a queue's scoreboard or
    /// deferred operation, a job timeout, or the scheduler tick.
    pub fn next_wakeup_ns(&self) -> Option<u64> {
        let mut next = self.sched.next_tick();
        let mut consider = |t: u64| next = Some(next.map_or(t, |n: u64| n.min(t)));
        for g in self.groups.values() {
            for q in &g.queues {
                if let RunState::Sleep(t) = q.state {
                    consider(t);
                }
                if let Timer::Running(t) = q.timer {
                    consider(t);
                }
            }
        }
        next
    }

    /// The host learned that guest memory may have changed (a CPU write to
    /// a sync object): parked queues re-check their waits.
    pub fn memory_changed<M>(&mut self, mem: &M, now: u64)
    where
        M: GuestMemoryBackend + ?Sized,
    {
        self.tick_clock(now);
        self.reevaluate(mem);
        self.update_schedule(false);
    }

    /// A GPU reset requested by the host: every resident group is lost.
    /// Groups that were not at fault become TIMEDOUT | INNOCENT (their jobs
    /// fail with ETIMEDOUT); groups without a slot are untouched.
    ///
    /// The emulated firmware always manages to suspend or terminate a
    /// group, so it never needs a reset on its own: this is the only way a
    /// group becomes INNOCENT.
    pub fn reset<M>(&mut self, mem: &M, now: u64)
    where
        M: GuestMemoryBackend + ?Sized,
    {
        self.tick_clock(now);
        for (_, h, _) in self.sched.resident() {
            if let Some(g) = self.groups.get_mut(&h) {
                if !g.status.is_dead() {
                    g.status.timedout = true;
                    g.status.innocent = true;
                    self.kill_group(mem, h);
                }
            }
        }
        self.update_schedule(false);
    }

    /// Tears everything down: every job completes with ECANCELED (or its
    /// group's error), every group, heap and VM is freed and all kernel
    /// memory goes back to the allocator.
    pub fn shutdown<M>(&mut self, mem: &M)
    where
        M: GuestMemoryBackend + ?Sized,
    {
        let handles: Vec<u32> = self.groups.keys().copied().collect();
        for h in handles {
            self.terminate(mem, h);
            self.release_group(h);
        }
        for key in self.vms.keys() {
            if let Some(e) = self.vms.get_mut(key) {
                e.heaps.clear(&mut self.kmem, &mut e.vm);
            }
            self.kmem.vm_gone(key);
        }
        self.vms = Vms::new(self.config.max_vms, self.config.max_mapped_bytes);
        self.sched = Scheduler::new(self.model.csif_info.csg_slot_count as usize);
    }

    /// Resident groups as `(slot, group, csg_priority)`, highest CSG
    /// priority first.
    pub fn resident_groups(&self) -> Vec<(usize, u32, u8)> {
        self.sched.resident()
    }

    /// Advances to `now`: sleeping queues whose time came become ready, job
    /// timeouts fire, the tick runs if due.
    fn advance<M>(&mut self, mem: &M, now: u64)
    where
        M: GuestMemoryBackend + ?Sized,
    {
        self.tick_clock(now);
        let now = self.now;
        let mut expired = Vec::new();
        for (&h, g) in &mut self.groups {
            for q in &mut g.queues {
                if matches!(q.state, RunState::Sleep(t) if t <= now) {
                    q.state = RunState::Ready;
                }
            }
            let late = g
                .queues
                .iter()
                .any(|q| matches!(q.timer, Timer::Running(t) if t <= now));
            if late && !g.status.is_dead() {
                expired.push(h);
            }
        }
        for h in expired {
            if let Some(g) = self.groups.get_mut(&h) {
                g.status.timedout = true;
            }
            self.kill_group(mem, h);
        }
        if self.sync_dirty {
            self.reevaluate(mem);
        }
        let tick = self.sched.next_tick().is_some_and(|t| t <= now);
        self.update_schedule(tick);
    }

    /// One slice of queue `qi` of group `handle`, and what follows from how
    /// it stopped.
    fn run_slice<M>(&mut self, mem: &M, handle: u32, qi: usize, budget: u64)
    where
        M: GuestMemoryBackend + ?Sized,
    {
        let now = self.now;
        let frequency = self.model.timestamp_frequency;
        let Firmware {
            groups,
            vms,
            writes,
            events,
            fault_log,
            windows,
            ..
        } = self;
        let Some(g) = groups.get_mut(&handle) else {
            return;
        };
        let key = g.vm;
        let Some(entry) = vms.get_mut(key) else {
            return;
        };
        let Some(q) = g.queues.get_mut(qi) else {
            return;
        };
        writes.clear();
        let mut env = SliceEnv {
            vm: &mut entry.vm,
            mem,
            now,
            timestamp_frequency: frequency,
            writes,
            overflow: false,
        };
        let stop = q.cs.run_lent(&mut env, budget, windows);
        let overflow = env.overflow;
        report_fault(fault_log, &mut entry.vm, mem, handle, qi, &stop);
        let deadline = q.cs.next_deadline_ns().filter(|&t| t > now);
        let queue = qi as u32;
        let mut fatal = false;
        let mut mmu = false;
        q.state = match stop {
            Stop::Done => deadline.map_or(RunState::Idle, RunState::Sleep),
            Stop::Preempted => RunState::Ready,
            Stop::Blocked(Block::Scoreboard { until_ns, .. }) => {
                let t = deadline.map_or(until_ns, |d| d.min(until_ns));
                if t > now {
                    RunState::Sleep(t)
                } else {
                    RunState::Ready
                }
            }
            Stop::Blocked(Block::SyncWait {
                addr,
                value,
                cond,
                is_64,
            }) => match deadline {
                // A deferred operation of the stream itself is due first.
                Some(t) => RunState::Sleep(t),
                None => RunState::Parked {
                    addr,
                    value,
                    cond,
                    is_64,
                },
            },
            // PROGRESS_WAIT never blocks: the firmware does not model the
            // progress counters, so the interpreter treats them as passed.
            Stop::Blocked(Block::Progress { .. }) => RunState::Ready,
            Stop::Fault(fault) if !fault.fatal => {
                let extract = q.cs.extract();
                if let Some(job) = q
                    .in_flight
                    .iter_mut()
                    .find(|j| j.ring_start <= extract && extract < j.ring_end)
                {
                    job.faulted = true;
                }
                events.push(FwEvent::CsFault {
                    group: handle,
                    queue,
                    fault,
                });
                RunState::Ready
            }
            Stop::Fault(fault) => {
                events.push(FwEvent::CsFatal {
                    group: handle,
                    queue,
                    fault,
                });
                fatal = true;
                RunState::Halted
            }
            Stop::MmuFault { fault, ip } => {
                events.push(FwEvent::MmuFault {
                    group: handle,
                    queue,
                    fault,
                    ip,
                });
                mmu = true;
                RunState::Halted
            }
        };
        if fatal || mmu {
            g.status.fatal_queues |= queue_bit(qi);
        }
        let writes = std::mem::take(&mut self.writes);
        self.process_writes(mem, key, &writes, overflow);
        self.writes = writes;
        self.promote_pending(mem, handle, qi);
        if fatal || mmu {
            self.kill_group(mem, handle);
        }
        if mmu {
            self.fail_vm(mem, key);
        }
    }

    /// Completion checks for the sync writes of a slice on VM `key`.
    fn process_writes<M>(&mut self, mem: &M, key: VmKey, writes: &[SyncWrite], overflow: bool)
    where
        M: GuestMemoryBackend + ?Sized,
    {
        if writes.is_empty() && !overflow {
            return;
        }
        self.sync_dirty = true;
        for w in writes {
            let owner = self.groups.iter().find_map(|(&h, g)| {
                let base = g.syncobjs.va();
                let off = w.addr.checked_sub(base)?;
                let qi = off / SYNCOBJ_SIZE;
                (g.vm == key && off % SYNCOBJ_SIZE == 0 && (qi as usize) < g.queues.len())
                    .then_some((h, qi as usize))
            });
            if let Some((h, qi)) = owner {
                self.check_completion(mem, h, qi, w.seen);
            }
        }
        if overflow {
            let all: Vec<(u32, usize)> = self
                .groups
                .iter()
                .filter(|(_, g)| g.vm == key)
                .flat_map(|(&h, g)| (0..g.queues.len()).map(move |qi| (h, qi)))
                .collect();
            for (h, qi) in all {
                self.check_completion(mem, h, qi, None);
            }
        }
    }

    /// Completes the jobs of a queue whose sequence number the sync object
    /// has reached. `seen` is the (seqno, status) observed right after the
    /// write; `None` reads the object now.
    fn check_completion<M>(&mut self, mem: &M, handle: u32, qi: usize, seen: Option<(u64, u32)>)
    where
        M: GuestMemoryBackend + ?Sized,
    {
        let Firmware {
            groups,
            vms,
            events,
            ..
        } = self;
        let Some(g) = groups.get_mut(&handle) else {
            return;
        };
        let Some(q) = g.queues.get_mut(qi) else {
            return;
        };
        let observed = match seen {
            Some(s) => Some(s),
            None => vms.get_mut(g.vm).and_then(|e| {
                let v = e.vm.atomic_load_u64(mem, q.syncobj).ok()?;
                let s = e.vm.atomic_load_u32(mem, q.syncobj + 8).ok()?;
                Some((v, s))
            }),
        };
        let Some((seqno, status)) = observed else {
            return;
        };
        let mut any = false;
        while q.in_flight.front().is_some_and(|j| j.seqno <= seqno) {
            let Some(job) = q.in_flight.pop_front() else {
                break;
            };
            let result = if job.faulted || (job.seqno == seqno && status != 0) {
                Err(libc::EINVAL)
            } else {
                Ok(())
            };
            q.last_done = (job.seqno, result);
            finish_job(events, handle, qi, job, result);
            any = true;
        }
        if any {
            // Restarted with a full period by `sync_timers`.
            q.timer = Timer::Off;
        }
    }

    /// Moves pending jobs of a queue into its ring while there is room.
    fn promote_pending<M>(&mut self, mem: &M, handle: u32, qi: usize)
    where
        M: GuestMemoryBackend + ?Sized,
    {
        let Firmware { groups, vms, .. } = self;
        let Some(g) = groups.get_mut(&handle) else {
            return;
        };
        let Some(q) = g.queues.get_mut(qi) else {
            return;
        };
        let Some(e) = vms.get_mut(g.vm) else {
            return;
        };
        let mut failed = false;
        while !q.pending.is_empty() && q.ring_has_room(JOB_BYTES) {
            let Some(mut job) = q.pending.pop_front() else {
                break;
            };
            match push_to_ring(&mut e.vm, mem, q, &mut job) {
                Ok(()) => q.in_flight.push_back(job),
                Err(_) => {
                    q.pending.push_front(job);
                    failed = true;
                    break;
                }
            }
        }
        if failed {
            g.status.fatal_queues |= queue_bit(qi);
            self.kill_group(mem, handle);
        }
    }

    /// Re-checks every parked queue's wait; those satisfied become ready.
    fn reevaluate<M>(&mut self, mem: &M)
    where
        M: GuestMemoryBackend + ?Sized,
    {
        self.sync_dirty = false;
        let Firmware { groups, vms, .. } = self;
        for g in groups.values_mut() {
            if g.status.is_dead() {
                continue;
            }
            let Some(e) = vms.get_mut(g.vm) else {
                continue;
            };
            for q in &mut g.queues {
                if let RunState::Parked {
                    addr,
                    value,
                    cond,
                    is_64,
                } = q.state
                {
                    let current = if is_64 {
                        e.vm.atomic_load_u64(mem, addr)
                    } else {
                        e.vm.atomic_load_u32(mem, addr).map(u64::from)
                    };
                    // A read that faults lets the stream raise the fault.
                    if current.map_or(true, |v| cond.eval(v, value)) {
                        q.state = RunState::Ready;
                    }
                }
            }
        }
    }

    /// Kills a group whose status says why (timed out, fatal queues).
    fn kill_group<M>(&mut self, mem: &M, handle: u32)
    where
        M: GuestMemoryBackend + ?Sized,
    {
        self.terminate(mem, handle);
        if let Some(g) = self.groups.get(&handle) {
            self.events.push(FwEvent::GroupStateChanged {
                group: handle,
                status: g.status,
            });
        }
    }

    /// Completes every job of a group with its queue's error and publishes
    /// that on the sync objects (status all ones, seqno the last one given
    /// out), as Panthor's group termination does; the queues halt.
    fn terminate<M>(&mut self, mem: &M, handle: u32)
    where
        M: GuestMemoryBackend + ?Sized,
    {
        let Firmware {
            groups,
            vms,
            events,
            ..
        } = self;
        let Some(g) = groups.get_mut(&handle) else {
            return;
        };
        let mut vm = vms.get_mut(g.vm).map(|e| &mut e.vm);
        for (qi, q) in g.queues.iter_mut().enumerate() {
            let err = if g.status.fatal_queues & queue_bit(qi) != 0 {
                libc::EINVAL
            } else if g.status.timedout {
                libc::ETIMEDOUT
            } else {
                libc::ECANCELED
            };
            let jobs: Vec<Job> = q.in_flight.drain(..).chain(q.pending.drain(..)).collect();
            for job in jobs {
                finish_job(events, handle, qi, job, Err(err));
            }
            q.last_done = (q.last_seqno, Err(err));
            q.state = RunState::Halted;
            q.timer = Timer::Off;
            if let Some(vm) = vm.as_deref_mut() {
                let _ = vm.atomic_store_u32(mem, q.syncobj + 8, u32::MAX);
                let _ = vm.atomic_store_u64(mem, q.syncobj, q.last_seqno);
            }
        }
        self.sync_dirty = true;
    }

    /// A scheduling pass, then the job timers follow the slot changes.
    fn update_schedule(&mut self, tick: bool) {
        let groups = &self.groups;
        let runnable =
            |h: u32| groups.get(&h).map(Group::sched_state) == Some(SchedState::Runnable);
        self.sched
            .reschedule(self.now, self.config.tick_ns, tick, &runnable);
        self.sync_timers();
    }

    /// Job timers run while the group holds a slot or waits on its own sync
    /// waits, and are suspended while it is runnable without a slot.
    fn sync_timers(&mut self) {
        let now = self.now;
        let period = self.config.job_timeout_ns;
        for (&h, g) in &mut self.groups {
            let state = g.sched_state();
            let should_run = self.sched.slot_of(h).is_some() || state == SchedState::Waiting;
            for q in &mut g.queues {
                q.timer = if !q.busy() || state == SchedState::Dead {
                    Timer::Off
                } else {
                    match (q.timer, should_run) {
                        (Timer::Off, true) => Timer::Running(now.saturating_add(period)),
                        (Timer::Off, false) => Timer::Suspended(period),
                        (Timer::Running(t), false) => Timer::Suspended(t.saturating_sub(now)),
                        (Timer::Suspended(left), true) => Timer::Running(now.saturating_add(left)),
                        (t, _) => t,
                    }
                };
            }
        }
    }
}

/// The checks of a submit to `queue` of group `handle` (`g`) that need the
/// firmware's state: the queue exists, and the group can still run (not
/// timed out or faulted, its VM usable).
fn check_target(g: &Group, vms: &Vms, handle: u32, queue: u32) -> Result<(), FwError> {
    if g.queues.get(queue as usize).is_none() {
        return Err(FwError::NoSuchQueue {
            group: handle,
            queue,
        });
    }
    let vm_ok = vms.get(g.vm).is_some_and(|e| e.vm.is_usable());
    if g.status.is_dead() || !vm_ok {
        return Err(FwError::GroupDead(handle));
    }
    Ok(())
}

/// The `fatal_queues` bit of queue `qi` (group creation keeps `qi < 32`).
fn queue_bit(qi: usize) -> u32 {
    u32::try_from(qi)
        .ok()
        .and_then(|q| 1u32.checked_shl(q))
        .unwrap_or(0)
}

/// A mask with one bit per queue.
fn all_queues(n: usize) -> u32 {
    if n >= 32 {
        u32::MAX
    } else {
        (1u32 << n) - 1
    }
}

/// Writes a job's wrapper at the queue's insert point, advances insert and
/// rings the doorbell (the queue becomes ready if it was idle).
fn push_to_ring<M>(vm: &mut GpuVm, mem: &M, q: &mut Queue, job: &mut Job) -> Result<(), Fault>
where
    M: GuestMemoryBackend + ?Sized,
{
    let words = q.wrapper.job(
        job.submit.latest_flush,
        job.submit.stream_addr,
        job.submit.stream_size,
    );
    write_ring(vm, mem, q.ring.va(), q.ring_size, q.insert, &words)?;
    q.cs.seed_ring(q.insert, &words);
    job.ring_start = q.insert;
    q.insert += JOB_BYTES;
    job.ring_end = q.insert;
    // Room was checked, so the stream accepts the new insert counter.
    let _ = q.cs.set_insert(q.insert);
    if q.state == RunState::Idle {
        q.state = RunState::Ready;
    }
    Ok(())
}

/// Logs a fault a slice ended with, with the faulting instruction
/// disassembled (read back through the VM; an unreadable one says so).
fn report_fault<M>(
    limiter: &mut LogLimiter,
    vm: &mut GpuVm,
    mem: &M,
    group: u32,
    queue: usize,
    stop: &Stop,
) where
    M: GuestMemoryBackend + ?Sized,
{
    let (what, code, ip, va) = match stop {
        Stop::Fault(f) if f.fatal => ("CS_FATAL", f.exception_code, f.ip, None),
        Stop::Fault(f) => ("CS_FAULT", f.exception_code, f.ip, None),
        Stop::MmuFault { fault, ip } => ("MMU fault", fault.exception_code, *ip, Some(fault.va)),
        _ => return,
    };
    let instr = match vm.read_u64(mem, ip) {
        Ok(word) => disassemble(&[word], ip),
        Err(_) => format!("{ip:#x}: <instruction not readable>"),
    };
    let at = va.map(|v| format!(" on VA {v:#x}")).unwrap_or_default();
    guest_warn!(
        limiter,
        "group {group} queue {queue}: {what} {code:#04x}{at} at {}",
        instr.trim_end()
    );
}
