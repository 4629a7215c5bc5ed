//! The response memory of a native context: guest memory named by INIT,
//! written (never read) by the device through vm-memory with every access
//! bounds-checked.

use std::sync::atomic::{AtomicU32, Ordering};

use vm_memory::bitmap::Bitmap;
use vm_memory::{GuestAddress, GuestMemoryBackend, VolatileMemory};

use crate::gpu::mmu::GuestRange;

/// Offsets of the header fields (§4.2 of `docs/protocol.md`).
const OFF_SEQNO: u64 = 0;
const OFF_ERROR_COUNT: u64 = 4;
const OFF_LAST_ERROR_SEQNO: u64 = 8;
const OFF_LAST_ERROR: u64 = 12;
const OFF_ASYNC_ERROR_COUNT: u64 = 16;
const OFF_LAST_ASYNC_ERROR_SEQNO: u64 = 20;
const OFF_LAST_ASYNC_ERROR: u64 = 24;

/// One registered response memory.
#[derive(Debug)]
pub struct RspMem {
    ranges: Vec<GuestRange>,
    size: u64,
    error_count: AtomicU32,
    async_error_count: AtomicU32,
}

impl RspMem {
    /// Response memory over the first `size` bytes of `ranges`; the caller
    /// checked that the ranges cover `size`.
    pub fn new(ranges: Vec<GuestRange>, size: u64) -> Self {
        Self {
            ranges,
            size,
            error_count: AtomicU32::new(0),
            async_error_count: AtomicU32::new(0),
        }
    }

    /// Bytes usable.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Writes `data` at `off`. Out-of-range writes are dropped (the caller
    /// checked the slot; guest memory may still have changed under it).
    pub fn write<M: GuestMemoryBackend + ?Sized>(&self, mem: &M, off: u64, data: &[u8]) {
        let Some(end) = off.checked_add(data.len() as u64) else {
            return;
        };
        if end > self.size {
            return;
        }
        let mut pos = 0u64; // offset of the current range
        let mut done = 0usize;
        for r in &self.ranges {
            if done == data.len() {
                break;
            }
            let want = off + done as u64;
            let r_end = pos.saturating_add(r.len);
            if want < r_end && want >= pos {
                let in_range = want - pos;
                let n = ((r.len - in_range) as usize).min(data.len() - done);
                let addr = GuestAddress(r.addr.0.saturating_add(in_range));
                if crate::guest_bytes::write(mem, addr, &data[done..done + n]).is_err() {
                    return;
                }
                done += n;
            }
            pos = r_end;
        }
    }

    /// Writes `len` zero bytes at `off`, a page at a time.
    pub fn zero<M: GuestMemoryBackend + ?Sized>(&self, mem: &M, off: u64, len: u64) {
        const ZEROS: [u8; 4096] = [0; 4096];
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(ZEROS.len() as u64);
            let Some(at) = off.checked_add(done) else {
                return;
            };
            self.write(mem, at, &ZEROS[..n as usize]);
            done += n;
        }
    }

    fn write_u32<M: GuestMemoryBackend + ?Sized>(&self, mem: &M, off: u64, v: u32) {
        self.write(mem, off, &v.to_le_bytes());
    }

    /// The guest address of the 4 bytes at `off`, if they lie inside one
    /// range.
    fn word_addr(&self, off: u64) -> Option<GuestAddress> {
        if off.checked_add(4)? > self.size {
            return None;
        }
        let mut pos = 0u64;
        for r in &self.ranges {
            let end = pos.saturating_add(r.len);
            if off < end {
                return (off + 4 <= end).then(|| GuestAddress(r.addr.0.saturating_add(off - pos)));
            }
            pos = end;
        }
        None
    }

    /// Stores `v` at `off` with release ordering (every earlier write is
    /// visible to a reader that sees it): one atomic store when the word
    /// is aligned and inside one range and one memory region, as the
    /// header's words are in practice; otherwise a fence and a plain
    /// write of its bytes.
    fn store_u32<M: GuestMemoryBackend + ?Sized>(&self, mem: &M, off: u64, v: u32) {
        if let Some(slice) = self.word_addr(off).and_then(|a| mem.get_slice(a, 4).ok()) {
            if let Ok(word) = slice.get_atomic_ref::<AtomicU32>(0) {
                word.store(v.to_le(), Ordering::Release);
                slice.bitmap().mark_dirty(0, 4);
                return;
            }
        }
        std::sync::atomic::fence(Ordering::Release);
        self.write_u32(mem, off, v);
    }

    /// Zeroes the 64-byte header and sets its seqno.
    pub fn init_header<M: GuestMemoryBackend + ?Sized>(&self, mem: &M, seqno: u32) {
        self.write(mem, 0, &[0u8; 64]);
        self.write_u32(mem, OFF_SEQNO, seqno);
    }

    /// Records a processed command: its error (if any), then the seqno.
    pub fn command_done<M: GuestMemoryBackend + ?Sized>(&self, mem: &M, seqno: u32, ret: i32) {
        if ret != 0 {
            self.command_failed(mem, seqno, ret);
        }
        self.store_u32(mem, OFF_SEQNO, seqno);
    }

    /// Records that command `seqno` failed with `ret` (the error fields
    /// only, not `seqno`).
    pub fn command_failed<M: GuestMemoryBackend + ?Sized>(&self, mem: &M, seqno: u32, ret: i32) {
        let n = self
            .error_count
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_add(1);
        self.write_u32(mem, OFF_ERROR_COUNT, n);
        self.write_u32(mem, OFF_LAST_ERROR_SEQNO, seqno);
        self.write_u32(mem, OFF_LAST_ERROR, ret as u32);
    }

    /// Records asynchronous work of command `seqno` that failed with `ret`.
    pub fn async_error<M: GuestMemoryBackend + ?Sized>(&self, mem: &M, seqno: u32, ret: i32) {
        let n = self
            .async_error_count
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_add(1);
        self.write_u32(mem, OFF_LAST_ASYNC_ERROR_SEQNO, seqno);
        self.write_u32(mem, OFF_LAST_ASYNC_ERROR, ret as u32);
        self.write_u32(mem, OFF_ASYNC_ERROR_COUNT, n);
    }

    /// Writes a completion record `{DONE, result}` at `off`: the result
    /// first, then the state.
    pub fn complete_record<M: GuestMemoryBackend + ?Sized>(&self, mem: &M, off: u64, result: i32) {
        self.write_u32(mem, off + 4, result as u32);
        self.store_u32(mem, off, crate::uapi::native::COMPLETION_DONE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestMemoryMmap};

    #[test]
    fn writes_span_ranges_and_stay_inside() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        // Two discontiguous 8-byte pieces form a 16-byte memory.
        let r = RspMem::new(
            vec![GuestRange::new(0x1000, 8), GuestRange::new(0x3000, 8)],
            16,
        );
        r.write(&mem, 4, &[1, 2, 3, 4, 5, 6, 7, 8]);
        let mut a = [0u8; 8];
        mem.read_slice(&mut a, GuestAddress(0x1000)).unwrap();
        assert_eq!(a, [0, 0, 0, 0, 1, 2, 3, 4]);
        mem.read_slice(&mut a, GuestAddress(0x3000)).unwrap();
        assert_eq!(a, [5, 6, 7, 8, 0, 0, 0, 0]);
        // Past the end, or overflowing: nothing is written.
        r.write(&mem, 12, &[9; 8]);
        r.write(&mem, u64::MAX, &[9; 8]);
        mem.read_slice(&mut a, GuestAddress(0x3000)).unwrap();
        assert_eq!(a, [5, 6, 7, 8, 0, 0, 0, 0]);
    }

    #[test]
    fn word_stores_land_whole_wherever_the_word_lies() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        // 6 bytes, then 10 at an odd address: the second range's words
        // are misaligned, and bytes 4..8 straddle the two ranges.
        let r = RspMem::new(
            vec![GuestRange::new(0x1000, 6), GuestRange::new(0x3001, 10)],
            16,
        );
        assert_eq!(r.word_addr(0), Some(GuestAddress(0x1000)));
        assert_eq!(r.word_addr(4), None);
        assert_eq!(r.word_addr(8), Some(GuestAddress(0x3003)));
        assert_eq!(r.word_addr(13), None);
        r.store_u32(&mem, 0, 0x0403_0201); // atomic
        r.store_u32(&mem, 4, 0x0807_0605); // across the ranges
        r.store_u32(&mem, 8, 0x0c0b_0a09); // misaligned
        r.store_u32(&mem, 12, 0x100f_0e0d); // the last word
        r.store_u32(&mem, 13, 0xffff_ffff); // past the end: dropped
        let mut a = [0u8; 6];
        mem.read_slice(&mut a, GuestAddress(0x1000)).unwrap();
        assert_eq!(a, [1, 2, 3, 4, 5, 6]);
        let mut b = [0u8; 11];
        mem.read_slice(&mut b, GuestAddress(0x3001)).unwrap();
        assert_eq!(b, [7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 0]);
    }
}
