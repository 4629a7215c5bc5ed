//! Records in reusable slots, keyed by their slot index.
//!
//! A [`Slab`] is for records whose key the slab hands out itself and that
//! come back exactly once: the engine keeps a record per job it gives the
//! firmware, and the firmware returns the key with the job's completion.
//! Insert, look-up and remove are an index into a vector; freed slots are
//! reused, so the vector is as long as the most records held at once.
//!
//! A key is only meaningful until its record is removed: after that the
//! slot may hold another record. Do not use a slab where a key can come
//! back after its removal (a late or repeated event), nor for keys a guest
//! chooses.

/// Records of type `T` in reusable slots.
#[derive(Debug)]
pub struct Slab<T> {
    slots: Vec<Option<T>>,
    /// Empty slots, most recently freed last.
    free: Vec<usize>,
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

impl<T> Slab<T> {
    /// Stores `value`; returns its key.
    pub fn insert(&mut self, value: T) -> usize {
        self.len += 1;
        match self.free.pop() {
            Some(key) => {
                self.slots[key] = Some(value);
                key
            }
            None => {
                self.slots.push(Some(value));
                self.slots.len() - 1
            }
        }
    }

    /// Takes the record of `key` out, if there is one.
    pub fn remove(&mut self, key: usize) -> Option<T> {
        let value = self.slots.get_mut(key)?.take()?;
        self.free.push(key);
        self.len -= 1;
        Some(value)
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
        let a = s.insert("a");
        let b = s.insert("b");
        assert_ne!(a, b);
        assert_eq!(s.len(), 2);
        assert_eq!(s.remove(a), Some("a"));
        assert_eq!(s.remove(a), None, "a key is taken once");
        assert_eq!(s.remove(99), None);
        // The freed slot is used again; the vector does not grow.
        let c = s.insert("c");
        assert_eq!(c, a);
        assert_eq!(s.slots.len(), 2);
        assert_eq!((s.remove(b), s.remove(c)), (Some("b"), Some("c")));
        assert!(s.is_empty());
    }
}
