//! One native context: its response memory, its objects (VMs, BOs, groups,
//! tiler heaps, syncobjs, named by guest-chosen ids), its fence rings and
//! its GPU engine, and the execution of every command of
//! `docs/protocol.md` §5.
//!
//! The context maps guest ids to the engine's handles, checks every
//! argument in the order the protocol documents, and hands work to the
//! engine, which answers synchronously once the work is queued. The
//! engine thread is started at the first command that needs the GPU and
//! stopped (all work cancelled, every completion reported) when the
//! context is dropped.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use vm_memory::{ByteValued, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};

use super::events::{on_events, uncount, Completions, Shared, Work, WorkKind, INDEX_BITS};
use super::fences::{FenceSink, WorkTracker};
use super::framing::commands;
use super::kmem::SharedPool;
use super::rspmem::RspMem;
use super::NativeError;
use crate::gpu::engine::{
    BindMode, BindRequest, Engine, EngineConfig, EngineError, QueueSubmit, Submits, SyncOp,
};
use crate::gpu::firmware::{FwConfig, GroupCreate, HeapCreate, JobSubmit, QueueCreate};
use crate::gpu::mmu::{BindOp, Bo, BoLimits, GuestRange, VmKey, VmState, PAGE_SIZE};
use crate::gpu::model::GpuModel;
use crate::gpu::sync::{FenceStatus, SyncHandle, SyncKind, SyncState, WaitFlags};
use crate::log_limit::LogLimiter;
use crate::uapi::codec::{check_response_slot, dev_query_response_len, RequestView};
use crate::uapi::native::{self as u, errno::*, NativeRequest};
use crate::virtio_gpu::fence::Timeline;
use crate::virtio_gpu::protocol::VIRTIO_GPU_BLOB_MEM_GUEST;
use crate::virtio_gpu::resources::{ResourceKind, ResourceTable};

/// Size of the GPU VA space.
const VA_SPACE: u64 = 1 << 48;

/// Settings of native contexts that the daemon configures.
#[derive(Debug, Clone, Copy)]
pub struct NativeConfig {
    /// The emulated GPU.
    pub model: GpuModel,
    /// Job timeout in milliseconds.
    pub job_timeout_ms: u32,
    /// Whether HIGH and REALTIME group priorities are allowed.
    pub privileged: bool,
    /// Bytes of user mappings across the VMs of a context.
    pub max_mapped_bytes: u64,
    /// Longest SYNCOBJ_WAIT in milliseconds.
    pub max_syncobj_wait_ms: u32,
}

impl Default for NativeConfig {
    fn default() -> Self {
        Self {
            model: GpuModel::g610(),
            job_timeout_ms: u::JOB_TIMEOUT_MS,
            privileged: false,
            max_mapped_bytes: u::MAX_MAPPED_BYTES,
            max_syncobj_wait_ms: u::MAX_SYNCOBJ_WAIT_MS,
        }
    }
}

/// What a SUBMIT_3D brings along besides its buffer.
pub struct SubmitEnv<'a> {
    /// The context id.
    pub ctx_id: u32,
    /// Full mode (capset 6 with CONTEXT_INIT) or compat mode.
    pub full: bool,
    /// The device's resources.
    pub resources: &'a ResourceTable,
    /// Guest memory.
    pub mem: &'a GuestMemoryAtomic<GuestMemoryMmap>,
    /// The snapshot of `mem` the request is handled with.
    pub snapshot: &'a GuestMemoryMmap,
    /// The SUBMIT_3D's fence, if fenced.
    pub fence: Option<(Timeline, u64)>,
    /// Where completed fences go.
    pub sink: Option<&'a Arc<dyn FenceSink>>,
}

#[derive(Debug)]
struct VmEntry {
    engine: u32,
    /// The engine's identity of the VM, its kernel-memory pool's key.
    key: VmKey,
    bind_ring: u32,
    kernel_start: u64,
    kernel_next: u64,
    kernel_bos: u32,
    pool_size: u64,
}

#[derive(Debug)]
struct BoEntry {
    res_id: u32,
    bo: Arc<Bo>,
    ranges: Vec<GuestRange>,
    /// The VM the BO is exclusive to (the object, not its id, which a
    /// later VM_CREATE may reuse).
    exclusive: Option<VmKey>,
    /// Its pool id, once given as kernel memory (it stays kernel memory
    /// while the pool holds that id).
    kernel_of: Option<u64>,
}

#[derive(Debug)]
struct GroupEntry {
    engine: u32,
    rings: Vec<u32>,
}

type Res<T> = Result<T, i32>;

fn eng(e: EngineError) -> i32 {
    match e.errno() {
        x if x == libc::EAGAIN => EBUSY,
        x if x == libc::ENODEV => EIO,
        x => x,
    }
}

/// Response bytes kept inline up to this size.
const REPLY_INLINE: usize = 64;

/// A command's response bytes: inline when small (the responses of the
/// per-job commands are), so that answering allocates nothing.
enum Reply {
    Inline { len: usize, buf: [u8; REPLY_INLINE] },
    Heap(Vec<u8>),
}

impl std::ops::Deref for Reply {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            Reply::Inline { len, buf } => buf.get(..*len).unwrap_or(buf),
            Reply::Heap(v) => v,
        }
    }
}

fn bytes<T: ByteValued>(v: &T) -> Reply {
    let src = v.as_slice();
    let mut buf = [0u8; REPLY_INLINE];
    match buf.get_mut(..src.len()) {
        Some(dst) => {
            dst.copy_from_slice(src);
            Reply::Inline {
                len: src.len(),
                buf,
            }
        }
        None => Reply::Heap(src.to_vec()),
    }
}

fn parse<R: NativeRequest>(body: &[u8]) -> Res<RequestView<'_, R>> {
    RequestView::<R>::parse(body).map_err(|e| e.errno())
}

/// Lowest free id in `1..=max` or the guest's choice.
fn pick_id<V>(map: &BTreeMap<u32, V>, want: u32, max: u32, full: i32) -> Res<u32> {
    if want != 0 {
        if want > max {
            return Err(EINVAL);
        }
        if map.contains_key(&want) {
            return Err(EEXIST);
        }
        return Ok(want);
    }
    (1..=max).find(|i| !map.contains_key(i)).ok_or(full)
}

/// The state of one native context.
pub struct NativeContext {
    cfg: NativeConfig,
    commands_seen: u64,
    rsp: Option<Arc<RspMem>>,
    /// The resource behind `rsp`.
    rsp_res_id: Option<u32>,
    num_rings: u32,
    rings_used: u64,
    engine: Option<Engine>,
    /// The engine's completed fences, and the trackers kept for reuse.
    completions: Arc<Completions>,
    /// Kept fence trackers taken from `completions` (see
    /// [`Completions::tracker`]).
    trackers: Vec<Arc<WorkTracker>>,
    shared: Shared,
    pool: SharedPool,
    vms: BTreeMap<u32, VmEntry>,
    bos: BTreeMap<u32, BoEntry>,
    groups: BTreeMap<u32, GroupEntry>,
    syncobjs: BTreeMap<u32, (SyncHandle, SyncKind)>,
    heaps: BTreeMap<u32, u32>,
    started: Instant,
    limiter: LogLimiter,
    to_arm: Vec<u64>,
    /// Work was posted to the engine without ringing its doorbell.
    ring_due: bool,
}

impl std::fmt::Debug for NativeContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NativeContext")
            .field("commands_seen", &self.commands_seen)
            .field("engine", &self.engine.is_some())
            .finish()
    }
}

impl Default for NativeContext {
    fn default() -> Self {
        Self::new(NativeConfig::default())
    }
}

/// Per-command inputs.
struct Cmd<'b> {
    seqno: u32,
    rsp_off: u32,
    body: &'b [u8],
}

impl NativeContext {
    /// A fresh context.
    pub fn new(cfg: NativeConfig) -> Self {
        Self {
            cfg,
            commands_seen: 0,
            rsp: None,
            rsp_res_id: None,
            num_rings: 0,
            rings_used: 0,
            engine: None,
            completions: Arc::default(),
            trackers: Vec::new(),
            shared: Shared::default(),
            pool: SharedPool::default(),
            vms: BTreeMap::new(),
            bos: BTreeMap::new(),
            groups: BTreeMap::new(),
            syncobjs: BTreeMap::new(),
            heaps: BTreeMap::new(),
            started: Instant::now(),
            limiter: LogLimiter::default(),
            to_arm: Vec::new(),
            ring_due: false,
        }
    }

    /// Number of commands executed so far.
    pub fn commands_seen(&self) -> u64 {
        self.commands_seen
    }

    /// Rings the engine's doorbell if work was posted to it without a ring
    /// (fenced GROUP_SUBMITs). The transport calls it once its fences are
    /// queued, after a batch of requests, so that the engine takes the
    /// whole batch in one pass.
    pub fn ring_engine(&mut self) {
        if std::mem::take(&mut self.ring_due) {
            if let Some(e) = &self.engine {
                // A thread that is gone has completed everything already.
                // The event handler takes no lock the transport holds here
                // (see `events`), so the pass may run on this thread.
                let _ = e.kick();
            }
        }
    }

    /// Whether the context's engine thread runs.
    pub fn has_engine(&self) -> bool {
        self.engine.is_some()
    }

    /// Stops the engine: pending work completes with ECANCELED, and every
    /// fence it held completes.
    pub fn shutdown(&mut self) {
        if let Some(e) = self.engine.take() {
            e.shutdown();
        }
    }

    /// Revokes every BO built over resource `res_id`, whose memory the
    /// guest took back (RESOURCE_UNREF, RESOURCE_DETACH_BACKING or
    /// CTX_DETACH_RESOURCE; §10 of `docs/protocol.md`): the handle goes,
    /// every mapping of the BO leaves every VM, and a BO that was kernel
    /// memory leaves the pool, the VMs with kernel objects in it becoming
    /// unusable with their groups killed. When this returns, the device no
    /// longer touches the memory. If it was the response memory, the
    /// context has none until the next INIT, and pending completion
    /// records are dropped.
    pub fn resource_gone(&mut self, res_id: u32) {
        let gone: Vec<u32> = self
            .bos
            .iter()
            .filter(|(_, b)| b.res_id == res_id)
            .map(|(&h, _)| h)
            .collect();
        for h in gone {
            let Some(b) = self.bos.remove(&h) else {
                continue;
            };
            // Still kernel memory: its VM must not use it any more.
            let was_kernel = b.kernel_of.is_some_and(|id| self.pool.lock().remove(id));
            let kernel = if was_kernel {
                b.ranges.clone()
            } else {
                Vec::new()
            };
            match &self.engine {
                Some(e) => {
                    if let Err(err) = e.revoke_bo(b.bo.clone(), kernel) {
                        log::warn!("revoking BO {h}: {err}");
                        b.bo.revoke();
                    }
                }
                // Without an engine nothing was ever mapped.
                None => b.bo.revoke(),
            }
        }
        if self.rsp_res_id == Some(res_id) {
            if let Some(rsp) = self.rsp.take() {
                for w in self.shared.lock().works.values_mut() {
                    if w.rsp.as_ref().is_some_and(|r| Arc::ptr_eq(r, &rsp)) {
                        w.rsp = None;
                    }
                }
            }
            self.rsp_res_id = None;
        }
    }

    /// Validates and executes a SUBMIT_3D buffer. Nothing runs unless the
    /// whole buffer is well-formed and every command is known. Returns the
    /// fence tracker when the buffer queued work and was fenced: the caller
    /// queues the fence as not done, then calls [`WorkTracker::arm`].
    pub fn submit(
        &mut self,
        buf: &[u8],
        env: &SubmitEnv<'_>,
    ) -> Result<Option<Arc<WorkTracker>>, NativeError> {
        // The whole buffer is checked before any command runs: its
        // framing, then its command numbers, then INIT coming first.
        let mut unknown = None;
        for c in commands(buf) {
            let (h, _) = c?;
            if unknown.is_none() && u::command_name(h.cmd).is_none() {
                unknown = Some(NativeError::UnknownCommand {
                    cmd: h.cmd,
                    seqno: h.seqno,
                });
            }
        }
        if let Some(e) = unknown {
            return Err(e);
        }
        if self.rsp.is_none() {
            for (h, _) in commands(buf).map_while(Result::ok) {
                match h.cmd {
                    u::NATIVE_CMD_INIT => break,
                    u::NATIVE_CMD_NOP => {}
                    cmd => return Err(NativeError::BeforeInit { cmd }),
                }
            }
        }
        let tracker = match (env.fence, env.sink) {
            (Some((t, id)), Some(sink)) => {
                Some(self.completions.tracker(&mut self.trackers, t, id, sink))
            }
            _ => None,
        };
        let guard = env.snapshot;
        for (h, body) in commands(buf).map_while(Result::ok) {
            self.commands_seen += 1;
            let c = Cmd {
                seqno: h.seqno,
                rsp_off: h.rsp_off,
                body,
            };
            match h.cmd {
                u::NATIVE_CMD_NOP => {
                    if let Some(r) = &self.rsp {
                        r.command_done(guard, h.seqno, 0);
                    }
                }
                u::NATIVE_CMD_INIT => {
                    let first = self.rsp.is_none();
                    if !self.init(&c, env, guard) && first {
                        break;
                    }
                }
                cmd => {
                    let Some(rsp) = self.rsp.clone() else {
                        break;
                    };
                    let len = response_len(cmd, body);
                    let want = match check_response_slot(h.rsp_off, len, rsp.size()) {
                        Ok(w) => w,
                        Err(e) => {
                            crate::guest_warn!(
                                self.limiter,
                                "native {}: response at {:#x} does not fit",
                                u::command_name(cmd).unwrap_or("?"),
                                h.rsp_off
                            );
                            rsp.command_done(guard, h.seqno, -e);
                            continue;
                        }
                    };
                    let (ret, out) = self.run(cmd, &c, env, &rsp, tracker.as_ref());
                    log::debug!(
                        "native {} seqno {} -> {}",
                        u::command_name(cmd).unwrap_or("?"),
                        h.seqno,
                        ret
                    );
                    if ret != 0 {
                        crate::guest_warn!(
                            self.limiter,
                            "native {} seqno {} failed: {}",
                            u::command_name(cmd).unwrap_or("?"),
                            h.seqno,
                            ret
                        );
                    }
                    if want {
                        let at = u64::from(h.rsp_off);
                        rsp.write(guard, at, &out);
                        // A DEV_QUERY for more than the object: the rest
                        // of its response is zeros.
                        let written = out.len() as u64;
                        if ret == 0 && written < len {
                            rsp.zero(guard, at + written, len - written);
                        }
                    }
                    for id in self.to_arm.drain(..) {
                        self.shared.arm(id, guard);
                    }
                    rsp.command_done(guard, h.seqno, ret);
                }
            }
        }
        match tracker {
            Some(t) if t.has_work() => Ok(Some(t)),
            // Nothing queued: the fence completes with the request, and
            // the tracker is kept for the next one.
            Some(t) => {
                self.completions.keep([t]);
                Ok(None)
            }
            None => Ok(None),
        }
    }

    fn init<M: vm_memory::GuestMemoryBackend>(
        &mut self,
        c: &Cmd<'_>,
        env: &SubmitEnv<'_>,
        mem: &M,
    ) -> bool {
        let res = (|| -> Res<(RspMem, u32, u32)> {
            let v = parse::<u::InitReq>(c.body)?;
            let r = *v.request();
            let res = env.resources.get(r.rsp_res_id).map_err(|_| ENOENT)?;
            if !res.contexts.contains(&env.ctx_id) {
                return Err(ENOENT);
            }
            let size = match res.kind {
                ResourceKind::Blob { blob_mem, size, .. }
                    if blob_mem == VIRTIO_GPU_BLOB_MEM_GUEST =>
                {
                    size
                }
                ResourceKind::Buffer { size, .. } => u64::from(size),
                _ => return Err(EINVAL),
            };
            let backing = res.backing.as_ref().ok_or(EINVAL)?;
            if r.rsp_size % 8 != 0 || r.rsp_size < u::RSP_MEM_MIN_SIZE || r.rsp_size > size {
                return Err(EINVAL);
            }
            if backing.total() < r.rsp_size {
                return Err(EINVAL);
            }
            if r.num_rings == 0 || r.num_rings > u::MAX_RINGS {
                return Err(EINVAL);
            }
            if self.num_rings != 0 {
                let first = if env.full {
                    self.num_rings
                } else {
                    r.num_rings
                };
                if r.num_rings != first {
                    return Err(EINVAL);
                }
            }
            let rings = if env.full { r.num_rings } else { 1 };
            check_response_slot(c.rsp_off, size_of_rsp::<u::InitReq>(), r.rsp_size)?;
            let ranges = backing
                .entries()
                .iter()
                .map(|(a, l)| GuestRange::new(a.0, u64::from(*l)))
                .collect();
            Ok((RspMem::new(ranges, r.rsp_size), rings, r.rsp_res_id))
        })();
        match res {
            Ok((rsp, rings, res_id)) => {
                let rsp = Arc::new(rsp);
                rsp.init_header(mem, c.seqno);
                self.num_rings = rings;
                let out = u::InitRsp {
                    hdr: u::RspHdr::for_response::<u::InitRsp>(0),
                    flags: self.ctx_flags(env),
                    num_rings: rings,
                };
                if c.rsp_off != 0 {
                    rsp.write(mem, u64::from(c.rsp_off), out.as_slice());
                }
                rsp.command_done(mem, c.seqno, 0);
                self.rsp = Some(rsp);
                self.rsp_res_id = Some(res_id);
                true
            }
            Err(e) => {
                crate::guest_warn!(self.limiter, "native INIT failed: {}", -e);
                if let Some(rsp) = &self.rsp {
                    let out = u::InitRsp {
                        hdr: u::RspHdr::for_response::<u::InitRsp>(-e),
                        ..Default::default()
                    };
                    if matches!(
                        check_response_slot(c.rsp_off, out.as_slice().len() as u64, rsp.size()),
                        Ok(true)
                    ) {
                        rsp.write(mem, u64::from(c.rsp_off), out.as_slice());
                    }
                    rsp.command_done(mem, c.seqno, -e);
                }
                false
            }
        }
    }

    fn ctx_flags(&self, env: &SubmitEnv<'_>) -> u32 {
        if env.full {
            u::CONTEXT_FLAG_PER_RING_FENCES
        } else {
            0
        }
    }

    #[inline]
    fn engine(&mut self, env: &SubmitEnv<'_>) -> Res<&Engine> {
        if self.engine.is_none() {
            self.start_engine(env)?;
        }
        self.engine.as_ref().ok_or(EIO)
    }

    /// Starts the context's GPU engine (at its first command that needs
    /// it).
    #[cold]
    fn start_engine(&mut self, env: &SubmitEnv<'_>) -> Res<()> {
        let shared = self.shared.clone();
        let mem = env.mem.clone();
        let config = EngineConfig {
            firmware: FwConfig {
                job_timeout_ns: u64::from(self.cfg.job_timeout_ms.max(1)) * 1_000_000,
                max_mapped_bytes: self.cfg.max_mapped_bytes,
                ..FwConfig::default()
            },
            ..EngineConfig::default()
        };
        let batch = self.completions.clone();
        let engine = Engine::spawn_batched(
            env.mem.clone(),
            self.pool.clone(),
            self.cfg.model,
            config,
            Box::new(move |events| on_events(&shared, &mem, &batch, events)),
        )
        .map_err(|e| {
            log::warn!("cannot start the GPU engine: {e}");
            ENOMEM
        })?;
        self.engine = Some(engine);
        Ok(())
    }

    fn take_ring(&mut self, env: &SubmitEnv<'_>) -> Res<u32> {
        if !env.full || self.num_rings <= 1 {
            return Ok(0);
        }
        let r = (1..self.num_rings)
            .find(|r| self.rings_used & (1u64 << r) == 0)
            .ok_or(EBUSY)?;
        self.rings_used |= 1u64 << r;
        Ok(r)
    }

    fn free_ring(&mut self, r: u32) {
        if r != 0 && r < 64 {
            self.rings_used &= !(1u64 << r);
        }
    }

    /// Registers the outstanding work of command `c` (`remaining`
    /// events expected) against the context's quota for its kind: the
    /// errno to answer if it is used up (EBUSY for jobs and binds, ENOMEM
    /// for waits), else the work's id. A command with a response is armed
    /// once the response is written; one without is armed from the start
    /// (its completion has nothing to overwrite).
    fn new_work(
        &mut self,
        kind: WorkKind,
        remaining: usize,
        c: &Cmd<'_>,
        rsp: &Arc<RspMem>,
        (record_at, first_signaled_at): (u64, Option<u64>),
        tracker: Option<&Arc<WorkTracker>>,
    ) -> Result<u64, i32> {
        let has_rsp = c.rsp_off != 0;
        let base = u64::from(c.rsp_off);
        let mut st = self.shared.lock();
        // The context's quota of outstanding work of this kind.
        let (count, add, max, errno) = match kind {
            WorkKind::Jobs => (
                &mut st.jobs_in_flight,
                remaining,
                u::MAX_JOBS_IN_FLIGHT as usize,
                EBUSY,
            ),
            WorkKind::Bind { ops } => (
                &mut st.binds_in_flight,
                ops,
                u::MAX_BINDS_IN_FLIGHT as usize,
                EBUSY,
            ),
            WorkKind::Wait { .. } => (&mut st.waits, 1, u::MAX_SYNCOBJS as usize * 4, ENOMEM),
        };
        if count.saturating_add(add) > max {
            return Err(errno);
        }
        *count += add;
        let work = Work {
            kind,
            rsp: Some(rsp.clone()),
            record: has_rsp.then_some(base + record_at),
            first_signaled: if has_rsp {
                first_signaled_at.map(|o| base + o)
            } else {
                None
            },
            remaining,
            result: 0,
            seqno: c.seqno,
            tracker: tracker.cloned(),
            armed: !has_rsp,
            finished: false,
            last_index: 0,
            rejected: false,
        };
        // The id must leave room for the event index in a user_data; the
        // quotas keep the works held far below that many.
        let refused = match st.works.insert(work) {
            Ok(id) if id >> (64 - INDEX_BITS) == 0 => Ok(id),
            Ok(id) => Err(st.works.remove(id)),
            Err(work) => Err(Some(work)),
        };
        let id = match refused {
            Ok(id) => id,
            Err(work) => {
                if let Some(w) = &work {
                    uncount(&mut st, w);
                }
                return Err(errno);
            }
        };
        drop(st);
        // Counted before the work is handed to the engine (only its events
        // drop the count again), and outside the shared-state lock, so that
        // the two locks are never nested.
        if let Some(t) = tracker {
            t.add();
        }
        if has_rsp {
            self.to_arm.push(id);
        }
        Ok(id)
    }

    /// Runs one command; returns its `ret` and its response bytes.
    fn run(
        &mut self,
        cmd: u32,
        c: &Cmd<'_>,
        env: &SubmitEnv<'_>,
        rsp: &Arc<RspMem>,
        tracker: Option<&Arc<WorkTracker>>,
    ) -> (i32, Reply) {
        macro_rules! simple {
            ($rsp:ty, $e:expr) => {{
                let r: Res<$rsp> = $e;
                match r {
                    Ok(mut v) => {
                        v.hdr = u::RspHdr::for_response::<$rsp>(0);
                        (0, bytes(&v))
                    }
                    Err(e) => {
                        let v = <$rsp>::default();
                        let mut v = v;
                        v.hdr = u::RspHdr::for_response::<$rsp>(-e);
                        (-e, bytes(&v))
                    }
                }
            }};
        }
        macro_rules! hdr_only {
            ($e:expr) => {{
                let r: Res<()> = $e;
                let ret = r.err().map_or(0, |e| -e);
                (ret, bytes(&u::RspHdr::for_response::<u::RspHdr>(ret)))
            }};
        }
        match cmd {
            u::NATIVE_CMD_DEV_QUERY => self.dev_query(c, env),
            u::NATIVE_CMD_VM_CREATE => simple!(u::VmCreateRsp, self.vm_create(c, env)),
            u::NATIVE_CMD_VM_DESTROY => hdr_only!(self.vm_destroy(c)),
            u::NATIVE_CMD_VM_GET_STATE => simple!(u::VmGetStateRsp, self.vm_get_state(c)),
            u::NATIVE_CMD_VM_ADD_KERNEL_MEMORY => {
                simple!(u::VmAddKernelMemoryRsp, self.vm_add_kernel_memory(c, env))
            }
            u::NATIVE_CMD_BO_CREATE_FROM_RESOURCE => {
                simple!(u::BoCreateRsp, self.bo_create(c, env))
            }
            u::NATIVE_CMD_BO_DESTROY => hdr_only!(self.bo_destroy(c)),
            u::NATIVE_CMD_VM_BIND => self.vm_bind(c, env, rsp, tracker),
            u::NATIVE_CMD_GROUP_CREATE => simple!(u::GroupCreateRsp, self.group_create(c, env)),
            u::NATIVE_CMD_GROUP_DESTROY => hdr_only!(self.group_destroy(c)),
            u::NATIVE_CMD_GROUP_GET_STATE => simple!(u::GroupGetStateRsp, self.group_state(c)),
            u::NATIVE_CMD_GROUP_SUBMIT => self.group_submit(c, env, rsp, tracker),
            u::NATIVE_CMD_TILER_HEAP_CREATE => {
                simple!(u::TilerHeapCreateRsp, self.heap_create(c, env))
            }
            u::NATIVE_CMD_TILER_HEAP_DESTROY => hdr_only!(self.heap_destroy(c)),
            u::NATIVE_CMD_SYNCOBJ_CREATE => simple!(u::SyncobjCreateRsp, self.sync_create(c, env)),
            u::NATIVE_CMD_SYNCOBJ_DESTROY => hdr_only!(self.sync_destroy(c)),
            u::NATIVE_CMD_SYNCOBJ_RESET => hdr_only!(self.sync_reset(c)),
            u::NATIVE_CMD_SYNCOBJ_SIGNAL => hdr_only!(self.sync_signal(c)),
            u::NATIVE_CMD_SYNCOBJ_QUERY => simple!(u::SyncobjQueryRsp, self.sync_query(c)),
            u::NATIVE_CMD_SYNCOBJ_WAIT => self.sync_wait(c, env, rsp, tracker),
            _ => hdr_only!(Err(EINVAL)),
        }
    }

    fn dev_query(&mut self, c: &Cmd<'_>, env: &SubmitEnv<'_>) -> (i32, Reply) {
        let fail = |e: i32| {
            let v = u::DevQueryRsp {
                hdr: u::RspHdr::for_response::<u::DevQueryRsp>(-e),
                ..Default::default()
            };
            (-e, bytes(&v))
        };
        let v = match parse::<u::DevQueryReq>(c.body) {
            Ok(v) => v,
            Err(e) => return fail(e),
        };
        let r = *v.request();
        let (Some(min), Some(dev_size)) = (
            u::dev_query_min_size(r.query_type),
            u::dev_query_object_size(r.query_type),
        ) else {
            return fail(EINVAL);
        };
        if r.size != 0 && r.size < min {
            return fail(EINVAL);
        }
        let model = &self.cfg.model;
        let object: Reply = match r.query_type {
            u::DEV_QUERY_GPU_INFO => bytes(&model.gpu_info),
            u::DEV_QUERY_CSIF_INFO => bytes(&model.csif_info),
            u::DEV_QUERY_TIMESTAMP_INFO => {
                let ns = self.started.elapsed().as_nanos();
                let ticks =
                    ns.saturating_mul(u128::from(model.timestamp_frequency)) / 1_000_000_000;
                bytes(&model.timestamp_info(u64::try_from(ticks).unwrap_or(u64::MAX), 0))
            }
            u::DEV_QUERY_GROUP_PRIORITIES_INFO => {
                bytes(&model.group_priorities_info(self.cfg.privileged))
            }
            _ => {
                let mut info = u::ContextInfo::defaults(self.ctx_flags(env), self.num_rings);
                info.job_timeout_ms = self.cfg.job_timeout_ms;
                info.max_syncobj_wait_ms = self.cfg.max_syncobj_wait_ms;
                info.max_mapped_bytes = self.cfg.max_mapped_bytes;
                bytes(&info)
            }
        };
        let total = if r.size == 0 {
            16
        } else {
            dev_query_response_len(r.size)
        };
        // Only the object's prefix is built here; the caller zero-fills
        // the rest of the response memory slot.
        let n = (r.size as usize).min(object.len());
        let mut out = vec![0u8; 16 + n.next_multiple_of(8)];
        let head = u::DevQueryRsp {
            hdr: u::RspHdr {
                len: u32::try_from(total).unwrap_or(u32::MAX),
                ret: 0,
            },
            size: dev_size,
            pad: 0,
        };
        out[..16].copy_from_slice(head.as_slice());
        out[16..16 + n].copy_from_slice(&object[..n]);
        (0, Reply::Heap(out))
    }

    fn vm_create(&mut self, c: &Cmd<'_>, env: &SubmitEnv<'_>) -> Res<u::VmCreateRsp> {
        let r = *parse::<u::VmCreateReq>(c.body)?.request();
        if r.flags != 0 {
            return Err(EINVAL);
        }
        if r.user_va_range != 0 && r.user_va_range > VA_SPACE - u::VM_MIN_KERNEL_VA_SIZE {
            return Err(EINVAL);
        }
        let id = pick_id(&self.vms, r.id, u::MAX_VMS, EBUSY)?;
        let ring = self.take_ring(env)?;
        let created = self.engine(env).and_then(|e| {
            let (handle, user) = e.vm_create(r.user_va_range).map_err(eng)?;
            match e.vm_key(handle) {
                Ok(key) => Ok((handle, user, key)),
                Err(err) => {
                    let _ = e.vm_destroy(handle);
                    Err(eng(err))
                }
            }
        });
        let (handle, user, key) = match created {
            Ok(v) => v,
            Err(e) => {
                self.free_ring(ring);
                return Err(e);
            }
        };
        self.vms.insert(
            id,
            VmEntry {
                engine: handle,
                key,
                bind_ring: ring,
                kernel_start: user,
                kernel_next: 0,
                kernel_bos: 0,
                pool_size: 0,
            },
        );
        Ok(u::VmCreateRsp {
            id,
            bind_ring: ring,
            user_va_range: user,
            kernel_va_size: VA_SPACE - user,
            ..Default::default()
        })
    }

    fn vm_destroy(&mut self, c: &Cmd<'_>) -> Res<()> {
        let r = *parse::<u::VmDestroyReq>(c.body)?.request();
        if r.pad != 0 {
            return Err(EINVAL);
        }
        let vm = self.vms.remove(&r.id).ok_or(EINVAL)?;
        self.free_ring(vm.bind_ring);
        self.heaps.retain(|h, _| h >> 16 != r.id);
        if let Some(e) = &self.engine {
            e.vm_destroy(vm.engine).map_err(eng)?;
        }
        Ok(())
    }

    fn vm_get_state(&mut self, c: &Cmd<'_>) -> Res<u::VmGetStateRsp> {
        let r = *parse::<u::VmGetStateReq>(c.body)?.request();
        if r.pad != 0 {
            return Err(EINVAL);
        }
        let vm = self.vms.get(&r.vm_id).ok_or(EINVAL)?;
        let e = self.engine.as_ref().ok_or(EINVAL)?;
        let state = e.vm_state(vm.engine).map_err(eng)?;
        Ok(u::VmGetStateRsp {
            state: match state {
                VmState::Usable => u::VM_STATE_USABLE,
                VmState::Unusable => u::VM_STATE_UNUSABLE,
            },
            ..Default::default()
        })
    }

    fn vm_add_kernel_memory(
        &mut self,
        c: &Cmd<'_>,
        _env: &SubmitEnv<'_>,
    ) -> Res<u::VmAddKernelMemoryRsp> {
        let r = *parse::<u::VmAddKernelMemoryReq>(c.body)?.request();
        if !self.vms.contains_key(&r.vm_id) {
            return Err(EINVAL);
        }
        let bo = self.bos.get(&r.bo_handle).ok_or(EINVAL)?;
        if self.is_kernel_memory(bo) {
            return Err(EBUSY);
        }
        let vm_key = self.vms.get(&r.vm_id).map(|v| v.key).ok_or(EINVAL)?;
        if bo.exclusive.is_some_and(|k| k != vm_key) {
            return Err(EINVAL);
        }
        let size = bo.bo.size();
        let ranges = bo.ranges.clone();
        let gpu_bo = bo.bo.clone();
        let engine = self.engine.as_ref().ok_or(EINVAL)?;
        let vm = self.vms.get_mut(&r.vm_id).ok_or(EINVAL)?;
        if vm.kernel_bos >= u::MAX_KERNEL_MEMORY_BOS_PER_VM {
            return Err(ENOSPC);
        }
        let align = if size >= 2 << 20 { 2 << 20 } else { PAGE_SIZE };
        let off = vm.kernel_next.next_multiple_of(align);
        let end = off.checked_add(size).ok_or(ENOSPC)?;
        if end > VA_SPACE - vm.kernel_start {
            return Err(ENOSPC);
        }
        let kernel_va = vm.kernel_start + off;
        // A BO mapped in some VM is refused here (-EBUSY), as is a range
        // outside the kernel window.
        engine
            .map_kernel_memory(vm.engine, gpu_bo, kernel_va)
            .map_err(eng)?;
        vm.kernel_next = end;
        vm.kernel_bos += 1;
        vm.pool_size += size;
        let pool_size = vm.pool_size;
        let key = vm.key;
        let mut pool = self.pool.lock();
        let id = pool.add(key, ranges, size, kernel_va);
        let pool_free = pool.free_bytes_of(key).min(pool_size);
        drop(pool);
        if let Some(b) = self.bos.get_mut(&r.bo_handle) {
            b.kernel_of = Some(id);
        }
        Ok(u::VmAddKernelMemoryRsp {
            kernel_va,
            pool_size,
            pool_free,
            ..Default::default()
        })
    }

    fn bo_create(&mut self, c: &Cmd<'_>, env: &SubmitEnv<'_>) -> Res<u::BoCreateRsp> {
        let r = *parse::<u::BoCreateReq>(c.body)?.request();
        if r.flags & !u::BO_NO_MMAP != 0 {
            return Err(EINVAL);
        }
        let res = env.resources.get(r.res_id).map_err(|_| ENOENT)?;
        if !res.contexts.contains(&env.ctx_id) {
            return Err(ENOENT);
        }
        let size = match res.kind {
            ResourceKind::Blob { blob_mem, size, .. } if blob_mem == VIRTIO_GPU_BLOB_MEM_GUEST => {
                size
            }
            ResourceKind::Buffer { size, .. } => u64::from(size),
            _ => return Err(EINVAL),
        };
        let backing = res.backing.as_ref().ok_or(EINVAL)?;
        if size == 0 || size % PAGE_SIZE != 0 || backing.total() < size {
            return Err(EINVAL);
        }
        if size > crate::gpu::mmu::MAX_BO_SIZE {
            return Err(ENOMEM);
        }
        let mut ranges = Vec::new();
        let mut left = size;
        for (a, l) in backing.entries() {
            if left == 0 {
                break;
            }
            let l = u64::from(*l).min(left);
            if a.0 % PAGE_SIZE != 0 || l % PAGE_SIZE != 0 {
                return Err(EINVAL);
            }
            ranges.push(GuestRange::new(a.0, l));
            left -= l;
        }
        if self.bos.values().any(|b| b.res_id == r.res_id) {
            return Err(EEXIST);
        }
        let exclusive = match r.exclusive_vm_id {
            0 => None,
            id => Some(self.vms.get(&id).ok_or(EINVAL)?.key),
        };
        let handle = pick_id(&self.bos, r.handle, u::MAX_BOS, ENOMEM)?;
        let guard = env.mem.memory();
        let bo = Bo::new(ranges.iter().copied(), &*guard, None, &BoLimits::default())
            .map_err(|e| e.errno())?;
        self.bos.insert(
            handle,
            BoEntry {
                res_id: r.res_id,
                bo: Arc::new(bo),
                ranges,
                exclusive,
                kernel_of: None,
            },
        );
        Ok(u::BoCreateRsp {
            handle,
            size,
            ..Default::default()
        })
    }

    fn bo_destroy(&mut self, c: &Cmd<'_>) -> Res<()> {
        let r = *parse::<u::BoDestroyReq>(c.body)?.request();
        if r.pad != 0 {
            return Err(EINVAL);
        }
        let bo = self.bos.get(&r.handle).ok_or(EINVAL)?;
        if self.is_kernel_memory(bo) {
            return Err(EBUSY);
        }
        self.bos.remove(&r.handle);
        Ok(())
    }

    /// Whether a BO is kernel memory: given with VM_ADD_KERNEL_MEMORY, and
    /// its VM not gone yet.
    fn is_kernel_memory(&self, b: &BoEntry) -> bool {
        b.kernel_of.is_some_and(|id| self.pool.lock().holds(id))
    }

    /// Resolves a guest sync op to the engine's.
    fn sync_op(&self, op: &u::SyncOp) -> Res<SyncOp> {
        let signal = op.flags & u::SYNC_OP_SIGNAL != 0;
        let Some(&(handle, _)) = self.syncobjs.get(&op.handle) else {
            return Err(if signal { EINVAL } else { ENOENT });
        };
        SyncOp::from_uapi(op.flags, handle, op.timeline_value).map_err(eng)
    }

    fn sync_ops(
        &self,
        view: &RequestView<'_, impl NativeRequest>,
        arr: &u::ObjArray,
    ) -> Res<Vec<SyncOp>> {
        view.elements::<u::SyncOp>(arr)
            .map_err(|e| e.errno())?
            .map(|o| self.sync_op(&o.map_err(|e| e.errno())?))
            .collect()
    }

    fn bind_lookup(&self, vm_id: u32) -> impl Fn(u32) -> Option<Arc<Bo>> + '_ {
        let key = self.vms.get(&vm_id).map(|v| v.key);
        move |h| {
            self.bos
                .get(&h)
                .filter(|b| !self.is_kernel_memory(b) && b.exclusive.is_none_or(|k| Some(k) == key))
                .map(|b| b.bo.clone())
        }
    }

    fn vm_bind(
        &mut self,
        c: &Cmd<'_>,
        env: &SubmitEnv<'_>,
        rsp: &Arc<RspMem>,
        tracker: Option<&Arc<WorkTracker>>,
    ) -> (i32, Reply) {
        let done = |ret: i32, completed: u32| {
            let v = u::VmBindRsp {
                hdr: u::RspHdr::for_response::<u::VmBindRsp>(ret),
                completed_ops: completed,
                pad: 0,
                completion: u::Completion {
                    state: u::COMPLETION_DONE,
                    result: ret,
                },
            };
            (ret, bytes(&v))
        };
        let view = match parse::<u::VmBindReq>(c.body) {
            Ok(v) => v,
            Err(e) => return done(-e, 0),
        };
        let r = *view.request();
        let Some(vm) = self.vms.get(&r.vm_id) else {
            return done(-EINVAL, 0);
        };
        let vm_engine = vm.engine;
        if r.flags & !u::VM_BIND_ASYNC != 0 {
            return done(-EINVAL, 0);
        }
        let ops = match view.array::<u::VmBindOp>(&r.ops) {
            Ok(o) => o,
            Err(e) => return done(-e.errno(), 0),
        };
        if self.engine(env).is_err() {
            return done(-EIO, 0);
        }
        if r.flags & u::VM_BIND_ASYNC == 0 {
            // Synchronous: decode up to the first bad op, apply those.
            let mut reqs = Vec::new();
            let mut decode_err = None;
            let mut applied_index = Vec::new();
            for (i, op) in ops.iter().enumerate() {
                if op.syncs.count != 0 {
                    decode_err = Some((i, EINVAL));
                    break;
                }
                if op.size == 0 {
                    continue;
                }
                let lookup = self.bind_lookup(r.vm_id);
                match BindOp::from_uapi(
                    op.flags,
                    op.bo_handle,
                    op.bo_offset,
                    op.va,
                    op.size,
                    lookup,
                ) {
                    Ok(b) => {
                        reqs.push(BindRequest {
                            op: b,
                            syncs: Vec::new(),
                        });
                        applied_index.push(i);
                    }
                    Err(e) => {
                        decode_err = Some((i, e.errno()));
                        break;
                    }
                }
            }
            let n_ok = decode_err.map_or(ops.len(), |(i, _)| i);
            let Some(e) = self.engine.as_ref() else {
                return done(-EIO, 0);
            };
            return match e.vm_bind(vm_engine, reqs, BindMode::Sync) {
                Ok(()) => match decode_err {
                    None => done(0, ops.len() as u32),
                    Some((i, err)) => done(-err, i as u32),
                },
                Err(EngineError::Bind(b)) => {
                    let completed = applied_index.get(b.completed).copied().unwrap_or(n_ok);
                    done(-eng(EngineError::Bind(b)), completed as u32)
                }
                Err(other) => done(-eng(other), 0),
            };
        }
        // Asynchronous: everything checked first; nothing queued on error.
        let mut reqs = Vec::with_capacity(ops.len());
        for op in &ops {
            let lookup = self.bind_lookup(r.vm_id);
            let b = match BindOp::from_uapi(
                op.flags,
                op.bo_handle,
                op.bo_offset,
                op.va,
                op.size,
                lookup,
            ) {
                Ok(b) => b,
                Err(e) => return done(-e.errno(), 0),
            };
            let syncs = match self.sync_ops(&view, &op.syncs) {
                Ok(s) => s,
                Err(e) => return done(-e, 0),
            };
            reqs.push(BindRequest { op: b, syncs });
        }
        if reqs.is_empty() {
            return done(0, 0);
        }
        let n = reqs.len();
        let id = match self.new_work(WorkKind::Bind { ops: n }, 1, c, rsp, (16, None), tracker) {
            Ok(id) => id,
            Err(e) => return done(-e, 0),
        };
        let Some(e) = self.engine.as_ref() else {
            self.shared.cancel(id);
            return done(-EIO, 0);
        };
        match e.vm_bind(
            vm_engine,
            reqs,
            BindMode::Async {
                user_data: id << INDEX_BITS,
            },
        ) {
            Ok(()) => {
                let v = u::VmBindRsp {
                    hdr: u::RspHdr::for_response::<u::VmBindRsp>(0),
                    completed_ops: n as u32,
                    ..Default::default()
                };
                (0, bytes(&v))
            }
            Err(err) => {
                self.shared.cancel(id);
                done(-eng(err), 0)
            }
        }
    }

    fn group_create(&mut self, c: &Cmd<'_>, env: &SubmitEnv<'_>) -> Res<u::GroupCreateRsp> {
        let view = parse::<u::GroupCreateReq>(c.body)?;
        let r = *view.request();
        if r.queues.count == 0 {
            return Err(EINVAL);
        }
        let queues = view
            .array::<u::QueueCreate>(&r.queues)
            .map_err(|e| e.errno())?;
        if r.priority > 3 {
            return Err(EINVAL);
        }
        let model = self.cfg.model;
        if !model.priority_allowed(r.priority, self.cfg.privileged) {
            return Err(EACCES);
        }
        if r.pad != 0 {
            return Err(EINVAL);
        }
        let vm = self.vms.get(&r.vm_id).ok_or(EINVAL)?.engine;
        if queues.iter().any(|q| q.pad != [0; 3]) {
            return Err(EINVAL);
        }
        let args = GroupCreate {
            queues: queues
                .iter()
                .map(|q| QueueCreate {
                    priority: q.priority,
                    ringbuf_size: q.ringbuf_size,
                })
                .collect(),
            max_compute_cores: r.max_compute_cores,
            max_fragment_cores: r.max_fragment_cores,
            max_tiler_cores: r.max_tiler_cores,
            priority: r.priority,
            compute_core_mask: r.compute_core_mask,
            fragment_core_mask: r.fragment_core_mask,
            tiler_core_mask: r.tiler_core_mask,
            vm,
            privileged: self.cfg.privileged,
        };
        args.validate(&model).map_err(|e| e.errno())?;
        let handle = pick_id(&self.groups, r.handle, u::MAX_GROUPS, EBUSY)?;
        let mut rings = Vec::new();
        for _ in &queues {
            match self.take_ring(env) {
                Ok(ring) => rings.push(ring),
                Err(e) => {
                    rings.iter().for_each(|&r| self.free_ring(r));
                    return Err(e);
                }
            }
        }
        let created = self
            .engine(env)
            .and_then(|e| e.group_create(args).map_err(eng));
        let engine_handle = match created {
            Ok(h) => h,
            Err(e) => {
                rings.iter().for_each(|&r| self.free_ring(r));
                return Err(if e == libc::ENOMEM { ENOSPC } else { e });
            }
        };
        let mut out = u::GroupCreateRsp {
            handle,
            queue_count: queues.len() as u32,
            ..Default::default()
        };
        for (i, ring) in rings.iter().enumerate() {
            if let Some(slot) = out.queue_rings.get_mut(i) {
                *slot = *ring as u8;
            }
        }
        self.groups.insert(
            handle,
            GroupEntry {
                engine: engine_handle,
                rings,
            },
        );
        Ok(out)
    }

    fn group_destroy(&mut self, c: &Cmd<'_>) -> Res<()> {
        let r = *parse::<u::GroupDestroyReq>(c.body)?.request();
        if r.pad != 0 {
            return Err(EINVAL);
        }
        let g = self.groups.remove(&r.handle).ok_or(EINVAL)?;
        g.rings.iter().for_each(|&ring| self.free_ring(ring));
        self.shared.lock().faults.remove(&g.engine);
        if let Some(e) = &self.engine {
            e.group_destroy(g.engine).map_err(eng)?;
        }
        Ok(())
    }

    fn group_state(&mut self, c: &Cmd<'_>) -> Res<u::GroupGetStateRsp> {
        let r = *parse::<u::GroupGetStateReq>(c.body)?.request();
        if r.pad != 0 {
            return Err(EINVAL);
        }
        let g = self.groups.get(&r.handle).ok_or(EINVAL)?;
        let e = self.engine.as_ref().ok_or(EINVAL)?;
        let st = e.group_state(g.engine).map_err(eng)?;
        let fault = self.shared.lock().faults.get(&g.engine).copied();
        let fault = if st.fatal_queues != 0 {
            fault.unwrap_or_default()
        } else {
            Default::default()
        };
        Ok(u::GroupGetStateRsp {
            state: st.state_flags(),
            fatal_queues: st.fatal_queues,
            exception_type: fault.exception_type,
            fault_va: fault.fault_va,
            ..Default::default()
        })
    }

    fn group_submit(
        &mut self,
        c: &Cmd<'_>,
        env: &SubmitEnv<'_>,
        rsp: &Arc<RspMem>,
        tracker: Option<&Arc<WorkTracker>>,
    ) -> (i32, Reply) {
        let done = |ret: i32| {
            let v = u::GroupSubmitRsp {
                hdr: u::RspHdr::for_response::<u::GroupSubmitRsp>(ret),
                completion: u::Completion {
                    state: u::COMPLETION_DONE,
                    result: ret,
                },
            };
            (ret, bytes(&v))
        };
        let view = match parse::<u::GroupSubmitReq>(c.body) {
            Ok(v) => v,
            Err(e) => return done(-e),
        };
        let r = *view.request();
        if r.pad != 0 {
            return done(-EINVAL);
        }
        // Read from the command buffer as they are checked and converted,
        // not copied out first.
        let subs = match view.elements::<u::QueueSubmit>(&r.queue_submits) {
            Ok(s) => s,
            Err(e) => return done(-e.errno()),
        };
        let target = self
            .groups
            .get(&r.group_handle)
            .map(|g| (g.engine, g.rings.len()));
        // The queue index is checked here too (the engine checks it
        // again), so that the usual mistake never depends on the engine's
        // answer; it is reported after the elements' own errors and an
        // unknown group, as a separate pass would.
        let mut bad_queue = false;
        // Converted in the same pass; a sync op's error is reported after
        // all of the above.
        let mut queue_submits = Submits::default();
        let mut sync_error = None;
        for s in subs {
            let s = match s {
                Ok(s) => s,
                Err(e) => return done(-e.errno()),
            };
            if s.pad != 0 {
                return done(-EINVAL);
            }
            let job = job_of(&s);
            if let Err(e) = job.validate() {
                return done(-e.errno());
            }
            bad_queue |= target.is_some_and(|(_, queues)| s.queue_index as usize >= queues);
            if sync_error.is_none() {
                match self.sync_ops(&view, &s.syncs) {
                    Ok(syncs) => queue_submits.push(QueueSubmit {
                        job,
                        syncs,
                        user_data: 0,
                    }),
                    Err(e) => sync_error = Some(e),
                }
            }
        }
        let Some((group, _)) = target else {
            return done(-EINVAL);
        };
        if bad_queue {
            return done(-EINVAL);
        }
        if let Some(e) = sync_error {
            return done(-e);
        }
        if queue_submits.as_slice().is_empty() {
            return done(0);
        }
        let n = queue_submits.as_slice().len();
        if self.engine(env).is_err() {
            return done(-EIO);
        }
        let id = match self.new_work(WorkKind::Jobs, n, c, rsp, (8, None), tracker) {
            Ok(id) => id,
            Err(e) => return done(-e),
        };
        for (i, q) in queue_submits.as_mut_slice().iter_mut().enumerate() {
            q.user_data = (id << INDEX_BITS) | (i as u64 & 0xffff);
        }
        let Some(e) = self.engine.as_ref() else {
            self.shared.cancel(id);
            return done(-EIO);
        };
        // A fenced SUBMIT_3D is held until its jobs complete, so the
        // worker need not wait for the engine's checks: a refusal rewrites
        // the response before the fence can complete (docs/protocol.md
        // §4.5). Unfenced ones keep the answer-before-seqno order.
        let queued = if tracker.is_some() {
            self.ring_due = true;
            e.group_submit_posted(group, queue_submits)
        } else {
            e.group_submit(group, queue_submits)
        };
        match queued {
            Ok(()) => {
                let v = u::GroupSubmitRsp {
                    hdr: u::RspHdr::for_response::<u::GroupSubmitRsp>(0),
                    completion: u::Completion::default(),
                };
                (0, bytes(&v))
            }
            Err(err) => {
                self.shared.cancel(id);
                done(-eng(err))
            }
        }
    }

    fn heap_create(&mut self, c: &Cmd<'_>, env: &SubmitEnv<'_>) -> Res<u::TilerHeapCreateRsp> {
        let r = *parse::<u::TilerHeapCreateReq>(c.body)?.request();
        let vm = self.vms.get(&r.vm_id).ok_or(EINVAL)?.engine;
        if r.pad != 0 {
            return Err(EINVAL);
        }
        let args = HeapCreate {
            vm,
            initial_chunk_count: r.initial_chunk_count,
            chunk_size: r.chunk_size,
            max_chunks: r.max_chunks,
            target_in_flight: r.target_in_flight,
        };
        args.validate().map_err(|e| e.errno())?;
        let info = self
            .engine(env)?
            .heap_create(args)
            .map_err(eng)
            .map_err(|e| if e == ENOMEM { ENOSPC } else { e })?;
        let handle = (r.vm_id << 16) | (info.handle & 0xffff);
        self.heaps.insert(handle, info.handle);
        Ok(u::TilerHeapCreateRsp {
            handle,
            tiler_heap_ctx_gpu_va: info.tiler_heap_ctx_gpu_va,
            first_heap_chunk_gpu_va: info.first_heap_chunk_gpu_va,
            ..Default::default()
        })
    }

    fn heap_destroy(&mut self, c: &Cmd<'_>) -> Res<()> {
        let r = *parse::<u::TilerHeapDestroyReq>(c.body)?.request();
        if r.pad != 0 {
            return Err(EINVAL);
        }
        let h = self.heaps.remove(&r.handle).ok_or(EINVAL)?;
        if let Some(e) = &self.engine {
            e.heap_destroy(h).map_err(eng)?;
        }
        Ok(())
    }

    fn sync_create(&mut self, c: &Cmd<'_>, env: &SubmitEnv<'_>) -> Res<u::SyncobjCreateRsp> {
        let r = *parse::<u::SyncobjCreateReq>(c.body)?.request();
        if r.flags & !(u::SYNCOBJ_CREATE_SIGNALED | u::SYNCOBJ_CREATE_TIMELINE) != 0 {
            return Err(EINVAL);
        }
        let handle = pick_id(&self.syncobjs, r.handle, u::MAX_SYNCOBJS, ENOMEM)?;
        let kind = if r.flags & u::SYNCOBJ_CREATE_TIMELINE != 0 {
            SyncKind::Timeline
        } else {
            SyncKind::Binary
        };
        let signaled = r.flags & u::SYNCOBJ_CREATE_SIGNALED != 0 && kind == SyncKind::Binary;
        let h = self.engine(env)?.sync_create(kind, signaled).map_err(eng)?;
        self.syncobjs.insert(handle, (h, kind));
        Ok(u::SyncobjCreateRsp {
            handle,
            ..Default::default()
        })
    }

    fn sync_destroy(&mut self, c: &Cmd<'_>) -> Res<()> {
        let r = *parse::<u::SyncobjDestroyReq>(c.body)?.request();
        if r.pad != 0 {
            return Err(EINVAL);
        }
        let (h, _) = self.syncobjs.remove(&r.handle).ok_or(EINVAL)?;
        if let Some(e) = &self.engine {
            e.sync_destroy(h).map_err(eng)?;
        }
        Ok(())
    }

    fn sync_reset(&mut self, c: &Cmd<'_>) -> Res<()> {
        let r = *parse::<u::SyncobjResetReq>(c.body)?.request();
        if r.pad != 0 {
            return Err(EINVAL);
        }
        let &(h, kind) = self.syncobjs.get(&r.handle).ok_or(ENOENT)?;
        if kind != SyncKind::Binary {
            return Err(EINVAL);
        }
        self.engine.as_ref().ok_or(EIO)?.sync_reset(h).map_err(eng)
    }

    fn sync_signal(&mut self, c: &Cmd<'_>) -> Res<()> {
        let r = *parse::<u::SyncobjPoint>(c.body)?.request();
        if r.pad != 0 {
            return Err(EINVAL);
        }
        let &(h, kind) = self.syncobjs.get(&r.handle).ok_or(ENOENT)?;
        if kind == SyncKind::Binary && r.point != 0 {
            return Err(EINVAL);
        }
        self.engine
            .as_ref()
            .ok_or(EIO)?
            .sync_signal(h, r.point)
            .map_err(eng)
    }

    fn sync_query(&mut self, c: &Cmd<'_>) -> Res<u::SyncobjQueryRsp> {
        let r = *parse::<u::SyncobjQueryReq>(c.body)?.request();
        if r.pad != 0 {
            return Err(EINVAL);
        }
        let &(h, kind) = self.syncobjs.get(&r.handle).ok_or(ENOENT)?;
        if kind == SyncKind::Binary && r.point != 0 {
            return Err(EINVAL);
        }
        let st = self
            .engine
            .as_ref()
            .ok_or(EIO)?
            .sync_query(h)
            .map_err(eng)?;
        let mut out = u::SyncobjQueryRsp::default();
        match st {
            SyncState::Binary(s) => {
                out.kind = u::SYNCOBJ_KIND_BINARY;
                (out.status, out.error) = match s {
                    FenceStatus::Unsubmitted => (u::SYNCOBJ_STATUS_UNSUBMITTED, 0),
                    FenceStatus::Pending => (u::SYNCOBJ_STATUS_PENDING, 0),
                    FenceStatus::Signaled => (u::SYNCOBJ_STATUS_SIGNALED, 0),
                    FenceStatus::Error(e) => (u::SYNCOBJ_STATUS_ERROR, -e.abs()),
                };
            }
            SyncState::Timeline {
                value,
                last_submitted,
            } => {
                out.kind = u::SYNCOBJ_KIND_TIMELINE;
                out.value = value;
                out.last_submitted = last_submitted;
                let p = if r.point == 0 {
                    last_submitted
                } else {
                    r.point
                };
                out.status = if p <= value {
                    u::SYNCOBJ_STATUS_SIGNALED
                } else if p <= last_submitted {
                    u::SYNCOBJ_STATUS_PENDING
                } else {
                    u::SYNCOBJ_STATUS_UNSUBMITTED
                };
            }
        }
        Ok(out)
    }

    fn sync_wait(
        &mut self,
        c: &Cmd<'_>,
        env: &SubmitEnv<'_>,
        rsp: &Arc<RspMem>,
        tracker: Option<&Arc<WorkTracker>>,
    ) -> (i32, Reply) {
        let done = |ret: i32| {
            let v = u::SyncobjWaitRsp {
                hdr: u::RspHdr::for_response::<u::SyncobjWaitRsp>(ret),
                completion: u::Completion {
                    state: u::COMPLETION_DONE,
                    result: ret,
                },
                ..Default::default()
            };
            (ret, bytes(&v))
        };
        let view = match parse::<u::SyncobjWaitReq>(c.body) {
            Ok(v) => v,
            Err(e) => return done(-e),
        };
        let r = *view.request();
        if r.flags & !(u::SYNCOBJ_WAIT_ALL | u::SYNCOBJ_WAIT_FOR_SUBMIT) != 0 || r.pad != 0 {
            return done(-EINVAL);
        }
        let points = match view.array::<u::SyncobjPoint>(&r.points) {
            Ok(p) => p,
            Err(e) => return done(-e.errno()),
        };
        if points.is_empty() {
            return done(-EINVAL);
        }
        if points.len() >= 1 << INDEX_BITS {
            return done(-ENOMEM);
        }
        let mut resolved = Vec::with_capacity(points.len());
        for p in &points {
            if p.pad != 0 {
                return done(-EINVAL);
            }
            let Some(&(h, kind)) = self.syncobjs.get(&p.handle) else {
                return done(-ENOENT);
            };
            if kind == SyncKind::Binary && p.point != 0 {
                return done(-EINVAL);
            }
            resolved.push((h, p.point));
        }
        if self.engine(env).is_err() {
            return done(-EIO);
        }
        let all = r.flags & u::SYNCOBJ_WAIT_ALL != 0;
        let flags = WaitFlags {
            wait_for_submit: r.flags & u::SYNCOBJ_WAIT_FOR_SUBMIT != 0,
        };
        // The device cap bounds every wait; a shorter timeout of the
        // guest's wins.
        let cap_ns = u64::from(self.cfg.max_syncobj_wait_ms.max(1)) * 1_000_000;
        let timeout_ns = if r.timeout_ns == 0 {
            cap_ns
        } else {
            r.timeout_ns.min(cap_ns)
        };
        let remaining = if all { resolved.len() } else { 1 };
        let id = match self.new_work(
            WorkKind::Wait { any: !all },
            remaining,
            c,
            rsp,
            (16, Some(8)),
            tracker,
        ) {
            Ok(id) => id,
            Err(e) => return done(-e),
        };
        let Some(e) = self.engine.as_ref() else {
            self.shared.cancel(id);
            return done(-EIO);
        };
        for (i, (h, point)) in resolved.iter().enumerate() {
            let user_data = (id << INDEX_BITS) | i as u64;
            if let Err(err) = e.sync_wait_timeout(*h, *point, flags, user_data, timeout_ns) {
                self.shared.cancel(id);
                return done(-eng(err));
            }
        }
        let v = u::SyncobjWaitRsp {
            hdr: u::RspHdr::for_response::<u::SyncobjWaitRsp>(0),
            ..Default::default()
        };
        (0, bytes(&v))
    }
}

impl Drop for NativeContext {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn size_of_rsp<R: NativeRequest>() -> u64 {
    std::mem::size_of::<R::Response>() as u64
}

/// Size of the response of `cmd` whose body is `body`.
fn response_len(cmd: u32, body: &[u8]) -> u64 {
    match cmd {
        u::NATIVE_CMD_DEV_QUERY => match RequestView::<u::DevQueryReq>::parse(body) {
            Ok(v) if v.request().size != 0 => dev_query_response_len(v.request().size),
            _ => 16,
        },
        u::NATIVE_CMD_VM_CREATE => size_of_rsp::<u::VmCreateReq>(),
        u::NATIVE_CMD_VM_DESTROY => size_of_rsp::<u::VmDestroyReq>(),
        u::NATIVE_CMD_VM_BIND => size_of_rsp::<u::VmBindReq>(),
        u::NATIVE_CMD_VM_GET_STATE => size_of_rsp::<u::VmGetStateReq>(),
        u::NATIVE_CMD_BO_CREATE_FROM_RESOURCE => size_of_rsp::<u::BoCreateReq>(),
        u::NATIVE_CMD_GROUP_CREATE => size_of_rsp::<u::GroupCreateReq>(),
        u::NATIVE_CMD_GROUP_DESTROY => size_of_rsp::<u::GroupDestroyReq>(),
        u::NATIVE_CMD_GROUP_SUBMIT => size_of_rsp::<u::GroupSubmitReq>(),
        u::NATIVE_CMD_GROUP_GET_STATE => size_of_rsp::<u::GroupGetStateReq>(),
        u::NATIVE_CMD_TILER_HEAP_CREATE => size_of_rsp::<u::TilerHeapCreateReq>(),
        u::NATIVE_CMD_TILER_HEAP_DESTROY => size_of_rsp::<u::TilerHeapDestroyReq>(),
        u::NATIVE_CMD_BO_DESTROY => size_of_rsp::<u::BoDestroyReq>(),
        u::NATIVE_CMD_VM_ADD_KERNEL_MEMORY => size_of_rsp::<u::VmAddKernelMemoryReq>(),
        u::NATIVE_CMD_SYNCOBJ_CREATE => size_of_rsp::<u::SyncobjCreateReq>(),
        u::NATIVE_CMD_SYNCOBJ_DESTROY => size_of_rsp::<u::SyncobjDestroyReq>(),
        u::NATIVE_CMD_SYNCOBJ_RESET => size_of_rsp::<u::SyncobjResetReq>(),
        u::NATIVE_CMD_SYNCOBJ_SIGNAL => size_of_rsp::<u::SyncobjPoint>(),
        u::NATIVE_CMD_SYNCOBJ_QUERY => size_of_rsp::<u::SyncobjQueryReq>(),
        u::NATIVE_CMD_SYNCOBJ_WAIT => size_of_rsp::<u::SyncobjWaitReq>(),
        _ => 8,
    }
}

/// The engine's form of a GROUP_SUBMIT entry.
fn job_of(s: &u::QueueSubmit) -> JobSubmit {
    JobSubmit {
        queue: s.queue_index,
        stream_addr: s.stream_addr,
        stream_size: s.stream_size,
        latest_flush: s.latest_flush,
        tag: 0,
    }
}
