//! The command handler: decodes one virtio-gpu request from a descriptor
//! chain, validates every guest-controlled field, executes it and writes the
//! response.
//!
//! The handler never trusts the guest: a request that is too short, names an
//! unknown object, or carries an out-of-range index or size gets the
//! protocol's error response. A chain that cannot even hold a response is
//! still consumed and returned with a zero length. Nothing here blocks.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use log::debug;
use thiserror::Error;
use vm_memory::{ByteValued, GuestMemoryAtomic, GuestMemoryMmap};

use super::chain::{ChainReader as Reader, ChainWriter as Writer};
use super::edid;
use super::fence::Timeline;
use super::protocol::*;
use super::resources::{Backing, Limits, ResourceError, ResourceKind, ResourceTable};
use crate::display::{self, DisplayMsg, FrontendDisplay};
use crate::guest_warn;
use crate::log_limit::LogLimiter;
use crate::native::{FenceSink, NativeConfig, NativeContext, SubmitEnv, WorkTracker};
use crate::uapi::capset::{self, DrmCapset, CAPSET_ID_DRM};
use vhost::vhost_user::gpu_message::{
    VhostUserGpuCursorPos, VhostUserGpuCursorUpdate, VhostUserGpuScanout, VhostUserGpuUpdate,
};

/// Device settings that do not change during a connection.
#[derive(Clone, Debug)]
pub struct GpuConfig {
    /// Number of scanouts (1..=16).
    pub num_scanouts: u32,
    /// Preferred width of each scanout when headless.
    pub width: u32,
    /// Preferred height of each scanout when headless.
    pub height: u32,
    /// Per-connection limits.
    pub limits: Limits,
    /// The capset this device announces.
    pub capset: DrmCapset,
    /// Settings of the native contexts.
    pub native: NativeConfig,
}

impl Default for GpuConfig {
    fn default() -> Self {
        GpuConfig {
            num_scanouts: 1,
            width: 1280,
            height: 800,
            limits: Limits::default(),
            capset: default_capset(),
            native: NativeConfig::default(),
        }
    }
}

/// The capset of the default GPU model.
pub fn default_capset() -> DrmCapset {
    let (major, minor, patch) = capset::PANTHOR_VERSION;
    DrmCapset {
        wire_format_version: capset::WIRE_FORMAT_VERSION,
        version_major: major,
        version_minor: minor,
        version_patchlevel: patch,
        context_type: capset::CONTEXT_TYPE_MALI_CSF,
        pad: 0,
        gpu_id: 0xa867_0005,
        gpu_rev: 0,
        csf_id: 0x0405_0120,
        mmu_features: 0x2830,
        shader_present: 0x50005,
        tiler_present: 0x1,
        max_request_size: 0,
        reserved: 0,
    }
}

/// Feature bits the driver accepted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Negotiated {
    /// VIRGL (3D commands).
    pub virgl: bool,
    /// EDID.
    pub edid: bool,
    /// RESOURCE_UUID.
    pub uuid: bool,
    /// RESOURCE_BLOB.
    pub blob: bool,
    /// CONTEXT_INIT.
    pub context_init: bool,
}

impl Negotiated {
    /// Decodes acked virtio feature bits.
    pub fn from_features(f: u64) -> Self {
        let has = |bit: u32| f & (1u64 << bit) != 0;
        Negotiated {
            virgl: has(VIRTIO_GPU_F_VIRGL),
            edid: has(VIRTIO_GPU_F_EDID),
            uuid: has(VIRTIO_GPU_F_RESOURCE_UUID),
            blob: has(VIRTIO_GPU_F_RESOURCE_BLOB),
            context_init: has(VIRTIO_GPU_F_CONTEXT_INIT),
        }
    }

    /// The feature mode the daemon runs in, for logs and docs.
    pub fn mode(&self) -> &'static str {
        if self.context_init && self.blob {
            "full (CONTEXT_INIT + RESOURCE_BLOB: per-ring fences, guest blobs)"
        } else if self.virgl {
            "compat (VIRGL only: one global fence timeline, 3D buffer resources)"
        } else {
            "2D only (no 3D feature negotiated: the GPU is unreachable)"
        }
    }
}

/// An error answer, with the response code it maps to.
#[derive(Debug, Error)]
pub enum CmdError {
    /// ERR_UNSPEC.
    #[error("{0}")]
    Unspec(String),
    /// ERR_OUT_OF_MEMORY.
    #[error("out of memory: {0}")]
    OutOfMemory(String),
    /// ERR_INVALID_SCANOUT_ID.
    #[error("invalid scanout id {0}")]
    InvalidScanout(u32),
    /// ERR_INVALID_RESOURCE_ID.
    #[error("invalid resource id {0}")]
    InvalidResource(u32),
    /// ERR_INVALID_CONTEXT_ID.
    #[error("invalid context id {0}")]
    InvalidContext(u32),
    /// ERR_INVALID_PARAMETER.
    #[error("invalid parameter: {0}")]
    InvalidParameter(String),
}

impl CmdError {
    /// The virtio-gpu response code.
    pub fn code(&self) -> u32 {
        match self {
            CmdError::Unspec(_) => cmd::RESP_ERR_UNSPEC,
            CmdError::OutOfMemory(_) => cmd::RESP_ERR_OUT_OF_MEMORY,
            CmdError::InvalidScanout(_) => cmd::RESP_ERR_INVALID_SCANOUT_ID,
            CmdError::InvalidResource(_) => cmd::RESP_ERR_INVALID_RESOURCE_ID,
            CmdError::InvalidContext(_) => cmd::RESP_ERR_INVALID_CONTEXT_ID,
            CmdError::InvalidParameter(_) => cmd::RESP_ERR_INVALID_PARAMETER,
        }
    }
}

impl From<ResourceError> for CmdError {
    fn from(e: ResourceError) -> Self {
        match e {
            ResourceError::InvalidId(id) => CmdError::InvalidResource(id),
            ResourceError::Exists(id) => CmdError::InvalidResource(id),
            ResourceError::Quota(q) => CmdError::OutOfMemory(q.to_string()),
            other => CmdError::InvalidParameter(other.to_string()),
        }
    }
}

fn invalid(msg: impl Into<String>) -> CmdError {
    CmdError::InvalidParameter(msg.into())
}

/// A successful answer: a response code and the bytes after the header.
enum Resp {
    NoData,
    Data(u32, Vec<u8>),
}

fn data<T: ByteValued>(code: u32, body: &T) -> Resp {
    // Every response struct starts with a header that the dispatcher fills.
    let bytes = body.as_slice();
    Resp::Data(code, bytes[std::mem::size_of::<CtrlHdr>()..].to_vec())
}

/// What the queue should do with a processed chain.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// Bytes written into the chain.
    pub len: u32,
    /// The fence timeline and id, for a fenced command.
    pub fence: Option<(Timeline, u64)>,
    /// For a fenced SUBMIT_3D that queued GPU work: the tracker of that
    /// work. The fence is queued as not done, then the tracker armed.
    pub pending: Option<Arc<WorkTracker>>,
    /// A context destroyed by this command: its held fences must be
    /// returned.
    pub destroyed_ctx: Option<u32>,
}

#[derive(Debug)]
struct Context {
    capset_id: u32,
    name: String,
    resources: BTreeSet<u32>,
    native: NativeContext,
}

#[derive(Clone, Copy, Debug, Default)]
enum ScanoutSource {
    #[default]
    Off,
    TwoD {
        resource_id: u32,
        rect: Rect,
    },
    Blob {
        resource_id: u32,
        rect: Rect,
        width: u32,
        height: u32,
        stride: u32,
        offset: u32,
    },
}

impl ScanoutSource {
    fn resource_id(&self) -> Option<u32> {
        match self {
            ScanoutSource::Off => None,
            ScanoutSource::TwoD { resource_id, .. } | ScanoutSource::Blob { resource_id, .. } => {
                Some(*resource_id)
            }
        }
    }
}

/// The device state of one connection: resources, contexts, scanouts.
pub struct GpuState {
    cfg: GpuConfig,
    features: Negotiated,
    resources: ResourceTable,
    /// Guest memory snapshot each 2D resource's rutabaga iovecs point into;
    /// holding it keeps those mappings alive.
    pixel_mem: BTreeMap<u32, Arc<GuestMemoryMmap>>,
    contexts: BTreeMap<u32, Context>,
    scanouts: Vec<ScanoutSource>,
    display: Option<FrontendDisplay>,
    uuid_seed: u64,
    limiter: LogLimiter,
    sink: Option<Arc<dyn FenceSink>>,
    guest_mem: Option<GuestMemoryAtomic<GuestMemoryMmap>>,
    pending: Option<Arc<WorkTracker>>,
    destroyed_ctx: Option<u32>,
    /// The copy of the last SUBMIT_3D's command buffer, kept for its
    /// capacity.
    submit_buf: Vec<u8>,
}

fn is_2d(kind: &ResourceKind) -> bool {
    matches!(kind, ResourceKind::TwoD { .. })
}

/// Checks `r` lies inside a `w` x `h` image, with checked arithmetic.
fn rect_inside(r: &Rect, w: u32, h: u32) -> bool {
    r.x.checked_add(r.width).is_some_and(|e| e <= w)
        && r.y.checked_add(r.height).is_some_and(|e| e <= h)
}

impl GpuState {
    /// A fresh state for a new connection.
    pub fn new(cfg: GpuConfig) -> Self {
        let n = cfg.num_scanouts.clamp(1, VIRTIO_GPU_MAX_SCANOUTS as u32) as usize;
        let uuid_seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
            ^ u64::from(std::process::id()).rotate_left(32);
        GpuState {
            cfg,
            features: Negotiated::default(),
            resources: ResourceTable::new(),
            pixel_mem: BTreeMap::new(),
            contexts: BTreeMap::new(),
            scanouts: vec![ScanoutSource::Off; n],
            display: None,
            uuid_seed,
            limiter: LogLimiter::default(),
            sink: None,
            guest_mem: None,
            pending: None,
            destroyed_ctx: None,
            submit_buf: Vec::new(),
        }
    }

    /// Sets where native contexts complete their fences.
    pub fn set_fence_sink(&mut self, sink: Arc<dyn FenceSink>) {
        self.sink = Some(sink);
    }

    /// Sets the guest memory the GPU engines use.
    pub fn set_memory(&mut self, mem: GuestMemoryAtomic<GuestMemoryMmap>) {
        self.guest_mem = Some(mem);
    }

    /// Records the features the driver accepted.
    pub fn set_features(&mut self, f: Negotiated) {
        self.features = f;
    }

    /// The features the driver accepted.
    pub fn features(&self) -> Negotiated {
        self.features
    }

    /// Connects QEMU's display.
    pub fn set_display(&mut self, d: FrontendDisplay) {
        self.display = Some(d);
    }

    /// Number of capsets GET_CAPSET_INFO answers for.
    pub fn num_capsets(&self) -> u32 {
        1
    }

    /// Number of scanouts.
    pub fn num_scanouts(&self) -> u32 {
        self.scanouts.len() as u32
    }

    /// Number of live resources (for tests and leak checks).
    pub fn resource_count(&self) -> usize {
        self.resources.len()
    }

    /// Number of live contexts.
    pub fn context_count(&self) -> usize {
        self.contexts.len()
    }

    /// Ids of live contexts.
    pub fn context_ids(&self) -> Vec<u32> {
        self.contexts.keys().copied().collect()
    }

    /// Frees every object of the connection and returns how many resources
    /// and contexts there were. Must run on the worker thread that owns the
    /// 2D pixels.
    pub fn teardown(&mut self) -> (usize, usize) {
        let counts = (self.resources.len(), self.contexts.len());
        for id in self.resources.ids() {
            if let Ok(r) = self.resources.remove(id) {
                if is_2d(&r.kind) {
                    display::unref_2d(id);
                }
            }
        }
        self.pixel_mem.clear();
        self.contexts.clear();
        self.scanouts
            .iter_mut()
            .for_each(|s| *s = ScanoutSource::Off);
        display::reset_thread_pixels();
        counts
    }

    /// Rings the GPU engines that were handed fenced work without a ring
    /// (see `NativeContext::ring_engine`). The transport calls it after a
    /// batch of requests, once their fences are queued.
    pub fn ring_engines(&mut self) {
        for ctx in self.contexts.values_mut() {
            ctx.native.ring_engine();
        }
    }

    /// Handles one request read from `reader`, writing the response to
    /// `writer` (if any). `cursor_queue` selects the cursor command set.
    /// Fenced GPU work it queues may wait for [`GpuState::ring_engines`].
    pub fn handle(
        &mut self,
        mem: &Arc<GuestMemoryMmap>,
        reader: Option<Reader<'_>>,
        writer: Option<&mut Writer<'_>>,
        cursor_queue: bool,
    ) -> Outcome {
        let (hdr, result) = match reader {
            None => (
                CtrlHdr::default(),
                Err(CmdError::Unspec("unreadable request descriptors".into())),
            ),
            Some(mut reader) => match reader.read_obj::<CtrlHdr>() {
                Err(_) => (
                    CtrlHdr::default(),
                    Err(CmdError::Unspec("request shorter than a header".into())),
                ),
                Ok(hdr) => {
                    let r = if cursor_queue {
                        self.dispatch_cursor(&hdr, &mut reader)
                    } else {
                        self.dispatch(&hdr, &mut reader, mem)
                    };
                    (hdr, r)
                }
            },
        };

        let fence = self.fence_of(&hdr);
        let pending = self.pending.take();
        let destroyed_ctx = self.destroyed_ctx.take();
        let (code, body) = match result {
            Ok(Resp::NoData) => (cmd::RESP_OK_NODATA, Vec::new()),
            Ok(Resp::Data(code, body)) => (code, body),
            Err(e) => {
                guest_warn!(
                    self.limiter,
                    "{} (ctx {}) failed: {}",
                    cmd::name(hdr.type_),
                    hdr.ctx_id,
                    e
                );
                (e.code(), Vec::new())
            }
        };
        debug!(
            "{} ctx {}{} -> {}",
            cmd::name(hdr.type_),
            hdr.ctx_id,
            if hdr.is_fenced() {
                format!(" fence {}", hdr.fence_id)
            } else {
                String::new()
            },
            cmd::name(code)
        );
        let len = match writer {
            Some(w) => write_response(w, hdr.response(code), &body, &mut self.limiter),
            None => 0,
        };
        Outcome {
            len,
            fence: fence.map(|t| (t, hdr.fence_id)),
            pending: pending.filter(|_| fence.is_some()),
            destroyed_ctx,
        }
    }

    /// The timeline a fenced request belongs to.
    fn fence_of(&self, hdr: &CtrlHdr) -> Option<Timeline> {
        if !hdr.is_fenced() {
            return None;
        }
        if hdr.flags & VIRTIO_GPU_FLAG_INFO_RING_IDX != 0
            && self.features.context_init
            && hdr.ring_idx < VIRTIO_GPU_MAX_RINGS
        {
            Some(Timeline::Ring {
                ctx_id: hdr.ctx_id,
                ring_idx: hdr.ring_idx,
            })
        } else {
            Some(Timeline::Global)
        }
    }

    fn dispatch(
        &mut self,
        hdr: &CtrlHdr,
        r: &mut Reader<'_>,
        mem: &Arc<GuestMemoryMmap>,
    ) -> Result<Resp, CmdError> {
        if hdr.flags & VIRTIO_GPU_FLAG_INFO_RING_IDX != 0 {
            if !self.features.context_init {
                return Err(invalid("ring index without CONTEXT_INIT"));
            }
            if hdr.ring_idx >= VIRTIO_GPU_MAX_RINGS {
                return Err(invalid(format!("ring index {} >= 64", hdr.ring_idx)));
            }
        }
        match hdr.type_ {
            cmd::GET_DISPLAY_INFO => self.get_display_info(),
            cmd::GET_EDID => self.get_edid(read(hdr, r)?),
            cmd::GET_CAPSET_INFO => self.get_capset_info(read(hdr, r)?),
            cmd::GET_CAPSET => self.get_capset(read(hdr, r)?),
            cmd::RESOURCE_CREATE_2D => self.resource_create_2d(read(hdr, r)?),
            cmd::RESOURCE_CREATE_3D => self.need_virgl()?.resource_create_3d(read(hdr, r)?),
            cmd::RESOURCE_CREATE_BLOB => self.resource_create_blob(read(hdr, r)?, r, mem),
            cmd::RESOURCE_UNREF => self.resource_unref(read(hdr, r)?),
            cmd::RESOURCE_ATTACH_BACKING => self.attach_backing(read(hdr, r)?, r, mem),
            cmd::RESOURCE_DETACH_BACKING => self.detach_backing(read(hdr, r)?),
            cmd::TRANSFER_TO_HOST_2D => self.transfer_to_host_2d(read(hdr, r)?, mem),
            cmd::TRANSFER_TO_HOST_3D => self.need_virgl()?.transfer_3d(read(hdr, r)?, mem, true),
            cmd::TRANSFER_FROM_HOST_3D => self.need_virgl()?.transfer_3d(read(hdr, r)?, mem, false),
            cmd::SET_SCANOUT => self.set_scanout(read(hdr, r)?),
            cmd::SET_SCANOUT_BLOB => self.set_scanout_blob(read(hdr, r)?),
            cmd::RESOURCE_FLUSH => self.resource_flush(read(hdr, r)?, mem),
            cmd::RESOURCE_ASSIGN_UUID => self.assign_uuid(read(hdr, r)?),
            cmd::RESOURCE_MAP_BLOB => self.map_blob(read(hdr, r)?),
            cmd::RESOURCE_UNMAP_BLOB => self.unmap_blob(read(hdr, r)?),
            cmd::CTX_CREATE => self.need_virgl()?.ctx_create(read(hdr, r)?),
            cmd::CTX_DESTROY => self.need_virgl()?.ctx_destroy(hdr),
            cmd::CTX_ATTACH_RESOURCE => self.need_virgl()?.ctx_attach(read(hdr, r)?, true),
            cmd::CTX_DETACH_RESOURCE => self.need_virgl()?.ctx_attach(read(hdr, r)?, false),
            cmd::SUBMIT_3D => self.need_virgl()?.submit_3d(hdr, r, mem),
            cmd::UPDATE_CURSOR | cmd::MOVE_CURSOR => {
                Err(invalid("cursor command on the control queue"))
            }
            other => Err(CmdError::Unspec(format!("unknown command {other:#x}"))),
        }
    }

    fn dispatch_cursor(&mut self, hdr: &CtrlHdr, r: &mut Reader<'_>) -> Result<Resp, CmdError> {
        match hdr.type_ {
            cmd::UPDATE_CURSOR => self.update_cursor(read(hdr, r)?, true),
            cmd::MOVE_CURSOR => self.update_cursor(read(hdr, r)?, false),
            other => Err(CmdError::Unspec(format!(
                "command {other:#x} on the cursor queue"
            ))),
        }
    }

    fn need_virgl(&mut self) -> Result<&mut Self, CmdError> {
        if self.features.virgl {
            Ok(self)
        } else {
            Err(CmdError::Unspec("3D command without VIRGL".into()))
        }
    }

    fn scanout_index(&self, id: u32) -> Result<usize, CmdError> {
        let i = id as usize;
        if i < self.scanouts.len() {
            Ok(i)
        } else {
            Err(CmdError::InvalidScanout(id))
        }
    }

    fn modes(&mut self) -> [DisplayOne; VIRTIO_GPU_MAX_SCANOUTS] {
        if let Some(d) = self.display.as_mut() {
            if let Some(modes) = d.display_info(Duration::from_millis(200)) {
                return modes;
            }
        }
        let mut modes = [DisplayOne::default(); VIRTIO_GPU_MAX_SCANOUTS];
        for (i, m) in modes.iter_mut().enumerate().take(self.scanouts.len()) {
            m.r = Rect {
                x: 0,
                y: 0,
                width: self.cfg.width,
                height: self.cfg.height,
            };
            m.enabled = u32::from(i == 0);
        }
        modes
    }

    fn get_display_info(&mut self) -> Result<Resp, CmdError> {
        let mut resp = RespDisplayInfo {
            pmodes: self.modes(),
            ..Default::default()
        };
        // Only the scanouts this device has are reported.
        let n = self.scanouts.len();
        resp.pmodes[n..]
            .iter_mut()
            .for_each(|m| *m = DisplayOne::default());
        Ok(data(cmd::RESP_OK_DISPLAY_INFO, &resp))
    }

    fn get_edid(&mut self, req: GetEdid) -> Result<Resp, CmdError> {
        if !self.features.edid {
            return Err(CmdError::Unspec("EDID not negotiated".into()));
        }
        let i = self.scanout_index(req.scanout)?;
        let m = self.modes()[i];
        let (w, h) = if m.r.width == 0 || m.r.height == 0 {
            (self.cfg.width, self.cfg.height)
        } else {
            (m.r.width, m.r.height)
        };
        let block = edid::generate(w, h);
        let mut resp = RespEdid {
            size: block.len() as u32,
            ..Default::default()
        };
        resp.edid[..block.len()].copy_from_slice(&block);
        Ok(data(cmd::RESP_OK_EDID, &resp))
    }

    fn get_capset_info(&mut self, req: GetCapsetInfo) -> Result<Resp, CmdError> {
        if req.capset_index >= self.num_capsets() {
            return Err(invalid(format!("capset index {}", req.capset_index)));
        }
        let resp = RespCapsetInfo {
            capset_id: CAPSET_ID_DRM,
            capset_max_version: capset::CAPSET_VERSION,
            capset_max_size: std::mem::size_of::<DrmCapset>() as u32,
            ..Default::default()
        };
        Ok(data(cmd::RESP_OK_CAPSET_INFO, &resp))
    }

    fn get_capset(&mut self, req: GetCapset) -> Result<Resp, CmdError> {
        if req.capset_id != CAPSET_ID_DRM {
            return Err(invalid(format!("unknown capset id {}", req.capset_id)));
        }
        if req.capset_version > capset::CAPSET_VERSION {
            return Err(invalid(format!("capset version {}", req.capset_version)));
        }
        Ok(Resp::Data(
            cmd::RESP_OK_CAPSET,
            self.cfg.capset.as_slice().to_vec(),
        ))
    }

    fn resource_create_2d(&mut self, req: ResourceCreate2d) -> Result<Resp, CmdError> {
        let l = self.cfg.limits;
        if !format::is_supported(req.format) {
            return Err(invalid(format!("format {}", req.format)));
        }
        if req.width == 0
            || req.height == 0
            || req.width > l.max_2d_dimension
            || req.height > l.max_2d_dimension
        {
            return Err(invalid(format!("size {}x{}", req.width, req.height)));
        }
        let bytes =
            u64::from(req.width) * u64::from(req.height) * u64::from(display::BYTES_PER_PIXEL);
        self.resources.check_new(req.resource_id, bytes, &l)?;
        display::create_2d(req.resource_id, req.format, req.width, req.height)
            .map_err(|e| CmdError::Unspec(e.to_string()))?;
        self.resources.insert(
            ResourceKind::TwoD {
                format: req.format,
                width: req.width,
                height: req.height,
            },
            req.resource_id,
            bytes,
            None,
        );
        Ok(Resp::NoData)
    }

    fn resource_create_3d(&mut self, req: ResourceCreate3d) -> Result<Resp, CmdError> {
        // Only buffers exist on this GPU: its memory is guest memory, and
        // images are buffers the guest lays out itself.
        if req.target != 0 {
            return Err(invalid(format!("3D target {} (only buffers)", req.target)));
        }
        if req.width == 0
            || req.height != 1
            || req.depth != 1
            || req.array_size != 1
            || req.last_level != 0
            || req.nr_samples > 1
        {
            return Err(invalid("buffer shape must be width x 1 x 1, one level"));
        }
        self.resources
            .check_new(req.resource_id, 0, &self.cfg.limits)?;
        self.resources.insert(
            ResourceKind::Buffer {
                size: req.width,
                bind: req.bind,
            },
            req.resource_id,
            0,
            None,
        );
        Ok(Resp::NoData)
    }

    fn resource_create_blob(
        &mut self,
        req: ResourceCreateBlob,
        r: &mut Reader<'_>,
        mem: &Arc<GuestMemoryMmap>,
    ) -> Result<Resp, CmdError> {
        if !self.features.blob {
            return Err(CmdError::Unspec("RESOURCE_BLOB not negotiated".into()));
        }
        if req.blob_mem != VIRTIO_GPU_BLOB_MEM_GUEST {
            return Err(invalid(format!(
                "blob_mem {} (only guest memory blobs exist)",
                req.blob_mem
            )));
        }
        let known = VIRTIO_GPU_BLOB_FLAG_USE_MAPPABLE
            | VIRTIO_GPU_BLOB_FLAG_USE_SHAREABLE
            | VIRTIO_GPU_BLOB_FLAG_USE_CROSS_DEVICE;
        if req.blob_flags & !known != 0 {
            return Err(invalid(format!("blob flags {:#x}", req.blob_flags)));
        }
        if req.size == 0 {
            return Err(invalid("zero-sized blob"));
        }
        if req.hdr.ctx_id != 0 && !self.contexts.contains_key(&req.hdr.ctx_id) {
            return Err(CmdError::InvalidContext(req.hdr.ctx_id));
        }
        self.resources
            .check_new(req.resource_id, 0, &self.cfg.limits)?;
        let backing = self.read_backing(req.nr_entries, r, mem)?;
        if backing.total() < req.size {
            return Err(invalid(format!(
                "blob size {:#x} larger than its backing {:#x}",
                req.size,
                backing.total()
            )));
        }
        self.resources.insert(
            ResourceKind::Blob {
                blob_mem: req.blob_mem,
                blob_flags: req.blob_flags,
                blob_id: req.blob_id,
                size: req.size,
            },
            req.resource_id,
            0,
            Some(backing),
        );
        if let Some(ctx) = self.contexts.get_mut(&req.hdr.ctx_id) {
            ctx.resources.insert(req.resource_id);
            if let Ok(res) = self.resources.get_mut(req.resource_id) {
                res.contexts.insert(req.hdr.ctx_id);
            }
        }
        Ok(Resp::NoData)
    }

    fn read_backing(
        &mut self,
        nr_entries: u32,
        r: &mut Reader<'_>,
        mem: &GuestMemoryMmap,
    ) -> Result<Backing, CmdError> {
        let l = self.cfg.limits;
        if nr_entries > l.max_backing_entries {
            return Err(CmdError::OutOfMemory(format!(
                "{nr_entries} backing entries (limit {})",
                l.max_backing_entries
            )));
        }
        let need = nr_entries as usize * std::mem::size_of::<MemEntry>();
        if r.available_bytes() < need {
            return Err(invalid(format!(
                "{nr_entries} entries announced, {} bytes present",
                r.available_bytes()
            )));
        }
        let mut entries = Vec::with_capacity(nr_entries as usize);
        for _ in 0..nr_entries {
            entries.push(
                r.read_obj::<MemEntry>()
                    .map_err(|e| invalid(format!("reading entries: {e}")))?,
            );
        }
        Ok(Backing::new(&entries, mem, &l)?)
    }

    fn resource_unref(&mut self, req: ResourceOnly) -> Result<Resp, CmdError> {
        let res = self.resources.remove(req.resource_id)?;
        for ctx in res.contexts.iter() {
            if let Some(c) = self.contexts.get_mut(ctx) {
                c.resources.remove(&req.resource_id);
                c.native.resource_gone(req.resource_id);
            }
        }
        for i in 0..self.scanouts.len() {
            if self.scanouts[i].resource_id() == Some(req.resource_id) {
                self.disable_scanout(i);
            }
        }
        if is_2d(&res.kind) {
            display::unref_2d(req.resource_id);
            self.pixel_mem.remove(&req.resource_id);
        }
        Ok(Resp::NoData)
    }

    fn attach_backing(
        &mut self,
        req: ResourceAttachBacking,
        r: &mut Reader<'_>,
        mem: &Arc<GuestMemoryMmap>,
    ) -> Result<Resp, CmdError> {
        let kind = self.resources.get(req.resource_id)?.kind;
        if self.resources.get(req.resource_id)?.backing.is_some() {
            return Err(CmdError::Unspec(format!(
                "resource {} already has backing",
                req.resource_id
            )));
        }
        let backing = self.read_backing(req.nr_entries, r, mem)?;
        match kind {
            ResourceKind::TwoD { .. } => {
                display::attach_backing_2d(req.resource_id, &backing, mem)
                    .map_err(|e| invalid(e.to_string()))?;
                self.pixel_mem.insert(req.resource_id, mem.clone());
            }
            ResourceKind::Buffer { size, .. } => {
                if backing.total() < u64::from(size) {
                    return Err(invalid("backing smaller than the buffer"));
                }
            }
            ResourceKind::Blob { size, .. } => {
                if backing.total() < size {
                    return Err(invalid("backing smaller than the blob"));
                }
            }
        }
        self.resources.get_mut(req.resource_id)?.backing = Some(backing);
        Ok(Resp::NoData)
    }

    fn detach_backing(&mut self, req: ResourceOnly) -> Result<Resp, CmdError> {
        let res = self.resources.get_mut(req.resource_id)?;
        if res.backing.take().is_none() {
            return Err(CmdError::Unspec(format!(
                "resource {} has no backing",
                req.resource_id
            )));
        }
        // BOs over the backing are revoked before the guest hears back.
        for ctx in res.contexts.iter() {
            if let Some(c) = self.contexts.get_mut(ctx) {
                c.native.resource_gone(req.resource_id);
            }
        }
        if is_2d(&res.kind) {
            display::detach_backing_2d(req.resource_id);
            self.pixel_mem.remove(&req.resource_id);
        }
        Ok(Resp::NoData)
    }

    /// Re-points a 2D resource's iovecs at the current guest memory when the
    /// memory table changed since they were built.
    fn refresh_pixels_backing(
        &mut self,
        id: u32,
        mem: &Arc<GuestMemoryMmap>,
    ) -> Result<(), CmdError> {
        let stale = self
            .pixel_mem
            .get(&id)
            .is_some_and(|old| !Arc::ptr_eq(old, mem));
        if !stale {
            return Ok(());
        }
        let res = self.resources.get(id)?;
        if let Some(backing) = res.backing.clone() {
            display::detach_backing_2d(id);
            display::attach_backing_2d(id, &backing, mem).map_err(|e| invalid(e.to_string()))?;
            self.pixel_mem.insert(id, mem.clone());
        }
        Ok(())
    }

    fn transfer_to_host_2d(
        &mut self,
        req: TransferToHost2d,
        mem: &Arc<GuestMemoryMmap>,
    ) -> Result<Resp, CmdError> {
        let res = self.resources.get(req.resource_id)?;
        let ResourceKind::TwoD { width, height, .. } = res.kind else {
            return Err(invalid("2D transfer to a non-2D resource"));
        };
        let Some(backing) = res.backing.as_ref() else {
            return Err(CmdError::Unspec("transfer without backing".into()));
        };
        if !rect_inside(&req.r, width, height) {
            return Err(invalid(format!(
                "rect {:?} outside {width}x{height}",
                req.r
            )));
        }
        if req.r.width == 0 || req.r.height == 0 {
            return Ok(Resp::NoData);
        }
        let stride = u64::from(width) * 4;
        // Offset of the rectangle's last byte, which must be in the backing.
        let last = (u64::from(req.r.height) - 1)
            .checked_mul(stride)
            .and_then(|v| v.checked_add(u64::from(req.r.width) * 4))
            .and_then(|v| v.checked_add(req.offset))
            .ok_or_else(|| invalid("transfer offset overflows"))?;
        if last > backing.total() {
            return Err(invalid(format!(
                "transfer reaches byte {last:#x} of a {:#x}-byte backing",
                backing.total()
            )));
        }
        // The 2D component places pixel (x, y) at
        // `base + y * stride + x * 4`; the request's offset is where pixel
        // (r.x, r.y) starts, so the base is the offset minus that position.
        let origin = u64::from(req.r.y) * stride + u64::from(req.r.x) * 4;
        let base = req
            .offset
            .checked_sub(origin)
            .ok_or_else(|| invalid("transfer offset before the rectangle's origin"))?;
        self.refresh_pixels_backing(req.resource_id, mem)?;
        display::transfer_to_host_2d(req.resource_id, req.r, base)
            .map_err(|e| invalid(e.to_string()))?;
        Ok(Resp::NoData)
    }

    fn transfer_3d(
        &mut self,
        req: TransferHost3d,
        mem: &Arc<GuestMemoryMmap>,
        to_host: bool,
    ) -> Result<Resp, CmdError> {
        let res = self.resources.get(req.resource_id)?;
        match res.kind {
            ResourceKind::Buffer { size, .. } => {
                let b = req.box_;
                if b.y != 0 || b.z != 0 || b.h != 1 || b.d != 1 || req.level != 0 {
                    return Err(invalid("buffer transfer box must be 1-D"));
                }
                if b.x.checked_add(b.w).is_none_or(|e| e > size) {
                    return Err(invalid("transfer box outside the buffer"));
                }
                if res.backing.is_none() {
                    return Err(CmdError::Unspec("transfer without backing".into()));
                }
                // The buffer's storage is its guest backing: the GPU reads
                // and writes those pages directly, so there is nothing to
                // copy in either direction.
                Ok(Resp::NoData)
            }
            ResourceKind::TwoD { .. } if to_host => {
                let b = req.box_;
                if b.z != 0 || b.d != 1 || req.level != 0 {
                    return Err(invalid("2D resource transfer must be one layer"));
                }
                let t = TransferToHost2d {
                    hdr: req.hdr,
                    r: Rect {
                        x: b.x,
                        y: b.y,
                        width: b.w,
                        height: b.h,
                    },
                    offset: req.offset,
                    resource_id: req.resource_id,
                    padding: 0,
                };
                self.transfer_to_host_2d(t, mem)
            }
            _ => Err(invalid("unsupported transfer for this resource")),
        }
    }

    fn disable_scanout(&mut self, i: usize) {
        self.scanouts[i] = ScanoutSource::Off;
        if let Some(d) = self.display.as_mut() {
            d.send(DisplayMsg::Scanout(VhostUserGpuScanout {
                scanout_id: i as u32,
                width: 0,
                height: 0,
            }));
        }
    }

    fn set_scanout(&mut self, req: SetScanout) -> Result<Resp, CmdError> {
        let i = self.scanout_index(req.scanout_id)?;
        if req.resource_id == 0 {
            self.disable_scanout(i);
            return Ok(Resp::NoData);
        }
        let res = self.resources.get(req.resource_id)?;
        let ResourceKind::TwoD { width, height, .. } = res.kind else {
            return Err(invalid("SET_SCANOUT needs a 2D resource"));
        };
        if req.r.width == 0 || req.r.height == 0 || !rect_inside(&req.r, width, height) {
            return Err(invalid(format!(
                "scanout rect {:?} outside {width}x{height}",
                req.r
            )));
        }
        self.scanouts[i] = ScanoutSource::TwoD {
            resource_id: req.resource_id,
            rect: req.r,
        };
        debug!(
            "scanout {i}: resource {} {}x{}",
            req.resource_id, req.r.width, req.r.height
        );
        if let Some(d) = self.display.as_mut() {
            d.send(DisplayMsg::Scanout(VhostUserGpuScanout {
                scanout_id: i as u32,
                width: req.r.width,
                height: req.r.height,
            }));
        }
        Ok(Resp::NoData)
    }

    fn set_scanout_blob(&mut self, req: SetScanoutBlob) -> Result<Resp, CmdError> {
        if !self.features.blob {
            return Err(CmdError::Unspec("RESOURCE_BLOB not negotiated".into()));
        }
        let i = self.scanout_index(req.scanout_id)?;
        if req.resource_id == 0 {
            self.disable_scanout(i);
            return Ok(Resp::NoData);
        }
        let res = self.resources.get(req.resource_id)?;
        let ResourceKind::Blob { size, .. } = res.kind else {
            return Err(invalid("SET_SCANOUT_BLOB needs a blob resource"));
        };
        if !format::is_supported(req.format) {
            return Err(invalid(format!("format {}", req.format)));
        }
        if req.width == 0 || req.height == 0 || req.r.width == 0 || req.r.height == 0 {
            return Err(invalid("empty scanout"));
        }
        // The same bounds as a 2D resource: a flush copies the visible part.
        let l = self.cfg.limits;
        let visible_bytes = u64::from(req.r.width) * u64::from(req.r.height) * 4;
        if req.width > l.max_2d_dimension
            || req.height > l.max_2d_dimension
            || visible_bytes > l.max_host_2d_bytes
        {
            return Err(invalid(format!(
                "scanout {}x{} exceeds the display limits",
                req.r.width, req.r.height
            )));
        }
        if !rect_inside(&req.r, req.width, req.height) {
            return Err(invalid("scanout rect outside the framebuffer"));
        }
        let stride = req.strides[0];
        if u64::from(stride) < u64::from(req.width) * 4 {
            return Err(invalid("stride smaller than a row"));
        }
        // The last byte of the framebuffer must be inside the blob.
        let end = u64::from(stride)
            .checked_mul(u64::from(req.height - 1))
            .and_then(|v| v.checked_add(u64::from(req.offsets[0])))
            .and_then(|v| v.checked_add(u64::from(req.width) * 4))
            .ok_or_else(|| invalid("framebuffer size overflows"))?;
        if end > size {
            return Err(invalid(format!(
                "framebuffer ends at {end:#x}, blob is {size:#x}"
            )));
        }
        self.scanouts[i] = ScanoutSource::Blob {
            resource_id: req.resource_id,
            rect: req.r,
            width: req.width,
            height: req.height,
            stride,
            offset: req.offsets[0],
        };
        if let Some(d) = self.display.as_mut() {
            d.send(DisplayMsg::Scanout(VhostUserGpuScanout {
                scanout_id: i as u32,
                width: req.r.width,
                height: req.r.height,
            }));
        }
        Ok(Resp::NoData)
    }

    fn resource_flush(
        &mut self,
        req: ResourceFlush,
        mem: &Arc<GuestMemoryMmap>,
    ) -> Result<Resp, CmdError> {
        let res = self.resources.get(req.resource_id)?;
        let (w, h) = match res.kind {
            ResourceKind::TwoD { width, height, .. } => (width, height),
            ResourceKind::Blob { .. } => (u32::MAX, u32::MAX),
            ResourceKind::Buffer { .. } => return Err(invalid("flush of a buffer")),
        };
        if !rect_inside(&req.r, w, h) {
            return Err(invalid(format!(
                "flush rect {:?} outside the resource",
                req.r
            )));
        }
        if self.display.is_none() || req.r.width == 0 || req.r.height == 0 {
            return Ok(Resp::NoData);
        }
        for i in 0..self.scanouts.len() {
            let src = self.scanouts[i];
            if src.resource_id() != Some(req.resource_id) {
                continue;
            }
            let update = match src {
                ScanoutSource::TwoD { rect, .. } => self.flush_2d(i, rect, req.r, w),
                ScanoutSource::Blob {
                    rect,
                    width,
                    height,
                    stride,
                    offset,
                    ..
                } => self.flush_blob(
                    i,
                    req.resource_id,
                    rect,
                    req.r,
                    (width, height),
                    stride,
                    offset,
                    mem,
                ),
                ScanoutSource::Off => None,
            };
            if let (Some(msg), Some(d)) = (update, self.display.as_mut()) {
                d.send(msg);
            }
        }
        Ok(Resp::NoData)
    }

    /// Intersects the flushed rectangle with what a scanout shows.
    fn visible(scanout: Rect, flushed: Rect) -> Option<Rect> {
        let x0 = scanout.x.max(flushed.x);
        let y0 = scanout.y.max(flushed.y);
        let x1 = (scanout.x + scanout.width).min(flushed.x + flushed.width);
        let y1 = (scanout.y + scanout.height).min(flushed.y + flushed.height);
        (x1 > x0 && y1 > y0).then_some(Rect {
            x: x0,
            y: y0,
            width: x1 - x0,
            height: y1 - y0,
        })
    }

    fn flush_2d(
        &mut self,
        i: usize,
        scanout: Rect,
        flushed: Rect,
        res_w: u32,
    ) -> Option<DisplayMsg> {
        let v = Self::visible(scanout, flushed)?;
        let id = self.scanouts[i].resource_id()?;
        match display::read_rect_2d(id, res_w, v) {
            Ok(pixels) => Some(DisplayMsg::Update(
                VhostUserGpuUpdate {
                    scanout_id: i as u32,
                    x: v.x - scanout.x,
                    y: v.y - scanout.y,
                    width: v.width,
                    height: v.height,
                },
                pixels,
            )),
            Err(e) => {
                guest_warn!(self.limiter, "flush of resource {id}: {e}");
                None
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn flush_blob(
        &mut self,
        i: usize,
        id: u32,
        scanout: Rect,
        flushed: Rect,
        fb: (u32, u32),
        stride: u32,
        offset: u32,
        mem: &GuestMemoryMmap,
    ) -> Option<DisplayMsg> {
        let v = Self::visible(scanout, flushed)?;
        if !rect_inside(&v, fb.0, fb.1) {
            return None;
        }
        let backing = self.resources.get(id).ok()?.backing.clone()?;
        let row = v.width as usize * 4;
        let mut pixels = vec![0u8; row * v.height as usize];
        for (y, chunk) in pixels.chunks_mut(row).enumerate() {
            // Cannot overflow: SET_SCANOUT_BLOB checked that the whole
            // framebuffer, which contains this row, ends inside the blob.
            let off = u64::from(stride)
                .checked_mul(u64::from(v.y) + y as u64)
                .and_then(|o| o.checked_add(u64::from(offset) + u64::from(v.x) * 4))?;
            if let Err(e) = crate::virtio_gpu::backing_io::read(mem, &backing, off, chunk) {
                guest_warn!(self.limiter, "blob scanout read: {e}");
                return None;
            }
        }
        Some(DisplayMsg::Update(
            VhostUserGpuUpdate {
                scanout_id: i as u32,
                x: v.x - scanout.x,
                y: v.y - scanout.y,
                width: v.width,
                height: v.height,
            },
            pixels,
        ))
    }

    fn uuid_for(&self, id: u32) -> [u8; 16] {
        // A version-4-shaped UUID unique per connection and resource.
        let mut u = [0u8; 16];
        u[..8].copy_from_slice(&self.uuid_seed.to_le_bytes());
        u[8..12].copy_from_slice(&id.to_le_bytes());
        u[12..16].copy_from_slice(b"vum\0");
        u[6] = (u[6] & 0x0f) | 0x40;
        u[8] = (u[8] & 0x3f) | 0x80;
        u
    }

    fn assign_uuid(&mut self, req: ResourceOnly) -> Result<Resp, CmdError> {
        let uuid = self.uuid_for(req.resource_id);
        let res = self.resources.get_mut(req.resource_id)?;
        let uuid = *res.uuid.get_or_insert(uuid);
        let resp = RespResourceUuid {
            uuid,
            ..Default::default()
        };
        Ok(data(cmd::RESP_OK_RESOURCE_UUID, &resp))
    }

    fn map_blob(&mut self, req: ResourceMapBlob) -> Result<Resp, CmdError> {
        self.resources.get(req.resource_id)?;
        Err(CmdError::Unspec(
            "no host-visible memory region is offered; map guest blobs from the guest".into(),
        ))
    }

    fn unmap_blob(&mut self, req: ResourceOnly) -> Result<Resp, CmdError> {
        self.resources.get(req.resource_id)?;
        Err(CmdError::Unspec(
            "no host-visible memory region is offered".into(),
        ))
    }

    fn ctx_create(&mut self, req: CtxCreate) -> Result<Resp, CmdError> {
        let id = req.hdr.ctx_id;
        if id == 0 {
            return Err(CmdError::InvalidContext(0));
        }
        if self.contexts.contains_key(&id) {
            return Err(CmdError::InvalidContext(id));
        }
        if self.contexts.len() >= self.cfg.limits.max_contexts {
            return Err(CmdError::OutOfMemory("too many contexts".into()));
        }
        if req.nlen as usize > req.debug_name.len() {
            return Err(invalid(format!("debug name length {}", req.nlen)));
        }
        if req.context_init & !VIRTIO_GPU_CONTEXT_INIT_CAPSET_ID_MASK != 0 {
            return Err(invalid(format!("context_init {:#x}", req.context_init)));
        }
        let capset_id = req.context_init & VIRTIO_GPU_CONTEXT_INIT_CAPSET_ID_MASK;
        if capset_id != 0 && !self.features.context_init {
            return Err(invalid("capset id without CONTEXT_INIT"));
        }
        // Capset 0 is the implicit context of guests without CONTEXT_INIT
        // (compat mode); it is the same native context.
        if capset_id != 0 && capset_id != CAPSET_ID_DRM {
            return Err(invalid(format!("capset {capset_id} is not offered")));
        }
        let name = String::from_utf8_lossy(&req.debug_name[..req.nlen as usize]).into_owned();
        debug!("context {id} created (capset {capset_id}, name {name:?})");
        self.contexts.insert(
            id,
            Context {
                capset_id,
                name,
                resources: BTreeSet::new(),
                native: NativeContext::new(self.cfg.native),
            },
        );
        Ok(Resp::NoData)
    }

    fn ctx_destroy(&mut self, hdr: &CtrlHdr) -> Result<Resp, CmdError> {
        let mut ctx = self
            .contexts
            .remove(&hdr.ctx_id)
            .ok_or(CmdError::InvalidContext(hdr.ctx_id))?;
        // Cancels the context's GPU work; every completion (and the fence
        // of every SUBMIT_3D that queued it) is reported before this
        // returns. The engine's event handler never takes this state's
        // lock, so waiting for it here cannot deadlock.
        ctx.native.shutdown();
        self.destroyed_ctx = Some(hdr.ctx_id);
        for rid in ctx.resources {
            if let Ok(r) = self.resources.get_mut(rid) {
                r.contexts.remove(&hdr.ctx_id);
            }
        }
        debug!(
            "context {} ({:?}, capset {}) destroyed after {} native commands",
            hdr.ctx_id,
            ctx.name,
            ctx.capset_id,
            ctx.native.commands_seen()
        );
        Ok(Resp::NoData)
    }

    fn ctx_attach(&mut self, req: ResourceOnly, attach: bool) -> Result<Resp, CmdError> {
        let ctx_id = req.hdr.ctx_id;
        let ctx = self
            .contexts
            .get_mut(&ctx_id)
            .ok_or(CmdError::InvalidContext(ctx_id))?;
        let res = self.resources.get_mut(req.resource_id)?;
        if attach {
            ctx.resources.insert(req.resource_id);
            res.contexts.insert(ctx_id);
        } else {
            ctx.resources.remove(&req.resource_id);
            res.contexts.remove(&ctx_id);
            ctx.native.resource_gone(req.resource_id);
        }
        Ok(Resp::NoData)
    }

    /// SUBMIT_3D. The rest of the request (the size fields and, in the
    /// usual case, the whole command buffer) is read in one go, before the
    /// buffer's size is known, up to [`KEPT_SUBMIT_BYTES`]; a larger buffer
    /// takes a second read once its size is checked.
    fn submit_3d(
        &mut self,
        hdr: &CtrlHdr,
        r: &mut Reader<'_>,
        snapshot: &GuestMemoryMmap,
    ) -> Result<Resp, CmdError> {
        let present = r.available_bytes();
        if present < SUBMIT_TAIL {
            return Err(invalid(format!(
                "request shorter than its {}-byte structure",
                std::mem::size_of::<CmdSubmit>()
            )));
        }
        // The buffer is copied once, so the guest cannot change it while
        // it is parsed. The copy's storage is kept for the next one unless
        // it is larger than usual.
        let mut buf = std::mem::take(&mut self.submit_buf);
        buf.clear();
        buf.resize(present.min(SUBMIT_TAIL + KEPT_SUBMIT_BYTES), 0);
        let r = r
            .read_exact(&mut buf)
            .map_err(|e| invalid(format!("reading command buffer: {e}")))
            .and_then(|()| self.checked_submit(hdr, &mut buf, r, present, snapshot));
        if buf.capacity() <= SUBMIT_TAIL + KEPT_SUBMIT_BYTES {
            self.submit_buf = buf;
        }
        r
    }

    /// SUBMIT_3D once the start of the request is in `buf`: its fields
    /// checked, the rest of a large command buffer read, then the commands
    /// run by the context.
    fn checked_submit(
        &mut self,
        hdr: &CtrlHdr,
        buf: &mut Vec<u8>,
        r: &mut Reader<'_>,
        present: usize,
        snapshot: &GuestMemoryMmap,
    ) -> Result<Resp, CmdError> {
        let mut req = CmdSubmit {
            hdr: *hdr,
            ..Default::default()
        };
        let tail = SUBMIT_TAIL;
        req.as_mut_slice()[std::mem::size_of::<CtrlHdr>()..].copy_from_slice(&buf[..tail]);
        let ctx_id = req.hdr.ctx_id;
        let fence = self.fence_of(&req.hdr).map(|t| (t, req.hdr.fence_id));
        let Some(ctx) = self.contexts.get_mut(&ctx_id) else {
            return Err(CmdError::InvalidContext(ctx_id));
        };
        if req.num_in_fences != 0 {
            return Err(invalid("in-fences are not supported"));
        }
        if req.size > self.cfg.limits.max_submit_bytes {
            return Err(CmdError::OutOfMemory(format!(
                "command buffer of {} bytes (limit {})",
                req.size, self.cfg.limits.max_submit_bytes
            )));
        }
        let size = req.size as usize;
        if present - tail < size {
            return Err(invalid(format!(
                "command buffer announces {} bytes, {} present",
                req.size,
                present - tail
            )));
        }
        if buf.len() < tail + size {
            let have = buf.len();
            buf.resize(tail + size, 0);
            r.read_exact(&mut buf[have..])
                .map_err(|e| invalid(format!("reading command buffer: {e}")))?;
        }
        let Some(mem) = self.guest_mem.as_ref() else {
            return Err(CmdError::Unspec("no guest memory".into()));
        };
        let env = SubmitEnv {
            ctx_id,
            full: self.features.context_init && ctx.capset_id == CAPSET_ID_DRM,
            resources: &self.resources,
            mem,
            snapshot,
            fence,
            sink: self.sink.as_ref(),
        };
        self.pending = ctx
            .native
            .submit(&buf[tail..tail + size], &env)
            .map_err(|e| invalid(e.to_string()))?;
        Ok(Resp::NoData)
    }

    fn update_cursor(&mut self, req: UpdateCursor, update: bool) -> Result<Resp, CmdError> {
        let i = self.scanout_index(req.pos.scanout_id)?;
        let pos = VhostUserGpuCursorPos {
            scanout_id: i as u32,
            x: req.pos.x,
            y: req.pos.y,
        };
        if !update {
            if let Some(d) = self.display.as_mut() {
                d.send(DisplayMsg::CursorPos(pos));
            }
            return Ok(Resp::NoData);
        }
        if req.resource_id == 0 {
            if let Some(d) = self.display.as_mut() {
                d.send(DisplayMsg::CursorHide(pos));
            }
            return Ok(Resp::NoData);
        }
        let res = self.resources.get(req.resource_id)?;
        let ResourceKind::TwoD { width, height, .. } = res.kind else {
            return Err(invalid("cursor image must be a 2D resource"));
        };
        if width != 64 || height != 64 {
            return Err(invalid(format!("cursor image {width}x{height}, not 64x64")));
        }
        let full = Rect {
            x: 0,
            y: 0,
            width: 64,
            height: 64,
        };
        let pixels = display::read_rect_2d(req.resource_id, 64, full)
            .map_err(|e| CmdError::Unspec(e.to_string()))?;
        let mut image = Box::new([0u8; 64 * 64 * 4]);
        if pixels.len() == image.len() {
            image.copy_from_slice(&pixels);
        }
        if let Some(d) = self.display.as_mut() {
            d.send(DisplayMsg::CursorUpdate(
                VhostUserGpuCursorUpdate {
                    pos,
                    hot_x: req.hot_x,
                    hot_y: req.hot_y,
                },
                image,
            ));
        }
        Ok(Resp::NoData)
    }
}

/// The largest SUBMIT_3D buffer whose storage is kept for the next one.
const KEPT_SUBMIT_BYTES: usize = 64 << 10;

/// The bytes of a SUBMIT_3D request after its header: size and in-fences.
const SUBMIT_TAIL: usize = std::mem::size_of::<CmdSubmit>() - std::mem::size_of::<CtrlHdr>();

/// The fixed-size request `T`: the header already read, then the rest of
/// `T` from `r`.
fn read<T: ByteValued + Default>(hdr: &CtrlHdr, r: &mut Reader<'_>) -> Result<T, CmdError> {
    let short = || {
        invalid(format!(
            "request shorter than its {}-byte structure",
            std::mem::size_of::<T>()
        ))
    };
    let mut v = T::default();
    let bytes = v.as_mut_slice();
    let (head, rest) = bytes
        .split_at_mut_checked(std::mem::size_of::<CtrlHdr>())
        .ok_or_else(short)?;
    head.copy_from_slice(hdr.as_slice());
    r.read_exact(rest).map_err(|_| short())?;
    Ok(v)
}

/// Writes a response header and body. A writable area too small for the
/// whole response gets nothing (a partial response would be misread).
fn write_response(w: &mut Writer<'_>, hdr: CtrlHdr, body: &[u8], limiter: &mut LogLimiter) -> u32 {
    let total = std::mem::size_of::<CtrlHdr>() + body.len();
    if w.available_bytes() < total {
        guest_warn!(
            limiter,
            "response of {total} bytes does not fit the {}-byte writable area",
            w.available_bytes()
        );
        return 0;
    }
    let ok = w.write_obj(hdr).is_ok() && w.write_all(body).is_ok();
    if !ok {
        guest_warn!(limiter, "writing the response failed");
    }
    u32::try_from(w.bytes_written()).unwrap_or(0)
}
