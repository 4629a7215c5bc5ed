//! The GPU engine: one thread per native context that owns the context's
//! emulated GPU (its [`Firmware`], VMs, groups, tiler heaps and syncobjs)
//! and runs it.
//!
//! # Threading
//! [`Engine::spawn`] starts the thread; the returned [`Engine`] is the
//! only way in. Each method queues a command in the engine's mailbox, rings the
//! doorbell eventfd and waits for the answer, which the thread sends as
//! soon as the command is checked and queued — never after GPU work —
//! so a caller blocks for a command's bookkeeping, not for the GPU.
//! [`Engine::group_submit_posted`] does not wait at all: it queues the
//! jobs without ringing ([`Engine::ring`] rings once for many), and a
//! refusal comes out as [`EngineEvent::SubmitRejected`]. A ring that is
//! already pending is not repeated.
//! Argument errors come back synchronously with Panthor's errnos
//! ([`EngineError::errno`]); completions come out later through the event
//! callback ([`EngineEvent`]; with [`Engine::spawn_batched`], the events of
//! a pass together at its end), which the transport turns into fences.
//!
//! The thread is an event-manager loop on two file descriptors (see
//! [`worker`]): the doorbell and a timerfd armed for the firmware's next
//! deadline (scoreboard completion, job timeout, scheduler tick). It never
//! sleeps or polls; a guest stream that runs for ever is preempted after
//! every slice, and the loop goes back to its commands between slices.
//!
//! # Passes on the caller's thread
//! The engine's state sits behind a mutex that the thread takes for each
//! service pass. [`Engine::kick`] (used by the transport after queuing a
//! batch of fenced submits) runs one pass on the calling thread instead
//! of ringing the doorbell, when the thread is not in a pass itself: the
//! queued commands, at most [`worker::INLINE_SLICES`] firmware slices of
//! [`worker::INLINE_SLICE_BUDGET`] instructions, and the completions they
//! bring. A no-op job is then done, and its fence returned, before the
//! transport's worker sleeps: one thread wake-up fewer per job, which is
//! what brings a fenced job's round trip within 1.3x of the transport's
//! (docs/PERFORMANCE.md). Anything left (more slices, parked queues,
//! timers, host waits) rings the doorbell and goes on on the engine
//! thread, so guest streams hold the caller for about 0.1 ms at most,
//! never for a long stream's slices. Event callbacks may therefore run on either
//! thread; they take no lock the caller of `kick` holds.
//!
//! One engine per context keeps contexts fully isolated: a context's
//! faults, timeouts and scheduling never touch another's. Each context
//! therefore sees a whole GPU (all CSG slots); that is the documented cost.
//!
//! # Dependencies without round trips
//! GROUP_SUBMIT jobs and asynchronous VM_BIND ops carry WAIT and SIGNAL
//! sync operations on the context's device-side syncobjs
//! ([`SyncTable`](crate::gpu::sync::SyncTable)).
//! A job waits in its queue's FIFO ([`jobs`]) and a bind op in its VM's
//! bind queue ([`binds`]) until its WAITs are signalled; SIGNALs are
//! attached as pending when the work is accepted and completed with its
//! result. So a bind whose out-sync is a job's in-sync gates that job
//! entirely inside the engine. Asynchronous binds are validated when they
//! arrive and applied in order; an op that fails when applied makes the VM
//! unusable (its groups die) and its SIGNALs carry the error.
//! Synchronous binds apply at once and do not wait for queued asynchronous
//! ones (as Panthor's synchronous path).
//!
//! # Bounds
//! Jobs outstanding per group queue ([`EngineConfig::max_jobs_per_queue`])
//! and ops queued per VM ([`EngineConfig::max_binds_per_vm`]) are capped
//! (EAGAIN beyond); the syncobj table has its own limits; the firmware caps
//! groups, VMs and heaps.
//!
//! # Shutdown
//! [`Engine::shutdown`] (also run on drop) tears down on the thread: jobs
//! not yet in the firmware, queued binds, jobs in flight and host waits
//! all complete with ECANCELED (each with its event), every kernel object
//! goes back to the allocator, and the thread is joined.

pub mod binds;
pub mod command;
pub mod deps;
pub mod event;
pub mod jobs;
pub mod worker;

#[cfg(test)]
mod tests;

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::sync_channel;
use std::sync::Arc;
use std::thread::JoinHandle;

use event_manager::{EventManager, SubscriberOps};
use vm_memory::{GuestAddressSpace, GuestMemoryBackend};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::timerfd::TimerFd;

pub use command::{
    BindMode, BindRequest, EngineError, QueueSubmit, Submits, SyncOp, SYNC_OP_HANDLE_TYPE_MASK,
    SYNC_OP_SIGNAL,
};
pub use event::EngineEvent;

use command::{Command, Mailbox, Reply};
use worker::{InlinePass, SharedWorker, Sink, Worker};

use crate::gpu::firmware::{
    Firmware, FwConfig, GroupCreate, GroupStatus, HeapCreate, HeapInfo, KernelMemory,
};
use crate::gpu::mmu::{Bo, GuestRange, VmKey, VmState};
use crate::gpu::model::GpuModel;
use crate::gpu::sync::{SyncHandle, SyncKind, SyncLimits, SyncState, WaitFlags};

/// Default cap on the jobs of one group queue that are not complete.
pub const MAX_JOBS_PER_QUEUE: usize = 256;
/// Default cap on the asynchronous bind ops queued on one VM.
pub const MAX_BINDS_PER_VM: usize = 1024;

/// Configuration of an engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineConfig {
    /// The firmware model's configuration.
    pub firmware: FwConfig,
    /// Limits of the context's syncobj table.
    pub sync_limits: SyncLimits,
    /// Jobs of one group queue not complete yet (held or running).
    pub max_jobs_per_queue: usize,
    /// Asynchronous bind ops queued on one VM.
    pub max_binds_per_vm: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            firmware: FwConfig::default(),
            sync_limits: SyncLimits::default(),
            max_jobs_per_queue: MAX_JOBS_PER_QUEUE,
            max_binds_per_vm: MAX_BINDS_PER_VM,
        }
    }
}

/// Where the events of a service pass go, together ([`Engine::spawn_batched`]).
pub type EventsSink = Box<dyn Fn(&mut Vec<EngineEvent>) + Send>;

/// The handle of a running engine; see the [module documentation](self).
#[derive(Debug)]
pub struct Engine {
    mailbox: Arc<Mailbox>,
    doorbell: EventFd,
    /// Set when the doorbell was rung and the thread has not yet started
    /// draining its commands: later commands need not ring it again.
    rung: Arc<AtomicBool>,
    /// The worker, for passes run on the caller's thread.
    inline: Arc<dyn InlinePass>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for dyn InlinePass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InlinePass")
    }
}

impl Engine {
    /// Starts the engine thread of one context.
    ///
    /// `mem` is the guest memory (re-read at every use, so a new memory
    /// table is picked up); `kmem` provides the memory of kernel objects;
    /// `on_event` receives every [`EngineEvent`], on the engine thread.
    pub fn spawn<A, K>(
        mem: A,
        kmem: K,
        model: GpuModel,
        config: EngineConfig,
        on_event: Box<dyn Fn(EngineEvent) + Send>,
    ) -> io::Result<Engine>
    where
        A: GuestAddressSpace + Send + 'static,
        A::T: Send,
        A::M: GuestMemoryBackend,
        K: KernelMemory + Send + 'static,
    {
        Self::spawn_with(mem, kmem, model, config, Sink::Each(on_event))
    }

    /// [`Engine::spawn`] with the events of each service pass (all queued
    /// commands handled, the firmware run) handed over together at its
    /// end, in order, on the thread that ran the pass (the engine's, or
    /// the caller of [`Engine::kick`]); also after the teardown. A receiver
    /// can so batch what they trigger (fence completions, used-ring
    /// notifications). It is not called for a pass without events.
    pub fn spawn_batched<A, K>(
        mem: A,
        kmem: K,
        model: GpuModel,
        config: EngineConfig,
        on_events: EventsSink,
    ) -> io::Result<Engine>
    where
        A: GuestAddressSpace + Send + 'static,
        A::T: Send,
        A::M: GuestMemoryBackend,
        K: KernelMemory + Send + 'static,
    {
        Self::spawn_with(mem, kmem, model, config, Sink::Batch(on_events))
    }

    fn spawn_with<A, K>(
        mem: A,
        kmem: K,
        model: GpuModel,
        config: EngineConfig,
        sink: Sink,
    ) -> io::Result<Engine>
    where
        A: GuestAddressSpace + Send + 'static,
        A::T: Send,
        A::M: GuestMemoryBackend,
        K: KernelMemory + Send + 'static,
    {
        let mut fw_config = config.firmware;
        // The firmware must always take what the engine lets through.
        fw_config.max_pending_jobs = fw_config.max_pending_jobs.max(config.max_jobs_per_queue);
        let fw = Firmware::new(model, fw_config, kmem);
        let doorbell = EventFd::new(EFD_NONBLOCK)?;
        let timer = TimerFd::new()?;
        let mailbox = Arc::new(Mailbox::default());
        let rung = Arc::new(AtomicBool::new(false));
        let worker = Worker::new(
            mem,
            fw,
            config,
            mailbox.clone(),
            (doorbell.try_clone()?, rung.clone()),
            timer,
            sink,
        );
        let worker = Arc::new(std::sync::Mutex::new(worker));
        let inline: Arc<dyn InlinePass> = worker.clone();
        let (ready_tx, ready_rx) = sync_channel::<io::Result<()>>(1);
        let thread = std::thread::Builder::new()
            .name("vum-gpu".into())
            .spawn(move || run(SharedWorker(worker), ready_tx))?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(Engine {
                mailbox,
                doorbell,
                rung,
                inline,
                thread: Some(thread),
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => {
                let _ = thread.join();
                Err(io::Error::other("GPU engine thread failed to start"))
            }
        }
    }

    fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T, EngineError> {
        let (reply, answer) = sync_channel(1);
        self.post(make(reply))?;
        answer.recv().map_err(|_| EngineError::Gone)?
    }

    /// Queues a command and rings the doorbell unless a ring is already
    /// pending (the thread clears the flag before it drains the mailbox,
    /// so a command queued while the flag is set is always seen).
    fn post(&self, cmd: Command) -> Result<(), EngineError> {
        self.mailbox.send(cmd)?;
        self.ring()
    }

    /// Rings the doorbell (unless a ring is pending already): the thread
    /// handles every command queued so far. Commands sent without waiting
    /// ([`Engine::group_submit_posted`]) may wait for a ring (any later
    /// call also rings) or the thread's next timer wake-up.
    pub fn ring(&self) -> Result<(), EngineError> {
        if !self.rung.swap(true, Ordering::AcqRel) {
            if let Err(_e) = self.doorbell.write(1) {
                self.rung.store(false, Ordering::Release);
                return Err(EngineError::Gone);
            }
        }
        Ok(())
    }

    /// Has every command queued so far handled and the GPU run, on the
    /// calling thread if the engine thread is idle (one short service
    /// pass: the commands, at most [`worker::INLINE_SLICES`] slices of
    /// [`worker::INLINE_SLICE_BUDGET`] instructions, the completions they
    /// bring); otherwise rings the doorbell. Work left after the pass
    /// (more slices, timers, waits) goes on on the engine thread. The caller must not hold a lock that the event callbacks
    /// take. Returns whether the pass ran on the calling thread.
    pub fn kick(&self) -> Result<bool, EngineError> {
        if self.inline.try_pass() {
            Ok(true)
        } else {
            self.ring().map(|()| false)
        }
    }

    /// VM_CREATE: the handle and the user VA range.
    pub fn vm_create(&self, user_va_range: u64) -> Result<(u32, u64), EngineError> {
        self.call(|reply| Command::VmCreate {
            user_va_range,
            reply,
        })
    }

    /// VM_DESTROY. Bind ops still queued on the VM are cancelled.
    pub fn vm_destroy(&self, vm: u32) -> Result<(), EngineError> {
        self.call(|reply| Command::VmDestroy { vm, reply })
    }

    /// VM_GET_STATE.
    pub fn vm_state(&self, vm: u32) -> Result<VmState, EngineError> {
        self.call(|reply| Command::VmState { vm, reply })
    }

    /// The identity of a VM, which [`KernelMemory::alloc`] receives for
    /// the VM's kernel objects.
    pub fn vm_key(&self, vm: u32) -> Result<VmKey, EngineError> {
        self.call(|reply| Command::VmKey { vm, reply })
    }

    /// Maps all of `bo` at `va` in the kernel window of `vm`, for a
    /// [`KernelMemory`] whose memory is mapped as a whole
    /// ([`KernelMemory::mapped_at`]).
    pub fn map_kernel_memory(&self, vm: u32, bo: Arc<Bo>, va: u64) -> Result<(), EngineError> {
        self.call(|reply| Command::MapKernelMemory { vm, bo, va, reply })
    }

    /// VM_BIND, synchronous or asynchronous.
    pub fn vm_bind(
        &self,
        vm: u32,
        ops: Vec<BindRequest>,
        mode: BindMode,
    ) -> Result<(), EngineError> {
        self.call(|reply| Command::VmBind {
            vm,
            ops,
            mode,
            reply,
        })
    }

    /// GROUP_CREATE.
    pub fn group_create(&self, args: GroupCreate) -> Result<u32, EngineError> {
        self.call(|reply| Command::GroupCreate { args, reply })
    }

    /// GROUP_DESTROY.
    pub fn group_destroy(&self, group: u32) -> Result<(), EngineError> {
        self.call(|reply| Command::GroupDestroy { group, reply })
    }

    /// GROUP_GET_STATE.
    pub fn group_state(&self, group: u32) -> Result<GroupStatus, EngineError> {
        self.call(|reply| Command::GroupState { group, reply })
    }

    /// GROUP_SUBMIT: every job is checked (and its syncs) before any is
    /// queued; [`EngineEvent::JobDone`] follows for each.
    pub fn group_submit(&self, group: u32, jobs: impl Into<Submits>) -> Result<(), EngineError> {
        let jobs = jobs.into();
        self.call(|reply| Command::GroupSubmit { group, jobs, reply })
    }

    /// GROUP_SUBMIT without waiting for the thread, and without ringing
    /// the doorbell: the caller rings it with [`Engine::ring`] (several
    /// posted submits can share one ring, and one pass of the thread). Only
    /// a thread that is gone is reported here. The engine checks the jobs as
    /// [`Engine::group_submit`] does, in command order; if it refuses them,
    /// [`EngineEvent::SubmitRejected`] carries the first job's `user_data`
    /// and the error, and no job is queued. Otherwise
    /// [`EngineEvent::JobDone`] follows for each job.
    pub fn group_submit_posted(
        &self,
        group: u32,
        jobs: impl Into<Submits>,
    ) -> Result<(), EngineError> {
        self.mailbox.send(Command::GroupSubmitPosted {
            group,
            jobs: jobs.into(),
        })
    }

    /// TILER_HEAP_CREATE.
    pub fn heap_create(&self, args: HeapCreate) -> Result<HeapInfo, EngineError> {
        self.call(|reply| Command::HeapCreate { args, reply })
    }

    /// TILER_HEAP_DESTROY.
    pub fn heap_destroy(&self, handle: u32) -> Result<(), EngineError> {
        self.call(|reply| Command::HeapDestroy { handle, reply })
    }

    /// Creates a syncobj.
    pub fn sync_create(&self, kind: SyncKind, signaled: bool) -> Result<SyncHandle, EngineError> {
        self.call(|reply| Command::SyncCreate {
            kind,
            signaled,
            reply,
        })
    }

    /// Destroys a syncobj.
    pub fn sync_destroy(&self, handle: SyncHandle) -> Result<(), EngineError> {
        self.call(|reply| Command::SyncDestroy { handle, reply })
    }

    /// Signals a point from the host (the guest CPU).
    pub fn sync_signal(&self, handle: SyncHandle, point: u64) -> Result<(), EngineError> {
        self.call(|reply| Command::SyncSignal {
            handle,
            point,
            reply,
        })
    }

    /// Resets a binary syncobj.
    pub fn sync_reset(&self, handle: SyncHandle) -> Result<(), EngineError> {
        self.call(|reply| Command::SyncReset { handle, reply })
    }

    /// The state of a syncobj.
    pub fn sync_query(&self, handle: SyncHandle) -> Result<SyncState, EngineError> {
        self.call(|reply| Command::SyncQuery { handle, reply })
    }

    /// Waits for a point on behalf of the host: [`EngineEvent::SyncWaitDone`]
    /// with `user_data` follows when it signals (at once if it has).
    pub fn sync_wait(
        &self,
        handle: SyncHandle,
        point: u64,
        flags: WaitFlags,
        user_data: u64,
    ) -> Result<(), EngineError> {
        self.wait(handle, point, flags, user_data, None)
    }

    /// [`Engine::sync_wait`] that gives up after `timeout_ns`: if the point
    /// has not signalled by then, the waiter is dropped and
    /// [`EngineEvent::SyncWaitDone`] reports `ETIME`. The deadline is one
    /// of the engine timer's wake-ups; nothing polls.
    pub fn sync_wait_timeout(
        &self,
        handle: SyncHandle,
        point: u64,
        flags: WaitFlags,
        user_data: u64,
        timeout_ns: u64,
    ) -> Result<(), EngineError> {
        self.wait(handle, point, flags, user_data, Some(timeout_ns))
    }

    fn wait(
        &self,
        handle: SyncHandle,
        point: u64,
        flags: WaitFlags,
        user_data: u64,
        timeout_ns: Option<u64>,
    ) -> Result<(), EngineError> {
        self.call(|reply| Command::SyncWait {
            handle,
            point,
            flags,
            user_data,
            timeout_ns,
            reply,
        })
    }

    /// The guest took the memory of `bo` back: its mappings go from every
    /// VM, pending MAPs of it fail when they run, and if `kernel` (its
    /// guest ranges, when it was kernel memory) holds kernel objects of a
    /// VM, that VM becomes unusable and its groups are killed. When this
    /// returns the GPU no longer reaches the BO's memory.
    pub fn revoke_bo(&self, bo: Arc<Bo>, kernel: Vec<GuestRange>) -> Result<(), EngineError> {
        self.call(|reply| Command::RevokeBo { bo, kernel, reply })
    }

    /// Tells the GPU that guest memory may have changed (the guest CPU
    /// wrote a sync object): parked SYNC_WAITs re-check their condition.
    pub fn memory_changed(&self) -> Result<(), EngineError> {
        self.call(|reply| Command::MemoryChanged { reply })
    }

    /// Stops the engine: all pending work completes with ECANCELED, every
    /// resource is freed and the thread is joined.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(thread) = self.thread.take() {
            let _ = self.call(|reply| Command::Shutdown { reply });
            let _ = thread.join();
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The engine thread: the event loop until the worker is torn down.
fn run<A, K>(worker: SharedWorker<A, K>, ready: std::sync::mpsc::SyncSender<io::Result<()>>)
where
    A: GuestAddressSpace,
    A::M: GuestMemoryBackend,
    K: KernelMemory,
{
    let mut em = match EventManager::<SharedWorker<A, K>>::new() {
        Ok(em) => em,
        Err(e) => {
            let _ = ready.send(Err(io::Error::other(e.to_string())));
            return;
        }
    };
    let id = em.add_subscriber(worker);
    let started = em
        .subscriber_mut(id)
        .map(|w| !w.lock().stopped)
        .unwrap_or(false);
    let _ = ready.send(if started {
        Ok(())
    } else {
        Err(io::Error::other(
            "cannot watch the GPU engine's descriptors",
        ))
    });
    if !started {
        return;
    }
    loop {
        if em.run().is_err() {
            if let Ok(w) = em.subscriber_mut(id) {
                w.lock().teardown();
            }
            break;
        }
        if em.subscriber_mut(id).map_or(true, |w| w.lock().stopped) {
            break;
        }
    }
}
