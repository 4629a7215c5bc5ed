//! The engine thread's state and its event loop subscriber: commands in,
//! firmware runs, syncobj bookkeeping, events out.
//!
//! Wake-ups come from two file descriptors and nothing else:
//! - the doorbell eventfd, written by the [`Engine`](super::Engine) handle
//!   after queuing a command, and by the thread itself when the firmware
//!   still has ready queues after a run (so commands and execution take
//!   turns);
//! - a timerfd armed for the next wake-up: the firmware's (a scoreboard
//!   deadline, a job timeout, the scheduler tick) or the deadline of a
//!   host wait with a timeout.

use std::collections::{BTreeSet, VecDeque};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use vm_memory::{GuestAddressSpace, GuestMemoryBackend};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::timerfd::TimerFd;

use super::binds::{BindJob, BindQueues};
use super::command::{BindMode, BindRequest, Command, EngineError, Mailbox, QueueSubmit, Submits};
use super::deps::{check_batch, commit};
use super::event::EngineEvent;
use super::jobs::{HeldJob, JobQueues, QueueKey};
use super::EngineConfig;
use crate::gpu::firmware::{Firmware, FwError, FwEvent, KernelMemory, MAX_QUEUES};
use crate::gpu::mmu::{BindOp, GpuVm};
use crate::gpu::sync::{FenceResult, Released, SignalToken, SyncTable, WaitOutcome};
use crate::idmap::IdMap;
use crate::slab::Slab;

/// Instructions per slice of a pass run inline (`InlinePass`): plenty
/// for a job's ring wrapper and a short stream, little enough that a
/// guest's long streams hold the caller (the transport's worker, shared by
/// every context) for at most 16 x 4096 instructions (about 0.1 ms at the
/// interpreter's speed), not for full slices.
pub const INLINE_SLICE_BUDGET: u64 = 4_096;
/// Slices of a pass run inline.
pub const INLINE_SLICES: usize = 16;

/// Largest firmware-event buffer kept from one pass to the next.
const KEPT_FW_EVENTS: usize = 1024;

/// Where events go: each as it happens, or a pass's together at its end.
pub(crate) enum Sink {
    Each(Box<dyn Fn(EngineEvent) + Send>),
    Batch(super::EventsSink),
}

/// Largest event buffer kept from one pass to the next.
const KEPT_EVENTS: usize = 1024;

/// What a waiter recorded in the syncobj table unblocks.
enum Target {
    /// A held job (its engine id).
    Job(u64),
    /// A queued bind op (its engine id).
    Bind(u64),
    /// A host wait, reported with this `user_data`, and its deadline.
    Host(u64, Option<u64>),
}

/// A job the firmware runs.
struct Running {
    key: QueueKey,
    user_data: u64,
    signals: Vec<SignalToken>,
}

/// The engine thread's state.
pub(crate) struct Worker<A: GuestAddressSpace, K: KernelMemory> {
    mem: A,
    fw: Firmware<K>,
    syncs: SyncTable<u64>,
    config: EngineConfig,
    mailbox: Arc<Mailbox>,
    /// Commands taken from the mailbox and not handled yet.
    inbox: VecDeque<Command>,
    doorbell: EventFd,
    /// Set by the handle when it rings the doorbell; cleared before the
    /// commands are drained.
    rung: Arc<AtomicBool>,
    timer: TimerFd,
    /// The deadline the timer is armed for.
    armed: Option<u64>,
    start: Instant,
    sink: Sink,
    /// The events of the current pass, for a batch sink at its end.
    out: Vec<EngineEvent>,
    /// Engine ids (jobs, bind ops, VM_BINDs) and waiter ids.
    next_id: u64,
    waiters: IdMap<u64, Target>,
    /// Deadlines of host waits: (engine time in ns, waiter id).
    deadlines: BTreeSet<(u64, u64)>,
    jobs: JobQueues,
    running: Slab<Running>,
    /// The firmware's events being handled, kept for the next call.
    fw_events: Vec<FwEvent>,
    binds: BindQueues,
    /// Released waiters still to act on.
    work: VecDeque<Released<u64>>,
    dirty_queues: BTreeSet<QueueKey>,
    dirty_vms: BTreeSet<u32>,
    /// Jobs went straight to the firmware since its last reschedule.
    reschedule_due: bool,
    /// The memory snapshot and time a run of posted submits hands jobs to
    /// the firmware with (taken at the first, dropped after the last).
    posting: Option<(A::T, u64)>,
    stopping: bool,
    /// Torn down; the thread leaves its loop.
    pub stopped: bool,
}

impl<A, K> Worker<A, K>
where
    A: GuestAddressSpace,
    A::M: GuestMemoryBackend,
    K: KernelMemory,
{
    pub fn new(
        mem: A,
        fw: Firmware<K>,
        config: EngineConfig,
        mailbox: Arc<Mailbox>,
        (doorbell, rung): (EventFd, Arc<AtomicBool>),
        timer: TimerFd,
        sink: Sink,
    ) -> Self {
        Self {
            mem,
            fw,
            syncs: SyncTable::new(config.sync_limits),
            config,
            mailbox,
            inbox: VecDeque::new(),
            doorbell,
            rung,
            timer,
            armed: None,
            start: Instant::now(),
            sink,
            out: Vec::new(),
            next_id: 1,
            waiters: IdMap::default(),
            deadlines: BTreeSet::new(),
            jobs: JobQueues::default(),
            running: Slab::default(),
            fw_events: Vec::new(),
            binds: BindQueues::default(),
            work: VecDeque::new(),
            dirty_queues: BTreeSet::new(),
            dirty_vms: BTreeSet::new(),
            reschedule_due: false,
            posting: None,
            stopping: false,
            stopped: false,
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    fn emit(&mut self, event: EngineEvent) {
        match &self.sink {
            Sink::Each(f) => f(event),
            Sink::Batch(_) => self.out.push(event),
        }
    }

    /// Ends a service pass: hands its events to a batch sink, in order.
    pub fn end_pass(&mut self) {
        if self.out.is_empty() {
            return;
        }
        let mut out = std::mem::take(&mut self.out);
        if let Sink::Batch(f) = &self.sink {
            f(&mut out);
        }
        out.clear();
        if out.capacity() <= KEPT_EVENTS {
            self.out = out;
        }
    }

    /// Handles every queued command, runs the firmware once and re-arms
    /// the timer.
    pub fn service(&mut self) {
        self.service_with(None);
    }

    /// [`Worker::service`] on a thread that is not the engine's: the
    /// firmware runs at most [`INLINE_SLICES`] slices of
    /// [`INLINE_SLICE_BUDGET`] instructions, and whatever is left wakes
    /// the engine thread.
    pub fn service_inline(&mut self) {
        self.service_with(Some((INLINE_SLICE_BUDGET, INLINE_SLICES)));
    }

    fn service_with(&mut self, limit: Option<(u64, usize)>) {
        // Commands queued from here on ring the doorbell again.
        self.rung.store(false, Ordering::Release);
        loop {
            if self.inbox.is_empty() {
                self.mailbox.take_all(&mut self.inbox);
            }
            let Some(cmd) = self.inbox.pop_front() else {
                break;
            };
            // Posted submits hand their jobs over without a pump in
            // between (the firmware reschedules once, at the next pump);
            // every other command sees them there.
            if !matches!(cmd, Command::GroupSubmitPosted { .. }) {
                self.posting = None;
                self.pump();
            }
            self.handle(cmd);
            if self.stopped {
                return;
            }
        }
        self.posting = None;
        self.pump();
        self.expire_waits();
        let mem = self.mem.memory();
        let now = self.now();
        match limit {
            Some((budget, slices)) => self.fw.run_limited(&*mem, now, budget, slices),
            None => self.fw.run(&*mem, now),
        }
        self.pump();
        if self.fw.needs_run() {
            // Come back after whatever else is pending.
            let _ = self.doorbell.write(1);
        }
        self.rearm();
    }

    /// Arms the timer for the firmware's next wake-up.
    fn rearm(&mut self) {
        let fw = self.fw.next_wakeup_ns();
        let wait = self.deadlines.first().map(|&(t, _)| t);
        let want = match (fw, wait) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if want == self.armed {
            return;
        }
        self.armed = want;
        if let Some(t) = want {
            let delay = t.saturating_sub(self.now()).max(1_000);
            let _ = self.timer.reset(Duration::from_nanos(delay), None);
        }
    }

    // ------------------------------------------------------------------
    // Commands
    // ------------------------------------------------------------------

    fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::VmCreate {
                user_va_range,
                reply,
            } => {
                let _ = reply.send(self.fw.vm_create(user_va_range).map_err(Into::into));
            }
            Command::VmDestroy { vm, reply } => {
                let r = self.vm_destroy(vm);
                let _ = reply.send(r);
            }
            Command::VmState { vm, reply } => {
                let _ = reply.send(self.fw.vm_state(vm).map_err(Into::into));
            }
            Command::VmKey { vm, reply } => {
                let _ = reply.send(self.fw.vm(vm).map(GpuVm::key).map_err(Into::into));
            }
            Command::MapKernelMemory { vm, bo, va, reply } => {
                // A BO that a queued asynchronous MAP is about to map is as
                // taken as one already mapped.
                let r = if self.binds.maps_bo(&bo) {
                    Err(FwError::BoMapped)
                } else {
                    self.fw.vm_map_kernel_memory(vm, &bo, va)
                };
                let _ = reply.send(r.map_err(Into::into));
            }
            Command::VmBind {
                vm,
                ops,
                mode,
                reply,
            } => {
                let r = self.vm_bind(vm, ops, mode);
                let _ = reply.send(r);
            }
            Command::GroupCreate { args, reply } => {
                let mem = self.mem.memory();
                let _ = reply.send(self.fw.group_create(&*mem, &args).map_err(Into::into));
            }
            Command::GroupDestroy { group, reply } => {
                let r = self.group_destroy(group);
                let _ = reply.send(r);
            }
            Command::GroupState { group, reply } => {
                let _ = reply.send(self.fw.group_status(group).map_err(Into::into));
            }
            Command::GroupSubmit { group, jobs, reply } => {
                let r = self.group_submit(group, jobs);
                self.pump();
                let _ = reply.send(r);
            }
            Command::GroupSubmitPosted { group, jobs } => {
                let user_data = jobs.as_slice().first().map_or(0, |j| j.user_data);
                if let Err(error) = self.group_submit(group, jobs) {
                    self.emit(EngineEvent::SubmitRejected {
                        user_data,
                        group,
                        error,
                    });
                }
            }
            Command::HeapCreate { args, reply } => {
                let mem = self.mem.memory();
                let _ = reply.send(self.fw.heap_create(&*mem, &args).map_err(Into::into));
            }
            Command::HeapDestroy { handle, reply } => {
                let _ = reply.send(self.fw.heap_destroy(handle).map_err(Into::into));
            }
            Command::SyncCreate {
                kind,
                signaled,
                reply,
            } => {
                let _ = reply.send(self.syncs.create(kind, signaled).map_err(Into::into));
            }
            Command::SyncDestroy { handle, reply } => {
                let r = self.syncs.destroy(handle).map(|released| {
                    self.work.extend(released);
                });
                self.pump();
                let _ = reply.send(r.map_err(Into::into));
            }
            Command::SyncSignal {
                handle,
                point,
                reply,
            } => {
                let r = self
                    .syncs
                    .signal(handle, point, Ok(()))
                    .map(|released| self.work.extend(released));
                self.pump();
                let _ = reply.send(r.map_err(Into::into));
            }
            Command::SyncReset { handle, reply } => {
                let _ = reply.send(self.syncs.reset(handle).map_err(Into::into));
            }
            Command::SyncQuery { handle, reply } => {
                let _ = reply.send(self.syncs.query(handle).map_err(Into::into));
            }
            Command::SyncWait {
                handle,
                point,
                flags,
                user_data,
                timeout_ns,
                reply,
            } => {
                let id = self.id();
                let r = match self.syncs.wait(handle, point, flags, id) {
                    Ok(WaitOutcome::Ready(done)) => {
                        self.emit(EngineEvent::SyncWaitDone {
                            user_data,
                            result: done.result,
                        });
                        Ok(())
                    }
                    Ok(WaitOutcome::Queued) => {
                        let deadline = timeout_ns.map(|t| self.now().saturating_add(t.max(1)));
                        if let Some(d) = deadline {
                            self.deadlines.insert((d, id));
                        }
                        self.waiters.insert(id, Target::Host(user_data, deadline));
                        Ok(())
                    }
                    Err(e) => Err(e.into()),
                };
                let _ = reply.send(r);
            }
            Command::MemoryChanged { reply } => {
                let mem = self.mem.memory();
                let now = self.now();
                self.fw.memory_changed(&*mem, now);
                self.pump();
                let _ = reply.send(Ok(()));
            }
            Command::RevokeBo { bo, kernel, reply } => {
                let mem = self.mem.memory();
                let now = self.now();
                self.fw.revoke_bo(&*mem, now, &bo, &kernel);
                self.pump();
                let _ = reply.send(Ok(()));
            }
            Command::Shutdown { reply } => {
                self.teardown();
                let _ = reply.send(Ok(()));
            }
        }
    }

    /// Checks a GROUP_SUBMIT and hands its jobs on: one that waits for
    /// nothing and has nothing of its queue held ahead of it goes to the
    /// firmware at once, the others to their queue's FIFO, from which the
    /// next [`Worker::pump`] hands the ready ones on.
    fn group_submit(&mut self, group: u32, jobs: Submits) -> Result<(), EngineError> {
        for j in jobs.as_slice() {
            self.fw.check_submit(group, &j.job)?;
        }
        check_batch(&self.syncs, jobs.as_slice().iter().map(|j| &j.syncs[..]))?;
        if let [j] = jobs.as_slice() {
            // One job, the usual case: its queue's count is all to check.
            if self.jobs.outstanding((group, j.job.queue)) >= self.config.max_jobs_per_queue {
                return Err(EngineError::Busy);
            }
        } else {
            self.check_room(group, &jobs)?;
        }
        match jobs {
            Submits::One(j) => self.queue_job(group, j),
            Submits::Many(jobs) => {
                for j in jobs {
                    self.queue_job(group, j);
                }
            }
        }
        Ok(())
    }

    /// A checked job of a GROUP_SUBMIT: its syncs committed, then to the
    /// firmware if it waits for nothing and nothing of its queue is held,
    /// else into its queue's FIFO.
    fn queue_job(&mut self, group: u32, j: QueueSubmit) {
        let id = self.id();
        let c = commit(&mut self.syncs, &j.syncs, &mut self.next_id);
        for &w in &c.queued {
            self.waiters.insert(w, Target::Job(id));
        }
        let key = (group, j.job.queue);
        let held = HeldJob {
            job: j.job,
            user_data: j.user_data,
            waits: c.queued.len(),
            signals: c.signals,
        };
        if held.waits == 0 && self.jobs.start_if_idle(key) {
            let (mem, now) = match self.posting.take() {
                Some(p) => p,
                None => (self.mem.memory(), self.now()),
            };
            self.reschedule_due |= self.hand_to_firmware(&*mem, now, key, held);
            self.posting = Some((mem, now));
            self.collect_fw_events();
        } else {
            self.jobs.push(key, id, held);
            self.dirty_queues.insert(key);
        }
    }

    /// Whether every queue of `group` has room for its jobs of `jobs`.
    fn check_room(&self, group: u32, jobs: &Submits) -> Result<(), EngineError> {
        // Jobs per queue, counted on the stack: a group has at most
        // MAX_QUEUES queues, and check_submit refused any other index.
        let mut added = [0usize; MAX_QUEUES];
        let mut queues = 0;
        for j in jobs.as_slice() {
            match added.get_mut(j.job.queue as usize) {
                Some(n) => *n += 1,
                None => {
                    return Err(FwError::NoSuchQueue {
                        group,
                        queue: j.job.queue,
                    }
                    .into())
                }
            }
            queues = queues.max(j.job.queue as usize + 1);
        }
        for (queue, &n) in (0u32..).zip(&added[..queues]).filter(|(_, &n)| n > 0) {
            if self.jobs.outstanding((group, queue)) + n > self.config.max_jobs_per_queue {
                return Err(EngineError::Busy);
            }
        }
        Ok(())
    }

    fn group_destroy(&mut self, group: u32) -> Result<(), EngineError> {
        // Jobs in the firmware complete first, then the held ones behind
        // them, so each queue's events stay in submission order.
        let mem = self.mem.memory();
        let now = self.now();
        self.fw.group_destroy(&*mem, now, group)?;
        self.collect_fw_events();
        self.cancel_held(Some(group));
        self.pump();
        Ok(())
    }

    fn vm_bind(
        &mut self,
        vm: u32,
        ops: Vec<BindRequest>,
        mode: BindMode,
    ) -> Result<(), EngineError> {
        let user_data = match mode {
            BindMode::Sync => {
                if ops.iter().any(|o| !o.syncs.is_empty()) {
                    return Err(EngineError::SyncOp("syncs on a synchronous VM_BIND"));
                }
                let ops: Vec<BindOp> = ops.into_iter().map(|o| o.op).collect();
                self.fw.vm_mut(vm)?.bind(&ops)?;
                return Ok(());
            }
            BindMode::Async { user_data } => user_data,
        };
        let gpu_vm: &GpuVm = self.fw.vm(vm)?;
        if self.binds.len(vm) + ops.len() > self.config.max_binds_per_vm {
            return Err(EngineError::Busy);
        }
        let mut validated = Vec::with_capacity(ops.len());
        for (index, o) in ops.iter().enumerate() {
            if matches!(o.op, BindOp::SyncOnly) && o.syncs.is_empty() {
                return Err(EngineError::SyncOp("SYNC_ONLY op without syncs"));
            }
            let v = gpu_vm
                .validate(&o.op)
                .map_err(|error| EngineError::BindOp { index, error })?;
            validated.push(v);
        }
        check_batch(&self.syncs, ops.iter().map(|o| &o.syncs[..]))?;
        if ops.is_empty() {
            self.emit(EngineEvent::BindDone {
                user_data,
                vm,
                result: Ok(()),
            });
            return Ok(());
        }
        let request = self.id();
        self.binds.add_request(request, user_data, ops.len());
        for (o, v) in ops.iter().zip(validated) {
            let id = self.id();
            let c = commit(&mut self.syncs, &o.syncs, &mut self.next_id);
            for &w in &c.queued {
                self.waiters.insert(w, Target::Bind(id));
            }
            self.binds.push(
                vm,
                id,
                BindJob {
                    op: v,
                    waits: c.queued.len(),
                    signals: c.signals,
                    request,
                },
            );
        }
        self.dirty_vms.insert(vm);
        self.pump();
        Ok(())
    }

    fn vm_destroy(&mut self, vm: u32) -> Result<(), EngineError> {
        self.fw.vm(vm)?;
        for job in self.binds.take_vm(vm) {
            self.finish_bind(vm, job.signals, job.request, Err(libc::ECANCELED));
        }
        self.fw.vm_destroy(vm)?;
        self.pump();
        Ok(())
    }

    // ------------------------------------------------------------------
    // Dependency tracking
    // ------------------------------------------------------------------

    /// Acts on everything that became possible: released waiters, ready
    /// bind ops and jobs, firmware completions, until nothing moves.
    fn pump(&mut self) {
        if std::mem::take(&mut self.reschedule_due) {
            self.fw.reschedule();
        }
        loop {
            self.collect_fw_events();
            if let Some(r) = self.work.pop_front() {
                self.released(r);
                continue;
            }
            if self.stopping {
                self.dirty_vms.clear();
                self.dirty_queues.clear();
                return;
            }
            if let Some(vm) = self.dirty_vms.pop_first() {
                self.run_binds(vm);
                continue;
            }
            if let Some(key) = self.dirty_queues.pop_first() {
                self.push_jobs(key);
                continue;
            }
            return;
        }
    }

    fn complete(&mut self, signals: Vec<SignalToken>, result: FenceResult) {
        for token in signals {
            let released = self.syncs.complete(token, result);
            self.work.extend(released);
        }
    }

    fn released(&mut self, r: Released<u64>) {
        match self.waiters.remove(&r.waiter) {
            Some(Target::Job(id)) => {
                if let Some(key) = self.jobs.satisfy(id) {
                    self.dirty_queues.insert(key);
                }
            }
            Some(Target::Bind(id)) => {
                if let Some(vm) = self.binds.satisfy(id) {
                    self.dirty_vms.insert(vm);
                }
            }
            Some(Target::Host(user_data, deadline)) => {
                if let Some(d) = deadline {
                    self.deadlines.remove(&(d, r.waiter));
                }
                self.emit(EngineEvent::SyncWaitDone {
                    user_data,
                    result: r.result,
                })
            }
            None => {}
        }
    }

    /// Ends the host waits whose deadline has passed with `ETIME`.
    fn expire_waits(&mut self) {
        let now = self.now();
        while let Some(&(t, id)) = self.deadlines.first() {
            if t > now {
                break;
            }
            self.deadlines.pop_first();
            if let Some(Target::Host(user_data, _)) = self.waiters.remove(&id) {
                self.syncs.remove_waiter(&id);
                self.emit(EngineEvent::SyncWaitDone {
                    user_data,
                    result: Err(libc::ETIME),
                });
            }
        }
    }

    /// Hands the ready jobs at the head of a queue's FIFO to the firmware.
    fn push_jobs(&mut self, key: QueueKey) {
        let mem = self.mem.memory();
        let now = self.now();
        let mut submitted = false;
        while let Some(held) = self.jobs.pop_ready(key) {
            submitted |= self.hand_to_firmware(&*mem, now, key, held);
            self.collect_fw_events();
        }
        if submitted {
            self.fw.reschedule();
        }
    }

    /// Submits a job of `key` to the firmware, unscheduled; cancels it if
    /// the firmware refuses it. Returns whether it was submitted.
    fn hand_to_firmware(&mut self, mem: &A::M, now: u64, key: QueueKey, held: HeldJob) -> bool {
        let HeldJob {
            mut job,
            user_data,
            signals,
            ..
        } = held;
        // The record's key goes with the job and comes back in its JobDone.
        let running = Running {
            key,
            user_data,
            signals,
        };
        let tag = match self.running.insert(running) {
            Ok(tag) => tag,
            Err(r) => {
                self.end_job(r, 0, Err(libc::ENOMEM));
                return false;
            }
        };
        job.tag = tag;
        // Validated by `check_submit` when the GROUP_SUBMIT came in.
        match self.fw.submit_validated(mem, now, key.0, &job) {
            Ok(_) => true,
            Err(e) => {
                // The group died (or went away) while the job waited.
                let err = match e {
                    FwError::GroupDead(_) | FwError::NoSuchGroup(_) => libc::ECANCELED,
                    e => e.errno(),
                };
                if let Some(r) = self.running.remove(tag) {
                    self.end_job(r, 0, Err(err));
                }
                false
            }
        }
    }

    /// A job the engine gave the firmware ended: its signals, its queue's
    /// count, its event.
    fn end_job(&mut self, r: Running, seqno: u64, result: FenceResult) {
        self.complete(r.signals, result);
        self.jobs.done(r.key);
        self.emit(EngineEvent::JobDone {
            user_data: r.user_data,
            group: r.key.0,
            queue: r.key.1,
            seqno,
            result,
        });
    }

    fn cancel_job(&mut self, key: QueueKey, held: HeldJob, err: i32) {
        let r = Running {
            key,
            user_data: held.user_data,
            signals: held.signals,
        };
        self.end_job(r, 0, Err(err));
    }

    fn cancel_held(&mut self, group: Option<u32>) {
        for (key, held) in self.jobs.take(group) {
            self.cancel_job(key, held, libc::ECANCELED);
        }
    }

    fn collect_fw_events(&mut self) {
        if !self.fw.has_events() {
            return;
        }
        // The buffer is kept from call to call (emptied, capacity kept).
        let mut events = std::mem::take(&mut self.fw_events);
        self.fw.drain_events_into(&mut events);
        for event in events.drain(..) {
            match event {
                FwEvent::JobDone {
                    tag, seqno, result, ..
                } => {
                    if let Some(r) = self.running.remove(tag) {
                        self.end_job(r, seqno, result);
                    }
                }
                FwEvent::GroupStateChanged { group, .. } => {
                    self.cancel_held(Some(group));
                    self.emit(EngineEvent::Firmware(event));
                }
                other => self.emit(EngineEvent::Firmware(other)),
            }
        }
        if events.capacity() <= KEPT_FW_EVENTS {
            self.fw_events = events;
        }
    }

    /// Applies the ready ops at the head of a VM's bind queue.
    fn run_binds(&mut self, vm: u32) {
        while let Some(BindJob {
            op,
            signals,
            request,
            ..
        }) = self.binds.pop_ready(vm)
        {
            let result = match self.fw.vm_mut(vm) {
                Ok(v) => v.apply(op).map_err(|e| e.errno()),
                Err(_) => Err(libc::ECANCELED),
            };
            if result.is_err() {
                let mem = self.mem.memory();
                let now = self.now();
                let _ = self.fw.vm_fail(&*mem, now, vm);
            }
            self.finish_bind(vm, signals, request, result);
        }
    }

    fn finish_bind(
        &mut self,
        vm: u32,
        signals: Vec<SignalToken>,
        request: u64,
        result: FenceResult,
    ) {
        self.complete(signals, result);
        if let Some((user_data, result)) = self.binds.finish(request, result) {
            self.emit(EngineEvent::BindDone {
                user_data,
                vm,
                result,
            });
        }
    }

    /// Completes everything with an error and frees everything: held jobs,
    /// queued binds, firmware jobs (ECANCELED), host waits (ECANCELED).
    pub fn teardown(&mut self) {
        if self.stopped {
            return;
        }
        self.stopping = true;
        // Nothing sent from now on is handled: callers waiting for a reply
        // get their channel closed instead of waiting for ever.
        self.mailbox.close();
        self.inbox.clear();
        let mem = self.mem.memory();
        self.fw.shutdown(&*mem);
        self.collect_fw_events();
        self.cancel_held(None);
        for vm in self.binds.vms() {
            for job in self.binds.take_vm(vm) {
                self.finish_bind(vm, job.signals, job.request, Err(libc::ECANCELED));
            }
        }
        self.pump();
        // Whatever still waits was never going to be signalled.
        let rest = self.syncs.clear();
        self.work.extend(rest);
        self.pump();
        self.waiters.clear();
        self.deadlines.clear();
        self.stopped = true;
        self.end_pass();
    }
}

/// A worker shared between its engine thread and the callers of
/// [`Engine::kick`](super::Engine::kick), which run a pass inline when
/// the thread is idle.
pub(crate) struct SharedWorker<A: GuestAddressSpace, K: KernelMemory>(
    pub Arc<std::sync::Mutex<Worker<A, K>>>,
);

impl<A: GuestAddressSpace, K: KernelMemory> SharedWorker<A, K> {
    pub fn lock(&self) -> std::sync::MutexGuard<'_, Worker<A, K>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One service pass on the caller's thread, if nobody runs one.
pub(crate) trait InlinePass: Send + Sync {
    /// Runs a pass unless the worker is busy; returns whether it ran.
    fn try_pass(&self) -> bool;
}

impl<A, K> InlinePass for std::sync::Mutex<Worker<A, K>>
where
    A: GuestAddressSpace + Send,
    A::T: Send,
    A::M: GuestMemoryBackend,
    K: KernelMemory + Send,
{
    fn try_pass(&self) -> bool {
        let mut w = match self.try_lock() {
            Ok(w) => w,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return false,
        };
        if !w.stopped {
            w.service_inline();
            w.end_pass();
        }
        true
    }
}

impl<A, K> MutEventSubscriber for SharedWorker<A, K>
where
    A: GuestAddressSpace,
    A::M: GuestMemoryBackend,
    K: KernelMemory,
{
    fn init(&mut self, ops: &mut EventOps) {
        self.lock().init(ops);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        self.lock().process(events, ops);
    }
}

impl<A, K> MutEventSubscriber for Worker<A, K>
where
    A: GuestAddressSpace,
    A::M: GuestMemoryBackend,
    K: KernelMemory,
{
    fn init(&mut self, ops: &mut EventOps) {
        let doorbell = ops.add(Events::new(&self.doorbell, EventSet::IN));
        let timer = ops.add(Events::new(&self.timer, EventSet::IN));
        if doorbell.is_err() || timer.is_err() {
            self.teardown();
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if events.fd() == self.doorbell.as_raw_fd() {
            let _ = self.doorbell.read();
        } else if events.fd() == self.timer.as_raw_fd() {
            // A one-shot timer that is no longer armed has expired, so the
            // read returns at once; one re-armed since has nothing to read.
            if !self.timer.is_armed().unwrap_or(true) {
                let _ = self.timer.wait();
            }
            self.armed = None;
        }
        if !self.stopped {
            self.service();
            self.end_pass();
        }
    }
}
