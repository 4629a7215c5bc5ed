//! Buffer-object backings: the guest-physical memory behind a BO.
//!
//! A BO is an ordered list of guest-physical ranges whose lengths add up to
//! the BO size. Byte `o` of the BO lives in the range whose prefix sum
//! brackets `o`, so "BO offset → guest-physical address" is a binary search
//! over the prefix sums: O(log n) in the number of ranges.
//!
//! Creation validates everything a hostile guest could get wrong: every
//! range is non-empty, starts and ends on a 4 KiB boundary, does not wrap,
//! fits in a page-table entry, and lies inside guest memory; the number of
//! ranges and the total size are capped by [`BoLimits`]. Ranges that are
//! physically adjacent are merged, so that a BO handed over as a list of
//! pages still maps with 2 MiB blocks where its memory is contiguous.
//!
//! Guest memory can be re-mapped later (a new vhost-user memory table), so
//! the check at creation is not the last line of defence: every access made
//! through a mapping goes through vm-memory again and turns into a bus fault
//! if the address is no longer backed.

use vm_memory::{GuestAddress, GuestMemoryBackend};

use super::error::BoError;
use super::page_aligned;
use super::vm::VmKey;

/// Default cap on the number of ranges a BO may be built from (the cap QEMU
/// puts on a virtio-gpu backing's entries).
pub const MAX_BO_RANGES: usize = 16384;
/// Default cap on the size of one BO (64 GiB).
pub const MAX_BO_SIZE: u64 = 64 << 30;
/// Largest guest-physical address (exclusive) a page-table entry can hold.
const MAX_GPA: u64 = 1 << 52;

/// One guest-physical range of a BO backing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestRange {
    /// First guest-physical address of the range.
    pub addr: GuestAddress,
    /// Length of the range in bytes.
    pub len: u64,
}

impl GuestRange {
    /// A range of `len` bytes at `addr`.
    pub const fn new(addr: u64, len: u64) -> Self {
        Self {
            addr: GuestAddress(addr),
            len,
        }
    }
}

/// Limits applied when a BO backing is created.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BoLimits {
    /// Maximum number of ranges in the caller's list (before merging).
    pub max_ranges: usize,
    /// Maximum total size in bytes.
    pub max_size: u64,
}

impl Default for BoLimits {
    fn default() -> Self {
        Self {
            max_ranges: MAX_BO_RANGES,
            max_size: MAX_BO_SIZE,
        }
    }
}

/// The guest-physical backing of a buffer object.
#[derive(Debug)]
pub struct Bo {
    /// The ranges, merged where physically adjacent, in BO order.
    ranges: Box<[GuestRange]>,
    /// `starts[i]` is the BO offset at which `ranges[i]` begins.
    starts: Box<[u64]>,
    /// Total size in bytes (a multiple of 4 KiB).
    size: u64,
    /// The only VM this BO may be mapped into, if any.
    exclusive_vm: Option<VmKey>,
    /// The guest took the memory back: the BO may not be mapped again.
    revoked: std::sync::atomic::AtomicBool,
}

impl Bo {
    /// Build and validate a BO backing from `ranges`, in BO order.
    ///
    /// `mem` is the guest memory the ranges must lie in; `exclusive_vm`
    /// restricts the BO to one VM (Panthor's `exclusive_vm_id`, resolved to
    /// that VM's [`VmKey`]).
    pub fn new<M, I>(
        ranges: I,
        mem: &M,
        exclusive_vm: Option<VmKey>,
        limits: &BoLimits,
    ) -> Result<Self, BoError>
    where
        M: GuestMemoryBackend + ?Sized,
        I: IntoIterator<Item = GuestRange>,
    {
        let mut merged: Vec<GuestRange> = Vec::new();
        let mut starts: Vec<u64> = Vec::new();
        let mut size: u64 = 0;
        for (index, r) in ranges.into_iter().enumerate() {
            if index >= limits.max_ranges {
                return Err(BoError::TooManyRanges {
                    max: limits.max_ranges,
                });
            }
            if r.len == 0 {
                return Err(BoError::EmptyRange { index });
            }
            if !page_aligned(r.addr.0) || !page_aligned(r.len) {
                return Err(BoError::MisalignedRange { index });
            }
            let end = r
                .addr
                .0
                .checked_add(r.len)
                .filter(|&end| end <= MAX_GPA)
                .ok_or(BoError::RangeOverflow { index })?;
            let host_len = usize::try_from(r.len).map_err(|_| BoError::RangeOverflow { index })?;
            if !mem.check_range(r.addr, host_len) {
                return Err(BoError::OutsideGuestMemory { index });
            }
            size = size
                .checked_add(r.len)
                .filter(|&s| s <= limits.max_size)
                .ok_or(BoError::TooLarge {
                    max: limits.max_size,
                })?;
            match merged.last_mut() {
                Some(last) if last.addr.0.checked_add(last.len) == Some(r.addr.0) => {
                    // `end` fits, so the merged length does too.
                    last.len = end - last.addr.0;
                }
                _ => {
                    starts.push(size - r.len);
                    merged.push(r);
                }
            }
        }
        if merged.is_empty() {
            return Err(BoError::Empty);
        }
        Ok(Self {
            ranges: merged.into_boxed_slice(),
            starts: starts.into_boxed_slice(),
            size,
            exclusive_vm,
            revoked: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Marks the BO revoked: validated MAPs of it not applied yet fail when
    /// they run, and no new MAP of it is accepted.
    pub fn revoke(&self) {
        self.revoked
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// Whether [`Bo::revoke`] was called.
    pub fn is_revoked(&self) -> bool {
        self.revoked.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Size of the BO in bytes (a multiple of 4 KiB).
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The VM this BO is exclusive to, if any.
    pub fn exclusive_vm(&self) -> Option<VmKey> {
        self.exclusive_vm
    }

    /// The backing ranges after merging of adjacent ones, in BO order.
    pub fn ranges(&self) -> &[GuestRange] {
        &self.ranges
    }

    /// Index of the range holding BO byte `offset`, or `None` past the end.
    fn range_index(&self, offset: u64) -> Option<usize> {
        if offset >= self.size {
            return None;
        }
        // starts[0] == 0 <= offset, so the partition point is at least 1.
        self.starts.partition_point(|&s| s <= offset).checked_sub(1)
    }

    /// The guest-physical address of BO byte `offset` and how many bytes
    /// are physically contiguous from there (to the end of its range).
    /// `None` if `offset` is not inside the BO. O(log n).
    pub fn resolve(&self, offset: u64) -> Option<(GuestAddress, u64)> {
        let i = self.range_index(offset)?;
        let r = self.ranges.get(i)?;
        let within = offset - self.starts.get(i)?;
        Some((GuestAddress(r.addr.0 + within), r.len - within))
    }

    /// The physically contiguous pieces of BO bytes `[offset, offset+len)`,
    /// in order. The iteration stops at the end of the BO, so a range that
    /// runs past it yields fewer than `len` bytes; callers validate first.
    pub fn segments(&self, offset: u64, len: u64) -> Segments<'_> {
        let index = self.range_index(offset).unwrap_or(self.ranges.len());
        Segments {
            bo: self,
            index,
            offset,
            remaining: len,
        }
    }
}

/// Iterator over the physically contiguous pieces of a BO range, as
/// `(guest-physical address, length)` pairs. See [`Bo::segments`].
#[derive(Debug, Clone)]
pub struct Segments<'a> {
    bo: &'a Bo,
    index: usize,
    offset: u64,
    remaining: u64,
}

impl Iterator for Segments<'_> {
    type Item = (GuestAddress, u64);

    fn next(&mut self) -> Option<Self::Item> {
        if self.remaining == 0 {
            return None;
        }
        let r = self.bo.ranges.get(self.index)?;
        let start = *self.bo.starts.get(self.index)?;
        let within = self.offset.checked_sub(start)?;
        let avail = r.len.checked_sub(within)?;
        let take = avail.min(self.remaining);
        self.index += 1;
        self.offset += take;
        self.remaining -= take;
        Some((GuestAddress(r.addr.0 + within), take))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap()
    }

    fn bo(ranges: &[(u64, u64)]) -> Result<Bo, BoError> {
        Bo::new(
            ranges.iter().map(|&(a, l)| GuestRange::new(a, l)),
            &mem(),
            None,
            &BoLimits::default(),
        )
    }

    #[test]
    fn rejects_malformed_ranges() {
        assert_eq!(bo(&[]).unwrap_err(), BoError::Empty);
        assert_eq!(
            bo(&[(0, 4096), (8192, 0)]).unwrap_err(),
            BoError::EmptyRange { index: 1 }
        );
        assert_eq!(
            bo(&[(0x800, 4096)]).unwrap_err(),
            BoError::MisalignedRange { index: 0 }
        );
        assert_eq!(
            bo(&[(0, 4097)]).unwrap_err(),
            BoError::MisalignedRange { index: 0 }
        );
        assert_eq!(
            bo(&[(!0xfffu64, 4096)]).unwrap_err(),
            BoError::RangeOverflow { index: 0 }
        );
        assert_eq!(
            bo(&[(0, 4096), (16 << 20, 4096)]).unwrap_err(),
            BoError::OutsideGuestMemory { index: 1 }
        );
        assert_eq!(
            bo(&[((16 << 20) - 4096, 8192)]).unwrap_err(),
            BoError::OutsideGuestMemory { index: 0 }
        );
        assert_eq!(BoError::Empty.errno(), libc::EINVAL);
    }

    #[test]
    fn enforces_limits() {
        let limits = BoLimits {
            max_ranges: 2,
            max_size: 8192,
        };
        let m = mem();
        let r = |v: &[(u64, u64)]| {
            Bo::new(
                v.iter()
                    .map(|&(a, l)| GuestRange::new(a, l))
                    .collect::<Vec<_>>(),
                &m,
                None,
                &limits,
            )
        };
        assert_eq!(
            r(&[(0, 4096), (8192, 4096), (16384, 4096)]).unwrap_err(),
            BoError::TooManyRanges { max: 2 }
        );
        assert_eq!(
            r(&[(0, 4096), (8192, 8192)]).unwrap_err(),
            BoError::TooLarge { max: 8192 }
        );
        assert_eq!(
            r(&[(0, 4096), (8192, 8192)]).unwrap_err().errno(),
            libc::ENOMEM
        );
        assert!(r(&[(0, 4096), (8192, 4096)]).is_ok());
    }

    #[test]
    fn merges_adjacent_ranges_and_resolves() {
        let b = bo(&[
            (0x10000, 0x1000),
            (0x11000, 0x2000),
            (0x40000, 0x1000),
            (0x20000, 0x3000),
        ])
        .unwrap();
        assert_eq!(b.size(), 0x7000);
        assert_eq!(
            b.ranges(),
            &[
                GuestRange::new(0x10000, 0x3000),
                GuestRange::new(0x40000, 0x1000),
                GuestRange::new(0x20000, 0x3000)
            ]
        );
        assert_eq!(b.resolve(0), Some((GuestAddress(0x10000), 0x3000)));
        assert_eq!(b.resolve(0x2fff), Some((GuestAddress(0x12fff), 1)));
        assert_eq!(b.resolve(0x3000), Some((GuestAddress(0x40000), 0x1000)));
        assert_eq!(b.resolve(0x4800), Some((GuestAddress(0x20800), 0x2800)));
        assert_eq!(b.resolve(0x7000), None);
        assert_eq!(b.resolve(u64::MAX), None);
    }

    #[test]
    fn segments_clip_to_request_and_bo() {
        let b = bo(&[(0x10000, 0x2000), (0x40000, 0x2000), (0x80000, 0x2000)]).unwrap();
        let s: Vec<_> = b.segments(0x1000, 0x4000).collect();
        assert_eq!(
            s,
            vec![
                (GuestAddress(0x11000), 0x1000),
                (GuestAddress(0x40000), 0x2000),
                (GuestAddress(0x80000), 0x1000)
            ]
        );
        let total: u64 = b.segments(0x5000, 0x10000).map(|(_, l)| l).sum();
        assert_eq!(total, 0x1000);
        assert_eq!(b.segments(0x6000, 0x1000).count(), 0);
        assert_eq!(b.segments(0, 0).count(), 0);
    }

    #[test]
    fn exclusive_vm_is_recorded() {
        let key = VmKey::new_unique();
        let b = Bo::new(
            [GuestRange::new(0, 4096)],
            &mem(),
            Some(key),
            &BoLimits::default(),
        )
        .unwrap();
        assert_eq!(b.exclusive_vm(), Some(key));
    }
}
