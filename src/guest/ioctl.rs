//! Linux ioctl request encoding and a checked `ioctl(2)` call.
//!
//! A request number packs a direction, a type (the driver's "magic"
//! character), a command number and the size of the argument structure. The
//! layout below is the generic one (`include/uapi/asm-generic/ioctl.h`), used
//! by x86, Arm, RISC-V and LoongArch. A few architectures (PowerPC, MIPS,
//! SPARC) use different widths and are rejected at compile time.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

#[cfg(any(
    target_arch = "powerpc",
    target_arch = "powerpc64",
    target_arch = "mips",
    target_arch = "mips64",
    target_arch = "sparc",
    target_arch = "sparc64"
))]
compile_error!("this architecture does not use the generic ioctl encoding");

const IOC_NRBITS: u32 = 8;
const IOC_TYPEBITS: u32 = 8;
const IOC_SIZEBITS: u32 = 14;

const IOC_NRSHIFT: u32 = 0;
const IOC_TYPESHIFT: u32 = IOC_NRSHIFT + IOC_NRBITS;
const IOC_SIZESHIFT: u32 = IOC_TYPESHIFT + IOC_TYPEBITS;
const IOC_DIRSHIFT: u32 = IOC_SIZESHIFT + IOC_SIZEBITS;

/// The kernel writes to user space (`_IOC_READ`).
const IOC_READ: u32 = 2;
/// The kernel reads from user space (`_IOC_WRITE`).
const IOC_WRITE: u32 = 1;

/// `_IOC(dir, ty, nr, size)`.
const fn ioc(dir: u32, ty: u8, nr: u8, size: usize) -> u32 {
    // Evaluated at compile time for every request constant: an argument
    // structure too large for the size field fails the build.
    assert!(size < (1 << IOC_SIZEBITS), "ioctl argument too large");
    (dir << IOC_DIRSHIFT)
        | ((size as u32) << IOC_SIZESHIFT)
        | ((ty as u32) << IOC_TYPESHIFT)
        | ((nr as u32) << IOC_NRSHIFT)
}

/// `_IOW(ty, nr, T)`: the argument is only read by the kernel.
pub(crate) const fn iow<T>(ty: u8, nr: u8) -> u32 {
    ioc(IOC_WRITE, ty, nr, std::mem::size_of::<T>())
}

/// `_IOWR(ty, nr, T)`: the argument is read and written by the kernel.
pub(crate) const fn iowr<T>(ty: u8, nr: u8) -> u32 {
    ioc(IOC_READ | IOC_WRITE, ty, nr, std::mem::size_of::<T>())
}

/// Issues `request` on `fd` with a pointer to `arg`.
///
/// Like libdrm's `drmIoctl`, the call is restarted when a signal or a
/// transient condition interrupts it (`EINTR`, `EAGAIN`).
///
/// # Safety
///
/// `request` must be an ioctl whose argument has type `T`, and every pointer
/// stored inside `arg` must be valid for the reads and writes the kernel
/// performs through it during the call (with the lengths `arg` announces).
pub(crate) unsafe fn ioctl_mut<T>(fd: BorrowedFd<'_>, request: u32, arg: &mut T) -> io::Result<()> {
    let arg: *mut T = arg;
    loop {
        // SAFETY: `fd` is an open descriptor for the lifetime of the borrow,
        // `arg` points to a live, exclusively borrowed `T`, and the caller
        // guarantees that `T` is what `request` expects and that the pointers
        // inside it are valid.
        // (The request type is `c_ulong` on glibc and `c_int` on musl; `as`
        // passes the same 32 bits either way.)
        let ret = unsafe { libc::ioctl(fd.as_raw_fd(), request as libc::Ioctl, arg) };
        if ret != -1 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) | Some(libc::EAGAIN) => continue,
            _ => return Err(err),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use super::*;

    #[test]
    fn iowr_matches_the_kernel_encoding() {
        // _IOWR('d', 0x00, 64-byte struct) is DRM_IOCTL_VERSION on 64-bit.
        assert_eq!(iowr::<[u8; 64]>(b'd', 0x00), 0xc040_6400);
        // Direction bits at the top, size in bits 16..30.
        assert_eq!(iowr::<[u8; 0x3fff]>(b'x', 0xff), 0xffff_78ff);
        assert_eq!(iowr::<()>(0, 0), 0xc000_0000);
    }

    #[test]
    fn ioctl_on_a_non_drm_file_reports_enotty() {
        let file = std::fs::File::open("/dev/null").unwrap();
        let mut arg = [0u8; 64];
        // SAFETY: the argument is a plain 64-byte buffer with no pointers, the
        // size this request announces.
        let err =
            unsafe { ioctl_mut(file.as_fd(), iowr::<[u8; 64]>(b'd', 0x00), &mut arg) }.unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOTTY));
    }
}
