//! CSG slot scheduling (csf.md §2.7): which groups are resident, with which
//! CSG priority, and when they rotate.
//!
//! - There are `slots` CSG slots. Only runnable groups hold one: a group
//!   that is idle, parked on sync waits or dead leaves its slot at once.
//! - Groups are ordered by group priority (REALTIME, HIGH, MEDIUM, LOW) and,
//!   within a priority, by a rotation list.
//! - Between ticks, free slots are filled with the best runnable groups.
//!   A REALTIME group that finds no free slot evicts the resident group
//!   with the lowest priority below REALTIME at once.
//! - At a tick, in every priority level where runnable groups wait for a
//!   slot, the resident groups of that level move to the back of its
//!   rotation list; then the best `slots` runnable groups are made resident
//!   (evicting the others). Ticks happen only while more groups are
//!   runnable than there are slots.
//! - Resident groups get distinct CSG priorities from 15 downwards, in the
//!   order above.

use std::collections::{HashMap, VecDeque};

use crate::gpu::model::GROUP_PRIORITY_REALTIME;

/// Group priority levels.
const LEVELS: usize = 4;
/// Highest CSG priority.
const MAX_CSG_PRIORITY: u8 = 15;

/// Slot changes made by one scheduling pass.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Changes {
    /// Groups that lost their slot.
    pub evicted: Vec<u32>,
    /// Groups that got a slot.
    pub admitted: Vec<u32>,
}

/// The slot table and the rotation lists.
#[derive(Debug)]
pub(crate) struct Scheduler {
    slots: Vec<Option<u32>>,
    lists: [VecDeque<u32>; LEVELS],
    priority: HashMap<u32, u8>,
    next_tick: Option<u64>,
}

impl Scheduler {
    /// A scheduler with `slots` CSG slots (at least 1).
    pub fn new(slots: usize) -> Self {
        Self {
            slots: vec![None; slots.clamp(1, usize::from(MAX_CSG_PRIORITY) + 1)],
            lists: Default::default(),
            priority: HashMap::new(),
            next_tick: None,
        }
    }

    /// Registers a group (at the back of its level).
    pub fn add(&mut self, group: u32, priority: u8) {
        let level = usize::from(priority).min(LEVELS - 1);
        self.priority.insert(group, level as u8);
        self.lists[level].push_back(group);
    }

    /// Forgets a group and frees its slot.
    pub fn remove(&mut self, group: u32) {
        if let Some(level) = self.priority.remove(&group) {
            self.lists[usize::from(level)].retain(|&g| g != group);
        }
        for s in &mut self.slots {
            if *s == Some(group) {
                *s = None;
            }
        }
    }

    /// The slot of `group`, if resident.
    pub fn slot_of(&self, group: u32) -> Option<usize> {
        self.slots.iter().position(|&s| s == Some(group))
    }

    /// When the next tick is due, if one is armed.
    pub fn next_tick(&self) -> Option<u64> {
        self.next_tick
    }

    fn level(&self, group: u32) -> u8 {
        self.priority.get(&group).copied().unwrap_or(0)
    }

    fn position(&self, group: u32) -> usize {
        let level = usize::from(self.level(group));
        self.lists[level]
            .iter()
            .position(|&g| g == group)
            .unwrap_or(usize::MAX)
    }

    /// Every registered group, best first (priority, then rotation order).
    fn ordered(&self) -> impl Iterator<Item = u32> + '_ {
        self.lists.iter().rev().flat_map(|l| l.iter().copied())
    }

    fn free_slot(&self) -> Option<usize> {
        self.slots.iter().position(Option::is_none)
    }

    fn evict(&mut self, group: u32, changes: &mut Changes) {
        if let Some(i) = self.slot_of(group) {
            self.slots[i] = None;
            changes.evicted.push(group);
        }
    }

    fn admit(&mut self, group: u32, changes: &mut Changes) -> bool {
        match self.free_slot() {
            Some(i) => {
                self.slots[i] = Some(group);
                changes.admitted.push(group);
                true
            }
            None => false,
        }
    }

    /// One scheduling pass at time `now`; `tick` says whether the tick is
    /// due. `runnable` tells which groups want a slot.
    pub fn reschedule(
        &mut self,
        now: u64,
        tick_ns: u64,
        tick: bool,
        runnable: &dyn Fn(u32) -> bool,
    ) -> Changes {
        let mut changes = Changes::default();
        // By index: evicting empties the slot in place (and this runs at
        // every job, so no list is built).
        for i in 0..self.slots.len() {
            if let Some(g) = self.slots[i] {
                if !runnable(g) {
                    self.evict(g, &mut changes);
                }
            }
        }
        if tick {
            self.rotate(runnable);
            let desired: Vec<u32> = self
                .ordered()
                .filter(|&g| runnable(g))
                .take(self.slots.len())
                .collect();
            let residents: Vec<u32> = self.slots.iter().flatten().copied().collect();
            for g in residents {
                if !desired.contains(&g) {
                    self.evict(g, &mut changes);
                }
            }
            for g in desired {
                if self.slot_of(g).is_none() {
                    self.admit(g, &mut changes);
                }
            }
        } else {
            let waiting: Vec<u32> = self
                .ordered()
                .filter(|&g| runnable(g) && self.slot_of(g).is_none())
                .collect();
            for g in waiting {
                if self.admit(g, &mut changes) {
                    continue;
                }
                if self.level(g) != GROUP_PRIORITY_REALTIME {
                    break;
                }
                match self.lowest_non_realtime() {
                    Some(victim) => {
                        self.evict(victim, &mut changes);
                        self.admit(g, &mut changes);
                    }
                    None => break,
                }
            }
        }
        let contended = self.ordered().filter(|&g| runnable(g)).count() > self.slots.len();
        self.next_tick = match (contended, tick) {
            (false, _) => None,
            (true, true) => Some(now.saturating_add(tick_ns)),
            (true, false) => Some(self.next_tick.unwrap_or(now.saturating_add(tick_ns))),
        };
        changes
    }

    /// Moves the resident groups of every contended level to the back of
    /// their rotation list.
    fn rotate(&mut self, runnable: &dyn Fn(u32) -> bool) {
        for level in 0..LEVELS {
            let contended = self.lists[level]
                .iter()
                .any(|&g| runnable(g) && !self.slots.contains(&Some(g)));
            if !contended {
                continue;
            }
            let (resident, rest): (Vec<u32>, Vec<u32>) = self.lists[level]
                .iter()
                .partition(|&&g| self.slots.contains(&Some(g)));
            self.lists[level] = rest.into_iter().chain(resident).collect();
        }
    }

    /// The resident group with the lowest priority below REALTIME (the
    /// last of that level in rotation order).
    fn lowest_non_realtime(&self) -> Option<u32> {
        self.slots
            .iter()
            .flatten()
            .copied()
            .filter(|&g| self.level(g) < GROUP_PRIORITY_REALTIME)
            .min_by_key(|&g| (self.level(g), std::cmp::Reverse(self.position(g))))
    }

    /// Resident groups as `(slot, group, csg_priority)`, highest CSG
    /// priority first.
    pub fn resident(&self) -> Vec<(usize, u32, u8)> {
        let mut res: Vec<(usize, u32)> = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(i, g)| g.map(|g| (i, g)))
            .collect();
        res.sort_by_key(|&(_, g)| (std::cmp::Reverse(self.level(g)), self.position(g)));
        res.into_iter()
            .enumerate()
            .map(|(rank, (slot, g))| (slot, g, MAX_CSG_PRIORITY.saturating_sub(rank as u8)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(_: u32) -> bool {
        true
    }

    #[test]
    fn fills_free_slots_best_first() {
        let mut s = Scheduler::new(2);
        s.add(1, 0);
        s.add(2, 2);
        s.add(3, 1);
        let c = s.reschedule(0, 10, false, &all);
        assert_eq!(c.admitted, vec![2, 3]);
        assert_eq!(s.next_tick(), Some(10));
        let r = s.resident();
        assert_eq!(
            r.iter().map(|x| (x.1, x.2)).collect::<Vec<_>>(),
            [(2, 15), (3, 14)]
        );
    }

    #[test]
    fn tick_rotates_the_contended_level() {
        let mut s = Scheduler::new(2);
        for g in 1..=4 {
            s.add(g, 0);
        }
        s.reschedule(0, 10, false, &all);
        assert!(s.slot_of(1).is_some() && s.slot_of(2).is_some());
        let c = s.reschedule(10, 10, true, &all);
        assert_eq!(c.evicted, vec![1, 2]);
        assert_eq!(c.admitted, vec![3, 4]);
        let c = s.reschedule(20, 10, true, &all);
        assert_eq!(c.admitted, vec![1, 2]);
        assert_eq!(s.next_tick(), Some(30));
    }

    #[test]
    fn realtime_evicts_lowest() {
        let mut s = Scheduler::new(2);
        s.add(1, 1);
        s.add(2, 0);
        s.reschedule(0, 10, false, &|g| g != 3);
        s.add(3, 3);
        let c = s.reschedule(1, 10, false, &all);
        assert_eq!(c.evicted, vec![2]);
        assert_eq!(c.admitted, vec![3]);
        assert_eq!(s.resident()[0].1, 3);
    }

    #[test]
    fn non_runnable_groups_leave() {
        let mut s = Scheduler::new(2);
        s.add(1, 0);
        s.reschedule(0, 10, false, &all);
        let c = s.reschedule(1, 10, false, &|_| false);
        assert_eq!(c.evicted, vec![1]);
        assert_eq!(s.next_tick(), None);
        s.remove(1);
        assert!(s.resident().is_empty());
    }
}
