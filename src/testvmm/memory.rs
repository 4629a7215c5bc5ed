//! Guest RAM for the test VMM: memfd-backed regions and a bump allocator.
//!
//! A real VMM gives a vhost-user back end its guest RAM as file descriptors
//! that both processes map. The test VMM does the same: every region in a
//! [`MemoryLayout`] is its own anonymous `memfd`, mapped shared into this
//! process through vm-memory and handed to the back end in SET_MEM_TABLE.
//!
//! Buffers are carved out of guest RAM by a [`BumpAllocator`]: one cursor per
//! region, no free, and a reset that returns every cursor to its floor.

use std::fs::File;
use std::os::fd::{FromRawFd, OwnedFd};

use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap};

use super::Error;

/// Page size assumed for region sizes and ring placement.
pub const PAGE_SIZE: u64 = 4096;

/// One region of guest RAM: where it sits in guest-physical space and how big
/// it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegionSpec {
    /// Guest-physical address of the first byte.
    pub gpa: u64,
    /// Size in bytes; a multiple of [`PAGE_SIZE`].
    pub size: u64,
}

impl RegionSpec {
    /// One past the last guest-physical address of the region.
    pub fn end(&self) -> u64 {
        self.gpa.saturating_add(self.size)
    }

    /// Whether `addr` lies inside the region.
    pub fn contains(&self, addr: u64) -> bool {
        addr >= self.gpa && addr < self.end()
    }
}

/// The shape of guest RAM: one or more regions, in ascending address order,
/// optionally with holes between them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryLayout {
    regions: Vec<RegionSpec>,
}

impl Default for MemoryLayout {
    /// A single 64 MiB region at guest-physical address 0.
    fn default() -> Self {
        Self::single(64 << 20)
    }
}

impl MemoryLayout {
    /// A single region of `size` bytes at guest-physical address 0.
    pub fn single(size: u64) -> Self {
        MemoryLayout {
            regions: vec![RegionSpec { gpa: 0, size }],
        }
    }

    /// Consecutive regions of the given sizes starting at address 0, each
    /// separated from the previous one by `hole` bytes of unmapped
    /// guest-physical space. A `hole` of 0 makes the regions adjacent, so a
    /// single buffer can straddle the boundary; a non-zero hole makes any
    /// buffer that crosses it invalid.
    pub fn split(sizes: &[u64], hole: u64) -> Self {
        let mut regions = Vec::with_capacity(sizes.len());
        let mut gpa = 0u64;
        for &size in sizes {
            regions.push(RegionSpec { gpa, size });
            gpa = gpa.saturating_add(size).saturating_add(hole);
        }
        MemoryLayout { regions }
    }

    /// An explicit list of regions (validated when the VMM is built).
    pub fn custom(regions: Vec<RegionSpec>) -> Self {
        MemoryLayout { regions }
    }

    /// The regions, in ascending address order.
    pub fn regions(&self) -> &[RegionSpec] {
        &self.regions
    }

    /// Total bytes of RAM over all regions.
    pub fn total_size(&self) -> u64 {
        self.regions.iter().map(|r| r.size).sum()
    }

    /// Checks that the layout can be mapped: at least one region, sizes that
    /// are non-zero page multiples, ascending, non-overlapping, no overflow.
    pub fn validate(&self) -> Result<(), Error> {
        if self.regions.is_empty() {
            return Err(Error::InvalidConfig("memory layout has no regions".into()));
        }
        let mut prev_end = 0u64;
        for (i, r) in self.regions.iter().enumerate() {
            if r.size == 0 || r.size % PAGE_SIZE != 0 || r.gpa % PAGE_SIZE != 0 {
                return Err(Error::InvalidConfig(format!(
                    "region {i} ({:#x}+{:#x}) is empty or not page aligned",
                    r.gpa, r.size
                )));
            }
            if r.gpa.checked_add(r.size).is_none() {
                return Err(Error::InvalidConfig(format!("region {i} overflows")));
            }
            if i > 0 && r.gpa < prev_end {
                return Err(Error::InvalidConfig(format!(
                    "region {i} overlaps or precedes region {}",
                    i - 1
                )));
            }
            prev_end = r.end();
        }
        Ok(())
    }
}

/// Creates an anonymous, close-on-exec memfd of `size` bytes.
fn memfd(size: u64) -> Result<File, Error> {
    let name = c"vhost-user-mali-testvmm";
    // SAFETY: `name` is a valid NUL-terminated string that outlives the call,
    // and the flags are a valid combination for memfd_create(2).
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(Error::Memfd(std::io::Error::last_os_error()));
    }
    // SAFETY: memfd_create returned a fresh descriptor that nothing else owns,
    // so OwnedFd may take sole ownership of it.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let file = File::from(owned);
    file.set_len(size).map_err(Error::Memfd)?;
    Ok(file)
}

/// Maps every region of `layout` from its own memfd, shared, into this
/// process.
pub(crate) fn create_guest_memory(layout: &MemoryLayout) -> Result<GuestMemoryMmap, Error> {
    layout.validate()?;
    let mut ranges = Vec::with_capacity(layout.regions().len());
    for r in layout.regions() {
        let size = usize::try_from(r.size)
            .map_err(|_| Error::InvalidConfig(format!("region size {:#x} too big", r.size)))?;
        let file = memfd(r.size)?;
        ranges.push((GuestAddress(r.gpa), size, Some(FileOffset::new(file, 0))));
    }
    GuestMemoryMmap::from_ranges_with_files(ranges).map_err(|e| Error::MemoryMap(e.to_string()))
}

/// A bump allocator over guest RAM with one cursor per region.
///
/// [`alloc`](Self::alloc) takes the first region with enough room, in address
/// order; [`alloc_in_region`](Self::alloc_in_region) picks the region.
/// Nothing is freed individually: [`reset`](Self::reset) returns every cursor
/// to its floor (the point set by the last [`set_floor`](Self::set_floor)).
#[derive(Clone, Debug)]
pub struct BumpAllocator {
    regions: Vec<RegionSpec>,
    cursors: Vec<u64>,
    floors: Vec<u64>,
}

impl BumpAllocator {
    /// An allocator over the given regions, all cursors at the region starts.
    pub fn new(regions: &[RegionSpec]) -> Self {
        let starts: Vec<u64> = regions.iter().map(|r| r.gpa).collect();
        BumpAllocator {
            regions: regions.to_vec(),
            cursors: starts.clone(),
            floors: starts,
        }
    }

    /// Allocates `len` bytes aligned to `align` (a power of two) from the
    /// first region with room.
    pub fn alloc(&mut self, len: u64, align: u64) -> Result<GuestAddress, Error> {
        for i in 0..self.regions.len() {
            if let Ok(a) = self.alloc_in_region(i, len, align) {
                return Ok(a);
            }
        }
        Err(Error::OutOfGuestMemory { len, align })
    }

    /// Allocates `len` bytes aligned to `align` from region `region`.
    pub fn alloc_in_region(
        &mut self,
        region: usize,
        len: u64,
        align: u64,
    ) -> Result<GuestAddress, Error> {
        if len == 0 || align == 0 || !align.is_power_of_two() {
            return Err(Error::InvalidConfig(format!(
                "bad allocation: len {len} align {align}"
            )));
        }
        let r = self
            .regions
            .get(region)
            .ok_or_else(|| Error::InvalidConfig(format!("no memory region {region}")))?;
        let cursor = self.cursors[region];
        let start = cursor
            .checked_add(align - 1)
            .map(|v| v & !(align - 1))
            .ok_or(Error::OutOfGuestMemory { len, align })?;
        let end = start
            .checked_add(len)
            .ok_or(Error::OutOfGuestMemory { len, align })?;
        if end > r.end() {
            return Err(Error::OutOfGuestMemory { len, align });
        }
        self.cursors[region] = end;
        Ok(GuestAddress(start))
    }

    /// Makes the current cursors the floors that [`reset`](Self::reset)
    /// returns to.
    pub fn set_floor(&mut self) {
        self.floors.clone_from(&self.cursors);
    }

    /// Returns every cursor to its floor.
    pub fn reset(&mut self) {
        self.cursors.clone_from(&self.floors);
    }

    /// Bytes still free in region `region`, or 0 if there is no such region.
    pub fn remaining_in_region(&self, region: usize) -> u64 {
        match (self.regions.get(region), self.cursors.get(region)) {
            (Some(r), Some(&c)) => r.end().saturating_sub(c),
            _ => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestMemoryBackend};

    #[test]
    fn split_layout_has_holes() {
        let l = MemoryLayout::split(&[0x10000, 0x20000], 0x1000);
        assert_eq!(
            l.regions(),
            &[
                RegionSpec {
                    gpa: 0,
                    size: 0x10000
                },
                RegionSpec {
                    gpa: 0x11000,
                    size: 0x20000
                }
            ]
        );
        l.validate().unwrap();
    }

    #[test]
    fn invalid_layouts_are_rejected() {
        assert!(MemoryLayout::custom(vec![]).validate().is_err());
        assert!(MemoryLayout::single(100).validate().is_err());
        let overlap = MemoryLayout::custom(vec![
            RegionSpec {
                gpa: 0,
                size: 0x2000,
            },
            RegionSpec {
                gpa: 0x1000,
                size: 0x1000,
            },
        ]);
        assert!(overlap.validate().is_err());
    }

    #[test]
    fn memfd_memory_is_usable() {
        let mem = create_guest_memory(&MemoryLayout::split(&[0x4000, 0x4000], 0x2000)).unwrap();
        assert_eq!(mem.num_regions(), 2);
        mem.write_obj(0xdead_beef_u32, GuestAddress(0x6000))
            .unwrap();
        assert_eq!(
            mem.read_obj::<u32>(GuestAddress(0x6000)).unwrap(),
            0xdead_beef
        );
        assert!(mem.read_obj::<u32>(GuestAddress(0x5000)).is_err());
    }

    #[test]
    fn bump_allocator_aligns_spills_and_resets() {
        let regions = [
            RegionSpec {
                gpa: 0,
                size: 0x1000,
            },
            RegionSpec {
                gpa: 0x3000,
                size: 0x1000,
            },
        ];
        let mut a = BumpAllocator::new(&regions);
        assert_eq!(a.alloc(8, 8).unwrap(), GuestAddress(0));
        assert_eq!(a.alloc(8, 64).unwrap(), GuestAddress(64));
        a.set_floor();
        assert_eq!(a.alloc(0xf00, 16).unwrap(), GuestAddress(0x50));
        assert_eq!(a.alloc(0x200, 16).unwrap(), GuestAddress(0x3000));
        assert!(a.alloc(0x1000, 16).is_err());
        a.reset();
        assert_eq!(a.alloc(16, 16).unwrap(), GuestAddress(0x50));
        assert!(a.alloc(0, 16).is_err());
        assert!(a.alloc(16, 3).is_err());
        assert_eq!(a.alloc_in_region(1, 16, 16).unwrap(), GuestAddress(0x3000));
    }
}
