//! A native-context session: the project's GPU protocol
//! (`docs/protocol.md`) spoken from guest userspace over a [`VirtGpu`].
//!
//! [`NativeSession::open`] sets up the context in one of two modes:
//!
//! - [`Mode::Compat`]: no CONTEXT_INIT. The first resource creation makes
//!   the context implicitly (capset 0); BOs and the response memory are 3D
//!   buffer resources with guest backing; every fence is on the device's
//!   global timeline. This is what stock QEMU's vhost-user-gpu offers.
//! - [`Mode::Full`]: CONTEXT_INIT with the DRM capset and fence rings;
//!   memory is guest blobs, and fences name a ring.
//!
//! It then creates and maps the response memory and sends INIT.
//!
//! Commands are sent in [`Batch`]es: each command gets the next sequence
//! number and a response slot in the response memory, and the batch goes to
//! the device in one EXECBUFFER. A batch is either waited for by polling
//! the response memory header's `seqno` ([`NativeSession::run`]), which
//! needs no fence and so never queues behind unrelated GPU work, or sent
//! with an out-fence ([`NativeSession::submit`]) whose sync_file signals
//! once every response and completion record of the batch is final.
//!
//! The typed methods (`vm_create`, `group_submit`, ...) wrap one command
//! each; a method that queues work returns the [`Slot`] of its response so
//! the caller can read the completion record later.
//!
//! Response slots are handed out round-robin over the response memory.
//! A slot is reused after the rest of the memory has been used once; a
//! caller that keeps many completions pending sizes the memory for them
//! ([`SessionConfig::rsp_size`]).

use std::marker::PhantomData;
use std::mem::size_of;
use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use vm_memory::ByteValued;

use super::virtgpu::{wait_sync_file, ExecBuffer, Mapping, Resource, VirtGpu};
use super::{Error, Result};
use crate::uapi::capset::CAPSET_ID_DRM;
use crate::uapi::codec::{self, CommandWriter};
use crate::uapi::native::*;

/// How the context is created and which memory it uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Implicit context (capset 0), 3D buffer resources, global timeline.
    Compat,
    /// CONTEXT_INIT with the DRM capset and `num_rings` fence rings
    /// (1..=64), guest blobs.
    Full {
        /// Rings to set up.
        num_rings: u32,
    },
}

impl Mode {
    /// `"compat"` or `"full"`, as the guest programs print and accept it.
    pub const fn name(self) -> &'static str {
        match self {
            Mode::Compat => "compat",
            Mode::Full { .. } => "full",
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Parameters of a session.
#[derive(Clone, Copy, Debug)]
pub struct SessionConfig {
    /// Context mode.
    pub mode: Mode,
    /// Bytes of response memory, a multiple of 4096 and at least 4096.
    pub rsp_size: u32,
    /// How long [`NativeSession::run`] waits for the device.
    pub timeout: Duration,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            mode: Mode::Compat,
            rsp_size: 64 << 10,
            timeout: Duration::from_secs(10),
        }
    }
}

/// Where a command's response of type `T` lands in the response memory.
#[derive(Debug)]
pub struct Slot<T> {
    /// Offset in the response memory.
    pub offset: u32,
    /// Sequence number of the command.
    pub seqno: u32,
    _rsp: PhantomData<T>,
}

impl<T> Clone for Slot<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for Slot<T> {}

/// A resource of the session with its guest mapping.
#[derive(Debug)]
pub struct Buffer {
    /// The resource.
    pub resource: Resource,
    /// The guest's mapping of its pages.
    pub map: Mapping,
}

impl Buffer {
    /// The virtio-gpu resource id (what BO_CREATE_FROM_RESOURCE takes).
    pub fn res_id(&self) -> u32 {
        self.resource.res_handle
    }
}

/// Commands to send together in one EXECBUFFER.
#[derive(Debug, Default)]
pub struct Batch {
    buf: Vec<u8>,
    last_seqno: Option<u32>,
}

impl Batch {
    /// Whether the batch holds no command.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
}

/// Sequence number of the INIT the session sends.
const INIT_SEQNO: u32 = 1;
/// Response slots are 8-byte aligned.
const SLOT_ALIGN: u32 = NATIVE_ALIGN;

/// A native context on a virtio-gpu device: response memory, sequence
/// numbers, and typed commands.
#[derive(Debug)]
pub struct NativeSession {
    gpu: VirtGpu,
    config: SessionConfig,
    rsp: Buffer,
    num_rings: u32,
    flags: u32,
    next_seqno: u32,
    next_slot: u32,
}

impl NativeSession {
    /// Sets up the context on `gpu` (a freshly opened file: no context
    /// yet), creates and maps the response memory and sends INIT.
    pub fn open(gpu: VirtGpu, config: SessionConfig) -> Result<Self> {
        if config.rsp_size < RSP_MEM_MIN_SIZE as u32 || config.rsp_size % 4096 != 0 {
            return Err(Error::Protocol {
                what: "response memory size",
                detail: format!("{} is not a multiple of 4096 >= 4096", config.rsp_size),
            });
        }
        let num_rings = match config.mode {
            Mode::Compat => 1,
            Mode::Full { num_rings } => {
                gpu.context_init(CAPSET_ID_DRM, num_rings, 0)?;
                num_rings
            }
        };
        let rsp = Self::create_buffer(&gpu, config.mode, config.rsp_size.into())?;
        rsp.map.zero(0, RSP_MEM_HEADER_SIZE as usize);
        let mut session = NativeSession {
            gpu,
            config,
            rsp,
            num_rings,
            flags: 0,
            next_seqno: INIT_SEQNO,
            next_slot: RSP_MEM_HEADER_SIZE,
        };
        let mut batch = Batch::default();
        let slot = session.push(
            &mut batch,
            &InitReq {
                rsp_res_id: session.rsp.res_id(),
                num_rings,
                rsp_size: config.rsp_size.into(),
            },
        );
        session.run(batch)?;
        let rsp: InitRsp = session.response(slot)?;
        session.num_rings = rsp.num_rings;
        session.flags = rsp.flags;
        Ok(session)
    }

    fn create_buffer(gpu: &VirtGpu, mode: Mode, size: u64) -> Result<Buffer> {
        let resource = match mode {
            Mode::Compat => {
                let size = u32::try_from(size).map_err(|_| Error::BufferTooLarge {
                    ioctl: "DRM_IOCTL_VIRTGPU_RESOURCE_CREATE",
                    len: usize::MAX,
                })?;
                gpu.resource_create_buffer(size)?
            }
            Mode::Full { .. } => gpu.resource_create_guest_blob(size)?,
        };
        let map = gpu.map(&resource)?;
        Ok(Buffer { resource, map })
    }

    /// The device.
    pub fn gpu(&self) -> &VirtGpu {
        &self.gpu
    }

    /// The mode the session was opened in.
    pub fn mode(&self) -> Mode {
        self.config.mode
    }

    /// Rings in effect, as INIT reported them (1 in compat mode).
    pub fn num_rings(&self) -> u32 {
        self.num_rings
    }

    /// INIT's flags (`CONTEXT_FLAG_PER_RING_FENCES` in full mode).
    pub fn flags(&self) -> u32 {
        self.flags
    }

    /// The response memory header as it is now.
    pub fn header(&self) -> RspMemHeader {
        self.rsp.map.read(0)
    }

    /// Creates a mappable resource of `size` bytes for BOs: a guest blob in
    /// full mode, a 3D buffer in compat mode. Its pages start zeroed.
    pub fn alloc(&self, size: u64) -> Result<Buffer> {
        Self::create_buffer(&self.gpu, self.config.mode, size)
    }

    fn take_slot(&mut self, len: u32) -> u32 {
        let len = len.next_multiple_of(SLOT_ALIGN);
        if self.next_slot + len > self.config.rsp_size {
            self.next_slot = RSP_MEM_HEADER_SIZE;
        }
        let off = self.next_slot;
        self.next_slot += len;
        off
    }

    /// Adds an encoded command (header seqno and rsp_off are overwritten)
    /// that expects a response of `rsp_len` bytes (0: none).
    pub fn push_raw<T>(&mut self, batch: &mut Batch, mut cmd: Vec<u8>, rsp_len: u32) -> Slot<T> {
        let seqno = self.next_seqno;
        self.next_seqno = self.next_seqno.wrapping_add(1);
        let offset = if rsp_len == 0 {
            RSP_NONE
        } else {
            self.take_slot(rsp_len)
        };
        cmd[8..12].copy_from_slice(&seqno.to_le_bytes());
        cmd[12..16].copy_from_slice(&offset.to_le_bytes());
        batch.buf.extend_from_slice(&cmd);
        batch.last_seqno = Some(seqno);
        Slot {
            offset,
            seqno,
            _rsp: PhantomData,
        }
    }

    /// Adds a command without arrays.
    pub fn push<R: NativeRequest>(&mut self, batch: &mut Batch, req: &R) -> Slot<R::Response> {
        self.push_raw(batch, codec::encode(req, 0, 0), codec::response_size::<R>())
    }

    /// Adds a command built with a [`CommandWriter`] (for arrays).
    pub fn push_writer<R: NativeRequest>(
        &mut self,
        batch: &mut Batch,
        writer: CommandWriter<R>,
        req: &R,
    ) -> Slot<R::Response> {
        self.push_raw(batch, writer.finish(req), codec::response_size::<R>())
    }

    /// Sends a batch unfenced and polls the header until the device has run
    /// its last command.
    pub fn run(&mut self, batch: Batch) -> Result<()> {
        let Some(last) = batch.last_seqno else {
            return Ok(());
        };
        self.gpu.execbuffer(&ExecBuffer {
            command: &batch.buf,
            ..Default::default()
        })?;
        self.wait_seqno(last)
    }

    /// Sends a batch with an out-fence: on `ring` of the context in full
    /// mode, on the global timeline otherwise (`ring` is then ignored).
    /// The sync_file signals when the batch's responses and completion
    /// records are final.
    pub fn submit(&mut self, batch: Batch, ring: Option<u32>) -> Result<OwnedFd> {
        let ring_idx = match self.config.mode {
            Mode::Compat => None,
            Mode::Full { .. } => Some(ring.unwrap_or(0)),
        };
        let fence = self.gpu.execbuffer(&ExecBuffer {
            command: &batch.buf,
            ring_idx,
            fence_out: true,
            in_fence: None,
        })?;
        fence.ok_or(Error::BadAnswer {
            ioctl: "DRM_IOCTL_VIRTGPU_EXECBUFFER",
            detail: "no out-fence".into(),
        })
    }

    /// Waits for a fence from [`NativeSession::submit`] up to the session
    /// timeout.
    pub fn wait_fence(&self, fence: &OwnedFd) -> Result<()> {
        if wait_sync_file(fence.as_fd(), Some(self.config.timeout))? {
            Ok(())
        } else {
            Err(Error::Timeout {
                what: "out-fence".into(),
            })
        }
    }

    /// Polls the header until command `seqno` has run.
    pub fn wait_seqno(&self, seqno: u32) -> Result<()> {
        let end = Instant::now() + self.config.timeout;
        let mut pause = Duration::from_micros(20);
        loop {
            let current = self.rsp.map.read_u32(0);
            if codec::seqno_reached(current, seqno) {
                return Ok(());
            }
            if Instant::now() >= end {
                return Err(Error::Timeout {
                    what: format!("command seqno {seqno} (header at {current})"),
                });
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(2));
        }
    }

    /// Reads a response without looking at it.
    pub fn read<T: ByteValued + Default>(&self, slot: Slot<T>) -> T {
        self.rsp.map.read(slot.offset as usize)
    }

    /// Reads a response and turns a non-zero `ret` into an error. Every
    /// response starts with an [`RspHdr`].
    pub fn response<T: ByteValued + Default>(&self, slot: Slot<T>) -> Result<T> {
        let hdr: RspHdr = self.rsp.map.read(slot.offset as usize);
        if hdr.ret != 0 {
            return Err(Error::Command {
                seqno: slot.seqno,
                ret: hdr.ret,
            });
        }
        Ok(self.read(slot))
    }

    /// The completion record at the end of a response of type `T`.
    pub fn completion<T>(&self, slot: Slot<T>) -> Completion {
        let at = slot.offset as usize + size_of::<T>() - size_of::<Completion>();
        self.rsp.map.read(at)
    }

    /// Polls a completion record until it is DONE; returns its result.
    pub fn wait_completion<T>(&self, slot: Slot<T>) -> Result<i32> {
        let end = Instant::now() + self.config.timeout;
        loop {
            let c = self.completion(slot);
            if c.state == COMPLETION_DONE {
                return Ok(c.result);
            }
            if Instant::now() >= end {
                return Err(Error::Timeout {
                    what: format!("completion of seqno {}", slot.seqno),
                });
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    /// Runs one command now and returns its response.
    fn call<R: NativeRequest>(&mut self, req: &R) -> Result<R::Response> {
        let mut batch = Batch::default();
        let slot = self.push(&mut batch, req);
        self.run(batch)?;
        self.response(slot)
    }

    /// DEV_QUERY of `query_type` into a `T` (e.g. `GpuInfo`).
    pub fn dev_query<T: ByteValued + Default>(&mut self, query_type: u32) -> Result<T> {
        let size = size_of::<T>() as u32;
        let mut batch = Batch::default();
        let slot: Slot<DevQueryRsp> = self.push_raw(
            &mut batch,
            codec::encode(&DevQueryReq { query_type, size }, 0, 0),
            codec::dev_query_response_len(size) as u32,
        );
        self.run(batch)?;
        self.response(slot)?;
        Ok(self
            .rsp
            .map
            .read(slot.offset as usize + size_of::<DevQueryRsp>()))
    }

    /// VM_CREATE with a guest-chosen id (0: lowest free) and the default
    /// user VA range.
    pub fn vm_create(&mut self, id: u32) -> Result<VmCreateRsp> {
        self.call(&VmCreateReq {
            flags: 0,
            id,
            user_va_range: 0,
        })
    }

    /// VM_DESTROY.
    pub fn vm_destroy(&mut self, id: u32) -> Result<()> {
        self.call(&VmDestroyReq { id, pad: 0 }).map(drop)
    }

    /// VM_GET_STATE: `VM_STATE_USABLE` or `VM_STATE_UNUSABLE`.
    pub fn vm_get_state(&mut self, vm_id: u32) -> Result<u32> {
        self.call(&VmGetStateReq { vm_id, pad: 0 }).map(|r| r.state)
    }

    /// BO_CREATE_FROM_RESOURCE of a session buffer.
    pub fn bo_from_resource(
        &mut self,
        buffer: &Buffer,
        exclusive_vm_id: u32,
        handle: u32,
    ) -> Result<BoCreateRsp> {
        self.call(&BoCreateReq {
            res_id: buffer.res_id(),
            flags: 0,
            exclusive_vm_id,
            handle,
        })
    }

    /// VM_ADD_KERNEL_MEMORY.
    pub fn add_kernel_memory(
        &mut self,
        vm_id: u32,
        bo_handle: u32,
    ) -> Result<VmAddKernelMemoryRsp> {
        self.call(&VmAddKernelMemoryReq { vm_id, bo_handle })
    }

    /// Adds a VM_BIND to a batch; `syncs[i]` are op `i`'s sync ops (only
    /// with `VM_BIND_ASYNC`).
    pub fn push_vm_bind(
        &mut self,
        batch: &mut Batch,
        vm_id: u32,
        flags: u32,
        ops: &[VmBindOp],
        syncs: &[Vec<SyncOp>],
    ) -> Slot<VmBindRsp> {
        let mut w = CommandWriter::<VmBindReq>::new(0, 0);
        let mut ops = ops.to_vec();
        for (op, s) in ops.iter_mut().zip(syncs) {
            op.syncs = w.array(s);
        }
        let arr = w.array(&ops);
        self.push_writer(
            batch,
            w,
            &VmBindReq {
                vm_id,
                flags,
                ops: arr,
            },
        )
    }

    /// A synchronous VM_BIND: the ops are applied when this returns.
    pub fn vm_bind_sync(&mut self, vm_id: u32, ops: &[VmBindOp]) -> Result<VmBindRsp> {
        let mut batch = Batch::default();
        let slot = self.push_vm_bind(&mut batch, vm_id, 0, ops, &[]);
        self.run(batch)?;
        self.response(slot)
    }

    /// An asynchronous VM_BIND, sent unfenced; the ops are queued when this
    /// returns, and the returned slot's completion record says when they ran.
    pub fn vm_bind_async(
        &mut self,
        vm_id: u32,
        ops: &[VmBindOp],
        syncs: &[Vec<SyncOp>],
    ) -> Result<Slot<VmBindRsp>> {
        let mut batch = Batch::default();
        let slot = self.push_vm_bind(&mut batch, vm_id, VM_BIND_ASYNC, ops, syncs);
        self.run(batch)?;
        self.response(slot)?;
        Ok(slot)
    }

    /// GROUP_CREATE of one group in `vm_id` with a queue per entry of
    /// `queue_priorities` (4 KiB ring buffers), using every core present.
    pub fn group_create(
        &mut self,
        vm_id: u32,
        handle: u32,
        priority: u8,
        queue_priorities: &[u8],
        cores: (u64, u64),
    ) -> Result<GroupCreateRsp> {
        let (shader_present, tiler_present) = cores;
        let mut w = CommandWriter::<GroupCreateReq>::new(0, 0);
        let queues: Vec<QueueCreate> = queue_priorities
            .iter()
            .map(|&p| QueueCreate {
                priority: p,
                pad: [0; 3],
                ringbuf_size: RINGBUF_SIZE_MIN,
            })
            .collect();
        let arr = w.array(&queues);
        let req = GroupCreateReq {
            queues: arr,
            max_compute_cores: shader_present.count_ones() as u8,
            max_fragment_cores: shader_present.count_ones() as u8,
            max_tiler_cores: tiler_present.count_ones() as u8,
            priority,
            pad: 0,
            compute_core_mask: shader_present,
            fragment_core_mask: shader_present,
            tiler_core_mask: tiler_present,
            vm_id,
            handle,
        };
        let mut batch = Batch::default();
        let slot = self.push_writer(&mut batch, w, &req);
        self.run(batch)?;
        self.response(slot)
    }

    /// GROUP_DESTROY.
    pub fn group_destroy(&mut self, handle: u32) -> Result<()> {
        self.call(&GroupDestroyReq { handle, pad: 0 }).map(drop)
    }

    /// Adds a GROUP_SUBMIT of `jobs` to a batch.
    pub fn push_group_submit(
        &mut self,
        batch: &mut Batch,
        group: u32,
        jobs: &[Job],
    ) -> Slot<GroupSubmitRsp> {
        let mut w = CommandWriter::<GroupSubmitReq>::new(0, 0);
        let subs: Vec<QueueSubmit> = jobs
            .iter()
            .map(|job| QueueSubmit {
                queue_index: job.queue,
                stream_size: job.stream_size,
                stream_addr: job.stream_addr,
                syncs: w.array(&job.syncs),
                ..Default::default()
            })
            .collect();
        let arr = w.array(&subs);
        self.push_writer(
            batch,
            w,
            &GroupSubmitReq {
                group_handle: group,
                pad: 0,
                queue_submits: arr,
            },
        )
    }

    /// GROUP_SUBMIT of jobs in their own fenced EXECBUFFER (on `ring` in
    /// full mode). Returns the response slot and the out-fence.
    pub fn group_submit(
        &mut self,
        group: u32,
        jobs: &[Job],
        ring: Option<u32>,
    ) -> Result<(Slot<GroupSubmitRsp>, OwnedFd)> {
        let mut batch = Batch::default();
        let slot = self.push_group_submit(&mut batch, group, jobs);
        let fence = self.submit(batch, ring)?;
        Ok((slot, fence))
    }

    /// GROUP_GET_STATE.
    pub fn group_get_state(&mut self, handle: u32) -> Result<GroupGetStateRsp> {
        self.call(&GroupGetStateReq { handle, pad: 0 })
    }

    /// SYNCOBJ_CREATE (`SYNCOBJ_CREATE_*` flags).
    pub fn syncobj_create(&mut self, flags: u32, handle: u32) -> Result<u32> {
        self.call(&SyncobjCreateReq { flags, handle })
            .map(|r| r.handle)
    }

    /// SYNCOBJ_DESTROY.
    pub fn syncobj_destroy(&mut self, handle: u32) -> Result<()> {
        self.call(&SyncobjDestroyReq { handle, pad: 0 }).map(drop)
    }

    /// SYNCOBJ_SIGNAL of a point (0 for a binary syncobj).
    pub fn syncobj_signal(&mut self, handle: u32, point: u64) -> Result<()> {
        self.call(&SyncobjPoint {
            handle,
            pad: 0,
            point,
        })
        .map(drop)
    }

    /// SYNCOBJ_QUERY.
    pub fn syncobj_query(&mut self, handle: u32, point: u64) -> Result<SyncobjQueryRsp> {
        self.call(&SyncobjQueryReq {
            handle,
            pad: 0,
            point,
        })
    }
}

/// One job of a GROUP_SUBMIT: a command stream for a queue of the group.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Job {
    /// Queue index in the group.
    pub queue: u32,
    /// GPU VA of the stream, 64-byte aligned (0 with size 0: a sync point).
    pub stream_addr: u64,
    /// Bytes of the stream, a multiple of 8.
    pub stream_size: u32,
    /// Syncobj points the job waits for and signals.
    pub syncs: Vec<SyncOp>,
}

impl Job {
    /// A job running `stream_size` bytes at `stream_addr` on `queue`.
    pub fn new(queue: u32, stream_addr: u64, stream_size: u32) -> Job {
        Job {
            queue,
            stream_addr,
            stream_size,
            syncs: Vec::new(),
        }
    }

    /// The same job with these sync operations.
    pub fn with_syncs(mut self, syncs: Vec<SyncOp>) -> Job {
        self.syncs = syncs;
        self
    }
}

/// A MAP op of `size` bytes of BO `bo` from `bo_offset` at `va`.
pub fn map_op(bo: u32, bo_offset: u64, va: u64, size: u64) -> VmBindOp {
    VmBindOp {
        flags: VM_BIND_OP_TYPE_MAP,
        bo_handle: bo,
        bo_offset,
        va,
        size,
        ..Default::default()
    }
}

/// An UNMAP op of `[va, va + size)`.
pub fn unmap_op(va: u64, size: u64) -> VmBindOp {
    VmBindOp {
        flags: VM_BIND_OP_TYPE_UNMAP,
        va,
        size,
        ..Default::default()
    }
}

/// A SIGNAL of point `point` of timeline syncobj `handle`.
pub fn signal_point(handle: u32, point: u64) -> SyncOp {
    SyncOp {
        flags: SYNC_OP_SIGNAL | SYNC_OP_HANDLE_TYPE_TIMELINE_SYNCOBJ,
        handle,
        timeline_value: point,
    }
}

/// A WAIT for point `point` of timeline syncobj `handle`.
pub fn wait_point(handle: u32, point: u64) -> SyncOp {
    SyncOp {
        flags: SYNC_OP_WAIT | SYNC_OP_HANDLE_TYPE_TIMELINE_SYNCOBJ,
        handle,
        timeline_value: point,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mode_names_are_what_the_programs_print() {
        assert_eq!(Mode::Compat.to_string(), "compat");
        assert_eq!(Mode::Full { num_rings: 64 }.to_string(), "full");
        assert_eq!(Mode::Full { num_rings: 1 }.name(), "full");
    }
}
