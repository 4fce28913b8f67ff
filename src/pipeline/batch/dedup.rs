//! The duplicate-id memory: which changeIds are in a batch now, and which
//! settled lately, kept as hashes so 200,000 of them stay small.

use std::hash::{BuildHasher, Hasher, RandomState};

/// How many settled changeIds to remember for redeliveries.
pub(super) const SETTLED_IDS_REMEMBERED: usize = 200_000;

/// A changeId as a 128-bit keyed hash: 16 bytes per remembered id instead of
/// a string (twice), which matters at 200,000 remembered ids. Two ids share
/// a key with probability about n² / 2^129 (with random keys per process), so
/// the exactness of the string comparison is kept for all practical purposes.
/// Two `u64`s rather than a `u128`: aligned to 8, an owner entry (key and
/// batch) takes 24 bytes instead of 32.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub(super) struct IdHash(u64, u64);

impl std::hash::Hash for IdHash {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.1);
    }
}

/// The changeIds settled lately, in two lists of `SETTLED_IDS_REMEMBERED / 2`
/// (when the current list is full it replaces the old one, so the last half
/// to all of `SETTLED_IDS_REMEMBERED` are remembered). Every settled change
/// is appended, but only redelivered deliveries are looked up, so a list is
/// a plain array, sorted only when a lookup finds more than
/// [`UNSORTED_SCAN_MAX`] keys appended since its last sort: 16 bytes an id,
/// allocated once, where hash sets would take more and grow by copying.
#[derive(Default)]
pub(super) struct SettledIds {
    current: IdList,
    old: IdList,
}

#[derive(Default)]
struct IdList {
    keys: Vec<IdHash>,
    /// `keys[..sorted]` is in order.
    sorted: usize,
}

/// Keys appended since the last sort that a lookup scans one by one (64 KB).
const UNSORTED_SCAN_MAX: usize = 4096;

impl IdList {
    fn contains(&mut self, key: IdHash) -> bool {
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

impl SettledIds {
    pub(super) fn insert(&mut self, key: IdHash) {
        let per_list = SETTLED_IDS_REMEMBERED / 2;
        if self.current.keys.capacity() == 0 {
            self.current.keys.reserve_exact(per_list);
        }
        self.current.keys.push(key);
        if self.current.keys.len() >= per_list {
            // The old list is forgotten; its array takes the next one.
            std::mem::swap(&mut self.current, &mut self.old);
            self.current.clear();
        }
    }

    pub(super) fn contains(&mut self, key: IdHash) -> bool {
        self.current.contains(key) || self.old.contains(key)
    }
}

/// An [`IdHash`] is already a keyed hash: maps of them use its low 64 bits
/// as they are rather than hashing it again (two map operations run per change).
#[derive(Clone, Copy, Default)]
pub(super) struct PrehashedBuild;

impl BuildHasher for PrehashedBuild {
    type Hasher = Prehashed;
    fn build_hasher(&self) -> Prehashed {
        Prehashed(0)
    }
}

/// The hasher of [`PrehashedBuild`].
pub struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write_u64(&mut self, key: u64) {
        self.0 = key;
    }
    /// Only [`IdHash`]s are hashed here; anything else still spreads.
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// Turns a changeId into its [`IdHash`], with keys random per process.
#[derive(Default)]
pub(super) struct IdHasher(RandomState, RandomState);

impl IdHasher {
    pub(super) fn key(&self, id: &str) -> IdHash {
        IdHash(self.0.hash_one(id), self.1.hash_one(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nth_key(i: u64) -> IdHash {
        // Spread like hashes, so sorting reorders them.
        IdHash(i.wrapping_mul(0x9e37_79b9_7f4a_7c15), i)
    }

    #[test]
    fn settled_ids_remember_the_last_half_to_all_of_its_capacity() {
        let mut settled = SettledIds::default();
        let n = SETTLED_IDS_REMEMBERED as u64;
        // A few, looked up from the unsorted tail.
        for i in 0..10 {
            settled.insert(nth_key(i));
        }
        assert!((0..10).all(|i| settled.contains(nth_key(i))));
        assert!(!settled.contains(nth_key(10)));
        // Past the scan limit a lookup sorts; keys appended after that are
        // found in the new tail, and the sorted ones still by search.
        for i in 10..(UNSORTED_SCAN_MAX as u64 * 3) {
            settled.insert(nth_key(i));
        }
        assert!(settled.contains(nth_key(5)));
        assert_eq!(settled.current.sorted, settled.current.keys.len());
        for i in (UNSORTED_SCAN_MAX as u64 * 3)..(UNSORTED_SCAN_MAX as u64 * 3 + 100) {
            settled.insert(nth_key(i));
        }
        assert!(settled.contains(nth_key(UNSORTED_SCAN_MAX as u64 * 3 + 99)));
        assert!(settled.contains(nth_key(7)));
        assert!(!settled.contains(nth_key(n)));
        // A full list becomes the old one: still remembered.
        for i in (UNSORTED_SCAN_MAX as u64 * 3 + 100)..n / 2 + 1 {
            settled.insert(nth_key(i));
        }
        assert!(settled.contains(nth_key(0)));
        assert!(settled.contains(nth_key(n / 2)));
        // A second full list forgets the first, and the arrays are
        // reused rather than grown.
        let capacity = settled.old.keys.capacity();
        for i in n / 2 + 1..n {
            settled.insert(nth_key(i));
        }
        assert!(!settled.contains(nth_key(0)));
        assert!(!settled.contains(nth_key(n / 2 - 1)));
        assert!(settled.contains(nth_key(n / 2)));
        assert!(settled.contains(nth_key(n - 1)));
        assert_eq!(settled.current.keys.capacity(), capacity);
        assert!(capacity <= SETTLED_IDS_REMEMBERED / 2 + 16, "{capacity}");
    }
}
