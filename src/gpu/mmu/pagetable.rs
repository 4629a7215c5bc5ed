//! The per-VM GPU page table: 48-bit VA, 4 KiB pages and 2 MiB blocks.
//!
//! The layout follows the ARM LPAE stage-1 format with a 4K granule, as
//! Panthor programs the real MMU (io-pgtable `ARM_64_LPAE_S1`, page sizes
//! 4K | 2M):
//!
//! | level | VA bits | one entry spans | entry kinds            |
//! |-------|---------|-----------------|------------------------|
//! | 0     | 47:39   | 512 GiB         | table                  |
//! | 1     | 38:30   | 1 GiB           | table                  |
//! | 2     | 29:21   | 2 MiB           | table or 2 MiB block   |
//! | 3     | 20:12   | 4 KiB           | page                   |
//!
//! Level numbers are the LPAE ones, and they are what a translation fault
//! reports: TRANSLATION_FAULT_n means the walk found an invalid entry at
//! level n.
//!
//! The tables live in host memory and the guest never sees them, so the
//! upper levels are ordinary owned Rust nodes (no arena indices, nothing to
//! get wrong), while the leaf level keeps LPAE-style 64-bit descriptors
//! (output address in bits 51:12, AP\[2\] read-only at bit 7, AttrIndx bit 2
//! for uncached, XN at bit 54, AF at bit 10) so whole leaf tables can be
//! filled and cleared with tight loops. Every table counts its live entries;
//! an unmap frees tables that become empty, and an unmap that covers a whole
//! table drops it without looking at its entries.
//!
//! A map places a 2 MiB block wherever the VA, the output address and the
//! remaining length allow it. A map or unmap that cuts into a block splits
//! it into a leaf table of 512 pages first.
//!
//! Resource accounting: [`PageTable::charge`] counts the tables (root
//! excluded) plus the blocks. A block is charged like the leaf table it
//! could be split into, so splitting never raises the charge, and an unmap
//! never raises it at all. [`super::GpuVm`] reserves the worst case of every
//! map against its budget before applying it, which is why applying a
//! validated op cannot run out of page tables.
//!
//! Every change bumps [`PageTable::generation`], which translation caches
//! compare against to drop stale entries.

use super::fault::FaultKind;
use super::{page_aligned, BLOCK_SIZE, PAGE_SIZE, PA_BITS, VA_SPACE};

/// Entries per table at every level.
const ENTRIES: usize = 512;
/// VA shift of the index of each level.
const LEVEL_SHIFT: [u32; 4] = [39, 30, 21, 12];
/// Bytes spanned by one level-0 entry.
const L0_SPAN: u64 = 1 << 39;
/// Bytes spanned by one level-1 entry.
const L1_SPAN: u64 = 1 << 30;

/// Descriptor is valid.
const PTE_VALID: u64 = 1 << 0;
/// Level-3 page descriptor (as opposed to a level-2 block).
const PTE_PAGE: u64 = 1 << 1;
/// AttrIndx[0]: the uncached memory attribute.
const PTE_UNCACHED: u64 = 1 << 2;
/// AP\[2\]: read-only.
const PTE_READONLY: u64 = 1 << 7;
/// Access flag, always set (the GPU takes no access-flag faults here).
const PTE_AF: u64 = 1 << 10;
/// Execute-never.
const PTE_NOEXEC: u64 = 1 << 54;
/// Output address bits of a descriptor.
const PTE_ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;
/// Largest output address (exclusive) a descriptor can hold.
const MAX_OUTPUT: u64 = 1 << 52;

/// Mapping attributes, with the bit values of Panthor's VM_BIND MAP flags.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct MapFlags(u32);

impl MapFlags {
    /// No flag: readable, writable, executable, cached.
    pub const EMPTY: Self = Self(0);
    /// Writes fault (DRM_PANTHOR_VM_BIND_OP_MAP_READONLY).
    pub const READONLY: Self = Self(1 << 0);
    /// Instruction fetches fault (DRM_PANTHOR_VM_BIND_OP_MAP_NOEXEC).
    pub const NOEXEC: Self = Self(1 << 1);
    /// Uncached memory attribute (DRM_PANTHOR_VM_BIND_OP_MAP_UNCACHED).
    pub const UNCACHED: Self = Self(1 << 2);
    /// All flags this MMU understands.
    pub const ALL: Self = Self(0b111);

    /// The flags for these uAPI bits, or `None` if any other bit is set.
    pub const fn from_bits(bits: u32) -> Option<Self> {
        if bits & !Self::ALL.0 == 0 {
            Some(Self(bits))
        } else {
            None
        }
    }

    /// The uAPI bit values.
    pub const fn bits(self) -> u32 {
        self.0
    }

    /// Whether every flag of `other` is set in `self`.
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    /// Writes are refused.
    pub const fn readonly(self) -> bool {
        self.contains(Self::READONLY)
    }

    /// Instruction fetches are refused.
    pub const fn noexec(self) -> bool {
        self.contains(Self::NOEXEC)
    }

    /// The memory is mapped uncached.
    pub const fn uncached(self) -> bool {
        self.contains(Self::UNCACHED)
    }

    /// Descriptor attribute bits for these flags.
    const fn pte_bits(self) -> u64 {
        let mut b = PTE_AF | PTE_VALID;
        if self.readonly() {
            b |= PTE_READONLY;
        }
        if self.noexec() {
            b |= PTE_NOEXEC;
        }
        if self.uncached() {
            b |= PTE_UNCACHED;
        }
        b
    }

    /// Flags encoded in a descriptor.
    const fn from_pte(pte: u64) -> Self {
        let mut f = 0;
        if pte & PTE_READONLY != 0 {
            f |= Self::READONLY.0;
        }
        if pte & PTE_NOEXEC != 0 {
            f |= Self::NOEXEC.0;
        }
        if pte & PTE_UNCACHED != 0 {
            f |= Self::UNCACHED.0;
        }
        Self(f)
    }
}

impl std::ops::BitOr for MapFlags {
    type Output = Self;

    fn bitor(self, rhs: Self) -> Self {
        Self(self.0 | rhs.0)
    }
}

impl std::fmt::Debug for MapFlags {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names = [
            (Self::READONLY, "READONLY"),
            (Self::NOEXEC, "NOEXEC"),
            (Self::UNCACHED, "UNCACHED"),
        ];
        let mut first = true;
        for (flag, name) in names {
            if self.contains(flag) {
                if !first {
                    f.write_str("|")?;
                }
                f.write_str(name)?;
                first = false;
            }
        }
        if first {
            f.write_str("EMPTY")?;
        }
        Ok(())
    }
}

/// Why a page-table update was refused. [`super::GpuVm`] validates
/// everything before it reaches the page table, so these only guard
/// direct callers.
#[derive(Debug, thiserror::Error, Clone, Copy, PartialEq, Eq)]
pub enum PtError {
    /// VA, output address or length not 4 KiB aligned.
    #[error("page-table update not 4 KiB aligned")]
    Misaligned,
    /// The VA range leaves the 48-bit space, or the output range does not
    /// fit in a descriptor.
    #[error("page-table update out of range")]
    OutOfRange,
}

/// The leaf a VA translates through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Leaf {
    /// First VA covered by the leaf.
    pub va_base: u64,
    /// Bytes covered by the leaf: 4 KiB (page) or 2 MiB (block).
    pub size: u64,
    /// Guest-physical address of `va_base`.
    pub gpa_base: u64,
    /// Level of the leaf: 3 for a page, 2 for a block.
    pub level: u8,
    /// Permissions and attributes of the leaf.
    pub flags: MapFlags,
}

impl Leaf {
    /// Guest-physical address of `va`, which must lie inside the leaf.
    pub fn gpa_of(&self, va: u64) -> u64 {
        self.gpa_base + (va - self.va_base)
    }
}

/// A level-3 table: 512 page descriptors.
struct L3Table {
    entries: [u64; ENTRIES],
    valid: u16,
}

impl L3Table {
    fn empty() -> Box<Self> {
        Box::new(Self {
            entries: [0; ENTRIES],
            valid: 0,
        })
    }

    /// A table of 512 pages with the output and attributes of `block`.
    fn from_block(block: u64) -> Box<Self> {
        let mut t = Self::empty();
        let mut pte = block | PTE_PAGE;
        for e in t.entries.iter_mut() {
            *e = pte;
            pte += PAGE_SIZE;
        }
        t.valid = ENTRIES as u16;
        t
    }

    /// Write `n` consecutive page descriptors from index `first`, the first
    /// one being `pte` and each next one a page further.
    fn fill(&mut self, first: usize, n: usize, mut pte: u64) {
        let mut replaced = 0u16;
        for e in self.entries.iter_mut().skip(first).take(n) {
            replaced += (*e & PTE_VALID) as u16;
            *e = pte;
            pte += PAGE_SIZE;
        }
        self.valid = self.valid - replaced + n as u16;
    }

    /// Invalidate `n` descriptors from index `first`.
    fn clear(&mut self, first: usize, n: usize) {
        let mut removed = 0u16;
        for e in self.entries.iter_mut().skip(first).take(n) {
            removed += (*e & PTE_VALID) as u16;
            *e = 0;
        }
        self.valid -= removed;
    }
}

/// A level-2 entry.
enum L2Entry {
    Invalid,
    /// A 2 MiB block descriptor.
    Block(u64),
    Table(Box<L3Table>),
}

/// A level-2 table.
struct L2Table {
    entries: [L2Entry; ENTRIES],
    tables: u16,
    blocks: u16,
}

impl L2Table {
    fn empty() -> Box<Self> {
        Box::new(Self {
            entries: [const { L2Entry::Invalid }; ENTRIES],
            tables: 0,
            blocks: 0,
        })
    }

    fn is_empty(&self) -> bool {
        self.tables == 0 && self.blocks == 0
    }
}

/// A level-1 table.
struct L1Table {
    entries: [Option<Box<L2Table>>; ENTRIES],
    valid: u16,
}

impl L1Table {
    fn empty() -> Box<Self> {
        Box::new(Self {
            entries: [const { None }; ENTRIES],
            valid: 0,
        })
    }
}

/// The level-0 table.
struct Root {
    entries: [Option<Box<L1Table>>; ENTRIES],
}

/// Global counts of tables and blocks, kept apart from the tree so the
/// tree can be borrowed mutably while they change.
#[derive(Default, Clone, Copy)]
struct Counts {
    tables: usize,
    blocks: usize,
}

impl Counts {
    /// Forget an L2 table and everything below it.
    fn drop_l2(&mut self, l2: &L2Table) {
        self.tables -= 1 + usize::from(l2.tables);
        self.blocks -= usize::from(l2.blocks);
    }

    /// Forget an L1 table and everything below it.
    fn drop_l1(&mut self, l1: &L1Table) {
        self.tables -= 1;
        for l2 in l1.entries.iter().flatten() {
            self.drop_l2(l2);
        }
    }
}

/// Index into the table of `level` for `va`.
const fn index(va: u64, level: usize) -> usize {
    ((va >> LEVEL_SHIFT[level]) & (ENTRIES as u64 - 1)) as usize
}

/// End (exclusive) of the naturally aligned `span`-sized region holding
/// `va`, clipped to `limit`.
fn region_end(va: u64, span: u64, limit: u64) -> u64 {
    ((va | (span - 1)) + 1).min(limit)
}

/// A 4-level GPU page table.
pub struct PageTable {
    root: Box<Root>,
    counts: Counts,
    generation: u64,
}

impl Default for PageTable {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for PageTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PageTable")
            .field("tables", &self.counts.tables)
            .field("blocks", &self.counts.blocks)
            .field("generation", &self.generation)
            .finish()
    }
}

impl PageTable {
    /// An empty page table (just the root).
    pub fn new() -> Self {
        Self {
            root: Box::new(Root {
                entries: [const { None }; ENTRIES],
            }),
            counts: Counts::default(),
            generation: 0,
        }
    }

    /// Tables in use, the root excluded.
    pub fn table_count(&self) -> usize {
        self.counts.tables
    }

    /// 2 MiB blocks in use.
    pub fn block_count(&self) -> usize {
        self.counts.blocks
    }

    /// What the table costs against a page-table budget: tables (root
    /// excluded) plus blocks, each block standing for the leaf table a
    /// split would need.
    pub fn charge(&self) -> usize {
        self.counts.tables + self.counts.blocks
    }

    /// Counter bumped by every map and unmap.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Map `[va, va+len)` onto the physically contiguous guest range at
    /// `gpa`, replacing whatever was mapped there. Uses 2 MiB blocks where
    /// VA, address and length allow.
    pub fn map(&mut self, va: u64, gpa: u64, len: u64, flags: MapFlags) -> Result<(), PtError> {
        if !page_aligned(va | gpa | len) {
            return Err(PtError::Misaligned);
        }
        let va_end = va
            .checked_add(len)
            .filter(|&e| e <= VA_SPACE)
            .ok_or(PtError::OutOfRange)?;
        gpa.checked_add(len)
            .filter(|&e| e <= MAX_OUTPUT)
            .ok_or(PtError::OutOfRange)?;
        if len == 0 {
            return Ok(());
        }
        self.generation = self.generation.wrapping_add(1);
        let attrs = flags.pte_bits();
        let counts = &mut self.counts;
        let (mut va, mut gpa) = (va, gpa);
        while va < va_end {
            let l1_slot = &mut self.root.entries[index(va, 0)];
            if l1_slot.is_none() {
                counts.tables += 1;
            }
            let l1 = l1_slot.get_or_insert_with(L1Table::empty);
            let l2_slot = &mut l1.entries[index(va, 1)];
            if l2_slot.is_none() {
                counts.tables += 1;
                l1.valid += 1;
            }
            let l2 = l2_slot.get_or_insert_with(L2Table::empty);
            // Fill this level-2 table up to the end of its 1 GiB region.
            let gib_end = region_end(va, L1_SPAN, va_end);
            while va < gib_end {
                let slot_end = region_end(va, BLOCK_SIZE, gib_end);
                let slot = &mut l2.entries[index(va, 2)];
                if (va | gpa) % BLOCK_SIZE == 0 && slot_end - va == BLOCK_SIZE {
                    match std::mem::replace(slot, L2Entry::Block(gpa | attrs)) {
                        L2Entry::Invalid => {
                            l2.blocks += 1;
                            counts.blocks += 1;
                        }
                        L2Entry::Block(_) => {}
                        L2Entry::Table(_) => {
                            l2.tables -= 1;
                            l2.blocks += 1;
                            counts.tables -= 1;
                            counts.blocks += 1;
                        }
                    }
                } else {
                    let mut table = match std::mem::replace(slot, L2Entry::Invalid) {
                        L2Entry::Table(t) => t,
                        L2Entry::Invalid => {
                            l2.tables += 1;
                            counts.tables += 1;
                            L3Table::empty()
                        }
                        L2Entry::Block(b) => {
                            l2.blocks -= 1;
                            l2.tables += 1;
                            counts.blocks -= 1;
                            counts.tables += 1;
                            L3Table::from_block(b)
                        }
                    };
                    let n = ((slot_end - va) / PAGE_SIZE) as usize;
                    table.fill(index(va, 3), n, gpa | attrs | PTE_PAGE);
                    *slot = L2Entry::Table(table);
                }
                gpa += slot_end - va;
                va = slot_end;
            }
        }
        Ok(())
    }

    /// Unmap `[va, va+len)`. Holes are fine; blocks cut by the range are
    /// split; tables left empty are freed.
    pub fn unmap(&mut self, va: u64, len: u64) -> Result<(), PtError> {
        if !page_aligned(va | len) {
            return Err(PtError::Misaligned);
        }
        let end = va
            .checked_add(len)
            .filter(|&e| e <= VA_SPACE)
            .ok_or(PtError::OutOfRange)?;
        if len == 0 {
            return Ok(());
        }
        self.generation = self.generation.wrapping_add(1);
        let counts = &mut self.counts;
        let mut cur = va;
        while cur < end {
            let next = region_end(cur, L0_SPAN, end);
            let base = cur & !(L0_SPAN - 1);
            let slot = &mut self.root.entries[index(cur, 0)];
            if let Some(l1) = slot.as_deref_mut() {
                if cur == base && next - base == L0_SPAN {
                    counts.drop_l1(l1);
                    *slot = None;
                } else {
                    Self::unmap_l1(l1, cur, next, counts);
                    if l1.valid == 0 {
                        counts.tables -= 1;
                        *slot = None;
                    }
                }
            }
            cur = next;
        }
        Ok(())
    }

    /// Unmap `[start, end)`, which lies inside the 512 GiB region of `l1`.
    fn unmap_l1(l1: &mut L1Table, start: u64, end: u64, counts: &mut Counts) {
        let mut cur = start;
        while cur < end {
            let next = region_end(cur, L1_SPAN, end);
            let base = cur & !(L1_SPAN - 1);
            let slot = &mut l1.entries[index(cur, 1)];
            if let Some(l2) = slot.as_deref_mut() {
                let drop_it = if cur == base && next - base == L1_SPAN {
                    counts.drop_l2(l2);
                    true
                } else {
                    Self::unmap_l2(l2, cur, next, counts);
                    if l2.is_empty() {
                        counts.tables -= 1;
                        true
                    } else {
                        false
                    }
                };
                if drop_it {
                    *slot = None;
                    l1.valid -= 1;
                }
            }
            cur = next;
        }
    }

    /// Unmap `[start, end)`, which lies inside the 1 GiB region of `l2`.
    fn unmap_l2(l2: &mut L2Table, start: u64, end: u64, counts: &mut Counts) {
        let mut cur = start;
        while cur < end {
            let next = region_end(cur, BLOCK_SIZE, end);
            let full = cur % BLOCK_SIZE == 0 && next - cur == BLOCK_SIZE;
            let slot = &mut l2.entries[index(cur, 2)];
            match std::mem::replace(slot, L2Entry::Invalid) {
                L2Entry::Invalid => {}
                L2Entry::Block(b) => {
                    if full {
                        l2.blocks -= 1;
                        counts.blocks -= 1;
                    } else {
                        // Cut into a block: split it, then clear the part.
                        let mut t = L3Table::from_block(b);
                        l2.blocks -= 1;
                        l2.tables += 1;
                        counts.blocks -= 1;
                        counts.tables += 1;
                        t.clear(index(cur, 3), ((next - cur) / PAGE_SIZE) as usize);
                        *slot = L2Entry::Table(t);
                    }
                }
                L2Entry::Table(mut t) => {
                    if !full {
                        t.clear(index(cur, 3), ((next - cur) / PAGE_SIZE) as usize);
                    }
                    if full || t.valid == 0 {
                        l2.tables -= 1;
                        counts.tables -= 1;
                    } else {
                        *slot = L2Entry::Table(t);
                    }
                }
            }
            cur = next;
        }
    }

    /// Walk the table for `va`.
    ///
    /// Fails with [`FaultKind::AddressSizeIn`] for a VA beyond 48 bits,
    /// [`FaultKind::Translation`] with the level of the first invalid entry,
    /// or [`FaultKind::AddressSizeOut`] when the leaf's output address does
    /// not fit in [`PA_BITS`]. Permissions are the caller's business.
    pub fn walk(&self, va: u64) -> Result<Leaf, FaultKind> {
        if va >= VA_SPACE {
            return Err(FaultKind::AddressSizeIn);
        }
        let l1 = self.root.entries[index(va, 0)]
            .as_deref()
            .ok_or(FaultKind::Translation { level: 0 })?;
        let l2 = l1.entries[index(va, 1)]
            .as_deref()
            .ok_or(FaultKind::Translation { level: 1 })?;
        let (pte, level, size) = match &l2.entries[index(va, 2)] {
            L2Entry::Invalid => return Err(FaultKind::Translation { level: 2 }),
            L2Entry::Block(b) => (*b, 2, BLOCK_SIZE),
            L2Entry::Table(t) => {
                let pte = t.entries[index(va, 3)];
                if pte & PTE_VALID == 0 {
                    return Err(FaultKind::Translation { level: 3 });
                }
                (pte, 3, PAGE_SIZE)
            }
        };
        let gpa_base = pte & PTE_ADDR_MASK;
        if (gpa_base + size - 1) >> PA_BITS != 0 {
            return Err(FaultKind::AddressSizeOut { level });
        }
        Ok(Leaf {
            va_base: va & !(size - 1),
            size,
            gpa_base,
            level,
            flags: MapFlags::from_pte(pte),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    fn gpa(pt: &PageTable, va: u64) -> Option<u64> {
        pt.walk(va).ok().map(|l| l.gpa_of(va))
    }

    #[test]
    fn aligned_map_uses_blocks() {
        let mut pt = PageTable::new();
        pt.map(GIB, 4 * MIB, 8 * MIB, MapFlags::EMPTY).unwrap();
        assert_eq!(pt.block_count(), 4);
        // One L1 and one L2 table.
        assert_eq!(pt.table_count(), 2);
        let leaf = pt.walk(GIB + 3 * MIB + 5).unwrap();
        assert_eq!(leaf.level, 2);
        assert_eq!(leaf.size, BLOCK_SIZE);
        assert_eq!(leaf.gpa_of(GIB + 3 * MIB + 5), 7 * MIB + 5);
        assert_eq!(pt.charge(), 6);
    }

    #[test]
    fn misaligned_output_uses_pages() {
        let mut pt = PageTable::new();
        pt.map(GIB, 4 * MIB + PAGE_SIZE, 4 * MIB, MapFlags::EMPTY)
            .unwrap();
        assert_eq!(pt.block_count(), 0);
        assert_eq!(pt.table_count(), 4);
        let leaf = pt.walk(GIB + 2 * MIB).unwrap();
        assert_eq!(leaf.level, 3);
        assert_eq!(leaf.gpa_of(GIB + 2 * MIB + 7), 6 * MIB + PAGE_SIZE + 7);
    }

    #[test]
    fn unaligned_edges_use_pages_and_middle_blocks() {
        let mut pt = PageTable::new();
        // 1 MiB of pages, one block, 1 MiB of pages.
        pt.map(MIB, MIB, 4 * MIB, MapFlags::EMPTY).unwrap();
        assert_eq!(pt.block_count(), 1);
        assert_eq!(pt.walk(2 * MIB).unwrap().level, 2);
        assert_eq!(pt.walk(MIB).unwrap().level, 3);
        assert_eq!(pt.walk(4 * MIB).unwrap().level, 3);
        for va in (MIB..5 * MIB).step_by(PAGE_SIZE as usize) {
            assert_eq!(gpa(&pt, va), Some(va));
        }
        assert_eq!(gpa(&pt, 5 * MIB), None);
    }

    #[test]
    fn unmap_splits_block_and_frees_tables() {
        let mut pt = PageTable::new();
        pt.map(0, 0, 2 * MIB, MapFlags::READONLY).unwrap();
        assert_eq!(pt.block_count(), 1);
        let charge = pt.charge();
        pt.unmap(PAGE_SIZE, PAGE_SIZE).unwrap();
        assert_eq!(pt.block_count(), 0);
        assert_eq!(pt.charge(), charge, "splitting must not raise the charge");
        assert_eq!(gpa(&pt, 0), Some(0));
        assert_eq!(pt.walk(PAGE_SIZE), Err(FaultKind::Translation { level: 3 }));
        assert_eq!(gpa(&pt, 2 * PAGE_SIZE), Some(2 * PAGE_SIZE));
        assert!(pt.walk(2 * PAGE_SIZE).unwrap().flags.readonly());
        pt.unmap(0, 2 * MIB).unwrap();
        assert_eq!(pt.table_count(), 0);
        assert_eq!(pt.charge(), 0);
        assert_eq!(pt.walk(0), Err(FaultKind::Translation { level: 0 }));
    }

    #[test]
    fn mapping_pages_over_a_block_splits_it() {
        let mut pt = PageTable::new();
        pt.map(0, 0, 2 * MIB, MapFlags::EMPTY).unwrap();
        pt.map(PAGE_SIZE, 8 * MIB, PAGE_SIZE, MapFlags::NOEXEC)
            .unwrap();
        assert_eq!(pt.block_count(), 0);
        assert_eq!(gpa(&pt, PAGE_SIZE), Some(8 * MIB));
        assert!(pt.walk(PAGE_SIZE).unwrap().flags.noexec());
        assert_eq!(gpa(&pt, 2 * PAGE_SIZE), Some(2 * PAGE_SIZE));
        // A block over the split table replaces it.
        pt.map(0, 4 * MIB, 2 * MIB, MapFlags::EMPTY).unwrap();
        assert_eq!(pt.block_count(), 1);
        assert_eq!(pt.charge(), 3);
        assert_eq!(gpa(&pt, PAGE_SIZE), Some(4 * MIB + PAGE_SIZE));
    }

    #[test]
    fn overwriting_pages_keeps_counts() {
        let mut pt = PageTable::new();
        pt.map(0, 0, 16 * PAGE_SIZE, MapFlags::EMPTY).unwrap();
        pt.map(4 * PAGE_SIZE, MIB, 4 * PAGE_SIZE, MapFlags::EMPTY)
            .unwrap();
        pt.unmap(0, 16 * PAGE_SIZE).unwrap();
        assert_eq!(pt.table_count(), 0);
    }

    #[test]
    fn walk_faults_per_level() {
        let mut pt = PageTable::new();
        assert_eq!(pt.walk(0), Err(FaultKind::Translation { level: 0 }));
        pt.map(GIB, 0, PAGE_SIZE, MapFlags::EMPTY).unwrap();
        // Same level-0 entry, other 1 GiB region.
        assert_eq!(pt.walk(0), Err(FaultKind::Translation { level: 1 }));
        // Same level-1 entry, other 2 MiB region.
        assert_eq!(
            pt.walk(GIB + 2 * MIB),
            Err(FaultKind::Translation { level: 2 })
        );
        // Same leaf table, other page.
        assert_eq!(
            pt.walk(GIB + PAGE_SIZE),
            Err(FaultKind::Translation { level: 3 })
        );
        assert_eq!(pt.walk(VA_SPACE), Err(FaultKind::AddressSizeIn));
        assert_eq!(pt.walk(u64::MAX), Err(FaultKind::AddressSizeIn));
    }

    #[test]
    fn output_beyond_pa_bits_faults() {
        let mut pt = PageTable::new();
        pt.map(0, 1 << PA_BITS, BLOCK_SIZE, MapFlags::EMPTY)
            .unwrap();
        assert_eq!(pt.walk(0), Err(FaultKind::AddressSizeOut { level: 2 }));
        pt.map(
            0,
            (1 << PA_BITS) - PAGE_SIZE,
            2 * PAGE_SIZE,
            MapFlags::EMPTY,
        )
        .unwrap();
        assert!(pt.walk(0).is_ok());
        assert_eq!(
            pt.walk(PAGE_SIZE),
            Err(FaultKind::AddressSizeOut { level: 3 })
        );
    }

    #[test]
    fn rejects_bad_arguments() {
        let mut pt = PageTable::new();
        assert_eq!(
            pt.map(1, 0, PAGE_SIZE, MapFlags::EMPTY),
            Err(PtError::Misaligned)
        );
        assert_eq!(
            pt.map(VA_SPACE - PAGE_SIZE, 0, 2 * PAGE_SIZE, MapFlags::EMPTY),
            Err(PtError::OutOfRange)
        );
        assert_eq!(
            pt.map(0, MAX_OUTPUT - PAGE_SIZE, 2 * PAGE_SIZE, MapFlags::EMPTY),
            Err(PtError::OutOfRange)
        );
        assert_eq!(pt.unmap(u64::MAX - 4095, 4096), Err(PtError::OutOfRange));
        assert_eq!(pt.unmap(0, 4095), Err(PtError::Misaligned));
        assert_eq!(pt.generation(), 0);
    }

    #[test]
    fn huge_sparse_unmap_is_cheap_and_complete() {
        let mut pt = PageTable::new();
        pt.map(0, 0, PAGE_SIZE, MapFlags::EMPTY).unwrap();
        pt.map(VA_SPACE - 2 * MIB, 0, 2 * MIB, MapFlags::EMPTY)
            .unwrap();
        pt.map(600 * GIB + PAGE_SIZE, 0, PAGE_SIZE, MapFlags::EMPTY)
            .unwrap();
        pt.unmap(0, VA_SPACE).unwrap();
        assert_eq!(pt.charge(), 0);
    }

    #[test]
    fn flags_round_trip_and_debug() {
        assert_eq!(MapFlags::from_bits(8), None);
        let f = MapFlags::from_bits(7).unwrap();
        assert_eq!(f, MapFlags::ALL);
        assert_eq!(MapFlags::from_pte(f.pte_bits()), f);
        assert_eq!(
            format!("{:?}", MapFlags::READONLY | MapFlags::UNCACHED),
            "READONLY|UNCACHED"
        );
        assert_eq!(format!("{:?}", MapFlags::EMPTY), "EMPTY");
    }
}
