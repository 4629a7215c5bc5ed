//! A minimal vhost-user back end that echoes: the transport baseline.
//!
//! [`EchoBackend`] copies each descriptor chain's device-readable bytes into
//! its device-writable bytes (as many as fit) and returns the chain with the
//! number of bytes written. Nothing else happens, so a round trip through it
//! measures the vhost-user transport alone: kick, epoll wake-up, used ring,
//! call. It handles EVENT_IDX the way a real device must (disable
//! notifications, drain, re-enable and re-check; signal only when
//! `needs_notification` says so), accepts the empty wake-up vhost-user-backend
//! sends when a vring is enabled, completes malformed chains with length 0
//! instead of dropping them, and provides an exit event so its worker
//! stops when the connection ends.
//!
//! Its config space is [`ECHO_CONFIG_SIZE`] bytes, initially
//! [`echo_config_pattern`], writable with SET_CONFIG.
//!
//! [`spawn_echo_daemon`] runs it behind a `VhostUserDaemon` serving one
//! connection on a thread.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost::vhost_user::GpuBackend;
use vhost_user_backend::{VhostUserBackend, VhostUserDaemon, VringRwLock, VringT};
use virtio_queue::{DescriptorChain, QueueOwnedT};
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryLoadGuard, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};

use super::{Error, F_EVENT_IDX, F_INDIRECT_DESC, F_PROTOCOL_FEATURES, F_VERSION_1};

/// Size of the echo device's config space.
pub const ECHO_CONFIG_SIZE: usize = 64;

/// The initial config space: byte `i` is `i * 7 + 1` (mod 256).
pub fn echo_config_pattern() -> Vec<u8> {
    (0..ECHO_CONFIG_SIZE)
        .map(|i| (i as u8).wrapping_mul(7).wrapping_add(1))
        .collect()
}

type Mem = GuestMemoryAtomic<GuestMemoryMmap>;

/// What the echo device offers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EchoConfig {
    /// Number of queues (each echoes independently).
    pub num_queues: usize,
    /// Largest queue size accepted (a power of two).
    pub max_queue_size: usize,
    /// Offer VIRTIO_RING_F_EVENT_IDX.
    pub offer_event_idx: bool,
    /// Offer VIRTIO_RING_F_INDIRECT_DESC.
    pub offer_indirect_desc: bool,
    /// Extra device feature bits to offer.
    pub extra_features: u64,
    /// Accept VHOST_USER_GPU_SET_SOCKET (the display socket is kept for the
    /// test, see [`EchoBackend::display`]); when `false` it is refused.
    pub accept_gpu_socket: bool,
}

impl Default for EchoConfig {
    /// Two queues of up to 1024 descriptors, EVENT_IDX and INDIRECT_DESC
    /// offered, display socket accepted.
    fn default() -> Self {
        EchoConfig {
            num_queues: 2,
            max_queue_size: 1024,
            offer_event_idx: true,
            offer_indirect_desc: true,
            extra_features: 0,
            accept_gpu_socket: true,
        }
    }
}

/// Counters kept by [`EchoBackend`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EchoStats {
    /// Chains completed with their echo.
    pub chains: u64,
    /// Bytes echoed.
    pub bytes: u64,
    /// Chains completed with length 0 because they were malformed.
    pub bad_chains: u64,
    /// Times the available ring could not be read at all.
    pub bad_rings: u64,
    /// Call eventfd writes.
    pub notifications: u64,
    /// `handle_event` calls.
    pub events: u64,
}

#[derive(Default)]
struct Counters {
    chains: AtomicU64,
    bytes: AtomicU64,
    bad_chains: AtomicU64,
    bad_rings: AtomicU64,
    notifications: AtomicU64,
    events: AtomicU64,
}

/// The echo device. See the [module docs](self).
pub struct EchoBackend {
    config: EchoConfig,
    event_idx: AtomicBool,
    acked_features: AtomicU64,
    mem: RwLock<Option<Mem>>,
    config_space: Mutex<Vec<u8>>,
    display: Mutex<Option<GpuBackend>>,
    counters: Counters,
}

impl EchoBackend {
    /// A new echo device.
    pub fn new(config: EchoConfig) -> Self {
        EchoBackend {
            config,
            event_idx: AtomicBool::new(false),
            acked_features: AtomicU64::new(0),
            mem: RwLock::new(None),
            config_space: Mutex::new(echo_config_pattern()),
            display: Mutex::new(None),
            counters: Counters::default(),
        }
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> EchoStats {
        let c = &self.counters;
        EchoStats {
            chains: c.chains.load(Ordering::Relaxed),
            bytes: c.bytes.load(Ordering::Relaxed),
            bad_chains: c.bad_chains.load(Ordering::Relaxed),
            bad_rings: c.bad_rings.load(Ordering::Relaxed),
            notifications: c.notifications.load(Ordering::Relaxed),
            events: c.events.load(Ordering::Relaxed),
        }
    }

    /// Feature bits the front end acknowledged.
    pub fn acked_features(&self) -> u64 {
        self.acked_features.load(Ordering::Relaxed)
    }

    /// The display socket received with VHOST_USER_GPU_SET_SOCKET, if any:
    /// a test can send display messages through it to a
    /// [`GpuSocketPeer`](super::GpuSocketPeer).
    pub fn display(&self) -> Option<GpuBackend> {
        self.display
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn memory(&self) -> Option<Mem> {
        self.mem.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Copies the chain's readable bytes into its writable bytes; returns the
    /// bytes written, or `None` if the chain is malformed.
    fn echo_chain(
        chain: DescriptorChain<GuestMemoryLoadGuard<GuestMemoryMmap>>,
        mem: &GuestMemoryMmap,
    ) -> Option<u32> {
        let mut reader = chain.clone().reader(mem).ok()?;
        let mut writer = chain.writer(mem).ok()?;
        // Small: it is zeroed for every chain, and echo messages are small.
        let mut buf = [0u8; 256];
        loop {
            let want = writer.available_bytes().min(buf.len());
            if want == 0 {
                break;
            }
            let n = reader.read(&mut buf[..want]).ok()?;
            if n == 0 {
                break;
            }
            writer.write_all(&buf[..n]).ok()?;
        }
        u32::try_from(writer.bytes_written()).ok()
    }

    /// Completes every available chain on `vring`. Returns the number of
    /// chains put in the used ring, or `None` if the available ring itself is
    /// unusable (nothing more can be done until the driver fixes it).
    fn drain(&self, vring: &VringRwLock, mem: &Mem) -> Option<usize> {
        let guard = mem.memory();
        let chains: Vec<_> = {
            let mut state = vring.get_mut();
            match state.get_queue_mut().iter(guard.clone()) {
                Ok(it) => it.collect(),
                Err(e) => {
                    log::warn!("echo: cannot read the available ring: {e}");
                    self.counters.bad_rings.fetch_add(1, Ordering::Relaxed);
                    return None;
                }
            }
        };
        let mut added = 0;
        for chain in chains {
            let head = chain.head_index();
            let len = match Self::echo_chain(chain, &guard) {
                Some(n) => {
                    self.counters.chains.fetch_add(1, Ordering::Relaxed);
                    self.counters
                        .bytes
                        .fetch_add(u64::from(n), Ordering::Relaxed);
                    n
                }
                None => {
                    self.counters.bad_chains.fetch_add(1, Ordering::Relaxed);
                    0
                }
            };
            match vring.add_used(head, len) {
                Ok(()) => added += 1,
                Err(e) => {
                    log::warn!("echo: cannot return head {head}: {e}");
                    self.counters.bad_chains.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        Some(added)
    }

    fn process_queue(&self, vring: &VringRwLock) {
        let Some(mem) = self.memory() else {
            // No memory table yet: nothing can be queued.
            return;
        };
        let event_idx = self.event_idx.load(Ordering::Relaxed);
        let mut added = 0;
        loop {
            if event_idx {
                if let Err(e) = vring.disable_notification() {
                    log::warn!("echo: disable_notification: {e}");
                }
            }
            match self.drain(vring, &mem) {
                Some(n) => added += n,
                None => break,
            }
            if !event_idx {
                break;
            }
            // Re-enable, and go round again if the driver added work in the
            // meantime; otherwise the kick for it could be lost.
            match vring.enable_notification() {
                Ok(true) => continue,
                Ok(false) => break,
                Err(e) => {
                    log::warn!("echo: enable_notification: {e}");
                    break;
                }
            }
        }
        // Nothing used, nothing to signal (the wake-up at vring enable, or a
        // spurious kick). With EVENT_IDX the driver also has a say.
        let notify = added > 0 && (!event_idx || vring.needs_notification().unwrap_or(true));
        if notify {
            self.counters.notifications.fetch_add(1, Ordering::Relaxed);
            if let Err(e) = vring.signal_used_queue() {
                log::warn!("echo: signal_used_queue: {e}");
            }
        }
    }
}

impl VhostUserBackend for EchoBackend {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        self.config.num_queues
    }

    fn max_queue_size(&self) -> usize {
        self.config.max_queue_size
    }

    fn features(&self) -> u64 {
        let mut f = F_VERSION_1 | F_PROTOCOL_FEATURES | self.config.extra_features;
        if self.config.offer_event_idx {
            f |= F_EVENT_IDX;
        }
        if self.config.offer_indirect_desc {
            f |= F_INDIRECT_DESC;
        }
        f
    }

    fn acked_features(&self, features: u64) {
        self.acked_features.store(features, Ordering::Relaxed);
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::CONFIG | VhostUserProtocolFeatures::MQ
    }

    fn set_event_idx(&self, enabled: bool) {
        self.event_idx.store(enabled, Ordering::Relaxed);
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        let cs = self.config_space.lock().unwrap_or_else(|p| p.into_inner());
        let (start, len) = (offset as usize, size as usize);
        match start.checked_add(len) {
            Some(end) if end <= cs.len() => cs[start..end].to_vec(),
            // An empty answer tells the front end the request failed.
            _ => Vec::new(),
        }
    }

    fn set_config(&self, offset: u32, buf: &[u8]) -> io::Result<()> {
        let mut cs = self.config_space.lock().unwrap_or_else(|p| p.into_inner());
        let start = offset as usize;
        match start.checked_add(buf.len()) {
            Some(end) if end <= cs.len() => {
                cs[start..end].copy_from_slice(buf);
                Ok(())
            }
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "config write out of range",
            )),
        }
    }

    fn update_memory(&self, mem: Mem) -> io::Result<()> {
        *self.mem.write().unwrap_or_else(|p| p.into_inner()) = Some(mem);
        Ok(())
    }

    fn set_gpu_socket(&self, gpu_backend: GpuBackend) -> io::Result<()> {
        if !self.config.accept_gpu_socket {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "echo device configured without a display",
            ));
        }
        *self.display.lock().unwrap_or_else(|p| p.into_inner()) = Some(gpu_backend);
        Ok(())
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        // The worker keeps the notifier and registers the consumer with its
        // epoll; a fresh pair per worker is all it needs.
        match new_event_consumer_and_notifier(EventFlag::NONBLOCK | EventFlag::CLOEXEC) {
            Ok(pair) => Some(pair),
            Err(e) => {
                log::error!("echo: cannot create exit event: {e}");
                None
            }
        }
    }

    fn handle_event(
        &self,
        device_event: u16,
        _evset: EventSet,
        vrings: &[VringRwLock],
        _thread_id: usize,
    ) -> io::Result<()> {
        self.counters.events.fetch_add(1, Ordering::Relaxed);
        // Indexes past the vrings are the worker's own events; and an error
        // returned here would stop the worker for good, so none is.
        if let Some(vring) = vrings.get(usize::from(device_event)) {
            self.process_queue(vring);
        }
        Ok(())
    }
}

/// A running echo daemon; see [`spawn_echo_daemon`].
pub struct EchoDaemon {
    backend: Arc<EchoBackend>,
    path: PathBuf,
    thread: Option<JoinHandle<Result<(), String>>>,
}

impl std::fmt::Debug for EchoDaemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EchoDaemon")
            .field("path", &self.path)
            .field("finished", &self.is_finished())
            .finish()
    }
}

impl EchoDaemon {
    /// The device, for its counters.
    pub fn backend(&self) -> &Arc<EchoBackend> {
        &self.backend
    }

    /// Counters of the device.
    pub fn stats(&self) -> EchoStats {
        self.backend.stats()
    }

    /// Whether the daemon has ended (its one connection closed).
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }

    /// Waits up to `timeout` for the daemon to end and returns how it ended.
    pub fn wait(&mut self, timeout: Duration) -> Result<(), Error> {
        let deadline = Instant::now() + timeout;
        while !self.is_finished() {
            if Instant::now() >= deadline {
                return Err(Error::Daemon(format!("still running after {timeout:?}")));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        match self.thread.take() {
            None => Ok(()),
            Some(t) => match t.join() {
                Ok(r) => r.map_err(Error::Daemon),
                Err(_) => Err(Error::Daemon("daemon thread panicked".into())),
            },
        }
    }

    /// Stops a daemon still waiting for its connection (by connecting and
    /// closing at once) and waits up to `timeout` for it to end. A daemon
    /// serving a live connection ends when that connection closes.
    pub fn stop(&mut self, timeout: Duration) -> Result<(), Error> {
        if !self.is_finished() {
            let _ = std::os::unix::net::UnixStream::connect(&self.path);
        }
        self.wait(timeout)
    }
}

impl Drop for EchoDaemon {
    fn drop(&mut self) {
        if let Err(e) = self.stop(Duration::from_secs(2)) {
            log::warn!("echo daemon on {}: {e}", self.path.display());
        }
    }
}

/// Starts an echo daemon with the default [`EchoConfig`] serving one
/// connection on `socket_path` (replacing any stale socket file).
pub fn spawn_echo_daemon(socket_path: impl AsRef<Path>) -> Result<EchoDaemon, Error> {
    spawn_echo_daemon_with(socket_path, EchoConfig::default())
}

/// Starts an echo daemon with `config`; see [`spawn_echo_daemon`].
pub fn spawn_echo_daemon_with(
    socket_path: impl AsRef<Path>,
    config: EchoConfig,
) -> Result<EchoDaemon, Error> {
    let path = socket_path.as_ref().to_path_buf();
    let backend = Arc::new(EchoBackend::new(config));
    let mut daemon = VhostUserDaemon::new(
        "testvmm-echo".to_string(),
        backend.clone(),
        GuestMemoryAtomic::new(GuestMemoryMmap::new()),
    )
    .map_err(|e| Error::Daemon(e.to_string()))?;
    let serve_path = path.clone();
    let thread = std::thread::Builder::new()
        .name("testvmm-echo".into())
        .spawn(move || daemon.serve(&serve_path).map_err(|e| e.to_string()))
        .map_err(Error::Io)?;
    Ok(EchoDaemon {
        backend,
        path,
        thread: Some(thread),
    })
}
