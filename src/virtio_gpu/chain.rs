//! A request's descriptor chain as bytes: the device-readable buffers read
//! in order as one request, the device-writable ones written in order as
//! one response.
//!
//! One walk of the chain (virtio-queue's [`DescriptorChain`] iterator,
//! which follows indirect tables and stops at loops and at chains of more
//! than 4 GiB) sorts its descriptors into the two lists, each range checked
//! against guest memory then. Reads and writes go through vm-memory's
//! `Bytes` with the guest addresses, so a buffer may span memory regions.
//!
//! virtio-queue's own `Reader`/`Writer` walk the chain once each and
//! allocate on every read and write; this is the same contract without
//! either. The lists are the caller's, kept from one request to the next.

use std::ops::Deref;

use thiserror::Error;
use virtio_queue::DescriptorChain;
use vm_memory::{ByteValued, GuestAddress, GuestMemory, GuestMemoryMmap};

/// Why a chain's buffers cannot be used.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum ChainError {
    /// A descriptor names memory the guest does not have.
    #[error("descriptor {addr:#x}+{len} is outside guest memory")]
    OutsideMemory {
        /// Guest address.
        addr: u64,
        /// Length in bytes.
        len: u32,
    },
    /// A read or write went past the end of the buffers.
    #[error("{wanted} bytes wanted, {left} left in the descriptors")]
    Short {
        /// Bytes wanted.
        wanted: usize,
        /// Bytes left.
        left: usize,
    },
    /// Guest memory refused an access that was checked before.
    #[error("guest memory access failed")]
    Access,
}

/// One descriptor's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Seg {
    addr: u64,
    len: u32,
}

/// The two buffer lists of one chain. Keep one and [`ChainBuffers::walk`]
/// each chain with it: the lists keep their capacity.
#[derive(Debug, Default)]
pub struct ChainBuffers {
    readable: Vec<Seg>,
    writable: Vec<Seg>,
    readable_err: Option<ChainError>,
    writable_err: Option<ChainError>,
}

impl ChainBuffers {
    /// Walks `chain`, sorting its descriptors into readable and writable
    /// buffers and checking each against `mem`.
    pub fn walk<M>(&mut self, chain: DescriptorChain<M>, mem: &GuestMemoryMmap)
    where
        M: Deref,
        M::Target: GuestMemory,
    {
        self.readable.clear();
        self.writable.clear();
        self.readable_err = None;
        self.writable_err = None;
        for d in chain {
            let (list, err) = if d.is_write_only() {
                (&mut self.writable, &mut self.writable_err)
            } else {
                (&mut self.readable, &mut self.readable_err)
            };
            if err.is_some() {
                continue;
            }
            let addr = d.addr().0;
            let len = d.len();
            if len == 0 {
                continue;
            }
            if !crate::guest_bytes::in_memory(mem, GuestAddress(addr), len as usize) {
                *err = Some(ChainError::OutsideMemory { addr, len });
                continue;
            }
            list.push(Seg { addr, len });
        }
    }

    /// The request's bytes, or why they cannot be read.
    pub fn reader<'a>(&'a self, mem: &'a GuestMemoryMmap) -> Result<ChainReader<'a>, ChainError> {
        if let Some(e) = self.readable_err {
            return Err(e);
        }
        Ok(ChainReader(Cursor::new(&self.readable, mem)))
    }

    /// The response's bytes, or why they cannot be written.
    pub fn writer<'a>(&'a self, mem: &'a GuestMemoryMmap) -> Result<ChainWriter<'a>, ChainError> {
        if let Some(e) = self.writable_err {
            return Err(e);
        }
        Ok(ChainWriter(Cursor::new(&self.writable, mem)))
    }
}

/// A position in a buffer list.
#[derive(Clone, Copy)]
struct Cursor<'a> {
    mem: &'a GuestMemoryMmap,
    segs: &'a [Seg],
    /// Offset in `segs[0]`.
    off: usize,
    left: usize,
    done: usize,
}

impl<'a> Cursor<'a> {
    fn new(segs: &'a [Seg], mem: &'a GuestMemoryMmap) -> Self {
        // The chain iterator stops before 4 GiB in total, so this cannot
        // overflow; saturate anyway.
        let left = segs
            .iter()
            .fold(0usize, |n, s| n.saturating_add(s.len as usize));
        Self {
            mem,
            segs,
            off: 0,
            left,
            done: 0,
        }
    }

    /// Calls `f` with each guest range making up the next `n` bytes, in
    /// order, and moves past them.
    fn take(
        &mut self,
        n: usize,
        mut f: impl FnMut(GuestAddress, std::ops::Range<usize>) -> Result<(), ChainError>,
    ) -> Result<(), ChainError> {
        if n > self.left {
            return Err(ChainError::Short {
                wanted: n,
                left: self.left,
            });
        }
        let mut pos = 0;
        while pos < n {
            let Some((seg, rest)) = self.segs.split_first() else {
                return Err(ChainError::Access);
            };
            let avail = (seg.len as usize).saturating_sub(self.off);
            let k = avail.min(n - pos);
            if k > 0 {
                let addr = GuestAddress(seg.addr.wrapping_add(self.off as u64));
                f(addr, pos..pos + k)?;
            }
            pos += k;
            if k == avail {
                self.segs = rest;
                self.off = 0;
            } else {
                self.off += k;
            }
        }
        self.left -= n;
        self.done += n;
        Ok(())
    }
}

/// Reads a chain's readable buffers in order. Copying it is cheap; a copy
/// reads from the same position on, independently.
#[derive(Clone, Copy)]
pub struct ChainReader<'a>(Cursor<'a>);

impl ChainReader<'_> {
    /// Bytes not read yet.
    pub fn available_bytes(&self) -> usize {
        self.0.left
    }

    /// Fills `buf` with the next bytes.
    pub fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), ChainError> {
        let mem = self.0.mem;
        self.0.take(buf.len(), |addr, range| {
            let dst = buf.get_mut(range).ok_or(ChainError::Access)?;
            crate::guest_bytes::read(mem, addr, dst).map_err(|_| ChainError::Access)
        })
    }

    /// Reads the next `T`.
    pub fn read_obj<T: ByteValued + Default>(&mut self) -> Result<T, ChainError> {
        let mut v = T::default();
        self.read_exact(v.as_mut_slice())?;
        Ok(v)
    }
}

/// Writes a chain's writable buffers in order.
pub struct ChainWriter<'a>(Cursor<'a>);

impl ChainWriter<'_> {
    /// Room left.
    pub fn available_bytes(&self) -> usize {
        self.0.left
    }

    /// Bytes written so far.
    pub fn bytes_written(&self) -> usize {
        self.0.done
    }

    /// Writes all of `buf`, or nothing if it does not fit.
    pub fn write_all(&mut self, buf: &[u8]) -> Result<(), ChainError> {
        let mem = self.0.mem;
        self.0.take(buf.len(), |addr, range| {
            let src = buf.get(range).ok_or(ChainError::Access)?;
            crate::guest_bytes::write(mem, addr, src).map_err(|_| ChainError::Access)
        })
    }

    /// Writes `v`.
    pub fn write_obj<T: ByteValued>(&mut self, v: T) -> Result<(), ChainError> {
        self.write_all(v.as_slice())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::Bytes;

    const F_WRITE: u16 = 2;
    /// Buffers live from here on (the mock queue's tables sit below).
    const BUF: u64 = 0x10_0000;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x20_0000)]).unwrap()
    }

    /// Walks a chain of `(addr, len, write)` descriptors.
    fn walk(m: &GuestMemoryMmap, descs: &[(u64, u32, bool)]) -> ChainBuffers {
        let q = MockSplitQueue::new(m, 16);
        let raw: Vec<RawDescriptor> = descs
            .iter()
            .map(|&(addr, len, write)| {
                let flags = if write { F_WRITE } else { 0 };
                RawDescriptor::from(SplitDescriptor::new(addr, len, flags, 0))
            })
            .collect();
        let chain = q.build_desc_chain(&raw).unwrap();
        let mut b = ChainBuffers::default();
        b.walk(chain, m);
        b
    }

    #[test]
    fn reads_and_writes_across_descriptors() {
        let m = mem();
        m.write_slice(&[1, 2, 3], GuestAddress(BUF)).unwrap();
        m.write_slice(&[4, 5, 6, 7], GuestAddress(BUF + 0x1000))
            .unwrap();
        let b = walk(
            &m,
            &[
                (BUF, 3, false),
                (BUF + 0x1000, 4, false),
                (BUF + 0x2000, 2, true),
                (BUF + 0x3000, 8, true),
            ],
        );
        let mut r = b.reader(&m).unwrap();
        assert_eq!(r.available_bytes(), 7);
        // A copy reads independently.
        let mut peek = r;
        assert_eq!(peek.read_obj::<u16>().unwrap(), 0x0201);
        let mut all = [0u8; 7];
        r.read_exact(&mut all).unwrap();
        assert_eq!(all, [1, 2, 3, 4, 5, 6, 7]);
        assert_eq!(
            r.read_obj::<u8>(),
            Err(ChainError::Short { wanted: 1, left: 0 })
        );

        let mut w = b.writer(&m).unwrap();
        assert_eq!(w.available_bytes(), 10);
        w.write_obj(0x0403_0201u32).unwrap();
        // Too long for what is left: nothing is written.
        assert!(w.write_all(&[9; 7]).is_err());
        w.write_all(&[5, 6, 7]).unwrap();
        assert_eq!(w.bytes_written(), 7);
        let mut got = [0u8; 2];
        m.read_slice(&mut got, GuestAddress(BUF + 0x2000)).unwrap();
        assert_eq!(got, [1, 2]);
        let mut got = [0u8; 5];
        m.read_slice(&mut got, GuestAddress(BUF + 0x3000)).unwrap();
        assert_eq!(got, [3, 4, 5, 6, 7]);
    }

    #[test]
    fn a_descriptor_outside_memory_spoils_only_its_side() {
        let m = mem();
        let b = walk(&m, &[(BUF, 16, false), (0x1f_fff0, 0x20, true)]);
        assert!(b.reader(&m).is_ok());
        assert_eq!(
            b.writer(&m).err(),
            Some(ChainError::OutsideMemory {
                addr: 0x1f_fff0,
                len: 0x20
            })
        );
        let b = walk(&m, &[(u64::MAX - 4, 16, false), (BUF, 24, true)]);
        assert!(b.reader(&m).is_err());
        assert_eq!(b.writer(&m).unwrap().available_bytes(), 24);
    }

    #[test]
    fn empty_and_zero_length_descriptors() {
        let m = mem();
        let b = walk(&m, &[(BUF, 0, false), (BUF + 0x1000, 4, false)]);
        let mut r = b.reader(&m).unwrap();
        assert_eq!(r.read_obj::<u32>().unwrap(), 0);
        let w = b.writer(&m).unwrap();
        assert_eq!(w.available_bytes(), 0);
    }
}
