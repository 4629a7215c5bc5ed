//! Core DRM ioctls (`include/uapi/drm/drm.h`) that every DRM driver answers.

use std::ffi::c_char;
use std::os::fd::BorrowedFd;

use super::ioctl::{ioctl_mut, iow, iowr};
use super::{Error, Result};

/// The DRM ioctl type character (`DRM_IOCTL_BASE`).
pub(crate) const DRM_IOCTL_BASE: u8 = b'd';

/// First command number reserved for driver-specific ioctls
/// (`DRM_COMMAND_BASE`).
pub(crate) const DRM_COMMAND_BASE: u8 = 0x40;

/// `struct drm_version`.
///
/// The three string fields are filled by the kernel up to the announced
/// lengths; on return each length holds the full length of the string.
#[repr(C)]
#[derive(Debug)]
struct DrmVersion {
    version_major: libc::c_int,
    version_minor: libc::c_int,
    version_patchlevel: libc::c_int,
    name_len: libc::size_t,
    name: *mut c_char,
    date_len: libc::size_t,
    date: *mut c_char,
    desc_len: libc::size_t,
    desc: *mut c_char,
}

// Three ints, then (on 64-bit) 4 bytes of padding and six pointer-sized
// fields, as in the C definition.
const _: () = assert!(
    std::mem::size_of::<DrmVersion>()
        == if cfg!(target_pointer_width = "64") {
            64
        } else {
            36
        }
);

impl DrmVersion {
    /// A request for the version numbers and, if `name` is given, the
    /// driver name into it.
    fn new(name: Option<&mut [u8]>) -> Self {
        let (name_len, name) = match name {
            Some(buf) => (buf.len(), buf.as_mut_ptr().cast::<c_char>()),
            None => (0, std::ptr::null_mut()),
        };
        DrmVersion {
            version_major: 0,
            version_minor: 0,
            version_patchlevel: 0,
            name_len,
            name,
            date_len: 0,
            date: std::ptr::null_mut(),
            desc_len: 0,
            desc: std::ptr::null_mut(),
        }
    }
}

/// `DRM_IOCTL_VERSION`.
const DRM_IOCTL_VERSION: u32 = iowr::<DrmVersion>(DRM_IOCTL_BASE, 0x00);

/// Longest driver name accepted from the kernel. DRM driver names are short
/// identifiers (`virtio_gpu`, `panthor`, ...); a larger value means a
/// confused kernel or a wrong device.
const MAX_DRIVER_NAME_LEN: usize = 64;

/// A DRM driver's name and version, as reported by `DRM_IOCTL_VERSION`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DriverVersion {
    /// Driver name, e.g. `virtio_gpu`.
    pub name: String,
    /// Major version of the driver.
    pub major: i32,
    /// Minor version of the driver.
    pub minor: i32,
    /// Patch level of the driver.
    pub patchlevel: i32,
}

/// Runs `DRM_IOCTL_VERSION` once.
fn version_ioctl(fd: BorrowedFd<'_>, arg: &mut DrmVersion) -> Result<()> {
    // SAFETY: `arg` is a `struct drm_version`, the argument of
    // DRM_IOCTL_VERSION. Its string pointers are either null with a zero
    // length or, from `DrmVersion::new`, point to a live buffer of exactly
    // the announced length, which outlives this call.
    unsafe { ioctl_mut(fd, DRM_IOCTL_VERSION, arg) }.map_err(|source| Error::Ioctl {
        ioctl: "DRM_IOCTL_VERSION",
        source,
    })
}

/// Reads the driver name and version of the DRM device open on `fd`.
pub(crate) fn driver_version(fd: BorrowedFd<'_>) -> Result<DriverVersion> {
    // First ask for the lengths only, then for the name itself.
    let mut probe = DrmVersion::new(None);
    version_ioctl(fd, &mut probe)?;
    let len = probe.name_len;
    if len > MAX_DRIVER_NAME_LEN {
        return Err(Error::BadAnswer {
            ioctl: "DRM_IOCTL_VERSION",
            detail: format!("driver name of {len} bytes"),
        });
    }

    let mut name = vec![0u8; len];
    let mut arg = DrmVersion::new(Some(&mut name));
    version_ioctl(fd, &mut arg)?;
    if arg.name_len != len {
        return Err(Error::BadAnswer {
            ioctl: "DRM_IOCTL_VERSION",
            detail: format!("driver name length changed from {len} to {}", arg.name_len),
        });
    }

    Ok(DriverVersion {
        name: String::from_utf8_lossy(&name).into_owned(),
        major: arg.version_major,
        minor: arg.version_minor,
        patchlevel: arg.version_patchlevel,
    })
}

/// `struct drm_gem_close`.
#[repr(C)]
#[derive(Debug, Default)]
struct DrmGemClose {
    handle: u32,
    pad: u32,
}

const _: () = assert!(std::mem::size_of::<DrmGemClose>() == 8);

/// `DRM_IOCTL_GEM_CLOSE`.
const DRM_IOCTL_GEM_CLOSE: u32 = iow::<DrmGemClose>(DRM_IOCTL_BASE, 0x09);

/// Drops the GEM handle `handle` of the DRM file `fd` (`DRM_IOCTL_GEM_CLOSE`).
pub(crate) fn gem_close(fd: BorrowedFd<'_>, handle: u32) -> Result<()> {
    let mut arg = DrmGemClose { handle, pad: 0 };
    // SAFETY: `arg` is a `struct drm_gem_close`, the argument of
    // DRM_IOCTL_GEM_CLOSE; it holds no pointers.
    unsafe { ioctl_mut(fd, DRM_IOCTL_GEM_CLOSE, &mut arg) }.map_err(|source| Error::Ioctl {
        ioctl: "DRM_IOCTL_GEM_CLOSE",
        source,
    })
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use super::*;

    #[test]
    fn version_request_number() {
        if cfg!(target_pointer_width = "64") {
            assert_eq!(DRM_IOCTL_VERSION, 0xc040_6400);
            assert_eq!(DRM_IOCTL_GEM_CLOSE, 0x4008_6409);
        }
    }

    #[test]
    fn version_of_a_non_drm_file_is_an_ioctl_error() {
        let file = std::fs::File::open("/dev/null").unwrap();
        let err = driver_version(file.as_fd()).unwrap_err();
        assert!(matches!(
            err,
            Error::Ioctl {
                ioctl: "DRM_IOCTL_VERSION",
                ..
            }
        ));
        assert_eq!(err.raw_os_error(), Some(libc::ENOTTY));
    }
}
