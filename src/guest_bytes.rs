//! Byte copies to and from guest memory by guest-physical address.
//!
//! vm-memory's `Bytes::read_slice` and `write_slice` handle a range that
//! spans memory regions by iterating over the regions' slices. That
//! machinery costs more than the copy itself for the small reads and
//! writes of a request (headers, command buffers, responses, ring words),
//! and nearly every such range lies in one region. [`read()`] and [`write()`]
//! take that range as one vm-memory slice (one region lookup, bounds
//! checked by vm-memory, dirty pages marked as usual) and fall back to
//! `read_slice` / `write_slice` for anything else, so the result is the
//! same either way: the whole range, or an error. [`in_memory`] checks a
//! range the same way.

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryError};

/// Reads `buf.len()` bytes at `addr`.
#[inline]
pub fn read<M>(mem: &M, addr: GuestAddress, buf: &mut [u8]) -> Result<(), GuestMemoryError>
where
    M: GuestMemoryBackend + ?Sized,
{
    if let Ok(slice) = mem.get_slice(addr, buf.len()) {
        if slice.len() == buf.len() {
            slice.copy_to(buf);
            return Ok(());
        }
    }
    mem.read_slice(buf, addr)
}

/// Writes `buf` at `addr`.
#[inline]
pub fn write<M>(mem: &M, addr: GuestAddress, buf: &[u8]) -> Result<(), GuestMemoryError>
where
    M: GuestMemoryBackend + ?Sized,
{
    if let Ok(slice) = mem.get_slice(addr, buf.len()) {
        if slice.len() == buf.len() {
            slice.copy_from(buf);
            return Ok(());
        }
    }
    mem.write_slice(buf, addr)
}

/// Whether guest memory backs all of `[addr, addr + len)`.
#[inline]
pub fn in_memory<M>(mem: &M, addr: GuestAddress, len: usize) -> bool
where
    M: GuestMemoryBackend + ?Sized,
{
    mem.get_slice(addr, len).is_ok_and(|s| s.len() == len) || mem.check_range(addr, len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    /// Two regions that touch at 0x2000, and a hole from 0x3000.
    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0x1000), 0x1000),
            (GuestAddress(0x2000), 0x1000),
        ])
        .unwrap()
    }

    #[test]
    fn inside_one_region() {
        let m = mem();
        write(&m, GuestAddress(0x1010), &[1, 2, 3]).unwrap();
        let mut b = [0u8; 3];
        read(&m, GuestAddress(0x1010), &mut b).unwrap();
        assert_eq!(b, [1, 2, 3]);
    }

    #[test]
    fn across_two_regions_as_vm_memory_does() {
        let m = mem();
        let data: Vec<u8> = (0..32).collect();
        write(&m, GuestAddress(0x2000 - 16), &data).unwrap();
        let mut b = [0u8; 32];
        m.read_slice(&mut b, GuestAddress(0x2000 - 16)).unwrap();
        assert_eq!(b.to_vec(), data);
        let mut c = [0u8; 32];
        read(&m, GuestAddress(0x2000 - 16), &mut c).unwrap();
        assert_eq!(c, b);
    }

    #[test]
    fn outside_memory_or_into_a_hole_is_an_error() {
        let m = mem();
        let mut b = [0u8; 8];
        assert!(read(&m, GuestAddress(0x5000), &mut b).is_err());
        assert!(write(&m, GuestAddress(0x5000), &b).is_err());
        // Starts in memory, runs into the hole.
        assert!(read(&m, GuestAddress(0x3000 - 4), &mut b).is_err());
        assert!(write(&m, GuestAddress(0x3000 - 4), &b).is_err());
        assert!(!in_memory(&m, GuestAddress(0x5000), 8));
        assert!(!in_memory(&m, GuestAddress(0x3000 - 4), 8));
        assert!(in_memory(&m, GuestAddress(0x2000 - 4), 8));
        assert!(in_memory(&m, GuestAddress(0x1000), 0x2000));
        // Empty ranges in memory are fine.
        assert!(read(&m, GuestAddress(0x1000), &mut []).is_ok());
        assert!(write(&m, GuestAddress(0x1000), &[]).is_ok());
    }
}
