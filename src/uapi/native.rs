//! The native-context wire protocol: commands carried in SUBMIT_3D buffers
//! and the responses the device writes into guest memory.
//!
//! `docs/protocol.md` is the specification; this module is its executable
//! form. Everything a guest driver and the daemon must agree on is here:
//!
//! - **Framing.** A SUBMIT_3D buffer addressed to a CSF native context is a
//!   sequence of commands packed back to back. Each starts with a
//!   [`NativeCmdHdr`]; `len` covers the header and the body, is a multiple of
//!   [`NATIVE_ALIGN`] and at least the header size, and the commands fill
//!   the buffer exactly.
//! - **Requests.** The body of a command is a fixed request struct (one per
//!   command code, see [`NativeRequest`]) followed by a *payload area* that
//!   holds the variable arrays the request points at with [`ObjArray`]s.
//! - **Responses.** The context registers *response memory* (a guest
//!   resource) with [`NATIVE_CMD_INIT`]. It starts with a [`RspMemHeader`];
//!   the response of a command goes at the command's `rsp_off` and starts
//!   with a [`RspHdr`]. Commands whose effect completes later carry a
//!   [`Completion`] record that the device fills in when the work is done.
//! - **Limits.** The per-context quotas ([`MAX_VMS`], [`MAX_GROUPS`], ...)
//!   are the defaults; the values a context really gets are reported by the
//!   [`DEV_QUERY_CONTEXT_INFO`] query ([`ContextInfo`]).
//!
//! Every struct is `repr(C)`, made of little-endian integers only, sized a
//! multiple of 8 bytes, with explicit padding fields that must be zero. The
//! `wire_struct!` macro that declares them proves at compile time that
//! none has hidden padding.
//!
//! The DEV_QUERY payloads of the Panthor uAPI (`GpuInfo`, `CsifInfo`,
//! `TimestampInfo`, `GroupPrioritiesInfo`) are defined once, with the GPU
//! model, and re-exported here.
//!
//! Encoding and decoding helpers (including the array compatibility rules)
//! live in [`super::codec`].

use vm_memory::ByteValued;

pub use crate::gpu::model::{
    CsifInfo, GpuInfo, GroupPrioritiesInfo, TimestampInfo, GROUP_PRIORITY_HIGH, GROUP_PRIORITY_LOW,
    GROUP_PRIORITY_MEDIUM, GROUP_PRIORITY_REALTIME,
};

/// Declares a wire struct: `repr(C)`, the usual derives, a [`ByteValued`]
/// implementation, and compile-time proofs that it has no padding (its size
/// is the sum of its fields' sizes), that its size is a multiple of 8 and
/// that its alignment is at most 8.
macro_rules! wire_struct {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $( $(#[$fmeta:meta])* pub $field:ident : $ty:ty ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[repr(C)]
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        pub struct $name {
            $( $(#[$fmeta])* pub $field: $ty ),*
        }

        const _: () = assert!(
            std::mem::size_of::<$name>() == 0 $( + std::mem::size_of::<$ty>() )*,
            "wire struct has hidden padding"
        );
        const _: () = assert!(std::mem::size_of::<$name>() % 8 == 0);
        const _: () = assert!(std::mem::align_of::<$name>() <= 8);

        // SAFETY: the struct is `repr(C)` and every field is an integer, an
        // array of integers or another wire struct (itself `ByteValued`).
        // The assertion above proves its size is exactly the sum of its
        // fields' sizes, so there is no padding byte, and any byte pattern
        // is a valid value.
        unsafe impl ByteValued for $name {}
    };
}

// ---------------------------------------------------------------------------
// Framing
// ---------------------------------------------------------------------------

/// Alignment of commands and of every struct inside them.
pub const NATIVE_ALIGN: u32 = 8;

/// Default (and largest) size of one SUBMIT_3D buffer, in bytes. The daemon
/// may be configured lower; [`ContextInfo::max_submit_size`] tells.
pub const MAX_SUBMIT_SIZE: u32 = 1 << 20;

/// Most commands accepted in one SUBMIT_3D buffer.
pub const MAX_COMMANDS_PER_SUBMIT: u32 = 4096;

/// Header of one native-context command.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NativeCmdHdr {
    /// Command code (`NATIVE_CMD_*`).
    pub cmd: u32,
    /// Length of header plus body, in bytes.
    pub len: u32,
    /// Guest-chosen sequence number, echoed in the response memory header.
    pub seqno: u32,
    /// Offset of the response in the context's response memory
    /// ([`RSP_NONE`]: no response wanted).
    pub rsp_off: u32,
}

// SAFETY: `repr(C)`, four `u32`s, no padding (size checked below).
unsafe impl ByteValued for NativeCmdHdr {}

const _: () = assert!(std::mem::size_of::<NativeCmdHdr>() == 16);

/// Size of [`NativeCmdHdr`], the offset at which a command's body starts.
pub const NATIVE_HDR_SIZE: u32 = 16;

// ---------------------------------------------------------------------------
// Command codes
// ---------------------------------------------------------------------------

/// Command: does nothing but advance the response header's `seqno`. Useful
/// to probe the channel, to measure it and to synchronise with the device.
pub const NATIVE_CMD_NOP: u32 = 0x00;
/// Command: register the response memory and the context's ring count
/// ([`InitReq`] → [`InitRsp`]).
pub const NATIVE_CMD_INIT: u32 = 0x01;

/// Command: `DRM_IOCTL_PANTHOR_DEV_QUERY` ([`DevQueryReq`] → [`DevQueryRsp`]
/// and the payload).
pub const NATIVE_CMD_DEV_QUERY: u32 = 0x10;
/// Command: `VM_CREATE` ([`VmCreateReq`] → [`VmCreateRsp`]).
pub const NATIVE_CMD_VM_CREATE: u32 = 0x11;
/// Command: `VM_DESTROY` ([`VmDestroyReq`] → [`RspHdr`]).
pub const NATIVE_CMD_VM_DESTROY: u32 = 0x12;
/// Command: `VM_BIND` ([`VmBindReq`] with [`VmBindOp`]s → [`VmBindRsp`]).
pub const NATIVE_CMD_VM_BIND: u32 = 0x13;
/// Command: `VM_GET_STATE` ([`VmGetStateReq`] → [`VmGetStateRsp`]).
pub const NATIVE_CMD_VM_GET_STATE: u32 = 0x14;
/// Command: wrap a virtio-gpu resource as a BO, the counterpart of Panthor's
/// `BO_CREATE` ([`BoCreateReq`] → [`BoCreateRsp`]).
pub const NATIVE_CMD_BO_CREATE_FROM_RESOURCE: u32 = 0x15;
/// Command: `GROUP_CREATE` ([`GroupCreateReq`] with [`QueueCreate`]s →
/// [`GroupCreateRsp`]).
pub const NATIVE_CMD_GROUP_CREATE: u32 = 0x17;
/// Command: `GROUP_DESTROY` ([`GroupDestroyReq`] → [`RspHdr`]).
pub const NATIVE_CMD_GROUP_DESTROY: u32 = 0x18;
/// Command: `GROUP_SUBMIT` ([`GroupSubmitReq`] with [`QueueSubmit`]s →
/// [`GroupSubmitRsp`]).
pub const NATIVE_CMD_GROUP_SUBMIT: u32 = 0x19;
/// Command: `GROUP_GET_STATE` ([`GroupGetStateReq`] → [`GroupGetStateRsp`]).
pub const NATIVE_CMD_GROUP_GET_STATE: u32 = 0x1a;
/// Command: `TILER_HEAP_CREATE` ([`TilerHeapCreateReq`] →
/// [`TilerHeapCreateRsp`]).
pub const NATIVE_CMD_TILER_HEAP_CREATE: u32 = 0x1b;
/// Command: `TILER_HEAP_DESTROY` ([`TilerHeapDestroyReq`] → [`RspHdr`]).
pub const NATIVE_CMD_TILER_HEAP_DESTROY: u32 = 0x1c;

/// Command: drop a BO handle, the counterpart of `GEM_CLOSE`
/// ([`BoDestroyReq`] → [`RspHdr`]).
pub const NATIVE_CMD_BO_DESTROY: u32 = 0x20;
/// Command: give a BO to a VM as kernel memory, from which the device
/// carves ring buffers, queue sync objects and tiler heaps
/// ([`VmAddKernelMemoryReq`] → [`VmAddKernelMemoryRsp`]).
pub const NATIVE_CMD_VM_ADD_KERNEL_MEMORY: u32 = 0x21;

/// Command: create a device-side syncobj ([`SyncobjCreateReq`] →
/// [`SyncobjCreateRsp`]).
pub const NATIVE_CMD_SYNCOBJ_CREATE: u32 = 0x30;
/// Command: destroy a syncobj ([`SyncobjDestroyReq`] → [`RspHdr`]).
pub const NATIVE_CMD_SYNCOBJ_DESTROY: u32 = 0x31;
/// Command: drop a binary syncobj's fence ([`SyncobjResetReq`] →
/// [`RspHdr`]).
pub const NATIVE_CMD_SYNCOBJ_RESET: u32 = 0x32;
/// Command: signal a syncobj point now ([`SyncobjSignalReq`] → [`RspHdr`]).
pub const NATIVE_CMD_SYNCOBJ_SIGNAL: u32 = 0x33;
/// Command: read a syncobj's state ([`SyncobjQueryReq`] →
/// [`SyncobjQueryRsp`]).
pub const NATIVE_CMD_SYNCOBJ_QUERY: u32 = 0x34;
/// Command: wait for syncobj points; the work of a fenced SUBMIT_3D that
/// completes when the wait does ([`SyncobjWaitReq`] with [`SyncobjPoint`]s
/// → [`SyncobjWaitRsp`]).
pub const NATIVE_CMD_SYNCOBJ_WAIT: u32 = 0x35;

/// Every command code with its name, in code order.
pub const ALL_COMMANDS: &[(u32, &str)] = &[
    (NATIVE_CMD_NOP, "NOP"),
    (NATIVE_CMD_INIT, "INIT"),
    (NATIVE_CMD_DEV_QUERY, "DEV_QUERY"),
    (NATIVE_CMD_VM_CREATE, "VM_CREATE"),
    (NATIVE_CMD_VM_DESTROY, "VM_DESTROY"),
    (NATIVE_CMD_VM_BIND, "VM_BIND"),
    (NATIVE_CMD_VM_GET_STATE, "VM_GET_STATE"),
    (
        NATIVE_CMD_BO_CREATE_FROM_RESOURCE,
        "BO_CREATE_FROM_RESOURCE",
    ),
    (NATIVE_CMD_GROUP_CREATE, "GROUP_CREATE"),
    (NATIVE_CMD_GROUP_DESTROY, "GROUP_DESTROY"),
    (NATIVE_CMD_GROUP_SUBMIT, "GROUP_SUBMIT"),
    (NATIVE_CMD_GROUP_GET_STATE, "GROUP_GET_STATE"),
    (NATIVE_CMD_TILER_HEAP_CREATE, "TILER_HEAP_CREATE"),
    (NATIVE_CMD_TILER_HEAP_DESTROY, "TILER_HEAP_DESTROY"),
    (NATIVE_CMD_BO_DESTROY, "BO_DESTROY"),
    (NATIVE_CMD_VM_ADD_KERNEL_MEMORY, "VM_ADD_KERNEL_MEMORY"),
    (NATIVE_CMD_SYNCOBJ_CREATE, "SYNCOBJ_CREATE"),
    (NATIVE_CMD_SYNCOBJ_DESTROY, "SYNCOBJ_DESTROY"),
    (NATIVE_CMD_SYNCOBJ_RESET, "SYNCOBJ_RESET"),
    (NATIVE_CMD_SYNCOBJ_SIGNAL, "SYNCOBJ_SIGNAL"),
    (NATIVE_CMD_SYNCOBJ_QUERY, "SYNCOBJ_QUERY"),
    (NATIVE_CMD_SYNCOBJ_WAIT, "SYNCOBJ_WAIT"),
];

/// Name of a command code, for logs; `None` for codes this version does not
/// define.
pub fn command_name(cmd: u32) -> Option<&'static str> {
    ALL_COMMANDS
        .iter()
        .find(|(code, _)| *code == cmd)
        .map(|(_, name)| *name)
}

// ---------------------------------------------------------------------------
// Errno values
// ---------------------------------------------------------------------------

/// The errno values the protocol uses, as Linux numbers them (the guest is
/// Linux). Responses carry them negated, as the ioctls return them.
pub mod errno {
    /// No such object (unknown resource, unknown syncobj on a wait).
    pub const ENOENT: i32 = 2;
    /// I/O error (a completion whose cause has no better errno).
    pub const EIO: i32 = 5;
    /// Unknown non-zero trailing bytes in an array element.
    pub const E2BIG: i32 = 7;
    /// A per-context quota or a host allocation failed.
    pub const ENOMEM: i32 = 12;
    /// A group priority the context may not use.
    pub const EACCES: i32 = 13;
    /// An array or a response outside its memory.
    pub const EFAULT: i32 = 14;
    /// An id space or a ring space is full, or too much work is in flight.
    pub const EBUSY: i32 = 16;
    /// A guest-chosen id is already in use.
    pub const EEXIST: i32 = 17;
    /// Invalid argument.
    pub const EINVAL: i32 = 22;
    /// The VM's kernel memory or kernel VA window cannot fit the object.
    pub const ENOSPC: i32 = 28;
    /// A syncobj wait timed out.
    pub const ETIME: i32 = 62;
    /// A job timed out.
    pub const ETIMEDOUT: i32 = 110;
    /// Work cancelled (its group or VM was destroyed, or it was innocent).
    pub const ECANCELED: i32 = 125;
}

// ---------------------------------------------------------------------------
// Common pieces
// ---------------------------------------------------------------------------

/// No response wanted: a command whose `rsp_off` is 0 writes no response.
/// Offset 0 is the response memory header, so no response can live there.
pub const RSP_NONE: u32 = 0;

wire_struct! {
    /// The start of every response: `{len, ret}`, as virglrenderer's DRM
    /// native contexts answer (`vdrm_ccmd_rsp` plus `ret`).
    pub struct RspHdr {
        /// Size of the whole response in bytes (this header included).
        pub len: u32,
        /// 0 on success, or a negative errno (Panthor's for the same mistake).
        pub ret: i32,
    }
}

impl RspHdr {
    /// A header for a response of type `T` with result `ret`.
    pub fn for_response<T>(ret: i32) -> RspHdr {
        RspHdr {
            len: std::mem::size_of::<T>() as u32,
            ret,
        }
    }
}

/// [`Completion::state`]: the work was accepted and has not finished.
pub const COMPLETION_PENDING: u32 = 0;
/// [`Completion::state`]: the work finished; `result` is final.
pub const COMPLETION_DONE: u32 = 1;

wire_struct! {
    /// The completion record at the end of the response of a command whose
    /// effect completes later (asynchronous VM_BIND, GROUP_SUBMIT,
    /// SYNCOBJ_WAIT).
    ///
    /// Written with the response when the command runs: `state` is
    /// [`COMPLETION_PENDING`] if work was queued, else [`COMPLETION_DONE`]
    /// with `result` equal to the response's `ret`. When the work finishes
    /// the device writes `result`, then `state = COMPLETION_DONE`, before it
    /// completes the fence of the SUBMIT_3D that queued the work.
    pub struct Completion {
        /// [`COMPLETION_PENDING`] or [`COMPLETION_DONE`].
        pub state: u32,
        /// 0, or the negative errno the work completed with.
        pub result: i32,
    }
}

wire_struct! {
    /// A variable array inside a command: Panthor's `drm_panthor_obj_array`
    /// with the user pointer replaced by an offset.
    ///
    /// `offset` counts from the first byte of the command (its
    /// [`NativeCmdHdr`]); the array must lie in the command's payload area,
    /// after the fixed request. `stride` is the element size the guest knows:
    /// shorter elements are zero-extended, longer ones must have zeros
    /// beyond the fields this device knows (`E2BIG` otherwise). With
    /// `count == 0` nothing else is checked. See `docs/protocol.md` §3.4.
    pub struct ObjArray {
        /// Size of one element as the guest lays it out; a multiple of 8 and
        /// at least the element's minimum size.
        pub stride: u32,
        /// Number of elements.
        pub count: u32,
        /// Offset of the first element from the start of the command; a
        /// multiple of 8.
        pub offset: u64,
    }
}

/// [`SyncOp::flags`] bits 7:0: the handle type.
pub const SYNC_OP_HANDLE_TYPE_MASK: u32 = 0xff;
/// Handle type: a binary syncobj (point must be 0).
pub const SYNC_OP_HANDLE_TYPE_SYNCOBJ: u32 = 0;
/// Handle type: a timeline syncobj.
pub const SYNC_OP_HANDLE_TYPE_TIMELINE_SYNCOBJ: u32 = 1;
/// [`SyncOp::flags`]: wait on the point before the work starts (bit 31
/// clear).
pub const SYNC_OP_WAIT: u32 = 0;
/// [`SyncOp::flags`]: signal the point when the work completes.
pub const SYNC_OP_SIGNAL: u32 = 1 << 31;

wire_struct! {
    /// One wait or signal of a VM_BIND op or a queue submit: Panthor's
    /// `drm_panthor_sync_op`, naming a device-side syncobj.
    pub struct SyncOp {
        /// Handle type in bits 7:0 (`SYNC_OP_HANDLE_TYPE_*`), and
        /// [`SYNC_OP_SIGNAL`] in bit 31; other bits must be zero.
        pub flags: u32,
        /// The syncobj handle.
        pub handle: u32,
        /// The timeline point; 0 for a binary syncobj.
        pub timeline_value: u64,
    }
}

/// A request struct: the fixed part of one command's body.
pub trait NativeRequest: ByteValued + Default {
    /// The command code that carries this request.
    const CMD: u32;
    /// The command's name.
    const NAME: &'static str;
    /// The fixed part of the command's response.
    type Response: ByteValued + Default;
}

/// An element of an [`ObjArray`].
pub trait ArrayElement: ByteValued + Default {
    /// The smallest `stride` accepted: the size of the element's first
    /// version (Panthor's `PANTHOR_UOBJ_MIN_SIZE`).
    const MIN_SIZE: u32;
}

impl ArrayElement for SyncOp {
    const MIN_SIZE: u32 = 16;
}

macro_rules! request {
    ($req:ty, $cmd:expr, $name:literal, $rsp:ty) => {
        impl NativeRequest for $req {
            const CMD: u32 = $cmd;
            const NAME: &'static str = $name;
            type Response = $rsp;
        }
    };
}

// ---------------------------------------------------------------------------
// Response memory
// ---------------------------------------------------------------------------

/// Size of [`RspMemHeader`]; responses may not start below it.
pub const RSP_MEM_HEADER_SIZE: u32 = 64;
/// Smallest response memory INIT accepts.
pub const RSP_MEM_MIN_SIZE: u64 = 4096;

wire_struct! {
    /// The first 64 bytes of the response memory.
    ///
    /// The device writes a command's response, then the error fields, then
    /// `seqno`; a guest that reads `seqno` (with acquire ordering) and finds
    /// it at or past a command's seqno (`(i32)(seqno - s) >= 0`) may read
    /// that command's response. The asynchronous fields are written when
    /// asynchronous work fails, before the failure's fence completes.
    pub struct RspMemHeader {
        /// Seqno of the last command processed.
        pub seqno: u32,
        /// Number of commands that failed (`ret != 0`, or response outside
        /// the memory); wraps.
        pub error_count: u32,
        /// Seqno of the last command that failed.
        pub last_error_seqno: u32,
        /// Its negative errno.
        pub last_error: i32,
        /// Number of asynchronous completions with an error (failed binds,
        /// faulted, timed out or cancelled jobs, timed out waits); wraps.
        pub async_error_count: u32,
        /// Seqno of the command whose work last failed.
        pub last_async_error_seqno: u32,
        /// That failure's negative errno.
        pub last_async_error: i32,
        /// Zero.
        pub pad: u32,
        /// Zero; room for later fields.
        pub reserved: [u64; 4],
    }
}

// ---------------------------------------------------------------------------
// INIT
// ---------------------------------------------------------------------------

/// Most fence rings a context can have (virtio-gpu's limit).
pub const MAX_RINGS: u32 = 64;

/// [`InitRsp::flags`] / [`ContextInfo::flags`]: the context has per-ring
/// fences (full mode: created through CONTEXT_INIT with capset 6). Clear in
/// compat mode, where every fence is on the one global timeline.
pub const CONTEXT_FLAG_PER_RING_FENCES: u32 = 1 << 0;

wire_struct! {
    /// INIT: register the response memory and the ring count.
    pub struct InitReq {
        /// Resource id of the response memory: a guest blob or a 3D buffer
        /// resource with guest backing, attached to this context.
        pub rsp_res_id: u32,
        /// Number of fence rings the guest set up for this context
        /// (`VIRTGPU_CONTEXT_PARAM_NUM_RINGS`), `1..=64`. In compat mode it
        /// is checked, then taken as 1.
        pub num_rings: u32,
        /// Bytes of the resource used as response memory, from offset 0; a
        /// multiple of 8, at least [`RSP_MEM_MIN_SIZE`].
        pub rsp_size: u64,
    }
}

wire_struct! {
    /// INIT's response.
    pub struct InitRsp {
        /// `{len, ret}`.
        pub hdr: RspHdr,
        /// `CONTEXT_FLAG_*`.
        pub flags: u32,
        /// The ring count in effect (1 in compat mode).
        pub num_rings: u32,
    }
}

request!(InitReq, NATIVE_CMD_INIT, "INIT", InitRsp);

// ---------------------------------------------------------------------------
// DEV_QUERY
// ---------------------------------------------------------------------------

/// DEV_QUERY type: [`GpuInfo`].
pub const DEV_QUERY_GPU_INFO: u32 = 0;
/// DEV_QUERY type: [`CsifInfo`].
pub const DEV_QUERY_CSIF_INFO: u32 = 1;
/// DEV_QUERY type: [`TimestampInfo`].
pub const DEV_QUERY_TIMESTAMP_INFO: u32 = 2;
/// DEV_QUERY type: [`GroupPrioritiesInfo`].
pub const DEV_QUERY_GROUP_PRIORITIES_INFO: u32 = 3;
/// DEV_QUERY type: [`ContextInfo`] (this protocol's own; far from Panthor's
/// numbers so that later Panthor types can be added as they are).
pub const DEV_QUERY_CONTEXT_INFO: u32 = 0x100;

/// Smallest non-zero DEV_QUERY `size` per type (Panthor's minimum object
/// sizes: the struct up to its last field of the first uAPI version).
pub const fn dev_query_min_size(query_type: u32) -> Option<u32> {
    match query_type {
        DEV_QUERY_GPU_INFO => Some(96),
        DEV_QUERY_CSIF_INFO => Some(24),
        DEV_QUERY_TIMESTAMP_INFO => Some(16),
        DEV_QUERY_GROUP_PRIORITIES_INFO => Some(4),
        DEV_QUERY_CONTEXT_INFO => Some(std::mem::size_of::<ContextInfo>() as u32),
        _ => None,
    }
}

/// The device's size of a DEV_QUERY object, per type.
pub const fn dev_query_object_size(query_type: u32) -> Option<u32> {
    match query_type {
        DEV_QUERY_GPU_INFO => Some(std::mem::size_of::<GpuInfo>() as u32),
        DEV_QUERY_CSIF_INFO => Some(std::mem::size_of::<CsifInfo>() as u32),
        DEV_QUERY_TIMESTAMP_INFO => Some(std::mem::size_of::<TimestampInfo>() as u32),
        DEV_QUERY_GROUP_PRIORITIES_INFO => Some(std::mem::size_of::<GroupPrioritiesInfo>() as u32),
        DEV_QUERY_CONTEXT_INFO => Some(std::mem::size_of::<ContextInfo>() as u32),
        _ => None,
    }
}

wire_struct! {
    /// DEV_QUERY: Panthor's `drm_panthor_dev_query` without the pointer; the
    /// object comes back in the response.
    pub struct DevQueryReq {
        /// `DEV_QUERY_*`.
        pub query_type: u32,
        /// Bytes of the object the guest wants: 0 asks only for the
        /// device's size; otherwise at least the type's minimum size.
        pub size: u32,
    }
}

wire_struct! {
    /// DEV_QUERY's response. When the request's `size` is not 0, the
    /// response continues with `size` bytes rounded up to 8: the first
    /// `min(size, object size)` bytes of the object, then zeros. `len`
    /// counts them.
    pub struct DevQueryRsp {
        /// `{len, ret}`.
        pub hdr: RspHdr,
        /// The device's size of the object.
        pub size: u32,
        /// Zero.
        pub pad: u32,
    }
}

request!(DevQueryReq, NATIVE_CMD_DEV_QUERY, "DEV_QUERY", DevQueryRsp);

// ---------------------------------------------------------------------------
// Limits and CONTEXT_INFO
// ---------------------------------------------------------------------------

/// Default most VMs per context (Panthor's `PANTHOR_MAX_VMS_PER_FILE`); ids
/// are `1..=max_vms`.
pub const MAX_VMS: u32 = 32;
/// Default most BOs per context; handles are `1..=max_bos`.
pub const MAX_BOS: u32 = 16384;
/// Default most groups per context (Panthor's `MAX_GROUPS_PER_POOL`);
/// handles are `1..=max_groups`.
pub const MAX_GROUPS: u32 = 128;
/// Most queues a group can have on any model (the CSF limit of streams per
/// group); the model's `CsifInfo::cs_slot_count` is the real bound.
pub const MAX_QUEUES_PER_GROUP: u32 = 32;
/// Default most syncobjs per context; handles are `1..=max_syncobjs`.
pub const MAX_SYNCOBJS: u32 = 4096;
/// Default most tiler heaps per VM (Panthor's `MAX_HEAPS_PER_POOL`).
pub const MAX_TILER_HEAPS_PER_VM: u32 = 128;
/// Default most BOs given to one VM as kernel memory.
pub const MAX_KERNEL_MEMORY_BOS_PER_VM: u32 = 64;
/// Default most queue submits accepted and not yet completed per context.
pub const MAX_JOBS_IN_FLIGHT: u32 = 1024;
/// Default most asynchronous VM_BIND ops accepted and not yet applied per
/// context.
pub const MAX_BINDS_IN_FLIGHT: u32 = 4096;
/// Default most bytes of user mappings alive across all VMs of a context.
pub const MAX_MAPPED_BYTES: u64 = 256 << 30;
/// Default job timeout, in milliseconds (Panthor's `JOB_TIMEOUT_MS`).
pub const JOB_TIMEOUT_MS: u32 = 5000;
/// Longest a SYNCOBJ_WAIT waits before completing with `-ETIME`, in
/// milliseconds, whatever timeout it asked for.
pub const MAX_SYNCOBJ_WAIT_MS: u32 = 10_000;

wire_struct! {
    /// The CONTEXT_INFO payload: the context's mode and its quotas.
    pub struct ContextInfo {
        /// The capset's `wire_format_version`.
        pub wire_format_version: u32,
        /// `CONTEXT_FLAG_*`.
        pub flags: u32,
        /// Rings in effect (see [`InitRsp::num_rings`]).
        pub num_rings: u32,
        /// Most VMs.
        pub max_vms: u32,
        /// Most BOs.
        pub max_bos: u32,
        /// Most groups.
        pub max_groups: u32,
        /// Most syncobjs.
        pub max_syncobjs: u32,
        /// Most tiler heaps per VM.
        pub max_tiler_heaps_per_vm: u32,
        /// Most kernel-memory BOs per VM.
        pub max_kernel_memory_bos_per_vm: u32,
        /// Most queue submits in flight.
        pub max_jobs_in_flight: u32,
        /// Most asynchronous bind ops in flight.
        pub max_binds_in_flight: u32,
        /// Most commands per SUBMIT_3D.
        pub max_commands_per_submit: u32,
        /// Largest SUBMIT_3D buffer, in bytes.
        pub max_submit_size: u32,
        /// Job timeout, in milliseconds.
        pub job_timeout_ms: u32,
        /// Longest SYNCOBJ_WAIT, in milliseconds.
        pub max_syncobj_wait_ms: u32,
        /// Zero.
        pub pad: u32,
        /// Most bytes of user mappings across all VMs.
        pub max_mapped_bytes: u64,
    }
}

impl ContextInfo {
    /// The default quotas, for a context with these flags and rings.
    pub fn defaults(flags: u32, num_rings: u32) -> ContextInfo {
        ContextInfo {
            wire_format_version: super::capset::WIRE_FORMAT_VERSION,
            flags,
            num_rings,
            max_vms: MAX_VMS,
            max_bos: MAX_BOS,
            max_groups: MAX_GROUPS,
            max_syncobjs: MAX_SYNCOBJS,
            max_tiler_heaps_per_vm: MAX_TILER_HEAPS_PER_VM,
            max_kernel_memory_bos_per_vm: MAX_KERNEL_MEMORY_BOS_PER_VM,
            max_jobs_in_flight: MAX_JOBS_IN_FLIGHT,
            max_binds_in_flight: MAX_BINDS_IN_FLIGHT,
            max_commands_per_submit: MAX_COMMANDS_PER_SUBMIT,
            max_submit_size: MAX_SUBMIT_SIZE,
            job_timeout_ms: JOB_TIMEOUT_MS,
            max_syncobj_wait_ms: MAX_SYNCOBJ_WAIT_MS,
            pad: 0,
            max_mapped_bytes: MAX_MAPPED_BYTES,
        }
    }
}

// ---------------------------------------------------------------------------
// VMs
// ---------------------------------------------------------------------------

/// [`VmGetStateRsp::state`]: binds and jobs work.
pub const VM_STATE_USABLE: u32 = 0;
/// [`VmGetStateRsp::state`]: an asynchronous bind failed; the VM must be
/// destroyed.
pub const VM_STATE_UNUSABLE: u32 = 1;

/// Least kernel VA window a VM keeps (Panthor's
/// `PANTHOR_VM_MIN_KERNEL_VA_SIZE`, 256 MiB).
pub const VM_MIN_KERNEL_VA_SIZE: u64 = 256 << 20;

wire_struct! {
    /// VM_CREATE: Panthor's `drm_panthor_vm_create`, with `id` an input.
    pub struct VmCreateReq {
        /// Must be zero.
        pub flags: u32,
        /// The VM id to use, `1..=max_vms`, or 0 for the lowest free one.
        pub id: u32,
        /// Size of the user VA range starting at 0; 0 picks the default
        /// (half the VA space).
        pub user_va_range: u64,
    }
}

wire_struct! {
    /// VM_CREATE's response.
    pub struct VmCreateRsp {
        /// `{len, ret}`.
        pub hdr: RspHdr,
        /// The VM id.
        pub id: u32,
        /// Ring of the VM's bind queue: fence asynchronous binds of this VM
        /// on it (0 when the context has one ring).
        pub bind_ring: u32,
        /// Start of the kernel VA window: user binds use
        /// `[0, user_va_range)` (Panthor returns this in `user_va_range`).
        pub user_va_range: u64,
        /// Size of the kernel VA window at the top of the VA space.
        pub kernel_va_size: u64,
    }
}

request!(VmCreateReq, NATIVE_CMD_VM_CREATE, "VM_CREATE", VmCreateRsp);

wire_struct! {
    /// VM_DESTROY.
    pub struct VmDestroyReq {
        /// The VM id.
        pub id: u32,
        /// Must be zero.
        pub pad: u32,
    }
}

request!(VmDestroyReq, NATIVE_CMD_VM_DESTROY, "VM_DESTROY", RspHdr);

/// [`VmBindReq::flags`]: queue the ops on the VM's bind queue instead of
/// applying them now.
pub const VM_BIND_ASYNC: u32 = 1 << 0;

/// [`VmBindOp::flags`] (MAP only): writes fault.
pub const VM_BIND_OP_MAP_READONLY: u32 = 1 << 0;
/// [`VmBindOp::flags`] (MAP only): instruction fetches fault.
pub const VM_BIND_OP_MAP_NOEXEC: u32 = 1 << 1;
/// [`VmBindOp::flags`] (MAP only): uncached memory attribute.
pub const VM_BIND_OP_MAP_UNCACHED: u32 = 1 << 2;
/// [`VmBindOp::flags`] bits 31:28: the op type.
pub const VM_BIND_OP_TYPE_MASK: u32 = 0xf << 28;
/// Op type: map `[bo_offset, bo_offset + size)` of a BO at `va`.
pub const VM_BIND_OP_TYPE_MAP: u32 = 0 << 28;
/// Op type: unmap `[va, va + size)`.
pub const VM_BIND_OP_TYPE_UNMAP: u32 = 1 << 28;
/// Op type: no VA change, only the op's syncs (asynchronous only).
pub const VM_BIND_OP_TYPE_SYNC_ONLY: u32 = 2 << 28;

wire_struct! {
    /// One VM_BIND op: Panthor's `drm_panthor_vm_bind_op`. Its `syncs`
    /// array of [`SyncOp`] lives in the same command.
    pub struct VmBindOp {
        /// Op type (`VM_BIND_OP_TYPE_*`) and, for MAP, `VM_BIND_OP_MAP_*`.
        pub flags: u32,
        /// The BO to map (MAP); zero otherwise.
        pub bo_handle: u32,
        /// Offset in the BO, 4 KiB aligned (MAP); zero otherwise.
        pub bo_offset: u64,
        /// GPU VA, 4 KiB aligned.
        pub va: u64,
        /// Size, 4 KiB aligned.
        pub size: u64,
        /// Waits and signals of this op (asynchronous binds only).
        pub syncs: ObjArray,
    }
}

impl ArrayElement for VmBindOp {
    const MIN_SIZE: u32 = 48;
}

wire_struct! {
    /// VM_BIND: Panthor's `drm_panthor_vm_bind`.
    pub struct VmBindReq {
        /// The VM id.
        pub vm_id: u32,
        /// [`VM_BIND_ASYNC`] or 0.
        pub flags: u32,
        /// The [`VmBindOp`]s.
        pub ops: ObjArray,
    }
}

wire_struct! {
    /// VM_BIND's response.
    pub struct VmBindRsp {
        /// `{len, ret}`.
        pub hdr: RspHdr,
        /// Synchronous: ops applied before the failing one (all of them on
        /// success), Panthor's updated `ops.count`. Asynchronous: ops
        /// queued (all or none).
        pub completed_ops: u32,
        /// Zero.
        pub pad: u32,
        /// Done at once for a synchronous bind; for an asynchronous one,
        /// done when every op was applied, with the first op error.
        pub completion: Completion,
    }
}

request!(VmBindReq, NATIVE_CMD_VM_BIND, "VM_BIND", VmBindRsp);

wire_struct! {
    /// VM_GET_STATE.
    pub struct VmGetStateReq {
        /// The VM id.
        pub vm_id: u32,
        /// Must be zero.
        pub pad: u32,
    }
}

wire_struct! {
    /// VM_GET_STATE's response.
    pub struct VmGetStateRsp {
        /// `{len, ret}`.
        pub hdr: RspHdr,
        /// `VM_STATE_*`.
        pub state: u32,
        /// Zero.
        pub pad: u32,
    }
}

request!(
    VmGetStateReq,
    NATIVE_CMD_VM_GET_STATE,
    "VM_GET_STATE",
    VmGetStateRsp
);

/// Granule of kernel memory: kernel objects are placed at multiples of it
/// and their sizes rounded up to it.
pub const KERNEL_MEM_GRANULE: u64 = 4096;
/// Kernel memory a group takes besides its ring buffers (the queues'
/// 64-bit sync objects, 16 bytes each, in one granule).
pub const KERNEL_MEM_GROUP_SIZE: u64 = 4096;
/// Kernel memory a tiler heap takes besides its chunks (its heap context).
pub const KERNEL_MEM_HEAP_CONTEXT_SIZE: u64 = 4096;

wire_struct! {
    /// VM_ADD_KERNEL_MEMORY: give a BO to a VM's kernel-memory pool.
    pub struct VmAddKernelMemoryReq {
        /// The VM id.
        pub vm_id: u32,
        /// The BO; not mapped anywhere, not already kernel memory, and
        /// exclusive to this VM or to none.
        pub bo_handle: u32,
    }
}

wire_struct! {
    /// VM_ADD_KERNEL_MEMORY's response.
    pub struct VmAddKernelMemoryRsp {
        /// `{len, ret}`.
        pub hdr: RspHdr,
        /// Where the BO was mapped in the VM's kernel VA window.
        pub kernel_va: u64,
        /// Total kernel memory of the VM now.
        pub pool_size: u64,
        /// Kernel memory of the VM not used by kernel objects.
        pub pool_free: u64,
    }
}

request!(
    VmAddKernelMemoryReq,
    NATIVE_CMD_VM_ADD_KERNEL_MEMORY,
    "VM_ADD_KERNEL_MEMORY",
    VmAddKernelMemoryRsp
);

// ---------------------------------------------------------------------------
// BOs
// ---------------------------------------------------------------------------

/// [`BoCreateReq::flags`]: Panthor's `DRM_PANTHOR_BO_NO_MMAP`, recorded for
/// the guest; the device never maps BOs anywhere.
pub const BO_NO_MMAP: u32 = 1 << 0;

wire_struct! {
    /// BO_CREATE_FROM_RESOURCE: a BO over a virtio-gpu resource's guest
    /// backing. Its size is the resource's size.
    pub struct BoCreateReq {
        /// Resource id: a guest blob or a 3D buffer resource with guest
        /// backing, attached to this context.
        pub res_id: u32,
        /// [`BO_NO_MMAP`] or 0.
        pub flags: u32,
        /// VM the BO is exclusive to, or 0.
        pub exclusive_vm_id: u32,
        /// The BO handle to use, `1..=max_bos`, or 0 for the lowest free
        /// one.
        pub handle: u32,
    }
}

wire_struct! {
    /// BO_CREATE_FROM_RESOURCE's response.
    pub struct BoCreateRsp {
        /// `{len, ret}`.
        pub hdr: RspHdr,
        /// The BO handle.
        pub handle: u32,
        /// Zero.
        pub pad: u32,
        /// The BO size (the resource's size).
        pub size: u64,
    }
}

request!(
    BoCreateReq,
    NATIVE_CMD_BO_CREATE_FROM_RESOURCE,
    "BO_CREATE_FROM_RESOURCE",
    BoCreateRsp
);

wire_struct! {
    /// BO_DESTROY.
    pub struct BoDestroyReq {
        /// The BO handle.
        pub handle: u32,
        /// Must be zero.
        pub pad: u32,
    }
}

request!(BoDestroyReq, NATIVE_CMD_BO_DESTROY, "BO_DESTROY", RspHdr);

// ---------------------------------------------------------------------------
// Groups
// ---------------------------------------------------------------------------

/// Highest queue priority inside a group (Panthor's `CSF_MAX_QUEUE_PRIO`).
pub const QUEUE_PRIORITY_MAX: u8 = 15;
/// Smallest queue ring buffer.
pub const RINGBUF_SIZE_MIN: u32 = 4096;
/// Largest queue ring buffer.
pub const RINGBUF_SIZE_MAX: u32 = 65536;

/// [`GroupGetStateRsp::state`]: a job of the group timed out.
pub const GROUP_STATE_TIMEDOUT: u32 = 1 << 0;
/// [`GroupGetStateRsp::state`]: a queue hit a fatal fault
/// ([`GroupGetStateRsp::fatal_queues`] tells which).
pub const GROUP_STATE_FATAL_FAULT: u32 = 1 << 1;
/// [`GroupGetStateRsp::state`]: the group was killed by a reset another
/// group caused (only with TIMEDOUT, never with FATAL_FAULT).
pub const GROUP_STATE_INNOCENT: u32 = 1 << 2;

wire_struct! {
    /// One queue of GROUP_CREATE: Panthor's `drm_panthor_queue_create`.
    pub struct QueueCreate {
        /// Priority inside the group, `0..=15` (15 highest).
        pub priority: u8,
        /// Must be zero.
        pub pad: [u8; 3],
        /// Ring buffer size: a power of two in `4096..=65536`, taken from
        /// the VM's kernel memory.
        pub ringbuf_size: u32,
    }
}

impl ArrayElement for QueueCreate {
    const MIN_SIZE: u32 = 8;
}

wire_struct! {
    /// GROUP_CREATE: Panthor's `drm_panthor_group_create`, with the handle
    /// an input.
    pub struct GroupCreateReq {
        /// The [`QueueCreate`]s, `1..=cs_slot_count` of them.
        pub queues: ObjArray,
        /// Most compute cores used at once.
        pub max_compute_cores: u8,
        /// Most fragment cores used at once.
        pub max_fragment_cores: u8,
        /// Most tiler units used at once.
        pub max_tiler_cores: u8,
        /// Group priority (`GROUP_PRIORITY_*`).
        pub priority: u8,
        /// Must be zero.
        pub pad: u32,
        /// Cores compute work may use; a subset of `shader_present`.
        pub compute_core_mask: u64,
        /// Cores fragment work may use; a subset of `shader_present`.
        pub fragment_core_mask: u64,
        /// Tiler units; a subset of `tiler_present`.
        pub tiler_core_mask: u64,
        /// The VM the group runs in.
        pub vm_id: u32,
        /// The group handle to use, `1..=max_groups`, or 0 for the lowest
        /// free one.
        pub handle: u32,
    }
}

wire_struct! {
    /// GROUP_CREATE's response.
    pub struct GroupCreateRsp {
        /// `{len, ret}`.
        pub hdr: RspHdr,
        /// The group handle.
        pub handle: u32,
        /// Number of queues.
        pub queue_count: u32,
        /// Ring of each queue (entries past `queue_count` are zero): fence
        /// GROUP_SUBMITs to queue `i` on `queue_rings[i]`.
        pub queue_rings: [u8; 32],
    }
}

const _: () = assert!(MAX_QUEUES_PER_GROUP as usize == 32);

request!(
    GroupCreateReq,
    NATIVE_CMD_GROUP_CREATE,
    "GROUP_CREATE",
    GroupCreateRsp
);

wire_struct! {
    /// GROUP_DESTROY.
    pub struct GroupDestroyReq {
        /// The group handle.
        pub handle: u32,
        /// Must be zero.
        pub pad: u32,
    }
}

request!(
    GroupDestroyReq,
    NATIVE_CMD_GROUP_DESTROY,
    "GROUP_DESTROY",
    RspHdr
);

wire_struct! {
    /// One job of GROUP_SUBMIT: Panthor's `drm_panthor_queue_submit`. Its
    /// `syncs` array of [`SyncOp`] lives in the same command.
    pub struct QueueSubmit {
        /// Index of the queue in the group.
        pub queue_index: u32,
        /// Size of the command stream, a multiple of 8; 0 (with
        /// `stream_addr` 0) makes the entry a pure sync point.
        pub stream_size: u32,
        /// GPU VA of the command stream, 64-byte aligned.
        pub stream_addr: u64,
        /// LATEST_FLUSH_ID sample; bits 30:24 must be zero. The emulated
        /// GPU has no caches, so any valid value behaves like 0.
        pub latest_flush: u32,
        /// Must be zero.
        pub pad: u32,
        /// Waits and signals of this job.
        pub syncs: ObjArray,
    }
}

impl ArrayElement for QueueSubmit {
    const MIN_SIZE: u32 = 40;
}

wire_struct! {
    /// GROUP_SUBMIT: Panthor's `drm_panthor_group_submit`.
    pub struct GroupSubmitReq {
        /// The group handle.
        pub group_handle: u32,
        /// Must be zero.
        pub pad: u32,
        /// The [`QueueSubmit`]s.
        pub queue_submits: ObjArray,
    }
}

wire_struct! {
    /// GROUP_SUBMIT's response.
    pub struct GroupSubmitRsp {
        /// `{len, ret}`.
        pub hdr: RspHdr,
        /// Done when every job of the command completed; `result` is the
        /// error of the first failing job in array order.
        pub completion: Completion,
    }
}

request!(
    GroupSubmitReq,
    NATIVE_CMD_GROUP_SUBMIT,
    "GROUP_SUBMIT",
    GroupSubmitRsp
);

wire_struct! {
    /// GROUP_GET_STATE.
    pub struct GroupGetStateReq {
        /// The group handle.
        pub handle: u32,
        /// Must be zero.
        pub pad: u32,
    }
}

wire_struct! {
    /// GROUP_GET_STATE's response: Panthor's `state` and `fatal_queues`,
    /// then what the first fatal fault was.
    pub struct GroupGetStateRsp {
        /// `{len, ret}`.
        pub hdr: RspHdr,
        /// `GROUP_STATE_*`.
        pub state: u32,
        /// Bit `i`: queue `i` hit a fatal fault.
        pub fatal_queues: u32,
        /// Exception type of the first fatal fault (0 if none).
        pub exception_type: u32,
        /// Zero.
        pub pad: u32,
        /// GPU VA of the first MMU fault (0 if none).
        pub fault_va: u64,
    }
}

request!(
    GroupGetStateReq,
    NATIVE_CMD_GROUP_GET_STATE,
    "GROUP_GET_STATE",
    GroupGetStateRsp
);

// ---------------------------------------------------------------------------
// Tiler heaps
// ---------------------------------------------------------------------------

/// Smallest tiler heap chunk.
pub const TILER_HEAP_CHUNK_SIZE_MIN: u32 = 128 << 10;
/// Largest tiler heap chunk.
pub const TILER_HEAP_CHUNK_SIZE_MAX: u32 = 8 << 20;

wire_struct! {
    /// TILER_HEAP_CREATE: Panthor's `drm_panthor_tiler_heap_create` inputs.
    pub struct TilerHeapCreateReq {
        /// The VM the heap lives in.
        pub vm_id: u32,
        /// Chunks allocated now, at least 1.
        pub initial_chunk_count: u32,
        /// Chunk size: 4 KiB aligned, in `128 KiB..=8 MiB`.
        pub chunk_size: u32,
        /// Most chunks, at least `initial_chunk_count`.
        pub max_chunks: u32,
        /// Render passes in flight before the tiler waits for fragments.
        pub target_in_flight: u32,
        /// Must be zero.
        pub pad: u32,
    }
}

wire_struct! {
    /// TILER_HEAP_CREATE's response.
    pub struct TilerHeapCreateRsp {
        /// `{len, ret}`.
        pub hdr: RspHdr,
        /// Heap handle: `(vm_id << 16) | index`, as Panthor builds it.
        pub handle: u32,
        /// Zero.
        pub pad: u32,
        /// GPU VA of the heap context.
        pub tiler_heap_ctx_gpu_va: u64,
        /// GPU VA of the first chunk.
        pub first_heap_chunk_gpu_va: u64,
    }
}

request!(
    TilerHeapCreateReq,
    NATIVE_CMD_TILER_HEAP_CREATE,
    "TILER_HEAP_CREATE",
    TilerHeapCreateRsp
);

wire_struct! {
    /// TILER_HEAP_DESTROY.
    pub struct TilerHeapDestroyReq {
        /// The heap handle.
        pub handle: u32,
        /// Must be zero.
        pub pad: u32,
    }
}

request!(
    TilerHeapDestroyReq,
    NATIVE_CMD_TILER_HEAP_DESTROY,
    "TILER_HEAP_DESTROY",
    RspHdr
);

// ---------------------------------------------------------------------------
// Syncobjs
// ---------------------------------------------------------------------------

/// [`SyncobjCreateReq::flags`]: a binary syncobj starts signalled (as
/// `DRM_SYNCOBJ_CREATE_SIGNALED`); accepted and without effect for a
/// timeline.
pub const SYNCOBJ_CREATE_SIGNALED: u32 = 1 << 0;
/// [`SyncobjCreateReq::flags`]: a timeline syncobj (binary otherwise).
pub const SYNCOBJ_CREATE_TIMELINE: u32 = 1 << 1;

/// [`SyncobjWaitReq::flags`]: wait for every point (else for the first).
pub const SYNCOBJ_WAIT_ALL: u32 = 1 << 0;
/// [`SyncobjWaitReq::flags`]: accept points not submitted yet and wait for
/// them to be submitted, then signalled.
pub const SYNCOBJ_WAIT_FOR_SUBMIT: u32 = 1 << 1;

/// [`SyncobjQueryRsp::kind`]: binary.
pub const SYNCOBJ_KIND_BINARY: u32 = 0;
/// [`SyncobjQueryRsp::kind`]: timeline.
pub const SYNCOBJ_KIND_TIMELINE: u32 = 1;

/// [`SyncobjQueryRsp::status`]: no fence (nothing submitted).
pub const SYNCOBJ_STATUS_UNSUBMITTED: u32 = 0;
/// [`SyncobjQueryRsp::status`]: submitted, not signalled.
pub const SYNCOBJ_STATUS_PENDING: u32 = 1;
/// [`SyncobjQueryRsp::status`]: signalled without error.
pub const SYNCOBJ_STATUS_SIGNALED: u32 = 2;
/// [`SyncobjQueryRsp::status`]: signalled with the error in `error`.
pub const SYNCOBJ_STATUS_ERROR: u32 = 3;

wire_struct! {
    /// SYNCOBJ_CREATE.
    pub struct SyncobjCreateReq {
        /// `SYNCOBJ_CREATE_*`.
        pub flags: u32,
        /// The handle to use, `1..=max_syncobjs`, or 0 for the lowest free
        /// one.
        pub handle: u32,
    }
}

wire_struct! {
    /// SYNCOBJ_CREATE's response.
    pub struct SyncobjCreateRsp {
        /// `{len, ret}`.
        pub hdr: RspHdr,
        /// The handle.
        pub handle: u32,
        /// Zero.
        pub pad: u32,
    }
}

request!(
    SyncobjCreateReq,
    NATIVE_CMD_SYNCOBJ_CREATE,
    "SYNCOBJ_CREATE",
    SyncobjCreateRsp
);

wire_struct! {
    /// SYNCOBJ_DESTROY.
    pub struct SyncobjDestroyReq {
        /// The handle.
        pub handle: u32,
        /// Must be zero.
        pub pad: u32,
    }
}

request!(
    SyncobjDestroyReq,
    NATIVE_CMD_SYNCOBJ_DESTROY,
    "SYNCOBJ_DESTROY",
    RspHdr
);

wire_struct! {
    /// SYNCOBJ_RESET (binary syncobjs only).
    pub struct SyncobjResetReq {
        /// The handle.
        pub handle: u32,
        /// Must be zero.
        pub pad: u32,
    }
}

request!(
    SyncobjResetReq,
    NATIVE_CMD_SYNCOBJ_RESET,
    "SYNCOBJ_RESET",
    RspHdr
);

wire_struct! {
    /// A syncobj point: the request of SYNCOBJ_SIGNAL and SYNCOBJ_QUERY,
    /// and the element of SYNCOBJ_WAIT's array.
    pub struct SyncobjPoint {
        /// The handle.
        pub handle: u32,
        /// Must be zero.
        pub pad: u32,
        /// The point; 0 for a binary syncobj.
        pub point: u64,
    }
}

impl ArrayElement for SyncobjPoint {
    const MIN_SIZE: u32 = 16;
}

/// SYNCOBJ_SIGNAL's request: the point to signal.
pub type SyncobjSignalReq = SyncobjPoint;

request!(
    SyncobjSignalReq,
    NATIVE_CMD_SYNCOBJ_SIGNAL,
    "SYNCOBJ_SIGNAL",
    RspHdr
);

wire_struct! {
    /// SYNCOBJ_QUERY's request (laid out like [`SyncobjPoint`]).
    pub struct SyncobjQueryReq {
        /// The handle.
        pub handle: u32,
        /// Must be zero.
        pub pad: u32,
        /// For a timeline, the point whose status to report (0: the last
        /// submitted point); 0 for a binary syncobj.
        pub point: u64,
    }
}

wire_struct! {
    /// SYNCOBJ_QUERY's response.
    pub struct SyncobjQueryRsp {
        /// `{len, ret}`.
        pub hdr: RspHdr,
        /// `SYNCOBJ_KIND_*`.
        pub kind: u32,
        /// `SYNCOBJ_STATUS_*` of the binary fence, or of the timeline point
        /// asked for.
        pub status: u32,
        /// The negative errno when `status` is [`SYNCOBJ_STATUS_ERROR`],
        /// else 0.
        pub error: i32,
        /// Zero.
        pub pad: u32,
        /// Timeline: highest point up to which every point signalled (0 for
        /// a binary syncobj).
        pub value: u64,
        /// Timeline: highest point submitted (0 for a binary syncobj).
        pub last_submitted: u64,
    }
}

request!(
    SyncobjQueryReq,
    NATIVE_CMD_SYNCOBJ_QUERY,
    "SYNCOBJ_QUERY",
    SyncobjQueryRsp
);

wire_struct! {
    /// SYNCOBJ_WAIT: the wait is the work of the SUBMIT_3D that carries it.
    pub struct SyncobjWaitReq {
        /// `SYNCOBJ_WAIT_*`.
        pub flags: u32,
        /// Must be zero.
        pub pad: u32,
        /// Relative timeout in nanoseconds (0: none); the device caps every
        /// wait at `max_syncobj_wait_ms`.
        pub timeout_ns: u64,
        /// The [`SyncobjPoint`]s, at least one.
        pub points: ObjArray,
    }
}

wire_struct! {
    /// SYNCOBJ_WAIT's response.
    pub struct SyncobjWaitRsp {
        /// `{len, ret}`.
        pub hdr: RspHdr,
        /// Index of the point that satisfied a wait-any (the last one to
        /// signal for a wait-all), written at completion.
        pub first_signaled: u32,
        /// Zero.
        pub pad: u32,
        /// Done when the wait is satisfied (`result` = the fence error, or
        /// 0) or timed out (`-ETIME`).
        pub completion: Completion,
    }
}

request!(
    SyncobjWaitReq,
    NATIVE_CMD_SYNCOBJ_WAIT,
    "SYNCOBJ_WAIT",
    SyncobjWaitRsp
);

// ---------------------------------------------------------------------------
// Size table (what docs/protocol.md lists)
// ---------------------------------------------------------------------------

const _: () = {
    use std::mem::size_of;
    assert!(size_of::<RspHdr>() == 8);
    assert!(size_of::<Completion>() == 8);
    assert!(size_of::<ObjArray>() == 16);
    assert!(size_of::<SyncOp>() == 16);
    assert!(size_of::<RspMemHeader>() == RSP_MEM_HEADER_SIZE as usize);
    assert!(size_of::<InitReq>() == 16);
    assert!(size_of::<InitRsp>() == 16);
    assert!(size_of::<DevQueryReq>() == 8);
    assert!(size_of::<DevQueryRsp>() == 16);
    assert!(size_of::<ContextInfo>() == 72);
    assert!(size_of::<VmCreateReq>() == 16);
    assert!(size_of::<VmCreateRsp>() == 32);
    assert!(size_of::<VmDestroyReq>() == 8);
    assert!(size_of::<VmBindOp>() == 48);
    assert!(size_of::<VmBindReq>() == 24);
    assert!(size_of::<VmBindRsp>() == 24);
    assert!(size_of::<VmGetStateReq>() == 8);
    assert!(size_of::<VmGetStateRsp>() == 16);
    assert!(size_of::<VmAddKernelMemoryReq>() == 8);
    assert!(size_of::<VmAddKernelMemoryRsp>() == 32);
    assert!(size_of::<BoCreateReq>() == 16);
    assert!(size_of::<BoCreateRsp>() == 24);
    assert!(size_of::<BoDestroyReq>() == 8);
    assert!(size_of::<QueueCreate>() == 8);
    assert!(size_of::<GroupCreateReq>() == 56);
    assert!(size_of::<GroupCreateRsp>() == 48);
    assert!(size_of::<GroupDestroyReq>() == 8);
    assert!(size_of::<QueueSubmit>() == 40);
    assert!(size_of::<GroupSubmitReq>() == 24);
    assert!(size_of::<GroupSubmitRsp>() == 16);
    assert!(size_of::<GroupGetStateReq>() == 8);
    assert!(size_of::<GroupGetStateRsp>() == 32);
    assert!(size_of::<TilerHeapCreateReq>() == 24);
    assert!(size_of::<TilerHeapCreateRsp>() == 32);
    assert!(size_of::<TilerHeapDestroyReq>() == 8);
    assert!(size_of::<SyncobjCreateReq>() == 8);
    assert!(size_of::<SyncobjCreateRsp>() == 16);
    assert!(size_of::<SyncobjDestroyReq>() == 8);
    assert!(size_of::<SyncobjResetReq>() == 8);
    assert!(size_of::<SyncobjPoint>() == 16);
    assert!(size_of::<SyncobjQueryReq>() == 16);
    assert!(size_of::<SyncobjQueryRsp>() == 40);
    assert!(size_of::<SyncobjWaitReq>() == 32);
    assert!(size_of::<SyncobjWaitRsp>() == 24);
};
