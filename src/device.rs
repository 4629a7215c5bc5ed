//! The vhost-user backend: virtio features, the config space, and the
//! control and cursor queues.
//!
//! One [`GpuDevice`] serves one vhost-user connection. The vring worker
//! thread pops descriptor chains, hands each to [`GpuState`], and returns it
//! to the used ring: unfenced chains at once, fenced ones through
//! [`FenceRings`] so that each timeline completes in order. Every chain the
//! device pops is returned, whatever the guest put in it.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use log::{debug, info, warn};
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost::vhost_user::GpuBackend;
use vhost_user_backend::{VhostUserBackend, VringRwLock, VringT};
use virtio_bindings::virtio_config::{VIRTIO_F_RING_RESET, VIRTIO_F_VERSION_1};
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::{DescriptorChain, QueueOwnedT, QueueT};
use vm_memory::{ByteValued, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};

use crate::display::FrontendDisplay;
use crate::guest_warn;
use crate::log_limit::LogLimiter;
use crate::native::FenceSink;
use crate::virtio_gpu::chain::ChainBuffers;
use crate::virtio_gpu::control::{GpuConfig, GpuState, Negotiated};
use crate::virtio_gpu::fence::{FenceRings, HeldChain, Timeline};
use crate::virtio_gpu::protocol::*;

/// Index of the control queue.
pub const CONTROL_QUEUE: u16 = 0;
/// Index of the cursor queue.
pub const CURSOR_QUEUE: u16 = 1;
/// Number of queues.
pub const NUM_QUEUES: usize = 2;
/// Largest queue size the device accepts.
pub const MAX_QUEUE_SIZE: usize = 1024;
/// Chains a drain makes room for at once (more grow the buffer).
const TYPICAL_BATCH: usize = 64;

/// The virtio feature bits this device offers.
///
/// VIRTIO_F_RING_RESET is offered because Linux guests accept it whenever it
/// is offered by the transport and QEMU forwards the guest's acked set as is;
/// the vhost-user library refuses a SET_FEATURES with bits the backend did
/// not offer. A queue reset reaches the backend as a stop and a restart of
/// the vring, which the device handles like any other.
pub fn offered_features() -> u64 {
    (1u64 << VIRTIO_F_VERSION_1)
        | (1u64 << VIRTIO_F_RING_RESET)
        | (1u64 << VIRTIO_RING_F_EVENT_IDX)
        | (1u64 << VIRTIO_RING_F_INDIRECT_DESC)
        | (1u64 << VIRTIO_GPU_F_VIRGL)
        | (1u64 << VIRTIO_GPU_F_EDID)
        | (1u64 << VIRTIO_GPU_F_RESOURCE_UUID)
        | (1u64 << VIRTIO_GPU_F_RESOURCE_BLOB)
        | (1u64 << VIRTIO_GPU_F_CONTEXT_INIT)
        | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
}

/// The vhost-user protocol features this device offers.
pub fn offered_protocol_features() -> VhostUserProtocolFeatures {
    VhostUserProtocolFeatures::CONFIG
        | VhostUserProtocolFeatures::MQ
        | VhostUserProtocolFeatures::REPLY_ACK
        | VhostUserProtocolFeatures::RESET_DEVICE
}

/// The completion path of fenced chains, shared by the vring worker and the
/// GPU engine threads: the fence rings, the control vring to return chains
/// to, and guest memory (the same as the vrings'). Lock order: `fences`,
/// then `control_vring`, then `mem`, then the vring's own lock; nothing
/// here ever takes the device state lock, so a thread holding that lock
/// may wait for an engine thread that completes fences.
struct Completer {
    fences: Mutex<FenceRings>,
    control_vring: Mutex<Option<VringRwLock>>,
    mem: RwLock<Option<GuestMemoryAtomic<GuestMemoryMmap>>>,
    limiter: Mutex<LogLimiter>,
}

impl Completer {
    fn memory(&self) -> Option<GuestMemoryAtomic<GuestMemoryMmap>> {
        self.mem.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn return_chains(&self, vring: &VringRwLock, chains: &[HeldChain]) -> io::Result<()> {
        if chains.is_empty() {
            return Ok(());
        }
        // Chains are only read once there is memory.
        let Some(atomic) = self.memory() else {
            return Ok(());
        };
        // One snapshot of guest memory and one lock of the vring for the
        // whole batch (the vring's own `add_used` takes a snapshot per
        // chain).
        let mem = atomic.memory();
        let notify = {
            let mut st = vring.get_mut();
            let size = st.get_queue().size();
            for c in chains {
                if c.head >= size {
                    guest_warn!(
                        lock(&self.limiter),
                        "descriptor head {} is outside the {size}-entry queue; not returned",
                        c.head
                    );
                    continue;
                }
                if let Err(e) = st.get_queue_mut().add_used(&*mem, c.head, c.len) {
                    guest_warn!(lock(&self.limiter), "add_used({}) failed: {e}", c.head);
                }
            }
            st.needs_notification().unwrap_or(true)
        };
        if notify {
            vring.signal_used_queue()?;
        }
        Ok(())
    }
}

impl FenceSink for Completer {
    fn complete(&self, timeline: Timeline, fence_id: u64) {
        self.complete_many(&[(timeline, fence_id)]);
    }

    /// One lock of the fence rings for all of them, then every released
    /// chain on the used ring with at most one notification.
    fn complete_many(&self, fences: &[(Timeline, u64)]) {
        let mut ready = Vec::with_capacity(fences.len());
        {
            let mut rings = lock(&self.fences);
            for &(timeline, id) in fences {
                rings.complete(timeline, id, &mut ready);
            }
        }
        if ready.is_empty() {
            return;
        }
        let vring = lock(&self.control_vring).clone();
        if let Some(v) = vring {
            if let Err(e) = self.return_chains(&v, &ready) {
                warn!("completing {} fences: {e}", fences.len());
            }
        }
    }
}

struct Exit {
    consumer: EventConsumer,
    notifier: EventNotifier,
}

/// The virtio-gpu device of one connection.
pub struct GpuDevice {
    state: Mutex<GpuState>,
    completer: Arc<Completer>,
    event_idx: AtomicBool,
    acked: AtomicU64,
    events_read: AtomicU32,
    /// Bumped on every device reset; the worker tears the old state down
    /// when it sees a new value.
    generation: AtomicU64,
    seen_generation: AtomicU64,
    exit: Exit,
    handed_out_fds: Mutex<Vec<RawFd>>,
    limiter: Mutex<LogLimiter>,
    num_scanouts: u32,
    num_capsets: u32,
    commands: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a lock is a bug, but the daemon must keep
    // serving: take the data as it is.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl GpuDevice {
    /// A device for a new connection.
    pub fn new(cfg: GpuConfig) -> io::Result<GpuDevice> {
        let (consumer, notifier) = new_event_consumer_and_notifier(EventFlag::NONBLOCK)?;
        let mut state = GpuState::new(cfg);
        let completer = Arc::new(Completer {
            fences: Mutex::new(FenceRings::new()),
            control_vring: Mutex::new(None),
            mem: RwLock::new(None),
            limiter: Mutex::new(LogLimiter::default()),
        });
        state.set_fence_sink(completer.clone());
        Ok(GpuDevice {
            num_scanouts: state.num_scanouts(),
            num_capsets: state.num_capsets(),
            state: Mutex::new(state),
            completer,
            event_idx: AtomicBool::new(false),
            acked: AtomicU64::new(0),
            events_read: AtomicU32::new(0),
            generation: AtomicU64::new(0),
            seen_generation: AtomicU64::new(0),
            exit: Exit { consumer, notifier },
            handed_out_fds: Mutex::new(Vec::new()),
            limiter: Mutex::new(LogLimiter::default()),
            commands: AtomicU64::new(0),
        })
    }

    /// Asks the vring worker thread to stop.
    pub fn stop_worker(&self) {
        let _ = self.exit.notifier.notify();
    }

    /// Closes the exit-event descriptors handed to the vhost-user library,
    /// which leaks them. Call only after the connection's `VhostUserDaemon`
    /// has been dropped, so no worker or epoll set still uses them.
    pub fn close_handed_out_fds(&self) {
        for fd in lock(&self.handed_out_fds).drain(..) {
            // SAFETY: `fd` was created by `try_clone` in `exit_event` and
            // passed to the library, which only registered it with the
            // worker's epoll instance (now closed) and never closes it
            // itself. Taking ownership here closes it exactly once.
            drop(unsafe { OwnedFd::from_raw_fd(fd) });
        }
    }

    /// Number of requests handled so far.
    pub fn commands_handled(&self) -> u64 {
        self.commands.load(Ordering::Relaxed)
    }

    fn config_bytes(&self) -> VirtioGpuConfig {
        VirtioGpuConfig {
            events_read: self.events_read.load(Ordering::Relaxed),
            events_clear: 0,
            num_scanouts: self.num_scanouts,
            num_capsets: self.num_capsets,
        }
    }

    fn return_chains(&self, vring: &VringRwLock, chains: &[HeldChain]) -> io::Result<()> {
        self.completer.return_chains(vring, chains)
    }

    /// Resets per-boot state if the device was reset since the last call.
    /// Runs on the worker thread, which owns the 2D pixels.
    fn sync_generation(&self) {
        let g = self.generation.load(Ordering::Acquire);
        if self.seen_generation.swap(g, Ordering::AcqRel) != g {
            let (resources, contexts) = lock(&self.state).teardown();
            if resources + contexts > 0 {
                info!(
                    "device reset: freed {resources} resources and {contexts} contexts of the previous boot"
                );
            }
            // Held chains belong to the old rings, which the frontend has
            // taken back; they must not be completed on the new ones.
            let dropped = lock(&self.completer.fences).flush_all();
            if !dropped.is_empty() {
                debug!("dropped {} fenced chains of the old rings", dropped.len());
            }
        }
    }

    fn process_queue(&self, vring: &VringRwLock, queue: u16) -> io::Result<()> {
        self.sync_generation();
        let Some(atomic) = self.completer.memory() else {
            guest_warn!(
                lock(&self.limiter),
                "queue {queue} kicked before the memory table was set"
            );
            return Ok(());
        };
        let event_idx = self.event_idx.load(Ordering::Relaxed);
        loop {
            if event_idx {
                vring
                    .disable_notification()
                    .map_err(|e| io::Error::other(e.to_string()))?;
            }
            let (done, broken) = self.drain(vring, queue, &atomic);
            self.return_chains(vring, &done)?;
            // A broken queue would report new work forever: stop until the
            // next kick instead of spinning.
            if !event_idx || broken {
                break;
            }
            match vring.enable_notification() {
                Ok(true) => continue,
                Ok(false) => break,
                Err(e) => return Err(io::Error::other(e.to_string())),
            }
        }
        Ok(())
    }

    /// Handles every available chain; returns the chains ready for the used
    /// ring, and whether the queue turned out to be broken (an avail index
    /// the device cannot trust).
    fn drain(
        &self,
        vring: &VringRwLock,
        queue: u16,
        atomic: &GuestMemoryAtomic<GuestMemoryMmap>,
    ) -> (Vec<HeldChain>, bool) {
        let mut ready = Vec::new();
        let mut broken = false;
        let mut bufs = ChainBuffers::default();
        // One snapshot of guest memory for the batch, as the backend
        // library takes one per event: a memory table set meanwhile applies
        // from the next kick on (the old mappings stay valid until then).
        let mem: Arc<GuestMemoryMmap> = atomic.memory().into_inner();
        // The chains available are taken together, under one lock of the
        // vring (at most the queue size of them), then handled in order;
        // chains made available meanwhile are taken on the next round.
        let mut chains = Vec::with_capacity(TYPICAL_BATCH);
        loop {
            {
                let mut st = vring.get_mut();
                match st.get_queue_mut().iter(&*mem) {
                    Ok(it) => chains.extend(it),
                    Err(e) => {
                        guest_warn!(
                            lock(&self.limiter),
                            "queue {queue} is broken ({e}); waiting for a reset"
                        );
                        broken = true;
                    }
                }
            }
            if chains.is_empty() {
                break;
            }
            let mut state = lock(&self.state);
            for chain in chains.drain(..) {
                self.handle_chain(&mut state, chain, &mem, queue, &mut bufs, &mut ready);
            }
            if broken {
                break;
            }
        }
        // Every fence of the batch is queued: the engines may now run the
        // batch's jobs, in one pass each, and complete them.
        lock(&self.state).ring_engines();
        (ready, broken)
    }

    /// Handles one chain: the request, its response, and its fence (held
    /// until the work is done, or `ready` for the used ring). The caller
    /// holds the state's lock for the round of chains.
    fn handle_chain(
        &self,
        state: &mut GpuState,
        chain: DescriptorChain<&GuestMemoryMmap>,
        mem: &Arc<GuestMemoryMmap>,
        queue: u16,
        bufs: &mut ChainBuffers,
        ready: &mut Vec<HeldChain>,
    ) {
        let head = chain.head_index();
        bufs.walk(chain, mem);
        let reader = bufs.reader(mem).ok();
        let mut writer = bufs.writer(mem).ok();
        let outcome = state.handle(mem, reader, writer.as_mut(), queue == CURSOR_QUEUE);
        self.commands.fetch_add(1, Ordering::Relaxed);
        let held = HeldChain {
            head,
            len: outcome.len,
        };
        match (outcome.fence, outcome.pending) {
            (None, _) => ready.push(held),
            (Some((timeline, id)), None) => {
                lock(&self.completer.fences).push(timeline, id, held, true, ready);
            }
            (Some((timeline, id)), Some(tracker)) => {
                // Queued as not done first, so that the work cannot
                // complete the fence before it is known. If the work
                // already ended, the fence completes here, its chain
                // joining this drain's batch.
                let mut rings = lock(&self.completer.fences);
                rings.push(timeline, id, held, false, ready);
                if tracker.release() {
                    rings.complete(timeline, id, ready);
                }
            }
        }
        if let Some(ctx) = outcome.destroyed_ctx {
            ready.extend(lock(&self.completer.fences).flush_context(ctx));
        }
    }
}

impl VhostUserBackend for GpuDevice {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        NUM_QUEUES
    }

    fn max_queue_size(&self) -> usize {
        MAX_QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        offered_features()
    }

    fn acked_features(&self, features: u64) {
        self.acked.store(features, Ordering::Relaxed);
        let n = Negotiated::from_features(features);
        info!("features negotiated: {:?}; mode: {}", n, n.mode());
        lock(&self.state).set_features(n);
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        offered_protocol_features()
    }

    fn reset_device(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        // Held chains belong to the old rings: drop them now, so that GPU
        // work completing before the worker tears the contexts down cannot
        // return them on the new rings.
        lock(&self.completer.fences).flush_all();
    }

    fn set_event_idx(&self, enabled: bool) {
        self.event_idx.store(enabled, Ordering::Relaxed);
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        let cfg = self.config_bytes();
        let bytes = cfg.as_slice();
        let start = offset as usize;
        match start.checked_add(size as usize) {
            Some(end) if end <= bytes.len() => bytes[start..end].to_vec(),
            _ => {
                guest_warn!(
                    lock(&self.limiter),
                    "config read {offset}+{size} outside the {}-byte config space",
                    bytes.len()
                );
                Vec::new()
            }
        }
    }

    fn set_config(&self, offset: u32, buf: &[u8]) -> io::Result<()> {
        // Only `events_clear` (offset 4) is writable.
        if offset == 4 && buf.len() == 4 {
            let clear = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]);
            self.events_read.fetch_and(!clear, Ordering::Relaxed);
            return Ok(());
        }
        guest_warn!(
            lock(&self.limiter),
            "ignored config write {offset}+{}",
            buf.len()
        );
        Ok(())
    }

    fn update_memory(&self, mem: GuestMemoryAtomic<GuestMemoryMmap>) -> io::Result<()> {
        lock(&self.state).set_memory(mem.clone());
        *self
            .completer
            .mem
            .write()
            .unwrap_or_else(|p| p.into_inner()) = Some(mem);
        Ok(())
    }

    fn set_gpu_socket(&self, backend: GpuBackend) -> io::Result<()> {
        let display = FrontendDisplay::start(backend)?;
        lock(&self.state).set_display(display);
        Ok(())
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        let c = self.exit.consumer.try_clone().ok()?;
        let n = self.exit.notifier.try_clone().ok()?;
        // vhost-user-backend turns the consumer into a raw descriptor for
        // its epoll set and never closes it; remember it so the daemon can
        // close it once the worker is gone (see `close_handed_out_fds`).
        lock(&self.handed_out_fds).push(c.as_raw_fd());
        Some((c, n))
    }

    fn stop_vring(&self, queue_index: u32) -> io::Result<()> {
        if queue_index == u32::from(CONTROL_QUEUE) {
            // The frontend stops the device (guest reset, shutdown): the
            // next start is a new boot, and held chains are not returned.
            self.generation.fetch_add(1, Ordering::AcqRel);
            lock(&self.completer.fences).flush_all();
        }
        Ok(())
    }

    fn handle_event(
        &self,
        device_event: u16,
        evset: EventSet,
        vrings: &[VringRwLock],
        _thread_id: usize,
    ) -> io::Result<()> {
        if evset != EventSet::IN {
            warn!("unexpected event set {evset:?} on event {device_event}");
            return Ok(());
        }
        let Some(vring) = vrings.get(device_event as usize) else {
            warn!("event for unknown queue {device_event}");
            return Ok(());
        };
        if device_event == CONTROL_QUEUE {
            let mut cv = lock(&self.completer.control_vring);
            if cv.is_none() {
                *cv = Some(vring.clone());
            }
        }
        // An error here would end the worker thread for good; log it and
        // keep serving instead.
        if let Err(e) = self.process_queue(vring, device_event) {
            guest_warn!(lock(&self.limiter), "queue {device_event}: {e}");
        }
        Ok(())
    }
}
