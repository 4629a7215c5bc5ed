//! The virtio-gpu DRM driver's ioctls (`include/uapi/drm/virtgpu_drm.h`).
//!
//! [`VirtGpu`] owns an open render node and exposes the ioctls as safe
//! methods: GETPARAM, GET_CAPS, CONTEXT_INIT, RESOURCE_CREATE (buffers
//! only), RESOURCE_CREATE_BLOB (guest memory), MAP (with the `mmap` that
//! follows it, see [`Mapping`]), EXECBUFFER and WAIT, plus GEM_CLOSE from
//! the DRM core. Each ioctl has its `#[repr(C)]` argument structure and
//! request number next to it: a private structure with a size assertion, a
//! request constant built with `iowr`, and a method that documents which
//! pointers the kernel follows.
//!
//! Behaviour of the Linux driver worth knowing (6.1):
//! - without CONTEXT_INIT, the first EXECBUFFER or RESOURCE_CREATE of a DRM
//!   file creates its context implicitly, with capset 0;
//! - RESOURCE_CREATE with a 3D target and EXECBUFFER need the device's
//!   VIRGL feature;
//! - an EXECBUFFER fence without `ring_idx` is on the device's global
//!   timeline;
//! - every resource a file creates is attached to that file's context.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::ptr::NonNull;

use vm_memory::ByteValued;

use super::drm::{self, DriverVersion, DRM_COMMAND_BASE, DRM_IOCTL_BASE};
use super::ioctl::{ioctl_mut, iowr};
use super::{Error, Result};

/// The render node of the first DRM device.
pub const DEFAULT_RENDER_NODE: &str = "/dev/dri/renderD128";

/// `DRM_VIRTGPU_MAP`.
const DRM_VIRTGPU_MAP: u8 = 0x01;
/// `DRM_VIRTGPU_EXECBUFFER`.
const DRM_VIRTGPU_EXECBUFFER: u8 = 0x02;
/// `DRM_VIRTGPU_GETPARAM`.
const DRM_VIRTGPU_GETPARAM: u8 = 0x03;
/// `DRM_VIRTGPU_RESOURCE_CREATE`.
const DRM_VIRTGPU_RESOURCE_CREATE: u8 = 0x04;
/// `DRM_VIRTGPU_WAIT`.
const DRM_VIRTGPU_WAIT: u8 = 0x08;
/// `DRM_VIRTGPU_GET_CAPS`.
const DRM_VIRTGPU_GET_CAPS: u8 = 0x09;
/// `DRM_VIRTGPU_RESOURCE_CREATE_BLOB`.
const DRM_VIRTGPU_RESOURCE_CREATE_BLOB: u8 = 0x0a;
/// `DRM_VIRTGPU_CONTEXT_INIT`.
const DRM_VIRTGPU_CONTEXT_INIT: u8 = 0x0b;

/// `VIRTGPU_EXECBUF_FENCE_FD_IN`: `fence_fd` is a sync_file to wait for.
const VIRTGPU_EXECBUF_FENCE_FD_IN: u32 = 0x01;
/// `VIRTGPU_EXECBUF_FENCE_FD_OUT`: return a sync_file for the fence.
const VIRTGPU_EXECBUF_FENCE_FD_OUT: u32 = 0x02;
/// `VIRTGPU_EXECBUF_RING_IDX`: `ring_idx` names the context's ring.
const VIRTGPU_EXECBUF_RING_IDX: u32 = 0x04;

/// `VIRTGPU_WAIT_NOWAIT`.
const VIRTGPU_WAIT_NOWAIT: u32 = 0x01;

/// `VIRTGPU_BLOB_MEM_GUEST`: a blob whose memory is guest pages.
const VIRTGPU_BLOB_MEM_GUEST: u32 = 0x0001;
/// `VIRTGPU_BLOB_FLAG_USE_MAPPABLE`: the guest may map the blob.
const VIRTGPU_BLOB_FLAG_USE_MAPPABLE: u32 = 0x0001;

/// `VIRTGPU_CONTEXT_PARAM_CAPSET_ID`.
const VIRTGPU_CONTEXT_PARAM_CAPSET_ID: u64 = 0x0001;
/// `VIRTGPU_CONTEXT_PARAM_NUM_RINGS`.
const VIRTGPU_CONTEXT_PARAM_NUM_RINGS: u64 = 0x0002;
/// `VIRTGPU_CONTEXT_PARAM_POLL_RINGS_MASK`.
const VIRTGPU_CONTEXT_PARAM_POLL_RINGS_MASK: u64 = 0x0003;

/// `PIPE_BUFFER`: the only `target` the device accepts for 3D resources.
const PIPE_BUFFER: u32 = 0;
/// `VIRGL_BIND_CUSTOM`: a buffer with no fixed use in the pipeline.
const VIRGL_BIND_CUSTOM: u32 = 1 << 17;

/// `struct drm_virtgpu_map`.
#[repr(C)]
#[derive(Debug, Default)]
struct DrmVirtgpuMap {
    /// Out: the fake offset to pass to `mmap(2)` on the DRM file.
    offset: u64,
    /// GEM handle of the BO.
    handle: u32,
    pad: u32,
}

const _: () = assert!(std::mem::size_of::<DrmVirtgpuMap>() == 16);

/// `struct drm_virtgpu_execbuffer`.
#[repr(C)]
#[derive(Debug, Default)]
struct DrmVirtgpuExecbuffer {
    /// `VIRTGPU_EXECBUF_*`.
    flags: u32,
    /// Bytes of the command buffer.
    size: u32,
    /// User address of the command buffer.
    command: u64,
    /// User address of an array of GEM handles.
    bo_handles: u64,
    /// Number of GEM handles.
    num_bo_handles: u32,
    /// In: sync_file to wait for (FENCE_FD_IN); out: the fence (FENCE_FD_OUT).
    fence_fd: i32,
    /// Ring of the context (with RING_IDX).
    ring_idx: u32,
    pad: u32,
}

const _: () = assert!(std::mem::size_of::<DrmVirtgpuExecbuffer>() == 40);

/// `struct drm_virtgpu_resource_create`.
#[repr(C)]
#[derive(Debug, Default)]
struct DrmVirtgpuResourceCreate {
    target: u32,
    format: u32,
    bind: u32,
    width: u32,
    height: u32,
    depth: u32,
    array_size: u32,
    last_level: u32,
    nr_samples: u32,
    flags: u32,
    /// Out: GEM handle.
    bo_handle: u32,
    /// Out: virtio-gpu resource id.
    res_handle: u32,
    /// Bytes of guest backing to allocate.
    size: u32,
    stride: u32,
}

const _: () = assert!(std::mem::size_of::<DrmVirtgpuResourceCreate>() == 56);

/// `struct drm_virtgpu_3d_wait`.
#[repr(C)]
#[derive(Debug, Default)]
struct DrmVirtgpu3dWait {
    handle: u32,
    flags: u32,
}

const _: () = assert!(std::mem::size_of::<DrmVirtgpu3dWait>() == 8);

/// `struct drm_virtgpu_resource_create_blob`.
#[repr(C)]
#[derive(Debug, Default)]
struct DrmVirtgpuResourceCreateBlob {
    blob_mem: u32,
    blob_flags: u32,
    /// Out: GEM handle.
    bo_handle: u32,
    /// Out: virtio-gpu resource id.
    res_handle: u32,
    size: u64,
    pad: u32,
    cmd_size: u32,
    cmd: u64,
    blob_id: u64,
}

const _: () = assert!(std::mem::size_of::<DrmVirtgpuResourceCreateBlob>() == 48);

/// `struct drm_virtgpu_context_set_param`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct DrmVirtgpuContextSetParam {
    param: u64,
    value: u64,
}

const _: () = assert!(std::mem::size_of::<DrmVirtgpuContextSetParam>() == 16);

/// `struct drm_virtgpu_context_init`.
#[repr(C)]
#[derive(Debug, Default)]
struct DrmVirtgpuContextInit {
    num_params: u32,
    pad: u32,
    /// User address of an array of `drm_virtgpu_context_set_param`.
    ctx_set_params: u64,
}

const _: () = assert!(std::mem::size_of::<DrmVirtgpuContextInit>() == 16);

/// `DRM_IOCTL_VIRTGPU_MAP`.
const DRM_IOCTL_VIRTGPU_MAP: u32 =
    iowr::<DrmVirtgpuMap>(DRM_IOCTL_BASE, DRM_COMMAND_BASE + DRM_VIRTGPU_MAP);
/// `DRM_IOCTL_VIRTGPU_EXECBUFFER`.
const DRM_IOCTL_VIRTGPU_EXECBUFFER: u32 =
    iowr::<DrmVirtgpuExecbuffer>(DRM_IOCTL_BASE, DRM_COMMAND_BASE + DRM_VIRTGPU_EXECBUFFER);
/// `DRM_IOCTL_VIRTGPU_RESOURCE_CREATE`.
const DRM_IOCTL_VIRTGPU_RESOURCE_CREATE: u32 = iowr::<DrmVirtgpuResourceCreate>(
    DRM_IOCTL_BASE,
    DRM_COMMAND_BASE + DRM_VIRTGPU_RESOURCE_CREATE,
);
/// `DRM_IOCTL_VIRTGPU_WAIT`.
const DRM_IOCTL_VIRTGPU_WAIT: u32 =
    iowr::<DrmVirtgpu3dWait>(DRM_IOCTL_BASE, DRM_COMMAND_BASE + DRM_VIRTGPU_WAIT);
/// `DRM_IOCTL_VIRTGPU_RESOURCE_CREATE_BLOB`.
const DRM_IOCTL_VIRTGPU_RESOURCE_CREATE_BLOB: u32 = iowr::<DrmVirtgpuResourceCreateBlob>(
    DRM_IOCTL_BASE,
    DRM_COMMAND_BASE + DRM_VIRTGPU_RESOURCE_CREATE_BLOB,
);
/// `DRM_IOCTL_VIRTGPU_CONTEXT_INIT`.
const DRM_IOCTL_VIRTGPU_CONTEXT_INIT: u32 =
    iowr::<DrmVirtgpuContextInit>(DRM_IOCTL_BASE, DRM_COMMAND_BASE + DRM_VIRTGPU_CONTEXT_INIT);

/// `struct drm_virtgpu_getparam`.
#[repr(C)]
#[derive(Debug, Default)]
struct DrmVirtgpuGetparam {
    /// One of the `VIRTGPU_PARAM_*` values.
    param: u64,
    /// User address of an `int` the kernel writes the value to.
    value: u64,
}

const _: () = assert!(std::mem::size_of::<DrmVirtgpuGetparam>() == 16);

/// `struct drm_virtgpu_get_caps`.
#[repr(C)]
#[derive(Debug, Default)]
struct DrmVirtgpuGetCaps {
    /// Capset id (`VIRTIO_GPU_CAPSET_*`).
    cap_set_id: u32,
    /// Capset version; must not exceed the device's `max_version`.
    cap_set_ver: u32,
    /// User address of the buffer the capset is copied to.
    addr: u64,
    /// Size of that buffer in bytes. The kernel copies at most this many
    /// bytes, and at most the capset's size.
    size: u32,
    pad: u32,
}

const _: () = assert!(std::mem::size_of::<DrmVirtgpuGetCaps>() == 24);

/// `DRM_IOCTL_VIRTGPU_GETPARAM`.
const DRM_IOCTL_VIRTGPU_GETPARAM: u32 =
    iowr::<DrmVirtgpuGetparam>(DRM_IOCTL_BASE, DRM_COMMAND_BASE + DRM_VIRTGPU_GETPARAM);
/// `DRM_IOCTL_VIRTGPU_GET_CAPS`.
const DRM_IOCTL_VIRTGPU_GET_CAPS: u32 =
    iowr::<DrmVirtgpuGetCaps>(DRM_IOCTL_BASE, DRM_COMMAND_BASE + DRM_VIRTGPU_GET_CAPS);

/// A value the driver reports through `DRM_IOCTL_VIRTGPU_GETPARAM`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Param {
    /// `VIRTGPU_PARAM_3D_FEATURES`: the device offers VIRGL (3D commands).
    Features3d,
    /// `VIRTGPU_PARAM_CAPSET_QUERY_FIX`: GET_CAPS honours the capset
    /// version (always 1 on current kernels).
    CapsetQueryFix,
    /// `VIRTGPU_PARAM_RESOURCE_BLOB`: blob resources are available.
    ResourceBlob,
    /// `VIRTGPU_PARAM_HOST_VISIBLE`: the device exposes a host-visible
    /// memory region.
    HostVisible,
    /// `VIRTGPU_PARAM_CROSS_DEVICE`: resources can be shared with other
    /// virtio devices (RESOURCE_UUID).
    CrossDevice,
    /// `VIRTGPU_PARAM_CONTEXT_INIT`: contexts can be created with a capset
    /// and rings (`DRM_IOCTL_VIRTGPU_CONTEXT_INIT`).
    ContextInit,
    /// `VIRTGPU_PARAM_SUPPORTED_CAPSET_IDs`: bit mask of the capset ids the
    /// device announced.
    SupportedCapsetIds,
}

impl Param {
    /// Every parameter, in uAPI order.
    pub const ALL: [Param; 7] = [
        Param::Features3d,
        Param::CapsetQueryFix,
        Param::ResourceBlob,
        Param::HostVisible,
        Param::CrossDevice,
        Param::ContextInit,
        Param::SupportedCapsetIds,
    ];

    /// The `VIRTGPU_PARAM_*` number.
    pub const fn id(self) -> u64 {
        match self {
            Param::Features3d => 1,
            Param::CapsetQueryFix => 2,
            Param::ResourceBlob => 3,
            Param::HostVisible => 4,
            Param::CrossDevice => 5,
            Param::ContextInit => 6,
            Param::SupportedCapsetIds => 7,
        }
    }

    /// The name of the parameter in the uAPI header, without the
    /// `VIRTGPU_PARAM_` prefix.
    pub const fn name(self) -> &'static str {
        match self {
            Param::Features3d => "3D_FEATURES",
            Param::CapsetQueryFix => "CAPSET_QUERY_FIX",
            Param::ResourceBlob => "RESOURCE_BLOB",
            Param::HostVisible => "HOST_VISIBLE",
            Param::CrossDevice => "CROSS_DEVICE",
            Param::ContextInit => "CONTEXT_INIT",
            Param::SupportedCapsetIds => "SUPPORTED_CAPSET_IDs",
        }
    }
}

impl fmt::Display for Param {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The set of capset ids a device supports, from
/// [`Param::SupportedCapsetIds`]: bit `n` set means capset id `n` is offered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CapsetIdMask(pub u32);

impl CapsetIdMask {
    /// Whether capset `id` is in the set.
    pub fn contains(self, id: u32) -> bool {
        id < u32::BITS && self.0 & (1 << id) != 0
    }

    /// The capset ids in the set, in increasing order.
    pub fn ids(self) -> impl Iterator<Item = u32> {
        (0..u32::BITS).filter(move |&id| self.contains(id))
    }
}

impl fmt::Display for CapsetIdMask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

/// An open virtio-gpu DRM device (normally a render node).
#[derive(Debug)]
pub struct VirtGpu {
    file: File,
    path: PathBuf,
}

impl VirtGpu {
    /// Opens the DRM device node at `path` for reading and writing.
    ///
    /// This does not check that the node belongs to the virtio-gpu driver;
    /// see [`VirtGpu::driver_version`].
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|source| Error::Open {
                path: path.to_owned(),
                source,
            })?;
        Ok(VirtGpu {
            file,
            path: path.to_owned(),
        })
    }

    /// Opens [`DEFAULT_RENDER_NODE`].
    pub fn open_default() -> Result<Self> {
        Self::open(DEFAULT_RENDER_NODE)
    }

    /// The path this device was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The DRM driver's name and version (`DRM_IOCTL_VERSION`); the
    /// virtio-gpu driver calls itself `virtio_gpu`.
    pub fn driver_version(&self) -> Result<DriverVersion> {
        drm::driver_version(self.file.as_fd())
    }

    /// Reads one parameter (`DRM_IOCTL_VIRTGPU_GETPARAM`).
    pub fn get_param(&self, param: Param) -> Result<u32> {
        // The kernel writes an `int`; a `u32` has the same size and
        // alignment, and the values are flags and a bit mask.
        let mut value: u32 = 0;
        let mut arg = DrmVirtgpuGetparam {
            param: param.id(),
            value: std::ptr::from_mut(&mut value) as u64,
        };
        // SAFETY: `arg` is the argument of DRM_IOCTL_VIRTGPU_GETPARAM; its
        // only pointer is `value`, a live 4-byte local the kernel writes one
        // `int` to before the call returns.
        unsafe { ioctl_mut(self.file.as_fd(), DRM_IOCTL_VIRTGPU_GETPARAM, &mut arg) }.map_err(
            |source| Error::Ioctl {
                ioctl: "DRM_IOCTL_VIRTGPU_GETPARAM",
                source,
            },
        )?;
        Ok(value)
    }

    /// The capset ids the device announced
    /// ([`Param::SupportedCapsetIds`]).
    pub fn supported_capset_ids(&self) -> Result<CapsetIdMask> {
        self.get_param(Param::SupportedCapsetIds).map(CapsetIdMask)
    }

    /// Copies capset `id` at `version` into `buf` (`DRM_IOCTL_VIRTGPU_GET_CAPS`).
    ///
    /// The kernel copies `min(buf.len(), capset size)` bytes and does not say
    /// how many: bytes past the capset's size are left untouched. The first
    /// call for a capset waits for the device to answer GET_CAPSET; later
    /// calls are served from the driver's cache.
    pub fn get_caps(&self, id: u32, version: u32, buf: &mut [u8]) -> Result<()> {
        let size = u32::try_from(buf.len()).map_err(|_| Error::BufferTooLarge {
            ioctl: "DRM_IOCTL_VIRTGPU_GET_CAPS",
            len: buf.len(),
        })?;
        let mut arg = DrmVirtgpuGetCaps {
            cap_set_id: id,
            cap_set_ver: version,
            addr: buf.as_mut_ptr() as u64,
            size,
            pad: 0,
        };
        // SAFETY: `arg` is the argument of DRM_IOCTL_VIRTGPU_GET_CAPS; its
        // only pointer is `buf`, exclusively borrowed for this call and valid
        // for writes of `size` bytes, and the kernel writes no more than that.
        unsafe { ioctl_mut(self.file.as_fd(), DRM_IOCTL_VIRTGPU_GET_CAPS, &mut arg) }.map_err(
            |source| Error::Ioctl {
                ioctl: "DRM_IOCTL_VIRTGPU_GET_CAPS",
                source,
            },
        )
    }

    /// Reads capset `id` at `version` as a `T`.
    ///
    /// `T` starts zeroed (its `Default`), so fields beyond the capset size
    /// the device announced stay at their default.
    pub fn read_capset<T: ByteValued + Default>(&self, id: u32, version: u32) -> Result<T> {
        let mut caps = T::default();
        self.get_caps(id, version, caps.as_mut_slice())?;
        Ok(caps)
    }

    /// Runs one ioctl of this device, naming it in the error.
    ///
    /// # Safety
    ///
    /// As [`ioctl_mut`]: `T` must be the argument type of `request` and every
    /// pointer inside `arg` valid for the kernel's accesses.
    unsafe fn ioctl<T>(&self, name: &'static str, request: u32, arg: &mut T) -> Result<()> {
        // SAFETY: forwarded from the caller.
        unsafe { ioctl_mut(self.file.as_fd(), request, arg) }.map_err(|source| Error::Ioctl {
            ioctl: name,
            source,
        })
    }

    /// Creates this file's context with a capset and fence rings
    /// (`DRM_IOCTL_VIRTGPU_CONTEXT_INIT`).
    ///
    /// Needs [`Param::ContextInit`]. It must come before anything that
    /// creates the context implicitly (EXECBUFFER, RESOURCE_CREATE, blob
    /// creation). `poll_rings_mask` selects the rings whose fences also
    /// raise a DRM event on the file (0: none).
    pub fn context_init(&self, capset_id: u32, num_rings: u32, poll_rings_mask: u64) -> Result<()> {
        let mut params = vec![
            DrmVirtgpuContextSetParam {
                param: VIRTGPU_CONTEXT_PARAM_CAPSET_ID,
                value: capset_id.into(),
            },
            DrmVirtgpuContextSetParam {
                param: VIRTGPU_CONTEXT_PARAM_NUM_RINGS,
                value: num_rings.into(),
            },
        ];
        if poll_rings_mask != 0 {
            params.push(DrmVirtgpuContextSetParam {
                param: VIRTGPU_CONTEXT_PARAM_POLL_RINGS_MASK,
                value: poll_rings_mask,
            });
        }
        let mut arg = DrmVirtgpuContextInit {
            num_params: params.len() as u32,
            pad: 0,
            ctx_set_params: params.as_ptr() as u64,
        };
        // SAFETY: the argument of DRM_IOCTL_VIRTGPU_CONTEXT_INIT; its only
        // pointer is `params`, a live array of exactly `num_params`
        // elements the kernel only reads.
        unsafe {
            self.ioctl(
                "DRM_IOCTL_VIRTGPU_CONTEXT_INIT",
                DRM_IOCTL_VIRTGPU_CONTEXT_INIT,
                &mut arg,
            )
        }
    }

    /// Creates a 3D buffer resource of `size` bytes with guest backing
    /// (`DRM_IOCTL_VIRTGPU_RESOURCE_CREATE`: target 0, width `size`, height,
    /// depth and array size 1). Needs [`Param::Features3d`].
    pub fn resource_create_buffer(&self, size: u32) -> Result<Resource> {
        let mut arg = DrmVirtgpuResourceCreate {
            target: PIPE_BUFFER,
            bind: VIRGL_BIND_CUSTOM,
            width: size,
            height: 1,
            depth: 1,
            array_size: 1,
            size,
            ..Default::default()
        };
        // SAFETY: the argument of DRM_IOCTL_VIRTGPU_RESOURCE_CREATE; it
        // holds no pointers.
        unsafe {
            self.ioctl(
                "DRM_IOCTL_VIRTGPU_RESOURCE_CREATE",
                DRM_IOCTL_VIRTGPU_RESOURCE_CREATE,
                &mut arg,
            )
        }?;
        Ok(Resource {
            bo_handle: arg.bo_handle,
            res_handle: arg.res_handle,
            size: size.into(),
        })
    }

    /// Creates a mappable guest-memory blob of `size` bytes
    /// (`DRM_IOCTL_VIRTGPU_RESOURCE_CREATE_BLOB`, `VIRTGPU_BLOB_MEM_GUEST`).
    /// Needs [`Param::ResourceBlob`].
    pub fn resource_create_guest_blob(&self, size: u64) -> Result<Resource> {
        let mut arg = DrmVirtgpuResourceCreateBlob {
            blob_mem: VIRTGPU_BLOB_MEM_GUEST,
            blob_flags: VIRTGPU_BLOB_FLAG_USE_MAPPABLE,
            size,
            ..Default::default()
        };
        // SAFETY: the argument of DRM_IOCTL_VIRTGPU_RESOURCE_CREATE_BLOB;
        // `cmd` is null with `cmd_size` 0, so the kernel follows no pointer.
        unsafe {
            self.ioctl(
                "DRM_IOCTL_VIRTGPU_RESOURCE_CREATE_BLOB",
                DRM_IOCTL_VIRTGPU_RESOURCE_CREATE_BLOB,
                &mut arg,
            )
        }?;
        Ok(Resource {
            bo_handle: arg.bo_handle,
            res_handle: arg.res_handle,
            size,
        })
    }

    /// Maps a resource's guest pages into this process, read-write and
    /// shared (`DRM_IOCTL_VIRTGPU_MAP`, then `mmap(2)` at the returned
    /// offset). Device writes to the pages are visible through the mapping
    /// without any transfer.
    pub fn map(&self, res: &Resource) -> Result<Mapping> {
        let len = usize::try_from(res.size).map_err(|_| Error::BufferTooLarge {
            ioctl: "DRM_IOCTL_VIRTGPU_MAP",
            len: usize::MAX,
        })?;
        let mut arg = DrmVirtgpuMap {
            handle: res.bo_handle,
            ..Default::default()
        };
        // SAFETY: the argument of DRM_IOCTL_VIRTGPU_MAP; no pointers.
        unsafe { self.ioctl("DRM_IOCTL_VIRTGPU_MAP", DRM_IOCTL_VIRTGPU_MAP, &mut arg) }?;
        let offset = libc::off_t::try_from(arg.offset).map_err(|_| Error::BadAnswer {
            ioctl: "DRM_IOCTL_VIRTGPU_MAP",
            detail: format!("offset {:#x}", arg.offset),
        })?;
        // SAFETY: a fresh mapping chosen by the kernel (null hint), of the
        // BO's size at the fake offset DRM gave for it; it aliases no Rust
        // object. Ownership of the mapping goes to `Mapping`, which unmaps
        // it exactly once.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                self.file.as_raw_fd(),
                offset,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(Error::Ioctl {
                ioctl: "mmap",
                source: std::io::Error::last_os_error(),
            });
        }
        let ptr = NonNull::new(ptr.cast::<u8>()).ok_or_else(|| Error::BadAnswer {
            ioctl: "mmap",
            detail: "null mapping".into(),
        })?;
        Ok(Mapping { ptr, len })
    }

    /// Sends a command buffer to this file's context
    /// (`DRM_IOCTL_VIRTGPU_EXECBUFFER`); returns the out-fence as a
    /// sync_file when [`ExecBuffer::fence_out`] asked for one.
    ///
    /// The first EXECBUFFER of a file without CONTEXT_INIT creates its
    /// context with capset 0.
    pub fn execbuffer(&self, exec: &ExecBuffer<'_>) -> Result<Option<OwnedFd>> {
        let size = u32::try_from(exec.command.len()).map_err(|_| Error::BufferTooLarge {
            ioctl: "DRM_IOCTL_VIRTGPU_EXECBUFFER",
            len: exec.command.len(),
        })?;
        let mut arg = DrmVirtgpuExecbuffer {
            size,
            command: exec.command.as_ptr() as u64,
            fence_fd: -1,
            ..Default::default()
        };
        if let Some(ring) = exec.ring_idx {
            arg.flags |= VIRTGPU_EXECBUF_RING_IDX;
            arg.ring_idx = ring;
        }
        if let Some(fd) = exec.in_fence {
            arg.flags |= VIRTGPU_EXECBUF_FENCE_FD_IN;
            arg.fence_fd = fd.as_raw_fd();
        }
        if exec.fence_out {
            arg.flags |= VIRTGPU_EXECBUF_FENCE_FD_OUT;
        }
        // SAFETY: the argument of DRM_IOCTL_VIRTGPU_EXECBUFFER; `command`
        // points to `size` live bytes the kernel copies, and `bo_handles` is
        // null with a zero count. An in-fence descriptor is borrowed for
        // the call.
        unsafe {
            self.ioctl(
                "DRM_IOCTL_VIRTGPU_EXECBUFFER",
                DRM_IOCTL_VIRTGPU_EXECBUFFER,
                &mut arg,
            )
        }?;
        if !exec.fence_out {
            return Ok(None);
        }
        if arg.fence_fd < 0 {
            return Err(Error::BadAnswer {
                ioctl: "DRM_IOCTL_VIRTGPU_EXECBUFFER",
                detail: format!("fence fd {}", arg.fence_fd),
            });
        }
        // SAFETY: with FENCE_FD_OUT the kernel installed a new sync_file
        // descriptor for this process and gave it to us alone.
        Ok(Some(unsafe { OwnedFd::from_raw_fd(arg.fence_fd) }))
    }

    /// Waits (up to the driver's 15 s) until the device is done with a
    /// resource's fenced commands (`DRM_IOCTL_VIRTGPU_WAIT`); with
    /// `nowait`, only asks. Returns whether the resource is idle.
    pub fn wait(&self, res: &Resource, nowait: bool) -> Result<bool> {
        let mut arg = DrmVirtgpu3dWait {
            handle: res.bo_handle,
            flags: if nowait { VIRTGPU_WAIT_NOWAIT } else { 0 },
        };
        // SAFETY: the argument of DRM_IOCTL_VIRTGPU_WAIT; no pointers.
        match unsafe { self.ioctl("DRM_IOCTL_VIRTGPU_WAIT", DRM_IOCTL_VIRTGPU_WAIT, &mut arg) } {
            Ok(()) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Drops the file's handle on a resource (`DRM_IOCTL_GEM_CLOSE`). The
    /// kernel unreferences the resource once nothing else holds it.
    pub fn close(&self, res: Resource) -> Result<()> {
        drm::gem_close(self.file.as_fd(), res.bo_handle)
    }
}

/// A virtio-gpu resource created by this file.
///
/// It stays alive until [`VirtGpu::close`] or until the file is closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Resource {
    /// The GEM handle in this DRM file.
    pub bo_handle: u32,
    /// The virtio-gpu resource id the device knows it by.
    pub res_handle: u32,
    /// Size in bytes.
    pub size: u64,
}

/// What to send with [`VirtGpu::execbuffer`].
#[derive(Clone, Copy, Debug, Default)]
pub struct ExecBuffer<'a> {
    /// The command buffer (for this project, native-context commands).
    pub command: &'a [u8],
    /// Ring of the context (`VIRTGPU_EXECBUF_RING_IDX`); `None` puts the
    /// fence on the global timeline. Needs a context made by CONTEXT_INIT.
    pub ring_idx: Option<u32>,
    /// Ask for the fence as a sync_file (`VIRTGPU_EXECBUF_FENCE_FD_OUT`).
    pub fence_out: bool,
    /// A sync_file the kernel waits for before sending the buffer
    /// (`VIRTGPU_EXECBUF_FENCE_FD_IN`).
    pub in_fence: Option<BorrowedFd<'a>>,
}

/// A shared mapping of a resource's guest pages; unmapped on drop.
///
/// The device writes these pages behind the program's back, so every access
/// goes through volatile reads and writes of plain data.
#[derive(Debug)]
pub struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain shared memory with no thread affinity.
unsafe impl Send for Mapping {}

impl Mapping {
    /// Length of the mapping in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the mapping is empty (never, for a mapped resource).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Panics unless `[offset, offset + len)` lies inside the mapping.
    fn check(&self, offset: usize, len: usize) {
        assert!(
            offset.checked_add(len).is_some_and(|end| end <= self.len),
            "access of {len} bytes at {offset:#x} outside a {}-byte mapping",
            self.len
        );
    }

    /// Copies `buf.len()` bytes out of the mapping at `offset`.
    ///
    /// # Panics
    ///
    /// When the range leaves the mapping.
    pub fn read_bytes(&self, offset: usize, buf: &mut [u8]) {
        self.check(offset, buf.len());
        // Order this read after any earlier acquire read of a flag the
        // device wrote after these bytes.
        std::sync::atomic::fence(std::sync::atomic::Ordering::Acquire);
        for (i, b) in buf.iter_mut().enumerate() {
            // SAFETY: inside the live mapping (checked above); bytes have
            // no alignment or validity requirements.
            *b = unsafe { self.ptr.as_ptr().add(offset + i).read_volatile() };
        }
    }

    /// Copies `bytes` into the mapping at `offset`.
    ///
    /// # Panics
    ///
    /// When the range leaves the mapping.
    pub fn write_bytes(&self, offset: usize, bytes: &[u8]) {
        self.check(offset, bytes.len());
        for (i, b) in bytes.iter().enumerate() {
            // SAFETY: inside the live mapping (checked above).
            unsafe { self.ptr.as_ptr().add(offset + i).write_volatile(*b) };
        }
        std::sync::atomic::fence(std::sync::atomic::Ordering::Release);
    }

    /// Fills `[offset, offset + len)` with zeros.
    pub fn zero(&self, offset: usize, len: usize) {
        self.write_bytes(offset, &vec![0; len]);
    }

    /// Reads a 32-bit word at `offset` (4-byte aligned) with acquire
    /// ordering.
    ///
    /// # Panics
    ///
    /// When the word is misaligned or outside the mapping.
    pub fn read_u32(&self, offset: usize) -> u32 {
        self.check(offset, 4);
        assert_eq!(offset % 4, 0, "misaligned 32-bit read at {offset:#x}");
        // SAFETY: an aligned word inside the live mapping (checked above).
        let v = unsafe { self.ptr.as_ptr().add(offset).cast::<u32>().read_volatile() };
        std::sync::atomic::fence(std::sync::atomic::Ordering::Acquire);
        v
    }

    /// Writes a 32-bit word at `offset` (4-byte aligned).
    pub fn write_u32(&self, offset: usize, value: u32) {
        self.write_bytes(offset, &value.to_le_bytes());
    }

    /// Reads a plain-data value at `offset`.
    pub fn read<T: ByteValued + Default>(&self, offset: usize) -> T {
        let mut v = T::default();
        self.read_bytes(offset, v.as_mut_slice());
        v
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are exactly the mapping `mmap` returned, and
        // it is unmapped only here.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// Waits until a sync_file signals, with `poll(2)`; `timeout` `None` waits
/// forever. Returns `false` when the timeout passed first.
pub fn wait_sync_file(fd: BorrowedFd<'_>, timeout: Option<std::time::Duration>) -> Result<bool> {
    let deadline = timeout.map(|t| std::time::Instant::now() + t);
    loop {
        let ms: libc::c_int = match deadline {
            None => -1,
            Some(d) => {
                let left = d.saturating_duration_since(std::time::Instant::now());
                // Round up so a short remainder still waits.
                libc::c_int::try_from(left.as_micros().div_ceil(1000)).unwrap_or(libc::c_int::MAX)
            }
        };
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid `pollfd` for a descriptor borrowed for the call.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        if n > 0 {
            if pfd.revents & (libc::POLLERR | libc::POLLNVAL) != 0 {
                return Err(Error::BadAnswer {
                    ioctl: "poll",
                    detail: format!("revents {:#x} on a sync_file", pfd.revents),
                });
            }
            return Ok(true);
        }
        if n == 0 {
            if deadline.is_some_and(|d| std::time::Instant::now() >= d) {
                return Ok(false);
            }
            continue;
        }
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINTR) {
            return Err(Error::Ioctl {
                ioctl: "poll",
                source: err,
            });
        }
    }
}

impl AsFd for VirtGpu {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_numbers_match_the_uapi_header() {
        assert_eq!(DRM_IOCTL_VIRTGPU_GETPARAM, 0xc010_6443);
        assert_eq!(DRM_IOCTL_VIRTGPU_GET_CAPS, 0xc018_6449);
        assert_eq!(DRM_IOCTL_VIRTGPU_MAP, 0xc010_6441);
        assert_eq!(DRM_IOCTL_VIRTGPU_EXECBUFFER, 0xc028_6442);
        assert_eq!(DRM_IOCTL_VIRTGPU_RESOURCE_CREATE, 0xc038_6444);
        assert_eq!(DRM_IOCTL_VIRTGPU_WAIT, 0xc008_6448);
        assert_eq!(DRM_IOCTL_VIRTGPU_RESOURCE_CREATE_BLOB, 0xc030_644a);
        assert_eq!(DRM_IOCTL_VIRTGPU_CONTEXT_INIT, 0xc010_644b);
    }

    /// An anonymous shared mapping wrapped as a `Mapping`.
    fn anon_mapping(len: usize) -> Mapping {
        // SAFETY: a fresh anonymous mapping; ownership goes to `Mapping`.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(ptr, libc::MAP_FAILED);
        Mapping {
            ptr: NonNull::new(ptr.cast()).unwrap(),
            len,
        }
    }

    #[test]
    fn mapping_reads_and_writes_in_bounds() {
        let m = anon_mapping(4096);
        assert_eq!(m.len(), 4096);
        m.write_u32(8, 0xdead_beef);
        assert_eq!(m.read_u32(8), 0xdead_beef);
        m.write_bytes(4092, &[1, 2, 3, 4]);
        let mut buf = [0u8; 4];
        m.read_bytes(4092, &mut buf);
        assert_eq!(buf, [1, 2, 3, 4]);
        m.zero(4092, 4);
        assert_eq!(m.read::<u32>(4092), 0);
    }

    #[test]
    #[should_panic(expected = "outside")]
    fn mapping_rejects_out_of_bounds_access() {
        anon_mapping(4096).read_u32(4096);
    }

    #[test]
    fn sync_file_wait_is_a_poll_with_timeout() {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors pipe(2) returns.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: both descriptors were just created and are owned here.
        let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let short = Some(std::time::Duration::from_millis(10));
        assert!(!wait_sync_file(r.as_fd(), short).unwrap());
        assert!(!wait_sync_file(r.as_fd(), Some(std::time::Duration::ZERO)).unwrap());
        let mut f = File::from(w);
        std::io::Write::write_all(&mut f, b"x").unwrap();
        assert!(wait_sync_file(r.as_fd(), short).unwrap());
    }

    #[test]
    fn param_ids_follow_the_uapi_order() {
        let ids: Vec<u64> = Param::ALL.iter().map(|p| p.id()).collect();
        assert_eq!(ids, (1..=7).collect::<Vec<u64>>());
        assert_eq!(
            Param::SupportedCapsetIds.to_string(),
            "SUPPORTED_CAPSET_IDs"
        );
    }

    #[test]
    fn capset_mask_membership() {
        let mask = CapsetIdMask((1 << 1) | (1 << 6));
        assert!(mask.contains(1));
        assert!(mask.contains(6));
        assert!(!mask.contains(2));
        assert!(!mask.contains(32));
        assert!(!mask.contains(u32::MAX));
        assert_eq!(mask.ids().collect::<Vec<_>>(), vec![1, 6]);
        assert_eq!(mask.to_string(), "0x42");
        assert_eq!(CapsetIdMask::default().ids().count(), 0);
    }

    #[test]
    fn open_missing_node_is_an_open_error() {
        let err = VirtGpu::open("/nonexistent/renderD999").unwrap_err();
        assert!(matches!(err, Error::Open { .. }));
        assert_eq!(err.raw_os_error(), Some(libc::ENOENT));
    }

    #[test]
    fn ioctls_on_a_non_drm_file_fail_cleanly() {
        let dev = VirtGpu::open("/dev/null").unwrap();
        assert_eq!(dev.path(), Path::new("/dev/null"));
        let err = dev.get_param(Param::CapsetQueryFix).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOTTY));
        let mut buf = [0u8; 8];
        let err = dev.get_caps(6, 0, &mut buf).unwrap_err();
        assert!(matches!(
            err,
            Error::Ioctl {
                ioctl: "DRM_IOCTL_VIRTGPU_GET_CAPS",
                ..
            }
        ));
    }
}
