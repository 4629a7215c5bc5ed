//! The virtio-gpu DRM driver's ioctls (`include/uapi/drm/virtgpu_drm.h`).
//!
//! [`VirtGpu`] owns an open render node and exposes the ioctls as safe
//! methods. Each ioctl has its `#[repr(C)]` argument structure and request
//! number next to it; further ioctls (CONTEXT_INIT, RESOURCE_CREATE(_BLOB),
//! MAP, EXECBUFFER, WAIT) follow the same pattern: a private structure with a
//! size assertion, a request constant built with `iowr`, and a method that
//! documents which pointers the kernel follows.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};

use vm_memory::ByteValued;

use super::drm::{self, DriverVersion, DRM_COMMAND_BASE, DRM_IOCTL_BASE};
use super::ioctl::{ioctl_mut, iowr};
use super::{Error, Result};

/// The render node of the first DRM device.
pub const DEFAULT_RENDER_NODE: &str = "/dev/dri/renderD128";

/// `DRM_VIRTGPU_GETPARAM`.
const DRM_VIRTGPU_GETPARAM: u8 = 0x03;
/// `DRM_VIRTGPU_GET_CAPS`.
const DRM_VIRTGPU_GET_CAPS: u8 = 0x09;

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
