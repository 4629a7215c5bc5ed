//! The virtio-gpu wire format (virtio 1.2/1.3 §5.7): command and response
//! codes, feature bits, and every request and response structure as the
//! project's own `#[repr(C)]` little-endian types.
//!
//! Every structure is `ByteValued` (any byte pattern is a valid value) and
//! has a compile-time size check against the specification, so a request
//! can be read straight out of a descriptor chain and a response written
//! back without hand-packing. Fields are plain integers in little-endian
//! order: the daemon only runs on little-endian hosts (checked below).

use vm_memory::ByteValued;

#[cfg(not(target_endian = "little"))]
compile_error!("vhost-user-mali assumes a little-endian host");

/// Device feature: 3D (virgl) mode.
pub const VIRTIO_GPU_F_VIRGL: u32 = 0;
/// Device feature: GET_EDID is supported.
pub const VIRTIO_GPU_F_EDID: u32 = 1;
/// Device feature: RESOURCE_ASSIGN_UUID is supported.
pub const VIRTIO_GPU_F_RESOURCE_UUID: u32 = 2;
/// Device feature: blob resources.
pub const VIRTIO_GPU_F_RESOURCE_BLOB: u32 = 3;
/// Device feature: CTX_CREATE carries a capset id and fences carry a ring.
pub const VIRTIO_GPU_F_CONTEXT_INIT: u32 = 4;

/// Control header flag: the command is fenced.
pub const VIRTIO_GPU_FLAG_FENCE: u32 = 1 << 0;
/// Control header flag: `ring_idx` is valid.
pub const VIRTIO_GPU_FLAG_INFO_RING_IDX: u32 = 1 << 1;

/// Number of fence rings a context may use with CONTEXT_INIT.
pub const VIRTIO_GPU_MAX_RINGS: u8 = 64;
/// Maximum number of scanouts the protocol can describe.
pub const VIRTIO_GPU_MAX_SCANOUTS: usize = 16;

/// Config space event: display configuration changed.
pub const VIRTIO_GPU_EVENT_DISPLAY: u32 = 1 << 0;

/// Blob memory type: guest memory.
pub const VIRTIO_GPU_BLOB_MEM_GUEST: u32 = 1;
/// Blob memory type: host 3D memory.
pub const VIRTIO_GPU_BLOB_MEM_HOST3D: u32 = 2;
/// Blob memory type: host 3D memory with guest backing.
pub const VIRTIO_GPU_BLOB_MEM_HOST3D_GUEST: u32 = 3;
/// Blob flag: the guest wants to map it.
pub const VIRTIO_GPU_BLOB_FLAG_USE_MAPPABLE: u32 = 1 << 0;
/// Blob flag: shareable with other virtio devices.
pub const VIRTIO_GPU_BLOB_FLAG_USE_SHAREABLE: u32 = 1 << 1;
/// Blob flag: shareable across devices.
pub const VIRTIO_GPU_BLOB_FLAG_USE_CROSS_DEVICE: u32 = 1 << 2;

/// Low bits of `ctx_create.context_init` that carry the capset id.
pub const VIRTIO_GPU_CONTEXT_INIT_CAPSET_ID_MASK: u32 = 0xff;

/// Command and response codes.
pub mod cmd {
    /// 2D: get display info.
    pub const GET_DISPLAY_INFO: u32 = 0x0100;
    /// 2D: create a 2D resource.
    pub const RESOURCE_CREATE_2D: u32 = 0x0101;
    /// 2D: drop a resource.
    pub const RESOURCE_UNREF: u32 = 0x0102;
    /// 2D: set a scanout's resource.
    pub const SET_SCANOUT: u32 = 0x0103;
    /// 2D: flush a resource to the display.
    pub const RESOURCE_FLUSH: u32 = 0x0104;
    /// 2D: copy guest backing to the host resource.
    pub const TRANSFER_TO_HOST_2D: u32 = 0x0105;
    /// 2D: attach guest pages to a resource.
    pub const RESOURCE_ATTACH_BACKING: u32 = 0x0106;
    /// 2D: detach guest pages from a resource.
    pub const RESOURCE_DETACH_BACKING: u32 = 0x0107;
    /// Capset information by index.
    pub const GET_CAPSET_INFO: u32 = 0x0108;
    /// Capset data by id and version.
    pub const GET_CAPSET: u32 = 0x0109;
    /// EDID of a scanout.
    pub const GET_EDID: u32 = 0x010a;
    /// Give a resource a UUID for sharing.
    pub const RESOURCE_ASSIGN_UUID: u32 = 0x010b;
    /// Create a blob resource.
    pub const RESOURCE_CREATE_BLOB: u32 = 0x010c;
    /// Scan out a blob resource.
    pub const SET_SCANOUT_BLOB: u32 = 0x010d;
    /// 3D: create a context.
    pub const CTX_CREATE: u32 = 0x0200;
    /// 3D: destroy a context.
    pub const CTX_DESTROY: u32 = 0x0201;
    /// 3D: make a resource visible to a context.
    pub const CTX_ATTACH_RESOURCE: u32 = 0x0202;
    /// 3D: remove a resource from a context.
    pub const CTX_DETACH_RESOURCE: u32 = 0x0203;
    /// 3D: create a 3D resource.
    pub const RESOURCE_CREATE_3D: u32 = 0x0204;
    /// 3D: copy guest backing to the host resource.
    pub const TRANSFER_TO_HOST_3D: u32 = 0x0205;
    /// 3D: copy the host resource to guest backing.
    pub const TRANSFER_FROM_HOST_3D: u32 = 0x0206;
    /// 3D: submit a command buffer to a context.
    pub const SUBMIT_3D: u32 = 0x0207;
    /// Map a host-visible blob into the shared memory region.
    pub const RESOURCE_MAP_BLOB: u32 = 0x0208;
    /// Unmap a host-visible blob.
    pub const RESOURCE_UNMAP_BLOB: u32 = 0x0209;
    /// Cursor queue: define and move the cursor.
    pub const UPDATE_CURSOR: u32 = 0x0300;
    /// Cursor queue: move the cursor.
    pub const MOVE_CURSOR: u32 = 0x0301;

    /// Success without payload.
    pub const RESP_OK_NODATA: u32 = 0x1100;
    /// Success: display info.
    pub const RESP_OK_DISPLAY_INFO: u32 = 0x1101;
    /// Success: capset info.
    pub const RESP_OK_CAPSET_INFO: u32 = 0x1102;
    /// Success: capset data.
    pub const RESP_OK_CAPSET: u32 = 0x1103;
    /// Success: EDID.
    pub const RESP_OK_EDID: u32 = 0x1104;
    /// Success: resource UUID.
    pub const RESP_OK_RESOURCE_UUID: u32 = 0x1105;
    /// Success: map info.
    pub const RESP_OK_MAP_INFO: u32 = 0x1106;

    /// Unspecified error.
    pub const RESP_ERR_UNSPEC: u32 = 0x1200;
    /// Out of memory (or over a quota).
    pub const RESP_ERR_OUT_OF_MEMORY: u32 = 0x1201;
    /// Bad scanout id.
    pub const RESP_ERR_INVALID_SCANOUT_ID: u32 = 0x1202;
    /// Bad resource id.
    pub const RESP_ERR_INVALID_RESOURCE_ID: u32 = 0x1203;
    /// Bad context id.
    pub const RESP_ERR_INVALID_CONTEXT_ID: u32 = 0x1204;
    /// Any other invalid argument.
    pub const RESP_ERR_INVALID_PARAMETER: u32 = 0x1205;

    /// A readable name for logs.
    pub fn name(code: u32) -> &'static str {
        match code {
            GET_DISPLAY_INFO => "GET_DISPLAY_INFO",
            RESOURCE_CREATE_2D => "RESOURCE_CREATE_2D",
            RESOURCE_UNREF => "RESOURCE_UNREF",
            SET_SCANOUT => "SET_SCANOUT",
            RESOURCE_FLUSH => "RESOURCE_FLUSH",
            TRANSFER_TO_HOST_2D => "TRANSFER_TO_HOST_2D",
            RESOURCE_ATTACH_BACKING => "RESOURCE_ATTACH_BACKING",
            RESOURCE_DETACH_BACKING => "RESOURCE_DETACH_BACKING",
            GET_CAPSET_INFO => "GET_CAPSET_INFO",
            GET_CAPSET => "GET_CAPSET",
            GET_EDID => "GET_EDID",
            RESOURCE_ASSIGN_UUID => "RESOURCE_ASSIGN_UUID",
            RESOURCE_CREATE_BLOB => "RESOURCE_CREATE_BLOB",
            SET_SCANOUT_BLOB => "SET_SCANOUT_BLOB",
            CTX_CREATE => "CTX_CREATE",
            CTX_DESTROY => "CTX_DESTROY",
            CTX_ATTACH_RESOURCE => "CTX_ATTACH_RESOURCE",
            CTX_DETACH_RESOURCE => "CTX_DETACH_RESOURCE",
            RESOURCE_CREATE_3D => "RESOURCE_CREATE_3D",
            TRANSFER_TO_HOST_3D => "TRANSFER_TO_HOST_3D",
            TRANSFER_FROM_HOST_3D => "TRANSFER_FROM_HOST_3D",
            SUBMIT_3D => "SUBMIT_3D",
            RESOURCE_MAP_BLOB => "RESOURCE_MAP_BLOB",
            RESOURCE_UNMAP_BLOB => "RESOURCE_UNMAP_BLOB",
            UPDATE_CURSOR => "UPDATE_CURSOR",
            MOVE_CURSOR => "MOVE_CURSOR",
            RESP_OK_NODATA => "OK_NODATA",
            RESP_OK_DISPLAY_INFO => "OK_DISPLAY_INFO",
            RESP_OK_CAPSET_INFO => "OK_CAPSET_INFO",
            RESP_OK_CAPSET => "OK_CAPSET",
            RESP_OK_EDID => "OK_EDID",
            RESP_OK_RESOURCE_UUID => "OK_RESOURCE_UUID",
            RESP_OK_MAP_INFO => "OK_MAP_INFO",
            RESP_ERR_UNSPEC => "ERR_UNSPEC",
            RESP_ERR_OUT_OF_MEMORY => "ERR_OUT_OF_MEMORY",
            RESP_ERR_INVALID_SCANOUT_ID => "ERR_INVALID_SCANOUT_ID",
            RESP_ERR_INVALID_RESOURCE_ID => "ERR_INVALID_RESOURCE_ID",
            RESP_ERR_INVALID_CONTEXT_ID => "ERR_INVALID_CONTEXT_ID",
            RESP_ERR_INVALID_PARAMETER => "ERR_INVALID_PARAMETER",
            _ => "UNKNOWN",
        }
    }
}

/// virtio-gpu pixel formats the 2D path accepts (all 32 bits per pixel).
pub mod format {
    /// B8G8R8A8 unorm.
    pub const B8G8R8A8_UNORM: u32 = 1;
    /// B8G8R8X8 unorm.
    pub const B8G8R8X8_UNORM: u32 = 2;
    /// A8R8G8B8 unorm.
    pub const A8R8G8B8_UNORM: u32 = 3;
    /// X8R8G8B8 unorm.
    pub const X8R8G8B8_UNORM: u32 = 4;
    /// R8G8B8A8 unorm.
    pub const R8G8B8A8_UNORM: u32 = 67;
    /// X8B8G8R8 unorm.
    pub const X8B8G8R8_UNORM: u32 = 68;
    /// A8B8G8R8 unorm.
    pub const A8B8G8R8_UNORM: u32 = 121;
    /// R8G8B8X8 unorm.
    pub const R8G8B8X8_UNORM: u32 = 134;

    /// Whether `f` is one of the formats above.
    pub fn is_supported(f: u32) -> bool {
        matches!(
            f,
            B8G8R8A8_UNORM
                | B8G8R8X8_UNORM
                | A8R8G8B8_UNORM
                | X8R8G8B8_UNORM
                | R8G8B8A8_UNORM
                | X8B8G8R8_UNORM
                | A8B8G8R8_UNORM
                | R8G8B8X8_UNORM
        )
    }
}

/// Declares `ByteValued` for plain-integer wire structs and checks their
/// size against the specification.
macro_rules! wire_struct {
    ($($name:ident = $size:expr),* $(,)?) => {
        $(
            // SAFETY: the type is `repr(C)`, holds only integers and arrays
            // of integers, and its size equals the sum of its fields (the
            // assertion below would fail on hidden padding), so every byte
            // pattern is a valid value.
            unsafe impl ByteValued for $name {}
            const _: () = assert!(std::mem::size_of::<$name>() == $size);
        )*
    };
}

/// The header that starts every request and response.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtrlHdr {
    /// Command or response code.
    pub type_: u32,
    /// `VIRTIO_GPU_FLAG_*`.
    pub flags: u32,
    /// Fence id when `FLAG_FENCE` is set.
    pub fence_id: u64,
    /// 3D context the command applies to.
    pub ctx_id: u32,
    /// Fence ring when `FLAG_INFO_RING_IDX` is set.
    pub ring_idx: u8,
    /// Reserved.
    pub padding: [u8; 3],
}

/// A rectangle in pixels.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rect {
    /// Left edge.
    pub x: u32,
    /// Top edge.
    pub y: u32,
    /// Width.
    pub width: u32,
    /// Height.
    pub height: u32,
}

/// One scanout in a display-info response.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DisplayOne {
    /// Preferred geometry.
    pub r: Rect,
    /// Non-zero when the output is connected.
    pub enabled: u32,
    /// Reserved.
    pub flags: u32,
}

/// GET_DISPLAY_INFO response.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RespDisplayInfo {
    /// Header (`RESP_OK_DISPLAY_INFO`).
    pub hdr: CtrlHdr,
    /// One entry per possible scanout.
    pub pmodes: [DisplayOne; VIRTIO_GPU_MAX_SCANOUTS],
}

/// GET_EDID request.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GetEdid {
    /// Header.
    pub hdr: CtrlHdr,
    /// Scanout index.
    pub scanout: u32,
    /// Reserved.
    pub padding: u32,
}

/// GET_EDID response.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RespEdid {
    /// Header (`RESP_OK_EDID`).
    pub hdr: CtrlHdr,
    /// Number of valid bytes in `edid`.
    pub size: u32,
    /// Reserved.
    pub padding: u32,
    /// EDID blob.
    pub edid: [u8; 1024],
}

impl Default for RespEdid {
    fn default() -> Self {
        RespEdid {
            hdr: CtrlHdr::default(),
            size: 0,
            padding: 0,
            edid: [0; 1024],
        }
    }
}

/// RESOURCE_CREATE_2D request.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ResourceCreate2d {
    /// Header.
    pub hdr: CtrlHdr,
    /// New resource id (non-zero).
    pub resource_id: u32,
    /// Pixel format.
    pub format: u32,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
}

/// A request that names one resource: RESOURCE_UNREF,
/// RESOURCE_DETACH_BACKING, RESOURCE_ASSIGN_UUID, CTX_ATTACH_RESOURCE,
/// CTX_DETACH_RESOURCE and RESOURCE_UNMAP_BLOB share this layout.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ResourceOnly {
    /// Header.
    pub hdr: CtrlHdr,
    /// Resource id.
    pub resource_id: u32,
    /// Reserved.
    pub padding: u32,
}

/// SET_SCANOUT request.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SetScanout {
    /// Header.
    pub hdr: CtrlHdr,
    /// Source rectangle inside the resource.
    pub r: Rect,
    /// Scanout index.
    pub scanout_id: u32,
    /// Resource id, or 0 to disable the scanout.
    pub resource_id: u32,
}

/// RESOURCE_FLUSH request.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ResourceFlush {
    /// Header.
    pub hdr: CtrlHdr,
    /// Damaged rectangle.
    pub r: Rect,
    /// Resource id.
    pub resource_id: u32,
    /// Reserved.
    pub padding: u32,
}

/// TRANSFER_TO_HOST_2D request.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TransferToHost2d {
    /// Header.
    pub hdr: CtrlHdr,
    /// Rectangle to copy.
    pub r: Rect,
    /// Byte offset of the rectangle's first pixel in the backing.
    pub offset: u64,
    /// Resource id.
    pub resource_id: u32,
    /// Reserved.
    pub padding: u32,
}

/// RESOURCE_ATTACH_BACKING request header; `nr_entries` [`MemEntry`]s follow.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ResourceAttachBacking {
    /// Header.
    pub hdr: CtrlHdr,
    /// Resource id.
    pub resource_id: u32,
    /// Number of entries that follow.
    pub nr_entries: u32,
}

/// One guest-physical range of a resource's backing.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemEntry {
    /// Guest-physical address.
    pub addr: u64,
    /// Length in bytes.
    pub length: u32,
    /// Reserved.
    pub padding: u32,
}

/// GET_CAPSET_INFO request.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GetCapsetInfo {
    /// Header.
    pub hdr: CtrlHdr,
    /// Index, below `num_capsets`.
    pub capset_index: u32,
    /// Reserved.
    pub padding: u32,
}

/// GET_CAPSET_INFO response.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RespCapsetInfo {
    /// Header (`RESP_OK_CAPSET_INFO`).
    pub hdr: CtrlHdr,
    /// Capset id.
    pub capset_id: u32,
    /// Highest version.
    pub capset_max_version: u32,
    /// Largest payload size.
    pub capset_max_size: u32,
    /// Reserved.
    pub padding: u32,
}

/// GET_CAPSET request; the response is a header followed by the data.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GetCapset {
    /// Header.
    pub hdr: CtrlHdr,
    /// Capset id.
    pub capset_id: u32,
    /// Requested version.
    pub capset_version: u32,
}

/// RESOURCE_ASSIGN_UUID response.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RespResourceUuid {
    /// Header (`RESP_OK_RESOURCE_UUID`).
    pub hdr: CtrlHdr,
    /// The UUID.
    pub uuid: [u8; 16],
}

/// RESOURCE_CREATE_BLOB request header; `nr_entries` [`MemEntry`]s follow.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ResourceCreateBlob {
    /// Header.
    pub hdr: CtrlHdr,
    /// New resource id.
    pub resource_id: u32,
    /// `VIRTIO_GPU_BLOB_MEM_*`.
    pub blob_mem: u32,
    /// `VIRTIO_GPU_BLOB_FLAG_*`.
    pub blob_flags: u32,
    /// Number of entries that follow.
    pub nr_entries: u32,
    /// Context-defined blob id.
    pub blob_id: u64,
    /// Size in bytes.
    pub size: u64,
}

/// SET_SCANOUT_BLOB request.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SetScanoutBlob {
    /// Header.
    pub hdr: CtrlHdr,
    /// Source rectangle.
    pub r: Rect,
    /// Scanout index.
    pub scanout_id: u32,
    /// Blob resource id, or 0 to disable.
    pub resource_id: u32,
    /// Framebuffer width.
    pub width: u32,
    /// Framebuffer height.
    pub height: u32,
    /// Pixel format.
    pub format: u32,
    /// Reserved.
    pub padding: u32,
    /// Plane strides.
    pub strides: [u32; 4],
    /// Plane offsets.
    pub offsets: [u32; 4],
}

/// CTX_CREATE request.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CtxCreate {
    /// Header (`ctx_id` is the new context).
    pub hdr: CtrlHdr,
    /// Length of `debug_name`.
    pub nlen: u32,
    /// Capset id in the low 8 bits (CONTEXT_INIT).
    pub context_init: u32,
    /// Debug name, not NUL-terminated.
    pub debug_name: [u8; 64],
}

impl Default for CtxCreate {
    fn default() -> Self {
        CtxCreate {
            hdr: CtrlHdr::default(),
            nlen: 0,
            context_init: 0,
            debug_name: [0; 64],
        }
    }
}

/// RESOURCE_CREATE_3D request.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ResourceCreate3d {
    /// Header.
    pub hdr: CtrlHdr,
    /// New resource id.
    pub resource_id: u32,
    /// Gallium pipe texture target (0 = buffer).
    pub target: u32,
    /// Format.
    pub format: u32,
    /// Bind flags.
    pub bind: u32,
    /// Width.
    pub width: u32,
    /// Height.
    pub height: u32,
    /// Depth.
    pub depth: u32,
    /// Array size.
    pub array_size: u32,
    /// Last mip level.
    pub last_level: u32,
    /// Sample count.
    pub nr_samples: u32,
    /// Flags.
    pub flags: u32,
    /// Reserved.
    pub padding: u32,
}

/// A 3D box.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Box3d {
    /// x.
    pub x: u32,
    /// y.
    pub y: u32,
    /// z.
    pub z: u32,
    /// Width.
    pub w: u32,
    /// Height.
    pub h: u32,
    /// Depth.
    pub d: u32,
}

/// TRANSFER_TO_HOST_3D and TRANSFER_FROM_HOST_3D request.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TransferHost3d {
    /// Header.
    pub hdr: CtrlHdr,
    /// Region.
    pub box_: Box3d,
    /// Byte offset in the backing.
    pub offset: u64,
    /// Resource id.
    pub resource_id: u32,
    /// Mip level.
    pub level: u32,
    /// Row stride in bytes (0 = tightly packed).
    pub stride: u32,
    /// Layer stride in bytes (0 = tightly packed).
    pub layer_stride: u32,
}

/// SUBMIT_3D request header; `size` bytes of command data follow.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CmdSubmit {
    /// Header.
    pub hdr: CtrlHdr,
    /// Size of the command buffer.
    pub size: u32,
    /// Number of in-fence ids that follow (reserved before virtio 1.3).
    pub num_in_fences: u32,
}

/// RESOURCE_MAP_BLOB request.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ResourceMapBlob {
    /// Header.
    pub hdr: CtrlHdr,
    /// Resource id.
    pub resource_id: u32,
    /// Reserved.
    pub padding: u32,
    /// Offset in the host-visible region.
    pub offset: u64,
}

/// RESOURCE_MAP_BLOB response.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RespMapInfo {
    /// Header (`RESP_OK_MAP_INFO`).
    pub hdr: CtrlHdr,
    /// Caching mode of the mapping.
    pub map_info: u32,
    /// Reserved.
    pub padding: u32,
}

/// Cursor position.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CursorPos {
    /// Scanout index.
    pub scanout_id: u32,
    /// x.
    pub x: u32,
    /// y.
    pub y: u32,
    /// Reserved.
    pub padding: u32,
}

/// UPDATE_CURSOR and MOVE_CURSOR request.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UpdateCursor {
    /// Header.
    pub hdr: CtrlHdr,
    /// Position.
    pub pos: CursorPos,
    /// Cursor image resource (UPDATE_CURSOR), 0 hides the cursor.
    pub resource_id: u32,
    /// Hot spot x.
    pub hot_x: u32,
    /// Hot spot y.
    pub hot_y: u32,
    /// Reserved.
    pub padding: u32,
}

/// The device configuration space.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VirtioGpuConfig {
    /// Pending events (read-only for the driver).
    pub events_read: u32,
    /// Events the driver acknowledges (write to clear).
    pub events_clear: u32,
    /// Number of scanouts.
    pub num_scanouts: u32,
    /// Number of capsets.
    pub num_capsets: u32,
}

wire_struct!(
    CtrlHdr = 24,
    Rect = 16,
    DisplayOne = 24,
    RespDisplayInfo = 408,
    GetEdid = 32,
    RespEdid = 1056,
    ResourceCreate2d = 40,
    ResourceOnly = 32,
    SetScanout = 48,
    ResourceFlush = 48,
    TransferToHost2d = 56,
    ResourceAttachBacking = 32,
    MemEntry = 16,
    GetCapsetInfo = 32,
    RespCapsetInfo = 40,
    GetCapset = 32,
    RespResourceUuid = 40,
    ResourceCreateBlob = 56,
    SetScanoutBlob = 96,
    CtxCreate = 96,
    ResourceCreate3d = 72,
    Box3d = 24,
    TransferHost3d = 72,
    CmdSubmit = 32,
    ResourceMapBlob = 40,
    RespMapInfo = 32,
    CursorPos = 16,
    UpdateCursor = 56,
    VirtioGpuConfig = 16,
);

impl CtrlHdr {
    /// Whether the command asks for a fence.
    pub fn is_fenced(&self) -> bool {
        self.flags & VIRTIO_GPU_FLAG_FENCE != 0
    }

    /// A response header for this request: it echoes the fence, context and
    /// ring so the driver can match it, as the specification requires.
    pub fn response(&self, type_: u32) -> CtrlHdr {
        let mut hdr = CtrlHdr {
            type_,
            ..CtrlHdr::default()
        };
        if self.is_fenced() {
            hdr.flags = self.flags & (VIRTIO_GPU_FLAG_FENCE | VIRTIO_GPU_FLAG_INFO_RING_IDX);
            hdr.fence_id = self.fence_id;
            hdr.ctx_id = self.ctx_id;
            if self.flags & VIRTIO_GPU_FLAG_INFO_RING_IDX != 0 {
                hdr.ring_idx = self.ring_idx;
            }
        }
        hdr
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_echoes_fence_only_when_fenced() {
        let req = CtrlHdr {
            type_: cmd::GET_DISPLAY_INFO,
            flags: VIRTIO_GPU_FLAG_FENCE | VIRTIO_GPU_FLAG_INFO_RING_IDX,
            fence_id: 42,
            ctx_id: 3,
            ring_idx: 5,
            padding: [9; 3],
        };
        let r = req.response(cmd::RESP_OK_NODATA);
        assert_eq!(r.fence_id, 42);
        assert_eq!(r.ring_idx, 5);
        assert_eq!(r.ctx_id, 3);
        assert_eq!(r.padding, [0; 3]);
        let unfenced = CtrlHdr { flags: 0, ..req };
        assert_eq!(
            unfenced.response(cmd::RESP_OK_NODATA),
            CtrlHdr {
                type_: cmd::RESP_OK_NODATA,
                ..CtrlHdr::default()
            }
        );
    }

    #[test]
    fn formats() {
        assert!(format::is_supported(format::B8G8R8X8_UNORM));
        assert!(!format::is_supported(0));
        assert!(!format::is_supported(5));
    }
}
