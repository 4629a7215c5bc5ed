//! Reads and writes at a byte offset of a resource's guest backing, a list
//! of guest-physical ranges, through vm-memory.

use thiserror::Error;
use vm_memory::{Bytes, GuestMemoryMmap};

use super::resources::Backing;

/// Errors of backing access.
#[derive(Debug, Error)]
pub enum BackingIoError {
    /// The range runs past the end of the backing.
    #[error("range {offset:#x}+{len:#x} is outside the {total:#x}-byte backing")]
    OutOfRange {
        /// Start offset.
        offset: u64,
        /// Length.
        len: usize,
        /// Backing size.
        total: u64,
    },
    /// Guest memory refused the access (it changed under the backing).
    #[error("guest memory: {0}")]
    Memory(#[from] vm_memory::GuestMemoryError),
}

/// Calls `f(guest_address, range_in_buf)` for each piece of
/// `[offset, offset + len)` in backing order.
fn for_each_piece(
    backing: &Backing,
    offset: u64,
    len: usize,
    mut f: impl FnMut(vm_memory::GuestAddress, std::ops::Range<usize>) -> Result<(), BackingIoError>,
) -> Result<(), BackingIoError> {
    let out_of_range = || BackingIoError::OutOfRange {
        offset,
        len,
        total: backing.total(),
    };
    let end = offset
        .checked_add(len as u64)
        .filter(|e| *e <= backing.total())
        .ok_or_else(out_of_range)?;
    let mut pos = 0u64; // backing offset where the current entry starts
    let mut done = 0usize;
    for &(addr, elen) in backing.entries() {
        let elen = u64::from(elen);
        let entry_end = pos + elen;
        if entry_end > offset && pos < end {
            let from = offset.max(pos);
            let to = end.min(entry_end);
            let n = (to - from) as usize;
            let gpa = addr.0 + (from - pos);
            f(vm_memory::GuestAddress(gpa), done..done + n)?;
            done += n;
        }
        if entry_end >= end {
            break;
        }
        pos = entry_end;
    }
    Ok(())
}

/// Reads `buf.len()` bytes at `offset` of the backing.
pub fn read(
    mem: &GuestMemoryMmap,
    backing: &Backing,
    offset: u64,
    buf: &mut [u8],
) -> Result<(), BackingIoError> {
    for_each_piece(backing, offset, buf.len(), |gpa, r| {
        mem.read_slice(&mut buf[r], gpa)?;
        Ok(())
    })
}

/// Writes `buf` at `offset` of the backing.
pub fn write(
    mem: &GuestMemoryMmap,
    backing: &Backing,
    offset: u64,
    buf: &[u8],
) -> Result<(), BackingIoError> {
    for_each_piece(backing, offset, buf.len(), |gpa, r| {
        mem.write_slice(&buf[r], gpa)?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio_gpu::protocol::MemEntry;
    use crate::virtio_gpu::resources::Limits;
    use vm_memory::GuestAddress;

    #[test]
    fn scattered_read_write() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let e = |addr, length| MemEntry {
            addr,
            length,
            padding: 0,
        };
        let b = Backing::new(
            &[e(0x8000, 16), e(0x1000, 16), e(0x4000, 32)],
            &mem,
            &Limits::default(),
        )
        .unwrap();
        let data: Vec<u8> = (0..40).collect();
        write(&mem, &b, 8, &data).unwrap();
        let mut back = vec![0u8; 40];
        read(&mem, &b, 8, &mut back).unwrap();
        assert_eq!(back, data);
        let mut first = [0u8; 8];
        mem.read_slice(&mut first, GuestAddress(0x1000)).unwrap();
        assert_eq!(first, [8, 9, 10, 11, 12, 13, 14, 15]);
        assert!(read(&mem, &b, 60, &mut [0u8; 8]).is_err());
        assert!(read(&mem, &b, u64::MAX, &mut [0u8; 8]).is_err());
        read(&mem, &b, 64, &mut []).unwrap();
    }
}
