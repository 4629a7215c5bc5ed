//! Hash maps keyed by ids the device hands out itself.
//!
//! The engine's bookkeeping looks up a few maps per job (held and running
//! jobs, waiters, syncobj objects and pending signals, VMs, the works of a
//! native context), always by ids it allocated from counters. The
//! standard library's SipHash costs more than the rest of such a lookup;
//! these keys need no protection against chosen collisions, so
//! [`IdMap`] uses a multiply-and-fold hash instead.
//!
//! Do not key an [`IdMap`] by a value the guest chooses: a guest could
//! then pick keys that all land in one bucket. Maps keyed by guest handles
//! keep the standard hasher.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// A `HashMap` for device-allocated ids; see the [module documentation](self).
pub type IdMap<K, V> = HashMap<K, V, BuildHasherDefault<IdHasher>>;

/// Odd 64-bit constant (2^64 divided by the golden ratio) whose product
/// spreads consecutive ids over all bits.
const K: u64 = 0x9e37_79b9_7f4a_7c15;

/// The hasher of [`IdMap`]: each integer written is folded in with a
/// rotate, xor and multiply.
#[derive(Debug, Default, Clone, Copy)]
pub struct IdHasher(u64);

impl IdHasher {
    #[inline]
    fn add(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(5) ^ v).wrapping_mul(K);
    }
}

impl Hasher for IdHasher {
    #[inline]
    fn finish(&self) -> u64 {
        // The table picks buckets with the low bits and tags with the high
        // ones; fold the well-mixed high half into the low one.
        self.0 ^ (self.0 >> 32)
    }

    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut w = [0u8; 8];
            w[..chunk.len()].copy_from_slice(chunk);
            self.add(u64::from_le_bytes(w));
        }
    }

    #[inline]
    fn write_u8(&mut self, v: u8) {
        self.add(u64::from(v));
    }

    #[inline]
    fn write_u16(&mut self, v: u16) {
        self.add(u64::from(v));
    }

    #[inline]
    fn write_u32(&mut self, v: u32) {
        self.add(u64::from(v));
    }

    #[inline]
    fn write_u64(&mut self, v: u64) {
        self.add(v);
    }

    #[inline]
    fn write_usize(&mut self, v: usize) {
        self.add(v as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasher;

    fn hash<T: std::hash::Hash>(v: T) -> u64 {
        BuildHasherDefault::<IdHasher>::default().hash_one(v)
    }

    #[test]
    fn consecutive_ids_spread_over_buckets() {
        // 1024 consecutive ids into 1024 buckets (the low 10 bits): a good
        // spread leaves few buckets empty; a poor one piles them up.
        let mut used = [false; 1024];
        for id in 1u64..=1024 {
            used[(hash(id) & 1023) as usize] = true;
        }
        let filled = used.iter().filter(|&&u| u).count();
        assert!(filled > 600, "only {filled} of 1024 buckets used");
        // The high 7 bits (the table's tags) vary too.
        let tags: std::collections::BTreeSet<u64> = (1u64..=256).map(|i| hash(i) >> 57).collect();
        assert!(tags.len() > 64, "{} distinct tags", tags.len());
    }

    #[test]
    fn map_works_with_tuples_and_bytes() {
        let mut m: IdMap<(u32, u32), &str> = IdMap::default();
        m.insert((1, 2), "a");
        m.insert((2, 1), "b");
        assert_eq!(m.get(&(1, 2)), Some(&"a"));
        assert_eq!(m.get(&(2, 1)), Some(&"b"));
        assert_ne!(hash("abcdefghij"), hash("abcdefghik"));
    }
}
