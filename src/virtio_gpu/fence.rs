//! Fence rings: the ordering rule between fenced commands and the used ring.
//!
//! The guest driver signals every earlier fence of a timeline when it sees a
//! later one complete, so per timeline the device must return fenced
//! responses in submission order. A fenced command whose work is already done
//! still waits behind earlier unfinished fences of its timeline.
//!
//! A timeline is either the global one (no `FLAG_INFO_RING_IDX`) or a
//! `(context, ring)` pair. [`FenceRings`] only does bookkeeping: it says which
//! held descriptor chains may now go back to the used ring. It has no
//! knowledge of the queue, so the GPU engine can complete fences from its own
//! thread through the same structure (behind a lock).

use std::collections::{HashMap, VecDeque};

/// A fence timeline.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, PartialOrd, Ord)]
pub enum Timeline {
    /// The device-wide timeline used without `FLAG_INFO_RING_IDX`.
    Global,
    /// One ring of one context.
    Ring {
        /// Context id.
        ctx_id: u32,
        /// Ring index (< 64).
        ring_idx: u8,
    },
}

/// A held descriptor chain: its head and the number of response bytes
/// already written into it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeldChain {
    /// Head descriptor index.
    pub head: u16,
    /// Bytes written to the chain's writable part.
    pub len: u32,
}

#[derive(Debug)]
struct Pending {
    fence_id: u64,
    chain: HeldChain,
    done: bool,
}

/// Emptied rings kept for reuse, and the largest one kept: a ring's buffer
/// is reused by the next timeline that needs one instead of being freed
/// and grown again, and at most this much stays allocated.
const SPARE_RINGS: usize = 8;
const SPARE_CAPACITY: usize = 256;

/// Pending fenced responses, per timeline, in submission order.
///
/// The rings live in slots; `index` maps each timeline with held chains to
/// its slot. Timelines are chosen by the guest, so `index` keeps the
/// standard (collision-resistant) hasher, and `last` remembers the
/// timeline looked up last with its slot: the fences of a batch are
/// pushed and completed on one timeline after another, so most lookups
/// hash nothing. The number of slots is bounded by the chains held at
/// once, which the queue size bounds.
#[derive(Debug, Default)]
pub struct FenceRings {
    index: HashMap<Timeline, usize>,
    slots: Vec<VecDeque<Pending>>,
    /// Slots of emptied rings, last freed on top. Only the bottom
    /// [`SPARE_RINGS`] keep their buffers.
    free: Vec<usize>,
    last: Option<(Timeline, usize)>,
    pending: usize,
}

impl FenceRings {
    /// An empty set of rings.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of fenced chains still held.
    pub fn pending(&self) -> usize {
        self.pending
    }

    /// Queues a fenced response. `done` says whether its work is already
    /// complete. Appends the chains that may be returned now to `out`, in
    /// order.
    pub fn push(
        &mut self,
        timeline: Timeline,
        fence_id: u64,
        chain: HeldChain,
        done: bool,
        out: &mut Vec<HeldChain>,
    ) {
        let slot = match self.slot_of(timeline) {
            Some(slot) => slot,
            // Nothing earlier to wait for.
            None if done => return out.push(chain),
            None => self.open(timeline),
        };
        self.slots[slot].push_back(Pending {
            fence_id,
            chain,
            done,
        });
        self.pending += 1;
        // A ring's front entry is never done between calls (whatever
        // makes it done drains it), so only a done entry can free any.
        if done {
            self.drain_ready(timeline, slot, out);
        }
    }

    /// Marks the work of the oldest not-yet-done entry with `fence_id` on
    /// `timeline` as complete. Appends the chains that may be returned now
    /// to `out`. Unknown fences are ignored.
    pub fn complete(&mut self, timeline: Timeline, fence_id: u64, out: &mut Vec<HeldChain>) {
        let Some(slot) = self.slot_of(timeline) else {
            return;
        };
        let ring = &mut self.slots[slot];
        // The front entry is never done between calls (see `push`), so it
        // is the oldest not-done one: fences completed in order, the usual
        // case, leave from the front at once.
        if ring.front().is_some_and(|p| p.fence_id == fence_id) {
            if let Some(p) = ring.pop_front() {
                out.push(p.chain);
                self.pending -= 1;
            }
        } else if let Some(p) = ring.iter_mut().find(|p| !p.done && p.fence_id == fence_id) {
            p.done = true;
        }
        self.drain_ready(timeline, slot, out);
    }

    /// Completes everything held for `ctx_id` (context destroyed): all its
    /// chains are returned in ring order.
    pub fn flush_context(&mut self, ctx_id: u32) -> Vec<HeldChain> {
        let mut keys: Vec<Timeline> = self
            .index
            .keys()
            .copied()
            .filter(|t| matches!(t, Timeline::Ring { ctx_id: c, .. } if *c == ctx_id))
            .collect();
        keys.sort();
        self.take_all(&keys)
    }

    /// Completes everything held on every timeline (device reset or
    /// disconnect).
    pub fn flush_all(&mut self) -> Vec<HeldChain> {
        let mut keys: Vec<Timeline> = self.index.keys().copied().collect();
        keys.sort();
        self.take_all(&keys)
    }

    fn take_all(&mut self, keys: &[Timeline]) -> Vec<HeldChain> {
        let mut out = Vec::new();
        for &key in keys {
            if let Some(slot) = self.slot_of(key) {
                let ring = &mut self.slots[slot];
                self.pending -= ring.len();
                out.extend(ring.drain(..).map(|p| p.chain));
                self.close(key, slot);
            }
        }
        out
    }

    /// The slot of `timeline`'s ring, if it holds chains.
    fn slot_of(&mut self, timeline: Timeline) -> Option<usize> {
        match self.last {
            Some((t, slot)) if t == timeline => Some(slot),
            _ => {
                let slot = *self.index.get(&timeline)?;
                self.last = Some((timeline, slot));
                Some(slot)
            }
        }
    }

    /// Gives `timeline` an empty ring, reusing a freed slot if any.
    fn open(&mut self, timeline: Timeline) -> usize {
        let slot = self.free.pop().unwrap_or_else(|| {
            self.slots.push(VecDeque::new());
            self.slots.len() - 1
        });
        self.index.insert(timeline, slot);
        self.last = Some((timeline, slot));
        slot
    }

    /// Frees the emptied ring of `timeline`, keeping its buffer if it is
    /// among the first [`SPARE_RINGS`] free slots and not too large.
    fn close(&mut self, timeline: Timeline, slot: usize) {
        self.index.remove(&timeline);
        if self.last.is_some_and(|(t, _)| t == timeline) {
            self.last = None;
        }
        let ring = &mut self.slots[slot];
        if self.free.len() >= SPARE_RINGS || ring.capacity() > SPARE_CAPACITY {
            *ring = VecDeque::new();
        }
        self.free.push(slot);
    }

    /// Moves the done entries at the front of `slot`'s ring to `out`, and
    /// frees the ring if that empties it.
    fn drain_ready(&mut self, timeline: Timeline, slot: usize, out: &mut Vec<HeldChain>) {
        let ring = &mut self.slots[slot];
        while let Some(p) = ring.front().filter(|p| p.done) {
            out.push(p.chain);
            ring.pop_front();
            self.pending -= 1;
        }
        if ring.is_empty() {
            self.close(timeline, slot);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(head: u16) -> HeldChain {
        HeldChain { head, len: 24 }
    }

    fn push(
        f: &mut FenceRings,
        t: Timeline,
        id: u64,
        chain: HeldChain,
        done: bool,
    ) -> Vec<HeldChain> {
        let mut out = Vec::new();
        f.push(t, id, chain, done, &mut out);
        out
    }

    fn complete(f: &mut FenceRings, t: Timeline, id: u64) -> Vec<HeldChain> {
        let mut out = Vec::new();
        f.complete(t, id, &mut out);
        out
    }

    const R0: Timeline = Timeline::Ring {
        ctx_id: 1,
        ring_idx: 0,
    };
    const R1: Timeline = Timeline::Ring {
        ctx_id: 1,
        ring_idx: 1,
    };

    #[test]
    fn immediate_fence_returns_at_once() {
        let mut f = FenceRings::new();
        assert_eq!(push(&mut f, Timeline::Global, 1, c(0), true), vec![c(0)]);
        assert_eq!(f.pending(), 0);
    }

    #[test]
    fn done_fence_waits_behind_unfinished_one() {
        let mut f = FenceRings::new();
        assert!(push(&mut f, R0, 1, c(0), false).is_empty());
        assert!(push(&mut f, R0, 2, c(1), true).is_empty());
        // Another ring is independent.
        assert_eq!(push(&mut f, R1, 3, c(2), true), vec![c(2)]);
        assert_eq!(complete(&mut f, R0, 1), vec![c(0), c(1)]);
        assert_eq!(f.pending(), 0);
    }

    #[test]
    fn out_of_order_completion_is_released_in_order() {
        let mut f = FenceRings::new();
        for i in 0..4u16 {
            assert!(push(&mut f, R0, u64::from(i) + 1, c(i), false).is_empty());
        }
        assert!(complete(&mut f, R0, 3).is_empty());
        assert!(complete(&mut f, R0, 2).is_empty());
        assert_eq!(complete(&mut f, R0, 1), vec![c(0), c(1), c(2)]);
        assert_eq!(complete(&mut f, R0, 4), vec![c(3)]);
        assert!(complete(&mut f, R0, 99).is_empty());
    }

    #[test]
    fn a_repeated_fence_id_completes_its_oldest_entry_first() {
        let mut f = FenceRings::new();
        for i in 0..3u16 {
            assert!(push(&mut f, R0, 5, c(i), false).is_empty());
        }
        assert!(push(&mut f, R0, 6, c(3), false).is_empty());
        assert_eq!(complete(&mut f, R0, 5), vec![c(0)]);
        assert!(complete(&mut f, R0, 6).is_empty(), "behind two fives");
        assert_eq!(complete(&mut f, R0, 5), vec![c(1)]);
        assert_eq!(complete(&mut f, R0, 5), vec![c(2), c(3)]);
        assert_eq!(f.pending(), 0);
    }

    #[test]
    fn flush_context_returns_everything_of_that_context() {
        let mut f = FenceRings::new();
        push(&mut f, R0, 1, c(0), false);
        push(&mut f, R1, 1, c(1), false);
        let other = Timeline::Ring {
            ctx_id: 2,
            ring_idx: 0,
        };
        push(&mut f, other, 1, c(2), false);
        assert_eq!(f.flush_context(1), vec![c(0), c(1)]);
        assert_eq!(f.pending(), 1);
        assert_eq!(f.flush_all(), vec![c(2)]);
        assert_eq!(f.pending(), 0);
    }

    #[test]
    fn emptied_rings_are_reused_and_what_is_kept_is_bounded() {
        let mut f = FenceRings::new();
        let kept = |f: &FenceRings| {
            f.free
                .iter()
                .filter(|&&s| f.slots[s].capacity() > 0)
                .count()
        };
        let ring = |i: u8| Timeline::Ring {
            ctx_id: 1,
            ring_idx: i,
        };
        // More rings in use at once than are kept once emptied.
        let n = SPARE_RINGS as u8 + 4;
        for i in 0..n {
            push(&mut f, ring(i), 1, c(u16::from(i)), false);
        }
        for i in 0..n {
            assert_eq!(complete(&mut f, ring(i), 1), vec![c(u16::from(i))]);
        }
        assert_eq!(f.pending(), 0);
        assert!(f.index.is_empty());
        assert_eq!(f.slots.len(), usize::from(n));
        assert_eq!(f.free.len(), usize::from(n));
        assert_eq!(kept(&f), SPARE_RINGS);
        // A new timeline takes a free slot and gives it back; no new slot.
        push(&mut f, ring(40), 1, c(0), false);
        assert_eq!(complete(&mut f, ring(40), 1), vec![c(0)]);
        assert_eq!(f.slots.len(), usize::from(n));
        assert_eq!(kept(&f), SPARE_RINGS);
        // Reusing the kept buffers: the bottom slots of the free list.
        for i in 0..n {
            push(&mut f, ring(i), 2, c(0), false);
        }
        assert!(f.free.is_empty());
        for i in 0..n {
            complete(&mut f, ring(i), 2);
        }
        assert_eq!(kept(&f), SPARE_RINGS);
        // A ring grown past the kept size is freed, not kept.
        let big = SPARE_CAPACITY as u64 + 1;
        for id in 0..big {
            push(&mut f, ring(41), id, c(0), false);
        }
        for id in 0..big {
            complete(&mut f, ring(41), id);
        }
        assert!(f
            .free
            .iter()
            .all(|&s| f.slots[s].capacity() <= SPARE_CAPACITY));
        assert_eq!(f.pending(), 0);
    }

    #[test]
    fn the_remembered_timeline_follows_frees_and_reuse() {
        let mut f = FenceRings::new();
        // R0 takes slot 0, empties (slot freed), then R1 reuses slot 0.
        push(&mut f, R0, 1, c(0), false);
        assert_eq!(complete(&mut f, R0, 1), vec![c(0)]);
        push(&mut f, R1, 1, c(1), false);
        // R0 holds nothing now: completing it must not touch R1's ring.
        assert!(complete(&mut f, R0, 1).is_empty());
        assert_eq!(f.pending(), 1);
        push(&mut f, R0, 2, c(2), false);
        assert_eq!(complete(&mut f, R1, 1), vec![c(1)]);
        assert_eq!(complete(&mut f, R0, 2), vec![c(2)]);
        assert_eq!(f.pending(), 0);
    }
}
