//! An in-process vhost-user front end for tests and benchmarks.
//!
//! [`TestVmm`] plays QEMU over a real unix socket: it connects to a
//! vhost-user back end, negotiates features the way QEMU does, hands over
//! memfd-backed guest RAM in SET_MEM_TABLE, sets up split virtqueues whose
//! rings it drives itself ([`DriverQueue`]), and can open the
//! vhost-user-gpu display channel and play QEMU's display side
//! ([`GpuSocketPeer`]). No QEMU, no guest kernel: a test writes requests
//! into guest memory, kicks, and reads what the device wrote.
//!
//! ```no_run
//! use std::time::Duration;
//! use vhost_user_mali::testvmm::{spawn_echo_daemon, TestVmm, VmmConfig};
//!
//! # fn main() -> Result<(), vhost_user_mali::testvmm::Error> {
//! let sock = std::env::temp_dir().join("echo-doc.sock");
//! let _daemon = spawn_echo_daemon(&sock)?;
//! let mut vmm = TestVmm::connect(&sock, VmmConfig::default())?;
//! let reply = vmm.request(0, b"ping", 4, Duration::from_secs(1))?;
//! assert_eq!(reply, b"ping");
//! vmm.disconnect()?;
//! # Ok(())
//! # }
//! ```
//!
//! Parts:
//! - [`memory`]: [`MemoryLayout`] (one or more memfd regions, optionally with
//!   holes) and the [`BumpAllocator`] that hands out guest buffers.
//! - [`queue`]: [`DriverQueue`], the driver side of a split ring, EVENT_IDX
//!   aware, with raw access for hostile tests.
//! - [`gpu_socket`]: [`GpuSocketPeer`], QEMU's end of the vhost-user-gpu
//!   display socket, with dead and slow display simulation.
//! - [`echo`]: [`EchoBackend`], a minimal back end that copies each chain's
//!   readable bytes into its writable ones: the transport baseline.
//! - [`cpu`]: per-thread CPU time from `/proc`, to prove a worker is not
//!   spinning on a malformed queue.
//! - [`gpu_driver`]: a virtio-gpu driver on top of [`TestVmm`], and starting
//!   the daemon under test.
//!
//! Every blocking call is bounded: connecting retries until
//! [`VmmConfig::connect_timeout`], each control-plane message must be
//! answered within [`VmmConfig::control_timeout`] (a watchdog shuts the
//! socket down otherwise), and data-plane waits take explicit timeouts.

pub mod cpu;
pub mod echo;
pub mod gpu_driver;
pub mod gpu_socket;
pub mod memory;
pub mod queue;
mod watchdog;

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use vhost::vhost_user::message::{VhostUserConfigFlags, VhostUserHeaderFlag};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::vhost_user::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_bindings::bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::bindings::virtio_ring::{
    VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

pub use echo::{spawn_echo_daemon, spawn_echo_daemon_with, EchoBackend, EchoConfig, EchoDaemon};
pub use gpu_socket::{DisplayBehaviour, DisplayConfig, GpuMessage, GpuSocketPeer, ScanoutInfo};
pub use memory::{BumpAllocator, MemoryLayout, RegionSpec, PAGE_SIZE};
pub use queue::{Buf, DriverQueue, RingLayout, UsedElem, WaitMode};

use watchdog::Watchdog;

/// VIRTIO_F_VERSION_1 as a feature mask.
pub const F_VERSION_1: u64 = 1 << VIRTIO_F_VERSION_1;
/// VIRTIO_RING_F_EVENT_IDX as a feature mask.
pub const F_EVENT_IDX: u64 = 1 << VIRTIO_RING_F_EVENT_IDX;
/// VIRTIO_RING_F_INDIRECT_DESC as a feature mask.
pub const F_INDIRECT_DESC: u64 = 1 << VIRTIO_RING_F_INDIRECT_DESC;
/// VHOST_USER_F_PROTOCOL_FEATURES as a feature mask.
pub const F_PROTOCOL_FEATURES: u64 = VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();

/// Request code of VHOST_USER_GPU_SET_SOCKET (vhost-user spec).
pub const VHOST_USER_GPU_SET_SOCKET: u32 = 33;
/// Request code of VHOST_USER_GET_CONFIG (vhost-user spec).
pub const VHOST_USER_GET_CONFIG: u32 = 24;
/// End of the config space as vhost-user addresses it.
const VHOST_USER_CONFIG_SPACE_MAX: u32 = 0x1000;
/// Byte written over a response buffer before the device fills it, so bytes
/// a device claims but never wrote are recognisable.
pub const RESPONSE_POISON: u8 = 0x5a;

/// Errors of the test VMM.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The socket could not be connected before the connect timeout.
    #[error("cannot connect to {path}: {source}")]
    Connect {
        /// Socket path.
        path: PathBuf,
        /// Last connect error.
        #[source]
        source: std::io::Error,
    },
    /// A vhost-user control message failed.
    #[error("vhost-user {op} failed: {source}")]
    Control {
        /// The message.
        op: &'static str,
        /// What the vhost crate reported.
        #[source]
        source: vhost::Error,
    },
    /// The back end did not answer a control message in time; the
    /// connection has been shut down.
    #[error("vhost-user {op}: no answer within {timeout:?}")]
    ControlTimeout {
        /// The message.
        op: &'static str,
        /// The deadline that passed.
        timeout: Duration,
    },
    /// The back end answered a hand-built control message badly or refused it.
    #[error("vhost-user {op}: {reason}")]
    Rejected {
        /// The message.
        op: &'static str,
        /// What was wrong.
        reason: String,
    },
    /// A feature the operation needs was not negotiated.
    #[error("{0} was not negotiated")]
    NotNegotiated(&'static str),
    /// The configuration or an argument is invalid.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// memfd creation or sizing failed.
    #[error("memfd: {0}")]
    Memfd(#[source] std::io::Error),
    /// Guest memory could not be mapped.
    #[error("cannot map guest memory: {0}")]
    MemoryMap(String),
    /// A guest memory access failed.
    #[error("guest memory access: {0}")]
    Guest(#[from] vm_memory::GuestMemoryError),
    /// An OS-level operation (eventfd, epoll, socket) failed.
    #[error("I/O: {0}")]
    Io(#[source] std::io::Error),
    /// The bump allocator has no room left.
    #[error("out of guest memory for {len} bytes aligned to {align}")]
    OutOfGuestMemory {
        /// Requested length.
        len: u64,
        /// Requested alignment.
        align: u64,
    },
    /// There is no such queue.
    #[error("no queue {0}")]
    NoSuchQueue(usize),
    /// Not enough free descriptors.
    #[error("queue full: {needed} descriptors needed, {free} free")]
    QueueFull {
        /// Descriptors the chain needs.
        needed: usize,
        /// Descriptors free.
        free: usize,
    },
    /// A chain must have at least one buffer.
    #[error("empty descriptor chain")]
    EmptyChain,
    /// An indirect table longer than the pool slot (or than 65535 entries).
    #[error("indirect table of {len} entries exceeds {max}")]
    IndirectTooLong {
        /// Entries requested.
        len: usize,
        /// Maximum.
        max: usize,
    },
    /// A raw descriptor index outside the table.
    #[error("descriptor index {index} outside a table of {size}")]
    DescriptorIndex {
        /// Index given.
        index: u16,
        /// Queue size.
        size: u16,
    },
    /// The device did not complete a request in time.
    #[error("queue {queue}: no completion within {timeout:?}")]
    Timeout {
        /// Queue.
        queue: usize,
        /// How long we waited.
        timeout: Duration,
    },
    /// The device claims to have written more than the writable space.
    #[error("device reports {len} bytes written into {capacity} writable bytes")]
    UsedLenTooLarge {
        /// Length in the used element.
        len: u32,
        /// Writable bytes in the chain.
        capacity: u32,
    },
    /// The device broke its protocol: a malformed or unexpected answer on
    /// the data path (used by driver layers built on this one).
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// The echo daemon could not be built or failed.
    #[error("echo daemon: {0}")]
    Daemon(String),
}

/// How the test VMM sets up the device.
///
/// Build it with the `with_*` / `without_*` methods from
/// [`VmmConfig::default`]: two queues of 256 descriptors, 64 MiB of RAM in one
/// region, VERSION_1 + EVENT_IDX + INDIRECT_DESC accepted when offered,
/// protocol features CONFIG + REPLY_ACK + MQ accepted when offered,
/// NEED_REPLY on every message once REPLY_ACK is negotiated, precise waits.
#[derive(Clone, Debug)]
pub struct VmmConfig {
    /// Queues to set up (virtio-gpu: 2, control and cursor).
    pub num_queues: usize,
    /// Descriptors per queue (a power of two).
    pub queue_size: u16,
    /// Guest RAM layout.
    pub memory: MemoryLayout,
    /// Transport feature bits to accept when offered.
    pub accept_features: u64,
    /// Device-specific feature bits to accept when offered.
    pub device_features: u64,
    /// vhost-user protocol features to accept when offered.
    pub accept_protocol_features: VhostUserProtocolFeatures,
    /// Set NEED_REPLY on every message when REPLY_ACK is negotiated, so each
    /// call returns only once the back end has acted on it.
    pub need_reply: bool,
    /// Entries per pooled indirect table.
    pub indirect_max: u16,
    /// Guest RAM reserved for [`TestVmm::submit`] / [`TestVmm::request`]
    /// buffers.
    pub io_arena_size: u64,
    /// How long [`TestVmm::connect`] keeps retrying while the daemon starts.
    pub connect_timeout: Duration,
    /// How long any control message may take.
    pub control_timeout: Duration,
    /// Send the SET_VRING_* sequence for every queue during connect. When
    /// `false`, call [`TestVmm::start_queue`] yourself.
    pub start_queues: bool,
    /// How the queues bound their waits for completions.
    pub wait_mode: WaitMode,
    /// Send SET_MEM_TABLE during connect. When `false` the back end has no
    /// guest memory until [`TestVmm::set_mem_table_again`]; queues cannot
    /// be started before that (the back end refuses their addresses).
    pub send_mem_table: bool,
}

impl Default for VmmConfig {
    fn default() -> Self {
        VmmConfig {
            num_queues: 2,
            queue_size: 256,
            memory: MemoryLayout::default(),
            accept_features: F_VERSION_1 | F_EVENT_IDX | F_INDIRECT_DESC | F_PROTOCOL_FEATURES,
            device_features: 0,
            accept_protocol_features: VhostUserProtocolFeatures::CONFIG
                | VhostUserProtocolFeatures::REPLY_ACK
                | VhostUserProtocolFeatures::MQ,
            need_reply: true,
            indirect_max: 32,
            io_arena_size: 4 << 20,
            connect_timeout: Duration::from_secs(5),
            control_timeout: Duration::from_secs(5),
            start_queues: true,
            wait_mode: WaitMode::Precise,
            send_mem_table: true,
        }
    }
}

impl VmmConfig {
    /// Sets the number of queues.
    pub fn with_queues(mut self, n: usize) -> Self {
        self.num_queues = n;
        self
    }

    /// Sets the queue size.
    pub fn with_queue_size(mut self, size: u16) -> Self {
        self.queue_size = size;
        self
    }

    /// Sets the guest RAM layout.
    pub fn with_memory(mut self, layout: MemoryLayout) -> Self {
        self.memory = layout;
        self
    }

    /// Declines VIRTIO_RING_F_EVENT_IDX.
    pub fn without_event_idx(mut self) -> Self {
        self.accept_features &= !F_EVENT_IDX;
        self
    }

    /// Declines VIRTIO_RING_F_INDIRECT_DESC.
    pub fn without_indirect_desc(mut self) -> Self {
        self.accept_features &= !F_INDIRECT_DESC;
        self
    }

    /// Also accepts these device feature bits when offered.
    pub fn with_device_features(mut self, bits: u64) -> Self {
        self.device_features |= bits;
        self
    }

    /// Replaces the set of protocol features to accept.
    pub fn with_protocol_features(mut self, f: VhostUserProtocolFeatures) -> Self {
        self.accept_protocol_features = f;
        self
    }

    /// Sends messages without NEED_REPLY (asynchronous, like QEMU without
    /// REPLY_ACK).
    pub fn without_need_reply(mut self) -> Self {
        self.need_reply = false;
        self
    }

    /// Sets the control-plane deadline.
    pub fn with_control_timeout(mut self, t: Duration) -> Self {
        self.control_timeout = t;
        self
    }

    /// Sets how long to retry connecting.
    pub fn with_connect_timeout(mut self, t: Duration) -> Self {
        self.connect_timeout = t;
        self
    }

    /// Sets how the queues bound their waits (see [`WaitMode`]).
    pub fn with_wait_mode(mut self, mode: WaitMode) -> Self {
        self.wait_mode = mode;
        self
    }

    /// Skips SET_MEM_TABLE (and queue setup, which needs it).
    pub fn without_mem_table(mut self) -> Self {
        self.send_mem_table = false;
        self.start_queues = false;
        self
    }

    /// Leaves queue setup to [`TestVmm::start_queue`].
    pub fn without_queue_start(mut self) -> Self {
        self.start_queues = false;
        self
    }
}

/// A request handed to the device by [`TestVmm::submit`], to be collected
/// with [`TestVmm::complete`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pending {
    /// Queue it was submitted on.
    pub queue: usize,
    /// Head descriptor of its chain.
    pub head: u16,
    /// Guest address of the request bytes.
    pub request: GuestAddress,
    /// Guest address of the writable response buffer.
    pub response: GuestAddress,
    /// Size of the writable response buffer.
    pub response_len: u32,
}

/// A reply read by [`TestVmm::recv_raw_reply`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawReply {
    /// Request code in the header.
    pub request: u32,
    /// Header flags.
    pub flags: u32,
    /// Payload bytes.
    pub payload: Vec<u8>,
}

/// The in-process front end. See the [module docs](self).
pub struct TestVmm {
    frontend: Frontend,
    socket: UnixStream,
    watchdog: Watchdog,
    config: VmmConfig,
    mem: GuestMemoryMmap,
    offered_features: u64,
    features: u64,
    offered_protocol_features: VhostUserProtocolFeatures,
    protocol_features: VhostUserProtocolFeatures,
    need_reply: bool,
    queues: Vec<DriverQueue>,
    bases: Vec<u16>,
    alloc: BumpAllocator,
    arena: BumpAllocator,
    outstanding: usize,
}

impl std::fmt::Debug for TestVmm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestVmm")
            .field("features", &format_args!("{:#x}", self.features))
            .field("protocol_features", &self.protocol_features)
            .field("queues", &self.queues)
            .finish_non_exhaustive()
    }
}

/// Runs one front-end call under the watchdog, naming it for errors.
fn control<T>(
    dog: &Watchdog,
    frontend: &mut Frontend,
    timeout: Duration,
    op: &'static str,
    f: impl FnOnce(&mut Frontend) -> vhost::Result<T>,
) -> Result<T, Error> {
    let armed = dog.arm(timeout);
    let result = f(frontend);
    let fired = armed.fired();
    drop(armed);
    match result {
        Ok(v) => Ok(v),
        Err(_) if fired => Err(Error::ControlTimeout { op, timeout }),
        Err(source) => Err(Error::Control { op, source }),
    }
}

/// Connects to `path`, retrying while the daemon is not listening yet.
fn connect_with_retry(path: &Path, timeout: Duration) -> Result<UnixStream, Error> {
    let deadline = Instant::now() + timeout;
    loop {
        match UnixStream::connect(path) {
            Ok(s) => return Ok(s),
            Err(e) => {
                let retriable = matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                );
                if !retriable || Instant::now() >= deadline {
                    return Err(Error::Connect {
                        path: path.to_path_buf(),
                        source: e,
                    });
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
}

impl TestVmm {
    /// Connects to the back end listening on `socket_path` (retrying for
    /// [`VmmConfig::connect_timeout`] while it starts) and performs the
    /// handshake: SET_OWNER, GET_FEATURES, GET/SET_PROTOCOL_FEATURES,
    /// GET_QUEUE_NUM (with MQ), SET_FEATURES, SET_MEM_TABLE and, unless
    /// disabled, SET_VRING_NUM/BASE/ADDR/KICK/CALL and SET_VRING_ENABLE for
    /// each queue.
    pub fn connect(socket_path: impl AsRef<Path>, config: VmmConfig) -> Result<TestVmm, Error> {
        if config.num_queues == 0 {
            return Err(Error::InvalidConfig("no queues".into()));
        }
        let path = socket_path.as_ref();
        let stream = connect_with_retry(path, config.connect_timeout)?;
        let socket = stream.try_clone().map_err(Error::Io)?;
        let watchdog = Watchdog::new(stream.try_clone().map_err(Error::Io)?).map_err(Error::Io)?;
        let frontend = Frontend::from_stream(stream, config.num_queues as u64);
        let mem = memory::create_guest_memory(&config.memory)?;
        let alloc = BumpAllocator::new(config.memory.regions());
        let mut vmm = TestVmm {
            frontend,
            socket,
            watchdog,
            mem,
            offered_features: 0,
            features: 0,
            offered_protocol_features: VhostUserProtocolFeatures::empty(),
            protocol_features: VhostUserProtocolFeatures::empty(),
            need_reply: false,
            queues: Vec::new(),
            bases: vec![0; config.num_queues],
            alloc,
            arena: BumpAllocator::new(&[]),
            outstanding: 0,
            config,
        };
        vmm.handshake()?;
        vmm.layout_queues()?;
        if vmm.config.start_queues {
            for i in 0..vmm.config.num_queues {
                vmm.start_queue(i)?;
            }
        }
        Ok(vmm)
    }

    fn ctl<T>(
        &mut self,
        op: &'static str,
        f: impl FnOnce(&mut Frontend) -> vhost::Result<T>,
    ) -> Result<T, Error> {
        control(
            &self.watchdog,
            &mut self.frontend,
            self.config.control_timeout,
            op,
            f,
        )
    }

    fn handshake(&mut self) -> Result<(), Error> {
        self.ctl("SET_OWNER", |f| f.set_owner())?;
        self.offered_features = self.ctl("GET_FEATURES", |f| f.get_features())?;
        let wanted = self.config.accept_features | self.config.device_features;
        let acked = self.offered_features & wanted;

        if self.offered_features & F_PROTOCOL_FEATURES != 0 {
            self.offered_protocol_features =
                self.ctl("GET_PROTOCOL_FEATURES", |f| f.get_protocol_features())?;
            let pf = self.offered_protocol_features & self.config.accept_protocol_features;
            self.ctl("SET_PROTOCOL_FEATURES", |f| f.set_protocol_features(pf))?;
            self.protocol_features = pf;
            if self.config.need_reply && pf.contains(VhostUserProtocolFeatures::REPLY_ACK) {
                self.frontend.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
                self.need_reply = true;
            }
            if pf.contains(VhostUserProtocolFeatures::MQ) {
                let n = self.ctl("GET_QUEUE_NUM", |f| f.get_queue_num())?;
                if n < self.config.num_queues as u64 {
                    return Err(Error::InvalidConfig(format!(
                        "back end has {n} queues, {} requested",
                        self.config.num_queues
                    )));
                }
            }
        }

        self.ctl("SET_FEATURES", |f| f.set_features(acked))?;
        self.features = acked;
        if self.config.send_mem_table {
            self.send_mem_table()?;
        }
        Ok(())
    }

    fn send_mem_table(&mut self) -> Result<(), Error> {
        let regions = self
            .mem
            .iter()
            .map(VhostUserMemoryRegionInfo::from_guest_region)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| Error::Control {
                op: "SET_MEM_TABLE",
                source,
            })?;
        self.ctl("SET_MEM_TABLE", |f| f.set_mem_table(&regions).map(|_| ()))
    }

    /// Places the rings, the indirect pools and the I/O arena, and builds the
    /// driver queues.
    fn layout_queues(&mut self) -> Result<(), Error> {
        // Never hand out guest-physical page 0: a zero address is always a bug.
        if self.config.memory.regions()[0].gpa == 0 {
            self.alloc.alloc_in_region(0, PAGE_SIZE, PAGE_SIZE)?;
        }
        let size = self.config.queue_size;
        let event_idx = self.features & F_EVENT_IDX != 0;
        let mut queues = Vec::with_capacity(self.config.num_queues);
        for i in 0..self.config.num_queues {
            let mut place = |len: u64| self.alloc.alloc(len, PAGE_SIZE);
            let layout = RingLayout {
                size,
                desc_table: place(RingLayout::desc_table_bytes(size))?,
                avail_ring: place(RingLayout::avail_ring_bytes(size))?,
                used_ring: place(RingLayout::used_ring_bytes(size))?,
                indirect_pool: place(
                    RingLayout::indirect_pool_bytes(size, self.config.indirect_max).max(1),
                )?,
                indirect_max: self.config.indirect_max,
            };
            let mut q = DriverQueue::new(i, layout, self.mem.clone(), event_idx)?;
            q.set_wait_mode(self.config.wait_mode)?;
            queues.push(q);
        }
        self.queues = queues;
        let arena_len = self.config.io_arena_size.max(PAGE_SIZE);
        let start = self.alloc.alloc(arena_len, PAGE_SIZE)?;
        self.arena = BumpAllocator::new(&[RegionSpec {
            gpa: start.0,
            size: arena_len,
        }]);
        self.alloc.set_floor();
        Ok(())
    }

    /// This process's virtual address of guest address `gpa`: what vring
    /// addresses in SET_VRING_ADDR are expressed in.
    pub fn host_address(&self, gpa: GuestAddress) -> Result<u64, Error> {
        Ok(self.mem.get_host_address(gpa)? as u64)
    }

    /// Sends SET_VRING_NUM, SET_VRING_BASE, SET_VRING_ADDR, SET_VRING_KICK,
    /// SET_VRING_CALL and (with PROTOCOL_FEATURES) SET_VRING_ENABLE(1) for
    /// queue `i`, in QEMU's order. The base is 0, or what the last
    /// [`stop_queue`](Self::stop_queue) returned.
    pub fn start_queue(&mut self, i: usize) -> Result<(), Error> {
        let layout = *self.queues.get(i).ok_or(Error::NoSuchQueue(i))?.layout();
        let cfg = VringConfigData {
            queue_max_size: layout.size,
            queue_size: layout.size,
            flags: 0,
            desc_table_addr: self.host_address(layout.desc_table)?,
            used_ring_addr: self.host_address(layout.used_ring)?,
            avail_ring_addr: self.host_address(layout.avail_ring)?,
            log_addr: None,
        };
        let base = self.bases[i];
        let timeout = self.config.control_timeout;
        let (dog, fe, queues) = (&self.watchdog, &mut self.frontend, &self.queues);
        control(dog, fe, timeout, "SET_VRING_NUM", |f| {
            f.set_vring_num(i, layout.size)
        })?;
        control(dog, fe, timeout, "SET_VRING_BASE", |f| {
            f.set_vring_base(i, base)
        })?;
        control(dog, fe, timeout, "SET_VRING_ADDR", |f| {
            f.set_vring_addr(i, &cfg)
        })?;
        control(dog, fe, timeout, "SET_VRING_KICK", |f| {
            f.set_vring_kick(i, queues[i].kick_fd())
        })?;
        control(dog, fe, timeout, "SET_VRING_CALL", |f| {
            f.set_vring_call(i, queues[i].call_fd())
        })?;
        if self.features & F_PROTOCOL_FEATURES != 0 {
            self.enable_queue(i, true)?;
        }
        Ok(())
    }

    /// Sends SET_VRING_ENABLE for queue `i`.
    pub fn enable_queue(&mut self, i: usize, enable: bool) -> Result<(), Error> {
        if i >= self.queues.len() {
            return Err(Error::NoSuchQueue(i));
        }
        self.ctl("SET_VRING_ENABLE", |f| f.set_vring_enable(i, enable))
    }

    /// Stops queue `i` the way QEMU does: SET_VRING_ENABLE(0) (with
    /// PROTOCOL_FEATURES), then GET_VRING_BASE. Returns the device's next
    /// available index, which a later [`start_queue`](Self::start_queue)
    /// sends back as the base.
    pub fn stop_queue(&mut self, i: usize) -> Result<u16, Error> {
        if i >= self.queues.len() {
            return Err(Error::NoSuchQueue(i));
        }
        if self.features & F_PROTOCOL_FEATURES != 0 {
            self.enable_queue(i, false)?;
        }
        let base = self.ctl("GET_VRING_BASE", |f| f.get_vring_base(i))?;
        let base = u16::try_from(base).map_err(|_| Error::Rejected {
            op: "GET_VRING_BASE",
            reason: format!("base {base} does not fit a split ring index"),
        })?;
        self.bases[i] = base;
        Ok(base)
    }

    /// Negotiated virtio feature bits.
    pub fn features(&self) -> u64 {
        self.features
    }

    /// Virtio feature bits the back end offered.
    pub fn offered_features(&self) -> u64 {
        self.offered_features
    }

    /// Negotiated vhost-user protocol features.
    pub fn protocol_features(&self) -> VhostUserProtocolFeatures {
        self.protocol_features
    }

    /// Protocol features the back end offered.
    pub fn offered_protocol_features(&self) -> VhostUserProtocolFeatures {
        self.offered_protocol_features
    }

    /// Whether messages carry NEED_REPLY (each call waits for the ack).
    pub fn need_reply(&self) -> bool {
        self.need_reply
    }

    /// The configuration this VMM was built with.
    pub fn config(&self) -> &VmmConfig {
        &self.config
    }

    /// Guest RAM, as this process maps it.
    pub fn mem(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// Number of queues.
    pub fn num_queues(&self) -> usize {
        self.queues.len()
    }

    /// Driver side of queue `i`.
    ///
    /// # Panics
    ///
    /// If `i` is not a queue; use [`try_queue`](Self::try_queue) to avoid.
    pub fn queue(&mut self, i: usize) -> &mut DriverQueue {
        &mut self.queues[i]
    }

    /// Driver side of queue `i`, or `None`.
    pub fn try_queue(&mut self, i: usize) -> Option<&mut DriverQueue> {
        self.queues.get_mut(i)
    }

    /// Reads `len` bytes of the device's config space at `offset`
    /// (GET_CONFIG; needs the CONFIG protocol feature).
    ///
    /// The exchange is done by hand rather than through the vhost crate: a
    /// back end that refuses answers with a header-only reply, which vhost
    /// 0.18's front end cannot parse (it waits for the missing payload until
    /// the watchdog kills the connection). Here a refusal is
    /// [`Error::Rejected`] and the connection stays usable.
    pub fn get_config(&mut self, offset: u32, len: u32) -> Result<Vec<u8>, Error> {
        if !self
            .protocol_features
            .contains(VhostUserProtocolFeatures::CONFIG)
        {
            return Err(Error::NotNegotiated("VHOST_USER_PROTOCOL_F_CONFIG"));
        }
        let op = "GET_CONFIG";
        let mut payload = Vec::with_capacity(12 + len as usize);
        payload.extend_from_slice(&offset.to_le_bytes());
        payload.extend_from_slice(&len.to_le_bytes());
        payload.extend_from_slice(&0u32.to_le_bytes()); // flags
        payload.resize(12 + len as usize, 0);
        self.send_raw_message(VHOST_USER_GET_CONFIG, self.default_flags(), &payload, &[])?;
        let reply = self.recv_raw_reply_for(op, 12 + VHOST_USER_CONFIG_SPACE_MAX)?;
        if reply.request != VHOST_USER_GET_CONFIG
            || reply.flags & VhostUserHeaderFlag::REPLY.bits() == 0
            || reply.payload.len() < 12
        {
            return Err(Error::Rejected {
                op,
                reason: format!("malformed reply {reply:?}"),
            });
        }
        let field = |i: usize| {
            let p = &reply.payload;
            u32::from_le_bytes([p[i], p[i + 1], p[i + 2], p[i + 3]])
        };
        let (r_offset, r_size) = (field(0), field(4));
        if r_size == 0 {
            return Err(Error::Rejected {
                op,
                reason: format!("back end refused {len} bytes at {offset}"),
            });
        }
        if r_offset != offset || r_size != len || reply.payload.len() != 12 + len as usize {
            return Err(Error::Rejected {
                op,
                reason: format!(
                    "asked {len} bytes at {offset}, got {r_size} at {r_offset} in {} bytes",
                    reply.payload.len()
                ),
            });
        }
        Ok(reply.payload[12..].to_vec())
    }

    /// Writes `data` into the device's config space at `offset` (SET_CONFIG).
    pub fn set_config(&mut self, offset: u32, data: &[u8]) -> Result<(), Error> {
        if !self
            .protocol_features
            .contains(VhostUserProtocolFeatures::CONFIG)
        {
            return Err(Error::NotNegotiated("VHOST_USER_PROTOCOL_F_CONFIG"));
        }
        self.ctl("SET_CONFIG", |f| {
            f.set_config(offset, VhostUserConfigFlags::empty(), data)
        })
    }

    /// Sends the memory table (again): the back end sees a memory update,
    /// or its first memory if [`VmmConfig::send_mem_table`] was off.
    pub fn set_mem_table_again(&mut self) -> Result<(), Error> {
        self.send_mem_table()
    }

    /// Allocates `len` bytes of guest RAM aligned to `align` (a power of
    /// two), outside the rings and the I/O arena.
    pub fn alloc(&mut self, len: u64, align: u64) -> Result<GuestAddress, Error> {
        self.alloc.alloc(len, align)
    }

    /// Allocates from memory region `region` only.
    pub fn alloc_in_region(
        &mut self,
        region: usize,
        len: u64,
        align: u64,
    ) -> Result<GuestAddress, Error> {
        self.alloc.alloc_in_region(region, len, align)
    }

    /// Forgets every [`alloc`](Self::alloc) allocation.
    pub fn reset_alloc(&mut self) {
        self.alloc.reset();
    }

    /// Writes bytes into guest RAM.
    pub fn write_guest(&self, addr: GuestAddress, data: &[u8]) -> Result<(), Error> {
        self.mem.write_slice(data, addr)?;
        Ok(())
    }

    /// Reads bytes from guest RAM.
    pub fn read_guest(&self, addr: GuestAddress, len: usize) -> Result<Vec<u8>, Error> {
        let mut v = vec![0u8; len];
        self.mem.read_slice(&mut v, addr)?;
        Ok(v)
    }

    /// Writes `request` into guest RAM, adds the chain [readable request,
    /// writable response of `response_len` bytes] to queue `queue` and
    /// publishes it without kicking. Buffers come from the I/O arena, which
    /// is recycled whenever nothing submitted is outstanding. Either part may
    /// be empty, not both.
    pub fn submit(
        &mut self,
        queue: usize,
        request: &[u8],
        response_len: usize,
    ) -> Result<Pending, Error> {
        if queue >= self.queues.len() {
            return Err(Error::NoSuchQueue(queue));
        }
        let req_len = u32::try_from(request.len())
            .map_err(|_| Error::InvalidConfig("request longer than 4 GiB".into()))?;
        let resp_len = u32::try_from(response_len)
            .map_err(|_| Error::InvalidConfig("response longer than 4 GiB".into()))?;
        if self.outstanding == 0 {
            self.arena.reset();
        }
        let req_addr = self.arena.alloc(u64::from(req_len).max(1), 16)?;
        let resp_addr = self.arena.alloc(u64::from(resp_len).max(1), 16)?;
        self.mem.write_slice(request, req_addr)?;
        if resp_len > 0 {
            let poison = vec![RESPONSE_POISON; response_len];
            self.mem.write_slice(&poison, resp_addr)?;
        }
        let mut bufs = [Buf::readable(req_addr, req_len); 2];
        let mut n = 0;
        if req_len > 0 {
            n += 1;
        }
        if resp_len > 0 {
            bufs[n] = Buf::writable(resp_addr, resp_len);
            n += 1;
        }
        let head = self.queues[queue].add_chain(&bufs[..n])?;
        self.outstanding += 1;
        Ok(Pending {
            queue,
            head,
            request: req_addr,
            response: resp_addr,
            response_len: resp_len,
        })
    }

    /// Kicks queue `queue`, respecting the device's notification
    /// suppression. Returns whether the eventfd was written.
    pub fn kick(&mut self, queue: usize) -> Result<bool, Error> {
        self.queues
            .get_mut(queue)
            .ok_or(Error::NoSuchQueue(queue))?
            .kick()
    }

    /// Waits up to `timeout` for `pending` to complete and returns exactly
    /// the bytes the device says it wrote (the used length).
    pub fn complete(&mut self, pending: Pending, timeout: Duration) -> Result<Vec<u8>, Error> {
        let q = self
            .queues
            .get_mut(pending.queue)
            .ok_or(Error::NoSuchQueue(pending.queue))?;
        let used = q.wait_for(pending.head, timeout).ok_or(Error::Timeout {
            queue: pending.queue,
            timeout,
        })?;
        self.outstanding = self.outstanding.saturating_sub(1);
        if used.len > pending.response_len {
            return Err(Error::UsedLenTooLarge {
                len: used.len,
                capacity: pending.response_len,
            });
        }
        self.read_guest(pending.response, used.len as usize)
    }

    /// [`submit`](Self::submit), [`kick`](Self::kick) and
    /// [`complete`](Self::complete) in one call.
    pub fn request(
        &mut self,
        queue: usize,
        request: &[u8],
        response_len: usize,
        timeout: Duration,
    ) -> Result<Vec<u8>, Error> {
        let p = self.submit(queue, request, response_len)?;
        self.kick(queue)?;
        self.complete(p, timeout)
    }

    /// Opens the vhost-user-gpu display channel with the default
    /// [`DisplayConfig`]; see [`gpu_socket_with`](Self::gpu_socket_with).
    pub fn gpu_socket(&mut self) -> Result<GpuSocketPeer, Error> {
        self.gpu_socket_with(DisplayConfig::default())
    }

    /// Sends VHOST_USER_GPU_SET_SOCKET with one end of a fresh socketpair
    /// (the vhost crate's front end has no call for it, so the message is
    /// built here) and returns QEMU's display side on the other end.
    pub fn gpu_socket_with(&mut self, config: DisplayConfig) -> Result<GpuSocketPeer, Error> {
        let (ours, theirs) = UnixStream::pair().map_err(Error::Io)?;
        self.send_raw_message(
            VHOST_USER_GPU_SET_SOCKET,
            self.default_flags(),
            &[],
            &[theirs.as_raw_fd()],
        )?;
        drop(theirs);
        if self.need_reply {
            self.expect_ack("GPU_SET_SOCKET", VHOST_USER_GPU_SET_SOCKET)?;
        }
        GpuSocketPeer::start(ours, config).map_err(Error::Io)
    }

    fn default_flags(&self) -> u32 {
        let mut flags = 0x1; // protocol version 1
        if self.need_reply {
            flags |= VhostUserHeaderFlag::NEED_REPLY.bits();
        }
        flags
    }

    fn expect_ack(&mut self, op: &'static str, request: u32) -> Result<(), Error> {
        let reply = self.recv_raw_reply_for(op, 8)?;
        if reply.request != request
            || reply.flags & VhostUserHeaderFlag::REPLY.bits() == 0
            || reply.payload.len() != 8
        {
            return Err(Error::Rejected {
                op,
                reason: format!("unexpected reply {reply:?}"),
            });
        }
        let mut v = [0u8; 8];
        v.copy_from_slice(&reply.payload);
        match u64::from_le_bytes(v) {
            0 => Ok(()),
            code => Err(Error::Rejected {
                op,
                reason: format!("back end answered {code}"),
            }),
        }
    }

    /// Sends a hand-built vhost-user message: a 12-byte header (`request`,
    /// `flags`, payload size) then `payload`, with `fds` attached. For
    /// messages the vhost crate cannot send and for malformed ones. Does not
    /// read any reply; see [`recv_raw_reply`](Self::recv_raw_reply).
    pub fn send_raw_message(
        &mut self,
        request: u32,
        flags: u32,
        payload: &[u8],
        fds: &[RawFd],
    ) -> Result<(), Error> {
        let size = u32::try_from(payload.len())
            .map_err(|_| Error::InvalidConfig("payload too large".into()))?;
        let mut msg = Vec::with_capacity(12 + payload.len());
        msg.extend_from_slice(&request.to_le_bytes());
        msg.extend_from_slice(&flags.to_le_bytes());
        msg.extend_from_slice(&size.to_le_bytes());
        msg.extend_from_slice(payload);
        let armed = self.watchdog.arm(self.config.control_timeout);
        let sent = if fds.is_empty() {
            (&self.socket).write_all(&msg).map(|_| msg.len())
        } else {
            self.socket
                .send_with_fds(&[&msg[..]], fds)
                .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
        };
        let fired = armed.fired();
        drop(armed);
        let sent = sent.map_err(|e| {
            if fired {
                Error::ControlTimeout {
                    op: "raw message",
                    timeout: self.config.control_timeout,
                }
            } else {
                Error::Io(e)
            }
        })?;
        if sent < msg.len() {
            // Only the first chunk carries the descriptors; send the rest.
            (&self.socket).write_all(&msg[sent..]).map_err(Error::Io)?;
        }
        Ok(())
    }

    /// Reads one vhost-user message from the back end (header and payload),
    /// giving up after the control timeout (which shuts the connection down).
    pub fn recv_raw_reply(&mut self) -> Result<RawReply, Error> {
        self.recv_raw_reply_for("raw reply", 1 << 20)
    }

    fn recv_raw_reply_for(&mut self, op: &'static str, max: u32) -> Result<RawReply, Error> {
        let timeout = self.config.control_timeout;
        let armed = self.watchdog.arm(timeout);
        let mut hdr = [0u8; 12];
        let r = (&self.socket).read_exact(&mut hdr).and_then(|_| {
            let field = |i: usize| u32::from_le_bytes([hdr[i], hdr[i + 1], hdr[i + 2], hdr[i + 3]]);
            let size = field(8);
            if size > max {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("reply payload of {size} bytes"),
                ));
            }
            let mut payload = vec![0u8; size as usize];
            (&self.socket).read_exact(&mut payload)?;
            Ok(RawReply {
                request: field(0),
                flags: field(4),
                payload,
            })
        });
        let fired = armed.fired();
        drop(armed);
        r.map_err(|e| {
            if fired {
                Error::ControlTimeout { op, timeout }
            } else {
                Error::Io(e)
            }
        })
    }

    /// Runs `f` on the vhost crate's front end under the control-plane
    /// watchdog, for messages this type has no method for.
    pub fn with_frontend<T>(
        &mut self,
        op: &'static str,
        f: impl FnOnce(&mut Frontend) -> vhost::Result<T>,
    ) -> Result<T, Error> {
        self.ctl(op, f)
    }

    /// Whether a control call ever timed out (the connection is then dead).
    pub fn timed_out(&self) -> bool {
        self.watchdog.has_fired()
    }

    /// Stops every queue like QEMU on VM stop (SET_VRING_ENABLE(0), then
    /// GET_VRING_BASE), then closes the connection. Returns each queue's
    /// base. The connection is closed even if a stop fails.
    pub fn disconnect(mut self) -> Result<Vec<u16>, Error> {
        let mut bases = Vec::with_capacity(self.queues.len());
        for i in 0..self.queues.len() {
            bases.push(self.stop_queue(i)?);
        }
        Ok(bases)
        // Drop shuts the socket down.
    }
}

impl Drop for TestVmm {
    fn drop(&mut self) {
        let _ = self.socket.shutdown(Shutdown::Both);
    }
}
