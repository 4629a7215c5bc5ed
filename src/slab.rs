//! Records in reusable slots, keyed by their slot and the slot's
//! generation.
//!
//! A [`Slab`] is for records whose key the slab hands out itself: the
//! engine keeps a record per job it gives the firmware, and the firmware
//! returns the key with the job's completion; a native context keeps a
//! record per command with work outstanding, and the engine's events name
//! it. Insert, look-up and remove are an index into a vector; freed slots
//! are reused, so the vector is as long as the most records held at once.
//!
//! A key is `slot << 32 | generation`. Removing a record bumps its slot's
//! generation, so a key that comes back after its record was removed (a
//! late or repeated event) finds nothing, even once the slot holds another
//! record. Only a key that comes back after exactly a multiple of 2^32
//! reuses of its slot would find the new record. Keys a guest chooses do
//! not belong in a slab.

/// One slot: its generation and its record, if it holds one.
#[derive(Debug)]
struct Slot<T> {
    generation: u32,
    value: Option<T>,
}

/// Records of type `T` in reusable slots.
#[derive(Debug)]
pub struct Slab<T> {
    slots: Vec<Slot<T>>,
    /// Empty slots, most recently freed last.
    free: Vec<u32>,
    len: usize,
}

impl<T> Default for Slab<T> {
    fn default() -> Self {
        Self {
            slots: Vec::new(),
            free: Vec::new(),
            len: 0,
        }
    }
}

/// The slot and generation of `key`.
#[inline]
fn split(key: u64) -> (usize, u32) {
    ((key >> 32) as usize, key as u32)
}

impl<T> Slab<T> {
    /// Stores `value`; returns its key, or gives `value` back if 2^32
    /// records are held. The key is below `2^(32 + b)` as long as fewer
    /// than `2^b` records are held.
    pub fn insert(&mut self, value: T) -> Result<u64, T> {
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                let Ok(slot) = u32::try_from(self.slots.len()) else {
                    return Err(value);
                };
                self.slots.push(Slot {
                    generation: 0,
                    value: None,
                });
                slot
            }
        };
        self.len += 1;
        let s = &mut self.slots[slot as usize];
        s.value = Some(value);
        Ok((u64::from(slot) << 32) | u64::from(s.generation))
    }

    /// The record of `key`, if it is still held.
    #[inline]
    pub fn get_mut(&mut self, key: u64) -> Option<&mut T> {
        let (slot, generation) = split(key);
        let s = self.slots.get_mut(slot)?;
        if s.generation != generation {
            return None;
        }
        s.value.as_mut()
    }

    /// Takes the record of `key` out, if it is still held.
    pub fn remove(&mut self, key: u64) -> Option<T> {
        let (slot, generation) = split(key);
        let s = self.slots.get_mut(slot)?;
        if s.generation != generation {
            return None;
        }
        let value = s.value.take()?;
        s.generation = s.generation.wrapping_add(1);
        self.free.push(slot as u32);
        self.len -= 1;
        Some(value)
    }

    /// Every record held, in slot order.
    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut T> {
        self.slots.iter_mut().filter_map(|s| s.value.as_mut())
    }

    /// Records held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no record is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_reused_and_unknown_keys_find_nothing() {
        let mut s = Slab::default();
        let a = s.insert("a").unwrap();
        let b = s.insert("b").unwrap();
        assert_ne!(a, b);
        assert_eq!(s.len(), 2);
        assert_eq!(s.get_mut(a), Some(&mut "a"));
        assert_eq!(s.remove(a), Some("a"));
        assert_eq!(s.remove(a), None, "a key is taken once");
        assert_eq!(s.remove(99), None);
        assert_eq!(s.remove(u64::MAX), None);
        // The freed slot is used again; the vector does not grow.
        let c = s.insert("c").unwrap();
        assert_eq!(c >> 32, a >> 32);
        assert_eq!(s.slots.len(), 2);
        assert_eq!(s.values_mut().count(), 2);
        assert_eq!((s.remove(b), s.remove(c)), (Some("b"), Some("c")));
        assert!(s.is_empty());
    }

    #[test]
    fn a_key_that_comes_back_late_finds_nothing() {
        let mut s = Slab::default();
        let old = s.insert(1).unwrap();
        assert_eq!(s.remove(old), Some(1));
        let new = s.insert(2).unwrap();
        assert_eq!(new >> 32, old >> 32, "the same slot");
        assert_eq!(s.get_mut(old), None);
        assert_eq!(s.remove(old), None);
        assert_eq!(s.get_mut(new), Some(&mut 2));
        // Keys stay small while few records are held.
        assert!(new < 1 << 33);
    }
}
