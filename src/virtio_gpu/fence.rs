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

/// Pending fenced responses, per timeline, in submission order.
#[derive(Debug, Default)]
pub struct FenceRings {
    rings: HashMap<Timeline, VecDeque<Pending>>,
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
    /// complete. Returns the chains that may be returned now, in order.
    pub fn push(
        &mut self,
        timeline: Timeline,
        fence_id: u64,
        chain: HeldChain,
        done: bool,
    ) -> Vec<HeldChain> {
        let ring = self.rings.entry(timeline).or_default();
        ring.push_back(Pending {
            fence_id,
            chain,
            done,
        });
        self.pending += 1;
        self.drain_ready(timeline)
    }

    /// Marks the work of the oldest not-yet-done entry with `fence_id` on
    /// `timeline` as complete. Returns the chains that may be returned now.
    /// Unknown fences are ignored (an empty list is returned).
    pub fn complete(&mut self, timeline: Timeline, fence_id: u64) -> Vec<HeldChain> {
        let Some(ring) = self.rings.get_mut(&timeline) else {
            return Vec::new();
        };
        if let Some(p) = ring.iter_mut().find(|p| !p.done && p.fence_id == fence_id) {
            p.done = true;
        }
        self.drain_ready(timeline)
    }

    /// Completes everything held for `ctx_id` (context destroyed): all its
    /// chains are returned in ring order.
    pub fn flush_context(&mut self, ctx_id: u32) -> Vec<HeldChain> {
        let mut keys: Vec<Timeline> = self
            .rings
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
        let mut keys: Vec<Timeline> = self.rings.keys().copied().collect();
        keys.sort();
        self.take_all(&keys)
    }

    fn take_all(&mut self, keys: &[Timeline]) -> Vec<HeldChain> {
        let mut out = Vec::new();
        for key in keys {
            if let Some(ring) = self.rings.remove(key) {
                self.pending -= ring.len();
                out.extend(ring.into_iter().map(|p| p.chain));
            }
        }
        out
    }

    fn drain_ready(&mut self, timeline: Timeline) -> Vec<HeldChain> {
        let mut out = Vec::new();
        let Some(ring) = self.rings.get_mut(&timeline) else {
            return out;
        };
        while ring.front().is_some_and(|p| p.done) {
            if let Some(p) = ring.pop_front() {
                out.push(p.chain);
            }
        }
        self.pending -= out.len();
        if ring.is_empty() {
            self.rings.remove(&timeline);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(head: u16) -> HeldChain {
        HeldChain { head, len: 24 }
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
        assert_eq!(f.push(Timeline::Global, 1, c(0), true), vec![c(0)]);
        assert_eq!(f.pending(), 0);
    }

    #[test]
    fn done_fence_waits_behind_unfinished_one() {
        let mut f = FenceRings::new();
        assert!(f.push(R0, 1, c(0), false).is_empty());
        assert!(f.push(R0, 2, c(1), true).is_empty());
        // Another ring is independent.
        assert_eq!(f.push(R1, 3, c(2), true), vec![c(2)]);
        assert_eq!(f.complete(R0, 1), vec![c(0), c(1)]);
        assert_eq!(f.pending(), 0);
    }

    #[test]
    fn out_of_order_completion_is_released_in_order() {
        let mut f = FenceRings::new();
        for i in 0..4u16 {
            assert!(f.push(R0, u64::from(i) + 1, c(i), false).is_empty());
        }
        assert!(f.complete(R0, 3).is_empty());
        assert!(f.complete(R0, 2).is_empty());
        assert_eq!(f.complete(R0, 1), vec![c(0), c(1), c(2)]);
        assert_eq!(f.complete(R0, 4), vec![c(3)]);
        assert!(f.complete(R0, 99).is_empty());
    }

    #[test]
    fn flush_context_returns_everything_of_that_context() {
        let mut f = FenceRings::new();
        f.push(R0, 1, c(0), false);
        f.push(R1, 1, c(1), false);
        let other = Timeline::Ring {
            ctx_id: 2,
            ring_idx: 0,
        };
        f.push(other, 1, c(2), false);
        assert_eq!(f.flush_context(1), vec![c(0), c(1)]);
        assert_eq!(f.pending(), 1);
        assert_eq!(f.flush_all(), vec![c(2)]);
        assert_eq!(f.pending(), 0);
    }
}
