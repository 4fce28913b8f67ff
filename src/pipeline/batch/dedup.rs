//! Which changeIds are in a batch or settled lately.

use std::hash::{BuildHasher, Hasher, RandomState};

/// How many settled changeIds to remember for redeliveries.
pub(super) const RECENT_CAPACITY: usize = 200_000;

/// A changeId as a 128-bit keyed hash: 16 bytes per remembered id instead of
/// a string (twice), which matters at 200,000 remembered ids. Two ids share
/// a key with probability about n² / 2^129 (with random keys per process), so
/// the exactness of the string comparison is kept for all practical purposes.
/// Two `u64`s rather than a `u128`: aligned to 8, an owner entry (key and
/// batch) takes 24 bytes instead of 32.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub(super) struct IdKey(u64, u64);

impl std::hash::Hash for IdKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.1);
    }
}

/// The changeIds settled lately, in two generations of `RECENT_CAPACITY / 2`
/// (so the last half to all of `RECENT_CAPACITY` are remembered). Every
/// settled change is appended, but only redelivered deliveries are looked
/// up, so a generation is a plain array, sorted only when a lookup finds
/// more than [`UNSORTED_SCAN_MAX`] keys appended since its last sort: 16
/// bytes an id, allocated once. (Two hash sets took up to 5.5 MB at the
/// benchmark's peak, tables and a resize's copy, where these take 3.2.)
#[derive(Default)]
pub(super) struct Recent {
    current: Generation,
    old: Generation,
}

#[derive(Default)]
struct Generation {
    keys: Vec<IdKey>,
    /// `keys[..sorted]` is in order.
    sorted: usize,
}

/// Keys appended since the last sort that a lookup scans one by one (64 KB).
const UNSORTED_SCAN_MAX: usize = 4096;

impl Generation {
    fn contains(&mut self, key: IdKey) -> bool {
        if self.keys.len() - self.sorted > UNSORTED_SCAN_MAX {
            self.keys.sort_unstable();
            self.sorted = self.keys.len();
        }
        self.keys[..self.sorted].binary_search(&key).is_ok()
            || self.keys[self.sorted..].contains(&key)
    }

    fn clear(&mut self) {
        self.keys.clear();
        self.sorted = 0;
    }
}

impl Recent {
    pub(super) fn insert(&mut self, key: IdKey) {
        let generation = RECENT_CAPACITY / 2;
        if self.current.keys.capacity() == 0 {
            self.current.keys.reserve_exact(generation);
        }
        self.current.keys.push(key);
        if self.current.keys.len() >= generation {
            // The oldest generation is forgotten; its array takes the next.
            std::mem::swap(&mut self.current, &mut self.old);
            self.current.clear();
        }
    }

    pub(super) fn contains(&mut self, key: IdKey) -> bool {
        self.current.contains(key) || self.old.contains(key)
    }
}

/// An [`IdKey`] is already a keyed hash: maps of them use its low 64 bits
/// as they are rather than hashing it again (two map operations per change
/// showed in the profile).
#[derive(Clone, Copy, Default)]
pub(super) struct KeyIsHash;

impl BuildHasher for KeyIsHash {
    type Hasher = KeyHasher;
    fn build_hasher(&self) -> KeyHasher {
        KeyHasher(0)
    }
}

pub struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write_u64(&mut self, key: u64) {
        self.0 = key;
    }
    /// Only [`IdKey`]s are hashed here; anything else still spreads.
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

#[derive(Default)]
pub(super) struct IdHasher(RandomState, RandomState);

impl IdHasher {
    pub(super) fn key(&self, id: &str) -> IdKey {
        IdKey(self.0.hash_one(id), self.1.hash_one(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nth_key(i: u64) -> IdKey {
        // Spread like hashes, so sorting reorders them.
        IdKey(i.wrapping_mul(0x9e37_79b9_7f4a_7c15), i)
    }

    #[test]
    fn recent_remembers_the_last_half_to_all_of_its_capacity() {
        let mut recent = Recent::default();
        let n = RECENT_CAPACITY as u64;
        // A few, looked up from the unsorted tail.
        for i in 0..10 {
            recent.insert(nth_key(i));
        }
        assert!((0..10).all(|i| recent.contains(nth_key(i))));
        assert!(!recent.contains(nth_key(10)));
        // Past the scan limit a lookup sorts; keys appended after that are
        // found in the new tail, and the sorted ones still by search.
        for i in 10..(UNSORTED_SCAN_MAX as u64 * 3) {
            recent.insert(nth_key(i));
        }
        assert!(recent.contains(nth_key(5)));
        assert_eq!(recent.current.sorted, recent.current.keys.len());
        for i in (UNSORTED_SCAN_MAX as u64 * 3)..(UNSORTED_SCAN_MAX as u64 * 3 + 100) {
            recent.insert(nth_key(i));
        }
        assert!(recent.contains(nth_key(UNSORTED_SCAN_MAX as u64 * 3 + 99)));
        assert!(recent.contains(nth_key(7)));
        assert!(!recent.contains(nth_key(n)));
        // A full generation moves to the old one: still remembered.
        for i in (UNSORTED_SCAN_MAX as u64 * 3 + 100)..n / 2 + 1 {
            recent.insert(nth_key(i));
        }
        assert!(recent.contains(nth_key(0)));
        assert!(recent.contains(nth_key(n / 2)));
        // A second full generation forgets the first, and the arrays are
        // reused rather than grown.
        let capacity = recent.old.keys.capacity();
        for i in n / 2 + 1..n {
            recent.insert(nth_key(i));
        }
        assert!(!recent.contains(nth_key(0)));
        assert!(!recent.contains(nth_key(n / 2 - 1)));
        assert!(recent.contains(nth_key(n / 2)));
        assert!(recent.contains(nth_key(n - 1)));
        assert_eq!(recent.current.keys.capacity(), capacity);
        assert!(capacity <= RECENT_CAPACITY / 2 + 16, "{capacity}");
    }
}
